"""Turn a pytest-benchmark JSON file into the README's tables: ns per operation and the
ratio to ferrule in the same group (the machine is shared, so ratios are what count).
A benchmark that runs a batch per call records the batch size as extra_info["ops"].

    .venv/bin/python -m pytest benches/test_cache.py --benchmark-only --benchmark-json=/tmp/b.json
    .venv/bin/python benches/report.py /tmp/b.json --per-call 10000
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("json_file")
    ap.add_argument("--per-call", type=int, default=1, help="operations per benchmark call")
    ap.add_argument("--stat", default="median", choices=["min", "median", "mean"])
    a = ap.parse_args()
    with open(a.json_file) as f:
        data = json.load(f)
    groups: dict[str, list[tuple[str, float, dict[str, object]]]] = defaultdict(list)
    for b in data["benchmarks"]:
        name = b["param"] if b.get("param") else b["name"]
        impl = name.split("-")[0] if "-" in name else name
        impl = b["params"].get("impl", impl) if b.get("params") else impl
        extra = dict(b.get("extra_info", {}))
        ops = int(extra.pop("ops", a.per_call))
        groups[b["group"]].append((impl, b["stats"][a.stat] / ops, extra))
    for group in sorted(groups):
        rows = groups[group]
        base = next((t for i, t, _ in rows if i == "ferrule"), None)
        print(f"\n{group} ({a.stat}, ns/op; x = time / ferrule's)\n")
        print("| impl | ns/op | x ferrule | extra |")
        print("| --- | ---: | ---: | --- |")
        for impl, t, extra in sorted(rows, key=lambda r: r[1]):
            ns = t * 1e9
            rel = f"{t / base:.2f}" if base else "-"
            ex = ", ".join(f"{k}={v}" for k, v in extra.items())
            print(f"| {impl} | {ns:.0f} | {rel} | {ex} |")


if __name__ == "__main__":
    main()
