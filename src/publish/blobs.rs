//! Artifacts into `blobs/sha256/`: hashed while copied, probed (zip, gzip image) and
//! checked against what every device's default limits take.

use super::*;

impl Repo {
    /// Removes the blobs in `blobs/sha256/` that no channel lists (what `prune` leaves
    /// behind: blobs are immutable, so a release pruned from every channel that listed it
    /// keeps its blobs until this runs), or only names them when `dry_run`; returns each
    /// one's name and size, in name order. Every channel is read and its signatures
    /// checked first (expired ones too, which still list their blobs): a channel that does
    /// not verify stops it before anything is removed, since its blobs cannot be told.
    /// Files that are not named as blobs (64 lowercase hex digits) are left alone. Devices
    /// that fetched a manifest before the one that dropped a release may still be
    /// downloading its blobs: delete them from the server once the new manifests have been
    /// served for a while (docs/operators.md, "Prune").
    pub fn prune_blobs(&self, dry_run: bool) -> Result<Vec<(String, u64)>> {
        let _lock = self.lock()?;
        let trusted = self.trusted_root()?;
        let mut listed = std::collections::HashSet::new();
        for channel in self.channel_names()? {
            if let Some(m) = self.load_channel(&trusted, &channel)? {
                listed.extend(blobs_in_repo(&m).map(|(.., a)| a.sha256.clone()));
            }
        }
        let dir = self.root.join("blobs").join("sha256");
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))?;
        let mut unlisted = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let is_blob = name.len() == 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !is_blob || listed.contains(&name) {
                continue;
            }
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
            if meta.is_file() {
                unlisted.push((name, meta.len()));
            }
        }
        unlisted.sort();
        if !dry_run {
            for (name, _) in &unlisted {
                let path = dir.join(name);
                std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
            }
            fsutil::sync_dir(&dir)?;
        }
        Ok(unlisted)
    }

    /// Copies `path` into `blobs/sha256/<hex>`, hashing the bytes as they are copied so the
    /// blob's name always matches its content, and describes it as an artifact.
    pub(super) fn add_blob(&self, path: &Path, kind: ArtifactKind, raw: bool) -> Result<Artifact> {
        let name = match kind {
            ArtifactKind::File => Some(file_name(path)?),
            _ => None,
        };
        let mut src = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let blobs = self.root.join("blobs").join("sha256");
        check_room(&src, path, &blobs)?;
        let tmp = fsutil::temp_path(&blobs.join("incoming"));
        // An image that is gzip data is published compressed, inflated once here as it
        // is copied to learn what a device will decompress into its slot.
        let mut probe = match kind {
            ArtifactKind::Image if !raw => Probe::Undecided(Vec::new()),
            _ => Probe::Raw,
        };
        let copied = self.copy_hashed(&mut src, path, &tmp, &mut |chunk| probe.feed(chunk, path));
        let result = copied.and_then(|(file, size, sha256)| {
            let (installed_size, compression, installed_sha256) = match (kind, probe.finish(path)?)
            {
                (ArtifactKind::Zip, _) => (Some(zip_installed_size(&tmp, path)?), None, None),
                (_, Some((len, sha))) => (Some(len), Some(Compression::Gzip), Some(sha)),
                _ => (None, None, None),
            };
            let dest = blobs.join(&sha256);
            let artifact = Artifact {
                kind,
                sha256,
                size,
                installed_size,
                compression,
                installed_sha256,
                name,
                url: None,
            };
            // Counted as copied: a pipe or `/dev/null` is empty too.
            check_image_not_empty(&artifact, path)?;
            // Blobs are immutable: keep one already there, but only if it is intact. A
            // damaged one (its bytes are not those its name promises) is what every
            // device downloading it refuses: the copy just hashed takes its place.
            let intact = dest.exists()
                && match self.check_blob(&artifact) {
                    Ok(()) => true,
                    Err(e) if e.kind() == ErrorKind::HashMismatch => false,
                    Err(e) => return Err(e),
                };
            if intact {
                drop(file);
                std::fs::remove_file(&tmp).map_err(|e| Error::io("remove", &tmp, e))?;
            } else {
                fsutil::persist(file, &tmp, &dest)?;
            }
            Ok(artifact)
        });
        if result.is_err() {
            // Best effort: the temp copy is useless once the ingest failed or was
            // cancelled, and may be as large as the component.
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Refuses (`io`), before a byte is copied, a component the repository's file system has
/// no room for (the copy goes into a temp file there, which takes the whole length even
/// when the same blob is there already): copying until the disk is full took minutes for
/// an image of gigabytes and ended with the system's bare `ENOSPC` for a temp file's
/// name. A source whose length is not known (a pipe), or a file system that reports no
/// size ([`crate::space::free`]), is not judged: the copy finds out.
fn check_room(src: &File, path: &Path, blobs: &Path) -> Result<()> {
    let Some(len) = src.metadata().ok().filter(|m| m.is_file()).map(|m| m.len()) else {
        return Ok(());
    };
    let Some(free) = crate::space::free(blobs) else {
        return Ok(());
    };
    let needed = free.blocks_for(len);
    if free.bytes >= needed {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Io,
        format!(
            "copying {} into {}: expected room for {needed} bytes, found {} bytes free; nothing was written: free space there and release again",
            path.display(),
            blobs.display(),
            free.bytes
        ),
    ))
}

pub(super) fn check_components(components: &[(&str, &Path, ArtifactKind)]) -> Result<()> {
    if components.is_empty() {
        return Err(Error::config("expected at least one component, found none"));
    }
    if let Some((name, _, _)) = components.iter().find(|c| !manifest::is_safe_name(c.0)) {
        return Err(Error::config(format!(
            "expected a component name usable as a directory name, found {name:?}"
        )));
    }
    // Each is a directory of the slot: `App` and `app` (or `maße` and `masse`) are one on a
    // case-insensitive file system (macOS, FAT, ext4 with casefold), and the device's
    // install would stop after emptying the slot.
    if let Some((n, name)) = crate::fold::clash(components.iter().map(|c| c.0)) {
        return Err(Error::config(format!(
            "expected each component once, also ignoring case, found {n:?} and {name:?}"
        )));
    }
    // Dir slots take no image, image slots one image and nothing else: a target mixing
    // them would be offered to devices that no slot store can install it on.
    if manifest::SlotsFor::of(components.iter().map(|c| c.2)) == manifest::SlotsFor::Neither {
        let images = components
            .iter()
            .filter(|(_, _, kind)| *kind == ArtifactKind::Image)
            .count();
        return Err(Error::config(format!(
            "expected an image component alone (image slots take exactly one image and nothing else) or no image, found {images} image(s) among {} components",
            components.len()
        )));
    }
    Ok(())
}

/// An image is written into a slot as it is: an empty one (a build step that wrote
/// nothing) would be refused by every device, after the release went out. `source` is
/// where its bytes were read.
pub(super) fn check_image_not_empty(artifact: &Artifact, source: &Path) -> Result<()> {
    if artifact.kind != ArtifactKind::Image || artifact.size > 0 {
        return Ok(());
    }
    Err(Error::config(format!(
        "{}: expected an image of at least 1 byte, found 0 bytes (a device writes the image into its slot as it is: publish the image itself)",
        source.display()
    )))
}

impl Repo {
    /// Copies `src` into a new temp file at `tmp`, returning it with the size and SHA-256
    /// of exactly the bytes written; stops at the repository's cancel token between chunks.
    fn copy_hashed(
        &self,
        src: &mut File,
        src_path: &Path,
        tmp: &Path,
        also: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<(File, u64, String)> {
        let mut out = fsutil::create_temp(tmp)?;
        let (size, sha256) = self.hash_file(src, src_path, |chunk| {
            also(chunk)?;
            out.write_all(chunk).map_err(|e| Error::io("write", tmp, e))
        })?;
        Ok((out, size, sha256))
    }

    /// Size and SHA-256 of everything `src` (the file at `src_path`) yields, handing each
    /// chunk to `sink` as well and telling the repository's progress function how far it
    /// is; stops at the repository's cancel token between chunks.
    pub(super) fn hash_file(
        &self,
        src: &mut File,
        src_path: &Path,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<(u64, String)> {
        let progress = self.on_progress.get();
        let len = match progress {
            Some(_) => src.metadata().ok().filter(|m| m.is_file()).map(|m| m.len()),
            None => None,
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        if let Some(p) = progress {
            p(src_path, 0, len);
        }
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read", src_path, e)),
            };
            hasher.update(&buf[..n]);
            sink(&buf[..n])?;
            size += n as u64;
            if let Some(p) = progress {
                p(src_path, size, len);
            }
            // A component may be gigabytes: an interrupted command must not wait for the
            // whole copy, nor be killed during it, which would leave the copy behind.
            self.cancel.check()?;
        }
        Ok((size, trust::hex(&hasher.finalize())))
    }
}

/// Whether an image being read is gzip data, and if so what it inflates to: decided by
/// its first two bytes, then inflated as the rest comes.
pub(super) enum Probe {
    /// Fewer than two bytes seen (these).
    Undecided(Vec<u8>),
    /// Not gzip data, or not an image.
    Raw,
    /// Gzip data, inflating; the hash is of the inflated bytes.
    Gzip(Box<crate::gzip::Inflater>, Sha256),
}

impl Probe {
    pub(super) fn gzip() -> Probe {
        Probe::Gzip(Box::new(crate::gzip::Inflater::new()), Sha256::new())
    }

    /// Takes the next bytes of the file at `path`.
    pub(super) fn feed(&mut self, chunk: &[u8], path: &Path) -> Result<()> {
        let Probe::Undecided(head) = self else {
            return self.inflate(chunk, path);
        };
        head.extend_from_slice(chunk);
        if head.len() < 2 {
            return Ok(());
        }
        let head = std::mem::take(head);
        *self = match head.starts_with(&[0x1f, 0x8b]) {
            true => Probe::gzip(),
            false => Probe::Raw,
        };
        self.inflate(&head, path)
    }

    fn inflate(&mut self, mut bytes: &[u8], path: &Path) -> Result<()> {
        let Probe::Gzip(inflater, hasher) = self else {
            return Ok(());
        };
        loop {
            let out = inflater
                .inflate(&mut bytes)
                .map_err(|p| gzip_refused(path, &p))?;
            if out.is_empty() {
                return match inflater.end_problem() {
                    Some(p) => Err(gzip_refused(path, p)),
                    None => Ok(()),
                };
            }
            hasher.update(out);
        }
    }

    /// For gzip data: the inflated size and SHA-256, once the member ended whole with a
    /// matching trailer and inflated to at least one byte.
    pub(super) fn finish(&mut self, path: &Path) -> Result<Option<(u64, String)>> {
        let Probe::Gzip(inflater, hasher) = self else {
            return Ok(None);
        };
        let len = inflater.finish().map_err(|p| gzip_refused(path, &p))?;
        if len == 0 {
            return Err(gzip_refused(
                path,
                "expected an image of at least 1 byte once inflated, found 0 bytes",
            ));
        }
        Ok(Some((len, trust::hex(&std::mem::take(hasher).finalize()))))
    }
}

/// A gzip image that devices could not decompress into exactly the image, as `problem`
/// says: refused, as every device would refuse it after the release went out.
fn gzip_refused(path: &Path, problem: &str) -> Error {
    Error::config(format!(
        "{}: {problem} (a gzip image is published compressed and decompressed into the slot by each device: publish one intact gzip member, made by gzip or `gzip -c`)",
        path.display()
    ))
}

/// Sum of the uncompressed sizes the zip's central directory declares: the client caps
/// the bytes it actually inflates at this.
fn zip_installed_size(path: &Path, shown_as: &Path) -> Result<u64> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let bad = |e: zip::result::ZipError| {
        Error::config(format!(
            "expected a zip archive in {}, found: {e}",
            shown_as.display()
        ))
    };
    let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
    let mut total = 0u64;
    for i in 0..archive.len() {
        let size = archive.by_index_raw(i).map_err(bad)?.size();
        total = total.checked_add(size).ok_or_else(|| {
            Error::config(format!(
                "{}: the declared entry sizes overflow 64 bits",
                shown_as.display()
            ))
        })?;
    }
    check_zip_for_every_device(path, shown_as, Some(total))?;
    Ok(total)
}

/// What devices with the default `archive` limits of their config (no symlinks, a ratio
/// of 250, 100,000 entries, 16 GiB) would refuse among `components`: one message per zip,
/// naming the component and the rule. [`Repo::release`] publishes such a zip (a device may
/// allow more), so a publisher should hear it before the fleet does.
///
/// ```
/// # fn main() -> evergreen::Result<()> {
/// use evergreen::manifest::ArtifactKind;
/// use std::io::Write;
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("app.zip");
/// let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
/// let options = zip::write::SimpleFileOptions::default();
/// w.start_file("lib/libapp.so.1", options).unwrap();
/// w.write_all(b"elf").unwrap();
/// w.add_symlink("lib/libapp.so", "libapp.so.1", options).unwrap();
/// w.finish().unwrap();
///
/// let warnings = evergreen::publish::default_limit_refusals(&[("app", &path, ArtifactKind::Zip)])?;
/// assert_eq!(warnings.len(), 1);
/// assert!(warnings[0].starts_with("component app: "));
/// # Ok(()) }
/// ```
pub fn default_limit_refusals(components: &[(&str, &Path, ArtifactKind)]) -> Result<Vec<String>> {
    let zips = components.iter().filter(|c| c.2 == ArtifactKind::Zip);
    zips.filter_map(|&(name, path, _)| default_limit_refusal(name, path, path).transpose())
        .collect()
}

/// [`default_limit_refusals`] for the zip of component `name` read from `read`, named
/// `shown` (the file the operator gave, when `read` is its copy in the repository).
pub fn default_limit_refusal(name: &str, read: &Path, shown: &Path) -> Result<Option<String>> {
    match check_zip(read, None, &stage::ArchiveLimits::default()) {
        Ok(()) => Ok(None),
        Err(e) if e.kind() == ErrorKind::UnsafeArchive => Ok(Some(format!(
            "component {name}: devices with the default `archive` limits refuse {}: {e}",
            shown.display()
        ))),
        Err(e) => Err(e),
    }
}

/// Refuses a zip that every device would refuse, whatever its config: the rules of
/// [`stage::CheckedZip`] no device can relax (entry names, duplicates and case
/// collisions, overlapping entries, methods, encryption, symlinks that escape), and data
/// that does not inflate to what its entries declare (a CRC that does not match, a
/// broken deflate stream), which a device finds only while writing, after clearing its
/// inactive slot. The limits each device sets for itself (`archive` in its config:
/// symlinks at all, the ratio, the entry count, the size) are left to it.
pub(super) fn check_zip_for_every_device(
    path: &Path,
    shown_as: &Path,
    installed_size: Option<u64>,
) -> Result<()> {
    let most_lenient = stage::ArchiveLimits {
        max_installed_bytes: u64::MAX,
        max_entries: u64::MAX,
        // The most any device's config allows: a larger directory is refused everywhere,
        // and is never read into this process's memory either.
        max_central_directory_bytes: crate::config::MAX_CENTRAL_DIRECTORY_BYTES,
        max_ratio: u64::MAX,
        allow_symlinks: true,
    };
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let checked = stage::CheckedZip::check(&file, installed_size, &most_lenient)
        .and_then(stage::CheckedZip::inflate_all);
    checked.map_err(|e| {
        e.context(format!(
            "{}: every device would refuse this archive",
            shown_as.display()
        ))
    })
}

/// The zip at `path` checked as a device with `limits` checks it before installing.
fn check_zip(
    path: &Path,
    installed_size: Option<u64>,
    limits: &stage::ArchiveLimits,
) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    stage::CheckedZip::check(&file, installed_size, limits).map(drop)
}
