//! The attack fixture: a repository signed with `evergreen::publish`, served by the
//! misbehaving loopback server, and devices driven through `Updater` with a clock the test
//! sets. Every attack starts from a device that installed and confirmed 1.0.0 honestly,
//! takes a [`Snapshot`], attacks, asserts the exact error kind and that the snapshot holds.

use crate::common::{tree_digest, without_check_schedule, without_failures};
use crate::support::{Fault, TestServer};
use evergreen::fetch::CancelToken;
use evergreen::manifest::{ArtifactKind, Manifest, Release};
use evergreen::publish::{ReleaseOptions, Repo, RotateOptions};
use evergreen::slots::Slot;
use evergreen::trust::{self, KeySet, SecretKey, TrustedRoot, MANIFEST_TYPE};
use evergreen::{Check, Config, ErrorKind, Offer, Result, Timestamp, Updater};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const PRODUCT: &str = "com.acme.attacked";
pub const TARGET: &str = "x86_64-linux";

/// When the honest repository was made, and where every device clock starts: the start
/// of today (UTC), fixed once per run, so that the CLI, which reads the real clock, sees
/// the same fresh repository as the library devices.
pub fn t0() -> Timestamp {
    static T0: std::sync::OnceLock<Timestamp> = std::sync::OnceLock::new();
    *T0.get_or_init(|| Timestamp::from_unix(Timestamp::now().unix().div_euclid(86_400) * 86_400))
}

/// A deterministic key per number, so a failure reproduces.
pub fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

/// The key numbers of the honest repository.
pub const ROOT_KEY: u8 = 1;
pub const MANIFEST_KEY: u8 = 11;
pub const SECOND_MANIFEST_KEY: u8 = 12;
pub const ATTACKER_KEY: u8 = 66;

/// Release options published at `at` (issued, published, expiry 30 days later).
pub fn at(at: Timestamp) -> ReleaseOptions {
    ReleaseOptions::new(at)
}

/// An app zip (stored, so two versions of it have exactly the same length).
pub fn app_zip(version: &str) -> Vec<u8> {
    use crate::common::zips::{build_with, Item};
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let body = format!("#!/bin/sh\necho app {version}\n");
    build_with(
        &[
            Item::File("run.sh", body.as_bytes(), 0o755),
            Item::File("VERSION", version.as_bytes(), 0o644),
        ],
        stored,
    )
}

/// How a [`World`]'s repository is set up.
pub struct Setup {
    /// Manifest keys (by number) and their threshold.
    pub manifest_keys: Vec<u8>,
    pub manifest_threshold: usize,
    /// Validity of root 1.
    pub root_days: u32,
    /// Product id.
    pub product: &'static str,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            manifest_keys: vec![MANIFEST_KEY],
            manifest_threshold: 1,
            root_days: 365,
            product: PRODUCT,
        }
    }
}

/// A signed repository on disk and the loopback server in front of it.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub repo: Repo,
    /// The keys whose signatures the honest operator puts on manifests.
    pub signers: Vec<SecretKey>,
    pub server: TestServer,
}

impl World {
    pub fn with(setup: Setup) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let signers: Vec<SecretKey> = setup.manifest_keys.iter().map(|n| key(*n)).collect();
        let manifest_keys = KeySet::new(
            signers.iter().map(SecretKey::public).collect(),
            setup.manifest_threshold,
        )
        .unwrap();
        let root_keys = KeySet::new(vec![key(ROOT_KEY).public()], 1).unwrap();
        let repo = Repo::init(
            tmp.path().join("repo"),
            setup.product,
            &root_keys,
            &manifest_keys,
            &[&key(ROOT_KEY)],
            setup.root_days,
            t0(),
        )
        .unwrap();
        let server = TestServer::serve(repo.path());
        World {
            tmp,
            repo,
            signers,
            server,
        }
    }

    fn signer_refs(&self) -> Vec<&SecretKey> {
        self.signers.iter().collect()
    }

    /// Publishes `zip` as component `app` of `version` on `channel` for `target`.
    pub fn publish_for(
        &self,
        channel: &str,
        version: &str,
        target: &str,
        zip: &[u8],
        opts: ReleaseOptions,
    ) -> Manifest {
        let src = self.tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let path = src.join(format!("{channel}-{version}-{target}.zip"));
        std::fs::write(&path, zip).unwrap();
        self.repo
            .release(
                channel,
                &version.parse().unwrap(),
                target,
                &[("app", path.as_path(), ArtifactKind::Zip)],
                &opts,
                &self.signer_refs(),
            )
            .unwrap()
    }

    /// Publishes `zip` as `version` on `channel` for this fixture's target.
    pub fn publish(&self, channel: &str, version: &str, zip: &[u8], opts: ReleaseOptions) {
        self.publish_for(channel, version, TARGET, zip, opts);
    }

    /// Publishes `zip` as `version` on `channel` as whoever holds the signing key can,
    /// whatever `release` checks: the publisher refuses an archive every device would
    /// refuse, so the blob goes in as a `file` artifact and the manifest is sealed again
    /// with it as a `zip` (its declared sizes as `installed_size`, as the publisher records).
    pub fn publish_unchecked(
        &self,
        channel: &str,
        version: &str,
        zip: &[u8],
        opts: ReleaseOptions,
    ) {
        self.publish_unchecked_components(channel, version, &[("app", zip)], opts);
    }

    /// [`World::publish_unchecked`] with several zip components, by name.
    pub fn publish_unchecked_components(
        &self,
        channel: &str,
        version: &str,
        zips: &[(&str, &[u8])],
        opts: ReleaseOptions,
    ) {
        let src = self.tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let paths: Vec<PathBuf> = zips
            .iter()
            .map(|(name, zip)| {
                let path = src.join(format!("{channel}-{version}-{TARGET}-{name}.zip"));
                std::fs::write(&path, zip).unwrap();
                path
            })
            .collect();
        let files: Vec<(&str, &Path, ArtifactKind)> = zips
            .iter()
            .zip(&paths)
            .map(|((name, _), path)| (*name, path.as_path(), ArtifactKind::File))
            .collect();
        let version: semver::Version = version.parse().unwrap();
        self.repo
            .release(
                channel,
                &version,
                TARGET,
                &files,
                &opts,
                &self.signer_refs(),
            )
            .unwrap();
        let mut m = manifest_of(&self.channel_bytes(channel));
        let target = release_mut(&mut m, &version.to_string())
            .targets
            .get_mut(TARGET)
            .unwrap();
        for (name, zip) in zips {
            let artifact = &mut target.components.get_mut(name).unwrap().artifact;
            let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
            let declared = (0..archive.len())
                .map(|i| archive.by_index_raw(i).unwrap().size())
                .fold(0u64, u64::saturating_add);
            artifact.kind = ArtifactKind::Zip;
            artifact.name = None;
            artifact.installed_size = Some(declared);
        }
        let sealed = trust::seal(MANIFEST_TYPE, &m.to_bytes(), &self.signer_refs());
        std::fs::write(self.channel_path(channel), sealed).unwrap();
    }

    /// The envelope the repository holds for `channel`.
    pub fn channel_bytes(&self, channel: &str) -> Vec<u8> {
        std::fs::read(self.channel_path(channel)).unwrap()
    }

    fn channel_path(&self, channel: &str) -> PathBuf {
        self.repo.path().join(format!("channels/{channel}.json"))
    }

    /// The bytes of a blob in the repository.
    pub fn blob(&self, sha256: &str) -> Vec<u8> {
        std::fs::read(self.repo.path().join("blobs/sha256").join(sha256)).unwrap()
    }

    /// `channel`'s manifest as the repository holds it, edited by `edit` with its sequence
    /// bumped, sealed by `signers`: what an attacker holding those keys would serve.
    pub fn forge(
        &self,
        channel: &str,
        signers: &[&SecretKey],
        edit: impl FnOnce(&mut Manifest),
    ) -> Vec<u8> {
        let mut m = manifest_of(&self.channel_bytes(channel));
        m.sequence += 1;
        edit(&mut m);
        trust::seal(MANIFEST_TYPE, &m.to_bytes(), signers)
    }

    /// Serves `bytes` at `path` instead of the repository's file, until cleared. The
    /// server applies the first fault set for a path, so clear before serving another.
    pub fn serve(&self, path: &str, bytes: Vec<u8>) {
        self.server.set_fault(path, Fault::Replace(bytes));
    }

    /// Rotates to root 2 with a new manifest key (number `n`), re-signing every channel.
    pub fn rotate_manifest_key(&self, n: u8, now: Timestamp) -> TrustedRoot {
        let opts = RotateOptions {
            manifest_keys: Some(vec![key(n).public()]),
            ..RotateOptions::default()
        };
        self.repo
            .rotate(&opts, &[&key(ROOT_KEY), &key(n)], now)
            .unwrap()
            .root
    }

    /// Rotates the root key from `ROOT_KEY` to key 2 (the next root, signed by both).
    pub fn rotate_root_key(&self, now: Timestamp) -> TrustedRoot {
        let opts = RotateOptions {
            root_keys: Some(vec![key(2).public()]),
            ..RotateOptions::default()
        };
        // The channels are re-signed with it, so devices walk to it at their next check.
        let root_keys = [key(ROOT_KEY), key(2)];
        let signers: Vec<&SecretKey> = root_keys.iter().chain(&self.signers).collect();
        self.repo.rotate(&opts, &signers, now).unwrap().root
    }

    /// A device following `stable`, with fast retries; `extra` overrides config fields.
    pub fn device(&self, name: &str, extra: Value) -> Dev {
        let base = self.tmp.path().join("devices").join(name);
        std::fs::create_dir_all(&base).unwrap();
        // The device ships with a copy of root 1, as a firmware image would.
        let pinned = base.join("root.json");
        std::fs::copy(self.repo.path().join("root/1.json"), &pinned).unwrap();
        let mut cfg = json!({
            "product": PRODUCT,
            "server": self.server.url(),
            "channel": "stable",
            "target": TARGET,
            "trust": {"root": pinned},
            "state_dir": base.join("state"),
            "slots": {"kind": "dir", "root": base.join("app")},
            "device_id": format!("device-{name}"),
            "limits": {"retries": 0, "retry_backoff_ms": 10},
        });
        merge(&mut cfg, extra);
        let config_path = base.join("config.json");
        std::fs::write(&config_path, cfg.to_string()).unwrap();
        let config = Config::from_json(&cfg.to_string()).unwrap();
        let clock = Arc::new(Mutex::new(t0()));
        let reading = Arc::clone(&clock);
        let updater = Updater::builder(config)
            .clock(move || *reading.lock().unwrap())
            .build()
            .unwrap();
        Dev {
            updater,
            config: config_path,
            app: base.join("app"),
            state: base.join("state"),
            clock,
        }
    }

    /// A repository with 1.0.0 on `stable`, and a device that installed and confirmed it.
    pub fn installed() -> (World, Dev) {
        World::installed_with(Setup::default(), json!({}))
    }

    pub fn installed_with(setup: Setup, device: Value) -> (World, Dev) {
        let w = World::with(setup);
        w.publish("stable", "1.0.0", &app_zip("1.0.0"), at(t0()));
        let dev = w.device("dev", device);
        dev.update_to("1.0.0");
        (w, dev)
    }
}

/// Deep-merges `extra` into `base` (objects field by field, anything else replaced).
fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// The manifest inside an envelope, read without verification (the attacker's view).
pub fn manifest_of(envelope: &[u8]) -> Manifest {
    let e = trust::parse_envelope(envelope).unwrap();
    serde_json::from_slice(&trust::decode_base64(&e.payload).unwrap()).unwrap()
}

/// The release of `version` that `m` lists, to edit.
pub fn release_mut<'m>(m: &'m mut Manifest, version: &str) -> &'m mut Release {
    let version: semver::Version = version.parse().unwrap();
    m.releases
        .iter_mut()
        .find(|r| r.version == version)
        .unwrap_or_else(|| panic!("no release {version} listed"))
}

/// A device: the updater, its directories and its clock.
pub struct Dev {
    pub updater: Updater,
    /// The same config as a file, for the CLI.
    pub config: PathBuf,
    pub app: PathBuf,
    pub state: PathBuf,
    clock: Arc<Mutex<Timestamp>>,
}

impl Dev {
    /// `evergreen <cmd> --config <config> <args>`: the device's CLI, on the real clock.
    pub fn cli(&self, cmd: &str, args: &[&str]) -> std::process::Output {
        let mut all = vec![cmd, "--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        crate::common::run(&all)
    }

    /// `evergreen status --json`, parsed.
    pub fn cli_status(&self) -> Value {
        let out = self.cli("status", &["--json"]);
        assert!(out.status.success(), "{}", crate::common::stderr(&out));
        let mut status: Value = serde_json::from_slice(&out.stdout).unwrap();
        without_check_schedule(&mut status);
        status
    }

    pub fn set_clock(&self, t: Timestamp) {
        *self.clock.lock().unwrap() = t;
    }

    /// The offer of a check that must find one.
    pub fn offer(&self) -> Offer {
        match self.updater.check().unwrap() {
            Check::Available(offer) => offer,
            Check::UpToDate { .. } => panic!("expected an update to be offered, found none"),
        }
    }

    /// Downloads every artifact `offer` needs.
    pub fn download(&self, offer: &Offer) -> Result<()> {
        let plan = self.updater.plan(offer)?;
        self.updater
            .download(&plan, &mut |_, _| {}, &CancelToken::new())
    }

    /// Check, download, install, activate, start and confirm `version`.
    pub fn update_to(&self, version: &str) {
        let offer = self.offer();
        assert_eq!(offer.version.to_string(), version);
        self.download(&offer).unwrap();
        self.updater
            .install(&self.updater.plan(&offer).unwrap())
            .unwrap();
        self.updater.activate(true).unwrap();
        self.updater.startup().unwrap();
        self.updater.confirm().unwrap();
    }

    pub fn primary(&self) -> Slot {
        self.updater.status().unwrap().primary
    }

    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.app.join("slots").join(slot.as_str())
    }

    pub fn state_json(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.state.join("state.json")).unwrap()).unwrap()
    }

    pub fn snapshot(&self) -> Snapshot {
        let primary = self.primary();
        Snapshot {
            primary,
            primary_tree: tree_digest(&self.slot_dir(primary)),
            current: std::fs::read_link(self.app.join("current")).unwrap(),
            status: serde_json::to_value(self.updater.status().unwrap()).unwrap(),
            state: self.state_json(),
            kept: kept_files(&self.state),
        }
    }
}

/// Everything in the state directory a failure must not change: the trusted root, the
/// cached manifests and the verified downloads (not `state.json`, compared parsed, nor
/// the lock and partial downloads).
fn kept_files(state: &Path) -> BTreeMap<String, (u32, String)> {
    let mut files = tree_digest(state);
    files.retain(|path, _| path != "state.json" && path != "lock" && !path.ends_with(".part"));
    files
}

/// What a device looked like before an attack.
#[derive(Debug)]
pub struct Snapshot {
    pub primary: Slot,
    primary_tree: BTreeMap<String, (u32, String)>,
    current: PathBuf,
    status: Value,
    state: Value,
    kept: BTreeMap<String, (u32, String)>,
}

/// `state.json` without what a refused check legitimately moves: the failure counter that
/// drives the polling back-off, and when the last failure was.
fn comparable(mut state: Value) -> Value {
    without_check_schedule(&mut state);
    without_failures(&mut state);
    state
}

impl Snapshot {
    /// The primary slot's files, the boot link, `status`, `state.json`, the trusted root,
    /// the manifest cache and the verified downloads are all as they were.
    pub fn assert_unchanged(&self, dev: &Dev) {
        self.assert_unchanged_except(dev, &[], &[]);
    }

    /// As [`assert_unchanged`], except the trusted root, which a genuine rotation walked
    /// during the refused check advances (TUF persists each verified root at once), and
    /// the freshness state, which the new root's manifest keys start afresh.
    pub fn assert_unchanged_but_root(&self, dev: &Dev) {
        let fields = [
            "root_version",
            "manifest_keys",
            "manifests",
            "newest_issued",
        ];
        self.assert_unchanged_except(dev, &fields, &["root.json"]);
    }

    /// For a refused download: as [`assert_unchanged`], except the record of the blobs the
    /// release wants (`pending_downloads`, `pending_for`), which a download writes before
    /// its first blob so that a confirmation never removes one that finished. It names
    /// only blobs of the verified manifest.
    pub fn assert_unchanged_but_pending(&self, dev: &Dev) {
        self.assert_unchanged_except(dev, &["pending_downloads", "pending_for"], &[]);
    }

    fn assert_unchanged_except(&self, dev: &Dev, fields: &[&str], files: &[&str]) {
        self.assert_primary_intact(dev);
        let strip = |mut s: Value| {
            let o = s.as_object_mut().unwrap();
            for f in fields {
                o.remove(*f);
            }
            comparable(s)
        };
        assert_eq!(
            strip(dev.state_json()),
            strip(self.state.clone()),
            "state.json changed"
        );
        let strip_files = |mut kept: BTreeMap<String, (u32, String)>| {
            kept.retain(|path, _| !files.contains(&path.as_str()));
            kept
        };
        assert_eq!(
            strip_files(kept_files(&dev.state)),
            strip_files(self.kept.clone()),
            "trust or download files changed"
        );
    }

    /// For a refused install: as [`assert_unchanged`], except that the inactive slot (the
    /// only place an install writes) may be left `installing`, never activatable.
    pub fn assert_unchanged_but_inactive(&self, dev: &Dev) {
        self.assert_primary_intact(dev);
        let inactive = self.primary.other().as_str().to_string();
        let strip = |mut s: Value| {
            let o = s.as_object_mut().unwrap();
            o.remove(&inactive);
            o.remove("history");
            comparable(s)
        };
        assert_eq!(
            strip(dev.state_json()),
            strip(self.state.clone()),
            "state.json changed beyond the inactive slot"
        );
        assert_eq!(
            kept_files(&dev.state),
            self.kept,
            "trust or download files changed"
        );
        let left = dev.state_json()[&inactive]["status"].clone();
        assert!(
            left == "installing" || left == self.state[&inactive]["status"],
            "the inactive slot is {left} after a refused install"
        );
        let err = dev.updater.activate(true).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
        self.assert_primary_intact(dev);
    }

    /// The same primary slot, byte for byte, and the boot link pointing at it.
    pub fn assert_booted_intact(&self, dev: &Dev) {
        assert_eq!(dev.primary(), self.primary, "the primary slot moved");
        assert_eq!(
            tree_digest(&dev.slot_dir(self.primary)),
            self.primary_tree,
            "the primary slot's files changed"
        );
        assert_eq!(
            std::fs::read_link(dev.app.join("current")).unwrap(),
            self.current,
            "the boot link changed"
        );
    }

    pub fn assert_primary_intact(&self, dev: &Dev) {
        self.assert_booted_intact(dev);
        let mut status = serde_json::to_value(dev.updater.status().unwrap()).unwrap();
        let mut before = self.status.clone();
        let inactive = self.primary.other().as_str();
        for s in [&mut status, &mut before] {
            s["slots"].as_object_mut().unwrap().remove(inactive);
            without_check_schedule(s);
            // Events of the inactive slot (an install refused); `state.json`'s history
            // is compared where a test asks for it.
            s.as_object_mut().unwrap().remove("history");
        }
        assert_eq!(status, before, "status changed");
    }
}

/// The error of a refused operation, asserting its exact kind.
pub fn refused<T: Debug>(result: Result<T>, kind: ErrorKind) -> evergreen::Error {
    let err = result.expect_err("the attack must be refused");
    assert_eq!(err.kind(), kind, "wrong kind for: {err}");
    err
}
