//! The record of an extracted tree, and the checked copy of an Unchanged `zip` component
//! that it allows.
//!
//! A `zip` artifact's SHA-256 says nothing about the tree it became once extracted, and the
//! app may write its own slot (logs, a settings file, an edit by hand). So extraction
//! records what it wrote: every directory, every file with its mode, size and SHA-256 (hashed
//! as it was inflated from the verified archive), every symlink with its target. The record
//! is kept in the slot, in `.evergreen-trees/<component>`, and an Unchanged copy takes
//! exactly what it lists, each file checked as it is copied, so the new slot holds the
//! signed tree or the install fails with `hash_mismatch`.

use super::extract::{check_link_target, check_name};
use super::tree::{
    create_component_dir, create_dirs, create_new_file, create_symlinks, StagingDir, DIR_MODE,
};
use super::{run_parallel, ExtractStats, BUF_SIZE};
use crate::error::{Error, ErrorKind, Result};
use crate::manifest::{is_safe_name, Artifact};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
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

/// The largest record read back: 100,000 entries (the default `max_entries`) of 600-byte
/// paths fit.
pub const MAX_RECORD_BYTES: u64 = 64 << 20;

/// The bytes of the record at `path`, read without following a symlink or waiting on a
/// FIFO, and at most [`MAX_RECORD_BYTES`]; `None` when there is none.
fn read_record(path: &Path) -> Result<Option<Vec<u8>>> {
    let refused = |found: &str| {
        Error::new(
            ErrorKind::HashMismatch,
            format!(
                "{}: expected a record file of at most {MAX_RECORD_BYTES} bytes, found {found}",
                path.display()
            ),
        )
    };
    let file = match crate::fsutil::try_open_no_follow(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(refused("a symlink")),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let meta = file.metadata().map_err(|e| Error::io("inspect", path, e))?;
    if !meta.is_file() {
        return Err(refused("something other than a regular file"));
    }
    if meta.len() > MAX_RECORD_BYTES {
        return Err(refused(&format!("{} bytes", meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_RECORD_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(Some(bytes))
}

/// The file a slot keeps a record in: the record and the artifact it came from.
#[derive(Serialize, Deserialize)]
struct RecordFile {
    artifact: String,
    tree: TreeRecord,
}

impl TreeRecord {
    /// Where the slot directory `slot_dir` keeps the record of `component`.
    pub fn path(slot_dir: &Path, component: &str) -> PathBuf {
        slot_dir.join(TREES_DIR).join(component)
    }

    /// Writes the record of `component`, extracted from the artifact with SHA-256
    /// `artifact`, into the slot being staged at `slot_dir`. Not synced: the slot is made
    /// durable as a whole ([`super::make_durable`]).
    pub fn save(&self, slot_dir: &Path, component: &str, artifact: &str) -> Result<()> {
        let dir = slot_dir.join(TREES_DIR);
        crate::fsutil::create_dir_all(&dir)?;
        let path = Self::path(slot_dir, component);
        let json = serde_json::to_vec(&RecordFile {
            artifact: artifact.to_string(),
            tree: self.clone(),
        })
        .map_err(|e| Error::new(ErrorKind::Io, format!("encoding {}: {e}", path.display())))?;
        let mut file = create_new_file(&path, 0o644)?;
        file.write_all(&json)
            .map_err(|e| Error::io("write", &path, e))
    }

    /// The record of `component` in the slot at `slot_dir`, which must be of the artifact
    /// with SHA-256 `artifact`. `None` when the slot has none (installed by a version that
    /// kept no records, or provisioned by other means).
    ///
    /// The slot may be writable by the app, so the record is read as untrusted input: not
    /// through a symlink, at most [`MAX_RECORD_BYTES`], and refused ([`ErrorKind::HashMismatch`])
    /// unless it describes a tree extraction could have made (relative paths without `..`,
    /// modes 0644 or 0755, symlinks inside the component). A record the app rewrote can then
    /// only copy files of the running slot into the new one, never write elsewhere.
    pub fn load(slot_dir: &Path, component: &str, artifact: &str) -> Result<Option<TreeRecord>> {
        let path = Self::path(slot_dir, component);
        let Some(bytes) = read_record(&path)? else {
            return Ok(None);
        };
        let not_a_record = |found: &dyn std::fmt::Display| {
            Error::new(
                ErrorKind::HashMismatch,
                format!(
                    "{}: expected the record of an extracted tree, found {found}",
                    path.display()
                ),
            )
        };
        let file: RecordFile = serde_json::from_slice(&bytes).map_err(|e| not_a_record(&e))?;
        file.tree.check().map_err(|e| not_a_record(&e))?;
        if file.artifact != artifact {
            return Err(Error::new(
                ErrorKind::HashMismatch,
                format!(
                    "{}: expected the record of artifact {artifact}, found one of {}",
                    path.display(),
                    file.artifact
                ),
            ));
        }
        Ok(Some(file.tree))
    }

    /// Refuses a record that names anything extraction would have refused: the copy writes
    /// where the record says.
    fn check(&self) -> std::result::Result<(), String> {
        let safe = |path: &str| match check_name(path.as_bytes()) {
            Ok((p, false)) if p == path => Ok(()),
            Ok(_) => Err(format!("{path:?}: a directory name")),
            Err(rule) => Err(format!("{path:?}: {rule}")),
        };
        for dir in &self.dirs {
            safe(dir)?;
        }
        for f in &self.files {
            safe(&f.path)?;
            if f.mode != 0o644 && f.mode != 0o755 {
                return Err(format!("{:?}: mode {:o}", f.path, f.mode));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{:?}: sha256 {:?}", f.path, f.sha256));
            }
        }
        let links: HashSet<&str> = self.symlinks.iter().map(|l| l.path.as_str()).collect();
        for l in &self.symlinks {
            safe(&l.path)?;
            check_link_target(&l.path, &l.target, &links).map_err(|e| e.message().to_string())?;
        }
        Ok(())
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
    let staging = StagingDir::create(dst)?;
    let dirs = create_dirs(dst, &record.dirs)?;
    let mut by_size: Vec<&RecordedFile> = record.files.iter().collect();
    by_size.sort_by_key(|f| std::cmp::Reverse(f.size));
    run_parallel(
        &by_size,
        || Ok(vec![0u8; BUF_SIZE]),
        |buf, file| copy_checked(src, dst, file, buf),
    )?;
    let symlinks = create_symlinks(dst, &record.symlinks)?;
    staging.finish(DIR_MODE)?;
    Ok(ExtractStats {
        files: record.files.len() as u64,
        dirs,
        symlinks,
        bytes: record.files.iter().map(|f| f.size).sum(),
    })
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
    if !is_safe_name(name) {
        return Err(Error::config(format!(
            "copying a file artifact: expected a plain file name, found {name:?}"
        )));
    }
    create_component_dir(dest_dir)?;
    let file = RecordedFile {
        path: name.to_string(),
        mode: 0o644,
        size: artifact.size,
        sha256: artifact.sha256.clone(),
    };
    copy_checked(src_dir, dest_dir, &file, &mut vec![0u8; BUF_SIZE])?;
    Ok(file.size)
}

/// Copies one recorded file, hashing it on the way; on failure the new file is removed.
/// A file of another size is refused before it is read; one that grows while it is copied
/// is read at most one buffer past its recorded size.
fn copy_checked(src: &Path, dst: &Path, file: &RecordedFile, buf: &mut [u8]) -> Result<()> {
    let from_path = src.join(&file.path);
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
    let mut from =
        crate::fsutil::try_open_no_follow(&from_path).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => differs("none"),
            Some(libc::ELOOP) => differs("a symlink"),
            Some(libc::ENOTDIR) => differs("a file where a directory of its path should be"),
            _ => Error::io("open", &from_path, e),
        })?;
    let meta = from
        .metadata()
        .map_err(|e| Error::io("inspect", &from_path, e))?;
    if !meta.is_file() {
        return Err(differs("something other than a regular file"));
    }
    if meta.len() != file.size {
        return Err(differs(&format!("{} bytes", meta.len())));
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

    #[test]
    fn a_record_round_trips_and_names_its_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let (_, record) = extracted(dir.path(), &[("f", b"x")]);
        let slot = dir.path().join("slot");
        record.save(&slot, "app", "aa").unwrap();
        assert_eq!(TreeRecord::load(&slot, "app", "aa").unwrap(), Some(record));
        assert_eq!(TreeRecord::load(&slot, "other", "aa").unwrap(), None);
        let err = TreeRecord::load(&slot, "app", "bb").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::HashMismatch);
        assert!(
            err.message()
                .contains("expected the record of artifact bb, found one of aa"),
            "{err}"
        );
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
            ("found a symlink", |old| {
                let (app, elsewhere) = (old.join("bin/app"), old.join("../copy"));
                fs::rename(&app, &elsewhere).unwrap();
                std::os::unix::fs::symlink(&elsewhere, &app).unwrap();
            }),
            ("found something other than a regular file", |old| {
                fs::remove_file(old.join("bin/app")).unwrap();
                fs::create_dir(old.join("bin/app")).unwrap();
            }),
            ("found a file where a directory", |old| {
                fs::remove_dir_all(old.join("bin")).unwrap();
                fs::write(old.join("bin"), b"").unwrap();
            }),
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

    /// The running slot's record is read as untrusted: one that names a path extraction
    /// would refuse, a mode it never gives, a symlink leaving the component, or that is a
    /// symlink itself, is refused before anything is copied.
    #[test]
    fn a_record_naming_what_extraction_would_refuse_is_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let (_, record) = extracted(dir.path(), &[("bin/app", b"v1")]);
        let slot = dir.path().join("slot");
        type Tamper = fn(&mut TreeRecord);
        let cases: [(&str, Tamper); 6] = [
            (
                "\"../../etc/cron.d/x\": the name has a `..` component",
                |r| r.files[0].path = "../../etc/cron.d/x".into(),
            ),
            ("\"/etc/x\": the name is an absolute path", |r| {
                r.dirs[0] = "/etc/x".into()
            }),
            ("\"bin/app\": mode 4755", |r| r.files[0].mode = 0o4755),
            ("\"bin/\": a directory name", |r| {
                r.files[0].path = "bin/".into()
            }),
            ("\"bin/app\": sha256 \"x\"", |r| {
                r.files[0].sha256 = "x".into()
            }),
            (
                "symlink to \"../../..\" points outside the component",
                |r| {
                    r.symlinks.push(RecordedLink {
                        path: "up".into(),
                        target: "../../..".into(),
                    })
                },
            ),
        ];
        for (found, tamper) in cases {
            let mut bad = record.clone();
            tamper(&mut bad);
            let _ = fs::remove_dir_all(&slot);
            bad.save(&slot, "app", "aa").unwrap();
            let err = TreeRecord::load(&slot, "app", "aa").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::HashMismatch, "{err}");
            assert!(
                err.message()
                    .contains("expected the record of an extracted tree, found ")
                    && err.message().contains(found),
                "{found}: {err}"
            );
        }
        let path = TreeRecord::path(&slot, "app");
        fs::remove_file(&path).unwrap();
        record.save(&slot, "real", "aa").unwrap();
        std::os::unix::fs::symlink(TreeRecord::path(&slot, "real"), &path).unwrap();
        let err = TreeRecord::load(&slot, "app", "aa").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::HashMismatch, "{err}");
        assert!(err.message().ends_with(" bytes, found a symlink"), "{err}");
    }
}
