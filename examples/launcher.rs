//! A tiny launcher: runs Evergreen's startup step, then execs the program of the slot it
//! counted this start for (by the slot's own directory, not through `current`).
//!
//! Put it where your service manager starts your app (e.g. systemd `ExecStart=`, with
//! `Restart=on-failure`). On every start it counts a trial start of a freshly activated
//! slot; when the new version has used up its tries without confirming itself, the
//! startup step rolls back and this launcher starts the previous version instead.
//!
//! ```text
//! cargo run --example launcher -- --config /etc/evergreen/config.json \
//!     --component app --entry bin/gateway -- --port 8080
//! ```
//! `--component` is a component's name and `--entry` a path inside its directory: one
//! that is absolute or climbs out with `..` is refused (exit 2), as it would start a
//! program that is not the slot's after counting a start of the slot.
//! The app confirms itself once healthy with `evergreen confirm` (or `Updater::confirm`).
//! When the startup step itself fails (say, a state file it cannot read), the launcher
//! says so and starts the current slot all the same.

use evergreen::config::SlotsConfig;
use evergreen::slots::dir::DirSlots;
use evergreen::{Config, Launch, Startup, Updater};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Args {
    config: PathBuf,
    component: OsString,
    entry: OsString,
    rest: Vec<OsString>,
}

/// The arguments as the system gives them, bytes on Unix: a path (the config's, the
/// entry's) or an argument for the app need not be UTF-8, and `std::env::args` panics on
/// one that is not, before the app ever starts.
fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args_os().skip(1);
    let (mut config, mut component, mut entry) = (None, None, None);
    let mut rest = Vec::new();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--config") => config = it.next().map(PathBuf::from),
            Some("--component") => component = it.next(),
            Some("--entry") => entry = it.next(),
            Some("--") => {
                rest.extend(it.by_ref());
            }
            Some("-h" | "--help") => {
                return Err(
                    "usage: launcher --config FILE --component NAME --entry PATH [-- ARGS…]".into(),
                )
            }
            _ => return Err(format!("unexpected argument {a:?}; see --help")),
        }
    }
    let component = component.ok_or("--component NAME is required")?;
    let entry = entry.ok_or("--entry PATH is required")?;
    inside_the_slot("--component", &component, "app", true)?;
    inside_the_slot("--entry", &entry, "bin/app", false)?;
    Ok(Args {
        config: config.ok_or("--config FILE is required")?,
        component,
        entry,
        rest,
    })
}

/// Refuses a `--component` (one name) or `--entry` (a relative path) that would lead out
/// of the slot: the program is `<slot>/<component>/<entry>`, and a path joined to it
/// replaces it when absolute, or leaves it through `..` (the other slot's program, or
/// one of the system's), after the start was counted for the slot.
fn inside_the_slot(
    flag: &str,
    value: &OsString,
    example: &str,
    one_name: bool,
) -> Result<(), String> {
    use std::path::Component;
    let parts: Vec<Component> = Path::new(value).components().collect();
    let inside = !parts.is_empty()
        && parts
            .iter()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && (!one_name || parts.len() == 1);
    match inside {
        true => Ok(()),
        false => Err(format!(
            "expected {flag} as a {} inside the slot (e.g. {example}; the launcher starts <slot>/<component>/<entry>), found {}",
            if one_name { "name" } else { "relative path" },
            Path::new(value).display()
        )),
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let (config, root) = match load(&args.config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error[{}]: {e}", e.kind().as_str());
            std::process::exit(1);
        }
    };
    // A startup step that fails (a state file it cannot read, a lock it cannot take)
    // decided nothing: the slot `current` points at is still the one to run. An updater
    // that fails must not keep the app from starting.
    let slots = DirSlots::new(root);
    let slot_dir = match startup(config) {
        Ok(launch) => {
            if let Startup::Trial { slot, tries_left } = launch.startup {
                eprintln!("launcher: slot {slot} on trial, {tries_left} start(s) left");
            }
            // The slot the step counted this start for, by its own path: `current` may
            // move under an activation in another process before the exec.
            launch.slot.map(|slot| slots.slot_dir(slot))
        }
        Err(e) => {
            eprintln!(
                "launcher: the startup step failed, starting the current slot anyway: error[{}]: {e}",
                e.kind().as_str()
            );
            None
        }
    };
    let dir = slot_dir.unwrap_or_else(|| slots.current_link());
    let program = dir.join(&args.component).join(&args.entry);
    let err = Command::new(&program).args(&args.rest).exec();
    eprintln!("error[io]: exec {}: {err}", program.display());
    std::process::exit(1);
}

/// The config, and the root of its dir slots (the launcher runs apps from dir slots).
fn load(path: &Path) -> evergreen::Result<(Config, PathBuf)> {
    let config = Config::from_file(path)?;
    match &config.slots {
        SlotsConfig::Dir { root } => {
            let root = root.clone();
            Ok((config, root))
        }
        SlotsConfig::Image { .. } => Err(evergreen::Error::config(
            "expected dir slots (`slots.kind` \"dir\") to run an app from, found image slots: the bootloader starts those",
        )),
    }
}

fn startup(config: Config) -> evergreen::Result<Launch> {
    Updater::builder(config)
        .on_event(|e| eprintln!("launcher: {e}"))
        .build()?
        .startup_for_launcher()
}
