"""The ONNX Runtime runner: state checks, outputs equal to a plain session, and clear provider errors."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from profilers import synth
from profilers.backends import runner_class
from profilers.backends.ort import OrtRunner, random_inputs
from profilers.errors import ProfilerError, RuntimeUnavailable

CONV = {"kind": "conv", "kernel": [3, 3], "pads": [1, 1, 1, 1], "hw": [6, 6], "act": "relu", "residual": True}


@pytest.fixture
def cell_bytes():
    return synth.build_cell(CONV, 4, 5, seed=2).SerializeToString()


@pytest.fixture
def cell_path(tmp_path, cell_bytes):
    path = tmp_path / "cell.onnx"
    path.write_bytes(cell_bytes)
    return str(path)


def plain_run(model, feeds):
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def test_registry_resolves_onnxruntime():
    assert runner_class("onnxruntime") is OrtRunner


def test_unknown_backend_is_a_profiler_error():
    with pytest.raises(ProfilerError) as info:
        runner_class("openvino")
    assert info.value.kind == "unknown_backend"
    assert "onnxruntime" in info.value.hint


def test_infer_and_outputs_before_activate_raise(cell_bytes):
    runner = OrtRunner(cell_bytes)
    assert not runner.active
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer()
    with pytest.raises(RuntimeError, match="not active"):
        runner.outputs()


def test_lifecycle_state(cell_bytes):
    runner = OrtRunner(cell_bytes, threads=1)
    runner.activate()
    assert runner.active
    with pytest.raises(RuntimeError, match="already active"):
        runner.activate()
    runner.infer()
    runner.deactivate()
    assert not runner.active
    assert not hasattr(runner, "session")  # freed
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer()
    runner.deactivate()  # a second deactivate is harmless
    runner.activate()  # and it can be activated again
    assert runner.active
    runner.infer()
    runner.deactivate()


def test_context_manager(cell_bytes):
    with OrtRunner(cell_bytes) as runner:
        assert runner.active
        runner.infer()
    assert not runner.active


@pytest.mark.parametrize("source", ["bytes", "path"])
def test_outputs_equal_a_direct_session_on_the_same_random_inputs(source, cell_bytes, cell_path):
    model = cell_bytes if source == "bytes" else cell_path
    with OrtRunner(model) as runner:
        got = runner.outputs()
        feeds = runner.feeds
        assert set(feeds) == {"X", "R"}
        assert feeds["X"].shape == (1, 4, 6, 6) and feeds["R"].shape == (1, 5, 6, 6)
        ref = plain_run(model, feeds)
        assert set(got) == {"Y"}
        np.testing.assert_allclose(got["Y"], ref["Y"], rtol=1e-6, atol=1e-6)
        # the bound (timed) path computes the same thing
        runner.infer()
        bound = runner.binding.get_outputs()[0].numpy()
        np.testing.assert_allclose(bound, ref["Y"], rtol=1e-6, atol=1e-6)


def test_explicit_inputs_are_used(cell_bytes):
    rng = np.random.default_rng(7)
    inputs = {
        "X": rng.standard_normal((1, 4, 6, 6)).astype(np.float32),
        "R": rng.standard_normal((1, 5, 6, 6)).astype(np.float32),
    }
    with OrtRunner(cell_bytes, inputs=inputs) as runner:
        got = runner.outputs()
        runner.infer()
        bound = runner.binding.get_outputs()[0].numpy()
    ref = plain_run(cell_bytes, inputs)
    np.testing.assert_allclose(got["Y"], ref["Y"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bound, ref["Y"], rtol=1e-6, atol=1e-6)
    # and they differ from the default random data (so the inputs really were the ones given)
    with OrtRunner(cell_bytes) as default:
        assert not np.allclose(default.outputs()["Y"], got["Y"])


def test_random_inputs_are_seeded(cell_bytes):
    sess = ort.InferenceSession(cell_bytes, providers=["CPUExecutionProvider"])
    a, b, c = random_inputs(sess, seed=1), random_inputs(sess, seed=1), random_inputs(sess, seed=2)
    np.testing.assert_array_equal(a["X"], b["X"])
    assert not np.array_equal(a["X"], c["X"])
    assert a["X"].dtype == np.float32


def _int_model():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["Y"])],
        "ints",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 5])],
        [helper.make_tensor_value_info("Y", TensorProto.INT64, ["batch", 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_random_inputs_integer_and_symbolic_dims():
    sess = ort.InferenceSession(_int_model(), providers=["CPUExecutionProvider"])
    feeds = random_inputs(sess, int_high=10)
    assert feeds["ids"].shape == (1, 5)  # the symbolic batch is taken as 1
    assert feeds["ids"].dtype == np.int64
    assert feeds["ids"].min() >= 0 and feeds["ids"].max() < 10
    with OrtRunner(_int_model()) as runner:
        np.testing.assert_array_equal(runner.outputs()["Y"], runner.feeds["ids"])


def test_random_inputs_unsupported_type_is_runtime_unavailable():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["Y"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, [2])],
        [helper.make_tensor_value_info("Y", TensorProto.STRING, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(RuntimeUnavailable) as info:
        OrtRunner(model.SerializeToString()).activate()
    assert "s" in info.value.message and "tensor(string)" in info.value.message


def test_unsupported_provider_names_the_available_ones(cell_bytes):
    runner = OrtRunner(cell_bytes, provider="NoSuchExecutionProvider")
    with pytest.raises(RuntimeUnavailable) as info:
        runner.activate()
    err = info.value
    assert isinstance(err, ProfilerError)
    assert err.kind == "runtime_unavailable"
    assert "NoSuchExecutionProvider" in err.message
    for provider in ort.get_available_providers():
        assert provider in err.message
    assert err.hint
    assert not runner.active
    assert err.record() == {
        "error": {"kind": "runtime_unavailable", "message": err.message, "hint": err.hint}
    }


def test_threads_are_applied(cell_bytes):
    with OrtRunner(cell_bytes, threads=2) as runner:
        assert runner.session.get_session_options().intra_op_num_threads == 2
        assert runner.session.get_providers() == ["CPUExecutionProvider"]


def test_invalid_model_bytes_fail_to_activate():
    runner = OrtRunner(b"this is not an onnx model")
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidProtobuf):
        runner.activate()
    assert not runner.active
