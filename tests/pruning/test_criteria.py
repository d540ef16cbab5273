"""Every criterion against values computed by hand on tiny layers (the baselines must be faithful)."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeprune.errors import BadInputError
from edgeprune.pruning.criteria import CRITERIA, compensate_bias, normalize, score_groups
from edgeprune.pruning.space import build_space
from tests.pruning.tiny import tiny_cnn, tiny_llama

EXAMPLE = (torch.zeros(1, 3, 32, 32),)


def small_chain():
    """conv1 (2->3) - bn (3) - relu - conv2 (3->4) - pool - fc (4->2): groups conv1 (3 ch) and conv2 (4 ch)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 1, bias=False),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -2.0, 1.5]))
    return model.eval()


def groups_by_root(model, example):
    return {g.name: (i, g) for i, g in enumerate(build_space(model, example))}


@pytest.mark.parametrize("p", [1, 2])
def test_magnitude_is_mean_over_coupled_layers_of_sum_abs_pow(p):
    model = small_chain()
    groups = build_space(model, (torch.zeros(1, 2, 4, 4),))
    scores = score_groups(f"l{p}", groups, model)
    by = {g.name: s for g, s in zip(groups, scores.raw)}
    w1, gamma, w2, fc = model[0].weight, model[1].weight, model[3].weight, model[6].weight
    want1 = [(w1[c].abs().pow(p).sum() + gamma[c].abs().pow(p) + w2[:, c].abs().pow(p).sum()).item() / 3
             for c in range(3)]
    want2 = [(w2[c].abs().pow(p).sum() + fc[:, c].abs().pow(p).sum()).item() / 2 for c in range(4)]
    np.testing.assert_allclose(by["0"], want1, rtol=1e-6)
    np.testing.assert_allclose(by["3"], want2, rtol=1e-6)


def test_bn_scale_is_gamma_and_groups_without_bn_stay_whole():
    model = small_chain()
    groups = build_space(model, (torch.zeros(1, 2, 4, 4),))
    scores = score_groups("bn_scale", groups, model)
    by = {g.name: s for g, s in zip(groups, scores.raw)}
    np.testing.assert_allclose(by["0"], [0.5, 2.0, 1.5])
    assert by["3"] is None  # conv2's group has no BatchNorm: Network Slimming does not prune it


def test_taylor_squares_each_batchs_signed_sum_over_coupled_layers_then_averages():
    model = small_chain()
    groups = build_space(model, (torch.zeros(1, 2, 4, 4),))
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 2, 4, 4, generator=gen),) for _ in range(2)]
    labels = [torch.tensor([0, 1, 1, 0]), torch.tensor([1, 1, 0, 0])]

    def loss_fn(module, inputs):
        y = labels[0] if inputs[0] is batches[0][0] else labels[1]
        return F.cross_entropy(module(*inputs), y)

    scores = score_groups("taylor", groups, model, batches, loss_fn)
    # by hand: per batch, Σ w·dw per channel over conv1 out, bn, conv2 in (signed), squared; mean over batches
    want = np.zeros(3)
    for inputs, y in zip(batches, labels):
        ref = small_chain()
        F.cross_entropy(ref(*inputs), y).backward()
        w1, g1 = ref[0].weight, ref[0].weight.grad
        gm, gg = ref[1].weight, ref[1].weight.grad
        w2, g2 = ref[3].weight, ref[3].weight.grad
        want += [((w1[c] * g1[c]).sum() + gm[c] * gg[c] + (w2[:, c] * g2[:, c]).sum()).item() ** 2 for c in range(3)]
    by = {g.name: s for g, s in zip(groups, scores.raw)}
    np.testing.assert_allclose(by["0"], want / 2, rtol=1e-5)
    assert all(p.grad is None for p in model.parameters())  # gradients are cleared after scoring


def test_taylor_does_not_let_opposite_batches_cancel():
    """y = W2·W1·x, loss = Σy: unit j's w·g is 2·W1[j]·W2[j]·x, +x in one batch and −x in the next."""
    model = torch.nn.Sequential(torch.nn.Linear(1, 2, bias=False), torch.nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [2.0]]))
        model[1].weight.copy_(torch.tensor([[3.0, -1.0]]))
    groups = build_space(model, (torch.ones(1, 1),))
    batches = [(torch.ones(1, 1),), (-torch.ones(1, 1),)]
    scores = score_groups("taylor", groups, model, batches, lambda m, inputs: m(*inputs).sum())
    # per batch: (±2·1·3)² = 36 and (±2·2·(−1))² = 16 both times; summing the gradients first would give 0
    np.testing.assert_allclose(scores.raw[0], [36.0, 16.0])


def test_random_is_seeded():
    model = tiny_cnn()
    groups = build_space(model, EXAMPLE)
    a = score_groups("random", groups, model, seed=3).raw
    b = score_groups("random", groups, model, seed=3).raw
    c = score_groups("random", groups, model, seed=4).raw
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def llama_batches(model, n=3, seq=12):
    gen = torch.Generator().manual_seed(0)
    return [(torch.randint(0, model.config.vocab_size, (2, seq), generator=gen),) for _ in range(n)]


def llama_scored(criterion: str):
    """(model, groups, batches, scores) of the tiny LLaMA under a data-driven criterion."""
    model = tiny_llama()
    groups = build_space(model, ())
    batches = llama_batches(model)
    return model, groups, batches, score_groups(criterion, groups, model, batches)


def projection_inputs(model, batches, module):
    """Every token's input to `module`, stacked (what the criteria's hooks see)."""
    seen = []
    hook = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for inputs in batches:
            model(*inputs)
    hook.remove()
    return torch.cat(seen).double()


def test_llama_magnitude_covers_whole_gqa_groups():
    model = tiny_llama()
    groups = build_space(model, ())
    assert [g.kind for g in groups] == ["heads", "mlp", "heads", "mlp"]
    assert groups[0].units == 2 and groups[0].unit_size == 16  # 2 kv heads, each with 2 query heads of 8
    scores = score_groups("l1", groups, model)
    attn = model.model.layers[0].self_attn
    hd = 8
    want = []
    for kv in range(2):
        q_rows = slice(kv * 2 * hd, (kv + 1) * 2 * hd)  # query heads 2kv, 2kv+1
        kv_rows = slice(kv * hd, (kv + 1) * hd)
        parts = [attn.q_proj.weight[q_rows].abs().sum(), attn.k_proj.weight[kv_rows].abs().sum(),
                 attn.v_proj.weight[kv_rows].abs().sum(), attn.o_proj.weight[:, q_rows].abs().sum()]
        want.append(sum(p.item() for p in parts) / 4)
    np.testing.assert_allclose(scores.raw[0], want, rtol=1e-6)
    mlp = model.model.layers[0].mlp
    want_mlp = [(mlp.gate_proj.weight[c].abs().sum() + mlp.up_proj.weight[c].abs().sum()
                 + mlp.down_proj.weight[:, c].abs().sum()).item() / 3 for c in range(48)]
    np.testing.assert_allclose(scores.raw[1], want_mlp, rtol=1e-6)


def test_wanda_sp_is_abs_weight_times_input_norm_per_structure():
    model, groups, batches, scores = llama_scored("wanda_sp")
    down = model.model.layers[1].mlp.down_proj
    x = projection_inputs(model, batches, down)
    norm = x.pow(2).sum(0).sqrt()
    want = (down.weight.detach().double().abs() * norm).sum(0).numpy()
    np.testing.assert_allclose(scores.raw[3], want, rtol=1e-6)
    o = model.model.layers[1].self_attn.o_proj
    xo = projection_inputs(model, batches, o)
    per_col = (o.weight.detach().double().abs() * xo.pow(2).sum(0).sqrt()).sum(0).numpy()
    np.testing.assert_allclose(scores.raw[2], [per_col[0:16].sum(), per_col[16:32].sum()], rtol=1e-6)


def test_flap_as_its_reference_code_squared_attention_standardised_per_layer_head_mean():
    model, groups, batches, scores = llama_scored("flap")
    down = model.model.layers[0].mlp.down_proj
    x = projection_inputs(model, batches, down)
    m = (x.var(0, unbiased=False) * down.weight.detach().double().pow(2).sum(0)).numpy()
    np.testing.assert_allclose(scores.raw[1], (m - m.mean()) / m.std(ddof=1), rtol=1e-5)
    o = model.model.layers[0].self_attn.o_proj  # 2 kv groups of 16 columns (2 query heads of 8)
    xo = projection_inputs(model, batches, o)
    a = ((xo.var(0, unbiased=False) * o.weight.detach().double().pow(2).sum(0)) ** 2).numpy()
    z = (a - a.mean()) / a.std(ddof=1)
    np.testing.assert_allclose(scores.raw[0], [z[:16].mean(), z[16:].mean()], rtol=1e-5)
    assert all(np.array_equal(n, r) for n, r in zip(scores.normalized, scores.raw))  # already on one scale


def test_flap_bias_compensation_lands_in_the_next_layers_bias():
    model, groups, batches, scores = llama_scored("flap")
    down = model.model.layers[0].mlp.down_proj
    x = projection_inputs(model, batches, down)
    mean = x.mean(0)
    removed = [0, 5, 7]
    w = down.weight.detach().double().clone()
    compensate_bias(groups[1], removed, scores.input_mean[1])
    np.testing.assert_allclose(down.bias.detach().double().numpy(), (w[:, removed] @ mean[removed]).numpy(),
                               rtol=1e-5, atol=1e-7)
    # the layer's output on the mean input is unchanged once the columns are gone
    groups[1].remove(removed)
    keep = [c for c in range(48) if c not in removed]
    before = (w @ mean).numpy()
    after = (down.weight.detach().double() @ mean[keep] + down.bias.detach().double()).numpy()
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


def test_normalized_magnitude_counts_the_layers_a_group_couples():
    """conv1's group couples conv1 out, its BatchNorm and conv2 in (3 layers); conv2's couples conv2 out and fc in
    (2): after division by the group mean a unit is worth its layer count, so a residual-stream channel is not
    valued like a channel inside one block."""
    model = small_chain()
    groups = build_space(model, (torch.zeros(1, 2, 4, 4),))
    scores = score_groups("l2", groups, model)
    by = {g.name: (r, n) for g, r, n in zip(groups, scores.raw, scores.normalized)}
    np.testing.assert_allclose(by["0"][1], by["0"][0] / by["0"][0].mean() * 3)
    np.testing.assert_allclose(by["3"][1], by["3"][0] / by["3"][0].mean() * 2)


def test_normalize_mean_divides_each_group_by_its_mean():
    out = normalize([np.array([1.0, 3.0]), None, np.array([10.0, 30.0])], [None] * 3, "mean")
    np.testing.assert_allclose(out[0], [0.5, 1.5])
    np.testing.assert_allclose(out[2], [0.5, 1.5])
    assert out[1] is None


@pytest.mark.parametrize("name,needs", [(n, c.needs_data) for n, c in CRITERIA.items()])
def test_registry_states_data_needs(name, needs):
    model = tiny_llama()
    groups = build_space(model, ())
    if needs:
        with pytest.raises(BadInputError, match="needs calibration data"):
            score_groups(name, groups, model)
    elif name == "bn_scale":
        with pytest.raises(BadInputError, match="BatchNorm"):
            score_groups(name, groups, model)
    else:
        assert all(len(s) == g.units for s, g in zip(score_groups(name, groups, model).raw, groups))


def test_llm_criteria_refuse_cnns_and_unknown_names_suggest():
    model = tiny_cnn()
    groups = build_space(model, EXAMPLE)
    with pytest.raises(BadInputError, match="transformers"):
        score_groups("wanda_sp", groups, model, [EXAMPLE])
    with pytest.raises(BadInputError, match="did you mean l2"):
        score_groups("l22", groups, model)


def test_registry_is_an_instance_that_refuses_duplicates_and_non_callables():
    from edgeprune.pruning.criteria import Criterion, CriterionRegistry

    registry = CriterionRegistry((Criterion("mine", lambda ctx: []),))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Criterion("mine", lambda ctx: []))
    with pytest.raises(TypeError):
        registry.register(Criterion("broken", score=None))
    with pytest.raises(BadInputError, match="did you mean mine"):
        registry.get("mien")


def test_a_users_own_criterion_decides_which_units_go():
    """Registered through the public API, then used by name: the kept units are the ones it ranks highest."""
    import edgeprune
    from edgeprune.pruning import criteria

    def last_units_first(ctx):  # prefers high indices: the kept units must be the last ones of every group
        return [np.arange(g.units, dtype=float) for g in ctx.groups]

    edgeprune.register_criterion(edgeprune.Criterion("prefer_last", last_units_first, normalize="none"))
    try:
        model = tiny_cnn()
        groups = build_space(model, EXAMPLE)
        scores = score_groups("prefer_last", groups, model)
        assert [list(s) for s in scores.raw] == [list(range(g.units)) for g in groups]
        from edgeprune.pruning.engine import slim_copy

        slim, kept = slim_copy(model, lambda m: build_space(m, EXAMPLE), [g.units // 2 for g in groups], scores)
        assert kept == {g.name: g.units // 2 for g in groups}
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        slim_first = next(m for m in slim.modules() if isinstance(m, torch.nn.Conv2d))
        n = slim_first.out_channels
        assert torch.equal(slim_first.weight, first.weight[-n:, : slim_first.in_channels])  # the last ones stayed
        with pytest.raises(ValueError, match="one score per unit"):
            edgeprune.register_criterion(edgeprune.Criterion("short", lambda ctx: [np.ones(1) for _ in ctx.groups]))
            score_groups("short", groups, model)
    finally:
        criteria.CRITERIA._items.pop("prefer_last", None)
        criteria.CRITERIA._items.pop("short", None)
