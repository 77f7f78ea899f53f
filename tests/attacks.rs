//! The attack matrix (DESIGN §11): one test per attack of The Update Framework's threat
//! model, plus zip slip, symlink escapes and zip bombs, each against a real loopback
//! server in front of a repository signed with `evergreen::publish`, each driving a device
//! that had installed and confirmed 1.0.0 honestly. Every test asserts the exact error
//! kind and that the primary slot, the boot link, `status` and `state.json` (and the
//! trusted root, manifest cache and verified downloads) are as they were.

mod common;
mod require;
mod support;
#[path = "attacks/world.rs"]
mod world;

use common::zips::{self, Item};
use evergreen::manifest::Manifest;
use evergreen::publish::{RotateOptions, Signing};
use evergreen::trust::{self, Envelope, EnvelopeSignature, Root, SecretKey, ROOT_TYPE};
use evergreen::{Check, Error, ErrorKind};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::Fault;
use world::{
    app_zip, at, key, manifest_of, refused, release_mut, t0, Dev, Setup, World, ATTACKER_KEY,
    MANIFEST_KEY, ROOT_KEY, SECOND_MANIFEST_KEY,
};

const STABLE: &str = "channels/stable.json";

/// An extra release an attacker wants installed: 1.0.0's components under version 6.6.6.
fn evil_release(m: &mut Manifest) {
    let mut evil = m.releases[0].clone();
    evil.version = "6.6.6".parse().unwrap();
    evil.notes = "totally legit".into();
    m.releases.push(evil);
}

/// Serves `envelope` as the stable manifest (instead of any earlier fault: the server
/// applies the first matching one) and asserts a check refuses it with `kind`, leaving the
/// device as it was.
fn check_refused(w: &World, dev: &Dev, envelope: Vec<u8>, kind: ErrorKind) -> evergreen::Error {
    let before = dev.snapshot();
    w.server.clear_faults();
    w.serve(STABLE, envelope);
    let err = refused(dev.updater.check(), kind);
    before.assert_unchanged(dev);
    err
}

fn envelope(bytes: &[u8]) -> Envelope {
    trust::parse_envelope(bytes).unwrap()
}

fn to_bytes(e: &Envelope) -> Vec<u8> {
    serde_json::to_vec(e).unwrap()
}

// ---- arbitrary software --------------------------------------------------------------

/// TUF "arbitrary software installation": a manifest with no signature at all.
#[test]
fn attack_unsigned_manifest() {
    let (w, dev) = World::installed();
    let unsigned = w.forge("stable", &[], evil_release);
    assert!(envelope(&unsigned).signatures.is_empty());
    check_refused(&w, &dev, unsigned.clone(), ErrorKind::Signature);
    // Nor a bare, unenveloped manifest.
    let payload = trust::decode_base64(&envelope(&unsigned).payload).unwrap();
    check_refused(&w, &dev, payload, ErrorKind::Signature);
}

/// TUF "arbitrary software installation": a manifest signed by a key the root never named.
#[test]
fn attack_manifest_signed_by_a_wrong_key() {
    let (w, dev) = World::installed();
    let forged = w.forge("stable", &[&key(ATTACKER_KEY)], evil_release);
    let err = check_refused(&w, &dev, forged, ErrorKind::Signature);
    assert!(err.message().contains("found 0"), "{err}");
}

fn two_of_two() -> Setup {
    Setup {
        manifest_keys: vec![MANIFEST_KEY, SECOND_MANIFEST_KEY],
        manifest_threshold: 2,
        ..Setup::default()
    }
}

/// TUF "arbitrary software installation": the root asks for two manifest signatures and the
/// served manifest, otherwise genuine, carries one.
#[test]
fn attack_manifest_below_threshold() {
    let (w, dev) = World::installed_with(two_of_two(), json!({}));
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let mut e = envelope(&w.channel_bytes("stable"));
    assert_eq!(e.signatures.len(), 2);
    e.signatures.truncate(1);
    check_refused(&w, &dev, to_bytes(&e), ErrorKind::Threshold);
}

/// TUF "key compromise below threshold": one of two manifest keys is stolen; the attacker
/// signs a new manifest with it, listing the signature twice and under the other keyid.
#[test]
fn attack_key_compromise_below_threshold() {
    let (w, dev) = World::installed_with(two_of_two(), json!({}));
    let stolen = key(SECOND_MANIFEST_KEY);
    let mut e = envelope(&w.forge("stable", &[&stolen], evil_release));
    let sig = e.signatures[0].clone();
    e.signatures.push(sig.clone());
    e.signatures.push(EnvelopeSignature {
        keyid: key(MANIFEST_KEY).public().keyid(),
        sig: sig.sig,
    });
    let err = check_refused(&w, &dev, to_bytes(&e), ErrorKind::Threshold);
    assert!(err.message().contains("found 1"), "{err}");
}

// ---- rollback ------------------------------------------------------------------------

/// TUF "rollback attack": the manifest of sequence 1 replayed after sequence 2 was seen.
#[test]
fn attack_metadata_rollback() {
    let (w, dev) = World::installed();
    let old = w.channel_bytes("stable");
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    assert!(matches!(dev.updater.check().unwrap(), Check::Available(_)));
    let err = check_refused(&w, &dev, old, ErrorKind::MetadataRollback);
    assert!(err.message().contains("sequence 2"), "{err}");
}

/// TUF "rollback attack", variant: the seen sequence number with different signed bytes
/// (a compromised key re-signing history).
#[test]
fn attack_same_sequence_different_bytes() {
    let (w, dev) = World::installed();
    let seen = manifest_of(&w.channel_bytes("stable"));
    let forged = w.forge("stable", &[&key(MANIFEST_KEY)], |m| {
        m.sequence = seen.sequence;
        evil_release(m);
    });
    check_refused(&w, &dev, forged, ErrorKind::MetadataRollback);
}

// ---- indefinite freeze ---------------------------------------------------------------

/// TUF "indefinite freeze": the server keeps serving the last manifest past its expiry.
#[test]
fn attack_expired_manifest() {
    let (w, dev) = World::installed();
    let before = dev.snapshot();
    dev.set_clock(t0().plus_days(31));
    refused(dev.updater.check(), ErrorKind::Expired);
    before.assert_unchanged(&dev);
    // Whether the server answers 304 or the body again.
    w.serve(STABLE, w.channel_bytes("stable"));
    refused(dev.updater.check(), ErrorKind::Expired);
    before.assert_unchanged(&dev);
}

/// TUF "indefinite freeze" with the device's clock set back: a clock earlier than the
/// newest `issued` seen reads as that `issued`, so an expired manifest stays expired.
#[test]
fn attack_clock_set_back_before_the_newest_issued_seen() {
    let (w, dev) = World::installed();
    // A later manifest on another channel, seen 40 days on (stable expired at day 30).
    w.publish(
        "preview",
        "1.1.0",
        &app_zip("1.1.0"),
        at(t0().plus_days(40)),
    );
    dev.set_clock(t0().plus_days(40));
    dev.updater.check_with(Some("preview"), None).unwrap();
    let before = dev.snapshot();
    dev.set_clock(t0().plus_days(1));
    let err = refused(dev.updater.check(), ErrorKind::Expired);
    let stable_expired = t0().plus_days(30).to_string();
    let reads_as = t0().plus_days(40).to_string();
    assert!(
        err.message().contains(&stable_expired) && err.message().contains(&reads_as),
        "{err}"
    );
    before.assert_unchanged(&dev);
}

/// A rollout halted (0 %) because the release is bad must not reach a device whose clock
/// lost power: the halting manifest's own `issued` proves the halt is in force.
#[test]
fn a_halted_rollout_does_not_reach_a_device_whose_clock_lags_the_halt() {
    let (w, dev) = World::installed();
    let mut opts = at(t0().plus_days(1));
    opts.rollout_percent = Some(100.0);
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), opts);
    dev.set_clock(t0().plus_days(1));
    assert!(matches!(dev.updater.check().unwrap(), Check::Available(_)));
    w.repo
        .rollout(
            "stable",
            &"1.1.0".parse().unwrap(),
            0.0,
            &Signing::new(&[&key(MANIFEST_KEY)], t0().plus_days(2)),
        )
        .unwrap();
    // The RTC lost power: the device reads as the newest `issued` it had seen, day 1.
    dev.set_clock(evergreen::Timestamp::from_unix(0));
    assert!(
        matches!(dev.updater.check().unwrap(), Check::UpToDate { .. }),
        "the halted 1.1.0 was offered"
    );
}

/// A device with 1.0.0 and the deploy policy `at` two days on, which stages 1.1.0 (100 %
/// on stable): the activation waits for the policy. Returns the world, the device and
/// the time the policy activates at.
fn staged_until_later() -> (World, Dev, evergreen::Timestamp) {
    let (w, dev, later) = activating_later();
    let mut opts = at(t0());
    opts.rollout_percent = Some(100.0);
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), opts);
    let offer = dev.offer();
    dev.download(&offer).unwrap();
    dev.updater
        .install(&dev.updater.plan(&offer).unwrap())
        .unwrap();
    let act = dev.updater.activate(false).unwrap();
    assert!(
        matches!(act, evergreen::Activation::Deferred { until: Some(t), .. } if t == later),
        "{act:?}"
    );
    (w, dev, later)
}

/// A device with 1.0.0 and the deploy policy `at` two days on, and that time.
fn activating_later() -> (World, Dev, evergreen::Timestamp) {
    let later = t0().plus_days(2);
    let (w, dev) = World::installed_with(
        Setup::default(),
        json!({"deploy": {"policy": "at", "at": later.to_string()}}),
    );
    (w, dev, later)
}

/// The reason an activation gave for waiting on a check, failing when it went ahead.
fn withheld_reason(dev: &Dev) -> String {
    match dev.updater.activate(false).unwrap() {
        evergreen::Activation::Deferred {
            until: None,
            reason,
        } => reason,
        other => panic!("expected the activation withheld, found {other:?}"),
    }
}

/// Checks (offered nothing), then at a day past `later`, when the deploy policy would
/// let it go, asks to activate what is staged: the reason it is withheld.
fn withheld_once_due(dev: &Dev, later: evergreen::Timestamp) -> String {
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    dev.set_clock(later.plus_days(1));
    withheld_reason(dev)
}

/// The plan of what `dev` is offered now, downloaded, not yet installed.
fn downloaded_plan(dev: &Dev) -> evergreen::Offer {
    let offer = dev.offer();
    let plan = dev.updater.plan(&offer).unwrap();
    dev.download(&offer).unwrap();
    plan
}

/// Installs `plan`, then sets the clock a day past `later`, when the deploy policy lets
/// what is staged go.
fn installed_once_due(dev: &Dev, plan: &evergreen::Offer, later: evergreen::Timestamp) {
    dev.updater.install(plan).unwrap();
    dev.set_clock(later.plus_days(1));
}

/// Serves stable's manifest with `version` listed again under 1.0.0's artifacts: other
/// bytes under the same version.
fn relist_with_other_bytes(w: &World, version: &str) {
    let relisted = w.forge("stable", &[&key(MANIFEST_KEY)], |m| {
        let old = release_mut(m, "1.0.0").targets.clone();
        release_mut(m, version).targets = old;
    });
    w.serve(STABLE, relisted);
}

/// Sets the rollout of `version` on stable to `percent` from `at` on.
fn set_rollout(w: &World, version: &str, percent: f64, at: evergreen::Timestamp) {
    let manifest_key = key(MANIFEST_KEY);
    w.repo
        .rollout(
            "stable",
            &version.parse().unwrap(),
            percent,
            &Signing::new(&[&manifest_key], at),
        )
        .unwrap();
}

/// Activates what is staged as the deploy policy allows, failing unless it goes ahead.
fn activates(dev: &Dev) {
    let act = dev.updater.activate(false).unwrap();
    assert!(
        matches!(act, evergreen::Activation::Activated { .. }),
        "{act:?}"
    );
}

/// What `status --json` says withholds `slot`, if anything.
fn shown_withheld(dev: &Dev, slot: evergreen::slots::Slot) -> Option<String> {
    let status = dev.cli_status();
    let shown = &status["slots"][slot.as_str()]["withheld"];
    shown.as_str().map(str::to_string)
}

/// A release halted (rollout 0 %) after a device staged it is not activated when the
/// deploy policy's time comes: the halt is the operator's "stop", and the staged slot
/// waits until a check offers the release again. It used to go ahead at the time set
/// before the halt.
#[test]
fn a_release_halted_after_it_was_staged_waits_for_a_check_that_offers_it_again() {
    let (w, dev, later) = staged_until_later();
    set_rollout(&w, "1.1.0", 0.0, t0().plus_days(1));
    let reason = withheld_once_due(&dev, later);
    assert!(
        reason.starts_with("the newest check of channel stable no longer offers it (its rollout no longer includes this device"),
        "{reason}"
    );
    let staged = dev.primary().other();
    assert_eq!(
        dev.cli_status()["slots"][staged.as_str()]["status"],
        "installed"
    );
    let shown = shown_withheld(&dev, staged).unwrap_or_default();
    assert!(shown.contains("rollout"), "{shown}");
    // Ramped up again: the next check offers it, and the policy lets it go ahead.
    set_rollout(&w, "1.1.0", 100.0, later);
    assert_eq!(dev.offer().version.to_string(), "1.1.0");
    assert_eq!(shown_withheld(&dev, staged), None);
    activates(&dev);
}

/// The CLI says a withheld release where it would otherwise wait in silence: `check`
/// (up to date) adds a note, and `activate` says what lets it go.
#[test]
fn the_cli_says_a_withheld_release() {
    let (w, dev, _later) = staged_until_later();
    set_rollout(&w, "1.1.0", 0.0, t0().plus_days(1));
    let staged = dev.primary().other();
    let out = dev.cli("check", &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("note: 1.1.0, staged in slot {staged}, is withheld: the newest check no longer offers it (its rollout no longer includes this device")),
        "{text}"
    );
    let out = dev.cli("activate", &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.starts_with("deferred: 1.1.0\n"), "{text}");
    assert!(
        text.contains(
            "; `evergreen update` checks again, `evergreen activate --now` switches at once"
        ),
        "{text}"
    );
}

/// A pinned check (`check --version`, `pin_version`) is asked for whatever the rollout
/// says: one that offers the withheld release lets it go, and one that does not leaves
/// it withheld; neither withholds a release by itself.
#[test]
fn a_pinned_check_lets_a_withheld_release_go_and_withholds_none() {
    let (w, dev, later) = staged_until_later();
    let version: semver::Version = "1.1.0".parse().unwrap();
    let older: semver::Version = "1.0.0".parse().unwrap();
    set_rollout(&w, "1.1.0", 0.0, t0().plus_days(1));
    // Pinned to another version while the halt is in force: nothing is withheld yet.
    assert!(dev.updater.check_with(None, Some(&older)).is_ok());
    dev.set_clock(later.plus_days(1));
    assert_eq!(shown_withheld(&dev, dev.primary().other()), None);
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    withheld_reason(&dev);
    // Pinned to another version: it stays withheld.
    assert!(dev.updater.check_with(None, Some(&older)).is_ok());
    withheld_reason(&dev);
    // Pinned to it: offered, so it goes.
    assert!(matches!(
        dev.updater.check_with(None, Some(&version)).unwrap(),
        Check::Available(_)
    ));
    activates(&dev);
}

/// A staged version listed again with other bytes is offered (a download of those bytes
/// follows), but what the slot holds stays withheld: the newest manifest no longer signs
/// it under that version.
#[test]
fn a_staged_version_listed_again_with_other_bytes_stays_withheld() {
    let (w, dev, later) = staged_until_later();
    relist_with_other_bytes(&w, "1.1.0");
    let offer = dev.offer();
    assert_eq!(offer.version.to_string(), "1.1.0");
    assert_eq!(dev.updater.staged_slot(&offer).unwrap(), None);
    dev.set_clock(later.plus_days(1));
    let reason = withheld_reason(&dev);
    assert!(
        reason.contains("(the channel lists other artifacts under its version now)"),
        "{reason}"
    );
}

/// A release staged through a pin (`check --version`) or as a repair was asked for
/// whatever the rollout says: the device's routine checks never withhold it, though its
/// rollout does not reach the device (a repair of a release halted since it was
/// installed here, say).
#[test]
fn a_release_staged_through_a_pin_or_as_a_repair_is_never_withheld() {
    let (w, dev, later) = activating_later();
    let mut opts = at(t0());
    opts.rollout_percent = Some(0.0);
    w.publish("stable", "1.2.0", &app_zip("1.2.0"), opts);
    let pinned: semver::Version = "1.2.0".parse().unwrap();
    let Check::Available(offer) = dev.updater.check_with(None, Some(&pinned)).unwrap() else {
        panic!("the pinned check offered nothing");
    };
    dev.download(&offer).unwrap();
    dev.updater
        .install(&dev.updater.plan(&offer).unwrap())
        .unwrap();
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    dev.set_clock(later.plus_days(1));
    activates(&dev);
    dev.updater.startup().unwrap();
    dev.updater.confirm().unwrap();

    // A repair of 1.2.0, whose rollout reaches no device.
    set_rollout(&w, "1.2.0", 0.0, later.plus_days(1));
    let repair = dev.updater.reinstall_offer().unwrap();
    dev.download(&repair).unwrap();
    dev.updater.install(&repair).unwrap();
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    activates(&dev);
}

/// `update --version 1.1.0` (a pinned check) on a release already staged and withheld
/// lets it go for good: it was asked for now, whatever the rollout says, and the next
/// routine check does not hold it back again.
#[test]
fn a_pinned_request_for_a_staged_release_sticks() {
    let (w, dev, later) = staged_until_later();
    set_rollout(&w, "1.1.0", 0.0, t0().plus_days(1));
    withheld_once_due(&dev, later);
    let version: semver::Version = "1.1.0".parse().unwrap();
    assert!(matches!(
        dev.updater.check_with(None, Some(&version)).unwrap(),
        Check::Available(_)
    ));
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    activates(&dev);
}

/// A pinned check (`update --version 1.1.0`) of a staged release nothing withholds yet
/// asks for it too: a halt published after it does not hold it back, as it would a
/// release only a routine check offered.
#[test]
fn a_pinned_request_before_a_halt_sticks() {
    let (w, dev, later) = staged_until_later();
    let version: semver::Version = "1.1.0".parse().unwrap();
    assert!(matches!(
        dev.updater.check_with(None, Some(&version)).unwrap(),
        Check::Available(_)
    ));
    set_rollout(&w, "1.1.0", 0.0, t0().plus_days(1));
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    assert_eq!(shown_withheld(&dev, dev.primary().other()), None);
    dev.set_clock(later.plus_days(1));
    activates(&dev);
}

/// A release asked for (through a pin) is still held to the bytes its channel lists
/// under its version: listed again with others, it is withheld.
#[test]
fn an_asked_for_release_listed_again_with_other_bytes_is_withheld() {
    let (w, dev, later) = activating_later();
    let mut opts = at(t0());
    opts.rollout_percent = Some(0.0);
    w.publish("stable", "1.2.0", &app_zip("1.2.0"), opts);
    let pinned: semver::Version = "1.2.0".parse().unwrap();
    let Check::Available(offer) = dev.updater.check_with(None, Some(&pinned)).unwrap() else {
        panic!("the pinned check offered nothing");
    };
    dev.download(&offer).unwrap();
    dev.updater
        .install(&dev.updater.plan(&offer).unwrap())
        .unwrap();
    relist_with_other_bytes(&w, "1.2.0");
    dev.updater.check().unwrap();
    dev.set_clock(later.plus_days(1));
    let reason = withheld_reason(&dev);
    assert!(reason.contains("other artifacts"), "{reason}");
}

/// A halt a check sees between a release's download and its install is not lost: the
/// install, from an offer older than the manifest verified since, records the release
/// withheld, and the next check that offers it again lets it go.
#[test]
fn a_halt_seen_between_the_download_and_the_install_withholds_the_release() {
    let (w, dev, later) = activating_later();
    let mut opts = at(t0());
    opts.rollout_percent = Some(100.0);
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), opts);
    let plan = downloaded_plan(&dev);
    set_rollout(&w, "1.1.0", 0.0, t0().plus_days(1));
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    dev.updater.install(&plan).unwrap();
    let history = dev.state_json()["history"].clone();
    let events: Vec<&str> = (history.as_array().unwrap().iter())
        .filter_map(|h| h["event"].as_str())
        .collect();
    assert_eq!(
        events[events.len() - 2..],
        ["staged", "staged_withheld"],
        "{history}"
    );
    dev.set_clock(later.plus_days(1));
    let reason = withheld_reason(&dev);
    assert!(
        reason.contains("(its rollout no longer includes this device (halted, or narrowed))"),
        "{reason}"
    );
    set_rollout(&w, "1.1.0", 100.0, later.plus_days(1));
    assert_eq!(dev.offer().version.to_string(), "1.1.0");
    activates(&dev);
}

/// A manifest re-signed between a release's download and its install, whose check
/// offered that release again, holds nothing back: the install goes ahead as offered.
#[test]
fn a_resign_between_the_download_and_the_install_holds_nothing_back() {
    let (w, dev, later) = activating_later();
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let plan = downloaded_plan(&dev);
    w.serve(STABLE, w.forge("stable", &[&key(MANIFEST_KEY)], |_| {}));
    assert_eq!(dev.offer().version.to_string(), "1.1.0");
    installed_once_due(&dev, &plan, later);
    activates(&dev);
}

/// A newer release published between a release's download and its install does not hold
/// it back: the newest manifest still offers it to this device (the check offers the newer
/// one, which a later install may bring).
#[test]
fn a_newer_release_between_the_download_and_the_install_holds_nothing_back() {
    let (w, dev, later) = activating_later();
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let plan = downloaded_plan(&dev);
    w.publish("stable", "1.2.0", &app_zip("1.2.0"), at(t0()));
    assert_eq!(dev.offer().version.to_string(), "1.2.0");
    installed_once_due(&dev, &plan, later);
    activates(&dev);
}

/// Other bytes listed under the version between its download and its install (a check
/// offering the version again, with them) withhold what was downloaded: the newest
/// manifest no longer signs those bytes under it.
#[test]
fn other_bytes_under_the_version_between_the_download_and_the_install_withhold_it() {
    let (w, dev, later) = activating_later();
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let plan = downloaded_plan(&dev);
    relist_with_other_bytes(&w, "1.1.0");
    assert_eq!(dev.offer().version.to_string(), "1.1.0");
    installed_once_due(&dev, &plan, later);
    let reason = withheld_reason(&dev);
    assert!(reason.contains("other artifacts"), "{reason}");
}

/// A skipped release offered again as the stepping stone to a critical fix, its manifest
/// re-signed between the download and the install, is judged at the install as a check
/// judges it: the newest manifest's selection offers it, so it is not held back as
/// skipped.
#[test]
fn a_skipped_stone_to_a_critical_fix_resigned_before_the_install_goes_ahead() {
    let (w, dev, later) = activating_later();
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    dev.updater.skip(&"1.1.0".parse().unwrap()).unwrap();
    let mut opts = at(t0());
    opts.critical = true;
    opts.min_version = Some("1.1.0".parse().unwrap());
    w.publish("stable", "1.2.0", &app_zip("1.2.0"), opts);
    let offer = dev.offer();
    assert_eq!(
        (offer.version.to_string(), offer.critical),
        ("1.1.0".into(), true)
    );
    let plan = dev.updater.plan(&offer).unwrap();
    dev.download(&offer).unwrap();
    w.serve(STABLE, w.forge("stable", &[&key(MANIFEST_KEY)], |_| {}));
    assert_eq!(dev.offer().version.to_string(), "1.1.0");
    installed_once_due(&dev, &plan, later);
    activates(&dev);
}

/// The same blob listed under the version as another kind of artifact (a file where it
/// was a zip) is other slot contents: withheld, as other bytes are.
#[test]
fn the_same_blob_listed_as_another_kind_under_the_version_withholds_it() {
    let (w, dev, later) = staged_until_later();
    let relisted = w.forge("stable", &[&key(MANIFEST_KEY)], |m| {
        let targets = &mut release_mut(m, "1.1.0").targets;
        let app = &mut targets.get_mut(world::TARGET).unwrap().components;
        let artifact = &mut app.get_mut("app").unwrap().artifact;
        artifact.kind = evergreen::manifest::ArtifactKind::File;
        artifact.name = Some("app.zip".into());
        artifact.installed_size = None;
    });
    w.serve(STABLE, relisted);
    dev.updater.check().unwrap();
    dev.set_clock(later.plus_days(1));
    let reason = withheld_reason(&dev);
    assert!(reason.contains("other artifacts"), "{reason}");
}

/// A halt signed under a new manifest key, whose channel starts its sequence again,
/// seen between a release's download and its install, still withholds the release:
/// manifests are told apart by their bytes, not by a sequence that went down.
#[test]
fn a_halt_under_a_new_manifest_key_with_a_new_sequence_is_not_lost() {
    let (w, dev, later) = activating_later();
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    for _ in 0..3 {
        w.repo
            .resign("stable", &Signing::new(&[&key(MANIFEST_KEY)], t0()))
            .unwrap();
    }
    let plan = downloaded_plan(&dev);
    w.rotate_manifest_key(SECOND_MANIFEST_KEY, t0());
    let halted = w.forge("stable", &[&key(SECOND_MANIFEST_KEY)], |m| {
        m.sequence = 1;
        release_mut(m, "1.1.0").rollout = Some(evergreen::manifest::Rollout {
            stages: vec![evergreen::manifest::RolloutStage {
                at: t0(),
                percent: 0.0,
            }],
        });
    });
    w.serve(STABLE, halted);
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    assert_eq!(dev.state_json()["manifests"]["stable"]["sequence"], 1);
    installed_once_due(&dev, &plan, later);
    withheld_reason(&dev);
}

/// A repair's check verifies the channel's manifest too: a halt it carries withholds a
/// release staged from that channel, though the repair itself is not carried through.
#[test]
fn a_repairs_check_withholds_a_halted_staged_release() {
    let (w, dev, later) = staged_until_later();
    set_rollout(&w, "1.1.0", 0.0, t0().plus_days(1));
    dev.updater.reinstall_offer().unwrap();
    dev.set_clock(later.plus_days(1));
    let reason = withheld_reason(&dev);
    assert!(reason.contains("rollout"), "{reason}");
}

/// An updater of `dev` whose config pins (`pin_version`) `version`, its clock at `now`.
fn pinned_to(dev: &Dev, version: &str, now: evergreen::Timestamp) -> evergreen::Updater {
    let mut config = evergreen::Config::from_file(&dev.config).unwrap();
    config.pin_version = Some(version.parse().unwrap());
    evergreen::Updater::builder(config)
        .clock(move || now)
        .build()
        .unwrap()
}

/// A device the config pins (`pin_version`) to another version than the one it staged
/// runs the pinned one: the staged release is withheld, whatever its rollout.
#[test]
fn a_standing_pin_to_another_version_withholds_the_staged_release() {
    let (_w, dev, later) = staged_until_later();
    let pinned = pinned_to(&dev, "1.0.0", later.plus_days(1));
    pinned.check().unwrap();
    let act = pinned.activate(false).unwrap();
    let evergreen::Activation::Deferred {
        until: None,
        reason,
    } = act
    else {
        panic!("expected the staged release withheld, found {act:?}");
    };
    assert!(
        reason.contains("(the device is pinned to 1.0.0 (`pin_version`))"),
        "{reason}"
    );
}

/// A device the config pins (`pin_version`) to the very release it staged keeps it ready:
/// a repair's check (which offers no update) does not withhold it as "pinned to another
/// version", and the deploy policy's time activates it.
#[test]
fn a_standing_pin_to_the_staged_version_withholds_nothing_on_a_repair() {
    let (_w, dev, later) = staged_until_later();
    let pinned = pinned_to(&dev, "1.1.0", later.plus_days(1));
    pinned.reinstall_offer().unwrap();
    assert_eq!(shown_withheld(&dev, dev.primary().other()), None);
    let act = pinned.activate(false).unwrap();
    assert!(
        matches!(act, evergreen::Activation::Activated { .. }),
        "{act:?}"
    );
}

/// A look at another channel (`check --channel`) says nothing of the channel a release
/// was staged from: it does not withhold it.
#[test]
fn a_check_of_another_channel_withholds_nothing() {
    let (w, dev, later) = staged_until_later();
    w.publish("preview", "1.0.0", &app_zip("1.0.0"), at(t0()));
    assert!(matches!(
        dev.updater.check_with(Some("preview"), None).unwrap(),
        Check::UpToDate { .. }
    ));
    dev.set_clock(later.plus_days(1));
    activates(&dev);
}

/// A device with 1.1.0 staged on stable for later (see [`staged_until_later`]), with
/// preview listing only 1.0.0: the world, the device and the time the policy activates at.
fn staged_with_preview_behind() -> (World, Dev, evergreen::Timestamp) {
    let (w, dev, later) = staged_until_later();
    w.publish("preview", "1.0.0", &app_zip("1.0.0"), at(t0()));
    (w, dev, later)
}

/// Why the activation waits after the device left stable for preview.
const LEFT_STABLE: &str = "the device left channel stable, which it was staged from, for preview";

/// Asks to activate what is staged once the deploy policy lets it go, failing unless it
/// waits because the device left stable.
fn waits_for_leaving_stable(dev: &Dev, later: evergreen::Timestamp) {
    dev.set_clock(later.plus_days(1));
    let reason = withheld_reason(dev);
    assert!(reason.contains(LEFT_STABLE), "{reason}");
}

/// A release staged on stable, after which the device switched to preview (stable found
/// bad, say), is not activated when the deploy policy's time comes: the device's first
/// check of preview withholds it, `status` says why, and switching back lets it go. It
/// used to go live at its time whatever channel the device had moved to.
#[test]
fn a_release_staged_before_a_channel_switch_waits_for_that_channel() {
    let (_w, dev, later) = staged_with_preview_behind();
    dev.updater.set_channel("preview").unwrap();
    let reason = withheld_once_due(&dev, later);
    assert!(
        reason.starts_with(&format!(
            "the newest check of channel preview no longer offers it ({LEFT_STABLE});"
        )),
        "{reason}"
    );
    let staged = dev.updater.status().unwrap().primary.other();
    assert_eq!(shown_withheld(&dev, staged).as_deref(), Some(LEFT_STABLE));
    dev.updater.set_channel("stable").unwrap();
    dev.updater.check().unwrap();
    activates(&dev);
}

/// `evergreen update --channel preview` checks preview first and saves the switch after:
/// that check, the device's own from the switch on, withholds the staged stable release
/// too, and the history says so as a check's mark does. The switch used to leave it
/// unmarked, and it went live at its time.
#[test]
fn a_switch_by_update_channel_withholds_the_staged_release() {
    let (_w, dev, later) = staged_with_preview_behind();
    assert!(matches!(
        dev.updater.check_with(Some("preview"), None).unwrap(),
        Check::UpToDate { .. }
    ));
    dev.updater.set_channel("preview").unwrap();
    let history = dev.state_json()["history"].clone();
    let events: Vec<&str> = (history.as_array().unwrap().iter())
        .filter_map(|h| h["event"].as_str())
        .collect();
    assert_eq!(events[events.len() - 2..], ["channel", "staged_withheld"]);
    waits_for_leaving_stable(&dev, later);
}

/// `update --channel stable` back to the channel the staged release came from: the mark
/// for leaving stable stays until a check of stable made while the device follows it
/// judges the release (the one `update --channel` made came before the switch), and then
/// it goes at its time.
#[test]
fn update_channel_back_to_the_staged_channel_leaves_it_to_the_next_check() {
    let (_w, dev, later) = staged_with_preview_behind();
    dev.updater.set_channel("preview").unwrap();
    dev.updater.check().unwrap();
    let check = dev.updater.check_with(Some("stable"), None).unwrap();
    assert!(matches!(check, Check::Available(_)), "{check:?}");
    dev.updater.set_channel("stable").unwrap();
    waits_for_leaving_stable(&dev, later);
    dev.updater.check().unwrap();
    activates(&dev);
}

/// A switch back does not lift the mark by the manifest cached for the channel, which may
/// be from before the device left it, or expired: the operator halted the release on
/// stable meanwhile, and it went live at its time.
#[test]
fn a_switch_back_does_not_judge_by_the_manifest_cached_before_leaving() {
    for (left_on, switched_back_on) in [(1, 10), (1, 35)] {
        let (w, dev, later) = staged_with_preview_behind();
        dev.set_clock(t0().plus_days(left_on));
        dev.updater.set_channel("preview").unwrap();
        dev.updater.check().unwrap();
        set_rollout(&w, "1.1.0", 0.0, t0().plus_days(left_on));
        dev.set_clock(t0().plus_days(switched_back_on));
        dev.updater.set_channel("stable").unwrap();
        waits_for_leaving_stable(&dev, later);
        // The check of stable sees the halt.
        dev.updater.check().unwrap();
        let reason = withheld_reason(&dev);
        assert!(
            reason.contains("its rollout no longer includes this device"),
            "{reason}"
        );
    }
}

/// stable -> preview (checked) -> `update --channel nightly`: the mark names the channel
/// the device follows now, not the one it followed before (the switch kept the old mark).
#[test]
fn update_channel_onward_names_the_channel_followed() {
    let (w, dev, later) = staged_with_preview_behind();
    w.publish("nightly", "1.0.0", &app_zip("1.0.0"), at(t0()));
    dev.updater.set_channel("preview").unwrap();
    dev.updater.check().unwrap();
    dev.updater.check_with(Some("nightly"), None).unwrap();
    dev.updater.set_channel("nightly").unwrap();
    dev.set_clock(later.plus_days(1));
    let reason = withheld_reason(&dev);
    let why = "the device left channel stable, which it was staged from, for nightly";
    assert!(
        reason.starts_with(&format!(
            "the newest check of channel nightly no longer offers it ({why});"
        )),
        "{reason}"
    );
}

/// `update --channel preview` stages preview's 1.2.0; preview is then found bad and the
/// device switched back to stable: stable's check withholds it. The release was recorded
/// as staged while the device followed stable (the switch is saved after the check), so
/// it went live at its time and moved the device back to preview.
#[test]
fn a_release_staged_by_update_channel_waits_after_a_switch_back() {
    let (w, dev, later) = activating_later();
    let mut opts = at(t0());
    opts.rollout_percent = Some(100.0);
    w.publish("preview", "1.2.0", &app_zip("1.2.0"), opts);
    let Check::Available(offer) = dev.updater.check_with(Some("preview"), None).unwrap() else {
        panic!("preview offered nothing");
    };
    dev.updater.set_channel("preview").unwrap();
    dev.download(&offer).unwrap();
    dev.updater
        .install(&dev.updater.plan(&offer).unwrap())
        .unwrap();
    dev.updater.set_channel("stable").unwrap();
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    dev.set_clock(later.plus_days(1));
    let reason = withheld_reason(&dev);
    assert!(
        reason.contains("the device left channel preview, which it was staged from, for stable"),
        "{reason}"
    );
    assert_eq!(dev.updater.status().unwrap().channel, "stable");
}

/// Once the switch withheld it, neither a look at the old channel (`check --channel
/// stable`, no switch) nor a repair (which verifies the installed release's channel,
/// stable) lifts the mark: their check of stable used to judge the release as offered.
#[test]
fn a_check_of_the_channel_left_does_not_lift_the_mark() {
    for repair in [false, true] {
        let (_w, dev, later) = staged_with_preview_behind();
        dev.updater.set_channel("preview").unwrap();
        assert!(matches!(
            dev.updater.check().unwrap(),
            Check::UpToDate { .. }
        ));
        if repair {
            dev.updater.reinstall_offer().unwrap();
        } else {
            dev.updater.check_with(Some("stable"), None).unwrap();
        }
        assert_eq!(dev.updater.status().unwrap().channel, "preview");
        waits_for_leaving_stable(&dev, later);
    }
}

/// A pinned check of the channel the device left (`check_with(Some("stable"), Some(v))`
/// for the release staged from it) asks for that release: the host chose it, whatever
/// channel the device follows now, so the mark for leaving stable is lifted and the
/// release goes at its time. A routine check of stable does not lift it
/// ([`a_check_of_the_channel_left_does_not_lift_the_mark`]).
#[test]
fn a_pinned_check_of_the_channel_left_lets_its_staged_release_go() {
    let (_w, dev, later) = staged_with_preview_behind();
    dev.updater.set_channel("preview").unwrap();
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    let staged = dev.primary().other();
    assert_eq!(shown_withheld(&dev, staged).as_deref(), Some(LEFT_STABLE));
    let version: semver::Version = "1.1.0".parse().unwrap();
    assert!(matches!(
        dev.updater
            .check_with(Some("stable"), Some(&version))
            .unwrap(),
        Check::Available(_)
    ));
    assert_eq!(dev.updater.status().unwrap().channel, "preview");
    assert_eq!(shown_withheld(&dev, staged), None);
    dev.set_clock(later.plus_days(1));
    activates(&dev);
}

/// A forced activation of a withheld release clears the mark: the slot runs, and
/// `status` does not show the running release as withheld.
#[test]
fn a_forced_activation_clears_the_withheld_mark() {
    let (w, dev, _later) = staged_until_later();
    set_rollout(&w, "1.1.0", 0.0, t0().plus_days(1));
    dev.updater.check().unwrap();
    withheld_reason(&dev);
    let evergreen::Activation::Activated { slot, .. } = dev.updater.activate(true).unwrap() else {
        panic!("a forced activation was deferred");
    };
    assert_eq!(shown_withheld(&dev, slot), None);
}

/// A release withdrawn from the channel after a device staged it waits too; a forced
/// activation (the host's or `activate --now`) still goes ahead, as it does past the
/// policy.
#[test]
fn a_release_withdrawn_after_it_was_staged_waits_unless_forced() {
    let (w, dev, later) = staged_until_later();
    let withdrawn = w.forge("stable", &[&key(MANIFEST_KEY)], |m| {
        m.releases.retain(|r| r.version.to_string() != "1.1.0");
    });
    w.serve(STABLE, withdrawn);
    let reason = withheld_once_due(&dev, later);
    assert!(
        reason.contains("(the channel no longer lists it for target"),
        "{reason}"
    );
    assert!(matches!(
        dev.updater.activate(true).unwrap(),
        evergreen::Activation::Activated { .. }
    ));
}

/// A check judges the manifest's expiry, the rollout and the deploy policy at one reading
/// of the clock (DESIGN §5.1 rule 4: `now` fixed once per run). Here the operator signed
/// a ramp to 100 % for an hour after `issued`, and the check began half an hour before
/// it: a second reading taken later in the check (three hours on, as after a slow
/// server) must not let the release in.
#[test]
fn a_check_reads_the_clock_once() {
    use evergreen::manifest::{Rollout, RolloutStage};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    let (w, dev) = World::installed();
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let ramp = w.forge("stable", &[&key(MANIFEST_KEY)], |m| {
        release_mut(m, "1.1.0").rollout = Some(Rollout {
            stages: vec![RolloutStage {
                at: t0().plus_secs(3600),
                percent: 100.0,
            }],
        });
    });
    w.serve(STABLE, ramp);
    let reads = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&reads);
    let config = evergreen::Config::from_file(&dev.config).unwrap();
    let updater = evergreen::Updater::builder(config)
        .clock(move || match counted.fetch_add(1, SeqCst) {
            0 => t0().plus_secs(1800),
            _ => t0().plus_secs(3 * 3600),
        })
        .build()
        .unwrap();
    reads.store(0, SeqCst);
    let check = updater.check().unwrap();
    assert!(matches!(check, Check::UpToDate { .. }), "{check:?}");
    assert_eq!(reads.load(SeqCst), 1, "clock readings in one check");
    // Past the stage, the same manifest lets it in; an offer, too, is made at one reading.
    let check = updater.check().unwrap();
    assert!(matches!(check, Check::Available(_)), "{check:?}");
    assert_eq!(reads.load(SeqCst), 2, "clock readings in two checks");
}

/// TUF "indefinite freeze" of the trust root: root 1 was never renewed; past its expiry
/// nothing is trusted, however fresh the manifest.
#[test]
fn attack_expired_root() {
    let setup = Setup {
        root_days: 20,
        ..Setup::default()
    };
    let (w, dev) = World::installed_with(setup, json!({}));
    let before = dev.snapshot();
    // A manifest still fresh at day 21, signed the day before the root expired (the tools
    // refuse to sign under an expired root).
    w.repo
        .resign(
            "stable",
            &Signing::new(&[&key(MANIFEST_KEY)], t0().plus_days(19)),
        )
        .unwrap();
    dev.set_clock(t0().plus_days(21));
    let err = refused(dev.updater.check(), ErrorKind::Expired);
    assert!(err.message().contains("root"), "{err}");
    before.assert_unchanged(&dev);
}

/// The other side of the same rule: root 1 is renewed on the server (root 2, same keys)
/// while the channel stays the same, so every check is answered 304. Until root 1 expires
/// a check is still one request; after, the device walks to root 2 instead of failing.
#[test]
fn a_root_renewed_while_the_channel_is_unchanged_is_found_once_the_old_one_expires() {
    let setup = Setup {
        root_days: 20,
        ..Setup::default()
    };
    let (w, dev) = World::installed_with(setup, json!({}));
    let renew = RotateOptions {
        expires_in_days: Some(365),
        ..RotateOptions::default()
    };
    w.repo
        .rotate(&renew, &[&key(ROOT_KEY)], t0().plus_days(10))
        .unwrap();
    // The install's first check looked for root 2 (404); count from here.
    let walks = || w.server.requests("root/2.json").len();
    let before = walks();
    dev.set_clock(t0().plus_days(15));
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    assert_eq!(
        walks(),
        before,
        "a 304 before the root expires is one request"
    );
    assert_eq!(dev.state_json()["root_version"], 1);

    dev.set_clock(t0().plus_days(21));
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    assert_eq!(
        w.server.requests(STABLE).last().map(|r| r.status),
        Some(304)
    );
    assert_eq!(walks(), before + 1);
    assert_eq!(dev.state_json()["root_version"], 2);
}

/// An object store (S3 and CloudFront with a private bucket) answers 403 for an object
/// that does not exist: the root walk ends there as at a 404. Otherwise every check after
/// a channel change failed until the next root was published.
#[test]
fn a_403_for_the_next_root_ends_the_walk_as_a_404_does() {
    let (w, dev) = World::installed();
    w.server.set_fault("root/2.json", Fault::Status(403));
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let Check::Available(offer) = dev.updater.check().unwrap() else {
        panic!("expected 1.1.0 on offer");
    };
    assert_eq!(offer.version.to_string(), "1.1.0");
    let asked = w.server.requests("root/2.json");
    assert_eq!(asked.last().map(|r| r.status), Some(403));
    assert_eq!(dev.state_json()["root_version"], 1);
}

// ---- endless data --------------------------------------------------------------------

/// TUF "endless data attack" on metadata: a validly signed manifest larger than the
/// device's `max_metadata_bytes`, then a manifest whose body never ends.
#[test]
fn attack_manifest_larger_than_max_metadata_bytes() {
    let (w, dev) = World::installed_with(
        Setup::default(),
        json!({"limits": {"max_metadata_bytes": 4096}}),
    );
    let huge = w.forge("stable", &[&key(MANIFEST_KEY)], |m| {
        m.releases[0].notes = "x".repeat(8192);
    });
    check_refused(&w, &dev, huge, ErrorKind::TooLarge);
    let before = dev.snapshot();
    w.server.clear_faults();
    // A new manifest (so no 304 answers for the cached one), followed by endless junk.
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    w.server.set_fault(STABLE, Fault::AppendJunk(64 << 20));
    refused(dev.updater.check(), ErrorKind::TooLarge);
    before.assert_unchanged(&dev);
}

/// TUF "endless data attack" on an artifact: the blob's body runs on past its declared
/// size; the download reads up to the size and no further (the rest is never received,
/// so it costs nothing), and the partial file never grows beyond it.
#[test]
fn attack_blob_longer_than_declared() {
    let (w, dev) = World::installed();
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let offer = dev.offer();
    let artifact = offer.components[0].artifact.clone().unwrap();
    let part = dev
        .state
        .join(format!("downloads/{}.part", artifact.sha256));
    let before = dev.snapshot();
    w.server.set_fault(
        &format!("blobs/sha256/{}", artifact.sha256),
        Fault::AppendJunk(4 << 20),
    );
    let mut largest = 0;
    let result = dev.updater.download(
        &dev.updater.plan(&offer).unwrap(),
        &mut |done, total| {
            assert!(done <= total);
            largest = largest.max(std::fs::metadata(&part).map_or(0, |m| m.len()));
        },
        &evergreen::fetch::CancelToken::new(),
    );
    result.unwrap();
    assert!(largest <= artifact.size, "the .part grew to {largest}");
    let blob = dev.state.join(format!("downloads/{}", artifact.sha256));
    assert_eq!(std::fs::metadata(&blob).unwrap().len(), artifact.size);
    assert!(!part.exists());
    before.assert_primary_intact(&dev);
}

// ---- slow retrieval ------------------------------------------------------------------

/// TUF "slow retrieval attack": the blob trickles in far below `min_speed_bytes_per_s`
/// averaged over `speed_window_s`; the download gives up by itself.
#[test]
fn attack_slow_retrieval() {
    let limits = json!({"limits": {"min_speed_bytes_per_s": 65536, "speed_window_s": 1,
                                   "read_timeout_s": 5}});
    let (w, dev) = World::installed_with(Setup::default(), limits);
    // Incompressible, so the blob is far larger than what trickles in during the window.
    let noise: Vec<u8> = (0u32..200_000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let zip = zips::build_with(&[Item::File("noise.bin", &noise, 0o644)], stored);
    w.publish("stable", "1.1.0", &zip, at(t0()));
    let offer = dev.offer();
    let before = dev.snapshot();
    w.server.set_fault(
        "blobs/",
        Fault::Trickle {
            bytes: 64,
            every: Duration::from_millis(20),
        },
    );
    refused(dev.download(&offer), ErrorKind::SlowRetrieval);
    before.assert_unchanged_but_pending(&dev);
}

/// TUF "slow retrieval attack" on metadata: the manifest trickles in; the check gives up
/// by itself instead of waiting for the whole document.
#[test]
fn attack_slow_retrieval_of_the_manifest() {
    let limits = json!({"limits": {"min_speed_bytes_per_s": 65536, "speed_window_s": 1,
                                   "read_timeout_s": 5}});
    let (w, dev) = World::installed_with(Setup::default(), limits);
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let before = dev.snapshot();
    w.server.set_fault(
        STABLE,
        Fault::Trickle {
            bytes: 4,
            every: Duration::from_millis(20),
        },
    );
    let err = refused(dev.updater.check(), ErrorKind::SlowRetrieval);
    assert!(err.message().contains(STABLE), "{err}");
    before.assert_unchanged(&dev);
}

// ---- mix and match -------------------------------------------------------------------

/// TUF "mix-and-match attack": another product's manifest, signed by the same operator's
/// key, served as this product's.
#[test]
fn attack_another_products_manifest() {
    let (w, dev) = World::installed();
    let other = World::with(Setup {
        product: "com.acme.other",
        ..Setup::default()
    });
    other.publish("stable", "6.6.6", &app_zip("6.6.6"), at(t0()));
    let err = check_refused(
        &w,
        &dev,
        other.channel_bytes("stable"),
        ErrorKind::WrongMetadata,
    );
    assert!(err.message().contains("com.acme.other"), "{err}");
}

/// TUF "mix-and-match attack": the nightly manifest, genuinely signed, served under the
/// stable channel's name.
#[test]
fn attack_another_channels_manifest() {
    let (w, dev) = World::installed();
    for n in 0..3 {
        // A higher sequence than stable's, so only the channel name can refuse it.
        w.publish("nightly", &format!("2.0.{n}"), &app_zip("2.0.0"), at(t0()));
    }
    let err = check_refused(
        &w,
        &dev,
        w.channel_bytes("nightly"),
        ErrorKind::WrongMetadata,
    );
    assert!(err.message().contains("nightly"), "{err}");
}

// ---- wrong software ------------------------------------------------------------------

/// TUF "wrong software installation": 1.0.0's genuine blob (same length) served at 1.1.0's
/// blob path.
#[test]
fn attack_blob_of_another_release() {
    let (w, dev) = World::installed();
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let offer = dev.offer();
    let wanted = offer.components[0].artifact.clone().unwrap();
    let m = manifest_of(&w.channel_bytes("stable"));
    let old = &m.releases[0].targets[world::TARGET].components["app"].artifact;
    let old_bytes = w.blob(&old.sha256);
    assert_eq!(
        old_bytes.len() as u64,
        wanted.size,
        "same length, other bytes"
    );
    let before = dev.snapshot();
    w.serve(&format!("blobs/sha256/{}", wanted.sha256), old_bytes);
    let err = refused(dev.download(&offer), ErrorKind::HashMismatch);
    assert!(err.message().contains(&wanted.sha256), "{err}");
    before.assert_unchanged_but_pending(&dev);
}

/// TUF "wrong software installation": a release built for another target is never
/// offered, and pinning it is `incompatible_target`.
#[test]
fn attack_release_without_this_target() {
    let (w, dev) = World::installed();
    w.publish_for(
        "stable",
        "1.1.0",
        "aarch64-linux",
        &app_zip("1.1.0"),
        at(t0()),
    );
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    let before = dev.snapshot();
    let pin = "1.1.0".parse().unwrap();
    refused(
        dev.updater.check_with(None, Some(&pin)),
        ErrorKind::IncompatibleTarget,
    );
    before.assert_unchanged(&dev);
}

/// A signed release whose two artifacts of 2^63 bytes each add up past u64: the check
/// passed, and the offer's download size then overflowed (a panic, or through the C ABI
/// `EVG_PANIC`; a wrapped, tiny size in a release build).
#[test]
fn attack_artifact_sizes_that_overflow_together() {
    let (w, dev) = World::installed();
    let forged = w.forge("stable", &[&key(MANIFEST_KEY)], |m| {
        evil_release(m);
        let evil = m.releases.last_mut().unwrap();
        let target = evil.targets.get_mut(world::TARGET).unwrap();
        let mut huge = target.components["app"].clone();
        huge.artifact.size = 1 << 63;
        target.components.insert("app", huge.clone());
        target.components.insert("data", huge);
    });
    let err = check_refused(&w, &dev, forged, ErrorKind::WrongMetadata);
    assert!(err.message().contains("release 6.6.6 target"), "{err}");
}

// ---- root rotation -------------------------------------------------------------------

/// The honest root 1 document, to derive hostile successors from.
fn root_one(w: &World) -> Root {
    let bytes = std::fs::read(w.repo.path().join("root/1.json")).unwrap();
    let e = envelope(&bytes);
    serde_json::from_slice(&trust::decode_base64(&e.payload).unwrap()).unwrap()
}

/// `root` with its root role moved to `new_key`.
fn with_root_key(mut root: Root, version: u64, new_key: &SecretKey) -> Root {
    let id = new_key.public().keyid();
    root.version = version;
    root.keys.insert(
        id.clone(),
        trust::RootKey {
            alg: "ed25519".into(),
            public: new_key.public().to_base64(),
        },
    );
    root.roles.get_mut("root").unwrap().keyids = vec![id];
    root
}

/// TUF root rotation: an attacker's root 2 signed only by its own new key, not by a
/// threshold of root 1's keys.
#[test]
fn attack_root_rotation_signed_only_by_new_keys() {
    let (w, dev) = World::installed();
    let attacker = key(ATTACKER_KEY);
    let next = with_root_key(root_one(&w), 2, &attacker);
    w.serve(
        "root/2.json",
        trust::seal(ROOT_TYPE, &next.to_bytes(), &[&attacker]),
    );
    // Only a changed manifest walks the chain.
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let before = dev.snapshot();
    refused(dev.updater.check(), ErrorKind::Signature);
    before.assert_unchanged(&dev);
    assert_eq!(dev.state_json()["root_version"], 1);
}

/// TUF root rotation: `root/2.json` holding a document that says version 3 (skipping the
/// version an auditor would read), signed by old and new keys alike.
#[test]
fn attack_root_version_jump() {
    let (w, dev) = World::installed();
    let new_key = key(2);
    let jump = with_root_key(root_one(&w), 3, &new_key);
    let signed = trust::seal(ROOT_TYPE, &jump.to_bytes(), &[&key(ROOT_KEY), &new_key]);
    w.serve("root/2.json", signed);
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let before = dev.snapshot();
    refused(dev.updater.check(), ErrorKind::MetadataRollback);
    before.assert_unchanged(&dev);
    assert_eq!(dev.state_json()["root_version"], 1);
}

/// TUF root rollback: a device that trusts root 2 is served the chain as it was before
/// the rotation (no `root/2.json`, root 1 replayed as `root/3.json`, the old manifest
/// key's signature): it never goes back to root 1's keys.
#[test]
fn attack_root_rollback() {
    let (w, dev) = World::installed();
    let pre_rotation = manifest_of(&w.channel_bytes("stable"));
    w.rotate_manifest_key(12, t0());
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    assert_eq!(dev.state_json()["root_version"], 2);
    let before = dev.snapshot();
    // The attacker holds the rotated-out manifest key and a copy of the old repository.
    let mut m = pre_rotation;
    m.sequence = 100;
    evil_release(&mut m);
    let forged = trust::seal(trust::MANIFEST_TYPE, &m.to_bytes(), &[&key(MANIFEST_KEY)]);
    let old_root = std::fs::read(w.repo.path().join("root/1.json")).unwrap();
    w.server.set_fault("root/2.json", Fault::Status(404));
    w.serve("root/3.json", old_root);
    w.serve(STABLE, forged.clone());
    refused(dev.updater.check(), ErrorKind::MetadataRollback);
    before.assert_unchanged(&dev);
    // Without the replayed root 1, the old key's manifest is simply not trusted.
    w.server.clear_faults();
    w.server.set_fault("root/2.json", Fault::Status(404));
    w.serve(STABLE, forged);
    refused(dev.updater.check(), ErrorKind::Signature);
    before.assert_unchanged(&dev);
    assert_eq!(dev.state_json()["root_version"], 2);
}

/// A device that trusts root 2 loses `root.json` (a partial restore, a cleaned state
/// directory) and the attacker hides `root/2.json`: it must not fall back to root 1 and
/// the manifest key root 2 revoked. With the chain served again it walks back to root 2.
#[test]
fn attack_root_rollback_through_a_lost_saved_root() {
    let (w, dev) = World::installed();
    w.rotate_manifest_key(SECOND_MANIFEST_KEY, t0());
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    assert_eq!(dev.state_json()["root_version"], 2);
    let err = lose_root_json_and_replay_the_revoked_key(&w, &dev);
    assert!(err.message().contains("found version 1"), "{err}");
    assert_eq!(dev.state_json()["root_version"], 2);
    w.server.clear_faults();
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    assert!(dev.state.join("root.json").exists());
}

/// The same loss after a walk that stopped before its end (root 3 out of reach): root 2,
/// kept as soon as it verified, is the floor all the same. Before, the state recorded
/// only where a whole walk ended, so the lost `root.json` took the device back to root 1
/// and the revoked key.
#[test]
fn attack_root_rollback_after_a_walk_cut_short() {
    let (mut w, dev) = World::installed();
    w.rotate_manifest_key(SECOND_MANIFEST_KEY, t0()); // root 2
    w.signers = vec![key(SECOND_MANIFEST_KEY)];
    w.rotate_root_key(t0()); // root 3
    w.server.set_fault("root/3.json", Fault::Status(500));
    let cut = dev.updater.check().unwrap_err();
    assert_eq!(cut.kind(), ErrorKind::HttpStatus, "{cut}");
    assert_eq!(dev.state_json()["root_version"], 2);
    lose_root_json_and_replay_the_revoked_key(&w, &dev);
}

/// `root.json` lost on a device that trusted root 2, then the attacker's move: root 2
/// hidden (404) and a manifest signed with the key root 2 revoked. The check must be
/// refused as a root rollback; returns its error.
fn lose_root_json_and_replay_the_revoked_key(w: &World, dev: &Dev) -> Error {
    std::fs::remove_file(dev.state.join("root.json")).unwrap();
    let mut m = manifest_of(&w.channel_bytes("stable"));
    m.sequence += 1;
    evil_release(&mut m);
    let forged = trust::seal(trust::MANIFEST_TYPE, &m.to_bytes(), &[&key(MANIFEST_KEY)]);
    w.server.set_fault("root/2.json", Fault::Status(404));
    w.serve(STABLE, forged);
    let err = refused(dev.updater.check(), ErrorKind::MetadataRollback);
    assert!(
        err.message().contains("expected root version 2 or newer"),
        "{err}"
    );
    err
}

/// A new chain (root and manifest keys 21 and 31, for the same product), as a vendor
/// starts one when the old root keys are lost or stolen.
fn new_chain(w: &World) -> PathBuf {
    let keys = |n: u8| evergreen::trust::KeySet::new(vec![key(n).public()], 1).unwrap();
    let path = w.tmp.path().join("repo2");
    evergreen::publish::Repo::init(
        &path,
        world::PRODUCT,
        &keys(21),
        &keys(31),
        &[&key(21)],
        365,
        t0(),
    )
    .unwrap();
    path.join("root/1.json")
}

/// A device re-provisioned with the root of a new chain (its version no newer than the
/// saved root's) is refused loudly instead of silently keeping the old chain and its
/// stolen manifest key; copying the configured root over the saved one moves it.
#[test]
fn a_reprovisioned_root_of_another_chain_is_refused_until_the_device_is_moved() {
    let (w, dev) = World::installed();
    let pinned = dev.config.parent().unwrap().join("root.json");
    std::fs::copy(new_chain(&w), &pinned).unwrap();
    let before = dev.snapshot();
    w.serve(
        STABLE,
        w.forge("stable", &[&key(MANIFEST_KEY)], evil_release),
    );
    let err = refused(dev.updater.check(), ErrorKind::Config);
    let saved = dev.state.join("root.json");
    for part in [pinned.display().to_string(), saved.display().to_string()] {
        assert!(err.message().contains(&part), "{err}");
    }
    before.assert_unchanged(&dev);
    // The move: the new chain's manifest key signs, the old one no longer does, and the
    // new repository's sequences start afresh.
    std::fs::copy(&pinned, &saved).unwrap();
    w.server.clear_faults();
    w.serve(
        STABLE,
        w.forge("stable", &[&key(MANIFEST_KEY)], evil_release),
    );
    refused(dev.updater.check(), ErrorKind::Signature);
    w.server.clear_faults();
    let chain2 = w.forge("stable", &[&key(31)], |m| {
        m.sequence = 1;
        m.releases[0].notes = "chain 2".into();
    });
    w.serve(STABLE, chain2);
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    assert_eq!(dev.state_json()["manifests"]["stable"]["sequence"], 1);
    assert_eq!(dev.state_json()["root_version"], 1);
}

/// Firmware rolled back to one that pins an older root. Of a root the device trusted, it
/// keeps the saved newer root; of root keys it never trusted (the chain rotated its root
/// keys before this device first saw it), it is refused rather than trusted again.
#[test]
fn an_older_configured_root_never_rolls_the_chain_back() {
    let w = World::with(Setup::default());
    w.publish("stable", "1.0.0", &app_zip("1.0.0"), at(t0()));
    w.rotate_root_key(t0());
    let old = w.device("old", json!({}));
    assert!(matches!(old.updater.check().unwrap(), Check::Available(_)));
    assert_eq!(old.state_json()["root_version"], 2);
    assert!(matches!(old.updater.check().unwrap(), Check::Available(_)));
    // Provisioned with root 2, then given firmware that pins root 1.
    let new = w.device("new", json!({}));
    let pinned = new.config.parent().unwrap().join("root.json");
    std::fs::copy(w.repo.path().join("root/2.json"), &pinned).unwrap();
    assert!(matches!(new.updater.check().unwrap(), Check::Available(_)));
    std::fs::copy(w.repo.path().join("root/1.json"), &pinned).unwrap();
    let err = refused(new.updater.check(), ErrorKind::Config);
    assert!(
        err.message().contains("found version 1 under root keys"),
        "{err}"
    );
    assert!(err.message().contains("never trusted"), "{err}");
    assert_eq!(new.state_json()["root_version"], 2);
}

/// A root for another product is refused, configured or saved.
#[test]
fn a_root_for_another_product_is_config() {
    let (w, dev) = World::installed();
    let other = w.tmp.path().join("other");
    let keys = evergreen::trust::KeySet::new(vec![key(ROOT_KEY).public()], 1).unwrap();
    evergreen::publish::Repo::init(
        &other,
        "com.acme.other",
        &keys,
        &keys,
        &[&key(ROOT_KEY)],
        365,
        t0(),
    )
    .unwrap();
    let saved = dev.state.join("root.json");
    let good = std::fs::read(&saved).unwrap();
    std::fs::copy(other.join("root/1.json"), &saved).unwrap();
    let err = refused(dev.updater.check(), ErrorKind::Config);
    assert!(err.message().contains("com.acme.other"), "{err}");
    std::fs::write(&saved, good).unwrap();
    std::fs::copy(
        other.join("root/1.json"),
        dev.config.parent().unwrap().join("root.json"),
    )
    .unwrap();
    let err = refused(dev.updater.check(), ErrorKind::Config);
    assert!(err.message().contains("com.acme.other"), "{err}");
}

/// TUF key revocation: root 2 leaves the old manifest key out; a device catching up
/// through the genuine chain refuses a manifest the old (stolen) key signed.
#[test]
fn attack_rotated_out_manifest_key() {
    let (w, dev) = World::installed();
    w.rotate_manifest_key(12, t0());
    let forged = w.forge("stable", &[&key(MANIFEST_KEY)], evil_release);
    let before = dev.snapshot();
    w.serve(STABLE, forged);
    refused(dev.updater.check(), ErrorKind::Signature);
    // The device walked the genuine chain to root 2 (which is why the old key is refused)
    // and keeps trusting it, with the freshness state its new manifest key starts afresh;
    // nothing else moved.
    assert_eq!(dev.state_json()["root_version"], 2);
    before.assert_unchanged_but_root(&dev);
}

/// A copy of the repository (a mirror synced in part, a USB stick) that lacks the root a
/// manifest key rotation published: the device, on root 1, cannot verify the channel the
/// new key signs. The refusal stands, and says which root file to publish.
#[test]
fn a_repository_copy_without_the_rotated_root_names_the_root_it_lacks() {
    let (mut w, dev) = World::installed();
    w.rotate_manifest_key(12, t0());
    w.signers = vec![key(12)];
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    std::fs::remove_file(w.repo.path().join("root/2.json")).unwrap();
    let err = refused(dev.updater.check(), ErrorKind::Signature);
    assert!(
        err.message().contains(
            "the newest root found is version 1 (no root/2.json): a channel signed with keys rotated in after it needs root/2.json beside it"
        ),
        "{err}"
    );
    assert_eq!(dev.state_json()["root_version"], 1);
}

/// TUF's rollback attack at the moment of a partial rotation: the manifest role is keys
/// 11 and 12 (threshold 1), 11 leaks and is rotated out for 13. At the device's next check
/// the attacker, holding no key, serves an older manifest of the channel, signed by both
/// (12 among them, still trusted). What the device accepted last is still signed by 12, so
/// its sequence still binds: refused as a rollback, where forgetting every channel's
/// record at the revocation would take the old manifest as a new start.
#[test]
fn attack_replaying_an_older_manifest_after_a_partial_key_rotation() {
    let setup = Setup {
        manifest_keys: vec![MANIFEST_KEY, SECOND_MANIFEST_KEY],
        ..Setup::default()
    };
    let (mut w, dev) = World::installed_with(setup, json!({}));
    let older = w.channel_bytes("stable");
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    assert_eq!(dev.offer().version.to_string(), "1.1.0");
    let opts = RotateOptions {
        manifest_keys: Some(vec![key(SECOND_MANIFEST_KEY).public(), key(13).public()]),
        ..RotateOptions::default()
    };
    let signers = [&key(ROOT_KEY), &key(SECOND_MANIFEST_KEY), &key(13)];
    w.repo.rotate(&opts, &signers, t0()).unwrap();
    w.signers = vec![key(SECOND_MANIFEST_KEY), key(13)];
    let before = dev.state_json()["manifests"]["stable"]["sequence"].clone();
    w.serve(STABLE, older);
    refused(dev.updater.check(), ErrorKind::MetadataRollback);
    let state = dev.state_json();
    assert_eq!(state["root_version"], 2, "the rotation was walked to");
    assert_eq!(state["manifests"]["stable"]["sequence"], before);
    assert_eq!(state["newest_issued"], json!(t0()));
    // The genuine channel, signed by the new keys, is taken.
    w.server.clear_faults();
    assert_eq!(dev.offer().version.to_string(), "1.1.0");
}

// ---- fast-forward --------------------------------------------------------------------

/// A device that accepted a manifest of `edit`ed freshness signed by the stolen manifest key
/// 11, then the recovery TUF prescribes: the operator revokes key 11 (root 2 trusts 12)
/// and publishes 1.1.0 with the new key. The device must follow it.
fn recovers_after_rotating_out_a_fast_forwarding_key(edit: impl FnOnce(&mut Manifest)) {
    let (mut w, dev) = World::installed();
    w.serve(STABLE, w.forge("stable", &[&key(MANIFEST_KEY)], edit));
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    w.server.clear_faults();
    w.rotate_manifest_key(SECOND_MANIFEST_KEY, t0());
    w.signers = vec![key(SECOND_MANIFEST_KEY)];
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    assert_eq!(dev.offer().version.to_string(), "1.1.0");
    let state = dev.state_json();
    assert_eq!(state["root_version"], 2);
    assert_eq!(state["newest_issued"], json!(t0()));
    // The fast-forwarded state is gone for good, and the old key's manifests with it.
    assert!(matches!(dev.updater.check().unwrap(), Check::Available(_)));
    let forged = w.forge("stable", &[&key(MANIFEST_KEY)], evil_release);
    check_refused(&w, &dev, forged, ErrorKind::Signature);
}

/// TUF "fast-forward attack": the stolen key signs sequence u64::MAX, above anything the
/// publisher can reach; rotating the key out resets the channel sequences.
#[test]
fn attack_fast_forwarded_sequence_is_undone_by_rotating_the_key_out() {
    recovers_after_rotating_out_a_fast_forwarding_key(|m| m.sequence = u64::MAX);
}

/// The same key pulls every device's clock ten years ahead through `issued` (§5.1 rule
/// 4), past every honest root's and manifest's expiry; rotating the key out undoes it.
#[test]
fn attack_fast_forwarded_clock_is_undone_by_rotating_the_key_out() {
    recovers_after_rotating_out_a_fast_forwarding_key(|m| {
        m.issued = t0().plus_days(3650);
        m.expires = t0().plus_days(3651);
    });
}

/// Not an attack but the same harm: the operator signs the channel with a clock 200 days
/// ahead, and every device's clock follows it. Rotating the manifest key out at the right
/// clock is allowed by the tools (they refuse any other change issued before the channel's
/// last `issued`) and undoes it on the device.
#[test]
fn a_channel_signed_with_a_clock_far_ahead_is_undone_by_rotating_the_key_out() {
    let (mut w, dev) = World::installed();
    let ahead = t0().plus_days(200);
    w.repo
        .resign("stable", &Signing::new(&[&key(MANIFEST_KEY)], ahead))
        .unwrap();
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    assert_eq!(dev.state_json()["newest_issued"], json!(ahead));
    w.rotate_manifest_key(SECOND_MANIFEST_KEY, t0());
    w.signers = vec![key(SECOND_MANIFEST_KEY)];
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    assert_eq!(dev.offer().version.to_string(), "1.1.0");
    assert_eq!(dev.state_json()["newest_issued"], json!(t0()));
}

/// Simple mode: the device trusts `trust.keys`; replacing the stolen key in its config
/// resets what that key fast-forwarded, sequence and clock.
#[test]
fn attack_fast_forward_is_undone_by_new_trust_keys() {
    let trust = |n: u8| json!({"trust": {"root": null, "keys": [key(n).public().to_base64()], "threshold": 1}});
    let (mut w, dev) = World::installed_with(Setup::default(), trust(MANIFEST_KEY));
    w.serve(
        STABLE,
        w.forge("stable", &[&key(MANIFEST_KEY)], |m| {
            m.sequence = u64::MAX;
            m.issued = t0().plus_days(3650);
            m.expires = t0().plus_days(3651);
        }),
    );
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    w.server.clear_faults();
    w.rotate_manifest_key(SECOND_MANIFEST_KEY, t0());
    w.signers = vec![key(SECOND_MANIFEST_KEY)];
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let dev = w.device("dev", trust(SECOND_MANIFEST_KEY));
    assert_eq!(dev.offer().version.to_string(), "1.1.0");
    assert_eq!(dev.state_json()["newest_issued"], json!(t0()));
}

// ---- security-version downgrade -------------------------------------------------------

/// A device that confirmed 1.1.0 with security version 2 (its floor is now 2).
fn past_a_security_fix() -> (World, Dev) {
    let (w, dev) = World::installed();
    let mut fix = at(t0());
    fix.security_version = 2;
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), fix);
    dev.update_to("1.1.0");
    assert_eq!(dev.updater.status().unwrap().security_floor, 2);
    (w, dev)
}

/// Anti-rollback (the "downgrade to a vulnerable version" of TUF's "rollback attacks" and
/// Android's rollback index): an explicit pin below the security floor is refused.
#[test]
fn attack_pin_below_the_security_floor() {
    let (_w, dev) = past_a_security_fix();
    let before = dev.snapshot();
    let old = "1.0.0".parse().unwrap();
    let err = refused(
        dev.updater.check_with(None, Some(&old)),
        ErrorKind::SecurityFloor,
    );
    assert!(err.message().contains("floor"), "{err}");
    before.assert_unchanged(&dev);
}

/// Anti-rollback: the vulnerable build re-published under a higher semver with its lower
/// security version is not offered, and pinning it is refused.
#[test]
fn attack_republished_lower_security_version() {
    let (w, dev) = past_a_security_fix();
    // `evergreen release` refuses it (devices could never take it); a manifest key
    // holder's own tooling, or a stolen key, can still sign it.
    let forged = w.forge("stable", &[&key(MANIFEST_KEY)], |m| {
        let old = "1.0.0".parse().unwrap();
        let mut vulnerable = m.release(&old).unwrap().clone();
        vulnerable.version = "1.2.0".parse().unwrap();
        vulnerable.security_version = 1;
        m.releases.push(vulnerable);
    });
    w.serve(STABLE, forged);
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    let before = dev.snapshot();
    let pin = "1.2.0".parse().unwrap();
    refused(
        dev.updater.check_with(None, Some(&pin)),
        ErrorKind::SecurityFloor,
    );
    before.assert_unchanged(&dev);
}

// ---- malicious archives through the whole update path ---------------------------------

/// A name unique to this test process, for escape paths in shared directories.
fn unique(tag: &str) -> String {
    format!("evergreen-attacks-{}-{tag}", std::process::id())
}

/// Publishes `zip` as 1.1.0 (signed: the hostile archive came through the build), lets the
/// device check and download it, and asserts the install is `unsafe_archive` naming the
/// component and its artifact, nothing exists at `escapes` or anywhere outside the
/// inactive slot, and the device is intact.
fn hostile_install(zip: &[u8], device: serde_json::Value, escapes: &[PathBuf]) -> String {
    let (w, dev) = World::installed_with(Setup::default(), device);
    w.publish_unchecked("stable", "1.1.0", zip, at(t0()));
    let offer = dev.offer();
    dev.download(&offer).unwrap();
    let before = dev.snapshot();
    let plan = dev.updater.plan(&offer).unwrap();
    let err = refused(dev.updater.install(&plan), ErrorKind::UnsafeArchive);
    before.assert_unchanged_but_inactive(&dev);
    for p in escapes {
        assert!(
            std::fs::symlink_metadata(p).is_err(),
            "{} exists",
            p.display()
        );
    }
    let base = dev.app.parent().unwrap();
    assert_eq!(listing(base), ["app", "config.json", "root.json", "state"]);
    assert_eq!(listing(&dev.app), ["current", "slots"]);
    // The inactive slot was emptied only when the refusal came while writing (bytes past
    // what a header declared); the archive's plan refuses it before the slot is touched.
    let slots = listing(&dev.app.join("slots"));
    let primary = before.primary.as_str();
    assert!(slots == ["a", "b"] || slots == [primary], "{slots:?}");
    let inactive = dev.slot_dir(before.primary.other());
    for entry in walk(&inactive) {
        assert!(
            std::fs::symlink_metadata(&entry).unwrap().is_dir(),
            "{} was left in the inactive slot",
            entry.display()
        );
    }
    // Which artifact of the release was refused, before why.
    let artifact = format!("component app (zip artifact {}): ", trust::sha256_hex(zip));
    assert!(err.to_string().starts_with(&artifact), "{err}");
    err.to_string()
}

/// A release whose second component is refused while it is written (a stored entry
/// whose bytes do not match its CRC, which no plan can see without inflating it) leaves
/// nothing of the first in the slot: its bytes held room on a file system that may be
/// full. The next install of a good release goes in.
#[test]
fn a_component_refused_while_written_takes_the_ones_before_it_out_of_the_slot() {
    let (w, dev) = World::installed();
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut bad = zips::build_with(&[Item::File("data.bin", b"GOOD-DATA", 0o644)], stored);
    zips::patch_all(&mut bad, b"GOOD-DATA", b"EVIL-DATA");
    let good = app_zip("1.1.0");
    w.publish_unchecked_components(
        "stable",
        "1.1.0",
        &[("app", &good), ("zdata", &bad)],
        at(t0()),
    );
    let offer = dev.offer();
    dev.download(&offer).unwrap();
    let before = dev.snapshot();
    let plan = dev.updater.plan(&offer).unwrap();
    let err = refused(dev.updater.install(&plan), ErrorKind::UnsafeArchive);
    assert!(err.to_string().starts_with("component zdata "), "{err}");
    before.assert_unchanged_but_inactive(&dev);
    let inactive = dev.slot_dir(before.primary.other());
    assert!(
        std::fs::symlink_metadata(&inactive).is_err(),
        "left in the inactive slot: {:?}",
        walk(&inactive)
    );
    w.publish("stable", "1.2.0", &app_zip("1.2.0"), at(t0()));
    dev.update_to("1.2.0");
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every path under `dir`, not following symlinks.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// A zip with a harmless entry, then `name`.
fn slip(name: &str) -> Vec<u8> {
    zips::build(&[
        Item::File("run.sh", b"#!/bin/sh\n", 0o755),
        Item::File(name, b"evil", 0o644),
    ])
}

fn in_tmp(tag: &str) -> PathBuf {
    PathBuf::from("/tmp").join(unique(tag))
}

/// Zip slip (Snyk 2018; CVE-2018-1002200 shape): `../../../../tmp/evil.txt`.
#[test]
fn attack_zip_slip_parent_traversal() {
    let name = format!("../../../../tmp/{}", unique("evil.txt"));
    let msg = hostile_install(&slip(&name), json!({}), &[in_tmp("evil.txt")]);
    assert!(msg.contains("`..`"), "{msg}");
}

/// A hostile zip that got into a repository past `release`'s check (a key holder's
/// hand-made manifest) is found by `verify`, naming where it is listed, before a device
/// refuses it.
#[test]
fn verify_finds_a_zip_every_device_would_refuse() {
    let (w, _dev) = World::installed_with(Setup::default(), json!({}));
    w.repo.verify(t0()).unwrap();
    w.publish_unchecked("stable", "1.1.0", &slip("../escape.txt"), at(t0()));
    let err = w.repo.verify(t0()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsafeArchive, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("every device would refuse this archive")
            && msg.contains("channel stable release 1.1.0")
            && msg.contains("`..`"),
        "{msg}"
    );
    // A hand-made manifest may leave the zip's `installed_size` out (devices take it
    // without): still checked.
    let no_size = w.forge("stable", &[&key(MANIFEST_KEY)], |m| {
        let app = release_mut(m, "1.1.0")
            .targets
            .get_mut(world::TARGET)
            .unwrap();
        app.components
            .get_mut("app")
            .unwrap()
            .artifact
            .installed_size = None;
    });
    std::fs::write(w.repo.path().join("channels/stable.json"), no_size).unwrap();
    let err = w.repo.verify(t0()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsafeArchive, "{err}");
}

/// An image of 0 bytes in a hand-made manifest (`release` refuses one) is found by
/// `verify` before every device refuses it.
#[test]
fn verify_finds_an_empty_image() {
    let (w, _dev) = World::installed_with(Setup::default(), json!({}));
    let empty = evergreen::trust::sha256_hex(b"");
    std::fs::write(w.repo.path().join("blobs/sha256").join(&empty), b"").unwrap();
    let forged = w.forge("stable", &[&key(MANIFEST_KEY)], |m| {
        let release = m.releases.last_mut().unwrap();
        let target = release.targets.get_mut(world::TARGET).unwrap();
        let artifact = &mut target.components.get_mut("app").unwrap().artifact;
        artifact.kind = evergreen::manifest::ArtifactKind::Image;
        (artifact.size, artifact.sha256, artifact.installed_size) = (0, empty.clone(), None);
    });
    std::fs::write(w.repo.path().join("channels/stable.json"), forged).unwrap();
    let err = w.repo.verify(t0()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "{empty}: expected an image of at least 1 byte, found 0 bytes"
        )),
        "{msg}"
    );
}

/// Zip slip with Windows separators (CVE-2018-1002201 shape): `..\..\Temp\evil.txt`.
#[test]
fn attack_zip_slip_backslash_traversal() {
    let msg = hostile_install(&slip(r"..\..\Temp\evil.txt"), json!({}), &[]);
    assert!(msg.contains("backslash"), "{msg}");
}

/// Zip slip by absolute path: `/tmp/moo`.
#[test]
fn attack_zip_slip_absolute_path() {
    let name = format!("/tmp/{}", unique("moo"));
    let msg = hostile_install(&slip(&name), json!({}), &[in_tmp("moo")]);
    assert!(msg.contains("absolute"), "{msg}");
}

/// Zip slip by a doubled-slash absolute path, which naive `strip_prefix('/')` misses:
/// `//tmp/moo`.
#[test]
fn attack_zip_slip_double_slash_absolute_path() {
    let name = format!("//tmp/{}", unique("moo2"));
    let msg = hostile_install(&slip(&name), json!({}), &[in_tmp("moo2")]);
    assert!(msg.contains("absolute"), "{msg}");
}

/// Zip slip hidden behind a real directory component: `tmp/../../moo`.
#[test]
fn attack_zip_slip_inner_traversal() {
    let msg = hostile_install(&slip("tmp/../../moo"), json!({}), &[]);
    assert!(msg.contains("`..`"), "{msg}");
}

/// Symlink escape (CVE-2021-21300 / tar-slip shape): a symlink entry to `/tmp`, then a
/// file written through it — refused whether symlinks are allowed or not.
#[test]
fn attack_zip_symlink_then_file_through_it() {
    let through = format!("link/{}", unique("via-link.txt"));
    let zip = zips::build(&[
        Item::Link("link", "/tmp"),
        Item::File(&through, b"evil", 0o644),
    ]);
    let escape = in_tmp("via-link.txt");
    let msg = hostile_install(&zip, json!({}), std::slice::from_ref(&escape));
    assert!(msg.contains("symlink"), "{msg}");
    let allowed = json!({"archive": {"allow_symlinks": true}});
    let msg = hostile_install(&zip, allowed, &[escape]);
    assert!(msg.contains("symlink"), "{msg}");
}

/// Zip bomb by declaration: a ZIP64 entry claiming 2^50 bytes, signed into the manifest's
/// `installed_size`: refused before a byte is downloaded, since no slot has the room it
/// declares (the archive's own check refuses it before writing as well:
/// `tests/archives.rs`).
#[test]
fn attack_zip64_entry_declaring_a_huge_size() {
    let (w, dev) = World::installed();
    w.publish_unchecked("stable", "1.1.0", &zips::zip64_declaring(1 << 50), at(t0()));
    let offer = dev.offer();
    let before = dev.snapshot();
    let err = refused(
        dev.updater
            .download(&offer, &mut |_, _| {}, &Default::default()),
        ErrorKind::Io,
    );
    assert!(
        err.message()
            .contains("unpacks to at least 1125899906842624 bytes")
            && err
                .message()
                .ends_with("nothing was downloaded: free space and update again"),
        "{err}"
    );
    before.assert_unchanged(&dev);
}

/// Fifield's overlapping-entries zip bomb ("A better zip bomb", 2019): many entries share
/// one compressed body; refused even with the ratio rule turned off.
#[test]
fn attack_zip_overlapping_entries_bomb() {
    let lenient = json!({"archive": {"max_ratio": u64::MAX}});
    let msg = hostile_install(&zips::overlapping_bomb(8), lenient, &[]);
    assert!(msg.contains("overlap"), "{msg}");
}

/// Classic zip bomb (42.zip shape): one entry inflating over 1000 times its size.
#[test]
fn attack_zip_ratio_bomb() {
    let zip = zips::build(&[Item::File("zeros.bin", &vec![0u8; 8 << 20], 0o644)]);
    assert!(
        zip.len() < 16 << 10,
        "the bomb compresses to {} bytes",
        zip.len()
    );
    let msg = hostile_install(&zip, json!({}), &[]);
    assert!(msg.contains("ratio") || msg.contains("times"), "{msg}");
}

// ---- malformed documents -------------------------------------------------------------

/// Parser attacks on the envelope (the unverified part): broken JSON, broken base64 in
/// the payload or the signature. Nothing past the envelope is parsed: `signature`.
#[test]
fn attack_malformed_envelope() {
    let (w, dev) = World::installed();
    let good = w.forge("stable", &[&key(MANIFEST_KEY)], |_| {});
    let text = String::from_utf8(good.clone()).unwrap();
    let mut bad_payload = envelope(&good);
    bad_payload.payload = format!("{}!*", &bad_payload.payload[..40]);
    let mut bad_sig = envelope(&good);
    bad_sig.signatures[0].sig = "not//base64%%".into();
    let cases = [
        good[..good.len() / 2].to_vec(),
        b"\xff\xfe garbage".to_vec(),
        text.replacen("\"payload\"", "\"payload\": 1, \"x\"", 1)
            .into_bytes(),
        b"[]".to_vec(),
        to_bytes(&bad_payload),
        to_bytes(&bad_sig),
    ];
    for case in cases {
        check_refused(&w, &dev, case, ErrorKind::Signature);
    }
}

/// Parser attacks under a valid signature (a compromised signer or a buggy publisher):
/// broken JSON, wrong shapes, a hash that is not hex, a key given twice. All
/// `wrong_metadata`, nothing of it acted on.
#[test]
fn attack_malformed_payload_under_a_valid_signature() {
    let (w, dev) = World::installed();
    let m = manifest_of(&w.forge("stable", &[], evil_release));
    let text = String::from_utf8(m.to_bytes()).unwrap();
    let sha = m.releases[0].targets[world::TARGET].components["app"]
        .artifact
        .sha256
        .clone();
    let cases = [
        text[..text.len() / 2].to_string(),
        "[]".to_string(),
        "null".to_string(),
        text.replacen("\"sequence\":", "\"sequence\":-", 1),
        text.replace(&sha, &format!("{}zz", &sha[..62])),
        text.replacen("\"releases\":[", "\"releases\":[1,", 1),
        text.replacen("\"app\":{", "\"app\":{},\"app\":{", 1),
    ];
    for payload in cases {
        assert_ne!(payload, text);
        let sealed = trust::seal(
            trust::MANIFEST_TYPE,
            payload.as_bytes(),
            &[&key(MANIFEST_KEY)],
        );
        check_refused(&w, &dev, sealed, ErrorKind::WrongMetadata);
    }
}

/// A signed artifact `url` that is a relative path (a buggy publisher or a compromised
/// signer) would make the device read a file relative to its working directory: the
/// manifest is refused, naming the component, as is an http(s) URL no request can be
/// made for (a space, an unclosed IPv6 bracket, a port past 65535), which was accepted
/// and then failed every download as `network`. Absolute `http://` and `file://` URLs
/// are accepted and downloaded.
#[test]
fn attack_artifact_url_relative_to_the_device() {
    let (w, dev) = World::installed();
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let m = manifest_of(&w.channel_bytes("stable"));
    let sha256 = m.releases[1].targets[world::TARGET].components["app"]
        .artifact
        .sha256
        .clone();
    let with_url = |url: String| {
        w.forge("stable", &[&key(MANIFEST_KEY)], |m| {
            let app = m.releases[1].targets.get_mut(world::TARGET).unwrap();
            app.components.get_mut("app").unwrap().artifact.url = Some(url);
        })
    };
    let blob = format!("blobs/sha256/{sha256}");
    for url in [
        blob.clone(),
        format!("ftp://mirror/{blob}"),
        format!("http://exa mple/{blob}"),
        format!("http://[::1/{blob}"),
        format!("http://mirror:99999/{blob}"),
    ] {
        let err = check_refused(&w, &dev, with_url(url.clone()), ErrorKind::WrongMetadata);
        for wanted in ["component \"app\"", "expected", &url] {
            assert!(err.message().contains(wanted), "{wanted:?} in {err}");
        }
    }

    let elsewhere = support::TestServer::serve(w.repo.path());
    let file_url = format!("file://{}/{blob}", w.repo.path().display());
    for url in [format!("{}/{blob}", elsewhere.url()), file_url] {
        let dev = w.device(&format!("dev-{}", &url[..4]), json!({}));
        w.server.clear_faults();
        w.serve(STABLE, with_url(url.clone()));
        let offer = dev.offer();
        assert_eq!(offer.version.to_string(), "1.1.0");
        dev.download(&offer).unwrap();
        assert!(dev.state.join("downloads").join(&sha256).is_file(), "{url}");
    }
    assert_eq!(elsewhere.requests(&blob).len(), 1);
    assert!(
        w.server.requests(&blob).is_empty(),
        "the bases were not asked"
    );
}

// ---- redirects -----------------------------------------------------------------------

/// Redirection to an attacker's host or scheme (DNS / CDN hijack shape): refused as
/// `http_status` unless `follow_redirects` is set; when followed, the blob is still
/// verified against the signed hash.
#[test]
fn attack_redirect_to_another_host_or_scheme() {
    let (w, dev) = World::installed();
    let follower = w.device("follower", json!({"follow_redirects": true}));
    follower.update_to("1.0.0");
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let (offer, follower_offer) = (dev.offer(), follower.offer());
    let blob = format!(
        "blobs/sha256/{}",
        offer.components[0].artifact.as_ref().unwrap().sha256
    );
    let evil = support::TestServer::serve(w.repo.path());
    evil.set_fault(&blob, Fault::Replace(app_zip("6.6.6")));
    let (before, follower_before) = (dev.snapshot(), follower.snapshot());

    for location in [
        format!("{}/{blob}", evil.url()),
        "file:///etc/passwd".into(),
    ] {
        w.server
            .set_fault("blobs/", Fault::Redirect(location.clone()));
        let err = refused(dev.download(&offer), ErrorKind::HttpStatus);
        assert!(err.message().contains(&location), "{err}");
        before.assert_unchanged_but_pending(&dev);
        w.server.clear_faults();
    }
    assert!(
        evil.requests(&blob).is_empty(),
        "the other host was never asked"
    );

    w.server
        .set_fault("blobs/", Fault::Redirect(format!("{}/{blob}", evil.url())));
    refused(follower.download(&follower_offer), ErrorKind::HashMismatch);
    follower_before.assert_unchanged_but_pending(&follower);
    evil.clear_faults();
    follower.download(&follower_offer).unwrap();
    assert_eq!(evil.requests(&blob).len(), 2, "followed both times");
}

/// Redirection of metadata: the manifest's URL redirected to a host serving another
/// channel's genuine manifest; followed, it is still checked (`wrong_metadata`).
#[test]
fn attack_redirected_manifest_is_still_verified() {
    let (w, dev) = World::installed_with(Setup::default(), json!({"follow_redirects": true}));
    for n in 0..3 {
        w.publish("nightly", &format!("2.0.{n}"), &app_zip("2.0.0"), at(t0()));
    }
    let evil = support::TestServer::serve(w.repo.path());
    evil.set_fault(STABLE, Fault::Replace(w.channel_bytes("nightly")));
    w.server
        .set_fault(STABLE, Fault::Redirect(format!("{}/{STABLE}", evil.url())));
    let before = dev.snapshot();
    refused(dev.updater.check(), ErrorKind::WrongMetadata);
    before.assert_unchanged(&dev);
    assert_eq!(evil.requests(STABLE).len(), 1);
}

// ---- through the CLI -----------------------------------------------------------------

/// `evergreen <cmd>` fails with exit 1 and one `error[<kind>]` line on stderr; returns
/// `evergreen status --json` from before and after.
fn cli_refused(
    dev: &Dev,
    cmd: &str,
    args: &[&str],
    kind: &str,
) -> (serde_json::Value, serde_json::Value) {
    let before = dev.cli_status();
    let out = dev.cli(cmd, args);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // Progress lines may precede it; the failure itself is one `error[kind]` line, last.
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error[")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].starts_with(&format!("error[{kind}]: ")), "{err}");
    assert_eq!(err.trim_end().lines().last(), Some(errors[0]), "{err}");
    (before, dev.cli_status())
}

/// "Arbitrary software installation" through the device CLI: a manifest signed by an
/// attacker's key, refused by `evergreen check` and `evergreen update`.
#[test]
fn attack_forged_manifest_through_the_cli() {
    let (w, dev) = World::installed();
    let snapshot = dev.snapshot();
    let forged = w.forge("stable", &[&key(ATTACKER_KEY)], evil_release);
    w.serve(STABLE, forged);
    for (cmd, args) in [("check", &["--json"][..]), ("update", &["--yes"][..])] {
        let (before, after) = cli_refused(&dev, cmd, args, "signature");
        assert_eq!(after, before, "evergreen {cmd}");
    }
    snapshot.assert_unchanged(&dev);
}

/// Zip slip through `evergreen update --yes`: refused, nothing written outside the slot.
/// (The update's own check legitimately records the new manifest and the check time.)
#[test]
fn attack_zip_slip_through_the_cli() {
    let (w, dev) = World::installed();
    let name = format!("../../../../tmp/{}", unique("cli-evil.txt"));
    w.publish_unchecked("stable", "1.1.0", &slip(&name), at(t0()));
    let snapshot = dev.snapshot();
    let (mut before, mut after) = cli_refused(&dev, "update", &["--yes"], "unsafe_archive");
    let inactive = snapshot.primary.other().as_str();
    for s in [&mut before, &mut after] {
        s.as_object_mut().unwrap().remove("last_check");
        s["slots"].as_object_mut().unwrap().remove(inactive);
        common::without_failures(s);
    }
    assert_eq!(after, before);
    snapshot.assert_booted_intact(&dev);
    assert_ne!(dev.state_json()[inactive]["status"], "installed");
    // The refusal is on record for `status`.
    let history = dev.state_json()["history"].clone();
    let last = &history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"], "install_failed", "{history}");
    assert!(
        last["detail"]
            .as_str()
            .unwrap()
            .starts_with("1.1.0: error[unsafe_archive]: "),
        "{last}"
    );
    assert!(std::fs::symlink_metadata(in_tmp("cli-evil.txt")).is_err());
}

/// An honest manifest signed by the trusted key and by one more (the next manifest key,
/// during an overlap before a rotation), through a DSSE signer that leaves keyids empty
/// (DSSE makes them optional). The foreign entry comes first; the manifest is accepted.
#[test]
fn a_foreign_signature_first_without_keyids_does_not_hide_the_trusted_one() {
    let (w, dev) = World::installed();
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let m = manifest_of(&w.channel_bytes("stable"));
    let sealed = trust::seal(
        trust::MANIFEST_TYPE,
        &m.to_bytes(),
        &[&key(SECOND_MANIFEST_KEY), &key(MANIFEST_KEY)],
    );
    let mut e = envelope(&sealed);
    for s in &mut e.signatures {
        s.keyid.clear();
    }
    w.serve(STABLE, to_bytes(&e));
    match dev.updater.check() {
        Ok(Check::Available(o)) => assert_eq!(o.version.to_string(), "1.1.0"),
        other => panic!("an honest envelope was refused: {other:?}"),
    }
}

/// A root-key rotation (root 2: root key 2, signed by old key 1 and new key 2, in that
/// order) whose envelope carries no keyids: verified under its own root keys {2}, key 1's
/// entry comes first and must not keep key 2's from counting.
#[test]
fn a_root_key_rotation_without_keyids_is_walked() {
    let (w, dev) = World::installed();
    w.rotate_root_key(t0());
    let mut e = envelope(&std::fs::read(w.repo.path().join("root/2.json")).unwrap());
    for s in &mut e.signatures {
        s.keyid.clear();
    }
    w.server
        .set_fault("root/2.json", Fault::Replace(to_bytes(&e)));
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    match dev.updater.check() {
        Ok(Check::Available(o)) => assert_eq!(o.version.to_string(), "1.1.0"),
        other => panic!("an honest root rotation was refused: {other:?}"),
    }
    assert_eq!(dev.state_json()["root_version"], 2);
}

/// Root 2 trusts a second manifest key beside the first: a key added, none revoked.
fn add_second_manifest_key(w: &World) {
    let opts = RotateOptions {
        manifest_keys: Some(vec![
            key(MANIFEST_KEY).public(),
            key(SECOND_MANIFEST_KEY).public(),
        ]),
        ..RotateOptions::default()
    };
    w.repo
        .rotate(&opts, &[&key(ROOT_KEY), &key(MANIFEST_KEY)], t0())
        .unwrap();
}

/// An operator adds a second manifest key (none revoked: {11} -> {11, 12}). The sequences
/// seen stay (DESIGN §5.1 rule 7 starts afresh only when a key is revoked): a replay of the
/// older, still unexpired manifest signed by key 11 is refused, so 1.1.0 is not hidden.
#[test]
fn adding_a_manifest_key_keeps_the_sequences_seen() {
    let (w, dev) = World::installed();
    let old = w.channel_bytes("stable");
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    assert!(matches!(dev.updater.check().unwrap(), Check::Available(_)));
    let seen = dev.state_json()["manifests"]["stable"]["sequence"].clone();
    add_second_manifest_key(&w);
    w.serve(STABLE, old);
    let r = dev.updater.check();
    let state = dev.state_json();
    assert!(
        matches!(r, Err(ref e) if e.kind() == ErrorKind::MetadataRollback),
        "sequence {seen} was seen, an older manifest was accepted: {r:?}; stable sequence now {}",
        state["manifests"]["stable"]["sequence"]
    );
}

/// The same for the clock: a device whose RTC lost power (reads 2001) had its clock pulled
/// up to t0 by the manifests it verified. A key added keeps the pull-up, so a manifest
/// expired long ago by that clock is still refused.
#[test]
fn adding_a_manifest_key_keeps_the_clock_pulled_up() {
    let w = World::with(Setup::default());
    // An old manifest, 400 days before t0, valid 30 days.
    w.publish(
        "stable",
        "0.9.0",
        &app_zip("0.9.0"),
        at(t0().plus_days(-400)),
    );
    let stale = w.channel_bytes("stable");
    w.publish("stable", "1.0.0", &app_zip("1.0.0"), at(t0()));
    let dev = w.device("dev", json!({}));
    dev.update_to("1.0.0");
    dev.set_clock(evergreen::Timestamp::from_unix(1_000_000_000));
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    add_second_manifest_key(&w);
    w.serve(STABLE, stale);
    let r = dev.updater.check();
    let err = refused(r, ErrorKind::Expired);
    assert!(err.message().contains("expired"), "{err}");
    assert_eq!(
        dev.state_json()["newest_issued"],
        json!(t0()),
        "the pull-up was kept"
    );
}

/// A saved root 2 stays in use under a pinned root 1 of the same chain, without walking
/// there again: with root/2.json hidden, checks still succeed.
#[test]
fn the_saved_root_wins_over_an_older_pinned_one_without_the_server() {
    let w = World::with(Setup::default());
    w.publish("stable", "1.0.0", &app_zip("1.0.0"), at(t0()));
    w.rotate_root_key(t0());
    let old = w.device("old", json!({}));
    assert!(matches!(old.updater.check().unwrap(), Check::Available(_)));
    w.server.set_fault("root/2.json", Fault::Status(404));
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    assert!(matches!(old.updater.check().unwrap(), Check::Available(_)));
    assert_eq!(old.state_json()["root_version"], 2);
}

/// A device whose configured root file is gone (or unreadable) after it saved its own
/// root.json keeps checking with the saved chain, so it can still fetch the release that
/// brings the file back.
#[test]
fn a_missing_configured_root_leaves_the_saved_chain_in_use() {
    let (w, dev) = World::installed();
    std::fs::remove_file(dev.config.parent().unwrap().join("root.json")).unwrap();
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let r = dev.updater.check();
    assert!(matches!(r, Ok(Check::Available(_))), "{r:?}");
}

/// Nor does a configured root that is there but damaged (cut short, a flipped byte): the
/// firmware that shipped it must not keep the device from the release that repairs it.
#[test]
fn a_damaged_configured_root_leaves_the_saved_chain_in_use() {
    let (w, dev) = World::installed();
    let configured = dev.config.parent().unwrap().join("root.json");
    let bytes = std::fs::read(&configured).unwrap();
    std::fs::write(&configured, &bytes[..bytes.len() / 2]).unwrap();
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let r = dev.updater.check();
    assert!(matches!(r, Ok(Check::Available(_))), "{r:?}");
}

/// Damage in the root role itself, which is read before the signatures are checked (to
/// know which keys to check them with): a threshold of 0, or a root key that is no longer
/// base64. Such a file is refused as `config` or `wrong_metadata` rather than `signature`,
/// and still only as damage: a root for another product is the one `config` that stops.
fn damage_root_role(path: &Path, what: &str) {
    let mut env = envelope(&std::fs::read(path).unwrap());
    let payload = String::from_utf8(trust::decode_base64(&env.payload).unwrap()).unwrap();
    let (from, to) = match what {
        "threshold" => ("\"threshold\": 1", "\"threshold\": 0"),
        "key" => ("\"public\": \"", "\"public\": \"!"),
        _ => unreachable!("{what}"),
    };
    // The root role is the last of the roles (sorted), its keys listed first.
    let at = match what {
        "threshold" => payload.rfind(from),
        _ => payload.find(from),
    }
    .unwrap_or_else(|| panic!("no {from} in {payload}"));
    let mut damaged = payload.clone();
    damaged.replace_range(at..at + from.len(), to);
    if what == "key" {
        damaged.remove(at + to.len()); // the same length, one base64 digit replaced
    }
    assert_ne!(damaged, payload);
    env.payload = trust::encode_base64(damaged.as_bytes());
    std::fs::write(path, to_bytes(&env)).unwrap();
}

/// A flipped byte in the configured root's root role leaves the saved chain in use, as
/// any other damage does: it used to stop every check with `config`, as if the root were
/// for another product, keeping the device from the release that repairs the file.
#[test]
fn a_configured_root_damaged_in_its_root_role_leaves_the_saved_chain_in_use() {
    for what in ["threshold", "key"] {
        let (w, dev) = World::installed();
        let configured = dev.config.parent().unwrap().join("root.json");
        damage_root_role(&configured, what);
        let err = trust::TrustedRoot::pinned(&std::fs::read(&configured).unwrap(), 1 << 20)
            .expect_err("the damaged root still verifies");
        // Named once: "root version 1: key …", not "root version 1: root version 1 key …".
        assert_eq!(
            err.message().matches("root version").count(),
            1,
            "{what}: {err}"
        );
        w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
        let r = dev.updater.check();
        assert!(matches!(r, Ok(Check::Available(_))), "{what}: {r:?}");
    }
}

/// The same damage in the saved root is as if none were saved: the configured root is
/// the start again.
#[test]
fn a_saved_root_damaged_in_its_root_role_is_as_if_none_were_saved() {
    for what in ["threshold", "key"] {
        let (w, dev) = World::installed();
        damage_root_role(&dev.state.join("root.json"), what);
        w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
        let r = dev.updater.check();
        assert!(matches!(r, Ok(Check::Available(_))), "{what}: {r:?}");
        let saved = std::fs::read(dev.state.join("root.json")).unwrap();
        assert!(
            trust::TrustedRoot::pinned(&saved, 1 << 20).is_ok(),
            "{what}: the saved root was not written again"
        );
    }
}

/// A damaged saved root is as if none were saved: the device starts from its configured
/// root again and walks the chain, which must reach the version it trusted before.
#[test]
fn a_damaged_saved_root_is_walked_again_from_the_configured_one() {
    let (w, dev) = World::installed();
    w.rotate_manifest_key(SECOND_MANIFEST_KEY, t0());
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    assert_eq!(dev.state_json()["root_version"], 2);
    std::fs::write(dev.state.join("root.json"), b"{\"payloadType\": ").unwrap();
    // Root 1 alone cannot verify the manifest, which only root 2's key signs.
    let r = dev.updater.check();
    assert!(matches!(r, Ok(Check::UpToDate { .. })), "{r:?}");
    assert_eq!(dev.state_json()["root_version"], 2);
    let saved = std::fs::read(dev.state.join("root.json")).unwrap();
    assert!(
        serde_json::from_slice::<serde_json::Value>(&saved).is_ok(),
        "root.json not rewritten"
    );
}

/// A state.json written before `root_keys` and `manifest_keys` existed still checks.
#[test]
fn a_state_from_before_the_trust_records_still_checks() {
    let (w, dev) = World::installed();
    w.rotate_manifest_key(SECOND_MANIFEST_KEY, t0());
    let path = dev.state.join("state.json");
    let mut st: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    st.as_object_mut().unwrap().remove("root_keys");
    st.as_object_mut().unwrap().remove("manifest_keys");
    std::fs::write(&path, st.to_string()).unwrap();
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    assert_eq!(dev.state_json()["root_version"], 2);
}

/// A new chain for the world's product, with a root 2 (same keys, renewed) served by the
/// world's server at `root/2.json`; returns its directory.
fn new_chain_with_root_2(w: &World) -> PathBuf {
    let path = new_chain(w)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let repo2 = evergreen::publish::Repo::open(&path).unwrap();
    repo2
        .rotate(&RotateOptions::default(), &[&key(21)], t0())
        .unwrap();
    w.serve(
        "root/2.json",
        std::fs::read(path.join("root/2.json")).unwrap(),
    );
    path
}

/// A device moved to a new chain by hand (decision 29) whose reinstall walks to that chain's
/// root 2, then refuses the manifest: what the walk learned is kept, so root.json and the
/// state agree and later checks work.
#[test]
fn a_failed_reinstall_after_walking_a_new_chain_keeps_what_it_learned() {
    let (w, dev) = World::installed();
    let repo2 = new_chain_with_root_2(&w);
    let pinned = dev.config.parent().unwrap().join("root.json");
    let saved = dev.state.join("root.json");
    std::fs::copy(repo2.join("root/1.json"), &pinned).unwrap();
    std::fs::copy(&pinned, &saved).unwrap(); // the move, by hand
                                             // A network attacker (or a stale mirror) serves a changed manifest of the old chain:
                                             // the device walks the genuine new chain to root 2, then refuses the manifest.
    w.serve(STABLE, w.forge("stable", &[&key(MANIFEST_KEY)], |_| {}));
    refused(dev.updater.reinstall_offer(), ErrorKind::Signature);
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        std::fs::read(repo2.join("root/2.json")).unwrap()
    );
    w.server.clear_faults();
    w.serve(
        "root/2.json",
        std::fs::read(repo2.join("root/2.json")).unwrap(),
    );
    let chain2 = w.forge("stable", &[&key(31)], |m| {
        m.sequence = 1;
        m.releases[0].notes = "chain 2".into();
    });
    w.serve(STABLE, chain2);
    let r = dev.updater.check();
    assert!(
        matches!(r, Ok(Check::UpToDate { .. })),
        "after a failed reinstall every check fails: {r:?}"
    );
    let state = dev.state_json();
    assert_eq!(state["root_version"], 2, "{state}");
    assert_eq!(state["manifests"]["stable"]["sequence"], 1, "{state}");
}

/// Runs `evergreen check` (the CLI, built with `fault-injection`) killed at each of its
/// crash points in turn, each time from the device's state as it is now, and after each
/// calls `after`, which asserts what a device must still do after such a power cut.
fn at_every_crash_point_of_a_check(w: &World, dev: &Dev, after: impl Fn(&Dev) -> Vec<String>) {
    let keep = w.tmp.path().join("state-before");
    common::copy_dir(&dev.state, &keep);
    let args = ["check", "--config", dev.config.to_str().unwrap()];
    let out = common::run_env(&args, &[("EVERGREEN_CRASH_COUNT", "1")]);
    let points: Vec<String> = common::stderr(&out)
        .lines()
        .filter(|l| l.starts_with("crash-point "))
        .map(str::to_owned)
        .collect();
    assert!(!points.is_empty(), "{}", common::stderr(&out));
    let mut failed = Vec::new();
    for (k, point) in points.iter().enumerate() {
        common::copy_dir(&keep, &dev.state);
        let out = common::run_env(&args, &[("EVERGREEN_CRASH_AT", &(k + 1).to_string())]);
        common::assert_crashed_at(&out, k + 1);
        failed.extend(after(dev).into_iter().map(|e| format!("{point}: {e}")));
    }
    assert!(
        failed.is_empty(),
        "{} crash points:\n{}",
        points.len(),
        failed.join("\n")
    );
}

/// Two checks after the power cut; what they say when they fail.
fn checks_fail(dev: &Dev) -> Vec<String> {
    (0..2)
        .filter_map(|n| dev.updater.check().err().map(|e| format!("check {n}: {e}")))
        .collect()
}

/// A device moved to a new chain by hand (decision 29) walks to that chain's root 2: a
/// power cut anywhere in that check leaves root.json and the state agreeing (the root keys
/// are recorded before root.json changes), so later checks work.
#[test]
fn a_power_cut_while_walking_a_new_chain_leaves_checks_working() {
    let (w, dev) = World::installed();
    let repo2 = new_chain_with_root_2(&w);
    let pinned = dev.config.parent().unwrap().join("root.json");
    std::fs::copy(repo2.join("root/1.json"), &pinned).unwrap();
    std::fs::copy(&pinned, dev.state.join("root.json")).unwrap(); // the move, by hand
    let chain2 = w.forge("stable", &[&key(31)], |m| {
        m.sequence = 1;
        m.releases[0].notes = "chain 2".into();
    });
    w.serve(STABLE, chain2);
    at_every_crash_point_of_a_check(&w, &dev, checks_fail);
}

/// New firmware pins root 2 (root keys rotated 1 -> 2); its first check writes it over
/// root.json and walks to root 3. A power cut anywhere in that check leaves later checks
/// working.
#[test]
fn a_power_cut_after_a_newer_configured_root_leaves_checks_working() {
    let (w, dev) = World::installed();
    w.rotate_root_key(t0());
    let pinned = dev.config.parent().unwrap().join("root.json");
    std::fs::copy(w.repo.path().join("root/2.json"), &pinned).unwrap(); // new firmware
    w.repo
        .rotate(&RotateOptions::default(), &[&key(2)], t0())
        .unwrap(); // root 3
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0())); // the check walks
    at_every_crash_point_of_a_check(&w, &dev, checks_fail);
}

/// The same firmware without a walk (the channel unchanged): a power cut after the newer
/// root went into root.json must not look like a move to a new chain at the next check,
/// which would drop the sequences seen: an older manifest replayed is still refused.
#[test]
fn a_power_cut_after_a_newer_configured_root_replays_no_older_manifest() {
    let (w, dev) = World::installed();
    let old = w.channel_bytes("stable");
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    assert!(matches!(dev.updater.check().unwrap(), Check::Available(_)));
    let current = w.channel_bytes("stable");
    w.rotate_root_key(t0());
    // The channel as before the rotation re-signed it: nothing to walk for.
    w.serve(STABLE, current.clone());
    let pinned = dev.config.parent().unwrap().join("root.json");
    std::fs::copy(w.repo.path().join("root/2.json"), &pinned).unwrap(); // new firmware
    at_every_crash_point_of_a_check(&w, &dev, |dev| {
        w.serve(STABLE, old.clone());
        let replayed = dev.updater.check();
        w.serve(STABLE, current.clone());
        match replayed {
            Err(e) if e.kind() == ErrorKind::MetadataRollback => vec![],
            other => vec![format!("sequence 1 replayed after sequence 2: {other:?}")],
        }
    });
}

/// A channel signed with a clock far ahead by two keys, and a rotation that revokes only
/// one: devices keep the channel's record (still signed by the key that stays) and the
/// `issued` it pulled their clock up to, so every channel re-signed at the true clock
/// would be expired to them. `rotate` refuses it, naming the channel, and writes nothing.
#[test]
fn a_rotation_that_keeps_a_key_of_a_channel_signed_far_ahead_is_refused() {
    let setup = Setup {
        manifest_keys: vec![MANIFEST_KEY, SECOND_MANIFEST_KEY],
        ..Setup::default()
    };
    let (w, dev) = World::installed_with(setup, json!({}));
    let ahead = t0().plus_days(200);
    let both = [&key(MANIFEST_KEY), &key(SECOND_MANIFEST_KEY)];
    w.repo
        .resign("stable", &Signing::new(&both, ahead))
        .unwrap();
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    assert_eq!(dev.state_json()["newest_issued"], json!(ahead));
    let opts = RotateOptions {
        manifest_keys: Some(vec![key(SECOND_MANIFEST_KEY).public(), key(13).public()]),
        ..RotateOptions::default()
    };
    let signers = [&key(ROOT_KEY), &key(SECOND_MANIFEST_KEY), &key(13)];
    let err = w.repo.rotate(&opts, &signers, t0()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string()
            .starts_with("channel stable: expected a clock at or after its last issued"),
        "{err}"
    );
    assert!(!w.repo.path().join("root/2.json").exists());
    // Rotating out both keys that signed it is the remedy, and devices take what it wrote.
    let opts = RotateOptions {
        manifest_keys: Some(vec![key(13).public()]),
        ..RotateOptions::default()
    };
    w.repo
        .rotate(&opts, &[&key(ROOT_KEY), &key(13)], t0())
        .unwrap();
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    assert_eq!(dev.state_json()["newest_issued"], json!(t0()));
}

/// A rotation that revokes a root key re-signs every channel, so a device's next check
/// fetches a changed channel and walks to the new root: a thief holding the revoked key
/// cannot then sign a root 2 and manifests of its own for a device that checked after
/// the revocation (a 304 would have walked nothing, leaving root 1 trusted until it
/// expired).
#[test]
fn a_root_key_revoked_no_longer_signs_for_a_device_that_checked_since() {
    let (w, dev) = World::installed();
    w.rotate_root_key(t0()); // root 2: root key 2; root key 1 is revoked
    root_key_1_alone_is_refused_after_a_check(&w, &dev);
}

/// The same with the root threshold raised (1 of {1} to 2 of {1, 2}): root key 1 alone
/// must no longer sign for a device that checked since.
#[test]
fn a_root_threshold_raised_no_longer_lets_one_key_sign_for_a_device_that_checked_since() {
    let (w, dev) = World::installed();
    let opts = RotateOptions {
        root_keys: Some(vec![key(ROOT_KEY).public(), key(2).public()]),
        root_threshold: Some(2),
        ..RotateOptions::default()
    };
    let root_keys = [key(ROOT_KEY), key(2)];
    let signers: Vec<&SecretKey> = root_keys.iter().chain(&w.signers).collect();
    w.repo.rotate(&opts, &signers, t0()).unwrap();
    root_key_1_alone_is_refused_after_a_check(&w, &dev);
}

/// After a rotation at t0 that takes signing power from root key 1, a device checks
/// (walking to root 2); then a thief with root key 1 and a key of its own serves a root 2
/// of its making and a manifest it signed, which the device must refuse.
fn root_key_1_alone_is_refused_after_a_check(w: &World, dev: &Dev) {
    dev.set_clock(t0().plus_secs(6 * 3600));
    assert!(matches!(
        dev.updater.check().unwrap(),
        Check::UpToDate { .. }
    ));
    assert_eq!(dev.state_json()["root_version"], 2);
    let thief = key(66);
    let one = std::fs::read(w.repo.path().join("root/1.json")).unwrap();
    let e = trust::parse_envelope(&one).unwrap();
    let mut forged: Root =
        serde_json::from_slice(&trust::decode_base64(&e.payload).unwrap()).unwrap();
    let id = thief.public().keyid();
    forged.version = 2;
    forged.keys.insert(
        id.clone(),
        trust::RootKey {
            alg: "ed25519".into(),
            public: thief.public().to_base64(),
        },
    );
    forged.roles.get_mut("root").unwrap().keyids = vec![id.clone()];
    forged.roles.get_mut("manifest").unwrap().keyids = vec![id];
    let root = trust::seal(ROOT_TYPE, &forged.to_bytes(), &[&key(ROOT_KEY), &thief]);
    w.serve("root/2.json", root);
    let evil = w.forge("stable", &[&thief], evil_release);
    w.serve(STABLE, evil);
    dev.set_clock(t0().plus_secs(12 * 3600));
    refused(dev.updater.check(), ErrorKind::Signature);
}

/// Cron's `evergreen update` of stable (deploy policy `at`) and an admin's `evergreen
/// update --channel preview` interleave: the admin's check of preview and its switch land
/// between cron's download and its install. Either serial order keeps stable's release
/// from going live on a device that now follows preview (a switch after staging withholds
/// it; a switch before the check means stable is never checked), and so must this one.
#[test]
fn a_switch_by_update_channel_between_download_and_install_withholds_the_release() {
    let (w, dev, later) = activating_later();
    let mut opts = at(t0());
    opts.rollout_percent = Some(100.0);
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), opts);
    w.publish("preview", "1.0.0", &app_zip("1.0.0"), at(t0()));
    // Cron's `update`: the check of stable and the download.
    let plan = downloaded_plan(&dev);
    // The admin's `update --channel preview`: its check, then the switch.
    assert!(matches!(
        dev.updater.check_with(Some("preview"), None).unwrap(),
        Check::UpToDate { .. }
    ));
    dev.updater.set_channel("preview").unwrap();
    // Cron's `update` goes on: the install (then `activate` at the policy's time).
    installed_once_due(&dev, &plan, later);
    assert_eq!(dev.state_json()["channel"], "preview");
    let reason = withheld_reason(&dev);
    assert!(reason.contains(LEFT_STABLE), "{reason}");
}

/// With real processes: cron's `evergreen update --yes` (deploy policy `at`) is
/// downloading stable's 1.1.0 when the admin, who looked at preview earlier (`evergreen
/// check --channel preview`), runs `evergreen channel preview`. The release staged is
/// withheld as it would have been had the switch come after the install.
#[test]
fn a_channel_switch_during_crons_download_withholds_the_release_staged() {
    let (w, dev, later) = activating_later();
    let mut opts = at(t0());
    opts.rollout_percent = Some(100.0);
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), opts);
    w.publish("preview", "1.0.0", &app_zip("1.0.0"), at(t0()));
    // The admin's earlier look at preview.
    let out = dev.cli("check", &["--channel", "preview"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    // Cron's update, its download slowed down.
    w.server.set_fault(
        "/blobs/",
        Fault::Trickle {
            bytes: 16,
            every: Duration::from_millis(40),
        },
    );
    let mut cmd = std::process::Command::new(common::bin());
    cmd.args(["update", "--yes", "--config", dev.config.to_str().unwrap()]);
    let cron = common::Watched::start(&mut cmd);
    until_a_download_runs(&dev, "cron");
    // The admin's switch, while cron downloads.
    let out = dev.cli("channel", &["preview"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let out = cron.finish();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{said}{}", common::stderr(&out));
    assert!(said.contains("deferred: 1.1.0"), "{said}");
    assert_eq!(dev.state_json()["channel"], "preview");
    // The policy's time comes.
    dev.set_clock(later.plus_days(1));
    let reason = withheld_reason(&dev);
    assert!(reason.contains(LEFT_STABLE), "{reason}");
}

/// Decision 12: a call made on the thread that holds a lock of the state (from an event
/// callback of a running operation) is refused with `invalid_state` rather than waiting
/// for itself, through any handle on the same state directory. A read-only root with
/// `/var/lib/evergreen` bind-mounted from `/data` gives a second handle another path to
/// the same directory; the host's callback on it must still be refused, since a wait
/// there is a hang for good. Needs root (a bind mount); skipped otherwise.
#[test]
fn a_callback_through_a_bind_mounted_alias_of_the_state_is_refused_not_a_deadlock() {
    let (w, dev) = World::installed_with(Setup::default(), json!({}));
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let alias = dev.state.parent().unwrap().join("state-alias");
    std::fs::create_dir_all(&alias).unwrap();
    let mounted = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&dev.state)
        .arg(&alias)
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("skipped: no bind mount here (needs root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(alias.clone());
    let mut aliased = evergreen::Config::from_file(&dev.config).unwrap();
    aliased.state_dir = alias.clone();
    let other = std::sync::Arc::new(evergreen::Updater::builder(aliased).build().unwrap());
    let (said, answer) = std::sync::mpsc::channel();
    let first = evergreen::Updater::builder(evergreen::Config::from_file(&dev.config).unwrap())
        .on_event(move |e| {
            // Emitted under the work lock of the check.
            if matches!(e, evergreen::Event::Available { .. }) {
                let _ = said.send(other.check().map(drop).map_err(|e| e.kind()));
            }
        })
        .build()
        .unwrap();
    std::thread::spawn(move || first.check().map(drop));
    match answer.recv_timeout(Duration::from_secs(20)) {
        Ok(r) => assert_eq!(r, Err(ErrorKind::InvalidState)),
        Err(_) => panic!(
            "a check from inside the Available event of a check, through {} (a bind mount of {}), waited 20 s for the work lock its own thread holds",
            alias.display(),
            dev.state.display()
        ),
    }
}

/// A download's cancel (DESIGN §5.4) is heard while it waits for the work lock, which
/// another process (cron's `evergreen update` of a large image on a slow link) may hold
/// for as long as its own download takes: a host that cancels, or shuts down and frees
/// the updater, must not be held up until that process is done.
#[test]
fn a_download_waiting_for_the_work_lock_hears_its_cancel() {
    let (w, dev) = World::installed_with(Setup::default(), json!({}));
    w.publish("stable", "1.1.0", &app_zip("1.1.0"), at(t0()));
    let offer = dev.offer();
    let plan = dev.updater.plan(&offer).unwrap();
    // Another process downloads slowly, holding the work lock.
    w.server.set_fault(
        "/blobs/",
        Fault::Trickle {
            bytes: 16,
            every: Duration::from_millis(400),
        },
    );
    let mut cmd = std::process::Command::new(common::bin());
    cmd.args([
        "update",
        "--yes",
        "--download-only",
        "--config",
        dev.config.to_str().unwrap(),
    ]);
    let other = common::Watched::start(&mut cmd);
    until_a_download_runs(&dev, "the other process");
    let cancel = evergreen::fetch::CancelToken::new();
    let (result, waited) = std::thread::scope(|s| {
        let mine = s.spawn(|| dev.updater.download(&plan, &mut |_, _| {}, &cancel));
        std::thread::sleep(Duration::from_millis(300));
        cancel.cancel();
        let cancelled_at = std::time::Instant::now();
        let r = mine.join().unwrap();
        (r, cancelled_at.elapsed())
    });
    let out = other.finish();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_eq!(result.map_err(|e| e.kind()), Err(ErrorKind::Cancelled));
    assert!(
        waited < Duration::from_secs(2),
        "the cancelled download returned {waited:?} after its cancel, once the other process let go of the work lock"
    );
}

/// `update --channel preview` (its check, then the switch) is downloading preview's
/// release when another admin switches the device back to stable. Once installed, the
/// release waits ("the device left channel preview"), as it would had the switch back come
/// after the install, and its activation, forced, leaves the device on stable.
#[test]
fn a_switch_back_during_an_update_channel_download_withholds_the_release() {
    let (w, dev, later) = activating_later();
    let mut opts = at(t0());
    opts.rollout_percent = Some(100.0);
    w.publish("preview", "1.1.0", &app_zip("1.1.0"), opts);
    let offer = match dev.updater.check_with(Some("preview"), None).unwrap() {
        Check::Available(offer) => offer,
        other => panic!("expected preview's 1.1.0 offered, found {other:?}"),
    };
    dev.updater.set_channel("preview").unwrap();
    let plan = dev.updater.plan(&offer).unwrap();
    dev.download(&offer).unwrap();
    dev.updater.set_channel("stable").unwrap();
    installed_once_due(&dev, &plan, later);
    assert_eq!(dev.state_json()["channel"], "stable");
    let reason = withheld_reason(&dev);
    assert!(reason.contains("left channel preview"), "{reason}");
    dev.updater.activate(true).unwrap();
    assert_eq!(
        dev.state_json()["channel"],
        "stable",
        "the activation moved the device"
    );
}

/// A host looks at preview (`check_with(Some("preview"))`) while another admin switches
/// the device to beta and back to stable: the offer counts the switches made when the
/// check began, so the install sees the switches since, and the activation of preview's
/// release does not move the device to preview.
#[test]
fn a_switch_away_and_back_during_a_look_at_another_channel_keeps_the_channel() {
    let (w, dev) = World::installed();
    let mut opts = at(t0());
    opts.rollout_percent = Some(100.0);
    w.publish("preview", "1.1.0", &app_zip("1.1.0"), opts);
    let cfg = dev.config.to_str().unwrap().to_string();
    let switched = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let once = std::sync::Arc::clone(&switched);
    let config =
        evergreen::Config::from_json(&std::fs::read_to_string(&dev.config).unwrap()).unwrap();
    let host = evergreen::Updater::builder(config)
        .clock(t0)
        .on_event(move |e| {
            // The manifest is fetched and verified, the check not yet saved: another
            // admin switches the device to beta and back to stable.
            if matches!(e, evergreen::Event::Checked { .. })
                && !once.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                for ch in ["beta", "stable"] {
                    let out = common::run(&["channel", "--config", &cfg, ch]);
                    assert!(out.status.success(), "{out:?}");
                }
            }
        })
        .build()
        .unwrap();
    let offer = match host.check_with(Some("preview"), None).unwrap() {
        Check::Available(offer) => offer,
        other => panic!("expected preview's 1.1.0 offered, found {other:?}"),
    };
    assert!(switched.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(dev.state_json()["channel"], "stable");
    let plan = host.plan(&offer).unwrap();
    host.download(&plan, &mut |_, _| {}, &evergreen::fetch::CancelToken::new())
        .unwrap();
    host.install(&plan).unwrap();
    host.activate(true).unwrap();
    assert_eq!(
        dev.state_json()["channel"],
        "stable",
        "the activation moved the device to preview, though it was switched away and back since the check began"
    );
}

/// Waits (60 s at most) until a download into `dev`'s state runs: a `.part` is there.
/// `who` names the process expected to be downloading.
fn until_a_download_runs(dev: &Dev, who: &str) {
    let downloads = dev.state.join("downloads");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let downloading = || {
        std::fs::read_dir(&downloads).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".part"))
        })
    };
    while !downloading() {
        assert!(
            std::time::Instant::now() < deadline,
            "{who} never started downloading"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
