//! Crash-safe file writes: temp file in the same directory → fsync → rename → fsync the
//! directory, so a reader (or the next boot) sees either the old bytes or the new ones,
//! never a torn file, and the rename itself survives a power cut.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `<file>.tmp-<pid>` next to `path`: same directory, so the rename never crosses a file
/// system, and per process, so two writers never share a temp file.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Replaces `path` with `bytes` atomically and durably.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let result = create_temp(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)
                .map_err(|e| Error::io("write", &tmp, e))?;
            Ok(f)
        })
        .and_then(|f| persist(f, &tmp, path));
    if result.is_err() {
        // Best effort: a leftover temp file is harmless but untidy.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates (or truncates) a temp file for [`persist`].
pub(crate) fn create_temp(tmp: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(|e| Error::io("create", tmp, e))
}

/// Makes the fully written temp file `file` (at `tmp`) durable and renames it to `dest`.
pub(crate) fn persist(file: File, tmp: &Path, dest: &Path) -> Result<()> {
    file.sync_all().map_err(|e| Error::io("fsync", tmp, e))?;
    drop(file);
    std::fs::rename(tmp, dest).map_err(|e| Error::io("rename into", dest, e))?;
    sync_parent(dest)
}

/// Fsyncs the directory holding `path`, which is what makes a rename or a new entry durable.
pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    sync_dir(dir)
}

/// Fsyncs a directory (a no-op where directories cannot be opened, i.e. Windows).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync directory", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two, longer");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
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
        std::fs::create_dir(path.join("child").parent().unwrap()).unwrap();
        std::fs::write(path.join("child"), b"keep").unwrap();
        let err = write_atomic(&path, b"new").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Io);
        assert_eq!(std::fs::read(path.join("child")).unwrap(), b"keep");
        assert!(!temp_path(&path).exists());
    }
}
