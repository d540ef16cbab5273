"""A latency budget (`4.2ms` or `2x`) and the one rule that says whether a measured latency meets it.

Every command judges a measured latency against a budget the same way: measured ≤ budget × (1 + BUDGET_TOLERANCE).
The tolerance is the estimator's own repeatability on a shared machine (interleaved passes of the same model
differ by up to ~3 % here), so a model that meets its budget is not failed by noise, and every output that
says "meets" or "passes" states the tolerance it used.
"""

from __future__ import annotations

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
