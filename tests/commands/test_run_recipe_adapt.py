"""The recipe's adapt stage (`edgeprune run` with `adapt: {...}`): TT-MPD instead of prune + distill."""

from __future__ import annotations

import json

import pytest

RECIPE = """\
model: torchvision:mobilenet_v2
model_args: {num_classes: 10, width_mult: 0.25, inverted_residual_setting: [[1, 8, 1, 1], [6, 16, 2, 2]]}
input_shape: 1x3x8x8
device: cpu
budget: BUDGET
data: digits-shifted:train
out: run
profile: {variants: 0}
ADAPT
validate: false
"""
ADAPT = "adapt: {probe_samples: 16, finetune_samples: 48, fit_runs: 2, epochs: 1, sensitivity_points: 2, min_keep: 0.1}"
RECIPE = RECIPE.replace("ADAPT", ADAPT)


def test_a_recipe_adapts_instead_of_pruning_and_distilling_and_reruns_only_what_changed(tmp_path, formula_device,
                                                                                          cli_in_process):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace("BUDGET", "1.03x"))
    first = cli_in_process("--json", "run", str(recipe))
    assert first.returncode == 0, first.stderr
    stages = {s["stage"]: s for s in json.loads(first.stdout)["stages"]}
    assert list(stages) == ["profile", "adapt", "export", "export-dense"]  # no prune, no distill
    assert not any(s["skipped"] for s in stages.values())
    detail = stages["adapt"]["detail"]
    assert detail["fit_runs"] == 2 and detail["g"]["proxies"] == ["feature", "kl"]
    assert detail["predicted_ms"] <= detail["budget_ms"]
    run = tmp_path / "run"
    prov = json.loads((run / "adapted" / "provenance.json").read_text())
    assert prov["criterion"] == "tt-mpd" and prov["ttmpd"]["samples"] == {
        "source": "digits-shifted:train", "probe": 16, "finetune": 48}
    assert (run / "teacher-cache" / "meta.json").is_file()  # the pseudo-labels live in the run directory
    manifest = json.loads((run / "bundle" / "manifest.json").read_text())
    assert manifest["widths"] == prov["widths"]  # the bundle is the adapted model
    second = cli_in_process("--json", "run", str(recipe))
    assert second.returncode == 0, second.stderr
    assert all(s["skipped"] for s in json.loads(second.stdout)["stages"])
    recipe.write_text(RECIPE.replace("BUDGET", "1.03x").replace("epochs: 1", "epochs: 2"))
    third = cli_in_process("--json", "run", str(recipe))
    assert third.returncode == 0, third.stderr
    skipped = {s["stage"]: s["skipped"] for s in json.loads(third.stdout)["stages"]}
    assert skipped == {"profile": True, "adapt": False, "export": False, "export-dense": True}


@pytest.mark.parametrize("change, expected", [
    (("fit_runs: 2", "fit_runs: 1"), "adapt.fit_runs: expected a whole number >= 2, got 1"),
    (("fit_runs: 2", "fitruns: 2"), "adapt has unknown key 'fitruns'"),
    (("epochs: 1,", "epochs: 1, proxies: [feature, accuracy],"), "adapt.proxies: proxies feature, accuracy: each "
                                                               "must be one of"),
    (("adapt: {", "prune: {criterion: l1}\nadapt: {"), "adapt prunes and fine-tunes in one stage, so prune "
                                                        "options would be unused"),
    (("data: digits-shifted:train\n", ""), "the adapt stage adapts to the device's unlabeled samples"),
    (("adapt: {probe_samples", "adapt: {threads: 2, probe_samples"), "adapt.threads 2 differs from profile.threads"),
    ((ADAPT, "adapt: 3"), "adapt: expected a mapping of options, got 3"),
])
def test_a_malformed_adapt_stage_is_one_line_exit_2_and_writes_nothing(tmp_path, cli_in_process, change, expected):
    recipe = tmp_path / "recipe.yaml"
    text = RECIPE.replace("BUDGET", "1.03x")
    assert change[0] in text
    recipe.write_text(text.replace(change[0], change[1]))
    proc = cli_in_process("run", str(recipe))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_adapt_options_are_the_verbs_parameters_and_their_examples_pass(tmp_path):
    import inspect

    import yaml

    import edgeprune
    from edgeprune.recipe import SECTIONS, Invalid

    assert set(SECTIONS["adapt"]) - {"margin"} <= set(inspect.signature(edgeprune.adapt).parameters)
    for key, (rule, example) in SECTIONS["adapt"].items():
        try:
            rule(yaml.safe_load(f"value: {example}")["value"], tmp_path)
        except Invalid as err:
            pytest.fail(f"the example of adapt.{key} ({example}) is refused: {err.problem}")
