//! Power cuts in the middle of every environment write the selectors make.
//!
//! Each selector exposes the writes a change takes (`plan`). For every write and every
//! byte boundary k, the test rebuilds the files as a power cut after k bytes would leave
//! them (earlier writes complete, this one cut after k bytes) and reads them back:
//! - GRUB: the block always parses, and RAUC's grub.cfg boots the slot the old block or
//!   the new block boots — never nothing (unless the old one already booted nothing);
//! - U-Boot, redundant: the environment read is exactly the old or the new one;
//! - U-Boot, single copy: the old, the new, or a `bootloader` error (bad CRC) — never
//!   other content.

#[path = "support/bootsim.rs"]
mod bootsim;

use evergreen::slots::grub::{BootChange, EnvWrite, GrubEnv};
use evergreen::slots::uboot::UBootEnv;
use evergreen::slots::Slot;
use evergreen::ErrorKind;
use std::collections::BTreeMap;
use std::path::PathBuf;

type Files = BTreeMap<PathBuf, Vec<u8>>;

/// A scratch directory in memory when the machine has one: tens of thousands of cut
/// points are rebuilt and read back.
fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

fn snapshot(paths: &[PathBuf]) -> Files {
    paths
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect()
}

fn restore(files: &Files) {
    for (p, bytes) in files {
        std::fs::write(p, bytes).unwrap();
    }
}

/// The files after `writes[..i]` completed and `writes[i]` was cut after `k` bytes.
fn torn(files: &Files, writes: &[EnvWrite], i: usize, k: usize) -> Files {
    let mut out = files.clone();
    for (n, w) in writes[..=i].iter().enumerate() {
        let len = if n == i { k } else { w.data.len() };
        let file = out.get_mut(&w.path).expect("write to a known file");
        let at = w.offset as usize;
        file[at..at + len].copy_from_slice(&w.data[..len]);
    }
    out
}

/// Calls `check` for every cut point of `writes` with the files as the cut left them;
/// returns how many cut points were tried. The files end as they were.
fn for_each_cut(
    paths: &[PathBuf],
    writes: &[EnvWrite],
    mut check: impl FnMut(usize, usize),
) -> usize {
    let before = snapshot(paths);
    let mut on_disk = before.clone();
    let mut cuts = 0;
    for (i, w) in writes.iter().enumerate() {
        for k in 0..=w.data.len() {
            let files = torn(&before, writes, i, k);
            for (p, bytes) in &files {
                if on_disk[p] != *bytes {
                    std::fs::write(p, bytes).unwrap();
                }
            }
            on_disk = files;
            check(i, k);
            cuts += 1;
        }
    }
    restore(&before);
    cuts
}

/// Tears every write of `change` at every byte and checks the GRUB invariant.
fn grub_cut_all(env: &mut GrubEnv, change: BootChange) -> usize {
    let path = env.path().to_path_buf();
    let plan = match env.plan(change) {
        Ok(plan) => plan,
        Err(e) if e.kind() == ErrorKind::InvalidState => return 0,
        Err(e) => panic!("{change:?}: {e}"),
    };
    assert!(
        plan.iter().all(|w| w.data.len() == 1),
        "{change:?}: byte-wise writes"
    );
    let old = bootsim::grub_decide(&env.vars().unwrap()).0;
    let before = snapshot(std::slice::from_ref(&path));
    env.apply(change).unwrap();
    let new = bootsim::grub_decide(&env.vars().unwrap()).0;
    restore(&before);
    let cuts = for_each_cut(std::slice::from_ref(&path), &plan, |i, k| {
        let vars = env
            .vars()
            .unwrap_or_else(|e| panic!("{change:?} cut {i}/{k}: {e}"));
        let booted = bootsim::grub_decide(&vars).0;
        assert!(
            booted == old || booted == new,
            "{change:?} cut {i}/{k}: boots {booted:?}, expected {old:?} or {new:?}"
        );
        assert!(
            booted.is_some() || old.is_none(),
            "{change:?} cut {i}/{k}: no bootable slot"
        );
    });
    env.apply(change).unwrap();
    assert_eq!(bootsim::grub_decide(&env.vars().unwrap()).0, new);
    cuts
}

/// Sets RAUC's variables to state `bits` of 32: `A_OK`, `B_OK`, `A_TRY`, `B_TRY`, and
/// `ORDER` `B A` (16) or `A B`.
fn set_state(env: &mut GrubEnv, bits: u8) {
    let bit = |b: u8| if bits & b != 0 { "1" } else { "0" };
    let order = if bits & 16 != 0 { "B A" } else { "A B" };
    env.set_vars(&[
        ("ORDER", order),
        ("A_OK", bit(1)),
        ("B_OK", bit(2)),
        ("A_TRY", bit(4)),
        ("B_TRY", bit(8)),
    ])
    .unwrap();
}

#[test]
fn grub_every_change_from_every_state_survives_a_cut_at_every_byte() {
    let dir = scratch();
    let path = dir.path().join("grubenv");
    let mut env = GrubEnv::init(&path).unwrap();
    env.set_vars(&[("saved_entry", "2"), ("other", "x\\y")])
        .unwrap();
    let mut cuts = 0;
    let mut plans = 0;
    for bits in 0..32u8 {
        for change in BootChange::every(3) {
            set_state(&mut env, bits);
            cuts += grub_cut_all(&mut env, change);
            plans += 1;
            assert_eq!(env.get("other").unwrap().as_deref(), Some("x\\y"));
            assert_eq!(std::fs::metadata(&path).unwrap().len(), 1024);
        }
    }
    println!("GRUB: {plans} changes from 32 states, {cuts} cut points tried");
    assert!(cuts > 500);
}

/// A change cut between two of its bytes (`ORDER=B B` on the way from `B A` to `A B`) is
/// where the next one starts, as the startup step repeats it: that one too goes byte by
/// byte, every intermediate booting what the torn block or its result boots.
#[test]
fn grub_every_change_from_every_torn_change_survives_a_cut_at_every_byte() {
    let dir = scratch();
    let path = dir.path().join("grubenv");
    let mut env = GrubEnv::init(&path).unwrap();
    let paths = [path.clone()];
    let mut cuts = 0;
    for bits in 0..32u8 {
        for first in BootChange::every(3) {
            set_state(&mut env, bits);
            let Ok(plan) = env.plan(first) else {
                continue;
            };
            for_each_cut(&paths, &plan, |_, _| {
                let torn = snapshot(&paths);
                for next in BootChange::every(3) {
                    cuts += grub_cut_all(&mut env, next);
                    restore(&torn);
                }
            });
        }
    }
    println!("GRUB: {cuts} cut points tried after a torn change");
    assert!(cuts > 10_000);
}

#[test]
fn grub_update_cycle_survives_a_cut_at_every_byte() {
    let dir = scratch();
    let mut env = GrubEnv::init(dir.path().join("grubenv")).unwrap();
    let mut cuts = 0;
    let mut step = |env: &mut GrubEnv, c: BootChange| cuts += grub_cut_all(env, c);
    step(&mut env, BootChange::Disable(Slot::B));
    step(
        &mut env,
        BootChange::Activate {
            slot: Slot::B,
            tries: 3,
        },
    );
    assert_eq!(bootsim::grub_boot(&mut env), Some(Slot::B));
    step(&mut env, BootChange::Confirm(Slot::B));
    step(&mut env, BootChange::Disable(Slot::A));
    step(
        &mut env,
        BootChange::Activate {
            slot: Slot::A,
            tries: 3,
        },
    );
    assert_eq!(bootsim::grub_boot(&mut env), Some(Slot::A));
    assert_eq!(bootsim::grub_boot(&mut env), Some(Slot::B));
    step(
        &mut env,
        BootChange::FallBack {
            good: Slot::B,
            bad: Slot::A,
        },
    );
    assert_eq!(bootsim::grub_boot(&mut env), Some(Slot::B));
    println!("GRUB update cycle: {cuts} cut points tried");
    assert!(cuts > 10);
}

/// Tears the write of `change` at every byte; returns (cut points, cut points that read
/// as a bootloader error).
fn uboot_cut_all(env: &mut UBootEnv, paths: &[PathBuf], change: BootChange) -> (usize, usize) {
    let plan = env.plan(change).unwrap();
    let old = env.vars().unwrap();
    let before = snapshot(paths);
    env.apply(change).unwrap();
    let new = env.vars().unwrap();
    restore(&before);
    let mut errors = 0;
    let redundant = env.config().redundant();
    let cuts = for_each_cut(paths, &plan, |i, k| match env.vars() {
        Ok(vars) => assert!(
            vars == old || vars == new,
            "{change:?} cut {i}/{k}: read neither the old nor the new environment"
        ),
        Err(e) => {
            assert!(!redundant, "{change:?} cut {i}/{k}: {e}");
            assert_eq!(e.kind(), ErrorKind::Bootloader, "{e}");
            errors += 1;
        }
    });
    env.apply(change).unwrap();
    (cuts, errors)
}

fn uboot_env(dir: &std::path::Path, copies: usize) -> (UBootEnv, Vec<PathBuf>) {
    let mut config = String::new();
    let mut paths = Vec::new();
    for i in 0..copies {
        let p = dir.join(format!("env{i}"));
        std::fs::write(&p, vec![0xffu8; 0x400]).unwrap();
        config.push_str(&format!("{} 0 0x400\n", p.display()));
        paths.push(p);
    }
    let cfg = dir.join("fw_env.config");
    std::fs::write(&cfg, config).unwrap();
    let mut env = UBootEnv::open(&cfg).unwrap();
    env.init().unwrap();
    env.set_vars(&[("bootcmd", Some("run rauc"))]).unwrap();
    (env, paths)
}

fn uboot_cycle() -> Vec<BootChange> {
    vec![
        BootChange::Disable(Slot::B),
        BootChange::Activate {
            slot: Slot::B,
            tries: 3,
        },
        BootChange::Confirm(Slot::B),
        BootChange::Disable(Slot::A),
        BootChange::Activate {
            slot: Slot::A,
            tries: 3,
        },
        BootChange::FallBack {
            good: Slot::B,
            bad: Slot::A,
        },
    ]
}

#[test]
fn redundant_uboot_env_reads_old_or_new_at_every_cut() {
    let dir = scratch();
    let (mut env, paths) = uboot_env(dir.path(), 2);
    let mut cuts = 0;
    let mut wrapped = false;
    // About four writes a round (the changes that change something, and the boot
    // script's saveenv), so the flag byte runs through 255 → 0 within 80 rounds. Writes
    // while the flags are low or near the wrap are torn at every byte; the rest just run.
    let flags = || -> Vec<u8> { paths.iter().map(|p| std::fs::read(p).unwrap()[4]).collect() };
    for _round in 0..80 {
        for change in uboot_cycle() {
            let before = flags();
            if before.iter().all(|&f| f < 12) || before.iter().any(|&f| f >= 245) {
                cuts += uboot_cut_all(&mut env, &paths, change).0;
            } else {
                env.apply(change).unwrap();
            }
            let after = flags();
            wrapped |= after.contains(&255) && after.contains(&0);
        }
        assert_eq!(bootsim::uboot_boot(&mut env), Some(Slot::B));
        let after = flags();
        wrapped |= after.contains(&255) && after.contains(&0);
    }
    println!("U-Boot redundant: {cuts} cut points tried");
    assert!(wrapped, "the flag wrapped from 255 to 0");
    assert!(cuts > 20_000);
}

#[test]
fn single_uboot_env_reads_old_new_or_a_bootloader_error_at_every_cut() {
    let dir = scratch();
    let (mut env, paths) = uboot_env(dir.path(), 1);
    let (mut cuts, mut errors) = (0, 0);
    for change in uboot_cycle() {
        let (c, e) = uboot_cut_all(&mut env, &paths, change);
        cuts += c;
        errors += e;
    }
    println!("U-Boot single copy: {cuts} cut points tried, {errors} read as a bad CRC");
    assert!(errors > 0);
}
