//! Progress and event callbacks into C. Both run on the thread that called the `evg_`
//! function, synchronously. An operation holds the work lock (check, download, install,
//! reinstall) or the state lock (the others) while it calls them, so an operation that
//! needs the same lock, called from inside them, is `EVG_INVALID_STATE` (`State::lock`,
//! `State::work_lock`); reading and replacing callbacks work. The exception is the
//! `waiting` event, sent before a lock is taken: inside it the thread holds only the locks
//! taken before that one (none, or the work lock when it waits for the state lock), and
//! what they do not forbid may be called, waiting in turn.

use super::error::evg_status;
use super::handle::to_c_string;
use super::lease::lease;
use super::panic::guard;
use super::updater::evg_updater;
use crate::event::Event;
use crate::fetch::CancelToken;
use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Download progress: `done` of `total` bytes over all artifacts of the operation. Return
/// 0 to go on, non-zero to cancel (the call then returns `EVG_CANCELLED` and keeps the
/// partial download, which the next call resumes; a gzip-compressed image starts over). Runs
/// on the calling thread.
pub type evg_progress_cb =
    Option<unsafe extern "C" fn(user: *mut c_void, done: u64, total: u64) -> c_int>;

/// An event as one JSON object, e.g. `{"event":"confirmed","slot":"b",…}` (borrowed: valid
/// only during the call). Runs on the thread running the operation, synchronously.
pub type evg_event_cb = Option<unsafe extern "C" fn(user: *mut c_void, event_json: *const c_char)>;

/// A C callback and its `user` pointer.
#[derive(Clone, Copy)]
pub(crate) struct EventTarget {
    cb: unsafe extern "C" fn(*mut c_void, *const c_char),
    user: *mut c_void,
}

// The host promises, by registering it, that the callback may be called with `user` on
// any thread it calls Evergreen from (docs/c-abi.md); Evergreen never calls it elsewhere.
unsafe impl Send for EventTarget {}
unsafe impl Sync for EventTarget {}

/// Where an updater's events go; replaceable at any time from C. It also keeps the
/// promise of `evg_updater_free` that no event or progress callback runs after it
/// returns: it counts the callbacks running.
#[derive(Default)]
pub(crate) struct EventSink {
    state: Mutex<Sink>,
    returned: Condvar,
}

#[derive(Default)]
struct Sink {
    target: Option<EventTarget>,
    /// Set by the free: no callback starts after it.
    closed: bool,
    /// Callbacks of this updater running now, on any thread.
    running: usize,
}

thread_local! {
    /// Calls into the host (of any updater) this thread is inside of now: event and
    /// progress callbacks, and the host's transport and selector hooks.
    static IN_CALLBACK: Cell<usize> = const { Cell::new(0) };
}

/// Runs `call`, which calls into the host, counted as a callback of this thread, so that
/// a free made from inside it does not wait (see [`EventSink::close`]).
pub(crate) fn in_host<R>(call: impl FnOnce() -> R) -> R {
    struct Inside;
    impl Drop for Inside {
        fn drop(&mut self) {
            let _ = IN_CALLBACK.try_with(|n| n.set(n.get() - 1));
        }
    }
    let _ = IN_CALLBACK.try_with(|n| n.set(n.get() + 1));
    let _inside = Inside;
    call()
}

/// Whether this thread is inside a call into the host now.
#[cfg(test)]
pub(crate) fn inside_host() -> bool {
    IN_CALLBACK.with(Cell::get) > 0
}

/// Counts a callback as returned when it returns (or unwinds).
struct Running<'a>(&'a EventSink);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.lock().running -= 1;
        self.0.returned.notify_all();
    }
}

impl EventSink {
    fn lock(&self) -> MutexGuard<'_, Sink> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends events to `cb` from now on; NULL stops them.
    pub(crate) fn set(&self, cb: evg_event_cb, user: *mut c_void) {
        self.lock().target = cb.map(|cb| EventTarget { cb, user });
    }

    /// Runs `call` (which calls the host back) with the event target, unless the updater
    /// was freed; says whether it ran. No lock is held while it runs: the host may call
    /// `evg_set_event_callback` or free the updater from inside.
    pub(crate) fn call_host(&self, call: impl FnOnce(Option<EventTarget>)) -> bool {
        let target = {
            let mut s = self.lock();
            if s.closed {
                return false;
            }
            s.running += 1;
            s.target
        };
        let _running = Running(self);
        in_host(|| call(target));
        true
    }

    /// Calls the host with `event` as JSON.
    pub(crate) fn emit(&self, event: &Event) {
        self.call_host(|target| {
            if let Some(t) = target {
                let json = to_c_string(event.to_json());
                unsafe { (t.cb)(t.user, json.as_ptr()) };
            }
        });
    }

    /// The free of a handle a call still holds: no callback starts from now on, and the
    /// ones running are waited for. Not from inside a call into the host (of any
    /// updater): a callback would wait for itself; two threads each freeing from a
    /// callback the updater the other is in a callback of would wait for each other; and
    /// a selector hook runs under the updater's selector lock, which a callback on
    /// another thread may be waiting for (`evg_status_json` from a progress callback).
    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.target = None;
        if IN_CALLBACK.try_with(Cell::get).unwrap_or(0) > 0 {
            return;
        }
        while s.running > 0 {
            s = self.returned.wait(s).unwrap_or_else(|p| p.into_inner());
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc, Barrier};
    use std::thread;
    use std::time::Duration;

    /// Two threads, each inside a callback of one updater, each freeing the other: a free
    /// from inside a callback does not wait, so neither waits for the other.
    #[test]
    fn frees_from_inside_callbacks_of_two_updaters_do_not_wait_for_each_other() {
        let (s1, s2) = (
            Arc::new(EventSink::default()),
            Arc::new(EventSink::default()),
        );
        let barrier = Arc::new(Barrier::new(2));
        let (done, finished) = mpsc::channel();
        for (mine, other) in [(&s1, &s2), (&s2, &s1)] {
            let (mine, other) = (Arc::clone(mine), Arc::clone(other));
            let (barrier, done) = (Arc::clone(&barrier), done.clone());
            thread::spawn(move || {
                mine.call_host(|_| {
                    barrier.wait();
                    other.close();
                });
                done.send(()).unwrap();
            });
        }
        for _ in 0..2 {
            let r = finished.recv_timeout(Duration::from_secs(10));
            assert!(r.is_ok(), "each free waited for the other's callback");
        }
        assert!(!s1.call_host(|_| panic!("a callback after the close")));
    }

    /// A thread inside a callback of `sink` until the sender is sent to (or dropped);
    /// returns once it is inside. The thread answers whether the callback ran.
    fn callback_on_another_thread(
        sink: &Arc<EventSink>,
    ) -> (thread::JoinHandle<bool>, mpsc::Sender<()>) {
        let (entered, wait_entered) = mpsc::channel();
        let (release, wait_release) = mpsc::channel::<()>();
        let sink = Arc::clone(sink);
        let inside = thread::spawn(move || {
            sink.call_host(|_| {
                entered.send(()).unwrap();
                let _ = wait_release.recv();
            })
        });
        wait_entered.recv().unwrap();
        (inside, release)
    }

    /// The free's promise: once `close` returns, no callback is running or starts. A
    /// callback already running on another thread is waited for.
    #[test]
    fn close_waits_for_a_callback_running_on_another_thread() {
        let sink = Arc::new(EventSink::default());
        let (inside, release) = callback_on_another_thread(&sink);
        let closed = Arc::new(AtomicBool::new(false));
        let closer = {
            let (sink, closed) = (Arc::clone(&sink), Arc::clone(&closed));
            thread::spawn(move || {
                sink.close();
                closed.store(true, Ordering::SeqCst);
            })
        };
        thread::sleep(Duration::from_millis(100));
        assert!(
            !closed.load(Ordering::SeqCst),
            "close returned while a callback was running"
        );
        release.send(()).unwrap();
        assert!(inside.join().unwrap(), "the running callback ran");
        closer.join().unwrap();
        assert!(closed.load(Ordering::SeqCst));
        assert!(!sink.call_host(|_| panic!("a callback after the close")));
    }

    /// A free from inside a host hook (a selector hook holds the updater's selector lock)
    /// does not wait for a callback on another thread, which may be waiting for that lock.
    #[test]
    fn close_from_inside_a_host_hook_does_not_wait_for_other_threads() {
        let sink = Arc::new(EventSink::default());
        let (inside, release) = callback_on_another_thread(&sink);
        let (closed, wait_closed) = mpsc::channel();
        let closer = {
            let sink = Arc::clone(&sink);
            thread::spawn(move || {
                in_host(|| sink.close());
                closed.send(()).unwrap();
            })
        };
        let result = wait_closed.recv_timeout(Duration::from_secs(10));
        release.send(()).unwrap();
        inside.join().unwrap();
        closer.join().unwrap();
        assert!(result.is_ok(), "the free from inside a hook waited");
    }

    /// A free from inside a callback on the same thread does not wait for itself.
    #[test]
    fn close_from_inside_a_callback_returns() {
        let sink = EventSink::default();
        assert!(sink.call_host(|_| sink.close()));
        assert!(!sink.call_host(|_| panic!("a callback after the close")));
    }
}
