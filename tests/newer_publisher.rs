//! A device meeting a repository written by a newer publisher: a field, an artifact kind
//! or a compression its Evergreen does not know. The device refuses the document whole
//! (unknown fields are refused, DESIGN §4.3) and must say why: the field, what it expected,
//! what it found, and that the document is newer than its Evergreen.

mod common;
mod require;

use common::Repo;
use evergreen::trust::{self, KeySet, SecretKey, MANIFEST_TYPE, ROOT_TYPE};
use serde_json::{json, Value};
use std::path::Path;

/// A change to a manifest's JSON.
type Edit = fn(&mut Value);

/// The signed JSON payload of the `doc_type` envelope at `path`, verified with `key`.
fn payload(path: &Path, doc_type: &str, key: &SecretKey) -> Value {
    let keys = KeySet::new(vec![key.public()], 1).unwrap();
    let envelope = std::fs::read(path).unwrap();
    serde_json::from_slice(&trust::open(&envelope, doc_type, &keys, 1 << 20).unwrap()).unwrap()
}

fn secret(path: &Path) -> SecretKey {
    SecretKey::from_base64(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Rewrites `channel`'s manifest as a newer publisher would (raw JSON, so fields this
/// build has no name for survive), with the next sequence, signed with the manifest key.
fn publish_newer(repo: &Repo, channel: &str, edit: impl FnOnce(&mut Value)) {
    let key = secret(&repo.manifest_key);
    let path = repo.root.join(format!("channels/{channel}.json"));
    let mut manifest = payload(&path, MANIFEST_TYPE, &key);
    edit(&mut manifest);
    manifest["sequence"] = json!(manifest["sequence"].as_u64().unwrap() + 1);
    let bytes = serde_json::to_vec(&manifest).unwrap();
    std::fs::write(&path, trust::seal(MANIFEST_TYPE, &bytes, &[&key])).unwrap();
}

/// A repository with 1.0.0 and 1.1.0 of one zip component on stable, and a device with
/// nothing installed that reads it from the file system.
fn repo_and_device() -> (Repo, common::Device) {
    let repo = Repo::new("com.acme.evolution");
    let zip = repo.scratch("in").join("app.zip");
    common::make_zip(&zip, &[("run.sh", b"echo 1\n")]);
    for version in ["1.0.0", "1.1.0"] {
        repo.release("stable", version, "x86_64-linux", &[("app", &zip)], &[]);
    }
    let device = repo.device("d", repo.root.to_str().unwrap(), json!({}));
    (repo, device)
}

/// What this build's refusal of a document from a newer publisher must say besides the
/// field: its own Evergreen version, and that a newer one wrote what it does not know.
fn assert_names_newer_publisher(err: &str, field: &str) {
    assert!(err.starts_with("error[wrong_metadata]: "), "{err}");
    assert!(
        err.contains(field),
        "expected the field {field} named: {err}"
    );
    let this = format!("Evergreen {}", env!("CARGO_PKG_VERSION"));
    assert!(
        err.contains(&this) && err.contains("newer Evergreen"),
        "expected the refusal to say this device's {this} does not know it and a newer \
         Evergreen wrote it, found: {err}"
    );
}

/// An unknown release field, an unknown artifact kind and an unknown compression: each
/// refused, naming the field, and saying the manifest is newer than this Evergreen.
#[test]
fn a_manifest_from_a_newer_publisher_is_refused_saying_so() {
    let cases: [(&str, Edit); 4] = [
        ("`releases[1].eol`", |m| {
            m["releases"][1]["eol"] = json!(true)
        }),
        ("`format`", |m| m["format"] = json!(2)),
        ("unknown variant `delta`", |m| {
            m["releases"][1]["targets"]["x86_64-linux"]["components"]["app"]["artifact"]["kind"] =
                json!("delta")
        }),
        ("unknown variant `zstd`", |m| {
            m["releases"][1]["targets"]["x86_64-linux"]["components"]["app"]["artifact"]
                ["compression"] = json!("zstd")
        }),
    ];
    for (field, edit) in cases {
        let (repo, device) = repo_and_device();
        publish_newer(&repo, "stable", edit);
        let err = device.fails("check", &[]);
        assert_names_newer_publisher(&err, field);
        // Refused before anything was chosen or fetched: the next check finds the same.
        assert_eq!(device.fails("check", &[]), err);
        assert!(device.downloads().is_empty(), "{:?}", device.downloads());
    }
}

/// A next root with a field this build does not know is refused the same way, and the
/// device keeps the root it trusts.
#[test]
fn a_root_from_a_newer_publisher_is_refused_saying_so() {
    let (repo, device) = repo_and_device();
    let key = secret(&repo.root_key);
    let mut root = payload(&repo.root.join("root/1.json"), ROOT_TYPE, &key);
    root["version"] = json!(2);
    root["consistent_snapshot"] = json!(true);
    let bytes = serde_json::to_vec(&root).unwrap();
    std::fs::write(
        repo.root.join("root/2.json"),
        trust::seal(ROOT_TYPE, &bytes, &[&key]),
    )
    .unwrap();
    let err = device.fails("check", &[]);
    assert_names_newer_publisher(&err, "`consistent_snapshot`");
}
