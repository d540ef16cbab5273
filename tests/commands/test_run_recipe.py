"""`edgeprune run RECIPE.yaml` and `edgeprune demo`: stages run once, skip when current, rerun downstream."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.commands.test_profile_cli import run_cli

RECIPE = """\
model: torchvision:resnet18
model_args: {num_classes: 10}
input_shape: 1x3x32x32
device: cpu
budget: BUDGET
data: digits:train
eval_data: digits:test
baseline_accuracy: 0.05
out: run
profile: {threads: 1, variants: 0}
prune: {criterion: l1}
distill: {epochs: 1}
validate: {min_accuracy: 0.0, seconds: 0.5, runs: 20}
"""


@pytest.mark.parametrize("text,expected", [
    ("model: [unclosed", "not valid YAML at line 1"),
    ("model: x\ndevice: cpu\nbudget: 2x\nout: o\nprofil: {}\n", "did you mean 'profile'"),
    ("model: x\ndevice: cpu\nout: o\n", "lacks 'budget'"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_malformed_recipes_are_one_line_exit_2(text, expected, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    proc = run_cli("run", str(recipe))
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and expected in lines[0], proc.stderr


def test_recipe_runs_every_stage_then_skips_current_ones_then_reruns_downstream(tmp_path, formula_device,
                                                                              cli_in_process, monkeypatch):
    """Stage logic on the formula device: every budget is reachable and every latency gate decidable anywhere.

    Distillation, export, parity and accuracy run for real; only timings come from the device's known law.
    """
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace("BUDGET", "1.5x"))
    first = cli_in_process("--json", "run", str(recipe))
    assert first.returncode == 0, first.stderr
    stages = {s["stage"]: s for s in json.loads(first.stdout)["stages"]}
    assert list(stages) == ["profile", "prune", "distill", "export", "export-dense", "validate"]
    assert not any(s["skipped"] for s in stages.values())
    assert stages["validate"]["detail"]["passed"]
    second = cli_in_process("--json", "run", str(recipe))
    assert second.returncode == 0, second.stderr
    assert all(s["skipped"] for s in json.loads(second.stdout)["stages"])
    recipe.write_text(RECIPE.replace("BUDGET", "2x"))  # a new budget: the table stays, everything after reruns
    third = cli_in_process("--json", "run", str(recipe))
    assert third.returncode == 0, third.stderr
    skipped = {s["stage"]: s["skipped"] for s in json.loads(third.stdout)["stages"]}
    assert skipped == {"profile": True, "prune": False, "distill": False, "export": False, "export-dense": True,
                       "validate": False}
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    gate = report["bundles"][0]["gates"]["latency"]
    assert gate["ok"] and gate["value"] <= gate["limit"] * 1.03
    assert report["bundles"][0]["latency"].get("formula")  # the gate judged the device's law, not this machine


@pytest.mark.slow
def test_demo_passes_end_to_end_and_reuses_everything_on_a_second_run(tmp_path):
    first = run_cli("--json", "demo", "--workdir", str(tmp_path / "demo"), timeout=1800)
    assert first.returncode == 0, first.stderr
    s = json.loads(first.stdout)
    assert s["passed"] and s["speedup"] > 1.0  # the 2x budget itself is validate's latency gate, inside passed
    assert s["pruned_accuracy"] >= 0.98 * s["dense_accuracy"]
    second = run_cli("--json", "demo", "--workdir", str(tmp_path / "demo"), timeout=1800)
    assert second.returncode == 0, second.stderr
    assert all(x["skipped"] for x in json.loads(second.stdout)["stages"])
    assert textwrap.dedent((tmp_path / "demo" / "recipe.yaml").read_text()).startswith("# edgeprune's built-in")


def test_recipe_paths_resolve_beside_the_recipe_even_when_named_like_builtin_data(tmp_path):
    from edgeprune.recipe import load_recipe

    (tmp_path / "digits-model.safetensors").write_bytes(b"x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: torchvision:resnet18\nweights: digits-model.safetensors\ndevice: cpu\nbudget: 2x\n"
                      "data: digits:train\nout: run\n")
    loaded = load_recipe(recipe)
    assert loaded.weights == str(tmp_path / "digits-model.safetensors")
    assert loaded.data == "digits:train" and loaded.model == "torchvision:resnet18"
    assert loaded.out == tmp_path / "run"


# -- the whole recipe is checked before any stage runs ----------------------------------------------------------

VALID = {"model": "torchvision:resnet18", "device": "cpu", "budget": "2x", "data": "digits:train", "out": "run"}

# extra YAML -> what the one error line says (each seen by a user: a traceback, or a failure after minutes of work)
BAD_RECIPES = {
    "model_args: [1, 2]": "model_args: expected a mapping of constructor options, got [1, 2]",
    "prune: {margin: x}": "prune.margin: expected a number in [0, 1], got \"x\"",
    "budget: fast": "budget: cannot read budget 'fast'",
    "profile: {threads: two}": "profile.threads: expected a whole number in [1, 256], got \"two\"",
    "validate: {min_accuracy: 5}": "validate.min_accuracy: expected a number in [0, 1], got 5",
    "seq_len: -1": "seq_len: expected a whole number >= 1, got -1",
    "input_shape: 1x3x0": "input_shape: input shape '1x3x0' has a non-positive dimension",
    "data: missing.npz": "missing.npz does not exist",
    "eval_data: missing-folder": "missing-folder does not exist",
    "weights: w.safetensors": "w.safetensors does not exist",
    "device: cpux": "device: unknown device 'cpux'",
    "prune: {margn: 0.1}": "prune has unknown key 'margn'; did you mean 'margin'?",
    "distill: {epochs: 0}": "distill.epochs: expected a whole number >= 1, got 0",
    "distill: 3": "distill: expected a mapping of options or false, got 3",
    "export: false": "export: expected a mapping of options, got false",
    "model_args: {trust_remote_code: true}": "trust_remote_code cannot be set through a recipe",
    "host: nvidia@jetson:ssh": "is not user@addr",
    "ssh: {connect_timeout: 5}": "ssh settings apply only to a device reached over SSH",
    "{host: pi@rpi, ssh: {identity: missing_key}}": "ssh.identity: ",
    "profile: {backend: tensorrt}": "device cpu has no tensorrt runtime",
    "prune: {threads: 2}": "prune.threads 2 differs from profile.threads 1",
    "{data: null, distill: false, prune: {criterion: taylor}}": "prune.criterion taylor needs calibration data",
    "data: null": "the distill stage needs data",
    "prune: {criterion: l3}": "prune.criterion: unknown criterion 'l3'",
}


def _write(tmp_path, extra: str):
    import yaml

    data = dict(VALID)
    data.update(yaml.safe_load(extra))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}))
    return recipe


@pytest.fixture
def no_stage_runs(monkeypatch):
    """Any stage (or model load) starting fails the test: the checks under test come before all of them."""
    import edgeprune

    def started(*args, **kwargs):
        pytest.fail("a stage started before the recipe was checked")

    for verb in ("profile", "prune", "distill", "export", "validate"):
        monkeypatch.setattr(edgeprune, verb, started)
    monkeypatch.setattr("edgeprune.models.load_model", started)


@pytest.mark.parametrize("extra", sorted(BAD_RECIPES))
def test_every_key_is_checked_before_any_stage_runs(extra, tmp_path, capsys, no_stage_runs):
    from tests.commands.test_early_checks import invoke

    code, err = invoke(capsys, "run", str(_write(tmp_path, extra)))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: recipe "), err
    assert BAD_RECIPES[extra] in lines[0], err
    assert not (tmp_path / "run").exists()


def test_every_hint_example_is_itself_valid(tmp_path, monkeypatch):
    """The `e.g.` of every key passes its own rule (files the examples name exist here)."""
    import yaml

    from edgeprune.recipe import SECTIONS, TOP, Invalid

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("key")
    (tmp_path / "weights.safetensors").write_text("weights")
    rules = [(k, *v) for k, v in TOP.items()] + [(f"{s}.{k}", *v) for s, keys in SECTIONS.items()
                                                   for k, v in keys.items()]
    for where, rule, example in rules:
        try:
            rule(yaml.safe_load(f"value: {example}")["value"], tmp_path)
        except Invalid as err:
            pytest.fail(f"the example of {where} ({example}) is refused: {err.problem}")


def test_stage_options_are_the_verbs_parameters():
    """Each stage's recipe keys are keyword arguments of the API verb the stage calls (or the recipe's own)."""
    import inspect

    import edgeprune
    from edgeprune.recipe import SECTIONS
    from edgeprune.targets import SSH_OPTION_FLAGS

    own = {"prune": {"margin"}}  # read by the recipe itself
    for stage in ("profile", "prune", "distill", "export", "validate"):
        parameters = set(inspect.signature(getattr(edgeprune, stage)).parameters)
        assert set(SECTIONS[stage]) - own.get(stage, set()) <= parameters, stage
    assert set(SECTIONS["ssh"]) == set(SSH_OPTION_FLAGS)  # passed on as open_target's options


def test_a_recipe_resolves_and_parses_its_values(tmp_path):
    from edgeprune.recipe import load_recipe

    (tmp_path / "key").write_text("key")
    recipe = load_recipe(_write(tmp_path, "{input_shape: 1x3x32x32, host: pi@rpi:2222, ssh: {identity: key}, "
                                          "profile: {cache: c.sqlite}, distill: false}"))
    assert recipe.input_shape == (1, 3, 32, 32) and recipe.out == tmp_path / "run"
    assert recipe.ssh == {"identity": str(tmp_path / "key")}
    assert recipe.stages["profile"] == {"cache": str(tmp_path / "c.sqlite")} and recipe.stages["distill"] is False
    assert recipe.stages["prune"] == {} and recipe.stages["validate"] == {}


def test_a_stage_that_fails_leaves_no_empty_run_folder(tmp_path, capsys, monkeypatch):
    import edgeprune
    from edgeprune.errors import DeviceError
    from tests.commands.test_early_checks import invoke

    seen = {}

    def unreachable(*args, **kwargs):
        seen.update(kwargs)
        raise DeviceError("cannot reach pi@rpi:22: Connection refused", "check the address")

    monkeypatch.setattr(edgeprune, "profile", unreachable)
    recipe = _write(tmp_path, "{}")
    code, err = invoke(capsys, "run", str(recipe))
    assert code == 2 and "cannot reach" in err and not (tmp_path / "run").exists()
    assert seen["trust_remote_code"] is False
    (tmp_path / "run").mkdir()  # a folder the user made is theirs: kept
    code, err = invoke(capsys, "run", "--trust-remote-code", str(recipe))
    assert code == 2 and (tmp_path / "run").is_dir()
    assert seen["trust_remote_code"] is True  # the flag, never the file, switches it on
    assert err.splitlines()[0] == f"warning: --trust-remote-code: Python code in the model directory of {recipe} " \
                                  "will run on this machine"
