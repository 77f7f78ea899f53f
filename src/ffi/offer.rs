//! `evg_offer`: a release offered by a check, with its component diff. Accessors return
//! strings borrowed from the offer (valid until `evg_offer_free`), so a C host never has
//! to free what it only reads.

use super::error::evg_status;
use super::handle::{into_c_string, out_arg, to_c_string, write_out};
use super::lease::{free, lease, Calls, Leased};
use super::panic::{guard, guard_value};
use crate::error::Error;
use crate::stage::ComponentOp;
use crate::Offer;
use std::ffi::{c_char, CString};

/// A release offered to this device. Created by `evg_check`/`evg_check_version`; the
/// caller owns it and frees it with `evg_offer_free`.
pub struct evg_offer {
    pub(crate) offer: Offer,
    version: CString,
    current: Option<CString>,
    channel: CString,
    notes: CString,
    components: Vec<ComponentStrings>,
    calls: Calls,
}

impl Leased for evg_offer {
    const NAME: &'static str = "offer";

    fn calls(&self) -> &Calls {
        &self.calls
    }
}

/// The C strings of one component, made once so that accessors can lend them.
struct ComponentStrings {
    name: CString,
    from: Option<CString>,
    to: Option<CString>,
}

impl evg_offer {
    /// Wraps `offer`, making the C strings the accessors lend.
    pub(crate) fn new(offer: Offer) -> evg_offer {
        let opt = |s: Option<String>| s.map(to_c_string);
        evg_offer {
            version: to_c_string(offer.version.to_string()),
            current: opt(offer.current.as_ref().map(ToString::to_string)),
            channel: to_c_string(offer.channel.clone()),
            notes: to_c_string(offer.notes.clone()),
            components: offer
                .components
                .iter()
                .map(|c| ComponentStrings {
                    name: to_c_string(c.name.clone()),
                    from: opt(c.from.clone()),
                    to: opt(c.to.clone()),
                })
                .collect(),
            offer,
            calls: Calls::default(),
        }
    }
}

/// What an update does to a component.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum evg_component_op {
    /// New in this release: installed from its artifact.
    EVG_COMPONENT_ADDED = 0,
    /// Gone from this release.
    EVG_COMPONENT_REMOVED = 1,
    /// A different artifact: installed from it.
    EVG_COMPONENT_MODIFIED = 2,
    /// The same artifact, nothing downloaded: installed from the download kept since it
    /// was installed (dir slots); downloaded again where none is kept (image slots, a
    /// download removed).
    EVG_COMPONENT_UNCHANGED = 3,
}

impl From<ComponentOp> for evg_component_op {
    fn from(op: ComponentOp) -> evg_component_op {
        match op {
            ComponentOp::Added => evg_component_op::EVG_COMPONENT_ADDED,
            ComponentOp::Removed => evg_component_op::EVG_COMPONENT_REMOVED,
            ComponentOp::Modified => evg_component_op::EVG_COMPONENT_MODIFIED,
            ComponentOp::Unchanged => evg_component_op::EVG_COMPONENT_UNCHANGED,
        }
    }
}

/// One line of an offer's component diff. The strings are borrowed from the offer and
/// valid until `evg_offer_free`.
#[repr(C)]
pub struct evg_component {
    /// Component name (its directory in the slot).
    pub name: *const c_char,
    /// What happens to it.
    pub op: evg_component_op,
    /// The installed version, or NULL when the component is added.
    pub from: *const c_char,
    /// The offered version, or NULL when the component is removed.
    pub to: *const c_char,
}

fn opt_ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

/// Reads a field of `offer` for an accessor that returns it, with `fallback` when `offer`
/// is NULL (the thread's last error then names the argument).
///
/// # Safety
/// `offer` is NULL or a live offer.
unsafe fn read<T>(
    name: &str,
    offer: *const evg_offer,
    fallback: T,
    f: impl FnOnce(&evg_offer) -> T,
) -> T {
    guard_value(name, fallback, || {
        Ok(f(&*unsafe { lease(offer, "offer")? }))
    })
}

/// The offered version, e.g. `"1.4.2"`; NULL when `offer` is NULL. Borrowed from `offer`.
///
/// # Safety
/// `offer` is NULL or a live offer.
#[no_mangle]
pub unsafe extern "C" fn evg_offer_version(offer: *const evg_offer) -> *const c_char {
    unsafe {
        read("evg_offer_version", offer, std::ptr::null(), |o| {
            o.version.as_ptr()
        })
    }
}

/// The installed version, or NULL when none is known (or `offer` is NULL). Borrowed.
///
/// # Safety
/// `offer` is NULL or a live offer.
#[no_mangle]
pub unsafe extern "C" fn evg_offer_current(offer: *const evg_offer) -> *const c_char {
    unsafe {
        read("evg_offer_current", offer, std::ptr::null(), |o| {
            opt_ptr(&o.current)
        })
    }
}

/// The channel the release comes from; NULL when `offer` is NULL. Borrowed.
///
/// # Safety
/// `offer` is NULL or a live offer.
#[no_mangle]
pub unsafe extern "C" fn evg_offer_channel(offer: *const evg_offer) -> *const c_char {
    unsafe {
        read("evg_offer_channel", offer, std::ptr::null(), |o| {
            o.channel.as_ptr()
        })
    }
}

/// The release notes (possibly empty); NULL when `offer` is NULL. Borrowed.
///
/// # Safety
/// `offer` is NULL or a live offer.
#[no_mangle]
pub unsafe extern "C" fn evg_offer_notes(offer: *const evg_offer) -> *const c_char {
    unsafe {
        read("evg_offer_notes", offer, std::ptr::null(), |o| {
            o.notes.as_ptr()
        })
    }
}

/// Whether the release is a forced update (it can't be skipped); false when `offer` is NULL.
///
/// # Safety
/// `offer` is NULL or a live offer.
#[no_mangle]
pub unsafe extern "C" fn evg_offer_critical(offer: *const evg_offer) -> bool {
    unsafe { read("evg_offer_critical", offer, false, |o| o.offer.critical) }
}

/// Whether the release is older than the installed one (a pin or a move to a safer
/// channel); false when `offer` is NULL.
///
/// # Safety
/// `offer` is NULL or a live offer.
#[no_mangle]
pub unsafe extern "C" fn evg_offer_downgrade(offer: *const evg_offer) -> bool {
    unsafe { read("evg_offer_downgrade", offer, false, |o| o.offer.downgrade) }
}

/// Bytes a download of the offer fetches: each artifact once, none there already (a kept
/// download, or on image slots a release staged or an image streamed whole into its
/// slot); 0 when `offer` is NULL.
///
/// # Safety
/// `offer` is NULL or a live offer.
#[no_mangle]
pub unsafe extern "C" fn evg_offer_download_size(offer: *const evg_offer) -> u64 {
    unsafe {
        read("evg_offer_download_size", offer, 0, |o| {
            o.offer.download_size()
        })
    }
}

/// Number of lines in the component diff; 0 when `offer` is NULL.
///
/// # Safety
/// `offer` is NULL or a live offer.
#[no_mangle]
pub unsafe extern "C" fn evg_offer_component_count(offer: *const evg_offer) -> usize {
    unsafe {
        read("evg_offer_component_count", offer, 0, |o| {
            o.components.len()
        })
    }
}

/// Line `index` of the component diff (sorted by name) into `*out`, whose strings are
/// borrowed from `offer`. `EVG_CONFIG` when `index` is out of range.
///
/// # Safety
/// `offer` is NULL or a live offer; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn evg_offer_component(
    offer: *const evg_offer,
    index: usize,
    out: *mut evg_component,
) -> evg_status {
    guard("evg_offer_component", || {
        let o = unsafe { lease(offer, "offer")? };
        let out = out_arg(out, "out")?;
        let (change, strings) = o
            .offer
            .components
            .get(index)
            .zip(o.components.get(index))
            .ok_or_else(|| {
                Error::config(format!(
                    "argument index: expected less than {}, found {index}",
                    o.components.len()
                ))
            })?;
        let line = evg_component {
            name: strings.name.as_ptr(),
            op: change.op.into(),
            from: opt_ptr(&strings.from),
            to: opt_ptr(&strings.to),
        };
        write_out(out, line);
        Ok(())
    })
}

/// The offer as JSON, as `evergreen check --json` prints it less the two keys the CLI
/// adds (`target_released`, `held_back`): `status` (`"available"`), `version`, `current`,
/// `channel`, `critical`, `downgrade`, `notes`, `security_version`, `download_bytes` and
/// `components` (`[{"name","op","from","to"}]`).
/// The caller owns `*out` and frees it with `evg_string_free`.
///
/// # Safety
/// `offer` is NULL or a live offer; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn evg_offer_json(
    offer: *const evg_offer,
    out: *mut *mut c_char,
) -> evg_status {
    guard("evg_offer_json", || {
        let o = unsafe { lease(offer, "offer")? };
        let out = out_arg(out, "out")?;
        write_out(out, into_c_string(o.offer.to_json().to_string()));
        Ok(())
    })
}

/// Frees an offer. NULL is fine. Called while a call using the offer runs (from one of
/// its callbacks, or another thread), it releases the offer when that call returns.
///
/// # Safety
/// `offer` is NULL or an offer returned to the caller that was not freed yet.
#[no_mangle]
pub unsafe extern "C" fn evg_offer_free(offer: *mut evg_offer) {
    unsafe { free(offer, "evg_offer_free") }
}
