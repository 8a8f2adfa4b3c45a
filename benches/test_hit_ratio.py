"""The hit-ratio replay (benches/hit_ratio.py) in its `--quick` form, so that the smoke
run of the benchmarks (`pytest benches --benchmark-disable`) keeps the script working.
It asserts only what holds for any correct cache, plus the one behaviour the script is
there to show (a scan flushes LRU, not TinyLFU); the figures themselves are measured by
running the script.
"""

from __future__ import annotations

import hit_ratio  # benches/ is on sys.path (pytest prepends a test file's directory)


def test_quick_replay_runs_every_cache() -> None:
    rows = hit_ratio.main(["--quick"])
    assert [t.name for t, _ in rows] == ["zipf", "scan", "loop"]
    for trace, ratios in rows:
        opt = ratios["OPT (Belady)"]
        assert opt is not None
        for name, r in ratios.items():
            assert r is None or 0.0 <= r <= opt + 1e-9, (trace.name, name, r)
    by = {t.name: r for t, r in rows}
    assert by["scan"]["ferrule tinylfu"] > by["scan"]["ferrule lru"]  # type: ignore[operator]
    assert by["zipf"]["ferrule tinylfu"] > by["zipf"]["ferrule lru"]  # type: ignore[operator]
