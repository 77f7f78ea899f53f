//! End-to-end over loopback HTTP with the real CLI and the launcher example: install,
//! update with a trial, confirm, an update whose app fails its health check and comes back
//! by itself, component deltas, and a failed install that loses nothing.

mod common;
mod mounts;
mod require;
mod support;

use common::{make_zip, tree_digest, Device, Repo};
use evergreen::slots::{BootSelector, Slot};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{Fault, TestServer};

/// The example `name` (the launcher, the app), built by `cargo test` next to the test
/// binaries.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "build the example first: cargo build --example {name}"
    );
    path
}

fn launcher() -> PathBuf {
    example("launcher")
}

/// An app whose `run.sh` confirms itself when healthy, or fails its health check.
fn app_zip(dir: &Path, version: &str, healthy: bool) -> PathBuf {
    let script = if healthy {
        format!(
            "#!/bin/sh\n\"$EVERGREEN\" confirm --config \"$EVERGREEN_CONFIG\" >/dev/null || exit 1\necho \"app {version} healthy\"\n"
        )
    } else {
        format!("#!/bin/sh\necho \"app {version}: health check failed\" >&2\nexit 1\n")
    };
    let path = dir.join(format!("app-{version}.zip"));
    make_zip(
        &path,
        &[
            ("run.sh", script.as_bytes()),
            ("VERSION", version.as_bytes()),
        ],
    );
    path
}

/// Starts the app through the launcher, as a service manager would.
fn start(dev: &Device) -> std::process::Output {
    let mut cmd = Command::new(launcher());
    cmd.args(["--config", dev.config.to_str().unwrap()])
        .args(["--component", "app", "--entry", "run.sh"])
        .env("EVERGREEN", common::bin())
        .env("EVERGREEN_CONFIG", &dev.config);
    common::output_within(&mut cmd, common::CLI_LIMIT)
}

fn fast() -> serde_json::Value {
    serde_json::json!({"limits": {"retries": 1, "retry_backoff_ms": 10}})
}

/// A repository served on loopback and one device with dir slots pointing at it.
struct Setup {
    /// Bind it (`repo: _repo`) even when unused: dropping it deletes the served directory.
    repo: Repo,
    src: PathBuf,
    server: TestServer,
    dev: Device,
}

fn setup(product: &str) -> Setup {
    let repo = Repo::new(product);
    let src = repo.scratch("src");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), fast());
    Setup {
        repo,
        src,
        server,
        dev,
    }
}

/// Publishes the app at `version` to stable.
fn publish_app(repo: &Repo, src: &Path, version: &str, healthy: bool) {
    let zip = app_zip(src, version, healthy);
    repo.release("stable", version, "x86_64-linux", &[("app", &zip)], &[]);
}

/// A repository of `product` offering a healthy 1.0.0 on stable, not yet served, and
/// its sources' directory.
fn repo_with_1_0_0(product: &str) -> (Repo, PathBuf) {
    let repo = Repo::new(product);
    let src = repo.scratch("src");
    publish_app(&repo, &src, "1.0.0", true);
    (repo, src)
}

/// [`fast`] with `mirrors` (a JSON array of bases) after the server.
fn with_mirrors(mirrors: serde_json::Value) -> serde_json::Value {
    let mut extra = fast();
    extra["mirrors"] = mirrors;
    extra
}

/// A setup whose repository offers a healthy 1.0.0.
fn setup_with_1_0_0(product: &str) -> Setup {
    let setup = setup(product);
    publish_app(&setup.repo, &setup.src, "1.0.0", true);
    setup
}

/// Installs what the device is offered, starts it and confirms it: it is the good primary.
fn install_and_confirm(dev: &Device) {
    dev.expect("update", &["--yes"], 0);
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
}

/// `check --json`, which must exit with `code` (10: an update is available).
fn check_json(dev: &Device, code: i32) -> serde_json::Value {
    serde_json::from_str(&dev.expect("check", &["--json"], code)).unwrap()
}

/// Where the device's `current` link points.
fn current(dev: &Device) -> PathBuf {
    std::fs::read_link(dev.root.join("current")).unwrap()
}

/// A library handle on the device, as a host would build one from its config file.
fn updater_for(dev: &Device) -> evergreen::Updater {
    let config = evergreen::Config::from_file(&dev.config).unwrap();
    evergreen::Updater::builder(config).build().unwrap()
}

/// The offer of `version`, which the check must find.
fn offer(updater: &evergreen::Updater, version: &str) -> evergreen::Offer {
    let evergreen::Check::Available(offer) = updater.check().unwrap() else {
        panic!("expected {version} to be offered");
    };
    offer
}

/// Downloads `plan` with no progress callback and no cancel.
fn download(updater: &evergreen::Updater, plan: &evergreen::Offer) {
    updater
        .download(plan, &mut |_, _| {}, &evergreen::fetch::CancelToken::new())
        .unwrap();
}

/// Plans, downloads, installs and activates (with a trial) the offered `version`, as
/// `evergreen update` does.
fn update_to(updater: &evergreen::Updater, version: &str) {
    let plan = updater.plan(&offer(updater, version)).unwrap();
    download(updater, &plan);
    updater.install(&plan).unwrap();
    updater.activate(true).unwrap();
}

#[test]
fn a_failing_release_rolls_back_by_itself() {
    let Setup {
        repo,
        src,
        server: _server,
        dev,
    } = setup("com.acme.e2e");

    publish_app(&repo, &src, "1.0.0", true);
    dev.expect("update", &["--yes"], 0);
    let out = start(&dev);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(dev.status()["slots"]["b"]["status"], "good");

    publish_app(&repo, &src, "1.1.0", true);
    let check = check_json(&dev, 10);
    assert_eq!(check["version"], "1.1.0");
    assert_eq!(check["components"][0]["op"], "modified");
    dev.expect("update", &["--yes"], 0);
    let s = dev.status();
    assert_eq!(s["trial"]["slot"], "a");
    assert_eq!(s["slots"]["a"]["status"], "trial");
    let out = start(&dev);
    assert!(String::from_utf8_lossy(&out.stdout).contains("app 1.1.0 healthy"));
    let s = dev.status();
    assert_eq!(s["slots"]["a"]["status"], "good");
    assert_eq!(s["trial"], serde_json::Value::Null);

    publish_app(&repo, &src, "1.2.0", false);
    dev.expect("update", &["--yes"], 0);
    assert_eq!(dev.status()["primary"], "b");
    for n in 0..3 {
        let out = start(&dev);
        assert!(
            !out.status.success(),
            "start {n} of the broken app should fail"
        );
        assert_eq!(dev.status()["trial"]["tries_left"], 2 - n);
    }
    // The fourth start finds the tries used up: back to 1.1.0, which runs.
    let out = start(&dev);
    let err = common::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("app 1.1.0 healthy"));
    assert!(
        err.contains("rolled back from slot b (1.2.0) to slot a")
            && err.contains("started 3 time(s) without being confirmed"),
        "{err}"
    );
    let s = dev.status();
    assert_eq!(s["primary"], "a");
    assert_eq!(s["slots"]["a"]["version"], "1.1.0");
    assert_eq!(s["slots"]["b"]["status"], "bad");
    assert_eq!(s["slots"]["b"]["version"], "1.2.0");
    assert_eq!(current(&dev), Path::new("slots/a"));
    // 1.2.0 failed here: it is not offered again, but a newer release is.
    let up = check_json(&dev, 0);
    assert_eq!(up["status"], "up_to_date");
    publish_app(&repo, &src, "1.3.0", true);
    let check = check_json(&dev, 10);
    assert_eq!(check["version"], "1.3.0");
}

/// The app keeps starting when the updater cannot run its startup step: the launcher
/// says why and starts the slot `current` points at.
#[test]
fn the_launcher_starts_the_current_slot_when_the_startup_step_fails() {
    let Setup {
        repo,
        src,
        server: _server,
        dev,
    } = setup("com.acme.launcher");
    // An app that does not confirm itself (the state is unreadable for it too); it says
    // that it ran.
    publish_app(&repo, &src, "1.0.0", false);
    dev.expect("update", &["--yes"], 0);
    let state = dev.state.join("state.json");
    std::fs::write(&state, b"{\"schema\": 1, \"prim").unwrap();
    let out = start(&dev);
    let stderr = common::stderr(&out);
    assert!(
        stderr.contains(
            "the startup step failed, starting the current slot anyway: error[invalid_state]"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("app 1.0.0: health check failed"),
        "{stderr}"
    );
    // The corrupt state is left for a person to look at, never reset.
    assert_eq!(std::fs::read(&state).unwrap(), b"{\"schema\": 1, \"prim");
}

/// Linux paths and arguments are bytes: a config file whose path is not UTF-8, and an
/// argument for the app that is not (a file name it is to open), reach the launcher as
/// they are. It starts the app with the argument unchanged, rather than panic before the
/// app ever runs.
#[test]
fn the_launcher_takes_a_config_path_and_app_arguments_that_are_not_utf8() {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let Setup {
        repo,
        src,
        server: _server,
        dev,
    } = setup("com.acme.launcher-bytes");
    // An app that writes its first argument, byte for byte, where `ARG_OUT` says.
    let zip = src.join("app-args.zip");
    make_zip(
        &zip,
        &[(
            "run.sh",
            b"#!/bin/sh\nprintf '%s' \"$1\" > \"$ARG_OUT\"\n" as &[u8],
        )],
    );
    repo.release("stable", "1.0.0", "x86_64-linux", &[("app", &zip)], &[]);
    dev.expect("update", &["--yes"], 0);
    let dir = repo
        .scratch("configs")
        .join(OsStr::from_bytes(b"caf\xe9 d\xffir"));
    std::fs::create_dir(&dir).unwrap();
    let config = dir.join("config.json");
    std::fs::copy(&dev.config, &config).unwrap();
    let arg = std::ffi::OsString::from_vec(b"/data/r\xe9sum\xe9.txt".to_vec());
    let written = repo.scratch("out").join("arg");
    let mut cmd = Command::new(launcher());
    cmd.arg("--config")
        .arg(&config)
        .args(["--component", "app", "--entry", "run.sh", "--"])
        .arg(&arg)
        .env("ARG_OUT", &written);
    let out = common::output_within(&mut cmd, common::CLI_LIMIT);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(std::fs::read(&written).unwrap(), arg.as_bytes());
    assert_eq!(
        dev.status()["trial"]["tries_left"],
        2,
        "the start was counted"
    );
}

/// A process stopped while it holds the state lock (Ctrl-Z during `evergreen activate`),
/// or hung, does not hold back every start: the startup step gives up after its patience
/// (a minute; `EVERGREEN_STARTUP_LOCK_PATIENCE_MS` shortens it for the test), says why, and
/// the launcher starts the current slot without counting the start. `evergreen boot`
/// fails the same way, and the trial keeps its tries.
#[cfg(feature = "fault-injection")]
#[test]
fn a_start_behind_a_held_state_lock_gives_up_and_the_current_slot_starts() {
    let Setup {
        repo,
        src,
        server: _server,
        dev,
    } = setup("com.acme.stuck");
    publish_app(&repo, &src, "1.0.0", false);
    dev.expect("update", &["--yes"], 0);
    let tries = |dev: &Device| dev.status()["trial"]["tries_left"].clone();
    let before = tries(&dev);
    assert!(before.is_u64(), "{}", dev.status());
    let held = std::fs::File::open(dev.state.join("lock")).unwrap();
    held.lock().unwrap();
    let patience = [("EVERGREEN_STARTUP_LOCK_PATIENCE_MS", "300")];
    let mut cmd = Command::new(launcher());
    cmd.args(["--config", dev.config.to_str().unwrap()])
        .args(["--component", "app", "--entry", "run.sh"])
        .env("EVERGREEN", common::bin())
        .env("EVERGREEN_CONFIG", &dev.config)
        .envs(patience);
    let out = common::output_within(&mut cmd, common::CLI_LIMIT);
    let stderr = common::stderr(&out);
    let gave_up = "expected to take the state lock within 300 ms, found another Evergreen process holding it all that time";
    assert!(
        stderr.contains("the startup step failed, starting the current slot anyway: error[io]")
            && stderr.contains(gave_up),
        "{stderr}"
    );
    assert!(
        stderr.contains("app 1.0.0: health check failed"),
        "{stderr}"
    );
    let boot = dev.run_env("boot", &[], &patience);
    assert_eq!(boot.status.code(), Some(1), "{}", common::stderr(&boot));
    assert!(
        common::stderr(&boot).contains(gave_up),
        "{}",
        common::stderr(&boot)
    );
    drop(held);
    assert_eq!(tries(&dev), before, "a start counted behind the held lock");
}

#[test]
fn one_changed_component_of_ten_downloads_only_that_one() {
    let Setup {
        repo,
        src,
        server,
        dev,
    } = setup("com.acme.delta");
    let write = |name: &str, body: &str| {
        let p = src.join(format!("{name}-{body}.txt"));
        std::fs::write(&p, body).unwrap();
        p
    };
    let first: Vec<(String, PathBuf)> = (0..10)
        .map(|i| (format!("c{i}"), write(&format!("c{i}"), "v1")))
        .collect();
    let refs: Vec<(&str, &Path)> = first
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    repo.release("stable", "1.0.0", "x86_64-linux", &refs, &[]);
    install_and_confirm(&dev);

    let mut second = first.clone();
    second[4].1 = write("c4", "v2");
    let refs: Vec<(&str, &Path)> = second
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    repo.release("stable", "1.1.0", "x86_64-linux", &refs, &[]);
    let check = check_json(&dev, 10);
    let ops: Vec<&str> = check["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops.iter().filter(|o| **o == "modified").count(), 1);
    assert_eq!(ops.iter().filter(|o| **o == "unchanged").count(), 9);

    let blobs_before = blob_requests(&server, &repo.root);
    dev.expect("update", &["--yes"], 0);
    let blobs_after = blob_requests(&server, &repo.root);
    assert_eq!(
        blobs_after - blobs_before,
        1,
        "only the changed component is downloaded"
    );
    let slot = dev
        .root
        .join("slots")
        .join(dev.status()["primary"].as_str().unwrap());
    for i in 0..10 {
        let want = if i == 4 { "v2" } else { "v1" };
        let body = std::fs::read_to_string(slot.join(format!("c{i}/c{i}-{want}.txt"))).unwrap();
        assert_eq!(body, want);
    }
}

/// GET requests for any blob so far.
fn blob_requests(server: &TestServer, repo: &Path) -> usize {
    std::fs::read_dir(repo.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            server
                .requests(&format!(
                    "blobs/sha256/{}",
                    e.unwrap().file_name().to_string_lossy()
                ))
                .len()
        })
        .sum()
}

#[test]
fn a_failed_install_leaves_the_primary_slot_byte_identical() {
    let Setup {
        repo,
        src,
        server: _server,
        dev,
    } = setup_with_1_0_0("com.acme.safe");
    install_and_confirm(&dev);
    let primary = dev.root.join("slots/b");
    let before = tree_digest(&primary);
    let state_before = dev.status();

    // 1.1.0 is a zip bomb: 64 MiB of zeros, refused by the ratio cap while installing.
    let bomb = src.join("bomb.zip");
    make_zip(&bomb, &[("zeros.bin", &vec![0u8; 64 << 20])]);
    repo.release("stable", "1.1.0", "x86_64-linux", &[("app", &bomb)], &[]);
    let out = dev.run("update", &["--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("error[unsafe_archive]"),
        "{}",
        common::stderr(&out)
    );

    assert_eq!(tree_digest(&primary), before, "the primary slot changed");
    let s = dev.status();
    assert_eq!(s["primary"], state_before["primary"]);
    assert_eq!(s["slots"]["b"], state_before["slots"]["b"]);
    assert_ne!(s["slots"]["a"]["status"], "installed");
    assert_eq!(current(&dev), Path::new("slots/b"));
    // The verified download survives the failure.
    let sha = evergreen::trust::sha256_hex(&std::fs::read(&bomb).unwrap());
    assert!(dev.state.join("downloads").join(sha).exists());
}

/// A switch of `current` cut short (the process killed between creating
/// `.current.new-<pid>` and renaming it over `current`) leaves that link behind; the next
/// switch, an activation or a rollback, removes it, whichever process left it.
#[test]
fn a_switch_removes_the_temporary_links_that_switches_cut_short_left() {
    let Setup {
        repo,
        src,
        server: _server,
        dev,
    } = setup_with_1_0_0("com.acme.leftover");
    install_and_confirm(&dev);
    publish_app(&repo, &src, "1.1.0", true);
    let leftover = dev.root.join(".current.new-99999");
    let leave_one = || std::os::unix::fs::symlink("slots/a", &leftover).unwrap();
    let left = || std::fs::symlink_metadata(&leftover).is_ok();

    leave_one();
    let updater = updater_for(&dev);
    update_to(&updater, "1.1.0");
    assert_eq!(current(&dev), Path::new("slots/a"));
    assert!(!left(), "the activation kept {}", leftover.display());

    leave_one();
    assert_eq!(updater.rollback().unwrap(), Slot::B);
    assert_eq!(current(&dev), Path::new("slots/b"));
    assert!(!left(), "the rollback kept {}", leftover.display());
}

#[test]
fn reinstall_puts_the_same_version_into_the_other_slot() {
    let Setup {
        repo: _repo,
        server: _server,
        dev,
        ..
    } = setup_with_1_0_0("com.acme.repair");
    install_and_confirm(&dev);
    let installed = tree_digest(&dev.root.join("slots/b/app"));
    // Damage the running copy; a redeploy repairs it from the signed artifact.
    std::fs::write(dev.root.join("slots/b/app/VERSION"), "tampered").unwrap();
    // A redeploy is never a check result.
    dev.expect("check", &[], 0);
    dev.expect("reinstall", &[], 0);
    let s = dev.status();
    assert_eq!(s["primary"], "a");
    assert_eq!(
        s["slots"]["a"],
        serde_json::json!({"status": "trial", "version": "1.0.0"})
    );
    assert_eq!(tree_digest(&dev.root.join("slots/a/app")), installed);
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);
}

/// A repair of a release whose downloads are kept (dir slots keep the running release's)
/// fetches nothing, and its offer says so: a download size of 0, progress that goes to
/// that total at once, and no "downloading" line from the CLI. The offer counted the
/// kept downloads (308 bytes here) and the CLI said it downloaded them.
#[test]
fn a_reinstall_from_kept_downloads_has_nothing_to_download() {
    let Setup {
        repo: _repo,
        server,
        dev,
        ..
    } = setup_with_1_0_0("com.acme.repairkept");
    install_and_confirm(&dev);
    assert!(
        !dev.downloads().is_empty(),
        "the installed release's downloads are kept"
    );
    let blobs = |s: &TestServer| {
        s.log()
            .iter()
            .filter(|l| l.path.starts_with("blobs/"))
            .count()
    };
    let fetched = blobs(&server);

    let updater = updater_for(&dev);
    let repair = updater.reinstall_offer().unwrap();
    // Every component is installed again from its artifact (kept here), and the offer
    // says so, as `reinstall --json` prints it: none is `unchanged`.
    let ops: Vec<_> = repair
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.op, c.artifact.is_some()))
        .collect();
    assert_eq!(
        ops,
        vec![("app", evergreen::stage::ComponentOp::Modified, true)]
    );
    let mut calls = Vec::new();
    let cancel = evergreen::fetch::CancelToken::new();
    updater
        .download(
            &repair,
            &mut |done, total| calls.push((done, total)),
            &cancel,
        )
        .unwrap();
    assert_eq!((repair.download_size(), calls), (0, vec![(0, 0)]));

    let out = dev.run("reinstall", &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let err = common::stderr(&out);
    assert!(
        !err.contains("downloading"),
        "expected nothing to download, found {err}"
    );
    assert_eq!(blobs(&server), fetched, "nothing was fetched");
}

/// A `pin_version` in the config is asked at every check: a pinned release that rolled
/// back on this device is not offered again (it would be installed, fail and roll back at
/// every poll). Asking for that version in one call still may.
#[test]
fn a_standing_pin_does_not_bring_back_a_release_that_rolled_back_here() {
    let Setup {
        repo,
        src,
        server: _server,
        dev,
    } = setup_with_1_0_0("com.acme.pinfail");
    install_and_confirm(&dev);
    publish_app(&repo, &src, "1.1.0", false);
    dev.edit_config(|cfg| cfg["pin_version"] = "1.1.0".into());
    assert_eq!(check_json(&dev, 10)["version"], "1.1.0");
    dev.expect("update", &["--yes"], 0);
    dev.expect("rollback", &[], 0);
    assert_eq!(dev.state_file()["failed"], serde_json::json!(["1.1.0"]));

    assert_eq!(check_json(&dev, 0)["status"], "up_to_date");
    let asked: serde_json::Value =
        serde_json::from_str(&dev.expect("check", &["--version", "1.1.0", "--json"], 10)).unwrap();
    assert_eq!(asked["version"], "1.1.0");
}

/// `current_version` names a version without build metadata that the channel lists with
/// it: reinstall finds that release by precedence, as a check does.
#[test]
fn reinstall_finds_the_current_version_listed_with_build_metadata() {
    let Setup {
        repo,
        src,
        server: _server,
        dev,
    } = setup("com.acme.buildmeta");
    publish_app(&repo, &src, "1.0.0+b7", true);
    dev.edit_config(|cfg| cfg["current_version"] = "1.0.0".into());
    std::fs::create_dir_all(dev.root.join("slots/a/app")).unwrap();
    assert_eq!(check_json(&dev, 0)["status"], "up_to_date");
    dev.expect("reinstall", &[], 0);
    let s = dev.status();
    assert_eq!(
        s["slots"][s["primary"].as_str().unwrap()],
        serde_json::json!({"status": "trial", "version": "1.0.0+b7"})
    );
}

/// A release staged under an `at` policy (not yet due) that a newer critical release later
/// names as its stepping stone is forced from the check that finds so: the offer says
/// critical, and so does the slot record `activate` decides from, which goes ahead before
/// the `at` time as for any critical update. The record follows the newest check: while
/// the critical release is halted, the staged one waits for its time again.
#[test]
fn a_staged_release_that_became_the_way_to_a_critical_one_is_forced() {
    let Setup {
        repo, src, server, ..
    } = setup_with_1_0_0("com.acme.forced");
    let mut config = fast();
    config["deploy"] = serde_json::json!({"policy": "at", "at": "2099-01-01T00:00:00Z"});
    let dev = repo.device("later", &server.url(), config);
    let updater = updater_for(&dev);
    update_to(&updater, "1.0.0");
    dev.expect("boot", &[], 0);
    dev.expect("confirm", &[], 0);

    publish_app(&repo, &src, "1.1.0", true);
    let plan = updater.plan(&offer(&updater, "1.1.0")).unwrap();
    assert!(!plan.critical);
    download(&updater, &plan);
    let staged = updater.install(&plan).unwrap();
    let waits = |why: &str| {
        let activation = updater.activate(false).unwrap();
        let deferred = matches!(activation, evergreen::Activation::Deferred { .. });
        assert!(deferred, "{why}: {activation:?}");
    };
    waits("1.1.0 alone");

    let zip = app_zip(&src, "1.2.0", true);
    let forced = ["--critical", "--min-version", "1.1.0"];
    repo.release("stable", "1.2.0", "x86_64-linux", &[("app", &zip)], &forced);
    let check_finds = |critical: bool| {
        let again = offer(&updater, "1.1.0");
        assert_eq!(again.version.to_string(), "1.1.0");
        assert_eq!(again.critical, critical, "the offer");
        let record = &dev.state_file()[staged.as_str()];
        assert_eq!(record["critical"], critical, "the slot record: {record}");
    };
    check_finds(true);
    let rollout = |percent: &str| repo.rollout("stable", "1.2.0", percent);
    rollout("0");
    check_finds(false);
    waits("1.2.0 halted");
    rollout("100");
    check_finds(true);
    // A pinned check looks at 1.1.0 alone; it does not unforce what the last check forced.
    let pinned = updater
        .check_with(None, Some(&"1.1.0".parse().unwrap()))
        .unwrap();
    assert!(
        matches!(pinned, evergreen::Check::Available(_)),
        "{pinned:?}"
    );
    assert_eq!(dev.state_file()[staged.as_str()]["critical"], true);
    let activated = updater.activate(false).unwrap();
    assert_eq!(
        activated,
        evergreen::Activation::Activated {
            slot: staged,
            version: "1.1.0".parse().unwrap()
        }
    );
}

/// A device with 1.0.0 published for it, its updater, and the plan to install it.
fn planned_1_0_0(product: &str) -> (Setup, evergreen::Updater, evergreen::Offer) {
    let setup = setup_with_1_0_0(product);
    let updater = updater_for(&setup.dev);
    let plan = updater.plan(&offer(&updater, "1.0.0")).unwrap();
    (setup, updater, plan)
}

/// A download altered on disk between `download` and `install` (they may be days apart
/// with `download_only`) is refused at install: what is installed is verified through the
/// very file descriptor it is installed from.
#[test]
fn a_download_altered_before_install_is_refused() {
    let (setup, updater, plan) = planned_1_0_0("com.acme.toctou");
    let dev = &setup.dev;
    download(&updater, &plan);
    let blob = std::fs::read_dir(dev.state.join("downloads"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let err = updater.install(&plan).unwrap_err();
    assert_eq!(err.kind(), evergreen::ErrorKind::HashMismatch, "{err}");
    let s = updater.status().unwrap();
    assert_eq!(s.primary, evergreen::slots::Slot::A);
    assert_eq!(s.slots[&evergreen::slots::Slot::B].status, "empty");
}

/// An offer is downloaded and installed only by the updater whose check made it: another
/// updater's trust root, product or state never checked that release.
#[test]
fn an_offer_from_another_updater_is_refused_before_anything_is_fetched_or_written() {
    let (setup, updater, plan) = planned_1_0_0("com.acme.issuer");
    let dev = &setup.dev;
    let other = updater_for(dev);
    let err = other
        .download(&plan, &mut |_, _| {}, &evergreen::fetch::CancelToken::new())
        .unwrap_err();
    assert_eq!(err.kind(), evergreen::ErrorKind::InvalidState, "{err}");
    assert!(
        err.to_string()
            .contains("expected an offer from this updater's own check"),
        "{err}"
    );
    assert_eq!(blob_requests(&setup.server, &setup.repo.root), 0);
    download(&updater, &plan);
    let err = other.install(&other.plan(&plan).unwrap()).unwrap_err();
    assert_eq!(err.kind(), evergreen::ErrorKind::InvalidState, "{err}");
    assert_eq!(
        other.status().unwrap().slots[&evergreen::slots::Slot::B].status,
        "empty"
    );
    // Its own offer of the same release goes through.
    let own = other.plan(&offer(&other, "1.0.0")).unwrap();
    download(&other, &own);
    assert_eq!(other.install(&own).unwrap(), evergreen::slots::Slot::B);
}

/// A host's cancel from the last progress call of a download (the only call a small
/// blob gets) is a cancel: the call says `cancelled`, not success, and the finished blob
/// is kept, so the next call receives nothing again.
#[test]
fn a_cancel_from_the_last_progress_call_cancels_and_keeps_the_blob() {
    let (setup, updater, plan) = planned_1_0_0("com.acme.lastcancel");
    let (repo, server) = (&setup.repo, &setup.server);
    let cancel = evergreen::fetch::CancelToken::new();
    let mut calls = 0;
    let err = updater
        .download(
            &plan,
            &mut |done, total| {
                calls += 1;
                if done == total {
                    cancel.cancel();
                }
            },
            &cancel,
        )
        .unwrap_err();
    assert_eq!(err.kind(), evergreen::ErrorKind::Cancelled, "{err}");
    assert_eq!(calls, 1, "the app's small zip arrives in one chunk");
    let fetched = blob_requests(server, &repo.root);
    download(&updater, &plan);
    assert_eq!(
        blob_requests(server, &repo.root),
        fetched,
        "the blob was kept"
    );
    updater.install(&plan).unwrap();
}

/// A host that calls the updater from inside one of its events (on `available`, update;
/// on `trial_boot`, confirm) would wait forever for the state lock its own thread holds.
/// It gets `invalid_state` instead, and the outer operation finishes.
#[test]
fn calling_an_updater_from_inside_its_event_callback_is_refused_not_a_deadlock() {
    let Setup {
        repo: _repo,
        server,
        dev,
        ..
    } = setup_with_1_0_0("com.acme.reentry");
    let server = std::sync::Arc::new(server);
    let config = evergreen::Config::from_file(&dev.config).unwrap();
    // A second handle on the same device, as a C host holding two would have.
    let inner = evergreen::Updater::builder(config.clone()).build().unwrap();
    let nested = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (seen, watched) = (nested.clone(), server.clone());
    let manifest_gets = move || watched.requests("channels/stable.json").len();
    let updater = evergreen::Updater::builder(config)
        .on_event(move |e| {
            let (inside, before) = match e {
                // Under the work lock of the check that found it.
                evergreen::Event::Available { .. } => ("available", manifest_gets()),
                // Under the state lock, which is only ever taken after the work lock: a
                // check from here must not even start, or it could deadlock with another
                // process's check waiting for the state lock.
                evergreen::Event::Activated { .. } => ("activated", manifest_gets()),
                _ => return,
            };
            let kind = inner.check().map(|_| ()).map_err(|e| e.kind());
            let fetched = manifest_gets() - before;
            seen.lock().unwrap().push((inside, kind, fetched));
        })
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let result = (|| {
            let evergreen::Check::Available(offer) = updater.check()? else {
                panic!("expected 1.0.0 to be offered");
            };
            let plan = updater.plan(&offer)?;
            updater.download(&plan, &mut |_, _| {}, &evergreen::fetch::CancelToken::new())?;
            updater.install(&plan)?;
            updater.activate(true).map(drop)
        })();
        tx.send(result).unwrap()
    });
    let outer = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the update finished instead of waiting for itself");
    outer.unwrap();
    let invalid = Err(evergreen::ErrorKind::InvalidState);
    assert_eq!(
        *nested.lock().unwrap(),
        [("available", invalid, 0), ("activated", invalid, 0)]
    );
}

/// An event says what the state already holds: a host that reads `status()` when told
/// `checked` sees the check's time, and when told `failed` about a download, the failure
/// in the history (a UI refreshing on events showed the state from before).
#[test]
fn status_read_from_an_event_callback_already_holds_what_the_event_says() {
    let Setup {
        repo,
        server: _server,
        dev,
        ..
    } = setup_with_1_0_0("com.acme.eventorder");
    // The blob served is damaged: the download fails its hash.
    for blob in std::fs::read_dir(repo.root.join("blobs/sha256")).unwrap() {
        let path = blob.unwrap().path();
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        std::fs::write(&path, vec![b'x'; len]).unwrap();
    }
    let config = evergreen::Config::from_file(&dev.config).unwrap();
    let reader = evergreen::Updater::builder(config.clone()).build().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let updater = evergreen::Updater::builder(config)
        .on_event(move |e| {
            let status = reader.status().unwrap();
            let line = match e {
                evergreen::Event::Checked { .. } => {
                    format!("checked: last_check set {}", status.last_check.is_some())
                }
                evergreen::Event::Failed { operation, .. } => format!(
                    "failed {operation}: last history entry {:?}",
                    status.history.last().map(|h| h.event.as_str())
                ),
                _ => return,
            };
            record.lock().unwrap().push(line);
        })
        .build()
        .unwrap();
    let offer = offer(&updater, "1.0.0");
    let plan = updater.plan(&offer).unwrap();
    let cancel = evergreen::fetch::CancelToken::new();
    let err = updater
        .download(&plan, &mut |_, _| {}, &cancel)
        .unwrap_err();
    assert_eq!(err.kind(), evergreen::ErrorKind::HashMismatch, "{err}");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "checked: last_check set true",
            "failed download: last history entry Some(\"download_failed\")",
        ]
    );
}

/// `evergreen channel` no longer waits for a running update; a switch made while the
/// update's check is on the network stands after the update is activated.
#[test]
fn a_channel_switched_while_an_update_runs_stands_after_its_activation() {
    let Setup {
        repo: _repo,
        server: _server,
        dev,
        ..
    } = setup_with_1_0_0("com.acme.switch");
    let config = evergreen::Config::from_file(&dev.config).unwrap();
    // Another process switches while the check is fetching (a second handle, as a CLI
    // run in between would).
    let other = evergreen::Updater::builder(config.clone()).build().unwrap();
    let updater = evergreen::Updater::builder(config)
        .on_event(move |e| {
            if let evergreen::Event::Checked { .. } = e {
                other.set_channel("preview").unwrap();
            }
        })
        .build()
        .unwrap();
    update_to(&updater, "1.0.0");
    assert_eq!(dev.status()["channel"], "preview");
}

/// An install takes unchanged components from the downloads kept since the primary of
/// the plan was installed, never from whichever slot is primary when it runs: a rollback
/// (another process) between the plan and the install still stages exactly the planned
/// release. Until the app restarts it may still run from the slot the rollback left, so
/// the install waits for the startup step.
#[test]
fn an_install_planned_before_a_rollback_stages_the_planned_release() {
    let Setup {
        repo,
        src,
        server: _server,
        dev,
    } = setup("com.acme.stale");
    let settings = src.join("settings.json");
    let release = |version: &str, level: u32| {
        std::fs::write(&settings, format!("{{\"level\": {level}}}")).unwrap();
        let zip = app_zip(&src, version, true);
        repo.release(
            "stable",
            version,
            "x86_64-linux",
            &[("app", &zip), ("settings", &settings)],
            &[],
        );
    };
    // 1.0.0, then 2.0.0, each installed, started and confirmed: both slots good.
    for (version, level) in [("1.0.0", 1), ("2.0.0", 2)] {
        release(version, level);
        install_and_confirm(&dev);
    }
    release("3.0.0", 2); // 2.0.0's settings
    let updater = updater_for(&dev);
    let plan = updater.plan(&offer(&updater, "3.0.0")).unwrap();
    let settings_change = plan.components.iter().find(|c| c.name == "settings");
    let settings_change = settings_change.unwrap();
    assert_eq!(
        (settings_change.op, settings_change.artifact.is_some()),
        (evergreen::stage::ComponentOp::Unchanged, false)
    );
    download(&updater, &plan);
    let before = dev.status();
    dev.expect("rollback", &[], 0); // 1.0.0 is primary again: its settings differ
    assert_eq!(dev.status()["primary"], before["fallback"]);
    // The app still runs 2.0.0 from the slot the rollback left, until it restarts.
    let err = updater.install(&plan).unwrap_err();
    assert_eq!(err.kind(), evergreen::ErrorKind::InvalidState, "{err}");
    assert!(err.to_string().contains("may still run from it"), "{err}");
    dev.expect("boot", &[], 0); // the restart: the startup step runs from 1.0.0
    let slot = updater.install(&plan).unwrap();
    let staged = dev.root.join("slots").join(slot.as_str());
    let read = |p: &str| std::fs::read_to_string(staged.join(p)).unwrap();
    assert_eq!(read("settings/settings.json"), "{\"level\": 2}");
    assert_eq!(read("app/VERSION"), "3.0.0");
}

/// A plan takes an unchanged component from its kept download; that download gone before
/// the install (removed by hand) refuses that plan, and planned again the component is
/// downloaded and installed afresh.
#[test]
fn an_install_whose_kept_download_went_missing_is_planned_again() {
    let Setup {
        repo,
        src,
        server: _server,
        dev,
    } = setup("com.acme.kept");
    let settings = src.join("settings.json");
    let zip = app_zip(&src, "1.0.0", true);
    for (version, level) in [("1.0.0", 1), ("1.0.1", 2)] {
        std::fs::write(&settings, format!("{{\"level\": {level}}}")).unwrap();
        let components = [("app", zip.as_path()), ("settings", settings.as_path())];
        repo.release("stable", version, "x86_64-linux", &components, &[]);
        if version == "1.0.0" {
            install_and_confirm(&dev);
        }
    }
    let updater = updater_for(&dev);
    let offer = offer(&updater, "1.0.1");
    let app = |plan: &evergreen::Offer| {
        let c = plan.components.iter().find(|c| c.name == "app").unwrap();
        (c.op, c.artifact.is_some())
    };
    let plan = updater.plan(&offer).unwrap();
    assert_eq!(
        app(&plan),
        (evergreen::stage::ComponentOp::Unchanged, false)
    );
    download(&updater, &plan);
    let sha = dev.installed_sha256("b", "app");
    std::fs::remove_file(dev.state.join("downloads").join(sha)).unwrap();
    let err = updater.install(&plan).unwrap_err();
    assert_eq!(err.kind(), evergreen::ErrorKind::InvalidState, "{err}");
    assert!(
        err.message()
            .starts_with("component app: expected the download kept since it was installed ")
            && err.message().ends_with("; plan again"),
        "{err}"
    );
    let plan = updater.plan(&offer).unwrap();
    assert_eq!(app(&plan), (evergreen::stage::ComponentOp::Unchanged, true));
    download(&updater, &plan);
    let slot = updater.install(&plan).unwrap();
    let staged = dev.root.join("slots").join(slot.as_str());
    assert_eq!(
        tree_digest(&staged.join("app")),
        tree_digest(&dev.root.join("current/app")),
        "extracted again from the same archive"
    );
}

/// The startup step runs on every boot, often from the app's launcher while a background
/// `evergreen update` runs. It must not wait for that update's download (network time) or
/// its check: those hold only the work lock, never the state's.
#[test]
fn the_startup_step_does_not_wait_for_a_running_check_or_download() {
    let Setup {
        repo: _repo,
        server: _server,
        dev,
        ..
    } = setup_with_1_0_0("com.acme.nowait");
    let config = evergreen::Config::from_file(&dev.config).unwrap();
    let launcher = evergreen::Updater::builder(config.clone()).build().unwrap();
    // From inside the check's `checked` event, on the checking thread itself.
    let during_check = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = during_check.clone();
    let inner = evergreen::Updater::builder(config.clone()).build().unwrap();
    let updater = evergreen::Updater::builder(config)
        .on_event(move |e| {
            if let evergreen::Event::Checked { .. } = e {
                seen.lock()
                    .unwrap()
                    .push(inner.startup().map_err(|e| e.kind()));
            }
        })
        .build()
        .unwrap();
    let offer = offer(&updater, "1.0.0");
    assert_eq!(
        *during_check.lock().unwrap(),
        [Ok(evergreen::Startup::Normal)]
    );

    // From another thread while the download waits in its progress callback.
    let plan = updater.plan(&offer).unwrap();
    let (started, booted) = (std::sync::mpsc::channel(), std::sync::mpsc::channel());
    let (in_download, release) = (started.0, std::sync::mpsc::channel::<()>());
    let boot = std::thread::spawn(move || {
        if started
            .1
            .recv_timeout(std::time::Duration::from_secs(20))
            .is_ok()
        {
            let _ = booted.0.send(launcher.startup().map_err(|e| e.kind()));
        }
    });
    let mut first = true;
    let mut outcome = None;
    updater
        .download(
            &plan,
            &mut |_, _| {
                if std::mem::take(&mut first) {
                    in_download.send(()).unwrap();
                    outcome = booted
                        .1
                        .recv_timeout(std::time::Duration::from_secs(20))
                        .ok();
                }
            },
            &evergreen::fetch::CancelToken::new(),
        )
        .unwrap();
    drop(release);
    boot.join().unwrap();
    assert!(
        matches!(outcome, Some(Ok(evergreen::Startup::Normal))),
        "the startup step waited for the download: {outcome:?}"
    );
    updater.install(&plan).unwrap();
}

/// A check that has to wait for another process's download (which holds the work lock)
/// says so before it waits, with the lock it waits for, and goes on once that is free;
/// one that finds the lock free says nothing.
#[test]
fn an_operation_that_waits_for_another_says_so() {
    use std::sync::mpsc::channel;
    use std::time::Duration;
    let Setup {
        repo: _repo,
        server: _server,
        dev,
        ..
    } = setup_with_1_0_0("com.acme.waits");
    let (events, seen) = channel();
    let config = evergreen::Config::from_file(&dev.config).unwrap();
    let updater = evergreen::Updater::builder(config)
        .on_event(move |e| {
            let _ = events.send(e.clone());
        })
        .build()
        .unwrap();
    offer(&updater, "1.0.0");
    let waits = |seen: &std::sync::mpsc::Receiver<evergreen::Event>| {
        seen.try_iter()
            .filter(|e| matches!(e, evergreen::Event::Waiting { .. }))
            .count()
    };
    assert_eq!(waits(&seen), 0, "a check that found the locks free waited");

    // Another process's download: the work lock, held as it holds it.
    let lock_path = dev.state.join("work.lock");
    let held = std::fs::File::open(&lock_path).unwrap();
    held.lock().unwrap();
    let (done, finished) = channel();
    let check = std::thread::spawn(move || {
        let _ = done.send(
            updater
                .check()
                .map(|c| matches!(c, evergreen::Check::Available(_))),
        );
    });
    let waiting = loop {
        match seen.recv_timeout(Duration::from_secs(60)) {
            Ok(e @ evergreen::Event::Waiting { .. }) => break e,
            Ok(_) => continue,
            Err(e) => panic!("expected a `waiting` event from the check, found none ({e})"),
        }
    };
    assert_eq!(
        waiting,
        evergreen::Event::Waiting {
            lock: "work".into(),
            path: lock_path.display().to_string(),
        }
    );
    assert!(
        waiting
            .to_json()
            .starts_with(r#"{"event":"waiting","lock":"work","path":"#),
        "{}",
        waiting.to_json()
    );
    assert!(
        finished.try_recv().is_err(),
        "the check went on while another held the work lock"
    );
    drop(held);
    let result = finished.recv_timeout(Duration::from_secs(60));
    check.join().unwrap();
    assert!(
        matches!(result, Ok(Ok(true))),
        "the check did not finish once the lock was free: {result:?}"
    );
    assert_eq!(waits(&seen), 0, "one `waiting` event per wait");
}

/// A host's own boot selector, whose boot changes are no-ops: the tests differ only in
/// what it says about the running slot and whether it counts tries.
struct HostSelector<F> {
    booted: F,
    counts_tries: bool,
    /// Which change fails, as a host's write of its boot config can.
    refuses: Refuses,
}

/// The change a [`HostSelector`] fails.
#[derive(Clone, Copy, PartialEq)]
enum Refuses {
    Nothing,
    Disable,
    Activation,
}

/// The error a [`HostSelector`] gives for the change it refuses.
fn refused(what: String) -> evergreen::Result<()> {
    Err(evergreen::Error::new(
        evergreen::ErrorKind::Bootloader,
        format!("the host could not {what}"),
    ))
}

impl<F> BootSelector for HostSelector<F>
where
    F: Fn() -> evergreen::Result<Option<Slot>> + Send,
{
    fn disable(&mut self, slot: Slot) -> evergreen::Result<()> {
        match self.refuses {
            Refuses::Disable => refused(format!("take slot {slot} out of the boot order")),
            _ => Ok(()),
        }
    }
    fn activate(&mut self, slot: Slot, _: u32) -> evergreen::Result<()> {
        match self.refuses {
            Refuses::Activation => refused(format!("make slot {slot} the next to boot")),
            _ => Ok(()),
        }
    }
    fn confirm(&mut self, _: Slot) -> evergreen::Result<()> {
        Ok(())
    }
    fn fall_back(&mut self, _: Slot, _: Slot) -> evergreen::Result<()> {
        Ok(())
    }
    fn booted(&self) -> evergreen::Result<Option<Slot>> {
        (self.booted)()
    }
    fn counts_tries(&self) -> bool {
        self.counts_tries
    }
}

/// A host selector that counts tries, starts the slot a test names, and whose `disable`
/// fails while a test says so (its service not up yet this early in the boot).
struct FlakySelector {
    booted: std::sync::Arc<std::sync::Mutex<Option<Slot>>>,
    disable_fails: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl BootSelector for FlakySelector {
    fn disable(&mut self, slot: Slot) -> evergreen::Result<()> {
        match self.disable_fails.load(std::sync::atomic::Ordering::SeqCst) {
            true => refused(format!("take slot {slot} out of the boot order")),
            false => Ok(()),
        }
    }
    fn activate(&mut self, _: Slot, _: u32) -> evergreen::Result<()> {
        Ok(())
    }
    fn confirm(&mut self, _: Slot) -> evergreen::Result<()> {
        Ok(())
    }
    fn fall_back(&mut self, _: Slot, _: Slot) -> evergreen::Result<()> {
        Ok(())
    }
    fn booted(&self) -> evergreen::Result<Option<Slot>> {
        Ok(*self.booted.lock().unwrap())
    }
    fn counts_tries(&self) -> bool {
        true
    }
}

/// After a rollback the startup step takes the rolled-back slot out of the boot order
/// again on every start (a bootloader may have reset it). A host selector failing that
/// does not fail the start: the running slot is confirmed, the start is counted (so the
/// next install is not refused for a slot the app may still run from), and the failure is
/// in the history once, however many starts fail it.
#[test]
fn a_selector_failing_to_keep_a_rolled_back_slot_out_does_not_fail_the_start() {
    let setup = setup_with_1_0_0("com.acme.keepout");
    let booted = std::sync::Arc::new(std::sync::Mutex::new(Some(Slot::A)));
    let disable_fails = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let up = updater_with_selector(
        &setup.dev,
        FlakySelector {
            booted: booted.clone(),
            disable_fails: disable_fails.clone(),
        },
    );
    let boot = |slot: Slot| *booted.lock().unwrap() = Some(slot);
    update_to(&up, "1.0.0");
    let first = up.state().unwrap().trial.unwrap().slot;
    boot(first);
    up.startup().unwrap();
    up.confirm().unwrap();
    publish_app(&setup.repo, &setup.src, "1.1.0", true);
    update_to(&up, "1.1.0");
    let trial = up.state().unwrap().trial.unwrap().slot;
    boot(trial);
    up.startup().unwrap();
    assert_eq!(up.rollback().unwrap(), first);
    disable_fails.store(true, std::sync::atomic::Ordering::SeqCst);
    boot(first);
    for _ in 0..3 {
        assert_eq!(up.startup().unwrap(), evergreen::Startup::Normal);
    }
    let state = up.state().unwrap();
    assert_eq!(state.left_running, None);
    let failed: Vec<_> = state
        .history
        .iter()
        .filter(|h| h.event == "keep_out_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        failed[0].detail,
        format!(
            "slot {trial} (bad) could not be taken out of the boot order again, which the bootloader may have reset: the host could not take slot {trial} out of the boot order"
        )
    );
    disable_fails.store(false, std::sync::atomic::Ordering::SeqCst);
    publish_app(&setup.repo, &setup.src, "1.2.0", true);
    let plan = offer(&up, "1.2.0");
    download(&up, &plan);
    assert_eq!(up.install(&plan).unwrap(), trial);
}

/// A library handle on `dev` with the host's own boot `selector`.
fn updater_with_selector(
    dev: &Device,
    selector: impl BootSelector + 'static,
) -> evergreen::Updater {
    let config = evergreen::Config::from_file(&dev.config).unwrap();
    evergreen::Updater::builder(config)
        .selector(Box::new(selector))
        .build()
        .unwrap()
}

/// A device of `product` with 1.0.0 published, and a library handle on it whose boot
/// selector is the host's own: one that counts tries, tells the running slot with
/// `booted`, and refuses the change `refuses` names. Keep the setup:
/// dropping it deletes the served repository.
fn with_host_selector(
    product: &str,
    booted: fn() -> evergreen::Result<Option<Slot>>,
    refuses: Refuses,
) -> (Setup, evergreen::Updater) {
    let setup = setup_with_1_0_0(product);
    let selector = HostSelector {
        booted,
        counts_tries: true,
        refuses,
    };
    let up = updater_with_selector(&setup.dev, selector);
    (setup, up)
}

/// A host boot selector that asks its own updater for the status (say, to log it) would
/// wait for the selector lock its own thread holds. It gets `invalid_state` instead.
#[test]
fn calling_an_updater_from_inside_its_boot_selector_is_refused_not_a_deadlock() {
    use std::sync::{Arc, Mutex, OnceLock};

    let Setup {
        repo: _repo,
        server: _server,
        dev,
        ..
    } = setup("com.acme.reentry-selector");
    let config = evergreen::Config::from_file(&dev.config).unwrap();
    let cell = Arc::new(OnceLock::<evergreen::Updater>::new());
    let answers = Arc::new(Mutex::new(Vec::new()));
    let (asked, answered) = (cell.clone(), answers.clone());
    let selector = HostSelector {
        booted: move || {
            if let Some(up) = asked.get() {
                if let Err(e) = up.status() {
                    answered.lock().unwrap().push(e.kind());
                }
            }
            Ok(Some(Slot::A))
        },
        counts_tries: false,
        refuses: Refuses::Nothing,
    };
    let updater = evergreen::Updater::builder(config)
        .selector(Box::new(selector))
        .build()
        .unwrap();
    assert!(cell.set(updater).is_ok());
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = cell.clone();
    std::thread::spawn(move || tx.send(handle.get().unwrap().status().map(|s| s.booted)));
    let outer = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("status finished instead of waiting for itself");
    assert_eq!(outer.unwrap(), Some(Slot::A));
    assert_eq!(
        *answers.lock().unwrap(),
        [evergreen::ErrorKind::InvalidState]
    );
}

/// A host's selector that counts tries but cannot name the running slot (`EVG_SLOT_NONE`)
/// is trusted to confirm, as it always was: only Evergreen's own GRUB and U-Boot
/// selectors, which read the kernel command line, refuse a confirm without it.
#[test]
fn a_host_selector_that_cannot_name_the_running_slot_may_confirm() {
    let (setup, up) =
        with_host_selector("com.acme.unnamed-selector", || Ok(None), Refuses::Nothing);
    let dev = &setup.dev;
    update_to(&up, "1.0.0");
    up.startup().unwrap();
    up.confirm().unwrap();
    assert_eq!(dev.status()["slots"]["b"]["status"], "good");
}

/// A rollback from a trial on a host's selector that counts tries itself and cannot name
/// the running slot: the release given up may still run until the next start, so no
/// install writes its slot until then (the state's own count of starts says nothing here).
#[test]
fn a_rollback_on_a_counting_selector_that_cannot_name_the_running_slot_keeps_it_from_installs() {
    let (setup, up) =
        with_host_selector("com.acme.unnamed-rollback", || Ok(None), Refuses::Nothing);
    update_to(&up, "1.0.0");
    up.startup().unwrap();
    up.confirm().unwrap();
    publish_app(&setup.repo, &setup.src, "1.1.0", true);
    update_to(&up, "1.1.0");
    let trial = up.state().unwrap().trial.unwrap().slot;
    up.startup().unwrap();
    assert_eq!(up.rollback().unwrap(), trial.other());
    assert_eq!(up.state().unwrap().left_running, Some(trial));

    publish_app(&setup.repo, &setup.src, "1.2.0", true);
    let plan = offer(&up, "1.2.0");
    up.download(&plan, &mut |_, _| {}, &evergreen::fetch::CancelToken::new())
        .unwrap();
    let err = up.install(&plan).unwrap_err();
    assert_eq!(err.kind(), evergreen::ErrorKind::InvalidState, "{err}");
    // After the next start the slot is idle again.
    up.startup().unwrap();
    assert_eq!(up.install(&plan).unwrap(), trial);
}

/// 1.0.0 confirmed, then 1.1.0 activated on trial and started until its three starts are
/// used up by `step` (`startup` or `startup_for_launcher`), whose fourth call rolls it
/// back; 1.2.0 is then offered and downloaded. Returns the updater, the slot given up and
/// the plan of 1.2.0.
fn trial_used_up_by(
    product: &str,
    step: fn(&evergreen::Updater) -> evergreen::Startup,
) -> (
    Setup,
    evergreen::Updater,
    evergreen::slots::Slot,
    evergreen::Offer,
) {
    let setup = setup_with_1_0_0(product);
    install_and_confirm(&setup.dev);
    publish_app(&setup.repo, &setup.src, "1.1.0", true);
    let up = updater_for(&setup.dev);
    update_to(&up, "1.1.0");
    let trial = up.state().unwrap().trial.unwrap().slot;
    for _ in 0..3 {
        assert!(matches!(step(&up), evergreen::Startup::Trial { .. }));
    }
    let outcome = step(&up);
    let evergreen::Startup::RolledBack { from, reason, .. } = outcome else {
        panic!("expected a rollback, found {outcome:?}");
    };
    assert_eq!(from, trial);
    assert!(reason.contains("was started 3 time(s)"), "{reason}");
    publish_app(&setup.repo, &setup.src, "1.2.0", true);
    let plan = offer(&up, "1.2.0");
    download(&up, &plan);
    (setup, up, trial, plan)
}

/// A host that runs the startup step inside the app runs the slot the step gives up on
/// until it restarts: nothing is installed into it before the next start, as after a
/// rollback by hand. An update from another process used to empty it under the app.
#[test]
fn a_trial_used_up_inside_the_app_keeps_its_slot_from_installs_until_the_restart() {
    let (_setup, up, trial, plan) =
        trial_used_up_by("com.acme.used-up-in-app", |up| up.startup().unwrap());
    assert_eq!(up.state().unwrap().left_running, Some(trial));
    let err = up.install(&plan).unwrap_err();
    assert_eq!(err.kind(), evergreen::ErrorKind::InvalidState, "{err}");
    up.startup().unwrap();
    assert_eq!(up.install(&plan).unwrap(), trial);
}

/// A launcher's step has started nothing yet when it rolls back: it starts the fallback,
/// and the slot given up takes the next release at once.
#[test]
fn a_trial_used_up_by_a_launcher_leaves_its_slot_free_for_installs() {
    let (_setup, up, trial, plan) = trial_used_up_by("com.acme.used-up-launcher", |up| {
        up.startup_for_launcher().unwrap().startup
    });
    assert_eq!(up.state().unwrap().left_running, None);
    assert_eq!(up.install(&plan).unwrap(), trial);
}

/// The rollback's reason names the starts the trial began with, not the config's count
/// of now: a release may ship another `trial.tries`.
#[test]
fn the_rollback_reason_names_the_starts_the_trial_had() {
    let setup = setup_with_1_0_0("com.acme.reason-tries");
    install_and_confirm(&setup.dev);
    publish_app(&setup.repo, &setup.src, "1.1.0", true);
    update_to(&updater_for(&setup.dev), "1.1.0");
    let mut config = evergreen::Config::from_file(&setup.dev.config).unwrap();
    config.trial.tries = 5;
    let up = evergreen::Updater::builder(config).build().unwrap();
    for _ in 0..3 {
        up.startup().unwrap();
    }
    let outcome = up.startup().unwrap();
    let evergreen::Startup::RolledBack { reason, .. } = outcome else {
        panic!("expected a rollback, found {outcome:?}");
    };
    assert!(reason.contains("was started 3 time(s)"), "{reason}");
}

/// An activation that fails as it syncs a directory, after a rename took effect (the
/// state's, then `current`'s): the caller hears it failed, and nothing changed. The state
/// used to keep the trial (1) or `current` to name the release never activated (2), which
/// the next start then ran or called a rollback.
#[test]
fn an_activation_whose_directory_sync_fails_changes_nothing() {
    for n in [1, 2] {
        let setup = setup_with_1_0_0(&format!("com.acme.sync-fails-{n}"));
        let dev = &setup.dev;
        install_and_confirm(dev);
        publish_app(&setup.repo, &setup.src, "1.1.0", true);
        let up = updater_for(dev);
        let plan = up.plan(&offer(&up, "1.1.0")).unwrap();
        download(&up, &plan);
        let staged = up.install(&plan).unwrap();
        let primary = staged.other();
        let link_before = current(dev);
        let fail = format!("fsync dir:{n}");
        let out = dev.run_env("activate", &["--now"], &[("EVERGREEN_FAIL_AT", &fail)]);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{n}: {err}");
        assert!(err.contains("failed on purpose"), "{n}: {err}");
        let st = up.state().unwrap();
        assert_eq!((st.primary, st.trial), (primary, None), "{n}");
        assert_eq!(
            st.slot(staged).status,
            evergreen::state::SlotStatus::Installed,
            "{n}"
        );
        assert_eq!(current(dev), link_before, "{n}: current was left switched");
        assert_eq!(up.startup().unwrap(), evergreen::Startup::Normal, "{n}");
        assert_eq!(up.state().unwrap().left_running, None, "{n}");
        assert!(matches!(
            up.activate(true).unwrap(),
            evergreen::Activation::Activated { .. }
        ));
    }
}

/// A first activation whose switch of `current` fails before the link is made leaves no
/// link, as before it: the caller hears that nothing changed, and the slot the state still
/// names primary holds nothing to start. The release stays staged and activates later.
#[test]
fn a_first_activation_whose_switch_fails_leaves_no_current_link() {
    let setup = setup_with_1_0_0("com.acme.first-switch-fails");
    let dev = &setup.dev;
    dev.edit_config(|c| c["deploy"] = serde_json::json!({"policy": "download_only"}));
    dev.expect("update", &["--yes"], 0);
    let link = dev.root.join("current");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "current exists before the first activation"
    );
    let up = updater_for(dev);
    let staged = up.state().unwrap().fallback();
    let out = dev.run_env(
        "activate",
        &["--now"],
        &[("EVERGREEN_FAIL_AT", "symlink:1")],
    );
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("failed on purpose"), "{err}");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "current -> {:?} after a first activation that failed",
        std::fs::read_link(&link)
    );
    let st = up.state().unwrap();
    assert_eq!(
        (st.trial, st.slot(staged).status),
        (None, evergreen::state::SlotStatus::Installed)
    );
    assert!(matches!(
        up.activate(true).unwrap(),
        evergreen::Activation::Activated { .. }
    ));
    assert_eq!(current(dev), Path::new("slots").join(staged.as_str()));
}

/// A counting selector that fails to name the running slot at the rollback does not know
/// it either: the rollback goes through, and the slot given up is kept from installs.
#[test]
fn a_rollback_whose_selector_cannot_read_the_running_slot_still_rolls_back() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    static BROKEN: AtomicBool = AtomicBool::new(false);
    let booted = || match BROKEN.load(SeqCst) {
        true => Err(evergreen::Error::new(
            evergreen::ErrorKind::Bootloader,
            "the boot config cannot be read",
        )),
        false => Ok(None),
    };
    let (setup, up) = with_host_selector("com.acme.unreadable-rollback", booted, Refuses::Nothing);
    update_to(&up, "1.0.0");
    up.startup().unwrap();
    up.confirm().unwrap();
    publish_app(&setup.repo, &setup.src, "1.1.0", true);
    update_to(&up, "1.1.0");
    let trial = up.state().unwrap().trial.unwrap().slot;
    up.startup().unwrap();
    BROKEN.store(true, SeqCst);
    let rolled_back = up.rollback();
    BROKEN.store(false, SeqCst);
    assert_eq!(rolled_back.unwrap(), trial.other());
    assert_eq!(up.state().unwrap().left_running, Some(trial));
}

/// An activation whose boot selector fails leaves the state as it was: the caller hears
/// that nothing changed, and the next start does not take the release that never ran for
/// one that failed its trial.
#[test]
fn an_activation_the_selector_fails_changes_nothing() {
    let (_setup, up) = with_host_selector(
        "com.acme.refused-activation",
        || Ok(Some(Slot::A)),
        Refuses::Activation,
    );
    let plan = up.plan(&offer(&up, "1.0.0")).unwrap();
    download(&up, &plan);
    let slot = up.install(&plan).unwrap();
    let before = up.status().unwrap();
    let err = up.activate(true).unwrap_err();
    assert_eq!(err.kind(), evergreen::ErrorKind::Bootloader, "{err}");
    let after = up.status().unwrap();
    assert_eq!(
        (after.primary, after.trial.is_none()),
        (before.primary, true)
    );
    assert_eq!(after.slots[&slot].status, "installed");
    assert_eq!(up.startup().unwrap(), evergreen::Startup::Normal);
    assert!(up.state().unwrap().failed.is_empty());
}

/// An install whose boot selector fails to take the idle slot out of the boot order (a
/// host's write that failed, GRUB refusing to leave nothing bootable) writes nothing, and
/// the idle slot keeps its record: a fallback there can still be rolled back to.
#[test]
fn an_install_the_selector_refuses_writes_nothing_and_keeps_the_slots_record() {
    let (setup, up) = with_host_selector(
        "com.acme.refused-disable",
        || Ok(Some(Slot::A)),
        Refuses::Disable,
    );
    let plan = up.plan(&offer(&up, "1.0.0")).unwrap();
    download(&up, &plan);
    let before = up.state().unwrap();
    let err = up.install(&plan).unwrap_err();
    assert_eq!(err.kind(), evergreen::ErrorKind::Bootloader, "{err}");
    assert!(
        err.message().contains("take slot b out of the boot order"),
        "{err}"
    );
    let after = up.state().unwrap();
    assert_eq!((after.a, after.b), (before.a, before.b));
    assert!(
        !setup.dev.root.join("slots/b").exists(),
        "slot b was written"
    );
}

/// A mirror that answers every path with an error page and status 200 (a CDN's "soft
/// 404") does not fail the check: the root walk passes its `root/2.json` over, since it
/// does not verify, and the server's 404 ends the walk.
#[test]
fn a_mirrors_error_page_served_with_200_does_not_fail_the_root_walk() {
    let (repo, _) = repo_with_1_0_0("com.acme.softmirror");
    let server = TestServer::serve(&repo.root);
    let mirror = TestServer::serve(&repo.scratch("mirror"));
    mirror.set_fault("", Fault::ErrorPage(b"<html>Not found</html>".to_vec()));
    let dev = repo.device(
        "dev",
        &server.url(),
        with_mirrors(serde_json::json!([mirror.url()])),
    );

    let check = check_json(&dev, 10);
    assert_eq!(check["version"], "1.0.0");
    assert_eq!(
        mirror.requests("root/2.json").len(),
        1,
        "asked once, passed over"
    );
}

/// The channel manifest is verified copy by copy, as the root walk's documents are: after
/// the server fails once, a mirror that serves an error page as 200 is passed over for the
/// next mirror, which has the channel, rather than ending the check.
#[test]
fn a_mirrors_error_page_served_for_the_manifest_is_passed_over() {
    let (repo, _) = repo_with_1_0_0("com.acme.softmanifest");
    let server = TestServer::serve(&repo.root);
    server.set_fault_times("channels/", Fault::Status(503), 1);
    let soft = TestServer::serve(&repo.scratch("soft"));
    soft.set_fault("", Fault::ErrorPage(b"<html>Not found</html>".to_vec()));
    let good = TestServer::serve(&repo.root);
    let dev = repo.device(
        "dev",
        &server.url(),
        with_mirrors(serde_json::json!([soft.url(), good.url()])),
    );

    let check = check_json(&dev, 10);
    assert_eq!(check["version"], "1.0.0");
    assert_eq!(soft.requests("channels/stable.json").len(), 1);
    assert_eq!(good.requests("channels/stable.json").len(), 1);
}

/// A copy that was served and refused is the answer when no base serves one that passes,
/// also when a base asked after it could not be reached: the check says what was wrong
/// with the copy (here, no signature envelope at all), not that a mirror was down.
#[test]
fn a_refused_copy_outranks_a_mirror_out_of_reach() {
    let (repo, _) = repo_with_1_0_0("com.acme.refusedfirst");
    let server = TestServer::serve(&repo.root);
    server.set_fault(
        "channels/",
        Fault::ErrorPage(b"<html>maintenance</html>".to_vec()),
    );
    let dev = repo.device(
        "dev",
        &server.url(),
        with_mirrors(serde_json::json!(["http://127.0.0.1:9/nothing-here"])),
    );
    let out = dev.run("check", &[]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let copy = format!(
        "error[signature]: GET {}/channels/stable.json: ",
        server.url()
    );
    assert!(err.starts_with(&copy), "{err}");
}

/// The root walk ranks a refused copy the same way: the server's `root/2.json` that is no
/// signed root at all, then a mirror out of reach, ends the check with what was wrong with
/// the root it was served, not with the mirror's network error.
#[test]
fn a_refused_root_outranks_a_mirror_out_of_reach() {
    let (repo, _) = repo_with_1_0_0("com.acme.refusedroot");
    let server = TestServer::serve(&repo.root);
    server.set_fault(
        "root/2.json",
        Fault::ErrorPage(b"<html>maintenance</html>".to_vec()),
    );
    let mirrors = serde_json::json!(["http://127.0.0.1:9/nothing-here"]);
    let dev = repo.device("dev", &server.url(), with_mirrors(mirrors));
    let out = dev.run("check", &[]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let root = format!("GET {}/root/2.json: ", server.url());
    assert!(
        err.starts_with("error[signature]: ") && err.contains(&root),
        "{err}"
    );
}

/// A manifest stored compressed with `Content-Encoding: gzip` (an object uploaded so to S3
/// by a deploy tool that gzips `.json`) reads as JSON in every browser, which decodes it,
/// while Evergreen, which asks for no encoding and decodes none, gets the gzip bytes. The
/// error must name the encoding: "invalid JSON: bytes that are not UTF-8" alone sends the
/// operator to a file that looks fine.
#[test]
fn a_manifest_sent_with_content_encoding_gzip_is_refused_naming_the_encoding() {
    let (repo, _) = repo_with_1_0_0("com.acme.gzipped");
    let server = TestServer::serve(&repo.root);
    server.set_fault("channels/", Fault::Gzipped);
    let dev = repo.device("dev", &server.url(), fast());
    let out = dev.run("check", &[]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let copy = format!("GET {}/channels/stable.json: ", server.url());
    assert!(err.contains(&copy), "{err}");
    assert!(err.contains("Content-Encoding: gzip"), "{err}");
}

/// The same for a blob: whatever length or hash the encoded bytes come to, the error
/// names the encoding, and nothing of them is installed.
#[test]
fn a_blob_sent_with_content_encoding_gzip_is_refused_naming_the_encoding() {
    let (repo, _) = repo_with_1_0_0("com.acme.gzipped.blob");
    let server = TestServer::serve(&repo.root);
    server.set_fault("blobs/", Fault::Gzipped);
    let dev = repo.device("dev", &server.url(), fast());
    let err = dev.fails("update", &["--yes"]);
    assert!(err.contains("/blobs/sha256/"), "{err}");
    assert!(
        err.contains("sent with Content-Encoding: gzip, which Evergreen does not decode"),
        "{err}"
    );
    assert_eq!(dev.status()["primary"], "a");
    assert_eq!(dev.status()["slots"]["b"]["status"], "empty");
}

/// A server that sends no `ETag` (`python3 -m http.server`), or tags that differ from
/// request to request (copies behind one name with other file times), answers every
/// check with the whole manifest. The same bytes as the cached copy say what a 304 says:
/// the check is one request, with no walk of the root chain, and a changed manifest is
/// still walked for. The cached copy is not written again.
#[test]
fn the_same_manifest_served_again_without_an_etag_is_one_request() {
    let (repo, src) = repo_with_1_0_0("com.acme.noetag");
    let server = TestServer::serve(&repo.root);
    server.set_fault("", Fault::NoEtag);
    let dev = repo.device("dev", &server.url(), fast());
    let walks = || {
        (server.log().iter())
            .filter(|l| l.path.starts_with("root/"))
            .count()
    };
    assert_eq!(check_json(&dev, 10)["version"], "1.0.0");
    assert_eq!(walks(), 1, "{:?}", server.log());
    let before = server.log().len();
    let cache = dev.state.join("cache/stable.json");
    let written = || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cache).unwrap());
    let first = written();
    assert_eq!(check_json(&dev, 10)["version"], "1.0.0");
    assert_eq!(server.log().len(), before + 1, "{:?}", server.log());
    assert_eq!(walks(), 1, "{:?}", server.log());
    // The same bytes are not written again (flash wear at every check).
    assert_eq!(written(), first, "the cached copy was written again");
    publish_app(&repo, &src, "1.1.0", true);
    assert_eq!(check_json(&dev, 10)["version"], "1.1.0");
    assert_eq!(walks(), 2, "{:?}", server.log());
}

/// With the server down, a mirror without entity tags that serves the channel as the
/// device last saw it passes the check (docs/operators.md, Mirrors): the walk would ask
/// the server, which does not answer.
#[test]
fn an_unchanged_channel_from_a_mirror_without_etags_passes_while_the_server_is_down() {
    let (repo, _) = repo_with_1_0_0("com.acme.noetag.mirror");
    let server = TestServer::serve(&repo.root);
    let mirror = TestServer::serve(&repo.root);
    mirror.set_fault("", Fault::NoEtag);
    let dev = repo.device(
        "dev",
        &server.url(),
        with_mirrors(serde_json::json!([mirror.url()])),
    );
    assert_eq!(check_json(&dev, 10)["version"], "1.0.0");
    drop(server);
    assert_eq!(check_json(&dev, 10)["version"], "1.0.0");
    assert_eq!(mirror.requests("channels/stable.json").len(), 1);
}

/// A device that cannot reach its server (an air-gapped site) with a USB stick as its
/// mirror: the stick holds a newer release, which the check does not take, as only the
/// server's 404 ends the root chain (docs/operators.md, Mirrors). The error names the
/// server's root it asked for and says why: it named only a failed request to a server the
/// technician knows is out of reach, and not that the stick's channel waits for it.
#[test]
fn a_changed_channel_on_a_local_mirror_with_the_server_down_says_it_waits_for_the_server() {
    let (repo, src) = repo_with_1_0_0("com.acme.stick.mirror");
    let server = TestServer::serve(&repo.root);
    let stick = repo.scratch("stick");
    common::copy_dir(&repo.root, &stick);
    let stick_base = stick.display().to_string();
    let dev = repo.device(
        "dev",
        &server.url(),
        with_mirrors(serde_json::json!([stick_base])),
    );
    assert_eq!(check_json(&dev, 10)["version"], "1.0.0");
    publish_app(&repo, &src, "1.1.0", true);
    common::copy_dir(&repo.root, &stick);
    let root_url = format!("{}/root/2.json", server.url());
    drop(server);
    let err = dev.fails("check", &[]);
    let line = err.lines().last().unwrap();
    assert!(line.starts_with("error[network]: "), "{err}");
    assert!(line.contains(&root_url), "{err}");
    assert!(
        line.contains("(only the server's 404 ends the root chain)"),
        "{err}"
    );
}

/// A device served from a USB stick (its `server` a plain path) is told what went wrong
/// with the file it read, not of an HTTP `GET` it never made: an older copy of the
/// channel, and a blob cut short by a copy pulled out too early.
#[test]
fn errors_from_a_stick_say_read_not_get() {
    let (repo, src) = repo_with_1_0_0("com.acme.stick.words");
    let older = std::fs::read(repo.root.join("channels/stable.json")).unwrap();
    publish_app(&repo, &src, "1.1.0", true);
    let stick = repo.scratch("stick");
    common::copy_dir(&repo.root, &stick);
    let dev = repo.device("dev", &stick.display().to_string(), fast());
    assert_eq!(check_json(&dev, 10)["version"], "1.1.0");

    let manifest = stick.join("channels/stable.json");
    let newer = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &older).unwrap();
    let err = dev.fails("check", &[]);
    assert!(
        err.starts_with(&format!(
            "error[metadata_rollback]: read {}: ",
            manifest.display()
        )),
        "{err}"
    );

    std::fs::write(&manifest, &newer).unwrap();
    let blobs = stick.join("blobs/sha256");
    for blob in std::fs::read_dir(&blobs).unwrap() {
        let path = blob.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    }
    let err = dev.fails("update", &["--yes"]);
    let line = err.lines().last().unwrap();
    assert!(
        line.contains(&blobs.display().to_string()) && !line.contains("GET"),
        "{err}"
    );
}

/// Mirrors lag: one that still serves a channel older than the device has seen is passed
/// over for the next base, which has the current one, instead of failing the check as a
/// rollback attack.
#[test]
fn a_lagging_mirror_is_passed_over_for_the_next_base() {
    let (repo, src) = repo_with_1_0_0("com.acme.lagging");
    let older = std::fs::read(repo.root.join("channels/stable.json")).unwrap();
    publish_app(&repo, &src, "1.1.0", true);
    let server = TestServer::serve(&repo.root);
    let lagging = TestServer::serve(&repo.root);
    lagging.set_fault("channels/stable.json", Fault::Replace(older));
    let good = TestServer::serve(&repo.root);
    let dev = repo.device(
        "dev",
        &server.url(),
        with_mirrors(serde_json::json!([lagging.url(), good.url()])),
    );
    assert_eq!(check_json(&dev, 10)["version"], "1.1.0");

    server.set_fault_times("channels/", Fault::Status(503), 1);
    assert_eq!(check_json(&dev, 10)["version"], "1.1.0");
    assert_eq!(lagging.requests("channels/stable.json").len(), 1);
    assert_eq!(good.requests("channels/stable.json").len(), 1);
}

/// A cached manifest that no longer verifies (a bad block, an edit by hand) is asked for
/// whole when the server answers 304 for it: one damaged file must not fail every check
/// until the channel is signed again.
#[test]
fn a_damaged_cached_manifest_is_fetched_again() {
    let (repo, _) = repo_with_1_0_0("com.acme.damagedcache");
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), fast());
    check_json(&dev, 10);
    let cache = dev.state.join("cache/stable.json");
    let kept = std::fs::read(&cache).unwrap();

    std::fs::write(&cache, b"{").unwrap();
    assert_eq!(check_json(&dev, 10)["version"], "1.0.0");
    assert_eq!(std::fs::read(&cache).unwrap(), kept);
    check_json(&dev, 10);
    let answers: Vec<u16> = server
        .requests("channels/stable.json")
        .iter()
        .map(|l| l.status)
        .collect();
    assert_eq!(
        answers,
        [200, 304, 200, 304],
        "an unchanged check is one request"
    );
}

/// An offer's fields are for reading: a host that changes what an install would record
/// (the security version, which confirming raises the device's floor to) or drops one of
/// the release's components is refused before anything is fetched or written; the offer
/// as its check made it still downloads and installs.
#[test]
fn an_offer_changed_by_its_host_is_refused() {
    let Setup {
        repo,
        src,
        server,
        dev,
    } = setup("com.acme.tamper");
    let zip = app_zip(&src, "1.0.0", true);
    let settings = src.join("settings.json");
    std::fs::write(&settings, "{}").unwrap();
    let parts = [("app", zip.as_path()), ("config", settings.as_path())];
    repo.release("stable", "1.0.0", "x86_64-linux", &parts, &[]);
    let updater = updater_for(&dev);
    let checked = offer(&updater, "1.0.0");
    let cancel = evergreen::fetch::CancelToken::new();
    let blobs = || server.requests("blobs/").len();

    let mut raised = checked.clone();
    raised.security_version += 100;
    let err = updater
        .download(&raised, &mut |_, _| {}, &cancel)
        .unwrap_err();
    assert_eq!(err.kind(), evergreen::ErrorKind::InvalidState, "{err}");
    assert!(
        err.to_string()
            .contains("found its `security_version` changed"),
        "{err}"
    );
    assert_eq!(blobs(), 0, "fetched for a changed offer");

    updater.download(&checked, &mut |_, _| {}, &cancel).unwrap();
    let mut dropped = checked.clone();
    dropped.components.retain(|c| c.name != "config");
    let err = updater.install(&dropped).unwrap_err();
    assert_eq!(err.kind(), evergreen::ErrorKind::InvalidState, "{err}");
    assert!(
        err.to_string().contains("found its `components` changed"),
        "{err}"
    );
    let st = updater.state().unwrap();
    for slot in [evergreen::slots::Slot::A, evergreen::slots::Slot::B] {
        assert_eq!(
            st.slot(slot).status,
            evergreen::state::SlotStatus::Empty,
            "{st:?}"
        );
    }

    let slot = updater.install(&checked).unwrap();
    assert!(dev
        .root
        .join("slots")
        .join(slot.as_str())
        .join("config")
        .exists());
}

/// A download whose blobs are all there already fetches nothing and still takes the host's
/// progress to its total, in one call.
#[test]
fn a_download_already_done_reports_its_total() {
    let setup = setup_with_1_0_0("com.acme.donealready");
    let updater = updater_for(&setup.dev);
    let plan = offer(&updater, "1.0.0");
    let cancel = evergreen::fetch::CancelToken::new();
    updater.download(&plan, &mut |_, _| {}, &cancel).unwrap();
    let fetched = setup.server.requests("blobs/").len();
    let mut calls = Vec::new();
    updater
        .download(&plan, &mut |done, total| calls.push((done, total)), &cancel)
        .unwrap();
    let total = plan.download_size();
    assert!(total > 0);
    assert_eq!(calls, [(total, total)]);
    assert_eq!(setup.server.requests("blobs/").len(), fetched);
}

/// A blob the plan found downloaded already and that is gone by the download (a confirmation
/// in another process pruned it, say) is fetched again, but its bytes are not in the
/// offer's download size: the host's progress must neither reach its total early nor go
/// back when the next blob starts. Before, the blob fetched again took the progress to the
/// total, and the next one's first chunk took it back to 262144.
#[test]
fn progress_moves_forward_when_a_blob_downloaded_already_is_fetched_again() {
    let repo = Repo::new("com.acme.refetched");
    let src = repo.scratch("src");
    let zip = |name: &str, len: usize, seed: u64| {
        let path = src.join(format!("{name}.zip"));
        make_zip(&path, &[("data.bin", &support::noise(len, seed))]);
        path
    };
    let (app, data) = (zip("app", 700_000, 1), zip("data", 600_000, 2));
    repo.release(
        "stable",
        "1.0.0",
        "x86_64-linux",
        &[("app", &app), ("data", &data)],
        &[],
    );
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), fast());
    let updater = updater_for(&dev);
    let plan = updater.plan(&offer(&updater, "1.0.0")).unwrap();
    download(&updater, &plan);
    let blob = |name: &str| {
        let c = plan.components.iter().find(|c| c.name == name).unwrap();
        dev.state
            .join("downloads")
            .join(&c.artifact.as_ref().unwrap().sha256)
    };
    // The plan finds app's blob there and data's not; then app's goes too.
    std::fs::remove_file(blob("data")).unwrap();
    let plan = updater.plan(&plan).unwrap();
    let total = plan.download_size();
    std::fs::remove_file(blob("app")).unwrap();
    let mut calls = Vec::new();
    let cancel = evergreen::fetch::CancelToken::new();
    updater
        .download(&plan, &mut |done, total| calls.push((done, total)), &cancel)
        .unwrap();
    assert!(blob("app").is_file() && blob("data").is_file());
    assert!(
        calls.windows(2).all(|w| w[0].0 <= w[1].0),
        "expected progress that never goes back, found {calls:?}"
    );
    assert!(calls.iter().all(|&(_, t)| t == total), "{calls:?}");
    // The total comes once, at the end: data's last bytes.
    let at_total = calls.iter().filter(|&&(done, _)| done == total).count();
    assert_eq!(
        (calls.last().copied(), at_total),
        (Some((total, total)), 1),
        "{calls:?}"
    );
}

/// A blob whose bytes fail their hash at one base and that is fetched again from the next
/// says its progress again in `downloading` events, one per MiB, as its first fetch did:
/// a host logging events saw the first fetch end and then nothing until the second one
/// ended, minutes on a large image.
#[test]
fn a_blob_fetched_again_after_a_mismatch_says_its_progress_again() {
    let repo = Repo::new("com.acme.refetchevents");
    let src = repo.scratch("src");
    let zip = src.join("app.zip");
    make_zip(&zip, &[("data.bin", &support::noise(3 << 20, 1))]);
    repo.release("stable", "1.0.0", "x86_64-linux", &[("app", &zip)], &[]);
    let bad = TestServer::serve(&repo.root);
    let good = TestServer::serve(&repo.root);
    let dev = repo.device(
        "dev",
        &bad.url(),
        with_mirrors(serde_json::json!([good.url()])),
    );
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&events);
    let updater = evergreen::Updater::builder(evergreen::Config::from_file(&dev.config).unwrap())
        .on_event(move |e| {
            if let evergreen::Event::Downloading { done, .. } = e {
                seen.lock().unwrap().push(*done);
            }
        })
        .build()
        .unwrap();
    let plan = updater.plan(&offer(&updater, "1.0.0")).unwrap();
    let size = plan.download_size();
    bad.set_fault("blobs/", Fault::Replace(support::noise(size as usize, 9)));
    download(&updater, &plan);
    let from_mirror = good.log().iter().any(|l| l.path.starts_with("blobs/"));
    assert!(from_mirror, "expected the mirror to serve the blob");
    let done = events.lock().unwrap().clone();
    // Where each event falls depends on how the bytes arrive; a second fetch must say at
    // least as much as the first's "one per MiB" does of 3 MiB, before its end.
    let end = done
        .iter()
        .position(|&d| d == size)
        .expect("the first fetch ends");
    let again = &done[end + 1..];
    assert!(
        again.len() >= 3 && again.windows(2).all(|w| w[0] < w[1]) && again.last() == Some(&size),
        "expected the second fetch's own events, one per MiB up to {size}, found {done:?}"
    );
}

/// The requests `server` received since the `seen` first ones, as (path, status).
fn new_requests(server: &TestServer, seen: &mut usize) -> Vec<(String, u16)> {
    let log = server.log();
    let new = log[*seen..]
        .iter()
        .map(|l| (l.path.clone(), l.status))
        .collect();
    *seen = log.len();
    new
}

/// One `check()`: whether it offered a release, and the requests the server received for
/// it, which must be the requests the library counted.
fn poll(
    updater: &evergreen::Updater,
    server: &TestServer,
    seen: &mut usize,
) -> (bool, Vec<(String, u16)>) {
    let before = updater.fetch_stats().requests;
    let available = matches!(updater.check().unwrap(), evergreen::Check::Available(_));
    let new = new_requests(server, seen);
    assert_eq!(
        updater.fetch_stats().requests - before,
        new.len() as u64,
        "{new:?}"
    );
    (available, new)
}

/// What one poll costs the static server, as `examples/fleet.rs` counts it: an unchanged
/// channel manifest is one request, answered 304; a changed one (a new rollout stage, a
/// re-sign) is answered 200 and the root chain is walked, so `root/2.json` is asked for
/// too (404 while the root is not rotated): two requests. The release's blob is one more,
/// once, when it is downloaded.
#[test]
fn a_poll_is_one_request_unchanged_and_two_when_the_manifest_changed() {
    let repo = Repo::new("com.acme.pollcost");
    let src = repo.scratch("src");
    let zip = app_zip(&src, "1.0.0", true);
    // A staged rollout at 0 %: no device is in yet.
    let extra = ["--rollout", "0"];
    repo.release("stable", "1.0.0", "x86_64-linux", &[("app", &zip)], &extra);
    let server = TestServer::serve(&repo.root);
    let dev = repo.device("dev", &server.url(), fast());
    let updater = updater_for(&dev);
    let seen = &mut 0;
    let manifest = |status: u16| ("channels/stable.json".to_string(), status);
    let changed = vec![manifest(200), ("root/2.json".to_string(), 404)];
    let unchanged = vec![manifest(304)];

    // The first check has no ETag to send.
    assert_eq!(poll(&updater, &server, seen), (false, changed.clone()));
    assert_eq!(poll(&updater, &server, seen), (false, unchanged.clone()));
    assert_eq!(poll(&updater, &server, seen), (false, unchanged.clone()));

    // The next stage: everyone.
    repo.rollout("stable", "1.0.0", "100");
    assert_eq!(poll(&updater, &server, seen), (true, changed.clone()));
    let plan = updater.plan(&offer(&updater, "1.0.0")).unwrap();
    let checked = new_requests(&server, seen);
    download(&updater, &plan);
    let fetched = new_requests(&server, seen);
    assert_eq!(checked, unchanged, "the offer's check");
    assert_eq!(fetched.len(), 1, "one blob request: {fetched:?}");
    assert!(fetched[0].0.starts_with("blobs/sha256/") && fetched[0].1 == 200);
    assert_eq!(poll(&updater, &server, seen), (true, unchanged.clone()));

    // A re-sign changes the manifest's bytes and sequence, not its releases.
    let (repo_dir, key) = (
        repo.root.to_str().unwrap(),
        repo.manifest_key.to_str().unwrap(),
    );
    common::ok(&["resign", repo_dir, "--channel", "stable", "--sign", key]);
    assert_eq!(poll(&updater, &server, seen), (true, changed));
    assert_eq!(poll(&updater, &server, seen), (true, unchanged));
}

/// `Retry-After: <seconds>` or an IMF-fixdate `at` ahead of now (the weekday is not read).
fn http_date(at: evergreen::Timestamp) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = at.to_string();
    let month = MONTHS[t[5..7].parse::<usize>().unwrap() - 1];
    format!("Mon, {} {month} {} {} GMT", &t[8..10], &t[..4], &t[11..19])
}

/// A server that fails a check with 503 and `Retry-After: 3600` is not asked again for an
/// hour, though the device polls every minute (and backs off to two after one failure);
/// a check it answers lifts that. The header's HTTP-date form is honoured the same way,
/// and a server asking for years holds the device back for a day at most.
#[test]
fn a_retry_after_holds_the_next_check_back_until_a_check_succeeds() {
    let setup = setup_with_1_0_0("com.acme.retryafter");
    let mut extra = fast();
    extra["poll"] = serde_json::json!({"interval_s": 60, "jitter": 0.0});
    let dev = setup.repo.device("polling", &setup.server.url(), extra);
    let updater = updater_for(&dev);
    let server = &setup.server;
    let manifest = "channels/stable.json";
    // The next check, `secs` after a moment during `call` (give or take the second a
    // date rounds to): bounded by the clock before and after it, however slow the host.
    let due_after = |secs: i64, call: &dyn Fn()| {
        let before = evergreen::Timestamp::now().unix();
        call();
        let after = evergreen::Timestamp::now().unix();
        let next = updater.next_check().unwrap();
        assert!(
            (before + secs - 1..=after + secs + 1).contains(&next.unix()),
            "next check at {next}, expected {secs} s after a moment in {before}..={after}"
        );
        next
    };
    let busy = |retry_after: String| {
        server.clear_faults();
        server.set_fault(manifest, Fault::Busy(503, retry_after));
        let err = updater.check().unwrap_err();
        assert_eq!(err.kind(), evergreen::ErrorKind::HttpStatus, "{err}");
        assert!(err.message().contains("Retry-After: "), "{err}");
    };

    let hour = due_after(3600, &|| busy("3600".into()));
    assert_eq!(updater.status().unwrap().next_check, hour);
    assert!(updater.state().unwrap().not_before.is_some());
    // A failure that asks for nothing (a check made early by hand) leaves that hour.
    server.clear_faults();
    server.set_fault(manifest, Fault::Status(500));
    updater.check().unwrap_err();
    assert_eq!(updater.next_check().unwrap(), hour);

    server.clear_faults();
    due_after(60, &|| {
        assert!(matches!(
            updater.check().unwrap(),
            evergreen::Check::Available(_)
        ))
    });
    assert_eq!(updater.state().unwrap().not_before, None);

    due_after(7200, &|| {
        busy(http_date(evergreen::Timestamp::now().plus_secs(7200)))
    });

    // Ten years, as seconds: a day.
    due_after(86_400, &|| busy("315360000".into()));

    // A date already past holds nothing back: the backoff after one failure stands.
    server.clear_faults();
    updater.check().unwrap();
    due_after(120, &|| busy("Thu, 01 Jan 2015 00:00:00 GMT".into()));
    assert_eq!(updater.state().unwrap().not_before, None);
}

/// A device that never checked its own channel, told by the server to come back in an hour
/// (a check of another channel failed with `Retry-After: 3600`), does not come back in the
/// same second as the rest of the fleet: its next check is spread over the jitter after
/// that hour, as after a failed check of its own.
/// Points `current` at `slot`, as a switch cut short by a power cut leaves it.
fn point_current_at(dev: &Device, slot: &str) {
    let tmp = dev.root.join(".current.test");
    std::os::unix::fs::symlink(Path::new("slots").join(slot), &tmp).unwrap();
    std::fs::rename(&tmp, dev.root.join("current")).unwrap();
}

/// An activation whose switch of `current` was cut short leaves the good release running;
/// a host that runs the startup step in its own process is running that release, so the
/// step counts no start of the release on trial (its confirmation is refused: it never
/// ran) and points `current` at it for the next start.
#[test]
fn an_activation_cut_short_counts_no_start_of_the_release_on_trial() {
    let setup = setup_with_1_0_0("com.acme.cutshort");
    let dev = &setup.dev;
    install_and_confirm(dev);
    let old = current(dev);
    publish_app(&setup.repo, &setup.src, "1.1.0", true);
    let updater = updater_for(dev);
    let plan = updater.plan(&offer(&updater, "1.1.0")).unwrap();
    updater
        .download(&plan, &mut |_, _| {}, &evergreen::fetch::CancelToken::new())
        .unwrap();
    let slot = updater.install(&plan).unwrap();
    updater.activate(true).unwrap();
    let tries = updater.state().unwrap().trial.unwrap().tries_left;
    point_current_at(dev, old.file_name().unwrap().to_str().unwrap());

    assert_eq!(updater.startup().unwrap(), evergreen::Startup::Normal);
    assert_eq!(updater.state().unwrap().trial.unwrap().tries_left, tries);
    assert_eq!(current(dev), Path::new("slots").join(slot.to_string()));
    let err = updater.confirm().unwrap_err();
    assert_eq!(err.kind(), evergreen::ErrorKind::InvalidState, "{err}");
    // The next start is of the release on trial, and counts.
    assert!(matches!(
        updater.startup().unwrap(),
        evergreen::Startup::Trial { .. }
    ));
    updater.confirm().unwrap();
}

/// The same cut, met by a launcher (or `evergreen boot`), which starts what `current`
/// names after the step: the repair makes that the release on trial, so the step counts
/// this start as the trial's, and the release confirms itself on its first start.
#[test]
fn a_launcher_starts_the_release_on_trial_counted_after_an_activation_cut_short() {
    let setup = setup_with_1_0_0("com.acme.cutlaunch");
    let dev = &setup.dev;
    install_and_confirm(dev);
    let old = current(dev);
    publish_app(&setup.repo, &setup.src, "1.1.0", true);
    dev.expect("update", &["--yes"], 0);
    let trial = current(dev);
    point_current_at(dev, old.file_name().unwrap().to_str().unwrap());

    let out = start(dev);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = common::stderr(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout, "app 1.1.0 healthy\n", "{stderr}");
    assert!(stderr.contains("on trial"), "{stderr}");
    assert_eq!(current(dev), trial);
    let s = dev.status();
    assert!(s["trial"].is_null(), "{s}");
    assert_eq!(
        s["slots"][trial.file_name().unwrap().to_str().unwrap()]["status"],
        "good"
    );
}

/// An activation by another process that lands after a launcher's startup step and before
/// its exec moves `current` to a release whose start the step never counted: the launcher
/// starts the slot the step settled instead, by its own path, and the release on trial
/// starts (counted) next time. `evergreen boot --json` names that slot for scripts.
#[test]
fn a_launcher_starts_the_slot_its_step_counted_whatever_current_names_after() {
    let setup = setup_with_1_0_0("com.acme.launchrace");
    let dev = &setup.dev;
    install_and_confirm(dev);
    let running = current(dev);
    let running_slot = running.file_name().unwrap().to_str().unwrap().to_string();
    publish_app(&setup.repo, &setup.src, "1.1.0", true);
    dev.edit_config(|c| c["deploy"] = serde_json::json!({"policy": "download_only"}));
    dev.expect("update", &["--yes"], 0);

    let launcher = updater_for(dev);
    let launch = launcher.startup_for_launcher().unwrap();
    assert_eq!(launch.startup, evergreen::Startup::Normal);
    let slot = launch.slot.expect("a slot to start");
    assert_eq!(slot.to_string(), running_slot);
    // Another process activates 1.1.0 before the launcher's exec.
    let activation = updater_for(dev).activate(true).unwrap();
    let evergreen::Activation::Activated { slot: trial, .. } = activation else {
        panic!("expected an activation, found {activation:?}");
    };
    assert_ne!(Path::new("slots").join(trial.to_string()), running);
    // The launcher starts what its step counted: the release the device was running.
    let dir = evergreen::slots::dir::DirSlots::new(&dev.root).slot_dir(slot);
    assert_eq!(
        std::fs::read_to_string(dir.join("app/VERSION")).unwrap(),
        "1.0.0"
    );
    let tries = launcher.state().unwrap().trial.unwrap().tries;
    assert_eq!(launcher.state().unwrap().trial.unwrap().tries_left, tries);

    // The next start is of the release on trial, counted, and it can confirm itself.
    let boot: serde_json::Value =
        serde_json::from_str(&dev.expect("boot", &["--json"], 0)).unwrap();
    assert_eq!(boot["status"], "trial", "{boot}");
    assert_eq!(boot["start"], trial.to_string(), "{boot}");
    let start_dir = PathBuf::from(boot["start_dir"].as_str().unwrap());
    assert_eq!(start_dir, dev.root.join("slots").join(trial.to_string()));
    assert_eq!(
        std::fs::read_to_string(start_dir.join("app/VERSION")).unwrap(),
        "1.1.0"
    );
    dev.expect("confirm", &[], 0);
}

/// A rollback whose switch of `current` was cut short: the start that follows runs the
/// slot given up, so the step says to restart into the primary, and until then no install
/// may write the slot that runs.
#[test]
fn a_rollback_cut_short_says_to_restart_into_the_primary() {
    for in_app in [true, false] {
        let setup = setup_with_1_0_0(&format!("com.acme.rollbackcut-{in_app}"));
        let dev = &setup.dev;
        install_and_confirm(dev);
        publish_app(&setup.repo, &setup.src, "1.1.0", true);
        install_and_confirm(dev);
        let left = current(dev);
        let left_slot = left.file_name().unwrap().to_str().unwrap().to_string();
        dev.expect("rollback", &[], 0);
        let primary = current(dev);
        point_current_at(dev, &left_slot);

        let updater = updater_for(dev);
        let outcome = match in_app {
            true => updater.startup().unwrap(),
            false => updater.startup_for_launcher().unwrap().startup,
        };
        let evergreen::Startup::RolledBack { from, to, .. } = outcome else {
            panic!("expected a restart into the primary, found {outcome:?}");
        };
        assert_eq!(from.to_string(), left_slot);
        assert_eq!(Path::new("slots").join(to.to_string()), primary);
        assert_eq!(current(dev), primary);
        // Inside the app, the slot left runs until the restart; a launcher starts the
        // primary, and the slot left is free at once.
        let left_running = updater.state().unwrap().left_running;
        assert_eq!(left_running, in_app.then_some(from), "{in_app}");
        // The restart into the primary frees the slot it left.
        assert_eq!(updater.startup().unwrap(), evergreen::Startup::Normal);
        assert_eq!(updater.state().unwrap().left_running, None);
    }
}

/// Every archive of a release is checked before the inactive slot is cleared: a release
/// whose zip this device's rules refuse leaves the fallback release there, byte for byte,
/// and it can still be rolled back to.
#[test]
fn a_refused_archive_leaves_the_fallback_release_in_its_slot() {
    let setup = setup_with_1_0_0("com.acme.keptfallback");
    let dev = &setup.dev;
    install_and_confirm(dev);
    publish_app(&setup.repo, &setup.src, "1.1.0", true);
    install_and_confirm(dev);
    let before = dev.status();
    let fallback = before["fallback"].as_str().unwrap().to_string();
    assert_eq!(before["slots"][&fallback]["version"], "1.0.0", "{before}");
    let kept = dev.root.join("slots").join(&fallback).join("app/VERSION");
    assert_eq!(std::fs::read(&kept).unwrap(), b"1.0.0");

    // A symlink, which this device's config (`archive.allow_symlinks`: false) refuses;
    // then a name that fits in PATH_MAX alone but not under this device's slot.
    let long = format!("{}f", "d/".repeat(2040));
    for (version, entry) in [("1.2.0", None), ("1.3.0", Some(long.as_str()))] {
        let hostile = setup.src.join(format!("app-{version}.zip"));
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&hostile).unwrap());
        let options = zip::write::SimpleFileOptions::default();
        zip.start_file("VERSION", options).unwrap();
        std::io::Write::write_all(&mut zip, version.as_bytes()).unwrap();
        match entry {
            None => zip.add_symlink("run.sh", "VERSION", options).unwrap(),
            Some(name) => zip.start_file(name, options).unwrap(),
        }
        zip.finish().unwrap();
        let app = [("app", hostile.as_path())];
        setup
            .repo
            .release("stable", version, "x86_64-linux", &app, &[]);
        let err = dev.fails("update", &["--yes"]);
        assert!(
            err.contains("error[unsafe_archive]: component app (zip artifact "),
            "{err}"
        );
        assert_eq!(dev.status()["slots"], before["slots"]);
        assert_eq!(std::fs::read(&kept).unwrap(), b"1.0.0");
    }
    dev.expect("rollback", &[], 0);
    assert_eq!(current(dev), Path::new("slots").join(&fallback));
}

/// `ca_roots` is read by the first https:// request, not when the updater is made: with
/// the file gone (moved by the release that shipped it, or on a partition not mounted
/// yet) a device still installs over http://, starts, confirms and rolls back.
#[test]
fn a_missing_ca_roots_file_stops_no_install_startup_or_rollback() {
    let setup = setup_with_1_0_0("com.acme.caroots");
    let mut extra = fast();
    extra["ca_roots"] = serde_json::json!(setup.src.join("gone/ca.pem"));
    let dev = setup.repo.device("caroots", &setup.server.url(), extra);
    install_and_confirm(&dev);
    publish_app(&setup.repo, &setup.src, "1.1.0", true);
    dev.expect("update", &["--yes"], 0);
    dev.expect("boot", &[], 0);
    dev.expect("rollback", &[], 0);
    let updater = updater_for(&dev);
    updater.startup().unwrap();
    let status = updater.status().unwrap();
    let primary = &status.slots[&status.primary];
    assert_eq!(
        (
            primary.status,
            primary.version.as_ref().map(|v| v.to_string())
        ),
        ("good", Some("1.0.0".into()))
    );
    assert_eq!(
        current(&dev),
        Path::new("slots").join(status.primary.to_string())
    );
}

/// A host may ask as often as it likes whether the check is due: `next_check` and `status`
/// give one time per round of the schedule, inside the interval ± its jitter, so asking
/// every minute does not check at the earliest of many draws.
#[test]
fn next_check_gives_one_time_however_often_it_is_asked() {
    let setup = setup_with_1_0_0("com.acme.askoften");
    let mut extra = fast();
    extra["poll"] = serde_json::json!({"interval_s": 21600, "jitter": 0.25});
    let dev = setup.repo.device("often", &setup.server.url(), extra);
    let updater = updater_for(&dev);
    updater.check().unwrap();
    let last = updater.state().unwrap().last_check.expect("a check time");
    let due = updater.next_check().unwrap();
    assert!(
        (16_200..=27_000).contains(&(due.unix() - last.unix())),
        "{due:?} after {last:?}"
    );
    for _ in 0..20 {
        assert_eq!(updater.next_check().unwrap(), due);
    }
    assert_eq!(updater.status().unwrap().next_check, due);
}

#[test]
fn a_retry_after_before_the_first_check_is_spread_by_the_jitter() {
    let setup = setup_with_1_0_0("com.acme.retryfirst");
    let mut extra = fast();
    extra["poll"] = serde_json::json!({"interval_s": 3600, "jitter": 0.25});
    setup
        .server
        .set_fault("channels/", Fault::Busy(503, "3600".into()));
    let after: Vec<i64> = (0..12)
        .map(|i| {
            let dev = setup
                .repo
                .device(&format!("first{i}"), &setup.server.url(), extra.clone());
            let updater = updater_for(&dev);
            updater.check_with(Some("beta"), None).unwrap_err();
            let state = updater.state().unwrap();
            assert_eq!((state.last_check, state.check_failures), (None, 0));
            let asked = state.not_before.expect("the time the server asked for");
            let due = updater.next_check().unwrap();
            // A host that asks again and again hears the same time.
            for _ in 0..5 {
                assert_eq!(updater.next_check().unwrap(), due);
            }
            due.unix() - asked.unix()
        })
        .collect();
    assert!(after.iter().all(|s| (0..=900).contains(s)), "{after:?}");
    let spread = after.iter().max().unwrap() - after.iter().min().unwrap();
    assert!(spread > 0, "every device got the same time: {after:?}");
}

/// A `Retry-After` date is on the server's clock. Read against the answer's `Date` it holds
/// the device back as long as the server meant, whatever the clocks say (the device's five
/// hours behind the host's, the server's three ahead); without a `Date`, against the
/// updater's clock, not the host's.
#[test]
fn a_retry_after_date_is_read_on_the_servers_clock() {
    let setup = setup_with_1_0_0("com.acme.retrydate");
    let mut extra = fast();
    extra["poll"] = serde_json::json!({"interval_s": 60, "jitter": 0.0});
    let dev = setup.repo.device("skewed", &setup.server.url(), extra);
    let host_now = evergreen::Timestamp::now();
    let device_now = host_now.plus_secs(-5 * 3600);
    let server_now = host_now.plus_secs(3 * 3600);
    let config = evergreen::Config::from_file(&dev.config).unwrap();
    let updater = evergreen::Updater::builder(config)
        .clock(move || device_now)
        .build()
        .unwrap();
    let held_back = |fault| {
        setup.server.clear_faults();
        setup.server.set_fault("channels/", fault);
        let err = updater.check().unwrap_err();
        let state = updater.state().unwrap();
        let asked = state.not_before.unwrap_or_else(|| panic!("no wait: {err}"));
        // The next test starts from a check the server answered, which clears the wait.
        setup.server.clear_faults();
        updater.check().unwrap();
        asked.unix() - device_now.unix()
    };

    let in_an_hour = http_date(server_now.plus_secs(3600));
    let wait = held_back(Fault::BusyDated(503, in_an_hour, http_date(server_now)));
    assert!((3598..=3600).contains(&wait), "held back {wait} s");

    let wait = held_back(Fault::Busy(503, http_date(device_now.plus_secs(3600))));
    assert!((3598..=3600).contains(&wait), "held back {wait} s");
}

/// The app example's program placed in `slot` of `dev` as its release would place it,
/// and started by that path: as a service manager that went through `current` while it
/// named that slot. Returns what the app printed: what its startup step found and what
/// its confirm answered.
fn run_app_in(dev: &Device, slot: &str) -> serde_json::Value {
    run_app_through(dev, &dev.root, slot)
}

/// [`run_app_in`], the program started through `root`, a path to the device's root.
fn run_app_through(dev: &Device, root: &Path, slot: &str) -> serde_json::Value {
    let program = Path::new("slots")
        .join(slot)
        .join("app")
        .join("app-program");
    std::fs::copy(example("app"), dev.root.join(&program)).unwrap();
    let mut cmd = Command::new(root.join(&program));
    cmd.args(["--config", dev.config.to_str().unwrap()]);
    let out = common::output_within(&mut cmd, common::CLI_LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An app that runs the startup step in its own process (`Updater::startup`) was started
/// from the release `current` named then; an activation by another process (cron's
/// `evergreen update`) lands before its step. The step must not count that start as the
/// new release's, nor may the old release's confirm vouch for a release that never ran
/// (decision 20); the new release's own first start then counts and confirms.
#[test]
fn an_activation_between_an_apps_start_and_its_step_is_not_confirmed_by_the_old_release() {
    let Setup {
        repo,
        src,
        server: _server,
        dev,
    } = setup_with_1_0_0("com.acme.inapp.activate");
    install_and_confirm(&dev);
    let running = current(&dev);
    let running = running.file_name().unwrap().to_str().unwrap().to_owned();
    publish_app(&repo, &src, "1.1.0", true);
    dev.expect("update", &["--yes"], 0);
    let trial = dev.status()["trial"].clone();
    assert_ne!(trial["slot"], running.as_str(), "{trial}");
    let said = run_app_in(&dev, &running);
    assert_eq!(said["startup"], "normal", "{said}");
    assert!(
        said["confirm"]
            .as_str()
            .unwrap()
            .starts_with("error[invalid_state]"),
        "the old release confirmed the one on trial: {said}"
    );
    assert_eq!(
        dev.status()["trial"],
        trial,
        "a start of the trial was counted"
    );
    let said = run_app_in(&dev, trial["slot"].as_str().unwrap());
    assert_eq!(
        (&said["startup"], &said["confirm"]),
        (&"trial".into(), &"ok".into()),
        "{said}"
    );
}

/// The same window with a rollback: the app on trial was started, then a rollback by
/// hand lands before its step. The step must say it runs a slot the rollback left
/// (restart into the primary) and keep that slot, still running, from installs.
#[test]
fn a_rollback_between_an_apps_start_and_its_step_keeps_the_running_slot_from_installs() {
    let Setup {
        repo,
        src,
        server: _server,
        dev,
    } = setup_with_1_0_0("com.acme.inapp.rollback");
    install_and_confirm(&dev);
    publish_app(&repo, &src, "1.1.0", true);
    dev.expect("update", &["--yes"], 0);
    let on_trial = dev.status()["trial"]["slot"].as_str().unwrap().to_owned();
    dev.expect("rollback", &[], 0);
    let said = run_app_in(&dev, &on_trial);
    assert_eq!(said["startup"], "rolled_back", "{said}");
    publish_app(&repo, &src, "1.2.0", true);
    let out = dev.run("update", &["--yes"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an install went into the running slot"
    );
    assert!(
        common::stderr(&out).contains("error[invalid_state]"),
        "{}",
        common::stderr(&out)
    );
}

/// The same as an activation between an app's start and its step, with the app started
/// through another path to the device's root (a bind mount) than its config names: the
/// slot it runs from is known by the directory's identity, not its path.
#[test]
fn an_app_started_through_a_bind_mount_of_the_root_is_not_counted_as_the_new_release() {
    let Setup {
        repo,
        src,
        server: _server,
        dev,
    } = setup_with_1_0_0("com.acme.inapp.bind");
    install_and_confirm(&dev);
    let running = current(&dev);
    let running = running.file_name().unwrap().to_str().unwrap().to_owned();
    let other = repo.scratch("bound");
    let args = [OsStr::new("--bind"), dev.root.as_os_str()];
    let Some(_bound) = mounts::Mounted::new(&args, &other, "mount --bind (root)") else {
        return;
    };
    publish_app(&repo, &src, "1.1.0", true);
    dev.expect("update", &["--yes"], 0);
    let trial = dev.status()["trial"].clone();
    assert_ne!(trial["slot"], running.as_str(), "{trial}");
    let said = run_app_through(&dev, &other, &running);
    assert_eq!(said["startup"], "normal", "{said}");
    assert!(
        said["confirm"]
            .as_str()
            .unwrap()
            .starts_with("error[invalid_state]"),
        "the old release confirmed the one on trial: {said}"
    );
}

/// A device whose state is gone while its slots stay (the state directory on a data
/// partition that was wiped, or `state.json` moved away by a person) still knows the
/// release it runs: the one sealed in the slot `current` points into, taken as primary
/// and good. A broken update then rolls back to it. The state used to start afresh with
/// both slots empty: the running release was unknown, and a broken update stayed on
/// trial with no starts left, with nothing to roll back to.
#[test]
fn a_device_whose_state_is_lost_rolls_back_to_the_release_its_slot_holds() {
    let setup = setup_with_1_0_0("com.acme.state-gone");
    let dev = &setup.dev;
    dev.expect("update", &["--yes"], 0);
    let out = start(dev);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(current(dev), Path::new("slots/b"));
    std::fs::rename(
        dev.state.join("state.json"),
        dev.state.join("state.json.old"),
    )
    .unwrap();
    let s = dev.status();
    assert_eq!(
        (&s["primary"], &s["slots"]["b"]),
        (
            &"b".into(),
            &serde_json::json!({"status": "good", "version": "1.0.0"})
        ),
        "{s}"
    );
    let out = start(dev);
    assert!(out.status.success(), "{}", common::stderr(&out));
    publish_app(&setup.repo, &setup.src, "1.2.0", false);
    dev.expect("update", &["--yes"], 0);
    assert_eq!(dev.status()["trial"]["slot"], "a");
    for _ in 0..4 {
        let _ = start(dev);
    }
    let s = dev.status();
    assert_eq!(
        (&s["primary"], &s["trial"]),
        (&"b".into(), &serde_json::Value::Null),
        "{s}"
    );
    assert_eq!(s["slots"]["a"]["status"], "bad", "{s}");
    assert_eq!(current(dev), Path::new("slots/b"));
    let out = start(dev);
    assert!(String::from_utf8_lossy(&out.stdout).contains("app 1.0.0 healthy"));
}

/// A Rust host stops its updater's running calls as a C host does with
/// `evg_updater_halt`: an app shutting down, or whose user cancels, halts the updater its
/// background check runs on. A check takes no cancel token, and one waiting for the work
/// lock (here another updater's download, as a timer's `evergreen update` would hold it
/// for a whole large release) must end then with `cancelled`, not when that download does.
#[test]
fn a_rust_host_halts_a_check_that_waits_for_another_download() {
    use evergreen::fetch::CancelToken;
    use std::sync::mpsc::channel;
    use std::time::{Duration, Instant};
    let Setup {
        repo: _repo,
        server,
        dev,
        ..
    } = setup_with_1_0_0("com.acme.halt");
    // The background download holds the work lock for minutes.
    drip_blobs(&server);
    let background = updater_for(&dev);
    let plan = background.plan(&offer(&background, "1.0.0")).unwrap();
    let stop_background = CancelToken::new();
    let (waiting, app_waits) = channel();
    let config = evergreen::Config::from_file(&dev.config).unwrap();
    let app = evergreen::Updater::builder(config)
        .on_event(move |e| {
            if let evergreen::Event::Waiting { .. } = e {
                let _ = waiting.send(());
            }
        })
        .build()
        .unwrap();
    std::thread::scope(|s| {
        let download = receiving(s, &background, &plan, &stop_background);
        let check = s.spawn(|| app.check());
        app_waits
            .recv_timeout(Duration::from_secs(20))
            .expect("the app's check waits for the work lock");
        let halted = Instant::now();
        app.halt();
        let result = check.join().unwrap();
        let took = halted.elapsed();
        stop_background.cancel();
        let background_end = download.join().unwrap().unwrap_err();
        assert_eq!(background_end.kind(), evergreen::ErrorKind::Cancelled);
        let err = result.expect_err("expected the halted check to fail");
        assert_eq!(err.kind(), evergreen::ErrorKind::Cancelled, "{err}");
        assert!(
            took < Duration::from_secs(5),
            "expected the check to end within 5 s of the halt, found {took:?}"
        );
    });
    // Halted, the updater serves no more checks; the device's status still reads. Neither
    // check asked the server: the device's poll schedule is not backed off for them.
    let again = app
        .check()
        .expect_err("expected a halted updater to refuse a check");
    assert_eq!(again.kind(), evergreen::ErrorKind::Cancelled, "{again}");
    assert_eq!(app.status().unwrap().channel, "stable");
    assert_eq!(app.state().unwrap().check_failures, 0);
}

/// Makes `server` send its blobs a byte every 100 ms: a download of one takes minutes.
fn drip_blobs(server: &TestServer) {
    server.set_fault(
        "blobs/",
        Fault::Trickle {
            bytes: 1,
            every: std::time::Duration::from_millis(100),
        },
    );
}

/// Starts `updater`'s download of `plan` on a thread of `scope`, and returns once its
/// first bytes arrived (within 20 s).
fn receiving<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    updater: &'s evergreen::Updater,
    plan: &'s evergreen::Offer,
    cancel: &'s evergreen::fetch::CancelToken,
) -> std::thread::ScopedJoinHandle<'s, evergreen::Result<()>> {
    let (arrived, first_bytes) = std::sync::mpsc::channel();
    let download = scope.spawn(move || {
        let mut first = Some(arrived);
        let mut progress = |done, _| {
            if let Some(tx) = first.take_if(|_| done > 0) {
                tx.send(()).unwrap();
            }
        };
        updater.download(plan, &mut progress, cancel)
    });
    first_bytes
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the download received its first bytes");
    download
}

/// `halt()` also ends a download of its own updater that is receiving, with the host's
/// cancel token untouched: an app quitting halts the updater and joins its update thread,
/// which must not wait for a large download over a slow link to end. What was received
/// stays for the next run.
#[test]
fn a_rust_host_halts_its_own_download_while_bytes_arrive() {
    use evergreen::fetch::CancelToken;
    use std::time::{Duration, Instant};
    let Setup {
        repo: _repo,
        server,
        dev,
        ..
    } = setup_with_1_0_0("com.acme.halt-download");
    drip_blobs(&server);
    let app = updater_for(&dev);
    let plan = app.plan(&offer(&app, "1.0.0")).unwrap();
    let never = CancelToken::new();
    std::thread::scope(|s| {
        let download = receiving(s, &app, &plan, &never);
        let halted = Instant::now();
        app.halt();
        let err = download
            .join()
            .unwrap()
            .expect_err("expected the halted download to fail");
        let took = halted.elapsed();
        assert_eq!(err.kind(), evergreen::ErrorKind::Cancelled, "{err}");
        assert!(
            took < Duration::from_secs(5),
            "expected the download to end within 5 s of the halt, found {took:?}"
        );
    });
    assert!(!never.is_cancelled());
}

/// A Rust host reports an error as `anyhow` and `eyre` do (`{:#}`, and "Caused by:" after
/// `main` returns one): the message, then each `source()` in turn. Evergreen's messages
/// already say what their cause said (the CLI and the C ABI show the message alone), so a
/// cause the message quotes must not come again as its source: such a report read
/// `… found io: Connection refused (os error 111): io: Connection refused (os error 111)`.
#[test]
fn an_errors_chain_names_each_cause_once() {
    let Setup {
        repo: _repo,
        server,
        dev,
        ..
    } = setup_with_1_0_0("com.acme.chain");
    let chain = |err: &evergreen::Error| {
        let mut chain = vec![err.to_string()];
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            chain.push(cause.to_string());
            source = cause.source();
        }
        chain
    };
    let missing = dev.config.with_file_name("missing.json");
    let unreadable = evergreen::Config::from_file(&missing).unwrap_err();
    drop(server);
    let refusing = support::RefusingPort::bind();
    let mut config = evergreen::Config::from_file(&dev.config).unwrap();
    config.server = format!("http://127.0.0.1:{}", refusing.port);
    let updater = evergreen::Updater::builder(config).build().unwrap();
    let refused = updater.check().unwrap_err();
    assert_eq!(refused.kind(), evergreen::ErrorKind::Network, "{refused}");
    // A cause the message does not quote (a host transport's own error) stays the source.
    let host = std::io::Error::other("connection reset by the host's stack");
    let hosts = evergreen::Error::new(evergreen::ErrorKind::Network, "host transport failed")
        .with_source(host);
    assert_eq!(
        chain(&hosts),
        [
            "host transport failed",
            "connection reset by the host's stack"
        ]
    );
    for err in [unreadable, refused] {
        let chain = chain(&err);
        for pair in chain.windows(2) {
            assert!(
                !pair[0].contains(&pair[1]),
                "expected each cause once in the chain, found {:?} quoted again as its source {:?}",
                pair[0],
                pair[1]
            );
        }
    }
}

/// A Rust host's own types and tests need `Debug` of what they hold: a
/// `#[derive(Debug)]` app state with its `Updater` (or a builder being set up), and
/// `unwrap_err` / `expect_err` on `Updater::builder(…).build()`. Shown, as the config is,
/// without the password of a base.
#[test]
fn an_updater_and_its_builder_show_in_debug_without_passwords() {
    // Read only through its Debug, as an app's state in a log line.
    #[allow(dead_code)]
    #[derive(Debug)]
    struct AppState {
        updater: std::sync::Arc<evergreen::Updater>,
        pending: Option<evergreen::UpdaterBuilder>,
    }
    let Setup {
        repo: _repo, dev, ..
    } = setup_with_1_0_0("com.acme.debug");
    let mut config = evergreen::Config::from_file(&dev.config).unwrap();
    config.server = "http://fleet:s3rver-pw@127.0.0.1:9/".to_string();
    let state = AppState {
        updater: std::sync::Arc::new(evergreen::Updater::builder(config.clone()).build().unwrap()),
        pending: Some(evergreen::Updater::builder(config.clone()).on_event(|_| {})),
    };
    let shown = format!("{state:?}");
    assert!(
        !shown.contains("s3rver-pw"),
        "expected no password, found it in {shown}"
    );
    assert!(shown.contains("http://fleet:***@127.0.0.1:9/"), "{shown}");
    config.channel = "no spaces".to_string();
    let refused = evergreen::Updater::builder(config).build().unwrap_err();
    assert_eq!(refused.kind(), evergreen::ErrorKind::Config, "{refused}");
}

/// `--entry` and `--component` name a path inside the slot: an absolute one (the
/// service's old `ExecStart` path, say) would be joined as itself, and the launcher would
/// start that program, not the slot's, after counting a start of the slot. Refused as a
/// usage error before anything is counted.
#[test]
fn the_launcher_refuses_an_entry_or_component_outside_the_slot() {
    let Setup {
        repo,
        src,
        server: _server,
        dev,
    } = setup("com.acme.launcher-entry");
    publish_app(&repo, &src, "1.0.0", true);
    dev.expect("update", &["--yes"], 0);
    let tries = dev.status()["trial"]["tries_left"].clone();
    let ran = repo.scratch("outside").join("ran");
    let outside = repo.scratch("outside").join("app.sh");
    std::fs::write(&outside, format!("#!/bin/sh\ntouch {}\n", ran.display())).unwrap();
    std::fs::set_permissions(
        &outside,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let outside = outside.to_str().unwrap();
    for (component, entry) in [
        ("app", outside),
        ("app", "../../a/app/run.sh"),
        (outside, "run.sh"),
    ] {
        let mut cmd = Command::new(launcher());
        cmd.args(["--config", dev.config.to_str().unwrap()]).args([
            "--component",
            component,
            "--entry",
            entry,
        ]);
        let out = common::output_within(&mut cmd, common::CLI_LIMIT);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{component} {entry}: {err}");
        assert!(
            err.contains("expected")
                && err.contains("inside the slot")
                && err.contains(if component == "app" { entry } else { component }),
            "{err}"
        );
        assert!(!ran.exists(), "the program outside the slot ran");
    }
    assert_eq!(
        dev.status()["trial"]["tries_left"],
        tries,
        "a start was counted"
    );
}
