//! A repository copied to a static host file by file (rsync, `aws s3 sync`, scp, `cp`
//! into a docroot), checked by devices while the copy is half done: every state of the
//! copy leaves a device on its release or on the new one, and a failed check says what
//! the device found (a file cut short, a channel not re-signed yet), not a rotation that
//! did not happen.

mod common;
mod require;
mod support;

use common::{copy_dir, Device, Repo};
use std::collections::BTreeMap;
use std::path::Path;
use support::TestServer;

/// Every file of the repository under `dir` (relative path → bytes), without the local
/// lock and temp files, which are never uploaded.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
                continue;
            }
            let rel = path.strip_prefix(base).unwrap().to_str().unwrap();
            if rel != ".lock" && !rel.contains(".tmp-") {
                out.insert(rel.to_string(), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The files a copy from `old` to `new` writes, alphabetically (as rsync sends them).
fn changed(old: &Path, new: &Path) -> Vec<(String, Vec<u8>)> {
    let old = files(old);
    files(new)
        .into_iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .collect()
}

/// Writes `bytes` as `rel` under `served` in place, as scp or `cp` into a docroot do: a
/// reader may see any prefix of it.
fn put(served: &Path, rel: &str, bytes: &[u8]) {
    let path = served.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
}

/// Copies the files of `new` under `dir` (`blobs`, `root` or `channels`) that differ from
/// `served`'s, each to a temp name and renamed into place, as `rsync -a new/dir/
/// served/dir/` does: one step of the upload order docs/operators.md gives.
fn sync_dir(new: &Path, served: &Path, dir: &str) {
    for (rel, bytes) in changed(served, new) {
        if rel.starts_with(&format!("{dir}/")) {
            let path = served.join(&rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let temp = path.with_file_name(".incoming");
            std::fs::write(&temp, bytes).unwrap();
            std::fs::rename(&temp, &path).unwrap();
        }
    }
}

/// The `error[…]` line of a failed command.
fn error_line(dev: &Device, cmd: &str) -> String {
    let err = dev.fails(cmd, &[]);
    err.lines()
        .find(|l| l.starts_with("error["))
        .unwrap_or_else(|| panic!("no error line in {err}"))
        .to_string()
}

/// Updates `dev` to the newest release and confirms it.
fn update_and_confirm(dev: &Device) {
    dev.expect("update", &["--yes"], 0);
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
}

fn version(dev: &Device) -> String {
    let status = dev.status();
    let version = status["slots"][status["primary"].as_str().unwrap()]["version"].as_str();
    version
        .unwrap_or_else(|| panic!("no version in {status}"))
        .to_string()
}

/// A channel manifest copied in place (scp, `cp` into nginx's docroot, `rsync
/// --inplace`) is read by devices while it is written: empty, then cut short. Their
/// check fails until it is whole, and the error says the copy ends early. It used to end
/// with a hint about a key rotation ("the newest root found is version 1 (no
/// root/2.json): a channel signed with keys rotated in after it needs root/2.json beside
/// it") in a repository that was never rotated, sending the operator after a root file
/// that does not exist.
#[test]
fn a_channel_read_while_it_is_copied_in_place_is_said_to_be_cut_short() {
    let repo = Repo::new("com.acme.sync");
    repo.release_settings("stable", "1.0.0", &[]);
    let served = repo.scratch("served");
    copy_dir(&repo.root, &served);
    let server = TestServer::serve(&served);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    update_and_confirm(&dev);
    repo.release_settings("stable", "1.1.0", &[]);
    let channel = "channels/stable.json";
    let whole = std::fs::read(repo.root.join(channel)).unwrap();
    // Blobs first, as the docs say; then the channel, in place.
    sync_dir(&repo.root, &served, "blobs");
    // Up to the envelope's last `}` left out (a newline may follow it).
    let end = whole.iter().rposition(|b| *b == b'}').unwrap();
    for cut in [0, 1, end / 2, end] {
        put(&served, channel, &whole[..cut]);
        let line = error_line(&dev, "check");
        assert!(
            line.starts_with("error[signature]: "),
            "{cut} bytes: {line}"
        );
        assert!(
            line.contains("ends before its JSON does") && line.contains("still writing it"),
            "{cut} bytes: expected the copy named as cut short, found {line}"
        );
        assert!(
            !line.contains("root/2.json") && !line.contains("rotated"),
            "{cut} bytes: expected no word of a rotation the repository never had, found {line}"
        );
        assert_eq!(version(&dev), "1.0.0", "{cut} bytes");
    }
    put(&served, channel, &whole);
    dev.expect("check", &[], 10);
    update_and_confirm(&dev);
    assert_eq!(version(&dev), "1.1.0");
    assert!(changed(&served, &repo.root).is_empty());
}

/// A rotation of the manifest key uploaded in the documented order (blobs, then root,
/// then channels): between the root and the channels, a device that fetches the channel
/// anew (its copy is older than the server's) walks to the new root, which no longer
/// lists the key the channel on the server is still signed with. Its check fails until
/// the channels are there, and must say that: the channel is older than the root. It
/// used to say the channel was signed "with keys rotated in after" the newest root and
/// needed `root/3.json`, a file that will never exist. A device whose copy is current is
/// answered 304 and stays as it is; after the last step both update without help.
#[test]
fn a_rotation_half_uploaded_names_the_channel_not_re_signed_yet() {
    let repo = Repo::new("com.acme.sync");
    repo.release_settings("stable", "1.0.0", &[]);
    let served = repo.scratch("served");
    copy_dir(&repo.root, &served);
    let server = TestServer::serve(&served);
    let current = repo.device("current", &server.url(), serde_json::json!({}));
    let behind = repo.device("behind", &server.url(), serde_json::json!({}));
    update_and_confirm(&current);
    update_and_confirm(&behind);
    // The weekly resign reaches `current`; `behind` was off line.
    let manifest_key = repo.manifest_key.to_str().unwrap();
    let root = repo.root.to_str().unwrap();
    common::ok(&[
        "resign",
        root,
        "--channel",
        "stable",
        "--sign",
        manifest_key,
    ]);
    sync_dir(&repo.root, &served, "channels");
    current.expect("check", &[], 0);
    // The rotation, and a release signed with the new key.
    let key2 = repo.scratch("keys2").join("release2");
    let key2 = key2.to_str().unwrap();
    common::ok(&["keygen", "--out", key2]);
    let root_key = repo.root_key.to_str().unwrap();
    let pub2 = format!("{key2}.pub");
    common::ok(&[
        "rotate",
        root,
        "--manifest-key",
        &pub2,
        "--sign",
        root_key,
        "--sign",
        key2,
    ]);
    let settings = repo.scratch("src").join("settings-1.1.0.json");
    std::fs::write(&settings, "{\"version\": \"1.1.0\"}").unwrap();
    let component = format!("config={}", settings.display());
    common::ok(&[
        "release",
        root,
        "--channel",
        "stable",
        "--version",
        "1.1.0",
        "--target",
        "x86_64-linux",
        "--component",
        &component,
        "--sign",
        key2,
    ]);

    sync_dir(&repo.root, &served, "blobs");
    current.expect("check", &[], 0);
    sync_dir(&repo.root, &served, "root");
    current.expect("check", &[], 0);
    let line = error_line(&behind, "check");
    assert!(line.starts_with("error[signature]: "), "{line}");
    assert!(
        line.contains("signed only by manifest keys root version 1 listed")
            && line.contains("channels/ not copied yet"),
        "expected the channel named as one from before the rotation, found {line}"
    );
    assert!(
        !line.contains("root/3.json") && !line.contains("rotated in after"),
        "expected no root after version 2 asked for, found {line}"
    );
    assert_eq!(version(&behind), "1.0.0");

    sync_dir(&repo.root, &served, "channels");
    assert!(changed(&served, &repo.root).is_empty());
    for dev in [&current, &behind] {
        dev.expect("check", &[], 10);
        update_and_confirm(dev);
        assert_eq!(version(dev), "1.1.0");
    }
}
