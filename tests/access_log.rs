//! What an operator learns of a rollout from the static server's access log alone
//! (docs/fleet.md, "What the access log tells"): devices driven through update, confirm
//! and rollback with the real CLI against a real nginx, and the documented one-liner run
//! over nginx's real access log. Skipped, with a message, where nginx is not installed
//! (failed under `EVERGREEN_REQUIRE_TOOLS`, as in CI).

mod common;
mod nginxd;
mod require;

use common::{Device, Repo};
use nginxd::Nginx;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Publishes `version` of one file component to stable.
fn publish(repo: &Repo, version: &str) {
    repo.release_settings("stable", version, &[]);
}

/// Makes `dir` and everything under it readable by nginx's worker, whatever user it runs as.
fn make_public(dir: &Path) {
    let mode = if dir.is_dir() { 0o755 } else { 0o644 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            make_public(&entry.unwrap().path());
        }
    }
}

/// The access log's lines once there are at least `n`: nginx writes a line after the
/// response went out. Waits at most two seconds.
fn log_lines(nginx: &Nginx, n: usize) -> Vec<String> {
    for _ in 0..200 {
        if nginx.log("access.log").lines().count() >= n {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    nginx.log("access.log").lines().map(String::from).collect()
}

/// The first command of docs/fleet.md's "What the access log tells" that starts with
/// `start` and contains `holding`, as documented.
fn documented(start: &str, holding: &str) -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/fleet.md")).unwrap();
    let section = doc
        .split("## What the access log tells")
        .nth(1)
        .expect("docs/fleet.md has the section \"What the access log tells\"");
    section
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(start) && l.contains(holding))
        .unwrap_or_else(|| panic!("the section has a command {start}… with {holding}"))
        .to_string()
}

/// The adoption one-liner of docs/fleet.md.
fn documented_one_liner() -> String {
    documented("awk ", "channels")
}

/// Runs `line` (a shell command reading `access.log`) in the directory holding `log`.
fn run_in_log_dir(line: &str, log: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(log.parent().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{line}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Four devices take 1.0.0; then 1.1.0 is published: two take and confirm it, one takes it
/// and rolls back, one has not taken it. Over the log of the poll round after that, the
/// documented one-liner counts two devices on 1.1.0 and two on 1.0.0, and the polls are
/// still `304`s to the same URL (a CDN keyed on the URL is unaffected).
///
/// Before each request named the device's running version (the `User-Agent` was
/// `evergreen/<crate version>` alone), the one-liner found no version: it printed
/// ` 4 100.0%`, and the log could not tell adoption or rollbacks at all.
#[test]
fn the_documented_one_liner_counts_adoption_from_the_access_log() {
    let repo = Repo::new("com.acme.logs");
    publish(&repo, "1.0.0");
    make_public(repo.dir.path());
    let Some(nginx) = Nginx::serve(&repo.root) else {
        return;
    };
    let devices: Vec<Device> = ["a", "b", "c", "d"]
        .iter()
        .map(|name| repo.device(name, &nginx.url(), serde_json::json!({})))
        .collect();
    for dev in &devices {
        dev.expect("update", &["--yes"], 0);
        dev.expect("boot", &[], 0);
        dev.expect("confirm", &[], 0);
    }
    publish(&repo, "1.1.0");
    make_public(repo.dir.path());
    let [a, b, c, d] = &devices[..] else {
        unreachable!()
    };
    for dev in [a, b, c] {
        dev.expect("update", &["--yes"], 0);
        dev.expect("boot", &[], 0);
    }
    a.expect("confirm", &[], 0);
    b.expect("confirm", &[], 0);
    c.expect("rollback", &[], 0);
    d.expect("check", &[], 10);

    // One round of polls, as in one polling interval.
    let before = log_lines(&nginx, 0).len();
    for (dev, code) in [(a, 0), (b, 0), (c, 0), (d, 10)] {
        dev.expect("check", &[], code);
    }
    let lines = log_lines(&nginx, before + 4);
    let round = &lines[before..];
    assert_eq!(round.len(), 4, "{round:#?}");
    for line in round {
        let request = line.split('"').nth(1).unwrap();
        let status = line.split('"').nth(2).unwrap().split_whitespace().next();
        assert_eq!(request, "GET /channels/stable.json HTTP/1.1", "{line}");
        assert_eq!(status, Some("304"), "{line}");
    }
    let round_log = repo.scratch("round").join("access.log");
    std::fs::write(&round_log, round.join("\n") + "\n").unwrap();

    let counts = run_in_log_dir(&documented_one_liner(), &round_log);
    assert_eq!(counts, "1.0.0 2 50.0%\n1.1.0 2 50.0%\n", "{round:#?}");

    // The User-Agent is the documented one: product, running version, target.
    let ua = |line: &String| line.split('"').nth(5).unwrap().to_string();
    let agent = format!("evergreen/{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        ua(&round[0]),
        format!("{agent} (com.acme.logs 1.1.0; x86_64-linux)")
    );
    assert_eq!(
        ua(&round[2]),
        format!("{agent} (com.acme.logs 1.0.0; x86_64-linux)")
    );
    // A device with nothing installed yet names no version.
    let all = log_lines(&nginx, before + 4);
    assert_eq!(
        ua(&all[0]),
        format!("{agent} (com.acme.logs -; x86_64-linux)"),
        "{all:#?}"
    );
    // Each blob download names the version it updates from: 1.1.0's blob was fetched by
    // the three devices running 1.0.0, and never again by the one that rolled back.
    let blob_requests: Vec<&String> = all[..before]
        .iter()
        .filter(|l| l.contains("/blobs/sha256/"))
        .collect();
    let from_1_0_0 = blob_requests
        .iter()
        .filter(|l| ua(l).contains("com.acme.logs 1.0.0;"))
        .count();
    assert_eq!(from_1_0_0, 3, "{blob_requests:#?}");
    assert_eq!(blob_requests.len(), 7, "{blob_requests:#?}");

    // Downloads per release, with the documented commands: the blobs the manifest lists,
    // then the log's 200s for them. The device that rolled back counts for 1.1.0 (it
    // took it), the one that did not take it does not.
    if !jq_installed() {
        return;
    }
    let dir = repo.scratch("downloads");
    std::fs::create_dir_all(dir.join("channels")).unwrap();
    let manifest = repo.root.join("channels/stable.json");
    std::fs::copy(manifest, dir.join("channels/stable.json")).unwrap();
    let log = dir.join("access.log");
    std::fs::write(&log, all[..before].join("\n") + "\n").unwrap();
    run_in_log_dir(&documented("jq ", "blobs.txt"), &log);
    let downloads = run_in_log_dir(&documented("awk ", "blobs.txt"), &log);
    assert_eq!(downloads, "1.0.0 4\n1.1.0 3\n", "{blob_requests:#?}");
}

/// Whether `jq` is installed (the documented mapping of blobs to releases uses it);
/// says so when it is not.
fn jq_installed() -> bool {
    nginxd::find_on_path("jq").is_some()
}
