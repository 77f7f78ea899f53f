//! Directory slots for applications: `<root>/slots/a`, `<root>/slots/b`, and the
//! `<root>/current` symlink that names the primary one.

use super::{BootSelector, Slot};
use crate::error::{Error, ErrorKind, Result};
use crate::fsutil;
use std::path::{Path, PathBuf};

/// The record each slot carries inside itself, so a slot is self-describing on disk.
pub const SLOT_RECORD: &str = ".evergreen-slot.json";

/// Two install directories under one root.
///
/// ```
/// use evergreen::slots::{dir::DirSlots, Slot};
/// let slots = DirSlots::new("/opt/gateway");
/// assert_eq!(slots.slot_dir(Slot::B), std::path::Path::new("/opt/gateway/slots/b"));
/// assert_eq!(slots.component_dir(Slot::A, "app"), std::path::Path::new("/opt/gateway/slots/a/app"));
/// ```
#[derive(Debug, Clone)]
pub struct DirSlots {
    root: PathBuf,
}

impl DirSlots {
    /// Slots under `root`.
    pub fn new(root: impl Into<PathBuf>) -> DirSlots {
        DirSlots { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/slots/<slot>`.
    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.root.join("slots").join(slot.as_str())
    }

    /// `<root>/slots/<slot>/<component>`.
    pub fn component_dir(&self, slot: Slot, component: &str) -> PathBuf {
        self.slot_dir(slot).join(component)
    }

    /// `<root>/current`, the symlink to the primary slot.
    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    /// `<root>/slots/.trash-<slot>`, where [`DirSlots::prepare`] moves the old tree of
    /// `slot` before it removes it (a crash may leave it there).
    pub(crate) fn trash_dir(&self, slot: Slot) -> PathBuf {
        self.root.join("slots").join(format!(".trash-{slot}"))
    }

    /// Empties `slot` for a fresh install: the old tree is renamed aside first, so a crash
    /// never leaves a half-deleted slot that looks complete, then removed. The new
    /// directory is private (0700) while staging.
    pub fn prepare(&self, slot: Slot) -> Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.slot_dir(slot);
        let slots = self.root.join("slots");
        fsutil::create_open_dir_all(&slots)?;
        let trash = self.trash_dir(slot);
        fsutil::remove_all(&trash)?;
        // Whatever is there, a symlink included (`exists` follows one, and a dangling
        // link then failed every install with "File exists").
        if std::fs::symlink_metadata(&dir).is_ok() {
            fsutil::crash_point("move slot aside")?;
            std::fs::rename(&dir, &trash).map_err(|e| Error::io("move aside", &dir, e))?;
            fsutil::remove_all(&trash)?;
        }
        fsutil::crash_point("create slot")?;
        // Removed above with this process's rights (root's may clear what an older
        // version left as root's); made as the slot root's owner, as is all it holds.
        let _owner = self.act_as_owner();
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io("create slot directory", &dir, e))?;
        fsutil::sync_dir(&slots)?;
        Ok(dir)
    }

    /// Makes this thread, and the threads it starts, write as the slot root's owner while
    /// the guard lives, when this process is root and the root is another user's
    /// (`fsutil::act_as_owner_of`): everything in a slot root is its owner's.
    pub(crate) fn act_as_owner(&self) -> fsutil::ActAsOwner {
        fsutil::act_as_owner_of(&self.root)
    }

    /// Seals a staged slot: writes its record, opens it to 0755 and makes the directory
    /// entries durable. The caller has already made the files durable.
    pub fn seal(&self, slot: Slot, record_json: &[u8]) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.slot_dir(slot);
        fsutil::write_atomic(&dir.join(SLOT_RECORD), record_json)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io("set permissions of", &dir, e))?;
        fsutil::sync_dir(&dir)
    }
}

/// The boot selector of directory slots: `<root>/current` → `slots/<primary>`.
///
/// The symlink holds no trial counter: the updater's state counts tries for it, and the
/// startup step re-points the link at the state's primary slot (which repairs a crash
/// between committing the state and switching the link).
#[derive(Debug, Clone)]
pub struct SymlinkSelector {
    slots: DirSlots,
}

impl SymlinkSelector {
    /// The selector for `slots`.
    pub fn new(slots: DirSlots) -> SymlinkSelector {
        SymlinkSelector { slots }
    }

    /// Points `current` at `slot`, first removing the temporary links that switches cut
    /// short left beside it (`.current.new-<pid>`, of any process).
    ///
    /// The caller must hold the updater's state lock, as [`crate::Updater`] does for every
    /// selector call that switches: only then is no other process between creating its
    /// temporary link and renaming it over `current`, so every such link is a leftover.
    pub fn point_at(&self, slot: Slot) -> Result<()> {
        let target = Path::new("slots").join(slot.as_str());
        fsutil::create_open_dir_all(self.slots.root())?;
        let _owner = self.slots.act_as_owner();
        self.remove_cut_short_switches();
        fsutil::replace_symlink(&target, &self.slots.current_link()).map_err(|e| {
            Error::new(
                ErrorKind::Bootloader,
                format!(
                    "switching {} to slot {slot}: {}",
                    self.slots.current_link().display(),
                    e.message()
                ),
            )
        })
    }

    /// Best effort: a leftover costs one directory entry, never the switch itself. Only
    /// symlinks named as `fsutil::replace_symlink` names its temporary link are removed,
    /// so a file of the host's that merely looks alike stays.
    fn remove_cut_short_switches(&self) {
        let link = self.slots.current_link();
        let Some(name) = link.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        let prefix = format!(".{name}.new-");
        let Ok(entries) = std::fs::read_dir(self.slots.root()) else {
            return;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let is_leftover = file_name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
            if is_leftover && entry.file_type().is_ok_and(|t| t.is_symlink()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

impl BootSelector for SymlinkSelector {
    fn disable(&mut self, _slot: Slot) -> Result<()> {
        // `current` only ever names the primary slot, never the one being written.
        Ok(())
    }

    fn activate(&mut self, slot: Slot, _tries: u32) -> Result<()> {
        self.point_at(slot)
    }

    fn confirm(&mut self, _slot: Slot) -> Result<()> {
        Ok(())
    }

    fn fall_back(&mut self, good: Slot, _bad: Slot) -> Result<()> {
        self.point_at(good)
    }

    fn booted(&self) -> Result<Option<Slot>> {
        let link = self.slots.current_link();
        match std::fs::read_link(&link) {
            Ok(target) => Ok(target
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(Slot::parse)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            // Not a symlink (`EINVAL`): most likely an app installed there before
            // Evergreen, which must move into slot a first.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                let found = match std::fs::symlink_metadata(&link) {
                    Ok(m) => fsutil::file_type_name(m.file_type()),
                    Err(_) => "no symlink",
                };
                Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "{}: expected a symlink to slots/a or slots/b, found {found} (an app installed there before Evergreen moves into slots/a first: docs/operators.md, \"Adopting a device that runs the app already\")",
                        link.display()
                    ),
                ))
            }
            Err(e) => Err(Error::io("read symlink", &link, e)),
        }
    }

    fn counts_tries(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link planted where the slot goes is moved aside and removed, never followed,
    /// dangling or not: its target stays as it was.
    #[test]
    fn prepare_replaces_a_symlink_at_the_slot_dangling_or_not() {
        let root = tempfile::tempdir().unwrap();
        let slots = DirSlots::new(root.path());
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("keep"), b"k").unwrap();
        std::fs::create_dir_all(root.path().join("slots")).unwrap();
        for target in [root.path().join("missing"), elsewhere.clone()] {
            let _ = std::fs::remove_dir_all(slots.slot_dir(Slot::A));
            let _ = std::fs::remove_file(slots.slot_dir(Slot::A));
            std::os::unix::fs::symlink(&target, slots.slot_dir(Slot::A)).unwrap();
            let dir = slots.prepare(Slot::A).unwrap();
            let meta = std::fs::symlink_metadata(&dir).unwrap();
            assert!(meta.is_dir(), "{}", target.display());
            assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        }
        assert_eq!(std::fs::read(elsewhere.join("keep")).unwrap(), b"k");
    }

    #[test]
    fn prepare_empties_and_seal_opens() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let slots = DirSlots::new(root.path());
        let dir = slots.prepare(Slot::B).unwrap();
        std::fs::write(dir.join("old"), b"x").unwrap();
        let dir = slots.prepare(Slot::B).unwrap();
        assert!(!dir.join("old").exists());
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        slots.seal(Slot::B, b"{}").unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(dir.join(SLOT_RECORD).exists());
    }

    #[test]
    fn symlink_follows_activate_and_fall_back() {
        let root = tempfile::tempdir().unwrap();
        let mut sel = SymlinkSelector::new(DirSlots::new(root.path()));
        assert_eq!(sel.booted().unwrap(), None);
        sel.activate(Slot::B, 3).unwrap();
        assert_eq!(sel.booted().unwrap(), Some(Slot::B));
        sel.fall_back(Slot::A, Slot::B).unwrap();
        assert_eq!(sel.booted().unwrap(), Some(Slot::A));
        assert!(!sel.counts_tries());
    }

    #[test]
    fn a_switch_removes_only_the_temporary_links_of_switches_cut_short() {
        use std::os::unix::fs::symlink;
        let root = tempfile::tempdir().unwrap();
        let mut sel = SymlinkSelector::new(DirSlots::new(root.path()));
        let at = |name: &str| root.path().join(name);
        symlink("slots/b", at(".current.new-99999")).unwrap();
        symlink("slots/b", at(".current.new-x1")).unwrap();
        std::fs::write(at(".current.new-12"), b"the host's").unwrap();
        sel.activate(Slot::A, 3).unwrap();
        assert_eq!(sel.booted().unwrap(), Some(Slot::A));
        assert!(std::fs::symlink_metadata(at(".current.new-99999")).is_err());
        assert!(std::fs::symlink_metadata(at(".current.new-x1")).is_ok());
        assert!(at(".current.new-12").is_file());
    }
}
