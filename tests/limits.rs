//! The updater in a process under tight limits, as embedded hosts and systemd services
//! run it: a thread limit (a pids cgroup, systemd's `TasksMax`, `RLIMIT_NPROC`) at which
//! the OS refuses every new thread (needs root, `prlimit` and `setpriv`), and a file size
//! limit (`ulimit -f`; needs `prlimit`). Skipped without them (failed under
//! `EVERGREEN_REQUIRE_TOOLS`).

mod common;
mod require;
mod support;

use common::{Device, Repo};
use std::process::{Command, Output};
use support::TestServer;

/// `evergreen CMD --config CONFIG ARGS…` as a process that may not start a thread:
/// `RLIMIT_NPROC` 1 on the real user `uid`, which no other process runs as (the limit
/// counts the tasks of the real user; root is exempt, and so is a process with
/// CAP_SYS_RESOURCE or CAP_SYS_ADMIN, which are dropped). The effective user stays root,
/// so the run reads and writes what the test made. Each test has its own `uid`: two
/// runs at once under one would refuse the second. `None` (the test is skipped) where
/// this process is not root or the tools are missing.
fn without_threads(uid: u32, dev: &Device, cmd: &str, args: &[&str]) -> Option<Output> {
    let ruid = format!("--ruid={uid}");
    // SAFETY: a query without arguments.
    let root = unsafe { libc::geteuid() } == 0;
    if !(root
        && require::tool_succeeds(Command::new("prlimit").args([
            "--nproc=1",
            "setpriv",
            &ruid,
            "true",
        ])))
    {
        require::missing("root, prlimit and setpriv (to run with a thread limit)");
        return None;
    }
    let mut limited = Command::new("prlimit");
    limited
        .args([
            "--nproc=1",
            "setpriv",
            &ruid,
            "--bounding-set=-sys_resource,-sys_admin",
        ])
        .arg(common::bin())
        .args([cmd, "--config", dev.config.to_str().unwrap()])
        .args(args);
    Some(common::output_within(&mut limited, common::CLI_LIMIT))
}

/// `out`'s stderr, once it exited with `code`.
fn exited(out: &Output, code: i32) -> String {
    let err = common::stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

/// Publishes `version` of an app zip of eight 300 KiB files (more than one extraction
/// thread's work), as component `app`.
fn publish_zip(repo: &Repo, version: &str) {
    let zip = repo.scratch("src").join(format!("app-{version}.zip"));
    let files: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("f{i}.bin"), support::noise(300 << 10, i + 1)))
        .collect();
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    common::make_zip(&zip, &files);
    repo.release("stable", version, "x86_64-linux", &[("app", &zip)], &[]);
}

/// A check at the thread limit still asks the server: every request's name lookup ran on
/// a thread of its own (ureq's, so that a lookup is bounded by the connect timeout), and
/// the OS refusing it panicked (exit 101, no `error[…]` line).
#[test]
fn a_check_that_may_not_start_a_thread_finds_the_update() {
    let repo = Repo::new("com.acme.limits");
    publish_zip(&repo, "1.0.0");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    let Some(out) = without_threads(60_101, &dev, "check", &[]) else {
        return;
    };
    exited(&out, 10);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("-> 1.0.0"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A download at the thread limit fails as `io`, saying the process is at its thread
/// limit: its hashing thread was started by `std::thread::scope`'s spawn, which panicked
/// when the OS refused it (exit 101, no `error[…]` line). Nothing is lost: the slots are
/// as they were (the check is recorded), and once the limit is gone the same update
/// downloads and installs. (Hashing on the receiving thread instead took 4 KB of the
/// smallest library.)
#[test]
fn a_download_that_may_not_start_a_thread_says_so_and_the_next_one_goes_ahead() {
    let repo = Repo::new("com.acme.limits");
    publish_zip(&repo, "1.0.0");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    let before = dev.status();
    let Some(out) = without_threads(60_102, &dev, "update", &["--yes", "--download-only"]) else {
        return;
    };
    let err = exited(&out, 1);
    assert!(
        err.contains("error[io]")
            && err.contains("expected a thread to hash the download on")
            && err.contains("thread limit"),
        "{err}"
    );
    let after = dev.status();
    assert_eq!(
        (&after["primary"], &after["slots"]),
        (&before["primary"], &before["slots"])
    );
    dev.expect("update", &["--yes"], 0);
    assert_eq!(dev.status()["slots"]["b"]["version"], "1.0.0");
}

/// An install at the thread limit extracts and syncs on the calling thread: its worker
/// threads were started with `std::thread::scope`'s spawn, which panicked when the OS
/// refused the first. (Downloaded first without the limit: the download's own hashing
/// thread is refused there, the test above.)
#[test]
fn an_install_that_may_not_start_a_thread_extracts_on_its_own() {
    let repo = Repo::new("com.acme.limits");
    publish_zip(&repo, "1.0.0");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    dev.expect("update", &["--yes", "--download-only"], 0);
    let Some(out) = without_threads(60_103, &dev, "update", &["--yes"]) else {
        return;
    };
    exited(&out, 0);
    let status = dev.status();
    assert_eq!(status["primary"], "b", "{status}");
    assert_eq!(status["slots"]["b"]["version"], "1.0.0", "{status}");
    let app = dev.root.join("slots/b/app");
    for i in 0..8u64 {
        let file = std::fs::read(app.join(format!("f{i}.bin"))).unwrap();
        assert!(file == support::noise(300 << 10, i + 1), "f{i}.bin differs");
    }
}

/// A download past the process's file size limit (`ulimit -f`, `RLIMIT_FSIZE`; 1 MB here,
/// for a 2.4 MB zip) is refused as `io`, naming the limit, and removes its partial
/// download (a resume would meet the same wall): SIGXFSZ, whose default action ends the
/// process, killed the CLI with no `error[…]` line. Once the limit is gone the update goes
/// ahead.
#[test]
fn a_download_past_the_file_size_limit_says_so() {
    if !require::tool_succeeds(Command::new("prlimit").args(["--fsize=1000000", "true"])) {
        require::missing("prlimit (to run with a file size limit)");
        return;
    }
    let repo = Repo::new("com.acme.limits");
    publish_zip(&repo, "1.0.0");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    let mut limited = Command::new("prlimit");
    limited.arg("--fsize=1000000").arg(common::bin()).args([
        "update",
        "--yes",
        "--config",
        dev.config.to_str().unwrap(),
    ]);
    let out = common::output_within(&mut limited, common::CLI_LIMIT);
    let err = exited(&out, 1);
    assert!(
        err.contains("error[io]") && err.contains("file size limit"),
        "{err}"
    );
    assert!(dev.downloads().is_empty(), "{:?}", dev.downloads());
    assert_eq!(dev.status()["slots"]["b"]["status"], "empty");
    dev.expect("update", &["--yes"], 0);
    assert_eq!(dev.status()["slots"]["b"]["version"], "1.0.0");
}
