"""Grid planning (which cells to measure) and the regime-bilinear interpolation rule that reads them."""

import random

import pytest

from edgeprune.errors import BadInputError
from edgeprune.latency.blocks import Block
from edgeprune.latency.grid import DENSITY, Axis, axis_for, is_aligned, plan_signature
from edgeprune.latency.predict import MissingCellError, interpolate, regime_points

CONV = {
    "kind": "conv",
    "kernel": [3, 3],
    "stride": [1, 1],
    "pads": [1, 1, 1, 1],
    "dilation": [1, 1],
    "groups": 1,
    "hw": [8, 8],
    "act": "relu",
    "residual": False,
}
POOL = {"kind": "pool", "op": "MaxPool", "hw": [8, 8]}

# -- axis_for -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("density", sorted(DENSITY))
@pytest.mark.parametrize("step", [4, 8, 16])
@pytest.mark.parametrize("current", [{64}, {64, 128, 256, 512}, {3, 24, 37, 100}, {96, 960}, {13}, {17, 5}])
def test_axis_points_cover_current_and_respect_regimes(current, step, density):
    axis = axis_for(set(current), step, fixed=False, density=density)
    points = axis.points()
    assert set(current) <= set(points)  # every current width is measured exactly
    assert all(is_aligned(w, step) for w in axis.aligned)
    assert not any(is_aligned(w, step) for w in axis.off)
    assert not set(axis.aligned) & set(axis.off)
    assert axis.aligned == sorted(axis.aligned) and axis.off == sorted(axis.off)
    assert min(points) >= 1 and max(points) == max(current)  # nothing above the largest prunable width
    assert not axis.fixed


def test_axis_normal_density_at_64_step_8():
    axis = axis_for({64}, 8, fixed=False, density="normal")
    assert axis.aligned == [8, 16, 32, 48, 64]
    # 0.4 / 0.7 / 1.0 of 64 rounded up to the step, minus half a step plus one; plus the lowest point 5
    assert axis.off == [5, 29, 45, 61]


def test_axis_has_both_regimes_over_the_range():
    axis = axis_for({512}, 8, fixed=False, density="normal")
    assert min(axis.aligned) == 8 and max(axis.aligned) == 512
    assert min(axis.off) == 5  # off-step widths below the first step are not extrapolated from above
    assert max(axis.off) > 256


def test_coarse_axis_has_three_off_step_points_low_middle_top():
    axis = axis_for({512}, 8, fixed=False, density="coarse")
    assert min(axis.aligned) == 8 and max(axis.aligned) == 512
    assert len(axis.off) == 3 and axis.off[0] == 5 and axis.off[-1] > 500 and all(w % 8 for w in axis.off)


def test_axis_below_one_step():
    axis = axis_for({5}, 8, fixed=False)
    assert axis.aligned == [] and axis.off == [5]


@pytest.mark.parametrize("width", [3, 64, 100])
def test_fixed_axis_has_a_single_point(width):
    axis = axis_for({width}, 8, fixed=True)
    assert axis.fixed
    assert axis.points() == [width]
    assert (axis.aligned, axis.off) == (([width], []) if width % 8 == 0 else ([], [width]))


def test_axis_dict_roundtrip():
    axis = axis_for({64, 100}, 8, fixed=False)
    assert Axis.from_dict(axis.to_dict()) == axis
    fixed = axis_for({3}, 8, fixed=True)
    assert Axis.from_dict(fixed.to_dict()).fixed


# -- plan_signature ------------------------------------------------------------------------------------------


def test_tied_blocks_give_diagonal_cells():
    blocks = [Block("p1", "pool", POOL, 64, 64), Block("p2", "pool", POOL, 96, 96)]
    grid = plan_signature(POOL, blocks, 8, "coarse")
    assert grid.tied
    assert grid.cells and all(i == o for i, o in grid.cells)
    assert [i for i, _ in grid.cells] == grid.c_in.points()
    assert {64, 96} <= {i for i, _ in grid.cells}
    assert grid.c_in == grid.c_out


def test_depthwise_blocks_are_tied():
    sig = dict(CONV, groups="depthwise")
    grid = plan_signature(sig, [Block("dw", "conv", sig, 32, 32)], 8)
    assert grid.tied and all(i == o for i, o in grid.cells)


def test_dense_grid_is_the_cross_product():
    blocks = [Block("a", "conv", CONV, 32, 64), Block("b", "conv", CONV, 64, 64)]
    grid = plan_signature(CONV, blocks, 8, "coarse")
    assert not grid.tied
    assert grid.cells == [(i, o) for i in grid.c_in.points() for o in grid.c_out.points()]
    assert (32, 64) in grid.cells and (64, 64) in grid.cells
    assert grid.to_dict()["tied"] is False and grid.to_dict()["signature"] == CONV


def test_fixed_input_axis_in_grid():
    block = Block("conv1", "conv", CONV, 3, 64, in_fixed=True)
    grid = plan_signature(CONV, [block], 8)
    assert grid.c_in.fixed and grid.c_in.points() == [3]
    assert {i for i, _ in grid.cells} == {3}
    assert len(grid.cells) == len(grid.c_out.points())


def test_grouped_conv_uses_a_step_that_the_groups_divide():
    sig = dict(CONV, groups=6)
    grid = plan_signature(sig, [Block("g", "conv", sig, 48, 96)], 8)
    for i, o in grid.cells:
        assert i % 6 == 0 and o % 6 == 0
    assert all(w % 24 == 0 for w in grid.c_out.aligned)  # lcm(8, 6)


# -- interpolate --------------------------------------------------------------------------------------------


def bilinear(a, b, c, d):
    return lambda ci, co: a + b * ci + c * co + d * ci * co


def dense_grid(step=8, current_in=(96,), current_out=(160,), density="normal"):
    blocks = [
        Block(f"b{k}", "conv", CONV, ci, co)
        for k, (ci, co) in enumerate(zip(current_in, current_out, strict=True))
    ]
    return plan_signature(CONV, blocks, step, density)


def in_range_widths(rng, axis, step, n):
    """Widths inside the measured range of their own regime or above it (no extrapolation below the grid)."""
    top = max(axis.points())
    out = []
    while len(out) < n:
        w = rng.randint(step // 2 + 1, top + step)
        out.append(w)
    return out


@pytest.mark.parametrize("step,density", [(8, "normal"), (8, "coarse"), (16, "fine"), (4, "normal")])
def test_interpolation_is_exact_for_bilinear_cells(step, density):
    grid = dense_grid(step, density=density)
    f = bilinear(0.01, 0.002, 0.003, 0.0004)
    values = {cell: f(*cell) for cell in grid.cells}
    rng = random.Random(step)
    widths_in = in_range_widths(rng, grid.c_in, step, 150)
    widths_out = in_range_widths(rng, grid.c_out, step, 150)
    aligned_seen = off_seen = 0
    for ci, co in zip(widths_in, widths_out, strict=True):
        ms, _ = interpolate(values, grid.c_in, grid.c_out, False, ci, co, step)
        assert ms == pytest.approx(f(ci, co), rel=1e-9, abs=1e-12), (ci, co)
        aligned_seen += is_aligned(ci, step)
        off_seen += not is_aligned(ci, step)
    assert aligned_seen > 5 and off_seen > 5


def test_interpolation_exact_for_every_width_in_range():
    step = 8
    grid = dense_grid(step, current_in=(64,), current_out=(48,))
    f = bilinear(0.5, 0.01, 0.02, 0.001)
    values = {cell: f(*cell) for cell in grid.cells}
    for ci in range(5, 65):
        for co in range(5, 49, 7):
            ms, _ = interpolate(values, grid.c_in, grid.c_out, False, ci, co, step)
            assert ms == pytest.approx(f(ci, co), rel=1e-9)


def test_off_step_widths_read_the_off_step_points():
    step = 8
    grid = dense_grid(step)
    f = bilinear(0.01, 0.002, 0.003, 0.0004)
    slow = 1.3  # cells with an off-step width are 30 % slower than the bilinear law of aligned cells

    def value(ci, co):
        return f(ci, co) * (1.0 if is_aligned(ci, step) and is_aligned(co, step) else slow)

    values = {cell: value(*cell) for cell in grid.cells}
    rng = random.Random(5)
    checked = {"aa": 0, "ao": 0, "oa": 0, "oo": 0}
    for ci, co in zip(
        in_range_widths(rng, grid.c_in, step, 300), in_range_widths(rng, grid.c_out, step, 300), strict=False
    ):
        ms, _ = interpolate(values, grid.c_in, grid.c_out, False, ci, co, step)
        assert ms == pytest.approx(value(ci, co), rel=1e-9), (ci, co)
        checked[("a" if is_aligned(ci, step) else "o") + ("a" if is_aligned(co, step) else "o")] += 1
    assert min(checked.values()) > 0


def test_off_step_width_between_aligned_points_is_not_an_aligned_average():
    step = 8
    grid = dense_grid(step, current_in=(64,), current_out=(64,))
    values = {
        (ci, co): (2.0 if not (is_aligned(ci, step) and is_aligned(co, step)) else 1.0)
        for ci, co in grid.cells
    }
    ms, exact = interpolate(values, grid.c_in, grid.c_out, False, 37, 64, step)  # 37 lies between 32 and 48
    assert ms == pytest.approx(2.0) and not exact
    ms, _ = interpolate(values, grid.c_in, grid.c_out, False, 40, 64, step)
    assert ms == pytest.approx(1.0)


def test_tied_interpolation_is_linear_along_the_diagonal():
    step = 8
    blocks = [Block("p", "pool", POOL, 96, 96)]
    grid = plan_signature(POOL, blocks, step)
    g = lambda c: 0.02 + 0.003 * c  # noqa: E731
    values = {cell: g(cell[0]) for cell in grid.cells}
    for c in range(step // 2 + 1, 100):
        ms, _ = interpolate(values, grid.c_in, grid.c_out, True, c, c, step)
        assert ms == pytest.approx(g(c), rel=1e-9)


def test_exact_at_measured_cells():
    step = 8
    grid = dense_grid(step)
    f = bilinear(0.3, 0.002, 0.003, 0.0004)
    values = {cell: f(*cell) * (1.0 + 0.01 * (hash(cell) % 7)) for cell in grid.cells}  # not bilinear at all
    for cell in grid.cells:
        ms, exact = interpolate(values, grid.c_in, grid.c_out, False, *cell, step)
        assert exact is True
        assert ms == values[cell]
    ms, exact = interpolate(values, grid.c_in, grid.c_out, False, 96, 100, step)
    assert exact is False


def test_extrapolation_below_is_floored_at_the_smallest_cell():
    step = 8
    grid = dense_grid(step, current_in=(64,), current_out=(64,))
    f = bilinear(0.1, 0.01, 0.01, 0.001)
    values = {cell: f(*cell) for cell in grid.cells}
    assert min(values.values()) == f(5, 5) > f(1, 1)  # the line through the grid continues below its floor
    ms, exact = interpolate(values, grid.c_in, grid.c_out, False, 1, 1, step)
    assert ms == f(5, 5) and not exact


def test_missing_cell_raises_naming_it():
    step = 8
    grid = dense_grid(step, current_in=(64,), current_out=(64,))
    values = {cell: 1.0 for cell in grid.cells}
    del values[(32, 48)]
    with pytest.raises(MissingCellError) as info:
        interpolate(values, grid.c_in, grid.c_out, False, 40, 48, step, where="conv-abc")
    assert "conv-abc@32x48" in info.value.message
    assert isinstance(info.value, BadInputError)
    with pytest.raises(MissingCellError, match="conv-abc@32x48"):
        interpolate(values, grid.c_in, grid.c_out, False, 32, 48, step, where="conv-abc")
    # a width whose bracket does not touch the missing cell still predicts
    ms, _ = interpolate(values, grid.c_in, grid.c_out, False, 56, 48, step, where="conv-abc")
    assert ms == pytest.approx(1.0)


def test_missing_cell_is_never_zero():
    step = 8
    grid = dense_grid(step, current_in=(64,), current_out=(64,))
    with pytest.raises(MissingCellError):
        interpolate({}, grid.c_in, grid.c_out, False, 64, 64, step)


def test_regime_points():
    axis = Axis([8, 16, 32], [5, 13, 29])
    assert regime_points(axis, 24, 8) == [8, 16, 32]
    assert regime_points(axis, 20, 8) == [5, 13, 29]
    assert regime_points(Axis([8, 16], []), 20, 8) == [8, 16]  # empty regime: all points
    assert regime_points(Axis([], [5]), 16, 8) == [5]
    assert regime_points(Axis([64], [], fixed=True), 37, 8) == [64]


def test_fixed_axis_ignores_the_asked_width():
    step = 8
    block = Block("conv1", "conv", CONV, 3, 64, in_fixed=True)
    grid = plan_signature(CONV, [block], step)
    f = bilinear(0.1, 0.0, 0.01, 0.0)
    values = {cell: f(*cell) for cell in grid.cells}
    assert 48 in grid.c_out.points() and 40 not in grid.c_out.points()
    ms, exact = interpolate(values, grid.c_in, grid.c_out, False, 3, 48, step)
    assert ms == pytest.approx(f(3, 48)) and exact is True
    ms, exact = interpolate(values, grid.c_in, grid.c_out, False, 3, 40, step)
    assert ms == pytest.approx(f(3, 40)) and exact is False
    ms, _ = interpolate(values, grid.c_in, grid.c_out, False, 3, 37, step)
    assert ms == pytest.approx(f(3, 37))


def test_grouped_conv_off_step_width_is_predictable_from_its_own_grid():
    sig = dict(CONV, groups=6)
    grid = plan_signature(sig, [Block("g", "conv", sig, 48, 96)], 8)
    values = {
        cell: 1.0 + 0.01 * cell[0] + 0.01 * cell[1] for cell in grid.cells
    }  # every planned cell measured
    ms, _ = interpolate(
        values, grid.c_in, grid.c_out, False, 30, 60, 8
    )  # 30 and 60 are valid: divisible by 6
    assert ms > 0


def _entry(tied=False):
    from edgeprune.latency.grid import Axis

    axis = Axis([8, 40, 64], [29, 61])
    sig = {"kind": "pool", "op": "MaxPool"} if tied else {"kind": "conv", "groups": 1}
    return {"signature": sig, "c_in": axis.to_dict(), "c_out": axis.to_dict(), "tied": tied}


def test_refine_adds_an_on_step_point_where_neighbouring_cells_jump():
    from edgeprune.latency.grid import refine

    entry = _entry()
    # Latency proportional to c_in·c_out, except a cliff between 40 and 64 output channels.
    values = {(i, o): i * o * (2.0 if o > 40 else 1.0) for i in (8, 29, 40, 61, 64) for o in (8, 29, 40, 61, 64)}
    new = refine(entry, values, step=8)
    assert {o for _, o in new} >= {48} or {o for _, o in new} >= {56}
    added = set(entry["c_out"]["aligned"]) - {8, 40, 64}
    assert len(added) == 1 and all(w % 8 == 0 and 40 < w < 64 for w in added)
    assert entry["c_in"]["aligned"] == [8, 40, 64]  # no jump along c_in: that axis is unchanged
    assert sorted(new) == sorted((i, o) for i in (8, 29, 40, 61, 64) for o in added)


def test_refine_leaves_a_smooth_grid_alone_and_handles_tied_widths():
    from edgeprune.latency.grid import refine

    smooth = {(i, o): 0.1 + i * o for i in (8, 29, 40, 61, 64) for o in (8, 29, 40, 61, 64)}
    entry = _entry()
    assert refine(entry, smooth, step=8) == [] and entry["c_out"]["aligned"] == [8, 40, 64]
    tied = _entry(tied=True)
    values = {(w, w): (w * 3.0 if w > 40 else float(w)) for w in (8, 29, 40, 61, 64)}
    new = refine(tied, values, step=8)
    assert len(new) == 1 and new[0][0] == new[0][1] and 40 < new[0][0] < 64


def test_a_one_point_regime_is_not_read_as_a_constant_nor_called_exact():
    """An off-step regime holding only a fixed input width (3) must not predict every off-step width as that cell."""
    from edgeprune.latency.grid import Axis
    from edgeprune.latency.predict import interpolate

    values = {(3, 16): 1.0, (16, 16): 5.0}
    c_in, c_out = Axis([16], [3]), Axis([16], [])
    ms, exact = interpolate(values, c_in, c_out, False, 12, 16, step=16)
    assert not exact
    assert ms == pytest.approx(1.0 + (12 - 3) / (16 - 3) * 4.0)  # linear between the two measured widths
    assert interpolate(values, c_in, c_out, False, 3, 16, step=16) == (1.0, True)
    assert interpolate(values, c_in, c_out, False, 16, 16, step=16) == (5.0, True)
