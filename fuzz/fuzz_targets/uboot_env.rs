//! The U-Boot environment: `FwEnvConfig::parse` and `slots::uboot::UBootEnv` reading,
//! planning and writing single and redundant copies (DESIGN §6).
//!
//! Input: one mode byte, then the rest. Mode bits 0–1: 0 parses the rest as
//! `fw_env.config` text; 1 is one environment copy; 2 and 3 are a redundant pair (the rest
//! split in two halves). Bit 2 makes the target write the right CRC32 into each copy first,
//! so the parser behind the checksum is reached. Bits 3–5 pick the change.
//!
//! Properties: no panic, no hang, bounded memory; an environment that reads is changed with
//! at most one write, to one whole copy (the inactive one of a pair), keeps every variable
//! that is not RAUC's, and ends with the change made, as the variables and the boot plan
//! read it; with a pair, a write cut in half (a power cut) reads as the old or the new
//! environment.
#![no_main]

use evergreen::slots::grub::BootChange;
use evergreen::slots::uboot::{FwEnvConfig, UBootEnv};
use evergreen::slots::{EnvSelector, Slot};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = evergreen_fuzz::split_mode(data) else {
        return;
    };
    match mode & 3 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = FwEnvConfig::parse(text, Path::new("fw_env.config"));
            }
        }
        copies => environment(mode, rest, copies >= 2),
    }
});

fn environment(mode: u8, rest: &[u8], redundant: bool) {
    let size = if redundant {
        rest.len() / 2
    } else {
        rest.len()
    };
    if size <= 5 {
        return;
    }
    let mut image = rest[..size * (1 + usize::from(redundant))].to_vec();
    if mode & 4 != 0 {
        image
            .chunks_mut(size)
            .for_each(|copy| fix_crc(copy, redundant));
    }
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let device = tmp.path().join("env");
    std::fs::write(&device, &image).expect("write the environment");
    let mut text = format!("{} 0 {size:x}\n", device.display());
    if redundant {
        text.push_str(&format!("{} {size:#x} {size:x}\n", device.display()));
    }
    let config = FwEnvConfig::parse(&text, Path::new("fw_env.config")).expect("a valid config");
    let env = UBootEnv::new(config);
    let Ok(before) = env.vars() else {
        return;
    };
    let change = change(mode >> 3);
    let Ok(writes) = env.plan(change) else {
        return;
    };
    assert!(
        writes.len() <= 1,
        "expected at most one write, found {}",
        writes.len()
    );
    let Some(write) = writes.first() else {
        return;
    };
    assert_eq!(write.data.len(), size, "a write covers one whole copy");
    assert_eq!(write.offset % size as u64, 0, "a write starts at a copy");

    if redundant {
        // A power cut halfway through the write: the old or the new environment reads.
        let mut torn = write.clone();
        torn.data.truncate(size / 2);
        torn.apply().expect("a torn write applies");
        let read = env.vars().expect("a pair still reads after a torn write");
        std::fs::write(&device, &image).expect("restore the environment");
        write.apply().expect("the planned write applies");
        let after = env.vars().expect("the environment reads after the change");
        assert!(
            read == before || read == after,
            "a torn write read as a third environment"
        );
    } else {
        write.apply().expect("the planned write applies");
    }
    let written = std::fs::read(&device).expect("read the environment back");
    assert_eq!(written.len(), image.len(), "the device keeps its size");
    let untouched = (0..image.len())
        .step_by(size)
        .filter(|&o| o as u64 != write.offset);
    for o in untouched {
        assert_eq!(
            written[o..o + size],
            image[o..o + size],
            "the copy that was read changed"
        );
    }
    let after = env.vars().expect("the environment reads after the change");
    assert_eq!(others(&before), others(&after), "other variables changed");
    made(&env, change);
}

/// Writes the CRC32 of the data area into the first four bytes of `copy`.
fn fix_crc(copy: &mut [u8], redundant: bool) {
    let start = if redundant { 5 } else { 4 };
    let crc = crc32(&copy[start..]);
    copy[..4].copy_from_slice(&crc.to_le_bytes());
}

/// CRC-32 (IEEE, reflected), bit by bit: the target must not trust the code it checks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn change(selector: u8) -> BootChange {
    let slot = if selector & 1 == 0 { Slot::A } else { Slot::B };
    match (selector >> 1) & 3 {
        0 => BootChange::Disable(slot),
        1 => BootChange::Activate { slot, tries: 2 },
        2 => BootChange::Confirm(slot),
        _ => BootChange::FallBack {
            good: slot,
            bad: slot.other(),
        },
    }
}

/// The change is visible through the public reader.
fn made(env: &UBootEnv, change: BootChange) {
    let tries = |slot| env.tries_left(slot).expect("tries left");
    let first = || {
        let order = env
            .get("BOOT_ORDER")
            .expect("read BOOT_ORDER")
            .unwrap_or_default();
        order.split_whitespace().next().and_then(Slot::parse)
    };
    // What the startup step reads back: the slot booted next and the starts it has left.
    let plan = || {
        let p = env.boot_plan().expect("a boot plan");
        (p.preferred, p.next, p.preferred_left)
    };
    match change {
        BootChange::Disable(slot) => assert_eq!(tries(slot), 0),
        BootChange::Activate { slot, tries: n } => {
            assert_eq!(first(), Some(slot));
            assert_eq!(tries(slot), n);
            assert_eq!(plan(), (slot, Some(slot), n));
        }
        BootChange::Confirm(slot) => assert_eq!(tries(slot), UBootEnv::DEFAULT_MAX_TRIES),
        BootChange::FallBack { good, bad } => {
            assert_eq!(first(), Some(good));
            assert_eq!(tries(bad), 0);
            assert_eq!(tries(good), UBootEnv::DEFAULT_MAX_TRIES);
            let max = UBootEnv::DEFAULT_MAX_TRIES;
            assert_eq!(plan(), (good, Some(good), max));
        }
    }
}

fn others(vars: &[(String, String)]) -> Vec<&(String, String)> {
    const RAUC_NAMES: [&str; 3] = ["BOOT_ORDER", "BOOT_A_LEFT", "BOOT_B_LEFT"];
    vars.iter()
        .filter(|(n, _)| !RAUC_NAMES.contains(&n.as_str()))
        .collect()
}
