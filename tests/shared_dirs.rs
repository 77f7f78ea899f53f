//! Files and directories Evergreen makes in a directory other users share (the app's
//! state directory that root writes into too, one a group may write, a sticky `/tmp`):
//! shared as far as the directory already lets those users, and never a file outside it.
//! Needs root and `setpriv`; skipped otherwise (failed under `EVERGREEN_REQUIRE_TOOLS`).

// Linux: the attacks use its system calls (`renameat2`, per-thread `setresuid`).
#![cfg(target_os = "linux")]

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
/// `uid:gid mode` of `m`.
fn om(m: &fs::Metadata) -> String {
    format!("{}:{} {:o}", m.uid(), m.gid(), m.mode() & 0o7777)
}

/// `uid:gid mode` of the file at `p`.
fn owner_mode(p: &Path) -> String {
    om(&fs::metadata(p).unwrap())
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
/// This thread alone becomes nobody:nogroup.
fn this_thread_becomes_nobody() {
    this_thread_becomes(NOBODY)
}

/// This thread alone becomes `uid`, of group nogroup (raw syscalls; glibc's would change
/// every thread).
fn this_thread_becomes(uid: u32) {
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
        assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
    }
}
/// Makes the directory `dir`, owned by `owner` of group nogroup, with `mode`.
fn made_dir(dir: &Path, owner: u32, mode: u32) {
    fs::create_dir(dir).unwrap();
    chown(dir, Some(owner), Some(NOBODY)).unwrap();
    chmod(dir, mode);
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

/// [`setup`], and beside the victim the state directory `state` of `owner` (group
/// nogroup, `mode`).
fn state_beside(
    sub: &str,
    name: &str,
    owner: u32,
    mode: u32,
) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let (top, victim) = setup(sub, name);
    let state = top.path().join("state");
    made_dir(&state, owner, mode);
    (top, victim, state)
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
    let (_top, victim, state) = state_beside("etc", "shadow", NOBODY, 0o755);
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
    let (top, victim, state) = state_beside("sys", "roots", owner, mode);
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
    let (_top, victim, state) = state_beside("etc", "shadow", NOBODY, 0o700);
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

/// The state dir `state` (owner:nogroup, `mode`) holds a directory of root's, `priv`
/// (root:root `priv_mode`, with root's file `app.bin`), which nobody may rename but not
/// enter or write. While root makes `state/cache`, nobody renames `priv` over root's new
/// empty `cache`: root must share only the directory it made, not one renamed over it.
/// Returns priv's owner/mode afterwards and whether nobody could then plant a file in it.
fn swap_race(owner: u32, mode: u32, priv_mode: u32) -> (String, bool) {
    let top = tempfile::tempdir().unwrap();
    chmod(top.path(), 0o755);
    let state = top.path().join("state");
    made_dir(&state, owner, mode);
    let (privd, cache) = (state.join("priv"), state.join("cache"));
    fs::create_dir(&privd).unwrap();
    fs::write(privd.join("app.bin"), b"root's app\n").unwrap();
    chmod(&privd, priv_mode);
    let victim = fs::File::open(&privd).unwrap();
    let ino = victim.metadata().unwrap().ino();
    let before = om(&victim.metadata().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (stop, privd, cache) = (stop.clone(), privd.clone(), cache.clone());
        std::thread::spawn(move || {
            this_thread_becomes_nobody();
            while !stop.load(Relaxed) {
                if fs::symlink_metadata(&cache).is_ok_and(|m| m.is_dir() && m.ino() != ino) {
                    let _ = fs::rename(&privd, &cache);
                }
            }
        })
    };
    let (start, mut tries) = (std::time::Instant::now(), 0);
    while start.elapsed().as_secs() < 3 && om(&victim.metadata().unwrap()) == before {
        tries += 1;
        if fs::symlink_metadata(&cache).is_ok_and(|m| m.ino() == ino) {
            fs::rename(&cache, &privd).unwrap();
        }
        let _ = fs::remove_dir(&cache);
        let _ = fsutil::create_dir_all(&cache);
    }
    stop.store(true, Relaxed);
    racer.join().unwrap();
    let after = om(&victim.metadata().unwrap());
    let at = if fs::symlink_metadata(&cache).is_ok_and(|m| m.ino() == ino) {
        &cache
    } else {
        &privd
    };
    let planted = sh_as(NOBODY, &format!("echo pwned > {}/planted", at.display()));
    eprintln!("after {tries} tries: root's dir {} was {before}, is {after} (at {}); nobody planted a file in it: {planted}", privd.display(), at.display());
    (after, planted)
}

#[test]
fn roots_private_dir_swapped_in_by_the_state_dir_owner_stays_roots() {
    if !is_root() {
        return;
    }
    assert_eq!(swap_race(NOBODY, 0o755, 0o700), ("0:0 700".into(), false));
}

#[test]
fn roots_dir_swapped_in_by_a_group_member_stays_unwritable_by_the_group() {
    if !is_root() {
        return;
    }
    assert_eq!(swap_race(0, 0o775, 0o755), ("0:0 755".into(), false));
}

/// Swaps the entries `a` and `b` in one step (`renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let (a, b) = (
        std::ffi::CString::new(a.as_os_str().as_bytes()).unwrap(),
        std::ffi::CString::new(b.as_os_str().as_bytes()).unwrap(),
    );
    // SAFETY: NUL-terminated paths; the call touches no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        );
    }
}

/// A root:nogroup 0775 directory `shared` holds root's own `state` (root:root 0755: the
/// group may rename it, never write in it). While root saves `state/state.json`, nobody
/// (of the group) keeps exchanging `state` with a directory of its own: root's new file
/// must not end in root's directory given to nobody (judged by one directory, renamed
/// into the other by a rename that looked its directory up twice).
#[test]
fn roots_file_in_roots_dir_is_not_given_by_a_flipped_parent_path() {
    if !is_root() {
        return;
    }
    let top = tempfile::tempdir().unwrap();
    chmod(top.path(), 0o755);
    let shared = top.path().join("shared");
    fs::create_dir(&shared).unwrap();
    chown(&shared, Some(0), Some(NOBODY)).unwrap();
    chmod(&shared, 0o775);
    let (state, mine) = (shared.join("state"), shared.join("mine"));
    fs::create_dir(&state).unwrap();
    chmod(&state, 0o755);
    let real = fs::File::open(&state).unwrap();
    let real_file = format!(
        "/proc/self/fd/{}/state.json",
        std::os::fd::AsRawFd::as_raw_fd(&real)
    );
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (stop, state, mine) = (stop.clone(), state.clone(), mine.clone());
        std::thread::spawn(move || {
            this_thread_becomes_nobody();
            fs::create_dir(&mine).unwrap();
            while !stop.load(Relaxed) {
                exchange(&state, &mine);
            }
        })
    };
    let owner = || fs::metadata(&real_file).map(|m| om(&m)).unwrap_or_default();
    let (start, mut tries) = (std::time::Instant::now(), 0);
    while start.elapsed().as_secs() < 3 && !owner().starts_with("65534:") {
        tries += 1;
        let _ = fsutil::write_atomic(&state.join("state.json"), b"{\"root\":true}");
    }
    stop.store(true, Relaxed);
    racer.join().unwrap();
    // Put root's directory back at its name.
    if fs::File::open(&state).unwrap().metadata().unwrap().ino() != real.metadata().unwrap().ino() {
        exchange(&state, &mine);
    }
    let wrote = sh_as(
        NOBODY,
        &format!("echo pwned > {}", state.join("state.json").display()),
    );
    eprintln!(
        "after {tries} tries: root's {} is {}; root's dir is {}; nobody wrote it in place: {wrote}",
        state.join("state.json").display(),
        owner(),
        om(&real.metadata().unwrap())
    );
    assert!(
        !wrote,
        "nobody wrote root's state file in root's own directory"
    );
}

/// A private directory (0700, as the publisher makes its repository directories under a
/// 077 umask) made by root inside a root:nogroup 0775 directory stays private: the group
/// must not list it.
#[test]
fn a_private_dir_in_a_group_writable_dir_stays_private() {
    if !is_root() {
        return;
    }
    let top = tempfile::tempdir().unwrap();
    chmod(top.path(), 0o755);
    let shared = top.path().join("shared");
    fs::create_dir(&shared).unwrap();
    chown(&shared, Some(0), Some(NOBODY)).unwrap();
    chmod(&shared, 0o775);
    let private = shared.join("private");
    fsutil::create_dir_all_mode(&private, 0o700).unwrap();
    fs::write(private.join("secret-name-2026.key"), b"x").unwrap();
    let listed = sh_as(NOBODY, &format!("ls {}", private.display()));
    eprintln!(
        "private dir is {}; nobody listed it: {listed}",
        om(&fs::metadata(&private).unwrap())
    );
    assert_eq!(
        (om(&fs::metadata(&private).unwrap()), listed),
        ("0:0 700".into(), false)
    );
}

/// User 65533 (group nogroup) runs Evergreen in a root:nogroup 0775 directory it shares
/// with nobody (same group), and prepares slot a of directory slots rooted there
/// (`DirSlots::prepare` removes `slots/.trash-a`). nobody made that tree unremovable for
/// 65533 (0757) and keeps exchanging a directory in it (0777) with a symlink to 65533's
/// own file: opening the tree up for its removal must chmod no file through the link, so
/// 65533's private file keeps its mode.
#[test]
fn removing_a_tree_a_group_member_planted_chmods_no_file_through_a_symlink() {
    if !is_root() {
        return;
    }
    let top = tempfile::tempdir().unwrap();
    chmod(top.path(), 0o755);
    let (home, shared) = (top.path().join("home"), top.path().join("shared"));
    fs::create_dir(&home).unwrap();
    chown(&home, Some(65533), Some(65533)).unwrap();
    let target = home.join(".profile");
    fs::write(&target, b"# 65533's\n").unwrap();
    chown(&target, Some(65533), Some(65533)).unwrap();
    chmod(&target, 0o600);
    fs::create_dir(&shared).unwrap();
    chown(&shared, Some(0), Some(NOBODY)).unwrap();
    chmod(&shared, 0o775);
    // The slots directory of directory slots rooted at `shared`, as 65533's
    // create_dir_all makes it there (65533:nogroup 0775).
    let slots = shared.join("slots");
    fs::create_dir(&slots).unwrap();
    chown(&slots, Some(65533), Some(NOBODY)).unwrap();
    chmod(&slots, 0o775);
    let trash = slots.join(".trash-a");
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (stop, trash, target) = (stop.clone(), trash.clone(), target.clone());
        std::thread::spawn(move || {
            this_thread_becomes(NOBODY);
            fs::create_dir(&trash).unwrap();
            let (x, l) = (trash.join("x"), trash.join("l"));
            fs::create_dir(&x).unwrap();
            chmod(&x, 0o777);
            std::os::unix::fs::symlink(&target, &l).unwrap();
            chmod(&trash, 0o757);
            while !stop.load(Relaxed) {
                exchange(&x, &l);
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    let remover = {
        let (shared, target) = (shared.clone(), target.clone());
        std::thread::spawn(move || {
            this_thread_becomes(65533);
            let dir_slots = evergreen::slots::dir::DirSlots::new(&shared);
            let (start, mut tries) = (std::time::Instant::now(), 0);
            while start.elapsed().as_secs() < 3
                && fs::metadata(&target).unwrap().mode() & 0o777 == 0o600
            {
                tries += 1;
                let _ = dir_slots.prepare(evergreen::slots::Slot::A);
            }
            tries
        })
    };
    let tries = remover.join().unwrap();
    stop.store(true, Relaxed);
    racer.join().unwrap();
    let wrote = sh_as(NOBODY, &format!("echo pwned >> {}", target.display()));
    eprintln!(
        "after {tries} removals: 65533's {} is {}; nobody appended to it: {wrote}",
        target.display(),
        om(&fs::metadata(&target).unwrap())
    );
    assert_eq!(
        (om(&fs::metadata(&target).unwrap()), wrote),
        ("65533:65533 600".into(), false)
    );
}
