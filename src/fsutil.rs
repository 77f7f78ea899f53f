//! Durable file-system steps shared by the state, the slots and the repository writer.
//!
//! Every write that must survive a crash goes through here: temp file → fsync → rename →
//! fsync of the directory. With the `fault-injection` feature each step is also a numbered
//! crash point, so the crash tests can stop the process at every one of them.

use crate::error::{Error, Result};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// `<file>.tmp-<pid>` next to `path`: same directory, so the rename never crosses a file
/// system, and per process, so two processes never share a temp file. Threads of one
/// process do: every writer of one file holds that file's lock (the state lock, the work
/// lock, the repository lock).
pub fn temp_path(path: &Path) -> PathBuf {
    suffixed(path, &format!(".tmp-{}", std::process::id()))
}

/// `path` with `suffix` after its file name.
pub fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Removes the temp files of `path` ([`temp_path`]) that writes cut off by a power cut or a
/// kill left behind. Only for a file whose writers all hold one lock, held now; best
/// effort. Only `<file>.tmp-<digits>`: a name that merely starts so may be another file
/// (the manifest copy of a channel named `stable.json.tmp-1` beside `stable.json`'s).
pub fn remove_stale_temps(path: &Path) {
    let prefix = suffixed(path, ".tmp-");
    let (Some(dir), Some(prefix)) = (path.parent(), prefix.file_name()) else {
        return;
    };
    let prefix = prefix.as_encoded_bytes();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let pid = name.as_encoded_bytes().strip_prefix(prefix);
            if pid.is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit)) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Whether `name` is that of a temp file ([`temp_path`]): `<file>.tmp-<pid>`.
pub fn is_temp_name(name: &OsStr) -> bool {
    let name = name.as_encoded_bytes();
    let Some(at) = name.windows(5).rposition(|w| w == b".tmp-") else {
        return false;
    };
    let pid = &name[at + 5..];
    !pid.is_empty() && pid.iter().all(u8::is_ascii_digit)
}

/// The temp files ([`temp_path`]) directly in `dir`, sorted; none when it cannot be read.
pub fn temps_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut temps: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| is_temp_name(&e.file_name()))
        .map(|e| e.path())
        .collect();
    temps.sort();
    temps
}

/// Removes every temp file in `dir` ([`temps_in`]), which writes cut off by a power cut or
/// a kill left behind. Only for a directory whose writers all hold one lock, held now;
/// best effort.
pub fn remove_stale_temps_in(dir: &Path) {
    for tmp in temps_in(dir) {
        let _ = fs::remove_file(tmp);
    }
}

/// Whether a write failed for want of space: the file system (or the user's quota) is full.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// [`is_disk_full`] for a failed step of the library's, when an I/O error caused it.
pub(crate) fn failed_for_space(e: &Error) -> bool {
    e.io_source().is_some_and(is_disk_full)
}

/// Writes `bytes` to `path` as [`write_atomic`] does, creating its directory first, or,
/// when the disk is full, nothing (`false`). For a copy of what was just verified, which
/// the next run can fetch again: a full disk must not throw away the verification itself,
/// which the state (saved through its spare, `src/spare.rs`) records. The caller holds the
/// work lock, which every writer of these copies holds, so any other temp file of `path`
/// is one a process cut off left; removed first, they would otherwise pile up, one per
/// power cut, and the room they free may be what this write needs.
pub(crate) fn write_atomic_if_room(path: &Path, bytes: &[u8]) -> Result<bool> {
    remove_stale_temps(path);
    let written = create_dir_all(path.parent().unwrap_or(Path::new(".")))
        .and_then(|()| write_atomic(path, bytes));
    match written {
        Err(e) if failed_for_space(&e) => Ok(false),
        other => other.map(|()| true),
    }
}

/// Writes `bytes` to `path` atomically: a reader sees the old content or the new, never a
/// mix, and after return the new content survives a power cut.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let result = create_temp(&tmp)
        .map_err(|e| match e.io_source().map(std::io::Error::kind) {
            // Said of the file asked for: the temp file's name is no name the caller gave.
            Some(std::io::ErrorKind::NotFound) => Error::new(
                crate::error::ErrorKind::Io,
                format!(
                    "write {}: expected its directory to exist, found none",
                    path.display()
                ),
            ),
            _ => e,
        })
        .and_then(|mut f| {
            f.write_all(bytes)
                .map_err(|e| Error::io("write", &tmp, e))?;
            Ok(f)
        })
        .and_then(|f| persist(f, &tmp, path));
    if result.is_err() {
        // Best effort: a leftover temp file is harmless but untidy.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically like [`write_atomic`], but never over an existing
/// file: returns `false`, leaving `path` as it is, when one is there, even one put there
/// while this runs by a writer that does not hold the caller's lock.
pub fn write_new_atomic(path: &Path, bytes: &[u8]) -> Result<bool> {
    let tmp = temp_path(path);
    let linked = create_temp(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)
                .map_err(|e| Error::io("write", &tmp, e))?;
            crash_point("fsync temp")?;
            sync_file(&f).map_err(|e| Error::io("fsync", &tmp, e))
        })
        .and_then(|()| link_new(&tmp, path));
    // Linked or not, the temp name is no longer needed; a crash before this leaves it to
    // the next holder of the lock ([`remove_stale_temps_in`]).
    let _ = fs::remove_file(&tmp);
    if linked? {
        sync_parent(path)?;
        return Ok(true);
    }
    Ok(false)
}

/// Gives the file at `tmp` the name `dest` too, unless `dest` exists: unlike a rename, a
/// link fails rather than replace it, in one step no other writer can get between. A file
/// system without hard links (vfat, exFAT, some network and FUSE mounts) renames instead,
/// with `RENAME_NOREPLACE`, which refuses to replace in the same one step.
fn link_new(tmp: &Path, dest: &Path) -> Result<bool> {
    use std::io::ErrorKind::AlreadyExists;
    crash_point("link")?;
    match fs::hard_link(tmp, dest) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == AlreadyExists => Ok(false),
        Err(e) if no_hard_links(&e) => rename_new(tmp, dest, e),
        Err(e) => Err(Error::io("link into", dest, e)),
    }
}

/// [`link_new`] on a file system without hard links (`link` failed with `unlinkable`):
/// renames `tmp` to `dest` unless `dest` exists.
fn rename_new(tmp: &Path, dest: &Path, unlinkable: std::io::Error) -> Result<bool> {
    use std::io::ErrorKind::AlreadyExists;
    match rename_noreplace(tmp, dest) {
        Ok(true) => Ok(true),
        Err(e) if e.kind() == AlreadyExists => Ok(false),
        Err(e) => Err(Error::io("rename into", dest, e)),
        Ok(false) => Err(Error::io(
            "create without replacing (expected a file system with hard links or \
             RENAME_NOREPLACE, found neither)",
            dest,
            unlinkable,
        )),
    }
}

/// Whether `e`, from `link`, says the file system has no hard links.
fn no_hard_links(e: &std::io::Error) -> bool {
    let errno = e.raw_os_error();
    // macOS says ENOTSUP (45), which is not its EOPNOTSUPP (102); on Linux they are one.
    #[cfg(target_vendor = "apple")]
    if errno == Some(libc::ENOTSUP) {
        return true;
    }
    matches!(
        errno,
        Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS | libc::EMLINK)
    )
}

/// Swaps the names of `a` and `b` in one atomic step. `Ok(false)` when the system or the
/// file system cannot.
pub(crate) fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    rename_with(a, b, Rename::Exchange)
}

/// Renames `a` to `b` unless `b` exists (`AlreadyExists` then). `Ok(false)` when the
/// system or the file system cannot.
pub(crate) fn rename_noreplace(a: &Path, b: &Path) -> std::io::Result<bool> {
    rename_with(a, b, Rename::NoReplace)
}

/// The two renames beyond POSIX's that the state's saves use when the system has them.
#[derive(Clone, Copy)]
enum Rename {
    /// Swap the two names (Linux `RENAME_EXCHANGE`, macOS `RENAME_SWAP`).
    Exchange,
    /// Fail with `EEXIST` rather than replace (`RENAME_NOREPLACE`, `RENAME_EXCL`).
    NoReplace,
}

/// `name` as a C string, for the raw calls of this module; a name with a NUL byte inside
/// (which no file system takes) is an error.
fn c_string(name: &std::ffi::OsStr) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(name.as_bytes()).map_err(std::io::Error::other)
}

/// Both paths as C strings, for the raw calls below.
#[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
fn c_paths(a: &Path, b: &Path) -> std::io::Result<(std::ffi::CString, std::ffi::CString)> {
    Ok((c_string(a.as_os_str())?, c_string(b.as_os_str())?))
}

/// `renameat2(a, b, flags)`; `Ok(false)` when the system or the file system does not know
/// the flags.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn rename_with(a: &Path, b: &Path, how: Rename) -> std::io::Result<bool> {
    let flags = match how {
        Rename::Exchange => libc::RENAME_EXCHANGE,
        Rename::NoReplace => libc::RENAME_NOREPLACE,
    };
    use std::os::unix::io::AsRawFd;
    // Within their one directory, by its descriptor, as `rename_within` renames.
    let (dir, a, b) = match one_dir(a, b)? {
        Some((dir, a, b)) => (Some(dir), a, b),
        None => {
            let (a, b) = c_paths(a, b)?;
            (None, a, b)
        }
    };
    let at = dir.as_ref().map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // The raw system call: the C library's `renameat2` wrapper is missing from older glibc.
    // SAFETY: both names are NUL-terminated strings, and `at` a descriptor (owned by
    // `dir`), that outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_renameat2, at, a.as_ptr(), at, b.as_ptr(), flags) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(err),
    }
}

/// `renamex_np(a, b, flags)` (macOS 10.12 and later); `Ok(false)` when the file system
/// cannot (`ENOTSUP`: APFS has both flags, HFS+ only `RENAME_EXCL`, network file systems
/// often neither).
#[cfg(target_vendor = "apple")]
fn rename_with(a: &Path, b: &Path, how: Rename) -> std::io::Result<bool> {
    let flags = match how {
        Rename::Exchange => libc::RENAME_SWAP,
        Rename::NoReplace => libc::RENAME_EXCL,
    };
    let (a, b) = c_paths(a, b)?;
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    if unsafe { libc::renamex_np(a.as_ptr(), b.as_ptr(), flags) } == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL | libc::ENOTSUP | libc::EOPNOTSUPP | libc::ENOSYS) => Ok(false),
        _ => Err(err),
    }
}

/// No atomic swap of two names, nor a rename that refuses to replace, here: the normal
/// save is all there is.
#[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
fn rename_with(_a: &Path, _b: &Path, _how: Rename) -> std::io::Result<bool> {
    Ok(false)
}

/// Replaces several files that must agree with each other: every new content is written
/// and made durable under its temp name first, and only then are they renamed into place,
/// in the order given (put last the one that makes the others count). A failure while
/// writing (a full disk, a permission) renames nothing and removes the temp files, so the
/// set is never left half replaced by it; a failed rename after the first leaves it half
/// replaced, and its error says to run the same command again.
pub fn write_all_atomic(files: &[(PathBuf, Vec<u8>)]) -> Result<()> {
    let mut written: Vec<(PathBuf, &Path)> = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        let tmp = temp_path(path);
        let result = create_temp(&tmp).and_then(|mut f| {
            f.write_all(bytes)
                .map_err(|e| Error::io("write", &tmp, e))?;
            sync_file(&f).map_err(|e| Error::io("fsync", &tmp, e))
        });
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            for (tmp, _) in &written {
                let _ = fs::remove_file(tmp);
            }
            return Err(e);
        }
        written.push((tmp, path));
    }
    for (i, (tmp, path)) in written.iter().enumerate() {
        let renamed = crash_point("rename")
            .and_then(|()| fs::rename(tmp, path).map_err(|e| Error::io("rename into", path, e)))
            .and_then(|()| sync_parent(path));
        if let Err(e) = renamed {
            // The files not renamed yet would otherwise stay behind as temp files.
            for (tmp, _) in &written[i..] {
                let _ = fs::remove_file(tmp);
            }
            // The set is half replaced now: its caller finishes what an earlier run of it
            // left, so running it again puts the rest.
            return Err(match i {
                0 => e,
                _ => e.hint(format_args!(
                    "{i} of the {} files were already in place: run the same command again to put the rest",
                    written.len()
                )),
            });
        }
    }
    Ok(())
}

/// The mode of every file the library creates (before the umask, which can only take
/// bits away): whatever the process's umask, never writable by group or others, since
/// the state, the trusted root and the slots' records decide what the device trusts and
/// boots.
pub const FILE_MODE: u32 = 0o644;

/// Options that create a file with [`FILE_MODE`] (for writing; the caller adds the rest).
pub fn create_options() -> OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = OpenOptions::new();
    options.write(true).create(true).mode(FILE_MODE);
    options
}

/// Creates a temp file for [`persist`], with [`FILE_MODE`]: a new file, after removing
/// whatever had the name (one a power cut left; writers of one file hold its lock).
/// Created exclusively, so never through a symlink that another user who may write the
/// directory planted there (the name is predictable): such a write would truncate and
/// fill the file it points to. It is shared as its directory is: given to the
/// directory's owner when root writes into another user's, and to its group where the
/// group may write it.
pub fn create_temp(tmp: &Path) -> Result<File> {
    use std::io::ErrorKind::{NotFound, ReadOnlyFilesystem};
    crash_point("create temp")?;
    // A read-only file system answers EROFS even for a name that is not there: the
    // create below then says what is wrong, rather than a stale file no one left.
    match fs::remove_file(tmp) {
        Err(e) if !matches!(e.kind(), NotFound | ReadOnlyFilesystem) => {
            return Err(Error::io("remove stale temp file", tmp, e))
        }
        _ => {}
    }
    let file = create_options()
        .create_new(true)
        .open(tmp)
        .map_err(|e| Error::io("create", tmp, e))?;
    give_to_dir_owner(&file, tmp);
    Ok(file)
}

/// The bytes of `path`, one of the library's own files in a directory others may write
/// (the state directory's kept root, manifest copies, device id), opened as
/// [`open_regular`] opens: a FIFO or a link planted there is an `io` error at once, never
/// a read that waits for a writer for good.
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(OpenOptions::new().read(true), path, "read")?
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(bytes)
}

/// `options` made to refuse a symlink as the last part of the path (`O_NOFOLLOW`): a link
/// planted in place of one of the library's own files, by another user who may write its
/// directory, must not make it open, truncate or change the mode of some other file.
/// Such an open fails; [`opened`] says why.
pub fn no_follow(options: &mut OpenOptions) -> &mut OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    options.custom_flags(libc::O_NOFOLLOW)
}

/// Opens `path` (to `what`) with `options`, never through a symlink ([`no_follow`]) and
/// only when it is a regular file: a FIFO planted under a download's name would otherwise
/// block the open, or the first read, for good, where no cancel reaches. The open does
/// not wait (`O_NONBLOCK`, cleared once the file is known to be regular), and anything
/// else found there is `io` naming what it is.
pub fn open_regular(options: &mut OpenOptions, path: &Path, what: &str) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| opened(what, path, e))?;
    let kind = file
        .metadata()
        .map_err(|e| Error::io(what, path, e))?
        .file_type();
    if !kind.is_file() {
        return Err(Error::new(
            crate::error::ErrorKind::Io,
            format!(
                "{what} {}: expected a regular file, found {} (remove it)",
                path.display(),
                file_type_name(kind)
            ),
        ));
    }
    // SAFETY: F_GETFL and F_SETFL on a descriptor this function owns.
    let cleared = unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        flags >= 0 && libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if !cleared {
        return Err(Error::io(what, path, std::io::Error::last_os_error()));
    }
    Ok(file)
}

/// What a path is, for a message: "a regular file", "a directory", "a character
/// device", ….
pub fn file_type_name(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "no regular file"
    }
}

/// The error of opening `path` (to `what`) with [`no_follow`]: a symlink found there is
/// named as such rather than as the kernel's "too many levels of symbolic links".
pub fn opened(what: &str, path: &Path, e: std::io::Error) -> Error {
    // Linux and macOS say ELOOP; FreeBSD says EMLINK.
    if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::EMLINK)) && path.is_symlink() {
        return Error::new(
            crate::error::ErrorKind::Io,
            format!(
                "{what} {}: expected a file, found a symbolic link (never followed: whoever may write its directory could have planted it)",
                path.display()
            ),
        )
        .with_source(e);
    }
    Error::io(what, path, e)
}

/// Makes the fully written temp file `file` (at `tmp`) durable and renames it to `dest`.
pub fn persist(file: File, tmp: &Path, dest: &Path) -> Result<()> {
    crash_point("fsync temp")?;
    sync_file(&file).map_err(|e| Error::io("fsync", tmp, e))?;
    drop(file);
    crash_point("rename")?;
    let renamed_in = renamed_within(tmp, dest).map_err(|e| Error::io("rename into", dest, e))?;
    match renamed_in {
        // The directory the rename changed is the one synced, not one found again by path.
        Some(dir) => sync_opened_dir(parent_or_here(dest), Ok(dir)),
        None => sync_parent(dest),
    }
}

/// Renames `from` to `to` within the one directory both name, by its descriptor: a rename
/// by paths looks the directory up twice, and a user who may write its parent could swap
/// another directory in between, moving the file from the one into the other (a temp
/// given to that user in its own directory into root's, say).
pub(crate) fn rename_within(from: &Path, to: &Path) -> std::io::Result<()> {
    renamed_within(from, to).map(drop)
}

/// [`rename_within`], giving back the directory it renamed in (`None` when the two paths
/// are in two directories, renamed by path).
fn renamed_within(from: &Path, to: &Path) -> std::io::Result<Option<File>> {
    use std::os::unix::io::AsRawFd;
    let Some((dir, a, b)) = one_dir(from, to)? else {
        return fs::rename(from, to).map(|()| None);
    };
    // SAFETY: NUL-terminated names and a descriptor owned by `dir` for the whole call.
    match unsafe { libc::renameat(dir.as_raw_fd(), a.as_ptr(), dir.as_raw_fd(), b.as_ptr()) } {
        0 => Ok(Some(dir)),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The directory `a` and `b` are both in, opened, and their names in it; `None` when they
/// are in two.
type OneDir = Option<(File, std::ffi::CString, std::ffi::CString)>;
fn one_dir(a: &Path, b: &Path) -> std::io::Result<OneDir> {
    let (Some(name_a), Some(name_b)) = (a.file_name(), b.file_name()) else {
        return Ok(None);
    };
    if b.parent().is_none() || b.parent() != a.parent() {
        return Ok(None);
    }
    let dir = open_dir(parent_or_here(b))?;
    Ok(Some((dir, c_string(name_a)?, c_string(name_b)?)))
}

/// Fsyncs the directory holding `path`, which is what makes a rename or a new entry durable.
pub fn sync_parent(path: &Path) -> Result<()> {
    sync_dir(parent_or_here(path))
}

/// The directory `path` is in: `.` for a bare name.
fn parent_or_here(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Makes `file`'s data and metadata durable (`fsync`). On macOS the standard library asks
/// for `F_FULLFSYNC` (the drive's cache flushed too); a file system that cannot (SMB
/// shares, some FUSE and external drives answer `ENOTSUP`, `EINVAL` or `ENOTTY`) gets a
/// plain `fsync` instead of a failed save, as SQLite does.
pub fn sync_file(file: &File) -> std::io::Result<()> {
    or_plain_fsync(file, file.sync_all())
}

/// [`sync_file`] for the data alone (`fdatasync`; on macOS the same as [`sync_file`]).
pub fn sync_file_data(file: &File) -> std::io::Result<()> {
    or_plain_fsync(file, file.sync_data())
}

#[cfg(target_vendor = "apple")]
fn or_plain_fsync(file: &File, full: std::io::Result<()>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    match full {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOTSUP | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOTTY)
            ) =>
        {
            // SAFETY: a valid descriptor, owned by `file` for the whole call.
            match unsafe { libc::fsync(file.as_raw_fd()) } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        }
        other => other,
    }
}

#[cfg(not(target_vendor = "apple"))]
fn or_plain_fsync(_file: &File, sync: std::io::Result<()>) -> std::io::Result<()> {
    sync
}

/// Makes everything written to the file system holding `file` durable with one `syncfs`:
/// one journal commit and one cache flush, where a sync per file costs one of each per
/// file (10,688 files: 0.5 s against 1.8 s on an ext4 disk). Only where the kernel
/// reports to `syncfs` the errors it met: Linux 5.17 and later (before 5.8 it returned
/// success whatever writeback lost, and before 5.17 it dropped the file system's own
/// errors, a failed journal commit among them), on the file systems of
/// `SYNCFS_TRUSTED`; `None` elsewhere, and the caller syncs file by file.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn sync_file_system(file: &File) -> Option<std::io::Result<()>> {
    use std::os::fd::AsRawFd;
    // glibc's `fstatfs` on a 32-bit target fails (`EOVERFLOW`) when a count does not fit
    // in 32 bits (more than 2^32 blocks or inodes); `fstatfs64` reads them whole.
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    use libc::{fstatfs as sys_fstatfs, statfs as sys_statfs};
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    use libc::{fstatfs64 as sys_fstatfs, statfs64 as sys_statfs};
    if !kernel_at_least(&kernel_release()?, (5, 17)) {
        return None;
    }
    // SAFETY: a valid descriptor, and a zeroed struct the kernel fills.
    let mut fs: sys_statfs = unsafe { std::mem::zeroed() };
    if unsafe { sys_fstatfs(file.as_raw_fd(), &mut fs) } != 0 {
        return None;
    }
    // `f_type` is a signed word of the platform's size; its low 32 bits are the magic.
    #[allow(clippy::unnecessary_cast)]
    let magic = fs.f_type as u64 as u32;
    if !SYNCFS_TRUSTED.contains(&magic) {
        return None;
    }
    // SAFETY: a valid descriptor, owned by `file` for the whole call.
    Some(match unsafe { libc::syncfs(file.as_raw_fd()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    })
}

/// The file systems (`statfs` magic numbers) whose `syncfs` writes every file's data,
/// waits for it and reports what writeback lost: ext2/3/4, XFS, Btrfs, F2FS, UBIFS and
/// tmpfs. Not FUSE (a daemon without `FUSE_SYNCFS` makes it do nothing), overlayfs (before
/// Linux 5.15 the upper file system's errors were not reported) or network file systems:
/// those are synced file by file.
#[cfg(any(target_os = "linux", target_os = "android"))]
const SYNCFS_TRUSTED: [u32; 6] = [
    0xEF53,      // ext2, ext3, ext4
    0x5846_5342, // XFS
    0x9123_683E, // Btrfs
    0xF2F5_2010, // F2FS
    0x2405_1905, // UBIFS
    0x0102_1994, // tmpfs
];

/// [`sync_file_system`] where there is no `syncfs`: always `None`.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn sync_file_system(_file: &File) -> Option<std::io::Result<()>> {
    None
}

/// The running kernel's release, as `uname -r` prints it.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn kernel_release() -> Option<String> {
    // SAFETY: `uname` fills the zeroed struct, whose fields are NUL-terminated arrays.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut name) } != 0 {
        return None;
    }
    let release: Vec<u8> = name
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8(release).ok()
}

/// Whether a kernel `release` (`6.1.0-13-amd64`, `5.10.120-ti-r47`) is at least
/// `(major, minor)`. A release that does not start with two numbers is not.
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
fn kernel_at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(a)), Some(Ok(b))) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// Makes a directory's entries (creations, renames, removals) durable.
///
/// A file system that can't fsync a directory (`EINVAL`: procfs and sysfs, and some
/// shared-folder and network file systems) gives its own durability and nothing more can
/// be asked of it: that is no error. Failing there would report a rename that is already
/// done as not done, and every later write to the directory as failed.
pub fn sync_dir(dir: &Path) -> Result<()> {
    sync_opened_dir(dir, File::open(dir))
}

/// Fsyncs `opened`, the directory `dir` (named in errors). A file system that cannot sync
/// a directory (`EINVAL`) has nothing to sync.
fn sync_opened_dir(dir: &Path, opened: std::io::Result<File>) -> Result<()> {
    crash_point("fsync dir")?;
    match opened.and_then(|d| sync_file(&d)) {
        // `EINVAL` is `InvalidInput`.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        other => other.map_err(|e| Error::io("fsync directory", dir, e)),
    }
}

/// Where a write to `path` must go: `path` itself, or, when it is a symlink, the file it
/// points to (followed link by link, a relative target read from the link's directory),
/// which need not exist yet — a fresh data partition on the first boot.
pub fn link_target(path: PathBuf) -> Result<PathBuf> {
    follow_links(path, |_, _| Ok(()))
}

/// [`link_target`], following only links this user or root made: one that another user
/// who may write a directory on the way planted (in place of `state.json`, say) would make
/// a write go to a file of this user's choosing. Refused with `io`, naming its owner.
pub fn own_link_target(path: PathBuf) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let start = path.clone();
    follow_links(path, |at, link| {
        // SAFETY: a query without arguments.
        if link.uid() == 0 || link.uid() == unsafe { libc::geteuid() } {
            return Ok(());
        }
        let on_the_way = match at == start {
            true => String::new(),
            false => format!(" at {}", at.display()),
        };
        Err(Error::new(
            crate::error::ErrorKind::Io,
            format!(
                "{}: expected a file, or a symlink this user or root made, found a symlink of user {}{on_the_way} (never followed)",
                start.display(),
                link.uid()
            ),
        ))
    })
}

/// Follows the symlinks from `path` (as many as the kernel follows in one lookup), each
/// one first passed to `allow` with its own metadata; returns where they end.
fn follow_links(
    mut path: PathBuf,
    allow: impl Fn(&Path, &fs::Metadata) -> Result<()>,
) -> Result<PathBuf> {
    let start = path.clone();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                allow(&path, &m)?;
                let to = std::fs::read_link(&path).map_err(|e| Error::io("read link", &path, e))?;
                path = path.parent().map_or(to.clone(), |dir| dir.join(&to));
            }
            _ => return Ok(path),
        }
    }
    Err(Error::new(
        crate::error::ErrorKind::Io,
        format!(
            "{}: expected a file or a chain of symlinks to one, found more than 40 links",
            start.display()
        ),
    ))
}

/// Creates `dir` and its missing parents, each made durable in its parent. They get mode
/// 0755 less the umask: never writable by group or others, whatever the umask (a slots
/// directory anyone could write would let anyone swap a slot).
pub fn create_dir_all(dir: &Path) -> Result<()> {
    create_dir_all_mode(dir, 0o755)
}

/// [`create_dir_all`] with `mode` (less the umask) for the directories it creates.
pub fn create_dir_all_mode(dir: &Path, mode: u32) -> Result<()> {
    create_dirs(dir, mode, false)
}

/// [`create_dir_all`], the directories it creates made 0755 whatever the umask: the slot
/// root and `slots/`, on the way of the app's user (maybe not this one) to its slot tree,
/// which is 0755 too. A private umask (`UMask=0077`) made them 0700, and the app could
/// not reach its release.
pub fn create_open_dir_all(dir: &Path) -> Result<()> {
    create_dirs(dir, 0o755, true)
}

/// Creates `dir` and its missing parents with `mode`, less the umask unless `exact`.
fn create_dirs(dir: &Path, mode: u32, exact: bool) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    // The OS says only "File exists", which reads as no error at all.
    if let Ok(found) = fs::symlink_metadata(dir) {
        return Err(Error::new(
            crate::ErrorKind::Io,
            format!(
                "create directory {}: expected a directory there, found {}",
                dir.display(),
                if found.file_type().is_symlink() {
                    "a symlink to no directory"
                } else {
                    "a file"
                }
            ),
        ));
    }
    let created: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| Error::io("create directory", dir, e))?;
    // A new directory's entry is durable only once its parent is synced; without it a
    // power cut could take the state directory, and the state, with it.
    for d in created.iter().rev() {
        sync_parent(d)?;
    }
    share_new_dirs(&created, exact.then_some(mode));
    Ok(())
}

/// Shares the directories just made (`created`, deepest first) as the files written into
/// them are ([`share_as_dir`]): a `cache/` root made in the app user's state directory
/// must stay one the user can write into. Each is opened by descriptor, under the
/// descriptor of its parent, never by a path that user could redirect (a symlink flipped
/// in place of a parent, a hard link in place of the new directory), and only a
/// directory this process owns is shared (`O_DIRECTORY`: never a file linked in its
/// place): no file outside is ever given away. Each gets `mode` first, if given. Best
/// effort.
fn share_new_dirs(created: &[&Path], mode: Option<u32>) {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::io::{AsRawFd, FromRawFd};
    let Some(top) = created.last().and_then(|d| d.parent()) else {
        return;
    };
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let Ok(mut parent) = open_dir(top) else {
        return;
    };
    for (i, d) in created.iter().enumerate().rev() {
        let Some(name) = d.file_name().and_then(|n| c_string(n).ok()) else {
            return;
        };
        // SAFETY: a NUL-terminated name and a descriptor this function owns; a new
        // descriptor is owned by the `File` made of it at once.
        let fd = unsafe { libc::openat(parent.as_raw_fd(), name.as_ptr(), flags) };
        if fd < 0 {
            return;
        }
        // SAFETY: `fd` is a new descriptor no one else owns.
        let new = unsafe { File::from_raw_fd(fd) };
        // One this call made holds nothing but the next one it made: not an existing
        // directory of this user's renamed over it meanwhile (a rename replaces an empty
        // directory at once).
        let next = i.checked_sub(1).and_then(|j| created[j].file_name());
        match (parent.metadata(), new.metadata()) {
            (Ok(dir), Ok(made)) if is_mine(&made) && holds_only(&new, next) => {
                if let Some(mode) = mode {
                    let _ = new.set_permissions(fs::Permissions::from_mode(mode));
                }
                share_as_dir(&new, &dir)
            }
            _ => return,
        }
        parent = new;
    }
}

/// Whether the directory open as `dir` holds nothing but `child` (nothing at all for
/// `None`). Read through `/proc/self/fd`: where there is none, no directory qualifies.
fn holds_only(dir: &File, child: Option<&std::ffi::OsStr>) -> bool {
    use std::os::unix::io::AsRawFd;
    let Ok(entries) = fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
        return false;
    };
    let names: Vec<_> = entries.take(2).map(|e| e.map(|e| e.file_name())).collect();
    match (names.as_slice(), child) {
        ([], None) => true,
        ([Ok(only)], Some(child)) => only == child,
        _ => false,
    }
}

/// Takes an exclusive `flock` on `path` (created if missing), waiting while another
/// holder has it; dropping the returned file releases it. Each open of the file is a lock
/// of its own, so two threads of one process exclude each other as two processes do.
/// Advisory: it orders the writers that take it, nothing else.
pub fn lock_exclusive(path: &Path) -> Result<File> {
    lock_exclusive_or_wait(path, LockAccess::AsFound, || {})
}

/// Who may open a lock file: on Linux a `flock` needs only read access, so whoever can
/// open the file can hold the lock, and who may open it must follow who may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockAccess {
    /// Created with [`FILE_MODE`]; one that is there is left as it is (a repository
    /// shared by operators, whose modes are theirs).
    AsFound,
    /// Created 0600; one that is there, if it is this user's own, loses its group's and
    /// others' permissions.
    Owner,
    /// Created with [`FILE_MODE`]; one that is there, if it is this user's own and only
    /// its owner may open it (made while the directory was private), gets [`FILE_MODE`].
    Shared,
}

/// [`lock_exclusive`], calling `on_wait` once, before it waits, when another holder still
/// has the lock after 200 ms: a caller can say why it stops rather than stop in silence
/// (and says nothing of the short waits behind a save). `access` says who may open the
/// lock file.
pub fn lock_exclusive_or_wait(
    path: &Path,
    access: LockAccess,
    on_wait: impl FnOnce(),
) -> Result<File> {
    lock_exclusive_or_stop(path, access, on_wait, None)
}

/// [`lock_exclusive_or_wait`], where a given `stop` is asked every 50 ms of the wait and
/// an error from it ends the wait: a download must hear its cancel while another process
/// holds the lock for as long as its own download takes.
pub(crate) fn lock_exclusive_or_stop(
    path: &Path,
    access: LockAccess,
    on_wait: impl FnOnce(),
    stop: Option<&dyn Fn() -> Result<()>>,
) -> Result<File> {
    let mut on_wait = Some(on_wait);
    let mut once = || on_wait.take().map_or((), |f| f());
    lock_exclusive_within(path, access, &mut once, None, stop)?
        .ok_or_else(|| Error::io("lock", path, std::io::ErrorKind::WouldBlock.into()))
}

/// [`lock_exclusive_or_stop`], giving up when another holder still has the lock after
/// `patience` (`Ok(None)`); `None` waits as long as it takes. For a lock that a program
/// outside our control holds (`fw_setenv`'s): one that hangs must not hang every boot.
/// Not generic: one copy in the library, whoever calls it.
pub(crate) fn lock_exclusive_within(
    path: &Path,
    access: LockAccess,
    on_wait: &mut dyn FnMut(),
    patience: Option<std::time::Duration>,
    stop: Option<&dyn Fn() -> Result<()>>,
) -> Result<Option<File>> {
    use std::io::ErrorKind::{PermissionDenied, ReadOnlyFilesystem};
    use std::os::unix::fs::OpenOptionsExt;
    // Opened for writing: over NFS `flock` becomes a POSIX lock, whose exclusive form
    // needs a file open for writing. Locally `flock` needs no more than reading, which a
    // lock file another user created (a repository shared by operators) still allows.
    let mode = if access == LockAccess::Owner {
        0o600
    } else {
        FILE_MODE
    };
    let created = no_follow(create_options().mode(mode).truncate(false)).open(path);
    let (file, read_only) = match created {
        // Not there to read either: the refusal to create it is what to report.
        Err(e) if matches!(e.kind(), PermissionDenied | ReadOnlyFilesystem) => (
            no_follow(OpenOptions::new().read(true))
                .open(path)
                .or(Err(e)),
            true,
        ),
        other => (other, false),
    };
    let file = file.map_err(|e| opened("open lock file", path, e))?;
    if access != LockAccess::AsFound {
        set_own_mode(&file, access);
    }
    // A holder about to be done (a save takes milliseconds) is waited for without a word.
    let quietly = std::time::Duration::from_millis(200);
    let start = std::time::Instant::now();
    let try_lock = &mut || flock(&file, libc::LOCK_EX | libc::LOCK_NB);
    let busy =
        |r: &std::io::Result<()>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    let mut taken = lock_until(
        try_lock,
        start + patience.map_or(quietly, |p| p.min(quietly)),
    );
    if busy(&taken) {
        on_wait();
        taken = match (patience, stop) {
            (Some(p), _) => lock_until(try_lock, start + p),
            (None, Some(stop)) => flock_polled(&file, stop)?,
            // One blocking call, which a signal can end (see `flock`).
            (None, None) => flock(&file, libc::LOCK_EX),
        };
        if busy(&taken) {
            return Ok(None);
        }
    }
    taken.map_err(|e| match e.raw_os_error() {
        Some(libc::EBADF) if read_only => Error::io(
            "lock (expected write access to the lock file on this file system, found it \
             read-only for this user)",
            path,
            e,
        ),
        _ => Error::io("lock", path, e),
    })?;
    Ok(Some(file))
}

/// Narrows or opens up the mode of a lock file as `access` says, if it is this user's own
/// regular file with one name. Best effort (a read-only mount stays as it is). Never
/// through a second name: a hard link or a symlink planted in place of a lock file must
/// not make this process change the mode of some other file.
fn set_own_mode(file: &File, access: LockAccess) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = file.metadata() else { return };
    if !is_mine(&meta) || !meta.is_file() || meta.nlink() != 1 {
        return;
    }
    let bits = meta.permissions().mode() & 0o777;
    let wanted = match access {
        LockAccess::Owner if bits & 0o077 != 0 => bits & !0o077,
        LockAccess::Shared if bits & 0o077 == 0 => FILE_MODE,
        _ => return,
    };
    let _ = file.set_permissions(std::fs::Permissions::from_mode(wanted));
}

/// Gives `file`, just created at `path`, to the users who share its directory: to the
/// directory's owner and group when this process is root and the directory is another
/// user's (`sudo evergreen update` in the app's state directory), and writable by the
/// directory's group when that group may write the directory (a launcher run as another
/// user of the group). Either must stay able to write it in place, as the state's spare
/// is written (`src/spare.rs`); they could replace it anyway, so this gives away nothing.
/// Best effort.
pub(crate) fn give_to_dir_owner(file: &File, path: &Path) {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let Ok(dir) = open_dir(parent) else {
        return;
    };
    // The directory judged by must be the one the file is in: not one put in its
    // place (by a user who may write its parent) since the file was made, and not a
    // file linked into that user's directory.
    let here = Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    let same = |a: &fs::Metadata, b: &fs::Metadata| (a.dev(), a.ino()) == (b.dev(), b.ino());
    if let (Ok(dir), Ok(made), Ok(found)) =
        (dir.metadata(), file.metadata(), fs::symlink_metadata(here))
    {
        if made.nlink() == 1 && same(&made, &found) {
            share_as_dir(file, &dir);
        }
    }
}

/// While alive, the calling thread (and each thread it starts meanwhile, which inherits
/// its credentials) creates and opens files as `dir`'s owner, when this process is root
/// and `dir` is another user's: `sudo evergreen update` of an app whose slot root is its
/// user's. What root made there was root's, and the user's own next install into that
/// slot could not clear it. Giving files away after making them is not safe in a
/// directory that user controls (the user could swap a path for a symlink meanwhile);
/// acting as the user is: root can then reach nothing that user could not. Linux's
/// file-system ids are per thread, so the host's other threads keep root's rights.
/// Nor where the owner could not reach or write `dir` (then root's rights are kept, as
/// before). Elsewhere, or as any other user, it changes nothing.
#[must_use = "the identity is root's again once this is dropped"]
pub(crate) struct ActAsOwner {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    was: Option<(u32, u32)>,
}

/// [`ActAsOwner`] of `dir`.
pub(crate) fn act_as_owner_of(dir: &Path) -> ActAsOwner {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::fs::MetadataExt;
        let mut acting = ActAsOwner { was: None };
        // SAFETY: a query without arguments.
        let root = unsafe { libc::geteuid() } == 0;
        match fs::metadata(dir) {
            Ok(m) if root && m.uid() != 0 => acting.was = Some(set_fs_ids((m.uid(), m.gid()))),
            _ => return acting,
        }
        // Only where the owner may reach and write the directory: one under a directory
        // of root's (a tree unpacked with its builder's uid) was written by root before,
        // and must stay so.
        if !fs::metadata(dir).is_ok_and(|m| m.mode() & 0o300 == 0o300) {
            drop(acting);
            return ActAsOwner { was: None };
        }
        acting
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = dir;
        ActAsOwner {}
    }
}

/// Sets this thread's file-system ids; returns the ones it had. An id that cannot be
/// taken leaves the old one.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_fs_ids((uid, gid): (u32, u32)) -> (u32, u32) {
    // SAFETY: these change only this thread's file-system ids, and return the previous.
    unsafe { (libc::setfsuid(uid) as u32, libc::setfsgid(gid) as u32) }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
impl Drop for ActAsOwner {
    fn drop(&mut self) {
        if let Some(was) = self.was {
            set_fs_ids(was);
        }
    }
}

/// `path` opened as a directory, never through a symlink as its last component.
fn open_dir(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(path)
}

/// [`give_to_dir_owner`] for `file` (a file or directory) in a directory of `dir`'s
/// metadata.
fn share_as_dir(file: &File, dir: &fs::Metadata) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: a query without arguments.
    if dir.uid() != 0 && unsafe { libc::geteuid() } == 0 {
        let _ = std::os::unix::fs::fchown(file, Some(dir.uid()), Some(dir.gid()));
    }
    // Group-writable, and not sticky: in a sticky directory (`/tmp`) the group cannot
    // replace another's files, so it must not be let write them in place either.
    // And only what the group may read already: a private file or directory stays as it
    // is.
    let readable = file.metadata().is_ok_and(|m| m.mode() & 0o040 != 0);
    if dir.mode() & 0o1020 == 0o020 && readable {
        let _ = std::os::unix::fs::fchown(file, None, Some(dir.gid()));
        // Only once it is the directory's group: one this user is not in leaves the file
        // in the user's own group, which must not gain anything.
        if let Some(meta) = file.metadata().ok().filter(|m| m.gid() == dir.gid()) {
            let mode = meta.mode() | 0o020;
            let _ = file.set_permissions(fs::Permissions::from_mode(mode & 0o7777));
        }
    }
}

/// Whether `meta` is of a file (or directory) this process's effective user owns.
pub(crate) fn is_mine(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: a query without arguments.
    meta.uid() == unsafe { libc::geteuid() }
}

/// What a lock on a file's contents guards: reading it, or writing it in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Contents {
    /// A read, beside other reads.
    Read,
    /// A write in place, alone.
    Write,
}

/// Locks the contents of `file` for `use_` if the lock comes within `patience`, and tells
/// whether it did. For a short read or write of a file that others may open (the state
/// file); a file system without such locks answers `false` at once.
///
/// On Linux and Android the lock is an open-file-description record lock (`fcntl`
/// `F_OFD_SETLK`), not a `flock`: the kernel grants its write form only through a
/// descriptor open for writing, so a local user who may only read the file can delay a
/// write in place (by `patience` at most) but never a read. A `flock` needs no more than
/// read access in either form. Elsewhere it is a `flock`, so there any reader can delay
/// reads by `patience`.
pub(crate) fn lock_contents_within(
    file: &File,
    use_: Contents,
    patience: std::time::Duration,
) -> bool {
    let deadline = std::time::Instant::now() + patience;
    lock_until(&mut || try_lock_contents(file, use_), deadline).is_ok()
}

/// One try, without waiting, at [`lock_contents_within`]'s lock; `WouldBlock` when another
/// holds a lock in the way.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn try_lock_contents(file: &File, use_: Contents) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // `flock64`: the kernel reads every OFD command's argument as one, and a 32-bit libc
    // may pass it straight through (bionic; glibc before 2.28), where a 32-bit `flock`
    // would be read past its end. All offsets zero reads the same either way.
    // SAFETY: a plain C struct, for which all zeroes is a valid value (and l_pid must be 0
    // for an open-file-description lock).
    let mut range: libc::flock64 = unsafe { std::mem::zeroed() };
    // The whole file, however long it grows: start 0, length 0.
    range.l_whence = libc::SEEK_SET as _;
    range.l_type = match use_ {
        Contents::Read => libc::F_RDLCK,
        Contents::Write => libc::F_WRLCK,
    } as _;
    // SAFETY: a valid descriptor, owned by `file`, and a valid `flock64` for the whole call.
    match unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &range) } {
        -1 => {
            let e = std::io::Error::last_os_error();
            // POSIX lets a conflict answer EACCES as well as EAGAIN.
            match e.raw_os_error() {
                Some(libc::EACCES) => Err(std::io::ErrorKind::WouldBlock.into()),
                _ => Err(e),
            }
        }
        _ => Ok(()),
    }
}

/// One try, without waiting, at [`lock_contents_within`]'s lock; `WouldBlock` when another
/// holds a lock in the way.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn try_lock_contents(file: &File, use_: Contents) -> std::io::Result<()> {
    let op = match use_ {
        Contents::Read => libc::LOCK_SH,
        Contents::Write => libc::LOCK_EX,
    };
    flock(file, op | libc::LOCK_NB)
}

/// Calls `try_lock` until it succeeds or `deadline` passes (then `WouldBlock`), pausing
/// 1 ms after the first refusal, then twice as long each time, at most 50 ms; any other
/// error at once.
fn lock_until(
    try_lock: &mut dyn FnMut() -> std::io::Result<()>,
    deadline: std::time::Instant,
) -> std::io::Result<()> {
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match try_lock() {
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Takes an exclusive `flock` on the directory `dir` itself (no lock file is made),
/// polling so that `stop` is asked every 50 ms while another holder has it; `Ok(None)`
/// where the file system takes no `flock` (then nothing is ordered, as before); a signal
/// that ends the wait ([`Pause`]) is an `io` error, never a turn. Dropping the returned
/// turn releases it. A second turn on `dir` asked for by the thread that
/// holds one (a download started from a download's progress callback) would wait for
/// itself: refused at once (`invalid_state`).
pub(crate) fn lock_dir(dir: &Path, stop: &dyn Fn() -> Result<()>) -> Result<Option<DirTurn>> {
    let file = File::open(dir).map_err(|e| Error::io("open to lock", dir, e))?;
    let key = file_id(&file.metadata().map_err(|e| Error::io("inspect", dir, e))?);
    if DIRS_HELD.with(|held| held.borrow().contains(&key)) {
        return Err(Error::invalid_state(format!(
            "expected no second download into {} from within one running there (a progress callback starting one), found one: it would wait for itself",
            dir.display()
        )));
    }
    match flock_polled(&file, stop)? {
        Ok(()) => {}
        // A signal ended the wait (as it ends a blocking `flock`): the other download
        // still has the directory, so this one must not go on as if nothing were ordered.
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
            return Err(Error::io("lock", dir, e));
        }
        Err(_) => return Ok(None),
    }
    DIRS_HELD.with(|held| held.borrow_mut().push(key));
    Ok(Some(DirTurn { _file: file, key }))
}

/// Which file `meta` is of (device and inode), however it was reached: the key of a lock
/// a thread holds. A bind mount is another path to the same files, which a path as the
/// key would take for other files, and the thread would wait for its own lock.
pub(crate) fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Takes an exclusive `flock` on `file`, trying every 50 ms and asking `stop` between
/// tries (its error ends the wait): a blocking `flock` would hear nothing until the
/// holder lets go. The outer result is `stop`'s, the inner the lock's, which a signal
/// ends as it ends a blocking `flock` ([`Pause`]).
fn flock_polled(file: &File, stop: &dyn Fn() -> Result<()>) -> Result<std::io::Result<()>> {
    let pause = Pause::new(std::time::Duration::from_millis(50));
    loop {
        match flock(file, libc::LOCK_EX | libc::LOCK_NB) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stop()?;
                if let Err(e) = pause.wait() {
                    return Ok(Err(e));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            taken => return Ok(taken),
        }
    }
}

/// The pause between two tries of a polled lock. Where it can (Linux, Android) it ends
/// early with `Interrupted` exactly when a blocking `flock` would: a signal handled without
/// `SA_RESTART` (Python's Ctrl-C), so a polled wait gives the host's interrupt back as the
/// blocking one does. A sleep cannot: it resumes after every handler, and a timed `poll`
/// or `nanosleep` ends after every handler, `SA_RESTART` or not. A read of a timerfd is
/// restarted or interrupted as `flock` is. Elsewhere, or without a timerfd, a sleep.
struct Pause {
    period: std::time::Duration,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    timer: Option<std::os::fd::OwnedFd>,
}

impl Pause {
    fn new(period: std::time::Duration) -> Pause {
        Pause {
            period,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            timer: {
                use std::os::fd::FromRawFd;
                // SAFETY: no pointers; a descriptor returned is owned from here on.
                let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
                // SAFETY: `fd` was just created and nothing else owns it.
                (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
            },
        }
    }

    fn wait(&self) -> std::io::Result<()> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(timer) = &self.timer {
            match timer_wait(timer, self.period) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Err(e),
                Err(_) => {} // a timer that failed: the lock is no worse for a sleep
                Ok(()) => return Ok(()),
            }
        }
        std::thread::sleep(self.period);
        Ok(())
    }
}

/// Arms `timer` (a timerfd) for `period` and reads it until it expires.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn timer_wait(timer: &std::os::fd::OwnedFd, period: std::time::Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: integers only (and padding on some targets): all zeros is a valid value.
    let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
    spec.it_value.tv_sec = period.as_secs() as libc::time_t;
    spec.it_value.tv_nsec = period.subsec_nanos() as libc::c_long;
    // SAFETY: a live timerfd and a valid `itimerspec`; the old value is not asked for.
    if unsafe { libc::timerfd_settime(timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut expirations = 0u64;
    // SAFETY: reads 8 bytes into a live `u64`.
    let read = unsafe {
        libc::read(
            timer.as_raw_fd(),
            std::ptr::from_mut(&mut expirations).cast(),
            std::mem::size_of::<u64>(),
        )
    };
    match read {
        8 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

thread_local! {
    /// The directories ([`file_id`]) this thread holds a [`lock_dir`] turn on.
    static DIRS_HELD: std::cell::RefCell<Vec<(u64, u64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A turn on a directory ([`lock_dir`]), released when dropped.
pub(crate) struct DirTurn {
    _file: File,
    key: (u64, u64),
}

impl Drop for DirTurn {
    fn drop(&mut self) {
        // `try_with`: a turn dropped while its thread exits finds the set gone.
        let _ = DIRS_HELD.try_with(|held| held.borrow_mut().retain(|k| *k != self.key));
    }
}

/// `flock(2)` on `file`. Not the standard library's `File::lock`, which up to Rust 1.95 at
/// least answers "not supported" on Android. A wait that a signal interrupts (a handler
/// installed without `SA_RESTART`, as Python's Ctrl-C is) ends with `Interrupted`, as
/// `File::lock` does: the host's interrupt is not held up until the other holder is done.
fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor, owned by `file` for the whole call.
    match unsafe { libc::flock(file.as_raw_fd(), op) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Removes `path` (a file, a symlink or a whole tree) if it exists. A directory inside
/// that its owner made read-only (an app's slot may have one) is opened up first: an
/// updater that is not root could not empty it, and every later install into the slot
/// would fail.
pub fn remove_all(path: &Path) -> Result<()> {
    crash_point("remove")?;
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("inspect", path, e)),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    open_up_dirs(path);
                    fs::remove_dir_all(path)
                }
                _ => Err(e),
            })
            .map_err(|e| Error::io("remove directory", path, e)),
        Ok(_) => fs::remove_file(path).map_err(|e| Error::io("remove", path, e)),
    }
}

/// Gives the owner full access to `dir` and every directory under it, following no
/// symlink; best effort (the removal that follows reports what still fails).
fn open_up_dirs(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        match fs::symlink_metadata(&d) {
            Ok(m) if m.is_dir() && is_mine(&m) => {
                // Never through a symlink: one put in place of the directory since (by a
                // user who may write its parent) must not turn the chmod onto a file it
                // points to. Without read access to it, as `chmod` needs none.
                let mode = (m.permissions().mode() | 0o700) as libc::mode_t;
                if let Ok(path) = c_string(d.as_os_str()) {
                    // SAFETY: a NUL-terminated path; the call touches no memory of ours.
                    unsafe {
                        libc::fchmodat(
                            libc::AT_FDCWD,
                            path.as_ptr(),
                            mode,
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    };
                }
            }
            _ => continue,
        }
        if let Ok(entries) = fs::read_dir(&d) {
            pending.extend(entries.flatten().map(|e| e.path()));
        }
    }
}

/// Points the symlink `link` at `target` atomically (new link beside it, then rename).
pub fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    let tmp = new_link_path(link);
    let _ = fs::remove_file(&tmp);
    crash_point("symlink")?;
    make_symlink(target, &tmp)?;
    crash_point("rename symlink")?;
    fs::rename(&tmp, link).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("replace symlink", link, e)
    })?;
    sync_dir(link.parent().unwrap_or(Path::new(".")))
}

/// Makes and removes the link [`replace_symlink`] would make beside `link`: a file system
/// without symlinks (vfat, exFAT) is found before a slot is emptied for a release that
/// could never be activated. Under the lock every switch of `link` holds, as its name is
/// theirs.
pub fn check_symlinks_beside(link: &Path) -> Result<()> {
    let tmp = new_link_path(link);
    let _ = fs::remove_file(&tmp);
    make_symlink(Path::new("."), &tmp)?;
    let _ = fs::remove_file(&tmp);
    Ok(())
}

/// `.<name>.new-<pid>` beside `link`.
fn new_link_path(link: &Path) -> PathBuf {
    let dir = link.parent().unwrap_or(Path::new("."));
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    dir.join(format!(".{name}.new-{}", std::process::id()))
}

fn make_symlink(target: &Path, at: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, at).map_err(|e| {
        // A file system without symlinks (vfat, exFAT): the kernel's `EPERM`, `ENOSYS` or
        // `EOPNOTSUPP` alone names no cause.
        let what = match e.raw_os_error() {
            Some(libc::EPERM | libc::ENOSYS | libc::EOPNOTSUPP) => {
                "create symlink (expected a file system with symbolic links)"
            }
            _ => "create symlink",
        };
        Error::io(what, at, e)
    })
}

/// A numbered point where the crash tests may stop the process.
///
/// With the `fault-injection` feature and `EVERGREEN_CRASH_AT=k` in the environment, the
/// k-th call (1-based, counted per process) aborts the process on the spot, as a power cut
/// would. With `EVERGREEN_FAIL_AT=<what>:<n>`, the n-th call of the point named `<what>`
/// fails instead (`io`), once, as the write or sync after it failing would. Without the
/// feature this is a no-op the compiler removes.
#[inline]
pub fn crash_point(_what: &str) -> Result<()> {
    #[cfg(feature = "fault-injection")]
    fault::hit(_what)?;
    Ok(())
}

#[cfg(feature = "fault-injection")]
mod fault {
    use crate::error::{Error, ErrorKind, Result};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static COUNT: AtomicU64 = AtomicU64::new(0);
    /// Calls so far of the point `EVERGREEN_FAIL_AT` names.
    static NAMED: AtomicU64 = AtomicU64::new(0);

    /// `EVERGREEN_FAIL_AT`: the name of a point and the call of it that fails.
    fn failing() -> Option<&'static (String, u64)> {
        static AT: OnceLock<Option<(String, u64)>> = OnceLock::new();
        AT.get_or_init(|| {
            let v = std::env::var("EVERGREEN_FAIL_AT").ok()?;
            let (what, n) = v.rsplit_once(':')?;
            Some((what.to_owned(), n.parse().ok()?))
        })
        .as_ref()
    }

    fn target() -> u64 {
        static AT: OnceLock<u64> = OnceLock::new();
        *AT.get_or_init(|| {
            std::env::var("EVERGREEN_CRASH_AT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
    }

    pub fn hit(what: &str) -> Result<()> {
        let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
        if n == target() {
            eprintln!("crash point {n} ({what}): aborting");
            std::process::abort();
        }
        if std::env::var_os("EVERGREEN_CRASH_COUNT").is_some() {
            eprintln!("crash-point {n} {what}");
        }
        match failing() {
            Some((name, at)) if name == what && NAMED.fetch_add(1, Ordering::SeqCst) + 1 == *at => {
                Err(Error::new(
                    ErrorKind::Io,
                    format!("{what}: failed on purpose at call {at} (EVERGREEN_FAIL_AT)"),
                ))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Held by a test while it starts a process, and by a test that needs the blocks of a
    /// file it deleted free at once. A child holds a copy of every open file of this
    /// process from its fork to its exec, so a file deleted then keeps its blocks a while
    /// (seen: a full-disk save found room it should not have, once in a few hundred runs).
    pub(crate) fn spawn_lock() -> std::sync::MutexGuard<'static, ()> {
        static SPAWNS: std::sync::Mutex<()> = std::sync::Mutex::new(());
        SPAWNS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A tmpfs in a temporary directory, unmounted when dropped; `None` where this process
    /// may not mount one (not root): the test is skipped, or fails under
    /// `EVERGREEN_REQUIRE_TOOLS`, as with the integration tests' `Mounted::tmpfs`.
    pub(crate) struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        /// One of `kib` KiB.
        pub(crate) fn new(kib: u64) -> Option<Tmpfs> {
            Tmpfs::with_options(&format!("size={kib}k"))
        }

        /// One mounted with `options` (`mount -o`).
        pub(crate) fn with_options(options: &str) -> Option<Tmpfs> {
            let dir = tempfile::tempdir().unwrap();
            let _spawning = spawn_lock();
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", options, "tmpfs"])
                .arg(dir.path())
                .output()
                .is_ok_and(|o| o.status.success());
            if mounted {
                return Some(Tmpfs(dir));
            }
            let needs = "mount with permission to mount a tmpfs (root)";
            assert!(
                std::env::var_os("EVERGREEN_REQUIRE_TOOLS").is_none(),
                "expected {needs} (EVERGREEN_REQUIRE_TOOLS is set), found none"
            );
            eprintln!("skipped: {needs} not installed");
            None
        }

        pub(crate) fn path(&self) -> &Path {
            self.0.path()
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _spawning = spawn_lock();
            let _ = std::process::Command::new("umount")
                .arg(self.path())
                .status();
        }
    }

    /// A polled wait for a lock (one a cancel can end) answers a signal as the blocking
    /// one does: a handler without `SA_RESTART` (Python's Ctrl-C) ends it with
    /// `Interrupted`, one with it does not. A sleep between the tries heard neither, and
    /// a Python host's Ctrl-C waited for the other holder's whole download.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_polled_lock_wait_ends_on_a_signal_as_a_blocking_one_does() {
        extern "C" fn heard(_: libc::c_int) {}

        /// Handles SIGUSR2 with `heard`, restarting interrupted calls or not.
        fn handle_sigusr2(restart: bool) {
            // SAFETY: a zeroed `sigaction` with a handler that does nothing is valid; the old
            // one is not asked for.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = heard as extern "C" fn(libc::c_int) as libc::sighandler_t;
                action.sa_flags = if restart { libc::SA_RESTART } else { 0 };
                libc::sigemptyset(&mut action.sa_mask);
                assert_eq!(
                    libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()),
                    0
                );
            }
        }

        use std::os::unix::thread::JoinHandleExt;
        use std::sync::mpsc;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("work.lock");
        for restart in [false, true] {
            handle_sigusr2(restart);
            let held = lock_exclusive(&path).unwrap();
            let (waits, waiting) = mpsc::channel();
            let (ends, ended) = mpsc::channel();
            let at = path.clone();
            let waiter = std::thread::spawn(move || {
                let on_wait = || waits.send(()).unwrap();
                let result =
                    lock_exclusive_or_stop(&at, LockAccess::AsFound, on_wait, Some(&|| Ok(())));
                ends.send(result.map(drop)).unwrap();
            });
            let long = std::time::Duration::from_secs(20);
            waiting.recv_timeout(long).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(120)); // inside the pause
                                                                       // SAFETY: the thread is alive until joined below.
            assert_eq!(
                unsafe { libc::pthread_kill(waiter.as_pthread_t(), libc::SIGUSR2) },
                0
            );
            if restart {
                let early = ended.recv_timeout(std::time::Duration::from_millis(300));
                assert!(early.is_err(), "SA_RESTART ended the wait: {early:?}");
                drop(held);
                let result = ended.recv_timeout(long).unwrap();
                assert!(result.is_ok(), "{result:?}");
            } else {
                // The lock is still held: only the signal can end the wait.
                let result = ended
                    .recv_timeout(long)
                    .expect("the signal did not end the wait");
                drop(held);
                let message = result.expect_err("the wait took the lock").to_string();
                assert!(message.contains("nterrupted"), "{message}");
            }
            waiter.join().unwrap();
        }
    }

    /// A download's turn in its directory (`lock_dir`) is one writer per `.part`: a
    /// signal handled without `SA_RESTART` (a Python host's own handler) during the wait
    /// must end it as an error, as it ends the work lock's wait, never give the turn while
    /// another download still holds the directory (`Ok(None)` is "no `flock` here, go on
    /// unordered").
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_signal_during_a_directory_turn_wait_gives_no_turn() {
        extern "C" fn heard(_: libc::c_int) {}
        // SAFETY: a zeroed `sigaction` with a handler that does nothing is valid; the old
        // one is not asked for. SIGUSR1: the other signal test changes SIGUSR2's handler.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = heard as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = 0;
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(
                libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
                0
            );
        }
        use std::os::unix::thread::JoinHandleExt;
        use std::sync::mpsc;
        let dir = tempfile::tempdir().unwrap();
        let held = File::open(dir.path()).unwrap();
        flock(&held, libc::LOCK_EX).unwrap();
        let (waits, waiting) = mpsc::channel();
        let (ends, ended) = mpsc::channel();
        let at = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            let stop = || {
                let _ = waits.send(());
                Ok(())
            };
            let result = lock_dir(&at, &stop).map(|turn| turn.is_some());
            ends.send(result).unwrap();
        });
        let long = std::time::Duration::from_secs(20);
        waiting.recv_timeout(long).unwrap();
        // Inside the pause.
        std::thread::sleep(std::time::Duration::from_millis(20));
        // SAFETY: the thread is alive until joined below.
        assert_eq!(
            unsafe { libc::pthread_kill(waiter.as_pthread_t(), libc::SIGUSR1) },
            0
        );
        let early = ended.recv_timeout(std::time::Duration::from_millis(1000));
        let ended_early = early.is_ok();
        drop(held);
        let result = match early {
            Ok(result) => result,
            Err(_) => ended.recv_timeout(long).unwrap(),
        };
        waiter.join().unwrap();
        assert!(
            !ended_early || result.is_err(),
            "expected the signal to end the wait with an error (or not at all), found {result:?} \
             while another download held the directory (Ok(false): the download goes on with no turn)"
        );
    }

    #[test]
    fn syncfs_is_trusted_from_linux_5_17_on() {
        for (release, at_least) in [
            ("5.17.0", true),
            ("6.1.0-13-amd64", true),
            ("6.18.44-fc-v1147", true),
            ("10.0", true),
            ("5.16.20", false),
            ("5.15.148-tegra", false),
            ("5.10.120-ti-r47", false),
            ("5.8.0", false),
            ("4.19.94-ti-r42", false),
            ("5", false),
            ("", false),
            ("linux-6.1", false),
        ] {
            assert_eq!(kernel_at_least(release, (5, 17)), at_least, "{release}");
        }
    }

    /// `syncfs` is used where it syncs and reports errors (tmpfs here), and not on a file
    /// system outside the list, where it may sync nothing (procfs stands in for FUSE).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn syncfs_only_on_the_file_systems_that_keep_its_promise() {
        if !kernel_at_least(&kernel_release().unwrap(), (5, 17)) {
            return;
        }
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let dir = File::open(shm.path()).unwrap();
        assert!(matches!(sync_file_system(&dir), Some(Ok(()))));
        let proc_dir = File::open("/proc/self").unwrap();
        assert!(sync_file_system(&proc_dir).is_none());
    }

    /// The same on a file system one of whose counts does not fit in 32 bits (a tmpfs with
    /// room for more than 2^32 inodes; a disk of more than 2^32 blocks is another), where
    /// a 32-bit `fstatfs` fails (`EOVERFLOW`) and told nothing of its type.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn syncfs_also_on_a_file_system_whose_counts_need_64_bits() {
        if !kernel_at_least(&kernel_release().unwrap(), (5, 17)) {
            return;
        }
        let Some(tmpfs) = Tmpfs::with_options("size=64k,nr_inodes=5000000000") else {
            return;
        };
        let synced = File::open(tmpfs.path()).map(|d| sync_file_system(&d));
        assert!(matches!(synced, Ok(Some(Ok(())))), "{synced:?}");
    }

    /// Where `link` fails for want of hard links (vfat, exFAT), a new file is renamed into
    /// place instead, and still never replaces one that is there.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn without_hard_links_a_new_file_is_renamed_into_place_and_replaces_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, dest) = (dir.path().join("tmp"), dir.path().join("1.json"));
        let unlinkable = || std::io::Error::from_raw_os_error(libc::EPERM);
        assert!(no_hard_links(&unlinkable()));
        fs::write(&tmp, b"first").unwrap();
        // The temp dir's file system (tmpfs, ext4, overlayfs) has RENAME_NOREPLACE.
        assert!(rename_new(&tmp, &dest, unlinkable()).unwrap());
        assert_eq!(fs::read(&dest).unwrap(), b"first");
        assert!(!tmp.exists());
        fs::write(&tmp, b"second").unwrap();
        assert!(!rename_new(&tmp, &dest, unlinkable()).unwrap());
        assert_eq!(fs::read(&dest).unwrap(), b"first");
    }

    /// What lets an updater that is not root remove a slot with read-only directories:
    /// every directory is opened to its owner, and no symlink is followed.
    #[test]
    fn read_only_directories_are_opened_to_their_owner_before_removal() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (tree, outside) = (dir.path().join("trash"), dir.path().join("outside"));
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).unwrap();
        let set = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m));
        set(&outside, 0o555).unwrap();
        set(&tree.join("a/b"), 0o000).unwrap();
        set(&tree.join("a"), 0o555).unwrap();
        open_up_dirs(&tree);
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            (mode(&tree.join("a")), mode(&tree.join("a/b"))),
            (0o755, 0o700)
        );
        assert_eq!(mode(&outside), 0o555, "a symlink was followed");
        remove_all(&tree).unwrap();
        assert!(!tree.exists());
    }

    /// A file where a directory is to be made is named as such, not as "File exists".
    #[test]
    fn a_file_in_place_of_a_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let downloads = dir.path().join("downloads");
        std::fs::write(&downloads, b"x").unwrap();
        let err = create_dir_all_mode(&downloads, 0o755).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Io);
        assert!(
            err.message()
                .ends_with("downloads: expected a directory there, found a file"),
            "{err}"
        );
        assert_eq!(std::fs::read(&downloads).unwrap(), b"x");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("dangling"))
            .unwrap();
        let err = create_dir_all_mode(&dir.path().join("dangling"), 0o755).unwrap_err();
        assert!(
            err.message().ends_with("found a symlink to no directory"),
            "{err}"
        );
    }

    /// procfs can't fsync a directory (`EINVAL`), like some shared-folder and network
    /// file systems a state directory may be on.
    #[test]
    fn a_directory_the_file_system_cannot_fsync_is_no_error() {
        let proc_dir = Path::new("/proc/self");
        if !proc_dir.is_dir() {
            return;
        }
        let raw = File::open(proc_dir).unwrap().sync_all().unwrap_err();
        assert_eq!(raw.kind(), std::io::ErrorKind::InvalidInput, "{raw}");
        sync_dir(proc_dir).unwrap();
        sync_parent(&proc_dir.join("status")).unwrap();
        // Other failures still are errors.
        let err = sync_dir(Path::new("/nonexistent-evergreen-dir")).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Io);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    /// What keeps a second `init` from replacing the root the first one wrote: the file
    /// appears after any check the caller made, and is still kept.
    #[test]
    fn a_no_replace_write_keeps_a_file_that_appeared_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.json");
        assert!(write_new_atomic(&path, b"first").unwrap());
        assert!(!write_new_atomic(&path, b"second").unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"first");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn temp_names_are_told_from_other_files() {
        let temps = [
            "incoming.tmp-123",
            "nightly.json.tmp-9",
            "1.json.tmp-1.tmp-2",
        ];
        let others = [
            "nightly.json",
            "x.tmp-",
            "x.tmp-12a",
            "x.tmp-1.json",
            "tmp-1",
            "abc",
        ];
        for name in temps {
            assert!(is_temp_name(OsStr::new(name)), "{name}");
        }
        for name in others {
            assert!(!is_temp_name(OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn stale_temps_in_a_directory_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.json", "a.json.tmp-1", "incoming.tmp-22", "notes.tmp-x"] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(
            temps_in(dir.path()),
            [
                dir.path().join("a.json.tmp-1"),
                dir.path().join("incoming.tmp-22")
            ]
        );
        remove_stale_temps_in(dir.path());
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["a.json", "notes.tmp-x"]);
    }

    /// Only `<file>.tmp-<digits>` of the one file: not the file of a channel named like
    /// one of its temps, nor that file's own temps, nor names that only start alike.
    #[test]
    fn the_stale_temps_of_one_file_are_its_own_alone() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "stable.json",
            "stable.json.tmp-12",
            "stable.json.tmp-1.json",
            "stable.json.tmp-1.json.tmp-99",
            "stable.json.tmp-",
            "stable.json.tmp-x",
        ];
        for name in names {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        remove_stale_temps(&dir.path().join("stable.json"));
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut kept: Vec<&str> = names
            .into_iter()
            .filter(|n| *n != "stable.json.tmp-12")
            .collect();
        kept.sort();
        assert_eq!(left, kept);
    }

    #[test]
    fn symlink_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("current");
        replace_symlink(Path::new("slots/a"), &link).unwrap();
        replace_symlink(Path::new("slots/b"), &link).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("slots/b"));
    }

    #[test]
    fn write_atomic_into_a_missing_directory_is_an_io_error_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("state.json");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Io);
        assert!(!path.exists());
    }

    #[test]
    fn a_failed_rename_keeps_the_old_file_and_removes_the_temp() {
        let dir = tempfile::tempdir().unwrap();
        // A directory in the way makes the rename fail after the temp was written.
        let path = dir.path().join("taken");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("child"), b"keep").unwrap();
        let err = write_atomic(&path, b"new").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Io);
        assert_eq!(fs::read(path.join("child")).unwrap(), b"keep");
        assert!(!temp_path(&path).exists());
    }
}
