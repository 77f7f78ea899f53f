//! The updater on unfriendly file systems (exFAT), full disks shared by root and the
//! app's own user, and read-only state directories.

mod common;
mod mounts;
mod require;
mod support;

use common::Repo;
use mounts::Mounted;
use std::path::Path;

fn publish(repo: &Repo, version: &str) {
    let src = repo.scratch("src");
    let file = src.join(format!("settings-{version}.json"));
    std::fs::write(&file, format!("{{\"version\": \"{version}\"}}")).unwrap();
    repo.release("stable", version, "x86_64-linux", &[("config", &file)], &[]);
}

/// A state directory remounted read-only: the error names the read-only state, not a
/// "stale temp file" that does not exist (unlink of a missing name on a RO mount is EROFS).
#[test]
fn a_read_only_state_directory_is_named_as_such_not_as_a_stale_temp_file() {
    let repo = Repo::new("com.acme.readonly");
    let scratch = repo.scratch("ro");
    let Some(_fs) = Mounted::tmpfs(&scratch, 4096) else {
        return;
    };
    publish(&repo, "1.0.0");
    let dev = repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({"state_dir": scratch.join("state")}),
    );
    dev.expect("update", &["--yes"], 0);
    let remounted = require::tool_succeeds(
        std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&scratch),
    );
    assert!(remounted, "remount read-only");
    let temps: Vec<_> = std::fs::read_dir(scratch.join("state"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
    let err = dev.fails("boot", &[]);
    let line = err.lines().last().unwrap();
    assert!(
        line.contains("Read-only file system") && !line.contains("stale temp file"),
        "{line}"
    );
    assert!(line.contains("state.json"), "{line}");
    // What the trial was stays as it was: nothing counted, nothing lost.
    assert_eq!(dev.status()["trial"]["tries_left"], 3);
}

/// Components `Config` and `config` (a manifest from another tool) are one directory on a
/// case-insensitive file system; the device must refuse them as `evergreen release` does.
#[test]
fn components_whose_names_differ_only_in_case_are_refused_by_the_device() {
    let card = tempfile::tempdir().unwrap();
    let at = card.path().join("mnt");
    let Some(_fs) = Mounted::exfat(&card.path().join("card.img"), 64, &at) else {
        return;
    };
    let repo = Repo::new("com.acme.exfat.case");
    publish(&repo, "1.0.0");
    // Another publisher's tool: a second component `Config` beside `config`, a file
    // artifact of another name (the same signed blob).
    repo.edit_channel("stable", |m| {
        let target = m.releases[0].targets.get_mut("x86_64-linux").unwrap();
        let mut other = target.components.get("config").unwrap().clone();
        other.artifact.name = Some("other.json".into());
        target.components.insert("Config", other);
    });
    let app = at.join("app");
    let dev = repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({"slots": {"kind": "dir", "root": app},
            "deploy": {"policy": "download_only"}}),
    );
    // Staged, not activated (exFAT has no symlink for `current`).
    let out = dev.run("update", &["--yes"]);
    let staged = common::tree_digest(&app.join("slots/b"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "installed; slot b holds {:?}, status {}",
        staged.keys().collect::<Vec<_>>(),
        dev.status()
    );
    let err = common::stderr(&out);
    assert!(
        err.contains("\"Config\"") && err.contains("\"config\""),
        "{err}"
    );
    assert!(
        !app.join("slots/b").exists(),
        "slot b was written: {staged:?}"
    );
}

/// EFBIG (vfat's 4 GiB - 1 per file; simulated with `ulimit -f` and SIGXFSZ ignored): the
/// `.part` must not be kept to hit the same wall at every update, and the error must say why.
#[test]
fn a_blob_longer_than_the_file_system_takes_is_not_kept_to_be_resumed() {
    let repo = Repo::new("com.acme.efbig");
    let src = repo.scratch("src");
    let blob = src.join("app.bin");
    std::fs::write(&blob, support::noise(1536 << 10, 7)).unwrap();
    let spec = format!("{}:file", blob.display());
    repo.release(
        "stable",
        "1.0.0",
        "x86_64-linux",
        &[("app", Path::new(&spec))],
        &[],
    );
    let dev = repo.device("dev", repo.root.to_str().unwrap(), serde_json::json!({}));
    let run = || {
        let mut sh = std::process::Command::new("sh");
        sh.args(["-c", "trap '' XFSZ; ulimit -f 1000; exec \"$0\" \"$@\""])
            .arg(common::bin())
            .args(["update", "--yes", "--config"])
            .arg(&dev.config);
        common::output_within(&mut sh, common::CLI_LIMIT)
    };
    for attempt in 1..=2 {
        let out = run();
        assert_eq!(out.status.code(), Some(1), "attempt {attempt}");
        let err = common::stderr(&out);
        let line = err.lines().last().unwrap();
        assert!(line.contains("File too large"), "attempt {attempt}: {line}");
        let left = dev.downloads();
        assert!(
            left.iter().all(|n| !n.ends_with(".part")),
            "attempt {attempt}: a .part the file system cannot finish was kept ({left:?}): {line}"
        );
        assert!(line.contains("expected"), "attempt {attempt}: {line}");
    }
}
