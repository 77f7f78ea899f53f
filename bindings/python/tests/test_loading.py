"""Where `import evergreen` finds libevergreen when it is installed by a distribution.

A distribution's package of the binding carries no library and sits outside the source
tree; the library is the one its runtime package put in the system's library path, under
its SONAME (libevergreen.so.0.1; scripts/install-lib, docs/c-abi.md "Installing"), without
the libevergreen.so development link.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import evergreen
from evergreen import _ffi


def test_an_installed_package_loads_the_library_by_its_soname(tmp_path: Path) -> None:
    # The package as pip or a distribution installs it: a copy outside the source tree,
    # with no library beside it.
    site = tmp_path / "site-packages"
    shutil.copytree(
        Path(evergreen.__file__).resolve().parent,
        site / "evergreen",
        ignore=shutil.ignore_patterns("*.so", "*.dylib", "__pycache__"),
    )
    # The runtime package: the library under its SONAME only, in the loader's path.
    libdir = tmp_path / "lib"
    libdir.mkdir()
    shutil.copy(_ffi.lib._name, libdir / "libevergreen.so.0.1")
    env = {k: v for k, v in os.environ.items() if k not in ("EVERGREEN_LIB", "CARGO_TARGET_DIR")}
    env["PYTHONPATH"] = str(site)
    env["LD_LIBRARY_PATH"] = str(libdir)
    out = subprocess.run(
        [sys.executable, "-c", "import evergreen; print(evergreen.version())"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, (
        f"expected the package to load {libdir}/libevergreen.so.0.1, found: {out.stderr}"
    )
    assert out.stdout.strip() == evergreen.version()



def test_the_soname_looked_for_follows_the_packages_version() -> None:
    """Bumping the version to 0.2 (or 1.0) changes the library's SONAME
    (scripts/build-lib); the binding must look for the new one."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    version = next(
        line.split('"')[1]
        for line in pyproject.read_text().splitlines()
        if line.startswith("version = ")
    )
    major, minor = version.split(".")[:2]
    abi = f"0.{minor}" if major == "0" else major
    assert _ffi.SONAME == f"libevergreen.so.{abi}", (version, _ffi.SONAME)
