//! Evergreen: an embeddable updater.
//!
//! Signed channels, staged rollouts, resumable verified downloads, A/B slots with trial
//! boots and automatic rollback, and a C ABI. The update server is static files only.
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
    Activation, Check, Launch, Offer, SlotStatusView, Startup, Status, TrialStatus, Updater,
    UpdaterBuilder,
};
