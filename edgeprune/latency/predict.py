"""Predict a block's latency at any widths from the measured grid, by one stated rule.

Rule ("regime-bilinear"): each width axis is split into its aligned and off-step regimes (grid.py). A width
picks the points of its own regime (a fixed axis has one point; a regime with a single other point gives no
slope, so all points are used); inside the regime the two nearest measured
points bracket it, and the cell value is bilinear in (c_in, c_out) between the four bracketing cells (linear in
c for tied blocks). Outside the measured range the end segment is extended linearly, floored at the smallest
measured cell of the signature. A cell the grid should contain but the table lacks is an error, never 0 ms.
"""

from __future__ import annotations

from bisect import bisect_left

from edgeprune.errors import BadInputError

from .grid import Axis, is_aligned


class MissingCellError(BadInputError):
    """The table has no measurement where the rule needs one."""


def _bracket(points: list, w: int) -> list:
    """[(point, weight)] whose weighted sum interpolates the value at `w` (linear, end segments extended)."""
    if not points:
        return []
    if len(points) == 1 or w in points:
        return [(w if w in points else points[0], 1.0)]
    i = bisect_left(points, w)
    i = min(max(i, 1), len(points) - 1)
    lo, hi = points[i - 1], points[i]
    t = (w - lo) / (hi - lo)
    return [(lo, 1.0 - t), (hi, t)]


def regime_points(axis: Axis, w: int, step: int) -> list:
    """Measured points of the regime `w` belongs to.

    A regime with one point that is not `w` gives no slope: a constant read off one width (an off-step regime
    holding only a fixed input width, say) is no prediction, so all measured points are used instead.
    """
    if axis.fixed:
        return axis.points()
    own = sorted(axis.aligned if is_aligned(w, step) else axis.off)
    return own if len(own) >= 2 or w in own else axis.points()


def interpolate(values: dict, c_in_axis: Axis, c_out_axis: Axis, tied: bool, c_in: int, c_out: int,
                step: int, where: str = "") -> tuple:
    """(ms, exact) for one block; `values` maps (c_in, c_out) -> ms of the measured cells."""
    if tied:
        weights = [((p, p), w) for p, w in _bracket(regime_points(c_in_axis, c_in, step), c_in)]
    else:
        wi = _bracket(regime_points(c_in_axis, c_in, step), c_in)
        wo = _bracket(regime_points(c_out_axis, c_out, step), c_out)
        weights = [((pi, po), a * b) for pi, a in wi for po, b in wo]
    total = 0.0
    for cell, weight in weights:
        if weight == 0.0:
            continue
        if cell not in values:
            raise MissingCellError(f"latency table has no cell {where}@{cell[0]}x{cell[1]}",
                                   "re-run edgeprune profile for this model; the table is incomplete")
        total += weight * values[cell]
    floor = min(values.values()) if values else 0.0
    exact = len(weights) == 1 and weights[0][0] == (c_in, c_in if tied else c_out)
    return max(total, floor if not exact else total), exact
