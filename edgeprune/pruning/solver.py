"""Choose how many units every group keeps: latency-budget knapsack, and the baselines' ratio modes.

Latency mode maximises the kept value Σ_g V_g(w_g) subject to predicted latency ≤ budget. V_g is a function of
the units group g keeps: the measured calibration loss of cutting g alone, negated and made concave
(sensitivity.py), or without calibration data the sum of the w_g best normalised criterion scores. The table's
calibrated prediction is a constant plus a sum of per-block terms, and each group changes only the blocks whose
widths it sets, so a group's option has a marginal cost: the change of its blocks' terms with every other group
held where it is. That is a multiple-choice knapsack (one width per group), solved exactly by dynamic
programming over discretised cost. Because a block's cost depends on both its c_in and c_out group (bilinear),
the solve is re-linearised in several steps, each from the previous solution toward a tighter intermediate
target; options may cost less than nothing (leaving an off-step width, or a staircase tread), which the DP
allows. Widths are the multiples of the table's channel step (every head count for attention), so results land
on the measured step edges rather than on a fixed round-to. A final repair pass removes the least value per
millisecond until the exact prediction fits, then grows back whatever still fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeprune.errors import BadInputError
from edgeprune.latency.table import block_term


class UnreachableBudgetError(BadInputError):
    """The budget is below the fastest model the constraints allow."""


@dataclass
class Solution:
    units: list  # kept units per group
    predicted_ms: float
    macs: int
    kept_importance: float
    steps: list  # per re-linearisation step: target, predicted


class CostModel:
    """Calibrated latency of the model at any unit counts, as constant + Σ per-block terms (table + widths).

    On a two-state table (latency/table.py) each block has a warm and a cold term, and the candidate's weight
    footprint sets the share of each (`LatencyTable.cold_share`), so one group's change can move every block's
    term: `delta` then prices it from the sums over all blocks, still touching only the blocks the group sets.
    """

    def __init__(self, table, widths):
        self.table, self.widths = table, widths
        cal = table.calibration or {}
        self.kind = cal.get("kind", "ratio" if cal else "none")
        self.cal = cal
        self.constant = cal.get("value", 0.0) if self.kind == "additive" else 0.0
        self.two_state = table.two_state
        self._parts = {}  # (block index, c_in, c_out) -> (warm term, cold term, weight bytes)
        self._sums = None  # (units, Σ warm terms, Σ cold terms, Σ weight bytes) of the last `terms` call

    def term(self, block, state: str = "warm") -> float:
        ms, _ = self.table.block_ms(block, state)
        return block_term(self.cal, ms, block, self.table.step)

    def parts(self, i: int, units: list) -> tuple:
        """(warm term, cold term, weight bytes) of block i at `units` (two-state tables)."""
        block = self.widths.block(i, units)
        key = (i, block.c_in, block.c_out)
        if key not in self._parts:
            self._parts[key] = (self.term(block), self.term(block, "cold"), self.table.weight_bytes([block]))
        return self._parts[key]

    def terms(self, units: list) -> np.ndarray:
        if not self.two_state:
            return np.array([self.term(self.widths.block(i, units)) for i in range(len(self.widths.rules))])
        parts = np.array([self.parts(i, units) for i in range(len(self.widths.rules))]).reshape(-1, 3)
        warm, cold, weights = parts.sum(axis=0)
        self._sums = (list(units), warm, cold, weights)
        share = self.table.cold_share(weights)
        return (1 - share) * parts[:, 0] + share * parts[:, 1]

    def predict(self, units: list) -> float:
        return self.constant + float(self.terms(units).sum())

    def delta(self, units: list, terms: np.ndarray, group: int, width: int) -> float:
        """Change of the prediction when `group` alone moves to `width` units."""
        trial = list(units)
        trial[group] = width
        affected = self.widths.affected(group)
        if not self.two_state:
            return sum(self.term(self.widths.block(i, trial)) - terms[i] for i in affected)
        if self._sums is None or self._sums[0] != list(units):
            self.terms(units)
        _, warm, cold, weights = self._sums
        for i in affected:
            new, old = self.parts(i, trial), self.parts(i, units)
            warm, cold, weights = warm + new[0] - old[0], cold + new[1] - old[1], weights + new[2] - old[2]
        share = self.table.cold_share(weights)
        return (1 - share) * warm + share * cold - float(terms.sum())


def candidate_units(group, step: int, min_keep: float) -> list:
    """Unit counts a group may keep: channel counts on the step (whole heads), at least `min_keep` of it."""
    n = group.units
    floor = max(1, math.ceil(min_keep * n))
    if group.kind == "heads" or group.unit_size % step == 0:
        every = 1
    else:
        every = step // math.gcd(step, group.unit_size)
    options = {u for u in range(every, n + 1, every) if u >= floor}
    options.add(n)
    if not any(u >= floor for u in options - {n}) and floor < n:
        options.add(floor)
    return sorted(options)


def kept_value(scores, n_keep: int) -> float:
    """Σ of the `n_keep` best scores."""
    if scores is None:
        return 0.0
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    return float(s[:n_keep].sum())


def _mckp(values: list, costs: list, capacity: float, bins: int = 2000) -> list:
    """Multiple-choice knapsack: one option per group, Σ cost ≤ capacity, max Σ value. Returns option indices.

    Costs may be negative: each group's costs are shifted by its minimum (that amount leaves the capacity).
    """
    shift = [min(c) for c in costs]
    cap = capacity - sum(shift)
    if cap < 0:
        return [int(np.argmin(c)) for c in costs]
    res = cap / bins if cap > 0 else 1.0
    size = bins + 1 if cap > 0 else 1  # no capacity left: only options at their group's minimum cost fit
    neg = -1e300
    dp = np.full(size, neg)
    dp[0] = 0.0
    choice = []
    for vals, cs, s in zip(values, costs, shift):
        new = np.full(size, neg)
        arg = np.zeros(size, dtype=np.int32)
        for j, (v, c) in enumerate(zip(vals, cs)):
            k = int(math.ceil((c - s) / res - 1e-9))
            if k >= size:
                continue
            cand = np.full(size, neg)
            cand[k:] = dp[: size - k] + v
            better = cand > new
            new[better] = cand[better]
            arg[better] = j
        dp = new
        choice.append(arg)
    best = int(np.argmax(dp))
    picks = []
    for g in range(len(values) - 1, -1, -1):
        j = int(choice[g][best])
        picks.append(j)
        k = int(math.ceil((costs[g][j] - shift[g]) / res - 1e-9))
        best -= k
    return picks[::-1]


def as_values(values: list) -> list:
    """Value functions of kept units per group: callables pass through, score arrays give Σ of the best scores."""
    return [v if v is None or callable(v) else (lambda u, s=v: kept_value(s, u)) for v in values]


def solve_latency(cost: CostModel, groups: list, values: list, budget_ms: float, step: int,
                  min_keep: float = 0.3, relinearize: int = 4) -> Solution:
    """Most valuable widths within `budget_ms` (predicted); raises UnreachableBudgetError when impossible.

    `values`: per group a function of kept units (or an array of normalised scores; None keeps the group whole).
    """
    values = as_values(values)
    units = [g.units for g in groups]
    prunable = [i for i, g in enumerate(groups) if values[i] is not None and g.units > 1]
    options = {i: candidate_units(groups[i], step, min_keep) for i in prunable}
    dense_ms = cost.predict(units)
    steps = []
    if dense_ms <= budget_ms:
        return Solution(units, dense_ms, cost.widths.macs(units), _value(values, units), steps)
    for s in range(1, relinearize + 1):
        target = dense_ms * (budget_ms / dense_ms) ** (s / relinearize)
        terms = cost.terms(units)
        now = cost.constant + float(terms.sum())
        vals, costs = [], []
        for i in prunable:
            vals.append([values[i](u) for u in options[i]])
            costs.append([cost.delta(units, terms, i, u) for u in options[i]])
        picks = _mckp(vals, costs, target - now)
        for i, j in zip(prunable, picks):
            units[i] = options[i][j]
        steps.append({"target_ms": target, "predicted_ms": cost.predict(units)})
    units = repair(cost, units, prunable, options, values, budget_ms)
    final = cost.predict(units)
    return Solution(units, final, cost.widths.macs(units), _value(values, units), steps)


def _value(values: list, units: list) -> float:
    return sum(v(u) for v, u in zip(values, units) if v is not None)


def repair(cost: CostModel, units: list, prunable: list, options: dict, values: list, budget_ms: float) -> list:
    """Shrink by the best importance-per-ms move until the exact prediction fits; then grow back what fits."""
    units = list(units)
    pred = cost.predict(units)
    while pred > budget_ms:
        terms = cost.terms(units)
        best = None
        for i in prunable:
            lower = [u for u in options[i] if u < units[i]]
            if not lower:
                continue
            u = lower[-1]
            saved = -cost.delta(units, terms, i, u)
            lost = values[i](units[i]) - values[i](u)
            if saved <= 0:
                continue
            rate = lost / saved
            if best is None or rate < best[0]:
                best = (rate, i, u)
        if best is None:
            raise UnreachableBudgetError(
                f"budget {budget_ms:.3g} ms is below the fastest model these constraints reach ({pred:.3g} ms "
                "predicted)", f"ask for at least {pred:.3g} ms, or lower --min-keep")
        units[best[1]] = best[2]
        pred = cost.predict(units)
    while True:
        terms = cost.terms(units)
        best = None
        for i in prunable:
            higher = [u for u in options[i] if u > units[i]]
            if not higher:
                continue
            u = higher[0]
            added = cost.delta(units, terms, i, u)
            if pred + added > budget_ms:
                continue
            gain = values[i](u) - values[i](units[i])
            rate = gain / max(added, 1e-9)
            if best is None or rate > best[0]:
                best = (rate, i, u)
        if best is None:
            return units
        units[best[1]] = best[2]
        pred = cost.predict(units)


def fastest_units(groups: list, values: list, step: int, min_keep: float) -> list:
    """Every prunable group (value or scores not None) at its smallest allowed width."""
    return [candidate_units(g, step, min_keep)[0] if values[i] is not None and g.units > 1 else g.units
            for i, g in enumerate(groups)]


def fastest(cost: CostModel, groups: list, values: list, step: int, min_keep: float) -> float:
    """A lower bound on reachable latency: every prunable group at its smallest allowed width."""
    return cost.predict(fastest_units(groups, values, step, min_keep))


# -- the baselines' modes --------------------------------------------------------------------------------
def round_units(n: int, keep: float, round_to: int | None) -> int:
    """Torch-Pruning's rounding: kept channels to a multiple of round_to (never zero, never above n)."""
    k = max(1, int(round(keep)))
    if round_to and n > round_to:
        k = max(round_to, int(round(k / round_to)) * round_to)
    return min(n, k)


def _rounded(group, keep: float, round_to: int | None) -> int:
    """Kept units after round_to (channels only; heads are whole units already)."""
    return round_units(group.units, keep, round_to if group.kind != "heads" else None)


def uniform_units(groups: list, scores: list, ratio: float, round_to: int | None = None) -> list:
    """Every prunable group loses the same fraction `ratio` of its units."""
    return [_rounded(g, g.units * (1 - ratio), round_to)
            if scores[i] is not None and g.units > 1 else g.units for i, g in enumerate(groups)]


def global_units(groups: list, scores: list, ratio: float, round_to: int | None = None,
                 max_group_ratio: float = 0.9) -> list:
    """Remove the globally lowest-scoring `ratio` of all prunable units (scores already normalised per group).

    A group never loses more than `max_group_ratio` of its units; a removal its cap refuses goes to the next
    lowest unit elsewhere, so the ratio asked for is the ratio removed whenever the caps allow it.
    """
    pool = [(float(v), i) for i, s in enumerate(scores) if s is not None and groups[i].units > 1 for v in s]
    drop = int(round(ratio * len(pool)))
    pool.sort()
    removed = [0] * len(groups)
    done = 0
    for _, i in pool:
        if done >= drop:
            break
        if removed[i] < int(max_group_ratio * groups[i].units):
            removed[i] += 1
            done += 1
    return [_rounded(g, g.units - removed[i], round_to)
            if scores[i] is not None and g.units > 1 else g.units for i, g in enumerate(groups)]


def ratio_for(measure, target: float, lo: float = 0.0, hi: float = 0.95, iters: int = 30,
              what: str = "the measure") -> float:
    """The pruning ratio at which `measure(ratio)` (decreasing in ratio) first drops to `target` (bisection).

    Raises UnreachableBudgetError when even ratio `hi` stays above the target.
    """
    if measure(hi) > target:
        raise UnreachableBudgetError(f"{what} cannot reach {target:.4g}: removing {hi:.0%} of every group still "
                                     f"gives {measure(hi):.4g}", "ask for less, or use --mode latency")
    for _ in range(iters):
        mid = (lo + hi) / 2
        if measure(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi
