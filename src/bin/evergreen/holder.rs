//! Who holds the lock a command waits for. The `waiting` line names that process and
//! says when this command runs under it: a host that runs `evergreen confirm` (a health
//! check) from an event callback waits for the command while the command waits for the
//! lock the host's operation holds, and neither ever ends. The line then says why.

/// What to add to the `waiting` line for the lock file `path`: `; held by process N
/// (name)`, and that this command runs under it when it does. The name is what the process
/// chose (`prctl(PR_SET_NAME)`): the caller shows it escaped. Empty where the holder
/// cannot be learnt (not Linux, no `/proc`, a lock another machine holds).
pub fn note(path: &str) -> String {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(pid) = holder(std::path::Path::new(path)) {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let held = format!("; held by process {pid} ({})", name.trim());
        return match ancestors().contains(&pid) {
            true => format!(
                "{held}, which this command runs under: if it waits for this command to end \
                 (a command run from an event or progress callback), both wait for ever; run \
                 evergreen after the call that holds the lock returns"
            ),
            false => held,
        };
    }
    let _ = path;
    String::new()
}

/// The process holding a `flock` on `path`, from `/proc/locks` (`1: FLOCK ADVISORY WRITE
/// PID MAJOR:MINOR:INODE 0 EOF`; a waiter's line has `->` and is skipped).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn holder(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let file = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields[..] {
            [_, "FLOCK", _, _, pid, id, ..] if id == file => pid.parse().ok(),
            _ => None,
        }
    })
}

/// The ids of this process's parent, its parent's parent, … up to the first process.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn ancestors() -> Vec<u32> {
    let mut found = Vec::new();
    let mut pid = std::os::unix::process::parent_id();
    // Bounded: a chain read while processes end and ids are reused must still stop.
    while pid > 1 && found.len() < 256 {
        found.push(pid);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // `PID (COMM) STATE PPID …`; the name may hold spaces and parentheses.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        pid = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
    }
    found
}
