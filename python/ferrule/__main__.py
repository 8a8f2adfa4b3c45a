"""``python -m ferrule``: a short demo of every part, with throughput figures."""

from __future__ import annotations

import importlib

import ferrule

# One module per part under ferrule._demos, run in this order.
STEPS = (
    "cache",
    "ratelimit",
    "queue",
    "registry",
    "bus",
    "resilience",
    "metrics",
    "health",
    "resources",
    "redis",
)


def main() -> None:
    print(f"ferrule {ferrule.__version__}")
    for step in STEPS:
        importlib.import_module(f"ferrule._demos.{step}").run()


if __name__ == "__main__":
    main()
