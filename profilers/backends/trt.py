"""TensorRT runner: builds (or loads) an engine on the device and times one execution per `infer()`.

Why a separate path from onnxruntime: on a Jetson the engine TensorRT builds for this exact GPU, precision and
TensorRT version is what the deployed model will run, so tables measured on it are the ones that count. The
engine is built with the Python API (tensorrt.Builder + OnnxParser + BuilderConfig, TensorRT 8.5 or later) and
run with `set_tensor_address` / `execute_async_v3`; device buffers and the stream come from cuda-python's
runtime API.

`infer()` times `execute_async_v3` plus a stream synchronise with inputs already resident on the device (like
trtexec's "GPU Compute Time"); copies happen in `activate()` and `outputs()`, never in the timed call.

The pieces that need no GPU are plain functions so they are tested everywhere: `build_settings` (the exact
builder configuration, recorded in results), `engine_build_command` (the equivalent trtexec argv for users
without the Python API), `onnx_input_specs` / `input_arrays` (ONNX input dtypes and shapes to numpy buffers).
tensorrt and cuda-python are imported only inside `activate()`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..errors import ProfilerError, RuntimeUnavailable
from .base import Runner

UNAVAILABLE_HINT = (
    "install the tensorrt extra on an NVIDIA device (JetPack ships it) or use --runtime onnxruntime"
)

# precision -> TensorRT BuilderFlag names set on the config, and the matching trtexec switches.
BUILDER_FLAGS = {"fp32": (), "fp16": ("FP16",), "bf16": ("BF16",), "int8": ("INT8",)}
TRTEXEC_FLAGS = {"fp32": (), "fp16": ("--fp16",), "bf16": ("--bf16",), "int8": ("--int8",)}
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
TIMED_CALL = "execute_async_v3 + cudaStreamSynchronize, I/O resident on the device"
INT8_DUMMY_RANGES = "dummy dynamic ranges (timing only: accuracy is meaningless)"
INT8_EXPLICIT = "explicit Q/DQ in the model"


class InputSpec(NamedTuple):
    """One model input: dims hold ints, or a str / None where the dimension is symbolic."""

    name: str
    dtype: Any
    dims: Tuple[Any, ...]


def build_settings(
    precision: str,
    workspace_mb: Optional[int] = None,
    shapes: Optional[Mapping[str, Sequence[int]]] = None,
    optimization_level: Optional[int] = None,
) -> Dict[str, Any]:
    """The exact builder configuration `TrtRunner` applies, as plain data for the results file.

    shapes pins dynamic inputs: one optimisation profile with min = opt = max = the given shape.
    int8_calibration is filled in by the runner once it has seen whether the model carries Q/DQ nodes.
    """
    key = _precision_key(precision)
    if workspace_mb is not None and (not isinstance(workspace_mb, int) or workspace_mb <= 0):
        raise ProfilerError(
            "bad_setting",
            "TensorRT workspace must be a positive number of MiB, got %r" % (workspace_mb,),
            "pass the workspace in MiB, e.g. 1024",
        )
    if optimization_level is not None and optimization_level not in range(6):
        raise ProfilerError(
            "bad_setting",
            "TensorRT builder optimization level must be 0-5, got %r" % (optimization_level,),
            "leave it unset for TensorRT's default (3)",
        )
    return {
        "precision": key,
        "builder_flags": list(BUILDER_FLAGS[key]),
        "memory_pool_limits": {} if workspace_mb is None else {"WORKSPACE": workspace_mb << 20},
        "builder_optimization_level": optimization_level,
        "profile_shapes": _checked_shapes(shapes),
        "int8_calibration": None,
    }


def engine_build_command(
    onnx_path: str,
    engine_path: str,
    precision: str = "fp32",
    workspace_mb: Optional[int] = None,
    shapes: Optional[Mapping[str, Sequence[int]]] = None,
    optimization_level: Optional[int] = None,
    trtexec: str = "trtexec",
) -> List[str]:
    """trtexec argv (a list, never a shell string) that builds the same engine as `build_settings` describes.

    Pass shapes only for inputs with symbolic dimensions: trtexec rejects shapes for static inputs.
    trtexec also times the engine after building; `parsers.trtexec.parse_trtexec_output` reads its log.
    """
    settings = build_settings(precision, workspace_mb, shapes, optimization_level)
    argv = [str(trtexec), "--onnx=%s" % os.fspath(onnx_path), "--saveEngine=%s" % os.fspath(engine_path)]
    argv.extend(TRTEXEC_FLAGS[settings["precision"]])
    if workspace_mb is not None:
        argv.append("--memPoolSize=workspace:%d" % workspace_mb)  # MiB in TensorRT 8.4+ and 10
    if optimization_level is not None:
        argv.append("--builderOptimizationLevel=%d" % optimization_level)
    if settings["profile_shapes"]:
        spec = ",".join(
            "%s:%s" % (_trtexec_name(name), "x".join(str(d) for d in dims))
            for name, dims in settings["profile_shapes"].items()
        )
        argv.extend(["--minShapes=" + spec, "--optShapes=" + spec, "--maxShapes=" + spec])
    return argv


def onnx_input_specs(model_path: str) -> List[InputSpec]:
    """Graph inputs (initializers excluded) of an ONNX file with numpy dtypes; weights are not loaded."""
    import onnx

    model = onnx.load(os.fspath(model_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if not value.type.HasField("tensor_type"):
            raise ProfilerError(
                "unsupported_input",
                "input %r of %s is not a tensor" % (value.name, model_path),
                "export the model with tensor inputs only",
            )
        tensor = value.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
        )
        specs.append(InputSpec(value.name, _onnx_numpy_dtype(onnx, tensor.elem_type, value.name), dims))
    return specs


def resolve_shape(spec: InputSpec, override: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
    """Concrete shape for one input: the override, else the static dims with a symbolic batch (dim 0) as 1."""
    if override is not None:
        shape = tuple(int(d) for d in override)
        if len(shape) != len(spec.dims) or any(
            isinstance(want, int) and want > 0 and want != got for want, got in zip(spec.dims, shape)
        ):
            raise ProfilerError(
                "bad_shape",
                "shape %s does not fit input %r of shape %s" % (list(shape), spec.name, list(spec.dims)),
                "match the model's static dimensions",
            )
        return shape
    shape = []
    for axis, dim in enumerate(spec.dims):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        elif axis == 0:
            shape.append(1)  # batch 1 is the latency regime edgeprune measures
        else:
            raise ProfilerError(
                "dynamic_input",
                "input %r has symbolic dimension %r at axis %d" % (spec.name, dim, axis),
                "pass concrete inputs (or --input-shape / --seq-len)",
            )
    return tuple(shape)


def input_arrays(
    specs: Sequence[InputSpec], shapes: Optional[Mapping[str, Sequence[int]]] = None, seed: int = 0
) -> Dict[str, np.ndarray]:
    """Seeded random data per input: normal floats, small non-negative ints (valid as ids), random bools."""
    rng = np.random.default_rng(seed)
    shapes = shapes or {}
    arrays = {}
    for spec in specs:
        shape = resolve_shape(spec, shapes.get(spec.name))
        dtype = np.dtype(spec.dtype)
        if dtype == np.bool_:
            arrays[spec.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(dtype, np.integer):
            arrays[spec.name] = rng.integers(0, 8, size=shape).astype(dtype)
        elif np.issubdtype(dtype, np.floating):
            arrays[spec.name] = rng.standard_normal(size=shape).astype(dtype)
        else:
            raise ProfilerError(
                "unsupported_input",
                "input %r has dtype %s, which edgeprune cannot synthesise" % (spec.name, dtype),
                "pass the input data explicitly",
            )
    return arrays


class TrtRunner(Runner):
    """One ONNX model (built here) or serialized engine (.engine/.plan/.trt) on TensorRT."""

    def __init__(
        self,
        model_path,
        threads=1,
        provider=None,
        precision="fp32",
        inputs=None,
        spinning=True,
        workspace_mb=None,
        optimization_level=None,
    ):
        # `spinning` is a CPU thread-pool setting; TensorRT has none, so it is accepted and unused.
        super(TrtRunner, self).__init__(model_path, threads, provider, precision, inputs, spinning)
        self.workspace_mb = workspace_mb
        self.optimization_level = optimization_level
        self.build_settings = None  # type: Optional[Dict[str, Any]]
        self.tensorrt_version = None  # type: Optional[str]
        self._reset()

    def _reset(self):
        self._trt = self._cudart = self._runtime = self._engine = self._context = self._stream = None
        self._device = {}  # type: Dict[str, int]
        self._outputs = {}  # type: Dict[str, np.ndarray]

    def activate_impl(self):
        if self.provider not in (None, "gpu"):
            raise ProfilerError(
                "bad_setting",
                "the TensorRT runner has no provider %r" % (self.provider,),
                "leave the provider unset for TensorRT",
            )
        trt = _import_tensorrt()
        cudart = _import_cudart()
        check_gpu(cudart)
        self._trt, self._cudart = trt, cudart
        self.tensorrt_version = trt.__version__
        logger = trt.Logger(trt.Logger.WARNING)
        path = os.fspath(self.model_path)
        try:
            if path.lower().endswith(ENGINE_SUFFIXES):
                with open(path, "rb") as handle:
                    serialized = handle.read()
                settings = {"prebuilt_engine": os.path.basename(path)}  # type: Dict[str, Any]
                arrays = None
            else:
                specs = onnx_input_specs(path)
                arrays = self._input_data(specs)
                settings = build_settings(
                    self.precision,
                    self.workspace_mb,
                    self._dynamic_shapes(specs, arrays),
                    self.optimization_level,
                )
                serialized = _build_engine(trt, logger, path, settings)
            self._runtime = trt.Runtime(logger)
            self._engine = self._runtime.deserialize_cuda_engine(serialized)
            if self._engine is None:
                raise ProfilerError(
                    "engine_load_failed",
                    "TensorRT %s could not load the engine for %s" % (trt.__version__, path),
                    "rebuild the engine on this device with this TensorRT version",
                )
            self._context = self._engine.create_execution_context()
            self._stream = _cuda(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
            self._bind(arrays)
        except BaseException:
            self.deactivate_impl()
            raise
        settings.update(tensorrt_version=trt.__version__, timed=TIMED_CALL)
        self.build_settings = settings

    def infer_impl(self):
        if not self._context.execute_async_v3(int(self._stream)):
            raise ProfilerError(
                "trt_execute_failed",
                "TensorRT execution failed for %s" % self.model_path,
                "see the TensorRT log above",
            )
        _cuda(self._cudart, self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def outputs_impl(self):
        self.infer_impl()
        cudart = self._cudart
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, host in self._outputs.items():
            _cuda(
                cudart,
                cudart.cudaMemcpyAsync(host.ctypes.data, self._device[name], host.nbytes, kind, self._stream),
                "cudaMemcpyAsync",
            )
        _cuda(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {name: host.copy() for name, host in self._outputs.items()}

    def run_feeds(self, feeds):
        """Copy `feeds` into the bound input buffers, run once, return every output (parity, accuracy)."""
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name, value in feeds.items():
            if name not in self._device or name in self._outputs:
                raise ProfilerError("bad_inputs", "the engine has no input %r" % name, "feed the bundle's inputs")
            data = np.ascontiguousarray(value, dtype=_nptype(self._trt, self._engine, name))
            if tuple(data.shape) != tuple(self._context.get_tensor_shape(name)):
                raise ProfilerError("bad_shape", "input %r has shape %s, the engine is bound to %s"
                                    % (name, list(data.shape), list(self._context.get_tensor_shape(name))),
                                    "feed batch-1 samples of the bundle's input spec")
            _cuda(self._cudart, self._cudart.cudaMemcpy(self._device[name], data.ctypes.data, data.nbytes, kind),
                  "cudaMemcpy")
        return self.outputs_impl()

    def deactivate_impl(self):
        cudart = self._cudart
        if cudart is not None:
            for pointer in self._device.values():
                cudart.cudaFree(pointer)
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
        self._reset()

    def _input_data(self, specs):
        if self.inputs is None:
            return input_arrays(specs)
        missing = sorted({spec.name for spec in specs} - set(self.inputs))
        if missing:
            raise ProfilerError(
                "bad_inputs",
                "no data for input(s) %s of %s" % (", ".join(missing), self.model_path),
                "pass every model input",
            )
        return {spec.name: np.ascontiguousarray(self.inputs[spec.name], dtype=spec.dtype) for spec in specs}

    @staticmethod
    def _dynamic_shapes(specs, arrays):
        return {
            spec.name: list(arrays[spec.name].shape)
            for spec in specs
            if not all(isinstance(d, int) and d > 0 for d in spec.dims)
        }

    def _bind(self, arrays):
        trt, cudart, engine, context = self._trt, self._cudart, self._engine, self._context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if arrays is None:  # prebuilt engine: shapes come from the engine or from the caller's data
            specs = [
                InputSpec(
                    n,
                    _nptype(trt, engine, n),
                    tuple(d if d >= 0 else None for d in engine.get_tensor_shape(n)),
                )
                for n in inputs
            ]
            arrays = self._input_data(specs) if self.inputs is not None else input_arrays(specs)
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name in inputs:
            data = np.ascontiguousarray(arrays[name], dtype=_nptype(trt, engine, name))
            if not context.set_input_shape(name, tuple(data.shape)):
                raise ProfilerError(
                    "bad_shape",
                    "TensorRT rejected shape %s for input %r" % (list(data.shape), name),
                    "use a shape inside the engine's profile",
                )
            self._device[name] = _cuda(cudart, cudart.cudaMalloc(max(data.nbytes, 1)), "cudaMalloc")
            _cuda(
                cudart,
                cudart.cudaMemcpy(self._device[name], data.ctypes.data, data.nbytes, to_device),
                "cudaMemcpy",
            )
        for name in names:
            if name in inputs:
                continue
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ProfilerError(
                    "unsupported_output",
                    "output %r has a data-dependent shape %s" % (name, list(shape)),
                    "export the model with static output shapes",
                )
            host = np.empty(shape, dtype=_nptype(trt, engine, name))
            self._outputs[name] = host
            self._device[name] = _cuda(cudart, cudart.cudaMalloc(max(host.nbytes, 1)), "cudaMalloc")
        for name in names:
            if not context.set_tensor_address(name, int(self._device[name])):
                raise ProfilerError(
                    "trt_bind_failed",
                    "TensorRT rejected the buffer for %r" % name,
                    "see the TensorRT log above",
                )


def check_gpu(cudart) -> int:
    """Number of CUDA devices; RuntimeUnavailable when there is none (or no working driver)."""
    result = cudart.cudaGetDeviceCount()
    err, count = result[0], result[1]
    if _code(err) != 0 or not count:
        reason = "no CUDA-capable device is detected" if _code(err) == 0 else _error_string(cudart, err)
        raise RuntimeUnavailable(
            "TensorRT is not available here: no usable NVIDIA GPU (%s)" % reason, UNAVAILABLE_HINT
        )
    return int(count)


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise RuntimeUnavailable(
            "TensorRT is not available here: the tensorrt Python module is not installed (%s)" % exc,
            UNAVAILABLE_HINT,
        ) from None
    return tensorrt


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python 12.6+
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python (JetPack 5 / 6 wheels)
        except ImportError as exc:
            raise RuntimeUnavailable(
                "TensorRT is not available here: cuda-python is not installed (%s)" % exc, UNAVAILABLE_HINT
            ) from None
    return cudart


def _build_engine(trt, logger, onnx_path, settings, calibrator=None):
    """Apply `settings` (from build_settings) to a fresh builder and return the serialized engine.

    INT8 uses `calibrator` (real samples, `profilers.engine`) when given; without one, a model carrying Q/DQ
    nodes is explicit INT8 and any other gets dummy ranges, which only timing may use.
    """
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ProfilerError(
            "onnx_parse_failed",
            "TensorRT %s could not parse %s: %s" % (trt.__version__, onnx_path, errors or "unknown error"),
            "check the model with onnx.checker, or export with an older opset",
        )
    config = builder.create_builder_config()
    for flag in settings["builder_flags"]:
        if not hasattr(trt.BuilderFlag, flag):
            raise ProfilerError(
                "precision_unsupported",
                "TensorRT %s has no %s builder flag" % (trt.__version__, flag),
                "use --precision fp16 or fp32",
            )
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for pool, limit in settings["memory_pool_limits"].items():
        config.set_memory_pool_limit(getattr(trt.MemoryPoolType, pool), limit)
    if settings["builder_optimization_level"] is not None:
        if not hasattr(config, "builder_optimization_level"):  # TensorRT 8.6+
            raise ProfilerError(
                "bad_setting",
                "TensorRT %s has no builder optimization level" % trt.__version__,
                "leave the optimization level unset",
            )
        config.builder_optimization_level = settings["builder_optimization_level"]
    if settings["profile_shapes"]:
        profile = builder.create_optimization_profile()
        for name, shape in settings["profile_shapes"].items():
            profile.set_shape(name, shape, shape, shape)
        config.add_optimization_profile(profile)
    if settings["precision"] == "int8" and calibrator is not None:
        config.int8_calibrator = calibrator
        settings["int8_calibration"] = "calibrated from samples"
    elif settings["precision"] == "int8":
        settings["int8_calibration"] = _int8_ranges(trt, network)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ProfilerError(
            "engine_build_failed",
            "TensorRT %s could not build %s at %s" % (trt.__version__, onnx_path, settings["precision"]),
            "see the TensorRT log above; try another precision or a larger workspace",
        )
    return serialized


def _int8_ranges(trt, network):
    """INT8 without Q/DQ needs per-tensor ranges; latency does not depend on their values, so set dummies."""
    quantizing = {trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    if any(layer.type in quantizing for layer in layers):
        return INT8_EXPLICIT
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    tensors += [layer.get_output(j) for layer in layers for j in range(layer.num_outputs)]
    for tensor in tensors:
        if tensor.dtype in (trt.float32, trt.float16):
            if not hasattr(tensor, "set_dynamic_range"):
                raise ProfilerError(
                    "int8_needs_calibration",
                    "TensorRT %s cannot time INT8 without Q/DQ nodes" % trt.__version__,
                    "export the model with Q/DQ (explicit quantization)",
                )
            tensor.set_dynamic_range(-4.0, 4.0)
    return INT8_DUMMY_RANGES


def _nptype(trt, engine, name):
    try:
        return np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
    except TypeError:
        raise ProfilerError(
            "unsupported_io_dtype",
            "tensor %r has TensorRT dtype %s with no numpy equivalent"
            % (name, engine.get_tensor_dtype(name)),
            "keep model inputs and outputs fp32/fp16",
        ) from None


def _cuda(cudart, result, what):
    err, values = result[0], result[1:]
    if _code(err) != 0:
        raise ProfilerError(
            "cuda_error",
            "%s failed: %s" % (what, _error_string(cudart, err)),
            "check the GPU with nvidia-smi / tegrastats and retry",
        )
    return values[0] if len(values) == 1 else (values or None)


def _code(err):
    return int(getattr(err, "value", err))


def _error_string(cudart, err):
    try:
        message = cudart.cudaGetErrorString(err)[1]
        return message.decode() if isinstance(message, bytes) else str(message)
    except Exception:  # the error path must not hide the original error
        return str(err)


def _precision_key(precision):
    key = str(precision).lower()
    if key not in BUILDER_FLAGS:
        raise ProfilerError(
            "unknown_precision",
            "unknown TensorRT precision %r" % (precision,),
            "use one of: %s" % ", ".join(BUILDER_FLAGS),
        )
    return key


def _checked_shapes(shapes):
    checked = {}
    for name, dims in (shapes or {}).items():
        dims = list(dims)
        if not dims or not all(isinstance(d, (int, np.integer)) and d > 0 for d in dims):
            raise ProfilerError(
                "bad_shape",
                "shape for input %r must be positive integers, got %r" % (name, dims),
                "e.g. {'input': [1, 3, 224, 224]}",
            )
        checked[str(name)] = [int(d) for d in dims]
    return checked


def _trtexec_name(name):
    """trtexec splits shape specs on ':' and ','; it takes names containing them in single quotes."""
    return "'%s'" % name if (":" in name or "," in name) else name


def _onnx_numpy_dtype(onnx, elem_type, name):
    try:
        convert = getattr(onnx.helper, "tensor_dtype_to_np_dtype", None)
        if convert is not None:
            return np.dtype(convert(elem_type))
        return np.dtype(onnx.mapping.TENSOR_TYPE_TO_NP_TYPE[elem_type])  # onnx < 1.13
    except (KeyError, TypeError, ValueError):
        raise ProfilerError(
            "unsupported_input",
            "input %r has ONNX element type %d with no numpy equivalent" % (name, elem_type),
            "pass the input data explicitly",
        ) from None
