"""PruneNet (`--criterion prunenet`, `--policy FILE`): the reward against hand-computed values, training that
learns where the right rows are knowable, seeded determinism, the policy file, and pruning end to end."""

import json

import numpy as np
import pytest
import torch

import edgeprune
from edgeprune.errors import BadInputError
from edgeprune.pruning import prunenet as pn
from edgeprune.pruning.checkpoint import load_pruned
from edgeprune.pruning.criteria import CRITERIA, score_groups
from edgeprune.pruning.space import build_space
from tests.pruning.tiny import tiny_llama


@pytest.mark.parametrize("a,b,want", [
    ([1, 2, 3, 4], [3, 4, 5, 6], 0.5),  # F_a − F_b = 1/2 on [2, 5)
    ([1, 2, 3], [10, 11], 1.0),  # disjoint
    ([1, 2, 3], [3, 2, 1], 0.0),  # the same sample in another order
    ([0, 1, 2, 3, 4], [1.5, 3.5], 0.4),  # at x = 1: F_a = 2/5, F_b = 0
    ([1, 2, 3, 4], [2.5], 0.5),  # different sizes: at x = 2.5, F_a = 1/2, F_b = 1
])
def test_ks_statistic_hand_computed(a, b, want):
    assert pn.ks_statistic(a, b) == pytest.approx(want, abs=1e-15)
    assert pn.ks_statistic(b, a) == pytest.approx(want, abs=1e-15)


def test_ks_statistic_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n, m in ((50, 50), (64, 37), (5, 200)):
        a, b = rng.normal(size=n), rng.normal(0.3, 1.2, size=m)
        assert pn.ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)


def test_singular_values_are_the_svds():
    w = torch.randn(30, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for m in (w, w.t(), w[:5]):
        np.testing.assert_allclose(pn.singular_values(m), torch.linalg.svdvals(m).numpy(), rtol=1e-10, atol=1e-12)


def axis_matrix() -> torch.Tensor:
    """8 × 4, two rows per axis j: a dominant one of norm D_j = 10, 8, 6, 4 and a small one of norm 0.1.

    σ_j = √(D_j² + 0.01) = 10.0005, 8.0006, 6.0008, 4.0012. Keeping the 4 dominant rows leaves 10, 8, 6, 4: each
    just below its original, so the CDFs differ by 1/4 at most (KS 1/4, reward 4). Keeping two dominant and two
    small rows leaves 10, 8, 0.1, 0.1 (KS 1/2, reward 2); keeping the small ones, 0.1 × 4 (KS 1, reward 1).
    """
    w = torch.zeros(8, 4, dtype=torch.float64)
    for j, big in enumerate((10.0, 8.0, 6.0, 4.0)):
        w[2 * j, j], w[2 * j + 1, j] = big, 0.1
    return w


def test_reward_is_higher_for_slicing_that_keeps_the_dominant_spectrum():
    w = axis_matrix()
    sv = pn.singular_values(w)
    np.testing.assert_allclose(sv, np.sqrt(np.array([100.0, 64.0, 36.0, 16.0]) + 0.01), rtol=1e-12)
    dominant = pn.spectrum_reward(sv, w[[0, 2, 4, 6]])
    mixed = pn.spectrum_reward(sv, w[[0, 2, 5, 7]])
    small = pn.spectrum_reward(sv, w[[1, 3, 5, 7]])
    assert (dominant, mixed, small) == (pytest.approx(4.0), pytest.approx(2.0), pytest.approx(1.0))
    # nothing removed: KS 0 earns 2·n·m (twice the largest finite reward 1/KS can reach at these sizes), not ∞
    assert pn.spectrum_reward(sv, w) == pytest.approx(2 * 4 * 4)


def test_draws_are_without_replacement_and_their_log_probability_is_plackett_luce():
    gen = torch.Generator().manual_seed(0)
    weights = torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=torch.float64)
    order = pn.draw_rows(weights, 3, gen)
    assert len(set(order.tolist())) == 3
    # P(2, 0, 3) = 0.2/1 · 0.5/0.8 · 0.1/0.3
    lp = pn.draw_log_prob(weights, torch.tensor([2, 0, 3]))
    assert float(lp) == pytest.approx(np.log(0.2 / 1.0 * 0.5 / 0.8 * 0.1 / 0.3))
    # the empirical frequency of the first draw follows the weights
    firsts = np.bincount([int(pn.draw_rows(weights, 1, gen)[0]) for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(firsts, weights.numpy(), atol=0.03)


def knowable(seed: int, layers: int = 3, d_ff: int = 48, d: int = 16, strong: int = 12):
    """Random rows, of which `strong` per layer are 4× longer: the rows that carry the spectrum are known."""
    gen = torch.Generator().manual_seed(seed)
    mats, strong_rows = [], []
    for _ in range(layers):
        w = torch.randn(d_ff, d, generator=gen) * 0.02
        rows = torch.randperm(d_ff, generator=gen)[:strong]
        w[rows] *= 4
        mats.append(w)
        strong_rows.append(set(rows.tolist()))
    return mats, strong_rows


@pytest.mark.parametrize("seed", [0, 2])
def test_training_improves_the_reward_and_finds_the_informative_rows(seed):
    mats, strong_rows = knowable(seed)
    policy, log = pn.train_policy(mats, 0.5, seed=seed)
    spectra = [pn.singular_values(w) for w in mats]
    initial, kept = log.deterministic[0], pn.deterministic_reward(policy, mats, spectra, 0.5)
    assert kept == pytest.approx(log.deterministic[log.best_episode])  # the kept policy is the best episode's
    assert kept == max(log.deterministic)
    assert kept > 1.5 * initial, log.as_dict()
    for w, rows in zip(mats, strong_rows):  # its highest keep-probabilities are the long rows
        top = set(np.argsort(-policy.keep_probabilities(w))[:len(rows)].tolist())
        assert len(top & rows) >= len(rows) - 1


def test_the_references_recipe_learns_nothing_here():
    """Raw rows, raw logits, no baseline, one draw (docs/pruning.md): the reward stays where it started."""
    mats, strong_rows = knowable(0)
    policy, log = pn.train_policy(mats, 0.5, seed=0, **pn.REFERENCE)
    ours, _ = pn.train_policy(mats, 0.5, seed=0)
    spectra = [pn.singular_values(w) for w in mats]
    assert pn.deterministic_reward(policy, mats, spectra, 0.5) < 0.8 * pn.deterministic_reward(ours, mats, spectra, 0.5)


def test_training_is_deterministic_given_the_seed():
    mats, _ = knowable(1, layers=2)
    a, log_a = pn.train_policy(mats, 0.3, seed=7, episodes=5)
    b, log_b = pn.train_policy(mats, 0.3, seed=7, episodes=5)
    c, _ = pn.train_policy(mats, 0.3, seed=8, episodes=5)
    assert log_a.as_dict() == log_b.as_dict()
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.proj_weight, c.proj_weight)


def test_clipping_acts_between_backward_and_step(monkeypatch):
    """The gradient the optimizer sees has norm ≤ 1 (the reference clips after step(), where it does nothing)."""
    seen = []
    step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    mats, _ = knowable(0, layers=2)
    pn.train_policy(mats, 0.5, seed=0, episodes=4)
    assert len(seen) == 4 and max(seen) <= 1.0 + 1e-6


def test_registered_data_free_for_transformers_only():
    crit = CRITERIA.get("prunenet")
    assert not crit.needs_data and crit.transformers_only


def test_scores_mlp_by_keep_probability_and_heads_by_their_spectral_shift(tmp_path):
    model = tiny_llama()
    attn = model.model.layers[0].self_attn
    with torch.no_grad():  # kv head 1 of layer 0 (query heads 2, 3): rows 100× shorter, so removing it moves
        attn.q_proj.weight[16:32] *= 0.01  # the spectrum least
        attn.k_proj.weight[8:16] *= 0.01
        attn.v_proj.weight[8:16] *= 0.01
    groups = build_space(model, ())
    scores = score_groups("prunenet", groups, model, policy=str(tmp_path / "p.safetensors"), ratio=0.3)
    assert [(g.kind, len(r)) for g, r in zip(groups, scores.raw)] == [("heads", 2), ("mlp", 48)] * 2
    assert int(np.argmin(scores.raw[0])) == 1
    policies, _ = pn.load_policies(tmp_path / "p.safetensors")
    for g, r in zip(groups, scores.raw):
        if g.kind == "mlp":  # the deterministic α of the saved policy, from the layer's gate rows
            np.testing.assert_allclose(r, policies["48x32"].keep_probabilities(pn.first_matrix(g)), rtol=1e-12)
            assert ((r > 0) & (r < 1)).all()
    with pytest.raises(BadInputError, match="--policy .* only"):
        score_groups("l2", groups, model, policy=str(tmp_path / "p.safetensors"))


def test_policy_is_saved_then_reused_at_other_ratios_without_training(tmp_path, monkeypatch):
    path = tmp_path / "policy.safetensors"
    groups = build_space(tiny_llama(), ())
    first = pn.prunenet(groups, path, ratio=0.3, seed=0)
    header = json.loads(__import__("safetensors").safe_open(str(path), "pt").metadata()["edgeprune"])
    assert header["format"] == pn.FORMAT and header["ratio"] == 0.3 and header["episodes"] == pn.EPISODES
    assert set(header["shapes"]) == {"48x32"} and header["shapes"]["48x32"]["layers"] == 2
    assert len(header["shapes"]["48x32"]["deterministic"]) == pn.EPISODES + 1
    before = path.read_bytes()

    def no_training(*args, **kwargs):
        raise AssertionError("a saved policy must be reused, not retrained")

    monkeypatch.setattr(pn, "train_policy", no_training)
    for ratio in (0.5, 0.7, None):
        again = pn.prunenet(groups, path, ratio=ratio, seed=3)
        for x, y in zip(first, again):
            np.testing.assert_array_equal(x, y)
    assert path.read_bytes() == before
    # another model with the same MLP shapes (other weights, more layers) reuses it too
    other = tiny_llama(layers=3)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    assert len(pn.prunenet(build_space(other, ()), path, ratio=0.5)) == 6


def test_policy_for_other_shapes_or_unreadable_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "policy.safetensors"
    pn.prunenet(build_space(tiny_llama(), ()), path, ratio=0.3)
    before = path.read_bytes()
    wider = build_space(tiny_llama(intermediate=64), ())
    with pytest.raises(BadInputError, match=r"MLP shapes \(d_ff x d\) 48x32; this model needs 64x32") as err:
        pn.prunenet(wider, path, ratio=0.3)
    assert "new --policy path" in err.value.hint
    assert path.read_bytes() == before
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a policy")
    with pytest.raises(BadInputError, match="not a PruneNet policy file .unreadable"):
        pn.prunenet(wider, junk)
    assert junk.read_bytes() == b"not a policy"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(BadInputError, match="no PruneNet header"):
        pn.prunenet(wider, tmp_path / "other.safetensors")
    with pytest.raises(BadInputError, match="not a file"):
        pn.prunenet(wider, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.safetensors", "other.safetensors", "policy.safetensors"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("prunenet-llama") / "tiny-llama"
    tiny_llama(layers=2, hidden=64, heads=8, kv_heads=4, intermediate=96, vocab=128).save_pretrained(str(path))
    return path


def test_prune_llama_uniform_with_a_policy_then_load_with_parity(llama_dir, tmp_path):
    from edgeprune.models import load_model

    policy = tmp_path / "policy.safetensors"
    out = tmp_path / "pruned"
    res = edgeprune.prune(str(llama_dir), None, out, criterion="prunenet", mode="uniform", ratio=0.3,
                          policy=str(policy), measure=False)
    assert policy.is_file()
    mlp = {k: v for k, v in res.widths.items() if k.endswith(".mlp")}
    assert len(mlp) == 2 and len(set(mlp.values())) == 1 and 60 <= next(iter(mlp.values())) <= 70
    dense = load_model(str(llama_dir), seq_len=16).module
    policies, _ = pn.load_policies(policy)
    for i, layer in enumerate(res.module.model.layers):  # each layer keeps the rows of highest α
        gate = dense.model.layers[i].mlp.gate_proj.weight.detach()
        n = res.widths[f"layers.{i}.mlp"]
        best = sorted(np.argsort(-policies["96x64"].keep_probabilities(gate), kind="stable")[:n].tolist())
        torch.testing.assert_close(layer.mlp.gate_proj.weight, gate[best])
        torch.testing.assert_close(layer.mlp.down_proj.weight, dense.model.layers[i].mlp.down_proj.weight[:, best])
    module, _, prov = load_pruned(out)
    assert prov["criterion"] == "prunenet" and prov["options"]["policy"] == str(policy)
    x = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(module(input_ids=x).logits, res.module(input_ids=x).logits, atol=1e-5, rtol=1e-5)
    # the same policy at another ratio: no training, same ranking, fewer rows
    again = edgeprune.prune(str(llama_dir), None, None, criterion="prunenet", mode="uniform", ratio=0.5,
                            policy=str(policy), measure=False)
    assert all(again.widths[k] < res.widths[k] for k in res.widths if k.endswith(".mlp"))


def test_cli_criterion_prunenet_with_policy(llama_dir, tmp_path, cli_in_process):
    policy = tmp_path / "policy.safetensors"
    out = tmp_path / "cli"
    proc = cli_in_process("--json", "prune", "--model", str(llama_dir), "--mode", "uniform", "--ratio", "0.3",
                          "--criterion", "prunenet", "--policy", str(policy), "--no-measure", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert policy.is_file()
    assert json.loads((out / "provenance.json").read_text())["criterion"] == "prunenet"
    # a policy for other shapes: one line, exit 2, nothing written
    other = tmp_path / "other"
    tiny_llama(layers=1, hidden=64, heads=8, kv_heads=4, intermediate=80, vocab=128).save_pretrained(str(other))
    proc = cli_in_process("prune", "--model", str(other), "--mode", "uniform", "--ratio", "0.3", "--criterion",
                          "prunenet", "--policy", str(policy), "--no-measure", "--out", str(tmp_path / "refused"))
    assert proc.returncode == 2
    assert "this model needs 80x64" in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "refused").exists()
    # --policy belongs to prunenet
    proc = cli_in_process("prune", "--model", str(llama_dir), "--mode", "uniform", "--ratio", "0.3", "--criterion",
                          "l2", "--policy", str(policy), "--no-measure", "--out", str(tmp_path / "l2"))
    assert proc.returncode == 2 and "--policy" in proc.stderr
    assert not (tmp_path / "l2").exists()


def test_head_scores_read_packed_qkv_once():
    """GPT-2 packs q|k|v in one Conv1D: its heads score as the same heads in separate q, k, v matrices would."""
    import transformers as tf

    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=32)).eval()
    heads = next(g for g in build_space(model, ()) if g.kind == "heads")
    w = model.transformer.h[0].attn.c_attn.weight.detach().double().t()  # [3·32, 32]: q, k, v rows
    full = pn.singular_values(w)
    want = []
    for u in range(4):  # head u owns rows 8u..8u+7 of each of q, k, v
        own = [part * 32 + 8 * u + r for part in range(3) for r in range(8)]
        left = pn.singular_values(w[[i for i in range(96) if i not in own]])
        share = float(w[own].pow(2).sum() / w.pow(2).sum())
        want.append(pn.ks_statistic(full, left) + share / (2 * len(full) * len(left)))
    np.testing.assert_allclose(pn.head_scores(heads), want, rtol=1e-12)
