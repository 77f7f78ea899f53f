//! Staging against hostile archives (DESIGN §5.5, §11): zip slip, symlink escapes, bombs,
//! and the copy / placement / diff a real update relies on.
//!
//! Every archive is built here with the zip crate's writer, plus byte surgery where the
//! writer would not produce the attack. Every refusal asserts `unsafe_archive` and that
//! nothing exists outside the destination.

mod common;
mod mounts;
mod require;
mod support;

use common::zips::{build, build_with, overlapping_bomb, patch_all, patch_zip64_size, Item};
use evergreen::manifest::{ArtifactKind, TargetRelease};
use evergreen::stage::{
    diff, extract_zip, make_durable, place_file, ArchiveLimits, CheckedZip, ComponentOp,
    InstalledComponent, WriteWatch,
};
use evergreen::ErrorKind;
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

use Item::{Dir, File, Link};

/// A temp dir holding `archive.zip` and `out/`; extraction goes to `out/dest`.
struct Case {
    tmp: tempfile::TempDir,
}

impl Case {
    fn new(bytes: &[u8]) -> Case {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("archive.zip"), bytes).unwrap();
        fs::create_dir(tmp.path().join("out")).unwrap();
        Case { tmp }
    }
    fn out(&self) -> PathBuf {
        self.tmp.path().join("out")
    }
    fn dest(&self) -> PathBuf {
        self.out().join("dest")
    }
    fn extract(
        &self,
        installed: Option<u64>,
        limits: &ArchiveLimits,
    ) -> evergreen::Result<evergreen::stage::ExtractStats> {
        let archive = fs::File::open(self.tmp.path().join("archive.zip")).unwrap();
        extract_zip(&archive, &self.dest(), installed, limits)
    }
    /// Asserts the refusal and that nothing at all was left behind or escaped.
    fn refused(&self, installed: Option<u64>, limits: &ArchiveLimits, escapes: &[&Path]) -> String {
        let err = self.extract(installed, limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsafeArchive, "{err}");
        assert_eq!(listing(&self.out()), Vec::<String>::new(), "{err}");
        assert_eq!(listing(self.tmp.path()), ["archive.zip", "out"], "{err}");
        for p in escapes {
            assert!(fs::symlink_metadata(p).is_err(), "{} exists", p.display());
        }
        err.to_string()
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn limits() -> ArchiveLimits {
    ArchiveLimits::default()
}

/// `len` pseudo-random bytes (xorshift): deflate cannot shrink them.
fn noise(len: usize) -> Vec<u8> {
    support::noise(len, 0x9e37_79b9_7f4a_7c15)
}

fn symlinks_allowed() -> ArchiveLimits {
    ArchiveLimits {
        allow_symlinks: true,
        ..ArchiveLimits::default()
    }
}

/// A name unique to this test process, for escape paths in shared directories like /tmp.
fn unique(tag: &str) -> String {
    format!("evergreen-stage-{}-{tag}", std::process::id())
}

// ---- normal extraction -------------------------------------------------------------

#[test]
fn extracts_nested_dirs_with_masked_modes() {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let bytes = build(&[
        Dir("empty/"),
        File("bin/tool", b"#!/bin/sh\necho hi\n", 0o4755),
        File("bin/private", b"secret", 0o600),
        File("share/doc/deep/readme.txt", b"read me", 0o644),
        File("share/big.bin", &big, 0o2700),
        File("top.txt", b"", 0o666),
    ]);
    let case = Case::new(&bytes);
    let total = 18 + 6 + 7 + big.len() as u64;
    let stats = case.extract(Some(total), &limits()).unwrap();
    assert_eq!(stats.files, 5);
    assert_eq!(stats.bytes, total);
    // empty, bin, share, share/doc, share/doc/deep
    assert_eq!(stats.dirs, 5);
    let d = case.dest();
    assert_eq!(fs::read(d.join("share/big.bin")).unwrap(), big);
    assert_eq!(
        fs::read(d.join("share/doc/deep/readme.txt")).unwrap(),
        b"read me"
    );
    assert_eq!(
        mode(&d.join("bin/tool")),
        0o755,
        "exec bit kept, setuid dropped"
    );
    assert_eq!(mode(&d.join("share/big.bin")), 0o755, "setgid dropped");
    assert_eq!(mode(&d.join("bin/private")), 0o644);
    assert_eq!(mode(&d.join("top.txt")), 0o644, "world-writable dropped");
    for dir in ["", "empty", "bin", "share/doc/deep"] {
        assert_eq!(mode(&d.join(dir)), 0o755, "{dir}");
    }
    make_durable(&d).unwrap();
}

#[test]
fn stored_entries_and_many_files_extract_on_all_threads() {
    let names: Vec<String> = (0..200).map(|i| format!("d{}/f{i}.txt", i % 7)).collect();
    let bodies: Vec<Vec<u8>> = (0..200)
        .map(|i| vec![b'a' + (i % 26) as u8; i * 50])
        .collect();
    let items: Vec<Item> = names
        .iter()
        .zip(&bodies)
        .map(|(n, b)| File(n, b, 0o644))
        .collect();
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    for bytes in [build(&items), build_with(&items, stored)] {
        let case = Case::new(&bytes);
        let stats = case.extract(None, &limits()).unwrap();
        assert_eq!((stats.files, stats.dirs), (200, 7));
        for (n, b) in names.iter().zip(&bodies) {
            assert_eq!(&fs::read(case.dest().join(n)).unwrap(), b);
        }
    }
}

#[test]
fn an_existing_empty_dest_is_adopted_and_emptied_again_on_failure() {
    let case = Case::new(&build(&[File("a", b"1", 0o644), File("A", b"2", 0o644)]));
    fs::create_dir(case.dest()).unwrap();
    let err = case.extract(None, &limits()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsafeArchive);
    assert_eq!(listing(&case.dest()), Vec::<String>::new());

    fs::write(case.dest().join("left-over"), b"x").unwrap();
    let ok = Case::new(&build(&[File("a", b"1", 0o644)]));
    let archive = fs::File::open(ok.tmp.path().join("archive.zip")).unwrap();
    let err = extract_zip(&archive, &case.dest(), None, &limits()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
    assert_eq!(
        listing(&case.dest()),
        ["left-over"],
        "never cleans what it did not write"
    );
}

/// Extraction tightens an adopted directory to 0700 while it writes; an archive refused
/// midway (a corrupt body passes the plan, which reads only headers) leaves it empty and
/// with the mode it had before, which need not be the 0755 a finished one gets.
#[test]
fn a_failed_extraction_gives_an_adopted_dest_its_mode_back() {
    let body = noise(100_000);
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    let items = [
        File("ok.txt", b"fine", 0o644),
        File("bad.bin", &body, 0o644),
    ];
    let mut bytes = build_with(&items, stored);
    let start = bytes.windows(64).position(|w| w == &body[..64]).unwrap();
    bytes[start + body.len() / 2] ^= 0xff;
    for before in [0o755, 0o750] {
        let case = Case::new(&bytes);
        fs::create_dir(case.dest()).unwrap();
        fs::set_permissions(case.dest(), fs::Permissions::from_mode(before)).unwrap();
        let err = case.extract(None, &limits()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsafeArchive, "{err}");
        assert!(err.to_string().contains("corrupt data"), "{err}");
        assert_eq!(listing(&case.dest()), Vec::<String>::new(), "{err}");
        let octal = |m: u32| format!("{m:o}");
        assert_eq!(octal(mode(&case.dest())), octal(before), "{err}");
    }
}

#[test]
fn not_a_zip_is_unsafe_archive() {
    let case = Case::new(b"this is not a zip file at all");
    case.refused(None, &limits(), &[]);
}

// ---- names -------------------------------------------------------------------------

fn refused_name(name: &str, escape: &Path) -> String {
    let bytes = build(&[File("ok.txt", b"fine", 0o644), File(name, b"evil", 0o644)]);
    Case::new(&bytes).refused(None, &limits(), &[escape])
}

#[test]
fn parent_traversal_is_refused() {
    let name = format!("../../../../tmp/{}", unique("evil.txt"));
    let escape = PathBuf::from("/tmp").join(unique("evil.txt"));
    let msg = refused_name(&name, &escape);
    assert!(msg.contains("`..`") && msg.contains(&name), "{msg}");
}

#[test]
fn backslash_traversal_is_refused() {
    let msg = refused_name(r"..\..\Temp\evil.txt", Path::new("/Temp/evil.txt"));
    assert!(msg.contains("backslash"), "{msg}");
}

#[test]
fn absolute_paths_are_refused() {
    let escape = PathBuf::from("/tmp").join(unique("moo"));
    for name in [
        format!("/tmp/{}", unique("moo")),
        format!("//tmp/{}", unique("moo")),
    ] {
        let msg = refused_name(&name, &escape);
        assert!(msg.contains("absolute"), "{msg}");
    }
}

#[test]
fn inner_traversal_is_refused() {
    let msg = refused_name("tmp/../../moo", Path::new("moo"));
    assert!(msg.contains("`..`"), "{msg}");
}

#[test]
fn drive_letters_are_refused() {
    let msg = refused_name("C:/x", Path::new("C:"));
    assert!(msg.contains("drive letter"), "{msg}");
}

#[test]
fn empty_and_dot_components_are_refused() {
    for name in ["a//b", "./a", "a/./b"] {
        let msg = refused_name(name, Path::new("/nonexistent"));
        assert!(msg.contains("component"), "{name}: {msg}");
    }
}

#[test]
fn nul_and_non_utf8_names_are_refused() {
    for (bad, rule) in [(&b"ev\0l.txt"[..], "NUL"), (&b"ev\xffl.txt"[..], "UTF-8")] {
        let mut bytes = build(&[
            File("ok.txt", b"fine", 0o644),
            File("evil.txt", b"x", 0o644),
        ]);
        patch_all(&mut bytes, b"evil.txt", bad);
        let msg = Case::new(&bytes).refused(None, &limits(), &[]);
        assert!(msg.contains(rule), "{msg}");
    }
}

/// No file system takes them, so they are refused before anything is created rather
/// than failing as `io` halfway through the tree (a 64 KB name of `a/a/…` created two
/// thousand directories, and a second of work per directory in the checks, first).
#[test]
fn names_longer_than_path_max_or_components_longer_than_name_max_are_refused() {
    let deep = format!("{}f", "a/".repeat(2048));
    let wide = format!("dir/{}.txt", "x".repeat(256));
    for (name, rule) in [(&deep, "4095 bytes"), (&wide, "255 bytes")] {
        let msg = refused_name(name, Path::new("/nonexistent"));
        assert!(msg.contains(rule), "{msg}");
        assert!(msg.len() < 600, "the message shows a short name: {msg}");
    }
    // PATH_MAX's 4,095 bytes exactly pass the archive's check (where it is extracted to
    // decides whether they fit: `check_fits`); one byte more is refused.
    let longest = format!("{}f", "a/".repeat(2047));
    assert_eq!(longest.len(), 4095);
    let case = Case::new(&build(&[File(&longest, b"1", 0o644)]));
    let archive = fs::File::open(case.tmp.path().join("archive.zip")).unwrap();
    CheckedZip::check(&archive, None, &limits()).unwrap();
    let msg = refused_name(&format!("{longest}f"), Path::new("/nonexistent"));
    assert!(msg.contains("4095 bytes"), "{msg}");
    // Within them, both extract.
    let deep = format!("{}f", "a/".repeat(1023));
    let wide = format!("dir/{}", "x".repeat(255));
    let bytes = build(&[File(&deep, b"1", 0o644), File(&wide, b"2", 0o644)]);
    let tmp = tempfile::tempdir_in("/tmp").unwrap();
    let archive = tmp.path().join("a.zip");
    fs::write(&archive, &bytes).unwrap();
    let archive = fs::File::open(&archive).unwrap();
    // Short enough a destination that the 2,047-byte name still fits in PATH_MAX.
    let stats = extract_zip(&archive, &tmp.path().join("d"), None, &limits()).unwrap();
    assert_eq!(stats.files, 2);
}

/// A name that fits in PATH_MAX alone but not under the directory it is extracted into
/// is refused by the check given that directory, before anything is cleared or written,
/// rather than failing as `io` halfway through the extraction.
#[test]
fn a_name_too_long_for_its_destination_is_refused_before_writing() {
    let name = format!("{}f", "d/".repeat(2040));
    let bytes = build(&[File(&name, b"1", 0o644)]);
    let case = Case::new(&bytes);
    let archive = fs::File::open(case.tmp.path().join("archive.zip")).unwrap();
    let checked = CheckedZip::check(&archive, None, &limits()).unwrap();
    let deep = case.out().join("x".repeat(40)).join("slot");
    let err = checked.check_fits(&deep).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsafeArchive, "{err}");
    assert!(err.message().contains("to fit in a path of 4095"), "{err}");
    checked.check_fits(Path::new("/s")).unwrap();
}

/// Linux refuses a symlink target of PATH_MAX (4096) bytes: refused by the check, not by
/// the write; one byte shorter is extracted.
#[test]
fn a_symlink_target_of_path_max_is_refused_and_one_byte_less_extracts() {
    let long = format!("{}xy", "./".repeat(2047));
    assert_eq!(long.len(), 4096);
    let bytes = build(&[File("xy", b"1", 0o644), Link("l", &long)]);
    let msg = Case::new(&bytes).refused(None, &symlinks_allowed(), &[]);
    assert!(msg.contains("at most 4095 bytes"), "{msg}");
    let shorter = format!("{}axy", "./".repeat(2046));
    assert_eq!(shorter.len(), 4095);
    let bytes = build(&[File("axy", b"1", 0o644), Link("l", &shorter)]);
    let case = Case::new(&bytes);
    case.extract(None, &symlinks_allowed()).unwrap();
    assert_eq!(
        fs::read_link(case.dest().join("l")).unwrap(),
        Path::new(&shorter)
    );
}

#[test]
fn duplicate_names_are_refused() {
    let mut bytes = build(&[
        File("aaaa.txt", b"first", 0o644),
        File("bbbb.txt", b"second", 0o644),
    ]);
    patch_all(&mut bytes, b"bbbb.txt", b"aaaa.txt");
    let msg = Case::new(&bytes).refused(None, &limits(), &[]);
    assert!(msg.contains("unique"), "{msg}");
}

#[test]
fn case_colliding_names_are_refused() {
    for items in [
        vec![
            File("README.txt", b"1", 0o644),
            File("readme.txt", b"2", 0o644),
        ],
        vec![File("Dir/a", b"1", 0o644), File("dir/b", b"2", 0o644)],
        vec![File("Ä.txt", b"1", 0o644), File("ä.txt", b"2", 0o644)],
        // Equal under Unicode case folding though each lowercases to itself.
        vec![File("s", b"1", 0o644), File("\u{17f}", b"2", 0o644)],
        vec![File("\u{3bc}", b"1", 0o644), File("\u{b5}", b"2", 0o644)],
        vec![File("\u{3b2}", b"1", 0o644), File("\u{3d0}", b"2", 0o644)],
        vec![File("\u{3c3}", b"1", 0o644), File("\u{3c2}", b"2", 0o644)],
        vec![File("ss", b"1", 0o644), File("\u{df}", b"2", 0o644)],
        vec![File("\u{1e9e}", b"1", 0o644), File("\u{df}", b"2", 0o644)],
        vec![
            File("STRA\u{1e9e}E", b"1", 0o644),
            File("strasse", b"2", 0o644),
        ],
        vec![File("file", b"1", 0o644), File("\u{fb01}le", b"2", 0o644)],
        vec![File("i", b"1", 0o644), File("\u{131}", b"2", 0o644)],
        vec![
            File("Kelvin", b"1", 0o644),
            File("\u{212a}elvin", b"2", 0o644),
        ],
    ] {
        let msg = Case::new(&build(&items)).refused(None, &limits(), &[]);
        assert!(msg.contains("case-insensitively"), "{msg}");
    }
}

#[test]
fn a_name_used_as_file_and_directory_is_refused() {
    let bytes = build(&[
        File("a", b"file", 0o644),
        File("a/b", b"under a file", 0o644),
    ]);
    let msg = Case::new(&bytes).refused(None, &limits(), &[]);
    assert!(msg.contains("both a file and a directory"), "{msg}");
}

// ---- symlinks ----------------------------------------------------------------------

#[test]
fn symlink_out_then_write_through_is_refused() {
    let escape = PathBuf::from("/tmp").join(unique("via-link.txt"));
    let bytes = build(&[
        Link("link", "/tmp"),
        File(&format!("link/{}", unique("via-link.txt")), b"evil", 0o644),
    ]);
    let case = Case::new(&bytes);
    let msg = case.refused(None, &limits(), &[&escape]);
    assert!(msg.contains("symlink entries are not allowed"), "{msg}");
    let msg = case.refused(None, &symlinks_allowed(), &[&escape]);
    assert!(msg.contains("symlink"), "{msg}");
}

#[test]
fn symlinks_pointing_outside_are_refused_even_when_allowed() {
    for (name, target, rule) in [
        ("link", "../outside", "outside"),
        ("a/b/link", "../../../outside", "outside"),
        ("link", "/etc/passwd", "absolute"),
        ("link", "", "empty"),
    ] {
        let bytes = build(&[File("a/b/f", b"x", 0o644), Link(name, target)]);
        let case = Case::new(&bytes);
        let msg = case.refused(None, &symlinks_allowed(), &[&case.out().join("outside")]);
        assert!(msg.contains(rule), "{name} -> {target}: {msg}");
    }
}

#[test]
fn inside_symlink_allowed_but_never_written_through() {
    let items = [
        File("sub/real.txt", b"real", 0o644),
        Link("link", "sub"),
        File("link/evil.txt", b"evil", 0o644),
    ];
    let case = Case::new(&build(&items));
    case.refused(None, &limits(), &[]);
    let msg = case.refused(None, &symlinks_allowed(), &[]);
    assert!(msg.contains("written through"), "{msg}");

    // The same write-through with the file listed before the symlink.
    let case = Case::new(&build(&[
        File("link/evil.txt", b"evil", 0o644),
        Link("link", "sub"),
    ]));
    case.refused(None, &symlinks_allowed(), &[]);
}

#[test]
fn symlink_chains_that_would_escape_are_refused() {
    // a/l -> ".." stays inside, but a/l2 -> "l/.." would resolve through a/l to dest's
    // parent on disk: refused.
    let bytes = build(&[Link("a/l", ".."), Link("a/l2", "l/..")]);
    let msg = Case::new(&bytes).refused(None, &symlinks_allowed(), &[]);
    assert!(msg.contains("through another symlink"), "{msg}");
}

/// On a case-insensitive file system (macOS, an ext4 directory with casefold) `l` opens
/// the symlink `L`: a/x -> "l/../.." would then resolve through a/L (-> "..", the
/// component) to the slot directory's parent, though read name by name it stays inside.
/// A symlink may only pass through the directories the archive itself creates, spelled
/// as the archive spells them.
#[test]
fn symlinks_passing_through_a_name_the_archive_does_not_create_are_refused() {
    for target in ["l/../..", "L2/..", "nowhere/../f"] {
        let bytes = build(&[
            File("a/f", b"x", 0o644),
            Link("a/L", ".."),
            Link("a/x", target),
        ]);
        let msg = Case::new(&bytes).refused(None, &symlinks_allowed(), &[]);
        assert!(
            msg.contains("a directory of the archive"),
            "{target}: {msg}"
        );
    }
    // Through a directory the archive creates, as it spells it, is fine.
    let bytes = build(&[
        File("a/b/f", b"x", 0o644),
        Link("a/L", ".."),
        Link("a/x", "b/../b/f"),
    ]);
    Case::new(&bytes)
        .extract(None, &symlinks_allowed())
        .unwrap();
}

#[test]
fn inside_symlinks_are_created_when_allowed() {
    let bytes = build(&[
        File("lib/libfoo.so.1.2", b"elf", 0o755),
        Link("lib/libfoo.so", "libfoo.so.1.2"),
        Link("current", "lib/./libfoo.so.1.2"),
        Link("lib/up", ".."),
    ]);
    let case = Case::new(&bytes);
    let stats = case.extract(None, &symlinks_allowed()).unwrap();
    assert_eq!((stats.files, stats.symlinks, stats.dirs), (1, 3, 1));
    let d = case.dest();
    assert_eq!(
        fs::read_link(d.join("lib/libfoo.so")).unwrap(),
        Path::new("libfoo.so.1.2")
    );
    assert_eq!(fs::read(d.join("lib/libfoo.so")).unwrap(), b"elf");
    assert_eq!(fs::read(d.join("current")).unwrap(), b"elf");
    make_durable(&d).unwrap();
}

// ---- sizes, ratios, bombs ----------------------------------------------------------

#[test]
fn a_ratio_bomb_is_refused() {
    let zeros = vec![0u8; 50_000_000];
    let bytes = build(&[File("zeros.bin", &zeros, 0o644)]);
    assert!(
        bytes.len() < 60_000,
        "the bomb compresses to {} bytes",
        bytes.len()
    );
    let msg = Case::new(&bytes).refused(None, &limits(), &[]);
    assert!(msg.contains("ratio") || msg.contains("times"), "{msg}");
}

#[test]
fn the_ratio_is_counted_on_inflated_bytes_not_declared_ones() {
    // The central directory and the local header claim 1 byte; the body inflates to 10 MB.
    let zeros = vec![0u8; 10_000_000];
    let mut bytes = build(&[
        File("ok.txt", b"fine", 0o644),
        File("liar.bin", &zeros, 0o644),
    ]);
    patch_all(
        &mut bytes,
        &10_000_000u32.to_le_bytes(),
        &1u32.to_le_bytes(),
    );
    let msg = Case::new(&bytes).refused(None, &limits(), &[]);
    assert!(msg.contains("liar.bin"), "{msg}");
}

#[test]
fn more_than_the_declared_installed_size_is_refused() {
    // Bytes that compress about 1:1, so only the size rules are in play.
    let body = noise(100_000);
    let bytes = build(&[File("a.bin", &body, 0o644), File("b.bin", &body, 0o644)]);
    let msg = Case::new(&bytes).refused(Some(150_000), &limits(), &[]);
    assert!(msg.contains("installed_size of 150000"), "{msg}");
    // The exact size is fine.
    Case::new(&bytes).extract(Some(200_000), &limits()).unwrap();
}

#[test]
fn more_than_the_configured_cap_is_refused() {
    let body = noise(100_000);
    let bytes = build(&[File("a.bin", &body, 0o644), File("b.bin", &body, 0o644)]);
    let capped = ArchiveLimits {
        max_installed_bytes: 199_999,
        ..limits()
    };
    let msg = Case::new(&bytes).refused(None, &capped, &[]);
    assert!(msg.contains("cap of 199999"), "{msg}");
    // The exact cap is fine.
    let exact = ArchiveLimits {
        max_installed_bytes: 200_000,
        ..limits()
    };
    Case::new(&bytes).extract(None, &exact).unwrap();
}

/// The whole archive's ratio: two entries of zeros, each within the 64 KiB an entry may
/// reach whatever its ratio, that together inflate to exactly the 64 KiB an archive may
/// reach are fine; one byte more is refused by the plan, from the sizes declared, before
/// anything is written ("times its size": the archive's rule, not an entry's).
#[test]
fn the_archive_ratio_allows_its_grace_exactly_and_not_a_byte_more() {
    let strict = ArchiveLimits {
        max_ratio: 1,
        ..limits()
    };
    let half = evergreen::stage::RATIO_GRACE_BYTES as usize / 2;
    let zeros = |a: usize, b: usize| {
        build(&[
            File("a.bin", &vec![0u8; a], 0o644),
            File("b.bin", &vec![0u8; b], 0o644),
        ])
    };
    Case::new(&zeros(half, half))
        .extract(None, &strict)
        .unwrap();
    let msg = Case::new(&zeros(half, half + 1)).refused(None, &strict, &[]);
    assert!(
        msg.contains(&format!(
            "more than 1 times its size (more than {} bytes)",
            2 * half
        )),
        "{msg}"
    );
}

#[test]
fn overlapping_entries_bomb_is_refused() {
    // Several central-directory entries share one compressed body (Fifield's bomb).
    let bytes = overlapping_bomb(8);
    let lenient = ArchiveLimits {
        max_ratio: u64::MAX,
        ..limits()
    };
    let msg = Case::new(&bytes).refused(None, &lenient, &[]);
    assert!(msg.contains("overlap"), "{msg}");
}

#[test]
fn too_many_entries_are_refused() {
    let names: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
    let items: Vec<Item> = names.iter().map(|n| File(n, b"x", 0o644)).collect();
    let bytes = build(&items);
    let ten = ArchiveLimits {
        max_entries: 10,
        ..limits()
    };
    let msg = Case::new(&bytes).refused(None, &ten, &[]);
    assert!(msg.contains("at most 10 zip entries, found 11"), "{msg}");
    let eleven = ArchiveLimits {
        max_entries: 11,
        ..limits()
    };
    Case::new(&bytes).extract(None, &eleven).unwrap();
}

/// The count is read from the end of the central directory before the zip reader loads
/// the directory itself (two million empty entries took 432 MB to be refused after it);
/// a zip64 archive's count is read from its zip64 record. Here the records declare two
/// million entries in front of a directory that holds none.
#[test]
fn the_declared_entry_count_is_refused_before_the_directory_is_read() {
    // The classic record's counts, directory size and offset all say "see the zip64
    // record".
    let bytes = zip64_end_declaring_two_million(0, [0xff; 12]);
    let msg = Case::new(&bytes).refused(None, &limits(), &[]);
    assert!(
        msg.contains("found 2000000 (as the end of its central directory declares)"),
        "{msg}"
    );
    // The classic record's own count, the same way.
    let mut one = build(&[File("f", b"x", 0o644)]);
    let at = one.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
    one[at + 8..at + 12].copy_from_slice(&[0x50, 0xc3, 0x50, 0xc3]); // 50,000 entries
    let ten = ArchiveLimits {
        max_entries: 10,
        ..limits()
    };
    let msg = Case::new(&one).refused(None, &ten, &[]);
    assert!(
        msg.contains("at most 10 zip entries, found 50000 (as the end"),
        "{msg}"
    );
}

/// A zip64 end record declaring two million entries, its locator pointing `offset` bytes
/// into the file, and a classic end record whose count, directory size and directory
/// offset are `classic`.
fn zip64_end_declaring_two_million(offset: u64, classic: [u8; 12]) -> Vec<u8> {
    let mut bytes = Vec::new();
    // zip64 end of central directory record: 56 bytes.
    bytes.extend_from_slice(b"PK\x06\x06");
    bytes.extend_from_slice(&44u64.to_le_bytes()); // size of the rest
    bytes.extend_from_slice(&[45, 0, 45, 0]); // versions
    bytes.extend_from_slice(&[0; 8]); // disk numbers
    bytes.extend_from_slice(&2_000_000u64.to_le_bytes()); // entries on this disk
    bytes.extend_from_slice(&2_000_000u64.to_le_bytes()); // entries in all
    bytes.extend_from_slice(&[0; 16]); // directory size and offset
                                       // zip64 locator: 20 bytes.
    bytes.extend_from_slice(b"PK\x06\x07");
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&offset.to_le_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(b"PK\x05\x06");
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&classic);
    bytes.extend_from_slice(&[0; 2]);
    bytes
}

/// The zip reader reads as many entries as the end record it settles on declares, and it
/// settles on more than the last record with a count in its classic fields: it falls back
/// to an earlier record when the last does not parse, goes to the zip64 record when the
/// directory's size or offset (not only the count) says so, and finds that record past
/// data prepended to the archive. Each is refused before the directory is read.
#[test]
fn every_end_record_the_zip_reader_may_use_is_checked_before_it_reads_the_directory() {
    let ten = ArchiveLimits {
        max_entries: 10,
        ..limits()
    };
    // A stray end record in the comment (multi-disk: the reader skips it) declares one
    // entry; the real one, before it, declares eleven.
    let names: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
    let items: Vec<Item> = names.iter().map(|n| File(n, b"x", 0o644)).collect();
    let mut stray = build(&items);
    let at = stray.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
    stray[at + 20..at + 22].copy_from_slice(&22u16.to_le_bytes());
    stray.extend_from_slice(b"PK\x05\x06\x01\x00\x00\x00\x01\x00\x01\x00");
    stray.extend_from_slice(&[0; 10]);
    let msg = Case::new(&stray).refused(None, &ten, &[]);
    assert!(
        msg.contains("at most 10 zip entries, found 11 (as the end"),
        "{msg}"
    );

    let mut classic = [0u8; 12];
    classic[..4].copy_from_slice(&[1, 0, 1, 0]); // one entry, it says
    classic[8..].copy_from_slice(&[0xff; 4]); // the directory offset: see zip64
    let mut prefixed = vec![b'#'; 100];
    prefixed.extend(zip64_end_declaring_two_million(0, [0xff; 12]));
    // A zip64 record with extensible data ends right before the locator but starts
    // earlier; past prepended data the locator's offset misses it too.
    let mut extended = vec![b'#'; 100];
    let mut record = zip64_end_declaring_two_million(0, [0xff; 12]);
    record[4..12].copy_from_slice(&(44u64 + 16).to_le_bytes());
    record.splice(56..56, [0u8; 16]);
    extended.extend(record);
    for bytes in [
        zip64_end_declaring_two_million(0, classic),
        prefixed,
        extended,
    ] {
        let msg = Case::new(&bytes).refused(None, &limits(), &[]);
        assert!(
            msg.contains("found 2000000 (as the end of its central directory declares)"),
            "{msg}"
        );
    }

    // Garbage after the comment, as far back as the reader still looks for the record.
    let mut trailing = build(&items);
    trailing.extend(std::iter::repeat_n(0u8, 65_540));
    let msg = Case::new(&trailing).refused(None, &ten, &[]);
    assert!(
        msg.contains("at most 10 zip entries, found 11 (as the end"),
        "{msg}"
    );
}

/// The central directory's size as the classic end record of `bytes` declares it, and
/// where that field is.
fn declared_directory_size(bytes: &[u8]) -> (u64, usize) {
    let at = bytes.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
    let field = at + 12;
    let size = u32::from_le_bytes(bytes[field..field + 4].try_into().unwrap());
    (u64::from(size), field)
}

/// The zip reader holds the whole central directory in memory, several times over: its
/// size is read from the end record and refused above the cap before the reader loads
/// it, naming the cap and the size.
#[test]
fn a_central_directory_larger_than_the_cap_is_refused_before_it_is_read() {
    let names: Vec<String> = (0..20).map(|i| format!("dir/file-{i:03}.txt")).collect();
    let items: Vec<Item> = names.iter().map(|n| File(n, b"x", 0o644)).collect();
    let bytes = build(&items);
    let (size, _) = declared_directory_size(&bytes);
    assert!(size > 20 * 46, "{size}");
    let below = ArchiveLimits {
        max_central_directory_bytes: size - 1,
        ..limits()
    };
    let msg = Case::new(&bytes).refused(None, &below, &[]);
    assert!(
        msg.contains(&format!(
            "expected a central directory of at most {} bytes, found {size} (as the end of its central directory declares)",
            size - 1
        )),
        "{msg}"
    );
    let exactly = ArchiveLimits {
        max_central_directory_bytes: size,
        ..limits()
    };
    let stats = Case::new(&bytes).extract(None, &exactly).unwrap();
    assert_eq!(stats.files, 20);
    // The default cap, 16 MiB, holds it too.
    Case::new(&bytes).extract(None, &limits()).unwrap();
}

/// An end record may understate its directory: the zip reader reads as many entries as
/// the record counts, wherever they end. Reading stops once it has read more than the
/// cap allows (plus the end records and comment it may look through), so no more of the
/// directory than that is ever loaded.
#[test]
fn a_central_directory_larger_than_its_end_record_declares_is_stopped_while_read() {
    // 3,000 entries with 100-byte names: 440 KB of central directory.
    let names: Vec<String> = (0..3000)
        .map(|i| format!("{i:05}-{}", "n".repeat(94)))
        .collect();
    let items: Vec<Item> = names.iter().map(|n| File(n, b"", 0o644)).collect();
    let mut bytes = build(&items);
    let (size, field) = declared_directory_size(&bytes);
    assert!(size > 400_000, "{size}");
    bytes[field..field + 4].copy_from_slice(&100u32.to_le_bytes());
    let small = ArchiveLimits {
        max_central_directory_bytes: 1000,
        ..limits()
    };
    let msg = Case::new(&bytes).refused(None, &small, &[]);
    assert!(
        msg.contains("expected a central directory of at most 1000 bytes, found more (its entries run on past what the end of its central directory declares)"),
        "{msg}"
    );
}

#[test]
fn directories_implied_by_deep_names_count_against_the_entry_cap() {
    // Two entries whose names imply 2 × 60 directories: a zip of a few KB that would
    // create 122 inodes.
    let deep: Vec<String> = (0..2)
        .map(|i| format!("d{i}/{}f", "a/".repeat(59)))
        .collect();
    let items: Vec<Item> = deep.iter().map(|n| File(n, b"x", 0o644)).collect();
    let bytes = build(&items);
    let hundred = ArchiveLimits {
        max_entries: 100,
        ..limits()
    };
    let msg = Case::new(&bytes).refused(None, &hundred, &[]);
    assert!(
        msg.contains("at most 100 files, directories and links to create, found more"),
        "{msg}"
    );
    let enough = ArchiveLimits {
        max_entries: 122,
        ..limits()
    };
    Case::new(&bytes).extract(None, &enough).unwrap();
}

/// Peak resident memory of this process, in KiB (VmHWM).
fn peak_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A hundred entries `dN/a/a/…/f`, each a 4 KB name implying 2,000 directories: under
/// a megabyte of archive. Checking their paths took 800 MB when each implied directory
/// kept a copy of its whole path; the cap on what is created now refuses the archive
/// halfway, having held one short key per directory. Measured in a child process (this
/// test binary, running only this test), so no other test's memory counts.
#[test]
fn deep_names_are_checked_in_memory_proportional_to_the_archive() {
    const CHILD: &str = "EVERGREEN_ARCHIVES_DEEP_CHILD";
    const NAME: &str = "deep_names_are_checked_in_memory_proportional_to_the_archive";
    if std::env::var_os(CHILD).is_some() {
        let names: Vec<String> = (0..100)
            .map(|i| format!("d{i}/{}f", "a/".repeat(2000)))
            .collect();
        let items: Vec<Item> = names.iter().map(|n| File(n, b"x", 0o644)).collect();
        let case = Case::new(&build(&items));
        drop(items);
        drop(names);
        let before = peak_kib();
        let msg = case.refused(None, &limits(), &[]);
        assert!(msg.contains("links to create, found"), "{msg}");
        println!("peak_kib_before={before} peak_kib_after={}", peak_kib());
        return;
    }
    let out = common::output_within(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1"),
        common::CLI_LIMIT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |key: &str| -> u64 {
        let at = stdout
            .find(key)
            .unwrap_or_else(|| panic!("no {key} in {stdout}"));
        let digits = stdout[at + key.len()..].split(|c: char| !c.is_ascii_digit());
        digits.into_iter().next().unwrap().parse().unwrap()
    };
    let grew = field("peak_kib_after=") - field("peak_kib_before=");
    assert!(
        grew < 48 << 10,
        "the check took {grew} KiB more at its peak"
    );
}

#[test]
fn a_huge_declared_zip64_size_is_refused_before_writing() {
    let zip64 = SimpleFileOptions::default().large_file(true);
    let mut bytes = build_with(
        &[File("small.bin", b"tiny but declared huge", 0o644)],
        zip64,
    );
    if bytes.windows(4).filter(|w| *w == [0xff; 4]).count() == 0 {
        panic!("the writer did not produce ZIP64 sizes");
    }
    patch_zip64_size(&mut bytes, 1 << 50);
    let case = Case::new(&bytes);
    let msg = case.refused(None, &limits(), &[]);
    assert!(
        msg.contains("small.bin") && msg.contains("1125899906842624"),
        "{msg}"
    );
    // Without the ratio rule, the size cap still refuses it before anything is written.
    let no_ratio = ArchiveLimits {
        max_ratio: u64::MAX,
        ..limits()
    };
    let msg = case.refused(None, &no_ratio, &[]);
    assert!(msg.contains("cap of 17179869184"), "{msg}");
}

// ---- methods and encryption -------------------------------------------------------

#[test]
fn encrypted_entries_are_refused() {
    let mut bytes = build(&[File("secret.txt", b"data", 0o644)]);
    // General-purpose flag bit 0, in the local header (offset 6) and central entry (8).
    bytes[6] |= 1;
    let cd = bytes
        .windows(4)
        .position(|w| w == [0x50, 0x4b, 0x01, 0x02])
        .unwrap();
    bytes[cd + 8] |= 1;
    let msg = Case::new(&bytes).refused(None, &limits(), &[]);
    assert!(msg.contains("encrypted"), "{msg}");
}

#[test]
fn methods_other_than_stored_and_deflate_are_refused() {
    let mut bytes = build(&[File("b.txt", b"data", 0o644)]);
    // Method bzip2 (12), in the local header (offset 8) and central entry (10).
    bytes[8] = 12;
    let cd = bytes
        .windows(4)
        .position(|w| w == [0x50, 0x4b, 0x01, 0x02])
        .unwrap();
    bytes[cd + 10] = 12;
    let msg = Case::new(&bytes).refused(None, &limits(), &[]);
    assert!(msg.contains("stored or deflate"), "{msg}");
}

#[test]
fn extraction_reads_the_open_file_not_the_path() {
    let good = build(&[File("app", b"verified", 0o755)]);
    let case = Case::new(&good);
    let path = case.tmp.path().join("archive.zip");
    let archive = fs::File::open(&path).unwrap();
    // Swap the path after "verification": the open file still names the verified bytes.
    fs::remove_file(&path).unwrap();
    fs::write(&path, build(&[File("app", b"swapped!", 0o755)])).unwrap();
    extract_zip(&archive, &case.dest(), None, &limits()).unwrap();
    assert_eq!(fs::read(case.dest().join("app")).unwrap(), b"verified");
}

// ---- place_file, make_durable ------------------------------------------

#[test]
fn place_file_copies_the_open_file_from_its_start() {
    let tmp = tempfile::tempdir().unwrap();
    let blob = tmp.path().join("blob");
    fs::write(&blob, b"{\"k\": 1}").unwrap();
    let mut src = fs::File::open(&blob).unwrap();
    src.read_to_end(&mut Vec::new()).unwrap(); // as the hash check leaves it
    let dir = tmp.path().join("config");
    assert_eq!(place_file(&src, &dir, "settings.json").unwrap(), 8);
    assert_eq!(fs::read(dir.join("settings.json")).unwrap(), b"{\"k\": 1}");
    assert_eq!(mode(&dir.join("settings.json")), 0o644);

    let err = place_file(&src, &dir, "settings.json").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "never overwrites: {err}");
    for bad in ["../x", "a/b", "", ".."] {
        let err = place_file(&src, &dir, bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{bad}");
    }
    assert_eq!(listing(&dir), ["settings.json"]);
}

#[test]
fn make_durable_of_a_missing_root_is_io() {
    let tmp = tempfile::tempdir().unwrap();
    let err = make_durable(&tmp.path().join("missing")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
}

/// A write the disk lost fails the sync even when another program's `syncfs` (`sync -f`)
/// was told of it first: the watch was opened before the writes, and `syncfs` reports to
/// it every error since. The disk is an ext4 on a loop device whose backing file sits on a
/// 24 MiB tmpfs, so the writes past its room fail as on a dying card.
#[test]
fn a_write_the_disk_lost_fails_the_sync_though_another_program_heard_of_it_first() {
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("backing");
    let Some(_room) = mounts::Mounted::tmpfs(&backing, 24 * 1024) else {
        return;
    };
    let image = backing.join("disk.img");
    fs::File::create(&image)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let Some(device) = mounts::LoopDevice::attach(&image) else {
        return;
    };
    let at = tmp.path().join("disk");
    let Some(_disk) = mounts::Mounted::ext4(&device.0, &at) else {
        return;
    };
    let slot = at.join("slot");
    fs::create_dir(&slot).unwrap();

    let watch = WriteWatch::open(&slot).unwrap();
    let mib = vec![0x5a; 1 << 20];
    for i in 0..40 {
        fs::write(slot.join(format!("f{i}")), &mib).unwrap();
    }
    let other = std::process::Command::new("sync")
        .arg("-f")
        .arg(&slot)
        .status()
        .unwrap();
    assert!(
        !other.success(),
        "the disk lost no write: the test proves nothing"
    );
    let err = watch.make_durable().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(err.to_string().contains("slot"), "{err}");
}

// ---- diff --------------------------------------------------------------------------

fn target(json: &str) -> TargetRelease {
    serde_json::from_str(json).unwrap()
}

fn installed(items: &[(&str, &str, char)]) -> BTreeMap<String, InstalledComponent> {
    items
        .iter()
        .map(|(name, version, hash)| {
            let c = InstalledComponent {
                version: version.to_string(),
                sha256: hash.to_string().repeat(64),
                kind: Some(ArtifactKind::Zip),
                name: None,
                compression: None,
            };
            (name.to_string(), c)
        })
        .collect()
}

fn component(version: &str, hash: char) -> String {
    format!(
        r#"{{"version": "{version}", "artifact": {{"kind": "zip", "sha256": "{}", "size": 10}}}}"#,
        hash.to_string().repeat(64)
    )
}

#[test]
fn diff_reports_added_removed_modified_unchanged() {
    let t = target(&format!(
        r#"{{"components": {{"app": {}, "config": {}, "new": {}, "rehash": {}}}}}"#,
        component("2.0", 'b'),
        component("7", 'c'),
        component("1", 'd'),
        component("1.0", 'f'),
    ));
    let have = installed(&[
        ("app", "1.0", 'a'),
        ("config", "7", 'c'),
        ("old", "3", 'e'),
        ("rehash", "1.0", 'e'),
    ]);
    let changes = diff(&have, &t, true);
    type Line<'a> = (&'a str, ComponentOp, Option<&'a str>, Option<&'a str>, bool);
    let summary: Vec<Line> = changes
        .iter()
        .map(|c| {
            let (from, to) = (c.from.as_deref(), c.to.as_deref());
            (c.name.as_str(), c.op, from, to, c.artifact.is_some())
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("app", ComponentOp::Modified, Some("1.0"), Some("2.0"), true),
            (
                "config",
                ComponentOp::Unchanged,
                Some("7"),
                Some("7"),
                false
            ),
            ("new", ComponentOp::Added, None, Some("1"), true),
            ("old", ComponentOp::Removed, Some("3"), None, false),
            (
                "rehash",
                ComponentOp::Modified,
                Some("1.0"),
                Some("1.0"),
                true
            ),
        ]
    );
    assert_eq!(changes[0].artifact.as_ref().unwrap().sha256, "b".repeat(64));
    let json = serde_json::to_value(&changes[0]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"name": "app", "op": "modified", "from": "1.0", "to": "2.0"})
    );
}

#[test]
fn diff_of_a_version_change_with_the_same_artifact_is_unchanged() {
    // The bytes decide: the same artifact is copied from the primary slot, not downloaded.
    let t = target(&format!(
        r#"{{"components": {{"app": {}}}}}"#,
        component("1.1", 'a')
    ));
    let changes = diff(&installed(&[("app", "1.0", 'a')]), &t, true);
    assert_eq!(changes[0].op, ComponentOp::Unchanged);
    assert!(changes[0].artifact.is_none());
    assert_eq!(changes[0].to.as_deref(), Some("1.1"));
    assert!(diff(&installed(&[("app", "1.1", 'a')]), &t, true)
        .iter()
        .all(|c| c.op == ComponentOp::Unchanged));
}

#[test]
fn the_same_bytes_installed_another_way_are_modified() {
    let t = target(&format!(
        r#"{{"components": {{"app": {}}}}}"#,
        component("1.0", 'a')
    ));
    let op = |have: &BTreeMap<String, InstalledComponent>| diff(have, &t, true)[0].op;
    let mut have = installed(&[("app", "1.0", 'a')]);
    assert_eq!(op(&have), ComponentOp::Unchanged);
    // Placed as a file before, extracted now.
    have.get_mut("app").unwrap().kind = Some(ArtifactKind::File);
    assert_eq!(op(&have), ComponentOp::Modified);
    // A name that the zip artifact does not carry.
    have.get_mut("app").unwrap().kind = Some(ArtifactKind::Zip);
    have.get_mut("app").unwrap().name = Some("app.zip".into());
    assert_eq!(op(&have), ComponentOp::Modified);
    // A state written before kinds were recorded says nothing of how it was installed.
    let old: InstalledComponent = serde_json::from_str(&format!(
        r#"{{"version": "1.0", "sha256": "{}"}}"#,
        "a".repeat(64)
    ))
    .unwrap();
    have.insert("app".into(), old);
    assert_eq!(op(&have), ComponentOp::Modified);
}

#[test]
fn an_unchanged_component_that_cannot_be_copied_still_carries_its_artifact() {
    // Image slots: the inactive partition holds something else, so the same image is
    // written again. The diff still says unchanged, for the user.
    let t = target(&format!(
        r#"{{"components": {{"rootfs": {}}}}}"#,
        component("1.1", 'a')
    ));
    let changes = diff(&installed(&[("rootfs", "1.0", 'a')]), &t, false);
    assert_eq!(changes[0].op, ComponentOp::Unchanged);
    assert_eq!(changes[0].artifact.as_ref().unwrap().sha256, "a".repeat(64));
}
