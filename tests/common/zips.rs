//! Zip archives for tests, benign and hostile: the zip crate's writer, plus byte surgery
//! where the writer refuses to produce the attack.

use std::io::{Cursor, Write};
use zip::write::SimpleFileOptions;
use zip::ZipWriter;

/// One entry of an archive to build.
pub enum Item<'a> {
    /// A regular file: name, content, Unix mode (setuid/setgid bits included).
    File(&'a str, &'a [u8], u32),
    /// A directory entry.
    Dir(&'a str),
    /// A symlink entry: name, target.
    Link(&'a str, &'a str),
}

/// A deflated archive of `items`.
pub fn build(items: &[Item]) -> Vec<u8> {
    build_with(items, SimpleFileOptions::default())
}

/// An archive of `items` whose entries all start from `base` (method, ZIP64 …).
pub fn build_with(items: &[Item], base: SimpleFileOptions) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    for item in items {
        match item {
            Item::File(name, data, mode) => {
                // `unix_permissions` keeps only 0o777; the raw attributes carry setuid too.
                let attrs = (0o100000 | mode) << 16;
                w.start_file(*name, base.external_attributes(attrs))
                    .unwrap();
                w.write_all(data).unwrap();
            }
            Item::Dir(name) => w.add_directory(*name, base).unwrap(),
            Item::Link(name, target) => w.add_symlink(*name, *target, base).unwrap(),
        }
    }
    w.finish().unwrap().into_inner()
}

/// Replaces every occurrence of `from` (local header, central directory) by `to`.
pub fn patch_all(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let mut found = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            found += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(found > 0, "nothing to patch");
}

/// Sets the uncompressed size in the ZIP64 extra field of every central-directory entry.
pub fn patch_zip64_size(bytes: &mut [u8], size: u64) {
    let mut i = 0;
    let mut patched = 0;
    while i + 46 <= bytes.len() {
        if bytes[i..i + 4] != [0x50, 0x4b, 0x01, 0x02] {
            i += 1;
            continue;
        }
        let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
        let (name_len, extra_len) = (u16_at(bytes, i + 28), u16_at(bytes, i + 30));
        let mut e = i + 46 + name_len;
        let end = e + extra_len;
        while e + 4 <= end {
            let (id, len) = (u16_at(bytes, e), u16_at(bytes, e + 2));
            if id == 1 {
                assert_eq!(
                    &bytes[i + 24..i + 28],
                    &[0xff; 4],
                    "size lives in the extra field"
                );
                bytes[e + 4..e + 12].copy_from_slice(&size.to_le_bytes());
                patched += 1;
            }
            e += 4 + len;
        }
        i = end;
    }
    assert!(patched > 0, "no ZIP64 extra field found");
}

/// One small ZIP64 entry whose central directory declares `size` inflated bytes.
pub fn zip64_declaring(size: u64) -> Vec<u8> {
    let zip64 = SimpleFileOptions::default().large_file(true);
    let mut bytes = build_with(
        &[Item::File("small.bin", b"tiny but declared huge", 0o644)],
        zip64,
    );
    patch_zip64_size(&mut bytes, size);
    bytes
}

/// Fifield's overlapping-entries bomb: `copies` central-directory entries share the one
/// compressed body of a 1 MiB file.
pub fn overlapping_bomb(copies: usize) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    w.start_file("kernel.bin", SimpleFileOptions::default())
        .unwrap();
    w.write_all(&vec![0u8; 1 << 20]).unwrap();
    for i in 0..copies {
        w.shallow_copy_file("kernel.bin", &format!("copy{i}.bin"))
            .unwrap();
    }
    w.finish().unwrap().into_inner()
}
