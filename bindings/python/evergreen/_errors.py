"""Exceptions: one class per `evg_status`, generated from a single table."""

from __future__ import annotations

from typing import Dict, Type

from . import _ffi

# (evg_status number, stable kind name). Numbers are never reused; the test suite checks
# this table against `evg_status_name` of the loaded library.
KINDS = (
    (1, "config"),
    (2, "io"),
    (3, "network"),
    (4, "timeout"),
    (5, "slow_retrieval"),
    (6, "http_status"),
    (7, "not_found"),
    (8, "signature"),
    (9, "threshold"),
    (10, "expired"),
    (11, "metadata_rollback"),
    (12, "wrong_metadata"),
    (13, "too_large"),
    (14, "hash_mismatch"),
    (15, "unsafe_archive"),
    (16, "no_such_version"),
    (17, "incompatible_target"),
    (18, "security_floor"),
    (19, "invalid_state"),
    (20, "bootloader"),
    (21, "cancelled"),
    (100, "panic"),
)


class EvergreenError(Exception):
    """A failed Evergreen call. `kind` is the stable name (as in the CLI's
    `error[<kind>]`), `code` the C status number; the message says what was expected
    and what was found."""

    kind = "unknown"
    code = -1

    def __init__(self, message: str, code: int | None = None, kind: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if kind is not None:
            self.kind = kind


def class_name(kind: str) -> str:
    """`hash_mismatch` -> `HashMismatchError`."""
    return "".join(part.capitalize() for part in kind.split("_")) + "Error"


def _make(code: int, kind: str) -> Type[EvergreenError]:
    doc = f"Status {code}: `{kind}`."
    return type(
        class_name(kind),
        (EvergreenError,),
        {"kind": kind, "code": code, "__doc__": doc, "__module__": "evergreen"}
    )


BY_CODE: Dict[int, Type[EvergreenError]] = {code: _make(code, kind) for code, kind in KINDS}


def check(status: int) -> None:
    """Raises the exception for `status` with this thread's last error message."""
    if status == 0:
        return
    message = _ffi.decode(_ffi.lib.evg_last_error_message()) or "(no detail)"
    cls = BY_CODE.get(status)
    if cls is None:
        # A newer library may know kinds this package does not: keep the number and name.
        name = _ffi.decode(_ffi.lib.evg_status_name(status)) or "unknown"
        raise EvergreenError(message, code=status, kind=name)
    raise cls(message)
