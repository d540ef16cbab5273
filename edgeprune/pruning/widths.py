"""Which unit group sets each table block's widths: learned by probing the exported graph, then O(1) per query.

The latency table's blocks are read from the exported ONNX graph, while the pruner removes units of torch
modules. To predict a candidate's latency without exporting it, each block side (c_in, c_out) is tied to the one
group that sets it. Probe k removes one unit from every group whose index has bit k set, plus one probe removes
one unit everywhere; a block side that shrinks by the same amount in exactly the probes of one group's code
belongs to that group, with that many channels per unit. A side that follows several groups (a channel
concatenation: DenseNet, SqueezeNet's Fire, Inception, MobileViT's fusion) is read from the exported graph
instead: the width of a Concat's output is the sum of its inputs' widths, traced back through width-keeping ops
to the blocks that produce them, and that sum must reproduce every probe before it is used. A side neither
reading explains is named in an error (with the --ignore flags that would keep it whole), never guessed.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from edgeprune.errors import BadInputError


@dataclass(frozen=True)
class Side:
    """How one block width follows the groups: width = dense - Σ per_unit · (units removed from group).

    `terms` holds (group, channels per unit) pairs: none for a fixed width, one for a width a single group
    sets, several for a concatenation of groups.
    """

    terms: tuple = ()

    def delta(self, removed) -> int:
        """Channels lost when group g loses removed(g) units."""
        return sum(per_unit * removed(g) for g, per_unit in self.terms)

    def __add__(self, other: "Side") -> "Side":
        merged: dict = {}
        for g, per_unit in self.terms + other.terms:
            merged[g] = merged.get(g, 0) + per_unit
        return Side(tuple(sorted(merged.items())))


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
                for g, _ in side.terms:
                    self.by_group.setdefault(g, set()).add(i)

    def _width(self, dense: int, side: Side, units: list) -> int:
        return dense - side.delta(lambda g: self.dense_units[g] - units[g])

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

    def export(mod):
        wrapped = loaded.export_module(mod)
        proto, _ = export_onnx(wrapped, loaded.example_inputs(wrapped), None, check=False)
        return proto, {b.name: b for b in extract_blocks(proto, head_dim=head_dim).blocks}

    groups = build_space(module)
    dense_units = [g.units for g in groups]
    names = [g.name for g in groups]
    proto, dense = export(module)
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
        probes.append(export(clone)[1])
    sides = {}
    for name, block in dense.items():
        for attr in ("c_in", "c_out"):
            sides[name, attr] = _side(name, attr, getattr(block, attr), probes, codes, removed)
    unresolved = [key for key, side in sides.items() if side is None]
    if unresolved:
        _concatenated_sides(proto, dense, sides, probes, codes, removed, names)
    rules = []
    for name, block in dense.items():
        in_sp, out_sp = _spatial(block)
        rules.append(BlockRule(block, sides[name, "c_in"], sides[name, "c_out"], in_sp, out_sp))
    return WidthModel(rules, dense_units, names)


def _deltas(name: str, attr: str, dense: int, probes: list) -> list:
    deltas = []
    for probe in probes:
        if name not in probe:
            raise BadInputError(f"layer {name} disappears from the exported graph when channels are removed",
                                "report this model; edgeprune cannot predict its pruned latency")
        deltas.append(dense - getattr(probe[name], attr))
    return deltas


def _side(name: str, attr: str, dense: int, probes: list, codes: list, removed: list) -> Side | None:
    """The side as one group sets it (or fixed), or None when no single group explains the probes."""
    deltas = _deltas(name, attr, dense, probes)
    total = deltas[-1]
    if total == 0:
        return Side()
    pattern = 0
    for k, d in enumerate(deltas[:-1]):
        if d not in (0, total):
            return None
        pattern |= (d == total) << k
    if pattern not in codes or not removed[pattern - 1] or total % removed[pattern - 1]:
        return None
    return Side(((pattern - 1, total // removed[pattern - 1]),))


# ONNX ops whose output has the channels of their (first non-constant) input
_KEEPS_CHANNELS = {"Relu", "Clip", "BatchNormalization", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Identity",
                   "Dropout", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Pad", "Add", "Mul",
                   "Sub", "Div", "Erf", "LeakyRelu", "PRelu", "Elu", "Selu", "Softplus", "Resize", "Upsample",
                   "Cast", "InstanceNormalization", "Flatten", "Reshape", "Squeeze", "Unsqueeze"}
# (a flatten multiplies a width by the spatial size it folds in: one integer factor, checked on every probe)


def _concatenated_sides(proto, dense: dict, sides: dict, probes: list, codes: list, removed: list,
                        names: list) -> None:
    """Fill every side no single group explains from the graph (a Concat sums its inputs' widths), checked
    against every probe; raise the coupling error for a side that still does not fit."""
    producer = {out: node for node in proto.graph.node for out in node.output}
    block_of = {node: name for name, b in dense.items() for node in b.nodes}
    consts = {i.name for i in proto.graph.initializer} | {o for n in proto.graph.node if n.op_type == "Constant"
                                                          for o in n.output}
    inputs = {i.name for i in proto.graph.input} - consts
    memo: dict = {}

    def tensor(name: str) -> Side | None:
        if name not in memo:
            memo[name] = None  # a cycle (there is none in an ONNX graph) or an op we do not follow
            memo[name] = width_of(name)
        return memo[name]

    def width_of(name: str) -> Side | None:
        if name in inputs:
            return Side()
        node = producer.get(name)
        if node is None:
            return None
        block = block_of.get(node.name)
        if block is not None and not dense[block].tied and sides.get((block, "c_out")) is not None:
            return sides[block, "c_out"]  # a conv / linear block's output: its own c_out
        if node.op_type == "Concat":
            axis = next((a.i for a in node.attribute if a.name == "axis"), None)
            parts = [tensor(i) for i in node.input]
            if axis not in (1, -3) or any(p is None for p in parts):
                return None
            total = Side()
            for part in parts:
                total = total + part
            return total
        if node.op_type in _KEEPS_CHANNELS or (block is not None and dense[block].tied):
            data = [i for i in node.input if i and i not in consts]
            return tensor(data[0]) if data else None
        return None

    def fits(side: Side, deltas: list) -> bool:
        for k, d in enumerate(deltas):
            hit = (lambda g: removed[g]) if k == len(deltas) - 1 else (lambda g, k=k: removed[g] * (codes[g] >> k & 1))
            if side.delta(hit) != d:
                return False
        return True

    for (name, attr), side in list(sides.items()):
        if side is not None:
            continue
        block = dense[name]
        main = next((n for n in proto.graph.node if n.name == block.nodes[0]), None)
        data = [i for i in main.input if i and i not in consts] if main is not None else []
        if main is not None and main.op_type == "Concat":  # a concat block's width is its output's: the sum
            found = tensor(main.output[0])
        else:
            found = tensor(data[0]) if data and (attr == "c_in" or block.tied) else None
        deltas = _deltas(name, attr, getattr(block, attr), probes)
        base = found.delta(lambda g: removed[g]) if found is not None else 0
        if found is not None and base and deltas[-1] % base == 0 and deltas[-1] // base > 1:
            scale = deltas[-1] // base  # a flatten on the way folded a spatial size into the width
            found = Side(tuple((g, per_unit * scale) for g, per_unit in found.terms))
        if found is None or not fits(found, deltas):
            raise _coupling_error(name, attr, _suspects(found, deltas, codes, removed, names))
        sides[name, attr] = found


def _suspects(found: Side | None, deltas: list, codes: list, removed: list, names: list) -> list:
    """Root layers of the groups that may feed a side: the resolved ones, else every group the probes allow."""
    if found is not None and found.terms:
        return [names[g] for g, _ in found.terms]
    zero = [k for k, d in enumerate(deltas[:-1]) if d == 0]
    return [names[g] for g in range(len(names)) if removed[g] and not any(codes[g] >> k & 1 for k in zero)]


def _coupling_error(name: str, attr: str, suspects: list) -> BadInputError:
    flags = " ".join(f"--ignore {s}" for s in suspects[:4]) + (" ..." if len(suspects) > 4 else "")
    return BadInputError(f"the {attr} width of layer {name} follows several pruned groups in a way edgeprune "
                         "cannot model (not a plain channel concatenation)",
                         f"keep the layers feeding it whole: {flags}" if suspects else
                         "keep the layers feeding it whole with --ignore LAYER, or report the model")
