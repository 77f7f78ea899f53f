//! State files written by older builds of Evergreen, read by this one (docs/design.md §5.7,
//! "Across versions of Evergreen"). The updater ships inside what it updates, so a
//! device's `state.json` is written by one build and read by another: a newer one after an
//! update, an older one after a firmware rollback.
//!
//! The fixtures under `tests/data/state-compat/` were saved by the `evergreen` CLI of the
//! commit each is named after (a device with dir slots, trial of 3 starts): `-rest` after
//! 1.0.0 was installed and confirmed, `-trial` with 2.0.0 on trial after one start, and
//! `-download` with a download of 2.0.0 cut off half way (its `.part` left). Only the
//! padding to whole blocks was trimmed. This build must read each as it was meant, and
//! write back every field the older build wrote, with the same value: the older build
//! requires some of them, and reads the rest as absent.

mod common;
mod require;

use evergreen::slots::Slot;
use evergreen::state::{SlotStatus, State};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What a fixture means.
struct Meant {
    file: &'static str,
    primary: Slot,
    a: (SlotStatus, Option<&'static str>),
    b: (SlotStatus, Option<&'static str>),
    /// The trial's slot and starts left.
    trial: Option<(Slot, u32)>,
    /// The starts the trial began with, as this build reads them (0: not recorded).
    tries: u32,
    pending_downloads: usize,
    pending_for: Option<&'static str>,
}

const PENDING_SHA: &str = "81278d8b294becfe4e490dc535210c3ce0e19e16b7a507369a272c786dcea02e";

fn fixtures() -> Vec<Meant> {
    use SlotStatus::{Empty, Good, Trial};
    let rest = |file, pending_for| Meant {
        file,
        primary: Slot::B,
        a: (Empty, None),
        b: (Good, Some("1.0.0")),
        trial: None,
        tries: 0,
        pending_downloads: 0,
        pending_for,
    };
    let trial = |file, tries, pending_for| Meant {
        file,
        primary: Slot::A,
        a: (Trial, Some("2.0.0")),
        b: (Good, Some("1.0.0")),
        trial: Some((Slot::A, 2)),
        tries,
        pending_downloads: 0,
        pending_for,
    };
    let download = |file| Meant {
        pending_downloads: 1,
        pending_for: Some("2.0.0"),
        ..rest(file, None)
    };
    vec![
        // 2026-11-24: no trial.tries, no pending downloads.
        rest("642a65f-rest.json", None),
        trial("642a65f-trial.json", 0, None),
        // 2026-12-03: trial.tries, pending_downloads/pending_for, left_running.
        rest("180f500-rest.json", None),
        trial("180f500-trial.json", 3, Some("2.0.0")),
        download("180f500-download.json"),
        // 2026-12-05: manifests' issued and checked, last_check_clock.
        rest("579dc18-rest.json", None),
        trial("579dc18-trial.json", 3, Some("2.0.0")),
        download("579dc18-download.json"),
    ]
}

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/state-compat")
        .join(file)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A state directory holding `file` as its `state.json`.
fn state_dir_with(file: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture(file), State::path(dir.path())).unwrap();
    dir
}

fn version(record: &evergreen::state::SlotRecord) -> Option<String> {
    record.version.as_ref().map(ToString::to_string)
}

#[test]
fn states_of_older_builds_are_read_as_they_were_meant() {
    for m in fixtures() {
        let dir = state_dir_with(m.file);
        let st = State::load(dir.path())
            .unwrap_or_else(|e| panic!("{}: {e}", m.file))
            .unwrap();
        let f = m.file;
        assert_eq!(st.primary, m.primary, "{f}: primary");
        for (slot, (status, v)) in [(Slot::A, m.a), (Slot::B, m.b)] {
            assert_eq!(st.slot(slot).status, status, "{f}: slot {slot} status");
            assert_eq!(
                version(st.slot(slot)).as_deref(),
                v,
                "{f}: slot {slot} version"
            );
        }
        let trial = st.trial.map(|t| (t.slot, t.tries_left));
        assert_eq!(trial, m.trial, "{f}: trial");
        assert_eq!(st.trial.map_or(0, |t| t.tries), m.tries, "{f}: trial.tries");
        assert_eq!(st.channel, "stable", "{f}: channel");
        assert_eq!(st.root_version, Some(1), "{f}: root_version");
        let seen = st.manifests.get("stable").map(|s| s.sequence);
        assert!(seen.is_some_and(|s| s >= 1), "{f}: manifests.stable");
        assert_eq!(
            st.pending_downloads.len(),
            m.pending_downloads,
            "{f}: pending"
        );
        if m.pending_downloads > 0 {
            assert_eq!(st.pending_downloads, [PENDING_SHA], "{f}: pending");
        }
        let pending_for = st.pending_for.as_ref().map(ToString::to_string);
        assert_eq!(pending_for.as_deref(), m.pending_for, "{f}: pending_for");
        assert!(st.left_running.is_none(), "{f}: left_running");
        let installed = st.slot(Slot::B).components.get("app");
        assert!(
            installed.is_some_and(|c| c.sha256.len() == 64),
            "{f}: slot b's component app"
        );
    }
}

/// Every field of `old` is in `new` with the same value (objects compared field by field,
/// arrays element by element); `new` may have more fields.
fn keeps_all_of(old: &Value, new: &Value, at: &str, missing: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            for (k, v) in o {
                let here = format!("{at}.{k}");
                match n.get(k) {
                    Some(w) => keeps_all_of(v, w, &here, missing),
                    None => missing.push(format!("{here} (was {v})")),
                }
            }
        }
        (Value::Array(o), Value::Array(n)) if o.len() == n.len() => {
            for (i, (v, w)) in o.iter().zip(n).enumerate() {
                keeps_all_of(v, w, &format!("{at}[{i}]"), missing);
            }
        }
        _ if old == new => {}
        _ => missing.push(format!("{at}: was {old}, now {new}")),
    }
}

#[test]
fn this_build_writes_back_every_field_an_older_build_wrote() {
    for m in fixtures() {
        let dir = state_dir_with(m.file);
        let st = State::load(dir.path()).unwrap().unwrap();
        let out = tempfile::tempdir().unwrap();
        st.save(out.path()).unwrap();
        let old = read_json(&fixture(m.file));
        let new = read_json(&State::path(out.path()));
        let mut missing = Vec::new();
        keeps_all_of(&old, &new, "", &mut missing);
        assert!(
            missing.is_empty(),
            "{}: this build's save lost or changed what the build that wrote it reads: {missing:#?}",
            m.file
        );
        assert_eq!(new["schema"], old["schema"], "{}: schema raised", m.file);
    }
}

/// A device with dir slots a and b, `current` naming a, and the state `file` an older
/// build wrote (a trial of 2.0.0 in slot a, 1.0.0 good in slot b).
fn device_on_trial_from(file: &str) -> (common::Repo, common::Device) {
    let repo = common::Repo::new("com.acme.compat");
    let dev = repo.device(
        "dev",
        "http://127.0.0.1:9/",
        serde_json::json!({"trial": {"tries": 3}}),
    );
    for slot in ["a", "b"] {
        let d = dev.root.join("slots").join(slot);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("app.txt"), slot).unwrap();
    }
    std::os::unix::fs::symlink("slots/a", dev.root.join("current")).unwrap();
    std::fs::create_dir_all(&dev.state).unwrap();
    std::fs::copy(fixture(file), State::path(&dev.state)).unwrap();
    (repo, dev)
}

/// A rollback by hand of a trial the oldest build began, which did not record the starts
/// a trial began with: whether the release ever ran cannot be told from its count, so it
/// is taken to run. `status` names its slot as the one running, and installs keep out of
/// it, until the restart into the primary. Taken for a release that never ran, the slot
/// the app may still run from would be handed to the next install.
#[test]
fn a_rollback_of_a_trial_an_older_build_began_keeps_its_slot_until_the_restart() {
    let (_repo, dev) = device_on_trial_from("642a65f-trial.json");
    dev.expect("rollback", &[], 0);
    let running = |booted: &str| {
        let s = dev.status();
        assert_eq!(
            (&s["primary"], &s["booted"]),
            (&Value::from("b"), &Value::from(booted)),
            "{s}"
        );
    };
    running("a");
    assert_eq!(dev.state_file()["left_running"], "a");
    dev.expect("boot", &[], 0);
    running("b");
    assert_eq!(dev.state_file()["left_running"], Value::Null);
}

/// The startup step of this build counts the starts of a trial an older build began, and
/// rolls it back when they are used up (the trial's own count of starts not recorded by
/// the oldest build: the config's is used).
#[test]
fn this_build_counts_and_rolls_back_a_trial_an_older_build_began() {
    for file in [
        "642a65f-trial.json",
        "180f500-trial.json",
        "579dc18-trial.json",
    ] {
        let (_repo, dev) = device_on_trial_from(file);
        for left in [1, 0] {
            let out: Value = serde_json::from_str(&dev.expect("boot", &["--json"], 0)).unwrap();
            assert_eq!(out["status"], "trial", "{file}: {out}");
            assert_eq!(out["start"], "a", "{file}: {out}");
            assert_eq!(out["tries_left"], left, "{file}: {out}");
        }
        let out: Value = serde_json::from_str(&dev.expect("boot", &["--json"], 0)).unwrap();
        assert_eq!(out["status"], "rolled_back", "{file}: {out}");
        assert_eq!(out["start"], "b", "{file}: {out}");
        let st = dev.state_file();
        assert_eq!(st["primary"], "b", "{file}");
        assert_eq!(st["a"]["status"], "bad", "{file}");
        assert_eq!(st["failed"], serde_json::json!(["2.0.0"]), "{file}");
    }
}
