"""Search over whole candidates: the knapsack's answer is a start, not the end.

The knapsack adds per-group losses as if cuts did not interact; they do (two narrow neighbours cost more than the
sum of each alone). The table prices any candidate's latency in microseconds, so many whole candidates can be
tried against the budget for free, and each one is scored by what matters: its calibration loss after
BatchNorm re-estimation (CandidateScorer, one or two forward passes). The pool starts from the knapsack
solution, the uniform cut and the global-ranking cut at the same predicted latency; an evolutionary loop
(tournament, mutation of one or two groups, crossover, repair to the budget with the knapsack's values) spends
the rest of the evaluation budget. The best candidate that fits the budget wins, so the result's calibration
loss is never worse than the uniform candidate's at the same predicted latency.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable

from .solver import CostModel, UnreachableBudgetError, repair


@dataclass
class SearchResult:
    units: list
    loss: float
    predicted_ms: float
    winner: str  # which seed (or "search") the winning candidate came from
    seeds: dict  # seed name -> {"loss", "predicted_ms"} (None for a seed that could not fit)
    evaluations: int
    wall_s: float
    history: list = field(default_factory=list)  # best loss after each evaluation


def search(cost: CostModel, groups: list, options: dict, values: list, budget_ms: float,
           scorer: Callable[[list], float], seeds: dict, evaluations: int, seed: int = 0,
           on_progress: Callable[[int, int], None] | None = None) -> SearchResult:
    """Best candidate (lowest `scorer` loss) with predicted latency ≤ `budget_ms`.

    `options`: group index -> allowed widths (the knapsack's); `values`: the knapsack's value functions, used
    to repair a mutated candidate back under the budget; `seeds`: name -> unit counts, evaluated first (a seed
    over the budget is repaired, one that cannot be is reported as None); `evaluations` bounds the scorer calls.
    """
    started = time.time()
    rng = random.Random(seed)
    prunable = sorted(options)
    pool: dict = {}  # units tuple -> (loss, origin)
    seed_report = {}
    history = []

    def evaluate(units: list, origin: str) -> float | None:
        key = tuple(int(u) for u in units)
        if key in pool:
            return pool[key][0]
        if len(pool) >= max(evaluations, len(seeds)):
            return None
        loss = scorer(list(key))
        pool[key] = (loss, origin)
        history.append(min(v[0] for v in pool.values()))
        if on_progress is not None:
            on_progress(len(pool), max(evaluations, len(seeds)))
        return loss

    for name, units in seeds.items():
        fitted = _fit(cost, list(units), prunable, options, values, budget_ms)
        if fitted is None:
            seed_report[name] = None
            continue
        loss = evaluate(fitted, name)
        seed_report[name] = {"loss": loss, "predicted_ms": cost.predict(fitted), "units": fitted}
    stale = 0
    while len(pool) < evaluations and pool and stale < 50:
        ranked = sorted(pool.items(), key=lambda item: item[1][0])
        parent = list(_tournament(ranked, rng))
        if rng.random() < 0.3 and len(ranked) > 1:
            other = list(_tournament(ranked, rng))
            child = [parent[i] if rng.random() < 0.5 else other[i] for i in range(len(parent))]
        else:
            child = _mutate(parent, prunable, options, rng)
        child = _fit(cost, child, prunable, options, values, budget_ms)
        if child is None or tuple(child) in pool:
            stale += 1
            continue
        stale = 0
        evaluate(child, "search")
    best_key, (best_loss, origin) = min(pool.items(), key=lambda item: item[1][0])
    return SearchResult(list(best_key), best_loss, cost.predict(list(best_key)), origin, seed_report, len(pool),
                        time.time() - started, history)


def _tournament(ranked: list, rng: random.Random, size: int = 3) -> tuple:
    """The best of `size` candidates drawn from the better half of the pool."""
    half = ranked[: max(2, len(ranked) // 2)]
    return min(rng.sample(half, min(size, len(half))), key=lambda item: item[1][0])[0]


def _mutate(units: list, prunable: list, options: dict, rng: random.Random) -> list:
    """Move one or two groups one or two allowed widths up or down."""
    child = list(units)
    for i in rng.sample(prunable, min(len(prunable), rng.choice((1, 2)))):
        widths = sorted(set(options[i]) | {child[i]})
        at = widths.index(child[i])
        child[i] = widths[max(0, min(len(widths) - 1, at + rng.choice((-2, -1, 1, 2))))]
    return child


def _fit(cost: CostModel, units: list, prunable: list, options: dict, values: list, budget_ms: float) -> list | None:
    """The candidate as it is when it fits the budget; else shrunk by the least value per ms (None if it cannot)."""
    if cost.predict(units) <= budget_ms:
        return units
    extended = {i: sorted(set(options[i]) | {units[i]}) for i in prunable}
    try:
        return repair(cost, units, prunable, extended, values, budget_ms)
    except UnreachableBudgetError:
        return None
