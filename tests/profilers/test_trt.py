"""TensorRT backend: the GPU-free pieces, and the clear failure where TensorRT is missing."""

import importlib.util
import shlex
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from profilers.backends import runner_class, trt
from profilers.errors import ProfilerError, RuntimeUnavailable
from profilers.parsers import trtexec

# --- build settings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "precision, flags",
    [
        ("fp32", []),
        ("fp16", ["FP16"]),
        ("bf16", ["BF16"]),
        ("int8", ["INT8"]),
        ("FP16", ["FP16"]),
    ],
)
def test_build_settings_flags(precision, flags):
    settings = trt.build_settings(precision)
    assert settings == {
        "precision": precision.lower(),
        "builder_flags": flags,
        "memory_pool_limits": {},
        "builder_optimization_level": None,
        "profile_shapes": {},
        "int8_calibration": None,
    }


def test_build_settings_workspace_level_and_shapes():
    settings = trt.build_settings(
        "fp16", workspace_mb=1024, shapes={"images": (1, 3, 640, 640)}, optimization_level=5
    )
    assert settings["memory_pool_limits"] == {"WORKSPACE": 1024 * 1024 * 1024}
    assert settings["builder_optimization_level"] == 5
    assert settings["profile_shapes"] == {"images": [1, 3, 640, 640]}


@pytest.mark.parametrize(
    "kwargs, kind",
    [
        ({"precision": "fp64"}, "unknown_precision"),
        ({"precision": "fp16", "workspace_mb": 0}, "bad_setting"),
        ({"precision": "fp16", "workspace_mb": 1.5}, "bad_setting"),
        ({"precision": "fp16", "optimization_level": 7}, "bad_setting"),
        ({"precision": "fp16", "shapes": {"x": [1, -1]}}, "bad_shape"),
        ({"precision": "fp16", "shapes": {"x": []}}, "bad_shape"),
    ],
)
def test_build_settings_rejects_bad_input(kwargs, kind):
    with pytest.raises(ProfilerError) as info:
        trt.build_settings(**kwargs)
    assert info.value.kind == kind
    assert info.value.hint


# --- trtexec argv -------------------------------------------------------------------------------------------


def test_engine_build_command_fp32_minimal():
    assert trt.engine_build_command("m.onnx", "m.engine") == [
        "trtexec",
        "--onnx=m.onnx",
        "--saveEngine=m.engine",
    ]


def test_engine_build_command_full():
    argv = trt.engine_build_command(
        "/data/model dir/m.onnx",
        "out/m.plan",
        "int8",
        workspace_mb=2048,
        shapes={"input_ids": [1, 128], "attention_mask": [1, 128]},
        optimization_level=3,
        trtexec="/usr/src/tensorrt/bin/trtexec",
    )
    spec = "input_ids:1x128,attention_mask:1x128"
    assert argv == [
        "/usr/src/tensorrt/bin/trtexec",
        "--onnx=/data/model dir/m.onnx",
        "--saveEngine=out/m.plan",
        "--int8",
        "--memPoolSize=workspace:2048",
        "--builderOptimizationLevel=3",
        "--minShapes=" + spec,
        "--optShapes=" + spec,
        "--maxShapes=" + spec,
    ]
    assert all(isinstance(arg, str) for arg in argv)


def test_engine_build_command_quotes_names_with_separators():
    argv = trt.engine_build_command("m.onnx", "m.engine", "fp16", shapes={"input:0": [1, 3]})
    assert "--shapes" not in " ".join(argv)
    assert "--minShapes='input:0':1x3" in argv


@pytest.mark.parametrize("precision", sorted(trt.BUILDER_FLAGS))
def test_every_precision_has_matching_builder_and_trtexec_flags(precision):
    builder = trt.BUILDER_FLAGS[precision]
    switches = trt.TRTEXEC_FLAGS[precision]
    assert [flag.lower() for flag in builder] == [switch.lstrip("-") for switch in switches]
    # What trtexec echoes back for this argv is read as the same precision by the log parser.
    argv = trt.engine_build_command("m.onnx", "m.engine", precision)
    log = (
        "[I] === Performance summary ===\n[I] Throughput: 1 qps\n"
        "[I] Latency: min = 1 ms, max = 1 ms, mean = 1 ms, median = 1 ms\n"
        "[I] GPU Compute Time: min = 1 ms, max = 1 ms, mean = 1 ms, median = 1 ms\n"
        "&&&& PASSED TensorRT.trtexec [TensorRT v100300] # " + " ".join(shlex.quote(a) for a in argv) + "\n"
    )
    assert trtexec.parse_trtexec_output(log)["precision_flags"] == list(switches)


def test_engine_build_command_validates_precision():
    with pytest.raises(ProfilerError, match="unknown TensorRT precision"):
        trt.engine_build_command("m.onnx", "m.engine", "int4")


# --- ONNX inputs -> numpy buffers ---------------------------------------------------------------------------


@pytest.fixture
def onnx_path(tmp_path):
    """Dynamic-batch float image, int64 id sequence, bool flag, and a weight that is also a graph input."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "seq"])
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [2])
    weight = helper.make_tensor_value_info("weight", TensorProto.FLOAT, [3, 3, 1, 1])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 8, 8])
    init = helper.make_tensor("weight", TensorProto.FLOAT, [3, 3, 1, 1], np.eye(3, dtype=np.float32).ravel())
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "weight"], ["out"])],
        "tiny",
        [image, ids, flag, weight],
        [out],
        [init],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_input_specs(onnx_path):
    specs = trt.onnx_input_specs(str(onnx_path))
    assert [(s.name, np.dtype(s.dtype), s.dims) for s in specs] == [
        ("image", np.dtype(np.float32), ("batch", 3, 8, 8)),
        ("ids", np.dtype(np.int64), (1, "seq")),
        ("flag", np.dtype(np.bool_), (2,)),
    ]


def test_input_arrays_shapes_dtypes_and_seed(onnx_path):
    specs = trt.onnx_input_specs(str(onnx_path))
    arrays = trt.input_arrays(specs, shapes={"ids": [1, 16]})
    assert {name: (a.shape, a.dtype) for name, a in arrays.items()} == {
        "image": ((1, 3, 8, 8), np.dtype(np.float32)),
        "ids": ((1, 16), np.dtype(np.int64)),
        "flag": ((2,), np.dtype(np.bool_)),
    }
    assert arrays["ids"].min() >= 0 and arrays["ids"].max() < 8
    again = trt.input_arrays(specs, shapes={"ids": [1, 16]})
    assert all(np.array_equal(arrays[name], again[name]) for name in arrays)
    other = trt.input_arrays(specs, shapes={"ids": [1, 16]}, seed=1)
    assert not np.array_equal(arrays["image"], other["image"])


def test_input_arrays_needs_symbolic_non_batch_dims(onnx_path):
    with pytest.raises(ProfilerError) as info:
        trt.input_arrays(trt.onnx_input_specs(str(onnx_path)))
    assert info.value.kind == "dynamic_input" and "'seq'" in info.value.message


def test_resolve_shape_rejects_override_that_breaks_static_dims():
    spec = trt.InputSpec("image", np.float32, ("batch", 3, 8, 8))
    assert trt.resolve_shape(spec) == (1, 3, 8, 8)
    assert trt.resolve_shape(spec, [4, 3, 8, 8]) == (4, 3, 8, 8)
    for bad in ([1, 4, 8, 8], [1, 3, 8]):
        with pytest.raises(ProfilerError, match="does not fit"):
            trt.resolve_shape(spec, bad)


# --- availability -------------------------------------------------------------------------------------------


def test_runner_registry_resolves_tensorrt():
    assert runner_class("tensorrt") is trt.TrtRunner


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_activate_without_tensorrt_is_a_clear_runtime_unavailable(onnx_path):
    runner = trt.TrtRunner(str(onnx_path), precision="fp16")
    with pytest.raises(RuntimeUnavailable) as info:
        runner.activate()
    error = info.value
    assert error.kind == "runtime_unavailable"
    assert error.message.startswith("TensorRT is not available here: ")
    assert "tensorrt" in error.message
    assert error.hint == (
        "install the tensorrt extra on an NVIDIA device (JetPack ships it) or use --runtime onnxruntime"
    )
    assert not runner.active
    assert error.record() == {
        "error": {"kind": "runtime_unavailable", "message": error.message, "hint": error.hint}
    }


class _NoGpuCudart(object):
    """cuda-python's runtime as it answers on a machine with the library but no NVIDIA driver."""

    @staticmethod
    def cudaGetDeviceCount():
        return 35, None

    @staticmethod
    def cudaGetErrorString(err):
        return 0, b"CUDA driver version is insufficient for CUDA runtime version"


class _ZeroGpuCudart(_NoGpuCudart):
    @staticmethod
    def cudaGetDeviceCount():
        return 0, 0


@pytest.mark.parametrize(
    "cudart, reason",
    [
        (_NoGpuCudart, "CUDA driver version is insufficient for CUDA runtime version"),
        (_ZeroGpuCudart, "no CUDA-capable device is detected"),
    ],
)
def test_check_gpu_without_a_gpu(cudart, reason):
    with pytest.raises(RuntimeUnavailable) as info:
        trt.check_gpu(cudart)
    assert info.value.message == "TensorRT is not available here: no usable NVIDIA GPU (%s)" % reason
    assert info.value.hint == trt.UNAVAILABLE_HINT


def test_check_gpu_with_the_real_cuda_python_when_there_is_no_gpu():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        pytest.skip("cuda-python is not installed here")
    err, count = cudart.cudaGetDeviceCount()
    if int(err) == 0 and count:
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeUnavailable, match="^TensorRT is not available here: no usable NVIDIA GPU"):
        trt.check_gpu(cudart)


def test_module_imports_without_torch_or_tensorrt():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['tensorrt'] = None; "
        "import profilers.backends.trt; "
        "assert 'tensorrt' not in [k for k, v in sys.modules.items() if v]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
