"""TT-MPD (pruning/ttmpd.py): the proxies by hand, g on a known law, the whole pipeline on shifted digits."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from edgeprune.pruning import ttmpd


def test_proxies_match_hand_computation():
    dense = [torch.tensor([[1.0, 2.0], [3.0, 4.0]])]
    cand = [torch.tensor([[1.0, 0.0], [3.0, 5.0]])]
    # (2-0)² + (4-5)² = 5 over 1 + 4 + 9 + 16 = 30
    assert ttmpd.reconstruction_error(dense, cand) == pytest.approx(5 / 30)
    assert ttmpd.reconstruction_error(dense, dense) == 0.0
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])  # p = (1/2, 1/2) and (1/4, 3/4)
    h = (math.log(2) - (0.25 * math.log(0.25) + 0.75 * math.log(0.75))) / 2
    assert ttmpd.mean_entropy(logits) == pytest.approx(h, rel=1e-6)
    reference = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert ttmpd.agreement(logits, reference) == 0.5  # argmax of [0, 0] is class 0; of [0, ln 3] class 1
    q = 1 / (1 + math.e)  # softmax([0, 1]) = (q, 1 - q)
    kl0 = q * math.log(q / 0.5) + (1 - q) * math.log((1 - q) / 0.5)
    kl1 = q * math.log(q / 0.25) + (1 - q) * math.log((1 - q) / 0.75)
    assert ttmpd.mean_kl(logits, reference) == pytest.approx((kl0 + kl1) / 2, rel=1e-6)
    assert ttmpd.mean_kl(reference, reference) == pytest.approx(0.0, abs=1e-7)


def test_g_recovers_a_known_law_and_keeps_its_weights_on_the_damaging_side():
    rng = np.random.default_rng(0)
    points = [{"feature": f, "entropy": e} for f, e in rng.random((8, 2))]
    acc = [0.95 - 0.5 * p["feature"] - 0.1 * p["entropy"] for p in points]
    g = ttmpd.fit_accuracy_model(points, acc, ("feature", "entropy"))
    assert g.intercept == pytest.approx(0.95, abs=1e-9)
    assert g.weights == pytest.approx([0.5, 0.1], abs=1e-9)
    assert g.r2 == pytest.approx(1.0)
    assert g.loo_spearman == pytest.approx(1.0)
    assert g.predict({"feature": 0.2, "entropy": 1.0}) == pytest.approx(0.95 - 0.1 - 0.1)
    # agreement is the one proxy where more means better: its sign is −1, its weight still ≥ 0
    agree = [{"agreement": a} for a in (0.2, 0.5, 0.9, 1.0)]
    g = ttmpd.fit_accuracy_model(agree, [0.3 + 0.6 * p["agreement"] for p in agree], ("agreement",))
    assert (g.intercept, g.weights[0]) == pytest.approx((0.3, 0.6))  # Â = 0.3 − 0.6 · (−1 · agreement)
    # a law where more feature error "helps" is not believed: that weight stays at 0, the fit says how poor it is
    g = ttmpd.fit_accuracy_model(points, [0.5 + 0.3 * p["feature"] for p in points], ("feature", "entropy"))
    assert g.weights[0] == 0.0
    assert g.r2 < 0.5
    restored = ttmpd.AccuracyModel.from_dict(json.loads(json.dumps(g.to_dict())))
    assert restored.predict(points[0]) == pytest.approx(g.predict(points[0]))


def test_option_values_are_concave_predicted_drops_from_g():
    from types import SimpleNamespace

    g = ttmpd.AccuracyModel(("feature", "entropy"), 1.0, [0.5, 0.1])
    table = ttmpd.ProxyTable(["a", "b"], [[8, 16], []],
                             [[{"feature": 0.4, "entropy": 1.0}, {"feature": 0.1, "entropy": 0.6}], []],
                             {"feature": 0.0, "entropy": 0.5})
    values, drops = ttmpd.option_values(g, table, [SimpleNamespace(units=24), SimpleNamespace(units=8)])
    # g(dense) = 1 − 0.05 = 0.95; g(8) = 1 − 0.2 − 0.1 = 0.7; g(16) = 1 − 0.05 − 0.06 = 0.89
    assert drops.losses[0] == pytest.approx([0.25, 0.06])
    assert values[1] is None  # a group that was not probed stays whole
    assert [values[0](u) for u in (8, 16, 24)] == pytest.approx([-0.25, -0.06, 0.0])
    assert values[0](12) == pytest.approx(-(0.25 + 0.06) / 2)  # linear between measured widths


def test_the_feature_proxy_is_the_consumer_layers_error_of_the_slimmed_cut():
    """Scored in place (weights zeroed, BatchNorm re-estimated) it equals the error measured on a slimmed copy."""
    from edgeprune.pruning.batchnorm import recalibrate_batchnorm
    from edgeprune.pruning.criteria import score_groups
    from edgeprune.pruning.engine import slim_copy
    from edgeprune.pruning.space import build_space
    from tests.pruning.tiny import tiny_cnn

    model = tiny_cnn()
    example = (torch.randn(1, 3, 32, 32),)
    space = lambda m: build_space(m, example)  # noqa: E731
    groups = space(model)
    scores = score_groups("l2", groups, model)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 32, 32, generator=gen),) for _ in range(2)]
    pristine = copy.deepcopy(model)
    recalibrate_batchnorm(pristine, batches)  # the adapted teacher: statistics of these very inputs
    scorer = ttmpd.ProxyScorer(copy.deepcopy(pristine), space, scores, batches)
    assert scorer.masked
    i = next(k for k, g in enumerate(groups) if g.name == "dw")  # down → bn → depthwise dw → bn → pw
    assert scorer.consumers[i] == ["pw"]  # the depthwise conv between them maps channels one to one
    dense = [g.units for g in groups]
    base = scorer.proxies(dense)
    assert base["feature"] == pytest.approx(0.0, abs=1e-6) and base["agreement"] == 1.0
    units = list(dense)
    units[i] = 16
    got = scorer.proxies(units, i)

    def pw_outputs(module):
        seen = []
        hook = module.pw.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
        with torch.no_grad():
            logits = torch.cat([module(*b) for b in batches])
        hook.remove()
        return seen, logits

    want_feats, want_ref = pw_outputs(pristine.eval())
    slim, _ = slim_copy(pristine, space, units, scores)
    recalibrate_batchnorm(slim, batches)
    feats, logits = pw_outputs(slim.eval())
    assert got["feature"] == pytest.approx(ttmpd.reconstruction_error(want_feats, feats), rel=1e-4)
    assert got["entropy"] == pytest.approx(ttmpd.mean_entropy(logits), rel=1e-4)
    assert got["agreement"] == ttmpd.agreement(logits, want_ref)
    assert got["feature"] > 0.01


def test_a_flat_g_falls_back_to_equal_weights_on_standardised_proxies():
    table = ttmpd.ProxyTable(["a"], [[8, 16]], [[{"feature": 0.4, "entropy": 1.0}, {"feature": 0.2, "entropy": 0.6}]],
                             {"feature": 0.0, "entropy": 0.5})
    flat = ttmpd.fit_accuracy_model([c[2] for c in table.candidates()] * 2, [1.0] * 4, ("feature", "entropy"))
    assert flat.weights == [0.0, 0.0]
    used = ttmpd.flat_fallback(flat, table)
    assert used.weights == pytest.approx([1 / (2 * 0.1), 1 / (2 * 0.2)])  # std of (0.4, 0.2) and of (1.0, 0.6)
    # drop of width 8: 0.4·5 + 0.5·2.5 = 3.25; of width 16: 0.2·5 + 0.1·2.5 = 1.25
    assert ttmpd.option_values(used, table, [type("G", (), {"units": 24})()])[1].losses[0] == pytest.approx(
        [3.25, 1.25])


def test_fit_targets_score_a_run_by_hand_and_old_records_read_as_agreement():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    reference = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert ttmpd.fit_score("agreement", logits, reference) == 0.5
    assert ttmpd.fit_score("kl", logits, reference) == pytest.approx(-ttmpd.mean_kl(logits, reference))
    assert ttmpd.fit_score("kl", reference, reference) == pytest.approx(0.0, abs=1e-7)  # the teacher itself: best
    from edgeprune.errors import BadInputError

    with pytest.raises(BadInputError, match="fit target accuracy: must be one of kl, agreement"):
        ttmpd.check_fit_target("accuracy")
    g = ttmpd.fit_accuracy_model([{"feature": f} for f in (0.1, 0.2, 0.3)], [-0.1, -0.2, -0.3], ("feature",),
                                 target="kl")
    assert g.to_dict()["target"] == "kl" and ttmpd.AccuracyModel.from_dict(g.to_dict()).target == "kl"
    old = {k: v for k, v in g.to_dict().items() if k != "target"}  # written before the fit target existed
    assert ttmpd.AccuracyModel.from_dict(old).target == "agreement"


def test_the_kl_target_separates_fit_runs_that_top1_agreement_ties():
    """On a small probe set the runs' top-1 agreements tie and g is flat; their KLs still differ and rank them."""
    reference = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [0.0, 4.0]])
    runs = [reference * s for s in (1.0, 0.6, 0.3)]  # same argmax everywhere, ever flatter outputs
    proxies = [{"entropy": ttmpd.mean_entropy(r)} for r in runs]
    agree = [ttmpd.fit_score("agreement", r, reference) for r in runs]
    assert agree == [1.0, 1.0, 1.0]
    assert ttmpd.fit_accuracy_model(proxies, agree, ("entropy",)).weights == [0.0]  # flat: the fallback's case
    kl = [ttmpd.fit_score("kl", r, reference) for r in runs]
    assert kl[0] > kl[1] > kl[2]
    g = ttmpd.fit_accuracy_model(proxies, kl, ("entropy",), target="kl")
    assert g.weights[0] > 0 and g.r2 > 0.9  # more entropy, more KL: g now weighs the proxy


def test_fit_candidates_span_light_to_deep_cuts():
    table = ttmpd.ProxyTable(["a"], [[1, 2, 3, 4, 5]], [[{"feature": f, "entropy": f / 2} for f in
                                                          (0.5, 0.4, 0.3, 0.2, 0.1)]], {"feature": 0, "entropy": 0})
    picks = ttmpd.fit_candidates(table, 3, ("feature", "entropy"))
    assert [w for _, w, _ in picks] == [1, 3, 5]


def test_too_few_or_no_samples_are_refused_naming_the_counts():
    from edgeprune.data import Samples
    from edgeprune.errors import BadInputError

    samples = Samples(torch.zeros(10, 3, 4, 4), torch.zeros(10, dtype=torch.long), "x.npz", {})
    with pytest.raises(BadInputError, match=r"holds 10 samples, fewer than .* \(8 \+ 4 = 12\)"):
        ttmpd.split_unlabeled(samples, 8, 4, 0)
    with pytest.raises(BadInputError, match="holds no samples"):
        ttmpd.split_unlabeled(samples.take(0), 8, 4, 0)
    probe, finetune = ttmpd.split_unlabeled(samples, 6, 4, 0)
    assert (len(probe), len(finetune), probe.labels, finetune.labels) == (6, 4, None, None)


SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def trained_tiny():
    """The tiny CNN trained briefly on clean digits (it collapses on the shifted ones: the setting of TT-MPD)."""
    from edgeprune.examples import train_digits
    from tests.pruning.conftest import tiny_loaded

    loaded = tiny_loaded()
    train_digits(loaded.module, input_shape=SHAPE, epochs=3, lr=1e-2)
    return loaded


def test_adapt_meets_the_budget_and_beats_the_unadapted_pruned_model_on_the_shifted_domain(
        trained_tiny, tiny_table, tmp_path, formula_device):
    import edgeprune
    from edgeprune.data import shifted_digits
    from edgeprune.examples import accuracy
    from tests.pruning.tiny import TinyCNN

    table, path = tiny_table
    test = shifted_digits(SHAPE, "test")
    loaded = copy.deepcopy(trained_tiny)
    out = tmp_path / "adapted"
    done = edgeprune.adapt(loaded, path, "digits-shifted:train", out, budget="1.5x", finetune_samples=128,
                           fit_runs=4, epochs=3)
    result = done.pruned
    assert result.predicted_ms <= result.budget_ms
    assert result.measured["speedup"] >= 1.5 / 1.03  # the formula device's measurement, within the tolerance
    plain = edgeprune.prune(copy.deepcopy(trained_tiny), path, None, budget="1.5x", measure=False)
    adapted_acc, plain_acc = accuracy(done.pruned.module, test), accuracy(plain.module, test)
    assert adapted_acc > plain_acc + 0.2, (adapted_acc, plain_acc)
    assert len(done.fit_runs) == 4 and done.model.r2 is not None
    assert done.model.target == "kl" and len({r["score"] for r in done.fit_runs}) == 4  # no two runs tie
    assert not done.record["g_flat_fallback"]  # a continuous target gives g a slope (top-1 agreement often did not)
    reloaded = edgeprune.load(out, base=TinyCNN())
    x = test.inputs[:8]
    with torch.no_grad():
        assert torch.allclose(reloaded(x), done.pruned.module.eval()(x), atol=1e-5)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["criterion"] == "tt-mpd" and prov["ttmpd"]["g"]["proxies"] == ["feature", "kl"]
    assert len(prov["ttmpd"]["g"]["points"]) == 4
    assert (out.parent / "adapted.teacher-cache" / "meta.json").is_file()
    again = edgeprune.adapt(copy.deepcopy(trained_tiny), path, "digits-shifted:train", tmp_path / "again",
                            budget="1.5x", finetune_samples=128, epochs=1, g_from=out,
                            cache_dir=out.parent / "adapted.teacher-cache")
    assert again.fit_runs == [] and again.teacher_cache.reused  # g and the pseudo-labels are both reused
    assert again.model.to_dict() == done.model.to_dict()


def test_a_flat_g_still_prunes_to_the_budget_through_the_equal_weight_fallback(trained_tiny, tiny_table,
                                                                                formula_device, monkeypatch):
    """Every fit run scoring the same (what top-1 agreement on a small P did) must not make every cut look free."""
    import edgeprune

    monkeypatch.setattr(ttmpd, "fit_score", lambda target, logits, reference: 0.875)
    done = edgeprune.adapt(copy.deepcopy(trained_tiny), tiny_table[1], "digits-shifted:train", None, budget="1.5x",
                           probe_samples=32, finetune_samples=64, fit_runs=3, fit_target="agreement", epochs=1)
    assert done.model.weights == [0.0, 0.0] and done.model.target == "agreement"
    assert done.record["g_flat_fallback"]
    assert any(n.startswith("warning: g is flat") for n in done.notes)
    assert done.pruned.predicted_ms <= done.pruned.budget_ms
    losses = [loss for group in done.record["predicted_drop"] for loss in group]
    assert losses and max(losses) > 0  # the cuts still carry their standardised damage


@pytest.mark.parametrize("data, extra, message", [
    ("empty.npz", [], "holds no samples"),
    ("digits-shifted:test", ["--probe-samples", "300", "--finetune-samples", "300"],
     "holds 450 samples, fewer than the probe set and the fine-tune set need (300 + 300 = 600)"),
    ("missing.npz", [], "does not exist"),
    ("digits-shifted:test", ["--proxies", "feature,accuracy"], "each must be one of"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tiny_table, tmp_path, cli_in_process, data, extra,
                                                          message):
    np.savez(tmp_path / "empty.npz", inputs=np.zeros((0, 3, 32, 32), dtype=np.float32))
    source = str(tmp_path / data) if data.endswith(".npz") else data
    out = tmp_path / "out"
    got = cli_in_process("adapt", "--model", "torchvision:resnet18", "--table", str(tiny_table[1]), "--budget",
                         "1.5x", "--data", source, "--out", str(out), *extra)
    assert got.returncode == 2
    assert "Traceback" not in got.stderr
    lines = [line for line in got.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], got.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.npz"]
