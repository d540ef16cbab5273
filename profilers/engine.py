"""Build a bundle's TensorRT engine on the device, and check that an engine fits the device it is about to run on.

`python -m profilers engine request.json --out result.json` builds `model.onnx` into `model.engine` with the
settings of `backends.trt.build_settings` (fp32 / fp16 / int8). INT8 is calibrated from real samples (the
request's `calibration` .npz, one sample per batch, TensorRT's entropy calibrator 2): an engine with dummy
ranges would time like the real one but answer wrongly, so a deployable INT8 engine without samples is refused.
The result records exactly what was built: TensorRT version, GPU name and compute capability, builder settings,
build time and the engine's sha256. An engine runs only on the GPU model and TensorRT version that built it;
`check_engine` compares that record with the device before anything runs.
"""

import hashlib
import os
import time

import numpy as np

from .backends.trt import (
    _build_engine,
    _cuda,
    _import_cudart,
    _import_tensorrt,
    _nptype,
    build_settings,
    check_gpu,
    onnx_input_specs,
)
from .errors import ProfilerError

ENGINE_FILE = "model.engine"
CALIBRATOR = "IInt8EntropyCalibrator2"


def calibration_batches(path, specs, limit=512):
    """Calibration samples from an .npz as a list of {input name: batch-1 array of the input's dtype}.

    A single-input model reads the array `inputs` (what `edgeprune export --data` writes); a model with several
    inputs reads one array per input name. Every array's first axis is the sample axis.
    """
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    if len(specs) == 1 and "inputs" in arrays and specs[0].name not in arrays:
        arrays = {specs[0].name: arrays["inputs"]}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise ProfilerError("bad_data", "calibration data has no array for input(s) %s (it has %s)"
                            % (", ".join(missing), ", ".join(sorted(arrays)) or "nothing"),
                            "store the samples as 'inputs', or one array per model input")
    counts = {len(arrays[s.name]) for s in specs}
    if len(counts) != 1 or not counts.pop():
        raise ProfilerError("bad_data", "calibration arrays are empty or have different sample counts",
                            "store the same number of samples for every input")
    batches = []
    n = min(len(arrays[specs[0].name]), limit)
    for i in range(n):
        batch = {}
        for spec in specs:
            sample = arrays[spec.name][i:i + 1]
            fixed = [d for d in spec.dims[1:]]
            if len(fixed) != sample.ndim - 1 or any(isinstance(d, int) and d > 0 and d != s
                                                      for d, s in zip(fixed, sample.shape[1:])):
                raise ProfilerError("bad_data", "calibration sample for %s has shape %s, the model takes %s"
                                    % (spec.name, list(sample.shape), [d if d else "?" for d in spec.dims]),
                                    "preprocess the samples to the model's input spec (edgeprune inspect)")
            batch[spec.name] = np.ascontiguousarray(sample, dtype=spec.dtype)
        batches.append(batch)
    return batches


def gpu_identity(cudart, index=0):
    """{name, compute_capability} of the GPU the engine is built for (TensorRT engines are per GPU model)."""
    props = _cuda(cudart, cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode("utf-8", "replace")
    return {"name": str(name), "compute_capability": "%d.%d" % (props.major, props.minor)}


def check_engine(record, tensorrt_version, gpu):
    """Refuse an engine built for another GPU model or TensorRT version (it would fail to load, or worse)."""
    want_trt = record.get("tensorrt_version")
    want_gpu = record.get("gpu") or {}
    problems = []
    if want_trt and want_trt != tensorrt_version:
        problems.append("TensorRT %s (this device has %s)" % (want_trt, tensorrt_version))
    if want_gpu.get("compute_capability") and want_gpu.get("compute_capability") != gpu.get("compute_capability"):
        problems.append("GPU %s, sm %s (this device has %s, sm %s)" % (
            want_gpu.get("name"), want_gpu.get("compute_capability"), gpu.get("name"),
            gpu.get("compute_capability")))
    if problems:
        raise ProfilerError("engine_mismatch", "the bundle's engine was built for " + " and ".join(problems),
                            "rebuild it here: edgeprune export --engine PRECISION --device ... on this device")


def _entropy_calibrator(trt, cudart, batches):
    """TensorRT's entropy calibrator fed one real sample per batch from device buffers it owns."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.cache = None
            first = batches[0]
            self.device = {name: _cuda(cudart, cudart.cudaMalloc(max(a.nbytes, 1)), "cudaMalloc")
                           for name, a in first.items()}

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            if self.index >= len(batches):
                return None
            batch = batches[self.index]
            self.index += 1
            kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            for name in names:
                data = batch[name]
                _cuda(cudart, cudart.cudaMemcpy(self.device[name], data.ctypes.data, data.nbytes, kind),
                      "cudaMemcpy")
            return [int(self.device[name]) for name in names]

        def read_calibration_cache(self):
            return None  # always calibrate from the samples given, never from a stale cache

        def write_calibration_cache(self, cache):
            self.cache = bytes(cache)

        def free(self):
            for pointer in self.device.values():
                cudart.cudaFree(pointer)
            self.device = {}

    return Calibrator()


def build(request, base_dir="."):
    """Build the engine the request describes; returns the build record (engine written to `out`)."""
    precision = request.get("precision", "fp16")
    settings = build_settings(precision, request.get("workspace_mb"), request.get("shapes") or None,
                              request.get("optimization_level"))
    model_path = os.path.join(base_dir, request.get("model", "model.onnx"))
    out_path = os.path.join(base_dir, request.get("out", ENGINE_FILE))
    calib = request.get("calibration")
    if settings["precision"] == "int8" and not calib:
        raise ProfilerError("int8_needs_calibration", "an INT8 engine for deployment needs calibration samples",
                            "pass --data with real samples to edgeprune export --engine int8")
    specs = onnx_input_specs(model_path)
    batches = calibration_batches(os.path.join(base_dir, calib), specs) if calib else None
    trt = _import_tensorrt()
    cudart = _import_cudart()
    check_gpu(cudart)
    logger = trt.Logger(trt.Logger.WARNING)
    calibrator = None
    if settings["precision"] == "int8":
        calibrator = _entropy_calibrator(trt, cudart, batches)
    started = time.time()
    try:
        serialized = _build_engine(trt, logger, model_path, settings, calibrator=calibrator)
    finally:
        if calibrator is not None:
            calibrator.free()
    build_s = time.time() - started
    data = bytes(serialized)
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, out_path)
    if calibrator is not None:
        settings["int8_calibration"] = {"calibrator": CALIBRATOR, "samples": len(batches)}
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    io = []
    if engine is not None:
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            io.append({"name": name, "shape": [int(d) for d in engine.get_tensor_shape(name)],
                       "dtype": np.dtype(_nptype(trt, engine, name)).name,
                       "mode": "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"})
    return {"file": os.path.basename(out_path), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "tensorrt_version": trt.__version__, "gpu": gpu_identity(cudart), "settings": settings,
            "build_s": build_s, "io": io}
