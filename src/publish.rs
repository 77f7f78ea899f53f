//! The operator side: make and maintain a signed update repository (DESIGN §4).
//!
//! A [`Repo`] is a directory of static files — `root/N.json`, `channels/<name>.json` and
//! `blobs/sha256/<hex>` — that any HTTP server can serve. Every change re-reads and
//! verifies what it modifies (nothing unverified is ever re-signed), checks that the given
//! secret keys meet the role's threshold before anything is written, and writes each file
//! atomically. Each change holds the repository lock (`<repo>/.lock`) from its first read
//! to its last write, so concurrent commands take turns instead of losing each other's work.
//!
//! ```
//! use evergreen::manifest::ArtifactKind;
//! use evergreen::publish::{ReleaseOptions, Repo};
//! use evergreen::trust::{KeySet, SecretKey};
//! use evergreen::Timestamp;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let key = SecretKey::generate().unwrap();
//! let keys = KeySet::new(vec![key.public()], 1).unwrap();
//! let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
//! let repo = Repo::init(dir.path().join("repo"), "com.acme.app", &keys, &keys, &[&key], 365, now).unwrap();
//!
//! let app = dir.path().join("app.bin");
//! std::fs::write(&app, b"the program").unwrap();
//! let version = "1.0.0".parse().unwrap();
//! let manifest = repo
//!     .release("stable", &version, "x86_64-linux", &[("app", app.as_path(), ArtifactKind::File)],
//!              &ReleaseOptions::new(now), &[&key])
//!     .unwrap();
//! assert_eq!(manifest.sequence, 1);
//! assert_eq!(repo.verify(now).unwrap().channels[0].versions, [version]);
//! ```

use crate::error::{Error, ErrorKind, Result};
use crate::fetch::CancelToken;
use crate::fsutil;
use crate::manifest::{
    self, Artifact, ArtifactKind, Component, Compression, Expect, Freshness, Manifest, Release,
    Rollout, RolloutStage, TargetRelease, DEFAULT_MAX_METADATA_BYTES,
};
use crate::name_map::NameMap;
use crate::select;
use crate::stage;
use crate::time::Timestamp;
use crate::trust::{self, KeySet, PublicKey, Role, Root, RootKey, SecretKey, TrustedRoot};
use semver::Version;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// How long a new channel's manifest stays valid when no expiry is given: clients refuse
/// it afterwards, so an operator must re-sign (`resign`) at least this often. A change to
/// an existing channel without an expiry keeps the validity the channel has.
pub const DEFAULT_MANIFEST_DAYS: u32 = 30;
/// The lock file in the repository directory. It is local bookkeeping: nothing reads its
/// content, `verify` ignores it and it need not be uploaded.
pub const LOCK_FILE: &str = ".lock";
/// How long a root stays valid when no expiry is given.
pub const DEFAULT_ROOT_DAYS: u32 = 365;
/// The directories commands write into, each file by way of a temp file beside it
/// ([`fsutil::temp_path`]).
const WRITTEN_DIRS: [&str; 3] = ["root", "channels", "blobs/sha256"];

/// A signed update repository on disk.
#[derive(Debug, Clone)]
pub struct Repo {
    root: PathBuf,
    cancel: CancelToken,
    on_wait: WaitNotice,
}

/// What a command calls, with the lock file's path, before it waits for another command
/// that holds the repository lock.
#[derive(Clone, Default)]
struct WaitNotice(Option<std::sync::Arc<NoticeFn>>);

/// The function of a [`WaitNotice`].
type NoticeFn = dyn Fn(&Path) + Send + Sync;

impl std::fmt::Debug for WaitNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

/// What a release carries besides its components.
#[derive(Debug, Clone)]
pub struct ReleaseOptions {
    /// Release notes shown to users.
    pub notes: String,
    /// Start a staged rollout at this percentage (none: everyone at once).
    pub rollout_percent: Option<f64>,
    /// A forced update.
    pub critical: bool,
    /// Devices below this version must take a stepping stone first.
    pub min_version: Option<Version>,
    /// The anti-rollback counter of this release.
    pub security_version: u64,
    /// Validity of the re-signed manifest (default: the channel's current validity, or
    /// [`DEFAULT_MANIFEST_DAYS`] for a new channel).
    pub expires_in_days: Option<u32>,
    /// The time of publication (issued, published, the first rollout stage).
    pub now: Timestamp,
    /// Image components published as they are even when they are gzip data (no
    /// `compression`): a compressed kernel or FIT image the bootloader reads compressed.
    /// Every other gzip image is published compressed, and devices decompress it.
    pub raw_images: Vec<String>,
}

impl ReleaseOptions {
    /// Defaults: no notes, no rollout, not critical, security version 0, the channel's
    /// validity.
    pub fn new(now: Timestamp) -> ReleaseOptions {
        ReleaseOptions {
            notes: String::new(),
            rollout_percent: None,
            critical: false,
            min_version: None,
            security_version: 0,
            expires_in_days: None,
            now,
            raw_images: Vec::new(),
        }
    }
}

/// What a key rotation changes; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct RotateOptions {
    /// The new root keys.
    pub root_keys: Option<Vec<PublicKey>>,
    /// The new root threshold.
    pub root_threshold: Option<usize>,
    /// The new manifest keys.
    pub manifest_keys: Option<Vec<PublicKey>>,
    /// The new manifest threshold.
    pub manifest_threshold: Option<usize>,
    /// Validity of the new root (default [`DEFAULT_ROOT_DAYS`]).
    pub expires_in_days: Option<u32>,
    /// Validity of the channels re-signed when the manifest keys change (default: each
    /// channel's current validity).
    pub manifest_expires_in_days: Option<u32>,
}

/// Who signs a change to an existing or promoted-to channel, when, and for how long the
/// re-signed manifest stays valid: the last argument of [`Repo::promote`],
/// [`Repo::rollout`], [`Repo::resign`] and [`Repo::prune`].
///
/// ```
/// # use evergreen::publish::Signing;
/// # use evergreen::trust::SecretKey;
/// let key = SecretKey::generate()?;
/// let now: evergreen::Timestamp = "2026-11-22T10:00:00Z".parse()?;
/// let signers = [&key];
/// // The channel's current validity is kept...
/// let keep = Signing::new(&signers, now);
/// assert_eq!(keep.expires_in_days, None);
/// // ...unless a new one is given.
/// assert_eq!(keep.valid_for(Some(7)).expires_in_days, Some(7));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Signing<'a> {
    /// The manifest keys that sign; a threshold of the root's manifest keys must be among
    /// them, checked before anything is written.
    pub signers: &'a [&'a SecretKey],
    /// The time of the change: the manifest's `issued`, and the start of a rollout stage.
    pub now: Timestamp,
    /// Validity of the re-signed manifest in days (default: the channel's current
    /// validity, or [`DEFAULT_MANIFEST_DAYS`] for a channel a promotion starts).
    pub expires_in_days: Option<u32>,
}

impl<'a> Signing<'a> {
    /// Signed by `signers` at `now`, keeping the channel's validity.
    pub fn new(signers: &'a [&'a SecretKey], now: Timestamp) -> Signing<'a> {
        Signing {
            signers,
            now,
            expires_in_days: None,
        }
    }

    /// The same, with the manifest valid for `days` (`None`: the channel's validity).
    pub fn valid_for(self, days: Option<u32>) -> Signing<'a> {
        Signing {
            expires_in_days: days,
            ..self
        }
    }
}

/// What [`Repo::rotate`] wrote.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The new root.
    pub root: TrustedRoot,
    /// The channels re-signed with new manifest keys, in name order; none when the manifest
    /// keys stayed the same.
    pub channels: Vec<Manifest>,
}

/// A channel [`Repo::verify`] found sound, with when it was issued.
struct VerifiedChannel {
    issued: Timestamp,
    summary: ChannelSummary,
}

/// How soon a document still valid at `now` expires, in words, when that is less than
/// `window_secs` away.
fn expires_soon(expires: Timestamp, now: Timestamp, window_secs: i64) -> Option<String> {
    let left = expires.unix().saturating_sub(now.unix());
    if left >= window_secs {
        return None;
    }
    Some(match (left / 86_400, left / 3_600) {
        (0, 0) => "under an hour".to_string(),
        (0, 1) => "1 hour".to_string(),
        (0, hours) => format!("{hours} hours"),
        (1, _) => "1 day".to_string(),
        (days, _) => format!("{days} days"),
    })
}

/// How long before a channel manifest issued at `issued` expires at `expires` `verify`
/// warns: [`EXPIRY_WARNING_DAYS`], or half its validity when that is shorter (a channel
/// valid for 7 days and re-signed every 3 is in time).
fn channel_warning_secs(issued: Timestamp, expires: Timestamp) -> i64 {
    let half = expires.unix().saturating_sub(issued.unix()) / 2;
    (i64::from(EXPIRY_WARNING_DAYS) * 86_400).min(half.max(0))
}

/// A channel manifest that expires within this many days is warned about by `verify`:
/// the weekly re-sign docs/operators.md suggests must have missed a run.
pub const EXPIRY_WARNING_DAYS: u32 = 7;
/// A root that expires within this many days is warned about by `verify`: renewing it
/// needs the offline root keys, which takes longer to arrange than a re-sign.
pub const ROOT_EXPIRY_WARNING_DAYS: u32 = 30;

/// The result of [`Repo::verify`].
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Product id.
    pub product: String,
    /// Version of the newest root.
    pub root_version: u64,
    /// When the newest root expires.
    pub root_expires: Timestamp,
    /// Every channel, by name.
    pub channels: Vec<ChannelSummary>,
    /// Temp files in the repository: those of a command interrupted (killed, crashed) that
    /// the next change removes, or of a change under way. They are no part of the
    /// repository, and not to be uploaded. (In JSON as text, lossy where a path is not
    /// UTF-8.)
    #[serde(serialize_with = "paths_as_text")]
    pub stray_temps: Vec<PathBuf>,
    /// The root or channel manifests that expire soon ([`ROOT_EXPIRY_WARNING_DAYS`],
    /// [`EXPIRY_WARNING_DAYS`]), each in a sentence naming the command that renews it.
    pub warnings: Vec<String>,
}

/// `paths` as JSON strings, each exact when UTF-8 and lossy when not: a report must not
/// fail to print over a directory's name.
fn paths_as_text<S: serde::Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(paths.iter().map(|p| p.to_string_lossy()))
}

/// One verified channel.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelSummary {
    /// Channel name.
    pub channel: String,
    /// Its manifest's sequence.
    pub sequence: u64,
    /// When its manifest expires.
    pub expires: Timestamp,
    /// The versions it offers.
    pub versions: Vec<Version>,
    /// How many artifact references were checked against their blobs.
    pub blobs_checked: usize,
    /// Devices the channel offers nothing, though a newer release is listed for them
    /// (see [`stranded`]).
    pub stranded: Vec<Stranded>,
}

/// Devices of one target that are offered nothing, only because of a newer release's
/// `min_version` they do not meet: no stepping stone from that `min_version` up has a
/// rollout that reaches them now. In JSON, `target` and either `running` or `below`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stranded {
    /// The target of the devices.
    pub target: String,
    /// Which devices of it.
    #[serde(flatten)]
    pub devices: StrandedDevices,
}

/// Which devices of a target a channel strands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StrandedDevices {
    /// Those running this listed release.
    Running(Version),
    /// Those running any version below this one, older than every release the channel
    /// lists for the target (a release pruned, or never published there): the oldest
    /// version from which a device can still update is this one or a listed release.
    Below(Version),
}

impl Repo {
    /// Creates a repository at `root`: `root/1.json` signed by `signers` (a threshold of
    /// `root_keys` must be among them, checked before anything is written), and empty
    /// `channels/` and `blobs/sha256/`. Refused (`config`) when there is a `root/1.json`,
    /// even one another `init` wrote meanwhile: it is never replaced.
    pub fn init(
        root: impl AsRef<Path>,
        product: &str,
        root_keys: &KeySet,
        manifest_keys: &KeySet,
        signers: &[&SecretKey],
        expires_in_days: u32,
        now: Timestamp,
    ) -> Result<Repo> {
        let repo = Repo::at(root.as_ref());
        if product.is_empty() || product.chars().any(char::is_control) {
            return Err(Error::config(format!(
                "expected a product id such as com.acme.gateway, found {product:?}"
            )));
        }
        let first = repo.root_path(1);
        if first.exists() {
            return Err(repo.already_there(&first));
        }
        let doc = root_document(
            product,
            1,
            expiry(now, expires_in_days)?,
            root_keys,
            manifest_keys,
        );
        let envelope = sign(
            trust::ROOT_TYPE,
            &doc.to_bytes(),
            &[("root", root_keys)],
            signers,
        )?;
        TrustedRoot::pinned(&envelope, DEFAULT_MAX_METADATA_BYTES)?;
        repo.write_first_root(&envelope)?;
        Ok(repo)
    }

    /// Makes the directories and puts `envelope` in as `root/1.json`, under the lock and
    /// never over one already there: of two `init`s run at once, the second fails rather
    /// than replace the root the first one told its operator to pin.
    fn write_first_root(&self, envelope: &[u8]) -> Result<()> {
        // Durable in their parents: root/1.json is synced, and a power cut must not take
        // the directory that holds it. The umask decides the mode: operators who share a
        // repository give their group write with it.
        fsutil::create_dir_all_mode(&self.root, 0o777)?;
        let _lock = self.lock()?;
        for dir in WRITTEN_DIRS {
            fsutil::create_dir_all_mode(&self.root.join(dir), 0o777)?;
        }
        let first = self.root_path(1);
        if !fsutil::write_new_atomic(&first, envelope)? {
            return Err(self.already_there(&first));
        }
        Ok(())
    }

    /// The refusal of an `init` that found `first`, a root already there.
    fn already_there(&self, first: &Path) -> Error {
        Error::config(format!(
            "expected no repository at {}, found {}",
            self.root.display(),
            first.display()
        ))
    }

    /// Opens an existing repository, verifying its root chain from `root/1.json`.
    pub fn open(root: impl AsRef<Path>) -> Result<Repo> {
        let repo = Repo::at(root.as_ref());
        repo.trusted_root()?;
        Ok(repo)
    }

    /// The same repository, its commands stopping at `cancel`, which they check between
    /// the chunks of every file they copy into it or hash (a release's components,
    /// `verify`'s blobs). Such a command fails with [`ErrorKind::Cancelled`], having
    /// removed its partial copy and signed nothing.
    pub fn with_cancel(self, cancel: CancelToken) -> Repo {
        Repo { cancel, ..self }
    }

    /// The same repository, its commands calling `notice` with the lock file's path once
    /// before they wait for another command (another process, or another thread) that is
    /// changing the repository: every change holds its lock from its first read to its
    /// last write. The CLI says so on stderr, so that a publish run beside another one is
    /// not a silent stop.
    pub fn with_wait_notice(self, notice: impl Fn(&Path) + Send + Sync + 'static) -> Repo {
        Repo {
            on_wait: WaitNotice(Some(std::sync::Arc::new(notice))),
            ..self
        }
    }

    fn at(root: &Path) -> Repo {
        Repo {
            root: root.to_path_buf(),
            cancel: CancelToken::new(),
            on_wait: WaitNotice::default(),
        }
    }

    /// The repository directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The newest root, reached from `root/1.json` through every `root/N.json`, each
    /// signed by the previous root's keys and its own. Expiry is not checked here: an
    /// operator must still be able to rotate an expired root; [`Repo::verify`] checks it.
    pub fn trusted_root(&self) -> Result<TrustedRoot> {
        let first = self.root_path(1);
        let bytes = std::fs::read(&first)
            .map_err(|e| Error::io("expected a repository root document at", &first, e))?;
        let mut current = TrustedRoot::pinned(&bytes, DEFAULT_MAX_METADATA_BYTES)
            .map_err(|e| e.context(first.display()))?;
        loop {
            let next = self.root_path(current.root().version + 1);
            let Some(bytes) = read_optional(&next)? else {
                return Ok(current);
            };
            current = current
                .rotate(&bytes, DEFAULT_MAX_METADATA_BYTES)
                .map_err(|e| e.context(next.display()))?;
        }
    }

    /// Publishes `version` for `target` on `channel` (created if missing): copies each
    /// component's file into `blobs/sha256/`, adds the release (or this target to an
    /// existing release of the same version, keeping its other fields), bumps the sequence
    /// and signs with the manifest keys among `signers`. Each component's version is the
    /// release version, unless its bytes are those of the same component in an earlier
    /// release (then it keeps that version).
    ///
    /// Refused (`config`) when an image component comes with others (image slots take
    /// one image alone, dir slots none), when its `min_version` is not below its version, or strands the
    /// devices below it (no release on the channel from `min_version` up to it reaches
    /// them, as [`Repo::promote`] checks), or when, for
    /// `target`, its security version is below that of an older release on the channel or
    /// above that of a newer one: devices could never install it, or the newer one after
    /// it. Adding a target is checked the same way, with the release's security version
    /// and `min_version` (its devices below that need a stepping stone for the target).
    pub fn release(
        &self,
        channel: &str,
        version: &Version,
        target: &str,
        components: &[(&str, &Path, ArtifactKind)],
        opts: &ReleaseOptions,
        signers: &[&SecretKey],
    ) -> Result<Manifest> {
        check_components(components)?;
        check_target(target)?;
        if let Some(p) = opts.rollout_percent {
            check_percent(p)?;
        }
        if let Some(min) = &opts.min_version {
            check_min_version(version, min)?;
        }
        let _lock = self.lock()?;
        let trusted = self.trusted_root()?;
        let edit = |m: &mut Manifest| {
            let existing = m
                .releases
                .iter()
                .position(|r| same_version(&r.version, version));
            if let Some(r) = existing.map(|i| &m.releases[i]) {
                // Devices order versions by precedence: another build of a listed version
                // would be no update for them, and could stand in for one that failed.
                if r.version != *version {
                    return Err(Error::config(format!(
                        "expected a new version, found {} already on channel {channel} (build metadata does not make {version} a new version); publish a higher version instead",
                        r.version
                    )));
                }
                if r.targets.contains_key(target) {
                    return Err(Error::config(format!(
                        "expected a new version or target, found {version} for {target} already on channel {channel}; publish a higher version instead"
                    )));
                }
                check_same_release(r, opts, target)?;
            }
            // A target added to a release takes the release's security version.
            let security_version =
                existing.map_or(opts.security_version, |i| m.releases[i].security_version);
            check_security_order(m, version, security_version, target)?;
            // The stepping-stone checks go by the release's targets, never by its
            // components: they run, with the clock's (which `bump` makes again), before a
            // component (an image of hundreds of MB) is copied into blobs/ for a release
            // that is then refused.
            check_clock(m, opts.now)?;
            let no_components = || TargetRelease {
                components: NameMap::new(),
            };
            // Where the target goes: a release listed already, or a new one.
            enum Into {
                Listed(usize),
                New(Release),
            }
            let into = match existing {
                Some(i) => {
                    // Devices of `target` meet the release's min_version for the first
                    // time: as for a new release, one must lead them up to it.
                    let mut added = m.releases[i].clone();
                    added.targets = NameMap::from([(target, no_components())]);
                    let mut others = m.clone();
                    others.releases.remove(i);
                    check_stepping_stone(&others, &added, opts.now)?;
                    Into::Listed(i)
                }
                None => {
                    let release = Release {
                        version: version.clone(),
                        published: Some(opts.now),
                        notes: opts.notes.clone(),
                        min_version: opts.min_version.clone(),
                        critical: opts.critical,
                        security_version: opts.security_version,
                        rollout: opts.rollout_percent.map(|p| single_stage(opts.now, p)),
                        targets: NameMap::from([(target, no_components())]),
                    };
                    // As for promote: a min_version no release on the channel leads up to
                    // would leave the devices below it offered nothing.
                    check_stepping_stone(m, &release, opts.now)?;
                    Into::New(release)
                }
            };
            let mut built = NameMap::new();
            for (name, path, kind) in components {
                let artifact = self
                    .add_blob(path, *kind, opts.raw_images.iter().any(|r| r == name))
                    .map_err(|e| e.context(format!("component {name}")))?;
                // A component installed as before (the same bytes, kind and file name)
                // keeps the version it had, so the device's diff shows it unchanged.
                let version = unchanged_version(m, target, name, &artifact)
                    .unwrap_or_else(|| version.to_string());
                built.insert(*name, Component { version, artifact });
            }
            let target_release = TargetRelease { components: built };
            match into {
                Into::Listed(i) => {
                    m.releases[i].targets.insert(target, target_release);
                }
                Into::New(mut release) => {
                    release.targets.insert(target, target_release);
                    m.releases.push(release);
                    m.releases
                        .sort_by(|a, b| a.version.cmp_precedence(&b.version));
                }
            }
            Ok(Edit::Changed)
        };
        let change = Change {
            channel,
            create: true,
            expires_in_days: opts.expires_in_days,
            now: opts.now,
        };
        self.update_channel(&trusted, &change, signers, edit)
    }

    /// Copies release `version` (all its targets) from channel `from` to `to`, with a fresh
    /// rollout at `rollout_percent` if given (else everyone at once), and bumps `to`'s
    /// sequence, keeping its validity unless `sign` gives one (a new channel:
    /// [`DEFAULT_MANIFEST_DAYS`]). A release at 0 % on `from` now (halted, or its rollout
    /// not started yet) is refused unless `rollout_percent` is given: promoting by version
    /// number alone would spread a release pulled as broken to everyone on `to`.
    pub fn promote(
        &self,
        version: &Version,
        from: &str,
        to: &str,
        rollout_percent: Option<f64>,
        sign: &Signing,
    ) -> Result<Manifest> {
        let now = sign.now;
        if from == to {
            return Err(Error::config(format!(
                "expected two different channels, found {from:?} twice"
            )));
        }
        if let Some(p) = rollout_percent {
            check_percent(p)?;
        }
        let _lock = self.lock()?;
        let trusted = self.trusted_root()?;
        let source = self
            .load_channel(&trusted, from)?
            .ok_or_else(|| missing(from))?;
        let mut release = source.releases[listed_release(&source, version)?].clone();
        if rollout_percent.is_none() {
            check_not_halted(&release, from, now)?;
        }
        release.rollout = rollout_percent.map(|p| single_stage(now, p));
        let edit = |m: &mut Manifest| {
            let same = m
                .releases
                .iter()
                .find(|r| same_version(&r.version, version));
            if let Some(r) = same {
                // A target added on `from` after the promotion: say how it gets to `to`.
                let absent: Vec<&str> = release
                    .targets
                    .keys()
                    .filter(|t| !r.targets.contains_key(t))
                    .map(String::as_str)
                    .collect();
                let how = match absent.as_slice() {
                    [] => String::new(),
                    absent => format!(
                        ", without {} which {from} lists: publish the same files there with `release --channel {to} --version {version} --target …`",
                        absent.join(", ")
                    ),
                };
                return Err(Error::config(format!(
                    "expected {version} not yet on channel {to}, found {} already there{how}",
                    r.version
                )));
            }
            for target in release.targets.keys() {
                check_security_order(m, &release.version, release.security_version, target)?;
            }
            check_stepping_stone(m, &release, now)?;
            m.releases.push(release);
            m.releases
                .sort_by(|a, b| a.version.cmp_precedence(&b.version));
            Ok(Edit::Changed)
        };
        let change = Change {
            channel: to,
            create: true,
            expires_in_days: sign.expires_in_days,
            now,
        };
        self.update_channel(&trusted, &change, sign.signers, edit)
    }

    /// Sets the rollout of `version` on `channel` to `percent` from `sign.now` on (0 halts
    /// it), keeping the earlier stages as history and the channel's validity unless `sign`
    /// gives one. The version is looked up by precedence; another build of it is named in
    /// the `no_such_version` error rather than ramped.
    pub fn rollout(
        &self,
        channel: &str,
        version: &Version,
        percent: f64,
        sign: &Signing,
    ) -> Result<Manifest> {
        let now = sign.now;
        check_percent(percent)?;
        let _lock = self.lock()?;
        let trusted = self.trusted_root()?;
        let edit = |m: &mut Manifest| {
            let i = listed_release(m, version)?;
            let stages = &mut m.releases[i]
                .rollout
                .get_or_insert(Rollout { stages: vec![] })
                .stages;
            if let Some(last) = stages.last().filter(|s| s.at > now) {
                return Err(Error::config(format!(
                    "expected a time at or after the last rollout stage ({}), found {now}",
                    last.at
                )));
            }
            stages.push(RolloutStage { at: now, percent });
            Ok(Edit::Changed)
        };
        self.update_channel(
            &trusted,
            &Change::existing(channel, sign),
            sign.signers,
            edit,
        )
    }

    /// Re-signs `channel` unchanged with a new sequence, issue time and expiry (default:
    /// the channel's current validity).
    pub fn resign(&self, channel: &str, sign: &Signing) -> Result<Manifest> {
        let _lock = self.lock()?;
        let trusted = self.trusted_root()?;
        let change = Change::existing(channel, sign);
        // The new expiry and sequence are the change.
        self.update_channel(&trusted, &change, sign.signers, |_| Ok(Edit::Changed))
    }

    /// Removes old releases from `channel`, re-signing it when something is removed (with
    /// its validity unless `sign` gives one); returns the manifest and the versions removed
    /// (newest first).
    ///
    /// Per target, releases are kept from the newest down to the `keep`-th that is rolled
    /// out to everyone at `now`: a release ramping or halted does not count, since the
    /// devices outside its rollout still take the ones before it. Then whatever else a
    /// device needs is kept, so that none is offered less than before: for a device running
    /// any listed release, one at any listed `min_version`, or one older than all of them,
    /// inside or outside each rollout short of 100 % (any of which may also be halted, or
    /// ramped again, later): when [`select`] offers it a release and would offer none of
    /// those kept, the release it offers stays, until nothing more is added. `select` is
    /// asked with no such rollout reaching the device, with the rollouts as they stand,
    /// and with every release that has, had or will have a stage above 0 % as reaching
    /// everyone; for a device offered nothing with none of them, with each such rollout
    /// reaching it alone. That keeps the stepping stone a device below a `min_version`
    /// takes and the stone before it, and no other release: releases sharing one
    /// `min_version` do not keep each other. Blobs are not touched: they are immutable and
    /// other channels may list them. `keep` must be at least 1.
    ///
    /// ```
    /// # use evergreen::publish::{Repo, ReleaseOptions, Signing};
    /// # use evergreen::manifest::ArtifactKind;
    /// # use evergreen::trust::{KeySet, SecretKey};
    /// # let dir = tempfile::tempdir()?;
    /// # let key = SecretKey::generate()?;
    /// # let keys = KeySet::new(vec![key.public()], 1)?;
    /// # let now = evergreen::Timestamp::now();
    /// # let repo = Repo::init(dir.path().join("repo"), "com.acme.app", &keys, &keys, &[&key], 365, now)?;
    /// # let app = dir.path().join("app.bin");
    /// # std::fs::write(&app, b"v")?;
    /// for v in ["1.0.0", "1.1.0", "1.2.0"] {
    ///     repo.release("nightly", &v.parse().unwrap(), "x86_64-linux",
    ///         &[("app", app.as_path(), ArtifactKind::File)], &ReleaseOptions::new(now), &[&key])?;
    /// }
    /// let (manifest, removed) = repo.prune("nightly", 2, &Signing::new(&[&key], now))?;
    /// assert_eq!(removed, ["1.0.0".parse::<semver::Version>().unwrap()]);
    /// assert_eq!(manifest.releases.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn prune(
        &self,
        channel: &str,
        keep: usize,
        sign: &Signing,
    ) -> Result<(Manifest, Vec<Version>)> {
        let now = sign.now;
        if keep == 0 {
            return Err(Error::config(
                "keep: expected at least 1 release per target to stay, found 0",
            ));
        }
        let _lock = self.lock()?;
        let trusted = self.trusted_root()?;
        let mut removed = Vec::new();
        let edit = |m: &mut Manifest| {
            let kept = releases_to_keep(m, keep, now);
            if kept.len() == m.releases.len() {
                // Nothing to remove: no new sequence for devices to fetch.
                return Ok(Edit::Unchanged);
            }
            let (stay, gone): (Vec<Release>, Vec<Release>) = std::mem::take(&mut m.releases)
                .into_iter()
                .partition(|r| kept.contains(&r.version));
            m.releases = stay;
            removed = gone.into_iter().map(|r| r.version).collect();
            removed.sort_by(|a, b| b.cmp_precedence(a));
            Ok(Edit::Changed)
        };
        let change = Change::existing(channel, sign);
        let manifest = self.update_channel(&trusted, &change, sign.signers, edit)?;
        Ok((manifest, removed))
    }

    /// Writes the next root, signed by a threshold of the current root keys *and* of the
    /// new ones (`signers` holds both), after checking it as a client would. When the
    /// manifest keys change, every channel is re-signed with the new ones (new sequence,
    /// and the channel's validity unless `opts.manifest_expires_in_days`). A root document
    /// outside the chain (past a gap) is refused first: the new root would take its
    /// place in the chain ahead of it. Nothing is written unless every
    /// document could be signed and written: all are made durable under temp names before
    /// any is renamed into place, the root last. A run cut off between the renames can be
    /// run again: channels already signed by the new keys are taken as they are.
    pub fn rotate(
        &self,
        opts: &RotateOptions,
        signers: &[&SecretKey],
        now: Timestamp,
    ) -> Result<Rotation> {
        let _lock = self.lock()?;
        let current = self.trusted_root()?;
        self.check_root_files(current.root().version)?;
        let doc = current.root();
        let old_root_keys = doc.role_keys("root")?;
        let root_keys = merge_keys(&old_root_keys, &opts.root_keys, opts.root_threshold)
            .map_err(|e| e.context("new root role"))?;
        let manifest_keys = merge_keys(
            current.manifest_keys(),
            &opts.manifest_keys,
            opts.manifest_threshold,
        )
        .map_err(|e| e.context("new manifest role"))?;
        let days = opts.expires_in_days.unwrap_or(DEFAULT_ROOT_DAYS);
        let next_doc = root_document(
            &doc.product,
            doc.version + 1,
            expiry(now, days)?,
            &root_keys,
            &manifest_keys,
        );
        let envelope = sign(
            trust::ROOT_TYPE,
            &next_doc.to_bytes(),
            &[("current root", &old_root_keys), ("new root", &root_keys)],
            signers,
        )?;
        let next = current.rotate(&envelope, DEFAULT_MAX_METADATA_BYTES)?;
        let mut files = Vec::new();
        let mut channels = Vec::new();
        // Devices drop the newest `issued` they saw when a manifest key is revoked (DESIGN
        // §5.1 rule 7): that is how a channel once signed with a clock far ahead is undone,
        // so such a rotation may re-sign at a clock behind the channel's last `issued`.
        let revokes = !current
            .manifest_keys()
            .keys()
            .iter()
            .all(|k| next.manifest_keys().keys().contains(k));
        if !same_keys(current.manifest_keys(), next.manifest_keys()) {
            for channel in self.channel_names()? {
                // A channel already signed by the new keys is what an interrupted run of
                // this same rotation left: the new root vouches for it as much.
                let loaded = self
                    .load_channel(&current, &channel)
                    .or_else(|e| self.load_channel(&next, &channel).map_err(|_| e))?;
                let mut m = loaded.ok_or_else(|| missing(&channel))?;
                if !revokes {
                    check_clock(&m, now)?;
                }
                reissue(&mut m, now, opts.manifest_expires_in_days)?;
                let bytes = self.seal_manifest(&next, &m, signers, now)?;
                files.push((self.channel_path(&channel), bytes));
                channels.push(m);
            }
        }
        // The root goes in last: until it is there, the repository is the old one.
        files.push((self.root_path(next.root().version), envelope));
        fsutil::write_all_atomic(&files)?;
        Ok(Rotation {
            root: next,
            channels,
        })
    }

    /// Warnings for release `version` of the channel manifest `m` (as `release` or
    /// `promote` just wrote it), one per target (or for `target` alone when given, as when
    /// it was just added to the release): the older release of
    /// the target on another channel with the highest security version, when that is
    /// above this release's. Devices move between channels and keep their security floor,
    /// so those that confirmed it are never offered this release. Not refused, unlike the
    /// order within a channel: the release may be right for the devices that stayed, and
    /// the floor it would need raises theirs for good.
    pub fn security_floor_warnings(
        &self,
        m: &Manifest,
        version: &Version,
        target: Option<&str>,
    ) -> Result<Vec<String>> {
        let trusted = self.trusted_root()?;
        let channel = m.channel.as_str();
        let release = &m.releases[listed_release(m, version)?];
        let mut others = Vec::new();
        for name in self.channel_names()? {
            if name != channel {
                others.extend(self.load_channel(&trusted, &name)?);
            }
        }
        let mut warnings = Vec::new();
        let targets = release
            .targets
            .keys()
            .filter(|t| target.is_none_or(|only| only == *t));
        for target in targets {
            let above = others
                .iter()
                .filter_map(|o| Some((o, highest_older(&o.releases, version, target)?)))
                .max_by_key(|(_, r)| r.security_version)
                .filter(|(_, r)| r.security_version > release.security_version);
            if let Some((o, r)) = above {
                warnings.push(format!(
                    "release {} of {target} on channel {} has security version {}, and {version} on channel {channel} {}: devices that confirmed {} and move to {channel} are never offered {version} (give it --security-version {} or more if they should be)",
                    r.version, o.channel, r.security_version, release.security_version, r.version, r.security_version
                ));
            }
        }
        Ok(warnings)
    }

    /// Checks the whole repository offline, as a client at `now` would: the root chain and
    /// the newest root's expiry, that every `root/N.json` is part of that chain, every
    /// channel manifest against the newest manifest keys, every referenced blob's size
    /// and SHA-256, and that no zip is one every device would refuse (as `release` checks
    /// before it publishes one: [`ErrorKind::UnsafeArchive`]). Past the root chain, every
    /// problem is collected: one is returned as it is, several as one error of the first
    /// one's kind that lists them all (`N problems: (1) …; (2) …`).
    pub fn verify(&self, now: Timestamp) -> Result<VerifyReport> {
        let (report, problem) = self.verify_all(now)?;
        problem.map_or(Ok(report), Err)
    }

    /// [`Repo::verify`], with the report also when it finds a problem past the root chain:
    /// the channels that verified, the temp files and the expiry warnings, which an
    /// operator fixing the problem needs to hear about too. The problem (all of them, as
    /// `verify` returns them) is the second value; an error is one in the root chain,
    /// before anything else could be checked.
    pub fn verify_all(&self, now: Timestamp) -> Result<(VerifyReport, Option<Error>)> {
        let trusted = self.trusted_root()?;
        self.check_root_files(trusted.root().version)?;
        // Each problem is collected and the checks go on: three expired channels are
        // named in one run, not one a run.
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let root = trusted.root();
        match trusted.check_unexpired(now) {
            Err(e) => problems.push(e),
            Ok(()) => {
                let window = i64::from(ROOT_EXPIRY_WARNING_DAYS) * 86_400;
                warnings.extend(expires_soon(root.expires, now, window).map(|days| {
                format!(
                    "root version {} expires at {}, in {days}: no device accepts what it signs from then on; renew it (evergreen rotate REPO --sign ROOT_KEY)",
                    root.version, root.expires
                )
                }))
            }
        }
        let product = root.product.clone();
        let mut verified = Vec::new();
        for channel in self.channel_names()? {
            match self.verify_channel(&trusted, &channel, now) {
                Ok(c) => verified.push(c),
                Err(e) => problems.push(e),
            }
        }
        let manifests: Vec<&Manifest> = verified.iter().map(|(m, _)| &**m).collect();
        let bad = self.check_listed_blobs(&manifests, &mut problems);
        let mut channels = Vec::new();
        for (m, c) in verified {
            // A channel listing a bad blob did not verify: its problem names it.
            if bad.contains(&m.channel) {
                continue;
            }
            let channel = &m.channel;
            let window = channel_warning_secs(c.issued, c.summary.expires);
            if let Some(days) = expires_soon(c.summary.expires, now, window) {
                warnings.push(format!(
                    "channel {channel} expires at {}, in {days}: devices refuse it from then on; re-sign it (evergreen resign REPO --channel {channel} --sign KEY)",
                    c.summary.expires
                ));
            }
            channels.push(c.summary);
        }
        let problem = match problems.len() {
            0 => None,
            1 => problems.pop(),
            n => {
                let all: Vec<String> = problems
                    .iter()
                    .enumerate()
                    .map(|(i, e)| format!("({}) {e}", i + 1))
                    .collect();
                Some(Error::new(
                    problems[0].kind(),
                    format!("{n} problems: {}", all.join("; ")),
                ))
            }
        };
        let report = VerifyReport {
            product,
            root_version: root.version,
            root_expires: root.expires,
            channels,
            stray_temps: self.stray_temps(),
            warnings,
        };
        Ok((report, problem))
    }

    /// Verifies `channel`'s manifest as a client at `now` would (its blobs are checked
    /// with every channel's, by [`Repo::check_listed_blobs`]).
    fn verify_channel(
        &self,
        trusted: &TrustedRoot,
        channel: &str,
        now: Timestamp,
    ) -> Result<(manifest::Verified<Manifest>, VerifiedChannel)> {
        let path = self.channel_path(channel);
        let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        let m = verify_channel_at(trusted, channel, &path, &bytes, now)?;
        let c = VerifiedChannel {
            issued: m.issued,
            summary: ChannelSummary {
                channel: m.channel.clone(),
                sequence: m.sequence,
                expires: m.expires,
                versions: m.releases.iter().map(|r| r.version.clone()).collect(),
                blobs_checked: blobs_in_repo(&m).count(),
                stranded: stranded(&m, now),
            },
        };
        Ok((m, c))
    }

    /// The temp files in the directories commands write into (see
    /// [`VerifyReport::stray_temps`]).
    fn stray_temps(&self) -> Vec<PathBuf> {
        WRITTEN_DIRS
            .iter()
            .flat_map(|dir| fsutil::temps_in(&self.root.join(dir)))
            .collect()
    }

    /// Refuses a `root/N.json` that is not part of the chain ending at `newest` (see
    /// [`stray_root`]).
    fn check_root_files(&self, newest: u64) -> Result<()> {
        let dir = self.root.join("root");
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let file = entry.file_name();
            let stem = file.to_str().and_then(|f| f.strip_suffix(".json"));
            if let Some(err) = stem.and_then(|stem| stray_root(stem, newest)) {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Checks each blob `manifests` name in the repository once, however many channels
    /// and releases list it (a blob is hashed whole, so twice is twice the reading). A bad
    /// one is one problem, naming where each channel that lists it lists it first; those
    /// channels are returned.
    fn check_listed_blobs(
        &self,
        manifests: &[&Manifest],
        problems: &mut Vec<Error>,
    ) -> HashSet<String> {
        // Per blob, in the order first listed: each channel with its first reference.
        let mut blobs: Vec<(&Artifact, Vec<(&str, String)>)> = Vec::new();
        let mut index: HashMap<BlobKey, usize> = HashMap::new();
        for m in manifests {
            for (r, target, name, a) in blobs_in_repo(m) {
                let key = (a.sha256.clone(), a.size, a.kind, a.installed_size);
                let i = *index.entry(key).or_insert_with(|| {
                    blobs.push((a, Vec::new()));
                    blobs.len() - 1
                });
                let listed = &mut blobs[i].1;
                if listed.iter().all(|(c, _)| *c != m.channel) {
                    let at = format!(
                        "channel {} release {} target {target} component {name}",
                        m.channel, r.version
                    );
                    listed.push((&m.channel, at));
                }
            }
        }
        let mut bad = HashSet::new();
        for (artifact, listed) in blobs {
            let Err(e) = self.check_blob(artifact) else {
                continue;
            };
            let cancelled = e.kind() == ErrorKind::Cancelled;
            let at: Vec<&str> = listed.iter().map(|(_, at)| at.as_str()).collect();
            problems.push(e.context(at.join(", ")));
            bad.extend(listed.into_iter().map(|(c, _)| c.to_owned()));
            if cancelled {
                break;
            }
        }
        bad
    }

    /// Checks the blob `artifact` names: there, of its size and SHA-256, and, for a zip,
    /// one some device would install.
    fn check_blob(&self, artifact: &Artifact) -> Result<()> {
        let path = self.root.join(artifact.blob_path());
        if !path.is_file() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("expected blob {}, found none", path.display()),
            ));
        }
        // A compressed image is inflated as it is hashed: a device compares its slot
        // with what the manifest says it decompresses to.
        let mut probe = match artifact.compression {
            Some(_) => Probe::gzip(),
            None => Probe::Raw,
        };
        let mut file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        // Judged only once the hash matched: a damaged blob is `hash_mismatch`, which a
        // release of the same file repairs, whatever its bytes inflate to.
        let mut bad = None;
        let (size, sha256) = hash_reader(&mut file, &path, &self.cancel, |chunk| {
            if bad.is_none() {
                bad = probe.feed(chunk, &path).err();
            }
            Ok(())
        })?;
        if size != artifact.size || sha256 != artifact.sha256 {
            return Err(Error::new(
                ErrorKind::HashMismatch,
                format!(
                    "blob {}: expected {} bytes with sha256 {}, found {size} bytes with sha256 {sha256}",
                    path.display(),
                    artifact.size,
                    artifact.sha256
                ),
            ));
        }
        if let Some(e) = bad {
            return Err(e);
        }
        if let Some((len, sha)) = probe.finish(&path)? {
            let (size, sha256) = artifact.slot_bytes();
            if (len, sha.as_str()) != (size, sha256) {
                return Err(Error::new(
                    ErrorKind::HashMismatch,
                    format!(
                        "blob {}: expected it to decompress to {size} bytes with sha256 {sha256}, found {len} bytes with sha256 {sha}",
                        path.display()
                    ),
                ));
            }
        }
        // A zip put in by hand, or by a build that skipped `release`'s check, is refused
        // here as every device would refuse it, not first by the fleet.
        match artifact.kind {
            ArtifactKind::Zip => check_zip_for_every_device(&path, &path, artifact.installed_size),
            _ => check_image_not_empty(artifact, &path),
        }
    }

    /// Applies `edit` to the verified manifest of `change.channel`, then bumps, signs
    /// and writes it. The signers are checked first, so a missing key changes nothing; an
    /// expired root signs nothing either, since no device would accept the result.
    fn update_channel(
        &self,
        trusted: &TrustedRoot,
        change: &Change<'_>,
        signers: &[&SecretKey],
        edit: impl FnOnce(&mut Manifest) -> Result<Edit>,
    ) -> Result<Manifest> {
        pick_signers("manifest", trusted.manifest_keys(), signers)
            .map_err(|e| self.with_rotate_hint(trusted, change.channel, e))?;
        trusted.check_unexpired(change.now).map_err(|e| {
            Error::new(
                e.kind(),
                format!(
                    "{}; no device would accept what it signs: renew it first (evergreen rotate REPO --sign ROOT_KEY)",
                    e.message()
                ),
            )
        })?;
        let mut m = match self.load_channel(trusted, change.channel)? {
            Some(m) => m,
            None if change.create => Manifest {
                doc_type: "manifest".to_string(),
                product: trusted.root().product.clone(),
                channel: change.channel.to_string(),
                sequence: 0,
                issued: change.now,
                expires: change.now,
                releases: vec![],
            },
            None => return Err(missing(change.channel)),
        };
        if edit(&mut m)? == Edit::Unchanged {
            return Ok(m);
        }
        bump(&mut m, change.now, change.expires_in_days)?;
        let bytes = self.seal_manifest(trusted, &m, signers, change.now)?;
        fsutil::write_atomic(&self.channel_path(change.channel), &bytes)?;
        Ok(m)
    }

    /// Signs `m` with the manifest keys of `trusted`, then verifies the result exactly as
    /// a client will, so the repository never holds a manifest clients would refuse.
    fn seal_manifest(
        &self,
        trusted: &TrustedRoot,
        m: &Manifest,
        signers: &[&SecretKey],
        now: Timestamp,
    ) -> Result<Vec<u8>> {
        let keys = trusted.manifest_keys();
        let bytes = sign(
            trust::MANIFEST_TYPE,
            &m.to_bytes(),
            &[("manifest", keys)],
            signers,
        )?;
        let expect = Expect {
            product: &trusted.root().product,
            channel: &m.channel,
            now,
            max_bytes: DEFAULT_MAX_METADATA_BYTES,
        };
        manifest::verify(&bytes, keys, &expect, &Freshness::default())?;
        Ok(bytes)
    }

    /// The verified manifest of `channel`, or `None` when the channel does not exist yet.
    fn load_channel(&self, trusted: &TrustedRoot, channel: &str) -> Result<Option<Manifest>> {
        manifest::check_channel_name(channel)?;
        let path = self.channel_path(channel);
        let Some(bytes) = read_optional(&path)? else {
            return Ok(None);
        };
        // Signatures, product, channel and schema are checked; expiry is not, because
        // refreshing an expired manifest is exactly what an operator needs to do.
        let early = Timestamp::from_unix(i64::MIN);
        let verified = verify_channel_at(trusted, channel, &path, &bytes, early)?;
        Ok(Some((*verified).clone()))
    }

    /// Copies `path` into `blobs/sha256/<hex>`, hashing the bytes as they are copied so the
    /// blob's name always matches its content, and describes it as an artifact.
    fn add_blob(&self, path: &Path, kind: ArtifactKind, raw: bool) -> Result<Artifact> {
        let name = match kind {
            ArtifactKind::File => Some(file_name(path)?),
            _ => None,
        };
        let mut src = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let blobs = self.root.join("blobs").join("sha256");
        let tmp = fsutil::temp_path(&blobs.join("incoming"));
        // An image that is gzip data is published compressed, inflated once here as it
        // is copied to learn what a device will decompress into its slot.
        let mut probe = match kind {
            ArtifactKind::Image if !raw => Probe::Undecided(Vec::new()),
            _ => Probe::Raw,
        };
        let copied = copy_hashed(&mut src, path, &tmp, &self.cancel, &mut |chunk| {
            probe.feed(chunk, path)
        });
        let result = copied.and_then(|(file, size, sha256)| {
            let (installed_size, compression, installed_sha256) = match (kind, probe.finish(path)?)
            {
                (ArtifactKind::Zip, _) => (Some(zip_installed_size(&tmp, path)?), None, None),
                (_, Some((len, sha))) => (Some(len), Some(Compression::Gzip), Some(sha)),
                _ => (None, None, None),
            };
            let dest = blobs.join(&sha256);
            let artifact = Artifact {
                kind,
                sha256,
                size,
                installed_size,
                compression,
                installed_sha256,
                name,
                url: None,
            };
            // Counted as copied: a pipe or `/dev/null` is empty too.
            check_image_not_empty(&artifact, path)?;
            // Blobs are immutable: keep one already there, but only if it is intact. A
            // damaged one (its bytes are not those its name promises) is what every
            // device downloading it refuses: the copy just hashed takes its place.
            let intact = dest.exists()
                && match self.check_blob(&artifact) {
                    Ok(()) => true,
                    Err(e) if e.kind() == ErrorKind::HashMismatch => false,
                    Err(e) => return Err(e),
                };
            if intact {
                drop(file);
                std::fs::remove_file(&tmp).map_err(|e| Error::io("remove", &tmp, e))?;
            } else {
                fsutil::persist(file, &tmp, &dest)?;
            }
            Ok(artifact)
        });
        if result.is_err() {
            // Best effort: the temp copy is useless once the ingest failed or was
            // cancelled, and may be as large as the component.
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// The repository lock, held by every change from its first read to its last write:
    /// two commands that both read sequence N would otherwise both write N + 1, and one
    /// change would be lost. Waits while another command holds it.
    ///
    /// Every writer holds it, so once it is taken any temp file in the repository is one
    /// that a command killed or crashed left behind; they are removed here, since no rerun
    /// (another process, another temp name) would, and an upload would ship them.
    fn lock(&self) -> Result<File> {
        let path = self.root.join(LOCK_FILE);
        // Its mode as found: operators who share a repository share its lock.
        let lock = fsutil::lock_exclusive_or_wait(&path, fsutil::LockAccess::AsFound, || {
            if let Some(notice) = &self.on_wait.0 {
                notice(&path);
            }
        })?;
        for dir in WRITTEN_DIRS {
            fsutil::remove_stale_temps_in(&self.root.join(dir));
        }
        Ok(lock)
    }

    /// `e` with the interrupted-rotate hint when a channel is signed only by keys
    /// `trusted` does not list for manifests: a rotate that stopped after re-signing it.
    /// `first` is looked at first, then every other channel: a rotate cut off part-way
    /// leaves the channel being changed (or one not made yet) as it was, another
    /// re-signed. A channel that cannot be read, or by no valid name, is passed over.
    fn with_rotate_hint(&self, trusted: &TrustedRoot, first: &str, e: Error) -> Error {
        let others = self.channel_names().unwrap_or_default();
        let names =
            std::iter::once(first.to_owned()).chain(others.into_iter().filter(|n| n != first));
        for name in names {
            let bytes = manifest::check_channel_name(&name)
                .ok()
                .and_then(|()| std::fs::read(self.channel_path(&name)).ok());
            if bytes.is_some_and(|b| signed_by_unlisted(trusted, &b)) {
                return rotate_hint(trusted, &format!("channels/{name}.json"), e);
            }
        }
        e
    }

    fn channel_names(&self) -> Result<Vec<String>> {
        let dir = self.root.join("channels");
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let file = entry.file_name();
            if let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json")) {
                if manifest::is_channel_name(name) {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn root_path(&self, version: u64) -> PathBuf {
        self.root.join("root").join(format!("{version}.json"))
    }

    fn channel_path(&self, channel: &str) -> PathBuf {
        self.root.join("channels").join(format!("{channel}.json"))
    }
}

/// What an edit did to a channel: only a changed one is bumped, re-signed and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    Changed,
    Unchanged,
}

/// Which channel a modification applies to, and how.
struct Change<'a> {
    channel: &'a str,
    /// Whether a missing channel is started (release, promote) or an error (rollout, resign).
    create: bool,
    expires_in_days: Option<u32>,
    now: Timestamp,
}

impl<'a> Change<'a> {
    /// A change to a channel that must already exist.
    fn existing(channel: &'a str, sign: &Signing) -> Change<'a> {
        Change {
            channel,
            create: false,
            expires_in_days: sign.expires_in_days,
            now: sign.now,
        }
    }
}

/// Every change is a new publication: clients refuse to go back in sequence. The new
/// manifest is valid for `expires_in_days`, or for as long as the channel was.
fn bump(m: &mut Manifest, now: Timestamp, expires_in_days: Option<u32>) -> Result<()> {
    check_clock(m, now)?;
    reissue(m, now, expires_in_days)
}

/// Devices treat their clock as at least the newest `issued` they saw (DESIGN §5.1), so a
/// manifest issued before it would already be that much closer to expiry for them, and a
/// later change from the right clock would look issued before this one.
fn check_clock(m: &Manifest, now: Timestamp) -> Result<()> {
    if now < m.issued {
        return Err(Error::config(format!(
            "channel {}: expected a clock at or after the channel's last issued {}, found {now}",
            m.channel, m.issued
        )));
    }
    Ok(())
}

/// [`bump`] without the clock check.
fn reissue(m: &mut Manifest, now: Timestamp, expires_in_days: Option<u32>) -> Result<()> {
    let expires = match expires_in_days {
        Some(days) => expiry(now, days)?,
        None => now.plus_secs(validity_secs(m)),
    };
    m.sequence = m.sequence.checked_add(1).ok_or_else(|| {
        Error::config(format!(
            "channel {}: the sequence cannot grow any further",
            m.channel
        ))
    })?;
    m.issued = now;
    m.expires = expires;
    Ok(())
}

/// How long `m` was valid when it was signed: a change that names no expiry keeps the
/// period the operator chose (a weekly cron re-signing a 7-day channel must not find it
/// at 30 days after a rollout). A new channel gets [`DEFAULT_MANIFEST_DAYS`].
fn validity_secs(m: &Manifest) -> i64 {
    let max = i64::from(MAX_VALIDITY_DAYS) * 86_400;
    match m.expires.unix().saturating_sub(m.issued.unix()) {
        secs if m.sequence > 0 && secs > 0 => secs.min(max),
        _ => i64::from(DEFAULT_MANIFEST_DAYS) * 86_400,
    }
}

/// The longest validity a document may be given: a century, well inside the years an
/// RFC 3339 time can write.
const MAX_VALIDITY_DAYS: u32 = 36_500;

fn expiry(now: Timestamp, days: u32) -> Result<Timestamp> {
    if days == 0 {
        return Err(Error::config(
            "expected a validity of at least 1 day, found 0 (the document would be born expired)",
        ));
    }
    if days > MAX_VALIDITY_DAYS {
        return Err(Error::config(format!(
            "expected a validity of at most {MAX_VALIDITY_DAYS} days, found {days} (--expires-in)"
        )));
    }
    Ok(now.plus_days(i64::from(days)))
}

fn single_stage(now: Timestamp, percent: f64) -> Rollout {
    Rollout {
        stages: vec![RolloutStage { at: now, percent }],
    }
}

fn root_document(
    product: &str,
    version: u64,
    expires: Timestamp,
    root_keys: &KeySet,
    manifest_keys: &KeySet,
) -> Root {
    let mut keys = NameMap::new();
    let mut role = |set: &KeySet| {
        let mut keyids = Vec::new();
        for k in set.keys() {
            keys.insert(
                k.keyid(),
                RootKey {
                    alg: "ed25519".to_string(),
                    public: k.to_base64(),
                },
            );
            keyids.push(k.keyid());
        }
        Role {
            keyids,
            threshold: set.threshold(),
        }
    };
    let roles = NameMap::from([("root", role(root_keys)), ("manifest", role(manifest_keys))]);
    Root {
        doc_type: "root".to_string(),
        product: product.to_string(),
        version,
        expires,
        keys,
        roles,
    }
}

/// The current key set with the given replacements.
fn merge_keys(
    current: &KeySet,
    keys: &Option<Vec<PublicKey>>,
    threshold: Option<usize>,
) -> Result<KeySet> {
    let keys = keys.clone().unwrap_or_else(|| current.keys().to_vec());
    KeySet::new(keys, threshold.unwrap_or(current.threshold()))
}

fn same_keys(a: &KeySet, b: &KeySet) -> bool {
    let ids = |s: &KeySet| {
        let mut v: Vec<String> = s.keys().iter().map(PublicKey::keyid).collect();
        v.sort();
        v
    };
    a.threshold() == b.threshold() && ids(a) == ids(b)
}

/// Seals `payload` with every signer that belongs to one of `roles`, after checking each
/// role's threshold is met by distinct keys.
fn sign(
    payload_type: &str,
    payload: &[u8],
    roles: &[(&str, &KeySet)],
    signers: &[&SecretKey],
) -> Result<Vec<u8>> {
    let mut chosen: Vec<&SecretKey> = Vec::new();
    for (role, keys) in roles {
        for key in pick_signers(role, keys, signers)? {
            if !chosen.iter().any(|c| c.public() == key.public()) {
                chosen.push(key);
            }
        }
    }
    Ok(trust::seal(payload_type, payload, &chosen))
}

/// The distinct `signers` whose public key is in `keys`; a `threshold` error when fewer
/// than the role's threshold.
fn pick_signers<'a>(
    role: &str,
    keys: &KeySet,
    signers: &[&'a SecretKey],
) -> Result<Vec<&'a SecretKey>> {
    let mut picked: Vec<&SecretKey> = Vec::new();
    for s in signers {
        let public = s.public();
        if keys.keys().contains(&public) && !picked.iter().any(|p| p.public() == public) {
            picked.push(s);
        }
    }
    if picked.len() < keys.threshold() {
        return Err(Error::new(
            ErrorKind::Threshold,
            format!(
                "expected signing keys for {} of the {} {role} key(s), found {} among the {} given",
                keys.threshold(),
                keys.keys().len(),
                picked.len(),
                signers.len()
            ),
        ));
    }
    Ok(picked)
}

fn check_components(components: &[(&str, &Path, ArtifactKind)]) -> Result<()> {
    if components.is_empty() {
        return Err(Error::config("expected at least one component, found none"));
    }
    for (i, (name, _, _)) in components.iter().enumerate() {
        if !manifest::is_safe_name(name) {
            return Err(Error::config(format!(
                "expected a component name usable as a directory name, found {name:?}"
            )));
        }
        // Each is a directory of the slot: `App` and `app` are one on a case-insensitive
        // file system (macOS, ext4 with casefold), and the device's install would stop.
        let lower = name.to_lowercase();
        if let Some((n, _, _)) = components[..i]
            .iter()
            .find(|(n, _, _)| n.to_lowercase() == lower)
        {
            return Err(Error::config(format!(
                "expected each component once, also ignoring case, found {n:?} and {name:?}"
            )));
        }
    }
    // Dir slots take no image, image slots one image and nothing else: a target mixing
    // them would be offered to devices that no slot store can install it on.
    if manifest::SlotsFor::of(components.iter().map(|c| c.2)) == manifest::SlotsFor::Neither {
        let images = components
            .iter()
            .filter(|(_, _, kind)| *kind == ArtifactKind::Image)
            .count();
        return Err(Error::config(format!(
            "expected an image component alone (image slots take exactly one image and nothing else) or no image, found {images} image(s) among {} components",
            components.len()
        )));
    }
    Ok(())
}

fn check_target(target: &str) -> Result<()> {
    if target.is_empty() || target.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::config(format!(
            "expected a target such as x86_64-linux, found {target:?}"
        )));
    }
    Ok(())
}

/// Adding `target` to a published release takes the release as it is: options that would
/// change it are refused, since they would change it for every target.
fn check_same_release(r: &Release, opts: &ReleaseOptions, target: &str) -> Result<()> {
    let mut differs = Vec::new();
    if !opts.notes.is_empty() && opts.notes != r.notes {
        differs.push("--notes".to_string());
    }
    if opts.critical && !r.critical {
        differs.push("--critical".to_string());
    }
    if opts.min_version.is_some() && opts.min_version != r.min_version {
        differs.push("--min-version".to_string());
    }
    if opts.security_version != 0 && opts.security_version != r.security_version {
        differs.push(format!(
            "--security-version {} (the release has {})",
            opts.security_version, r.security_version
        ));
    }
    if opts.rollout_percent.is_some() {
        differs.push("--rollout (use evergreen rollout for the whole release)".to_string());
    }
    if differs.is_empty() {
        return Ok(());
    }
    Err(Error::config(format!(
        "expected only components when adding target {target} to the published release {}, found {} that would change the release for every target",
        r.version,
        differs.join(", ")
    )))
}

fn check_percent(percent: f64) -> Result<()> {
    if !(0.0..=100.0).contains(&percent) {
        return Err(Error::config(format!(
            "expected a rollout percent from 0 to 100, found {percent}"
        )));
    }
    Ok(())
}

/// The versions [`Repo::prune`] keeps: per target, the newest down to the `keep`-th
/// rolled out to everyone at `now`; then whatever else a device needs so that none is
/// offered less than before. A device may run any listed release (or one older than all
/// of them), and be inside or outside each rollout short of 100 %: if [`select::select`]
/// offers it a release now, it must still be offered one from what is kept.
///
/// Which rollouts reach a device is its own mix, and any may be halted, or a halted one
/// ramped again, later. Two questions cover every mix: a device outside all of them must
/// still be offered a release at 100 % when it is offered one now (kept: the one it is
/// offered, unless another kept one is), and a device offered none of those is offered a
/// rollout's release only from inside that rollout, so each such release it could take
/// stays. What a device in every ramp is offered stays too. That keeps each stepping
/// stone devices below a `min_version` take, and only those.
fn releases_to_keep(m: &Manifest, keep: usize, now: Timestamp) -> BTreeSet<Version> {
    let releases = &m.releases;
    let targets: BTreeSet<&str> = releases
        .iter()
        .flat_map(|r| r.targets.keys().map(String::as_str))
        .collect();
    let mut kept = BTreeSet::new();
    for &target in &targets {
        let mut carrying: Vec<&Release> = releases
            .iter()
            .filter(|r| r.targets.contains_key(target))
            .collect();
        carrying.sort_by(|a, b| b.version.cmp_precedence(&a.version));
        let mut full = 0;
        for r in carrying {
            if full == keep {
                break;
            }
            kept.insert(r.version.clone());
            full += usize::from(rolled_out_to_everyone(r, now));
        }
    }
    // A device outside every rollout short of 100 % (or in one halted later); and, as
    // before, one in every rollout that reaches devices now (a ramp reaches everyone in
    // time), and one in every rollout that has or will have a stage above 0 % (a halted or
    // scheduled one may be ramped): what devices inside a ramp take stays too.
    let mut outside = m.clone();
    outside.releases.retain(|r| rolled_out_to_everyone(r, now));
    let later = reached(m, now, true);
    let views = [outside, reached(m, now, false), later];
    // A device in one of those rollouts alone.
    let inside_one: Vec<Manifest> = views[2]
        .releases
        .iter()
        .zip(releases)
        .filter(|(may, r)| may.rollout.is_none() && !rolled_out_to_everyone(r, now))
        .map(|(may, _)| {
            let mut view = views[0].clone();
            view.releases.push(may.clone());
            view
        })
        .collect();
    let running = devices(releases);
    // What each device is offered before the prune, per view: it does not change between
    // rounds, so it is asked once.
    let mut before: Vec<(usize, &str, &(Version, u64), Version)> = Vec::new();
    for (i, view) in views.iter().enumerate() {
        for &target in &targets {
            for device in &running {
                match offered(view, target, device, now) {
                    Some(v) => before.push((i, target, device, v)),
                    // Offered nothing at 100 %: a release short of it is the only way on,
                    // and only for devices in its rollout, which no other release serves.
                    None if i == 0 => kept.extend(
                        inside_one
                            .iter()
                            .filter_map(|one| offered(one, target, device, now)),
                    ),
                    None => {}
                }
            }
        }
    }
    // Each round adds the releases devices lost; an added release never takes an offer
    // away, so few rounds are needed.
    loop {
        let kept_views: Vec<Manifest> = views
            .iter()
            .map(|all| {
                let mut from_kept = all.clone();
                from_kept.releases.retain(|r| kept.contains(&r.version));
                from_kept
            })
            .collect();
        let missing: Vec<Version> = before
            .iter()
            .filter(|(i, target, device, _)| {
                offered(&kept_views[*i], target, device, now).is_none()
            })
            .map(|(.., v)| v.clone())
            .collect();
        let before_len = kept.len();
        kept.extend(missing);
        if kept.len() == before_len {
            return kept;
        }
    }
}

/// The devices a prune must not strand, as (running version, security floor): one on each
/// listed release, one at each listed `min_version` (a release pruned before, or listed on
/// another channel), with the floor of the newest listed release not above it, and one
/// older than all of them.
fn devices(releases: &[Release]) -> Vec<(Version, u64)> {
    let floor_at = |v: &Version| {
        releases
            .iter()
            .filter(|r| r.version.cmp_precedence(v).is_le())
            .max_by(|a, b| a.version.cmp_precedence(&b.version))
            .map_or(0, |r| r.security_version)
    };
    let listed = releases
        .iter()
        .map(|r| (r.version.clone(), r.security_version));
    let mins = releases
        .iter()
        .filter_map(|r| r.min_version.clone())
        .map(|v| {
            let floor = floor_at(&v);
            (v, floor)
        });
    std::iter::once((Version::new(0, 0, 0), 0))
        .chain(listed)
        .chain(mins)
        .collect()
}

/// The release is offered to every device at `now` (no rollout, or one at 100%).
fn rolled_out_to_everyone(r: &Release, now: Timestamp) -> bool {
    r.rollout
        .as_ref()
        .is_none_or(|ro| ro.percent_at(now) >= 100.0)
}

/// The channel as a device in every rollout that has started sees it: a ramp reaches
/// everyone in time, a halt (0 %) no one. With `later`, a rollout with any stage above
/// 0 % (past or scheduled) reaches everyone: a halted release may be ramped up again.
fn reached(m: &Manifest, now: Timestamp, later: bool) -> Manifest {
    let mut all = m.clone();
    for r in &mut all.releases {
        let reaches = r.rollout.as_ref().is_some_and(|ro| {
            ro.percent_at(now) > 0.0 || (later && ro.stages.iter().any(|s| s.percent > 0.0))
        });
        if reaches {
            r.rollout = None;
        }
    }
    all
}

/// What [`select::select`] offers a device of `target` running `(version, security
/// version)` on `channel` (as [`reached`] gives it), with no skip or failure. Its id is
/// empty: in the views of a channel asked here every rollout is lifted, at 100 % or at
/// 0 %, so no id decides (see [`offered_to`] for one).
fn offered(
    channel: &Manifest,
    target: &str,
    device: &(Version, u64),
    now: Timestamp,
) -> Option<Version> {
    offered_to(channel, target, "", device, now)
}

/// [`offered`] to the device `device_id`, which decides where a rollout short of 100 %
/// reaches.
fn offered_to(
    channel: &Manifest,
    target: &str,
    device_id: &str,
    (version, security): &(Version, u64),
    now: Timestamp,
) -> Option<Version> {
    let device = select::Device {
        product: &channel.product,
        target,
        device_id,
        installed: Some(version),
        security_floor: *security,
        skipped: &[],
        failed: &[],
    };
    match select::select(channel, &device, &select::Policy::default(), now) {
        Ok(select::Decision::Update(choice)) => Some(choice.version),
        _ => None,
    }
}

/// Devices compare versions by precedence: two builds of one version are the same.
fn same_version(a: &Version, b: &Version) -> bool {
    a.cmp_precedence(b).is_eq()
}

/// The index of `version` in `m`, found by precedence. Another build of it is an error
/// naming the listed one, not a match: the operator may mean a build that is not there.
fn listed_release(m: &Manifest, version: &Version) -> Result<usize> {
    let i = m
        .releases
        .iter()
        .position(|r| same_version(&r.version, version))
        .ok_or_else(|| no_such_version(version, &m.channel))?;
    let listed = &m.releases[i].version;
    if listed != version {
        return Err(Error::new(
            ErrorKind::NoSuchVersion,
            format!(
                "expected version {version} on channel {}, found {listed}, another build of it (name it as listed)",
                m.channel
            ),
        ));
    }
    Ok(i)
}

/// Refuses to promote `r` at 100 % when its rollout on `from` stands at 0 % at `now`, as
/// devices there see it ([`Rollout::percent_at`]): halted (a release is pulled that way
/// when it turns out broken, or released at 0 %), or not started yet (its first stage is
/// still to come), which would reach everyone on `to` before anyone on `from`.
fn check_not_halted(r: &Release, from: &str, now: Timestamp) -> Result<()> {
    let Some(rollout) = r.rollout.as_ref().filter(|ro| ro.percent_at(now) <= 0.0) else {
        return Ok(());
    };
    let mut past: Vec<&RolloutStage> = rollout.stages.iter().filter(|s| s.at <= now).collect();
    past.sort_by_key(|s| s.at);
    // Since the first of the 0 % stages in force: a second halt is no news.
    let found = match past.iter().rev().take_while(|s| s.percent <= 0.0).last() {
        Some(since) => format!("halted there (0% since {})", since.at),
        None => match rollout.stages.iter().map(|s| s.at).min() {
            Some(first) => format!("not started there yet (0% until its first stage at {first})"),
            None => "at 0% there (a rollout with no stage)".to_owned(),
        },
    };
    Err(Error::config(format!(
        "expected a release rolled out on channel {from} to promote, found {} {found}; ramp it there first, or give --rollout PERCENT to promote it anyway",
        r.version
    )))
}

/// An image is written into a slot as it is: an empty one (a build step that wrote
/// nothing) would be refused by every device, after the release went out. `source` is
/// where its bytes were read.
fn check_image_not_empty(artifact: &Artifact, source: &Path) -> Result<()> {
    if artifact.kind != ArtifactKind::Image || artifact.size > 0 {
        return Ok(());
    }
    Err(Error::config(format!(
        "{}: expected an image of at least 1 byte, found 0 bytes (a device writes the image into its slot as it is: publish the image itself)",
        source.display()
    )))
}

/// A device below `min_version` cannot take the release, and one at or above the
/// release's version does not need it: a `min_version` not below it makes a release no
/// device could ever update to.
fn check_min_version(version: &Version, min: &Version) -> Result<()> {
    if min.cmp_precedence(version).is_lt() {
        return Ok(());
    }
    Err(Error::config(format!(
        "expected a min_version below the release's version {version}, found {min} (no device could update to it)"
    )))
}

/// A device's security floor rises to the security version of each release it confirms,
/// and nothing below the floor is installed. So for each target, a release's security
/// version may be neither below that of an older release (devices that confirmed the
/// older could never install it) nor above that of a newer one (devices that confirm it
/// could never install the newer). Releases without `target` reach other devices.
fn check_security_order(
    m: &Manifest,
    version: &Version,
    security_version: u64,
    target: &str,
) -> Result<()> {
    let older = highest_older(&m.releases, version, target);
    if let Some(r) = older.filter(|r| r.security_version > security_version) {
        return Err(Error::config(format!(
            "expected a security version of at least {} for {version} on {target} (that of the older release {} on channel {}: devices that confirmed it could never install {version}), found {security_version}",
            r.security_version, r.version, m.channel
        )));
    }
    let newer = m
        .releases
        .iter()
        .filter(|r| r.targets.contains_key(target))
        .filter(|r| r.version.cmp_precedence(version).is_gt())
        .min_by_key(|r| r.security_version);
    if let Some(r) = newer.filter(|r| r.security_version < security_version) {
        return Err(Error::config(format!(
            "expected a security version of at most {} for {version} on {target} (that of the newer release {} on channel {}: devices that confirmed {version} could never install it), found {security_version}",
            r.security_version, r.version, m.channel
        )));
    }
    Ok(())
}

/// Of `releases`, the one of `target` older than `version` with the highest security
/// version: the floor that devices which confirmed one of them bring to `version`.
fn highest_older<'r>(
    releases: &'r [Release],
    version: &Version,
    target: &str,
) -> Option<&'r Release> {
    releases
        .iter()
        .filter(|r| r.targets.contains_key(target))
        .filter(|r| r.version.cmp_precedence(version).is_lt())
        .max_by_key(|r| r.security_version)
}

/// A promoted release with a `min_version` must not strand the devices of the target
/// channel below it. Adding a release whose `min_version` a device does not meet never
/// changes what `select` offers that device, so what counts is whether a device running a
/// release listed there below `min_version` (for one of the release's targets) is offered
/// *something*, a step towards the release, now that a newer release exists that it can't
/// take. A device already stranded by another release's `min_version` before is not this
/// promotion's doing.
fn check_stepping_stone(m: &Manifest, release: &Release, now: Timestamp) -> Result<()> {
    let Some(min) = &release.min_version else {
        return Ok(());
    };
    let before = Reach::new(m, now);
    let mut promoted = release.clone();
    // Its rollout will grow: devices outside it now are the ones it strands later.
    promoted.rollout = None;
    let mut with = m.clone();
    with.releases.push(promoted);
    let after = Reach::new(&with, now);
    for target in release.targets.keys() {
        let below = m
            .releases
            .iter()
            .filter(|r| r.targets.contains_key(target))
            .filter(|r| r.version.cmp_precedence(min).is_lt());
        for running in below {
            let device = (&running.version, running.security_version);
            if after.strands(target, device) && !before.strands(target, device) {
                return Err(Error::config(format!(
                    "expected a stepping stone on channel {} for {target} devices running {} (below {min}, the min_version of {}): a release from {min} up to {} rolled out to them, found none, so they would be offered nothing; promote or ramp one first",
                    m.channel, running.version, release.version, release.version
                )));
            }
        }
    }
    Ok(())
}

/// The devices `m`'s channel strands at `now`: for each target, the listed releases whose
/// devices [`select::select`] offers nothing though it would offer them a newer release
/// if no `min_version` held them back (a device in every rollout that has started, as
/// `promote` and `release` count it), then the devices running a version older than every
/// listed release that are stranded the same way ([`StrandedDevices::Below`], one entry
/// per target: they all see the same channel up to the lowest `min_version` met, so a
/// security floor of 0 stands for them all). Those two refuse to strand devices of listed
/// releases; a halt (`rollout` to 0 %) of the only stepping stone is how a broken stone is
/// stopped, so it goes through, and this names the devices left waiting for another
/// stone, as it names those a `prune` left below every release it kept.
///
/// Devices running an unlisted version between two listed releases of a target (one
/// pruned between them) need no entry of their own. The releases newer than theirs are
/// those newer than the listed one below them, L; a floor up to the security version of
/// the listed one above them (the most the security order let a release between the two
/// carry) leaves none of those out, since each newer one has at least that security
/// version; and a `min_version` that L meets, they meet. So they are offered something
/// whenever L's devices are, and when L's are stranded, the `Running(L)` entry stands for
/// them, up to the lowest `min_version` of the releases that reach them (from there on
/// they are offered something). A device whose floor is above the next listed release's
/// security version (it confirmed a release pruned before that one was published, so the
/// order check never compared the two, or one from another channel) cannot install that
/// release at all, and may be stranded where L's devices are not: its floor is not in the
/// manifest, as that of devices below every listed release is not (0 stands for them).
///
/// ```
/// # use evergreen::manifest::ArtifactKind;
/// # use evergreen::publish::{stranded, ReleaseOptions, Repo, Signing};
/// # use evergreen::trust::{KeySet, SecretKey};
/// # let dir = tempfile::tempdir().unwrap();
/// # let key = SecretKey::generate().unwrap();
/// # let keys = KeySet::new(vec![key.public()], 1).unwrap();
/// # let now: evergreen::Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
/// # let repo = Repo::init(dir.path().join("repo"), "com.acme.app", &keys, &keys, &[&key], 365, now).unwrap();
/// # let app = dir.path().join("app.bin");
/// # std::fs::write(&app, b"the program").unwrap();
/// # let files = [("app", app.as_path(), ArtifactKind::File)];
/// let mut options = ReleaseOptions::new(now);
/// for version in ["1.0.0", "1.5.0"] {
///     repo.release("stable", &version.parse().unwrap(), "x", &files, &options, &[&key]).unwrap();
/// }
/// options.min_version = Some("1.5.0".parse().unwrap());
/// repo.release("stable", &"2.0.0".parse().unwrap(), "x", &files, &options, &[&key]).unwrap();
///
/// // 1.5.0 turns out broken: halting it leaves devices on 1.0.0 offered nothing.
/// let m = repo.rollout("stable", &"1.5.0".parse().unwrap(), 0.0, &Signing::new(&[&key], now)).unwrap();
/// let left = stranded(&m, now);
/// let running = evergreen::publish::StrandedDevices::Running("1.0.0".parse().unwrap());
/// assert_eq!((left[0].target.as_str(), &left[0].devices), ("x", &running));
/// ```
pub fn stranded(m: &Manifest, now: Timestamp) -> Vec<Stranded> {
    // Only a `min_version` strands a device; without one the answer needs no selection
    // (which is per listed release over the whole channel: quadratic in its length).
    if m.releases.iter().all(|r| r.min_version.is_none()) {
        return Vec::new();
    }
    let reach = Reach::new(m, now);
    let mut found = Vec::new();
    for running in &m.releases {
        for target in running.targets.keys() {
            if reach.strands(target, (&running.version, running.security_version)) {
                found.push(Stranded {
                    target: target.clone(),
                    devices: StrandedDevices::Running(running.version.clone()),
                });
            }
        }
    }
    // One more selection per target, for a device below every listed release.
    let mut targets: Vec<&String> = m.releases.iter().flat_map(|r| r.targets.keys()).collect();
    targets.sort();
    targets.dedup();
    for target in targets {
        if let Some(below) = reach.strands_below_all(target) {
            found.push(Stranded {
                target: target.clone(),
                devices: StrandedDevices::Below(below),
            });
        }
    }
    found
}

/// What [`select::select`] offers the devices of a channel, as a device in every rollout
/// that has started sees it (a ramp reaches everyone in time, a halt no one), with and
/// without the channel's `min_version`s.
struct Reach {
    now: Timestamp,
    with_mins: Manifest,
    without_mins: Manifest,
}

impl Reach {
    fn new(m: &Manifest, now: Timestamp) -> Reach {
        let with_mins = reached(m, now, false);
        let mut without_mins = with_mins.clone();
        for r in &mut without_mins.releases {
            r.min_version = None;
        }
        Reach {
            now,
            with_mins,
            without_mins,
        }
    }

    /// A device of `target` running `(version, security version)` is offered nothing only
    /// because of a `min_version` it does not meet.
    fn strands(&self, target: &str, (version, security): (&Version, u64)) -> bool {
        let device = (version.clone(), security);
        offered(&self.with_mins, target, &device, self.now).is_none()
            && offered(&self.without_mins, target, &device, self.now).is_some()
    }

    /// The version below which the devices of `target` running no listed release are
    /// stranded, when any are. Below the oldest listed release a device meets the
    /// `min_version`s up to its own and nothing else changes: so the lowest version of
    /// all stands for every one of them, and when it is stranded, those up to the lowest
    /// `min_version` of a release that reaches them (or the oldest listed release) are.
    fn strands_below_all(&self, target: &str) -> Option<Version> {
        let lowest = Version {
            pre: semver::Prerelease::new("0").ok()?,
            ..Version::new(0, 0, 0)
        };
        let releases = || {
            self.with_mins
                .releases
                .iter()
                .filter(|r| r.targets.contains_key(target))
        };
        let oldest = releases()
            .map(|r| &r.version)
            .min_by(|a, b| a.cmp_precedence(b))?;
        if oldest.cmp_precedence(&lowest).is_le() || !self.strands(target, (&lowest, 0)) {
            return None;
        }
        // Those that reach every device here: `reached` lifted every rollout that has started.
        let mins = releases()
            .filter(|r| rolled_out_to_everyone(r, self.now))
            .filter_map(|r| r.min_version.as_ref());
        std::iter::once(oldest)
            .chain(mins)
            .min_by(|a, b| a.cmp_precedence(b))
            .cloned()
    }
}

/// Devices walk `root/N.json` up from their pinned root and stop at the first missing
/// version: a document past a gap, or under a name they never ask for (`0.json`,
/// `02.json`), is never reached, though it looks in force to whoever reads the directory.
/// The error for `root/<stem>.json` when it is such a document and the chain ends at
/// `newest`; `None` for a chain member or a name that is no version at all.
fn stray_root(stem: &str, newest: u64) -> Option<Error> {
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let canonical = stem.parse::<u64>().ok().filter(|n| n.to_string() == stem);
    match canonical {
        Some(n) if (1..=newest).contains(&n) => None,
        Some(n) if n > newest => Some(Error::new(
            ErrorKind::NotFound,
            format!(
                "expected root/{}.json before root/{stem}.json (devices walk the roots in order and stop at the first missing one, so they never reach it), found none",
                newest + 1
            ),
        )),
        _ => Some(Error::config(format!(
            "expected root documents named 1.json to {newest}.json, found root/{stem}.json, which devices never ask for"
        ))),
    }
}

/// The manifest of `channel` in `bytes` (read from `path`), verified as a client at `now`
/// would with `trusted`'s manifest keys; its errors name the file, and an interrupted
/// rotate when that is what they come from.
fn verify_channel_at(
    trusted: &TrustedRoot,
    channel: &str,
    path: &Path,
    bytes: &[u8],
    now: Timestamp,
) -> Result<manifest::Verified<Manifest>> {
    let expect = Expect {
        product: &trusted.root().product,
        channel,
        now,
        max_bytes: DEFAULT_MAX_METADATA_BYTES,
    };
    manifest::verify(
        bytes,
        trusted.manifest_keys(),
        &expect,
        &Freshness::default(),
    )
    .map_err(|e| interrupted_rotate(trusted, bytes, e).context(path.display()))
}

/// `e`, a channel's `envelope` refused under `trusted`, with a hint when every signature
/// on it is by a key the root does not list for manifests: what a `rotate` that changes
/// the manifest keys leaves when it is cut off after re-signing the channels and before
/// writing the new root (renamed into place last). Running it again finishes it.
fn interrupted_rotate(trusted: &TrustedRoot, envelope: &[u8], e: Error) -> Error {
    if e.kind() != ErrorKind::Signature || !signed_by_unlisted(trusted, envelope) {
        return e;
    }
    rotate_hint(trusted, "it", e)
}

/// Whether every signature on `envelope` is by a key `trusted` does not list for
/// manifests, as on a channel a rotate re-signed before its root was written.
fn signed_by_unlisted(trusted: &TrustedRoot, envelope: &[u8]) -> bool {
    let known: Vec<String> = trusted
        .manifest_keys()
        .keys()
        .iter()
        .map(PublicKey::keyid)
        .collect();
    trust::parse_envelope(envelope).is_ok_and(|env| {
        !env.signatures.is_empty() && env.signatures.iter().all(|s| !known.contains(&s.keyid))
    })
}

/// `e` with the interrupted-rotate hint, `what` naming the document signed only by keys
/// `trusted` does not list for manifests ([`signed_by_unlisted`]), of whatever kind `e`
/// is: signing with the new manifest key (`resign --sign NEW`) is a `threshold` error
/// under the old root before the channel is even read.
fn rotate_hint(trusted: &TrustedRoot, what: &str, e: Error) -> Error {
    let message = format!(
        "{}; {what} is signed only by keys root version {} does not list for manifests: an interrupted rotate? run the same rotate command again",
        e.message(),
        trusted.root().version
    );
    Error::new(e.kind(), message)
}

fn missing(channel: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("expected channel {channel} to exist, found no channels/{channel}.json"),
    )
}

fn no_such_version(version: &Version, channel: &str) -> Error {
    Error::new(
        ErrorKind::NoSuchVersion,
        format!("expected version {version} on channel {channel}, found none"),
    )
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| manifest::is_safe_name(n))
        .map(str::to_string)
        .ok_or_else(|| {
            Error::config(format!(
                "expected a file with a plain name, found {}",
                path.display()
            ))
        })
}

/// The file's bytes, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Copies `src` into a new temp file at `tmp`, returning it with the size and SHA-256 of
/// exactly the bytes written; stops at `cancel` between chunks.
fn copy_hashed(
    src: &mut File,
    src_path: &Path,
    tmp: &Path,
    cancel: &CancelToken,
    also: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<(File, u64, String)> {
    let mut out = fsutil::create_temp(tmp)?;
    let (size, sha256) = hash_reader(src, src_path, cancel, |chunk| {
        also(chunk)?;
        out.write_all(chunk).map_err(|e| Error::io("write", tmp, e))
    })?;
    Ok((out, size, sha256))
}

/// Size and SHA-256 of everything `src` yields, handing each chunk to `sink` as well;
/// stops at `cancel` between chunks.
fn hash_reader(
    src: &mut impl Read,
    src_path: &Path,
    cancel: &CancelToken,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", src_path, e)),
        };
        hasher.update(&buf[..n]);
        sink(&buf[..n])?;
        size += n as u64;
        // A component may be gigabytes: an interrupted command must not wait for the
        // whole copy, nor be killed during it, which would leave the copy behind.
        cancel.check()?;
    }
    Ok((size, trust::hex(&hasher.finalize())))
}

/// Whether an image being read is gzip data, and if so what it inflates to: decided by
/// its first two bytes, then inflated as the rest comes.
enum Probe {
    /// Fewer than two bytes seen (these).
    Undecided(Vec<u8>),
    /// Not gzip data, or not an image.
    Raw,
    /// Gzip data, inflating; the hash is of the inflated bytes.
    Gzip(Box<crate::gzip::Inflater>, Sha256),
}

impl Probe {
    fn gzip() -> Probe {
        Probe::Gzip(Box::new(crate::gzip::Inflater::new()), Sha256::new())
    }

    /// Takes the next bytes of the file at `path`.
    fn feed(&mut self, chunk: &[u8], path: &Path) -> Result<()> {
        let Probe::Undecided(head) = self else {
            return self.inflate(chunk, path);
        };
        head.extend_from_slice(chunk);
        if head.len() < 2 {
            return Ok(());
        }
        let head = std::mem::take(head);
        *self = match head.starts_with(&[0x1f, 0x8b]) {
            true => Probe::gzip(),
            false => Probe::Raw,
        };
        self.inflate(&head, path)
    }

    fn inflate(&mut self, mut bytes: &[u8], path: &Path) -> Result<()> {
        let Probe::Gzip(inflater, hasher) = self else {
            return Ok(());
        };
        loop {
            let out = inflater
                .inflate(&mut bytes)
                .map_err(|p| gzip_refused(path, &p))?;
            if out.is_empty() {
                return match inflater.end_problem() {
                    Some(p) => Err(gzip_refused(path, p)),
                    None => Ok(()),
                };
            }
            hasher.update(out);
        }
    }

    /// For gzip data: the inflated size and SHA-256, once the member ended whole with a
    /// matching trailer and inflated to at least one byte.
    fn finish(&mut self, path: &Path) -> Result<Option<(u64, String)>> {
        let Probe::Gzip(inflater, hasher) = self else {
            return Ok(None);
        };
        let len = inflater.finish().map_err(|p| gzip_refused(path, &p))?;
        if len == 0 {
            return Err(gzip_refused(
                path,
                "expected an image of at least 1 byte once inflated, found 0 bytes",
            ));
        }
        Ok(Some((len, trust::hex(&std::mem::take(hasher).finalize()))))
    }
}

/// A gzip image that devices could not decompress into exactly the image, as `problem`
/// says: refused, as every device would refuse it after the release went out.
fn gzip_refused(path: &Path, problem: &str) -> Error {
    Error::config(format!(
        "{}: {problem} (a gzip image is published compressed and decompressed into the slot by each device: publish one intact gzip member, made by gzip or `gzip -c`)",
        path.display()
    ))
}

/// Sum of the uncompressed sizes the zip's central directory declares: the client caps
/// the bytes it actually inflates at this.
fn zip_installed_size(path: &Path, shown_as: &Path) -> Result<u64> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let bad = |e: zip::result::ZipError| {
        Error::config(format!(
            "expected a zip archive in {}, found: {e}",
            shown_as.display()
        ))
    };
    let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
    let mut total = 0u64;
    for i in 0..archive.len() {
        let size = archive.by_index_raw(i).map_err(bad)?.size();
        total = total.checked_add(size).ok_or_else(|| {
            Error::config(format!(
                "{}: the declared entry sizes overflow 64 bits",
                shown_as.display()
            ))
        })?;
    }
    check_zip_for_every_device(path, shown_as, Some(total))?;
    Ok(total)
}

/// What devices with the default `archive` limits of their config (no symlinks, a ratio
/// of 250, 100,000 entries, 16 GiB) would refuse among `components`: one message per zip,
/// naming the component and the rule. [`Repo::release`] publishes such a zip (a device may
/// allow more), so a publisher should hear it before the fleet does.
///
/// ```
/// # fn main() -> evergreen::Result<()> {
/// use evergreen::manifest::ArtifactKind;
/// use std::io::Write;
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("app.zip");
/// let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
/// let options = zip::write::SimpleFileOptions::default();
/// w.start_file("lib/libapp.so.1", options).unwrap();
/// w.write_all(b"elf").unwrap();
/// w.add_symlink("lib/libapp.so", "libapp.so.1", options).unwrap();
/// w.finish().unwrap();
///
/// let warnings = evergreen::publish::default_limit_refusals(&[("app", &path, ArtifactKind::Zip)])?;
/// assert_eq!(warnings.len(), 1);
/// assert!(warnings[0].starts_with("component app: "));
/// # Ok(()) }
/// ```
pub fn default_limit_refusals(components: &[(&str, &Path, ArtifactKind)]) -> Result<Vec<String>> {
    let mut refusals = Vec::new();
    for (name, path, _) in components.iter().filter(|c| c.2 == ArtifactKind::Zip) {
        match check_zip(path, None, &stage::ArchiveLimits::default()) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnsafeArchive => refusals.push(format!(
                "component {name}: devices with the default `archive` limits refuse {}: {e}",
                path.display()
            )),
            Err(e) => return Err(e),
        }
    }
    Ok(refusals)
}

/// Refuses a zip that every device would refuse, whatever its config: the rules of
/// [`stage::CheckedZip`] no device can relax (entry names, duplicates and case
/// collisions, overlapping entries, methods, encryption, symlinks that escape), and data
/// that does not inflate to what its entries declare (a CRC that does not match, a
/// broken deflate stream), which a device finds only while writing, after clearing its
/// inactive slot. The limits each device sets for itself (`archive` in its config:
/// symlinks at all, the ratio, the entry count, the size) are left to it.
fn check_zip_for_every_device(
    path: &Path,
    shown_as: &Path,
    installed_size: Option<u64>,
) -> Result<()> {
    let most_lenient = stage::ArchiveLimits {
        max_installed_bytes: u64::MAX,
        max_entries: u64::MAX,
        // The most any device's config allows: a larger directory is refused everywhere,
        // and is never read into this process's memory either.
        max_central_directory_bytes: crate::config::MAX_CENTRAL_DIRECTORY_BYTES,
        max_ratio: u64::MAX,
        allow_symlinks: true,
    };
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let checked = stage::CheckedZip::check(&file, installed_size, &most_lenient)
        .and_then(stage::CheckedZip::inflate_all);
    checked.map_err(|e| {
        e.context(format!(
            "{}: every device would refuse this archive",
            shown_as.display()
        ))
    })
}

/// The zip at `path` checked as a device with `limits` checks it before installing.
fn check_zip(
    path: &Path,
    installed_size: Option<u64>,
    limits: &stage::ArchiveLimits,
) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    stage::CheckedZip::check(&file, installed_size, limits).map(drop)
}

/// A blob as a manifest describes it (SHA-256, size, kind, installed size): what
/// [`Repo::verify`] checks once.
type BlobKey = (String, u64, ArtifactKind, Option<u64>);

/// The artifacts `m` lists that live in the repository (one with its own URL lives
/// outside it), with the release, target and component that list each.
fn blobs_in_repo(m: &Manifest) -> impl Iterator<Item = (&Release, &str, &str, &Artifact)> {
    m.releases.iter().flat_map(|r| {
        r.targets.iter().flat_map(move |(target, t)| {
            t.components
                .iter()
                .filter(|(_, c)| c.artifact.url.is_none())
                .map(move |(name, c)| (r, target.as_str(), name.as_str(), &c.artifact))
        })
    })
}

/// Writes a new key pair: `path` holds the base64 secret seed (mode 0600 from creation,
/// never widened afterwards) and `path.pub` the base64 public key. Refuses to overwrite
/// either file, and a `path` ending in `.pub`.
pub fn write_keypair(path: &Path) -> Result<PublicKey> {
    // `keygen --out x.pub` would put the secret where public keys are read from (and
    // published in the root by `init`).
    if path.extension().is_some_and(|e| e == "pub") {
        return Err(Error::config(format!(
            "expected a secret key file name (its public half gets .pub added), found {} ending in .pub",
            path.display()
        )));
    }
    // `keygen --out keys/root` as the examples write it: a missing directory is made,
    // readable by its owner only.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|e| Error::io("create directory", dir, e))?;
    }
    let public_path = public_key_path(path);
    if public_path.exists() {
        return Err(overwrite(&public_path));
    }
    let secret = SecretKey::generate()?;
    write_new(path, &secret.to_base64(), 0o600)?;
    if let Err(e) = write_new(&public_path, &secret.public().to_base64(), 0o644) {
        // Without its public half the key is unusable for `init`; let the operator retry.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    fsutil::sync_parent(path)?;
    Ok(secret.public())
}

/// `KEYFILE.pub` for `KEYFILE`.
pub fn public_key_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_os_string();
    name.push(".pub");
    PathBuf::from(name)
}

fn overwrite(path: &Path) -> Error {
    Error::config(format!(
        "expected a new key file, found {} already there; refusing to overwrite it",
        path.display()
    ))
}

/// Creates `path` (which must not exist) with `mode` and writes `line` and a newline.
fn write_new(path: &Path, line: &str, mode: u32) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => overwrite(path),
        _ => Error::io("create", path, e),
    })?;
    file.write_all(format!("{line}\n").as_bytes())
        .and_then(|()| fsutil::sync_file(&file))
        .map_err(|e| Error::io("write", path, e))
}

/// Reads a secret key file written by [`write_keypair`]. A `.pub` file is refused: it has
/// the same shape, and signing with a public key only fails later, as a confusing
/// threshold error.
pub fn read_secret_key(path: &Path) -> Result<SecretKey> {
    if path.extension().is_some_and(|e| e == "pub") {
        return Err(Error::config(format!(
            "expected a secret key file to sign with, found {}, a public key (drop the .pub)",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read key file", path, e))?;
    SecretKey::from_base64(&text).map_err(|e| e.context(path.display()))
}

/// Reads a public key file (`KEYFILE.pub`). Only `.pub` files are accepted: a secret key
/// file has the same shape, and taking it for a public key would publish the secret.
pub fn read_public_key(path: &Path) -> Result<PublicKey> {
    if path.extension().is_none_or(|e| e != "pub") {
        return Err(Error::config(format!(
            "expected a public key file ending in .pub, found {}",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read key file", path, e))?;
    PublicKey::from_base64(&text).map_err(|e| e.context(path.display()))
}

/// The version of `name` in the newest release of `m` for `target` that installs it from
/// `artifact` the same way a device's diff calls unchanged: the same sha256, kind and file
/// name. A file renamed with the same bytes is a new version of its component.
fn unchanged_version(
    m: &Manifest,
    target: &str,
    name: &str,
    artifact: &Artifact,
) -> Option<String> {
    m.releases
        .iter()
        .filter_map(|r| Some((&r.version, r.targets.get(target)?.components.get(name)?)))
        .filter(|(_, c)| {
            let a = &c.artifact;
            // The same blob published compressed and then as it is lands differently.
            (&a.sha256, a.kind, &a.name, &a.compression)
                == (
                    &artifact.sha256,
                    artifact.kind,
                    &artifact.name,
                    &artifact.compression,
                )
        })
        .max_by(|a, b| a.0.cmp(b.0))
        .map(|(_, c)| c.version.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip image followed by anything is refused at the first byte after its member,
    /// before the rest is read: a pipe of trailing bytes that never ends must not be
    /// copied into the repository until the disk is full.
    #[test]
    fn an_image_is_refused_at_the_first_byte_after_its_gzip_member() {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&[7; 10_000]).unwrap();
        let gz = e.finish().unwrap();
        let path = Path::new("rootfs.img.gz");
        for (after, found) in [(&b"junk"[..], "trailing bytes"), (&gz[..], "another gzip")] {
            let mut probe = Probe::Undecided(Vec::new());
            probe.feed(&gz, path).unwrap();
            let err = probe.feed(&after[..1], path).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.to_string().contains(found), "{err}");
        }
        let mut probe = Probe::Undecided(Vec::new());
        probe.feed(&gz, path).unwrap();
        assert_eq!(probe.finish(path).unwrap().unwrap().0, 10_000);
    }

    #[test]
    fn an_expiry_soon_is_said_in_the_largest_whole_unit() {
        let now = Timestamp::from_unix(1_000_000);
        let at = |secs: i64| Timestamp::from_unix(1_000_000 + secs);
        for (left, said) in [
            (59 * 60, "under an hour"),
            (3_600, "1 hour"),
            (5 * 3_600 + 59, "5 hours"),
            (86_400, "1 day"),
            (3 * 86_400 + 7, "3 days"),
        ] {
            assert_eq!(
                expires_soon(at(left), now, 7 * 86_400).as_deref(),
                Some(said)
            );
        }
        assert_eq!(expires_soon(at(7 * 86_400), now, 7 * 86_400), None);
    }

    fn now() -> Timestamp {
        "2026-11-22T10:00:00Z".parse().unwrap()
    }

    fn setup() -> (tempfile::TempDir, Repo, SecretKey, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let keys = KeySet::new(vec![key.public()], 1).unwrap();
        let repo = Repo::init(
            dir.path().join("repo"),
            "com.acme.app",
            &keys,
            &keys,
            &[&key],
            365,
            now(),
        )
        .unwrap();
        let file = dir.path().join("app.bin");
        std::fs::write(&file, b"payload").unwrap();
        (dir, repo, key, file)
    }

    fn publish(
        repo: &Repo,
        key: &SecretKey,
        file: &Path,
        version: &str,
        target: &str,
    ) -> Result<Manifest> {
        repo.release(
            "nightly",
            &version.parse().unwrap(),
            target,
            &[("app", file, ArtifactKind::File)],
            &ReleaseOptions::new(now()),
            &[key],
        )
    }

    /// A zip of `entries` empty files with 100-byte names: 146 bytes of central
    /// directory each.
    fn zip_of(path: &Path, entries: usize) {
        let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        for i in 0..entries {
            let name = format!("{i:06}-{}", "n".repeat(93));
            w.start_file(name, zip::write::SimpleFileOptions::default())
                .unwrap();
        }
        w.finish().unwrap();
    }

    /// A central directory larger than any device's config allows is refused by
    /// `release` as every device would refuse it (and never read into memory); one only
    /// larger than the default cap is warned about, naming the rule; a smaller one is not.
    #[test]
    fn a_central_directory_over_the_caps_is_refused_or_warned_about() {
        let (dir, repo, key, _) = setup();
        let path = dir.path().join("app.zip");
        zip_of(&path, 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
        let declared = crate::config::MAX_CENTRAL_DIRECTORY_BYTES + 1;
        bytes[at + 12..at + 16].copy_from_slice(&(declared as u32).to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let release = || {
            repo.release(
                "nightly",
                &"1.0.0".parse().unwrap(),
                "x",
                &[("app", &path, ArtifactKind::Zip)],
                &ReleaseOptions::new(now()),
                &[&key],
            )
        };
        let err = release().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsafeArchive, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("every device would refuse this archive")
                && msg.contains(&format!(
                    "expected a central directory of at most 268435456 bytes, found {declared}"
                )),
            "{msg}"
        );

        // Declared just over the default 16 MiB: devices on the defaults would refuse it.
        let declared = crate::stage::ArchiveLimits::default().max_central_directory_bytes + 1;
        bytes[at + 12..at + 16].copy_from_slice(&(declared as u32).to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let warnings = default_limit_refusals(&[("app", &path, ArtifactKind::Zip)]).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains(&format!(
                "expected a central directory of at most 16777216 bytes, found {declared}"
            )),
            "{warnings:?}"
        );
        // 8,000 entries, 1.17 MB of directory: published without a word.
        zip_of(&path, 8000);
        assert_eq!(
            default_limit_refusals(&[("app", &path, ArtifactKind::Zip)]).unwrap(),
            Vec::<String>::new()
        );
        release().unwrap();
    }

    #[test]
    fn every_change_bumps_the_sequence() {
        let (_dir, repo, key, file) = setup();
        assert_eq!(
            publish(&repo, &key, &file, "1.0.0", "x").unwrap().sequence,
            1
        );
        assert_eq!(
            publish(&repo, &key, &file, "1.0.0", "y").unwrap().sequence,
            2
        );
        let v = "1.0.0".parse().unwrap();
        assert_eq!(
            repo.rollout("nightly", &v, 5.0, &Signing::new(&[&key], now()))
                .unwrap()
                .sequence,
            3
        );
        assert_eq!(
            repo.resign("nightly", &Signing::new(&[&key], now()).valid_for(Some(2)))
                .unwrap()
                .sequence,
            4
        );
        let stable = repo
            .promote(&v, "nightly", "stable", None, &Signing::new(&[&key], now()))
            .unwrap();
        assert_eq!(stable.sequence, 1);
        let report = repo.verify(now()).unwrap();
        let seqs: Vec<u64> = report.channels.iter().map(|c| c.sequence).collect();
        assert_eq!(seqs, [4, 1]);
    }

    /// Component names are directories of the slot, so two that differ only in case
    /// would be one on a case-insensitive file system.
    #[test]
    fn component_names_are_distinct_ignoring_case() {
        let (_dir, repo, key, file) = setup();
        let opts = ReleaseOptions::new(now());
        let version = "1.0.0".parse().unwrap();
        for names in [["app", "app"], ["App", "app"]] {
            let components = names.map(|n| (n, file.as_path(), ArtifactKind::File));
            let err = repo
                .release("stable", &version, "x", &components, &opts, &[&key])
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{err}");
            let found = format!("found {:?} and {:?}", names[0], names[1]);
            assert!(err.to_string().contains(&found), "{err}");
        }
        let components = ["app", "assets"].map(|n| (n, file.as_path(), ArtifactKind::File));
        repo.release("stable", &version, "x", &components, &opts, &[&key])
            .unwrap();
    }

    /// A target added to a release after its promotion is not promoted by promoting again:
    /// the refusal names it and how it gets there.
    #[test]
    fn promoting_again_names_the_targets_added_since() {
        let (_dir, repo, key, file) = setup();
        let v: Version = "1.0.0".parse().unwrap();
        publish(&repo, &key, &file, "1.0.0", "x").unwrap();
        let signers = [&key];
        let sign = Signing::new(&signers, now());
        repo.promote(&v, "nightly", "stable", None, &sign).unwrap();
        publish(&repo, &key, &file, "1.0.0", "y").unwrap();
        let err = repo
            .promote(&v, "nightly", "stable", None, &sign)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(
            err.to_string().contains(
                "found 1.0.0 already there, without y which nightly lists: publish the same files there with `release --channel stable --version 1.0.0 --target …`"
            ),
            "{err}"
        );
    }

    /// No slot store installs an image beside other components, so no target lists one:
    /// the release is refused before any blob is copied or the channel touched.
    #[test]
    fn an_image_beside_other_components_is_refused() {
        let (dir, repo, key, file) = setup();
        let image = dir.path().join("rootfs.img");
        std::fs::write(&image, vec![7u8; 4096]).unwrap();
        let version = "1.0.0".parse().unwrap();
        let opts = ReleaseOptions::new(now());
        for components in [
            vec![
                ("rootfs", image.as_path(), ArtifactKind::Image),
                ("cfg", file.as_path(), ArtifactKind::File),
            ],
            vec![
                ("a", image.as_path(), ArtifactKind::Image),
                ("b", image.as_path(), ArtifactKind::Image),
            ],
        ] {
            let err = repo
                .release("stable", &version, "board", &components, &opts, &[&key])
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{err}");
            assert!(
                err.to_string()
                    .contains("expected an image component alone"),
                "{err}"
            );
        }
        assert!(!dir.path().join("repo/channels/stable.json").exists());
        let blobs =
            std::fs::read_dir(dir.path().join("repo/blobs/sha256")).map_or(0, |d| d.count());
        assert_eq!(blobs, 0);
        // An image alone, and files without one, are what the slot stores take.
        let alone = [("rootfs", image.as_path(), ArtifactKind::Image)];
        repo.release("stable", &version, "board", &alone, &opts, &[&key])
            .unwrap();
        publish(&repo, &key, &file, "1.0.0", "x86_64-linux").unwrap();
    }

    /// An empty image is nothing a device could write into its slot: the release is
    /// refused, naming the component, before its blob is kept or the channel touched,
    /// whether a file or a stream held it.
    #[test]
    fn an_empty_image_is_refused() {
        let (dir, repo, key, _file) = setup();
        let image = dir.path().join("rootfs.img");
        std::fs::write(&image, b"").unwrap();
        let version = "1.0.0".parse().unwrap();
        let opts = ReleaseOptions::new(now());
        let empty = [("rootfs", image.as_path(), ArtifactKind::Image)];
        let err = repo
            .release("stable", &version, "board", &empty, &opts, &[&key])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert_eq!(
            err.message(),
            format!(
                "component rootfs: {}: expected an image of at least 1 byte, found 0 bytes (a device writes the image into its slot as it is: publish the image itself)",
                image.display()
            )
        );
        assert!(!dir.path().join("repo/channels/stable.json").exists());
        // Read from a stream, the image is as empty, though no file says so beforehand.
        let err = repo
            .release(
                "stable",
                &version,
                "board",
                &[("rootfs", Path::new("/dev/null"), ArtifactKind::Image)],
                &opts,
                &[&key],
            )
            .unwrap_err();
        assert_eq!(
            err.message(),
            "component rootfs: /dev/null: expected an image of at least 1 byte, found 0 bytes (a device writes the image into its slot as it is: publish the image itself)"
        );
        assert!(!dir.path().join("repo/channels/stable.json").exists());
        let blobs = std::fs::read_dir(dir.path().join("repo/blobs/sha256")).unwrap();
        assert_eq!(blobs.count(), 0, "an empty image's blob was kept");
    }

    /// A rotation of the manifest key that cannot write one of its documents writes none;
    /// one that was cut off after some channels went in can be run again.
    #[test]
    fn a_rotation_is_written_whole_or_not_at_all() {
        let (dir, repo, key, file) = setup();
        publish(&repo, &key, &file, "1.0.0", "x").unwrap();
        repo.promote(
            &"1.0.0".parse().unwrap(),
            "nightly",
            "stable",
            None,
            &Signing::new(&[&key], now()),
        )
        .unwrap();
        let new_key = SecretKey::generate().unwrap();
        let opts = RotateOptions {
            manifest_keys: Some(vec![new_key.public()]),
            ..RotateOptions::default()
        };
        let channels = dir.path().join("repo/channels");
        let read = |c: &str| std::fs::read(channels.join(format!("{c}.json"))).unwrap();
        let before = (read("nightly"), read("stable"));
        // The temp file of the second channel cannot be created.
        let blocker = fsutil::temp_path(&channels.join("stable.json"));
        std::fs::create_dir(&blocker).unwrap();
        let err = repo.rotate(&opts, &[&key, &new_key], now()).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(!dir.path().join("repo/root/2.json").exists());
        assert_eq!((read("nightly"), read("stable")), before);
        assert!(!fsutil::temp_path(&channels.join("nightly.json")).exists());
        std::fs::remove_dir(&blocker).unwrap();

        // Cut off after the first channel went in: running the rotation again finishes it.
        let next = repo.rotate(&opts, &[&key, &new_key], now()).unwrap();
        std::fs::remove_file(dir.path().join("repo/root/2.json")).unwrap();
        std::fs::write(channels.join("stable.json"), &before.1).unwrap();
        assert_eq!(next.root.root().version, 2);
        let names = |r: &Rotation| {
            r.channels
                .iter()
                .map(|m| m.channel.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&next), ["nightly", "stable"]);
        let again = repo.rotate(&opts, &[&key, &new_key], now()).unwrap();
        assert_eq!(again.root.root().version, 2);
        assert_eq!(names(&again), ["nightly", "stable"]);
        repo.verify(now()).unwrap();
    }

    /// Publishes `version` on nightly; with `min`, that `min_version` is set afterwards,
    /// whether or not a release leads up to it: these fixtures are the channels a
    /// publisher without the stepping-stone check, or a stone halted since, left.
    fn publish_with(
        repo: &Repo,
        key: &SecretKey,
        file: &Path,
        version: &str,
        target: &str,
        min: Option<&str>,
    ) {
        let options = ReleaseOptions::new(now());
        let components = [("app", file, ArtifactKind::File)];
        repo.release(
            "nightly",
            &version.parse().unwrap(),
            target,
            &components,
            &options,
            &[key],
        )
        .unwrap();
        if let Some(min) = min {
            set_min_version(repo, key, "nightly", version, min, now());
        }
    }

    /// [`setup`] with 1.0.0 and 1.1.0 on nightly for `x`, then 2.0.0 whose `min_version`
    /// 1.1.0 makes 1.1.0 the stepping stone of the devices on 1.0.0.
    fn setup_with_a_stone() -> (tempfile::TempDir, Repo, SecretKey, PathBuf) {
        let (dir, repo, key, file) = setup();
        publish_with(&repo, &key, &file, "1.0.0", "x", None);
        publish_with(&repo, &key, &file, "1.1.0", "x", None);
        publish_with(&repo, &key, &file, "2.0.0", "x", Some("1.1.0"));
        (dir, repo, key, file)
    }

    /// Gives `version` on `channel` the `min_version` `min`, with no check.
    fn set_min_version(
        repo: &Repo,
        key: &SecretKey,
        channel: &str,
        version: &str,
        min: &str,
        now: Timestamp,
    ) {
        let _lock = repo.lock().unwrap();
        let trusted = repo.trusted_root().unwrap();
        let change = Change {
            channel,
            create: false,
            expires_in_days: None,
            now,
        };
        repo.update_channel(&trusted, &change, &[key], |m| {
            for r in m.releases.iter_mut() {
                if r.version.to_string() == version {
                    r.min_version = Some(min.parse().unwrap());
                }
            }
            Ok(Edit::Changed)
        })
        .unwrap();
    }

    fn versions(list: &[&str]) -> Vec<Version> {
        list.iter().map(|v| v.parse().unwrap()).collect()
    }

    #[test]
    fn prune_keeps_the_newest_of_each_target() {
        let (_dir, repo, key, file) = setup();
        for (v, target) in [
            ("1.0.0", "x"),
            ("1.1.0", "x"),
            ("1.2.0", "y"),
            ("1.3.0", "x"),
        ] {
            publish_with(&repo, &key, &file, v, target, None);
        }
        let (m, removed) = repo
            .prune("nightly", 1, &Signing::new(&[&key], now()))
            .unwrap();
        assert_eq!(removed, versions(&["1.1.0", "1.0.0"]));
        let left: Vec<Version> = m.releases.iter().map(|r| r.version.clone()).collect();
        assert_eq!(left, versions(&["1.2.0", "1.3.0"]));
        assert_eq!(m.sequence, 5);
        // What was written is what a client accepts.
        let report = repo.verify(now()).unwrap();
        assert_eq!(report.channels[0].sequence, 5);
    }

    #[test]
    fn prune_keeps_the_stepping_stones_kept_releases_name() {
        let (_dir, repo, key, file) = setup_with_a_stone();
        publish_with(&repo, &key, &file, "3.0.0", "x", Some("2.0.0"));
        let (m, removed) = repo
            .prune("nightly", 1, &Signing::new(&[&key], now()))
            .unwrap();
        assert_eq!(removed, versions(&["1.0.0"]));
        assert_eq!(m.releases.len(), 3);
    }

    #[test]
    fn prune_with_nothing_to_remove_writes_nothing_and_keep_zero_is_refused() {
        let (_dir, repo, key, file) = setup();
        publish_with(&repo, &key, &file, "1.0.0", "x", None);
        let (m, removed) = repo
            .prune("nightly", 5, &Signing::new(&[&key], now()))
            .unwrap();
        assert!(removed.is_empty());
        assert_eq!(m.sequence, 1);
        let err = repo
            .prune("nightly", 0, &Signing::new(&[&key], now()))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        let err = repo
            .prune("stable", 1, &Signing::new(&[&key], now()))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(repo.verify(now()).unwrap().channels[0].sequence, 1);
    }

    #[test]
    fn a_manifest_devices_would_refuse_as_too_large_is_not_published() {
        let (_dir, repo, key, file) = setup();
        publish(&repo, &key, &file, "1.0.0", "x").unwrap();
        let channel = repo.path().join("channels/nightly.json");
        let before = std::fs::read(&channel).unwrap();
        let mut options = ReleaseOptions::new(now());
        // Over the devices' default cap once base64-encoded in the envelope.
        options.notes = "n".repeat(800 << 10);
        let err = repo
            .release(
                "nightly",
                &"1.1.0".parse().unwrap(),
                "x",
                &[("app", &file, ArtifactKind::File)],
                &options,
                &[&key],
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
        assert_eq!(std::fs::read(&channel).unwrap(), before);
    }

    #[test]
    fn the_same_version_and_target_twice_is_a_config_error() {
        let (_dir, repo, key, file) = setup();
        publish(&repo, &key, &file, "1.0.0", "x").unwrap();
        let err = publish(&repo, &key, &file, "1.0.0", "x").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert_eq!(repo.verify(now()).unwrap().channels[0].sequence, 1);
    }

    #[test]
    fn another_build_of_a_listed_version_is_a_config_error() {
        let (_dir, repo, key, file) = setup();
        publish(&repo, &key, &file, "1.0.0+a", "x").unwrap();
        for target in ["x", "y"] {
            let err = publish(&repo, &key, &file, "1.0.0+b", target).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.to_string().contains("found 1.0.0+a already"), "{err}");
        }
        assert_eq!(repo.verify(now()).unwrap().channels[0].sequence, 1);
    }

    #[test]
    fn a_signer_outside_the_manifest_role_changes_nothing() {
        let (_dir, repo, _key, file) = setup();
        let stranger = SecretKey::generate().unwrap();
        let err = publish(&repo, &stranger, &file, "1.0.0", "x").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Threshold);
        assert!(repo.verify(now()).unwrap().channels.is_empty());
        let blobs = std::fs::read_dir(repo.path().join("blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(blobs, 0);
    }

    #[test]
    fn rollout_of_an_unknown_version_is_no_such_version() {
        let (_dir, repo, key, file) = setup();
        publish(&repo, &key, &file, "1.0.0", "x").unwrap();
        let err = repo
            .rollout(
                "nightly",
                &"2.0.0".parse().unwrap(),
                5.0,
                &Signing::new(&[&key], now()),
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoSuchVersion);
    }

    /// Where the blob of the first release's `app` for target `x` lies.
    fn app_blob(repo: &Repo, m: &Manifest) -> PathBuf {
        let app = &m.releases[0].targets["x"].components["app"];
        repo.path().join(app.artifact.blob_path())
    }

    #[test]
    fn a_tampered_blob_fails_verify_with_hash_mismatch() {
        let (_dir, repo, key, file) = setup();
        let m = publish(&repo, &key, &file, "1.0.0", "x").unwrap();
        let blob = app_blob(&repo, &m);
        std::fs::write(&blob, b"PAYLOAD").unwrap();
        assert_eq!(
            repo.verify(now()).unwrap_err().kind(),
            ErrorKind::HashMismatch
        );
    }

    /// A damaged blob (disk, a hand edit) is what devices refuse; publishing the same file
    /// again puts the right bytes back instead of failing on it.
    #[test]
    fn publishing_a_file_again_repairs_its_damaged_blob() {
        let (_dir, repo, key, file) = setup();
        let m = publish(&repo, &key, &file, "1.0.0", "x").unwrap();
        let blob = app_blob(&repo, &m);
        std::fs::write(&blob, b"PAYLOAD").unwrap();
        publish(&repo, &key, &file, "1.1.0", "x").unwrap();
        assert_eq!(std::fs::read(&blob).unwrap(), b"payload");
        assert_eq!(repo.verify(now()).unwrap().channels[0].blobs_checked, 2);
        assert!(repo.stray_temps().is_empty());
    }

    /// Releases from several threads at once (each open of the lock file is its own
    /// lock, so threads exclude each other as processes do): every one lands.
    #[test]
    fn concurrent_releases_all_land() {
        let (_dir, repo, key, file) = setup();
        let (rounds, threads) = (3, 4);
        for round in 0..rounds {
            let barrier = std::sync::Barrier::new(threads);
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (repo, key, file, barrier) = (&repo, &key, &file, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        publish(repo, key, file, &format!("{round}.{t}.0"), "x").unwrap();
                    });
                }
            });
        }
        let report = repo.verify(now()).unwrap();
        assert_eq!(report.channels[0].versions.len(), rounds * threads);
        assert_eq!(report.channels[0].sequence, (rounds * threads) as u64);
    }

    /// A release cancelled in the middle of copying a component removes its partial
    /// copy and signs nothing: a cancel is how the CLI's Ctrl-C ends it before it is
    /// killed, which would leave the copy behind.
    #[test]
    fn a_cancelled_copy_leaves_no_temp_file_and_publishes_nothing() {
        let (dir, repo, key, _) = setup();
        let big = dir.path().join("big.img");
        // Several chunks, so the copy is cut off after the first.
        std::fs::write(&big, vec![7u8; 300 * 1024]).unwrap();
        let cancel = CancelToken::new();
        cancel.cancel();
        let err = repo
            .with_cancel(cancel)
            .release(
                "nightly",
                &"1.0.0".parse().unwrap(),
                "x",
                &[("rootfs", big.as_path(), ArtifactKind::Image)],
                &ReleaseOptions::new(now()),
                &[&key],
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
        assert!(err.to_string().starts_with("component rootfs"), "{err}");
        let blobs: Vec<_> = std::fs::read_dir(dir.path().join("repo/blobs/sha256"))
            .unwrap()
            .collect();
        assert!(blobs.is_empty(), "{blobs:?}");
        assert!(!dir.path().join("repo/channels/nightly.json").exists());
    }

    /// Every writer holds the lock, so the temp files found under it are those of runs
    /// killed or crashed before; no rerun would remove them otherwise (its temp names
    /// carry its own pid), and `verify` reports them meanwhile.
    #[test]
    fn temp_files_of_earlier_runs_are_reported_by_verify_and_removed_under_the_lock() {
        let (dir, repo, key, file) = setup();
        publish(&repo, &key, &file, "1.0.0", "x").unwrap();
        let repo_dir = dir.path().join("repo");
        let stale = [
            repo_dir.join("blobs/sha256/incoming.tmp-4000001"),
            repo_dir.join("channels/nightly.json.tmp-4000002"),
            repo_dir.join("root/2.json.tmp-4000003"),
        ];
        for path in &stale {
            std::fs::write(path, b"cut off").unwrap();
        }
        let mut reported = repo.verify(now()).unwrap().stray_temps;
        reported.sort();
        let mut expected = stale.to_vec();
        expected.sort();
        assert_eq!(reported, expected);
        publish(&repo, &key, &file, "1.1.0", "x").unwrap();
        for path in &stale {
            assert!(!path.exists(), "{} is left", path.display());
        }
        assert!(repo.verify(now()).unwrap().stray_temps.is_empty());
    }

    /// Two `init`s at once both pass the early check; the second to write must not
    /// replace the root the first one told its operator to pin.
    #[test]
    fn the_first_root_is_never_written_over_one_that_appeared_after_the_check() {
        let (dir, repo, _, _) = setup();
        let first = dir.path().join("repo/root/1.json");
        let pinned = std::fs::read(&first).unwrap();
        let other = SecretKey::generate().unwrap();
        let err = repo.write_first_root(other.public().to_base64().as_bytes());
        let err = err.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.to_string().contains("root/1.json"), "{err}");
        assert_eq!(std::fs::read(&first).unwrap(), pinned);
        assert!(repo.verify(now()).unwrap().stray_temps.is_empty());
    }

    /// What `select` offers a device running `installed` on target `x`.
    fn offer(m: &Manifest, installed: &str) -> Option<Version> {
        offer_at(m, "device-1", installed, now())
    }

    fn nightly(repo: &Repo) -> Manifest {
        let trusted = repo.trusted_root().unwrap();
        repo.load_channel(&trusted, "nightly").unwrap().unwrap()
    }

    /// A stepping stone is found by precedence, as devices find it: another build of the
    /// `min_version`, or the oldest release above it when it is not listed itself.
    #[test]
    fn prune_keeps_the_stepping_stone_a_device_below_min_version_is_offered() {
        for (releases, stone) in [
            (
                [
                    ("1.0.0", None),
                    ("1.1.0+b7", None),
                    ("2.0.0", Some("1.1.0")),
                ],
                "1.1.0+b7",
            ),
            (
                [("1.0.0", None), ("1.6.0", None), ("2.0.0", Some("1.5.0"))],
                "1.6.0",
            ),
        ] {
            let (_dir, repo, key, file) = setup();
            for (v, min) in releases {
                publish_with(&repo, &key, &file, v, "x", min);
            }
            let stone: Version = stone.parse().unwrap();
            assert_eq!(offer(&nightly(&repo), "1.0.0"), Some(stone.clone()));
            let (m, removed) = repo
                .prune("nightly", 1, &Signing::new(&[&key], now()))
                .unwrap();
            assert_eq!(removed, versions(&["1.0.0"]));
            assert_eq!(offer(&m, "1.0.0"), Some(stone.clone()));
            assert_eq!(
                offer(&m, stone.to_string().as_str()),
                Some(versions(&["2.0.0"])[0].clone())
            );
        }
    }

    /// Devices outside a ramping or halted release's rollout still take the release
    /// before it: only releases rolled out to everyone count towards `keep`.
    #[test]
    fn prune_counts_only_releases_rolled_out_to_everyone() {
        let (_dir, repo, key, file) = setup();
        publish_with(&repo, &key, &file, "1.0.0", "x", None);
        let mut ramping = ReleaseOptions::new(now());
        ramping.rollout_percent = Some(20.0);
        let components = [("app", file.as_path(), ArtifactKind::File)];
        let v11: Version = "1.1.0".parse().unwrap();
        repo.release("nightly", &v11, "x", &components, &ramping, &[&key])
            .unwrap();
        publish_with(&repo, &key, &file, "1.2.0", "x", None);
        let v12 = "1.2.0".parse().unwrap();
        repo.rollout("nightly", &v12, 0.0, &Signing::new(&[&key], now()))
            .unwrap();
        let (m, removed) = repo
            .prune("nightly", 1, &Signing::new(&[&key], now()))
            .unwrap();
        assert!(removed.is_empty(), "{removed:?}");
        assert_eq!(m.releases.len(), 3);
        // At 100% the ramp counts: 1.0.0 goes, the halted 1.2.0 stays above it.
        let later = now().plus_secs(60);
        repo.rollout("nightly", &v11, 100.0, &Signing::new(&[&key], later))
            .unwrap();
        let (m, removed) = repo
            .prune("nightly", 1, &Signing::new(&[&key], later))
            .unwrap();
        assert_eq!(removed, versions(&["1.0.0"]));
        assert_eq!(m.releases.len(), 2);
    }

    /// Publishes `v` on `channel` for `target` with `security` and, when given, a rollout
    /// at `percent`.
    fn publish_on(
        repo: &Repo,
        key: &SecretKey,
        file: &Path,
        channel: &str,
        (v, target): (&str, &str),
        (security, percent): (u64, Option<f64>),
    ) -> Result<Manifest> {
        let mut options = ReleaseOptions::new(now());
        options.security_version = security;
        options.rollout_percent = percent;
        let components = [("app", file, ArtifactKind::File)];
        let version = v.parse().unwrap();
        repo.release(channel, &version, target, &components, &options, &[key])
    }

    /// The stone kept is the one `select` offers a device below `min_version`: the newest
    /// release from it up that is rolled out to everyone, not an older halted one.
    #[test]
    fn prune_keeps_the_stone_devices_take_not_a_halted_one() {
        type Case<'a> = ([(&'a str, Option<f64>); 3], &'a str, &'a str, Vec<&'a str>);
        let cases: [Case; 3] = [
            (
                [("1.0.0", None), ("1.1.0", Some(0.0)), ("1.2.0", None)],
                "1.1.0",
                "1.2.0",
                vec!["1.1.0", "1.0.0"],
            ),
            (
                [("1.0.0", None), ("1.6.0", Some(0.0)), ("1.7.0", None)],
                "1.5.0",
                "1.7.0",
                vec!["1.6.0", "1.0.0"],
            ),
            // A halted release below the newest full one is offered to no device: it goes.
            (
                [("1.0.0", None), ("1.1.0", None), ("1.2.0", Some(0.0))],
                "1.1.0",
                "1.1.0",
                vec!["1.2.0", "1.0.0"],
            ),
        ];
        for (releases, min, stone, gone) in cases {
            let (_dir, repo, key, file) = setup();
            for (v, percent) in releases {
                publish_on(&repo, &key, &file, "nightly", (v, "x"), (0, percent)).unwrap();
            }
            publish_with(&repo, &key, &file, "2.0.0", "x", Some(min));
            let stone: Version = stone.parse().unwrap();
            assert_eq!(offer(&nightly(&repo), "1.0.0"), Some(stone.clone()));
            let (m, removed) = repo
                .prune("nightly", 1, &Signing::new(&[&key], now()))
                .unwrap();
            assert_eq!(removed, versions(&gone), "min {min}");
            assert_eq!(offer(&m, "1.0.0"), Some(stone.clone()), "min {min}");
            assert_eq!(
                offer(&m, &stone.to_string()),
                Some(versions(&["2.0.0"])[0].clone())
            );
        }
    }

    /// Prune keeps what devices are offered, and only that: a stone with a `min_version` of
    /// its own above the device is no stone, and releases sharing one `min_version` do not
    /// pull each other in.
    #[test]
    fn prune_keeps_only_what_a_device_is_offered() {
        let (_dir, repo, key, file) = setup();
        for (v, min) in [("1.0.0", None), ("1.1.0", None), ("1.3.0", Some("1.2.0"))] {
            publish_with(&repo, &key, &file, v, "x", min);
        }
        publish_with(&repo, &key, &file, "2.0.0", "x", Some("1.1.0"));
        assert_eq!(
            offer(&nightly(&repo), "1.0.0"),
            Some(versions(&["1.1.0"])[0].clone())
        );
        let (m, _) = repo
            .prune("nightly", 1, &Signing::new(&[&key], now()))
            .unwrap();
        assert_eq!(offer(&m, "1.0.0"), Some(versions(&["1.1.0"])[0].clone()));

        let (_dir, repo, key, file) = setup();
        publish_with(&repo, &key, &file, "1.0.0", "x", None);
        publish_with(&repo, &key, &file, "2.0.0", "x", None);
        for v in ["2.1.0", "2.2.0", "2.3.0", "2.4.0"] {
            publish_with(&repo, &key, &file, v, "x", Some("2.0.0"));
        }
        let (m, _) = repo
            .prune("nightly", 1, &Signing::new(&[&key], now()))
            .unwrap();
        let kept: Vec<String> = m.releases.iter().map(|r| r.version.to_string()).collect();
        assert_eq!(kept, ["2.0.0", "2.4.0"]);
    }

    /// A stone halted for now may be ramped up again, and devices already on it need the
    /// release after it: two prunes in a row keep both. A `min_version` naming no listed
    /// release (pruned before) still keeps what its devices take.
    #[test]
    fn prune_keeps_a_halted_stone_and_what_devices_at_a_min_version_take() {
        let (_dir, repo, key, file) = setup();
        publish_with(&repo, &key, &file, "1.0.0", "x", None);
        publish_on(
            &repo,
            &key,
            &file,
            "nightly",
            ("1.5.0", "x"),
            (0, Some(30.0)),
        )
        .unwrap();
        publish_with(&repo, &key, &file, "2.0.0", "x", Some("1.5.0"));
        publish_with(&repo, &key, &file, "3.0.0", "x", Some("2.0.0"));
        let halted: Version = "1.5.0".parse().unwrap();
        repo.rollout("nightly", &halted, 0.0, &Signing::new(&[&key], now()))
            .unwrap();
        for _ in 0..2 {
            repo.prune("nightly", 1, &Signing::new(&[&key], now()))
                .unwrap();
        }
        let m = nightly(&repo);
        assert!(m.release(&halted).is_some());
        assert_eq!(offer(&m, "1.5.0"), Some(versions(&["2.0.0"])[0].clone()));

        let (_dir, repo, key, file) = setup();
        publish_with(&repo, &key, &file, "1.0.0", "x", None);
        publish_with(&repo, &key, &file, "2.0.0", "x", Some("1.5.0"));
        publish_with(&repo, &key, &file, "3.0.0", "x", Some("2.0.0"));
        repo.prune("nightly", 1, &Signing::new(&[&key], now()))
            .unwrap();
        assert_eq!(
            offer(&nightly(&repo), "1.5.0"),
            Some(versions(&["2.0.0"])[0].clone())
        );
    }

    /// What `select` offers the device `id` running `installed` on target `x` at `at`.
    fn offer_at(m: &Manifest, id: &str, installed: &str, at: Timestamp) -> Option<Version> {
        offered_to(m, "x", id, &(installed.parse().unwrap(), 0), at)
    }

    /// Devices outside a ramp still take the stone at 100 % below a `min_version`: prune
    /// keeps it (it removed it, though a ramp at 10 % left 90 % of them offered nothing),
    /// and a halt of the ramp later leaves them on their way.
    #[test]
    fn prune_keeps_the_stone_devices_outside_a_ramp_take() {
        let (_dir, repo, key, file) = setup_with_a_stone();
        publish_on(
            &repo,
            &key,
            &file,
            "nightly",
            ("2.1.0", "x"),
            (0, Some(10.0)),
        )
        .unwrap();
        let ids: Vec<String> = (1..=40).map(|i| format!("p{i}")).collect();
        let m = nightly(&repo);
        let before: Vec<Option<Version>> = ids
            .iter()
            .map(|id| offer_at(&m, id, "1.0.0", now()))
            .collect();
        let stone = Some(versions(&["1.1.0"])[0].clone());
        let ramp = Some(versions(&["2.1.0"])[0].clone());
        assert!(
            before.contains(&stone) && before.contains(&ramp),
            "{before:?}"
        );

        let (m, removed) = repo
            .prune("nightly", 1, &Signing::new(&[&key], now()))
            .unwrap();
        assert_eq!(removed, versions(&["1.0.0"]));
        for (id, offered) in ids.iter().zip(&before) {
            assert_eq!(&offer_at(&m, id, "1.0.0", now()), offered, "{id}");
        }
        let later = now().plus_secs(60);
        let v21 = versions(&["2.1.0"])[0].clone();
        let m = repo
            .rollout("nightly", &v21, 0.0, &Signing::new(&[&key], later))
            .unwrap();
        for id in &ids {
            assert_eq!(offer_at(&m, id, "1.0.0", later), stone, "{id}");
        }
        assert!(stranded(&m, later).is_empty());
    }

    /// Whichever rollouts reach a device (a device in some, outside others, or all of them
    /// halted or ramped to 100 % later), one offered a release before a prune is offered
    /// one after it. Channels drawn from fixed seeds: releases with and without rollouts
    /// (ramping, halted, scheduled, never started), `min_version`s on listed releases and
    /// on pruned ones, rising security versions, two targets.
    #[test]
    fn prune_leaves_no_device_offered_nothing_in_any_mix_of_rollouts() {
        struct Rng(u64);
        impl Rng {
            fn below(&mut self, n: u64) -> u64 {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0 % n
            }
        }
        let t0 = now();
        let at = t0.plus_secs(7200);
        let stage = |secs: i64, percent: f64| RolloutStage {
            at: t0.plus_secs(secs),
            percent,
        };
        let rollouts: [Option<Vec<RolloutStage>>; 8] = [
            None,
            Some(vec![stage(0, 100.0)]),
            Some(vec![stage(0, 10.0)]),
            Some(vec![stage(0, 10.0), stage(3600, 50.0)]),
            Some(vec![stage(0, 0.0)]),
            Some(vec![stage(0, 30.0), stage(3600, 0.0)]),
            Some(vec![stage(0, 0.0), stage(86_400, 50.0)]),
            Some(vec![stage(0, 10.0), stage(3600, 100.0)]),
        ];
        let base = Manifest {
            doc_type: "manifest".into(),
            product: "p".into(),
            channel: "c".into(),
            sequence: 1,
            issued: t0,
            expires: t0.plus_secs(86_400 * 30),
            releases: Vec::new(),
        };
        let mut checked = 0;
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut m = base.clone();
            let mut security = 0;
            for i in 0..3 + rng.below(7) {
                security += u64::from(rng.below(4) == 0);
                let min_version = match rng.below(3) {
                    0 if i > 0 => Some(Version::new(1, rng.below(i), 5 * rng.below(2))),
                    _ => None,
                };
                let targets: &[&str] = match rng.below(6) {
                    0 => &["y"],
                    1 => &["x", "y"],
                    _ => &["x"],
                };
                let rollout = rng.below(3) == 0;
                let rollout = rollouts[if rollout { rng.below(8) } else { 0 } as usize]
                    .clone()
                    .map(|stages| Rollout { stages });
                m.releases.push(Release {
                    version: Version::new(1, i, 0),
                    published: None,
                    notes: String::new(),
                    min_version,
                    critical: false,
                    security_version: security,
                    rollout,
                    targets: targets
                        .iter()
                        .map(|t| {
                            let components = NameMap::default();
                            (*t, TargetRelease { components })
                        })
                        .collect(),
                });
            }
            for keep in 1..=2 {
                let kept = releases_to_keep(&m, keep, at);
                let mut pruned = m.clone();
                pruned.releases.retain(|r| kept.contains(&r.version));
                // A device's mix: each release short of 100 % that may reach someone (or
                // that stays, and so may be ramped) is in it or not; the rest reach no one.
                let open: Vec<Version> = m
                    .releases
                    .iter()
                    .filter(|r| !rolled_out_to_everyone(r, at))
                    .filter(|r| {
                        kept.contains(&r.version)
                            || r.rollout
                                .as_ref()
                                .unwrap()
                                .stages
                                .iter()
                                .any(|s| s.percent > 0.0)
                    })
                    .map(|r| r.version.clone())
                    .collect();
                let mix = |channel: &Manifest, inside: u64| {
                    let mut seen = channel.clone();
                    for r in seen
                        .releases
                        .iter_mut()
                        .filter(|r| !rolled_out_to_everyone(r, at))
                    {
                        let i = open.iter().position(|v| *v == r.version);
                        if i.is_some_and(|i| inside & (1 << i) != 0) {
                            r.rollout = None;
                        } else {
                            r.rollout = Some(Rollout {
                                stages: vec![stage(0, 0.0)],
                            });
                        }
                    }
                    seen
                };
                let mut running: Vec<(Version, u64)> = m
                    .releases
                    .iter()
                    .map(|r| (r.version.clone(), r.security_version))
                    .collect();
                for r in &m.releases {
                    let Some(min) = &r.min_version else { continue };
                    let below = m.releases.iter().filter(|o| o.version <= *min);
                    let floor = below.map(|o| o.security_version).max().unwrap_or(0);
                    running.push((min.clone(), floor));
                }
                running.push((Version::new(0, 0, 0), 0));
                for inside in 0..1u64 << open.len().min(6) {
                    let (before, after) = (mix(&m, inside), mix(&pruned, inside));
                    for target in ["x", "y"] {
                        for device in &running {
                            let was = offered(&before, target, device, at);
                            let is = offered(&after, target, device, at);
                            assert!(
                                was.is_none() || is.is_some(),
                                "seed {seed}, keep {keep}: a {target} device on {} (floor {}) in the rollouts of {:?} was offered {was:?}, nothing after keeping {kept:?} of {:#?}",
                                device.0,
                                device.1,
                                open.iter().enumerate().filter(|(i, _)| inside & (1 << i) != 0).map(|(_, v)| v.to_string()).collect::<Vec<_>>(),
                                m.releases.iter().map(|r| (r.version.to_string(), r.min_version.as_ref().map(ToString::to_string), r.security_version, r.rollout.as_ref().map(|ro| ro.percent_at(at)))).collect::<Vec<_>>(),
                            );
                            checked += usize::from(was.is_some());
                        }
                    }
                }
            }
        }
        assert!(checked > 1000, "{checked} offers checked");
    }

    /// Devices of one target never see another target's releases, and a device that
    /// confirms a release never installs a newer one with a lower security version: the
    /// order is checked per target, both ways, also when a target is added.
    #[test]
    fn security_versions_are_ordered_per_target_both_ways() {
        let (_dir, repo, key, file) = setup();
        let on = |v: &str, target: &str, security: u64| {
            publish_on(&repo, &key, &file, "nightly", (v, target), (security, None))
        };
        on("1.0.0", "arm", 2).unwrap();
        // Another target: no device of x ever confirmed 1.0.0.
        on("1.1.0", "x", 0).unwrap();
        // Older than 1.1.0 with more: devices confirming 0.9.0 could never take 1.1.0.
        let err = on("0.9.0", "x", 5).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        let message = err.to_string();
        for part in ["at most 0", "found 5", "0.9.0 on x", "newer release 1.1.0"] {
            assert!(message.contains(part), "{part}: {err}");
        }
        // Adding x to 1.0.0 (security 2, above the newer 1.1.0's 0): refused the same way.
        let err = on("1.0.0", "x", 0).unwrap_err();
        let message = err.to_string();
        for part in ["at most 0", "found 2", "1.0.0 on x", "newer release 1.1.0"] {
            assert!(message.contains(part), "{part}: {err}");
        }
        // Adding arm to 1.1.0 (security 0, after 1.0.0's 2 on arm): refused too.
        let err = on("1.1.0", "arm", 0).unwrap_err();
        let message = err.to_string();
        for part in [
            "at least 2",
            "found 0",
            "1.1.0 on arm",
            "older release 1.0.0",
        ] {
            assert!(message.contains(part), "{part}: {err}");
        }
        assert_eq!(nightly(&repo).sequence, 2);
    }

    /// Promote checks the security order per target and both ways too.
    #[test]
    fn promote_orders_security_versions_per_target_both_ways() {
        let (_dir, repo, key, file) = setup();
        let v = |s: &str| -> Version { s.parse().unwrap() };
        let lab = |ver: &str, target: &str, security: u64| {
            publish_on(&repo, &key, &file, "lab", (ver, target), (security, None)).unwrap();
        };
        lab("1.0.0", "arm", 2);
        lab("1.1.0", "x", 0);
        publish_on(&repo, &key, &file, "old", ("0.9.0", "x"), (5, None)).unwrap();
        let promote = |ver: &str, from: &str| {
            repo.promote(&v(ver), from, "stable", None, &Signing::new(&[&key], now()))
        };
        promote("1.0.0", "lab").unwrap();
        promote("1.1.0", "lab").unwrap();
        let err = promote("0.9.0", "old").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        let message = err.to_string();
        for part in ["at most 0", "found 5", "newer release 1.1.0", "stable"] {
            assert!(message.contains(part), "{part}: {err}");
        }
    }

    /// What `select` offers a device of `x` running 1.0.0 is what counts: a newer release
    /// without a `min_version` already takes it past the promoted one's `min_version`.
    #[test]
    fn promote_needs_no_stone_where_devices_are_offered_a_way_on() {
        let (_dir, repo, key, file) = setup();
        let v = |s: &str| -> Version { s.parse().unwrap() };
        for ver in ["1.0.0", "3.0.0"] {
            publish_with(&repo, &key, &file, ver, "x", None);
        }
        publish_with(&repo, &key, &file, "2.0.0", "x", Some("1.5.0"));
        let promote = |ver: &str| {
            repo.promote(
                &v(ver),
                "nightly",
                "stable",
                None,
                &Signing::new(&[&key], now()),
            )
        };
        promote("1.0.0").unwrap();
        promote("3.0.0").unwrap();
        let m = promote("2.0.0").unwrap();
        assert_eq!(offer(&m, "1.0.0"), Some(v("3.0.0")));
    }

    /// `release` checks stepping stones as `promote` does: a `min_version` no listed
    /// release leads up to is refused, and accepted once one does.
    #[test]
    fn release_refuses_a_min_version_that_strands_devices() {
        let (_dir, repo, key, file) = setup();
        publish_with(&repo, &key, &file, "1.0.0", "x", None);
        let mut options = ReleaseOptions::new(now());
        options.min_version = Some("1.5.0".parse().unwrap());
        let components = [("app", file.as_path(), ArtifactKind::File)];
        let v2: Version = "2.0.0".parse().unwrap();
        let err = repo
            .release("nightly", &v2, "x", &components, &options, &[&key])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(
            err.to_string().contains(
                "expected a stepping stone on channel nightly for x devices running 1.0.0"
            ),
            "{err}"
        );
        assert!(nightly(&repo).release(&v2).is_none());
        publish_with(&repo, &key, &file, "1.5.0", "x", None);
        repo.release("nightly", &v2, "x", &components, &options, &[&key])
            .unwrap();
        assert_eq!(
            offer(&nightly(&repo), "1.0.0"),
            Some("1.5.0".parse().unwrap())
        );
    }

    /// Adding a target to a release with a `min_version` is checked as publishing it for
    /// that target would be: its devices below `min_version` need a stone there too.
    #[test]
    fn adding_a_target_refuses_a_min_version_that_strands_its_devices() {
        let (_dir, repo, key, file) = setup();
        publish_with(&repo, &key, &file, "1.0.0", "x", None);
        publish_with(&repo, &key, &file, "1.0.0", "y", None);
        publish_with(&repo, &key, &file, "1.5.0", "x", None);
        let mut options = ReleaseOptions::new(now());
        options.min_version = Some("1.5.0".parse().unwrap());
        let components = [("app", file.as_path(), ArtifactKind::File)];
        let v2: Version = "2.0.0".parse().unwrap();
        repo.release("nightly", &v2, "x", &components, &options, &[&key])
            .unwrap();
        let options = ReleaseOptions::new(now());
        let err = repo
            .release("nightly", &v2, "y", &components, &options, &[&key])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(
            err.to_string().contains(
                "expected a stepping stone on channel nightly for y devices running 1.0.0"
            ),
            "{err}"
        );
        let m = nightly(&repo);
        assert!(!m.release(&v2).unwrap().targets.contains_key("y"));
        assert!(stranded(&m, now()).is_empty());
        // With the stone there for y as well, the target goes in.
        publish_with(&repo, &key, &file, "1.5.0", "y", None);
        repo.release("nightly", &v2, "y", &components, &options, &[&key])
            .unwrap();
        assert!(stranded(&nightly(&repo), now()).is_empty());
    }

    /// Devices running a version older than every listed release (one pruned, say) are
    /// named too, once per target, up to the lowest `min_version` a release that reaches
    /// them asks for; a release they can take from anywhere leaves none.
    #[test]
    fn stranded_names_the_devices_below_every_listed_release() {
        let (_dir, repo, key, file) = setup();
        for target in ["x", "y"] {
            publish_with(&repo, &key, &file, "1.5.0", target, Some("1.0.0"));
            publish_with(&repo, &key, &file, "2.0.0", target, Some("1.5.0"));
        }
        let below = |target: &str, v: &str| Stranded {
            target: target.into(),
            devices: StrandedDevices::Below(v.parse().unwrap()),
        };
        let m = nightly(&repo);
        assert_eq!(offer(&m, "0.9.0"), None);
        assert_eq!(offer(&m, "1.2.0"), Some(versions(&["1.5.0"])[0].clone()));
        assert_eq!(
            stranded(&m, now()),
            [below("x", "1.0.0"), below("y", "1.0.0")]
        );
        assert_eq!(
            serde_json::to_value(&stranded(&m, now())[0]).unwrap(),
            serde_json::json!({"target": "x", "below": "1.0.0"})
        );
        // With the stone halted, devices below it are all left: 1.2.0 as 0.9.0.
        let signers = [&key];
        let stone_at = |percent| {
            let sign = Signing::new(&signers, now());
            let m = repo.rollout("nightly", &versions(&["1.5.0"])[0], percent, &sign);
            stranded(&m.unwrap(), now())
        };
        assert_eq!(stone_at(0.0), [below("x", "1.5.0"), below("y", "1.5.0")]);
        // Ramping again, it reaches them in time: those below its min_version are left.
        assert_eq!(stone_at(5.0), [below("x", "1.0.0"), below("y", "1.0.0")]);
        // A release with no min_version reaches every device below it.
        publish_with(&repo, &key, &file, "1.0.0", "x", None);
        assert_eq!(stranded(&nightly(&repo), now()), [below("y", "1.0.0")]);
    }

    /// Devices running an unlisted version between two listed releases (one pruned between
    /// them) get no entry of their own, as `stranded` says why: whatever floor the security
    /// order lets them have, they are offered something whenever the devices of the listed
    /// release below them are, and when those are stranded, the `running` entry stands for
    /// them up to the lowest `min_version` of the releases that reach them.
    #[test]
    fn devices_between_two_listed_releases_are_stranded_only_with_those_below_them() {
        // `(version, security version, min_version, halted)` of each listed release of x.
        let channel = |releases: &[(&str, u64, Option<&str>, bool)]| -> Manifest {
            let releases: Vec<serde_json::Value> = releases
                .iter()
                .map(|&(version, security, min, halted)| {
                    let mut r = serde_json::json!({"version": version,
                        "security_version": security,
                        "targets": {"x": {"components": {}}}});
                    if let Some(min) = min {
                        r["min_version"] = min.into();
                    }
                    if halted {
                        r["rollout"] =
                            serde_json::json!({"stages": [{"at": now(), "percent": 0.0}]});
                    }
                    r
                })
                .collect();
            serde_json::from_value(serde_json::json!({"type": "manifest",
                "product": "com.acme.app", "channel": "nightly", "sequence": 1,
                "issued": now(), "expires": now().plus_secs(86_400),
                "releases": releases}))
            .unwrap()
        };
        let running = |v: &str| Stranded {
            target: "x".into(),
            devices: StrandedDevices::Running(v.parse().unwrap()),
        };
        // Whether devices of x on `version` with the security `floor` are stranded.
        let strands = |m: &Manifest, version: &str, floor: u64| {
            Reach::new(m, now()).strands("x", (&version.parse().unwrap(), floor))
        };

        // 1.2.0 (security version 1 or 2, as the order allowed it between 1.1.0 and 1.3.0)
        // was pruned. 2.0.0's min_version is above 1.2.0, but 1.3.0 reaches 1.2.0's devices
        // as it reaches 1.1.0's: no release newer than 1.2.0 is not newer than 1.1.0.
        let m = channel(&[
            ("1.1.0", 1, None, false),
            ("1.3.0", 2, None, false),
            ("2.0.0", 2, Some("1.3.0"), false),
        ]);
        assert!(stranded(&m, now()).is_empty());
        for floor in 0..=2 {
            assert!(!strands(&m, "1.2.0", floor), "floor {floor}");
        }

        // Every release that reaches 1.2.0's devices has a min_version above 1.2.0: it is
        // above 1.1.0 too, so 1.1.0's devices are named, and 1.2.0's with them.
        let m = channel(&[
            ("1.1.0", 1, None, false),
            ("1.3.0", 2, Some("1.2.5"), false),
        ]);
        assert_eq!(stranded(&m, now()), [running("1.1.0")]);
        for floor in 0..=2 {
            assert!(strands(&m, "1.2.0", floor), "floor {floor}");
            assert!(!strands(&m, "1.2.5", floor), "floor {floor}");
        }

        // The stone 1.3.0 halted: the devices on 1.1.0 and on 1.3.0 are named, and each
        // gap above them is stranded up to 1.5.0, the lowest min_version of what reaches it
        // (1.3.0 caps the first); from there on 2.0.0 is offered.
        let m = channel(&[
            ("1.1.0", 1, None, false),
            ("1.3.0", 2, None, true),
            ("2.0.0", 2, Some("1.5.0"), false),
        ]);
        assert_eq!(stranded(&m, now()), [running("1.1.0"), running("1.3.0")]);
        for floor in 0..=2 {
            assert!(strands(&m, "1.2.0", floor), "floor {floor}");
            assert!(strands(&m, "1.4.0", floor), "floor {floor}");
            assert!(!strands(&m, "1.5.0", floor), "floor {floor}");
            assert!(!strands(&m, "1.7.0", floor), "floor {floor}");
        }
    }

    /// A release at 0 % on `from` now, as devices there see it, is not promoted to everyone
    /// on `to`: halted, or with its only stage still to come (published with a clock ahead,
    /// or by hand), each said as such; `--rollout` promotes it anyway.
    #[test]
    fn promote_refuses_a_release_at_zero_now_whether_halted_or_not_started() {
        let (_dir, repo, key, file) = setup();
        let later = now().plus_secs(3_600);
        let mut options = ReleaseOptions::new(later);
        options.rollout_percent = Some(50.0);
        let components = [("app", file.as_path(), ArtifactKind::File)];
        let v2: Version = "2.0.0".parse().unwrap();
        repo.release("nightly", &v2, "x", &components, &options, &[&key])
            .unwrap();
        let ro = nightly(&repo).releases[0].rollout.clone().unwrap();
        assert_eq!(ro.percent_at(now()), 0.0);
        let signers = [&key];
        let promote = |percent, at| {
            repo.promote(
                &v2,
                "nightly",
                "stable",
                percent,
                &Signing::new(&signers, at),
            )
        };
        let err = promote(None, now()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert_eq!(
            err.message(),
            format!("expected a release rolled out on channel nightly to promote, found 2.0.0 not started there yet (0% until its first stage at {later}); ramp it there first, or give --rollout PERCENT to promote it anyway")
        );
        // Halted since then: said as a halt, from the halt on.
        let halt = later.plus_secs(60);
        repo.rollout("nightly", &v2, 0.0, &Signing::new(&signers, halt))
            .unwrap();
        let err = promote(None, halt.plus_secs(1)).unwrap_err();
        assert!(
            err.message()
                .contains(&format!("found 2.0.0 halted there (0% since {halt})")),
            "{err}"
        );
        promote(Some(10.0), now()).unwrap();
    }

    /// A halted release is no stone (devices are not offered it); a device already held
    /// back by another release's `min_version` is not this promotion's doing.
    #[test]
    fn promote_counts_a_halted_stone_as_none_and_blames_only_new_strandings() {
        let (_dir, repo, key, file) = setup();
        let v = |s: &str| -> Version { s.parse().unwrap() };
        for ver in ["1.0.0", "1.2.0"] {
            publish_with(&repo, &key, &file, ver, "x", None);
        }
        publish_with(&repo, &key, &file, "2.0.0", "x", Some("1.1.0"));
        let to_stable = |ver: &str, to: &str, percent| {
            repo.promote(
                &v(ver),
                "nightly",
                to,
                percent,
                &Signing::new(&[&key], now()),
            )
        };
        to_stable("1.0.0", "stable", None).unwrap();
        to_stable("1.2.0", "stable", Some(0.0)).unwrap();
        let err = to_stable("2.0.0", "stable", None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.to_string().contains("devices running 1.0.0"), "{err}");
        // Ramping, it is a stone for the devices in its rollout and, in time, all.
        let later = now().plus_secs(60);
        repo.rollout("stable", &v("1.2.0"), 10.0, &Signing::new(&[&key], later))
            .unwrap();
        repo.promote(
            &v("2.0.0"),
            "nightly",
            "stable",
            None,
            &Signing::new(&[&key], later),
        )
        .unwrap();

        // 3.0.0 (min 1.5.0, published there directly) already strands 1.0.0 on beta:
        // promoting 2.5.0 (min 1.5.0) leaves those devices no worse off.
        let options = ReleaseOptions::new(later);
        let components = [("app", file.as_path(), ArtifactKind::File)];
        repo.release("beta", &v("1.0.0"), "x", &components, &options, &[&key])
            .unwrap();
        repo.release("beta", &v("3.0.0"), "x", &components, &options, &[&key])
            .unwrap();
        set_min_version(&repo, &key, "beta", "3.0.0", "1.5.0", later);
        publish_with(&repo, &key, &file, "2.5.0", "x", Some("1.5.0"));
        repo.promote(
            &v("2.5.0"),
            "nightly",
            "beta",
            None,
            &Signing::new(&[&key], later),
        )
        .unwrap();
    }

    fn publish_secure(
        repo: &Repo,
        key: &SecretKey,
        file: &Path,
        v: &str,
        security: u64,
    ) -> Result<Manifest> {
        let mut options = ReleaseOptions::new(now());
        options.security_version = security;
        let components = [("app", file, ArtifactKind::File)];
        repo.release(
            "nightly",
            &v.parse().unwrap(),
            "x",
            &components,
            &options,
            &[key],
        )
    }

    #[test]
    fn a_release_below_an_older_releases_security_version_is_refused() {
        let (dir, repo, key, file) = setup();
        publish_secure(&repo, &key, &file, "1.0.0", 3).unwrap();
        let other = dir.path().join("other.bin");
        std::fs::write(&other, b"other").unwrap();
        let err = publish_secure(&repo, &key, &other, "1.1.0", 2).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        let message = err.to_string();
        assert!(
            message.contains("1.0.0") && message.contains("1.1.0"),
            "{err}"
        );
        assert!(
            message.contains("at least 3") && message.contains("found 2"),
            "{err}"
        );
        // Refused before anything was written: no blob, no new sequence.
        let blobs = std::fs::read_dir(repo.path().join("blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(blobs, 1);
        assert_eq!(nightly(&repo).sequence, 1);
        publish_secure(&repo, &key, &other, "1.1.0", 3).unwrap();
    }

    #[test]
    fn a_min_version_not_below_the_version_is_refused() {
        let (_dir, repo, key, file) = setup();
        publish_with(&repo, &key, &file, "1.0.0", "x", None);
        for min in ["1.3.0", "1.2.0", "1.2.0+b1"] {
            let mut options = ReleaseOptions::new(now());
            options.min_version = Some(min.parse().unwrap());
            let components = [("app", file.as_path(), ArtifactKind::File)];
            let v = "1.2.0".parse().unwrap();
            let err = repo
                .release("nightly", &v, "x", &components, &options, &[&key])
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{min}: {err}");
            assert!(err.to_string().contains(&format!("found {min}")), "{err}");
        }
        assert_eq!(nightly(&repo).sequence, 1);
    }

    #[test]
    fn promote_refuses_what_devices_on_the_target_channel_could_never_install() {
        let (_dir, repo, key, _file) = setup_with_a_stone();
        let v = |s: &str| -> Version { s.parse().unwrap() };
        let promote = |version: &str| {
            repo.promote(
                &v(version),
                "nightly",
                "stable",
                None,
                &Signing::new(&[&key], now()),
            )
        };
        promote("1.0.0").unwrap();
        // stable lists 1.0.0 but nothing from 1.1.0 up: its devices could not reach 2.0.0.
        let err = promote("2.0.0").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.to_string().contains("stepping stone"), "{err}");
        promote("1.1.0").unwrap();
        promote("2.0.0").unwrap();

        // A security version below that of an older release on the target channel.
        let (_dir, repo, key, file) = setup();
        publish_secure(&repo, &key, &file, "1.0.0", 0).unwrap();
        repo.release(
            "lab",
            &v("1.5.0"),
            "x",
            &[("app", &file, ArtifactKind::File)],
            &{
                let mut o = ReleaseOptions::new(now());
                o.security_version = 4;
                o
            },
            &[&key],
        )
        .unwrap();
        repo.promote(
            &v("1.5.0"),
            "lab",
            "stable",
            None,
            &Signing::new(&[&key], now()),
        )
        .unwrap();
        let err = repo
            .promote(
                &v("1.0.0"),
                "nightly",
                "stable",
                None,
                &Signing::new(&[&key], now()),
            )
            .err();
        // 1.0.0 is older than 1.5.0: below it is fine. A newer one with less is not.
        assert!(err.is_none(), "{err:?}");
        publish_secure(&repo, &key, &file, "1.6.0", 1).unwrap();
        let err = repo
            .promote(
                &v("1.6.0"),
                "nightly",
                "stable",
                None,
                &Signing::new(&[&key], now()),
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.to_string().contains("1.5.0"), "{err}");
    }

    /// Devices compare by precedence: `1.0.0` finds `1.0.0+b7`, and the error names it.
    #[test]
    fn rollout_and_promote_name_another_build_of_the_version() {
        let (_dir, repo, key, file) = setup();
        publish(&repo, &key, &file, "1.0.0+b7", "x").unwrap();
        let plain: Version = "1.0.0".parse().unwrap();
        let err = repo
            .rollout("nightly", &plain, 5.0, &Signing::new(&[&key], now()))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoSuchVersion, "{err}");
        assert!(err.to_string().contains("found 1.0.0+b7"), "{err}");
        let err = repo
            .promote(
                &plain,
                "nightly",
                "stable",
                None,
                &Signing::new(&[&key], now()),
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoSuchVersion, "{err}");
        assert!(err.to_string().contains("found 1.0.0+b7"), "{err}");

        // Another build already on the target channel is a config error naming it.
        let b7: Version = "1.0.0+b7".parse().unwrap();
        repo.promote(
            &b7,
            "nightly",
            "stable",
            None,
            &Signing::new(&[&key], now()),
        )
        .unwrap();
        let b8: Version = "1.0.0+b8".parse().unwrap();
        let components = [("app", file.as_path(), ArtifactKind::File)];
        repo.release(
            "lab",
            &b8,
            "x",
            &components,
            &ReleaseOptions::new(now()),
            &[&key],
        )
        .unwrap();
        let err = repo
            .promote(&b8, "lab", "stable", None, &Signing::new(&[&key], now()))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.to_string().contains("found 1.0.0+b7 already"), "{err}");
    }

    fn validity(m: &Manifest) -> i64 {
        m.expires.unix() - m.issued.unix()
    }

    /// A change that names no expiry keeps the validity the channel has.
    #[test]
    fn changes_without_an_expiry_keep_the_channels_validity() {
        let (_dir, repo, key, file) = setup();
        let week = 7 * 86_400;
        let v: Version = "1.0.0".parse().unwrap();
        publish(&repo, &key, &file, "1.0.0", "x").unwrap();
        publish(&repo, &key, &file, "1.1.0", "x").unwrap();
        let m = repo
            .resign("nightly", &Signing::new(&[&key], now()).valid_for(Some(7)))
            .unwrap();
        assert_eq!(validity(&m), week);
        let m = repo
            .rollout("nightly", &v, 50.0, &Signing::new(&[&key], now()))
            .unwrap();
        assert_eq!(validity(&m), week);
        let m = repo
            .resign("nightly", &Signing::new(&[&key], now()))
            .unwrap();
        assert_eq!(validity(&m), week);
        let m = publish(&repo, &key, &file, "1.2.0", "x").unwrap();
        assert_eq!(validity(&m), week);
        let (m, _) = repo
            .prune("nightly", 1, &Signing::new(&[&key], now()))
            .unwrap();
        assert_eq!(validity(&m), week);
        let new_key = SecretKey::generate().unwrap();
        let opts = RotateOptions {
            manifest_keys: Some(vec![new_key.public()]),
            ..RotateOptions::default()
        };
        repo.rotate(&opts, &[&key, &new_key], now()).unwrap();
        assert_eq!(validity(&nightly(&repo)), week);
        // A new channel gets the default; an expiry given is used.
        let v12: Version = "1.2.0".parse().unwrap();
        let m = repo
            .promote(
                &v12,
                "nightly",
                "stable",
                None,
                &Signing::new(&[&new_key], now()),
            )
            .unwrap();
        assert_eq!(validity(&m), i64::from(DEFAULT_MANIFEST_DAYS) * 86_400);
        let m = repo
            .rollout(
                "stable",
                &v12,
                60.0,
                &Signing::new(&[&new_key], now()).valid_for(Some(3)),
            )
            .unwrap();
        assert_eq!(validity(&m), 3 * 86_400);
        publish(&repo, &new_key, &file, "1.3.0", "x").unwrap();
        let v13: Version = "1.3.0".parse().unwrap();
        let m = repo
            .promote(
                &v13,
                "nightly",
                "stable",
                None,
                &Signing::new(&[&new_key], now()).valid_for(Some(2)),
            )
            .unwrap();
        assert_eq!(validity(&m), 2 * 86_400);
        let (m, removed) = repo
            .prune(
                "stable",
                1,
                &Signing::new(&[&new_key], now()).valid_for(Some(5)),
            )
            .unwrap();
        assert_eq!(removed, [v12]);
        assert_eq!(validity(&m), 5 * 86_400);
    }

    /// Devices hold their clock at the newest `issued` they saw: a manifest issued before
    /// the channel's last one is refused before it is signed.
    #[test]
    fn a_clock_behind_the_channels_last_issued_is_refused() {
        let (_dir, repo, key, file) = setup();
        publish(&repo, &key, &file, "1.0.0", "x").unwrap();
        let earlier = now().plus_secs(-3600);
        let v: Version = "1.0.0".parse().unwrap();
        let err = repo
            .rollout("nightly", &v, 5.0, &Signing::new(&[&key], earlier))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(
            err.to_string().contains(&format!(
                "expected a clock at or after the channel's last issued {}, found {earlier}",
                now()
            )),
            "{err}"
        );
        let err = repo
            .resign("nightly", &Signing::new(&[&key], earlier))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert_eq!(nightly(&repo).sequence, 1);
    }

    /// A channel signed with a clock far ahead pulls every device's clock up to it; a
    /// rotation that revokes the manifest key undoes that on devices (they drop what they
    /// saw under it), so it may re-sign at the right clock. One that only adds a key may not.
    #[test]
    fn a_rotation_that_revokes_the_manifest_key_may_go_back_to_the_right_clock() {
        let (_dir, repo, key, file) = setup();
        publish(&repo, &key, &file, "1.0.0", "x").unwrap();
        let ahead = now().plus_secs(200 * 86_400);
        repo.resign("nightly", &Signing::new(&[&key], ahead))
            .unwrap();
        let (added, replacement) = (
            SecretKey::generate().unwrap(),
            SecretKey::generate().unwrap(),
        );
        let add = RotateOptions {
            manifest_keys: Some(vec![key.public(), added.public()]),
            ..RotateOptions::default()
        };
        let err = repo.rotate(&add, &[&key, &added], now()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(
            err.to_string().contains(&format!(
                "expected a clock at or after the channel's last issued {ahead}"
            )),
            "{err}"
        );
        let replace = RotateOptions {
            manifest_keys: Some(vec![replacement.public()]),
            ..RotateOptions::default()
        };
        repo.rotate(&replace, &[&key, &replacement], now()).unwrap();
        let m = nightly(&repo);
        assert_eq!((m.issued, m.sequence), (now(), 3));
        repo.verify(now()).unwrap();
    }

    /// Devices stop walking at the first missing root: one past a gap is never reached.
    #[test]
    fn verify_refuses_a_root_document_outside_the_chain() {
        let (_dir, repo, key, _file) = setup();
        let renew = RotateOptions::default();
        repo.rotate(&renew, &[&key], now()).unwrap();
        let roots = repo.path().join("root");
        std::fs::rename(roots.join("2.json"), roots.join("3.json")).unwrap();
        let err = repo.verify(now()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(
            err.to_string().contains("root/2.json before root/3.json"),
            "{err}"
        );
        // Rotating now would put a root ahead of the stray one in the chain.
        let err = repo.rotate(&renew, &[&key], now()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(!roots.join("2.json").exists());
        std::fs::rename(roots.join("3.json"), roots.join("01.json")).unwrap();
        let err = repo.verify(now()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.to_string().contains("root/01.json"), "{err}");
        std::fs::remove_file(roots.join("01.json")).unwrap();
        repo.verify(now()).unwrap();
    }

    #[test]
    fn a_secret_key_file_is_not_accepted_as_a_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let public = write_keypair(&path).unwrap();
        assert_eq!(read_public_key(&public_key_path(&path)).unwrap(), public);
        assert_eq!(read_secret_key(&path).unwrap().public(), public);
        assert_eq!(
            read_public_key(&path).unwrap_err().kind(),
            ErrorKind::Config
        );
        assert_eq!(write_keypair(&path).unwrap_err().kind(), ErrorKind::Config);
    }
}
