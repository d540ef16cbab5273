"""Seeded width variants of a model: random channel removal per dependency group.

Fidelity needs held-out models whose widths the table has not seen: non-uniform per layer, and half of them
on arbitrary (not step-aligned) widths, because aligned widths cannot tell a table from a MACs estimate.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass


@dataclass
class Variant:
    """A slimmed copy of the model with the widths it was given."""

    index: int
    module: object
    widths: dict  # root layer -> kept channels
    aligned: bool


def make_variant(module, example_inputs: tuple, seed: int, aligned: bool, step: int,
                 keep_range: tuple = (0.3, 1.0), index: int = 0) -> Variant:
    """A deep copy of `module` with each unit group kept at a random fraction of its units.

    `aligned` snaps every kept channel count to a multiple of `step`; otherwise counts are drawn off the step.
    Attention heads are whole units (a kv head with its query heads).
    """
    from .space import apply_keep, build_space

    rng = random.Random(seed)
    clone = copy.deepcopy(module).eval()
    groups = build_space(clone, example_inputs)
    keep = {}
    for i, group in enumerate(groups):
        n = group.units
        k = max(1, round(n * rng.uniform(*keep_range)))
        if group.kind != "heads":
            # units on the step: a unit of a grouped convolution's group is unit_size channels (one per conv group)
            every = step // math.gcd(step, group.unit_size)
            if aligned:
                k = max(every, (k // every) * every) if n >= every else n
            elif every > 1 and n > every and k % every == 0:
                # off the step, but never below the range's floor: a 16-channel depthwise conv drawn at 8 and
                # moved to 1 would be an ordinary conv (groups=1), a block the table was not measured for
                k = max(k - rng.randint(1, every - 1), math.ceil(n * keep_range[0]), 2)
        k = min(k, n)
        keep[i] = sorted(rng.sample(range(n), k))
    widths = apply_keep(groups, keep, clone)
    return Variant(index, clone, widths, aligned)


def make_variants(module, example_inputs: tuple, count: int, seed: int, step: int,
                  keep_range: tuple = (0.3, 1.0)) -> list:
    """`count` variants, alternating aligned and arbitrary widths, reproducible from `seed`."""
    return [make_variant(module, example_inputs, seed * 1000 + i, aligned=(i % 2 == 0), step=step,
                         keep_range=keep_range, index=i) for i in range(count)]
