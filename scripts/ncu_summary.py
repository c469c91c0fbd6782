#!/usr/bin/env python3
"""Sum an `ncu --csv --metrics gpu__time_duration.sum` log per kernel: launches, mean and total time.

python scripts/ncu_summary.py ncu.csv
"""

from __future__ import annotations

import csv
import re
import sys
from collections import defaultdict

UNIT_US = {
    "ns": 1e-3,
    "nsecond": 1e-3,
    "us": 1.0,
    "usecond": 1.0,
    "ms": 1e3,
    "msecond": 1e3,
    "s": 1e6,
    "second": 1e6,
}


def main() -> None:
    with open(sys.argv[1], newline="") as f:
        lines = f.readlines()
    # ncu prints its own messages ("==PROF== ...") and the program's output before the CSV
    start = next((i for i, s in enumerate(lines) if s.startswith('"ID"')), None)
    if start is None:
        sys.exit(f"ncu_summary: no CSV header in {sys.argv[1]}")
    rows = list(csv.DictReader(lines[start:]))
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for r in rows:
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        # short kernel name: drop template arguments and parameter lists
        name = re.sub(r"[<(].*", "", r["Kernel Name"]).replace("void ", "").strip()
        value = float(r["Metric Value"].replace(",", "")) * UNIT_US.get(r["Metric Unit"], 1.0)
        total[name] += value
        count[name] += 1
    print(f"{'kernel':40s} {'launches':>8s} {'mean us':>9s} {'total us':>10s}")
    for name in sorted(total, key=total.get, reverse=True):
        print(f"{name:40s} {count[name]:8d} {total[name] / count[name]:9.2f} {total[name]:10.1f}")


if __name__ == "__main__":
    main()
