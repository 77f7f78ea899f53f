//! A tiny launcher: runs Evergreen's startup step, then execs the primary slot's program.
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
//! The app confirms itself once healthy with `evergreen confirm` (or `Updater::confirm`).

use evergreen::slots::dir::DirSlots;
use evergreen::{Config, Startup, Updater};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

struct Args {
    config: PathBuf,
    component: String,
    entry: String,
    rest: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut config, mut component, mut entry) = (None, None, None);
    let mut rest = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => config = it.next().map(PathBuf::from),
            "--component" => component = it.next(),
            "--entry" => entry = it.next(),
            "--" => {
                rest.extend(it.by_ref());
            }
            "-h" | "--help" => {
                return Err(
                    "usage: launcher --config FILE --component NAME --entry PATH [-- ARGS…]".into(),
                )
            }
            other => return Err(format!("unexpected argument {other:?}; see --help")),
        }
    }
    Ok(Args {
        config: config.ok_or("--config FILE is required")?,
        component: component.ok_or("--component NAME is required")?,
        entry: entry.ok_or("--entry PATH is required")?,
        rest,
    })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let run = || -> evergreen::Result<(PathBuf, Startup)> {
        let config = Config::from_file(&args.config)?;
        let root = match &config.slots {
            evergreen::config::SlotsConfig::Dir { root } => root.clone(),
            _ => {
                return Err(evergreen::Error::config(
                    "the launcher runs apps from dir slots",
                ))
            }
        };
        let updater = Updater::builder(config)
            .on_event(|e| eprintln!("launcher: {e}"))
            .build()?;
        let outcome = updater.startup()?;
        Ok((DirSlots::new(root).current_link(), outcome))
    };
    let (current, outcome) = match run() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error[{}]: {e}", e.kind().as_str());
            std::process::exit(1);
        }
    };
    if let Startup::Trial { slot, tries_left } = outcome {
        eprintln!("launcher: slot {slot} on trial, {tries_left} start(s) left");
    }
    let program = current.join(&args.component).join(&args.entry);
    let err = Command::new(&program).args(&args.rest).exec();
    eprintln!("error[io]: exec {}: {err}", program.display());
    std::process::exit(1);
}
