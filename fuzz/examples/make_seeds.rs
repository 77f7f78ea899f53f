//! Writes the seed corpus under `fuzz/seeds/<target>/`: valid signed documents and a few
//! near-misses, so libFuzzer starts from inputs that pass the signature check instead of
//! having to discover base64 and JSON from nothing.
//!
//! Run from the repository root: `cargo +nightly run --manifest-path fuzz/Cargo.toml --example make_seeds`.
//! The output is deterministic (fixed keys, ed25519 signatures are deterministic).

use evergreen::trust::{parse_envelope, seal, Envelope, SecretKey, MANIFEST_TYPE, ROOT_TYPE};
use evergreen_fuzz::{key, manifest_key, manifest_payload, root, root_keys, root_v1, seal_root};
use std::path::{Path, PathBuf};

fn main() -> std::io::Result<()> {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    write_all(&seeds.join("envelope_manifest"), &manifest_seeds())?;
    write_all(&seeds.join("root_chain"), &root_seeds())?;
    Ok(())
}

fn write_all(dir: &Path, seeds: &[(&str, Vec<u8>)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in seeds {
        let path: PathBuf = dir.join(name);
        std::fs::write(&path, bytes)?;
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
    Ok(())
}

/// `mode` followed by `body`: the input layout of every target.
fn input(mode: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(body);
    v
}

/// An envelope rewritten by `edit` (signatures duplicated, payload re-encoded, …).
fn edited(bytes: &[u8], edit: impl FnOnce(&mut Envelope)) -> Vec<u8> {
    let mut envelope = parse_envelope(bytes).expect("a sealed envelope parses");
    edit(&mut envelope);
    serde_json::to_vec(&envelope).expect("an envelope serialises")
}

fn manifest_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let payload = manifest_payload(42);
    let (k7, k8, k9) = (manifest_key(), key(8), key(9));
    let signed = seal(MANIFEST_TYPE, &payload, &[&k7]);
    let three = seal(MANIFEST_TYPE, &payload, &[&k7, &k8, &k9]);
    let minimal = br#"{"type":"manifest","product":"com.acme.gateway","channel":"stable","sequence":0,"issued":"2026-11-22T09:00:00Z","expires":"2026-11-23T00:00:00Z","releases":[]}"#;
    vec![
        ("raw_signed", input(0, &signed)),
        ("raw_three_signers", input(0, &three)),
        (
            "raw_one_key_twice",
            input(
                0,
                &edited(&signed, |e| {
                    e.signatures.push(e.signatures[0].clone());
                }),
            ),
        ),
        (
            "raw_url_safe_payload",
            input(
                0,
                &edited(&signed, |e| {
                    e.payload = e.payload.replace('+', "-").replace('/', "_");
                }),
            ),
        ),
        ("raw_root_type", input(0, &seal(ROOT_TYPE, &payload, &[&k7]))),
        ("payload", input(1, &payload)),
        ("payload_minimal", input(1, minimal)),
        // freshness selector 0b1001: sequence 2 already seen
        ("payload_seen_sequence", input(1 | (0b1001 << 1), &payload)),
        // freshness selector 0b1010: a newest `issued` two days ahead of the clock
        ("payload_clock_ahead", input(1 | (0b1010 << 1), &payload)),
    ]
}

fn root_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let [k1, k2, k3] = root_keys();
    let v1 = root(1, &[&k1, &k2], 2).to_bytes();
    // Rotation to keys 2 and 3: signed by the old threshold (1, 2) and the new one (2, 3).
    let v2 = root(2, &[&k2, &k3], 2).to_bytes();
    let v2_all = root(2, &[&k1, &k2, &k3], 3).to_bytes();
    let v3 = root(3, &[&k2, &k3], 2).to_bytes();
    let only_old: [&SecretKey; 2] = [&k1, &k2];
    vec![
        ("pinned_raw", input(0, &root_v1())),
        ("pinned_payload", input(1, &v1)),
        ("rotate_raw", input(2, &seal_root(&v2))),
        (
            "rotate_raw_old_keys_only",
            input(2, &seal(ROOT_TYPE, &v2, &only_old)),
        ),
        ("rotate_payload", input(3, &v2)),
        ("rotate_payload_three_of_three", input(3, &v2_all)),
        ("rotate_payload_skips_version", input(3, &v3)),
    ]
}
