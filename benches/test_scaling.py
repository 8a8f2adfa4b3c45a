"""The scaling script (benches/scaling.py) in its `--quick` form, so that the smoke run
of the benchmarks (`pytest benches --benchmark-disable`) keeps every row working on
every interpreter. Nothing about the ratios is asserted: they are measured by running
the script on free-threaded 3.13t (`make scaling`)."""

from __future__ import annotations

import re

import pytest
import scaling  # benches/ is on sys.path (pytest prepends a test file's directory)


def test_quick_run_prints_a_row_per_workload(capsys: pytest.CaptureFixture[str]) -> None:
    assert scaling.main(["--quick"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0].removeprefix("| ") for r in rows] == [
        row.name for row in scaling.ROWS
    ]
    ratio = r"\d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\)"
    for r in rows:
        cells = r.strip("|").split(" | ")
        assert len(cells) == 6, r
        for cell in (cells[1], cells[2], cells[4], cells[5]):
            assert re.fullmatch(ratio, cell.strip()), (r, cell)
