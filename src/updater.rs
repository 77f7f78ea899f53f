//! The facade: wires trust, manifest, select, fetch, stage, slots and state together.
//!
//! Each public method is one step of the update flow of DESIGN §3; the logic of each step
//! lives in its own module, and this file only sequences them, persists the state between
//! them and reports events.

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
use crate::state::{InstalledComponent, SeenManifest, SlotRecord, SlotStatus, State, Trial};
use crate::time::{Clock, Timestamp};
use crate::trust::{Anchor, KeySet, PublicKey, TrustedRoot};
use semver::Version;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

type EventFn = Box<dyn Fn(&Event) + Send + Sync>;

/// How [`Updater::fetch_all`] fetches one blob, reporting `(done, total)` of it.
type FetchBlob<'a> = dyn FnMut(&BlobSpec, &mut dyn FnMut(u64, u64)) -> Result<()> + 'a;

/// What [`Updater::check`] found.
// An offer is returned once per check; boxing it would only add noise for callers.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Check {
    /// Nothing to do.
    UpToDate {
        /// Whether the channel checked lists any release for this device's `target`.
        /// `false`: nothing will come until the config or the channel changes (a misspelt
        /// target), unlike an "up to date" with nothing newer yet (also reported as
        /// [`Event::NoReleaseForTarget`]).
        target_released: bool,
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
    /// The [`Updater`] that made it: only that one downloads and installs it, since only
    /// its trust root, product and state checked the release.
    issuer: usize,
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
    /// The offer as `evergreen check --json` prints it (DESIGN §7.2), the same for the C
    /// ABI's `evg_offer_json`: `status` (`"available"`), `version`, `current`, `channel`,
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

    /// Bytes that must be downloaded: the components that carry an artifact (added and
    /// modified ones, and unchanged images on image slots).
    pub fn download_size(&self) -> u64 {
        // Saturating: a verified manifest's sizes add up within u64 (its validation
        // refuses more), but a panic here would surface through the C ABI.
        self.components
            .iter()
            .filter_map(|c| c.artifact.as_ref())
            .fold(0u64, |sum, a| sum.saturating_add(a.size))
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

/// One slot in [`Status`].
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatusView {
    /// `empty`, `installing`, `installed`, `trial`, `good` or `bad`.
    pub status: &'static str,
    /// Release version.
    pub version: Option<Version>,
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

/// A channel manifest that passed every rule, as fetched.
struct FetchedManifest {
    verified: Verified<Manifest>,
    /// The ETag to ask with next time.
    etag: Option<String>,
    /// The envelope to cache; `None` when the server answered 304 for the cached one.
    bytes: Option<Vec<u8>>,
}

/// The first field of `plan` its host changed since the check, if any: the release's
/// version, channel, critical flag or security version, or the components to install (all
/// of the signed target's, each once; `plan` may diff them again, which changes only how
/// each is installed).
fn changed_field(plan: &Offer) -> Option<&'static str> {
    let c = &plan.checked;
    let fields = [
        ("version", plan.version == c.version),
        ("channel", plan.channel == c.channel),
        ("critical", plan.critical == c.critical),
        (
            "security_version",
            plan.security_version == c.security_version,
        ),
    ];
    if let Some((name, _)) = fields.iter().find(|(_, same)| !same) {
        return Some(name);
    }
    // Each of the signed target's components listed once, and nothing else (no sort: a
    // release has a handful, and a sort of names costs the C library kilobytes).
    let listed = || {
        plan.components
            .iter()
            .filter(|c| c.op != ComponentOp::Removed)
    };
    let signed = &plan.target.components;
    let each_once = signed
        .keys()
        .all(|name| listed().filter(|c| c.name == *name).count() == 1);
    (!each_once || listed().count() != signed.len()).then_some("components")
}

/// A trust anchor, and where this run's walk of the root chain stopped when it stopped at
/// its step limit ([`crate::trust::MAX_ROOT_STEPS`]) rather than at the chain's end.
struct Anchored {
    anchor: Anchor,
    cut_at: Option<u64>,
}

/// `e`, a manifest's failed verification under `anchored`, with what may explain it: a
/// walk of the root chain cut short by its step limit leaves the device on a root older
/// than the manifest's signers.
fn walk_hint(e: Error, anchored: &Anchored) -> Error {
    match anchored.cut_at {
        Some(v) if matches!(e.kind(), ErrorKind::Signature | ErrorKind::Threshold) => e.hint(
            format!(
                "the walk of the root chain stopped at version {v}, after the {} versions one check takes: the manifest may be signed by the keys of a later root, which the next check goes on to",
                crate::trust::MAX_ROOT_STEPS
            ),
        ),
        _ => e,
    }
}

/// `e`, with a hint when the configured `trust.keys` verified none of the signatures of a
/// well-formed envelope: the likely slip is the root key's `.pub` where the manifest key's
/// belongs (both are made by `evergreen keygen`).
fn keys_hint(e: Error, anchor: &Anchor, envelope: &[u8]) -> Error {
    let well_formed = || crate::trust::is_envelope(envelope);
    match anchor {
        Anchor::Keys(_) if e.kind() == ErrorKind::Signature && well_formed() => e.hint(
            "`trust.keys` must hold the public key the channel manifests are signed with, the manifest key's `.pub`, not the root key's",
        ),
        _ => e,
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

/// The inactive slot when it holds `offer`'s release staged with another `critical` than
/// the offer's.
fn staged_under_other_critical(st: &State, offer: &Offer) -> Option<Slot> {
    staged(st, offer).filter(|slot| st.slot(*slot).critical != offer.critical)
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

/// The sizes of the artifacts `plan` writes (an image slot store takes one).
fn image_sizes(plan: &Offer) -> impl Iterator<Item = u64> + '_ {
    plan.components
        .iter()
        .filter_map(|c| artifact_to_install(plan, c))
        .map(|a| a.slot_bytes().0)
}

/// Removes the partial downloads (`<sha256>.part`) of blobs `plan` does not need: those of
/// a release passed over before it finished downloading would otherwise stay for good, one
/// per release, until the state's partition is full. Under the work lock, so no download
/// is writing one. Best effort: a leftover costs only space.
fn remove_other_partials(dir: &Path, plan: &Offer) {
    let needed = |sha: &str| {
        plan.components
            .iter()
            .filter_map(|c| c.artifact.as_ref())
            .any(|a| a.sha256 == sha)
    };
    for d in downloads_in(dir).into_iter().filter(|d| d.partial) {
        if !needed(&d.sha256) {
            let _ = std::fs::remove_file(d.path);
        }
    }
}

/// A file of the downloads directory named by a SHA-256: finished (`<sha256>`) or
/// partial (`<sha256>.part`).
struct Download {
    path: PathBuf,
    sha256: String,
    partial: bool,
}

/// The downloads in `dir`; any other name is never touched. None when it cannot be read.
fn downloads_in(dir: &Path) -> Vec<Download> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (sha256, partial) = match name.strip_suffix(".part") {
                Some(sha) => (sha.to_owned(), true),
                None => (name, false),
            };
            crate::trust::is_sha256_hex(&sha256).then(|| Download {
                path: e.path(),
                sha256,
                partial,
            })
        })
        .collect()
}

/// The system's machine id ([`crate::config::MACHINE_ID_PATH`]), unless it is missing,
/// empty or `uninitialized`.
fn machine_id() -> Option<String> {
    crate::config::read_machine_id(Path::new(crate::config::MACHINE_ID_PATH)).ok()
}

fn random_u64() -> Result<u64> {
    let mut raw = [0u8; 8];
    crate::trust::fill_random(&mut raw)?;
    Ok(u64::from_le_bytes(raw))
}

/// Refuses (`io`) an install into dir `slots` that the file system of `slot` has no room
/// for, before the slot is marked `installing` or emptied: it often holds the fallback,
/// the last good release, and extracting until the file system is full would lose it, and
/// leave the app's logs and the state's saves without room meanwhile. What the release
/// writes ([`stage::CheckedZip::space_needed`]; a file artifact and its directory in
/// whole blocks; the slot's directory and record) and [`crate::space::RESERVE`] must fit
/// in what a process without privileges may still allocate, counting the blocks that
/// emptying the slot gives back (its current tree, and one a crash left aside). A file
/// system that reports no size is not judged ([`crate::space::free`]).
fn check_slot_room(
    slots: &DirSlots,
    slot: Slot,
    plan: &Offer,
    archives: &NameMap<stage::CheckedZip>,
) -> Result<()> {
    let dir = slots.slot_dir(slot);
    let Some(free) = crate::space::free(&dir) else {
        return Ok(());
    };
    // The slot's directory and its record.
    let mut writes = free.block.saturating_mul(2);
    for c in &plan.components {
        let Some(a) = artifact_to_install(plan, c) else {
            continue;
        };
        let bytes = match a.kind {
            // `check_archives` checked every zip; one missing fails the install later.
            ArtifactKind::Zip => archives.get(&c.name).map_or(0, |z| z.space_needed(&free)),
            ArtifactKind::File => free.block.saturating_add(free.blocks_for(a.size)),
            // Refused by `check_installable`.
            ArtifactKind::Image => 0,
        };
        writes = writes.saturating_add(bytes);
    }
    let needed = writes.saturating_add(crate::space::RESERVE);
    if free.bytes >= needed {
        return Ok(());
    }
    // Walked only when it counts: a slot may hold many thousands of files.
    let freed = crate::space::freed_by_removing(&[&dir, &slots.trash_dir(slot)]);
    if free.bytes.saturating_add(freed) >= needed {
        return Ok(());
    }
    let within = dir.parent().unwrap_or(&dir);
    Err(Error::new(
        ErrorKind::Io,
        format!(
            "installing {} into slot {slot}: expected room for {needed} bytes in {}, found {} bytes free and {freed} more that emptying slot {slot} would give back (the release takes {writes} bytes in blocks of {}, and {} are kept free so the state can still be saved); slot {slot} was not touched: free space and install again",
            plan.version,
            within.display(),
            free.bytes,
            free.block,
            crate::space::RESERVE,
        ),
    ))
}

/// The opened download of component `c`.
fn opened<'a>(files: &'a NameMap<std::fs::File>, c: &ComponentChange) -> Result<&'a std::fs::File> {
    files.get(&c.name).ok_or_else(|| not_opened(c))
}

fn not_opened(c: &ComponentChange) -> Error {
    Error::invalid_state(format!(
        "component {}: expected a verified download to install ({}), found none opened",
        c.name,
        c.op.as_str()
    ))
}

/// What an install error of component `c` is prefixed with: a refused entry names no
/// component, and with several, which artifact to fix is the first thing its publisher
/// needs to know.
fn component_context(c: &ComponentChange, a: &Artifact) -> String {
    format!(
        "component {} ({} artifact {})",
        c.name,
        a.kind.as_str(),
        a.sha256
    )
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

/// What `begin_install` settled: the slot to write and what it will hold.
struct Staging {
    slot: Slot,
    components: BTreeMap<String, InstalledComponent>,
}

/// The components of a plan that carry an artifact to fetch and install, with it.
fn with_artifact(c: &ComponentChange) -> Option<(&ComponentChange, &Artifact)> {
    c.artifact.as_ref().map(|a| (c, a))
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
        Ok(Updater {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            config,
            fetcher,
            store,
            selector: Mutex::new(selector),
            cmdline_booted,
            on_event: self.on_event,
            clock,
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
    on_event: Option<EventFn>,
    clock: Clock,
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
        op().inspect_err(|e| {
            self.emit(Event::Failed {
                operation: operation.to_string(),
                kind: e.kind().as_str().to_string(),
                message: e.message().to_string(),
            })
        })
    }

    fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// Serialises changes to the state across processes (CLI, launcher, host): held only
    /// while the state is read, changed and saved.
    fn lock(&self) -> Result<crate::state::StateLock> {
        State::lock(self.state_dir(), |path| self.waiting("state", path))
    }

    /// Serialises checks, downloads and installs, which take long; taken before
    /// [`Updater::lock`], so the startup step never waits for the network.
    fn work_lock(&self) -> Result<crate::state::StateLock> {
        State::work_lock(self.state_dir(), |path| self.waiting("work", path))
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
        let _lock = self.lock()?;
        let mut st = self.load_state()?;
        st.adopt_check(checked);
        self.save(&st)?;
        Ok(st)
    }

    fn load_state(&self) -> Result<State> {
        Ok(State::load(self.state_dir())?.unwrap_or_else(|| {
            State::initial(&self.config.channel, self.config.current_version.clone())
        }))
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

    /// The startup step: run it early on every start (or via `evergreen boot`).
    ///
    /// Counts a start of a slot on trial and rolls back to the fallback once the tries are
    /// used up; with a bootloader selector it reads what the bootloader did instead.
    pub fn startup(&self) -> Result<Startup> {
        self.startup_step().map(|end| end.startup)
    }

    /// [`startup`](Self::startup), and the slot the selector names at its end, read under
    /// the same lock: activations take it too, so that is the slot this step settled (the
    /// C ABI's `evg_startup` reports it too).
    pub(crate) fn startup_step(&self) -> Result<Launch> {
        self.reported("startup", || {
            let _lock = self.lock()?;
            let mut st = self.load_state()?;
            // This start runs from the primary: a slot a rollback left earlier is idle now
            // (unless this start rolls back again, which marks the slot it leaves).
            let restarted = st.left_running.take().is_some();
            let counts = self.with_selector(|s| Ok(s.counts_tries()))?;
            let outcome = if counts {
                self.startup_bootloader(&mut st)?
            } else {
                self.startup_counting(&mut st)?
            };
            if restarted && st.left_running.is_none() {
                self.save(&st)?;
            }
            match &outcome {
                Startup::RolledBack { from, to, reason } => self.emit(Event::RolledBack {
                    from: *from,
                    to: *to,
                    version: st.slot(*from).version.as_ref().map(ToString::to_string),
                    reason: reason.clone(),
                }),
                Startup::Trial { slot, tries_left } => self.emit(Event::TrialBoot {
                    slot: *slot,
                    tries_left: *tries_left,
                }),
                Startup::Normal => {}
            }
            let slot = self.with_selector(|s| s.booted())?;
            Ok(Launch {
                startup: outcome,
                slot,
            })
        })
    }

    /// The startup step for a launcher: a process that runs the step and then starts a
    /// slot (`examples/launcher.rs`, `evergreen boot`). It says which slot to start, and
    /// the launcher starts that one by its own path ([`DirSlots::slot_dir`](crate::slots::dir::DirSlots::slot_dir)), never
    /// through `current`: an activation in another process may move `current` between
    /// the step and the start, and the release it activates would then run a start the
    /// step never counted (a start more than its tries, and a `confirm` refused).
    ///
    /// [`Updater::startup`] takes this start to be of the slot the selector named when the
    /// step began, as it is for a host that runs the step inside the app it started. When
    /// the step repairs an activation cut short (the state had committed the trial, the
    /// selector still named the old slot), it points the selector at the trial slot, and a
    /// launcher starts that slot next: so the step runs once more, counting this start as
    /// the trial's.
    ///
    /// ```no_run
    /// # fn main() -> evergreen::Result<()> {
    /// use evergreen::slots::dir::DirSlots;
    /// let config = evergreen::Config::from_file("/etc/evergreen/config.json")?;
    /// let updater = evergreen::Updater::builder(config).build()?;
    /// let launch = updater.startup_for_launcher()?;
    /// if let evergreen::Startup::Trial { tries_left, .. } = launch.startup {
    ///     eprintln!("on trial, {tries_left} start(s) left");
    /// }
    /// if let Some(slot) = launch.slot {
    ///     let app = DirSlots::new("/opt/gateway").slot_dir(slot).join("app/bin/gateway");
    ///     // … then start `app`.
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn startup_for_launcher(&self) -> Result<Launch> {
        let launch = self.startup_step()?;
        // A normal start while the selector names the slot on trial: the step moved the
        // selector there (a repair) after counting this start as the old slot's. (A
        // bootloader counts its tries itself, and started what it named.)
        let repaired = launch.startup == Startup::Normal
            && launch.slot.is_some()
            && launch.slot == self.load_state()?.trial.map(|t| t.slot)
            && !self.with_selector(|s| Ok(s.counts_tries()))?;
        match repaired {
            true => self.startup_step(),
            false => Ok(launch),
        }
    }

    fn startup_counting(&self, st: &mut State) -> Result<Startup> {
        let booted = self.with_selector(|s| s.booted())?;
        if self.follow_booted(st, booted) {
            self.save(st)?;
        } else if let Some(running) =
            booted.filter(|b| *b != st.primary && st.slot(st.primary).status != SlotStatus::Empty)
        {
            // Repair a crash (or a failed switch) between committing the state and switching
            // the selector. This start is of the slot the selector still pointed at: a host
            // that runs the step in its own process runs that slot now, whatever the repair
            // points at for the next start.
            let (p, f) = (st.primary, st.fallback());
            self.with_selector(|s| s.fall_back(p, f))?;
            return self.repaired_switch(st, running);
        }
        let Some(trial) = st.trial else {
            return Ok(Startup::Normal);
        };
        if trial.tries_left > 0 {
            let tries_left = trial.tries_left - 1;
            st.trial = Some(Trial {
                tries_left,
                ..trial
            });
            self.save(st)?;
            return Ok(Startup::Trial {
                slot: trial.slot,
                tries_left,
            });
        }
        let tries = self.config.trial.tries;
        let reason = format!(
            "slot {} ({}) was started {tries} time(s) without being confirmed",
            trial.slot,
            version_str(st.slot(trial.slot).version.as_ref())
        );
        if let Some(why) = self.unusable_fallback(st) {
            // Nothing better to go back to: keep running, but say so, once: a device that
            // restarts often would otherwise push the rest of its history out.
            if st
                .history
                .back()
                .is_none_or(|h| h.event != "trial_exhausted")
            {
                st.record(
                    (self.clock)(),
                    "trial_exhausted",
                    format!("{reason}; no fallback to go back to: {why}"),
                );
                self.save(st)?;
            }
            return Ok(Startup::Trial {
                slot: trial.slot,
                tries_left: 0,
            });
        }
        self.fall_back(st, &reason)
    }

    /// The outcome of a start of `running`, a slot the state had already left when the
    /// selector was switched back to the primary. An activation cut short: the slot on
    /// trial has not started, so nothing is counted, and this start of the good slot is
    /// `Normal` (the trial starts at the next start, as with a bootloader that was not
    /// told). A rollback cut short: the host must restart into the primary, and until it
    /// does `running` is a slot in use that no install may write.
    fn repaired_switch(&self, st: &mut State, running: Slot) -> Result<Startup> {
        if st.trial.is_some_and(|t| t.slot == st.primary) {
            return Ok(Startup::Normal);
        }
        st.left_running = Some(running);
        self.save(st)?;
        Ok(Startup::RolledBack {
            from: running,
            to: st.primary,
            reason: format!(
                "slot {running} was started though a rollback had left it for slot {}; restart into slot {}",
                st.primary, st.primary
            ),
        })
    }

    fn startup_bootloader(&self, st: &mut State) -> Result<Startup> {
        let booted = self.with_selector(|s| s.booted())?;
        let Some(trial) = st.trial else {
            if self.follow_booted(st, booted) || self.adopt_fallback(st, booted) {
                self.save(st)?;
            }
            self.settle_selector(st, booted)?;
            return Ok(match booted.filter(|b| *b != st.primary) {
                // Still running a slot the state gave up on (a rollback the bootloader did
                // not learn of before the restart): the host must restart into the primary.
                Some(running) => Startup::RolledBack {
                    from: running,
                    to: st.primary,
                    reason: format!(
                        "the bootloader started slot {running}, which a rollback had left for slot {}; restart into slot {}",
                        st.primary, st.primary
                    ),
                },
                None => Startup::Normal,
            });
        };
        let Some(running) = booted.filter(|b| *b != trial.slot) else {
            return Ok(Startup::Trial {
                slot: trial.slot,
                tries_left: self.tries_left(trial)?,
            });
        };
        let plan = self.with_selector(|s| s.boot_plan())?;
        let gave_up = plan.is_none_or(|p| {
            p.preferred == trial.slot && p.next != Some(trial.slot) && p.preferred_spent
        });
        if gave_up {
            let reason = format!(
                "the bootloader started slot {running} after slot {} ({}) failed its trial",
                trial.slot,
                version_str(st.slot(trial.slot).version.as_ref())
            );
            return self.fall_back(st, &reason);
        }
        // The trial has not started: the bootloader never learnt of the activation (the
        // power went between committing the state and writing its environment, or during
        // that write), or it will start the slot at the next boot (this is another start
        // before the reboot). Either way the running slot must stay a good fallback.
        self.confirm_running(running, st)?;
        if plan.is_some_and(|p| p.next != Some(trial.slot)) {
            self.with_selector(|s| s.activate(trial.slot, trial.tries_left))?;
            st.record(
                (self.clock)(),
                "activation_resumed",
                format!(
                    "slot {} was activated but the bootloader was not told before the restart; it is now, and the trial starts at the next boot",
                    trial.slot
                ),
            );
            self.save(st)?;
        }
        Ok(Startup::Normal)
    }

    /// Starts left for `trial`: a bootloader counts them down itself, so its environment
    /// has the number once it knows of the trial (it prefers the trial slot); before
    /// that, and with the other selectors, the state has it.
    fn tries_left(&self, trial: Trial) -> Result<u32> {
        let plan = self.with_selector(|s| {
            if s.counts_tries() {
                s.boot_plan()
            } else {
                Ok(None)
            }
        })?;
        Ok(match plan {
            Some(p) if p.preferred == trial.slot => p.preferred_left,
            _ => trial.tries_left,
        })
    }

    /// With no trial, the environment must keep booting the primary.
    fn settle_selector(&self, st: &mut State, booted: Option<Slot>) -> Result<()> {
        let primary = st.primary;
        let preferred = self.with_selector(|s| s.boot_plan())?.map(|p| p.preferred);
        match booted {
            Some(b) if b == primary && preferred.is_none_or(|p| p == primary) => {
                self.confirm_running(b, st)?;
                self.keep_out_unactivated(st);
                Ok(())
            }
            // The power went between committing a rollback and writing the environment:
            // the bootloader started the slot the state gave up on, or the primary anyway
            // because it had spent the other's attempt. Finish the rollback. (Or the
            // bootloader gave up on a good slot, which stays the fallback.)
            Some(_) => {
                self.with_selector(|s| s.fall_back(primary, primary.other()))?;
                self.keep_out_unactivated(st);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Takes the other slot out of the boot order again when it holds nothing to boot:
    /// bytes being written, a release installed but never activated, or one rolled back.
    /// U-Boot's script gives every slot its tries back when none has any left, so a crash
    /// loop of the running slot put it back; the next would start it, with no trial and no
    /// deploy policy. The built-in selectors write nothing when it is still out.
    ///
    /// With a selector that counts tries, it runs at every start of a good primary, and
    /// right after every rollback (by the startup step, by hand, or finished after a power
    /// cut): not at the next start, since a crash loop before it would have U-Boot's script
    /// start the failed release.
    ///
    /// A selector that fails here does not fail the step: the running slot is confirmed
    /// already (or the rollback committed), and a host selector backed by a service not up
    /// yet this early in the boot would otherwise fail every start (and keep
    /// `left_running`, refusing every install). The failure goes to the history, once until
    /// something else happens; that record is information only, so a save that fails is
    /// left to the next start, which tries the keep-out again.
    fn keep_out_unactivated(&self, st: &mut State) {
        const EVENT: &str = "keep_out_failed";
        // Only a bootloader that counts tries resets them, and puts a slot back.
        if !self
            .with_selector(|s| Ok(s.counts_tries()))
            .unwrap_or(false)
        {
            return;
        }
        let other = st.primary.other();
        let status = st.slot(other).status;
        if !matches!(
            status,
            SlotStatus::Installing | SlotStatus::Installed | SlotStatus::Bad
        ) {
            return;
        }
        let Err(e) = self.with_selector(|s| s.disable(other)) else {
            return;
        };
        if st.history.back().is_some_and(|h| h.event == EVENT) {
            return;
        }
        st.record(
            (self.clock)(),
            EVENT,
            format!(
                "slot {other} ({}) could not be taken out of the boot order again, which the bootloader may have reset: {e}",
                status.as_str()
            ),
        );
        let _ = self.save(st);
    }

    /// `change` to the selector about `slot`, the other slot being the fallback. A boot
    /// script that counts tries spends one of the running slot's on every start, and the
    /// startup step gives it back; starts with no startup step between them (an update run
    /// first, a crash loop) leave it spent. Before `slot` leaves the boot order or goes
    /// first, a good fallback gets its tries back: otherwise GRUB refuses to leave no
    /// bootable slot, and U-Boot, once a trial fails, finds none, resets both counters and
    /// runs the failed release all over again.
    fn with_fallback_kept(
        &self,
        st: &State,
        slot: Slot,
        change: impl FnOnce(&mut dyn BootSelector) -> Result<()>,
    ) -> Result<()> {
        let fallback = slot.other();
        let good = matches!(
            st.slot(fallback).status,
            SlotStatus::Good | SlotStatus::Empty
        );
        self.with_selector(|s| {
            if good && s.counts_tries() {
                s.confirm(fallback)?;
            }
            change(s)
        })
    }

    /// RAUC's boot scripts spend one attempt of the slot they start on every boot; the
    /// running slot must get it back each time, or a later boot ends in the rescue path.
    /// That holds for a factory image Evergreen never installed (`empty`) as for a good one.
    fn confirm_running(&self, running: Slot, st: &State) -> Result<()> {
        if matches!(
            st.slot(running).status,
            SlotStatus::Good | SlotStatus::Empty
        ) {
            self.with_selector(|s| s.confirm(running))?;
        }
        Ok(())
    }

    /// With no trial, the bootloader started the fallback on its own: the primary's
    /// attempt was spent before the startup step ran (a power cut or a crash mid-boot),
    /// and RAUC's scripts will not start it again until it is marked good from inside.
    /// What runs is good, so it becomes primary, as RAUC's mark-good of the booted slot
    /// would have it; the other slot keeps its record. Returns true when the state changed.
    fn adopt_fallback(&self, st: &mut State, booted: Option<Slot>) -> bool {
        let Some(running) = booted.filter(|b| *b != st.primary) else {
            return false;
        };
        if !matches!(
            st.slot(running).status,
            SlotStatus::Good | SlotStatus::Empty
        ) {
            return false;
        }
        let left = st.primary;
        st.primary = running;
        // What runs is what the bootloader chose; below the floor, the record says so,
        // for an update to follow soon.
        let sv = st.slot(running).security_version;
        let below = match sv < st.security_floor {
            true => format!(
                " (security version {sv}, below this device's floor {})",
                st.security_floor
            ),
            false => String::new(),
        };
        st.record(
            (self.clock)(),
            "bootloader_fell_back",
            format!(
                "the bootloader started slot {running} instead of slot {left} ({}), whose boot attempt was spent; slot {running} is primary now{below}",
                version_str(st.slot(left).version.as_ref())
            ),
        );
        true
    }

    /// Why the fallback slot cannot be gone back to, if it cannot: it is not good, or it
    /// holds nothing to start (see [`Store::missing_install`]).
    fn unusable_fallback(&self, st: &State) -> Option<String> {
        self.no_going_back_to(st, st.fallback())
    }

    /// Why `fallback` cannot be gone back to, if it cannot (see
    /// [`Updater::unusable_fallback`]).
    fn no_going_back_to(&self, st: &State, fallback: Slot) -> Option<String> {
        let slot = st.slot(fallback);
        if slot.status != SlotStatus::Good {
            return Some(format!(
                "fallback slot {fallback} is {}, expected good",
                slot.status.as_str()
            ));
        }
        self.store.missing_install(fallback).map(|missing| {
            format!(
                "fallback slot {fallback} ({}) holds no install: {missing} (a version given as `current_version` must be installed in slot {fallback})",
                version_str(slot.version.as_ref())
            )
        })
    }

    /// Marks the primary bad, makes the fallback primary, commits, then tells the selector.
    fn fall_back(&self, st: &mut State, reason: &str) -> Result<Startup> {
        let (from, to) = (st.primary, st.fallback());
        let bad = st.slot_mut(from);
        bad.status = SlotStatus::Bad;
        // A failed repair (the fallback runs the same version) says nothing against the
        // release: it stays offered.
        note_failed(st, from, to);
        st.primary = to;
        st.trial = None;
        st.record((self.clock)(), "rolled_back", reason);
        // The downloads the slot left was installed from stay: a plan made before the
        // rollback may take its unchanged components from them. (An image is never
        // downloaded into the state directory: it streams into its slot.)
        self.save(st)?;
        self.with_selector(|s| s.fall_back(to, from))?;
        self.keep_out_unactivated(st);
        Ok(Startup::RolledBack {
            from,
            to,
            reason: reason.to_string(),
        })
    }

    /// Checks the device's channel for an update.
    pub fn check(&self) -> Result<Check> {
        self.check_with(None, None)
    }

    /// Checks `channel` (default: the device's) for an update, or for exactly `version`
    /// (a pin: newer or older, never below the security floor). A check of another
    /// channel than the device's leaves its poll schedule as it is: `last_check` and the
    /// failure backoff of `next_check` follow the device's own channel.
    pub fn check_with(&self, channel: Option<&str>, version: Option<&Version>) -> Result<Check> {
        self.reported("check", || {
            if let Some(name) = channel {
                manifest::check_channel_name(name)?;
            }
            let _work = self.work_lock()?;
            let mut st = self.load_state()?;
            let channel = channel.unwrap_or(&st.channel).to_string();
            // The poll schedule (backoff, next check) follows the device's own channel: a
            // look at another one moves neither way.
            let own_channel = channel == st.channel;
            // The host's clock, read once for the run (DESIGN §5.1 rule 4): the expiry the
            // manifest is judged by and the rollout it is selected by are the same moment.
            let clock = (self.clock)();
            let manifest = match self.fetch_manifest(&mut st, &channel, clock) {
                Ok(m) => m,
                Err(e) => {
                    // Read again: a `Retry-After` counts from the answer, which may have
                    // taken the whole timeout to come, not from the start of the check.
                    let failed_at = (self.clock)();
                    if own_channel {
                        st.check_failures = st.check_failures.saturating_add(1);
                        st.last_failure = Some(failed_at);
                    }
                    // Whichever channel was asked for: a `Retry-After` is about the
                    // server, which the device's own next check asks too. The newest one
                    // counts; a failure without one (a network error, a check made early
                    // by hand) leaves the time asked for before, while it lasts.
                    let asked = e
                        .retry_after()
                        .and_then(|wait| select::retry_not_before(failed_at, wait));
                    st.not_before = asked.or(st.not_before.filter(|t| *t > failed_at));
                    self.save_check(&st)?;
                    return Err(e);
                }
            };
            // The manifest just verified proves its `issued` has passed: a rollout halted
            // then must not reach a device whose clock lags it.
            let now = manifest::effective_now(clock, st.newest_issued);
            if own_channel {
                st.check_failures = 0;
                st.last_failure = None;
                st.last_check = Some(now);
                st.last_check_clock = Some(clock);
            }
            // The server answered: what it asked for before is over.
            st.not_before = None;
            // The channel followed as the check began: a switch made while it was on the
            // network is newer than this offer (see `channel_after_activation`).
            let followed = st.channel.clone();
            let st = self.save_check(&st)?;
            self.decide(&st, &manifest, version, clock, followed)
        })
    }

    /// Turns a verified manifest into an offer (pure selection + the component diff), at
    /// `clock`, the run's reading of the host's clock.
    fn decide(
        &self,
        st: &State,
        manifest: &Verified<Manifest>,
        pin: Option<&Version>,
        clock: Timestamp,
        followed: String,
    ) -> Result<Check> {
        let now = manifest::effective_now(clock, st.newest_issued);
        let device_id = self.device_id()?;
        let installed = st
            .installed_version()
            .or(self.config.current_version.as_ref());
        let device = Device {
            product: &self.config.product,
            target: &self.config.target,
            device_id: &device_id,
            installed,
            security_floor: st.security_floor,
            skipped: &st.skipped,
            failed: &st.failed,
        };
        let policy = Policy {
            pin: pin.or(self.config.pin_version.as_ref()),
            pin_is_standing: pin.is_none(),
            allow_downgrade: self.config.allow_downgrade,
        };
        let choice = match select::select(manifest, &device, &policy, now)? {
            select::Decision::UpToDate => {
                // Said apart from "nothing newer": nothing will ever come for a target no
                // release lists (a misspelt one, say).
                let target = &self.config.target;
                let target_released = manifest
                    .releases
                    .iter()
                    .any(|r| r.targets.contains_key(target));
                if !target_released {
                    let mut targets: Vec<String> = Vec::new();
                    for t in manifest.releases.iter().flat_map(|r| r.targets.keys()) {
                        if !targets.contains(t) {
                            targets.push(t.clone());
                        }
                    }
                    self.emit(Event::NoReleaseForTarget {
                        channel: manifest.channel.clone(),
                        target: target.clone(),
                        targets,
                    });
                }
                return Ok(Check::UpToDate { target_released });
            }
            select::Decision::Update(c) => c,
        };
        let release = manifest.release(&choice.version).ok_or_else(|| {
            Error::new(
                ErrorKind::NoSuchVersion,
                format!("version {} vanished from the manifest", choice.version),
            )
        })?;
        let offer = self.offer(st, manifest, release, &choice, followed, clock)?;
        // Before the event: a host that activates from its callback must find the record
        // the offer describes. Not after a one-off pinned check: it looks at its release
        // alone, not at critical releases past it, and would unforce a staged update.
        if pin.is_none() {
            self.follow_staged(st, &offer, clock)?;
        }
        self.emit(Event::Available {
            version: offer.version.to_string(),
            critical: offer.critical,
        });
        Ok(Check::Available(offer))
    }

    /// Makes the record of a release staged and not yet activated follow the newest check
    /// that offers it again (DESIGN §5.3): a critical release published since the install
    /// can force it (as its stepping stone, or passed over for it), and one withdrawn
    /// since can leave it unforced. `activate` decides from the record, so with a stale
    /// flag an `at` policy would hold back an update the offer calls forced.
    /// `clock` is the check's reading of the host's clock, for the journal.
    fn follow_staged(&self, checked: &State, offer: &Offer, clock: Timestamp) -> Result<()> {
        // Most checks change nothing: they take no lock for it.
        if staged_under_other_critical(checked, offer).is_none() {
            return Ok(());
        }
        let _lock = self.lock()?;
        let mut st = self.load_state()?;
        // Again under the lock: an activation may have taken the slot since the check
        // began.
        let Some(slot) = staged_under_other_critical(&st, offer) else {
            return Ok(());
        };
        st.slot_mut(slot).critical = offer.critical;
        let now_forced = match offer.critical {
            true => "forced now: the newest check found it critical, or on the way to a critical release",
            false => "no longer forced: the newest check found no critical release it leads to",
        };
        st.record(
            clock,
            "staged_critical",
            format!("{} in slot {slot} is {now_forced}", offer.version),
        );
        self.save(&st)
    }

    /// The offer of `release` as `choice` selected it. Its `critical` is the selection's,
    /// not only the release's own flag: an update that passes over, or is the stepping stone
    /// towards, a critical release is forced too (DESIGN §5.3), in the offer, the deploy
    /// decision and the slot record `activate` reads (at the install, and again at each
    /// check that offers the staged release: see [`Updater::follow_staged`]). Its deploy
    /// decision is at `clock`, the run's reading of the host's clock.
    fn offer(
        &self,
        st: &State,
        manifest: &Manifest,
        release: &Release,
        choice: &select::Choice,
        device_channel: String,
        clock: Timestamp,
    ) -> Result<Offer> {
        let target = release.targets.get(&self.config.target).ok_or_else(|| {
            Error::new(
                ErrorKind::IncompatibleTarget,
                format!(
                    "release {} has no entry for target {:?} (it has {:?})",
                    release.version,
                    self.config.target,
                    release.targets.keys().collect::<Vec<_>>()
                ),
            )
        })?;
        let checked = Checked {
            version: release.version.clone(),
            channel: manifest.channel.clone(),
            critical: choice.critical,
            security_version: release.security_version,
        };
        Ok(Offer {
            version: release.version.clone(),
            current: st
                .installed_version()
                .or(self.config.current_version.as_ref())
                .cloned(),
            channel: manifest.channel.clone(),
            critical: choice.critical,
            downgrade: choice.downgrade,
            notes: release.notes.clone(),
            security_version: release.security_version,
            components: self.diff_against_primary(st, target),
            deploy: self.deploy(st, choice.critical, clock),
            target: target.clone(),
            checked,
            device_channel,
            issuer: self.id,
        })
    }

    /// The device id for rollout buckets: configured, else the one kept in the state
    /// directory, else `/etc/machine-id` (kept from then on), else one generated once and
    /// kept. Kept because a rollout's promise is that a device, once in, stays in as the
    /// percentage grows: a machine id made afresh at every boot (systemd's, on a read-only
    /// root file system without one) would draw a new bucket at every check, and a device
    /// that rebooted daily would be in a 5 % rollout within weeks.
    fn device_id(&self) -> Result<String> {
        if let Some(id) = self.kept_device_id() {
            return Ok(id);
        }
        let id = match machine_id() {
            Some(id) => id,
            None => {
                let mut raw = [0u8; 16];
                crate::trust::fill_random(&mut raw)?;
                crate::trust::hex(&raw)
            }
        };
        crate::fsutil::write_atomic(&self.device_id_path(), id.as_bytes())?;
        Ok(id)
    }

    /// The device id when there is one, without keeping one: as [`Updater::device_id`]
    /// finds it.
    fn known_device_id(&self) -> Option<String> {
        self.kept_device_id().or_else(machine_id)
    }

    /// The configured device id, else the one kept in the state directory.
    fn kept_device_id(&self) -> Option<String> {
        match &self.config.device_id {
            Some(id) => Some(id.clone()),
            // An empty or `uninitialized` file is as if there were none.
            None => crate::config::read_machine_id(&self.device_id_path()).ok(),
        }
    }

    fn device_id_path(&self) -> PathBuf {
        self.state_dir().join("device-id")
    }

    /// Fetches and verifies `channel`'s manifest: conditional GET; on 304 the cached
    /// envelope is verified again (expiry still applies). Only when the manifest changed is
    /// the root chain walked first, so an unchanged check is a single request.
    /// `clock` is the host's clock as the run read it; each rule pulls it up to the newest
    /// `issued` seen under the manifest keys it checks with.
    fn fetch_manifest(
        &self,
        st: &mut State,
        channel: &str,
        clock: Timestamp,
    ) -> Result<Verified<Manifest>> {
        let cache = self.manifest_cache(channel);
        let seen_etag = st
            .manifests
            .get(channel)
            .filter(|_| cache.exists())
            .and_then(|s| s.etag.clone());
        let fetched = match self.fetch_verified(st, channel, clock, seen_etag.as_deref())? {
            Some(fetched) => fetched,
            None => match self.verify_cached(st, channel, clock, &cache) {
                Ok(verified) => FetchedManifest {
                    verified,
                    etag: seen_etag,
                    bytes: None,
                },
                // The server says the cached copy is current, but it no longer verifies
                // (a bad block, an edit by hand, or it expired): asked for whole, once.
                // Else a damaged copy would fail every check until the channel changed.
                Err(_) => self
                    .fetch_verified(st, channel, clock, None)?
                    .ok_or_else(|| {
                        Error::invalid_state("a request without If-None-Match was answered 304")
                    })?,
            },
        };
        let FetchedManifest {
            verified,
            etag: new_etag,
            bytes: fresh_bytes,
        } = fetched;
        // Persist only after every rule passed.
        let not_modified = fresh_bytes.is_none();
        if let Some(bytes) = &fresh_bytes {
            crate::fsutil::create_dir_all(cache.parent().unwrap_or(self.state_dir()))?;
            crate::fsutil::write_atomic(&cache, bytes)?;
        }
        st.manifests.insert(
            channel.to_string(),
            SeenManifest {
                sequence: verified.sequence,
                payload_sha256: verified.payload_sha256().to_string(),
                etag: new_etag,
                issued: Some(verified.issued),
                checked: Some(clock),
            },
        );
        st.newest_issued = Some(
            st.newest_issued
                .map_or(verified.issued, |t| t.max(verified.issued)),
        );
        self.emit(Event::Checked {
            channel: channel.to_string(),
            sequence: verified.sequence,
            not_modified,
        });
        Ok(verified)
    }

    /// GETs `channel`'s manifest (conditionally on `etag`) and verifies each copy a base
    /// serves, taking the first that passes: a mirror that serves an error page as 200, a
    /// copy that lags behind what the device has seen, or an expired one is passed over
    /// for the next base, as in the root walk. `None` for 304 (the cached copy is current).
    fn fetch_verified(
        &self,
        st: &mut State,
        channel: &str,
        clock: Timestamp,
        etag: Option<&str>,
    ) -> Result<Option<FetchedManifest>> {
        let path = format!("channels/{channel}.json");
        // The chain is walked at the first copy served, once: it is the same for every base.
        let mut anchor: Option<Result<Anchored>> = None;
        let mut verified = None;
        let fetched = self.fetcher.metadata_checked(
            &path,
            etag,
            self.config.limits.max_metadata_bytes,
            &mut |bytes| {
                let anchor = anchor.get_or_insert_with(|| self.anchor(st, clock, true));
                // Not this base's fault: ends the fetch, and is the answer below.
                let Ok(anchor) = anchor else { return Ok(()) };
                verified = Some(self.verify_manifest(st, channel, clock, anchor, bytes)?);
                Ok(())
            },
        )?;
        if let Some(Err(e)) = anchor {
            return Err(e);
        }
        Ok(match fetched {
            Metadata::NotModified => None,
            Metadata::Fetched { bytes, etag } => {
                let verified = verified.ok_or_else(|| {
                    Error::invalid_state("a manifest was taken without being verified")
                })?;
                Some(FetchedManifest {
                    verified,
                    etag,
                    bytes: Some(bytes),
                })
            }
        })
    }

    /// Verifies the cached copy of `channel`'s manifest again, which the server answered
    /// 304 for: the trusted root as it is, no walk (an unchanged check is one request).
    fn verify_cached(
        &self,
        st: &mut State,
        channel: &str,
        clock: Timestamp,
        cache: &Path,
    ) -> Result<Verified<Manifest>> {
        let bytes = std::fs::read(cache).map_err(|e| Error::io("read", cache, e))?;
        let anchored = self.anchor(st, clock, false)?;
        self.verify_manifest(st, channel, clock, &anchored, &bytes)
    }

    /// Verifies `bytes` as `channel`'s manifest under `anchor`, against what `st` has seen.
    fn verify_manifest(
        &self,
        st: &State,
        channel: &str,
        clock: Timestamp,
        anchored: &Anchored,
        bytes: &[u8],
    ) -> Result<Verified<Manifest>> {
        let anchor = &anchored.anchor;
        // Read after the anchor: new manifest keys start the freshness state afresh.
        let fresh = Freshness {
            last_seen: st
                .manifests
                .get(channel)
                .map(|s| (s.sequence, s.payload_sha256.clone())),
            newest_issued: st.newest_issued,
        };
        let expect = Expect {
            product: &self.config.product,
            channel,
            now: clock,
            max_bytes: self.config.limits.max_metadata_bytes,
        };
        manifest::verify(bytes, anchor.manifest_keys(), &expect, &fresh)
            .map_err(|e| walk_hint(keys_hint(e, anchor, bytes), anchored))
    }

    /// The trust anchor: the configured keys, or the newest root (walking the chain on the
    /// server when `walk` is set or the trusted root has expired). Manifest keys other than
    /// those `st`'s freshness state was built under start it afresh (DESIGN §5.1 rule 7);
    /// `clock` is the host's, pulled up to the newest `issued` seen only after that.
    fn anchor(&self, st: &mut State, clock: Timestamp, walk: bool) -> Result<Anchored> {
        let max = self.config.limits.max_metadata_bytes;
        let pinned_path = match &self.config.trust {
            TrustConfig::Keys { keys, threshold } => {
                let keys = keys
                    .iter()
                    .map(|k| PublicKey::from_base64(k))
                    .collect::<Result<Vec<_>>>()?;
                let keys = KeySet::new(keys, *threshold)?;
                st.trust_manifest_keys(&keys, &|c, seen| self.still_signed(c, seen, &keys));
                return Ok(Anchored {
                    anchor: Anchor::Keys(keys),
                    cut_at: None,
                });
            }
            TrustConfig::Root(root) => root,
        };
        let saved = self.state_dir().join("root.json");
        // A saved root for another product is a device moved by hand (`config`); a damaged
        // one (a bad block, a cut write outside this library) is as if none were saved:
        // the configured root is the start again, and the walk must reach the version
        // recorded in the state (`root_version`), so nothing older is trusted.
        let kept = match self.load_root(&saved, "the saved root") {
            Ok(kept) => Some(kept),
            Err(e) if !saved.exists() || e.kind() != ErrorKind::Config => None,
            Err(e) => return Err(e),
        };
        let pinned = match (self.load_root(pinned_path, "`trust.root`"), &kept) {
            (Ok(pinned), _) => pinned,
            // The saved chain stands on its own: a configured root that cannot be used (a
            // firmware that ships none, a damaged or truncated file) must not keep the
            // device from the release that brings it back. One for another product is a
            // misconfiguration, said as such.
            (Err(e), Some(kept)) if e.kind() != ErrorKind::Config => kept.clone(),
            (Err(e), _) => return Err(e),
        };
        // A state from before the record takes the roots it was configured with (the saved
        // one is recorded below).
        if st.root_keys.is_empty() {
            st.trust_root_keys(pinned.root_keys());
        }
        // The saved root wins over a configured one no newer, of the same chain (decision
        // 29): a device given an older firmware keeps the roots it walked to.
        let root = match kept {
            Some(kept) if kept.root().version >= pinned.root().version => {
                if !st.trusts_root_keys(pinned.root_keys()) {
                    if kept.envelope() != pinned.envelope() {
                        return Err(Error::config(format!(
                            "{}: expected a root of the chain of {} (version {}), found version {} under root keys {} this device never trusted; copy it over that file to move the device to its chain",
                            pinned_path.display(),
                            saved.display(),
                            kept.root().version,
                            pinned.root().version,
                            pinned.root_keys().fingerprint()
                        )));
                    }
                    // The configured root copied over the saved one: its chain starts afresh.
                    st.root_keys.clear();
                    st.root_version = None;
                    st.forget_freshness();
                }
                kept
            }
            // None saved yet, or the configured root is newer (a reflashed device).
            _ => {
                self.keep_root(st, &pinned, &saved)?;
                pinned
            }
        };
        st.trust_root_keys(root.root_keys());
        // On a 304 the chain is walked only once the trusted root has expired: a root
        // renewed on the server while the channel stayed the same is found then, instead
        // of every check failing until the channel is signed again. Also when the root is
        // older than one trusted before (see below).
        let now = manifest::effective_now(clock, st.newest_issued);
        let behind = st.root_version > Some(root.root().version);
        let from = root.root().version;
        let root = if walk || behind || root.check_unexpired(now).is_err() {
            root.update(
                // A copy that does not verify is passed over for the next base's: a
                // mirror's soft 404 (an error page with 200) must not end every walk in a
                // signature error. One the server answers 404 for ends it.
                |v, accept| {
                    let path = format!("root/{v}.json");
                    match self.fetcher.metadata_checked(&path, None, max, accept) {
                        Ok(_) => Ok(()),
                        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                        Err(e) => Err(e),
                    }
                },
                // Each verified root is trusted whatever comes next: keep it at once, and
                // never go back below it, though the walk stop before its end.
                |r| {
                    st.root_version = st.root_version.max(Some(r.root().version));
                    self.keep_root(st, r, &saved)
                },
                // The final root's expiry is checked below, on the clock of its keys.
                clock,
                max,
            )?
        } else {
            root
        };
        // Never back to a root older than one trusted before (TUF's rollback rule across
        // runs): `root.json` lost or replaced by an older copy, and the walk kept from
        // finding the newer ones.
        let version = root.root().version;
        if let Some(newest) = st.root_version.filter(|v| *v > version) {
            return Err(Error::new(
                ErrorKind::MetadataRollback,
                format!(
                    "expected root version {newest} or newer (trusted before), found version {version}: restore {}",
                    saved.display()
                ),
            ));
        }
        st.root_version = Some(version);
        let keys = root.manifest_keys();
        st.trust_manifest_keys(keys, &|c, seen| self.still_signed(c, seen, keys));
        root.check_unexpired(manifest::effective_now(clock, st.newest_issued))?;
        let cut_at =
            (version.saturating_sub(from) >= crate::trust::MAX_ROOT_STEPS).then_some(version);
        Ok(Anchored {
            anchor: Anchor::Root(root),
            cut_at,
        })
    }

    /// Whether the copy kept of the manifest last accepted on `channel` (`seen`) is still
    /// signed by `keys`, their threshold met: after a rotation that revoked a manifest key,
    /// such a channel keeps its record (see [`State::trust_manifest_keys`]).
    fn still_signed(&self, channel: &str, seen: &SeenManifest, keys: &KeySet) -> bool {
        let Ok(bytes) = std::fs::read(self.manifest_cache(channel)) else {
            return false;
        };
        let max = self.config.limits.max_metadata_bytes;
        crate::trust::open_signed(&bytes, crate::trust::MANIFEST_TYPE, keys, max)
            .is_ok_and(|s| crate::trust::sha256_hex(s.payload()) == seen.payload_sha256)
    }

    /// Where the manifest last accepted on `channel` is kept, for 304s.
    fn manifest_cache(&self, channel: &str) -> PathBuf {
        self.state_dir()
            .join("cache")
            .join(format!("{channel}.json"))
    }

    /// Makes `root` the saved root. Its root keys are recorded in the state first, and the
    /// state saved: a power cut between the two writes must not leave a `root.json` whose
    /// keys the state does not know, which the next check would take for another chain
    /// (decision 29).
    fn keep_root(&self, st: &mut State, root: &TrustedRoot, saved: &Path) -> Result<()> {
        st.trust_root_keys(root.root_keys());
        self.save_check(st)?;
        crate::fsutil::write_atomic(saved, root.envelope())
    }

    /// The self-signed root in `path`, which must be for this product. `what` names the
    /// file in errors (`trust.root` for the configured one): a user told only that "a
    /// root" is wrong cannot tell the config's file from the state's copy.
    fn load_root(&self, path: &Path, what: &str) -> Result<TrustedRoot> {
        let name = format!("{what} {}", path.display());
        // Named as every other error of the file is.
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", Path::new(&name), e))?;
        let root = TrustedRoot::pinned(&bytes, self.config.limits.max_metadata_bytes)
            .map_err(|e| e.context(&name))?;
        if root.root().product != self.config.product {
            return Err(Error::config(format!(
                "{name}: expected a root for product {:?}, found one for {:?}",
                self.config.product,
                root.root().product
            )));
        }
        Ok(root)
    }

    /// The diff of `offer` against the primary slot as it is now (DESIGN §5.5): the state
    /// may have moved since the check.
    pub fn plan(&self, offer: &Offer) -> Result<Offer> {
        let st = self.load_state()?;
        let mut plan = offer.clone();
        plan.components = self.diff_against_primary(&st, &offer.target);
        Ok(plan)
    }

    /// The component diff of `target` against what the primary slot of `st` holds. On dir
    /// slots an unchanged component is installed from the download kept since it was
    /// installed, never copied from the slot the app can write; one whose download is not
    /// kept (installed before downloads were kept, removed by hand) is downloaded again.
    fn diff_against_primary(&self, st: &State, target: &TargetRelease) -> Vec<ComponentChange> {
        let keeps = self.store.keeps_downloads();
        let mut changes = stage::diff(&st.slot(st.primary).components, target, keeps);
        for c in changes
            .iter_mut()
            .filter(|c| keeps && c.op == ComponentOp::Unchanged)
        {
            let kept = target.components.get(&c.name).map(|t| &t.artifact);
            if let Some(a) = kept.filter(|a| !self.downloads_dir().join(&a.sha256).is_file()) {
                c.artifact = Some(a.clone());
            }
        }
        changes
    }

    fn downloads_dir(&self) -> PathBuf {
        self.state_dir().join("downloads")
    }

    /// What a confirmation of `slot`, or a rollback to it, leaves in the downloads: on dir
    /// slots what `slot` was installed from (kept for the next release's unchanged
    /// components), and on any
    /// slots what is pending for a release newer than `slot`'s (a next release fetched
    /// during the trial); pending downloads not for a newer release are forgotten in `st`.
    /// Returns the finished downloads to remove, once `st` is saved.
    fn prunable_downloads(&self, st: &mut State, slot: Slot) -> Vec<PathBuf> {
        let newer = match (&st.pending_for, &st.slot(slot).version) {
            (Some(pending), Some(confirmed)) => pending.cmp_precedence(confirmed).is_gt(),
            (pending, _) => pending.is_some(),
        };
        if !newer {
            st.pending_downloads.clear();
            st.pending_for = None;
        }
        let installed = &st.slot(slot).components;
        let kept = |sha: &str| {
            st.pending_downloads.iter().any(|p| p == sha)
                || (self.store.keeps_downloads() && installed.values().any(|c| c.sha256 == sha))
        };
        // Partial downloads (`.part`) stay to be resumed.
        downloads_in(&self.downloads_dir())
            .into_iter()
            .filter(|d| !d.partial && !kept(&d.sha256))
            .map(|d| d.path)
            .collect()
    }

    /// Saves `st`, with `slot` the one to run from now on, and then removes the downloads
    /// that leaves no use for ([`Updater::prunable_downloads`]).
    fn save_pruned(&self, st: &mut State, slot: Slot) -> Result<()> {
        let prunable = self.prunable_downloads(st, slot);
        self.save(st)?;
        // Best effort: a leftover file costs only space.
        for path in prunable {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    /// Records the downloads `wanted` as pending for the release `version`, in one save
    /// (none when nothing changes).
    fn note_pending(&self, wanted: &[String], version: &Version) -> Result<()> {
        if wanted.is_empty() {
            return Ok(());
        }
        let _lock = self.lock()?;
        let mut st = self.load_state()?;
        let before = (st.pending_downloads.len(), st.pending_for.clone());
        for sha in wanted {
            if !st.pending_downloads.contains(sha) {
                st.pending_downloads.push(sha.clone());
            }
        }
        if !st
            .pending_for
            .as_ref()
            .is_some_and(|p| p.cmp_precedence(version).is_ge())
        {
            st.pending_for = Some(version.clone());
        }
        if (st.pending_downloads.len(), st.pending_for.clone()) == before {
            return Ok(());
        }
        self.save(&st)
    }

    /// Downloads and verifies the artifacts the plan carries (added and modified
    /// components, and unchanged ones with no kept download). `progress(done, total)`
    /// covers all of them; `cancel` stops between chunks
    /// (`cancelled`, also when set by the last progress call) and keeps partial and
    /// finished files for the next call to resume. The plan must come from this updater's
    /// own check (`invalid_state` otherwise), as for [`Updater::install`].
    ///
    /// On image slots the image is written straight into the inactive slot as it arrives
    /// (nothing of its size into the state directory): the slot is marked `installing` and
    /// taken out of the boot order first, so this refuses what an install refuses before
    /// it touches the slot (a trial under way, the slot running, a release below the
    /// floor), and [`Updater::install`] then reads the slot back.
    pub fn download(
        &self,
        plan: &Offer,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &CancelToken,
    ) -> Result<()> {
        self.reported("download", || {
            self.check_store_takes(plan)?;
            self.check_image_size(plan)?;
            // One writer per `.part`: a second process waits instead of interleaving.
            let _work = self.work_lock()?;
            if let Store::Image(images) = &self.store {
                return self.stream_image(images, plan, progress, cancel);
            }
            let dir = self.downloads_dir();
            crate::fsutil::create_dir_all(&dir)?;
            remove_other_partials(&dir, plan);
            // Recorded before the first blob finishes: a confirmation, which may run during
            // the download (it takes no work lock), or after this process died, keeps every
            // blob that finished. An entry whose blob never came is harmless: the blob is
            // fetched again, and a confirmation forgets entries it no longer needs.
            let wanted: Vec<String> = plan
                .components
                .iter()
                .filter_map(with_artifact)
                .map(|(_, a)| a.sha256.clone())
                .collect();
            self.note_pending(&wanted, &plan.version)?;
            self.fetch_all(plan, progress, cancel, &mut |spec, p| {
                self.fetcher.download(spec, &dir, p, cancel).map(drop)
            })
        })
    }

    /// Where a download streaming an image into a slot records how much of it is durable
    /// there ([`crate::slots::image::Streamed`]).
    fn stream_record(&self) -> PathBuf {
        self.state_dir().join("image-stream")
    }

    /// [`Updater::download`] on image slots: the image goes straight into the inactive
    /// slot as it arrives, nothing of its size into the state directory. The slot is
    /// first marked `installing` and taken out of the boot order, as an install does
    /// ([`Updater::begin_install`]), and stays so until [`Updater::install`] has read it
    /// back. A release already staged there is left as it is.
    fn stream_image(
        &self,
        images: &ImageSlots,
        plan: &Offer,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &CancelToken,
    ) -> Result<()> {
        images.check_distinct()?;
        let st = self.load_state()?;
        if staged(&st, plan).is_some() {
            return self.fetch_all(plan, progress, cancel, &mut |_, _| Ok(()));
        }
        let record = self.stream_record();
        let mut recorded = Streamed::read(&record);
        // A record vouches for a slot's bytes only while the slot stays `installing`: one
        // installed since, run and rolled back may hold other bytes (a read-write mount),
        // which a record of the whole image would pass off as the image, unfetched.
        if let Some(r) = &recorded {
            if st.slot(r.slot).status != SlotStatus::Installing {
                Streamed::remove(&record)?;
                recorded = None;
            }
        }
        let Staging { slot, .. } = self.begin_install(plan, &NameMap::new(), false)?;
        let into = crate::fetch::SlotDest {
            images,
            slot,
            record: &record,
            recorded: std::rc::Rc::new(std::cell::RefCell::new(recorded)),
            // Image slots take one image, this one.
            inflate_to: plan
                .components
                .iter()
                .filter_map(|c| artifact_to_install(plan, c))
                .find(|a| a.compression.is_some())
                .and_then(|a| a.installed_size),
        };
        self.fetch_all(plan, progress, cancel, &mut |spec, p| {
            self.fetcher.stream(spec, &into, p, cancel)
        })
    }

    /// The loop of [`Updater::download`]: fetches the plan's artifacts in turn, each
    /// with `fetch`.
    fn fetch_all(
        &self,
        plan: &Offer,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &CancelToken,
        fetch: &mut FetchBlob<'_>,
    ) -> Result<()> {
        let total = plan.download_size();
        let mut before = 0u64;
        let mut reported = 0u64;
        for (c, a) in plan.components.iter().filter_map(with_artifact) {
            let spec = BlobSpec {
                sha256: a.sha256.clone(),
                size: a.size,
                url: a.url.clone(),
            };
            let mut last_event = 0u64;
            fetch(&spec, &mut |done, _| {
                reported = before.saturating_add(done);
                progress(reported, total);
                // Events are for humans and logs: one per MiB is plenty.
                if done == a.size || done >= last_event.saturating_add(1 << 20) {
                    last_event = done;
                    self.emit(Event::Downloading {
                        component: c.name.clone(),
                        done,
                        total: a.size,
                    });
                }
            })?;
            before = before.saturating_add(a.size);
            // A cancel from the last progress call of a blob (the only one a small blob
            // gets) stops the call too; the blob stays for the next one.
            cancel.check()?;
        }
        // Blobs already downloaded get no call: the host's progress must still reach its
        // total (and a cancel from that call is a cancel too).
        if reported < total {
            progress(total, total);
            cancel.check()?;
        }
        Ok(())
    }

    /// Writes the plan into the inactive slot (which is marked `installing` before the
    /// first byte and `installed` only when everything is durable). The primary slot is
    /// never touched. A plan from another updater's check is `invalid_state`: that
    /// updater's trust root, product and state checked the release, not this one's.
    pub fn install(&self, plan: &Offer) -> Result<Slot> {
        self.reported("install", || {
            let _work = self.work_lock()?;
            if let Store::Image(images) = &self.store {
                images.check_distinct()?;
            }
            // Checked before the downloads are hashed, and again under the state lock.
            self.check_installable(&self.load_state()?, plan)?;
            let (files, archives) = match &self.store {
                Store::Dir(_) => {
                    let files = self.open_downloads(plan)?;
                    let archives = self.check_archives(plan, &files)?;
                    (files, archives)
                }
                Store::Image(_) => {
                    self.check_streamed(plan)?;
                    (NameMap::new(), NameMap::new())
                }
            };
            // An image's download marked the slot and took it out of the boot order
            // before its first byte, and `check_streamed` found all of it there.
            let marked = matches!(self.store, Store::Image(_));
            let Staging { slot, components } = self.begin_install(plan, &archives, marked)?;
            // The slot is written without the state lock: the startup step, status and
            // confirm do not wait for it, and the `installing` mark keeps them off it.
            match &self.store {
                Store::Dir(slots) => {
                    self.install_dir(slots, slot, plan, &files, archives, &components)?
                }
                Store::Image(images) => self.install_image(images, slot, plan)?,
            }
            self.finish_install(plan, slot, components)?;
            self.emit(Event::Staged {
                slot,
                version: plan.version.to_string(),
            });
            Ok(slot)
        })
    }

    /// Refuses an offer another updater made (its trust root, product or state may not be
    /// this one's), and artifacts the slot store cannot take: dir slots take no image, and
    /// image slots take exactly one image component and nothing else. Before the download,
    /// so none is fetched in vain, and again before the inactive slot is touched.
    fn check_store_takes(&self, plan: &Offer) -> Result<()> {
        if plan.issuer != self.id {
            return Err(Error::invalid_state(format!(
                "expected an offer from this updater's own check, found one of {} made by another updater (check again with this one)",
                plan.version
            )));
        }
        if let Some(field) = changed_field(plan) {
            return Err(Error::invalid_state(format!(
                "expected the offer of {} as its check made it, found its `{field}` changed: an offer's fields are for reading (check again for a new offer)",
                plan.checked.version
            )));
        }
        let all = &plan.target.components;
        let takes = SlotsFor::of(all.iter().map(|(_, c)| c.artifact.kind));
        let fits = match self.store {
            Store::Dir(_) => takes == SlotsFor::Dir,
            Store::Image(_) => takes == SlotsFor::Image,
        };
        if !fits {
            let images = all
                .iter()
                .filter(|(_, c)| c.artifact.kind == ArtifactKind::Image)
                .count();
            let (slots, expected) = match self.store {
                Store::Dir(_) => ("dir", "no image component"),
                Store::Image(_) => ("image", "exactly one image component and nothing else"),
            };
            return Err(Error::config(format!(
                "{slots} slots: expected {expected} for target {}, found {images} image(s) among {} component(s)",
                self.config.target,
                all.len()
            )));
        }
        // A library built without the inflater refuses here, before the slot is marked,
        // what it could not write into it.
        #[cfg(not(feature = "gzip-images"))]
        if let Some((name, _)) = all.iter().find(|(_, c)| c.artifact.compression.is_some()) {
            return Err(Error::config(format!(
                "component {name} of {}: expected an uncompressed image, found a gzip-compressed one, which this library was built without the `gzip-images` feature to decompress",
                plan.version
            )));
        }
        // Nothing would be written, so nothing would ever be recorded downloaded: refused
        // here, before the slot is marked, rather than at the install.
        let empty = all.iter().find(|(_, c)| {
            let a = &c.artifact;
            a.kind == ArtifactKind::Image && (a.size == 0 || a.slot_bytes().0 == 0)
        });
        if let Some((name, _)) = empty {
            return Err(Error::config(format!(
                "component {name} of {}: expected an image of at least 1 byte, found one of 0 bytes (nothing to write into a slot)",
                plan.version
            )));
        }
        Ok(())
    }

    /// Refuses, before the download, an image larger than the block device it would be
    /// written to: the slot an install would take now (it takes the same unless a restart
    /// or a rollback comes between). Only the size: what else an install checks of the
    /// slot may change by then.
    fn check_image_size(&self, plan: &Offer) -> Result<()> {
        let Store::Image(images) = &self.store else {
            return Ok(());
        };
        let (slot, _) = self.idle_slot(&mut self.load_state()?)?;
        image_sizes(plan).try_for_each(|size| images.check_size(slot, size))
    }

    /// Refuses an install during a trial, below the security floor, or of artifacts the
    /// slot store cannot take ([`Updater::check_store_takes`]), before the inactive slot is
    /// touched.
    fn check_installable(&self, st: &State, plan: &Offer) -> Result<()> {
        self.check_store_takes(plan)?;
        // A first release that used up its trial with no slot to roll back to runs on
        // (the startup step keeps it); a fix must still go in, into the slot that holds
        // nothing, or the only way out would be to confirm the broken release.
        if let Some(left) = st.left_running.filter(|l| *l == st.fallback()) {
            return Err(Error::invalid_state(format!(
                "expected slot {left} idle to install into it, found the app may still run from it: a rollback moved to slot {} while it ran; restart (the startup step runs) first",
                st.primary
            )));
        }
        // Stranded: no good slot to roll back to, whatever the other holds (nothing, a fix
        // cut short, a fix that failed too, one staged and passed by a newer fix).
        let stranded =
            |t: &Trial| t.tries_left == 0 && self.no_going_back_to(st, t.slot.other()).is_some();
        if let Some(t) = st.trial.filter(|t| !stranded(t)) {
            return Err(Error::invalid_state(format!(
                "slot {} is on trial; confirm or roll back before installing another release",
                t.slot
            )));
        }
        if plan.security_version < st.security_floor {
            return Err(Error::new(
                ErrorKind::SecurityFloor,
                format!(
                    "release {} has security version {}, below this device's floor {}",
                    plan.version, plan.security_version, st.security_floor
                ),
            ));
        }
        Ok(())
    }

    /// Marks the slot to write `installing` and takes it out of the boot order. Returns
    /// it and what it will hold. With `marked`, a slot already `installing` for this very
    /// release keeps its record: an image's download marked it before writing to it, so
    /// a second mark would be one more state save (flash, and a power-fail window) for
    /// nothing. It is still taken out of the boot order, which the bootloader may have
    /// changed since.
    fn begin_install(
        &self,
        plan: &Offer,
        archives: &NameMap<stage::CheckedZip>,
        marked: bool,
    ) -> Result<Staging> {
        let _lock = self.lock()?;
        let mut st = self.load_state()?;
        self.check_installable(&st, plan)?;
        let slot = self.install_slot(&mut st)?;
        // A slot that cannot take the release must keep its record and boot entry: marked
        // `installing`, the fallback would be lost though not a byte of it was written.
        match &self.store {
            Store::Dir(slots) => check_slot_room(slots, slot, plan, archives)?,
            Store::Image(images) => {
                image_sizes(plan).try_for_each(|size| images.check_fits(slot, size))?
            }
        }
        let components = installed_components(plan);
        let before = st.slot(slot).clone();
        let installing = SlotRecord {
            status: SlotStatus::Installing,
            version: Some(plan.version.clone()),
            security_version: plan.security_version,
            channel: Some(plan.channel.clone()),
            device_channel: Some(plan.device_channel.clone()),
            critical: plan.critical,
            components: BTreeMap::new(),
        };
        if marked && before == installing {
            // The download saved this mark and took the slot out of the boot order, but
            // the bootloader may have put it back since: U-Boot's script gives every
            // slot its tries again when none has any left (a crash loop of the running
            // slot before the startup step). The built-in selectors write nothing when
            // the slot is already out.
            self.with_fallback_kept(&st, slot, |s| s.disable(slot))?;
            return Ok(Staging { slot, components });
        }
        *st.slot_mut(slot) = installing;
        st.record(
            (self.clock)(),
            "installing",
            format!("{} into slot {slot}", plan.version),
        );
        // Marked first: a crash after the bootloader let go of the slot must not leave a
        // record of a bootable release there.
        self.save(&st)?;
        if let Err(e) = self.with_fallback_kept(&st, slot, |s| s.disable(slot)) {
            // Refused (GRUB will not leave no bootable slot) or failed: not a byte of the
            // slot was written, so its record, often the fallback, comes back.
            *st.slot_mut(slot) = before;
            st.record((self.clock)(), "install_refused", e.to_string());
            return Err(self.restored(&st, e, &format!("slot {slot}'s record")));
        }
        Ok(Staging { slot, components })
    }

    /// `e`, the error of a step whose state change was undone in `st`, once `st` is saved;
    /// when it cannot be, `e` says that `what` was not restored.
    fn restored(&self, st: &State, e: Error, what: &str) -> Error {
        match self.save(st) {
            Ok(()) => e,
            Err(saved) => Error::new(
                e.kind(),
                format!("{e}; and {what} was not restored: {saved}"),
            ),
        }
    }

    /// Marks the written slot `installed`, in the state as it is now.
    fn finish_install(
        &self,
        plan: &Offer,
        slot: Slot,
        components: BTreeMap<String, InstalledComponent>,
    ) -> Result<()> {
        let _lock = self.lock()?;
        let mut st = self.load_state()?;
        let record = st.slot_mut(slot);
        if record.status != SlotStatus::Installing || record.version.as_ref() != Some(&plan.version)
        {
            return Err(Error::invalid_state(format!(
                "expected slot {slot} still being installed with {}, found it {} with {} (changed by another process during the install)",
                plan.version,
                record.status.as_str(),
                version_str(record.version.as_ref())
            )));
        }
        record.status = SlotStatus::Installed;
        record.components = components;
        // What is installed is no longer pending: the slot's record keeps it now.
        let installed: Vec<String> = record
            .components
            .values()
            .map(|c| c.sha256.clone())
            .collect();
        st.pending_downloads.retain(|p| !installed.contains(p));
        st.record(
            (self.clock)(),
            "staged",
            format!("{} in slot {slot}", plan.version),
        );
        self.save(&st)
    }

    /// The slot an install writes, once `st` follows what the selector says runs (see
    /// [`Updater::follow_booted`]), and the slot that runs.
    fn idle_slot(&self, st: &mut State) -> Result<(Slot, Option<Slot>)> {
        let booted = self.with_selector(|s| s.booted())?;
        self.follow_booted(st, booted);
        Ok((st.fallback(), booted))
    }

    /// The slot to write: the fallback, and never the slot the selector says is running.
    ///
    /// A board provisioned with its first image in slot b runs b while a fresh state says
    /// a is primary; the state then follows what runs. Any other mismatch (a rollback not
    /// yet restarted into) is refused until the restart.
    fn install_slot(&self, st: &mut State) -> Result<Slot> {
        let (slot, booted) = self.idle_slot(st)?;
        if booted == Some(slot) {
            return Err(Error::invalid_state(format!(
                "expected to install into the idle slot {slot}, found it running (primary is {}): restart into slot {} first",
                st.primary, st.primary
            )));
        }
        // Not knowing which slot runs, the idle one may be the running one (a boot script
        // that lost the key, a rollback by hand): as for confirm, refused.
        if booted.is_none() && self.cmdline_booted {
            return Err(running_slot_unknown(&format!("install into slot {slot}")));
        }
        Ok(slot)
    }

    /// A board provisioned with its first image in slot b runs b while a fresh state says
    /// a is primary: the state's record of what runs moves to b, which becomes primary.
    /// Returns true when the state changed (the caller saves it).
    fn follow_booted(&self, st: &mut State, booted: Option<Slot>) -> bool {
        let other = st.fallback();
        // A primary Evergreen installed (it has a channel) is not a provisioning guess:
        // the other slot running then is a fallback, which `adopt_fallback` handles.
        if booted != Some(other)
            || st.trial.is_some()
            || st.slot(other).status != SlotStatus::Empty
            || st.slot(st.primary).channel.is_some()
        {
            return false;
        }
        let running = std::mem::take(st.slot_mut(st.primary));
        *st.slot_mut(other) = running;
        st.primary = other;
        st.record(
            (self.clock)(),
            "booted_other",
            format!("slot {other} is running: it becomes primary"),
        );
        true
    }

    /// Opens every downloaded artifact the plan needs, before anything is written.
    fn open_downloads(&self, plan: &Offer) -> Result<NameMap<std::fs::File>> {
        let dir = self.downloads_dir();
        let mut files = NameMap::new();
        for c in &plan.components {
            let Some(a) = artifact_to_install(plan, c) else {
                continue;
            };
            let path = dir.join(&a.sha256);
            let f = std::fs::File::open(&path).map_err(|e| {
                let (what, then) = match c.artifact {
                    Some(_) => ("verified download", "download first"),
                    None => ("download kept since it was installed", "plan again"),
                };
                Error::invalid_state(format!(
                    "component {}: expected the {what} {}, found none ({e}); {then}",
                    c.name,
                    path.display()
                ))
            })?;
            if let Err(e) = stage::verify_artifact(&f, a) {
                // A kept download damaged since (a bad block) would fail every plan the
                // same way: removed, the next plan downloads it again.
                let removed = c.artifact.is_none() && std::fs::remove_file(&path).is_ok();
                let what = match removed {
                    true => "the download kept since it was installed, now removed (the next update downloads it again)",
                    false => "downloaded artifact",
                };
                return Err(e.context(format!("component {}: {what}", c.name)));
            }
            files.insert(c.name.clone(), f);
        }
        Ok(files)
    }

    /// Checks every zip the plan installs, as its extraction will, before the inactive slot
    /// is cleared: a release that could never be installed (an entry the rules refuse)
    /// leaves that slot, often the last good release, as it was.
    fn check_archives(
        &self,
        plan: &Offer,
        files: &NameMap<std::fs::File>,
    ) -> Result<NameMap<stage::CheckedZip>> {
        let limits = self.config.archive_limits();
        let mut checked = NameMap::new();
        for c in &plan.components {
            let Some(a) = artifact_to_install(plan, c).filter(|a| a.kind == ArtifactKind::Zip)
            else {
                continue;
            };
            let file = opened(files, c)?;
            let zip = stage::CheckedZip::check(file, a.installed_size, &limits)
                .and_then(|zip| match &self.store {
                    // Both slots' paths are as long: `slots/a`, `slots/b`.
                    Store::Dir(slots) => zip
                        .check_fits(&slots.component_dir(Slot::A, &c.name))
                        .map(|()| zip),
                    Store::Image(_) => Ok(zip),
                })
                .map_err(|e| e.context(component_context(c, a)))?;
            checked.insert(c.name.clone(), zip);
        }
        Ok(checked)
    }

    fn install_dir(
        &self,
        slots: &DirSlots,
        slot: Slot,
        plan: &Offer,
        files: &NameMap<std::fs::File>,
        mut archives: NameMap<stage::CheckedZip>,
        components: &BTreeMap<String, InstalledComponent>,
    ) -> Result<()> {
        let dir = slots.prepare(slot)?;
        // Before a byte is written: the sync at the end then hears of every write error.
        let watch = stage::WriteWatch::open(&dir)?;
        for c in &plan.components {
            let Some(a) = artifact_to_install(plan, c) else {
                continue;
            };
            let dest = slots.component_dir(slot, &c.name);
            let staged = match a.kind {
                ArtifactKind::Zip => match archives.remove(&c.name) {
                    Some(zip) => zip.extract(&dest).map(drop),
                    None => Err(not_opened(c)),
                },
                ArtifactKind::File => {
                    let name = a.name.as_deref().unwrap_or(&c.name);
                    stage::place_file(opened(files, c)?, &dest, name).map(drop)
                }
                // Refused by `check_installable`.
                ArtifactKind::Image => Ok(()),
            };
            staged.map_err(|e| e.context(component_context(c, a)))?;
            crate::fsutil::crash_point("component staged")?;
        }
        watch.make_durable()?;
        let record = serde_json::json!({
            "version": plan.version.to_string(),
            "components": components,
        });
        slots.seal(slot, record.to_string().as_bytes())
    }

    /// Refuses (`invalid_state`, before the slot is touched) an install on image slots
    /// whose image a download has not streamed whole into the slot an install would take.
    fn check_streamed(&self, plan: &Offer) -> Result<()> {
        let mut st = self.load_state()?;
        let (slot, _) = self.idle_slot(&mut st)?;
        // A release staged with no record of it (the record written over since, or never
        // kept) is read back as it is: the read-back is what vouches for the slot.
        if staged(&st, plan) == Some(slot) {
            return Ok(());
        }
        let record = Streamed::read(&self.stream_record());
        for c in &plan.components {
            let Some(a) = artifact_to_install(plan, c) else {
                continue;
            };
            let key = Streamed::key(&a.sha256, a.compression.is_some());
            let there = record.as_ref().map_or(0, |r| r.bytes_of(&key, slot));
            if there != a.size || a.size == 0 {
                return Err(Error::invalid_state(format!(
                    "component {}: expected its image downloaded whole into slot {slot}, found {there} of its {} bytes there; download first",
                    c.name, a.size
                )));
            }
        }
        Ok(())
    }

    /// Reads back the image a download streamed into `slot` and checks its hash, which
    /// the slot must pass before it is marked `installed`. A slot that fails it is
    /// recorded as holding none of the image, so the next download fetches it again.
    fn install_image(&self, images: &ImageSlots, slot: Slot, plan: &Offer) -> Result<()> {
        // `check_installable` made sure the plan holds exactly one component, an image.
        for c in &plan.components {
            let Some(a) = artifact_to_install(plan, c) else {
                continue;
            };
            let mut last = 0u64;
            // A compressed image is compared with the signed hash of what it
            // decompresses to.
            let (size, sha256) = a.slot_bytes();
            let read = images.read_back(slot, size, sha256, &mut |done, total| {
                if done == total || done >= last + (8 << 20) {
                    last = done;
                    self.emit(Event::Installing {
                        component: c.name.clone(),
                        done,
                        total,
                    });
                }
            });
            if let Err(e) = read {
                let none = Streamed {
                    sha256: Streamed::key(&a.sha256, a.compression.is_some()),
                    slot,
                    bytes: 0,
                };
                let reset = none.write(&self.stream_record());
                return Err(match reset {
                    Ok(()) => e,
                    Err(r) => e.map_message(|m| {
                        format!("{m}; and recording that slot {slot} holds none of it failed: {r}")
                    }),
                });
            }
        }
        Ok(())
    }

    /// Makes the installed slot primary, on trial — if the deploy policy allows it now
    /// (`force` overrides the window and `at`; `download_only` never blocks an explicit
    /// call). A slot below the security floor is `security_floor`, forced or not. The state
    /// is committed before the boot selector is switched.
    pub fn activate(&self, force: bool) -> Result<Activation> {
        self.reported("activate", || {
            let _lock = self.lock()?;
            let mut st = self.load_state()?;
            let slot = st.fallback();
            let record = st.slot(slot).clone();
            if record.status != SlotStatus::Installed {
                return Err(Error::invalid_state(format!(
                    "slot {slot} is {}, expected installed: install a release first",
                    record.status.as_str()
                )));
            }
            let version = record.version.clone().unwrap_or(Version::new(0, 0, 0));
            // The install checked the floor as it was then; a confirmation since (of a
            // stranded first trial) may have raised it past the staged release.
            check_floor(&st, slot, "a slot to activate")?;
            if !force {
                if let Deploy::Wait { until, reason } = self.deploy(&st, record.critical, (self.clock)()) {
                    self.emit(Event::Deferred {
                        version: version.to_string(),
                        until: Some(until),
                        reason: reason.clone(),
                    });
                    return Ok(Activation::Deferred {
                        until: Some(until),
                        reason,
                    });
                }
            }
            let tries = self.with_selector(|s| Ok(s.trial_tries(self.config.trial.tries)))?;
            let before = st.clone();
            if let Some(left) = st.trial.filter(|t| t.slot != slot) {
                // Only a stranded first trial lets a release in beside it (check_installable).
                st.slot_mut(left.slot).status = SlotStatus::Bad;
                note_failed(&mut st, left.slot, slot);
                st.record(
                    (self.clock)(),
                    "trial_replaced",
                    format!(
                        "slot {} used up its trial unconfirmed, with no slot to roll back to; {version} in slot {slot} replaces it",
                        left.slot
                    ),
                );
            }
            st.slot_mut(slot).status = SlotStatus::Trial;
            st.primary = slot;
            st.trial = Some(Trial {
                slot,
                tries_left: tries,
                tries,
            });
            if let Some(ch) = channel_after_activation(&record, &st.channel) {
                st.channel = ch;
            }
            st.record(
                (self.clock)(),
                "activated",
                format!("{version} in slot {slot}"),
            );
            // Committed first: a power cut before the selector learns of it is resumed (or
            // repaired) by the startup step.
            self.save(&st)?;
            if let Err(e) = self.with_fallback_kept(&before, slot, |s| s.activate(slot, tries)) {
                // Refused or failed: the caller hears that nothing changed, so nothing has.
                // A selector that wrote part of its change is settled by the next startup
                // step, which finds the primary it had.
                let mut st = before;
                st.record((self.clock)(), "activation_failed", e.to_string());
                return Err(self.restored(&st, e, "the state from before the activation"));
            }
            self.emit(Event::Activated {
                slot,
                version: version.to_string(),
            });
            self.emit(Event::TrialStarted { slot, tries });
            Ok(Activation::Activated { slot, version })
        })
    }

    /// Marks the trial slot good and raises the security floor to its release's.
    /// Confirming a slot that is already good does nothing. A trial slot that has not
    /// started yet (no startup step counted, or the bootloader runs the other slot) is
    /// refused as `invalid_state`: nothing vouches for it.
    pub fn confirm(&self) -> Result<()> {
        self.reported("confirm", || {
            let _lock = self.lock()?;
            let mut st = self.load_state()?;
            let Some(trial) = st.trial else {
                if st.slot(st.primary).status == SlotStatus::Good {
                    return Ok(());
                }
                return Err(Error::invalid_state(format!(
                    "slot {} is {}, expected a slot on trial to confirm",
                    st.primary,
                    st.slot(st.primary).status.as_str()
                )));
            };
            self.check_trial_started(trial)?;
            // The bootloader is told first, unlike for the other steps: a power cut after a
            // committed state but before this write would leave a slot the state calls good
            // and the bootloader still tries, and gives up on once its attempts are spent
            // (the next start adopts the fallback, below the security floor just raised).
            // In this order a cut leaves the trial in the state, which the next start
            // resumes, and the host confirms again.
            self.with_selector(|s| s.confirm(trial.slot))?;
            let record = st.slot_mut(trial.slot);
            record.status = SlotStatus::Good;
            let (sv, version) = (record.security_version, record.version.clone());
            st.security_floor = st.security_floor.max(sv);
            st.trial = None;
            st.record((self.clock)(), "confirmed", format!("slot {}", trial.slot));
            self.save_pruned(&mut st, trial.slot)?;
            self.emit(Event::Confirmed {
                slot: trial.slot,
                version: version_str(version.as_ref()),
                security_floor: st.security_floor,
            });
            Ok(())
        })
    }

    /// The slot running now, for a selector that counts no tries and so names the slot
    /// that starts next (dir slots' `current`, which an activation or a rollback moves
    /// before the app restarts): the slot a rollback left while it ran, until the startup
    /// step; the fallback while the trial slot has no start counted; else `next`.
    fn running_now(&self, st: &State, next: Option<Slot>, s: &dyn BootSelector) -> Option<Slot> {
        match (st.left_running, st.trial) {
            (Some(left), _) => Some(left),
            (None, Some(t)) if next == Some(t.slot) && !self.trial_counted(t, s) => {
                Some(t.slot.other())
            }
            _ => next,
        }
    }

    /// Whether the startup step counted a start of `trial`, with a selector that counts
    /// no tries (the state counts them).
    fn trial_counted(&self, trial: Trial, s: &dyn BootSelector) -> bool {
        let full = match trial.tries {
            0 => s.trial_tries(self.config.trial.tries),
            began_with => began_with,
        };
        trial.tries_left < full
    }

    /// Confirming a trial slot that has not started yet (`update && confirm` in one
    /// script) would vouch for a system that never ran. A bootloader knows which slot
    /// runs; otherwise the startup step counts the trial's starts.
    fn check_trial_started(&self, trial: Trial) -> Result<()> {
        let slot = trial.slot;
        let (booted, counted) = self.with_selector(|s| {
            let counts = s.counts_tries();
            let booted = if counts { s.booted()? } else { None };
            Ok((booted, (!counts).then(|| self.trial_counted(trial, s))))
        })?;
        match (booted, counted) {
            (Some(running), _) if running != slot => Err(Error::invalid_state(format!(
                "expected slot {slot} (on trial) to be running to confirm it, found slot {running}: restart into slot {slot} first"
            ))),
            // Run from the fallback after the bootloader gave up, a confirm would vouch for
            // the slot that failed and send the bootloader back to it. A host's selector
            // that cannot tell (`EVG_SLOT_NONE`) is trusted as before.
            (None, None) if self.cmdline_booted => Err(running_slot_unknown(&format!(
                "confirm slot {slot} (on trial)"
            ))),
            (_, Some(false)) => Err(Error::invalid_state(format!(
                "expected slot {slot} (on trial) to have started to confirm it, found no start counted: start it and run the startup step (`evergreen boot`, `startup()`) first"
            ))),
            _ => Ok(()),
        }
    }

    /// Goes back to the fallback slot now (it must be `good`, and not below the security
    /// floor: `security_floor`); the primary is marked bad.
    pub fn rollback(&self) -> Result<Slot> {
        self.reported("rollback", || {
            let _lock = self.lock()?;
            let mut st = self.load_state()?;
            let fallback = st.fallback();
            if let Some(why) = self.unusable_fallback(&st) {
                return Err(Error::invalid_state(format!(
                    "nothing to roll back to: {why}"
                )));
            }
            // The floor rose when the primary was confirmed; going back under it by hand
            // would undo the anti-rollback protection it stands for.
            check_floor(&st, fallback, "a fallback")?;
            // The app runs from the primary until it restarts, unless that is a trial that
            // never ran: one the startup step counted no start of, or, where the bootloader
            // counts (the state's count says nothing then), one the slot that runs is not.
            // Not knowing what runs, it may: no install may write it until the next start.
            let left = st.primary;
            // `Some(what runs)` where the bootloader counts; a selector that cannot tell (an
            // error) does not know either.
            let running =
                self.with_selector(|s| Ok(s.counts_tries().then(|| s.booted().unwrap_or(None))))?;
            let never_ran = match running {
                Some(booted) => booted.is_some_and(|b| b != left),
                None => st
                    .trial
                    .is_some_and(|t| t.slot == left && t.tries > 0 && t.tries_left >= t.tries),
            };
            if !never_ran {
                st.left_running = Some(left);
            }
            let outcome = self.fall_back(&mut st, "rollback requested")?;
            if let Startup::RolledBack { from, to, reason } = outcome {
                self.emit(Event::RolledBack {
                    from,
                    to,
                    version: st.slot(from).version.as_ref().map(ToString::to_string),
                    reason,
                });
            }
            Ok(fallback)
        })
    }

    /// Skips `version`: checks no longer offer it (unless it is critical).
    pub fn skip(&self, version: &Version) -> Result<()> {
        let _lock = self.lock()?;
        let mut st = self.load_state()?;
        if !st.skipped.contains(version) {
            st.skipped.push(version.clone());
        }
        self.save(&st)
    }

    /// Follows `channel` from now on; the next check applies the channel-switch rules.
    pub fn set_channel(&self, channel: &str) -> Result<()> {
        manifest::check_channel_name(channel)?;
        let _lock = self.lock()?;
        let mut st = self.load_state()?;
        st.record(
            (self.clock)(),
            "channel",
            format!("{} -> {channel}", st.channel),
        );
        st.follow_channel(channel);
        self.save(&st)
    }

    /// An offer to install the installed version again (repair), with every component
    /// installed from its artifact: downloaded, or a download still kept (checked against
    /// its SHA-256 like any). An explicit call, never a check result.
    pub fn reinstall_offer(&self) -> Result<Offer> {
        self.reported("reinstall", || {
            let _work = self.work_lock()?;
            let mut st = self.load_state()?;
            let version = st.installed_version().cloned().ok_or_else(|| {
                Error::invalid_state("nothing is installed through Evergreen: nothing to reinstall")
            })?;
            let channel = st
                .slot(st.primary)
                .channel
                .clone()
                .unwrap_or_else(|| st.channel.clone());
            // What the check learned (roots walked, keys recorded) is kept even when it
            // fails, as `check_with` keeps it.
            let clock = (self.clock)();
            let manifest = match self.fetch_manifest(&mut st, &channel, clock) {
                Ok(m) => m,
                Err(e) => {
                    self.save_check(&st)?;
                    return Err(e);
                }
            };
            let st = self.save_check(&st)?;
            // The state may have moved during the fetch (a rollback, from another process).
            if st.installed_version() != Some(&version) {
                return Err(Error::invalid_state(format!(
                    "expected {version} still installed to reinstall it, found {} now (it changed during the check); run reinstall again",
                    version_str(st.installed_version())
                )));
            }
            let release = manifest.release(&version).ok_or_else(|| {
                Error::new(
                    ErrorKind::NoSuchVersion,
                    format!("expected version {version} in channel {channel} to reinstall it, found it no longer published"),
                )
            })?;
            // A repair never moves the device: activation moves it to the release's
            // channel only when it already follows that one.
            let repair = select::Choice {
                version: release.version.clone(),
                downgrade: false,
                critical: release.critical,
                stepping_stone: false,
            };
            let mut offer =
                self.offer(&st, &manifest, release, &repair, manifest.channel.clone(), clock)?;
            for c in &mut offer.components {
                if c.op == ComponentOp::Unchanged {
                    c.op = ComponentOp::Modified;
                    // The diff gives unchanged components no artifact; a repair needs it.
                    c.artifact = offer.target.components.get(&c.name).map(|t| t.artifact.clone());
                }
            }
            Ok(offer)
        })
    }
}

/// What the new slot holds: the release's components, each installed from its artifact
/// (downloaded now, or kept since the primary slot was installed from it).
fn installed_components(plan: &Offer) -> BTreeMap<String, InstalledComponent> {
    plan.target
        .components
        .iter()
        .map(|(name, c)| {
            let record = InstalledComponent::new(c.version.clone(), &c.artifact);
            (name.to_string(), record)
        })
        .collect()
}

/// Refuses (`security_floor`) to make `slot`, as `role`, the one that runs when its
/// release is below the device's floor: the floor may have risen since it was installed
/// (by a confirmation), and going under it would undo the anti-rollback protection.
fn check_floor(st: &State, slot: Slot, role: &str) -> Result<()> {
    let record = st.slot(slot);
    if record.security_version >= st.security_floor {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::SecurityFloor,
        format!(
            "expected {role} at or above this device's security floor {}, found slot {slot} with {} at security version {}",
            st.security_floor,
            version_str(record.version.as_ref()),
            record.security_version
        ),
    ))
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
