//! The operator half of the `evergreen` CLI, run as a real process in temp dirs.

mod common;
mod mounts;
mod require;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

const NOW: &str = "2026-11-22T10:00:00Z";

/// The longest a CLI run here may take before the test fails rather than waits on.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The CLI in `dir`, its clock reading `now` (the repositories' validities depend on it).
fn command_at(dir: &Path, now: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_evergreen"));
    cmd.current_dir(dir).env("EVERGREEN_NOW", now);
    cmd
}

/// `evergreen` run as if the clock read `now`.
fn evergreen_at(dir: &Path, now: &str, args: &[&str]) -> Output {
    common::output_within(command_at(dir, now).args(args), LIMIT)
}

fn evergreen(dir: &Path, args: &[&str]) -> Output {
    evergreen_at(dir, NOW, args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must succeed and returns its stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let o = evergreen(dir, args);
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

/// Runs a command that must fail with exit 1 and returns its one stderr line.
fn fails(dir: &Path, args: &[&str]) -> String {
    let o = evergreen(dir, args);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stdout(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "exactly one error line: {err}");
    err
}

fn keygen(dir: &Path, name: &str) -> String {
    ok(dir, &["keygen", "--out", name])
}

fn write_zip(path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("bin/app", options).unwrap();
    zip.write_all(&[7u8; 1000]).unwrap();
    zip.start_file("share/readme.txt", options).unwrap();
    zip.write_all(b"hello").unwrap();
    zip.finish().unwrap();
}

/// Re-signs the nightly channel with the manifest key `release`.
const RESIGN_NIGHTLY: [&str; 6] = resign_nightly("release");

/// Re-signs the nightly channel with the key `sign`.
const fn resign_nightly(sign: &str) -> [&str; 6] {
    ["resign", "repo", "--channel", "nightly", "--sign", sign]
}

/// The component arguments of the app file `repo_with_app` writes.
const APP: [&str; 2] = ["--component", "app=app.bin"];

/// A temp directory with an initialised repository and an app file to release (`APP`).
fn repo_with_app() -> tempfile::TempDir {
    let tmp = init_repo();
    std::fs::write(tmp.path().join("app.bin"), b"v").unwrap();
    tmp
}

/// A temp directory with a repo (`repo`) with one root key `root1` and one manifest key
/// `release`.
fn init_repo() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    keygen(dir, "root1");
    keygen(dir, "release");
    ok(
        dir,
        &[
            "init",
            "repo",
            "--product",
            "com.acme.gateway",
            "--root-key",
            "root1.pub",
            "--root-threshold",
            "1",
            "--manifest-key",
            "release.pub",
            "--sign",
            "root1",
        ],
    );
    tmp
}

/// `init_repo` with `release_nightly` published.
fn repo_with_nightly() -> tempfile::TempDir {
    let tmp = init_repo();
    release_nightly(tmp.path());
    tmp
}

/// `evergreen init repo --product p` with `root_key` for the root role (threshold
/// `threshold`), `manifest_key` for the manifest role, signed by `sign`, then `rest`.
fn init_args<'a>(
    root_key: &'a str,
    threshold: &'a str,
    manifest_key: &'a str,
    sign: &'a str,
    rest: &[&'a str],
) -> Vec<&'a str> {
    let head = [
        "init",
        "repo",
        "--product",
        "p",
        "--root-key",
        root_key,
        "--root-threshold",
        threshold,
        "--manifest-key",
        manifest_key,
        "--sign",
        sign,
    ];
    [&head[..], rest].concat()
}

fn release_nightly(dir: &Path) -> String {
    write_zip(&dir.join("app.zip"));
    std::fs::write(dir.join("settings.json"), br#"{"level": 3}"#).unwrap();
    release_version(
        dir,
        "1.2.0",
        &[
            "--component",
            "app=app.zip",
            "--component",
            "config=settings.json:file",
            "--notes",
            "Fixes the reconnect loop.",
        ],
    )
}

/// `evergreen release` of `version` on nightly for x86_64-linux, signed by `release`.
fn release_version(dir: &Path, version: &str, rest: &[&str]) -> String {
    ok(dir, &release_args(version, rest))
}

/// The arguments of `evergreen release` of `version` on nightly for x86_64-linux, signed
/// by `release`, then `rest`.
fn release_args<'a>(version: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    ReleaseArgs::of(version).then(rest)
}

/// The arguments of `evergreen release` of a version into `repo`: on nightly for
/// x86_64-linux, signed by `release`, unless a test names another channel, target or key.
#[derive(Clone, Copy)]
struct ReleaseArgs<'a> {
    version: &'a str,
    channel: &'a str,
    target: &'a str,
    sign: &'a str,
}

impl<'a> ReleaseArgs<'a> {
    fn of(version: &'a str) -> Self {
        ReleaseArgs {
            version,
            channel: "nightly",
            target: "x86_64-linux",
            sign: "release",
        }
    }

    fn channel(self, channel: &'a str) -> Self {
        ReleaseArgs { channel, ..self }
    }

    fn target(self, target: &'a str) -> Self {
        ReleaseArgs { target, ..self }
    }

    fn sign(self, sign: &'a str) -> Self {
        ReleaseArgs { sign, ..self }
    }

    /// The arguments, then `rest`.
    fn then(self, rest: &[&'a str]) -> Vec<&'a str> {
        let head = [
            "release",
            "repo",
            "--channel",
            self.channel,
            "--version",
            self.version,
            "--target",
            self.target,
            "--sign",
            self.sign,
        ];
        [&head[..], rest].concat()
    }
}

/// The arguments of `evergreen promote` of `version` from nightly to stable, signed by
/// `release`.
fn promote_to_stable(version: &str) -> [&str; 10] {
    [
        "promote",
        "repo",
        "--version",
        version,
        "--from",
        "nightly",
        "--to",
        "stable",
        "--sign",
        "release",
    ]
}

fn read_manifest(dir: &Path, channel: &str) -> serde_json::Value {
    let envelope: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!("repo/channels/{channel}.json"))).unwrap(),
    )
    .unwrap();
    let payload = evergreen::trust::decode_base64(envelope["payload"].as_str().unwrap()).unwrap();
    serde_json::from_slice(&payload).unwrap()
}

/// A zip whose data does not match its CRC (a byte changed after the archive was built)
/// passes every check of its headers, and a device would find it only while writing, its
/// inactive slot (the fallback release) already cleared: `release` inflates every entry
/// and refuses it before anything is published.
/// `init` refuses a product id that no device config takes (`product` there is a
/// non-empty string without spaces or control characters): a stray space pasted after the
/// id made a repository every device had to be configured for with a product its config
/// refuses, and configured with the id without the space, it refused every manifest as
/// another product's (`wrong_metadata`).
#[test]
fn init_refuses_a_product_id_that_no_device_config_takes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    keygen(dir, "root1");
    keygen(dir, "release");
    for product in ["com.acme.gateway ", "com acme gateway", " "] {
        let device = serde_json::json!({"product": product, "server": "/srv/repo",
            "target": "x86_64-linux", "trust": {"root": "/etc/evergreen/root.json"},
            "state_dir": "/var/lib/evergreen", "slots": {"kind": "dir", "root": "/opt/app"}});
        let refused = evergreen::Config::from_json(&device.to_string()).unwrap_err();
        assert_eq!(refused.kind(), evergreen::ErrorKind::Config, "{refused}");
        let mut args = init_args("root1.pub", "1", "release.pub", "root1", &[]);
        args[3] = product;
        let err = fails(dir, &args);
        assert!(
            err.starts_with("error[config]: ") && err.contains(&format!("{product:?}")),
            "{product:?}: {err}"
        );
        assert!(!dir.join("repo/root/1.json").exists(), "{product:?}");
    }
}

#[test]
fn release_refuses_a_zip_whose_data_does_not_match_its_crc() {
    let tmp = init_repo();
    let dir = tmp.path();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("data.bin", stored).unwrap();
    zip.write_all(b"GOOD-CONTENT").unwrap();
    let mut bytes = zip.finish().unwrap().into_inner();
    let at = bytes
        .windows(12)
        .position(|w| w == b"GOOD-CONTENT")
        .unwrap();
    bytes[at..at + 4].copy_from_slice(b"BAD!");
    std::fs::write(dir.join("corrupt.zip"), &bytes).unwrap();
    let err = fails(
        dir,
        &release_args("1.0.0", &["--component", "app=corrupt.zip"]),
    );
    assert!(
        err.starts_with("error[unsafe_archive]: ")
            && err.contains("corrupt.zip: every device would refuse this archive")
            && err.contains("data.bin")
            && err.contains("corrupt data"),
        "{err}"
    );
    assert!(!dir.join("repo/channels/nightly.json").exists());
}

/// A zip every device would refuse, whatever its config (here an entry that climbs out of
/// its component), is refused by `release` before anything is published; one with a
/// symlink, which devices allow or not by their own config, is published.
#[test]
fn release_refuses_a_zip_every_device_would_refuse() {
    let tmp = init_repo();
    let dir = tmp.path();
    let write = |name: &str, entries: &[(&str, Option<&str>)]| {
        let file = std::fs::File::create(dir.join(name)).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let options = zip::write::SimpleFileOptions::default();
        for (entry, link) in entries {
            match link {
                Some(target) => zip.add_symlink(*entry, *target, options).unwrap(),
                None => {
                    zip.start_file(*entry, options).unwrap();
                    zip.write_all(b"x").unwrap();
                }
            }
        }
        zip.finish().unwrap();
    };
    write("escape.zip", &[("bin/app", None), ("../escape", None)]);
    let err = fails(
        dir,
        &release_args("1.0.0", &["--component", "app=escape.zip"]),
    );
    assert!(
        err.starts_with("error[unsafe_archive]: ")
            && err.contains("escape.zip: every device would refuse this archive"),
        "{err}"
    );
    assert!(!dir.join("repo/channels/nightly.json").exists());
    let blobs = std::fs::read_dir(dir.join("repo/blobs/sha256")).map_or(0, |d| d.count());
    assert_eq!(blobs, 0, "a blob was published");

    write(
        "linked.zip",
        &[
            ("lib/libapp.so.1", None),
            ("lib/libapp.so", Some("libapp.so.1")),
        ],
    );
    let o = evergreen(
        dir,
        &release_args("1.0.0", &["--component", "app=linked.zip"]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Published, with a word that devices with the default limits will refuse it, naming
    // the file given, not the blob it was read back from (`blobs/sha256/<hex>`).
    let err = stderr(&o);
    assert!(
        err.starts_with(
            "warning: component app: devices with the default `archive` limits refuse linked.zip: "
        ) && err.contains("symlink"),
        "{err}"
    );
    let mut args = release_args("1.0.1", &["--component", "app=linked.zip"]);
    args.insert(0, "--json");
    let out: serde_json::Value = serde_json::from_str(&ok(dir, &args)).unwrap();
    assert_eq!(out["warnings"].as_array().map(Vec::len), Some(1), "{out}");
}

#[test]
fn keygen_writes_a_private_key_and_prints_only_the_keyid() {
    let dir = tempfile::tempdir().unwrap();
    let out = keygen(dir.path(), "k");
    let secret = std::fs::read_to_string(dir.path().join("k")).unwrap();
    let public = std::fs::read_to_string(dir.path().join("k.pub")).unwrap();
    let key = evergreen::trust::SecretKey::from_base64(&secret).unwrap();
    assert_eq!(key.public().to_base64(), public.trim());
    assert!(out.contains(&key.public().keyid()), "{out}");
    assert!(
        !out.contains(secret.trim()),
        "the secret must never be printed"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("k"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // An existing key is never overwritten.
    let err = fails(dir.path(), &["keygen", "--out", "k"]);
    assert!(err.starts_with("error[config]"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("k")).unwrap(),
        secret
    );
    // Nor is a secret whose public half a cut-off keygen never wrote; the error says so.
    std::fs::remove_file(dir.path().join("k.pub")).unwrap();
    let err = fails(dir.path(), &["keygen", "--out", "k"]);
    assert!(
        err.starts_with("error[config]") && err.contains("without its public half"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("k")).unwrap(),
        secret
    );
}

#[test]
fn the_operator_workflow_produces_a_repo_that_verifies() {
    let tmp = init_repo();
    let dir = tmp.path();
    assert!(dir.join("repo/root/1.json").is_file());

    let out = release_nightly(dir);
    assert!(
        out.contains("nightly") && out.contains("sequence 1"),
        "{out}"
    );
    let nightly = read_manifest(dir, "nightly");
    let app = &nightly["releases"][0]["targets"]["x86_64-linux"]["components"]["app"]["artifact"];
    assert_eq!(app["kind"], "zip");
    assert_eq!(app["installed_size"], 1005);
    let config =
        &nightly["releases"][0]["targets"]["x86_64-linux"]["components"]["config"]["artifact"];
    assert_eq!(config["kind"], "file");
    assert_eq!(config["name"], "settings.json");
    let blob = dir
        .join("repo/blobs/sha256")
        .join(app["sha256"].as_str().unwrap());
    assert_eq!(
        std::fs::read(blob).unwrap(),
        std::fs::read(dir.join("app.zip")).unwrap()
    );

    ok(dir, &promote_to_stable("1.2.0"));
    ok(
        dir,
        &[
            "rollout",
            "repo",
            "--channel",
            "stable",
            "--version",
            "1.2.0",
            "--percent",
            "20",
            "--sign",
            "release",
        ],
    );
    let stable = read_manifest(dir, "stable");
    assert_eq!(stable["sequence"], 2);
    assert_eq!(
        stable["releases"][0]["rollout"]["stages"][0]["percent"],
        20.0
    );
    ok(
        dir,
        &[
            "resign",
            "repo",
            "--channel",
            "stable",
            "--expires-in",
            "7",
            "--sign",
            "release",
        ],
    );
    let stable = read_manifest(dir, "stable");
    assert_eq!(stable["sequence"], 3);
    assert_eq!(stable["expires"], "2026-11-29T10:00:00Z");

    keygen(dir, "root2");
    ok(
        dir,
        &[
            "rotate",
            "repo",
            "--root-key",
            "root2.pub",
            "--sign",
            "root1",
            "--sign",
            "root2",
            "--sign",
            "release",
        ],
    );
    assert!(dir.join("repo/root/2.json").is_file());

    let out = ok(dir, &["verify", "repo"]);
    assert!(out.starts_with("ok:"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&ok(dir, &["verify", "repo", "--json"])).unwrap();
    assert_eq!(report["root_version"], 2);
    assert_eq!(
        (&report["ok"], &report["problem"]),
        (&serde_json::json!(true), &serde_json::json!(null))
    );
    assert_eq!(report["channels"][0]["channel"], "nightly");
    assert_eq!(report["channels"][1]["channel"], "stable");
    // 3, and 4 since the rotation that revoked root1 re-signed it: devices walk to root 2
    // at their next check.
    assert_eq!(report["channels"][1]["sequence"], 4);
    assert_eq!(report["channels"][1]["blobs_checked"], 2);

    // After the rotation the old root key alone can no longer rotate.
    keygen(dir, "root3");
    let err = fails(
        dir,
        &[
            "rotate",
            "repo",
            "--root-key",
            "root3.pub",
            "--sign",
            "root1",
            "--sign",
            "root3",
        ],
    );
    assert!(err.starts_with("error[threshold]"), "{err}");
}

#[test]
fn a_manifest_with_one_flipped_payload_byte_fails_verify() {
    let tmp = repo_with_nightly();
    let dir = tmp.path();
    let path = dir.join("repo/channels/nightly.json");
    let mut envelope: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut payload =
        evergreen::trust::decode_base64(envelope["payload"].as_str().unwrap()).unwrap();
    let at = payload.iter().position(|b| *b == b'1').unwrap();
    payload[at] = b'2';
    envelope["payload"] = evergreen::trust::encode_base64(&payload).into();
    std::fs::write(&path, serde_json::to_vec(&envelope).unwrap()).unwrap();

    let err = fails(dir, &["verify", "repo"]);
    assert!(err.starts_with("error[signature]"), "{err}");
    // Nothing is re-signed on top of a tampered manifest.
    let err = fails(dir, &RESIGN_NIGHTLY);
    assert!(err.starts_with("error[signature]"), "{err}");
}

#[test]
fn a_rotation_signed_only_by_the_new_key_is_refused() {
    let tmp = init_repo();
    let dir = tmp.path();
    keygen(dir, "root2");
    let err = fails(
        dir,
        &[
            "rotate",
            "repo",
            "--root-key",
            "root2.pub",
            "--sign",
            "root2",
        ],
    );
    assert!(
        err.starts_with("error[signature]") || err.starts_with("error[threshold]"),
        "{err}"
    );
    assert!(!dir.join("repo/root/2.json").exists());
}

#[test]
fn changing_the_manifest_key_resigns_every_channel() {
    let tmp = repo_with_nightly();
    let dir = tmp.path();
    keygen(dir, "release2");
    ok(
        dir,
        &[
            "rotate",
            "repo",
            "--manifest-key",
            "release2.pub",
            "--sign",
            "root1",
            "--sign",
            "release2",
        ],
    );
    assert_eq!(read_manifest(dir, "nightly")["sequence"], 2);
    ok(dir, &["verify", "repo"]);
    // The retired manifest key can no longer publish.
    let err = fails(dir, &RESIGN_NIGHTLY);
    assert!(err.starts_with("error[threshold]"), "{err}");
}

#[test]
fn a_manifest_past_its_expiry_fails_verify_until_resigned() {
    let tmp = repo_with_nightly();
    let dir = tmp.path();
    let later = |args: &[&str]| evergreen_at(dir, "2027-01-01T00:00:00Z", args);
    let o = later(&["verify", "repo"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("error[expired]"), "{}", stderr(&o));
    let o = later(&RESIGN_NIGHTLY);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(later(&["verify", "repo"]).status.code(), Some(0));
}

#[test]
fn usage_errors_exit_2_and_bad_values_are_config_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let o = evergreen(dir, &["release", "repo", "--channel"]);
    assert_eq!(o.status.code(), Some(2));
    let o = evergreen(dir, &["no-such-command"]);
    assert_eq!(o.status.code(), Some(2));
    // A malformed version is a usage error, as for the device commands' --version.
    for bad in [
        release_args("1.2", &["--component", "app=x"]),
        release_args("1.2.0", &["--component", "app=x", "--min-version", "v1"]),
    ] {
        let o = evergreen(dir, &bad);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("version"), "{}", stderr(&o));
    }

    keygen(dir, "root1");
    keygen(dir, "release");
    let err = fails(
        dir,
        &init_args("root1.pub", "0", "release.pub", "root1", &[]),
    );
    assert!(err.starts_with("error[config]"), "{err}");
    assert!(!dir.join("repo").exists());

    // A signer outside the root role: refused before anything is written.
    keygen(dir, "other");
    let err = fails(
        dir,
        &init_args("root1.pub", "1", "release.pub", "other", &[]),
    );
    assert!(err.starts_with("error[threshold]"), "{err}");
    assert!(!dir.join("repo").exists());

    // A secret key file where a public key is expected.
    let err = fails(dir, &init_args("root1", "1", "release.pub", "root1", &[]));
    assert!(err.starts_with("error[config]"), "{err}");
}

/// Channel names that differ only in case (`nightly`, `Nightly`) are one file,
/// `channels/nightly.json`, on a file system that ignores case: the FAT or exFAT of a USB
/// stick the repository is copied onto for offline devices, a macOS or Windows disk. There
/// the copy of one replaces (or, with some tools, silently leaves out) the other, and that
/// channel's devices find another channel's manifest (`wrong_metadata`) or none
/// (`not_found`). So `release` and `promote` refuse a new channel whose name folds to that
/// of a channel the repository has, naming both, before anything is written.
#[test]
fn a_new_channel_named_as_another_but_for_case_is_refused() {
    let tmp = repo_with_nightly();
    let dir = tmp.path();
    let blobs = || common::tree_digest(&dir.join("repo/blobs"));
    let before = blobs();
    std::fs::write(dir.join("other.bin"), b"another file").unwrap();
    let err = fails(
        dir,
        &ReleaseArgs::of("1.3.0")
            .channel("Nightly")
            .then(&["--component", "app=other.bin"]),
    );
    assert!(err.starts_with("error[config]: "), "{err}");
    assert!(
        err.contains("found channel nightly (channels/nightly.json)") && err.contains("Nightly"),
        "{err}"
    );
    assert!(!dir.join("repo/channels/Nightly.json").exists());
    assert_eq!(blobs(), before, "nothing copied into blobs/");

    let err = fails(
        dir,
        &[
            "promote",
            "repo",
            "--version",
            "1.2.0",
            "--from",
            "nightly",
            "--to",
            "NIGHTLY",
            "--sign",
            "release",
        ],
    );
    assert!(err.starts_with("error[config]: "), "{err}");
    assert!(err.contains("NIGHTLY"), "{err}");
    assert!(!dir.join("repo/channels/NIGHTLY.json").exists());

    // Names that differ in more than case are other channels, as before.
    ok(
        dir,
        &ReleaseArgs::of("1.3.0")
            .channel("nightly-2")
            .then(&["--component", "app=other.bin"]),
    );
}

/// A repository that has two channels named alike but for case already (made before
/// `release` refused the second, or by other means) still verifies, but `verify`, run
/// before every upload, warns: a copy on a USB stick's FAT or exFAT keeps one of them, and
/// `verify` of that copy sees nothing wrong.
#[test]
fn verify_warns_of_channels_named_alike_but_for_case() {
    let tmp = repo_with_nightly();
    let dir = tmp.path();
    common::copy_dir(&dir.join("repo"), &dir.join("other"));
    std::fs::remove_file(dir.join("other/channels/nightly.json")).unwrap();
    ok(
        dir,
        &[
            "release",
            "other",
            "--channel",
            "Nightly",
            "--version",
            "1.3.0",
            "--target",
            "x86_64-linux",
            "--sign",
            "release",
            "--component",
            "app=app.zip",
        ],
    );
    std::fs::copy(
        dir.join("other/channels/Nightly.json"),
        dir.join("repo/channels/Nightly.json"),
    )
    .unwrap();
    let o = evergreen(dir, &["verify", "repo"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let warning = "warning: channels Nightly and nightly differ only in case";
    assert!(stderr(&o).contains(warning), "{}", stderr(&o));
    let out: serde_json::Value =
        serde_json::from_str(&ok(dir, &["verify", "repo", "--json"])).unwrap();
    let warnings = out["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .starts_with(&warning["warning: ".len()..])),
        "{out}"
    );
}

#[test]
fn publishing_the_same_version_and_target_twice_is_refused() {
    let tmp = repo_with_nightly();
    let dir = tmp.path();
    let err = fails(dir, &release_args("1.2.0", &["--component", "app=app.zip"]));
    assert!(err.starts_with("error[config]"), "{err}");
    // Another target of the same version is fine.
    let out = ok(
        dir,
        &[
            "release",
            "repo",
            "--channel",
            "nightly",
            "--version",
            "1.2.0",
            "--target",
            "acme-board-rev2",
            "--component",
            "rootfs=app.zip:image",
            "--sign",
            "release",
        ],
    );
    assert!(out.contains("sequence 2"), "{out}");
    // A component file that is missing: the error names the component and the file, and
    // the channel is left as it was.
    let before = std::fs::read(dir.join("repo/channels/nightly.json")).unwrap();
    let components = [
        "--component",
        "app=app.zip",
        "--component",
        "assets=missing.zip",
    ];
    let err = fails(dir, &release_args("1.3.0", &components));
    assert!(
        err.starts_with("error[io]: component assets: open missing.zip"),
        "{err}"
    );
    let after = std::fs::read(dir.join("repo/channels/nightly.json")).unwrap();
    assert_eq!(before, after, "a failed release changed the channel");
    let nightly = read_manifest(dir, "nightly");
    assert_eq!(
        nightly["releases"][0]["targets"]["acme-board-rev2"]["components"]["rootfs"]["artifact"]
            ["kind"],
        "image"
    );
}

#[test]
fn every_command_has_help_with_an_example() {
    let tmp = tempfile::tempdir().unwrap();
    for cmd in [
        "keygen", "init", "release", "promote", "rollout", "resign", "prune", "rotate", "verify",
    ] {
        let out = ok(tmp.path(), &[cmd, "--help"]);
        assert!(
            out.contains("Example:") && out.contains("evergreen"),
            "{cmd}: {out}"
        );
    }
}

/// `--config` is the device commands' option: their help lists it, the operator commands'
/// help (they take a REPO) does not, and the top-level help puts it under the device
/// commands' options, not among those every command takes. `evergreen --config F status`
/// (before the command, as an alias or wrapper puts it) still works.
#[test]
fn config_is_in_the_help_of_the_device_commands_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for cmd in [
        "keygen", "init", "release", "promote", "rollout", "resign", "prune", "rotate", "verify",
    ] {
        let out = ok(dir, &[cmd, "--help"]);
        assert!(!out.contains("--config"), "{cmd}: {out}");
    }
    for cmd in [
        "check",
        "update",
        "status",
        "boot",
        "confirm",
        "rollback",
        "reinstall",
        "channel",
        "activate",
        "skip",
        "provision",
    ] {
        let out = ok(dir, &[cmd, "--help"]);
        assert!(out.contains("--config <FILE>"), "{cmd}: {out}");
        assert!(out.contains("EVERGREEN_CONFIG"), "{cmd}: {out}");
    }
    let top = ok(dir, &["--help"]);
    let general = top.split("\nOptions:\n").nth(1).expect(&top);
    let general = general.split("\n\n").next().unwrap();
    assert!(!general.contains("--config"), "{top}");
    let device = top
        .split("\nDevice command options:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no device command options: {top}"));
    assert!(device.contains("--config <FILE>"), "{top}");

    // Before or after the command, it is the config read.
    let missing = dir.join("no-such.json");
    let missing = missing.to_str().unwrap();
    for args in [
        ["--config", missing, "status"],
        ["status", "--config", missing],
    ] {
        let err = fails(dir, &args);
        assert!(
            err.starts_with("error[io]: ") && err.contains(missing),
            "{err}"
        );
    }
    // An operator command refuses it in either place, rather than read by nothing.
    let repo = dir.join("repo");
    let repo = repo.to_str().unwrap();
    for args in [
        ["--config", missing, "verify", repo],
        ["verify", repo, "--config", missing],
    ] {
        let out = evergreen(dir, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("--config"), "{args:?}: {err}");
    }
}

#[test]
fn prune_removes_old_releases_and_the_channel_still_verifies() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    for version in ["1.0.0", "1.1.0", "1.2.0"] {
        release_version(dir, version, &APP);
    }
    let prune_keeping = |keep| {
        [
            "prune",
            "repo",
            "--channel",
            "nightly",
            "--keep",
            keep,
            "--sign",
            "release",
        ]
    };
    let prune = prune_keeping("1");
    let out = ok(dir, &[&["--json"][..], &prune[..]].concat());
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["removed"], serde_json::json!(["1.1.0", "1.0.0"]));
    assert_eq!(report["releases"], 1);
    assert_eq!(report["sequence"], 4);
    let nightly = read_manifest(dir, "nightly");
    assert_eq!(nightly["releases"][0]["version"], "1.2.0");
    assert_eq!(nightly["releases"].as_array().unwrap().len(), 1);
    // Blobs stay; the repository verifies as a client would.
    ok(dir, &["verify", "repo"]);
    let again = ok(dir, &prune);
    assert!(
        again.contains("nothing to prune on nightly (1 release; sequence 4 unchanged)"),
        "{again}"
    );
    let err = fails(dir, &prune_keeping("0"));
    assert!(err.starts_with("error[config]"), "{err}");
}

/// What `prune --help` says it keeps is what it keeps: a stone still ramping is the one
/// devices below a `min_version` inside its rollout take, so it stays, and so does the
/// release at 100% before it, which the devices outside the ramp take.
#[test]
fn prune_keeps_the_ramping_stone_and_the_one_below_it_its_help_names() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    release_version(dir, "1.0.0", &APP);
    release_version(dir, "1.5.0", &APP);
    release_version(dir, "1.6.0", &[&APP[..], &["--rollout", "50"]].concat());
    release_version(
        dir,
        "2.0.0",
        &[&APP[..], &["--min-version", "1.5.0"]].concat(),
    );
    release_version(
        dir,
        "3.0.0",
        &[&APP[..], &["--min-version", "2.0.0"]].concat(),
    );
    let out = ok(
        dir,
        &[
            "--json",
            "prune",
            "repo",
            "--channel",
            "nightly",
            "--keep",
            "1",
            "--sign",
            "release",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["removed"], serde_json::json!(["1.0.0"]));
    let help = ok(dir, &["prune", "--help"]);
    assert!(
        help.contains("a ramping stone stays for the devices inside it"),
        "{help}"
    );
    assert!(help.contains("the stone at 100% below it for"), "{help}");
    assert!(
        !help.contains("releases between the stone and the kept one go"),
        "{help}"
    );
}

/// `release --help` lists the stranding `--min-version` among its refusals, as it is one.
#[test]
fn release_refuses_a_min_version_that_strands_devices_as_its_help_says() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    release_version(dir, "1.0.0", &APP);
    let err = fails(
        dir,
        &release_args("2.0.0", &[&APP[..], &["--min-version", "1.5.0"]].concat()),
    );
    assert!(
        err.starts_with("error[config]: expected a stepping stone"),
        "{err}"
    );
    let help = ok(dir, &["release", "--help"]);
    let words = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("a --min-version that leaves devices running a release of the channel below it offered nothing"),
        "{help}"
    );
}

/// A component kind that is not zip, file, image or image-raw is named as such, not taken
/// for part of the file name; a colon elsewhere in the path is still read as part of it.
#[test]
fn an_unknown_component_kind_is_named_in_the_error() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    let err = fails(
        dir,
        &release_args("1.0.0", &["--component", "app=app.bin:tar"]),
    );
    assert_eq!(
        err.trim_end(),
        "error[config]: --component app: expected a kind of zip, file, image or image-raw after ':', found \"tar\""
    );
    std::fs::create_dir(dir.join("v:2")).unwrap();
    std::fs::write(dir.join("v:2/app.zip"), b"not a zip").unwrap();
    release_version(dir, "1.0.0", &["--component", "app=v:2/app.zip:file"]);
}

/// A component's path is bytes, as every other path argument is (REPO, `--sign`, …): a
/// build directory whose name is not UTF-8 (`build-\xff`) is published from as any other,
/// the zip and the file alike, and the blobs are the files' bytes.
#[test]
fn release_takes_a_component_path_that_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = init_repo();
    let dir = tmp.path();
    let build = std::ffi::OsStr::from_bytes(b"build-caf\xe9");
    std::fs::create_dir(dir.join(build)).unwrap();
    write_zip(&dir.join(build).join("app.zip"));
    std::fs::write(dir.join(build).join("settings.json"), b"{}").unwrap();
    let component = |spec: &[u8]| {
        let mut arg = b"--component=".to_vec();
        arg.extend_from_slice(spec);
        std::ffi::OsString::from(std::ffi::OsStr::from_bytes(&arg))
    };
    let out = common::output_within(
        command_at(dir, NOW)
            .args(release_args("1.0.0", &[]))
            .arg(component(b"app=build-caf\xe9/app.zip"))
            .arg(component(b"config=build-caf\xe9/settings.json:file")),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let nightly = read_manifest(dir, "nightly");
    let components = &nightly["releases"][0]["targets"]["x86_64-linux"]["components"];
    assert_eq!(components["app"]["artifact"]["kind"], "zip", "{nightly}");
    assert_eq!(components["config"]["artifact"]["name"], "settings.json");
    assert_eq!(components["config"]["artifact"]["size"], 2);
}

/// A `file` component is placed on devices under its own name, so that name must be one
/// every device takes; a name that is not (a dotfile such as `.env`, a name that is not
/// UTF-8, one holding ':') is refused saying which rule it breaks and what to do, rather
/// than "expected a file with a plain name", which all three look like to an operator.
#[test]
fn a_file_component_whose_name_devices_refuse_says_why() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = init_repo();
    let dir = tmp.path();
    let cases: [(&[u8], &str); 3] = [
        (b".env", "starts with '.'"),
        (b"r\xe9glages.json", "is not UTF-8"),
        (b"a:b", "holds ':'"),
    ];
    for (name, why) in cases {
        let file = std::ffi::OsStr::from_bytes(name);
        std::fs::write(dir.join(file), b"{}").unwrap();
        let mut arg = b"--component=config=".to_vec();
        arg.extend_from_slice(name);
        arg.extend_from_slice(b":file");
        let out = common::output_within(
            command_at(dir, NOW)
                .args(release_args("1.0.0", &[]))
                .arg(std::ffi::OsStr::from_bytes(&arg)),
            LIMIT,
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.starts_with(
                "error[config]: component config: expected a file name devices can place as it is"
            ) && err.contains(why)
                && err.contains("rename it"),
            "{file:?}: {err}"
        );
    }
    assert!(!dir.join("repo/channels/nightly.json").exists());
}

/// `evergreen init … | head -1`: the reader goes away before the output is written. The
/// command still does its work and exits 0, with nothing on stderr (no panic).
#[test]
fn a_closed_stdout_neither_stops_the_work_nor_panics() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "root");
    keygen(dir.path(), "release");
    let mut child = command_at(dir.path(), NOW)
        .args(["init", "repo", "--product", "com.acme.pipe"])
        .args(["--root-key", "root.pub", "--root-threshold", "1"])
        .args(["--manifest-key", "release.pub", "--sign", "root", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = require::finish_within(child, LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    assert!(dir.path().join("repo/root/1.json").is_file());
}

/// `evergreen verify … --json > report.json` on a full disk: the report is lost, so the
/// command fails with `io` once its work is done, instead of exiting 0 over an empty file.
#[test]
fn output_that_cannot_be_written_is_an_io_error_after_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let child = command_at(dir.path(), NOW)
        .args(["keygen", "--out", "lost", "--json"])
        .stdout(full)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = require::finish_within(child, LIMIT);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("error[io]: expected the command's output written to standard output, found: No space left on device"),
        "{err}"
    );
    assert!(err.contains("(the command itself finished)"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(dir.path().join("lost").is_file() && dir.path().join("lost.pub").is_file());
}

/// `--help` and `--version` that cannot be written fail as any output does (`error[io]`,
/// exit code 1): they exited 0 with nothing written.
#[test]
fn help_that_cannot_be_written_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["--help"][..], &["--version"], &["check", "--help"]] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let child = command_at(dir.path(), NOW)
            .args(args)
            .stdout(full)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = require::finish_within(child, LIMIT);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("error[io]: expected --help or --version written to standard output, found: No space left on device"),
            "{args:?}: {err}"
        );
    }
}

/// A path that is not UTF-8 is printed lossily in `--json` output: the command's work is
/// done and reported, never ended by a panic after the files were written.
#[test]
fn a_path_that_is_not_utf8_is_printed_lossily_in_json() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let name = std::ffi::OsStr::from_bytes(b"key\xff");
    let out = command_at(dir.path(), NOW)
        .arg("keygen")
        .arg("--out")
        .arg(name)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["secret_key_file"], "key\u{fffd}");
    assert_eq!(v["public_key_file"], "key\u{fffd}.pub");
    assert!(dir.path().join(name).is_file());
}

#[test]
fn keygen_refuses_to_name_a_secret_key_file_pub() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(dir.path(), &["keygen", "--out", "release.pub"]);
    assert!(
        err.starts_with("error[config]: expected a secret key file name"),
        "{err}"
    );
    assert!(!dir.path().join("release.pub").exists());
    assert!(!dir.path().join("release.pub.pub").exists());
}

/// `keygen --out keys` with `keys` a directory (the file name left off), or `--out keys/`,
/// names no file to write the key to: the error says it found a directory, not a key file
/// that a keygen cut off left without its public half, to be removed, and writes nothing.
#[test]
fn keygen_into_a_directory_says_it_found_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::write(dir.path().join("keys/kept"), b"x").unwrap();
    for out in ["keys", "keys/", "newdir/"] {
        let err = fails(dir.path(), &["keygen", "--out", out]);
        assert!(
            err.starts_with("error[config]: expected a file name for the secret key")
                && err.contains(&format!("found the directory {out}")),
            "{out}: {err}"
        );
        assert!(!err.contains("remove it"), "{out}: {err}");
    }
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["keys"]);
    assert_eq!(
        std::fs::read_dir(dir.path().join("keys")).unwrap().count(),
        1
    );
}

#[test]
fn signing_under_an_expired_root_is_refused() {
    let dir = init_repo();
    write_zip(&dir.path().join("app.zip"));
    let before = std::fs::read_dir(dir.path().join("repo/channels"))
        .unwrap()
        .count();
    // The root of init_repo is valid for 365 days from NOW.
    let out = evergreen_at(
        dir.path(),
        "2030-01-01T00:00:00Z",
        &release_args("1.0.0", &["--component", "app=app.zip"]),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error[expired]: root version 1 expired at")
            && err.contains("renew it first (evergreen rotate REPO --sign ROOT_KEY)"),
        "{err}"
    );
    let after = std::fs::read_dir(dir.path().join("repo/channels"))
        .unwrap()
        .count();
    assert_eq!(before, after, "a channel was written");
}

#[test]
fn adding_a_target_to_a_published_release_refuses_options_that_would_change_it() {
    let dir = repo_with_nightly();
    let before = read_manifest(dir.path(), "nightly");
    let arm = |rest: &[&str]| -> Vec<String> {
        let args = ReleaseArgs::of("1.2.0").target("aarch64-linux");
        let args = args.then(&["--component", "app=app.zip"]);
        args.iter()
            .chain(rest)
            .map(|s| s.to_string())
            .collect::<Vec<String>>()
    };
    let refused = arm(&["--critical", "--security-version", "7", "--rollout", "5"]);
    let refused: Vec<&str> = refused.iter().map(String::as_str).collect();
    let err = fails(dir.path(), &refused);
    assert!(
        err.starts_with("error[config]: expected only components when adding target aarch64-linux to the published release 1.2.0, found --critical, --security-version 7 (the release has 0), --rollout"),
        "{err}"
    );
    assert_eq!(read_manifest(dir.path(), "nightly"), before);
    // The same notes are no change; components alone add the target.
    let same = arm(&["--notes", "Fixes the reconnect loop."]);
    ok(
        dir.path(),
        &same.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let m = read_manifest(dir.path(), "nightly");
    assert!(
        m["releases"][0]["targets"]["aarch64-linux"].is_object(),
        "{m}"
    );
}

#[test]
fn a_validity_beyond_a_century_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "root1");
    keygen(dir.path(), "release");
    let err = fails(
        dir.path(),
        &init_args(
            "root1.pub",
            "1",
            "release.pub",
            "root1",
            &["--expires-in", "3000000"],
        ),
    );
    assert_eq!(
        err.trim_end(),
        "error[config]: expected a validity of at most 36500 days, found 3000000 (--expires-in)"
    );
    assert!(!dir.path().join("repo").exists());
}

#[test]
fn keygen_makes_its_directory_and_signing_with_a_pub_file_is_refused_by_name() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["keygen", "--out", "keys/root"]);
    ok(dir.path(), &["keygen", "--out", "keys/release"]);
    let keys = std::fs::metadata(dir.path().join("keys")).unwrap();
    assert_eq!(keys.permissions().mode() & 0o777, 0o700);
    let err = fails(
        dir.path(),
        &init_args(
            "keys/root.pub",
            "1",
            "keys/release.pub",
            "keys/root.pub",
            &[],
        ),
    );
    assert!(
        err.starts_with("error[config]: expected a secret key file to sign with, found keys/root.pub, a public key"),
        "{err}"
    );
}

/// Releases run at the same time take turns on the repository lock: none is lost.
#[test]
fn concurrent_releases_all_land() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    let (rounds, processes) = (2, 4);
    for round in 0..rounds {
        // All started before any is waited for.
        let children: Vec<_> = (0..processes)
            .map(|p| {
                let version = format!("{round}.{p}.0");
                command_at(dir, NOW)
                    .args(release_args(&version, &APP))
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("the evergreen binary starts")
            })
            .collect();
        for child in children {
            let o = require::finish_within(child, LIMIT);
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        }
    }
    let _ = ok(dir, &["verify", "repo"]);
    let nightly = read_manifest(dir, "nightly");
    assert_eq!(
        nightly["releases"].as_array().unwrap().len(),
        rounds * processes
    );
    assert_eq!(nightly["sequence"], rounds * processes);
    // The lock file is local bookkeeping: verify ignores it.
    assert!(dir.join("repo/.lock").is_file());
}

/// promote, rollout and prune take `--expires-in`; without it a channel keeps its
/// validity, and a clock behind the channel's last `issued` is refused.
#[test]
fn changes_keep_the_channels_validity_unless_given_and_refuse_a_clock_behind_it() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    for version in ["1.0.0", "1.1.0"] {
        release_version(
            dir,
            version,
            &["--component", "app=app.bin", "--expires-in", "7"],
        );
    }
    let sign = ["--sign", "release"];
    let rollout = [
        "rollout",
        "repo",
        "--channel",
        "nightly",
        "--version",
        "1.1.0",
    ];
    let signed = |command: &[&str], rest: &[&str]| ok(dir, &[command, rest, &sign].concat());
    signed(&rollout, &["--percent", "50"]);
    let validity = |channel: &str| {
        let m = read_manifest(dir, channel);
        let t = |f: &str| {
            m[f].as_str()
                .unwrap()
                .parse::<evergreen::Timestamp>()
                .unwrap()
        };
        (t("expires").unix() - t("issued").unix()) / 86_400
    };
    assert_eq!(validity("nightly"), 7);
    let promote = ["promote", "repo", "--version", "1.1.0", "--from", "nightly"];
    signed(&promote, &["--to", "stable", "--expires-in", "3"]);
    assert_eq!(validity("stable"), 3);
    signed(&rollout, &["--percent", "100", "--expires-in", "2"]);
    assert_eq!(validity("nightly"), 2);
    let prune = ["prune", "repo", "--channel", "nightly", "--keep", "1"];
    signed(&prune, &["--expires-in", "4"]);
    assert_eq!(validity("nightly"), 4);
    assert_eq!(
        read_manifest(dir, "nightly")["releases"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let o = evergreen_at(dir, "2026-11-22T09:00:00Z", &RESIGN_NIGHTLY);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("error[config]")
            && err.contains(&format!("expected a clock at or after the channel's last issued {NOW}, found 2026-11-22T09:00:00Z")),
        "{err}"
    );
}

/// The commands that change a repository say in their help that they wait for it.
#[test]
fn the_help_of_every_change_says_it_waits_for_the_repository_lock() {
    let tmp = tempfile::tempdir().unwrap();
    for cmd in [
        "init", "release", "promote", "rollout", "resign", "prune", "rotate",
    ] {
        let out = ok(tmp.path(), &[cmd, "--help"]);
        assert!(out.contains("Waits while another command"), "{cmd}: {out}");
        assert!(out.contains("REPO/.lock"), "{cmd}: {out}");
    }
    for cmd in ["promote", "rollout", "prune"] {
        let out = ok(tmp.path(), &[cmd, "--help"]);
        assert!(out.contains("--expires-in"), "{cmd}: {out}");
    }
}

/// `init` makes each directory it creates durable in its parent, as it does root/1.json
/// (counted with the crash points of the fault-injection build).
#[cfg(feature = "fault-injection")]
#[test]
fn init_makes_its_directories_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    keygen(dir, "root1");
    keygen(dir, "release");
    let o = common::output_within(
        command_at(dir, NOW)
            .env("EVERGREEN_CRASH_COUNT", "1")
            .args(init_args("root1.pub", "1", "release.pub", "root1", &[])),
        LIMIT,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let syncs = stderr(&o)
        .lines()
        .filter(|l| l.ends_with(" fsync dir"))
        .count();
    // At least one for each of repo, repo/root, repo/channels, repo/blobs and
    // repo/blobs/sha256, and one for root/1.json.
    assert!(syncs >= 6, "{}", stderr(&o));
}

/// The security order is per target and both ways: an older release with a higher security
/// version than a newer one is refused, naming both; another target's release does not
/// count.
#[test]
fn security_versions_are_ordered_per_target_both_ways() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    let app = APP;
    release_version(dir, "1.1.0", &app);
    let older = release_args("1.0.0", &[&app[..], &["--security-version", "5"]].concat());
    let err = fails(dir, &older);
    assert!(
        err.starts_with("error[config]: expected a security version of at most 0 for 1.0.0 on x86_64-linux (that of the newer release 1.1.0 on channel nightly"),
        "{err}"
    );
    assert!(err.trim_end().ends_with("found 5"), "{err}");
    let arm: Vec<&str> = older
        .iter()
        .map(|a| {
            if *a == "x86_64-linux" {
                "aarch64-linux"
            } else {
                a
            }
        })
        .collect();
    ok(dir, &arm);
}

/// Promote and prune go by what devices below a min_version are offered: a halted release
/// is no stepping stone, a newer release without a min_version takes them past it (no
/// stone needed), and prune keeps the release they take rather than an older halted one.
#[test]
fn stepping_stones_are_what_devices_below_min_version_are_offered() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    let app = APP;
    release_version(dir, "1.0.0", &app);
    release_version(dir, "1.1.0", &[&app[..], &["--rollout", "0"]].concat());
    release_version(dir, "1.2.0", &app);
    release_version(
        dir,
        "2.0.0",
        &[&app[..], &["--min-version", "1.1.0"]].concat(),
    );
    let promote = |version: &str, rest: &[&str]| {
        evergreen(dir, &[&promote_to_stable(version)[..], rest].concat())
    };
    assert_eq!(promote("1.0.0", &[]).status.code(), Some(0));
    assert_eq!(promote("1.1.0", &["--rollout", "0"]).status.code(), Some(0));
    let refused = promote("2.0.0", &[]);
    let err = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error[config]: expected a stepping stone on channel stable for x86_64-linux devices running 1.0.0 (below 1.1.0, the min_version of 2.0.0)"),
        "{err}"
    );

    // Devices on 1.0.0 take 1.2.0 (1.1.0 is halted): it is the stone prune keeps.
    let prune = [
        "--json",
        "prune",
        "repo",
        "--channel",
        "nightly",
        "--keep",
        "1",
        "--sign",
        "release",
    ];
    let report: serde_json::Value = serde_json::from_str(&ok(dir, &prune)).unwrap();
    assert_eq!(report["removed"], serde_json::json!(["1.1.0", "1.0.0"]));

    // 3.0.0 has no min_version: devices on 1.0.0 take it, so 2.0.0 needs no stone there.
    release_version(dir, "3.0.0", &app);
    assert_eq!(promote("3.0.0", &[]).status.code(), Some(0));
    let promoted = promote("2.0.0", &[]);
    assert_eq!(promoted.status.code(), Some(0), "{}", stderr(&promoted));
}

/// A repo whose nightly has 1.0.0, 1.5.0 and 2.0.0, which devices below 1.5.0 reach only
/// through the stepping stone 1.5.0 (2.0.0's `min_version`).
fn repo_with_a_stepping_stone() -> tempfile::TempDir {
    let tmp = repo_with_app();
    let dir = tmp.path();
    release_version(dir, "1.0.0", &APP);
    release_version(dir, "1.5.0", &APP);
    release_version(
        dir,
        "2.0.0",
        &[&APP[..], &["--min-version", "1.5.0"]].concat(),
    );
    tmp
}

/// `rollout` of the stepping stone 1.5.0 on nightly (see [`repo_with_a_stepping_stone`])
/// to `percent`, with `--json` when `json`.
fn roll_out_the_stone(dir: &Path, percent: &str, json: bool) -> std::process::Output {
    let args = [
        "rollout",
        "repo",
        "--channel",
        "nightly",
        "--version",
        "1.5.0",
        "--percent",
        percent,
        "--sign",
        "release",
    ];
    evergreen_json_or_not(dir, json, &args)
}

/// `evergreen args` in `dir`, with `--json` first when `json`.
fn evergreen_json_or_not(dir: &Path, json: bool, args: &[&str]) -> std::process::Output {
    let json_flag: &[&str] = if json { &["--json"] } else { &[] };
    evergreen(dir, &[json_flag, args].concat())
}

/// Halting the only stepping stone goes through (it is how a broken stone is stopped), and
/// every command that shows the channel names the devices it leaves offered nothing:
/// a warning on stderr, `stranded` in the JSON, and `verify` too, until a stone ramps.
#[test]
fn halting_the_only_stepping_stone_goes_through_and_names_the_stranded_devices() {
    let tmp = repo_with_a_stepping_stone();
    let dir = tmp.path();
    let rollout = |percent: &str, json: bool| roll_out_the_stone(dir, percent, json);
    let verify = || -> serde_json::Value {
        serde_json::from_str(&ok(dir, &["--json", "verify", "repo"])).unwrap()
    };
    assert_eq!(verify()["channels"][0]["stranded"], serde_json::json!([]));

    let halted = rollout("0", false);
    assert_eq!(halted.status.code(), Some(0), "{}", stderr(&halted));
    assert_eq!(
        stderr(&halted),
        "warning: channel nightly offers nothing to x86_64-linux devices running 1.0.0: a newer release's min_version holds them back and no stepping stone's rollout reaches them; promote or ramp one\n"
    );
    let stranded = serde_json::json!([{"target": "x86_64-linux", "running": "1.0.0"}]);
    assert_eq!(verify()["channels"][0]["stranded"], stranded);
    let text = evergreen(dir, &["verify", "repo"]);
    assert_eq!(text.status.code(), Some(0));
    assert!(
        stderr(&text).contains("devices running 1.0.0"),
        "{}",
        stderr(&text)
    );

    // A ramp, even a small one, reaches everyone in time: nothing is stranded.
    let ramped = rollout("5", true);
    assert_eq!(ramped.status.code(), Some(0), "{}", stderr(&ramped));
    assert_eq!(stderr(&ramped), "");
    let report: serde_json::Value = serde_json::from_slice(&ramped.stdout).unwrap();
    assert_eq!(report["stranded"], serde_json::json!([]));
    assert_eq!(verify()["channels"][0]["stranded"], serde_json::json!([]));
}

/// Devices below every release a channel lists, which every one of them holds back with
/// its `min_version` (here a first release; or after a prune of the release they run),
/// are offered nothing: the release goes through and it and `verify` name them, in
/// text and in JSON, until a release they can take is listed.
#[test]
fn a_release_names_the_devices_below_every_listed_release() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    let min = [&APP[..], &["--min-version", "1.0.0"]].concat();
    let released = evergreen(dir, &release_args("1.5.0", &min));
    assert_eq!(released.status.code(), Some(0), "{}", stderr(&released));
    assert_eq!(
        stderr(&released),
        "warning: channel nightly offers nothing to x86_64-linux devices running anything below 1.0.0: a newer release's min_version holds them back and no stepping stone's rollout reaches them; promote or ramp one\n"
    );
    let verify = || -> serde_json::Value {
        serde_json::from_str(&ok(dir, &["--json", "verify", "repo"])).unwrap()
    };
    assert_eq!(
        verify()["channels"][0]["stranded"],
        serde_json::json!([{"target": "x86_64-linux", "below": "1.0.0"}])
    );
    let json = ok(
        dir,
        &[&["--json"][..], &release_args("1.0.0", &APP)].concat(),
    );
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["stranded"], serde_json::json!([]));
    assert_eq!(verify()["channels"][0]["stranded"], serde_json::json!([]));
}

/// A rotation that changes the manifest key re-signs every channel, and names each, with
/// the devices it leaves offered nothing, as every other command that changes a channel
/// does: a line and a warning in text, `channels` with `stranded` in the JSON.
#[test]
fn a_manifest_key_rotation_names_the_channels_it_resigns_and_the_stranded_devices() {
    let tmp = repo_with_a_stepping_stone();
    let dir = tmp.path();
    let halted = roll_out_the_stone(dir, "0", false);
    assert_eq!(halted.status.code(), Some(0), "{}", stderr(&halted));
    keygen(dir, "release2");
    keygen(dir, "release3");
    let rotate = |key: &str, json: bool| {
        let public = format!("{key}.pub");
        let args = [
            "rotate",
            "repo",
            "--manifest-key",
            &public,
            "--sign",
            "root1",
            "--sign",
            key,
        ];
        evergreen_json_or_not(dir, json, &args)
    };
    let warning = "warning: channel nightly offers nothing to x86_64-linux devices running 1.0.0: a newer release's min_version holds them back and no stepping stone's rollout reaches them; promote or ramp one\n";

    let text = rotate("release2", false);
    assert_eq!(text.status.code(), Some(0), "{}", stderr(&text));
    assert_eq!(stderr(&text), warning);
    let stdout = String::from_utf8(text.stdout).unwrap();
    assert!(
        stdout.contains("\nre-signed nightly (sequence "),
        "{stdout}"
    );

    let json = rotate("release3", true);
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    assert_eq!(stderr(&json), "");
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["root_version"], 3);
    let channels = report["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 1, "{report}");
    assert_eq!(channels[0]["channel"], "nightly");
    assert_eq!(
        channels[0]["sequence"],
        read_manifest(dir, "nightly")["sequence"]
    );
    assert_eq!(
        channels[0]["stranded"],
        serde_json::json!([{"target": "x86_64-linux", "running": "1.0.0"}])
    );

    // A renewal that keeps the manifest key re-signs nothing.
    let renewed = evergreen(dir, &["--json", "rotate", "repo", "--sign", "root1"]);
    let report: serde_json::Value = serde_json::from_slice(&renewed.stdout).unwrap();
    assert_eq!(
        report["channels"],
        serde_json::json!([]),
        "{}",
        stderr(&renewed)
    );
}

/// A second `init` on a repository is refused, naming the root it found, and leaves that
/// root byte for byte: devices may already pin it.
#[test]
fn a_second_init_is_refused_and_leaves_the_pinned_root_as_it_was() {
    let tmp = init_repo();
    let dir = tmp.path();
    let pinned = std::fs::read(dir.join("repo/root/1.json")).unwrap();
    keygen(dir, "other");
    let err = fails(
        dir,
        &init_args("other.pub", "1", "release.pub", "other", &[]),
    );
    assert!(
        err.starts_with("error[config]: expected no repository at repo"),
        "{err}"
    );
    assert!(err.contains("root/1.json"), "{err}");
    assert_eq!(std::fs::read(dir.join("repo/root/1.json")).unwrap(), pinned);
}

/// Temp files an interrupted command left (another process's: a rerun's temp names
/// differ) are warned about by `verify`, which still succeeds, and removed by the next
/// change.
#[test]
fn temp_files_left_by_an_interrupted_command_are_reported_then_removed() {
    let tmp = repo_with_nightly();
    let dir = tmp.path();
    let stale = [
        "repo/blobs/sha256/incoming.tmp-4000001",
        "repo/channels/nightly.json.tmp-4000002",
    ];
    for path in stale {
        std::fs::write(dir.join(path), b"cut off").unwrap();
    }
    let o = evergreen(dir, &["verify", "repo"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for path in stale {
        let warned = stderr(&o)
            .lines()
            .any(|l| l.starts_with("warning: ") && l.contains(path));
        assert!(warned, "{path}: {}", stderr(&o));
    }
    let report: serde_json::Value =
        serde_json::from_str(&ok(dir, &["verify", "repo", "--json"])).unwrap();
    assert_eq!(
        report["stray_temps"].as_array().unwrap().len(),
        2,
        "{report}"
    );

    std::fs::write(dir.join("app.bin"), b"v").unwrap();
    release_version(dir, "1.3.0", &APP);
    for path in stale {
        assert!(!dir.join(path).exists(), "{path} is left");
    }
    let o = evergreen(dir, &["verify", "repo"]);
    assert_eq!(stderr(&o), "");
    let report: serde_json::Value =
        serde_json::from_str(&ok(dir, &["verify", "repo", "--json"])).unwrap();
    assert_eq!(report["stray_temps"], serde_json::json!([]));
}

/// The key that signs every release must not also be a root key: its holder could then
/// sign a new root. `init` and `rotate` refuse a key given for both roles, and nothing is
/// written; a rotation that gives neither role's keys still renews the root.
#[test]
fn a_key_in_both_roles_is_refused() {
    let tmp = init_repo();
    let dir = tmp.path();
    keygen(dir, "solo");
    let shared = [
        "init",
        "other",
        "--product",
        "p",
        "--root-key",
        "solo.pub",
        "--root-threshold",
        "1",
        "--manifest-key",
        "solo.pub",
        "--sign",
        "solo",
    ];
    let err = fails(dir, &shared);
    assert!(
        err.starts_with("error[config]: expected manifest keys apart from the root keys"),
        "{err}"
    );
    assert!(!dir.join("other").exists());
    let rotations: [&[&str]; 2] = [
        &[
            "rotate",
            "repo",
            "--manifest-key",
            "root1.pub",
            "--sign",
            "root1",
        ],
        &[
            "rotate",
            "repo",
            "--root-key",
            "release.pub",
            "--sign",
            "root1",
            "--sign",
            "release",
        ],
    ];
    for args in rotations {
        let err = fails(dir, args);
        assert!(err.contains("found key"), "{args:?}: {err}");
        assert!(!dir.join("repo/root/2.json").exists(), "{args:?}");
    }
    ok(dir, &["rotate", "repo", "--sign", "root1"]);
    assert!(dir.join("repo/root/2.json").exists());
}

/// A release run while another command changes the repository (and holds its lock) says
/// what it waits for on stderr, then publishes once the lock is free.
#[test]
fn a_release_that_waits_for_another_command_says_so() {
    let tmp = init_repo();
    let dir = tmp.path();
    std::fs::write(dir.join("app.bin"), b"v").unwrap();
    let lock = dir.join("repo").join(evergreen::publish::LOCK_FILE);
    let held = std::fs::File::create(&lock).unwrap();
    held.lock().unwrap();

    let args = release_args("1.0.0", &["--component", "app=app.bin"]);
    let mut release = common::Watched::start(command_at(dir, NOW).args(&args));
    assert_eq!(
        release.wait_for_line("waiting for"),
        format!(
            "evergreen: waiting for another command changing this repository to finish (lock {})",
            Path::new("repo")
                .join(evergreen::publish::LOCK_FILE)
                .display()
        )
    );
    assert!(
        !dir.join("repo/channels/nightly.json").exists(),
        "published while another command held the lock"
    );
    drop(held);
    let out = release.finish();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        read_manifest(dir, "nightly")["releases"][0]["version"],
        "1.0.0"
    );
}

/// Runs `args` (a `release`), which must succeed; its stderr (the warnings) without the
/// last newline.
fn released(dir: &Path, args: &[&str]) -> String {
    let o = evergreen(dir, args);
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    stderr(&o).trim_end().to_string()
}

/// An image that starts as xz data does (a format devices do not decompress) is
/// published, since a bootloader may read a compressed kernel from its slot, but with a
/// warning: a device writes it into the slot as it is, and a compressed root file system
/// costs a failed trial. Raw images pass without one.
#[test]
fn a_compressed_image_is_released_with_a_warning() {
    let tmp = init_repo();
    let dir = tmp.path();
    std::fs::write(dir.join("rootfs.ext4.xz"), b"\xfd7zXZ\x00rest").unwrap();
    std::fs::write(dir.join("rootfs.ext4"), [0u8; 2048]).unwrap();
    let warning = "warning: component rootfs (rootfs.ext4.xz) is xz-compressed data: devices write an image into its slot as it is, nothing decompresses it";

    let err = released(
        dir,
        &release_args("1.0.0", &["--component", "rootfs=rootfs.ext4.xz:image"]),
    );
    assert!(err.starts_with(warning), "{err}");
    let o = evergreen(
        dir,
        &release_args(
            "1.1.0",
            &["--component", "rootfs=rootfs.ext4.xz:image", "--json"],
        ),
    );
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        out["warnings"][0]
            .as_str()
            .unwrap()
            .starts_with(&warning[9..]),
        "{out}"
    );

    let raw = release_args("1.2.0", &["--component", "rootfs=rootfs.ext4:image"]);
    assert_eq!(released(dir, &raw), "");
}

/// A `file` component is placed on devices with mode 0644 (the manifest records no mode),
/// so an executable published that way arrives without its executable bit and the app
/// fails to start it after the update. `release` says so while the operator can still
/// publish it in a zip, whose entries keep that bit; a file that is not executable passes
/// without a warning.
#[test]
fn an_executable_file_component_is_released_with_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = init_repo();
    let dir = tmp.path();
    std::fs::write(dir.join("tool"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(dir.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("settings.json"), b"{}").unwrap();
    let warning = "warning: component tool (tool) is executable, and devices place a `file` component with mode 0644: it arrives without its executable bit; publish it in a zip, whose entries keep that bit";

    let err = released(dir, &release_args("1.0.0", &["--component", "tool=tool"]));
    assert_eq!(err, warning);
    let o = evergreen(
        dir,
        &release_args("1.1.0", &["--component", "tool=tool:file", "--json"]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["warnings"][0], warning["warning: ".len()..], "{out}");

    let plain = release_args("1.2.0", &["--component", "config=settings.json"]);
    assert_eq!(released(dir, &plain), "");
}

/// A pre-release on `stable` reaches every device there as any release does (it is newer
/// than the last release, and select takes it): `release` and `promote` say so, so a
/// release candidate promoted to the wrong channel is noticed while it can be pulled. A
/// pre-release on another channel, and a release on stable, pass without a word.
#[test]
fn a_pre_release_on_stable_is_published_with_a_warning() {
    let tmp = init_repo();
    let dir = tmp.path();
    std::fs::write(dir.join("settings.json"), b"{}").unwrap();
    let config = ["--component", "config=settings.json"];
    let warning = |v: &str| {
        format!("warning: {v} is a pre-release, and devices on stable install it as they would a release; pre-releases belong on preview or nightly")
    };

    assert_eq!(released(dir, &release_args("1.0.0-rc.1", &config)), "");
    let o = evergreen(dir, &promote_to_stable("1.0.0-rc.1"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim_end(), warning("1.0.0-rc.1"));

    let stable = ReleaseArgs::of("1.1.0-beta.2").channel("stable");
    let o = evergreen(dir, &stable.then(&[&config[..], &["--json"]].concat()));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let expected = serde_json::json!([&warning("1.1.0-beta.2")["warning: ".len()..]]);
    assert_eq!(out["warnings"], expected);

    let plain = ReleaseArgs::of("1.1.0").channel("stable").then(&config);
    assert_eq!(released(dir, &plain), "");
}

/// `verify`'s line for a channel names its releases in one line, however many there are:
/// the oldest three and the newest three, with the count of those between (a channel of
/// a year's daily releases made a line of thousands of characters); `--json` lists all.
#[test]
fn verify_names_a_long_channels_releases_in_short() {
    let tmp = init_repo();
    let dir = tmp.path();
    std::fs::write(dir.join("settings.json"), b"{}").unwrap();
    for minor in 0..10 {
        let version = format!("1.{minor}.0");
        let args = release_args(&version, &["--component", "config=settings.json"]);
        released(dir, &args);
    }
    let out = ok(dir, &["verify", "repo"]);
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("nightly"))
        .unwrap();
    assert!(
        line.contains("versions [1.0.0, 1.1.0, 1.2.0, … 4 more …, 1.7.0, 1.8.0, 1.9.0]"),
        "{line}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&ok(dir, &["verify", "repo", "--json"])).unwrap();
    assert_eq!(
        report["channels"][0]["versions"].as_array().unwrap().len(),
        10
    );
}

/// An image read from a pipe is published byte for byte: nothing reads its head before
/// the release copies it (the compression check looks only at regular files).
#[test]
fn an_image_from_a_pipe_is_published_whole() {
    let tmp = init_repo();
    let dir = tmp.path();
    let image: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (reader, mut writer) = std::io::pipe().unwrap();
    let feed = {
        let image = image.clone();
        std::thread::spawn(move || std::io::Write::write_all(&mut writer, &image))
    };
    let args = release_args("1.0.0", &["--component", "rootfs=/dev/stdin:image"]);
    let child = command_at(dir, NOW)
        .args(&args)
        .stdin(std::process::Stdio::from(reader))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let o = require::finish_within(child, LIMIT);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    feed.join().unwrap().unwrap();
    let artifact = &read_manifest(dir, "nightly")["releases"][0]["targets"]["x86_64-linux"]
        ["components"]["rootfs"]["artifact"];
    assert_eq!(artifact["size"], 100_000, "{artifact}");
    assert_eq!(artifact["sha256"], evergreen::trust::sha256_hex(&image));
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A gzip image is published compressed: the manifest lists the compressed blob (what
/// devices download) and the image it decompresses to (what the slot must hold), both
/// sizes are shown, and a note says devices decompress it and how to keep it as it is.
#[test]
fn a_gzip_image_is_published_compressed_naming_the_image_it_decompresses_to() {
    let tmp = init_repo();
    let dir = tmp.path();
    let image: Vec<u8> = (0..200_000u32)
        .flat_map(|i| (i / 64).to_le_bytes())
        .collect();
    let gz = gzip(&image);
    std::fs::write(dir.join("rootfs.ext4.gz"), &gz).unwrap();
    let args = release_args("1.0.0", &["--component", "rootfs=rootfs.ext4.gz:image"]);
    let o = evergreen(dir, &args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let note = format!(
        "component rootfs ({}) is gzip data: published compressed, devices decompress it into the slot; give it as `rootfs={}:image-raw` to publish it as it is (a kernel or FIT image the bootloader reads compressed)",
        "rootfs.ext4.gz", "rootfs.ext4.gz"
    );
    assert_eq!(stderr(&o), format!("note: {note}\n"));
    let text = String::from_utf8(o.stdout).unwrap();
    let image_sha = evergreen::trust::sha256_hex(&image);
    assert!(text.contains(&format!("{:>12} bytes", gz.len())), "{text}");
    assert!(
        text.contains(&format!(
            "gzip  {:>12} bytes  sha256 {}… once decompressed",
            image.len(),
            &image_sha[..12]
        )),
        "{text}"
    );
    let o = evergreen(
        dir,
        &release_args(
            "1.1.0",
            &["--component", "rootfs=rootfs.ext4.gz:image", "--json"],
        ),
    );
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let a = &out["release"]["targets"]["x86_64-linux"]["components"]["rootfs"]["artifact"];
    assert_eq!(a["compression"], "gzip", "{out}");
    assert_eq!(a["size"], gz.len());
    assert_eq!(a["sha256"], evergreen::trust::sha256_hex(&gz));
    assert_eq!(a["installed_size"], image.len());
    assert_eq!(a["installed_sha256"], image_sha.as_str());
    assert_eq!(out["warnings"], serde_json::json!([note]));
    ok(dir, &["verify", "repo"]);
}

/// `:image-raw` publishes a gzip image as it is (a compressed kernel or FIT image the
/// bootloader reads compressed): an `image` with no `compression`, whose blob devices
/// write into the slot byte for byte, without the note.
#[test]
fn an_image_raw_component_is_published_as_it_is_even_when_it_is_gzip_data() {
    let tmp = init_repo();
    let dir = tmp.path();
    let image: Vec<u8> = (0..100_000u32)
        .flat_map(|i| (i / 64).to_le_bytes())
        .collect();
    let gz = gzip(&image);
    std::fs::write(dir.join("kernel.gz"), &gz).unwrap();
    let args = release_args(
        "1.0.0",
        &["--component", "kernel=kernel.gz:image-raw", "--json"],
    );
    let o = evergreen(dir, &args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let a = &out["release"]["targets"]["x86_64-linux"]["components"]["kernel"]["artifact"];
    assert_eq!(a["kind"], "image", "{out}");
    assert_eq!(a["sha256"], evergreen::trust::sha256_hex(&gz));
    assert_eq!(a["size"], gz.len());
    for field in ["compression", "installed_size", "installed_sha256"] {
        assert!(a.get(field).is_none(), "{field}: {out}");
    }
    assert_eq!(out["warnings"], serde_json::json!([]));
    ok(dir, &["verify", "repo"]);
    let help = String::from_utf8(evergreen(dir, &["release", "--help"]).stdout).unwrap();
    assert!(help.contains("image-raw"), "{help}");

    // The same file published compressed, then as it is again: compressed, it lands
    // differently in the slot, so it does not keep 1.0.0's component version; as it is
    // again, it is 1.0.0's component.
    ok(
        dir,
        &release_args("1.1.0", &["--component", "kernel=kernel.gz:image"]),
    );
    ok(
        dir,
        &release_args("1.2.0", &["--component", "kernel=kernel.gz:image-raw"]),
    );
    let manifest = read_manifest(dir, "nightly");
    let versions: Vec<_> = manifest["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["targets"]["x86_64-linux"]["components"]["kernel"]["version"].clone())
        .collect();
    assert_eq!(versions, ["1.0.0", "1.1.0", "1.0.0"], "{manifest}");

    // Other compressed data given as `image-raw` is not warned about either.
    std::fs::write(dir.join("kernel.xz"), b"\xfd7zXZ\x00rest").unwrap();
    let raw_xz = release_args("1.3.0", &["--component", "kernel=kernel.xz:image-raw"]);
    assert_eq!(released(dir, &raw_xz), "");
}

/// A gzip image devices could not decompress into exactly one image is refused, naming
/// the file and what is wrong, and nothing is published.
#[test]
fn a_gzip_image_that_does_not_inflate_cleanly_is_refused() {
    let tmp = init_repo();
    let dir = tmp.path();
    let image: Vec<u8> = (0..100_000u32)
        .flat_map(|i| (i / 64).to_le_bytes())
        .collect();
    let gz = gzip(&image);
    let mut crc = gz.clone();
    let n = crc.len();
    crc[n - 8] ^= 0xff;
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "cut.gz",
            gz[..gz.len() - 100].to_vec(),
            "found it cut short in its deflate data",
        ),
        (
            "two.gz",
            [gz.clone(), gz.clone()].concat(),
            "found another gzip member after it",
        ),
        (
            "junk.gz",
            [gz.clone(), vec![0; 512]].concat(),
            "found trailing bytes after it",
        ),
        ("crc.gz", crc, "expected the gzip trailer's CRC32"),
        ("empty.gz", gzip(b""), "found 0 bytes"),
    ];
    for (name, bytes, expected) in cases {
        std::fs::write(dir.join(name), bytes).unwrap();
        let spec = format!("rootfs={name}:image");
        let o = evergreen(dir, &release_args("1.0.0", &["--component", &spec]));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(&format!(
                "error[config]: component rootfs: {name}: expected"
            )),
            "{err}"
        );
        assert!(err.contains(expected), "{err}\nwanted: {expected}");
    }
    assert!(!dir.join("channels/nightly.json").exists());
}

/// A target whose releases carry an image, released once with the image as a plain file
/// (`:image` left off), is warned about: devices with image slots would be offered it and
/// refuse every install.
#[test]
fn an_image_target_released_without_an_image_is_warned_about() {
    let tmp = init_repo();
    let dir = tmp.path();
    std::fs::write(dir.join("rootfs.ext4"), [0u8; 2048]).unwrap();
    ok(
        dir,
        &release_args("1.0.0", &["--component", "rootfs=rootfs.ext4:image"]),
    );
    let plain = release_args("1.1.0", &["--component", "rootfs=rootfs.ext4"]);
    assert_eq!(
        released(dir, &plain),
        "warning: release 1.0.0 of x86_64-linux on channel nightly carries an image (component rootfs) and 1.1.0 none: devices with image slots will be offered 1.1.0 and refuse to install it; was `:image` left off?"
    );
    let image = release_args("1.2.0", &["--component", "rootfs=rootfs.ext4:image"]);
    assert_eq!(released(dir, &image), "");
}

/// A release halted on its channel (pulled, rollout 0 %) is not promoted to everyone on
/// another one by version number alone: a pipeline would spread a release known to be
/// broken. An explicit `--rollout` promotes it anyway.
#[test]
fn promote_refuses_a_halted_release_unless_given_a_rollout() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    release_version(dir, "2.2.0", &APP);
    ok(
        dir,
        &[
            "rollout",
            "repo",
            "--channel",
            "nightly",
            "--version",
            "2.2.0",
            "--percent",
            "0",
            "--sign",
            "release",
        ],
    );
    let promote = promote_to_stable("2.2.0");
    let err = fails(dir, &promote);
    assert_eq!(
        err.trim_end(),
        format!("error[config]: expected a release rolled out on channel nightly to promote, found 2.2.0 halted there (0% since {NOW}); ramp it there first, or give --rollout PERCENT to promote it anyway")
    );
    assert!(!dir.join("repo/channels/stable.json").exists());
    let out = ok(dir, &[&promote[..], &["--rollout", "100"]].concat());
    assert!(
        out.starts_with("promoted 2.2.0 from nightly to stable"),
        "{out}"
    );
    assert_eq!(
        read_manifest(dir, "stable")["releases"][0]["rollout"]["stages"][0]["percent"],
        100.0
    );
    let help = ok(dir, &["promote", "--help"]);
    assert!(help.contains("release halted on --from"), "{help}");
}

/// Devices switch channels, and their security floor goes with them: a release below the
/// security version of an older release of its target on another channel is never offered
/// to the devices that confirmed that one. `release` and `promote` say so (a warning, as
/// the release is still right for the devices that stayed).
#[test]
fn a_security_version_below_an_older_release_on_another_channel_is_warned_about() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    release_version(
        dir,
        "2.9.0",
        &[&APP[..], &["--security-version", "3"]].concat(),
    );
    let on = |channel, version| ReleaseArgs::of(version).channel(channel).then(&APP);
    let expected = "warning: release 2.9.0 of x86_64-linux on channel nightly has security version 3, and 2.9.1 on channel stable 0: devices that confirmed 2.9.0 and move to stable are never offered 2.9.1 (give it --security-version 3 or more if they should be)";
    let o = evergreen(dir, &on("stable", "2.9.1"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim_end(), expected);
    let o = evergreen(dir, &[&on("beta", "2.9.1")[..], &["--json"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        report["warnings"][0],
        expected
            .strip_prefix("warning: ")
            .unwrap()
            .replace("stable", "beta")
    );
    let promote = [
        "promote",
        "repo",
        "--version",
        "2.9.1",
        "--from",
        "stable",
        "--to",
        "lts",
        "--sign",
        "release",
    ];
    let o = evergreen(dir, &promote);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim_end(), expected.replace("stable", "lts"));
    // At or above the floor: nothing to say.
    let o = evergreen(
        dir,
        &[&on("stable", "2.9.2")[..], &["--security-version", "3"]].concat(),
    );
    assert_eq!((o.status.code(), stderr(&o)), (Some(0), String::new()));
}

/// A release refused for what it would do to devices (a stranding min_version, a security
/// version out of order, a clock behind the channel's) copies nothing into blobs/: the
/// component may be an image of hundreds of MB.
#[test]
fn a_refused_release_copies_no_blob() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    release_version(
        dir,
        "1.0.0",
        &[&APP[..], &["--security-version", "2"]].concat(),
    );
    let blobs = || {
        std::fs::read_dir(dir.join("repo/blobs/sha256"))
            .unwrap()
            .count()
    };
    assert_eq!(blobs(), 1);
    std::fs::write(dir.join("big.img"), [9u8; 4096]).unwrap();
    let big = ["--component", "rootfs=big.img:image"];
    let err = fails(
        dir,
        &release_args(
            "2.0.0",
            &[
                &big[..],
                &["--min-version", "1.5.0", "--security-version", "2"],
            ]
            .concat(),
        ),
    );
    assert!(
        err.starts_with("error[config]: expected a stepping stone"),
        "{err}"
    );
    let err = fails(dir, &release_args("2.0.0", &big));
    assert!(
        err.starts_with("error[config]: expected a security version of at least 2"),
        "{err}"
    );
    let secure = [&big[..], &["--security-version", "2"]].concat();
    let o = evergreen_at(dir, "2026-11-21T10:00:00Z", &release_args("2.0.0", &secure));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("expected a clock at or after"),
        "{}",
        stderr(&o)
    );
    assert_eq!(blobs(), 1, "no blob copied for a refused release");
    release_version(dir, "2.0.0", &secure);
    assert_eq!(blobs(), 2);
}

/// A damaged blob that two channels list is one problem, hashed once: `verify` names both
/// channels in it, and reports neither as verified, while a channel with sound blobs is.
#[test]
fn verify_reports_a_bad_blob_once_naming_every_channel_that_lists_it() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    release_version(dir, "1.0.0", &APP);
    ok(dir, &promote_to_stable("1.0.0"));
    std::fs::write(dir.join("other.bin"), b"other").unwrap();
    let beta = ReleaseArgs::of("1.0.0").channel("beta");
    ok(dir, &beta.then(&["--component", "app=other.bin"]));
    let sha = read_manifest(dir, "nightly")["releases"][0]["targets"]["x86_64-linux"]["components"]
        ["app"]["artifact"]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(dir.join("repo/blobs/sha256").join(&sha), b"V").unwrap();

    let err = fails(dir, &["verify", "repo"]);
    let at = "release 1.0.0 target x86_64-linux component app";
    assert!(
        err.starts_with(&format!(
            "error[hash_mismatch]: channel nightly {at}, channel stable {at}: blob "
        )),
        "{err}"
    );
    assert_eq!(
        err.matches("sha256 ").count(),
        2,
        "one blob, expected and found: {err}"
    );
    let o = evergreen(dir, &["--json", "verify", "repo"]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["problem"]["kind"], "hash_mismatch");
    let verified: Vec<&str> = report["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(verified, ["beta"]);
}

/// `verify` reports every expired channel in one run (the one error line names them all),
/// and warns about a channel or root that expires soon, while a resign or rotate is still
/// in time.
#[test]
fn verify_reports_every_expired_channel_and_warns_before_expiry() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    for channel in ["beta", "nightly", "stable"] {
        ok(dir, &ReleaseArgs::of("1.0.0").channel(channel).then(&APP));
    }
    let o = evergreen_at(dir, "2027-01-01T00:00:00Z", &["verify", "repo"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error[expired]: 3 problems: "), "{err}");
    for channel in ["beta", "nightly", "stable"] {
        assert!(err.contains(&format!("channels/{channel}.json")), "{err}");
    }

    let soon = "2026-12-18T10:00:00Z";
    let o = evergreen_at(dir, soon, &["verify", "repo"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let warnings: Vec<String> = stderr(&o).lines().map(str::to_string).collect();
    assert_eq!(
        warnings[0],
        "warning: channel beta expires at 2026-12-22T10:00:00Z, in 4 days: devices refuse it from then on; re-sign it (evergreen resign REPO --channel beta --sign KEY)"
    );
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    let o = evergreen_at(dir, soon, &["verify", "repo", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        report["warnings"][0],
        warnings[0].strip_prefix("warning: ").unwrap()
    );

    let late = "2027-11-01T10:00:00Z";
    for channel in ["beta", "nightly", "stable"] {
        let o = evergreen_at(
            dir,
            late,
            &["resign", "repo", "--channel", channel, "--sign", "release"],
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let o = evergreen_at(dir, late, &["verify", "repo"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).trim_end(),
        "warning: root version 1 expires at 2026-11-22T10:00:00Z, in 21 days: no device accepts what it signs from then on; renew it (evergreen rotate REPO --sign ROOT_KEY)".replace("2026-11-22", "2027-11-22")
    );
}

/// `verify` warns about what expires soon also when it fails over something else: a
/// channel expiring in 4 days is said beside another that already expired, on stderr
/// before the error line, and in `"warnings"` of the report `--json` still prints.
#[test]
fn verify_warns_about_expiry_soon_also_when_it_fails() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    for channel in ["beta", "nightly"] {
        ok(dir, &ReleaseArgs::of("1.0.0").channel(channel).then(&APP));
    }
    let forty = [
        "resign",
        "repo",
        "--channel",
        "nightly",
        "--expires-in",
        "40",
        "--sign",
        "release",
    ];
    ok(dir, &forty);
    let at = "2026-12-28T10:00:00Z";
    let warning = "channel nightly expires at 2027-01-01T10:00:00Z, in 4 days: devices refuse it from then on; re-sign it (evergreen resign REPO --channel nightly --sign KEY)";

    let o = evergreen_at(dir, at, &["verify", "repo"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert_eq!(lines[0], format!("warning: {warning}"));
    assert!(lines[1].starts_with("error[expired]: "), "{err}");
    assert!(lines[1].contains("channels/beta.json"), "{err}");
    assert!(stdout(&o).is_empty(), "no ok line: {}", stdout(&o));

    let o = evergreen_at(dir, at, &["verify", "repo", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error[expired]: "), "{err}");
    let report: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)));
    assert_eq!(report["warnings"], serde_json::json!([warning]));
    // Stdout alone says it failed, and why.
    assert_eq!(report["ok"], false);
    assert_eq!(report["problem"]["kind"], "expired");
    assert!(err.contains(report["problem"]["message"].as_str().unwrap()));
    // The channels listed are those that verified.
    let channels: Vec<&str> = report["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels, ["nightly"]);
}

/// A `rotate` that changes the manifest key, cut off after re-signing the channels and
/// before the new root is renamed into place (it goes last), leaves channels signed by a
/// key the repository's root does not know. `verify` and `resign` say what that looks like
/// and how to finish it; running the same rotate again does.
#[test]
fn an_interrupted_rotate_is_named_and_running_it_again_finishes_it() {
    let tmp = repo_with_nightly();
    let dir = tmp.path();
    keygen(dir, "release2");
    let hint = "an interrupted rotate? run the same rotate command again";
    // Before any rotate, a key the root does not list is a plain `threshold` error.
    let err = fails(dir, &resign_nightly("release2"));
    assert!(err.starts_with("error[threshold]: "), "{err}");
    assert!(!err.contains(hint), "{err}");
    let rotate = [
        "rotate",
        "repo",
        "--manifest-key",
        "release2.pub",
        "--sign",
        "root1",
        "--sign",
        "release2",
    ];
    ok(dir, &rotate);
    std::fs::remove_file(dir.join("repo/root/2.json")).unwrap();
    let err = fails(dir, &["verify", "repo"]);
    assert!(err.starts_with("error[signature]: "), "{err}");
    assert!(err.trim_end().ends_with(hint), "{err}");
    let err = fails(dir, &RESIGN_NIGHTLY);
    assert!(err.trim_end().ends_with(hint), "{err}");
    // Signed with the new key, which the root on disk does not list yet: still a
    // `threshold` error, and it names the interrupted rotate and what finishes it.
    let err = fails(dir, &resign_nightly("release2"));
    assert!(err.starts_with("error[threshold]: "), "{err}");
    assert!(err.contains("channels/nightly.json is signed only by keys root version 1 does not list for manifests"), "{err}");
    assert!(err.trim_end().ends_with(hint), "{err}");
    // A channel not made yet is no sign of the rotate: the re-signed one is named.
    let new_channel = ReleaseArgs::of("1.3.0").channel("beta").sign("release2");
    let err = fails(dir, &new_channel.then(&["--component", "app=app.zip"]));
    assert!(err.starts_with("error[threshold]: "), "{err}");
    assert!(
        err.contains("channels/nightly.json is signed only by keys"),
        "{err}"
    );
    assert!(err.trim_end().ends_with(hint), "{err}");
    ok(dir, &rotate);
    ok(dir, &["verify", "repo"]);
    ok(dir, &resign_nightly("release2"));
}

/// A release for a target no other release on the channel carries, beside releases for
/// other targets (a misspelt `--target`), is warned about: it reaches no device.
#[test]
fn a_release_for_a_target_the_channel_has_no_other_release_for_is_warned_about() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    ok(dir, &release_args("1.0.0", &["--component", "app=app.bin"]));
    let args = ReleaseArgs::of("1.0.1").target("x86_64-linux-gnu");
    assert_eq!(
        released(dir, &args.then(&["--component", "app=app.bin", "--critical"])),
        "warning: 1.0.1 is the only release on channel nightly for target x86_64-linux-gnu; its other releases are for x86_64-linux: is the target misspelt?"
    );
    // The same target again, or the first release of a channel: nothing to say.
    let same = release_args("1.0.2", &["--component", "app=app.bin"]);
    assert_eq!(released(dir, &same), "");
}

/// A release is out once its channel is written: a check made after that which fails (here
/// another channel that no longer verifies, whose security versions cannot be read) is a
/// warning, not a failure that a retry would turn into "already on the channel".
#[test]
fn a_check_that_fails_after_the_release_is_written_is_a_warning() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    ok(dir, &release_args("1.0.0", &["--component", "app=app.bin"]));
    let stable = ReleaseArgs::of("1.0.0").channel("stable");
    ok(dir, &stable.then(&["--component", "app=app.bin"]));
    std::fs::write(dir.join("repo/channels/stable.json"), b"{}").unwrap();
    let err = released(dir, &release_args("1.1.0", &["--component", "app=app.bin"]));
    assert!(
        err.starts_with(
            "warning: published, but the other channels' security versions were not checked: "
        ),
        "{err}"
    );
    assert!(read_manifest(dir, "nightly")["releases"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["version"] == "1.1.0"));
}

/// A zip read from a named pipe (a build step streaming it in) is published, and the
/// command then ends with no warning: nothing opens the pipe a second time after the
/// release is written (with no writer left, that open waited for good, and the stop that
/// followed said "run the command again", which was then refused as already done).
#[test]
fn a_zip_from_a_named_pipe_is_published_and_the_command_ends() {
    let tmp = init_repo();
    let dir = tmp.path();
    write_zip(&dir.join("app.zip"));
    let zip = std::fs::read(dir.join("app.zip")).unwrap();
    let fifo = dir.join("app.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let feed = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, zip))
    };
    let args = release_args("1.0.0", &["--component", "app=app.fifo:zip"]);
    let quick = std::time::Duration::from_secs(15);
    let o = common::output_within(command_at(dir, NOW).args(&args), quick);
    feed.join().unwrap().unwrap();
    assert_eq!(
        read_manifest(dir, "nightly")["releases"][0]["version"],
        "1.0.0",
        "published"
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "", "no warning about a zip the fleet takes");
}

/// A release refused for its `--expires-in` (0 days, or beyond a century) is refused
/// before its components are copied into blobs/, as the other refusals are: the component
/// may be an image of hundreds of MB, left in the repository and uploaded with it.
#[test]
fn a_release_refused_for_its_validity_copies_no_blob() {
    let tmp = init_repo();
    let dir = tmp.path();
    std::fs::write(dir.join("big.img"), [9u8; 4096]).unwrap();
    for days in ["0", "36501"] {
        let args = release_args(
            "1.0.0",
            &["--component", "rootfs=big.img:image", "--expires-in", days],
        );
        let err = fails(dir, &args);
        assert!(
            err.starts_with("error[config]: expected a validity"),
            "{err}"
        );
    }
    let blobs = std::fs::read_dir(dir.join("repo/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "no blob copied for a refused release");
}

/// `verify` checks every listing of a gzip blob against what that listing says it
/// decompresses to. A second release listing the same compressed blob with another
/// `installed_sha256` (a hand-edited manifest) is what every device of that release would
/// download, write and then refuse at the read-back: verify must name it.
#[test]
fn verify_checks_each_listing_of_a_gzip_blob_against_its_own_installed_sha256() {
    let repo = common::Repo::new("com.acme.verify-gzip");
    let image: Vec<u8> = (0..100_000u32)
        .flat_map(|i| (i / 64).to_le_bytes())
        .collect();
    let path = repo.scratch("img").join("rootfs.img.gz");
    std::fs::write(&path, gzip(&image)).unwrap();
    let spec = std::path::PathBuf::from(format!("{}:image", path.display()));
    repo.release("stable", "1.0.0", "board", &[("rootfs", &spec)], &[]);
    repo.release("stable", "1.0.1", "board", &[("rootfs", &spec)], &[]);
    let root = repo.root.to_str().unwrap().to_owned();
    common::ok(&["verify", &root]);
    // The listing verify reaches second gets a wrong installed_sha256 (same installed_size).
    let wrong = evergreen::trust::sha256_hex(b"not the image");
    repo.edit_channel("stable", |m| {
        let second = &mut m.releases[1];
        let c = second.targets.get_mut("board").unwrap();
        let a = &mut c.components.get_mut("rootfs").unwrap().artifact;
        assert!(a.compression.is_some());
        a.installed_sha256 = Some(wrong.clone());
    });
    let out = common::run(&["verify", &root]);
    let err = common::stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify passed a release whose image can never pass its read-back: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains(&wrong), "{err}");
}

/// Each component is a directory of the slot, so `release` refuses two names one
/// case-insensitive file system takes for one (`App` and `app`). It must fold them as the
/// zip check folds entry names (DESIGN §5.5, docs/design.md): `ß`/`ss`, the `ﬁ` ligature,
/// the long `ſ` and the dotless `ı`, which ext4/f2fs casefolding or FAT's uppercasing make
/// one name, are as much one directory as `App` and `app`.
#[test]
fn release_refuses_component_names_that_fold_to_one() {
    let tmp = init_repo();
    let dir = tmp.path();
    std::fs::write(dir.join("one.json"), b"{\"one\": 1}").unwrap();
    std::fs::write(dir.join("two.json"), b"{\"two\": 2}").unwrap();
    let mut passed = Vec::new();
    for (i, (a, b)) in [
        ("App", "app"),
        ("masse", "maße"),
        ("firmware", "\u{fb01}rmware"),
        ("sys", "\u{17f}ys"),
        ("init", "\u{131}nit"),
    ]
    .into_iter()
    .enumerate()
    {
        let version = format!("1.0.{i}");
        let first = format!("{a}=one.json");
        let second = format!("{b}=two.json");
        let o = evergreen(
            dir,
            &release_args(&version, &["--component", &first, "--component", &second]),
        );
        if o.status.code() != Some(1) || !stderr(&o).contains("also ignoring case") {
            assert_eq!(o.status.code(), Some(0), "{a} {b}: {}", stderr(&o));
            passed.push(format!("{a:?} and {b:?}"));
        }
    }
    assert!(
        passed.is_empty(),
        "published as two components, one directory on a case-insensitive file system: {passed:?}"
    );
}

/// `verify` names a release every dir-slot device refuses (two components one directory
/// where case is ignored) and one no slot store installs (an image among other
/// components), in a manifest another tool made: caught before the upload, not by the
/// fleet.
#[test]
fn verify_names_a_target_no_device_installs() {
    let repo = common::Repo::new("com.acme.verify-targets");
    let src = repo.scratch("src");
    let (one, two) = (src.join("one.json"), src.join("two.json"));
    std::fs::write(&one, b"{\"one\": 1}").unwrap();
    std::fs::write(&two, b"{\"two\": 2}").unwrap();
    repo.release(
        "stable",
        "1.0.0",
        "x86_64-linux",
        &[("sys", &one), ("other", &two)],
        &[],
    );
    let root = repo.root.to_str().unwrap().to_owned();
    common::ok(&["verify", &root]);
    type Edit = fn(&mut evergreen::manifest::Component);
    let edits: [(&str, Edit); 2] = [
        ("\u{17f}ys", |_| {}),
        ("other", |c| {
            c.artifact.kind = evergreen::manifest::ArtifactKind::Image
        }),
    ];
    for ((name, edit), said) in edits.into_iter().zip([
        "expected each component once, also ignoring case, found \"sys\" and \"ſys\"",
        "found an image among other components",
    ]) {
        repo.edit_channel("stable", |m| {
            let target = m.releases[0].targets.get_mut("x86_64-linux").unwrap();
            let (old, _) = target.components.iter().find(|(n, _)| *n != "sys").unwrap();
            let old = old.clone();
            let mut c = target.components.remove(&old).unwrap();
            edit(&mut c);
            target.components.insert(name, c);
        });
        let out = common::run(&["verify", &root]);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.starts_with("error[wrong_metadata]: "), "{err}");
        assert!(err.contains("release 1.0.0 target x86_64-linux: "), "{err}");
        assert!(err.contains(said), "{err}");
    }
}

/// A component the repository's file system has no room for is refused before it is
/// copied: `io`, naming the bytes it needs, the bytes free and where, with nothing left
/// in `blobs/` and the channel as it was. Copying first failed only once the disk was
/// full (after minutes, for an image of gigabytes) with the system's bare "No space left
/// on device" for a temp file's name, which says neither how much was needed nor how much
/// was free. Once room is made, the same release goes through.
#[test]
fn a_component_the_repository_has_no_room_for_is_refused_before_it_is_copied() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(_fs) = mounts::Mounted::tmpfs(&dir.join("fs"), 2048) else {
        return;
    };
    keygen(dir, "root1");
    keygen(dir, "release");
    ok(
        dir,
        &init_args("root1.pub", "1", "release.pub", "root1", &[])
            .iter()
            .map(|a| if *a == "repo" { "fs/repo" } else { a })
            .collect::<Vec<_>>(),
    );
    std::fs::write(dir.join("app.bin"), vec![7u8; 3 << 20]).unwrap();
    let release = [
        "release",
        "fs/repo",
        "--channel",
        "stable",
        "--version",
        "1.0.0",
        "--target",
        "x86_64-linux",
        "--component",
        "app=app.bin",
        "--sign",
        "release",
    ];
    let before = common::tree_digest(&dir.join("fs/repo"));
    let err = fails(dir, &release);
    let blobs = Path::new("fs/repo/blobs/sha256");
    assert!(
        err.starts_with(&format!(
            "error[io]: component app: copying app.bin into {}: expected room for {} bytes, found ",
            blobs.display(),
            3 << 20
        )) && err
            .trim_end()
            .ends_with(" bytes free; nothing was written: free space there and release again"),
        "{err}"
    );
    assert_eq!(common::tree_digest(&dir.join("fs/repo")), before);

    let bigger = ["-o", "remount,size=8m", "tmpfs"];
    let remounted = Command::new("mount")
        .args(bigger)
        .arg(dir.join("fs"))
        .status()
        .unwrap();
    assert!(remounted.success());
    ok(dir, &release);
}

/// `release` and `promote` warn on stderr when the channel they signed is past three
/// quarters of the 1 MiB devices accept, naming `prune`, while they still publish; the
/// channel stays under the cap until then and earlier releases are not warned about.
#[test]
fn release_and_promote_warn_of_a_channel_close_to_the_device_size_cap() {
    let tmp = repo_with_app();
    let dir = tmp.path();
    // Each release adds 100,000 bytes of notes, 133,336 once base64-encoded in the
    // envelope: the sixth takes the channel past 786,432 bytes.
    let notes = "n".repeat(100_000);
    for i in 1..=6 {
        let v = format!("1.0.{i}");
        let o = evergreen(
            dir,
            &release_args(&v, &["--component", "app=app.bin", "--notes", &notes]),
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let warned = stderr(&o).contains("warning: channel nightly is ");
        assert_eq!(warned, i == 6, "release {v}: {}", stderr(&o));
        let o = evergreen(dir, &promote_to_stable(&v));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let warning = stderr(&o);
        assert_eq!(
            warning.contains("warning: channel stable is "),
            i == 6,
            "promote {v}: {warning}"
        );
        if i == 6 {
            assert!(warning.contains("of the 1048576 bytes"), "{warning}");
            assert!(
                warning.contains("evergreen prune REPO --channel stable"),
                "{warning}"
            );
        }
    }
}

/// `prune-blobs` removes the blobs that no channel lists any more (`prune` leaves them in
/// `blobs/`, and a nightly's add up to most of the repository within months), keeps a
/// blob a pruned release shares with a release another channel still lists, and leaves
/// a repository that verifies; `--dry-run` names the same blobs and removes none.
#[test]
fn prune_blobs_removes_only_the_blobs_no_channel_lists() {
    let tmp = init_repo();
    let dir = tmp.path();
    let mut blobs = Vec::new();
    for v in ["1.0.0", "1.1.0", "1.2.0"] {
        let file = format!("app-{v}.bin");
        std::fs::write(dir.join(&file), format!("app {v}")).unwrap();
        release_version(dir, v, &["--component", &format!("app={file}")]);
        let m = read_manifest(dir, "nightly");
        let release = m["releases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == v)
            .unwrap();
        let sha = release["targets"]["x86_64-linux"]["components"]["app"]["artifact"]["sha256"]
            .as_str()
            .unwrap()
            .to_string();
        blobs.push(dir.join("repo/blobs/sha256").join(sha));
    }
    ok(dir, &promote_to_stable("1.0.0"));
    ok(
        dir,
        &[
            "prune",
            "repo",
            "--channel",
            "nightly",
            "--keep",
            "1",
            "--sign",
            "release",
        ],
    );
    // 1.0.0 and 1.1.0 left nightly; stable still lists 1.0.0.
    assert!(blobs.iter().all(|b| b.exists()));
    let unlisted = blobs[1].file_name().unwrap().to_str().unwrap().to_string();
    let dry = ok(dir, &["prune-blobs", "repo", "--dry-run"]);
    assert!(dry.contains(&unlisted), "{dry}");
    assert!(blobs.iter().all(|b| b.exists()));
    let out = ok(dir, &["prune-blobs", "repo"]);
    assert!(out.contains(&unlisted), "{out}");
    assert!(blobs[0].exists(), "stable's 1.0.0 blob must stay");
    assert!(!blobs[1].exists(), "the blob no channel lists is removed");
    assert!(blobs[2].exists(), "nightly's 1.2.0 blob must stay");
    ok(dir, &["verify", "repo"]);
    let again = ok(dir, &["prune-blobs", "repo"]);
    assert!(!again.contains(&unlisted), "{again}");
}

/// The key id of the public key in `dir/name.pub`.
fn keyid_of(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap();
    evergreen::trust::PublicKey::from_base64(&text)
        .unwrap()
        .keyid()
}

#[test]
fn signing_with_a_key_the_root_does_not_list_names_it_and_the_roles_keys() {
    let tmp = repo_with_nightly();
    let dir = tmp.path();
    let nightly = dir.join("repo/channels/nightly.json");
    let before = std::fs::read(&nightly).unwrap();
    // The root key where the manifest key belongs: the error names the key given and
    // the keys the root lists for manifests, so the operator can tell which file is wrong.
    let err = fails(dir, &resign_nightly("root1"));
    assert!(err.starts_with("error[threshold]"), "{err}");
    assert!(err.contains(&keyid_of(dir, "root1")), "{err}");
    assert!(err.contains(&keyid_of(dir, "release")), "{err}");
    // A CI secret that holds the public half (release.pub pasted into the secret store):
    // the error says it is a listed key's public key, not its secret.
    std::fs::copy(dir.join("release.pub"), dir.join("ci-key")).unwrap();
    #[cfg(unix)]
    {
        // 0600, as a CI step should write it: no warning about its mode beside the error.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(dir.join("ci-key"), mode).unwrap();
    }
    let err = fails(dir, &resign_nightly("ci-key"));
    assert!(err.starts_with("error[threshold]"), "{err}");
    assert!(
        err.contains("public key") && err.contains(&keyid_of(dir, "release")),
        "{err}"
    );
    assert_eq!(std::fs::read(&nightly).unwrap(), before, "nothing written");
}

#[cfg(unix)]
#[test]
fn a_secret_key_file_others_can_read_is_warned_about_with_its_mode_and_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = repo_with_nightly();
    let dir = tmp.path();
    let secret = std::fs::read_to_string(dir.join("release")).unwrap();
    // As a CI step writes a secret (`echo "$KEY" > ci-key`) under the usual umask 022.
    std::fs::write(dir.join("ci-key"), &secret).unwrap();
    std::fs::set_permissions(dir.join("ci-key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = evergreen(dir, &resign_nightly("ci-key"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.starts_with("warning: ")
            && err.contains("ci-key")
            && err.contains("0644")
            && err.contains("chmod 600 ci-key"),
        "{err}"
    );
    assert!(!err.contains(secret.trim()), "{err}");
    // The key as keygen wrote it (0600), and one read from a pipe, are not warned about.
    let o = evergreen(dir, &resign_nightly("release"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    let mut piped = std::process::Command::new("sh");
    piped
        .current_dir(dir)
        .env("EVERGREEN_NOW", NOW)
        .arg("-c")
        .arg(r#"cat ci-key | "$0" resign repo --channel nightly --sign /dev/stdin"#)
        .arg(env!("CARGO_BIN_EXE_evergreen"));
    let o = common::output_within(&mut piped, LIMIT);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
}

#[test]
fn a_damaged_secret_key_file_says_what_it_found_and_never_echoes_it() {
    let tmp = repo_with_nightly();
    let dir = tmp.path();
    let secret = std::fs::read_to_string(dir.join("release")).unwrap();
    let secret = secret.trim();
    // As CI secret stores paste keys: a CRLF and surrounding blanks are fine.
    std::fs::write(dir.join("pasted"), format!("  {secret}\r\n\r\n")).unwrap();
    ok(dir, &resign_nightly("pasted"));
    let cases = [
        ("truncated", secret[..20].to_string(), "found 15 bytes"),
        ("junk", format!("{secret}!!"), "not base64"),
        ("empty", String::new(), "found an empty file"),
    ];
    for (name, text, found) in cases {
        std::fs::write(dir.join(name), &text).unwrap();
        let err = fails(dir, &resign_nightly(name));
        assert!(err.starts_with("error[config]"), "{name}: {err}");
        assert!(
            err.contains(name) && err.contains("32-byte"),
            "{name}: {err}"
        );
        assert!(err.contains(found), "{name}: expected {found:?} in {err}");
        assert!(
            !err.contains(&secret[..12]),
            "{name}: key material in {err}"
        );
    }
}

#[test]
fn a_public_key_file_that_does_not_decode_never_echoes_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    keygen(dir, "root1");
    keygen(dir, "release");
    let secret = std::fs::read_to_string(dir.join("release")).unwrap();
    let public = std::fs::read_to_string(dir.join("release.pub")).unwrap();
    // A secret and its public half pasted together into the .pub file (a secret store
    // entry holding both), and a secret of another tool's format named .pub.
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI{}\n-----END PRIVATE KEY-----\n",
        secret.trim()
    );
    let cases = [
        ("mixed.pub", format!("{secret}{public}"), "2 lines"),
        ("pem.pub", pem, "PEM"),
    ];
    for (name, text, found) in cases {
        std::fs::write(dir.join(name), &text).unwrap();
        let err = fails(dir, &init_args("root1.pub", "1", name, "root1", &[]));
        assert!(err.starts_with("error[config]"), "{name}: {err}");
        assert!(err.contains(name) && err.contains(found), "{name}: {err}");
        assert!(
            !err.contains(&secret.trim()[..12]),
            "{name}: key material in {err}"
        );
        assert!(!dir.join("repo").exists());
    }
}

/// A repository is served by a static server that runs as another user (nginx, Apache,
/// lighttpd and busybox httpd drop to one), which must read every file and search every
/// directory: under a private umask (`umask 077`, as CI jobs set for secret keys) the
/// publisher made them 0600 and 0700, every device's check then found 403 or 404 (a 403
/// taken as absent, a new root unseen) while `verify` said ok. Write bits stay the umask's.
#[test]
fn a_repository_published_under_a_private_umask_is_readable_by_a_server() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let private = |args: &[&str]| {
        let mut cmd = command_at(dir.path(), NOW);
        cmd.args(args);
        // SAFETY: umask is async-signal-safe; nothing else runs in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o077);
                Ok(())
            });
        }
        let out = common::output_within(&mut cmd, LIMIT);
        assert!(out.status.success(), "{args:?}: {}", common::stderr(&out));
    };
    private(&["keygen", "--out", "root"]);
    private(&["keygen", "--out", "release"]);
    private(&[
        "init",
        "repo",
        "--product",
        "com.acme.gw",
        "--root-key",
        "root.pub",
        "--root-threshold",
        "1",
        "--manifest-key",
        "release.pub",
        "--sign",
        "root",
    ]);
    std::fs::write(dir.path().join("settings.json"), b"{\"level\": 3}").unwrap();
    private(&[
        "release",
        "repo",
        "--channel",
        "stable",
        "--version",
        "1.0.0",
        "--target",
        "x86_64-linux",
        "--component",
        "config=settings.json:file",
        "--sign",
        "release",
    ]);
    private(&[
        "rollout",
        "repo",
        "--channel",
        "stable",
        "--version",
        "1.0.0",
        "--percent",
        "50",
        "--sign",
        "release",
    ]);
    // The secret keys stay the owner's.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("root")), 0o600);
    let mut found = Vec::new();
    let mut dirs = vec![dir.path().join("repo")];
    while let Some(d) = dirs.pop() {
        found.push((d.clone(), mode(&d)));
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name() != Some(".lock".as_ref()) {
                found.push((path.clone(), mode(&path)));
            }
        }
    }
    let shut: Vec<String> = found
        .iter()
        .filter(|(p, m)| {
            let wanted = if p.is_dir() { 0o755 } else { 0o644 };
            *m != wanted
        })
        .map(|(p, m)| format!("{} {m:04o}", p.display()))
        .collect();
    assert!(
        shut.is_empty(),
        "expected directories 0755 and files 0644 (readable by a server running as another user, written by the owner alone), found {shut:?}"
    );
    assert_eq!(found.len(), 8, "{found:?}");
}

/// [`init_repo`] and `rootfs.img` beside it: 64 MiB, sparse (to read, hash and copy,
/// nothing to write first), the size from which commands show how far they have read.
fn repo_and_a_large_image() -> tempfile::TempDir {
    let tmp = init_repo();
    std::fs::File::create(tmp.path().join("rootfs.img"))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    tmp
}

/// Off a terminal (a CI log), `release` says when it starts hashing a component of 64 MiB
/// or more, naming it and its length, and `verify` the same of its blob: a command
/// hashing gigabytes is not silent for minutes. Nothing is said of a small file, and
/// nothing with `--json` (stderr is then the error line alone).
#[test]
fn hashing_a_large_file_is_said_off_a_terminal() {
    let tmp = repo_and_a_large_image();
    let dir = tmp.path();
    std::fs::write(dir.join("small.bin"), b"small").unwrap();

    let o = evergreen(
        dir,
        &release_args("1.0.0", &["--component", "app=small.bin:file"]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "", "a small file is read without a word");

    let o = evergreen(
        dir,
        &release_args("2.0.0", &["--component", "os=rootfs.img:image"]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        "evergreen: hashing rootfs.img (67108864 bytes)\n",
        "named as it was given"
    );

    let o = evergreen(dir, &["verify", "repo"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let nightly = read_manifest(dir, "nightly");
    let release = (nightly["releases"].as_array().unwrap().iter())
        .find(|r| r["version"] == "2.0.0")
        .unwrap();
    let os = &release["targets"]["x86_64-linux"]["components"]["os"]["artifact"];
    let blob = Path::new("repo/blobs/sha256").join(os["sha256"].as_str().unwrap());
    assert_eq!(
        stderr(&o),
        format!("evergreen: hashing {} (67108864 bytes)\n", blob.display())
    );

    let o = evergreen(dir, &["verify", "repo", "--json"]);
    assert_eq!((o.status.code(), stderr(&o)), (Some(0), String::new()));
}

/// On a terminal (`script` gives the command one), hashing a large component draws a bar
/// naming it, cleared once the file is read, and no plain progress line.
#[test]
fn hashing_a_large_file_draws_a_bar_on_a_terminal() {
    if require::tool_output(Command::new("script").arg("--version")).is_err() {
        require::missing("script (util-linux)");
        return;
    }
    let tmp = repo_and_a_large_image();
    let dir = tmp.path();
    let args = release_args("2.0.0", &["--component", "os=rootfs.img:image"]);
    let command = format!(
        "EVERGREEN_NOW={NOW} '{}' {}",
        env!("CARGO_BIN_EXE_evergreen"),
        args.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let typescript = dir.join("typescript");
    let mut script = Command::new("script");
    script
        .args(["-qec", &command])
        .arg(&typescript)
        .current_dir(dir)
        .stdin(std::process::Stdio::null());
    let o = common::output_within(&mut script, LIMIT);
    assert!(o.status.success(), "{o:?}");
    let shown = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
    assert!(shown.contains("hashing rootfs.img ["), "{shown:?}");
    assert!(!shown.contains("evergreen: hashing"), "{shown:?}");
    assert!(shown.contains("2.0.0"), "{shown:?}");
}
