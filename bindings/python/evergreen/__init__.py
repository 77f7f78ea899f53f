"""Evergreen for Python: the embeddable updater's C ABI (libevergreen) through ctypes.

    with evergreen.Updater(config) as updater:
        updater.startup()
        offer = updater.check()
        if offer is not None:
            updater.download(offer, progress=lambda done, total: False)
            updater.install(offer)
            updater.activate()

Every call blocks and runs callbacks on the calling thread. Failures raise a subclass of
`EvergreenError` named after the error kind (`SignatureError`, `CancelledError`, ...).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from . import _ffi
from ._errors import BY_CODE, EvergreenError, check

_lib = _ffi.lib

EvergreenError.__module__ = __name__
# One class per kind, e.g. SignatureError, HashMismatchError, CancelledError, PanicError.
globals().update({cls.__name__: cls for cls in BY_CODE.values()})

__all__ = [
    "Activation",
    "Component",
    "EvergreenError",
    "Offer",
    "Startup",
    "Updater",
    "status_name",
    "version",
] + [cls.__name__ for cls in BY_CODE.values()]

Progress = Callable[[int, int], Any]
"""`progress(done, total)`; a true result cancels the download."""

EventCallback = Callable[[Dict[str, Any]], Any]
"""`on_event(event)` with the event as a dict, e.g. `{"event": "confirmed", ...}`."""

_SLOTS = {-1: None, 0: "a", 1: "b"}
_OPS = {0: "added", 1: "removed", 2: "modified", 3: "unchanged"}
_STARTUP = {0: "normal", 1: "trial", 2: "rolled_back"}


def version() -> str:
    """The version of the loaded libevergreen, e.g. `"0.1.0"`."""
    return _ffi.decode(_lib.evg_version()) or ""


def status_name(code: int) -> str:
    """The stable name of a C status number (`8` -> `"signature"`, unknown -> `"unknown"`)."""
    # ctypes would pass only the low 32 bits of a larger int: 2**32 + 8 is no status.
    if not -(2**31) <= code < 2**31:
        return "unknown"
    return _ffi.decode(_lib.evg_status_name(code)) or "unknown"


@dataclass(frozen=True)
class Component:
    """One line of an offer's component diff."""

    name: str
    op: str
    """`"added"`, `"removed"`, `"modified"` or `"unchanged"`."""
    from_version: Optional[str]
    """The installed version; None when the component is added."""
    to_version: Optional[str]
    """The offered version; None when the component is removed."""


@dataclass(frozen=True)
class Startup:
    """What `Updater.startup()` found."""

    kind: str
    """`"normal"`, `"trial"` (confirm once healthy) or `"rolled_back"` (restart)."""
    slot: Optional[str]
    """The slot on trial, or the slot now primary after a rollback."""
    tries_left: int
    rolled_back_from: Optional[str]
    start: Optional[str] = None
    """The slot the selector names once the step is done (None when nothing was ever
    activated). From `startup_for_launcher()`, the slot to start now, by its own path
    (`<root>/slots/a/…` or `<root>/slots/b/…`), not through `current`."""


@dataclass(frozen=True)
class Activation:
    """What `Updater.activate()` did."""

    activated: bool
    """False when the deploy policy holds the update back (nothing changed)."""
    slot: Optional[str]
    """The new primary slot, None when deferred."""
    deferred_until: Optional[int]
    """When deferred: the Unix time it may go ahead, None when unknown or activated."""


# Per thread: how deep it is in the host's own callback code (`_user_code`).
_in_user_code = threading.local()

# Per thread: how deep it is in callbacks of any handle. A close() from in there does not
# wait, as `evg_updater_free` from inside a callback does not: two threads each closing,
# from a callback, the updater the other is in a callback of would wait for each other.
_in_callbacks = threading.local()


@contextlib.contextmanager
def _ctrl_c_kept(handle: "_Handle") -> Iterator[None]:
    """Around a C call on the main thread: Ctrl-C is kept and raised when the call returns.

    Python raises `KeyboardInterrupt` at the first bytecode the main thread runs after the
    signal. During a C call that is the entry of a callback, before any `try` in it, and
    ctypes would print the exception as ignored and drop it (and the download would go
    on). While Python's own handler is in place, this one takes its place for the call:
    it only keeps the interrupt, the callbacks then stop the call (a download is
    cancelled), and the outermost `use()` raises it. A host's own SIGINT handler is left
    alone."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def keep(_signum: int, _frame: object) -> None:
        # Inside the host's own callback code, Ctrl-C is raised there as usual (a
        # callback waiting on input or a queue must be interruptible); the callback's
        # trampoline keeps it and cancels.
        if getattr(_in_user_code, "depth", 0):
            raise KeyboardInterrupt
        handle.defer(KeyboardInterrupt())

    signal.signal(signal.SIGINT, keep)
    try:
        yield
    finally:
        # A callback may have put a handler of its own in place meanwhile: leave it.
        if signal.getsignal(signal.SIGINT) is keep:
            signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def _user_code() -> Iterator[None]:
    """Around the host's callback itself, inside a trampoline's `try`."""
    depth = int(getattr(_in_user_code, "depth", 0))
    _in_user_code.depth = depth + 1
    try:
        yield
    finally:
        _in_user_code.depth = depth


class _Handle:
    """A C handle that is freed once: by `close()`, or when its owner is collected.

    The C library keeps a handle freed during a call on it until that call returns
    (c-abi.md, "Handles"), but only once the call has taken its hold on the handle. A
    thread between `use()` and its C call has not, and Python cannot tell. So the C free
    is made at once only when every call counted here is this thread's own and this
    thread is inside a callback of one of them (C holds the handle then), or when no call
    runs; else the handle is marked closed and freed by the first such moment: a callback
    of this kind, or the end of the last call. Either way, once closed no new call starts
    with it, and `close()` returns once no callback runs on another thread, as the C
    free does (a callback on the closing thread itself is left to finish); a `close()`
    made from inside a callback of any handle does not wait, as the C free does not.

    A `KeyboardInterrupt` or `SystemExit` raised in a callback cannot unwind through C:
    it is kept and raised when the C call that made the callback returns; so is Ctrl-C
    pressed during a C call on the main thread (`_ctrl_c_kept`), which also cancels a
    download at its next progress callback."""

    def __init__(
        self,
        owner: object,
        what: str,
        free: Callable[..., None],
        *args: Any,
        halt: Optional[Callable[[Any], None]] = None,
    ):
        self.raw = args[0]
        self._what = what
        self._free = weakref.finalize(owner, free, *args)
        # Stops the handle's running calls without freeing it (`evg_updater_halt`), for a
        # close() that must leave the free to another thread's call.
        self._halt = halt
        self._calls = 0
        self._closing = False
        self._guard = threading.Condition()
        # Callbacks running on any thread, for close() to wait for.
        self._running = 0
        # Per thread: its calls using the handle, how deep it is in their callbacks, and
        # an exception to raise once the outermost call returns.
        self._mine = threading.local()

    @property
    def closed(self) -> bool:
        """Whether `close()` was called (the C handle may still be held by a call)."""
        return self._closing or not self._free.alive

    def _count(self, name: str) -> int:
        return int(getattr(self._mine, name, 0))

    def _free_if_safe(self) -> None:
        """With `_guard` held: frees the C handle if closing and no other thread has a
        call counted that may not have reached C yet."""
        if not self._closing:
            return
        if self._calls == 0 or (
            self._calls == self._count("calls") and self._count("depth") > 0
        ):
            self._free()

    @contextlib.contextmanager
    def use(self) -> Iterator[Any]:
        """The handle, for one call."""
        with self._guard:
            if self.closed:
                raise ValueError(f"expected an open {self._what}, found it closed")
            self._calls += 1
            self._mine.calls = self._count("calls") + 1
        try:
            with _ctrl_c_kept(self):
                yield self.raw
        finally:
            with self._guard:
                self._calls -= 1
                self._mine.calls = self._count("calls") - 1
                self._free_if_safe()
            pending = getattr(self._mine, "pending", None)
            if pending is not None and self._count("calls") == 0:
                self._mine.pending = None
                raise pending

    @contextlib.contextmanager
    def callback(self) -> Iterator[None]:
        """Around a Python callback run by a C call that uses the handle: a `close()` from
        in there, or one made earlier on another thread, frees it now if it safely can."""
        depth = self._count("depth")
        self._mine.depth = depth + 1
        anywhere = int(getattr(_in_callbacks, "depth", 0))
        _in_callbacks.depth = anywhere + 1
        with self._guard:
            self._running += 1
        try:
            with self._guard:
                self._free_if_safe()
            yield
        finally:
            _in_callbacks.depth = anywhere
            self._mine.depth = depth
            with self._guard:
                self._running -= 1
                self._guard.notify_all()

    @property
    def interrupted(self) -> bool:
        """Whether this thread's call has an exception kept to raise (Ctrl-C, say)."""
        return getattr(self._mine, "pending", None) is not None

    def defer(self, error: BaseException) -> None:
        """Keeps `error`, raised in a callback, to raise when this thread's call returns."""
        if not self.interrupted:
            self._mine.pending = error

    def close(self) -> None:
        with self._guard:
            halt = self._halt is not None and not self._closing
            self._closing = True
            self._free_if_safe()
            halt = halt and self._free.alive
            if halt:
                # Counted as a call: another thread's call returning meanwhile must not
                # free the handle under the halt.
                self._calls += 1
        if halt:
            # Another thread's call keeps the handle, and may make no callback before it
            # returns (a check waiting to retry): the library stops it now. Outside the
            # guard: the halt waits for callbacks running on other threads, which take it.
            try:
                self._halt(self.raw)  # type: ignore[misc]
            finally:
                with self._guard:
                    self._calls -= 1
                    self._free_if_safe()
        with self._guard:
            if getattr(_in_callbacks, "depth", 0):
                # From inside a callback (of any handle): waiting could deadlock.
                return
            self._guard.wait_for(lambda: self._running == 0)


class Offer:
    """A release offered to this device, from `Updater.check()`. Its fields are read once;
    the C handle is kept for `download` and `install` and freed by `close()` (or when
    the object is collected)."""

    def __init__(self, handle: "ctypes._Pointer[_ffi.evg_offer]"):
        self._h = _Handle(self, "Offer", _lib.evg_offer_free, handle)
        self.version: str = _ffi.decode(_lib.evg_offer_version(handle)) or ""
        self.current: Optional[str] = _ffi.decode(_lib.evg_offer_current(handle))
        self.channel: str = _ffi.decode(_lib.evg_offer_channel(handle)) or ""
        self.notes: str = _ffi.decode(_lib.evg_offer_notes(handle)) or ""
        self.critical: bool = bool(_lib.evg_offer_critical(handle))
        self.downgrade: bool = bool(_lib.evg_offer_downgrade(handle))
        self.download_size: int = int(_lib.evg_offer_download_size(handle))
        count = _lib.evg_offer_component_count(handle)
        self.components: List[Component] = [self._component(i) for i in range(count)]

    def _component(self, index: int) -> Component:
        c = _ffi.evg_component()
        with self._h.use() as h:
            check(_lib.evg_offer_component(h, index, ctypes.byref(c)))
        return Component(
            name=_ffi.decode(c.name) or "",
            op=_OPS.get(c.op, "unknown"),
            from_version=_ffi.decode(c.from_),
            to_version=_ffi.decode(c.to),
        )

    @property
    def handle(self) -> "ctypes._Pointer[_ffi.evg_offer]":
        """The C handle, for calling the C library directly; ValueError once closed.

        Valid only while this Offer is open and referenced: `close()`, or the garbage
        collection of the last reference, frees it, and the pointer must not be used after.
        """
        with self._h.use() as h:
            return h

    def to_dict(self) -> Dict[str, Any]:
        """The offer as `evergreen check --json` prints it, less the CLI's `target_released`
        and `held_back`."""
        out = ctypes.POINTER(ctypes.c_char)()
        with self._h.use() as h:
            check(_lib.evg_offer_json(h, ctypes.byref(out)))
        return json.loads(_ffi.take_string(out))

    def close(self) -> None:
        """Frees the C handle; calling it again does nothing. During a download or
        install of this offer (from its progress callback, or another thread) the call
        goes on, and the handle is freed when it returns; no new call takes the offer."""
        self._h.close()

    def __enter__(self) -> "Offer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Offer(version={self.version!r}, channel={self.channel!r}, "
            f"critical={self.critical})"
        )


class _ProgressTrampoline:
    """Calls the Python progress callback from C. An exception there must not unwind
    through C: it cancels the download and is raised again once the call returned. Once
    the updater is closed the callback is not called again and the download is cancelled,
    as the C library does for a freed updater."""

    def __init__(self, fn: Optional[Progress], updater: _Handle, *others: _Handle):
        self.fn = fn
        self.error: Optional[BaseException] = None
        self._updater = updater
        self._handles = (updater, *others)
        # Kept alive by this object for the whole C call. Passed even without `fn`: each
        # callback is a moment where a close() from another thread reaches the C library
        # and stops the call (before a reinstall installs, for one).
        self.c_fn = _ffi.PROGRESS_CB(self._call)

    def _call(self, _user: Optional[int], done: int, total: int) -> int:
        with contextlib.ExitStack() as inside:
            for h in self._handles:
                inside.enter_context(h.callback())
            if self._updater.closed or any(h.interrupted for h in self._handles):
                return 1
            if self.fn is None:
                return 0
            try:
                with _user_code():
                    return 1 if self.fn(done, total) else 0
            except BaseException as e:  # noqa: B036 - re-raised after the C call returns
                self.error = e
                return 1

    def finish(self, status: int) -> None:
        if self.error is not None:
            raise self.error
        check(status)


# What Updater takes (its docstring says which is read how).
_Config = Union[Dict[str, Any], str, bytes, bytearray, "os.PathLike[str]"]

_BOM = "\ufeff"


def _looks_like_json(text: str) -> bool:
    # A config is a JSON object, but any JSON value is still JSON: "[1]" is told it is
    # not an object by the library rather than looked up as a file. A BOM is let through
    # here so that _json_text can say what it is.
    return text.lstrip().lstrip(_BOM).lstrip()[:1] in ("{", "[")


def _json_text(text: str, what: str) -> str:
    # The library refuses a byte order mark too, naming it; said here as well, with
    # where it is and how text read in Python goes without it ('utf-8-sig').
    head = text.lstrip(" \t\n\r")
    if head.startswith(_BOM):
        raise BY_CODE[1](
            f"{what}: expected JSON text, found a UTF-8 byte order mark (U+FEFF) at offset"
            f" {len(text) - len(head)}, which the library's JSON parser does not accept;"
            " remove it (text read in Python: decode with 'utf-8-sig')"
        )
    return text


def _lone_surrogate(value: object, where: str) -> Optional[Tuple[str, str, int]]:
    """The first text in `value` (keys too) with a lone surrogate, which has no UTF-8
    form: where it is (`slots.root`, `trust.keys[0]`), the text and the offset."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return (where, value, e.start)
        return None
    if isinstance(value, dict):
        for key, v in value.items():
            at = f"{where}.{key}" if where else str(key)
            found = _lone_surrogate(key, f"key {at}") or _lone_surrogate(v, at)
            if found is not None:
                return found
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _lone_surrogate(v, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def _plain(value: Any, where: str) -> Any:
    """`value` with every `os.PathLike` in it as the text of its path (`os.fsdecode`), as
    an app builds its paths with `pathlib`; anything else JSON cannot carry is a config
    error naming its field."""
    if isinstance(value, os.PathLike):
        return os.fsdecode(value)
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise BY_CODE[1](
        f"config {where}: expected text, a number, a boolean, null, a list, a dict or a"
        f" path, found {type(value).__name__}"
    )


def _config_text(config: _Config) -> str:
    if isinstance(config, dict):
        config = _plain(config, "")
        # json.dumps would write a lone surrogate as an escape, which the library's parser
        # refuses without saying which field; a path read as bytes and decoded with
        # `surrogateescape` (`os.fsdecode`) is the usual source.
        found = _lone_surrogate(config, "")
        if found is not None:
            where, text, at = found
            where = where.encode("utf-8", "backslashreplace").decode("utf-8")
            raise BY_CODE[1](
                f"config {where}: expected text with a UTF-8 form (JSON carries nothing"
                f" else), found the lone surrogate U+{ord(text[at]):04X} at offset {at} of"
                f" {text!r}: a path whose bytes are not UTF-8 (from os.fsdecode) cannot be"
                " configured; rename it"
            )
        return json.dumps(config)
    if isinstance(config, (bytes, bytearray)):
        # Bytes are JSON text, never a path: a path is a str or an os.PathLike.
        try:
            text = bytes(config).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BY_CODE[1](
                f"config: expected JSON text in UTF-8, found byte 0x{config[e.start]:02x} at"
                f" offset {e.start} ({e.reason})"
            ) from e
        return _json_text(text, "config")
    if isinstance(config, str) and _looks_like_json(config):
        return _json_text(config, "config")
    if isinstance(config, (str, os.PathLike)):
        try:
            with open(config, encoding="utf-8") as f:
                text = f.read()
        # ValueError: a NUL in the path, which no file system takes.
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise BY_CODE[1](
                f"expected the config as JSON text or the path of a JSON file, found {config!r}"
                f" ({e})"
            ) from e
        return _json_text(text, f"config {os.fsdecode(config)}")
    raise TypeError(
        "expected the config as a dict, JSON text (str or bytes) or a path, found"
        f" {type(config).__name__}"
    )


class Updater:
    """An updater for one product installation, from the JSON config of DESIGN §7.1: a
    dict; JSON text, as a `str` that starts with `{` or `[` (after whitespace) or as
    `bytes`/`bytearray` in UTF-8; or the path of a JSON file, as any other `str` or an
    `os.PathLike` (`pathlib.Path("[x].json")` for a file whose name starts with `[`). Use
    it as a context manager or call `close()`. Raises `ConfigError` for a bad config: the
    library's parse error for bad JSON, a byte order mark before the JSON (which the
    library does not accept), bytes that are not UTF-8 (naming the offset), text of a dict
    with no UTF-8 form (naming the field), or a file that can't be read."""

    def __init__(self, config: _Config):
        text = _config_text(config)
        handle = ctypes.POINTER(_ffi.evg_updater)()
        check(_lib.evg_updater_new(_encode(text, "config"), ctypes.byref(handle)))
        # The event trampolines, kept by the Updater alone: a finalizer holding them
        # would keep alive, through an event callback that refers to it, the Updater
        # itself. No C call runs once it is collected (each holds `self`), so none can
        # call them after.
        self._callbacks: list = []
        self._h = _Handle(
            self, "Updater", _lib.evg_updater_free, handle, halt=_lib.evg_updater_halt
        )

    def close(self) -> None:
        """Frees the updater; no callback runs afterwards and calling it again does
        nothing. It may be called while a call on the updater is running, from one of
        that call's callbacks or from another thread: the call makes no more callbacks,
        a download in it is cancelled (`CancelledError`), and the handle is freed when
        it returns. From another thread, `close()` first waits for a callback running
        at that moment to return, unless it is itself called from inside a callback (of
        any Updater): then it does not wait, as `evg_updater_free` does not. Calls
        started after `close()` raise `ValueError`."""
        self._h.close()

    def __enter__(self) -> "Updater":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def on_event(self, callback: Optional[EventCallback]) -> None:
        """Sends every event, as a dict, to `callback` (None stops events). It runs on the
        thread of the call that emits the event; an exception in it is turned into a
        RuntimeWarning, since it cannot unwind through C (a `KeyboardInterrupt` or
        `SystemExit` is raised once the call that emitted the event returns). A call made from inside it that
        needs the lock the emitting call holds raises `InvalidStateError` (check, download,
        install and reinstall share one; startup, activate, confirm, rollback, skip and
        set_channel another, and the first kind is refused inside an event of the second).
        `status()` works."""
        if callback is None:
            with self._h.use() as h:
                check(_lib.evg_set_event_callback(h, _ffi.EVENT_CB(), None))
            return

        handle = self._h

        def trampoline(_user: Optional[int], event_json: bytes) -> None:
            with handle.callback():
                if handle.closed:
                    return
                try:
                    with _user_code():
                        callback(json.loads(event_json.decode("utf-8")))
                except Exception as e:
                    # Warnings turned into errors (`-W error`) must not unwind into C either.
                    with contextlib.suppress(Exception):
                        warnings.warn(
                            f"evergreen: the event callback raised {e!r}", RuntimeWarning
                        )
                except BaseException as e:  # noqa: B036 - Ctrl-C or exit: raised after the call
                    handle.defer(e)

        c_fn = _ffi.EVENT_CB(trampoline)
        with self._h.use() as h:
            check(_lib.evg_set_event_callback(h, c_fn, None))
        # Every trampoline ever registered is kept until close: one may be replaced from
        # inside itself while it still runs.
        self._callbacks.append(c_fn)

    def startup(self) -> Startup:
        """The startup step: call it early on every start of the app, from inside the app
        (trial bookkeeping, rollback). A launcher calls `startup_for_launcher()`."""
        return self._startup(_lib.evg_startup)

    def startup_for_launcher(self) -> Startup:
        """The startup step for a launcher: a process that runs the step and then starts
        the slot in the result's `start`, by its own path (`<root>/slots/a/...` or
        `<root>/slots/b/...`): `current` may move under an activation in another process
        meanwhile. After a power cut
        between an activation's commit and its switch of `current`, the step points
        `current` at the trial slot and counts the start the launcher is about to make as
        the trial's; `startup()` would count it as the old slot's."""
        return self._startup(_lib.evg_startup_for_launcher)

    def _startup(self, step) -> Startup:
        r = _ffi.evg_startup_result()
        with self._h.use() as h:
            check(step(h, ctypes.byref(r)))
        return Startup(
            kind=_STARTUP.get(r.kind, "unknown"),
            slot=_SLOTS.get(r.slot),
            tries_left=int(r.tries_left),
            rolled_back_from=_SLOTS.get(r.rolled_back_from),
            start=_SLOTS.get(r.start),
        )

    def check(
        self, channel: Optional[str] = None, version: Optional[str] = None
    ) -> Optional[Offer]:
        """The update for this device, or None when up to date. `channel` checks another
        channel; `version` asks for exactly that release (newer or older)."""
        out = ctypes.POINTER(_ffi.evg_offer)()
        ch, ver = _encode(channel, "channel"), _encode(version, "version")
        with self._h.use() as h:
            check(_lib.evg_check_version(h, ch, ver, ctypes.byref(out)))
        return Offer(out) if out else None

    def check_if_due(self) -> Optional[Offer]:
        """`check()` when the device's poll schedule says a check is due, else None without
        asking the server: the call for a background loop, which may call it as often as
        it likes (the schedule keeps a fleet's polls spread). None also when the check
        found nothing newer; `next_check()` says when to call again."""
        out = ctypes.POINTER(_ffi.evg_offer)()
        with self._h.use() as h:
            check(_lib.evg_check_if_due(h, ctypes.byref(out), None))
        return Offer(out) if out else None

    def next_check(self) -> int:
        """When the next check is due, in seconds since the Unix epoch: the last check plus
        the poll interval with this device's jitter, later after failed checks or when a
        server asked for it (`Retry-After`); now or earlier when the device never checked.
        The same on every call until a check or a failure moves it:
        `time.sleep(max(0, up.next_check() - time.time()))`, then `check_if_due()`."""
        when = ctypes.c_int64(0)
        with self._h.use() as h:
            check(_lib.evg_next_check(h, ctypes.byref(when)))
        return int(when.value)

    def check_install(self, offer: Offer) -> None:
        """Raises now what `install(offer)` would raise with the device as it is (a trial
        under way: `InvalidStateError`; below the security floor: `SecurityFloorError`),
        touching nothing. Call it before `download` when the download is meant for an
        install, so that a release is not fetched only to be refused."""
        with self._h.use() as h, offer._h.use() as o:
            check(_lib.evg_check_install(h, o))

    def download(self, offer: Offer, progress: Optional[Progress] = None) -> None:
        """Downloads and verifies what `offer` needs. `progress(done, total)` returning
        true cancels (`CancelledError`); the partial download is resumed next time. An
        exception raised by `progress` cancels too and is raised here."""
        tramp = _ProgressTrampoline(progress, self._h, offer._h)
        with self._h.use() as h, offer._h.use() as o:
            tramp.finish(_lib.evg_download(h, o, tramp.c_fn, None))
        if self._h.closed:
            # Closed on another thread after the last progress callback: the library
            # never saw the free, but the host asked the download to stop, as it would
            # have stopped a moment earlier.
            raise BY_CODE[21]("expected to continue, found the Updater closed during the call")

    def install(self, offer: Offer) -> None:
        """Writes the downloaded `offer` into the inactive slot."""
        with self._h.use() as h, offer._h.use() as o:
            check(_lib.evg_install(h, o))

    def activate(self, force: bool = False) -> Activation:
        """Makes the installed slot primary, on trial, if the deploy policy allows it now
        (always with `force`)."""
        a = _ffi.evg_activation()
        with self._h.use() as h:
            check(_lib.evg_activate(h, 1 if force else 0, ctypes.byref(a)))
        deferred = None if a.activated or a.deferred_until < 0 else int(a.deferred_until)
        return Activation(bool(a.activated), _SLOTS.get(a.slot), deferred)

    def activate_if_due(self) -> Optional[Activation]:
        """`activate()` of a release staged in the inactive slot, which goes ahead once the
        deploy policy lets it (a maintenance window, an `at` time): for a background loop
        beside `check_if_due()`. None when nothing is staged, and under `download_only`,
        which waits for the host's own `activate()`."""
        a = _ffi.evg_activation()
        staged = ctypes.c_bool(False)
        with self._h.use() as h:
            check(_lib.evg_activate_if_due(h, ctypes.byref(a), ctypes.byref(staged)))
        if not staged.value:
            return None
        deferred = None if a.activated or a.deferred_until < 0 else int(a.deferred_until)
        return Activation(bool(a.activated), _SLOTS.get(a.slot), deferred)

    def confirm(self) -> None:
        """Marks the slot on trial good (and raises the security floor).

        Raises `InvalidStateError` when the trial slot has not started yet:
        call `startup()` in the new version first."""
        with self._h.use() as h:
            check(_lib.evg_confirm(h))

    def rollback(self) -> Optional[str]:
        """Goes back to the fallback slot now; returns the slot now primary."""
        slot = ctypes.c_int(-1)
        with self._h.use() as h:
            check(_lib.evg_rollback(h, ctypes.byref(slot)))
        return _SLOTS.get(slot.value)

    def reinstall(self, progress: Optional[Progress] = None) -> None:
        """Downloads the installed version again and installs it into the inactive slot
        (repair); then `activate()`. `progress` as for `download`."""
        tramp = _ProgressTrampoline(progress, self._h)
        with self._h.use() as h:
            tramp.finish(_lib.evg_reinstall(h, tramp.c_fn, None))

    def set_channel(self, channel: str) -> None:
        """Follows `channel` from now on."""
        with self._h.use() as h:
            check(_lib.evg_set_channel(h, _encode(channel, "channel")))

    def skip(self, version: str) -> None:
        """Checks no longer offer `version` (unless it is critical); `status()["skipped"]`
        lists it, and `unskip` takes it back."""
        with self._h.use() as h:
            check(_lib.evg_skip(h, _encode(version, "version")))

    def unskip(self, version: str) -> bool:
        """Checks may offer a skipped `version` again. False, and nothing changed, when it
        was not skipped."""
        was = ctypes.c_bool(False)
        with self._h.use() as h:
            check(_lib.evg_unskip(h, _encode(version, "version"), ctypes.byref(was)))
        return was.value

    def status_json(self) -> str:
        """The device's status as `evergreen status --json` prints it."""
        out = ctypes.POINTER(ctypes.c_char)()
        with self._h.use() as h:
            check(_lib.evg_status_json(h, ctypes.byref(out)))
        return _ffi.take_string(out)

    def status(self) -> Dict[str, Any]:
        """`status_json()` parsed: slots, versions, trial, channel, security floor."""
        return json.loads(self.status_json())


def _encode(s: Optional[str], name: str) -> Optional[bytes]:
    # C reads up to the first NUL: "preview\0x" would silently be "preview".
    if s is None:
        return None
    if not isinstance(s, str):
        raise TypeError(f"argument {name}: expected str, found {type(s).__name__}")
    if "\0" in s:
        raise BY_CODE[1](
            f"argument {name}: expected text without NUL, found one at offset {s.index(chr(0))}"
        )
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError as e:
        # A lone surrogate (from bytes decoded with `surrogateescape`) has no UTF-8 form.
        raise BY_CODE[1](
            f"argument {name}: expected text that is valid Unicode, found {e.reason} at offset"
            f" {e.start}"
        ) from e
