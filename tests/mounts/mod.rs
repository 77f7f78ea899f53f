//! File systems mounted for a test (as root), unmounted when the guard drops.
#![allow(dead_code)]

use crate::require;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mount at a directory, unmounted (and its loop device detached) when dropped.
pub struct Mounted(PathBuf, Option<String>);

impl Mounted {
    /// Runs `mount ARGS… AT`, first creating `at`; `None` (the test is skipped, or fails
    /// under `EVERGREEN_REQUIRE_TOOLS`, naming `needs`) where that cannot be done.
    pub fn new(args: &[&OsStr], at: &Path, needs: &str) -> Option<Mounted> {
        std::fs::create_dir_all(at).unwrap();
        if !run("mount", &[args, &[at.as_os_str()]].concat()) {
            require::missing(needs);
            return None;
        }
        Some(Mounted(at.to_path_buf(), None))
    }

    /// A tmpfs of `kib` KiB at `at`.
    pub fn tmpfs(at: &Path, kib: u64) -> Option<Mounted> {
        let size = format!("size={kib}k");
        let args = ["-t", "tmpfs", "-o", &size, "tmpfs"].map(OsStr::new);
        Mounted::new(&args, at, "mount with permission to mount a tmpfs (root)")
    }

    /// A new ext4 file system on the block device `device`, mounted at `at`.
    pub fn ext4(device: &str, at: &Path) -> Option<Mounted> {
        let needs = "mkfs.ext4 and mount with permission to mount a loop device";
        if !run("mkfs.ext4", &["-q", "-F", device].map(OsStr::new)) {
            require::missing(needs);
            return None;
        }
        Mounted::new(&[OsStr::new(device)], at, needs)
    }

    /// A new exFAT file system of `mib` MiB in the image file `image`, on a loop device,
    /// mounted at `at` by the FUSE driver: a USB stick's or an SD card's file system,
    /// without hard links, symlinks or `RENAME_NOREPLACE`.
    pub fn exfat(image: &Path, mib: u64, at: &Path) -> Option<Mounted> {
        let needs = "mkfs.exfat (exfatprogs), mount.exfat-fuse (exfat-fuse), losetup and \
                     permission to attach a loop device";
        std::fs::File::create(image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let attached = require::tool_output(Command::new("losetup").args([
            OsStr::new("-f"),
            OsStr::new("--show"),
            image.as_os_str(),
        ]))
        .ok()
        .filter(|o| o.status.success());
        let Some(attached) = attached else {
            require::missing(needs);
            return None;
        };
        let device = String::from_utf8(attached.stdout)
            .unwrap()
            .trim()
            .to_owned();
        let detach = || require::tool_succeeds(Command::new("losetup").args(["-d", &device]));
        std::fs::create_dir_all(at).unwrap();
        let made = run("mkfs.exfat", &[OsStr::new(&device)]);
        if !made || !run("mount.exfat-fuse", &[OsStr::new(&device), at.as_os_str()]) {
            detach();
            require::missing(needs);
            return None;
        }
        Some(Mounted(at.to_path_buf(), Some(device)))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        require::tool_succeeds(Command::new("umount").arg(&self.0));
        // The loop device under a FUSE mount, which `mount -o loop` would have cleared.
        if let Some(device) = &self.1 {
            require::tool_succeeds(Command::new("losetup").args(["-d", device]));
        }
    }
}

/// A loop block device backed by a file, detached when dropped.
pub struct LoopDevice(pub String);

impl LoopDevice {
    /// Attaches `file`; `None` (the test is skipped, or fails under
    /// `EVERGREEN_REQUIRE_TOOLS`) where loop devices cannot be attached.
    pub fn attach(file: &Path) -> Option<LoopDevice> {
        let out =
            require::tool_output(Command::new("losetup").args(["--find", "--show"]).arg(file));
        match out {
            Ok(o) if o.status.success() => Some(LoopDevice(
                String::from_utf8(o.stdout).unwrap().trim().to_string(),
            )),
            _ => {
                require::missing("losetup with permission to attach a loop device");
                None
            }
        }
    }

    /// Attaches `disk`, a disk image holding a partition table, and returns it with the
    /// node of its first partition; `None` as [`LoopDevice::attach`].
    pub fn attach_partitioned(disk: &Path) -> Option<(LoopDevice, String)> {
        let needs = "losetup and partx with permission to attach a partitioned loop device";
        let out = require::tool_output(
            Command::new("losetup")
                .args(["--partscan", "--find", "--show"])
                .arg(disk),
        );
        let device = match out {
            Ok(o) if o.status.success() => {
                LoopDevice(String::from_utf8(o.stdout).unwrap().trim().to_string())
            }
            _ => {
                require::missing(needs);
                return None;
            }
        };
        // The kernel reads the table as the device is attached, when it was built with a
        // parser for it; partx reads it itself and hands the kernel the partitions.
        let partition = format!("{}p1", device.0);
        if !Path::new(&partition).exists() {
            let added = require::tool_succeeds(Command::new("partx").args(["--add", &device.0]));
            if !added || !Path::new(&partition).exists() {
                require::missing(needs);
                return None;
            }
        }
        Some((device, partition))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        require::tool_succeeds(Command::new("losetup").args(["--detach", &self.0]));
        // A device someone still has open (udev's probe) is detached at its last close,
        // after `losetup` returns; a test that writes the backing store next must not see
        // it still attached.
        let name = self.0.trim_start_matches("/dev/");
        let attached = Path::new("/sys/block").join(name).join("loop/backing_file");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while attached.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Fills the file system holding `dir` to the last byte, as a runaway log would.
pub fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = [b'x'; 4096];
    for _ in 0..1024 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    drop(f);
    assert!(
        std::fs::write(dir.join("probe"), [0u8; 4096]).is_err(),
        "the file system still has room"
    );
}

fn run(cmd: &str, args: &[&OsStr]) -> bool {
    require::tool_succeeds(Command::new(cmd).args(args))
}
