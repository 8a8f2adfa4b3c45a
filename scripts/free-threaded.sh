#!/usr/bin/env bash
# Build (once) a free-threaded CPython 3.13t, build ferrule's wheel for it, and run the
# whole pytest suite there with the GIL disabled.
#
#   scripts/free-threaded.sh            interpreter + wheel + test suite
#   scripts/free-threaded.sh python     only make sure the interpreter exists; print its path
#   scripts/free-threaded.sh bench      interpreter + wheel + the scaling benchmark
#
# No registry here ships a free-threaded interpreter, so it is compiled from CPython's
# source tarball as Debian's archive carries it (byte-identical to upstream), checksum
# verified, and installed outside the checkout so later runs reuse it.
set -euo pipefail

PY_VERSION=3.13.5
PY_SHA256=93e583f243454e6e9e4588ca2c2662206ad961659863277afcdb96801647d640
PREFIX=${FERRULE_FT_PREFIX:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/ferrule/cpython-${PY_VERSION}t}
FT_PY="$PREFIX/bin/python3.13t"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/.venv-ft"

log() { printf '[free-threaded] %s\n' "$*" >&2; }

archive_base() {
  # The machine's own apt configuration names the Debian mirror; no host is hard-coded.
  local uri
  uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)
  if [ -z "$uri" ]; then
    uri=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -n1 || true)
  fi
  [ -n "$uri" ] || { log "cannot find a Debian archive URI in the apt configuration"; exit 1; }
  printf '%s' "${uri%/}"
}

ensure_build_deps() {
  local need=()
  for p in build-essential pkg-config libssl-dev zlib1g-dev libffi-dev libbz2-dev \
           liblzma-dev libsqlite3-dev libreadline-dev libncurses-dev uuid-dev libgdbm-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "installing build dependencies: ${need[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

ensure_python() {
  if [ -x "$FT_PY" ] && "$FT_PY" -c 'import sys, sysconfig; assert sysconfig.get_config_var("Py_GIL_DISABLED") == 1' 2>/dev/null; then
    return 0
  fi
  ensure_build_deps
  local work tarball url
  work=$(mktemp -d)
  tarball="$work/python3.13_${PY_VERSION}.orig.tar.xz"
  url="$(archive_base)/pool/main/p/python3.13/python3.13_${PY_VERSION}.orig.tar.xz"
  log "downloading $url"
  curl -fsSL --retry 3 -o "$tarball" "$url"
  echo "$PY_SHA256  $tarball" | sha256sum -c --quiet -
  tar -xJf "$tarball" -C "$work"
  log "building CPython ${PY_VERSION} with --disable-gil into $PREFIX (a few minutes)"
  (
    cd "$work/Python-${PY_VERSION}"
    ./configure --prefix="$PREFIX" --disable-gil --enable-shared \
      LDFLAGS="-Wl,-rpath,$PREFIX/lib" --with-ensurepip=install --disable-test-modules \
      >"$work/configure.log" 2>&1 || { tail -n 40 "$work/configure.log"; exit 1; }
    make -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -n 40 "$work/make.log"; exit 1; }
    make install >"$work/install.log" 2>&1 || { tail -n 40 "$work/install.log"; exit 1; }
  )
  rm -rf "$work"
  "$FT_PY" -c 'import sys, sysconfig; assert sysconfig.get_config_var("Py_GIL_DISABLED") == 1; print(sys.version)' >&2
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$FT_PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements/ft.txt"
}

build_wheel() {
  log "building the cp313t wheel"
  rm -rf "$ROOT/target/wheels-ft"
  (cd "$ROOT" && "$VENV/bin/maturin" build --release -q -i "$VENV/bin/python" -o "$ROOT/target/wheels-ft")
  "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps "$ROOT"/target/wheels-ft/*.whl
  # Importing an extension that does not declare gil_used = false would turn the GIL back on.
  "$VENV/bin/python" -W error -c 'import sys, ferrule; assert not sys._is_gil_enabled(), "GIL re-enabled by import"; print("ferrule", ferrule.__version__, "on", sys.version.split()[0], "GIL enabled:", sys._is_gil_enabled())'
}

cmd=${1:-test}
ensure_python
case "$cmd" in
  python) echo "$FT_PY" ;;
  test)
    ensure_venv
    build_wheel
    cd "$ROOT"
    # Thread tests scale their worker count up on a free-threaded build (tests/conftest.py).
    PYTHON_GIL=0 FERRULE_STRESS=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests benches --benchmark-disable
    ;;
  bench)
    ensure_venv
    build_wheel
    cd "$ROOT"
    PYTHON_GIL=0 "$VENV/bin/python" benches/scaling.py "${@:2}"
    ;;
  *) log "unknown command: $cmd"; exit 2 ;;
esac
