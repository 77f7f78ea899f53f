//! The GRUB environment block: `slots::grub::GrubEnv` reading, planning and writing a
//! block from an arbitrary file (DESIGN §6).
//!
//! Input: one mode byte, then the block. Bits 0–2 of the mode pick the change (disable,
//! activate, confirm or fall back, for slot A or B).
//!
//! Properties: no panic, no hang, bounded memory; a block that reads is written in place
//! (same size), still reads after every single write of the plan (a power cut between
//! two writes), keeps every variable that is not one of RAUC's five, and ends with the
//! change made, as the variables and the boot plan read it. On the byte-wise path every intermediate block boots the slot the old or
//! the new block boots.
#![no_main]

use evergreen::slots::grub::{BootChange, GrubEnv};
use evergreen::slots::{BootPlan, EnvSelector, Slot};
use libfuzzer_sys::fuzz_target;

const RAUC_NAMES: [&str; 5] = ["ORDER", "A_OK", "A_TRY", "B_OK", "B_TRY"];

fuzz_target!(|data: &[u8]| {
    let Some((mode, block)) = evergreen_fuzz::split_mode(data) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let path = tmp.path().join("grubenv");
    std::fs::write(&path, block).expect("write the block");
    let env = GrubEnv::new(&path);
    let Ok(before) = env.vars() else {
        return;
    };
    let _ = env.get("ORDER");
    let change = change(mode);
    let Ok(writes) = env.plan(change) else {
        return;
    };
    let byte_wise = writes.iter().all(|w| w.data.len() == 1 && w.offset > 0);
    let old_boots = boots(&before);
    let mut seen = Vec::new();
    for w in &writes {
        w.apply().expect("a planned write applies");
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            block.len() as u64
        );
        seen.push(env.vars().expect("the block reads after every write"));
    }
    let after = env.vars().expect("the block reads after the change");
    assert_eq!(others(&before), others(&after), "other variables changed");
    let value = |name: &str| env.get(name).expect("read a variable");
    match change {
        BootChange::Activate { slot, .. } | BootChange::FallBack { good: slot, .. } => {
            let order = value("ORDER").unwrap_or_default();
            assert_eq!(order.split_whitespace().next(), Some(slot.upper()));
            assert_eq!(value(&format!("{}_OK", slot.upper())).as_deref(), Some("1"));
            assert_eq!(
                value(&format!("{}_TRY", slot.upper())).as_deref(),
                Some("0")
            );
            // What the startup step reads back: GRUB starts the slot next, once.
            let plan = env.boot_plan().expect("a boot plan");
            let next = BootPlan {
                preferred: slot,
                next: Some(slot),
                preferred_spent: false,
                preferred_left: 1,
            };
            assert_eq!(plan, next);
        }
        BootChange::Confirm(slot) => {
            assert_eq!(value(&format!("{}_OK", slot.upper())).as_deref(), Some("1"));
        }
        BootChange::Disable(slot) => {
            assert_eq!(value(&format!("{}_OK", slot.upper())).as_deref(), Some("0"));
        }
    }
    if byte_wise {
        let new_boots = boots(&after);
        for vars in &seen {
            let now = boots(vars);
            assert!(
                now == old_boots || now == new_boots,
                "an intermediate block boots {now:?}"
            );
            assert!(
                now.is_some() || old_boots.is_none(),
                "an intermediate block boots nothing"
            );
        }
    }
});

fn change(mode: u8) -> BootChange {
    let slot = if mode & 1 == 0 { Slot::A } else { Slot::B };
    match (mode >> 1) & 3 {
        0 => BootChange::Disable(slot),
        1 => BootChange::Activate { slot, tries: 1 },
        2 => BootChange::Confirm(slot),
        _ => BootChange::FallBack {
            good: slot,
            bad: slot.other(),
        },
    }
}

fn last<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
    vars.iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// What RAUC's `grub.cfg` boots from a canonical block (single-digit values): the first
/// slot of `ORDER` with `X_OK=1` and `X_TRY=0`.
fn boots(vars: &[(String, String)]) -> Option<Slot> {
    let flag = |slot: Slot, var: &str| last(vars, &format!("{}_{var}", slot.upper()));
    last(vars, "ORDER")
        .unwrap_or("")
        .split_whitespace()
        .filter_map(Slot::parse)
        .find(|s| flag(*s, "OK") == Some("1") && flag(*s, "TRY") == Some("0"))
}

fn others(vars: &[(String, String)]) -> Vec<&(String, String)> {
    vars.iter()
        .filter(|(n, _)| !RAUC_NAMES.contains(&n.as_str()))
        .collect()
}
