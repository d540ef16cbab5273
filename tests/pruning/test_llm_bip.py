"""LLM-BIP (`--criterion llm-bip`) against hand-computed values, GQA groups, and pruning end to end.

The MLP score is the ablated channel's exact effect on the block output by construction, so ranking it against
that effect would prove nothing; the values are checked against numbers worked out by hand instead.
"""

import json

import numpy as np
import pytest
import torch

import edgeprune
from edgeprune.pruning.checkpoint import load_pruned
from edgeprune.pruning.criteria import CRITERIA, score_groups
from edgeprune.pruning.llm_bip import llm_bip
from edgeprune.pruning.space import build_space
from tests.pruning.tiny import tiny_llama

E = np.hstack([np.eye(4), np.zeros((4, 4))])  # 4 x 8: picks the first 4 of 8 features


def hand_llama():
    """One layer, hidden 8, 4 query heads of 2 dims sharing 2 kv heads, 4 MLP channels, with chosen weights.

    gate = 3E, up = 4E, down = 2Eᵀ: the stacked [gate; up] has spectral norm √(3² + 4²) = 5 and down 2, so the
    attention factor is 1 + 5·2 = 11; every down column has norm 2; o_proj = diag(1..8), so column j has norm j+1.
    Kv head u owns query heads 2u, 2u+1, i.e. o_proj columns 4u..4u+3.
    """
    model = tiny_llama(layers=1, hidden=8, heads=4, kv_heads=2, intermediate=4, vocab=16)
    mlp, attn = model.model.layers[0].mlp, model.model.layers[0].self_attn
    with torch.no_grad():
        mlp.gate_proj.weight.copy_(torch.tensor(3 * E))
        mlp.up_proj.weight.copy_(torch.tensor(4 * E))
        mlp.down_proj.weight.copy_(torch.tensor(2 * E.T))
        attn.o_proj.weight.copy_(torch.diag(torch.arange(1.0, 9.0)))
        attn.q_proj.weight.mul_(20)  # sharper attention, so each head's output differs from a plain average
    return model


def batches_of(vocab: int, n: int, seq: int = 6, size: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, vocab, (size, seq), generator=gen),) for _ in range(n)]


def captured(model, batches, module) -> np.ndarray:
    """Every calibration token's input to `module` [tokens, features], by a hook of the test's own."""
    seen = []
    hook = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for inputs in batches:
            model(*inputs)
    hook.remove()
    return torch.cat(seen).double().numpy()


def test_hand_built_stats_give_hand_computed_scores():
    """Column norms given by hand: MLP ‖X_j‖·2, a kv group 11·Σ ‖X_j‖·(j+1) over its 4 columns."""
    model = hand_llama()
    groups = build_space(model, ())
    assert [(g.kind, g.units) for g in groups] == [("heads", 2), ("mlp", 4)]
    stats = [{"norm": np.ones(8)}, {"norm": np.array([1.0, 2.0, 3.0, 4.0])}]
    heads, mlp = llm_bip(groups, stats)
    np.testing.assert_allclose(mlp, [2.0, 4.0, 6.0, 8.0], rtol=1e-12)
    np.testing.assert_allclose(heads, [11 * (1 + 2 + 3 + 4), 11 * (5 + 6 + 7 + 8)], rtol=1e-12)
    stats[0]["norm"] = np.array([0.5, 0, 0, 0, 0, 0, 0, 2.0])
    heads, _ = llm_bip(groups, stats)
    np.testing.assert_allclose(heads, [11 * 0.5 * 1, 11 * 2.0 * 8], rtol=1e-12)


def test_scores_from_calibration_tokens_match_explicit_numpy():
    model = hand_llama()
    layer = model.model.layers[0]
    groups = build_space(model, ())
    batches = batches_of(16, 3)
    scores = score_groups("llm-bip", groups, model, batches)
    # the MLP channels' input to down_proj is act(gate)·up: check what the test's hook captured is that
    h = captured(model, batches, layer.mlp.gate_proj)
    silu = lambda z: z / (1 + np.exp(-z))  # noqa: E731
    x_down = captured(model, batches, layer.mlp.down_proj)
    np.testing.assert_allclose(x_down, silu(3 * h[:, :4]) * (4 * h[:, :4]), rtol=1e-4, atol=1e-6)
    want_mlp = [np.sqrt((x_down[:, j] ** 2).sum()) * 2.0 for j in range(4)]
    np.testing.assert_allclose(scores.raw[1], want_mlp, rtol=1e-9)
    x_o = captured(model, batches, layer.self_attn.o_proj)
    assert np.linalg.norm(np.vstack([3 * E, 4 * E]), 2) == pytest.approx(5.0)  # the factor's pieces, by numpy too
    assert np.linalg.norm(2 * E.T, 2) == pytest.approx(2.0)
    col = [np.sqrt((x_o[:, j] ** 2).sum()) * (j + 1) for j in range(8)]
    np.testing.assert_allclose(scores.raw[0], [11 * sum(col[0:4]), 11 * sum(col[4:8])], rtol=1e-9)
    # already one scale (a change of the block output): normalisation leaves the scores alone
    assert CRITERIA.get("llm-bip").normalize == "none"
    assert all(np.array_equal(n, r) for n, r in zip(scores.normalized, scores.raw))


def test_streams_batches_without_keeping_activations_or_hooks():
    """One batch at a time accumulates to the same scores as everything at once; nothing stays attached."""
    model = tiny_llama()
    groups = build_space(model, ())
    whole = batches_of(64, 1, seq=10, size=6)
    split = [(whole[0][0][i:i + 1],) for i in range(6)]
    a = score_groups("llm-bip", groups, model, whole).raw
    b = score_groups("llm-bip", groups, model, split).raw
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_gqa_scores_per_kv_group_and_pruning_keeps_query_heads_with_their_kv_head(tmp_path):
    """4 query heads per kv head: a unit is a whole kv group (16 o_proj columns), scored by their sum; slimming to
    the best group keeps its own query heads, so the slim model equals the dense one with the other group's
    o_proj columns zeroed (a query head attached to the wrong kv head would not)."""
    model = tiny_llama(layers=2, hidden=32, heads=8, kv_heads=2, intermediate=48)
    path = tmp_path / "gqa"
    model.save_pretrained(str(path))
    batches = batches_of(64, 2, seq=12)
    np.savez(tmp_path / "calib.npz", input_ids=torch.cat([b[0] for b in batches]).numpy())
    groups = build_space(model, ())
    scores = score_groups("llm-bip", groups, model, batches)
    assert [len(s) for s in scores.raw] == [2, 48, 2, 48]
    for gi in (0, 2):
        layer = model.model.layers[gi // 2]
        x_o = captured(model, batches, layer.self_attn.o_proj)
        w_o = layer.self_attn.o_proj.weight.detach().double().numpy()
        cols = np.sqrt((x_o ** 2).sum(0)) * np.sqrt((w_o ** 2).sum(0))
        ratios = scores.raw[gi] / np.array([cols[:16].sum(), cols[16:].sum()])
        assert ratios[0] == pytest.approx(ratios[1]) and ratios[0] > 1  # the same per-layer MLP factor for both
    # MLP groups kept whole (--ignore), so the comparison below isolates the heads
    res = edgeprune.prune(str(path), None, tmp_path / "out", mode="uniform", ratio=0.5, criterion="llm-bip",
                          calib=str(tmp_path / "calib.npz"), measure=False, ignore=("layers.0.mlp", "layers.1.mlp"))
    assert res.widths == {"layers.0.heads": 1, "layers.1.heads": 1}
    masked = tiny_llama(layers=2, hidden=32, heads=8, kv_heads=2, intermediate=48)
    for i in range(2):
        keep = int(np.argmax(scores.raw[2 * i]))
        slim, dense = res.module.model.layers[i].self_attn, model.model.layers[i].self_attn
        assert slim.k_proj.out_features == 4 and slim.q_proj.out_features == 16  # 1 kv head, its 4 query heads
        torch.testing.assert_close(slim.k_proj.weight, dense.k_proj.weight[keep * 4:(keep + 1) * 4])
        torch.testing.assert_close(slim.v_proj.weight, dense.v_proj.weight[keep * 4:(keep + 1) * 4])
        torch.testing.assert_close(slim.q_proj.weight, dense.q_proj.weight[keep * 16:(keep + 1) * 16])
        gone = 1 - keep
        with torch.no_grad():
            masked.model.layers[i].self_attn.o_proj.weight[:, gone * 16:(gone + 1) * 16] = 0
    ids = batches[0][0]
    with torch.no_grad():
        torch.testing.assert_close(res.module(input_ids=ids).logits, masked(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bip-llama") / "tiny-llama"
    model = tiny_llama(layers=2, hidden=64, heads=8, kv_heads=4, intermediate=96, vocab=128)
    with torch.no_grad():  # layer 1's heads barely reach the block output: a global ranking must cut them first
        model.model.layers[1].self_attn.o_proj.weight.mul_(1e-3)
    model.save_pretrained(str(path))
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    np.savez(path.parent / "calib.npz", input_ids=ids.numpy())
    return path


@pytest.mark.parametrize("mode", ["uniform", "global"])
def test_prune_llama_per_block_and_global_then_load_with_parity(llama_dir, tmp_path, mode):
    from edgeprune.models import load_model

    calib = str(llama_dir.parent / "calib.npz")
    out = tmp_path / mode
    res = edgeprune.prune(str(llama_dir), None, out, mode=mode, ratio=0.4, criterion="llm-bip", calib=calib,
                          measure=False)
    heads = {k: v for k, v in res.widths.items() if k.endswith(".heads")}
    mlp = {k: v for k, v in res.widths.items() if k.endswith(".mlp")}
    assert len(heads) == len(mlp) == 2
    dense = load_model(str(llama_dir), seq_len=16).module
    groups = build_space(dense, ())
    ids = np.load(calib)["input_ids"]
    raw = score_groups("llm-bip", groups, dense, [(torch.as_tensor(ids),)]).raw
    if mode == "uniform":  # one ratio in every block, each block ranked on its own
        assert set(heads.values()) == {2} and len(set(mlp.values())) == 1 and 50 <= next(iter(mlp.values())) <= 60
    else:  # one ranking across blocks and unit types: the globally lowest 40 % of units go (≤ 90 % of a group;
        # a removal a full group refuses goes to the next lowest unit elsewhere)
        left = int(round(0.4 * sum(len(r) for r in raw)))
        removed = [0] * len(groups)
        for _, i in sorted((float(v), i) for i, r in enumerate(raw) for v in r):
            if left and removed[i] < int(0.9 * groups[i].units):
                removed[i], left = removed[i] + 1, left - 1
        assert left == 0
        for g, n in zip(groups, removed):
            assert res.widths[g.name] == g.units - n
        assert heads == {"layers.0.heads": 4, "layers.1.heads": 1}  # the weak layer's heads go before MLP channels
    for g, r in zip(groups, raw):  # each group keeps its own highest-scoring units
        if g.kind == "mlp":
            best = sorted(np.argsort(-r)[:res.widths[g.name]])
            layer = int(g.name.split(".")[1])
            torch.testing.assert_close(res.module.model.layers[layer].mlp.down_proj.weight,
                                       dense.model.layers[layer].mlp.down_proj.weight[:, best])
    module, _, prov = load_pruned(out)
    for i, layer in enumerate(module.model.layers):
        kv = heads[f"layers.{i}.heads"]
        assert layer.self_attn.k_proj.out_features == kv * 8 and layer.self_attn.q_proj.out_features == kv * 16
        assert layer.mlp.down_proj.in_features == mlp[f"layers.{i}.mlp"]
    assert prov["criterion"] == "llm-bip"
    x = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(module(input_ids=x).logits, res.module(input_ids=x).logits, atol=1e-5, rtol=1e-5)
    assert json.loads((out / "config.json").read_text())["edgeprune"]["widths"] == res.widths


def test_cli_criterion_llm_bip(llama_dir, tmp_path, cli_in_process):
    out = tmp_path / "cli"
    proc = cli_in_process("--json", "prune", "--model", str(llama_dir), "--mode", "uniform", "--ratio", "0.25",
                          "--criterion", "llm-bip", "--calib", str(llama_dir.parent / "calib.npz"), "--no-measure",
                          "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "provenance.json").read_text())["criterion"] == "llm-bip"
