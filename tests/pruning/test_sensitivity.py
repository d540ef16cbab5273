"""Option values in loss units (sensitivity.py) and the search over whole candidates (search.py)."""

import numpy as np
import pytest
import torch

import edgeprune
from edgeprune.pruning.search import search
from edgeprune.pruning.sensitivity import calib_loss, concave_value, probe_widths
from edgeprune.pruning.solver import candidate_units
from tests.pruning.conftest import tiny_loaded


def test_values_are_made_monotone_and_concave_through_the_hull():
    # measured: 8 -> 1.0, 16 -> 0.2, 24 -> 0.3 (noise: more units, more loss), dense 32 -> 0
    value = concave_value([8, 16, 24, 32], [1.0, 0.2, 0.3, 0.0])
    # monotone: 16 takes 24's 0.3; hull of (8, 1), (16, .3), (24, .3), (32, 0) drops (24, .3) (above 16-32 chord)
    assert value(8) == pytest.approx(-1.0)
    assert value(16) == pytest.approx(-0.3)
    assert value(24) == pytest.approx(-0.15)
    assert value(32) == pytest.approx(0.0)
    assert value(12) == pytest.approx(-0.65)
    assert value(4) == pytest.approx(-(1.0 + 4 * 0.7 / 8))  # first segment extended below the smallest probe
    gains = np.diff([value(u) for u in range(4, 33)])
    assert (gains >= -1e-12).all() and (np.diff(gains) <= 1e-12).all()  # non-decreasing, concave


def test_probe_widths_spread_over_the_allowed_widths():
    assert probe_widths([8, 16, 24, 32, 40, 48, 56, 64], 4) == [8, 24, 40, 56]
    assert probe_widths([1, 2, 3, 4], 4) == [1, 2, 3]
    assert probe_widths([16], 4) == []


def test_calib_loss_is_the_mean_kl_per_sample():
    ref = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    out = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p = torch.softmax(ref, -1)
    q = torch.softmax(out, -1)
    by_hand = float((p * (p.log() - q.log())).sum() / 2)  # sample 2 matches: KL 0

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return out

    assert calib_loss(Fixed(), [(torch.zeros(2, 1),)], [ref]) == pytest.approx(by_hand)
    assert by_hand > 0


def test_search_keeps_the_best_seed_fits_the_budget_and_spends_at_most_its_evaluations(tiny_cost):
    cost, groups, table = tiny_cost
    options = {i: candidate_units(g, table.step, 0.1) for i, g in enumerate(groups) if g.units > 1}
    values = [None if i not in options else (lambda u, n=g.units: -(n - u) ** 2 / n) for i, g in enumerate(groups)]
    dense = [g.units for g in groups]
    budget = cost.predict(dense) / 1.5
    favourite = [max(o for o in options[i] if o <= g.units // 2) if i in options else g.units
                 for i, g in enumerate(groups)]
    calls = []

    def loss(units):  # a known landscape: distance from `favourite`
        calls.append(units)
        return float(sum((u - f) ** 2 for u, f in zip(units, favourite)))

    uniform = [g.units // 2 if i in options else g.units for i, g in enumerate(groups)]
    too_big = list(dense)
    result = search(cost, groups, options, values, budget, loss, {"uniform": uniform, "dense": too_big}, 30, seed=1)
    assert len(calls) == result.evaluations <= 30
    assert result.predicted_ms <= budget + 1e-12
    assert result.loss == min(loss_ for loss_ in map(lambda u: sum((a - b) ** 2 for a, b in zip(u, favourite)),
                                                      calls))
    seeds = result.seeds
    assert seeds["uniform"]["units"] == uniform  # a seed that fits is evaluated exactly as given
    assert seeds["dense"]["predicted_ms"] <= budget  # one that does not is repaired under the budget first
    assert result.loss <= seeds["uniform"]["loss"] and result.loss <= seeds["dense"]["loss"]
    assert result.history == sorted(result.history, reverse=True)  # best-so-far never gets worse


def test_prune_with_calib_values_cuts_by_measured_loss_searches_and_caches(tiny_table, tmp_path):
    _, path = tiny_table
    cache = tmp_path / "c.sqlite"
    first = edgeprune.prune(tiny_loaded(), path, None, budget="1.5x", criterion="l2", calib="digits",
                            calib_samples=16, measure=False, cache=cache)
    assert first.predicted_ms <= first.budget_ms
    note = next(n for n in first.notes if n.startswith("option values: calibration loss"))
    assert "cached" not in note
    search_record = first.rounds[-1]["search"]
    assert search_record["evaluations"] <= 24 and "uniform" in search_record["seeds"]
    uniform = search_record["seeds"]["uniform"]
    assert search_record["calib_loss"] <= uniform["calib_loss"]
    assert uniform["predicted_ms"] <= first.budget_ms
    # another budget reuses the measured sensitivity
    second = edgeprune.prune(tiny_loaded(), path, None, budget="1.3x", criterion="l2", calib="digits",
                             calib_samples=16, measure=False, cache=cache)
    assert any(n.startswith("option values:") and "(cached)" in n for n in second.notes)
    # no calibration data: the data-free value, said out loud
    free = edgeprune.prune(tiny_loaded(), path, None, budget="1.5x", criterion="l2", measure=False, cache=cache)
    assert any(n.startswith("no --calib: option values are the criterion's scores") for n in free.notes)
    assert "search" not in free.rounds[-1]



@pytest.mark.parametrize("model", ["cnn", "llama"])
def test_scoring_in_place_by_zeroing_equals_slimming_and_restores_the_model(model):
    """The fast path (zero, re-estimate BatchNorm, evaluate, restore) must give the slimmed copy's loss exactly."""
    from edgeprune.pruning.criteria import score_groups
    from edgeprune.pruning.sensitivity import CandidateScorer
    from edgeprune.pruning.space import build_space
    from tests.pruning.tiny import tiny_cnn, tiny_llama

    torch.manual_seed(0)
    if model == "cnn":
        module = tiny_cnn().eval()
        example = (torch.zeros(1, 3, 32, 32),)
        batches = [(torch.randn(8, 3, 32, 32),) for _ in range(3)]
    else:
        module = tiny_llama().eval()
        example = ()
        batches = [(torch.randint(0, module.config.vocab_size, (2, 12)),) for _ in range(2)]
    space = lambda m: build_space(m, example)  # noqa: E731
    groups = space(module)
    scores = score_groups("l2", groups, module)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    scorer = CandidateScorer(module, space, scores, batches)
    assert scorer.masked
    rng = np.random.default_rng(0)
    for _ in range(3):
        units = [int(rng.integers(1, g.units + 1)) for g in groups]
        fast = scorer._masked(units)
        slow = scorer._slimmed(units)
        assert fast == pytest.approx(slow, rel=1e-4, abs=1e-7)
        assert fast > 0
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics restored
