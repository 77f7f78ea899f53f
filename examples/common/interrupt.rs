//! Ctrl-C and SIGTERM in the benchmark and the demo: what they leave behind is removed,
//! the processes they started are stopped, the command says so and exits 130.
//!
//! Without it the default action ended the process at once: the benchmark's scratch
//! directory (several GiB of RAM on /dev/shm in a full run) and the demo's temp dir
//! stayed, and nginx kept serving. The work goes on while the handler cleans up, so the
//! main thread calls [`settle`] before it exits, leaving the exit to the handler.

// Each example uses the part it needs (the demo starts no process).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What to undo on an interrupt.
struct Leftovers {
    dirs: Vec<PathBuf>,
    /// Running children: process id and what to call them.
    processes: Vec<(u32, String)>,
}

static LEFTOVERS: Mutex<Leftovers> = Mutex::new(Leftovers {
    dirs: Vec::new(),
    processes: Vec::new(),
});

/// Set once the handler has started: the main thread must not exit under it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The exit code of a command ended by Ctrl-C (128 + SIGINT), as a shell reports it.
pub const EXIT_CODE: i32 = 130;

fn leftovers() -> std::sync::MutexGuard<'static, Leftovers> {
    LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes `dir` (and all it holds) on an interrupt.
pub fn remove_on_interrupt(dir: &Path) {
    leftovers().dirs.push(dir.to_path_buf());
}

/// Stops the process `pid` (`name` in the message) on an interrupt, until [`forget`].
pub fn stop_on_interrupt(pid: u32, name: &str) {
    leftovers().processes.push((pid, name.to_string()));
}

/// The process `pid` ended and was waited for: its id may be another process's now.
pub fn forget(pid: u32) {
    leftovers().processes.retain(|(p, _)| *p != pid);
}

/// `command`'s exit status, the child stopped on an interrupt while it runs.
pub fn status(command: &mut Command, name: &str) -> std::io::Result<ExitStatus> {
    let mut child = tracked(command, name)?;
    let status = child.wait();
    forget(child.id());
    status
}

/// `command`'s output, the child stopped on an interrupt while it runs.
pub fn output(command: &mut Command, name: &str) -> std::io::Result<Output> {
    use std::process::Stdio;
    let child = tracked(command.stdout(Stdio::piped()).stderr(Stdio::piped()), name)?;
    let pid = child.id();
    let output = child.wait_with_output();
    forget(pid);
    output
}

fn tracked(command: &mut Command, name: &str) -> std::io::Result<Child> {
    // Held while spawning, so the handler cannot run between the spawn and the record.
    let mut left = leftovers();
    let child = command.spawn()?;
    left.processes.push((child.id(), name.to_string()));
    Ok(child)
}

/// Routes Ctrl-C and SIGTERM to the clean-up; `program` names the command in its message.
/// Without the `cli` feature (the `ctrlc` crate) the signals keep their default action.
pub fn install(program: &'static str) {
    #[cfg(feature = "cli")]
    let _ = ctrlc::set_handler(move || {
        INTERRUPTED.store(true, Ordering::SeqCst);
        let done = clean_up();
        let done = if done.is_empty() {
            "nothing was left to clean up".to_string()
        } else {
            done.join("; ")
        };
        eprintln!("\n{program}: interrupted (Ctrl-C or SIGTERM): {done}");
        std::process::exit(EXIT_CODE);
    });
    #[cfg(not(feature = "cli"))]
    let _ = program;
}

/// Parks the main thread for good when an interrupt is being handled: its work failed
/// because the handler stopped a server or removed a directory, and the handler exits.
pub fn settle() {
    while INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Stops the processes, then removes the directories (a server's files live in them);
/// returns what was done.
fn clean_up() -> Vec<String> {
    let left = leftovers();
    let mut done = Vec::new();
    for (pid, name) in &left.processes {
        done.push(match stop(*pid) {
            true => format!("stopped {name} (pid {pid})"),
            false => format!("could not stop {name} (pid {pid})"),
        });
    }
    for dir in &left.dirs {
        if !dir.exists() {
            continue;
        }
        // The main thread may still be writing in it: try again when that got in the way.
        let removed = (0..5).any(|_| match std::fs::remove_dir_all(dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                false
            }
        });
        done.push(match removed {
            true => format!("removed {}", dir.display()),
            false => format!("could not remove {}: remove it by hand", dir.display()),
        });
    }
    done
}

/// SIGTERM, then SIGKILL after 2 s; waits for the child to end.
fn stop(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: plain system calls on a child of this process, which has not been waited
    // for (it is forgotten once it is), so the id is still its own.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) {
                0 => std::thread::sleep(Duration::from_millis(20)),
                -1 if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
                }
                // Ended, or no longer a child to wait for (ECHILD): either way, gone.
                _ => return true,
            }
        }
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0) == pid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupt_stops_the_children_and_removes_the_work_dir() {
        let dir = tempfile::tempdir().expect("temp dir");
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("nginx")).expect("work dir");
        std::fs::write(work.join("nginx/nginx.pid"), "1").expect("a file in it");
        remove_on_interrupt(&work);
        let server = Command::new("sleep").arg("30").spawn().expect("sleep");
        stop_on_interrupt(server.id(), "the server");
        let done = clean_up();
        assert!(!work.exists(), "{} is left", work.display());
        // Waited for by the clean-up: gone, not a zombie.
        assert!(!Path::new(&format!("/proc/{}", server.id())).exists());
        assert_eq!(
            done,
            [
                format!("stopped the server (pid {})", server.id()),
                format!("removed {}", work.display())
            ]
        );
    }

    /// A child that ignores SIGTERM (a tool stuck in a write) is killed after the wait.
    #[test]
    fn a_child_that_ignores_sigterm_is_killed() {
        let child = Command::new("sh")
            .args(["-c", "trap '' TERM; exec sleep 30"])
            .spawn()
            .expect("sh");
        // Once `sleep` runs, the ignored SIGTERM came with it through `exec`.
        let comm = format!("/proc/{}/comm", child.id());
        let started = Instant::now();
        while std::fs::read_to_string(&comm).map_or(true, |c| c.trim() != "sleep") {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "sleep never started"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(stop(child.id()));
        assert!(!Path::new(&format!("/proc/{}", child.id())).exists());
    }
}
