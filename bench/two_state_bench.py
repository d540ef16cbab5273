"""Two-state latency table on a weight-bandwidth-bound model: fidelity with and without cold cells, and the rule.

Run from the repository root, on one core: `OMP_NUM_THREADS=1 taskset -c 1 python bench/two_state_bench.py`
(defaults: torchvision:resnet18 at 1x3x32x32, 1 thread, 20 held-out variants, seeds 0 and 1). Writes
bench/results/two_state.json.

For each seed, one profile measures the two-state table (warm and cold cells, `cold="auto"`); a second profile
from the same measurement cache builds the warm-only table (`cold="never"`, what edgeprune did before), so both
tables are calibrated and scored against the very same whole-model timings: their fidelity differs only by the
cold cells. Then every state rule below is re-scored from the two-state table alone (its calibration points and
each held-out variant's warm and cold Σ cells): the rule is re-applied, the calibration chosen again, the
held-out variants predicted. The rule edgeprune uses was picked on seed 0; seed 1 checks it.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULES = {  # name -> (warm_below, cold_above) in units of the last-level cache; None: one state throughout
    "warm only": None, "cold only": (0.0, 0.0),
    "switch at 0.5 LLC": (0.5, 0.5), "switch at 0.75 LLC": (0.75, 0.75), "switch at 1.0 LLC": (1.0, 1.0),
    "switch at 1.25 LLC": (1.25, 1.25),
    "blend 0.5-1.0 LLC": (0.5, 1.0), "blend 0.5-1.5 LLC": (0.5, 1.5), "blend 0.75-1.25 LLC": (0.75, 1.25),
}


def share(rule, weight_bytes: float, llc: int) -> float:
    if rule is None:
        return 0.0
    lo, hi = rule
    ratio = weight_bytes / llc
    if hi <= lo:
        return 1.0 if ratio > lo else 0.0
    return min(1.0, max(0.0, (ratio - lo) / (hi - lo)))


def rescore(table, rule) -> dict:
    """Calibrate and score the table's held-out variants as if `rule` picked the state."""
    from edgeprune.latency.fidelity import choose_calibration, error_figures
    from edgeprune.latency.table import apply_calibration

    llc = table.memory["llc_bytes"]

    def features(f: dict) -> dict:
        a = share(rule, f["weight_bytes"], llc)
        # the on-step / other split of Σ cells is stored in the table's own state only: not re-mixed per rule
        rest = {k: v for k, v in f.items() if k not in ("cells_on_step_ms", "cells_other_ms")}
        return dict(rest, cells_ms=(1 - a) * f["cells_warm_ms"] + a * f["cells_cold_ms"], cold_share=a)

    points = table.memory["calibration_points"]
    cal = choose_calibration(features(points[0]["features"]), points[0]["measured_ms"],
                             [features(p["features"]) for p in points[1:]], [p["measured_ms"] for p in points[1:]])
    variants = table.fidelity["variants"]
    predicted = [apply_calibration(cal, features(v["features"])) for v in variants]
    measured = [v["measured_ms"] for v in variants]
    out = error_figures(predicted, measured)
    out.update(calibration=cal["kind"], calibration_choice_mape=cal.get("choice_mape"))
    for aligned, name in ((True, "aligned"), (False, "arbitrary")):
        pick = [i for i, v in enumerate(variants) if v["aligned"] == aligned]
        out[name] = error_figures([predicted[i] for i in pick], [measured[i] for i in pick])
    return out


def summary(result, wall_s: float) -> dict:
    table = result.table
    fid = table.fidelity
    prof = table.profile
    return {
        "format_version": table.to_dict()["format_version"], "cells": len(table.cells),
        "cold_cells": prof.get("cold_cells", 0), "calibration": {k: v for k, v in table.calibration.items()},
        "fidelity": {k: v for k, v in fid.items() if k not in ("variants", "macs", "macs_arbitrary")},
        "macs": fid.get("macs"),
        "profile_s": {"wall": wall_s, "cells_total": prof.get("table_s"), "cold_cells": prof.get("cold_s", 0.0),
                      "variants_export": prof.get("variants_export_s"), "models": prof.get("models_s")},
        "memory": {k: v for k, v in table.memory.items() if k != "calibration_points"},
        "variants": [{k: v[k] for k in ("aligned", "measured_ms", "predicted_ms", "macs_predicted_ms")}
                     | {"weight_bytes": v["features"].get("weight_bytes"),
                        "cells_warm_ms": v["features"].get("cells_warm_ms", v["features"]["cells_ms"]),
                        "cells_cold_ms": v["features"].get("cells_cold_ms")} for v in fid.get("variants", [])],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--input-shape", default="1x3x32x32")
    parser.add_argument("--variants", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--cache", help="measurement cache (default: a fresh temporary one)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "two_state.json"))
    parser.add_argument("--note", default="", help="how the machine was while this ran (recorded)")
    args = parser.parse_args()

    from edgeprune.devices import load_registry, open_device
    from edgeprune.latency.build import COLD_ABOVE, WARM_BELOW, ProfileOptions, profile_model
    from edgeprune.latency.cache import MeasurementCache
    from edgeprune.models import load_model

    shape = tuple(int(x) for x in args.input_shape.split("x"))
    loaded = load_model(args.model, input_shape=shape)
    tmp = tempfile.TemporaryDirectory(prefix="edgeprune-two-state-")
    cache = MeasurementCache(args.cache or Path(tmp.name) / "cache.sqlite")
    runs = []
    try:
        with open_device("cpu", None, {}, load_registry()) as session:
            facts = session.facts
            for seed in args.seeds:
                row = {"seed": seed}
                for cold in ("auto", "never"):
                    # the warm-only table reuses every timing of the two-state one (any machine state)
                    options = ProfileOptions(threads=1, variants=args.variants, seed=seed, cold=cold,
                                             state_tolerance=0.15 if cold == "auto" else 100.0)
                    started = time.time()
                    result = profile_model(loaded, session.spec, facts, session.target, options, cache)
                    row["two_state" if cold == "auto" else "warm_only"] = summary(result, time.time() - started)
                    if cold == "auto":
                        two_state = result.table
                    print(f"seed {seed} cold={cold}: {time.time() - started:.0f} s, within ±10 % "
                          f"{result.table.fidelity.get('within_10')}", flush=True)
                if two_state.two_state:
                    row["rules"] = {name: rescore(two_state, rule) for name, rule in RULES.items()}
                runs.append(row)
    finally:
        cache.close()
        tmp.cleanup()
    out = {"bench": "two_state", "model": args.model, "input_shape": list(shape), "threads": 1,
           "variants": args.variants, "host": platform.node(), "cpu": facts.get("cpu_model"),
           "llc_bytes": facts.get("llc_bytes"), "llc_source": facts.get("llc_source"),
           "rule": {"warm_below": WARM_BELOW, "cold_above": COLD_ABOVE},
           "note": args.note, "runs": runs}
    Path(args.out).write_text(json.dumps(out, indent=1, default=float) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
