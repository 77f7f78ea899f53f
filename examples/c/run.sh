#!/usr/bin/env bash
# Builds the cdylib, the C example and the C test, publishes a signed repository with the
# real `evergreen` CLI, serves it on loopback, and runs both programs under valgrind
# (zero errors and no definite leaks required). Exits non-zero on any failure.
#   examples/c/run.sh            (from anywhere; bindings/run-tests may call it)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

step "cargo build (cdylib + CLI, with fault-injection for evg_debug_panic)"
cargo build --quiet --features fault-injection --lib --bin evergreen
# Where cargo builds: CARGO_TARGET_DIR when set (relative to the repository), as cargo does.
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
evg="$target/debug/evergreen"

work="$(mktemp -d "${TMPDIR:-/tmp}/evg-c.XXXXXX")"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

step "build the C programs (gcc -std=c99 -pedantic -Werror) and check the header as C++17"
make --no-print-directory -C "$here" OUT="$work/bin" LIBDIR="$target/debug" all

step "publish a repository with the evergreen CLI"
mkdir -p "$work/keys" "$work/src"
for k in root manifest stranger; do "$evg" keygen --out "$work/keys/$k.key" >/dev/null; done
"$evg" init "$work/repo" --product com.acme.cdemo \
  --root-key "$work/keys/root.key.pub" --root-threshold 1 \
  --manifest-key "$work/keys/manifest.key.pub" --sign "$work/keys/root.key" >/dev/null
make_zip() { # make_zip OUT.zip VERSION [BIG_BYTES]
  python3 - "$@" <<'PY'
import os, sys, zipfile
out, version = sys.argv[1], sys.argv[2]
big = int(sys.argv[3]) if len(sys.argv) > 3 else 0
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("VERSION", version)
    z.writestr("run.sh", "#!/bin/sh\necho app %s\n" % version)
    if big:
        z.writestr("data.bin", os.urandom(big), compress_type=zipfile.ZIP_STORED)
PY
}
make_zip "$work/src/app-1.0.0.zip" 1.0.0
make_zip "$work/src/app-1.1.0.zip" 1.1.0
make_zip "$work/src/assets.zip" 1.1.0 $((3 << 20))
"$evg" release "$work/repo" --channel stable --version 1.0.0 --target x86_64-linux \
  --component "app=$work/src/app-1.0.0.zip" --notes "First release." \
  --sign "$work/keys/manifest.key" >/dev/null
"$evg" release "$work/repo" --channel stable --version 1.1.0 --target x86_64-linux \
  --component "app=$work/src/app-1.1.0.zip" --component "assets=$work/src/assets.zip" \
  --notes "Adds the assets." --sign "$work/keys/manifest.key" >/dev/null

step "serve it on loopback (python3 -m http.server)"
python3 -u -m http.server --bind 127.0.0.1 --directory "$work/repo" 0 \
  >"$work/server.log" 2>&1 &
server_pid=$!
port=""
for _ in $(seq 1 100); do
  port="$(sed -n 's/.*port \([0-9][0-9]*\).*/\1/p' "$work/server.log" | head -n1)"
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "the HTTP server did not start:"; cat "$work/server.log"; exit 1; }
url="http://127.0.0.1:$port/"
echo "serving $url"

config() { # config NAME SERVER TRUST_JSON
  mkdir -p "$work/$1"
  cat >"$work/$1/config.json" <<JSON
{"product": "com.acme.cdemo", "server": "$2", "channel": "stable", "target": "x86_64-linux",
 "trust": $3, "state_dir": "$work/$1/state", "slots": {"kind": "dir", "root": "$work/$1/app"},
 "device_id": "c-$1", "limits": {"retries": 1, "retry_backoff_ms": 10}}
JSON
}
config device "$url" "{\"root\": \"$work/repo/root/1.json\"}"
# test_ffi reads its repository through the file transport, so that it also runs against
# a library built without HTTP (the last step).
config badsig "$work/repo" "{\"keys\": [\"$(cat "$work/keys/stranger.key.pub")\"], \"threshold\": 1}"
config hooks "$work/repo" "{\"root\": \"$work/repo/root/1.json\"}"
config powercut "$work/repo" "{\"root\": \"$work/repo/root/1.json\"}"
config launcher "$work/repo" "{\"root\": \"$work/repo/root/1.json\"}"
config rounds "$work/repo" "{\"root\": \"$work/repo/root/1.json\"}"
config due "$work/repo" "{\"root\": \"$work/repo/root/1.json\"}"

# The device runs 1.0.0, installed, started and confirmed with the CLI.
"$evg" update --config "$work/device/config.json" --version 1.0.0 --yes >/dev/null
"$evg" boot --config "$work/device/config.json" >/dev/null
"$evg" confirm --config "$work/device/config.json" >/dev/null

run() {
  if command -v valgrind >/dev/null; then
    valgrind --quiet --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite --error-exitcode=1 "$@"
  elif [ -n "${EVERGREEN_REQUIRE_TOOLS:-}" ]; then
    # CI installs valgrind: without it the memory checks this script promises never run.
    echo "FAIL: expected valgrind installed (EVERGREEN_REQUIRE_TOOLS is set), found none"
    exit 1
  else
    echo "(valgrind not found: running without it)"
    "$@"
  fi
}

step "self_update (C example) over HTTP, under valgrind"
run "$work/bin/self_update" "$work/device/config.json"
"$evg" status --config "$work/device/config.json" --json | grep -q '"version":"1.1.0"' \
  || { echo "the device does not run 1.1.0 after self_update"; exit 1; }

step "test_ffi (C test) under valgrind"
run "$work/bin/test_ffi" "$work/badsig/config.json" "$work/hooks/config.json" \
  "$work/powercut/config.json" "$work/launcher/config.json" "$work/rounds/config.json" \
  "$work/due/config.json"

step "test_ffi against the smallest library (file transport only, std without backtraces)"
# scripts/build-small-lib needs nightly with rust-src; the panic test in test_ffi shows that
# panics are still caught (EVG_PANIC) without the standard library's backtrace feature.
if small="$(EVG_SMALL_TARGET_DIR="$target/small" scripts/build-small-lib \
    --no-default-features --features fault-injection 2>"$work/small.log" | tail -n1)"; then
  # The library names itself by its SONAME (libevergreen.so.0.1), which a program linked
  # against it then needs at run time: beside it here, as scripts/install-lib installs it.
  mkdir -p "$work/small-lib"
  cp "$small" "$work/small-lib/libevergreen.so"
  soname="$(readelf -d "$small" | sed -n 's/.*(SONAME).*\[\(.*\)\]$/\1/p')"
  [ -z "$soname" ] || ln -s libevergreen.so "$work/small-lib/$soname"
  make --no-print-directory -C "$here" OUT="$work/small-bin" LIBDIR="$work/small-lib" \
    "$work/small-bin/test_ffi"
  # A device of its own: the first run already updated the "hooks" device.
  config hooks-small "$work/repo" "{\"root\": \"$work/repo/root/1.json\"}"
  config powercut-small "$work/repo" "{\"root\": \"$work/repo/root/1.json\"}"
  config launcher-small "$work/repo" "{\"root\": \"$work/repo/root/1.json\"}"
  config rounds-small "$work/repo" "{\"root\": \"$work/repo/root/1.json\"}"
  config due-small "$work/repo" "{\"root\": \"$work/repo/root/1.json\"}"
  run "$work/small-bin/test_ffi" "$work/badsig/config.json" "$work/hooks-small/config.json" \
    "$work/powercut-small/config.json" "$work/launcher-small/config.json" \
    "$work/rounds-small/config.json" "$work/due-small/config.json"
elif grep -q "^build-small-lib: needs" "$work/small.log"; then
  echo "skipped: $(grep "^build-small-lib: needs" "$work/small.log")"
else
  cat "$work/small.log"; exit 1
fi

echo
echo "C ABI: all passed"
