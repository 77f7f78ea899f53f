//! Progress and event callbacks into C. Both run on the thread that called the `evg_`
//! function, synchronously. An operation holds the work lock (check, download, install,
//! reinstall) or the state lock (the others) while it calls them, so an operation that
//! needs the same lock, called from inside them, is `EVG_INVALID_STATE` (`State::lock`,
//! `State::work_lock`); reading and replacing callbacks work.

use super::error::evg_status;
use super::handle::to_c_string;
use super::lease::lease;
use super::panic::guard;
use super::updater::evg_updater;
use crate::event::Event;
use crate::fetch::CancelToken;
use std::ffi::{c_char, c_int, c_void};
use std::sync::Mutex;

/// Download progress: `done` of `total` bytes over all artifacts of the operation. Return
/// 0 to go on, non-zero to cancel (the call then returns `EVG_CANCELLED` and keeps the
/// partial download, which the next call resumes). Runs on the calling thread.
pub type evg_progress_cb =
    Option<unsafe extern "C" fn(user: *mut c_void, done: u64, total: u64) -> c_int>;

/// An event as one JSON object, e.g. `{"event":"confirmed","slot":"b",…}` (borrowed: valid
/// only during the call). Runs on the thread running the operation, synchronously.
pub type evg_event_cb = Option<unsafe extern "C" fn(user: *mut c_void, event_json: *const c_char)>;

/// A C callback and its `user` pointer.
#[derive(Clone, Copy)]
struct EventTarget {
    cb: unsafe extern "C" fn(*mut c_void, *const c_char),
    user: *mut c_void,
}

// The host promises, by registering it, that the callback may be called with `user` on
// any thread it calls Evergreen from (docs/c-abi.md); Evergreen never calls it elsewhere.
unsafe impl Send for EventTarget {}
unsafe impl Sync for EventTarget {}

/// Where an updater's events go; replaceable at any time from C.
#[derive(Default)]
pub(crate) struct EventSink(Mutex<Option<EventTarget>>);

impl EventSink {
    /// Sends events to `cb` from now on; NULL stops them.
    pub(crate) fn set(&self, cb: evg_event_cb, user: *mut c_void) {
        let target = cb.map(|cb| EventTarget { cb, user });
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    /// Calls the host with `event` as JSON.
    pub(crate) fn emit(&self, event: &Event) {
        // Copy the target out so the lock is released before C runs: the callback may
        // itself call evg_set_event_callback.
        let target = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = target {
            let json = to_c_string(event.to_json());
            unsafe { (t.cb)(t.user, json.as_ptr()) };
        }
    }
}

/// A progress callback that cancels `cancel` when the host returns non-zero.
pub(crate) struct Progress {
    cb: evg_progress_cb,
    user: *mut c_void,
    /// Checked by the fetcher between chunks.
    pub(crate) cancel: CancelToken,
}

impl Progress {
    /// Wraps the host's callback (NULL: no progress, never cancelled).
    pub(crate) fn new(cb: evg_progress_cb, user: *mut c_void) -> Progress {
        Progress {
            cb,
            user,
            cancel: CancelToken::new(),
        }
    }

    /// Tells the host; a non-zero answer cancels the operation.
    pub(crate) fn report(&self, done: u64, total: u64) {
        if let Some(cb) = self.cb {
            if unsafe { cb(self.user, done, total) } != 0 {
                self.cancel.cancel();
            }
        }
    }
}

/// Sends every event of `updater` to `cb` with `user`, replacing any earlier callback
/// (also one given in `evg_hooks`); NULL `cb` stops events. May be called at any time,
/// even from inside the event callback. The callback runs synchronously on the thread
/// running the operation that emits the event.
///
/// # Safety
/// `updater` is NULL or a live handle; `cb` may be called with `user` until it is replaced
/// or the updater is freed. Replaced while a call on another thread is emitting an event,
/// the old `cb` may still get that one event after this returns: keep the old `user`
/// valid until the calls running on other threads have returned (or until the updater is
/// freed).
#[no_mangle]
pub unsafe extern "C" fn evg_set_event_callback(
    updater: *mut evg_updater,
    cb: evg_event_cb,
    user: *mut c_void,
) -> evg_status {
    guard("evg_set_event_callback", || {
        let updater = unsafe { lease(updater, "updater")? };
        updater.events.set(cb, user);
        Ok(())
    })
}
