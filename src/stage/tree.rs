//! File-system work of staging: the staging directory, file placement, tree copies and
//! durability.

use super::run_parallel;
use crate::error::{Error, Result};
use crate::manifest::is_safe_name;
use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of a directory while it is being staged: nobody else may look at half a component.
const STAGING_MODE: u32 = 0o700;
/// Mode of a finished component directory.
pub(super) const DIR_MODE: u32 = 0o755;

/// A directory being staged. Until [`StagingDir::finish`] it is 0700, and dropping it
/// removes whatever was written under it: the directory itself when it created it, else
/// its contents, and the adopted directory gets its mode from before back. A failure
/// leaves nothing half-written behind, and an empty directory as it found it.
pub(super) struct StagingDir<'a> {
    path: &'a Path,
    /// The mode of the empty directory it adopted; `None` when it created the directory.
    adopted_mode: Option<u32>,
    armed: bool,
}

impl<'a> StagingDir<'a> {
    /// Creates `path` (its parent must exist), or adopts it when it is an empty directory.
    pub(super) fn create(path: &'a Path) -> Result<StagingDir<'a>> {
        let adopted_mode = match DirBuilder::new().mode(STAGING_MODE).create(path) {
            Ok(()) => None,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let mode = expect_empty_dir(path)?;
                fs::set_permissions(path, Permissions::from_mode(STAGING_MODE))
                    .map_err(|e| Error::io("set the mode of", path, e))?;
                Some(mode)
            }
            Err(e) => return Err(Error::io("create directory", path, e)),
        };
        Ok(StagingDir {
            path,
            adopted_mode,
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
        let Some(mode) = self.adopted_mode else {
            let _ = fs::remove_dir_all(self.path);
            return;
        };
        if let Ok(entries) = fs::read_dir(self.path) {
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
        // Left at 0700, a directory the host made for others to read (a web root, a
        // shared component directory) would stay closed to them after a failed update.
        let _ = fs::set_permissions(self.path, Permissions::from_mode(mode));
    }
}

/// Refuses anything at `path` but an empty directory; returns that directory's mode
/// (permission, setgid and sticky bits).
fn expect_empty_dir(path: &Path) -> Result<u32> {
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io("inspect", path, e))?;
    let found = if meta.is_dir() {
        let mut entries = fs::read_dir(path).map_err(|e| Error::io("list", path, e))?;
        match entries.next() {
            None => return Ok(meta.permissions().mode() & 0o7777),
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
    match DirBuilder::new().mode(DIR_MODE).create(dest_dir) {
        // The umask may have cleared bits, or left group and other write set.
        Ok(()) => fs::set_permissions(dest_dir, Permissions::from_mode(DIR_MODE))
            .map_err(|e| Error::io("set the mode of", dest_dir, e))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("create directory", dest_dir, e)),
    }
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

/// Makes everything under `root` durable: the data of every regular file, every directory
/// (so names and symlinks are on disk), and the directory holding `root` (so `root`'s own
/// name is). Once, at the end, instead of a sync per write: one `syncfs` of the file system
/// holding `root` where the kernel reports its errors (Linux 5.17 and later), else a sync
/// of each file and directory spread over the cores.
///
/// The `syncfs` here reports the write errors nobody has seen yet: one another program's
/// `syncfs` saw first is missed. Open a [`WriteWatch`] before the writes to hear of every
/// error since.
///
/// ```
/// # fn main() -> evergreen::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("f"), b"x").unwrap();
/// evergreen::stage::make_durable(dir.path())?;
/// # Ok(()) }
/// ```
pub fn make_durable(root: &Path) -> Result<()> {
    WriteWatch::open(root)?.make_durable()
}

/// The write errors of a file system from the moment the watch was opened, for
/// [`make_durable`] to hear of: `syncfs` reports the errors new since its descriptor was
/// opened, or that nobody has seen. A descriptor opened only after the writes misses an
/// error that another program's `syncfs` (`sync -f`, a database) saw first, and the data
/// it lost would be called durable.
///
/// The errors are the file system's, not the tree's: another program's lost write on the
/// same file system after the watch opened fails the sync too. That errs on the safe
/// side, the message says it may not be the tree's, and a new watch (the next install)
/// starts clean.
///
/// ```
/// # fn main() -> evergreen::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let watch = evergreen::stage::WriteWatch::open(dir.path())?;
/// std::fs::write(dir.path().join("f"), b"x").unwrap();
/// watch.make_durable()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct WriteWatch {
    /// The tree the watch was opened on.
    root: PathBuf,
    /// `root` itself, opened when the watch was.
    opened: File,
}

impl WriteWatch {
    /// Opens a watch on the file system holding `root` (a directory or a file), before
    /// the writes under it.
    pub fn open(root: &Path) -> Result<WriteWatch> {
        let opened = open_for_sync(root).map_err(|e| Error::io("open for sync", root, e))?;
        Ok(WriteWatch {
            root: root.to_owned(),
            opened,
        })
    }

    /// [`make_durable`] of the tree the watch was opened on, reporting every write error
    /// on its file system since then.
    pub fn make_durable(&self) -> Result<()> {
        let root = self.root.as_path();
        let meta = self
            .opened
            .metadata()
            .map_err(|e| Error::io("inspect", root, e))?;
        let parent = root.parent().filter(|p| !p.as_os_str().is_empty());
        if !meta.is_dir() {
            crate::fsutil::sync_file_data(&self.opened).map_err(|e| Error::io("sync", root, e))?;
            return parent.map_or(Ok(()), |p| sync(p, false));
        }
        match crate::fsutil::sync_file_system(&self.opened) {
            Some(synced) => {
                synced.map_err(|e| {
                    Error::io("sync the file system holding", root, e).map_message(|m| {
                        format!("{m} (a write on that file system failed since the watch began, maybe another program's)")
                    })
                })?;
                // `root` may be a mount point, its name on the parent's file system.
                parent.map_or(Ok(()), |p| sync(p, false))
            }
            None => sync_each(root, parent),
        }
    }
}

/// [`make_durable`] of the directory `root` file by file: every regular file's data, then
/// every directory and `parent`, each spread over the cores.
fn sync_each(root: &Path, parent: Option<&Path>) -> Result<()> {
    // Files are kept as their directory (an index into `dirs`) and their own name, not a
    // whole path each: 10,000 files under a directory 3.6 KB deep took 37 MB as paths.
    let mut files: Vec<(usize, OsString)> = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while let Some(dir) = dirs.get(i).cloned() {
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let kind = entry
                .file_type()
                .map_err(|e| Error::io("inspect", &entry.path(), e))?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                files.push((i, entry.file_name()));
            }
        }
        i += 1;
    }
    dirs.extend(parent.map(Path::to_path_buf));
    run_parallel(
        &files,
        || Ok(()),
        |_, (dir, name)| sync(&dirs[*dir].join(name), true),
    )?;
    run_parallel(&dirs, || Ok(()), |_, p| sync(p, false))
}

/// Syncs the file or directory at `path`: its data alone when `data_only`.
fn sync(path: &Path, data_only: bool) -> Result<()> {
    let file = open_for_sync(path).map_err(|e| Error::io("open for sync", path, e))?;
    let synced = if data_only {
        crate::fsutil::sync_file_data(&file)
    } else {
        crate::fsutil::sync_file(&file)
    };
    synced.map_err(|e| Error::io("sync", path, e))
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

    /// The walk that stands in for `syncfs` where the kernel would not report its errors
    /// goes through symlinks and write-only files without an error, and names a root that
    /// is not there. (That each fsync happened cannot be seen from here.)
    #[test]
    fn the_file_by_file_sync_walks_links_and_write_only_files_and_names_a_missing_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("slot");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f"), b"x").unwrap();
        fs::write(root.join("write-only"), b"y").unwrap();
        fs::set_permissions(root.join("write-only"), Permissions::from_mode(0o200)).unwrap();
        std::os::unix::fs::symlink("a/b/f", root.join("link")).unwrap();
        sync_each(&root, Some(tmp.path())).unwrap();

        let gone = root.join("gone");
        let err = sync_each(&gone, Some(&root)).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Io);
        assert!(err.to_string().contains("gone"), "{err}");
    }
}
