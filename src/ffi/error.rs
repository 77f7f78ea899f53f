//! Status codes and the per-thread last error message.

use crate::error::{Error, ErrorKind};
use std::cell::RefCell;
use std::ffi::{c_char, CString};

/// The result of every `evg_` function. `EVG_OK` is 0; each error kind has the number of
/// `ErrorKind::code()`; numbers are stable and never reused. `evg_status_name` gives the
/// stable name (the same as the CLI's `error[<name>]`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum evg_status {
    /// Success.
    EVG_OK = 0,
    /// The configuration or an argument is invalid (including NULL and invalid UTF-8).
    EVG_CONFIG = 1,
    /// A local file-system operation failed.
    EVG_IO = 2,
    /// A connection could not be made or broke.
    EVG_NETWORK = 3,
    /// The server did not answer within the configured timeout.
    EVG_TIMEOUT = 4,
    /// The server sent data slower than the configured minimum speed.
    EVG_SLOW_RETRIEVAL = 5,
    /// The server answered with an unexpected HTTP status.
    EVG_HTTP_STATUS = 6,
    /// The requested document or artifact does not exist on the server.
    EVG_NOT_FOUND = 7,
    /// A signature is malformed or does not verify.
    EVG_SIGNATURE = 8,
    /// Fewer distinct trusted keys signed than the threshold requires.
    EVG_THRESHOLD = 9,
    /// Signed metadata has expired.
    EVG_EXPIRED = 10,
    /// Signed metadata is older than what this device has already seen.
    EVG_METADATA_ROLLBACK = 11,
    /// Signed metadata is for another product, channel or document type.
    EVG_WRONG_METADATA = 12,
    /// A document or artifact is larger than allowed or declared.
    EVG_TOO_LARGE = 13,
    /// Downloaded or installed bytes do not have the declared SHA-256.
    EVG_HASH_MISMATCH = 14,
    /// An archive contains an entry that could escape or exhaust the slot.
    EVG_UNSAFE_ARCHIVE = 15,
    /// The requested version is not in the channel.
    EVG_NO_SUCH_VERSION = 16,
    /// The release has nothing for this device's target.
    EVG_INCOMPATIBLE_TARGET = 17,
    /// The release's security version is below the device's anti-rollback floor.
    EVG_SECURITY_FLOOR = 18,
    /// The operation is not valid in the current state.
    EVG_INVALID_STATE = 19,
    /// Reading or writing the boot selector failed.
    EVG_BOOTLOADER = 20,
    /// The operation was cancelled by the host.
    EVG_CANCELLED = 21,
    /// A bug: Rust code panicked. The panic was caught at the boundary; the handle is
    /// still usable but the operation's outcome is unknown. After a panic inside the boot
    /// selector, the calls that use it (startup, activate, confirm, rollback, install,
    /// status, and with image slots download and reinstall, which take the slot out of the
    /// boot order before writing it) return `EVG_BOOTLOADER`: free the updater and make a
    /// new one.
    EVG_PANIC = 100,
}

impl evg_status {
    /// Every status, for the name table and the tests.
    pub(crate) const ALL: [evg_status; 23] = {
        use evg_status::*;
        [
            EVG_OK,
            EVG_CONFIG,
            EVG_IO,
            EVG_NETWORK,
            EVG_TIMEOUT,
            EVG_SLOW_RETRIEVAL,
            EVG_HTTP_STATUS,
            EVG_NOT_FOUND,
            EVG_SIGNATURE,
            EVG_THRESHOLD,
            EVG_EXPIRED,
            EVG_METADATA_ROLLBACK,
            EVG_WRONG_METADATA,
            EVG_TOO_LARGE,
            EVG_HASH_MISMATCH,
            EVG_UNSAFE_ARCHIVE,
            EVG_NO_SUCH_VERSION,
            EVG_INCOMPATIBLE_TARGET,
            EVG_SECURITY_FLOOR,
            EVG_INVALID_STATE,
            EVG_BOOTLOADER,
            EVG_CANCELLED,
            EVG_PANIC,
        ]
    };

    /// The status of an error kind: the same number as `ErrorKind::code()`.
    pub fn from_kind(kind: ErrorKind) -> evg_status {
        evg_status::from_code(kind.code()).unwrap_or(evg_status::EVG_PANIC)
    }

    /// The status with number `code`, if there is one (e.g. a host callback's return).
    pub fn from_code(code: i32) -> Option<evg_status> {
        evg_status::ALL.into_iter().find(|s| *s as i32 == code)
    }

    /// The error kind of this status; `None` for `EVG_OK` and `EVG_PANIC`.
    pub fn kind(self) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.code() == self as i32)
    }

    /// The stable name: `"ok"`, the error kind's name, or `"panic"`.
    pub fn name(self) -> &'static str {
        match (self, self.kind()) {
            (evg_status::EVG_OK, _) => "ok",
            (_, Some(kind)) => kind.as_str(),
            (_, None) => "panic",
        }
    }

    /// The name as a static C string (for `evg_status_name`).
    fn c_name(self) -> &'static std::ffi::CStr {
        // One static NUL-terminated table, so the pointers live for the whole program.
        const NAMES: [&std::ffi::CStr; 23] = [
            c"ok",
            c"config",
            c"io",
            c"network",
            c"timeout",
            c"slow_retrieval",
            c"http_status",
            c"not_found",
            c"signature",
            c"threshold",
            c"expired",
            c"metadata_rollback",
            c"wrong_metadata",
            c"too_large",
            c"hash_mismatch",
            c"unsafe_archive",
            c"no_such_version",
            c"incompatible_target",
            c"security_floor",
            c"invalid_state",
            c"bootloader",
            c"cancelled",
            c"panic",
        ];
        let i = evg_status::ALL
            .iter()
            .position(|s| *s == self)
            .unwrap_or(NAMES.len() - 1);
        NAMES[i]
    }
}

thread_local! {
    /// The message of the last failed `evg_` call on this thread. Per thread so that two
    /// threads never see each other's errors, and no lock is ever needed.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

// A host may call in while its process exits (an `atexit` handler, a C++ static's
// destructor), after this thread's locals are gone: `with` would panic there, in a
// function that cannot unwind, and abort the process. Without the slot there is simply
// no message.

/// Records `message` as this thread's last error, on one line as every `Error`'s is: a
/// panic's message has not been through one.
pub(crate) fn set_last_error(message: &str) {
    let text = super::handle::to_c_string(crate::error::one_line(message).into_owned());
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = Some(text));
}

/// Records `message` unless a message is already there, which a host may still hold.
pub(crate) fn set_last_error_if_none(message: &str) {
    if LAST_ERROR.try_with(|slot| slot.borrow().is_none()) == Ok(true) {
        set_last_error(message);
    }
}

/// Forgets this thread's last error (at the start of every call).
pub(crate) fn clear_last_error() {
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = None);
}

/// Records `err` and returns its status.
pub(crate) fn fail(err: &Error) -> evg_status {
    set_last_error(err.message());
    evg_status::from_kind(err.kind())
}

/// The message of the last failed `evg_` call on the calling thread, or NULL when it
/// succeeded: one line of UTF-8, any control character in it (from a server, a publisher,
/// a file name) shown escaped (`\n`, `\u{1b}`), so it can be logged as it is.
/// Borrowed: valid until the next `evg_` call on this thread; do not free it.
/// The `_free` functions leave it as it is, so a host may clean up, then report.
#[no_mangle]
pub extern "C" fn evg_last_error_message() -> *const c_char {
    LAST_ERROR
        .try_with(|slot| {
            slot.borrow()
                .as_ref()
                .map_or(std::ptr::null(), |m| m.as_ptr())
        })
        .unwrap_or(std::ptr::null())
}

/// The stable name of `status` (`"ok"`, `"hash_mismatch"`, …, `"panic"`) as a static
/// string; a number that is no status gives `"unknown"`. Takes an `int32_t` rather than
/// the enum so that any number a host passes is defined behaviour.
#[no_mangle]
pub extern "C" fn evg_status_name(status: i32) -> *const c_char {
    match evg_status::from_code(status) {
        Some(s) => s.c_name().as_ptr(),
        None => c"unknown".as_ptr(),
    }
}

/// The library's version (`"0.1.0"`), a static string.
#[no_mangle]
pub extern "C" fn evg_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn every_error_kind_has_the_c_status_with_its_number() {
        for kind in ErrorKind::ALL {
            let status = evg_status::from_kind(kind);
            assert_eq!(status as i32, kind.code(), "{kind}");
            assert_eq!(status.kind(), Some(kind));
            assert_eq!(status.name(), kind.as_str());
        }
        assert_eq!(evg_status::EVG_CANCELLED as i32, 21);
        assert_eq!(evg_status::EVG_PANIC as i32, 100);
    }

    #[test]
    fn status_names_are_the_stable_kind_names() {
        for status in evg_status::ALL {
            let name = unsafe { CStr::from_ptr(evg_status_name(status as i32)) };
            assert_eq!(name.to_str().unwrap(), status.name());
        }
        let unknown = unsafe { CStr::from_ptr(evg_status_name(55)) };
        assert_eq!(unknown.to_str().unwrap(), "unknown");
    }

    #[test]
    fn the_last_error_is_per_thread() {
        set_last_error("expected x, found y");
        std::thread::spawn(|| assert!(evg_last_error_message().is_null()))
            .join()
            .unwrap();
        let msg = unsafe { CStr::from_ptr(evg_last_error_message()) };
        assert_eq!(msg.to_str().unwrap(), "expected x, found y");
        clear_last_error();
        assert!(evg_last_error_message().is_null());
    }
}
