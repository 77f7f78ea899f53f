//! Files and directories Evergreen makes in a directory other users share (the app's
//! state directory that root writes into too, one a group may write, a sticky `/tmp`):
//! shared as far as the directory already lets those users, and never a file outside it.
//! Needs root and `setpriv`; skipped otherwise (failed under `EVERGREEN_REQUIRE_TOOLS`).

mod require;
use evergreen::fsutil;
use std::fs::{self, Permissions};
use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{
    atomic::{AtomicBool, Ordering::Relaxed},
    Arc,
};

const NOBODY: u32 = 65534;
/// Whether this test may run: as root, with `setpriv` to act as other users.
fn is_root() -> bool {
    // SAFETY: a query without arguments.
    let root = unsafe { libc::geteuid() } == 0
        && require::tool_succeeds(std::process::Command::new("setpriv").arg("--version"));
    if !root {
        require::missing("root and setpriv (to act as other users)");
    }
    root
}
fn chmod(p: &Path, m: u32) {
    fs::set_permissions(p, Permissions::from_mode(m)).unwrap()
}
fn owner_mode(p: &Path) -> String {
    let m = fs::metadata(p).unwrap();
    format!("{}:{} {:o}", m.uid(), m.gid(), m.mode() & 0o7777)
}
/// `sh -c script` as uid `uid`, gid nogroup, no other groups: whether it succeeded.
fn sh_as(uid: u32, script: &str) -> bool {
    std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .status()
        .unwrap()
        .success()
}
/// This thread alone becomes nobody:nogroup (raw syscalls; glibc's would change all threads).
fn this_thread_becomes_nobody() {
    // SAFETY: raw syscalls with valid arguments, changing only the calling thread.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()),
            0
        );
        assert_eq!(
            libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY),
            0
        );
        assert_eq!(
            libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY),
            0
        );
    }
}
/// A tempdir others may traverse, with a root-owned 0600 victim `sub/name` in it.
fn setup(sub: &str, name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let top = tempfile::tempdir().unwrap();
    chmod(top.path(), 0o755);
    fs::create_dir(top.path().join(sub)).unwrap();
    let victim = top.path().join(sub).join(name);
    fs::write(&victim, b"root:secret\n").unwrap();
    chmod(&victim, 0o600);
    (top, victim)
}

/// A sticky `/tmp`-like directory (1777, group nogroup): others cannot replace root's
/// entries there, so root's new file and directory must not become the group's to write.
#[test]
fn roots_file_and_dir_in_a_sticky_dir_stay_roots_alone() {
    if !is_root() {
        return;
    }
    let (top, _) = setup("x", "y");
    let sticky = top.path().join("shared-tmp");
    fs::create_dir(&sticky).unwrap();
    chown(&sticky, Some(0), Some(NOBODY)).unwrap();
    chmod(&sticky, 0o1777);
    let (file, dir) = (sticky.join("state.json"), sticky.join("state"));
    fsutil::write_atomic(&file, b"{}").unwrap();
    fsutil::create_dir_all(&dir).unwrap();
    let wrote = (
        sh_as(NOBODY, &format!("echo pwned > {}", file.display())),
        sh_as(NOBODY, &format!("echo x > {}/planted", dir.display())),
    );
    eprintln!(
        "file {}; dir {}; nobody wrote (file, dir): {wrote:?}",
        owner_mode(&file),
        owner_mode(&dir)
    );
    assert_eq!(
        (owner_mode(&file), owner_mode(&dir), wrote),
        ("0:0 644".into(), "0:0 755".into(), (false, false))
    );
}

/// Not root: nobody keeps its state in a 1777 root:root directory, whose group it cannot
/// give its files to: they must not become writable by its own primary group instead (here
/// another user, uid 65533 of group nogroup).
#[test]
fn a_users_files_in_a_sticky_dir_stay_unwritable_by_its_primary_group() {
    if !is_root() {
        return;
    }
    let (top, _) = setup("x", "y");
    let tmp = top.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    chmod(&tmp, 0o1777);
    let (dir, file) = (tmp.join("app-state"), tmp.join("app-state/state.json"));
    let (d, f) = (dir.clone(), file.clone());
    std::thread::spawn(move || {
        this_thread_becomes_nobody();
        fsutil::create_dir_all(&d).unwrap();
        fsutil::write_atomic(&f, b"{}").unwrap();
    })
    .join()
    .unwrap();
    let wrote = (
        sh_as(65533, &format!("echo pwned > {}", file.display())),
        sh_as(65533, &format!("echo x > {}/planted", dir.display())),
    );
    eprintln!(
        "file {}; dir {}; uid 65533 wrote (file, dir): {wrote:?}",
        owner_mode(&file),
        owner_mode(&dir)
    );
    assert_eq!(
        wrote,
        (false, false),
        "another user of nobody's primary group wrote nobody's state"
    );
}

/// Root makes `state/cache/roots` in nobody's state directory while the owner renames each
/// new directory away and puts a hard link to a file outside in its place: that file must
/// never be given away. (The racer is a root thread standing in for nobody, who could do
/// this itself where `fs.protected_hardlinks` is 0, the kernel's default.) Bounded: 3,000
/// rounds; an unfixed build lost within a few.
#[test]
fn a_new_directory_swapped_for_a_hard_link_gives_away_no_file_outside() {
    if !is_root() {
        return;
    }
    let (top, victim) = setup("etc", "shadow");
    let state = top.path().join("state");
    fs::create_dir(&state).unwrap();
    chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let target = state.join("cache/roots");
    let racer = {
        let (stop, state, target, victim) =
            (stop.clone(), state.clone(), target.clone(), victim.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Relaxed) {
                if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                    n += 1;
                    if fs::rename(&target, state.join(format!("away-{n}"))).is_ok() {
                        let _ = fs::hard_link(&victim, &target);
                    }
                }
            }
        })
    };
    for _ in 0..3000 {
        let _ = fs::remove_file(&target);
        let _ = fs::remove_dir_all(state.join("cache"));
        let _ = fsutil::create_dir_all(&target);
        if owner_mode(&victim) != "0:0 600" {
            break;
        }
    }
    stop.store(true, Relaxed);
    racer.join().unwrap();
    assert_eq!(
        owner_mode(&victim),
        "0:0 600",
        "{} outside the state dir was given away",
        victim.display()
    );
}

/// Root makes `state/cache/roots` while nobody, who may write `state` (as its owner, or a
/// member of its group: `mode`), flips `cache` between a symlink to root's directory `sys`
/// (holding the victim `roots`) and one to a directory of its own: what root opens and
/// the parent it judges by must be one directory, so the victim stays root's. Bounded: 3 s
/// of racing; an unfixed build lost within 2,000 tries (under 2 s).
fn flip_race(owner: u32, mode: u32) -> String {
    let (top, victim) = setup("sys", "roots");
    let state = top.path().join("state");
    fs::create_dir(&state).unwrap();
    chown(&state, Some(owner), Some(NOBODY)).unwrap();
    chmod(&state, mode);
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (stop, state, sys) = (stop.clone(), state.clone(), top.path().join("sys"));
        std::thread::spawn(move || {
            this_thread_becomes_nobody();
            let mine = state.join("mine");
            fs::create_dir(&mine).unwrap();
            chmod(&mine, 0o775);
            let (cache, l_sys, l_mine) = (
                state.join("cache"),
                state.join("l-sys"),
                state.join("l-mine"),
            );
            let mut n = 0;
            while !stop.load(Relaxed) {
                if fs::symlink_metadata(&cache).is_ok_and(|m| m.is_dir()) {
                    n += 1;
                    let _ = fs::rename(&cache, state.join(format!("away-{n}")));
                }
                let _ = symlink(&sys, &l_sys);
                let _ = fs::rename(&l_sys, &cache);
                let _ = symlink(&mine, &l_mine);
                let _ = fs::rename(&l_mine, &cache);
            }
        })
    };
    let (start, mut tries) = (std::time::Instant::now(), 0);
    while start.elapsed().as_secs() < 3 && owner_mode(&victim) == "0:0 600" {
        tries += 1;
        let _ = fs::remove_file(state.join("cache"));
        let _ = fsutil::create_dir_all(&state.join("cache/roots"));
    }
    stop.store(true, Relaxed);
    racer.join().unwrap();
    eprintln!(
        "after {tries} tries: {} is {}",
        victim.display(),
        owner_mode(&victim)
    );
    owner_mode(&victim)
}
#[test]
fn a_parent_flipped_by_the_directory_owner_gives_away_no_file_outside() {
    if !is_root() {
        return;
    }
    assert_eq!(
        flip_race(NOBODY, 0o755),
        "0:0 600",
        "a file outside the state dir was given away"
    );
}
/// The same in a root-owned state directory shared with a group (root:nogroup 0775).
#[test]
fn a_parent_flipped_by_a_group_member_gives_away_no_file_outside() {
    if !is_root() {
        return;
    }
    assert_eq!(
        flip_race(0, 0o775),
        "0:0 600",
        "a file outside the state dir was given away"
    );
}

/// A hard link to a root file planted under the temp name is removed, neither written nor
/// given away; root's file in nobody's private (0700) state directory goes to nobody, 0644,
/// and the directory stays 0700.
#[test]
fn a_planted_temp_link_and_a_private_dir_hold() {
    if !is_root() {
        return;
    }
    let (top, victim) = setup("etc", "shadow");
    let state = top.path().join("state");
    fs::create_dir(&state).unwrap();
    chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
    chmod(&state, 0o700);
    let file = state.join("state.json");
    fs::hard_link(&victim, fsutil::temp_path(&file)).unwrap();
    fsutil::write_atomic(&file, b"{}").unwrap();
    assert_eq!(
        (owner_mode(&victim), fs::read(&victim).unwrap()),
        ("0:0 600".into(), b"root:secret\n".to_vec())
    );
    assert_eq!(
        (owner_mode(&file), owner_mode(&state)),
        ("65534:65534 644".into(), "65534:65534 700".into())
    );
}
