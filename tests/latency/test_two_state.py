"""Two-state tables: cold cells planned only when the weights can leave the cache, the state picked per candidate.

A candidate whose weights exceed the device's last-level cache reads them from memory on every run; a table
predicts it from its cells' cold readings, and a candidate that fits from the warm ones (docs/profiling.md).
"""

import json
from pathlib import Path

import numpy as np
import pytest
from edgeprune.profilers.synth import weight_elems

from edgeprune.errors import BadInputError
from edgeprune.latency.blocks import Block
from edgeprune.latency.build import (
    COLD_ABOVE,
    COLD_KEY,
    COLD_MATTERS,
    WARM_BELOW,
    ProfileOptions,
    cold_twins,
    memory_rule,
    profile_model,
    table_cells,
)
from edgeprune.latency.grid import plan_signature
from edgeprune.latency.predict import MissingCellError
from edgeprune.latency.table import FORMAT_VERSION, WARM_ONLY_VERSION, LatencyTable, content_id

CONV = {"kind": "conv", "kernel": [3, 3], "stride": [1, 1], "pads": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1,
        "hw": [2, 2], "act": "relu", "residual": False}
POOL = {"kind": "pool", "op": "GlobalAveragePool", "hw": [2, 2]}
STEP = 8
COLD = 3.0  # the law below: weights from memory make a conv 3x slower


def warm_ms(ci, co):
    return 0.01 + 0.0001 * ci * co


def conv_bytes(ci, co):
    return weight_elems(CONV, ci, co) * 4


def make_table(llc, warm_below=1.0, cold_above=1.0, cold=True):
    """A conv (64x64 at most) and a pool; the conv's cells carry a cold reading COLD x the warm one."""
    blocks = [Block("conv", "conv", CONV, 64, 64), Block("pool", "pool", POOL, 64, 64)]
    signatures, cells, stats = {}, [], {}
    for block in blocks:
        grid = plan_signature(block.signature, [block], STEP, "coarse")
        signatures[block.sig_key] = grid.to_dict()
        for ci, co in grid.cells:
            cell = {"key": f"{block.sig_key}@{ci}x{co}", "kind": block.kind, "sig_key": block.sig_key,
                    "signature": block.signature, "c_in": ci, "c_out": co}
            cells.append(cell)
            ms = warm_ms(ci, co) if block.kind == "conv" else 0.002
            stats[cell["key"]] = {"estimate_ms": ms, "min_ms": ms, "median_ms": ms, "p90_ms": ms, "mad_ms": 0.0,
                                  "n": 9}
    memory = {"llc_bytes": llc, "bytes_per_weight": 4, "warm_below": warm_below, "cold_above": cold_above,
              "cold_min_bytes": 0} if cold else {}
    if cold:
        for twin in cold_twins(cells, memory):
            ms = COLD * stats[twin["key"][:-len(COLD_KEY)]]["estimate_ms"]
            stats[twin["key"]] = dict(stats[twin["key"][:-len(COLD_KEY)]], estimate_ms=ms, copies=5)
    table = LatencyTable({"device": "cpu"}, {"backend": "onnxruntime", "threads": 1, "precision": "fp32"},
                         {"spec": "test"}, {"name": "median_of_pass_min"}, STEP, signatures, table_cells(cells, stats),
                         {b.name: {"kind": b.kind, "c_in": b.c_in, "c_out": b.c_out, "signature": b.sig_key}
                          for b in blocks}, memory=memory)
    return table, blocks


def at(blocks, width):
    return [Block(b.name, b.kind, b.signature, width, width) for b in blocks]


# -- planning ---------------------------------------------------------------------------------------------
def test_cold_cells_are_planned_only_when_the_dense_weights_exceed_the_cache():
    blocks = [Block("conv", "conv", CONV, 64, 64), Block("pool", "pool", POOL, 64, 64)]
    dense = conv_bytes(64, 64)
    fits = int(dense / WARM_BELOW) + 1  # the dense model under WARM_BELOW × LLC: no candidate is predicted cold
    assert memory_rule(blocks, {"llc_bytes": fits}, "fp32") == {}
    beyond = int(dense / WARM_BELOW) - 1
    rule = memory_rule(blocks, {"llc_bytes": beyond, "llc_source": "sysfs index3"}, "fp32")
    assert rule["dense_weight_bytes"] == dense and rule["llc_bytes"] == beyond and rule["bytes_per_weight"] == 4
    assert (rule["warm_below"], rule["cold_above"]) == (WARM_BELOW, COLD_ABOVE) and WARM_BELOW <= COLD_ABOVE
    assert memory_rule(blocks, {"llc_bytes": None}, "fp32") == {}  # the device could not say: warm only
    assert memory_rule(blocks, {"llc_bytes": beyond}, "fp32", cold="never") == {}
    assert memory_rule(blocks, {"llc_bytes": 100 * dense}, "fp32", cold="always")
    # the cache read is the CPU's: a GPU runtime gets no cold cells
    cpu = {"backend": "onnxruntime", "provider": "CPUExecutionProvider"}
    assert memory_rule(blocks, {"llc_bytes": beyond}, "fp32", runtime=cpu)
    assert memory_rule(blocks, {"llc_bytes": beyond}, "fp32", runtime={"backend": "tensorrt", "provider": None}) == {}
    assert memory_rule(blocks, {"llc_bytes": beyond}, "fp32",
                       runtime={"backend": "onnxruntime", "provider": "CUDAExecutionProvider"}) == {}
    # half the bytes per weight at fp16: the same model fits
    assert memory_rule(blocks, {"llc_bytes": fits // 2 + 1}, "fp16") == {}


def test_cold_twins_are_the_cells_with_enough_weights_under_their_own_key():
    cells = [{"key": "c@8x8", "signature": CONV, "c_in": 8, "c_out": 8},
             {"key": "c@64x64", "signature": CONV, "c_in": 64, "c_out": 64},
             {"key": "p@8x8", "signature": POOL, "c_in": 8, "c_out": 8}]
    twins = cold_twins(cells, {"bytes_per_weight": 4, "cold_min_bytes": 0})
    assert twins == [dict(cells[0], key="c@8x8#cold", state="cold"), dict(cells[1], key="c@64x64#cold", state="cold")]
    assert cells[0] == {"key": "c@8x8", "signature": CONV, "c_in": 8, "c_out": 8}  # the warm cell is untouched
    # a cell too small to fill the cache within MAX_COPIES copies is not timed cold (the 8x8 conv: 2.3 kB)
    rule = memory_rule([Block("conv", "conv", CONV, 64, 64)], {"llc_bytes": 64 * conv_bytes(8, 8) + 64}, "fp32",
                       cold="always")
    assert rule["cold_min_bytes"] == conv_bytes(8, 8) + 1
    assert [t["key"] for t in cold_twins(cells, rule)] == ["c@64x64#cold"]


# -- prediction ---------------------------------------------------------------------------------------------
def test_prediction_switches_state_with_the_candidates_footprint():
    llc = conv_bytes(48, 48)  # the dense conv (64x64) is beyond the cache, a 32x32 candidate is well inside
    table, blocks = make_table(llc)
    dense = table.features(blocks)
    assert dense["weight_bytes"] == conv_bytes(64, 64) and dense["cold_share"] == 1.0
    assert dense["cells_ms"] == pytest.approx(COLD * warm_ms(64, 64) + 0.002)
    small = table.features(at(blocks, 32))
    assert small["cold_share"] == 0.0 and small["cells_ms"] == pytest.approx(warm_ms(32, 32) + 0.002)
    assert small["cells_cold_ms"] == pytest.approx(COLD * warm_ms(32, 32) + 0.002)  # recorded beside it
    # the state follows the footprint, not the widths: the same blocks against a larger cache read warm
    bigger, _ = make_table(conv_bytes(64, 64) + 1)
    assert bigger.predict_ms(blocks) == pytest.approx(warm_ms(64, 64) + 0.002)


def test_a_blend_rule_mixes_the_states_linearly_between_its_bounds():
    llc = conv_bytes(64, 64)
    table, blocks = make_table(llc, warm_below=0.5, cold_above=1.5)
    assert table.cold_share(0.5 * llc) == 0.0 and table.cold_share(1.5 * llc) == 1.0
    assert table.cold_share(llc) == pytest.approx(0.5)
    f = table.features(blocks)
    assert f["cells_ms"] == pytest.approx(0.5 * f["cells_warm_ms"] + 0.5 * f["cells_cold_ms"])


def test_a_cell_with_weights_but_no_cold_reading_is_missing_not_warm():
    table, blocks = make_table(conv_bytes(48, 48))
    key = next(k for k, c in table.cells.items() if c["kind"] == "conv" and c["c_in"] == c["c_out"] == 64)
    del table.cells[key]["cold_ms"]
    table.forget_values()
    with pytest.raises(MissingCellError):
        table.predict_ms(blocks)
    assert table.block_ms(blocks[1], "cold") == table.block_ms(blocks[1])  # a pool has no weights: same reading
    table.memory["cold_min_bytes"] = conv_bytes(64, 64) + 1  # a cell that small is not timed cold: reads warm
    table.forget_values()
    assert table.block_ms(blocks[0], "cold") == table.block_ms(blocks[0])


# -- file format ----------------------------------------------------------------------------------------------
def test_a_two_state_table_is_format_2_and_round_trips(tmp_path):
    table, blocks = make_table(conv_bytes(48, 48))
    path = tmp_path / "t.json"
    table.save(path)
    data = json.loads(path.read_text())
    assert data["format_version"] == FORMAT_VERSION == 2 and data["memory"]["llc_bytes"] == conv_bytes(48, 48)
    assert all("cold_ms" in c for c in data["cells"].values() if c["kind"] == "conv")
    assert not any("cold_ms" in c for c in data["cells"].values() if c["kind"] == "pool")
    loaded = LatencyTable.load(path)
    assert loaded.id == table.id and loaded.predict_ms(blocks) == table.predict_ms(blocks)
    del data["memory"]
    data["id"] = content_id(data)
    path.write_text(json.dumps(data))
    with pytest.raises(BadInputError, match="memory"):
        LatencyTable.load(path)


def test_a_table_without_cold_cells_is_written_and_predicts_as_before(tmp_path):
    table, blocks = make_table(conv_bytes(48, 48), cold=False)
    data = table.to_dict()
    assert data["format_version"] == WARM_ONLY_VERSION and "memory" not in data
    assert not table.two_state and table.cold_share(10 ** 12) == 0.0
    assert table.predict_ms(blocks) == pytest.approx(warm_ms(64, 64) + 0.002)


def test_old_tables_still_load_with_their_ids_and_predictions():
    """Tables written before two-state tables existed load, keep their id, read warm. The two are frozen copies of
    benchmark tables of 2026-11-23 (benches rewrite bench/results/tables, so the test keeps its own)."""
    paths = sorted((Path(__file__).resolve().parent / "data").glob("format1-*.json"))
    assert len(paths) == 2
    for path in paths:
        stored = json.loads(path.read_text())
        table = LatencyTable.load(path)
        assert stored["format_version"] == 1 and not table.two_state
        assert table.id == stored["id"]  # re-serialised as version 1: bundles and provenance keep pointing at it
        blocks = [Block(name, layer["kind"], table.signatures[layer["signature"]]["signature"], layer["c_in"],
                        layer["c_out"]) for name, layer in table.layers.items() if "signature" in layer]
        f = table.features(blocks)
        assert "cold_share" not in f
        assert f["cells_ms"] == pytest.approx(sum(table.block_ms(b)[0] for b in blocks))


# -- the solver's cost model ------------------------------------------------------------------------------------
class Widths:
    """Two convs in a chain, each group setting one width (the interface of pruning/widths.WidthModel)."""

    def __init__(self):
        self.rules = [0, 1]

    def block(self, i, units):
        return Block(f"conv{i}", "conv", CONV, units[0] if i else 64, units[i])

    def affected(self, group):
        return [0, 1] if group == 0 else [1]


def test_the_solvers_deltas_are_exact_across_the_state_switch():
    from edgeprune.pruning.solver import CostModel

    for rule in ((1.0, 1.0), (0.5, 1.5)):
        table, _ = make_table(conv_bytes(64, 64) + conv_bytes(64, 40), *rule)  # dense two convs: just beyond
        table.calibration = {"kind": "ratio", "value": 1.2}
        cost = CostModel(table, Widths())
        units = [64, 64]
        terms = cost.terms(units)
        for group, width in ((0, 48), (1, 40), (1, 16), (0, 8)):
            trial = list(units)
            trial[group] = width
            assert cost.delta(units, terms, group, width) == pytest.approx(cost.predict(trial) - cost.predict(units))
        assert cost.predict(units) == pytest.approx(table.predict_ms([Widths().block(i, units) for i in (0, 1)]))
        small = [16, 16]
        blocks = [Widths().block(i, small) for i in (0, 1)]
        assert table.features(blocks)["cold_share"] == 0.0
        assert cost.predict(small) == pytest.approx(table.predict_ms(blocks))


# -- the whole profile path on the formula device -----------------------------------------------------------------
def profile_tiny(tmp_path, llc, cold="auto", scale=None):
    from edgeprune.devices import load_registry, open_device
    from edgeprune.latency.cache import MeasurementCache
    from tests.formula_device import install
    from tests.pruning.conftest import FAST_CELLS, FAST_MODELS, tiny_loaded

    options = ProfileOptions(variants=2, calibration_variants=2, estimator=dict(FAST_CELLS),
                             model_estimator=dict(FAST_MODELS), cold=cold)
    with pytest.MonkeyPatch.context() as patch:
        opened = install(patch, scale)
        cache = MeasurementCache(tmp_path / "c.sqlite")
        try:
            with open_device("cpu", None, {}, load_registry()) as session:
                facts = dict(session.facts, llc_bytes=llc, llc_source="test")
                return profile_model(tiny_loaded(), session.spec, facts, session.target, options, cache), opened[-1]
        finally:
            cache.close()


def test_profile_measures_cold_cells_only_for_a_model_beyond_the_cache(tmp_path):
    slower = lambda kind, key, ms: COLD * ms if key.endswith(COLD_KEY) else ms  # noqa: E731
    fits, target = profile_tiny(tmp_path / "a", 1 << 30, scale=slower)  # the whole model fits
    assert not fits.table.two_state and fits.table.profile["cold_cells"] == 0
    assert not any(c.get("state") == "cold" for p in target.plans for c in p.get("cells", []))
    beyond, target = profile_tiny(tmp_path / "b", 256, scale=slower)
    table = beyond.table
    assert table.two_state and table.to_dict()["format_version"] == 2 and table.memory["llc_bytes"] == 256
    cold = [c for p in target.plans for c in p.get("cells", []) if c.get("state") == "cold"]
    assert cold and all(c["key"].endswith(COLD_KEY) for c in cold)
    assert table.profile["cold_cells"] == len({c["key"] for c in cold})
    for cell in table.cells.values():
        has_weights = weight_elems(table.signatures[cell["signature"]]["signature"], cell["c_in"], cell["c_out"])
        assert ("cold_ms" in cell) == bool(has_weights)
        if has_weights:
            assert cell["cold_ms"] == pytest.approx(COLD * cell["estimate_ms"])
    points = table.memory["calibration_points"]
    assert len(points) == 1 + 2 and all(p["features"]["cold_share"] == 1.0 for p in points)
    # the dense model is predicted from its cold cells (the formula device's whole models do not slow down,
    # so the calibration ratio takes the factor back out)
    assert table.calibration["dense_predicted_ms"] == pytest.approx(points[0]["features"]["cells_cold_ms"])
    again, target = profile_tiny(tmp_path / "b", 256, scale=slower)  # the cache keeps cold cells apart
    assert again.table.cells == table.cells and again.measured_cells == 0
    assert not any(c.get("state") == "cold" for p in target.plans for c in p.get("cells", []))
    assert np.isfinite(again.table.fidelity["mape"])


def test_a_compute_bound_model_keeps_a_warm_only_table_after_the_dense_cells_probe(tmp_path):
    """Cold cells that barely differ from warm ones (a compute-bound model) would only blur the table."""
    slightly = 1 + COLD_MATTERS / 2
    a_little = lambda kind, key, ms: slightly * ms if key.endswith(COLD_KEY) else ms  # noqa: E731
    result, target = profile_tiny(tmp_path, 256, scale=a_little)
    table = result.table
    probe = table.profile["cold_probe"]
    assert not table.two_state and table.to_dict()["format_version"] == 1
    assert not any("cold_ms" in c for c in table.cells.values())
    assert probe["two_state"] is False and probe["slowdown"] == pytest.approx(slightly - 1, rel=0.2)
    timed = [c for p in target.plans for c in p.get("cells", []) if c.get("state") == "cold"]
    own = {f"{name}" for name in (layer["signature"] + "@%dx%d" % (layer["c_in"], layer["c_out"])
                                  for layer in table.layers.values())}
    assert timed and probe["cells"] == len({c["key"] for c in timed})
    assert {c["key"][:-len(COLD_KEY)] for c in timed} <= own  # only the dense model's own cells were timed cold
    forced, _ = profile_tiny(tmp_path, 256, cold="always", scale=a_little)  # "always" keeps both states
    assert forced.table.two_state and forced.measured_cells == 0  # its warm cells came from the cache
