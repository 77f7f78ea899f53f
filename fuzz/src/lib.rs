//! Fixtures shared by the fuzz targets and the seed generator.
//!
//! Every key is derived from a fixed seed, so a crash found on one machine reproduces on any
//! other, and the seeds made by `examples/make_seeds.rs` verify inside the targets.

use evergreen::manifest::{Expect, Freshness, DEFAULT_MAX_METADATA_BYTES};
use evergreen::trust::{KeySet, Role, Root, RootKey, SecretKey, MANIFEST_TYPE, ROOT_TYPE};
use evergreen::{NameMap, Timestamp};

/// The product every fixture is for.
pub const PRODUCT: &str = "com.acme.gateway";
/// The channel every manifest fixture is for.
pub const CHANNEL: &str = "stable";
/// The size cap the targets pass to the verifiers (the library's default).
pub const MAX_BYTES: u64 = DEFAULT_MAX_METADATA_BYTES;

/// The fixed test key that signs fuzzer-chosen payloads, so the parser behind the
/// signature is reached.
pub fn manifest_key() -> SecretKey {
    key(7)
}

/// A deterministic key per number.
pub fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

/// Keys 1, 2 and 3: the root keys of [`root_v1`], and the signers of fuzzer-chosen roots.
pub fn root_keys() -> [SecretKey; 3] {
    [key(1), key(2), key(3)]
}

/// `keys` with a threshold, for fixtures that are always valid.
pub fn keyset(keys: &[&SecretKey], threshold: usize) -> KeySet {
    KeySet::new(keys.iter().map(|k| k.public()).collect(), threshold)
        .expect("fixture key sets are valid")
}

/// The one `now` of every run: fixed, so results do not depend on the day of the run.
pub fn now() -> Timestamp {
    Timestamp::from_unix(1_795_341_600) // 2026-11-22T10:00:00Z
}

/// What the device asks for.
pub fn expect() -> Expect<'static> {
    Expect {
        product: PRODUCT,
        channel: CHANNEL,
        now: now(),
        max_bytes: MAX_BYTES,
    }
}

/// Freshness state chosen by one input byte: nothing seen, a sequence seen, or a newest
/// `issued` that moves the clock forward, so every freshness rule is reachable.
pub fn freshness(selector: u8) -> Freshness {
    let last_seen = (selector & 1 == 1).then(|| (u64::from(selector >> 2), "00".repeat(32)));
    let newest_issued = (selector & 2 == 2).then(|| now().plus_days(i64::from(selector >> 2)));
    Freshness {
        last_seen,
        newest_issued,
    }
}

/// A valid channel manifest payload with one release and two components.
pub fn manifest_payload(sequence: u64) -> Vec<u8> {
    let json = serde_json::json!({
        "type": "manifest", "product": PRODUCT, "channel": CHANNEL, "sequence": sequence,
        "issued": "2026-11-22T09:00:00Z", "expires": "2026-12-22T10:00:00+01:00",
        "releases": [{
            "version": "1.4.2-rc.1+build.5",
            "published": "2026-11-20T00:00:00.250Z",
            "notes": "Fixes the reconnect loop — für Geräte ✓",
            "min_version": "1.0.0",
            "critical": true,
            "security_version": 3,
            "rollout": {"stages": [{"at": "2026-11-20T00:00:00Z", "percent": 1},
                                   {"at": "2026-11-21T00:00:00Z", "percent": 20.5}]},
            "targets": {"x86_64-linux": {"components": {
                "app": {"version": "1.4.2", "artifact": {
                    "kind": "zip", "sha256": "ab".repeat(32), "size": 1_048_576,
                    "installed_size": 3_145_728}},
                "config": {"version": "7", "artifact": {
                    "kind": "file", "name": "settings.json", "sha256": "cd".repeat(32),
                    "size": 512, "url": "https://cdn.example.net/settings.json"}}}}}
        }]
    });
    serde_json::to_vec_pretty(&json).expect("a JSON value serialises")
}

/// A root document for [`PRODUCT`]: root keys `root` (threshold `root_threshold`) and
/// manifest key 7.
pub fn root(version: u64, root: &[&SecretKey], root_threshold: usize) -> Root {
    let manifest = manifest_key();
    let mut keys = NameMap::new();
    for k in root.iter().copied().chain([&manifest]) {
        let public = k.public();
        keys.insert(
            public.keyid(),
            RootKey {
                alg: "ed25519".into(),
                public: public.to_base64(),
            },
        );
    }
    let role = |ks: &[&SecretKey], threshold| Role {
        keyids: ks.iter().map(|k| k.public().keyid()).collect(),
        threshold,
    };
    Root {
        doc_type: "root".into(),
        product: PRODUCT.into(),
        version,
        expires: now().plus_days(365),
        keys,
        roles: NameMap::from([
            ("root", role(root, root_threshold)),
            ("manifest", role(&[&manifest], 1)),
        ]),
    }
}

/// The pinned root of the `root_chain` target: version 1, root keys 1 and 2 of 2.
pub fn root_v1() -> Vec<u8> {
    let [k1, k2, _] = root_keys();
    let v1 = root(1, &[&k1, &k2], 2);
    evergreen::trust::seal(ROOT_TYPE, &v1.to_bytes(), &[&k1, &k2])
}

/// Seals a fuzzer-chosen root payload with root keys 1, 2 and 3.
pub fn seal_root(payload: &[u8]) -> Vec<u8> {
    let [k1, k2, k3] = root_keys();
    evergreen::trust::seal(ROOT_TYPE, payload, &[&k1, &k2, &k3])
}

/// Seals a fuzzer-chosen manifest payload with [`manifest_key`].
pub fn seal_manifest(payload: &[u8]) -> Vec<u8> {
    evergreen::trust::seal(MANIFEST_TYPE, payload, &[&manifest_key()])
}

/// Splits an input into its mode byte and the rest; an empty input has none.
pub fn split_mode(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(m, rest)| (*m, rest))
}
