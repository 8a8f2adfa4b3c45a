"""Steps of ``python -m ferrule``: one module per part, each with a ``run()``."""

from __future__ import annotations


def rate(n: int, seconds: float) -> str:
    """Throughput as text."""
    return f"{n / seconds / 1e6:.2f} M ops/s" if seconds > 0 else "n/a"
