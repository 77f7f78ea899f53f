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
    let src = repo.scratch("src");
    let file = src.join(format!("settings-{version}.json"));
    std::fs::write(&file, format!("{{\"version\": \"{version}\"}}")).unwrap();
    repo.release("stable", version, "x86_64-linux", &[("config", &file)], &[]);
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
