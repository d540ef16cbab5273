"""Publish the pruning numbers: requested vs measured speedup against Torch-Pruning at the same MACs, and the
accuracy each criterion keeps without fine-tuning on a CNN trained on scikit-learn's digits.

Run from the repository root: `python bench/prune_bench.py [--threads 1 2] [--models resnet18 ...]`.
Writes bench/results/prune.json and docs/results/prune.md. Every speedup of one (model, threads, budget) row
comes from one interleaved measurement of the dense model, edgeprune's result and both Torch-Pruning baselines,
with the profile's estimator (median of per-pass minima, lower of two rounds).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODELS = {
    "resnet18": ("torchvision:resnet18", {}, (1, 3, 224, 224)),
    "mobilenet_v2": ("torchvision:mobilenet_v2", {}, (1, 3, 224, 224)),
    "vit_b_16": ("torchvision:vit_b_16", {"image_size": 112}, (1, 3, 112, 112)),
}
BUDGETS = (1.25, 1.5, 2.0, 3.0)
CRITERIA = ("l1", "l2", "bn_scale", "taylor", "random")
MIN_KEEP = 0.3  # edgeprune's default; the accuracy part also runs the former default 0.1 beside it
ACCURACY_MIN_KEEP = (0.1, 0.3)


def table_for(name: str, threads: int, cache: Path):
    """The profile bench's table when it exists (same model, threads); otherwise profile now (10 variants)."""
    import edgeprune

    spec, args, shape = MODELS[name]
    path = RESULTS / "tables" / f"torchvision_{name}-t{threads}.json"
    if path.exists():
        return edgeprune.load_table(path), path
    print(f"   profiling {name} @ {threads} thread(s)", flush=True)
    result = edgeprune.profile(spec, "cpu", path, threads=threads, model_args=args, input_shape=shape, variants=10,
                               cache=cache, force=True)
    return result.table, path


def tp_baseline(module, example, macs_keep: float, global_pruning: bool):
    """Torch-Pruning's own MetaPruner (group L2 magnitude, round_to=8), ratio bisected to keep `macs_keep` MACs."""
    import torch_pruning as tp

    from edgeprune.pruning.groups import output_layers

    dense_macs, _ = tp.utils.count_ops_and_params(module, example)

    def pruned(ratio):
        import torch

        from edgeprune.pruning.space import refresh_attributes

        clone = copy.deepcopy(module)
        # as Torch-Pruning's own ViT example does: tell it the attention heads so the hidden size stays divisible
        heads = {m: m.num_heads for m in clone.modules() if isinstance(m, torch.nn.MultiheadAttention)}
        pruner = tp.pruner.MetaPruner(clone, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, global_pruning=global_pruning, round_to=8,
                                      ignored_layers=output_layers(clone), num_heads=heads)
        pruner.step()
        refresh_attributes(clone)
        macs, _ = tp.utils.count_ops_and_params(clone, example)
        return clone, macs / dense_macs

    lo, hi = 0.0, 0.9
    best = pruned(hi)
    for _ in range(7):  # ratio to within 0.007: finer than round_to=8 can follow
        mid = (lo + hi) / 2
        clone, keep = pruned(mid)
        if keep > macs_keep:
            lo = mid
        else:
            hi, best = mid, (clone, keep)
    return best


def speed_rows(name: str, threads: int, cache: Path, session) -> list:
    import torch_pruning as tp

    import edgeprune
    from edgeprune.latency.cache import MeasurementCache
    from edgeprune.models import load_model
    from edgeprune.pruning.engine import measure_modules
    from edgeprune.pruning.solver import UnreachableBudgetError

    spec, args, shape = MODELS[name]
    table, table_path = table_for(name, threads, cache)
    loaded = load_model(spec, model_args=args, input_shape=shape)
    example = loaded.example_inputs()
    rows = []
    measurements = MeasurementCache(cache)
    try:
        for budget in BUDGETS:
            t0 = time.time()
            try:
                ours = edgeprune.prune(load_model(spec, model_args=args, input_shape=shape), table, None,
                                       budget=f"{budget}x", criterion="l2", cache=cache, min_keep=MIN_KEEP)
            except UnreachableBudgetError as err:  # recorded, not fatal: the table says how far this model goes
                rows.append({"model": name, "threads": threads, "budget_x": budget, "table_id": table.id,
                             "min_keep": MIN_KEEP, "unreachable": err.message})
                print(f"   {budget}x: unreachable — {err.message}", flush=True)
                continue
            solve_s = time.time() - t0
            macs_keep = ours.macs / ours.dense_macs
            uniform, uniform_keep = tp_baseline(loaded.module, example, macs_keep, global_pruning=False)
            glob, glob_keep = tp_baseline(loaded.module, example, macs_keep, global_pruning=True)
            timed = measure_modules(loaded, {"dense": loaded.module, "edgeprune": ours.module, "tp_uniform": uniform,
                                             "tp_global": glob}, table, session, measurements)
            dense_ms = timed["dense"]["ms"]
            row = {"model": name, "threads": threads, "budget_x": budget, "table_id": table.id, "min_keep": MIN_KEEP,
                   "table_fidelity_within_10": table.fidelity.get("within_10"),
                   "dense_ms": dense_ms, "predicted_ms": ours.predicted_ms,
                   "dense_predicted_ms": ours.dense_predicted_ms,
                   "edgeprune_rounds": len(ours.rounds), "edgeprune_solve_s": solve_s,
                   "edgeprune_inner_measured": ours.measured,
                   "macs_keep": {"edgeprune": macs_keep, "tp_uniform": uniform_keep, "tp_global": glob_keep},
                   "ms": {k: v["ms"] for k, v in timed.items()},
                   "rounds_ms": {k: v["rounds"] for k, v in timed.items()},
                   "speedup": {k: dense_ms / v["ms"] for k, v in timed.items() if k != "dense"},
                   "params": {k: tp.utils.count_ops_and_params(m, example)[1] for k, m in
                              (("dense", loaded.module), ("edgeprune", ours.module), ("tp_uniform", uniform),
                               ("tp_global", glob))}}
            row["meets_097"] = row["speedup"]["edgeprune"] >= 0.97 * budget
            rows.append(row)
            s = row["speedup"]
            pred = ours.dense_predicted_ms / ours.predicted_ms
            print(f"   {budget}x: edgeprune {s['edgeprune']:.2f}x (pred {pred:.2f}x, {len(ours.rounds)} round(s))  "
                  f"TP uniform {s['tp_uniform']:.2f}x  TP global {s['tp_global']:.2f}x  at MACs {macs_keep:.0%}",
                  flush=True)
    finally:
        measurements.close()
    return rows


def accuracy_rows(threads: int, cache: Path, tmp: Path) -> dict:
    """Train resnet18 on digits (80×80), profile it, prune to each budget per criterion, test accuracy, no FT."""
    import torch
    from edgeprune.exporters.onnx import export_onnx

    import edgeprune
    from edgeprune.data import digits, load_samples
    from edgeprune.examples import DIGITS_ARGS, DIGITS_SHAPE, DIGITS_SPEC, accuracy, train_digits
    from edgeprune.latency.blocks import extract_blocks
    from edgeprune.models import load_model
    from edgeprune.pruning.batchnorm import recalibrate_batchnorm

    trained = train_digits(epochs=4)
    weights = tmp / "digits.pt"
    torch.save(trained.module.state_dict(), weights)
    print(f"   digits resnet18: test accuracy {trained.accuracy:.3f} after {trained.train_s:.0f} s", flush=True)
    table_path = tmp / f"digits-t{threads}.json"
    edgeprune.profile(DIGITS_SPEC, "cpu", table_path, threads=threads, weights=str(weights), model_args=DIGITS_ARGS,
                      input_shape=DIGITS_SHAPE, variants=0, cache=cache, force=True)
    table = edgeprune.load_table(table_path)
    dense_proto, _ = export_onnx(trained.module, (torch.zeros(DIGITS_SHAPE),), tmp / "dense.onnx")
    dense_blocks = extract_blocks(dense_proto).blocks
    test = digits(DIGITS_SHAPE, "test")
    # What `--calib digits` gives prune: 64 training images in batches of 8 (labels unused by re-estimation).
    calib = [(x,) for x, _ in load_samples("digits", DIGITS_SHAPE, "vision").batches(8, 64)]

    def with_bn(module) -> float:
        recalibrate_batchnorm(module, calib)
        return accuracy(module, test)

    out = {"dense_accuracy": trained.accuracy, "train_s": trained.train_s, "epochs": trained.epochs, "rows": [],
           "bn_calibration_samples": 64}
    for budget in BUDGETS:
        for min_keep in ACCURACY_MIN_KEEP:
            for criterion in CRITERIA:
                loaded = load_model(DIGITS_SPEC, weights=str(weights), model_args=DIGITS_ARGS,
                                    input_shape=DIGITS_SHAPE)
                res = edgeprune.prune(loaded, table_path, None, budget=f"{budget}x", criterion=criterion,
                                      calib="digits" if criterion == "taylor" else None, calib_samples=64,
                                      measure=False, bn_recalibrate=False, min_keep=min_keep)
                acc = accuracy(res.module, test)
                acc_bn = with_bn(res.module)  # the same widths: magnitude scores do not read the data
                out["rows"].append({"budget_x": budget, "criterion": criterion, "min_keep": min_keep,
                                    "accuracy": acc, "accuracy_bn": acc_bn,
                                    "predicted_speedup": res.dense_predicted_ms / res.predicted_ms,
                                    "macs_keep": res.macs / res.dense_macs})
                print(f"   {budget}x {criterion} min_keep {min_keep}: accuracy {acc:.3f}, with BN re-estimated "
                      f"{acc_bn:.3f}", flush=True)
        # Torch-Pruning's magnitude baselines at the MACs edgeprune's l2 result kept (at the default min_keep)
        keep = next(r["macs_keep"] for r in out["rows"] if r["budget_x"] == budget and r["criterion"] == "l2"
                    and r["min_keep"] == MIN_KEEP)
        loaded = load_model(DIGITS_SPEC, weights=str(weights), model_args=DIGITS_ARGS, input_shape=DIGITS_SHAPE)
        for label, global_pruning in (("tp_uniform", False), ("tp_global", True)):
            module, got = tp_baseline(loaded.module, loaded.example_inputs(), keep, global_pruning)
            acc = accuracy(module, test)
            acc_bn = with_bn(module)
            proto, _ = export_onnx(module, loaded.example_inputs(), tmp / "tp.onnx")
            speedup = table.predict_ms(dense_blocks) / table.predict_ms(extract_blocks(proto).blocks)
            out["rows"].append({"budget_x": budget, "criterion": label, "accuracy": acc, "accuracy_bn": acc_bn,
                                "macs_keep": got, "predicted_speedup": speedup})
            print(f"   {budget}x {label} at MACs {got:.0%}: accuracy {acc:.3f}, BN {acc_bn:.3f}", flush=True)
    return out


def markdown(data: dict) -> str:
    meta = data["meta"]
    out = ["# Latency-budget pruning: requested vs measured speedup (ONNX Runtime CPU EP, this repository's VM)",
           "",
           f"Measured {meta['date']} on {meta['machine']} with `python bench/prune_bench.py`; raw data in "
           "`bench/results/prune.json`. Dense, edgeprune and both Torch-Pruning baselines are exported and timed "
           "interleaved in one run (median of per-pass minima, lower of two rounds). Torch-Pruning baselines: its "
           "MetaPruner with group L2 magnitude and round_to=8, pruning ratio bisected to the MACs edgeprune's "
           "result kept. edgeprune: criterion l2, knapsack on the profile's table, measure-and-correct on.", "",
           "| model | threads | min_keep | requested | edgeprune measured | ≥ 0.97× requested | TP uniform "
           "| TP global | MACs kept | rounds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["speed"]:
        if r.get("unreachable"):
            out.append(f"| {r['model']} | {r['threads']} | {r.get('min_keep', 0.1):g} | {r['budget_x']:g}× | "
                       f"unreachable: {r['unreachable'].split('(')[0].strip()} | — | — | — | — | — |")
            continue
        s = r["speedup"]
        out.append(f"| {r['model']} | {r['threads']} | {r.get('min_keep', 0.1):g} | {r['budget_x']:g}× | "
                   f"{s['edgeprune']:.2f}× | "
                   f"{'yes' if r['meets_097'] else '**no**'} | {s['tp_uniform']:.2f}× | {s['tp_global']:.2f}× | "
                   f"{r['macs_keep']['edgeprune']:.0%} | {r['edgeprune_rounds']} |")
    for threads, acc in sorted(data.get("accuracy", {}).items()):
        out += ["", f"## Accuracy without fine-tuning (digits, resnet18 at 80×80, {threads} thread table)", "",
                f"Dense test accuracy {acc['dense_accuracy']:.3f} after {acc['epochs']} epochs "
                f"({acc['train_s']:.0f} s).", "",
                "Columns l1 … random: edgeprune's knapsack on the digits table with that criterion (predicted "
                "budget, no measurement) and `--min-keep`. TP uniform / TP global: Torch-Pruning's L2 MetaPruner "
                "(round_to=8) at the MACs edgeprune's l2 result kept at the default min_keep; its predicted speedup "
                "(same table) is given below the tables."]
        tables = [("accuracy", "As pruned (BatchNorm statistics of the dense model)")]
        if any("accuracy_bn" in r for r in acc["rows"]):
            tables.append(("accuracy_bn", f"After BatchNorm re-estimation on {acc.get('bn_calibration_samples', 64)} "
                           "training images (what `edgeprune prune --calib` does by default; no weight changes, no "
                           "labels)"))
        for key, title in tables:
            out += ["", title + ":", "",
                    "| budget | min_keep | " + " | ".join(CRITERIA) + " | TP uniform | TP global |",
                    "|---|---|" + "---|" * (len(CRITERIA) + 2)]
            for budget in BUDGETS:
                for min_keep in sorted({r.get("min_keep", 0.1) for r in acc["rows"] if r["criterion"] in CRITERIA}):
                    cells = {r["criterion"]: r.get(key) for r in acc["rows"] if r["budget_x"] == budget
                             and (r["criterion"] not in CRITERIA or r.get("min_keep", 0.1) == min_keep)}
                    row = " | ".join(f"{cells[c]:.3f}" if cells.get(c) is not None else "—"
                                     for c in CRITERIA + ("tp_uniform", "tp_global"))
                    out.append(f"| {budget:g}× | {min_keep:g} | {row} |")
        tp_rows = [r for r in acc["rows"] if r["criterion"].startswith("tp_") and "predicted_speedup" in r]
        if tp_rows:
            out += ["", "Torch-Pruning's models at those MACs, predicted speedup on the same table: " + ", ".join(
                f"{r['budget_x']:g}× {r['criterion'][3:]} {r['predicted_speedup']:.2f}×" for r in tp_rows) + "."]
    return "\n".join(out) + "\n"


def main() -> None:
    import tempfile

    from edgeprune.devices import load_registry, open_device

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--only-accuracy", action="store_true", help="keep the speed rows, re-run the accuracy part")
    parser.add_argument("--out", default=str(RESULTS / "prune.json"))
    args = parser.parse_args()
    out_path = Path(args.out)
    data = json.loads(out_path.read_text()) if out_path.exists() else {"speed": [], "accuracy": {}}
    if args.only_accuracy:
        args.models = []
    data["speed"] = [r for r in data["speed"] if (r["model"], r["threads"]) not in
                     {(m, t) for m in args.models for t in args.threads}]
    data["meta"] = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} ({platform.machine()}, "
                    f"{__import__('os').cpu_count()} cores)", "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory(prefix="edgeprune-prune-bench-") as tmp:
        tmp = Path(tmp)
        with open_device("cpu", None, {}, load_registry()) as session:
            for threads in args.threads:
                for name in args.models:
                    print(f"== {name} @ {threads} thread(s)", flush=True)
                    data["speed"] += speed_rows(name, threads, tmp / f"cache-{threads}.sqlite", session)
                    save(data, out_path)
            if not args.skip_accuracy:
                print("== digits accuracy", flush=True)
                data["accuracy"][str(args.threads[0])] = accuracy_rows(args.threads[0], tmp / "acc.sqlite", tmp)
                save(data, out_path)


def save(data: dict, out_path: Path) -> None:
    data["speed"].sort(key=lambda r: (r["threads"], list(MODELS).index(r["model"]), r["budget_x"]))
    out_path.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    (ROOT / "docs" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "docs" / "results" / "prune.md").write_text(markdown(data))


if __name__ == "__main__":
    main()
