//! Activation, confirm and rollback (DESIGN §5.6), and the device's own choices: a
//! skipped version, the channel, a repair.

use super::*;

impl Updater {
    /// Activates the release staged in the inactive slot once the deploy policy lets it
    /// go, as [`Updater::activate`] without `force` does: for a host's timer, beside
    /// [`Updater::check_if_due`], so that a release staged for a maintenance window or an
    /// `at` time goes ahead once that time has come, not at the next due check (the poll
    /// interval later, a day after failures). `evergreen update --if-due` does the same
    /// between due checks. `None` when nothing is staged (the inactive slot holds no
    /// installed release, or the newest check withheld the one it holds), and under
    /// `download_only`, which waits for the host's own `activate`.
    ///
    /// ```no_run
    /// # fn main() -> evergreen::Result<()> {
    /// # let up = evergreen::Updater::builder(evergreen::Config::from_file("/etc/evergreen.json")?).build()?;
    /// if let Some(evergreen::Activation::Activated { version, .. }) = up.activate_if_due()? {
    ///     println!("{version} is on trial: restart into it");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn activate_if_due(&self) -> Result<Option<Activation>> {
        if matches!(self.config.deploy, select::DeployPolicy::DownloadOnly) {
            return Ok(None);
        }
        let st = self.load_state()?;
        let staged = st.slot(st.fallback());
        if staged.status != SlotStatus::Installed || staged.withheld.is_some() {
            return Ok(None);
        }
        self.activate(false).map(Some)
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
            if let Some(lost) = self.store.lost_staged(slot) {
                // Forgotten, so that the next update installs it afresh rather than
                // finding it staged and failing here again.
                *st.slot_mut(slot) = SlotRecord::default();
                let why = format!("{version} in slot {slot} is gone: {lost}");
                st.record((self.clock)(), "staged_lost", why.clone());
                self.save(&st)?;
                return Err(Error::invalid_state(format!(
                    "expected the release staged in slot {slot} to activate, found {why} (removed by hand?); the slot is marked empty: `evergreen update` installs it again"
                )));
            }
            if let Some(why) = self.other_target(&record) {
                // Not even forced: its artifacts may not run here. A check that offers the
                // same artifacts for this target lets it go (`follow_staged`).
                let target = &self.config.target;
                let reason = format!(
                    "{version} in slot {slot} was {why}; a check that offers it for {target} lets it go, `evergreen update` installs the release for {target}"
                );
                if force {
                    return Err(Error::new(ErrorKind::IncompatibleTarget, format!("expected a release staged for target {target}, found {reason}")));
                }
                return Ok(self.deferred(&version, None, reason));
            }
            // The install checked the floor as it was then; a confirmation since (of a
            // stranded first trial) may have raised it past the staged release.
            check_floor(&st, slot, "a slot to activate")?;
            if let Some(why) = record.withheld.as_ref().filter(|_| !force) {
                // The check that withheld it: of the channel it was staged from, or of the
                // one the device switched to since.
                let left = check::left_channel(&st, &record, &st.channel).as_ref() == Some(why);
                let channel = match left {
                    true => Some(st.channel.as_str()),
                    false => record.channel.as_deref(),
                };
                let reason = format!(
                    "the newest check of channel {} no longer offers it ({why}); it goes ahead once a check offers it again",
                    channel.unwrap_or("-")
                );
                return Ok(self.deferred(&version, None, reason));
            }
            if !force {
                if let Deploy::Wait { until, reason } = self.deploy(&st, record.critical, (self.clock)()) {
                    return Ok(self.deferred(&version, Some(until), reason));
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
            // A forced activation goes past a mark that no longer means anything once the
            // slot runs.
            st.slot_mut(slot).status = SlotStatus::Trial;
            st.slot_mut(slot).withheld = None;
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
            if let Err(e) = self.save(&st) {
                // The new state may be in place though the save failed (its directory's
                // sync): the caller hears that nothing changed, so nothing has.
                return Err(self.restored(&before, e, "the state from before the activation"));
            }
            if let Err(e) = self.with_fallback_kept(&before, slot, |s| s.activate(slot, tries)) {
                // Refused or failed: the caller hears that nothing changed, so nothing has.
                let mut st = before;
                st.record((self.clock)(), "activation_failed", e.to_string());
                self.unswitch(&st, slot);
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

    /// The deferral of `version`'s activation until `until` (none: until a check), said as
    /// a `deferred` event too.
    fn deferred(&self, version: &Version, until: Option<Timestamp>, reason: String) -> Activation {
        self.emit(Event::Deferred {
            version: version.to_string(),
            until,
            reason: reason.clone(),
        });
        Activation::Deferred { until, reason }
    }

    /// After an activation of `slot` that the selector failed: points a selector that
    /// counts no tries back at the primary of `st`, best effort. It may have switched
    /// before it failed (`current` renamed, then its directory's sync failing), and what
    /// it names is what the next start runs: the release never activated, which its
    /// startup step would then call a rollback. A bootloader that counts tries is left to
    /// the next startup step, which finds the primary it had: a second write of its
    /// environment on a failing device helps nothing.
    fn unswitch(&self, st: &State, slot: Slot) {
        let _ = self.with_selector(|s| match s.counts_tries() {
            false if s.booted().ok().flatten() == Some(slot) => s.fall_back(st.primary, slot),
            _ => Ok(()),
        });
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
                // A rollback moved to the primary while the app ran: what asks is the
                // slot given up, which nothing confirms.
                if let Some(left) = st.left_running.filter(|l| *l != st.primary) {
                    let (status, primary) = (st.slot(left).status.as_str(), st.primary);
                    return Err(Error::invalid_state(format!(
                        "expected the running slot {left} on trial to confirm it, found it {status} after a rollback to slot {primary}: restart into slot {primary} first"
                    )));
                }
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
    pub(super) fn running_now(
        &self,
        st: &State,
        next: Option<Slot>,
        s: &dyn BootSelector,
    ) -> Option<Slot> {
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

    /// Skips `version`: checks no longer offer it (unless it is critical), nor another
    /// build of it (`1.4.2+b7` for `1.4.2`: checks compare versions by semver precedence).
    /// [`Status::skipped`](crate::Status::skipped) lists it; [`Updater::unskip`] takes it back.
    pub fn skip(&self, version: &Version) -> Result<()> {
        let _lock = self.lock()?;
        let mut st = self.load_state()?;
        if !st.skipped.iter().any(|v| v.cmp_precedence(version).is_eq()) {
            st.skipped.push(version.clone());
        }
        self.save(&st)
    }

    /// Takes back [`Updater::skip`] of `version`, or of another build of it (the skip of
    /// `1.4.2` for `1.4.2+b7`, as checks compare them): checks may offer it again. `false`,
    /// and nothing saved, when it was not skipped.
    ///
    /// ```no_run
    /// # fn main() -> evergreen::Result<()> {
    /// # let up = evergreen::Updater::builder(evergreen::Config::from_file("/etc/evergreen.json")?).build()?;
    /// let version = "1.4.2".parse().unwrap();
    /// up.skip(&version)?;
    /// assert!(up.status()?.skipped.contains(&version));
    /// assert!(up.unskip(&version)?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn unskip(&self, version: &Version) -> Result<bool> {
        let _lock = self.lock()?;
        let mut st = self.load_state()?;
        let before = st.skipped.len();
        st.skipped.retain(|v| v.cmp_precedence(version).is_ne());
        if st.skipped.len() == before {
            return Ok(false);
        }
        self.save(&st).map(|()| true)
    }

    /// Follows `channel` from now on; the next check applies the channel-switch rules.
    pub fn set_channel(&self, channel: &str) -> Result<()> {
        manifest::check_channel_name(channel)?;
        let _lock = self.lock()?;
        let mut st = self.load_state()?;
        let clock = (self.clock)();
        st.record(clock, "channel", format!("{} -> {channel}", st.channel));
        st.switch_channel(channel);
        // A check of `channel` made before the switch (`update --channel` saves it after
        // its check) is the device's own from now on: what it staged from another channel
        // is withheld as that check would have withheld it after the switch. Only marked
        // or renamed here, never lifted: the manifest cached for the channel may be older
        // than leaving it, or expired, and only a check of it judges it again.
        if let Some((slot, why)) = check::left_on_record(&st) {
            check::mark_withheld(&mut st, slot, Some(why), channel, clock);
        }
        self.save(&st)
    }

    /// An offer to install the installed version again (repair), with every component
    /// installed from its artifact: downloaded, or a download still kept (checked against
    /// its SHA-256 like any). An explicit call, never a check result.
    pub fn reinstall_offer(&self) -> Result<Offer> {
        self.reported("reinstall", || {
            let _work = self.work_lock(None)?;
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
            let (manifest, checked) = match self.fetch_manifest(&mut st, &channel, clock) {
                Ok(fetched) => fetched,
                Err(e) => {
                    self.save_check(&st)?;
                    return Err(e);
                }
            };
            let st = self.save_check(&st)?;
            self.emit(checked);
            // The manifest just verified judges a release staged from it, as a check's
            // does: a halt it carries must not be dropped because a repair was asked for.
            let device_id = self.device_id()?;
            let pin = self.config.pin_version.as_ref().map(|p| (p, true));
            let device = self.device(&st, &device_id);
            self.follow_withheld(&st, &manifest, &device, None, pin, clock)?;
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
                self.offer(&st, &manifest, release, &repair, (manifest.channel.clone(), st.channel_switches), clock)?;
            offer.asked_for = true;
            for c in &mut offer.components {
                if c.op == ComponentOp::Unchanged {
                    c.op = ComponentOp::Modified;
                    // The diff gives unchanged components no artifact; a repair needs it.
                    c.artifact = offer.target.components.get(&c.name).map(|t| t.artifact.clone());
                }
            }
            // Of the artifacts it now carries, those kept whole are not fetched again:
            // the download size and the progress leave them out.
            offer.downloaded = self.already_downloaded(&st, &offer);
            Ok(offer)
        })
    }
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
