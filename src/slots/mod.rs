//! Slot stores and boot selectors (DESIGN §6).
//!
//! A *slot store* holds the two install locations; a *boot selector* decides which one
//! starts next. Apps use directory slots with a `current` symlink; firmware uses image
//! slots with the GRUB or U-Boot environment.

pub mod cmdline;
pub mod dir;
pub mod grub;
pub mod image;
pub mod uboot;

use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One of the two install locations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Slot `a`.
    A,
    /// Slot `b`.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `"a"` or `"b"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// `"A"` or `"B"`, as bootloader environments name them.
    pub fn upper(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    /// Parses `a`/`b` in either case.
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What picks the slot at start: a symlink, a bootloader environment, or the host.
///
/// The updater commits its own state first and then tells the selector, so a crash between
/// the two leaves the previous slot booting.
///
/// The updater holds its selector's lock while a method runs: a method that calls the
/// updater back gets `invalid_state`.
pub trait BootSelector: Send {
    /// Marks `slot` unbootable before anything is written into it. Called again for a
    /// slot already out of the boot order (an image's install after its download, and,
    /// with a selector that counts tries, every startup step while the other slot holds
    /// nothing to boot, and right after [`fall_back`](Self::fall_back) from a release: the
    /// bootloader may have put it back, or may when it resets its counters), so a call
    /// that changes nothing should write nothing, as the built-in selectors do. The calls
    /// at the startup step and after a fall back do not fail what they follow when they
    /// fail: they are recorded in the history (when the state can be saved), and the
    /// next start tries again.
    fn disable(&mut self, slot: Slot) -> Result<()>;
    /// Makes `slot` the next to boot, on trial with `tries` attempts; the other slot stays
    /// the fallback.
    fn activate(&mut self, slot: Slot, tries: u32) -> Result<()>;
    /// The trial slot `slot` is healthy: keep booting it. Called again for a slot already
    /// confirmed (the running slot is, before the other is taken out of the boot order),
    /// so a call that changes nothing should write nothing.
    fn confirm(&mut self, slot: Slot) -> Result<()>;
    /// Boot `good` from now on and never `bad` again (rollback).
    fn fall_back(&mut self, good: Slot, bad: Slot) -> Result<()>;
    /// The slot that is running now, when the selector can tell.
    fn booted(&self) -> Result<Option<Slot>>;
    /// True when the bootloader counts trial attempts itself (GRUB, U-Boot); then the
    /// startup step only reads what the bootloader did.
    fn counts_tries(&self) -> bool;
    /// How many trial starts this selector really gives when `requested` are configured
    /// (GRUB's RAUC variables express exactly one).
    fn trial_tries(&self, requested: u32) -> u32 {
        requested
    }
    /// What the bootloader will do at the next boot, when the selector can tell (GRUB,
    /// U-Boot). The startup step needs it to tell a trial the bootloader gave up on from
    /// one it was never told about or has not reached yet.
    fn boot_plan(&self) -> Result<Option<BootPlan>> {
        Ok(None)
    }
}

/// A bootloader environment's view of the next boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootPlan {
    /// The slot the environment was last told to prefer: the first of its boot order.
    pub preferred: Slot,
    /// The slot the bootloader starts next; `None` means its rescue path.
    pub next: Option<Slot>,
    /// The bootloader has spent the preferred slot's attempts: GRUB's `X_TRY` is set,
    /// U-Boot's `BOOT_X_LEFT` is 0. A slot that is preferred but not bootable without
    /// that (`X_OK=0` after a write cut short) was never started.
    pub preferred_spent: bool,
    /// Starts the bootloader still gives the preferred slot before it falls back: GRUB's
    /// one attempt until `X_TRY` is set, U-Boot's `BOOT_X_LEFT`. A trial's `tries_left` is
    /// this count once the bootloader knows of the trial, not what the state recorded at
    /// activation.
    pub preferred_left: u32,
}

#[cfg(test)]
impl BootPlan {
    /// A plan from a table row's `(preferred, next, preferred_spent, preferred_left)`.
    pub(crate) fn of(
        (preferred, next, preferred_spent, preferred_left): (Slot, Option<Slot>, bool, u32),
    ) -> BootPlan {
        BootPlan {
            preferred,
            next,
            preferred_spent,
            preferred_left,
        }
    }
}

/// A bootloader environment (GRUB, U-Boot) that applies RAUC-style boot changes and learns
/// the running slot from the kernel command line; it is a [`BootSelector`] by that alone.
pub trait EnvSelector: Send {
    /// Writes one change to the environment, power-fail safely.
    fn apply_change(&mut self, change: grub::BootChange) -> Result<()>;
    /// Where the running slot is read from.
    fn booted_from(&self) -> &cmdline::BootedFrom;
    /// Trial starts the bootloader gives when `requested` are configured.
    fn trial_tries(&self, requested: u32) -> u32 {
        requested
    }
    /// What the bootloader will do at the next boot, read from the environment.
    fn boot_plan(&self) -> Result<BootPlan>;
}

impl<T: EnvSelector> BootSelector for T {
    fn disable(&mut self, slot: Slot) -> Result<()> {
        self.apply_change(grub::BootChange::Disable(slot))
    }

    /// GRUB gives one attempt whatever `tries` is; U-Boot counts `tries`.
    fn activate(&mut self, slot: Slot, tries: u32) -> Result<()> {
        self.apply_change(grub::BootChange::Activate { slot, tries })
    }

    fn confirm(&mut self, slot: Slot) -> Result<()> {
        self.apply_change(grub::BootChange::Confirm(slot))
    }

    fn fall_back(&mut self, good: Slot, bad: Slot) -> Result<()> {
        self.apply_change(grub::BootChange::FallBack { good, bad })
    }

    fn booted(&self) -> Result<Option<Slot>> {
        self.booted_from().read()
    }

    fn counts_tries(&self) -> bool {
        true
    }

    fn trial_tries(&self, requested: u32) -> u32 {
        EnvSelector::trial_tries(self, requested)
    }

    fn boot_plan(&self) -> Result<Option<BootPlan>> {
        EnvSelector::boot_plan(self).map(Some)
    }
}

/// The root of the kernel's sysfs, where image slots learn which devices are built on a
/// slot and which files loop devices serve, and where an eMMC boot partition holding the
/// U-Boot environment is unlocked for writing.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) const SYSFS: &str = "/sys";

/// `a` and `b` reach the same storage: one file (device and inode: a symlink, a hard link)
/// or one block device (its device number: two nodes, a `/dev/disk/by-…` alias).
pub(crate) fn same_storage(a: &std::path::Path, b: &std::path::Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    same_storage_meta(&ma, &mb)
}

/// [`same_storage`] of two files already inspected (an open slot is compared by what it
/// opened, not by a path that may since name something else).
pub(crate) fn same_storage_meta(ma: &std::fs::Metadata, mb: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let both_devices = ma.file_type().is_block_device() && mb.file_type().is_block_device();
    (ma.dev() == mb.dev() && ma.ino() == mb.ino()) || (both_devices && ma.rdev() == mb.rdev())
}
