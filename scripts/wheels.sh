#!/usr/bin/env bash
# `make wheels`: prove each file of dist/ installs and works where a user would put it.
#   - every wheel of dist/ (scripts/dist.sh), on the interpreter its tag names;
#   - a wheel built from the sdist (pip, maturin from the build-system table, pinned to
#     test.txt's maturin), on the interpreter `python3` is.
# Each goes into a clean venv of its interpreter with only requirements/smoke.txt beside
# it, and runs with no Rust toolchain on PATH, from a directory outside the checkout
# (python -I: no repository, no PYTHONPATH, no user site on sys.path):
#   import (the package the venv installed, its version, and on 3.13t the GIL still
#   off), `python -m ferrule`, and the tests marked `smoke` (a copy of tests/).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DIST="$ROOT/dist"

log() { printf '[wheels] %s\n' "$*" >&2; }

# PATH without any directory that holds a Rust toolchain or a pyenv shim.
CLEAN_PATH=
IFS=: read -ra dirs <<<"$PATH"
for d in "${dirs[@]}"; do
  [ -n "$d" ] || continue
  if [ -e "$d/cargo" ] || [ -e "$d/rustc" ] || [[ $d == */shims ]]; then continue; fi
  CLEAN_PATH="${CLEAN_PATH:+$CLEAN_PATH:}$d"
done

# The smoke tests and their conftest, outside the checkout.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/run"
cp pyproject.toml "$WORK/run/"
cp -r tests "$WORK/run/tests"
find "$WORK/run/tests" -name __pycache__ -prune -exec rm -rf {} +
mapfile -t SMOKE_FILES < <(cd "$WORK/run" && grep -l "pytest.mark.smoke" tests/test_*.py)
[ ${#SMOKE_FILES[@]} -gt 0 ] || { log "no test is marked smoke"; exit 1; }

smoke() {  # smoke <label> <python> <wheel>
  local label=$1 py=$2 wheel=$3 venv start
  start=$SECONDS
  venv="$WORK/venv-$label"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --require-hashes -r requirements/smoke.txt
  "$venv/bin/python" -m pip install -q --no-deps "$wheel"
  (
    cd "$WORK/run"
    export PATH="$venv/bin:$CLEAN_PATH"
    unset PYTHONPATH VIRTUAL_ENV PYTHON_GIL
    if command -v cargo >/dev/null || command -v rustc >/dev/null; then
      log "$label: a Rust toolchain is still on PATH"; exit 1
    fi
    python -I -W error - "$venv" <<'PY'
import importlib.metadata, os, sys, sysconfig
import ferrule
venv = os.path.realpath(sys.argv[1])
where = os.path.realpath(ferrule.__file__)
assert where.startswith(venv + os.sep), f"ferrule imported from {where}, not the venv"
assert ferrule.__version__ == importlib.metadata.version("ferrule"), ferrule.__version__
gil = getattr(sys, "_is_gil_enabled", lambda: True)()
if sysconfig.get_config_var("Py_GIL_DISABLED"):
    assert not gil, "importing ferrule turned the GIL back on"
print(f"  ferrule {ferrule.__version__} on {sys.version.split()[0]}, GIL enabled: {gil}")
PY
    python -I -m ferrule >"$WORK/demo-$label.log" 2>&1 || { cat "$WORK/demo-$label.log"; exit 1; }
    echo "  python -m ferrule: ok ($(wc -l <"$WORK/demo-$label.log") lines)"
    python -m pytest -q -p no:cacheprovider -m smoke "${SMOKE_FILES[@]}" | tail -n 1
  ) || { log "$label: FAILED ($(basename "$wheel"))"; return 1; }
  log "$label: ok in $((SECONDS - start)) s ($(basename "$wheel"))"
  rm -rf "$venv"
}

status=0 passed=() failed=() skipped=()
shopt -s nullglob
wheels=("$DIST"/*.whl)
[ ${#wheels[@]} -gt 0 ] || { log "no wheel in dist/: run make dist"; exit 1; }
for whl in "${wheels[@]}"; do
  name=$(basename "$whl")
  abi=$(cut -d- -f4 <<<"$name")  # ferrule-VER-PYTAG-ABITAG-PLAT.whl: cp313t, cp312, ...
  if ! py=$(python3 scripts/pythons.py "$abi" 2>/dev/null); then
    log "$abi: SKIPPED (no interpreter for $name)"; skipped+=("$abi"); continue
  fi
  log "$abi: $name on $py"
  if smoke "$abi" "$py" "$whl"; then passed+=("$abi"); else failed+=("$abi"); status=1; fi
done

# The sdist, built the way `pip install ferrule-X.tar.gz` would (the Rust toolchain on
# PATH, build isolation), with the maturin version this repository locks.
sdist=$(ls "$DIST"/ferrule-*.tar.gz 2>/dev/null | head -n1 || true)
if [ -z "$sdist" ]; then
  log "sdist: missing from dist/"; failed+=(sdist); status=1
else
  py=$(python3 -c 'import sys; print(sys.executable if sys.prefix == sys.base_prefix else sys._base_executable)')
  log "sdist: building a wheel from $(basename "$sdist") with $py"
  start=$SECONDS
  "$py" -m venv "$WORK/build"
  grep -oE '^maturin==[^ ]+' requirements/test.txt >"$WORK/constraints.txt"
  # Cached between runs like the dist builds; the unpacked sources are new each time.
  if CARGO_TARGET_DIR="$ROOT/target/sdist" PIP_CONSTRAINT="$WORK/constraints.txt" \
      "$WORK/build/bin/python" -m pip wheel -q --no-deps -w "$WORK/sdist-wheel" "$sdist"; then
    log "sdist: built $(basename "$WORK"/sdist-wheel/*.whl) in $((SECONDS - start)) s"
    if smoke sdist "$py" "$WORK"/sdist-wheel/*.whl; then passed+=(sdist); else failed+=(sdist); status=1; fi
  else
    log "sdist: FAILED to build a wheel"; failed+=(sdist); status=1
  fi
fi

log "passed: ${passed[*]:-none}; failed: ${failed[*]:-none}; skipped: ${skipped[*]:-none}"
exit $status
