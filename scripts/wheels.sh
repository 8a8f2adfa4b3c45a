#!/usr/bin/env bash
# Build both wheels and prove each installs into a clean venv and works:
#   - the GIL wheel for the interpreter in .venv (`pip wheel .`, cp3xx);
#   - the free-threaded cp313t wheel (built by scripts/free-threaded.sh into target/wheels-ft).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

smoke() {  # smoke <python> <wheel>
  local py=$1 wheel=$2 venv
  venv=$(mktemp -d)
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --no-deps "$wheel"
  (cd "$venv" && "$venv/bin/python" -W error - <<'PY'
import sys, ferrule
c = ferrule.Cache(4)
for i in range(10):
    c[i] = i
assert len(c) == 4 and c[9] == 9
assert ferrule.cached(8)(lambda x: x * 2)(21) == 42
gil = getattr(sys, "_is_gil_enabled", lambda: True)()
print(f"  ok: ferrule {ferrule.__version__} on {sys.version.split()[0]}, GIL enabled: {gil}")
PY
  )
  "$venv/bin/python" -m ferrule >/dev/null
  rm -rf "$venv"
}

echo "[wheels] building the GIL wheel with pip wheel"
rm -rf target/wheels
.venv/bin/python -m pip wheel -q --no-deps -w target/wheels .
gil_wheel=$(ls target/wheels/ferrule-*.whl)
echo "[wheels] $(basename "$gil_wheel")"
smoke .venv/bin/python "$gil_wheel"

ft_wheel=$(ls target/wheels-ft/ferrule-*cp313t*.whl 2>/dev/null || true)
if [ -z "$ft_wheel" ]; then
  bash scripts/free-threaded.sh python >/dev/null
  echo "[wheels] no cp313t wheel yet: run scripts/free-threaded.sh first" >&2
  exit 1
fi
echo "[wheels] $(basename "$ft_wheel")"
smoke "$(bash scripts/free-threaded.sh python)" "$ft_wheel"
