//! Text from outside Evergreen as the CLI prints it: a server's headers before any
//! signature check, signed but publisher-written fields, the config. Every line printed
//! is Evergreen's own, bounded, and shows control characters escaped.

mod common;
mod require;
mod support;

use common::Repo;
use support::{Fault, TestServer};

fn publish(repo: &Repo, version: &str, channel: &str, notes: &str) {
    let src = repo.scratch("src");
    let file = src.join(format!("settings-{version}.json"));
    std::fs::write(&file, format!("{{\"version\": \"{version}\"}}")).unwrap();
    repo.release(
        channel,
        version,
        "x86_64-linux",
        &[("config", &file)],
        &["--notes", notes],
    );
}

/// A server (not yet authenticated by any signature) answering with a `Location` of
/// 60,000 bytes, the most its headers may hold: the `error[<kind>]` line, the state's
/// history and `status` show its start and say how long it was, rather than a 60 KB
/// line that a log splits in two (the second half no longer an `error[` line) and that
/// the state keeps.
#[test]
fn a_huge_location_header_is_cut_in_the_error_line_and_the_history() {
    let repo = Repo::new("com.acme.hugelocation");
    publish(&repo, "1.0.0", "stable", "n");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device(
        "dev",
        &server.url(),
        serde_json::json!({"current_version": "0.9.0"}),
    );
    let location = format!("ftp://mirror/{}", "a".repeat(60_000));
    server.set_fault("channels/stable.json", Fault::Redirect(location.clone()));

    let err = dev.fails("check", &[]);
    assert!(err.starts_with("error[http_status]: GET "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.len() < 1024, "a line of {} bytes", err.len());
    assert!(
        err.contains(&format!("({} bytes in all)", location.len())),
        "{err}"
    );
    let state = std::fs::read(dev.state.join("state.json")).unwrap();
    assert!(state.len() < 16 * 1024, "a state of {} bytes", state.len());
    let status = dev.expect("status", &[], 0);
    for line in status.lines() {
        assert!(line.len() < 1024, "a line of {} bytes", line.len());
    }
}
