//! The CLI as shell scripts and fleet tools drive it (DESIGN §7.2, §9; docs/design.md
//! §7.2): every command run with `--json` against a real repository served on loopback,
//! through a device's states (fresh, held back by a rollout, on trial, deferred by a
//! maintenance window, rolled back, offline), must print exactly one line of JSON on
//! stdout with the documented keys and types, nothing on stderr when it succeeds, the
//! documented exit code, and on a failure nothing on stdout and one `error[<kind>]` line
//! on stderr. The `jq` one-liner `evergreen boot --help` gives for a launcher is run as
//! written.

mod common;
mod require;
mod support;

use common::{Device, Repo};
use serde_json::Value;
use std::process::Output;
use support::TestServer;

/// The one JSON object `out` printed on stdout, after checking that it exited with `code`,
/// that stdout is exactly one line holding it and that stderr is empty (with `--json`, a
/// command that succeeds says nothing else).
fn one_doc(what: &str, out: &Output, code: i32) -> Value {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit code {code}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.is_empty(),
        "{what}: expected nothing on stderr with --json, found: {stderr}"
    );
    assert!(
        stdout.ends_with('\n') && stdout.lines().count() == 1,
        "{what}: expected one line on stdout, found: {stdout:?}"
    );
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{what}: expected JSON on stdout, found {stdout:?} ({e})"));
    assert!(v.is_object(), "{what}: expected a JSON object, found {v}");
    v
}

/// Asserts that `v` has exactly the keys `expected`.
fn has_keys(what: &str, v: &Value, expected: &[&str]) {
    let mut found: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: expected an object, found {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    found.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    assert_eq!(found, want, "{what}: keys of {v}");
}

/// Asserts that `v` is a string holding an RFC 3339 time.
fn is_time(what: &str, v: &Value) {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected an RFC 3339 string, found {v}"));
    text.parse::<evergreen::Timestamp>()
        .unwrap_or_else(|e| panic!("{what}: expected an RFC 3339 time, found {text:?} ({e:?})"));
}

/// Asserts that `v` is `"a"` or `"b"`.
fn is_slot(what: &str, v: &Value) {
    assert!(
        v == "a" || v == "b",
        "{what}: expected a slot name, found {v}"
    );
}

/// Asserts that `v` is a semver string.
fn is_version(what: &str, v: &Value) {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a version string, found {v}"));
    semver::Version::parse(text)
        .unwrap_or_else(|e| panic!("{what}: expected a semver version, found {text:?} ({e})"));
}

/// The keys `check --json` prints, up to date or not (docs/design.md §7.2).
const CHECK_KEYS: &[&str] = &[
    "status",
    "current",
    "version",
    "channel",
    "critical",
    "downgrade",
    "notes",
    "security_version",
    "download_bytes",
    "components",
    "target_released",
    "held_back",
];

/// The keys `status --json` prints in every state (optional slot keys aside).
const STATUS_KEYS: &[&str] = &[
    "primary",
    "fallback",
    "booted",
    "channel",
    "security_floor",
    "trial",
    "slots",
    "last_check",
    "next_check",
    "skipped",
    "history",
    "check_failures",
    "last_failure",
];

/// `check --json`, which must exit `code` (0 up to date, 10 available): its object,
/// every key present with its documented type.
fn check(dev: &Device, code: i32) -> Value {
    let v = one_doc("check", &dev.run("check", &["--json"]), code);
    has_keys("check", &v, CHECK_KEYS);
    let available = code == 10;
    assert_eq!(
        v["status"],
        if available { "available" } else { "up_to_date" }
    );
    assert!(v["current"].is_null() || v["current"].is_string(), "{v}");
    if !v["current"].is_null() {
        is_version("check current", &v["current"]);
    }
    assert!(v["channel"].is_string(), "{v}");
    assert!(
        v["critical"].is_boolean() && v["downgrade"].is_boolean(),
        "{v}"
    );
    assert!(v["notes"].is_string(), "{v}");
    assert!(v["download_bytes"].is_u64(), "{v}");
    assert!(v["target_released"].is_boolean(), "{v}");
    let components = v["components"].as_array().expect("components is an array");
    if available {
        is_version("check version", &v["version"]);
        assert!(v["security_version"].is_u64(), "{v}");
        assert!(v["held_back"].is_null(), "{v}");
        for c in components {
            for key in ["name", "op"] {
                assert!(c[key].is_string(), "{v}");
            }
            for key in ["from", "to"] {
                assert!(c[key].is_null() || c[key].is_string(), "{v}");
            }
        }
    } else {
        assert!(
            v["version"].is_null() && v["security_version"].is_null(),
            "{v}"
        );
        assert_eq!(v["download_bytes"], 0);
        assert!(components.is_empty(), "{v}");
        if !v["held_back"].is_null() {
            has_keys("check held_back", &v["held_back"], &["version", "reason"]);
            is_version("held_back version", &v["held_back"]["version"]);
            assert!(v["held_back"]["reason"].is_string(), "{v}");
        }
    }
    v
}

/// `status --json`: its object, every key present with its documented type.
fn status(dev: &Device) -> Value {
    let v = one_doc("status", &dev.run("status", &["--json"]), 0);
    has_keys("status", &v, STATUS_KEYS);
    is_slot("status primary", &v["primary"]);
    is_slot("status fallback", &v["fallback"]);
    assert_ne!(v["primary"], v["fallback"], "{v}");
    if !v["booted"].is_null() {
        is_slot("status booted", &v["booted"]);
    }
    assert!(
        v["channel"].is_string() && v["security_floor"].is_u64(),
        "{v}"
    );
    if !v["trial"].is_null() {
        has_keys("status trial", &v["trial"], &["slot", "tries_left"]);
        is_slot("status trial slot", &v["trial"]["slot"]);
        assert!(v["trial"]["tries_left"].is_u64(), "{v}");
    }
    let slots = v["slots"].as_object().expect("slots is an object");
    assert_eq!(slots.keys().collect::<Vec<_>>(), ["a", "b"], "{v}");
    for (name, s) in slots {
        let what = format!("status slot {name}");
        let status = s["status"].as_str().expect("a slot's status is a string");
        assert!(
            ["empty", "installing", "installed", "trial", "good", "bad"].contains(&status),
            "{what}: {v}"
        );
        match status {
            "empty" => assert!(s["version"].is_null(), "{what}: {v}"),
            _ => is_version(&what, &s["version"]),
        }
        if let Some(d) = s.get("deferred") {
            has_keys(&what, d, &["until", "reason"]);
            assert!(d["reason"].is_string(), "{what}: {v}");
            if !d["until"].is_null() {
                is_time(&what, &d["until"]);
            }
        }
        if let Some(w) = s.get("withheld") {
            assert!(w.is_string(), "{what}: {v}");
        }
    }
    for key in ["last_check", "last_failure"] {
        if !v[key].is_null() {
            is_time(key, &v[key]);
        }
    }
    is_time("next_check", &v["next_check"]);
    assert!(
        v["skipped"].is_array() && v["check_failures"].is_u64(),
        "{v}"
    );
    for h in v["history"].as_array().expect("history is an array") {
        has_keys("history entry", h, &["at", "event", "detail"]);
        is_time("history at", &h["at"]);
    }
    v
}

/// `cmd --json args`, which must succeed (exit 0) with exactly the keys `keys`.
fn device_doc(dev: &Device, cmd: &str, args: &[&str], keys: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let what = format!("{cmd} {args:?}");
    let v = one_doc(&what, &dev.run(cmd, &all), 0);
    has_keys(&what, &v, keys);
    v
}

/// Asserts that `out` is a failure as DESIGN §9 has it, with `--json`: exit code 1,
/// nothing on stdout (no half a document for a script to parse), and on stderr the one
/// line `error[<kind>]: …` with `kind`.
fn failed(what: &str, out: &Output, kind: &str) {
    let stderr = common::stderr(out);
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{what}: expected nothing on stdout, found {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
    assert!(
        stderr.starts_with(&format!("error[{kind}]: ")),
        "{what}: expected error[{kind}], found {stderr}"
    );
}

/// A maintenance window that is closed now and for the next hour at least: every day,
/// from two hours from now to three.
fn closed_window() -> Value {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hour = (secs / 3600) % 24;
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    serde_json::json!({"policy": "window", "window": {"days": days,
        "start": format!("{:02}:00", (hour + 2) % 24), "end": format!("{:02}:00", (hour + 3) % 24)}})
}

/// A device through its life with every device command: fresh, offered a release, held
/// back by a halted rollout, updated (trial), confirmed, an update deferred by a
/// maintenance window and activated, rolled back by its starts, reinstalled, switched
/// and skipped, then offline. At each step the command's stdout is one JSON object of
/// the documented shape, its stderr empty and its exit code the documented one; the
/// failures among them print nothing on stdout and one error line.
#[test]
fn every_device_command_prints_one_documented_json_object_in_every_state() {
    let repo = Repo::new("com.acme.json");
    repo.release_settings("stable", "1.0.0", &[]);
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));

    // Fresh: never checked, nothing installed.
    let s = status(&dev);
    assert!(s["booted"].is_null() && s["trial"].is_null() && s["last_check"].is_null());
    assert_eq!(s["slots"]["a"]["status"], "empty");
    let boot = device_doc(&dev, "boot", &[], &["status", "start", "start_dir"]);
    assert_eq!(
        boot,
        serde_json::json!({"status": "normal", "start": null, "start_dir": null})
    );
    failed(
        "confirm, fresh",
        &dev.run("confirm", &["--json"]),
        "invalid_state",
    );
    failed(
        "rollback, fresh",
        &dev.run("rollback", &["--json"]),
        "invalid_state",
    );
    failed(
        "reinstall, fresh",
        &dev.run("reinstall", &["--json"]),
        "invalid_state",
    );
    failed(
        "activate, fresh",
        &dev.run("activate", &["--json"]),
        "invalid_state",
    );
    let offer = check(&dev, 10);
    assert!(offer["current"].is_null(), "{offer}");
    assert_eq!(offer["components"][0]["op"], "added");

    // Installed and on trial.
    let v = device_doc(&dev, "update", &["--yes"], &["status", "version", "slot"]);
    assert_eq!(
        (v["status"].as_str(), v["version"].as_str()),
        (Some("activated"), Some("1.0.0"))
    );
    let s = status(&dev);
    assert_eq!(s["trial"]["slot"], v["slot"]);
    let boot = device_doc(
        &dev,
        "boot",
        &[],
        &["status", "slot", "tries_left", "start", "start_dir"],
    );
    assert_eq!(boot["status"], "trial");
    assert_eq!(boot["start"], v["slot"]);
    assert!(
        boot["tries_left"].is_u64() && boot["start_dir"].is_string(),
        "{boot}"
    );
    assert_eq!(status(&dev)["trial"]["tries_left"], boot["tries_left"]);
    let up = check(&dev, 0);
    assert_eq!(up["current"], "1.0.0");
    let good = device_doc(&dev, "confirm", &[], &["status", "slot", "security_floor"]);
    assert_eq!(good["status"], "good");
    // A confirm run at every healthy start: the same answer, exit 0.
    assert_eq!(
        device_doc(&dev, "confirm", &[], &["status", "slot", "security_floor"]),
        good
    );

    // Held back by a halted rollout.
    repo.release_settings("stable", "1.1.0", &["--rollout", "0"]);
    let held = check(&dev, 0);
    assert_eq!(held["held_back"]["version"], "1.1.0");
    // `update`'s "up to date" is `check`'s, key for key: a script reads `.current` from
    // either.
    let v = device_doc(&dev, "update", &["--yes"], CHECK_KEYS);
    assert_eq!(v, held);

    // Deferred by a maintenance window, then activated by hand.
    repo.rollout("stable", "1.1.0", "100");
    dev.edit_config(|c| c["deploy"] = closed_window());
    check(&dev, 10);
    let v = device_doc(
        &dev,
        "update",
        &["--yes"],
        &["status", "version", "until", "reason"],
    );
    assert_eq!(v["status"], "deferred");
    is_time("update until", &v["until"]);
    let s = status(&dev);
    let staged = &s["slots"][s["fallback"].as_str().unwrap()];
    assert_eq!(staged["deferred"]["until"], v["until"], "{s}");
    let again = device_doc(
        &dev,
        "activate",
        &[],
        &["status", "version", "until", "reason"],
    );
    assert_eq!(again, v);
    let v = device_doc(&dev, "activate", &["--now"], &["status", "version", "slot"]);
    assert_eq!(
        (v["status"].as_str(), v["version"].as_str()),
        (Some("activated"), Some("1.1.0"))
    );

    // Never confirmed: the starts use up the trial and the next one rolls back.
    let mut last = Value::Null;
    for _ in 0..4 {
        last = one_doc("boot", &dev.run("boot", &["--json"]), 0);
        if last["status"] == "rolled_back" {
            break;
        }
    }
    has_keys(
        "boot rolled back",
        &last,
        &["status", "from", "to", "reason", "start", "start_dir"],
    );
    assert_eq!(last["start"], last["to"]);
    let s = status(&dev);
    assert_eq!(
        s["slots"][last["from"].as_str().unwrap()]["status"],
        "bad",
        "{s}"
    );
    assert_eq!(check(&dev, 0)["held_back"]["version"], "1.1.0");
    failed(
        "rollback to a bad slot",
        &dev.run("rollback", &["--json"]),
        "invalid_state",
    );

    // Repair, then back by hand.
    let v = device_doc(&dev, "reinstall", &[], &["status", "version", "slot"]);
    assert_eq!(
        (v["status"].as_str(), v["version"].as_str()),
        (Some("activated"), Some("1.0.0"))
    );
    device_doc(
        &dev,
        "boot",
        &[],
        &["status", "slot", "tries_left", "start", "start_dir"],
    );
    let back = device_doc(&dev, "rollback", &[], &["status", "slot", "from", "to"]);
    assert_eq!(
        (back["status"].as_str(), &back["slot"]),
        (Some("rolled_back"), &back["to"])
    );

    // Channel, skip, unskip.
    assert_eq!(
        device_doc(&dev, "channel", &["preview"], &["channel"]),
        serde_json::json!({"channel": "preview"})
    );
    failed(
        "check, no such channel",
        &dev.run("check", &["--json"]),
        "not_found",
    );
    device_doc(&dev, "channel", &["stable"], &["channel"]);
    assert_eq!(
        device_doc(&dev, "skip", &["1.2.0"], &["skipped"])["skipped"],
        "1.2.0"
    );
    assert_eq!(status(&dev)["skipped"], serde_json::json!(["1.2.0"]));
    let v = device_doc(&dev, "unskip", &["1.2.0"], &["unskipped", "was_skipped"]);
    assert_eq!(v["was_skipped"], true);
    failed(
        "check, no such version",
        &dev.run("check", &["--json", "--version", "9.0.0"]),
        "no_such_version",
    );

    // Offline: checks fail; status still answers, with the failures counted.
    drop(server);
    failed("check, offline", &dev.run("check", &["--json"]), "network");
    failed(
        "update, offline",
        &dev.run("update", &["--json", "--yes"]),
        "network",
    );
    let s = status(&dev);
    assert!(s["check_failures"].as_u64() >= Some(2), "{s}");
    is_time("last_failure", &s["last_failure"]);
    let v = device_doc(
        &dev,
        "update",
        &["--yes", "--if-due"],
        &["status", "next_check"],
    );
    assert_eq!(v["status"], "not_due");
    is_time("not_due next_check", &v["next_check"]);
}

/// A call that is wrong (an unknown option, a version that is no semver, a missing
/// argument, `update` without `--yes` off a terminal once there is something to install)
/// exits 2 with `--json` too, and prints nothing on stdout: a script tells it from a
/// failure of the update by the code alone.
#[test]
fn usage_errors_exit_2_with_nothing_on_stdout_under_json() {
    let repo = Repo::new("com.acme.json.usage");
    repo.release_settings("stable", "1.0.0", &[]);
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    let calls: [(&str, &[&str]); 5] = [
        ("check", &["--json", "--bogus"]),
        ("check", &["--json", "--version", "1"]),
        ("skip", &["--json"]),
        ("update", &["--json"]),
        ("channel", &["--json"]),
    ];
    for (cmd, args) in calls {
        let out = dev.run(cmd, args);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd} {args:?}: {err}");
        assert!(out.stdout.is_empty(), "{cmd} {args:?}: {:?}", out.stdout);
        assert!(!err.contains("error["), "{cmd} {args:?}: {err}");
    }
    // Nothing was installed by the `update` that could not ask.
    assert_eq!(status(&dev)["slots"]["b"]["status"], "empty");
}

/// The operator commands with `--json`: one object each on stdout, nothing on stderr, exit
/// 0, with the keys docs/operators.md names (`warnings`, `stranded`, `removed`, …); a
/// failure prints nothing on stdout and one error line, but for `verify`, whose report
/// says `ok` and `problem`.
#[test]
fn operator_commands_print_one_json_object() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (repo, root_key, key) = (p("repo"), p("root.key"), p("manifest.key"));
    let run = |args: &[&str]| common::run(args);
    let v = one_doc("keygen", &run(&["keygen", "--out", &root_key, "--json"]), 0);
    has_keys(
        "keygen",
        &v,
        &["keyid", "public_key_file", "secret_key_file"],
    );
    one_doc("keygen", &run(&["keygen", "--out", &key, "--json"]), 0);
    failed(
        "keygen again",
        &run(&["keygen", "--out", &key, "--json"]),
        "config",
    );
    let v = one_doc(
        "init",
        &run(&[
            "init",
            &repo,
            "--product",
            "com.acme.ops",
            "--root-key",
            &format!("{root_key}.pub"),
            "--root-threshold",
            "1",
            "--manifest-key",
            &format!("{key}.pub"),
            "--sign",
            &root_key,
            "--json",
        ]),
        0,
    );
    has_keys("init", &v, &["product", "repo", "root_version", "expires"]);
    let file = p("settings.json");
    std::fs::write(&file, "{}").unwrap();
    let release = |version: &str, channel: &str| {
        let component = format!("config={file}:file");
        run(&[
            "release",
            &repo,
            "--channel",
            channel,
            "--version",
            version,
            "--target",
            "x86_64-linux",
            "--component",
            &component,
            "--sign",
            &key,
            "--json",
        ])
    };
    let v = one_doc("release", &release("1.0.0", "stable"), 0);
    has_keys(
        "release",
        &v,
        &[
            "channel", "sequence", "expires", "release", "stranded", "warnings",
        ],
    );
    assert!(v["warnings"].as_array().unwrap().is_empty(), "{v}");
    // A pre-release on stable is a warning, in the JSON rather than on stderr.
    let v = one_doc(
        "release of a pre-release",
        &release("1.1.0-rc.1", "stable"),
        0,
    );
    assert_eq!(v["warnings"].as_array().map(Vec::len), Some(1), "{v}");
    let v = one_doc(
        "promote",
        &run(&[
            "promote",
            &repo,
            "--version",
            "1.0.0",
            "--from",
            "stable",
            "--to",
            "preview",
            "--sign",
            &key,
            "--json",
        ]),
        0,
    );
    has_keys(
        "promote",
        &v,
        &["channel", "sequence", "expires", "stranded", "warnings"],
    );
    let v = one_doc(
        "rollout",
        &run(&[
            "rollout",
            &repo,
            "--channel",
            "stable",
            "--version",
            "1.0.0",
            "--percent",
            "50",
            "--sign",
            &key,
            "--json",
        ]),
        0,
    );
    has_keys(
        "rollout",
        &v,
        &["channel", "sequence", "expires", "stranded"],
    );
    let v = one_doc(
        "resign",
        &run(&[
            "resign",
            &repo,
            "--channel",
            "stable",
            "--sign",
            &key,
            "--json",
        ]),
        0,
    );
    has_keys(
        "resign",
        &v,
        &["channel", "sequence", "expires", "stranded"],
    );
    let v = one_doc(
        "prune",
        &run(&[
            "prune",
            &repo,
            "--channel",
            "stable",
            "--keep",
            "1",
            "--sign",
            &key,
            "--json",
        ]),
        0,
    );
    has_keys(
        "prune",
        &v,
        &[
            "channel", "sequence", "expires", "removed", "releases", "stranded",
        ],
    );
    assert_eq!(v["removed"], serde_json::json!(["1.0.0"]));
    let v = one_doc(
        "prune-blobs",
        &run(&["prune-blobs", &repo, "--dry-run", "--json"]),
        0,
    );
    has_keys("prune-blobs", &v, &["dry_run", "blobs", "bytes"]);
    let v = one_doc(
        "rotate",
        &run(&["rotate", &repo, "--sign", &root_key, "--json"]),
        0,
    );
    has_keys("rotate", &v, &["root_version", "expires", "channels"]);
    assert_eq!(v["root_version"], 2);
    let v = one_doc("verify", &run(&["verify", &repo, "--json"]), 0);
    assert_eq!(
        (&v["ok"], &v["problem"]),
        (&Value::Bool(true), &Value::Null)
    );
    assert_eq!(v["root_version"], 2);
    // A channel that fails to verify: the report still, with `ok` false and the problem,
    // and the error line.
    let stable = dir.path().join("repo/channels/stable.json");
    let mut bytes = std::fs::read(&stable).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&stable, bytes).unwrap();
    let out = run(&["verify", &repo, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    has_keys("verify problem", &v["problem"], &["kind", "message"]);
    let err = common::stderr(&out);
    assert_eq!(
        err.lines().last().map(|l| l.starts_with(&format!(
            "error[{}]",
            v["problem"]["kind"].as_str().unwrap()
        ))),
        Some(true),
        "{err}"
    );
    failed(
        "verify of no repository",
        &run(&["verify", &p("none"), "--json"]),
        "io",
    );
}

/// The launcher line `evergreen boot --help` gives as an example, run as written by `sh`
/// with the real `jq`: it starts the app from the slot `boot` names, on a fresh device
/// (nothing activated: through `current`), on trial, and after the trial rolled back.
#[test]
fn the_boot_help_one_liner_starts_the_slot_boot_names() {
    if require::tool_output(std::process::Command::new("jq").arg("--version")).is_err() {
        require::missing("jq");
        return;
    }
    let help = common::ok(&["boot", "--help"]);
    let line = help
        .lines()
        .find_map(|l| l.trim().strip_prefix("Example: ExecStart="))
        .unwrap_or_else(|| panic!("expected an ExecStart example in boot --help, found {help}"));
    let script = line
        .strip_prefix("/bin/sh -c '")
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or_else(|| panic!("expected /bin/sh -c '…', found {line}"));

    let repo = Repo::new("com.acme.json.boot");
    let src = repo.scratch("src");
    for version in ["1.0.0", "1.1.0"] {
        let zip = src.join(format!("app-{version}.zip"));
        let f = std::fs::File::create(&zip).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        z.start_file("bin/app", opts).unwrap();
        use std::io::Write;
        z.write_all(format!("#!/bin/sh\necho \"app {version} from $0\"\n").as_bytes())
            .unwrap();
        z.finish().unwrap();
        repo.release("stable", version, "x86_64-linux", &[("app", &zip)], &[]);
    }
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    // The example's paths, for this device: its `evergreen` and its slot root.
    let bin = common::bin();
    let evergreen = format!("{} --config {}", bin.display(), dev.config.display());
    let current = dev.root.join("current");
    let script = script
        .replacen("evergreen boot", &format!("{evergreen} boot"), 1)
        .replace("/opt/app/current", current.to_str().unwrap());
    let start = || {
        let out = common::output_within(
            std::process::Command::new("/bin/sh").args(["-c", &script]),
            common::CLI_LIMIT,
        );
        assert!(
            out.status.success() || out.status.code().is_some(),
            "{out:?}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Nothing activated: `start_dir` is null, so the line falls back to `current`, which
    // does not exist yet: the exec fails, as the app would without any install.
    assert!(start().is_empty());
    dev.expect("update", &["--yes", "--version", "1.0.0"], 0);
    let slot_dir = |s: &str| dev.root.join("slots").join(s);
    let first = status(&dev)["primary"].as_str().unwrap().to_string();
    assert_eq!(
        start().trim(),
        format!("app 1.0.0 from {}/app/bin/app", slot_dir(&first).display())
    );
    dev.expect("confirm", &[], 0);
    dev.expect("update", &["--yes"], 0);
    let second = status(&dev)["primary"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    // Three starts on trial, unconfirmed: then the step rolls back and the line starts
    // the previous release from its own slot.
    for _ in 0..3 {
        assert_eq!(
            start().trim(),
            format!("app 1.1.0 from {}/app/bin/app", slot_dir(&second).display())
        );
    }
    assert_eq!(
        start().trim(),
        format!("app 1.0.0 from {}/app/bin/app", slot_dir(&first).display())
    );
}

/// The shell recipe of docs/operators.md ("Scripting") that tells an update, up to date
/// and a failure apart by the exit code, reading the version from stdout with `jq` and the
/// kind from the error line on stderr, run by `sh` as written against a device.
#[test]
fn the_documented_check_recipe_tells_available_up_to_date_and_failure_apart() {
    if require::tool_output(std::process::Command::new("jq").arg("--version")).is_err() {
        require::missing("jq");
        return;
    }
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operators.md")).unwrap();
    let section = doc
        .split("## Scripting")
        .nth(1)
        .expect("docs/operators.md has a Scripting section");
    let recipe: String = section
        .split("```sh\n")
        .nth(1)
        .and_then(|s| s.split("  ```").next())
        .expect("the Scripting section has a sh block")
        .to_string();
    assert!(recipe.contains("evergreen check --json"), "{recipe}");
    let script = format!(
        "{}\nprintf 'rc=%s version=%s kind=%s\\n' \"$rc\" \"$version\" \"$kind\"\n",
        recipe.replace(
            "evergreen check --json",
            "\"$EVG\" check --config \"$CFG\" --json"
        )
    );
    let repo = Repo::new("com.acme.json.recipe");
    repo.release_settings("stable", "1.0.0", &[]);
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), serde_json::json!({}));
    let run = || {
        let out = common::output_within(
            std::process::Command::new("/bin/sh")
                .args(["-c", &script])
                .env("EVG", common::bin())
                .env("CFG", &dev.config),
            common::CLI_LIMIT,
        );
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(run(), "rc=10 version=1.0.0 kind=");
    dev.expect("update", &["--yes"], 0);
    assert_eq!(run(), "rc=0 version= kind=");
    drop(server);
    assert_eq!(run(), "rc=1 version= kind=network");
}
