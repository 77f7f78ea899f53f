//! Changes to a channel's manifest: a release, a promotion, a rollout's stages, a
//! re-signing and a prune, each verified, checked against the release rules and signed.

use super::*;

impl Repo {
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
        // Refused before a component is copied into blobs/, as `bump` would refuse it after.
        if let Some(days) = opts.expires_in_days {
            expiry(opts.now, days)?;
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
                    // A target built apart (its own CI job, its own build number) joins
                    // the listed release under the listed name.
                    let add = match r.targets.contains_key(target) {
                        true => String::new(),
                        false => format!(
                            "; to add target {target} to it, give --version {}",
                            r.version
                        ),
                    };
                    return Err(Error::config(format!(
                        "expected a new version, found {} already on channel {channel} (build metadata does not make {version} a new version); publish a higher version instead{add}",
                        r.version
                    )));
                }
                if let Some(listed) = r.targets.get(target) {
                    // A run killed after its channel was renamed in has published: the
                    // same command again must not send the operator to another version.
                    let what = match self.same_files(listed, components)? {
                        true => " with these same files (published by an earlier run, cut off before it said so?): nothing more to do; to change them, publish a higher version",
                        false => "; publish a higher version instead",
                    };
                    return Err(Error::config(format!(
                        "expected a new version or target, found {version} for {target} already on channel {channel}{what}"
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
                let mut how = match absent.as_slice() {
                    [] => String::new(),
                    absent => format!(
                        ", without {} which {from} lists: publish the same files there with `release --channel {to} --version {version} --target …`",
                        absent.join(", ")
                    ),
                };
                // A run killed after its channel was renamed in has promoted it: the same
                // release, its rollout at the same percentages (begun at that run's time).
                let percents = |r: &Release| {
                    let stages = r.rollout.as_ref().map(|o| o.stages.as_slice());
                    stages.map(|s| s.iter().map(|s| s.percent).collect::<Vec<f64>>())
                };
                let mut listed = r.clone();
                listed.rollout.clone_from(&release.rollout);
                if how.is_empty() && listed == release && percents(r) == percents(&release) {
                    how = format!(
                        ", the same release as on {from} (promoted by an earlier run, cut off before it said so?): nothing more to do"
                    );
                }
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
    /// gives one. Stages scheduled after `sign.now` are dropped: a halt must not be undone
    /// when a scheduled stage's time comes. The version is looked up by precedence; another build of it is named in
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
            // The percentage is the operator's from now on: stages scheduled later (by
            // the library or by hand), wherever listed, are dropped, so that none undoes
            // a halt when its time comes. Each was after the channel's last `issued`, so
            // a clock behind them is refused by `bump` before anything is written.
            stages.retain(|s| s.at <= now);
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

    /// Applies `edit` to the verified manifest of `change.channel`, then bumps, signs
    /// and writes it. The signers are checked first, so a missing key changes nothing; an
    /// expired root signs nothing either, since no device would accept the result.
    pub(super) fn update_channel(
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
            None if change.create => {
                self.check_no_case_twin(change.channel)?;
                Manifest {
                    doc_type: "manifest".to_string(),
                    product: trusted.root().product.clone(),
                    channel: change.channel.to_string(),
                    sequence: 0,
                    issued: change.now,
                    expires: change.now,
                    releases: vec![],
                }
            }
            None => return Err(missing(change.channel)),
        };
        if edit(&mut m)? == Edit::Unchanged {
            return Ok(m);
        }
        bump(&mut m, change.now, change.expires_in_days)?;
        let bytes = self.seal_manifest(trusted, &m, signers, change.now)?;
        let path = self.channel_path(change.channel);
        let replaced = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        fsutil::write_atomic(&path, &bytes)?;
        later_second(&path, replaced)?;
        Ok(m)
    }

    /// A new channel whose name differs from an existing channel's only in case
    /// (`Nightly` beside `nightly`) is refused (`config`): the two are one file on a file
    /// system that ignores case (a USB stick's FAT or exFAT, macOS, Windows), where a copy
    /// of the repository would keep one channel and lose the other.
    fn check_no_case_twin(&self, channel: &str) -> Result<()> {
        let names = self.channel_names()?;
        let Some(twin) = names.iter().find(|n| n.eq_ignore_ascii_case(channel)) else {
            return Ok(());
        };
        Err(Error::config(format!(
            "expected a new channel name that differs from the existing ones in more than case, found channel {twin} (channels/{twin}.json) for {channel}: a file system that ignores case (a USB stick's FAT or exFAT, macOS, Windows) takes the two for one file; publish to {twin}, or pick another name"
        )))
    }

    /// Whether `components` are the files `listed` was published from: the same names,
    /// kinds and file names, and the same bytes (hashed, only for this refusal's message).
    fn same_files(
        &self,
        listed: &TargetRelease,
        components: &[(&str, &Path, ArtifactKind)],
    ) -> Result<bool> {
        if listed.components.len() != components.len() {
            return Ok(false);
        }
        for &(name, path, kind) in components {
            let Some(c) = listed.components.get(name) else {
                return Ok(false);
            };
            let a = &c.artifact;
            let named = kind != ArtifactKind::File || a.name == file_name(path).ok();
            if a.kind != kind || !named {
                return Ok(false);
            }
            let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
            let (size, sha256) = self.hash_file(&mut file, path, |_| Ok(()))?;
            if (size, sha256.as_str()) != (a.size, a.sha256.as_str()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Signs `m` with the manifest keys of `trusted`, then verifies the result exactly as
    /// a client will, so the repository never holds a manifest clients would refuse. One
    /// over the devices' default size cap is refused with `too_large` naming `prune`.
    pub(super) fn seal_manifest(
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
        manifest::verify(&bytes, keys, &expect, &Freshness::default()).map_err(|e| {
            if e.kind() != ErrorKind::TooLarge {
                return e;
            }
            Error::new(
                e.kind(),
                format!(
                    "{}: devices refuse a channel manifest over that; remove old releases first ({})",
                    e.message(),
                    verify::prune_command(&m.channel)
                ),
            )
        })?;
        Ok(bytes)
    }
}

/// Gives the channel at `path` a modification time in a later whole second than the copy
/// it `replaced` had. nginx and busybox httpd tag a file by that time in seconds and its
/// size: two changes within one second at the same size (two resigns, a rollout from 20
/// to 50 %), copied with their times (`rsync -a`, `cp -p`), would keep one tag, and a
/// device holding the first copy would be answered `304` for the second until the
/// channel changed again.
fn later_second(path: &Path, replaced: Option<std::time::SystemTime>) -> Result<()> {
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let Some(old) = replaced.map(secs) else {
        return Ok(());
    };
    let set = || -> std::io::Result<()> {
        let file = std::fs::File::open(path)?;
        if secs(file.metadata()?.modified()?) <= old {
            let later = std::time::UNIX_EPOCH + std::time::Duration::from_secs(old + 1);
            file.set_modified(later)?;
        }
        Ok(())
    };
    set().map_err(|e| Error::io("set the modification time of", path, e))
}
