"""The estimator: summary statistics on hand-made passes, runs per pass, and interleaved measurement."""

import itertools
import types

import pytest

from profilers import synth, timing
from profilers.backends.ort import OrtRunner
from profilers.timing import Estimator, measure_interleaved, runs_for, summarize

# -- summarize -----------------------------------------------------------------------------------------------


def test_summarize_hand_made_passes():
    # runs in ms, sorted: 1, 1.5, 2, 2, 3, 4, 5, 6 (n = 8); pass minima: 1, 2, 1.5 -> median 1.5
    passes = [[0.003, 0.001, 0.002], [0.004, 0.002], [0.0015, 0.005, 0.006]]
    s = summarize(passes)
    assert s["estimate_ms"] == pytest.approx(1.5)
    assert s["min_ms"] == pytest.approx(1.0)
    assert s["median_ms"] == pytest.approx(2.5)  # between the 4th (2) and 5th (3) of 8
    assert s["p90_ms"] == pytest.approx(5.3)  # position 0.9 * 7 = 6.3: 5 + 0.3 * (6 - 5)
    # |r - 2.5| sorted: .5 .5 .5 1 1.5 1.5 2.5 3.5 -> median (1 + 1.5) / 2
    assert s["mad_ms"] == pytest.approx(1.25)
    assert s["n"] == 8
    assert s["passes"] == 3
    assert s["pass_spread"] == pytest.approx((2.0 - 1.0) / 1.5)


def test_summarize_estimate_is_median_of_pass_minima_not_global_min():
    # one lucky fast run in one pass must not become the estimate
    passes = [[0.010, 0.011], [0.0001, 0.012], [0.0105, 0.0102], [0.0103, 0.011], [0.0101, 0.013]]
    s = summarize(passes)
    # pass minima in ms: 10, 0.1, 10.2, 10.3, 10.1 -> sorted 0.1, 10, 10.1, 10.2, 10.3
    assert s["estimate_ms"] == pytest.approx(10.1)
    assert s["min_ms"] == pytest.approx(0.1)
    assert s["pass_spread"] == pytest.approx((10.3 - 0.1) / 10.1)


def test_summarize_even_number_of_passes_interpolates():
    s = summarize([[0.001], [0.002], [0.004], [0.003]])
    assert s["estimate_ms"] == pytest.approx(2.5)
    assert s["median_ms"] == pytest.approx(2.5)
    assert s["p90_ms"] == pytest.approx(3.7)  # 0.9 * 3 = 2.7: 3 + 0.7 * 1
    assert s["mad_ms"] == pytest.approx(1.0)  # deviations 1.5 .5 .5 1.5
    assert s["n"] == 4 and s["passes"] == 4


def test_summarize_constant_runs_have_no_spread():
    s = summarize([[0.002] * 5, [0.002] * 5, [0.002] * 5])
    assert s["estimate_ms"] == s["min_ms"] == s["median_ms"] == s["p90_ms"] == pytest.approx(2.0)
    assert s["mad_ms"] == 0.0
    assert s["pass_spread"] == 0.0
    assert s["n"] == 15


def test_summarize_ignores_empty_passes_in_minima():
    s = summarize([[0.001, 0.003], [], [0.002]])
    assert s["passes"] == 2
    assert s["n"] == 3
    assert s["estimate_ms"] == pytest.approx(1.5)


def test_summarize_single_pass():
    s = summarize([[0.004, 0.002, 0.003]])
    assert s["estimate_ms"] == pytest.approx(2.0)
    assert s["pass_spread"] == 0.0
    assert s["median_ms"] == pytest.approx(3.0)


# -- runs_for / Estimator ------------------------------------------------------------------------------------


def test_runs_for_bounds():
    est = Estimator(runs=20, pass_s=0.05)
    assert runs_for(1.0, est) == 3  # a slow model still gets 3 runs per pass
    assert runs_for(0.05, est) == 3
    assert runs_for(1e-6, est) == 20  # a fast one is capped at `runs`
    assert runs_for(0.004, est) == 13  # 0.05 / 0.004 = 12.5 -> 12 + 1
    assert runs_for(0.0, est) == 20
    assert runs_for(-1.0, est) == 20
    for t in (1e-7, 1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 0.1, 10.0):
        assert 3 <= runs_for(t, est) <= 20


def test_runs_for_monotone_in_run_time():
    est = Estimator(runs=50, pass_s=0.1)
    counts = [runs_for(t, est) for t in (1e-5, 1e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1.0)]
    assert counts == sorted(counts, reverse=True)


def test_estimator_dict_roundtrip_and_unknown_keys():
    est = Estimator(
        passes=5, runs=7, warmup_runs=3, warmup_s=0.5, pass_s=0.01, max_spread=0.2, extra_passes=1, seed=9
    )
    data = est.to_dict()
    assert data["name"] == timing.ESTIMATOR == "median_of_pass_min"
    back = Estimator.from_dict(dict(data, unknown="ignored"))
    assert back.to_dict() == data
    assert Estimator.from_dict({}).to_dict() == Estimator().to_dict()


# -- measure_interleaved with a deterministic clock ----------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeRunner:
    """infer() advances the fake clock by the next duration of its pattern: durations under test control."""

    def __init__(self, clock, warmup, pass_durations, tail):
        self.clock = clock
        self.durations = itertools.chain(warmup, *pass_durations, itertools.repeat(tail))
        self.calls = 0

    def infer(self):
        self.calls += 1
        self.clock.now += next(self.durations)


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=fake))
    return fake


def _estimator(**kw):
    base = dict(
        passes=3, runs=4, warmup_runs=2, warmup_s=1e9, pass_s=1e9, max_spread=0.05, extra_passes=3, seed=1
    )
    base.update(kw)
    return Estimator(**base)


def test_interleaved_quiet_and_noisy_runner(clock):
    quiet = FakeRunner(clock, [0.01, 0.01], [], 0.001)  # every timed run is 1 ms
    noisy = FakeRunner(
        clock,
        [0.01, 0.01],
        [
            [0.003, 0.002, 0.002, 0.004],  # pass minima: 2 ms, 4 ms, 2 ms -> spread 1.0
            [0.005, 0.004, 0.006, 0.004],
            [0.002, 0.003, 0.003, 0.002],
        ],
        0.003,
    )
    seen = []
    quiet_s, noisy_s = measure_interleaved([quiet, noisy], _estimator(), on_pass=seen.append)
    assert seen == [1, 2, 3]
    # results come back in the order of the runners
    assert quiet_s["passes"] == 3 and quiet_s["n"] == 12
    assert quiet_s["estimate_ms"] == pytest.approx(1.0)
    assert quiet_s["min_ms"] == pytest.approx(1.0) and quiet_s["pass_spread"] == pytest.approx(0.0, abs=1e-9)
    # the noisy one gets every extra pass (its pass minima keep the 2..4 ms range), the quiet one none
    assert noisy_s["passes"] == 6 and noisy_s["n"] == 24
    # pass minima 2, 4, 2, 3, 3, 3 -> sorted 2 2 3 3 3 4 -> median 3
    assert noisy_s["estimate_ms"] == pytest.approx(3.0)
    assert noisy_s["min_ms"] == pytest.approx(2.0)
    # warm-up calls (2 each) are not in the statistics
    assert quiet.calls == 2 + quiet_s["n"]
    assert noisy.calls == 2 + noisy_s["n"]


def test_interleaved_no_extra_passes_when_disabled(clock):
    noisy = FakeRunner(clock, [0.01, 0.01], [[0.002] * 4, [0.004] * 4, [0.002] * 4], 0.003)
    (s,) = measure_interleaved([noisy], _estimator(extra_passes=0))
    assert s["passes"] == 3 and s["n"] == 12
    assert s["pass_spread"] == pytest.approx(1.0)


def test_interleaved_spread_within_limit_gets_no_extra_pass(clock):
    runner = FakeRunner(clock, [0.01, 0.01], [[0.00100] * 4, [0.00104] * 4, [0.00102] * 4], 0.001)
    (s,) = measure_interleaved([runner], _estimator(max_spread=0.05))
    assert s["passes"] == 3
    assert s["pass_spread"] == pytest.approx(0.04 / 1.02)


def test_runs_per_pass_follow_the_warm_up_run(clock):
    # first warm-up run 10 ms, pass_s 25 ms -> int(2.5) + 1 = 3 runs per pass; 0.1 ms -> capped at runs = 8
    slow = FakeRunner(clock, [0.010, 0.010], [], 0.010)
    fast = FakeRunner(clock, [0.0001, 0.0001], [], 0.0001)
    slow_s, fast_s = measure_interleaved([slow, fast], _estimator(runs=8, pass_s=0.025))
    assert slow_s["n"] == 3 * 3
    assert fast_s["n"] == 8 * 3


def test_warm_up_stops_at_the_deadline(clock):
    runner = FakeRunner(clock, [], [], 0.1)  # 100 ms per run, 0.35 s of warm-up allowed
    one = timing.warm_up(runner, _estimator(warmup_runs=50, warmup_s=0.35))
    assert one == pytest.approx(0.1)
    assert runner.calls == 4  # runs at t=0, 0.1, 0.2, 0.3; the check after 0.4 s stops it


def test_warm_up_stops_at_the_run_count(clock):
    runner = FakeRunner(clock, [], [], 0.001)
    timing.warm_up(runner, _estimator(warmup_runs=7, warmup_s=1e9))
    assert runner.calls == 7


def test_interleaving_order_is_shuffled_per_pass(clock):
    order = []

    class Tagged:
        def __init__(self, tag):
            self.tag = tag

        def infer(self):
            order.append(self.tag)
            clock.now += 0.001

    runners = [Tagged(i) for i in range(4)]
    measure_interleaved(runners, _estimator(passes=6, runs=3, warmup_runs=1, max_spread=10.0, seed=3))
    timed = order[4:]  # after one warm-up call each
    assert len(timed) == 6 * 4 * 3
    pass_orders = [tuple(timed[p * 12 + k * 3] for k in range(4)) for p in range(6)]
    for o in pass_orders:
        assert sorted(o) == [0, 1, 2, 3]  # every runner timed once per pass, its runs consecutive
    assert len(set(pass_orders)) > 1


# -- with real ONNX Runtime runners --------------------------------------------------------------------------


class CountingOrtRunner(OrtRunner):
    def infer_impl(self):
        self.calls = getattr(self, "calls", 0) + 1
        super().infer_impl()


def test_interleaved_with_real_ort_runners():
    cells = [
        synth.build_cell({"kind": "gemm", "rows": 1}, 8, 8),
        synth.build_cell({"kind": "conv", "kernel": [3, 3], "pads": [1, 1, 1, 1], "hw": [8, 8]}, 4, 4),
    ]
    runners = [CountingOrtRunner(c.SerializeToString(), threads=1) for c in cells]
    for r in runners:
        r.activate()
    try:
        est = Estimator(
            passes=3, runs=5, warmup_runs=4, warmup_s=30.0, pass_s=1e9, max_spread=1e9, extra_passes=2
        )
        stats = measure_interleaved(runners, est)
    finally:
        for r in runners:
            r.deactivate()
    assert len(stats) == 2
    for r, s in zip(runners, stats, strict=True):
        assert s["n"] == 3 * 5  # pass_s large: `runs` per pass, no extra pass with this max_spread
        assert s["passes"] == 3
        assert r.calls == 4 + s["n"]  # warm-up calls are not counted
        assert 0 < s["min_ms"] <= s["estimate_ms"] <= s["p90_ms"]
        assert s["min_ms"] <= s["median_ms"] <= s["p90_ms"]
        assert s["mad_ms"] >= 0
