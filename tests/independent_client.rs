//! A second client, written in Python from docs/design.md alone (`independent_client.py`),
//! against repositories the `evergreen` publisher writes, served over HTTP on 127.0.0.1:
//! it verifies the root chain (across a rotation), the channel manifests and the blobs,
//! and selects a release for each of a set of devices (rollout buckets on either side of
//! each rollout's edge, a fractional percentage, build metadata, a `min_version`, another
//! target), and every decision must be `evergreen check`'s. It also writes a repository
//! of its own from the document (its signing, its JSON, the latitude the document gives)
//! that `evergreen check` must accept and decide on alike, and manifests the document calls
//! `wrong_metadata` that it must refuse. The format a vendor's own client, publisher or
//! mirror checker is written against cannot drift from the code unnoticed.

mod require;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_client_written_from_the_design_document_decides_as_evergreen_does() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/independent_client.py");
    let out = match require::output_within(
        Command::new("python3")
            .arg(&script)
            .arg(env!("CARGO_BIN_EXE_evergreen")),
        Duration::from_secs(600),
    ) {
        Ok(out) => out,
        Err(_) => return require::missing("python3"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "expected the documented client to agree with evergreen check, found {}:\n{stdout}{stderr}",
        out.status
    );
    assert!(
        stdout.contains("\n0 disagreement(s)"),
        "expected the comparison's summary, found:\n{stdout}{stderr}"
    );
}

/// The lines of design.md §4.1's worked example, `name: value` each.
fn worked_example() -> (String, std::collections::HashMap<String, String>) {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/design.md"))
        .unwrap();
    let block = doc
        .split_once("Worked example, from a key")
        .and_then(|(_, rest)| rest.split("```\n").nth(1))
        .expect("expected design.md §4.1's worked example, found none")
        .to_string();
    let lines = block
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    (doc, lines)
}

#[test]
fn the_design_documents_worked_example_is_what_evergreen_signs_and_verifies() {
    use evergreen::trust::{self, KeySet, PublicKey, SecretKey};
    let (doc, ex) = worked_example();
    let secret = SecretKey::from_base64(&ex["seed"]).unwrap();
    let public = secret.public();
    assert_eq!(public.to_base64(), ex["public"], "public");
    assert_eq!(public.keyid(), ex["keyid"], "keyid");
    assert_eq!(ex["payloadType"], trust::MANIFEST_TYPE, "payloadType");
    let body = ex["body"].as_bytes();
    let pae = trust::pae(&ex["payloadType"], body);
    assert_eq!(String::from_utf8_lossy(&pae), ex["PAE"], "PAE");
    assert_eq!(trust::encode_base64(body), ex["payload"], "payload");
    assert_eq!(trust::encode_base64(&secret.sign(&pae)), ex["sig"], "sig");
    // The envelope the document describes, as `evergreen release` writes it, opens to the body.
    let sealed = trust::seal(trust::MANIFEST_TYPE, body, &[&secret]);
    let envelope: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
    assert_eq!(envelope["payload"], ex["payload"].as_str());
    assert_eq!(envelope["signatures"][0]["keyid"], ex["keyid"].as_str());
    assert_eq!(envelope["signatures"][0]["sig"], ex["sig"].as_str());
    let keys = KeySet::new(vec![PublicKey::from_base64(&ex["public"]).unwrap()], 1).unwrap();
    assert_eq!(
        trust::open(&sealed, trust::MANIFEST_TYPE, &keys, 1 << 20).unwrap(),
        body
    );

    // §5.2's rollout bucket example.
    use evergreen::select::{bucket_in_rollout, rollout_bucket};
    let v = "1.4.2".parse().unwrap();
    let b = rollout_bucket("com.acme.gateway", "device-1", &v);
    assert!(
        doc.contains(&format!("mod 10000 = {b}`: in at 55.21 %, out at 55.2 %")),
        "expected design.md's bucket of device-1 to be {b}"
    );
    assert!(bucket_in_rollout(b, 55.21) && !bucket_in_rollout(b, 55.2));
    assert_eq!(rollout_bucket("com.acme.gateway", "device-24084", &v), 7);
    assert!(doc.contains("`device-24084` has `b = 7`: out at 0.07 %, in at 0.08 %"));
    assert!(!bucket_in_rollout(7, 0.07) && bucket_in_rollout(7, 0.08));
}
