"""Publish pruning coverage: every torchvision classification model and timm's edge families, end to end.

Run from the repository root: `nice -n 10 python bench/coverage_bench.py [--models SPEC ...]`.
Each model runs in its own process (memory is returned, a crash or a hang ends one row, not the bench) through
the coverage test's `cover` (tests/pruning/test_coverage.py): profile (cells + 3 held-out variants on the formula
device) -> prune --mode uniform --ratio 0.3 -> load -> export -> ONNX Runtime parity <= 1e-4. Beside it, the same
process prunes the same model with Torch-Pruning's own MetaPruner (L2 magnitude, ratio 0.3, the classifier
ignored) and runs the result, so both counts come from one list on one machine.
Writes bench/results/coverage.json and docs/results/coverage.md; `--models` reruns some rows and keeps the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "coverage.json"
DOC = ROOT / "docs" / "results" / "coverage.md"
MEMORY_GB = 16  # per model: a model past this is reported as not run here, not as a failure of the pruner
TIMEOUT_S = 3600
LAST = ("regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_32gf", "regnet_x_32gf", "convnext_large",
        "efficientnet_v2_l", "vgg")  # the largest (> 100 M parameters) run after the rest
TP_PUBLISHED = ("Torch-Pruning's benchmarks/prunability/readme.md (torchvision 0.13.1; 85 models counting "
                "detection, segmentation and optical flow): 73 in its first version of that table, 77 and 81 in "
                "later ones; its classification failures were swin_t/s/b and the four shufflenet_v2 models")


def run_one(spec: str) -> dict:
    """The coverage record and Torch-Pruning's result for one model (runs inside the child process)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_GB << 30, MEMORY_GB << 30))
    sys.path.insert(0, str(ROOT))
    import warnings

    warnings.filterwarnings("ignore")
    from tests.pruning.test_coverage import cover

    with tempfile.TemporaryDirectory(prefix="edgeprune-coverage-") as tmp:
        record = cover(spec, Path(tmp))
    if record["status"] == "not run":  # cover() ran out of memory: under this bench's limit, not the machine's
        record["line"] = f"over this bench's {MEMORY_GB} GB memory limit"
    record["torch_pruning"] = torch_pruning_result(spec)
    record["memory_gb"] = MEMORY_GB
    return record


def torch_pruning_result(spec: str) -> dict:
    """Torch-Pruning's MetaPruner on the same model and input: pruned, runs, and how many parameters remain."""
    import torch
    import torch_pruning as tp

    from edgeprune.models import load_model
    from edgeprune.pruning.groups import output_layers
    from tests.pruning.test_coverage import shape_of

    args, shape = shape_of(spec)
    started = time.time()
    torch.set_num_threads(1)
    try:
        module = load_model(spec, model_args=args, input_shape=shape).module
        example = torch.randn(shape)
        before = sum(p.numel() for p in module.parameters())
        pruner = tp.pruner.MetaPruner(module, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=0.3, ignored_layers=output_layers(module))
        pruner.step()
        with torch.no_grad():
            out = module(example)
        after = sum(p.numel() for p in module.parameters())
        ok = after < before and out.shape[-1] == 1000
        return {"status": "pass" if ok else "failed", "params_kept": round(after / before, 3),
                "seconds": round(time.time() - started, 1),
                **({} if ok else {"line": "nothing was pruned" if after >= before else f"output {tuple(out.shape)}"})}
    except MemoryError:
        return {"status": "not run", "line": f"over this bench's {MEMORY_GB} GB memory limit"}
    except Exception as err:  # noqa: BLE001 - Torch-Pruning's failure is the finding
        return {"status": "failed", "line": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                if str(err) else type(err).__name__, "seconds": round(time.time() - started, 1)}


def child(spec: str) -> dict:
    """Run `spec` in a fresh process with a time limit; a crash or a kill is a failed row."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", spec, "--child-out", str(out),
           "--memory-gb", str(MEMORY_GB)]
    started = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
        if proc.returncode == 0 and out.stat().st_size:
            return json.loads(out.read_text())
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return {"spec": spec, "status": "failed", "line": f"the process ended with {proc.returncode}: {tail}",
                "seconds": round(time.time() - started, 1)}
    except subprocess.TimeoutExpired:
        return {"spec": spec, "status": "failed", "line": f"no result in {TIMEOUT_S} s",
                "seconds": round(time.time() - started, 1)}
    finally:
        out.unlink(missing_ok=True)


def summary(records: list) -> dict:
    def count(rows, key=None):
        get = (lambda r: r.get("torch_pruning", {}).get("status")) if key else (lambda r: r.get("status"))
        return {s: sum(1 for r in rows if get(r) == s) for s in ("pass", "refused", "failed", "not run")}

    tv = [r for r in records if r["spec"].startswith("torchvision:")]
    tm = [r for r in records if r["spec"].startswith("timm:")]
    return {"torchvision": {"models": len(tv), "edgeprune": count(tv), "torch_pruning": count(tv, "tp")},
            "timm": {"models": len(tm), "edgeprune": count(tm), "torch_pruning": count(tm, "tp")}}


def write_doc(data: dict) -> None:
    s = data["summary"]
    lines = [
        "# Pruning coverage over the model registries",
        "",
        "Generated by `bench/coverage_bench.py` (the coverage test's pipeline, `tests/pruning/test_coverage.py`) on "
        f"{data['meta']['date']}, {data['meta']['machine']}; torch {data['meta']['torch']}, torchvision "
        f"{data['meta']['torchvision']}, timm {data['meta']['timm']}, Torch-Pruning {data['meta']['torch_pruning']}.",
        "",
        "Each model, randomly initialised (no weights downloaded), goes through `edgeprune profile` (latency cells + 3 "
        "held-out variants, timings from the formula device double, so no row depends on this machine's speed) → "
        "`edgeprune prune --mode uniform --ratio 0.3` → `edgeprune.load` → ONNX export → ONNX Runtime parity ≤ 1e-4, "
        "at 1x3x64x64 unless the model needs another input (column *input*). **pass**: all of it; **refused**: "
        "one error line, no traceback (quoted); **failed**: anything else. *kept whole* counts the channel groups "
        "edgeprune leaves at full width, with the reason printed by `prune`.",
        "",
        "Torch-Pruning's column runs its own `MetaPruner` (group L2 magnitude, pruning ratio 0.3, classifier ignored) "
        "on the same model and input in the same process, and counts a pass when the pruned model runs and is "
        "smaller (it does not export or check parity).",
        "",
        "| | models | edgeprune pass | refused | failed | not run | Torch-Pruning pass | failed | not run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in ("torchvision", "timm"):
        e, t = s[key]["edgeprune"], s[key]["torch_pruning"]
        lines.append(f"| {key} | {s[key]['models']} | {e['pass']} | {e['refused']} | {e['failed']} | {e['not run']} | "
                     f"{t['pass']} | {t['failed']} | {t['not run']} |")
    lines += ["", f"Torch-Pruning's published figure: {TP_PUBLISHED}.", "",
              "| model | input | edgeprune | params kept | kept whole | s | Torch-Pruning | line |",
              "|---|---|---|---|---|---|---|---|"]
    for r in data["models"]:
        tp = r.get("torch_pruning", {})
        kept = f"{r['pruned_params'] / r['params']:.2f}" if r.get("pruned_params") and r.get("params") else ""
        whole = r.get("kept_whole_groups")
        line = r.get("line", "")
        if tp.get("status") != "pass" and tp.get("line"):
            line = (line + " " if line else "") + f"(Torch-Pruning: {tp['line']})"
        shape = "x".join(str(d) for d in r.get("input_shape", []))
        lines.append(f"| {r['spec']} | {shape} | {r['status']} | {kept} | {whole or ''} | {r.get('seconds', '')} | "
                     f"{tp.get('status', '')} | {line.replace('|', '/')} |")
    notes = [(r["spec"], n) for r in data["models"] for n in r.get("kept_whole", [])]
    if notes:
        lines += ["", "## Groups kept whole", "",
                  "What `prune` printed for each model that keeps some groups whole:", ""]
        lines += [f"- {spec}: {note}" for spec, note in notes]
    write(DOC, "\n".join(lines) + "\n")


def write(path: Path, text: str) -> None:
    from edgeprune.atomic import atomic_file

    with atomic_file(path) as handle:
        handle.write(text)


def main() -> None:
    global MEMORY_GB
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="*", help="specs to (re)run; the other rows are kept")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--memory-gb", type=int, default=MEMORY_GB,
                        help="address-space limit per model (a row records the limit it ran under); an allocation "
                             "that fails under it can surface as another error than MemoryError (protobuf's "
                             "'Failed to serialize proto'), so a failed large model is worth a rerun with more")
    opts = parser.parse_args()
    MEMORY_GB = opts.memory_gb
    if opts.child:
        Path(opts.child_out).write_text(json.dumps(run_one(opts.child)))
        return
    sys.path.insert(0, str(ROOT))
    import timm
    import torch
    import torch_pruning
    import torchvision

    from tests.pruning.test_coverage import all_specs

    specs = all_specs()
    old = {r["spec"]: r for r in json.loads(RESULTS.read_text())["models"]} if RESULTS.exists() else {}
    todo = opts.models or sorted((s for s in specs if s not in old), key=lambda s: any(k in s for k in LAST))
    records = dict(old)
    for i, spec in enumerate(todo):
        record = child(spec)
        records[spec] = record
        print(f"[{i + 1}/{len(todo)}] {spec}: {record['status']} ({record.get('seconds', '?')} s) "
              f"TP {record.get('torch_pruning', {}).get('status', '?')} {record.get('line', '')[:160]}", flush=True)
        ordered = [records[s] for s in specs if s in records]
        data = {"meta": {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} "
                         f"cores, load {os.getloadavg()[0]:.1f} at the end", "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "timm": timm.__version__,
                         "torch_pruning": torch_pruning.__version__, "ratio": 0.3, "parity": 1e-4,
                         "memory_limit_gb": MEMORY_GB, "tp_published": TP_PUBLISHED},
                "summary": summary(ordered), "models": ordered}
        write(RESULTS, json.dumps(data, indent=1) + "\n")  # after every row: an interrupted run keeps its rows
        write_doc(data)


if __name__ == "__main__":
    main()
