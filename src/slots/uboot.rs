//! The U-Boot environment as a boot selector, with RAUC's variables.
//!
//! An environment copy is `size` bytes: a CRC32 (IEEE, in the host's byte order as U-Boot
//! and libubootenv store it) over the whole data area, then — for a redundant pair only —
//! one flag byte, then `name=value\0` entries ended by an empty one or by the end of the
//! data area (a full environment: read, never written, as `fw_printenv` can't read one
//! back), padded with `0x00`. U-Boot's own
//! `env export` pads with `0x00`; `fw_setenv` from libubootenv 0.3.2 leaves the padding
//! as whatever was in its buffer (we measured it), so readers must only trust the CRC.
//!
//! Where the copies are comes from a `fw_env.config` file as libubootenv reads it:
//! `device offset size [sector_size [sectors]]` per line (later columns and a `#` comment
//! after them are ignored), `#` comment lines, one line for a single copy, two for a
//! redundant pair (later lines are ignored). `offset` is a C integer (`0x…`, `0…` octal or
//! decimal; negative counts from the end of the device), `size` and the sector fields are
//! hexadecimal with or without `0x`. Raw flash (`/dev/mtdN`, `/dev/ubi*`) is refused;
//! `/dev/mtdblockN` is a block device and is used. Two copies sharing a byte of one device
//! are refused when read.
//!
//! # Redundant copies and power cuts
//!
//! Reading picks the copy whose CRC is valid; of two valid copies the one with the newer
//! flag, by libubootenv's rule: the greater flag, except that `0` is newer than `255`
//! (the counter wraps), and copy 0 on a tie. Writing goes to the *other* copy with the
//! flag incremented and is fsynced; the copy that was read is never touched. A power cut
//! mid-write leaves a copy with a bad CRC, so the old environment is read: every instant
//! reads as either the old or the new environment.
//!
//! A single copy can't be written that way: a torn write leaves a bad CRC, which we report
//! as a `bootloader` error and U-Boot answers by using its built-in default environment.
//! Use a redundant pair for devices that can lose power.
//!
//! Every write holds the lock `fw_setenv` takes, [`TOOLS_LOCK`], from reading the
//! environment to writing it, so a `fw_setenv` run at the same time never loses a change of
//! ours nor we one of its.
//!
//! # eMMC boot partitions
//!
//! The kernel keeps an eMMC hardware boot partition (`/dev/mmcblkNbootM`) read-only while
//! `/sys/block/mmcblkNbootM/force_ro` reads 1, so that nothing overwrites the bootloader by
//! accident. `fw_setenv` writes 0 there before it writes the environment and 1 after; so
//! do we, for a copy on such a partition (reached by any name: `/dev/disk/by-…` links are
//! resolved) whose lock is on, and the lock goes back on when the write fails too.
//!
//! # Variables
//!
//! RAUC's: `BOOT_ORDER` (`"A B"`), `BOOT_A_LEFT`/`BOOT_B_LEFT` — tries left, which the boot
//! script decrements with `setexpr` (so they are read and written in hexadecimal, which is
//! the same as decimal up to 9). Activate puts the slot first with `tries` left; confirm
//! gives it the configured maximum back (3 by default); fall back gives the bad slot 0. A
//! slot disabled (it holds nothing to boot) gets 0 and leaves `BOOT_ORDER`, since 0 alone
//! does not last: when no slot has tries left, the script gives both slots 3 again, and a
//! crash loop of the running slot would then go on into it. Activate puts it back first.
//! As in the script, a missing or empty `BOOT_ORDER` reads as `"A B"` and a missing or
//! empty `BOOT_X_LEFT` as 3 (`fw_setenv NAME ""` stores `NAME=`, it does not delete it).
//!
//! As in U-Boot and `fw_printenv`, the last of a repeated name counts; setting one drops
//! the earlier ones. Every other variable is written back byte for byte.

use super::cmdline::BootedFrom;
use super::grub::{
    check_var, decoded, last_raw, order_word, set_raw, slots_in, split_eq, text, BootChange,
    EnvWrite, RawVar,
};
use super::Slot;
use crate::error::{Error, ErrorKind, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One copy of the environment: where it lives and how big it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvCopy {
    /// The device or plain file holding it.
    pub device: PathBuf,
    /// Byte offset of the copy in `device`; a negative one counts from the device's end.
    pub offset: i64,
    /// Size of the copy in bytes (CRC, flag and data area together).
    pub size: usize,
}

/// A parsed `fw_env.config`: one copy, or two for a redundant environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwEnvConfig {
    /// The copies, in the file's order (copy 0, copy 1).
    pub copies: Vec<EnvCopy>,
}

/// `U-Boot env config PATH[ line N]: expected …, found …`.
fn config_error(origin: &Path, at: &str, expected: &str, found: &dyn std::fmt::Debug) -> Error {
    bootloader(format!(
        "U-Boot env config {}{at}: expected {expected}, found {found:?}",
        origin.display()
    ))
}

fn bootloader(msg: String) -> Error {
    Error::new(ErrorKind::Bootloader, msg)
}

/// Digits in `radix`, without the sign `from_str_radix` would take.
fn digits(s: &str, radix: u32) -> Option<u64> {
    u64::from_str_radix(s, radix)
        .ok()
        .filter(|_| !s.starts_with('+'))
}

/// `strtoll(s, NULL, 0)`: one optional sign, then hexadecimal with `0x`, octal with a
/// leading `0`, else decimal.
fn parse_c_int(s: &str) -> Option<i64> {
    let (neg, s) = s
        .strip_prefix('-')
        .map_or((false, s.strip_prefix('+').unwrap_or(s)), |r| (true, r));
    let n = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        digits(hex, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        digits(&s[1..], 8)
    } else {
        digits(s, 10)
    };
    let n = i64::try_from(n?).ok()?;
    Some(if neg { -n } else { n })
}

/// An offset for messages: `0x400`, or `0x4000 before the end`.
fn show_offset(offset: i64) -> String {
    let abs = offset.unsigned_abs();
    if offset < 0 {
        format!("{abs:#x} before the end")
    } else {
        format!("{abs:#x}")
    }
}

/// `%zx`: hexadecimal after one optional `+`, `0x` optional.
fn parse_hex(s: &str) -> Option<u64> {
    let s = s.strip_prefix('+').unwrap_or(s);
    digits(
        s.strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s),
        16,
    )
}

impl FwEnvConfig {
    /// Reads and parses a `fw_env.config` file.
    pub fn load(path: &Path) -> Result<FwEnvConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io("reading the U-Boot env config", path, e))?;
        FwEnvConfig::parse(&text, path)
    }

    /// Parses `fw_env.config` text; `origin` names it in errors.
    ///
    /// ```
    /// use evergreen::slots::uboot::FwEnvConfig;
    /// let cfg = FwEnvConfig::parse(
    ///     "# device offset size\n/dev/mmcblk0 0x3f8000 0x4000\n/dev/mmcblk0 0x3fc000 4000\n",
    ///     "fw_env.config".as_ref(),
    /// ).unwrap();
    /// assert_eq!(cfg.copies.len(), 2);
    /// assert_eq!((cfg.copies[1].offset, cfg.copies[1].size), (0x3fc000, 0x4000));
    /// ```
    pub fn parse(text: &str, origin: &Path) -> Result<FwEnvConfig> {
        let mut copies = Vec::new();
        // libubootenv reads the first two environment lines and stops.
        for (n, line) in text.lines().enumerate() {
            let fields: Vec<&str> = line
                .split_whitespace()
                .take_while(|f| !f.starts_with('#'))
                .collect();
            if !fields.is_empty() && copies.len() < 2 {
                copies.push(parse_config_line(&fields, origin, n + 1)?);
            }
        }
        let error =
            |expected, found: std::fmt::Arguments| Err(config_error(origin, "", expected, &found));
        let [a, b] = copies.as_slice() else {
            if copies.is_empty() {
                return error(
                    "one or two environment lines (`device offset size`)",
                    format_args!("none"),
                );
            }
            return Ok(FwEnvConfig { copies });
        };
        if a.size != b.size {
            return error(
                "two copies of one size",
                format_args!("{:#x} and {:#x}", a.size, b.size),
            );
        }
        Ok(FwEnvConfig { copies })
    }

    /// True for a redundant pair.
    pub fn redundant(&self) -> bool {
        self.copies.len() == 2
    }
}

fn parse_config_line(fields: &[&str], origin: &Path, line: usize) -> Result<EnvCopy> {
    let at = format!(" line {line}");
    let error = |expected, found: &dyn std::fmt::Debug| config_error(origin, &at, expected, found);
    if fields.len() < 3 {
        return Err(error("`device offset size`", &fields.join(" ")));
    }
    // `/dev/mtdblockN` is a block device; `/dev/mtdN` and UBI volumes are not.
    let dev = fields[0];
    if dev.starts_with("/dev/ubi")
        || dev.starts_with("/dev/mtd") && !dev.starts_with("/dev/mtdblock")
    {
        let expected = "a block device or a file, not raw flash (MTD and UBI need erasing before writing: not supported)";
        return Err(error(expected, &dev));
    }
    let offset = parse_c_int(fields[1]).ok_or_else(|| error("an offset", &fields[1]))?;
    let size = parse_hex(fields[2])
        .filter(|&s| s > 5 && s <= 1 << 24)
        .ok_or_else(|| {
            let expected = "a hexadecimal size from 6 bytes to 0x1000000 (16 MiB)";
            error(expected, &fields[2])
        })?;
    // libubootenv reads two sector fields and ignores any column after them.
    if let Some(bad) = fields[3..fields.len().min(5)]
        .iter()
        .find(|f| parse_hex(f).is_none())
    {
        return Err(error("a hexadecimal sector field", bad));
    }
    Ok(EnvCopy {
        device: PathBuf::from(fields[0]),
        offset,
        size: size as usize,
    })
}

/// The environment that reading found: its variables, the copy and that copy's flag, and
/// where each copy starts on its device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Loaded {
    vars: Vec<RawVar>,
    current: usize,
    flag: u8,
    starts: Vec<u64>,
}

/// libubootenv's choice between two valid copies: the greater flag, 0 after 255, copy 0
/// on a tie.
fn newer_copy(flag0: u8, flag1: u8) -> usize {
    match (flag0, flag1) {
        (0xff, 0) => 1,
        (0, 0xff) => 0,
        (f0, f1) if f1 > f0 => 1,
        _ => 0,
    }
}

fn data_offset(redundant: bool) -> usize {
    if redundant {
        5
    } else {
        4
    }
}

/// Parses the data area: `k=v\0` entries up to an empty one or the end of the area (a
/// full environment, as `fw_setenv` writes it); entries without `=` are skipped as
/// libubootenv does.
fn parse_data(mut data: &[u8]) -> std::result::Result<Vec<RawVar>, String> {
    let mut vars = Vec::new();
    while data.first().is_some_and(|&c| c != 0) {
        let Some(len) = data.iter().position(|&c| c == 0) else {
            return Err("expected entries ended by NUL, found one running to the end".into());
        };
        vars.extend(split_eq(&data[..len]));
        data = &data[len + 1..];
    }
    Ok(vars)
}

/// The stored CRC (host byte order, as U-Boot and libubootenv write it) and the computed one.
fn crcs(bytes: &[u8], redundant: bool) -> (u32, u32) {
    let stored = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    (stored, crc32fast::hash(&bytes[data_offset(redundant)..]))
}

/// Checks and parses one copy: `Ok((flag, vars))` or why it is invalid.
fn parse_copy(bytes: &[u8], redundant: bool) -> std::result::Result<(u8, Vec<RawVar>), String> {
    let (stored, computed) = crcs(bytes, redundant);
    if stored != computed {
        return Err(format!(
            "bad CRC: expected {computed:08x} (computed), found {stored:08x} (stored)"
        ));
    }
    let flag = if redundant { bytes[4] } else { 0 };
    Ok((flag, parse_data(&bytes[data_offset(redundant)..])?))
}

/// The bytes of one copy holding `vars` with `flag`, ended by an empty entry. A full
/// environment is read but never written: libubootenv 0.3.2 reads past its end.
fn build_copy(copy: &EnvCopy, vars: &[RawVar], redundant: bool, flag: u8) -> Result<Vec<u8>> {
    let start = data_offset(redundant);
    let mut image = vec![0u8; start];
    for (k, v) in vars {
        image.extend_from_slice(k);
        image.push(b'=');
        image.extend_from_slice(v);
        image.push(0);
    }
    image.push(0);
    if image.len() > copy.size {
        return Err(bootloader(format!(
            "U-Boot environment {}: the variables need {} bytes, the copy has {}",
            copy.device.display(),
            image.len(),
            copy.size
        )));
    }
    image.resize(copy.size, 0);
    let crc = crc32fast::hash(&image[start..]);
    image[..4].copy_from_slice(&crc.to_ne_bytes());
    if redundant {
        image[4] = flag;
    }
    Ok(image)
}

/// `slot` first, then the rest of `order` as it was; the other slot is kept as fallback.
fn order_first(order: Option<&str>, slot: Slot) -> String {
    let mut words = words_but(order.unwrap_or(""), slot);
    if !names(&words, slot.other()) {
        words.push(slot.other().upper());
    }
    words.insert(0, slot.upper());
    words.join(" ")
}

/// `order` without `slot`, which holds nothing to boot. Its tries at 0 are not enough:
/// when no slot has tries left, RAUC's script gives both slots 3 again, so a crash loop of
/// the running slot would go on into this one. The other slot stays (added first when
/// missing): an order that names no slot boots nothing.
fn order_without(order: Option<&str>, slot: Slot) -> String {
    let mut words = words_but(order_text(order), slot);
    if !names(&words, slot.other()) {
        words.insert(0, slot.other().upper());
    }
    words.join(" ")
}

/// `BOOT_ORDER` as the script reads it (`test -n … || setenv BOOT_ORDER "A B"`): missing
/// or empty is `A B`.
fn order_text(order: Option<&str>) -> &str {
    order.filter(|o| !o.is_empty()).unwrap_or("A B")
}

/// The words of `order` but those naming `slot`.
fn words_but(order: &str, slot: Slot) -> Vec<&str> {
    order
        .split_whitespace()
        .filter(|w| order_word(w.as_bytes()) != Some(slot))
        .collect()
}

/// Whether one of `words` names `slot`.
fn names(words: &[&str], slot: Slot) -> bool {
    words.iter().any(|w| order_word(w.as_bytes()) == Some(slot))
}

fn left_var(slot: Slot) -> String {
    format!("BOOT_{}_LEFT", slot.upper())
}

/// The U-Boot environment selector (RAUC-compatible variables).
#[derive(Debug, Clone)]
pub struct UBootEnv {
    config: FwEnvConfig,
    max_tries: u32,
    booted_from: BootedFrom,
    tools_lock: PathBuf,
    lock_patience: Duration,
}

impl UBootEnv {
    /// The tries a confirmed slot gets back, as RAUC's boot script defaults them.
    pub const DEFAULT_MAX_TRIES: u32 = 3;

    /// A selector for the environment described by `config`.
    pub fn new(config: FwEnvConfig) -> UBootEnv {
        UBootEnv {
            config,
            max_tries: Self::DEFAULT_MAX_TRIES,
            booted_from: BootedFrom::default(),
            tools_lock: PathBuf::from(TOOLS_LOCK),
            lock_patience: TOOLS_LOCK_PATIENCE,
        }
    }

    /// Takes `lock` for [`TOOLS_LOCK`], waiting at most `patience` (whole seconds, as the
    /// error says them) for it: tests hold a lock of their own rather than the system's,
    /// and do not wait 30 s.
    #[cfg(test)]
    fn with_tools_lock(mut self, lock: &Path, patience: Duration) -> UBootEnv {
        self.tools_lock = lock.to_path_buf();
        self.lock_patience = patience;
        self
    }

    /// A selector for the environment described by the `fw_env.config` file at `path`.
    pub fn open(path: &Path) -> Result<UBootEnv> {
        Ok(UBootEnv::new(FwEnvConfig::load(path)?))
    }

    /// The tries a confirmed (good) slot is given (`BOOT_X_LEFT` after confirm).
    pub fn with_max_tries(mut self, tries: u32) -> UBootEnv {
        self.max_tries = tries;
        self
    }

    /// Reads the running slot from another command line or key.
    pub fn with_booted_from(mut self, booted_from: BootedFrom) -> UBootEnv {
        self.booted_from = booted_from;
        self
    }

    /// The parsed configuration.
    pub fn config(&self) -> &FwEnvConfig {
        &self.config
    }

    /// Reads one copy: where it starts on its device, and its bytes. A device too short
    /// for it is a `bootloader` error naming the device, the offset, the size and the
    /// device's length.
    fn read_copy(&self, copy: &EnvCopy) -> Result<(u64, Vec<u8>)> {
        let path = &copy.device;
        let what = format!("{:#x} bytes at {} of", copy.size, show_offset(copy.offset));
        let mut file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let mut bytes = vec![0u8; copy.size];
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io("reading", path, e))?;
        let start = if copy.offset < 0 {
            len.checked_sub(copy.offset.unsigned_abs())
        } else {
            Some(copy.offset as u64)
        };
        let Some(start) = start.filter(|s| s + copy.size as u64 <= len) else {
            return Err(bootloader(format!(
                "U-Boot environment: expected {what} {}, found a device of {len:#x} bytes",
                path.display()
            )));
        };
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| Error::io(&format!("reading {what}"), path, e))?;
        Ok((start, bytes))
    }

    /// Every copy as read; any error reading one is returned, never taken for a blank copy.
    /// Two copies that share a byte of one device (reached by any path: a symlink, another
    /// node of the device) are a `bootloader` error: writing one would overwrite the other.
    fn read_copies(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut copies = Vec::new();
        for copy in &self.config.copies {
            copies.push(self.read_copy(copy)?);
        }
        if let ([a, b], [(x, _), (y, _)]) = (&self.config.copies[..], &copies[..]) {
            if x.abs_diff(*y) < a.size as u64 && super::same_storage(&a.device, &b.device) {
                return Err(bootloader(format!(
                    "U-Boot environment: expected two copies that don't overlap, found {} from {x:#x} and {} from {y:#x} on the same storage",
                    a.device.display(),
                    b.device.display()
                )));
            }
        }
        Ok(copies)
    }

    fn load(&self) -> Result<Loaded> {
        self.pick(self.read_copies()?)
    }

    fn pick(&self, copies: Vec<(u64, Vec<u8>)>) -> Result<Loaded> {
        let redundant = self.config.redundant();
        let starts = copies.iter().map(|c| c.0).collect();
        let parsed: Vec<_> = copies
            .iter()
            .map(|(_, bytes)| parse_copy(bytes, redundant))
            .collect();
        let current = match parsed.as_slice() {
            [Ok((f0, _)), Ok((f1, _))] => newer_copy(*f0, *f1),
            [Err(_), Ok(_)] => 1,
            _ => 0,
        };
        if let Ok((flag, vars)) = &parsed[current] {
            return Ok(Loaded {
                vars: vars.clone(),
                current,
                flag: *flag,
                starts,
            });
        }
        let what: Vec<String> = self
            .config
            .copies
            .iter()
            .zip(parsed)
            .map(|(c, r)| {
                let why = r.err().unwrap_or_default();
                format!("{} at {}: {why}", c.device.display(), show_offset(c.offset))
            })
            .collect();
        Err(bootloader(format!(
            "U-Boot environment: expected a valid copy, found none ({})",
            what.join("; ")
        )))
    }

    /// Every variable of the current copy, in stored order (the last of a repeated name is
    /// the one U-Boot uses). Bytes that are not UTF-8 read as U+FFFD here; the environment
    /// keeps them as they are.
    pub fn vars(&self) -> Result<Vec<(String, String)>> {
        Ok(decoded(&self.load()?.vars))
    }

    /// One variable's value (the last one when a name repeats, as U-Boot reads it).
    pub fn get(&self, name: &str) -> Result<Option<String>> {
        Ok(last_raw(&self.load()?.vars, name).map(text))
    }

    /// Sets (`Some`) or deletes (`None`) variables, like `fw_setenv`, with one write to the
    /// inactive copy (or the only one). A repeated name keeps only its last entry. An empty
    /// name, one with `=` or NUL, or a value with NUL is a `config` error, nothing written.
    pub fn set_vars(&mut self, updates: &[(&str, Option<&str>)]) -> Result<()> {
        let _lock = self.tools_lock()?;
        let loaded = self.load()?;
        let mut vars = loaded.vars.clone();
        for (name, value) in updates {
            let bad = name.bytes().any(|c| c == b'=' || c == 0);
            check_var(
                "U-Boot environment",
                "without `=` or NUL",
                bad,
                name,
                *value,
            )?;
            set_raw(&mut vars, name, *value);
        }
        write_copies(&self.plan_vars(&loaded, vars)?)
    }

    /// Writes a fresh environment (`BOOT_ORDER=A`, A with the maximum tries, B with none
    /// and out of the boot order, as [`BootChange::Disable`] leaves a slot) when every
    /// copy was read and none has a valid CRC, e.g. on a blank device; a valid environment
    /// is left as it is. A copy that can't be read, or one whose CRC is valid but whose
    /// entries don't parse, is an error and nothing is written.
    pub fn init(&mut self) -> Result<()> {
        let _lock = self.tools_lock()?;
        let copies = self.read_copies()?;
        let redundant = self.config.redundant();
        if copies.iter().any(|(_, b)| {
            let (stored, computed) = crcs(b, redundant);
            stored == computed
        }) {
            return self.pick(copies).map(drop);
        }
        let vars: Vec<RawVar> = [
            ("BOOT_ORDER".to_string(), "A".to_string()),
            (left_var(Slot::A), format!("{:x}", self.max_tries)),
            (left_var(Slot::B), "0".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
        .collect();
        let copy = &self.config.copies[0];
        write_copy(&EnvWrite {
            path: copy.device.clone(),
            offset: copies[0].0,
            data: build_copy(copy, &vars, redundant, 0)?,
        })
    }

    /// The writes that `change` takes, without making them: none when nothing changes,
    /// else one whole copy (the inactive one of a redundant pair).
    pub fn plan(&self, change: BootChange) -> Result<Vec<EnvWrite>> {
        let loaded = self.load()?;
        let mut vars = loaded.vars.clone();
        let order = last_raw(&loaded.vars, "BOOT_ORDER").map(text);
        let order = order.as_deref();
        let max = format!("{:x}", self.max_tries);
        match change {
            BootChange::Disable(slot) => {
                set_raw(&mut vars, "BOOT_ORDER", Some(&order_without(order, slot)));
                set_raw(&mut vars, &left_var(slot), Some("0"));
            }
            BootChange::Activate { slot, tries } => {
                if tries == 0 {
                    return Err(Error::config(
                        "activate: expected at least 1 trial boot, found tries = 0",
                    ));
                }
                set_raw(&mut vars, "BOOT_ORDER", Some(&order_first(order, slot)));
                set_raw(&mut vars, &left_var(slot), Some(&format!("{tries:x}")));
            }
            BootChange::Confirm(slot) => set_raw(&mut vars, &left_var(slot), Some(&max)),
            BootChange::FallBack { good, bad } => {
                // `bad` keeps its place in the order, or its absence. Fall back also
                // repairs an environment that still prefers a good slot the bootloader
                // gave up on, which stays the fallback; a release rolled back is taken
                // out after every rollback (`disable`), and a repair run again at the
                // next start must not put it back (two writes for none). An order that
                // named neither slot (edited by hand) says nothing of `bad`: it stays.
                let before: Vec<Slot> = slots_in(order_text(order).as_bytes()).collect();
                let mut first = order_first(order, good);
                if !before.is_empty() && !before.contains(&bad) {
                    first = order_without(Some(&first), bad);
                }
                set_raw(&mut vars, "BOOT_ORDER", Some(&first));
                set_raw(&mut vars, &left_var(bad), Some("0"));
                set_raw(&mut vars, &left_var(good), Some(&max));
            }
        }
        self.plan_vars(&loaded, vars)
    }

    fn plan_vars(&self, loaded: &Loaded, vars: Vec<RawVar>) -> Result<Vec<EnvWrite>> {
        if vars == loaded.vars {
            return Ok(Vec::new());
        }
        let redundant = self.config.redundant();
        let target = if redundant { 1 - loaded.current } else { 0 };
        let copy = &self.config.copies[target];
        let data = build_copy(copy, &vars, redundant, loaded.flag.wrapping_add(1))?;
        Ok(vec![EnvWrite {
            path: copy.device.clone(),
            offset: loaded.starts[target],
            data,
        }])
    }

    /// Makes `change` (see [`UBootEnv::plan`]).
    pub fn apply(&mut self, change: BootChange) -> Result<()> {
        let _lock = self.tools_lock()?;
        write_copies(&self.plan(change)?)
    }

    /// Tries left for `slot` (`BOOT_X_LEFT`, hexadecimal as `setexpr` writes it); a
    /// missing or empty variable counts as what RAUC's boot script defaults it to (3).
    pub fn tries_left(&self, slot: Slot) -> Result<u32> {
        Ok(left_in(&self.load()?.vars, slot))
    }
}

/// A variable as RAUC's boot script sees it: missing or empty is unset (`test -n
/// "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"`), and `fw_setenv NAME ""` stores an empty one.
fn set_in<'a>(vars: &'a [RawVar], name: &str) -> Option<&'a [u8]> {
    last_raw(vars, name).filter(|v| !v.is_empty())
}

/// The lock `fw_setenv` (libubootenv) holds from reading the environment to writing it.
pub const TOOLS_LOCK: &str = "/var/lock/fw_printenv.lock";

/// How long a write waits for [`TOOLS_LOCK`] before it gives up.
pub const TOOLS_LOCK_PATIENCE: Duration = Duration::from_secs(30);

impl UBootEnv {
    /// Takes [`TOOLS_LOCK`], waiting while `fw_setenv` or another writer holds it, so that
    /// neither writes the inactive copy over the other's change (both would read the same
    /// current copy and write the other with the same flag: the second write loses the
    /// first). For [`TOOLS_LOCK_PATIENCE`] at most: a hung `fw_setenv` must not hang every
    /// boot, so past that it is a `bootloader` error and nothing is written. Like
    /// libubootenv, goes on without it when the lock file can't be opened (no writable
    /// `/var/lock`).
    fn tools_lock(&self) -> Result<Option<File>> {
        let (lock, patience) = (&self.tools_lock, self.lock_patience);
        let access = crate::fsutil::LockAccess::AsFound;
        match crate::fsutil::lock_exclusive_within(lock, access, &mut || {}, Some(patience), None) {
            Ok(None) => Err(bootloader(format!(
                "U-Boot environment: expected to take the lock {} within {} s, found \
                     another program (a hung fw_setenv?) holding it all that time; nothing \
                     written",
                lock.display(),
                patience.as_secs()
            ))),
            taken => Ok(taken.ok().flatten()),
        }
    }
}

/// Makes `writes` in order, each one copy of the environment (see [`write_copy`]).
fn write_copies(writes: &[EnvWrite]) -> Result<()> {
    writes.iter().try_for_each(write_copy)
}

/// Makes one write of a copy, as [`EnvWrite::apply`] does; a copy on an eMMC hardware
/// boot partition that the kernel keeps read-only is unlocked for it, as `fw_setenv` does
/// (see [`with_boot_partition_unlocked`]).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn write_copy(write: &EnvWrite) -> Result<()> {
    match emmc_boot_partition(&write.path) {
        Some(name) => {
            with_boot_partition_unlocked(Path::new(super::SYSFS), &name, &write.path, || {
                write.apply()
            })
        }
        None => write.apply(),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn write_copy(write: &EnvWrite) -> Result<()> {
    write.apply()
}

/// The kernel's name of the eMMC hardware boot partition `device` is (`mmcblk0boot1`),
/// through any symlinks (`/dev/disk/by-partlabel/…`, a board's own alias), or `None` for
/// anything else: another block device, a plain file (whatever its name), a path that
/// cannot be resolved. The sysfs entry is named after the device node, not the link.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn emmc_boot_partition(device: &Path) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let real = std::fs::canonicalize(device).ok()?;
    if !std::fs::metadata(&real).ok()?.file_type().is_block_device() {
        return None;
    }
    let name = real.file_name()?.to_str()?;
    is_emmc_boot_name(name).then(|| name.to_string())
}

/// `mmcblk<N>boot<M>`, as the kernel names the hardware boot partitions of eMMC `N`.
/// Its partitions (`mmcblk0p1`), its RPMB (`mmcblk0rpmb`) and the whole device are not
/// locked this way.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn is_emmc_boot_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix("mmcblk")
        .and_then(|rest| rest.split_once("boot"))
        .is_some_and(|(card, part)| digits(card) && digits(part))
}

/// Runs `write` with the eMMC boot partition `name` (on `device`, for messages) writable:
/// when `<sysfs>/block/<name>/force_ro` reads 1, it is set to 0 first and back to 1 after
/// `write`, whatever `write` returned. A lock that is off, or that cannot be read (no
/// sysfs, an older kernel), is left as it is: an operator who unlocked the partition keeps
/// it unlocked, and a write the kernel refuses fails on its own, naming the device.
///
/// A lock that cannot be turned off (not root, sysfs mounted read-only) is an `io` error,
/// as the environment write's own failures are, naming the `force_ro` file; nothing is
/// written then.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn with_boot_partition_unlocked<T>(
    sysfs: &Path,
    name: &str,
    device: &Path,
    write: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let force_ro = sysfs.join("block").join(name).join("force_ro");
    let locked = std::fs::read_to_string(&force_ro).is_ok_and(|v| v.trim() == "1");
    if !locked {
        return write();
    }
    set_force_ro(&force_ro, b"0").map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!(
                "U-Boot environment {}: expected to unlock eMMC boot partition {name} for writing (0 into {}), found {e}",
                device.display(),
                force_ro.display()
            ),
        )
        .with_source(e)
    })?;
    let _relock = Relock(force_ro);
    write()
}

/// Writes `value` into a sysfs attribute, as `echo 0 > force_ro` does.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_force_ro(force_ro: &Path, value: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(force_ro)?
        .write_all(value)
}

/// Turns an eMMC boot partition's lock (its `force_ro`) back on when dropped, so that a
/// failed or panicking write leaves the partition as protected as it found it.
#[cfg(any(target_os = "linux", target_os = "android"))]
struct Relock(PathBuf);

#[cfg(any(target_os = "linux", target_os = "android"))]
impl Drop for Relock {
    fn drop(&mut self) {
        // Not reported, as `fw_setenv` does not report it: the environment write has
        // succeeded or failed by now, and that is what the caller must hear; an error here
        // would make a write the bootloader will act on look failed. The partition is only
        // left without the guard against accidental writes until the next boot.
        let _ = set_force_ro(&self.0, b"1");
    }
}

/// `BOOT_X_LEFT` as RAUC's boot script reads it: hexadecimal, 3 when missing or empty.
fn left_in(vars: &[RawVar], slot: Slot) -> u32 {
    match set_in(vars, &left_var(slot)) {
        None => UBootEnv::DEFAULT_MAX_TRIES,
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|v| parse_hex(v.trim()))
            .map_or(0, |n| n.min(u32::MAX as u64) as u32),
    }
}

impl super::EnvSelector for UBootEnv {
    fn apply_change(&mut self, change: BootChange) -> Result<()> {
        self.apply(change)
    }

    fn booted_from(&self) -> &BootedFrom {
        &self.booted_from
    }

    /// RAUC's boot script starts the first slot of `BOOT_ORDER` with tries left.
    fn boot_plan(&self) -> Result<super::BootPlan> {
        let vars = self.load()?.vars;
        let order: Vec<Slot> = slots_in(set_in(&vars, "BOOT_ORDER").unwrap_or(b"A B")).collect();
        let preferred = order.first().copied().unwrap_or(Slot::A);
        // An order naming neither slot boots nothing: A stands in as preferred, with no starts left.
        let preferred_left = if order.is_empty() {
            0
        } else {
            left_in(&vars, preferred)
        };
        Ok(super::BootPlan {
            preferred,
            next: order.into_iter().find(|s| left_in(&vars, *s) > 0),
            preferred_spent: left_in(&vars, preferred) == 0,
            preferred_left,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_rule_matches_libubootenv() {
        assert_eq!(newer_copy(1, 2), 1);
        assert_eq!(newer_copy(2, 1), 0);
        assert_eq!(newer_copy(255, 0), 1);
        assert_eq!(newer_copy(0, 255), 0);
        assert_eq!(newer_copy(7, 7), 0);
    }

    #[test]
    fn config_errors_are_bootloader() {
        for text in [
            "",
            "/dev/x 0\n",
            "/dev/x zz 0x4000\n",
            "/dev/x 0 0\n",
            "a 0 10\nb 0 20\n",
            "/dev/mtd1 0 0x4000\n",
            "/dev/ubi0_1 0 0x4000\n",
            "a -+5 10\n",
            "a +-5 10\n",
            "a 0x+5 10\n",
            "a 0+5 10\n",
            "a 0 ++10\n",
            "a 0 0x+10\n",
            "a 0 10 +-1\n",
            // 6 bytes is the smallest copy: 5 would hold a redundant header and no data.
            "a 0 5\n",
        ] {
            let err = FwEnvConfig::parse(text, "cfg".as_ref()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Bootloader, "{text:?}");
        }
        let cfg = FwEnvConfig::parse("d 010 20 1000 2\n", "cfg".as_ref()).unwrap();
        assert_eq!((cfg.copies[0].offset, cfg.copies[0].size), (8, 0x20));
        // Decimal without a leading 0, the smallest size taken.
        let cfg = FwEnvConfig::parse("d 16 6\n", "cfg".as_ref()).unwrap();
        assert_eq!((cfg.copies[0].offset, cfg.copies[0].size), (16, 6));
        // One sign, as strtoll and strtoul take it.
        let cfg = FwEnvConfig::parse("d -010 +0x20 +1\nd +0x10 +20\n", "cfg".as_ref()).unwrap();
        let copies: Vec<(i64, usize)> = cfg.copies.iter().map(|c| (c.offset, c.size)).collect();
        assert_eq!(copies, [(-8, 0x20), (0x10, 0x20)]);
    }

    /// What the fuzz target parses: offsets at the end of the range, twice on one device
    /// (overlaps are found when the copies are read).
    #[test]
    fn extreme_offsets_parse_without_overflow() {
        for text in [
            "a 0x7fffffffffffffff 10\na 0x7fffffffffffffff 10\n",
            "a -0x7fffffffffffffff 10\na 0x7fffffffffffffff 10\n",
        ] {
            FwEnvConfig::parse(text, "cfg".as_ref()).unwrap();
        }
    }

    /// `/dev/mtdblockN` is a block device, not raw flash.
    #[test]
    fn mtdblock_is_a_block_device() {
        let cfg = FwEnvConfig::parse("/dev/mtdblock3 0 0x4000\n", "cfg".as_ref()).unwrap();
        assert_eq!(cfg.copies[0].device, Path::new("/dev/mtdblock3"));
    }

    /// Lines libubootenv reads: a comment after the fields, columns after the fifth, a
    /// third environment line (ignored), a negative offset (from the end of the device).
    #[test]
    fn config_lines_libubootenv_accepts_are_accepted() {
        let text = "/dev/mmcblk0 0x3f8000 0x4000 # primary\n\
                    /dev/mmcblk0 -0x4000 0x4000 0x200 0x20 1 extra\n\
                    /dev/mmcblk0 0 0x4000\n";
        let cfg = FwEnvConfig::parse(text, "cfg".as_ref()).unwrap();
        let copies: Vec<(i64, usize)> = cfg.copies.iter().map(|c| (c.offset, c.size)).collect();
        assert_eq!(copies, [(0x3f8000, 0x4000), (-0x4000, 0x4000)]);
    }

    #[test]
    fn config_errors_say_what_was_expected_and_where() {
        let msg = |text: &str| {
            FwEnvConfig::parse(text, "cfg".as_ref())
                .unwrap_err()
                .message()
                .to_string()
        };
        let m = msg("# nothing\n");
        assert!(
            !m.contains("line 0") && m.contains("expected one or two"),
            "{m}"
        );
        let m = msg("a 0 10\n# c\nb 0 20\n");
        assert!(
            m.contains("expected two copies of one size, found 0x10 and 0x20"),
            "{m}"
        );
        let m = msg("a 0 0x1000001\n");
        assert!(
            m.contains("line 1") && m.contains("to 0x1000000 (16 MiB)"),
            "{m}"
        );
        let m = msg("/dev/mtd0 0 0x4000\n");
        assert!(m.contains("line 1") && m.contains("/dev/mtd0"), "{m}");
    }

    #[test]
    fn duplicates_read_and_write_the_last() {
        let mut vars: Vec<RawVar> = parse_data(b"x=1\0y=a\0x=2\0\0").unwrap();
        assert_eq!(last_raw(&vars, "x"), Some(&b"2"[..]));
        set_raw(&mut vars, "x", Some("3"));
        assert_eq!(
            decoded(&vars),
            [("y".into(), "a".into()), ("x".into(), "3".into())]
        );
        set_raw(&mut vars, "y", None);
        set_raw(&mut vars, "z", Some(""));
        assert_eq!(
            decoded(&vars),
            [("x".into(), "3".into()), ("z".into(), "".into())]
        );
    }

    #[test]
    fn a_full_data_area_ends_the_list() {
        let vars = parse_data(b"a=1\0bb=22\0").unwrap();
        assert_eq!(
            decoded(&vars),
            [("a".into(), "1".into()), ("bb".into(), "22".into())]
        );
        assert!(parse_data(b"a=1\0bb=22").is_err());
        let copy = EnvCopy {
            device: "d".into(),
            offset: 0,
            size: 4 + 10,
        };
        // It is never written: the empty entry that ends the list must fit.
        let err = build_copy(&copy, &vars, false, 0).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Bootloader);
        assert!(
            err.message().contains("need 15 bytes, the copy has 14"),
            "{err}"
        );
        let copy = EnvCopy { size: 15, ..copy };
        let bytes = build_copy(&copy, &vars, false, 0).unwrap();
        assert_eq!(&bytes[4..], b"a=1\0bb=22\0\0");
        let (stored, computed) = crcs(&bytes, false);
        assert_eq!(stored, computed);
    }

    /// A sysfs holding `block/<name>/force_ro` with `value`, as the kernel lays it out.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn fake_sysfs(name: &str, value: &str) -> (tempfile::TempDir, PathBuf) {
        let sysfs = tempfile::tempdir().unwrap();
        let dir = sysfs.path().join("block").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("force_ro"), value).unwrap();
        let force_ro = dir.join("force_ro");
        (sysfs, force_ro)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn read_force_ro(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap().trim().to_string()
    }

    /// No eMMC here: a plain file stands in for `/dev/mmcblk0boot0` and a temporary
    /// directory for sysfs. The lock is off while the copy is written, and on again after,
    /// also when the write fails.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_locked_emmc_boot_partition_is_unlocked_for_the_write_and_locked_again() {
        let (sysfs, force_ro) = fake_sysfs("mmcblk0boot0", "1\n");
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("mmcblk0boot0");
        std::fs::write(&device, [0xffu8; 64]).unwrap();
        let write = EnvWrite {
            path: device.clone(),
            offset: 16,
            data: b"env".to_vec(),
        };
        let mut seen = None;
        with_boot_partition_unlocked(sysfs.path(), "mmcblk0boot0", &device, || {
            seen = Some(read_force_ro(&force_ro));
            write.apply()
        })
        .unwrap();
        assert_eq!(seen.as_deref(), Some("0"), "locked during the write");
        assert_eq!(read_force_ro(&force_ro), "1", "not locked again");
        assert_eq!(&std::fs::read(&device).unwrap()[16..19], b"env");

        // A write that fails leaves the lock on, and its own error is the one reported.
        let failing = EnvWrite {
            path: dir.path().join("missing/mmcblk0boot0"),
            ..write
        };
        let mut seen = None;
        let err = with_boot_partition_unlocked(sysfs.path(), "mmcblk0boot0", &device, || {
            seen = Some(read_force_ro(&force_ro));
            failing.apply()
        })
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(err.message().contains("missing/mmcblk0boot0"), "{err}");
        assert_eq!(seen.as_deref(), Some("0"), "locked during the write");
        assert_eq!(
            read_force_ro(&force_ro),
            "1",
            "not locked again after a failure"
        );
    }

    /// A lock the operator turned off stays off, and a partition with no sysfs entry is
    /// written as it is: the lock is only turned back on when it was on.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn an_unlocked_or_unknown_boot_partition_is_written_as_it_is() {
        let (sysfs, force_ro) = fake_sysfs("mmcblk1boot1", "0\n");
        let device = Path::new("/dev/mmcblk1boot1");
        let mut ran = 0;
        with_boot_partition_unlocked(sysfs.path(), "mmcblk1boot1", device, || {
            ran += 1;
            Ok(())
        })
        .unwrap();
        with_boot_partition_unlocked(sysfs.path(), "mmcblk2boot0", device, || {
            ran += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(ran, 2);
        assert_eq!(std::fs::read_to_string(&force_ro).unwrap(), "0\n");
        assert!(!sysfs.path().join("block/mmcblk2boot0").exists());
    }

    /// A lock that cannot be turned off is an error naming the file, and nothing is
    /// written. Root may write any file, but not a sealed memfd: `force_ro` is a link to
    /// one that reads 1.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_lock_that_cannot_be_turned_off_is_an_error_and_nothing_is_written() {
        use std::io::Write;
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: memfd_create takes a NUL-terminated name and flags; the descriptor it
        // returns is owned by the `File` alone.
        let mut sealed = unsafe {
            let fd = libc::memfd_create(c"force_ro".as_ptr(), libc::MFD_ALLOW_SEALING);
            assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
            File::from_raw_fd(fd)
        };
        sealed.write_all(b"1\n").unwrap();
        let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        // SAFETY: fcntl on a descriptor this test owns.
        assert_eq!(
            unsafe { libc::fcntl(sealed.as_raw_fd(), libc::F_ADD_SEALS, seals) },
            0
        );
        let sysfs = tempfile::tempdir().unwrap();
        let dir = sysfs.path().join("block/mmcblk0boot1");
        std::fs::create_dir_all(&dir).unwrap();
        let force_ro = dir.join("force_ro");
        let fd_path = format!("/proc/self/fd/{}", sealed.as_raw_fd());
        std::os::unix::fs::symlink(fd_path, &force_ro).unwrap();
        assert_eq!(read_force_ro(&force_ro), "1");

        let device = Path::new("/dev/disk/by-partlabel/uboot-env");
        let mut ran = false;
        let err = with_boot_partition_unlocked(sysfs.path(), "mmcblk0boot1", device, || {
            ran = true;
            Ok(())
        })
        .unwrap_err();
        assert!(!ran, "written while locked");
        assert_eq!(err.kind(), ErrorKind::Io);
        let m = err.message();
        assert!(
            m.contains("/dev/disk/by-partlabel/uboot-env")
                && m.contains("expected to unlock eMMC boot partition mmcblk0boot1")
                && m.contains(&force_ro.display().to_string())
                && m.contains("found "),
            "{m}"
        );
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn emmc_boot_partitions_are_known_by_name() {
        for name in ["mmcblk0boot0", "mmcblk0boot1", "mmcblk12boot1"] {
            assert!(is_emmc_boot_name(name), "{name}");
        }
        for name in [
            "mmcblk0",
            "mmcblk0p1",
            "mmcblk0rpmb",
            "mmcblkboot0",
            "mmcblk0boot",
            "mmcblk0boot0p1",
            "mmcblk0boot1x",
            "sda",
            "loop0",
        ] {
            assert!(!is_emmc_boot_name(name), "{name}");
        }
    }

    /// The name is the device node's, through a `/dev/disk/by-…` style link; a plain file
    /// or a character device of that name is not a boot partition. Making the block
    /// device node takes root (`mknod`); it is never opened.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_boot_partition_is_found_through_links_and_only_as_a_block_device() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain/mmcblk0boot0");
        std::fs::create_dir_all(plain.parent().unwrap()).unwrap();
        std::fs::write(&plain, b"").unwrap();
        assert_eq!(emmc_boot_partition(&plain), None);
        assert_eq!(emmc_boot_partition(Path::new("/dev/null")), None);
        assert_eq!(emmc_boot_partition(&dir.path().join("missing")), None);

        let node = dir.path().join("mmcblk0boot1");
        let c_node = std::ffi::CString::new(node.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mknod with a NUL-terminated path; the node is never opened.
        let made = unsafe {
            libc::mknod(
                c_node.as_ptr(),
                libc::S_IFBLK | 0o600,
                libc::makedev(179, 8),
            )
        };
        if made != 0 {
            eprintln!(
                "skipped: a block device node needs root ({})",
                std::io::Error::last_os_error()
            );
            return;
        }
        let link = dir.path().join("by-partlabel/uboot-env");
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("../mmcblk0boot1", &link).unwrap();
        assert_eq!(emmc_boot_partition(&node).as_deref(), Some("mmcblk0boot1"));
        assert_eq!(emmc_boot_partition(&link).as_deref(), Some("mmcblk0boot1"));
    }

    /// `fw_setenv`'s lock held by a program that does not let go (a hung `fw_setenv`)
    /// made every write wait forever, and `evergreen boot` with it, on every boot. Past
    /// the patience the write is a `bootloader` error naming the lock and the wait, and
    /// nothing is written; a lock let go within it only delays the write.
    #[test]
    fn a_tools_lock_held_too_long_fails_the_write_and_one_let_go_delays_it() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("env");
        std::fs::write(&device, vec![0u8; 0x2000]).unwrap();
        let d = device.display();
        let text = format!("{d} 0 0x1000\n{d} 0x1000 0x1000\n");
        let config = FwEnvConfig::parse(&text, "cfg".as_ref()).unwrap();
        let lock = dir.path().join("fw_printenv.lock");
        let patience = Duration::from_secs(1);
        let mut env = UBootEnv::new(config).with_tools_lock(&lock, patience);
        env.init().unwrap();
        let before = std::fs::read(&device).unwrap();
        let held = crate::fsutil::lock_exclusive(&lock).unwrap();
        let activate = BootChange::Activate {
            slot: Slot::B,
            tries: 1,
        };
        let start = std::time::Instant::now();
        let err = env.apply(activate).unwrap_err();
        assert!(start.elapsed() >= patience, "{:?}", start.elapsed());
        assert_eq!(err.kind(), ErrorKind::Bootloader);
        assert_eq!(
            err.message(),
            format!(
                "U-Boot environment: expected to take the lock {} within 1 s, found another \
                 program (a hung fw_setenv?) holding it all that time; nothing written",
                lock.display()
            )
        );
        let err = env.set_vars(&[("x", Some("1"))]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Bootloader);
        assert_eq!(std::fs::read(&device).unwrap(), before);

        let mut env = env.with_tools_lock(&lock, Duration::from_secs(20));
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        env.apply(activate).unwrap();
        release.join().unwrap();
        assert_eq!(env.get("BOOT_ORDER").unwrap().as_deref(), Some("B A"));
        assert_eq!(env.tries_left(Slot::B).unwrap(), 1);
    }

    #[test]
    fn order_without_keeps_the_other_slot_and_other_words() {
        assert_eq!(order_without(Some("A B"), Slot::B), "A");
        assert_eq!(order_without(Some("B A"), Slot::B), "A");
        assert_eq!(order_without(None, Slot::A), "B");
        assert_eq!(order_without(Some(""), Slot::A), "B");
        assert_eq!(order_without(Some("  "), Slot::A), "B");
        assert_eq!(order_without(Some("B"), Slot::B), "A");
        assert_eq!(order_without(Some("A R B"), Slot::B), "A R");
        assert_eq!(order_without(Some("R B"), Slot::B), "A R");
    }

    /// A single-copy environment in `dir` holding `vars`.
    fn env_with(dir: &Path, vars: &[(&str, &str)]) -> UBootEnv {
        let device = dir.join("env");
        std::fs::write(&device, vec![0u8; 0x1000]).unwrap();
        let text = format!("{} 0 0x1000\n", device.display());
        let config = FwEnvConfig::parse(&text, "cfg".as_ref()).unwrap();
        let lock = dir.join("fw_printenv.lock");
        let mut env = UBootEnv::new(config).with_tools_lock(&lock, Duration::from_secs(1));
        env.init().unwrap();
        let vars: Vec<(&str, Option<&str>)> = vars.iter().map(|(k, v)| (*k, Some(*v))).collect();
        env.set_vars(&vars).unwrap();
        env
    }

    /// A fall back leaves the bad slot out when it was out, in when it was in: a repair
    /// run again after a rollback writes nothing.
    #[test]
    fn fall_back_keeps_the_bad_slot_out_of_the_order_when_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = env_with(
            dir.path(),
            &[
                ("BOOT_ORDER", "A"),
                ("BOOT_A_LEFT", "3"),
                ("BOOT_B_LEFT", "0"),
            ],
        );
        let fall_back = BootChange::FallBack {
            good: Slot::A,
            bad: Slot::B,
        };
        assert_eq!(env.plan(fall_back).unwrap(), Vec::new());
        env.apply(BootChange::Activate {
            slot: Slot::B,
            tries: 3,
        })
        .unwrap();
        env.apply(fall_back).unwrap();
        assert_eq!(env.get("BOOT_ORDER").unwrap().as_deref(), Some("A B"));
        assert_eq!(env.tries_left(Slot::B).unwrap(), 0);
        // An order naming neither slot (mistyped by hand) keeps the bad slot reachable.
        env.set_vars(&[("BOOT_ORDER", Some("b a"))]).unwrap();
        env.apply(fall_back).unwrap();
        assert_eq!(env.get("BOOT_ORDER").unwrap().as_deref(), Some("A b a B"));
    }

    /// What RAUC's boot script does next, as the startup step reads it to tell a trial
    /// the bootloader gave up on (the preferred slot spent, another one next) from one
    /// it has not reached yet.
    #[test]
    fn boot_plan_is_the_first_slot_of_the_order_with_tries_left() {
        use crate::slots::{BootPlan, BootSelector};
        let dir = tempfile::tempdir().unwrap();
        // (BOOT_ORDER, BOOT_A_LEFT, BOOT_B_LEFT) -> (preferred, next, spent, left)
        for (order, a, b, plan) in [
            ("B A", "3", "0", (Slot::B, Some(Slot::A), true, 0)),
            ("B A", "3", "2", (Slot::B, Some(Slot::B), false, 2)),
            ("B A", "0", "0", (Slot::B, None, true, 0)),
            ("A B", "1", "0", (Slot::A, Some(Slot::A), false, 1)),
            ("A B", "0", "a", (Slot::A, Some(Slot::B), true, 0)),
        ] {
            let env = env_with(
                dir.path(),
                &[
                    ("BOOT_ORDER", order),
                    ("BOOT_A_LEFT", a),
                    ("BOOT_B_LEFT", b),
                ],
            );
            let expected = BootPlan::of(plan);
            assert_eq!(
                env.boot_plan().unwrap(),
                Some(expected),
                "BOOT_ORDER={order:?} BOOT_A_LEFT={a} BOOT_B_LEFT={b}"
            );
        }
    }

    #[test]
    fn order_first_keeps_a_fallback() {
        assert_eq!(order_first(Some("A B"), Slot::B), "B A");
        assert_eq!(order_first(None, Slot::A), "A B");
        assert_eq!(order_first(Some("B"), Slot::A), "A B");
    }

    /// A missing `fw_env.config` (a board image without it) is named as what it is, not
    /// as some file read.
    #[test]
    fn a_missing_env_config_is_named_as_the_u_boot_env_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fw_env.config");
        let err = FwEnvConfig::load(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.to_string().starts_with(&format!(
                "reading the U-Boot env config {}: ",
                path.display()
            )),
            "{err}"
        );
    }
}
