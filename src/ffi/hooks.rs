//! Host-supplied parts for firmware: a transport over the device's own network stack and
//! a boot selector over its own bootloader interface, as C callbacks.
//!
//! Both are called only on the thread that called the `evg_` function, synchronously.
//! A non-zero return from a callback is an error: the transport's number is read as an
//! `evg_status` (`EVG_TIMEOUT`, `EVG_NOT_FOUND`, anything else is `EVG_NETWORK`), the
//! selector's is always `EVG_BOOTLOADER`.

use super::callbacks::{evg_event_cb, in_host};
use super::error::evg_status;
use super::handle::evg_slot;
use crate::error::{Error, ErrorKind, Result};
use crate::fetch::{Request, Response, Transport};
use crate::slots::{BootPlan, BootSelector, Slot};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io::Read;
use std::sync::Arc;

/// What the host's `get` reports. Evergreen zeroes it, sets `struct_size` and sets
/// `content_length` to -1 before the call. The strings are copied by Evergreen; they must
/// stay valid until `close` is called for `body` (or until `get` returns when `body` is
/// NULL).
#[repr(C)]
pub struct evg_response {
    /// Set by Evergreen: the size of the struct the library passes. Fields are only ever
    /// added at the end; a host built against a newer header than the library it runs
    /// with writes a field past the first release's only when `EVG_RESPONSE_HAS(out,
    /// field)` says the library's struct holds it.
    pub struct_size: usize,
    /// The HTTP status (200, 206, 304, 404, 416, …), or its equivalent.
    pub status: u16,
    /// The length of this body (not of the whole file), or -1 when unknown.
    pub content_length: i64,
    /// The `ETag` header with its quotes, or NULL.
    pub etag: *const c_char,
    /// The `Content-Range` header of a 206 (`bytes 100-199/200`), or NULL.
    pub content_range: *const c_char,
    /// The `Location` header of a redirect, or NULL.
    pub location: *const c_char,
    /// The host's handle for `read` and `close`; NULL for an empty body.
    pub body: *mut c_void,
    /// The `Retry-After` header of a 503 or 429 (seconds or an HTTP date), or NULL.
    pub retry_after: *const c_char,
    /// The `Date` header: the server's clock, which an HTTP-date `Retry-After` is read
    /// against (without it, the updater's clock). NULL when absent.
    pub date: *const c_char,
}

/// Starts a GET of `url`. `range_from` is -1, or the offset to send as
/// `Range: bytes=<range_from>-`; `if_none_match` is NULL or the entity tag to send as
/// `If-None-Match`. Returns 0 with `*out` filled for any HTTP answer (a 404 or 503 is an
/// answer, not an error), or an `evg_status` number when no answer came; a `get` that
/// fails releases whatever body it made itself (`*out` is not read then).
pub type evg_transport_get_fn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        url: *const c_char,
        range_from: i64,
        if_none_match: *const c_char,
        out: *mut evg_response,
    ) -> c_int,
>;

/// Reads at most `len` bytes of `body` into `buf` and stores the count in `*n` (0 at the
/// end of the body). Returns 0, or an `evg_status` number (`EVG_TIMEOUT` for an idle
/// timeout, anything else is a network error).
pub type evg_transport_read_fn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        body: *mut c_void,
        buf: *mut u8,
        len: usize,
        n: *mut usize,
    ) -> c_int,
>;

/// Releases `body`; called exactly once for every non-NULL body a `get` that returned 0
/// handed out, read to the end or not.
pub type evg_transport_close_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, body: *mut c_void)>;

/// A transport implemented by the host (e.g. over its own HTTP stack). All three
/// callbacks are required.
#[repr(C)]
pub struct evg_transport {
    /// `sizeof(evg_transport)`, so that later versions can add fields.
    pub struct_size: usize,
    /// Passed back to every callback.
    pub user: *mut c_void,
    /// Starts a request.
    pub get: evg_transport_get_fn,
    /// Reads a response body.
    pub read: evg_transport_read_fn,
    /// Releases a response body.
    pub close: evg_transport_close_fn,
}

/// Marks `slot` unbootable before anything is written into it. Returns 0 or non-zero.
pub type evg_selector_slot_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, slot: evg_slot) -> c_int>;
/// Makes `slot` the next to boot, on trial with `tries` attempts. Returns 0 or non-zero.
pub type evg_selector_activate_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, slot: evg_slot, tries: u32) -> c_int>;
/// Boot `good` from now on and never `bad` again. Returns 0 or non-zero.
pub type evg_selector_fall_back_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, good: evg_slot, bad: evg_slot) -> c_int>;
/// Stores the running slot in `*out` (`EVG_SLOT_NONE` when unknown). Returns 0 or non-zero.
pub type evg_selector_booted_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, out: *mut evg_slot) -> c_int>;

/// What the bootloader will do at the next boot, as a host selector that counts tries
/// reads it from its environment (see `evg_selector.boot_plan`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct evg_boot_plan {
    /// The slot the environment prefers: the first of its boot order.
    pub preferred: evg_slot,
    /// The slot the bootloader starts next; `EVG_SLOT_NONE` for its rescue path.
    pub next: evg_slot,
    /// True when the bootloader has spent the preferred slot's attempts.
    pub preferred_spent: bool,
    /// Starts the bootloader still gives the preferred slot.
    pub preferred_left: u32,
}

/// Fills `*out` with the bootloader's plan for the next boot. Returns 0 or non-zero.
pub type evg_selector_boot_plan_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, out: *mut evg_boot_plan) -> c_int>;

/// A boot selector implemented by the host, for `"selector": {"kind": "custom"}` image
/// slots or in place of the `current` symlink of dir slots. All callbacks are required.
/// They must not call the updater that runs them: such a call is `EVG_INVALID_STATE`.
#[repr(C)]
pub struct evg_selector {
    /// `sizeof(evg_selector)`, so that later versions can add fields.
    pub struct_size: usize,
    /// Passed back to every callback.
    pub user: *mut c_void,
    /// Marks a slot unbootable. May be called for a slot already unbootable (with
    /// `counts_tries`, on every startup step while the other slot holds nothing to boot,
    /// and right after `fall_back` for the slot it left): write nothing then (each write
    /// is flash wear and a power-fail window).
    pub disable: evg_selector_slot_fn,
    /// Starts a trial of a slot.
    pub activate: evg_selector_activate_fn,
    /// The trial slot is healthy: keep booting it. May be called for a slot already
    /// confirmed: write nothing then.
    pub confirm: evg_selector_slot_fn,
    /// Rolls back.
    pub fall_back: evg_selector_fall_back_fn,
    /// Reports the running slot.
    pub booted: evg_selector_booted_fn,
    /// Non-zero when the bootloader counts trial attempts itself; the startup step then
    /// only reads what the bootloader did (through `booted`, and `boot_plan` when given).
    pub counts_tries: c_int,
    /// Optional (NULL: unknown), for a selector that counts tries: what the bootloader
    /// will do at the next boot. With it the startup step tells a trial the bootloader
    /// gave up on from one it was never told about (a power cut between the state and the
    /// environment), and the trial's starts left are the bootloader's count. Added after
    /// the first release: a `struct_size` that ends before this field is accepted and
    /// reads as NULL.
    pub boot_plan: evg_selector_boot_plan_fn,
}

/// Optional parts for `evg_updater_new_with_hooks`. Zero it, set `struct_size`, fill in
/// what you need; NULL members mean "the built-in one". Evergreen copies the structs, but
/// the `user` pointers must stay valid until the updater is released (when
/// `evg_updater_free` returns, or, freed during a call, when that call returns).
#[repr(C)]
pub struct evg_hooks {
    /// `sizeof(evg_hooks)`, so that later versions can add fields.
    pub struct_size: usize,
    /// A host transport for every request, or NULL for HTTP(S) and files.
    pub transport: *const evg_transport,
    /// A host boot selector, or NULL for the one in the config.
    pub selector: *const evg_selector,
    /// An event callback from the start (as with `evg_set_event_callback`), or NULL.
    pub on_event: evg_event_cb,
    /// Passed back to `on_event`.
    pub event_user: *mut c_void,
}

/// Refuses a struct older (smaller) than this library's: its missing fields would be
/// read past its end.
///
/// # Safety
/// `ptr` points to a struct whose first field is a `size_t` set by the host.
pub(crate) unsafe fn check_size<T>(ptr: *const T, name: &str) -> Result<()> {
    let given = unsafe { ptr.cast::<usize>().read() };
    let expected = std::mem::size_of::<T>();
    if given < expected {
        return Err(Error::config(format!(
            "{name}.struct_size: expected sizeof({name}) = {expected}, found {given}"
        )));
    }
    Ok(())
}

fn required<F>(f: Option<F>, name: &str) -> Result<F> {
    f.ok_or_else(|| Error::config(format!("{name}: expected a callback, found NULL")))
}

/// The host's transport callbacks, checked to be non-NULL.
struct TransportFns {
    user: *mut c_void,
    get: unsafe extern "C" fn(
        *mut c_void,
        *const c_char,
        i64,
        *const c_char,
        *mut evg_response,
    ) -> c_int,
    read: unsafe extern "C" fn(*mut c_void, *mut c_void, *mut u8, usize, *mut usize) -> c_int,
    close: unsafe extern "C" fn(*mut c_void, *mut c_void),
}

// The host promises (docs/c-abi.md) that its callbacks may run with `user` on any thread
// it calls Evergreen from; Evergreen calls them only on such threads.
unsafe impl Send for TransportFns {}
unsafe impl Sync for TransportFns {}

/// A [`Transport`] that calls the host's `evg_transport`.
pub(crate) struct CTransport(Arc<TransportFns>);

impl CTransport {
    /// Checks and copies `t`.
    ///
    /// # Safety
    /// `t` points to a live `evg_transport`.
    pub(crate) unsafe fn new(t: *const evg_transport) -> Result<CTransport> {
        unsafe { check_size(t, "evg_transport")? };
        let t = unsafe { &*t };
        Ok(CTransport(Arc::new(TransportFns {
            user: t.user,
            get: required(t.get, "evg_transport.get")?,
            read: required(t.read, "evg_transport.read")?,
            close: required(t.close, "evg_transport.close")?,
        })))
    }
}

/// The error for a non-zero return `rc` of a transport callback.
fn transport_error(what: &str, rc: c_int) -> Error {
    let kind = match evg_status::from_code(rc).and_then(evg_status::kind) {
        Some(k @ (ErrorKind::Timeout | ErrorKind::NotFound)) => k,
        _ => ErrorKind::Network,
    };
    Error::new(
        kind,
        format!(
            "host transport {what}: expected 0, found {rc} ({})",
            evg_status::from_code(rc).map_or("unknown", evg_status::name)
        ),
    )
}

/// A header string the host set, copied; invalid UTF-8 is the host's error.
fn header(ptr: *const c_char, name: &str, url: &str) -> Result<Option<String>> {
    if ptr.is_null() {
        return Ok(None);
    }
    let text = unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|_| {
        Error::new(
            ErrorKind::Network,
            format!("host transport get {url}: expected UTF-8 in {name}, found invalid bytes"),
        )
    })?;
    Ok(Some(text.to_string()))
}

impl Transport for CTransport {
    fn get(&self, url: &str, req: &Request) -> Result<Response> {
        let c_url =
            CString::new(url).map_err(|_| Error::config(format!("URL {url:?} holds a NUL")))?;
        let etag = req
            .if_none_match
            .as_deref()
            .map(CString::new)
            .transpose()
            .map_err(|_| Error::config("an entity tag holds a NUL"))?;
        let range_from = req
            .range_from
            .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let mut out = evg_response {
            struct_size: std::mem::size_of::<evg_response>(),
            status: 0,
            content_length: -1,
            etag: std::ptr::null(),
            content_range: std::ptr::null(),
            location: std::ptr::null(),
            body: std::ptr::null_mut(),
            retry_after: std::ptr::null(),
            date: std::ptr::null(),
        };
        let f = &self.0;
        let etag_ptr = etag.as_ref().map_or(std::ptr::null(), |e| e.as_ptr());
        let rc =
            in_host(|| unsafe { (f.get)(f.user, c_url.as_ptr(), range_from, etag_ptr, &mut out) });
        if rc != 0 {
            return Err(transport_error(&format!("get {url}"), rc));
        }
        // Owned before anything can fail, so the host's body is always closed.
        let body = CBody {
            fns: Arc::clone(&self.0),
            body: out.body,
        };
        if !(100..=599).contains(&out.status) {
            return Err(Error::new(
                ErrorKind::Network,
                format!(
                    "host transport get {url}: expected an HTTP status 100-599, found {}",
                    out.status
                ),
            ));
        }
        Ok(Response {
            status: out.status,
            etag: header(out.etag, "etag", url)?,
            content_length: u64::try_from(out.content_length).ok(),
            content_range: header(out.content_range, "content_range", url)?,
            location: header(out.location, "location", url)?,
            // A host transport that follows redirects itself has no way to say so here.
            final_url: None,
            content_encoding: None,
            retry_after: header(out.retry_after, "retry_after", url)?,
            // Every answer carries a `Date`, and only a `Retry-After` date is read against
            // it: one that is not text is ignored, as the HTTP transport ignores it, rather
            // than failing a good answer.
            date: header(out.date, "date", url).ok().flatten(),
            body: Box::new(body),
        })
    }
}

/// A response body owned by the host, closed on drop.
struct CBody {
    fns: Arc<TransportFns>,
    body: *mut c_void,
}

// Only moved between the threads of one call (the fetcher reads on the calling thread).
unsafe impl Send for CBody {}

impl Read for CBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.body.is_null() || buf.is_empty() {
            return Ok(0);
        }
        let mut n = 0usize;
        let f = &self.fns;
        let rc =
            in_host(|| unsafe { (f.read)(f.user, self.body, buf.as_mut_ptr(), buf.len(), &mut n) });
        if rc != 0 {
            let kind = if rc == evg_status::EVG_TIMEOUT as c_int {
                std::io::ErrorKind::TimedOut
            } else {
                std::io::ErrorKind::Other
            };
            return Err(std::io::Error::new(
                kind,
                transport_error("read", rc).message().to_string(),
            ));
        }
        if n > buf.len() {
            return Err(std::io::Error::other(format!(
                "host transport read: expected at most {} bytes, found {n} claimed",
                buf.len()
            )));
        }
        Ok(n)
    }
}

impl Drop for CBody {
    fn drop(&mut self) {
        if !self.body.is_null() {
            in_host(|| unsafe { (self.fns.close)(self.fns.user, self.body) });
        }
    }
}

/// A [`BootSelector`] that calls the host's `evg_selector`.
pub(crate) struct CSelector {
    user: *mut c_void,
    disable: unsafe extern "C" fn(*mut c_void, evg_slot) -> c_int,
    activate: unsafe extern "C" fn(*mut c_void, evg_slot, u32) -> c_int,
    confirm: unsafe extern "C" fn(*mut c_void, evg_slot) -> c_int,
    fall_back: unsafe extern "C" fn(*mut c_void, evg_slot, evg_slot) -> c_int,
    booted: unsafe extern "C" fn(*mut c_void, *mut evg_slot) -> c_int,
    counts_tries: bool,
    boot_plan: evg_selector_boot_plan_fn,
}

// As for the transport: the host's callbacks run only on threads that called Evergreen.
unsafe impl Send for CSelector {}

impl CSelector {
    /// Checks and copies `s`. A struct of the first release (it ends before
    /// `boot_plan`) is accepted; its fields are read one by one, never past
    /// `struct_size`.
    ///
    /// # Safety
    /// `s` points to a live `evg_selector` of at least its `struct_size` bytes.
    pub(crate) unsafe fn new(s: *const evg_selector) -> Result<CSelector> {
        let given = unsafe { s.cast::<usize>().read() };
        let first_release = std::mem::offset_of!(evg_selector, boot_plan);
        if given < first_release {
            return Err(Error::config(format!(
                "evg_selector.struct_size: expected sizeof(evg_selector) = {}, found {given}",
                std::mem::size_of::<evg_selector>()
            )));
        }
        // Raw reads: a reference would claim the whole struct, which an older host's
        // smaller one is not.
        let (user, disable, activate, confirm, fall_back, booted, counts_tries) = unsafe {
            (
                std::ptr::addr_of!((*s).user).read(),
                std::ptr::addr_of!((*s).disable).read(),
                std::ptr::addr_of!((*s).activate).read(),
                std::ptr::addr_of!((*s).confirm).read(),
                std::ptr::addr_of!((*s).fall_back).read(),
                std::ptr::addr_of!((*s).booted).read(),
                std::ptr::addr_of!((*s).counts_tries).read(),
            )
        };
        let boot_plan = if given >= std::mem::size_of::<evg_selector>() {
            unsafe { std::ptr::addr_of!((*s).boot_plan).read() }
        } else {
            None
        };
        Ok(CSelector {
            user,
            disable: required(disable, "evg_selector.disable")?,
            activate: required(activate, "evg_selector.activate")?,
            confirm: required(confirm, "evg_selector.confirm")?,
            fall_back: required(fall_back, "evg_selector.fall_back")?,
            booted: required(booted, "evg_selector.booted")?,
            counts_tries: counts_tries != 0,
            boot_plan,
        })
    }
}

/// A slot number the host wrote, checked: only a valid one may become a `Slot`.
fn host_slot(raw: i32, what: &str) -> Result<Option<Slot>> {
    match raw {
        -1 => Ok(None),
        0 => Ok(Some(Slot::A)),
        1 => Ok(Some(Slot::B)),
        n => Err(Error::new(
            ErrorKind::Bootloader,
            format!("host boot selector {what}: expected EVG_SLOT_NONE, EVG_SLOT_A or EVG_SLOT_B, found {n}"),
        )),
    }
}

/// The error for a non-zero return of a selector callback.
fn selector_result(what: std::fmt::Arguments<'_>, rc: c_int) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Bootloader,
        format!("host boot selector {what}: expected 0, found {rc}"),
    ))
}

impl BootSelector for CSelector {
    fn disable(&mut self, slot: Slot) -> Result<()> {
        let rc = in_host(|| unsafe { (self.disable)(self.user, slot.into()) });
        selector_result(format_args!("disable({slot})"), rc)
    }

    fn activate(&mut self, slot: Slot, tries: u32) -> Result<()> {
        let rc = in_host(|| unsafe { (self.activate)(self.user, slot.into(), tries) });
        selector_result(format_args!("activate({slot}, {tries})"), rc)
    }

    fn confirm(&mut self, slot: Slot) -> Result<()> {
        let rc = in_host(|| unsafe { (self.confirm)(self.user, slot.into()) });
        selector_result(format_args!("confirm({slot})"), rc)
    }

    fn fall_back(&mut self, good: Slot, bad: Slot) -> Result<()> {
        let rc = in_host(|| unsafe { (self.fall_back)(self.user, good.into(), bad.into()) });
        selector_result(format_args!("fall_back({good}, {bad})"), rc)
    }

    fn booted(&self) -> Result<Option<Slot>> {
        // Read back as a plain integer: the host may store any number, and only a valid
        // one may become an `evg_slot` (or `Slot`) in Rust.
        let mut raw: i32 = evg_slot::EVG_SLOT_NONE as i32;
        let rc = in_host(|| unsafe { (self.booted)(self.user, (&mut raw as *mut i32).cast()) });
        selector_result(format_args!("booted()"), rc)?;
        host_slot(raw, "booted()")
    }

    fn boot_plan(&self) -> Result<Option<BootPlan>> {
        let Some(f) = self.boot_plan else {
            return Ok(None);
        };
        // The same plain-integer view as in `booted`, for the slots and the flag.
        #[repr(C)]
        struct Raw {
            preferred: i32,
            next: i32,
            preferred_spent: u8,
            preferred_left: u32,
        }
        const _: () = assert!(std::mem::size_of::<Raw>() == std::mem::size_of::<evg_boot_plan>());
        let mut raw = Raw {
            preferred: -1,
            next: -1,
            preferred_spent: 0,
            preferred_left: 0,
        };
        let rc = in_host(|| unsafe { f(self.user, (&mut raw as *mut Raw).cast()) });
        selector_result(format_args!("boot_plan()"), rc)?;
        let Some(preferred) = host_slot(raw.preferred, "boot_plan().preferred")? else {
            return Err(Error::new(
                ErrorKind::Bootloader,
                "host boot selector boot_plan().preferred: expected EVG_SLOT_A or EVG_SLOT_B, found EVG_SLOT_NONE",
            ));
        };
        Ok(Some(BootPlan {
            preferred,
            next: host_slot(raw.next, "boot_plan().next")?,
            preferred_spent: raw.preferred_spent != 0,
            preferred_left: raw.preferred_left,
        }))
    }

    fn counts_tries(&self) -> bool {
        self.counts_tries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn slot_ok(_: *mut c_void, _: evg_slot) -> c_int {
        0
    }
    unsafe extern "C" fn activate_ok(_: *mut c_void, _: evg_slot, _: u32) -> c_int {
        0
    }
    unsafe extern "C" fn fall_back_ok(_: *mut c_void, _: evg_slot, _: evg_slot) -> c_int {
        0
    }
    unsafe extern "C" fn booted_b(_: *mut c_void, out: *mut evg_slot) -> c_int {
        unsafe { out.write(evg_slot::EVG_SLOT_B) };
        0
    }
    /// B next, one start left; `preferred` is the number in the `Cell` that `user` points
    /// to, written as a C host may write any number.
    unsafe extern "C" fn plan_b(user: *mut c_void, out: *mut evg_boot_plan) -> c_int {
        let preferred = unsafe { (*user.cast::<std::cell::Cell<i32>>()).get() };
        unsafe {
            std::ptr::addr_of_mut!((*out).preferred)
                .cast::<i32>()
                .write(preferred);
            std::ptr::addr_of_mut!((*out).next).write(evg_slot::EVG_SLOT_B);
            std::ptr::addr_of_mut!((*out).preferred_spent).write(false);
            std::ptr::addr_of_mut!((*out).preferred_left).write(1);
        }
        0
    }

    fn selector(user: *mut c_void) -> evg_selector {
        evg_selector {
            struct_size: std::mem::size_of::<evg_selector>(),
            user,
            disable: Some(slot_ok),
            activate: Some(activate_ok),
            confirm: Some(slot_ok),
            fall_back: Some(fall_back_ok),
            booted: Some(booted_b),
            counts_tries: 1,
            boot_plan: Some(plan_b),
        }
    }

    /// Each hook answers 0 only when called as a call into the host (see
    /// `callbacks::in_host`), so that a free from inside it does not wait.
    unsafe extern "C" fn counted_slot(_: *mut c_void, _: evg_slot) -> c_int {
        c_int::from(!super::super::callbacks::inside_host())
    }
    unsafe extern "C" fn counted_activate(_: *mut c_void, _: evg_slot, _: u32) -> c_int {
        c_int::from(!super::super::callbacks::inside_host())
    }
    unsafe extern "C" fn counted_fall_back(_: *mut c_void, _: evg_slot, _: evg_slot) -> c_int {
        c_int::from(!super::super::callbacks::inside_host())
    }
    unsafe extern "C" fn counted_booted(_: *mut c_void, out: *mut evg_slot) -> c_int {
        unsafe { out.write(evg_slot::EVG_SLOT_A) };
        c_int::from(!super::super::callbacks::inside_host())
    }
    unsafe extern "C" fn counted_plan(user: *mut c_void, out: *mut evg_boot_plan) -> c_int {
        unsafe { plan_b(user, out) };
        c_int::from(!super::super::callbacks::inside_host())
    }
    unsafe extern "C" fn counted_get(
        user: *mut c_void,
        _: *const c_char,
        _: i64,
        _: *const c_char,
        out: *mut evg_response,
    ) -> c_int {
        unsafe {
            (*out).status = 200;
            (*out).content_length = 0;
            (*out).body = user;
        }
        c_int::from(!super::super::callbacks::inside_host())
    }
    unsafe extern "C" fn counted_read(
        _: *mut c_void,
        _: *mut c_void,
        _: *mut u8,
        _: usize,
        n: *mut usize,
    ) -> c_int {
        unsafe { n.write(0) };
        c_int::from(!super::super::callbacks::inside_host())
    }
    unsafe extern "C" fn counted_close(user: *mut c_void, _: *mut c_void) {
        let closed = unsafe { &*user.cast::<std::cell::Cell<bool>>() };
        closed.set(super::super::callbacks::inside_host());
    }

    /// A free made from inside a hook must not wait for callbacks on other threads: a
    /// selector hook runs under the updater's selector lock, which such a callback may be
    /// waiting for. So every hook runs counted as a call into the host, as event and
    /// progress callbacks do.
    #[test]
    fn every_hook_runs_as_a_call_into_the_host() {
        let preferred = std::cell::Cell::new(1i32);
        let mut s = selector(std::ptr::from_ref(&preferred).cast_mut().cast());
        s.disable = Some(counted_slot);
        s.confirm = Some(counted_slot);
        s.activate = Some(counted_activate);
        s.fall_back = Some(counted_fall_back);
        s.booted = Some(counted_booted);
        s.boot_plan = Some(counted_plan);
        let mut c = unsafe { CSelector::new(&s) }.unwrap();
        c.disable(Slot::B).unwrap();
        c.activate(Slot::B, 3).unwrap();
        c.confirm(Slot::B).unwrap();
        c.fall_back(Slot::A, Slot::B).unwrap();
        assert_eq!(c.booted().unwrap(), Some(Slot::A));
        assert!(c.boot_plan().unwrap().is_some());

        let closed = std::cell::Cell::new(false);
        let t = evg_transport {
            struct_size: std::mem::size_of::<evg_transport>(),
            user: std::ptr::from_ref(&closed).cast_mut().cast(),
            get: Some(counted_get),
            read: Some(counted_read),
            close: Some(counted_close),
        };
        let transport = unsafe { CTransport::new(&t) }.unwrap();
        let mut response = transport.get("vendor://x", &Request::default()).unwrap();
        assert_eq!(response.body.read(&mut [0; 8]).unwrap(), 0);
        drop(response);
        assert!(closed.get(), "close ran outside a call into the host");
        assert!(!super::super::callbacks::inside_host());
    }

    unsafe extern "C" fn get_with_bad_date(
        _: *mut c_void,
        _: *const c_char,
        _: i64,
        _: *const c_char,
        out: *mut evg_response,
    ) -> c_int {
        if unsafe { (*out).struct_size } != std::mem::size_of::<evg_response>() {
            return 1;
        }
        unsafe {
            (*out).status = 200;
            (*out).content_length = 0;
            (*out).date = c"Thu, 03 Dec 2026 \xff GMT".as_ptr();
            (*out).etag = c"\"v1\"".as_ptr();
        }
        0
    }

    #[test]
    fn a_date_that_is_not_text_is_ignored_and_the_answer_kept() {
        let t = evg_transport {
            struct_size: std::mem::size_of::<evg_transport>(),
            user: std::ptr::null_mut(),
            get: Some(get_with_bad_date),
            read: Some(counted_read),
            close: Some(counted_close_nothing),
        };
        let transport = unsafe { CTransport::new(&t) }.unwrap();
        let response = transport.get("vendor://x", &Request::default()).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.date, None);
        assert_eq!(response.etag.as_deref(), Some("\"v1\""));
    }

    unsafe extern "C" fn counted_close_nothing(_: *mut c_void, _: *mut c_void) {}

    #[test]
    fn the_boot_plan_of_a_host_selector_is_read_and_checked() {
        let preferred = std::cell::Cell::new(1i32);
        let s = selector(std::ptr::from_ref(&preferred).cast_mut().cast());
        let c = unsafe { CSelector::new(&s) }.unwrap();
        let plan = BootPlan {
            preferred: Slot::B,
            next: Some(Slot::B),
            preferred_spent: false,
            preferred_left: 1,
        };
        assert_eq!(c.boot_plan().unwrap(), Some(plan));
        preferred.set(7);
        let e = c.boot_plan().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Bootloader);
        assert!(e.message().contains("found 7"), "{e}");
        preferred.set(-1);
        assert!(c
            .boot_plan()
            .unwrap_err()
            .message()
            .contains("EVG_SLOT_NONE"));
    }

    #[test]
    fn a_selector_of_the_first_release_is_accepted_without_a_boot_plan() {
        let preferred = std::cell::Cell::new(1i32);
        let mut s = selector(std::ptr::from_ref(&preferred).cast_mut().cast());
        // What a host built against the first header passes: no `boot_plan` field. The
        // field is set here, but past `struct_size`, so it must not be read.
        s.struct_size = std::mem::offset_of!(evg_selector, boot_plan);
        let c = unsafe { CSelector::new(&s) }.unwrap();
        assert_eq!(c.boot_plan().unwrap(), None);
        assert_eq!(c.booted().unwrap(), Some(Slot::B));
        s.struct_size -= 1;
        let e = unsafe { CSelector::new(&s) }.err().unwrap();
        assert!(e.message().contains("struct_size"), "{e}");
        s.struct_size += 1;
        s.boot_plan = None;
        s.struct_size = std::mem::size_of::<evg_selector>();
        assert_eq!(
            unsafe { CSelector::new(&s) }.unwrap().boot_plan().unwrap(),
            None
        );
    }
}
