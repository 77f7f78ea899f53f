//! Turning C arguments into Rust values (NULL and invalid UTF-8 become `EVG_CONFIG`
//! errors naming the argument) and Rust strings into C strings the host owns.

use crate::error::{Error, Result};
use std::ffi::{c_char, CStr, CString};

/// Checks that the out-param `ptr` is not NULL, so it can be written on success.
pub(crate) fn out_arg<T>(ptr: *mut T, name: &str) -> Result<*mut T> {
    if ptr.is_null() {
        Err(null_argument(name))
    } else {
        Ok(ptr)
    }
}

/// Writes a result into an out-param `out_arg` accepted; only on success, so a failed
/// call leaves what the caller put there.
pub(crate) fn write_out<T>(out: *mut T, value: T) {
    // `out_arg` refused NULL; the caller promised a writable `T` behind it.
    unsafe { out.write(value) };
}

/// The NUL-terminated UTF-8 string at `ptr`; NULL and invalid UTF-8 are config errors.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that lives for the returned lifetime.
pub(crate) unsafe fn arg_str<'a>(ptr: *const c_char, name: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(null_argument(name));
    }
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    std::str::from_utf8(bytes).map_err(|e| {
        Error::config(format!(
            "argument {name}: expected UTF-8 text, found an invalid byte at offset {}",
            e.valid_up_to()
        ))
    })
}

/// Like [`arg_str`], but NULL means "not given".
///
/// # Safety
/// As for [`arg_str`].
pub(crate) unsafe fn opt_str<'a>(ptr: *const c_char, name: &str) -> Result<Option<&'a str>> {
    if ptr.is_null() {
        Ok(None)
    } else {
        unsafe { arg_str(ptr, name) }.map(Some)
    }
}

/// The error for a required pointer argument `name` that is NULL.
pub(crate) fn null_argument(name: &str) -> Error {
    Error::config(format!("argument {name}: expected a pointer, found NULL"))
}

/// A semver version given by the host.
pub(crate) fn parse_version(text: &str, name: &str) -> Result<semver::Version> {
    semver::Version::parse(text).map_err(|e| {
        Error::config(format!(
            "argument {name}: expected a semver version like 1.2.3, found {text:?} ({e})"
        ))
    })
}

/// `text` as a C string for the host to free with `evg_string_free`.
pub(crate) fn into_c_string(text: String) -> *mut c_char {
    to_c_string(text).into_raw()
}

/// `text` as an owned C string; an interior NUL (which no JSON or version contains, but
/// signed notes or a message may) is shown as `\0` rather than cutting the string short.
/// Nothing else is escaped.
pub(crate) fn to_c_string(text: String) -> CString {
    CString::new(text).unwrap_or_else(|e| {
        let text = String::from_utf8_lossy(&e.into_vec()).replace('\0', "\\0");
        CString::new(text).unwrap_or_default()
    })
}

/// Frees a string returned by an `evg_` function (`evg_offer_json`, `evg_status_json`).
/// NULL is fine. Never pass a borrowed string (accessors, `evg_last_error_message`).
/// Read the string but do not write into it: its length when freed must be the one it
/// was returned with (no `strtok`; copy it first).
///
/// # Safety
/// `s` is NULL or a string returned to the caller by Evergreen that was not freed yet
/// and not written into.
#[no_mangle]
pub unsafe extern "C" fn evg_string_free(s: *mut c_char) {
    if !s.is_null() {
        // Dropping a CString cannot panic, so there is nothing to catch here.
        drop(unsafe { CString::from_raw(s) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn null_and_bad_utf8_are_config_errors_naming_the_argument() {
        let e = unsafe { arg_str(std::ptr::null(), "config_json") }.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains("config_json"), "{e}");
        let bad = b"ab\xffc\0";
        let e = unsafe { arg_str(bad.as_ptr().cast(), "channel") }.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains("offset 2"), "{e}");
        assert_eq!(unsafe { opt_str(std::ptr::null(), "x") }.unwrap(), None);
    }

    #[test]
    fn strings_round_trip_through_c() {
        let p = into_c_string("{\"a\":1}".to_string());
        assert_eq!(unsafe { CStr::from_ptr(p) }.to_str().unwrap(), "{\"a\":1}");
        unsafe { evg_string_free(p) };
        unsafe { evg_string_free(std::ptr::null_mut()) };
        assert_eq!(to_c_string("a\0b".into()).to_str().unwrap(), "a\\0b");
        // Only the NUL: quotes, backslashes and other languages' letters pass as they are.
        let notes = to_c_string("Größe \"fix\" C:\\x\0".into());
        assert_eq!(notes.to_str().unwrap(), "Größe \"fix\" C:\\x\\0");
    }
}

/// One of the two slots, or none.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum evg_slot {
    /// No slot (e.g. no trial running, or the running slot is unknown).
    EVG_SLOT_NONE = -1,
    /// Slot `a`.
    EVG_SLOT_A = 0,
    /// Slot `b`.
    EVG_SLOT_B = 1,
}

impl From<crate::slots::Slot> for evg_slot {
    fn from(slot: crate::slots::Slot) -> evg_slot {
        match slot {
            crate::slots::Slot::A => evg_slot::EVG_SLOT_A,
            crate::slots::Slot::B => evg_slot::EVG_SLOT_B,
        }
    }
}

impl From<Option<crate::slots::Slot>> for evg_slot {
    fn from(slot: Option<crate::slots::Slot>) -> evg_slot {
        slot.map_or(evg_slot::EVG_SLOT_NONE, evg_slot::from)
    }
}
