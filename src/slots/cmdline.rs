//! Which slot is running, read from the kernel command line.
//!
//! Bootloader scripts pass the slot they picked to the kernel (RAUC's convention is
//! `rauc.slot=A`); that is the only reliable answer to "what is running now", because the
//! environment already describes the *next* boot.

use super::Slot;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The slot named by `key=<slot>` on the kernel command line in `path`.
///
/// `Ok(None)` when the key is absent or names something other than `A`/`B` (RAUC's rescue
/// slot `R`, for instance). When the key appears more than once the last one counts, as it
/// does for the kernel's own parameters.
///
/// ```
/// # fn main() -> evergreen::Result<()> {
/// use evergreen::slots::{cmdline::booted_from_cmdline, Slot};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("cmdline");
/// std::fs::write(&path, "console=ttyS0 root=/dev/sda3 rauc.slot=B quiet\n").unwrap();
/// assert_eq!(booted_from_cmdline(&path, "rauc.slot")?, Some(Slot::B));
/// assert_eq!(booted_from_cmdline(&path, "other.key")?, None);
/// # Ok(()) }
/// ```
pub fn booted_from_cmdline(path: &Path, key: &str) -> Result<Option<Slot>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    Ok(text
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
        .rfind(|(k, _)| *k == key)
        .and_then(|(_, v)| Slot::parse(v)))
}

/// Where a bootloader selector looks up the running slot: a command-line file and a key.
///
/// The default is RAUC's convention, `/proc/cmdline` with `rauc.slot`. In the config it is
/// `"booted_from": {"cmdline": PATH, "key": "rauc.slot"}`, each field optional.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootedFrom {
    /// The file holding the kernel command line, normally `/proc/cmdline`.
    pub cmdline: PathBuf,
    /// The parameter naming the slot, normally `rauc.slot`.
    pub key: String,
}

impl Default for BootedFrom {
    fn default() -> Self {
        BootedFrom {
            cmdline: PathBuf::from("/proc/cmdline"),
            key: "rauc.slot".to_string(),
        }
    }
}

impl BootedFrom {
    /// Reads the running slot (see [`booted_from_cmdline`]).
    pub fn read(&self) -> Result<Option<Slot>> {
        booted_from_cmdline(&self.cmdline, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn cmdline(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cmdline");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn last_occurrence_wins_and_case_is_ignored() {
        let (_d, p) = cmdline("rauc.slot=a x=1 rauc.slot=b\n");
        assert_eq!(booted_from_cmdline(&p, "rauc.slot").unwrap(), Some(Slot::B));
    }

    #[test]
    fn rescue_slot_and_prefix_keys_are_not_a_or_b() {
        let (_d, p) = cmdline("rauc.slot=R myrauc.slot=A\n");
        assert_eq!(booted_from_cmdline(&p, "rauc.slot").unwrap(), None);
    }

    #[test]
    fn missing_file_is_io() {
        let dir = tempfile::tempdir().unwrap();
        let err = booted_from_cmdline(&dir.path().join("nope"), "rauc.slot").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
    }
}
