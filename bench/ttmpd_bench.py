"""TT-MPD (`edgeprune adapt`) against three ways of pruning on unlabeled shifted data, at equal measured latency.

A digits classifier (the built-in example: resnet18 at 80×80, ~6 ms at 1 thread, well above runtime overhead)
is trained on clean digits and meets a camera change (`edgeprune.data.shift_domain`: contrast, blur, noise).
Its unlabeled shifted samples give the probe set P and the fine-tune set F; every method starts from the same
adapted teacher (BatchNorm re-estimated on P) and ends with the same fine-tune (KD_EPOCHS of KL to the same
cached pseudo-labels), so only the choice of widths differs:

- `ttmpd`: edgeprune.adapt — proxies per cut, g fitted on real prune-and-fine-tune runs, knapsack, one fine-tune;
- `netadapt` (a): fine-tune-to-evaluate, NetAdapt-style: NA_STEPS latency steps towards the budget; at each,
  every group is cut to the widest width that reaches the step alone, briefly fine-tuned (NA_SHORT samples
  of KD) and scored by agreement with the teacher on P; the best cut is kept, weights carried to the next step;
- `halp` (b): a latency–saliency knapsack (edgeprune prune on the table with l2 saliency as option values, no
  per-cut measurement) + the one fine-tune;
- `uniform` (c): uniform magnitude (l2) at the budget + the same KD;
- `sensitivity`: edgeprune prune's own option values (calibration loss of each cut on P) + search + the KD.

For every seed and budget (1.5×, 2×, 3× on this machine's 1-thread table; edgeprune's methods measure and
correct on the device), all models are timed interleaved against the dense model in one run; accuracy is taken
on the labelled shifted test split no method saw. Wall time = the method's pruning + its fine-tune (the shared
teacher adaptation and pseudo-label cache are reported apart). Also: g's fit (R², leave-one-out Spearman) per
run; the proxy study (every proxy's Spearman with true fine-tuned accuracy over spread single cuts, g fitted on
the label-free target, and g fitted on one shift predicting another); cached vs online KD time.

Run from the repository root: `python bench/ttmpd_bench.py` (full: 3 seeds × 3 budgets, several hours at one
thread; docs/ttmpd.md) or `--smoke` (32×32, one seed, one budget, short training: proves the path works).
Writes bench/results/ttmpd.json and docs/results/ttmpd.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
SPEC, ARGS = "torchvision:resnet18", {"num_classes": 10}
SHIFTS = {"camera": {"contrast": 0.6, "blur": True, "noise": 0.25},  # the domain every method adapts to
          "dim-noisy": {"contrast": 0.4, "blur": False, "noise": 0.35}}  # the other shift g is tested on
METHODS = ("ttmpd", "netadapt", "halp", "uniform", "sensitivity")
FULL = {"shape": (1, 3, 80, 80), "train_epochs": 8, "budgets": (1.5, 2.0, 3.0), "seeds": (0, 1, 2), "probe": 64,
        "finetune": 256, "kd_epochs": 5, "fit_runs": 6, "na_steps": 4, "na_short": 64, "study": 16,
        "table_variants": 10}
SMOKE = {"shape": (1, 3, 32, 32), "train_epochs": 3, "budgets": (2.0,), "seeds": (0,), "probe": 32,
         "finetune": 96, "kd_epochs": 2, "fit_runs": 4, "na_steps": 2, "na_short": 32, "study": 6,
         "table_variants": 0}


def domain(shape: tuple, seed: int, shift: str) -> tuple:
    """(unlabeled pool from the train split, labelled test split), both under `shift`."""
    from edgeprune.data import Samples, digits, shift_domain

    train, test = digits(shape, "train"), digits(shape, "test")
    pool = Samples(shift_domain(train.inputs, seed, **SHIFTS[shift]), None, f"shifted-{shift}", {})
    held = Samples(shift_domain(test.inputs, seed + 500, **SHIFTS[shift]), test.labels, f"shifted-{shift}-test", {})
    return pool, held


def teacher(conf: dict, seed: int):
    """The classifier trained on clean digits, as a LoadedModel whose hash is its trained weights."""
    from edgeprune.examples import train_digits
    from edgeprune.models import load_model, state_dict_sha256

    loaded = load_model(SPEC, model_args=ARGS, input_shape=conf["shape"])
    train_digits(loaded.module, input_shape=conf["shape"], epochs=conf["train_epochs"], seed=seed)
    return dataclasses.replace(loaded, source_sha256=state_dict_sha256(loaded.module))


def kd(module, finetune, cache, epochs: int, seed: int) -> tuple:
    """The one fine-tune every method gets: KL to the cached pseudo-labels. Returns (module, seconds)."""
    from edgeprune.distillation.train import DistillOptions, train_student
    from edgeprune.latency.build import Reporter

    res = train_student(module, finetune, DistillOptions(epochs=epochs, seed=seed), cache=cache, reporter=Reporter())
    return res.student.eval(), res.train_s


def netadapt(adapted_loaded, table, budget_ms: float, probe, finetune, cache, conf: dict, seed: int):
    """Fine-tune-to-evaluate (NetAdapt-style) with the table as the latency model; weights carried between steps."""
    import torch

    from edgeprune.distillation.train import DistillOptions, train_student
    from edgeprune.latency.build import Reporter
    from edgeprune.pruning.criteria import score_groups
    from edgeprune.pruning.engine import slim_copy
    from edgeprune.pruning.sensitivity import outputs
    from edgeprune.pruning.solver import CostModel, candidate_units
    from edgeprune.pruning.space import build_space
    from edgeprune.pruning.ttmpd import agreement
    from edgeprune.pruning.widths import probe_width_model

    batches = [(probe.inputs[s:s + 32],) for s in range(0, len(probe), 32)]
    current = copy.deepcopy(adapted_loaded.module)
    reference = torch.cat(outputs(current, batches))
    short = finetune.take(conf["na_short"])
    short_cache = SimpleNamespace(values=cache.values[:len(short)], indices=None, build_s=0.0)
    example = adapted_loaded.example_inputs()
    space = lambda m: build_space(m, example)  # noqa: E731
    dense_ms = None
    evaluated = 0
    for step in range(1, conf["na_steps"] + 1):
        loaded = dataclasses.replace(adapted_loaded, module=current)
        widths = probe_width_model(loaded, current, example, space)
        cost = CostModel(table, widths)
        groups = space(current)
        units = [g.units for g in groups]
        now = cost.predict(units)
        dense_ms = dense_ms or now
        target = dense_ms * (budget_ms / dense_ms) ** (step / conf["na_steps"])
        scores = score_groups("l2", groups, current)
        best = None
        for i, g in enumerate(groups):
            lower = [u for u in candidate_units(g, table.step, 0.3) if u < g.units]
            if not lower:
                continue
            trial = list(units)
            fits = [u for u in lower if cost.predict(trial[:i] + [u] + trial[i + 1:]) <= target]
            trial[i] = max(fits) if fits else lower[0]
            candidate, _ = slim_copy(current, space, trial, scores)
            train_student(candidate, short, DistillOptions(epochs=1, seed=seed), cache=short_cache, reporter=Reporter())
            acc = agreement(torch.cat(outputs(candidate, batches)), reference)
            evaluated += 1
            pred = cost.predict(trial)
            key = (pred <= target, acc)
            if best is None or key > best[0]:
                best = (key, candidate)
        if best is None:
            break
        current = best[1]
    return current.eval(), evaluated


def timed(loaded, models: dict, table, session, cache_path: Path) -> dict:
    from edgeprune.latency.cache import MeasurementCache
    from edgeprune.pruning.engine import measure_modules

    measurements = MeasurementCache(cache_path)
    try:
        got = measure_modules(loaded, models, table, session, measurements)
    finally:
        measurements.close()
    return {name: got["dense"]["ms"] / got[name]["ms"] for name in models} | {"_dense_ms": got["dense"]["ms"]}


def proxy_study(adapted_loaded, probe, finetune, cache, test, n: int, seed: int) -> list:
    """Spread single cuts: every proxy, the label-free fit target and the true accuracy after a short fine-tune."""
    import torch

    from edgeprune.distillation.train import DistillOptions, train_student
    from edgeprune.examples import accuracy
    from edgeprune.latency.build import Reporter
    from edgeprune.pruning.criteria import score_groups
    from edgeprune.pruning.engine import allowed_widths, slim_copy
    from edgeprune.pruning.sensitivity import outputs
    from edgeprune.pruning.space import build_space
    from edgeprune.pruning.ttmpd import ProxyScorer, agreement, fit_candidates, measure_proxies

    module = adapted_loaded.module
    example = adapted_loaded.example_inputs()
    space = lambda m: build_space(m, example)  # noqa: E731
    groups = space(module)
    scores = score_groups("l2", groups, module)
    batches = [(probe.inputs[s:s + 32],) for s in range(0, len(probe), 32)]
    scorer = ProxyScorer(copy.deepcopy(module), space, scores, batches)
    table = measure_proxies(scorer, groups, allowed_widths(groups, scores.normalized, 8, 0.3), 4)
    rows = []
    for i, w, prox in fit_candidates(table, n, ("feature", "entropy")):
        units = [g.units for g in groups]
        units[i] = w
        candidate, _ = slim_copy(module, space, units, scores)
        train_student(candidate, finetune, DistillOptions(epochs=1, seed=seed), cache=cache, reporter=Reporter())
        rows.append({"group": groups[i].name, "width": w, "proxies": prox,
                     "pseudo_accuracy": agreement(torch.cat(outputs(candidate, batches)), torch.cat(scorer.reference)),
                     "accuracy": accuracy(candidate, test)})
    return rows


def study_summary(by_shift: dict) -> dict:
    """Spearman of each proxy with true accuracy; g (label-free target) in-domain and across shifts."""
    import itertools

    from scipy.stats import spearmanr

    from edgeprune.pruning.ttmpd import PROXIES, fit_accuracy_model

    def rho(a, b):
        r = spearmanr(a, b).statistic
        return None if r != r else float(r)

    out = {}
    for shift, rows in by_shift.items():
        truth = [r["accuracy"] for r in rows]
        entry = {"n": len(rows), "proxy_spearman": {p: rho([r["proxies"][p] for r in rows], truth) for p in PROXIES},
                 "pseudo_vs_true": rho([r["pseudo_accuracy"] for r in rows], truth), "pairs": {}}
        for pair in itertools.combinations(PROXIES, 2):
            g = fit_accuracy_model([r["proxies"] for r in rows], [r["pseudo_accuracy"] for r in rows], pair)
            entry["pairs"]["+".join(pair)] = {"r2": g.r2, "loo_spearman_pseudo": g.loo_spearman,
                                              "spearman_true": rho([g.predict(r["proxies"]) for r in rows], truth)}
        out[shift] = entry
    names = list(by_shift)
    if len(names) == 2:
        a, b = (by_shift[n] for n in names)
        g = fit_accuracy_model([r["proxies"] for r in a], [r["pseudo_accuracy"] for r in a], ("feature", "entropy"))
        out["transfer"] = {"fit_on": names[0], "tested_on": names[1],
                           "spearman_true": rho([g.predict(r["proxies"]) for r in b], [r["accuracy"] for r in b])}
    return out


def run_seed(conf: dict, seed: int, tmp: Path, session, cache_path: Path, table_path: Path) -> dict:
    import numpy as np

    import edgeprune
    from edgeprune.data import digits
    from edgeprune.distillation.cache import load_or_build
    from edgeprune.distillation.train import DistillOptions, train_student
    from edgeprune.examples import accuracy
    from edgeprune.latency.build import Reporter
    from edgeprune.models import state_dict_sha256
    from edgeprune.pruning.batchnorm import recalibrate_batchnorm
    from edgeprune.pruning.ttmpd import split_unlabeled

    table = edgeprune.load_table(table_path)
    t0 = time.time()
    loaded = teacher(conf, seed)
    train_s = time.time() - t0
    pool, test = domain(conf["shape"], seed, "camera")
    probe, finetune = split_unlabeled(pool, conf["probe"], conf["finetune"], seed)
    t0 = time.time()
    adapted = copy.deepcopy(loaded.module)
    recalibrate_batchnorm(adapted, [(probe.inputs[s:s + 32],) for s in range(0, len(probe), 32)])
    cache_dir = tmp / f"cache-{seed}"
    cache = load_or_build(cache_dir, adapted, state_dict_sha256(adapted), finetune, batch_size=64)
    shared_s = time.time() - t0
    adapted_loaded = dataclasses.replace(loaded, module=adapted)
    pool_path = tmp / f"pool-{seed}.npz"
    np.savez(pool_path, inputs=pool.inputs.numpy())
    probe_path = tmp / f"probe-{seed}.npz"
    np.savez(probe_path, inputs=probe.inputs.numpy())
    acc = {"teacher_clean": accuracy(loaded.module, digits(conf["shape"], "test")),
           "teacher_shifted": accuracy(loaded.module, test), "teacher_adapted_shifted": accuracy(adapted, test)}
    print(f"   seed {seed}: teacher clean {acc['teacher_clean']:.3f}, shifted {acc['teacher_shifted']:.3f}, "
          f"BN-adapted {acc['teacher_adapted_shifted']:.3f} (trained in {train_s:.0f} s)", flush=True)
    common = {"device": "cpu", "measure": True, "seed": seed}
    rows = []
    for budget in conf["budgets"]:
        models, info = {}, {}
        t0 = time.time()
        done = edgeprune.adapt(copy.deepcopy(loaded), table, str(pool_path), None, budget=f"{budget}x",
                               probe_samples=conf["probe"], finetune_samples=conf["finetune"],
                               fit_runs=conf["fit_runs"], epochs=conf["kd_epochs"], cache_dir=cache_dir, **common)
        wall = time.time() - t0
        models["ttmpd"] = done.pruned.module.eval()
        info["ttmpd"] = {"prune_s": wall - done.distill.train_s, "finetune_s": done.distill.train_s,
                         "g": {"r2": done.model.r2, "loo_spearman": done.model.loo_spearman,
                               "weights": done.model.weights, "intercept": done.model.intercept},
                         "fit_runs_s": done.record["fit_runs_s"]}
        for name, kwargs in (("halp", {"criterion": "l2"}), ("uniform", {"criterion": "l2", "mode": "uniform"}),
                             ("sensitivity", {"criterion": "l2", "calib": str(probe_path),
                                              "calib_samples": conf["probe"]})):
            t0 = time.time()
            res = edgeprune.prune(copy.deepcopy(adapted_loaded), table, None, budget=f"{budget}x", **kwargs, **common)
            prune_s = time.time() - t0
            models[name], ft = kd(res.module, finetune, cache, conf["kd_epochs"], seed)
            info[name] = {"prune_s": prune_s, "finetune_s": ft}
        t0 = time.time()
        dense_pred = table.predict_ms(_blocks(loaded))
        module, evaluated = netadapt(adapted_loaded, table, dense_pred / budget, probe, finetune, cache, conf, seed)
        prune_s = time.time() - t0
        models["netadapt"], ft = kd(module, finetune, cache, conf["kd_epochs"], seed)
        info["netadapt"] = {"prune_s": prune_s, "finetune_s": ft, "candidates_fine_tuned": evaluated}
        speed = timed(loaded, {"dense": loaded.module, **models}, table, session, cache_path)
        for name in METHODS:
            rows.append({"seed": seed, "budget": budget, "method": name, "speedup": speed[name],
                         "accuracy_shifted": accuracy(models[name], test),
                         "wall_s": info[name]["prune_s"] + info[name]["finetune_s"], **info[name]})
            r = rows[-1]
            print(f"   {budget}x {name:12s} speedup {r['speedup']:.2f}  shifted acc {r['accuracy_shifted']:.3f}  "
                  f"wall {r['wall_s']:.0f} s", flush=True)
    # cached vs online KD: the same student, the same epochs
    student = copy.deepcopy(models["uniform"])
    t0 = time.time()
    train_student(student, finetune, DistillOptions(epochs=conf["kd_epochs"], seed=seed), teacher=adapted,
                  reporter=Reporter())
    online_s = time.time() - t0
    student = copy.deepcopy(models["uniform"])
    cached = train_student(student, finetune, DistillOptions(epochs=conf["kd_epochs"], seed=seed), cache=cache,
                           reporter=Reporter())
    study = {}
    for shift in SHIFTS:
        s_pool, s_test = domain(conf["shape"], seed, shift)
        s_probe, s_ft = split_unlabeled(s_pool, conf["probe"], conf["finetune"], seed)
        s_teacher = copy.deepcopy(loaded.module)
        recalibrate_batchnorm(s_teacher, [(s_probe.inputs[s:s + 32],) for s in range(0, len(s_probe), 32)])
        s_cache = load_or_build(tmp / f"cache-{seed}-{shift}", s_teacher, state_dict_sha256(s_teacher), s_ft)
        study[shift] = proxy_study(dataclasses.replace(loaded, module=s_teacher), s_probe, s_ft, s_cache, s_test,
                                   conf["study"], seed)
    return {"seed": seed, "accuracy": acc, "train_s": train_s, "shared_s": shared_s, "rows": rows,
            "kd_time": {"online_s": online_s, "cached_s": cached.train_s, "cache_build_s": cache.build_s},
            "study": study, "study_summary": study_summary(study)}


def _blocks(loaded):
    import tempfile

    from edgeprune.exporters.onnx import export_onnx

    from edgeprune.latency.blocks import extract_blocks

    with tempfile.TemporaryDirectory() as tmp:
        proto, _ = export_onnx(loaded.module, loaded.example_inputs(), Path(tmp) / "m.onnx")
    return extract_blocks(proto).blocks


def summary(seeds: list) -> list:
    out = []
    rows = [r for s in seeds for r in s["rows"]]
    for budget in sorted({r["budget"] for r in rows}):
        for method in METHODS:
            sel = [r for r in rows if r["budget"] == budget and r["method"] == method]
            if not sel:
                continue

            def stat(field, sel=sel):
                vals = [r[field] for r in sel]
                return {"mean": statistics.mean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}

            out.append({"budget": budget, "method": method, "n": len(sel), "speedup": stat("speedup"),
                        "accuracy_shifted": stat("accuracy_shifted"), "wall_s": stat("wall_s")})
    return out


def markdown(data: dict) -> str:
    meta = data["meta"]
    lines = ["# TT-MPD benchmark", "", f"{meta['date']}, {meta['machine']}, Python {meta['python']}; "
             f"{meta['mode']} run: {SPEC} at {meta['shape']}, {meta['seeds']} seed(s), budgets "
             f"{', '.join(f'{b}x' for b in meta['budgets'])} (1-thread table, interleaved measurement). "
             "Accuracy on the labelled shifted test split (contrast 0.6, blur, noise 0.25) no method saw; "
             "wall = pruning + the one fine-tune (equal length for every method).", "",
             "| budget | method | measured speedup | shifted accuracy | wall s | ÷ netadapt's wall |",
             "|---|---|---|---|---|---|"]
    summ = data["summary"]
    for s in summ:
        ref = next((x for x in summ if x["budget"] == s["budget"] and x["method"] == "netadapt"), None)
        ratio = s["wall_s"]["mean"] / ref["wall_s"]["mean"] if ref else float("nan")
        lines.append(f"| {s['budget']}x | {s['method']} | {s['speedup']['mean']:.2f} ± {s['speedup']['sd']:.2f} | "
                     f"{s['accuracy_shifted']['mean']:.3f} ± {s['accuracy_shifted']['sd']:.3f} | "
                     f"{s['wall_s']['mean']:.0f} | {ratio:.2f} |")
    lines += ["", "## g and the proxies", ""]
    for seed in data["seeds"]:
        g = [r["g"] for r in seed["rows"] if r["method"] == "ttmpd"]
        lines.append(f"- seed {seed['seed']}: teacher clean {seed['accuracy']['teacher_clean']:.3f}, shifted "
                     f"{seed['accuracy']['teacher_shifted']:.3f}, BN-adapted "
                     f"{seed['accuracy']['teacher_adapted_shifted']:.3f}; g per budget (R², leave-one-out "
                     "Spearman): " + ", ".join(f"({_f(x['r2'])}, {_f(x['loo_spearman'])})" for x in g))
        for shift, st in seed["study_summary"].items():
            if shift == "transfer":
                lines.append(f"  - g (feature + entropy) fitted on {st['fit_on']}, Spearman with true accuracy on "
                             f"{st['tested_on']}: {_f(st['spearman_true'])}")
                continue
            lines.append(f"  - {shift}, {st['n']} single cuts: Spearman with true fine-tuned accuracy — "
                         + ", ".join(f"{p} {_f(v)}" for p, v in st["proxy_spearman"].items())
                         + f"; label-free target {_f(st['pseudo_vs_true'])}; pairs (LOO on the label-free "
                         "target / vs truth): " + ", ".join(f"{k} {_f(v['loo_spearman_pseudo'])}/"
                                                            f"{_f(v['spearman_true'])}"
                                                            for k, v in st["pairs"].items()))
        kd = seed["kd_time"]
        lines.append(f"  - KD {meta['kd_epochs']} epochs: online teacher {kd['online_s']:.1f} s, cached "
                     f"{kd['cached_s']:.1f} s (+ {kd['cache_build_s']:.1f} s to build the cache once)")
    return "\n".join(lines) + "\n"


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def main() -> None:
    import tempfile

    import torch

    import edgeprune
    from edgeprune.devices import load_registry, open_device

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="32×32, one seed, one budget, short training")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--budgets", type=float, nargs="+", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    conf = dict(SMOKE if args.smoke else FULL)
    conf["seeds"] = tuple(args.seeds or conf["seeds"])
    conf["budgets"] = tuple(args.budgets or conf["budgets"])
    out_path = Path(args.out) if args.out else RESULTS / ("ttmpd_smoke.json" if args.smoke else "ttmpd.json")
    torch.set_num_threads(1)
    data = {"meta": {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} ({platform.machine()}, "
                     f"{__import__('os').cpu_count()} cores)", "python": sys.version.split()[0],
                     "mode": "smoke" if args.smoke else "full", "shape": "x".join(map(str, conf["shape"])),
                     "seeds": len(conf["seeds"]), "budgets": list(conf["budgets"]), "kd_epochs": conf["kd_epochs"],
                     "conf": conf}, "seeds": []}
    with tempfile.TemporaryDirectory(prefix="edgeprune-ttmpd-bench-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache.sqlite"
        with open_device("cpu", None, {}, load_registry()) as session:
            t0 = time.time()
            edgeprune.profile(SPEC, "cpu", tmp / "table.json", threads=1, model_args=ARGS, input_shape=conf["shape"],
                              variants=conf["table_variants"], cache=cache, force=True)
            data["meta"]["profile_s"] = time.time() - t0
            print(f"== table in {data['meta']['profile_s']:.0f} s", flush=True)
            for seed in conf["seeds"]:
                data["seeds"].append(run_seed(conf, seed, tmp, session, cache, tmp / "table.json"))
                data["summary"] = summary(data["seeds"])
                save(data, out_path, args.smoke)


def save(data: dict, out_path: Path, smoke: bool) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / ("ttmpd_smoke.md" if smoke else "ttmpd.md")).write_text(markdown(data))


if __name__ == "__main__":
    main()
