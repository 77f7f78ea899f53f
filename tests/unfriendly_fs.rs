//! The updater on unfriendly file systems (exFAT), full disks shared by root and the
//! app's own user, and read-only state directories.

mod common;
mod mounts;
mod require;
mod support;

use common::Repo;
use mounts::Mounted;
use std::path::Path;

/// The app's own user (`nobody`), who owns its state and slots where root updates too.
const NOBODY: u32 = 65534;

fn publish(repo: &Repo, version: &str) {
    repo.release_settings("stable", version, &[]);
}

/// `text` parsed as JSON, or a panic that shows it.
fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Whether this process may act as another user (root, with `setpriv`); says it is
/// missing otherwise (the test is skipped, or fails under `EVERGREEN_REQUIRE_TOOLS`).
fn can_act_as_nobody() -> bool {
    let ok = require::tool_succeeds(std::process::Command::new("setpriv").args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "true",
    ]));
    if !ok {
        require::missing("setpriv, run as root (to act as another user)");
    }
    ok
}

/// `evergreen ARGS… --config CONFIG` run as user 65534.
fn as_nobody(config: &Path, args: &[&str]) -> std::process::Output {
    let mut setpriv = std::process::Command::new("setpriv");
    setpriv.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    setpriv
        .arg(common::bin())
        .args(args)
        .arg("--config")
        .arg(config);
    common::output_within(&mut setpriv, common::CLI_LIMIT)
}

/// [`as_nobody`], which must succeed.
fn nobody_runs(config: &Path, args: &[&str]) {
    let out = as_nobody(config, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?} as the app's user: {}",
        common::stderr(&out)
    );
}

/// A state directory of the app's own user where root saves too (`sudo evergreen update`),
/// on a full disk: the owner's startup step still counts every start of the trial and
/// rolls back when they are spent (decision 31). Root's save leaves a state file of its
/// own, which the owner's first save on the full disk swaps in as the spare: the owner
/// must still be able to write into it, or no later start would be counted.
#[test]
fn a_trial_on_a_full_disk_is_counted_by_the_owner_after_root_saved_the_state() {
    let repo = Repo::new("com.acme.shared.full");
    let Some((_fs, dev)) = owners_trial_of_1_1_0(&repo, true) else {
        return;
    };
    the_owner_counts_the_trial_on_a_full_disk(&repo, &dev);
}

/// A state and spare of root's in the owner's state directory (left by a version that
/// did not give them to the owner): the owner's next save, while there is room, makes a
/// spare of their own, so the trial is still counted once the disk is full.
#[test]
fn a_spare_the_owner_cannot_write_is_made_again_while_there_is_room() {
    let repo = Repo::new("com.acme.shared.spare");
    let Some((_fs, dev)) = owners_trial_of_1_1_0(&repo, false) else {
        return;
    };
    let state = repo.scratch("full").join("state");
    for name in ["state.json", "state.json.spare"] {
        std::os::unix::fs::chown(state.join(name), Some(0), Some(0)).unwrap();
    }
    nobody_runs(&dev.config, &["boot"]);
    the_owner_counts_the_trial_on_a_full_disk(&repo, &dev);
}

/// A device whose state and slots are user 65534's, on a tmpfs of its own: 1.0.0 installed
/// and confirmed by that user, then 1.1.0 installed (by root when `by_root`) and on trial.
fn owners_trial_of_1_1_0(repo: &Repo, by_root: bool) -> Option<(Mounted, common::Device)> {
    if !can_act_as_nobody() {
        return None;
    }
    let scratch = repo.scratch("full");
    let fs = Mounted::tmpfs(&scratch, 2048)?;
    // The user may reach the device's files; state and slots are the user's.
    let dev = device_in(repo, &scratch, NOBODY, 0o755);
    publish(repo, "1.0.0");
    for args in [&["update", "--yes"][..], &["boot"], &["confirm"]] {
        nobody_runs(&dev.config, args);
    }
    publish(repo, "1.1.0");
    match by_root {
        // The admin installs the next release as root.
        true => drop(dev.expect("update", &["--yes"], 0)),
        false => nobody_runs(&dev.config, &["update", "--yes"]),
    }
    assert_eq!(dev.status()["trial"]["tries_left"], 3);
    Some((fs, dev))
}

/// Fills the device's disk; then each of the owner's startup steps counts a start of the
/// trial, and the one after the last rolls back.
fn the_owner_counts_the_trial_on_a_full_disk(repo: &Repo, dev: &common::Device) {
    mounts::fill(&repo.scratch("full"));
    let tries = dev.status()["trial"]["tries_left"].as_u64().unwrap();
    for left in (0..tries).rev() {
        let out = as_nobody(&dev.config, &["boot"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "the owner's startup step, {left} start(s) to go: {}",
            common::stderr(&out)
        );
        assert_eq!(
            dev.status()["trial"]["tries_left"],
            left,
            "start not counted"
        );
    }
    nobody_runs(&dev.config, &["boot"]);
    let s = dev.status();
    assert_eq!(s["primary"], "b", "not rolled back: {s}");
    assert_eq!(s["slots"]["a"]["status"], "bad", "{s}");
}

/// Dir slots on exFAT (no symlinks for `current`) are refused naming what they need, before
/// the idle slot is emptied: `symlink()` alone says "Function not implemented" (exFAT's
/// FUSE driver) or "Operation not permitted" (the kernel's vfat and exFAT), which names no
/// cause, and found at the activation it cost the fallback release.
#[test]
fn dir_slots_on_exfat_are_refused_naming_the_symbolic_link_they_need() {
    let card = tempfile::tempdir().unwrap();
    let at = card.path().join("mnt");
    let Some(_fs) = Mounted::exfat(&card.path().join("card.img"), 64, &at) else {
        return;
    };
    let repo = Repo::new("com.acme.exfat.slots");
    publish(&repo, "1.0.0");
    let dev = repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({"slots": {"kind": "dir", "root": at.join("app")}}),
    );
    let err = dev.fails("update", &["--yes"]);
    let line = err.lines().last().unwrap();
    assert!(
        line.contains("expected") && line.contains("symbolic link"),
        "the error names no expectation: {line}"
    );
    let s = dev.status();
    assert_eq!(s["primary"], "a", "{s}");
    assert_eq!(s["slots"]["a"]["status"], "empty", "{s}");
    // Found before the install: the idle slot (often the fallback) was not emptied for a
    // release no activation could switch to.
    assert_eq!(s["slots"]["b"]["status"], "empty", "{s}");
    assert!(!at.join("app/slots/b").exists());
    // Found before the download, too: nothing was fetched for it, and nothing said so.
    assert_eq!(dev.downloads(), Vec::<String>::new());
    assert!(!err.contains("downloading"), "{err}");
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

/// A halt (decision 38) seen by a check on a full state disk still withholds the staged
/// release: the state is saved there (through its spare); the manifest cache cannot be,
/// and a check that failed for it would throw away what it verified.
#[test]
fn a_halt_seen_on_a_full_disk_still_withholds_the_staged_release() {
    let repo = Repo::new("com.acme.full.halt");
    let scratch = repo.scratch("full");
    let Some(_fs) = Mounted::tmpfs(&scratch, 2048) else {
        return;
    };
    let dev = repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({"state_dir": scratch.join("state"),
            "deploy": {"policy": "download_only"}}),
    );
    publish(&repo, "1.0.0");
    for step in [
        &["update", "--yes"][..],
        &["activate"],
        &["boot"],
        &["confirm"],
    ] {
        dev.expect(step[0], &step[1..], 0);
    }
    publish(&repo, "1.1.0");
    dev.expect("update", &["--yes"], 0);
    assert_eq!(dev.status()["slots"]["a"]["status"], "installed");
    // The operator pulls 1.1.0; then the app's logs fill the disk.
    repo.rollout("stable", "1.1.0", "0");
    mounts::fill(&scratch);
    let check = dev.run("check", &[]);
    let out = json(&dev.expect("activate", &["--json"], 0));
    assert_eq!(
        out["status"],
        "deferred",
        "the halted release was activated: {out}; the check said: {}",
        common::stderr(&check)
    );
}

/// A root rotated while the state disk is full: the check that walks to it still verifies
/// the manifest and offers the release, though the new root cannot be saved (the state
/// records its version, so the next check walks to it again); once there is room, it is
/// saved.
#[test]
fn a_root_walked_to_on_a_full_disk_is_trusted_and_saved_once_there_is_room() {
    let repo = Repo::new("com.acme.full.root");
    let scratch = repo.scratch("full");
    let Some(_fs) = Mounted::tmpfs(&scratch, 2048) else {
        return;
    };
    let dev = repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({"state_dir": scratch.join("state")}),
    );
    publish(&repo, "1.0.0");
    dev.expect("check", &[], 10);
    let root = repo.root.to_str().unwrap();
    common::ok(&["rotate", root, "--sign", repo.root_key.to_str().unwrap()]);
    publish(&repo, "1.1.0");
    mounts::fill(&scratch);
    for _ in 0..2 {
        let offer = json(&dev.expect("check", &["--json"], 10));
        assert_eq!(offer["version"], "1.1.0", "{offer}");
    }
    std::fs::remove_file(scratch.join("filler")).unwrap();
    dev.expect("check", &[], 10);
    assert_eq!(
        std::fs::read(scratch.join("state/root.json")).unwrap(),
        std::fs::read(repo.root.join("root/2.json")).unwrap()
    );
}

/// A state directory root owns and the app's group may write (a launcher run as another
/// user of the group), on a full disk: after root's `update`, the group's startup steps
/// still count the trial and roll back, since what root writes there is the group's to
/// write in place too (the spare).
#[test]
fn a_trial_on_a_full_disk_in_a_group_shared_state_dir_is_counted_after_root_saved() {
    let repo = Repo::new("com.acme.shared.group");
    if !can_act_as_nobody() {
        return;
    }
    let scratch = repo.scratch("full");
    let Some(_fs) = Mounted::tmpfs(&scratch, 2048) else {
        return;
    };
    // root's, writable by the app's group (gid 65534).
    let dev = device_in(&repo, &scratch, 0, 0o775);
    publish(&repo, "1.0.0");
    for args in [&["update", "--yes"][..], &["boot"], &["confirm"]] {
        nobody_runs(&dev.config, args);
    }
    publish(&repo, "1.1.0");
    // The admin installs the next release as root.
    drop(dev.expect("update", &["--yes"], 0));
    assert_eq!(dev.status()["trial"]["tries_left"], 3);
    the_owner_counts_the_trial_on_a_full_disk(&repo, &dev);
}

/// Root's update in the app user's state directory (`sudo evergreen update`, the first one
/// on the device) makes `cache/` and `downloads/` there: they are the user's, so the
/// user's own update (the app's in-app check) still keeps the manifest it verified.
#[test]
fn the_owner_updates_after_root_made_the_state_subdirectories() {
    let repo = Repo::new("com.acme.shared.subdirs");
    if !can_act_as_nobody() {
        return;
    }
    let scratch = repo.scratch("owner");
    std::fs::create_dir_all(&scratch).unwrap();
    let dev = device_in(&repo, &scratch, NOBODY, 0o755);
    publish(&repo, "1.0.0");
    // The admin's first update, as root.
    drop(dev.expect("update", &["--yes"], 0));
    for args in [&["boot"][..], &["confirm"]] {
        nobody_runs(&dev.config, args);
    }
    publish(&repo, "1.1.0");
    // The owner's update after root's.
    nobody_runs(&dev.config, &["update", "--yes"]);
}

/// A device of `repo` whose state and slots are directories of `scratch` owned by `owner`
/// (group nogroup) with `mode`, and whose repository others may reach.
fn device_in(repo: &Repo, scratch: &Path, owner: u32, mode: u32) -> common::Device {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(repo.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (state, app) = (scratch.join("state"), scratch.join("app"));
    for dir in [&state, &app] {
        std::fs::create_dir(dir).unwrap();
        std::os::unix::fs::chown(dir, Some(owner), Some(NOBODY)).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({"state_dir": state, "slots": {"kind": "dir", "root": app}}),
    )
}
