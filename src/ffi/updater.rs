//! `evg_updater`: the handle over [`Updater`] and one export per facade operation.

use super::callbacks::{evg_progress_cb, EventSink, Progress};
use super::error::evg_status;
use super::handle::{arg_str, evg_slot, into_c_string, opt_str, out_arg, parse_version, write_out};
use super::hooks::{check_size, evg_hooks, CSelector, CTransport};
use super::lease::{free, lease, Calls, Leased};
use super::offer::evg_offer;
use super::panic::guard;
use crate::error::{Error, ErrorKind, Result};
use crate::{Activation, Check, Config, Launch, Offer, Startup, Updater};
use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;

/// An updater for one product installation. Created by `evg_updater_new` or
/// `evg_updater_new_with_hooks`; the caller owns it and frees it with `evg_updater_free`.
/// It may be shared between threads; each callback runs on the thread whose call made it.
pub struct evg_updater {
    pub(crate) updater: Updater,
    pub(crate) events: Arc<EventSink>,
    calls: Calls,
}

impl Leased for evg_updater {
    const NAME: &'static str = "updater";

    fn calls(&self) -> &Calls {
        &self.calls
    }

    fn on_free_deferred(&self) {
        // `evg_updater_free` promises no callback after it returns: none starts from now
        // on, one running on another thread is waited for, and a running download is
        // cancelled at its next chunk, and a call waiting for the work lock at its next look.
        self.updater.halted.cancel();
        self.events.close();
    }
}

/// Builds the updater from the config JSON and the optional hooks.
///
/// # Safety
/// `hooks` is NULL or points to a live `evg_hooks` whose pointers are NULL or live.
unsafe fn build(config_json: &str, hooks: *const evg_hooks) -> Result<evg_updater> {
    let config = Config::from_json(config_json)?;
    let events = Arc::new(EventSink::default());
    let sink = Arc::clone(&events);
    let mut builder = Updater::builder(config).on_event(move |e| sink.emit(e));
    if !hooks.is_null() {
        unsafe { check_size(hooks, "evg_hooks")? };
        let hooks = unsafe { &*hooks };
        if !hooks.transport.is_null() {
            builder = builder.transport(Box::new(unsafe { CTransport::new(hooks.transport)? }));
        }
        if !hooks.selector.is_null() {
            builder = builder.selector(Box::new(unsafe { CSelector::new(hooks.selector)? }));
        }
        events.set(hooks.on_event, hooks.event_user);
    }
    Ok(evg_updater {
        updater: builder.build()?,
        events,
        calls: Calls::default(),
    })
}

/// Creates an updater from `config_json` (the JSON config of DESIGN §7.1, the same as the
/// CLI's `--config` file). Nothing is written yet. On success `*out` is the new handle,
/// owned by the caller (free it with `evg_updater_free`).
///
/// # Safety
/// `config_json` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn evg_updater_new(
    config_json: *const c_char,
    out: *mut *mut evg_updater,
) -> evg_status {
    unsafe { new_updater("evg_updater_new", config_json, std::ptr::null(), out) }
}

/// Like `evg_updater_new`, with host-supplied parts: a transport, a boot selector (needed
/// for `"selector": {"kind": "custom"}`) and an event callback. `hooks` may be NULL; its
/// structs are copied, the `user` pointers must stay valid until the updater is released
/// (when `evg_updater_free` returns, or, freed during a call, when that call returns).
///
/// # Safety
/// As for `evg_updater_new`; `hooks` is NULL or points to a live `evg_hooks` whose
/// `transport` and `selector` are NULL or live.
#[no_mangle]
pub unsafe extern "C" fn evg_updater_new_with_hooks(
    config_json: *const c_char,
    hooks: *const evg_hooks,
    out: *mut *mut evg_updater,
) -> evg_status {
    unsafe { new_updater("evg_updater_new_with_hooks", config_json, hooks, out) }
}

/// Both constructors, with the name of the export the host called (a panic message names
/// it).
///
/// # Safety
/// As for `evg_updater_new_with_hooks`.
unsafe fn new_updater(
    name: &str,
    config_json: *const c_char,
    hooks: *const evg_hooks,
    out: *mut *mut evg_updater,
) -> evg_status {
    guard(name, || {
        let json = unsafe { arg_str(config_json, "config_json")? };
        let out = out_arg(out, "out")?;
        let updater = unsafe { build(json, hooks)? };
        write_out(out, Box::into_raw(Box::new(updater)));
        Ok(())
    })
}

/// Frees an updater. NULL is fine. No event or progress callback runs after it returns.
///
/// Called while a call on the updater is running — from inside one of that call's
/// callbacks, or from another thread — it releases the updater when the last such call
/// returns. That call ends what it is doing without further event or progress callbacks:
/// a download is cancelled (`EVG_CANCELLED`, the partial download kept) and
/// `evg_reinstall` does not go on to install; a host transport or selector it is using may
/// still be called until it returns. An event or progress callback already running on
/// another thread is waited for, so do not free while holding a lock that callback
/// takes; a free made from inside a callback or a host transport or selector hook (of
/// any updater) does not wait, and such a callback may still be running when it returns. Until that last call returns, new calls
/// on the handle are refused with `EVG_INVALID_STATE` and a second free does nothing;
/// after it, the handle is gone, and using or freeing it again is undefined behaviour.
///
/// # Safety
/// `updater` is NULL or a handle that was not freed yet (or was freed during a call that
/// has not returned yet).
#[no_mangle]
pub unsafe extern "C" fn evg_updater_free(updater: *mut evg_updater) {
    unsafe { free(updater, "evg_updater_free") }
}

/// Stops the calls running on `updater` as a free during them would (see
/// `evg_updater_free`), without releasing it: no event or progress callback from now on
/// (one running on another thread is waited for, unless called from inside a callback), a
/// download is cancelled, and a call waiting for the work lock or to retry a failing
/// server returns `EVG_CANCELLED`. For a host that cannot free the updater yet because it
/// cannot tell whether another thread's call has reached the library (a language
/// binding): halt, then free once those calls have returned. A halted updater serves no
/// more updates; free it. NULL is fine.
///
/// # Safety
/// `updater` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn evg_updater_halt(updater: *mut evg_updater) {
    if !updater.is_null() {
        super::panic::guard_release("evg_updater_halt", || {
            if let Ok(u) = unsafe { lease(updater, "updater") } {
                u.on_free_deferred();
            }
        });
    }
}

/// What `evg_startup` found.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum evg_startup_kind {
    /// No trial running.
    EVG_STARTUP_NORMAL = 0,
    /// The running slot is on trial: confirm it (`evg_confirm`) once healthy.
    EVG_STARTUP_TRIAL = 1,
    /// The trial slot failed and the fallback is primary again: restart into it.
    EVG_STARTUP_ROLLED_BACK = 2,
}

/// The outcome of `evg_startup`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct evg_startup_result {
    /// What happened.
    pub kind: evg_startup_kind,
    /// The slot on trial, or the slot now primary after a rollback; `EVG_SLOT_NONE` when
    /// normal.
    pub slot: evg_slot,
    /// Starts left to confirm the trial slot (0 unless on trial).
    pub tries_left: u32,
    /// The slot given up by a rollback; `EVG_SLOT_NONE` otherwise.
    pub rolled_back_from: evg_slot,
    /// The slot the selector names once the step is done; `EVG_SLOT_NONE` when nothing
    /// was ever activated. From `evg_startup_for_launcher`, the slot to start now: start
    /// it by its own path (`<root>/slots/a/…` or `<root>/slots/b/…`), not through
    /// `current`, which an activation in another process may move at any moment.
    pub start: evg_slot,
}

impl From<Launch> for evg_startup_result {
    fn from(launch: Launch) -> evg_startup_result {
        let none = evg_slot::EVG_SLOT_NONE;
        let start = launch.slot.map_or(none, evg_slot::from);
        match launch.startup {
            Startup::Normal => evg_startup_result {
                kind: evg_startup_kind::EVG_STARTUP_NORMAL,
                slot: none,
                tries_left: 0,
                rolled_back_from: none,
                start,
            },
            Startup::Trial { slot, tries_left } => evg_startup_result {
                kind: evg_startup_kind::EVG_STARTUP_TRIAL,
                slot: slot.into(),
                tries_left,
                rolled_back_from: none,
                start,
            },
            Startup::RolledBack { from, to, .. } => evg_startup_result {
                kind: evg_startup_kind::EVG_STARTUP_ROLLED_BACK,
                slot: to.into(),
                tries_left: 0,
                rolled_back_from: from.into(),
                start,
            },
        }
    }
}

/// The startup step: call it early on every start, from inside the app. Counts a start of
/// a slot on trial and rolls back once its tries are used up (see `evg_startup_result`).
/// A launcher, which runs the step and then starts what the selector names, calls
/// `evg_startup_for_launcher` instead.
///
/// # Safety
/// `updater` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn evg_startup(
    updater: *mut evg_updater,
    out: *mut evg_startup_result,
) -> evg_status {
    unsafe { startup_with(updater, out, "evg_startup", Updater::startup_step) }
}

/// The startup step for a launcher: a process that runs the step and then starts a slot.
/// Start `out->start` by its own path (`<root>/slots/a/…` or `<root>/slots/b/…`), not
/// `<root>/current/…`: an activation in another process may move `current` between the
/// step and the start, and the release it activates would then run a start the step never
/// counted. After a power cut between
/// an activation's commit and its switch of the selector, the step points the selector at
/// the trial slot; this variant then counts the start the launcher is about to make as the
/// trial's, as `evergreen boot` does. `evg_startup` counts it as the old slot's, right for
/// a host that runs the step inside the app already started: called from a launcher, the
/// release on trial would run a start it was never counted, and its `evg_confirm` would be
/// refused.
///
/// # Safety
/// `updater` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn evg_startup_for_launcher(
    updater: *mut evg_updater,
    out: *mut evg_startup_result,
) -> evg_status {
    unsafe {
        startup_with(
            updater,
            out,
            "evg_startup_for_launcher",
            Updater::startup_for_launcher,
        )
    }
}

/// `step` on the updater behind `updater`, its outcome written to `out`.
///
/// # Safety
/// As for `evg_startup`.
unsafe fn startup_with(
    updater: *mut evg_updater,
    out: *mut evg_startup_result,
    name: &str,
    step: fn(&Updater) -> Result<Launch>,
) -> evg_status {
    guard(name, || {
        let u = unsafe { lease(updater, "updater")? };
        let out = out_arg(out, "out")?;
        let result = step(&u.updater)?;
        write_out(out, result.into());
        Ok(())
    })
}

/// Checks the device's channel for an update. On success `*out` is the offer (owned by the
/// caller, free it with `evg_offer_free`), or NULL when up to date.
///
/// # Safety
/// `updater` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn evg_check(
    updater: *mut evg_updater,
    out: *mut *mut evg_offer,
) -> evg_status {
    unsafe { evg_check_version(updater, std::ptr::null(), std::ptr::null(), out) }
}

/// Checks `channel` (NULL: the device's) for an update, or for exactly `version` (NULL:
/// the newest; given: newer or older, never below the security floor). `*out` as for
/// `evg_check`.
///
/// # Safety
/// `updater` is NULL or a live handle; `channel` and `version` are NULL or NUL-terminated
/// strings; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn evg_check_version(
    updater: *mut evg_updater,
    channel: *const c_char,
    version: *const c_char,
    out: *mut *mut evg_offer,
) -> evg_status {
    guard("evg_check_version", || {
        let u = unsafe { lease(updater, "updater")? };
        let channel = unsafe { opt_str(channel, "channel")? };
        let version = unsafe { opt_str(version, "version")? }
            .map(|v| parse_version(v, "version"))
            .transpose()?;
        let out = out_arg(out, "out")?;
        let check = u.updater.check_with(channel, version.as_ref())?;
        write_out(out, offer_of(check));
        Ok(())
    })
}

/// What `evg_check` gives the host of `check`: the offer it owns, or NULL when up to date.
fn offer_of(check: Check) -> *mut evg_offer {
    match check {
        Check::UpToDate { .. } => std::ptr::null_mut(),
        Check::Available(offer) => Box::into_raw(Box::new(evg_offer::new(offer))),
    }
}

/// Checks the device's channel as `evg_check` does when the check is due
/// (`evg_next_check`: the poll interval with this device's jitter, a failed check's
/// backoff, a server's `Retry-After`), else asks the server nothing. The call for a host's
/// timer, which may call it as often as it likes: the schedule keeps a fleet's polls
/// spread. Judged once the call has its turn, so that a check another thread or process
/// made meanwhile is not made again. On success `*out` is the offer (free it with
/// `evg_offer_free`), or NULL when up to date or not due; `*checked` (optional: NULL when
/// not wanted) says whether the server was asked.
///
/// # Safety
/// `updater` is NULL or a live handle; `out` is NULL or writable; `checked` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn evg_check_if_due(
    updater: *mut evg_updater,
    out: *mut *mut evg_offer,
    checked: *mut bool,
) -> evg_status {
    guard("evg_check_if_due", || {
        let u = unsafe { lease(updater, "updater")? };
        let out = out_arg(out, "out")?;
        let check = u.updater.check_if_due(None, None)?;
        if !checked.is_null() {
            write_out(checked, check.is_some());
        }
        write_out(out, check.map_or(std::ptr::null_mut(), offer_of));
        Ok(())
    })
}

/// When the device's next check is due, in seconds since the Unix epoch (UTC): the last
/// check plus the poll interval with this device's jitter, later after failed checks or
/// when a server asked with `Retry-After`; now or earlier when the device never checked.
/// The same answer on every call until a check or a failure moves it: a host may sleep
/// until it, then call `evg_check_if_due`.
///
/// # Safety
/// `updater` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn evg_next_check(updater: *mut evg_updater, out: *mut i64) -> evg_status {
    guard("evg_next_check", || {
        let u = unsafe { lease(updater, "updater")? };
        let out = out_arg(out, "out")?;
        write_out(out, u.updater.next_check()?.unix());
        Ok(())
    })
}

/// Refuses now what `evg_install` would refuse of `offer` for the device as it is — a
/// trial under way (`EVG_INVALID_STATE`: confirm or roll back first), a release below the
/// security floor (`EVG_SECURITY_FLOOR`), artifacts the slot store cannot take, an offer
/// another updater's check made (`EVG_INVALID_STATE`) — and touches nothing: no download,
/// no lock, no slot. Call it before `evg_download` when the download is meant for an
/// install, so that a release is not fetched only to be refused at the end; `evg_download`
/// alone is not refused for a trial, and fetches the release for the install after the
/// confirm. `EVG_OK` says the install would go ahead now; the state may still change
/// before `evg_install`, which checks again.
///
/// # Safety
/// `updater` and `offer` are NULL or live handles.
#[no_mangle]
pub unsafe extern "C" fn evg_check_install(
    updater: *mut evg_updater,
    offer: *const evg_offer,
) -> evg_status {
    guard("evg_check_install", || {
        let u = unsafe { lease(updater, "updater")? };
        let o = unsafe { lease(offer, "offer")? };
        let plan = u.updater.plan(&o.offer)?;
        u.updater.check_install(&plan)
    })
}

/// Downloads what `plan` needs, reporting to `progress`, which may cancel.
fn download(
    u: &evg_updater,
    plan: &Offer,
    progress: evg_progress_cb,
    user: *mut c_void,
) -> Result<()> {
    let progress = Progress::new(progress, user);
    let result = u.updater.download(
        plan,
        &mut |done, total| {
            if !u.events.call_host(|_| progress.report(done, total)) {
                // Freed from a callback or another thread: stop, and call the host no more.
                progress.cancel.cancel();
            }
        },
        &progress.cancel,
    );
    // Freed (or halted) during the download, the call stops here whether the download was
    // cut short or had nothing left to receive (so `evg_reinstall` does not go on to
    // install), and says why in one message; any other failure is the download's own.
    let cut_short = result
        .as_ref()
        .map_or_else(|e| e.kind() == ErrorKind::Cancelled, |()| true);
    if cut_short && u.updater.halted.is_cancelled() {
        return Err(crate::updater::freed_by_host());
    }
    result
}

/// Downloads and verifies the artifacts `offer` needs (added and modified components, and
/// unchanged ones whose download is not kept; against the running slot as it is now).
/// `progress` (may be NULL) is called with `user` between chunks on this thread; a non-zero return cancels: `EVG_CANCELLED`, and the
/// partial download is kept for the next call to resume (a gzip-compressed image starts over). `offer` must come from a check
/// of this same updater (else `EVG_INVALID_STATE`), as for `evg_install`. With image
/// slots the image is written straight into the inactive slot, marked installing and out
/// of the boot order first (refused as `evg_install` refuses), and `evg_install` reads it
/// back.
///
/// # Safety
/// `updater` and `offer` are NULL or live handles; `progress` may be called with `user`
/// until this returns.
#[no_mangle]
pub unsafe extern "C" fn evg_download(
    updater: *mut evg_updater,
    offer: *const evg_offer,
    progress: evg_progress_cb,
    user: *mut c_void,
) -> evg_status {
    guard("evg_download", || {
        let u = unsafe { lease(updater, "updater")? };
        let o = unsafe { lease(offer, "offer")? };
        let plan = u.updater.plan(&o.offer)?;
        download(&u, &plan, progress, user)
    })
}

/// Writes the downloaded `offer` into the inactive slot (image slots: reads back and
/// hashes the image `evg_download` wrote there). The running slot is never
/// touched; the slot is `installed` only once everything is durable. An offer made by
/// another updater's check is refused (`EVG_INVALID_STATE`): its trust root, product and
/// state checked the release, not this one's.
///
/// # Safety
/// `updater` and `offer` are NULL or live handles.
#[no_mangle]
pub unsafe extern "C" fn evg_install(
    updater: *mut evg_updater,
    offer: *const evg_offer,
) -> evg_status {
    guard("evg_install", || {
        let u = unsafe { lease(updater, "updater")? };
        let o = unsafe { lease(offer, "offer")? };
        let plan = u.updater.plan(&o.offer)?;
        u.updater.install(&plan).map(drop)
    })
}

/// What `evg_activate` did.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct evg_activation {
    /// True when the installed slot is now primary, on trial; false when the deploy policy
    /// holds it back (nothing changed).
    pub activated: bool,
    /// The new primary slot, or `EVG_SLOT_NONE` when deferred.
    pub slot: evg_slot,
    /// When deferred: the Unix time (seconds) it may go ahead, or -1 when unknown. 0 when
    /// activated.
    pub deferred_until: i64,
}

impl From<Activation> for evg_activation {
    fn from(a: Activation) -> evg_activation {
        match a {
            Activation::Activated { slot, .. } => evg_activation {
                activated: true,
                slot: slot.into(),
                deferred_until: 0,
            },
            Activation::Deferred { until, .. } => evg_activation {
                activated: false,
                slot: evg_slot::EVG_SLOT_NONE,
                deferred_until: until.map_or(-1, |t| t.unix()),
            },
        }
    }
}

/// Makes the installed slot primary, on trial — if the deploy policy allows it now, or
/// always when `force` is non-zero. Restart into it, then `evg_startup` and `evg_confirm`.
///
/// # Safety
/// `updater` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn evg_activate(
    updater: *mut evg_updater,
    force: c_int,
    out: *mut evg_activation,
) -> evg_status {
    guard("evg_activate", || {
        let u = unsafe { lease(updater, "updater")? };
        let out = out_arg(out, "out")?;
        let activation = u.updater.activate(force != 0)?;
        write_out(out, activation.into());
        Ok(())
    })
}

/// Activates the release staged in the inactive slot once the deploy policy lets it go, as
/// `evg_activate(updater, 0, out)` does: for a host's timer, beside `evg_check_if_due`, so
/// that a release staged for a maintenance window or an `at` time goes ahead once that
/// time has come, not at the next due check. `*staged` (optional: NULL when not wanted)
/// says whether a release was staged: false when the inactive slot holds none (or one the
/// newest check withheld) and under the `download_only` policy, which waits for the
/// host's own `evg_activate`; `*out` then says nothing was activated (`activated` false,
/// `slot` `EVG_SLOT_NONE`, `deferred_until` -1).
///
/// # Safety
/// `updater` is NULL or a live handle; `out` is NULL or writable; `staged` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn evg_activate_if_due(
    updater: *mut evg_updater,
    out: *mut evg_activation,
    staged: *mut bool,
) -> evg_status {
    guard("evg_activate_if_due", || {
        let u = unsafe { lease(updater, "updater")? };
        let out = out_arg(out, "out")?;
        let activation = u.updater.activate_if_due()?;
        if !staged.is_null() {
            write_out(staged, activation.is_some());
        }
        let none = evg_activation {
            activated: false,
            slot: evg_slot::EVG_SLOT_NONE,
            deferred_until: -1,
        };
        write_out(out, activation.map_or(none, Into::into));
        Ok(())
    })
}

/// Marks the slot on trial good (and raises the security floor). Confirming a slot that is
/// already good does nothing; one that has not started yet (no `evg_startup` counted) is
/// `EVG_INVALID_STATE`.
///
/// # Safety
/// `updater` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn evg_confirm(updater: *mut evg_updater) -> evg_status {
    guard("evg_confirm", || {
        unsafe { lease(updater, "updater")? }.updater.confirm()
    })
}

/// Goes back to the fallback slot now (it must be good); the primary is marked bad.
/// `*out` (may be NULL when not wanted) receives the slot now primary.
///
/// # Safety
/// `updater` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn evg_rollback(updater: *mut evg_updater, out: *mut evg_slot) -> evg_status {
    guard("evg_rollback", || {
        let u = unsafe { lease(updater, "updater")? };
        let slot = u.updater.rollback()?;
        if !out.is_null() {
            write_out(out, slot.into());
        }
        Ok(())
    })
}

/// Repairs the installation: downloads the installed version again (every component,
/// `progress` as for `evg_download`) and installs it into the inactive slot. Then call
/// `evg_activate` as after `evg_install`.
///
/// # Safety
/// `updater` is NULL or a live handle; `progress` may be called with `user` until this
/// returns.
#[no_mangle]
pub unsafe extern "C" fn evg_reinstall(
    updater: *mut evg_updater,
    progress: evg_progress_cb,
    user: *mut c_void,
) -> evg_status {
    guard("evg_reinstall", || {
        let u = unsafe { lease(updater, "updater")? };
        let offer = u.updater.reinstall_offer()?;
        download(&u, &offer, progress, user)?;
        u.updater.install(&offer).map(drop)
    })
}

/// Follows `channel` (e.g. `"preview"`) from now on; the next check applies the
/// channel-switch rules.
///
/// # Safety
/// `updater` is NULL or a live handle; `channel` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn evg_set_channel(
    updater: *mut evg_updater,
    channel: *const c_char,
) -> evg_status {
    guard("evg_set_channel", || {
        let u = unsafe { lease(updater, "updater")? };
        u.updater
            .set_channel(unsafe { arg_str(channel, "channel")? })
    })
}

/// Skips `version` (e.g. `"1.4.2"`): checks no longer offer it, unless it is critical, nor
/// another build of it (`"1.4.2+b7"`: versions compare by semver precedence).
///
/// # Safety
/// `updater` is NULL or a live handle; `version` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn evg_skip(updater: *mut evg_updater, version: *const c_char) -> evg_status {
    guard("evg_skip", || {
        let u = unsafe { lease(updater, "updater")? };
        let version = parse_version(unsafe { arg_str(version, "version")? }, "version")?;
        u.updater.skip(&version)
    })
}

/// Takes back `evg_skip` of `version`, or of another build of it (`"1.4.2"` for
/// `"1.4.2+b7"`): checks may offer it again. `*was_skipped` (may be
/// NULL when not wanted) receives whether it was skipped; when it was not, nothing changes.
/// `evg_status_json` lists the skipped versions (`"skipped"`).
///
/// # Safety
/// `updater` is NULL or a live handle; `version` is NULL or a NUL-terminated string;
/// `was_skipped` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn evg_unskip(
    updater: *mut evg_updater,
    version: *const c_char,
    was_skipped: *mut bool,
) -> evg_status {
    guard("evg_unskip", || {
        let u = unsafe { lease(updater, "updater")? };
        let version = parse_version(unsafe { arg_str(version, "version")? }, "version")?;
        let was = u.updater.unskip(&version)?;
        if !was_skipped.is_null() {
            write_out(was_skipped, was);
        }
        Ok(())
    })
}

/// The device's status as JSON, as `evergreen status --json` prints it (slots, versions,
/// trial, channel, security floor, last check, skipped versions, recent events under
/// `"history"`). The caller owns `*out` and frees it with
/// `evg_string_free`.
///
/// # Safety
/// `updater` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn evg_status_json(
    updater: *mut evg_updater,
    out: *mut *mut c_char,
) -> evg_status {
    guard("evg_status_json", || {
        let u = unsafe { lease(updater, "updater")? };
        let out = out_arg(out, "out")?;
        let status = u.updater.status()?;
        let json = serde_json::to_string(&status)
            .map_err(|e| Error::config(format!("status: expected serialisable JSON, found {e}")))?;
        write_out(out, into_c_string(json));
        Ok(())
    })
}
