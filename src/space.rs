//! Free space, checked before a download or an install writes (DESIGN §5.4–5.5).
//!
//! A download or an extraction that runs out of room fails cleanly (the `.part` is
//! removed, the slot is left empty), but only once the file system is full, and meanwhile
//! everything else on it (the app's logs, a database, the state's own saves on a
//! copy-on-write file system, where the spare file cannot help) finds no room either. So
//! the bytes a download or an install is about to write are compared first with what
//! `statvfs` says a process without privileges may still allocate (`f_bavail × f_frsize`:
//! the blocks a file system keeps for root, 5 % on ext4, stay for root's services), less
//! [`RESERVE`], and a shortfall is refused before the first byte.
//!
//! A file system that reports no size at all (`f_blocks` 0: procfs, some FUSE and network
//! file systems) is never refused: the numbers mean nothing there. Nor is one `statvfs`
//! cannot be asked about: the write then finds out, as it did before these checks.

use std::path::Path;

/// The bytes every check leaves free on top of what it is about to write: 1 MiB. It is
/// room for the state file to be saved a few times over (a save writes a new copy, padded
/// to a few tens of KiB at most with its bounded history, before the rename), a slot's
/// record, and the file system's own blocks for the new files (extent and indirect
/// blocks), none of which the checked sizes count. (Directories are counted from their
/// entries: one of many files takes megabytes.)
pub(crate) const RESERVE: u64 = 1 << 20;

/// What `statvfs` says of a file system that reports its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Free {
    /// Bytes a process without privileges may still allocate (`f_bavail × f_frsize`).
    pub bytes: u64,
    /// The unit of allocation (`f_frsize`, or `f_bsize` where that is 0), never 0.
    pub block: u64,
}

impl Free {
    /// Judges `statvfs`'s counts: `None` when the file system reports no size (`blocks`
    /// 0) or no block size, where a check would refuse everything for nothing.
    pub(crate) fn from_counts(
        blocks: u64,
        available: u64,
        frsize: u64,
        bsize: u64,
    ) -> Option<Free> {
        let block = if frsize > 0 { frsize } else { bsize };
        if blocks == 0 || block == 0 {
            return None;
        }
        Some(Free {
            bytes: available.saturating_mul(block),
            block,
        })
    }

    /// `bytes` rounded up to whole blocks: what a file of that length takes.
    pub(crate) fn blocks_for(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.block).saturating_mul(self.block)
    }
}

/// The free space of the file system that holds `path`, or of the one that will hold it
/// (its nearest existing ancestor's) when it does not exist yet. `None` when the file
/// system reports no size or cannot be asked ([`Free::from_counts`]).
pub(crate) fn free(path: &Path) -> Option<Free> {
    let mut at = path;
    loop {
        match statvfs(at) {
            Ok(free) => return free,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => at = at.parent()?,
            Err(_) => return None,
        }
    }
}

/// The device number of the file system that holds `path`, or will hold it (its nearest
/// existing ancestor's); `None` when none can be read.
pub(crate) fn device(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut at = path;
    loop {
        match std::fs::metadata(at) {
            Ok(m) => return Some(m.dev()),
            Err(_) => at = at.parent()?,
        }
    }
}

#[allow(clippy::unnecessary_cast)] // The field types differ between systems.
fn statvfs(path: &Path) -> std::io::Result<Option<Free>> {
    // glibc's `statvfs` on a 32-bit target fails (`EOVERFLOW`) when a count does not fit
    // in 32 bits (a disk of more than 2^32 blocks, more than 2^32 inodes, a share whose
    // server says so): the file system would go unjudged. `statvfs64` reads them whole.
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    use libc::statvfs as sys_statvfs;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    use libc::statvfs64 as sys_statvfs;
    use std::os::unix::ffi::OsStrExt;
    // An empty relative path (a parent of `downloads`) is the working directory.
    let path = match path.as_os_str().is_empty() {
        true => Path::new("."),
        false => path,
    };
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `statvfs` only writes the struct it is given; all zeros is a valid value.
    let mut st: sys_statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct that outlive the call.
    if unsafe { sys_statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Free::from_counts(
        st.f_blocks as u64,
        st.f_bavail as u64,
        st.f_frsize as u64,
        st.f_bsize as u64,
    ))
}

/// The bytes removing the trees (or files) at `paths` gives back to the file system
/// `paths[0]`'s parent is on: the blocks of every directory, and of every other entry that
/// has no other name (a file with a second hard link keeps its blocks). Entries on another
/// file system (a mount inside) are not counted. Best effort: what cannot be read counts 0.
pub(crate) fn freed_by_removing(paths: &[&Path]) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Some(dev) = paths
        .first()
        .and_then(|p| p.parent())
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.dev())
    else {
        return 0;
    };
    let mut freed = 0u64;
    let mut pending: Vec<std::path::PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
    while let Some(p) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.nlink() > 1 {
            continue;
        }
        // `st_blocks` counts 512-byte units whatever the file system's block size.
        freed = freed.saturating_add(meta.blocks().saturating_mul(512));
    }
    freed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_system_reporting_no_size_is_never_judged() {
        // FUSE and network file systems that fill in nothing, and procfs.
        assert_eq!(Free::from_counts(0, 0, 4096, 4096), None);
        assert_eq!(Free::from_counts(0, 0, 0, 0), None);
        assert_eq!(Free::from_counts(100, 10, 0, 0), None);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert_eq!(free(Path::new("/proc/self")), None);
    }

    #[test]
    fn free_space_is_what_an_unprivileged_process_may_allocate() {
        let free = Free::from_counts(1000, 10, 4096, 65536).unwrap();
        assert_eq!(
            free,
            Free {
                bytes: 40960,
                block: 4096
            }
        );
        // Without a fragment size, the block size.
        assert_eq!(Free::from_counts(1000, 10, 0, 512).unwrap().bytes, 5120);
        assert_eq!(free.blocks_for(0), 0);
        assert_eq!(free.blocks_for(1), 4096);
        assert_eq!(free.blocks_for(4096), 4096);
        assert_eq!(free.blocks_for(4097), 8192);
    }

    #[test]
    fn a_path_not_made_yet_is_judged_by_its_nearest_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let here = free(dir.path()).map(|f| f.block);
        assert_eq!(free(&dir.path().join("slots/b/app")).map(|f| f.block), here);
    }

    #[test]
    fn removing_a_tree_frees_its_blocks_but_not_those_of_files_named_elsewhere_too() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("b");
        std::fs::create_dir_all(slot.join("app")).unwrap();
        std::fs::write(slot.join("app/data"), vec![7u8; 256 << 10]).unwrap();
        let alone = freed_by_removing(&[&slot, &dir.path().join(".trash-b")]);
        assert!(alone >= 256 << 10, "{alone}");
        std::fs::hard_link(slot.join("app/data"), dir.path().join("kept")).unwrap();
        let linked = freed_by_removing(&[&slot]);
        assert!(linked < 256 << 10, "{linked}");
    }
}
