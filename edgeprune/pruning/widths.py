"""Which unit group sets each table block's widths: learned by probing the exported graph, then O(1) per query.

The latency table's blocks are read from the exported ONNX graph, while the pruner removes units of torch
modules. To predict a candidate's latency without exporting it, each block side (c_in, c_out) is tied to the one
group that sets it. Probe k removes one unit from every group whose index has bit k set, plus one probe removes
one unit everywhere; a block side that shrinks by the same amount in exactly the probes of one group's code
belongs to that group, with that many channels per unit. A side that follows no single group (e.g. a
concatenation of two pruned groups) is named in an error rather than guessed.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from edgeprune.errors import BadInputError


@dataclass(frozen=True)
class Side:
    """How one block width follows a group: width = dense - per_unit * (units removed from `group`)."""

    group: int | None  # None: the width never changes
    per_unit: int = 0


@dataclass
class BlockRule:
    block: object  # latency.blocks.Block at dense widths
    c_in: Side
    c_out: Side
    in_spatial: int  # elements per input channel (for the layout feature)
    out_spatial: int


class WidthModel:
    """Blocks of the model at any unit counts per group, for the latency table and a MACs count."""

    def __init__(self, rules: list, dense_units: list, names: list):
        self.rules = rules
        self.dense_units = dense_units
        self.names = names
        self.by_group = {}
        for i, rule in enumerate(rules):
            for side in (rule.c_in, rule.c_out):
                if side.group is not None:
                    self.by_group.setdefault(side.group, set()).add(i)

    def _width(self, dense: int, side: Side, units: list) -> int:
        if side.group is None:
            return dense
        return dense - side.per_unit * (self.dense_units[side.group] - units[side.group])

    def block(self, i: int, units: list):
        """Block i at unit counts `units` (one count per group)."""
        rule = self.rules[i]
        b = rule.block
        c_in = self._width(b.c_in, rule.c_in, units)
        c_out = self._width(b.c_out, rule.c_out, units)
        if b.tied:
            c_in = c_out = min(c_in, c_out)
        scale = (c_out / b.c_out) if b.tied or b.kind in ("attention", "mlp") else \
            (c_in / b.c_in) * (c_out / b.c_out)
        return dataclasses.replace(b, c_in=c_in, c_out=c_out, macs=int(round(b.macs * scale)),
                                   io_elems=rule.in_spatial * c_in + rule.out_spatial * c_out)

    def blocks(self, units: list) -> list:
        return [self.block(i, units) for i in range(len(self.rules))]

    def macs(self, units: list) -> int:
        return sum(b.macs for b in self.blocks(units))

    def affected(self, group: int) -> list:
        """Indices of blocks whose widths depend on `group`."""
        return sorted(self.by_group.get(group, ()))


def _spatial(block) -> tuple:
    """(input, output) elements per channel of a conv block, from its io_elems and input size."""
    if block.kind != "conv" or not block.io_elems:
        return 0, 0
    hw = block.signature.get("hw") or [1, 1]
    in_sp = int(hw[0]) * int(hw[1])
    out_sp = (block.io_elems - in_sp * block.c_in) // max(1, block.c_out)
    return in_sp, out_sp


def probe_width_model(loaded, module, example_inputs: tuple, build_space, head_dim: int | None = None,
                      timeout_s: float = 60.0) -> WidthModel:
    """Export the dense model and a few probes; tie every block side to the group that sets it.

    `build_space(module)` must return the unit groups of any deep copy of `module` in the same order.
    """
    import math

    from edgeprune.exporters.onnx import export_onnx
    from edgeprune.latency.blocks import extract_blocks

    def blocks_of(mod) -> dict:
        wrapped = loaded.export_module(mod)
        proto, _ = export_onnx(wrapped, loaded.example_inputs(wrapped), None, check=False)
        return {b.name: b for b in extract_blocks(proto, head_dim=head_dim).blocks}

    groups = build_space(module)
    dense_units = [g.units for g in groups]
    names = [g.name for g in groups]
    dense = blocks_of(module)
    n_bits = max(1, math.ceil(math.log2(len(groups) + 1)))
    codes = [i + 1 for i in range(len(groups))]
    from .space import refresh_attributes

    removed = [1 if g.units > 1 else 0 for g in groups]  # units one probe takes from a group
    probes = []
    for k in list(range(n_bits)) + ["all"]:
        clone = copy.deepcopy(module)
        clone_groups = build_space(clone)
        for i, group in enumerate(clone_groups):
            if (k == "all" or codes[i] >> k & 1) and removed[i]:
                group.remove(list(range(removed[i])))
        refresh_attributes(clone)
        probes.append(blocks_of(clone))
    rules = []
    for name, block in dense.items():
        sides = []
        for attr in ("c_in", "c_out"):
            sides.append(_side(name, attr, getattr(block, attr), probes, codes, removed))
        in_sp, out_sp = _spatial(block)
        rules.append(BlockRule(block, sides[0], sides[1], in_sp, out_sp))
    return WidthModel(rules, dense_units, names)


def _side(name: str, attr: str, dense: int, probes: list, codes: list, removed: list) -> Side:
    deltas = []
    for probe in probes:
        if name not in probe:
            raise BadInputError(f"layer {name} disappears from the exported graph when channels are removed",
                                "report this model; edgeprune cannot predict its pruned latency")
        deltas.append(dense - getattr(probe[name], attr))
    total = deltas[-1]
    if total == 0:
        return Side(None)
    pattern = 0
    for k, d in enumerate(deltas[:-1]):
        if d not in (0, total):
            raise _coupling_error(name, attr)
        pattern |= (d == total) << k
    if pattern not in codes or not removed[pattern - 1] or total % removed[pattern - 1]:
        raise _coupling_error(name, attr)
    return Side(pattern - 1, total // removed[pattern - 1])


def _coupling_error(name: str, attr: str) -> BadInputError:
    return BadInputError(f"the {attr} width of layer {name} follows several pruned groups at once (e.g. a channel "
                         "concatenation); edgeprune cannot model it",
                         "keep the layers feeding it unpruned (--ignore LAYER) or report the model")
