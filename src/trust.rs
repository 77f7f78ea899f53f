//! Signed envelopes, keys, thresholds and the root chain.
//!
//! Every signed document is a DSSE envelope. Verification happens in stages, each enforcing
//! one rule of the design (DESIGN §4.1–4.2); nothing in a payload is parsed before its
//! signature threshold is met, and what is parsed afterwards is exactly the verified bytes.
//! The one exception is a local, self-signed anchor ([`TrustedRoot::pinned`]): its payload
//! is parsed first to learn the root keys it must be signed by.

use crate::error::{Error, ErrorKind, Result};
use crate::name_map::NameMap;
use crate::time::Timestamp;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// `payloadType` of a root document.
pub const ROOT_TYPE: &str = "application/vnd.evergreen.root+json";
/// `payloadType` of a channel manifest.
pub const MANIFEST_TYPE: &str = "application/vnd.evergreen.manifest+json";
/// How many root versions one run may walk forward (DESIGN §4.2).
pub const MAX_ROOT_STEPS: u64 = 32;
/// How many signature entries an envelope may carry; more is a denial-of-service attempt.
const MAX_SIGNATURES: usize = 64;

/// `hasher.update(bytes)`, in one place: sha2 inlines its buffering around the
/// compression at every call, and the smallest library has little room (800 bytes).
#[inline(never)]
pub(crate) fn hash_in(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update(bytes);
}

/// `hasher.finalize()`, in one place, as [`hash_in`] (the padding and last rounds are
/// inlined at every call otherwise).
#[inline(never)]
pub(crate) fn hash_out(hasher: Sha256) -> sha2::digest::Output<Sha256> {
    hasher.finalize()
}

/// The SHA-256 of `bytes`, through [`hash_in`] and [`hash_out`].
pub(crate) fn sha256(bytes: &[u8]) -> sha2::digest::Output<Sha256> {
    let mut hasher = Sha256::new();
    hash_in(&mut hasher, bytes);
    hash_out(hasher)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Lowercase hex SHA-256 of `bytes`.
///
/// ```
/// assert_eq!(
///     evergreen::trust::sha256_hex(b"abc"),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha256(bytes))
}

/// Whether `s` is a SHA-256 as every document and file name spells it: 64 lowercase hex
/// digits. Blob and download file names are made from it, so nothing else may pass.
///
/// ```
/// use evergreen::trust::{is_sha256_hex, sha256_hex};
/// assert!(is_sha256_hex(&sha256_hex(b"abc")));
/// assert!(!is_sha256_hex(&sha256_hex(b"abc").to_uppercase()));
/// assert!(!is_sha256_hex("../../etc/passwd"));
/// ```
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Decodes base64 in the standard or the URL-safe alphabet, padded or not (DESIGN §4.1).
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    decode_base64_onto(s, &mut out).then_some(out)
}

/// Appends what [`decode_base64`] decodes from `s` to `out`; false (with `out` as it was)
/// when `s` is not base64.
fn decode_base64_onto(s: &str, out: &mut Vec<u8>) -> bool {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let s = s.trim();
    let start = out.len();
    // Byte searches (memchr), not a char-pattern scan: payloads run to hundreds of KiB.
    let b = s.as_bytes();
    let (padded, unpadded) = if b.contains(&b'-') || b.contains(&b'_') {
        (URL_SAFE, URL_SAFE_NO_PAD)
    } else {
        (STANDARD, STANDARD_NO_PAD)
    };
    if padded.decode_vec(s, out).is_ok() {
        return true;
    }
    out.truncate(start);
    if unpadded.decode_vec(s, out).is_ok() {
        return true;
    }
    out.truncate(start);
    false
}

/// How many bytes `s` decodes to when it is base64, which decoding it checks: the
/// signed message is sized from this before the payload is decoded into it.
fn base64_decoded_len(s: &str) -> usize {
    let digits = s.trim().trim_end_matches('=').len();
    digits / 4 * 3 + digits % 4 * 3 / 4
}

/// Standard padded base64 of `bytes`.
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An ed25519 public key that is safe to trust (not of small order).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.keyid())
    }
}

impl PublicKey {
    /// A key from its 32 raw bytes; refuses malformed, non-canonical and weak (small-order)
    /// keys with [`ErrorKind::Config`].
    ///
    /// ```
    /// use evergreen::trust::PublicKey;
    /// // the identity point: of order 1, it would "verify" forged signatures
    /// let mut identity = [0u8; 32];
    /// identity[0] = 1;
    /// assert_eq!(
    ///     PublicKey::from_bytes(&identity).unwrap_err().kind(),
    ///     evergreen::ErrorKind::Config
    /// );
    /// ```
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey> {
        let raw: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::config(format!(
                "expected a 32-byte ed25519 public key, found {} bytes",
                bytes.len()
            ))
        })?;
        // Named by their SHA-256, never by the bytes: what was given as a public key may
        // be a secret seed by mistake, and errors end up in logs.
        let key = VerifyingKey::from_bytes(&raw).map_err(|_| {
            Error::config(format!(
                "expected an ed25519 public key, found 32 bytes (sha256 {}) that are not a valid point; is it a secret key file?",
                sha256_hex(&raw)
            ))
        })?;
        if key.is_weak() {
            return Err(Error::config(format!(
                "public key {} is a weak (small-order) key and cannot be trusted",
                sha256_hex(&raw)
            )));
        }
        // A point has one canonical encoding; refusing the others keeps "distinct keys" and
        // "distinct key bytes" the same thing, so one key cannot be counted twice.
        if key.to_edwards().compress().as_bytes() != &raw {
            return Err(Error::config(format!(
                "public key {} is a non-canonical encoding of an ed25519 point",
                sha256_hex(&raw)
            )));
        }
        Ok(PublicKey { key })
    }

    /// A key from base64 (standard or URL-safe) of its 32 raw bytes.
    ///
    /// ```
    /// use evergreen::trust::{PublicKey, SecretKey};
    /// let secret = SecretKey::generate().unwrap();
    /// let public = PublicKey::from_base64(&secret.public().to_base64()).unwrap();
    /// assert_eq!(public, secret.public());
    /// ```
    pub fn from_base64(s: &str) -> Result<PublicKey> {
        let bytes = decode_base64(s).ok_or_else(|| {
            Error::config(format!(
                "expected a base64 ed25519 public key, found {}",
                not_a_key(s)
            ))
        })?;
        PublicKey::from_bytes(&bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// Standard base64 of the raw key.
    pub fn to_base64(&self) -> String {
        encode_base64(self.as_bytes())
    }

    /// The key id: lowercase hex SHA-256 of the raw key. Only a hint in envelopes.
    pub fn keyid(&self) -> String {
        sha256_hex(self.as_bytes())
    }

    /// Checks `sig` over `msg` with `verify_strict`; the signature must be exactly 64 bytes.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<()> {
        let sig: [u8; 64] = sig.try_into().map_err(|_| {
            Error::new(
                ErrorKind::Signature,
                format!("expected a 64-byte signature, found {} bytes", sig.len()),
            )
        })?;
        self.key
            .verify_strict(msg, &Signature::from_bytes(&sig))
            .map_err(|_| {
                Error::new(
                    ErrorKind::Signature,
                    format!("signature does not verify with key {}", self.keyid()),
                )
            })
    }
}

/// An ed25519 signing key. Its bytes are never printed (`Debug` shows the key id only).
pub struct SecretKey {
    key: SigningKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(keyid {})", self.public().keyid())
    }
}

/// Fills `buf` from the operating system's random source.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf)
        .map_err(|e| Error::new(ErrorKind::Io, format!("no system randomness: {e}")))
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<SecretKey> {
        let mut seed = [0u8; 32];
        fill_random(&mut seed)?;
        Ok(SecretKey::from_seed(&seed))
    }

    /// The key with this 32-byte seed (RFC 8032 secret key).
    pub fn from_seed(seed: &[u8; 32]) -> SecretKey {
        SecretKey {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// Reads the base64 seed written by [`SecretKey::to_base64`] (`evergreen keygen`).
    pub fn from_base64(s: &str) -> Result<SecretKey> {
        let seed: [u8; 32] = decode_base64(s)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::config("expected a base64 32-byte ed25519 secret key"))?;
        Ok(SecretKey::from_seed(&seed))
    }

    /// Base64 of the 32-byte seed, the content of a key file.
    pub fn to_base64(&self) -> String {
        encode_base64(self.key.as_bytes())
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
        }
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }
}

/// Characters of a text that is not a key that an error quotes: enough to tell a key with
/// a typo, a path or a PEM block from one another, not a private key pasted where the
/// public one goes (a PEM block of 119 characters), which the error would put in a log.
const KEY_TEXT_SHOWN: usize = 12;

/// `text`, which is not a base64 key, as an error quotes it: whole when short, else its
/// first [`KEY_TEXT_SHOWN`] characters and how many it has.
fn not_a_key(text: &str) -> String {
    let count = text.chars().count();
    if count <= KEY_TEXT_SHOWN {
        return format!("{text:?}, not base64");
    }
    let head: String = text.chars().take(KEY_TEXT_SHOWN).collect();
    format!("{head:?}... ({count} characters), not base64")
}

/// A set of distinct trusted keys and how many of them must sign.
#[derive(Debug, Clone)]
pub struct KeySet {
    keys: Vec<PublicKey>,
    threshold: usize,
}

impl KeySet {
    /// A key set; duplicates collapse into one key, and the threshold must be between 1
    /// and the number of distinct keys.
    ///
    /// ```
    /// use evergreen::trust::{KeySet, SecretKey};
    /// let k = SecretKey::generate().unwrap().public();
    /// assert!(KeySet::new(vec![k.clone()], 0).is_err());
    /// // the same key twice is one key: a threshold of 2 cannot be met
    /// assert!(KeySet::new(vec![k.clone(), k], 2).is_err());
    /// ```
    pub fn new(keys: Vec<PublicKey>, threshold: usize) -> Result<KeySet> {
        let mut distinct: Vec<PublicKey> = Vec::with_capacity(keys.len());
        for k in keys {
            if !distinct.contains(&k) {
                distinct.push(k);
            }
        }
        if threshold == 0 {
            return Err(Error::config(
                "expected a signature threshold of at least 1, found 0",
            ));
        }
        if threshold > distinct.len() {
            return Err(Error::config(format!(
                "expected a threshold no larger than the {} distinct keys, found {threshold}",
                distinct.len()
            )));
        }
        Ok(KeySet {
            keys: distinct,
            threshold,
        })
    }

    /// The distinct keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// How many distinct keys must sign.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Lowercase hex SHA-256 of the XOR of the keys' SHA-256s (whatever order they were
    /// listed in) and the threshold: what tells the root keys of one chain from another's
    /// in the state (DESIGN decision 29). Not collision-resistant against a chosen set of
    /// hundreds of keys, which only the root keys or the local config could list.
    pub fn fingerprint(&self) -> String {
        let mut set = [0u8; 40];
        set[32..].copy_from_slice(&(self.threshold as u64).to_le_bytes());
        for k in &self.keys {
            for (s, d) in set.iter_mut().zip(sha256(k.as_bytes())) {
                *s ^= d;
            }
        }
        sha256_hex(&set)
    }
}

/// One signature of an envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// Hint: SHA-256 of the signer's public key. May be empty or wrong; never trusted.
    #[serde(default)]
    pub keyid: String,
    /// Base64 of the 64-byte ed25519 signature.
    pub sig: String,
}

/// A DSSE envelope as it travels (DESIGN §4.1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// What the payload is; must be the type expected for the document.
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Base64 of the exact document bytes that were signed.
    pub payload: String,
    /// The signatures over `PAE(payloadType, payload)`.
    pub signatures: Vec<EnvelopeSignature>,
}

/// DSSE pre-authentication encoding: `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`.
///
/// ```
/// assert_eq!(evergreen::trust::pae("t", b"hi"), b"DSSEv1 1 t 2 hi");
/// ```
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = pae_header(payload_type, body.len(), body.len());
    out.extend_from_slice(body);
    out
}

/// PAE up to the body of `body_len` bytes, with room for `room` bytes more.
fn pae_header(payload_type: &str, body_len: usize, room: usize) -> Vec<u8> {
    let header = format!("DSSEv1 {} {payload_type} {body_len} ", payload_type.len());
    let mut out = Vec::with_capacity(header.len() + room);
    out.extend_from_slice(header.as_bytes());
    out
}

/// Signs `payload` as a `payload_type` envelope with every key in `keys`.
///
/// ```
/// use evergreen::trust::{seal, open, KeySet, SecretKey};
/// let key = SecretKey::generate().unwrap();
/// let bytes = seal("text/plain", b"hello", &[&key]);
/// let keys = KeySet::new(vec![key.public()], 1).unwrap();
/// assert_eq!(open(&bytes, "text/plain", &keys, 1 << 20).unwrap(), b"hello");
/// ```
pub fn seal(payload_type: &str, payload: &[u8], keys: &[&SecretKey]) -> Vec<u8> {
    let message = pae(payload_type, payload);
    let envelope = Envelope {
        payload_type: payload_type.to_string(),
        payload: encode_base64(payload),
        signatures: keys
            .iter()
            .map(|k| EnvelopeSignature {
                keyid: k.public().keyid(),
                sig: encode_base64(&k.sign(&message)),
            })
            .collect(),
    };
    let mut bytes = crate::json::to_vec_pretty(&envelope).expect("an envelope always serialises");
    bytes.push(b'\n');
    bytes
}

/// Whether `bytes` are a DSSE envelope at all, read in place (the payload is not copied):
/// for an error to tell a malformed document from a signature that does not verify.
pub(crate) fn is_envelope(bytes: &[u8]) -> bool {
    text::Envelope::parse(bytes).is_ok()
}

/// Decodes an envelope without verifying it: for tools that inspect or re-sign.
pub fn parse_envelope(bytes: &[u8]) -> Result<Envelope> {
    text::Envelope::parse(bytes).map(|e| Envelope {
        payload_type: e.payload_type.into_owned(),
        payload: e.payload.into_owned(),
        signatures: e.signatures,
    })
}

/// Envelopes as they are read to be verified.
mod text {
    use super::{Cow, Deserialize, EnvelopeSignature, Error, ErrorKind, Result};

    /// An [`Envelope`](super::Envelope) that borrows its payload's text from the bytes it
    /// was read from: a manifest's runs to hundreds of KiB, and is only ever decoded.
    /// Named as the public type is, should serde's messages name it.
    #[derive(Deserialize)]
    pub(super) struct Envelope<'a> {
        #[serde(rename = "payloadType", borrow)]
        pub(super) payload_type: Cow<'a, str>,
        #[serde(borrow)]
        pub(super) payload: Cow<'a, str>,
        pub(super) signatures: Vec<EnvelopeSignature>,
    }

    impl<'a> Envelope<'a> {
        pub(super) fn parse(bytes: &'a [u8]) -> Result<Self> {
            crate::json::from_bytes(bytes).map_err(|found| {
                Error::new(
                    ErrorKind::Signature,
                    format!("expected a DSSE envelope (payloadType, payload, signatures), found invalid JSON: {found}"),
                )
            })
        }
    }
}

/// Verifies an envelope and returns its payload bytes, exactly as signed.
///
/// Stages, in order: size cap (`too_large`), envelope syntax (`signature`), payload type
/// (`wrong_metadata`), payload base64 (`signature`), at most 64 signature entries
/// (`signature`), then the threshold of *distinct* trusted keys (`signature` when none
/// verifies, `threshold` when too few do).
pub fn open(bytes: &[u8], payload_type: &str, keys: &KeySet, max_bytes: u64) -> Result<Vec<u8>> {
    open_signed(bytes, payload_type, keys, max_bytes).map(Signed::into_payload)
}

/// A verified envelope's signed message, `PAE(payloadType, payload)`: the payload is
/// decoded straight into it, and read from it, rather than copied into a message to check.
pub(crate) struct Signed {
    message: Vec<u8>,
    start: usize,
}

impl Signed {
    /// The payload, exactly as signed.
    pub(crate) fn payload(&self) -> &[u8] {
        &self.message[self.start..]
    }

    fn into_payload(mut self) -> Vec<u8> {
        self.message.drain(..self.start);
        self.message
    }
}

/// [`open`], keeping the payload inside the signed message.
pub(crate) fn open_signed(
    bytes: &[u8],
    payload_type: &str,
    keys: &KeySet,
    max_bytes: u64,
) -> Result<Signed> {
    if bytes.len() as u64 > max_bytes {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "expected a signed document of at most {max_bytes} bytes, found {} bytes",
                bytes.len()
            ),
        ));
    }
    let envelope = text::Envelope::parse(bytes)?;
    check_payload_type(payload_type, &envelope.payload_type)?;
    let len = base64_decoded_len(&envelope.payload);
    // The decoder sizes its output by the text's length rounded up to whole quanta first.
    let room = envelope.payload.trim().len().div_ceil(4) * 3;
    let mut message = pae_header(payload_type, len, room);
    let start = message.len();
    if !decode_base64_onto(&envelope.payload, &mut message) || message.len() - start != len {
        return Err(Error::new(
            ErrorKind::Signature,
            "expected a base64 payload, found invalid base64",
        ));
    }
    if envelope.signatures.len() > MAX_SIGNATURES {
        return Err(Error::new(
            ErrorKind::Signature,
            format!(
                "expected at most {MAX_SIGNATURES} signatures, found {}",
                envelope.signatures.len()
            ),
        ));
    }
    let signed = count_signers(&message, &envelope.signatures, keys);
    if signed >= keys.threshold() {
        return Ok(Signed { message, start });
    }
    let kind = if signed == 0 {
        ErrorKind::Signature
    } else {
        ErrorKind::Threshold
    };
    Err(Error::new(
        kind,
        format!(
            "expected valid signatures from {} distinct trusted key(s) over the {payload_type} payload, found {signed} (of {} signature entries)",
            keys.threshold(),
            envelope.signatures.len()
        ),
    ))
}

/// How many distinct keys of `keys` made one of `signatures` over `message`, counting no
/// further than the threshold.
///
/// The keyid is only a hint: a key is counted at most once however many entries or keyids
/// name it, and an entry counts under whichever trusted key it verifies with. Each entry is
/// first tried against the key its keyid names, then, if it verified with none, against
/// the others. An envelope signed with correct keyids costs one verification per key
/// counted; any envelope at most one per entry ([`MAX_SIGNATURES`]) and trusted key. A
/// tighter bound would refuse honest envelopes: a signature by a key the device does not
/// trust (the next key of a rotation) may come first, with no keyid (DSSE makes it
/// optional).
fn count_signers(message: &[u8], signatures: &[EnvelopeSignature], keys: &KeySet) -> usize {
    let ids: Vec<String> = keys.keys.iter().map(PublicKey::keyid).collect();
    // Each entry once: the key its keyid names, and its signature when it is 64 bytes
    // (anything else fails every key without a verification).
    let entries: Vec<(Option<usize>, Option<Vec<u8>>)> = signatures
        .iter()
        .map(|entry| {
            let named = ids.iter().position(|id| *id == entry.keyid);
            (named, decode_base64(&entry.sig).filter(|s| s.len() == 64))
        })
        .collect();
    let mut counted = vec![false; ids.len()];
    let mut done = vec![false; signatures.len()];
    let mut signed = 0;
    for hinted in [true, false] {
        for (e, (named, sig)) in entries.iter().enumerate() {
            let (named, Some(sig)) = (*named, sig) else {
                continue;
            };
            for (i, key) in keys.keys.iter().enumerate() {
                if signed == keys.threshold {
                    return signed;
                }
                // Pass 1: the named key; pass 2: the others, for entries not yet counted.
                let skip = if hinted {
                    named != Some(i)
                } else {
                    done[e] || named == Some(i)
                };
                if counted[i] || skip {
                    continue;
                }
                #[cfg(test)]
                VERIFICATIONS.with(|v| v.set(v.get() + 1));
                if key.verify(message, sig).is_ok() {
                    (counted[i], done[e]) = (true, true);
                    signed += 1;
                    break;
                }
            }
        }
    }
    signed
}

#[cfg(test)]
thread_local! {
    /// Signature verifications [`count_signers`] made on this thread.
    static VERIFICATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A key as listed in a root document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RootKey {
    /// Always `"ed25519"`.
    pub alg: String,
    /// Base64 of the raw 32-byte public key.
    pub public: String,
}

/// Which keys may sign for a role, and how many must.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// Key ids (into `Root::keys`).
    pub keyids: Vec<String>,
    /// Distinct keys required.
    pub threshold: usize,
}

/// The root document (DESIGN §4.2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Root {
    /// Always `"root"`.
    #[serde(rename = "type")]
    pub doc_type: String,
    /// The product this root is for.
    pub product: String,
    /// 1, 2, …: each rotation adds exactly one.
    pub version: u64,
    /// After this, the root must be replaced.
    pub expires: Timestamp,
    /// Keys by key id.
    pub keys: NameMap<RootKey>,
    /// `root` and `manifest` roles.
    pub roles: NameMap<Role>,
}

impl Root {
    /// The key set of `role` (`"root"` or `"manifest"`), checking every key id matches its key.
    pub fn role_keys(&self, role: &str) -> Result<KeySet> {
        let def = self.roles.get(role).ok_or_else(|| {
            Error::new(
                ErrorKind::WrongMetadata,
                format!("expected a {role:?} role, found none"),
            )
        })?;
        let keys = def
            .keyids
            .iter()
            .map(|id| self.key(id, role))
            .collect::<Result<Vec<_>>>()?;
        KeySet::new(keys, def.threshold).map_err(|e| e.context(format!("root role {role}")))
    }

    /// Checks every listed key, used by a role or not: a trust root holding a weak or
    /// malformed key is refused whole when it is loaded (DESIGN §4.1).
    fn check_keys(&self) -> Result<()> {
        self.keys
            .keys()
            .try_for_each(|id| self.key(id, "keys").map(drop))
    }

    /// The key listed under `id`; `role` only names where it was asked for in errors.
    fn key(&self, id: &str, role: &str) -> Result<PublicKey> {
        let entry = self.keys.get(id).ok_or_else(|| {
            Error::new(
                ErrorKind::WrongMetadata,
                format!("role {role} names key {id}, which is not in keys"),
            )
        })?;
        if entry.alg != "ed25519" {
            return Err(Error::new(
                ErrorKind::WrongMetadata,
                format!("key {id}: expected alg \"ed25519\", found {:?}", entry.alg),
            ));
        }
        // Keeps the kind from `from_base64` (`config`): a bad key in a trust root is the
        // operator's configuration to fix, like a threshold of 0.
        let key =
            PublicKey::from_base64(&entry.public).map_err(|e| e.context(format!("key {id}")))?;
        if key.keyid() != id {
            return Err(Error::new(
                ErrorKind::WrongMetadata,
                format!(
                    "key id {id} does not match its key, whose id is {}",
                    key.keyid()
                ),
            ));
        }
        Ok(key)
    }

    /// The root as JSON bytes, ready to be signed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = crate::json::to_vec_pretty(self).expect("a root always serialises");
        b.push(b'\n');
        b
    }
}

/// A root whose signatures were checked, with the envelope bytes it came from.
#[derive(Debug, Clone)]
pub struct TrustedRoot {
    root: Root,
    envelope: Vec<u8>,
    root_keys: KeySet,
    manifest_keys: KeySet,
}

impl TrustedRoot {
    /// Loads the pinned root shipped with the device: it must be signed by a threshold of
    /// its own root keys. (Its expiry is checked after the chain is walked.)
    pub fn pinned(envelope: &[u8], max_bytes: u64) -> Result<TrustedRoot> {
        // The unverified parse only names the keys to check with; the root kept is parsed
        // again from the bytes `open` verified.
        let unverified = parse_root(&peek_payload(envelope, max_bytes)?)?;
        let ctx = |e: Error| e.context(format!("root version {}", unverified.version));
        let root_keys = unverified.role_keys("root").map_err(ctx)?;
        let payload = open(envelope, ROOT_TYPE, &root_keys, max_bytes).map_err(ctx)?;
        TrustedRoot::new(parse_root(&payload)?, envelope.to_vec())
    }

    /// Every trusted root has a next version: the walk asks for `root/<version + 1>.json`
    /// and [`TrustedRoot::rotate`] expects it, so a root signed with version `u64::MAX`
    /// (which would overflow there) is refused.
    fn new(root: Root, envelope: Vec<u8>) -> Result<TrustedRoot> {
        if root.version == u64::MAX {
            return Err(Error::new(
                ErrorKind::WrongMetadata,
                format!(
                    "expected a root version below {} (one that leaves room for the next), \
                     found {}",
                    u64::MAX,
                    root.version
                ),
            ));
        }
        let ctx = |e: Error| e.context(format!("root version {}", root.version));
        root.check_keys().map_err(ctx)?;
        Ok(TrustedRoot {
            root_keys: root.role_keys("root").map_err(ctx)?,
            manifest_keys: root.role_keys("manifest").map_err(ctx)?,
            root,
            envelope,
        })
    }

    /// The verified root document.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The envelope bytes, to persist as the newest trusted root.
    pub fn envelope(&self) -> &[u8] {
        &self.envelope
    }

    /// Keys that may sign channel manifests.
    pub fn manifest_keys(&self) -> &KeySet {
        &self.manifest_keys
    }

    /// Keys that may sign the next root.
    pub fn root_keys(&self) -> &KeySet {
        &self.root_keys
    }

    /// The version the next root must carry; no overflow, since [`TrustedRoot::new`]
    /// refuses the one version without a successor.
    fn next_version(&self) -> u64 {
        self.root.version + 1
    }

    /// Verifies `envelope` as the next root: signed by a threshold of this root's root
    /// keys *and* of its own, for the same product, with exactly version + 1.
    pub fn rotate(&self, envelope: &[u8], max_bytes: u64) -> Result<TrustedRoot> {
        let next_version = self.next_version();
        let ctx = |e: Error| e.context(format!("root version {next_version}"));
        // Stage 1: the old root vouches for the new document before a byte of it is parsed.
        let payload = open(envelope, ROOT_TYPE, &self.root_keys, max_bytes).map_err(ctx)?;
        let root = parse_root(&payload).map_err(ctx)?;
        // Stage 2: the new root's own keys sign it too (proves the new keys are held).
        let new_keys = root.role_keys("root").map_err(ctx)?;
        open(envelope, ROOT_TYPE, &new_keys, max_bytes).map_err(ctx)?;
        // Stage 3: exactly the next version, same product.
        if root.version != next_version {
            return Err(Error::new(
                ErrorKind::MetadataRollback,
                format!(
                    "expected root version {next_version}, found version {}",
                    root.version
                ),
            ));
        }
        if root.product != self.root.product {
            return Err(Error::new(
                ErrorKind::WrongMetadata,
                format!(
                    "expected a root for product {:?}, found {:?}",
                    self.root.product, root.product
                ),
            ));
        }
        TrustedRoot::new(root, envelope.to_vec())
    }

    /// Walks forward through `root/<v+1>.json` … as long as `fetch_next` finds one (at most
    /// [`MAX_ROOT_STEPS`]), then checks the final root is unexpired at `now`.
    ///
    /// `fetch_next(version, accept)` fetches the envelope of root `version` and hands it to
    /// `accept`, which verifies it against the root reached so far ([`TrustedRoot::rotate`])
    /// and takes it as the next link; where the chain ends it returns `Ok(())` without a
    /// copy `accept` took. A copy `accept` refuses may be passed over for another (a
    /// fetcher with mirrors asks the next base: a CDN's error page served with 200 must
    /// not end every walk in a signature error); the walk fails with `fetch_next`'s error.
    ///
    /// `keep` is called with each root as soon as it is verified, before the next is
    /// fetched: a device persists it there, so a walk that fails later (a bad link, an
    /// expired root where the step limit stopped it) starts from there next time instead
    /// of from the beginning again.
    pub fn update(
        self,
        mut fetch_next: impl FnMut(u64, &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>,
        mut keep: impl FnMut(&TrustedRoot) -> Result<()>,
        now: Timestamp,
        max_bytes: u64,
    ) -> Result<TrustedRoot> {
        let mut current = self;
        let mut steps = 0;
        while steps < MAX_ROOT_STEPS {
            let mut next = None;
            fetch_next(current.next_version(), &mut |bytes| {
                next = Some(current.rotate(bytes, max_bytes)?);
                Ok(())
            })?;
            let Some(next) = next else {
                return current.check_unexpired(now).map(|()| current);
            };
            current = next;
            keep(&current)?;
            steps += 1;
        }
        current.check_unexpired(now).map_err(|e| {
            e.context(format!(
                "the walk stopped after {MAX_ROOT_STEPS} root versions, the most one check \
                 takes; the next check goes on from version {}",
                current.root.version
            ))
        })?;
        Ok(current)
    }

    /// Fails with `expired` when this root's `expires` is not after `now`.
    pub fn check_unexpired(&self, now: Timestamp) -> Result<()> {
        if self.root.expires <= now {
            return Err(Error::new(
                ErrorKind::Expired,
                format!(
                    "root version {} expired at {}; it is now {now}",
                    self.root.version, self.root.expires
                ),
            ));
        }
        Ok(())
    }
}

/// Refuses an envelope of another `payloadType` than `expected`, before its payload is
/// read: a channel manifest copied where the root belongs is named by its type, not by the
/// fields a root lacks.
fn check_payload_type(expected: &str, found: &str) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::WrongMetadata,
        format!("expected payloadType {expected:?}, found {found:?}"),
    ))
}

/// The payload of an envelope, decoded but **not verified** — only to learn which keys to
/// verify a self-signed pinned root with. Never use the result for anything else.
fn peek_payload(envelope: &[u8], max_bytes: u64) -> Result<Vec<u8>> {
    if envelope.len() as u64 > max_bytes {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "expected a root of at most {max_bytes} bytes, found {} bytes",
                envelope.len()
            ),
        ));
    }
    let e = parse_envelope(envelope)?;
    check_payload_type(ROOT_TYPE, &e.payload_type)?;
    decode_base64(&e.payload).ok_or_else(|| {
        Error::new(
            ErrorKind::Signature,
            "expected a base64 payload, found invalid base64",
        )
    })
}

fn parse_root(payload: &[u8]) -> Result<Root> {
    let root: Root = crate::json::from_bytes(payload).map_err(|found| {
        Error::new(
            ErrorKind::WrongMetadata,
            format!(
                "expected a root document, found: {found}{}",
                crate::json::newer_writer(&found)
            ),
        )
    })?;
    if root.doc_type != "root" {
        return Err(Error::new(
            ErrorKind::WrongMetadata,
            format!("expected type \"root\", found {:?}", root.doc_type),
        ));
    }
    Ok(root)
}

/// Where manifest keys come from: a root that can rotate, or a fixed key list (simple mode).
#[derive(Debug, Clone)]
pub enum Anchor {
    /// A verified root (DESIGN §4.2).
    Root(TrustedRoot),
    /// `trust.keys` + `trust.threshold`: an implicit root that never rotates.
    Keys(KeySet),
}

impl Anchor {
    /// Keys that may sign channel manifests.
    pub fn manifest_keys(&self) -> &KeySet {
        match self {
            Anchor::Root(r) => r.manifest_keys(),
            Anchor::Keys(k) => k,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A text that is not a key is quoted by its start and its length, not whole: a
    /// private key in PEM pasted into `trust.keys` or `--root-key` must not reach a log.
    #[test]
    fn a_text_that_is_no_key_is_quoted_by_its_start() {
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIKkmnW0Tn0GzGEnjfT4AhQcV+uW6\n-----END PRIVATE KEY-----";
        let err = PublicKey::from_base64(pem).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert_eq!(
            err.message(),
            format!(
                r#"expected a base64 ed25519 public key, found "-----BEGIN P"... ({} characters), not base64"#,
                pem.chars().count()
            )
        );
        let err = PublicKey::from_base64("k1.pub").unwrap_err();
        assert_eq!(
            err.message(),
            r#"expected a base64 ed25519 public key, found "k1.pub", not base64"#
        );
    }

    /// The verifications `open` makes of `envelope` under `keys`, and its result.
    fn verifications(envelope: &[u8], keys: &KeySet) -> (usize, Result<Vec<u8>>) {
        VERIFICATIONS.with(|v| v.set(0));
        let r = open(envelope, "t", keys, 1 << 20);
        (VERIFICATIONS.with(std::cell::Cell::get), r)
    }

    fn keys(n: u8) -> Vec<SecretKey> {
        (1..=n).map(|i| SecretKey::from_seed(&[i; 32])).collect()
    }

    /// A root at `version` whose one key holds both roles, sealed by that key.
    fn root_envelope(version: u64, key: &SecretKey) -> Vec<u8> {
        let id = key.public().keyid();
        let role = Role {
            keyids: vec![id.clone()],
            threshold: 1,
        };
        let root = Root {
            doc_type: "root".into(),
            product: "p".into(),
            version,
            expires: "2099-01-01T00:00:00Z".parse().unwrap(),
            keys: NameMap::from([(
                id,
                RootKey {
                    alg: "ed25519".into(),
                    public: key.public().to_base64(),
                },
            )]),
            roles: NameMap::from([("root", role.clone()), ("manifest", role)]),
        };
        seal(ROOT_TYPE, &root.to_bytes(), &[key])
    }

    /// A pinned root of version `u64::MAX` was trusted, and the walk's `version + 1`
    /// then panicked ("attempt to add with overflow") on every check.
    #[test]
    fn a_root_without_a_next_version_is_refused() {
        let key = &keys(1)[0];
        let err = TrustedRoot::pinned(&root_envelope(u64::MAX, key), 1 << 20).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrongMetadata);
        assert!(
            err.to_string().contains("leaves room for the next"),
            "{err}"
        );
        let last = TrustedRoot::pinned(&root_envelope(u64::MAX - 1, key), 1 << 20).unwrap();
        let err = last
            .rotate(&root_envelope(u64::MAX, key), 1 << 20)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrongMetadata, "{err}");
    }

    /// The payload is decoded straight into the signed message, sized from the text's
    /// length: every length and alphabet, padded or not, must come out whole.
    #[test]
    fn payloads_of_every_length_and_form_open_to_their_bytes() {
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
        let key = &keys(1)[0];
        let set = keyset(std::slice::from_ref(key), 1);
        for n in 0..70usize {
            let payload: Vec<u8> = (0..n).map(|i| (i * 37 + 250) as u8).collect();
            let sig = encode_base64(&key.sign(&pae("t", &payload)));
            for text in [
                encode_base64(&payload),
                STANDARD_NO_PAD.encode(&payload),
                URL_SAFE.encode(&payload),
                URL_SAFE_NO_PAD.encode(&payload),
                format!(" {}\n", encode_base64(&payload)),
            ] {
                assert_eq!(base64_decoded_len(&text), n, "{text:?}");
                let e = Envelope {
                    payload_type: "t".into(),
                    payload: text.clone(),
                    signatures: vec![EnvelopeSignature {
                        keyid: String::new(),
                        sig: sig.clone(),
                    }],
                };
                let bytes = serde_json::to_vec(&e).unwrap();
                assert_eq!(
                    open(&bytes, "t", &set, 1 << 20).unwrap(),
                    payload,
                    "{text:?}"
                );
            }
        }
    }

    /// A payload whose JSON string has escapes is decoded from its unescaped text; one
    /// that is not base64 leaves nothing behind in the message being built.
    #[test]
    fn escaped_payload_text_decodes_and_bad_base64_is_refused_whole() {
        let key = &keys(1)[0];
        let set = keyset(std::slice::from_ref(key), 1);
        let payload = [0xffu8; 30];
        let text = encode_base64(&payload);
        assert!(text.contains('/'));
        let sig = encode_base64(&key.sign(&pae("t", &payload)));
        let bytes = format!(
            r#"{{"payloadType":"t","payload":"{}","signatures":[{{"sig":"{sig}"}}]}}"#,
            text.replace('/', "\\/")
        );
        assert_eq!(open(bytes.as_bytes(), "t", &set, 1 << 20).unwrap(), payload);
        // A document of the wrong shape says what it is, not what serde expected.
        let err = open(b"null", "t", &set, 1 << 20).unwrap_err();
        assert!(
            err.to_string()
                .contains("null (`n`), not a JSON object (`{`)"),
            "{err}"
        );
        let mut out = b"kept".to_vec();
        assert!(!decode_base64_onto("QUJD!", &mut out));
        assert_eq!(out, b"kept");
        let bad = bytes.replace(&text.replace('/', "\\/"), "QUJD!");
        let err = open(bad.as_bytes(), "t", &set, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Signature, "{err}");
        assert!(err.to_string().contains("invalid base64"), "{err}");
    }

    fn keyset(keys: &[SecretKey], threshold: usize) -> KeySet {
        KeySet::new(keys.iter().map(SecretKey::public).collect(), threshold).unwrap()
    }

    /// `entries` copies of a well-formed signature by a key nobody trusts, under `keyid`.
    fn junk(entries: usize, keyid: &str) -> Vec<u8> {
        let payload = vec![b' '; 4096];
        let sig = encode_base64(&SecretKey::from_seed(&[66; 32]).sign(&pae("t", &payload)));
        let e = Envelope {
            payload_type: "t".into(),
            payload: encode_base64(&payload),
            signatures: (0..entries)
                .map(|_| EnvelopeSignature {
                    keyid: keyid.into(),
                    sig: sig.clone(),
                })
                .collect(),
        };
        serde_json::to_vec(&e).unwrap()
    }

    #[test]
    fn junk_entries_cost_at_most_one_verification_per_entry_and_key() {
        let trusted = keys(3);
        for hint in [String::new(), trusted[0].public().keyid()] {
            let (n, r) = verifications(&junk(MAX_SIGNATURES, &hint), &keyset(&trusted, 1));
            assert_eq!(r.unwrap_err().kind(), ErrorKind::Signature);
            assert!(
                n <= MAX_SIGNATURES * 3,
                "{n} verifications for keyid {hint:?}"
            );
        }
    }

    /// The documented bound on signature entries (DESIGN: at most 64): an envelope with 64
    /// entries, the trusted signature last, opens; one with 65 is refused before any is
    /// verified, however valid its signatures, and the error names the bound and the count.
    #[test]
    fn sixty_four_signature_entries_open_and_sixty_five_are_refused() {
        let (trusted, foreign) = (keys(1), SecretKey::from_seed(&[66; 32]));
        let payload = b"x";
        let entry = |key: &SecretKey| EnvelopeSignature {
            keyid: String::new(),
            sig: encode_base64(&key.sign(&pae("t", payload))),
        };
        let envelope = |entries: usize| {
            let mut signatures: Vec<EnvelopeSignature> =
                (1..entries).map(|_| entry(&foreign)).collect();
            signatures.push(entry(&trusted[0]));
            let e = Envelope {
                payload_type: "t".into(),
                payload: encode_base64(payload),
                signatures,
            };
            serde_json::to_vec(&e).unwrap()
        };
        let set = keyset(&trusted, 1);
        let (_, r) = verifications(&envelope(MAX_SIGNATURES), &set);
        assert_eq!(r.unwrap(), payload, "{MAX_SIGNATURES} entries");
        let (n, r) = verifications(&envelope(MAX_SIGNATURES + 1), &set);
        let err = r.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Signature, "{err}");
        assert!(
            err.to_string()
                .contains("expected at most 64 signatures, found 65"),
            "{err}"
        );
        assert_eq!(n, 0, "verifications of a refused envelope");
    }

    /// A signature by a key the device does not trust (the next key of a rotation), first
    /// and without a keyid, does not keep the trusted one after it from counting.
    #[test]
    fn a_foreign_signature_first_does_not_hide_a_trusted_one() {
        let (trusted, foreign) = (keys(2), SecretKey::generate().unwrap());
        let mut e = parse_envelope(&seal("t", b"x", &[&foreign, &trusted[1]])).unwrap();
        for hint in [String::new(), "0".repeat(64)] {
            for s in &mut e.signatures {
                s.keyid.clone_from(&hint);
            }
            let bytes = serde_json::to_vec(&e).unwrap();
            assert_eq!(verifications(&bytes, &keyset(&trusted, 1)).1.unwrap(), b"x");
        }
    }

    #[test]
    fn counting_stops_at_the_threshold() {
        let trusted = keys(3);
        let all: Vec<&SecretKey> = trusted.iter().collect();
        let (n, r) = verifications(&seal("t", b"x", &all), &keyset(&trusted, 1));
        assert_eq!(r.unwrap(), b"x");
        assert_eq!(n, 1);
    }

    #[test]
    fn keyids_stay_a_hint_for_honest_envelopes() {
        let trusted = keys(3);
        // Signed by the last two keys, listed last key first: without keyids each entry
        // is tried against every key not yet counted, the worst order for the budget.
        let mut e = parse_envelope(&seal("t", b"x", &[&trusted[2], &trusted[1]])).unwrap();
        for s in &mut e.signatures {
            s.keyid.clear();
        }
        let count = |e: &Envelope| {
            let (n, r) = verifications(&serde_json::to_vec(e).unwrap(), &keyset(&trusted, 2));
            assert_eq!(r.unwrap(), b"x");
            n
        };
        assert!(count(&e) <= 2 * 3, "at most one per entry and key");
        // Each under the other's keyid: tried there first, then against the rest.
        e.signatures[0].keyid = trusted[1].public().keyid();
        e.signatures[1].keyid = trusted[2].public().keyid();
        assert!(count(&e) <= 2 * 3, "at most one per entry and key");
        // Under their own keyids: the hint is taken, one verification each.
        e.signatures[0].keyid = trusted[2].public().keyid();
        e.signatures[1].keyid = trusted[1].public().keyid();
        assert_eq!(count(&e), 2);
    }
}
