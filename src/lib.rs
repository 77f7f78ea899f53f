//! Evergreen: an embeddable updater.
//!
//! Signed channels, staged rollouts, resumable verified downloads, A/B slots with trial
//! boots and automatic rollback, and a C ABI. The update server is static files only.
//!
//! # In a Rust application
//!
//! The default features also build the `evergreen` command-line tool (`cli`: clap,
//! indicatif, ctrlc), which an app that links the library does not need:
//!
//! ```toml
//! [dependencies]
//! evergreen = { version = "0.1", default-features = false, features = ["tls", "gzip-images"] }
//! ```
//!
//! `http` is plain HTTP, `tls` HTTPS too (rustls with ring, the system's CA bundle or
//! the config's `ca_roots`), `webpki-roots` Mozilla's roots built in, `gzip-images`
//! gzip-compressed firmware images; with none of them, `file://` and directory bases only,
//! or the host's own [`fetch::Transport`] ([`UpdaterBuilder::transport`]).
//!
//! One [`Updater`] per installation, built from the device's [`Config`], runs the flow one
//! call per step: [`Updater::startup`] early on every start (it counts a trial's starts and
//! rolls a failed release back), [`Updater::confirm`] once the new version is healthy, and
//! [`Updater::check`], [`Updater::plan`], [`Updater::download`], [`Updater::install`] and
//! [`Updater::activate`] for an update. The calls block (network, disk); an `Updater` is
//! `Send + Sync`, so share it in an `Arc` and run them on a thread of their own
//! (`tokio::task::spawn_blocking` in an async app); progress and [`Event`]s come on that
//! thread. A [`fetch::CancelToken`] stops a download between chunks, and
//! [`Updater::halt`] any call: a download between chunks, and a call waiting for the
//! work lock or to retry a failing server.
//! Failures are an [`Error`] with a stable [`ErrorKind`].
//!
//! ```no_run
//! use evergreen::fetch::CancelToken;
//! use evergreen::{Check, Config, Updater};
//! use std::sync::Arc;
//!
//! let config = Config::from_file("/etc/evergreen/config.json")?;
//! let updater = Updater::builder(config)
//!     .on_event(|e| eprintln!("evergreen: {e}"))
//!     .build()?;
//! let updater = Arc::new(updater);
//! updater.startup()?; // early in main
//! // … once this version is healthy (a version not on trial stays as it is):
//! updater.confirm()?;
//!
//! let (worker, cancel) = (Arc::clone(&updater), CancelToken::new());
//! let token = cancel.clone();
//! let background = std::thread::spawn(move || -> evergreen::Result<()> {
//!     if let Check::Available(offer) = worker.check()? {
//!         let plan = worker.plan(&offer)?;
//!         worker.download(&plan, &mut |done, total| eprint!("\r{done}/{total}"), &token)?;
//!         worker.install(&plan)?; // into the inactive slot only
//!         worker.activate(false)?; // runs at the next start, on trial
//!     }
//!     Ok(())
//! });
//! // A cancel button stops the download alone: `cancel.cancel()`.
//! # cancel.cancel();
//! // Quitting: stop what runs, then wait for it (`cancelled`).
//! updater.halt();
//! let _ = background.join();
//! # Ok::<(), evergreen::Error>(())
//! ```
#![deny(missing_docs)]

// One clear message first, rather than dozens about POSIX modes and inodes.
#[cfg(not(unix))]
compile_error!(
    "Evergreen runs on Unix-like systems (Linux, Android, macOS, the BSDs): slots, staging \
     and the state rely on POSIX file modes, hard links, flock and renames over files in use. \
     This target is not one of them."
);

pub mod config;
mod cpus;
pub mod error;
pub mod event;
pub mod fetch;
pub mod ffi;
mod fold;
pub mod fsutil;
mod gzip;
#[cfg(fuzzing)]
#[doc(hidden)]
pub use gzip::fuzz_inflate;
mod json;
pub mod manifest;
pub mod name_map;
pub mod publish;
pub mod select;
pub mod slots;
mod space;
mod spare;
pub mod stage;
pub mod state;
pub mod time;
pub mod trust;
mod updater;

pub use config::Config;
pub use error::{Error, ErrorKind, Result};
pub use event::Event;
pub use name_map::NameMap;
pub use time::Timestamp;

/// The README's examples are compiled as doctests, so the quickstart never rots.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
pub use updater::{
    Activation, Check, Deferral, Launch, Offer, SlotStatusView, Startup, Status, TrialStatus,
    Updater, UpdaterBuilder,
};
