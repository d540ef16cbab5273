"""The measurement estimator: warm-up discarded, interleaved passes, the fastest run of each pass.

On a noisy shared CPU the noise comes in bursts (fast and slow states ~30 % apart, lasting seconds). The
fastest run within a pass sees the fast state when one occurs during it; the median over >= 3 interleaved passes
of those per-pass minima was the most stable statistic measured here, so it is the estimate (`estimate_ms`).
min / median / p90 / MAD over all timed runs are reported beside it.
"""

import random
import time

ESTIMATOR = "median_of_pass_min"


class Estimator(object):
    """How to time: passes, runs per pass, warm-up, and when a result is too noisy to keep."""

    def __init__(self, passes=3, runs=20, warmup_runs=50, warmup_s=2.0, pass_s=0.05, max_spread=0.05,
                 extra_passes=3, seed=0):
        self.passes = int(passes)
        self.runs = int(runs)
        self.warmup_runs = int(warmup_runs)
        self.warmup_s = float(warmup_s)
        self.pass_s = float(pass_s)
        self.max_spread = float(max_spread)
        self.extra_passes = int(extra_passes)
        self.seed = seed

    @classmethod
    def from_dict(cls, data):
        known = ("passes", "runs", "warmup_runs", "warmup_s", "pass_s", "max_spread", "extra_passes", "seed")
        return cls(**{k: data[k] for k in known if k in data})

    def to_dict(self):
        return {"name": ESTIMATOR, "passes": self.passes, "runs": self.runs, "warmup_runs": self.warmup_runs,
                "warmup_s": self.warmup_s, "pass_s": self.pass_s, "max_spread": self.max_spread,
                "extra_passes": self.extra_passes, "seed": self.seed}


def _percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(pass_runs):
    """Statistics in ms from a list of passes, each a list of run times in seconds."""
    runs = sorted(t * 1e3 for p in pass_runs for t in p)
    pass_min = sorted(min(p) * 1e3 for p in pass_runs if p)
    median = _percentile(runs, 0.5)
    mad = _percentile(sorted(abs(r - median) for r in runs), 0.5)
    estimate = _percentile(pass_min, 0.5)
    spread = (pass_min[-1] - pass_min[0]) / estimate if estimate > 0 else 0.0
    return {"estimate_ms": estimate, "min_ms": runs[0], "median_ms": median, "p90_ms": _percentile(runs, 0.9),
            "mad_ms": mad, "n": len(runs), "passes": len(pass_min), "pass_spread": spread}


def warm_up(runner, estimator):
    """Run until `warmup_runs` runs or `warmup_s` seconds have passed, whichever comes first."""
    deadline = time.perf_counter() + estimator.warmup_s
    first = time.perf_counter()
    runner.infer()
    one = time.perf_counter() - first
    for _ in range(estimator.warmup_runs - 1):
        if time.perf_counter() > deadline:
            break
        runner.infer()
    return one


def _one_run(runner):
    start = time.perf_counter()
    runner.infer()
    return time.perf_counter() - start


def time_pass(runner, runs):
    """Time `runs` consecutive calls; returns the list of durations in seconds."""
    clock = time.perf_counter
    out = []
    for _ in range(runs):
        start = clock()
        runner.infer()
        out.append(clock() - start)
    return out


def runs_for(one_run_s, estimator):
    """Runs per pass: enough to fill `pass_s`, at least 3 and at most `runs`."""
    if one_run_s <= 0:
        return estimator.runs
    return max(3, min(estimator.runs, int(estimator.pass_s / one_run_s) + 1))


def measure_interleaved(runners, estimator, on_pass=None, warm=True, keep_passes=False):
    """Time several active runners in interleaved passes (shuffled order each pass).

    Interleaving spreads a burst of noise over every configuration instead of one, so ratios between
    configurations measured in the same call stay honest. Results too noisy (spread of pass minima above
    `max_spread`) get extra passes, still interleaved with each other.
    Returns a list of summaries in the order of `runners`. `warm=False` skips the warm-up (runners already
    warmed by an earlier call) and sizes passes from one untimed run instead. `keep_passes` adds each pass's
    fastest run in pass order (`pass_min_ms`): pass p of every runner was timed in the same round, so the
    rounds pair up for an interval on their ratio (edgeprune/budget.py).
    """
    rng = random.Random(estimator.seed)
    per_run = [warm_up(r, estimator) if warm else _one_run(r) for r in runners]
    counts = [runs_for(t, estimator) for t in per_run]
    passes = [[] for _ in runners]
    order = list(range(len(runners)))
    for p in range(estimator.passes):
        rng.shuffle(order)
        for i in order:
            passes[i].append(time_pass(runners[i], counts[i]))
        if on_pass is not None:
            on_pass(p + 1)
    for _ in range(estimator.extra_passes):
        noisy = [i for i in order if summarize(passes[i])["pass_spread"] > estimator.max_spread]
        if not noisy:
            break
        rng.shuffle(noisy)
        for i in noisy:
            passes[i].append(time_pass(runners[i], counts[i]))
    out = [summarize(p) for p in passes]
    if keep_passes:
        for summary, runs in zip(out, passes):
            summary["pass_min_ms"] = [min(p) * 1e3 for p in runs if p]
    return out
