"""Find the CPython interpreters ferrule supports on this machine, one per version.

    python3 scripts/pythons.py            one line per supported version: TAG<TAB>PATH,
                                          with an empty PATH where none was found
    python3 scripts/pythons.py 3.13t      the path of one (exit 1 if none)

Supported: CPython 3.10, 3.11, 3.12 and 3.13 with the GIL (tags cp310 ... cp313) and
free-threaded 3.13t (cp313t). Nothing is hard-coded to one machine: each version is
looked for, in this order, as ``pythonX.Y`` (``python3.13t``) on PATH, in every pyenv
versions directory ($PYENV_ROOT, ~/.pyenv), in /usr/local/bin and /usr/bin, and (3.13t)
where scripts/free-threaded.sh builds it. A candidate counts only if it runs, is that
version, has the GIL setting its tag says, and can make a venv with pip (Debian's
python3.X without python3.X-venv cannot); a pyenv shim is resolved to the interpreter
it runs, and a venv's interpreter to the one it was made from. Run it with any
Python 3.9+.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

VERSIONS = [("cp310", "3.10", False), ("cp311", "3.11", False), ("cp312", "3.12", False),
            ("cp313", "3.13", False), ("cp313t", "3.13", True)]  # fmt: skip

# A venv's interpreter stands for the one it was made from (a venv may lack pip).
PROBE = (
    "import sys, sysconfig, venv, ensurepip; "
    "exe = sys.executable if sys.prefix == sys.base_prefix else sys._base_executable; "
    "print(exe, '%d.%d' % sys.version_info[:2], "
    "int(bool(sysconfig.get_config_var('Py_GIL_DISABLED'))), sys.implementation.name)"
)


def free_threaded_prefix() -> str:
    """Where scripts/free-threaded.sh installs its 3.13t (same defaults as the script)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.environ.get("HOME", "/root"), ".cache"
    )
    prefix = os.environ.get("FERRULE_FT_PREFIX")
    if prefix:
        return prefix
    return max(glob.glob(os.path.join(cache, "ferrule", "cpython-3.13.*t")), default="")


def candidates(version: str, free_threaded: bool) -> list[str]:
    name = f"python{version}{'t' if free_threaded else ''}"
    found = []
    on_path = shutil.which(name)
    if on_path:
        found.append(on_path)
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")]
    for root in dict.fromkeys(r for r in roots if r):
        pattern = os.path.join(root, "versions", f"{version}.*", "bin", name)
        # Newest patch release first (3.13.10 after 3.13.9: compare as numbers).
        found += sorted(glob.glob(pattern), key=_patch, reverse=True)
    found += [f"/usr/local/bin/{name}", f"/usr/bin/{name}"]
    if free_threaded:
        prefix = free_threaded_prefix()
        if prefix:
            found.append(os.path.join(prefix, "bin", name))
    return list(dict.fromkeys(found))


def _patch(path: str) -> tuple[int, ...]:
    release = path.split(os.sep + "versions" + os.sep, 1)[-1].split(os.sep, 1)[0]
    return tuple(int(p) if p.isdigit() else -1 for p in release.split("."))


def probe(path: str, version: str, free_threaded: bool) -> str | None:
    """The real interpreter behind ``path`` if it is the one wanted, else None."""
    if not os.access(path, os.X_OK):
        return None
    try:
        out = subprocess.run(
            [path, "-c", PROBE], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    if len(out) != 4:
        return None
    exe, got, gil_disabled, impl = out
    if impl != "cpython" or got != version or gil_disabled != str(int(free_threaded)):
        return None
    return exe


def find(tag: str) -> str | None:
    for t, version, free_threaded in VERSIONS:
        if t == tag:
            for path in candidates(version, free_threaded):
                exe = probe(path, version, free_threaded)
                if exe:
                    return exe
            return None
    raise SystemExit(f"unknown interpreter tag {tag!r}: one of {[v[0] for v in VERSIONS]}")


def tag_of(name: str) -> str:
    """cp313t for '3.13t', 'cp313t' or a wheel file name's interpreter tag."""
    name = name.removeprefix("cp")
    return "cp" + name.replace(".", "")


def main(argv: list[str]) -> int:
    if argv:
        exe = find(tag_of(argv[0]))
        if exe is None:
            print(f"no CPython {argv[0]} found", file=sys.stderr)
            return 1
        print(exe)
        return 0
    for tag, _, _ in VERSIONS:
        print(f"{tag}\t{find(tag) or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
