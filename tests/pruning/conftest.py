"""The tiny CNN's latency table, built once per session by the real profile code against the formula device.

Logic tests (solver, measure-and-tighten, round trips) need budgets that are reachable on any machine, so the
table's cells and models are answered by tests/formula_device.py; `measure_table(..., formula=False)` times them on
this CPU's ONNX Runtime instead, for tests that assert only machine-independent properties.
"""

from __future__ import annotations

import pytest

FAST_CELLS = {"passes": 2, "runs": 10, "warmup_runs": 10, "warmup_s": 0.01, "pass_s": 0.005, "max_spread": 0.5,
              "extra_passes": 0}
FAST_MODELS = {"passes": 3, "runs": 50, "warmup_runs": 20, "warmup_s": 0.1, "pass_s": 0.05, "max_spread": 0.5,
               "extra_passes": 0}


def measure_table(loaded, cache_path, variants: int = 0, formula: bool = True):
    from edgeprune.devices import load_registry, open_device
    from edgeprune.latency.build import ProfileOptions, profile_model
    from edgeprune.latency.cache import MeasurementCache

    if formula:
        from tests.formula_device import install

        with pytest.MonkeyPatch.context() as patch:
            install(patch)
            return measure_table(loaded, cache_path, variants, formula=False)

    options = ProfileOptions(variants=variants, calibration_variants=2, estimator=dict(FAST_CELLS),
                             model_estimator=dict(FAST_MODELS))
    cache = MeasurementCache(cache_path)
    try:
        with open_device("cpu", None, {}, load_registry()) as session:
            return profile_model(loaded, session.spec, session.facts, session.target, options, cache).table
    finally:
        cache.close()


def tiny_loaded():
    from edgeprune.models import LoadedModel, state_dict_sha256
    from tests.pruning.tiny import tiny_cnn

    module = tiny_cnn()
    return LoadedModel("tiny-cnn", module, None, (1, 3, 32, 32), "vision", True, state_dict_sha256(module), [])


@pytest.fixture(scope="session")
def tiny_table(tmp_path_factory):
    """(LatencyTable, path) of the tiny CNN."""
    path = tmp_path_factory.mktemp("table") / "tiny.json"
    table = measure_table(tiny_loaded(), path.with_suffix(".sqlite"))
    table.save(path)
    return table, path


@pytest.fixture(scope="module")
def tiny_cost(tiny_table):
    """(CostModel, unit groups, table) of the tiny CNN on the formula device's table."""
    from edgeprune.pruning.solver import CostModel
    from edgeprune.pruning.space import build_space
    from edgeprune.pruning.widths import probe_width_model

    table, _ = tiny_table
    loaded = tiny_loaded()
    module = loaded.module
    space = lambda m: build_space(m, loaded.example_inputs())  # noqa: E731
    widths = probe_width_model(loaded, module, loaded.example_inputs(), space)
    return CostModel(table, widths), space(module), table
