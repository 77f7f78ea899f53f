//! The `evergreen` command-line tool (DESIGN §9): operator commands that build a signed
//! repository, and device commands that update this machine.
//!
//! Exit codes: 0 success, 1 failure, 2 usage, 10 update available (`check`). A failure
//! prints exactly one line, `error[<kind>]: <message>`, on stderr, where `<kind>` is the
//! stable error name; Ctrl-C, SIGTERM and SIGHUP are the failure `cancelled` ([`interrupt`]).

/// Prints a line on stdout. A failed write must not stop the work a command is doing
/// halfway, nor panic: a closed stdout (`evergreen init … | head -1`) is dropped, and any
/// other failure (a full disk under `> report.json`) is the command's `io` error once its
/// work is done ([`lost_output`]), so that a script never takes lost output for success.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics: see [`write_err`].
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::write_err(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod device;
mod holder;
mod interrupt;
mod operator;

use clap::{CommandFactory, Parser, Subcommand};
use evergreen::{Error, ErrorKind, Result, Timestamp};
use std::process::ExitCode;

/// Evergreen: signed update channels, staged rollouts and A/B slots.
#[derive(Parser)]
#[command(
    name = "evergreen",
    version,
    after_help = "Exit codes: 0 success, 1 failure (one line `error[<kind>]: <message>` on stderr; Ctrl-C, SIGTERM and SIGHUP are error[cancelled]), 2 usage, 10 update available (check).\n\
                  Set EVERGREEN_NOW to an RFC 3339 time to run as if the clock read that time."
)]
struct Cli {
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Device config file (the library's JSON config), before the command as after it
    /// [default: $EVERGREEN_CONFIG when set and not empty, else /etc/evergreen/config.json]
    // Not global: a global option is listed in every command's help, the operator
    // commands' too, which take a REPO and read no config. Each device command has its
    // own (`device::DeviceOpts`); this one keeps `evergreen --config F status` working.
    #[arg(long, value_name = "FILE", help_heading = "Device command options")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Operator(operator::Command),
    #[command(flatten)]
    Device(device::Command),
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors and 0 for --help / --version.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => return printed(&e),
        Err(e) => e.exit(),
    };
    interrupt::install();
    interrupt::ignore_file_size_signal();
    if cli.config.is_some() && matches!(cli.command, Command::Operator(_)) {
        // Refused as it is after the command, rather than read by nothing.
        usage_error(
            "",
            "expected --config only with a device command (check, update, status, …), found it with an operator command, which reads no device config",
        );
    }
    let (result, kept) = match cli.command {
        Command::Operator(cmd) => (
            operator::run(cmd, cli.json).map(|()| 0),
            interrupt::Kept::Nothing,
        ),
        Command::Device(cmd) => (
            device::run(cmd, cli.config, cli.json),
            interrupt::Kept::Received,
        ),
    };
    match result.and_then(|code| lost_output().map_or(Ok(code), Err)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            report(&interrupt::explain(e, kept));
            ExitCode::FAILURE
        }
    }
}

/// Prints `--help` or `--version` as any output is printed: one that cannot be written
/// (`--help > /dev/full`) is `error[io]`, exit code 1, not a silent success; a reader
/// that went away (`--help | head -1`) is no error.
fn printed(help: &clap::Error) -> ExitCode {
    use std::io::Write as _;
    let written = help.print().and_then(|()| std::io::stdout().flush());
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            report(&Error::new(
                ErrorKind::Io,
                format!("expected --help or --version written to standard output, found: {e}"),
            ));
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

/// Exits with a usage error of `subcommand` (exit code 2), as clap reports a wrong
/// argument: `error: <message>`, the subcommand's usage line and a pointer to `--help`.
/// For a usage problem only found while running (an `update` that needs `--yes` off a
/// terminal, once there is something to install): an `error[<kind>]` line with exit 1
/// would say the command failed, not that it was called wrong. Only for a point where
/// nothing has been changed yet that the exit could leave half done.
pub(crate) fn usage_error(subcommand: &str, message: &str) -> ! {
    let mut cli = Cli::command();
    // Built, the subcommand's usage line reads `evergreen update …`, not `update …`.
    cli.build();
    match cli.find_subcommand_mut(subcommand) {
        Some(cmd) => cmd.error(clap::error::ErrorKind::MissingRequiredArgument, message),
        None => cli.error(clap::error::ErrorKind::MissingRequiredArgument, message),
    }
    .exit()
}

/// The device config file: `--config`, else `EVERGREEN_CONFIG`, else the system's. The
/// variable is read here, not by clap, so that an empty one (`Environment=EVERGREEN_CONFIG=`
/// in a unit, `EVERGREEN_CONFIG=$UNSET`) counts as unset rather than failing every command,
/// operator commands too, with a usage error about a flag nobody passed.
fn config_path(flag: Option<std::path::PathBuf>) -> std::path::PathBuf {
    flag.or_else(|| {
        std::env::var_os("EVERGREEN_CONFIG")
            .filter(|v| !v.is_empty())
            .map(Into::into)
    })
    .unwrap_or_else(|| "/etc/evergreen/config.json".into())
}

/// The first failure to write stdout other than a closed pipe, kept for [`lost_output`].
static STDOUT_FAILED: std::sync::OnceLock<std::io::Error> = std::sync::OnceLock::new();

/// Writes one line on stdout for [`out!`], keeping its failure for [`lost_output`].
pub(crate) fn write_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    if let Err(e) = writeln!(std::io::stdout(), "{line}") {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = STDOUT_FAILED.set(e);
        }
    }
}

/// Writes `text` on stderr for [`err!`] (and a prompt), ignoring a failure.
/// `eprintln!` panics when stderr is a pipe whose reader went away (`2>&1 | head -1`),
/// which stopped an update half-way with exit code 101, and in the Ctrl-C handler kept
/// the process from exiting. Stderr is where failures are said, so there is nowhere left
/// to say this one: the command goes on, and its exit code says how it ended.
pub(crate) fn write_err(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = std::io::stderr().write_fmt(text);
}

/// The `io` error of a command whose output could not be written, once it is done.
fn lost_output() -> Option<Error> {
    STDOUT_FAILED.get().map(|e| {
        Error::new(
            ErrorKind::Io,
            format!("expected the command's output written to standard output, found: {e} (the command itself finished)"),
        )
    })
}

/// A version argument (`--version`, `--min-version`, `skip VERSION`); clap reports the
/// error as a usage error, in the words of [`Error`]'s messages rather than semver's
/// ("unexpected end of input while parsing major version number" for `1`).
pub(crate) fn parse_version(text: &str) -> std::result::Result<semver::Version, String> {
    semver::Version::parse(text)
        .map_err(|e| format!("expected a semver version like 1.2.3, found {text:?} ({e})"))
}

/// A path as text for `--json` output: exact when it is UTF-8, lossy (U+FFFD for each
/// byte that is not) when not, since JSON strings are Unicode.
pub(crate) fn path_text(path: &std::path::Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Prints `error[<kind>]: <message>` as one line, so scripts can match on the kind.
fn report(e: &Error) {
    say(&format!("error[{}]", e.kind().as_str()), e.message());
}

/// Prints `label: text` on stderr, `text` as [`one_line`] shows it: the warnings and
/// notes of every command, whose words may come from outside (a path, a publisher's text).
pub(crate) fn say(label: &str, text: &str) {
    err!("{label}: {}", one_line(text));
}

/// Text from outside Evergreen (a server's, a publisher's release notes, a config's key)
/// as part of one line, its control characters escaped: as every error message is.
pub(crate) use evergreen::error::one_line;

/// The clock of this run: `EVERGREEN_NOW` (RFC 3339) when set, for tests and demos that
/// need a fixed time; the system clock otherwise.
pub(crate) fn now() -> Result<Timestamp> {
    match std::env::var("EVERGREEN_NOW") {
        Ok(text) => text.parse().map_err(|e: Error| e.context("EVERGREEN_NOW")),
        Err(std::env::VarError::NotPresent) => Ok(Timestamp::now()),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::config(
            "EVERGREEN_NOW: expected an RFC 3339 time, found non-UTF-8 bytes",
        )),
    }
}

/// Prints `value` as one line of JSON.
pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string(value)
        .map_err(|e| Error::config(format!("expected printable JSON output, found: {e}")))?;
    out!("{text}");
    Ok(())
}
