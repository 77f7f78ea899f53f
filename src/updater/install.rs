//! The install (DESIGN §5.5): verified downloads staged into the inactive slot, which is
//! marked `installed` only once its data is durable.

use super::*;

impl Updater {
    /// Writes the plan into the inactive slot (which is marked `installing` before the
    /// first byte and `installed` only when everything is durable). The primary slot is
    /// never touched. A plan from another updater's check is `invalid_state`: that
    /// updater's trust root, product and state checked the release, not this one's.
    pub fn install(&self, plan: &Offer) -> Result<Slot> {
        self.recorded("install", &plan.version, || {
            let _work = self.work_lock(None)?;
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

    /// Refuses now what [`Updater::install`] would refuse of `plan` for the device as it
    /// is (a trial under way, a release below the security floor, artifacts the slot
    /// store cannot take), touching nothing. Called before a download meant for an
    /// install, it saves fetching a release only to have it refused at the end; a
    /// download alone ([`Updater::download`]) is not refused for a trial, and fetches the
    /// release for the install after the confirm.
    pub fn check_install(&self, plan: &Offer) -> Result<()> {
        self.check_installable(&self.load_state()?, plan)
    }

    /// Refuses an offer another updater made (its trust root, product or state may not be
    /// this one's), and artifacts the slot store cannot take: dir slots take no image, and
    /// image slots take exactly one image component and nothing else. Before the download,
    /// so none is fetched in vain, and again before the inactive slot is touched.
    pub(super) fn check_store_takes(&self, plan: &Offer) -> Result<()> {
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
        let names = plan.target.components.keys().map(String::as_str);
        if let (Store::Dir(_), Some((first, name))) = (&self.store, crate::fold::clash(names)) {
            return Err(Error::new(
                ErrorKind::WrongMetadata,
                format!(
                    "dir slots: expected each component of {} once, also ignoring case, found {first:?} and {name:?} (one directory where case is ignored)",
                    plan.version
                ),
            ));
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
    /// slot may change by then. On dir slots, likewise, a release their file system surely
    /// has no room for ([`check_unpacked_room`]).
    pub(super) fn check_slot_takes_size(&self, plan: &Offer) -> Result<()> {
        let (slot, _) = self.idle_slot(&mut self.load_state()?)?;
        match &self.store {
            Store::Image(images) => {
                image_sizes(plan).try_for_each(|size| images.check_size(slot, size))
            }
            Store::Dir(slots) => check_unpacked_room(slots, slot, plan, &self.downloads_dir()),
        }
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

    /// Dir slots switch by a symlink (`current`): where none can be made (vfat, exFAT),
    /// refused with `io` naming what is needed. Under the state lock, as the probe's name
    /// is a switch's.
    pub(super) fn check_links_possible(&self) -> Result<()> {
        if let (Store::Dir(slots), true) = (&self.store, self.own_link) {
            crate::fsutil::create_open_dir_all(slots.root())?;
            crate::fsutil::check_symlinks_beside(&slots.current_link())?;
        }
        Ok(())
    }

    /// Marks the slot to write `installing` and takes it out of the boot order. Returns
    /// it and what it will hold. With `marked`, a slot already `installing` for this very
    /// release keeps its record: an image's download marked it before writing to it, so
    /// a second mark would be one more state save (flash, and a power-fail window) for
    /// nothing. It is still taken out of the boot order, which the bootloader may have
    /// changed since.
    pub(super) fn begin_install(
        &self,
        plan: &Offer,
        archives: &NameMap<stage::CheckedZip>,
        marked: bool,
    ) -> Result<Staging> {
        let _lock = self.lock()?;
        let mut st = self.load_state()?;
        self.check_installable(&st, plan)?;
        // The slot (often the fallback) must not be emptied for a release no activation
        // could switch to.
        self.check_links_possible()?;
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
            // Staged while following the release's channel when the switch to it was
            // saved after its check (`update --channel`), or when the channel followed
            // changed since the check (another process's switch, during the download:
            // the device then left the channel the release came from, or the one the
            // offer was made under): that is the channel it was staged on.
            device_channel: Some(
                match st.channel == plan.channel || st.channel_switches != plan.channel_switches {
                    true => plan.channel.clone(),
                    false => plan.device_channel.clone(),
                },
            ),
            critical: plan.critical,
            components: BTreeMap::new(),
            withheld: None,
            target: Some(self.config.target.clone()),
            asked_for: plan.asked_for,
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
    pub(super) fn restored(&self, st: &State, e: Error, what: &str) -> Error {
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
        let stale = self.judged_at_install(&st, plan, st.slot(slot));
        let record = st.slot_mut(slot);
        record.withheld.clone_from(&stale);
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
        match stale {
            Some(why) => st.record(
                (self.clock)(),
                "staged_withheld",
                format!("{} in slot {slot} waits: {why}", plan.version),
            ),
            // A switch of channel saved while this release downloaded or installed is
            // judged as it would have been had it come after the install.
            None => {
                if let Some((_, why)) = check::left_on_record(&st) {
                    let channel = st.channel.clone();
                    check::mark_withheld(&mut st, slot, Some(why), &channel, (self.clock)());
                }
            }
        }
        self.save(&st)
    }

    /// Why a release installed from `plan` into `record` is withheld from the start: the
    /// newest manifest of its channel the device verified is another than the one it was
    /// offered from (a check between the download and the install), and judged as a check
    /// judges a staged release, it no longer offers it to this device or lists other
    /// bytes under its version (`select::withheld`, [`republished`]; an offer asked for
    /// whatever the rollout says is held to its bytes only). That manifest is read back
    /// from the cache, bound to its verification by the payload's hash the state recorded
    /// then; one that cannot be read back withholds the release until a check judges it.
    /// Without this, a halt a check saw between the two was lost, and bytes listed again
    /// under the version were activated.
    fn judged_at_install(&self, st: &State, plan: &Offer, record: &SlotRecord) -> Option<String> {
        let seen = st.manifests.get(&plan.channel)?;
        if seen.payload_sha256 == plan.manifest_sha256 {
            return None;
        }
        let manifest = match self.newest_manifest(&plan.channel, &seen.payload_sha256) {
            Ok(manifest) => manifest,
            Err(e) => {
                return Some(format!(
                    "its channel's newest manifest (sequence {}), verified after the offer, could not be read back to judge it: {e}",
                    seen.sequence
                ))
            }
        };
        let device_id = match self.device_id() {
            Ok(id) => id,
            Err(e) => {
                return Some(format!(
                    "it could not be judged by its channel's newest manifest: {e}"
                ))
            }
        };
        let device = self.device(st, &device_id);
        let now = manifest::effective_now((self.clock)(), st.newest_issued);
        // As a check judges it: chosen by the newest manifest's selection (a skipped
        // stepping stone to a critical fix is), only its bytes count; else whether that
        // manifest still offers it at all (a newer release beside it does not hold it).
        let chose = plan.asked_for
            || matches!(
                select::select(&manifest, &device, &self.policy(None), now),
                Ok(select::Decision::Update(c)) if c.version == plan.version
            );
        self.staged_verdict(&manifest, &device, record, chose, now)
    }

    /// The newest manifest of `channel` the device verified, read back from the cache the
    /// check wrote it to, and bound to that verification by its payload's SHA-256, which
    /// the state recorded then (`sha256`).
    fn newest_manifest(&self, channel: &str, sha256: &str) -> Result<Manifest> {
        let path = self.manifest_cache(channel);
        let bytes = crate::fsutil::read_regular(&path)?;
        let max = self.config.limits.max_metadata_bytes;
        if bytes.len() as u64 > max {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "{}: expected at most {max} bytes, found {}",
                    path.display(),
                    bytes.len()
                ),
            ));
        }
        let envelope = crate::trust::parse_envelope(&bytes)?;
        let payload = crate::trust::decode_base64(&envelope.payload).ok_or_else(|| {
            Error::new(
                ErrorKind::WrongMetadata,
                format!(
                    "{}: expected a base64 payload, found invalid base64",
                    path.display()
                ),
            )
        })?;
        let found = crate::trust::sha256_hex(&payload);
        if found != sha256 {
            return Err(Error::new(
                ErrorKind::HashMismatch,
                format!(
                    "{}: expected the manifest verified last (payload SHA-256 {sha256}), found {found}",
                    path.display()
                ),
            ));
        }
        crate::json::from_bytes::<Manifest>(&payload).map_err(|found| {
            Error::new(
                ErrorKind::WrongMetadata,
                format!(
                    "{}: expected a channel manifest, found: {found}",
                    path.display()
                ),
            )
        })
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
    pub(super) fn follow_booted(&self, st: &mut State, booted: Option<Slot>) -> bool {
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
        let owner = slots.act_as_owner();
        let staged = (|| -> Result<()> {
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
        })();
        drop(owner);
        if staged.is_err() {
            // The components staged before the one that failed must not stay: they hold
            // room on a file system that may be full, and a slot half of one release and
            // half empty is no slot (the state calls it `installing`). Best effort: what a
            // failing disk keeps, the next install's `prepare` removes.
            let _ = crate::fsutil::remove_all(&dir);
        }
        staged
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

/// The sizes of the artifacts `plan` writes (an image slot store takes one).
fn image_sizes(plan: &Offer) -> impl Iterator<Item = u64> + '_ {
    plan.components
        .iter()
        .filter_map(|c| artifact_to_install(plan, c))
        .map(|a| a.slot_bytes().0)
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

/// Refuses (`io`), before the download, a release that dir `slots` surely have no room for
/// in `slot`, from the signed manifest alone: what it unpacks to at least (each zip's
/// `installed_size`, each file's size, in whole blocks), the bytes still to download into
/// `downloads` when that is on the same file system (the install reads them there), and
/// [`crate::space::RESERVE`], against the free space and what emptying `slot` gives back.
/// Checked only at the install, the whole download came first, for nothing. The install
/// checks the exact need ([`check_slot_room`]) once the zips are read.
fn check_unpacked_room(slots: &DirSlots, slot: Slot, plan: &Offer, downloads: &Path) -> Result<()> {
    let dir = slots.slot_dir(slot);
    let Some(free) = crate::space::free(&dir) else {
        return Ok(());
    };
    let shared = crate::space::device(&dir) == crate::space::device(downloads);
    let (mut unpacked, mut fetch) = (0u64, 0u64);
    for c in &plan.components {
        let Some(a) = artifact_to_install(plan, c) else {
            continue;
        };
        let size = match a.kind {
            ArtifactKind::Zip => a.installed_size.unwrap_or(0),
            _ => a.size,
        };
        unpacked = unpacked.saturating_add(free.blocks_for(size));
    }
    // Each blob once: components of one artifact share its download.
    for (_, a) in plan.carried().filter(|_| shared) {
        let len = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len()).min(a.size);
        if len(downloads.join(&a.sha256)) < a.size {
            let kept = len(downloads.join(format!("{}.part", a.sha256)));
            fetch = fetch.saturating_add(a.size - kept);
        }
    }
    let needed = unpacked
        .saturating_add(fetch)
        .saturating_add(crate::space::RESERVE);
    if free.bytes >= needed {
        return Ok(());
    }
    let freed = crate::space::freed_by_removing(&[&dir, &slots.trash_dir(slot)]);
    if free.bytes.saturating_add(freed) >= needed {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Io,
        format!(
            "downloading {} for slot {slot}: expected room for {needed} bytes in {}, found {} bytes free and {freed} more that emptying slot {slot} would give back (the release unpacks to at least {unpacked} bytes in blocks of {}, its {fetch} bytes still to download go there too, and {} are kept free so the state can still be saved); nothing was downloaded: free space and update again",
            plan.version,
            dir.parent().unwrap_or(&dir).display(),
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
