"""A latency budget (`4.2ms` or `2x`) and the one rule that says whether a measured latency meets it.

Every command judges a measured latency against a budget the same way: measured ≤ budget × (1 + BUDGET_TOLERANCE).
The tolerance is the estimator's own repeatability on a shared machine (interleaved passes of the same model
differ by up to ~3 % here), so a model that meets its budget is not failed by noise, and every output that
says "meets" or "passes" states the tolerance it used.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import BadInputError

BUDGET_TOLERANCE = 0.03


def meets_budget(measured_ms: float, budget_ms: float) -> bool:
    """The project's one definition of a measured latency meeting a budget."""
    return measured_ms <= budget_ms * (1 + BUDGET_TOLERANCE)


def tolerance_text() -> str:
    return f"within +{BUDGET_TOLERANCE:.0%} measurement tolerance"


@dataclass(frozen=True)
class Budget:
    kind: str  # "ms" or "speedup"
    value: float

    def __str__(self) -> str:
        return f"{self.value:g}ms" if self.kind == "ms" else f"{self.value:g}x"

    def ms(self, dense_ms: float) -> float:
        return self.value if self.kind == "ms" else dense_ms / self.value


def parse_budget(text: str | float | None) -> Budget | None:
    """`4.2ms` (milliseconds in the table's estimator) or `2x` (speedup over the dense model)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|x|×)\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise BadInputError(f"cannot read budget '{text}'", "write it like 4.2ms or 2x")
    kind = "ms" if m.group(2) == "ms" else "speedup"
    if kind == "speedup" and float(m.group(1)) < 1:
        raise BadInputError(f"a speedup budget below 1x ({text}) asks for a slower model", "write e.g. 1.5x")
    return Budget(kind, float(m.group(1)))


REPORTED_CONFIDENCE = 0.9  # the interval every measured latency or speedup is reported with unless asked otherwise


def _half_width(logs: list, confidence: float) -> float:
    """Student-t half width of the mean of `logs` (0 below two readings: no spread to read)."""
    from scipy.stats import t

    n = len(logs)
    if n < 2:
        return 0.0
    mean = sum(logs) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in logs) / (n - 1))
    return float(t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)


def latency_interval(point_ms: float, rounds: list, confidence: float = REPORTED_CONFIDENCE) -> list:
    """[low, high] around `point_ms` from the spread of the rounds' log latency (one reading per round)."""
    h = _half_width([math.log(r) for r in rounds], confidence)
    return [point_ms * math.exp(-h), point_ms * math.exp(h)]


def interval(dense_ms: float, pruned_ms: float, dense_rounds: list, pruned_rounds: list,
             confidence: float) -> dict:
    """The measured speedup and pruned latency with `confidence` intervals from paired interleaved rounds.

    Round r timed the dense and the pruned model side by side, so dense_r / pruned_r is one reading of the
    speedup with the machine's state cancelled as far as it can be; the rounds' spread of log speedup (and of
    log pruned latency, for a budget in ms) gives a Student-t interval around the point estimate
    (dense_ms / pruned_ms). One round gives no interval: it is [point, point] and says so (`rounds` 1).
    """
    n = min(len(dense_rounds), len(pruned_rounds))
    hs = _half_width([math.log(d / p) for d, p in zip(dense_rounds, pruned_rounds)], confidence)
    speedup = dense_ms / pruned_ms
    return {"confidence": confidence, "rounds": n,
            "speedup": [speedup * math.exp(-hs), speedup * math.exp(hs)],
            "pruned_ms": latency_interval(pruned_ms, pruned_rounds[:n], confidence)}


def certified_ms(measured: dict, budget: Budget) -> float:
    """The pruned latency a budget is judged on with --confidence: the interval's pessimistic end.

    A speedup budget is judged on the speedup's low end (as the latency it implies against the dense model
    timed beside it); a budget in ms on the pruned latency's high end.
    """
    iv = measured["interval"]
    if budget.kind == "speedup":
        return measured["dense_ms"] / iv["speedup"][0]
    return iv["pruned_ms"][1]
