#!/usr/bin/env bash
# `make matrix`: the whole pytest suite and the benchmark smoke run against the wheel of
# dist/ (scripts/dist.sh), on every supported CPython found here (scripts/pythons.py):
# 3.10, 3.11, 3.12, 3.13 with the GIL and free-threaded 3.13t (GIL off, stress widths,
# as scripts/free-threaded.sh runs it). This is the only place `make test` runs the
# suite, so each wheel is built once and the suite runs once per interpreter.
#
#   scripts/matrix.sh                 every interpreter found
#   scripts/matrix.sh cp312 cp313t    only these (tags as in the wheel names)
#
# Each interpreter has its venv in .venv-matrix/<tag>, with the locks for it installed
# (hashes required): test.txt + bench.txt with the GIL, ft.txt on 3.13t; reinstalled
# only when a lock changes. The wheel goes in with --force-reinstall; the suite runs from
# the checkout (its tests, docs and examples), importing ferrule from the venv.
# A supported version not on the machine is reported as SKIPPED; any failure makes the
# exit status non-zero after every interpreter has run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DIST="$ROOT/dist"
VENVS="$ROOT/.venv-matrix"

log() { printf '[matrix] %s\n' "$*" >&2; }

locks_for() {  # the locks one interpreter's venv gets
  if [ "$1" = cp313t ]; then echo requirements/ft.txt; else echo requirements/test.txt requirements/bench.txt; fi
}

ensure_venv() {  # ensure_venv <tag> <python>
  local tag=$1 py=$2 venv="$VENVS/$1" locks stamp want
  read -ra locks <<<"$(locks_for "$tag")"
  want=$({ "$py" -VV; cat "${locks[@]}"; } | sha256sum | cut -c1-16)
  stamp="$venv/.locks-installed"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
  log "$tag: installing ${locks[*]} into $venv"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  for lock in "${locks[@]}"; do
    # Wheels only: a dependency that would compile here lacks a wheel for this
    # interpreter and must be pinned to a release that has one (requirements/*.in).
    "$venv/bin/python" -m pip install -q --require-hashes --only-binary :all: -r "$lock"
  done
  echo "$want" >"$stamp"
}

if [ $# -gt 0 ]; then wanted=" $* "; else wanted=""; fi
passed=() failed=() skipped=() times=()
while IFS=$'\t' read -r tag py; do
  if [ -n "$wanted" ] && [[ $wanted != *" $tag "* ]]; then continue; fi
  if [ -z "$py" ]; then
    log "$tag: SKIPPED (no such interpreter on this machine)"; skipped+=("$tag"); continue
  fi
  whl=
  for w in "$DIST"/ferrule-*.whl; do  # ferrule-VER-PYTAG-ABITAG-PLAT.whl: the ABI tag is $tag
    if [ -e "$w" ] && [ "$(basename "$w" | cut -d- -f4)" = "$tag" ]; then whl=$w; break; fi
  done
  if [ -z "$whl" ]; then
    log "$tag: FAILED: no $tag wheel in dist/ (make dist)"; failed+=("$tag"); continue
  fi
  start=$SECONDS
  ensure_venv "$tag" "$py"
  vpy="$VENVS/$tag/bin/python"
  "$vpy" -m pip install -q --force-reinstall --no-deps "$whl"
  env=(FERRULE_WHEEL="$whl")
  if [ "$tag" = cp313t ]; then env+=(PYTHON_GIL=0 FERRULE_STRESS=1); fi
  log "$tag: $("$vpy" -c 'import sys; print(sys.version.split()[0])') with $(basename "$whl")"
  # The package under test is the installed wheel, never the sources in python/.
  where=$(env "${env[@]}" "$vpy" -c 'import ferrule; print(ferrule.__file__)')
  [[ $where == "$VENVS/$tag/"* ]] || { log "$tag: ferrule imports from $where"; failed+=("$tag"); continue; }
  if env "${env[@]}" "$vpy" -m pytest -q -p no:cacheprovider tests benches --benchmark-disable; then
    passed+=("$tag")
    times+=("$tag passed in $((SECONDS - start)) s")
  else
    failed+=("$tag")
    times+=("$tag FAILED after $((SECONDS - start)) s")
  fi
done < <(python3 scripts/pythons.py)

for t in "${times[@]}"; do log "$t"; done
log "passed: ${passed[*]:-none}; failed: ${failed[*]:-none}; skipped (not on this machine): ${skipped[*]:-none}"
[ ${#failed[@]} -eq 0 ]
