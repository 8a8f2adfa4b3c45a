"""``ferrule.__version__`` is the one version: Cargo.toml's, which maturin also writes into
the package metadata (pyproject.toml declares the version dynamic)."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import ferrule

ROOT = Path(__file__).resolve().parent.parent


def cargo_version() -> str:
    """The ``version`` of Cargo.toml's ``[package]`` table (no tomllib on 3.10)."""
    text = (ROOT / "Cargo.toml").read_text()
    package = re.search(r"^\[package\]\n(.*?)(?=^\[)", text, re.M | re.S)
    assert package is not None, "Cargo.toml has no [package] table"
    version = re.search(r'^version\s*=\s*"([^"]+)"', package.group(1), re.M)
    assert version is not None, "Cargo.toml's [package] has no version"
    return version.group(1)


def test_version_is_cargo_version() -> None:
    assert ferrule.__version__ == cargo_version()


def test_version_is_the_installed_distribution_version() -> None:
    assert importlib.metadata.version("ferrule") == ferrule.__version__


def test_pyproject_takes_the_version_from_cargo() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dynamic\s*=\s*\["version"\]', text, re.M)
    assert not re.search(r"^version\s*=", text, re.M)
