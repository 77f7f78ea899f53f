//! The story, one function per numbered step. Each step prints what happens and why, and
//! checks what a user relies on: versions, slot statuses, offers and error kinds.

use super::device::{AppRun, Device, DEVICE_ID};
use super::narrate::{ensure, expect_eq, Console, Failure, Outcome};
use super::world::{Part, Publisher, SimClock, PRODUCT};
use crate::support::{Fault, TestServer};
use evergreen::select::{bucket_in_rollout, rollout_bucket, Deploy};
use evergreen::slots::Slot;
use evergreen::stage::ComponentOp;
use evergreen::{Activation, ErrorKind, Event, Offer, Timestamp};
use semver::Version;
use serde_json::json;
use std::sync::Arc;

/// Everything the story acts on. Fields drop in order: the server stops before the temp
/// dir it serves is removed.
pub struct Demo {
    console: Arc<Console>,
    clock: SimClock,
    publisher: Publisher,
    server: TestServer,
    device: Device,
    dir: tempfile::TempDir,
}

/// A step: its title and what it does.
pub type Step = (&'static str, fn(&mut Demo) -> Outcome);

/// The story in order.
pub const STEPS: [Step; 7] = [
    (
        "1.0.0 is installed on stable: fresh install, trial, confirm",
        install_first,
    ),
    ("1.1.0 reaches nightly and preview before stable", channels),
    (
        "A staged rollout of 1.1.0 on stable: 20%, then 40%",
        rollout,
    ),
    (
        "The device joins preview and updates component by component",
        join_preview,
    ),
    (
        "A broken 1.2.0 fails its health check and rolls back by itself",
        broken_release,
    ),
    ("A tampered manifest is refused", tampered_manifest),
    (
        "A maintenance window defers an update until it opens",
        maintenance_window,
    ),
];

impl Demo {
    /// Keys, an empty signed repository served on 127.0.0.1, and a device with nothing
    /// installed, all in a temp dir.
    pub fn new(console: Arc<Console>) -> Outcome<Demo> {
        let dir = tempfile::tempdir()?;
        crate::interrupt::remove_on_interrupt(dir.path());
        let clock = SimClock::new();
        let publisher = Publisher::init(dir.path(), clock.clone())?;
        let server = TestServer::serve(publisher.repo().path());
        console.say(format!(
            "repository {} signed by key {}…, served at {}",
            publisher.repo().path().display(),
            &publisher.keyid()[..16],
            server.url()
        ));
        let device = Device::new(
            DEVICE_ID,
            &dir.path().join("device"),
            &server.url(),
            publisher.repo().path(),
            clock.clone(),
            Arc::clone(&console),
        )?;
        Ok(Demo {
            console,
            clock,
            publisher,
            server,
            device,
            dir,
        })
    }

    fn say(&self, text: impl AsRef<str>) {
        self.console.say(text);
    }

    fn ok(&self, text: impl AsRef<str>) {
        self.console.ok(text);
    }

    /// Moves the simulated clock and says so.
    fn days_pass(&self, days: i64) {
        self.clock.advance_hours(24 * days);
        self.say(format!("(simulated clock: {})", self.clock.now()));
    }

    /// The parts of a release: the app, the unchanging assets, and `extra` file components.
    fn parts(&self, version: &str, healthy: bool, extra: &[&str]) -> Outcome<Vec<Part>> {
        let mut parts = vec![
            self.publisher.app(version, healthy)?,
            self.publisher.assets()?,
        ];
        for name in extra {
            let (name, file, text) = match *name {
                "legacy" => (
                    "legacy",
                    "compat.sh",
                    "#!/bin/sh\nexec old-gateway \"$@\"\n",
                ),
                _ => ("plugin", "plugin.toml", "[plugin]\nname = \"metrics\"\n"),
            };
            parts.push(self.publisher.file(name, file, text)?);
        }
        Ok(parts)
    }

    /// Checks that the primary slot runs `version` and is `status`, both in the state and
    /// in the files a start runs (the app's `VERSION` through the `current` link).
    fn expect_running(&self, version: &str, status: &str) -> Outcome<Slot> {
        let s = self.device.status()?;
        let primary = &s.slots[&s.primary];
        expect_eq(
            "running version",
            self.device.running()?,
            Some(version.into()),
        )?;
        expect_eq("primary slot status", primary.status, status)?;
        expect_eq(
            "the app's VERSION through the current link",
            self.device.app_version()?,
            version.to_string(),
        )?;
        self.ok(format!("slot {} runs {version} ({status})", s.primary));
        Ok(s.primary)
    }

    /// Installs and activates `offer`, expecting activation now: into the slot that was
    /// not running, which becomes primary and starts its trial.
    fn update_now(&self, offer: &Offer) -> Outcome<Slot> {
        let running = self.device.status()?.primary;
        match self.device.update(offer)? {
            Activation::Activated { slot, version } => {
                expect_eq("activated version", version, offer.version.clone())?;
                ensure(slot != running, || {
                    format!("activated slot {slot}: expected the inactive one, not {running}")
                })?;
                let s = self.device.status()?;
                expect_eq("primary after activation", s.primary, slot)?;
                expect_eq("slot on trial", s.trial.map(|t| t.slot), Some(slot))?;
                Ok(slot)
            }
            Activation::Deferred { reason, .. } => Err(Failure(format!(
                "activate: expected activation now, found it deferred: {reason}"
            ))),
        }
    }

    /// Starts the app and expects `what` to happen.
    fn start(&self, what: AppRun) -> Outcome {
        expect_eq("app start", self.device.start_app()?, what)
    }
}

fn install_first(d: &mut Demo) -> Outcome {
    let v1 = Version::new(1, 0, 0);
    let parts = d.parts("1.0.0", true, &["legacy"])?;
    for channel in ["stable", "preview", "nightly"] {
        d.publisher
            .release(channel, &v1, &parts, "First release.")?;
    }
    d.say("operator: 1.0.0 (app, assets, legacy) published on stable, preview and nightly");
    d.say("device: nothing installed, ships only the pinned root; it checks stable");
    let offer = d.device.expect_offer("1.0.0")?;
    let slot = d.update_now(&offer)?;
    d.say(format!(
        "slot {slot} (the inactive one: a running slot is never written) is primary now, on trial"
    ));
    d.say("the app starts, passes its health check and confirms itself");
    d.start(AppRun::Confirmed)?;
    d.expect_running("1.0.0", "good")?;
    Ok(())
}

fn channels(d: &mut Demo) -> Outcome {
    let v11 = Version::new(1, 1, 0);
    d.days_pass(1);
    let parts = d.parts("1.1.0", true, &["plugin"])?;
    d.publisher.release(
        "nightly",
        &v11,
        &parts,
        "Metrics plugin; legacy helper removed.",
    )?;
    d.say("operator: 1.1.0 published on nightly (the riskiest channel, updated first)");
    d.days_pass(1);
    d.publisher.promote(&v11, "nightly", "preview", None)?;
    d.say("operator: nightly looked fine for a day, 1.1.0 promoted to preview");
    let report = d.publisher.repo().verify(d.clock.now())?;
    let names: Vec<&str> = report.channels.iter().map(|c| c.channel.as_str()).collect();
    expect_eq(
        "channels in the repository",
        names.as_slice(),
        &["nightly", "preview", "stable"][..],
    )?;
    for c in &report.channels {
        let versions: Vec<String> = c.versions.iter().map(ToString::to_string).collect();
        d.say(format!(
            "repo: {:<8} sequence {}  [{}]",
            c.channel,
            c.sequence,
            versions.join(", ")
        ));
        let has = c.versions.contains(&v11);
        expect_eq(
            &format!("1.1.0 on {}", c.channel),
            has,
            c.channel != "stable",
        )?;
    }
    for channel in ["nightly", "preview"] {
        d.device.expect_offer_on(Some(channel), "1.1.0")?;
        d.ok(format!(
            "check of {channel} through the server: 1.1.0 offered"
        ));
    }
    d.device.expect_up_to_date()?;
    d.ok("check on stable: up to date, 1.1.0 is not on stable yet");
    Ok(())
}

/// The stable rollout of 1.1.0: its first stage, and the ramp after it, in percent.
const FIRST_STAGE: f64 = 20.0;
const RAMP: f64 = 40.0;

fn rollout(d: &mut Demo) -> Outcome {
    let v11 = Version::new(1, 1, 0);
    d.days_pass(1);
    d.publisher
        .promote(&v11, "preview", "stable", Some(FIRST_STAGE))?;
    d.say(format!(
        "operator: 1.1.0 promoted to stable for {FIRST_STAGE}% of devices"
    ));
    let inside = rollout_reaches(d, &d.device, &v11)?;
    // A neighbour with nothing installed, whose bucket is on the other side of the 20%:
    // offered 1.1.0 where this device is held back (or the other way round).
    let neighbour = (1..)
        .map(|n| format!("gateway-{n:04}"))
        .find(|id| bucket_in_rollout(rollout_bucket(PRODUCT, id, &v11), FIRST_STAGE) != inside)
        .ok_or_else(|| Failure("no neighbour on the other side of the rollout".into()))?;
    let other = Device::new(
        &neighbour,
        &d.dir.path().join(&neighbour),
        &d.server.url(),
        d.publisher.repo().path(),
        d.clock.clone(),
        Arc::clone(&d.console),
    )?;
    rollout_reaches(d, &other, &v11)?;
    d.clock.advance_hours(6);
    d.publisher.rollout("stable", &v11, RAMP)?;
    d.say(format!(
        "operator: no problem reports, ramped to {RAMP}% ({})",
        d.clock.now()
    ));
    // The next step moves the device to preview because stable has not reached it yet.
    let (bucket, limit) = (rollout_bucket(PRODUCT, DEVICE_ID, &v11), RAMP * 100.0);
    ensure(!bucket_in_rollout(bucket, RAMP), || {
        format!(
            "the story needs {DEVICE_ID} outside the {RAMP}% rollout of 1.1.0: expected its \
             bucket ≥ {limit}, found {bucket}"
        )
    })?;
    d.device.expect_up_to_date()?;
    d.ok(format!(
        "{DEVICE_ID}: check on stable at {RAMP}%: up to date (bucket {bucket} ≥ {limit}: still held back)"
    ));
    Ok(())
}

/// Checks stable at the 20% rollout of `version` (1.1.0) on `device`: offered it when the
/// device's bucket is under 2000, else the release before it (1.0.0) when the device has
/// nothing installed, or nothing. Returns whether the device is inside the rollout.
fn rollout_reaches(d: &Demo, device: &Device, version: &Version) -> Outcome<bool> {
    let (id, bucket) = (device.id(), rollout_bucket(PRODUCT, device.id(), version));
    let inside = bucket_in_rollout(bucket, FIRST_STAGE);
    d.say(format!(
        "device {id}: bucket {bucket} for {version}; the rule is bucket < percent×100 = {}, so it is {}",
        FIRST_STAGE * 100.0,
        if inside { "IN" } else { "OUT" }
    ));
    if inside {
        device.expect_offer(&version.to_string())?;
        d.ok(format!(
            "{id}: check on stable at {FIRST_STAGE}%: {version} offered"
        ));
    } else if device.running()?.is_none() {
        device.expect_offer("1.0.0")?;
        d.ok(format!(
            "{id}: check on stable at {FIRST_STAGE}%: 1.0.0 offered ({version} held back by the rollout)"
        ));
    } else {
        device.expect_up_to_date()?;
        d.ok(format!(
            "{id}: check on stable at {FIRST_STAGE}%: up to date (held back by the rollout)"
        ));
    }
    Ok(inside)
}

fn join_preview(d: &mut Demo) -> Outcome {
    d.device.updater.set_channel("preview")?;
    d.say("stable's rollout has not reached the device: its owner moves it to the preview ring");
    d.say("to get releases early, 1.1.0 now and the next ones before stable (set_channel)");
    let offer = d.device.expect_offer("1.1.0")?;
    expect_eq("offer channel", offer.channel.as_str(), "preview")?;
    let ops: Vec<(&str, ComponentOp)> = offer
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.op))
        .collect();
    let expected = [
        ("app", ComponentOp::Modified),
        ("assets", ComponentOp::Unchanged),
        ("legacy", ComponentOp::Removed),
        ("plugin", ComponentOp::Added),
    ];
    expect_eq("component diff", ops.as_slice(), expected.as_slice())?;
    d.update_now(&offer)?;
    d.start(AppRun::Confirmed)?;
    d.expect_running("1.1.0", "good")?;
    let current = d.device.current();
    ensure(
        current.join("plugin/plugin.toml").is_file() && !current.join("legacy").exists(),
        || "the new slot should hold plugin/ and no legacy/".to_string(),
    )?;
    expect_eq(
        "assets/index.html in the new slot",
        std::fs::read_to_string(current.join("assets/index.html")).ok(),
        Some("<h1>Gateway</h1>".to_string()),
    )?;
    d.ok("the new slot has plugin/, no legacy/, and assets/ installed without a download");
    Ok(())
}

fn broken_release(d: &mut Demo) -> Outcome {
    let v12 = Version::new(1, 2, 0);
    d.days_pass(1);
    let parts = d.parts("1.2.0", false, &["plugin"])?;
    d.publisher
        .release("preview", &v12, &parts, "New protocol stack.")?;
    d.say("operator: 1.2.0 published on preview; its app fails its health check");
    let offer = d.device.expect_offer("1.2.0")?;
    let slot = d.update_now(&offer)?;
    d.console.take_events();
    for start in 1..=3 {
        d.say(format!("start {start} of slot {slot}:"));
        d.start(AppRun::Unhealthy)?;
    }
    d.say("start 4: the tries are used up, so the startup step rolls back");
    d.start(AppRun::RolledBack)?;
    let reason = d
        .console
        .take_events()
        .into_iter()
        .find_map(|e| match e {
            Event::RolledBack { reason, .. } => Some(reason),
            _ => None,
        })
        .ok_or_else(|| Failure("expected a rolled_back event, found none".into()))?;
    d.ok(format!("rolled_back event, reason: {reason}"));
    d.say("the host restarts into the fallback slot:");
    d.start(AppRun::Ran)?;
    d.expect_running("1.1.0", "good")?;
    let bad = &d.device.status()?.slots[&slot];
    expect_eq("failed slot status", bad.status, "bad")?;
    d.device.expect_up_to_date()?;
    d.ok("check on preview: up to date, 1.2.0 failed here and is never offered again");
    Ok(())
}

fn tampered_manifest(d: &mut Demo) -> Outcome {
    let path = d.publisher.repo().path().join("channels/preview.json");
    let tampered = flip_payload_char(&std::fs::read(&path)?)?;
    d.server
        .set_fault("channels/preview.json", Fault::Replace(tampered));
    d.say(
        "attacker: the server now serves channels/preview.json with one payload character changed",
    );
    d.say("the device verifies the envelope's signature before it parses a byte of the payload");
    let before = d.device.updater.state()?;
    match d.device.updater.check() {
        Err(e) if e.kind() == ErrorKind::Signature => d.ok(format!(
            "check refused it with error[{}] (the event above)",
            e.kind()
        )),
        Err(e) => return Err(e.into()),
        Ok(_) => {
            return Err(Failure(
                "check: expected error[signature], found success".into(),
            ))
        }
    }
    let mut after = d.device.updater.state()?;
    expect_eq("failed checks counted", after.check_failures, 1)?;
    ensure(after.last_failure.is_some(), || {
        "expected the failed check's time in the state, found none".to_string()
    })?;
    // The history's newest entry says why the check failed, for `status` to show.
    let recorded = after.history.pop_back();
    ensure(
        recorded
            .as_ref()
            .is_some_and(|h| h.event == "check_failed" && h.detail.contains("error[signature]")),
        || {
            format!("expected a check_failed entry naming error[signature] in the history, found {recorded:?}")
        },
    )?;
    after.check_failures = before.check_failures;
    after.last_failure = before.last_failure;
    ensure(after == before, || {
        "the state changed beyond the failed-check count, time and history entry".to_string()
    })?;
    d.ok("slots, trial, channel and seen manifests unchanged; only the failed-check count and time (for backoff) moved");
    d.server.clear_faults();
    d.device.expect_up_to_date()?;
    d.ok("the genuine manifest is served again and accepted");
    Ok(())
}

/// Changes one base64 character in the middle of the envelope's payload, keeping the
/// file valid JSON and valid base64, so only the signature can tell.
fn flip_payload_char(envelope: &[u8]) -> Outcome<Vec<u8>> {
    let mut doc: serde_json::Value = serde_json::from_slice(envelope)
        .map_err(|e| Failure(format!("reading the channel file: {e}")))?;
    let payload = doc["payload"]
        .as_str()
        .ok_or_else(|| Failure("expected a payload in the channel file".into()))?;
    let mut chars: Vec<char> = payload.chars().collect();
    let middle = chars.len() / 2;
    chars[middle] = if chars[middle] == 'A' { 'B' } else { 'A' };
    doc["payload"] = json!(chars.into_iter().collect::<String>());
    Ok(doc.to_string().into_bytes())
}

fn maintenance_window(d: &mut Demo) -> Outcome {
    d.days_pass(1);
    let now = d.clock.now();
    let parts = d.parts("1.3.0", true, &["plugin"])?;
    d.publisher.release(
        "preview",
        &Version::new(1, 3, 0),
        &parts,
        "Fixed protocol stack.",
    )?;
    d.say("operator: 1.3.0 published on preview");
    d.say("the owner allows activations only in a 02:00–04:00 UTC maintenance window:");
    d.device.reconfigure(json!({"policy": "window",
        "window": {"start": "02:00", "end": "04:00", "utc_offset": "+00:00"}}))?;
    let opens = next_two_am(now);
    let offer = d.device.expect_offer("1.3.0")?;
    ensure(
        matches!(offer.deploy, Deploy::Wait { until, .. } if until == opens),
        || {
            format!(
                "offer: expected to wait until {opens}, found {:?}",
                offer.deploy
            )
        },
    )?;
    match d.device.update(&offer)? {
        Activation::Deferred { until, .. } => expect_eq("deferred until", until, Some(opens))?,
        other => return Err(Failure(format!("expected a deferral, found {other:?}"))),
    }
    d.expect_running("1.1.0", "good")?;
    let s = d.device.status()?;
    let waiting = &s.slots[&s.fallback];
    expect_eq(
        "the other slot",
        (
            waiting.version.as_ref().map(ToString::to_string),
            waiting.status,
        ),
        (Some("1.3.0".to_string()), "installed"),
    )?;
    // What `evergreen status` shows an operator wondering why it has not switched.
    expect_eq(
        "status: deferred until",
        waiting.deferred.as_ref().and_then(|d| d.until),
        Some(opens),
    )?;
    d.ok(format!(
        "1.3.0 waits in the other slot {}, installed; status says deferred until {opens}",
        s.fallback
    ));
    d.clock.set(opens);
    d.say(format!(
        "(simulated clock: {}) the window opens",
        d.clock.now()
    ));
    match d.device.updater.activate(false)? {
        Activation::Activated { version, .. } => {
            expect_eq("activated", version, Version::new(1, 3, 0))?
        }
        other => return Err(Failure(format!("expected activation, found {other:?}"))),
    }
    d.start(AppRun::Confirmed)?;
    d.expect_running("1.3.0", "good")?;
    Ok(())
}

/// 02:00 UTC on the day after `now` (the story runs this step in the afternoon).
fn next_two_am(now: Timestamp) -> Timestamp {
    let day = now.unix().div_euclid(86_400);
    Timestamp::from_unix((day + 1) * 86_400 + 2 * 3600)
}
