//! The plan and the download (DESIGN §5.4): the component diff against the running
//! slot, and the blobs fetched into the downloads directory (or an image streamed into
//! its slot).

use super::*;

impl Updater {
    /// The diff of `offer` against the primary slot as it is now (DESIGN §5.5): the state
    /// may have moved since the check.
    pub fn plan(&self, offer: &Offer) -> Result<Offer> {
        let st = self.load_state()?;
        let mut plan = offer.clone();
        plan.components = self.diff_against_primary(&st, &offer.target);
        plan.downloaded = self.already_downloaded(&st, &plan);
        Ok(plan)
    }

    /// The SHA-256s of the artifacts `plan`'s components carry that are downloaded
    /// already, whole: a download fetches none of them again. On image slots, which keep
    /// no download: all of them when `plan`'s release is staged in `st`, and an image its
    /// record says was streamed whole into the slot an install takes, still `installing`
    /// (`update --download-only`): the download fetches none of those.
    pub(super) fn already_downloaded(&self, st: &State, plan: &Offer) -> Vec<String> {
        if !self.store.keeps_downloads() {
            let slot = st.fallback();
            let streamed = Streamed::read(&self.stream_record())
                .filter(|_| st.slot(slot).status == SlotStatus::Installing);
            let whole = |a: &Artifact| {
                let key = Streamed::key(&a.sha256, a.compression.is_some());
                streamed
                    .as_ref()
                    .is_some_and(|r| r.bytes_of(&key, slot) == a.size)
            };
            let staged = staged(st, plan).is_some();
            return (plan.carried().filter(|(_, a)| staged || whole(a)))
                .map(|(_, a)| a.sha256.clone())
                .collect();
        }
        let dir = self.downloads_dir();
        let whole = |a: &Artifact| {
            std::fs::metadata(dir.join(&a.sha256)).is_ok_and(|m| m.is_file() && m.len() == a.size)
        };
        (plan.components.iter().filter_map(|c| c.artifact.as_ref()))
            .filter(|a| whole(a))
            .map(|a| a.sha256.clone())
            .collect()
    }

    /// The component diff of `target` against what the primary slot of `st` holds. On dir
    /// slots an unchanged component is installed from the download kept since it was
    /// installed, never copied from the slot the app can write; one whose download is not
    /// kept (installed before downloads were kept, removed by hand) is downloaded again.
    pub(super) fn diff_against_primary(
        &self,
        st: &State,
        target: &TargetRelease,
    ) -> Vec<ComponentChange> {
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

    pub(super) fn downloads_dir(&self) -> PathBuf {
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
    pub(super) fn save_pruned(&self, st: &mut State, slot: Slot) -> Result<()> {
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
        // Those of another release are of one passed over, and go at the next
        // confirmation: kept while it stayed newer than the release confirmed, those of
        // one left on a riskier channel stayed for good, one more set per such release.
        // A repair (the installed version again) passes over none: they stay for it.
        let same = |v: Option<&Version>| v.is_some_and(|v| v.cmp_precedence(version).is_eq());
        let repair = is_repair(&st, version) && st.pending_for.is_some();
        if !same(st.pending_for.as_ref()) && !repair {
            st.pending_downloads.clear();
            st.pending_for = Some(version.clone());
        }
        for sha in wanted {
            if !st.pending_downloads.contains(sha) {
                st.pending_downloads.push(sha.clone());
            }
        }
        if (st.pending_downloads.len(), st.pending_for.clone()) == before {
            return Ok(());
        }
        self.save(&st)
    }

    /// Downloads and verifies the artifacts the plan carries (added and modified
    /// components, and unchanged ones with no kept download). `progress(done, total)`
    /// covers all of them, and ends at `(total, total)`; `done` goes back only when
    /// received bytes are thrown away (a blob that failed its hash and is fetched again, a
    /// kept part the server would not resume); `cancel` stops between chunks
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
        self.recorded("download", &plan.version, || {
            self.check_store_takes(plan)?;
            self.check_slot_takes_size(plan)?;
            // One writer per `.part`: a second process waits instead of interleaving. The
            // other may hold the lock for its whole download, so a cancel ends the wait.
            let _work = self.work_lock(Some(cancel))?;
            if let Store::Image(images) = &self.store {
                return self.stream_image(images, plan, progress, cancel);
            }
            // Found before a byte is fetched, not at the install after a whole download.
            self.lock().and_then(|_lock| self.check_links_possible())?;
            let dir = self.downloads_dir();
            crate::fsutil::create_dir_all(&dir)?;
            // A repair (the installed version again) passes over no release: the partials
            // of the one pending stay for it, as its finished downloads do.
            let st = self.load_state()?;
            let keep = match is_repair(&st, &plan.version) {
                true => &st.pending_downloads[..],
                false => &[],
            };
            remove_other_partials(&dir, plan, keep);
            // Recorded before the first blob finishes: a confirmation, which may run during
            // the download (it takes no work lock), or after this process died, keeps every
            // blob that finished. An entry whose blob never came is harmless: the blob is
            // fetched again, and a confirmation forgets entries it no longer needs.
            let specs: Vec<BlobSpec> = plan.carried().map(|(_, a)| spec_of(a)).collect();
            // All of the release's blobs at once: one at a time, the first would be
            // fetched whole before the next was found to have no room.
            self.fetcher.check_room(&specs, &dir)?;
            let wanted: Vec<String> = specs.into_iter().map(|s| s.sha256).collect();
            self.note_pending(&wanted, &plan.version)?;
            self.fetch_all(plan, progress, cancel, &mut |spec, p| {
                self.fetcher.download(spec, &dir, p, cancel).map(drop)
            })
        })
    }

    /// Where a download streaming an image into a slot records how much of it is durable
    /// there ([`crate::slots::image::Streamed`]).
    pub(super) fn stream_record(&self) -> PathBuf {
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
        // Under the work lock, which every writer of the record holds: a temp file of it
        // is a cut-off download's, and would otherwise stay, one per power cut.
        crate::fsutil::remove_stale_temps(&self.stream_record());
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
        self.identify(plan.current.as_ref());
        let total = plan.download_size();
        let mut before = 0u64;
        let mut reported = 0u64;
        // Each blob once: components of one artifact share its download.
        for (c, a) in plan.carried() {
            let spec = spec_of(a);
            let mut last_event = 0u64;
            // The total counts no blob downloaded already when the plan was made: one
            // removed since is fetched again, its bytes not counted, or the progress would
            // reach the total early and go back at the next blob.
            let counted = !plan.was_downloaded(&a.sha256);
            fetch(&spec, &mut |done, _| {
                if counted {
                    reported = before.saturating_add(done).min(total);
                }
                progress(reported, total);
                // Events are for humans and logs: one per MiB is plenty. A blob fetched
                // again from its start (its bytes failed their hash) says so again.
                if done < last_event {
                    last_event = 0;
                }
                if done == a.size || done >= last_event.saturating_add(1 << 20) {
                    last_event = done;
                    self.emit(Event::Downloading {
                        component: c.name.clone(),
                        done,
                        total: a.size,
                    });
                }
            })?;
            if counted {
                before = before.saturating_add(a.size);
            }
            // A cancel from the last progress call of a blob (the only one a small blob
            // gets) stops the call too; the blob stays for the next one.
            cancel.check()?;
        }
        // Blobs already downloaded get no call: the host's progress must still reach its
        // total, also a total of 0 (and a cancel from that call is a cancel too).
        if reported < total || total == 0 {
            progress(total, total);
            cancel.check()?;
        }
        Ok(())
    }
}

/// Whether a download of `version` is a repair (the installed version again), which passes
/// over no release: the downloads pending for the next one stay for it.
fn is_repair(st: &State, version: &Version) -> bool {
    (st.installed_version()).is_some_and(|v| v.cmp_precedence(version).is_eq())
}

/// Removes the partial downloads (`<sha256>.part`) of blobs `plan` does not need, but for
/// those of `keep`: those of a release passed over before it finished downloading would
/// otherwise stay for good, one per release, until the state's partition is full. Under
/// the work lock, so no download is writing one. Best effort: a leftover costs only space.
fn remove_other_partials(dir: &Path, plan: &Offer, keep: &[String]) {
    let needed = |sha: &str| {
        keep.iter().any(|k| k == sha)
            || plan
                .components
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

/// What the fetcher needs to download `a`.
fn spec_of(a: &Artifact) -> BlobSpec {
    BlobSpec {
        sha256: a.sha256.clone(),
        size: a.size,
        url: a.url.clone(),
    }
}
