//! An operator's bad day, end to end: a release that breaks on part of the fleet is out on
//! stable at 5 %, and the operator halts it, ships a fix through preview, re-signs a
//! channel about to expire and prunes afterwards, with the real `evergreen` CLI against a
//! repository served by nginx on 127.0.0.1 and devices started through the launcher
//! example. Each step asserts what the operator's commands, `verify` and every device's
//! `status --json` say, and the test ends with every device running the fix. Skipped, with
//! a message, where nginx is not installed (failed under `EVERGREEN_REQUIRE_TOOLS`).

mod common;
mod nginxd;
mod require;

use common::{Device, Repo};
use nginxd::Nginx;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PRODUCT: &str = "com.acme.incident";

/// The caching the operators' guide recommends, by path.
const CACHING: &str =
    "location /blobs/ { add_header Cache-Control \"public, max-age=31536000, immutable\"; }\n\
     location /channels/ { add_header Cache-Control \"no-cache\"; }\n\
     location /root/ { add_header Cache-Control \"no-cache\" always; }";

/// A new repository served by nginx with [`CACHING`], or `None` without nginx.
fn served() -> Option<(Repo, Nginx)> {
    let repo = Repo::new(PRODUCT);
    open_up(&repo.root);
    let nginx = Nginx::serve_with(&repo.root, None, CACHING)?;
    Some((repo, nginx))
}

/// Makes `dir` and every directory above it up to `/tmp` readable by nginx's workers,
/// which may run as another user.
fn open_up(dir: &Path) {
    let mut d = Some(dir);
    while let Some(p) = d.filter(|p| p.starts_with(std::env::temp_dir()) && p.parent().is_some()) {
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o755)).unwrap();
        d = p.parent();
    }
}

/// The example `name`, built by `cargo test` next to the test binaries.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "expected the example built, found no {}: cargo build --all-features --examples",
        path.display()
    );
    path
}

/// The app of `version`. Its `run.sh` is the health check: 1.4.0 fails it on hardware
/// revision 1 (`HW=rev1`) and passes it elsewhere (where it is broken in a way no health
/// check sees); every other version passes it, and confirms itself, everywhere.
fn app_zip(dir: &Path, version: &str) -> PathBuf {
    let script = "#!/bin/sh\n\
        v=$(cat \"$(dirname \"$0\")/VERSION\")\n\
        if [ \"$v\" = 1.4.0 ] && [ \"$HW\" = rev1 ]; then echo \"app $v: health check failed\" >&2; exit 1; fi\n\
        \"$EVERGREEN\" confirm --config \"$EVERGREEN_CONFIG\" >/dev/null || exit 1\n\
        echo \"app $v healthy\"\n";
    let path = dir.join(format!("app-{version}.zip"));
    common::make_zip(
        &path,
        &[
            ("run.sh", script.as_bytes()),
            ("VERSION", version.as_bytes()),
        ],
    );
    path
}

/// The operator's side: the CLI on the repository, its clock reading a given time.
struct Operator<'a> {
    repo: &'a Repo,
}

impl Operator<'_> {
    /// `evergreen <args> REPO --sign KEY` (when `sign`) with the clock at `now`.
    fn run(&self, now: &str, args: &[&str], sign: bool) -> Output {
        let root = self.repo.root.to_str().unwrap();
        let key = self.repo.manifest_key.to_str().unwrap();
        // The first argument is the command and its fixed words, split at spaces; the
        // rest (paths) are taken whole.
        let mut words = args[0].split_whitespace();
        let mut all: Vec<&str> = words
            .next()
            .into_iter()
            .chain([root])
            .chain(words)
            .collect();
        all.extend_from_slice(&args[1..]);
        if sign {
            all.extend_from_slice(&["--sign", key]);
        }
        common::run_env(&all, &[("EVERGREEN_NOW", now)])
    }

    /// A signed command that must succeed: its stdout.
    fn ok(&self, now: &str, args: &[&str]) -> String {
        let out = self.run(now, args, true);
        assert_eq!(
            out.status.code(),
            Some(0),
            "evergreen {args:?} at {now}: {}",
            common::stderr(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A signed command that must fail with exit 1: its one stderr line.
    fn fails(&self, now: &str, args: &[&str]) -> String {
        let out = self.run(now, args, true);
        let err = common::stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "evergreen {args:?} at {now}: {err}"
        );
        assert_eq!(
            err.lines().count(),
            1,
            "expected one error line, found: {err}"
        );
        err
    }

    /// `verify REPO --json` at `now`, which must pass: the report and its stderr.
    fn verify(&self, now: &str) -> (Value, String) {
        let out = self.run(now, &["verify", "--json"], false);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(0), "verify at {now}: {err}");
        (serde_json::from_slice(&out.stdout).unwrap(), err)
    }

    /// `verify REPO` at `now`, which must fail: its error line.
    fn verify_fails(&self, now: &str) -> String {
        let out = self.run(now, &["verify"], false);
        assert_eq!(out.status.code(), Some(1), "verify at {now} passed");
        let err = common::stderr(&out);
        err.lines()
            .find(|l| l.starts_with("error["))
            .unwrap_or("")
            .to_string()
    }
}

/// The versions `verify --json` lists for `channel`.
fn versions(report: &Value, channel: &str) -> Vec<String> {
    let ch = report["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == channel)
        .unwrap_or_else(|| panic!("expected channel {channel} verified, found {report}"));
    assert_eq!(
        ch["stranded"],
        json!([]),
        "{channel} strands devices: {report}"
    );
    ch["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// A simulated device: its config, state dir and dir slots, and its hardware revision.
struct Unit {
    name: &'static str,
    dev: Device,
    hw: &'static str,
}

impl Unit {
    /// `evergreen <cmd> --json [args]` at `now`, which must exit `code`: its JSON.
    fn json(&self, now: &str, cmd: &str, args: &[&str], code: i32) -> Value {
        self.dev.json_at(now, cmd, args, code)
    }

    /// `update --yes --json` at `now`: its JSON.
    fn update(&self, now: &str) -> Value {
        self.json(now, "update", &["--yes"], 0)
    }

    /// `status --json`.
    fn status(&self) -> Value {
        self.dev.status()
    }

    /// Starts the app through the launcher (the startup step, then `run.sh`), as a service
    /// manager would, with the CLI's clock at `now` for the app's `confirm`.
    fn start(&self, now: &str) -> Output {
        let mut cmd = Command::new(example("launcher"));
        cmd.args(["--config", self.dev.config.to_str().unwrap()])
            .args(["--component", "app", "--entry", "run.sh"])
            .env("EVERGREEN", common::bin())
            .env("EVERGREEN_CONFIG", &self.dev.config)
            .env("EVERGREEN_NOW", now)
            .env("HW", self.hw);
        common::output_within(&mut cmd, common::CLI_LIMIT)
    }

    /// Starts the app, which must pass its health check running `version`.
    fn starts_healthy(&self, now: &str, version: &str) {
        let out = self.start(now);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.contains(&format!("app {version} healthy")),
            "{}: expected app {version} healthy, found {said} {}",
            self.name,
            common::stderr(&out)
        );
    }

    /// The version in the primary slot and its status.
    fn primary(&self) -> (String, String) {
        let s = self.status();
        let slot = &s["slots"][s["primary"].as_str().unwrap()];
        (
            slot["version"].as_str().unwrap_or("-").to_string(),
            slot["status"].as_str().unwrap().to_string(),
        )
    }

    /// The other slot's record.
    fn other(&self) -> Value {
        let s = self.status();
        s["slots"][s["fallback"].as_str().unwrap()].clone()
    }
}

/// A device id whose rollout bucket for `version` is below 5 % (`inside`) or not.
fn device_id(role: &str, version: &str, inside: bool) -> String {
    let v = semver::Version::parse(version).unwrap();
    (0..10_000)
        .map(|n| format!("incident-{role}-{n}"))
        .find(|id| (evergreen::select::rollout_bucket(PRODUCT, id, &v) < 500) == inside)
        .unwrap()
}

// The day: Monday 1 March 2027 and after. The maintenance window is 02:00–04:00 UTC daily.
const DAY0: &str = "2027-03-01T09:00:00Z";
const SHIP: &str = "2027-03-02T10:00:00Z";
const TAKE: &str = "2027-03-02T10:30:00Z";
const HALT: &str = "2027-03-02T12:00:00Z";
const AFTER_HALT: &str = "2027-03-02T12:30:00Z";
const WINDOW1: &str = "2027-03-03T02:30:00Z";
const FIX: &str = "2027-03-03T09:00:00Z";
const FIX_TAKEN: &str = "2027-03-03T09:30:00Z";
const WINDOW2: &str = "2027-03-04T02:15:00Z";
const NEAR_EXPIRY: &str = "2027-03-28T09:00:00Z";
const AFTER: &str = "2027-03-28T10:00:00Z";

#[test]
fn a_broken_release_is_halted_fixed_and_pruned_and_every_device_ends_on_the_fix() {
    let Some((repo, nginx)) = served() else {
        return;
    };
    let op = Operator { repo: &repo };
    let src = repo.scratch("src");
    let zip = |v: &str| app_zip(&src, v).display().to_string();
    let component = |v: &str| format!("app={}", zip(v));

    // 1.3.0, good everywhere, reaches stable through preview.
    let c130 = component("1.3.0");
    op.ok(
        DAY0,
        &[
            "release --channel preview --version 1.3.0 --target x86_64-linux --component",
            &c130,
        ],
    );
    op.ok(
        DAY0,
        &["promote --version 1.3.0 --from preview --to stable"],
    );
    let (report, _) = op.verify(DAY0);
    assert_eq!(versions(&report, "stable"), ["1.3.0"]);

    let window = json!({"policy": "window", "window": {
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        "start": "02:00", "end": "04:00", "utc_offset": "+00:00"}});
    // `inside`: whether the device's id falls in 1.4.0's 5 %.
    let unit = |name: &'static str, inside: bool, hw: &'static str, deploy: Value| {
        let id = device_id(name, "1.4.0", inside);
        let mut extra = json!({"device_id": id, "limits": {"retries": 1, "retry_backoff_ms": 10}});
        if !deploy.is_null() {
            extra["deploy"] = deploy;
        }
        Unit {
            name,
            dev: repo.device(name, &format!("{}/", nginx.url()), extra),
            hw,
        }
    };
    // In 1.4.0's 5 %: one on hardware where 1.4.0 fails its health check, one where it
    // passes it (subtly broken), one that only stages (download_only), one that waits for
    // its maintenance window, and one whose user skips 1.4.0. Outside: one more.
    let flaky = unit("flaky", true, "rev1", Value::Null);
    let subtle = unit("subtle", true, "rev2", Value::Null);
    let manual = unit("manual", true, "rev1", json!({"policy": "download_only"}));
    let windowed = unit("windowed", true, "rev2", window);
    let skipper = unit("skipper", true, "rev1", Value::Null);
    let outside = unit("outside", false, "rev1", Value::Null);
    let fleet = [&flaky, &subtle, &manual, &windowed, &skipper, &outside];

    for u in fleet {
        let up = u.update(DAY0);
        if up["status"] != "activated" {
            assert_eq!(
                up["status"],
                if u.name == "manual" {
                    "staged"
                } else {
                    "deferred"
                },
                "{}",
                u.name
            );
            assert_eq!(
                u.json(DAY0, "activate", &["--now"], 0)["status"],
                "activated"
            );
        }
        u.starts_healthy(DAY0, "1.3.0");
        assert_eq!(u.primary(), ("1.3.0".into(), "good".into()), "{}", u.name);
    }

    // 1.4.0 ships: preview, then stable at 5 %. It raises the security floor to 1.
    let c140 = component("1.4.0");
    op.ok(
        SHIP,
        &[
            "release --channel preview --version 1.4.0 --target x86_64-linux --component",
            &c140,
            "--security-version",
            "1",
        ],
    );
    op.ok(
        SHIP,
        &["promote --version 1.4.0 --from preview --to stable --rollout 5"],
    );
    let (report, _) = op.verify(SHIP);
    assert_eq!(versions(&report, "stable"), ["1.3.0", "1.4.0"]);

    assert_eq!(
        skipper.json(TAKE, "skip", &["1.4.0"], 0),
        json!({"skipped": "1.4.0"})
    );
    for u in [&flaky, &subtle] {
        let up = u.update(TAKE);
        assert_eq!(
            (&up["status"], &up["version"]),
            (&json!("activated"), &json!("1.4.0")),
            "{}",
            u.name
        );
    }
    let up = manual.update(TAKE);
    assert_eq!(
        (&up["status"], &up["version"]),
        (&json!("staged"), &json!("1.4.0"))
    );
    let up = windowed.update(TAKE);
    assert_eq!(
        (&up["status"], &up["version"]),
        (&json!("deferred"), &json!("1.4.0"))
    );
    assert_eq!(up["until"], "2027-03-03T02:00:00Z");
    for u in [&skipper, &outside] {
        assert_eq!(u.update(TAKE)["status"], "up_to_date", "{}", u.name);
        assert_eq!(u.primary(), ("1.3.0".into(), "good".into()), "{}", u.name);
    }
    // On rev1 1.4.0 fails its health check at every start, and the fourth start is back
    // on 1.3.0, 1.4.0 marked bad.
    for _ in 0..3 {
        assert!(!flaky.start(TAKE).status.success());
    }
    flaky.starts_healthy(TAKE, "1.3.0");
    assert_eq!(flaky.primary(), ("1.3.0".into(), "good".into()));
    assert_eq!(flaky.other(), json!({"status": "bad", "version": "1.4.0"}));
    assert_eq!(flaky.status()["security_floor"], 0);
    // On rev2 it passes its health check: confirmed, and the floor is 1 now.
    subtle.starts_healthy(TAKE, "1.4.0");
    assert_eq!(subtle.primary(), ("1.4.0".into(), "good".into()));
    assert_eq!(subtle.status()["security_floor"], 1);
    // Staged, each held by its own deploy policy, as `status` says.
    assert_eq!(
        manual.other(),
        json!({"status": "installed", "version": "1.4.0", "deferred": {"until": null,
            "reason": "the deploy policy is download_only: it waits for an activate"}})
    );
    let staged = windowed.other();
    assert_eq!(
        (&staged["status"], &staged["version"]),
        (&json!("installed"), &json!("1.4.0")),
        "{staged}"
    );
    assert!(staged["deferred"]["until"].is_string(), "{staged}");

    // The halt.
    let out = op.ok(
        HALT,
        &["rollout --channel stable --version 1.4.0 --percent 0"],
    );
    assert!(out.contains("rollout of 1.4.0 at 0% on stable"), "{out}");
    op.verify(HALT);
    // A pipeline that promotes 1.4.0 on by version number is refused.
    let err = op.fails(
        HALT,
        &["promote --version 1.4.0 --from stable --to nightly"],
    );
    assert!(
        err.starts_with("error[config]") && err.contains("halted"),
        "{err}"
    );
    // A halt of a version the channel does not have is refused, naming it.
    let err = op.fails(
        HALT,
        &["rollout --channel stable --version 1.4.2 --percent 0"],
    );
    assert!(
        err.starts_with("error[no_such_version]") && err.contains("1.4.2"),
        "{err}"
    );

    // Devices that staged 1.4.0 hold it back from their next check on.
    assert_eq!(
        manual.json(AFTER_HALT, "check", &[], 0)["status"],
        "up_to_date"
    );
    let withheld = manual.other();
    assert_eq!(
        (&withheld["status"], &withheld["version"]),
        (&json!("installed"), &json!("1.4.0"))
    );
    assert!(
        withheld["withheld"]
            .as_str()
            .unwrap_or("")
            .contains("rollout"),
        "expected 1.4.0 withheld for its rollout, found {withheld}"
    );
    let act = manual.json(AFTER_HALT, "activate", &[], 0);
    assert_eq!(
        (&act["status"], &act["version"]),
        (&json!("deferred"), &json!("1.4.0")),
        "{act}"
    );
    assert_eq!(manual.primary(), ("1.3.0".into(), "good".into()));
    // The windowed device's timer runs at the window: its check withholds 1.4.0, and the
    // window's activation defers it.
    assert_eq!(windowed.update(WINDOW1)["status"], "up_to_date");
    assert!(
        windowed.other()["withheld"].is_string(),
        "{}",
        windowed.status()
    );
    assert_eq!(
        windowed.json(WINDOW1, "activate", &[], 0)["status"],
        "deferred"
    );
    assert_eq!(windowed.primary(), ("1.3.0".into(), "good".into()));
    // Nothing takes back the devices that confirmed 1.4.0: a halt stops new ones only.
    assert_eq!(
        subtle.json(AFTER_HALT, "check", &[], 0)["status"],
        "up_to_date"
    );
    // Nor could they go back to 1.3.0 by hand: their floor is 1.
    let err = subtle.dev.fails("rollback", &[]);
    assert!(err.starts_with("error[security_floor]"), "{err}");
    assert_eq!(subtle.primary(), ("1.4.0".into(), "good".into()));

    // The fix, 1.4.1 (1.4.0 without the bug), must carry the floor 1.4.0 set: a release
    // below it is refused, naming 1.4.0.
    let c141 = component("1.4.1");
    let err = op.fails(
        FIX,
        &[
            "release --channel preview --version 1.4.1 --target x86_64-linux --component",
            &c141,
        ],
    );
    assert!(
        err.starts_with("error[config]") && err.contains("1.4.0"),
        "{err}"
    );
    op.ok(
        FIX,
        &[
            "release --channel preview --version 1.4.1 --target x86_64-linux --component",
            &c141,
            "--security-version",
            "1",
        ],
    );
    // A promote whose blob did not make it into this copy of the repository goes through,
    // and `verify` catches it before the upload.
    let blob_dir = repo.root.join("blobs/sha256");
    let sha = evergreen::trust::sha256_hex(&std::fs::read(app_zip(&src, "1.4.1")).unwrap());
    let aside = repo.scratch("aside").join(&sha);
    std::fs::rename(blob_dir.join(&sha), &aside).unwrap();
    let before = std::fs::read(repo.root.join("channels/stable.json")).unwrap();
    op.ok(FIX, &["promote --version 1.4.1 --from preview --to stable"]);
    let err = op.verify_fails(FIX);
    assert!(
        err.starts_with("error[not_found]")
            && err.contains(&sha)
            && err.contains("stable release 1.4.1"),
        "{err}"
    );
    std::fs::rename(&aside, blob_dir.join(&sha)).unwrap();
    std::fs::write(repo.root.join("channels/stable.json"), before).unwrap();
    // Done right: promoted at once, to everyone.
    op.ok(FIX, &["promote --version 1.4.1 --from preview --to stable"]);
    let (report, _) = op.verify(FIX);
    assert_eq!(versions(&report, "stable"), ["1.3.0", "1.4.0", "1.4.1"]);

    // Every device is offered the fix: the one 1.4.0 failed on, the one that confirmed it,
    // the one that skipped it and the one outside its rollout.
    for u in [&flaky, &subtle, &skipper, &outside] {
        let up = u.update(FIX_TAKEN);
        assert_eq!(
            (&up["status"], &up["version"]),
            (&json!("activated"), &json!("1.4.1")),
            "{}",
            u.name
        );
        u.starts_healthy(FIX_TAKEN, "1.4.1");
        assert_eq!(u.primary(), ("1.4.1".into(), "good".into()), "{}", u.name);
        assert_eq!(u.status()["security_floor"], 1, "{}", u.name);
    }
    // The staged ones stage 1.4.1 over 1.4.0 and keep to their policy.
    let up = manual.update(FIX_TAKEN);
    assert_eq!(
        (&up["status"], &up["version"]),
        (&json!("staged"), &json!("1.4.1"))
    );
    assert_eq!(
        manual.other(),
        json!({"status": "installed", "version": "1.4.1", "deferred": {"until": null,
            "reason": "the deploy policy is download_only: it waits for an activate"}})
    );
    assert_eq!(
        manual.json(FIX_TAKEN, "activate", &[], 0)["status"],
        "activated"
    );
    manual.starts_healthy(FIX_TAKEN, "1.4.1");
    let up = windowed.update(FIX_TAKEN);
    assert_eq!(
        (&up["status"], &up["version"]),
        (&json!("deferred"), &json!("1.4.1"))
    );
    assert_eq!(up["until"], "2027-03-04T02:00:00Z");
    let staged = windowed.other();
    assert_eq!(
        (&staged["status"], &staged["version"]),
        (&json!("installed"), &json!("1.4.1")),
        "{staged}"
    );
    assert_eq!(staged["deferred"]["until"], up["until"], "{staged}");
    let act = windowed.json(WINDOW2, "activate", &[], 0);
    assert_eq!(
        (&act["status"], &act["version"]),
        (&json!("activated"), &json!("1.4.1"))
    );
    windowed.starts_healthy(WINDOW2, "1.4.1");

    // Weeks later the channels are close to expiry: `verify` says so and names the
    // command; `resign` renews them.
    let (report, _) = op.verify(NEAR_EXPIRY);
    let warnings = report["warnings"].to_string();
    for ch in ["preview", "stable"] {
        assert!(
            warnings.contains(&format!("evergreen resign REPO --channel {ch} --sign KEY")),
            "expected a warning naming the resign of {ch}, found: {warnings}"
        );
        op.ok(NEAR_EXPIRY, &["resign --channel", ch]);
    }
    let (report, _) = op.verify(NEAR_EXPIRY);
    assert_eq!(report["warnings"], json!([]));

    // Prune: 1.4.1 is the one release stable needs.
    let out = op.ok(AFTER, &["prune --channel stable --keep 1"]);
    assert!(out.contains("removed 1.4.0, 1.3.0"), "{out}");
    let (report, _) = op.verify(AFTER);
    assert_eq!(versions(&report, "stable"), ["1.4.1"]);

    // Every device ends on the fix, confirmed, and finds nothing more to take; a device
    // that was off the whole time (on 1.3.0, in 1.4.0's 5 %) takes the fix too.
    for u in fleet {
        assert_eq!(
            u.json(AFTER, "check", &[], 0)["status"],
            "up_to_date",
            "{}",
            u.name
        );
        assert_eq!(u.primary(), ("1.4.1".into(), "good".into()), "{}", u.name);
        assert_eq!(u.status()["trial"], Value::Null, "{}", u.name);
        u.starts_healthy(AFTER, "1.4.1");
    }
    let late = unit("late", true, "rev1", Value::Null);
    late.dev
        .edit_config(|c| c["current_version"] = json!("1.3.0"));
    let up = late.update(AFTER);
    assert_eq!(
        (&up["status"], &up["version"]),
        (&json!("activated"), &json!("1.4.1"))
    );
}

/// A device with a maintenance window, run by the timer the README gives (`update --yes
/// --if-due` every 15 minutes), activates the fix it staged once its window opens, without
/// waiting for a check to be due inside the window; a release a check withheld since (its
/// rollout halted) stays staged. With a daily poll that falls before the window, the fix
/// waited for good: the timer checked only when a check was due, and activated only after
/// one.
#[test]
fn a_windowed_device_on_the_if_due_timer_activates_its_staged_fix_when_the_window_opens() {
    let Some((repo, nginx)) = served() else {
        return;
    };
    let op = Operator { repo: &repo };
    let src = repo.scratch("src");
    let component = |v: &str| format!("app={}", app_zip(&src, v).display());
    let c130 = component("1.3.0");
    op.ok(
        "2027-03-01T01:00:00Z",
        &[
            "release --channel stable --version 1.3.0 --target x86_64-linux --component",
            &c130,
        ],
    );
    let extra = json!({
        "device_id": "windowed-1",
        "limits": {"retries": 1, "retry_backoff_ms": 10},
        "poll": {"interval_s": 86400, "jitter": 0.0},
        "deploy": {"policy": "window", "window": {
            "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "start": "02:00", "end": "04:00", "utc_offset": "+00:00"}},
    });
    let windowed = Unit {
        name: "windowed",
        dev: repo.device("windowed", &format!("{}/", nginx.url()), extra),
        hw: "rev2",
    };
    // Installed (by hand, at once) and checked daily at 01:30, before its window.
    let first = "2027-03-01T01:30:00Z";
    assert_eq!(windowed.update(first)["status"], "deferred");
    assert_eq!(
        windowed.json(first, "activate", &["--now"], 0)["status"],
        "activated"
    );
    windowed.starts_healthy(first, "1.3.0");

    let c141 = component("1.4.1");
    op.ok(
        "2027-03-01T10:00:00Z",
        &[
            "release --channel stable --version 1.4.1 --target x86_64-linux --component",
            &c141,
        ],
    );
    // The timer's ticks on 2 March: the 01:30 one is due and stages 1.4.1 for the window.
    let tick = |at: &str| windowed.json(at, "update", &["--yes", "--if-due"], 0);
    let up = tick("2027-03-02T01:30:00Z");
    assert_eq!(
        (&up["status"], &up["version"]),
        (&json!("deferred"), &json!("1.4.1")),
        "{up}"
    );
    assert_eq!(tick("2027-03-02T01:45:00Z")["status"], "not_due");
    // A download only, in the window, activates nothing.
    let only = windowed.json(
        "2027-03-02T02:00:00Z",
        "update",
        &["--if-due", "--download-only"],
        0,
    );
    assert_eq!(only["status"], "not_due", "{only}");
    let up = tick("2027-03-02T02:00:00Z");
    assert_eq!(
        (&up["status"], &up["version"]),
        (&json!("activated"), &json!("1.4.1")),
        "expected the tick at the window's start to activate the staged 1.4.1, found {up}: {}",
        windowed.status()
    );
    assert_eq!(tick("2027-03-02T02:15:00Z")["status"], "not_due");
    windowed.starts_healthy("2027-03-02T02:15:00Z", "1.4.1");

    // 1.5.0 is staged at the next day's due tick, then halted; a check (the device's UI,
    // say) hears of the halt before the window: the ticks in the window leave it staged.
    let c150 = component("1.5.0");
    op.ok(
        "2027-03-02T10:00:00Z",
        &[
            "release --channel stable --version 1.5.0 --target x86_64-linux --component",
            &c150,
        ],
    );
    let up = tick("2027-03-03T01:30:00Z");
    assert_eq!(
        (&up["status"], &up["version"]),
        (&json!("deferred"), &json!("1.5.0")),
        "{up}"
    );
    op.ok(
        "2027-03-03T01:35:00Z",
        &["rollout --channel stable --version 1.5.0 --percent 0"],
    );
    assert_eq!(
        windowed.json("2027-03-03T01:40:00Z", "check", &[], 0)["status"],
        "up_to_date"
    );
    for at in ["2027-03-03T02:00:00Z", "2027-03-03T02:15:00Z"] {
        assert_eq!(tick(at)["status"], "not_due", "{at}");
    }
    assert_eq!(windowed.primary(), ("1.4.1".into(), "good".into()));
    let staged = windowed.other();
    assert_eq!(
        (&staged["status"], &staged["version"]),
        (&json!("installed"), &json!("1.5.0"))
    );
    assert!(staged["withheld"].is_string(), "{staged}");
}

/// An incident can outlast a channel's validity: the halt of a release on a channel that
/// has already expired goes out all the same (re-signed with a fresh expiry), as the
/// operators' guide says, and the channel verifies again.
#[test]
fn a_halt_goes_out_on_a_channel_that_has_already_expired() {
    let repo = Repo::new(PRODUCT);
    let op = Operator { repo: &repo };
    let src = repo.scratch("src");
    let c140 = format!("app={}", app_zip(&src, "1.4.0").display());
    op.ok(
        DAY0,
        &[
            "release --channel stable --version 1.4.0 --target x86_64-linux --component",
            &c140,
            "--rollout",
            "5",
        ],
    );
    let late = "2027-04-15T00:00:00Z";
    let err = op.verify_fails(late);
    assert!(err.starts_with("error[expired]"), "{err}");
    let out = op.ok(
        late,
        &["rollout --channel stable --version 1.4.0 --percent 0"],
    );
    assert!(out.contains("expires 2027-05-15T00:00:00Z"), "{out}");
    let (report, _) = op.verify(late);
    assert_eq!(versions(&report, "stable"), ["1.4.0"]);
}
