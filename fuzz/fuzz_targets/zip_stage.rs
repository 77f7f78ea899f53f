//! Zip staging: `stage::extract_zip` on arbitrary archives (DESIGN §5.5).
//!
//! Input: one mode byte, then the archive. Bit 0 allows symlink entries; bit 1 passes an
//! `installed_size` (the archive's length × 64) on top of the configured caps.
//!
//! The archive is written to a file in a fresh temporary directory (`$TMPDIR`; a tmpfs
//! such as `/dev/shm` is fastest) and extracted into `<tmp>/slot/app`.
//!
//! Properties: no panic, no hang, bounded memory and disk; nothing is ever written outside
//! the destination; a refusal leaves nothing behind; what is extracted has masked modes,
//! symlinks (when allowed) that stay inside the component, and matches the returned stats;
//! the publisher's check (`CheckedZip::check` then `inflate_all`, with the same caps)
//! passes exactly the archives that extract.
#![no_main]

use evergreen::stage::{extract_zip, ArchiveLimits, CheckedZip, ExtractStats};
use libfuzzer_sys::fuzz_target;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

/// Caps low enough that a bomb hits them in milliseconds, not the defaults' 16 GiB.
fn limits(allow_symlinks: bool) -> ArchiveLimits {
    ArchiveLimits {
        max_installed_bytes: 32 << 20,
        max_entries: 4096,
        // Small enough that the check meets it: a fuzzed archive is small.
        max_central_directory_bytes: 64 << 10,
        max_ratio: 1000,
        allow_symlinks,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, archive)) = evergreen_fuzz::split_mode(data) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let zip_path = tmp.path().join("in.zip");
    fs::write(&zip_path, archive).expect("write the archive");
    let slot = tmp.path().join("slot");
    fs::create_dir(&slot).expect("create the slot directory");
    let dest = slot.join("app");

    let file = fs::File::open(&zip_path).expect("open the archive");
    let installed_size = (mode & 2 != 0).then(|| archive.len() as u64 * 64);
    let result = extract_zip(&file, &dest, installed_size, &limits(mode & 1 != 0));
    let published = CheckedZip::check(&file, installed_size, &limits(mode & 1 != 0))
        .and_then(CheckedZip::inflate_all);
    assert_eq!(
        published.as_ref().map(drop).map_err(|e| e.kind()),
        result.as_ref().map(drop).map_err(|e| e.kind()),
        "the publisher's check and the extraction disagree: {published:?} / {result:?}"
    );

    // Nothing outside the destination: the temporary directory holds what it held.
    assert_eq!(names(tmp.path()), ["in.zip", "slot"]);
    assert_eq!(fs::read(&zip_path).expect("read the archive back"), archive);
    match result {
        Ok(stats) => {
            assert_eq!(names(&slot), ["app"]);
            let mode = fs::metadata(&dest).expect("stat dest").permissions().mode() & 0o7777;
            assert_eq!(mode, 0o755, "a complete destination is 0755");
            assert_eq!(walk(&dest), stats);
        }
        // A refusal leaves nothing, not even the destination it created.
        Err(_) => assert!(
            names(&slot).is_empty(),
            "a refused archive left {:?}",
            names(&slot)
        ),
    }
});

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("list a directory")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// Counts what is under `root`, checking every entry on the way.
fn walk(root: &Path) -> ExtractStats {
    let mut stats = ExtractStats::default();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("list a directory") {
            let path = entry.expect("a directory entry").path();
            let meta = fs::symlink_metadata(&path).expect("stat an entry");
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).expect("read a symlink");
                assert!(
                    stays_inside(root, &path, &target),
                    "{} -> {}",
                    path.display(),
                    target.display()
                );
                stats.symlinks += 1;
            } else if meta.is_dir() {
                assert_eq!(mode, 0o755, "{}", path.display());
                stats.dirs += 1;
                pending.push(path);
            } else {
                assert!(meta.is_file(), "{} is not a regular file", path.display());
                assert!(
                    mode == 0o644 || mode == 0o755,
                    "{} has mode {mode:o}",
                    path.display()
                );
                stats.files += 1;
                stats.bytes += meta.len();
            }
        }
    }
    stats
}

/// Whether `target`, read relative to the link's directory, names a path under `root`
/// (lexically: a relative target with no more `..` than it has depth).
fn stays_inside(root: &Path, link: &Path, target: &Path) -> bool {
    let mut at: Vec<Component> = link
        .parent()
        .and_then(|p| p.strip_prefix(root).ok())
        .map_or_else(Vec::new, |p| p.components().collect());
    for c in target.components() {
        match c {
            Component::Normal(_) => at.push(c),
            Component::CurDir => {}
            Component::ParentDir => {
                if at.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}
