//! Outside tools in the tests. A test whose tool is not installed is skipped on a
//! developer's machine, and fails when `EVERGREEN_REQUIRE_TOOLS` is set: CI installs every
//! tool and sets it, so a skip there cannot report coverage that never ran. A tool runs
//! for at most [`TOOL_LIMIT`]: one that hangs (on a device, a lock, a prompt) fails its
//! test instead of hanging the run.
#![allow(dead_code)]

use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The longest an outside tool (grub-editenv, fw_setenv, losetup, mkfs, openssl,
/// cbindgen) may run in a test.
pub const TOOL_LIMIT: Duration = Duration::from_secs(120);

/// `cmd`'s output, as `Command::output` gives it (stdin empty), once it exits within
/// [`TOOL_LIMIT`]; the error when it cannot start (not installed).
pub fn tool_output(cmd: &mut Command) -> std::io::Result<Output> {
    output_within(cmd, TOOL_LIMIT)
}

/// `cmd`'s output, as `Command::output` gives it (stdin empty), once it exits within
/// `limit`; the error when it cannot start.
pub fn output_within(cmd: &mut Command, limit: Duration) -> std::io::Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    Ok(finish_within(child, limit))
}

/// Whether `cmd` starts and exits 0 within [`TOOL_LIMIT`].
pub fn tool_succeeds(cmd: &mut Command) -> bool {
    tool_output(cmd).is_ok_and(|o| o.status.success())
}

/// Says that `tool` is missing: the test is skipped, or fails under
/// `EVERGREEN_REQUIRE_TOOLS`.
pub fn missing(tool: &str) {
    assert!(
        std::env::var_os("EVERGREEN_REQUIRE_TOOLS").is_none(),
        "expected {tool} installed (EVERGREEN_REQUIRE_TOOLS is set), found none"
    );
    eprintln!("skipped: {tool} not installed");
}

/// The output of `child` once it exits, waiting at most `limit`: a child stuck (on a
/// lock, a prompt) is killed and the test fails, rather than hang. Its piped output is
/// read as it comes, so a child that writes much never waits on a full pipe.
pub fn finish_within(mut child: std::process::Child, limit: std::time::Duration) -> Output {
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("expected the child to exit within {limit:?}, found it still running");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Output {
        status,
        stdout: joined(stdout, deadline, limit),
        stderr: joined(stderr, deadline, limit),
    }
}

/// What `reader` read, once its pipe closes by `deadline`: a process the child left
/// running (a daemon it started) that keeps the pipe open fails the test by then
/// instead of hanging it.
fn joined(
    reader: std::thread::JoinHandle<Vec<u8>>,
    deadline: std::time::Instant,
    limit: std::time::Duration,
) -> Vec<u8> {
    while !reader.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "expected the child's output to end within {limit:?}, found its pipe held open \
             after it exited (by a process it left running)"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    reader.join().unwrap()
}

/// Reads `pipe` to its end on a thread of its own.
fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}
