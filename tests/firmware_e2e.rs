//! Firmware updates end to end (DESIGN §6): two image slots in plain files, a GRUB
//! environment block or a redundant U-Boot environment, and a repository published with
//! the real CLI and served on loopback.
//!
//! Between steps the board (`support/board.rs`) "powers on": RAUC's own boot logic
//! (`support/bootsim.rs`, written from RAUC's grub.cfg and boot script, not from our
//! selectors) runs against the environment file and writes the slot it picked into a fake
//! kernel command line, which is all Evergreen ever learns about the boot. Every device step then goes through the same
//! config JSON, either with the `evergreen` CLI or with the library.

#[path = "support/board.rs"]
mod board;
#[path = "support/bootsim.rs"]
mod bootsim;
mod common;
mod mounts;
mod require;
mod support;

use board::{pattern_file, release_image, served_board, Board, Loader, MIB, PRODUCT, TARGET};
use common::Repo;
use evergreen::fetch::CancelToken;
use evergreen::slots::grub::{apply_all, BootChange, GrubEnv};
use evergreen::slots::{BootSelector, Slot};
use evergreen::state::SlotStatus;
use evergreen::{Activation, Check, Config, ErrorKind, Startup, Updater};
use mounts::{LoopDevice, Mounted};
use semver::Version;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use support::TestServer;

/// The plan of the release the check must find (`panic`, the message when it finds none),
/// downloaded.
fn downloaded(up: &Updater, panic: &str) -> evergreen::Offer {
    let Check::Available(offer) = up.check().unwrap() else {
        panic!("{panic}");
    };
    let plan = up.plan(&offer).unwrap();
    up.download(&plan, &mut |_, _| {}, &CancelToken::new())
        .unwrap();
    plan
}

fn json_out(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// Check, download, install and activate with the library, as a host would.
fn update_with_library(up: &Updater) -> Slot {
    let plan = downloaded(up, "expected an update to be available");
    let slot = up.install(&plan).unwrap();
    match up.activate(false).unwrap() {
        Activation::Activated { slot: active, .. } => assert_eq!(active, slot),
        other => panic!("expected the new slot activated, found {other:?}"),
    }
    slot
}

/// Runs `update --yes --json` on `board`, which must activate the release in `slot`.
fn activated_by_update(board: &Board, slot: &str) {
    let out = json_out(&board.dev.expect("update", &["--yes", "--json"], 0));
    assert_eq!(
        (&out["status"], &out["slot"]),
        (&json!("activated"), &json!(slot))
    );
}

/// Powers `board` on `tries` times into `trial`, never confirming, and then once more: the
/// bootloader must start the other slot, and the startup step report the rollback.
fn never_confirmed_falls_back(board: &Board, trial: Slot, tries: usize) {
    for _ in 0..tries {
        assert_eq!(board.power_on(), Some(trial));
        assert_eq!(board.boot()["status"], "trial");
    }
    let good = trial.other();
    assert_eq!(board.power_on(), Some(good), "the bootloader falls back");
    let boot = board.boot();
    assert_eq!(boot["status"], "rolled_back", "{boot}");
    assert_eq!(
        (&boot["from"], &boot["to"]),
        (&json!(trial.as_str()), &json!(good.as_str()))
    );
}

/// An update made after GRUB started A and before this boot's startup step ran (a timer,
/// a first-boot service): GRUB's mark of that start is still on A. The activation clears
/// it, so a release that never confirms gets its one attempt and then A boots again; with
/// the mark left, nothing was bootable, the rescue entry ran and the failed release ran a
/// second time.
#[test]
fn grub_an_update_before_this_boots_startup_step_still_falls_back_to_the_running_slot() {
    let (repo, _server, board) = served_board("grub-early", Loader::Grub);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.grub("A_TRY"), "1", "GRUB marks the start");
    release_image(&repo, "2.0.0", MIB, 2);
    activated_by_update(&board, "b");
    assert_eq!(
        (board.grub("ORDER"), board.grub("A_OK"), board.grub("A_TRY")),
        ("B A".into(), "1".into(), "0".into())
    );

    // 2.0.0 never confirms: one attempt, then A.
    never_confirmed_falls_back(&board, Slot::B, 1);
}

/// The same for a second update, when the idle slot holds a good release: taking it out
/// of the boot order would have left GRUB nothing to boot (the running slot's mark still
/// on), so the update was refused with "Disable(A) would leave no bootable slot" and the
/// next boot quietly started the older release. The running slot's mark is cleared first.
#[test]
fn grub_a_second_update_before_the_startup_step_installs_and_keeps_the_running_slot() {
    let (repo, _server, board) = served_board("grub-early-2", Loader::Grub);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot()["status"], "normal");
    release_image(&repo, "2.0.0", MIB, 2);
    board.dev.expect("update", &["--yes"], 0);
    assert_eq!(board.power_on(), Some(Slot::B));
    assert_eq!(board.boot()["status"], "trial");
    board.dev.expect("confirm", &[], 0);

    assert_eq!(board.power_on(), Some(Slot::B));
    assert_eq!(board.grub("B_TRY"), "1", "GRUB marks the start");
    release_image(&repo, "3.0.0", MIB, 3);
    activated_by_update(&board, "a");
    assert_eq!(
        (board.grub("ORDER"), board.grub("B_OK"), board.grub("B_TRY")),
        ("A B".into(), "1".into(), "0".into())
    );
    never_confirmed_falls_back(&board, Slot::A, 1);
}

/// The same with U-Boot, whose script spends one of the running slot's tries on every
/// start: three starts of A with no startup step between them (a crash loop of the app, a
/// service that ran the update first) leave `BOOT_A_LEFT=0`. The activation gives A its
/// tries back; left at 0, a release that never confirms found no slot to fall back to, the
/// script reset both counters and the broken release ran its three tries a second time.
#[test]
fn uboot_an_update_before_the_startup_step_still_falls_back_to_the_running_slot() {
    let (repo, _server, board) = served_board("uboot-early", Loader::UBoot);
    for left in ["2", "1", "0"] {
        assert_eq!(board.power_on(), Some(Slot::A));
        assert_eq!(board.uboot("BOOT_A_LEFT"), left);
    }
    release_image(&repo, "2.0.0", MIB, 2);
    activated_by_update(&board, "b");
    assert_eq!(
        (board.uboot("BOOT_ORDER"), board.uboot("BOOT_A_LEFT")),
        ("B A".into(), "3".into())
    );

    // 2.0.0 never confirms: its three tries, then A.
    never_confirmed_falls_back(&board, Slot::B, 3);
    // Nothing of the image was downloaded into the state directory: it streamed into B.
    assert_eq!(board.dev.downloads(), Vec::<String>::new());
}

#[test]
fn grub_a_64_mib_image_goes_to_the_idle_slot_and_a_release_that_never_confirms_falls_back() {
    let (repo, _server, board) = served_board("grub", Loader::Grub);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot(), json!({"status": "normal"}));
    let factory = board.slot_bytes(Slot::A);

    // 2.0.0: a 64 MiB root file system, written into B while A runs.
    let good = release_image(&repo, "2.0.0", 64 * MIB, 2);
    let out = json_out(&board.dev.expect("update", &["--yes", "--json"], 0));
    assert_eq!(out["status"], "activated");
    assert_eq!(out["slot"], "b");
    assert!(board.slot_bytes(Slot::B) == std::fs::read(&good).unwrap());
    assert!(
        board.slot_bytes(Slot::A) == factory,
        "the running slot A was written"
    );
    assert_eq!(board.grub("ORDER"), "B A");
    assert_eq!(
        (board.grub("B_OK"), board.grub("B_TRY")),
        ("1".into(), "0".into())
    );
    let s = board.dev.status();
    assert_eq!((&s["primary"], &s["booted"]), (&json!("b"), &json!("a")));
    assert_eq!(
        s["slots"]["b"],
        json!({"status": "trial", "version": "2.0.0"})
    );
    // GRUB's variables give one attempt, whatever `trial.tries` says, and status says so.
    assert_eq!(s["trial"], json!({"slot": "b", "tries_left": 1}));

    // GRUB tries B; the new system comes up and confirms itself.
    assert_eq!(board.power_on(), Some(Slot::B));
    // GRUB spent that attempt starting B: one more start without a confirm falls back.
    assert_eq!(
        board.boot(),
        json!({"status": "trial", "slot": "b", "tries_left": 0})
    );
    assert_eq!(
        board.dev.status()["trial"],
        json!({"slot": "b", "tries_left": 0})
    );
    board.dev.expect("confirm", &[], 0);
    let s = board.dev.status();
    assert_eq!(
        s["slots"]["b"],
        json!({"status": "good", "version": "2.0.0"})
    );
    assert_eq!(s["trial"], Value::Null);
    assert_eq!(
        (board.grub("B_OK"), board.grub("B_TRY")),
        ("1".into(), "0".into())
    );
    // grub.cfg sets B_TRY=1 on every boot; the startup step marks B good again each time.
    for _ in 0..3 {
        assert_eq!(board.power_on(), Some(Slot::B));
        assert_eq!(board.boot(), json!({"status": "normal"}));
    }

    // 3.0.0 boots but never confirms: GRUB gives it one try, then starts B again.
    let bad = release_image(&repo, "3.0.0", MIB, 3);
    let running = board.slot_bytes(Slot::B);
    let out = json_out(&board.dev.expect("update", &["--yes", "--json"], 0));
    assert_eq!(out["slot"], "a");
    assert!(
        board.slot_bytes(Slot::B) == running,
        "the running slot B was written"
    );
    assert!(board.slot_bytes(Slot::A) == std::fs::read(&bad).unwrap());
    assert_eq!(board.grub("ORDER"), "A B");
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot()["status"], "trial");
    assert_eq!(
        board.power_on(),
        Some(Slot::B),
        "GRUB skips the tried slot A"
    );
    let boot = board.boot();
    assert_eq!(boot["status"], "rolled_back", "{boot}");
    assert_eq!((&boot["from"], &boot["to"]), (&json!("a"), &json!("b")));
    let s = board.dev.status();
    assert_eq!(s["primary"], "b");
    assert_eq!(
        s["slots"]["a"],
        json!({"status": "bad", "version": "3.0.0"})
    );
    assert_eq!(
        s["slots"]["b"],
        json!({"status": "good", "version": "2.0.0"})
    );
    assert_eq!(
        (board.grub("ORDER"), board.grub("A_OK")),
        ("B A".into(), "0".into())
    );
    assert_eq!(board.power_on(), Some(Slot::B));
    assert_eq!(board.boot(), json!({"status": "normal"}));
    // 3.0.0 failed on this board: it is not offered again.
    let check = json_out(&board.dev.expect("check", &["--json"], 0));
    assert_eq!(check["status"], "up_to_date");
}

#[test]
fn uboot_counts_tries_of_a_release_that_never_confirms_then_falls_back() {
    let (repo, _server, board) = served_board("uboot", Loader::UBoot);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.updater().startup().unwrap(), Startup::Normal);
    assert_eq!(
        board.uboot("BOOT_A_LEFT"),
        "3",
        "a good slot gets its tries back"
    );

    let good = release_image(&repo, "2.0.0", 4 * MIB, 2);
    assert_eq!(update_with_library(&board.updater()), Slot::B);
    assert!(board.slot_bytes(Slot::B) == std::fs::read(&good).unwrap());
    assert_eq!(board.uboot("BOOT_ORDER"), "B A");
    assert_eq!(board.uboot("BOOT_B_LEFT"), "3");
    assert_eq!(board.power_on(), Some(Slot::B));
    assert_eq!(board.uboot("BOOT_B_LEFT"), "2");
    let up = board.updater();
    // The boot script counts the starts; startup and status report its count.
    let trial = Startup::Trial {
        slot: Slot::B,
        tries_left: 2,
    };
    assert_eq!(up.startup().unwrap(), trial);
    assert_eq!(up.status().unwrap().trial.map(|t| t.tries_left), Some(2));
    up.confirm().unwrap();
    assert_eq!(up.state().unwrap().b.status, SlotStatus::Good);
    assert_eq!(board.uboot("BOOT_B_LEFT"), "3");

    let bad = release_image(&repo, "3.0.0", MIB, 3);
    let running = board.slot_bytes(Slot::B);
    assert_eq!(update_with_library(&board.updater()), Slot::A);
    assert!(
        board.slot_bytes(Slot::B) == running,
        "the running slot B was written"
    );
    assert!(board.slot_bytes(Slot::A) == std::fs::read(&bad).unwrap());
    assert_eq!(board.uboot("BOOT_ORDER"), "A B");
    // The boot script spends A's three tries, one per power-on.
    for left in ["2", "1", "0"] {
        assert_eq!(board.power_on(), Some(Slot::A));
        assert_eq!(board.uboot("BOOT_A_LEFT"), left);
        let trial = Startup::Trial {
            slot: Slot::A,
            tries_left: left.parse().unwrap(),
        };
        assert_eq!(board.updater().startup().unwrap(), trial);
    }
    assert_eq!(board.power_on(), Some(Slot::B), "no tries left for A");
    let up = board.updater();
    match up.startup().unwrap() {
        Startup::RolledBack { from, to, .. } => assert_eq!((from, to), (Slot::A, Slot::B)),
        other => panic!("expected a rollback, found {other:?}"),
    }
    let st = up.state().unwrap();
    assert_eq!((st.primary, st.a.status), (Slot::B, SlotStatus::Bad));
    assert_eq!(st.failed, [Version::new(3, 0, 0)]);
    assert_eq!(board.uboot("BOOT_ORDER"), "B");
    assert_eq!(board.uboot("BOOT_A_LEFT"), "0");
    assert_eq!(board.uboot("BOOT_B_LEFT"), "3");
    assert!(matches!(up.check().unwrap(), Check::UpToDate { .. }));
    for _ in 0..4 {
        assert_eq!(board.power_on(), Some(Slot::B));
        assert_eq!(board.updater().startup().unwrap(), Startup::Normal);
    }
}

#[test]
fn a_fresh_board_running_slot_b_installs_into_slot_a() {
    let (repo, _server, board) = served_board("fromb", Loader::Grub);
    // Provisioned with the factory image in B: GRUB boots B, A is the idle slot.
    std::fs::copy(&board.a, &board.b).unwrap();
    let mut env = GrubEnv::init(&board.env).unwrap();
    env.activate(Slot::B, 1).unwrap();
    env.confirm(Slot::B).unwrap();
    assert_eq!(board.power_on(), Some(Slot::B));
    assert_eq!(board.boot()["status"], "normal");
    let factory = board.slot_bytes(Slot::B);

    let image = release_image(&repo, "2.0.0", MIB, 2);
    let out = json_out(&board.dev.expect("update", &["--yes", "--json"], 0));
    assert_eq!(out["slot"], "a");
    assert!(
        board.slot_bytes(Slot::B) == factory,
        "the running slot B was written"
    );
    assert!(board.slot_bytes(Slot::A) == std::fs::read(&image).unwrap());
    let s = board.dev.status();
    assert_eq!(
        s["slots"]["b"],
        json!({"status": "good", "version": "1.0.0"})
    );
    assert_eq!(
        s["slots"]["a"],
        json!({"status": "trial", "version": "2.0.0"})
    );
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot()["slot"], "a");
    board.dev.expect("confirm", &[], 0);
    assert_eq!(board.dev.status()["slots"]["a"]["status"], "good");
}

#[test]
fn grub_keeps_booting_a_factory_image_evergreen_never_installed() {
    let (_repo, _server, board) = served_board("factory", Loader::Grub);
    let board = board.without_current_version();
    // Without the startup step marking it good, every second boot would be the rescue entry.
    for _ in 0..4 {
        assert_eq!(board.power_on(), Some(Slot::A));
        assert_eq!(board.boot(), json!({"status": "normal"}));
    }
    assert_eq!(board.dev.status()["slots"]["a"]["status"], "empty");
}

#[test]
fn confirming_before_the_new_slot_has_booted_is_refused() {
    let (repo, _server, board) = served_board("early", Loader::Grub);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot(), json!({"status": "normal"}));
    release_image(&repo, "2.0.0", MIB, 2);
    board.dev.expect("update", &["--yes"], 0);
    // `update && confirm` in one script would vouch for a slot that never ran.
    let out = board.dev.run("confirm", &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(err.starts_with("error[invalid_state]:"), "{err}");
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "trial");
    assert_eq!(board.power_on(), Some(Slot::B));
    board.dev.expect("confirm", &[], 0);
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "good");
}

/// A kernel command line without the `booted_from` key (a bootloader script that lost
/// it, the rescue entry) says nothing of the running slot: this may be the fallback after
/// the trial slot failed, so a confirm would vouch for the slot that failed.
#[test]
fn confirming_while_the_running_slot_is_unknown_is_refused() {
    let (repo, _server, board) = served_board("unknown", Loader::UBoot);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot(), json!({"status": "normal"}));
    release_image(&repo, "2.0.0", MIB, 2);
    board.dev.expect("update", &["--yes"], 0);
    assert_eq!(board.power_on(), Some(Slot::B));
    std::fs::write(&board.cmdline, "console=ttyS0 root=/dev/mmcblk0p3 quiet\n").unwrap();
    let out = board.dev.run("confirm", &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.starts_with("error[invalid_state]: expected to know the running slot"),
        "{err}"
    );
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "trial");
}

/// Not knowing which slot runs (the kernel command line lost its key), the idle slot may
/// be the running one: install is refused as confirm is, and no slot is written.
#[test]
fn installing_while_the_running_slot_is_unknown_is_refused() {
    let (repo, _server, board) = served_board("unknowninstall", Loader::Grub);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot(), json!({"status": "normal"}));
    let before = board.slot_bytes(Slot::B);
    std::fs::write(&board.cmdline, "console=ttyS0 root=/dev/sda3 quiet\n").unwrap();
    release_image(&repo, "2.0.0", MIB, 2);
    let out = board.dev.run("update", &["--yes"]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.contains(
            "error[invalid_state]: expected to know the running slot to install into slot b"
        ),
        "{err}"
    );
    assert_eq!(board.slot_bytes(Slot::B), before, "slot b was written");
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "empty");
}

/// The slot's device returns one flipped byte after the write (the `fault-injection`
/// hook `EVERGREEN_CORRUPT_IMAGE_AT`): the read-back refuses the slot.
#[cfg(feature = "fault-injection")]
#[test]
fn a_corrupted_read_back_is_hash_mismatch_and_the_slot_is_never_activated() {
    let (repo, server, board) = served_board("corrupt", Loader::Grub);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot(), json!({"status": "normal"}));
    let image = release_image(&repo, "2.0.0", 2 * MIB, 2);
    let config = board.dev.config.to_str().unwrap();
    let out = common::run_env(
        &["update", "--config", config, "--yes", "--json"],
        &[("EVERGREEN_CORRUPT_IMAGE_AT", "1048577")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(err.starts_with("error[hash_mismatch]:"), "{err}");
    let s = board.dev.status();
    assert_eq!(s["primary"], "a");
    assert_eq!(s["trial"], Value::Null);
    assert_eq!(s["slots"]["b"]["status"], "installing");
    assert_eq!(
        (board.grub("ORDER"), board.grub("B_OK")),
        ("A B".into(), "0".into())
    );
    let out = board.dev.run("activate", &["--now", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(common::stderr(&out).starts_with("error[invalid_state]:"));
    assert_eq!(board.power_on(), Some(Slot::A), "the board still boots A");

    // The slot was the image's only copy (none is kept in the state directory): a healthy
    // device fetches it again, from its first byte, and installs it without complaint.
    let sha = evergreen::trust::sha256_hex(&std::fs::read(&image).unwrap());
    let blob = format!("blobs/sha256/{sha}");
    assert_eq!(server.requests(&blob).len(), 1);
    board.dev.expect("update", &["--yes"], 0);
    let requests = server.requests(&blob);
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].range, None);
    assert!(board.slot_bytes(Slot::B) == std::fs::read(&image).unwrap());
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "trial");
}

#[test]
fn the_library_refuses_to_install_an_image_while_its_slot_is_running() {
    let (repo, _server, board) = served_board("rolled", Loader::UBoot);
    assert_eq!(board.power_on(), Some(Slot::A));
    release_image(&repo, "2.0.0", MIB, 2);
    assert_eq!(update_with_library(&board.updater()), Slot::B);
    assert_eq!(board.power_on(), Some(Slot::B));
    let up = board.updater();
    up.startup().unwrap();
    up.confirm().unwrap();
    release_image(&repo, "3.0.0", MIB, 3);
    assert_eq!(update_with_library(&up), Slot::A);
    assert_eq!(board.power_on(), Some(Slot::A));
    up.startup().unwrap();
    // The operator rolls back by hand: B is primary again, but A runs until the restart.
    assert_eq!(up.rollback().unwrap(), Slot::B);
    release_image(&repo, "3.1.0", MIB, 4);
    let running = board.slot_bytes(Slot::A);
    let Check::Available(offer) = up.check().unwrap() else {
        panic!("expected 3.1.0 to be offered");
    };
    let plan = up.plan(&offer).unwrap();
    // The download, which writes the image into the idle slot, refuses as the install
    // does.
    let err = up
        .download(&plan, &mut |_, _| {}, &CancelToken::new())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
    let err = up.install(&plan).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
    assert!(
        board.slot_bytes(Slot::A) == running,
        "the running slot A was written"
    );
    // After the restart into B, A is the idle slot and takes the release.
    assert_eq!(board.power_on(), Some(Slot::B));
    assert_eq!(up.startup().unwrap(), Startup::Normal);
    up.download(&plan, &mut |_, _| {}, &CancelToken::new())
        .unwrap();
    assert_eq!(up.install(&plan).unwrap(), Slot::A);
}

const LOADERS: [(Loader, &str); 2] = [(Loader::Grub, "grub"), (Loader::UBoot, "uboot")];

/// A board that updated from 1.0.0 in slot A to 2.0.0 in slot B and restarted into its
/// trial.
fn on_trial_of_2_0_0(repo: &Repo, server: &TestServer, name: &str, loader: Loader) -> Board {
    let board = Board::new(repo, server, name, loader);
    assert_eq!(board.power_on(), Some(Slot::A));
    board.boot();
    release_image(repo, "2.0.0", MIB, 2);
    board.dev.expect("update", &["--yes"], 0);
    assert_eq!(board.power_on(), Some(Slot::B), "{name}");
    assert_eq!(board.boot()["status"], "trial", "{name}");
    board
}

/// The power goes after `activate` committed the state (4 durable steps: temp file, its
/// fsync, the rename, the directory's fsync) and before the bootloader's environment was
/// written. The next start finishes the activation: a release that never ran is not
/// called failed, and the trial happens at the following boot.
#[cfg(feature = "fault-injection")]
#[test]
fn a_power_cut_before_the_bootloader_learns_of_an_activation_resumes_it() {
    for (loader, name) in LOADERS {
        let (repo, _server, board) = served_board(name, loader);
        assert_eq!(board.power_on(), Some(Slot::A));
        assert_eq!(board.boot(), json!({"status": "normal"}));
        release_image(&repo, "2.0.0", MIB, 2);
        let up = board.updater();
        let plan = downloaded(&up, &format!("{name}: expected 2.0.0 on offer"));
        assert_eq!(up.install(&plan).unwrap(), Slot::B, "{name}");
        drop(up);
        board.crash_during(&["activate", "--now"], 4);
        assert_eq!(
            board.dev.status()["slots"]["b"]["status"],
            "trial",
            "{name}"
        );
        assert_eq!(
            board.preferred(),
            Slot::A,
            "{name}: the environment was not written"
        );

        assert_eq!(board.power_on(), Some(Slot::A), "{name}");
        // Until the bootloader knows of the trial, its starts are the state's, not what
        // is left of the slot the bootloader prefers (the running one, which this boot
        // spent an attempt of).
        let tries = board.dev.state_file()["trial"]["tries"].clone();
        assert_eq!(
            board.dev.status()["trial"],
            json!({"slot": "b", "tries_left": tries}),
            "{name}"
        );
        assert_eq!(board.boot(), json!({"status": "normal"}), "{name}");
        assert_eq!(
            board.preferred(),
            Slot::B,
            "{name}: the activation was finished"
        );
        // Another start before the reboot changes nothing.
        assert_eq!(board.boot(), json!({"status": "normal"}), "{name}");
        assert_eq!(board.power_on(), Some(Slot::B), "{name}");
        assert_eq!(board.boot()["status"], "trial", "{name}");
        board.dev.expect("confirm", &[], 0);
        let s = board.dev.status();
        assert_eq!(
            s["slots"]["b"],
            json!({"status": "good", "version": "2.0.0"}),
            "{name}"
        );
        assert_eq!(
            s["slots"]["a"]["status"], "good",
            "{name}: the fallback stays good"
        );
    }
}

/// The power goes in the middle of the activation's GRUB write: after two of its three
/// one-byte writes `ORDER=B A` names B first while `B_OK` is still 0. RAUC's grub.cfg sets
/// `B_TRY=1` for every slot it visits, bootable or not, and boots A. B never ran: the
/// startup step must not call its trial failed, and finishes the activation instead.
#[test]
fn grub_a_power_cut_in_the_middle_of_the_activation_write_does_not_fail_the_release() {
    let (repo, _server, board) = served_board("tornactivation", Loader::Grub);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot(), json!({"status": "normal"}));
    release_image(&repo, "2.0.0", MIB, 2);
    let up = board.updater();
    let plan = downloaded(&up, "expected 2.0.0 on offer");
    assert_eq!(up.install(&plan).unwrap(), Slot::B);
    let before = std::fs::read(&board.env).unwrap();
    let writes = GrubEnv::new(&board.env)
        .plan(BootChange::Activate {
            slot: Slot::B,
            tries: 1,
        })
        .unwrap();
    assert_eq!(writes.len(), 3, "{writes:?}");
    assert!(matches!(
        up.activate(false).unwrap(),
        Activation::Activated { .. }
    ));
    drop(up);
    // The cut: the environment as it was, then only the first two bytes written.
    std::fs::write(&board.env, &before).unwrap();
    apply_all(&writes[..2]).unwrap();
    assert_eq!(
        (board.grub("ORDER"), board.grub("B_OK")),
        ("B A".into(), "0".into())
    );

    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.grub("B_TRY"), "1", "grub.cfg visited B");
    let boot = board.boot();
    assert_eq!(boot, json!({"status": "normal"}), "{boot}");
    assert_eq!(
        board.dev.status()["slots"]["b"],
        json!({"status": "trial", "version": "2.0.0"}),
        "B never ran: not bad"
    );
    assert_eq!(
        (board.grub("ORDER"), board.grub("B_OK"), board.grub("B_TRY")),
        ("B A".into(), "1".into(), "0".into()),
        "the activation was finished"
    );
    assert_eq!(board.power_on(), Some(Slot::B));
    assert_eq!(board.boot()["status"], "trial");
    board.dev.expect("confirm", &[], 0);
    assert_eq!(
        board.dev.status()["slots"]["b"],
        json!({"status": "good", "version": "2.0.0"})
    );
}

/// The power goes at each durable step of `confirm` (the bootloader's environment, then
/// the state): whatever the instant, the confirmed release keeps booting, and once the
/// host confirms again (a cut may leave the trial to resume) it is the good primary.
/// Told in the other order, a bootloader that had spent
/// the trial's attempt gave up on a slot the state called good.
#[cfg(feature = "fault-injection")]
#[test]
fn a_power_cut_during_confirm_never_undoes_the_confirmed_release() {
    for (loader, name) in LOADERS {
        for crash_at in 1.. {
            let repo = Repo::new(PRODUCT);
            let server = TestServer::serve(&repo.root);
            let board = on_trial_of_2_0_0(&repo, &server, &format!("{name}{crash_at}"), loader);
            let config = board.dev.config.to_str().unwrap().to_string();
            let at = crash_at.to_string();
            let out = common::run_env(
                &["confirm", "--config", &config],
                &[("EVERGREEN_CRASH_AT", &at)],
            );
            let crashed = common::stderr(&out).contains(&format!("crash point {at} "));
            for boot in 0..3 {
                assert_eq!(
                    board.power_on(),
                    Some(Slot::B),
                    "{name} cut {crash_at}, boot {boot}"
                );
                let status = board.boot()["status"].clone();
                assert!(
                    status == "trial" || status == "normal",
                    "{name} cut {crash_at}: {status}"
                );
                board.dev.expect("confirm", &[], 0);
            }
            let s = board.dev.status();
            assert_eq!(s["slots"]["b"]["status"], "good", "{name} cut {crash_at}");
            assert_eq!(s["primary"], "b", "{name} cut {crash_at}");
            if !crashed {
                assert!(crash_at > 1, "{name}: confirm has no crash point at all");
                break;
            }
        }
    }
}

/// The power goes after `rollback` committed the state and before the environment was
/// written: the bootloader starts the slot the state gave up on, and the startup step
/// finishes the rollback so that the next boot is the good slot; running the slot given
/// up on, it says `rolled_back`, so that the host restarts into the good one now.
#[cfg(feature = "fault-injection")]
#[test]
fn a_power_cut_before_the_bootloader_learns_of_a_rollback_finishes_it() {
    for (loader, name) in LOADERS {
        let repo = Repo::new(PRODUCT);
        let server = TestServer::serve(&repo.root);
        let board = on_trial_of_2_0_0(&repo, &server, name, loader);
        board.crash_during(&["rollback"], 4);
        assert_eq!(board.dev.status()["slots"]["b"]["status"], "bad", "{name}");
        assert_eq!(
            board.preferred(),
            Slot::B,
            "{name}: the environment was not written"
        );

        // U-Boot has tries of B left and starts it; GRUB spent B's one attempt.
        let starts = match loader {
            Loader::Grub => Slot::A,
            Loader::UBoot => Slot::B,
        };
        assert_eq!(board.power_on(), Some(starts), "{name}");
        let status = match starts {
            Slot::A => "normal",
            Slot::B => "rolled_back",
        };
        let boot = board.boot();
        assert_eq!(boot["status"], status, "{name}: {boot}");
        if starts == Slot::B {
            assert_eq!(
                (boot["from"].as_str(), boot["to"].as_str()),
                (Some("b"), Some("a"))
            );
        }
        assert_eq!(
            board.preferred(),
            Slot::A,
            "{name}: the rollback was finished"
        );
        if matches!(loader, Loader::UBoot) {
            // Out of the order from the start that finished the rollback.
            never_started_by_a_crash_loop(&board, Slot::B, name);
        }
        for _ in 0..3 {
            assert_eq!(board.power_on(), Some(Slot::A), "{name}");
            assert_eq!(board.boot(), json!({"status": "normal"}), "{name}");
        }
    }
}

/// Eight starts with no startup step between them (a crash loop of the running slot,
/// through two of U-Boot's counter resets) never start `slot`, which must be out of
/// `BOOT_ORDER`.
fn never_started_by_a_crash_loop(board: &Board, slot: Slot, name: &str) {
    assert_eq!(board.uboot("BOOT_ORDER"), slot.other().upper(), "{name}");
    let boots: Vec<_> = (0..8).map(|_| board.power_on()).collect();
    assert!(!boots.contains(&Some(slot)), "{name}: {boots:?}");
    assert!(
        boots.contains(&None),
        "{name}: no counter reset in {boots:?}"
    );
}

/// A rollback by hand takes the release it leaves out of U-Boot's `BOOT_ORDER` at once:
/// a crash loop of the good slot before its next startup step resets both counters, and
/// must not start the release rolled back.
#[test]
fn a_rollback_by_hand_takes_the_failed_slot_out_of_the_boot_order() {
    let repo = Repo::new(PRODUCT);
    let server = TestServer::serve(&repo.root);
    let board = on_trial_of_2_0_0(&repo, &server, "handrollback", Loader::UBoot);
    board.dev.expect("rollback", &[], 0);
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "bad");
    // Startup steps still on B (the host has not restarted yet) repair nothing: the
    // environment is not written again, flash wear and a power-fail window for nothing.
    let storage = board.env.with_file_name("uboot.env"); // beside its fw_env.config
    let env = std::fs::read(&storage).unwrap();
    for _ in 0..2 {
        assert_eq!(board.boot()["status"], "rolled_back");
    }
    assert!(
        std::fs::read(&storage).unwrap() == env,
        "the environment was written again"
    );
    never_started_by_a_crash_loop(&board, Slot::B, "handrollback");
}

/// A confirmed slot whose boot attempt is spent before the startup step runs (the power
/// goes mid-boot, every time for U-Boot's three tries): the bootloader starts the other,
/// good slot. The startup step adopts it and gives it its attempt back, so the board
/// never ends in the rescue entry, and the next update goes into the idle slot.
#[test]
fn a_good_slot_the_bootloader_gave_up_on_mid_boot_leaves_the_fallback_primary() {
    for (loader, name) in LOADERS {
        let repo = Repo::new(PRODUCT);
        let server = TestServer::serve(&repo.root);
        let board = on_trial_of_2_0_0(&repo, &server, name, loader);
        board.dev.expect("confirm", &[], 0);
        // Power-ons of B that never reach the startup step, until the bootloader gives up.
        let attempts = match loader {
            Loader::Grub => 1,
            Loader::UBoot => 3,
        };
        for _ in 0..attempts {
            assert_eq!(board.power_on(), Some(Slot::B), "{name}");
        }
        assert_eq!(board.power_on(), Some(Slot::A), "{name}");
        assert_eq!(board.boot(), json!({"status": "normal"}), "{name}");
        let s = board.dev.status();
        assert_eq!(s["primary"], "a", "{name}");
        assert_eq!(
            s["slots"]["a"],
            json!({"status": "good", "version": "1.0.0"}),
            "{name}"
        );
        // Both releases have security version 0, the floor is 0: the history names the
        // fall-back and does not call the slot that runs below the floor.
        let last = s["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["event"], "bootloader_fell_back", "{name}: {last}");
        let detail = last["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("slot a is primary now") && !detail.contains("below"),
            "{name}: expected no claim of a slot below the floor, found: {detail}"
        );
        for _ in 0..3 {
            assert_eq!(
                board.power_on(),
                Some(Slot::A),
                "{name}: not the rescue entry"
            );
            assert_eq!(board.boot(), json!({"status": "normal"}), "{name}");
        }
        release_image(&repo, "2.1.0", MIB, 3);
        let out = json_out(&board.dev.expect("update", &["--yes", "--json"], 0));
        assert_eq!(out["slot"], "b", "{name}: the idle slot");
    }
}

/// The same fall-back when the confirmed release raised the security floor: the slot the
/// bootloader chose runs (it is all that boots), and the history says it is below the
/// floor, for an update to follow.
#[test]
fn a_fall_back_below_the_security_floor_is_recorded_as_such() {
    let repo = Repo::new(PRODUCT);
    let server = TestServer::serve(&repo.root);
    let board = Board::new(&repo, &server, "floorfb", Loader::Grub);
    assert_eq!(board.power_on(), Some(Slot::A));
    board.boot();
    let image = repo.scratch("images").join("rootfs-2.0.0.img");
    pattern_file(&image, MIB, 2);
    let spec = PathBuf::from(format!("{}:image", image.display()));
    repo.release(
        "stable",
        "2.0.0",
        TARGET,
        &[("rootfs", &spec)],
        &["--security-version", "5"],
    );
    board.dev.expect("update", &["--yes"], 0);
    assert_eq!(board.power_on(), Some(Slot::B));
    assert_eq!(board.boot()["status"], "trial");
    board.dev.expect("confirm", &[], 0);
    assert_eq!(board.power_on(), Some(Slot::B)); // the power goes before the startup step
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot(), json!({"status": "normal"}));
    let state: Value =
        serde_json::from_slice(&std::fs::read(board.dev.state.join("state.json")).unwrap())
            .unwrap();
    let last = state["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"], "bootloader_fell_back", "{last}");
    let detail = last["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("below this device's floor 5"), "{last}");
}

#[test]
fn an_unchanged_image_is_written_again_into_the_idle_slot() {
    // 2.0.1 ships the same rootfs as 2.0.0. The idle slot still holds the factory image,
    // so "unchanged" against the running slot must not mean "nothing to write".
    let (repo, _server, board) = served_board("sameimage", Loader::Grub);
    assert_eq!(board.power_on(), Some(Slot::A));
    let image = release_image(&repo, "2.0.0", MIB, 2);
    assert_eq!(
        json_out(&board.dev.expect("update", &["--yes", "--json"], 0))["slot"],
        "b"
    );
    assert_eq!(board.power_on(), Some(Slot::B));
    assert_eq!(board.boot()["slot"], "b");
    board.dev.expect("confirm", &[], 0);
    let factory = board.slot_bytes(Slot::A);
    assert!(factory != std::fs::read(&image).unwrap());

    let same = release_image(&repo, "2.0.1", MIB, 2);
    assert!(std::fs::read(&same).unwrap() == std::fs::read(&image).unwrap());
    let check = json_out(&board.dev.expect("check", &["--json"], 10));
    assert_eq!(check["components"][0]["op"], "unchanged", "{check}");
    assert_eq!(check["download_bytes"], MIB, "{check}");
    let out = json_out(&board.dev.expect("update", &["--yes", "--json"], 0));
    assert_eq!(out["slot"], "a");
    assert!(
        board.slot_bytes(Slot::A) == std::fs::read(&image).unwrap(),
        "slot A was activated without the image written into it"
    );
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot()["slot"], "a");
    board.dev.expect("confirm", &[], 0);
    assert_eq!(
        board.dev.status()["slots"]["a"],
        json!({"status": "good", "version": "2.0.1"})
    );
    // Image slots keep no download: the image went straight into the slot.
    assert_eq!(image_sized_in(&board.dev.state, MIB), Vec::<PathBuf>::new());
}

/// The files under `dir` of `len` bytes or more (an image's size, where a download kept
/// in the state directory would show).
fn image_sized_in(dir: &Path, len: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            found.extend(image_sized_in(&entry.path(), len));
        } else if meta.len() >= len as u64 {
            found.push(entry.path());
        }
    }
    found
}

#[test]
fn a_slot_path_that_reaches_the_running_slot_is_refused_before_anything_changes() {
    let (repo, _server, board) = served_board("samedevice", Loader::Grub);
    // Slot b configured as a symlink to slot a's storage (a by-partlabel link gone wrong).
    std::fs::remove_file(&board.b).unwrap();
    std::os::unix::fs::symlink(&board.a, &board.b).unwrap();
    release_image(&repo, "2.0.0", MIB, 2);
    let running = board.slot_bytes(Slot::A);
    let status = board.dev.status();
    let out = board.dev.run("update", &["--yes"]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.contains("error[config]: expected slots a") && err.contains("on different storage"),
        "{err}"
    );
    assert!(
        board.slot_bytes(Slot::A) == running,
        "the running slot was written"
    );
    let mut after = board.dev.status();
    let mut before = status;
    for s in [&mut after, &mut before] {
        common::without_failures(s);
        let o = s.as_object_mut().unwrap();
        o.remove("next_check");
        o.remove("last_check");
    }
    assert_eq!(after, before, "nothing was marked installing");
}

/// Image slots take one image per release and nothing else. A release that does not fit
/// is refused before the idle slot is written or taken out of the boot order, so the
/// slot keeps what it held for a manual rollback. (`evergreen release` refuses an image
/// beside other components, so that manifest is made as another publisher might.)
#[test]
fn a_release_that_is_not_exactly_one_image_is_refused_before_the_idle_slot_is_touched() {
    let (repo, _server, board) = served_board("notoneimage", Loader::Grub);
    let src = repo.scratch("src");
    let (image, config, app) = (
        src.join("rootfs.img"),
        src.join("cfg.json"),
        src.join("app.zip"),
    );
    pattern_file(&image, MIB, 7);
    std::fs::write(&config, b"{}").unwrap();
    common::make_zip(&app, &[("run.sh", b"#!/bin/sh\n")]);
    let image = PathBuf::from(format!("{}:image", image.display()));
    let idle = board.slot_bytes(Slot::B);
    let (status, order) = (board.dev.status(), board.grub("ORDER"));
    let slots = |status: Value| (status["primary"].clone(), status["slots"].clone());
    let image_and_config = || {
        repo.release("stable", "2.0.0", TARGET, &[("rootfs", &image)], &[]);
        repo.release("stable", "2.0.0", "spare", &[("config", &config)], &[]);
        repo.edit_channel("stable", |m| {
            let release = &mut m.releases[0];
            let spare = release.targets.remove("spare").unwrap();
            let config = spare.components.get("config").unwrap().clone();
            let target = release.targets.get_mut(TARGET).unwrap();
            target.components.insert("config", config);
        });
    };
    let zip_alone = || {
        repo.release("stable", "2.0.1", TARGET, &[("app", &app)], &[]);
    };
    let cases: [(&str, &dyn Fn(), &str); 2] = [
        ("2.0.0", &image_and_config, "found 1 image(s) among 2"),
        ("2.0.1", &zip_alone, "found 0 image(s) among 1"),
    ];
    for (version, publish, found) in cases {
        publish();
        let out = board.dev.run("update", &["--yes"]);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "error[config]: image slots: expected exactly one image component and nothing else for target {TARGET}, {found}"
            )),
            "{err}"
        );
        assert!(
            board.slot_bytes(Slot::B) == idle,
            "{version}: the idle slot was written"
        );
        assert_eq!(
            board.grub("ORDER"),
            order,
            "{version}: the boot order changed"
        );
        assert_eq!(
            slots(board.dev.status()),
            slots(status.clone()),
            "{version}: the idle slot was marked installing"
        );
    }
}

/// Writing the image is reported as `installing`, not as a second download.
#[test]
fn writing_an_image_reports_installing_progress_not_downloading() {
    use std::sync::{Arc, Mutex};
    let (repo, _server, board) = served_board("installevents", Loader::Grub);
    assert_eq!(board.power_on(), Some(Slot::A));
    release_image(&repo, "2.0.0", MIB, 2);
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let up = Updater::builder(Config::from_file(&board.dev.config).unwrap())
        .on_event(move |e| seen.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    let plan = downloaded(&up, "expected 2.0.0");
    events.lock().unwrap().clear();
    up.install(&plan).unwrap();
    let events = events.lock().unwrap();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, evergreen::Event::Downloading { .. })),
        "{events:?}"
    );
    let last = evergreen::Event::Installing {
        component: "rootfs".into(),
        done: MIB as u64,
        total: MIB as u64,
    };
    assert!(events.contains(&last), "{events:?}");
    assert_eq!(
        last.to_json(),
        r#"{"event":"installing","component":"rootfs","done":1048576,"total":1048576}"#
    );
}

/// The requests the server had for blobs.
fn blob_requests(server: &TestServer) -> usize {
    server
        .log()
        .iter()
        .filter(|l| l.path.starts_with("blobs/"))
        .count()
}

/// An image larger than the idle slot's block device is `too_large` before it is
/// downloaded, and before the slot is marked `installing` or taken out of the boot order:
/// the confirmed release there stays the fallback, and a rollback to it still works.
#[test]
fn an_image_too_large_for_the_idle_block_device_keeps_the_fallback() {
    let (repo, server, board) = served_board("toolarge", Loader::Grub);
    assert_eq!(board.power_on(), Some(Slot::A));
    release_image(&repo, "2.0.0", MIB, 2);
    board.dev.expect("update", &["--yes"], 0);
    assert_eq!(board.power_on(), Some(Slot::B));
    assert_eq!(board.boot()["slot"], "b");
    board.dev.expect("confirm", &[], 0);

    // Slot a becomes a 1 MiB block device holding what it held.
    let backing = board.a.with_extension("loopback");
    std::fs::copy(&board.a, &backing).unwrap();
    let Some(device) = LoopDevice::attach(&backing) else {
        return;
    };
    set_slot_path(&board, "a", &device.0);
    let before = board.dev.status();
    let downloads = board.dev.downloads();
    let blobs_before = blob_requests(&server);

    release_image(&repo, "3.0.0", 2 * MIB, 3);
    let out = board.dev.run("update", &["--yes"]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.lines().last().unwrap().starts_with(&format!(
            "error[too_large]: image slot {}: expected an image of at most 1048576 bytes, found 2097152",
            device.0
        )),
        "{err}"
    );
    assert_eq!(board.dev.status()["slots"], before["slots"]);
    // Not a byte of it fetched: the 2 MiB were never going to fit.
    assert_eq!(board.dev.downloads(), downloads);
    assert_eq!(
        blob_requests(&server),
        blobs_before,
        "the image was requested"
    );
    assert_eq!(board.grub("A_OK"), "1");
    board.dev.expect("rollback", &[], 0);
    assert_eq!(board.power_on(), Some(Slot::A));
}

/// The read-back reads the device, not the page cache the write filled: a loop device
/// whose backing file loses a byte after the write (a medium that did not keep what it
/// acknowledged, behind the slot's own cache) is refused with `hash_mismatch`. Another
/// process holds the device open meanwhile (udev's probe, a monitor), so its last close
/// does not drop the cache either.
#[test]
fn the_read_back_reads_the_device_not_the_page_cache() {
    use evergreen::slots::image::ImageSlots;
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("b.loopback");
    std::fs::write(&backing, vec![0u8; MIB]).unwrap();
    let Some(device) = LoopDevice::attach(&backing) else {
        return;
    };
    let image: Vec<u8> = (0..MIB / 2).map(|i| (i * 7 % 251) as u8).collect();
    let sha = evergreen::trust::sha256_hex(&image);
    let write = |slots: ImageSlots| {
        slots.write_image(
            Slot::B,
            &mut &image[..],
            image.len() as u64,
            &sha,
            &mut |_, _| {},
        )
    };
    let slots = ImageSlots::new(dir.path().join("a.img"), &device.0);
    let _holder = std::fs::File::open(&device.0).unwrap();

    let err = write(
        slots
            .clone()
            .corrupt_store_after_write(backing.clone(), 4097),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HashMismatch, "{err}");
    assert!(err.message().contains("when read back"), "{err}");

    write(slots).unwrap();
    assert_eq!(std::fs::read(&backing).unwrap()[..image.len()], image[..]);
}

/// A slot device with a file system mounted from it (the running root, when the slot the
/// state calls idle is the one that booted and the host's selector cannot tell) is never
/// written: `invalid_state` naming where it is mounted, from the check an install makes
/// before it marks the slot `installing` and from the write itself. Unmounted, it is
/// written.
#[test]
fn a_slot_device_with_a_mounted_file_system_is_never_written() {
    use evergreen::slots::image::ImageSlots;
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("b.loopback");
    std::fs::write(&backing, vec![0u8; 4 * MIB]).unwrap();
    let Some(device) = LoopDevice::attach(&backing) else {
        return;
    };
    let at = dir.path().join("mounted");
    let Some(mount) = Mounted::ext4(&device.0, &at) else {
        return;
    };
    std::fs::write(at.join("running.txt"), b"the running system").unwrap();
    let slots = ImageSlots::new(dir.path().join("a.img"), &device.0);
    let image = vec![0x5a_u8; MIB];
    let sha = evergreen::trust::sha256_hex(&image);
    let write = || slots.write_image(Slot::B, &mut &image[..], MIB as u64, &sha, &mut |_, _| {});

    for err in [
        slots.check_fits(Slot::B, MIB as u64).unwrap_err(),
        write().unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
        assert!(
            err.message().contains(&format!(
                "image slot {}: expected a device no file system is mounted from, found it mounted at {}",
                device.0,
                at.display()
            )),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read(at.join("running.txt")).unwrap(),
        b"the running system"
    );
    drop(mount);
    write().unwrap();
    assert_eq!(std::fs::read(&backing).unwrap()[..MIB], image[..]);
}

/// A plain-file slot a loop device serves (attached by hand or by `mount -o loop`, mounted
/// or not) is never written: `invalid_state` naming the loop device, from the check an
/// install makes before it marks the slot `installing` and from the write itself, and the
/// file keeps its length and bytes. So is a block device a loop device is stacked on.
/// Detached, the file is written.
#[test]
fn a_slot_file_or_device_a_loop_device_serves_is_never_written() {
    use evergreen::slots::image::ImageSlots;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.img");
    let held = vec![0xa5_u8; 2 * MIB];
    std::fs::write(&file, &held).unwrap();
    let Some(device) = LoopDevice::attach(&file) else {
        return;
    };
    let image = vec![0x5a_u8; MIB];
    let sha = evergreen::trust::sha256_hex(&image);
    let write = |slots: &ImageSlots| {
        slots.write_image(Slot::B, &mut &image[..], MIB as u64, &sha, &mut |_, _| {})
    };
    let refusals = |slots: &ImageSlots, slot: &str, what: &str, by: &str| {
        for err in [
            slots.check_fits(Slot::B, MIB as u64).unwrap_err(),
            write(slots).unwrap_err(),
        ] {
            assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
            assert_eq!(
                err.message(),
                format!(
                    "image slot {slot}: expected a {what} no loop device serves, found it the backing {what} of {by} (writing it would corrupt what the loop device holds)"
                ),
            );
        }
    };

    // Named through a symlink, as a slot under /dev/disk/by-… is.
    let link = dir.path().join("slot-b");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let slots = ImageSlots::new(dir.path().join("a.img"), &link);
    refusals(&slots, &link.display().to_string(), "file", &device.0);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        held,
        "the served file changed"
    );

    // The loop device itself, while a second loop device is stacked on it.
    let Some(stacked) = LoopDevice::attach(Path::new(&device.0)) else {
        return;
    };
    let on_device = ImageSlots::new(dir.path().join("a.img"), &device.0);
    refusals(&on_device, &device.0, "device", &stacked.0);
    drop(stacked);
    write(&on_device).unwrap();

    drop(device);
    write(&slots).unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), image);
}

/// An image slot in a plain file whose file system fills up during the write fails
/// naming the image's size and how much of it was written, and the slot file is emptied:
/// kept at the image's length it would hold the room the state needs. The slot stays
/// `installing` and out of the boot order, so the board keeps booting the running slot.
#[test]
fn an_image_that_fills_the_slot_files_disk_says_so_and_gives_the_room_back() {
    let (repo, _server, board) = served_board("diskfull", Loader::Grub);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot(), json!({"status": "normal"}));
    let small = repo.scratch("diskfull-slot");
    let Some(_fs) = Mounted::tmpfs(&small, 512) else {
        return;
    };
    let slot_b = small.join("b.img");
    board
        .dev
        .edit_config(|cfg| cfg["slots"]["b"] = json!(slot_b));
    release_image(&repo, "2.0.0", MIB, 2);

    let out = board.dev.run("update", &["--yes"]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    let last = err.lines().last().unwrap();
    let expected = format!(
        "error[io]: writing {}: expected room for the {MIB} bytes of the image, found the file system full after ",
        slot_b.display()
    );
    let rest = last
        .strip_prefix(&expected)
        .unwrap_or_else(|| panic!("{err}"));
    let written: usize = rest.split(' ').next().unwrap().parse().unwrap();
    assert!(written > 0 && written < MIB, "{err}");
    assert!(
        last.ends_with(
            "; the slot file was emptied to give the space back: free space and install again"
        ),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&slot_b).unwrap().len(), 0);
    let s = board.dev.status();
    assert_eq!(s["slots"]["b"]["status"], "installing");
    assert_eq!(s["slots"]["b"]["version"], "2.0.0");
    assert_eq!(board.grub("B_OK"), "0");
    assert_eq!(board.power_on(), Some(Slot::A), "the board still boots A");
    // The room is there again: most of the file system can be written.
    std::fs::write(small.join("state.json"), vec![b'x'; 448 * 1024]).unwrap();
}

/// Points the image slot `slot` ("a" or "b") of `board`'s config at `path`.
fn set_slot_path(board: &Board, slot: &str, path: &str) {
    board
        .dev
        .edit_config(|cfg| cfg["slots"][slot] = json!(path));
}

/// The SHA-256 of the first `len` bytes of `path`.
fn sha256_prefix(path: &str, len: usize) -> String {
    use std::io::Read;
    let mut bytes = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    evergreen::trust::sha256_hex(&bytes)
}

/// The last line `update --yes` writes to stderr when it fails (status 1).
fn failed_update(board: &Board) -> String {
    let out = board.dev.run("update", &["--yes"]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    err.lines().last().unwrap().to_string()
}

/// Runs an update whose slot b is the busy block device `device`, and checks that it is
/// refused as busy (`invalid_state` naming the device) with nothing changed: the slot
/// records, the boot environment and the device's first `len` bytes.
fn refused_as_busy(board: &Board, device: &str, len: usize) {
    let prefix = sha256_prefix(device, len);
    let (status, env) = (board.dev.status(), std::fs::read(&board.env).unwrap());
    assert_eq!(
        failed_update(board),
        format!("error[invalid_state]: image slot {device}: {BUSY}")
    );
    assert_eq!(board.dev.status()["slots"], status["slots"]);
    assert_eq!(
        std::fs::read(&board.env).unwrap(),
        env,
        "the boot order changed"
    );
    assert_eq!(sha256_prefix(device, len), prefix, "the device was written");
}

const BUSY: &str = "expected a device nothing else uses, found it busy (a file system mounted from it or one of its partitions, or another program holding it open exclusively): writing it would corrupt what uses it";

/// A slot that names a whole disk is never written while a file system is mounted from
/// one of its partitions: the partition has a device number and holders of its own, so
/// only the exclusive claim on the disk sees it in use. `invalid_state` naming the disk,
/// before the slot is marked `installing` or taken out of the boot order, and the disk's
/// first MiB, where the image would go (its partition table), is unchanged: the rest is
/// the partition, which the mounted file system may write itself. Unmounted, the disk is
/// written.
#[test]
fn a_whole_disk_slot_with_a_mounted_partition_is_never_written() {
    let (repo, _server, board) = served_board("wholedisk", Loader::Grub);
    assert_eq!(board.power_on(), Some(Slot::A));
    // An 8 MiB disk: an MBR in a first MiB of other bytes, then one Linux partition.
    let disk = board.b.with_extension("disk");
    pattern_file(&disk, 8 * MIB, 4);
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[446..510].fill(0);
    bytes[446 + 4] = 0x83;
    bytes[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    bytes[446 + 12..446 + 16].copy_from_slice(&((8 * MIB / 512 - 2048) as u32).to_le_bytes());
    bytes[510..512].copy_from_slice(&[0x55, 0xaa]);
    std::fs::write(&disk, bytes).unwrap();
    let Some((device, partition)) = LoopDevice::attach_partitioned(&disk) else {
        return;
    };
    let at = repo.scratch("wholedisk-mounted");
    let Some(mount) = Mounted::ext4(&partition, &at) else {
        return;
    };
    std::fs::write(at.join("running.txt"), b"the running system").unwrap();
    set_slot_path(&board, "b", &device.0);

    let image = release_image(&repo, "2.0.0", MIB, 2);
    refused_as_busy(&board, &device.0, MIB);
    assert_eq!(
        std::fs::read(at.join("running.txt")).unwrap(),
        b"the running system"
    );

    drop(mount);
    board.dev.expect("update", &["--yes"], 0);
    assert_eq!(
        sha256_prefix(&device.0, MIB),
        evergreen::trust::sha256_hex(&std::fs::read(image).unwrap())
    );
}

/// A slot device another program holds open exclusively (`O_EXCL`, as mkfs does), with
/// nothing mounted from it and nothing built on it, is never written: `invalid_state`
/// naming the device, before the slot is marked `installing` or taken out of the boot
/// order, and the device keeps its bytes. Let go, it is written.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn a_slot_device_another_program_holds_exclusively_is_never_written() {
    use std::os::unix::fs::OpenOptionsExt;
    let (repo, _server, board) = served_board("exclusive", Loader::Grub);
    assert_eq!(board.power_on(), Some(Slot::A));
    let backing = board.b.with_extension("loopback");
    pattern_file(&backing, 2 * MIB, 5);
    let Some(device) = LoopDevice::attach(&backing) else {
        return;
    };
    set_slot_path(&board, "b", &device.0);
    // This test's process is the other program: the CLI runs as a process of its own.
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&device.0)
        .unwrap();

    let image = release_image(&repo, "2.0.0", MIB, 2);
    refused_as_busy(&board, &device.0, 2 * MIB);

    drop(holder);
    board.dev.expect("update", &["--yes"], 0);
    assert_eq!(
        sha256_prefix(&device.0, MIB),
        evergreen::trust::sha256_hex(&std::fs::read(image).unwrap())
    );
}

/// A board running 1.0.0 from slot A, started, with 2.0.0 of `len` bytes on the channel:
/// the repository, the server, the board, the image and the path of its blob.
fn board_offered_an_image(
    name: &str,
    loader: Loader,
    len: usize,
) -> (Repo, TestServer, Board, Vec<u8>, String) {
    let (repo, server, board) = served_board(name, loader);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot(), json!({"status": "normal"}));
    let image = std::fs::read(release_image(&repo, "2.0.0", len, 2)).unwrap();
    let blob = format!("blobs/sha256/{}", evergreen::trust::sha256_hex(&image));
    (repo, server, board, image, blob)
}

/// The offer `up`'s check finds (`panic`, the message when it finds none), planned.
fn planned(up: &Updater, panic: &str) -> evergreen::Offer {
    let Check::Available(offer) = up.check().unwrap() else {
        panic!("{panic}");
    };
    up.plan(&offer).unwrap()
}

/// An image is downloaded straight into the idle slot, which is `installing` and out of
/// the boot order by the time its bytes arrive: nothing of its size lands in the state
/// directory, and the install then only reads the slot back.
#[test]
fn an_image_download_streams_into_the_idle_slot_taken_out_of_the_boot_order_first() {
    let (_repo, _server, board, image, _blob) =
        board_offered_an_image("streamed", Loader::Grub, 4 * MIB);
    let running = board.slot_bytes(Slot::A);
    let up = board.updater();
    let plan = planned(&up, "expected 2.0.0");
    let mut first = None;
    let mut last = (0, 0);
    up.download(
        &plan,
        &mut |done, total| {
            last = (done, total);
            if first.is_none() {
                let b = board.dev.state_file()["b"]["status"].clone();
                first = Some((b, board.grub("B_OK")));
            }
        },
        &CancelToken::new(),
    )
    .unwrap();
    assert_eq!(first, Some((json!("installing"), "0".to_string())));
    assert_eq!(last, (4 * MIB as u64, 4 * MIB as u64));
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
    assert_eq!(image_sized_in(&board.dev.state, MIB), Vec::<PathBuf>::new());
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installing");
    assert_eq!(
        board.power_on(),
        Some(Slot::A),
        "B is out of the boot order"
    );
    assert_eq!(up.startup().unwrap(), Startup::Normal);

    assert_eq!(up.install(&plan).unwrap(), Slot::B);
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installed");
    up.activate(false).unwrap();
    assert_eq!(board.power_on(), Some(Slot::B));
    assert!(board.slot_bytes(Slot::A) == running, "slot A was changed");
    assert_eq!(image_sized_in(&board.dev.state, MIB), Vec::<PathBuf>::new());
}

/// The number of `event` entries in the history of `board`'s state.
fn history_count(board: &Board, event: &str) -> usize {
    let state = board.dev.state_file();
    let history = state["history"].as_array().unwrap();
    history.iter().filter(|h| h["event"] == event).count()
}

/// The download marks the slot `installing` once: the install that reads the image back
/// does not save the mark again (a write to flash and one more window for a power cut),
/// and re-asserting the boot order writes nothing when the slot is already out of it. A
/// release staged earlier is marked again, as the install takes a slot that was
/// `installed`.
#[test]
fn installing_a_downloaded_image_saves_the_mark_once_and_rewrites_no_boot_environment() {
    let (_repo, _server, board, image, _blob) =
        board_offered_an_image("markedonce", Loader::Grub, MIB);
    let up = board.updater();
    let plan = planned(&up, "expected 2.0.0");
    up.download(&plan, &mut |_, _| {}, &CancelToken::new())
        .unwrap();
    assert_eq!(history_count(&board, "installing"), 1);
    let env = || {
        let meta = std::fs::metadata(&board.env).unwrap();
        (std::fs::read(&board.env).unwrap(), meta.modified().unwrap())
    };
    let before = env();
    assert_eq!(up.install(&plan).unwrap(), Slot::B);
    assert_eq!(
        history_count(&board, "installing"),
        1,
        "the install saved the mark again"
    );
    assert!(env() == before, "the install rewrote the GRUB environment");
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installed");
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");

    // Installed, the slot is marked again by the next install of the same release.
    assert_eq!(up.install(&plan).unwrap(), Slot::B);
    assert_eq!(history_count(&board, "installing"), 2);
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installed");
    up.activate(false).unwrap();
    assert_eq!(board.power_on(), Some(Slot::B));
}

/// Downloads `plan`, cancelled once half of it has arrived.
fn download_cut_half_way(up: &Updater, plan: &evergreen::Offer) {
    let cancel = CancelToken::new();
    let on_half = cancel.clone();
    let got = up.download(
        plan,
        &mut |done, total| {
            if done * 2 >= total {
                on_half.cancel()
            }
        },
        &cancel,
    );
    assert_eq!(got.unwrap_err().kind(), ErrorKind::Cancelled);
}

/// Five starts of a U-Boot board with no startup step between them (a crash loop): A
/// counts down 2, 1, 0, then with no tries left anywhere the script resets both counters
/// to 3 and starts A again.
fn crash_loop_until_reset(board: &Board, name: &str) {
    let boots: Vec<_> = (0..5).map(|_| board.power_on()).collect();
    let a = Some(Slot::A);
    assert_eq!(boots, [a, a, a, None, a], "{name}");
    assert_eq!(board.uboot("BOOT_B_LEFT"), "3", "{name}");
}

/// U-Boot's script gives every slot its tries back when none has any left: a crash loop
/// of the running slot between download and install puts the slot being written back in
/// the boot order. The install takes it out again, so a release installed but never
/// activated is not started by the next crash loop.
#[test]
fn a_counter_reset_between_download_and_install_leaves_the_installed_slot_unbootable() {
    let (_repo, _server, board, _image, _blob) =
        board_offered_an_image("countreset", Loader::UBoot, MIB);
    let up = board.updater();
    let plan = planned(&up, "expected 2.0.0");
    up.download(&plan, &mut |_, _| {}, &CancelToken::new())
        .unwrap();
    assert_eq!(board.uboot("BOOT_B_LEFT"), "0");
    crash_loop_until_reset(&board, "countreset");
    assert_eq!(board.boot(), json!({"status": "normal"}));
    assert_eq!(up.install(&plan).unwrap(), Slot::B);
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installed");
    assert_eq!(
        board.uboot("BOOT_B_LEFT"),
        "0",
        "installed, never activated, yet bootable"
    );
}

/// The same reset at any other time: after the install (a release staged for a
/// maintenance window), or after a download cut half way (a slot half written). The
/// startup step that runs after the crash loop takes the slot out again, so the next crash
/// loop does not start what was never activated.
#[test]
fn a_counter_reset_at_any_time_leaves_no_unactivated_slot_bootable() {
    for (name, cut) in [("resetstaged", false), ("resethalf", true)] {
        let (_repo, _server, board, _image, _blob) =
            board_offered_an_image(name, Loader::UBoot, 4 * MIB);
        let up = board.updater();
        let plan = planned(&up, "expected 2.0.0");
        let status = if cut {
            download_cut_half_way(&up, &plan);
            "installing"
        } else {
            up.download(&plan, &mut |_, _| {}, &CancelToken::new())
                .unwrap();
            assert_eq!(up.install(&plan).unwrap(), Slot::B);
            "installed"
        };
        assert_eq!(board.dev.status()["slots"]["b"]["status"], status, "{name}");
        assert_eq!(board.uboot("BOOT_B_LEFT"), "0", "{name}");
        crash_loop_until_reset(&board, name);
        assert_eq!(board.boot(), json!({"status": "normal"}), "{name}");
        assert_eq!(
            board.uboot("BOOT_B_LEFT"),
            "0",
            "{name}: slot B left bootable"
        );
        // The next crash loop ends in the rescue path, never in slot B.
        let boots: Vec<_> = (0..4).map(|_| board.power_on()).collect();
        assert!(!boots.contains(&Some(Slot::B)), "{name}: {boots:?}");
        assert_eq!(board.dev.status()["slots"]["b"]["status"], status, "{name}");
    }
}

/// A crash loop that never reaches the startup step: U-Boot's script gives every slot of
/// `BOOT_ORDER` its tries back each time none has any left, so the slot a cut download
/// left half written must not be in the order at all. Thirteen starts, three resets: the
/// board starts A or resets, never B.
#[test]
fn a_crash_loop_without_a_startup_step_never_starts_a_half_written_slot() {
    let (_repo, _server, board, _image, _blob) =
        board_offered_an_image("crashloop", Loader::UBoot, 4 * MIB);
    let up = board.updater();
    let plan = planned(&up, "expected 2.0.0");
    download_cut_half_way(&up, &plan);
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installing");
    assert_eq!(
        (board.uboot("BOOT_ORDER"), board.uboot("BOOT_B_LEFT")),
        ("A".into(), "0".into())
    );
    let boots: Vec<_> = (0..13).map(|_| board.power_on()).collect();
    let (a, reset) = (Some(Slot::A), None);
    let mut expected = [a, a, a, reset].repeat(3);
    expected.push(a);
    assert_eq!(boots, expected, "slot B was started");
    // The resets gave B its tries back, but B is still out of the order; the startup
    // step sets them to 0 again and the download resumes into the slot.
    assert_eq!(board.uboot("BOOT_B_LEFT"), "3");
    assert_eq!(board.boot(), json!({"status": "normal"}));
    assert_eq!(board.uboot("BOOT_B_LEFT"), "0");
    up.download(&plan, &mut |_, _| {}, &CancelToken::new())
        .unwrap();
    assert_eq!(up.install(&plan).unwrap(), Slot::B);
    up.activate(false).unwrap();
    assert_eq!(board.uboot("BOOT_ORDER"), "B A");
    assert_eq!(board.power_on(), Some(Slot::B));
}

/// A confirmed slot the bootloader gave up on (three starts of B that never reached the
/// startup step) is still good: the startup step on A repairs the environment, which
/// still preferred B, and B stays in `BOOT_ORDER` with 0 tries, the fallback that a crash
/// loop of A reaches after the script's reset. Only a slot that holds nothing to boot, or
/// a release rolled back, leaves the order.
#[test]
fn a_good_slot_the_bootloader_gave_up_on_stays_in_the_boot_order() {
    let (repo, _server, board) = served_board("gaveup", Loader::UBoot);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot(), json!({"status": "normal"}));
    release_image(&repo, "2.0.0", MIB, 2);
    assert_eq!(update_with_library(&board.updater()), Slot::B);
    assert_eq!(board.power_on(), Some(Slot::B));
    board.updater().confirm().unwrap();
    let (a, b) = (Some(Slot::A), Some(Slot::B));
    let boots: Vec<_> = (0..4).map(|_| board.power_on()).collect();
    assert_eq!(boots, [b, b, b, a]);
    board.boot();
    let status = board.dev.status();
    assert_eq!(status["slots"]["b"]["status"], "good", "{status}");
    assert_eq!(
        (board.uboot("BOOT_ORDER"), board.uboot("BOOT_B_LEFT")),
        ("A B".into(), "0".into())
    );
    let boots: Vec<_> = (0..8).map(|_| board.power_on()).collect();
    assert_eq!(boots, [a, a, a, None, a, a, a, b]);
}

/// A release whose image is 0 bytes (published by another tool: `evergreen release`
/// refuses it) is refused before the download touches the slot, naming the component:
/// slot B keeps its record, its bytes and its place in the boot environment.
#[test]
fn an_image_of_0_bytes_is_refused_before_the_slot_is_touched() {
    let (repo, server, board, _image, _blob) =
        board_offered_an_image("emptyimage", Loader::Grub, MIB);
    let blob = format!("blobs/sha256/{}", evergreen::trust::sha256_hex(b""));
    repo.edit_channel("stable", |m| {
        let release = m
            .releases
            .iter_mut()
            .find(|r| r.version.major == 2)
            .unwrap();
        let target = release.targets.get_mut(TARGET).unwrap();
        let artifact = &mut target.components.get_mut("rootfs").unwrap().artifact;
        artifact.size = 0;
        artifact.sha256 = evergreen::trust::sha256_hex(b"");
    });
    let (status, env) = (board.dev.status(), std::fs::read(&board.env).unwrap());
    let slot_b = board.slot_bytes(Slot::B);
    let err = failed_update(&board);
    assert_eq!(
        err,
        "error[config]: component rootfs of 2.0.0: expected an image of at least 1 byte, found one of 0 bytes (nothing to write into a slot)"
    );
    assert_eq!(board.dev.status()["slots"], status["slots"]);
    assert_eq!(std::fs::read(&board.env).unwrap(), env);
    assert!(board.slot_bytes(Slot::B) == slot_b, "slot B was written");
    assert!(server.requests(&blob).is_empty());
    assert!(!board.dev.state.join("image-stream").exists());
}

/// The state directory needs no room for an image: one four times the size of its file
/// system's free space installs.
#[test]
fn an_image_larger_than_the_state_directorys_free_space_installs() {
    let (repo, _server, board) = served_board("smallstate", Loader::UBoot);
    let small = repo.scratch("smallstate-fs");
    let Some(_fs) = Mounted::tmpfs(&small, 512) else {
        return;
    };
    let state = small.join("state");
    board.dev.edit_config(|cfg| cfg["state_dir"] = json!(state));
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot(), json!({"status": "normal"}));
    let image = std::fs::read(release_image(&repo, "2.0.0", 2 * MIB, 2)).unwrap();
    board.dev.expect("update", &["--yes"], 0);
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
    assert_eq!(board.power_on(), Some(Slot::B));
}

/// A connection torn in the middle of an image leaves what arrived in the slot, recorded:
/// the next try asks for the rest with `Range`, also in a later update after both tries
/// of one were cut. The slot stays `installing` and out of the boot order meanwhile.
#[test]
fn a_torn_connection_mid_image_resumes_where_the_slot_left_off() {
    use support::Fault;
    let (_repo, server, board, image, blob) =
        board_offered_an_image("torn", Loader::UBoot, 2 * MIB);
    let running = board.slot_bytes(Slot::A);
    // Both tries of the update (the board retries once) are cut after 300,000 bytes.
    server.set_fault_times("blobs/", Fault::DropAfter(300_000), 2);
    let err = failed_update(&board);
    assert!(err.starts_with("error[network]:"), "{err}");
    let s = board.dev.status();
    assert_eq!(s["slots"]["b"]["status"], "installing");
    assert_eq!(s["primary"], "a");
    // The 600,000 bytes received are in the slot, not the state directory.
    assert_eq!(
        image_sized_in(&board.dev.state, 300_000),
        Vec::<PathBuf>::new()
    );
    assert!(board.slot_bytes(Slot::B)[..600_000] == image[..600_000]);
    assert_eq!(board.power_on(), Some(Slot::A), "the board still boots A");
    assert_eq!(board.boot(), json!({"status": "normal"}));

    board.dev.expect("update", &["--yes"], 0);
    assert_eq!(
        ranges(&server, &blob),
        [
            None,
            Some("bytes=300000-".into()),
            Some("bytes=600000-".into())
        ]
    );
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
    assert!(board.slot_bytes(Slot::A) == running, "slot A was changed");
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "trial");
    assert_eq!(board.power_on(), Some(Slot::B));
}

/// A checkpoint whose sync of the slot or write of the record fails ends the download
/// with that error (`io`, not retried as a cut connection would be), and the record is
/// not written again behind it: a failed `fsync` is reported once, and one repeated may
/// succeed with the bytes lost, which the record would then vouch for. The next update
/// fetches the image from the last record that held.
#[test]
fn a_failed_checkpoint_ends_the_download_and_never_vouches_for_its_bytes() {
    let (_repo, server, board, image, blob) =
        board_offered_an_image("checkpoint", Loader::Grub, MIB);
    let out = board.dev.run_env(
        "update",
        &["--yes"],
        &[
            ("EVERGREEN_STREAM_CHECKPOINT", "65536"),
            // The first is the record of 0 bytes made before any is written.
            ("EVERGREEN_FAIL_AT", "sync streamed image:2"),
        ],
    );
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error[io]: sync streamed image: failed on purpose"),
        "{err}"
    );
    assert_eq!(server.requests(&blob).len(), 1, "retried");
    let record = std::fs::read_to_string(board.dev.state.join("image-stream")).unwrap();
    assert_eq!(record.split_whitespace().nth(2), Some("0"), "{record}");
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installing");
    assert_eq!(board.power_on(), Some(Slot::A), "the board still boots A");
    assert_eq!(board.boot(), json!({"status": "normal"}));

    board.dev.expect("update", &["--yes"], 0);
    let requests = server.requests(&blob);
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].range, None);
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
}

/// A server that answers the resume with the whole image (200, not 206) is read from its
/// first byte: what the slot holds is compared with it, byte for byte, and the image
/// completes from that one response. A kept byte that differs from the body (changed in
/// the slot behind the record's back) is replaced there; a resume that took the kept bytes
/// for the body's first ones unread would fail its hash and fetch again.
#[test]
fn a_server_that_ignores_range_restarts_the_image_from_its_first_byte() {
    use support::Fault;
    let (_repo, server, board, image, blob) =
        board_offered_an_image("norange", Loader::Grub, 2 * MIB);
    server.set_fault_times("blobs/", Fault::DropAfter(300_000), 2);
    failed_update(&board);
    // What the whole image is compared with is in the slot.
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installing");
    assert!(board.slot_bytes(Slot::B)[..600_000] == image[..600_000]);
    flip_byte(&board.b, 123_456);
    server.set_fault("blobs/", Fault::IgnoreRange);
    let before = server.requests(&blob).len();
    board.dev.expect("update", &["--yes"], 0);
    let requests = server.requests(&blob);
    assert_eq!(requests.len(), before + 1, "fetched again: {requests:?}");
    let last = &requests[before];
    assert_eq!(
        (last.range.as_deref(), last.status),
        (Some("bytes=600000-"), 200)
    );
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
    assert_eq!(board.power_on(), Some(Slot::B));
}

/// An image served with other bytes is `hash_mismatch`: the slot it went into stays
/// `installing` and out of the boot order, the running slot is untouched, and once the
/// server is fixed an update fetches it again from its first byte and installs it.
#[test]
fn an_image_served_wrong_is_hash_mismatch_and_installs_once_the_server_is_fixed() {
    use support::Fault;
    let (_repo, server, board, image, blob) =
        board_offered_an_image("wrongbytes", Loader::Grub, MIB);
    let running = board.slot_bytes(Slot::A);
    server.set_fault("blobs/", Fault::Replace(board::pattern(MIB, 9)));
    let err = failed_update(&board);
    assert!(err.starts_with("error[hash_mismatch]:"), "{err}");
    let s = board.dev.status();
    assert_eq!(s["primary"], "a");
    assert_eq!(s["trial"], Value::Null);
    assert_eq!(s["slots"]["b"]["status"], "installing");
    assert_eq!(board.grub("B_OK"), "0");
    assert!(board.slot_bytes(Slot::A) == running, "slot A was changed");
    assert_eq!(board.power_on(), Some(Slot::A), "the board still boots A");
    assert_eq!(board.boot(), json!({"status": "normal"}));

    server.clear_faults();
    let before = server.requests(&blob).len();
    board.dev.expect("update", &["--yes"], 0);
    let requests = server.requests(&blob);
    assert_eq!(requests.len(), before + 1);
    assert_eq!(requests[before].range, None);
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "trial");
    assert_eq!(board.power_on(), Some(Slot::B));
}

/// A download cancelled part-way keeps what reached the slot, recorded; the next download
/// resumes after it, and the install reads the whole back.
#[test]
fn a_cancelled_image_download_resumes_after_the_bytes_already_in_the_slot() {
    let (_repo, server, board, image, blob) =
        board_offered_an_image("cancelled", Loader::Grub, 4 * MIB);
    let up = board.updater();
    let plan = planned(&up, "expected 2.0.0");
    let cancel = CancelToken::new();
    let err = up
        .download(&plan, &mut |_, _| cancel.cancel(), &cancel)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installing");
    assert_eq!(board.power_on(), Some(Slot::A), "the board still boots A");
    assert_eq!(up.startup().unwrap(), Startup::Normal);
    let err = up.install(&plan).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");

    up.download(&plan, &mut |_, _| {}, &CancelToken::new())
        .unwrap();
    let requests = server.requests(&blob);
    assert_eq!(requests.len(), 2);
    let from: u64 = requests[1]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .unwrap_or_else(|| panic!("{requests:?}"));
    assert!(from > 0 && from < 4 * MIB as u64, "{requests:?}");
    assert_eq!(up.install(&plan).unwrap(), Slot::B);
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
}

/// Flips the byte at `at` of `path`, as a running system's read-write mount changes its
/// root file system (a mount count, a log).
fn flip_byte(path: &Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[!b[0]]).unwrap();
}

/// The record of an image streamed whole into slot B is not believed once B has been
/// installed, run and rolled back: the release asked for again is fetched, not passed
/// off as the bytes B holds now (which the running system changed).
#[test]
fn a_progress_record_from_before_the_slot_ran_is_not_believed() {
    let (_repo, server, board, image, blob) =
        board_offered_an_image("stalerecord", Loader::Grub, MIB);
    board.dev.expect("update", &["--yes"], 0);
    assert_eq!(board.power_on(), Some(Slot::B));
    assert_eq!(board.boot()["status"], "trial");
    flip_byte(&board.b, 1024);
    board.dev.expect("rollback", &[], 0);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot(), json!({"status": "normal"}));

    // Cut at the download's first record of its own: the stale one is gone by then,
    // not left behind as a record of some other image.
    let update = ["--yes", "--version", "2.0.0"];
    let out = board
        .dev
        .run_env("update", &update, &[("EVERGREEN_CRASH_COUNT", "1")]);
    let counted = String::from_utf8_lossy(&out.stderr).to_string();
    let first = counted
        .lines()
        .find(|l| l.starts_with("crash-point") && l.contains("sync streamed image"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no record written: {counted}"))
        .to_string();
    board.dev.expect("rollback", &[], 0);
    let out = board
        .dev
        .run_env("update", &update, &[("EVERGREEN_CRASH_AT", first.as_str())]);
    assert!(!out.status.success());
    let record = board.dev.state.join("image-stream");
    assert!(
        !record.exists(),
        "{:?}",
        std::fs::read_to_string(&record).unwrap()
    );

    let before = server.requests(&blob).len();
    board
        .dev
        .expect("update", &["--yes", "--version", "2.0.0"], 0);
    let requests = server.requests(&blob);
    assert_eq!(requests.len(), before + 1, "the image was fetched again");
    assert_eq!(requests[before].range, None);
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "trial");
}

/// A firmware download cut off while it writes its progress record leaves that record's
/// temp file; the next download removes it, as every such cut would otherwise leave one
/// more in the state directory.
#[test]
fn temp_files_of_progress_records_cut_off_do_not_pile_up() {
    let (_repo, _server, board, image, _blob) =
        board_offered_an_image("recordtemps", Loader::Grub, MIB);
    let checkpoint = ("EVERGREEN_STREAM_CHECKPOINT", "262144");
    let temps = || -> Vec<String> {
        std::fs::read_dir(&board.dev.state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("image-stream.tmp-"))
            .collect()
    };
    let update = ["--yes", "--version", "2.0.0"];
    for cut in 0..2 {
        // Counted on a whole update, rolled back to be asked for again.
        let out = board.dev.run_env(
            "update",
            &update,
            &[checkpoint, ("EVERGREEN_CRASH_COUNT", "1")],
        );
        assert!(out.status.success(), "{}", common::stderr(&out));
        board.dev.expect("rollback", &[], 0);
        let counted = String::from_utf8_lossy(&out.stderr).to_string();
        let points: Vec<&str> = counted
            .lines()
            .filter(|l| l.starts_with("crash-point"))
            .collect();
        // Cut at the fsync of the first record's temp file, written and not yet renamed.
        let at = points
            .iter()
            .position(|l| l.contains("sync streamed image"))
            .unwrap_or_else(|| panic!("no record written: {counted}"));
        let temp_sync = points[at..]
            .iter()
            .find(|l| l.contains("fsync temp"))
            .unwrap_or_else(|| panic!("no record written: {counted}"));
        let k = temp_sync.split_whitespace().nth(1).unwrap();
        let out = board
            .dev
            .run_env("update", &update, &[checkpoint, ("EVERGREEN_CRASH_AT", k)]);
        common::assert_crashed_at(&out, k.parse().unwrap());
        assert_eq!(
            temps().len(),
            1,
            "cut {cut} left its record's temp file alone"
        );
    }
    board.dev.expect("update", &update, 0);
    assert_eq!(temps(), Vec::<String>::new());
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
}

/// Wrong bytes are never recorded as the whole image, even when a checkpoint falls on
/// its last byte: cut just before the mismatch resets the record, the next update still
/// fetches (a record of the whole would skip the fetch and fail at the read-back).
#[test]
fn wrong_bytes_are_never_recorded_whole_before_their_hash_is_checked() {
    use support::Fault;
    let (_repo, server, board, image, blob) =
        board_offered_an_image("wrongwhole", Loader::Grub, MIB);
    server.set_fault("blobs/", Fault::Replace(board::pattern(MIB, 9)));
    // 1 MiB in checkpoints of 256 KiB: the last falls on the image's last byte.
    let checkpoint = ("EVERGREEN_STREAM_CHECKPOINT", "262144");
    // Counted from the state the cut run starts in: after a mismatch, the slot
    // `installing` and its record at 0.
    assert!(failed_update(&board).starts_with("error[hash_mismatch]"));
    let out = board.dev.run_env(
        "update",
        &["--yes"],
        &[checkpoint, ("EVERGREEN_CRASH_COUNT", "1")],
    );
    let counted = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(counted.contains("error[hash_mismatch]"), "{counted}");
    // The mismatch's reset is the last record of the run: cut there.
    let reset = counted
        .lines()
        .rfind(|l| l.starts_with("crash-point") && l.contains("sync streamed image"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("a record of the streamed image")
        .to_string();
    let out = board.dev.run_env(
        "update",
        &["--yes"],
        &[checkpoint, ("EVERGREEN_CRASH_AT", reset.as_str())],
    );
    assert!(!out.status.success());
    let record = std::fs::read_to_string(board.dev.state.join("image-stream")).unwrap();
    let bytes = record.split_whitespace().nth(2);
    assert_ne!(
        bytes,
        Some(MIB.to_string().as_str()),
        "recorded whole: {record}"
    );

    server.clear_faults();
    let before = server.requests(&blob).len();
    board.dev.expect("update", &["--yes"], 0);
    assert!(
        server.requests(&blob).len() > before,
        "the image was fetched"
    );
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
}

/// A release staged with no progress record of it (written over, or never kept) is
/// installed by download + install, all a C host can call: the read-back vouches for it.
#[test]
fn a_staged_release_without_its_record_is_installed_by_download_and_install() {
    let (_repo, _server, board, image, _blob) =
        board_offered_an_image("stagednorecord", Loader::Grub, MIB);
    let up = board.updater();
    let plan = planned(&up, "expected 2.0.0");
    up.download(&plan, &mut |_, _| {}, &CancelToken::new())
        .unwrap();
    up.install(&plan).unwrap();
    std::fs::remove_file(board.dev.state.join("image-stream")).unwrap();

    let up = board.updater();
    let plan = planned(&up, "expected 2.0.0 staged, not active");
    up.download(&plan, &mut |_, _| {}, &CancelToken::new())
        .unwrap();
    assert_eq!(up.install(&plan).unwrap(), Slot::B);
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installed");
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
}

/// A board running 1.0.0 from slot A, started, with 2.0.0 on the channel as a gzip image
/// of `len` bytes published with the CLI: the repository, the server, the board, the
/// image, its gzip and the path of the gzip's blob.
fn board_offered_a_gzip_image(
    name: &str,
    loader: Loader,
    len: usize,
) -> (Repo, TestServer, Board, Vec<u8>, Vec<u8>, String) {
    let (repo, server, board) = served_board(name, loader);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot(), json!({"status": "normal"}));
    let (image, gz) = board::release_gzip_image(&repo, "2.0.0", len, 2);
    let blob = format!("blobs/sha256/{}", evergreen::trust::sha256_hex(&gz));
    (repo, server, board, image, gz, blob)
}

/// Edits the artifact of 2.0.0's `rootfs` in a hand-signed manifest.
fn edit_rootfs(repo: &Repo, edit: impl FnOnce(&mut evergreen::manifest::Artifact)) {
    repo.edit_channel("stable", |m| {
        let release = m.releases.iter_mut().find(|r| r.version.major == 2);
        let target = release.unwrap().targets.get_mut(TARGET).unwrap();
        edit(&mut target.components.get_mut("rootfs").unwrap().artifact);
    });
}

/// A gzip image is downloaded compressed (fewer bytes on the wire than the image) and
/// inflated straight into the idle slot, which then holds exactly the image; the install
/// reads it back against the image's own hash, and the board boots it.
#[test]
fn a_gzip_image_is_inflated_into_the_idle_slot_and_boots() {
    let (_repo, server, board, image, gz, blob) =
        board_offered_a_gzip_image("gzip", Loader::Grub, 4 * MIB);
    assert!(
        gz.len() < image.len() / 3,
        "{} of {}",
        gz.len(),
        image.len()
    );
    let running = board.slot_bytes(Slot::A);
    let up = board.updater();
    let plan = planned(&up, "expected 2.0.0");
    assert_eq!(plan.download_size(), gz.len() as u64);
    let before = up.fetch_stats().bytes_received;
    let mut last = (0, 0);
    up.download(&plan, &mut |d, t| last = (d, t), &CancelToken::new())
        .unwrap();
    let received = up.fetch_stats().bytes_received - before;
    assert_eq!(received, gz.len() as u64, "bytes on the wire");
    assert_eq!(last, (gz.len() as u64, gz.len() as u64));
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installing");
    assert_eq!(up.install(&plan).unwrap(), Slot::B);
    up.activate(false).unwrap();
    assert_eq!(board.power_on(), Some(Slot::B));
    assert!(board.slot_bytes(Slot::A) == running, "slot A was changed");
    assert_eq!(server.requests(&blob).len(), 1);
}

/// A torn connection mid-way through a gzip image resumes within the download: the
/// inflater is kept in memory, the next attempt asks for the compressed bytes after those
/// it took, and the image completes with no byte fetched twice. The record never vouches
/// for part of it.
#[test]
fn a_gzip_image_torn_mid_way_resumes_within_the_download() {
    use support::Fault;
    let (_repo, server, board, image, gz, blob) =
        board_offered_a_gzip_image("gzipresume", Loader::UBoot, 8 * MIB);
    assert!(gz.len() > 700_000, "{}", gz.len());
    server.set_fault_times("blobs/", Fault::DropAfter(300_000), 1);
    let done = Downloaded::of(&board, |_| {});
    assert_eq!(ranges(&server, &blob), [None, Some("bytes=300000-".into())]);
    assert_eq!(done.received, gz.len() as u64, "no byte fetched twice");
    done.assert_progress_never_went_back();
    assert_eq!(done.seen.last(), Some(&(gz.len() as u64)));
    done.installs(&board, &image);
}

/// A server that answers the resume of a gzip image with the whole blob (200, `Range`
/// ignored) has its first bytes compared with those the kept inflater took, and the image
/// goes on after them in the same download: what the slot holds from the first attempt
/// is not written again.
#[test]
fn a_gzip_image_resumed_from_a_server_ignoring_range_goes_on_after_the_bytes_it_took() {
    use support::Fault;
    let (_repo, server, board, image, gz, blob) =
        board_offered_a_gzip_image("gzipnorange", Loader::Grub, 8 * MIB);
    // The newest rule is used first: the tear, then the whole blob for the resume.
    server.set_fault_times("blobs/", Fault::IgnoreRange, 1);
    server.set_fault_times("blobs/", Fault::DropAfter(300_000), 1);
    // Once the first attempt has taken its 300,000 bytes (its last report), the slot's
    // first byte flipped: inflating the image from its first byte again would mend it.
    let mut marked = false;
    let done = Downloaded::of(&board, |done| {
        if done == 300_000 && !marked {
            flip_byte(&board.b, 0);
            marked = true;
        }
    });
    done.result.unwrap();
    assert!(marked, "no report at the tear");
    assert_eq!(ranges(&server, &blob), [None, Some("bytes=300000-".into())]);
    assert_eq!(done.received, 300_000 + gz.len() as u64);
    let slot = board.slot_bytes(Slot::B);
    assert_eq!(slot[0], !image[0], "the slot's start was inflated again");
    assert!(
        slot[1..] == image[1..],
        "slot B holds the rest of the image"
    );
}

/// A 200 answering the resume of a gzip image whose first bytes differ from those the
/// inflater took is not inflated after them: either may be wrong, so the image is
/// fetched again from its first byte there and then (the last retry too), and completes.
#[test]
fn a_gzip_image_resumed_from_other_bytes_is_fetched_again_from_its_first_byte() {
    use support::Fault;
    let (_repo, server, board, image, gz, blob) =
        board_offered_a_gzip_image("gzipotherstart", Loader::Grub, 8 * MIB);
    // With `retries: 1`, the resume is the last round: the fresh start is part of it.
    let mut other = gz.clone();
    other[100] ^= 1;
    server.set_fault_times("blobs/", Fault::ErrorPage(other), 1);
    server.set_fault_times("blobs/", Fault::DropAfter(300_000), 1);
    let done = Downloaded::of(&board, |_| {});
    let resumed = Some("bytes=300000-".to_string());
    assert_eq!(ranges(&server, &blob), [None, resumed, None]);
    let received = 600_000 + gz.len() as u64;
    assert_eq!(done.received, received, "read up to the taken bytes");
    done.installs(&board, &image);
}

/// When the fresh start after a 200 of other bytes fails too, the error says what
/// happened first: the 200 that differed from the bytes taken, then what the fresh start
/// found.
#[test]
fn a_failed_fresh_start_of_a_gzip_image_after_a_200_of_other_bytes_names_that_200() {
    use support::Fault;
    let (_repo, server, board, _image, gz, blob) =
        board_offered_a_gzip_image("gzipotherfail", Loader::Grub, 8 * MIB);
    let mut other = gz.clone();
    other[100] ^= 1;
    server.set_fault_times("blobs/", Fault::ErrorPage(other), 2);
    server.set_fault_times("blobs/", Fault::DropAfter(300_000), 1);
    let done = Downloaded::of(&board, |_| {});
    let err = done.err();
    assert_eq!(err.kind(), ErrorKind::HashMismatch, "{err}");
    let first = "whose first 300000 bytes were taken from an earlier attempt, found other bytes \
                 there; fetched again from the start: ";
    assert!(err.to_string().contains(first), "{err}");
    let resumed = Some("bytes=300000-".to_string());
    assert_eq!(ranges(&server, &blob), [None, resumed, None]);
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installing");
}

/// Resumed bytes that inflate past the image's installed_size may be the fault of the
/// bytes taken before (here a first server's, which inflate as a bomb would): the image
/// is fetched once more from its first byte before the error counts, and completes.
#[test]
fn a_gzip_image_whose_resumed_bytes_inflate_too_far_is_fetched_again_from_its_first_byte() {
    use support::Fault;
    let (_repo, server, board, image, gz, blob) =
        board_offered_a_gzip_image("gzipresumedbomb", Loader::Grub, 8 * MIB);
    // 64 MiB of zeros compress to some 64 KB: its first KB inflates to about 1 MiB, all
    // of it to 8 times the image. Padded to the blob's length, so that a range of it
    // reads as one of the blob.
    let mut bomb = board::gzip(&vec![0; 64 * MIB]);
    assert!(bomb.len() < gz.len());
    bomb.resize(gz.len(), 0);
    let taken = 1000;
    server.set_fault_times("blobs/", Fault::Replace(bomb.clone()), 1);
    server.set_fault_times("blobs/", Fault::ChunkedErrorPage(bomb[..taken].to_vec()), 1);
    let done = Downloaded::of(&board, |_| {});
    let resumed = Some(format!("bytes={taken}-"));
    assert_eq!(ranges(&server, &blob), [None, resumed, None]);
    done.installs(&board, &image);
}

/// An error page answering the resume of a gzip image with 200 (a captive portal, sent
/// chunked: nothing declares its length) does not cost the inflater: the next attempt
/// resumes after the bytes it took, as a raw image's kept bytes stay.
#[test]
fn a_gzip_image_resume_answered_by_an_error_page_keeps_its_inflater() {
    use support::Fault;
    let (_repo, server, board, image, gz, blob) =
        board_offered_a_gzip_image("gzipportal", Loader::Grub, 8 * MIB);
    board
        .dev
        .edit_config(|cfg| cfg["limits"]["retries"] = json!(2));
    let page = b"<html>Sign in to the hotel network</html>".to_vec();
    server.set_fault_times("blobs/", Fault::ChunkedErrorPage(page.clone()), 1);
    server.set_fault_times("blobs/", Fault::DropAfter(300_000), 1);
    let done = Downloaded::of(&board, |_| {});
    let resumed = Some("bytes=300000-".to_string());
    assert_eq!(
        ranges(&server, &blob),
        [None, resumed.clone(), resumed.clone()]
    );
    assert_eq!(done.received, page.len() as u64 + gz.len() as u64);
    done.installs(&board, &image);
}

/// A failure before the body (a 503 between two tears) keeps the inflater too: every
/// resume asks for the bytes after the last ones it took, and none is fetched twice.
#[test]
fn a_gzip_image_keeps_its_inflater_across_a_failure_before_the_body() {
    use support::Fault;
    let (_repo, server, board, image, gz, blob) =
        board_offered_a_gzip_image("gzip503", Loader::UBoot, 8 * MIB);
    assert!(gz.len() > 700_000, "{}", gz.len());
    board
        .dev
        .edit_config(|cfg| cfg["limits"]["retries"] = json!(4));
    // Used newest first: a tear, a 503, a tear.
    server.set_fault_times("blobs/", Fault::DropAfter(300_000), 1);
    server.set_fault_times("blobs/", Fault::Status(503), 1);
    server.set_fault_times("blobs/", Fault::DropAfter(300_000), 1);
    let done = Downloaded::of(&board, |_| {});
    let from = |n: u64| Some(format!("bytes={n}-"));
    assert_eq!(
        ranges(&server, &blob),
        [None, from(300_000), from(300_000), from(600_000)]
    );
    assert_eq!(done.received, gz.len() as u64, "no byte fetched twice");
    done.assert_progress_never_went_back();
    done.installs(&board, &image);
}

/// A server serving a gzip image whose trailer is damaged is not taken for the signed
/// blob (whose own end would stop every server): its bytes fail their sha256, and the
/// mirror serves the image.
#[test]
fn a_gzip_image_with_a_damaged_trailer_from_a_server_is_taken_from_the_mirror() {
    use support::Fault;
    let (repo, server, board, image, gz, blob) =
        board_offered_a_gzip_image("gzipbadtrailer", Loader::Grub, 2 * MIB);
    let mirror = mirrored(&repo, &board);
    server.set_fault("blobs/", Fault::Replace(with_bad_crc(&gz)));
    let done = Downloaded::of(&board, |_| {});
    assert_eq!(ranges(&server, &blob), [None]);
    assert_eq!(ranges(&mirror, &blob), [None]);
    done.installs(&board, &image);
}

/// A signed gzip blob whose end is wrong (a damaged trailer, bytes after the member),
/// which a hand-made manifest may list: judged once its hash matched, it is the blob's
/// fault and no server's, and it is not fetched again after a resume.
#[test]
fn a_resumed_signed_gzip_blob_with_a_wrong_end_is_not_fetched_again() {
    use support::Fault;
    let (repo, server, board, _image, gz, _blob) =
        board_offered_a_gzip_image("gzipbadend", Loader::Grub, 8 * MIB);
    let junk = [gz.clone(), b"junk".to_vec()].concat();
    for (signed, problem) in [
        (with_bad_crc(&gz), "CRC32"),
        (junk, "trailing bytes after it"),
    ] {
        let (sha256, blob) = sign_rootfs_blob(&repo, &signed);
        server.set_fault_times("blobs/", Fault::DropAfter(300_000), 1);
        let done = Downloaded::of(&board, |_| {});
        let err = done.err();
        assert_eq!(err.kind(), ErrorKind::HashMismatch, "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("gzip image {sha256} into ")), "{msg}");
        assert!(msg.contains(problem), "{msg}");
        assert!(
            !msg.contains("fetched again") && !msg.contains("not it"),
            "{msg}"
        );
        assert_eq!(ranges(&server, &blob), [None, Some("bytes=300000-".into())]);
        assert_eq!(board.dev.status()["slots"]["b"]["status"], "installing");
    }
}

/// A signed gzip blob with a wrong end, downloaded whole from the server, is not asked
/// of the mirror: every base serves the same bytes.
#[test]
fn a_signed_gzip_blob_with_a_wrong_end_is_not_asked_of_the_mirror() {
    let (repo, server, board, _image, gz, _blob) =
        board_offered_a_gzip_image("gzipbadendmirror", Loader::Grub, 2 * MIB);
    let mirror = mirrored(&repo, &board);
    let (sha256, blob) = sign_rootfs_blob(&repo, &with_bad_crc(&gz));
    let err = failed_update(&board);
    assert!(err.starts_with("error[hash_mismatch]: "), "{err}");
    assert!(err.contains(&format!("gzip image {sha256} into ")), "{err}");
    assert!(err.contains("CRC32"), "{err}");
    assert_eq!(ranges(&server, &blob), [None]);
    assert_eq!(ranges(&mirror, &blob), Vec::<Option<String>>::new());
}

/// A gzip image whose signed blob does not inflate into the image its manifest describes
/// (a hand-made manifest's `installed_size`) fails once its hash matched, resumed or not:
/// no base serves other bytes, so it is not fetched again.
#[test]
fn a_resumed_gzip_image_of_the_wrong_installed_size_is_not_fetched_again() {
    use support::Fault;
    let (repo, server, board, image, gz, blob) =
        board_offered_a_gzip_image("gzipsize", Loader::Grub, 8 * MIB);
    let declared = image.len() as u64 + 4096;
    edit_rootfs(&repo, |a| a.installed_size = Some(declared));
    server.set_fault_times("blobs/", Fault::DropAfter(300_000), 1);
    let done = Downloaded::of(&board, |_| {});
    let err = done.err();
    assert_eq!(err.kind(), ErrorKind::HashMismatch, "{err}");
    let expected = format!(
        "expected it to decompress to {declared} bytes (its installed_size), found {}",
        image.len()
    );
    assert!(err.to_string().contains(&expected), "{err}");
    assert!(!err.to_string().contains("fetched again"), "{err}");
    assert_eq!(ranges(&server, &blob), [None, Some("bytes=300000-".into())]);
    assert_eq!(done.received, gz.len() as u64);
}

/// Resumed bytes of a gzip image that do not inflate (a server serving other bytes from
/// the offset asked for) are not taken for the server's alone: the image is fetched once
/// more from its first byte, and completes from a server that serves it whole.
#[test]
fn a_gzip_image_whose_resumed_bytes_do_not_inflate_is_fetched_again_from_its_first_byte() {
    use support::Fault;
    let (_repo, server, board, image, gz, blob) =
        board_offered_a_gzip_image("gzipbadresume", Loader::Grub, 8 * MIB);
    let mut damaged = gz.clone();
    for b in &mut damaged[400_000..400_064] {
        *b = !*b;
    }
    server.set_fault_times("blobs/", Fault::Replace(damaged), 1);
    server.set_fault_times("blobs/", Fault::DropAfter(300_000), 1);
    let done = Downloaded::of(&board, |_| {});
    let asked = ranges(&server, &blob);
    assert_eq!(asked, [None, Some("bytes=300000-".into()), None]);
    done.installs(&board, &image);
}

/// When every attempt of a download is torn, the download fails and its record says the
/// slot holds none of the image: a gzip image's inflater is not kept past the download,
/// so the next update fetches it from its first byte, and completes.
#[test]
fn a_gzip_image_torn_at_every_attempt_starts_over_at_the_next_update() {
    use support::Fault;
    let (_repo, server, board, image, gz, blob) =
        board_offered_a_gzip_image("gziptorn", Loader::UBoot, 8 * MIB);
    assert!(gz.len() > 700_000, "{}", gz.len());
    server.set_fault_times("blobs/", Fault::DropAfter(300_000), 2);
    let err = failed_update(&board);
    assert!(err.starts_with("error[network]:"), "{err}");
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installing");
    let record = std::fs::read_to_string(board.dev.state.join("image-stream")).unwrap();
    assert_eq!(record.split_whitespace().nth(2), Some("0"), "{record}");
    assert_eq!(board.power_on(), Some(Slot::A), "the board still boots A");
    assert_eq!(board.boot(), json!({"status": "normal"}));

    board.dev.expect("update", &["--yes"], 0);
    let resumed = Some("bytes=300000-".to_string());
    assert_eq!(ranges(&server, &blob), [None, resumed, None]);
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "trial");
    assert_eq!(board.power_on(), Some(Slot::B));
}

/// The `Range` headers of the requests `server` received for `path`, oldest first.
fn ranges(server: &TestServer, path: &str) -> Vec<Option<String>> {
    server.requests(path).into_iter().map(|r| r.range).collect()
}

/// One download of 2.0.0 by a fresh `Updater` of a board: what it returned, the bytes it
/// received and the progress it reported, with the updater and the plan to go on with.
struct Downloaded {
    up: Updater,
    plan: evergreen::Offer,
    result: evergreen::Result<()>,
    received: u64,
    seen: Vec<u64>,
}

impl Downloaded {
    /// Downloads 2.0.0 on `board`, handing each progress report to `on_progress` too.
    fn of(board: &Board, mut on_progress: impl FnMut(u64)) -> Downloaded {
        let up = board.updater();
        let plan = planned(&up, "expected 2.0.0");
        let before = up.fetch_stats().bytes_received;
        let mut seen = Vec::new();
        let mut progress = |done, _| {
            seen.push(done);
            on_progress(done);
        };
        let result = up.download(&plan, &mut progress, &CancelToken::new());
        let received = up.fetch_stats().bytes_received - before;
        Downloaded {
            up,
            plan,
            result,
            received,
            seen,
        }
    }

    /// The error the download must have ended with.
    fn err(&self) -> &evergreen::Error {
        self.result
            .as_ref()
            .expect_err("expected the download to fail")
    }

    fn assert_progress_never_went_back(&self) {
        let seen = &self.seen;
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "progress went back");
    }

    /// That the download completed, slot B holds `image`, and it installs.
    fn installs(&self, board: &Board, image: &[u8]) {
        if let Err(e) = &self.result {
            panic!("the download failed: {e}");
        }
        assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
        assert_eq!(self.up.install(&self.plan).unwrap(), Slot::B);
    }
}

/// `gz` with the CRC32 of its trailer damaged.
fn with_bad_crc(gz: &[u8]) -> Vec<u8> {
    let mut bad = gz.to_vec();
    bad[gz.len() - 8] ^= 1;
    bad
}

/// Serves `signed` as 2.0.0's rootfs blob in a hand-signed manifest: its SHA-256 and
/// its path under the repository.
fn sign_rootfs_blob(repo: &Repo, signed: &[u8]) -> (String, String) {
    let sha256 = evergreen::trust::sha256_hex(signed);
    let blob = format!("blobs/sha256/{sha256}");
    std::fs::write(repo.root.join(&blob), signed).unwrap();
    edit_rootfs(repo, |a| {
        a.sha256 = sha256.clone();
        a.size = signed.len() as u64;
    });
    (sha256, blob)
}

/// A mirror serving `repo`, which `board` asks after its server.
fn mirrored(repo: &Repo, board: &Board) -> TestServer {
    let mirror = TestServer::serve(&repo.root);
    board
        .dev
        .edit_config(|cfg| cfg["mirrors"] = json!([mirror.url()]));
    mirror
}

/// A gzip bomb: a (hand-signed) manifest whose installed_size is below what the blob
/// inflates to. The download stops, `too_large`, before it writes past installed_size:
/// the slot file never grows beyond it, and the board keeps booting A.
#[test]
fn a_gzip_image_inflating_past_its_installed_size_stops_before_writing_past_it() {
    let (repo, _server, board, _image, _gz, _blob) =
        board_offered_a_gzip_image("gzipbomb", Loader::Grub, 4 * MIB);
    let declared = MIB as u64;
    edit_rootfs(&repo, |a| a.installed_size = Some(declared));
    let err = failed_update(&board);
    assert!(err.starts_with("error[too_large]: "), "{err}");
    assert!(
        err.contains(&format!(
            "expected it to decompress to {declared} bytes (its installed_size), found more than that"
        )),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&board.b).unwrap().len(), declared);
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installing");
    assert_eq!(board.power_on(), Some(Slot::A), "the board still boots A");
}

/// A gzip image served damaged is `hash_mismatch`, whatever its inflater made of it: the
/// slot stays `installing`, out of the boot order, and installs once the server is fixed.
#[test]
fn a_damaged_gzip_image_is_hash_mismatch_and_leaves_the_slot_unbootable() {
    use support::Fault;
    let (_repo, server, board, image, gz, _blob) =
        board_offered_a_gzip_image("gzipbad", Loader::Grub, 2 * MIB);
    let running = board.slot_bytes(Slot::A);
    let mut bad = gz.clone();
    let middle = bad.len() / 2;
    for b in &mut bad[middle..middle + 64] {
        *b ^= 0x5a;
    }
    server.set_fault("blobs/", Fault::Replace(bad));
    let err = failed_update(&board);
    assert!(err.starts_with("error[hash_mismatch]:"), "{err}");
    let s = board.dev.status();
    assert_eq!(
        (s["primary"].as_str(), s["trial"].clone()),
        (Some("a"), Value::Null)
    );
    assert_eq!(s["slots"]["b"]["status"], "installing");
    assert_eq!(board.grub("B_OK"), "0");
    assert!(board.slot_bytes(Slot::A) == running, "slot A was changed");
    assert_eq!(board.power_on(), Some(Slot::A), "the board still boots A");

    server.clear_faults();
    board.dev.expect("update", &["--yes"], 0);
    assert!(board.slot_bytes(Slot::B) == image, "slot B holds the image");
    assert_eq!(board.power_on(), Some(Slot::B));
}

/// The install compares the slot with the signed installed_sha256, not with the
/// compressed blob's hash: a (hand-signed) manifest naming another image fails the
/// read-back, `hash_mismatch`, and the slot is never marked installed.
#[test]
fn a_gzip_image_read_back_is_compared_with_its_installed_sha256() {
    let (repo, _server, board, _image, _gz, _blob) =
        board_offered_a_gzip_image("gzipsha", Loader::Grub, MIB);
    let other = "ab".repeat(32);
    edit_rootfs(&repo, |a| a.installed_sha256 = Some(other.clone()));
    let up = board.updater();
    let plan = planned(&up, "expected 2.0.0");
    up.download(&plan, &mut |_, _| {}, &CancelToken::new())
        .unwrap();
    let err = up.install(&plan).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HashMismatch, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("expected sha256 {other} when read back")),
        "{err}"
    );
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installing");
    assert_eq!(board.power_on(), Some(Slot::A), "the board still boots A");
}

/// One received chunk of a well-compressing gzip image inflates to hundreds of MiB: a
/// cancel the host asks for in the first progress callback is honoured within a few MiB
/// of inflating, not once the whole chunk has been written into the slot.
#[test]
fn a_cancel_while_a_gzip_image_inflates_is_honoured_within_a_few_mib() {
    let len = 32 * MIB;
    let repo = Repo::new(PRODUCT);
    let server = TestServer::serve(&repo.root);
    let gz = board::gzip(&vec![0u8; len]);
    assert!(gz.len() < 64 << 10, "{} compressed bytes", gz.len());
    let path = repo.scratch("images").join("zeros.img.gz");
    std::fs::write(&path, &gz).unwrap();
    let spec = PathBuf::from(format!("{}:image", path.display()));
    repo.release("stable", "2.0.0", TARGET, &[("rootfs", &spec)], &[]);
    let board = Board::with_slots_of(&repo, &server, "gzipcancel", Loader::Grub, len);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot(), json!({"status": "normal"}));
    // The image is all zeros: the bytes written are the zeros at the front of the slot.
    std::fs::write(&board.b, vec![0xffu8; len]).unwrap();
    let up = board.updater();
    let plan = planned(&up, "expected 2.0.0");
    let cancel = CancelToken::new();
    let mut calls = 0;
    let err = up
        .download(
            &plan,
            &mut |_, _| {
                calls += 1;
                cancel.cancel()
            },
            &cancel,
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert_eq!(calls, 1);
    let slot = board.slot_bytes(Slot::B);
    let written = slot.iter().position(|b| *b != 0).unwrap_or(len);
    assert!(
        written <= 5 * MIB,
        "{written} bytes inflated after the cancel"
    );
}

/// A server dripping a well-compressed gzip image is stopped at the slow-retrieval bound
/// of its compressed bytes, as the same bytes served raw would be, not at a deadline sized
/// from the image it inflates to (a thousand times longer here: 60 s, not 2 s).
#[test]
fn a_server_dripping_a_gzip_image_is_stopped_at_the_bound_of_its_compressed_bytes() {
    use std::io::{Read as _, Write as _};
    let len = 64 * MIB;
    let repo = Repo::new(PRODUCT);
    let server = TestServer::serve(&repo.root);
    let gz = board::gzip(&vec![0u8; len]);
    let path = repo.scratch("images").join("zeros.img.gz");
    std::fs::write(&path, &gz).unwrap();
    let spec = PathBuf::from(format!("{}:image", path.display()));
    repo.release("stable", "2.0.0", TARGET, &[("rootfs", &spec)], &[]);
    let board = Board::with_slots_of(&repo, &server, "gzipdrip", Loader::Grub, len);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot(), json!({"status": "normal"}));
    // At this speed the compressed bytes take no whole second, the image 58 s.
    board.dev.edit_config(|cfg| {
        cfg["limits"]["min_speed_bytes_per_s"] = json!(len / 58);
        cfg["limits"]["speed_window_s"] = json!(1);
        cfg["limits"]["read_timeout_s"] = json!(1);
        cfg["limits"]["retries"] = json!(0);
        cfg["follow_redirects"] = json!(true);
    });
    let up = board.updater();
    let plan = planned(&up, "expected 2.0.0");
    // A chunked body whose size line never ends: one byte every 0.5 s, each within the
    // read timeout, for at most 40 s.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let drip = format!("http://{}/blob", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.read(&mut [0u8; 2048]);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        for _ in 0..80 {
            if s.write_all(b"0").is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    });
    server.set_fault("blobs/", support::Fault::Redirect(drip));
    let started = std::time::Instant::now();
    let err = up
        .download(&plan, &mut |_, _| {}, &CancelToken::new())
        .unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "stopped after {:?}: {err}",
        started.elapsed()
    );
    assert!(err.to_string().contains("within 2 s"), "{err}");
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installing");
}

/// A board running 1.0.0 from slot A, offered 2.0.0: a 4 MiB image published compressed
/// from the gzip file it returns the path of (to publish it again as it is). Returns the
/// repository, its server, the board, the image, its gzip and the file.
fn gzip_file_released(name: &str) -> (Repo, TestServer, Board, Vec<u8>, Vec<u8>, PathBuf) {
    let len = 4 * MIB;
    let repo = Repo::new(PRODUCT);
    let server = TestServer::serve(&repo.root);
    let image: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let gz = board::gzip(&image);
    let path = repo.scratch("images").join("fit.gz");
    std::fs::write(&path, &gz).unwrap();
    let compressed = PathBuf::from(format!("{}:image", path.display()));
    repo.release("stable", "2.0.0", TARGET, &[("rootfs", &compressed)], &[]);
    let board = Board::with_slots_of(&repo, &server, name, Loader::Grub, len);
    assert_eq!(board.power_on(), Some(Slot::A));
    assert_eq!(board.boot(), json!({"status": "normal"}));
    (repo, server, board, image, gz, path)
}

/// The same gzip blob published compressed (2.0.0) and then as it is (`image-raw`, 2.1.0)
/// leaves different bytes in the slot: the progress record of the first, downloaded and
/// not installed, does not pass the slot off as holding the second. The second is fetched
/// and installs on the first try.
#[test]
fn a_blob_streamed_compressed_is_not_taken_for_the_same_blob_published_raw() {
    let (repo, server, board, image, gz, path) = gzip_file_released("gzipthenraw");
    let len = image.len();
    let up = board.updater();
    let plan = planned(&up, "expected 2.0.0");
    up.download(&plan, &mut |_, _| {}, &CancelToken::new())
        .unwrap();
    assert!(board.slot_bytes(Slot::B)[..len] == image[..]);
    drop(up);
    let raw = PathBuf::from(format!("{}:image-raw", path.display()));
    repo.release("stable", "2.1.0", TARGET, &[("rootfs", &raw)], &[]);
    let up = board.updater();
    let plan = planned(&up, "expected 2.1.0");
    let before = server.log().len();
    up.download(&plan, &mut |_, _| {}, &CancelToken::new())
        .unwrap();
    assert_eq!(
        server.log().len() - before,
        1,
        "the raw blob was not fetched"
    );
    assert_eq!(up.install(&plan).unwrap(), Slot::B);
    assert!(board.slot_bytes(Slot::B)[..gz.len()] == gz[..]);
}

/// A device running the gzip blob inflated (2.0.0) is offered the same blob published as
/// it is (2.1.0): the slot will hold other bytes, so the component is `modified`, not
/// `unchanged`, and the slot ends up holding the blob's own bytes.
#[test]
fn the_same_blob_published_as_it_is_after_compressed_is_a_modified_component() {
    let (repo, _server, board, _image, gz, path) = gzip_file_released("gzipmodified");
    assert_eq!(update_with_library(&board.updater()), Slot::B);
    assert_eq!(board.power_on(), Some(Slot::B));
    board.boot();
    board.dev.expect("confirm", &[], 0);
    let raw = PathBuf::from(format!("{}:image-raw", path.display()));
    repo.release("stable", "2.1.0", TARGET, &[("rootfs", &raw)], &[]);
    let up = board.updater();
    let plan = planned(&up, "expected 2.1.0");
    let ops: Vec<_> = plan
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.op))
        .collect();
    assert_eq!(ops, [("rootfs", evergreen::stage::ComponentOp::Modified)]);
    assert_eq!(update_with_library(&up), Slot::A);
    assert!(board.slot_bytes(Slot::A)[..gz.len()] == gz[..]);
}

/// Bytes of a gzip image that do not inflate are the server's, as a raw image's wrong
/// sha256 is: the error names the mirror that served them and the origin that redirected
/// there, and says they are not the signed blob, with what is wrong after.
#[test]
fn a_damaged_gzip_image_error_names_the_mirror_that_served_it() {
    use support::Fault;
    let (repo, server, board, _image, gz, blob) =
        board_offered_a_gzip_image("gzipmirror", Loader::Grub, 2 * MIB);
    let mirror = TestServer::serve(&repo.root);
    // The first deflate block's type set to 3, which no deflate data has.
    let mut bad = gz.clone();
    bad[10] |= 0b110;
    server.set_fault(
        "blobs/",
        Fault::Redirect(format!("{}/{blob}", mirror.url())),
    );
    mirror.set_fault("blobs/", Fault::Replace(bad));
    board
        .dev
        .edit_config(|cfg| cfg["follow_redirects"] = json!(true));
    let err = failed_update(&board);
    let sha256 = evergreen::trust::sha256_hex(&gz);
    let named = format!(
        "error[hash_mismatch]: {}/{blob} (redirected from {}/{blob}): expected the signed blob sha256 {sha256} (a gzip image), found bytes that are not it: ",
        mirror.url(),
        server.url()
    );
    assert!(err.starts_with(&named), "{err}\nwanted: {named}");
}

/// A resume answered with 200 (a server or CDN that ignores `Range`) into a slot that is a
/// block device, as a real board's slot is: the kept bytes are compared with the body and
/// the image completed, as for a plain file slot. They were read back through a path open
/// that takes regular files only, and every later update failed with `io`.
#[test]
fn a_block_device_slot_resumed_by_a_server_ignoring_range_completes() {
    let (_repo, server, board, image, _blob) =
        board_offered_an_image("norange_blk", Loader::Grub, 2 * MIB);
    let backing = board.b.with_extension("loopback");
    std::fs::write(&backing, vec![0u8; 4 * MIB]).unwrap();
    let Some(device) = LoopDevice::attach(&backing) else {
        return;
    };
    set_slot_path(&board, "b", &device.0);
    resumed_against_a_server_ignoring_range(&server, &board);
    assert_eq!(
        sha256_prefix(&device.0, image.len()),
        evergreen::trust::sha256_hex(&image)
    );
}

/// The same with slot b named by a symlink (a `/dev/disk/by-partlabel/…` name,
/// which docs/firmware.md says is fine) to a plain file.
#[test]
fn a_symlinked_slot_resumed_by_a_server_ignoring_range_completes() {
    let (_repo, server, board, image, _blob) =
        board_offered_an_image("norange_link", Loader::Grub, 2 * MIB);
    let target = board.b.with_extension("target");
    std::fs::write(&target, b"").unwrap();
    let link = board.b.with_extension("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    set_slot_path(&board, "b", link.to_str().unwrap());
    resumed_against_a_server_ignoring_range(&server, &board);
    assert!(
        std::fs::read(&target).unwrap() == image,
        "slot b holds the image"
    );
}

/// An update cut short after part of the image is in slot b, then run again against a
/// server that answers the resume with the whole image (it ignores `Range`): it succeeds.
fn resumed_against_a_server_ignoring_range(server: &support::TestServer, board: &Board) {
    use support::Fault;
    server.set_fault_times("blobs/", Fault::DropAfter(300_000), 2);
    failed_update(board);
    assert_eq!(board.dev.status()["slots"]["b"]["status"], "installing");
    server.set_fault("blobs/", Fault::IgnoreRange);
    let out = board.dev.run("update", &["--yes"]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
}

/// A release staged in an image slot (its activation left to the host) has nothing left
/// to download: its image is in the slot, and a download of it fetches nothing. The
/// check's `download_bytes` says so, as on dir slots and as `update` says in words.
#[test]
fn an_image_staged_already_has_nothing_left_to_download() {
    for loader in [Loader::Grub, Loader::UBoot] {
        let (repo, server, board) = served_board(&format!("staged-bytes-{loader:?}"), loader);
        assert_eq!(board.power_on(), Some(Slot::A));
        board.dev.edit_config(|cfg| {
            cfg["deploy"] = json!({"policy": "download_only"});
        });
        release_image(&repo, "2.0.0", MIB, 2);
        let staged = json_out(&board.dev.expect("update", &["--yes", "--json"], 0));
        assert_eq!(staged["status"], "staged", "{staged}");
        assert_eq!(board.dev.status()["slots"]["b"]["status"], "installed");

        server.clear_log();
        let check = json_out(&board.dev.expect("check", &["--json"], 10));
        assert_eq!(check["version"], "2.0.0", "{check}");
        let out = board.dev.expect("update", &["--yes"], 0);
        assert!(out.contains("nothing to download"), "{out}");
        let blobs = blob_requests(&server);
        assert_eq!(
            blobs, 0,
            "{loader:?}: `update` fetched the staged image again: {out}"
        );
        assert_eq!(
            check["download_bytes"], 0,
            "{loader:?}: {check}; `update` then fetched nothing: {out}"
        );
    }
}

/// An image streamed whole into its slot by `update --download-only` has nothing left to
/// download either: the next `update` fetches none of it, and the check before says so in
/// `download_bytes`, as for a release fetched by `update --download-only` on dir slots.
#[test]
fn an_image_downloaded_already_has_nothing_left_to_download() {
    for loader in [Loader::Grub, Loader::UBoot] {
        let (repo, server, board) = served_board(&format!("streamed-bytes-{loader:?}"), loader);
        assert_eq!(board.power_on(), Some(Slot::A));
        release_image(&repo, "2.0.0", MIB, 2);
        let got = json_out(
            &board
                .dev
                .expect("update", &["--yes", "--download-only", "--json"], 0),
        );
        assert_eq!(got["status"], "downloaded", "{got}");

        server.clear_log();
        let check = json_out(&board.dev.expect("check", &["--json"], 10));
        assert_eq!(check["version"], "2.0.0", "{check}");
        let out = json_out(&board.dev.expect("update", &["--yes", "--json"], 0));
        assert_eq!(out["status"], "activated", "{out}");
        let blobs = blob_requests(&server);
        assert_eq!(
            blobs, 0,
            "{loader:?}: `update` fetched the streamed image again"
        );
        assert_eq!(check["download_bytes"], 0, "{loader:?}: {check}");
    }
}
