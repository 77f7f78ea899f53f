//! A bootloader simulator for tests: applies RAUC's documented boot logic to an
//! environment file, the way GRUB (`contrib/grub.conf`) and U-Boot (`contrib/uboot.sh`)
//! would at power-on. It is written from the scripts, not from our selectors, so that a
//! test checks our environment against what the bootloader actually does.
//!
//! Included by the bootenv tests with `#[path = "support/bootsim.rs"] mod bootsim;`.
#![allow(dead_code)]

use evergreen::slots::grub::GrubEnv;
use evergreen::slots::uboot::UBootEnv;
use evergreen::slots::Slot;

fn last<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
    vars.iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// GRUB's `-eq`: the leading decimal integer, 0 when there is none.
fn grub_int(s: &str) -> i64 {
    let digits: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().unwrap_or(0)
}

/// What RAUC's grub.cfg decides for `vars`: the menu entry (`None` = the rescue entry,
/// index 0) and the `A_TRY`/`B_TRY` values it saves.
pub fn grub_decide(vars: &[(String, String)]) -> (Option<Slot>, String, String) {
    // `set X=default` lines, then `load_env`.
    let get = |n: &str, d: &str| last(vars, n).unwrap_or(d).to_string();
    let order = get("ORDER", "A B");
    let (a_ok, b_ok) = (get("A_OK", "0"), get("B_OK", "0"));
    let (mut a_try, mut b_try) = (get("A_TRY", "0"), get("B_TRY", "0"));
    let mut default = 0;
    // Like the script, INDEX/OK/TRY keep their values across iterations.
    let (mut index, mut ok, mut tr) = (0, String::new(), String::new());
    for slot in order.split_whitespace() {
        if slot == "A" {
            index = 1;
            ok = a_ok.clone();
            tr = a_try.clone();
            a_try = "1".into();
        }
        if slot == "B" {
            index = 2;
            ok = b_ok.clone();
            tr = b_try.clone();
            b_try = "1".into();
        }
        if grub_int(&ok) == 1 && grub_int(&tr) == 0 {
            default = index;
            break;
        }
    }
    if default == 0 {
        if grub_int(&a_ok) == 1 && grub_int(&a_try) == 1 {
            a_try = "0".into();
        }
        if grub_int(&b_ok) == 1 && grub_int(&b_try) == 1 {
            b_try = "0".into();
        }
    }
    let booted = match default {
        1 => Some(Slot::A),
        2 => Some(Slot::B),
        _ => None,
    };
    (booted, a_try, b_try)
}

/// One power-on with RAUC's grub.cfg: decides, `save_env A_TRY B_TRY`, returns the slot
/// booted (`None` = rescue).
pub fn grub_boot(env: &mut GrubEnv) -> Option<Slot> {
    let (booted, a_try, b_try) = grub_decide(&env.vars().expect("grub env parses"));
    env.set_vars(&[("A_TRY", &a_try), ("B_TRY", &b_try)])
        .expect("save_env");
    booted
}

/// `test 0x${X} -gt 0` reads the value as hexadecimal.
fn uboot_hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap_or(0)
}

/// What the boot script of docs/firmware.md (RAUC's, counters read as hexadecimal)
/// decides for `vars`: the slot (`None` = no valid slot: tries
/// reset to 3 and `reset`) and the variables it `saveenv`s.
pub fn uboot_decide(vars: &[(String, String)]) -> (Option<Slot>, Vec<(String, String)>) {
    let get = |n: &str, d: &str| {
        last(vars, n)
            .filter(|v| !v.is_empty())
            .unwrap_or(d)
            .to_string()
    };
    let order = get("BOOT_ORDER", "A B");
    let mut left = [get("BOOT_A_LEFT", "3"), get("BOOT_B_LEFT", "3")];
    let mut booted = None;
    for word in order.split_whitespace() {
        if booted.is_some() {
            continue;
        }
        let i = match word {
            "A" => 0,
            "B" => 1,
            _ => continue,
        };
        let n = uboot_hex(&left[i]);
        if n > 0 {
            left[i] = format!("{:x}", n - 1); // setexpr prints hexadecimal
            booted = Slot::parse(word);
        }
    }
    if booted.is_none() {
        left = ["3".into(), "3".into()];
    }
    let save = vec![
        ("BOOT_ORDER".to_string(), order),
        ("BOOT_A_LEFT".to_string(), left[0].clone()),
        ("BOOT_B_LEFT".to_string(), left[1].clone()),
    ];
    (booted, save)
}

/// One power-on with RAUC's boot script: decides, `saveenv`, returns the slot booted
/// (`None` = no valid slot, the board resets).
pub fn uboot_boot(env: &mut UBootEnv) -> Option<Slot> {
    let (booted, save) = uboot_decide(&env.vars().expect("u-boot env reads"));
    let updates: Vec<(&str, Option<&str>)> = save
        .iter()
        .map(|(k, v)| (k.as_str(), Some(v.as_str())))
        .collect();
    env.set_vars(&updates).expect("saveenv");
    booted
}
