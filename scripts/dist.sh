#!/usr/bin/env bash
# `make dist`: the release files in dist/, built from this checkout:
#   - one manylinux2014 (manylinux_2_17) x86_64 wheel per supported CPython found on this
#     machine (scripts/pythons.py): cp310, cp311, cp312, cp313 with the GIL and the
#     free-threaded cp313t (the interpreter scripts/free-threaded.sh builds);
#   - the sdist.
# A supported version that is not on the machine is reported as skipped, and its wheel
# is missing from dist/: nothing is claimed for it.
#
# No container: maturin links through zig (the `ziglang` package, requirements/dist.txt)
# against glibc 2.17's symbols, whatever glibc this machine has (a plain build here links
# against the machine's glibc and can only be tagged manylinux_2_34 or newer). Each wheel
# is then checked with `auditwheel show`: its tag must be manylinux_2_17 or older and it
# may need no library outside the manylinux policy. Each interpreter has its own cargo
# target directory (target/dist/<tag>), so a rebuild with nothing changed only repackages.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV="$ROOT/.venv"
OUT="$ROOT/dist"
MAX_GLIBC_MINOR=17  # manylinux2014 == manylinux_2_17

log() { printf '[dist] %s\n' "$*" >&2; }

# maturin runs `python3 -m ziglang` when no `zig` is on PATH: the venv's python3 has it.
export PATH="$VENV/bin:$PATH"
python3 -m ziglang version >/dev/null || { log "ziglang missing from .venv (make dist installs requirements/dist.txt)"; exit 1; }

# On a fresh machine this compiles CPython 3.13t once (a few minutes), as `make test` did.
bash scripts/free-threaded.sh python >/dev/null

rm -rf "$OUT"
mkdir -p "$OUT"
built=() skipped=()
while IFS=$'\t' read -r tag py; do
  if [ -z "$py" ]; then
    log "$tag: SKIPPED (no such interpreter on this machine)"
    skipped+=("$tag")
    continue
  fi
  log "$tag: building with $py"
  start=$SECONDS
  CARGO_TARGET_DIR="$ROOT/target/dist/$tag" \
    maturin build --release --zig --compatibility manylinux2014 -q -i "$py" -o "$OUT" >&2
  log "$tag: built in $((SECONDS - start)) s"
  built+=("$tag")
done < <(python3 scripts/pythons.py)

log "sdist"
maturin sdist -o "$OUT" >/dev/null

# Every wheel: the tag auditwheel derives from the symbols it links, and no external
# library beyond the policy's (auditwheel names any it finds).
status=0
for whl in "$OUT"/*.whl; do
  report=$(auditwheel show "$whl" 2>&1) || { echo "$report" >&2; log "auditwheel failed on $whl"; status=1; continue; }
  platform=$(grep -oE '"(manylinux_[0-9]+_[0-9]+|linux)_x86_64"' <<<"$report" | head -n1 | tr -d '"')
  minor=$(sed -nE 's/^manylinux_2_([0-9]+)_x86_64$/\1/p' <<<"$platform")
  if [ -z "$minor" ] || [ "$minor" -gt "$MAX_GLIBC_MINOR" ]; then
    echo "$report" >&2
    log "$(basename "$whl"): auditwheel says ${platform:-no manylinux tag}, want manylinux_2_$MAX_GLIBC_MINOR or older"
    status=1
  elif grep -q "external shared libraries are required" <<<"$report"; then
    echo "$report" >&2
    log "$(basename "$whl"): needs libraries outside the manylinux policy"
    status=1
  else
    log "$(basename "$whl"): auditwheel: $platform, system libraries only"
  fi
done

log "dist/:"
for f in "$OUT"/*; do
  printf '  %-80s %6d KiB\n' "$(basename "$f")" $(( $(stat -c %s "$f") / 1024 )) >&2
done
log "built: ${built[*]:-none}; skipped (not on this machine): ${skipped[*]:-none}"
exit $status
