"""`edgeprune run RECIPE.yaml`: profile -> prune -> distill -> export -> validate from one file.

A stage is skipped when its output is current: the run directory's `run.json` records, per stage, the key
(sha256 of the stage's input ids and options) its output was made from and the output's id; a stage whose key
and output are unchanged is not run again. Any change upstream (new weights, another budget) changes the keys
downstream, so exactly the stages that depend on it run.

```yaml
model: torchvision:resnet18        # any --model spec
model_args: {num_classes: 10}
weights: weights.safetensors        # optional, relative to the recipe file
input_shape: 1x3x80x80              # or seq_len: 128 for language models
device: cpu                         # --device; host: user@addr for SSH
budget: 2x                          # or 4.2ms
data: digits:train                  # calibration and fine-tuning samples
eval_data: digits:test              # labelled samples for validation (optional)
baseline_accuracy: 0.97             # optional; measured on eval_data when absent
out: runs/resnet18-2x               # relative to the recipe file
profile: {threads: 1, variants: 10}
prune: {criterion: l2, margin: 0.1} # margin: prune for budget × (1 + margin) to absorb device noise
distill: {epochs: 3}                # or false to skip
export: {}
validate: {min_accuracy: 0.99, seconds: 5}
```
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadInputError

KEYS = {"model", "model_args", "weights", "input_shape", "seq_len", "regime", "device", "host", "ssh", "budget",
        "data", "eval_data", "baseline_accuracy", "out", "profile", "prune", "distill", "export", "validate"}
STAGES = ("profile", "prune", "distill", "export", "validate")


@dataclass
class Recipe:
    model: str
    device: str
    budget: str
    out: Path
    data: str | None = None
    eval_data: str | None = None
    model_args: dict = field(default_factory=dict)
    weights: str | None = None
    input_shape: tuple | None = None
    seq_len: int | None = None
    regime: str = "prefill"
    host: str | None = None
    ssh: dict = field(default_factory=dict)
    baseline_accuracy: float | None = None
    stages: dict = field(default_factory=dict)  # stage -> options dict, or False to skip


@dataclass
class StageRun:
    name: str
    skipped: bool
    wall_s: float
    output: str | None
    detail: dict = field(default_factory=dict)


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe; malformed YAML or unknown keys are one clear error."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"recipe {path} does not exist", "give a YAML file (see edgeprune run --help)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise BadInputError(f"recipe {path} is not valid YAML{where}: {getattr(err, 'problem', err)}",
                            "fix the indentation or quoting there") from None
    if not isinstance(data, dict):
        raise BadInputError(f"recipe {path} must be a mapping of keys to values", "see edgeprune run --help")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(KEYS), n=1)
        raise BadInputError(f"recipe {path} has unknown key '{unknown[0]}'",
                            f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(KEYS))}")
    for key in ("model", "device", "budget", "out"):
        if not data.get(key):
            raise BadInputError(f"recipe {path} lacks '{key}'", f"add {key}: ... (see edgeprune run --help)")
    from .models import parse_shape

    base = path.parent

    def rel(value):
        if value is None or str(value) in ("digits", "digits:train", "digits:test") or \
                str(value).startswith(("torchvision:", "timm:")):
            return value
        candidate = base / str(value)
        return str(candidate) if candidate.exists() or not Path(str(value)).is_absolute() else str(value)

    stages = {s: data.get(s, {}) if data.get(s, {}) is not False else False for s in STAGES}
    for name, opts in stages.items():
        if opts is not False and not isinstance(opts, dict):
            raise BadInputError(f"recipe {path}: '{name}' must be a mapping of options or false",
                                f"e.g. {name}: {{}}")
    return Recipe(model=rel(data["model"]), device=str(data["device"]), budget=str(data["budget"]),
                  out=base / str(data["out"]), data=rel(data.get("data")), eval_data=rel(data.get("eval_data")),
                  model_args=dict(data.get("model_args") or {}), weights=rel(data.get("weights")),
                  input_shape=parse_shape(data.get("input_shape")), seq_len=data.get("seq_len"),
                  regime=data.get("regime", "prefill"), host=data.get("host"), ssh=dict(data.get("ssh") or {}),
                  baseline_accuracy=data.get("baseline_accuracy"), stages=stages)


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def dir_id(path: Path) -> str:
    """sha256 over a directory's files (names and contents): the id of a pruned-model dir or a bundle."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


class RunState:
    """run.json in the run directory: per stage, the key its output was made from and the output's id."""

    def __init__(self, folder: Path):
        self.path = folder / "run.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def current(self, stage: str, key: str, output: Path) -> bool:
        record = self.data.get(stage) or {}
        if record.get("key") != key or not output.exists():
            return False
        return record.get("output_id") == _output_id(output)

    def record(self, stage: str, key: str, output: Path, detail: dict) -> str:
        output_id = _output_id(output)
        self.data[stage] = {"key": key, "output_id": output_id, "detail": detail,
                            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        from .atomic import write_json

        write_json(self.path, self.data)
        return output_id

    def output_id(self, stage: str) -> str | None:
        return (self.data.get(stage) or {}).get("output_id")


def _output_id(path: Path) -> str:
    from .models import sha256_file

    return dir_id(path) if path.is_dir() else sha256_file(path)


def run_recipe(recipe: Recipe, reporter=None, force: bool = False, say=print) -> list:
    """Run every stage whose output is not current; returns one StageRun per stage."""
    import edgeprune

    from .models import load_model, sha256_file

    out = recipe.out
    out.mkdir(parents=True, exist_ok=True)
    state = RunState(out)
    runs = []
    source = {"model": recipe.model, "model_args": recipe.model_args, "input_shape": recipe.input_shape,
              "seq_len": recipe.seq_len, "regime": recipe.regime,
              "weights": sha256_file(Path(recipe.weights)) if recipe.weights else None}
    where = {"device": recipe.device, "host": recipe.host}

    def stage(name: str, key: str, output: Path, work) -> None:
        if not force and state.current(name, key, output):
            runs.append(StageRun(name, True, 0.0, str(output), (state.data[name] or {}).get("detail", {})))
            say(f"{name}: current ({output}), skipped")
            return
        say(f"{name}: running")
        started = time.time()
        detail = work() or {}
        state.record(name, key, output, detail)
        runs.append(StageRun(name, False, time.time() - started, str(output), detail))

    table = out / "table.json"
    popts = recipe.stages.get("profile") or {}
    stage("profile", _key({"source": source, "where": where, "options": popts}), table, lambda: _summary_profile(
        edgeprune.profile(recipe.model, recipe.device, table, host=recipe.host, weights=recipe.weights,
                          model_args=recipe.model_args, input_shape=recipe.input_shape, seq_len=recipe.seq_len,
                          regime=recipe.regime, reporter=reporter, force=True, **_profile_args(popts),
                          **recipe.ssh)))

    pruned = out / "pruned"
    prune_opts = dict(recipe.stages.get("prune") or {})
    margin = float(prune_opts.pop("margin", 0.0))
    budget = _with_margin(recipe.budget, margin)
    stage("prune", _key({"table": state.output_id("profile"), "source": source, "budget": recipe.budget,
                         "margin": margin, "data": recipe.data, "options": prune_opts}), pruned,
          lambda: _summary_prune(edgeprune.prune(
              recipe.model, table, pruned, budget=budget, weights=recipe.weights, model_args=recipe.model_args,
              input_shape=recipe.input_shape, seq_len=recipe.seq_len, regime=recipe.regime, host=recipe.host,
              calib=recipe.data if prune_opts.get("criterion") in ("taylor", "wanda_sp", "flap") else None,
              reporter=reporter, force=True, **prune_opts, **recipe.ssh)))

    model_dir = pruned
    dopts = recipe.stages.get("distill")
    if dopts is not False:
        if not recipe.data:
            raise BadInputError("the distill stage needs data", "add data: PATH to the recipe, or distill: false")
        distilled = out / "distilled"
        stage("distill", _key({"student": state.output_id("prune"), "source": source, "data": recipe.data,
                               "options": dopts}), distilled,
              lambda: _summary_distill(edgeprune.distill(
                  pruned, recipe.model, recipe.data, distilled, teacher_weights=recipe.weights,
                  teacher_args=recipe.model_args, cache_dir=out / "teacher-cache", force=True, **dopts)))
        model_dir = distilled

    baseline_acc = recipe.baseline_accuracy
    if baseline_acc is None and recipe.eval_data:
        baseline_acc = _dense_accuracy(recipe, source, state, out)
    eopts = recipe.stages.get("export") or {}
    bundle, dense_bundle = out / "bundle", out / "bundle-dense"
    stage("export", _key({"model": state.output_id("distill" if model_dir != pruned else "prune"),
                          "table": state.output_id("profile"), "budget": recipe.budget, "data": recipe.data,
                          "baseline_accuracy": baseline_acc, "options": eopts}), bundle,
          lambda: _summary_export(edgeprune.export(
              model_dir, bundle, data=recipe.data, table=table, budget=recipe.budget, baseline_accuracy=baseline_acc,
              force=True, **eopts)))
    stage("export-dense", _key({"source": source, "table": state.output_id("profile"), "data": recipe.data,
                                "options": eopts}), dense_bundle,
          lambda: _summary_export(edgeprune.export(
              load_model(recipe.model, weights=recipe.weights, model_args=recipe.model_args,
                         input_shape=recipe.input_shape, seq_len=recipe.seq_len, regime=recipe.regime),
              dense_bundle, data=recipe.data, table=table, force=True, **eopts)))

    vopts = dict(recipe.stages.get("validate") or {})
    if recipe.stages.get("validate") is not False:
        report = out / "report"
        min_acc = vopts.pop("min_accuracy", 0.99)
        stage("validate", _key({"bundle": state.output_id("export"), "dense": state.output_id("export-dense"),
                                "data": recipe.eval_data, "where": where, "options": vopts, "min": min_acc}), report,
              lambda: _summary_validate(edgeprune.validate(
                  [bundle], recipe.device, recipe.host, data=recipe.eval_data, baseline=str(dense_bundle),
                  budget=recipe.budget, out=report, min_accuracy_ratio=min_acc, force=True, **vopts,
                  **recipe.ssh)))
    return runs


def _with_margin(budget: str, margin: float) -> str:
    """The budget the pruner aims for: tighter by `margin`, so device noise cannot push the result over."""
    from .pruning.engine import parse_budget

    if not margin:
        return budget
    parsed = parse_budget(budget)
    return f"{parsed.value * (1 + margin):g}x" if parsed.kind == "speedup" else f"{parsed.value / (1 + margin):g}ms"


def _profile_args(opts: dict) -> dict:
    allowed = {"threads", "variants", "density", "precision", "seed", "cache", "lock_clocks", "backend", "provider"}
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise BadInputError(f"unknown profile option '{unknown[0]}' in the recipe",
                            f"known: {', '.join(sorted(allowed))}")
    return opts


def _dense_accuracy(recipe: Recipe, source: dict, state: RunState, out: Path) -> float:
    """The unpruned model's accuracy on eval_data (recorded in run.json; recomputed only when inputs change)."""
    from .data import load_samples
    from .examples import accuracy
    from .models import load_model

    key = _key({"source": source, "eval": recipe.eval_data})
    record = state.data.get("baseline") or {}
    if record.get("key") == key:
        return record["accuracy"]
    loaded = load_model(recipe.model, weights=recipe.weights, model_args=recipe.model_args,
                        input_shape=recipe.input_shape)
    acc = accuracy(loaded.module, load_samples(recipe.eval_data, loaded.input_shape, loaded.family))
    state.data["baseline"] = {"key": key, "accuracy": acc}
    from .atomic import write_json

    write_json(state.path, state.data)
    return acc


def _summary_profile(result) -> dict:
    t = result.table
    return {"id": t.id, "within_10": t.fidelity.get("within_10"), "dense_ms": t.calibration.get("dense_measured_ms")}


def _summary_prune(result) -> dict:
    return {"predicted_ms": result.predicted_ms, "dense_predicted_ms": result.dense_predicted_ms,
            "budget_ms": result.budget_ms, "measured": result.measured, "notes": result.notes}


def _summary_distill(done) -> dict:
    return {"accuracy": done.accuracy, "train_s": done.result.train_s, "cache_reused": done.cache_reused}


def _summary_export(result) -> dict:
    return {"manifest_id": result.manifest["id"], "parity_ok": result.parity["ok"]}


def _summary_validate(result) -> dict:
    r = result.reports[0]
    return {"passed": not result.failed, "estimate_ms": r["latency"]["estimate_ms"], "p50_ms": r["latency"]["p50_ms"],
            "accuracy": (r.get("accuracy") or {}).get("top1"), "gates": r["gates"]}
