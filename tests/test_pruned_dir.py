"""The pruned-model directory: config.json's `edgeprune` section and provenance.json checked on load."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from edgeprune.errors import BadInputError
from edgeprune.pruning.checkpoint import load_pruned, save_pruned

LOADED = SimpleNamespace(spec="python:Tiny", source_sha256="0" * 64, family="vision", input_shape=(1, 4),
                         seq_len=None, regime=None, model_args={}, pruned_source=None)
PROVENANCE = {"format_version": 1, "kind": "provenance", "budget": "2x", "budget_ms": 1.5, "predicted_ms": 1.4,
              "measured": {"dense_ms": 3.0, "pruned_ms": 1.45, "budget_ms": 1.5}, "widths": {"0": 3},
              "baseline_accuracy": 0.9, "table": {"id": "a" * 64, "runtime": {"threads": 1}}}


def tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


@pytest.fixture
def pruned(tmp_path):
    return save_pruned(tmp_path / "pruned", tiny(), LOADED, {"0": 3}, PROVENANCE)


def edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_a_saved_directory_loads_with_its_provenance(pruned):
    module, section, provenance = load_pruned(pruned, base=tiny())
    assert section["widths"] == {"0": 3} and provenance == PROVENANCE
    assert module(torch.ones(1, 4)).shape == (1, 2)


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["edgeprune"].update(widths="x"), 'config.json: edgeprune.widths: expected an object, got "x"'),
    (lambda c: c["edgeprune"]["modules"]["0"].update(in_features="4"),
     "edgeprune.modules['0']['in_features']: expected a size (an integer or a list of integers), got \"4\""),
    (lambda c: c["edgeprune"].pop("source"), "edgeprune.source: missing, expected an object"),
    (lambda c: c["edgeprune"]["source"].update(input_shape=[1, "4"]),
     'edgeprune.source.input_shape[1]: expected an integer >= 1, got "4"'),
    (lambda c: c.update(model_type=7), "config.json: model_type: expected a string, got 7"),
])
def test_a_malformed_config_is_one_line_naming_file_and_field(pruned, edit, expected):
    edit_json(pruned / "config.json", edit)
    with pytest.raises(BadInputError) as caught:
        load_pruned(pruned, base=tiny())
    assert expected in caught.value.message and str(pruned) in caught.value.message
    assert "re-run edgeprune prune" in caught.value.hint


@pytest.mark.parametrize("text, expected", [
    ("[1]", "config.json unreadable"),
    (json.dumps({"edgeprune": "x"}), "has pruned-model format None"),
    (json.dumps({"edgeprune": {"format_version": 2}}), "has pruned-model format 2"),
])
def test_a_config_that_is_not_ours_is_refused(pruned, text, expected):
    (pruned / "config.json").write_text(text)
    with pytest.raises(BadInputError, match=expected):
        load_pruned(pruned, base=tiny())


@pytest.mark.parametrize("edit, expected", [
    (lambda p: p.update(budget_ms="fast"), 'provenance.json: budget_ms: expected a number >= 0 or null, got "fast"'),
    (lambda p: p.update(baseline_accuracy=93.1), "baseline_accuracy: expected a number in [0, 1] or null, got 93.1"),
    (lambda p: p["measured"].update(pruned_ms=None, dense_ms=-1), "measured.dense_ms: expected a number >= 0"),
    (lambda p: p.update(widths=[3]), "provenance.json: widths: expected an object or null, got a list"),
])
def test_a_malformed_provenance_is_one_line_naming_file_and_field(pruned, edit, expected):
    edit_json(pruned / "provenance.json", edit)
    with pytest.raises(BadInputError) as caught:
        load_pruned(pruned, base=tiny())
    assert expected in caught.value.message


def test_export_of_a_bad_pruned_dir_is_one_line_exit_2_and_writes_nothing(pruned, tmp_path):
    from tests.commands.test_profile_cli import run_cli

    edit_json(pruned / "provenance.json", lambda p: p.update(predicted_ms=[1.4]))
    out = tmp_path / "bundle"
    proc = run_cli("export", "--model", str(pruned), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "provenance.json: predicted_ms: expected a number >= 0 or null, got a list" in lines[0]
    assert not out.exists()
