"""Seeded width variants of a model: random channel removal per dependency group.

Fidelity needs held-out models whose widths the table has not seen: non-uniform per layer, and half of them
on arbitrary (not step-aligned) widths, because aligned widths cannot tell a table from a MACs estimate.
"""

from __future__ import annotations

import copy
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
    """A deep copy of `module` with each group kept at a random fraction of its channels.

    `aligned` snaps every kept count to a multiple of `step`; otherwise counts are drawn off the step.
    """
    from .groups import dependency_groups, prune_group
    from .transformer import decoder_layout

    rng = random.Random(seed)
    clone = copy.deepcopy(module).eval()
    layout = decoder_layout(getattr(clone, "inner", clone))
    if layout is not None:
        return Variant(index, clone, _decoder_widths(layout, rng, aligned, step, keep_range), aligned)
    widths = {}
    for group in dependency_groups(clone, example_inputs):
        n = group.channels
        keep = max(1, round(n * rng.uniform(*keep_range)))
        if aligned:
            keep = max(step, (keep // step) * step) if n >= step else n
        elif n > step and keep % step == 0:
            keep = keep - rng.randint(1, step - 1)
        keep = min(keep, n)
        remove = rng.sample(range(n), n - keep)
        prune_group(group, remove)
        widths[group.root] = keep
    return Variant(index, clone, widths, aligned)


def _decoder_widths(layout, rng: random.Random, aligned: bool, step: int, keep_range: tuple) -> dict:
    """Slim each decoder layer to random kv-head and MLP-channel counts; returns the widths per layer."""
    from .transformer import layer_widths, slim_attention, slim_mlp

    widths = {}
    for i, (kv_heads, channels) in layer_widths(layout).items():
        keep_heads = max(1, round(kv_heads * rng.uniform(*keep_range)))
        layer = layout.layers[i]
        slim_attention(layer.self_attn, sorted(rng.sample(range(kv_heads), keep_heads)), layout)
        keep = max(1, round(channels * rng.uniform(*keep_range)))
        if aligned:
            keep = max(step, (keep // step) * step) if channels >= step else channels
        elif channels > step and keep % step == 0:
            keep -= rng.randint(1, step - 1)
        slim_mlp(layer.mlp, sorted(rng.sample(range(channels), min(keep, channels))))
        widths[f"layers.{i}"] = {"kv_heads": keep_heads, "mlp": min(keep, channels)}
    return widths


def make_variants(module, example_inputs: tuple, count: int, seed: int, step: int,
                  keep_range: tuple = (0.3, 1.0)) -> list:
    """`count` variants, alternating aligned and arbitrary widths, reproducible from `seed`."""
    return [make_variant(module, example_inputs, seed * 1000 + i, aligned=(i % 2 == 0), step=step,
                         keep_range=keep_range, index=i) for i in range(count)]
