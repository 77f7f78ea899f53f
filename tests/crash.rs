//! Crash safety (DESIGN §5.7): stop the process at every durable file-system step of
//! update → boot → confirm → rollback, as a power cut would, then restart and check the
//! invariant: the state parses, the primary slot is complete and bootable, the fallback is
//! intact until confirm, and no slot marked installed/trial/good is partial.
//!
//! The dir-slot sweep restarts with the startup step; the image-slot sweeps (GRUB, and a
//! redundant U-Boot environment) power the board on through the simulated bootloader
//! (`support/board.rs`), then carry on as its user would until the update is confirmed or
//! the rollback done.
//!
//! Needs the `fault-injection` feature (`cargo test --all-features`): the CLI then aborts
//! itself at the k-th crash point when `EVERGREEN_CRASH_AT=k` is set.

#[path = "support/board.rs"]
mod board;
#[path = "support/bootsim.rs"]
mod bootsim;
mod common;
mod mounts;
mod require;
mod support;

use board::{pattern, release_image, Board, Loader};
use common::{make_zip, run_env, tree_digest, Device, Repo};
use evergreen::slots::Slot;
use evergreen::state::{SlotStatus, State};
use mounts::Mounted;
use std::collections::BTreeMap;
use support::TestServer;

type Digest = BTreeMap<String, (u32, String)>;

const STEPS: [&[&str]; 4] = [&["update", "--yes"], &["boot"], &["confirm"], &["rollback"]];

fn publish(repo: &Repo) {
    let src = repo.scratch("src");
    for (v, body) in [("1.0.0", "one"), ("1.1.0", "two")] {
        let zip = src.join(format!("app-{v}.zip"));
        make_zip(
            &zip,
            &[
                ("bin/run.sh", format!("#!/bin/sh\necho {body}\n").as_bytes()),
                ("lib/data.txt", body.repeat(1000).as_bytes()),
                ("README", b"app"),
            ],
        );
        let cfg = src.join(format!("settings-{v}.json"));
        std::fs::write(&cfg, format!("{{\"v\": \"{v}\"}}")).unwrap();
        repo.release(
            "stable",
            v,
            "x86_64-linux",
            &[("app", &zip), ("config", &cfg)],
            &[],
        );
        if v == "1.0.0" {
            // The device starts on 1.0.0; 1.1.0 is published afterwards.
            continue;
        }
    }
}

fn cli(dev: &Device, step: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut args = vec![step[0], "--config", dev.config.to_str().unwrap()];
    args.extend_from_slice(&step[1..]);
    run_env(&args, env)
}

/// A device with 1.0.0 installed and confirmed, and 1.1.0 on the channel.
fn fresh_device(repo: &Repo, name: &str) -> Device {
    fresh_device_with(repo, name, serde_json::json!({}))
}

/// [`fresh_device`] with `extra` in its config.
fn fresh_device_with(repo: &Repo, name: &str, mut extra: serde_json::Value) -> Device {
    extra["pin_version"] = "1.0.0".into();
    let dev = repo.device(name, repo.root.to_str().unwrap(), extra);
    for step in [&["update", "--yes"][..], &["boot"], &["confirm"]] {
        let out = cli(&dev, step, &[]);
        assert!(out.status.success(), "{step:?}: {}", common::stderr(&out));
    }
    // From now on follow the channel (unpin).
    dev.edit_config(|cfg| {
        cfg.as_object_mut().unwrap().remove("pin_version");
    });
    dev
}

fn crash_points(dev: &Device, step: &[&str]) -> usize {
    let out = cli(dev, step, &[("EVERGREEN_CRASH_COUNT", "1")]);
    assert!(out.status.success(), "{step:?}: {}", common::stderr(&out));
    common::stderr(&out)
        .lines()
        .filter(|l| l.starts_with("crash-point "))
        .count()
}

/// The slots `st` marks installed, trial or good, which must hold exactly their version:
/// each with its status and version.
fn marked_slots(st: &State) -> Vec<(Slot, SlotStatus, String)> {
    [Slot::A, Slot::B]
        .into_iter()
        .filter_map(|slot| {
            let rec = st.slot(slot);
            let marked = matches!(
                rec.status,
                SlotStatus::Installed | SlotStatus::Trial | SlotStatus::Good
            );
            let version = rec.version.as_ref().map(|v| v.to_string());
            marked.then(|| (slot, rec.status, version.unwrap_or_default()))
        })
        .collect()
}

/// Checks the invariant of DESIGN §5.7 on `dev`; returns a description of each violation.
fn violations(dev: &Device, reference: &BTreeMap<String, Digest>, confirmed: bool) -> Vec<String> {
    let mut bad = Vec::new();
    let st = match State::load(&dev.state) {
        Ok(Some(s)) => s,
        Ok(None) => return vec!["state.json is missing".into()],
        Err(e) => return vec![format!("state does not load: {e}")],
    };
    if let Err(e) = st.check_invariants() {
        bad.push(e.to_string());
    }
    for (slot, status, version) in marked_slots(&st) {
        let mut found = tree_digest(&dev.root.join("slots").join(slot.as_str()));
        found.remove(".evergreen-slot.json");
        if Some(&found) != reference.get(&version) {
            bad.push(format!(
                "slot {slot} is {status:?} with {version} but its files differ"
            ));
        }
    }
    // Until 1.1.0 is confirmed, 1.0.0 must still be there, good, to fall back to.
    let holds_good_one = |r: &evergreen::state::SlotRecord| {
        r.status == SlotStatus::Good && r.version.as_ref().is_some_and(|v| v.to_string() == "1.0.0")
    };
    if !confirmed && !holds_good_one(&st.a) && !holds_good_one(&st.b) {
        bad.push("the 1.0.0 fallback is no longer good before confirm".into());
    }
    bad
}

/// The temporary links (`.current.new-<pid>`) of switches of `current` cut short in `root`.
fn cut_short_switches(root: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".current.new-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_crash_point_keeps_the_device_bootable() {
    let repo = Repo::new("com.acme.crash");
    publish(&repo);

    // Reference run without crashes: the files each version's slot must hold.
    let dev = fresh_device(&repo, "reference");
    let mut reference = BTreeMap::new();
    let st = State::load(&dev.state).unwrap().unwrap();
    let mut a = tree_digest(&dev.root.join("slots").join(st.primary.as_str()));
    a.remove(".evergreen-slot.json");
    reference.insert("1.0.0".to_string(), a);
    let counts: Vec<usize> = STEPS.iter().map(|s| crash_points(&dev, s)).collect();
    let st = State::load(&dev.state).unwrap().unwrap();
    let mut b = tree_digest(&dev.root.join("slots").join(st.fallback().as_str()));
    b.remove(".evergreen-slot.json");
    reference.insert("1.1.0".to_string(), b);
    assert!(
        counts.iter().all(|c| *c > 0),
        "crash points per step: {counts:?}"
    );

    let total: usize = counts.iter().sum();
    let mut failures = Vec::new();
    for (step_index, &n) in counts.iter().enumerate() {
        for k in 1..=n {
            let dev = fresh_device(&repo, &format!("crash-{step_index}-{k}"));
            for step in &STEPS[..step_index] {
                assert!(cli(&dev, step, &[]).status.success());
            }
            let out = cli(
                &dev,
                STEPS[step_index],
                &[("EVERGREEN_CRASH_AT", &k.to_string())],
            );
            common::assert_crashed_at(&out, k);
            let confirmed = step_index > 2;
            let mut v = violations(&dev, &reference, confirmed);
            // Restart: the startup step must find a bootable primary and repair the link.
            let boot = cli(&dev, &["boot"], &[]);
            if !boot.status.success() {
                v.push(format!(
                    "boot after the crash failed: {}",
                    common::stderr(&boot)
                ));
            }
            v.extend(violations(&dev, &reference, confirmed));
            let st = State::load(&dev.state).ok().flatten();
            if let Some(st) = st {
                let link = std::fs::read_link(dev.root.join("current")).ok();
                let want = std::path::Path::new("slots").join(st.primary.as_str());
                if link.as_deref() != Some(want.as_path()) {
                    v.push(format!("current -> {link:?}, expected {}", want.display()));
                }
            }
            // A switch cut short left its temporary link; the repair's switch removes it.
            v.extend(cut_short_switches(&dev.root).into_iter().map(|name| {
                format!("{name} is still there after the startup step switched `current`")
            }));
            if !v.is_empty() {
                failures.push(format!(
                    "step {:?} crash point {k}: {v:?}",
                    STEPS[step_index]
                ));
            }
        }
    }
    println!(
        "crash points tried: {total}; violations: {}",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The trial's start count of `dev`, from `status --json` (which must load the state).
fn tries_left(dev: &Device) -> u64 {
    let out = cli(dev, &["status", "--json"], &[]);
    assert!(out.status.success(), "status: {}", common::stderr(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    s["trial"]["tries_left"].as_u64().expect("a trial")
}

/// A save on a full file system goes through the state's spare (written in place, then
/// swapped in): cut off at any of its steps, the state still loads, with the start counted
/// or not, and the next start counts.
#[test]
fn a_save_on_a_full_disk_cut_off_anywhere_keeps_the_state() {
    let repo = Repo::new("com.acme.fullcrash");
    publish(&repo);
    let scratch = repo.scratch("full");
    // Room for the downloads and the 1 MiB every free-space check leaves free.
    let Some(_fs) = Mounted::tmpfs(&scratch, 2048) else {
        return;
    };
    let extra = serde_json::json!({"state_dir": scratch.join("state"), "trial": {"tries": 40}});
    let dev = fresh_device_with(&repo, "full", extra);
    let out = cli(&dev, &["update", "--yes"], &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    mounts::fill(&scratch);

    let counted = cli(&dev, &["boot"], &[("EVERGREEN_CRASH_COUNT", "1")]);
    let names = common::stderr(&counted);
    assert!(counted.status.success(), "{names}");
    assert!(
        names.contains(" exchange"),
        "the spare was not used: {names}"
    );
    let n = names
        .lines()
        .filter(|l| l.starts_with("crash-point "))
        .count();
    println!("crash points of a start on a full disk: {n}\n{names}");
    for k in 1..=n {
        let before = tries_left(&dev);
        let out = cli(&dev, &["boot"], &[("EVERGREEN_CRASH_AT", &k.to_string())]);
        common::assert_crashed_at(&out, k);
        let after = tries_left(&dev);
        assert!(
            after == before || after + 1 == before,
            "point {k}: {before} start(s) left before, {after} after"
        );
        let out = cli(&dev, &["boot"], &[]);
        assert!(out.status.success(), "point {k}: {}", common::stderr(&out));
        assert_eq!(
            tries_left(&dev),
            after - 1,
            "point {k}: the next start was not counted"
        );
    }
}

// Image slots: the same sweep with a bootloader in the loop.

/// The image slots' size: small, so that a run of every crash point stays quick.
const IMAGE_LEN: usize = 64 << 10;

const UPDATE: &[&str] = &["update", "--yes"];
/// On a board, a start: the power-on (the bootloader picks a slot), then the startup step.
const BOOT: &[&str] = &["boot"];
const CONFIRM: &[&str] = &["confirm"];
const ROLLBACK: &[&str] = &["rollback"];

/// What the board must end up running once its user carries on after the crash.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Goal {
    /// 2.0.0, confirmed.
    Update,
    /// 1.0.0, good, after a rollback.
    Rollback,
}

/// `crashed` is cut at each of its crash points on a board that `before` brought from
/// 1.0.0 in slot A, with 2.0.0 on the channel.
struct ImageCase {
    before: &'static [&'static [&'static str]],
    crashed: &'static [&'static str],
    goal: Goal,
}

const IMAGE_CASES: [ImageCase; 6] = [
    ImageCase {
        before: &[],
        crashed: UPDATE,
        goal: Goal::Update,
    },
    // The trial's first start writes no file of ours today (the bootloader counts it): no
    // crash point, but one run without a crash, and a sweep once it has some.
    ImageCase {
        before: &[UPDATE],
        crashed: BOOT,
        goal: Goal::Update,
    },
    ImageCase {
        before: &[UPDATE, BOOT],
        crashed: CONFIRM,
        goal: Goal::Update,
    },
    ImageCase {
        before: &[UPDATE, BOOT],
        crashed: ROLLBACK,
        goal: Goal::Rollback,
    },
    // Back to the release the update left in the other slot.
    ImageCase {
        before: &[UPDATE, BOOT, CONFIRM],
        crashed: ROLLBACK,
        goal: Goal::Rollback,
    },
    // A trial never confirmed: with U-Boot's three tries spent, this start is of slot A
    // and its startup step rolls the release back (state, fall back, the failed slot out
    // of the boot order). GRUB gives one try, so it rolled back two starts before, and
    // this is a plain start of A.
    ImageCase {
        before: &[UPDATE, BOOT, BOOT, BOOT],
        crashed: BOOT,
        goal: Goal::Rollback,
    },
];

/// The versions a slot may hold, byte for byte.
struct Images {
    old: Vec<u8>,
    new: Vec<u8>,
}

impl Images {
    fn of(&self, version: &str) -> Option<&[u8]> {
        match version {
            "1.0.0" => Some(&self.old),
            "2.0.0" => Some(&self.new),
            _ => None,
        }
    }

    /// The version whose bytes `bytes` are exactly.
    fn version(&self, bytes: &[u8]) -> Option<&'static str> {
        ["1.0.0", "2.0.0"]
            .into_iter()
            .find(|v| self.of(v) == Some(bytes))
    }
}

/// Runs `step` on `board` (a power-on first when it is `boot`).
fn on_board(board: &Board, step: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    if step == BOOT {
        board.power_on();
    }
    cli(&board.dev, step, env)
}

/// A board running 1.0.0 from slot A, brought through `before`.
fn prepared_board(
    repo: &Repo,
    server: &TestServer,
    name: &str,
    loader: Loader,
    before: &[&[&str]],
) -> Board {
    let board = Board::with_slots_of(repo, server, name, loader, IMAGE_LEN);
    for step in [BOOT].iter().chain(before) {
        let out = on_board(&board, step, &[]);
        assert!(
            out.status.success(),
            "{name}: {step:?}: {}",
            common::stderr(&out)
        );
    }
    board
}

/// What is wrong with `board` now (`started`: the slot the bootloader just started, when
/// it just powered on): the state must load and hold its invariants, a slot marked
/// installed/trial/good holds its version, and a slot the bootloader may start holds a
/// verified release and is not half-written. A board that never updated has no state.
fn image_violations(board: &Board, images: &Images, started: Option<Option<Slot>>) -> Vec<String> {
    let st = match State::load(&board.dev.state) {
        Ok(st) => st,
        Err(e) => return vec![format!("state does not load: {e}")],
    };
    let mut bad = Vec::new();
    if let Some(st) = &st {
        bad.extend(st.check_invariants().err().map(|e| e.to_string()));
        for (slot, status, version) in marked_slots(st) {
            if images.of(&version) != Some(&board.slot_bytes(slot)) {
                bad.push(format!(
                    "slot {slot} is {status:?} with {version} but holds other bytes"
                ));
            }
        }
    }
    if let Some(None) = started {
        bad.push("the bootloader found no slot to start (rescue)".into());
    }
    let mut may_start = board.startable();
    may_start.extend(started.flatten());
    for slot in may_start {
        let status = st.as_ref().map(|st| st.slot(slot).status);
        match images.version(&board.slot_bytes(slot)) {
            None => bad.push(format!(
                "the bootloader may start slot {slot} ({status:?}), which holds no release"
            )),
            Some(_) if status == Some(SlotStatus::Installing) => bad.push(format!(
                "the bootloader may start slot {slot}, half-written"
            )),
            Some(_) => {}
        }
    }
    bad
}

/// What a crash loop from here (starts that never reach the startup step, through
/// U-Boot's counter resets) would start that holds nothing to boot: a slot being written,
/// a release never activated, or one rolled back. Checked once a step has finished, not
/// right after a crash: a rollback cut between its state and the bootloader's
/// environment leaves the slot bootable until the next start finishes it.
fn crash_loop_violations(board: &Board) -> Vec<String> {
    let Ok(Some(st)) = State::load(&board.dev.state) else {
        return Vec::new();
    };
    board
        .started_by_a_crash_loop()
        .into_iter()
        .map(|slot| (slot, st.slot(slot).status))
        .filter(|(_, status)| {
            matches!(
                status,
                SlotStatus::Installing | SlotStatus::Installed | SlotStatus::Bad
            )
        })
        .map(|(slot, status)| format!("a crash loop would start slot {slot} ({status:?})"))
        .collect()
}

/// The blobs downloaded whole: into `dev`'s downloads directory, or (an image) into a slot,
/// as the progress record of the download that streamed it says.
fn finished_downloads(dev: &Device) -> Vec<String> {
    let whole = |n: &String| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit());
    let mut done: Vec<String> = dev.downloads().into_iter().filter(whole).collect();
    done.extend(
        streamed(dev)
            .filter(|(_, bytes)| *bytes == IMAGE_LEN as u64)
            .map(|(sha, _)| sha),
    );
    done
}

/// The image and the bytes of it the progress record of `dev` says are in a slot.
fn streamed(dev: &Device) -> Option<(String, u64)> {
    let record = std::fs::read_to_string(dev.state.join("image-stream")).ok()?;
    let fields: Vec<&str> = record.split_whitespace().collect();
    Some((fields[0].to_string(), fields.get(2)?.parse().ok()?))
}

/// What the user runs next on `board` to reach `goal`, `None` once it is reached.
fn next_step(board: &Board, goal: Goal) -> Option<&'static [&'static str]> {
    let booted = board.booted();
    // A board that never updated has no state: it runs its factory 1.0.0 from slot A.
    let (primary, version, status, trial) = match State::load(&board.dev.state).ok().flatten() {
        Some(st) => {
            let rec = st.slot(st.primary);
            let version = rec.version.as_ref().map(|v| v.to_string());
            (st.primary, version, rec.status, st.trial.map(|t| t.slot))
        }
        None => (Slot::A, Some("1.0.0".into()), SlotStatus::Good, None),
    };
    let goal_version = match goal {
        Goal::Update => "2.0.0",
        Goal::Rollback => "1.0.0",
    };
    let on_goal = version.as_deref() == Some(goal_version) && status == SlotStatus::Good;
    match goal {
        _ if on_goal && booted == Some(primary) => None,
        _ if on_goal => Some(BOOT),
        Goal::Update if trial.is_some() && trial == booted => Some(CONFIRM),
        Goal::Update if trial.is_some() => Some(BOOT),
        Goal::Update => Some(UPDATE),
        Goal::Rollback => Some(ROLLBACK),
    }
}

/// The most steps a user takes after a crash: the longest way is start, update, start,
/// confirm; two more for a start that finishes what the crash cut short.
const MOST_STEPS: usize = 6;

/// After a crash of `board`, powers it on (`power_cut`) and carries on as its user would
/// (the startup step at each start, `update --yes`, `confirm` on the trial, `rollback`),
/// checking it after every step; returns what went wrong, and that it did not reach
/// `goal` if it did not.
fn carry_on(
    board: &Board,
    server: &TestServer,
    images: &Images,
    goal: Goal,
    power_cut: bool,
) -> Vec<String> {
    let downloaded = finished_downloads(&board.dev);
    let fetches = || -> usize {
        downloaded
            .iter()
            .map(|sha| server.requests(&format!("blobs/sha256/{sha}")).len())
            .sum()
    };
    let fetched_before = fetches();
    let mut bad: Vec<String> = image_violations(board, images, None)
        .into_iter()
        .map(|v| format!("after the crash: {v}"))
        .collect();
    let mut step = power_cut.then_some(BOOT).or_else(|| next_step(board, goal));
    for _ in 0..MOST_STEPS {
        let Some(now) = step else {
            break;
        };
        let started = (now == BOOT).then(|| board.power_on());
        let out = cli(&board.dev, now, &[]);
        if !out.status.success() {
            bad.push(format!("{now:?} failed: {}", common::stderr(&out)));
        }
        bad.extend(
            image_violations(board, images, started)
                .into_iter()
                .chain(crash_loop_violations(board))
                .map(|v| format!("after {now:?}: {v}")),
        );
        step = next_step(board, goal);
    }
    if let Some(next) = step {
        bad.push(format!("{goal:?} not reached: {next:?} still to run"));
    }
    if fetches() != fetched_before {
        bad.push(format!("downloaded again: {downloaded:?}"));
    }
    bad
}

/// Cuts every step of [`IMAGE_CASES`] at each of its crash points on a fresh board with
/// `loader`, then carries on after a power cut and without one.
fn image_sweep(loader: Loader) {
    let repo = Repo::new(board::PRODUCT);
    let server = TestServer::serve(&repo.root);
    release_image(&repo, "2.0.0", IMAGE_LEN, 2);
    let images = Images {
        old: pattern(IMAGE_LEN, 1),
        new: pattern(IMAGE_LEN, 2),
    };
    let mut failures = Vec::new();
    let mut tried = 0;
    for (c, case) in IMAGE_CASES.iter().enumerate() {
        let name = |what: &str| format!("{loader:?}-{c}-{what}");
        // Without a crash: the count, and the same checks on the path every crash leaves.
        let board = prepared_board(&repo, &server, &name("count"), loader, case.before);
        if case.crashed == BOOT {
            board.power_on();
        }
        let n = crash_points(&board.dev, case.crashed);
        println!("{loader:?} {:?}: {n} crash points", case.crashed);
        let v = carry_on(&board, &server, &images, case.goal, false);
        assert!(
            v.is_empty(),
            "{loader:?} {:?} without a crash: {v:?}",
            case.crashed
        );
        for k in 1..=n {
            for power_cut in [true, false] {
                let board = prepared_board(
                    &repo,
                    &server,
                    &name(&format!("{k}-{power_cut}")),
                    loader,
                    case.before,
                );
                let out = on_board(
                    &board,
                    case.crashed,
                    &[("EVERGREEN_CRASH_AT", &k.to_string())],
                );
                common::assert_crashed_at(&out, k);
                tried += 1;
                let v = carry_on(&board, &server, &images, case.goal, power_cut);
                if !v.is_empty() {
                    let point = common::stderr(&out)
                        .lines()
                        .find(|l| l.starts_with("crash point"))
                        .unwrap_or_default()
                        .to_string();
                    failures.push(format!(
                        "{loader:?} {:?} at {point}, power cut {power_cut}: {v:?}",
                        case.crashed
                    ));
                }
            }
        }
    }
    println!(
        "{loader:?}: {tried} crashes tried; violations: {}",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_crash_point_of_grub_image_slots_keeps_the_board_booting_a_release() {
    image_sweep(Loader::Grub);
}

#[test]
fn every_crash_point_of_uboot_image_slots_keeps_the_board_booting_a_release() {
    image_sweep(Loader::UBoot);
}

/// An update killed while the image streams into the slot (after some of it was recorded
/// durable) leaves the board booting the running slot; the next update asks for the rest
/// with `Range`, from exactly where the record says, and completes the image.
#[test]
fn an_update_killed_mid_image_resumes_after_the_bytes_recorded_in_the_slot() {
    const LEN: usize = 1 << 20;
    let repo = Repo::new(board::PRODUCT);
    let server = TestServer::serve(&repo.root);
    let image = std::fs::read(release_image(&repo, "2.0.0", LEN, 2)).unwrap();
    let blob = format!("blobs/sha256/{}", evergreen::trust::sha256_hex(&image));
    let board = prepared_board(&repo, &server, "killed", Loader::Grub, &[]);
    let running = board.slot_bytes(Slot::A);
    server.set_fault(
        "blobs/",
        support::Fault::Trickle {
            bytes: 32 << 10,
            every: std::time::Duration::from_millis(20),
        },
    );
    let mut child = std::process::Command::new(common::bin())
        .args([
            "update",
            "--config",
            board.dev.config.to_str().unwrap(),
            "--yes",
        ])
        .env("EVERGREEN_STREAM_CHECKPOINT", "65536")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while streamed(&board.dev).is_none_or(|(_, bytes)| bytes < 256 << 10) {
        assert!(std::time::Instant::now() < deadline, "no progress recorded");
        assert!(child.try_wait().unwrap().is_none(), "the update ended");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (_, recorded) = streamed(&board.dev).unwrap();
    assert!(
        recorded < LEN as u64,
        "killed after the whole image: {recorded}"
    );
    assert!(board.slot_bytes(Slot::B)[..recorded as usize] == image[..recorded as usize]);
    assert_eq!(board.power_on(), Some(Slot::A), "the board boots A");
    let out = cli(&board.dev, BOOT, &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));

    server.clear_faults();
    let before = server.requests(&blob).len();
    let out = cli(&board.dev, UPDATE, &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let requests = server.requests(&blob);
    assert_eq!(requests.len(), before + 1, "{requests:?}");
    assert_eq!(requests[before].range, Some(format!("bytes={recorded}-")));
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
    assert!(board.slot_bytes(Slot::A) == running, "slot A was changed");
    assert_eq!(board.power_on(), Some(Slot::B));
}

/// An update killed while a gzip image inflates into the slot leaves no record of part
/// of it (the inflater is kept in memory only, so a gzip image never resumes after the
/// process is gone), even with
/// checkpoints every 64 KiB, and the board boots the running slot; the next update
/// fetches the image from its first byte, without `Range`, and completes it.
#[test]
fn an_update_killed_mid_gzip_image_starts_it_over_from_its_first_byte() {
    const LEN: usize = 4 << 20;
    let repo = Repo::new(board::PRODUCT);
    let server = TestServer::serve(&repo.root);
    let (image, gz) = board::release_gzip_image(&repo, "2.0.0", LEN, 2);
    let sha = evergreen::trust::sha256_hex(&gz);
    let blob = format!("blobs/sha256/{sha}");
    let board = prepared_board(&repo, &server, "killedgz", Loader::Grub, &[]);
    server.set_fault(
        "blobs/",
        support::Fault::Trickle {
            bytes: 16 << 10,
            every: std::time::Duration::from_millis(20),
        },
    );
    let mut child = std::process::Command::new(common::bin())
        .args([
            "update",
            "--config",
            board.dev.config.to_str().unwrap(),
            "--yes",
        ])
        .env("EVERGREEN_STREAM_CHECKPOINT", "65536")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once a quarter of the image is in the slot.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while board.slot_bytes(Slot::B).get(..LEN / 4) != Some(&image[..LEN / 4]) {
        assert!(std::time::Instant::now() < deadline, "no progress");
        assert!(child.try_wait().unwrap().is_none(), "the update ended");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(streamed(&board.dev), Some((format!("gzip:{sha}"), 0)));
    assert_eq!(board.power_on(), Some(Slot::A), "the board boots A");
    let out = cli(&board.dev, BOOT, &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));

    server.clear_faults();
    let before = server.requests(&blob).len();
    let out = cli(&board.dev, UPDATE, &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let requests = server.requests(&blob);
    assert_eq!(requests.len(), before + 1, "{requests:?}");
    assert_eq!(requests[before].range, None);
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
    assert_eq!(board.power_on(), Some(Slot::B));
}

/// The very first update of a device with nothing installed, stopped at every crash
/// point: the start that follows (`evergreen boot`, as a launcher runs it) must name the
/// slot to start whenever the state has a release on trial there, and `current` must point
/// at it. A crash between committing the activation and creating the first `current`
/// link left no link, which the startup step never made: every start counted a trial
/// start of a release nothing could start, until the trial ran out with no fallback.
#[test]
fn a_first_activation_cut_short_before_current_exists_still_starts_the_release() {
    let repo = Repo::new("com.acme.firstcut");
    publish(&repo);
    let probe = repo.device(
        "probe",
        repo.root.to_str().unwrap(),
        serde_json::json!({"pin_version": "1.0.0"}),
    );
    let n = crash_points(&probe, &["update", "--yes"]);
    let mut failures = Vec::new();
    for k in 1..=n {
        let dev = repo.device(
            &format!("first-{k}"),
            repo.root.to_str().unwrap(),
            serde_json::json!({"pin_version": "1.0.0"}),
        );
        let out = cli(
            &dev,
            &["update", "--yes"],
            &[("EVERGREEN_CRASH_AT", &k.to_string())],
        );
        common::assert_crashed_at(&out, k);
        let Some(st) = State::load(&dev.state).unwrap() else {
            continue;
        };
        if st.trial.is_none() {
            continue;
        }
        let boot = cli(&dev, &["boot", "--json"], &[]);
        assert!(boot.status.success(), "{}", common::stderr(&boot));
        let v: serde_json::Value = serde_json::from_slice(&boot.stdout).unwrap();
        let link = std::fs::read_link(dev.root.join("current")).ok();
        let want = std::path::Path::new("slots").join(st.primary.as_str());
        // This start counted once, whether or not the step had to make the link first.
        let counted_once = v["tries_left"] == st.trial.unwrap().tries - 1;
        if v["start"] != st.primary.as_str()
            || link.as_deref() != Some(want.as_path())
            || !counted_once
        {
            failures.push(format!(
                "crash point {k}: boot printed {v}, current -> {link:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A `state.json` edited by hand (or damaged into other valid JSON) so that its trial
/// record no longer matches the primary slot is refused, as a corrupt one is, with an
/// `invalid_state` error naming what was expected and what was found: never acted upon.
/// Acted upon, a trial moved onto the fallback made the startup step mark the running,
/// healthy primary `bad` and roll back to the fallback, in the name of the fallback's
/// "failed" trial; a trial record removed left a slot `trial` that `confirm` refused with
/// "slot a is trial, expected a slot on trial".
#[test]
fn a_state_whose_trial_does_not_match_its_primary_is_refused_not_acted_on() {
    let repo = Repo::new("com.acme.handedit");
    publish(&repo);
    let dev = fresh_device(&repo, "handedit");
    // 1.1.0 activated: on trial in the primary, 1.0.0 good in the fallback.
    let out = cli(&dev, &["update", "--yes"], &[]);
    assert!(out.status.success(), "update: {}", common::stderr(&out));
    let path = dev.state.join("state.json");
    let good: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let primary = good["primary"].as_str().unwrap().to_string();
    let fallback = if primary == "a" { "b" } else { "a" };
    assert_eq!(good["trial"]["slot"], primary.as_str());
    let current = || std::fs::read_link(dev.root.join("current")).unwrap();
    let link = current();

    type Edit = fn(&mut serde_json::Value, &str, &str);
    let edits: [(&str, Edit, &[&str]); 2] = [
        (
            "trial moved onto the fallback, its starts used up",
            |s, _, fallback| {
                s["trial"]["slot"] = fallback.into();
                s["trial"]["tries_left"] = 0.into();
            },
            &["boot"],
        ),
        (
            "trial record removed",
            |s, _, _| s["trial"] = serde_json::Value::Null,
            &["confirm"],
        ),
    ];
    for (what, edit, step) in edits {
        let mut edited = good.clone();
        edit(&mut edited, &primary, fallback);
        let text = serde_json::to_vec_pretty(&edited).unwrap();
        std::fs::write(&path, &text).unwrap();
        let out = cli(&dev, step, &[]);
        let err = common::stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: {step:?} went ahead: {err}"
        );
        assert!(err.contains("error[invalid_state]"), "{what}: {err}");
        assert!(
            err.contains(&path.display().to_string()) && err.contains("expected"),
            "{what}: the error names neither the file nor what was expected: {err}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            text,
            "{what}: state rewritten"
        );
        assert_eq!(current(), link, "{what}: `current` moved");
    }
}

/// A trial edited by hand to more starts left than it began with (`tries_left` 10 of
/// `tries` 3, to give a release more starts) is refused as `invalid_state`, naming both
/// numbers. Acted upon, the start counted next was taken for none: `confirm` refused the
/// running release ("found no start counted"), and `rollback` took the trial for one that
/// never ran, so it did not keep its slot from installs while the app still ran from it.
#[test]
fn a_trial_with_more_starts_left_than_it_began_with_is_refused() {
    let repo = Repo::new("com.acme.handtries");
    publish(&repo);
    let dev = fresh_device(&repo, "handtries");
    let out = cli(&dev, &["update", "--yes"], &[]);
    assert!(out.status.success(), "update: {}", common::stderr(&out));
    let path = dev.state.join("state.json");
    let mut st: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(st["trial"]["tries"], 3);
    st["trial"]["tries_left"] = 10.into();
    let text = serde_json::to_vec_pretty(&st).unwrap();
    std::fs::write(&path, &text).unwrap();
    let out = cli(&dev, &["boot"], &[]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "boot went ahead: {err}");
    assert!(err.contains("error[invalid_state]"), "{err}");
    assert!(
        err.contains(&path.display().to_string()) && err.contains("found 10"),
        "the error names neither the file nor what it found: {err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), text, "state rewritten");
}

/// The temp files (`<name>.tmp-<pid>`) under `dir`, by their path from it.
fn temps_under(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            let inner = temps_under(&e.path());
            found.extend(inner.into_iter().map(|t| format!("{name}/{t}")));
        } else if name.contains(".tmp-") {
            found.push(name);
        }
    }
    found
}

/// A device lives through many power cuts. A check cut off while it writes its copy of a
/// channel's manifest, or of a new root, leaves that copy's temp file, named by the
/// process's id; every such cut left one more, as large as the manifest, since no later
/// check removed them.
#[test]
fn temp_files_of_checks_cut_off_do_not_pile_up_in_the_state_directory() {
    let repo = Repo::new("com.acme.cuts");
    publish(&repo);
    let server = TestServer::serve(&repo.root);
    let dev = fresh_device(&repo, "cuts");
    dev.edit_config(|cfg| cfg["server"] = server.url().into());
    let repo_dir = repo.root.to_str().unwrap();
    // A new manifest, and with `rotate` a new root, so that the next check writes its
    // copies again.
    let change = |rotate: bool| {
        if rotate {
            let key = repo.root_key.to_str().unwrap();
            common::ok(&["rotate", repo_dir, "--expires-in", "365", "--sign", key]);
        }
        let key = repo.manifest_key.to_str().unwrap();
        common::ok(&["resign", repo_dir, "--channel", "stable", "--sign", key]);
    };
    let check = ["check"];
    let (mut cuts, mut left) = (0, Vec::new());
    for rotate in [false, true] {
        change(rotate);
        let out = cli(&dev, &check, &[("EVERGREEN_CRASH_COUNT", "1")]);
        assert_eq!(out.status.code(), Some(10), "{}", common::stderr(&out));
        let points = common::stderr(&out)
            .lines()
            .filter(|l| l.starts_with("crash-point "))
            .count();
        for k in 1..=points {
            change(rotate);
            let out = cli(&dev, &check, &[("EVERGREEN_CRASH_AT", &k.to_string())]);
            common::assert_crashed_at(&out, k);
            cuts += 1;
            left.extend(temps_under(&dev.state));
        }
    }
    for copy in ["cache/stable.json.tmp-", "root.json.tmp-"] {
        assert!(
            left.iter().any(|t| t.starts_with(copy)),
            "expected a cut to leave a {copy}<pid>, found {left:?}"
        );
    }
    let out = cli(&dev, &check, &[]);
    assert_eq!(out.status.code(), Some(10), "{}", common::stderr(&out));
    assert_eq!(
        temps_under(&dev.state),
        Vec::<String>::new(),
        "temp files left in the state directory after {cuts} checks cut off and one that ran"
    );
}
