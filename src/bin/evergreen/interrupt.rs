//! Ctrl-C and SIGTERM: the command ends with `error[cancelled]` and exit code 1, like any
//! other failure, instead of the shell's 130 with no message.
//!
//! A download sees the cancel between chunks and ends by itself, keeping what it
//! received; so does a repository's copy or hash of a file, removing its partial copy.
//! A step that does not look at the cancel (a check waiting on a silent server, an
//! install, a signature) is stopped after [`GRACE`]: every step of Evergreen is safe to
//! stop at any instant, as a power cut would (state saved by rename, slots marked before
//! they are written, repository files written under temp names that the next change
//! removes), so the next run carries on. One that ends inside the grace starts no next
//! step ([`stop_here`]).

use evergreen::fetch::CancelToken;
use std::sync::OnceLock;
use std::time::Duration;

/// How long a step that does not look at the cancel may take to end by itself.
const GRACE: Duration = Duration::from_secs(2);

/// The cancel of this run, set by Ctrl-C or SIGTERM.
pub fn token() -> CancelToken {
    static TOKEN: OnceLock<CancelToken> = OnceLock::new();
    TOKEN.get_or_init(CancelToken::new).clone()
}

/// `cancelled` once Ctrl-C or SIGTERM came: asked between the steps of a command. A step
/// that does not look at the cancel (a check, an install) runs on for up to [`GRACE`] and
/// may end well inside it; what follows it (a channel switch, an activation) must not
/// start then, or a stopped `update` would switch the device and exit 0.
/// `next` names the step not started, for the error.
pub fn stop_here(next: &str) -> evergreen::Result<()> {
    match token().is_cancelled() {
        false => Ok(()),
        true => Err(evergreen::Error::new(
            evergreen::ErrorKind::Cancelled,
            format!("expected to go on to {next}, found a stop asked for: not started"),
        )),
    }
}

/// What a command stopped by the cancel leaves for the next run.
#[derive(Clone, Copy)]
pub enum Kept {
    /// A download keeps the bytes it received, and the next run resumes it.
    Received,
    /// A repository change removes its partial copy and signs nothing.
    Nothing,
}

/// `e`, saying that the cancel it reports came from Ctrl-C or SIGTERM when it did (the
/// library's own words are about a host's cancel), and what the command left.
pub fn explain(e: evergreen::Error, kept: Kept) -> evergreen::Error {
    if e.kind() != evergreen::ErrorKind::Cancelled || !token().is_cancelled() {
        return e;
    }
    e.context(match kept {
        Kept::Received => {
            "interrupted (Ctrl-C, SIGTERM or SIGHUP); what was received is kept for the next run"
        }
        Kept::Nothing => {
            "interrupted (Ctrl-C, SIGTERM or SIGHUP); nothing was published and no partial copy is left"
        }
    })
}

/// Routes Ctrl-C and SIGTERM to [`token`]. Without a handler (one could not be set) the
/// signals keep their default: the process stops at once, which is safe too. A signal
/// the process was started with ignored stays ignored: `nohup` ignores SIGHUP, and `sh`
/// SIGINT for a job it starts in the background, so that the end of the session or a
/// Ctrl-C meant for the foreground does not stop it (the handler, which also takes
/// SIGHUP, took them over and cancelled such an update).
pub fn install() {
    let signals = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
    let ignored = signals.map(|signal| {
        // SAFETY: reads the signal's disposition; a null new action changes nothing.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(signal, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
        }
    });
    set_handler();
    for (signal, ignored) in signals.into_iter().zip(ignored) {
        if ignored {
            // SAFETY: sets a standard signal's disposition back to "ignore".
            unsafe {
                libc::signal(signal, libc::SIG_IGN);
            }
        }
    }
}

/// The handler of [`install`]: cancels [`token`], then ends the process after [`GRACE`].
fn set_handler() {
    let token = token();
    let _ = ctrlc::set_handler(move || {
        token.cancel();
        std::thread::sleep(GRACE);
        crate::report(&evergreen::Error::new(
            evergreen::ErrorKind::Cancelled,
            "interrupted (Ctrl-C, SIGTERM or SIGHUP); stopped where it was, which is safe: run the command again to carry on",
        ));
        std::process::exit(1);
    });
}

/// A write past the process's file size limit (`ulimit -f`, `RLIMIT_FSIZE`) fails with
/// `EFBIG`, which the command reports as an `io` error naming the limit, instead of
/// SIGXFSZ ending the process with no message (its default action). Nothing is lost
/// either way; this says why.
pub fn ignore_file_size_signal() {
    // SAFETY: sets a standard signal's disposition to "ignore"; no handler runs.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
