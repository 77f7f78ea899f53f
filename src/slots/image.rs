//! Image slots: two block devices (or files) that raw images are written to.
//!
//! An image is streamed into the inactive slot with 64 KiB buffers, fsynced, then read
//! back and hashed: the slot is only reported written when the bytes the device returns
//! have the artifact's SHA-256 (DESIGN §5.5). On Linux the slot's cached pages are
//! dropped after the fsync, so the read-back comes from the device, not from the page
//! cache the write filled: it catches a medium that did not keep what it acknowledged,
//! besides short writes, wrong offsets and a device smaller than it claims. (Elsewhere
//! it reads what the kernel hands to any reader of the slot.)

use super::Slot;
use crate::error::{Error, ErrorKind, Result};
use crate::trust::hex;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const BUF_SIZE: usize = 64 * 1024;

/// The two image slots `a` and `b`.
///
/// ```
/// # fn main() -> evergreen::Result<()> {
/// use evergreen::slots::{image::ImageSlots, Slot};
/// let dir = tempfile::tempdir().unwrap();
/// let slots = ImageSlots::new(dir.path().join("a.img"), dir.path().join("b.img"));
/// let image = b"rootfs bytes";
/// let sha = evergreen::trust::sha256_hex(image);
/// slots.write_image(Slot::B, &mut &image[..], image.len() as u64, &sha, &mut |_, _| {})?;
/// assert_eq!(std::fs::read(slots.path(Slot::B)).unwrap(), image);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ImageSlots {
    a: PathBuf,
    b: PathBuf,
    /// Test hook: the byte to flip after the write, and the file to flip it in (the
    /// slot itself when `None`).
    corrupt_at: Option<(u64, Option<PathBuf>)>,
}

impl ImageSlots {
    /// Refuses slots that reach the same file or block device (a symlink such as
    /// `/dev/disk/by-partlabel/…`, a hard link, two nodes of one device): writing one would
    /// overwrite the other, perhaps the running system. [`ImageSlots::write_image`] checks
    /// it first; an updater checks it before it marks a slot `installing`.
    pub fn check_distinct(&self) -> Result<()> {
        if !super::same_storage(&self.a, &self.b) {
            return Ok(());
        }
        Err(Error::config(format!(
            "expected slots a ({}) and b ({}) on different storage, found both naming the same {}: writing one would overwrite the other",
            self.a.display(),
            self.b.display(),
            if is_block_path(&self.a) { "block device" } else { "file" }
        )))
    }

    /// Slots at `a` and `b`: block devices (e.g. `/dev/mmcblk0p2`) or plain files.
    pub fn new(a: impl Into<PathBuf>, b: impl Into<PathBuf>) -> ImageSlots {
        ImageSlots {
            a: a.into(),
            b: b.into(),
            corrupt_at: None,
        }
    }

    /// The device or file of `slot`.
    pub fn path(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    /// Test hook: after each write and fsync, flip the bits of the byte at `offset`, as a
    /// faulty device would, so a test can show that the read-back refuses the slot.
    #[doc(hidden)]
    pub fn corrupt_after_write(mut self, offset: u64) -> ImageSlots {
        self.corrupt_at = Some((offset, None));
        self
    }

    /// Test hook: after each write, flip the byte at `offset` of `store`, the file behind
    /// the slot's device (a loop device's backing file), where the slot's own page cache
    /// does not see it: as a medium that lost what it acknowledged. The read-back must
    /// still refuse the slot.
    #[doc(hidden)]
    pub fn corrupt_store_after_write(mut self, store: PathBuf, offset: u64) -> ImageSlots {
        self.corrupt_at = Some((offset, Some(store)));
        self
    }

    /// Checks, without writing, that `slot` can take an image of `size` bytes: its device
    /// is there (`io`; a slot under `/dev` is never created) and, a block device, holds
    /// `size` bytes (`too_large`) and has no file system mounted from it
    /// (`invalid_state`). An install asks before it marks the slot `installing`, so an
    /// image that cannot fit leaves the slot's record and boot entry as they were; [`ImageSlots::write_image`] checks again as it opens the slot.
    pub fn check_fits(&self, slot: Slot, size: u64) -> Result<()> {
        let path = self.path(slot);
        if !check_device_there(path)? {
            return Ok(());
        }
        let mut file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        if check_capacity(&mut file, path, size)? {
            check_not_mounted(&file, path)?;
        }
        Ok(())
    }

    /// Streams exactly `size` bytes of `src` into `slot`, fsyncs, reads them back and
    /// checks their SHA-256 against `sha256` (lowercase hex).
    ///
    /// `progress(done, size)` is called after every 64 KiB written. A block device is
    /// never written beyond its end (`too_large` before the first byte), nor while a file
    /// system is mounted from it (`invalid_state`); a plain file is created, grown or
    /// shrunk to `size`. A source shorter than `size` is an `io` error;
    /// bytes that read back with another hash are `hash_mismatch`.
    pub fn write_image(
        &self,
        slot: Slot,
        src: &mut dyn Read,
        size: u64,
        sha256: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        if !crate::trust::is_sha256_hex(sha256) {
            return Err(Error::config(format!(
                "image for slot {slot}: expected a sha256 of 64 lowercase hex digits, found {sha256:?}"
            )));
        }
        self.check_distinct()?;
        let path = self.path(slot);
        let mut file = open_slot(path, size)?;
        copy_exact(src, &mut file, path, size, progress)?;
        file.sync_all().map_err(|e| Error::io("syncing", path, e))?;
        drop_cached_pages(&file, path)?;
        drop(file);
        if let Some((offset, store)) = &self.corrupt_at {
            flip_byte(store.as_deref().unwrap_or(path), *offset)?;
        }
        let found = hash_prefix(path, size)?;
        if found != sha256 {
            return Err(Error::new(
                ErrorKind::HashMismatch,
                format!(
                    "image slot {slot} ({}): expected sha256 {sha256} when read back, found {found}",
                    path.display()
                ),
            ));
        }
        Ok(())
    }
}

/// Evicts the slot's pages (clean after the fsync) from the page cache, so the read-back
/// reads the device. Unprivileged, unlike the block layer's flush ioctl, and a no-op on
/// tmpfs, whose pages are the storage.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn drop_cached_pages(file: &File, path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor `file` keeps open; offset 0 with
    // length 0 covers the whole file whatever the width of off_t.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    match rc {
        0 => Ok(()),
        errno => Err(Error::io(
            "dropping the cached pages of",
            path,
            std::io::Error::from_raw_os_error(errno),
        )),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn drop_cached_pages(_file: &File, _path: &Path) -> Result<()> {
    Ok(())
}

fn is_block_device(file: &File) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        file.metadata()
            .is_ok_and(|m| m.file_type().is_block_device())
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        false
    }
}

fn is_block_path(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// Refuses a slot device that is not there: a device node missing (a typo, a card not
/// enumerated, a by-partlabel link udev has not made) would become a file in RAM that
/// passes its read-back, while the bootloader boots the partition's old content.
fn check_device_there(path: &Path) -> Result<bool> {
    let existed = path.exists();
    if !existed && path.starts_with("/dev") {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "expected the slot device {}, found nothing there (a slot under /dev is never created)",
                path.display()
            ),
        ));
    }
    Ok(existed)
}

/// Refuses (`too_large`) an image of `size` bytes that the block device `file` cannot
/// hold, leaving it positioned at offset 0; a plain file holds any size. Returns whether
/// `file` is a block device.
fn check_capacity(file: &mut File, path: &Path, size: u64) -> Result<bool> {
    if !is_block_device(file) {
        return Ok(false);
    }
    let capacity = file
        .seek(SeekFrom::End(0))
        .and_then(|c| file.seek(SeekFrom::Start(0)).map(|_| c))
        .map_err(|e| Error::io("measuring", path, e))?;
    if size > capacity {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "image slot {}: expected an image of at most {capacity} bytes, found {size}",
                path.display()
            ),
        ));
    }
    Ok(true)
}

/// Refuses (`invalid_state`) the block device `file` while a file system is mounted from
/// it: the running system's root, when the slot the state calls idle is the one that
/// booted (a host selector that cannot tell, a board provisioned by hand), or anything
/// else in use there. Its file system would be overwritten under the kernel's feet.
/// Read from `/proc/self/mountinfo`; where that cannot be read, nothing is refused.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn check_not_mounted(file: &File, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Ok(());
    };
    let rdev = file
        .metadata()
        .map_err(|e| Error::io("inspecting", path, e))?
        .rdev();
    let device = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    // Fields: mount id, parent id, major:minor, root, mount point, …
    let mounted_at = mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ').skip(2);
        (fields.next() == Some(device.as_str()))
            .then(|| fields.nth(1))
            .flatten()
    });
    match mounted_at {
        None => Ok(()),
        Some(at) => Err(Error::invalid_state(format!(
            "image slot {}: expected a device no file system is mounted from, found it mounted at {at} (writing it would corrupt what runs there)",
            path.display()
        ))),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn check_not_mounted(_file: &File, _path: &Path) -> Result<()> {
    Ok(())
}

/// Opens the slot for writing at offset 0: a block device must hold `size` bytes; a plain
/// file is sized to exactly `size`.
fn open_slot(path: &Path, size: u64) -> Result<File> {
    let existed = check_device_there(path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io("opening for writing", path, e))?;
    if check_capacity(&mut file, path, size)? {
        check_not_mounted(&file, path)?;
    } else {
        file.set_len(size)
            .map_err(|e| Error::io("resizing", path, e))?;
        // A slot file made here must outlive a power cut as a name, not only as data.
        if !existed {
            crate::fsutil::sync_parent(path)?;
        }
    }
    Ok(file)
}

fn copy_exact(
    src: &mut dyn Read,
    dst: &mut File,
    path: &Path,
    size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut done = 0u64;
    while done < size {
        let want = (size - done).min(BUF_SIZE as u64) as usize;
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "image for {}: expected {size} bytes from the source, found {done}",
                        path.display()
                    ),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading the image for", path, e)),
        };
        dst.write_all(&buf[..n])
            .map_err(|e| Error::io("writing", path, e))?;
        done += n as u64;
        progress(done, size);
    }
    Ok(())
}

fn flip_byte(path: &Path, offset: u64) -> Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("opening", path, e))?;
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut byte))
        .and_then(|_| file.seek(SeekFrom::Start(offset)))
        .and_then(|_| file.write_all(&[!byte[0]]))
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::io("corrupting", path, e))
}

/// The SHA-256 of the first `size` bytes of `path`.
fn hash_prefix(path: &Path, size: u64) -> Result<String> {
    let file = File::open(path).map_err(|e| Error::io("opening for read-back", path, e))?;
    let mut reader = file.take(size);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE];
    let mut done = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| Error::io("reading back", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    if done != size {
        return Err(Error::new(
            ErrorKind::HashMismatch,
            format!(
                "image slot {}: expected {size} bytes when read back, found {done}",
                path.display()
            ),
        ));
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::sha256_hex;

    fn slots() -> (tempfile::TempDir, ImageSlots) {
        let dir = tempfile::tempdir().unwrap();
        let s = ImageSlots::new(dir.path().join("a"), dir.path().join("b"));
        (dir, s)
    }

    /// A deterministic stream of `len` pseudo-random bytes (xorshift), so a 64 MiB image
    /// needs no 64 MiB buffer.
    struct Pattern {
        state: u64,
        left: u64,
    }

    impl Read for Pattern {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.left as usize);
            for b in &mut buf[..n] {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                *b = self.state as u8;
            }
            self.left -= n as u64;
            Ok(n)
        }
    }

    fn pattern(len: u64) -> Pattern {
        Pattern {
            state: 0x9e37_79b9_7f4a_7c15,
            left: len,
        }
    }

    fn pattern_sha(len: u64) -> String {
        let mut hasher = Sha256::new();
        let mut src = pattern(len);
        let mut buf = vec![0u8; BUF_SIZE];
        loop {
            let n = src.read(&mut buf).unwrap();
            if n == 0 {
                return hex(&hasher.finalize());
            }
            hasher.update(&buf[..n]);
        }
    }

    const IMAGE: u64 = 64 << 20;

    /// Writes a 4 KiB pattern image into slot B of `s`.
    fn write_4_kib_to_b(s: &ImageSlots) -> Result<()> {
        s.write_image(
            Slot::B,
            &mut pattern(4096),
            4096,
            &pattern_sha(4096),
            &mut |_, _| {},
        )
    }

    #[test]
    fn a_slot_that_reaches_the_other_slot_through_a_symlink_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        std::fs::write(&a, b"RUNNING-SYSTEM-A").unwrap();
        // As /dev/disk/by-partlabel/... names a partition.
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let s = ImageSlots::new(&a, &b);
        let err = write_4_kib_to_b(&s).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.message().contains("both naming the same file"), "{err}");
        assert_eq!(s.check_distinct().unwrap_err().kind(), ErrorKind::Config);
        assert_eq!(std::fs::read(&a).unwrap(), b"RUNNING-SYSTEM-A");
        // A hard link is the same file too; a distinct file is written.
        std::fs::remove_file(&b).unwrap();
        std::fs::hard_link(&a, &b).unwrap();
        assert!(crate::slots::same_storage(&a, &b));
        std::fs::remove_file(&b).unwrap();
        write_4_kib_to_b(&s).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"RUNNING-SYSTEM-A");
    }

    #[test]
    fn a_slot_device_that_is_not_there_is_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        std::fs::write(&a, b"RUNNING").unwrap();
        let missing = Path::new("/dev/evergreen-no-such-slot");
        let s = ImageSlots::new(&a, missing);
        let err = write_4_kib_to_b(&s).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(err.message().contains("found nothing there"), "{err}");
        assert!(!missing.exists());
    }

    #[test]
    fn a_64_mib_image_is_written_to_slot_b_and_verified_by_reading_back() {
        let (_d, s) = slots();
        let sha = pattern_sha(IMAGE);
        let mut calls = 0u64;
        let mut last = (0, 0);
        s.write_image(
            Slot::B,
            &mut pattern(IMAGE),
            IMAGE,
            &sha,
            &mut |done, total| {
                calls += 1;
                last = (done, total);
            },
        )
        .unwrap();
        assert_eq!(last, (IMAGE, IMAGE));
        assert_eq!(calls, IMAGE / BUF_SIZE as u64);
        assert_eq!(hash_prefix(s.path(Slot::B), IMAGE).unwrap(), sha);
        assert!(!s.path(Slot::A).exists(), "slot a untouched");
    }

    #[test]
    fn a_byte_flipped_after_writing_is_hash_mismatch() {
        let (_d, s) = slots();
        let s = s.corrupt_after_write(IMAGE / 2 + 12345);
        let sha = pattern_sha(IMAGE);
        let err = s
            .write_image(Slot::B, &mut pattern(IMAGE), IMAGE, &sha, &mut |_, _| {})
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::HashMismatch);
        assert!(err.message().contains(&sha), "{err}");
    }

    #[test]
    fn short_source_is_io_and_bad_hash_text_is_config() {
        let (_d, s) = slots();
        let sha = sha256_hex(b"abcdef");
        let err = s
            .write_image(Slot::A, &mut &b"abc"[..], 6, &sha, &mut |_, _| {})
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        let err = s
            .write_image(Slot::A, &mut &b"abc"[..], 3, "ABC", &mut |_, _| {})
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }

    #[test]
    fn wrong_declared_hash_is_hash_mismatch_and_file_shrinks_to_size() {
        let (_d, s) = slots();
        std::fs::write(s.path(Slot::B), vec![7u8; 100]).unwrap();
        let err = s
            .write_image(
                Slot::B,
                &mut &b"abc"[..],
                3,
                &sha256_hex(b"abd"),
                &mut |_, _| {},
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::HashMismatch);
        assert_eq!(std::fs::read(s.path(Slot::B)).unwrap(), b"abc");
    }
}
