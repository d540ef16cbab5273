"""The budget solver: exact multiple-choice knapsack, re-linearised latency solve, the baselines' modes."""

import itertools
import random

import numpy as np
import pytest
import torch

from edgeprune.pruning.solver import (
    CostModel,
    UnreachableBudgetError,
    _mckp,
    candidate_units,
    global_units,
    kept_value,
    ratio_for,
    round_units,
    solve_latency,
    uniform_units,
)
from edgeprune.pruning.space import UnitGroup, build_space
from tests.pruning.conftest import tiny_loaded


@pytest.mark.parametrize("seed", range(6))
def test_mckp_matches_brute_force_including_negative_costs(seed):
    rng = random.Random(seed)
    groups = rng.randint(2, 4)
    values = [[rng.uniform(0, 5) for _ in range(rng.randint(2, 4))] for _ in range(groups)]
    costs = [[rng.uniform(-2, 5) for _ in v] for v in values]
    capacity = rng.uniform(0, 8)
    picks = _mckp(values, costs, capacity, bins=20000)
    assert sum(costs[g][j] for g, j in enumerate(picks)) <= capacity + 1e-9
    best = max((sum(values[g][j] for g, j in enumerate(combo)), combo)
               for combo in itertools.product(*[range(len(v)) for v in values])
               if sum(costs[g][j] for g, j in enumerate(combo)) <= capacity)
    got = sum(values[g][j] for g, j in enumerate(picks))
    assert got == pytest.approx(best[0], rel=1e-3)  # discretisation is conservative: never over capacity


def test_mckp_infeasible_capacity_takes_the_cheapest_options():
    assert _mckp([[1, 2], [3, 1]], [[5, 1], [2, -1]], capacity=-10) == [1, 1]


def fake_group(units, kind="channels", unit_size=1):
    return UnitGroup("g", kind, units, unit_size, lambda idx: None)


def test_candidates_sit_on_the_channel_step_and_respect_min_keep():
    assert candidate_units(fake_group(64), 8, 0.1) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert candidate_units(fake_group(64), 8, 0.3) == [24, 32, 40, 48, 56, 64]
    assert candidate_units(fake_group(30), 8, 0.1) == [8, 16, 24, 30]  # an off-step dense width stays possible
    assert candidate_units(fake_group(6, "heads", 128), 8, 0.1) == [1, 2, 3, 4, 5, 6]  # whole heads


def test_round_to_and_uniform_global_modes():
    assert round_units(64, 64 * 0.7, 8) == 48
    assert round_units(5, 2.2, 8) == 2  # smaller than round_to: no rounding
    groups = [fake_group(32), fake_group(16)]
    scores = [np.arange(32, dtype=float) / 16, np.arange(16, dtype=float) / 8]
    assert uniform_units(groups, scores, 0.5, 8) == [16, 8]
    kept = global_units(groups, scores, 0.5)
    assert sum(kept) == 24  # half of 48 units, the lowest normalised scores first
    assert kept_value(scores[0], 2) == pytest.approx((31 + 30) / 16)
    assert ratio_for(lambda r: 1 - r, 0.25) == pytest.approx(0.75, abs=1e-6)


def test_global_mode_passes_a_capped_removal_to_the_next_lowest_unit():
    """Group A's 10 units all score below group B's 10: half of 20 is 10 removals, but A may lose at most 9
    (90 %), so the 10th goes to B's lowest unit instead of being dropped."""
    groups = [fake_group(10), fake_group(10)]
    scores = [np.arange(10, dtype=float) * 0.01, 1 + np.arange(10, dtype=float)]
    assert global_units(groups, scores, 0.5) == [1, 9]
    assert global_units(groups, scores, 0.95) == [1, 1]  # asked for 19, both caps allow 18: as many as allowed


def test_latency_solve_meets_the_budget_and_keeps_more_importance_than_uniform(tiny_cost):
    cost, groups, table = tiny_cost
    rng = np.random.default_rng(0)
    scores = [rng.random(g.units) + 0.5 for g in groups]
    dense = cost.predict([g.units for g in groups])
    budget = dense / 1.6
    sol = solve_latency(cost, groups, scores, budget, table.step, min_keep=0.1)
    assert sol.predicted_ms <= budget
    assert sol.predicted_ms == pytest.approx(cost.predict(sol.units))
    assert all(u % 8 == 0 or u == g.units for u, g in zip(sol.units, groups))  # on measured step edges
    assert len(sol.steps) == 4 and sol.steps[-1]["target_ms"] == pytest.approx(budget)
    # the uniform ratio that meets the same budget keeps less importance
    ratio = ratio_for(lambda r: cost.predict(uniform_units(groups, scores, r, 8)), budget)
    uni = uniform_units(groups, scores, ratio, 8)
    assert cost.predict(uni) <= budget
    value = lambda units: sum(kept_value(s, u) for s, u in zip(scores, units))  # noqa: E731
    assert value(sol.units) >= value(uni) - 1e-9


def test_unreachable_budget_names_the_fastest_reachable(tiny_cost):
    cost, groups, table = tiny_cost
    scores = [np.ones(g.units) for g in groups]
    with pytest.raises(UnreachableBudgetError, match="fastest"):
        solve_latency(cost, groups, scores, 1e-6, table.step, min_keep=0.5)


def test_cost_model_matches_the_tables_prediction_of_the_slimmed_graph(tiny_cost):
    """Σ per-block terms at any widths == the table's predict_ms on the really slimmed and exported graph."""
    import copy

    from edgeprune.exporters.onnx import export_onnx

    from edgeprune.latency.blocks import extract_blocks
    from edgeprune.pruning.space import apply_keep

    cost, groups, table = tiny_cost
    loaded = tiny_loaded()
    units = [max(1, g.units - 5 * (i + 1)) if g.units > 8 else g.units for i, g in enumerate(groups)]
    if table.step > 1:  # every group but the last on the step: on-step convs and off-step ones in one candidate
        units[:-1] = [max(table.step, u // table.step * table.step) for u in units[:-1]]
    clone = copy.deepcopy(loaded.module)
    apply_keep(build_space(clone, loaded.example_inputs()), {i: range(u) for i, u in enumerate(units)})
    proto, _ = export_onnx(clone, loaded.example_inputs(), None)
    blocks = extract_blocks(proto).blocks
    assert table.predict_ms(blocks) == pytest.approx(cost.predict(units), rel=1e-9)
    features = table.features(blocks)
    assert features["cells_on_step_ms"] > 0 and features["cells_other_ms"] > 0  # both regimes in this candidate
    for calibration in ({"kind": "regime", "value": 0.6, "other_ratio": 1.1},
                        {"kind": "layout", "value": 0.9, "layout_on_step_ms_per_m": -0.2,
                         "layout_off_step_ms_per_m": 0.3},
                        {"kind": "additive", "value": 0.05}):
        other = copy.copy(table)
        other.calibration = calibration
        assert other.predict_ms(blocks) == pytest.approx(CostModel(other, cost.widths).predict(units), rel=1e-9)
    regime = copy.copy(table)
    regime.calibration = {"kind": "regime", "value": 0.6, "other_ratio": 1.1}
    assert regime.predict_ms(blocks) == pytest.approx(0.6 * features["cells_on_step_ms"]
                                                      + 1.1 * features["cells_other_ms"], rel=1e-9)
    assert sum(b.macs for b in blocks) == cost.widths.macs(units)
    assert clone(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
