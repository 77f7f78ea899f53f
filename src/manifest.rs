//! The channel manifest: its schema and the freshness rules (DESIGN §4.3, §5.1).
//!
//! A [`Verified<Manifest>`] can only be made by [`verify`], after the envelope met the
//! threshold and every freshness rule passed, so code that receives one never has to ask.

use crate::error::{Error, ErrorKind, Result};
use crate::name_map::NameMap;
use crate::time::Timestamp;
use crate::trust::{self, KeySet, MANIFEST_TYPE};
use semver::Version;
use serde::{Deserialize, Serialize};

/// Default cap on root and manifest documents (DESIGN §5.1 rule 6).
pub const DEFAULT_MAX_METADATA_BYTES: u64 = 1 << 20;

/// A signed channel manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `"manifest"`.
    #[serde(rename = "type")]
    pub doc_type: String,
    /// Product id.
    pub product: String,
    /// Channel name.
    pub channel: String,
    /// Grows with every publication; clients refuse to go back.
    pub sequence: u64,
    /// When it was signed.
    pub issued: Timestamp,
    /// After this, clients refuse it.
    pub expires: Timestamp,
    /// The releases offered on the channel.
    pub releases: Vec<Release>,
}

/// One version of the product.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Semver version.
    #[serde(deserialize_with = "version")]
    pub version: Version,
    /// When it was first published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Timestamp>,
    /// Release notes shown to users.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notes: String,
    /// Devices below this version must first take a stepping stone.
    #[serde(
        default,
        deserialize_with = "min_version",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_version: Option<Version>,
    /// A forced update: not skippable, not deferred except to the maintenance window.
    #[serde(default, skip_serializing_if = "is_false")]
    pub critical: bool,
    /// Anti-rollback counter; the device floor rises to it on confirm.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub security_version: u64,
    /// Staged rollout; none means 100 %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// Components per target.
    pub targets: NameMap<TargetRelease>,
}

/// A staged rollout: the percentage in force is that of the last stage whose `at` ≤ now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Stages in time order.
    pub stages: Vec<RolloutStage>,
}

/// One step of a rollout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutStage {
    /// From when this percentage holds.
    pub at: Timestamp,
    /// 0–100 (fractions allowed).
    pub percent: f64,
}

impl Rollout {
    /// The percentage in force at `now` (0 before the first stage).
    ///
    /// ```
    /// use evergreen::manifest::{Rollout, RolloutStage};
    /// let r = Rollout { stages: vec![
    ///     RolloutStage { at: "2026-01-01T00:00:00Z".parse().unwrap(), percent: 1.0 },
    ///     RolloutStage { at: "2026-01-02T00:00:00Z".parse().unwrap(), percent: 20.0 },
    /// ]};
    /// assert_eq!(r.percent_at("2025-12-31T00:00:00Z".parse().unwrap()), 0.0);
    /// assert_eq!(r.percent_at("2026-01-03T00:00:00Z".parse().unwrap()), 20.0);
    /// ```
    pub fn percent_at(&self, now: Timestamp) -> f64 {
        self.stages
            .iter()
            .filter(|s| s.at <= now)
            .max_by_key(|s| s.at)
            .map_or(0.0, |s| s.percent)
    }
}

/// What a release holds for one target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetRelease {
    /// Components by name; each is installed to `<slot>/<name>/`.
    pub components: NameMap<Component>,
}

/// A named, versioned part of a release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// The component's own version string.
    pub version: String,
    /// The blob that delivers it.
    pub artifact: Artifact,
}

/// How an artifact is installed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// Extracted into the component directory.
    Zip,
    /// Placed as one file (`name`) in the component directory.
    File,
    /// A raw image written to a partition.
    Image,
}

impl ArtifactKind {
    /// `"zip"`, `"file"` or `"image"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Zip => "zip",
            ArtifactKind::File => "file",
            ArtifactKind::Image => "image",
        }
    }
}

/// The slot store a release's components can be installed by: the one rule the
/// publisher checks before it signs a target and the device before it touches a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotsFor {
    /// No image: files and zips, for dir slots.
    Dir,
    /// Exactly one image and nothing else, for image slots.
    Image,
    /// Images beside other components, or several: no slot store installs it.
    Neither,
}

impl SlotsFor {
    /// The store that takes components of these `kinds`.
    ///
    /// ```
    /// use evergreen::manifest::{ArtifactKind::*, SlotsFor};
    /// assert_eq!(SlotsFor::of([Zip, File]), SlotsFor::Dir);
    /// assert_eq!(SlotsFor::of([Image]), SlotsFor::Image);
    /// assert_eq!(SlotsFor::of([Image, File]), SlotsFor::Neither);
    /// ```
    pub fn of(kinds: impl IntoIterator<Item = ArtifactKind>) -> SlotsFor {
        let (mut images, mut all) = (0, 0);
        for kind in kinds {
            all += 1;
            images += usize::from(kind == ArtifactKind::Image);
        }
        match (images, all) {
            (0, _) => SlotsFor::Dir,
            (1, 1) => SlotsFor::Image,
            _ => SlotsFor::Neither,
        }
    }
}

/// An immutable blob, named by its SHA-256 and size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// `zip`, `file` or `image`.
    pub kind: ArtifactKind,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// Exact size in bytes.
    pub size: u64,
    /// For zips: total bytes once extracted (a cap on inflation). For a compressed image:
    /// the exact size of the image once decompressed, what its slot must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_size: Option<u64>,
    /// How an image is compressed: `size` and `sha256` are then those of the compressed
    /// blob (what is downloaded), `installed_size` and `installed_sha256` those of the
    /// image the device decompresses it into. Images only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// For a compressed image: lowercase hex SHA-256 of the decompressed image, which the
    /// install's read-back of the slot is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_sha256: Option<String>,
    /// For files: the file name inside the component directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An absolute URL instead of `blobs/sha256/<sha256>`: a well-formed `http://` or
    /// `https://` URL (RFC 3986 characters only, a valid host and port), or `file://` of
    /// an absolute path. Anything else makes the manifest [`ErrorKind::WrongMetadata`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// How an image artifact is compressed (`compression`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// One gzip member (RFC 1952), inflated into the slot as it downloads.
    Gzip,
}

impl Artifact {
    /// The path of this blob relative to a repository base.
    pub fn blob_path(&self) -> String {
        format!("blobs/sha256/{}", self.sha256)
    }

    /// The size and SHA-256 of what an image puts into its slot: the decompressed image's
    /// for a compressed one, else the blob's own.
    pub fn slot_bytes(&self) -> (u64, &str) {
        match (
            self.compression,
            self.installed_size,
            &self.installed_sha256,
        ) {
            (Some(_), Some(size), Some(sha256)) => (size, sha256),
            _ => (self.size, &self.sha256),
        }
    }
}

impl Manifest {
    /// The release of `version`, matched by semver precedence as every choice of a
    /// release is: `1.0.0` finds a listed `1.0.0+b7` (a valid channel lists each version
    /// once, build metadata aside).
    pub fn release(&self, version: &Version) -> Option<&Release> {
        self.releases
            .iter()
            .find(|r| r.version.cmp_precedence(version).is_eq())
    }

    /// The manifest as compact JSON bytes, ready to be signed. Compact, because every
    /// device downloads, hashes and parses these bytes on each change, and nobody reads
    /// them directly: they travel base64-encoded inside the envelope.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain data types to a Vec cannot fail; an empty payload would only
        // fail verification, never panic.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks what serde cannot: names that become paths, hashes, percentages.
    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::new(ErrorKind::WrongMetadata, msg));
        if self.doc_type != "manifest" {
            return bad(format!(
                "expected type \"manifest\", found {:?}",
                self.doc_type
            ));
        }
        // Accepting a manifest moves the device clock up to its `issued` (rule 4); one that
        // expires before it was issued would then be expired the moment it was accepted.
        if self.expires <= self.issued {
            return bad(format!(
                "expected expires after issued, found issued {} and expires {}",
                self.issued, self.expires
            ));
        }
        // A map, not a scan per release: a channel may list a thousand releases. Keyed by
        // precedence: `1.0.0+a` and `1.0.0+b` are one version to selection, so a build
        // could otherwise stand in for a release that failed on a device.
        let mut versions = std::collections::HashMap::with_capacity(self.releases.len());
        for r in &self.releases {
            let v = &r.version;
            if let Some(first) = versions.insert((v.major, v.minor, v.patch, &v.pre), v) {
                return bad(format!(
                    "expected each version once (build metadata aside), found {first} and {v}"
                ));
            }
            r.validate()?;
        }
        Ok(())
    }
}

impl Release {
    fn validate(&self) -> Result<()> {
        for s in self.rollout.iter().flat_map(|ro| &ro.stages) {
            if !(0.0..=100.0).contains(&s.percent) {
                return Err(Error::new(
                    ErrorKind::WrongMetadata,
                    format!(
                        "release {}: expected a rollout percent in 0..=100, found {}",
                        self.version,
                        crate::json::number(s.percent)
                    ),
                ));
            }
        }
        for (target, t) in &self.targets {
            // A release that installs nothing would leave an empty slot, or on image slots
            // a partition that was never written, marked with its version.
            if t.components.is_empty() {
                return Err(Error::new(
                    ErrorKind::WrongMetadata,
                    format!(
                        "release {} target {target}: expected at least one component, found none",
                        self.version
                    ),
                ));
            }
            for (name, c) in &t.components {
                c.validate(name).map_err(|problem| {
                    Error::new(
                        ErrorKind::WrongMetadata,
                        format!(
                            "release {} target {target} component {name:?}: {problem}",
                            self.version
                        ),
                    )
                })?;
            }
            // The sizes of a target's artifacts are added up for the offer's download size
            // and the progress of a download; a sum past u64 would panic there (or wrap in
            // a release build and report a tiny download).
            let mut total = 0u64;
            for (name, c) in &t.components {
                total = total.checked_add(c.artifact.size).ok_or_else(|| {
                    Error::new(
                        ErrorKind::WrongMetadata,
                        format!(
                            "release {} target {target}: expected artifact sizes that add up to \
                             at most {} bytes, found {total} before component {name:?} adds {}",
                            self.version,
                            u64::MAX,
                            c.artifact.size
                        ),
                    )
                })?;
            }
        }
        Ok(())
    }
}

impl Component {
    /// What is wrong with the component listed as `name`, as "expected …, found …".
    fn validate(&self, name: &str) -> std::result::Result<(), String> {
        if !is_safe_name(name) {
            return Err(format!("expected a plain file name, found {name:?}"));
        }
        let a = &self.artifact;
        if !trust::is_sha256_hex(&a.sha256) {
            return Err(format!(
                "expected 64 lowercase hex digits of sha256, found {:?}",
                a.sha256
            ));
        }
        // A relative path would be read from the device's working directory.
        if let Some(url) = a
            .url
            .as_deref()
            .filter(|u| !crate::fetch::is_absolute_url(u))
        {
            return Err(format!(
                "expected a well-formed, absolute http://, https:// or file:// URL as the artifact's url, \
                 found {url:?}"
            ));
        }
        if let Some(sha) = a
            .installed_sha256
            .as_deref()
            .filter(|s| !trust::is_sha256_hex(s))
        {
            return Err(format!(
                "expected 64 lowercase hex digits of installed_sha256, found {sha:?}"
            ));
        }
        // The install compares the slot with a signed hash: a compressed image names the
        // bytes it decompresses to, as a raw one's own hash does.
        match (a.compression, a.kind) {
            (Some(_), ArtifactKind::Image) => {
                if a.installed_size.is_none() || a.installed_sha256.is_none() {
                    return Err(
                        "expected a compressed image to name the decompressed image's installed_size and installed_sha256, found them missing"
                            .into(),
                    );
                }
            }
            (Some(_), kind) => {
                return Err(format!(
                    "expected compression only on an image, found it on a {}",
                    kind.as_str()
                ))
            }
            (None, _) if a.installed_sha256.is_some() => {
                return Err(
                    "expected installed_sha256 only on a compressed image, found it without compression"
                        .into(),
                )
            }
            (None, _) => {}
        }
        match (a.kind, &a.name) {
            (ArtifactKind::File, Some(n)) if is_safe_name(n) => Ok(()),
            (ArtifactKind::File, Some(n)) => Err(format!(
                "expected a file artifact to have a plain `name`, found {n:?}"
            )),
            (ArtifactKind::File, None) => {
                Err("expected a file artifact to have a plain `name`, found none".into())
            }
            _ => Ok(()),
        }
    }
}

/// A version as a manifest writes it, read as semver's own reader does (from the text in
/// place, no copy: a channel may list a thousand), but refused naming what was found and
/// the form expected; semver's words alone ("unexpected end of input while parsing minor
/// version number") named neither.
struct VersionText(Version);

impl<'de> Deserialize<'de> for VersionText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = VersionText;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a semver version like 1.2.3")
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<VersionText, E> {
                Version::parse(v).map(VersionText).map_err(|e| {
                    E::custom(format_args!(
                        "expected a semver version like 1.2.3, found {v:?} ({e})"
                    ))
                })
            }
        }
        d.deserialize_str(Visit)
    }
}

fn version<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Version, D::Error> {
    VersionText::deserialize(d).map(|v| v.0)
}

fn min_version<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Version>, D::Error> {
    Option::<VersionText>::deserialize(d).map(|v| v.map(|v| v.0))
}

// Defaults are left out of the signed bytes: every device downloads, hashes and parses
// them, and a channel may list a thousand releases.
fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A channel name: ASCII letters, digits, `.`, `_` and `-`, not starting with `.`, at most
/// 64 bytes. The name becomes both a file name (`channels/<name>.json`) and part of a URL,
/// so nothing that a URL or a file system would read differently (spaces, `#`, `?`, `%`).
///
/// ```
/// use evergreen::manifest::is_channel_name;
/// assert!(is_channel_name("stable") && is_channel_name("lab-2.eu_west"));
/// assert!(!is_channel_name("my lab") && !is_channel_name("lab#1") && !is_channel_name(".x"));
/// ```
pub fn is_channel_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// [`is_channel_name`] as an error: `config`, naming the name found.
pub fn check_channel_name(name: &str) -> Result<()> {
    if is_channel_name(name) {
        return Ok(());
    }
    Err(Error::config(format!(
        "expected a channel name of ASCII letters, digits, '.', '_' and '-' (like stable, preview or nightly), found {name:?}"
    )))
}

/// A name that is safe as one path component on every platform.
///
/// ```
/// assert!(evergreen::manifest::is_safe_name("app"));
/// assert!(!evergreen::manifest::is_safe_name(".."));
/// assert!(!evergreen::manifest::is_safe_name("a/b"));
/// ```
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0', ':'])
        && !name.chars().any(char::is_control)
}

/// A document that passed verification; only this module can make one.
#[derive(Debug, Clone)]
pub struct Verified<T> {
    value: T,
    payload_sha256: String,
}

impl<T> std::ops::Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> Verified<T> {
    /// Hex SHA-256 of the signed payload: "the same bytes" for the equal-sequence rule.
    pub fn payload_sha256(&self) -> &str {
        &self.payload_sha256
    }
}

/// What the client already knows, for the freshness rules.
#[derive(Debug, Clone, Default)]
pub struct Freshness {
    /// The sequence last accepted on this channel and the SHA-256 of its payload.
    pub last_seen: Option<(u64, String)>,
    /// The newest `issued` seen on any manifest (the clock never reads earlier).
    pub newest_issued: Option<Timestamp>,
}

impl Freshness {
    /// What the client knows once `manifest` is accepted, to persist for the next check: its
    /// sequence and payload hash, and the newest `issued` (which never moves back).
    ///
    /// ```
    /// use evergreen::manifest::Freshness;
    /// // nothing seen yet: the first accepted manifest sets both rules' baselines
    /// assert!(Freshness::default().last_seen.is_none());
    /// ```
    pub fn advanced(&self, manifest: &Verified<Manifest>) -> Freshness {
        let issued = effective_now(manifest.issued, self.newest_issued);
        Freshness {
            last_seen: Some((manifest.sequence, manifest.payload_sha256.clone())),
            newest_issued: Some(issued),
        }
    }
}

/// What the client asked for.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// Product id.
    pub product: &'a str,
    /// Channel name.
    pub channel: &'a str,
    /// The one `now` of this run.
    pub now: Timestamp,
    /// Size cap in bytes.
    pub max_bytes: u64,
}

/// Verifies a channel manifest envelope and applies every freshness rule of DESIGN §5.1:
/// threshold of manifest keys, product and channel match, unexpired (with no time travel
/// before the newest `issued` seen), and a sequence that never goes back (equal only for
/// the same payload).
pub fn verify(
    envelope: &[u8],
    keys: &KeySet,
    expect: &Expect<'_>,
    fresh: &Freshness,
) -> Result<Verified<Manifest>> {
    let signed = trust::open_signed(envelope, MANIFEST_TYPE, keys, expect.max_bytes)
        .map_err(|e| e.context(format!("manifest for channel {}", expect.channel)))?;
    let payload = signed.payload();
    // The payload's SHA-256 (the equal-sequence rule compares it, and the state keeps it)
    // is hashed on a second thread while this one parses: both read the whole payload.
    let (parsed, payload_sha256) = beside(
        || crate::json::from_bytes::<Manifest>(payload),
        || trust::sha256_hex(payload),
        payload.len() >= BESIDE_FROM && crate::cpus::usable() > 1,
    );
    let manifest = parsed.map_err(|found| {
        Error::new(
            ErrorKind::WrongMetadata,
            format!(
                "expected a channel manifest, found: {found}{}",
                crate::json::newer_writer(&found)
            ),
        )
    })?;
    manifest.validate()?;
    if manifest.product != expect.product || manifest.channel != expect.channel {
        return Err(Error::new(
            ErrorKind::WrongMetadata,
            format!(
                "expected the manifest of product {:?} channel {:?}, found product {:?} channel {:?}",
                expect.product, expect.channel, manifest.product, manifest.channel
            ),
        ));
    }
    let now = effective_now(expect.now, fresh.newest_issued);
    if manifest.expires <= now {
        return Err(Error::new(
            ErrorKind::Expired,
            format!(
                "manifest of channel {} (sequence {}) expired at {}; it is now {now}",
                manifest.channel, manifest.sequence, manifest.expires
            ),
        ));
    }
    if let Some((seen, seen_sha)) = &fresh.last_seen {
        if manifest.sequence < *seen {
            return Err(Error::new(
                ErrorKind::MetadataRollback,
                format!(
                    "expected channel {} sequence {seen} or newer, found {}",
                    manifest.channel, manifest.sequence
                ),
            ));
        }
        if manifest.sequence == *seen && payload_sha256 != *seen_sha {
            return Err(Error::new(
                ErrorKind::MetadataRollback,
                format!(
                    "channel {} sequence {seen} was seen with payload sha256 {seen_sha}, found different bytes ({payload_sha256}) under the same sequence",
                    manifest.channel
                ),
            ));
        }
    }
    Ok(Verified {
        value: manifest,
        payload_sha256,
    })
}

/// Payload size from which [`verify`] hashes on a second thread, when the process may
/// use more than one CPU: below it, starting the thread costs about what it saves (a
/// 64 KiB payload hashes in about 45 µs), and on one CPU it saves nothing.
const BESIDE_FROM: usize = 64 << 10;

/// Runs `here` on this thread and, when `split`, `there` on a new one at the same time;
/// both on this thread when a thread cannot be had (a process at its thread limit still
/// verifies its updates).
fn beside<A, B: Send>(
    here: impl FnOnce() -> A,
    there: impl FnOnce() -> B + Send + Copy,
    split: bool,
) -> (A, B) {
    if !split {
        return (here(), there());
    }
    std::thread::scope(|scope| {
        match std::thread::Builder::new().spawn_scoped(scope, there) {
            // `there` only hashes, which cannot panic; were it to, it runs again here.
            Ok(handle) => {
                let a = here();
                (a, handle.join().unwrap_or_else(|_| there()))
            }
            Err(_) => (here(), there()),
        }
    })
}

/// The clock of this run: never earlier than the newest `issued` already seen.
pub fn effective_now(now: Timestamp, newest_issued: Option<Timestamp>) -> Timestamp {
    newest_issued.map_or(now, |seen| now.max(seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str, extra: &str) -> String {
        let sha = "ab".repeat(32);
        format!(
            r#"{{"version":"{version}"{extra},"targets":{{"t":{{"components":{{"app":{{"version":"1","artifact":{{"kind":"zip","sha256":"{sha}","size":1}}}}}}}}}}}}"#
        )
    }

    /// A manifest of product `p`, channel `stable`, listing `releases` (JSON objects).
    fn manifest_text(sequence: u64, releases: &[String]) -> String {
        format!(
            r#"{{"type":"manifest","product":"p","channel":"stable","sequence":{sequence},"issued":"2026-01-01T00:00:00Z","expires":"2026-02-01T00:00:00Z","releases":[{}]}}"#,
            releases.join(",")
        )
    }

    /// A key, the key set that trusts it alone, and what a device of product `p` on
    /// `stable` expects the day after [`manifest_text`]'s manifests were issued.
    fn signer(seed: u8) -> (trust::SecretKey, trust::KeySet, Expect<'static>) {
        let key = trust::SecretKey::from_seed(&[seed; 32]);
        let keys = trust::KeySet::new(vec![key.public()], 1).unwrap();
        let expect = Expect {
            product: "p",
            channel: "stable",
            now: "2026-01-02T00:00:00Z".parse().unwrap(),
            max_bytes: DEFAULT_MAX_METADATA_BYTES,
        };
        (key, keys, expect)
    }

    #[test]
    fn signed_bytes_that_are_not_utf8_are_refused_by_name() {
        let text = manifest_text(1, &[release("1.0.0", r#","notes":"caf\u00e9 NOTUTF8""#)]);
        let mut payload = text.into_bytes();
        let at = payload.windows(7).position(|w| w == b"NOTUTF8").unwrap();
        payload[at] = 0xff;
        let (key, keys, expect) = signer(3);
        let envelope = trust::seal(MANIFEST_TYPE, &payload, &[&key]);
        let err = verify(&envelope, &keys, &expect, &Freshness::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrongMetadata);
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        // The same bytes with the marker intact are a valid manifest.
        payload[at] = b'N';
        let envelope = trust::seal(MANIFEST_TYPE, &payload, &[&key]);
        let ok = verify(&envelope, &keys, &expect, &Freshness::default()).unwrap();
        assert_eq!(ok.releases[0].notes, "caf\u{e9} NOTUTF8");
    }

    /// A version a manifest made by hand (or by another tool) writes wrongly is named as
    /// found, with the form expected: semver alone said "unexpected end of input while
    /// parsing minor version number", and the publisher had to guess which of a thousand.
    #[test]
    fn a_bad_version_is_named_as_found() {
        let (key, keys, expect) = signer(4);
        let cases = [
            (release("1.2", ""), "`releases[0].version`: expected a semver version like 1.2.3, found \"1.2\" (unexpected end of input while parsing minor version number)"),
            (release("1.0.0", r#","min_version":"v1.0.0""#), "`releases[0].min_version`: expected a semver version like 1.2.3, found \"v1.0.0\""),
            (release("1.0.0", r#","min_version":7"#), "`releases[0].min_version`: invalid type: integer `7`, expected a semver version like 1.2.3"),
        ];
        for (release, expected) in cases {
            let payload = manifest_text(1, &[release]).into_bytes();
            let envelope = trust::seal(MANIFEST_TYPE, &payload, &[&key]);
            let err = verify(&envelope, &keys, &expect, &Freshness::default()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::WrongMetadata);
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    /// A large payload is hashed on a second thread while it is parsed; small and large
    /// alike must carry the SHA-256 of exactly the signed bytes, which the equal-sequence
    /// rule then holds other bytes to.
    #[test]
    fn the_payload_hash_is_of_the_signed_bytes_on_both_paths() {
        let (key, keys, expect) = signer(4);
        let text =
            |notes: &str| manifest_text(7, &[release("1.0.0", &format!(r#","notes":"{notes}""#))]);
        for notes_len in [10, BESIDE_FROM, 3 * BESIDE_FROM] {
            let payload = text(&"n".repeat(notes_len)).into_bytes();
            assert_eq!(payload.len() >= BESIDE_FROM, notes_len >= BESIDE_FROM);
            let envelope = trust::seal(MANIFEST_TYPE, &payload, &[&key]);
            let m = verify(&envelope, &keys, &expect, &Freshness::default()).unwrap();
            assert_eq!(m.payload_sha256(), trust::sha256_hex(&payload));
            assert_eq!(m.releases[0].notes.len(), notes_len);
            let other = trust::seal(MANIFEST_TYPE, text("other").as_bytes(), &[&key]);
            let seen = Freshness::default().advanced(&m);
            let err = verify(&other, &keys, &expect, &seen).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::MetadataRollback, "{err}");
            verify(&envelope, &keys, &expect, &seen).unwrap();
        }
    }

    #[test]
    fn signed_bytes_leave_out_defaults_and_read_back_the_same() {
        let text = manifest_text(
            1,
            &[
                release("1.0.0", r#","critical":false,"security_version":0"#),
                release("1.1.0", r#","critical":true,"security_version":3"#),
            ],
        );
        let manifest: Manifest = serde_json::from_str(&text).unwrap();
        let bytes = manifest.to_bytes();
        let signed = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(signed.matches("\"critical\":true").count(), 1, "{signed}");
        assert_eq!(signed.matches("critical").count(), 1, "{signed}");
        assert_eq!(signed.matches("\"security_version\":3").count(), 1);
        assert_eq!(signed.matches("security_version").count(), 1);
        let back: Manifest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.releases, manifest.releases);
        assert!(!back.releases[0].critical && back.releases[0].security_version == 0);
    }

    /// Two artifacts of 2^63 bytes each passed, and the offer's download size then
    /// overflowed ("attempt to add with overflow") after a successful check.
    #[test]
    fn artifact_sizes_that_overflow_together_are_refused() {
        let sha = "ab".repeat(32);
        let component = |size: u64| {
            format!(
                r#"{{"version":"1","artifact":{{"kind":"zip","sha256":"{sha}","size":{size}}}}}"#
            )
        };
        let manifest = |a: u64, b: u64| -> Manifest {
            let release = format!(
                r#"{{"version":"1.0.0","targets":{{"t":{{"components":{{"a":{},"b":{}}}}}}}}}"#,
                component(a),
                component(b)
            );
            serde_json::from_str(&manifest_text(1, &[release])).unwrap()
        };
        let half = 1u64 << 63;
        let err = manifest(half, half).validate().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrongMetadata);
        assert!(err.to_string().contains("release 1.0.0 target t"), "{err}");
        manifest(half, half - 1).validate().unwrap();
    }

    /// A compressed image names the decompressed image's size and hash, and only the
    /// compression that was set is written into the signed bytes.
    #[test]
    fn a_compressed_image_reads_back_and_names_what_its_slot_holds() {
        let sha = "ab".repeat(32);
        let image = format!(
            r#"{{"version":"1.0.0","targets":{{"t":{{"components":{{"rootfs":{{"version":"1","artifact":{{"kind":"image","sha256":"{sha}","size":10,"compression":"gzip","installed_size":30,"installed_sha256":"{}"}}}}}}}}}}}}"#,
            "cd".repeat(32)
        );
        let m: Manifest = serde_json::from_str(&manifest_text(1, &[image])).unwrap();
        m.validate().unwrap();
        let a = &m.releases[0].targets["t"].components["rootfs"].artifact;
        assert_eq!(a.compression, Some(Compression::Gzip));
        assert_eq!(a.slot_bytes(), (30, "cd".repeat(32).as_str()));
        let back: Manifest = serde_json::from_slice(&m.to_bytes()).unwrap();
        assert_eq!(back, m);
        let plain: Manifest =
            serde_json::from_str(&manifest_text(1, &[release("1.0.0", "")])).unwrap();
        let text = String::from_utf8(plain.to_bytes()).unwrap();
        assert!(!text.contains("compression") && !text.contains("installed_sha256"));
        let a = &plain.releases[0].targets["t"].components["app"].artifact;
        assert_eq!(a.slot_bytes(), (1, sha.as_str()));
    }

    #[test]
    fn absolute_artifact_urls_are_accepted() {
        let mut m: Manifest =
            serde_json::from_str(&manifest_text(1, &[release("1.0.0", "")])).unwrap();
        for url in [
            "https://cdn.example/b",
            "HTTP://cdn.example/b",
            "file:///srv/repo/b",
            "file://localhost/srv/repo/b",
        ] {
            let t = m.releases[0].targets.get_mut("t").unwrap();
            t.components.get_mut("app").unwrap().artifact.url = Some(url.into());
            m.validate().unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    #[test]
    fn each_unsafe_field_is_refused_naming_where_and_what() {
        let base: Manifest =
            serde_json::from_str(&manifest_text(1, &[release("1.0.0", "")])).unwrap();
        base.validate().expect("the base manifest is valid");
        type EditComponent = fn(&mut Component);
        type EditManifest = fn(&mut Manifest);
        let keep: EditComponent = |_| {};
        let same: EditManifest = |_| {};
        let cases: [(&str, EditComponent, EditManifest, &str); 18] = [
            (
                "app",
                |c| c.artifact.compression = Some(Compression::Gzip),
                same,
                r#"component "app": expected compression only on an image, found it on a zip"#,
            ),
            (
                "rootfs",
                |c| {
                    c.artifact.kind = ArtifactKind::Image;
                    c.artifact.compression = Some(Compression::Gzip);
                    c.artifact.installed_size = Some(10);
                },
                same,
                r#"component "rootfs": expected a compressed image to name the decompressed image's installed_size and installed_sha256, found them missing"#,
            ),
            (
                "rootfs",
                |c| {
                    c.artifact.kind = ArtifactKind::Image;
                    c.artifact.compression = Some(Compression::Gzip);
                    c.artifact.installed_sha256 = Some("cd".repeat(32));
                },
                same,
                r#"component "rootfs": expected a compressed image to name"#,
            ),
            (
                "rootfs",
                |c| {
                    c.artifact.kind = ArtifactKind::Image;
                    c.artifact.installed_sha256 = Some("cd".repeat(32));
                },
                same,
                r#"component "rootfs": expected installed_sha256 only on a compressed image"#,
            ),
            (
                "rootfs",
                |c| {
                    c.artifact.kind = ArtifactKind::Image;
                    c.artifact.compression = Some(Compression::Gzip);
                    c.artifact.installed_size = Some(30);
                    c.artifact.installed_sha256 = Some("CD".repeat(32));
                },
                same,
                r#"component "rootfs": expected 64 lowercase hex digits of installed_sha256, found "CDCD"#,
            ),
            (
                "app",
                keep,
                |m| {
                    let mut empty = m.releases[0].clone();
                    empty.version = "1.1.0".parse().unwrap();
                    empty.targets.get_mut("t").unwrap().components = NameMap::new();
                    m.releases.push(empty);
                },
                "release 1.1.0 target t: expected at least one component, found none",
            ),
            (
                "../x",
                keep,
                same,
                r#"release 1.0.0 target t component "../x": expected a plain file name, found "../x""#,
            ),
            (
                "app",
                |c| c.artifact.sha256 = "AB".repeat(32),
                same,
                r#"component "app": expected 64 lowercase hex digits of sha256, found "ABAB"#,
            ),
            (
                "app",
                |c| c.artifact.kind = ArtifactKind::File,
                same,
                "expected a file artifact to have a plain `name`, found none",
            ),
            (
                "app",
                |c| {
                    c.artifact.kind = ArtifactKind::File;
                    c.artifact.name = Some("a/b".into());
                },
                same,
                r#"plain `name`, found "a/b""#,
            ),
            (
                "app",
                keep,
                |m| {
                    let at = m.issued;
                    m.releases[0].rollout = Some(Rollout {
                        stages: vec![RolloutStage { at, percent: 100.5 }],
                    });
                },
                "release 1.0.0: expected a rollout percent in 0..=100, found 100.5",
            ),
            (
                "app",
                keep,
                |m| m.expires = m.issued,
                "expected expires after issued, found issued 2026-01-01T00:00:00Z and expires 2026-01-01T00:00:00Z",
            ),
            (
                "app",
                keep,
                |m| m.expires = "2025-12-31T23:59:59Z".parse().unwrap(),
                "expected expires after issued, found issued 2026-01-01T00:00:00Z and expires 2025-12-31T23:59:59Z",
            ),
            (
                "app",
                keep,
                |m| m.releases.push(m.releases[0].clone()),
                "expected each version once (build metadata aside), found 1.0.0 and 1.0.0",
            ),
            (
                "app",
                keep,
                |m| {
                    let mut build = m.releases[0].clone();
                    build.version.build = semver::BuildMetadata::new("b").unwrap();
                    m.releases.push(build);
                },
                "expected each version once (build metadata aside), found 1.0.0 and 1.0.0+b",
            ),
            (
                "app",
                |c| c.artifact.url = Some("blobs/sha256/ab".into()),
                same,
                r#"component "app": expected a well-formed, absolute http://, https:// or file:// URL as the artifact's url, found "blobs/sha256/ab""#,
            ),
            (
                "app",
                |c| c.artifact.url = Some("file://blobs/sha256/ab".into()),
                same,
                r#"found "file://blobs/sha256/ab""#,
            ),
            (
                "app",
                |c| c.artifact.url = Some("ftp://mirror/ab".into()),
                same,
                r#"found "ftp://mirror/ab""#,
            ),
        ];
        for (name, edit_component, edit_manifest, expected) in cases {
            let mut m = base.clone();
            let components = &mut m.releases[0].targets.get_mut("t").unwrap().components;
            let mut c = components.remove("app").unwrap();
            edit_component(&mut c);
            components.insert(name, c);
            edit_manifest(&mut m);
            let err = m.validate().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::WrongMetadata);
            assert!(
                err.to_string().contains(expected),
                "{err}\nwanted: {expected}"
            );
        }
    }
}
