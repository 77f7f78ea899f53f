//! The check (DESIGN §5.1–5.3): the root chain walked, the channel manifest fetched and
//! verified, and the release to offer chosen by `select`.

use super::*;

impl Updater {
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
            let (_work, st) = self.check_turn(channel)?;
            self.check_in_turn(st, channel, version)
        })
    }

    /// [`Updater::check_with`] when the check is due ([`Updater::next_check`]), else
    /// `None` and no request. Judged once this call has its turn: a check that waited for
    /// another one (a timer's `evergreen update --if-due` and the app's own, at once)
    /// finds the schedule that one left, and does not ask the server again.
    ///
    /// ```no_run
    /// # fn main() -> evergreen::Result<()> {
    /// # let up = evergreen::Updater::builder(evergreen::Config::from_file("/etc/evergreen.json")?).build()?;
    /// match up.check_if_due(None, None)? {
    ///     None => println!("not due until {}", up.next_check()?),
    ///     Some(check) => println!("{check:?}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn check_if_due(
        &self,
        channel: Option<&str>,
        version: Option<&Version>,
    ) -> Result<Option<Check>> {
        self.reported("check", || {
            let (_work, st) = self.check_turn(channel)?;
            if self.next_check_of(&st)? > (self.clock)() {
                return Ok(None);
            }
            self.check_in_turn(st, channel, version).map(Some)
        })
    }

    /// The turn of a check: `channel`'s name checked, the work lock, and the state as it
    /// is once that is had.
    fn check_turn(&self, channel: Option<&str>) -> Result<(crate::state::StateLock, State)> {
        if let Some(name) = channel {
            manifest::check_channel_name(name)?;
        }
        let work = self.work_lock(None)?;
        Ok((work, self.load_state()?))
    }

    /// The check, in its turn (`check_turn`), from the state `st` read in it.
    fn check_in_turn(
        &self,
        mut st: State,
        channel: Option<&str>,
        version: Option<&Version>,
    ) -> Result<Check> {
        let channel = channel.unwrap_or(&st.channel).to_string();
        // The poll schedule (backoff, next check) follows the device's own channel: a
        // look at another one moves neither way.
        let own_channel = channel == st.channel;
        // The host's clock, read once for the run (DESIGN §5.1 rule 4): the expiry the
        // manifest is judged by and the rollout it is selected by are the same moment.
        let clock = (self.clock)();
        let (manifest, checked) = match self.fetch_manifest(&mut st, &channel, clock) {
            Ok(fetched) => fetched,
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
                let line = format!("error[{}]: {}", e.kind().as_str(), e.message());
                self.save_failed_check(&st, own_channel.then_some((failed_at, line)))?;
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
        // The channel followed as the check began, and the switches made until then: a
        // switch made while it was on the network is newer than this offer (see
        // `channel_after_activation`, `begin_install`).
        let followed = (st.channel.clone(), st.channel_switches);
        let st = self.save_check(&st)?;
        self.emit(checked);
        self.decide(&st, &manifest, version, clock, followed)
    }

    /// Saves what the check `checked` that failed learned, as `save_check` does, and
    /// records `failure` (its time and error line, for a check of the channel followed)
    /// in the history, where `status` shows it after the fact.
    fn save_failed_check(
        &self,
        checked: &State,
        failure: Option<(Timestamp, String)>,
    ) -> Result<()> {
        let record = |st: &mut State| {
            if let Some((at, error)) = failure {
                st.record_check_failure(at, &error);
            }
        };
        self.save_check_and(checked, record).map(drop)
    }

    /// Turns a verified manifest into an offer (pure selection + the component diff), at
    /// `clock`, the run's reading of the host's clock.
    fn decide(
        &self,
        st: &State,
        manifest: &Verified<Manifest>,
        pin: Option<&Version>,
        clock: Timestamp,
        followed: (String, u64),
    ) -> Result<Check> {
        let now = manifest::effective_now(clock, st.newest_issued);
        let device_id = self.device_id()?;
        let device = self.device(st, &device_id);
        let policy = self.policy(pin);
        let decision = select::select(manifest, &device, &policy, now)?;
        let offered = match &decision {
            select::Decision::Update(c) => Some(&c.version),
            select::Decision::UpToDate => None,
        };
        // A pin is asked for whatever the rollout says, and a pinned check looks at its
        // release alone: it may let a staged release go, never hold one back.
        let pin = policy.pin.map(|p| (p, policy.pin_is_standing));
        self.follow_withheld(st, manifest, &device, offered, pin, clock)?;
        let choice = match decision {
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
                let held_back = (policy.pin.is_none())
                    .then(|| select::held_back(manifest, &device, now))
                    .flatten();
                if let Some(h) = &held_back {
                    self.emit(Event::HeldBack {
                        version: h.version.to_string(),
                        reason: h.reason.clone(),
                    });
                }
                return Ok(Check::UpToDate {
                    target_released,
                    held_back,
                });
            }
            select::Decision::Update(c) => c,
        };
        let release = manifest.release(&choice.version).ok_or_else(|| {
            Error::new(
                ErrorKind::NoSuchVersion,
                format!("version {} vanished from the manifest", choice.version),
            )
        })?;
        let mut offer = self.offer(st, manifest, release, &choice, followed, clock)?;
        offer.asked_for = policy.pin.is_some();
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
    /// A release staged for another target (the config's changed since) that the check
    /// offers with the same artifacts for this one is this target's release too: its record
    /// takes this target, and `activate` lets it go.
    fn follow_staged(&self, checked: &State, offer: &Offer, clock: Timestamp) -> Result<()> {
        let target = &self.config.target;
        // Most checks change nothing: they take no lock for it.
        if staged_to_follow(checked, offer, target).is_none() {
            return Ok(());
        }
        let _lock = self.lock()?;
        let mut st = self.load_state()?;
        // Again under the lock: an activation may have taken the slot since the check
        // began.
        let Some(slot) = staged_to_follow(&st, offer, target) else {
            return Ok(());
        };
        if st.slot(slot).target.as_ref().is_some_and(|t| t != target) {
            st.slot_mut(slot).target = Some(target.clone());
            st.record(
                clock,
                "staged_target",
                format!(
                    "{} in slot {slot} is target {target}'s release too",
                    offer.version
                ),
            );
        }
        if st.slot(slot).critical == offer.critical {
            return self.save(&st);
        }
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

    /// Keeps the record of a release staged (installed, not activated) from `manifest`'s
    /// channel in step with whether this check, which chose `offered`, still offers it
    /// to `device`: one halted, narrowed past this device, withdrawn, skipped or
    /// listed with other artifacts since is withheld from `activate` until a check offers
    /// it again (DESIGN §5.3). Without this, an `at` or `window` policy activated a
    /// release its operator had halted, at the time it set before the halt. A pinned
    /// check (`pin`, and whether it is the config's standing one) judges no rollout: it
    /// lets the release it offers go, and a standing pin to another version holds the
    /// staged one back. `clock` is the check's reading of the host's clock.
    pub(super) fn follow_withheld(
        &self,
        checked: &State,
        manifest: &Manifest,
        device: &Device<'_>,
        offered: Option<&Version>,
        pin: Option<(&Version, bool)>,
        clock: Timestamp,
    ) -> Result<()> {
        // The rollout is judged at the moment selection used.
        let now = manifest::effective_now(clock, checked.newest_issued);
        // The staged slot, with why it is withheld (if it is) and whether it was asked for,
        // when either differs from its record.
        let change = |st: &State| -> Option<(Slot, Option<String>, bool)> {
            let slot = st.fallback();
            let record = st.slot(slot);
            let version = record.version.as_ref()?;
            if record.status != SlotStatus::Installed {
                return None;
            }
            let asked = record.asked_for;
            if record.channel.as_deref() != Some(manifest.channel.as_str()) {
                return newly_left(st, &manifest.channel)
                    .map(|(slot, why)| (slot, Some(why), asked));
            }
            let verdict = |chose| self.staged_verdict(manifest, device, record, chose, now);
            let (why, asked_for) = match (pin, offered == Some(version)) {
                // The config pins the device to another version: that is the one to run.
                (Some((pinned, true)), false) if pinned.cmp_precedence(version).is_ne() => (
                    Some(format!("the device is pinned to {pinned} (`pin_version`)")),
                    asked,
                ),
                // Offered again; by a pinned check, it is asked for from now on, so the
                // next routine check does not hold back what was just asked for.
                (pin, true) => {
                    let why = verdict(true);
                    (why.clone(), asked || (pin.is_some() && why.is_none()))
                }
                // A pin's or a repair's: asked for whatever the rollout says.
                _ if asked => (verdict(true), true),
                (Some(_), false) => (record.withheld.clone(), false),
                (None, false) => (verdict(false), false),
            };
            // A look at the channel the device left since staging lifts nothing: only a
            // switch back lets its channel's check offer it again.
            let why = why.or_else(|| {
                (st.channel != manifest.channel && !asked_for)
                    .then(|| left_channel(st, record, &st.channel))
                    .flatten()
            });
            let same = why == record.withheld && asked_for == record.asked_for;
            (!same).then_some((slot, why, asked_for))
        };
        // Most checks change nothing: they take no lock for it.
        if change(checked).is_none() {
            return Ok(());
        }
        let _lock = self.lock()?;
        let mut st = self.load_state()?;
        // Again under the lock: an activation or an install may have taken the slot.
        let Some((slot, why, asked_for)) = change(&st) else {
            return Ok(());
        };
        st.slot_mut(slot).asked_for = asked_for;
        mark_withheld(&mut st, slot, why, &manifest.channel, clock);
        self.save(&st)
    }

    /// How selection chooses for a check pinned to `pin` by its call, else by the config's
    /// standing `pin_version`.
    pub(super) fn policy<'a>(&'a self, pin: Option<&'a Version>) -> Policy<'a> {
        Policy {
            pin: pin.or(self.config.pin_version.as_ref()),
            pin_is_standing: pin.is_none(),
            allow_downgrade: self.config.allow_downgrade,
        }
    }

    /// This device as selection sees it in `st`, under `device_id`.
    pub(super) fn device<'a>(&'a self, st: &'a State, device_id: &'a str) -> Device<'a> {
        Device {
            product: &self.config.product,
            target: &self.config.target,
            device_id,
            installed: st
                .installed_version()
                .or(self.config.current_version.as_ref()),
            security_floor: st.security_floor,
            skipped: &st.skipped,
            failed: &st.failed,
        }
    }

    /// The offer of `release` as `choice` selected it. Its `critical` is the selection's,
    /// not only the release's own flag: an update that passes over, or is the stepping stone
    /// towards, a critical release is forced too (DESIGN §5.3), in the offer, the deploy
    /// decision and the slot record `activate` reads (at the install, and again at each
    /// check that offers the staged release: see [`Updater::follow_staged`]). Its deploy
    /// decision is at `clock`, the run's reading of the host's clock.
    pub(super) fn offer(
        &self,
        st: &State,
        manifest: &Verified<Manifest>,
        release: &Release,
        choice: &select::Choice,
        (device_channel, channel_switches): (String, u64),
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
        let mut offer = Offer {
            downloaded: Vec::new(),
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
            channel_switches,
            issuer: self.id,
            asked_for: false,
            manifest_sha256: manifest.payload_sha256().to_string(),
        };
        offer.downloaded = self.already_downloaded(st, &offer);
        Ok(offer)
    }

    /// The device id for rollout buckets: configured, else the one kept in the state
    /// directory, else `/etc/machine-id` (kept from then on), else one generated once and
    /// kept. Kept because a rollout's promise is that a device, once in, stays in as the
    /// percentage grows: a machine id made afresh at every boot (systemd's, on a read-only
    /// root file system without one) would draw a new bucket at every check, and a device
    /// that rebooted daily would be in a 5 % rollout within weeks.
    pub(super) fn device_id(&self) -> Result<String> {
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
    pub(super) fn known_device_id(&self) -> Option<String> {
        self.kept_device_id().or_else(machine_id)
    }

    /// The configured device id, else the one kept in the state directory.
    fn kept_device_id(&self) -> Option<String> {
        match &self.config.device_id {
            Some(id) => Some(id.clone()),
            // An empty or `uninitialized` file is as if there were none; so is a FIFO or a
            // link planted there, never waited on or followed.
            None => {
                let bytes = crate::fsutil::read_regular(&self.device_id_path()).ok()?;
                crate::config::usable_machine_id(&String::from_utf8(bytes).ok()?)
            }
        }
    }

    fn device_id_path(&self) -> PathBuf {
        self.state_dir().join("device-id")
    }

    /// Fetches and verifies `channel`'s manifest: conditional GET; on 304 the cached
    /// envelope is verified again (expiry still applies). Only when the manifest changed is
    /// the root chain walked first, so an unchanged check is a single request.
    /// `clock` is the host's clock as the run read it; each rule pulls it up to the newest
    /// `issued` seen under the manifest keys it checks with. With the manifest comes its
    /// `checked` event, for the caller to send once `st` is saved: a host reading
    /// `status()` when told must find the check there.
    pub(super) fn fetch_manifest(
        &self,
        st: &mut State,
        channel: &str,
        clock: Timestamp,
    ) -> Result<(Verified<Manifest>, Event)> {
        self.of_this_state(st)?;
        self.identify(
            st.installed_version()
                .or(self.config.current_version.as_ref()),
        );
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
            etag: mut new_etag,
            bytes: fresh_bytes,
        } = fetched;
        // Persist only after every rule passed.
        let not_modified = fresh_bytes.is_none();
        if let Some(bytes) = &fresh_bytes {
            // Not kept on a full disk: without an ETag the next check fetches it whole, and
            // a copy left from before matches no hash the state records (each read of it
            // checks one), so it is never taken for this one.
            if !crate::fsutil::write_atomic_if_room(&cache, bytes)? {
                new_etag = None;
            }
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
        let checked = Event::Checked {
            channel: channel.to_string(),
            sequence: verified.sequence,
            not_modified,
        };
        Ok((verified, checked))
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
        // The chain is walked at the first copy served that differs from the cached one,
        // once: it is the same for every base. A copy the same byte for byte is what a 304
        // says, from a server without (or with changing) entity tags: no walk, as for a
        // 304 (decision 1), or every check there would be two requests, and fail while the
        // server is down and a mirror serves the channel.
        // Read at the first copy served (never for a 304), of a channel checked before.
        let mut cached: Option<Option<Vec<u8>>> = None;
        // The anchor, and whether the chain was walked for it.
        let mut anchor: Option<(bool, Result<Anchored>)> = None;
        let mut verified = None;
        let fetched = self.fetcher.metadata_checked(
            &path,
            etag,
            self.config.limits.max_metadata_bytes,
            &mut |bytes| {
                let cached = cached.get_or_insert_with(|| {
                    let seen = st.manifests.contains_key(channel);
                    seen.then(|| crate::fsutil::read_regular(&self.manifest_cache(channel)).ok())
                        .flatten()
                });
                let walk = cached.as_deref() != Some(bytes);
                if anchor.as_ref().is_none_or(|(walked, _)| walk && !walked) {
                    anchor = Some((walk, self.anchor(st, clock, walk)));
                }
                // Not this base's fault: ends the fetch, and is the answer below.
                let Some((_, Ok(anchor))) = &anchor else {
                    return Ok(());
                };
                // With whether it is the cached copy, which is then not written again: a
                // server without entity tags would wear the flash at every check.
                verified = Some((
                    self.verify_manifest(st, channel, clock, anchor, bytes)?,
                    walk,
                ));
                Ok(())
            },
        )?;
        if let Some((_, Err(e))) = anchor {
            return Err(e);
        }
        Ok(match fetched {
            Metadata::NotModified => None,
            Metadata::Fetched { bytes, etag } => {
                let (verified, changed) = verified.ok_or_else(|| {
                    Error::invalid_state("a manifest was taken without being verified")
                })?;
                Some(FetchedManifest {
                    verified,
                    etag,
                    bytes: changed.then_some(bytes),
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
        let bytes = crate::fsutil::read_regular(cache)?;
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
            .map_err(|e| walk_hint(keys_hint(e, anchor, bytes), anchored, bytes))
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
                    walked: false,
                    before: None,
                });
            }
            TrustConfig::Root(root) => root,
        };
        let saved = self.state_dir().join("root.json");
        // A saved root for another product is a device moved by hand (`config`); a damaged
        // one (a bad block, a cut write outside this library, wherever in the file) is as
        // if none were saved: the configured root is the start again, and the walk must
        // reach the version recorded in the state (`root_version`), so nothing older is
        // trusted.
        let kept = match self.load_saved_root(&saved) {
            Ok(kept) => Some(self.of_this_product(kept, &saved, SAVED_ROOT)?),
            Err(_) => None,
        };
        let pinned = match (self.load_root(pinned_path, CONFIGURED_ROOT), &kept) {
            // One for another product is a misconfiguration, said as such.
            (Ok(pinned), _) => self.of_this_product(pinned, pinned_path, CONFIGURED_ROOT)?,
            // The saved chain stands on its own: a configured root that cannot be used (a
            // firmware that ships none, a damaged or truncated file, a flipped byte in a
            // key or threshold) must not keep the device from the release that brings it
            // back.
            (Err(_), Some(kept)) => kept.clone(),
            (Err(e), None) => return Err(e),
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
        let walked = walk || behind || root.check_unexpired(now).is_err();
        let before = walked.then(|| (from, root.manifest_keys().clone()));
        let root = if walked {
            root.update(
                // A copy that does not verify is passed over for the next base's: a
                // mirror's soft 404 (an error page with 200) must not end every walk in a
                // signature error. One the server answers 404 for ends it, and a walk
                // the server cannot answer says so: the channel a mirror (a USB stick)
                // served waits for it.
                |v, accept| {
                    let path = format!("root/{v}.json");
                    match self.fetcher.metadata_checked(&path, None, max, accept) {
                        Ok(_) => Ok(()),
                        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                        Err(e)
                            if matches!(
                                e.kind(),
                                ErrorKind::Network | ErrorKind::Timeout | ErrorKind::HttpStatus
                            ) =>
                        {
                            Err(e.hint("only the server's 404 ends the root chain"))
                        }
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
            before: before.filter(|(v, _)| *v < version),
            anchor: Anchor::Root(root),
            cut_at,
            walked,
        })
    }

    /// Whether the copy kept of the manifest last accepted on `channel` (`seen`) is still
    /// signed by `keys`, their threshold met: after a rotation that revoked a manifest key,
    /// such a channel keeps its record (see [`State::trust_manifest_keys`]).
    fn still_signed(&self, channel: &str, seen: &SeenManifest, keys: &KeySet) -> bool {
        let Ok(bytes) = crate::fsutil::read_regular(&self.manifest_cache(channel)) else {
            return false;
        };
        let max = self.config.limits.max_metadata_bytes;
        crate::trust::open_signed(&bytes, crate::trust::MANIFEST_TYPE, keys, max)
            .is_ok_and(|s| crate::trust::sha256_hex(s.payload()) == seen.payload_sha256)
    }

    /// Where the manifest last accepted on `channel` is kept, for 304s.
    pub(super) fn manifest_cache(&self, channel: &str) -> PathBuf {
        self.state_dir()
            .join("cache")
            .join(format!("{channel}.json"))
    }

    /// Makes `root` the saved root. Its root keys are recorded in the state first, and the
    /// state saved: a power cut between the two writes must not leave a `root.json` whose
    /// keys the state does not know, which the next check would take for another chain
    /// (decision 29). On a full disk the older root stays saved: the state records this
    /// one's version, so the next check walks to it again.
    fn keep_root(&self, st: &mut State, root: &TrustedRoot, saved: &Path) -> Result<()> {
        st.trust_root_keys(root.root_keys());
        self.save_check(st)?;
        crate::fsutil::write_atomic_if_room(saved, root.envelope()).map(drop)
    }

    /// The root in `path`, verified by a threshold of its own root keys. `what` names the
    /// file in errors (`trust.root` for the configured one): a user told only that "a
    /// root" is wrong cannot tell the config's file from the state's copy. An error here
    /// is a file that cannot anchor the chain: missing, cut short, or damaged anywhere (a
    /// bad key or threshold read before the signatures are checked is `config` or
    /// `wrong_metadata`, a changed byte elsewhere `signature`). The product is checked
    /// apart ([`Updater::of_this_product`]).
    fn load_root(&self, path: &Path, what: &str) -> Result<TrustedRoot> {
        let name = format!("{what} {}", path.display());
        // Named as every other error of the file is.
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", Path::new(&name), e))?;
        TrustedRoot::pinned(&bytes, self.config.limits.max_metadata_bytes)
            .map_err(|e| e.context(&name))
    }

    /// The root the state directory keeps, as [`Updater::load_root`] reads a configured
    /// one, but never through a FIFO or link planted in its place. Its errors are not
    /// shown: a kept root that cannot be read is as if none were kept.
    fn load_saved_root(&self, path: &Path) -> Result<TrustedRoot> {
        let bytes = crate::fsutil::read_regular(path)?;
        TrustedRoot::pinned(&bytes, self.config.limits.max_metadata_bytes)
    }

    /// Claims `st` for the config's product, unless it was checked for another one
    /// (`config`): a config edited to another product (under `trust.keys`, where no saved
    /// root names the product) must not judge the new product's metadata by the old one's
    /// sequences, nor offer its releases over the old one's install.
    fn of_this_state(&self, st: &mut State) -> Result<()> {
        let product = &self.config.product;
        match &st.product {
            Some(found) if found != product => Err(Error::config(format!(
                "the state in {}: expected the state of product {product:?} (the config's), found that of {found:?}: a device moved to another product starts from a state directory of its own (a new `state_dir`)",
                self.state_dir().display()
            ))),
            _ => {
                st.product = Some(product.clone());
                Ok(())
            }
        }
    }

    /// `root`, unless it is for another product (`config`): a verified root of another
    /// product is a device moved by hand or a misconfiguration, not damage, and is never
    /// passed over for the other root.
    fn of_this_product(&self, root: TrustedRoot, path: &Path, what: &str) -> Result<TrustedRoot> {
        if root.root().product == self.config.product {
            return Ok(root);
        }
        Err(Error::config(format!(
            "{what} {}: expected a root for product {:?}, found one for {:?}",
            path.display(),
            self.config.product,
            root.root().product
        )))
    }
}

/// How errors name the root saved in the state directory.
const SAVED_ROOT: &str = "the saved root";
/// How errors name the root of the config (`trust.root`).
const CONFIGURED_ROOT: &str = "`trust.root`";

/// A channel manifest that passed every rule, as fetched.
struct FetchedManifest {
    verified: Verified<Manifest>,
    /// The ETag to ask with next time.
    etag: Option<String>,
    /// The envelope to cache; `None` when the cached one is current (a 304, or its bytes
    /// sent again).
    bytes: Option<Vec<u8>>,
}

/// A trust anchor, and where this run's walk of the root chain stopped when it stopped at
/// its step limit ([`crate::trust::MAX_ROOT_STEPS`]) rather than at the chain's end.
struct Anchored {
    anchor: Anchor,
    cut_at: Option<u64>,
    /// Whether the root chain was walked on the server for it (the newest root found
    /// there), rather than the root kept taken as it is.
    walked: bool,
    /// The version and manifest keys of the root the walk started from, when it went
    /// past it: a channel they sign and the newest root no longer does is one its
    /// rotation re-signed, not uploaded yet.
    before: Option<(u64, KeySet)>,
}

/// `e`, a manifest's failed verification under `anchored`, with what may explain it: a
/// walk of the root chain cut short by its step limit leaves the device on a root older
/// than the manifest's signers. Said only of a well-formed `envelope`: one cut short (a
/// copy still being uploaded) has no signers to blame on a rotation.
fn walk_hint(e: Error, anchored: &Anchored, envelope: &[u8]) -> Error {
    if !matches!(e.kind(), ErrorKind::Signature | ErrorKind::Threshold)
        || !crate::trust::is_envelope(envelope)
    {
        return e;
    }
    match (anchored.cut_at, &anchored.anchor) {
        (Some(v), _) => e.hint(format!(
            "the walk of the root chain stopped at version {v}, after the {} versions one check takes: the manifest may be signed by the keys of a later root, which the next check goes on to",
            crate::trust::MAX_ROOT_STEPS
        )),
        // The walk ended where the repository has no next root: a copy of it (a mirror
        // synced in part, a USB stick) may lack the root that a key rotation published.
        (None, Anchor::Root(root)) if anchored.walked => {
            let (v, next) = (root.root().version, root.root().version + 1);
            // Signed by the keys of the root this walk left: the rotation to it re-signed
            // every channel, and the server has its root and not yet its channels.
            let signed = |keys| {
                crate::trust::open_signed(envelope, crate::trust::MANIFEST_TYPE, keys, u64::MAX)
            };
            if let Some((from, _)) = anchored.before.as_ref().filter(|(_, k)| signed(k).is_ok()) {
                return e.hint(format!(
                    "the channel is signed only by manifest keys root version {from} listed and version {v} does not: it is from before that rotation, which re-signed every channel (root/ uploaded, channels/ not copied yet?); the check after they are takes them"
                ));
            }
            e.hint(format!(
                "the newest root found is version {v} (no root/{next}.json): a channel signed with keys rotated in after it needs root/{next}.json beside it"
            ))
        }
        (None, _) => e,
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

/// The inactive slot when it holds `offer`'s release staged with another `critical` than
/// the offer's, or for another target than `target`.
fn staged_to_follow(st: &State, offer: &Offer, target: &str) -> Option<Slot> {
    staged(st, offer).filter(|slot| {
        let record = st.slot(*slot);
        record.critical != offer.critical || record.target.as_ref().is_some_and(|t| t != target)
    })
}

/// The system's machine id ([`crate::config::MACHINE_ID_PATH`]), unless it is missing,
/// empty or `uninitialized`.
fn machine_id() -> Option<String> {
    let text = std::fs::read_to_string(crate::config::MACHINE_ID_PATH).ok()?;
    crate::config::usable_machine_id(&text)
}

/// Why the release staged in `record` waits, when the device switched from the channel it
/// was staged on to `checked`, the channel it follows now and whose check this is: a
/// switch away (a channel found bad, say) must not be followed by that channel's release
/// going live at its window. A release asked for (a pin, a repair) stays the host's
/// choice; a check of a channel the device does not follow judges nothing here.
pub(super) fn left_channel(st: &State, record: &SlotRecord, checked: &str) -> Option<String> {
    let staged_on = record.device_channel.as_deref()?;
    let from = record.channel.as_deref()?;
    (!record.asked_for && st.channel == checked && staged_on != checked)
        .then(|| format!("the device left channel {from}, which it was staged from, for {checked}"))
}

/// The staged slot and why its release now waits for the device leaving its channel, when
/// the newest check of `channel` gives it that mark anew ([`left_channel`]); none when the
/// slot holds no staged release or already has that mark.
pub(super) fn newly_left(st: &State, channel: &str) -> Option<(Slot, String)> {
    let slot = st.fallback();
    let record = st.slot(slot);
    if record.status != SlotStatus::Installed {
        return None;
    }
    let why = left_channel(st, record, channel)?;
    (record.withheld.as_ref() != Some(&why)).then_some((slot, why))
}

/// [`newly_left`] for the channel the device follows, when a check of it is on record:
/// that check is the device's own since it switched (a switch, or an install, saved
/// after it), and judges what was staged from another channel as it would have after.
pub(super) fn left_on_record(st: &State) -> Option<(Slot, String)> {
    let checked = st.manifests.get(&st.channel)?.checked.is_some();
    checked.then(|| newly_left(st, &st.channel)).flatten()
}

/// Sets the withheld mark of the staged release in `slot` to `why`, the judgement of the
/// newest check of `channel`, with a history entry when it withholds or lets it go.
pub(super) fn mark_withheld(
    st: &mut State,
    slot: Slot,
    why: Option<String>,
    channel: &str,
    clock: Timestamp,
) {
    let version = version_str(st.slot(slot).version.as_ref());
    let said = match (&why, st.slot(slot).withheld.is_some()) {
        (Some(why), _) => Some((
            "staged_withheld",
            format!("{version} in slot {slot} waits: the newest check of channel {channel} no longer offers it: {why}"),
        )),
        (None, true) => Some((
            "staged_offered_again",
            format!("{version} in slot {slot}: the newest check of channel {channel} offers it again"),
        )),
        (None, false) => None,
    };
    st.slot_mut(slot).withheld = why;
    if let Some((event, detail)) = said {
        st.record(clock, event, detail);
    }
}
