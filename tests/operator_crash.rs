//! Operator commands killed part-way: each command that changes the repository is
//! stopped at every crash point in turn (`EVERGREEN_CRASH_AT=k`, as a kill or a power cut
//! there would stop it), then a device checks the directory as it is, `verify` looks at
//! it, the same command runs again, and the device checks once more.
//!
//! Needs the `fault-injection` feature (`cargo test --all-features`).

mod common;
mod require;
mod support;

use common::{run_env, Device, Repo};
use std::path::Path;
use std::process::Output;
use support::TestServer;

/// What a command run again says when an earlier run, killed, had made its change.
const DONE: &str = "nothing more to do";

/// How many crash points a run of `args` passes, run on a copy of `repo` as it is.
fn crash_points(repo: &Path, args: &[&str]) -> usize {
    let keep = repo.with_extension("counted");
    common::copy_dir(repo, &keep);
    let out = run_env(args, &[("EVERGREEN_CRASH_COUNT", "1")]);
    assert!(out.status.success(), "{args:?}: {}", common::stderr(&out));
    common::copy_dir(&keep, repo);
    common::stderr(&out)
        .lines()
        .filter(|l| l.starts_with("crash-point "))
        .count()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}: {}",
        out.status.code(),
        common::stderr(out).trim_end()
    )
}

/// A device check that did what a device may do with a repository: nothing new (0) or an
/// offer (10).
fn check_ok(dev: &Device) -> Result<(), String> {
    let out = dev.run("check", &[]);
    match out.status.code() {
        Some(0 | 10) => Ok(()),
        _ => Err(text(&out)),
    }
}

/// What happens after each kill: `Ok` or the problems found.
struct Sweep<'a> {
    repo: &'a Repo,
    dev: &'a Device,
}

impl Sweep<'_> {
    /// Kills `args` at each of its crash points, from the repository and device state as
    /// they are now (restored after each), and returns what went wrong. `window(repo,
    /// refusal)` says whether the docs admit a device refusing the repository as a kill
    /// left it, as it did (the operator runs the command again before uploading).
    fn run(&self, args: &[&str], window: impl Fn(&Path, &str) -> bool) -> Vec<String> {
        let scratch = self.repo.scratch("sweep");
        let (repo_before, state_before) = (scratch.join("repo"), scratch.join("state"));
        common::copy_dir(&self.repo.root, &repo_before);
        common::copy_dir(&self.dev.state, &state_before);
        let n = crash_points(&self.repo.root, args);
        assert!(n > 0, "{args:?} passes no crash point");
        let mut problems = Vec::new();
        for k in 1..=n {
            common::copy_dir(&repo_before, &self.repo.root);
            common::copy_dir(&state_before, &self.dev.state);
            let out = run_env(args, &[("EVERGREEN_CRASH_AT", &k.to_string())]);
            common::assert_crashed_at(&out, k);
            let mut p = Vec::new();
            if let Err(e) = check_ok(self.dev) {
                if !window(&self.repo.root, &e) {
                    p.push(format!("device check after the kill: {e}"));
                }
            }
            // A kill after the last rename leaves the change made: the same command again
            // may refuse to make it twice, but must then say that nothing is left to do,
            // not send the operator off to publish another version.
            let again = run_env(args, &[]);
            if !again.status.success() && !common::stderr(&again).contains(DONE) {
                p.push(format!("the same command again: {}", text(&again)));
            }
            let verify = run_env(&["verify", self.repo.root.to_str().unwrap()], &[]);
            if !verify.status.success() {
                p.push(format!("verify after running it again: {}", text(&verify)));
            }
            if let Err(e) = check_ok(self.dev) {
                p.push(format!("device check after running it again: {e}"));
            }
            problems.extend(
                p.into_iter()
                    .map(|e| format!("{args:?} killed at {k}: {e}")),
            );
        }
        common::copy_dir(&repo_before, &self.repo.root);
        common::copy_dir(&state_before, &self.dev.state);
        println!("{args:?}: {n} crash points");
        problems
    }
}

/// A repository with 1.0.0 on stable and nightly, and a device on stable that has seen it.
fn fixture() -> (Repo, TestServer, Device) {
    let repo = Repo::new("com.acme.opcrash");
    let src = repo.scratch("src");
    let file = src.join("settings.json");
    std::fs::write(&file, "{\"v\": 1}").unwrap();
    for channel in ["stable", "nightly"] {
        repo.release(channel, "1.0.0", "x86_64-linux", &[("config", &file)], &[]);
    }
    let file = src.join("settings-1.0.1.json");
    std::fs::write(&file, "{\"v\": 101}").unwrap();
    repo.release("stable", "1.0.1", "x86_64-linux", &[("config", &file)], &[]);
    let server = TestServer::serve(&repo.root);
    let dev = repo.device(
        "dev",
        &server.url(),
        serde_json::json!({"current_version": "0.9.0"}),
    );
    check_ok(&dev).unwrap();
    (repo, server, dev)
}

#[test]
fn channel_commands_killed_anywhere_leave_a_repository_devices_take() {
    let (repo, _server, dev) = fixture();
    let r = repo.root.to_str().unwrap();
    let key = repo.manifest_key.to_str().unwrap();
    let src = repo.scratch("src");
    let file = src.join("settings-1.1.0.json");
    std::fs::write(&file, "{\"v\": 2}").unwrap();
    let component = format!("config={}", file.display());
    let sweep = Sweep {
        repo: &repo,
        dev: &dev,
    };
    let never = |_: &Path, _: &str| false;
    let mut problems = Vec::new();
    for (channel, version) in [("stable", "1.1.0"), ("beta", "1.1.0")] {
        problems.extend(sweep.run(
            &[
                "release",
                r,
                "--channel",
                channel,
                "--version",
                version,
                "--target",
                "x86_64-linux",
                "--component",
                &component,
                "--sign",
                key,
            ],
            never,
        ));
    }
    problems.extend(sweep.run(
        &[
            "promote",
            r,
            "--version",
            "1.0.0",
            "--from",
            "stable",
            "--to",
            "beta",
            "--sign",
            key,
        ],
        never,
    ));
    problems.extend(sweep.run(
        &[
            "rollout",
            r,
            "--channel",
            "stable",
            "--version",
            "1.0.0",
            "--percent",
            "50",
            "--sign",
            key,
        ],
        never,
    ));
    problems.extend(sweep.run(&["resign", r, "--channel", "stable", "--sign", key], never));
    problems.extend(sweep.run(
        &[
            "prune",
            r,
            "--channel",
            "stable",
            "--keep",
            "1",
            "--sign",
            key,
        ],
        never,
    ));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn rotations_killed_anywhere_can_be_run_again() {
    let (repo, _server, dev) = fixture();
    let r = repo.root.to_str().unwrap();
    let keys = repo.scratch("keys2");
    let (root2, manifest2) = (keys.join("root2.key"), keys.join("manifest2.key"));
    for k in [&root2, &manifest2] {
        common::ok(&["keygen", "--out", k.to_str().unwrap()]);
    }
    let pubs = |k: &Path| format!("{}.pub", k.display());
    let (root1, manifest1) = (
        repo.root_key.to_str().unwrap(),
        repo.manifest_key.to_str().unwrap(),
    );
    let (root2_pub, manifest2_pub) = (pubs(&root2), pubs(&manifest2));
    let (root2, manifest2) = (root2.to_str().unwrap(), manifest2.to_str().unwrap());
    let sweep = Sweep {
        repo: &repo,
        dev: &dev,
    };
    // Cut off between its renames, a rotation leaves channels signed by keys no root
    // lists yet, which devices refuse: docs/operators.md step 7 says to run it again
    // before uploading anything.
    let half_rotated = |repo: &Path, refusal: &str| {
        !repo.join("root/2.json").exists() && refusal.contains("error[signature]")
    };
    let mut problems = Vec::new();
    for args in [
        vec![
            "rotate",
            r,
            "--root-key",
            &root2_pub,
            "--manifest-key",
            &manifest2_pub,
            "--sign",
            root1,
            "--sign",
            root2,
            "--sign",
            manifest2,
        ],
        vec![
            "rotate",
            r,
            "--manifest-key",
            &manifest2_pub,
            "--sign",
            root1,
            "--sign",
            manifest2,
        ],
        vec![
            "rotate",
            r,
            "--root-key",
            &root2_pub,
            "--sign",
            root1,
            "--sign",
            root2,
            "--sign",
            manifest1,
        ],
        vec!["rotate", r, "--expires-in", "300", "--sign", root1],
    ] {
        problems.extend(sweep.run(&args, half_rotated));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A rotation whose second rename fails (a disk error, not a kill) has put one channel
/// in place, signed by a key no root lists yet: its own error says to run it again, and
/// running it again finishes it.
#[test]
fn a_rotation_failing_between_its_renames_says_to_run_it_again() {
    let (repo, _server, dev) = fixture();
    let r = repo.root.to_str().unwrap();
    let manifest2 = repo.scratch("keys2").join("manifest2.key");
    let manifest2 = manifest2.to_str().unwrap();
    common::ok(&["keygen", "--out", manifest2]);
    let manifest2_pub = format!("{manifest2}.pub");
    let root1 = repo.root_key.to_str().unwrap();
    let args = [
        "rotate",
        r,
        "--manifest-key",
        &manifest2_pub,
        "--sign",
        root1,
        "--sign",
        manifest2,
    ];
    let out = run_env(&args, &[("EVERGREEN_FAIL_AT", "rename:2")]);
    let err = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error[io]")
            && err.contains("1 of the 3 files were already in place")
            && err.contains("run the same command again"),
        "{err}"
    );
    assert!(!repo.root.join("root/2.json").exists(), "{err}");
    let again = run_env(&args, &[]);
    assert!(again.status.success(), "{}", text(&again));
    let verify = run_env(&["verify", r], &[]);
    assert!(verify.status.success(), "{}", text(&verify));
    check_ok(&dev).unwrap();
}

#[test]
fn an_init_killed_anywhere_can_be_run_again() {
    let repo = Repo::new("com.acme.opcrash");
    let r = repo.dir.path().join("again");
    let (root_pub, manifest_pub) = (
        format!("{}.pub", repo.root_key.display()),
        format!("{}.pub", repo.manifest_key.display()),
    );
    let args = [
        "init",
        r.to_str().unwrap(),
        "--product",
        "com.acme.opcrash",
        "--root-key",
        &root_pub,
        "--root-threshold",
        "1",
        "--manifest-key",
        &manifest_pub,
        "--sign",
        repo.root_key.to_str().unwrap(),
    ];
    let out = run_env(&args, &[("EVERGREEN_CRASH_COUNT", "1")]);
    assert!(out.status.success(), "{}", text(&out));
    let n = common::stderr(&out)
        .lines()
        .filter(|l| l.starts_with("crash-point "))
        .count();
    let mut problems = Vec::new();
    for k in 1..=n {
        let _ = std::fs::remove_dir_all(&r);
        let out = run_env(&args, &[("EVERGREEN_CRASH_AT", &k.to_string())]);
        common::assert_crashed_at(&out, k);
        // Killed once root/1.json is in, init has done its job: run again, it refuses
        // to replace the root (docs/operators.md step 2), and the repository verifies.
        let again = run_env(&args, &[]);
        let there = common::stderr(&again).contains("expected no repository at");
        if !again.status.success() && !there {
            problems.push(format!("init killed at {k}, then again: {}", text(&again)));
        }
        let verify = run_env(&["verify", r.to_str().unwrap()], &[]);
        if !verify.status.success() {
            problems.push(format!(
                "init killed at {k}, then verify: {}",
                text(&verify)
            ));
        }
    }
    println!("init: {n} crash points");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
