"""The pruning space of a model: its unit groups, each removable one unit at a time.

A unit is what must go as a whole: one channel of a Torch-Pruning dependency group (a conv's output channel
with every coupled layer; one channel from each of the G groups when the group crosses a grouped convolution or
GroupNorm, so G keeps dividing the width: groups.py), one key/value head of a decoder layer together with the
query heads that share it (GQA groups stay consistent), or one MLP channel (gate/up rows and the down column).
Every consumer — criteria, the width model, the solver, slimming — sees the same list in the same order, so a
group is addressed by its index in any copy of the model. Groups that cannot be cut safely are left out, and
said so (`Space.notes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from edgeprune.errors import BadInputError


@dataclass
class UnitGroup:
    """One prunable group: `units` removable units of `unit_size` channels each."""

    name: str
    kind: str  # "channels" (dependency group), "heads" (kv heads of one attention layer), "mlp" (MLP channels)
    units: int
    unit_size: int
    remove: Callable[[list], None]  # physically remove these unit indices (ascending) from the module
    handle: object = None  # torch_pruning Group for "channels", the layer module for "heads"/"mlp"
    layout: object = None  # TransformerLayout for transformer groups
    graph: object = None  # torch_pruning DependencyGraph for "channels" (maps removed channels to every layer)

    def channels_of(self, units) -> list:
        """The root channels these units of a "channels" group are: unit j is channel j of each of `unit_size`
        equal blocks (one channel per block of a grouped convolution; groups.Group.channels_of)."""
        per = self.units
        return sorted(int(j) + k * per for j in units for k in range(self.unit_size))

    def unit_scores(self, raw):
        """Per-channel scores of a "channels" group folded into per-unit scores (mean over a unit's channels, as
        Torch-Pruning averages over conv groups); other scores are returned as they are."""
        import numpy as np

        if raw is None or self.kind != "channels" or self.unit_size == 1 or len(raw) != self.units * self.unit_size:
            return raw
        return np.asarray(raw).reshape(self.unit_size, self.units).mean(axis=0)


class Space(list):
    """The unit groups of a model (a list), with `notes`: one line per group kept whole and why."""

    def __init__(self, groups=(), notes=()):
        super().__init__(groups)
        self.notes = list(notes)


def build_space(module, example_inputs: tuple, timeout_s: float = 60.0, ignore: tuple = ()) -> list:
    """All unit groups of `module`, in a deterministic order (same order for every deep copy).

    `ignore`: layer names (or name prefixes, e.g. `features.3`) to keep whole: every group that removes a
    channel, head or MLP unit from one of them is left out (`--ignore LAYER`; for a concatenation, ignore the
    layers feeding it).
    """
    from .transformer import transformer_layout

    inner = getattr(module, "inner", module)
    layout = transformer_layout(inner)
    if layout is not None:
        groups = transformer_space(layout)
        if ignore:
            check_ignore(inner, ignore)
            names = {m: n for n, m in inner.named_modules()}
            groups = [g for g in groups if not (_ignored(g.name, ignore) or _ignored(names.get(g.handle, ""), ignore))]
        return groups
    from .groups import prune_group, trace_groups

    if ignore:
        check_ignore(module, ignore)
    names = {m: n for n, m in module.named_modules()}
    trace = trace_groups(module, example_inputs, timeout_s=timeout_s, skip=_feeds_attention)
    groups = Space(notes=trace.kept_whole)
    for group in trace.groups:
        if ignore and any(_ignored(names.get(dep.target.module, ""), ignore) for dep, _ in group.handle):
            continue
        groups.append(UnitGroup(group.root, "channels", group.units, group.unit,
                                (lambda g: lambda idx: prune_group(g, g.channels_of(idx)))(group), group.handle,
                                graph=group.graph))
    if not groups:
        why = f" ({'; '.join(trace.kept_whole[:2])})" if trace.kept_whole else ""
        raise BadInputError("the model has no prunable channel group (no Conv2d / Linear outside the output layer"
                            f"{' and the --ignore layers' if ignore else ''}){why}",
                            "edgeprune prunes convolutions, linear layers, attention heads and MLP channels")
    return groups


def _ignored(name: str, ignore: tuple) -> bool:
    """`name` is one of the ignored layers or inside one (wrappers may prefix names with `inner.`)."""
    name = name[len("inner."):] if name.startswith("inner.") else name
    return any(name == i or name.startswith(i + ".") for i in ignore)


def check_ignore(module, ignore: tuple) -> None:
    """Every --ignore name must name a layer of the model (a typo must not silently prune everything)."""
    import difflib

    names = [n[len("inner."):] if n.startswith("inner.") else n for n, _ in module.named_modules() if n]
    for item in ignore:
        if not any(n == item or n.startswith(item + ".") for n in names) and not _is_group_name(item):
            close = difflib.get_close_matches(item, names, n=3)
            raise BadInputError(f"--ignore {item} names no layer of this model",
                                f"did you mean {', '.join(close)}?" if close else
                                "give a module name as in model.named_modules(), e.g. layer1.0.conv1")


def _is_group_name(item: str) -> bool:
    """Transformer group names (`layers.3.heads`, `layers.3.mlp`) are accepted as they are printed."""
    parts = item.split(".")
    return len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit() and parts[2] in ("heads", "mlp")


def _feeds_attention(handle) -> bool:
    """A width nn.MultiheadAttention shares (its embed dim): not prunable here.

    nn.MultiheadAttention's packed projection ties its inner width to its input width, so removing channels can
    only shrink every head (Torch-Pruning's choice), which changes the attention's own shapes and the table's
    signatures with it. Models built on it (torchvision's ViT) are pruned in their MLP channels; Hugging Face
    transformers get whole-head pruning from the family pruner.
    """
    import torch.nn as nn

    return any(isinstance(dep.target.module, nn.MultiheadAttention) for dep, _ in handle)


def refresh_attributes(module) -> None:
    """Attributes that cache a width torch code reads in forward (torchvision's ViT keeps hidden_dim)."""
    for mod in module.modules():
        conv = getattr(mod, "conv_proj", None)
        if hasattr(mod, "hidden_dim") and conv is not None and hasattr(conv, "out_channels"):
            mod.hidden_dim = conv.out_channels


def transformer_space(layout) -> list:
    """Per transformer layer: its kv heads (with their query heads), then its MLP channels."""
    from .transformer import layer_widths, slim_heads, slim_mlp

    groups = []
    for i, (kv_heads, channels) in layer_widths(layout).items():
        layer = layout.layers[i]
        groups.append(UnitGroup(f"layers.{i}.heads", "heads", kv_heads, layout.head_dim * layout.kv_groups,
                                _keep_complement(lambda keep, lay=layer: slim_heads(lay, keep, layout), kv_heads),
                                layer, layout))
        groups.append(UnitGroup(f"layers.{i}.mlp", "mlp", channels, 1,
                                _keep_complement(lambda keep, lay=layer: slim_mlp(lay, keep, layout), channels),
                                layer, layout))
    return groups


def _keep_complement(slim: Callable[[list], None], n: int) -> Callable[[list], None]:
    """Turn a keep-list slimming function into a remove-list one."""
    def remove(idx: list) -> None:
        gone = set(int(i) for i in idx)
        if gone:
            slim([i for i in range(n) if i not in gone])
    return remove


def apply_keep(groups: list, keep: dict, module=None) -> dict:
    """Remove units so that group i keeps the units listed in keep[i]; returns {group name: kept units}.

    `module` (the model the groups belong to) gets its cached width attributes refreshed afterwards.
    """
    widths = {}
    for i, group in enumerate(groups):
        kept = sorted(int(u) for u in keep.get(i, range(group.units)))
        if not kept:
            raise BadInputError(f"group {group.name} would lose every unit", "raise the budget or min_keep")
        group.remove([u for u in range(group.units) if u not in set(kept)])
        widths[group.name] = len(kept)
    if module is not None:
        refresh_attributes(module)
    return widths
