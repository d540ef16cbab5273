"""Which (c_in, c_out) cells to measure for each block signature.

Per width axis two point sets are measured: widths on the device's alignment step ("aligned") and widths off
it ("off"), because runtimes take different kernels off the step (ORT's CPU EP leaves the blocked NCHWc layout
when channels are not a multiple of 8/16), and off-step widths are slower than the next aligned width up.
Points are spread over the whole range, since a block's latency is close to bilinear in (c_in, c_out) within one
regime, and include every current width exactly. The interpolation rule that reads them lives in predict.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DENSITY = {
    "coarse": {"aligned": (1 / 3, 2 / 3), "off": (0.5, 1.0), "low_off": True},
    "normal": {"aligned": (0.25, 0.5, 0.75), "off": (0.4, 0.7, 1.0), "low_off": True},
    "fine": {"aligned": (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875), "off": (0.25, 0.5, 0.75, 1.0), "low_off": True},
}


@dataclass
class Axis:
    """Measured widths on one axis, split by regime. A fixed axis (graph input/output width) has one point."""

    aligned: list
    off: list
    fixed: bool = False

    def points(self) -> list:
        return sorted(set(self.aligned) | set(self.off))

    def to_dict(self) -> dict:
        return {"aligned": self.aligned, "off": self.off, "fixed": self.fixed}

    @classmethod
    def from_dict(cls, data: dict) -> "Axis":
        return cls(list(data["aligned"]), list(data["off"]), bool(data.get("fixed", False)))


def is_aligned(width: int, step: int) -> bool:
    return width % step == 0


def axis_for(current: set, step: int, fixed: bool, density: str = "normal", unit: int = 1) -> Axis:
    """Measured points for an axis whose widths today are `current` (max is the largest prunable width).

    `step` is the alignment step the aligned points sit on; `unit` is what every width must be a multiple of
    (a grouped conv's group count), so off-step points are multiples of `unit` that miss the step.
    """
    if fixed:
        widths = sorted(current)
        return Axis([w for w in widths if is_aligned(w, step)], [w for w in widths if not is_aligned(w, step)],
                    fixed=True)
    top = max(current)
    fractions = DENSITY[density]
    aligned = {w for w in current if is_aligned(w, step)}
    off = {w for w in current if not is_aligned(w, step)}
    top_aligned = (top // step) * step
    if top_aligned >= step:
        aligned.update({step, top_aligned})
        aligned.update(max(step, round(f * top / step) * step) for f in fractions["aligned"])
    if top > step:
        for f in fractions["off"]:
            base = max(step, math.ceil(f * top / step) * step)
            w = (min(base - step // 2 + 1, top) // unit) * unit
            if w > 0 and not is_aligned(w, step):
                off.add(w)
        low = ((step // 2 + 1) // unit) * unit  # lowest regime point: no off-step width extrapolated below it
        if fractions["low_off"] and low > 0 and not is_aligned(low, step):
            off.add(low)
    aligned = {w for w in aligned if w <= top}
    return Axis(sorted(aligned), sorted(off))


@dataclass
class SignatureGrid:
    """The cells to measure for one signature: every in-point × out-point within matching regimes."""

    signature: dict
    c_in: Axis
    c_out: Axis
    tied: bool
    cells: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"signature": self.signature, "c_in": self.c_in.to_dict(), "c_out": self.c_out.to_dict(),
                "tied": self.tied}


def _valid(signature: dict, c_in: int, c_out: int) -> bool:
    groups = signature.get("groups", 1)
    if isinstance(groups, int) and groups > 1:
        return c_in % groups == 0 and c_out % groups == 0
    return True


def head_axis(current: set, groups: int, density: str) -> Axis:
    """Attention widths are head counts in whole GQA groups: every count up to 12 points, then spread out."""
    top = max(current)
    counts = list(range(groups, top + 1, groups))
    limit = {"coarse": 6, "normal": 12, "fine": 24}[density]
    if len(counts) > limit:
        stride = (len(counts) - 1) / (limit - 1)
        counts = sorted({counts[round(i * stride)] for i in range(limit)})
    return Axis(sorted(set(counts) | set(current)), [])


def plan_signature(signature: dict, blocks: list, step: int, density: str = "normal") -> SignatureGrid:
    """Grid for the blocks sharing `signature` (widths from all of them)."""
    tied = blocks[0].tied
    if signature["kind"] == "attention":
        in_axis = Axis(sorted({b.c_in for b in blocks}), [], fixed=True)
        out_axis = head_axis({b.c_out for b in blocks}, int(signature.get("kv_groups", 1)), density)
        return SignatureGrid(signature, in_axis, out_axis, False,
                             [(i, o) for i in in_axis.points() for o in out_axis.points()])
    groups = signature.get("groups", 1)
    unit = groups if isinstance(groups, int) and groups > 1 else 1
    eff_step = step * unit // math.gcd(step, unit)
    in_axis = axis_for({b.c_in for b in blocks}, eff_step, all(b.in_fixed for b in blocks), density, unit)
    out_axis = axis_for({b.c_out for b in blocks}, eff_step, all(b.out_fixed for b in blocks), density, unit)
    if tied:
        fixed = in_axis.fixed or out_axis.fixed
        merged = axis_for({b.c_in for b in blocks}, eff_step, fixed, density)
        cells = [(w, w) for w in merged.points()]
        return SignatureGrid(signature, merged, merged, True, cells)
    cells = [(i, o) for i in in_axis.points() for o in out_axis.points() if _valid(signature, i, o)]
    return SignatureGrid(signature, in_axis, out_axis, False, cells)


JUMP = 1.25  # a segment whose latency grows 25 % faster than its width hides a step edge


def _jumps(points: list, value, step: int) -> list:
    """Aligned midpoints of segments where latency jumps faster than width, largest excess first."""
    found = []
    for a, b in zip(points, points[1:]):
        ta, tb = value(a), value(b)
        if ta is None or tb is None or ta <= 0 or b - a <= step:
            continue
        excess = (tb / ta) / (b / a)
        mid = round((a + b) / 2 / step) * step
        if excess > JUMP and a < mid < b:
            found.append((excess, mid))
    return [mid for _, mid in sorted(found, reverse=True)]


def refine(entry: dict, values: dict, step: int, limit: int = 2) -> list:
    """Add on-step points where neighbouring cells jump; returns the new (c_in, c_out) cells to measure.

    `entry` is a signature's grid dict (updated in place), `values` maps measured (c_in, c_out) -> ms. Rows are
    read at the top width of the other axis, where a block's cost is largest.
    """
    c_in, c_out = Axis.from_dict(entry["c_in"]), Axis.from_dict(entry["c_out"])
    groups = entry["signature"].get("groups", 1)
    if entry["signature"]["kind"] == "attention" or (isinstance(groups, int) and groups > 1):
        return []  # head counts are all measured; grouped widths must stay multiples of the group count
    if entry["tied"]:
        new = _jumps(sorted(c_in.aligned), lambda w: values.get((w, w)), step)[:limit]
        if not new:
            return []
        c_in.aligned = sorted(set(c_in.aligned) | set(new))
        entry["c_in"] = entry["c_out"] = c_in.to_dict()
        return [(w, w) for w in new]
    top_in, top_out = max(c_in.points()), max(c_out.points())
    new_out = [] if c_out.fixed else _jumps(sorted(c_out.aligned), lambda w: values.get((top_in, w)), step)[:limit]
    new_in = [] if c_in.fixed else _jumps(sorted(c_in.aligned), lambda w: values.get((w, top_out)), step)[:limit]
    if not new_out and not new_in:
        return []
    c_in.aligned = sorted(set(c_in.aligned) | set(new_in))
    c_out.aligned = sorted(set(c_out.aligned) | set(new_out))
    entry["c_in"], entry["c_out"] = c_in.to_dict(), c_out.to_dict()
    return sorted({(i, o) for i in c_in.points() for o in c_out.points() if i in new_in or o in new_out})
