//! A board with two image slots in plain files, a GRUB environment block or a redundant
//! U-Boot environment, and a kernel command line, for the firmware tests
//! (tests/firmware_e2e.rs) and the image-slot crash sweep (tests/crash.rs).
//!
//! Its [`Board::power_on`] runs RAUC's boot logic (`support/bootsim.rs`) against the
//! environment and writes the slot it picked into the command line, which is all Evergreen
//! ever learns about the boot.
//!
//! Included with `#[path = "support/board.rs"] mod board;` next to `mod bootsim` (same
//! way), `mod common` and `mod support`.
#![allow(dead_code)]

use crate::bootsim;
use crate::common::{Device, Repo};
use crate::support::TestServer;
use evergreen::slots::grub::GrubEnv;
use evergreen::slots::uboot::UBootEnv;
use evergreen::slots::Slot;
use evergreen::{Config, Updater};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub const PRODUCT: &str = "com.acme.board";
pub const TARGET: &str = "acme-board-rev2";
pub const MIB: usize = 1 << 20;

/// A repository served on loopback and a factory-fresh board (see [`Board::new`]) on it.
pub fn served_board(name: &str, loader: Loader) -> (Repo, TestServer, Board) {
    let repo = Repo::new(PRODUCT);
    let server = TestServer::serve(&repo.root);
    let board = Board::new(&repo, &server, name, loader);
    (repo, server, board)
}

/// What picks the slot at power-on.
#[derive(Clone, Copy, Debug)]
pub enum Loader {
    Grub,
    UBoot,
}

/// A board: two slot files, a bootloader environment, a kernel command line and the
/// device config that names them.
pub struct Board {
    pub dev: Device,
    pub a: PathBuf,
    pub b: PathBuf,
    pub cmdline: PathBuf,
    pub loader: Loader,
    /// The GRUB block, or the `fw_env.config` of the U-Boot environment.
    pub env: PathBuf,
}

impl Board {
    /// A factory-fresh board running 1.0.0 from slot A, with slot B blank: slots of 1 MiB,
    /// 1.0.0 is `pattern(MIB, 1)`.
    pub fn new(repo: &Repo, server: &TestServer, name: &str, loader: Loader) -> Board {
        Board::with_slots_of(repo, server, name, loader, MIB)
    }

    /// [`Board::new`] with slots of `len` bytes; 1.0.0 is `pattern(len, 1)`.
    pub fn with_slots_of(
        repo: &Repo,
        server: &TestServer,
        name: &str,
        loader: Loader,
        len: usize,
    ) -> Board {
        let base = repo.scratch(name);
        let (a, b) = (base.join("a.img"), base.join("b.img"));
        pattern_file(&a, len, 1);
        std::fs::write(&b, vec![0u8; len]).unwrap();
        let cmdline = base.join("cmdline");
        std::fs::write(&cmdline, "console=ttyS0 quiet\n").unwrap();
        let (env, selector) = match loader {
            Loader::Grub => {
                let env = base.join("grubenv");
                GrubEnv::init(&env).unwrap();
                (env.clone(), json!({"kind": "grub", "env": env}))
            }
            Loader::UBoot => {
                let config = uboot_env(&base);
                (config.clone(), json!({"kind": "uboot", "config": config}))
            }
        };
        let dev = repo.device(
            name,
            &server.url(),
            json!({
                "target": TARGET,
                "current_version": "1.0.0",
                "slots": {"kind": "image", "a": a, "b": b, "selector": selector,
                          "booted_from": {"cmdline": cmdline, "key": "rauc.slot"}},
                "limits": {"retries": 1, "retry_backoff_ms": 10},
            }),
        );
        Board {
            dev,
            a,
            b,
            cmdline,
            loader,
            env,
        }
    }

    /// Forgets the configured `current_version`: the factory image is unknown to Evergreen.
    pub fn without_current_version(self) -> Board {
        self.dev.edit_config(|cfg| {
            cfg.as_object_mut().unwrap().remove("current_version");
        });
        self
    }

    /// One power-on: the bootloader script decides and saves its environment, and the
    /// kernel gets `rauc.slot=<slot>` (`R`, the rescue entry, when it found none).
    pub fn power_on(&self) -> Option<Slot> {
        let slot = match self.loader {
            Loader::Grub => bootsim::grub_boot(&mut GrubEnv::new(&self.env)),
            Loader::UBoot => bootsim::uboot_boot(&mut UBootEnv::open(&self.env).unwrap()),
        };
        let name = slot.map_or("R", Slot::upper);
        std::fs::write(
            &self.cmdline,
            format!("console=ttyS0 root=/dev/mmcblk0p2 rauc.slot={name} quiet\n"),
        )
        .unwrap();
        slot
    }

    /// The slot the last power-on started, as the command line says (`None`: the rescue
    /// entry, or not powered on yet).
    pub fn booted(&self) -> Option<Slot> {
        let cmdline = std::fs::read_to_string(&self.cmdline).unwrap();
        let word = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("rauc.slot="));
        word.and_then(Slot::parse)
    }

    /// `evergreen boot --json`, parsed.
    pub fn boot(&self) -> Value {
        serde_json::from_str(&self.dev.expect("boot", &["--json"], 0)).unwrap()
    }

    /// The library, built from the same config file the CLI reads.
    pub fn updater(&self) -> Updater {
        let config = Config::from_file(&self.dev.config).unwrap();
        Updater::builder(config).build().unwrap()
    }

    pub fn grub(&self, name: &str) -> String {
        GrubEnv::new(&self.env)
            .get(name)
            .unwrap()
            .unwrap_or_default()
    }

    pub fn uboot(&self, name: &str) -> String {
        UBootEnv::open(&self.env)
            .unwrap()
            .get(name)
            .unwrap()
            .unwrap_or_default()
    }

    /// The slot the environment prefers: the first of its boot order.
    #[cfg(feature = "fault-injection")]
    pub fn preferred(&self) -> Slot {
        let order = match self.loader {
            Loader::Grub => self.grub("ORDER"),
            Loader::UBoot => self.uboot("BOOT_ORDER"),
        };
        order.split_whitespace().find_map(Slot::parse).unwrap()
    }

    /// Runs `evergreen <command> --config …` with the process killed at durable step
    /// `crash_at`; it must have died there.
    #[cfg(feature = "fault-injection")]
    pub fn crash_during(&self, command: &[&str], crash_at: u32) {
        let config = self.dev.config.to_str().unwrap();
        let mut args = command.to_vec();
        args.extend(["--config", config]);
        let at = crash_at.to_string();
        let out = crate::common::run_env(&args, &[("EVERGREEN_CRASH_AT", &at)]);
        let err = crate::common::stderr(&out);
        assert!(
            err.contains(&format!("crash point {at} ")),
            "{command:?}: {err}"
        );
    }

    pub fn slot_bytes(&self, slot: Slot) -> Vec<u8> {
        std::fs::read(match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        })
        .unwrap()
    }

    /// Every slot the bootloader would start over the next power-ons if none of those
    /// starts ever reached the startup step, until it first finds none to start: the slots
    /// its environment lets it boot now. (After that, U-Boot's script gives every slot its
    /// tries back, whatever it holds.) Simulated on a copy of the variables; the
    /// environment is left as it is.
    pub fn startable(&self) -> BTreeSet<Slot> {
        self.started_over(8, false)
    }

    /// Every slot a crash loop that never reaches the startup step would start: the same
    /// power-ons through U-Boot's counter resets (and GRUB's rescue entry), as many as
    /// three rounds of both slots' tries take.
    pub fn started_by_a_crash_loop(&self) -> BTreeSet<Slot> {
        self.started_over(24, true)
    }

    fn started_over(&self, power_ons: usize, through_resets: bool) -> BTreeSet<Slot> {
        let mut vars = match self.loader {
            Loader::Grub => GrubEnv::new(&self.env).vars(),
            Loader::UBoot => UBootEnv::open(&self.env).unwrap().vars(),
        }
        .expect("the environment reads");
        let mut started = BTreeSet::new();
        for _ in 0..power_ons {
            let (slot, saved) = match self.loader {
                Loader::Grub => {
                    let (slot, a_try, b_try) = bootsim::grub_decide(&vars);
                    let saved = vec![("A_TRY".into(), a_try), ("B_TRY".into(), b_try)];
                    (slot, saved)
                }
                Loader::UBoot => bootsim::uboot_decide(&vars),
            };
            if slot.is_none() && !through_resets {
                break;
            }
            started.extend(slot);
            // The simulator reads a variable's last value: appending is saving.
            vars.extend(saved);
        }
        started
    }
}

/// A redundant U-Boot environment: two 16 KiB copies in one file, blank like erased flash,
/// initialised the way a board's first boot would (A first with 3 tries, B with none).
pub fn uboot_env(base: &Path) -> PathBuf {
    let storage = base.join("uboot.env");
    std::fs::write(&storage, vec![0xffu8; 0x8000]).unwrap();
    let config = base.join("fw_env.config");
    std::fs::write(
        &config,
        format!(
            "# device offset size\n{0} 0x0 0x4000\n{0} 0x4000 0x4000\n",
            storage.display()
        ),
    )
    .unwrap();
    UBootEnv::open(&config).unwrap().init().unwrap();
    config
}

/// Writes [`pattern`]`(len, seed)` to `path`.
pub fn pattern_file(path: &Path, len: usize, seed: u64) {
    std::fs::write(path, pattern(len, seed)).unwrap();
}

/// `len` pseudo-random bytes (xorshift from `seed`): the image of a version.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15 ^ seed;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// An image of `len` bytes that compresses about four to one: blocks of the version's
/// pseudo-random bytes between runs of zeros, as a file system's free space.
pub fn compressible_image(len: usize, seed: u64) -> Vec<u8> {
    let random = pattern(len, seed);
    let mut image = vec![0u8; len];
    for (i, block) in image.chunks_mut(16 << 10).enumerate() {
        let n = block.len().min(4 << 10);
        block[..n].copy_from_slice(&random[i * (16 << 10)..][..n]);
    }
    image
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Publishes `version` with one `image` component, `rootfs`, a gzip of a
/// [`compressible_image`] of `len` bytes: the image and its gzip.
pub fn release_gzip_image(repo: &Repo, version: &str, len: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let image = compressible_image(len, seed);
    let gz = gzip(&image);
    let path = repo
        .scratch("images")
        .join(format!("rootfs-{version}.img.gz"));
    std::fs::write(&path, &gz).unwrap();
    let spec = PathBuf::from(format!("{}:image", path.display()));
    repo.release("stable", version, TARGET, &[("rootfs", &spec)], &[]);
    (image, gz)
}

/// Publishes `version` with one `image` component, `rootfs`, made of `len` bytes.
pub fn release_image(repo: &Repo, version: &str, len: usize, seed: u64) -> PathBuf {
    let image = repo.scratch("images").join(format!("rootfs-{version}.img"));
    pattern_file(&image, len, seed);
    let spec = PathBuf::from(format!("{}:image", image.display()));
    repo.release("stable", version, TARGET, &[("rootfs", &spec)], &[]);
    image
}
