"""The ctypes declarations in `evergreen._ffi` against include/evergreen.h.

A wrong `restype` or a missing argument does not fail in ctypes: it truncates a pointer
or passes garbage. So every declared function and struct is compared with the header,
and every function of the header is either declared or listed here as not used.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path
from typing import Dict, List, Tuple

from evergreen import _ffi

HEADER = Path(__file__).resolve().parents[3] / "include" / "evergreen.h"

# Functions of the header the Python binding does without, and why.
NOT_USED = {
    "evg_check": "evg_check_version with NULL channel and version does the same",
    "evg_updater_new_with_hooks": "host transports and selectors are for C firmware",
    "evg_debug_panic": "only in fault-injection builds",
}

SCALARS = {
    "bool": ctypes.c_bool,
    "int": ctypes.c_int,
    "int32_t": ctypes.c_int32,
    "uint32_t": ctypes.c_uint32,
    "int64_t": ctypes.c_int64,
    "uint64_t": ctypes.c_uint64,
    "size_t": ctypes.c_size_t,
}


def header_text() -> str:
    assert HEADER.is_file(), f"expected the header at {HEADER}"
    return HEADER.read_text()


def split_declaration(decl: str) -> Tuple[str, str]:
    """`const char *name` as (`const char *`, `name`): cbindgen puts the stars on the name."""
    c_type, name = decl.strip().rsplit(" ", 1)
    stars = len(name) - len(name.lstrip("*"))
    return (c_type + " " + "*" * stars).strip(), name.lstrip("*")


def header_functions() -> Dict[str, Tuple[str, List[str]]]:
    """name: (return type, parameter types), from cbindgen's one-line declarations."""
    found = {}
    for line in re.findall(r"^[a-z].*\bevg_\w+\(.*\);$", header_text(), re.M):
        head, params = line[: -len(");")].split("(", 1)
        ret, name = split_declaration(head)
        found[name] = (ret, parameters(params))
    return found


def parameters(params: str) -> List[str]:
    return [] if params == "void" else [split_declaration(p)[0] for p in params.split(",")]


def header_callbacks() -> Dict[str, Tuple[str, List[str]]]:
    """name: (return type, parameter types) of each `typedef … (*evg_…_cb)(…);`."""
    found = {}
    for ret, name, params in re.findall(
        r"^typedef (.+?) \(\*(evg_\w+_cb)\)\((.*)\);$", header_text(), re.M
    ):
        found[name] = (ret, parameters(params))
    return found


def matches(c_type: str, declared: object) -> bool:
    """Whether the ctypes type `declared` passes or returns `c_type` unchanged."""
    c_type = " ".join(c_type.replace("*", " * ").split())
    if c_type == "void":
        return declared is None
    if c_type.endswith("_cb"):
        # A callback type is a prototype too: compared with its typedef, result and
        # parameters, as a function is.
        if not (isinstance(declared, type) and issubclass(declared, ctypes._CFuncPtr)):
            return False
        ret, params = header_callbacks()[c_type]
        return (
            matches(ret, declared._restype_)
            and len(params) == len(declared._argtypes_)
            and all(matches(c, d) for c, d in zip(params, declared._argtypes_))
        )
    if c_type == "const char *":
        return declared is ctypes.c_char_p
    if c_type == "char *":
        # An owned string, kept as a pointer so that it can be freed.
        return declared is _ffi._OWNED
    if c_type == "void *":
        return declared is ctypes.c_void_p
    if c_type.endswith(" *"):
        pointee = re.sub(r"^const ", "", c_type[: -len(" *")])
        return (
            isinstance(declared, type)
            and issubclass(declared, ctypes._Pointer)
            and matches(pointee, declared._type_)
        )
    if c_type.startswith("enum "):
        return declared is ctypes.c_int
    if c_type.startswith("struct "):
        return getattr(declared, "__name__", None) == c_type.split()[1]
    assert c_type in SCALARS, f"no rule for {c_type!r}"
    return declared is SCALARS[c_type]


def test_every_declared_function_has_the_header_prototype() -> None:
    functions = header_functions()
    for name, (restype, argtypes) in _ffi._PROTOTYPES.items():
        assert name in functions, f"{name}: declared in _ffi.py, not in the header"
        ret, params = functions[name]
        assert matches(ret, restype), f"{name}: returns {ret}, declared {restype}"
        assert len(params) == len(argtypes), f"{name}: takes {params}, declared {argtypes}"
        for i, (c_type, declared) in enumerate(zip(params, argtypes)):
            assert matches(c_type, declared), f"{name} argument {i}: {c_type}, declared {declared}"


def test_the_callback_types_have_the_header_prototypes() -> None:
    callbacks = header_callbacks()
    assert set(callbacks) == {"evg_event_cb", "evg_progress_cb"}, callbacks
    assert matches("evg_event_cb", _ffi.EVENT_CB)
    assert matches("evg_progress_cb", _ffi.PROGRESS_CB)
    # A prototype that differs in one parameter is told apart.
    wrong = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32)
    assert not matches("evg_progress_cb", wrong)
    assert not matches("evg_event_cb", _ffi.PROGRESS_CB)


def test_every_header_function_is_declared_or_listed_as_not_used() -> None:
    missing = set(header_functions()) - set(_ffi._PROTOTYPES) - set(NOT_USED)
    assert not missing, f"header functions with no ctypes declaration: {sorted(missing)}"


def test_the_structs_have_the_header_fields() -> None:
    text = header_text()
    for struct in (_ffi.evg_component, _ffi.evg_startup_result, _ffi.evg_activation):
        name = struct.__name__
        body = re.search(r"typedef struct %s \{(.*?)\} %s;" % (name, name), text, re.S)
        assert body, f"{name}: not in the header"
        fields = [split_declaration(f) for f in re.findall(r"^  ([^/*\s].*);$", body.group(1), re.M)]
        ours = [(n.rstrip("_"), t) for n, t in struct._fields_]
        assert [n for _, n in fields] == [n for n, _ in ours], name
        for (c_type, field), (_, declared) in zip(fields, ours):
            assert matches(c_type, declared), f"{name}.{field}: {c_type}, declared {declared}"
