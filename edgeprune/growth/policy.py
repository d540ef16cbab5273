"""When to grow: FRAGrow's fitting-risk-aware interval and the baselines it is compared with.

FRAGrow (arXiv 2401.03104) reads the overfitting risk level ORL = train accuracy - validation accuracy, in
percentage points, every epoch, and waits I = I_max / (1 + e^(alpha - ORL)) epochs between growths, with
I_max = (total epochs - minimum final epochs) / blocks to add. A model that underfits (ORL near 0) grows
almost every epoch, so it reaches full capacity early; one that overfits (ORL >> alpha) waits nearly I_max,
so its late blocks train for fewer epochs, which regularises. The baselines run through the same trainer:
periodic (always I_max), convergent (grow when validation accuracy stops improving), vanilla (no growth:
the target from scratch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgeprune.errors import BadInputError

ALPHA = 4.0


def max_interval(total_epochs: int, min_final_epochs: int, blocks_to_add: int) -> float:
    """I_max = (E_T - E_F^min) / n: growing every I_max epochs ends exactly when the final phase must start."""
    if blocks_to_add <= 0:
        raise ValueError("max_interval needs at least one block to add")
    return (total_epochs - min_final_epochs) / blocks_to_add


def fragrow_interval(orl: float, i_max: float, alpha: float = ALPHA) -> float:
    """I = I_max / (1 + e^(alpha - ORL)), ORL in percentage points."""
    exponent = alpha - orl
    if exponent > 700:  # e^exponent overflows a float; the interval is 0 to machine precision
        return 0.0
    return i_max / (1.0 + math.exp(exponent))


@dataclass
class EpochState:
    """What a policy sees at the end of an epoch."""

    epoch: int  # epochs completed (1-based)
    since_growth: int  # epochs since the last growth (or since the start)
    orl: float  # percentage points
    val_accuracy: float  # 0..1, on the hold-out
    stalled_epochs: int  # epochs since the hold-out accuracy last improved, counted since the last growth


class Policy:
    """A growth timing policy: `interval` (epochs to wait, for the record) and `should_grow`."""

    name = ""
    grows = True

    def __init__(self, i_max: float):
        self.i_max = i_max

    def interval(self, state: EpochState) -> float | None:
        return None

    def should_grow(self, state: EpochState) -> bool:
        raise NotImplementedError


class FRAGrow(Policy):
    name = "fragrow"

    def __init__(self, i_max: float, alpha: float = ALPHA):
        super().__init__(i_max)
        self.alpha = alpha

    def interval(self, state: EpochState) -> float:
        return fragrow_interval(state.orl, self.i_max, self.alpha)

    def should_grow(self, state: EpochState) -> bool:
        return state.since_growth >= self.interval(state)


class Periodic(Policy):
    name = "periodic"

    def interval(self, state: EpochState) -> float:
        return self.i_max

    def should_grow(self, state: EpochState) -> bool:
        # a small tolerance: I_max = 20 / 3 must fire after 7 epochs, 6.999... is not "not yet"
        return state.since_growth >= self.i_max - 1e-9


class Convergent(Policy):
    """Grow when the hold-out accuracy has not improved for `patience` epochs since the last growth."""

    name = "convergent"

    def __init__(self, i_max: float, patience: int = 2):
        super().__init__(i_max)
        self.patience = patience

    def should_grow(self, state: EpochState) -> bool:
        return state.stalled_epochs >= self.patience


class Vanilla(Policy):
    """No growth: the target model trained from scratch (the trainer starts from the full depth)."""

    name = "vanilla"
    grows = False

    def should_grow(self, state: EpochState) -> bool:
        return False


POLICIES = {p.name: p for p in (FRAGrow, Periodic, Convergent, Vanilla)}


def make_policy(name: str, i_max: float, alpha: float = ALPHA, patience: int = 2) -> Policy:
    """The named policy; one clear line for an unknown name."""
    if name not in POLICIES:
        import difflib

        close = difflib.get_close_matches(name, sorted(POLICIES), n=1)
        raise BadInputError(f"unknown growth policy '{name}'", f"did you mean {close[0]}?" if close else
                            f"use one of {', '.join(POLICIES)}")
    if name == "fragrow":
        return FRAGrow(i_max, alpha)
    if name == "convergent":
        return Convergent(i_max, patience)
    return POLICIES[name](i_max)
