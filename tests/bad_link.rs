//! A device on a bad link (a cellular modem, a congested Wi-Fi): the real `evergreen` CLI
//! updating over a loopback relay ([`support::link::Link`]) that limits the bandwidth,
//! cuts connections, stalls them with the socket open and answers slowly.

#[path = "support/board.rs"]
mod board;
#[path = "support/bootsim.rs"]
mod bootsim;
mod common;
mod require;
mod support;

use common::{Device, Repo};
use std::time::{Duration, Instant};
use support::link::{Link, Shape};
use support::TestServer;

/// A device running 1.0.0 (installed over a good link, booted and confirmed), with 1.1.0
/// published: one `file` component of `size` bytes of noise. The device's server is the
/// link, which starts as a good one.
struct Bad {
    repo: Repo,
    server: TestServer,
    link: Link,
    dev: Device,
    /// The new component's bytes.
    data: Vec<u8>,
}

fn on_a_bad_link(product: &str, size: usize, limits: serde_json::Value) -> Bad {
    let repo = Repo::new(product);
    let src = repo.scratch("src");
    let old = src.join("v1");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("data.bin"), b"1.0.0").unwrap();
    repo.release(
        "stable",
        "1.0.0",
        "x86_64-linux",
        &[("data", &old.join("data.bin"))],
        &[],
    );
    let server = TestServer::serve(&repo.root);
    let link = Link::start(&server.url(), Shape::default());
    let dev = repo.device("dev", &link.url(), serde_json::json!({ "limits": limits }));
    for step in [&["update", "--yes"][..], &["boot"], &["confirm"]] {
        dev.expect(step[0], &step[1..], 0);
    }
    let new = src.join("v2");
    std::fs::create_dir_all(&new).unwrap();
    let data = support::noise(size, 11);
    std::fs::write(new.join("data.bin"), &data).unwrap();
    repo.release(
        "stable",
        "1.1.0",
        "x86_64-linux",
        &[("data", &new.join("data.bin"))],
        &[],
    );
    link.clear_log();
    Bad {
        repo,
        server,
        link,
        dev,
        data,
    }
}

fn run_timed(dev: &Device, cmd: &str, args: &[&str]) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let out = dev.run(cmd, args);
    (out, started.elapsed())
}

/// What a failed update must leave as it was: the slots, which one runs and the trial
/// (`status --json` without the schedule), and the files of the running slot.
fn running(
    bad: &Bad,
) -> (
    serde_json::Value,
    std::collections::BTreeMap<String, (u32, String)>,
) {
    let mut status = bad.dev.status();
    let primary = status["primary"].as_str().unwrap().to_owned();
    common::without_check_schedule(&mut status);
    common::without_failures(&mut status);
    status.as_object_mut().unwrap().remove("last_check");
    let files = common::tree_digest(&bad.dev.root.join("slots").join(primary));
    assert!(!files.is_empty(), "the running slot is empty");
    (status, files)
}

/// The percentages of `evergreen: downloading V: P% (…)` lines.
fn percents(stderr: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter_map(|l| l.split_once("% (")?.0.rsplit_once(": ")?.1.parse().ok())
        .collect()
}

/// Every connection cut after 300 KiB: each `update` fails with `network`, leaving the
/// device as it was, and takes up where the last one stopped, until the 4 MiB update is
/// in. No byte of the blob is fetched twice, the progress lines go up within a run and
/// never past 100 %, and what is installed is the release.
#[test]
fn an_update_cut_every_300_kib_finishes_over_runs_without_fetching_a_byte_twice() {
    let size = 4 << 20;
    let bad = on_a_bad_link(
        "com.acme.badlink.cut",
        size,
        serde_json::json!({"retries": 3, "retry_backoff_ms": 50}),
    );
    let before = running(&bad);
    bad.link.set(|s| s.cut_after = Some(300 << 10));
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(runs <= 8, "expected the update in at most 8 runs");
        let out = bad.dev.run("update", &["--yes"]);
        let stderr = common::stderr(&out);
        let seen = percents(&stderr);
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]) && seen.iter().all(|p| *p <= 100),
            "expected rising percentages up to 100, found {seen:?}: {stderr}"
        );
        if out.status.success() {
            break;
        }
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("error[network]: GET "), "{stderr}");
        assert_eq!(running(&bad), before, "after run {runs}: {stderr}");
    }
    assert!(
        runs >= 3,
        "expected the cuts to take several runs, took {runs}"
    );
    let carried = bad.link.bytes();
    let overhead = 64 << 10;
    assert!(
        carried <= size as u64 + overhead,
        "expected at most the blob and {overhead} bytes of requests, headers and metadata over the link, found {carried}"
    );
    let status = bad.dev.status();
    let slot = status["primary"].as_str().unwrap();
    assert_eq!(status["slots"][slot]["version"], "1.1.0");
    let installed = bad.dev.root.join("slots").join(slot).join("data/data.bin");
    assert!(
        std::fs::read(&installed).unwrap() == bad.data,
        "installed bytes differ"
    );
}

/// A link that goes quiet with its socket open, for longer than the read timeout: each
/// attempt ends at the timeout, `timeout` names it, the retries are bounded, and nothing
/// changes on the device.
#[test]
fn a_stall_with_the_socket_open_ends_at_the_read_timeout_which_the_error_names() {
    let bad = on_a_bad_link(
        "com.acme.badlink.stall",
        2 << 20,
        serde_json::json!({"retries": 1, "retry_backoff_ms": 100, "read_timeout_s": 2}),
    );
    let before = running(&bad);
    bad.link
        .set(|s| s.stall_after = Some((300 << 10, Duration::from_secs(30))));
    let (out, took) = run_timed(&bad.dev, "update", &["--yes"]);
    let stderr = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error[timeout]: GET ")
            && last.ends_with("found no data for 2 s (read timeout)"),
        "{stderr}"
    );
    // Two attempts of 2 s each and a backoff of 0.1 s, with room for a loaded machine:
    // what it rules out is a wait for the stall's 30 s.
    assert!(took < Duration::from_secs(20), "took {took:?}: {stderr}");
    // The check (the manifest, and the next root, which is not there), then one attempt
    // and one retry of the blob.
    assert_eq!(bad.link.connections().len(), 4, "{stderr}");
    assert_eq!(running(&bad), before);
}

/// A server that answers every request slowly at the first byte, past the read
/// timeout: the check fails with `timeout` naming it, after `retries` + 1 attempts
/// spaced by the documented backoff (`retry_backoff_ms` × 2^round).
#[test]
fn a_slow_first_byte_is_a_timeout_after_the_retries_and_their_backoff() {
    let bad = on_a_bad_link(
        "com.acme.badlink.ttfb",
        1 << 20,
        serde_json::json!({"retries": 2, "retry_backoff_ms": 400, "read_timeout_s": 1}),
    );
    let before = running(&bad);
    bad.link
        .set(|s| s.first_byte_delay = Duration::from_secs(3));
    let (out, took) = run_timed(&bad.dev, "check", &[]);
    let stderr = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error[timeout]: GET ")
            && stderr.contains("channels/stable.json: expected an HTTP response, found no response within 1 s (read timeout)"),
        "{stderr}"
    );
    let opened: Vec<Duration> = (bad.link.connections().iter())
        .map(|c| c.opened.elapsed())
        .collect();
    assert_eq!(opened.len(), 3, "{stderr}");
    // Between two attempts: the 1 s timeout and the round's backoff (0.4 s, then 0.8 s).
    // At least that, less 0.1 s: the link stamps each connection when its accept returns,
    // which a loaded machine may make later for one than for the other (a run measured
    // 1.3994 s); no backoff at all would be 0.4 s short. The bound above only rules out a
    // wait for the 3 s answer (a loaded machine may be late by a second or two).
    for (gap, backoff) in [(opened[0] - opened[1], 400), (opened[1] - opened[2], 800)] {
        let least = Duration::from_millis(1000 + backoff);
        assert!(
            gap >= least - Duration::from_millis(100) && gap < least + Duration::from_secs(2),
            "expected {least:?} between attempts, found {gap:?}"
        );
    }
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(running(&bad), before);
}

/// A download slower than a fast link but above the minimum speed, much longer than the
/// read timeout and the speed window: it goes on to its end.
#[test]
fn a_slow_but_moving_download_goes_on_to_its_end() {
    let bad = on_a_bad_link(
        "com.acme.badlink.slow",
        512 << 10,
        serde_json::json!({"retries": 0, "read_timeout_s": 1, "speed_window_s": 1,
                           "min_speed_bytes_per_s": 16384}),
    );
    bad.link.set(|s| s.rate = Some(48 << 10));
    let (out, took) = run_timed(&bad.dev, "update", &["--yes"]);
    let stderr = common::stderr(&out);
    assert_eq!(out.status.code(), Some(0), "after {took:?}: {stderr}");
    assert!(
        took > Duration::from_secs(8),
        "the link was not slow: {took:?}"
    );
    // The manifest, the next root (not there), the blob in one go.
    assert_eq!(bad.link.connections().len(), 3, "{stderr}");
}

/// Once the update is in, a check over the same lossy link is one request of a few
/// hundred bytes (a 304).
#[test]
fn an_unchanged_check_over_a_lossy_link_is_one_small_request() {
    let bad = on_a_bad_link(
        "com.acme.badlink.unchanged",
        1 << 20,
        serde_json::json!({"retries": 3, "retry_backoff_ms": 50}),
    );
    bad.link.set(|s| s.cut_after = Some(300 << 10));
    for _ in 0..6 {
        if bad.dev.run("update", &["--yes"]).status.success() {
            break;
        }
    }
    bad.dev.expect("status", &[], 0);
    bad.link.clear_log();
    bad.dev.expect("check", &[], 0);
    let carried = bad.link.connections();
    assert_eq!(carried.len(), 1, "{carried:?}");
    assert!(carried[0].bytes < 1024, "{carried:?}");
}

/// The bytes the process read with read(2) and its kin (`rchar` of /proc/PID/io: from
/// files, not the sockets it receives from), sampled until it ends, with its output.
fn bytes_read_by(dev: &Device, cmd: &str, args: &[&str]) -> (std::process::Output, u64) {
    let mut child = std::process::Command::new(common::bin())
        .arg(cmd)
        .args(["--config", dev.config.to_str().unwrap()])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let io = format!("/proc/{}/io", child.id());
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        let text = std::fs::read_to_string(&io).unwrap_or_default();
        let rchar = text.lines().find_map(|l| l.strip_prefix("rchar:"));
        if let Some(n) = rchar.and_then(|v| v.trim().parse().ok()) {
            read = n;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (child.wait_with_output().unwrap(), read)
}

/// A download whose connections are all cut after 512 KiB resumes 15 times within one
/// run. Each retry used to read and hash the whole partial download again before its
/// request (the hash of the bytes kept was dropped with the attempt), so the run read
/// 68 MiB of files for an 8 MiB blob, its reading growing with the square of the blob's
/// size: on a device with a slow card and no SHA instructions, minutes of each retry on
/// a large image. The hash of what was received is kept for the next attempt.
#[test]
fn retries_within_a_run_do_not_read_the_partial_download_again() {
    let size = 8 << 20;
    let bad = on_a_bad_link(
        "com.acme.badlink.rehash",
        size,
        serde_json::json!({"retries": 30, "retry_backoff_ms": 0}),
    );
    bad.link.set(|s| s.cut_after = Some(512 << 10));
    let (out, read) = bytes_read_by(&bad.dev, "update", &["--yes", "--download-only"]);
    let stderr = common::stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        bad.link.connections().len() > 16,
        "expected a connection per 512 KiB, found {:?}",
        bad.link.connections()
    );
    // The state, the config, the root and the manifest: a few KiB. None of the blob's
    // bytes is read back from the disk.
    let most = 1 << 20;
    assert!(
        read < most,
        "expected the update to read less than {most} bytes of files (the state, the config and the metadata; the {size}-byte blob is received, never read back), found {read}"
    );
}

/// The speeds a progress bar drawn on a terminal showed (`… 1.20 MiB/4.00 MiB 250.00
/// KiB/s eta 4s`), in bytes per second.
fn bar_speeds(terminal: &str) -> Vec<f64> {
    let mut speeds = Vec::new();
    for draw in terminal.split(['\r', '\n']) {
        let words: Vec<&str> = draw.split_whitespace().collect();
        for pair in words.windows(2) {
            let unit = match pair[1].strip_suffix("/s") {
                Some("B") => 1.0,
                Some("KiB") => 1024.0,
                Some("MiB") => 1024.0 * 1024.0,
                Some("GiB") => 1024.0 * 1024.0 * 1024.0,
                _ => continue,
            };
            if let Ok(n) = pair[0].parse::<f64>() {
                speeds.push(n * unit);
            }
        }
    }
    speeds
}

/// An update that resumes a download 3 MiB into 4 MiB, over a link of 256 KiB/s, on a
/// terminal: the bar's speed is the link's. It counted the 3 MiB kept from the last run
/// as received in the first instant of this one, and showed 2-3 MiB/s and "eta 0s" for
/// the whole 4 s the last MiB took (a resume at 30 MiB of a large image over a slow link
/// showed 30 MiB/s for minutes).
#[test]
fn the_progress_bar_of_a_resumed_download_shows_the_speed_of_the_link() {
    let rate = 256 << 10;
    let bad = on_a_bad_link(
        "com.acme.badlink.bar",
        4 << 20,
        serde_json::json!({"retries": 0}),
    );
    bad.link.set(|s| s.cut_after = Some(3 << 20));
    let first = bad.dev.run("update", &["--yes"]);
    assert_eq!(first.status.code(), Some(1), "{}", common::stderr(&first));
    bad.link.set(|s| {
        s.cut_after = None;
        s.rate = Some(rate);
    });
    let command = format!(
        "{} update --config {} --yes",
        common::bin().display(),
        bad.dev.config.display()
    );
    // A terminal for stderr: `script` runs the command on a pseudo-terminal.
    let out = std::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .output()
        .expect("script (util-linux) runs");
    let terminal = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{terminal}");
    let speeds = bar_speeds(&terminal);
    assert!(!speeds.is_empty(), "no speed drawn: {terminal}");
    let most = 2.0 * rate as f64;
    let fastest = speeds.iter().cloned().fold(0.0, f64::max);
    assert!(
        fastest <= most,
        "expected the bar's speed at most {most} bytes/s over a link of {rate}, found {fastest} bytes/s"
    );
}

/// The same over image slots: a raw image streamed into the idle slot over a link that
/// cuts every connection after 512 KiB resumes 16 times in one run without reading the
/// slot back at each retry (it read the bytes its record vouched for, 68 MiB of them for
/// an 8 MiB image), and the image the install reads back is the release.
#[test]
fn retries_within_a_run_do_not_read_a_streamed_image_back_from_its_slot() {
    use board::{release_image, Board, Loader, MIB};
    let repo = Repo::new(board::PRODUCT);
    let server = TestServer::serve(&repo.root);
    let board = Board::with_slots_of(&repo, &server, "image", Loader::Grub, 8 * MIB);
    assert_eq!(board.power_on(), Some(evergreen::slots::Slot::A));
    let image = release_image(&repo, "2.0.0", 8 * MIB, 2);
    let link = Link::start(&server.url(), Shape::default());
    board.dev.edit_config(|cfg| {
        cfg["server"] = link.url().into();
        cfg["limits"] = serde_json::json!({"retries": 30, "retry_backoff_ms": 0});
    });
    link.set(|s| s.cut_after = Some(512 << 10));
    let (out, read) = bytes_read_by(&board.dev, "update", &["--yes", "--download-only"]);
    let stderr = common::stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(link.connections().len() > 16, "{:?}", link.connections());
    let most = 1 << 20;
    assert!(
        read < most,
        "expected the download to read less than {most} bytes of files (the state, the config and the metadata; the image is received into its slot, never read back), found {read}"
    );
    link.set(|s| s.cut_after = None);
    board.dev.expect("update", &["--yes"], 0);
    assert_eq!(
        board.slot_bytes(evergreen::slots::Slot::B),
        std::fs::read(image).unwrap()
    );
}

/// The link goes away for 2 s in the middle of a download (the socket open, nothing
/// coming, new connections going nowhere) and comes back: the attempts that meet it end
/// at the read timeout, and one within the retries resumes the download where it
/// stopped (`Range`), in the same run.
#[test]
fn a_link_that_goes_away_and_comes_back_within_the_retries_resumes_in_the_same_run() {
    let size = 2 << 20;
    let bad = on_a_bad_link(
        "com.acme.badlink.away",
        size,
        serde_json::json!({"retries": 5, "retry_backoff_ms": 200, "read_timeout_s": 1}),
    );
    bad.link.set(|s| s.rate = Some(512 << 10));
    let (out, took) = std::thread::scope(|scope| {
        scope.spawn(|| {
            let carried = || bad.link.bytes();
            let deadline = Instant::now() + Duration::from_secs(20);
            while carried() < 512 << 10 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            bad.link.set(|s| s.down = true);
            std::thread::sleep(Duration::from_secs(2));
            bad.link.set(|s| s.down = false);
        });
        run_timed(&bad.dev, "update", &["--yes"])
    });
    let stderr = common::stderr(&out);
    assert_eq!(out.status.code(), Some(0), "after {took:?}: {stderr}");
    let blob = std::fs::read_dir(bad.repo.root.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|name| {
            std::fs::metadata(bad.repo.root.join("blobs/sha256").join(name))
                .unwrap()
                .len()
                == size as u64
        })
        .unwrap();
    let asked = bad.server.requests(&format!("blobs/sha256/{blob}"));
    let resumed = asked.last().and_then(|r| r.range.clone());
    assert!(
        resumed.as_deref().is_some_and(|r| r != "bytes=0-"),
        "expected the last request to resume with Range, found {asked:?}"
    );
    assert!(
        bad.link.bytes() < size as u64 + (64 << 10),
        "expected no byte fetched twice, found {} over the link",
        bad.link.bytes()
    );
}
