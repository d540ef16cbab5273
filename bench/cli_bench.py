"""Publish `edgeprune --help` start-up time (the target: under 0.5 s, with no torch import).

Run from the repository root: `python bench/cli_bench.py`. Writes bench/results/cli.json.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(argv: list, runs: int) -> list:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    runs = 20
    python = wall([sys.executable, "-c", "pass"], runs)
    help_ = wall([sys.executable, "-m", "edgeprune", "--help"], runs)
    profile_help = wall([sys.executable, "-m", "edgeprune", "profile", "--help"], runs)
    imported = subprocess.run([sys.executable, "-X", "importtime", "-m", "edgeprune", "--help"], capture_output=True,
                              text=True, cwd=ROOT).stderr
    result = {
        "runs": runs,
        "python_startup_s": {"median": statistics.median(python), "max": max(python)},
        "edgeprune_help_s": {"median": statistics.median(help_), "max": max(help_)},
        "edgeprune_profile_help_s": {"median": statistics.median(profile_help), "max": max(profile_help)},
        "imports_torch": any(line.rstrip().endswith("| torch") for line in imported.splitlines()),
        "target_s": 0.5,
    }
    out = ROOT / "bench" / "results" / "cli.json"
    out.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
