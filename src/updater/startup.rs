//! The startup step (DESIGN §5.6): run on every boot or app start, it counts a trial's
//! starts, reconciles the state with the boot selector and falls back to the last good
//! slot when a trial is used up.

use super::*;

impl Updater {
    /// The startup step: run it early on every start (or via `evergreen boot`).
    ///
    /// Counts a start of a slot on trial and rolls back to the fallback once the tries are
    /// used up; with a bootloader selector it reads what the bootloader did instead. Run
    /// inside the app it counts: with dir slots, the slot this process's program lies in
    /// is the one running (`examples/app.rs`); a launcher calls
    /// [`startup_for_launcher`](Self::startup_for_launcher).
    pub fn startup(&self) -> Result<Startup> {
        self.startup_step().map(|end| end.startup)
    }

    /// [`startup`](Self::startup), and the slot the selector names at its end, read under
    /// the same lock: activations take it too, so that is the slot this step settled (the
    /// C ABI's `evg_startup` reports it too).
    pub(crate) fn startup_step(&self) -> Result<Launch> {
        self.step(true)
    }

    /// The startup step, run inside the app it counts a start of (`in_app`), or by a
    /// launcher that starts a slot afterwards.
    fn step(&self, in_app: bool) -> Result<Launch> {
        self.reported("startup", || {
            let _lock = self.startup_lock()?;
            let mut st = self.load_state()?;
            // This start runs from the primary: a slot a rollback left earlier is idle now
            // (unless this start rolls back again, which marks the slot it leaves).
            let restarted = st.left_running.take().is_some();
            let counts = self.with_selector(|s| Ok(s.counts_tries()))?;
            let outcome = if counts {
                self.startup_bootloader(&mut st)?
            } else {
                self.startup_counting(&mut st, in_app)?
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
        let launch = self.step(false)?;
        // A normal start while the selector names the slot on trial: the step moved the
        // selector there (a repair) after counting this start as the old slot's. (A
        // bootloader counts its tries itself, and started what it named.)
        let repaired = launch.startup == Startup::Normal
            && launch.slot.is_some()
            && launch.slot == self.load_state()?.trial.map(|t| t.slot)
            && !self.with_selector(|s| Ok(s.counts_tries()))?;
        match repaired {
            true => self.step(false),
            false => Ok(launch),
        }
    }

    fn startup_counting(&self, st: &mut State, in_app: bool) -> Result<Startup> {
        let booted = match in_app.then(|| self.program_slot()).flatten() {
            Some(slot) => Some(slot),
            None => self.with_selector(|s| s.booted())?,
        };
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
            return self.repaired_switch(st, running, in_app);
        } else if self.own_link
            && booted.is_none()
            && st.slot(st.primary).status != SlotStatus::Empty
            && self.store.missing_install(st.primary).is_none()
        {
            // No selector link at all, though the primary holds an install: the very
            // first activation was cut short before it made `current`. Make it; what ran
            // this start was not the release on trial, whose trial starts at the next
            // start (a launcher's step runs again for it).
            let (p, f) = (st.primary, st.fallback());
            self.with_selector(|s| s.fall_back(p, f))?;
            if st.trial.is_some_and(|t| t.slot == p) {
                return Ok(Startup::Normal);
            }
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
        // The starts the trial began with: the config may have changed since (0 in a state
        // saved before they were recorded).
        let tries = match trial.tries {
            0 => self.config.trial.tries,
            tries => tries,
        };
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
        // Inside the app, the slot given up runs until the host restarts: no install may
        // write it before then, as after a rollback by hand. A launcher has started
        // nothing yet, and starts the slot the step falls back to.
        if in_app {
            st.left_running = Some(trial.slot);
        }
        self.fall_back(st, &reason)
    }

    /// The dir slot this process's program was started from, when it lies in one of
    /// Evergreen's own dir slots (by any path to it): the kernel resolved `current` when it started the
    /// program, so that is the release running, whatever `current` names by the time
    /// the step runs. An activation in another process landing in between would
    /// otherwise have its trial counted as started, and the old release's `confirm`
    /// vouch for it; a rollback, have the slot still running handed to installs. `None`
    /// for a program outside the slots (an interpreter's, say): then `current` is taken
    /// for what runs, and such an app is best started by the launcher.
    fn program_slot(&self) -> Option<Slot> {
        let Store::Dir(slots) = &self.store else {
            return None;
        };
        use std::os::unix::fs::MetadataExt;
        let program = std::env::current_exe().ok().filter(|_| self.own_link)?;
        // By identity, not by path: the program may have been started through another
        // path to the same directories (a bind mount of the root).
        let id = |dir: &Path| std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()));
        let dirs = [Slot::A, Slot::B].map(|slot| (slot, id(&slots.slot_dir(slot))));
        program.ancestors().skip(1).find_map(|dir| {
            let found = id(dir)?;
            dirs.iter()
                .find(|(_, d)| *d == Some(found))
                .map(|(slot, _)| *slot)
        })
    }

    /// The outcome of a start of `running`, a slot the state had already left when the
    /// selector was switched back to the primary. An activation cut short: the slot on
    /// trial has not started, so nothing is counted, and this start of the good slot is
    /// `Normal` (the trial starts at the next start, as with a bootloader that was not
    /// told). A rollback cut short: the host must restart into the primary, and until it
    /// does `running` is a slot in use that no install may write (`in_app`; a launcher has
    /// started nothing yet, and starts the primary).
    fn repaired_switch(&self, st: &mut State, running: Slot, in_app: bool) -> Result<Startup> {
        if st.trial.is_some_and(|t| t.slot == st.primary) {
            return Ok(Startup::Normal);
        }
        if in_app {
            st.left_running = Some(running);
            self.save(st)?;
        }
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
    pub(super) fn tries_left(&self, trial: Trial) -> Result<u32> {
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
    pub(super) fn with_fallback_kept(
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
    pub(super) fn unusable_fallback(&self, st: &State) -> Option<String> {
        self.no_going_back_to(st, st.fallback())
    }

    /// Why `fallback` cannot be gone back to, if it cannot (see
    /// [`Updater::unusable_fallback`]).
    pub(super) fn no_going_back_to(&self, st: &State, fallback: Slot) -> Option<String> {
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
    pub(super) fn fall_back(&self, st: &mut State, reason: &str) -> Result<Startup> {
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
}
