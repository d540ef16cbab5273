"""The TensorRT engine builder's device-independent parts: calibration samples, the engine/device check, the
request, and the refusals that come before TensorRT is needed (TensorRT itself cannot run on this machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from profilers import synth
from profilers.backends.trt import InputSpec
from profilers.engine import build, calibration_batches, check_engine
from profilers.errors import ProfilerError

IMAGE = InputSpec("pixel_values", np.float32, (1, 3, 8, 8))


def test_calibration_batches_are_batch_1_samples_of_the_input_dtype(tmp_path):
    data = np.arange(5 * 3 * 8 * 8, dtype=np.float64).reshape(5, 3, 8, 8)
    np.savez(tmp_path / "c.npz", inputs=data, labels=np.zeros(5))
    batches = calibration_batches(str(tmp_path / "c.npz"), [IMAGE])
    assert len(batches) == 5
    assert batches[2]["pixel_values"].shape == (1, 3, 8, 8) and batches[2]["pixel_values"].dtype == np.float32
    np.testing.assert_array_equal(batches[2]["pixel_values"][0], data[2].astype(np.float32))
    assert batches[0]["pixel_values"].flags["C_CONTIGUOUS"]
    assert len(calibration_batches(str(tmp_path / "c.npz"), [IMAGE], limit=3)) == 3


def test_calibration_batches_by_input_name_for_several_inputs(tmp_path):
    ids = InputSpec("input_ids", np.int64, (1, "seq"))
    mask = InputSpec("attention_mask", np.int64, (1, "seq"))
    np.savez(tmp_path / "c.npz", input_ids=np.ones((4, 16), np.int32), attention_mask=np.ones((4, 16), np.int32))
    batches = calibration_batches(str(tmp_path / "c.npz"), [ids, mask])
    assert len(batches) == 4 and batches[0]["input_ids"].dtype == np.int64 and batches[0]["input_ids"].shape == (1, 16)


@pytest.mark.parametrize("arrays, message", [
    ({"images": np.zeros((2, 3, 8, 8), np.float32)}, "no array for input(s) pixel_values"),
    ({"inputs": np.zeros((2, 3, 16, 16), np.float32)}, "has shape [1, 3, 16, 16]"),
    ({"inputs": np.zeros((0, 3, 8, 8), np.float32)}, "empty"),
])
def test_calibration_data_that_does_not_fit_is_a_bad_data_error(tmp_path, arrays, message):
    np.savez(tmp_path / "c.npz", **arrays)
    with pytest.raises(ProfilerError) as err:
        calibration_batches(str(tmp_path / "c.npz"), [IMAGE])
    assert err.value.kind == "bad_data" and message in err.value.message


ORIN = {"tensorrt_version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7"}}


def test_an_engine_runs_only_where_it_was_built():
    check_engine(ORIN, "10.3.0", {"name": "Orin", "compute_capability": "8.7"})  # same GPU and TensorRT: fine
    with pytest.raises(ProfilerError) as err:
        check_engine(ORIN, "8.6.2", {"name": "Xavier", "compute_capability": "7.2"})
    assert err.value.kind == "engine_mismatch"
    assert "TensorRT 10.3.0 (this device has 8.6.2)" in err.value.message
    assert "GPU Orin, sm 8.7 (this device has Xavier, sm 7.2)" in err.value.message
    with pytest.raises(ProfilerError, match="TensorRT 10.3.0"):
        check_engine(ORIN, "10.7.0", {"name": "Orin", "compute_capability": "8.7"})


def test_int8_without_samples_is_refused_before_tensorrt_is_needed(tmp_path):
    onnx.save(synth.build_cell({"kind": "gemm", "rows": 1}, 8, 8), str(tmp_path / "model.onnx"))
    with pytest.raises(ProfilerError) as err:
        build({"precision": "int8"}, base_dir=str(tmp_path))
    assert err.value.kind == "int8_needs_calibration"


def test_engine_command_without_tensorrt_is_one_error_record_exit_2(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    onnx.save(synth.build_cell({"kind": "gemm", "rows": 1}, 8, 8), str(tmp_path / "model.onnx"))
    (tmp_path / "request.json").write_text(json.dumps({"precision": "fp16"}))
    proc = subprocess.run([sys.executable, "-m", "profilers", "engine", str(tmp_path / "request.json")],
                          capture_output=True, text=True, cwd=str(tmp_path.parent), timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    assert proc.returncode == 2, proc.stderr
    record = json.loads(proc.stdout)["error"]
    assert record["kind"] == "runtime_unavailable" and "TensorRT is not available here" in record["message"]
    assert not (tmp_path / "model.engine").exists()
