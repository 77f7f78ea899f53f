//! Writes the seed corpus under `fuzz/seeds/<target>/`: valid signed documents and a few
//! near-misses, so libFuzzer starts from inputs that pass the signature check instead of
//! having to discover base64 and JSON from nothing.
//!
//! Run from the repository root: `cargo +nightly run --manifest-path fuzz/Cargo.toml --example make_seeds`.
//! The output is deterministic (fixed keys, ed25519 signatures are deterministic).

use evergreen::slots::grub::{GrubEnv, HEADER};
use evergreen::slots::uboot::{FwEnvConfig, UBootEnv};
use evergreen::slots::{BootSelector, Slot};
use evergreen::trust::{parse_envelope, seal, Envelope, SecretKey, MANIFEST_TYPE, ROOT_TYPE};
use evergreen_fuzz::{key, manifest_key, manifest_payload, root, root_keys, root_v1, seal_root};
use std::io::Write;
use std::path::{Path, PathBuf};
use zip::write::SimpleFileOptions;

fn main() -> std::io::Result<()> {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    write_all(&seeds.join("envelope_manifest"), &manifest_seeds())?;
    write_all(&seeds.join("root_chain"), &root_seeds())?;
    write_all(&seeds.join("config_json"), &config_seeds())?;
    write_all(&seeds.join("zip_stage"), &zip_seeds()?)?;
    write_all(&seeds.join("grub_env"), &grub_seeds()?)?;
    write_all(&seeds.join("uboot_env"), &uboot_seeds()?)?;
    write_all(&seeds.join("gzip_inflate"), &gzip_seeds()?)?;
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
        (
            "raw_root_type",
            input(0, &seal(ROOT_TYPE, &payload, &[&k7])),
        ),
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

fn config_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let full = br#"{
  "product": "com.acme.gateway",
  "server": "https://updates.acme.com/gateway/",
  "mirrors": ["https://cdn.example.net/gateway/", "file:///media/usb/gateway"],
  "channel": "stable",
  "target": "x86_64-linux",
  "trust": {"root": "/etc/evergreen/root.json"},
  "state_dir": "/var/lib/evergreen",
  "slots": {"kind": "dir", "root": "/opt/gateway"},
  "current_version": "1.0.0",
  "device_id": null,
  "deploy": {"policy": "window", "window": {"days": ["mon", "sat"], "start": "22:00", "end": "04:00", "utc_offset": "+01:00"}},
  "trial": {"tries": 3},
  "allow_downgrade": false,
  "pin_version": null,
  "limits": {"max_metadata_bytes": 1048576, "connect_timeout_s": 10, "read_timeout_s": 30,
             "min_speed_bytes_per_s": 1024, "retries": 3}
}"#;
    let keys = format!(
        r#"{{"product": "p", "server": "/srv/repo", "target": "t", "state_dir": "/s",
  "trust": {{"keys": ["{}", "{}"], "threshold": 2}},
  "slots": {{"kind": "dir", "root": "/opt/p"}}, "deploy": {{"policy": "at", "at": "2026-11-22T10:00:00Z"}},
  "pin_version": "2.0.0-rc.1"}}"#,
        manifest_key().public().to_base64(),
        key(8).public().to_base64()
    );
    let grub =
        br#"{"product": "p", "server": "http://127.0.0.1:8080/", "target": "acme-board-rev2",
  "trust": {"root": "/etc/evergreen/root.json"}, "state_dir": "/data/evergreen",
  "slots": {"kind": "image", "a": "/dev/mmcblk0p2", "b": "/dev/mmcblk0p3",
            "selector": {"kind": "grub", "env": "/boot/grub/grubenv"}},
  "deploy": {"policy": "download_only"}}"#;
    let uboot =
        br#"{"product": "p", "server": "https://u/", "target": "t", "trust": {"root": "/r"},
  "state_dir": "/d", "slots": {"kind": "image", "a": "/dev/a", "b": "/dev/b",
  "selector": {"kind": "uboot", "config": "/etc/fw_env.config"},
  "booted_from": {"cmdline": "/proc/cmdline", "key": "rauc.slot"}}}"#;
    vec![
        ("full", full.to_vec()),
        ("simple_keys", keys.into_bytes()),
        ("image_grub", grub.to_vec()),
        ("image_uboot", uboot.to_vec()),
    ]
}

enum Item<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Link(&'a str, &'a str),
}

fn zip_of(items: &[Item]) -> std::io::Result<Vec<u8>> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let base = SimpleFileOptions::default();
    for item in items {
        match item {
            Item::Dir(name) => w.add_directory(*name, base),
            Item::File(name, bytes, mode) => w
                .start_file(*name, base.unix_permissions(*mode))
                .and_then(|()| w.write_all(bytes).map_err(Into::into)),
            Item::Link(name, target) => w.add_symlink(*name, *target, base),
        }
        .map_err(std::io::Error::other)?;
    }
    Ok(w.finish().map_err(std::io::Error::other)?.into_inner())
}

fn zip_seeds() -> std::io::Result<Vec<(&'static str, Vec<u8>)>> {
    use Item::*;
    let app = zip_of(&[
        Dir("bin/"),
        File("bin/app", b"#!/bin/sh\necho hello\n", 0o4755),
        File("share/doc/README", b"read me", 0o666),
    ])?;
    let links = zip_of(&[
        File("lib/libx.so.1", b"\x7fELF", 0o755),
        Link("lib/libx.so", "libx.so.1"),
        Link("escape", "../../outside"),
    ])?;
    let slip = zip_of(&[File("a/../../evil", b"pwned", 0o644)])?;
    let bomb = zip_of(&[File("zeros", &vec![0u8; 4 << 20], 0o644)])?;
    Ok(vec![
        ("app", input(0, &app)),
        ("app_installed_size", input(2, &app)),
        ("symlinks_allowed", input(1, &links)),
        ("symlinks_refused", input(0, &links)),
        ("zip_slip", input(0, &slip)),
        ("bomb", input(0, &bomb)),
    ])
}

fn grub_seeds() -> std::io::Result<Vec<(&'static str, Vec<u8>)>> {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("grubenv");
    let mut env = GrubEnv::init(&path).map_err(std::io::Error::other)?;
    env.set_vars(&[("saved_entry", "gnulinux-advanced"), ("note", "a\\b\nc")])
        .map_err(std::io::Error::other)?;
    let canonical = std::fs::read(&path)?;
    env.activate(Slot::B, 1).map_err(std::io::Error::other)?;
    let trial = std::fs::read(&path)?;
    let mut editenv = HEADER.as_bytes().to_vec();
    editenv.extend_from_slice(b"ORDER=B A\nB_OK=1\nB_TRY=1\nA_OK=1\nA_TRY=0\n");
    editenv.resize(1024, b'#');
    Ok(vec![
        ("canonical_activate_b", input(0b011, &canonical)),
        ("trial_fall_back_a", input(0b110, &trial)),
        ("trial_confirm_b", input(0b101, &trial)),
        ("grub_editenv_layout", input(0b010, &editenv)),
    ])
}

fn uboot_seeds() -> std::io::Result<Vec<(&'static str, Vec<u8>)>> {
    let tmp = tempfile::tempdir()?;
    let device = tmp.path().join("env");
    let size = 0x200usize;
    let mut seeds = Vec::new();
    for (redundant, name) in [(false, "single"), (true, "redundant")] {
        std::fs::write(&device, vec![0u8; size * 2])?;
        let mut text = format!("{} 0 {size:x}\n", device.display());
        if redundant {
            text.push_str(&format!("{} {size:#x} {size:x}\n", device.display()));
        }
        let config =
            FwEnvConfig::parse(&text, Path::new("fw_env.config")).map_err(std::io::Error::other)?;
        let mut env = UBootEnv::new(config);
        env.init().map_err(std::io::Error::other)?;
        env.set_vars(&[
            ("bootcmd", Some("run distro_bootcmd")),
            ("bootdelay", Some("2")),
        ])
        .map_err(std::io::Error::other)?;
        env.activate(Slot::B, 2).map_err(std::io::Error::other)?;
        let mut image = std::fs::read(&device)?;
        image.truncate(if redundant { size * 2 } else { size });
        let mode = if redundant { 2 } else { 1 };
        seeds.push((name, input(mode, &image)));
        // confirm B (selector 0b101), the CRC recomputed by the target
        seeds.push((
            if redundant {
                "redundant_fix_crc_confirm"
            } else {
                "single_fix_crc_confirm"
            },
            input(mode | 4 | (0b101 << 3), &image),
        ));
    }
    seeds.push((
        "fw_env_config",
        input(
            0,
            b"# MTD device name  offset  size  erase size  sectors\n/dev/mtd1 0x0000 0x4000 0x10000 1\n/dev/mtd2 040000 4000\n",
        ),
    ));
    Ok(seeds)
}

/// Gzip members: plain, with every optional header field, empty, and the ends a device
/// must refuse (two members, trailing bytes, a damaged trailer, cut short), each fed in
/// pieces of one size or another.
fn gzip_seeds() -> std::io::Result<Vec<(&'static str, Vec<u8>)>> {
    let gzip = |data: &[u8]| -> std::io::Result<Vec<u8>> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data)?;
        e.finish()
    };
    let data: Vec<u8> = (0..20_000u32).flat_map(|i| (i / 7).to_le_bytes()).collect();
    let plain = gzip(&data)?;
    let mut fields = vec![0x1f, 0x8b, 8, 4 | 8 | 16 | 2, 0, 0, 0, 0, 0, 3];
    fields.extend_from_slice(&[3, 0, b'a', b'b', b'c']);
    fields.extend_from_slice(b"rootfs.ext4\0a comment\0");
    let mut crc = flate2::Crc::new();
    crc.update(&fields);
    fields.extend_from_slice(&(crc.sum() as u16).to_le_bytes());
    fields.extend_from_slice(&plain[10..]);
    let mut bad_crc = plain.clone();
    let at = plain.len() - 8;
    bad_crc[at] ^= 1;
    Ok(vec![
        ("plain", input(7, &plain)),
        ("plain_bytewise", input(0, &plain)),
        ("header_fields", input(2, &fields)),
        ("empty", input(3, &gzip(b"")?)),
        (
            "two_members",
            input(4, &[plain.clone(), plain.clone()].concat()),
        ),
        (
            "trailing",
            input(5, &[plain.clone(), b"junk".to_vec()].concat()),
        ),
        ("bad_crc", input(6, &bad_crc)),
        ("cut", input(1, &plain[..plain.len() / 2])),
    ])
}
