"""The C ABI of libevergreen (include/evergreen.h) as ctypes declarations.

Only this module knows about pointers; the rest of the package sees Python values.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import List, Optional

# Unix only (docs/design.md, decision 34): macOS names shared libraries differently.
_LIB_NAMES = {"darwin": "libevergreen.dylib"}
LIB_NAME = _LIB_NAMES.get(sys.platform, "libevergreen.so")
# The name the library gives itself (its SONAME, scripts/build-lib), under which a
# distribution's runtime package installs it: looked up in the system's library path last.
# 0.<minor> before 1.0, the major version after: the binding's own version's ABI.
SONAME = None if sys.platform == "darwin" else "libevergreen.so.0.1"


class evg_updater(ctypes.Structure):
    """Opaque handle: only ever used through a pointer."""


class evg_offer(ctypes.Structure):
    """Opaque handle: only ever used through a pointer."""


class evg_component(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("op", ctypes.c_int),
        ("from_", ctypes.c_char_p),
        ("to", ctypes.c_char_p),
    ]


class evg_startup_result(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int),
        ("slot", ctypes.c_int),
        ("tries_left", ctypes.c_uint32),
        ("rolled_back_from", ctypes.c_int),
        ("start", ctypes.c_int),
    ]


class evg_activation(ctypes.Structure):
    _fields_ = [
        ("activated", ctypes.c_bool),
        ("slot", ctypes.c_int),
        ("deferred_until", ctypes.c_int64),
    ]


PROGRESS_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64)
EVENT_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)

_U = ctypes.POINTER(evg_updater)
_O = ctypes.POINTER(evg_offer)
_S = ctypes.c_int  # evg_status: an int-sized C enum
_STR = ctypes.c_char_p
# Strings the caller must free with evg_string_free: a plain c_char_p would copy them
# and lose the pointer.
_OWNED = ctypes.POINTER(ctypes.c_char)

# name: (restype, argtypes), mirroring include/evergreen.h.
_PROTOTYPES = {
    "evg_last_error_message": (_STR, []),
    "evg_status_name": (_STR, [ctypes.c_int32]),
    "evg_version": (_STR, []),
    "evg_string_free": (None, [_OWNED]),
    "evg_offer_version": (_STR, [_O]),
    "evg_offer_current": (_STR, [_O]),
    "evg_offer_channel": (_STR, [_O]),
    "evg_offer_notes": (_STR, [_O]),
    "evg_offer_critical": (ctypes.c_bool, [_O]),
    "evg_offer_downgrade": (ctypes.c_bool, [_O]),
    "evg_offer_download_size": (ctypes.c_uint64, [_O]),
    "evg_offer_component_count": (ctypes.c_size_t, [_O]),
    "evg_offer_component": (_S, [_O, ctypes.c_size_t, ctypes.POINTER(evg_component)]),
    "evg_offer_json": (_S, [_O, ctypes.POINTER(_OWNED)]),
    "evg_offer_free": (None, [_O]),
    "evg_updater_new": (_S, [_STR, ctypes.POINTER(_U)]),
    "evg_updater_free": (None, [_U]),
    "evg_updater_halt": (None, [_U]),
    "evg_set_event_callback": (_S, [_U, EVENT_CB, ctypes.c_void_p]),
    "evg_startup": (_S, [_U, ctypes.POINTER(evg_startup_result)]),
    "evg_startup_for_launcher": (_S, [_U, ctypes.POINTER(evg_startup_result)]),
    "evg_check_version": (_S, [_U, _STR, _STR, ctypes.POINTER(_O)]),
    "evg_check_if_due": (_S, [_U, ctypes.POINTER(_O), ctypes.POINTER(ctypes.c_bool)]),
    "evg_next_check": (_S, [_U, ctypes.POINTER(ctypes.c_int64)]),
    "evg_check_install": (_S, [_U, _O]),
    "evg_download": (_S, [_U, _O, PROGRESS_CB, ctypes.c_void_p]),
    "evg_install": (_S, [_U, _O]),
    "evg_activate": (_S, [_U, ctypes.c_int, ctypes.POINTER(evg_activation)]),
    "evg_activate_if_due": (
        _S,
        [_U, ctypes.POINTER(evg_activation), ctypes.POINTER(ctypes.c_bool)],
    ),
    "evg_confirm": (_S, [_U]),
    "evg_rollback": (_S, [_U, ctypes.POINTER(ctypes.c_int)]),
    "evg_reinstall": (_S, [_U, PROGRESS_CB, ctypes.c_void_p]),
    "evg_set_channel": (_S, [_U, _STR]),
    "evg_skip": (_S, [_U, _STR]),
    "evg_unskip": (_S, [_U, _STR, ctypes.POINTER(ctypes.c_bool)]),
    "evg_status_json": (_S, [_U, ctypes.POINTER(_OWNED)]),
}


def candidates() -> List[Path]:
    """Where the library is looked for, in order (see docs/bindings.md)."""
    env = os.environ.get("EVERGREEN_LIB")
    if env:
        # An explicit choice is never second-guessed by a fallback.
        return [Path(env)]
    here = Path(__file__).resolve().parent
    repo = here.parents[2]
    # Where cargo builds: CARGO_TARGET_DIR when set (relative to the repository).
    target = repo / os.environ.get("CARGO_TARGET_DIR", "target")
    built = [target / p / LIB_NAME for p in ("debug", "release")]
    # The most recent build is the one the developer means.
    built.sort(key=lambda p: p.stat().st_mtime if p.exists() else 0.0, reverse=True)
    return [here / LIB_NAME] + built


def load() -> ctypes.CDLL:
    """Opens libevergreen and declares every prototype."""
    tried = candidates()
    lib: Optional[ctypes.CDLL] = None
    for path in tried:
        if path.is_file():
            lib = ctypes.CDLL(str(path))
            break
    where = ", ".join(str(p) for p in tried)
    if lib is None and SONAME is not None and not os.environ.get("EVERGREEN_LIB"):
        # An installed library, found as the dynamic loader finds it (ld.so.cache,
        # LD_LIBRARY_PATH).
        try:
            lib = ctypes.CDLL(SONAME)
        except OSError:
            where += f", {SONAME} in the system's library path"
    if lib is None:
        raise OSError(
            f"expected {LIB_NAME} at one of: {where}; found none "
            "(build it with `cargo build`, or set EVERGREEN_LIB)"
        )
    for name, (restype, argtypes) in _PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


lib = load()


def decode(s: Optional[bytes]) -> Optional[str]:
    """A borrowed C string as text (None stays None)."""
    return None if s is None else s.decode("utf-8")


def take_string(p: "ctypes._Pointer[ctypes.c_char]") -> str:
    """Copies a string Evergreen handed over, then frees it."""
    try:
        return ctypes.string_at(p).decode("utf-8")
    finally:
        lib.evg_string_free(p)
