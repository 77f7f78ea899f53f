//! Events the updater reports to the host, which turns them into logs or notifications.

use crate::slots::Slot;
use crate::time::Timestamp;
use serde::Serialize;
use std::fmt;

/// Something that happened. Serialises as JSON with an `event` tag (the C ABI passes that
/// JSON to its event callback), e.g. `{"event":"confirmed","slot":"b","version":"1.1.0",…}`.
///
/// An event that reports a change of the state comes once the state is saved: a host
/// that reads [`Updater::status`](crate::Updater::status) when told finds the check's
/// time after `checked`, the new slot after `activated`, a download's or install's
/// failure in the history after `failed`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A check finished.
    Checked {
        /// Channel checked.
        channel: String,
        /// The manifest sequence in force.
        sequence: u64,
        /// True when the cached manifest is current: the server answered 304 (the cached
        /// copy re-verified) or sent the same bytes again.
        not_modified: bool,
    },
    /// A release is available.
    Available {
        /// Its version.
        version: String,
        /// Forced update.
        critical: bool,
    },
    /// A check found no release at all for this device's target in the channel: up to
    /// date as DESIGN §5.2 has it, and for good, which a misspelt `target` looks like.
    /// Sent before the check returns up to date.
    NoReleaseForTarget {
        /// Channel checked.
        channel: String,
        /// The device's target.
        target: String,
        /// The targets the channel's releases are for (none when it has no release).
        targets: Vec<String>,
    },
    /// A check found the device up to date while the channel lists a newer release for its
    /// target, which is not offered to it: the newest such, and why
    /// ([`crate::select::held_back`]). Sent before the check returns up to date.
    HeldBack {
        /// The newest release held back.
        version: String,
        /// Why, e.g. `it was skipped`.
        reason: String,
    },
    /// Download progress of one component's artifact: about one per MiB received, and one
    /// at its end. A blob fetched again from its start (its bytes failed their hash at one
    /// base, and the next serves it) sends them again from there.
    Downloading {
        /// Component name.
        component: String,
        /// Bytes so far.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// Progress of writing one component's image into the inactive slot (image slots), after
    /// its download.
    Installing {
        /// Component name.
        component: String,
        /// Bytes written so far.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// The new release is completely written into the inactive slot.
    Staged {
        /// The slot written.
        slot: Slot,
        /// Release version.
        version: String,
    },
    /// Activation waits for the deploy policy.
    Deferred {
        /// Release version.
        version: String,
        /// When it may go ahead, if known.
        until: Option<Timestamp>,
        /// Why it waits.
        reason: String,
    },
    /// A slot became primary.
    Activated {
        /// The new primary.
        slot: Slot,
        /// Release version.
        version: String,
    },
    /// A trial started: the slot must be confirmed within `tries` starts.
    TrialStarted {
        /// Slot on trial.
        slot: Slot,
        /// Starts allowed before rollback.
        tries: u32,
    },
    /// A start of the trial slot was counted.
    TrialBoot {
        /// Slot on trial.
        slot: Slot,
        /// Starts left after this one.
        tries_left: u32,
    },
    /// The trial slot was confirmed healthy.
    Confirmed {
        /// The slot.
        slot: Slot,
        /// Release version.
        version: String,
        /// The anti-rollback floor now.
        security_floor: u64,
    },
    /// The device went back to the fallback slot.
    RolledBack {
        /// The slot given up.
        from: Slot,
        /// The slot now primary.
        to: Slot,
        /// Version given up.
        version: Option<String>,
        /// Why.
        reason: String,
    },
    /// An operation waits for another one to finish: another process or thread holds a
    /// lock of the state directory. Sent once, when the lock is still held 200 ms after
    /// the operation first asked for it, so a long wait is never silent (and the
    /// milliseconds behind another operation's save go unsaid).
    Waiting {
        /// `work` (held by a check, download or install, which can take long) or `state`
        /// (held while the state is changed and saved).
        lock: String,
        /// The lock file.
        path: String,
    },
    /// An operation failed.
    Failed {
        /// Which operation (`check`, `download`, …).
        operation: String,
        /// The stable error kind.
        kind: String,
        /// The error message.
        message: String,
    },
}

impl Event {
    /// The event as one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Checked {
                channel,
                sequence,
                not_modified,
            } => write!(
                f,
                "checked channel {channel} (sequence {sequence}{})",
                if *not_modified { ", not modified" } else { "" }
            ),
            Event::Available { version, critical } => write!(
                f,
                "version {version} is available{}",
                if *critical { " (critical)" } else { "" }
            ),
            Event::NoReleaseForTarget {
                channel,
                target,
                targets,
            } => {
                write!(f, "channel {channel} has no release for target {target} (")?;
                match targets.is_empty() {
                    true => write!(f, "it has no release)"),
                    false => write!(f, "its releases are for {})", targets.join(", ")),
                }
            }
            Event::HeldBack { version, reason } => write!(
                f,
                "{version} is on the channel and not offered to this device: {reason}"
            ),
            Event::Downloading {
                component,
                done,
                total,
            } => {
                write!(f, "downloading {component}: {done}/{total} bytes")
            }
            Event::Installing {
                component,
                done,
                total,
            } => write!(f, "writing {component}: {done}/{total} bytes"),
            Event::Staged { slot, version } => write!(f, "{version} staged in slot {slot}"),
            Event::Deferred {
                version,
                until,
                reason,
            } => match until {
                Some(t) => write!(f, "activation of {version} deferred until {t}: {reason}"),
                None => write!(f, "activation of {version} deferred: {reason}"),
            },
            Event::Activated { slot, version } => write!(f, "slot {slot} ({version}) activated"),
            Event::TrialStarted { slot, tries } => {
                write!(f, "slot {slot} on trial: {tries} start(s) to confirm it")
            }
            Event::TrialBoot { slot, tries_left } => {
                write!(f, "trial start of slot {slot}: {tries_left} left")
            }
            Event::Confirmed {
                slot,
                version,
                security_floor,
            } => write!(
                f,
                "slot {slot} ({version}) confirmed good; security floor {security_floor}"
            ),
            Event::RolledBack {
                from,
                to,
                version,
                reason,
            } => write!(
                f,
                "rolled back from slot {from} ({}) to slot {to}: {reason}",
                version.as_deref().unwrap_or("-")
            ),
            Event::Waiting { lock, path } => write!(
                f,
                "waiting for another Evergreen operation to finish ({}; lock {path})",
                if lock == "work" {
                    "a check, download or install"
                } else {
                    "a change of the state"
                }
            ),
            Event::Failed {
                operation,
                kind,
                message,
            } => {
                write!(f, "{operation} failed: error[{kind}]: {message}")
            }
        }
    }
}
