//! The U-Boot environment as a boot selector, with RAUC's variables.
//!
//! An environment copy is `size` bytes: a CRC32 (IEEE, little-endian as on the boards that
//! use it) over the whole data area, then — for a redundant pair only — one flag byte,
//! then `name=value\0` entries ended by an empty one, padded with `0x00`. U-Boot's own
//! `env export` pads with `0x00`; `fw_setenv` from libubootenv 0.3.2 leaves the padding
//! as whatever was in its buffer (we measured it), so readers must only trust the CRC.
//!
//! Where the copies are comes from a `fw_env.config` file as libubootenv reads it:
//! `device offset size [sector_size [sectors]]` per line, `#` comments, one line for a
//! single copy, two for a redundant pair. `offset` is a C integer (`0x…`, `0…` octal or
//! decimal), `size` and the sector fields are hexadecimal with or without `0x`.
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
//! # Variables
//!
//! RAUC's: `BOOT_ORDER` (`"A B"`), `BOOT_A_LEFT`/`BOOT_B_LEFT` — tries left, which the boot
//! script decrements with `setexpr` (so they are read and written in hexadecimal, which is
//! the same as decimal up to 9). Activate puts the slot first with `tries` left; confirm
//! gives it the configured maximum back (3 by default); a bad slot gets 0.

use super::cmdline::BootedFrom;
use super::grub::{apply_all, BootChange, EnvWrite};
use super::Slot;
use crate::error::{Error, ErrorKind, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// One copy of the environment: where it lives and how big it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvCopy {
    /// The device or plain file holding it.
    pub device: PathBuf,
    /// Byte offset of the copy in `device`.
    pub offset: u64,
    /// Size of the copy in bytes (CRC, flag and data area together).
    pub size: usize,
}

/// A parsed `fw_env.config`: one copy, or two for a redundant environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwEnvConfig {
    /// The copies, in the file's order (copy 0, copy 1).
    pub copies: Vec<EnvCopy>,
}

fn config_error(origin: &Path, line: usize, msg: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Bootloader,
        format!("U-Boot env config {} line {line}: {msg}", origin.display()),
    )
}

/// `strtoll(s, NULL, 0)`: hexadecimal with `0x`, octal with a leading `0`, else decimal.
fn parse_c_int(s: &str) -> Option<u64> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

/// `%zx`: hexadecimal, `0x` optional.
fn parse_hex(s: &str) -> Option<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(digits, 16).ok()
}

impl FwEnvConfig {
    /// Reads and parses a `fw_env.config` file.
    pub fn load(path: &Path) -> Result<FwEnvConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
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
        for (n, line) in text.lines().enumerate() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.is_empty() || fields[0].starts_with('#') {
                continue;
            }
            copies.push(parse_config_line(&fields, origin, n + 1)?);
        }
        match copies.as_slice() {
            [_] => Ok(FwEnvConfig { copies }),
            [a, b] if a.size == b.size => Ok(FwEnvConfig { copies }),
            [a, b] => Err(config_error(
                origin,
                0,
                format!(
                    "expected two copies of one size, found {:#x} and {:#x}",
                    a.size, b.size
                ),
            )),
            _ => Err(config_error(
                origin,
                0,
                format!(
                    "expected one or two environment lines, found {}",
                    copies.len()
                ),
            )),
        }
    }

    /// True for a redundant pair.
    pub fn redundant(&self) -> bool {
        self.copies.len() == 2
    }
}

fn parse_config_line(fields: &[&str], origin: &Path, line: usize) -> Result<EnvCopy> {
    if fields.len() < 3 {
        return Err(config_error(
            origin,
            line,
            format!(
                "expected `device offset size`, found {:?}",
                fields.join(" ")
            ),
        ));
    }
    let offset = parse_c_int(fields[1]).ok_or_else(|| {
        config_error(
            origin,
            line,
            format!("expected an offset, found {:?}", fields[1]),
        )
    })?;
    let size = parse_hex(fields[2])
        .filter(|&s| s > 5 && s <= 1 << 24)
        .ok_or_else(|| {
            config_error(
                origin,
                line,
                format!(
                    "expected a hexadecimal size above 5 bytes, found {:?}",
                    fields[2]
                ),
            )
        })?;
    if let Some(bad) = fields[3..].iter().find(|f| parse_hex(f).is_none()) {
        return Err(config_error(
            origin,
            line,
            format!("expected a hexadecimal sector field, found {bad:?}"),
        ));
    }
    Ok(EnvCopy {
        device: PathBuf::from(fields[0]),
        offset,
        size: size as usize,
    })
}

/// The environment that reading found: its variables, the copy and that copy's flag.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Loaded {
    vars: Vec<(String, String)>,
    current: usize,
    flag: u8,
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

/// Parses the data area: `k=v\0` entries up to an empty one; entries without `=` are
/// skipped as libubootenv does.
fn parse_data(data: &[u8]) -> std::result::Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    let mut p = 0;
    loop {
        let Some(len) = data[p..].iter().position(|&c| c == 0) else {
            return Err("expected entries ended by an empty one, found no end".into());
        };
        if len == 0 {
            return Ok(vars);
        }
        let entry = String::from_utf8_lossy(&data[p..p + len]);
        if let Some((k, v)) = entry.split_once('=') {
            vars.push((k.to_string(), v.to_string()));
        }
        p += len + 1;
        if p >= data.len() {
            return Err("expected entries ended by an empty one, found no end".into());
        }
    }
}

/// Checks and parses one copy: `Ok((flag, vars))` or why it is invalid.
fn parse_copy(
    bytes: &[u8],
    redundant: bool,
) -> std::result::Result<(u8, Vec<(String, String)>), String> {
    let start = data_offset(redundant);
    let stored = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let computed = crc32fast::hash(&bytes[start..]);
    if stored != computed {
        return Err(format!(
            "bad CRC: expected {computed:08x} (computed), found {stored:08x} (stored)"
        ));
    }
    let flag = if redundant { bytes[4] } else { 0 };
    Ok((flag, parse_data(&bytes[start..])?))
}

/// The bytes of one copy holding `vars` with `flag`.
fn build_copy(
    copy: &EnvCopy,
    vars: &[(String, String)],
    redundant: bool,
    flag: u8,
) -> Result<Vec<u8>> {
    let start = data_offset(redundant);
    let mut image = vec![0u8; start];
    for (k, v) in vars {
        image.extend_from_slice(k.as_bytes());
        image.push(b'=');
        image.extend_from_slice(v.as_bytes());
        image.push(0);
    }
    image.push(0);
    if image.len() > copy.size {
        return Err(Error::new(
            ErrorKind::Bootloader,
            format!(
                "U-Boot environment {}: the variables need {} bytes, the copy has {}",
                copy.device.display(),
                image.len(),
                copy.size
            ),
        ));
    }
    image.resize(copy.size, 0);
    let crc = crc32fast::hash(&image[start..]);
    image[..4].copy_from_slice(&crc.to_le_bytes());
    if redundant {
        image[4] = flag;
    }
    Ok(image)
}

fn set_var(vars: &mut Vec<(String, String)>, name: &str, value: Option<&str>) {
    let pos = vars.iter().position(|(n, _)| n == name);
    match (pos, value) {
        (Some(i), Some(v)) => vars[i].1 = v.to_string(),
        (Some(i), None) => {
            vars.remove(i);
        }
        (None, Some(v)) => vars.push((name.to_string(), v.to_string())),
        (None, None) => {}
    }
}

/// `slot` first, then the rest of `order` as it was; the other slot is kept as fallback.
fn order_first(order: Option<&str>, slot: Slot) -> String {
    let mut words: Vec<&str> = order
        .unwrap_or("")
        .split_whitespace()
        .filter(|w| Slot::parse(w) != Some(slot))
        .collect();
    if !words.iter().any(|w| Slot::parse(w) == Some(slot.other())) {
        words.push(slot.other().upper());
    }
    words.insert(0, slot.upper());
    words.join(" ")
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
        }
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

    fn read_copy(&self, copy: &EnvCopy) -> Result<Vec<u8>> {
        let path = &copy.device;
        let mut file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let mut bytes = vec![0u8; copy.size];
        file.seek(SeekFrom::Start(copy.offset))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| Error::io("reading", path, e))?;
        Ok(bytes)
    }

    fn load(&self) -> Result<Loaded> {
        let redundant = self.config.redundant();
        let mut parsed = Vec::new();
        for copy in &self.config.copies {
            parsed.push(parse_copy(&self.read_copy(copy)?, redundant));
        }
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
            });
        }
        let reasons: Vec<String> = parsed
            .into_iter()
            .map(|p| p.err().unwrap_or_default())
            .collect();
        Err(self.no_valid_copy(&reasons))
    }

    fn no_valid_copy(&self, reasons: &[String]) -> Error {
        let what: Vec<String> = self
            .config
            .copies
            .iter()
            .zip(reasons)
            .map(|(c, r)| format!("{} at {:#x}: {r}", c.device.display(), c.offset))
            .collect();
        Error::new(
            ErrorKind::Bootloader,
            format!(
                "U-Boot environment: expected a valid copy, found none ({})",
                what.join("; ")
            ),
        )
    }

    /// Every variable of the current copy, in stored order.
    pub fn vars(&self) -> Result<Vec<(String, String)>> {
        Ok(self.load()?.vars)
    }

    /// One variable's value.
    pub fn get(&self, name: &str) -> Result<Option<String>> {
        Ok(value_of(&self.vars()?, name).map(str::to_string))
    }

    /// Sets (`Some`) or deletes (`None`) variables, like `fw_setenv`, with one write to the
    /// inactive copy (or the only one).
    pub fn set_vars(&mut self, updates: &[(&str, Option<&str>)]) -> Result<()> {
        let loaded = self.load()?;
        let mut vars = loaded.vars.clone();
        for (name, value) in updates {
            set_var(&mut vars, name, *value);
        }
        apply_all(&self.plan_vars(&loaded, vars)?)
    }

    /// Writes a fresh environment (`BOOT_ORDER=A B`, A with the maximum tries, B with
    /// none) when no copy is valid, e.g. on a blank device; otherwise does nothing.
    pub fn init(&mut self) -> Result<()> {
        if self.load().is_ok() {
            return Ok(());
        }
        let vars = vec![
            ("BOOT_ORDER".to_string(), "A B".to_string()),
            (left_var(Slot::A), format!("{:x}", self.max_tries)),
            (left_var(Slot::B), "0".to_string()),
        ];
        let copy = &self.config.copies[0];
        let data = build_copy(copy, &vars, self.config.redundant(), 0)?;
        EnvWrite {
            path: copy.device.clone(),
            offset: copy.offset,
            data,
        }
        .apply()
    }

    /// The writes that `change` takes, without making them: none when nothing changes,
    /// else one whole copy (the inactive one of a redundant pair).
    pub fn plan(&self, change: BootChange) -> Result<Vec<EnvWrite>> {
        let loaded = self.load()?;
        let mut vars = loaded.vars.clone();
        let order = value_of(&loaded.vars, "BOOT_ORDER");
        let max = format!("{:x}", self.max_tries);
        match change {
            BootChange::Disable(slot) => set_var(&mut vars, &left_var(slot), Some("0")),
            BootChange::Activate { slot, tries } => {
                if tries == 0 {
                    return Err(Error::config(
                        "activate: expected at least 1 trial boot, found tries = 0",
                    ));
                }
                set_var(&mut vars, "BOOT_ORDER", Some(&order_first(order, slot)));
                set_var(&mut vars, &left_var(slot), Some(&format!("{tries:x}")));
            }
            BootChange::Confirm(slot) => set_var(&mut vars, &left_var(slot), Some(&max)),
            BootChange::FallBack { good, bad } => {
                set_var(&mut vars, "BOOT_ORDER", Some(&order_first(order, good)));
                set_var(&mut vars, &left_var(bad), Some("0"));
                set_var(&mut vars, &left_var(good), Some(&max));
            }
        }
        self.plan_vars(&loaded, vars)
    }

    fn plan_vars(&self, loaded: &Loaded, vars: Vec<(String, String)>) -> Result<Vec<EnvWrite>> {
        if vars == loaded.vars {
            return Ok(Vec::new());
        }
        let redundant = self.config.redundant();
        let target = if redundant { 1 - loaded.current } else { 0 };
        let copy = &self.config.copies[target];
        let data = build_copy(copy, &vars, redundant, loaded.flag.wrapping_add(1))?;
        Ok(vec![EnvWrite {
            path: copy.device.clone(),
            offset: copy.offset,
            data,
        }])
    }

    /// Makes `change` (see [`UBootEnv::plan`]).
    pub fn apply(&mut self, change: BootChange) -> Result<()> {
        apply_all(&self.plan(change)?)
    }

    /// Tries left for `slot` (`BOOT_X_LEFT`, hexadecimal as `setexpr` writes it); a
    /// missing variable counts as what RAUC's boot script defaults it to (3).
    pub fn tries_left(&self, slot: Slot) -> Result<u32> {
        Ok(left_in(&self.vars()?, slot))
    }
}

fn value_of<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
    vars.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `BOOT_X_LEFT` as RAUC's boot script reads it: hexadecimal, 3 when missing.
fn left_in(vars: &[(String, String)], slot: Slot) -> u32 {
    match value_of(vars, &left_var(slot)) {
        None => UBootEnv::DEFAULT_MAX_TRIES,
        Some(v) => parse_hex(v.trim()).map_or(0, |n| n.min(u32::MAX as u64) as u32),
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
        let vars = self.vars()?;
        let order: Vec<Slot> = value_of(&vars, "BOOT_ORDER")
            .unwrap_or("A B")
            .split_whitespace()
            .filter_map(Slot::parse)
            .collect();
        let preferred = order.first().copied().unwrap_or(Slot::A);
        // An empty order boots nothing: A stands in as preferred, with no starts left.
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
            "a 0 10\nb 0 10\nc 0 10\n",
        ] {
            let err = FwEnvConfig::parse(text, "cfg".as_ref()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Bootloader, "{text:?}");
        }
        let cfg = FwEnvConfig::parse("d 010 20 1000 2\n", "cfg".as_ref()).unwrap();
        assert_eq!((cfg.copies[0].offset, cfg.copies[0].size), (8, 0x20));
    }

    #[test]
    fn order_first_keeps_a_fallback() {
        assert_eq!(order_first(Some("A B"), Slot::B), "B A");
        assert_eq!(order_first(None, Slot::A), "A B");
        assert_eq!(order_first(Some("B"), Slot::A), "A B");
    }
}
