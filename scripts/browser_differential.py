#!/usr/bin/env python3
"""The browser differential, larger than the suite's fixed set (tests/test_browser_diff.py): cut and
mutated files in the formats browsers draw, made in code from seeds (tests/browserdiff.py), rendered by
headless Chromium and decoded by the scanner. Prints, by kind: files, files Chromium drew with visible
content, those left unscored (each named), and the largest difference between the model's input and
Chromium's drawing where Chromium drew (0-255 levels).

    python scripts/browser_differential.py [--quick] [--json] [--seeds N] [--per-seed N] [--first-seed S]

Needs Debian's chromium and chromium-driver (scripts/install.sh installs them as root). Exit 1 when a
drawn file is left unscored."""

from __future__ import annotations

import collections
import sys
import tempfile
import time

from benchutil import REPO, emit, machine, parser

sys.path.insert(0, str(REPO))
from tests import browserdiff  # noqa: E402


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20, help="how many seeds (default 20; --quick: 2)")
    p.add_argument("--per-seed", type=int, default=300, help="files per seed (default 300)")
    p.add_argument("--first-seed", type=int, default=1000)
    args = p.parse_args()
    if not browserdiff.have_chromium():
        print("no chromium and chromedriver here: nothing measured", file=sys.stderr)
        return 2
    seeds = 2 if args.quick else args.seeds
    kinds = collections.defaultdict(lambda: {"files": 0, "drawn": 0, "unscored": 0, "compared": 0, "worst": 0.0})
    unscored: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as profile:
        driver = browserdiff.start_chromium(profile)
        try:
            for seed in range(args.first_seed, args.first_seed + seeds):
                files = browserdiff.corpus(seed, args.per_seed)
                drawn = browserdiff.drawn_by_chromium(driver, [(data, mime) for _, data, mime in files])
                for (name, data, _), rgba in zip(files, drawn, strict=True):
                    outcome = browserdiff.judge(name, data, rgba)
                    kind = kinds[name.split()[0]]
                    kind["files"] += 1
                    kind["drawn"] += outcome.drawn
                    if outcome.drawn and not outcome.scored:
                        kind["unscored"] += 1
                        unscored.append(f"seed {seed}: {name}: {outcome.said}")
                    if outcome.difference is not None:
                        kind["compared"] += 1
                        kind["worst"] = max(kind["worst"], round(outcome.difference, 1))
        finally:
            driver.quit()
    if not args.json:
        print(f"{'kind':<26}{'files':>7}{'drawn':>7}{'unscored':>10}{'compared':>10}{'worst diff':>12}")
        for name in sorted(kinds):
            k = kinds[name]
            print(f"{name:<26}{k['files']:>7}{k['drawn']:>7}{k['unscored']:>10}{k['compared']:>10}{k['worst']:>12}")
        for line in unscored:
            print("unscored:", line)
    totals = {key: sum(k[key] for k in kinds.values()) for key in ("files", "drawn", "unscored", "compared")}
    emit({"seconds": round(time.monotonic() - started, 1), **totals, "kinds": dict(kinds), "unscored_files": unscored,
          "machine": machine()}, args.json)  # fmt: skip
    return 1 if unscored else 0


if __name__ == "__main__":
    sys.exit(main())
