"""Tests vendored from CPython (PSF License Agreement, see LICENSE here), run against
ferrule by the ``tests/test_*_cpython.py`` adapters."""
