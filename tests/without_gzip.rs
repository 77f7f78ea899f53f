//! A library built without the `gzip-images` feature (as the smallest file-only build
//! is): a release with a gzip-compressed image is refused before the slot is touched.
//! Runs only in such a build: `cargo test --no-default-features --test without_gzip`
//! (scripts/test-all does).
#![cfg(not(feature = "gzip-images"))]

use evergreen::fetch::CancelToken;
use evergreen::manifest::ArtifactKind;
use evergreen::publish::{ReleaseOptions, Repo};
use evergreen::slots::grub::GrubEnv;
use evergreen::trust::{KeySet, SecretKey};
use evergreen::{Check, Config, ErrorKind, Timestamp, Updater};
use std::io::Write;

#[test]
fn a_compressed_image_is_refused_before_the_slot_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let now = Timestamp::now();
    let key = SecretKey::generate().unwrap();
    let keys = KeySet::new(vec![key.public()], 1).unwrap();
    let repo_dir = dir.path().join("repo");
    let repo = Repo::init(&repo_dir, "com.acme.board", &keys, &keys, &[&key], 365, now).unwrap();
    let image = vec![7u8; 1 << 20];
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&image).unwrap();
    let image_gz = dir.path().join("rootfs.img.gz");
    std::fs::write(&image_gz, gz.finish().unwrap()).unwrap();
    let components = [("rootfs", image_gz.as_path(), ArtifactKind::Image)];
    let version = "2.0.0".parse().unwrap();
    let opts = ReleaseOptions::new(now);
    let m = repo
        .release("stable", &version, "board", &components, &opts, &[&key])
        .unwrap();
    let artifact = &m.releases[0]
        .targets
        .get("board")
        .unwrap()
        .components
        .get("rootfs")
        .unwrap()
        .artifact;
    assert!(artifact.compression.is_some(), "published compressed");

    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    std::fs::write(&a, vec![1u8; 2 << 20]).unwrap();
    std::fs::write(&b, vec![0u8; 2 << 20]).unwrap();
    let env = dir.path().join("grubenv");
    GrubEnv::init(&env).unwrap();
    let cmdline = dir.path().join("cmdline");
    std::fs::write(&cmdline, "rauc.slot=A\n").unwrap();
    let config = serde_json::json!({
        "product": "com.acme.board",
        "server": repo_dir,
        "channel": "stable",
        "target": "board",
        "current_version": "1.0.0",
        "trust": {"root": repo_dir.join("root/1.json")},
        "state_dir": dir.path().join("state"),
        "slots": {"kind": "image", "a": a, "b": b,
                  "selector": {"kind": "grub", "env": env},
                  "booted_from": {"cmdline": cmdline, "key": "rauc.slot"}},
    });
    let config = Config::from_json(&config.to_string()).unwrap();
    let up = Updater::builder(config).build().unwrap();
    up.startup().unwrap();
    let Check::Available(offer) = up.check().unwrap() else {
        panic!("expected 2.0.0 offered");
    };
    let env_before = std::fs::read(&env).unwrap();
    let err = up
        .download(&offer, &mut |_, _| {}, &CancelToken::new())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert_eq!(
        err.message(),
        "component rootfs of 2.0.0: expected an uncompressed image, found a gzip-compressed one, which this library was built without the `gzip-images` feature to decompress"
    );
    assert_eq!(
        std::fs::read(&b).unwrap(),
        vec![0u8; 2 << 20],
        "slot B was written"
    );
    assert_eq!(
        std::fs::read(&env).unwrap(),
        env_before,
        "the boot order changed"
    );
    assert_eq!(up.state().unwrap().b.status.as_str(), "empty");
}
