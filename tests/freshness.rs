//! One test per trust and freshness rule (DESIGN §4.1, §4.2, §5.1), each asserting the exact
//! `ErrorKind` a device answers, through the public API: `trust::{seal, open}`,
//! `manifest::verify` and `TrustedRoot::{pinned, rotate, update}`.

use evergreen::manifest::{self, Expect, Freshness, DEFAULT_MAX_METADATA_BYTES};
use evergreen::trust::{
    self, encode_base64, open, parse_envelope, seal, Envelope, EnvelopeSignature, KeySet,
    PublicKey, Role, Root, RootKey, SecretKey, TrustedRoot, MANIFEST_TYPE, ROOT_TYPE,
};
use evergreen::{ErrorKind, Result, Timestamp};
use serde_json::{json, Value};

const PRODUCT: &str = "com.acme.gateway";
const CHANNEL: &str = "stable";
const MAX: u64 = DEFAULT_MAX_METADATA_BYTES;

fn ts(s: &str) -> Timestamp {
    s.parse().expect("RFC 3339")
}

/// The one `now` of these tests.
fn now() -> Timestamp {
    ts("2026-11-22T10:00:00Z")
}

/// A deterministic key per number, so failures are reproducible.
fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

fn keyset(keys: &[&SecretKey], threshold: usize) -> KeySet {
    KeySet::new(keys.iter().map(|k| k.public()).collect(), threshold).expect("valid key set")
}

// ---------------------------------------------------------------------------------------
// Manifests

fn manifest_value(sequence: u64) -> Value {
    json!({
        "type": "manifest", "product": PRODUCT, "channel": CHANNEL, "sequence": sequence,
        "issued": "2026-11-22T09:00:00Z", "expires": "2026-12-22T10:00:00Z",
        "releases": [{
            "version": "1.4.2",
            "notes": "Fixes the reconnect loop ??? >>> ~~~",
            "critical": false,
            "targets": {"x86_64-linux": {"components": {
                "app": {"version": "1.4.2", "artifact": {
                    "kind": "zip", "sha256": "ab".repeat(32), "size": 1024}}}}}
        }]
    })
}

fn payload(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON")
}

fn sealed_manifest(v: &Value, signers: &[&SecretKey]) -> Vec<u8> {
    seal(MANIFEST_TYPE, &payload(v), signers)
}

fn expect_at(now: Timestamp) -> Expect<'static> {
    Expect {
        product: PRODUCT,
        channel: CHANNEL,
        now,
        max_bytes: MAX,
    }
}

fn check(
    envelope: &[u8],
    keys: &KeySet,
    fresh: &Freshness,
) -> Result<manifest::Verified<manifest::Manifest>> {
    manifest::verify(envelope, keys, &expect_at(now()), fresh)
}

/// `check` by a device that has seen no manifest before.
fn check_new(envelope: &[u8], keys: &KeySet) -> Result<manifest::Verified<manifest::Manifest>> {
    check(envelope, keys, &Freshness::default())
}

/// `v` sealed by `signer` alone and checked as new against `signer` alone, so that only
/// what `v` says can refuse it.
fn check_own(v: &Value, signer: &SecretKey) -> Result<manifest::Verified<manifest::Manifest>> {
    check_new(&sealed_manifest(v, &[signer]), &keyset(&[signer], 1))
}

fn kind_of<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    r.expect_err("expected a refusal").kind()
}

fn envelope(bytes: &[u8]) -> Envelope {
    parse_envelope(bytes).expect("an envelope")
}

fn to_bytes(e: &Envelope) -> Vec<u8> {
    serde_json::to_vec(e).expect("JSON")
}

/// Standard base64 rewritten into the URL-safe alphabet without padding.
fn url_safe(standard: &str) -> String {
    standard
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

#[test]
fn a_manifest_signed_by_a_trusted_key_is_accepted() {
    let a = key(1);
    let m = check_own(&manifest_value(42), &a).expect("valid manifest");
    assert_eq!(m.sequence, 42);
    assert_eq!(
        m.payload_sha256(),
        trust::sha256_hex(&payload(&manifest_value(42)))
    );
}

#[test]
fn wrong_key_is_signature() {
    let env = sealed_manifest(&manifest_value(1), &[&key(2)]);
    assert_eq!(
        kind_of(check_new(&env, &keyset(&[&key(1)], 1))),
        ErrorKind::Signature
    );
}

#[test]
fn below_threshold_is_threshold() {
    let (a, b) = (key(1), key(2));
    let env = sealed_manifest(&manifest_value(1), &[&a]);
    assert_eq!(
        kind_of(check_new(&env, &keyset(&[&a, &b], 2))),
        ErrorKind::Threshold
    );
}

#[test]
fn the_same_signature_entry_repeated_counts_once() {
    let (a, b) = (key(1), key(2));
    let mut e = envelope(&sealed_manifest(&manifest_value(1), &[&a]));
    let entry = e.signatures[0].clone();
    e.signatures.extend([entry.clone(), entry]);
    let keys = keyset(&[&a, &b], 2);
    assert_eq!(
        kind_of(check_new(&to_bytes(&e), &keys)),
        ErrorKind::Threshold
    );
}

#[test]
fn the_same_key_under_two_keyids_counts_once() {
    let (a, b) = (key(1), key(2));
    let mut e = envelope(&sealed_manifest(&manifest_value(1), &[&a]));
    // The second entry carries a's signature under b's keyid: the keyid is only a hint.
    e.signatures.push(EnvelopeSignature {
        keyid: b.public().keyid(),
        sig: e.signatures[0].sig.clone(),
    });
    let keys = keyset(&[&a, &b], 2);
    assert_eq!(
        kind_of(check_new(&to_bytes(&e), &keys)),
        ErrorKind::Threshold
    );
}

#[test]
fn one_key_listed_twice_in_a_key_set_is_one_key() {
    let a = key(1);
    let err = KeySet::new(vec![a.public(), a.public()], 2).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(
        KeySet::new(vec![a.public(), a.public()], 1)
            .unwrap()
            .keys()
            .len(),
        1
    );
}

#[test]
fn unknown_keyids_and_junk_entries_are_ignored() {
    let (a, b, stranger) = (key(1), key(2), key(9));
    let mut e = envelope(&sealed_manifest(&manifest_value(1), &[&stranger, &a, &b]));
    e.signatures.push(EnvelopeSignature {
        keyid: "not-a-key".into(),
        sig: "!!! not base64 !!!".into(),
    });
    e.signatures.push(EnvelopeSignature {
        keyid: "00".repeat(32),
        sig: encode_base64(&[0u8; 64]),
    });
    e.signatures.push(EnvelopeSignature {
        keyid: String::new(),
        sig: encode_base64(b"short"),
    });
    let m = check_new(&to_bytes(&e), &keyset(&[&a, &b], 2)).expect("threshold met");
    assert_eq!(m.sequence, 1);
}

#[test]
fn a_tampered_payload_is_signature() {
    let a = key(1);
    let mut e = envelope(&sealed_manifest(&manifest_value(1), &[&a]));
    let mut v = manifest_value(1);
    v["sequence"] = json!(1000);
    e.payload = encode_base64(&payload(&v));
    assert_eq!(
        kind_of(check_new(&to_bytes(&e), &keyset(&[&a], 1))),
        ErrorKind::Signature
    );
}

#[test]
fn a_tampered_payload_type_is_wrong_metadata() {
    let a = key(1);
    for other in [
        ROOT_TYPE,
        "application/vnd.evergreen.manifest+json ",
        "APPLICATION/VND.EVERGREEN.MANIFEST+JSON",
    ] {
        let mut e = envelope(&sealed_manifest(&manifest_value(1), &[&a]));
        e.payload_type = other.into();
        let got = kind_of(check_new(&to_bytes(&e), &keyset(&[&a], 1)));
        assert_eq!(got, ErrorKind::WrongMetadata, "payloadType {other:?}");
    }
}

#[test]
fn a_document_signed_as_another_type_does_not_verify_as_this_one() {
    // Signed as a root, relabelled as a manifest: the PAE binds the type, so it fails.
    let a = key(1);
    let mut e = envelope(&seal(ROOT_TYPE, &payload(&manifest_value(1)), &[&a]));
    e.payload_type = MANIFEST_TYPE.into();
    assert_eq!(
        kind_of(check_new(&to_bytes(&e), &keyset(&[&a], 1))),
        ErrorKind::Signature
    );
}

#[test]
fn payload_and_signatures_in_url_safe_base64_are_accepted() {
    let a = key(1);
    let mut e = envelope(&sealed_manifest(&manifest_value(7), &[&a]));
    assert!(
        e.payload.contains(['+', '/']),
        "the fixture must exercise the alphabets' differences"
    );
    e.payload = url_safe(&e.payload);
    for s in &mut e.signatures {
        s.sig = url_safe(&s.sig);
    }
    let m = check_new(&to_bytes(&e), &keyset(&[&a], 1)).expect("URL-safe base64");
    assert_eq!(m.sequence, 7);
    assert_eq!(
        m.payload_sha256(),
        trust::sha256_hex(&payload(&manifest_value(7)))
    );
}

#[test]
fn signatures_that_are_not_64_bytes_are_ignored() {
    let (a, b) = (key(1), key(2));
    let good = envelope(&sealed_manifest(&manifest_value(1), &[&a]));
    let raw = trust::decode_base64(&good.signatures[0].sig).unwrap();
    let mut long = raw.clone();
    long.push(0);
    let mut e = good.clone();
    e.signatures = vec![
        EnvelopeSignature {
            keyid: a.public().keyid(),
            sig: encode_base64(&long),
        },
        EnvelopeSignature {
            keyid: a.public().keyid(),
            sig: encode_base64(&raw[..63]),
        },
    ];
    let only_a = keyset(&[&a], 1);
    assert_eq!(
        kind_of(check_new(&to_bytes(&e), &only_a)),
        ErrorKind::Signature
    );
    // Next to a valid signature they neither help nor hurt.
    let b_sig = envelope(&sealed_manifest(&manifest_value(1), &[&b])).signatures;
    e.signatures.extend(b_sig);
    check_new(&to_bytes(&e), &keyset(&[&a, &b], 1)).expect("b alone meets 1");
    assert_eq!(
        kind_of(check_new(&to_bytes(&e), &keyset(&[&a, &b], 2))),
        ErrorKind::Threshold
    );
}

#[test]
fn an_expired_manifest_is_expired() {
    let a = key(1);
    let env = sealed_manifest(&manifest_value(1), &[&a]);
    let keys = keyset(&[&a], 1);
    for later in [ts("2026-12-22T10:00:00Z"), ts("2027-01-01T00:00:00Z")] {
        let got = manifest::verify(&env, &keys, &expect_at(later), &Freshness::default());
        assert_eq!(kind_of(got), ErrorKind::Expired, "at {later}");
    }
}

#[test]
fn a_clock_set_back_reads_as_the_newest_issued_seen() {
    let a = key(1);
    let env = sealed_manifest(&manifest_value(1), &[&a]);
    let keys = keyset(&[&a], 1);
    // Another manifest issued after this one expired has been seen; the clock now reads
    // earlier than both, but must not bring the expired manifest back.
    let fresh = Freshness {
        last_seen: None,
        newest_issued: Some(ts("2027-02-01T00:00:00Z")),
    };
    let got = manifest::verify(&env, &keys, &expect_at(now()), &fresh);
    assert_eq!(kind_of(got), ErrorKind::Expired);
    // An older newest-issued changes nothing.
    let fresh = Freshness {
        last_seen: None,
        newest_issued: Some(ts("2026-01-01T00:00:00Z")),
    };
    manifest::verify(&env, &keys, &expect_at(now()), &fresh).expect("unexpired");
}

fn seen(v: &Value) -> Freshness {
    Freshness {
        last_seen: Some((
            v["sequence"].as_u64().unwrap(),
            trust::sha256_hex(&payload(v)),
        )),
        newest_issued: None,
    }
}

#[test]
fn a_replayed_older_sequence_is_metadata_rollback() {
    let a = key(1);
    let env = sealed_manifest(&manifest_value(41), &[&a]);
    let got = check(&env, &keyset(&[&a], 1), &seen(&manifest_value(42)));
    assert_eq!(kind_of(got), ErrorKind::MetadataRollback);
}

#[test]
fn the_same_sequence_with_different_bytes_is_metadata_rollback() {
    let a = key(1);
    let mut other = manifest_value(42);
    other["releases"][0]["notes"] = json!("different notes");
    let env = sealed_manifest(&other, &[&a]);
    let got = check(&env, &keyset(&[&a], 1), &seen(&manifest_value(42)));
    assert_eq!(kind_of(got), ErrorKind::MetadataRollback);
}

#[test]
fn the_same_sequence_with_the_same_bytes_is_accepted() {
    let (a, b) = (key(1), key(2));
    let keys = keyset(&[&a, &b], 1);
    // Re-signed by another key: the envelope differs, the payload is the same bytes.
    for signer in [&a, &b] {
        let env = sealed_manifest(&manifest_value(42), &[signer]);
        check(&env, &keys, &seen(&manifest_value(42))).expect("same bytes");
    }
    let env = sealed_manifest(&manifest_value(43), &[&a]);
    check(&env, &keys, &seen(&manifest_value(42))).expect("newer sequence");
}

#[test]
fn another_product_or_channel_is_wrong_metadata() {
    let a = key(1);
    for (field, value) in [("product", "com.acme.other"), ("channel", "nightly")] {
        let mut v = manifest_value(1);
        v[field] = json!(value);
        let got = check_own(&v, &a);
        assert_eq!(kind_of(got), ErrorKind::WrongMetadata, "{field} {value}");
    }
}

#[test]
fn an_oversized_document_is_too_large_before_it_is_parsed() {
    let a = key(1);
    let garbage = vec![b'{'; MAX as usize + 1];
    assert_eq!(
        kind_of(check_new(&garbage, &keyset(&[&a], 1))),
        ErrorKind::TooLarge
    );
    assert_eq!(
        kind_of(open(&garbage, MANIFEST_TYPE, &keyset(&[&a], 1), MAX)),
        ErrorKind::TooLarge
    );
    assert_eq!(
        kind_of(TrustedRoot::pinned(&garbage, MAX)),
        ErrorKind::TooLarge
    );
    // At the cap, the same garbage is a parse failure, proving the cap is what refused it.
    let garbage = &garbage[..MAX as usize];
    assert_eq!(
        kind_of(check_new(garbage, &keyset(&[&a], 1))),
        ErrorKind::Signature
    );
    // A valid envelope over a small cap is refused for its size, not for anything else.
    let env = sealed_manifest(&manifest_value(1), &[&a]);
    let small = Expect {
        max_bytes: env.len() as u64 - 1,
        ..expect_at(now())
    };
    let got = manifest::verify(&env, &keyset(&[&a], 1), &small, &Freshness::default());
    assert_eq!(kind_of(got), ErrorKind::TooLarge);
}

#[test]
fn a_threshold_of_zero_is_config() {
    let a = key(1);
    assert_eq!(kind_of(KeySet::new(vec![a.public()], 0)), ErrorKind::Config);
    assert_eq!(kind_of(KeySet::new(vec![], 0)), ErrorKind::Config);
    let mut r = root(1, &[&a], 1, &[&a]);
    r.roles.get_mut("manifest").unwrap().threshold = 0;
    assert_eq!(
        kind_of(TrustedRoot::pinned(&sign_root(&r, &[&a]), MAX)),
        ErrorKind::Config
    );
}

#[test]
fn a_misspelt_field_is_wrong_metadata() {
    let a = key(1);
    let mut v = manifest_value(1);
    v["releases"][0].as_object_mut().unwrap().remove("critical");
    v["releases"][0]["critcal"] = json!(true);
    let got = check_own(&v, &a);
    assert_eq!(kind_of(got), ErrorKind::WrongMetadata);
}

#[test]
fn a_component_name_that_is_a_path_is_wrong_metadata() {
    let a = key(1);
    for name in ["../x", "..", "a/b", "a\\b", "/etc", ""] {
        let mut v = manifest_value(1);
        let components = v["releases"][0]["targets"]["x86_64-linux"]["components"]
            .as_object_mut()
            .unwrap();
        let app = components.remove("app").unwrap();
        components.insert(name.into(), app);
        let got = check_own(&v, &a);
        assert_eq!(kind_of(got), ErrorKind::WrongMetadata, "component {name:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Roots

fn root_key(k: &SecretKey) -> (String, RootKey) {
    (
        k.public().keyid(),
        RootKey {
            alg: "ed25519".into(),
            public: k.public().to_base64(),
        },
    )
}

/// A root for `PRODUCT`, valid for a year, whose root role is `root_keys` with
/// `threshold` and whose manifest role is `manifest_keys` with threshold 1.
fn root(
    version: u64,
    root_keys: &[&SecretKey],
    threshold: usize,
    manifest_keys: &[&SecretKey],
) -> Root {
    let ids = |ks: &[&SecretKey]| ks.iter().map(|k| k.public().keyid()).collect::<Vec<_>>();
    Root {
        doc_type: "root".into(),
        product: PRODUCT.into(),
        version,
        expires: now().plus_days(365),
        keys: root_keys
            .iter()
            .chain(manifest_keys)
            .map(|k| root_key(k))
            .collect(),
        roles: evergreen::NameMap::from([
            (
                "root",
                Role {
                    keyids: ids(root_keys),
                    threshold,
                },
            ),
            (
                "manifest",
                Role {
                    keyids: ids(manifest_keys),
                    threshold: 1,
                },
            ),
        ]),
    }
}

fn sign_root(r: &Root, signers: &[&SecretKey]) -> Vec<u8> {
    seal(ROOT_TYPE, &r.to_bytes(), signers)
}

/// Root v1 with root key 1 and manifest key 101, pinned.
fn pinned_v1() -> TrustedRoot {
    TrustedRoot::pinned(
        &sign_root(&root(1, &[&key(1)], 1, &[&key(101)]), &[&key(1)]),
        MAX,
    )
    .expect("pinned root")
}

/// Root `n` (n ≥ 1) of a chain where root n has root key n and manifest key 100 + n,
/// signed by its own key and by the previous root's.
fn chain_link(n: u8) -> Vec<u8> {
    let (own, manifest_key) = (key(n), key(100 + n));
    let r = root(u64::from(n), &[&own], 1, &[&manifest_key]);
    if n == 1 {
        sign_root(&r, &[&own])
    } else {
        sign_root(&r, &[&key(n - 1), &own])
    }
}

/// What `TrustedRoot::update` calls to fetch a root: version, and the check that takes it.
type Accept<'a> = &'a mut dyn FnMut(&[u8]) -> Result<()>;

/// Serves `root/<v>.json` from `links` (index 0 is version 2), then "404".
fn serve(links: Vec<Vec<u8>>) -> impl FnMut(u64, Accept) -> Result<()> {
    move |v, accept| match links.get(v as usize - 2) {
        Some(link) => accept(link),
        None => Ok(()),
    }
}

/// The root walk from `from` through `links` (see [`serve`]) at [`now`], keeping nothing.
fn walk(from: TrustedRoot, links: Vec<Vec<u8>>) -> Result<TrustedRoot> {
    from.update(serve(links), |_| Ok(()), now(), MAX)
}

/// [`walk`], and the root versions it asked for, in order.
fn walk_asking(from: TrustedRoot, links: Vec<Vec<u8>>) -> (Result<TrustedRoot>, Vec<u64>) {
    let mut asked = Vec::new();
    let mut fetch = serve(links);
    let walked = from.update(
        |v, accept: Accept| {
            asked.push(v);
            fetch(v, accept)
        },
        |_| Ok(()),
        now(),
        MAX,
    );
    (walked, asked)
}

#[test]
fn a_pinned_root_loads_and_names_its_manifest_keys() {
    let r = pinned_v1();
    assert_eq!(r.root().version, 1);
    assert_eq!(r.manifest_keys().keys(), [key(101).public()]);
    assert_eq!(
        r.envelope(),
        sign_root(&root(1, &[&key(1)], 1, &[&key(101)]), &[&key(1)])
    );
}

#[test]
fn a_pinned_root_not_signed_by_its_own_root_keys_is_refused() {
    let r = root(1, &[&key(1), &key(2)], 2, &[&key(101)]);
    assert_eq!(
        kind_of(TrustedRoot::pinned(&sign_root(&r, &[&key(1)]), MAX)),
        ErrorKind::Threshold
    );
    assert_eq!(
        kind_of(TrustedRoot::pinned(&sign_root(&r, &[&key(9)]), MAX)),
        ErrorKind::Signature
    );
}

#[test]
fn rotation_walks_1_to_2_to_3_and_the_new_manifest_keys_take_over() {
    let (updated, asked) = walk_asking(pinned_v1(), vec![chain_link(2), chain_link(3)]);
    let updated = updated.expect("rotation");
    assert_eq!(updated.root().version, 3);
    assert_eq!(asked, [2, 3, 4]);
    assert_eq!(updated.envelope(), chain_link(3));
    let keys = updated.manifest_keys();
    check_new(&sealed_manifest(&manifest_value(1), &[&key(103)]), keys)
        .expect("the newest root's manifest key");
    let old = check_new(&sealed_manifest(&manifest_value(1), &[&key(101)]), keys);
    assert_eq!(kind_of(old), ErrorKind::Signature);
}

#[test]
fn a_rotation_signed_only_by_the_new_keys_is_refused() {
    let next = root(2, &[&key(2)], 1, &[&key(102)]);
    let got = pinned_v1().rotate(&sign_root(&next, &[&key(2)]), MAX);
    assert_eq!(kind_of(got), ErrorKind::Signature);
    // With a threshold of 2 old keys and only one of them: threshold.
    let old = root(1, &[&key(1), &key(3)], 2, &[&key(101)]);
    let old = TrustedRoot::pinned(&sign_root(&old, &[&key(1), &key(3)]), MAX).unwrap();
    let got = old.rotate(&sign_root(&next, &[&key(1), &key(2)]), MAX);
    assert_eq!(kind_of(got), ErrorKind::Threshold);
}

#[test]
fn a_rotation_signed_only_by_the_old_keys_is_refused() {
    let next = root(2, &[&key(2)], 1, &[&key(102)]);
    let got = pinned_v1().rotate(&sign_root(&next, &[&key(1)]), MAX);
    assert_eq!(kind_of(got), ErrorKind::Signature);
    let next = root(2, &[&key(2), &key(3)], 2, &[&key(102)]);
    let got = pinned_v1().rotate(&sign_root(&next, &[&key(1), &key(2)]), MAX);
    assert_eq!(kind_of(got), ErrorKind::Threshold);
}

#[test]
fn a_skipped_root_version_is_metadata_rollback() {
    // root/2.json holds a document that says version 3.
    let skipping = root(3, &[&key(2)], 1, &[&key(102)]);
    let got = walk(pinned_v1(), vec![sign_root(&skipping, &[&key(1), &key(2)])]);
    assert_eq!(kind_of(got), ErrorKind::MetadataRollback);
    // The same version again (a replay of root 1 as root 2) is refused the same way.
    let again = root(1, &[&key(1)], 1, &[&key(101)]);
    let got = pinned_v1().rotate(&sign_root(&again, &[&key(1)]), MAX);
    assert_eq!(kind_of(got), ErrorKind::MetadataRollback);
}

#[test]
fn a_root_for_another_product_is_wrong_metadata() {
    let mut next = root(2, &[&key(2)], 1, &[&key(102)]);
    next.product = "com.acme.other".into();
    let got = pinned_v1().rotate(&sign_root(&next, &[&key(1), &key(2)]), MAX);
    assert_eq!(kind_of(got), ErrorKind::WrongMetadata);
}

#[test]
fn an_expired_final_root_is_expired_but_an_expired_intermediate_is_not() {
    let mut expired = root(2, &[&key(2)], 1, &[&key(102)]);
    expired.expires = now().plus_secs(-1);
    let link2 = sign_root(&expired, &[&key(1), &key(2)]);
    let got = walk(pinned_v1(), vec![link2.clone()]);
    assert_eq!(kind_of(got), ErrorKind::Expired);
    // Expiring exactly now is expired too.
    let mut at_now = root(2, &[&key(2)], 1, &[&key(102)]);
    at_now.expires = now();
    let got = walk(pinned_v1(), vec![sign_root(&at_now, &[&key(1), &key(2)])]);
    assert_eq!(kind_of(got), ErrorKind::Expired);
    // Walking through an expired root to a fresh one is how an old device catches up.
    let r = walk(pinned_v1(), vec![link2, chain_link(3)]).expect("the final root is fresh");
    assert_eq!(r.root().version, 3);
}

#[test]
fn the_root_chain_stops_after_32_steps() {
    let links: Vec<Vec<u8>> = (2..=40).map(chain_link).collect();
    let start = TrustedRoot::pinned(&chain_link(1), MAX).unwrap();
    let (r, asked) = walk_asking(start, links);
    let r = r.expect("32 steps");
    assert_eq!(r.root().version, 33);
    assert_eq!(asked, (2..=33).collect::<Vec<u64>>());
    // The next run carries on from there.
    let r = walk(r, (2..=40).map(chain_link).collect()).unwrap();
    assert_eq!(r.root().version, 40);
}

/// Root `n` of the chain, expired an hour before [`now`].
fn expired_link(n: u8) -> Vec<u8> {
    let (own, manifest_key) = (key(n), key(100 + n));
    let mut r = root(u64::from(n), &[&own], 1, &[&manifest_key]);
    r.expires = now().plus_secs(-3600);
    sign_root(&r, &[&key(n - 1), &own])
}

#[test]
fn a_walk_stopped_at_an_expired_root_by_the_step_limit_is_kept_and_goes_on_next_time() {
    // Roots 2..=33 expired long ago, 34 is fresh: a device pinned to 1 is 33 steps behind.
    let links: Vec<Vec<u8>> = (2..=33).map(expired_link).chain([chain_link(34)]).collect();
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let got = pinned_v1().update(
        serve(links.clone()),
        |r| {
            kept.push(r.envelope().to_vec());
            Ok(())
        },
        now(),
        MAX,
    );
    let Err(err) = got else {
        panic!("expected root 33, where the walk stops, to be expired");
    };
    assert_eq!(err.kind(), ErrorKind::Expired);
    assert!(
        err.to_string()
            .contains("the next check goes on from version 33"),
        "{err}"
    );
    assert_eq!(
        kept.len(),
        32,
        "every verified root is kept as it is reached"
    );
    assert_eq!(kept.last(), links.get(31));
    // The next run starts from the last kept root and reaches the fresh one.
    let resumed = TrustedRoot::pinned(kept.last().unwrap(), MAX).unwrap();
    let r = walk(resumed, links).expect("root 34 is fresh");
    assert_eq!(r.root().version, 34);
}

#[test]
fn a_bad_link_later_in_the_walk_keeps_the_roots_before_it() {
    let mut bad = root(3, &[&key(3)], 1, &[&key(103)]);
    bad.product = "com.acme.other".into();
    let links = vec![chain_link(2), sign_root(&bad, &[&key(2), &key(3)])];
    let mut kept = Vec::new();
    let got = pinned_v1().update(
        serve(links),
        |r| {
            kept.push(r.root().version);
            Ok(())
        },
        now(),
        MAX,
    );
    assert_eq!(kind_of(got), ErrorKind::WrongMetadata);
    assert_eq!(kept, [2]);
}

#[test]
fn a_fetch_failure_during_rotation_is_passed_on() {
    let got = pinned_v1().update(
        |_, _| {
            Err(evergreen::Error::new(
                ErrorKind::Network,
                "connection refused",
            ))
        },
        |_| Ok(()),
        now(),
        MAX,
    );
    assert_eq!(kind_of(got), ErrorKind::Network);
}

/// An ed25519 point of order 4 (y = 0): a weak key.
fn weak_key() -> RootKey {
    RootKey {
        alg: "ed25519".into(),
        public: encode_base64(&[0u8; 32]),
    }
}

#[test]
fn a_weak_key_in_a_root_is_refused_when_it_is_loaded() {
    let a = key(1);
    let weak_id = trust::sha256_hex(&[0u8; 32]);
    // In a role …
    let mut r = root(1, &[&a], 1, &[&key(101)]);
    r.keys.insert(weak_id.clone(), weak_key());
    r.roles
        .get_mut("manifest")
        .unwrap()
        .keyids
        .push(weak_id.clone());
    assert_eq!(
        kind_of(TrustedRoot::pinned(&sign_root(&r, &[&a]), MAX)),
        ErrorKind::Config
    );
    // … or only listed: a trust root with a weak key is refused whole.
    let mut r = root(1, &[&a], 1, &[&key(101)]);
    r.keys.insert(weak_id, weak_key());
    assert_eq!(
        kind_of(TrustedRoot::pinned(&sign_root(&r, &[&a]), MAX)),
        ErrorKind::Config
    );
    // And the same through a rotation.
    let mut next = root(2, &[&key(2)], 1, &[&key(102)]);
    next.keys.insert(trust::sha256_hex(&[0u8; 32]), weak_key());
    let got = pinned_v1().rotate(&sign_root(&next, &[&key(1), &key(2)]), MAX);
    assert_eq!(kind_of(got), ErrorKind::Config);
    assert!(PublicKey::from_bytes(&[0u8; 32]).is_err());
}

#[test]
fn a_root_whose_keyid_does_not_match_its_key_is_wrong_metadata() {
    let a = key(1);
    let mut r = root(1, &[&a], 1, &[&key(101)]);
    let (_, mk) = root_key(&key(101));
    r.keys
        .insert(key(101).public().keyid(), root_key(&key(102)).1);
    assert_ne!(mk, r.keys[&key(101).public().keyid()]);
    assert_eq!(
        kind_of(TrustedRoot::pinned(&sign_root(&r, &[&a]), MAX)),
        ErrorKind::WrongMetadata
    );
}

#[test]
fn a_pinned_root_in_url_safe_base64_loads() {
    let mut e = envelope(&sign_root(
        &root(1, &[&key(1)], 1, &[&key(101)]),
        &[&key(1)],
    ));
    e.payload = url_safe(&e.payload);
    for s in &mut e.signatures {
        s.sig = url_safe(&s.sig);
    }
    assert_eq!(
        TrustedRoot::pinned(&to_bytes(&e), MAX)
            .unwrap()
            .root()
            .version,
        1
    );
}

#[test]
fn a_key_given_twice_in_a_signed_map_is_wrong_metadata() {
    // serde would keep the last "app" and another parser the first: refuse, don't pick.
    let a = key(1);
    let text = payload(&manifest_value(1));
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.matches(r#""app":"#).count(), 1);
    let other = format!(
        r#""app":{{"artifact":{{"kind":"file","name":"x","sha256":"{}","size":1}},"version":"0.1.0"}},"#,
        "cd".repeat(32)
    );
    let twice = text.replacen(r#""app":"#, &format!(r#"{other}"app":"#), 1);
    assert_eq!(twice.matches(r#""app":"#).count(), 2);
    let mut single = manifest_value(1);
    single["releases"][0]["targets"]["x86_64-linux"]["components"]["app"] =
        serde_json::from_str(other.trim_start_matches(r#""app":"#).trim_end_matches(',')).unwrap();
    // Either "app" alone is a valid manifest; only their being together is refused.
    check_own(&single, &a).expect("the first app alone");
    let env = seal(MANIFEST_TYPE, twice.as_bytes(), &[&a]);
    let got = check_new(&env, &keyset(&[&a], 1));
    assert_eq!(kind_of(got), ErrorKind::WrongMetadata);
    // The same holds for a root's roles.
    let r = String::from_utf8(root(1, &[&a], 1, &[&key(101)]).to_bytes()).unwrap();
    let doubled = r.replacen(
        "\"roles\": {",
        "\"roles\": {\n    \"root\": {\"keyids\": [], \"threshold\": 1},",
        1,
    );
    assert_ne!(doubled, r);
    let got = TrustedRoot::pinned(&seal(ROOT_TYPE, doubled.as_bytes(), &[&a]), MAX);
    assert_eq!(kind_of(got), ErrorKind::WrongMetadata);
}

#[test]
fn freshness_advances_to_the_accepted_manifest_and_never_back() {
    let a = key(1);
    let keys = keyset(&[&a], 1);
    let m = check_new(&sealed_manifest(&manifest_value(42), &[&a]), &keys).unwrap();
    let fresh = Freshness::default().advanced(&m);
    assert_eq!(fresh.last_seen, seen(&manifest_value(42)).last_seen);
    assert_eq!(fresh.newest_issued, Some(ts("2026-11-22T09:00:00Z")));
    // A replay is refused against what was persisted.
    let replay = check(&sealed_manifest(&manifest_value(41), &[&a]), &keys, &fresh);
    assert_eq!(kind_of(replay), ErrorKind::MetadataRollback);
    // A newer `issued` already seen is kept.
    let later = Freshness {
        newest_issued: Some(ts("2026-11-22T09:30:00Z")),
        ..fresh
    };
    assert_eq!(
        later.advanced(&m).newest_issued,
        Some(ts("2026-11-22T09:30:00Z"))
    );
}

#[test]
fn invalid_base64_or_too_many_signatures_is_signature() {
    let a = key(1);
    let mut e = envelope(&sealed_manifest(&manifest_value(1), &[&a]));
    let good = e.clone();
    e.payload = "not base64!".into();
    assert_eq!(
        kind_of(check_new(&to_bytes(&e), &keyset(&[&a], 1))),
        ErrorKind::Signature
    );
    // A flood of entries is refused before any is verified.
    let mut e = good;
    let entry = e.signatures[0].clone();
    e.signatures = vec![entry; 65];
    assert_eq!(
        kind_of(check_new(&to_bytes(&e), &keyset(&[&a], 1))),
        ErrorKind::Signature
    );
    assert_eq!(
        kind_of(check_new(b"{}", &keyset(&[&a], 1))),
        ErrorKind::Signature
    );
}
