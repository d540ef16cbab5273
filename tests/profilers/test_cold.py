"""Cold cells: a cell timed while its weights come from memory, by rotating over copies of them (real ORT)."""

import numpy as np
import pytest

from profilers import FORMAT_VERSION, measure, synth
from profilers.backends.ort import OrtRunner
from profilers.measure import COLD_FOOTPRINT, MAX_COPIES, Rotation, cold_copies, measure_cells, run_plan
from profilers.timing import Estimator

FAST = {"passes": 3, "runs": 5, "warmup_runs": 2, "warmup_s": 0.05, "pass_s": 0.0, "max_spread": 100.0,
        "extra_passes": 0}
CONV = {"kind": "conv", "kernel": [3, 3], "stride": [1, 1], "pads": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1,
        "hw": [2, 2], "act": "relu", "residual": False}


def make_runner(model):
    return OrtRunner(model, threads=1, spinning=False)


def conv_bytes(c_in, c_out):
    return (c_out * c_in * 9 + c_out) * 4


@pytest.mark.parametrize("copy_bytes, llc, expected", [
    (conv_bytes(64, 64), 32 << 20, MAX_COPIES),  # 148 kB: 64 copies hold 9 MB, under 2 x LLC: capped
    (conv_bytes(256, 256), 32 << 20, 29),  # 2.4 MB: 29 copies hold 68 MB >= 64 MB
    (conv_bytes(512, 512), 32 << 20, 8),
    (100 << 20, 32 << 20, 2),  # bigger than the cache: still two, so a copy never runs twice in a row
    (conv_bytes(64, 64), None, 2),  # no cache size known
])
def test_copies_hold_twice_the_cache_unless_capped(copy_bytes, llc, expected):
    copies = cold_copies(copy_bytes, llc)
    assert copies == expected
    if llc and 2 < copies < MAX_COPIES:
        assert copies * copy_bytes >= COLD_FOOTPRINT * llc > (copies - 1) * copy_bytes


def test_a_cold_cell_rotates_over_distinct_sessions_that_share_its_activations(monkeypatch):
    used = []

    class Watched(Rotation):
        def infer(self):
            used.append(id(self.runners[self.next].session))
            super().infer()

        def activate(self):
            super().activate()
            self.sessions = {id(r.session) for r in self.runners}
            rotations.append(self)

    rotations = []
    monkeypatch.setattr(measure, "Rotation", Watched)
    cell = {"key": "c#cold", "signature": CONV, "c_in": 32, "c_out": 32, "state": "cold"}
    llc = 32 << 20  # asks for 1814 copies of 37 kB: capped at 7 here
    results, errors, _ = measure_cells([cell], make_runner, Estimator.from_dict(FAST), llc_bytes=llc,
                                       max_copies=7)
    assert not errors
    stats = results["c#cold"]
    rotation = rotations[0]
    assert stats["copies"] == 7 == len(rotation.runners) == len(rotation.sessions)
    assert stats["copy_bytes"] == conv_bytes(32, 32) and stats["llc_bytes"] == llc and stats["shared_io"]
    assert set(used) == rotation.sessions  # every copy ran
    assert all(a != b for a, b in zip(used, used[1:]))  # never the same copy twice in a row
    assert max(rotation.used) - min(rotation.used) <= 1 and sum(rotation.used) == len(used)
    assert stats["n"] >= 3 and stats["estimate_ms"] > 0
    assert not any(r.active for r in rotation.runners)  # every copy was released


def test_copies_compute_the_cell_and_write_into_the_first_copys_buffers():
    model = synth.build_cell(CONV, 24, 16).SerializeToString()  # off the step: ORT's other conv path
    first = make_runner(model)
    first.activate()
    copy = first.copy()
    copy.activate()
    try:
        assert copy.optimized and copy.model_path != model  # loads the graph ORT optimised for the first
        np.testing.assert_array_equal(copy.outputs()["Y"], first.outputs()["Y"])
        assert copy.share_io(first)
        copy.infer()
        assert copy.binding.get_outputs()[0].data_ptr() == first.binding.get_outputs()[0].data_ptr()
        assert copy._io["inputs"]["X"].data_ptr() == first._io["inputs"]["X"].data_ptr()
    finally:
        copy.deactivate()
        first.deactivate()


def test_a_cell_without_weights_is_copied_twice():
    """A pool holds nothing to make cold; its rotation is the smallest one (the host plans none)."""
    cell = {"key": "p#cold", "signature": {"kind": "pool", "op": "GlobalAveragePool", "hw": [4, 4]},
            "c_in": 8, "c_out": 8, "state": "cold"}
    results, errors, _ = measure_cells([cell], make_runner, Estimator.from_dict(FAST), llc_bytes=32 << 20)
    assert not errors and results["p#cold"]["copies"] == 2 and results["p#cold"]["copy_bytes"] == 0


def test_run_plan_times_warm_and_cold_cells_in_their_own_groups(tmp_path):
    cells = [{"key": "g@%d" % c, "signature": {"kind": "gemm", "rows": 1}, "c_in": c, "c_out": c} for c in (8, 16)]
    cells += [dict(c, key=c["key"] + "#cold", state="cold") for c in cells]
    cells += [{"key": "conv#cold", "signature": CONV, "c_in": 8, "c_out": 8, "state": "cold"}]
    plan = {"format_version": FORMAT_VERSION, "kind": "plan",
            "runtime": {"backend": "onnxruntime", "threads": 1, "precision": "fp32"}, "estimator": FAST,
            "cells": cells, "models": [], "group_size": 24, "cold_group_size": 2, "llc_bytes": 1 << 20,
            "max_copies": 4, "reference": dict(cells[0], key="reference")}
    result = run_plan(plan, base_dir=str(tmp_path))
    assert set(result["cells"]) == {c["key"] for c in cells} and not result["errors"]
    assert len(result["drift"]) == 1 + 2  # one warm group, three cold cells in groups of two
    for key, stats in result["cells"].items():
        assert ("copies" in stats) == key.endswith("#cold")
    assert result["cells"]["g@8#cold"]["copies"] == 4  # 1 MB "cache" / 288 bytes: capped at max_copies
    assert result["cells"]["conv#cold"]["llc_bytes"] == 1 << 20


@pytest.mark.parametrize("signature, c_in, c_out", [
    (CONV, 24, 40), (dict(CONV, groups="depthwise"), 16, 16), (dict(CONV, groups=4), 16, 32),
    ({"kind": "gemm", "rows": 1}, 12, 20), ({"kind": "gemm", "rows": 3, "rank": 3, "bias": False}, 12, 20),
    ({"kind": "attention", "tokens": 4, "head_dim": 8, "kv_groups": 2}, 32, 4),
    ({"kind": "attention", "tokens": 1, "past": 4, "head_dim": 8, "bias": True}, 32, 2),
    ({"kind": "mlp", "tokens": 2, "act": "swiglu"}, 16, 24), ({"kind": "mlp", "tokens": 2, "act": "gelu", "bias": True}, 16, 24),
    ({"kind": "norm", "tokens": 2, "type": "rms"}, 16, 16), ({"kind": "norm", "tokens": 2, "type": "layer_fused"}, 16, 16),
    ({"kind": "pool", "op": "GlobalAveragePool", "hw": [4, 4]}, 8, 8),
    ({"kind": "eltwise", "op": "Add", "hw": [4, 4]}, 8, 8),
])
def test_weight_elems_counts_the_parameters_the_cell_holds(signature, c_in, c_out):
    """The host prices a candidate's footprint with weight_elems; it must count what the cells really hold."""
    model = synth.build_cell(signature, c_in, c_out)
    params = [i for i in model.graph.initializer
              if i.name in ("W", "B", "gamma", "beta") or i.name.endswith(("_W", "_B"))]
    assert synth.weight_elems(signature, c_in, c_out) == sum(int(np.prod(i.dims)) for i in params)
