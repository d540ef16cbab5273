"""The device's result record is checked when it arrives: one line naming the field, nothing cached."""

import json

import pytest

from edgeprune.errors import DeviceError
from edgeprune.latency.build import Measurer
from edgeprune.latency.cache import MeasurementCache
from edgeprune.latency.result import check_result

STATS = {"estimate_ms": 0.5, "min_ms": 0.45, "median_ms": 0.52, "p90_ms": 0.6, "mad_ms": 0.01, "n": 60,
         "passes": 3, "pass_spread": 0.02}


def reply(**changes) -> dict:
    out = {"format_version": 1, "kind": "result", "facts": {}, "cells": {"conv@8x8": dict(STATS)},
           "models": {"m": [dict(STATS)]}, "errors": {}, "drift": [{"group": 0, "drift": 0.01}],
           "model_round_s": [0.3], "wall_s": 1.0}
    out.update(changes)
    return out


def test_a_well_formed_result_passes_unchanged():
    assert check_result(reply(), "dev") == reply()


@pytest.mark.parametrize("edit, line", [
    (lambda r: r["cells"]["conv@8x8"].update(estimate_ms=None),
     "cells['conv@8x8'].estimate_ms: expected a number >= 0, got null"),
    (lambda r: r["cells"]["conv@8x8"].update(estimate_ms=-2.0),
     "cells['conv@8x8'].estimate_ms: expected a number >= 0, got -2.0"),
    (lambda r: r.update(cells=[]), "cells: expected an object, got a list"),
    (lambda r: r.pop("models"), "models: missing, expected an object"),
    (lambda r: r["models"].update(m=[]), "models['m']: expected a non-empty list, got a list"),
    (lambda r: r.update(errors={"conv@8x8": "boom"}), "errors['conv@8x8']: expected an object, got \"boom\""),
    (lambda r: r.update(errors={"k": {"error": {"hint": "x"}}}), "errors['k'].error.message: missing, expected a string"),
])
def test_a_malformed_result_is_one_device_error_line(edit, line):
    data = reply()
    edit(data)
    with pytest.raises(DeviceError) as caught:
        check_result(data, "me@jetson:22")
    assert caught.value.message == f"the measurement job on me@jetson:22 returned a malformed result: {line}"
    assert "different edgeprune versions" in caught.value.hint


class FakeTarget:
    where = "fake-device"

    def __init__(self, answer: dict):
        self.answer = answer

    def run_profilers(self, args, files=None, on_progress=None, timeout=None) -> dict:
        return json.loads(json.dumps(self.answer))


def test_the_measurer_refuses_a_malformed_reply_and_caches_nothing(tmp_path):
    bad = reply(cells={"conv@8x8": dict(STATS, estimate_ms=None)})
    cache = MeasurementCache(tmp_path / "cache.sqlite")
    try:
        measurer = Measurer(FakeTarget(bad), cache, {"device": "cpu"}, {}, {}, {}, tmp_path)
        with pytest.raises(DeviceError, match=r"cells\['conv@8x8'\].estimate_ms"):
            measurer.cells([{"key": "conv@8x8"}], None, 8, lambda event: None)
        assert cache.get_many(measurer.fp_key, "cell", ["conv@8x8"]) == {}
    finally:
        cache.close()


def test_what_the_device_side_returns_fits_the_schema(tmp_path):
    """A real `run_plan` reply (one cell, one model) passes: the schema and the device side agree."""
    import onnx
    from edgeprune.profilers import synth
    from edgeprune.profilers.measure import run_plan

    onnx.save(synth.build_cell({"kind": "gemm", "rows": 2}, 8, 8, seed=1), str(tmp_path / "m.onnx"))
    fast = {"passes": 3, "runs": 3, "warmup_runs": 2, "warmup_s": 0.05, "pass_s": 0.0, "max_spread": 100.0,
            "extra_passes": 0}
    plan = {"format_version": 1, "kind": "plan", "runtime": {"backend": "onnxruntime", "threads": 1},
            "estimator": fast, "models": [{"key": "m", "file": "m.onnx"}],
            "cells": [{"key": "gemm@16x4", "signature": {"kind": "gemm", "rows": 1}, "c_in": 16, "c_out": 4}]}
    result = json.loads(json.dumps(run_plan(plan, base_dir=str(tmp_path))))
    assert check_result(result, "here")["cells"]["gemm@16x4"]["estimate_ms"] > 0
