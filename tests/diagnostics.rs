//! What a device tells the person who looks into it after the fact, with a shell and no
//! access to the repository: `evergreen status` (text and `--json`) after a rollback and
//! after checks that failed, with the repository published by the CLI and served on
//! loopback.

mod common;
mod require;
mod support;

use common::Repo;
use support::TestServer;

fn publish(repo: &Repo, version: &str) {
    repo.release_settings("stable", version, &[]);
}

/// A device that took 1.0.0 from `server` and confirmed it.
fn confirmed_1_0_0(repo: &Repo, server: &TestServer) -> common::Device {
    publish(repo, "1.0.0");
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    dev.expect("update", &["--yes"], 0);
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
    dev
}

/// The history the state keeps (what activated, what rolled back and why) is shown by
/// `status`: the docs name its events (`rolled_back`, `activation_failed`, …), and a
/// device that rolled back by itself otherwise shows a `bad` slot and nothing of why.
#[test]
fn status_shows_why_a_release_rolled_back() {
    let repo = Repo::new("com.acme.diag");
    let server = TestServer::serve(&repo.root);
    let dev = confirmed_1_0_0(&repo, &server);
    publish(&repo, "1.1.0");
    dev.expect("update", &["--yes"], 0);
    // Started three times, never confirmed: the fourth start rolls it back.
    for _ in 0..4 {
        dev.expect("boot", &[], 0);
    }

    let s = dev.status();
    assert_eq!(s["slots"]["a"]["status"], "bad", "{s}");
    let history = s["history"].as_array().unwrap_or_else(|| panic!("{s}"));
    let last = history.last().unwrap();
    assert_eq!(last["event"], "rolled_back", "{s}");
    let detail = last["detail"].as_str().unwrap();
    assert!(
        detail.contains("1.1.0") && detail.contains("without being confirmed"),
        "{s}"
    );
    assert!(last["at"].is_string(), "{s}");
    let events: Vec<&str> = history
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert!(
        events.contains(&"activated") && events.contains(&"confirmed"),
        "{events:?}"
    );

    let text = dev.expect("status", &[], 0);
    let line = text
        .lines()
        .find(|l| l.contains("rolled_back"))
        .unwrap_or_else(|| panic!("no rollback in: {text}"));
    assert!(line.contains("without being confirmed"), "{text}");
}

/// Checks that fail for days (here: the channel expired, its operator's re-signing job
/// stopped) leave their error where `status` shows it, after the fact: the journal of the
/// timer that ran them may be long gone. Repeated failures take one history entry, the
/// latest, so they do not push out the rest of the history.
#[test]
fn status_shows_the_error_of_checks_that_keep_failing() {
    let repo = Repo::new("com.acme.diag");
    let server = TestServer::serve(&repo.root);
    let dev = confirmed_1_0_0(&repo, &server);
    // 1.0.0's channel is valid for 30 days.
    let later = ["2030-01-01T00:00:00Z", "2030-01-02T00:00:00Z"];
    for when in later {
        let out = dev.run_env("check", &[], &[("EVERGREEN_NOW", when)]);
        assert_eq!(out.status.code(), Some(1));
        assert!(common::stderr(&out).starts_with("error[expired]: "));
    }

    let s = dev.json_at(later[1], "status", &[], 0);
    assert_eq!(s["check_failures"], 2, "{s}");
    assert_eq!(s["last_failure"], later[1], "{s}");
    let history = s["history"].as_array().unwrap_or_else(|| panic!("{s}"));
    let failed: Vec<_> = history
        .iter()
        .filter(|h| h["event"] == "check_failed")
        .collect();
    assert_eq!(failed.len(), 1, "one entry for failures in a row: {s}");
    assert_eq!(failed[0]["at"], later[1], "{s}");
    let detail = failed[0]["detail"].as_str().unwrap();
    assert!(detail.contains("error[expired]: "), "{detail}");
    assert!(
        detail.contains("it is now 2030-01-02T00:00:00Z"),
        "{detail}"
    );
    assert!(detail.contains("2 in a row"), "{detail}");
    assert_eq!(history.last().unwrap()["event"], "check_failed", "{s}");

    let out = dev.run_env("status", &[], &[("EVERGREEN_NOW", later[1])]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("2 failed check(s) in a row") && text.contains("error[expired]: "),
        "{text}"
    );

    // A check that passes ends the run: the count goes, the entry stays as history.
    dev.expect("check", &[], 0);
    let s = dev.status();
    assert_eq!(s["check_failures"], 0, "{s}");
    assert_eq!(s["last_failure"], serde_json::Value::Null, "{s}");
    let text = dev.expect("status", &[], 0);
    assert!(!text.contains("failed check(s) in a row"), "{text}");
}

/// A download that fails (here: the server's blob of 1.1.0 is damaged, so its hash is
/// wrong) leaves its version and error line in the history, where `status` shows it once
/// the timer's journal is gone; retried in a row it keeps one entry, the newest. A
/// download that then succeeds is recorded after it.
#[test]
fn status_shows_the_error_of_a_download_that_failed() {
    use sha2::Digest;
    let repo = Repo::new("com.acme.diag");
    let server = TestServer::serve(&repo.root);
    let dev = confirmed_1_0_0(&repo, &server);
    publish(&repo, "1.1.0");
    let good = br#"{"version": "1.1.0"}"#;
    let blob = repo
        .root
        .join("blobs/sha256")
        .join(hex(&sha2::Sha256::digest(good)));
    let mut damaged = good.to_vec();
    damaged[2] ^= 0x20;
    std::fs::write(&blob, &damaged).unwrap();
    for _ in 0..2 {
        let err = dev.fails("update", &["--yes"]);
        let last = err.lines().last().unwrap_or_default();
        assert!(last.starts_with("error[hash_mismatch]: "), "{err}");
    }

    let s = dev.status();
    let history = s["history"].as_array().unwrap_or_else(|| panic!("{s}"));
    let failed: Vec<_> = history
        .iter()
        .filter(|h| h["event"] == "download_failed")
        .collect();
    assert_eq!(failed.len(), 1, "one entry for failures in a row: {s}");
    let detail = failed[0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("1.1.0: error[hash_mismatch]: "),
        "{detail}"
    );
    let text = dev.expect("status", &[], 0);
    assert!(
        text.contains("download_failed") && text.contains("1.1.0: error[hash_mismatch]: "),
        "{text}"
    );

    std::fs::write(&blob, good).unwrap();
    dev.expect("update", &["--yes"], 0);
    let s = dev.status();
    let events: Vec<&str> = (s["history"].as_array().unwrap().iter())
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    let at = events.iter().position(|e| *e == "download_failed").unwrap();
    assert!(events[at..].contains(&"activated"), "{events:?}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
