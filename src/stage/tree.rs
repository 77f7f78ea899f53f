//! File-system work of staging: the staging directory, file placement, tree copies and
//! durability.

use super::record::RecordedLink;
use super::{run_parallel, ExtractStats};
use crate::error::{Error, ErrorKind, Result};
use crate::manifest::is_safe_name;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of a directory while it is being staged: nobody else may look at half a component.
const STAGING_MODE: u32 = 0o700;
/// Mode of a finished component directory.
pub(super) const DIR_MODE: u32 = 0o755;

/// A directory being staged. Until [`StagingDir::finish`] it is 0700, and dropping it
/// removes whatever was written under it (and the directory itself when it created it),
/// so a failure leaves nothing half-written behind.
pub(super) struct StagingDir<'a> {
    path: &'a Path,
    created: bool,
    armed: bool,
}

impl<'a> StagingDir<'a> {
    /// Creates `path` (its parent must exist), or adopts it when it is an empty directory.
    pub(super) fn create(path: &'a Path) -> Result<StagingDir<'a>> {
        let created = match DirBuilder::new().mode(STAGING_MODE).create(path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                expect_empty_dir(path)?;
                fs::set_permissions(path, Permissions::from_mode(STAGING_MODE))
                    .map_err(|e| Error::io("set the mode of", path, e))?;
                false
            }
            Err(e) => return Err(Error::io("create directory", path, e)),
        };
        Ok(StagingDir {
            path,
            created,
            armed: true,
        })
    }

    /// Gives the finished directory its final `mode` and keeps its contents.
    pub(super) fn finish(mut self, mode: u32) -> Result<()> {
        fs::set_permissions(self.path, Permissions::from_mode(mode))
            .map_err(|e| Error::io("set the mode of", self.path, e))?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for StagingDir<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Best effort: the error that got us here is the one worth reporting.
        // `remove_dir_all` does not follow symlinks, so this stays inside the directory.
        if self.created {
            let _ = fs::remove_dir_all(self.path);
        } else if let Ok(entries) = fs::read_dir(self.path) {
            for entry in entries.flatten() {
                let p = entry.path();
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                let _ = if is_dir {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }
}

fn expect_empty_dir(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io("inspect", path, e))?;
    let found = if meta.is_dir() {
        let mut entries = fs::read_dir(path).map_err(|e| Error::io("list", path, e))?;
        match entries.next() {
            None => return Ok(()),
            Some(_) => "a directory that is not empty",
        }
    } else if meta.file_type().is_symlink() {
        "a symlink"
    } else {
        "a file"
    };
    Err(Error::invalid_state(format!(
        "staging {}: expected a new or empty directory, found {found}",
        path.display()
    )))
}

/// Creates the directories `dirs` (relative to `dest`, parents first) with mode 0755
/// whatever the umask. Returns how many.
pub(super) fn create_dirs<'a>(
    dest: &Path,
    dirs: impl IntoIterator<Item = &'a String>,
) -> Result<u64> {
    let mut count = 0;
    for dir in dirs {
        let path = dest.join(dir);
        DirBuilder::new()
            .mode(DIR_MODE)
            .create(&path)
            .map_err(|e| Error::io("create directory", &path, e))?;
        // Called before any symlink exists under `dest`, so this path can't be redirected.
        fs::set_permissions(&path, Permissions::from_mode(DIR_MODE))
            .map_err(|e| Error::io("set the mode of", &path, e))?;
        count += 1;
    }
    Ok(count)
}

/// Creates the symlinks `links` under `dest`: called last, so that no file is ever
/// written while a symlink exists under `dest`. Returns how many.
pub(super) fn create_symlinks(dest: &Path, links: &[RecordedLink]) -> Result<u64> {
    for link in links {
        let path = dest.join(&link.path);
        std::os::unix::fs::symlink(&link.target, &path)
            .map_err(|e| Error::io("create symlink", &path, e))?;
    }
    Ok(links.len() as u64)
}

/// Creates a new file for writing with `mode`; never opens an existing path.
///
/// `create_new` is `O_CREAT | O_EXCL`, which refuses an existing name *including a
/// symlink*, so nothing planted earlier can redirect the write.
pub(super) fn create_new_file(path: &Path, mode: u32) -> Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io("create", path, e))?;
    // The umask may have cleared bits the mode asks for; fchmod on the open file can't be
    // redirected.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(|e| Error::io("set the mode of", path, e))?;
    Ok(file)
}

/// Places a `file` artifact as `dest_dir/name`, copying from the verified open file
/// `src` (from its start; its offset is left at the end), so no one can swap the file
/// between the hash check and the copy. `dest_dir` is created when missing, with mode 0755
/// whatever the umask; the file gets mode 0644 and must not exist yet. Returns the bytes written. Not synced: see
/// [`make_durable`].
///
/// ```
/// # fn main() -> evergreen::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let blob = dir.path().join("blob");
/// std::fs::write(&blob, b"{}").unwrap();
/// let src = std::fs::File::open(&blob).unwrap();
/// let n = evergreen::stage::place_file(&src, &dir.path().join("config"), "settings.json")?;
/// assert_eq!(n, 2);
/// # Ok(()) }
/// ```
pub fn place_file(src: &File, dest_dir: &Path, name: &str) -> Result<u64> {
    if !is_safe_name(name) {
        return Err(Error::config(format!(
            "placing a file artifact: expected a plain file name, found {name:?}"
        )));
    }
    create_component_dir(dest_dir)?;
    let dest = dest_dir.join(name);
    let mut out = create_new_file(&dest, 0o644)?;
    let mut reader = src;
    let copied = reader
        .seek(SeekFrom::Start(0))
        .and_then(|_| io::copy(&mut reader, &mut out));
    match copied {
        Ok(n) => Ok(n),
        Err(e) => {
            let _ = fs::remove_file(&dest);
            Err(Error::io("copy the artifact to", &dest, e))
        }
    }
}

/// Creates the component directory `dest_dir` of a file artifact, 0755 whatever the
/// umask, unless it exists.
pub(super) fn create_component_dir(dest_dir: &Path) -> Result<()> {
    match DirBuilder::new().mode(DIR_MODE).create(dest_dir) {
        // The umask may have cleared bits, or left group and other write set.
        Ok(()) => fs::set_permissions(dest_dir, Permissions::from_mode(DIR_MODE))
            .map_err(|e| Error::io("set the mode of", dest_dir, e)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("create directory", dest_dir, e)),
    }
}

/// Copies the component directory `src` (of the primary slot) to the new directory `dst`
/// for an Unchanged component: regular files with their permission bits (setuid, setgid
/// and sticky dropped), directories (owner-writable: the slot is emptied for a later
/// install), and symlinks as symlinks (never followed). A directory replaced while it is
/// copied (by a symlink to elsewhere) fails the copy. `dst` must
/// not exist or be empty; it is 0700 until the copy is complete. On failure nothing is
/// left under `dst`. Not synced: see [`make_durable`].
///
/// ```
/// # fn main() -> evergreen::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::create_dir(dir.path().join("old")).unwrap();
/// std::fs::write(dir.path().join("old/app.bin"), b"v1").unwrap();
/// let stats = evergreen::stage::copy_tree(&dir.path().join("old"), &dir.path().join("new"))?;
/// assert_eq!((stats.files, stats.bytes), (1, 2));
/// # Ok(()) }
/// ```
pub fn copy_tree(src: &Path, dst: &Path) -> Result<ExtractStats> {
    let root = fs::symlink_metadata(src).map_err(|e| Error::io("inspect", src, e))?;
    if !root.is_dir() {
        return Err(Error::invalid_state(format!(
            "copying component {}: expected a directory, found {}",
            src.display(),
            if root.file_type().is_symlink() {
                "a symlink"
            } else {
                "a file"
            }
        )));
    }
    let root_mode = owner_only_writes(root.permissions().mode());
    let staging = StagingDir::create(dst)?;
    let mut stats = ExtractStats::default();
    // Directory modes are applied last, deepest first, so a read-only directory in the
    // source does not stop us from filling its copy.
    let mut dir_modes = Vec::new();
    let mut pending = vec![(src.to_path_buf(), dst.to_path_buf(), id(&root))];
    while let Some((from, to, listed)) = pending.pop() {
        // The app may write its own slot: a directory swapped for a symlink after it was
        // listed would copy whatever that points to. Checked before and after its
        // entries are copied; the copy fails either way, leaving nothing.
        same_directory(&from, listed)?;
        let entries = fs::read_dir(&from).map_err(|e| Error::io("list", &from, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &from, e))?;
            let (s, d) = (entry.path(), to.join(entry.file_name()));
            let meta = fs::symlink_metadata(&s).map_err(|e| Error::io("inspect", &s, e))?;
            let kind = meta.file_type();
            let mode = meta.permissions().mode() & 0o777;
            if kind.is_dir() {
                DirBuilder::new()
                    .mode(STAGING_MODE)
                    .create(&d)
                    .map_err(|e| Error::io("create directory", &d, e))?;
                stats.dirs += 1;
                dir_modes.push((d.clone(), owner_only_writes(mode)));
                pending.push((s, d, id(&meta)));
            } else if kind.is_symlink() {
                let target = fs::read_link(&s).map_err(|e| Error::io("read symlink", &s, e))?;
                std::os::unix::fs::symlink(&target, &d)
                    .map_err(|e| Error::io("create symlink", &d, e))?;
                stats.symlinks += 1;
            } else if kind.is_file() {
                stats.bytes += copy_file(&s, &d, mode, &meta)?;
                stats.files += 1;
            } else {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "copying {}: expected a file, directory or symlink, found a special file",
                        s.display()
                    ),
                ));
            }
        }
        same_directory(&from, listed)?;
    }
    for (dir, mode) in dir_modes.iter().rev() {
        fs::set_permissions(dir, Permissions::from_mode(*mode))
            .map_err(|e| Error::io("set the mode of", dir, e))?;
    }
    staging.finish(root_mode)?;
    Ok(stats)
}

/// A copied directory's mode: writable by its owner, whatever the source says (the
/// updater empties the slot for a later install, which a read-only directory would stop),
/// and by no one else (a directory left 0777 by an old umask is not carried on).
fn owner_only_writes(mode: u32) -> u32 {
    (mode & 0o755) | 0o700
}

/// A file's identity: device and inode.
fn id(meta: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Refuses `dir` unless it is still the directory listed as `listed`.
fn same_directory(dir: &Path, listed: (u64, u64)) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() && id(&m) == listed => Ok(()),
        Ok(_) => Err(Error::invalid_state(format!(
            "copying {}: expected the directory listed, found it replaced during the copy",
            dir.display()
        ))),
        Err(e) => Err(Error::io("inspect", dir, e)),
    }
}

/// Copies the regular file `src`, which `seen` describes, into a new `dst`.
fn copy_file(src: &Path, dst: &Path, mode: u32, seen: &fs::Metadata) -> Result<u64> {
    let mut from = crate::fsutil::open_no_follow(src)?;
    // The app may write its own slot: a file swapped for a symlink between the look and
    // the open would copy whatever the link names. What was opened must be what was seen.
    let opened = from.metadata().map_err(|e| Error::io("inspect", src, e))?;
    if id(&opened) != id(seen) {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "copying {}: expected the regular file listed there, found it replaced while copying",
                src.display()
            ),
        ));
    }
    let mut to = create_new_file(dst, mode)?;
    // File-to-file `io::copy` uses copy_file_range on Linux: no user-space buffer, and a
    // reflink where the file system can.
    io::copy(&mut from, &mut to).map_err(|e| Error::io("copy to", dst, e))
}

/// Makes everything under `root` durable: the data of every regular file, every directory
/// (so names and symlinks are on disk), and the directory holding `root` (so `root`'s own
/// name is). One pass at the end, spread over the cores, instead of a sync per write.
///
/// ```
/// # fn main() -> evergreen::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("f"), b"x").unwrap();
/// evergreen::stage::make_durable(dir.path())?;
/// # Ok(()) }
/// ```
pub fn make_durable(root: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(root).map_err(|e| Error::io("inspect", root, e))?;
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    if meta.is_dir() {
        dirs.push(root.to_path_buf());
    } else {
        files.push(root.to_path_buf());
    }
    let mut i = 0;
    while let Some(dir) = dirs.get(i).cloned() {
        i += 1;
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let kind = entry
                .file_type()
                .map_err(|e| Error::io("inspect", &entry.path(), e))?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        dirs.push(parent.to_path_buf());
    }
    let sync = |path: &PathBuf, data_only: bool| -> Result<()> {
        let file = open_for_sync(path).map_err(|e| Error::io("open for sync", path, e))?;
        let synced = if data_only {
            file.sync_data()
        } else {
            file.sync_all()
        };
        synced.map_err(|e| Error::io("sync", path, e))
    };
    run_parallel(&files, || Ok(()), |_, p| sync(p, true))?;
    run_parallel(&dirs, || Ok(()), |_, p| sync(p, false))
}

/// Any descriptor can be fsynced: a file copied with mode 0200 (or 0000, as root) is
/// opened for writing when it can't be opened for reading.
fn open_for_sync(path: &Path) -> io::Result<File> {
    match File::open(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            OpenOptions::new().write(true).open(path)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The app may swap a directory of its slot for a symlink to elsewhere while the
    /// copy walks it: the walk checks each directory is the one it listed.
    #[test]
    fn a_directory_replaced_by_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (sub, elsewhere) = (dir.path().join("sub"), dir.path().join("elsewhere"));
        fs::create_dir(&sub).unwrap();
        fs::create_dir(&elsewhere).unwrap();
        let listed = id(&fs::symlink_metadata(&sub).unwrap());
        same_directory(&sub, listed).unwrap();
        fs::rename(&sub, dir.path().join("sub.real")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &sub).unwrap();
        let err = same_directory(&sub, listed).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
        assert!(err.message().contains("replaced during the copy"), "{err}");
    }

    /// A read-only directory in the running slot is copied owner-writable, so the next
    /// install can empty the slot.
    #[test]
    fn copied_directories_are_owner_writable() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("old");
        fs::create_dir_all(src.join("share/deep")).unwrap();
        fs::write(src.join("share/deep/data"), b"x").unwrap();
        for (d, mode) in [("share/deep", 0o555), ("share", 0o500)] {
            fs::set_permissions(src.join(d), Permissions::from_mode(mode)).unwrap();
        }
        let dst = dir.path().join("new");
        copy_tree(&src, &dst).unwrap();
        let mode = |p: &str| fs::metadata(dst.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode("share"), mode("share/deep")), (0o700, 0o755));
        assert_eq!(fs::read(dst.join("share/deep/data")).unwrap(), b"x");
        for d in ["share", "share/deep"] {
            fs::set_permissions(src.join(d), Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn a_file_replaced_between_the_look_and_the_open_is_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let (listed, elsewhere) = (dir.path().join("listed"), dir.path().join("secret"));
        fs::write(&listed, b"app data").unwrap();
        fs::write(&elsewhere, b"not the app's").unwrap();
        let seen = fs::symlink_metadata(&listed).unwrap();
        // The swap: the name now leads to another file. (The listed file is kept aside,
        // so that its inode number is not reused by what takes its place.)
        fs::rename(&listed, dir.path().join("listed.real")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &listed).unwrap();
        let dst = dir.path().join("copy");
        // A symlink is not followed.
        let err = copy_file(&listed, &dst, 0o644, &seen).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(!dst.exists());
        // Another file under the name is caught by its identity.
        fs::remove_file(&listed).unwrap();
        fs::hard_link(&elsewhere, &listed).unwrap();
        let err = copy_file(&listed, &dst, 0o644, &seen).unwrap_err();
        assert!(err.message().contains("replaced while copying"), "{err}");
        assert!(!dst.exists());
        // A FIFO is refused without waiting for a writer.
        fs::remove_file(&listed).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&listed).status();
        assert!(made.unwrap().success());
        let err = copy_file(&listed, &dst, 0o644, &seen).unwrap_err();
        assert!(err.message().contains("replaced while copying"), "{err}");
        assert!(!dst.exists());
        // Unswapped, it copies.
        let seen = fs::metadata(&elsewhere).unwrap();
        assert_eq!(copy_file(&elsewhere, &dst, 0o644, &seen).unwrap(), 13);
    }
}
