"""When to grow: FRAGrow against periodic, convergent and vanilla training, in an overfitting and an underfitting
regime, on two small tasks.

Every run goes through `edgeprune.grow` (the command's code path): a timm ResNet with three blocks per stage
(ResNet-3-3-3-3) is the target; the growth policies start from ResNet-1-1-1-1 and add the eight blocks front to
back; vanilla trains the target from scratch. Same total epochs, same data, same seeds, same optimiser; the
policies differ only in when the blocks arrive.

Tasks (16×16 inputs, 10 classes, no network):
- digits: scikit-learn's bundled 8×8 digits, upsampled; tested on the fixed 450-image test split;
- gratings: a synthetic texture task: a sinusoidal grating whose orientation (10 steps of 18°) is the class,
  with random frequency, phase and contrast under Gaussian noise; 500 test images.

Regimes:
- overfit: a ResNet with channels 16-32-64-128 (1.1 M parameters) on a small training subset (232 images, 32
  of them the policies' hold-out: 1 %, at least 32 images), 34 epochs (10 final: I_max = 24 / 8 = 3), batch 16,
  lr 0.02;
- underfit: a narrow ResNet (channels 8-16-32-64, 0.29 M parameters) on the whole training split (1347 / 1500
  images), 26 epochs (10 final: I_max = 16 / 8 = 2), batch 64, lr 0.05: little capacity, so train and hold-out
  accuracy stay together.

Besides wall time (noisy on a shared machine), each run's training compute is counted exactly: the forward
MACs of the network as it was in each epoch (torch-pruning's counter) × the epoch's training samples, as a
share of vanilla's.

Run from the repository root, alone on the machine's core:
`OMP_NUM_THREADS=1 nice -n 19 python bench/grow_bench.py [--seeds 0 1 2] [--tasks digits gratings]`.
Writes bench/results/grow.json, docs/results/grow.md and docs/results/grow-schedule.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "results"
SHAPE = (1, 3, 16, 16)
SPEC = "timm:resnet18"
LAYERS = [3, 3, 3, 3]
POLICIES = ("fragrow", "periodic", "convergent", "vanilla")
REGIMES = {
    "overfit": {"channels": [16, 32, 64, 128], "n_train": 232, "epochs": 34, "final_epochs": 10, "batch_size": 16,
                "lr": 0.02},
    "underfit": {"channels": [8, 16, 32, 64], "n_train": None, "epochs": 26, "final_epochs": 10, "batch_size": 64,
                 "lr": 0.05},
}
TASKS = ("digits", "gratings")


def gratings(n: int, seed: int):
    """(inputs [n, 3, 16, 16], labels [n]): oriented gratings under noise; the orientation is the class."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    size = SHAPE[-1]
    labels = torch.randint(0, 10, (n,), generator=gen)
    theta = labels.float() * math.pi / 10 + (torch.rand(n, generator=gen) - 0.5) * (math.pi / 20)
    freq = 0.12 + 0.16 * torch.rand(n, generator=gen)  # cycles per pixel
    phase = 2 * math.pi * torch.rand(n, generator=gen)
    contrast = 0.4 + 0.6 * torch.rand(n, generator=gen)
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    proj = xs[None] * torch.cos(theta)[:, None, None] + ys[None] * torch.sin(theta)[:, None, None]
    img = contrast[:, None, None] * torch.sin(2 * math.pi * freq[:, None, None] * proj + phase[:, None, None])
    img = img + 0.8 * torch.randn(img.shape, generator=gen)
    return img[:, None].repeat(1, 3, 1, 1).contiguous(), labels


def task_data(task: str):
    """(train inputs, train labels, test inputs, test labels) at SHAPE."""
    if task == "digits":
        from edgeprune.data import digits

        train, test = digits(SHAPE, "train"), digits(SHAPE, "test")
        return train.inputs, train.labels, test.inputs, test.labels
    x, y = gratings(2000, seed=7)
    return x[:1500], y[:1500], x[1500:], y[1500:]


def write_npz(path: Path, inputs, labels) -> str:
    import numpy as np

    np.savez(path, inputs=inputs.numpy(), labels=labels.numpy())
    return str(path)


def model_args(regime: str) -> dict:
    channels = REGIMES[regime]["channels"]
    return {"num_classes": 10, "layers": LAYERS, "channels": channels, "stem_width": channels[0]}


def macs_by_depth(regime: str) -> list:
    """Forward MACs per sample of the seed and after each block added (the growth order is fixed)."""
    import torch
    import torch_pruning as tp

    from edgeprune.growth.network import seed_network
    from edgeprune.models import load_model

    loaded = load_model(SPEC, model_args=model_args(regime), input_shape=SHAPE)
    example = torch.zeros(SHAPE)
    network = seed_network(loaded.module, example, 1)
    out = [tp.utils.count_ops_and_params(network.module.eval(), example)[0]]
    while network.plan:
        network.grow()
        out.append(tp.utils.count_ops_and_params(network.module.eval(), example)[0])
    return out


def run_one(task: str, regime: str, policy: str, seed: int, files: dict, macs: list) -> dict:
    import edgeprune

    cfg = REGIMES[regime]
    done = edgeprune.grow(SPEC, files[(task, regime)], test_data=files[(task, "test")], policy=policy, seed_depth=1,
                          epochs=cfg["epochs"], final_epochs=cfg["final_epochs"], lr=cfg["lr"],
                          batch_size=cfg["batch_size"], seed=seed, model_args=model_args(regime), input_shape=SHAPE)
    r = done.result
    growing = [h.orl for h in r.history if h.epoch <= r.final_start]
    # an epoch trains the network as it was at its start: blocks added after the epoch before
    blocks_before = [0] + [h.blocks for h in r.history[:-1]]
    compute = 1.0 if policy == "vanilla" else sum(macs[b] for b in blocks_before) / (len(r.history) * macs[-1])
    return {"task": task, "regime": regime, "policy": policy, "seed": seed, "test_error": 1 - done.test_accuracy,
            "train_s": r.train_s, "compute_vs_vanilla": compute, "growth_epochs": r.growth_epochs,
            "final_start": r.final_start,
            "forced": sum(h.forced for h in r.history), "i_max": r.i_max,
            "mean_orl_while_growing": statistics.fmean(growing) if growing else None,
            "final_train_accuracy": r.history[-1].train_accuracy, "final_holdout_accuracy": r.history[-1].val_accuracy,
            "n_train": r.n_train, "n_holdout": r.n_holdout,
            "orl": [round(h.orl, 2) for h in r.history], "blocks": [h.blocks for h in r.history]}


def summarise(rows: list) -> dict:
    cells = {}
    for task in TASKS:
        for regime in REGIMES:
            cell = {}
            for policy in POLICIES:
                runs = [r for r in rows if (r["task"], r["regime"], r["policy"]) == (task, regime, policy)]
                if not runs:
                    continue
                err = [r["test_error"] for r in runs]
                secs = [r["train_s"] for r in runs]
                compute = [r["compute_vs_vanilla"] for r in runs]
                cell[policy] = {"test_error_mean": statistics.fmean(err),
                                "test_error_sd": statistics.stdev(err) if len(err) > 1 else 0.0,
                                "train_s_mean": statistics.fmean(secs),
                                "train_s_sd": statistics.stdev(secs) if len(secs) > 1 else 0.0,
                                "compute_vs_vanilla": statistics.fmean(compute), "seeds": len(runs),
                                "growth_epochs": [r["growth_epochs"] for r in runs],
                                "final_start": [r["final_start"] for r in runs],
                                "mean_orl_while_growing": [r["mean_orl_while_growing"] for r in runs]}
            if cell:
                cells[f"{task}/{regime}"] = cell
    avg = {}
    for policy in POLICIES:
        vals = [c[policy] for c in cells.values() if policy in c]
        if vals:
            avg[policy] = {"test_error": statistics.fmean(v["test_error_mean"] for v in vals),
                           "train_s": statistics.fmean(v["train_s_mean"] for v in vals),
                           "compute_vs_vanilla": statistics.fmean(v["compute_vs_vanilla"] for v in vals)}
    targets = {}
    if all(p in avg for p in ("fragrow", "periodic", "vanilla")):
        targets = {
            "error_vs_periodic_points": 100 * (avg["fragrow"]["test_error"] - avg["periodic"]["test_error"]),
            "error_vs_vanilla_points": 100 * (avg["fragrow"]["test_error"] - avg["vanilla"]["test_error"]),
            "time_vs_vanilla": avg["fragrow"]["train_s"] / avg["vanilla"]["train_s"],
            "compute_vs_vanilla": avg["fragrow"]["compute_vs_vanilla"],
        }
        targets["met"] = bool(targets["error_vs_periodic_points"] <= 0 and targets["error_vs_vanilla_points"] <= 0
                              and targets["time_vs_vanilla"] < 1)
    return {"cells": cells, "average": avg, "targets": targets}


def plot(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(t, g) for t in TASKS for g in REGIMES if any((r["task"], r["regime"]) == (t, g) for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, (task, regime) in zip(axes[0], keys):
        for policy in POLICIES[:3]:
            run = next((r for r in rows if (r["task"], r["regime"], r["policy"], r["seed"]) ==
                        (task, regime, policy, min(x["seed"] for x in rows))), None)
            if run:
                ax.step(range(1, len(run["blocks"]) + 1), run["blocks"], where="post", label=policy)
        ax.set_title(f"{task} / {regime}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("blocks added")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict) -> str:
    s = report["summary"]
    lines = ["# Growth: FRAGrow against periodic, convergent and vanilla training", "",
             f"`bench/grow_bench.py`, {report['machine']}, 1 thread, seeds {report['seeds']}, "
             f"{report['wall_s'] / 60:.1f} min in all. Target timm ResNet-3-3-3-3 at 16×16; seed ResNet-1-1-1-1 "
             "(8 blocks to add); SGD (Nesterov 0.9, wd 5e-4), lr constant while growing, one cosine after; "
             "batch 16 and lr 0.02 (overfit), batch 64 and lr 0.05 (underfit). Test error in %, mean ± sd over "
             "seeds; training wall time in s "
             "(every epoch with its hold-out check); compute: training MACs as a share of vanilla's.", "",
             "| task / regime | policy | test error % | train s | compute vs vanilla | blocks added after epoch "
             "(per seed) |", "|---|---|---|---|---|---|"]
    for key, cell in s["cells"].items():
        for policy, v in cell.items():
            sched = "; ".join(",".join(map(str, g)) or "—" for g in v["growth_epochs"])
            lines.append(f"| {key} | {policy} | {100 * v['test_error_mean']:.2f} ± {100 * v['test_error_sd']:.2f} | "
                         f"{v['train_s_mean']:.1f} ± {v['train_s_sd']:.1f} | {v['compute_vs_vanilla']:.2f} | "
                         f"{sched} |")
    lines += ["", "Mean hold-out ORL (points) while growing, FRAGrow, per seed:", ""]
    for key, cell in s["cells"].items():
        if "fragrow" in cell:
            orl = ", ".join("—" if o is None else f"{o:.1f}" for o in cell["fragrow"]["mean_orl_while_growing"])
            last = ", ".join(str(g[-1]) if g else "—" for g in cell["fragrow"]["growth_epochs"])
            lines.append(f"- {key}: ORL {orl}; last block added after epoch {last}")
    if s["targets"]:
        t = s["targets"]
        lines += ["", "Averaged over the task × regime cells:", "",
                  "| policy | test error % | train s | compute vs vanilla |", "|---|---|---|---|"]
        for policy, v in s["average"].items():
            lines.append(f"| {policy} | {100 * v['test_error']:.2f} | {v['train_s']:.1f} | "
                         f"{v['compute_vs_vanilla']:.2f} |")
        lines += ["", f"Target (FRAGrow no worse than periodic and vanilla in test error on average, in less "
                      f"training time than vanilla): {'met' if t['met'] else 'missed'} — FRAGrow − periodic "
                      f"{t['error_vs_periodic_points']:+.2f} points, FRAGrow − vanilla "
                      f"{t['error_vs_vanilla_points']:+.2f} points, wall time {t['time_vs_vanilla']:.2f}× vanilla's "
                      f"(compute {t['compute_vs_vanilla']:.2f}×)."]
    lines += ["", "![blocks added per epoch, seed 0](grow-schedule.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--out", default=str(RESULTS / "grow.json"))
    parser.add_argument("--docs", default=str(DOCS), help="Folder for grow.md and the schedule plot.")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for task in args.tasks:
            x, y, tx, ty = task_data(task)
            files[(task, "test")] = write_npz(Path(tmp) / f"{task}-test.npz", tx, ty)
            for regime in args.regimes:
                n = REGIMES[regime]["n_train"] or len(y)
                pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:n]  # fixed across seeds
                files[(task, regime)] = write_npz(Path(tmp) / f"{task}-{regime}.npz", x[pick], y[pick])
        macs = {regime: macs_by_depth(regime) for regime in args.regimes}
        for seed in args.seeds:
            for task in args.tasks:
                for regime in args.regimes:
                    k = seed % len(POLICIES)  # rotate the order, so a drift in machine speed hits every policy
                    for policy in [p for p in POLICIES[k:] + POLICIES[:k] if p in args.policies]:
                        row = run_one(task, regime, policy, seed, files, macs[regime])
                        rows.append(row)
                        print(f"seed {seed} {task}/{regime} {policy:<10} error {100 * row['test_error']:5.2f} % "
                              f"{row['train_s']:6.1f} s  compute {row['compute_vs_vanilla']:.2f}  "
                              f"grew after {row['growth_epochs']}", file=sys.stderr, flush=True)
    report = {"bench": "grow", "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
              "python": platform.python_version(), "torch": torch.__version__, "seeds": args.seeds,
              "tasks": args.tasks, "regimes": {k: REGIMES[k] for k in args.regimes}, "spec": SPEC, "layers": LAYERS,
              "shape": list(SHAPE), "macs_by_depth": macs, "wall_s": time.time() - started, "runs": rows}
    report["summary"] = summarise(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    plot(rows, docs / "grow-schedule.png")
    (docs / "grow.md").write_text(markdown(report))
    print(json.dumps(report["summary"]["targets"], indent=1))


if __name__ == "__main__":
    main()
