//! Image slots: two block devices (or files) that raw images are written to.
//!
//! An image is streamed into the inactive slot with 64 KiB buffers, fsynced, then read
//! back and hashed: the slot is only reported written when the bytes the device returns
//! have the artifact's SHA-256 (DESIGN §5.5). On Linux the slot's cached pages are
//! dropped after the fsync, so the read-back comes from the device, not from the page
//! cache the write filled: it catches a medium that did not keep what it acknowledged,
//! besides short writes, wrong offsets and a device smaller than it claims. (Elsewhere
//! it reads what the kernel hands to any reader of the slot.)
//!
//! A slot something else uses is never written. On Linux a block device slot is also
//! claimed exclusively (`O_EXCL`) from before the write to after the read-back, as mount
//! claims what it mounts: a busy device (a whole disk one of whose partitions is
//! mounted) is refused, and nothing claims the slot while it is written.

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

    /// Checks only that `slot`, when it is a block device, can hold `size` bytes
    /// (`too_large`): asked before an image is downloaded, so that one too large is not
    /// fetched in vain. A device that is not there, or is busy, is [`check_fits`]'s to
    /// refuse when the install comes (it may be there, or free, by then).
    ///
    /// [`check_fits`]: ImageSlots::check_fits
    pub fn check_size(&self, slot: Slot, size: u64) -> Result<()> {
        let path = self.path(slot);
        match File::open(path) {
            Ok(mut file) => check_capacity(&mut file, path, size).map(drop),
            Err(_) => Ok(()),
        }
    }

    /// Checks, without writing, that `slot` can take an image of `size` bytes: its device
    /// is there (`io`; a slot under `/dev` is never created), a block device holds `size`
    /// bytes (`too_large`), and nothing else uses it (`invalid_state`): no file system is
    /// mounted from a block device and no other device (device-mapper, RAID) is built on
    /// it, no loop device serves the slot, a block device or a plain file, and (Linux) no
    /// one holds a block device exclusively, which also refuses a whole disk whose
    /// partitions are mounted or held. An install asks before it marks the slot
    /// `installing`, so an image that cannot fit leaves the slot's record and boot entry as
    /// they were; [`ImageSlots::write_image`] checks again as it opens the slot.
    pub fn check_fits(&self, slot: Slot, size: u64) -> Result<()> {
        let path = self.path(slot);
        if !check_device_there(path)? {
            return Ok(());
        }
        open_unused(path, size, false).map(drop)
    }

    /// Streams exactly `size` bytes of `src` into `slot`, fsyncs, reads them back and
    /// checks their SHA-256 against `sha256` (lowercase hex).
    ///
    /// `progress(done, size)` is called after every 64 KiB written. A block device is
    /// never written beyond its end (`too_large` before the first byte); no slot is
    /// written while something else uses it (`invalid_state`, as
    /// [`ImageSlots::check_fits`] tells); a plain file is created, grown or shrunk to
    /// `size`. A source shorter than `size` is an `io` error, and so is a failed write,
    /// naming how many of the image's bytes were written; a plain file whose file system
    /// filled up is then emptied, to give the space back. Bytes that read back with
    /// another hash are `hash_mismatch`.
    pub fn write_image(
        &self,
        slot: Slot,
        src: &mut dyn Read,
        size: u64,
        sha256: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        // Kept open until the read-back is done: a block device's exclusive claim keeps
        // anything from mounting or building on the slot between the write and the check
        // that it holds the image.
        let (mut file, block) = self.open_to_write(slot, size, sha256)?;
        let path = self.path(slot);
        copy_exact(src, &mut file, block, path, size, progress)?;
        crate::fsutil::sync_file(&file)
            .map_err(|e| write_failed(&file, block, "syncing", path, size, size, e))?;
        self.check_read_back(&file, slot, size, sha256, &mut |_, _| {})
    }

    /// Opens `slot` to write an image of `size` bytes with the SHA-256 `sha256` into it,
    /// at offset 0, refusing what [`ImageSlots::write_image`] refuses before its first
    /// byte. Returns the slot and whether it is a block device, which stays claimed while
    /// the file is open.
    pub(crate) fn open_to_write(
        &self,
        slot: Slot,
        size: u64,
        sha256: &str,
    ) -> Result<(File, bool)> {
        if !crate::trust::is_sha256_hex(sha256) {
            return Err(Error::config(format!(
                "image for slot {slot}: expected a sha256 of 64 lowercase hex digits, found {sha256:?}"
            )));
        }
        self.check_distinct()?;
        open_slot(self.path(slot), size)
    }

    /// Reads back the first `size` bytes of `slot`, which a download streamed into it,
    /// from the device (claimed meanwhile, as for a write) and checks their SHA-256
    /// against `sha256`: `hash_mismatch` when they differ. `progress(done, size)` is
    /// called as they are read.
    pub(crate) fn read_back(
        &self,
        slot: Slot,
        size: u64,
        sha256: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        self.check_distinct()?;
        let path = self.path(slot);
        check_device_there(path)?;
        let (file, _) = open_unused(path, size, false)?;
        self.check_read_back(&file, slot, size, sha256, progress)
    }

    /// The read-back of `slot`, open as `file`, once what was written is durable.
    fn check_read_back(
        &self,
        file: &File,
        slot: Slot,
        size: u64,
        sha256: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        let path = self.path(slot);
        drop_cached_pages(file, path)?;
        if let Some((offset, store)) = &self.corrupt_at {
            flip_byte(store.as_deref().unwrap_or(path), *offset)?;
        }
        let found = hash_prefix(path, size, progress)?;
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

/// The progress record of a download streaming an image into a slot, one line
/// `<key> <slot> <bytes>`: the first `bytes` of the image [`Streamed::key`] names are
/// durable in `slot`. No record (none written, or one removed as vouching for nothing) says nothing
/// of any slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Streamed {
    /// The image's [`Streamed::key`]: its SHA-256, `gzip:` before it when inflated.
    pub sha256: String,
    /// The slot it is streamed into.
    pub slot: Slot,
    /// How many of its bytes are durable there.
    pub bytes: u64,
}

impl Streamed {
    /// The record at `path`; `None` when there is none, or it cannot be read or parsed
    /// (it then vouches for nothing), or is no regular file: a FIFO planted there by
    /// another user who may write the state directory is never waited on.
    pub(crate) fn read(path: &Path) -> Option<Streamed> {
        let text = String::from_utf8(crate::fsutil::read_regular(path).ok()?).ok()?;
        let mut fields = text.split_whitespace();
        let (sha256, slot, bytes) = (fields.next()?, fields.next()?, fields.next()?);
        Some(Streamed {
            sha256: sha256.to_owned(),
            slot: Slot::parse(slot)?,
            bytes: bytes.parse().ok()?,
        })
    }

    /// What a record names an image by: its blob's SHA-256, with `gzip:` before it when
    /// the blob is inflated into the slot. The same blob published compressed and as it
    /// is leaves different bytes in the slot, so a record of one must not pass for the
    /// other.
    pub(crate) fn key(sha256: &str, compressed: bool) -> String {
        match compressed {
            true => format!("gzip:{sha256}"),
            false => sha256.to_owned(),
        }
    }

    /// How many bytes of the image `sha256` (its [`Streamed::key`]) the record says are
    /// durable in `slot`: 0 when it is about another image or slot.
    pub(crate) fn bytes_of(&self, sha256: &str, slot: Slot) -> u64 {
        if self.sha256 == sha256 && self.slot == slot {
            self.bytes
        } else {
            0
        }
    }

    /// Writes the record to `path` (the slot synced before this is called), atomically:
    /// a crash leaves the old record or the new one.
    pub(crate) fn write(&self, path: &Path) -> Result<()> {
        let line = format!("{} {} {}\n", self.sha256, self.slot, self.bytes);
        crate::fsutil::write_atomic(path, line.as_bytes())
    }

    /// Removes the record at `path`, durably: from then on it vouches for no slot's bytes.
    pub(crate) fn remove(path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => crate::fsutil::sync_parent(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", path, e)),
        }
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
    // A stable name outside /dev (`/etc/…/rootfs-b` → /dev/disk/by-partlabel/…) whose
    // target is missing would be created where it points: in /dev, in RAM.
    if !existed && path.is_symlink() {
        let target = std::fs::read_link(path).map_err(|e| Error::io("reading", path, e))?;
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "expected the slot device {} (a symlink to {}), found nothing there (a slot is never created through a symlink)",
                path.display(),
                target.display()
            ),
        ));
    }
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

/// Refuses (`invalid_state`) a slot something else is using, whose content would be
/// overwritten under the kernel's feet: a block device (`block`) with a file system
/// mounted from it (the running root, when the slot the state calls idle is the one that
/// booted: a host selector that cannot tell, a board provisioned by hand), with another
/// device built on it (device-mapper, RAID), or serving as a loop device's backing store;
/// a plain file a loop device serves, mounted or not. What cannot be read (no
/// `/proc/self/mountinfo`, no sysfs) refuses nothing.
///
/// Only the slot's own device number is looked up, so a whole disk is not refused here
/// for what uses its partitions; the exclusive claim `open_unused` takes on a block device
/// refuses that, and what else holds the device. These checks still run, also when the
/// claim is refused: they name the mount point, the holders, the loop device, where a
/// refused claim tells only that the device is busy.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn check_unused(file: &File, path: &Path, block: bool) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = file
        .metadata()
        .map_err(|e| Error::io("inspecting", path, e))?;
    let sysfs = Path::new(super::SYSFS);
    if block {
        let device = format!("{}:{}", libc::major(meta.rdev()), libc::minor(meta.rdev()));
        check_not_mounted(&device, path)?;
        check_not_held(sysfs, &device, path)?;
    }
    check_not_loop_backing(sysfs, &meta, block, path)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn check_unused(_file: &File, _path: &Path, _block: bool) -> Result<()> {
    Ok(())
}

/// Refuses the block device numbered `device` (`major:minor`) while a file system is
/// mounted from it, as `/proc/self/mountinfo` tells.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn check_not_mounted(device: &str, path: &Path) -> Result<()> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Ok(());
    };
    // Fields: mount id, parent id, major:minor, root, mount point, …
    let mounted_at = mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ').skip(2);
        (fields.next() == Some(device))
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

/// Refuses the block device numbered `device` while another device holds it: a
/// device-mapper target (dm-crypt, dm-verity, LVM, multipath) or an md RAID array built on
/// it, as `<sysfs>/dev/block/<major>:<minor>/holders/` lists them.
///
/// Any holder refuses, whether or not something is mounted from it or from a device
/// above it. A holder is in use by the kernel by being there: it has the device open
/// and may write it itself (an array's resync and superblocks, LVM metadata), and what
/// is built on it needs no mount to be in use (swap, a raw volume a database or a VM
/// writes, a mount in another namespace `/proc/self/mountinfo` does not show). A slot
/// written under it would corrupt all of them, and the holder's own writes could change
/// the slot after its read-back passed. An idle slot is never held: a holder left
/// over from the slot's last use (an unlocked volume, an assembled array) is for the
/// operator to take down.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn check_not_held(sysfs: &Path, device: &str, path: &Path) -> Result<()> {
    let holders_dir = sysfs.join("dev/block").join(device).join("holders");
    let Ok(entries) = std::fs::read_dir(&holders_dir) else {
        return Ok(());
    };
    // In the directory's order: sorting names here alone took 5 KB of the library.
    let holders: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            // A device-mapper device is known to its operator by its name (vg-root,
            // cryptroot), not by its dm-N.
            match std::fs::read_to_string(sysfs.join("block").join(&name).join("dm/name")) {
                Ok(dm) if !dm.trim().is_empty() => format!("{name} ({})", dm.trim()),
                _ => name,
            }
        })
        .collect();
    if holders.is_empty() {
        return Ok(());
    }
    Err(Error::invalid_state(format!(
        "image slot {}: expected a device no other device is built on, found it held by {} (writing it would corrupt that device and whatever uses it)",
        path.display(),
        holders.join(", ")
    )))
}

/// Refuses a slot a loop device serves: a plain file (same device and inode) or a block
/// device (same device number) named by a `<sysfs>/block/loop*/loop/backing_file`. The
/// loop device reads and writes it whether or not a file system is mounted from it, and
/// caches its blocks, so a write beside it corrupts what it holds and may be undone by it.
/// A backing file whose path this process cannot stat (attached in another mount
/// namespace, or by a name since removed, which the kernel shows as `… (deleted)`) is
/// not recognized.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn check_not_loop_backing(
    sysfs: &Path,
    slot: &std::fs::Metadata,
    block: bool,
    path: &Path,
) -> Result<()> {
    let Ok(devices) = std::fs::read_dir(sysfs.join("block")) else {
        return Ok(());
    };
    let served_by: Vec<String> = devices
        .filter_map(|e| e.ok())
        .filter(|device| {
            let Ok(backing) = std::fs::read_to_string(device.path().join("loop/backing_file"))
            else {
                return false;
            };
            // The kernel ends the path with a newline.
            let backing = backing.strip_suffix('\n').unwrap_or(&backing);
            std::fs::metadata(backing).is_ok_and(|m| super::same_storage_meta(slot, &m))
        })
        .map(|device| format!("/dev/{}", device.file_name().to_string_lossy()))
        .collect();
    if served_by.is_empty() {
        return Ok(());
    }
    let what = if block { "device" } else { "file" };
    Err(Error::invalid_state(format!(
        "image slot {}: expected a {what} no loop device serves, found it the backing {what} of {} (writing it would corrupt what the loop device holds)",
        path.display(),
        served_by.join(", ")
    )))
}

/// Opens the slot for writing at offset 0: a block device must hold `size` bytes, and is
/// claimed exclusively for as long as the file is open (see `open_unused`); a plain file
/// is created if missing and sized to exactly `size`. Returns it and whether it is a
/// block device.
fn open_slot(path: &Path, size: u64) -> Result<(File, bool)> {
    let existed = check_device_there(path)?;
    // Refused before a plain file is resized: that is already a write.
    let (file, block) = open_unused(path, size, true)?;
    if !block {
        file.set_len(size)
            .map_err(|e| Error::io("resizing", path, e))?;
        // A slot file made here must outlive a power cut as a name, not only as data.
        if !existed {
            crate::fsutil::sync_parent(path)?;
        }
    }
    Ok((file, block))
}

/// Opens the slot at `path` at offset 0, for writing (a plain file missing there is
/// created, never truncated) or for reading, and refuses it as `check_capacity` and
/// `check_unused` do. Returns it and whether it is a block device.
///
/// On Linux a block device is opened with `O_EXCL` (without `O_CREAT`), which claims it as
/// mount, device-mapper, md and mkfs do. The claim fails (`EBUSY`) for what the checks
/// cannot see: a whole disk one of whose partitions is mounted or held (the partition has
/// its own device number and holders), a mount in another namespace, a program holding
/// the device exclusively. And while the file stays open nothing else can claim the
/// device, so what the checks found stays true while the image is written. Reading needs
/// no claim; `check_fits` takes one only to see whether it can, and lets it go.
fn open_unused(path: &Path, size: u64, write: bool) -> Result<(File, bool)> {
    let exclusive = is_block_path(path);
    // A plain file made here gets the library's mode: a slot others could write could be
    // changed after its read-back.
    let mut options = crate::fsutil::create_options();
    // Read too when writing: a download resuming into the slot hashes what it holds.
    options
        .read(true)
        .write(write)
        .create(write && !exclusive)
        .truncate(false);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if exclusive {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_EXCL);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(e) if exclusive && e.kind() == std::io::ErrorKind::ResourceBusy => {
            return Err(busy(path, size, e))
        }
        Err(e) => {
            let what = if write {
                "opening for writing"
            } else {
                "opening"
            };
            return Err(Error::io(what, path, e));
        }
    };
    let block = check_capacity(&mut file, path, size)?;
    check_unused(&file, path, block)?;
    Ok((file, block))
}

/// The error for the block device at `path` that could not be opened (`e`, `EBUSY`):
/// the one the checks give when they tell why (too small, the mount point, the holders),
/// else a busy device.
fn busy(path: &Path, size: u64, e: std::io::Error) -> Error {
    let checked = File::open(path)
        .map_err(|e| Error::io("opening", path, e))
        .and_then(|mut file| {
            check_capacity(&mut file, path, size)?;
            check_unused(&file, path, true)
        });
    if let Err(err) = checked {
        return err;
    }
    Error::invalid_state(format!(
        "image slot {}: expected a device nothing else uses, found it busy (a file system mounted from it or one of its partitions, or another program holding it open exclusively): writing it would corrupt what uses it",
        path.display()
    ))
    .with_source(e)
}

fn copy_exact(
    src: &mut dyn Read,
    dst: &mut File,
    block: bool,
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
        // Not `write_all`: a failed write names the bytes the slot took, and a write that
        // fills the file system has often taken part of the buffer.
        let mut written = 0;
        while written < n {
            match dst.write(&buf[written..n]) {
                Ok(0) => {
                    let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
                    return Err(write_failed(dst, block, "writing", path, size, done, e));
                }
                Ok(k) => {
                    written += k;
                    done += k as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(write_failed(dst, block, "writing", path, size, done, e)),
            }
        }
        progress(done, size);
    }
    Ok(())
}

/// The error of `what` (writing, syncing) the slot `file` at `path` failing with `e`
/// after `done` of the image's `size` bytes were handed to it.
///
/// A plain file whose file system filled up is emptied first. Left at the image's length
/// it would hold the space the state needs, and every later step that saves the state
/// would fail until someone removed it by hand. Emptying it loses nothing anyone may use:
/// the updater marks the slot `installing` and takes it out of the boot order before the
/// write, so what it held is no release any more and nothing boots it, and the next
/// install writes it from its first byte. No one else sees it shrink: it is never the
/// running slot ([`ImageSlots::check_distinct`]), and no loop device serves it
/// (`check_unused`). The file itself stays, with the owner, mode and labels it was
/// provisioned with. A block device has no size to give back.
pub(crate) fn write_failed(
    file: &File,
    block: bool,
    what: &str,
    path: &Path,
    size: u64,
    done: u64,
    e: std::io::Error,
) -> Error {
    if !crate::fsutil::is_disk_full(&e) || block {
        return Error::new(
            ErrorKind::Io,
            format!(
                "{what} {} after {done} of the image's {size} bytes: {e}",
                path.display()
            ),
        )
        .with_source(e);
    }
    let emptied = match file.set_len(0) {
        Ok(()) => "the slot file was emptied to give the space back".to_string(),
        Err(e) => format!("emptying the slot file to give the space back failed too ({e})"),
    };
    Error::new(
        ErrorKind::Io,
        format!(
            "{what} {}: expected room for the {size} bytes of the image, found the file system full after {done} bytes ({e}); {emptied}: free space and install again",
            path.display()
        ),
    )
    .with_source(e)
}

/// Flips the byte at `offset` of `path`, as the test hooks' faulty medium. Opened without
/// `O_EXCL`: it runs while `write_image` still holds the slot's claim, which keeps out
/// other claims, not plain writers such as this one.
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
        .and_then(|_| crate::fsutil::sync_file(&file))
        .map_err(|e| Error::io("corrupting", path, e))
}

/// The SHA-256 of the first `size` bytes of `path`, `progress(done, size)` called as
/// they are read.
fn hash_prefix(path: &Path, size: u64, progress: &mut dyn FnMut(u64, u64)) -> Result<String> {
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
        crate::trust::hash_in(&mut hasher, &buf[..n]);
        done += n as u64;
        progress(done, size);
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
    Ok(hex(&crate::trust::hash_out(hasher)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::sha256_hex;

    /// A FIFO in place of the download's progress record vouches for nothing, at once:
    /// a firmware download must not wait for a writer that never comes.
    #[test]
    fn a_fifo_in_place_of_the_stream_record_is_no_record() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("image-stream");
        let made = {
            let _spawning = crate::fsutil::tests::spawn_lock();
            std::process::Command::new("mkfifo").arg(&record).status()
        };
        assert!(made.unwrap().success());
        let (done, wait) = std::sync::mpsc::channel();
        let reader = {
            let record = record.clone();
            std::thread::spawn(move || {
                let _ = done.send(Streamed::read(&record).is_none());
            })
        };
        let Ok(none) = wait.recv_timeout(Duration::from_secs(10)) else {
            // Let the stuck reader go before failing.
            let _ = std::fs::write(&record, b"");
            panic!("the read still waits on the FIFO after 10 s");
        };
        reader.join().unwrap();
        assert!(none);
    }

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
                return hex(&crate::trust::hash_out(hasher));
            }
            crate::trust::hash_in(&mut hasher, &buf[..n]);
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

    /// A stable name outside /dev whose target udev has not made: nothing is created
    /// where it points (in /dev, that would be a file in RAM passing its read-back).
    #[test]
    fn a_slot_named_by_a_symlink_whose_target_is_missing_is_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        std::fs::write(&a, b"RUNNING").unwrap();
        let target = dir.path().join("by-partlabel-rootfs_b");
        let link = dir.path().join("rootfs-b");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let s = ImageSlots::new(&a, &link);
        let err = write_4_kib_to_b(&s).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(err.message().contains("found nothing there"), "{err}");
        assert!(err.message().contains("by-partlabel-rootfs_b"), "{err}");
        assert!(!target.exists());
        // Once the target is there, the slot is written through the link.
        std::fs::write(&target, b"").unwrap();
        write_4_kib_to_b(&s).unwrap();
        assert_eq!(std::fs::metadata(&target).unwrap().len(), 4096);
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
        assert_eq!(
            hash_prefix(s.path(Slot::B), IMAGE, &mut |_, _| {}).unwrap(),
            sha
        );
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

    /// A sysfs laid out as the kernel lays out a partition `8:3` that device-mapper has
    /// built `dm-0` (named `vg-root`) and an md array on, and a loop device serving
    /// `served`: device-mapper and md cannot be set up in every place the tests run.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn fake_sysfs(served: &Path) -> tempfile::TempDir {
        let sysfs = tempfile::tempdir().unwrap();
        let root = sysfs.path();
        let holders = root.join("dev/block/8:3/holders");
        std::fs::create_dir_all(&holders).unwrap();
        for (name, dm_name) in [("dm-0", Some("vg-root\n")), ("md127", None)] {
            let device = root.join("devices/virtual/block").join(name);
            std::fs::create_dir_all(&device).unwrap();
            if let Some(dm_name) = dm_name {
                std::fs::create_dir(device.join("dm")).unwrap();
                std::fs::write(device.join("dm/name"), dm_name).unwrap();
            }
            std::fs::create_dir_all(root.join("block")).unwrap();
            std::os::unix::fs::symlink(&device, root.join("block").join(name)).unwrap();
            std::os::unix::fs::symlink(&device, holders.join(name)).unwrap();
        }
        std::fs::create_dir_all(root.join("dev/block/8:4/holders")).unwrap();
        let loop_dir = root.join("devices/virtual/block/loop3/loop");
        std::fs::create_dir_all(&loop_dir).unwrap();
        std::fs::write(
            loop_dir.join("backing_file"),
            format!("{}\n", served.display()),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            root.join("devices/virtual/block/loop3"),
            root.join("block/loop3"),
        )
        .unwrap();
        sysfs
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_partition_another_device_is_built_on_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let sysfs = fake_sysfs(&dir.path().join("elsewhere.img"));
        let slot = Path::new("/dev/sda3");
        let err = check_not_held(sysfs.path(), "8:3", slot).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
        // The holders in the directory's order, which the file system chooses.
        let either = ["dm-0 (vg-root), md127", "md127, dm-0 (vg-root)"].map(|held| format!(
            "image slot /dev/sda3: expected a device no other device is built on, found it held by {held} (writing it would corrupt that device and whatever uses it)"
        ));
        assert!(either.contains(&err.message().to_string()), "{err}");
        // No holders, or no sysfs entry at all: nothing refused.
        check_not_held(sysfs.path(), "8:4", slot).unwrap();
        check_not_held(sysfs.path(), "8:5", slot).unwrap();
        check_not_held(&dir.path().join("no-sysfs"), "8:3", slot).unwrap();
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_file_a_loop_device_serves_is_recognized_by_its_inode_not_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let served = dir.path().join("served.img");
        std::fs::write(&served, b"loop").unwrap();
        let sysfs = fake_sysfs(&served);
        // Another name (a hard link) of the served file is refused too.
        let alias = dir.path().join("alias.img");
        std::fs::hard_link(&served, &alias).unwrap();
        let meta = std::fs::metadata(&alias).unwrap();
        let err = check_not_loop_backing(sysfs.path(), &meta, false, &alias).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
        assert_eq!(
            err.message(),
            format!(
                "image slot {}: expected a file no loop device serves, found it the backing file of /dev/loop3 (writing it would corrupt what the loop device holds)",
                alias.display()
            )
        );
        // A copy is another file: no loop device serves it.
        let copy = dir.path().join("copy.img");
        std::fs::copy(&served, &copy).unwrap();
        let meta = std::fs::metadata(&copy).unwrap();
        check_not_loop_backing(sysfs.path(), &meta, false, &copy).unwrap();
    }
}
