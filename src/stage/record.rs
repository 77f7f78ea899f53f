//! The record of an extracted tree, and the checked copies of Unchanged components.
//!
//! A `zip` artifact's SHA-256 says nothing about the tree it became once extracted, and the
//! app may write its own slot (logs, a settings file, an edit by hand). So extraction
//! records what it wrote: every directory, every file with its mode, size and SHA-256 (hashed
//! as it was inflated from the verified archive), every symlink with its target. The record
//! is kept in the slot, in `.evergreen-trees/<component>`, and its own size and SHA-256 (a
//! [`RecordDigest`]) in the state, which the app cannot write: a record read back must be
//! those bytes, reached without following a symlink anywhere on its path. An Unchanged
//! copy then takes exactly what the record lists, each file reached the same way and
//! checked as it is written, so the new slot holds the extracted tree or the copy fails
//! with `hash_mismatch` (the updater then installs the component from its artifact at the
//! next update; a record that cannot vouch for a copy makes the plan carry the artifact).

use super::tree::{
    create_component_dir, create_dirs, create_new_file, create_symlinks, StagingDir, DIR_MODE,
};
use super::{run_parallel, ExtractStats, BUF_SIZE};
use crate::error::{Error, ErrorKind, Result};
use crate::manifest::Artifact;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The directory of a slot that holds the tree records of its extracted components. Its
/// name starts with a dot, which no component name may (`manifest::is_safe_name`).
pub const TREES_DIR: &str = ".evergreen-trees";

/// What extracting one archive wrote, relative to the component directory.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeRecord {
    /// Directories, parents first (sorted).
    pub dirs: Vec<String>,
    /// Regular files, sorted by path.
    pub files: Vec<RecordedFile>,
    /// Symlinks, sorted by path.
    pub symlinks: Vec<RecordedLink>,
}

/// A regular file of a [`TreeRecord`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RecordedFile {
    /// Path relative to the component directory.
    pub path: String,
    /// Permission bits it was created with (0644 or 0755).
    pub mode: u32,
    /// Its length in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of its content.
    pub sha256: String,
}

/// A symlink of a [`TreeRecord`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RecordedLink {
    /// Path relative to the component directory.
    pub path: String,
    /// What it points to, as extracted (relative, inside the component).
    pub target: String,
}

/// What the state keeps of a record: its length and SHA-256, so that one read back is
/// known to be the bytes extraction wrote.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RecordDigest {
    /// Length of the record file in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the record file.
    pub sha256: String,
}

impl TreeRecord {
    /// Where the slot directory `slot_dir` keeps the record of `component`.
    pub fn path(slot_dir: &Path, component: &str) -> PathBuf {
        slot_dir.join(TREES_DIR).join(component)
    }

    /// Writes the record of `component` into the slot being staged at `slot_dir`, and
    /// returns its digest for the state. Not synced: the slot is made durable as a whole
    /// ([`super::make_durable`]).
    pub fn save(&self, slot_dir: &Path, component: &str) -> Result<RecordDigest> {
        crate::fsutil::create_dir_all(&slot_dir.join(TREES_DIR))?;
        let path = Self::path(slot_dir, component);
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::new(ErrorKind::Io, format!("encoding {}: {e}", path.display())))?;
        let mut file = create_new_file(&path, 0o644)?;
        file.write_all(&json)
            .map_err(|e| Error::io("write", &path, e))?;
        Ok(RecordDigest {
            size: json.len() as u64,
            sha256: crate::trust::hex(&Sha256::digest(&json)),
        })
    }

    /// The record of `component` in the slot at `slot_dir`, which must be the bytes
    /// `digest` describes: a regular file reached from the slot's directory without
    /// following a symlink anywhere on its path, of the digest's size, read no further.
    /// Anything else is [`ErrorKind::HashMismatch`]: a record gone or changed cannot vouch
    /// for a copy.
    pub fn load(slot_dir: &Path, component: &str, digest: &RecordDigest) -> Result<TreeRecord> {
        let path = Self::path(slot_dir, component);
        let differs = |found: &str| {
            Error::new(
                ErrorKind::HashMismatch,
                format!(
                    "{}: expected the record written at install ({} bytes with sha256 {}), found {found}",
                    path.display(),
                    digest.size,
                    digest.sha256
                ),
            )
        };
        let slot = Source::open(slot_dir, "the slot's directory")?;
        let rel = format!("{TREES_DIR}/{component}");
        let (file, len) = open_regular(&slot.dir, &rel, &path, &differs)?;
        if len != digest.size {
            return Err(differs(&format!("{len} bytes")));
        }
        let mut bytes = Vec::new();
        file.take(digest.size.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("read", &path, e))?;
        let sha256 = crate::trust::hex(&Sha256::digest(&bytes));
        if bytes.len() as u64 != digest.size || sha256 != digest.sha256 {
            let found = format!("{} bytes with sha256 {sha256}", bytes.len());
            return Err(differs(&found));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(
                ErrorKind::HashMismatch,
                format!(
                    "{}: expected a tree record this version reads, found one it does not ({e})",
                    path.display()
                ),
            )
        })
    }

    /// What copying or extracting this tree creates.
    pub(super) fn stats(&self) -> ExtractStats {
        ExtractStats {
            files: self.files.len() as u64,
            dirs: self.dirs.len() as u64,
            symlinks: self.symlinks.len() as u64,
            bytes: self.files.iter().map(|f| f.size).sum(),
        }
    }

    /// Puts the lists in their documented order, whatever order the workers finished in.
    pub(super) fn sort(&mut self) {
        self.dirs.sort();
        self.files.sort_by(|a, b| a.path.cmp(&b.path));
        self.symlinks.sort_by(|a, b| a.path.cmp(&b.path));
    }
}

/// SHA-256 of a stream as it is written: the extraction's and the copy's shared hasher.
#[derive(Default)]
pub(super) struct Hashed {
    hasher: Sha256,
    len: u64,
}

impl Hashed {
    pub(super) fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// The file's entry in a record.
    pub(super) fn finish(self, path: &str, mode: u32) -> RecordedFile {
        RecordedFile {
            path: path.to_string(),
            mode,
            size: self.len,
            sha256: crate::trust::hex(&self.hasher.finalize()),
        }
    }
}

/// Copies an Unchanged `zip` component from the primary slot's directory `src` into the
/// new directory `dst`, taking exactly what `record` lists: its directories (0755) and
/// symlinks are made from the record, and each file is read from `src` (never through a
/// symlink; a FIFO or device is refused) and must have the recorded size and SHA-256.
/// Anything else under `src` (files the app added) is left behind. A file missing or
/// different is [`ErrorKind::HashMismatch`], naming it. `dst` must not exist or be empty;
/// on failure nothing is left under it. Not synced: see [`super::make_durable`].
///
/// ```
/// # fn main() -> evergreen::Result<()> {
/// use evergreen::stage::{copy_recorded, extract_zip_recorded, ArchiveLimits};
/// use std::io::Write;
/// let dir = tempfile::tempdir().unwrap();
/// let zip_path = dir.path().join("app.zip");
/// let mut w = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
/// w.start_file("bin/app", zip::write::SimpleFileOptions::default()).unwrap();
/// w.write_all(b"v1").unwrap();
/// w.finish().unwrap();
/// let archive = std::fs::File::open(&zip_path).unwrap();
/// let old = dir.path().join("old");
/// let (_, record) = extract_zip_recorded(&archive, &old, None, &ArchiveLimits::default())?;
///
/// std::fs::write(old.join("app.log"), b"written by the app").unwrap();
/// let stats = copy_recorded(&old, &dir.path().join("new"), &record)?;
/// assert_eq!((stats.files, stats.bytes), (1, 2));
/// assert!(!dir.path().join("new/app.log").exists());
///
/// std::fs::write(old.join("bin/app"), b"v2").unwrap();
/// let err = copy_recorded(&old, &dir.path().join("newer"), &record).unwrap_err();
/// assert_eq!(err.kind(), evergreen::ErrorKind::HashMismatch);
/// # Ok(()) }
/// ```
pub fn copy_recorded(src: &Path, dst: &Path, record: &TreeRecord) -> Result<ExtractStats> {
    let src = Source::open(src, "the component's directory")?;
    let staging = StagingDir::create(dst)?;
    create_dirs(dst, &record.dirs)?;
    let mut by_size: Vec<&RecordedFile> = record.files.iter().collect();
    by_size.sort_by_key(|f| std::cmp::Reverse(f.size));
    run_parallel(
        &by_size,
        || Ok(vec![0u8; BUF_SIZE]),
        |buf, file| copy_checked(&src, dst, file, buf),
    )?;
    create_symlinks(dst, &record.symlinks)?;
    staging.finish(DIR_MODE)?;
    Ok(record.stats())
}

/// A directory of the primary slot, open: every file is reached from it by
/// [`crate::fsutil::open_beneath`], never by a path that could lead elsewhere.
struct Source<'a> {
    path: &'a Path,
    dir: fs::File,
}

impl<'a> Source<'a> {
    /// Opens `path`, which must be a directory itself (`what` names it in errors).
    fn open(path: &'a Path, what: &str) -> Result<Source<'a>> {
        let dir = crate::fsutil::open_dir_no_follow(path).map_err(|e| {
            let found = match e.raw_os_error() {
                Some(libc::ENOENT) => "none",
                Some(libc::ELOOP | libc::ENOTDIR) => "something other than a directory",
                _ => return Error::io("open", path, e),
            };
            Error::new(
                ErrorKind::HashMismatch,
                format!("{}: expected {what}, found {found}", path.display()),
            )
        })?;
        Ok(Source { path, dir })
    }
}

/// Opens the regular file `rel` beneath `dir` (at `path`, for errors) and returns it with
/// its length. Anything else found there is described to `differs`: a tree that is not
/// the recorded one.
fn open_regular(
    dir: &fs::File,
    rel: &str,
    path: &Path,
    differs: &dyn Fn(&str) -> Error,
) -> Result<(fs::File, u64)> {
    let file = crate::fsutil::open_beneath(dir, rel).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => differs("none"),
        Some(libc::ELOOP) => differs("a symlink in its place"),
        // `O_DIRECTORY | O_NOFOLLOW` says ENOTDIR for a symlink too.
        Some(libc::ENOTDIR) => differs("something other than a directory on its path"),
        // A socket cannot be opened.
        Some(libc::ENXIO) => differs("something other than a regular file"),
        _ => Error::io("open", path, e),
    })?;
    let meta = file.metadata().map_err(|e| Error::io("inspect", path, e))?;
    if !meta.is_file() {
        return Err(differs("something other than a regular file"));
    }
    Ok((file, meta.len()))
}

/// Places the `file` artifact `artifact` of an unchanged component as `dest_dir/name`,
/// from the primary slot's copy `src_dir/name`: that one file (files the app added beside
/// it stay behind), read without following a symlink (a FIFO or device is refused) and
/// hashed as it is written, so what lands is what was checked even while the app writes
/// its running slot. A file of another size or hash is [`ErrorKind::HashMismatch`].
/// `dest_dir` is created (0755) when missing; the file gets 0644 and must not exist yet.
/// Returns the bytes written. Not synced: see [`super::make_durable`].
///
/// ```
/// # fn main() -> evergreen::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::create_dir(dir.path().join("old")).unwrap();
/// std::fs::write(dir.path().join("old/settings.json"), b"{}").unwrap();
/// let artifact: evergreen::manifest::Artifact = serde_json::from_value(serde_json::json!({
///     "kind": "file", "name": "settings.json", "size": 2,
///     "sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"})).unwrap();
/// let (old, new) = (dir.path().join("old"), dir.path().join("new"));
/// evergreen::stage::copy_file_checked(&old, &new, "settings.json", &artifact)?;
/// assert_eq!(std::fs::read(new.join("settings.json")).unwrap(), b"{}");
/// # Ok(()) }
/// ```
pub fn copy_file_checked(
    src_dir: &Path,
    dest_dir: &Path,
    name: &str,
    artifact: &Artifact,
) -> Result<u64> {
    create_component_dir(dest_dir, name)?;
    let file = RecordedFile {
        path: name.to_string(),
        mode: 0o644,
        size: artifact.size,
        sha256: artifact.sha256.clone(),
    };
    let src = Source::open(src_dir, "the component's directory")?;
    copy_checked(&src, dest_dir, &file, &mut vec![0u8; BUF_SIZE])?;
    Ok(file.size)
}

/// Copies one recorded file, hashing it on the way; on failure the new file is removed.
/// A file of another size is refused before it is read; one that grows while it is copied
/// is read at most one buffer past its recorded size.
fn copy_checked(src: &Source, dst: &Path, file: &RecordedFile, buf: &mut [u8]) -> Result<()> {
    let from_path = src.path.join(&file.path);
    let differs = |found: &str| {
        Error::new(
            ErrorKind::HashMismatch,
            format!(
                "{}: expected {} bytes with sha256 {}, found {found}",
                from_path.display(),
                file.size,
                file.sha256
            ),
        )
    };
    let (mut from, len) = open_regular(&src.dir, &file.path, &from_path, &differs)?;
    if len != file.size {
        return Err(differs(&format!("{len} bytes")));
    }
    let to_path = dst.join(&file.path);
    let mut to = create_new_file(&to_path, file.mode)?;
    let copied = copy_hashed(&mut from, &from_path, &mut to, &to_path, file.size, buf);
    let found = match copied {
        Ok(hashed) => hashed.finish(&file.path, file.mode),
        Err(e) => {
            let _ = fs::remove_file(&to_path);
            return Err(e);
        }
    };
    // The size can still differ here: the app may write the file while it is copied.
    if found.size != file.size || found.sha256 != file.sha256 {
        let _ = fs::remove_file(&to_path);
        let (size, sha256) = (found.size, found.sha256);
        return Err(differs(&format!("{size} bytes with sha256 {sha256}")));
    }
    Ok(())
}

/// Copies `from` into `to` until its end or past `size`, hashing what is written.
fn copy_hashed(
    from: &mut fs::File,
    from_path: &Path,
    to: &mut fs::File,
    to_path: &Path,
    size: u64,
    buf: &mut [u8],
) -> Result<Hashed> {
    let mut hashed = Hashed::default();
    while hashed.len() <= size {
        let n = match from.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", from_path, e)),
        };
        hashed.update(&buf[..n]);
        to.write_all(&buf[..n])
            .map_err(|e| Error::io("write", to_path, e))?;
    }
    Ok(hashed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::{extract_zip_recorded, ArchiveLimits};
    use std::os::unix::fs::PermissionsExt;

    fn extracted(dir: &Path, entries: &[(&str, &[u8])]) -> (PathBuf, TreeRecord) {
        let zip_path = dir.join("app.zip");
        let mut w = zip::ZipWriter::new(fs::File::create(&zip_path).unwrap());
        for (name, data) in entries {
            let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
            w.start_file(*name, options).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
        let archive = fs::File::open(&zip_path).unwrap();
        let old = dir.join("old");
        let (_, record) =
            extract_zip_recorded(&archive, &old, None, &ArchiveLimits::default()).unwrap();
        (old, record)
    }

    #[test]
    fn extraction_records_every_file_with_its_hash_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (_, record) = extracted(dir.path(), &[("b/run", b"#!/bin/sh\n"), ("a.txt", b"")]);
        assert_eq!(record.dirs, ["b"]);
        let files: Vec<_> = record
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.mode, f.size))
            .collect();
        assert_eq!(files, [("a.txt", 0o755, 0), ("b/run", 0o755, 10)]);
        assert_eq!(
            record.files[0].sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// A record reads back only as the bytes its digest names: gone, changed, grown, or a
    /// symlink in its place, it vouches for nothing.
    #[test]
    fn a_record_loads_only_as_the_bytes_its_digest_names() {
        let dir = tempfile::tempdir().unwrap();
        let (_, record) = extracted(dir.path(), &[("f", b"x")]);
        let slot = dir.path().join("slot");
        let digest = record.save(&slot, "app").unwrap();
        assert_eq!(TreeRecord::load(&slot, "app", &digest).unwrap(), record);
        let path = TreeRecord::path(&slot, "app");
        let saved = fs::read(&path).unwrap();
        assert_eq!(saved.len(), 144, "the grown case below names 145 bytes");
        let mut other = record.clone();
        other.files[0].mode = 0o644;
        let rewritten = serde_json::to_vec(&other).unwrap();
        let linked = dir.path().join("elsewhere");
        fs::write(&linked, &saved).unwrap();
        type Change = Box<dyn Fn(&Path)>;
        let cases: [(&str, Change); 6] = [
            ("found none", Box::new(|p| fs::remove_file(p).unwrap())),
            (
                "bytes with sha256",
                Box::new(move |p| fs::write(p, &rewritten).unwrap()),
            ),
            (
                "found 145 bytes",
                Box::new(move |p| fs::write(p, [&saved[..], b" "].concat()).unwrap()),
            ),
            (
                "found a symlink",
                Box::new(move |p| {
                    fs::remove_file(p).unwrap();
                    std::os::unix::fs::symlink(&linked, p).unwrap()
                }),
            ),
            // A FIFO no one writes must not hang the check.
            (
                "found something other than a regular file",
                Box::new(|p| {
                    fs::remove_file(p).unwrap();
                    let made = std::process::Command::new("mkfifo").arg(p).status();
                    assert!(made.unwrap().success());
                }),
            ),
            // The records' directory swapped for a symlink to a copy: never followed.
            (
                "found something other than a directory on its path",
                Box::new(|p| {
                    let trees = p.parent().unwrap();
                    let aside = trees.with_file_name("aside");
                    let _ = fs::remove_dir_all(&aside);
                    fs::rename(trees, &aside).unwrap();
                    std::os::unix::fs::symlink(&aside, trees).unwrap();
                }),
            ),
        ];
        for (found, change) in cases {
            let trees = slot.join(TREES_DIR);
            if trees.is_symlink() {
                fs::remove_file(&trees).unwrap();
            }
            let _ = fs::remove_file(&path);
            record.save(&slot, "app").unwrap();
            change(&path);
            let err = TreeRecord::load(&slot, "app", &digest).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::HashMismatch, "{err}");
            let expected = format!(
                "expected the record written at install ({} bytes with sha256 {}), ",
                digest.size, digest.sha256
            );
            assert!(err.message().contains(&expected), "{err}");
            assert!(err.message().contains(found), "{found}: {err}");
        }
    }

    #[test]
    fn the_copy_is_the_recorded_tree_with_its_modes() {
        let dir = tempfile::tempdir().unwrap();
        let (old, record) = extracted(dir.path(), &[("bin/app", b"v1"), ("share/x", b"y")]);
        fs::write(old.join("bin/extra"), b"the app's").unwrap();
        fs::set_permissions(old.join("bin/app"), fs::Permissions::from_mode(0o600)).unwrap();
        let new = dir.path().join("new");
        copy_recorded(&old, &new, &record).unwrap();
        let mode = |p: &str| fs::metadata(new.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            (mode(""), mode("bin"), mode("bin/app")),
            (0o755, 0o755, 0o755)
        );
        assert_eq!(fs::read(new.join("bin/app")).unwrap(), b"v1");
        assert!(!new.join("bin/extra").exists());
    }

    /// Every way the running slot can differ from what was extracted fails the copy,
    /// naming the file and what was found, and leaves nothing behind.
    #[test]
    fn a_tree_that_differs_from_its_record_is_not_copied() {
        type Damage = fn(&Path);
        let cases: [(&str, Damage); 6] = [
            ("found none", |old| {
                fs::remove_file(old.join("bin/app")).unwrap()
            }),
            ("found 2 bytes with sha256", |old| {
                fs::write(old.join("bin/app"), b"v2").unwrap()
            }),
            ("found 11 bytes", |old| {
                fs::write(old.join("bin/app"), b"v1 and more").unwrap()
            }),
            ("found a symlink in its place", |old| {
                let (app, elsewhere) = (old.join("bin/app"), old.join("../copy"));
                fs::rename(&app, &elsewhere).unwrap();
                std::os::unix::fs::symlink(&elsewhere, &app).unwrap();
            }),
            ("found something other than a regular file", |old| {
                fs::remove_file(old.join("bin/app")).unwrap();
                fs::create_dir(old.join("bin/app")).unwrap();
            }),
            (
                "found something other than a directory on its path",
                |old| {
                    fs::remove_dir_all(old.join("bin")).unwrap();
                    fs::write(old.join("bin"), b"").unwrap();
                },
            ),
        ];
        for (found, damage) in cases {
            let dir = tempfile::tempdir().unwrap();
            let (old, record) = extracted(dir.path(), &[("bin/app", b"v1")]);
            damage(&old);
            let new = dir.path().join("new");
            let err = copy_recorded(&old, &new, &record).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::HashMismatch, "{found}: {err}");
            let sha256 = &record.files[0].sha256;
            let expected = format!("bin/app: expected 2 bytes with sha256 {sha256}, {found}");
            assert!(err.message().contains(&expected), "{err}");
            assert!(!new.exists(), "{found}");
        }
    }

    /// A file of the recorded size with other bytes is found by its hash, as it is copied,
    /// and the copy does not stay.
    #[test]
    fn an_unchanged_file_with_other_bytes_of_its_size_is_not_placed() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        fs::create_dir(&old).unwrap();
        fs::write(old.join("settings.json"), b"{\"a\":2}").unwrap();
        let artifact: Artifact = serde_json::from_value(serde_json::json!({
            "kind": "file", "name": "settings.json", "size": 7,
            "sha256": crate::trust::hex(&Sha256::digest(b"{\"a\":1}"))}))
        .unwrap();
        let err = copy_file_checked(&old, &new, "settings.json", &artifact).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::HashMismatch, "{err}");
        let found = crate::trust::hex(&Sha256::digest(b"{\"a\":2}"));
        assert!(
            err.message()
                .ends_with(&format!(", found 7 bytes with sha256 {found}")),
            "{err}"
        );
        assert!(!new.join("settings.json").exists());
        fs::write(old.join("settings.json"), b"{\"a\":1}").unwrap();
        assert_eq!(
            copy_file_checked(&old, &new, "settings.json", &artifact).unwrap(),
            7
        );
    }

    /// A directory on a recorded file's path swapped for a symlink is never followed, even
    /// to a file with the recorded bytes: nothing outside the component is read.
    #[test]
    fn a_symlink_on_the_path_of_a_recorded_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (old, record) = extracted(dir.path(), &[("bin/app", b"v1")]);
        let outside = dir.path().join("outside");
        fs::rename(old.join("bin"), &outside).unwrap();
        std::os::unix::fs::symlink(&outside, old.join("bin")).unwrap();
        let new = dir.path().join("new");
        let err = copy_recorded(&old, &new, &record).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::HashMismatch, "{err}");
        assert!(
            err.message()
                .ends_with(", found something other than a directory on its path"),
            "{err}"
        );
        assert!(!new.exists());
        fs::remove_file(old.join("bin")).unwrap();
        let err = copy_recorded(&outside, &new, &record).unwrap_err();
        assert!(err.message().contains("bin/app: expected 2 bytes"), "{err}");
        std::os::unix::fs::symlink(&outside, dir.path().join("linked")).unwrap();
        let err = copy_recorded(&dir.path().join("linked"), &new, &record).unwrap_err();
        assert!(
            err.message()
                .ends_with("linked: expected the component's directory, found something other than a directory"),
            "{err}"
        );
    }
}
