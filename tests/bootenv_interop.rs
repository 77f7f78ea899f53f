//! GRUB and U-Boot environments against the real tools (`grub-editenv`, `fw_printenv`,
//! `fw_setenv`) and against RAUC's boot logic (the simulator in `support/bootsim.rs`).

#[path = "support/bootsim.rs"]
mod bootsim;
mod common;
mod mounts;
mod require;

use evergreen::slots::grub::{BootChange, GrubEnv};
use evergreen::slots::uboot::{UBootEnv, TOOLS_LOCK};
use evergreen::slots::{BootSelector, Slot};
use evergreen::ErrorKind;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// True when `tool` can be run; otherwise says the test is skipped.
fn have(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
    if !found {
        require::missing(tool);
    }
    found
}

fn run(cmd: &mut Command) -> String {
    String::from_utf8(run_raw(cmd)).expect("utf-8 output")
}

/// `cmd`'s standard output as bytes (some listings hold bytes that are not UTF-8); it
/// must exit 0.
fn run_raw(cmd: &mut Command) -> Vec<u8> {
    let out = require::tool_output(cmd).expect("tool runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn as_map(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn vars_map(vars: Vec<(String, String)>) -> BTreeMap<String, String> {
    vars.into_iter().collect()
}

// ---- GRUB ----

/// A temp dir and the path of a `grubenv` in it, not yet created.
fn grubenv_path() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grubenv");
    (dir, path)
}

/// A block made the way a board's image build would without Evergreen: `grub-editenv
/// create`, then `set` of `vars` (`NAME=value`).
fn grub_editenv_block<S: AsRef<OsStr>>(path: &Path, vars: &[S]) {
    run(Command::new("grub-editenv").arg(path).arg("create"));
    run(Command::new("grub-editenv").arg(path).arg("set").args(vars));
}

fn grub_list(path: &Path) -> BTreeMap<String, String> {
    as_map(&run(Command::new("grub-editenv").arg(path).arg("list")))
}

/// A `size`-byte block holding `vars` (`NAME=value` lines) as GRUB lays one out, written
/// without grub-editenv.
fn write_grub_block(path: &Path, vars: &str, size: usize) {
    let mut block = format!("# GRUB Environment Block\n{vars}").into_bytes();
    block.resize(size, b'#');
    std::fs::write(path, block).unwrap();
}

/// `change` would be made in the canonical layout's power-safe way: one-byte writes only
/// (and at least one).
fn assert_one_byte_writes(env: &GrubEnv, change: BootChange) {
    let plan = env.plan(change).unwrap();
    assert!(!plan.is_empty() && plan.iter().all(|w| w.data.len() == 1));
}

#[test]
fn grub_env_written_by_us_is_read_by_grub_editenv() {
    if !have("grub-editenv") {
        return;
    }
    let (_dir, path) = grubenv_path();
    let mut env = GrubEnv::init(&path).unwrap();
    env.set_vars(&[("saved_entry", "1"), ("path", "C:\\boot")])
        .unwrap();
    env.activate(Slot::B, 1).unwrap();
    let listed = grub_list(&path);
    assert_eq!(listed["ORDER"], "B A");
    assert_eq!(listed["B_OK"], "1");
    assert_eq!(listed["B_TRY"], "0");
    assert_eq!(listed["A_OK"], "1");
    assert_eq!(listed["saved_entry"], "1");
    assert_eq!(listed["path"], "C:\\boot");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1024);
}

#[test]
fn grub_env_written_by_grub_editenv_is_read_and_kept_by_us() {
    if !have("grub-editenv") {
        return;
    }
    let (_dir, path) = grubenv_path();
    grub_editenv_block(
        &path,
        &[
            "ORDER=B A",
            "A_OK=1",
            "B_OK=1",
            "B_TRY=1",
            "A_TRY=0",
            "note=back\\slash",
        ],
    );
    let env = GrubEnv::new(&path);
    assert_eq!(env.get("ORDER").unwrap().as_deref(), Some("B A"));
    assert_eq!(env.get("B_TRY").unwrap().as_deref(), Some("1"));
    assert_eq!(env.get("note").unwrap().as_deref(), Some("back\\slash"));

    // Provisioning rewrites it once into the canonical layout, keeping every value.
    let mut env = GrubEnv::init(&path).unwrap();
    let listed = grub_list(&path);
    assert_eq!(listed, vars_map(env.vars().unwrap()));
    assert_eq!(listed["note"], "back\\slash");
    assert_eq!(listed["ORDER"], "B A");
    // From then on every change is a series of one-byte writes.
    assert_one_byte_writes(
        &env,
        BootChange::FallBack {
            good: Slot::A,
            bad: Slot::B,
        },
    );
    env.fall_back(Slot::A, Slot::B).unwrap();
    let listed = grub_list(&path);
    assert_eq!(
        (listed["ORDER"].as_str(), listed["B_OK"].as_str()),
        ("A B", "0")
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1024);
}

#[test]
fn grub_env_keeps_the_size_of_a_larger_block() {
    let (_dir, path) = grubenv_path();
    write_grub_block(&path, "foo=bar\n", 4096);
    let mut env = GrubEnv::init(&path).unwrap();
    env.activate(Slot::B, 1).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
    assert_eq!(env.get("foo").unwrap().as_deref(), Some("bar"));
}

#[test]
fn grub_trial_confirm_and_fallback_with_rauc_grub_cfg() {
    let (_dir, path) = grubenv_path();
    let mut env = GrubEnv::init(&path).unwrap();
    assert_eq!(bootsim::grub_boot(&mut env), Some(Slot::A));

    // activate B → the next boot tries B once → confirm → B keeps booting.
    env.disable(Slot::B).unwrap();
    env.activate(Slot::B, 3).unwrap();
    assert_eq!(bootsim::grub_boot(&mut env), Some(Slot::B));
    assert_eq!(env.get("B_TRY").unwrap().as_deref(), Some("1"));
    env.confirm(Slot::B).unwrap();
    for _ in 0..3 {
        assert_eq!(bootsim::grub_boot(&mut env), Some(Slot::B));
        env.confirm(Slot::B).unwrap();
    }

    // activate A with an image that never comes up: its one trial boot, then B again.
    env.disable(Slot::A).unwrap();
    env.activate(Slot::A, 3).unwrap();
    assert_eq!(bootsim::grub_boot(&mut env), Some(Slot::A));
    assert_eq!(bootsim::grub_boot(&mut env), Some(Slot::B));
    // The startup step sees B running and A unconfirmed, and records the rollback.
    env.fall_back(Slot::B, Slot::A).unwrap();
    assert_eq!(env.get("A_OK").unwrap().as_deref(), Some("0"));
    // grub.cfg sets B_TRY=1 on every boot, so the running system marks B good on every
    // boot (RAUC's mark-good service does the same); then B boots for ever.
    for _ in 0..3 {
        assert_eq!(bootsim::grub_boot(&mut env), Some(Slot::B));
        env.confirm(Slot::B).unwrap();
    }
}

#[test]
fn grub_slot_not_marked_good_after_boot_ends_in_the_rescue_entry() {
    let (_dir, path) = grubenv_path();
    let mut env = GrubEnv::init(&path).unwrap();
    // A boots, nobody marks it good: the next boot finds no slot with TRY=0 and takes
    // RAUC's rescue entry, which resets the TRY flags, so A boots again after it.
    assert_eq!(bootsim::grub_boot(&mut env), Some(Slot::A));
    assert_eq!(bootsim::grub_boot(&mut env), None);
    assert_eq!(bootsim::grub_boot(&mut env), Some(Slot::A));
}

/// A grubenv that is a symlink (to the ESP, say): its target is written and the link
/// kept; a link whose target is missing is refused, not replaced by a file GRUB never
/// reads, unless the target's directory is on another file system (the ESP, mounted).
#[test]
fn grub_env_symlink_is_followed_and_a_dangling_one_refused_unless_on_another_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp");
    let target = esp.join("grubenv");
    let link = dir.path().join("grubenv");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = GrubEnv::init(&link).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Bootloader, "{err}");
    let m = err.message();
    assert!(
        m.contains(&link.display().to_string())
            && m.contains(&target.display().to_string())
            && m.contains("is the ESP mounted?"),
        "{m}"
    );
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(!target.exists() && !esp.exists());

    // Mounted: a block from grub-editenv (or a blank one) is provisioned through the link.
    std::fs::create_dir(&esp).unwrap();
    if have("grub-editenv") {
        grub_editenv_block(&target, &["saved_entry=1"]);
    } else {
        write_grub_block(&target, "saved_entry=1\n", 1024);
    }
    let mut env = GrubEnv::init(&link).unwrap();
    env.activate(Slot::B, 1).unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    assert_eq!(
        GrubEnv::new(&target).get("ORDER").unwrap().as_deref(),
        Some("B A")
    );
    if have("grub-editenv") {
        let listed = grub_list(&link);
        assert_eq!(
            (listed["ORDER"].as_str(), listed["saved_entry"].as_str()),
            ("B A", "1")
        );
    }

    // A missing target in an existing directory of the same file system is refused too:
    // an unmounted mount point looks just like that.
    std::fs::remove_file(&target).unwrap();
    let err = GrubEnv::init(&link).unwrap_err();
    assert!(err.message().contains("is the ESP mounted?"), "{err}");
    assert!(!target.exists());

    // On another file system (the ESP mounted, never provisioned), the fresh block is made
    // where the link points. A tmpfs mounted for the test stands in for the ESP.
    let esp_mount = dir.path().join("esp-mounted");
    let Some(_esp) = mounts::Mounted::tmpfs(&esp_mount, 1024) else {
        return;
    };
    let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(p).unwrap());
    assert_ne!(dev(&esp_mount), dev(dir.path()));
    let esp_target = esp_mount.join("grubenv");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&esp_target, &link).unwrap();
    GrubEnv::init(&link).unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(std::fs::metadata(&esp_target).unwrap().len(), 1024);
    if have("grub-editenv") {
        assert_eq!(grub_list(&link)["ORDER"], "A B");
    }
}

// ---- U-Boot ----

struct UBootFixture {
    _dir: tempfile::TempDir,
    config: PathBuf,
    defenv: PathBuf,
    copies: Vec<PathBuf>,
}

const ENV_SIZE: usize = 0x2000;

/// Blank (0xff, like erased flash) env storage: `copies` files, each holding its copy
/// at offset 0x400 of a larger file, so offsets are exercised.
fn uboot_fixture(copies: usize) -> UBootFixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = String::from("# device offset size\n");
    let mut paths = Vec::new();
    for i in 0..copies {
        let p = dir.path().join(format!("env{i}.bin"));
        std::fs::write(&p, vec![0xffu8; ENV_SIZE + 0x800]).unwrap();
        config.push_str(&format!("{} 0x400 {ENV_SIZE:#x}\n", p.display()));
        paths.push(p);
    }
    let cfg = dir.path().join("fw_env.config");
    std::fs::write(&cfg, config).unwrap();
    let defenv = dir.path().join("default.env");
    std::fs::write(&defenv, "bootdelay=3\n").unwrap();
    UBootFixture {
        _dir: dir,
        config: cfg,
        defenv,
        copies: paths,
    }
}

fn fw_printenv(f: &UBootFixture) -> BTreeMap<String, String> {
    as_map(&run(Command::new("fw_printenv").arg("-c").arg(&f.config)))
}

fn fw_setenv(f: &UBootFixture, name: &str, value: impl AsRef<OsStr>) {
    run(Command::new("fw_setenv")
        .arg("-c")
        .arg(&f.config)
        .arg("-f")
        .arg(&f.defenv)
        .arg(name)
        .arg(value));
}

/// Slot A running, B empty, as a board's image build sets them with `fw_setenv`.
fn fw_setenv_slots(f: &UBootFixture) {
    fw_setenv(f, "BOOT_ORDER", "A B");
    fw_setenv(f, "BOOT_A_LEFT", "3");
    fw_setenv(f, "BOOT_B_LEFT", "0");
}

/// The environment of the fw_env.config at `config`, opened and provisioned.
fn provisioned(config: &Path) -> UBootEnv {
    let mut env = UBootEnv::open(config).unwrap();
    env.init().unwrap();
    env
}

#[test]
fn uboot_env_written_by_us_is_read_by_fw_printenv() {
    if !have("fw_printenv") {
        return;
    }
    for copies in [1, 2] {
        let f = uboot_fixture(copies);
        let mut env = provisioned(&f.config);
        env.set_vars(&[("bootcmd", Some("run rauc; boot"))])
            .unwrap();
        env.activate(Slot::B, 5).unwrap();
        let printed = fw_printenv(&f);
        assert_eq!(printed["BOOT_ORDER"], "B A", "{copies} copies");
        assert_eq!(printed["BOOT_B_LEFT"], "5");
        assert_eq!(printed["bootcmd"], "run rauc; boot");
        assert_eq!(printed, vars_map(env.vars().unwrap()));
    }
}

#[test]
fn uboot_env_written_by_fw_setenv_is_read_by_us_and_back() {
    if !have("fw_setenv") || !have("fw_printenv") {
        return;
    }
    for copies in [1, 2] {
        let f = uboot_fixture(copies);
        fw_setenv_slots(&f);
        let mut env = UBootEnv::open(&f.config).unwrap();
        assert_eq!(vars_map(env.vars().unwrap()), fw_printenv(&f));
        assert_eq!(env.tries_left(Slot::A).unwrap(), 3);
        env.activate(Slot::B, 3).unwrap();
        env.confirm(Slot::B).unwrap();
        fw_setenv(&f, "after", "us");
        let ours = vars_map(env.vars().unwrap());
        assert_eq!(ours, fw_printenv(&f));
        assert_eq!(ours["after"], "us");
        assert_eq!(ours["BOOT_ORDER"], "B A");
    }
}

/// A copy with `which=<tag>` and `flag`, built independently of the library.
fn raw_copy(tag: &str, flag: u8) -> Vec<u8> {
    let mut data = format!("BOOT_ORDER=A B\0which={tag}\0\0").into_bytes();
    data.resize(ENV_SIZE - 5, 0);
    let mut out = crc32fast::hash(&data).to_le_bytes().to_vec();
    out.push(flag);
    out.extend_from_slice(&data);
    out
}

fn put_copy(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::read(path).unwrap();
    file[0x400..0x400 + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, file).unwrap();
}

#[test]
fn redundant_env_picks_the_copy_fw_printenv_picks() {
    let tools = have("fw_printenv");
    let cases: [(u8, u8, &str); 5] = [
        (1, 2, "copy1"),
        (2, 1, "copy0"),
        (255, 0, "copy1"),
        (0, 255, "copy0"),
        (7, 7, "copy0"),
    ];
    for (f0, f1, expected) in cases {
        let f = uboot_fixture(2);
        put_copy(&f.copies[0], &raw_copy("copy0", f0));
        put_copy(&f.copies[1], &raw_copy("copy1", f1));
        let env = UBootEnv::open(&f.config).unwrap();
        assert_eq!(
            env.get("which").unwrap().as_deref(),
            Some(expected),
            "flags {f0} {f1}"
        );
        if tools {
            assert_eq!(fw_printenv(&f)["which"], expected, "flags {f0} {f1}");
        }
    }
}

#[test]
fn redundant_env_with_one_corrupt_copy_uses_the_other() {
    let tools = have("fw_printenv");
    for corrupt in [0usize, 1] {
        let f = uboot_fixture(2);
        put_copy(&f.copies[0], &raw_copy("copy0", 1));
        put_copy(&f.copies[1], &raw_copy("copy1", 2));
        let mut bad = raw_copy(&format!("copy{corrupt}"), corrupt as u8 + 1);
        bad[100] ^= 0x55;
        put_copy(&f.copies[corrupt], &bad);
        let good = format!("copy{}", 1 - corrupt);
        let mut env = UBootEnv::open(&f.config).unwrap();
        assert_eq!(env.get("which").unwrap().as_deref(), Some(good.as_str()));
        if tools {
            assert_eq!(fw_printenv(&f)["which"], good);
        }
        // Our next write replaces the corrupt copy, never the good one.
        env.activate(Slot::B, 3).unwrap();
        let untouched = std::fs::read(&f.copies[1 - corrupt]).unwrap();
        assert_eq!(
            &untouched[0x400..0x400 + 20],
            &raw_copy(&good, (2 - corrupt) as u8)[..20]
        );
        assert_eq!(env.get("BOOT_ORDER").unwrap().as_deref(), Some("B A"));
        if tools {
            assert_eq!(fw_printenv(&f)["BOOT_ORDER"], "B A");
        }
    }
}

#[test]
fn env_with_no_valid_copy_is_a_bootloader_error() {
    for copies in [1, 2] {
        let f = uboot_fixture(copies);
        let mut env = UBootEnv::open(&f.config).unwrap();
        let err = env.activate(Slot::B, 3).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Bootloader);
        assert!(err.message().contains("bad CRC"), "{err}");
    }
}

#[test]
fn unparsable_config_is_a_bootloader_error_and_missing_one_is_io() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fw_env.config");
    std::fs::write(&cfg, "/dev/mtd0 0x0\n").unwrap();
    let err = UBootEnv::open(&cfg).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Bootloader);
    assert!(err.message().contains("line 1"), "{err}");
    let err = UBootEnv::open(&dir.path().join("missing")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
}

#[test]
fn uboot_trial_confirm_and_fallback_with_rauc_boot_script() {
    let f = uboot_fixture(2);
    let mut env = provisioned(&f.config);
    assert_eq!(bootsim::uboot_boot(&mut env), Some(Slot::A));
    env.confirm(Slot::A).unwrap();

    // activate B → boot B on trial → confirm → B good, tries restored.
    env.disable(Slot::B).unwrap();
    env.activate(Slot::B, 3).unwrap();
    assert_eq!(bootsim::uboot_boot(&mut env), Some(Slot::B));
    assert_eq!(env.tries_left(Slot::B).unwrap(), 2);
    env.confirm(Slot::B).unwrap();
    assert_eq!(env.tries_left(Slot::B).unwrap(), 3);

    // activate A with an image that never confirms: three tries, then B.
    env.disable(Slot::A).unwrap();
    env.activate(Slot::A, 3).unwrap();
    let boots: Vec<Option<Slot>> = (0..5).map(|_| bootsim::uboot_boot(&mut env)).collect();
    assert_eq!(
        boots,
        [
            Some(Slot::A),
            Some(Slot::A),
            Some(Slot::A),
            Some(Slot::B),
            Some(Slot::B)
        ]
    );
    env.fall_back(Slot::B, Slot::A).unwrap();
    assert_eq!(env.get("BOOT_ORDER").unwrap().as_deref(), Some("B A"));
    assert_eq!(env.tries_left(Slot::A).unwrap(), 0);
    // The startup step then takes the failed slot out: a crash loop of B resets both
    // counters, but A is out of the order, so the failed release never starts again.
    env.disable(Slot::A).unwrap();
    assert_eq!(env.get("BOOT_ORDER").unwrap().as_deref(), Some("B"));
    let boots: Vec<Option<Slot>> = (0..8).map(|_| bootsim::uboot_boot(&mut env)).collect();
    let b = Some(Slot::B);
    assert_eq!(boots, [b, b, b, None, b, b, b, None]);
}

#[test]
fn booted_slot_comes_from_the_configured_cmdline() {
    let dir = tempfile::tempdir().unwrap();
    let cmdline = dir.path().join("cmdline");
    std::fs::write(&cmdline, "root=/dev/mmcblk0p3 rauc.slot=B\n").unwrap();
    let from = evergreen::slots::cmdline::BootedFrom {
        cmdline,
        key: "rauc.slot".into(),
    };
    let grub = GrubEnv::new(dir.path().join("grubenv")).with_booted_from(from.clone());
    assert_eq!(grub.booted().unwrap(), Some(Slot::B));
    assert!(grub.counts_tries());
    let f = uboot_fixture(1);
    let uboot = UBootEnv::open(&f.config).unwrap().with_booted_from(from);
    assert_eq!(uboot.booted().unwrap(), Some(Slot::B));
    assert!(uboot.counts_tries());
}

// ---- `evergreen provision` ----

/// Runs `evergreen provision --json` for image slots with `selector`; returns its JSON.
fn provision(dir: &Path, selector: serde_json::Value) -> serde_json::Value {
    let config = dir.join("config.json");
    let cfg = serde_json::json!({
        "product": "com.acme.board", "server": "http://127.0.0.1:9/", "target": "board",
        "trust": {"root": dir.join("root.json")}, "state_dir": dir.join("state"),
        "slots": {"kind": "image", "a": dir.join("a.img"), "b": dir.join("b.img"),
                  "selector": selector},
    });
    std::fs::write(&config, cfg.to_string()).unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_evergreen"))
        .args(["provision", "--json", "--config"])
        .arg(&config));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn provision_puts_a_grub_editenv_block_into_the_power_safe_layout() {
    if !have("grub-editenv") {
        return;
    }
    let (dir, path) = grubenv_path();
    grub_editenv_block(
        &path,
        &[
            "ORDER=A B",
            "A_OK=1",
            "A_TRY=0",
            "B_OK=0",
            "B_TRY=0",
            "kernel_args=quiet",
        ],
    );
    let before = grub_list(&path);
    let out = provision(dir.path(), serde_json::json!({"kind": "grub", "env": path}));
    assert_eq!(out["status"], "provisioned");
    assert_eq!(out["selector"], "grub");
    assert_eq!(grub_list(&path), before, "every variable kept");
    // Canonical now: the next change is one-byte writes only.
    let env = GrubEnv::new(&path);
    assert_one_byte_writes(
        &env,
        BootChange::Activate {
            slot: Slot::B,
            tries: 1,
        },
    );
}

/// The block `grub-install` leaves (`grub-editenv create`, maybe a variable set since)
/// holds no slot variables: provisioning makes it a fresh device's (A good and first, B
/// not bootable), keeping the others. Read as grub.cfg reads it, it boots nothing.
#[test]
fn provision_gives_a_block_without_slot_variables_a_fresh_devices() {
    if !have("grub-editenv") {
        return;
    }
    let (dir, path) = grubenv_path();
    grub_editenv_block(&path, &["saved_entry=1"]);
    let out = provision(dir.path(), serde_json::json!({"kind": "grub", "env": path}));
    assert_eq!(out["status"], "provisioned");
    let listed = grub_list(&path);
    let expected = [
        ("ORDER", "A B"),
        ("A_OK", "1"),
        ("A_TRY", "0"),
        ("B_OK", "0"),
        ("B_TRY", "0"),
        ("saved_entry", "1"),
    ];
    let expected: BTreeMap<String, String> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(listed, expected);
    let mut env = GrubEnv::new(&path);
    assert_eq!(bootsim::grub_boot(&mut env), Some(Slot::A));
}

#[test]
fn provision_initialises_a_blank_redundant_uboot_environment() {
    if !have("fw_printenv") {
        return;
    }
    let f = uboot_fixture(2);
    let dir = tempfile::tempdir().unwrap();
    let out = provision(
        dir.path(),
        serde_json::json!({"kind": "uboot", "config": f.config}),
    );
    assert_eq!(out["selector"], "uboot");
    let printed = fw_printenv(&f);
    assert_eq!(printed["BOOT_ORDER"], "A", "{printed:?}");
    assert_eq!(printed["BOOT_B_LEFT"], "0", "{printed:?}");
    // A second run leaves a valid environment as it is.
    fw_setenv(&f, "note", "kept");
    provision(
        dir.path(),
        serde_json::json!({"kind": "uboot", "config": f.config}),
    );
    assert_eq!(fw_printenv(&f)["note"], "kept");
}

// ---- What the tools write, kept as they wrote it ----

fn os(bytes: &[u8]) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(bytes).to_owned()
}

fn has_line(listing: &[u8], line: &[u8]) -> bool {
    listing.split(|&c| c == b'\n').any(|l| l == line)
}

#[test]
fn grub_bytes_that_are_not_utf8_survive_provisioning_and_changes() {
    if !have("grub-editenv") {
        return;
    }
    let (_dir, path) = grubenv_path();
    grub_editenv_block(&path, &[os(b"latin=caf\xe9"), "ORDER=A B".into()]);
    // The rewrite into the canonical layout, an activation, a general set.
    let mut env = GrubEnv::init(&path).unwrap();
    env.activate(Slot::B, 1).unwrap();
    env.set_vars(&[("other", "1")]).unwrap();
    let listed = run_raw(Command::new("grub-editenv").arg(&path).arg("list"));
    assert!(
        has_line(&listed, b"latin=caf\xe9"),
        "{}",
        String::from_utf8_lossy(&listed)
    );
    assert!(has_line(&listed, b"ORDER=B A"));
    assert_eq!(env.get("latin").unwrap().as_deref(), Some("caf\u{fffd}"));
}

#[test]
fn uboot_bytes_that_are_not_utf8_survive_changes() {
    if !have("fw_setenv") || !have("fw_printenv") {
        return;
    }
    for copies in [1, 2] {
        let f = uboot_fixture(copies);
        fw_setenv(&f, "BOOT_ORDER", "A B");
        fw_setenv(&f, "latin", os(b"caf\xe9"));
        let mut env = UBootEnv::open(&f.config).unwrap();
        env.activate(Slot::B, 3).unwrap();
        env.set_vars(&[("other", Some("1"))]).unwrap();
        let listed = run_raw(Command::new("fw_printenv").arg("-c").arg(&f.config));
        assert!(
            has_line(&listed, b"latin=caf\xe9"),
            "{copies} copies: {}",
            String::from_utf8_lossy(&listed)
        );
        assert!(has_line(&listed, b"BOOT_ORDER=B A"));
        assert_eq!(env.get("latin").unwrap().as_deref(), Some("caf\u{fffd}"));
    }
}

#[test]
fn names_and_values_an_environment_cannot_hold_are_refused() {
    let (_dir, path) = grubenv_path();
    let mut grub = GrubEnv::init(&path).unwrap();
    let before = std::fs::read(grub.path()).unwrap();
    for (name, value) in [
        ("a=b", "1"),
        ("", "1"),
        ("#x", "1"),
        ("x\ny", "1"),
        ("n\0ul", "1"),
        ("x", "a\0b"),
    ] {
        let err = grub.set_vars(&[(name, value)]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.message().contains(&format!("{name:?}")), "{err}");
    }
    assert_eq!(std::fs::read(grub.path()).unwrap(), before);

    let f = uboot_fixture(1);
    let mut uboot = provisioned(&f.config);
    let before = std::fs::read(&f.copies[0]).unwrap();
    for (name, value) in [
        ("a=b", Some("1")),
        ("a=b", None),
        ("", Some("1")),
        ("n\0ul", Some("1")),
        ("x", Some("a\0b")),
    ] {
        let err = uboot.set_vars(&[(name, value)]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.message().contains(&format!("{name:?}")), "{err}");
    }
    assert_eq!(std::fs::read(&f.copies[0]).unwrap(), before);
}

/// A single copy with `data` (the entries and their end) and a valid CRC.
fn raw_single_copy(data: &[u8]) -> Vec<u8> {
    let mut data = data.to_vec();
    data.resize(ENV_SIZE - 4, 0);
    let mut out = crc32fast::hash(&data).to_le_bytes().to_vec();
    out.extend_from_slice(&data);
    out
}

#[test]
fn uboot_repeated_names_read_and_write_the_last_like_fw_printenv() {
    let tools = have("fw_printenv");
    let f = uboot_fixture(1);
    put_copy(
        &f.copies[0],
        &raw_single_copy(b"BOOT_ORDER=A B\0dup=1\0BOOT_ORDER=B A\0dup=2\0\0"),
    );
    let mut env = UBootEnv::open(&f.config).unwrap();
    assert_eq!(env.get("BOOT_ORDER").unwrap().as_deref(), Some("B A"));
    if tools {
        let printed = fw_printenv(&f);
        assert_eq!(
            (printed["BOOT_ORDER"].as_str(), printed["dup"].as_str()),
            ("B A", "2")
        );
    }
    env.activate(Slot::A, 3).unwrap();
    let raw = std::fs::read(&f.copies[0]).unwrap();
    let entries: Vec<&[u8]> = raw[0x404..]
        .split(|&c| c == 0)
        .take_while(|e| !e.is_empty())
        .collect();
    let orders: Vec<&&[u8]> = entries
        .iter()
        .filter(|e| e.starts_with(b"BOOT_ORDER="))
        .collect();
    assert_eq!(
        orders,
        [&&b"BOOT_ORDER=A B"[..]],
        "one BOOT_ORDER, the new one"
    );
    assert_eq!(env.get("BOOT_ORDER").unwrap().as_deref(), Some("A B"));
    assert_eq!(env.get("dup").unwrap().as_deref(), Some("2"));
    if tools {
        let printed = fw_printenv(&f);
        assert_eq!(
            (printed["BOOT_ORDER"].as_str(), printed["dup"].as_str()),
            ("A B", "2")
        );
    }
}

/// The bytes of every copy's file.
fn files(f: &UBootFixture) -> Vec<Vec<u8>> {
    f.copies.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// `result` is the refusal of a write that would fill the data area to its last byte
/// (no room for the empty entry), and no copy changed from `before`.
fn refused_as_full(
    result: evergreen::Result<()>,
    f: &UBootFixture,
    before: &[Vec<u8>],
    copies: usize,
) {
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Bootloader, "{err}");
    let need = format!("need {} bytes, the copy has {ENV_SIZE}", ENV_SIZE + 1);
    assert!(err.message().contains(&need), "{copies} copies: {err}");
    assert!(
        before == files(f),
        "{copies} copies: a full copy was written"
    );
}

/// `fw_setenv` fills the data area to its last byte when a value just fits: the last
/// entry's NUL is the area's last byte and no empty entry follows. We read such an
/// environment and keep it, but never write one (see the next test): a change that needs
/// the whole area is a `bootloader` error and nothing is written. (Here `fw_setenv` fills
/// copy 0 of the pair, which `fw_printenv` 0.3.2 then can't read.)
#[test]
fn uboot_a_full_environment_as_fw_setenv_writes_it_is_read_and_kept() {
    if !have("fw_setenv") || !have("fw_printenv") {
        return;
    }
    for copies in [1, 2] {
        let f = uboot_fixture(copies);
        fw_setenv_slots(&f);
        let mut expected = fw_printenv(&f);
        let used: usize = expected.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        let area = ENV_SIZE - if copies == 2 { 5 } else { 4 };
        let fill = "v".repeat(area - used - "fill".len() - 2);
        fw_setenv(&f, "fill", &fill);
        expected.insert("fill".into(), fill.clone());
        let full = f.copies.iter().any(|p| {
            let raw = std::fs::read(p).unwrap();
            raw[0x400 + ENV_SIZE - 2..0x400 + ENV_SIZE] == *b"v\0"
        });
        assert!(full, "{copies} copies: fw_setenv filled the data area");
        if copies == 1 {
            assert_eq!(fw_printenv(&f), expected);
        }
        let before = files(&f);
        let mut env = UBootEnv::open(&f.config).unwrap();
        assert_eq!(vars_map(env.vars().unwrap()), expected, "{copies} copies");
        assert_eq!(env.get("fill").unwrap(), Some(fill.clone()));
        env.init().unwrap();
        assert!(before == files(&f), "{copies} copies: provisioning wrote");
        // Same sizes: the new copy would be full too, without the empty entry.
        refused_as_full(env.activate(Slot::B, 3).map(drop), &f, &before, copies);
        assert_eq!(vars_map(env.vars().unwrap()), expected);
    }
}

/// Everything we write ends with the empty entry, so `fw_printenv` (libubootenv 0.3.2)
/// reads it back: it reads entries past the end of a full data area, and for copy 0 of a
/// pair runs into copy 1's CRC and fails. Filling the last byte is refused.
#[test]
fn uboot_never_writes_a_full_environment() {
    let tools = have("fw_printenv");
    for copies in [1, 2] {
        let f = uboot_fixture(copies);
        let mut env = provisioned(&f.config);
        if copies == 2 {
            // Copy 1 is current now, so the next write goes to copy 0.
            env.set_vars(&[("x", Some("1"))]).unwrap();
        }
        let used: usize = env
            .vars()
            .unwrap()
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum();
        let start = if copies == 2 { 5 } else { 4 };
        // A value that ends its entry on the data area's last byte.
        let full = "v".repeat(ENV_SIZE - start - used - "fill".len() - 2);
        let before = files(&f);
        refused_as_full(env.set_vars(&[("fill", Some(&full))]), &f, &before, copies);
        // One byte less fits with its empty entry, in copy 0, and fw_printenv reads it.
        env.set_vars(&[("fill", Some(&full[1..]))]).unwrap();
        let raw = std::fs::read(&f.copies[0]).unwrap();
        assert_eq!(&raw[0x400 + ENV_SIZE - 3..0x400 + ENV_SIZE], b"v\0\0");
        if tools {
            let printed = fw_printenv(&f);
            assert_eq!(printed, vars_map(env.vars().unwrap()), "{copies} copies");
            assert_eq!(printed["fill"], full[1..]);
        }
    }
}

#[test]
fn uboot_provisioning_never_overwrites_an_environment_it_could_not_read_whole() {
    if !have("fw_setenv") {
        return;
    }
    // A redundant pair written by fw_setenv, then copy 1's file cut short.
    let f = uboot_fixture(2);
    fw_setenv(&f, "ethaddr", "00:11:22:33:44:55");
    fw_setenv(&f, "serial", "1234");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&f.copies[1])
        .unwrap();
    file.set_len(0x800).unwrap();
    let before = std::fs::read(&f.copies[0]).unwrap();
    let mut env = UBootEnv::open(&f.config).unwrap();
    let err = env.init().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Bootloader, "{err}");
    let m = err.message();
    let dev = f.copies[1].display().to_string();
    assert!(
        m.contains(&dev)
            && m.contains("expected 0x2000 bytes at 0x400")
            && m.contains("device of 0x800 bytes"),
        "{m}"
    );
    assert_eq!(
        std::fs::read(&f.copies[0]).unwrap(),
        before,
        "copy 0 was written"
    );
    // A missing copy is an I/O error, and nothing is written either.
    std::fs::remove_file(&f.copies[1]).unwrap();
    assert_eq!(env.init().unwrap_err().kind(), ErrorKind::Io);
    assert_eq!(std::fs::read(&f.copies[0]).unwrap(), before);

    // A copy whose CRC is right but whose entries never end is not a blank device.
    let f = uboot_fixture(1);
    put_copy(&f.copies[0], &raw_single_copy(&vec![b'x'; ENV_SIZE - 4]));
    let before = std::fs::read(&f.copies[0]).unwrap();
    let mut env = UBootEnv::open(&f.config).unwrap();
    assert_eq!(env.init().unwrap_err().kind(), ErrorKind::Bootloader);
    assert_eq!(std::fs::read(&f.copies[0]).unwrap(), before);
}

#[test]
fn uboot_config_lines_as_libubootenv_reads_them() {
    let tools = have("fw_printenv");
    // A comment after the fields, columns after the fifth, a third line (ignored).
    let f = uboot_fixture(2);
    let [c0, c1] = [&f.copies[0], &f.copies[1]].map(|p| p.display().to_string());
    std::fs::write(
        &f.config,
        format!("{c0} 0x400 0x2000 # copy 0\n{c1} 0x400 0x2000 0x2000 1 0 x\n{c0} 0 0x2000\n"),
    )
    .unwrap();
    let mut env = provisioned(&f.config);
    env.activate(Slot::B, 3).unwrap();
    if tools {
        assert_eq!(fw_printenv(&f)["BOOT_ORDER"], "B A");
    }
    // A negative offset counts from the end of the device.
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("disk");
    std::fs::write(&dev, vec![0xffu8; 0x3000]).unwrap();
    let cfg = dir.path().join("fw_env.config");
    std::fs::write(&cfg, format!("{} -0x2000 0x2000\n", dev.display())).unwrap();
    let mut env = provisioned(&cfg);
    let raw = std::fs::read(&dev).unwrap();
    assert!(
        raw[..0x1000].iter().all(|&b| b == 0xff),
        "written at 0x1000"
    );
    assert!(raw[0x1004..].starts_with(b"BOOT_ORDER=A\0"));
    env.activate(Slot::B, 3).unwrap();
    assert_eq!(env.get("BOOT_ORDER").unwrap().as_deref(), Some("B A"));
    // Further back than the device is long: an error naming both.
    std::fs::write(&cfg, format!("{} -0x4000 0x2000\n", dev.display())).unwrap();
    let err = UBootEnv::open(&cfg).unwrap().init().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Bootloader);
    assert!(
        err.message()
            .contains("0x2000 bytes at 0x4000 before the end of")
            && err.message().contains("found a device of 0x3000 bytes"),
        "{err}"
    );
}

/// Two copies sharing a byte of one device, however the config names them (offsets of
/// either sign, another path to the same file): writing one would overwrite the copy
/// that was read, so nothing is written and it is a `bootloader` error.
#[test]
fn uboot_overlapping_copies_are_refused_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("disk");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&dev, &link).unwrap();
    let hard = dir.path().join("hard");
    let cfg = dir.path().join("fw_env.config");
    let [d, l, h] = [&dev, &link, &hard].map(|p| p.display().to_string());
    for (len, text) in [
        (0x100, format!("{d} 0 0x100\n{d} -0x100 0x100\n")),
        // Another name of the same file: its real path differs, its inode does not.
        (0x200, format!("{d} 0 0x100\n{h} 0x80 0x100\n")),
        (0x180, format!("{d} 0x80 0x100\n{d} -0x100 0x100\n")),
        (0x180, format!("{d} -0x100 0x100\n{d} 0 0x100\n")),
        (0x200, format!("{d} 0 0x100\n{l} 0x80 0x100\n")),
        (0x200, format!("{d} 0 0x100\n{d} 0xff 0x100\n")),
    ] {
        std::fs::write(&dev, vec![0xffu8; len]).unwrap();
        let _ = std::fs::remove_file(&hard);
        std::fs::hard_link(&dev, &hard).unwrap();
        std::fs::write(&cfg, &text).unwrap();
        let mut env = UBootEnv::open(&cfg).unwrap();
        let err = env.init().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Bootloader, "{text}: {err}");
        assert!(err.message().contains("don't overlap"), "{text}: {err}");
        assert!(
            [&d, &l, &h]
                .iter()
                .any(|p| err.message().contains(p.as_str())),
            "{err}"
        );
        assert_eq!(std::fs::read(&dev).unwrap(), vec![0xffu8; len], "{text}");
    }
    // Copies that touch without sharing a byte are a pair, and fw_printenv reads it
    // (libubootenv takes negative offsets on block devices only).
    for text in [
        format!("{d} 0 0x100\n{d} -0x100 0x100\n"),
        format!("{d} 0 0x100\n{l} 0x100 0x100\n"),
    ] {
        std::fs::write(&dev, vec![0xffu8; 0x200]).unwrap();
        std::fs::write(&cfg, &text).unwrap();
        let mut env = provisioned(&cfg);
        env.activate(Slot::B, 3).unwrap();
        assert_eq!(env.get("BOOT_ORDER").unwrap().as_deref(), Some("B A"));
        if !text.contains(" -") && have("fw_printenv") {
            let printed = as_map(&run(Command::new("fw_printenv").arg("-c").arg(&cfg)));
            assert_eq!(printed, vars_map(env.vars().unwrap()));
        }
    }
}

/// `fw_setenv NAME ""` stores `NAME=` (it does not delete it), and RAUC's boot script
/// reads an empty `BOOT_ORDER` or `BOOT_X_LEFT` as unset (`test -n … || setenv BOOT_ORDER
/// "A B"`, `… || setenv BOOT_X_LEFT 3`): we read the next boot as the script makes it.
#[test]
fn uboot_empty_values_read_as_the_boot_script_defaults_them() {
    if !have("fw_setenv") || !have("fw_printenv") {
        return;
    }
    let f = uboot_fixture(2);
    fw_setenv_slots(&f);
    let env = UBootEnv::open(&f.config).unwrap();
    // (variable set, the slot preferred, the slot booted next)
    for (name, value, preferred, next) in [
        ("BOOT_B_LEFT", "", Slot::A, Slot::A),
        ("BOOT_ORDER", "B A", Slot::B, Slot::B),
        ("BOOT_ORDER", "", Slot::A, Slot::A),
        ("BOOT_A_LEFT", "", Slot::A, Slot::A),
    ] {
        fw_setenv(&f, name, value);
        let vars = env.vars().unwrap();
        assert_eq!(vars_map(vars.clone()), fw_printenv(&f));
        assert_eq!(bootsim::uboot_decide(&vars).0, Some(next), "{vars:?}");
        let plan = env.boot_plan().unwrap().unwrap();
        assert_eq!(
            (
                plan.preferred,
                plan.next,
                plan.preferred_left,
                plan.preferred_spent
            ),
            (preferred, Some(next), 3, false),
            "{name}={value:?}: {vars:?}"
        );
        assert_eq!(env.tries_left(Slot::B).unwrap(), 3, "{name}={value:?}");
    }
}

/// `fw_setenv` holds `/var/lock/fw_printenv.lock` from reading the environment to writing
/// the inactive copy. A change of ours made meanwhile waits for it: written at once, it
/// would go to the same copy with the same flag, and one of the two changes would be lost.
#[test]
fn uboot_writes_wait_for_the_lock_fw_setenv_holds() {
    if !have("fw_setenv") || !have("fw_printenv") {
        return;
    }
    let f = uboot_fixture(2);
    let mut env = provisioned(&f.config);
    let before = files(&f);
    // fw_setenv between its read and its write.
    let held = evergreen::fsutil::lock_exclusive(Path::new(TOOLS_LOCK)).unwrap();
    let (done, ours) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(env.activate(Slot::B, 3)));
    // fw_setenv run meanwhile waits too.
    let theirs = Command::new("fw_setenv")
        .arg("-c")
        .arg(&f.config)
        .args(["theirs", "1"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(files(&f), before, "written while fw_setenv held its lock");
    drop(held);
    let limit = std::time::Duration::from_secs(30);
    let ours = ours.recv_timeout(limit);
    assert!(
        matches!(ours, Ok(Ok(()))),
        "our write, {limit:?} after the lock was freed: {ours:?}"
    );
    assert!(require::finish_within(theirs, limit).status.success());
    let printed = fw_printenv(&f);
    assert_eq!(
        (printed["BOOT_ORDER"].as_str(), printed["theirs"].as_str()),
        ("B A", "1"),
        "{printed:?}"
    );
}

/// RAUC's scripts compare each word of the boot order with `A` and `B` exactly
/// (`[ "$SLOT" == "A" ]`, `test "x${BOOT_SLOT}" = "xA"`): a word in lower case names no
/// slot, and we read the next boot as they do.
#[test]
fn a_boot_order_in_lower_case_names_no_slot() {
    if !have("grub-editenv") || !have("fw_setenv") {
        return;
    }
    let (_dir, path) = grubenv_path();
    for order in ["b A", "A b"] {
        let set = format!("ORDER={order}");
        grub_editenv_block(&path, &[&set, "A_OK=1", "A_TRY=0", "B_OK=1", "B_TRY=0"]);
        let env = GrubEnv::new(&path);
        let (grub, _, _) = bootsim::grub_decide(&env.vars().unwrap());
        let plan = env.boot_plan().unwrap().unwrap();
        assert_eq!(plan.next, grub, "GRUB, ORDER={order:?}");

        let f = uboot_fixture(2);
        fw_setenv_slots(&f);
        fw_setenv(&f, "BOOT_B_LEFT", "3");
        fw_setenv(&f, "BOOT_ORDER", order);
        let env = UBootEnv::open(&f.config).unwrap();
        let (uboot, _) = bootsim::uboot_decide(&env.vars().unwrap());
        let plan = env.boot_plan().unwrap().unwrap();
        assert_eq!(plan.next, uboot, "U-Boot, BOOT_ORDER={order:?}");
        assert_eq!(plan.preferred, Slot::A, "{order:?}");
    }
}
