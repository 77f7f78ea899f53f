//! An app that runs Evergreen's startup step in its own process, early in `main`, and
//! confirms a release on trial once its health check passes: the in-app way to run the
//! step (the other is a launcher, `examples/launcher.rs`).
//!
//! ```text
//! cargo run --example app -- --config /etc/evergreen/config.json [--unhealthy]
//! ```
//! Its program belongs in the release (in a dir slot, started through `<root>/current`
//! by the service manager): the step then knows which release this process runs from
//! where its program lies, even when another process activates or rolls back between
//! the start and the step. It prints one line of JSON, what the step found and what the
//! confirm answered: `{"startup":"trial","tries_left":2,"confirm":"ok"}`.

use evergreen::{Config, Startup, Updater};
use std::path::PathBuf;

fn main() {
    // `args_os`: a config path need not be UTF-8 (`std::env::args` panics on one).
    let mut args = std::env::args_os().skip(1);
    let (mut config, mut healthy) = (None, true);
    while let Some(a) = args.next() {
        match a.to_str().unwrap_or_default() {
            "--config" => config = args.next().map(PathBuf::from),
            "--unhealthy" => healthy = false,
            _ => fail("usage: app --config FILE [--unhealthy]"),
        }
    }
    let config = config.unwrap_or_else(|| fail("--config FILE is required"));
    let updater = Config::from_file(&config)
        .and_then(|c| Updater::builder(c).build())
        .unwrap_or_else(|e| fail(&format!("error[{}]: {e}", e.kind())));
    // First thing: the step counts this start of a release on trial, or rolls back one
    // that used up its tries.
    let (startup, tries_left) = match updater.startup() {
        Ok(Startup::Normal) => ("normal", None),
        Ok(Startup::Trial { tries_left, .. }) => ("trial", Some(tries_left)),
        Ok(Startup::RolledBack { .. }) => ("rolled_back", None),
        Err(e) => fail(&format!("error[{}]: {e}", e.kind())),
    };
    // … the app's own work and health check go here; a healthy release vouches for
    // itself (for a release not on trial, a confirm changes nothing).
    let confirm = match healthy {
        true => match updater.confirm() {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("error[{}]: {e}", e.kind()),
        },
        false => "none".to_string(),
    };
    println!(
        "{}",
        serde_json::json!({"startup": startup, "tries_left": tries_left, "confirm": confirm})
    );
}

fn fail(message: &str) -> ! {
    eprintln!("app: {message}");
    std::process::exit(2)
}
