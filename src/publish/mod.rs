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

mod blobs;
mod channels;
mod keys;
mod rotate;
mod rules;
mod verify;

use blobs::{check_components, check_image_not_empty, check_zip_for_every_device, Probe};
pub use blobs::{default_limit_refusal, default_limit_refusals};
pub use keys::{
    public_key_path, read_public_key, read_secret_key, secret_key_exposure, write_keypair,
};
use rotate::root_document;
pub use rules::stranded;
use rules::{
    bump, check_clock, check_min_version, check_not_halted, check_percent, check_same_release,
    check_security_order, check_stepping_stone, check_target, highest_older, listed_release,
    reissue, releases_to_keep, same_version, single_stage, unchanged_version,
};
use verify::verify_channel_at;

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
    on_progress: FileProgress,
}

/// A function the host gave a repository's commands to call, if any: one type for each
/// kind of hook, sharing what a hook needs (cheap clones, a `Debug` that shows whether
/// one is set).
struct Hook<F: ?Sized>(Option<std::sync::Arc<F>>);

impl<F: ?Sized> Hook<F> {
    fn get(&self) -> Option<&F> {
        self.0.as_deref()
    }
}

impl<F: ?Sized> Clone for Hook<F> {
    fn clone(&self) -> Self {
        Hook(self.0.clone())
    }
}

impl<F: ?Sized> Default for Hook<F> {
    fn default() -> Self {
        Hook(None)
    }
}

impl<F: ?Sized> std::fmt::Debug for Hook<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

/// What a command calls, with the lock file's path, before it waits for another command
/// that holds the repository lock.
type WaitNotice = Hook<dyn Fn(&Path) + Send + Sync>;

/// What a command calls as it reads a file to copy or hash it: the file, the bytes read
/// so far and its length (`None` for one that is not a regular file).
type FileProgress = Hook<dyn Fn(&Path, u64, Option<u64>) + Send + Sync>;

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
    /// How many distinct blobs its releases list were checked (a blob that several
    /// releases, targets or components share counts once).
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
        // The rule of the device config's `product`: a repository for an id no device
        // config takes (a stray space pasted after it) could never be used.
        if product.is_empty() || product.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Error::config(format!(
                "expected a product id such as com.acme.gateway (no spaces or control characters, as a device config's `product`), found {product:?}"
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
            on_wait: Hook(Some(std::sync::Arc::new(notice))),
            ..self
        }
    }

    /// The same repository, its commands calling `progress(path, done, len)` as they read
    /// a file to copy it in or to hash it (a release's components, `verify`'s blobs):
    /// with 0 before the first byte, then after each 64 KiB read, the last call with
    /// `done` the bytes the file held. `len` is the file's length, `None` when it is not
    /// a regular file (a pipe). A component of gigabytes takes a while: the CLI shows it.
    ///
    /// ```
    /// # use evergreen::publish::{Repo, ReleaseOptions};
    /// # use evergreen::manifest::ArtifactKind;
    /// # use evergreen::trust::{KeySet, SecretKey};
    /// # let dir = tempfile::tempdir()?;
    /// # let key = SecretKey::generate()?;
    /// # let keys = KeySet::new(vec![key.public()], 1)?;
    /// # let now = evergreen::Timestamp::now();
    /// # Repo::init(dir.path().join("repo"), "com.acme.app", &keys, &keys, &[&key], 365, now)?;
    /// # let app = dir.path().join("app.bin");
    /// # std::fs::write(&app, vec![7u8; 200_000])?;
    /// use std::sync::{Arc, Mutex};
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// let repo = Repo::open(dir.path().join("repo"))?
    ///     .with_progress(move |_path, done, len| log.lock().unwrap().push((done, len)));
    /// repo.release("stable", &"1.0.0".parse().unwrap(), "x86_64-linux",
    ///     &[("app", app.as_path(), ArtifactKind::File)], &ReleaseOptions::new(now), &[&key])?;
    /// let seen = seen.lock().unwrap();
    /// assert_eq!(seen.first(), Some(&(0, Some(200_000))));
    /// assert_eq!(seen.last(), Some(&(200_000, Some(200_000))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_progress(
        self,
        progress: impl Fn(&Path, u64, Option<u64>) + Send + Sync + 'static,
    ) -> Repo {
        Repo {
            on_progress: Hook(Some(std::sync::Arc::new(progress))),
            ..self
        }
    }

    fn at(root: &Path) -> Repo {
        Repo {
            root: root.to_path_buf(),
            cancel: CancelToken::new(),
            on_wait: WaitNotice::default(),
            on_progress: FileProgress::default(),
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
            if let Some(notice) = self.on_wait.get() {
                notice(&path);
            }
        })?;
        for dir in WRITTEN_DIRS {
            fsutil::remove_stale_temps_in(&self.root.join(dir));
        }
        Ok(lock)
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
        let listed: Vec<String> = keys.keys().iter().map(PublicKey::keyid).collect();
        let given: Vec<String> = signers.iter().map(|s| given_key(s, keys)).collect();
        return Err(Error::new(
            ErrorKind::Threshold,
            format!(
                "expected signing keys for {} of the {} {role} key(s) listed ({}), found {} among the {} given ({})",
                keys.threshold(),
                keys.keys().len(),
                listed.join(", "),
                picked.len(),
                signers.len(),
                given.join(", ")
            ),
        ));
    }
    Ok(picked)
}

/// How a threshold error names a key given with `--sign`: its key id and whether `keys`
/// lists it, or, for the public half of a listed key read as a secret seed (both are 32
/// bytes of base64: a `.pub` file's content in a CI secret), which key's public half it is.
fn given_key(signer: &SecretKey, keys: &KeySet) -> String {
    let seed = signer.to_base64();
    if let Some(key) = keys.keys().iter().find(|k| k.to_base64() == seed) {
        return format!(
            "the public key {} read as a secret key: give its secret key file instead",
            key.keyid()
        );
    }
    let public = signer.public();
    let listed = if keys.keys().contains(&public) {
        "listed"
    } else {
        "not listed"
    };
    format!("{} {listed}", public.keyid())
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

/// The name a `file` artifact is placed under on devices: one [`manifest::is_safe_name`]
/// takes, or an error that says which of its rules the file's name breaks.
fn file_name(path: &Path) -> Result<String> {
    let name = path.file_name().unwrap_or_default();
    let why = match name.to_str() {
        Some(n) if manifest::is_safe_name(n) => return Ok(n.to_string()),
        None => "is not UTF-8",
        Some("") => "is empty",
        Some(n) if n.starts_with('.') => "starts with '.'",
        Some(n) if n.len() > 255 => "is longer than 255 bytes",
        Some(n) if n.contains(':') => "holds ':'",
        Some(n) if n.contains('\\') => "holds '\\'",
        Some(_) => "holds a control character",
    };
    Err(Error::config(format!(
        "expected a file name devices can place as it is (UTF-8, at most 255 bytes, not starting with '.', without ':', '\\' or control characters), found {name:?} ({}), which {why}: rename it",
        path.display()
    )))
}

/// The file's bytes, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// A blob as a manifest describes it (SHA-256, size, kind, and what it decompresses to):
/// what [`Repo::verify`] checks once. Two listings of one blob that say it decompresses to
/// other bytes are two checks, each of which a device would make.
type BlobKey = (
    String,
    u64,
    ArtifactKind,
    Option<Compression>,
    Option<u64>,
    Option<String>,
);

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

#[cfg(test)]
mod tests;
