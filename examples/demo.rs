//! The whole product in one run, with no setup and no network beyond 127.0.0.1:
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! An operator makes keys and a signed repository with `evergreen::publish`, an
//! in-process HTTP server serves it, and one device (an `Updater` over dir slots in a temp
//! dir, on a simulated clock) lives through seven steps: a fresh install, channels, a staged
//! rollout, a component-wise update, an automatic rollback, a tampered manifest and a
//! maintenance window. Every step checks what it expects; the demo exits 0 only when all
//! of them did, else it names the step that failed and exits 1. Ctrl-C or SIGTERM removes
//! the temp dir, says so and exits 130. See `docs/demo.md`.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/interrupt.rs"]
mod interrupt;

#[path = "demo/device.rs"]
mod device;
#[path = "demo/narrate.rs"]
mod narrate;
#[path = "demo/steps.rs"]
mod steps;
#[path = "demo/world.rs"]
mod world;

use narrate::{Console, Failure};
use std::process::ExitCode;
use std::sync::Arc;

const USAGE: &str = "\
usage: cargo run --example demo    (the demo takes no arguments)

Runs Evergreen end to end on this machine, in a temp dir, talking only to 127.0.0.1: an
operator signs and publishes releases, and one device installs, follows a staged rollout,
updates component by component, rolls back a broken release, refuses a tampered manifest
and waits for a maintenance window. Exits 0 when every step behaved as expected, else 1,
naming the step. See docs/demo.md.";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Args {
    Run,
    Help,
    /// An argument the demo does not take.
    Unexpected(String),
}

fn parse(args: &[String]) -> Args {
    match args {
        [] => Args::Run,
        [a] if is_help(a) => Args::Help,
        [a, b, ..] if is_help(a) => Args::Unexpected(b.clone()),
        [a, ..] => Args::Unexpected(a.clone()),
    }
}

fn is_help(arg: &str) -> bool {
    arg == "--help" || arg == "-h"
}

fn main() -> ExitCode {
    match parse(&std::env::args().skip(1).collect::<Vec<_>>()) {
        Args::Run => {}
        Args::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Args::Unexpected(a) => {
            eprintln!("demo: unexpected argument {a:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    println!("Evergreen demo: one device, one signed repository, seven steps.");
    interrupt::install("demo");
    ignore_proxy_env();
    let console = Arc::new(Console::default());
    let result = run(&console);
    // A step that failed because an interrupt removed the temp dir is not reported.
    interrupt::settle();
    match result {
        Ok(()) => {
            println!("\nAll {} steps behaved as expected.", steps::STEPS.len());
            ExitCode::SUCCESS
        }
        Err((step, Failure(message))) => {
            eprintln!("\ndemo FAILED at {step}: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The demo talks to 127.0.0.1 and nothing else. An updater whose config names no `proxy`
/// takes one from the environment (as curl does, 127.0.0.1 included unless `NO_PROXY`
/// lists it), so on a machine with `HTTP_PROXY` set the device's requests would go to that
/// proxy, which cannot reach this loopback server: the demo clears those variables first,
/// before any thread runs.
fn ignore_proxy_env() {
    for var in evergreen::fetch::PROXY_VARIABLES {
        if std::env::var_os(var).is_some() {
            println!("   ({var} is ignored: the demo talks only to 127.0.0.1)");
            std::env::remove_var(var);
        }
    }
}

/// Runs the steps in order, stopping at the first that misbehaves.
fn run(console: &Arc<Console>) -> Result<(), (String, Failure)> {
    let mut demo = steps::Demo::new(Arc::clone(console)).map_err(|f| ("setup".into(), f))?;
    for (i, (title, step)) in steps::STEPS.iter().enumerate() {
        console.heading(i + 1, title);
        step(&mut demo).map_err(|f| (format!("step {} ({title})", i + 1), f))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn help_is_not_a_run_and_arguments_are_refused() {
        assert_eq!(parse(&args(&[])), Args::Run);
        assert_eq!(parse(&args(&["--help"])), Args::Help);
        assert_eq!(parse(&args(&["-h"])), Args::Help);
        assert_eq!(
            parse(&args(&["--bogus"])),
            Args::Unexpected("--bogus".into())
        );
        assert_eq!(
            parse(&args(&["--help", "extra"])),
            Args::Unexpected("extra".into())
        );
    }
}
