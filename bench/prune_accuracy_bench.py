"""Does latency-aware pruning pay off? Accuracy at equal latency, edgeprune against uniform and Torch-Pruning.

A regime with headroom: resnet18 and mobilenet_v2 trained from scratch at 80×80 on a small share (20 %) of
scikit-learn's digits training split, so the dense models sit well below 99 %; tested on the digits test split
and on a shifted copy of it (contrast, blur, noise). For every training seed (which also draws the 64
calibration images) and budget (1.5×, 2×, 3× predicted on this machine's 1-thread table):

- edgeprune, criterion l2, option values from measured calibration loss: knapsack only (`search=0`), and with
  the search over whole candidates (`search=24`); `--mode uniform` at the same budget; criterion `random`;
- Torch-Pruning's MetaPruner (round_to=8): uniform L2, global L2 and its Taylor, each at the ratio whose
  predicted latency on the same table matches edgeprune-with-search's (read off a per-seed curve of 8 ratios);

then every model of the (seed, budget) is exported and timed interleaved in one run with the dense model, and
its accuracy is taken (a) as pruned, BatchNorm re-estimated on the calibration images, and (b) after the same
cached-teacher distillation (3 epochs on the training share, teacher logits computed once per seed).

Run from the repository root: `python bench/prune_accuracy_bench.py [--models resnet18] [--seeds 0 1 2]`.
Writes bench/results/prune_accuracy.json, docs/results/prune_accuracy.md and a Pareto plot per model.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "results"
SHAPE = (1, 3, 80, 80)
MODELS = {"resnet18": "torchvision:resnet18", "mobilenet_v2": "torchvision:mobilenet_v2"}
BUDGETS = (1.5, 2.0, 3.0)
TRAIN_SHARE = 0.2
TRAIN_EPOCHS = 12
KD_EPOCHS = 3
CALIB = 64
METHODS = ("ep_search", "ep_knapsack", "ep_uniform", "ep_random", "tp_uniform_l2", "tp_global_l2", "tp_taylor")


def shifted(inputs, seed: int):
    """The same digits under a camera change: lower contrast, a blur, sensor noise."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(1000 + seed)
    x = inputs * 0.6
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    x = F.conv2d(x, kernel.expand(x.shape[1], 1, 3, 3).contiguous(), padding=1, groups=x.shape[1])
    return x + 0.25 * torch.randn(x.shape, generator=gen)


def labelled(inputs, labels):
    from edgeprune.data import Samples

    return Samples(inputs.contiguous(), labels, "bench", {})


def data_for(seed: int):
    """(train share, calibration tensor, test, shifted test) for one seed."""
    import torch

    from edgeprune.data import digits

    train = digits(SHAPE, "train")
    test = digits(SHAPE, "test")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=gen)
    share = order[: int(TRAIN_SHARE * len(train))]
    calib = share[torch.randperm(len(share), generator=gen)[:CALIB]]
    small = labelled(train.inputs[share], train.labels[share])
    return small, train.inputs[calib], test, labelled(shifted(test.inputs, seed), test.labels)


def train(name: str, small, seed: int):
    import torch
    import torch.nn.functional as F

    from edgeprune.models import load_model

    torch.manual_seed(seed)
    module = load_model(MODELS[name], model_args={"num_classes": 10}, input_shape=SHAPE).module
    opt = torch.optim.AdamW(module.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = TRAIN_EPOCHS * ((len(small) + 31) // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(TRAIN_EPOCHS):
        module.train()
        order = torch.randperm(len(small), generator=gen)
        for start in range(0, len(small), 32):
            idx = order[start:start + 32]
            shift = torch.randint(-4, 5, (2,), generator=gen).tolist()
            x = torch.roll(small.inputs[idx], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(module(x), small.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return module.eval()


def tp_prune(module, example, ratio: float, kind: str, calib, calib_labels):
    """Torch-Pruning's MetaPruner at `ratio` (uniform or global L2, or its group Taylor), round_to=8."""
    import torch.nn.functional as F
    import torch_pruning as tp

    from edgeprune.pruning.groups import output_layers

    clone = copy.deepcopy(module)
    if kind == "tp_taylor":
        importance = tp.importance.GroupTaylorImportance()
    else:
        importance = tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.MetaPruner(clone, example, importance=importance, pruning_ratio=ratio,
                                  global_pruning=kind == "tp_global_l2", round_to=8,
                                  ignored_layers=output_layers(clone))
    if kind == "tp_taylor":
        clone.eval()
        clone.zero_grad()
        for start in range(0, len(calib), 16):
            F.cross_entropy(clone(calib[start:start + 16]), calib_labels[start:start + 16]).backward()
    pruner.step()
    clone.zero_grad(set_to_none=True)
    return clone.eval()


def predicted_ms(table, module, tmp: Path) -> float:
    import torch
    from edgeprune.exporters.onnx import export_onnx

    from edgeprune.latency.blocks import extract_blocks

    proto, _ = export_onnx(module, (torch.zeros(SHAPE),), tmp / "probe.onnx")
    return table.predict_ms(extract_blocks(proto).blocks)


RATIOS = (0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.8)


def tp_curve(module, table, kind: str, calib, calib_labels, tmp: Path) -> list:
    """[(ratio, predicted ms)] of one Torch-Pruning method on these weights, at a fixed set of ratios."""
    import torch

    return [(r, predicted_ms(table, tp_prune(module, (torch.zeros(SHAPE),), r, kind, calib, calib_labels), tmp))
            for r in RATIOS]


def matched_tp(module, curve: list, target_ms: float, kind: str, calib, calib_labels):
    """Torch-Pruning at the ratio its curve puts at `target_ms` (linear between the two bracketing ratios)."""
    import numpy as np
    import torch

    ratios = [r for r, _ in curve]
    ms = [m for _, m in curve]
    ratio = float(np.interp(target_ms, ms[::-1], ratios[::-1]))  # latency falls as the ratio grows
    return tp_prune(module, (torch.zeros(SHAPE),), ratio, kind, calib, calib_labels), ratio


def kd(student, small, teacher_logits, seed: int):
    from edgeprune.distillation.train import DistillOptions, train_student
    from edgeprune.latency.build import Reporter

    cache = SimpleNamespace(values=teacher_logits, indices=None, build_s=0.0)
    train_student(student, small, DistillOptions(epochs=KD_EPOCHS, seed=seed), cache=cache, reporter=Reporter())
    return student.eval()


def run_seed(name: str, seed: int, table_path: Path, tmp: Path, session, cache: Path) -> list:
    import numpy as np
    import torch

    import edgeprune
    from edgeprune.examples import accuracy
    from edgeprune.latency.cache import MeasurementCache
    from edgeprune.models import LoadedModel, state_dict_sha256
    from edgeprune.pruning.batchnorm import recalibrate_batchnorm
    from edgeprune.pruning.engine import measure_modules

    small, calib, test, shift = data_for(seed)
    t0 = time.time()
    dense = train(name, small, seed)
    train_s = time.time() - t0
    with torch.no_grad():
        teacher_logits = dense(small.inputs).float()
        calib_labels = dense(calib).argmax(-1)  # Taylor's loss on unlabelled calibration images: own predictions
    np.savez(tmp / f"calib-{seed}.npz", inputs=calib.numpy())
    table = edgeprune.load_table(table_path)
    dense_acc = (accuracy(dense, test), accuracy(dense, shift))
    print(f"   seed {seed}: dense {dense_acc[0]:.3f} / shifted {dense_acc[1]:.3f} after {train_s:.0f} s", flush=True)

    def loaded():
        module = copy.deepcopy(dense)
        return LoadedModel(f"bench:{name}", module, None, SHAPE, "vision", True, state_dict_sha256(module), [])

    batches = [(calib[s:s + 8],) for s in range(0, len(calib), 8)]
    curves = {m: tp_curve(dense, table, m, calib, calib_labels, tmp)
              for m in ("tp_uniform_l2", "tp_global_l2", "tp_taylor")}
    rows = []
    for budget in BUDGETS:
        models, info = {"dense": dense}, {}
        common = dict(budget=f"{budget}x", calib=str(tmp / f"calib-{seed}.npz"), calib_samples=CALIB,
                      measure=False, cache=cache, seed=seed)
        for method, kwargs in (("ep_search", dict(criterion="l2")), ("ep_knapsack", dict(criterion="l2", search=0)),
                               ("ep_random", dict(criterion="random", search=0)),
                               ("ep_uniform", dict(criterion="l2", mode="uniform", round_to=table.step))):
            started = time.time()
            res = edgeprune.prune(loaded(), table, None, **common, **kwargs)
            models[method] = res.module
            search = res.rounds[-1].get("search") or {}
            info[method] = {"predicted_ms": res.predicted_ms, "macs_keep": res.macs / res.dense_macs,
                            "wall_s": time.time() - started, "search": search,
                            "notes": [n for n in res.notes if n.startswith("option values")]}
        target = info["ep_search"]["predicted_ms"]
        for method in ("tp_uniform_l2", "tp_global_l2", "tp_taylor"):
            started = time.time()
            module, ratio = matched_tp(dense, curves[method], target, method, calib, calib_labels)
            recalibrate_batchnorm(module, batches)
            models[method] = module
            info[method] = {"predicted_ms": predicted_ms(table, module, tmp), "ratio": ratio,
                            "wall_s": time.time() - started}
        measurements = MeasurementCache(cache)
        try:
            timed = measure_modules(loaded(), models, table, session, measurements)
        finally:
            measurements.close()
        for method in METHODS:
            module = models[method]
            pruned = (accuracy(module, test), accuracy(module, shift))
            student = kd(copy.deepcopy(module), small, teacher_logits, seed)
            tuned = (accuracy(student, test), accuracy(student, shift))
            rows.append({"model": name, "seed": seed, "budget_x": budget, "method": method,
                         "dense_ms": timed["dense"]["ms"], "measured_ms": timed[method]["ms"],
                         "measured_speedup": timed["dense"]["ms"] / timed[method]["ms"],
                         "dense_accuracy": dense_acc[0], "dense_accuracy_shifted": dense_acc[1],
                         "accuracy_pruned": pruned[0], "accuracy_pruned_shifted": pruned[1],
                         "accuracy_kd": tuned[0], "accuracy_kd_shifted": tuned[1], "train_s": train_s, **info[method]})
            print(f"   {budget}x {method:14s} {timed['dense']['ms'] / timed[method]['ms']:.2f}x measured  "
                  f"pruned {pruned[0]:.3f}/{pruned[1]:.3f}  kd {tuned[0]:.3f}/{tuned[1]:.3f}", flush=True)
    return rows


def summary(rows: list) -> list:
    out = []
    keys = sorted({(r["model"], r["budget_x"], r["method"]) for r in rows},
                  key=lambda k: (k[0], k[1], METHODS.index(k[2])))
    for model, budget, method in keys:
        sel = [r for r in rows if (r["model"], r["budget_x"], r["method"]) == (model, budget, method)]

        def ms(field, sel=sel):
            values = [r[field] for r in sel]
            return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]

        out.append({"model": model, "budget_x": budget, "method": method, "n": len(sel),
                    **{f: ms(f) for f in ("measured_speedup", "accuracy_pruned", "accuracy_pruned_shifted",
                                          "accuracy_kd", "accuracy_kd_shifted", "wall_s")}})
    return out


def markdown(data: dict) -> str:
    meta = data["meta"]
    out = ["# Accuracy at equal latency: edgeprune against uniform pruning and Torch-Pruning", "",
           f"Measured {meta['date']} on {meta['machine']} with `python bench/prune_accuracy_bench.py`; raw rows in "
           "`bench/results/prune_accuracy.json`. Regime with headroom: trained from scratch at 80×80 on "
           f"{TRAIN_SHARE:.0%} of the digits training split ({TRAIN_EPOCHS} epochs), tested on the digits test split "
           "and a shifted copy (contrast 0.6, 3×3 blur, noise σ 0.25). Seeds draw training and the 64 calibration "
           f"images; mean ± sd over {meta['seeds']} seeds. Speedups are measured: every model of a (seed, budget) "
           "timed interleaved with the dense model in one run (ONNX Runtime CPU EP, 1 thread). Torch-Pruning's "
           "ratio is read off its curve of predicted latency (8 ratios per seed, same table) at "
           "edgeprune-with-search's predicted latency.", "",
           "Methods: `ep_search` edgeprune (l2 ranking, option values from measured calibration loss, search over "
           "24 whole candidates); `ep_knapsack` the same without search; `ep_uniform` edgeprune `--mode uniform`; "
           "`ep_random` random ranking with the knapsack; `tp_*` Torch-Pruning MetaPruner (round_to 8) with group "
           "L2 uniform / global and its group Taylor; all with BatchNorm re-estimated on the calibration images.",
           "", f"KD: {KD_EPOCHS} epochs of cached-teacher distillation (T 4, α 0.9) on the training share, the same "
           "for every method."]
    for model in sorted({r["model"] for r in data["summary"]}):
        dense = [r for r in data["rows"] if r["model"] == model]
        out += ["", f"## {model}", "",
                f"Dense: {statistics.mean(r['dense_accuracy'] for r in dense):.3f} test, "
                f"{statistics.mean(r['dense_accuracy_shifted'] for r in dense):.3f} shifted, "
                f"{statistics.mean(r['dense_ms'] for r in dense):.2f} ms.", "",
                "| budget | method | measured speedup | pruned (BN) | pruned, shifted | after KD | after KD, shifted "
                "| wall s |", "|---|---|---|---|---|---|---|---|"]
        for r in [s for s in data["summary"] if s["model"] == model]:
            cell = lambda f, d=3, r=r: f"{r[f][0]:.{d}f} ± {r[f][1]:.{d}f}"  # noqa: E731
            out.append(f"| {r['budget_x']:g}× | {r['method']} | {cell('measured_speedup', 2)} | "
                       f"{cell('accuracy_pruned')} | {cell('accuracy_pruned_shifted')} | {cell('accuracy_kd')} | "
                       f"{cell('accuracy_kd_shifted')} | {cell('wall_s', 1)} |")
        out += ["", f"![accuracy vs measured latency, {model}](prune_accuracy-{model}.png)"]
    return "\n".join(out) + "\n"


def plot(data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for model in sorted({r["model"] for r in data["rows"]}):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
        for ax, field, title in ((axes[0], "accuracy_pruned", "as pruned (BN re-estimated)"),
                                 (axes[1], "accuracy_kd", f"after {KD_EPOCHS} epochs of KD")):
            for method in METHODS:
                sel = [r for r in data["rows"] if r["model"] == model and r["method"] == method]
                ax.scatter([r["measured_ms"] for r in sel], [r[field] for r in sel], label=method, s=18,
                           marker="o" if method.startswith("ep") else "x")
            ax.set_xlabel("measured latency (ms, 1 thread)")
            ax.set_ylabel("test accuracy")
            ax.set_title(f"{model}: {title}")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(DOCS / f"prune_accuracy-{model}.png", dpi=110)
        plt.close(fig)


def main() -> None:
    import tempfile

    import torch

    import edgeprune
    from edgeprune.devices import load_registry, open_device

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=float, nargs="+", default=None)
    parser.add_argument("--train-epochs", type=int, default=None, help="fewer for a quick check")
    parser.add_argument("--out", default=str(RESULTS / "prune_accuracy.json"))
    parser.add_argument("--report-only", action="store_true", help="redraw the tables and plots from --out")
    args = parser.parse_args()
    if args.report_only:
        data = json.loads(Path(args.out).read_text())
        save(data, Path(args.out))
        plot(data)
        return
    global BUDGETS, TRAIN_EPOCHS
    BUDGETS = tuple(args.budgets or BUDGETS)
    TRAIN_EPOCHS = args.train_epochs or TRAIN_EPOCHS
    torch.set_num_threads(2)
    out_path = Path(args.out)
    data = json.loads(out_path.read_text()) if out_path.exists() else {"rows": []}
    data["rows"] = [r for r in data["rows"] if r["model"] not in args.models]
    data["meta"] = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} ({platform.machine()}, "
                    f"{__import__('os').cpu_count()} cores)", "python": sys.version.split()[0],
                    "seeds": len(args.seeds)}
    with tempfile.TemporaryDirectory(prefix="edgeprune-acc-bench-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache.sqlite"
        with open_device("cpu", None, {}, load_registry()) as session:
            for name in args.models:
                print(f"== {name}", flush=True)
                table_path = tmp / f"{name}.json"
                t0 = time.time()
                edgeprune.profile(MODELS[name], "cpu", table_path, threads=1, model_args={"num_classes": 10},
                                  input_shape=SHAPE, variants=10, cache=cache, force=True)
                table = edgeprune.load_table(table_path)
                data.setdefault("tables", {})[name] = {"id": table.id, "profile_s": time.time() - t0,
                                                       "fidelity": {k: table.fidelity.get(k) for k in
                                                                    ("within_10", "mape", "noise_ceiling")}}
                for seed in args.seeds:
                    data["rows"] += run_seed(name, seed, table_path, tmp, session, cache)
                    data["summary"] = summary(data["rows"])
                    save(data, out_path)
    plot(data)


def save(data: dict, out_path: Path) -> None:
    out_path.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "prune_accuracy.md").write_text(markdown(data))


if __name__ == "__main__":
    main()
