//! Crash safety (DESIGN §5.7): stop the process at every durable file-system step of
//! update → boot → confirm → rollback, as a power cut would, then restart and check the
//! invariant: the state parses, the primary slot is complete and bootable, the fallback is
//! intact until confirm, and no slot marked installed/trial/good is partial.
//!
//! Needs the `fault-injection` feature (`cargo test --all-features`): the CLI then aborts
//! itself at the k-th crash point when `EVERGREEN_CRASH_AT=k` is set.

mod common;
mod mounts;
mod require;

use common::{make_zip, run_env, tree_digest, Device, Repo};
use evergreen::state::{SlotStatus, State};
use mounts::Mounted;
use std::collections::BTreeMap;

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
    for slot in [evergreen::slots::Slot::A, evergreen::slots::Slot::B] {
        let rec = st.slot(slot);
        if !matches!(
            rec.status,
            SlotStatus::Installed | SlotStatus::Trial | SlotStatus::Good
        ) {
            continue;
        }
        let version = rec
            .version
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_default();
        let mut found = tree_digest(&dev.root.join("slots").join(slot.as_str()));
        found.remove(".evergreen-slot.json");
        if Some(&found) != reference.get(&version) {
            bad.push(format!(
                "slot {slot} is {:?} with {version} but its files differ",
                rec.status
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
