"""The whole profile path (plan, cells, cache, calibration, held-out variants) on a device whose law is known.

tests/formula_device.py answers every cell and model from a formula that is bilinear in the widths within each
regime (on / off the channel step) plus a fixed cost per call, which is what the interpolation rule and the
additive calibration assume. So a table built against it must predict models it never saw, on and off the
step, exactly; any error here is a bug in planning, interpolation or calibration, never machine noise.
"""

import pytest

from tests.formula_device import OVERHEAD_MS
from tests.pruning.conftest import measure_table, tiny_loaded


def test_a_known_law_is_predicted_exactly_on_and_off_the_step(tmp_path):
    table = measure_table(tiny_loaded(), tmp_path / "c.sqlite", variants=6)
    assert table.step == 8
    cal = table.calibration
    assert cal["kind"] == "additive"
    # n cells each pay one call's overhead; the whole model pays it once
    assert cal["value"] == pytest.approx(-(len(table.layers) - 1) * OVERHEAD_MS, rel=1e-6)
    fid = table.fidelity
    assert fid["n_variants"] == 6 and fid["aligned"]["n"] == 3 and fid["arbitrary"]["n"] == 3
    assert fid["mape"] < 1e-9 and fid["within_5"] == 1.0
    assert fid["macs"]["mape"] > 0.05  # counting MACs misses the off-step penalty and the fixed costs
