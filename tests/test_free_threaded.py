"""The module must not turn the GIL back on when imported on a free-threaded build."""

from __future__ import annotations

import subprocess
import sys
import sysconfig

import pytest


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="GIL build")
def test_import_keeps_the_gil_disabled() -> None:
    code = "import sys, ferrule; print(sys._is_gil_enabled())"
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False", out.stderr


def test_module_declares_its_version() -> None:
    import ferrule

    assert ferrule.__version__.count(".") == 2
