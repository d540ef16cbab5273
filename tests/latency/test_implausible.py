"""Cells measured during a noise burst are found by dominance within a regime, and only those."""

from edgeprune.latency.build import implausible


def cell(c_in, c_out, sig="conv-a"):
    return {"key": f"{sig}@{c_in}x{c_out}", "sig_key": sig, "c_in": c_in, "c_out": c_out}


def test_a_narrow_cell_slower_than_a_wider_one_is_suspect():
    cells = [cell(64, 64), cell(64, 128), cell(128, 128), cell(128, 64)]
    stats = {c["key"]: {"estimate_ms": ms} for c, ms in zip(cells, [9.0, 2.0, 3.5, 2.1])}
    assert [c["key"] for c in implausible(cells, stats, 8)] == ["conv-a@64x64"]


def test_off_step_cells_may_be_slower_than_wider_on_step_ones():
    """The staircase: an off-step width can be several times slower than a wider on-step width; that is real."""
    cells = [cell(60, 60), cell(64, 64), cell(61, 61)]
    stats = {c["key"]: {"estimate_ms": ms} for c, ms in zip(cells, [6.0, 1.0, 6.2])}
    assert implausible(cells, stats, 8) == []


def test_signatures_are_compared_only_with_themselves():
    cells = [cell(64, 64, "conv-a"), cell(128, 128, "conv-b")]
    stats = {cells[0]["key"]: {"estimate_ms": 10.0}, cells[1]["key"]: {"estimate_ms": 1.0}}
    assert implausible(cells, stats, 8) == []
