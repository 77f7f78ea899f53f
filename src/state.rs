//! The persisted state machine (DESIGN §5.7).
//!
//! One JSON document, `<state_dir>/state.json`, schema-versioned and always replaced
//! atomically. Whatever instant the process dies at, the next start finds a parseable state
//! whose primary slot is bootable and whose fallback is intact until the new slot is
//! confirmed: the updater only ever changes the *inactive* slot's files, and marks it
//! `installing` before the first byte and `installed` only after everything is durable.

use crate::error::{Error, ErrorKind, Result};
use crate::fsutil;
use crate::slots::Slot;
pub use crate::stage::InstalledComponent;
use crate::time::Timestamp;
use crate::trust::{KeySet, PublicKey};
use semver::Version;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

/// The schema this build reads and writes.
pub const SCHEMA: u32 = 1;

/// Just the schema number of a state file, read before the rest so that a file written by
/// a newer Evergreen is named as such instead of being read as if this one had written it.
#[derive(Deserialize)]
struct SchemaOnly {
    schema: Option<u64>,
}

/// How many events the history keeps.
pub const HISTORY_LEN: usize = 64;
const FILE_NAME: &str = "state.json";
/// The history event of failed checks ([`State::record_check_failure`]).
const CHECK_FAILED: &str = "check_failed";

thread_local! {
    /// The lock files this thread holds (see [`State::lock`] and [`State::work_lock`]).
    static HELD: std::cell::RefCell<Vec<HeldKey>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A lock file that a thread holds: its directory ([`fsutil::file_id`]) and its name.
type HeldKey = ((u64, u64), &'static str);

/// A lock of one operation (see [`State::lock`] and [`State::work_lock`]); dropping it
/// releases the lock.
#[derive(Debug)]
pub struct StateLock {
    // Closing the file releases the `flock`.
    _file: std::fs::File,
    key: HeldKey,
}

impl Drop for StateLock {
    fn drop(&mut self) {
        // `try_with`: a lock may be dropped while the process exits (see `lock_file`).
        let _ = HELD.try_with(|held| held.borrow_mut().retain(|k| *k != self.key));
    }
}

/// How long a read of the state file waits for a write into it (the spare's, on a full
/// disk: a few KiB and a sync), and that write for readers. A holder that never lets go
/// must not stop the other side for ever (any local user who can read the file can take
/// a read lock, and where the lock is a `flock` a write lock too): past this each goes
/// ahead (a read that meets a torn write then fails to parse, and says so).
pub(crate) const STATE_FILE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);
/// The lock file of changes to the state.
const STATE_LOCK: &str = "lock";
/// The lock file of the long operations; always taken before [`STATE_LOCK`].
const WORK_LOCK: &str = "work.lock";

/// Takes the lock file `name` in `dir` for an operation that may `what`. Refused with
/// `invalid_state` when this thread already holds it or any lock of `taken_after` (locks
/// that are only ever taken after this one): waiting would be for itself, or the lock
/// order another process keeps, and could deadlock.
fn lock_file(
    dir: &Path,
    name: &'static str,
    taken_after: &[&'static str],
    what: &str,
    on_wait: impl FnOnce(&Path),
    stop: Option<&dyn Fn() -> Result<()>>,
) -> Result<StateLock> {
    fsutil::create_dir_all(dir)?;
    let path = dir.join(name);
    // The directory itself, not a path to it, so two handles configured with different
    // paths to the same state (a symlink, a bind mount) are recognised.
    let meta = std::fs::metadata(dir).map_err(|e| Error::io("inspect", dir, e))?;
    let id = fsutil::file_id(&meta);
    let key = (id, name);
    let conflicts = |held: &Vec<HeldKey>| {
        held.contains(&key) || taken_after.iter().any(|later| held.contains(&(id, *later)))
    };
    // While the process exits (a C host's `atexit` handler) this thread's locals may be
    // gone: then no call of this thread can be running either.
    if HELD
        .try_with(|held| conflicts(&held.borrow()))
        .unwrap_or(false)
    {
        return Err(Error::invalid_state(format!(
            "{}: expected no Evergreen operation running on this thread to start one that may {what}, found one: call Evergreen from an event or progress callback only to read (status), and run other operations after the call that emitted it returns",
            dir.display()
        )));
    }
    let access = match private_locks(dir) {
        true => fsutil::LockAccess::Owner,
        false => fsutil::LockAccess::Shared,
    };
    let file = fsutil::lock_exclusive_or_stop(&path, access, || on_wait(&path), stop)?;
    let _ = HELD.try_with(|held| held.borrow_mut().push(key));
    Ok(StateLock { _file: file, key })
}

/// Whether the lock files of the state in `dir` may be this user's alone (0600): when this
/// user owns the directory and nobody but its owner may write it, only this user (or root)
/// can run an operation there, nobody else needs to open them, and opening one is enough
/// to hold it, stalling every update and the startup step. Otherwise (root working in a
/// user's directory, or a directory its group may write for a launcher run as another
/// user of the group) they are 0644, so each user who may take them can open them.
fn private_locks(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(dir).is_ok_and(|m| fsutil::is_mine(&m) && m.permissions().mode() & 0o022 == 0)
}

/// Where a slot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SlotStatus {
    /// Nothing installed.
    #[default]
    Empty,
    /// Being written; never bootable.
    Installing,
    /// Completely written and durable; ready to activate.
    Installed,
    /// Activated and on probation.
    Trial,
    /// Confirmed healthy.
    Good,
    /// Failed its trial or was rolled back; never booted again.
    Bad,
}

impl SlotStatus {
    /// The name used in `status --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotStatus::Empty => "empty",
            SlotStatus::Installing => "installing",
            SlotStatus::Installed => "installed",
            SlotStatus::Trial => "trial",
            SlotStatus::Good => "good",
            SlotStatus::Bad => "bad",
        }
    }
}

/// What one slot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SlotRecord {
    /// Life-cycle status.
    #[serde(default)]
    pub status: SlotStatus,
    /// Release version installed, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// The release's anti-rollback counter.
    #[serde(default)]
    pub security_version: u64,
    /// Channel the release came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The channel the device followed when it checked for the release. Activation moves
    /// the device to `channel` only while it still follows this one: a switch made since
    /// (even while the release was downloaded or installed) is the user's newer choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_channel: Option<String>,
    /// The release is a forced update (activation ignores `at` and `download_only`).
    #[serde(default)]
    pub critical: bool,
    /// Components by name.
    #[serde(default)]
    pub components: BTreeMap<String, InstalledComponent>,
    /// Why the newest check of the channel this release was staged from no longer offers
    /// it (its rollout halted or narrowed past this device, the release withdrawn or
    /// skipped): `activate` defers it, unless forced, until a check offers it again.
    /// Set and cleared by checks ([`crate::select::withheld`]); `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld: Option<String>,
    /// The device's `target` when the release was installed: one staged before the config's
    /// target changed (a new board revision) is not activated for the new one until a check
    /// offers the same artifacts for it. `None` in a state saved before this was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Staged from an offer asked for whatever the rollout says (a pin's, a repair's):
    /// never withheld, since no check of the channel's rollout chose it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub asked_for: bool,
}

/// A slot on probation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The slot on trial (always the primary).
    pub slot: Slot,
    /// Starts left before an automatic rollback.
    pub tries_left: u32,
    /// The starts it began with, to tell whether one was counted: the config may change
    /// during a trial (a release can ship its own). 0 in a state saved before this was
    /// recorded; the config's count is used then.
    #[serde(default)]
    pub tries: u32,
}

/// The last manifest accepted on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenManifest {
    /// Its sequence.
    pub sequence: u64,
    /// SHA-256 of its payload.
    pub payload_sha256: String,
    /// The server's ETag, for `If-None-Match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Its `issued`, for the newest `issued` kept across a key rotation
    /// ([`State::trust_manifest_keys`]); none in a state saved before this was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued: Option<Timestamp>,
    /// When a check last verified the channel's manifest (this one, or the same again
    /// answered 304), on the host's clock: a switch to the channel takes that check as the
    /// device's own when it is the newest ([`State::follow_channel`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked: Option<Timestamp>,
}

/// One line of history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When.
    pub at: Timestamp,
    /// What (the event name, e.g. `activated`).
    pub event: String,
    /// Details.
    pub detail: String,
}

/// Everything Evergreen remembers between runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Schema version of this document.
    pub schema: u32,
    /// The slot that boots.
    pub primary: Slot,
    /// Slot `a`.
    pub a: SlotRecord,
    /// Slot `b`.
    pub b: SlotRecord,
    /// The primary slot's probation, if it is on trial.
    #[serde(default)]
    pub trial: Option<Trial>,
    /// The product whose metadata this state was checked against (the config's `product`
    /// at its checks): its slots, sequences and security floor are that product's, and a
    /// check for another product is refused (`config`). `None` before the first check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// The channel this device follows.
    pub channel: String,
    /// How many times the device was switched to another channel ([`State::switch_channel`]):
    /// an install compares it with its offer's, to learn that the channel followed changed
    /// since the check (another process's switch, during the download).
    #[serde(default)]
    pub channel_switches: u64,
    /// Newest root version trusted.
    #[serde(default)]
    pub root_version: Option<u64>,
    /// [`KeySet::fingerprint`]s of the root keys of every root of the trusted chain, each
    /// after a space: a configured root whose keys are not among them is of another chain
    /// (DESIGN §13, decision 29).
    #[serde(default)]
    pub root_keys: String,
    /// Last accepted manifest per channel.
    #[serde(default)]
    pub manifests: BTreeMap<String, SeenManifest>,
    /// Newest `issued` seen on any manifest: the clock never reads earlier.
    #[serde(default)]
    pub newest_issued: Option<Timestamp>,
    /// Key ids of the manifest keys `manifests` and `newest_issued` were accepted under,
    /// separated by spaces (empty before the first check); one of them revoked starts both
    /// afresh (see [`State::trust_manifest_keys`]).
    #[serde(default)]
    pub manifest_keys: String,
    /// Anti-rollback floor: nothing with a lower `security_version` is installed.
    #[serde(default)]
    pub security_floor: u64,
    /// Versions the user chose to skip.
    #[serde(default)]
    pub skipped: Vec<Version>,
    /// Versions that failed on this device (rolled back); never offered again.
    #[serde(default)]
    pub failed: Vec<Version>,
    /// When the last successful check ran (on the host's clock pulled up to the newest
    /// `issued` seen, DESIGN §5.1 rule 4).
    #[serde(default)]
    pub last_check: Option<Timestamp>,
    /// When the last successful check ran on the host's own clock, which may read behind
    /// `last_check` (an RTC that lost power): the next check is counted from it, on the
    /// clock the host waits on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_clock: Option<Timestamp>,
    /// Consecutive failed checks (for backoff).
    #[serde(default)]
    pub check_failures: u32,
    /// When the last of those failed checks ran, on the host's clock: the backoff counts
    /// from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Timestamp>,
    /// The time a server that failed a check asked not to be checked again before
    /// (`Retry-After`, at most a day after the failure: `select::retry_not_before`), on
    /// the host's clock; the next check is not due before it. A check the server answers
    /// clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// Recent events, oldest first, at most [`HISTORY_LEN`].
    #[serde(default)]
    pub history: VecDeque<HistoryEntry>,
    /// SHA-256 of the downloads of a release not installed yet (recorded as its download
    /// starts, so a blob that finishes is never unrecorded), which no confirmation removes
    /// while that release ([`State::pending_for`], the last one downloaded) is newer than
    /// the one confirmed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_downloads: Vec<String>,
    /// The release [`State::pending_downloads`] were fetched for: the last one downloaded
    /// (a download of another release forgets those of the one before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_for: Option<Version>,
    /// The slot a rollback moved away from while it ran: the app may run from it until it
    /// restarts, so nothing is installed into it before the next startup step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_running: Option<Slot>,
}

impl State {
    /// The state of a device Evergreen has never run on: slot `a` primary, holding
    /// `current_version` (installed by other means) or nothing.
    pub fn initial(channel: &str, current_version: Option<Version>) -> State {
        let a = SlotRecord {
            status: if current_version.is_some() {
                SlotStatus::Good
            } else {
                SlotStatus::Empty
            },
            version: current_version,
            ..SlotRecord::default()
        };
        State {
            schema: SCHEMA,
            primary: Slot::A,
            a,
            b: SlotRecord::default(),
            trial: None,
            product: None,
            channel: channel.to_string(),
            channel_switches: 0,
            root_version: None,
            root_keys: String::new(),
            manifests: BTreeMap::new(),
            newest_issued: None,
            manifest_keys: String::new(),
            security_floor: 0,
            skipped: Vec::new(),
            failed: Vec::new(),
            last_check: None,
            last_check_clock: None,
            check_failures: 0,
            last_failure: None,
            not_before: None,
            history: VecDeque::new(),
            pending_downloads: Vec::new(),
            pending_for: None,
            left_running: None,
        }
    }

    /// Refuses a state directory `dir` that exists as something else (`config`): a
    /// `state_dir` typed one level too deep names a file, and of the state file inside it
    /// the OS says only "Not a directory".
    pub(crate) fn check_dir(dir: &Path) -> Result<()> {
        match std::fs::metadata(dir) {
            Ok(found) if !found.is_dir() => Err(Error::config(format!(
                "the state directory {} (the config's `state_dir`): expected a directory, found {}",
                dir.display(),
                fsutil::file_type_name(found.file_type())
            ))),
            _ => Ok(()),
        }
    }

    /// The path of the state file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE_NAME)
    }

    /// Takes the lock that serialises changes to the state in `dir`, across processes and
    /// threads; it is released when the returned guard drops. It is held only while a
    /// state is read, changed and saved, never across network or slot writes, so the
    /// startup step on every boot does not wait for a download (see [`State::work_lock`]).
    ///
    /// Another thread or process waits for the lock, after calling `on_wait` with the
    /// lock file's path once. The thread that holds it gets `invalid_state` instead: that
    /// is a call made from inside an event or progress callback of an operation still
    /// running (through any handle on the same state), which would otherwise wait for
    /// itself forever.
    pub fn lock(dir: &Path, on_wait: impl FnOnce(&Path)) -> Result<StateLock> {
        State::lock_or_stop(dir, on_wait, None)
    }

    /// [`State::lock`], where a given `stop` is asked every 50 ms of a wait and an error
    /// from it ends the wait, as for [`State::work_lock`]: the startup step must not wait
    /// for good behind a holder that was stopped or hangs.
    pub fn lock_or_stop(
        dir: &Path,
        on_wait: impl FnOnce(&Path),
        stop: Option<&dyn Fn() -> Result<()>>,
    ) -> Result<StateLock> {
        lock_file(dir, STATE_LOCK, &[], "change the state", on_wait, stop)
    }

    /// Takes the lock that serialises the long operations on the state in `dir`: checks
    /// (network), downloads (one writer per `.part`) and installs (slot writes). Take it
    /// before [`State::lock`], never while holding that. Waiting and re-entry are as for
    /// [`State::lock`], except that a given `stop` is asked every 50 ms of the wait and an
    /// error from it ends the wait: another process may hold this lock for a whole
    /// download, and a cancelled download must not wait for that.
    pub fn work_lock(
        dir: &Path,
        on_wait: impl FnOnce(&Path),
        stop: Option<&dyn Fn() -> Result<()>>,
    ) -> Result<StateLock> {
        lock_file(
            dir,
            WORK_LOCK,
            &[STATE_LOCK],
            "check, download or install",
            on_wait,
            stop,
        )
    }

    /// The device's own switch to `channel` (counted when it is another one), then
    /// [`State::follow_channel`].
    pub fn switch_channel(&mut self, channel: &str) {
        if self.channel != channel {
            self.channel_switches = self.channel_switches.wrapping_add(1);
        }
        self.follow_channel(channel);
    }

    /// Makes `channel` the channel followed. A check of it newer than every check of the
    /// device's own channel, successful or not (`update --channel`, or `check --channel`
    /// and then the switch), becomes the device's last check: the poll schedule and its
    /// backoff follow the channel now followed, from the last time it was checked.
    ///
    /// ```
    /// use evergreen::state::{SeenManifest, State};
    /// use evergreen::Timestamp;
    /// let mut st = State::initial("stable", None);
    /// st.last_check_clock = Some(Timestamp::from_unix(100));
    /// st.manifests.insert("preview".into(), SeenManifest {
    ///     sequence: 1, payload_sha256: "ab".repeat(32), etag: None, issued: None,
    ///     checked: Some(Timestamp::from_unix(200)),
    /// });
    /// st.follow_channel("preview");
    /// assert_eq!((st.channel.as_str(), st.last_check_clock), ("preview", Some(Timestamp::from_unix(200))));
    /// ```
    pub fn follow_channel(&mut self, channel: &str) {
        self.channel = channel.to_string();
        let Some(at) = self.manifests.get(channel).and_then(|s| s.checked) else {
            return;
        };
        let own = self.last_check_clock.max(self.last_failure);
        if own.is_some_and(|own| own >= at) {
            return;
        }
        self.last_check_clock = Some(at);
        self.last_check = Some(crate::manifest::effective_now(at, self.newest_issued));
        self.check_failures = 0;
        self.last_failure = None;
    }

    /// Takes what a check learned from `checked`, a copy of the state made before the check
    /// went to the network: the manifests seen, the newest `issued` and the manifest keys
    /// they were accepted under, the root version and keys, and when it checked, how many checks
    /// failed in a row and until when the server asked to be left alone. Everything else (slots, trial, channel, floor) may have changed
    /// meanwhile and is kept.
    pub fn adopt_check(&mut self, checked: &State) {
        // A check under other manifest keys or on another chain started afresh (including
        // its clock): take it.
        if self.manifest_keys != checked.manifest_keys || self.root_keys != checked.root_keys {
            (self.newest_issued, self.last_check, self.root_version) = (None, None, None);
        }
        self.manifests.clone_from(&checked.manifests);
        self.product.clone_from(&checked.product);
        self.manifest_keys.clone_from(&checked.manifest_keys);
        self.root_keys.clone_from(&checked.root_keys);
        self.newest_issued = self.newest_issued.max(checked.newest_issued);
        self.root_version = self.root_version.max(checked.root_version);
        self.last_check = self.last_check.max(checked.last_check);
        // The newest reading, not the largest: the host's clock may have gone back.
        self.last_check_clock = checked.last_check_clock;
        self.check_failures = checked.check_failures;
        self.last_failure = checked.last_failure;
        self.not_before = checked.not_before;
    }

    /// Records `keys` as the manifest keys the freshness state is kept under (DESIGN §5.1
    /// rule 7). When a key it was built under is no longer among them (revoked by a root
    /// rotation or a new `trust.keys`), what that key alone could have signed is forgotten,
    /// as TUF drops its timestamp and snapshot metadata when their keys rotate, so a
    /// sequence or an `issued` a revoked key signed far ahead does not bind its successor:
    /// a channel's record stays only when `still_signed` finds the manifest it records
    /// signed by `keys` too (the threshold met without the revoked key), and the newest
    /// `issued` becomes the newest of those kept (none for records from before `issued`
    /// was recorded in them). Forgetting them
    /// all would let an attacker replay a channel's older manifests, still signed by a key
    /// that stays, at the very check that follows a key's revocation. Keys added, or a
    /// threshold changed, revoke nothing and keep it all. A state written before this
    /// record takes the keys as they are.
    pub fn trust_manifest_keys(
        &mut self,
        keys: &KeySet,
        still_signed: &dyn Fn(&str, &SeenManifest) -> bool,
    ) {
        let ids: Vec<String> = keys.keys().iter().map(PublicKey::keyid).collect();
        let revoked = self
            .manifest_keys
            .split(' ')
            .any(|old| !old.is_empty() && !ids.iter().any(|id| id == old));
        if revoked {
            self.newest_issued = None;
            // Rebuilt rather than `retain`ed: the map's removal code is 4 KB of a library
            // that must stay small, for a step taken once per rotation.
            for (channel, seen) in std::mem::take(&mut self.manifests) {
                if still_signed(&channel, &seen) {
                    self.newest_issued = self.newest_issued.max(seen.issued);
                    self.manifests.insert(channel, seen);
                }
            }
        }
        self.manifest_keys = ids.join(" ");
    }

    /// Forgets what rules 4 and 5 of DESIGN §5.1 hold a manifest to: the sequences and
    /// ETags seen per channel and the newest `issued`.
    pub fn forget_freshness(&mut self) {
        self.manifests.clear();
        self.newest_issued = None;
    }

    /// Whether `keys` are the root keys of a root of the chain this device trusts.
    pub fn trusts_root_keys(&self, keys: &KeySet) -> bool {
        let id = keys.fingerprint();
        self.root_keys.split(' ').any(|k| k == id)
    }

    /// Records `keys` among the root keys of the chain this device trusts.
    pub fn trust_root_keys(&mut self, keys: &KeySet) {
        if !self.trusts_root_keys(keys) {
            self.root_keys.push(' ');
            self.root_keys.push_str(&keys.fingerprint());
        }
    }

    /// The state in `bytes`, read from `path`.
    fn from_bytes(path: &Path, bytes: &[u8]) -> Result<State> {
        let schema = crate::json::from_bytes::<SchemaOnly>(bytes);
        match schema.as_ref().map(|s| s.schema) {
            Ok(Some(s)) if s > u64::from(SCHEMA) => {
                return Err(Error::invalid_state(format!(
                    "{}: expected state schema {SCHEMA} or older, found schema {s} (written by a newer Evergreen)",
                    path.display()
                )))
            }
            Ok(Some(0)) => {
                return Err(Error::invalid_state(format!(
                    "{}: expected state schema 1 to {SCHEMA}, found schema 0",
                    path.display()
                )))
            }
            Ok(None) | Err(_) => {
                // What is wrong, and where: a hand edit's stray comma is fixed in place,
                // keeping the trial, the floor and the freshness that starting afresh
                // would lose.
                let why = schema.as_ref().err().map_or("no schema number", String::as_str);
                let found = match bytes.len() {
                    0 => "an empty file".to_string(),
                    n => format!("a corrupt file ({n} bytes: {why})"),
                };
                return Err(Error::invalid_state(format!(
                    "{}: expected a JSON state document with a schema number, found {found}; \
                     fix it, or move it away to start afresh",
                    path.display(),
                )));
            }
            Ok(Some(_)) => {}
        }
        let state: State = crate::json::from_bytes(bytes).map_err(|found| {
            Error::invalid_state(format!(
                "{}: expected a valid state document, found: {found}",
                path.display()
            ))
        })?;
        // No operation saves a trial that is not the primary's (a hand edit does): acted
        // upon, the startup step would count, and give up on, a slot that is not running.
        if let Err(why) = state.check_trial() {
            return Err(Error::invalid_state(format!(
                "{}: expected {why}; fix it, or move it away to start afresh",
                path.display()
            )));
        }
        Ok(state)
    }

    /// Loads the state from `dir`; `Ok(None)` when there is none yet. A corrupt file or a
    /// newer schema is an `invalid_state` error, never a silent reset.
    ///
    /// The file's contents are read under a read lock (`fsutil::lock_contents_within`):
    /// a save on a full disk writes in place into the spare, which may be a file an
    /// earlier reader opened as `state.json`, under a write lock (see `src/spare.rs`). Not
    /// the state lock: a read never waits for a change (a host's event callback runs under
    /// the state lock, and may wait for a thread that reads the status), only for a write
    /// into the file it opened, and for at most 5 s. On Linux and Android only a writer of
    /// the file can hold that read up; elsewhere any local user who can read the file can.
    /// A file system without such locks is read without them.
    pub fn load(dir: &Path) -> Result<Option<State>> {
        State::load_within(dir, STATE_FILE_PATIENCE)
    }

    /// [`State::load`], waiting at most `patience` for a write into the file.
    fn load_within(dir: &Path, patience: std::time::Duration) -> Result<Option<State>> {
        use std::io::Read;
        let path = fsutil::own_link_target(State::path(dir))?;
        // Never through a symlink, and only a regular file: a FIFO planted there would
        // hold the open up for ever.
        let opened = fsutil::open_regular(std::fs::OpenOptions::new().read(true), &path, "read");
        let mut file = match opened {
            Ok(f) => f,
            Err(e)
                if e.io_source().map(std::io::Error::kind)
                    == Some(std::io::ErrorKind::NotFound) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        fsutil::lock_contents_within(&file, fsutil::Contents::Read, patience);
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io("read", &path, e))?;
        drop(file);
        State::from_bytes(&path, &bytes).map(Some)
    }

    /// Writes the state to `dir` atomically (temp → fsync → rename → fsync dir), still when
    /// its file system is full (through a spare file beside it: see `src/spare.rs`). A
    /// `state.json` that is a symlink (into a writable partition, on a read-only root file
    /// system) is written where it points, and stays a symlink; only a symlink this user or
    /// root made is followed, by loads as by saves.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut bytes = crate::json::to_vec_pretty(self)
            .map_err(|e| Error::new(ErrorKind::Io, format!("serialising the state failed: {e}")))?;
        bytes.push(b'\n');
        let path = fsutil::own_link_target(State::path(dir))?;
        crate::spare::write(&path, &bytes)?;
        // Every save holds the state lock, so any other temp file is one a power cut or a
        // kill left behind: without this they would pile up, one per process cut off.
        // The spare is written under the state's temp name too.
        fsutil::remove_stale_temps(&path);
        Ok(())
    }

    /// The record of `slot`.
    pub fn slot(&self, slot: Slot) -> &SlotRecord {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    /// The record of `slot`, to change.
    pub fn slot_mut(&mut self, slot: Slot) -> &mut SlotRecord {
        match slot {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }

    /// The fallback slot: the one that is not primary.
    pub fn fallback(&self) -> Slot {
        self.primary.other()
    }

    /// The version running (or about to run) in the primary slot.
    pub fn installed_version(&self) -> Option<&Version> {
        self.slot(self.primary).version.as_ref()
    }

    /// Appends to the bounded history.
    pub fn record(&mut self, at: Timestamp, event: &str, detail: impl Into<String>) {
        self.history.push_back(HistoryEntry {
            at,
            event: event.to_string(),
            detail: detail.into(),
        });
        while self.history.len() > HISTORY_LEN {
            self.history.pop_front();
        }
    }

    /// Appends `event` with `detail`, or puts them in place of the newest entry when it is
    /// the same event and its detail starts with `same` too: a failure repeated in a row
    /// (a download retried every hour) keeps one entry, the newest, rather than pushing
    /// the rest of the history out.
    pub fn record_repeated(&mut self, at: Timestamp, event: &str, same: &str, detail: String) {
        match self.history.back_mut() {
            Some(last) if last.event == event && last.detail.starts_with(same) => {
                (last.at, last.detail) = (at, detail);
            }
            _ => self.record(at, event, detail),
        }
    }

    /// Records in the history the failed check of the channel followed that
    /// `check_failures` counts, at `at` on the host's clock, with its error line `error`
    /// (`error[<kind>]: <message>`): one `check_failed` entry for failures in a row, the
    /// newest replacing the one before, so that checks failing for weeks leave their
    /// latest error without pushing the rest of the history out.
    pub fn record_check_failure(&mut self, at: Timestamp, error: &str) {
        let detail = format!("{} in a row: {error}", self.check_failures);
        match self.check_failures > 1 {
            true => self.record_repeated(at, CHECK_FAILED, "", detail),
            false => self.record(at, CHECK_FAILED, detail),
        }
    }

    /// Checks the invariants every committed state must hold; the crash tests call this.
    pub fn check_invariants(&self) -> Result<()> {
        let primary = self.slot(self.primary);
        if matches!(
            primary.status,
            SlotStatus::Installing | SlotStatus::Bad | SlotStatus::Installed
        ) {
            return Err(Error::invalid_state(format!(
                "primary slot {} is {}, expected good, trial or empty",
                self.primary,
                primary.status.as_str()
            )));
        }
        self.check_trial()
            .map_err(|why| Error::invalid_state(format!("expected {why}")))
    }

    /// Whether the trial record and the primary slot agree: a trial is always the
    /// primary's, with no more starts left than it began with, and the primary has status
    /// `trial` exactly while it has one. The error says what was expected and what was
    /// found.
    fn check_trial(&self) -> std::result::Result<(), String> {
        let (primary, status) = (self.primary, self.slot(self.primary).status);
        match self.trial {
            Some(t) if t.slot != primary => Err(format!(
                "the trial (`trial.slot`) on the primary slot {primary}, found it on slot {}",
                t.slot
            )),
            Some(_) if status != SlotStatus::Trial => Err(format!(
                "the primary slot {primary}, which has a trial, to have status trial, found {}",
                status.as_str()
            )),
            // Counted down from `tries` (0 in a state saved before it was recorded).
            Some(t) if t.tries > 0 && t.tries_left > t.tries => Err(format!(
                "at most the {} starts the trial of slot {primary} began with left (`trial.tries_left`), found {}",
                t.tries, t.tries_left
            )),
            None if status == SlotStatus::Trial => Err(format!(
                "a trial record (`trial`) for the primary slot {primary}, which has status trial, found none"
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_history_bounded() {
        let dir = tempfile::tempdir().unwrap();
        assert!(State::load(dir.path()).unwrap().is_none());
        let mut s = State::initial("stable", Some(Version::new(1, 0, 0)));
        for i in 0..100 {
            s.record(Timestamp::from_unix(i), "checked", format!("#{i}"));
        }
        s.save(dir.path()).unwrap();
        let back = State::load(dir.path()).unwrap().unwrap();
        assert_eq!(back, s);
        assert_eq!(back.history.len(), HISTORY_LEN);
        assert_eq!(back.history[0].detail, "#36");
        back.check_invariants().unwrap();
    }

    /// Opening a lock file is enough to hold it: in a state directory only its owner (this
    /// user) can write, only the owner may open them, and one an older version made
    /// readable for all is narrowed when next taken. Where the group may write the
    /// directory too, one made while it was private is opened up again for the group's
    /// users, who take them, and others are left as they are. (Root working in another
    /// user's directory: tests/cli_device.rs.)
    #[test]
    fn lock_files_follow_who_may_write_the_state() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: PathBuf| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let make = |path: PathBuf, mode: u32| {
            std::fs::write(&path, b"").unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let take_both = |dir: &Path| {
            drop(State::work_lock(dir, |_| {}, None).unwrap());
            drop(State::lock(dir, |_| {}).unwrap());
        };
        let private = tempfile::tempdir().unwrap();
        std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        make(private.path().join(STATE_LOCK), 0o664);
        take_both(private.path());
        assert_eq!(mode(private.path().join(WORK_LOCK)), 0o600, "created");
        assert_eq!(mode(private.path().join(STATE_LOCK)), 0o600, "narrowed");

        let shared = tempfile::tempdir().unwrap();
        std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
        make(shared.path().join(WORK_LOCK), 0o600);
        make(shared.path().join(STATE_LOCK), 0o640);
        take_both(shared.path());
        assert_eq!(
            mode(shared.path().join(WORK_LOCK)),
            fsutil::FILE_MODE,
            "opened up"
        );
        assert_eq!(
            mode(shared.path().join(STATE_LOCK)),
            0o640,
            "left as it was"
        );
    }

    /// A write into the state file that never ends (its writer stopped, or a local user
    /// who may write it holds the lock) holds a read up only so long, then it reads.
    #[test]
    fn a_load_does_not_wait_for_ever_for_a_write_lock_on_the_state_file() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        State::initial("stable", None).save(dir.path()).unwrap();
        let path = State::path(dir.path());
        let holder = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        assert!(fsutil::lock_contents_within(
            &holder,
            fsutil::Contents::Write,
            Duration::ZERO
        ));
        let (loaded, waited) = load_beside(dir.path(), Duration::from_millis(200));
        assert_eq!(loaded.unwrap().as_deref(), Some("stable"));
        assert!(
            waited >= Duration::from_millis(200),
            "it did not wait: {waited:?}"
        );
    }

    /// Someone who may only read the state file (a local user, when it is readable for
    /// `evergreen status`) cannot hold a read up at all: neither with the strongest
    /// `flock` nor with a record lock, and the write lock a read waits for is refused to
    /// a descriptor open only for reading.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_reader_of_the_state_file_cannot_hold_up_its_reads() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        State::initial("stable", None).save(dir.path()).unwrap();
        let reader_only = std::fs::File::open(State::path(dir.path())).unwrap();
        assert!(
            !fsutil::lock_contents_within(&reader_only, fsutil::Contents::Write, Duration::ZERO),
            "a descriptor open only for reading took the write lock"
        );
        let held = std::fs::File::open(State::path(dir.path())).unwrap();
        held.lock().unwrap();
        let read_lock = std::fs::File::open(State::path(dir.path())).unwrap();
        assert!(fsutil::lock_contents_within(
            &read_lock,
            fsutil::Contents::Read,
            Duration::ZERO
        ));
        // Were the read held up, it would wait the whole minute.
        let (loaded, _) = load_beside(dir.path(), Duration::from_secs(60));
        assert_eq!(loaded.unwrap().as_deref(), Some("stable"));
    }

    /// Loads the state of `dir` on another thread, waiting at most `patience` for a
    /// write into the file: the channel it found and how long the load took. Fails the
    /// test when the load takes 30 s.
    fn load_beside(
        dir: &Path,
        patience: std::time::Duration,
    ) -> (Result<Option<String>>, std::time::Duration) {
        use std::sync::mpsc::channel;
        use std::time::{Duration, Instant};
        let (read, wait) = channel();
        let reader = {
            let dir = dir.to_path_buf();
            std::thread::spawn(move || {
                let started = Instant::now();
                let st = State::load_within(&dir, patience);
                let _ = read.send((st.map(|s| s.map(|s| s.channel)), started.elapsed()));
            })
        };
        let found = wait
            .recv_timeout(Duration::from_secs(30))
            .expect("the read waited 30 s for a lock held on the state file");
        reader.join().unwrap();
        found
    }

    /// A read waits for no change of the state: a host whose event callback (which runs
    /// under the state lock) waits for another thread that reads the status would wait
    /// for ever.
    #[test]
    fn a_load_does_not_wait_for_the_holder_of_the_state_lock() {
        use std::sync::mpsc::channel;
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        State::initial("stable", None).save(dir.path()).unwrap();
        let _lock = State::lock(dir.path(), |_| {}).unwrap();
        // Under the lock, as in a callback, on this thread and on another.
        assert_eq!(State::load(dir.path()).unwrap().unwrap().channel, "stable");
        let (read, wait) = channel();
        let reader = {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let st = State::load(&dir).unwrap().unwrap();
                let _ = read.send(st.channel);
            })
        };
        let channel = wait.recv_timeout(Duration::from_secs(10));
        assert_eq!(
            channel.as_deref(),
            Ok("stable"),
            "the read waited for the lock"
        );
        reader.join().unwrap();
    }

    /// A read waits while the file it opened is written in place (a save on a full disk
    /// into the spare, which an earlier reader may have opened as `state.json`), and reads
    /// the whole of what was written.
    #[test]
    fn a_load_waits_for_a_write_in_place_of_the_file_it_opened() {
        use std::io::{Seek, Write};
        use std::sync::mpsc::channel;
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        State::initial("stable", None).save(dir.path()).unwrap();
        let path = State::path(dir.path());
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        let mut preview = serde_json::to_vec_pretty(&State::initial("preview", None)).unwrap();
        preview.resize(len, b' ');
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let writing = fsutil::Contents::Write;
        assert!(fsutil::lock_contents_within(&file, writing, Duration::ZERO));
        let (read, wait) = channel();
        let reader = {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let st = State::load(&dir).unwrap().unwrap();
                read.send(st.channel).unwrap();
            })
        };
        assert!(
            wait.recv_timeout(Duration::from_millis(300)).is_err(),
            "read under a write"
        );
        file.write_all(&preview[..len / 2]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        file.write_all(&preview[len / 2..]).unwrap();
        file.rewind().unwrap();
        drop(file);
        assert_eq!(
            wait.recv_timeout(Duration::from_secs(10)).unwrap(),
            "preview"
        );
        reader.join().unwrap();
    }

    /// A FIFO where `state.json` should be (planted by another user who may write the
    /// state directory, as under a download's name) is refused at once, naming what it
    /// is: `status` and the startup step must not wait for a writer for ever (a launcher
    /// starts the app anyway once its step fails, never while it hangs).
    #[test]
    fn a_fifo_in_place_of_the_state_file_is_refused_at_once() {
        use std::sync::mpsc::channel;
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let made = {
            let _spawning = crate::fsutil::tests::spawn_lock();
            std::process::Command::new("mkfifo")
                .arg(State::path(dir.path()))
                .status()
                .unwrap()
        };
        assert!(made.success());
        let (done, wait) = channel();
        let reader = {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let _ = done.send(State::load(&dir).map(drop).map_err(|e| e.to_string()));
            })
        };
        let Ok(loaded) = wait.recv_timeout(Duration::from_secs(10)) else {
            // Let the stuck reader go before failing.
            let _ = std::fs::write(State::path(dir.path()), b"");
            panic!("the load still waits on the FIFO after 10 s");
        };
        reader.join().unwrap();
        let err = loaded.unwrap_err();
        assert!(
            err.contains("expected a regular file, found a FIFO"),
            "{err}"
        );
    }

    /// A save cut off by a power cut leaves its temp file; the next save removes it.
    #[test]
    fn a_save_removes_the_temp_files_of_saves_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::initial("stable", None);
        let stale = dir.path().join("state.json.tmp-4000000");
        std::fs::write(&stale, b"{\"schema\": 1, \"prim").unwrap();
        let other = dir.path().join("state.json.old");
        std::fs::write(&other, b"kept").unwrap();
        s.save(dir.path()).unwrap();
        assert!(!stale.exists());
        assert!(other.exists(), "only the state's temp files are removed");
        assert_eq!(State::load(dir.path()).unwrap().unwrap(), s);
    }

    #[test]
    fn corrupt_or_newer_state_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(State::path(dir.path()), b"{\"schema\": 1, \"prim").unwrap();
        let e = State::load(dir.path()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidState);
        assert!(e.message().contains("corrupt"), "{e}");
        // Where the damage is, so a hand edit is fixed rather than the state thrown away.
        assert!(e.message().contains("line 1 column 19"), "{e}");
        let mut s = serde_json::to_value(State::initial("stable", None)).unwrap();
        let text = s.to_string();
        let edited = format!("{},}}", &text[..text.len() - 1]);
        std::fs::write(State::path(dir.path()), edited).unwrap();
        let e = State::load(dir.path()).unwrap_err();
        assert!(e.message().contains("trailing comma"), "{e}");
        std::fs::write(State::path(dir.path()), b"").unwrap();
        let e = State::load(dir.path()).unwrap_err();
        assert!(e.message().contains("found an empty file"), "{e}");
        s["schema"] = 99.into();
        std::fs::write(State::path(dir.path()), s.to_string()).unwrap();
        let e = State::load(dir.path()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidState);
        assert!(e.message().contains("schema 99"), "{e}");
        s["schema"] = 0.into();
        std::fs::write(State::path(dir.path()), s.to_string()).unwrap();
        let e = State::load(dir.path()).unwrap_err();
        assert!(e.message().contains("found schema 0"), "{e}");
    }

    /// serde reads a struct from an array too, field by field in order: a state.json that
    /// was an array said "`[0]`: invalid type: map, expected u64", naming serde's reading
    /// of it rather than what the file holds. It is an `invalid_state` naming the file and
    /// what it is, and the file is left for a person to look at.
    #[test]
    fn a_state_file_that_is_not_an_object_is_named_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state = serde_json::to_value(State::initial("stable", None)).unwrap();
        let values: Vec<serde_json::Value> = state.as_object().unwrap().values().cloned().collect();
        let array = serde_json::Value::from(values).to_string();
        let path = State::path(dir.path());
        for (text, found) in [
            (array.as_str(), "an array (`[`)"),
            ("[1]", "an array (`[`)"),
            ("1", "a number (`1`)"),
            ("\"state\"", "a string (`\"`)"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = State::load(dir.path()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
            assert!(e.message().starts_with(&path.display().to_string()), "{e}");
            assert!(
                e.message()
                    .contains(&format!("{found}, not a JSON object (`{{`)")),
                "{e}"
            );
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
    }

    #[test]
    fn a_symlinked_state_file_is_written_where_it_points() {
        let dir = tempfile::tempdir().unwrap();
        let (state_dir, data) = (dir.path().join("state"), dir.path().join("data"));
        std::fs::create_dir_all(&state_dir).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        State::initial("stable", None).save(&data).unwrap();
        std::os::unix::fs::symlink(State::path(&data), State::path(&state_dir)).unwrap();
        let mut s = State::load(&state_dir).unwrap().unwrap();
        s.channel = "preview".into();
        s.save(&state_dir).unwrap();
        let link = std::fs::symlink_metadata(State::path(&state_dir)).unwrap();
        assert!(link.file_type().is_symlink());
        assert_eq!(State::load(&data).unwrap().unwrap().channel, "preview");

        // A relative link to a file not written yet (the first boot on a fresh partition).
        let fresh = dir.path().join("fresh");
        std::fs::create_dir_all(fresh.join("state")).unwrap();
        std::fs::create_dir_all(fresh.join("data")).unwrap();
        std::os::unix::fs::symlink("../data/state.json", State::path(&fresh.join("state")))
            .unwrap();
        assert!(State::load(&fresh.join("state")).unwrap().is_none());
        s.save(&fresh.join("state")).unwrap();
        assert_eq!(
            State::load(&fresh.join("data")).unwrap().unwrap().channel,
            "preview"
        );
        assert!(std::fs::symlink_metadata(State::path(&fresh.join("state")))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    /// Links planted in the state directory by another user who may write it (a group's
    /// launcher, or the app user when root runs `evergreen boot` there) make no operation
    /// open, truncate, fill or change the mode of the file they point to.
    #[test]
    fn links_planted_in_the_state_directory_are_never_written_through() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("secret");
        std::fs::write(&victim, b"private").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let state_dir = dir.path().join("state");
        std::fs::create_dir(&state_dir).unwrap();
        let unchanged = |what: &str| {
            let meta = std::fs::metadata(&victim).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{what}");
            assert_eq!(std::fs::read(&victim).unwrap(), b"private", "{what}");
        };

        // In place of a lock file: refused, naming the link.
        std::os::unix::fs::symlink(&victim, state_dir.join(STATE_LOCK)).unwrap();
        let err = State::lock(&state_dir, |_| {}).map(drop).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(err.message().contains("found a symbolic link"), "{err}");
        unchanged("lock");
        // One pointing nowhere creates nothing there.
        let nowhere = dir.path().join("nologin");
        std::os::unix::fs::symlink(&nowhere, state_dir.join(WORK_LOCK)).unwrap();
        assert!(State::work_lock(&state_dir, |_| {}, None).is_err());
        assert!(!nowhere.exists());
        std::fs::remove_file(state_dir.join(STATE_LOCK)).unwrap();

        // In place of the temp file a save writes (its name is predictable): the save
        // goes ahead in a file of its own.
        let tmp = fsutil::temp_path(&State::path(&state_dir));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        State::initial("stable", None).save(&state_dir).unwrap();
        unchanged("temp");
        assert!(State::path(&state_dir)
            .symlink_metadata()
            .unwrap()
            .is_file());
    }

    /// A `state.json` symlink is followed only when this user or root made it: one another
    /// user planted is refused by loads and saves alike. (Needs root to make a link of
    /// another user's; skipped otherwise.)
    #[test]
    fn a_state_file_symlink_of_another_user_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("secret");
        std::fs::write(&victim, b"private").unwrap();
        let state_dir = dir.path().join("state");
        std::fs::create_dir(&state_dir).unwrap();
        let link = State::path(&state_dir);
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        if std::os::unix::fs::lchown(&link, Some(65534), None).is_err() {
            return;
        }
        for err in [
            State::load(&state_dir).map(drop).unwrap_err(),
            State::initial("stable", None).save(&state_dir).unwrap_err(),
        ] {
            assert_eq!(err.kind(), ErrorKind::Io, "{err}");
            assert!(err.message().contains("symlink of user 65534"), "{err}");
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"private");
    }

    /// Failed checks in a row keep one `check_failed` entry, the newest; another event
    /// recorded between two of them stays, and the next failure comes after it. A run of
    /// failures after a passing check (which records nothing and sets the count back to
    /// 0) starts an entry of its own: the last run's error stays in the history.
    #[test]
    fn each_run_of_failed_checks_keeps_one_entry_of_its_own() {
        let mut s = State::initial("stable", Some(Version::new(1, 0, 0)));
        let at = Timestamp::from_unix;
        let entries = |s: &State| {
            s.history
                .iter()
                .map(|h| (h.at.unix(), h.event.clone(), h.detail.clone()))
                .collect::<Vec<_>>()
        };
        let row = |t: i64, event: &str, detail: &str| (t, event.to_string(), detail.to_string());
        for (count, t) in [(1, 10), (2, 20), (3, 30)] {
            s.check_failures = count;
            s.record_check_failure(at(t), "error[expired]: first run");
        }
        assert_eq!(
            entries(&s),
            [row(
                30,
                CHECK_FAILED,
                "3 in a row: error[expired]: first run"
            )]
        );
        s.record(at(35), "rolled_back", "slot b gave up");
        s.check_failures = 4;
        s.record_check_failure(at(40), "error[expired]: first run");
        // A passing check set the count back to 0: this failure is the first of a new run.
        s.check_failures = 1;
        s.record_check_failure(at(50), "error[io]: second run");
        assert_eq!(
            entries(&s),
            [
                row(30, CHECK_FAILED, "3 in a row: error[expired]: first run"),
                row(35, "rolled_back", "slot b gave up"),
                row(40, CHECK_FAILED, "4 in a row: error[expired]: first run"),
                row(50, CHECK_FAILED, "1 in a row: error[io]: second run"),
            ]
        );
    }

    #[test]
    fn invariants_catch_an_installing_primary() {
        let mut s = State::initial("stable", None);
        s.a.status = SlotStatus::Installing;
        assert_eq!(
            s.check_invariants().unwrap_err().kind(),
            ErrorKind::InvalidState
        );
    }

    /// A device that ran the app before Evergreen (`current_version`) starts with that
    /// release good in slot `a`, the slot a first update's trial rolls back to; a device
    /// with nothing installed starts with both slots empty.
    #[test]
    fn the_first_state_holds_the_release_installed_by_other_means() {
        let adopted = State::initial("stable", Some(Version::new(0, 9, 0)));
        assert_eq!(adopted.primary, Slot::A);
        assert_eq!(adopted.a.status, SlotStatus::Good);
        assert_eq!(adopted.a.version, Some(Version::new(0, 9, 0)));
        assert_eq!(adopted.installed_version(), Some(&Version::new(0, 9, 0)));
        let fresh = State::initial("stable", None);
        assert_eq!(
            (fresh.a.status, fresh.b.status),
            (SlotStatus::Empty, SlotStatus::Empty)
        );
        assert_eq!(fresh.installed_version(), None);
    }

    /// A trial record no operation saves (a hand edit, a restore from another device) is
    /// refused at the load, naming what was expected and what was found: acted upon, the
    /// startup step would count starts of, or roll back from, a slot that is not running.
    /// A trial as operations save it (just begun, counted down, or begun by a build that
    /// did not record `tries`) loads as it is.
    #[test]
    fn a_trial_record_no_operation_saves_is_refused_at_the_load() {
        // Slot b on trial with 1.1.0 after 1.0.0 was good in slot a.
        let on_trial = |tries_left: u32, tries: u32| {
            let mut s = State::initial("stable", Some(Version::new(1, 0, 0)));
            s.primary = Slot::B;
            s.b.status = SlotStatus::Trial;
            s.b.version = Some(Version::new(1, 1, 0));
            s.trial = Some(Trial {
                slot: Slot::B,
                tries_left,
                tries,
            });
            s
        };
        let moved = |mut s: State| {
            s.trial.as_mut().unwrap().slot = Slot::A;
            s
        };
        let status = |mut s: State, status: SlotStatus| {
            s.b.status = status;
            s
        };
        let without_record = |mut s: State| {
            s.trial = None;
            s
        };
        // (what, state, `None` when it loads, else what the error names)
        let rows: [(&str, State, Option<&str>); 8] = [
            ("just begun", on_trial(3, 3), None),
            ("counted down", on_trial(1, 3), None),
            ("begun by an older build", on_trial(3, 0), None),
            ("confirmed", status(without_record(on_trial(3, 3)), SlotStatus::Good), None),
            (
                "more starts left than it began with",
                on_trial(4, 3),
                Some("at most the 3 starts the trial of slot b began with left (`trial.tries_left`), found 4"),
            ),
            (
                "the trial of the fallback",
                moved(on_trial(3, 3)),
                Some("the trial (`trial.slot`) on the primary slot b, found it on slot a"),
            ),
            (
                "a trial of a good slot",
                status(on_trial(3, 3), SlotStatus::Good),
                Some("the primary slot b, which has a trial, to have status trial, found good"),
            ),
            (
                "status trial with no trial",
                without_record(on_trial(3, 3)),
                Some("a trial record (`trial`) for the primary slot b, which has status trial, found none"),
            ),
        ];
        for (what, state, refused) in rows {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(State::path(dir.path()), serde_json::to_vec(&state).unwrap()).unwrap();
            match (State::load(dir.path()), refused) {
                (Ok(back), None) => assert_eq!(back, Some(state), "{what}"),
                (Err(e), Some(found)) => {
                    assert_eq!(e.kind(), ErrorKind::InvalidState, "{what}: {e}");
                    assert!(
                        e.message().contains(&format!("expected {found}")),
                        "{what}: {e}"
                    );
                }
                (Ok(_), Some(found)) => {
                    panic!("{what}: expected the load refused ({found}), found it loaded")
                }
                (Err(e), None) => panic!("{what}: expected the state loaded, found {e}"),
            }
        }
    }

    /// A check made under other manifest keys, or on another chain of roots, started its
    /// freshness afresh: the newest `issued`, the last check and the root version the state
    /// held under the old ones are replaced by the check's, or an `issued` a revoked key
    /// signed far ahead would still bind its successor. Under the same keys, the newest of
    /// both stays (another process may have checked meanwhile).
    #[test]
    fn a_check_under_other_keys_replaces_the_freshness_held_under_the_old_ones() {
        let mut now = State::initial("stable", None);
        (now.manifest_keys, now.root_keys) = ("k1".into(), " r1".into());
        now.newest_issued = Some(Timestamp::from_unix(900));
        now.last_check = Some(Timestamp::from_unix(900));
        now.root_version = Some(3);
        let checked_under = |manifest_keys: &str, root_keys: &str| {
            let mut c = now.clone();
            (c.manifest_keys, c.root_keys) = (manifest_keys.into(), root_keys.into());
            c.newest_issued = Some(Timestamp::from_unix(100));
            c.last_check = Some(Timestamp::from_unix(100));
            c.root_version = Some(1);
            c
        };
        // (what, the check's manifest keys and root keys, the freshness adopted)
        let rows = [
            ("the same keys", "k1", " r1", (900, 900, 3)),
            ("other manifest keys", "k2", " r1", (100, 100, 1)),
            ("another chain of roots", "k1", " r2", (100, 100, 1)),
            ("both", "k2", " r2", (100, 100, 1)),
        ];
        for (what, manifest_keys, root_keys, (issued, checked, root)) in rows {
            let mut st = now.clone();
            st.adopt_check(&checked_under(manifest_keys, root_keys));
            assert_eq!(
                (st.newest_issued, st.last_check, st.root_version),
                (
                    Some(Timestamp::from_unix(issued)),
                    Some(Timestamp::from_unix(checked)),
                    Some(root)
                ),
                "{what}"
            );
            assert_eq!(
                (st.manifest_keys.as_str(), st.root_keys.as_str()),
                (manifest_keys, root_keys),
                "{what}"
            );
        }
    }
}
