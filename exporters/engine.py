"""ONNX -> TensorRT engine, built on the device that will run it (here, or over SSH) through `profilers engine`.

A TensorRT engine is specific to the GPU model and TensorRT version that built it, so it is never built on the
workstation for a Jetson: the bundle's model.onnx (and, for INT8, calibration samples) travel to the device,
`python -m profilers engine` builds it there, and the engine plus its build record (TensorRT version, GPU and
compute capability, builder settings, build time, sha256) come back into the bundle's manifest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import BadInputError, DeviceError

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_SAMPLES = 256

# Parity tolerance of an engine against PyTorch's outputs: TensorRT may use TF32 for fp32 layers, fp16 halves
# the mantissa, and INT8 is judged by the accuracy gate (its parity tolerance only catches a broken engine).
ENGINE_TOLERANCE = {"fp32": {"atol": 1e-3, "rtol": 1e-3}, "fp16": {"atol": 1e-2, "rtol": 1e-2},
                    "int8": {"atol": 1e-1, "rtol": 1e-1}}


@dataclass
class EngineBuild:
    """The serialized engine and what the device recorded about building it."""

    engine: bytes
    record: dict


def engine_request(precision: str, calibration: bool, workspace_mb: int | None = None) -> dict:
    """The `profilers engine` request for the bundle's model.onnx."""
    if precision not in PRECISIONS:
        raise BadInputError(f"unknown engine precision {precision!r}", f"use one of: {', '.join(PRECISIONS)}")
    request = {"model": "model.onnx", "out": "model.engine", "precision": precision}
    if calibration:
        request["calibration"] = "calib.npz"
    if workspace_mb is not None:
        request["workspace_mb"] = int(workspace_mb)
    return request


def check_device_runs_tensorrt(specs, precision: str) -> None:
    """Refuse, before connecting, a device kind whose registry entry has no native TensorRT runtime for
    `precision` (`specs`: the device, or every member of a family alias)."""
    for spec in specs:
        runtime = next((r for r in spec.runtimes if r.backend == "tensorrt"), None)
        if runtime is None:
            kinds = ", ".join(r.label for r in spec.runtimes) or "none"
            raise BadInputError(f"device {spec.name} has no TensorRT runtime (it has: {kinds})",
                                "drop --engine, or export on a device with TensorRT (cuda, jetson-*)")
        if precision not in runtime.precisions:
            raise BadInputError(f"TensorRT on {spec.name} does not run {precision} "
                                f"(it runs {', '.join(runtime.precisions)})",
                                f"pick one of {', '.join(runtime.precisions)} for --engine")


def build_on_device(target, onnx_path: Path, precision: str, workdir: Path, calibration: Path | None = None,
                    workspace_mb: int | None = None) -> EngineBuild:
    """Ship model.onnx (+ calibration samples) to the target, build there, fetch engine and record."""
    request = engine_request(precision, calibration is not None, workspace_mb)
    req_path = workdir / "engine-request.json"
    req_path.write_text(json.dumps(request))
    files = {"model.onnx": onnx_path, "request.json": req_path}
    if calibration is not None:
        files["calib.npz"] = calibration
    reply = target.run_profilers(["engine", "request.json", "--out", "engine.json"], files=files)
    if "result_file" in reply:
        local = workdir / "engine.json"
        target.fetch(reply["result_file"], local)
        reply = json.loads(local.read_text())
    engine_path = target.fetch(reply["file"], workdir / "model.engine")
    engine = Path(engine_path).read_bytes()
    if hashlib.sha256(engine).hexdigest() != reply.get("sha256"):
        raise DeviceError("the engine fetched from the device does not match the checksum the device reported",
                          "retry the export; check the device's disk and the connection")
    record = dict(reply, file="model.engine", parity_tolerance=ENGINE_TOLERANCE[precision])
    return EngineBuild(engine, record)
