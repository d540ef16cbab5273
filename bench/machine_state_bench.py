"""Does a profile notice a busy machine, and does re-measuring stale cells keep the table right?

The failure this guards against: cells cached on an idle machine, then a profile on a busy one times the dense
model and the held-out variants under load; the table mixes two machine states and is wrong by the load factor
without a word. Three steps on resnet18 at 1×3×80×80, 1 thread, one fresh cache:

1. the reference cell read 8 times on the idle machine, then 8 times with two busy-looping processes competing
   for the 2 cores (how far a state moves; what `--state-tolerance` must separate);
2. an idle profile (fills the cache);
3. under the same competing load, a profile with other held-out variants (seed 1), twice, interleaved: with
   `state_tolerance=100` (the old behaviour: reuse every cached cell and the cached dense timing) and with the
   default (cells and whole models from another state are measured again). Fidelity of each, and what each
   printed.

Run from the repository root: `python bench/machine_state_bench.py`. Writes bench/results/machine_state.json and
docs/results/machine_state.md.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL, SHAPE = "torchvision:resnet18", (1, 3, 80, 80)


def readings(n: int, table_path: Path, cache: Path) -> list:
    """The reference cell's reading, `n` times (one small device job each)."""
    import edgeprune
    from edgeprune.devices import load_registry, open_device
    from edgeprune.latency.build import Measurer, ProfileOptions
    from edgeprune.latency.cache import MeasurementCache

    table = edgeprune.load_table(table_path)
    options = ProfileOptions()
    cell = next(iter(table.cells.values()))
    sig = table.signatures[cell["signature"]]["signature"]
    probe = {"key": "probe", "kind": cell["kind"], "signature": sig, "sig_key": cell["signature"],
             "c_in": cell["c_in"], "c_out": cell["c_out"]}
    out = []
    measurements = MeasurementCache(cache)
    try:
        with open_device("cpu", None, {}, load_registry()) as session, \
                tempfile.TemporaryDirectory() as tmp:
            measurer = Measurer(session.target, measurements, table.fingerprint, table.runtime, options.estimator,
                                options.model_estimator, Path(tmp))
            for _ in range(n):
                got = measurer.probe([probe], dict(probe, key="reference"))
                out.append(next(iter(got.values()))["reference_ms"])
    finally:
        measurements.close()
    return out


def profile(out: Path, cache: Path, seed: int, tolerance: float) -> dict:
    import edgeprune

    started = time.time()
    result = edgeprune.profile(MODEL, "cpu", out, threads=1, model_args={"num_classes": 10}, input_shape=SHAPE,
                               variants=10, seed=seed, cache=cache, force=True, state_tolerance=tolerance)
    fid = result.table.fidelity
    return {"state_tolerance": tolerance, "wall_s": time.time() - started, "cached_cells": result.cached_cells,
            "measured_cells": result.measured_cells, "machine_state": result.table.profile.get("machine_state"),
            "within_10": fid.get("within_10"), "mape": fid.get("mape"), "noise_ceiling": fid.get("noise_ceiling"),
            "warnings": [w for w in result.warnings if "machine" in w or "state" in w]}


class Load:
    """Two busy-looping processes competing for the machine while the block runs."""

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        time.sleep(1.0)
        return self

    def __exit__(self, *exc):
        for proc in self.procs:
            proc.kill()
            proc.wait()


def markdown(data: dict) -> str:
    idle, busy = data["readings"]["idle"], data["readings"]["busy"]

    def spread(values):
        return f"median {statistics.median(values):.3f} ms, range {min(values):.3f}–{max(values):.3f} ms"

    lines = ["# A busy machine: reference-cell readings and a table that mixes two states", "",
             f"Measured {data['meta']['date']} on {data['meta']['machine']} with `python bench/machine_state_bench.py`"
             f" ({MODEL} at {'×'.join(map(str, SHAPE))}, 1 thread; raw: `bench/results/machine_state.json`).", "",
             "## The reference cell", "",
             f"- idle, 8 readings: {spread(idle)} (max/min {max(idle) / min(idle):.2f})",
             f"- two competing processes, 8 readings: {spread(busy)} (busy/idle medians "
             f"{statistics.median(busy) / statistics.median(idle):.2f})", "",
             "## Profiles under load with an idle cache", "",
             "| profile | cells measured / cached | stale cells / models | within ±10 % | MAPE | noise ceiling |",
             "|---|---|---|---|---|---|"]
    for name, row in data["profiles"].items():
        state = row.get("machine_state") or {}
        lines.append(f"| {name} (state_tolerance {row['state_tolerance']:g}) | {row['measured_cells']} / "
                     f"{row['cached_cells']} | {state.get('stale_cells', '—')} / {state.get('stale_models', '—')} | "
                     f"{row['within_10']:.0%} | {row['mape']:.1%} | {row['noise_ceiling']:.0%} |")
    lines += ["", "What the profiles printed:", ""]
    for name, row in data["profiles"].items():
        lines += [f"- {name}: " + ("; ".join(row["warnings"]) or "nothing about the machine")]
    return "\n".join(lines) + "\n"


def main() -> None:
    data = {"meta": {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} ({platform.machine()}, "
                     f"{__import__('os').cpu_count()} cores)", "python": sys.version.split()[0]}}
    with tempfile.TemporaryDirectory(prefix="edgeprune-state-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache.sqlite"
        data["profiles"] = {"idle": profile(tmp / "idle.json", cache, 0, 0.15)}
        data["readings"] = {"idle": readings(8, tmp / "idle.json", cache)}
        with Load():
            data["readings"]["busy"] = readings(8, tmp / "idle.json", cache)
            data["profiles"]["busy, cache reused as before"] = profile(tmp / "reuse.json", cache, 1, 100.0)
            data["profiles"]["busy, stale results re-measured"] = profile(tmp / "fresh.json", cache, 1, 0.15)
    (ROOT / "bench" / "results" / "machine_state.json").write_text(json.dumps(data, indent=1, default=str))
    (ROOT / "docs" / "results" / "machine_state.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
