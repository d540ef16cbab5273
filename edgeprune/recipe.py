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
device: cpu                         # --device (a name, or a device YAML file)
host: nvidia@192.168.1.20           # optional: measure over SSH, with ssh: {identity: ~/.ssh/id_ed25519, ...}
budget: 2x                          # or 4.2ms
data: digits:train                  # calibration and fine-tuning samples
eval_data: digits:test              # labelled samples for validation (optional)
baseline_accuracy: 0.97             # optional; measured on eval_data when absent
out: runs/resnet18-2x               # relative to the recipe file
grow: {policy: fragrow, epochs: 30} # optional: first train the model from a shallow seed on data (edgeprune grow)
profile: {threads: 1, variants: 10}
prune: {criterion: l2, margin: 0.1} # margin: prune for budget × (1 + margin) to absorb device noise
distill: {epochs: 3}                # or false to skip
adapt: {fit_runs: 6, epochs: 5}     # optional, instead of prune + distill: TT-MPD on data = the device's unlabeled
                                    # samples (edgeprune adapt, docs/ttmpd.md)
export: {}
validate: {min_accuracy_ratio: 0.99, seconds: 5}  # relative to the dense bundle; or false to skip
```

The whole file is checked before any stage runs (`load_recipe`): every key, type and range in `TOP` and
`SECTIONS`, paths, the device and its runtime, the host, the budget; each problem is one line naming the key.
`trust_remote_code` is never a recipe key (see `edgeprune run --trust-remote-code`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInputError

STAGES = ("profile", "prune", "distill", "export", "validate")
SKIPPABLE = ("distill", "validate")  # `distill: false` / `validate: false` skip the stage
OPT_IN = ("grow", "adapt")  # run only when the recipe has the section (a mapping of options, {} for the defaults)
REPLACED_BY_ADAPT = ("prune", "distill")  # adapt prunes and fine-tunes itself: these sections take no options then
BUILTIN_SPECS = ("torchvision:", "timm:")


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


# -- what a recipe may hold -------------------------------------------------------------------------------------
# A rule takes a value from the YAML file and the recipe's folder, and returns the value to use (paths resolved
# beside the recipe, shapes parsed) or raises Invalid. Values that a command-line option would take go through
# the same parser the option uses (budget, input shape, device, model args), so the recipe and the CLI agree.

Rule = Callable[[Any, Path], Any]


class Invalid(Exception):
    """What is wrong with one value (`problem`) and, when the parser knows it, how to fix it (`hint`)."""

    def __init__(self, problem: str, hint: str | None = None):
        super().__init__(problem)
        self.problem, self.hint = problem, hint


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:36] + "..."


def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" in [{low:g}, {high:g}]"
    return f" >= {low:g}" if low is not None else (f" <= {high:g}" if high is not None else "")


def whole(low: int | None = None, high: int | None = None) -> Rule:
    def rule(value: Any, base: Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or \
                (low is not None and value < low) or (high is not None and value > high):
            raise Invalid(f"expected a whole number{_bounds(low, high)}, got {_show(value)}")
        return value
    return rule


def number(low: float | None = None, high: float | None = None, above: float | None = None) -> Rule:
    """A number within [low, high], or strictly above `above`."""
    def rule(value: Any, base: Path) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or \
                (low is not None and value < low) or (high is not None and value > high) or \
                (above is not None and value <= above):
            wanted = f" > {above:g}" if above is not None else _bounds(low, high)
            raise Invalid(f"expected a number{wanted}, got {_show(value)}")
        return value
    return rule


def one_of(*choices: str) -> Rule:
    def rule(value: Any, base: Path) -> str:
        if value not in choices:
            raise Invalid(f"expected one of {', '.join(choices)}, got {_show(value)}")
        return value
    return rule


def text(value: Any, base: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"expected text, got {_show(value)}")
    return value


def texts(value: Any, base: Path) -> list:
    """A list of names (a single name is a list of one)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise Invalid(f"expected a name or a list of names, got {_show(value)}")
    return items


def switch(value: Any, base: Path) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {_show(value)}")
    return value


def maybe(inner: Rule) -> Rule:
    """null, or what `inner` takes."""
    return lambda value, base: None if value is None else inner(value, base)


def parsed(parse: Callable[[str], Any]) -> Rule:
    """Text read by one of edgeprune's own parsers (what it returns is used); its error is the problem."""
    def rule(value: Any, base: Path) -> Any:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise Invalid(f"expected text, got {_show(value)}")
        try:
            return parse(str(value))
        except BadInputError as err:
            raise Invalid(err.message, err.hint) from None
    return rule


def path(must_exist: bool = True, builtin: tuple = ()) -> Rule:
    """A file or folder, relative to the recipe (or ~); `builtin` names (e.g. digits) stay as they are."""
    def rule(value: Any, base: Path) -> str:
        text(value, base)
        if value in builtin:
            return value
        resolved = base / Path(value).expanduser()
        if must_exist and not resolved.exists():
            raise Invalid(f"{resolved} does not exist", "paths in a recipe are relative to the recipe file")
        return str(resolved)
    return rule


def model_spec(value: Any, base: Path) -> str:
    text(value, base)
    if value.startswith(BUILTIN_SPECS):
        return value
    return path()(value, base)


def device_ref(value: Any, base: Path) -> str:
    """A device name or alias, or a device YAML file beside the recipe."""
    import os

    from .devices import lookup_device

    text(value, base)
    if value.endswith((".yaml", ".yml")) or os.sep in value:
        value = path()(value, base)
    try:
        lookup_device(value)
    except BadInputError as err:
        raise Invalid(err.message, err.hint) from None
    return value


def model_args(value: Any, base: Path) -> dict:
    from .models import check_model_args

    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"expected a mapping of constructor options, got {_show(value)}")
    try:
        return check_model_args(dict(value), "a recipe")
    except BadInputError as err:
        raise Invalid(err.message, err.hint) from None


def _budget(value: str) -> str:
    from .budget import parse_budget

    parse_budget(value)
    return value  # the stages take the budget as written


def _shape(value: str) -> tuple:
    from .models import parse_shape

    return parse_shape(value)


def _host(value: str) -> str:
    from .targets.ssh import SSHTarget

    SSHTarget.parse(value)
    return value


def _seed_depth(value: str):
    from .growth.network import parse_seed_depth

    return parse_seed_depth(value)


def _proxies(value: Any, base: Path) -> tuple:
    """TT-MPD's proxy pair: "feature,kl" or a list of names."""
    from .pruning.ttmpd import check_proxies

    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise Invalid(f"expected names separated by commas or a list of names, got {_show(value)}")
    try:
        return check_proxies(v.strip() for v in items if v.strip())
    except BadInputError as err:
        raise Invalid(err.message, err.hint) from None


def _criterion(name: str) -> str:
    from .pruning.criteria import get_criterion

    return get_criterion(name).name


DATA = path(builtin=("digits", "digits:train", "digits:test", "digits-shifted", "digits-shifted:train",
                     "digits-shifted:test"))
PRECISION = one_of("fp32", "fp16", "int8")
THREADS = whole(1, 256)

# key -> (rule, an example value for the hint)
TOP: dict[str, tuple[Rule, str]] = {
    "model": (model_spec, "torchvision:resnet18"),
    "model_args": (model_args, "{num_classes: 10}"),
    "weights": (path(), "weights.safetensors"),
    "input_shape": (parsed(_shape), "1x3x224x224"),
    "seq_len": (whole(1), "128"),
    "regime": (one_of("prefill", "decode"), "prefill"),
    "device": (device_ref, "cpu"),
    "host": (parsed(_host), "user@192.168.1.20"),
    "budget": (parsed(_budget), "2x"),
    "data": (DATA, "digits:train"),
    "eval_data": (DATA, "digits:test"),
    "baseline_accuracy": (number(0, 1), "0.97"),
    "out": (text, "runs/resnet18-2x"),
}
REQUIRED = ("model", "device", "budget", "out")

# section -> {key -> (rule, example value)}: the SSH settings and each stage's options (as the API verbs take them)
SECTIONS: dict[str, dict[str, tuple[Rule, str]]] = {
    "ssh": {
        "identity": (path(), "~/.ssh/id_ed25519"),
        "known_hosts": (path(must_exist=False), "known_hosts"),
        "accept_new_host_key": (switch, "true"),
        "connect_timeout": (number(above=0), "10"),
        "remote_python": (text, "python3"),
    },
    "grow": {
        "policy": (one_of("fragrow", "periodic", "convergent", "vanilla"), "fragrow"),
        "seed_depth": (parsed(_seed_depth), "1"),
        "epochs": (whole(2), "30"),
        "final_epochs": (whole(1), "10"),
        "lr": (number(above=0), "0.05"),
        "batch_size": (whole(1), "64"),
        "alpha": (number(), "4.0"),
        "holdout": (number(above=0, high=0.5), "0.01"),
        "min_holdout": (whole(1), "32"),
        "patience": (whole(1), "2"),
        "seed": (whole(), "0"),
    },
    "profile": {
        "threads": (THREADS, "1"),
        "variants": (whole(0, 1000), "20"),
        "density": (one_of("coarse", "normal", "fine"), "coarse"),
        "precision": (PRECISION, "fp32"),
        "backend": (one_of("onnxruntime", "tensorrt"), "onnxruntime"),
        "provider": (text, "CPUExecutionProvider"),
        "seed": (whole(), "0"),
        "cache": (path(must_exist=False), "cache.sqlite"),
        "lock_clocks": (switch, "false"),
    },
    "prune": {
        "criterion": (parsed(_criterion), "l2"),
        "margin": (number(0, 1), "0.1"),
        "mode": (one_of("latency", "uniform", "global"), "latency"),
        "ratio": (number(0, 0.99), "0.3"),
        "macs": (number(0.01, 1), "0.5"),
        "round_to": (whole(1), "8"),
        "min_keep": (number(0.01, 1), "0.3"),
        "calib_samples": (whole(1), "64"),
        "seed": (whole(), "0"),
        "max_rounds": (whole(1), "3"),
        "threads": (THREADS, "1"),
        "precision": (PRECISION, "fp32"),
        "measure": (switch, "true"),
        "bn_recalibrate": (switch, "true"),
        "search": (whole(0), "24"),
        "sensitivity_points": (whole(1, 16), "4"),
        "ignore": (texts, "[layer1.0.conv1]"),
        "cache": (path(must_exist=False), "cache.sqlite"),
    },
    "adapt": {  # edgeprune.adapt's options; margin as prune's
        "margin": (number(0, 1), "0.1"),
        "probe_samples": (whole(2), "64"),
        "finetune_samples": (whole(2), "256"),
        "proxies": (_proxies, "feature,kl"),
        "fit_runs": (whole(2), "6"),
        "fit_epochs": (whole(1), "1"),
        "fit_target": (one_of("kl", "agreement"), "kl"),
        "epochs": (whole(1), "5"),
        "temperature": (number(above=0), "4.0"),
        "lr": (number(above=0), "0.001"),
        "batch_size": (whole(2), "32"),
        "criterion": (parsed(_criterion), "l2"),
        "sensitivity_points": (whole(1, 16), "4"),
        "min_keep": (number(0.01, 1), "0.3"),
        "seed": (whole(), "0"),
        "max_rounds": (whole(1), "3"),
        "threads": (THREADS, "1"),
        "measure": (switch, "true"),
        "ignore": (texts, "[layer1.0.conv1]"),
        "cache": (path(must_exist=False), "cache.sqlite"),
    },
    "distill": {
        "epochs": (whole(1), "3"),
        "lr": (number(above=0), "0.001"),
        "batch_size": (whole(1), "32"),
        "temperature": (number(above=0), "4.0"),
        "alpha": (number(0, 1), "0.9"),
        "top_k": (maybe(whole(1)), "5"),
        "online": (switch, "false"),
        "holdout": (number(0, 0.9), "0.2"),
        "seed": (whole(), "0"),
    },
    "export": {
        "atol": (number(0), "0.0001"),
        "rtol": (number(0), "0.001"),
        "clean": (switch, "true"),
        "engine": (maybe(PRECISION), "fp16"),
        "workspace_mb": (whole(1), "1024"),
    },
    "validate": {
        "min_accuracy_ratio": (number(0, 1), "0.99"),  # relative: top-1 >= ratio x the dense bundle's
        "min_accuracy": (number(0, 1), "0.9"),  # absolute floor, as `edgeprune validate --min-accuracy`
        "seconds": (number(above=0), "10"),
        "runs": (whole(1), "200"),
        "threads": (THREADS, "1"),
        "runtime": (one_of("onnxruntime", "tensorrt"), "onnxruntime"),
    },
}


def _unknown(keys, known, where: str) -> BadInputError | None:
    """'unknown key' with a did-you-mean, for the first key not in `known`."""
    import difflib

    unknown = sorted(str(k) for k in keys if k not in known)
    if not unknown:
        return None
    close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
    return BadInputError(f"{where} has unknown key '{unknown[0]}'",
                         f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(known))}")


def _read(path: Path) -> dict:
    import yaml

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
    return data


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a whole recipe before any stage runs: every key, type and range, paths, device, budget.

    Every problem is one BadInputError naming the key and the fix; nothing is written and nothing is loaded.
    """
    path = Path(path)
    data = _read(path)
    base = path.parent
    bad = _unknown(data, {*TOP, *SECTIONS}, f"recipe {path}")
    if bad:
        raise bad
    for key in REQUIRED:
        if data.get(key) in (None, ""):
            raise BadInputError(f"recipe {path} lacks '{key}'", f"add {key}: {TOP[key][1]}")

    def check(where: str, rule: Rule, value: Any, example: str) -> Any:
        try:
            return rule(value, base)
        except Invalid as err:
            raise BadInputError(f"recipe {path}: {where}: {err.problem}", err.hint or f"e.g. {example}") from None

    top = {key: check(key, rule, data[key], f"{key}: {example}")
           for key, (rule, example) in TOP.items() if data.get(key) is not None}
    sections = {}
    for name, rules in SECTIONS.items():
        given = data.get(name)
        if given in (None, False) and name in OPT_IN:
            sections[name] = False
            continue
        if given is False and name in SKIPPABLE:
            sections[name] = False
            continue
        if given is not None and not isinstance(given, dict):
            skip = " or false" if name in SKIPPABLE else ""
            raise BadInputError(f"recipe {path}: {name}: expected a mapping of options{skip}, got {_show(given)}",
                                f"e.g. {name}: {{}}")
        given = given or {}
        bad = _unknown(given, rules, f"recipe {path}: {name}")
        if bad:
            raise bad
        sections[name] = {key: check(f"{name}.{key}", rules[key][0], value, f"{name}: {{{key}: {rules[key][1]}}}")
                          for key, value in given.items()}
    recipe = Recipe(model=top["model"], device=top["device"], budget=top["budget"], out=base / top["out"],
                    data=top.get("data"), eval_data=top.get("eval_data"), model_args=top.get("model_args", {}),
                    weights=top.get("weights"), input_shape=top.get("input_shape"),
                    seq_len=top.get("seq_len"), regime=top.get("regime", "prefill"), host=top.get("host"),
                    ssh=sections.pop("ssh"), baseline_accuracy=top.get("baseline_accuracy"), stages=sections)
    _check_together(recipe, path)
    return recipe


def _check_together(recipe: Recipe, path: Path) -> None:
    """What only the keys together decide: where the device is, which stages need data, matching settings."""
    from .api import check_where
    from .pruning.criteria import get_criterion

    profile, prune = recipe.stages["profile"], recipe.stages["prune"]
    if recipe.stages.get("grow") is not False:
        if not recipe.data:
            raise BadInputError(f"recipe {path}: the grow stage trains on labelled data",
                                "add data: PATH (or digits:train), or remove grow")
        if recipe.weights:
            raise BadInputError(f"recipe {path}: the grow stage trains the model from scratch; weights would be unused",
                                "remove weights, or remove grow")
    _check_adapt(recipe, path)
    if recipe.ssh and recipe.host is None:
        raise BadInputError(f"recipe {path}: ssh settings apply only to a device reached over SSH",
                            "add host: user@addr, or remove ssh")
    try:
        check_where(recipe.device, recipe.host, recipe.ssh, backend=profile.get("backend"),
                    provider=profile.get("provider"), precision=profile.get("precision", "fp32"))
    except BadInputError as err:
        raise BadInputError(f"recipe {path}: {err.message}", err.hint) from None
    if not recipe.data:
        if recipe.stages["distill"] is not False:
            raise BadInputError(f"recipe {path}: the distill stage needs data",
                                "add data: PATH (or digits:train), or distill: false")
        if get_criterion(prune.get("criterion", "l2")).needs_data:
            raise BadInputError(f"recipe {path}: prune.criterion {prune['criterion']} needs calibration data",
                                "add data: PATH, or use criterion l1 / l2")
    for name, default in (("threads", 1), ("precision", "fp32")):
        profiled = profile.get(name, default)
        if prune.get(name, profiled) != profiled:
            raise BadInputError(f"recipe {path}: prune.{name} {prune[name]} differs from profile.{name} {profiled}",
                                f"a model is judged only at the table's {name}: give both the same value")


def _check_adapt(recipe: Recipe, path: Path) -> None:
    """The adapt stage replaces prune + distill and adapts an image classifier to the device's samples (`data`)."""
    adapt = recipe.stages.get("adapt")
    if adapt is False:
        return
    if not recipe.data:
        raise BadInputError(f"recipe {path}: the adapt stage adapts to the device's unlabeled samples, and data is "
                            "not given", "add data: PATH (the device's samples; digits-shifted to try it), or "
                            "remove adapt")
    if recipe.seq_len is not None:
        raise BadInputError(f"recipe {path}: the adapt stage adapts image classifiers, not language models",
                            "remove adapt and use prune (with data) and distill")
    given = [name for name in REPLACED_BY_ADAPT if recipe.stages.get(name)]
    if given:
        raise BadInputError(f"recipe {path}: adapt prunes and fine-tunes in one stage, so {given[0]} options "
                            "would be unused", f"move them into adapt (see edgeprune adapt --help), or remove "
                            f"{given[0]}")
    profiled = (recipe.stages.get("profile") or {}).get("threads", 1)
    if adapt.get("threads", profiled) != profiled:
        raise BadInputError(f"recipe {path}: adapt.threads {adapt['threads']} differs from profile.threads "
                            f"{profiled}", "a model is judged only at the table's threads: give both the same value")


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


def run_recipe(recipe: Recipe, reporter=None, force: bool = False, say=print, trust_remote_code: bool = False) -> list:
    """Run every stage whose output is not current; returns one StageRun per stage.

    `trust_remote_code` (never from the recipe file) lets a Hugging Face model directory run its own code.
    A run that fails before any stage wrote something leaves no run directory behind.
    """
    out = recipe.out
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _run_stages(recipe, out, reporter, force, say, trust_remote_code)
    except BaseException:
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _run_stages(recipe: Recipe, out: Path, reporter, force: bool, say, trust_remote_code: bool) -> list:
    import edgeprune

    from .models import load_model, sha256_file

    state = RunState(out)
    runs = []
    gopts = recipe.stages.get("grow")
    if gopts is not False:  # the grown model directory is the model of every later stage
        grown = out / "grown"
        key = _key({"model": recipe.model, "model_args": recipe.model_args, "input_shape": recipe.input_shape,
                    "data": recipe.data, "eval_data": recipe.eval_data, "options": gopts})
        _run_stage(state, runs, say, force, "grow", key, grown, lambda: _summary_grow(edgeprune.grow(
            recipe.model, recipe.data, grown, test_data=recipe.eval_data, model_args=recipe.model_args,
            input_shape=recipe.input_shape, force=True, reporter=reporter, **gopts)))
        recipe = dataclasses.replace(recipe, model=str(grown), model_args={}, weights=None)
    source = {"model": recipe.model, "model_args": recipe.model_args, "input_shape": recipe.input_shape,
              "seq_len": recipe.seq_len, "regime": recipe.regime,
              "weights": sha256_file(Path(recipe.weights)) if recipe.weights else None,
              "grown": state.output_id("grow") if gopts is not False else None}
    where = {"device": recipe.device, "host": recipe.host}

    def stage(name: str, key: str, output: Path, work) -> None:
        _run_stage(state, runs, say, force, name, key, output, work)

    table = out / "table.json"
    popts = recipe.stages.get("profile") or {}
    stage("profile", _key({"source": source, "where": where, "options": popts}), table, lambda: _summary_profile(
        edgeprune.profile(recipe.model, recipe.device, table, host=recipe.host, weights=recipe.weights,
                          model_args=recipe.model_args, input_shape=recipe.input_shape, seq_len=recipe.seq_len,
                          regime=recipe.regime, reporter=reporter, force=True, trust_remote_code=trust_remote_code,
                          **popts, **recipe.ssh)))

    aopts = recipe.stages.get("adapt")
    if aopts is not False:  # TT-MPD prunes and fine-tunes in one stage, on the device's unlabeled samples
        model_dir, made_by = out / "adapted", "adapt"
        aopts = dict(aopts)
        margin = float(aopts.pop("margin", 0.0))
        stage("adapt", _key({"table": state.output_id("profile"), "source": source, "budget": recipe.budget,
                             "margin": margin, "data": recipe.data, "options": aopts}), model_dir,
              lambda: _summary_adapt(edgeprune.adapt(
                  recipe.model, table, recipe.data, model_dir, budget=_with_margin(recipe.budget, margin),
                  weights=recipe.weights, model_args=recipe.model_args, input_shape=recipe.input_shape,
                  host=recipe.host, cache_dir=out / "teacher-cache", reporter=reporter, force=True, **aopts,
                  **recipe.ssh)))
    else:
        model_dir, made_by = _prune_and_distill(recipe, out, state, stage, source, table, reporter,
                                                trust_remote_code)

    baseline_acc = recipe.baseline_accuracy
    if baseline_acc is None and recipe.eval_data:
        baseline_acc = _dense_accuracy(recipe, source, state, trust_remote_code)
    eopts = recipe.stages.get("export") or {}
    bundle, dense_bundle = out / "bundle", out / "bundle-dense"
    stage("export", _key({"model": state.output_id(made_by),
                          "table": state.output_id("profile"), "budget": recipe.budget, "data": recipe.data,
                          "baseline_accuracy": baseline_acc, "options": eopts}), bundle,
          lambda: _summary_export(edgeprune.export(
              model_dir, bundle, data=recipe.data, table=table, budget=recipe.budget, baseline_accuracy=baseline_acc,
              force=True, **eopts)))
    stage("export-dense", _key({"source": source, "table": state.output_id("profile"), "data": recipe.data,
                                "options": eopts}), dense_bundle,
          lambda: _summary_export(edgeprune.export(
              load_model(recipe.model, weights=recipe.weights, model_args=recipe.model_args,
                         input_shape=recipe.input_shape, seq_len=recipe.seq_len, regime=recipe.regime,
                         trust_remote_code=trust_remote_code),
              dense_bundle, data=recipe.data, table=table, force=True, **eopts)))

    vopts = dict(recipe.stages.get("validate") or {})
    if recipe.stages.get("validate") is not False:
        report = out / "report"
        min_acc = vopts.pop("min_accuracy_ratio", 0.99)
        stage("validate", _key({"bundle": state.output_id("export"), "dense": state.output_id("export-dense"),
                                "data": recipe.eval_data, "where": where, "options": vopts, "min": min_acc}), report,
              lambda: _summary_validate(edgeprune.validate(
                  [bundle], recipe.device, recipe.host, data=recipe.eval_data, baseline=str(dense_bundle),
                  budget=recipe.budget, out=report, min_accuracy_ratio=min_acc, force=True, **vopts,
                  **recipe.ssh)))
    return runs


def _prune_and_distill(recipe: Recipe, out: Path, state: RunState, stage, source: dict, table: Path, reporter,
                       trust_remote_code: bool) -> tuple:
    """The prune stage, then distill unless skipped: (the model directory export reads, the stage that made it)."""
    import edgeprune

    pruned = out / "pruned"
    prune_opts = dict(recipe.stages.get("prune") or {})
    margin = float(prune_opts.pop("margin", 0.0))
    budget = _with_margin(recipe.budget, margin)
    stage("prune", _key({"table": state.output_id("profile"), "source": source, "budget": recipe.budget,
                         "margin": margin, "data": recipe.data, "options": prune_opts}), pruned,
          lambda: _summary_prune(edgeprune.prune(
              recipe.model, table, pruned, budget=budget, weights=recipe.weights, model_args=recipe.model_args,
              input_shape=recipe.input_shape, seq_len=recipe.seq_len, regime=recipe.regime, host=recipe.host,
              calib=recipe.data,  # BatchNorm re-estimation, measured option values and data criteria all read it
              reporter=reporter, force=True, trust_remote_code=trust_remote_code, **prune_opts, **recipe.ssh)))

    model_dir, made_by = pruned, "prune"
    dopts = recipe.stages.get("distill")
    if dopts is not False:
        distilled = out / "distilled"
        stage("distill", _key({"student": state.output_id("prune"), "source": source, "data": recipe.data,
                               "options": dopts}), distilled,
              lambda: _summary_distill(edgeprune.distill(
                  pruned, recipe.model, recipe.data, distilled, teacher_weights=recipe.weights,
                  teacher_args=recipe.model_args, cache_dir=out / "teacher-cache", force=True,
                  trust_remote_code=trust_remote_code, **dopts)))
        model_dir, made_by = distilled, "distill"
    return model_dir, made_by


def _run_stage(state: RunState, runs: list, say, force: bool, name: str, key: str, output: Path, work) -> None:
    """Run `work` unless the stage's output is current; record it in run.json and `runs`."""
    if not force and state.current(name, key, output):
        runs.append(StageRun(name, True, 0.0, str(output), (state.data[name] or {}).get("detail", {})))
        say(f"{name}: current ({output}), skipped")
        return
    say(f"{name}: running")
    started = time.time()
    detail = work() or {}
    state.record(name, key, output, detail)
    runs.append(StageRun(name, False, time.time() - started, str(output), detail))


def _with_margin(budget: str, margin: float) -> str:
    """The budget the pruner aims for: tighter by `margin`, so device noise cannot push the result over."""
    from .budget import parse_budget

    if not margin:
        return budget
    parsed = parse_budget(budget)
    return f"{parsed.value * (1 + margin):g}x" if parsed.kind == "speedup" else f"{parsed.value / (1 + margin):g}ms"


def _dense_accuracy(recipe: Recipe, source: dict, state: RunState, trust_remote_code: bool) -> float:
    """The unpruned model's accuracy on eval_data (recorded in run.json; recomputed only when inputs change)."""
    from .data import load_samples
    from .examples import accuracy
    from .models import load_model

    key = _key({"source": source, "eval": recipe.eval_data})
    record = state.data.get("baseline") or {}
    if record.get("key") == key:
        return record["accuracy"]
    loaded = load_model(recipe.model, weights=recipe.weights, model_args=recipe.model_args,
                        input_shape=recipe.input_shape, trust_remote_code=trust_remote_code)
    acc = accuracy(loaded.module, load_samples(recipe.eval_data, loaded.input_shape, loaded.family))
    state.data["baseline"] = {"key": key, "accuracy": acc}
    from .atomic import write_json

    write_json(state.path, state.data)
    return acc


def _summary_grow(done) -> dict:
    r = done.result
    return {"policy": r.policy, "growth_epochs": r.growth_epochs, "train_s": r.train_s,
            "test_accuracy": done.test_accuracy}


def _summary_adapt(done) -> dict:
    r, g = done.pruned, done.model
    return {"predicted_ms": r.predicted_ms, "dense_predicted_ms": r.dense_predicted_ms, "budget_ms": r.budget_ms,
            "measured": r.measured, "g": {"proxies": list(g.proxies), "r2": g.r2, "loo_spearman": g.loo_spearman,
                                          "flat_fallback": done.record["g_flat_fallback"]},
            "fit_runs": len(done.fit_runs), "train_s": done.distill.train_s, "notes": r.notes}


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
    return {"passed": result.passed, "estimate_ms": r["latency"]["estimate_ms"], "p50_ms": r["latency"]["p50_ms"],
            "accuracy": (r.get("accuracy") or {}).get("top1"), "gates": r["gates"]}
