//! Saving the state on a full file system: a spare file of the same size, swapped in.
//!
//! The state must be saved on every start of a slot on trial: that is how a release that
//! never confirms itself is rolled back. A save writes a new file and renames it over the
//! old one, which needs free blocks; when the file system is full (an app's logs filled
//! it), every save would fail and a broken release would keep running, uncounted.
//!
//! So the state file is padded with blank space to a size with room to grow, and a spare
//! file of that size, already written, is kept beside it. When a normal save fails for want
//! of space, the new state is written *into* the spare, in place, over blocks it already
//! owns, and the two files trade names in one atomic step (`renameat2` with
//! `RENAME_EXCHANGE` on Linux, `renamex_np` with `RENAME_SWAP` on macOS): the old state
//! becomes the next spare. No block is allocated or freed,
//! so this works again on the next start, for as long as the file system stays full. With
//! no state file to trade with (moved away by hand), the spare is renamed onto its name.
//!
//! In-place writes need a file system that overwrites in place (ext4, XFS, tmpfs and most
//! others); on copy-on-write ones (btrfs, UBIFS, F2FS; APFS for blocks a snapshot shares)
//! an overwrite allocates too and the save fails as before. On other systems (the BSDs),
//! and where the file system cannot swap two names (HFS+), the normal save is all there is.

use crate::error::{Error, Result};
use crate::fsutil::{self, crash_point, exchange, rename_noreplace};
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

/// The spare of `path`: `<file>.spare` beside it, on the same file system.
pub fn spare_path(path: &Path) -> PathBuf {
    fsutil::suffixed(path, ".spare")
}

/// Writes `bytes` (a text document that ignores trailing blank space, such as JSON) to
/// `path` atomically and durably, as [`fsutil::write_atomic`] does, padded to leave room
/// to grow. When the file system has no room for a new file, writes into the spare instead
/// and swaps it in. Keeps the spare as big as the file.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let padded = pad(bytes, capacity(bytes.len()));
    match fsutil::write_atomic(path, &padded) {
        Ok(()) => {
            keep_spare(path, &padded);
            Ok(())
        }
        Err(e) if fsutil::failed_for_space(&e) => match swap_in(path, bytes)? {
            true => Ok(()),
            false => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// The size a file of `len` bytes is padded to: half as much again (1 KiB at least) for the
/// document to grow, in whole 4 KiB blocks, the usual block and page size.
fn capacity(len: usize) -> usize {
    (len + (len / 2).max(1024)).div_ceil(4096) * 4096
}

/// `bytes` followed by spaces up to `len` bytes, the last a newline, so the file still ends
/// its last line. `bytes` as they are when they fill `len` or more.
fn pad(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len.max(bytes.len()));
    out.extend_from_slice(bytes);
    if len > bytes.len() {
        out.resize(len - 1, b' ');
        out.push(b'\n');
    }
    out
}

/// Makes sure a spare at least as long as `padded` exists. It is only space: no fsync
/// (a spare a power cut left short, or with holes, is not [`usable`], and made again at
/// the next save). Best effort: with no room for it, the saves go on without one.
fn keep_spare(path: &Path, padded: &[u8]) {
    let spare = spare_path(path);
    // Not followed: a symlink, even to a long enough file, is no spare `swap_in` takes.
    if fs::symlink_metadata(&spare).is_ok_and(|m| usable(&spare, &m, padded.len())) {
        return;
    }
    // The state's own temp name, free again once the save renamed it: the save's clean-up
    // of that name then covers both (a spare cut off by a kill).
    let tmp = fsutil::temp_path(path);
    let written = fsutil::create_temp(&tmp).and_then(|mut f| {
        std::io::Write::write_all(&mut f, padded).map_err(|e| Error::io("write", &tmp, e))
    });
    let renamed = written.and_then(|()| {
        fsutil::rename_within(&tmp, &spare).map_err(|e| Error::io("rename", &spare, e))
    });
    if renamed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
}

/// Whether the spare at `path`, with metadata `meta` (not followed), can take `len` bytes
/// in place: a regular file that long, with no other name, its blocks all allocated, that
/// this process may write. A second name (a hard link to `state.json` itself) would make
/// the write in place a write into the live state. A hole (a spare made by `set_len`, or
/// one a power cut left before its blocks were written) passes the length and is
/// allocated by the write in place, which then fails on the full disk it was kept for; so
/// does one this user may not write (root's state, left in this user's directory by a
/// version that did not give it to them, and swapped out). A spare that is not usable is
/// made again at the next save that has room.
fn usable(path: &Path, meta: &fs::Metadata, len: usize) -> bool {
    use std::os::unix::fs::MetadataExt;
    // `st_blocks` counts 512-byte units whatever the file system's block size. It also
    // counts metadata (an extended-attribute block on ext4), so a spare with holes can
    // pass it: the file is asked for its first hole as well. Opened only once known to be
    // a regular file: a FIFO would block the open.
    meta.is_file()
        && meta.nlink() == 1
        && meta.len() >= len as u64
        && meta.blocks().saturating_mul(512) >= meta.len()
        && fsutil::no_follow(OpenOptions::new().write(true))
            .open(path)
            .is_ok_and(|f| !has_hole(&f, meta.len()))
}

/// Whether `file` has a hole before byte `len`, as `lseek(SEEK_HOLE)` tells. A file system
/// that does not track holes reports none; one that cannot be asked counts as a hole: the
/// spare is made again.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn has_hole(file: &fs::File, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor, owned by `file` for the whole call.
    let hole = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_HOLE) };
    hole < 0 || (hole as u64) < len
}

/// No way to ask for holes here: the block count is all there is.
#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
fn has_hole(_file: &fs::File, _len: u64) -> bool {
    false
}

/// Writes `bytes` into the spare of `path`, over its own blocks, and swaps the two files.
/// `Ok(false)` when there is no spare long enough or the file system cannot swap files.
fn swap_in(path: &Path, bytes: &[u8]) -> Result<bool> {
    let spare = spare_path(path);
    let Ok(meta) = fs::symlink_metadata(&spare) else {
        return Ok(false);
    };
    let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
    // The last byte is the newline that ends the padding.
    if !usable(&spare, &meta, bytes.len() + 1) {
        return Ok(false);
    }
    overwrite(&spare, &pad(bytes, len))?;
    crash_point("exchange")?;
    if !put_in_place(&spare, path).map_err(|e| Error::io("swap in the state's spare", path, e))? {
        return Ok(false);
    }
    fsutil::sync_parent(path)?;
    Ok(true)
}

/// Gives the written `spare` the name `path`: the two files trade names, or, when there is
/// no file at `path` to trade with (an operator moved the state away), the spare takes the
/// free name, which allocates nothing either; the exchange alone fails there with
/// `ENOENT`, and the state would not be saved at all. The rename never replaces a file, so
/// it needs no look at `path` first: one put back there meanwhile (by hand, without the
/// state lock) is traded with instead. `Ok(false)` when the file system cannot swap files.
fn put_in_place(spare: &Path, path: &Path) -> std::io::Result<bool> {
    use std::io::ErrorKind::{AlreadyExists, NotFound};
    match exchange(spare, path) {
        Err(e) if e.kind() == NotFound => match rename_noreplace(spare, path) {
            Err(e) if e.kind() == AlreadyExists => exchange(spare, path),
            other => other,
        },
        other => other,
    }
}

/// Overwrites the whole of the file at `path` with `bytes`, exactly its length, and syncs
/// it: no block is allocated, so this works on a full file system.
fn overwrite(path: &Path, bytes: &[u8]) -> Result<()> {
    overwrite_within(path, bytes, crate::state::STATE_FILE_PATIENCE)
}

/// [`overwrite`], waiting at most `patience` for the readers of the spare.
fn overwrite_within(path: &Path, bytes: &[u8], patience: std::time::Duration) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    crash_point("overwrite spare")?;
    // Not through a symlink put there since `swap_in` looked.
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    // A reader that opened this file as the state before it became the spare holds a
    // read lock on it while it reads (`State::load`): not written under it, unless a
    // holder keeps it past `patience` (any local user who can read the state can take
    // one). A file system without such locks is written without them.
    let writing = crate::fsutil::Contents::Write;
    crate::fsutil::lock_contents_within(&f, writing, patience);
    f.write_all(bytes)
        .map_err(|e| Error::io("write", path, e))?;
    crash_point("fsync spare")?;
    crate::fsutil::sync_file_data(&f).map_err(|e| Error::io("fsync", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fsutil::tests::{spawn_lock, Tmpfs};

    /// Fills `tmpfs` to the last byte, as a runaway log would.
    /// Fills `tmpfs`; no process starts until the returned guard is dropped, so what the
    /// test deletes from now on is free at once (`spawn_lock`).
    fn fill(tmpfs: &Tmpfs) -> std::sync::MutexGuard<'static, ()> {
        use std::io::Write;
        let quiet = spawn_lock();
        let mut f = fs::File::create(tmpfs.path().join("filler")).unwrap();
        while f.write_all(&[b'x'; 4096]).is_ok() {}
        assert!(
            fs::write(tmpfs.path().join("probe"), [0u8; 4096]).is_err(),
            "the file system still has room"
        );
        quiet
    }

    /// An operator moved `state.json` away, and the disk is full: the spare, written in
    /// place, takes the free name. The exchange alone has nothing to trade with (`ENOENT`).
    #[test]
    fn a_full_disk_save_with_the_state_moved_away_renames_the_spare_in() {
        let Some(tmpfs) = Tmpfs::new(64) else {
            return;
        };
        let path = tmpfs.path().join("state.json");
        write(&path, b"{\"n\": 1}\n").unwrap();
        fs::remove_file(&path).unwrap();
        let _quiet = fill(&tmpfs);
        write(&path, b"{\"n\": 2}\n").unwrap();
        let saved = fs::read(&path).unwrap();
        assert!(saved.starts_with(b"{\"n\": 2}\n"), "{saved:?}");
        assert_eq!(saved.len(), 4096);
        assert!(!spare_path(&path).exists());
    }

    #[test]
    fn padding_leaves_room_in_whole_blocks_and_ends_the_line() {
        assert_eq!(capacity(10), 4096);
        assert_eq!(capacity(2000), 4096);
        assert_eq!(capacity(3000), 8192);
        assert_eq!(capacity(6000), 12288);
        let p = pad(b"{}\n", 8);
        assert_eq!(p, b"{}\n    \n");
        assert_eq!(pad(b"{}\n", 3), b"{}\n");
        assert_eq!(pad(b"{}\n", 2), b"{}\n");
    }

    #[test]
    fn a_save_keeps_a_spare_as_long_as_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, b"{\"a\": 1}\n").unwrap();
        let saved = fs::read(&path).unwrap();
        assert_eq!(saved.len(), 4096);
        assert!(saved.starts_with(b"{\"a\": 1}\n "));
        let v: serde_json::Value = serde_json::from_slice(&saved).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(fs::metadata(spare_path(&path)).unwrap().len(), 4096);
        // A document that outgrows the spare gets a longer one.
        let big = format!("{{\"a\": \"{}\"}}\n", "x".repeat(6000));
        write(&path, big.as_bytes()).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 12288);
        assert_eq!(fs::metadata(spare_path(&path)).unwrap().len(), 12288);
    }

    /// A spare that is a symlink (planted, or left by hand) is replaced by a file of its
    /// own at the next save: followed, a link to a long enough file passed for a spare,
    /// and the swap, which refuses links, never had one on a full disk.
    #[test]
    fn a_spare_that_is_a_symlink_is_replaced_by_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let elsewhere = dir.path().join("elsewhere");
        fs::write(&elsewhere, vec![b'x'; 8192]).unwrap();
        std::os::unix::fs::symlink(&elsewhere, spare_path(&path)).unwrap();
        write(&path, b"{\"n\": 1}\n").unwrap();
        let meta = fs::symlink_metadata(spare_path(&path)).unwrap();
        assert!(meta.is_file(), "the spare is still a symlink");
        assert_eq!(meta.len(), 4096);
        assert_eq!(fs::read(&elsewhere).unwrap(), vec![b'x'; 8192]);
        match swap_in(&path, b"{\"n\": 2}\n") {
            Ok(false) => {}
            other => assert!(other.unwrap()),
        }
    }

    /// A state file with its spare in `dir`, and a reader that holds a read lock on the
    /// spare, as one that opened it as the state before a swap made it the spare does
    /// (`State::load`): the spare's path, its content, and the reader.
    fn spare_under_a_reader(dir: &Path) -> (PathBuf, Vec<u8>, fs::File) {
        write(&dir.join("state.json"), b"{\"n\": 1}\n").unwrap();
        let spare = spare_path(&dir.join("state.json"));
        let before = fs::read(&spare).unwrap();
        let reader = fs::File::open(&spare).unwrap();
        let reading = fsutil::Contents::Read;
        let now = std::time::Duration::ZERO;
        assert!(fsutil::lock_contents_within(&reader, reading, now));
        (spare, before, reader)
    }

    /// Writes `{"n": 2}` into `spare` on another thread, waiting at most `patience` for its
    /// readers; its outcome comes on the returned channel.
    fn overwrite_in_background(
        spare: &Path,
        patience: std::time::Duration,
    ) -> (
        std::sync::mpsc::Receiver<Result<()>>,
        std::thread::JoinHandle<()>,
    ) {
        let (done, wait) = std::sync::mpsc::channel();
        let spare = spare.to_path_buf();
        let writer = std::thread::spawn(move || {
            let bytes = pad(b"{\"n\": 2}\n", 4096);
            let _ = done.send(overwrite_within(&spare, &bytes, patience));
        });
        (wait, writer)
    }

    /// The spare is written in place only when no reader holds it locked: one that opened
    /// it as the state before a swap made it the spare (`State::load`).
    #[test]
    fn the_spare_is_not_written_under_a_reader() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let (spare, before, reader) = spare_under_a_reader(dir.path());
        let (wait, writer) = overwrite_in_background(&spare, crate::state::STATE_FILE_PATIENCE);
        assert!(
            wait.recv_timeout(Duration::from_millis(300)).is_err(),
            "written under a reader"
        );
        assert_eq!(fs::read(&spare).unwrap(), before);
        drop(reader);
        wait.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
        assert!(fs::read(&spare).unwrap().starts_with(b"{\"n\": 2}\n"));
        writer.join().unwrap();
    }

    /// A reader that never lets go of the spare (any local user who can read the state
    /// can take a read lock) delays the write by its patience, not for ever.
    #[test]
    fn the_spare_is_written_after_its_patience_under_a_reader_that_keeps_it() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let (spare, _, reader) = spare_under_a_reader(dir.path());
        let (wait, writer) = overwrite_in_background(&spare, Duration::from_millis(200));
        let written = wait.recv_timeout(Duration::from_secs(30));
        // Let go before joining: a writer that waits for ever would hang the test, not
        // fail it.
        drop(reader);
        assert!(matches!(written, Ok(Ok(()))), "{written:?}");
        writer.join().unwrap();
        assert!(fs::read(&spare).unwrap().starts_with(b"{\"n\": 2}\n"));
    }

    /// A spare that is another name of the state file is never written in place (that
    /// would be a write into the live state): the next save gives it a file of its own.
    #[cfg(unix)]
    #[test]
    fn a_spare_that_is_a_hard_link_is_not_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, b"{\"n\": 1}\n").unwrap();
        fs::remove_file(spare_path(&path)).unwrap();
        fs::hard_link(&path, spare_path(&path)).unwrap();
        assert!(!swap_in(&path, b"{\"n\": 2}\n").unwrap());
        assert!(fs::read(&path).unwrap().starts_with(b"{\"n\": 1}\n"));
        write(&path, b"{\"n\": 3}\n").unwrap();
        let spare = fs::symlink_metadata(spare_path(&path)).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&spare), 1);
    }

    /// A spare with holes (as `set_len` makes, or a power cut leaves) is no spare: the
    /// next save gives it blocks of its own, and a save on a full disk never writes into
    /// its holes.
    #[test]
    fn a_sparse_spare_is_made_again_at_the_next_save() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let spare = spare_path(&path);
        let allocated = || {
            let meta = fs::symlink_metadata(&spare).unwrap();
            std::os::unix::fs::MetadataExt::blocks(&meta) * 512 >= meta.len()
        };
        let make_sparse = || {
            fs::remove_file(&spare).unwrap();
            fs::File::create(&spare).unwrap().set_len(4096).unwrap();
        };
        write(&path, b"{\"n\": 1}\n").unwrap();
        make_sparse();
        if allocated() {
            eprintln!("skipped: this file system makes no sparse files");
            return;
        }
        write(&path, b"{\"n\": 2}\n").unwrap();
        assert!(allocated(), "the sparse spare was kept");
        assert_eq!(fs::metadata(&spare).unwrap().len(), 4096);
        make_sparse();
        assert!(!swap_in(&path, b"{\"n\": 3}\n").unwrap());
        assert!(fs::read(&path).unwrap().starts_with(b"{\"n\": 2}\n"));
    }

    #[test]
    fn a_hole_is_found_where_the_block_count_cannot_tell() {
        let dir = tempfile::tempdir().unwrap();
        let full = dir.path().join("full");
        fs::write(&full, [b' '; 8192]).unwrap();
        assert!(!has_hole(&fs::File::open(&full).unwrap(), 8192));
        let holed = dir.path().join("holed");
        let mut f = fs::File::create(&holed).unwrap();
        std::io::Write::write_all(&mut f, &[b' '; 4096]).unwrap();
        f.set_len(8192).unwrap();
        if std::os::unix::fs::MetadataExt::blocks(&f.metadata().unwrap()) * 512 >= 8192 {
            eprintln!("skipped: this file system makes no sparse files");
            return;
        }
        assert!(has_hole(&f, 8192));
        // Holes past the length asked about do not count.
        assert!(!has_hole(&f, 4096));
    }

    /// A spare with holes whose block count covers its length anyway (an extended
    /// attribute block counted in `st_blocks`, as on ext4) is no spare. Linux's
    /// `SEEK_HOLE` and `setxattr`.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_spare_whose_block_count_hides_its_holes_is_not_usable() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let spare = dir.path().join("state.json.spare");
        fs::File::create(&spare).unwrap().set_len(4096).unwrap();
        let name = std::ffi::CString::new(spare.as_os_str().as_bytes()).unwrap();
        let value = [b'x'; 3000];
        // SAFETY: NUL-terminated strings and a buffer of the length given, for the call.
        let rc = unsafe {
            libc::setxattr(
                name.as_ptr(),
                c"user.evergreen-test".as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        let meta = fs::symlink_metadata(&spare).unwrap();
        if rc != 0 || std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 4096 {
            eprintln!("skipped: this file system keeps no attribute block in the block count");
            return;
        }
        assert!(!usable(&spare, &meta, 100), "the holes were not seen");
        fs::write(&spare, [b' '; 4096]).unwrap();
        let meta = fs::symlink_metadata(&spare).unwrap();
        assert!(usable(&spare, &meta, 100));
    }

    #[test]
    fn the_spare_never_replaces_a_state_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let (spare, path) = (dir.path().join("spare"), dir.path().join("state.json"));
        fs::write(&spare, b"new").unwrap();
        fs::write(&path, b"put back").unwrap();
        match rename_noreplace(&spare, &path) {
            Ok(false) => return,
            Ok(true) => panic!("the state put back was replaced"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists),
        }
        assert_eq!(fs::read(&path).unwrap(), b"put back");
        // Put in place trades with it instead: nothing is lost.
        assert!(put_in_place(&spare, &path).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::read(&spare).unwrap(), b"put back");
        fs::remove_file(&path).unwrap();
        assert!(put_in_place(&spare, &path).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"put back");
        assert!(!spare.exists());
    }

    #[test]
    fn swapping_in_the_spare_trades_the_two_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, b"{\"n\": 1}\n").unwrap();
        let before = fs::read(&path).unwrap();
        match swap_in(&path, b"{\"n\": 2}\n") {
            // A file system without the atomic swap (some overlay and network ones).
            Ok(false) => return,
            other => assert!(other.unwrap()),
        }
        let now = fs::read(&path).unwrap();
        assert_eq!(now.len(), 4096);
        assert!(now.starts_with(b"{\"n\": 2}\n"));
        assert_eq!(fs::read(spare_path(&path)).unwrap(), before);
        // A spare too short for the document is not used.
        let long = "y".repeat(5000);
        assert!(!swap_in(&path, long.as_bytes()).unwrap());
    }
}
