//! The GRUB environment block as a boot selector, with RAUC's variables.
//!
//! The block is a file of fixed size (1024 bytes by default) that starts with
//! `# GRUB Environment Block\n`, holds `name=value\n` lines (a `\` in a value escapes a `\`
//! or a newline, as `grub-editenv` writes them) and is padded with `#` to its exact size.
//! GRUB's `save_env` overwrites the file's sectors in place, so the file must never be
//! truncated, moved or resized; we write it in place too.
//!
//! The variables are RAUC's, so RAUC's documented `grub.cfg` works unchanged:
//! `ORDER` (`"A B"`), `A_OK`/`A_TRY` and `B_OK`/`B_TRY`. A slot is bootable when
//! `X_OK=1` and `X_TRY=0`; `grub.cfg` sets `X_TRY=1` when it boots `X`, so an unconfirmed
//! slot is skipped on the next boot. **GRUB therefore gives exactly one trial attempt**,
//! whatever `tries` [`BootSelector::activate`](super::BootSelector::activate) is given.
//!
//! # Power-fail safety
//!
//! Our five variables live right after the header in a canonical fixed-width layout
//! (`ORDER=A B\nA_OK=1\nA_TRY=0\nB_OK=0\nB_TRY=0\n`, then every other variable untouched).
//! A change then differs from the old block in at most six bytes, all in the first sector.
//! They are written one byte at a time, each followed by an fsync, in an order chosen so
//! that after every single byte the block still parses and boots either the slot the old
//! block would boot or the slot the new one will. A torn write therefore can't leave
//! garbage or a block without a bootable slot, even on storage that doesn't write
//! sectors atomically. A torn change leaves the layout in place (`ORDER` may name one slot
//! twice), so the next change starts from the bytes on disk and is byte-wise too.
//!
//! A block that is not yet in that layout (a fresh `grub-editenv create`, or values edited
//! by hand) has to be rewritten once as a whole; that single rewrite is the only one that
//! is not power-fail safe. [`GrubEnv::init`] does it at provisioning time.

use super::cmdline::BootedFrom;
use super::Slot;
use crate::error::{Error, ErrorKind, Result};
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The first bytes of every GRUB environment block.
pub const HEADER: &str = "# GRUB Environment Block\n";

/// The size of a new block, the size GRUB and `grub-editenv create` use.
pub const DEFAULT_SIZE: usize = 1024;

/// A larger file can't be an environment block; refusing it avoids reading a disk image
/// into memory by mistake.
const MAX_SIZE: u64 = 1 << 20;

/// One in-place write a selector makes to an environment file: `data` at `offset`,
/// followed by an fsync. The file is never truncated.
///
/// Selectors expose the writes they are about to make ([`GrubEnv::plan`],
/// [`super::uboot::UBootEnv::plan`]) so that power-fail tests can apply any prefix of
/// them to a copy of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvWrite {
    /// The file (or block device) written.
    pub path: PathBuf,
    /// The byte offset of the first byte written.
    pub offset: u64,
    /// The bytes written.
    pub data: Vec<u8>,
}

impl EnvWrite {
    /// Writes `data` at `offset` without truncating the file, then fsyncs it.
    pub fn apply(&self) -> Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| Error::io("opening for writing", &self.path, e))?;
        file.seek(SeekFrom::Start(self.offset))
            .and_then(|_| file.write_all(&self.data))
            .map_err(|e| Error::io("writing", &self.path, e))?;
        crate::fsutil::sync_file(&file).map_err(|e| Error::io("syncing", &self.path, e))
    }
}

/// Applies `writes` in order, each one fsynced before the next starts.
pub fn apply_all(writes: &[EnvWrite]) -> Result<()> {
    writes.iter().try_for_each(EnvWrite::apply)
}

/// A change a bootloader selector makes, one per [`BootSelector`](super::BootSelector) method that writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootChange {
    /// [`BootSelector::disable`](super::BootSelector::disable).
    Disable(Slot),
    /// [`BootSelector::activate`](super::BootSelector::activate).
    Activate {
        /// The slot to boot next, on trial.
        slot: Slot,
        /// Trial attempts (GRUB always gives one).
        tries: u32,
    },
    /// [`BootSelector::confirm`](super::BootSelector::confirm).
    Confirm(Slot),
    /// [`BootSelector::fall_back`](super::BootSelector::fall_back).
    FallBack {
        /// The slot to boot from now on.
        good: Slot,
        /// The slot never to boot again.
        bad: Slot,
    },
}

impl BootChange {
    /// The change in words, for messages: what is done, to which slot, and how.
    fn describe(self) -> (&'static str, Slot, &'static str) {
        match self {
            BootChange::Disable(s) => ("taking", s, " out of the boot order"),
            BootChange::Activate { slot, .. } => ("activating", slot, ""),
            BootChange::Confirm(s) => ("confirming", s, ""),
            BootChange::FallBack { good, .. } => ("falling back to", good, ""),
        }
    }

    /// Every change a selector can be asked for, for both slots (activations with
    /// `tries`): what the power-fail tests and the fuzz targets walk through.
    pub fn every(tries: u32) -> Vec<BootChange> {
        [Slot::A, Slot::B]
            .into_iter()
            .flat_map(|s| {
                [
                    BootChange::Disable(s),
                    BootChange::Activate { slot: s, tries },
                    BootChange::Confirm(s),
                    BootChange::FallBack {
                        good: s,
                        bad: s.other(),
                    },
                ]
            })
            .collect()
    }
}

/// RAUC's GRUB variables, reduced to what `grub.cfg` tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RaucVars {
    order: [Slot; 2],
    ok: [bool; 2],
    tried: [bool; 2],
}

fn idx(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

/// GRUB's `[ "$X" -eq N ]` compares the leading integer of the string (0 when none).
fn grub_int(value: Option<&[u8]>) -> i64 {
    let (sign, digits) = match value.unwrap_or_default().trim_ascii_start() {
        [b'-', rest @ ..] => (-1, rest),
        [b'+', rest @ ..] | rest => (1, rest),
    };
    let end = digits
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end])
        .ok()
        .and_then(|d| d.parse::<i64>().ok())
        .map_or(0, |n| sign * n)
}

impl RaucVars {
    /// What a fresh device boots: slot A, with B empty.
    const FRESH: RaucVars = RaucVars {
        order: [Slot::A, Slot::B],
        ok: [true, false],
        tried: [false, false],
    };

    /// Reads the variables as RAUC's `grub.cfg` would (missing `X_OK` means 0); an `ORDER`
    /// that is not `"A B"`/`"B A"` is reduced to the first of A/B it names.
    fn from_vars(vars: &[RawVar]) -> RaucVars {
        let get = |name: &str| last_raw(vars, name);
        let first = get("ORDER")
            .and_then(|o| slots_in(o).next())
            .unwrap_or(Slot::A);
        let ok = |s: Slot| grub_int(get(&format!("{}_OK", s.upper()))) == 1;
        let tried = |s: Slot| grub_int(get(&format!("{}_TRY", s.upper()))) != 0;
        RaucVars {
            order: [first, first.other()],
            ok: [ok(Slot::A), ok(Slot::B)],
            tried: [tried(Slot::A), tried(Slot::B)],
        }
    }

    fn set_slot(&mut self, slot: Slot, ok: bool) {
        self.ok[idx(slot)] = ok;
        self.tried[idx(slot)] = false;
    }

    fn with(mut self, change: BootChange) -> RaucVars {
        match change {
            BootChange::Disable(slot) => self.set_slot(slot, false),
            BootChange::Activate { slot, .. } => {
                self.set_slot(slot, true);
                self.order = [slot, slot.other()];
                // The fallback is the slot running now. Until this boot's startup step
                // runs, GRUB's mark of this boot's attempt is still on it: left there, a
                // trial that fails would boot nothing (the rescue entry) instead of it.
                let fallback = slot.other();
                if self.ok[idx(fallback)] {
                    self.tried[idx(fallback)] = false;
                }
            }
            BootChange::Confirm(slot) => self.set_slot(slot, true),
            BootChange::FallBack { good, bad } => {
                self.set_slot(bad, false);
                self.set_slot(good, true);
                self.order = [good, bad];
            }
        }
        self
    }

    /// The slot RAUC's `grub.cfg` boots: the first in `ORDER` with OK=1 and TRY=0.
    fn pick(&self) -> Option<Slot> {
        self.order
            .into_iter()
            .find(|s| self.ok[idx(*s)] && !self.tried[idx(*s)])
    }

    /// The canonical fixed-width lines, right after the header.
    fn canonical_lines(&self) -> String {
        let bit = |b: bool| if b { '1' } else { '0' };
        format!(
            "ORDER={} {}\nA_OK={}\nA_TRY={}\nB_OK={}\nB_TRY={}\n",
            self.order[0].upper(),
            self.order[1].upper(),
            bit(self.ok[0]),
            bit(self.tried[0]),
            bit(self.ok[1]),
            bit(self.tried[1]),
        )
    }
}

const RAUC_NAMES: [&str; 5] = ["ORDER", "A_OK", "A_TRY", "B_OK", "B_TRY"];

/// One variable as stored: its name and (unescaped) value, byte for byte. Variables that
/// are not Evergreen's are written back exactly as they were read, UTF-8 or not.
pub(super) type RawVar = (Vec<u8>, Vec<u8>);

/// The value of the last `name`: what GRUB's `load_env`, U-Boot and `fw_printenv` use.
pub(super) fn last_raw<'a>(vars: &'a [RawVar], name: &str) -> Option<&'a [u8]> {
    vars.iter()
        .rev()
        .find(|(n, _)| n == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

/// A stored name or value as text, for what Evergreen reads or reports.
pub(super) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(super) fn decoded(vars: &[RawVar]) -> Vec<(String, String)> {
    vars.iter().map(|(n, v)| (text(n), text(v))).collect()
}

/// The slots a boot order names, in order (words that are not A or B are skipped).
pub(super) fn slots_in(order: &[u8]) -> impl Iterator<Item = Slot> + '_ {
    order.split(u8::is_ascii_whitespace).filter_map(order_word)
}

/// The slot a word of a boot order names: `A` or `B` exactly, as RAUC's scripts compare
/// it (`[ "$SLOT" == "A" ]`, `test "x${BOOT_SLOT}" = "xA"`); `a` names none.
pub(super) fn order_word(word: &[u8]) -> Option<Slot> {
    match word {
        b"A" => Some(Slot::A),
        b"B" => Some(Slot::B),
        _ => None,
    }
}

/// `name=value` split at the first `=`; `None` without one.
pub(super) fn split_eq(entry: &[u8]) -> Option<RawVar> {
    let i = entry.iter().position(|&c| c == b'=')?;
    Some((entry[..i].to_vec(), entry[i + 1..].to_vec()))
}

/// Sets `name` as the bootloaders read it back: the last one is updated (or it is
/// appended) and earlier duplicates are dropped; `None` removes every one.
pub(super) fn set_raw(vars: &mut Vec<RawVar>, name: &str, value: Option<&str>) {
    let name = name.as_bytes();
    // Removes every one; `at` ends where the last one was.
    let mut at = vars.len();
    while let Some(i) = vars.iter().position(|(n, _)| n == name) {
        vars.remove(i);
        at = i;
    }
    if let Some(v) = value {
        vars.insert(at, (name.to_vec(), v.as_bytes().to_vec()));
    }
}

/// Refuses a variable that `env` can't hold: an empty or `bad_name`, a value with NUL.
pub(super) fn check_var(
    env: &str,
    rule: &str,
    bad_name: bool,
    name: &str,
    value: Option<&str>,
) -> Result<()> {
    let value = value.unwrap_or_default();
    if bad_name || name.is_empty() || value.contains('\0') {
        return Err(Error::config(format!(
            "{env}: expected a variable name {rule} and a value without NUL, found {name:?}={value:?}"
        )));
    }
    Ok(())
}

/// Parses a block exactly as GRUB's `grub_envblk_iterate` does: `#` lines are skipped, a
/// line without `=` or an unterminated value ends the list.
fn parse_block(path: &Path, bytes: &[u8]) -> Result<Vec<RawVar>> {
    if !bytes.starts_with(HEADER.as_bytes()) {
        let found = String::from_utf8_lossy(&bytes[..bytes.len().min(HEADER.len())]);
        return Err(Error::new(
            ErrorKind::Bootloader,
            format!(
                "GRUB environment {}: expected the header {HEADER:?}, found {found:?}",
                path.display()
            ),
        ));
    }
    let mut vars = Vec::new();
    let mut p = HEADER.len();
    while p < bytes.len() {
        if bytes[p] == b'#' {
            p = next_line(bytes, p);
            continue;
        }
        let Some(eq) = bytes[p..].iter().position(|&c| c == b'=').map(|i| p + i) else {
            break;
        };
        let Some((value, end)) = unescape_value(bytes, eq + 1) else {
            break;
        };
        vars.push((bytes[p..eq].to_vec(), value));
        p = end + 1;
    }
    Ok(vars)
}

fn next_line(bytes: &[u8], from: usize) -> usize {
    bytes[from..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(bytes.len(), |i| from + i + 1)
}

/// The unescaped value starting at `start` and the index of its terminating newline.
fn unescape_value(bytes: &[u8], start: usize) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut p = start;
    while p < bytes.len() {
        match bytes[p] {
            b'\n' => return Some((out, p)),
            b'\\' => {
                out.push(*bytes.get(p + 1)?);
                p += 2;
            }
            c => {
                out.push(c);
                p += 1;
            }
        }
    }
    None
}

fn escape_value(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for &c in value {
        if c == b'\\' || c == b'\n' {
            out.push(b'\\');
        }
        out.push(c);
    }
    out
}

/// Serialises `lines` (already `name=value\n`) after the header, padded with `#` to `size`.
fn pad_block(path: &Path, body: &[u8], size: usize) -> Result<Vec<u8>> {
    let mut block = [HEADER.as_bytes(), body].concat();
    if block.len() > size {
        return Err(Error::new(
            ErrorKind::Bootloader,
            format!(
                "GRUB environment {}: the variables need {} bytes, the block has {size}",
                path.display(),
                block.len()
            ),
        ));
    }
    block.resize(size, b'#');
    Ok(block)
}

fn var_lines<'a>(vars: impl IntoIterator<Item = &'a RawVar>) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in vars {
        out.extend_from_slice(n);
        out.push(b'=');
        out.extend_from_slice(&escape_value(v));
        out.push(b'\n');
    }
    out
}

/// The canonical block for `rauc` and the other variables of `vars`, padded to `size`.
fn canonical_block(path: &Path, rauc: &RaucVars, vars: &[RawVar], size: usize) -> Result<Vec<u8>> {
    let others = vars
        .iter()
        .filter(|(n, _)| !RAUC_NAMES.iter().any(|r| r.as_bytes() == n));
    let mut body = rauc.canonical_lines().into_bytes();
    body.extend(var_lines(others));
    pad_block(path, &body, size)
}

/// The fixed-width lines at the start of a block laid out by Evergreen, as they are on
/// disk: `ORDER` may name one slot twice, as a change cut between two of its bytes leaves
/// it, and the next change goes on from there byte by byte. `None` when the block is not
/// laid out so, or names one of those variables again further on.
fn fixed_lines<'a>(bytes: &'a [u8], vars: &[RawVar]) -> Option<&'a [u8]> {
    // `?`: a slot letter; `#`: a 0 or 1. The same width as `RaucVars::canonical_lines`.
    const SHAPE: &[u8] = b"ORDER=? ?\nA_OK=#\nA_TRY=#\nB_OK=#\nB_TRY=#\n";
    let lines = bytes.get(HEADER.len()..HEADER.len() + SHAPE.len())?;
    let fits = SHAPE.iter().zip(lines).all(|(&shape, &b)| match shape {
        b'?' => matches!(b, b'A' | b'B'),
        b'#' => matches!(b, b'0' | b'1'),
        _ => shape == b,
    });
    let once = RAUC_NAMES
        .iter()
        .all(|name| vars.iter().filter(|(n, _)| n == name.as_bytes()).count() == 1);
    (fits && once).then_some(lines)
}

/// Orders the single-byte changes from the fixed-width lines `from` to `new`'s so that
/// every intermediate block boots what `from` or `new` boots (nothing only when `from`
/// booted nothing already).
fn safe_byte_order(from: &[u8], new: &RaucVars) -> Option<Vec<(usize, u8)>> {
    let to = new.canonical_lines().into_bytes();
    let diffs: Vec<(usize, u8)> = (0..from.len())
        .filter(|&i| from[i] != to[i])
        .map(|i| (i, to[i]))
        .collect();
    let allowed = [boots(from), new.pick()];
    let mut order = Vec::with_capacity(diffs.len());
    let mut used = vec![false; diffs.len()];
    search_order(from, &diffs, &allowed, &mut used, &mut order).then_some(order)
}

/// Depth-first search over at most 6! orders, pruned at the first unsafe intermediate.
fn search_order(
    state: &[u8],
    diffs: &[(usize, u8)],
    allowed: &[Option<Slot>; 2],
    used: &mut [bool],
    order: &mut Vec<(usize, u8)>,
) -> bool {
    if order.len() == diffs.len() {
        return true;
    }
    for i in 0..diffs.len() {
        if used[i] {
            continue;
        }
        let mut next = state.to_vec();
        next[diffs[i].0] = diffs[i].1;
        if !intermediate_is_safe(&next, allowed) {
            continue;
        }
        used[i] = true;
        order.push(diffs[i]);
        if search_order(&next, diffs, allowed, used, order) {
            return true;
        }
        order.pop();
        used[i] = false;
    }
    false
}

fn intermediate_is_safe(lines: &[u8], allowed: &[Option<Slot>; 2]) -> bool {
    let pick = boots(lines);
    // allowed[0] is what the old block boots: losing a bootable slot is never allowed.
    allowed.contains(&pick) && (pick.is_some() || allowed[0].is_none())
}

/// The slot RAUC's `grub.cfg` boots from these lines, visiting `ORDER` as written (`ORDER=A
/// A` is a valid intermediate: grub.cfg just visits A twice).
fn boots(lines: &[u8]) -> Option<Slot> {
    let vars: Vec<RawVar> = lines.split(|&c| c == b'\n').filter_map(split_eq).collect();
    let order: Vec<Slot> = last_raw(&vars, "ORDER")
        .map(|o| slots_in(o).collect())
        .unwrap_or_default();
    let rauc = RaucVars::from_vars(&vars);
    order
        .into_iter()
        .find(|s| rauc.ok[idx(*s)] && !rauc.tried[idx(*s)])
}

/// The GRUB environment block selector (RAUC-compatible variables).
#[derive(Debug, Clone)]
pub struct GrubEnv {
    path: PathBuf,
    booted_from: BootedFrom,
}

impl GrubEnv {
    /// A selector for the block at `path` (e.g. `/boot/grub/grubenv`). Nothing is read
    /// until it is used; the running slot comes from `rauc.slot` in `/proc/cmdline`.
    pub fn new(path: impl Into<PathBuf>) -> GrubEnv {
        GrubEnv {
            path: path.into(),
            booted_from: BootedFrom::default(),
        }
    }

    /// Reads the running slot from another command line or key.
    pub fn with_booted_from(mut self, booted_from: BootedFrom) -> GrubEnv {
        self.booted_from = booted_from;
        self
    }

    /// Provisions the block at `path` so that later writes are power-fail safe.
    ///
    /// A missing file is created (1024 bytes, slot A good and first, B not bootable) by
    /// writing a temporary file and renaming it. A symlink is followed: its target is
    /// written and the link kept; one whose target is missing is a `bootloader` error
    /// unless the target's directory is on another file system (the ESP, mounted), where
    /// the block is made.
    /// An existing block keeps its size and its other variables; when it is not yet in the
    /// canonical layout it is rewritten once, in place — the one write that a power cut
    /// can tear — so run this at provisioning. One that holds none of the slot variables
    /// (as `grub-editenv create` makes it) gets a fresh device's: A good and first, B not
    /// bootable.
    ///
    /// ```
    /// # fn main() -> evergreen::Result<()> {
    /// use evergreen::slots::{grub::GrubEnv, BootSelector, Slot};
    /// let dir = tempfile::tempdir().unwrap();
    /// let mut env = GrubEnv::init(dir.path().join("grubenv"))?;
    /// env.activate(Slot::B, 1)?;
    /// assert_eq!(env.get("ORDER")?.as_deref(), Some("B A"));
    /// assert_eq!(std::fs::metadata(env.path()).unwrap().len(), 1024);
    /// # Ok(()) }
    /// ```
    pub fn init(path: impl Into<PathBuf>) -> Result<GrubEnv> {
        let env = GrubEnv::new(path);
        // An empty block is what a `grub-editenv` rewrite cut short by a power cut leaves:
        // nothing to keep, so it is made as a missing one is.
        let kept = std::fs::metadata(&env.path).is_ok_and(|m| !(m.is_file() && m.len() == 0));
        if kept {
            let bytes = env.read_bytes()?;
            let vars = parse_block(&env.path, &bytes)?;
            // A block with none of the variables (`grub-editenv create` of grub-install,
            // other variables set since) is a fresh device's: read as grub.cfg reads it,
            // it would boot no slot at all.
            let rauc = match RAUC_NAMES.iter().any(|n| last_raw(&vars, n).is_some()) {
                true => RaucVars::from_vars(&vars),
                false => RaucVars::FRESH,
            };
            if fixed_lines(&bytes, &vars).is_none() {
                let block = canonical_block(&env.path, &rauc, &vars, bytes.len())?;
                env.full_write(block).apply()?;
            }
        } else {
            // Renaming over a symlink would put the block where GRUB never looks. One whose
            // target is missing gets the block where it points only on another file system
            // (the ESP mounted): an unmounted mount point is an empty directory of this one.
            let target = crate::fsutil::link_target(env.path.clone())?;
            // An empty target (a cut `grub-editenv` rewrite) is a file there: made again.
            let missing = std::fs::symlink_metadata(&target).is_err();
            if target != env.path && missing && !on_other_file_system(&env.path, &target) {
                return Err(Error::new(
                    ErrorKind::Bootloader,
                    format!(
                        "GRUB environment {}: expected the symlink's target {} to exist or its directory to be on another file system, found neither (is the ESP mounted?)",
                        env.path.display(),
                        target.display()
                    ),
                ));
            }
            let block = canonical_block(&env.path, &RaucVars::FRESH, &[], DEFAULT_SIZE)?;
            crate::fsutil::write_atomic(&target, &block)?;
        }
        Ok(env)
    }

    /// The block's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_bytes(&self) -> Result<Vec<u8>> {
        let meta = std::fs::metadata(&self.path).map_err(|e| {
            let what = match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "expected a GRUB environment block (`evergreen provision` makes one), reading"
                }
                _ => "reading",
            };
            Error::io(what, &self.path, e)
        })?;
        if meta.len() > MAX_SIZE {
            return Err(Error::new(
                ErrorKind::Bootloader,
                format!(
                    "GRUB environment {}: expected a block of at most {MAX_SIZE} bytes, found {}",
                    self.path.display(),
                    meta.len()
                ),
            ));
        }
        std::fs::read(&self.path).map_err(|e| Error::io("reading", &self.path, e))
    }

    /// Every variable in block order, as GRUB's `load_env` sees them.
    ///
    /// Bytes that are not UTF-8 read as U+FFFD here; the block keeps them as they are.
    pub fn vars(&self) -> Result<Vec<(String, String)>> {
        Ok(decoded(&self.raw_vars()?))
    }

    fn raw_vars(&self) -> Result<Vec<RawVar>> {
        parse_block(&self.path, &self.read_bytes()?)
    }

    /// One variable's value (the last one when a name repeats, as `load_env` leaves it).
    pub fn get(&self, name: &str) -> Result<Option<String>> {
        Ok(last_raw(&self.raw_vars()?, name).map(text))
    }

    /// Sets variables the way `grub-editenv set` does (replaced where they are, new ones
    /// appended) but in place, in one write of the whole block, keeping its size. Of a
    /// name that repeats, the last one (the one `load_env` uses) is set and the others
    /// dropped. A name that is empty, starts with `#` or holds `=`, NUL or a newline, or a
    /// value with NUL, can't be stored: `config` error, nothing written.
    ///
    /// This is a general editor (and what a simulated GRUB `save_env` uses); the
    /// [`BootSelector`](super::BootSelector) methods use the power-fail-safe byte-wise path instead.
    pub fn set_vars(&mut self, updates: &[(&str, &str)]) -> Result<()> {
        let bytes = self.read_bytes()?;
        let mut vars = parse_block(&self.path, &bytes)?;
        for (name, value) in updates {
            let bad = name.starts_with('#') || name.bytes().any(|c| b"=\0\n".contains(&c));
            let rule = "not starting with `#`, without `=`, NUL or newline";
            check_var("GRUB environment", rule, bad, name, Some(value))?;
            set_raw(&mut vars, name, Some(value));
        }
        let block = pad_block(&self.path, &var_lines(&vars), bytes.len())?;
        self.full_write(block).apply()
    }

    /// The writes that `change` takes, in order, without making them.
    ///
    /// On a canonical block these are single bytes in a power-fail-safe order (none when
    /// nothing changes); otherwise one rewrite of the whole block (see the module docs).
    pub fn plan(&self, change: BootChange) -> Result<Vec<EnvWrite>> {
        let bytes = self.read_bytes()?;
        let vars = parse_block(&self.path, &bytes)?;
        let old = RaucVars::from_vars(&vars);
        let new = old.with(change);
        if new.pick().is_none() && old.pick().is_some() {
            let (what, slot, how) = change.describe();
            return Err(Error::invalid_state(format!(
                "GRUB environment {}: {} slot {}{} would leave no bootable slot (expected one of A/B with OK=1 and TRY=0 afterwards)",
                self.path.display(),
                what,
                slot,
                how,
            )));
        }
        let Some(lines) = fixed_lines(&bytes, &vars) else {
            let block = canonical_block(&self.path, &new, &vars, bytes.len())?;
            return Ok(vec![self.full_write(block)]);
        };
        let order = safe_byte_order(lines, &new).ok_or_else(|| {
            Error::new(
                ErrorKind::Bootloader,
                format!(
                    "GRUB environment {}: expected a power-fail-safe order for {change:?}, found none",
                    self.path.display()
                ),
            )
        })?;
        Ok(order
            .into_iter()
            .map(|(i, byte)| EnvWrite {
                path: self.path.clone(),
                offset: (HEADER.len() + i) as u64,
                data: vec![byte],
            })
            .collect())
    }

    /// Makes `change` (see [`GrubEnv::plan`]).
    pub fn apply(&mut self, change: BootChange) -> Result<()> {
        apply_all(&self.plan(change)?)
    }

    fn full_write(&self, data: Vec<u8>) -> EnvWrite {
        EnvWrite {
            path: self.path.clone(),
            offset: 0,
            data,
        }
    }
}

impl super::EnvSelector for GrubEnv {
    fn apply_change(&mut self, change: BootChange) -> Result<()> {
        self.apply(change)
    }

    fn booted_from(&self) -> &BootedFrom {
        &self.booted_from
    }

    /// RAUC's `X_OK`/`X_TRY` express one attempt, whatever is configured.
    fn trial_tries(&self, _requested: u32) -> u32 {
        1
    }

    fn boot_plan(&self) -> Result<super::BootPlan> {
        let rauc = RaucVars::from_vars(&self.raw_vars()?);
        Ok(super::BootPlan {
            preferred: rauc.order[0],
            next: rauc.pick(),
            // grub.cfg sets X_TRY for every slot it visits, bootable or not: only a slot
            // with X_OK=1 was started (X_OK=0 is an activation cut short).
            preferred_spent: rauc.tried[idx(rauc.order[0])] && rauc.ok[idx(rauc.order[0])],
            preferred_left: u32::from(rauc.pick() == Some(rauc.order[0])),
        })
    }
}

/// The directory of `target` exists on another file system than that of `link`.
fn on_other_file_system(link: &Path, target: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dir_of = |p: &Path| {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
        std::fs::metadata(dir.unwrap_or(Path::new("."))).map(|m| m.dev())
    };
    matches!((dir_of(link), dir_of(target)), (Ok(a), Ok(b)) if a != b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::BootSelector;

    fn all_states() -> Vec<RaucVars> {
        let mut out = Vec::new();
        for bits in 0..32u8 {
            let first = if bits & 16 == 0 { Slot::A } else { Slot::B };
            out.push(RaucVars {
                order: [first, first.other()],
                ok: [bits & 1 != 0, bits & 2 != 0],
                tried: [bits & 4 != 0, bits & 8 != 0],
            });
        }
        out
    }

    #[test]
    fn a_safe_byte_order_exists_for_every_state_and_change() {
        for old in all_states() {
            for change in BootChange::every(3) {
                let new = old.with(change);
                if new.pick().is_none() && old.pick().is_some() {
                    continue; // refused by `plan`
                }
                let from = old.canonical_lines();
                assert!(
                    safe_byte_order(from.as_bytes(), &new).is_some(),
                    "{old:?} {change:?}"
                );
            }
        }
    }

    #[test]
    fn activating_b_writes_order_before_b_ok() {
        let dir = tempfile::tempdir().unwrap();
        let env = GrubEnv::init(dir.path().join("env")).unwrap();
        let plan = env
            .plan(BootChange::Activate {
                slot: Slot::B,
                tries: 1,
            })
            .unwrap();
        let steps: Vec<(u64, u8)> = plan.iter().map(|w| (w.offset, w.data[0])).collect();
        let h = HEADER.len() as u64;
        assert_eq!(steps, [(h + 8, b'A'), (h + 6, b'B'), (h + 30, b'1')]);
    }

    /// What RAUC's `grub.cfg` does next, as the startup step reads it: `X_TRY` on a slot
    /// with `X_OK=1` is a start spent; with `X_OK=0` (an activation cut short) the slot
    /// was never started.
    #[test]
    fn boot_plan_reads_order_ok_and_try_as_grub_cfg_does() {
        use crate::slots::BootPlan;
        let dir = tempfile::tempdir().unwrap();
        let mut env = GrubEnv::init(dir.path().join("env")).unwrap();
        // (ORDER, A_OK, A_TRY, B_OK, B_TRY) -> (preferred, next, spent, left)
        for (vars, plan) in [
            (
                ["B A", "1", "0", "1", "1"],
                (Slot::B, Some(Slot::A), true, 0),
            ),
            (
                ["B A", "1", "0", "0", "1"],
                (Slot::B, Some(Slot::A), false, 0),
            ),
            (
                ["B A", "1", "0", "1", "0"],
                (Slot::B, Some(Slot::B), false, 1),
            ),
            (["A B", "1", "1", "1", "1"], (Slot::A, None, true, 0)),
            (
                ["A B", "0", "0", "1", "0"],
                (Slot::A, Some(Slot::B), false, 0),
            ),
        ] {
            let names = ["ORDER", "A_OK", "A_TRY", "B_OK", "B_TRY"];
            let set: Vec<(&str, &str)> = names.into_iter().zip(vars).collect();
            env.set_vars(&set).unwrap();
            let expected = BootPlan::of(plan);
            assert_eq!(env.boot_plan().unwrap(), Some(expected), "{set:?}");
        }
    }

    /// A block of `MAX_SIZE` bytes is read; one byte more is refused as no block.
    #[test]
    fn a_block_of_the_largest_size_is_read_and_a_larger_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        let body = b"ORDER=A B\nA_OK=1\nA_TRY=0\nB_OK=0\nB_TRY=0\n";
        let block = pad_block(&path, body, MAX_SIZE as usize).unwrap();
        std::fs::write(&path, &block).unwrap();
        let env = GrubEnv::new(&path);
        assert_eq!(env.get("ORDER").unwrap().as_deref(), Some("A B"));
        let block = pad_block(&path, body, MAX_SIZE as usize + 1).unwrap();
        std::fs::write(&path, &block).unwrap();
        let err = env.get("ORDER").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Bootloader);
        assert!(
            err.message()
                .contains("expected a block of at most 1048576 bytes, found 1048577"),
            "{err}"
        );
    }

    /// Variables that fill the block to its last byte, with no `#` left to pad it, are a
    /// valid block (`grub-editenv list` reads one); one byte more is refused.
    #[test]
    fn variables_filling_the_block_exactly_fit_and_one_byte_more_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        let room = DEFAULT_SIZE - HEADER.len();
        let body = |len: usize| [b"X=".as_slice(), &vec![b'v'; len - 3], b"\n"].concat();
        let block = pad_block(&path, &body(room), DEFAULT_SIZE).unwrap();
        assert_eq!(block.len(), DEFAULT_SIZE);
        assert!(!block[HEADER.len()..].contains(&b'#'), "no padding left");
        std::fs::write(&path, &block).unwrap();
        assert_eq!(
            GrubEnv::new(&path).get("X").unwrap().map(|v| v.len()),
            Some(room - 3)
        );
        let err = pad_block(&path, &body(room + 1), DEFAULT_SIZE).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Bootloader);
        assert!(
            err.message().contains(&format!(
                "the variables need {} bytes, the block has {DEFAULT_SIZE}",
                DEFAULT_SIZE + 1
            )),
            "{err}"
        );
    }

    /// Only a block whose fixed-width lines are the only slot variables is changed byte by
    /// byte. A slot variable repeated further on (the one `load_env` uses) or lines in
    /// another order (as `grub-editenv` leaves them) take one rewrite of the whole block,
    /// and the change then holds as GRUB reads it.
    #[test]
    fn a_block_not_in_the_fixed_layout_is_rewritten_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        for body in [
            &b"ORDER=A B\nA_OK=1\nA_TRY=0\nB_OK=0\nB_TRY=0\nB_OK=1\n"[..],
            &b"A_OK=1\nA_TRY=0\nB_OK=1\nB_TRY=0\nORDER=A B\n"[..],
        ] {
            std::fs::write(&path, pad_block(&path, body, DEFAULT_SIZE).unwrap()).unwrap();
            let mut env = GrubEnv::new(&path);
            let writes = env.plan(BootChange::Disable(Slot::B)).unwrap();
            let whole: Vec<(u64, usize)> =
                writes.iter().map(|w| (w.offset, w.data.len())).collect();
            assert_eq!(whole, [(0, DEFAULT_SIZE)], "{}", text(body));
            env.apply(BootChange::Disable(Slot::B)).unwrap();
            let vars = env.raw_vars().unwrap();
            assert_eq!(last_raw(&vars, "B_OK"), Some(&b"0"[..]), "{}", text(body));
            assert_eq!(
                RAUC_NAMES.map(|n| vars.iter().filter(|(v, _)| v == n.as_bytes()).count()),
                [1; 5],
                "{}",
                text(body)
            );
            assert_eq!(
                env.boot_plan().unwrap().map(|p| p.next),
                Some(Some(Slot::A))
            );
        }
    }

    #[test]
    fn escaping_round_trips_like_grub_editenv() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = GrubEnv::init(dir.path().join("env")).unwrap();
        env.set_vars(&[("k", "a\\b\nc")]).unwrap();
        let raw = std::fs::read(env.path()).unwrap();
        assert!(raw.windows(8).any(|w| w == b"k=a\\\\b\\\n"));
        assert_eq!(env.get("k").unwrap().as_deref(), Some("a\\b\nc"));
    }

    #[test]
    fn bad_header_is_bootloader_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        std::fs::write(&path, vec![b'#'; 1024]).unwrap();
        let err = GrubEnv::new(&path).vars().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Bootloader);
        assert!(err.message().contains("expected the header"), "{err}");
    }

    #[test]
    fn too_many_variables_is_bootloader_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = GrubEnv::init(dir.path().join("env")).unwrap();
        let big = "x".repeat(2000);
        let err = env.set_vars(&[("big", &big)]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Bootloader);
    }

    #[test]
    fn disabling_the_only_bootable_slot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = GrubEnv::init(dir.path().join("env")).unwrap();
        let before = std::fs::read(env.path()).unwrap();
        let err = env.disable(Slot::A).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidState);
        // In words, not as the Rust value `Disable(A)`.
        assert!(
            err.message().contains(
                "taking slot a out of the boot order would leave no bootable slot (expected one of A/B with OK=1 and TRY=0 afterwards)"
            ),
            "{err}"
        );
        assert_eq!(std::fs::read(env.path()).unwrap(), before);
    }

    #[test]
    fn missing_file_is_io_and_names_provision() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = GrubEnv::new(dir.path().join("nope"));
        let err = env.confirm(Slot::A).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.message().contains(
                "expected a GRUB environment block (`evergreen provision` makes one), reading"
            ),
            "{err}"
        );
    }

    /// `grub-editenv` rewrites the file; a power cut in between leaves it empty. That is
    /// refused as no block, and provisioning makes the block again.
    #[test]
    fn an_empty_file_is_refused_and_provisioning_makes_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grubenv");
        std::fs::write(&path, b"").unwrap();
        let err = GrubEnv::new(&path).boot_plan().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Bootloader);
        assert!(err.message().ends_with(r#"found """#), "{err}");
        let env = GrubEnv::init(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), DEFAULT_SIZE as u64);
        assert_eq!(
            env.boot_plan().unwrap().map(|p| p.next),
            Some(Some(Slot::A))
        );
    }

    /// A symlinked block whose target (same file system) a cut `grub-editenv` rewrite left
    /// empty is made again where the link points, as an empty file is, and the link kept.
    /// Provisioning refused it, saying the target, which exists, was missing.
    #[test]
    fn provisioning_remakes_an_empty_block_behind_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real-grubenv");
        std::fs::write(&target, b"").unwrap();
        let link = dir.path().join("grubenv");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let env = GrubEnv::init(&link).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::metadata(&target).unwrap().len(),
            DEFAULT_SIZE as u64
        );
        assert_eq!(env.get("A_OK").unwrap().as_deref(), Some("1"));
    }
}
