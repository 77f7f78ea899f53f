//! Handles in use. Every call on a handle holds a [`Lease`] on it for as long as it runs,
//! so that a host freeing the handle during that call — from inside one of the call's own
//! callbacks (an event handler that shuts down on `rolled_back`), or from another thread —
//! does not pull it from under the running call: the handle is released when the last
//! lease ends, and calls that start after the free are refused.

use super::handle::null_argument;
use crate::error::{Error, Result};
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Set once the host has called the handle's `_free`.
const FREED: usize = 1;
/// One running call; the count lives above the `FREED` bit.
const CALL: usize = 2;

/// The calls running on one handle and whether it was freed, in one word: whichever of
/// "free" and "last call returns" comes second sees the other in the same atomic step, so
/// exactly one of them releases the handle.
#[derive(Debug, Default)]
pub(crate) struct Calls(AtomicUsize);

impl Calls {
    /// True once the host has freed the handle (its release may still wait for a call).
    #[cfg(test)]
    pub(crate) fn freed(&self) -> bool {
        self.0.load(Ordering::Acquire) & FREED != 0
    }
}

/// A handle the host owns and frees with a `_free` export.
pub(crate) trait Leased: Sized {
    /// What the handle is called in messages (`"updater"`, `"offer"`).
    const NAME: &'static str;

    /// The handle's call count.
    fn calls(&self) -> &Calls;

    /// Runs when the host frees the handle while a call on it is still running: the
    /// handle stops calling the host back.
    fn on_free_deferred(&self) {}
}

/// One call's hold on a handle; derefs to it. Dropping the last lease of a freed handle
/// releases it.
pub(crate) struct Lease<T: Leased> {
    handle: NonNull<T>,
}

impl<T: Leased> Deref for Lease<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // Alive: this lease's count keeps every `_free` from releasing it.
        unsafe { self.handle.as_ref() }
    }
}

impl<T: Leased> Drop for Lease<T> {
    fn drop(&mut self) {
        let before = self.calls().0.fetch_sub(CALL, Ordering::AcqRel);
        if before == CALL | FREED {
            // The host freed it during this call, and this was the last call.
            drop(unsafe { Box::from_raw(self.handle.as_ptr()) });
        }
    }
}

/// Starts a call on the handle at `ptr`, the export's argument `arg`. NULL is a config error
/// naming `arg`; a handle freed while another call still runs is `EVG_INVALID_STATE`.
///
/// # Safety
/// `ptr` is NULL or a handle made by `Box::into_raw` whose release has not happened yet.
pub(crate) unsafe fn lease<T: Leased>(ptr: *const T, arg: &str) -> Result<Lease<T>> {
    // From the raw pointer, not through a reference: the last lease may release it.
    let handle = NonNull::new(ptr.cast_mut()).ok_or_else(|| null_argument(arg))?;
    let before = unsafe { handle.as_ref() }
        .calls()
        .0
        .fetch_add(CALL, Ordering::AcqRel);
    // From here the lease owns one count, also when it is refused below: its drop gives
    // the count back and releases the handle if this was the last call.
    let lease = Lease { handle };
    if before & FREED != 0 {
        return Err(Error::invalid_state(format!(
            "argument {arg}: expected a live {name}, found one that was freed \
             (evg_{name}_free) while a call on it was running; it is released when that call returns",
            name = T::NAME
        )));
    }
    Ok(lease)
}

/// The `_free` export of a leased handle: releases it now, or, while a call on it runs,
/// when the last such call returns. NULL is fine; freeing it again during that call does
/// nothing more.
///
/// # Safety
/// `ptr` is NULL or a handle made by `Box::into_raw` whose release has not happened yet.
pub(crate) unsafe fn free<T: Leased>(ptr: *mut T, function: &'static str) {
    if ptr.is_null() {
        return;
    }
    // Dropping a handle runs Rust code (and a host's hook destructors): inside the guard.
    super::panic::guard_release(function, || {
        // The free holds the handle like a call while it tells a running call to stop: that
        // call returning meanwhile must not release the handle under it. Whichever of the
        // two ends last releases it. Already freed (during a call still running): nothing
        // more to do.
        let Ok(held) = (unsafe { lease(ptr, function) }) else {
            return;
        };
        let before = held.calls().0.fetch_or(FREED, Ordering::AcqRel);
        if before & FREED == 0 && before > CALL {
            held.on_free_deferred();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// A handle that records its release and whether it was told to stop calling back.
    struct Probe {
        calls: Calls,
        stopped: AtomicBool,
        released: Arc<AtomicBool>,
    }

    impl Leased for Probe {
        const NAME: &'static str = "probe";
        fn calls(&self) -> &Calls {
            &self.calls
        }
        fn on_free_deferred(&self) {
            self.stopped.store(true, Ordering::SeqCst);
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            assert!(
                !self.released.swap(true, Ordering::SeqCst),
                "released twice"
            );
        }
    }

    fn probe() -> (*mut Probe, Arc<AtomicBool>) {
        let released = Arc::new(AtomicBool::new(false));
        let ptr = Box::into_raw(Box::new(Probe {
            calls: Calls::default(),
            stopped: AtomicBool::new(false),
            released: Arc::clone(&released),
        }));
        (ptr, released)
    }

    #[test]
    fn free_without_a_running_call_releases_at_once() {
        let (ptr, released) = probe();
        drop(unsafe { lease(ptr, "probe") }.unwrap());
        unsafe { free(ptr, "probe_free") };
        assert!(released.load(Ordering::SeqCst));
        unsafe { free(std::ptr::null_mut::<Probe>(), "probe_free") };
    }

    /// Hosts clean up, then report: freeing a handle keeps the failed call's message, at
    /// the same address.
    #[test]
    fn free_leaves_the_last_error_as_it_is() {
        use super::super::error::{evg_last_error_message, set_last_error};
        let (ptr, released) = probe();
        set_last_error("expected a blob, found none");
        let before = evg_last_error_message();
        unsafe { free(ptr, "probe_free") };
        assert!(released.load(Ordering::SeqCst));
        assert_eq!(evg_last_error_message(), before);
        let text = unsafe { std::ffi::CStr::from_ptr(before) };
        assert_eq!(text.to_str().unwrap(), "expected a blob, found none");
    }

    #[test]
    fn free_during_calls_waits_for_the_last_one_and_refuses_new_calls() {
        let (ptr, released) = probe();
        let outer = unsafe { lease(ptr, "probe") }.unwrap();
        let inner = unsafe { lease(ptr, "probe") }.unwrap();
        // As from a callback of the inner call.
        unsafe { free(ptr, "probe_free") };
        assert!(outer.calls().freed());
        assert!(
            outer.stopped.load(Ordering::SeqCst),
            "told to stop calling back"
        );
        let Err(refused) = (unsafe { lease(ptr, "handle") }) else {
            panic!("a call after the free was accepted");
        };
        assert_eq!(refused.kind(), ErrorKind::InvalidState);
        assert!(refused.message().contains("argument handle"), "{refused}");
        assert!(refused.message().contains("evg_probe_free"), "{refused}");
        // A second free during the call changes nothing.
        unsafe { free(ptr, "probe_free") };
        drop(inner);
        assert!(
            !released.load(Ordering::SeqCst),
            "released under a running call"
        );
        drop(outer);
        assert!(
            released.load(Ordering::SeqCst),
            "not released by the last call"
        );
    }

    #[test]
    fn a_free_racing_the_last_call_releases_exactly_once() {
        /// The handle as a host thread holds it.
        struct HostPtr(*mut Probe);
        unsafe impl Send for HostPtr {}

        // Probe's drop panics on a second release; the count must also not leak one.
        for _ in 0..200 {
            let (ptr, released) = probe();
            let lease = unsafe { lease(ptr, "probe") }.unwrap();
            let host = HostPtr(ptr);
            let freer = std::thread::spawn(move || {
                let host = host;
                unsafe { free(host.0, "probe_free") }
            });
            drop(lease);
            freer.join().unwrap();
            assert!(released.load(Ordering::SeqCst));
        }
    }

    #[test]
    fn null_is_a_config_error_naming_the_argument() {
        let Err(e) = (unsafe { lease(std::ptr::null::<Probe>(), "offer") }) else {
            panic!("NULL accepted");
        };
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains("argument offer"), "{e}");
    }
}
