"""`edgeprune prune` as a user runs it: profile a Hugging Face LLaMA directory, prune it, bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.commands.test_profile_cli import run_cli


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(model dir, table path, cache path): a GQA LLaMA from a config, profiled once with the real CLI."""
    from tests.pruning.tiny import tiny_llama

    root = tmp_path_factory.mktemp("cli-llama")
    model = root / "llama"
    # a wide MLP keeps the prunable share well above the fixed cost, so 1.25x stays reachable under timing noise
    tiny_llama(layers=2, hidden=64, heads=8, kv_heads=4, intermediate=256, vocab=128).save_pretrained(str(model))
    table = root / "table.json"
    cache = root / "cache.sqlite"
    proc = run_cli("profile", "--device", "cpu", "--model", str(model), "--seq-len", "16", "--variants", "2",
                   "--out", str(table), cache=cache)
    assert proc.returncode == 0, proc.stderr
    return model, table, cache


def test_prune_cli_measures_and_writes_a_loadable_directory(llama, tmp_path, formula_device, cli_in_process):
    """Profile, prune to 1.25x and measure through the CLI on the formula device: reachable on any machine."""
    model, _, _ = llama
    cache, table, out = tmp_path / "c.sqlite", tmp_path / "formula.json", tmp_path / "pruned"
    proc = cli_in_process("profile", "--device", "cpu", "--model", str(model), "--seq-len", "16", "--variants", "2",
                          "--out", str(table), cache=cache)
    assert proc.returncode == 0, proc.stderr
    proc = cli_in_process("--json", "prune", "--model", str(model), "--table", str(table), "--budget", "1.25x",
                          "--min-keep", "0.1", "--criterion", "l2", "--out", str(out), cache=cache)
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["predicted_ms"] <= reply["budget_ms"] + 1e-9
    measured = reply["measured"]
    assert measured["dense_ms"] / measured["pruned_ms"] >= 1.25 * 0.97  # the device's own law meets the budget
    assert {"layers.0.heads", "layers.0.mlp", "layers.1.heads", "layers.1.mlp"} == set(reply["widths"])
    # without --calib the data-free option values are named on stdout; with it, the measured ones and the search
    plain = cli_in_process("prune", "--model", str(model), "--table", str(table), "--budget", "1.25x", "--min-keep",
                           "0.1", "--no-measure", "--out", str(tmp_path / "plain"), cache=cache)
    assert plain.returncode == 0, plain.stderr
    assert "no --calib: option values are the criterion's scores" in plain.stdout
    ids = np.random.default_rng(0).integers(0, 128, (8, 16))
    np.savez(tmp_path / "ids.npz", input_ids=ids)
    tuned = cli_in_process("prune", "--model", str(model), "--table", str(table), "--budget", "1.25x", "--min-keep",
                           "0.1", "--no-measure", "--calib", str(tmp_path / "ids.npz"), "--search", "6",
                           "--out", str(tmp_path / "tuned"), cache=cache)
    assert tuned.returncode == 0, tuned.stderr
    assert "option values: calibration loss" in tuned.stdout
    assert re.search(r"search: [1-6] candidates in", tuned.stdout)
    # the pruned directory is itself a --model: it profiles like any model
    proc = cli_in_process("--json", "profile", "--device", "cpu", "--model", str(out), "--seq-len", "16",
                          "--variants", "0", "--out", str(tmp_path / "t2.json"), cache=cache)
    assert proc.returncode == 0, proc.stderr
    layers = json.loads((tmp_path / "t2.json").read_text())["layers"]
    assert layers["model.layers.0.mlp"]["c_out"] == reply["widths"]["layers.0.mlp"]


BAD = {
    "malformed-budget": (["--budget", "fast"], "cannot read budget"),
    "unreachable-budget": (["--budget", "40x"], "fastest reachable"),
    "unknown-criterion": (["--budget", "1.5x", "--criterion", "l3"], "unknown criterion"),
    "data-criterion-without-data": (["--budget", "1.5x", "--criterion", "wanda_sp"], "needs calibration data"),
    "missing-table": (["--budget", "1.5x", "--table", "nope.json"], "does not exist"),
    "wrong-model": (["--budget", "1.5x", "--model", "torchvision:resnet18"], "profiled for"),
    "bad-calib-shape": (["--budget", "1.5x", "--criterion", "taylor", "--calib", "FLOAT"], "token ids"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(case, llama, tmp_path):
    model, table, cache = llama
    extra, expected = BAD[case]
    extra = list(extra)
    if "FLOAT" in extra:
        np.savez(tmp_path / "f.npz", inputs=np.zeros((2, 16), dtype=np.float32))
        extra[extra.index("FLOAT")] = str(tmp_path / "f.npz")
    args = ["--model", str(model), "--table", str(table), "--no-measure"]
    for flag in ("--table", "--model"):
        if flag in extra:
            i = args.index(flag)
            del args[i:i + 2]
    out = tmp_path / "out"
    proc = run_cli("prune", *args, *extra, "--out", str(out), cache=cache, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
