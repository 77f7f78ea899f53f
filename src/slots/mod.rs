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
pub trait BootSelector: Send {
    /// Marks `slot` unbootable before anything is written into it.
    fn disable(&mut self, slot: Slot) -> Result<()>;
    /// Makes `slot` the next to boot, on trial with `tries` attempts; the other slot stays
    /// the fallback.
    fn activate(&mut self, slot: Slot, tries: u32) -> Result<()>;
    /// The trial slot `slot` is healthy: keep booting it.
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
}
