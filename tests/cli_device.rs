//! The device half of the CLI against a repository published with the operator half and
//! served on loopback: exit codes, `--json` shapes (DESIGN §7.2) and `error[<kind>]` lines.

mod common;
mod mounts;
mod require;
mod support;

use common::Repo;
use mounts::Mounted;
use std::path::Path;
use support::{Fault, TestServer};

fn publish(repo: &Repo, version: &str, channel: &str) {
    repo.release_settings(channel, version, &["--notes", "Fixes things."]);
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A repository with 1.0.0 on stable, served, and a device at 0.9.0, to which it is offered.
fn offered_1_0_0() -> (Repo, TestServer, common::Device) {
    let repo = Repo::new("com.acme.cli");
    publish(&repo, "1.0.0", "stable");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device(
        "dev",
        &server.url(),
        serde_json::json!({"current_version": "0.9.0"}),
    );
    (repo, server, dev)
}

#[test]
fn check_prints_the_offer_and_exits_10() {
    let (_repo, _server, dev) = offered_1_0_0();

    let text = dev.expect("check", &[], 10);
    assert!(text.contains("0.9.0 -> 1.0.0"), "{text}");
    let offer = json(&dev.expect("check", &["--json"], 10));
    assert_eq!(offer["status"], "available");
    assert_eq!(offer["current"], "0.9.0");
    assert_eq!(offer["version"], "1.0.0");
    assert_eq!(offer["channel"], "stable");
    assert_eq!(offer["critical"], false);
    assert_eq!(offer["downgrade"], false);
    assert_eq!(
        offer["components"],
        serde_json::json!([{"name": "config", "op": "added", "from": null, "to": "1.0.0"}])
    );
}

#[test]
fn a_replayed_older_manifest_is_metadata_rollback() {
    let repo = Repo::new("com.acme.cli");
    publish(&repo, "1.0.0", "stable");
    let old = std::fs::read(repo.root.join("channels/stable.json")).unwrap();
    publish(&repo, "1.1.0", "stable");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    dev.expect("check", &[], 10);
    let before = std::fs::read(dev.state.join("state.json")).unwrap();

    server.set_fault("channels/stable.json", Fault::Replace(old));
    let out = dev.run("check", &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(err.starts_with("error[metadata_rollback]: "), "{err}");
    assert_eq!(err.lines().count(), 1, "one error line: {err}");
    // The failed check only counts the failure; nothing it learnt is kept.
    let after: serde_json::Value = json(&String::from_utf8_lossy(
        &std::fs::read(dev.state.join("state.json")).unwrap(),
    ));
    let before: serde_json::Value = json(&String::from_utf8_lossy(&before));
    assert_eq!(after["manifests"], before["manifests"]);
    assert_eq!(after["check_failures"], 1);
}

#[test]
fn status_json_has_the_documented_shape() {
    let repo = Repo::new("com.acme.cli");
    publish(&repo, "1.0.0", "stable");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    let s = dev.status();
    assert_eq!(s["primary"], "a");
    assert_eq!(s["fallback"], "b");
    assert_eq!(s["channel"], "stable");
    assert_eq!(s["security_floor"], 0);
    assert_eq!(s["trial"], serde_json::Value::Null);
    assert_eq!(s["last_check"], serde_json::Value::Null);
    assert_eq!(s["slots"]["a"]["status"], "empty");

    let done = json(&dev.expect("update", &["--yes", "--json"], 0));
    assert_eq!(done["status"], "activated");
    assert_eq!(done["slot"], "b");
    let s = dev.status();
    assert_eq!(s["primary"], "b");
    assert_eq!(
        s["trial"],
        serde_json::json!({"slot": "b", "tries_left": 3})
    );
    assert_eq!(
        s["slots"]["b"],
        serde_json::json!({"status": "trial", "version": "1.0.0"})
    );
    let last: evergreen::Timestamp = s["last_check"].as_str().unwrap().parse().unwrap();
    let next: evergreen::Timestamp = s["next_check"].as_str().unwrap().parse().unwrap();
    // Six hours ± 25 %.
    let gap = next.unix() - last.unix();
    assert!(
        (16_200..=27_000).contains(&gap),
        "next check {gap} s after the last"
    );
    assert_eq!(json(&dev.expect("boot", &["--json"], 0))["tries_left"], 2);
    assert_eq!(dev.downloads().len(), 1);
    dev.expect("confirm", &[], 0);
    assert_eq!(dev.status()["slots"]["b"]["status"], "good");
    // Once confirmed, its download is kept: the next release installs the component from
    // it when it is unchanged.
    assert_eq!(dev.downloads(), [dev.installed_sha256("b", "config")]);
    let up = json(&dev.expect("check", &["--json"], 0));
    assert_eq!(up["status"], "up_to_date");
    assert_eq!(up["current"], "1.0.0");
}

#[test]
fn switching_channel_offers_what_the_riskier_channel_has() {
    let repo = Repo::new("com.acme.cli");
    publish(&repo, "1.0.0", "stable");
    publish(&repo, "1.1.0-beta.1", "nightly");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device(
        "dev",
        &server.url(),
        serde_json::json!({"current_version": "1.0.0"}),
    );
    dev.expect("check", &[], 0);
    dev.expect("channel", &["nightly"], 0);
    assert_eq!(dev.status()["channel"], "nightly");
    let offer = json(&dev.expect("check", &["--json"], 10));
    assert_eq!(offer["version"], "1.1.0-beta.1");
    assert_eq!(offer["channel"], "nightly");
    // Back to stable: nightly's beta is newer than anything there, so the device stays.
    dev.expect("channel", &["stable"], 0);
    dev.expect("check", &[], 0);
}

#[test]
fn bad_config_and_usage_errors_have_their_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, r#"{"product": "x", "server": "/srv", "target": "t", "trust": {"keys": ["AAAA"], "threshold": 1}, "state_dir": "/tmp/x", "slots": {"kind": "dir", "root": "/tmp/y"}, "critcal": true}"#).unwrap();
    let out = common::run(&["status", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.starts_with("error[config]: ") && err.contains("critcal"),
        "{err}"
    );
    assert_eq!(
        common::run(&["check", "--no-such-flag"]).status.code(),
        Some(2)
    );
    let missing = common::run(&[
        "status",
        "--config",
        dir.path().join("nope.json").to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(common::stderr(&missing).starts_with("error[io]: "));
}

/// A directory given as the config (`--config /etc/evergreen`, the file name left off) is
/// the config's fault, as a file of the wrong shape is: `error[config]` naming what was
/// expected and what was found, not the file system's "Is a directory".
#[test]
fn a_directory_as_the_config_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let out = common::run(&["status", "--json", "--config", path]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty(), "{err}");
    assert!(
        err.starts_with("error[config]: ")
            && err.contains(path)
            && err.contains("expected")
            && err.contains("found a directory"),
        "{err}"
    );
}

/// A `state_dir` that is a file (a path typed one level too deep, an image's leftover) is
/// named as the config's `state_dir` with what was found, for every command, and the file
/// is left as it is; the OS alone says "Not a directory" of a `state.json` inside it.
#[test]
fn a_file_as_the_state_dir_names_the_field() {
    let repo = Repo::new("com.acme.cli");
    let dev = repo.device("file-state", "http://127.0.0.1:9/", serde_json::json!({}));
    std::fs::create_dir_all(dev.state.parent().unwrap()).unwrap();
    std::fs::write(&dev.state, b"notes").unwrap();
    for cmd in ["status", "check", "boot", "confirm"] {
        let out = dev.run(cmd, &["--json"]);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert!(out.stdout.is_empty(), "{cmd}: {err}");
        assert_eq!(
            err.trim_end(),
            format!(
                "error[config]: the state directory {} (the config's `state_dir`): expected a directory, found a regular file",
                dev.state.display()
            ),
            "{cmd}"
        );
    }
    assert_eq!(std::fs::read(&dev.state).unwrap(), b"notes");
}

/// A bad version in the config names its field wherever the key is, the last one in the
/// file too (where a hand-edited config adds it): serde_json reports such an error past
/// the object's closing brace, which used to leave the field unnamed
/// (`config: expected a semver version like 1.2.3, found "1"`).
#[test]
fn a_bad_version_as_the_last_config_key_names_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    let base = r#""product": "com.acme.x", "server": "/srv/repo", "target": "x86_64-linux", "trust": {"root": "/etc/evergreen/root.json"}, "state_dir": "/var/lib/evergreen", "slots": {"kind": "dir", "root": "/opt/app""#;
    for field in ["current_version", "pin_version"] {
        std::fs::write(&cfg, format!("{{{base}}},\n  \"{field}\": \"1\"\n}}\n")).unwrap();
        let out = common::run(&["status", "--config", cfg.to_str().unwrap()]);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.starts_with("error[config]: ")
                && err.contains(&format!("`{field}`"))
                && err.contains("expected a semver version like 1.2.3, found \"1\""),
            "{field}: {err}"
        );
    }
}

/// `Environment=EVERGREEN_CONFIG=` in a unit, or `EVERGREEN_CONFIG=$UNSET`, is no config:
/// device commands read the system's file, operator commands never look, and neither is a
/// usage error about a `--config` nobody passed.
#[test]
fn an_empty_evergreen_config_counts_as_unset() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let empty = [("EVERGREEN_CONFIG", "")];
    let made = common::run_env(&["keygen", "--out", key.to_str().unwrap()], &empty);
    assert_eq!(made.status.code(), Some(0), "{}", common::stderr(&made));
    let status = common::run_env(&["status"], &empty);
    let err = common::stderr(&status);
    assert_eq!(status.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error[io]: ") && err.contains("/etc/evergreen/config.json"),
        "{err}"
    );
    // The variable, when set, is still the config.
    let named = common::run_env(
        &["status"],
        &[("EVERGREEN_CONFIG", "/no/such/evergreen.json")],
    );
    assert!(common::stderr(&named).contains("/no/such/evergreen.json"));
}

/// A device command's version is explained as the operator commands' are, not in semver's
/// own words ("unexpected end of input while parsing major version number" for `1`).
#[test]
fn a_malformed_version_names_what_a_version_looks_like() {
    for args in [
        &["skip", "1"][..],
        &["check", "--version", "1.x"],
        &["update", "--version", "v2"],
    ] {
        let out = common::run(args);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("expected a semver version like 1.2.3, found"),
            "{args:?}: {err}"
        );
    }
}

/// A repository of `product` with 1.0.0 and 1.1.0 on stable, each a small settings file.
fn settings_releases(product: &str) -> Repo {
    let repo = Repo::new(product);
    let src = repo.scratch("src");
    for v in ["1.0.0", "1.1.0"] {
        let cfg = src.join(format!("settings-{v}.json"));
        std::fs::write(&cfg, format!("{{\"v\": \"{v}\"}}")).unwrap();
        repo.release("stable", v, "x86_64-linux", &[("config", &cfg)], &[]);
    }
    repo
}

/// With dir slots, `current` names the slot that starts next; `status` says which one runs:
/// the old slot until the startup step counts the new one's start, and after a rollback the
/// slot left, until the restart. A script's "booted differs from primary: restart" works.
#[test]
fn status_names_the_slot_running_not_the_one_current_points_at() {
    let repo = settings_releases("com.acme.running");
    let dev = repo.device(
        "running",
        repo.root.to_str().unwrap(),
        serde_json::json!({}),
    );
    dev.expect("update", &["--yes", "--version", "1.0.0"], 0);
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
    let running = |primary: &str, booted: &str| {
        let s = dev.status();
        assert_eq!(
            (&s["primary"], &s["booted"]),
            (&serde_json::json!(primary), &serde_json::json!(booted)),
            "{s}"
        );
    };
    running("b", "b");

    dev.expect("update", &["--yes"], 0);
    running("a", "b");
    dev.expect("boot", &[], 0);
    running("a", "a");

    dev.expect("rollback", &[], 0);
    running("b", "a");
    dev.expect("boot", &[], 0);
    running("b", "b");
}

/// The state file is lost on a device whose `current` points at slot b (moved away, as
/// the error for a corrupt state suggests): `evergreen boot` starts a fresh state from
/// what runs, the release sealed in slot b, and never re-points `current` at the other
/// slot, which may hold anything. (The fresh state used to move `current_version`, the
/// first install's, to slot b.)
#[test]
fn boot_after_the_state_is_lost_keeps_running_the_current_slot() {
    let repo = settings_releases("com.acme.reset");
    let dev = repo.device(
        "reset",
        repo.root.to_str().unwrap(),
        serde_json::json!({"current_version": "1.0.0"}),
    );
    std::fs::create_dir_all(dev.root.join("slots/a")).unwrap();
    std::os::unix::fs::symlink("slots/a", dev.root.join("current")).unwrap();
    dev.expect("update", &["--yes"], 0);
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
    let current = || std::fs::read_link(dev.root.join("current")).unwrap();
    assert_eq!(current(), Path::new("slots/b"));
    let installed = dev.status()["slots"]["b"]["version"].clone();

    std::fs::write(dev.state.join("state.json"), b"{").unwrap();
    let out = dev.run("status", &[]);
    assert!(
        common::stderr(&out).starts_with("error[invalid_state]:"),
        "{}",
        common::stderr(&out)
    );
    std::fs::rename(
        dev.state.join("state.json"),
        dev.state.join("state.json.bad"),
    )
    .unwrap();
    dev.expect("boot", &[], 0);
    assert_eq!(current(), Path::new("slots/b"), "current was re-pointed");
    let s = dev.status();
    assert_eq!(s["primary"], "b");
    // What slot b runs is read from its seal; what slot a holds is not known.
    let b = serde_json::json!({"status": "good", "version": installed});
    assert_eq!(s["slots"]["b"], b, "{s}");
    assert_eq!(s["slots"]["a"]["status"], "empty");
}

/// `trust.keys` takes the manifest key's `.pub`; the root key's (the likelier slip, as
/// `keygen` makes both alike) fails every check with a signature error that says which
/// key belongs there. The right key checks.
#[test]
fn trust_keys_with_the_root_key_says_which_key_belongs_there() {
    let repo = Repo::new("com.acme.keys");
    publish(&repo, "1.0.0", "stable");
    let public = |secret: &Path| {
        let text = std::fs::read_to_string(format!("{}.pub", secret.display())).unwrap();
        serde_json::json!({"keys": [text.trim()], "threshold": 1})
    };
    let root_only = repo.device(
        "root-key",
        repo.root.to_str().unwrap(),
        serde_json::json!({"trust": public(&repo.root_key)}),
    );
    let out = root_only.run("check", &[]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error[signature]: ")
            && err.contains("found 0")
            && err.contains("the manifest key's `.pub`, not the root key's"),
        "{err}"
    );
    let manifest_key = repo.device(
        "manifest-key",
        repo.root.to_str().unwrap(),
        serde_json::json!({"trust": public(&repo.manifest_key)}),
    );
    let offer = json(&manifest_key.expect("check", &["--json"], 10));
    assert_eq!(offer["version"], "1.0.0");
}

/// `current_version` names an app installed outside the slots (there is no
/// `<root>/slots/a`): once the first update runs from slot b, neither a rollback asked for
/// nor a trial that used up its starts points `current` at slot a, which would leave the
/// launcher nothing to run.
#[test]
fn a_current_version_installed_outside_the_slots_is_no_fallback() {
    let repo = Repo::new("com.acme.outside");
    let cfg = repo.scratch("src").join("settings.json");
    std::fs::write(&cfg, "{}").unwrap();
    repo.release("stable", "1.3.0", "x86_64-linux", &[("config", &cfg)], &[]);
    let dev = repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({"current_version": "1.2.0"}),
    );
    dev.expect("update", &["--yes"], 0);
    let current = || std::fs::read_link(dev.root.join("current")).unwrap();
    assert_eq!(current(), Path::new("slots/b"));

    let out = dev.run("rollback", &[]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(
            "error[invalid_state]: nothing to roll back to: fallback slot a (1.2.0) holds no install: "
        ) && err.contains("slots/a does not exist"),
        "{err}"
    );
    assert_eq!(current(), Path::new("slots/b"), "current was re-pointed");
    assert_eq!(dev.status()["primary"], "b");

    for _ in 0..8 {
        dev.expect("boot", &[], 0);
    }
    assert_eq!(current(), Path::new("slots/b"), "current was re-pointed");
    let s = dev.status();
    assert_eq!(s["primary"], "b");
    assert_eq!(s["trial"]["tries_left"], 0);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.state.join("state.json")).unwrap()).unwrap();
    let exhausted: Vec<&str> = state["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["event"] == "trial_exhausted")
        .map(|h| h["detail"].as_str().unwrap_or_default())
        .collect();
    assert!(
        exhausted.len() == 1 && exhausted[0].contains("holds no install"),
        "{exhausted:?}"
    );
    // A fix goes in beside the stranded trial, into slot a, as beside a first install's:
    // else the only way out would be to confirm the broken release.
    publish(&repo, "1.3.1", "stable");
    let fixed = json(&dev.expect("update", &["--yes", "--json"], 0));
    assert_eq!(fixed["status"], "activated", "{fixed}");
    assert_eq!(fixed["slot"], "a", "{fixed}");
    assert_eq!(current(), Path::new("slots/a"));
}

/// A device whose app was installed before Evergreen in `<root>/current` itself, a
/// directory where Evergreen keeps its symlink to the primary slot: `status` and `update`
/// fail naming what `current` must be and what was found (they said only "Invalid
/// argument"), and the install there is left as it was.
#[test]
fn a_current_directory_from_before_evergreen_is_named_and_kept() {
    let repo = Repo::new("com.acme.adopt");
    publish(&repo, "1.3.0", "stable");
    let dev = repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({"current_version": "1.2.0"}),
    );
    let app = dev.root.join("current/bin/app");
    std::fs::create_dir_all(app.parent().unwrap()).unwrap();
    std::fs::write(&app, b"the app from before").unwrap();
    for (cmd, args) in [("status", &[][..]), ("update", &["--yes"][..])] {
        let out = dev.run(cmd, args);
        let err = common::stderr(&out);
        let line = err.lines().last().unwrap_or_default();
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert!(
            line.starts_with("error[io]: ")
                && line.contains(&format!(
                    "{}: expected a symlink to slots/a or slots/b, found a directory",
                    dev.root.join("current").display()
                )),
            "{cmd}: {err}"
        );
        assert_eq!(std::fs::read(&app).unwrap(), b"the app from before");
    }
}

/// A device with nothing installed that updated to 1.0.0 (one file component) from a
/// file repository: 1.0.0 is on trial in slot b, and slot a is empty.
fn first_install_on_trial(product: &str) -> (Repo, common::Device) {
    let repo = Repo::new(product);
    let cfg = repo.scratch("src").join("settings.json");
    std::fs::write(&cfg, "{}").unwrap();
    repo.release("stable", "1.0.0", "x86_64-linux", &[("config", &cfg)], &[]);
    let dev = repo.device("dev", repo.root.to_str().unwrap(), serde_json::json!({}));
    dev.expect("update", &["--yes"], 0);
    (repo, dev)
}

/// The very first install has no good slot to go back to: once its trial starts are used
/// up it keeps running, and says so once, not on every start (which would push the rest
/// of the history out of the state).
#[test]
fn an_exhausted_first_trial_is_recorded_once() {
    let (_repo, dev) = first_install_on_trial("com.acme.first");
    for _ in 0..8 {
        dev.expect("boot", &[], 0);
    }
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.state.join("state.json")).unwrap()).unwrap();
    let events: Vec<&str> = state["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events.iter().filter(|e| **e == "trial_exhausted").count(),
        1,
        "{events:?}"
    );
    let s = dev.status();
    assert_eq!(s["primary"], "b");
    assert_eq!(s["trial"]["tries_left"], 0);
}

/// A first release that used up its trial has no slot to roll back to and runs on; a fix
/// published then still installs, into the empty slot, and replaces it. Refused, the only
/// way out was to confirm the broken release (and raise the floor to it).
#[test]
fn a_fix_installs_beside_a_first_release_that_used_up_its_trial() {
    let (repo, dev) = first_install_on_trial("com.acme.stranded");
    for _ in 0..4 {
        dev.expect("boot", &[], 0);
    }
    assert_eq!(dev.status()["trial"]["tries_left"], 0);
    publish(&repo, "1.0.1", "stable");
    let out = json(&dev.expect("update", &["--yes", "--json"], 0));
    assert_eq!(
        (out["status"].as_str(), out["slot"].as_str()),
        (Some("activated"), Some("a"))
    );
    let boot = json(&dev.expect("boot", &["--json"], 0));
    assert_eq!(
        (boot["status"].as_str(), boot["slot"].as_str()),
        (Some("trial"), Some("a"))
    );
    dev.expect("confirm", &[], 0);
    let s = dev.status();
    assert_eq!(
        s["slots"]["a"],
        serde_json::json!({"status": "good", "version": "1.0.1"})
    );
    assert_eq!(s["slots"]["b"]["status"], "bad");
    assert_eq!(s["trial"], serde_json::Value::Null);
}

/// The same when the fix fails its trial too: no good slot is left, so a second fix
/// installs over the first; and the releases given up on are not offered again.
#[test]
fn a_second_fix_installs_when_the_first_fix_used_up_its_trial_too() {
    let (repo, dev) = first_install_on_trial("com.acme.stranded2");
    for _ in 0..4 {
        dev.expect("boot", &[], 0);
    }
    publish(&repo, "1.0.1", "stable");
    dev.expect("update", &["--yes"], 0);
    for _ in 0..4 {
        dev.expect("boot", &[], 0);
    }
    let s = dev.status();
    assert_eq!(
        (&s["primary"], &s["trial"]["tries_left"]),
        (&serde_json::json!("a"), &serde_json::json!(0)),
        "{s}"
    );
    assert_eq!(s["slots"]["b"]["status"], "bad", "{s}");
    publish(&repo, "1.0.2", "stable");
    let out = json(&dev.expect("update", &["--yes", "--json"], 0));
    assert_eq!(
        (out["status"].as_str(), out["slot"].as_str()),
        (Some("activated"), Some("b"))
    );
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
    let failed = &dev.state_file()["failed"];
    assert_eq!(failed, &serde_json::json!(["1.0.0", "1.0.1"]), "{failed}");
}

/// While a trial still has starts left, or has a slot to roll back to, installing another
/// release is refused: it would overwrite the way back. Refused before the download, which
/// would only be thrown at the refusal (a release of many MiB over a metered link); a
/// download alone (`--download-only`) still fetches it for after the confirm.
#[test]
fn installing_during_a_trial_with_starts_left_is_refused() {
    let (repo, dev) = first_install_on_trial("com.acme.notyet");
    dev.expect("boot", &[], 0);
    publish(&repo, "1.0.1", "stable");
    let before = dev.downloads();
    let out = dev.run("update", &["--yes"]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.contains("error[invalid_state]: slot b is on trial"),
        "{err}"
    );
    assert!(err.contains("nothing was downloaded"), "{err}");
    assert_eq!(dev.status()["slots"]["a"]["status"], "empty");
    assert_eq!(
        dev.downloads(),
        before,
        "expected no download for a refused install"
    );
    dev.expect("update", &["--download-only"], 0);
    assert_ne!(
        dev.downloads(),
        before,
        "expected --download-only to fetch 1.0.1"
    );
}

/// Whether a start of the trial was counted is judged against the starts the trial began
/// with, not the config's count now: a release may ship a config with fewer tries, and its
/// confirm after a real start must not read as "never started".
#[test]
fn a_trial_started_under_another_tries_setting_can_be_confirmed() {
    let (_repo, dev) = first_install_on_trial("com.acme.tries");
    dev.expect("boot", &[], 0);
    let mut config = json(&std::fs::read_to_string(&dev.config).unwrap());
    config["trial"] = serde_json::json!({"tries": 1});
    std::fs::write(&dev.config, config.to_string()).unwrap();
    dev.expect("confirm", &[], 0);
    assert_eq!(dev.status()["slots"]["b"]["status"], "good");
}

/// `update && confirm` in one script would vouch for a version that never ran: with
/// directory slots the startup step must have counted a start of the trial slot first.
#[test]
fn confirming_a_trial_slot_that_has_not_started_is_refused() {
    let (_repo, dev) = first_install_on_trial("com.acme.early");
    let out = dev.run("confirm", &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.starts_with("error[invalid_state]: expected slot b (on trial) to have started"),
        "{err}"
    );
    assert_eq!(dev.status()["slots"]["b"]["status"], "trial");
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
    assert_eq!(dev.status()["slots"]["b"]["status"], "good");
}

/// A file repository with 1.0.0 of one file component on `stable`, and a device that
/// updated to it, started it and confirmed it: 1.0.0 is good in slot b.
fn confirmed_1_0_0(product: &str) -> (Repo, common::Device) {
    let repo = Repo::new(product);
    publish(&repo, "1.0.0", "stable");
    let dev = repo.device("dev", repo.root.to_str().unwrap(), serde_json::json!({}));
    dev.expect("update", &["--yes"], 0);
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
    assert_eq!(dev.status()["slots"]["b"]["status"], "good");
    (repo, dev)
}

/// Sets `dev`'s deploy policy to `download_only`: updates are staged, not activated.
fn download_only(dev: &common::Device) {
    let mut config = json(&std::fs::read_to_string(&dev.config).unwrap());
    config["deploy"] = serde_json::json!({"policy": "download_only"});
    std::fs::write(&dev.config, config.to_string()).unwrap();
}

#[test]
fn a_channel_switched_after_staging_survives_the_activation() {
    let (repo, dev) = confirmed_1_0_0("com.acme.staged");
    download_only(&dev);
    publish(&repo, "1.0.1", "stable");
    dev.expect("update", &["--yes"], 0);
    assert_eq!(dev.status()["slots"]["a"]["status"], "installed");
    dev.expect("channel", &["preview"], 0);
    dev.expect("activate", &[], 0);
    let status = dev.status();
    assert_eq!(status["slots"]["a"]["status"], "trial");
    assert_eq!(status["channel"], "preview", "the user's switch was undone");
}

/// DESIGN §5.3 (docs/design.md): an update that passes over a critical release newer than
/// the installed one is forced as that release would be, so `download_only` does not hold
/// back the update that carries its fix.
#[test]
fn an_update_passing_over_a_critical_release_is_critical_and_activates() {
    let (repo, dev) = confirmed_1_0_0("com.acme.critical");
    download_only(&dev);
    let src = repo.scratch("src");
    for (version, extra) in [("1.1.0", &["--critical"][..]), ("1.2.0", &[])] {
        let file = src.join(format!("settings-{version}.json"));
        std::fs::write(&file, format!("{{\"version\": \"{version}\"}}")).unwrap();
        repo.release(
            "stable",
            version,
            "x86_64-linux",
            &[("config", &file)],
            extra,
        );
    }
    let offer = json(&dev.expect("check", &["--json"], 10));
    assert_eq!(offer["version"], "1.2.0");
    assert_eq!(offer["critical"], true, "{offer}");
    let update = json(&dev.expect("update", &["--yes", "--json"], 0));
    assert_eq!(update["status"], "activated", "{update}");
    assert_eq!(dev.status()["slots"]["a"]["status"], "trial");
}

#[test]
fn check_refuses_a_channel_that_is_no_channel_name() {
    let (_repo, dev) = confirmed_1_0_0("com.acme.names");
    for name in ["../../etc/x", "a/b", "", "my lab", "lab#1", "50%"] {
        let out = dev.run("check", &["--channel", name]);
        assert_eq!(out.status.code(), Some(1), "{name:?}");
        let err = common::stderr(&out);
        assert!(
            err.starts_with("error[config]: expected a channel name"),
            "{name:?}: {err}"
        );
    }
}

#[test]
fn update_to_a_channel_whose_check_fails_keeps_the_channel_followed() {
    let (_repo, dev) = confirmed_1_0_0("com.acme.nosuch");
    let out = dev.run("update", &["--channel", "nosuch", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(common::stderr(&out).starts_with("error[not_found]"));
    assert!(out.stdout.is_empty());
    assert_eq!(dev.status()["channel"], "stable");
    dev.expect("check", &[], 0);
}

/// `update --channel` without `--yes` and without a terminal to ask on fails before the
/// switch: the device keeps its channel (it followed the new one, silently, before).
#[test]
fn update_to_a_channel_that_cannot_ask_keeps_the_channel_followed() {
    let (repo, dev) = confirmed_1_0_0("com.acme.noterminal");
    publish(&repo, "1.1.0", "preview");
    let config = std::fs::read(&dev.config).unwrap();
    let out = dev.run("update", &["--channel", "preview", "--json"]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err.lines().next(),
        Some("error: expected --yes to install without a terminal to ask on (stdin is not a terminal), found no --yes"),
        "{err}"
    );
    assert!(err.contains("Usage: evergreen update"), "{err}");
    assert!(out.stdout.is_empty());
    // Neither the state nor the config follows preview.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.state.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["channel"], "stable");
    assert_eq!(std::fs::read(&dev.config).unwrap(), config);
    assert_eq!(dev.status()["channel"], "stable");
    dev.expect("check", &[], 0);
}

/// `update` without `--yes` where there is no terminal to ask on (a timer, a script) is a
/// usage error, exit 2 as DESIGN §9 gives usage errors, naming `--yes`; nothing is
/// installed. It was `error[config]`, exit 1, as if the config file were wrong. Up to date,
/// nothing needs asking and it succeeds.
#[test]
fn update_without_yes_and_without_a_terminal_is_a_usage_error() {
    let (repo, dev) = confirmed_1_0_0("com.acme.noyes");
    publish(&repo, "1.1.0", "stable");
    for json in [false, true] {
        let args: &[&str] = if json { &["--json"] } else { &[] };
        let out = dev.run("update", args);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("expected --yes to install without a terminal to ask on"),
            "{err}"
        );
        assert!(err.contains("Usage: evergreen update"), "{err}");
        assert!(!err.contains("error[config]"), "{err}");
        // Text shows the offer it would have asked about; JSON has no line to print.
        assert_eq!(out.stdout.is_empty(), json);
    }
    assert_eq!(dev.status()["primary"], "b");
    assert_eq!(dev.status()["slots"]["a"]["status"], "empty");
    dev.expect("update", &["--yes"], 0);
    dev.expect("update", &[], 0);
}

/// `evergreen update --yes 2>&1 | head -1`: the reader of stderr goes away after the first
/// line. The update still finishes and exits 0; it used to panic at its next line on
/// stderr (exit 101), with the release half done.
#[test]
fn a_closed_stderr_neither_stops_an_update_nor_panics() {
    let (repo, dev) = confirmed_1_0_0("com.acme.closed-stderr");
    publish(&repo, "1.1.0", "stable");
    let mut child = std::process::Command::new(common::bin())
        .args(["update", "--yes", "--config", dev.config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let out = require::finish_within(child, common::CLI_LIMIT);
    assert_eq!(out.status.code(), Some(0), "{:?}", out.status);
    let status = dev.status();
    assert_eq!(status["primary"], "a", "{status}");
    assert_eq!(status["slots"]["a"]["version"], "1.1.0", "{status}");
}

/// On a terminal `update` asks; a "no" under `--json` is still one JSON object on stdout.
/// `script` (util-linux) gives the command a terminal.
#[test]
fn update_declined_on_a_terminal_prints_json() {
    if require::tool_output(std::process::Command::new("script").arg("--version")).is_err() {
        require::missing("script (util-linux)");
        return;
    }
    let (repo, dev) = confirmed_1_0_0("com.acme.declined");
    publish(&repo, "1.1.0", "stable");
    let out_file = repo.scratch("declined").join("stdout.json");
    let command = format!(
        "'{}' update --json --config '{}' > '{}'",
        common::bin().display(),
        dev.config.display(),
        out_file.display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let done = require::finish_within(child, std::time::Duration::from_secs(60));
    assert!(done.status.success());
    let printed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(
        printed,
        serde_json::json!({"status": "declined", "version": "1.1.0"})
    );
    assert_eq!(dev.status()["slots"]["a"]["status"], "empty");
}

#[test]
fn a_failed_repair_does_not_mark_the_running_version_failed() {
    let (_repo, dev) = confirmed_1_0_0("com.acme.repair");
    // Repair: 1.0.0 again into slot a, on trial; it never confirms.
    dev.expect("reinstall", &[], 0);
    assert_eq!(dev.status()["slots"]["a"]["status"], "trial");
    for _ in 0..5 {
        dev.expect("boot", &[], 0);
    }
    let status = dev.status();
    assert_eq!(status["primary"], "b", "{status}");
    assert_eq!(status["slots"]["a"]["status"], "bad");
    let state: serde_json::Value =
        json(&std::fs::read_to_string(dev.state.join("state.json")).unwrap());
    assert_eq!(state["failed"], serde_json::json!([]), "{state}");
}

#[test]
fn rolling_back_below_the_security_floor_is_refused() {
    let (repo, dev) = confirmed_1_0_0("com.acme.floor");
    let file = repo.scratch("src").join("settings-2.json");
    std::fs::write(&file, "{\"version\": 2}").unwrap();
    let component = ("config", file.as_path());
    repo.release(
        "stable",
        "2.0.0",
        "x86_64-linux",
        &[component],
        &["--security-version", "4"],
    );
    dev.expect("update", &["--yes"], 0);
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
    // Random by design (jitter): not part of what must stay as it was.
    let status = || {
        let mut s = dev.status();
        s.as_object_mut().unwrap().remove("next_check");
        s
    };
    let before = status();
    assert_eq!(before["security_floor"], 4, "{before}");
    let out = dev.run("rollback", &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.starts_with("error[security_floor]: expected a fallback at or above this device's security floor 4, found slot b with 1.0.0 at security version 0"),
        "{err}"
    );
    assert_eq!(status(), before);
}

/// DESIGN §4.3: nothing below the floor is installed. A release staged while the floor was
/// lower (here a pinned 1.0.0 beside a first release stranded on its trial) must not be
/// activated once a confirmation has raised the floor past it.
#[test]
fn activating_a_release_staged_below_a_floor_raised_since_is_refused() {
    let repo = Repo::new("com.acme.floor-staged");
    let src = repo.scratch("src");
    for (version, sv) in [("1.0.0", "1"), ("1.1.0", "5")] {
        let file = src.join(format!("settings-{version}.json"));
        std::fs::write(&file, format!("{{\"version\": \"{version}\"}}")).unwrap();
        let extra = ["--security-version", sv];
        repo.release(
            "stable",
            version,
            "x86_64-linux",
            &[("config", &file)],
            &extra,
        );
    }
    let dev = repo.device("dev", repo.root.to_str().unwrap(), serde_json::json!({}));
    dev.expect("update", &["--yes"], 0);
    for _ in 0..4 {
        dev.expect("boot", &[], 0);
    }
    assert_eq!(dev.status()["trial"]["tries_left"], 0);
    download_only(&dev);
    dev.expect("update", &["--yes", "--version", "1.0.0"], 0);
    assert_eq!(dev.status()["slots"]["a"]["status"], "installed");
    dev.expect("confirm", &[], 0);
    assert_eq!(dev.status()["security_floor"], 5);
    for args in [&[][..], &["--now"]] {
        let out = dev.run("activate", args);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "activate {args:?}: {err}");
        assert!(err.starts_with("error[security_floor]: "), "{err}");
    }
    let s = dev.status();
    assert_eq!(s["primary"], "b", "{s}");
    assert_eq!(s["slots"]["b"]["status"], "good");
    assert_eq!(s["slots"]["a"]["status"], "installed");
}

#[test]
fn a_304_to_a_request_without_an_etag_is_the_servers_error() {
    let repo = Repo::new("com.acme.nocache");
    publish(&repo, "1.0.0", "stable");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    server.set_fault("channels/stable.json", Fault::Status(304));
    let out = dev.run("check", &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.starts_with("error[http_status]: GET ")
            && err.contains("/channels/stable.json: expected 200 to a request without If-None-Match (nothing cached), found 304"),
        "{err}"
    );
    server.clear_faults();
    dev.expect("check", &[], 10);
}

/// `update --if-due`, for a timer that wakes more often than the poll interval: before the
/// device's `next_check` it makes no check (the last check stays what it was) and says when
/// the next one is; from then on it checks and updates as `update` does.
#[test]
fn update_if_due_checks_only_once_the_schedule_says_so() {
    let (_repo, dev) = confirmed_1_0_0("com.acme.due");
    let now = evergreen::Timestamp::now();
    dev.json_at(&now.to_string(), "check", &[], 0);
    let status = dev.json_at(&now.to_string(), "status", &[], 0);
    let next: evergreen::Timestamp = status["next_check"].as_str().unwrap().parse().unwrap();

    let early = next.plus_secs(-60).to_string();
    let out = dev.json_at(&early, "update", &["--yes", "--if-due"], 0);
    assert_eq!(
        out,
        serde_json::json!({"status": "not_due", "next_check": next})
    );
    assert_eq!(
        dev.json_at(&early, "status", &[], 0)["last_check"],
        status["last_check"]
    );
    let text = dev.run_env(
        "update",
        &["--yes", "--if-due"],
        &[("EVERGREEN_NOW", &early)],
    );
    assert_eq!(
        String::from_utf8_lossy(&text.stdout),
        format!("not due: next check at {next}\n")
    );

    let out = dev.json_at(&next.to_string(), "update", &["--yes", "--if-due"], 0);
    assert_eq!(out["status"], "up_to_date", "{out}");
    let after = dev.json_at(&next.to_string(), "status", &[], 0);
    assert_ne!(
        after["last_check"], status["last_check"],
        "checked once due"
    );
}

/// `check --if-due`, for a notifier that wakes more often than the poll interval: before
/// the device's `next_check` it asks nothing (the channel, moved away, would fail a
/// check) and records nothing, saying when the next check is; once due it checks as
/// `check` does, exit 10 with the offer.
#[test]
fn check_if_due_asks_only_once_the_schedule_says_so() {
    let (repo, dev) = confirmed_1_0_0("com.acme.checkdue");
    publish(&repo, "1.1.0", "stable");
    let status = dev.json_at(&evergreen::Timestamp::now().to_string(), "status", &[], 0);
    let next: evergreen::Timestamp = status["next_check"].as_str().unwrap().parse().unwrap();
    let early = next.plus_secs(-60).to_string();

    let channel = repo.root.join("channels/stable.json");
    let away = repo.root.join("channels/stable.away");
    std::fs::rename(&channel, &away).unwrap();
    let out = dev.json_at(&early, "check", &["--if-due"], 0);
    assert_eq!(
        out,
        serde_json::json!({"status": "not_due", "next_check": next})
    );
    let text = dev.run_env("check", &["--if-due"], &[("EVERGREEN_NOW", &early)]);
    assert_eq!(text.status.code(), Some(0), "{text:?}");
    assert_eq!(
        String::from_utf8_lossy(&text.stdout),
        format!("not due: next check at {next}\n")
    );
    let after = dev.json_at(&early, "status", &[], 0);
    assert_eq!(after["last_check"], status["last_check"]);
    assert_eq!(after["check_failures"], status["check_failures"]);

    std::fs::rename(&away, &channel).unwrap();
    let out = dev.json_at(&next.to_string(), "check", &["--if-due"], 10);
    assert_eq!(out["version"], "1.1.0", "{out}");
    let after = dev.json_at(&next.to_string(), "status", &[], 0);
    assert_ne!(
        after["last_check"], status["last_check"],
        "checked once due"
    );
}

/// `update --if-due` judges whether the check is due once it has its turn: one that
/// waited for another process's check (a timer's and the app's own at once) finds the
/// schedule that check left, asks the server nothing and installs nothing.
#[test]
fn update_if_due_that_waited_for_another_check_finds_it_done() {
    let repo = Repo::new("com.acme.due");
    publish(&repo, "1.0.0", "stable");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    let now = evergreen::Timestamp::now().to_string();
    let manifest = "/channels/stable.json";
    // The first check holds the work lock while its manifest trickles in.
    let slow = Fault::Trickle {
        bytes: 128,
        every: std::time::Duration::from_millis(150),
    };
    server.set_fault_times(manifest, slow, 1);
    let first = std::process::Command::new(common::bin())
        .args(["check", "--json", "--config"])
        .arg(&dev.config)
        .env("EVERGREEN_NOW", &now)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let asked = std::time::Instant::now();
    while server.requests(manifest).is_empty() {
        assert!(
            asked.elapsed().as_secs() < 20,
            "the first check never asked"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let second = dev.run_env(
        "update",
        &["--yes", "--if-due", "--json"],
        &[("EVERGREEN_NOW", &now)],
    );
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(10), "{}", common::stderr(&first));
    assert_eq!(second.status.code(), Some(0), "{}", common::stderr(&second));
    let out = json(&String::from_utf8_lossy(&second.stdout));
    assert_eq!(out["status"], "not_due", "{out}");
    assert_eq!(server.requests(manifest).len(), 1, "asked the server again");
    assert_eq!(dev.status()["slots"]["a"]["status"], "empty");
}

/// A device whose clock went back to 1970 after it checked (an RTC that lost power) is
/// due to check now, on its own clock: a time in 2026 would mean never for a host waiting
/// on it, and one counted from its own now would move on at every call. The check it then
/// makes schedules the next one on the clock it ran on.
#[test]
fn next_check_is_due_at_once_when_the_devices_clock_went_back_since_its_check() {
    let (_repo, dev) = confirmed_1_0_0("com.acme.rtc");
    let status_at = |when: &str| dev.json_at(when, "status", &[], 0);
    for when in ["1970-01-02T00:00:00Z", "1970-01-02T01:00:00Z"] {
        assert_eq!(status_at(when)["next_check"], when, "due at once");
    }
    dev.json_at("1970-01-02T01:00:00Z", "check", &[], 0);
    let first = status_at("1970-01-02T01:00:00Z")["next_check"].clone();
    let next: evergreen::Timestamp = first.as_str().unwrap().parse().unwrap();
    // The default interval is 6 h ± 25 %.
    let after = next.unix()
        - "1970-01-02T01:00:00Z"
            .parse::<evergreen::Timestamp>()
            .unwrap()
            .unix();
    assert!((4 * 3600..=8 * 3600).contains(&after), "{first}");
    assert_eq!(status_at("1970-01-02T03:00:00Z")["next_check"], first);
}

/// A device whose clock reads behind the manifest's `issued` when it checks: the next
/// check is one time on its own clock, the same at every call, so a host that asks every
/// hour whether it is due hears yes some hour (it moved an interval past every call).
#[test]
fn next_check_stays_put_while_the_devices_clock_reads_behind_the_last_check() {
    let (_repo, dev) = confirmed_1_0_0("com.acme.behind");
    // Published today; the device reads 1970 (an RTC that lost power) as it checks.
    dev.json_at("1970-01-02T00:00:00Z", "check", &[], 0);
    let next = |when: &str| {
        dev.json_at(when, "status", &[], 0)["next_check"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = next("1970-01-02T00:00:00Z");
    let due: evergreen::Timestamp = first.parse().unwrap();
    let after = due.unix()
        - "1970-01-02T00:00:00Z"
            .parse::<evergreen::Timestamp>()
            .unwrap()
            .unix();
    assert!((4 * 3600..=8 * 3600).contains(&after), "{first}");
    assert_eq!(next("1970-01-02T01:00:00Z"), first);
    assert_eq!(next("1970-01-02T03:30:00Z"), first);
    let later = due.plus_secs(60).to_string();
    assert_eq!(next(&later), first, "past due, still the same time: due");
}

/// A device 40 roots behind, whose manifest is signed by a key the 41st root brought: the
/// first check walks the 32 roots one check takes, and its signature error says so; the
/// next check walks on and verifies.
#[test]
fn a_root_walk_cut_short_by_its_step_limit_is_named_in_the_signature_error() {
    let repo = Repo::new("com.acme.longchain");
    publish(&repo, "1.0.0", "stable");
    let dev = repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({"current_version": "0.9.0"}),
    );
    let root = repo.root.to_str().unwrap();
    let key = repo.root_key.to_str().unwrap();
    for _ in 0..40 {
        common::ok(&["rotate", root, "--sign", key]);
    }
    let manifest2 = repo.scratch("keys2").join("manifest2.key");
    let manifest2 = manifest2.to_str().unwrap();
    common::ok(&["keygen", "--out", manifest2]);
    let public = format!("{manifest2}.pub");
    common::ok(&[
        "rotate",
        root,
        "--manifest-key",
        &public,
        "--sign",
        key,
        "--sign",
        manifest2,
    ]);

    let err = dev.fails("check", &[]);
    assert!(err.starts_with("error[signature]: "), "{err}");
    assert!(
        err.contains("the walk of the root chain stopped at version 33, after the 32 versions one check takes"),
        "{err}"
    );
    dev.expect("check", &[], 10);
}

/// `update --channel C` checks C, then switches to it: that check is the device's last
/// check from then on (the schedule follows the channel followed), not the one before it
/// of the channel left.
#[test]
fn a_switch_by_update_channel_takes_its_check_as_the_devices_own() {
    let repo = Repo::new("com.acme.switchcheck");
    publish(&repo, "1.0.0", "stable");
    publish(&repo, "1.1.0", "preview");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device(
        "dev",
        &server.url(),
        serde_json::json!({"current_version": "1.0.0"}),
    );
    dev.json_at("2026-12-20T05:00:00Z", "check", &[], 0);
    let switch = ["--channel", "preview", "--yes", "--download-only"];
    dev.json_at("2026-12-20T06:00:00Z", "update", &switch, 0);
    let status = dev.json_at("2026-12-20T06:00:00Z", "status", &[], 0);
    assert_eq!(status["channel"], "preview", "{status}");
    assert_eq!(status["last_check"], "2026-12-20T06:00:00Z", "{status}");
}

#[test]
fn check_json_names_the_configured_current_version_when_up_to_date() {
    let repo = Repo::new("com.acme.current");
    publish(&repo, "1.0.0", "stable");
    let dev = repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({"current_version": "2.0.0"}),
    );
    let out = json(&dev.expect("check", &["--json"], 0));
    assert_eq!(
        out,
        serde_json::json!({"status": "up_to_date", "current": "2.0.0", "version": null,
            "channel": "stable", "critical": false, "downgrade": false, "notes": "",
            "security_version": null, "download_bytes": 0, "components": [],
            "target_released": true, "held_back": null})
    );
    // The keys of an offer, so a script reads the same keys whatever the answer.
    publish(&repo, "2.1.0", "stable");
    let offer = json(&dev.expect("check", &["--json"], 10));
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&offer), keys(&out), "{offer}");
}

#[test]
fn rollback_json_names_both_slots_as_boot_does() {
    let (repo, dev) = confirmed_1_0_0("com.acme.rolljson");
    publish(&repo, "1.0.1", "stable");
    dev.expect("update", &["--yes"], 0);
    dev.expect("boot", &[], 0);
    let out = json(&dev.expect("rollback", &["--json"], 0));
    assert_eq!(
        out,
        serde_json::json!({"status": "rolled_back", "slot": "b", "from": "a", "to": "b"})
    );
}

#[test]
fn a_repair_does_not_move_the_device_off_the_channel_it_follows() {
    let (_repo, dev) = confirmed_1_0_0("com.acme.repairchannel");
    dev.expect("channel", &["preview"], 0);
    dev.expect("reinstall", &[], 0);
    let status = dev.status();
    assert_eq!(status["slots"]["a"]["status"], "trial", "{status}");
    assert_eq!(status["channel"], "preview", "{status}");
}

/// Lists a directory's names, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Publishes `version` with an app zip and `config` (a path, with an optional `:kind`),
/// updates the device to it, starts and confirms it. Returns what the check said of
/// `config`.
fn update_to(repo: &Repo, dev: &common::Device, version: &str, config: &str) -> serde_json::Value {
    let src = repo.scratch("src");
    let app = src.join(format!("app-{version}.zip"));
    common::make_zip(&app, &[("run.sh", version.as_bytes())]);
    repo.release(
        "stable",
        version,
        "x86_64-linux",
        &[("app", &app), ("config", Path::new(config))],
        &[],
    );
    let offer = json(&dev.expect("check", &["--json"], 10));
    for step in [&["update", "--yes"][..], &["boot"], &["confirm"]] {
        dev.expect(step[0], &step[1..], 0);
    }
    offer["components"][1].clone()
}

/// The bytes are not all that is installed: a file artifact's name and an artifact's kind
/// are too. A release that changes either with the same blob installs it again, and the
/// publisher gives it the new version.
#[test]
fn the_same_bytes_under_a_new_file_name_or_kind_are_installed_again() {
    let repo = Repo::new("com.acme.rename");
    let src = repo.scratch("src");
    let dev = repo.device("dev", repo.root.to_str().unwrap(), serde_json::json!({}));
    let (old, new) = (src.join("v1"), src.join("v2"));
    std::fs::create_dir_all(&old).unwrap();
    std::fs::create_dir_all(&new).unwrap();
    std::fs::write(old.join("settings.json"), b"{\"k\": 1}").unwrap();
    std::fs::write(new.join("config.json"), b"{\"k\": 1}").unwrap();
    let config = |dir: &Path, name: &str| dir.join(name).display().to_string();
    update_to(&repo, &dev, "1.0.0", &config(&old, "settings.json"));
    let current = dev.root.join("current/config");
    assert_eq!(names(&current), ["settings.json"]);

    let change = update_to(&repo, &dev, "1.1.0", &config(&new, "config.json"));
    assert_eq!(change["op"], "modified", "{change}");
    assert_eq!(change["to"], "1.1.0", "{change}");
    assert_eq!(names(&current), ["config.json"]);
    // The same name and bytes again: unchanged, with the version it had.
    let change = update_to(&repo, &dev, "1.2.0", &config(&new, "config.json"));
    assert_eq!(change["op"], "unchanged", "{change}");
    assert_eq!(change["to"], "1.1.0", "{change}");
    assert_eq!(names(&current), ["config.json"]);

    // One zip placed as a file, then extracted.
    let bundle = src.join("bundle.zip");
    common::make_zip(&bundle, &[("run.sh", b"#!/bin/sh\n")]);
    update_to(&repo, &dev, "1.3.0", &format!("{}:file", bundle.display()));
    assert_eq!(names(&current), ["bundle.zip"]);
    let change = update_to(&repo, &dev, "1.4.0", &format!("{}:zip", bundle.display()));
    assert_eq!(change["op"], "modified", "{change}");
    assert_eq!(names(&current), ["run.sh"]);
}

/// Dir slots take no image. A release with one is refused before the idle slot, the last
/// good release a manual rollback needs, is emptied.
#[test]
fn an_image_for_dir_slots_is_refused_before_the_idle_slot_is_emptied() {
    let (repo, dev) = confirmed_1_0_0("com.acme.dirimage");
    publish(&repo, "1.0.1", "stable");
    for step in [&["update", "--yes"][..], &["boot"], &["confirm"]] {
        dev.expect(step[0], &step[1..], 0);
    }
    let idle = common::tree_digest(&dev.root.join("slots/b"));
    let image = repo.scratch("src").join("rootfs.img");
    std::fs::write(&image, b"not for dir slots").unwrap();
    let spec = format!("{}:image", image.display());
    repo.release(
        "stable",
        "1.1.0",
        "x86_64-linux",
        &[("rootfs", Path::new(&spec))],
        &[],
    );
    let err = dev.fails("update", &["--yes"]);
    assert!(
        err.contains("error[config]: dir slots: expected no image component for target x86_64-linux, found 1 image(s) among 1 component(s)"),
        "{err}"
    );
    assert_eq!(common::tree_digest(&dev.root.join("slots/b")), idle);
    let status = dev.status();
    assert_eq!(status["slots"]["b"]["status"], "good", "{status}");
    assert_eq!(status["slots"]["b"]["version"], "1.0.0", "{status}");
    // Refused before the download, too: nothing fetched in vain. What is there is the
    // running release's own download, kept for its unchanged components.
    let primary = dev.state_file()["primary"].as_str().unwrap().to_string();
    assert_eq!(dev.downloads(), [dev.installed_sha256(&primary, "config")]);
}

/// Under a umask of 000 (a service manager's `UMask=0000`, a container's entrypoint) the
/// directories Evergreen creates are still not writable by group or others, and a file
/// component's directory is 0755 like a zip component's.
#[test]
fn directories_evergreen_creates_are_not_writable_by_others_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let repo = Repo::new("com.acme.umask");
    let src = repo.scratch("src");
    std::fs::write(src.join("settings.json"), b"{}").unwrap();
    let app = src.join("app.zip");
    common::make_zip(&app, &[("run.sh", b"#!/bin/sh\n")]);
    let config = src.join("settings.json");
    repo.release(
        "stable",
        "1.0.0",
        "x86_64-linux",
        &[("app", &app), ("config", &config)],
        &[],
    );
    let dev = repo.device("dev", repo.root.to_str().unwrap(), serde_json::json!({}));
    let mut sh = std::process::Command::new("sh");
    sh.args(["-c", "umask 000; exec \"$0\" \"$@\""])
        .arg(common::bin())
        .args(["update", "--yes", "--config", dev.config.to_str().unwrap()]);
    let out = common::output_within(&mut sh, common::CLI_LIMIT);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let slot = dev.root.join("slots/b");
    assert_eq!(mode(&slot.join("app")), 0o755, "zip component");
    assert_eq!(mode(&slot.join("config")), 0o755, "file component");
    for dir in [
        dev.root.clone(),
        dev.root.join("slots"),
        dev.state.clone(),
        dev.state.join("downloads"),
    ] {
        assert_eq!(
            mode(&dir) & 0o022,
            0,
            "{} is {:o}",
            dir.display(),
            mode(&dir)
        );
    }
}

/// Under a private umask (`UMask=0077`, systemd's for many services) the slot root and
/// `slots/` Evergreen creates are 0755 as the slot trees in them are: the app may run as
/// another user, and a 0700 `slots/` left it no way to its release (seen: root and
/// `slots/` 0700, `slots/b` 0755). The state directory stays as the umask makes it.
#[test]
fn the_slot_root_is_reachable_by_the_app_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let repo = Repo::new("com.acme.umask");
    let src = repo.scratch("src");
    let app = src.join("app.zip");
    common::make_zip(&app, &[("run.sh", b"#!/bin/sh\n")]);
    repo.release("stable", "1.0.0", "x86_64-linux", &[("app", &app)], &[]);
    let dev = repo.device("dev", repo.root.to_str().unwrap(), serde_json::json!({}));
    let mut sh = std::process::Command::new("sh");
    sh.args(["-c", "umask 077; exec \"$0\" \"$@\""])
        .arg(common::bin())
        .args(["update", "--yes", "--config", dev.config.to_str().unwrap()]);
    let out = common::output_within(&mut sh, common::CLI_LIMIT);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let dirs = ["", "slots", "slots/b", "slots/b/app"];
    let found: Vec<String> = dirs
        .iter()
        .map(|p| format!("/{p} {:o}", mode(&dev.root.join(p))))
        .collect();
    let expected: Vec<String> = dirs.iter().map(|p| format!("/{p} 755")).collect();
    assert_eq!(found, expected);
    assert_eq!(mode(&dev.state), 0o700, "the state directory");
}

/// 1.0.1: the same config file as 1.0.0 (an unchanged component) and a new app.
fn release_same_config(repo: &Repo) {
    let src = repo.scratch("src");
    let app = src.join("app.zip");
    common::make_zip(&app, &[("run.sh", b"#!/bin/sh\n")]);
    let config = src.join("settings-1.0.0.json");
    repo.release(
        "stable",
        "1.0.1",
        "x86_64-linux",
        &[("app", &app), ("config", &config)],
        &[],
    );
}

/// A channel may be named `stable.json.tmp-1` (letters, digits, '.', '_' and '-'): its
/// manifest copy, `cache/stable.json.tmp-1.json`, is no temp file of `stable`'s copy, and a
/// check of `stable` must leave it where it is.
#[test]
fn a_check_of_one_channel_keeps_the_manifest_copy_of_a_channel_named_like_its_temp() {
    let repo = Repo::new("com.acme.temp-named");
    let file = repo.scratch("src").join("data.bin");
    std::fs::write(&file, b"data").unwrap();
    let other = "stable.json.tmp-1";
    for channel in ["stable", other] {
        repo.release(channel, "1.1.0", "x86_64-linux", &[("data", &file)], &[]);
    }
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({"channel": other}));
    dev.expect("check", &[], 10);
    let copy = dev.state.join("cache").join(format!("{other}.json"));
    assert!(copy.is_file(), "the check of {other} kept no copy");
    // A look at stable, which writes its copy.
    dev.expect("check", &["--channel", "stable"], 10);
    assert!(
        copy.is_file(),
        "a check of stable removed {}",
        copy.display()
    );
}

/// FIFOs planted in the state directory in place of the saved root, the manifest copy
/// kept for 304s and the kept device id (by another user who may write it) are never
/// waited on: the check goes on as if each were missing, and replaces what it writes.
#[test]
fn fifos_in_place_of_the_state_directorys_copies_never_hang_a_check() {
    let (_repo, _server, dev) = served_with_1_1_0("com.acme.fifo-copies");
    dev.edit_config(|c| c["device_id"] = serde_json::Value::Null);
    dev.expect("check", &[], 10);
    for planted in ["root.json", "cache/stable.json", "device-id"] {
        let path = dev.state.join(planted);
        let _ = std::fs::remove_file(&path);
        let made = std::process::Command::new("mkfifo").arg(&path).status();
        assert!(made.unwrap().success(), "{planted}");
        let mut check = std::process::Command::new(common::bin());
        check.args(["check", "--json", "--config", dev.config.to_str().unwrap()]);
        let out = common::output_within(&mut check, std::time::Duration::from_secs(60));
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(10), "{planted}: {err}");
        let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(found["version"], "1.1.0", "{planted}: {found}");
        if planted != "root.json" {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert!(meta.is_file(), "{planted} is written anew: {meta:?}");
        }
        // Put back for the next case (the kept root is written only when one is walked to).
        let _ = std::fs::remove_file(&path);
    }
}

/// Whatever the app does to its running slot (a symlink in place of the file, a FIFO,
/// its own bytes, files beside it), an unchanged file component is installed from the
/// download kept since it was installed: the new slot holds the signed file alone, and
/// nothing of it is fetched again.
#[test]
fn an_unchanged_file_component_comes_from_its_kept_download_whatever_the_app_did() {
    for case in ["symlink", "fifo", "tampered", "extra"] {
        let (repo, dev) = confirmed_1_0_0(&format!("com.acme.reuse-{case}"));
        let running = dev.root.join("current/config/settings-1.0.0.json");
        match case {
            "symlink" => {
                let elsewhere = dev.root.join("apps-copy.json");
                std::fs::rename(&running, &elsewhere).unwrap();
                std::os::unix::fs::symlink(&elsewhere, &running).unwrap();
            }
            "fifo" => {
                std::fs::remove_file(&running).unwrap();
                let made = std::process::Command::new("mkfifo").arg(&running).status();
                assert!(made.unwrap().success());
            }
            "tampered" => std::fs::write(&running, b"{\"version\": \"tampered\"}").unwrap(),
            _ => std::fs::write(running.with_file_name("extra.txt"), b"the app's").unwrap(),
        }
        release_same_config(&repo);
        let (op, bytes) = offered(&dev, "config");
        let app = std::fs::metadata(repo.scratch("src").join("app.zip"))
            .unwrap()
            .len();
        assert_eq!(
            (op.as_str(), bytes),
            ("unchanged", app),
            "{case}: only the app is fetched"
        );
        dev.expect("update", &["--yes"], 0);
        let staged = dev.root.join("slots/a/config");
        let names: Vec<_> = std::fs::read_dir(&staged)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["settings-1.0.0.json"], "{case}");
        let placed = std::fs::read(staged.join("settings-1.0.0.json")).unwrap();
        assert_eq!(placed, b"{\"version\": \"1.0.0\"}", "{case}");
    }
}

/// 1.0.1 (an app tree and the 1.0.0 config) installed and confirmed over 1.0.0, then 1.0.2
/// published with the same app archive and a new config: the app is an unchanged tree.
fn confirmed_app_tree_then_same_app(product: &str) -> (Repo, common::Device) {
    let (repo, dev) = confirmed_1_0_0(product);
    release_same_config(&repo);
    dev.expect("update", &["--yes"], 0);
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
    let src = repo.scratch("src");
    let config = src.join("settings-1.0.2.json");
    std::fs::write(&config, b"{\"version\": \"1.0.2\"}").unwrap();
    let app = src.join("app.zip");
    repo.release(
        "stable",
        "1.0.2",
        "x86_64-linux",
        &[("app", &app), ("config", &config)],
        &[],
    );
    (repo, dev)
}

/// The op and download size of `component` in the offer `check --json` prints.
fn offered(dev: &common::Device, component: &str) -> (String, u64) {
    let offer = json(&dev.expect("check", &["--json"], 10));
    let c = offer["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == component)
        .unwrap_or_else(|| panic!("no {component} in {offer}"));
    let op = c["op"].as_str().unwrap().to_string();
    (op, offer["download_bytes"].as_u64().unwrap())
}

/// An unchanged app tree is extracted again from the archive kept since it was installed,
/// not copied from the running slot: a file the app edited there and a file it added do
/// not reach the new slot, and nothing of the app is downloaded. After the confirmation
/// the downloads hold exactly what the running release was installed from.
#[test]
fn an_unchanged_tree_is_extracted_from_its_kept_download() {
    let (_repo, dev) = confirmed_app_tree_then_same_app("com.acme.tree");
    let running = dev.root.join("current");
    std::fs::write(running.join("app/run.sh"), b"#!/bin/sh\nedited\n").unwrap();
    std::fs::write(running.join("app/app.log"), b"written by the app").unwrap();
    let (op, bytes) = offered(&dev, "app");
    assert_eq!(
        (op.as_str(), bytes),
        ("unchanged", 20),
        "only the config is fetched"
    );
    dev.expect("update", &["--yes"], 0);
    let staged = dev.root.join("slots/b");
    assert_eq!(
        std::fs::read(staged.join("app/run.sh")).unwrap(),
        b"#!/bin/sh\n"
    );
    assert!(!staged.join("app/app.log").exists());
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
    let kept = dev.downloads();
    let mut installed: Vec<String> = dev.state_file()["b"]["components"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["sha256"].as_str().unwrap().to_string())
        .collect();
    installed.sort();
    assert_eq!(kept, installed);
}

/// An unchanged component whose kept download is gone (removed by hand, or installed by
/// a version that kept none) is downloaded again, and kept from then on.
#[test]
fn an_unchanged_component_without_its_kept_download_is_downloaded_again() {
    let (_repo, dev) = confirmed_app_tree_then_same_app("com.acme.tree-gone");
    let app_sha = dev.installed_sha256("a", "app");
    std::fs::remove_file(dev.state.join("downloads").join(&app_sha)).unwrap();
    let (op, bytes) = offered(&dev, "app");
    assert_eq!(op, "unchanged");
    assert!(bytes > 20, "the app's archive is fetched too: {bytes}");
    dev.expect("update", &["--yes"], 0);
    let run = std::fs::read(dev.root.join("slots/b/app/run.sh")).unwrap();
    assert_eq!(run, b"#!/bin/sh\n");
    assert!(dev.state.join("downloads").join(&app_sha).is_file());
}

/// A kept download damaged since it was kept (a bad block) fails the install that needs it
/// once, naming it, and is removed: the next update downloads it again instead of failing
/// the same way for good.
#[test]
fn a_damaged_kept_download_is_downloaded_again_by_the_next_update() {
    let (_repo, dev) = confirmed_app_tree_then_same_app("com.acme.kept-damaged");
    let app_sha = dev.installed_sha256("a", "app");
    let kept = dev.state.join("downloads").join(&app_sha);
    let mut bytes = std::fs::read(&kept).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&kept, &bytes).unwrap();
    let err = dev.fails("update", &["--yes"]);
    assert!(
        err.contains("error[hash_mismatch]: component app: the download kept since it was installed, now removed (the next update downloads it again): expected "),
        "{err}"
    );
    assert!(!kept.exists());
    let (op, bytes) = offered(&dev, "app");
    assert_eq!(op, "unchanged");
    assert!(bytes > 20, "the app's archive is fetched again: {bytes}");
    dev.expect("update", &["--yes"], 0);
    let run = std::fs::read(dev.root.join("slots/b/app/run.sh")).unwrap();
    assert_eq!(run, b"#!/bin/sh\n");
}

/// The confirmation of a trial removes the downloads of the release it replaced, not those
/// of a next release downloaded while the trial ran: `update --download-only` promises that
/// a later `update` installs without fetching again.
#[test]
fn a_confirmation_keeps_a_next_release_downloaded_during_the_trial() {
    let (repo, dev) = confirmed_1_0_0("com.acme.kept-next");
    release_same_config(&repo);
    dev.expect("update", &["--yes"], 0);
    assert_eq!(dev.status()["slots"]["a"]["status"], "trial");
    publish(&repo, "1.0.2", "stable");
    let out = dev.run("update", &["--yes", "--download-only"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    // 1.0.1's app and config (1.0.0's too), and 1.0.2's new config.
    let before = dev.downloads();
    assert_eq!(before.len(), 3, "{before:?}");
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
    assert_eq!(
        dev.downloads(),
        before,
        "nothing the next install needs is removed"
    );
    dev.expect("update", &["--yes"], 0);
}

/// A release rolled back is never confirmed; its downloads go at the next confirmation,
/// which keeps only what the running release was installed from.
#[test]
fn the_downloads_of_a_rolled_back_release_go_at_the_next_confirmation() {
    let (repo, dev) = confirmed_1_0_0("com.acme.kept-rolled-back");
    release_same_config(&repo);
    dev.expect("update", &["--yes"], 0);
    let bad_app = dev.installed_sha256("a", "app");
    assert!(dev.state.join("downloads").join(&bad_app).is_file());
    dev.expect("rollback", &[], 0);
    assert_eq!(dev.status()["slots"]["a"]["status"], "bad");
    publish(&repo, "1.0.2", "stable");
    dev.expect("update", &["--yes"], 0);
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
    let state = dev.state_file();
    assert_eq!(state["a"]["version"], "1.0.2", "{state}");
    assert!(!dev.state.join("downloads").join(&bad_app).exists());
    for c in state["a"]["components"].as_object().unwrap().values() {
        let sha = c["sha256"].as_str().unwrap();
        assert!(dev.state.join("downloads").join(sha).is_file(), "{c}");
    }
}

/// Downloads are stored by content: a next release that goes back to a component of the
/// release the trial replaced needs that very file. Downloaded during the trial, it is
/// pending and the confirmation keeps it.
#[test]
fn a_confirmation_keeps_a_reverted_component_downloaded_during_the_trial() {
    let (repo, dev) = confirmed_1_0_0("com.acme.kept-revert");
    let reverted = dev.installed_sha256("b", "config");
    publish(&repo, "1.0.1", "stable");
    dev.expect("update", &["--yes"], 0);
    let config = repo.scratch("src").join("settings-1.0.0.json");
    repo.release(
        "stable",
        "1.0.2",
        "x86_64-linux",
        &[("config", &config)],
        &[],
    );
    let out = dev.run("update", &["--yes", "--download-only"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let state = dev.state_file();
    assert_eq!(state["pending_downloads"], serde_json::json!([reverted]));
    assert_eq!(state["pending_for"], "1.0.2");
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
    assert!(dev.state.join("downloads").join(&reverted).is_file());
}

/// A download that dies between its blobs (killed, or the power cut) recorded every blob
/// of its release as pending before fetching the first: the confirmation of the trial
/// that follows keeps the blob that finished, so the next download need not fetch it
/// again.
#[test]
fn a_confirmation_keeps_the_finished_blobs_of_a_download_that_died() {
    let repo = Repo::new("com.acme.kept-killed");
    publish(&repo, "1.0.0", "stable");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    dev.expect("update", &["--yes"], 0);
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
    publish(&repo, "1.0.1", "stable");
    dev.expect("update", &["--yes"], 0);
    dev.expect("boot", &[], 0);
    let src = repo.scratch("src");
    let (first, second) = (src.join("a-first.bin"), src.join("b-second.bin"));
    std::fs::write(&first, vec![1u8; 4096]).unwrap();
    std::fs::write(&second, vec![2u8; 64 * 1024]).unwrap();
    let components = [("a-first", first.as_path()), ("b-second", second.as_path())];
    repo.release("stable", "1.0.2", "x86_64-linux", &components, &[]);
    let sha = |file: &Path| evergreen::trust::sha256_hex(&std::fs::read(file).unwrap());
    let blob = format!("blobs/sha256/{}", sha(&second));
    let slow = Fault::Trickle {
        bytes: 8,
        every: std::time::Duration::from_millis(20),
    };
    server.set_fault(&blob, slow);
    let out = signalled_update(&dev, &server, &blob, &["--download-only"], "-KILL");
    assert_eq!(out.status.code(), None, "killed: {}", common::stderr(&out));
    let finished = dev.state.join("downloads").join(sha(&first));
    assert!(
        finished.is_file(),
        "the first blob finished before the second began"
    );
    dev.expect("confirm", &[], 0);
    assert!(
        finished.is_file(),
        "the confirmation removed a finished download"
    );
}

/// Without a configured `device_id`, the rollout identity is read once (the machine id,
/// or one generated when there is none) and kept in `<state_dir>/device-id`, which wins
/// from then on: a machine id made afresh at every boot must not draw a new rollout bucket
/// at every check.
#[test]
fn the_rollout_identity_is_kept_once_read() {
    use evergreen::select::rollout_bucket;
    let repo = Repo::new("com.acme.keptid");
    publish(&repo, "1.0.0", "stable");
    let dev = repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({"device_id": null}),
    );
    dev.expect("update", &["--yes"], 0);
    let kept_path = dev.state.join("device-id");
    let first = std::fs::read_to_string(&kept_path).expect("the identity was kept");
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    if !machine.trim().is_empty() && machine.trim() != "uninitialized" {
        assert_eq!(first, machine.trim(), "the machine id is the identity");
    }
    // A kept identity in a 50 % rollout that the first one is not in: the kept one decides.
    let version = semver::Version::new(1, 1, 0);
    let bucket = |id: &str| rollout_bucket("com.acme.keptid", id, &version);
    let (first_bucket, mut kept) = (bucket(first.trim()), None);
    for n in 0..1000 {
        let id = format!("kept-{n}");
        let b = bucket(&id);
        if (first_bucket >= 5000) == (b < 5000) {
            kept = Some((id, b < 5000));
            break;
        }
    }
    let (kept, kept_in) = kept.unwrap();
    std::fs::write(&kept_path, &kept).unwrap();
    let file = repo.scratch("src").join("settings-1.1.0.json");
    std::fs::write(&file, b"{}").unwrap();
    repo.release(
        "stable",
        "1.1.0",
        "x86_64-linux",
        &[("config", &file)],
        &["--rollout", "50"],
    );
    let expected = if kept_in { 10 } else { 0 };
    dev.expect("check", &[], expected);
}

/// Whatever the umask, nothing the updater writes is writable by group or others: the
/// state, its spare, the trusted root, the downloads and the slots' records decide what
/// the device trusts and boots, and the directories holding them are locked down too.
#[test]
fn files_written_under_an_open_umask_are_not_group_or_world_writable() {
    let repo = Repo::new("com.acme.umask");
    publish(&repo, "1.0.0", "stable");
    let dev = repo.device("dev", repo.root.to_str().unwrap(), serde_json::json!({}));
    for command in ["update --yes", "boot", "confirm"] {
        let script = format!("umask 000; exec \"$0\" {command} --config \"$1\"",);
        let mut sh = std::process::Command::new("sh");
        sh.args(["-c", &script, common::bin().to_str().unwrap()])
            .arg(&dev.config);
        let out = common::output_within(&mut sh, common::CLI_LIMIT);
        assert!(out.status.success(), "{command}: {}", common::stderr(&out));
    }
    let mut seen = 0;
    for top in [&dev.state, &dev.root] {
        let mut stack = vec![top.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let meta = std::fs::symlink_metadata(entry.path()).unwrap();
                if meta.file_type().is_symlink() {
                    continue;
                }
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                assert_eq!(mode & 0o022, 0, "{} is {mode:o}", entry.path().display());
                seen += 1;
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
    }
    for name in ["state.json", "root.json", "downloads"] {
        assert!(dev.state.join(name).exists(), "{name} was not written");
    }
    assert!(seen > 8, "{seen} files looked at");
}

/// A release downloaded and never installed, then passed by a newer one, is no longer
/// pending once that newer one is confirmed: its downloads are removed.
#[test]
fn a_downloaded_release_passed_by_a_confirmed_newer_one_is_removed() {
    let (repo, dev) = confirmed_1_0_0("com.acme.kept-passed");
    publish(&repo, "1.0.1", "stable");
    let out = dev.run("update", &["--yes", "--download-only"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let pending = dev.state_file()["pending_downloads"].clone();
    let passed: Vec<String> = serde_json::from_value(pending.clone()).unwrap();
    assert_eq!(passed.len(), 1, "{pending}");
    publish(&repo, "1.0.2", "stable");
    dev.expect("update", &["--yes"], 0);
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
    assert!(!dev.state.join("downloads").join(&passed[0]).exists());
    let state = dev.state_file();
    assert!(state.get("pending_downloads").is_none(), "{state}");
    assert!(state.get("pending_for").is_none(), "{state}");
}

/// Runs `evergreen update --yes` plus `args` on `dev`, interrupts it with SIGINT once the
/// server has logged a request for `path`, and returns its output. Bounded: the command
/// must end within 20 s of the signal.
fn interrupted_update(
    dev: &common::Device,
    server: &TestServer,
    path: &str,
    args: &[&str],
) -> std::process::Output {
    signalled_update(dev, server, path, args, "-INT")
}

/// [`interrupted_update`] with another `signal` (a `kill` option: `-KILL` for a process
/// that dies where it stands, as at a power cut).
fn signalled_update(
    dev: &common::Device,
    server: &TestServer,
    path: &str,
    args: &[&str],
    signal: &str,
) -> std::process::Output {
    let child = signals_at_their_default(std::process::Command::new(common::bin()))
        .args(["update", "--config", dev.config.to_str().unwrap(), "--yes"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    signal_once_requested(child, server, path, signal)
}

/// `cmd`, started with SIGINT, SIGTERM and SIGHUP at their default action whatever the
/// test process inherited: the command keeps a signal its starter ignored
/// ([`signals_ignored_by_the_starter_stay_ignored`]), and a test run from a background
/// job of a script (`cargo test &` in `sh` ignores SIGINT) or under `nohup` (SIGHUP) would
/// otherwise send a signal the command rightly ignores.
fn signals_at_their_default(mut cmd: std::process::Command) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(signal, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    cmd
}

/// Sends `signal` to `child` once `server` has logged a request for `path`, and returns
/// its output; it must end within 20 s of the signal.
fn signal_once_requested(
    child: std::process::Child,
    server: &TestServer,
    path: &str,
    signal: &str,
) -> std::process::Output {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.requests(path).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !server.requests(path).is_empty(),
        "no request for {path} in 20 s"
    );
    std::thread::sleep(Duration::from_millis(200)); // well inside the request
    send_signal(&child, signal);
    require::finish_within(child, Duration::from_secs(20))
}

/// Sends `signal` (`-INT`, `-TERM`, `-HUP` or `-KILL`, as `kill` takes it) to `child` at
/// once: a `kill` process, which a loaded machine may start late, could deliver it after
/// the step it is meant to interrupt has ended.
fn send_signal(child: &std::process::Child, signal: &str) {
    let number = match signal {
        "-INT" => libc::SIGINT,
        "-TERM" => libc::SIGTERM,
        "-HUP" => libc::SIGHUP,
        "-KILL" => libc::SIGKILL,
        other => panic!("expected -INT, -TERM, -HUP or -KILL, found {other}"),
    };
    // SAFETY: kill(2) of a child this test started and has not waited for.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, number) };
    let err = std::io::Error::last_os_error();
    assert_eq!(sent, 0, "kill {signal} {}: {err}", child.id());
}

/// A new device served over HTTP, offered 1.1.0 (a 256 KiB file) on stable and preview.
fn served_with_1_1_0(product: &str) -> (Repo, TestServer, common::Device) {
    served_with_1_1_0_of(product, 256 * 1024)
}

/// [`served_with_1_1_0`] with a file of `size` bytes.
fn served_with_1_1_0_of(product: &str, size: u32) -> (Repo, TestServer, common::Device) {
    let repo = Repo::new(product);
    let file = repo.scratch("src").join("data.bin");
    std::fs::write(
        &file,
        (0..size).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    for channel in ["stable", "preview"] {
        repo.release(channel, "1.1.0", "x86_64-linux", &[("data", &file)], &[]);
    }
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("served", &server.url(), serde_json::json!({}));
    (repo, server, dev)
}

/// Ctrl-C during a check that waits on a slow server: the command says `cancelled` and
/// exits 1 like any failure, and `update --channel` has not switched: the switch is saved
/// only once the channel's check succeeded.
#[test]
fn an_interrupted_update_to_another_channel_is_cancelled_and_keeps_the_channel() {
    let (_repo, server, dev) = served_with_1_1_0("com.acme.sigint.check");
    let slow = Fault::Trickle {
        bytes: 1,
        every: std::time::Duration::from_millis(500),
    };
    server.set_fault("channels/preview.json", slow);
    let out = interrupted_update(
        &dev,
        &server,
        "channels/preview.json",
        &["--channel", "preview"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = common::stderr(&out);
    assert!(
        stderr.starts_with("error[cancelled]: interrupted"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(dev.status()["channel"], "stable");
}

/// Ctrl-C with stderr a pipe nobody reads any more (`2>&1 | head -1`), during a check
/// that waits on a slow server: the command still ends, exit code 1. The handler used to
/// panic as it said `error[cancelled]`, and the command ran on until the server answered.
#[test]
fn ctrl_c_ends_a_command_whose_stderr_was_closed() {
    let (_repo, server, dev) = served_with_1_1_0("com.acme.sigint.closed");
    let slow = Fault::Trickle {
        bytes: 1,
        every: std::time::Duration::from_millis(500),
    };
    server.set_fault("channels/stable.json", slow);
    let mut child = signals_at_their_default(std::process::Command::new(common::bin()))
        .args(["check", "--config", dev.config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let out = signal_once_requested(child, &server, "channels/stable.json", "-INT");
    assert_eq!(out.status.code(), Some(1), "{:?}", out.status);
}

/// A new device served over HTTP whose `update` of 1.1.0 is interrupted by SIGINT while
/// its blob trickles in; with the blob's path and the update's output (exit code 1).
fn interrupted_download(
    product: &str,
) -> (
    Repo,
    TestServer,
    common::Device,
    String,
    std::process::Output,
) {
    let (repo, server, dev) = served_with_1_1_0(product);
    let (blob, out) = cut_download(&repo, &server, &dev);
    (repo, server, dev, blob, out)
}

/// An update of `dev` interrupted while its blob trickles in, which fails (exit code 1);
/// with the blob's path and the update's output.
fn cut_download(
    repo: &Repo,
    server: &TestServer,
    dev: &common::Device,
) -> (String, std::process::Output) {
    let blob = format!("blobs/sha256/{}", names(&repo.root.join("blobs/sha256"))[0]);
    let slow = Fault::Trickle {
        bytes: 8,
        every: std::time::Duration::from_millis(20),
    };
    server.set_fault(&blob, slow);
    let out = interrupted_update(dev, server, &blob, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    (blob, out)
}

/// Ctrl-C during a download stops it between chunks with `error[cancelled]`; the bytes
/// received are kept, and the next update resumes instead of starting over.
#[test]
fn an_interrupted_download_is_cancelled_and_resumed_by_the_next_update() {
    let (_repo, server, dev, blob, out) = interrupted_download("com.acme.sigint.download");
    let stderr = common::stderr(&out);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "error[cancelled]: interrupted (Ctrl-C, SIGTERM or SIGHUP); what was received is kept"
        ),
        "{stderr}"
    );
    let parts: Vec<_> = names(&dev.state.join("downloads"))
        .into_iter()
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert_eq!(
        parts.len(),
        1,
        "expected the partial download kept, found {parts:?}"
    );
    server.clear_faults();
    dev.expect("update", &["--yes"], 0);
    let resumed = server.requests(&blob);
    assert!(
        resumed.last().unwrap().range.is_some(),
        "expected the next update to resume with a Range request, found {resumed:?}"
    );
    assert_eq!(dev.status()["slots"]["b"]["version"], "1.1.0");
}

/// Off a terminal, `update` says its progress at each quarter (and every 10 s): each line
/// gives the share of the bytes it names. A download resumed at 46 % said "25%" first.
#[test]
fn progress_lines_give_the_share_of_the_bytes_they_name() {
    let (repo, _server, dev) = served_with_1_1_0_of("com.acme.progress.resumed", 8 << 20);
    let sha = names(&repo.root.join("blobs/sha256"))[0].clone();
    let blob = std::fs::read(repo.root.join("blobs/sha256").join(&sha)).unwrap();
    let downloads = dev.state.join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let kept = blob.len() * 46 / 100;
    std::fs::write(downloads.join(format!("{sha}.part")), &blob[..kept]).unwrap();
    let out = dev.run("update", &["--yes"]);
    let stderr = common::stderr(&out);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("% (")).collect();
    assert!(!lines.is_empty(), "no progress line: {stderr}");
    for line in &lines {
        // "evergreen: downloading 1.1.0: 50% (4194304/8388608 bytes, data)"
        let (head, rest) = line.split_once("% (").unwrap();
        let percent: u64 = head.rsplit(' ').next().unwrap().parse().unwrap();
        let (done, total) = rest
            .split_once(" bytes")
            .unwrap()
            .0
            .split_once('/')
            .unwrap();
        let (done, total): (u64, u64) = (done.parse().unwrap(), total.parse().unwrap());
        assert_eq!(percent, done * 100 / total, "{line}");
        assert!(done as usize >= kept, "{line}");
    }
}

/// A release a deploy policy left staged is not written into the slot again by the next
/// `update` (on firmware: the whole partition, at every poll until the window opens).
#[test]
fn a_staged_release_is_not_installed_again_by_the_next_update() {
    use std::os::unix::fs::MetadataExt;
    let (repo, dev) = confirmed_1_0_0("com.acme.staged.once");
    download_only(&dev);
    publish(&repo, "1.0.1", "stable");
    let first = json(&dev.expect("update", &["--yes", "--json"], 0));
    assert_eq!(
        (first["status"].as_str(), first["slot"].as_str()),
        (Some("staged"), Some("a"))
    );
    let file = dev.root.join("slots/a/config/settings-1.0.1.json");
    let inode = std::fs::metadata(&file).unwrap().ino();
    let again = dev.expect("update", &["--yes"], 0);
    assert!(
        again.contains("1.0.1 is already installed in slot a"),
        "{again}"
    );
    // Its offer does not promise a download that will not happen.
    assert!(
        again.contains("already installed in slot a: nothing to download"),
        "{again}"
    );
    assert!(!again.contains("download: "), "{again}");
    let check = dev.expect("check", &[], 10);
    assert!(
        check.contains("already installed in slot a: nothing to download"),
        "{check}"
    );
    let second = json(&dev.expect("update", &["--yes", "--json"], 0));
    assert_eq!(second, first);
    assert_eq!(
        std::fs::metadata(&file).unwrap().ino(),
        inode,
        "the slot was written again"
    );
    dev.expect("activate", &[], 0);
    assert_eq!(dev.status()["slots"]["a"]["status"], "trial");
}

/// A version names one build only within its channel: a release staged from stable is not
/// what `update --channel preview` activates when preview publishes other bytes under the
/// same version. Preview's build is installed over it.
#[test]
fn a_staged_release_of_another_channel_is_not_activated_for_the_same_version() {
    let (repo, dev) = confirmed_1_0_0("com.acme.staged.other");
    download_only(&dev);
    publish(&repo, "1.0.1", "stable");
    dev.expect("update", &["--yes"], 0);
    assert_eq!(dev.status()["slots"]["a"]["status"], "installed");
    let rebuilt = repo.scratch("src").join("preview-build");
    std::fs::create_dir_all(&rebuilt).unwrap();
    let file = rebuilt.join("settings-1.0.1.json");
    std::fs::write(&file, b"{\"version\": \"1.0.1\", \"build\": \"preview\"}").unwrap();
    repo.release(
        "preview",
        "1.0.1",
        "x86_64-linux",
        &[("config", &file)],
        &[],
    );
    let out = dev.expect("update", &["--yes", "--channel", "preview"], 0);
    assert!(!out.contains("already installed"), "{out}");
    let installed = dev.root.join("slots/a/config/settings-1.0.1.json");
    assert_eq!(
        std::fs::read(installed).unwrap(),
        std::fs::read(&file).unwrap()
    );
    dev.expect("activate", &[], 0);
    let status = dev.status();
    assert_eq!(status["slots"]["a"]["status"], "trial", "{status}");
    assert_eq!(status["channel"], "preview", "{status}");
}

/// `check --channel` looks without switching: the device's poll schedule (the last
/// check, the failure backoff) stays that of its own channel.
#[test]
fn a_look_at_another_channel_leaves_the_poll_schedule_alone() {
    let (repo, dev) = confirmed_1_0_0("com.acme.look");
    publish(&repo, "1.1.0", "preview");
    let before = dev.status();
    for _ in 0..3 {
        let out = dev.run("check", &["--channel", "nosuch"]);
        assert!(common::stderr(&out).starts_with("error[not_found]"));
    }
    dev.expect("check", &["--channel", "preview"], 10);
    let after = dev.status();
    for field in ["last_check", "channel"] {
        assert_eq!(after[field], before[field], "{field} moved");
    }
    // No backoff either.
    let state = json(&std::fs::read_to_string(dev.state.join("state.json")).unwrap());
    assert_eq!(state["check_failures"], 0, "{state}");
}

/// A release passed over before it finished downloading leaves a `.part`; the next
/// download (of another release) removes it, so abandoned partials do not pile up one per
/// release until the state's partition is full.
#[test]
fn the_partial_download_of_a_passed_over_release_is_removed_by_the_next_download() {
    let (repo, server, dev, _blob, _out) = interrupted_download("com.acme.partials");
    let partials = || -> Vec<String> {
        names(&dev.state.join("downloads"))
            .into_iter()
            .filter(|n| n.ends_with(".part"))
            .collect()
    };
    assert_eq!(partials().len(), 1);
    server.clear_faults();
    let file = repo.scratch("src").join("data-1.2.0.bin");
    std::fs::write(&file, vec![7u8; 64 * 1024]).unwrap();
    repo.release("stable", "1.2.0", "x86_64-linux", &[("data", &file)], &[]);
    dev.expect("update", &["--yes", "--download-only"], 0);
    assert_eq!(partials(), Vec::<String>::new());
}

/// A repair (`reinstall`) passes over no release: the partial download of the newer
/// release the device was fetching stays, and the next `update` resumes it with a `Range`
/// request instead of fetching the whole blob again over a metered link.
#[test]
fn a_reinstall_keeps_the_partial_download_of_the_release_still_offered() {
    let repo = Repo::new("com.acme.reinstall.partial");
    publish(&repo, "1.0.0", "stable");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("served", &server.url(), serde_json::json!({}));
    for step in ["update", "boot", "confirm"] {
        dev.expect(step, &["--yes"][..usize::from(step == "update")], 0);
    }
    let file = repo.scratch("src").join("data-1.1.0.bin");
    std::fs::write(&file, support::noise(256 * 1024, 11)).unwrap();
    repo.release("stable", "1.1.0", "x86_64-linux", &[("data", &file)], &[]);
    let sha = evergreen::trust::sha256_hex(&std::fs::read(&file).unwrap());
    let blob = format!("blobs/sha256/{sha}");
    let slow = Fault::Trickle {
        bytes: 8,
        every: std::time::Duration::from_millis(20),
    };
    server.set_fault(&blob, slow);
    let out = interrupted_update(&dev, &server, &blob, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    server.clear_faults();
    let part = dev.state.join(format!("downloads/{sha}.part"));
    let kept = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    assert!(kept > 0, "expected a partial download of 1.1.0, found none");
    for step in ["reinstall", "boot", "confirm"] {
        dev.expect(step, &[], 0);
    }
    assert_eq!(
        std::fs::metadata(&part).map(|m| m.len()).ok(),
        Some(kept),
        "expected the reinstall of 1.0.0 to keep the {kept} bytes of 1.1.0's partial download"
    );
    server.clear_log();
    dev.expect("update", &["--yes"], 0);
    let asked = server.requests(&blob);
    assert_eq!(
        asked.iter().map(|r| r.range.clone()).collect::<Vec<_>>(),
        vec![Some(format!("bytes={kept}-"))],
        "expected one request resuming after the {kept} bytes kept, found {asked:?}"
    );
    // The reinstall made slot a primary: 1.1.0 went into b.
    assert_eq!(dev.status()["slots"]["b"]["version"], "1.1.0");
}

/// `next_check` is a time a host can wait for: a device that never checked is due now,
/// and after a failed check the backoff counts from that check, not from whenever the
/// host asks (a host asking every hour was told "later" for ever).
#[test]
fn next_check_comes_due_before_the_first_check_and_after_a_failed_one() {
    let repo = Repo::new("com.acme.due");
    let dev = repo.device("dev", repo.root.to_str().unwrap(), serde_json::json!({}));
    let config = dev.config.to_str().unwrap();
    let t0: evergreen::Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
    let at = |offset_h: i64| t0.plus_secs(offset_h * 3600).to_string();
    let next_check_at = |offset_h: i64| -> i64 {
        let out = common::run_env(
            &["status", "--json", "--config", config],
            &[("EVERGREEN_NOW", &at(offset_h))],
        );
        assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
        let status = json(&String::from_utf8_lossy(&out.stdout));
        let next: evergreen::Timestamp = status["next_check"].as_str().unwrap().parse().unwrap();
        next.unix() - t0.unix()
    };
    assert_eq!(next_check_at(0), 0, "never checked: due now");
    assert_eq!(next_check_at(5), 5 * 3600);

    // Nothing is published: the check fails, and backs off to 12 h ± 25 % from it.
    let out = common::run_env(&["check", "--config", config], &[("EVERGREEN_NOW", &at(0))]);
    assert!(
        common::stderr(&out).contains("error[not_found]"),
        "{}",
        common::stderr(&out)
    );
    for asked in [1, 8, 14] {
        let next = next_check_at(asked);
        assert!(
            (9 * 3600..=15 * 3600).contains(&next),
            "asked {asked} h after the failed check: next check {next} s after it"
        );
    }
}

/// A release on trial that fails must be rolled back even when its app filled the disk:
/// every start of the trial is counted in the state, and a state that cannot be saved would
/// leave the broken release running, uncounted, until someone freed space by hand. The
/// state's spare file takes the saves: the starts are counted and the rollback happens.
#[test]
fn a_trial_on_a_full_disk_is_counted_and_rolled_back() {
    let repo = Repo::new("com.acme.full");
    let scratch = repo.scratch("full");
    // Room for the downloads, the slots and the 1 MiB every free-space check leaves free.
    let Some(_fs) = Mounted::tmpfs(&scratch, 2048) else {
        return;
    };
    publish(&repo, "1.0.0", "stable");
    let dev = repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({"state_dir": scratch.join("state"), "slots": {"kind": "dir", "root": scratch.join("app")}}),
    );
    for step in [&["update", "--yes"][..], &["boot"], &["confirm"]] {
        dev.expect(step[0], &step[1..], 0);
    }
    publish(&repo, "1.1.0", "stable");
    dev.expect("update", &["--yes"], 0);
    let tries = dev.status()["trial"]["tries_left"].as_u64().unwrap();
    assert!(tries > 0);
    mounts::fill(&scratch);
    for left in (0..tries).rev() {
        dev.expect("boot", &[], 0);
        assert_eq!(
            dev.status()["trial"]["tries_left"],
            left,
            "start not counted"
        );
    }
    let out = json(&dev.expect("boot", &["--json"], 0));
    assert_eq!(out["status"], "rolled_back", "{out}");
    let s = dev.status();
    assert_eq!(s["primary"], "b", "{s}");
    assert_eq!(s["slots"]["a"]["status"], "bad", "{s}");
    assert!(s["trial"].is_null(), "{s}");
    let current = std::fs::read_link(scratch.join("app/current")).unwrap();
    assert!(current.ends_with("b"), "current → {}", current.display());
    // The disk is still full, and the state still saves: confirm the fallback again.
    dev.expect("boot", &[], 0);
}

/// Publishes `version` with one zip component, `app`, holding `len` pseudo-random bytes
/// (which deflate cannot shrink) seeded by `seed`.
fn publish_big(repo: &Repo, version: &str, len: usize, seed: u64) {
    let data = support::noise(len, seed);
    let zip = repo.scratch("src").join(format!("app-{version}.zip"));
    common::make_zip(&zip, &[("data.bin", &data)]);
    let spec = format!("{}:zip", zip.display());
    repo.release(
        "stable",
        version,
        "x86_64-linux",
        &[("app", Path::new(&spec))],
        &[],
    );
}

/// A release the slots' file system has no room for is refused before the idle slot is
/// marked `installing` or emptied: it holds the fallback, the last good release, which an
/// extraction that filled the file system used to lose (and the app's logs had no room
/// meanwhile). `io`, naming the room needed and the room found. The idle slot's own
/// release is room that emptying it gives back: a release that fits only then goes in.
#[test]
fn a_release_the_slots_have_no_room_for_is_refused_before_the_idle_slot_is_touched() {
    const KIB: usize = 1024;
    let repo = Repo::new("com.acme.room");
    let small = repo.scratch("small");
    let Some(_fs) = Mounted::tmpfs(&small, 5 * 1024) else {
        return;
    };
    // The state (and the downloads) elsewhere: only the slots are on the small file system.
    let app = small.join("app");
    let dev = repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({"slots": {"kind": "dir", "root": app}}),
    );
    // 1.5 MiB in each slot; about 2 MiB left, less than 1.1.0 and the 1 MiB reserve take.
    for (seed, version) in [(1, "1.0.0"), (2, "1.0.1"), (3, "1.1.0")] {
        publish_big(&repo, version, 1536 * KIB, seed);
        for step in [&["update", "--yes"][..], &["boot"], &["confirm"]] {
            dev.expect(step[0], &step[1..], 0);
        }
    }
    let s = dev.status();
    assert_eq!(s["primary"], "b", "{s}");
    assert_eq!(s["slots"]["a"]["version"], "1.0.1", "{s}");

    // 4 MiB: no room, even once slot a's 1.5 MiB are given back. Its signed installed_size
    // says so before the download.
    publish_big(&repo, "1.2.0", 4096 * KIB, 4);
    let idle = common::tree_digest(&app.join("slots/a"));
    assert!(idle.contains_key("app/data.bin"), "{idle:?}");
    let err = dev.fails("update", &["--yes"]);
    let line = err.lines().last().unwrap();
    assert!(
        line.starts_with("error[io]: downloading 1.2.0 for slot a: expected room for ")
            && line.contains(&format!(
                " bytes in {}, found ",
                app.join("slots").display()
            ))
            && line.contains(" more that emptying slot a would give back (the release unpacks to at least ")
            && line.ends_with(
                "and 1048576 are kept free so the state can still be saved); nothing was downloaded: free space and update again"
            ),
        "{err}"
    );
    assert_eq!(common::tree_digest(&app.join("slots/a")), idle);
    let s = dev.status();
    assert_eq!(s["slots"]["a"]["status"], "good", "{s}");
    assert_eq!(s["slots"]["a"]["version"], "1.0.1", "{s}");
    assert!(!app.join("slots/.trash-a").exists());
    // The fallback is still one to go back to.
    let out = json(&dev.expect("rollback", &["--json"], 0));
    assert_eq!(out["to"], "a", "{out}");
}

/// A release of several blobs that the downloads' file system has no room for, together,
/// is refused before the first of them is fetched: the manifest gives every size. Checked
/// one blob at a time, the first one fitted and was downloaded whole (bandwidth a field
/// device on a metered link pays for, and room the app's logs lose), and the second was
/// refused only then. Once room is made, the same update goes through.
#[test]
fn a_release_whose_blobs_together_have_no_room_is_refused_before_the_first_is_fetched() {
    const KIB: usize = 1024;
    let repo = Repo::new("com.acme.blobs");
    let small = repo.scratch("small");
    let Some(_fs) = Mounted::tmpfs(&small, 4 * 1024) else {
        return;
    };
    // The state (and the downloads) on the small file system, the slots elsewhere.
    let state = small.join("state");
    let dev = repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({ "state_dir": state }),
    );
    // Two blobs of 1.2 MiB each: either fits beside the reserve, both do not.
    let src = repo.scratch("src");
    let mut components = Vec::new();
    for (seed, name) in [(1, "app"), (2, "data")] {
        let zip = src.join(format!("{name}.zip"));
        common::make_zip(&zip, &[("data.bin", &support::noise(1229 * KIB, seed))]);
        components.push((name, format!("{}:zip", zip.display())));
    }
    let components: Vec<(&str, &Path)> = components
        .iter()
        .map(|(n, s)| (*n, Path::new(s.as_str())))
        .collect();
    repo.release("stable", "1.0.0", "x86_64-linux", &components, &[]);
    // The app's logs take 1 MiB.
    let log = small.join("app.log");
    std::fs::write(&log, vec![b'x'; 1024 * KIB]).unwrap();

    let err = dev.fails("update", &["--yes"]);
    let line = err.lines().last().unwrap();
    assert!(
        line.starts_with("error[io]: downloading ")
            && line.contains(&format!(
                " bytes in {}, found ",
                state.join("downloads").display()
            ))
            && line.contains(" bytes of the 2 downloads still to fetch, and 1048576 kept free")
            && line.ends_with("; nothing was written: free space and update again"),
        "{err}"
    );
    let fetched = names_in(&state.join("downloads"));
    assert!(
        fetched.is_empty(),
        "fetched before the refusal: {fetched:?}"
    );

    std::fs::remove_file(&log).unwrap();
    dev.expect("update", &["--yes"], 0);
    let s = dev.status();
    let slot = s["primary"].as_str().unwrap();
    assert_eq!(s["slots"][slot]["version"], "1.0.0", "{s}");
}

/// A device whose state, downloads and slots share one tmpfs of `kib` KiB, under a new
/// repository of `product`; `None` where no tmpfs can be mounted (the test is skipped).
/// Bound in this order, the file system is unmounted before the repository's directory,
/// which holds its mount point, is removed.
fn device_on_one_small_fs(product: &str, kib: u64) -> Option<(Repo, common::Device, Mounted)> {
    let repo = Repo::new(product);
    let small = repo.scratch("small");
    let fs = Mounted::tmpfs(&small, kib)?;
    let config = serde_json::json!({"state_dir": small.join("state"), "slots": {"kind": "dir", "root": small.join("app")}});
    let dev = repo.device("dev", repo.root.to_str().unwrap(), config);
    Some((repo, dev, fs))
}

/// A release that unpacks to more than the slots' file system can hold, even once the idle
/// slot is emptied, is refused before a byte of it is downloaded: the signed manifest gives
/// each zip's `installed_size`, as it gives an image's size, which image slots check before
/// their download. Checked only at the install, the whole download was fetched first (over
/// a metered link, for nothing) and kept, holding room on a file system already short of it.
#[test]
fn a_release_the_slots_cannot_hold_is_refused_before_it_is_downloaded() {
    const KIB: usize = 1024;
    let Some((repo, dev, _fs)) = device_on_one_small_fs("com.acme.unpacked", 4 * 1024) else {
        return;
    };
    // 1.2 MiB to download, which fits; 3 MiB unpacked, which with the 1 MiB reserve does not.
    let mut data = support::noise(1200 * KIB, 5);
    data.resize(3000 * KIB, 0);
    let zip = repo.scratch("src").join("app.zip");
    common::make_zip(&zip, &[("data.bin", &data)]);
    let spec = format!("{}:zip", zip.display());
    repo.release(
        "stable",
        "1.0.0",
        "x86_64-linux",
        &[("app", Path::new(&spec))],
        &[],
    );

    let err = dev.fails("update", &["--yes"]);
    let line = err.lines().last().unwrap();
    assert!(
        line.starts_with("error[io]: downloading 1.0.0 for slot b: expected room for ")
            && line.contains(&format!(
                " bytes in {}, found ",
                dev.root.join("slots").display()
            ))
            && line.contains(" more that emptying slot b would give back (the release unpacks to at least 3072000 bytes")
            && line.ends_with("; nothing was downloaded: free space and update again"),
        "{err}"
    );
    let fetched = names_in(&dev.state.join("downloads"));
    assert!(
        fetched.is_empty(),
        "downloaded before the refusal: {fetched:?}"
    );
    assert_eq!(dev.status()["slots"]["b"]["status"], "empty");
}

/// What is downloaded already, in part or whole, takes no more room on the file system:
/// the room check before a download counts only the bytes still to fetch. Counted again,
/// a release that fits was refused for want of the room its own download holds (a part
/// left by a cut link, a release fetched with `update --download-only`).
#[test]
fn what_is_downloaded_already_is_not_counted_again_by_the_room_check() {
    const KIB: usize = 1024;
    // 1 MiB to download and 1 MiB unpacked with the 1 MiB reserve fit in 3.5 MiB; counting
    // the 0.6 MiB part, or the whole download, a second time does not.
    let Some((repo, dev, _fs)) = device_on_one_small_fs("com.acme.downloaded", 3584) else {
        return;
    };
    publish_big(&repo, "1.0.0", 1000 * KIB, 6);
    let sha = names(&repo.root.join("blobs/sha256"))[0].clone();
    let blob = std::fs::read(repo.root.join("blobs/sha256").join(&sha)).unwrap();
    let downloads = dev.state.join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    std::fs::write(downloads.join(format!("{sha}.part")), &blob[..600 * KIB]).unwrap();

    dev.expect("update", &["--download-only"], 0);
    assert_eq!(names(&downloads), [sha]);
    dev.expect("update", &["--yes"], 0);
    let s = dev.status();
    assert_eq!(s["slots"]["b"]["version"], "1.0.0", "{s}");
}

/// A device whose state directory is on an SD card's exFAT (no hard links, no symlinks,
/// no `RENAME_NOREPLACE`, no `RENAME_EXCHANGE`): installed, started, confirmed and updated
/// again. A repository cannot be made there (`init` creates files that must never replace
/// another, which takes a hard link or `RENAME_NOREPLACE`): refused by name, leaving no
/// root or temp file behind.
#[test]
fn a_state_directory_on_exfat_works_and_a_repository_there_is_refused_by_name() {
    let card = tempfile::tempdir().unwrap();
    let at = card.path().join("mnt");
    let Some(_fs) = Mounted::exfat(&card.path().join("card.img"), 64, &at) else {
        return;
    };
    let repo = Repo::new("com.acme.card");
    let dev = repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({"state_dir": at.join("state")}),
    );
    for version in ["1.0.0", "1.1.0"] {
        publish(&repo, version, "stable");
        for step in [&["update", "--yes"][..], &["boot"], &["confirm"]] {
            dev.expect(step[0], &step[1..], 0);
        }
        let s = dev.status();
        assert_eq!(
            s["slots"][s["primary"].as_str().unwrap()],
            serde_json::json!({"status": "good", "version": version}),
            "{s}"
        );
    }

    let key = repo.root_key.to_str().unwrap();
    let out = common::run(&[
        "init",
        at.join("repo").to_str().unwrap(),
        "--product",
        "p",
        "--root-key",
        &format!("{key}.pub"),
        "--root-threshold",
        "1",
        "--manifest-key",
        &format!("{}.pub", repo.manifest_key.display()),
        "--sign",
        key,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.starts_with("error[io]") && err.contains("expected a file system with hard links"),
        "{err}"
    );
    // Only the repository's lock file: no root, and no temp file.
    let left = common::tree_digest(&at.join("repo"));
    assert_eq!(left.keys().collect::<Vec<_>>(), [".lock"]);
}

/// docs/firmware.md tells a device with untrusted local users to make the state directory
/// the updater's alone (0700) before the first run: Evergreen must work in it and leave its
/// mode as it is, or the advice would not hold past the first update.
#[test]
fn a_state_directory_made_private_stays_private_through_an_update() {
    use std::os::unix::fs::PermissionsExt;
    let repo = Repo::new("com.acme.private");
    publish(&repo, "1.0.0", "stable");
    let state = repo.scratch("private-state");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let dev = repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({"state_dir": state}),
    );
    for step in [&["update", "--yes"][..], &["boot"], &["confirm"]] {
        dev.expect(step[0], &step[1..], 0);
    }
    assert!(state.join("state.json").is_file());
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "state directory mode {mode:o}");
}

/// `evergreen check` while another process downloads (and holds the work lock) says what it
/// waits for on stderr, then does its check once the lock is free.
#[test]
fn a_check_that_waits_for_a_running_download_says_so() {
    let repo = Repo::new("com.acme.cli");
    publish(&repo, "1.0.0", "stable");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    dev.expect("check", &[], 10);
    let lock = dev.state.join("work.lock");
    // The holder, this test's process, is named: the check runs under it.
    let said = format!(
        "evergreen: waiting for another Evergreen operation to finish (a check, download or install; lock {}); held by process {} (",
        lock.display(),
        std::process::id()
    );
    // In text and in JSON mode alike (stdout keeps its one JSON document).
    for as_json in [false, true] {
        let held = std::fs::File::open(&lock).unwrap();
        held.lock().unwrap();
        let mut cmd = std::process::Command::new(common::bin());
        cmd.args(["check", "--config"]).arg(&dev.config);
        if as_json {
            cmd.arg("--json");
        }
        let mut check = common::Watched::start(&mut cmd);
        let line = check.wait_for_line("waiting for");
        assert!(line.starts_with(&said), "--json: {as_json}: {line}");
        drop(held);
        let out = check.finish();
        assert_eq!(out.status.code(), Some(10), "the check after the wait");
        let stdout = String::from_utf8_lossy(&out.stdout);
        match as_json {
            false => assert!(stdout.contains("-> 1.0.0"), "{stdout}"),
            true => assert_eq!(json(&stdout)["version"], "1.0.0"),
        }
        assert!(
            !common::stderr(&out).contains("waiting for"),
            "said it once"
        );
    }
}

/// Whether this process may run a command as `nobody` (setpriv, as root); says so when not.
fn can_act_as_nobody() -> bool {
    let args = ["--reuid=65534", "--regid=65534", "--clear-groups", "true"];
    let can = require::tool_succeeds(std::process::Command::new("setpriv").args(args));
    if !can {
        require::missing("setpriv, run as root (to act as another user)");
    }
    can
}

/// The uid (and gid) of `nobody`, as whom [`as_nobody`] runs the CLI.
const NOBODY: u32 = 65534;

/// Runs `evergreen <cmd> <args> --config <dev's>` as `nobody` (see [`can_act_as_nobody`]).
fn as_nobody(dev: &common::Device, cmd: &str, args: &[&str]) -> std::process::Output {
    let mut setpriv = std::process::Command::new("setpriv");
    setpriv.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    setpriv.arg(common::bin()).arg(cmd).args(args);
    setpriv.arg("--config").arg(&dev.config);
    common::output_within(&mut setpriv, common::CLI_LIMIT)
}

/// The state directory of an app's own user, where root also works (a systemd unit runs
/// `evergreen boot`, an admin `sudo evergreen confirm`): each takes the locks the other
/// left. The owner's lock files are the owner's alone (0600), and root's there stay open
/// to the owner (before, root made them 0600 too and locked the owner out of every
/// operation, the startup step included).
#[test]
fn root_and_the_user_who_owns_the_state_both_take_its_locks() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !can_act_as_nobody() {
        return;
    }
    let repo = Repo::new("com.acme.cli");
    publish(&repo, "1.0.0", "stable");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    // The user may reach the device's files; the state directory is the user's, 0755.
    std::fs::set_permissions(repo.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(&dev.state).unwrap();
    std::os::unix::fs::chown(&dev.state, Some(NOBODY), Some(NOBODY)).unwrap();
    let as_user = |cmd: &str| as_nobody(&dev, cmd, &[]);
    let umask = {
        let out = std::process::Command::new("sh")
            .args(["-c", "umask"])
            .output()
            .unwrap();
        u32::from_str_radix(String::from_utf8_lossy(&out.stdout).trim(), 8).unwrap()
    };
    let lock_files = || {
        ["lock", "work.lock"].map(|name| {
            let meta = std::fs::metadata(dev.state.join(name)).unwrap();
            (meta.uid(), meta.permissions().mode() & 0o777)
        })
    };

    // The owner first: lock files only the owner may open; root takes them as they are.
    let out = as_user("check");
    assert_eq!(out.status.code(), Some(10), "{}", common::stderr(&out));
    assert_eq!(lock_files(), [(NOBODY, 0o600); 2]);
    dev.expect("check", &[], 10);
    assert_eq!(
        lock_files(),
        [(NOBODY, 0o600); 2],
        "root changed the owner's lock files"
    );

    // Root first: lock files the owner can still open (read-only is enough to lock).
    for name in ["lock", "work.lock"] {
        std::fs::remove_file(dev.state.join(name)).unwrap();
    }
    dev.expect("check", &[], 10);
    assert_eq!(lock_files(), [(0, 0o644 & !umask); 2]);
    let out = as_user("check");
    assert_eq!(
        out.status.code(),
        Some(10),
        "the owner, after root made the lock files: {}",
        common::stderr(&out)
    );
}

/// Root's download cut short in the app user's state directory (`sudo evergreen update`,
/// then Ctrl-C) leaves a `.part` there, which the user's own update resumes. Root's
/// `.part` was root's, and every update of the user's failed to open it for writing
/// (`Permission denied`) until one of root's finished the download.
#[test]
fn the_owner_resumes_a_download_root_cut_short() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !can_act_as_nobody() {
        return;
    }
    let (repo, server, dev) = served_with_1_1_0("com.acme.part.owner");
    // The user may reach the device's files; its state and slot root are the user's.
    std::fs::set_permissions(repo.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for dir in [&dev.state, &dev.root] {
        std::fs::create_dir_all(dir).unwrap();
        std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let (blob, _) = cut_download(&repo, &server, &dev);
    server.clear_faults();
    let parts: Vec<_> = std::fs::read_dir(dev.state.join("downloads"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .map(|e| (e.file_name(), e.metadata().unwrap().uid()))
        .collect();
    assert_eq!(
        parts.len(),
        1,
        "expected root's partial download, found {parts:?}"
    );
    let out = as_nobody(&dev, "update", &["--yes"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the owner's update after root's was cut short ({parts:?}): {}",
        common::stderr(&out)
    );
    let resumed = server.requests(&blob);
    assert!(
        resumed.last().unwrap().range.is_some(),
        "expected the owner's update to resume with a Range request, found {resumed:?}"
    );
}

/// `activate` says in text what `update` says of the same switch: the version deferred and
/// until when, or the version activated with the slot and what to do next (restart, then
/// confirm). It printed a bare `deferred` or `activated`. Its JSON names the version
/// deferred too, as `update`'s does: it named none, so a script could not tell a release
/// waiting for its time from one withheld since.
#[test]
fn activate_in_text_says_what_update_says() {
    let (repo, dev) = confirmed_1_0_0("com.acme.activate.text");
    dev.edit_config(|c| {
        c["deploy"] = serde_json::json!({"policy": "at", "at": "2099-01-01T00:00:00Z"})
    });
    publish(&repo, "1.0.1", "stable");
    let update = dev.expect("update", &["--yes"], 0);
    let deferred = json(&dev.expect("activate", &["--json"], 0));
    assert_eq!(
        deferred,
        serde_json::json!({"status": "deferred", "version": "1.0.1", "until": "2099-01-01T00:00:00Z",
            "reason": "the deploy policy activates at 2099-01-01T00:00:00Z"})
    );
    let deferred = dev.expect("activate", &[], 0);
    for text in [&update, &deferred] {
        assert!(text.contains("deferred: 1.0.1\n"), "{text}");
        assert!(text.contains("until 2099-01-01T00:00:00Z"), "{text}");
        assert!(text.contains("the deploy policy activates at"), "{text}");
    }
    let activated = dev.expect("activate", &["--now"], 0);
    assert!(activated.starts_with("activated: 1.0.1\n"), "{activated}");
    assert!(
        activated.contains("restart into slot a")
            && activated.contains("then run `evergreen confirm` once healthy"),
        "{activated}"
    );
    assert_eq!(dev.status()["slots"]["a"]["status"], "trial");
}

/// A download with stderr not a terminal (a journal, a log file) says where it is in
/// plain lines: a start line naming the components and their sizes, a few milestones and
/// a done line, on stderr only; the progress bar is for terminals. Nothing of it with
/// `--json`, whose stderr is the error line alone. Such a download was silent.
#[test]
fn a_download_off_a_terminal_prints_plain_milestones_on_stderr() {
    let repo = Repo::new("com.acme.milestones");
    let src = repo.scratch("src");
    let big = src.join("app.bin");
    let body: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    std::fs::write(&big, &body).unwrap();
    let small = src.join("settings.json");
    std::fs::write(&small, b"{}").unwrap();
    repo.release(
        "stable",
        "1.0.0",
        "x86_64-linux",
        &[("app", &big), ("settings", &small)],
        &[],
    );
    let server = TestServer::serve(&repo.root);

    let dev = repo.device("text", &server.url(), serde_json::json!({}));
    let out = dev.run("update", &["--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("evergreen:") && !stdout.contains('%'),
        "progress on stdout: {stdout}"
    );
    let err = common::stderr(&out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("evergreen: download"))
        .collect();
    let total = body.len() + 2;
    assert_eq!(
        lines.first().copied(),
        Some(
            format!(
                "evergreen: downloading 1.0.0: {total} bytes (app {} bytes, settings 2 bytes)",
                body.len()
            )
            .as_str()
        ),
        "{err}"
    );
    // One line as each quarter is passed, saying the share of the bytes it names.
    let shares: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.split_once("% (").map(|(head, _)| head))
        .map(|head| head.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(shares.len(), 3, "expected three milestones: {err}");
    for (share, quarter) in shares.iter().zip(1u64..) {
        assert_eq!(
            share / 25,
            quarter,
            "expected a line in quarter {quarter}: {err}"
        );
    }
    assert_eq!(
        lines.last().copied(),
        Some(format!("evergreen: downloaded 1.0.0: {total} bytes").as_str()),
        "{err}"
    );
    assert!(
        lines.len() <= 6,
        "expected a few lines, found {}: {err}",
        lines.len()
    );

    let quiet = repo.device("json", &server.url(), serde_json::json!({}));
    let out = quiet.run("update", &["--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_eq!(common::stderr(&out), "", "--json prints no progress");
    json(&String::from_utf8_lossy(&out.stdout));
}

/// A `trust.root` that holds another signed document (a channel manifest copied by
/// mistake) is named in the error, with the config key, as what it is: serde's complaint
/// about the manifest's fields said neither which file nor that it was the wrong kind.
#[test]
fn a_trust_root_that_is_a_manifest_is_named_as_such() {
    let repo = Repo::new("com.acme.wrong.root");
    publish(&repo, "1.0.0", "stable");
    let dev = repo.device("dev", repo.root.to_str().unwrap(), serde_json::json!({}));
    let manifest = repo.root.join("channels/stable.json");
    dev.edit_config(|c| c["trust"]["root"] = serde_json::json!(manifest));
    let err = dev.fails("check", &[]);
    let line = err.lines().last().unwrap();
    assert!(line.starts_with("error[wrong_metadata]: "), "{err}");
    assert!(
        line.contains(&format!("`trust.root` {}", manifest.display())),
        "expected the file and its config key named: {line}"
    );
    assert!(
        line.contains(
            r#"expected payloadType "application/vnd.evergreen.root+json", found "application/vnd.evergreen.manifest+json""#
        ),
        "expected what the file is: {line}"
    );
    assert!(!line.contains("unknown field"), "{line}");
}

/// A device whose `target` no release of its channel carries (a misspelt target) is told
/// so, on stderr in text and as `target_released: false` in `--json`: it read as up to
/// date, exit 0 and nothing more, forever, as a device with nothing new to install does.
#[test]
fn a_target_the_channel_has_no_release_for_is_said_on_check_and_update() {
    let repo = Repo::new("com.acme.no.target");
    publish(&repo, "1.0.0", "stable");
    let dev = repo.device(
        "dev",
        repo.root.to_str().unwrap(),
        serde_json::json!({"target": "arm-linux"}),
    );
    let note = "note: channel stable has no release for target arm-linux (its releases are for x86_64-linux)";
    for cmd in ["check", "update"] {
        let out = dev.run(cmd, &["--yes"][..usize::from(cmd == "update")]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{cmd}: {}",
            common::stderr(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("up to date"),
            "{cmd}"
        );
        let err = common::stderr(&out);
        assert_eq!(
            err.lines().filter(|l| *l == note).count(),
            1,
            "{cmd}: {err}"
        );
        let out = json(&dev.expect(
            cmd,
            &["--json", "--yes"][..1 + usize::from(cmd == "update")],
            0,
        ));
        assert_eq!(out["status"], "up_to_date", "{cmd}: {out}");
        assert_eq!(out["target_released"], false, "{cmd}: {out}");
    }
    // A device the channel has releases for: up to date or not, the field says so.
    let ok = repo.device("ok", repo.root.to_str().unwrap(), serde_json::json!({}));
    let offer = json(&ok.expect("check", &["--json"], 10));
    assert_eq!(offer["target_released"], true, "{offer}");
    ok.expect("update", &["--yes"], 0);
    let out = ok.run("check", &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !common::stderr(&out).contains("note:"),
        "{}",
        common::stderr(&out)
    );
    let up = json(&ok.expect("check", &["--json"], 0));
    assert_eq!(up["target_released"], true, "{up}");
}

/// A library host tells the two "up to date"s apart from the check's result, as the CLI's
/// `target_released` does: `false` for a target no release of the channel carries (an
/// "up to date" for good), `true` for one with nothing newer yet.
#[test]
fn a_library_check_says_whether_the_channel_has_a_release_for_the_target() {
    let repo = Repo::new("com.acme.no.target.lib");
    publish(&repo, "1.0.0", "stable");
    let check = |dev: &common::Device| {
        let config = evergreen::Config::from_file(&dev.config).unwrap();
        evergreen::Updater::builder(config)
            .build()
            .unwrap()
            .check()
            .unwrap()
    };
    let server = repo.root.to_str().unwrap();
    let misspelt = repo.device("dev", server, serde_json::json!({"target": "arm-linux"}));
    let found = check(&misspelt);
    assert!(
        matches!(
            found,
            evergreen::Check::UpToDate {
                target_released: false,
                ..
            }
        ),
        "{found:?}"
    );
    let ok = repo.device("ok", server, serde_json::json!({}));
    ok.expect("update", &["--yes"], 0);
    let found = check(&ok);
    assert!(
        matches!(
            found,
            evergreen::Check::UpToDate {
                target_released: true,
                ..
            }
        ),
        "{found:?}"
    );
}

/// A release rolled back while it runs (by hand, or by a startup step inside the app) is
/// not confirmed by its own health check that passes afterwards: `confirm` used to exit 0
/// with `"status": "good"`, though the release it ran for is bad and never runs again.
#[test]
fn a_release_rolled_back_while_it_runs_is_not_told_it_is_confirmed() {
    let (repo, dev) = confirmed_1_0_0("com.acme.confirm-after-rollback");
    publish(&repo, "1.1.0", "stable");
    dev.expect("update", &["--yes"], 0);
    dev.expect("boot", &[], 0);
    dev.expect("rollback", &[], 0);
    assert_eq!(dev.status()["booted"], "a");
    let out = dev.run("confirm", &["--json"]);
    let err = common::stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.starts_with("error[invalid_state]: expected the running slot a"),
        "{err}"
    );
    // Once restarted into the primary, its health check confirms as ever.
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
}

/// Each component of a dir slot is a directory: two names a case-insensitive file system
/// takes for one (`sys` and `ſys`, which the publisher refuses, in a manifest made by
/// hand) are refused before anything is downloaded or the idle slot is touched.
#[test]
fn components_one_directory_apart_only_by_case_are_refused_before_the_slot_is_touched() {
    let (repo, dev) = confirmed_1_0_0("com.acme.folded");
    let src = repo.scratch("src");
    let (one, two) = (src.join("one.json"), src.join("two.json"));
    std::fs::write(&one, b"{\"one\": 1}").unwrap();
    std::fs::write(&two, b"{\"two\": 2}").unwrap();
    repo.release(
        "stable",
        "1.0.1",
        "x86_64-linux",
        &[("sys", &one), ("other", &two)],
        &[],
    );
    repo.edit_channel("stable", |m| {
        let release = m
            .releases
            .iter_mut()
            .find(|r| r.version.minor == 0 && r.version.patch == 1);
        let target = release.unwrap().targets.get_mut("x86_64-linux").unwrap();
        let other = target.components.remove("other").unwrap();
        target.components.insert("\u{17f}ys", other);
    });
    let idle = dev.root.join("slots/a");
    let digest = || idle.exists().then(|| common::tree_digest(&idle));
    let before = digest();
    let out = dev.run("update", &["--yes"]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.lines().last().unwrap().starts_with("error[wrong_metadata]: dir slots: expected each component of 1.0.1 once, also ignoring case, found"),
        "{err}"
    );
    assert_eq!(digest(), before, "the idle slot was touched");
    let status = dev.status();
    assert_eq!(status["slots"]["b"]["status"], "good");
    assert_eq!(status["slots"]["a"]["status"], "empty");
}

/// Publishes `version` on `channel`: an app zip (its data drawn from `seed`) and a config
/// file. Returns the app's bytes and the config's.
fn release_app_and_config(
    repo: &Repo,
    channel: &str,
    version: &str,
    seed: u64,
) -> (Vec<u8>, Vec<u8>) {
    let src = repo.scratch("src");
    let app = src.join(format!("app-{version}.zip"));
    let body = support::noise(50_000, seed);
    common::make_zip(&app, &[("run.sh", version.as_bytes()), ("data", &body)]);
    let cfg = src.join(format!("settings-{version}.json"));
    std::fs::write(&cfg, format!("{{\"v\": \"{version}\"}}")).unwrap();
    let components: [(&str, &Path); 2] = [("app", &app), ("config", &cfg)];
    repo.release(channel, version, "x86_64-linux", &components, &[]);
    (std::fs::read(&app).unwrap(), std::fs::read(&cfg).unwrap())
}

/// The name of the blob in `repo` holding `bytes`: its SHA-256.
fn blob_holding(repo: &Repo, bytes: &[u8]) -> String {
    let found = std::fs::read_dir(repo.root.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .find(|e| std::fs::read(e.path()).unwrap() == bytes);
    found.unwrap().file_name().to_string_lossy().into_owned()
}

/// A device that tries a riskier channel and goes back: the downloads of a release it left
/// there before it could install them (a blob that failed, the user gone back to stable)
/// go at its next confirmation, as those of any release passed over do. They were kept as
/// long as that release stayed newer than the one confirmed, which on the channel gone
/// back to may be for ever, and each such try kept its own.
#[test]
fn downloads_of_a_release_left_on_another_channel_go_at_the_next_confirmation() {
    let repo = Repo::new("com.acme.leftbehind");
    let release = |channel: &str, version: &str| {
        release_app_and_config(&repo, channel, version, version.len() as u64).1
    };
    // The path of the blob in the repository holding `bytes`.
    let blob_of = |bytes: &[u8]| format!("blobs/sha256/{}", blob_holding(&repo, bytes));
    release("stable", "1.0.0");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    let update_boot_confirm = || {
        for step in [&["update", "--yes"][..], &["boot"], &["confirm"]] {
            dev.expect(step[0], &step[1..], 0);
        }
    };
    update_boot_confirm();

    let mut stable = 0;
    for nightly in ["5.0.0", "6.0.0"] {
        // The app's blob arrives, the config's does not.
        let config = release("nightly", nightly);
        server.set_fault(&blob_of(&config), Fault::Status(404));
        let err = dev.fails("update", &["--yes", "--channel", "nightly"]);
        assert!(err.contains("error[not_found]"), "{err}");
        server.clear_faults();
        dev.expect("channel", &["stable"], 0);
        for _ in 0..2 {
            stable += 1;
            release("stable", &format!("1.{stable}.0"));
            update_boot_confirm();
        }
        let primary = dev.status()["primary"].as_str().unwrap().to_string();
        let mut installed = vec![
            dev.installed_sha256(&primary, "app"),
            dev.installed_sha256(&primary, "config"),
        ];
        installed.sort();
        assert_eq!(
            dev.downloads(),
            installed,
            "expected only the downloads 1.{stable}.0 was installed from, after {nightly} was left on nightly"
        );
    }
}

/// A repair of the running release passes over no release: the finished downloads of the
/// next one, fetched before the repair (an update whose other blob failed, to be resumed),
/// are still what that update needs, and stay as they did before the repair's download.
#[test]
fn downloads_of_the_next_release_survive_a_repair_of_the_running_one() {
    let repo = Repo::new("com.acme.repairkeeps");
    // The release's app and config files.
    let release =
        |version: &str| release_app_and_config(&repo, "stable", version, version.len() as u64 + 7);
    let blob_of = |bytes: &[u8]| blob_holding(&repo, bytes);
    release("1.0.0");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    for step in [&["update", "--yes"][..], &["boot"], &["confirm"]] {
        dev.expect(step[0], &step[1..], 0);
    }
    // 2.0.0's app arrives, its config does not.
    let (app, config) = release("2.0.0");
    let (app, config) = (blob_of(&app), blob_of(&config));
    server.set_fault(&format!("blobs/sha256/{config}"), Fault::Status(404));
    let err = dev.fails("update", &["--yes"]);
    assert!(err.contains("error[not_found]"), "{err}");
    server.clear_faults();
    assert!(dev.downloads().contains(&app), "{:?}", dev.downloads());
    // The app's files are damaged: 1.0.0 again, confirmed.
    for step in ["reinstall", "boot", "confirm"] {
        dev.expect(step, &[], 0);
    }
    assert!(
        dev.downloads().contains(&app),
        "2.0.0's app blob, downloaded before the repair of 1.0.0, is gone: {:?}",
        dev.downloads()
    );
}

/// `sudo evergreen update` on an app whose slot root is its user's: what root installs
/// there is the user's, as if the user had installed it, so the user's own updates can
/// later clear and replace that slot. Root's files and directories were root's, and the
/// user's first install into that slot failed to clear it (`Permission denied`).
#[test]
fn what_root_installs_in_the_users_slot_root_is_the_users() {
    use common::zips::{build, Item};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !can_act_as_nobody() {
        return;
    }
    let repo = Repo::new("com.acme.slot.owner");
    let src = repo.scratch("src");
    let zip_of = |version: &str| {
        let path = src.join(format!("app-{version}.zip"));
        let items = [
            Item::Dir("bin/"),
            Item::File("bin/app", version.as_bytes(), 0o755),
            Item::Dir("share/"),
            Item::Dir("share/data/"),
            Item::File("share/data/notes.txt", b"notes", 0o444),
        ];
        std::fs::write(&path, build(&items)).unwrap();
        path
    };
    let release = |version: &str| {
        let zip = zip_of(version);
        repo.release("stable", version, "x86_64-linux", &[("app", &zip)], &[]);
    };
    release("1.1.0");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    std::fs::set_permissions(repo.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for dir in [&dev.state, &dev.root] {
        std::fs::create_dir_all(dir).unwrap();
        std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let as_user = |cmd: &str, args: &[&str]| {
        let out = as_nobody(&dev, cmd, args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "the owner's {cmd} after root's update: {}",
            common::stderr(&out)
        );
    };

    dev.expect("update", &["--yes"], 0);
    let mut roots = Vec::new();
    let mut walk = vec![dev.root.clone()];
    while let Some(dir) = walk.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.path().symlink_metadata().unwrap();
            if (meta.uid(), meta.gid()) != (NOBODY, NOBODY) {
                roots.push((entry.path(), meta.uid(), meta.gid()));
            }
            if meta.is_dir() {
                walk.push(entry.path());
            }
        }
    }
    assert_eq!(
        roots,
        [],
        "root's install left entries that are not the owner's"
    );

    // The user's own updates reach the slot root's install again, and replace it.
    for version in ["1.2.0", "1.3.0"] {
        as_user("boot", &[]);
        as_user("confirm", &[]);
        release(version);
        as_user("update", &["--yes"]);
    }
    as_user("update", &["--yes"]);
    let status = dev.status();
    assert_eq!(
        (&status["primary"], &status["slots"]["b"]["version"]),
        (&"b".into(), &"1.3.0".into()),
        "{status}"
    );
}

/// A slot root of another user's that the user cannot reach (its parent is root's, 0700:
/// a tree unpacked with its builder's uid, on a device where root runs everything) is
/// still installed into by root, with root's rights: acting as the user there would fail
/// every install that worked before.
#[test]
fn root_installs_into_a_users_slot_root_that_user_cannot_reach() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !can_act_as_nobody() {
        return;
    }
    let (_repo, _server, dev) = served_with_1_1_0("com.acme.slot.unreachable");
    let parent = dev.root.parent().unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir_all(&dev.root).unwrap();
    std::os::unix::fs::chown(&dev.root, Some(NOBODY), Some(NOBODY)).unwrap();
    assert_eq!(std::fs::metadata(parent).unwrap().uid(), 0);
    dev.expect("update", &["--yes"], 0);
    assert_eq!(dev.status()["slots"]["b"]["version"], "1.1.0");
}

/// A release skipped by mistake: `status` lists it, `unskip` takes it back, and the next
/// check offers it again. Taking back a version that was not skipped changes nothing and
/// says so.
#[test]
fn a_skipped_release_is_listed_and_can_be_offered_again() {
    let (_repo, _server, dev) = offered_1_0_0();
    assert_eq!(dev.status()["skipped"], serde_json::json!([]));
    dev.expect("skip", &["1.0.0"], 0);
    assert_eq!(dev.status()["skipped"], serde_json::json!(["1.0.0"]));
    let text = dev.expect("status", &[], 0);
    assert!(text.contains("skipped: 1.0.0"), "{text}");
    assert_eq!(
        json(&dev.expect("check", &["--json"], 0))["status"],
        "up_to_date"
    );

    let undone = json(&dev.expect("unskip", &["1.0.0", "--json"], 0));
    assert_eq!(
        undone,
        serde_json::json!({"unskipped": "1.0.0", "was_skipped": true})
    );
    assert_eq!(dev.status()["skipped"], serde_json::json!([]));
    assert_eq!(
        json(&dev.expect("check", &["--json"], 10))["version"],
        "1.0.0"
    );

    let text = dev.expect("unskip", &["1.0.0"], 0);
    assert!(text.contains("1.0.0 was not skipped"), "{text}");
    let out = dev.run("unskip", &["1.0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = common::stderr(&out);
    assert!(
        err.contains("expected a semver version like 1.2.3, found"),
        "{err}"
    );
}

/// A skip holds every build of its version, as checks compare versions: after `skip 1.0.0`,
/// `check` names the build the channel lists (`1.0.0+b7`) as skipped, and `unskip` of
/// that name takes the skip back, so the next check offers it again.
#[test]
fn unskip_of_the_build_a_check_names_takes_back_the_skip_of_its_version() {
    let repo = Repo::new("com.acme.skipbuild");
    publish(&repo, "1.0.0+b7", "stable");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device(
        "dev",
        &server.url(),
        serde_json::json!({"current_version": "0.9.0"}),
    );
    dev.expect("skip", &["1.0.0"], 0);
    let text = dev.expect("check", &[], 0);
    assert!(
        text.contains(
            "note: 1.0.0+b7 is on the channel and not offered to this device: it was skipped"
        ) && text.contains("`evergreen unskip 1.0.0+b7` offers it again"),
        "{text}"
    );

    let undone = json(&dev.expect("unskip", &["1.0.0+b7", "--json"], 0));
    assert_eq!(
        undone,
        serde_json::json!({"unskipped": "1.0.0+b7", "was_skipped": true})
    );
    assert_eq!(dev.status()["skipped"], serde_json::json!([]));
    assert_eq!(
        json(&dev.expect("check", &["--json"], 10))["version"],
        "1.0.0+b7"
    );
}

/// "up to date" while the channel has a newer release says which and why, in text and in
/// `--json` (`held_back`), for `check` and `update` alike: a rollout that has not reached
/// the device, then a skip (with how to undo it); `null` once nothing newer is held.
#[test]
fn an_up_to_date_beside_a_newer_release_says_why() {
    let repo = Repo::new("com.acme.heldback");
    publish(&repo, "1.0.0", "stable");
    let dev = repo.device("dev", repo.root.to_str().unwrap(), serde_json::json!({}));
    dev.expect("update", &["--yes"], 0);
    let j: serde_json::Value = serde_json::from_str(&dev.expect("check", &["--json"], 0)).unwrap();
    assert_eq!(j["held_back"], serde_json::Value::Null, "{j}");

    let file = repo.scratch("src").join("settings-1.1.0.json");
    std::fs::write(&file, b"{}").unwrap();
    let app = [("config", file.as_path())];
    repo.release("stable", "1.1.0", "x86_64-linux", &app, &["--rollout", "0"]);
    let rollout = "its rollout has not reached this device (at 0 % of devices now)";
    for (cmd, args) in [("check", &["--json"][..]), ("update", &["--json", "--yes"])] {
        let j: serde_json::Value = serde_json::from_str(&dev.expect(cmd, args, 0)).unwrap();
        assert_eq!(j["status"], "up_to_date", "{cmd}: {j}");
        assert_eq!(j["held_back"]["version"], "1.1.0", "{cmd}: {j}");
        assert_eq!(j["held_back"]["reason"], rollout, "{cmd}: {j}");
    }
    let text = dev.expect("check", &[], 0);
    assert!(
        text.contains(&format!(
            "note: 1.1.0 is on the channel and not offered to this device: {rollout}"
        )),
        "{text}"
    );

    repo.rollout("stable", "1.1.0", "100");
    dev.expect("skip", &["1.1.0"], 0);
    let text = dev.expect("update", &["--yes"], 0);
    assert!(
        text.contains(
            "note: 1.1.0 is on the channel and not offered to this device: it was skipped"
        ) && text.contains("`evergreen unskip 1.1.0` offers it again"),
        "{text}"
    );
}

/// A release staged and held back by the deploy policy says so in `status` (text and
/// `--json` `deferred`): until when and why under a maintenance window, and that it waits
/// for an activate under `download_only`; nothing once it may go ahead.
#[test]
fn status_says_until_when_a_staged_release_is_deferred() {
    use evergreen::Timestamp;
    let (repo, dev) = confirmed_1_0_0("com.acme.deferred");
    dev.edit_config(|c| {
        c["deploy"] = serde_json::json!({"policy": "window", "window":
            {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
             "start": "03:00", "end": "04:00", "utc_offset": "+00:00"}});
    });
    publish(&repo, "1.0.1", "stable");
    // Noon tomorrow (after the manifest was issued, well before it expires): the window
    // opens at 03:00 the day after.
    let today = Timestamp::now().unix().div_euclid(86_400) * 86_400;
    let noon = Timestamp::from_unix(today + 86_400 + 12 * 3600).to_string();
    let opens = Timestamp::from_unix(today + 2 * 86_400 + 3 * 3600).to_string();
    dev.json_at(&noon, "update", &["--yes"], 0);
    let s = dev.json_at(&noon, "status", &[], 0);
    assert_eq!(s["slots"]["a"]["status"], "installed", "{s}");
    assert_eq!(s["slots"]["a"]["deferred"]["until"], opens.as_str(), "{s}");
    let reason = s["slots"]["a"]["deferred"]["reason"].as_str().unwrap();
    assert!(reason.contains("window"), "{reason}");
    let out = dev.run_env("status", &[], &[("EVERGREEN_NOW", &noon)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("  deferred until {opens}: {reason}")),
        "{text}"
    );
    // Inside the window it may go ahead: nothing deferred.
    let inside = Timestamp::from_unix(today + 2 * 86_400 + 3 * 3600 + 60).to_string();
    let s = dev.json_at(&inside, "status", &[], 0);
    assert!(s["slots"]["a"].get("deferred").is_none(), "{s}");

    download_only(&dev);
    let s = dev.json_at(&noon, "status", &[], 0);
    assert_eq!(
        s["slots"]["a"]["deferred"]["until"],
        serde_json::Value::Null,
        "{s}"
    );
    assert!(
        s["slots"]["a"]["deferred"]["reason"]
            .as_str()
            .unwrap()
            .contains("download_only"),
        "{s}"
    );
}

/// A staged release whose slot was removed by hand is not activated: `current` would
/// point at nothing to run. `activate` says what is gone, marks the slot empty and leaves
/// the running slot as it was; the next `update` installs the release afresh.
#[test]
fn a_staged_slot_removed_by_hand_is_not_activated() {
    let (repo, dev) = confirmed_1_0_0("com.acme.lost");
    download_only(&dev);
    publish(&repo, "1.0.1", "stable");
    dev.expect("update", &["--yes"], 0);
    assert_eq!(dev.status()["slots"]["a"]["status"], "installed");
    std::fs::remove_dir_all(dev.root.join("slots/a")).unwrap();

    let err = dev.fails("activate", &["--now"]);
    assert!(
        err.starts_with("error[invalid_state]: expected the release staged in slot a to activate, found 1.0.1 in slot a is gone: ")
            && err.contains("slots/a/.evergreen-slot.json does not exist"),
        "{err}"
    );
    let s = dev.status();
    assert_eq!(s["slots"]["a"]["status"], "empty", "{s}");
    assert_eq!(s["slots"]["b"]["status"], "good", "{s}");
    assert_eq!(s["primary"], "b", "{s}");
    let current = std::fs::read_link(dev.root.join("current")).unwrap();
    assert!(current.ends_with("slots/b"), "{current:?}");
    let history = s["history"].as_array().unwrap();
    assert_eq!(history.last().unwrap()["event"], "staged_lost", "{s}");

    dev.expect("update", &["--yes"], 0);
    dev.expect("activate", &["--now"], 0);
    let s = dev.status();
    assert_eq!(s["slots"]["a"]["status"], "trial", "{s}");
    assert!(dev.root.join("slots/a/.evergreen-slot.json").is_file());
}

/// `download_bytes` is what a download fetches: two components of one artifact share one
/// download, a component renamed from one installed comes from its kept download, and a
/// release fetched by `update --download-only` has nothing left to fetch. The plain
/// progress lines of `update` say the same bytes.
#[test]
fn download_bytes_counts_each_artifact_once_and_none_already_downloaded() {
    let repo = Repo::new("com.acme.shared-artifacts");
    let src = repo.scratch("src");
    let settings = src.join("settings.json");
    std::fs::write(&settings, b"{\"level\": 3}").unwrap();
    repo.release(
        "stable",
        "1.0.0",
        "x86_64-linux",
        &[("config", &settings)],
        &[],
    );
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    dev.expect("update", &["--yes"], 0);
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);

    // 1.1.0: `config` renamed `settings` (the same file), and one plugin archive shipped
    // as two components.
    let plugin = src.join("plugin.zip");
    common::make_zip(&plugin, &[("lib/plugin.so", &[7u8; 3000])]);
    let plugin_size = std::fs::metadata(&plugin).unwrap().len();
    repo.release(
        "stable",
        "1.1.0",
        "x86_64-linux",
        &[
            ("settings", &settings),
            ("plugin-a", &plugin),
            ("plugin-b", &plugin),
        ],
        &[],
    );
    let offer = json(&dev.expect("check", &["--json"], 10));
    let ops: Vec<(&str, &str)> = (offer["components"].as_array().unwrap().iter())
        .map(|c| (c["name"].as_str().unwrap(), c["op"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ops,
        [
            ("config", "removed"),
            ("plugin-a", "added"),
            ("plugin-b", "added"),
            ("settings", "added")
        ]
    );
    assert_eq!(offer["download_bytes"], plugin_size, "{offer}");

    let blobs = || {
        let log = server.log();
        log.iter().filter(|l| l.path.starts_with("blobs/")).count()
    };
    let before = blobs();
    dev.expect("update", &["--yes", "--download-only"], 0);
    assert_eq!(blobs() - before, 1, "one blob fetched");
    let offer = json(&dev.expect("check", &["--json"], 10));
    assert_eq!(offer["download_bytes"], 0, "all downloaded: {offer}");

    let out = dev.run("update", &["--yes"]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        !err.contains("evergreen: download"),
        "nothing to fetch: {err}"
    );
    let slot = dev.root.join("current");
    assert_eq!(
        std::fs::read(slot.join("settings/settings.json")).unwrap(),
        b"{\"level\": 3}"
    );
    assert!(!slot.join("config").exists());
    for name in ["plugin-a", "plugin-b"] {
        assert_eq!(
            std::fs::read(slot.join(name).join("lib/plugin.so")).unwrap(),
            [7u8; 3000]
        );
    }
}

/// The names of the entries of `dir`; none when it does not exist.
fn names_in(dir: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// A server that cannot be reached is said in the system's words, as `curl` and the rest
/// say it: `found Connection refused (os error 111)`, not the HTTP library's name for the
/// kind of its error in front of them (`found io: Connection refused`), which means
/// nothing to whoever reads the line. `--json` prints nothing on stdout then.
#[test]
fn a_refused_connection_is_said_without_the_http_librarys_words() {
    let repo = Repo::new("com.acme.refused");
    publish(&repo, "1.0.0", "stable");
    let refusing = support::RefusingPort::bind();
    let port = refusing.port;
    let server = format!("http://127.0.0.1:{port}");
    let dev = repo.device("dev", &server, serde_json::json!({}));
    let out = dev.run("check", &["--json"]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty(), "{err}");
    let expected = format!(
        "error[network]: GET {server}/channels/stable.json: expected an HTTP response, found Connection refused (os error 111)\n"
    );
    assert_eq!(err, expected);
}

/// A device whose boot selector the host program supplies (`"kind": "custom"`) cannot be
/// driven by the `evergreen` command, which has no such program to ask: it says so, naming
/// the config file and its field, rather than telling the user of a command to call
/// `UpdaterBuilder::selector`.
#[test]
fn a_custom_selector_is_refused_by_the_command_in_its_own_words() {
    let repo = Repo::new("com.acme.custom");
    let dev = repo.device(
        "dev",
        "/srv/none",
        serde_json::json!({"slots": {"kind": "image", "a": "/dev/evg-a", "b": "/dev/evg-b",
            "selector": {"kind": "custom"}}}),
    );
    for cmd in ["status", "boot", "check"] {
        let out = dev.run(cmd, &["--json"]);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert!(out.stdout.is_empty(), "{cmd}: {err}");
        assert_eq!(
            err,
            format!(
                "error[config]: {}: config field `slots.selector`: expected a grub or uboot selector, which the evergreen command drives, found a custom one, which only the program that supplies it can drive\n",
                dev.config.display()
            ),
            "{cmd}"
        );
    }
}

/// `provision` of a GRUB environment whose directory is missing (`/boot` not mounted, a
/// typo in `slots.selector.env`) names the file the config names, not the temp file it
/// would have been written through (`grubenv.tmp-<pid>`), a name the user never gave.
#[test]
fn provisioning_into_a_missing_directory_names_the_configured_file() {
    let repo = Repo::new("com.acme.provision");
    let boot = repo.scratch("boot");
    let env = boot.join("grub/grubenv");
    let dev = repo.device(
        "dev",
        "/srv/none",
        serde_json::json!({"slots": {"kind": "image", "a": boot.join("a.img"),
            "b": boot.join("b.img"), "selector": {"kind": "grub", "env": env}}}),
    );
    let out = dev.run("provision", &["--json"]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty(), "{err}");
    assert_eq!(
        err,
        format!(
            "error[io]: write {}: expected its directory to exist, found none\n",
            env.display()
        )
    );
}

/// The `trust` of a device's config naming the manifest key of `repo` (`trust.keys`).
fn manifest_key_trust(repo: &Repo) -> serde_json::Value {
    let path = format!("{}.pub", repo.manifest_key.display());
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::json!({"keys": [text.trim()], "threshold": 1})
}

/// A config edited in the field to another `product` (and its server and `trust.keys`)
/// keeps the state of the product before: its installed release, sequences and security
/// floor are that product's. The check is refused (`config`), naming both products and
/// the state, as a saved root of another product is, rather than offering the new
/// product's release over the old one's install; the state keeps what it recorded.
#[test]
fn a_config_moved_to_another_product_under_trust_keys_is_refused() {
    let gateway = Repo::new("com.acme.gateway");
    publish(&gateway, "1.0.0", "stable");
    let dev = gateway.device(
        "dev",
        gateway.root.to_str().unwrap(),
        serde_json::json!({"trust": manifest_key_trust(&gateway)}),
    );
    dev.expect("update", &["--yes"], 0);
    let before = dev.state_file();

    let sensor = Repo::new("com.acme.sensor");
    publish(&sensor, "0.9.0", "stable");
    publish(&sensor, "2.0.0", "stable");
    dev.edit_config(|c| {
        c["product"] = "com.acme.sensor".into();
        c["server"] = sensor.root.to_str().unwrap().into();
        c["trust"] = manifest_key_trust(&sensor);
    });
    let out = dev.run("check", &[]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error[config]: ")
            && err.contains("com.acme.sensor")
            && err.contains("com.acme.gateway")
            && err.contains(&dev.state.display().to_string()),
        "{err}"
    );
    // The failure is recorded, as a failed check's is; what the old product's checks
    // and install left is not touched.
    let after = dev.state_file();
    for key in [
        "manifests",
        "manifest_keys",
        "newest_issued",
        "a",
        "b",
        "primary",
    ] {
        assert_eq!(after[key], before[key], "{key}");
    }
    let err = dev.fails("update", &["--yes"]);
    assert!(err.starts_with("error[config]: "), "{err}");
    assert_eq!(dev.status()["slots"]["b"]["version"], "1.0.0");
}

/// A deploy policy edited in the field from a maintenance window to `immediate` while a
/// release waits for the window: the timer's next `update --if-due` activates it, though
/// the next check is not due yet, as it activates one whose window opened. It used to
/// leave it staged until the next due check (the poll interval, a day after failures).
#[test]
fn a_release_deferred_by_a_window_activates_at_the_next_tick_once_the_policy_is_immediate() {
    let (repo, dev) = confirmed_1_0_0("com.acme.policy");
    // A window twelve hours away, every day: closed now.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hour = (secs / 3600 + 12) % 24;
    dev.edit_config(|c| {
        c["deploy"] = serde_json::json!({"policy": "window", "window": {
            "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "start": format!("{hour:02}:00"), "end": format!("{:02}:00", (hour + 1) % 24)}});
    });
    publish(&repo, "1.1.0", "stable");
    let out = json(&dev.expect("update", &["--yes", "--json"], 0));
    assert_eq!(out["status"], "deferred", "{out}");

    dev.edit_config(|c| c["deploy"] = serde_json::json!({"policy": "immediate"}));
    let out = json(&dev.expect("update", &["--yes", "--if-due", "--json"], 0));
    assert_eq!(out["status"], "activated", "{out}");
    let status = dev.status();
    assert_eq!(status["primary"], "a");
    assert_eq!(status["slots"]["a"]["version"], "1.1.0");
    assert_eq!(status["slots"]["a"]["status"], "trial");
}

/// A release staged before the config's `target` changed (a board revision) is not
/// activated for the new target: `activate` defers it, `activate --now` refuses it
/// (`incompatible_target`) and `status` says why; once a check offers the same artifacts
/// for the new target, it is that target's release too and goes ahead.
#[test]
fn a_release_staged_for_the_old_target_waits_for_a_check_of_the_new_one() {
    let (repo, dev) = confirmed_1_0_0("com.acme.retarget");
    download_only(&dev);
    let file = repo.scratch("src").join("settings-1.1.0.json");
    std::fs::write(&file, b"{\"v\": 2}").unwrap();
    let app = [("config", file.as_path())];
    repo.release("stable", "1.1.0", "x86_64-linux", &app, &[]);
    dev.expect("update", &["--yes"], 0);
    assert_eq!(dev.status()["slots"]["a"]["status"], "installed");
    dev.edit_config(|c| c["target"] = serde_json::json!("arm-linux"));

    let out = json(&dev.expect("activate", &["--json"], 0));
    assert_eq!(out["status"], "deferred", "{out}");
    let err = dev.fails("activate", &["--now"]);
    assert!(
        err.starts_with("error[incompatible_target]: expected a release staged for target arm-linux, found 1.1.0 in slot a was staged for target x86_64-linux"),
        "{err}"
    );
    let s = dev.status();
    assert_eq!(s["primary"], "b", "{s}");
    assert_eq!(s["slots"]["a"]["status"], "installed", "{s}");
    assert!(
        s["slots"]["a"]["deferred"]["reason"]
            .as_str()
            .unwrap()
            .contains("staged for target x86_64-linux"),
        "{s}"
    );

    // The same artifacts published for arm-linux: the check adopts the staged release.
    repo.release("stable", "1.1.0", "arm-linux", &app, &[]);
    dev.expect("update", &["--yes"], 0);
    let out = json(&dev.expect("activate", &["--json"], 0));
    assert_eq!(out["status"], "activated", "{out}");
    let s = dev.status();
    assert_eq!(
        (&s["primary"], &s["slots"]["a"]["status"]),
        (&serde_json::json!("a"), &serde_json::json!("trial")),
        "{s}"
    );
}

/// `current_version` added to the config after a check had made the state (with nothing
/// installed since) is taken as a fresh state takes it: the first update's fallback is
/// that install, and a rollback goes back to it. It was left out: `rollback` said slot a
/// was empty.
#[test]
fn a_current_version_named_after_the_first_check_is_the_first_updates_fallback() {
    let repo = Repo::new("com.acme.late");
    let dev = repo.device("dev", repo.root.to_str().unwrap(), serde_json::json!({}));
    publish(&repo, "1.0.0", "stable");
    dev.expect("check", &[], 10);
    assert!(dev.state.join("state.json").is_file());
    // The app that runs already, moved into slot a as docs/operators.md says.
    std::fs::create_dir_all(dev.root.join("slots/a/app")).unwrap();
    std::fs::write(dev.root.join("slots/a/app/VERSION"), "0.9.0").unwrap();
    std::os::unix::fs::symlink("slots/a", dev.root.join("current")).unwrap();
    dev.edit_config(|c| c["current_version"] = serde_json::json!("0.9.0"));

    let s = dev.status();
    assert_eq!(
        s["slots"]["a"],
        serde_json::json!({"status": "good", "version": "0.9.0"}),
        "{s}"
    );
    dev.expect("update", &["--yes"], 0);
    dev.expect("boot", &[], 0);
    dev.expect("rollback", &[], 0);
    let s = dev.status();
    assert_eq!(
        (&s["primary"], &s["slots"]["a"]["status"]),
        (&serde_json::json!("a"), &serde_json::json!("good")),
        "{s}"
    );
    assert_eq!(
        std::fs::read_link(dev.root.join("current")).unwrap(),
        Path::new("slots/a")
    );
}

/// A download that fails while another process holds the state lock (stopped with Ctrl-Z,
/// say) returns its error after a short wait to record it, not when that process lets go:
/// the record of a failure is best effort.
#[test]
fn a_failure_is_not_held_back_by_a_stopped_holder_of_the_state_lock() {
    let (repo, dev) = confirmed_1_0_0("com.acme.heldlock");
    publish(&repo, "1.0.1", "stable");
    let build = || {
        let config = evergreen::Config::from_file(&dev.config).unwrap();
        evergreen::Updater::builder(config).build().unwrap()
    };
    let (checker, other) = (build(), build());
    let evergreen::Check::Available(offer) = checker.check().unwrap() else {
        panic!("expected 1.0.1 offered");
    };
    let held = std::fs::File::open(dev.state.join("lock")).unwrap();
    held.lock().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Another updater's offer: refused at once, before any lock.
        let r = other.download(&offer, &mut |_, _| {}, &Default::default());
        tx.send(r.map_err(|e| e.kind())).ok();
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the failed download to return while the state lock is held");
    assert_eq!(r, Err(evergreen::ErrorKind::InvalidState));
    drop(held);
}

/// SIGTERM (a service manager's stop) while a check is still receiving the manifest of the
/// channel `update --channel` switches to: the check ends within the signal's grace and
/// succeeds, and the command must stop there, `error[cancelled]`, the device on its own
/// channel. It went on to save the switch, and only the download after it said
/// `cancelled`: a stopped command had moved the device to another channel.
#[test]
fn a_sigterm_during_the_check_of_update_channel_keeps_the_channel() {
    let (_repo, server, dev) = served_with_1_1_0("com.acme.sigterm.switch");
    // About 1 s for the whole manifest: it ends well inside the 2 s grace of the signal,
    // sent 200 ms into the request.
    let slow = Fault::Trickle {
        bytes: 256,
        every: std::time::Duration::from_millis(150),
    };
    server.set_fault("channels/preview.json", slow);
    let out = signalled_update(
        &dev,
        &server,
        "channels/preview.json",
        &["--channel", "preview"],
        "-TERM",
    );
    let stderr = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error[cancelled]: interrupted"),
        "{stderr}"
    );
    assert_eq!(dev.status()["channel"], "stable", "{stderr}");
}

/// SIGTERM while `update` installs: the install is not cut (it ends within the signal's
/// grace), and the command stops before the activation, `error[cancelled]`, the release
/// left staged for the next `update`. It went on to activate the release and exit 0, as
/// if no stop had been asked for. The command is held at the end of its install by its
/// stderr, a pipe that is full (as a journal that does not keep up) until the signal is
/// sent.
#[test]
#[cfg(target_os = "linux")] // F_SETPIPE_SZ
fn a_sigterm_during_the_install_stops_before_the_activation() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let (_repo, _server, dev) = served_with_1_1_0("com.acme.sigterm.install");
    dev.expect("update", &["--yes", "--download-only"], 0);
    // What `update` says on stderr before its install ends: the offer's one line.
    let before = dev.run("check", &[]).stderr.len();
    let (mut reader, mut writer) = std::io::pipe().unwrap();
    // SAFETY: fcntl on a pipe this test owns.
    let size = unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert_eq!(size, 4096, "expected a one-page pipe");
    writer.write_all(&vec![b'#'; 4096 - before]).unwrap();
    let child = signals_at_their_default(std::process::Command::new(common::bin()))
        .args(["update", "--yes", "--config", dev.config.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(writer)
        .spawn()
        .unwrap();
    // The pipe is full once the offer's line is in: the line saying the release is staged
    // waits, in the install, until it is read.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let state = dev.state_file();
        assert_eq!(
            state["primary"], "a",
            "activated before the signal: {state}"
        );
        if state["b"]["status"] == "installed" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected slot b installed within 60 s, found {state}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    send_signal(&child, "-TERM");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let drain = std::thread::spawn(move || {
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        String::from_utf8_lossy(&all[4096 - before..]).into_owned()
    });
    let out = require::finish_within(child, std::time::Duration::from_secs(20));
    let stderr = drain.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error[cancelled]: interrupted"),
        "{stderr}"
    );
    let status = dev.status();
    assert_eq!(status["primary"], "a", "{status}");
    assert_eq!(
        status["slots"]["b"],
        serde_json::json!({"status": "installed", "version": "1.1.0"}),
        "{status}"
    );
    // The next update activates what was staged, without installing it again.
    let text = dev.expect("update", &["--yes"], 0);
    assert!(
        text.contains("1.1.0 is already installed in slot b"),
        "{text}"
    );
    assert_eq!(dev.status()["primary"], "b");
}

/// `nohup evergreen update --yes &` (SIGHUP ignored), or an update a script started in the
/// background (`evergreen update --yes &` in `sh`, which starts it with SIGINT ignored):
/// the signal its starter chose to ignore does not stop it. Both stopped it with
/// `error[cancelled]`: the handler for Ctrl-C and SIGTERM took over the ignored signals
/// too, so the end of the login session (SIGHUP) cancelled the update `nohup` was for.
#[test]
fn signals_ignored_by_the_starter_stay_ignored() {
    use std::os::unix::process::CommandExt;
    for signal in ["-HUP", "-INT"] {
        let (repo, server, dev) = served_with_1_1_0_of("com.acme.nohup", 64 * 1024);
        let blob = format!("blobs/sha256/{}", names(&repo.root.join("blobs/sha256"))[0]);
        // About 1.6 s: the signal comes 200 ms into it.
        let slow = Fault::Trickle {
            bytes: 8192,
            every: std::time::Duration::from_millis(200),
        };
        server.set_fault(&blob, slow);
        let mut cmd = std::process::Command::new(common::bin());
        cmd.args(["update", "--yes", "--config", dev.config.to_str().unwrap()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec, as nohup and sh make.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                Ok(())
            });
        }
        let out = signal_once_requested(cmd.spawn().unwrap(), &server, &blob, signal);
        let stderr = common::stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{signal}: {stderr}");
        assert_eq!(dev.status()["slots"]["b"]["version"], "1.1.0", "{signal}");
    }
}

/// A host that runs its health check (`evergreen confirm`) from the startup step's event
/// callback waits for the command, while the command waits for the state lock the step
/// holds: neither ever ends. The command's `waiting` line names the process holding the
/// lock and says that this command runs under it, so the hang explains itself.
#[test]
fn a_command_run_from_an_event_callback_names_its_parent_as_the_lock_holder() {
    let repo = Repo::new("com.acme.cli");
    publish(&repo, "1.0.0", "stable");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    dev.expect("update", &["--yes"], 0);
    let config = evergreen::Config::from_file(&dev.config).unwrap();
    let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = said.clone();
    let path = dev.config.clone();
    let updater = evergreen::Updater::builder(config)
        .on_event(move |e| {
            if !matches!(e, evergreen::Event::TrialBoot { .. }) {
                return;
            }
            let mut cmd = std::process::Command::new(common::bin());
            cmd.args(["confirm", "--config"]).arg(&path);
            let mut confirm = common::Watched::start(&mut cmd);
            // What the health check says while it waits; then it is stopped, which is
            // what the host's own time limit (if it has one) would do.
            lines
                .lock()
                .unwrap()
                .push(confirm.wait_for_line("waiting for"));
            confirm.kill();
        })
        .build()
        .unwrap();
    updater.startup().unwrap();
    let said = said.lock().unwrap();
    let me = std::process::id();
    assert!(
        said.len() == 1
            && said[0].contains(&format!("held by process {me} ("))
            && said[0].contains("which this command runs under"),
        "{said:?}"
    );
}
