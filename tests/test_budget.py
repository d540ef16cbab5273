"""The one budget rule and the measured speedup's interval (edgeprune/budget.py), against hand-computed values."""

import math

import pytest

from edgeprune.budget import Budget, certified_ms, interval, meets_budget, parse_budget
from edgeprune.errors import BadInputError


def test_budget_parsing_and_the_tolerance():
    assert parse_budget("4.2ms") == Budget("ms", 4.2) and parse_budget("2x") == Budget("speedup", 2.0)
    with pytest.raises(BadInputError):
        parse_budget("0.5x")
    assert meets_budget(10.3, 10.0) and not meets_budget(10.31, 10.0)


def test_interval_of_paired_rounds_by_hand():
    dense, pruned = [10.0, 10.4, 9.8], [5.0, 5.6, 4.6]
    got = interval(9.8, 4.6, dense, pruned, 0.9)
    # log speedups of the three rounds: ln 2, ln(10.4/5.6), ln(9.8/4.6); their sample sd by hand
    logs = [math.log(2.0), math.log(10.4 / 5.6), math.log(9.8 / 4.6)]
    mean = sum(logs) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in logs) / 2)
    half = 2.919986 * sd / math.sqrt(3)  # Student t, 2 degrees of freedom, 95th percentile
    point = 9.8 / 4.6
    assert got["rounds"] == 3
    assert got["speedup"] == pytest.approx([point * math.exp(-half), point * math.exp(half)], rel=1e-5)
    lp = [math.log(v) for v in pruned]
    mp = sum(lp) / 3
    hp = 2.919986 * math.sqrt(sum((v - mp) ** 2 for v in lp) / 2) / math.sqrt(3)
    assert got["pruned_ms"] == pytest.approx([4.6 * math.exp(-hp), 4.6 * math.exp(hp)], rel=1e-5)
    wider = interval(9.8, 4.6, dense, pruned, 0.99)
    assert wider["speedup"][0] < got["speedup"][0] and wider["speedup"][1] > got["speedup"][1]


def test_one_round_gives_no_interval_and_certification_takes_the_pessimistic_end():
    single = interval(10.0, 5.0, [10.0], [5.0], 0.95)
    assert single["rounds"] == 1 and single["speedup"] == [2.0, 2.0]
    measured = {"dense_ms": 10.0, "pruned_ms": 5.0,
                "interval": {"speedup": [1.6, 2.5], "pruned_ms": [4.5, 5.5], "confidence": 0.95, "rounds": 5}}
    assert certified_ms(measured, Budget("speedup", 2.0)) == pytest.approx(10.0 / 1.6)
    assert certified_ms(measured, Budget("ms", 6.0)) == pytest.approx(5.5)


def test_validate_puts_intervals_on_the_estimate_and_the_paired_speedup_by_hand():
    from edgeprune.validation import add_intervals, interval_text

    # pass p of both bundles ran in one round; the baseline's 4th pass was an extra one for noise: not paired
    base = {"estimate_ms": 4.2, "estimate": {"pass_min_ms": [4.0, 4.6, 4.2, 9.9]}}
    pruned = {"estimate_ms": 2.1, "estimate": {"pass_min_ms": [2.0, 2.2, 2.1]}}
    add_intervals(pruned, base, paired=3)
    iv = pruned["interval"]
    # log ratios ln 2, ln(4.6/2.2), ln 2: mean 0.70796, sd 0.025664, t(0.95, 2) = 2.91999 -> half width 0.043266
    assert pruned["speedup"] == pytest.approx(2.0)
    assert iv["speedup"] == pytest.approx([2.0 * math.exp(-0.043266), 2.0 * math.exp(0.043266)], rel=1e-4)
    assert iv["ms"] == pytest.approx([1.93787, 2.27569], rel=1e-4) and iv["paired_rounds"] == 3
    assert "2.00x the baseline (1.92–2.09x over 3 paired passes)" in interval_text(pruned)
    add_intervals(base, base, paired=3)  # the baseline itself: an interval on its latency, no speedup over itself
    assert "speedup" not in base["interval"] and base["interval"]["rounds"] == 4
    old_device = {"estimate_ms": 2.1, "estimate": {}}  # a profilers package from before pass_min_ms
    add_intervals(old_device, base, paired=3)
    assert "interval" not in old_device and interval_text(old_device) == "estimate 2.100 ms"
