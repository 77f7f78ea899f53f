//! The facade: wires trust, manifest, select, fetch, stage, slots and state together.
//!
//! Each public method is one step of the update flow of DESIGN §3; the logic of each step
//! lives in its own module, and the facade only sequences them, persists the state between
//! them and reports events. The steps' methods are kept one file per step: `check`,
//! `download` (with `plan`), `install`, `activation` (with `confirm` and `rollback`) and
//! `startup`; this file holds the types they return, the builder, and what every step
//! shares (the locks, the state's loads and saves, the selector, events).

use crate::config::{Config, SelectorConfig, SlotsConfig, TrustConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::fetch::{BlobSpec, CancelToken, FetchOptions, Fetcher, Metadata, Transport};
use crate::manifest::{
    self, Artifact, ArtifactKind, Expect, Freshness, Manifest, Release, SlotsFor, TargetRelease,
    Verified,
};
use crate::name_map::NameMap;
use crate::select::{self, Deploy, Device, Policy};
use crate::slots::cmdline::BootedFrom;
use crate::slots::dir::{DirSlots, SymlinkSelector};
use crate::slots::grub::GrubEnv;
use crate::slots::image::{ImageSlots, Streamed};
use crate::slots::uboot::UBootEnv;
use crate::slots::{BootSelector, Slot};
use crate::stage::{self, ComponentChange, ComponentOp};
use crate::state::{
    HistoryEntry, InstalledComponent, SeenManifest, SlotRecord, SlotStatus, State, Trial,
};
use crate::time::{Clock, Timestamp};
use crate::trust::{Anchor, KeySet, PublicKey, TrustedRoot};
use semver::Version;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

mod activation;
mod check;
mod download;
mod install;
mod startup;

type EventFn = Box<dyn Fn(&Event) + Send + Sync>;

/// How [`Updater::fetch_all`] fetches one blob, reporting `(done, total)` of it.
type FetchBlob<'a> = dyn FnMut(&BlobSpec, &mut dyn FnMut(u64, u64)) -> Result<()> + 'a;

/// What [`Updater::check`] found.
// An offer is returned once per check; boxing it would only add noise for callers.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Check {
    /// Nothing to do.
    #[non_exhaustive]
    UpToDate {
        /// Whether the channel checked lists any release for this device's `target`.
        /// `false`: nothing will come until the config or the channel changes (a misspelt
        /// target), unlike an "up to date" with nothing newer yet (also reported as
        /// [`Event::NoReleaseForTarget`]).
        target_released: bool,
        /// The newest release for this target newer than the installed one that the check
        /// did not offer, and why (a rollout that has not reached this device, a skip, a
        /// failure here, …): "up to date" while the channel has something newer says what
        /// holds it. `None` when nothing newer is held back, and for a pinned check.
        held_back: Option<crate::select::HeldBack>,
    },
    /// A release to install.
    Available(Offer),
}

/// A release offered to this device, with the component diff against the primary slot.
///
/// Its public fields are for reading: [`Updater::download`] and [`Updater::install`]
/// refuse an offer whose version, channel, critical flag, security version or set of
/// components its host changed (`invalid_state`), since the slot record would hold values
/// no signature covered ([`Updater::plan`] may diff the components again).
#[derive(Debug, Clone)]
pub struct Offer {
    /// Version offered.
    pub version: Version,
    /// Version installed now, if any.
    pub current: Option<Version>,
    /// Channel it comes from.
    pub channel: String,
    /// Forced update.
    pub critical: bool,
    /// Older than what is installed (a pin or a move to a safer channel).
    pub downgrade: bool,
    /// Release notes.
    pub notes: String,
    /// The release's anti-rollback counter.
    pub security_version: u64,
    /// Per component: added / removed / modified / unchanged.
    pub components: Vec<ComponentChange>,
    /// What the deploy policy says about activating it now.
    pub deploy: Deploy,
    /// The release's components for this target, to diff again at `plan` time.
    target: TargetRelease,
    /// The public fields as the check made them: a host that changed one gets an error
    /// from `download` and `install`, not a slot recorded with values never verified.
    checked: Checked,
    /// The channel the device followed when the check began: a switch made after that,
    /// even while the check or the download ran, is the user's newer choice. For a repair,
    /// the release's own channel, so activating it never moves the device.
    device_channel: String,
    /// The device's channel switches when the check began ([`State::channel_switches`]).
    channel_switches: u64,
    /// The [`Updater`] that made it: only that one downloads and installs it, since only
    /// its trust root, product and state checked the release.
    issuer: usize,
    /// Asked for whatever the rollout says: a pin's offer (`pin_version`, `check
    /// --version`) or a repair's. Staged, it is never withheld ([`SlotRecord::withheld`]):
    /// the checks that judge the channel's rollout did not choose it.
    asked_for: bool,
    /// The SHA-256 of the payload of the channel manifest it was chosen from: a release
    /// installed from an offer of another manifest than the newest its device verified is
    /// judged by that newest one at the install (a halt may lie between the two).
    manifest_sha256: String,
    /// The SHA-256s of the artifacts the components carry that were downloaded already
    /// when the diff was made (a component renamed, one back to a kept artifact, a
    /// release fetched before), on image slots those of a release staged, or of an image
    /// streamed whole into the slot: the download fetches none of them again.
    downloaded: Vec<String>,
}

/// The fields of an [`Offer`] its users read and that install records, as its check made
/// them.
#[derive(Debug, Clone, PartialEq)]
struct Checked {
    version: Version,
    channel: String,
    critical: bool,
    security_version: u64,
}

/// Serialises as [`Offer::to_json`]: one shape for the CLI, the C ABI and Rust callers.
impl Serialize for Offer {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl Offer {
    /// The offer as `evergreen check --json` prints it (DESIGN §7.2) less the two keys the
    /// CLI adds (`target_released`, `held_back`), the same for the C ABI's
    /// `evg_offer_json`: `status` (`"available"`), `version`, `current`, `channel`,
    /// `critical`, `downgrade`, `notes`, `security_version`, `download_bytes` and
    /// `components` (`[{"name","op","from","to"}]`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "status": "available",
            "current": self.current.as_ref().map(ToString::to_string),
            "version": self.version.to_string(),
            "channel": self.channel,
            "critical": self.critical,
            "downgrade": self.downgrade,
            "notes": self.notes,
            "security_version": self.security_version,
            "download_bytes": self.download_size(),
            "components": self.components,
        })
    }

    /// Bytes that must be downloaded: those of [`Offer::downloads`].
    pub fn download_size(&self) -> u64 {
        // Saturating: a verified manifest's sizes add up within u64 (its validation
        // refuses more), but a panic here would surface through the C ABI.
        self.downloads()
            .fold(0u64, |sum, (_, a)| sum.saturating_add(a.size))
    }

    /// The artifacts a download of this plan fetches, each with the first component that
    /// carries it: those the components carry (added and modified ones, and unchanged
    /// ones with no kept download), each once (components of one artifact share its
    /// download), but for those downloaded already when the diff was made.
    pub fn downloads(&self) -> impl Iterator<Item = (&ComponentChange, &Artifact)> {
        self.carried()
            .filter(|(_, a)| !self.was_downloaded(&a.sha256))
    }

    /// Each artifact the components carry, once, with the first component that carries
    /// it, downloaded already or not.
    pub(super) fn carried(&self) -> impl Iterator<Item = (&ComponentChange, &Artifact)> {
        let all = &self.components;
        all.iter().enumerate().filter_map(move |(i, c)| {
            let a = c.artifact.as_ref()?;
            let seen =
                (all[..i].iter().filter_map(|p| p.artifact.as_ref())).any(|b| b.sha256 == a.sha256);
            (!seen).then_some((c, a))
        })
    }

    /// Whether the artifact `sha256` was downloaded already when the diff was made.
    pub(super) fn was_downloaded(&self, sha256: &str) -> bool {
        self.downloaded.iter().any(|d| d == sha256)
    }
}

/// What [`Updater::startup`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// No trial running.
    Normal,
    /// The primary slot is on trial; it must be confirmed before `tries_left` more starts.
    Trial {
        /// Slot on trial.
        slot: Slot,
        /// Starts left after this one; with a bootloader selector, the bootloader's own
        /// count.
        tries_left: u32,
    },
    /// The trial slot failed and the fallback is primary again: restart into it.
    RolledBack {
        /// The slot given up.
        from: Slot,
        /// The slot now primary.
        to: Slot,
        /// Why.
        reason: String,
    },
}

/// What [`Updater::startup_for_launcher`] settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The startup step's outcome.
    pub startup: Startup,
    /// The slot to start now: the one the step counted this start for. `None` when the
    /// selector names no slot (nothing was ever activated).
    pub slot: Option<Slot>,
}

/// What [`Updater::activate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activation {
    /// The new slot is primary and on trial.
    Activated {
        /// The new primary.
        slot: Slot,
        /// Its version.
        version: Version,
    },
    /// The deploy policy holds it back.
    Deferred {
        /// When it may go ahead, if known.
        until: Option<Timestamp>,
        /// Why.
        reason: String,
    },
}

/// The device's status, as `evergreen status --json` prints it (DESIGN §7.2).
///
/// A host reads one from [`Updater::status`] and never builds one, so fields may be added
/// in a minor release without breaking it: a `Status` cannot be built outside the crate,
/// not even from another one.
///
/// ```compile_fail,E0639
/// fn copy(status: evergreen::Status) -> evergreen::Status {
///     evergreen::Status { ..status }
/// }
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Primary slot.
    pub primary: Slot,
    /// Fallback slot.
    pub fallback: Slot,
    /// The slot running now, when the selector can tell. With a selector that counts no
    /// tries (dir slots, whose `current` names the slot that starts next) as the state
    /// tells it: the fallback until the startup step counts the trial's first start, and
    /// after a rollback the slot left, until the next startup step.
    pub booted: Option<Slot>,
    /// Channel followed.
    pub channel: String,
    /// Anti-rollback floor.
    pub security_floor: u64,
    /// Trial in progress.
    pub trial: Option<TrialStatus>,
    /// Per slot.
    pub slots: BTreeMap<Slot, SlotStatusView>,
    /// Last successful check.
    pub last_check: Option<Timestamp>,
    /// When the next check is due: the poll interval ± jitter, backing off after failures.
    pub next_check: Timestamp,
    /// The versions checks no longer offer ([`Updater::skip`]), in the order skipped;
    /// `[]` when none.
    pub skipped: Vec<Version>,
    /// Recent events, oldest first: the state's bounded history (at most
    /// [`HISTORY_LEN`](crate::state::HISTORY_LEN) entries), each with its time, its name
    /// (`activated`, `confirmed`, `rolled_back`, `activation_failed`, …) and what
    /// happened, e.g. why a trial rolled back.
    pub history: Vec<HistoryEntry>,
    /// Checks of the channel followed that failed in a row since the last one that
    /// passed, 0 when it passed; the history's newest `check_failed` entry has the last
    /// one's error.
    pub check_failures: u32,
    /// When the last of those failed, on the host's clock; `None` when none did.
    pub last_failure: Option<Timestamp>,
}

/// Trial part of [`Status`].
#[derive(Debug, Clone, Serialize)]
pub struct TrialStatus {
    /// Slot on trial.
    pub slot: Slot,
    /// Starts left before the trial fails; with a bootloader selector, the bootloader's
    /// own count (see [`BootPlan::preferred_left`](crate::slots::BootPlan::preferred_left)).
    pub tries_left: u32,
}

/// One slot in [`Status`]. Fields may be added, as to [`Status`]:
///
/// ```compile_fail,E0639
/// fn copy(view: evergreen::SlotStatusView) -> evergreen::SlotStatusView {
///     evergreen::SlotStatusView { ..view }
/// }
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatusView {
    /// `empty`, `installing`, `installed`, `trial`, `good` or `bad`.
    pub status: &'static str,
    /// Release version.
    pub version: Option<Version>,
    /// Why a release staged here waits though its deploy policy would let it go ahead:
    /// the newest check of its channel no longer offers it ([`SlotRecord::withheld`]).
    /// Left out of the JSON when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withheld: Option<String>,
    /// For a release staged here and not withheld: when and why the deploy policy holds
    /// its activation back now (a maintenance window, an `at` time, `download_only`), as
    /// [`Updater::activate`] would answer. Left out of the JSON when it may go ahead now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred: Option<Deferral>,
}

/// Why the deploy policy holds a staged release back ([`SlotStatusView::deferred`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deferral {
    /// When it may go ahead (the window opens, the `at` time); `None` under
    /// `download_only`, which waits for the host's activate.
    pub until: Option<Timestamp>,
    /// Why, e.g. the window it waits for.
    pub reason: String,
}

/// Where the slots live.
enum Store {
    Dir(DirSlots),
    Image(ImageSlots),
}

impl Store {
    /// Whether the downloads a release was installed from are kept while it runs, so that
    /// the next release installs its unchanged components from them, nothing fetched
    /// (dir slots). Image slots keep none: an image is as large as its partition, and an
    /// unchanged one is downloaded and written again.
    fn keeps_downloads(&self) -> bool {
        matches!(self, Store::Dir(_))
    }

    /// For directory slots, the slot `current` points into and the version sealed in it
    /// (`.evergreen-slot.json`, written as the install finished): what a device whose
    /// state is gone still runs.
    fn sealed_current(&self) -> Option<(Slot, Version)> {
        let Store::Dir(slots) = self else {
            return None;
        };
        // Where `current` points, as the startup step reads it.
        let slot = SymlinkSelector::new(slots.clone()).booted().ok()??;
        let seal = slots.slot_dir(slot).join(crate::slots::dir::SLOT_RECORD);
        let bytes = crate::fsutil::read_regular(&seal).ok()?;
        // A seal is a slot record's version and components: read as one (a status left
        // out is `empty`), which costs the smallest library nothing new.
        let sealed: SlotRecord = crate::json::from_bytes(&bytes).ok()?;
        Some((slot, sealed.version?))
    }

    /// Why the release staged in `slot` is no longer there to activate, if it is not: a
    /// directory slot whose seal (written last by its install) is gone, the slot or its
    /// contents removed by hand. Activating it would point `current` at nothing to run.
    fn lost_staged(&self, slot: Slot) -> Option<String> {
        let Store::Dir(slots) = self else {
            return None;
        };
        let seal = slots.slot_dir(slot).join(crate::slots::dir::SLOT_RECORD);
        (!seal.is_file()).then(|| format!("{} does not exist", seal.display()))
    }

    /// Why `slot` holds nothing to start, if it does not: a directory slot that is not
    /// there. The state can call such a slot good when `current_version` names an app
    /// installed outside the slots; pointing `current` at it would leave the host nothing
    /// to run. An image slot is a partition or file that is always there.
    fn missing_install(&self, slot: Slot) -> Option<String> {
        match self {
            Store::Dir(slots) => {
                let dir = slots.slot_dir(slot);
                (!dir.is_dir()).then(|| format!("{} does not exist", dir.display()))
            }
            Store::Image(_) => None,
        }
    }
}

/// The channel a device following `following` moves to when it activates `record`: the
/// release's channel, unless the device was switched to another channel after staging.
fn channel_after_activation(record: &SlotRecord, following: &str) -> Option<String> {
    let staged_while = record.device_channel.as_deref().unwrap_or(following);
    (staged_while == following)
        .then(|| record.channel.clone())
        .flatten()
}

/// The inactive slot when it holds `offer`'s release staged: installed, not activated, and
/// the same release (see [`holds_release`]).
fn staged(st: &State, offer: &Offer) -> Option<Slot> {
    let slot = st.fallback();
    let record = st.slot(slot);
    (record.status == SlotStatus::Installed && holds_release(record, offer)).then_some(slot)
}

/// Whether `record` is of `offer`'s release: the same version from the same channel, with
/// the same components from the same artifacts. A version alone names one build only
/// within a channel: another channel may publish other bytes under it.
fn holds_release(record: &SlotRecord, offer: &Offer) -> bool {
    let wanted = &offer.target.components;
    record.version.as_ref() == Some(&offer.version)
        && record.channel.as_deref() == Some(offer.channel.as_str())
        && record.components.len() == wanted.len()
        && wanted.iter().all(|(name, c)| {
            record
                .components
                .get(name)
                .is_some_and(|i| i.sha256 == c.artifact.sha256)
        })
}

/// The artifact component `c` of `plan` is installed from: the release's own, downloaded
/// now or (unchanged, carrying none) kept since it was installed; none for a removed one.
/// Always the signed target's, whatever a host did to the plan's copy.
fn artifact_to_install<'a>(plan: &'a Offer, c: &ComponentChange) -> Option<&'a Artifact> {
    match c.op {
        ComponentOp::Removed => None,
        _ => plan.target.components.get(&c.name).map(|t| &t.artifact),
    }
}

fn random_u64() -> Result<u64> {
    let mut raw = [0u8; 8];
    crate::trust::fill_random(&mut raw)?;
    Ok(u64::from_le_bytes(raw))
}

/// Records the release of slot `bad`, given up for slot `to`, as failed: not offered again
/// (DESIGN §5.2). Not a failed repair, where `to` runs the same version: that says nothing
/// against the release.
fn note_failed(st: &mut State, bad: Slot, to: Slot) {
    let version = st.slot(bad).version.clone();
    if let Some(v) = version.filter(|v| st.slot(to).version.as_ref() != Some(v)) {
        if !st.failed.contains(&v) {
            st.failed.push(v);
        }
    }
}

/// The refusal of `what` when the GRUB or U-Boot selector cannot tell the running slot.
fn running_slot_unknown(what: &str) -> Error {
    Error::invalid_state(format!(
        "expected to know the running slot to {what}, found none: the bootloader selector cannot tell (with GRUB or U-Boot, the kernel command line must carry the `booted_from` key, rauc.slot=A or B by default)"
    ))
}

/// Why a staged `record` is withheld when `manifest` lists its version for `target` with
/// other artifacts than it was installed from: activating it would run bytes the newest
/// manifest no longer signs for that version.
fn republished(manifest: &Manifest, target: &str, record: &SlotRecord) -> Option<String> {
    let listed = manifest
        .release(record.version.as_ref()?)?
        .targets
        .get(target)?;
    // The same bytes installed the same way (a blob signed as a file where it was a zip,
    // or gzip where it was raw, leaves other slot contents); a record from before kinds
    // were kept is compared by its bytes.
    let holds = |i: &InstalledComponent, a: &Artifact| match i.kind {
        Some(_) => i.holds(a),
        None => i.sha256 == a.sha256,
    };
    let same = listed.components.len() == record.components.len()
        && listed.components.iter().all(|(name, c)| {
            record
                .components
                .get(name)
                .is_some_and(|i| holds(i, &c.artifact))
        });
    (!same).then(|| "the channel lists other artifacts under its version now".to_string())
}

impl Updater {
    /// Why `manifest` withholds the release staged in `record`, judged at `now` for
    /// `device`: only its bytes ([`republished`]) when this manifest's selection `chose`
    /// it (or it was asked for whatever the rollout says), else also whether the manifest
    /// still offers it at all (`select::withheld`). One rule for a check
    /// ([`Updater::follow_withheld`]) and an install from an older offer.
    pub(super) fn staged_verdict(
        &self,
        manifest: &Manifest,
        device: &Device<'_>,
        record: &SlotRecord,
        chose: bool,
        now: Timestamp,
    ) -> Option<String> {
        let bytes = || republished(manifest, &self.config.target, record);
        let version = record.version.as_ref()?;
        match chose {
            true => bytes(),
            false => select::withheld(manifest, device, self.config.allow_downgrade, version, now)
                .or_else(bytes),
        }
    }
}

/// What `begin_install` settled: the slot to write and what it will hold.
struct Staging {
    slot: Slot,
    components: BTreeMap<String, InstalledComponent>,
}

/// Builds an [`Updater`] from a [`Config`] plus the parts only code can supply.
///
/// ```no_run
/// use evergreen::{Config, Updater};
/// let config = Config::from_json(r#"{
///     "product": "com.acme.gateway", "server": "https://updates.acme.com/gateway/",
///     "target": "x86_64-linux", "trust": {"root": "/etc/evergreen/root.json"},
///     "state_dir": "/var/lib/evergreen", "slots": {"kind": "dir", "root": "/opt/gateway"}
/// }"#)?;
/// let updater = Updater::builder(config)
///     .on_event(|e| eprintln!("{e}"))
///     .build()?;
/// updater.startup()?;
/// # Ok::<(), evergreen::Error>(())
/// ```
pub struct UpdaterBuilder {
    config: Config,
    transport: Option<Box<dyn Transport>>,
    selector: Option<Box<dyn BootSelector>>,
    on_event: Option<EventFn>,
    clock: Option<Clock>,
}

/// The config (its passwords hidden) and which parts code supplied.
impl std::fmt::Debug for UpdaterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdaterBuilder")
            .field("config", &self.config)
            .field("transport", &self.transport.is_some())
            .field("selector", &self.selector.is_some())
            .field("on_event", &self.on_event.is_some())
            .field("clock", &self.clock.is_some())
            .finish()
    }
}

impl UpdaterBuilder {
    /// Uses a host-supplied transport instead of HTTP/file (e.g. the device's own stack).
    pub fn transport(mut self, transport: Box<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Uses a host-supplied boot selector (required for `"selector": {"kind": "custom"}`).
    pub fn selector(mut self, selector: Box<dyn BootSelector>) -> Self {
        self.selector = Some(selector);
        self
    }

    /// Receives every [`Event`], on the thread that runs the operation.
    ///
    /// Operations emit their events while they hold a lock of the state directory: the
    /// work lock (check, download, install, reinstall) or the state lock (startup,
    /// activate, confirm, rollback, …). An operation called from `f` (through any updater
    /// on the same state directory) that needs a lock the emitting one holds, or the work
    /// lock under the state lock, fails with `invalid_state` rather than waiting for
    /// itself. Reading (`status`) always works.
    pub fn on_event(mut self, f: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Box::new(f));
        self
    }

    /// Replaces the system clock (tests, demos, simulations).
    pub fn clock(mut self, f: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        self.clock = Some(Arc::new(f));
        self
    }

    /// Validates everything and builds the updater. Nothing is written yet.
    pub fn build(self) -> Result<Updater> {
        let config = self.config;
        config.validate()?;
        State::check_dir(&config.state_dir)?;
        let mut bases = vec![config.server.clone()];
        bases.extend(config.mirrors.iter().cloned());
        let options: FetchOptions = config.fetch_options();
        let clock = self.clock.unwrap_or_else(crate::time::system_clock);
        let fetcher = match self.transport {
            Some(t) => Fetcher::with_transport(bases, options, t),
            None => Fetcher::new(bases, options)?,
        };
        // A `Retry-After` date without the server's `Date` is read on this run's clock.
        let fetcher = fetcher.with_clock(Arc::clone(&clock));
        // GRUB and U-Boot as Evergreen drives them read the running slot from the kernel
        // command line; a host's selector may not know it (`EVG_SLOT_NONE`).
        let cmdline_booted =
            self.selector.is_none() && matches!(config.slots, SlotsConfig::Image { .. });
        // Dir slots with Evergreen's own `current` link, which names no slot only before
        // the first activation made it.
        let own_link = self.selector.is_none() && matches!(config.slots, SlotsConfig::Dir { .. });
        let (store, selector) = match &config.slots {
            SlotsConfig::Dir { root } => {
                let slots = DirSlots::new(root);
                let sel: Box<dyn BootSelector> = match self.selector {
                    Some(s) => s,
                    None => Box::new(SymlinkSelector::new(slots.clone())),
                };
                (Store::Dir(slots), sel)
            }
            SlotsConfig::Image {
                a,
                b,
                selector,
                booted_from,
            } => {
                let sel = match (self.selector, selector) {
                    (Some(s), _) => s,
                    (None, sel) => image_selector(sel, booted_from.as_ref(), config.trial.tries)?,
                };
                (Store::Image(image_slots(a, b)), sel)
            }
        };
        // Ids only need to differ; no other memory depends on this counter. A usize, as
        // some 32-bit targets have no 64-bit atomics.
        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        // One token: a free by the C host also ends the fetcher's retries.
        let halted = CancelToken::new();
        let mut fetcher = fetcher;
        fetcher.halted = Some(halted.clone());
        Ok(Updater {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            config,
            fetcher,
            store,
            selector: Mutex::new(selector),
            cmdline_booted,
            own_link,
            on_event: self.on_event,
            clock,
            halted,
        })
    }
}

thread_local! {
    /// The updaters (by the address of their selector lock) whose boot selector this thread
    /// is running; see `Updater::with_selector`.
    static SELECTORS_IN_USE: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Marks a selector as running on this thread until dropped (also when it panics).
struct SelectorInUse(usize);

impl SelectorInUse {
    fn enter(key: usize) -> SelectorInUse {
        // `try_with`: a C host may call in while its process exits, after the thread's
        // locals are gone; no selector of this thread can be in use then.
        let _ = SELECTORS_IN_USE.try_with(|held| held.borrow_mut().push(key));
        SelectorInUse(key)
    }
}

impl Drop for SelectorInUse {
    fn drop(&mut self) {
        let _ = SELECTORS_IN_USE.try_with(|held| held.borrow_mut().retain(|k| *k != self.0));
    }
}

/// How long the startup step waits for the state lock before it fails
/// ([`Updater::startup_lock`]). Others hold it while they read, change and save the state,
/// which takes milliseconds; each U-Boot environment write may also wait for
/// `fw_setenv`'s lock, for [`crate::slots::uboot::TOOLS_LOCK_PATIENCE`] at most, and an
/// operation may write it more than once under the lock.
pub(crate) const STARTUP_LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// [`STARTUP_LOCK_PATIENCE`]; with the `fault-injection` feature,
/// `EVERGREEN_STARTUP_LOCK_PATIENCE_MS` in the environment, so that tests need not wait a
/// minute.
fn startup_lock_patience() -> std::time::Duration {
    #[cfg(feature = "fault-injection")]
    if let Some(ms) = std::env::var("EVERGREEN_STARTUP_LOCK_PATIENCE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
    {
        return std::time::Duration::from_millis(ms);
    }
    STARTUP_LOCK_PATIENCE
}

/// What a call ends with when the host halts its updater during it ([`Updater::halt`],
/// `evg_updater_halt`), or a C host frees it ([`Updater::halted`]). The text names both,
/// as it cannot tell them apart.
pub(crate) fn freed_by_host() -> Error {
    Error::new(
        ErrorKind::Cancelled,
        "expected to continue, found the updater halted or freed by the host during the call",
    )
}

/// The updater: one per product installation. See the crate docs for the whole flow.
pub struct Updater {
    /// Unique in the process, for [`Offer::issuer`].
    id: usize,
    config: Config,
    fetcher: Fetcher,
    store: Store,
    selector: Mutex<Box<dyn BootSelector>>,
    /// The selector is Evergreen's GRUB or U-Boot one, which learns the running slot from
    /// the kernel command line (`booted_from`): not knowing it is a misconfigured line or
    /// the rescue entry, never a selector that cannot tell.
    cmdline_booted: bool,
    /// The selector is Evergreen's own `current` link of dir slots.
    own_link: bool,
    on_event: Option<EventFn>,
    clock: Clock,
    /// Cancelled when the C host frees the updater during a call (`evg_updater_free`): a
    /// download waiting for the work lock calls no progress callback to learn of it. The
    /// fetcher holds it too (`Fetcher::halted`), so a check or a download waiting to retry
    /// ends as well.
    pub(crate) halted: CancelToken,
}

/// The config and the fetcher (their passwords hidden), and whether it was halted.
impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("config", &self.config)
            .field("fetcher", &self.fetcher)
            .field("halted", &self.halted.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Updater {
    /// Starts building an updater from `config`.
    pub fn builder(config: Config) -> UpdaterBuilder {
        UpdaterBuilder {
            config,
            transport: None,
            selector: None,
            on_event: None,
            clock: None,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Stops the calls running on this updater on other threads, as `evg_updater_halt`
    /// does in C: a check, download or install waiting for the work lock (another
    /// process's download holds it) or to retry a failing server ends with
    /// [`ErrorKind::Cancelled`] within 50 ms, and a download that is receiving at its next
    /// chunk, as its [`CancelToken`] would end it. For a host that shuts down, or whose
    /// user cancels a check, which takes no token. From then on the updater refuses
    /// checks, downloads and installs (`cancelled`, nothing asked of the server, no failed
    /// check recorded); [`Updater::status`] still reads. Build another to go on.
    pub fn halt(&self) {
        self.halted.cancel();
    }

    /// Requests made and bytes received so far (for benchmarks and diagnostics).
    pub fn fetch_stats(&self) -> crate::fetch::FetchStats {
        self.fetcher.stats()
    }

    fn emit(&self, e: Event) {
        if let Some(f) = &self.on_event {
            f(&e);
        }
    }

    /// Runs `op`, reporting a failure as a `failed` event.
    fn reported<T>(&self, operation: &str, op: impl FnOnce() -> Result<T>) -> Result<T> {
        op().inspect_err(|e| self.emit_failed(operation, e))
    }

    fn emit_failed(&self, operation: &str, e: &Error) {
        self.emit(Event::Failed {
            operation: operation.to_string(),
            kind: e.kind().as_str().to_string(),
            message: e.message().to_string(),
        })
    }

    /// [`Updater::reported`] for the download or install of `version`, whose failure
    /// (other than a cancel) is also recorded in the history as `<operation>_failed`, with
    /// the version and the error line, where `status` shows it once the process that
    /// failed is gone; recorded before the event, so a host reading `status()` when told
    /// finds it. A host or a timer retrying the same failure keeps one entry, the
    /// newest. Best effort: the failure returned is the operation's, not the record's.
    fn recorded<T>(
        &self,
        operation: &str,
        version: &Version,
        op: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let result = op().inspect_err(|e| {
            if e.kind() == ErrorKind::Cancelled {
                return;
            }
            // Not for long: a failure must not wait behind a process stopped while it
            // holds the state lock (the startup step's rule, shorter).
            let lock = self.lock_within(std::time::Duration::from_secs(2), "not recorded");
            let _ = lock.and_then(|_lock| {
                let mut st = self.load_state()?;
                let event = format!("{operation}_failed");
                let detail = format!("{version}: error[{}]: {}", e.kind().as_str(), e.message());
                st.record_repeated((self.clock)(), &event, &format!("{version}: "), detail);
                self.save(&st)
            });
        });
        result.inspect_err(|e| self.emit_failed(operation, e))
    }

    fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// Serialises changes to the state across processes (CLI, launcher, host): held only
    /// while the state is read, changed and saved.
    fn lock(&self) -> Result<crate::state::StateLock> {
        State::lock(self.state_dir(), |path| self.waiting("state", path))
    }

    /// [`Updater::lock`] for the startup step, which runs on every start: a process stopped
    /// while it holds the lock (Ctrl-Z during `evergreen activate`) or hung must not hold
    /// back every start. Past [`STARTUP_LOCK_PATIENCE`] the step fails, saying so, and a
    /// launcher starts the current slot without counting the start
    /// (`examples/launcher.rs`); a C host's free ends the wait too.
    fn startup_lock(&self) -> Result<crate::state::StateLock> {
        self.lock_within(startup_lock_patience(), "this start was not counted")
    }

    /// [`Updater::lock`], given up after `patience` (or when the host halts or frees this
    /// updater) with an error that ends with `what` came of it.
    fn lock_within(
        &self,
        patience: std::time::Duration,
        what: &str,
    ) -> Result<crate::state::StateLock> {
        let start = std::time::Instant::now();
        let stop = || {
            self.not_freed()?;
            match start.elapsed() < patience {
                true => Ok(()),
                false => Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "{}: expected to take the state lock within {} ms, found another Evergreen process holding it all that time (one stopped, say with Ctrl-Z, or hung); {what}",
                        self.state_dir().display(),
                        // Not `Duration`'s `Debug`: 1.4 KB of the smallest library.
                        patience.as_millis() as u64,
                    ),
                )),
            }
        };
        State::lock_or_stop(
            self.state_dir(),
            |path| self.waiting("state", path),
            Some(&stop),
        )
    }

    /// [`freed_by_host`] once the C host has freed this updater ([`Updater::halted`]): a
    /// call waiting for a lock stops there.
    fn not_freed(&self) -> Result<()> {
        match self.halted.is_cancelled() {
            true => Err(freed_by_host()),
            false => Ok(()),
        }
    }

    /// Serialises checks, downloads and installs, which take long; taken before
    /// [`Updater::lock`], so the startup step never waits for the network. Another process
    /// may hold it for a whole download, so the wait ends when the C host frees this
    /// updater ([`Updater::halted`]) or `cancel` is cancelled ([`State::work_lock`]).
    fn work_lock(&self, cancel: Option<&CancelToken>) -> Result<crate::state::StateLock> {
        let stop = || {
            self.not_freed()?;
            cancel.map_or(Ok(()), CancelToken::check)
        };
        // Stopped already, it takes no turn: a halted updater's check must not reach the
        // server, nor be recorded as a failed one.
        stop()?;
        State::work_lock(
            self.state_dir(),
            |path| self.waiting("work", path),
            Some(&stop),
        )
    }

    /// Says that this operation waits for another one's `lock`.
    fn waiting(&self, lock: &str, path: &Path) {
        self.emit(Event::Waiting {
            lock: lock.to_string(),
            path: path.display().to_string(),
        });
    }

    /// Saves what a check learned into the state as it is now: other operations may have
    /// changed it while the check was on the network.
    fn save_check(&self, checked: &State) -> Result<State> {
        self.save_check_and(checked, |_| ())
    }

    /// [`Updater::save_check`], then `also` on the state before it is saved.
    fn save_check_and(&self, checked: &State, also: impl FnOnce(&mut State)) -> Result<State> {
        let _lock = self.lock()?;
        let mut st = self.load_state()?;
        st.adopt_check(checked);
        also(&mut st);
        self.save(&st)?;
        Ok(st)
    }

    /// Names this device, running `version`, in the requests that follow: the product,
    /// the version and the target in the `User-Agent`, which a static server's access log
    /// keeps (docs/fleet.md, "What the access log tells").
    fn identify(&self, version: Option<&semver::Version>) {
        let version = version.map(ToString::to_string);
        let config = &self.config;
        (self.fetcher).identify(&config.product, version.as_deref(), &config.target);
    }

    fn load_state(&self) -> Result<State> {
        if let Some(mut st) = State::load(self.state_dir())? {
            // Saved before the config named `current_version` (a check ran first), with
            // nothing installed since: the app installed by other means is taken as a
            // fresh state takes it, or an update could never roll back to it.
            let untouched = [Slot::A, Slot::B].map(|s| st.slot(s).status == SlotStatus::Empty);
            if let Some(v) =
                (self.config.current_version.as_ref()).filter(|_| untouched == [true; 2])
            {
                let record = st.slot_mut(st.primary);
                (record.status, record.version) = (SlotStatus::Good, Some(v.clone()));
            }
            return Ok(st);
        }
        // A state gone while the slots stayed (its directory on a data partition that was
        // wiped, or moved away by a person): the release `current` runs is primary and
        // good, as the install that sealed it left it, so an update can roll back to it.
        // Its components are not taken: the downloads they came from went with the state.
        // What the other slot holds is not known (`current_version` named the first
        // install, long gone perhaps): empty, so nothing rolls back into it.
        let sealed = self.store.sealed_current();
        let first = match sealed {
            Some(_) => None,
            None => self.config.current_version.clone(),
        };
        let mut st = State::initial(&self.config.channel, first);
        if let Some((slot, version)) = sealed {
            st.primary = slot;
            let record = st.slot_mut(slot);
            record.status = SlotStatus::Good;
            record.version = Some(version);
        }
        Ok(st)
    }

    fn save(&self, state: &State) -> Result<()> {
        state.save(self.state_dir())
    }

    fn with_selector<T>(&self, f: impl FnOnce(&mut dyn BootSelector) -> Result<T>) -> Result<T> {
        // A selector that calls back into its own updater (a C host's callback asking for
        // the status) would wait for this lock on the thread that holds it.
        let key = std::ptr::from_ref(&self.selector) as usize;
        if SELECTORS_IN_USE
            .try_with(|held| held.borrow().contains(&key))
            .unwrap_or(false)
        {
            return Err(Error::invalid_state(
                "expected no call into the updater from inside its own boot selector, found one: the selector's methods must not call the updater that runs them",
            ));
        }
        let mut guard = self
            .selector
            .lock()
            .map_err(|_| Error::new(
                ErrorKind::Bootloader,
                "expected a usable boot selector, found one left poisoned by an earlier panic; rebuild the updater",
            ))?;
        let _in_use = SelectorInUse::enter(key);
        f(guard.as_mut())
    }

    /// The current status (no network).
    pub fn status(&self) -> Result<Status> {
        let st = self.load_state()?;
        let booted = self.with_selector(|s| {
            let next = s.booted()?;
            Ok(match s.counts_tries() {
                true => next,
                false => self.running_now(&st, next, s),
            })
        })?;
        let view = |slot: Slot| SlotStatusView {
            status: st.slot(slot).status.as_str(),
            version: st.slot(slot).version.clone(),
            withheld: st.slot(slot).withheld.clone(),
            deferred: self.deferral(&st, slot),
        };
        Ok(Status {
            primary: st.primary,
            fallback: st.fallback(),
            booted,
            channel: st.channel.clone(),
            security_floor: st.security_floor,
            trial: match st.trial {
                Some(t) => Some(TrialStatus {
                    slot: t.slot,
                    tries_left: self.tries_left(t)?,
                }),
                None => None,
            },
            slots: [(Slot::A, view(Slot::A)), (Slot::B, view(Slot::B))].into(),
            last_check: st.last_check,
            next_check: self.next_check_of(&st)?,
            skipped: st.skipped.clone(),
            history: st.history.iter().cloned().collect(),
            check_failures: st.check_failures,
            last_failure: st.last_failure.filter(|_| st.check_failures > 0),
        })
    }

    /// When the host should check next (DESIGN §5.3): the poll interval ± jitter after the
    /// last check, backing off exponentially after failures (counted from the last failed
    /// check; the backoff is capped at 4× the interval, before the jitter), so a fleet
    /// never polls in lockstep. A device that never checked is due now. Never before the
    /// time a server asked for with `Retry-After` when it failed a check (at most a day
    /// after that check), until a check it answers; when that time is later than the
    /// schedule (or than now, for a device that never checked), up to `jitter` × the
    /// interval after it, since a fleet is told the same time. The jitter is the device's own
    /// ([`select::poll_draw`]): every call (and `status`) gives the same time until a check
    /// or a failure moves the schedule, so a host may ask as often as it likes whether the
    /// check is due.
    pub fn next_check(&self) -> Result<Timestamp> {
        self.next_check_of(&self.load_state()?)
    }

    /// The inactive slot when it already holds `offer`'s release, installed and not yet
    /// activated (a deploy policy deferred it): the same version from the same channel,
    /// with the same components from the same artifacts. Activate it instead of installing
    /// it again, which would rewrite the slot (a whole partition on firmware) for nothing.
    pub fn staged_slot(&self, offer: &Offer) -> Result<Option<Slot>> {
        Ok(staged(&self.load_state()?, offer))
    }

    /// What the deploy policy says now of the release staged in `slot`, for `status`:
    /// `None` when nothing is staged there, when it is withheld (said apart), or when it
    /// may go ahead now.
    fn deferral(&self, st: &State, slot: Slot) -> Option<Deferral> {
        let record = st.slot(slot);
        if record.status != SlotStatus::Installed || record.withheld.is_some() {
            return None;
        }
        if let Some(why) = self.other_target(record) {
            return Some(Deferral {
                until: None,
                reason: format!("it was {why}"),
            });
        }
        match self.deploy(st, record.critical, (self.clock)()) {
            Deploy::Now => None,
            Deploy::Wait { until, reason } => Some(Deferral {
                until: Some(until),
                reason,
            }),
            Deploy::Manual => Some(Deferral {
                until: None,
                reason: "the deploy policy is download_only: it waits for an activate".into(),
            }),
        }
    }

    /// Why the release staged in `record` is not for this device now, as "staged for
    /// target …, and …": it was staged for another target than the config's (changed
    /// since). `None` when it is for this one, or the record predates targets.
    fn other_target(&self, record: &SlotRecord) -> Option<String> {
        let target = &self.config.target;
        let staged_for = record.target.as_ref().filter(|t| *t != target)?;
        Some(format!(
            "staged for target {staged_for}, and this device's target is {target} now"
        ))
    }

    /// The deploy policy at `clock`, a reading of this updater's clock
    /// ([`select::deploy_on_clock`]).
    fn deploy(&self, st: &State, critical: bool, clock: Timestamp) -> Deploy {
        select::deploy_on_clock(&self.config.deploy, critical, clock, st.newest_issued)
    }

    fn next_check_of(&self, st: &State) -> Result<Timestamp> {
        let now = (self.clock)();
        // Counted from a time in the state, not from `now`: a host that asks every hour
        // whether the check is due must, some hour, hear yes. On the host's clock
        // (`last_check_clock`): `last_check` is pulled up to the newest `issued`, which a
        // clock that reads behind it (an RTC that lost power) never reaches.
        let checked = st.last_check_clock.or(st.last_check);
        let since = match st.check_failures {
            0 => checked,
            _ => st.last_failure.or(checked),
        };
        // Recorded on the host's clock, at most a day after the failure; a clock that has
        // gone back since (an RTC that lost power) must not turn that day into years.
        let not_before = st
            .not_before
            .map(|t| t.min(now.plus_secs(select::MAX_RETRY_AFTER_S as i64)));
        let random = match self.known_device_id() {
            Some(id) => select::poll_draw(&id, since, st.check_failures),
            // No id yet (none configured, no machine id, and no check has made one): this
            // device's first check, drawn per call.
            None => random_u64()?,
        };
        let poll = &self.config.poll;
        let last = match since {
            Some(t) if t <= now => t,
            // Later than the host's clock reads: the clock went back since (a lost RTC), or
            // a state from before `last_check_clock` kept only the pulled-up time. Counted
            // from `now`, every call would answer an interval after it, never due: the
            // check is due now, as a first one, and records the clock it ran on.
            Some(_) => {
                return Ok(select::first_check(
                    now,
                    poll.interval_s,
                    poll.jitter,
                    random,
                    not_before,
                ))
            }
            None if st.check_failures == 0 => {
                let first =
                    select::first_check(now, poll.interval_s, poll.jitter, random, not_before);
                return Ok(first);
            }
            // Failures recorded before they were timed, and no check ever succeeded.
            None => now,
        };
        Ok(select::next_check(
            last,
            poll.interval_s,
            poll.jitter,
            st.check_failures,
            random,
            not_before,
        ))
    }

    /// The raw persisted state (for diagnostics and tests).
    pub fn state(&self) -> Result<State> {
        self.load_state()
    }
}

fn version_str(v: Option<&Version>) -> String {
    v.map_or_else(|| "-".to_string(), ToString::to_string)
}

/// The image slots of the config. With the `fault-injection` feature (tests only),
/// `EVERGREEN_CORRUPT_IMAGE_AT=<offset>` makes every image read back with the byte at
/// `offset` flipped, so a test can drive a failing read-back through the CLI.
fn image_slots(a: &Path, b: &Path) -> ImageSlots {
    let slots = ImageSlots::new(a, b);
    #[cfg(feature = "fault-injection")]
    if let Some(offset) = std::env::var("EVERGREEN_CORRUPT_IMAGE_AT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return slots.corrupt_after_write(offset);
    }
    slots
}

fn image_selector(
    selector: &SelectorConfig,
    booted_from: Option<&BootedFrom>,
    tries: u32,
) -> Result<Box<dyn BootSelector>> {
    let booted = booted_from.cloned().unwrap_or_default();
    match selector {
        SelectorConfig::Grub { env } => Ok(Box::new(GrubEnv::new(env).with_booted_from(booted))),
        SelectorConfig::Uboot { config } => Ok(Box::new(
            UBootEnv::open(config)?
                .with_max_tries(tries)
                .with_booted_from(booted),
        )),
        SelectorConfig::Custom {} => Err(Error::config(
            "slots.selector.kind is \"custom\": supply the selector with UpdaterBuilder::selector (or evg_updater_new_with_hooks in C)",
        )),
    }
}
