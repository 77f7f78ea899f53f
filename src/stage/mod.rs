//! Staging: putting a release's components into the inactive slot (DESIGN §5.5).
//!
//! - [`extract_zip`] unpacks a `zip` artifact with our own extraction loop, refusing
//!   anything that could escape the component directory or exhaust the disk
//!   ([`CheckedZip`]: its checks first, before anything is written);
//! - [`place_file`] puts a `file` artifact in place;
//! - [`make_durable`] syncs a whole staged slot once, at the end;
//! - [`diff`] says which components are Added / Removed / Modified / Unchanged.
//!
//! Nothing here syncs per write: the installer calls [`make_durable`] once for the slot
//! before it marks the slot `installed`.

mod diff;
mod extract;
mod tree;

pub use diff::{diff, ComponentChange, ComponentOp, InstalledComponent};
pub use extract::{extract_zip, CheckedZip};
pub use tree::{make_durable, place_file, WriteWatch};

use crate::error::{Error, ErrorKind, Result};

/// Limits that an archive must stay within, whatever its headers declare. The defaults are
/// the config's (`archive` in the device config, [`crate::config::ArchiveLimits`]), which the
/// updater applies.
///
/// ```
/// let limits = evergreen::stage::ArchiveLimits::default();
/// assert_eq!(limits.max_installed_bytes, 16 << 30);
/// assert_eq!(limits.max_central_directory_bytes, 16 << 20);
/// assert_eq!(limits.max_ratio, 250);
/// assert!(!limits.allow_symlinks);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// The most bytes an archive may inflate to in total (default 16 GiB), on top of the
    /// artifact's own `installed_size`.
    pub max_installed_bytes: u64,
    /// The most entries (files, directories, symlinks) an archive may hold (default 100,000).
    pub max_entries: u64,
    /// The largest central directory (the list of entries, with their names, extra fields
    /// and comments) an archive may have, in bytes (default 16 MiB), refused from the size
    /// its end record declares before the directory is read. The zip reader and the plan
    /// hold up to six times its size (entries with the shortest names): the default takes
    /// 100,000 entries with 120-byte paths; 1 MiB (about 20,000 entries with short names,
    /// 10,000 with 60-byte paths) keeps a full update within DESIGN §12's 16 MiB.
    pub max_central_directory_bytes: u64,
    /// The highest inflated/compressed ratio, per entry and for the whole archive
    /// (default 250; deflate's own limit is ~1032). Outputs up to [`RATIO_GRACE_BYTES`] are
    /// exempt.
    pub max_ratio: u64,
    /// Whether symlink entries are extracted (default false: they are refused). Even when
    /// allowed, a symlink must be relative and point inside the component.
    pub allow_symlinks: bool,
}

/// Entries (and archives) that inflate to no more than this are exempt from the ratio
/// rule: tiny, very regular files compress unpredictably well and cannot exhaust anything.
pub const RATIO_GRACE_BYTES: u64 = 64 << 10;

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_installed_bytes: 16 << 30,
            max_entries: 100_000,
            max_central_directory_bytes: 16 << 20,
            max_ratio: 250,
            allow_symlinks: false,
        }
    }
}

/// What an extraction or a copy created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Regular files written.
    pub files: u64,
    /// Directories created below the destination (not counting the destination itself).
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes written into regular files.
    pub bytes: u64,
}

/// Buffer size for copies: large enough that syscalls are not the cost.
const BUF_SIZE: usize = 256 << 10;

/// How many threads share CPU-bound staging work.
fn workers(items: usize) -> usize {
    crate::cpus::usable().clamp(1, 8).min(items).max(1)
}

/// Runs `work` on every item, spread over [`workers`] threads (this one and the others
/// the OS gives) that take the next item as they free up (callers sort big items first
/// so the threads finish together). Each
/// thread builds its own state with `init`. After the first failure the other threads stop
/// taking items, and that first error is returned.
fn run_parallel<T: Sync, S>(
    items: &[T],
    init: impl Fn() -> crate::Result<S> + Sync,
    work: impl Fn(&mut S, &T) -> crate::Result<()> + Sync,
) -> crate::Result<()> {
    // Only this adapter is built per caller; the threads are the one `run_indexed`
    // (firmware builds count their bytes).
    run_indexed(items.len(), &|| {
        let mut state = init()?;
        let work = &work;
        Ok(Box::new(move |i: usize| work(&mut state, &items[i])) as Box<IndexedWork<'_>>)
    })
}

/// One thread's work on the item at an index.
type IndexedWork<'a> = dyn FnMut(usize) -> crate::Result<()> + 'a;

/// [`run_parallel`] on the indices `0..len`: each thread gets its work from `start`.
fn run_indexed<'a>(
    len: usize,
    start: &(dyn Fn() -> crate::Result<Box<IndexedWork<'a>>> + Sync),
) -> crate::Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let worker = || -> crate::Result<()> {
        let result = start().and_then(|mut work| loop {
            if failed.load(Relaxed) {
                return Ok(());
            }
            let i = next.fetch_add(1, Relaxed);
            if i >= len {
                return Ok(());
            }
            work(i)?;
        });
        if result.is_err() {
            failed.store(true, Relaxed);
        }
        result
    };
    std::thread::scope(|s| {
        // This thread is one of the workers. The others are as many threads as the OS
        // gives, up to the count: at a thread limit, this one does all the work.
        let spawn = || std::thread::Builder::new().spawn_scoped(s, worker).ok();
        let handles: Vec<_> = (1..workers(len)).map_while(|_| spawn()).collect();
        let mut first = worker();
        for handle in handles {
            match handle.join() {
                Ok(Err(e)) if first.is_ok() => first = Err(e),
                Ok(_) => {}
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        first
    })
}

/// Checks that the open `file` holds exactly `artifact`'s bytes (size and SHA-256), reading
/// positionally so the file offset stays where it was.
///
/// Staging calls this on the descriptor it then installs from: a download may sit on disk
/// for days before it is installed (`download_only`), and whatever it was verified as
/// then, what is installed is what was verified now, through the same open file. An
/// unchanged component is installed the same way, from the download kept since it was
/// installed.
pub fn verify_artifact(file: &std::fs::File, artifact: &crate::manifest::Artifact) -> Result<()> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::FileExt;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut buf, offset).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("reading artifact {}: {e}", artifact.sha256),
            )
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
        if offset > artifact.size {
            break;
        }
    }
    let found = crate::trust::hex(&crate::trust::hash_out(hasher));
    if offset == artifact.size && found == artifact.sha256 {
        return Ok(());
    }
    // Reading stopped past the size: the hash of a longer file is not worth reading on
    // for, and is not named.
    let found = match offset > artifact.size {
        true => {
            let len = file.metadata().map_or(offset, |m| m.len().max(offset));
            format!("{len} bytes")
        }
        false => format!("{offset} bytes with sha256 {found}"),
    };
    Err(Error::new(
        ErrorKind::HashMismatch,
        format!(
            "expected {} bytes with sha256 {}, found {found}",
            artifact.size, artifact.sha256
        ),
    ))
}

#[cfg(test)]
mod artifact_tests {
    use super::*;
    use crate::manifest::{Artifact, ArtifactKind};

    fn artifact(bytes: &[u8]) -> Artifact {
        Artifact {
            kind: ArtifactKind::File,
            sha256: crate::trust::sha256_hex(bytes),
            size: bytes.len() as u64,
            installed_size: None,
            compression: None,
            installed_sha256: None,
            name: None,
            url: None,
        }
    }

    /// A wrong file says what it is: its whole length (however far past the expected
    /// size reading stopped), or its length and hash when it is no longer.
    #[test]
    fn a_wrong_artifact_is_named_by_its_real_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let expected = artifact(&[7u8; 100]);
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let err = verify_artifact(&file, &expected).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::HashMismatch);
        assert!(
            err.to_string().ends_with(&format!(
                "expected 100 bytes with sha256 {}, found 1048576 bytes",
                expected.sha256
            )),
            "{err}"
        );

        std::fs::write(&path, [8u8; 100]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let err = verify_artifact(&file, &expected).unwrap_err();
        let found = crate::trust::sha256_hex(&[8u8; 100]);
        assert!(
            err.to_string()
                .ends_with(&format!("found 100 bytes with sha256 {found}")),
            "{err}"
        );
        std::fs::write(&path, [7u8; 100]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        verify_artifact(&file, &expected).unwrap();
    }
}

#[cfg(test)]
mod tests {
    /// Extraction spreads over the CPUs the process may use, eight at most, and never
    /// over more threads than entries.
    #[test]
    fn workers_are_the_usable_cpus_up_to_eight_and_the_items() {
        assert_eq!(super::workers(0), 1);
        assert_eq!(super::workers(1), 1);
        assert_eq!(super::workers(1000), crate::cpus::usable().clamp(1, 8));
    }
}
