//! Safe zip extraction: our own loop over the zip crate's readers (never its `extract`
//! helpers, which have had six advisories).
//!
//! Two phases. The *plan* reads only the central directory and the local headers, and
//! refuses an archive before anything is written: entry count, raw names, duplicates and
//! case collisions, overlapping entries, methods, encryption, declared sizes and ratios,
//! symlinks. The *write* phase then creates the directories, inflates the files on all
//! cores through a counting reader (the declared sizes are never trusted), and creates the
//! symlinks last, so no entry is ever written while a symlink exists under `dest`.

use super::tree::{create_new_file, StagingDir, DIR_MODE};
use super::{run_parallel, ArchiveLimits, ExtractStats, BUF_SIZE, RATIO_GRACE_BYTES};
use crate::error::{Error, ErrorKind, Result};
use crate::fold::folded;
use std::collections::{HashMap, HashSet};
use std::fs::{DirBuilder, File, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use zip::{CompressionMethod, ZipArchive};

/// Longest symlink target accepted: Linux refuses one of PATH_MAX (4096 bytes with its
/// NUL) or more.
const MAX_LINK_TARGET: u64 = 4095;

/// Longest path accepted: Linux refuses any longer one (PATH_MAX, 4096 bytes with its
/// NUL), so no longer name can ever be extracted; [`CheckedZip::check_fits`] adds the
/// directory it is extracted into.
const MAX_NAME: usize = 4095;

/// Longest component of an entry name accepted (NAME_MAX of Linux's file systems).
const MAX_COMPONENT: usize = 255;

/// Extracts the zip in `archive` into the directory `dest`.
///
/// `archive` must be the same open file whose hash was verified: it is read positionally
/// through a duplicate of its descriptor, never re-opened by path, so it can't be swapped
/// after the check. `dest` is created (its parent must exist) or must be an empty
/// directory; it is 0700 while staging and 0755 once complete. Directories get 0755; files
/// 0755 when the entry has any execute bit, else 0644 (never setuid, setgid or sticky).
///
/// Refused with [`ErrorKind::UnsafeArchive`], naming the entry and the rule: names that are
/// not UTF-8, absolute, with `..`, `.` or empty components, drive letters, backslashes,
/// NUL or control characters; duplicate or case-colliding names, and a name used both as a
/// file and a directory; overlapping entries; methods other than stored and deflate;
/// encrypted entries; symlinks unless `limits.allow_symlinks`, and then any that is
/// absolute, leaves the component or passes through another symlink, and any entry under
/// a symlink; more than `limits.max_entries` entries; a central directory larger than
/// `limits.max_central_directory_bytes`; more bytes than `installed_size`
/// (when given) or `limits.max_installed_bytes`, or a ratio above `limits.max_ratio`,
/// counted on the bytes actually inflated; an entry whose inflated size differs from its
/// declared size. On any failure nothing is left under `dest`: `dest` itself is removed
/// when this call created it, and an empty directory it adopted gets its mode from before
/// back. Nothing is synced: call [`super::make_durable`] once for the slot.
///
/// ```
/// # fn main() -> evergreen::Result<()> {
/// use std::io::Write;
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("app.zip");
/// let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
/// w.start_file("bin/app", zip::write::SimpleFileOptions::default()).unwrap();
/// w.write_all(b"hello").unwrap();
/// w.finish().unwrap();
///
/// let archive = std::fs::File::open(&path).unwrap();
/// let limits = evergreen::stage::ArchiveLimits::default();
/// let stats = evergreen::stage::extract_zip(&archive, &dir.path().join("app"), Some(5), &limits)?;
/// assert_eq!((stats.files, stats.dirs, stats.bytes), (1, 1, 5));
/// assert_eq!(std::fs::read(dir.path().join("app/bin/app")).unwrap(), b"hello");
/// # Ok(()) }
/// ```
pub fn extract_zip(
    archive: &File,
    dest: &Path,
    installed_size: Option<u64>,
    limits: &ArchiveLimits,
) -> Result<ExtractStats> {
    CheckedZip::check(archive, installed_size, limits)?.extract(dest)
}

/// A zip archive that passed every check [`extract_zip`] makes before it writes anything
/// (the *plan*: names, entry count, symlinks, methods, declared sizes and ratios), ready to
/// be extracted. An installer checks every archive of a release this way before it clears
/// the slot the release goes to, so a release that could never be installed leaves that
/// slot, often the last good release, as it was. The entries' data (CRC, inflated
/// length) is checked only as it is written: a publisher checks it once for every device
/// with [`CheckedZip::inflate_all`].
///
/// ```
/// # fn main() -> evergreen::Result<()> {
/// use std::io::Write;
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("app.zip");
/// let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
/// w.start_file("../escape", zip::write::SimpleFileOptions::default()).unwrap();
/// w.write_all(b"hello").unwrap();
/// w.finish().unwrap();
///
/// let archive = std::fs::File::open(&path).unwrap();
/// let limits = evergreen::stage::ArchiveLimits::default();
/// let err = evergreen::stage::CheckedZip::check(&archive, None, &limits).unwrap_err();
/// assert_eq!(err.kind(), evergreen::ErrorKind::UnsafeArchive);
/// # Ok(()) }
/// ```
pub struct CheckedZip {
    zip: ZipArchive<At>,
    plan: Plan,
    budget: Budget,
}

impl std::fmt::Debug for CheckedZip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedZip")
            .field("entries", &self.plan.entries.len())
            .finish_non_exhaustive()
    }
}

impl CheckedZip {
    /// Reads the central directory and local headers of the zip in `archive` (the verified
    /// open file, read through a duplicate of its descriptor) and refuses it as
    /// [`extract_zip`] would, writing nothing.
    pub fn check(
        archive: &File,
        installed_size: Option<u64>,
        limits: &ArchiveLimits,
    ) -> Result<CheckedZip> {
        let file = archive.try_clone().map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("duplicating the archive's descriptor: {e}"),
            )
        })?;
        let len = file
            .metadata()
            .map_err(|e| Error::new(ErrorKind::Io, format!("inspecting the archive: {e}")))?
            .len();
        let budget = Budget::new(installed_size, limits, len);
        // Before the zip reader, which holds the whole central directory in memory, three
        // to five times its size: two million empty entries took 432 MB to be refused
        // after it, 99,000 entries with 90-byte names 60 MB to be installed.
        let declared = declared_directory(&file, len);
        if let Some(count) = declared
            .map(|d| d.entries)
            .filter(|n| *n > limits.max_entries)
        {
            return Err(unsafe_archive(format!(
                "expected at most {} zip entries, found {count} (as the end of its central directory declares)",
                limits.max_entries
            )));
        }
        let cap = limits.max_central_directory_bytes;
        if let Some(size) = declared.map(|d| d.bytes).filter(|n| *n > cap) {
            return Err(unsafe_archive(format!(
                "expected a central directory of at most {cap} bytes, found {size} (as the end of its central directory declares)"
            )));
        }
        // A directory that runs on past the size its end record declares (the zip reader
        // reads as many entries as declared, wherever they end) is stopped as it is read:
        // what the reader may read is the directory, its end records and the comment.
        let reads = Arc::new(ReadBudget::new(cap.saturating_add(OPEN_READ_SLACK)));
        let opened = ZipArchive::new(At {
            file: Arc::new(file),
            pos: 0,
            len,
            reads: Some(reads.clone()),
        });
        if reads.exhausted() {
            return Err(unsafe_archive(format!(
                "expected a central directory of at most {cap} bytes, found more (its entries run on past what the end of its central directory declares)"
            )));
        }
        let mut zip = opened
            .map_err(|e| unsafe_archive(format!("expected a readable zip archive, found: {e}")))?;
        reads.lift();
        let plan = plan(&mut zip, &budget, limits)?;
        Ok(CheckedZip { zip, plan, budget })
    }

    /// Refuses (`unsafe_archive`) an archive with a name too long to be created under
    /// `dest`: the directory's path, a `/` and the name must fit in Linux's PATH_MAX.
    /// Checked before the slot is cleared, it fails nothing a write would fail later.
    pub fn check_fits(&self, dest: &Path) -> Result<()> {
        let room = MAX_NAME.saturating_sub(dest.as_os_str().len() + 1);
        match paths(&self.zip).find(|p| p.len() > room) {
            Some(path) => Err(refuse(
                path,
                format!(
                    "expected a name of at most {room} bytes, to fit in a path of {MAX_NAME} under {}, found {} bytes",
                    dest.display(),
                    path.len()
                ),
            )),
            None => Ok(()),
        }
    }

    /// The bytes extracting the archive takes on the file system described by `free`:
    /// each file's declared size (extraction refuses an entry that inflates to another),
    /// rounded up to whole blocks, a block for each symlink, and each directory's own
    /// blocks, the component's directory included ([`Self::directory_bytes`]). A directory
    /// on tmpfs takes none, and a short symlink none anywhere: counted all the same, they
    /// keep the estimate on the safe side.
    pub(crate) fn space_needed(&self, free: &crate::space::Free) -> u64 {
        let files = self
            .plan
            .files
            .iter()
            .map(|&i| free.blocks_for(self.plan.entries[i].declared));
        let dirs = self.directory_bytes().into_iter().map(|bytes| {
            // Past one block, a hashed directory (ext4's htree) splits its blocks and
            // leaves them partly full: 1.4 to 1.7 times the entries' bytes measured with
            // 2,000 and 20,000 names of 20 to 200 bytes.
            match bytes > free.block {
                true => free.blocks_for(bytes.saturating_mul(2)),
                false => free.block,
            }
        });
        let links = (self.plan.symlinks.len() as u64).saturating_mul(free.block);
        files.chain(dirs).fold(links, u64::saturating_add)
    }

    /// Each directory the archive creates (the component's own as `""`) with the bytes
    /// its entries take as ext4 lays them out: 8 bytes and the name rounded up to 4 for
    /// each entry, and 24 for `.` and `..`. One block per directory, as this once counted,
    /// was short by megabytes for one of many files: the slot was emptied, and extraction
    /// ran out of room part way.
    fn directory_bytes(&self) -> Vec<u64> {
        use std::hash::BuildHasher;
        const DOTS: u64 = 24;
        let names: Vec<&str> = paths(&self.zip).collect();
        let created = (self.plan.files.iter().map(|&i| names[i]))
            .chain(self.plan.symlinks.iter().map(|(i, _)| names[*i]))
            .chain(self.plan.dirs.iter().map(|&(i, end)| &names[i][..end]));
        // Keyed by a hash of the directory's path, into `bytes`: the map type the plan's
        // tree check uses already (a second costs the C library kilobytes). Two paths
        // with one hash share a count, which only errs on the safe side.
        let keys = std::collections::hash_map::RandomState::new();
        let mut index: HashMap<u64, u32> = HashMap::with_capacity(self.plan.dirs.len() + 1);
        let mut bytes: Vec<u64> = Vec::with_capacity(self.plan.dirs.len() + 1);
        let mut add = |dir: &str, more: u64| {
            let key = keys.hash_one(dir);
            match index.get(&key) {
                Some(&i) => bytes[i as usize] += more,
                None => {
                    index.insert(key, bytes.len() as u32);
                    bytes.push(DOTS + more);
                }
            }
        };
        add("", 0);
        for &(i, end) in &self.plan.dirs {
            add(&names[i][..end], 0);
        }
        for path in created {
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            add(parent, 8 + (name.len() as u64).next_multiple_of(4));
        }
        bytes
    }

    /// Inflates every file entry into nothing, checking what extraction checks only as it
    /// writes: each entry's CRC, its inflated length against its declared one, and every
    /// cap. For a publisher, which reads an archive once so that no device finds it broken
    /// after clearing its inactive slot (a device does not inflate twice).
    pub fn inflate_all(mut self) -> Result<()> {
        let mut buf = vec![0u8; 64 << 10];
        let zip = self.zip.clone();
        let names: Vec<&str> = paths(&zip).collect();
        for &i in &self.plan.files {
            let shown = Path::new(names[i]);
            inflate_into(
                &mut self.zip,
                i,
                &self.plan.entries[i],
                &mut io::sink(),
                (names[i], shown),
                &self.budget,
                &mut buf,
            )?;
        }
        Ok(())
    }

    /// Extracts the archive into the directory `dest`, as [`extract_zip`] describes; the
    /// bytes actually inflated are still counted against every cap.
    pub fn extract(self, dest: &Path) -> Result<ExtractStats> {
        let staging = StagingDir::create(dest)?;
        let stats = write(&self.zip, &self.plan, dest, &self.budget)?;
        staging.finish(DIR_MODE)?;
        Ok(stats)
    }
}

fn unsafe_archive(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::UnsafeArchive, message)
}

fn refuse(name: &str, rule: impl std::fmt::Display) -> Error {
    unsafe_archive(format!("zip entry {name:?}: {rule}"))
}

/// What the end of a zip's central directory declares: how many entries, and how many
/// bytes of directory they take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Declared {
    entries: u64,
    bytes: u64,
}

/// The entry count and directory size the end of the central directory declares (its
/// zip64 record's when the classic one points there); `None` when no such record is
/// found, for the zip reader to report.
///
/// Every end record in the last 64 KiB counts, and the largest count and size are the
/// answer: when the last one does not parse (a stray signature in the comment, a
/// multi-disk one), the zip reader falls back to an earlier one, and reads as many
/// entries as *that* declares.
fn declared_directory(file: &File, len: u64) -> Option<Declared> {
    const EOCD: &[u8] = b"PK\x05\x06";
    // The record itself and the longest comment, and at least as far back as the zip
    // reader looks, which takes garbage after the comment too: zip 9.8 looks 65,572
    // bytes back on 64-bit targets (its record type's size, a signature, 64 KiB).
    let tail_len = len.min(22 + 0x10000 + 256);
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact_at(&mut tail, len - tail_len).ok()?;
    (0..tail.len().saturating_sub(3))
        .filter(|at| &tail[*at..*at + 4] == EOCD)
        .filter_map(|at| declared_at(file, &tail, len - tail_len, at))
        .reduce(|a, b| Declared {
            entries: a.entries.max(b.entries),
            bytes: a.bytes.max(b.bytes),
        })
}

/// What the end record at `tail[at..]` declares, from its zip64 record when one of its
/// fields says "see the zip64 record", as the zip reader reads it. `tail` starts at
/// `base` in `file`.
fn declared_at(file: &File, tail: &[u8], base: u64, at: usize) -> Option<Declared> {
    let eocd = tail.get(at..at + 22)?;
    let u16_at = |i: usize| u16::from_le_bytes([eocd[i], eocd[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([eocd[i], eocd[i + 1], eocd[i + 2], eocd[i + 3]]);
    let classic = Declared {
        entries: u64::from(u16_at(10)),
        bytes: u64::from(u32_at(12)),
    };
    if u16_at(10) != u16::MAX && u32_at(12) != u32::MAX && u32_at(16) != u32::MAX {
        return Some(classic);
    }
    // The zip64 locator sits right before; it gives the zip64 record's offset, and the
    // record (56 bytes without extensible data) sits right before the locator, where
    // the offset is off by data prepended to the archive.
    let Some(locator) = at.checked_sub(20).and_then(|l| tail.get(l..at)) else {
        return Some(classic);
    };
    if &locator[..4] != b"PK\x06\x07" {
        return Some(classic);
    }
    let offset = u64::from_le_bytes(locator[8..16].try_into().ok()?);
    let locator_at = base + at as u64 - 20;
    // Past data prepended to the archive the offset is off, and the reader finds the
    // record by its signature, ending right before the locator (after its extensible
    // data, when it has any): each such record in the tail read counts too.
    // The size field is read from the tail itself: no read of the file per signature,
    // which a tail packed with them would otherwise cost by the thousand.
    let ending_at_locator = (0..(at - 20).saturating_sub(11))
        .filter(|i| &tail[*i..*i + 4] == b"PK\x06\x06")
        .filter(|i| {
            let size = u64::from_le_bytes(tail[i + 4..i + 12].try_into().unwrap_or_default());
            (*i as u64 + 12).checked_add(size) == Some((at - 20) as u64)
        })
        .map(|i| base + i as u64);
    // The record without extensible data, read where it would be even before the tail.
    let before_locator = locator_at.checked_sub(56);
    let field = |record: &[u8; 48], at: usize| {
        u64::from_le_bytes(record[at..at + 8].try_into().unwrap_or_default())
    };
    std::iter::once(offset)
        .chain(before_locator)
        .chain(ending_at_locator)
        .filter_map(|offset| {
            let mut record = [0u8; 48];
            file.read_exact_at(&mut record, offset).ok()?;
            (&record[..4] == b"PK\x06\x06").then(|| Declared {
                entries: field(&record, 32),
                bytes: field(&record, 40),
            })
        })
        .reduce(|a, b| Declared {
            entries: a.entries.max(b.entries),
            bytes: a.bytes.max(b.bytes),
        })
}

/// The bytes the zip reader may read to open an archive beyond its central directory:
/// the end records (a zip64 one, its locator, the classic one), the comment and the
/// garbage after it the reader looks through (64 KiB each at most), read again for each
/// end record it tries, and the local header it probes.
const OPEN_READ_SLACK: u64 = 256 << 10;

/// The bytes the zip reader may still read while it opens an archive: once they run out,
/// every read fails, so a central directory that runs on past the size its end record
/// declares is never loaded whole. Lifted once the archive is open.
struct ReadBudget {
    left: AtomicU64,
    exhausted: std::sync::atomic::AtomicBool,
}

impl ReadBudget {
    fn new(bytes: u64) -> ReadBudget {
        ReadBudget {
            left: AtomicU64::new(bytes),
            exhausted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// How many of `want` bytes may be read; `None` once the budget is spent.
    fn allows(&self, want: usize) -> Option<usize> {
        let left = self.left.load(Relaxed);
        if left == u64::MAX {
            return Some(want);
        }
        if left == 0 && want > 0 {
            self.exhausted.store(true, Relaxed);
            return None;
        }
        Some(want.min(usize::try_from(left).unwrap_or(usize::MAX)))
    }

    /// Counts `n` bytes read (the archive is opened on one thread).
    fn spend(&self, n: usize) {
        let left = self.left.load(Relaxed);
        if left != u64::MAX {
            self.left.store(left.saturating_sub(n as u64), Relaxed);
        }
    }

    fn exhausted(&self) -> bool {
        self.exhausted.load(Relaxed)
    }

    fn lift(&self) {
        self.left.store(u64::MAX, Relaxed);
    }
}

/// A positional reader over the verified open file: each clone keeps its own position,
/// so threads share one descriptor without sharing (or racing on) its offset.
#[derive(Clone)]
struct At {
    file: Arc<File>,
    pos: u64,
    len: u64,
    /// While the zip reader opens the archive: what it may still read.
    reads: Option<Arc<ReadBudget>>,
}

impl Read for At {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let buf = match &self.reads {
            None => buf,
            Some(reads) => match reads.allows(buf.len()) {
                Some(n) => &mut buf[..n],
                None => return Err(io::Error::other("read past the central directory allowed")),
            },
        };
        let n = self.file.read_at(buf, self.pos)?;
        if let Some(reads) = &self.reads {
            reads.spend(n);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for At {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the archive",
            )
        })?;
        Ok(self.pos)
    }
}

/// The byte budget shared by all threads: the bytes actually inflated so far, against the
/// smallest of the three caps on the total.
struct Budget {
    installed_size: Option<u64>,
    max_installed: u64,
    ratio_cap: u64,
    max_ratio: u64,
    used: AtomicU64,
}

impl Budget {
    fn new(installed_size: Option<u64>, limits: &ArchiveLimits, archive_len: u64) -> Budget {
        Budget {
            installed_size,
            max_installed: limits.max_installed_bytes,
            ratio_cap: ratio_cap(limits.max_ratio, archive_len),
            max_ratio: limits.max_ratio,
            used: AtomicU64::new(0),
        }
    }

    /// Why `total` bytes would be too many, if they would.
    fn over(&self, total: u64) -> Option<String> {
        if let Some(declared) = self.installed_size.filter(|d| total > *d) {
            return Some(format!(
                "the archive inflates to more than its declared installed_size of {declared} bytes"
            ));
        }
        if total > self.max_installed {
            return Some(format!(
                "the archive inflates to more than the cap of {} bytes",
                self.max_installed
            ));
        }
        (total > self.ratio_cap).then(|| {
            format!(
                "the archive inflates to more than {} times its size (more than {} bytes)",
                self.max_ratio, self.ratio_cap
            )
        })
    }

    /// Counts `n` more inflated bytes.
    fn take(&self, n: u64, name: &str) -> Result<()> {
        let total = self.used.fetch_add(n, Relaxed).saturating_add(n);
        match self.over(total) {
            Some(rule) => Err(refuse(name, rule)),
            None => Ok(()),
        }
    }
}

/// The most bytes `compressed` bytes may inflate to under `max_ratio`.
fn ratio_cap(max_ratio: u64, compressed: u64) -> u64 {
    max_ratio.saturating_mul(compressed).max(RATIO_GRACE_BYTES)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

/// One entry that passed every check of the plan. Its path is not copied: it is the
/// entry's name as the zip reader holds it ([`paths`]), checked.
struct Entry {
    compressed: u64,
    declared: u64,
    mode: u32,
    kind: Kind,
}

struct Plan {
    /// Every entry, indexed as the zip's.
    entries: Vec<Entry>,
    /// Every directory to create, explicit or implied, parents first: the first `end`
    /// bytes of the path of entry `owner`, as `(owner, end)`.
    dirs: Vec<(usize, usize)>,
    /// Regular files (indices into `entries`), largest first so the threads finish
    /// together.
    files: Vec<usize>,
    /// Symlinks: their index and validated target.
    symlinks: Vec<(usize, String)>,
}

/// The path of every entry, in the zip's order: its raw name, which the plan checked is
/// UTF-8, without its trailing `/`. Borrowed from the zip reader, which holds every name
/// anyway: the plan keeps no copy.
fn paths(zip: &ZipArchive<At>) -> impl Iterator<Item = &str> {
    zip.file_names_raw().map(|raw| {
        let name = std::str::from_utf8(raw).unwrap_or_default();
        name.strip_suffix('/').unwrap_or(name)
    })
}

fn plan(zip: &mut ZipArchive<At>, budget: &Budget, limits: &ArchiveLimits) -> Result<Plan> {
    let count = zip.len() as u64;
    if count > limits.max_entries {
        return Err(unsafe_archive(format!(
            "expected at most {} zip entries, found {count}",
            limits.max_entries
        )));
    }
    if zip.metadata().has_duplicate_names() {
        return Err(unsafe_archive(
            "zip entries: expected unique names, found a name listed more than once",
        ));
    }
    let mut entries = Vec::with_capacity(zip.len());
    let mut ranges = Vec::with_capacity(zip.len());
    let mut symlinks = Vec::new();
    let mut declared_total = 0u64;
    for index in 0..zip.len() {
        let (entry, range, target) = read_entry(zip, index, limits)?;
        declared_total = declared_total.saturating_add(entry.declared);
        if let Some(rule) = budget.over(declared_total) {
            let path = paths(zip).nth(index).unwrap_or_default();
            return Err(refuse(path, format!("declared sizes: {rule}")));
        }
        ranges.push((range, index));
        if let Some(target) = target {
            symlinks.push((index, target));
        }
        entries.push(entry);
    }
    let names: Vec<&str> = paths(zip).collect();
    check_overlaps(ranges, zip.central_directory_start(), &names)?;
    // The cap is on what extraction creates: 40 entries named a/a/a/…/f imply tens of
    // thousands of directories, each a real inode and block, none counted in any size.
    let dirs = check_tree(&names, &entries, limits.max_entries)?;
    // Most archives have no symlink (they need `allow_symlinks`): no sets to build then.
    if !symlinks.is_empty() {
        let symlink_paths: HashSet<&str> = symlinks.iter().map(|(i, _)| names[*i]).collect();
        let dir_paths: HashSet<&str> = dirs
            .iter()
            .map(|(owner, end)| &names[*owner][..*end])
            .collect();
        for (i, target) in &symlinks {
            check_link_target(names[*i], target, &symlink_paths, &dir_paths)?;
        }
    }
    let mut files: Vec<usize> = (0..entries.len())
        .filter(|i| entries[*i].kind == Kind::File)
        .collect();
    // Unstable, with the index breaking ties, for the order a stable sort gives (the
    // unstable sort is the smaller code, in a library linked into firmware).
    files.sort_unstable_by_key(|i| {
        let e = &entries[*i];
        (std::cmp::Reverse(e.declared.max(e.compressed)), *i)
    });
    Ok(Plan {
        entries,
        dirs,
        files,
        symlinks,
    })
}

/// Reads and checks one central-directory entry (and its local header, for the range);
/// a symlink's target too.
fn read_entry(
    zip: &mut ZipArchive<At>,
    index: usize,
    limits: &ArchiveLimits,
) -> Result<(Entry, std::ops::Range<u64>, Option<String>)> {
    let raw = zip
        .by_index_raw(index)
        .map_err(|e| unsafe_archive(format!("zip entry #{index}: unreadable header: {e}")))?;
    let (path, is_dir) = check_name(raw.name_raw()).map_err(|rule| {
        unsafe_archive(format!("zip entry {}: {rule}", shown_name(raw.name_raw())))
    })?;
    let kind = match (is_dir, raw.is_symlink()) {
        (true, true) => return Err(refuse(path, "a directory name with a symlink mode")),
        (true, false) => Kind::Dir,
        (false, true) => Kind::Symlink,
        (false, false) => Kind::File,
    };
    if raw.encrypted() {
        return Err(refuse(path, "encrypted entries are not supported"));
    }
    let method = raw.compression();
    if !matches!(
        method,
        CompressionMethod::Stored | CompressionMethod::Deflated
    ) {
        return Err(refuse(
            path,
            format!("expected the stored or deflate method, found {method}"),
        ));
    }
    if kind == Kind::Symlink && !limits.allow_symlinks {
        return Err(refuse(path, "symlink entries are not allowed"));
    }
    let (compressed, declared) = (raw.compressed_size(), raw.size());
    let entry_cap = ratio_cap(limits.max_ratio, compressed);
    if declared > entry_cap {
        return Err(refuse(
            path,
            format!(
                "declares {declared} bytes from {compressed} compressed, more than the ratio {}",
                limits.max_ratio
            ),
        ));
    }
    let start = raw.header_start();
    let end = raw
        .data_start()
        .and_then(|d| d.checked_add(compressed))
        .ok_or_else(|| refuse(path, "its data range cannot be located"))?;
    let mode = match raw.unix_mode() {
        Some(m) if kind == Kind::File && m & 0o111 != 0 => 0o755,
        _ if kind == Kind::Dir => DIR_MODE,
        _ => 0o644,
    };
    let entry = Entry {
        compressed,
        declared,
        mode,
        kind,
    };
    if kind != Kind::Symlink {
        return Ok((entry, start..end, None));
    }
    let path = path.to_string();
    drop(raw);
    let target = read_link_target(zip, index, &path)?;
    Ok((entry, start..end, Some(target)))
}

/// Checks a raw entry name. Returns the path without its trailing `/` and whether it
/// names a directory, or the rule it breaks. Refuses rather than strips: an archive that
/// needs cleaning up is not what was released.
fn check_name(raw: &[u8]) -> std::result::Result<(&str, bool), &'static str> {
    if raw.len() > MAX_NAME {
        return Err("expected a name of at most 4095 bytes (PATH_MAX)");
    }
    let name = std::str::from_utf8(raw).map_err(|_| "the name is not UTF-8")?;
    if name.contains('\0') {
        return Err("the name contains NUL");
    }
    if name.contains('\\') {
        return Err("the name contains a backslash");
    }
    if name.chars().any(char::is_control) {
        return Err("the name contains a control character");
    }
    if name.starts_with('/') {
        return Err("the name is an absolute path");
    }
    let b = name.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Err("the name starts with a drive letter");
    }
    let (path, is_dir) = match name.strip_suffix('/') {
        Some(p) => (p, true),
        None => (name, false),
    };
    for component in path.split('/') {
        match component {
            "" => return Err("the name has an empty path component"),
            "." => return Err("the name has a `.` component"),
            ".." => return Err("the name has a `..` component"),
            c if c.len() > MAX_COMPONENT => {
                return Err("expected path components of at most 255 bytes (NAME_MAX)")
            }
            _ => {}
        }
    }
    Ok((path, is_dir))
}

/// A raw entry name for a message: quoted, and cut short when it is too long to be one.
fn shown_name(raw: &[u8]) -> String {
    const SHOWN: usize = 128;
    if raw.len() <= MAX_NAME {
        return format!("{:?}", String::from_utf8_lossy(raw));
    }
    let head = String::from_utf8_lossy(&raw[..SHOWN]);
    format!("{head:?}… ({} bytes)", raw.len())
}

/// Refuses two entries whose local header + data ranges share a byte (the overlapping
/// entries bomb reuses one compressed body for many entries), or that run into the
/// central directory. `ranges` holds each range with its entry's index into `names`.
fn check_overlaps(
    mut ranges: Vec<(std::ops::Range<u64>, usize)>,
    dir_start: u64,
    names: &[&str],
) -> Result<()> {
    ranges.sort_unstable_by_key(|(r, i)| (r.start, r.end, *i));
    if let Some((_, i)) = ranges.iter().find(|(r, _)| r.end > dir_start) {
        return Err(refuse(names[*i], "its data overlaps the central directory"));
    }
    for pair in ranges.windows(2) {
        let ((a, a_index), (b, b_index)) = (&pair[0], &pair[1]);
        if a.end > b.start {
            return Err(refuse(
                names[*b_index],
                format!("its bytes overlap those of entry {:?}", names[*a_index]),
            ));
        }
    }
    Ok(())
}

/// What a path is, as far as the tree check knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    /// A directory only implied by a deeper entry.
    Implied,
    Entry(Kind),
}

impl Node {
    fn is_dir(self) -> bool {
        matches!(self, Node::Implied | Node::Entry(Kind::Dir))
    }
}

/// One path extraction creates: `names[owner][..end]`, borrowed from the first entry
/// that names it, so a path costs the same whatever its depth; its last component is
/// `names[owner][start..end]`, under the node `parent` (1 + its index; 0 is `dest`).
struct TreeNode {
    owner: u32,
    parent: u32,
    /// 1 + the index of the node found before this one with the same key hash; 0 for none.
    next: u32,
    start: u16,
    end: u16,
    node: Node,
}

/// Refuses duplicate and case-colliding paths (including the directories they imply), a
/// path that is both a file and a directory, any entry under a symlink (a write
/// through it), and more than `max_nodes` paths to create. `names` and `entries` are
/// the entries' paths and kinds. Returns every directory to create as `(entry, end)`,
/// naming `names[entry][..end]`, parents first.
///
/// Paths are looked up one component at a time, under their parent: keyed by whole
/// paths, each of the 2,000 directories `a/a/…/f` implies cost a copy of its whole
/// path, and one entry a few kilobytes long cost megabytes. Nor is any component
/// copied: the index holds the hash of the folded component and its parent, and nodes
/// with the same hash are chained and compared in place.
fn check_tree(names: &[&str], entries: &[Entry], max_nodes: u64) -> Result<Vec<(usize, usize)>> {
    use std::hash::{BuildHasher, Hasher};
    let too_many = || {
        unsafe_archive(format!(
            "expected at most {max_nodes} files, directories and links to create, found more (the directories implied by the entry names included)"
        ))
    };
    let keys = std::collections::hash_map::RandomState::new();
    let hash = |parent: u32, component: &str| {
        let mut h = keys.build_hasher();
        h.write_u32(parent);
        h.write(folded(component).as_bytes());
        h.finish()
    };
    // Key hash -> 1 + index into `nodes` of the last node with that hash.
    let mut index: HashMap<u64, u32> = HashMap::with_capacity(names.len());
    let mut nodes: Vec<TreeNode> = Vec::with_capacity(names.len());
    for (owner, (path, e)) in names.iter().zip(entries).enumerate() {
        let owner = u32::try_from(owner).map_err(|_| too_many())?;
        let (mut parent, mut start) = (0u32, 0usize);
        loop {
            // Names are at most MAX_NAME (4095) bytes: every offset fits in a u16.
            let end = path[start..].find('/').map_or(path.len(), |i| start + i);
            let last = end == path.len();
            let node = if last {
                Node::Entry(e.kind)
            } else {
                Node::Implied
            };
            let component = &path[start..end];
            let h = hash(parent, component);
            let mut found = index.get(&h).copied().unwrap_or(0);
            while found != 0 {
                let other = &nodes[found as usize - 1];
                let other_name = names[other.owner as usize];
                let other_component = &other_name[usize::from(other.start)..usize::from(other.end)];
                if other.parent == parent && folded(other_component) == folded(component) {
                    break;
                }
                found = other.next;
            }
            parent = if found != 0 {
                let other = &mut nodes[found as usize - 1];
                let other_path = &names[other.owner as usize][..usize::from(other.end)];
                merge_node(other, other_path, &path[..end], node, path)?;
                found
            } else {
                // Counted as they are found: the whole tree of a hostile archive
                // is never built only to be refused.
                if nodes.len() as u64 >= max_nodes || nodes.len() >= u32::MAX as usize - 1 {
                    return Err(too_many());
                }
                let next = index.get(&h).copied().unwrap_or(0);
                nodes.push(TreeNode {
                    owner,
                    parent,
                    next,
                    start: start as u16,
                    end: end as u16,
                    node,
                });
                let n = nodes.len() as u32;
                index.insert(h, n);
                n
            };
            if last {
                break;
            }
            start = end + 1;
        }
    }
    Ok(nodes
        .iter()
        .filter(|n| n.node.is_dir())
        .map(|n| (n.owner as usize, usize::from(n.end)))
        .collect())
}

/// Meets `path`, named as `node` by the entry `owner_path`, again at `other`, which
/// holds `other_path` (the same path but for case).
fn merge_node(
    other: &mut TreeNode,
    other_path: &str,
    path: &str,
    node: Node,
    owner_path: &str,
) -> Result<()> {
    if other_path != path {
        return Err(refuse(
            owner_path,
            format!("{path:?} collides case-insensitively with {other_path:?}"),
        ));
    }
    match (other.node, node) {
        (a, Node::Implied) if a.is_dir() => Ok(()),
        (Node::Implied, Node::Entry(Kind::Dir)) => {
            other.node = node;
            Ok(())
        }
        (Node::Entry(Kind::Symlink), _) | (_, Node::Entry(Kind::Symlink)) => Err(refuse(
            owner_path,
            format!("{path:?} is a symlink entry and a path written through it"),
        )),
        (a, b) if a.is_dir() != b.is_dir() => Err(refuse(
            owner_path,
            format!("{path:?} is both a file and a directory"),
        )),
        _ => Err(refuse(owner_path, "the name is listed twice")),
    }
}

fn read_link_target(zip: &mut ZipArchive<At>, index: usize, path: &str) -> Result<String> {
    let mut entry = zip
        .by_index(index)
        .map_err(|e| refuse(path, format!("unreadable symlink target: {e}")))?;
    let mut target = Vec::new();
    (&mut entry)
        .take(MAX_LINK_TARGET + 1)
        .read_to_end(&mut target)
        .map_err(|e| refuse(path, format!("unreadable symlink target: {e}")))?;
    if target.len() as u64 > MAX_LINK_TARGET {
        return Err(refuse(
            path,
            format!("expected a symlink target of at most {MAX_LINK_TARGET} bytes"),
        ));
    }
    String::from_utf8(target).map_err(|_| refuse(path, "the symlink target is not UTF-8"))
}

/// A symlink must be relative and, resolved from its own directory, stay inside the
/// component, passing only through directories the archive creates: through another
/// symlink, a later `..` would land where that symlink's target says, not where the
/// names say. Those directories must be spelled as the archive spells them: on a
/// case-insensitive file system `l/..` opens the symlink `L`, and a name the archive
/// does not create may be one the file system folds onto one it does.
fn check_link_target(
    path: &str,
    target: &str,
    symlinks: &HashSet<&str>,
    dirs: &HashSet<&str>,
) -> Result<()> {
    let bad = |why: &str| Err(refuse(path, format!("symlink to {target:?} {why}")));
    if target.is_empty() {
        return bad("is empty");
    }
    if target.starts_with('/') {
        return bad("is absolute");
    }
    if target.contains(['\0', '\\']) {
        return bad("contains NUL or a backslash");
    }
    let mut at: Vec<&str> = path.split('/').collect();
    at.pop();
    let parts: Vec<&str> = target
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    for (i, part) in parts.iter().enumerate() {
        if *part == ".." {
            if at.pop().is_none() {
                return bad("points outside the component");
            }
            continue;
        }
        at.push(part);
        if i + 1 == parts.len() {
            continue;
        }
        let through = at.join("/");
        if symlinks.contains(through.as_str()) {
            return bad("passes through another symlink");
        }
        if !dirs.contains(through.as_str()) {
            return bad(&format!(
                "passes through {through:?}, which is not a directory of the archive"
            ));
        }
    }
    Ok(())
}

fn write(zip: &ZipArchive<At>, plan: &Plan, dest: &Path, budget: &Budget) -> Result<ExtractStats> {
    let names: Vec<&str> = paths(zip).collect();
    let mut stats = ExtractStats::default();
    for &(owner, end) in &plan.dirs {
        let path = dest.join(&names[owner][..end]);
        DirBuilder::new()
            .mode(DIR_MODE)
            .create(&path)
            .map_err(|e| Error::io("create directory", &path, e))?;
        // No symlink exists under `dest` yet, so this path can't be redirected.
        std::fs::set_permissions(&path, Permissions::from_mode(DIR_MODE))
            .map_err(|e| Error::io("set the mode of", &path, e))?;
        stats.dirs += 1;
    }
    let bytes = AtomicU64::new(0);
    run_parallel(
        &plan.files,
        || Ok((zip.clone(), vec![0u8; BUF_SIZE])),
        |(zip, buf), &i| {
            let entry = &plan.entries[i];
            let path = dest.join(names[i]);
            let mut out = create_new_file(&path, entry.mode)?;
            let n = inflate_into(zip, i, entry, &mut out, (names[i], &path), budget, buf)?;
            bytes.fetch_add(n, Relaxed);
            Ok(())
        },
    )?;
    stats.files = plan.files.len() as u64;
    stats.bytes = bytes.into_inner();
    for (i, target) in &plan.symlinks {
        let path = dest.join(names[*i]);
        std::os::unix::fs::symlink(target, &path)
            .map_err(|e| Error::io("create symlink", &path, e))?;
        stats.symlinks += 1;
    }
    Ok(stats)
}

/// Inflates the file entry `index` into `out`, counting every byte against the entry's
/// ratio cap and the shared budget as it goes. `shown` is the entry's name and the path
/// written, for errors.
fn inflate_into(
    zip: &mut ZipArchive<At>,
    index: usize,
    entry: &Entry,
    out: &mut dyn Write,
    shown: (&str, &Path),
    budget: &Budget,
    buf: &mut [u8],
) -> Result<u64> {
    let (name, path) = shown;
    let corrupt = |e: &dyn std::fmt::Display| refuse(name, format!("corrupt data: {e}"));
    let mut reader = zip.by_index(index).map_err(|e| corrupt(&e))?;
    let cap = ratio_cap(budget.max_ratio, entry.compressed);
    let mut written = 0u64;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_data_error(&e) => return Err(corrupt(&e)),
            Err(e) => return Err(Error::io("read the archive for", path, e)),
        };
        written += n as u64;
        if written > cap {
            return Err(refuse(
                name,
                format!(
                    "inflates to more than {} times its {} compressed bytes",
                    budget.max_ratio, entry.compressed
                ),
            ));
        }
        budget.take(n as u64, name)?;
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("write", path, e))?;
    }
    if written != entry.declared {
        return Err(refuse(
            name,
            format!("declares {} bytes, inflated to {written}", entry.declared),
        ));
    }
    Ok(written)
}

fn is_data_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidInput
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    /// A checked archive of empty files at `names`.
    fn checked(names: impl Iterator<Item = String>) -> CheckedZip {
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        for name in names {
            w.start_file(name, zip::write::SimpleFileOptions::default())
                .unwrap();
        }
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&w.finish().unwrap().into_inner()).unwrap();
        file.rewind().unwrap();
        CheckedZip::check(&file, None, &ArchiveLimits::default()).unwrap()
    }

    /// A directory's blocks are counted from its entries, as ext4 lays them out, doubled
    /// past one block for a hashed directory's half-full blocks: 2,000 names of 100 bytes
    /// take 216,024 bytes there (24 for `.` and `..`, 108 each), not one block. Counted as
    /// one, such an archive passed the room check and ran out of room after the slot was
    /// emptied.
    #[test]
    fn a_directory_is_counted_by_its_entries() {
        let free = crate::space::Free {
            bytes: 1 << 30,
            block: 4096,
        };
        let many = checked((0..2000).map(|i| format!("many/{i:0100}")));
        let doubled = free.blocks_for(2 * (24 + 2000 * 108));
        // The component's own directory holds one entry, `many`: one block.
        assert_eq!(many.space_needed(&free), doubled + 4096);
        // A few short names fit in one block each.
        let few = checked(["a/x", "a/y", "b/z"].map(String::from).into_iter());
        assert_eq!(few.space_needed(&free), 3 * 4096);
    }
}
