//! The panic boundary every export runs in: a Rust panic never unwinds into C.

use super::error::{clear_last_error, evg_status, fail, set_last_error, set_last_error_if_none};
use crate::error::Result;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `body` for the export `name`: clears the thread's last error, and turns an error
/// into its status and a panic into `EVG_PANIC`, both with a message.
pub(crate) fn guard(name: &str, body: impl FnOnce() -> Result<()>) -> evg_status {
    let mut body = Some(body);
    guard_dyn(name, &mut || body.take().map_or(Ok(()), |f| f()))
}

/// [`guard`] for one type of body: the boundary (catching, the last error, the status) is
/// then in the library once, not copied into each of the exports.
#[inline(never)]
fn guard_dyn(name: &str, body: &mut dyn FnMut() -> Result<()>) -> evg_status {
    clear_last_error();
    // The handles hold no invariants a half-finished operation could break beyond what
    // the persisted state's crash safety already covers, so unwinding past them is safe.
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            // A nested call from a callback may have failed; this call did not.
            clear_last_error();
            evg_status::EVG_OK
        }
        Ok(Err(e)) => fail(&e),
        Err(payload) => {
            set_last_error(&panic_message(name, payload.as_ref()));
            evg_status::EVG_PANIC
        }
    }
}

/// For the `_free` exports, which return nothing and cannot fail: the last error of the
/// call before is left as it is and stays valid (hosts clean up, then report); a panic
/// while releasing is recorded only when there is none.
pub(crate) fn guard_release(name: &str, body: impl FnOnce()) {
    let mut body = Some(body);
    guard_release_dyn(name, &mut || body.take().into_iter().for_each(|f| f()));
}

/// [`guard_release`] for one type of body, as [`guard_dyn`].
#[inline(never)]
fn guard_release_dyn(name: &str, body: &mut dyn FnMut()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(body)) {
        set_last_error_if_none(&panic_message(name, payload.as_ref()));
    }
}

/// Like [`guard`] for accessors that return a value instead of a status: `fallback`
/// (NULL, 0, false) on error or panic, with the message as the thread's last error.
pub(crate) fn guard_value<T>(name: &str, fallback: T, body: impl FnOnce() -> Result<T>) -> T {
    let mut value = None;
    let status = guard(name, || {
        value = Some(body()?);
        Ok(())
    });
    match (status, value) {
        (evg_status::EVG_OK, Some(v)) => v,
        _ => fallback,
    }
}

fn panic_message(name: &str, payload: &(dyn Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-string panic payload");
    format!("{name}: expected no panic, found one (a bug in evergreen, please report it): {what}")
}

/// Panics inside the boundary with `message`, so that tests of a host can check that a
/// panic comes back as `EVG_PANIC` with the message, and that the library still works
/// afterwards. Only in builds with the `fault-injection` feature; never in a product.
///
/// # Safety
/// `message` is NULL or a NUL-terminated string.
#[cfg(feature = "fault-injection")]
#[no_mangle]
pub unsafe extern "C" fn evg_debug_panic(message: *const std::ffi::c_char) -> evg_status {
    guard("evg_debug_panic", || {
        let message = unsafe { super::handle::arg_str(message, "message")? };
        panic!("{message}");
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, ErrorKind};
    use std::ffi::CStr;

    fn last() -> String {
        let p = super::super::error::evg_last_error_message();
        unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()
    }

    #[test]
    fn a_panic_is_a_status_with_the_message() {
        let status = guard("evg_test", || panic!("boom"));
        assert_eq!(status, evg_status::EVG_PANIC);
        assert!(
            last().contains("evg_test") && last().contains("boom"),
            "{}",
            last()
        );
    }

    /// A panic's message has not been through an `Error`: it comes back on one line too.
    #[test]
    fn a_panics_message_comes_back_on_one_line() {
        let status = guard("evg_test", || panic!("line one\nerror[ok]: \u{1b}[2K"));
        assert_eq!(status, evg_status::EVG_PANIC);
        assert!(
            last().ends_with(r"line one\nerror[ok]: \u{1b}[2K"),
            "{}",
            last()
        );
    }

    #[test]
    fn an_error_is_its_kind_and_success_clears_the_message() {
        let status = guard("evg_test", || {
            Err(Error::new(ErrorKind::Expired, "expected a"))
        });
        assert_eq!(status, evg_status::EVG_EXPIRED);
        assert_eq!(last(), "expected a");
        assert_eq!(guard("evg_test", || Ok(())), evg_status::EVG_OK);
        assert!(super::super::error::evg_last_error_message().is_null());
    }

    #[test]
    fn a_failed_accessor_returns_the_fallback() {
        let v = guard_value("evg_test", 7u64, || Err(Error::config("expected an offer")));
        assert_eq!(v, 7);
        assert_eq!(guard_value("evg_test", 7u64, || Ok(3)), 3);
    }
}
