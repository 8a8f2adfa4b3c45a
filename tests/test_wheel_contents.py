"""The wheel holds the package and nothing else: every file of python/ferrule (the
modules, the ``_native.pyi`` stubs, ``py.typed``, the Lua scripts), one compiled
extension for the wheel's interpreter, and the dist-info maturin writes.

The wheel read is ``$FERRULE_WHEEL`` (scripts/matrix.sh names the one installed for the
run, so every interpreter's wheel is checked), else this interpreter's wheel in dist/
(`make dist`) or target/wheels. Outside CI a checkout without one skips; in CI a missing
wheel fails.
"""

from __future__ import annotations

import email.parser
import os
import re
import sys
import sysconfig
import zipfile
from pathlib import Path

import ferrule
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "ferrule"
# ferrule-0.1.0-cp313-cp313t-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
WHEEL_NAME = re.compile(
    r"^ferrule-(?P<version>[^-]+)-(?P<python>cp\d+)-(?P<abi>cp\d+t?)-(?P<platform>[^-]+)\.whl$"
)
SUPPORTED = ("3.10", "3.11", "3.12", "3.13")


def this_abi() -> str:
    t = "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""
    return f"cp{sys.version_info[0]}{sys.version_info[1]}{t}"


def find_wheel() -> Path | None:
    named = os.environ.get("FERRULE_WHEEL")
    if named:
        return Path(named)
    for d in (ROOT / "dist", ROOT / "target" / "wheels"):
        for w in sorted(d.glob("ferrule-*.whl")):
            m = WHEEL_NAME.match(w.name)
            if m and m["abi"] == this_abi():
                return w
    return None


@pytest.fixture(scope="module")
def wheel() -> Path:
    w = find_wheel()
    if w is None:
        if os.environ.get("CI"):
            pytest.fail(f"no {this_abi()} wheel in dist/ or target/wheels: run make dist")
        pytest.skip(f"no {this_abi()} wheel in dist/ or target/wheels (make dist)")
    assert w.is_file(), w
    return w


def source_files() -> set[str]:
    """python/ferrule as the wheel must hold it: everything but build and cache debris."""
    files = set()
    for p in PACKAGE.rglob("*"):
        if p.is_dir() or "__pycache__" in p.parts or p.suffix in (".so", ".pyc"):
            continue
        files.add(p.relative_to(PACKAGE.parent).as_posix())
    return files


def test_name_tags_are_this_version_and_manylinux2014(wheel: Path) -> None:
    m = WHEEL_NAME.match(wheel.name)
    assert m, wheel.name
    assert m["version"] == ferrule.__version__
    assert m["abi"].rstrip("t") == m["python"]
    assert "manylinux_2_17_x86_64" in m["platform"].split("."), m["platform"]


def test_holds_the_package_the_stubs_and_nothing_stray(wheel: Path) -> None:
    m = WHEEL_NAME.match(wheel.name)
    assert m
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    dist_info = f"ferrule-{m['version']}.dist-info/"
    native = [n for n in names if n.startswith("ferrule/_native.") and n.endswith(".so")]
    assert native == [f"ferrule/_native.cpython-{m['abi'][2:]}-x86_64-linux-gnu.so"]
    assert "ferrule/_native.pyi" in names
    assert "ferrule/py.typed" in names
    package = {n for n in names if not n.startswith(dist_info)} - set(native)
    assert package == source_files()
    meta = {n.removeprefix(dist_info) for n in names if n.startswith(dist_info)}
    sboms = {n for n in meta if re.fullmatch(r"sboms/[\w.-]+\.json", n)}
    assert meta - sboms == {"METADATA", "WHEEL", "RECORD", "licenses/LICENSE"}


def test_native_module_matches_this_interpreter_when_installed_from_it(wheel: Path) -> None:
    m = WHEEL_NAME.match(wheel.name)
    assert m
    if m["abi"] != this_abi():
        pytest.skip(f"{wheel.name} is not for {this_abi()}")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    assert Path(ferrule._native.__file__).name == f"_native{suffix}"


def test_metadata_names_every_supported_version_and_free_threading(wheel: Path) -> None:
    m = WHEEL_NAME.match(wheel.name)
    assert m
    with zipfile.ZipFile(wheel) as z:
        metadata = email.parser.HeaderParser().parsestr(
            z.read(f"ferrule-{m['version']}.dist-info/METADATA").decode()
        )
        wheel_file = z.read(f"ferrule-{m['version']}.dist-info/WHEEL").decode()
    assert metadata["Name"] == "ferrule"
    assert metadata["Version"] == ferrule.__version__
    assert metadata["Requires-Python"] == ">=3.10"
    classifiers = set(metadata.get_all("Classifier", []))
    for version in SUPPORTED:
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert "Programming Language :: Python :: Free Threading :: 2 - Beta" in classifiers
    assert "Typing :: Typed" in classifiers
    urls = dict(u.partition(", ")[::2] for u in metadata.get_all("Project-URL", []))
    assert set(urls) == {"Documentation", "Changelog"}
    for path in urls.values():
        assert (ROOT / path).is_file(), path
    assert metadata["Keywords"]
    assert "Root-Is-Purelib: false" in wheel_file
    tags = {t.split(": ", 1)[1] for t in wheel_file.splitlines() if t.startswith("Tag: ")}
    assert tags == {f"{m['python']}-{m['abi']}-{p}" for p in m["platform"].split(".")}
