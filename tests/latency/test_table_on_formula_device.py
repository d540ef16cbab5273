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


def profile_on(scale, cache_path, variants: int = 4):
    """profile_model on a formula device whose law is bent by `scale(kind, key, ms)`: (result, target)."""
    from edgeprune.devices import load_registry, open_device
    from edgeprune.latency.build import ProfileOptions, profile_model
    from edgeprune.latency.cache import MeasurementCache
    from tests.formula_device import install
    from tests.pruning.conftest import FAST_CELLS, FAST_MODELS

    options = ProfileOptions(variants=variants, calibration_variants=2, estimator=dict(FAST_CELLS),
                             model_estimator=dict(FAST_MODELS))
    with pytest.MonkeyPatch.context() as patch:
        opened = install(patch, scale)
        cache = MeasurementCache(cache_path)
        try:
            with open_device("cpu", None, {}, load_registry()) as session:
                return profile_model(tiny_loaded(), session.spec, session.facts, session.target, options, cache), \
                    opened[-1]
        finally:
            cache.close()


def test_cells_cached_in_another_machine_state_are_remeasured_before_they_reach_the_table(tmp_path):
    """Cells cached while the machine ran 2x slower would make today's table wrong by that factor, silently."""
    cache = tmp_path / "c.sqlite"
    busy, _ = profile_on(lambda kind, key, ms: 2 * ms, cache)
    assert busy.measured_cells > 0 and busy.table.profile["machine_state"]["stale_cells"] == 0
    idle, target = profile_on(lambda kind, key, ms: ms, cache)
    state = idle.table.profile["machine_state"]
    # every cell was in the cache, but from the busy state: none was reused
    assert state["stale_cells"] == len(idle.table.cells) == idle.measured_cells and idle.cached_cells == 0
    remeasured = [p for p in target.plans if p.get("cells") and len(p["cells"]) == len(idle.table.cells)]
    assert remeasured, "the stale cells were not measured again"
    assert state["stale_models"] == 1 + 4 + 2  # the dense model, 4 held-out and 2 calibration variants
    assert any("re-measured" in w for w in idle.warnings)
    fresh, _ = profile_on(lambda kind, key, ms: ms, tmp_path / "fresh.sqlite")
    assert {k: c["estimate_ms"] for k, c in idle.table.cells.items()} == pytest.approx(
        {k: c["estimate_ms"] for k, c in fresh.table.cells.items()})
    assert idle.table.fidelity["mape"] < 1e-9  # the idle whole-model runs and the cells agree again
    # the same state again: nothing is stale, nothing re-measured, nothing to warn about
    again, target = profile_on(lambda kind, key, ms: ms, cache)
    assert again.table.profile["machine_state"]["stale_cells"] == 0
    assert not any("machine" in w for w in again.warnings)
    assert sum(len(p.get("cells", [])) for p in target.plans) == 1  # only the state probe
    assert not any(p.get("models") for p in target.plans)


def test_a_machine_that_speeds_up_while_profiling_is_reported(tmp_path):
    """The state probe after the whole-model runs reads 40 % faster than the cells' jobs: a busy machine."""
    readings = []

    def scale(kind, key, ms):
        if kind == "reference":
            readings.append(ms)
            return ms * (1.0 if len(readings) == 1 else 0.6)  # the first job's state, then a faster one
        return ms

    result, _ = profile_on(scale, tmp_path / "c.sqlite")
    state = result.table.profile["machine_state"]
    low, high = state["reference_range_ms"]
    assert high / low == pytest.approx(1 / 0.6, rel=1e-6)
    assert any("speed changed by 67%" in w and "idle machine" in w for w in result.warnings)
