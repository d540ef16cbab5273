"""`edgeprune export` as a library call: a model -> a verified, checksummed bundle the device can run.

The graph is exported with `torch.onnx.export` (TorchScript-based exporter, single file, opset 17), cleaned up
with onnxslim when installed, and must reproduce PyTorch's outputs on ONNX Runtime for real samples or the
export fails. What later stages need travels in the manifest: a pruned model's provenance (widths, table id,
budget, predicted and measured latency) and the baseline accuracy when it is known.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import BadInputError, CheckFailedError

REFERENCE_SAMPLES = 8


def reference_samples(loaded, data: str | None, n: int) -> tuple:
    """([input tuples of batch 1], preprocessing record): real samples from `data`, else the seeded example."""
    wrapped = loaded.export_module()
    if not data or loaded.regime == "decode":  # a decode step's inputs include a KV cache: use the example
        return [loaded.example_inputs(wrapped)], {"kind": "synthetic", "note": "seeded random example input"}
    from .data import load_samples

    samples = load_samples(data, loaded.input_shape, loaded.family,
                           tokenizer_dir=loaded.spec if loaded.huggingface else None, seq_len=loaded.seq_len)
    take = samples.take(n)
    return [(take.inputs[i:i + 1],) for i in range(len(take))], dict(take.preprocessing, source=str(data))


def export_bundle(loaded, out: str | Path, *, data: str | None = None, table=None, budget: str | None = None,
                  baseline_accuracy: float | None = None, atol: float = 1e-4, rtol: float = 1e-3,
                  clean: bool = True, reference: int = REFERENCE_SAMPLES, engine: str | None = None,
                  device: str | None = None, host: str | None = None, ssh_options: dict | None = None,
                  workspace_mb: int | None = None):
    """Export `loaded` (a LoadedModel) into the bundle directory `out`; returns an ExportResult.

    `engine` (fp32/fp16/int8) also builds a TensorRT engine on `device` (here, or `host` over SSH) into the
    bundle; INT8 calibrates from `data`.
    """
    import onnx
    import onnxruntime as ort

    from edgeprune.exporters.engine import check_device_runs_tensorrt, engine_request

    if engine is not None:  # an unknown precision or a device without it fails before any work
        from .devices import load_registry, lookup_device

        device = device or "cuda"
        engine_request(engine, False)
        check_device_runs_tensorrt(lookup_device(device, load_registry()), engine)
        if engine == "int8" and not data:
            raise BadInputError("--engine int8 needs calibration samples", "pass --data with real samples")

    from edgeprune.exporters.bundle import (
        MAX_SINGLE_FILE,
        ExportResult,
        _io_spec,
        clean_up,
        reference_io,
        tool_versions,
        write_bundle,
    )
    from edgeprune.exporters.onnx import export_onnx

    notes = []
    wrapped = loaded.export_module()
    example = loaded.example_inputs(wrapped)
    proto, _ = export_onnx(wrapped, example, None, atol=atol, rtol=rtol)
    graph_predicted = _graph_prediction(table, proto, loaded, notes)
    cleanup = {"tool": None, "note": "clean-up disabled (--no-clean)"}
    if clean:
        proto, cleanup = clean_up(proto)
    with tempfile.TemporaryDirectory(prefix="edgeprune-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        large = proto.ByteSize() > MAX_SINGLE_FILE
        if large:  # protobuf cannot hold more than 2 GB: the weights go to a data file beside the graph
            onnx.save_model(proto, str(path), save_as_external_data=True, location="model.onnx.data")
            notes.append("model is larger than 2 GB: weights are in model.onnx.data beside model.onnx")
        else:
            onnx.save_model(proto, str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs, outputs = _io_spec(session)
        samples, preprocessing = reference_samples(loaded, data, reference)
        arrays, parity = reference_io(wrapped, samples, str(path), [i["name"] for i in inputs], atol, rtol)
        model_bytes = path.read_bytes()
        external = (Path(tmp) / "model.onnx.data").read_bytes() if large else None
        built = None
        if engine is not None and parity["ok"]:
            built = _build_engine(loaded, Path(tmp), path, engine, data, device, host, ssh_options, workspace_mb)
    if not parity["ok"]:
        name, worst = max(((n, r) for n, r in parity["outputs"].items() if not r["ok"]),
                          key=lambda kv: kv[1].get("needed_atol", float("inf")))
        raise CheckFailedError(
            f"ONNX Runtime output '{name}' differs from PyTorch on the reference samples: max abs "
            f"{worst.get('max_abs', float('nan')):.3g}, cosine {worst.get('cosine', float('nan')):.6f} "
            f"(tolerance atol={atol:g}, rtol={rtol:g})",
            f"an atol of {worst.get('needed_atol', float('nan')):.3g} would pass; nothing was written")
    prov = loaded.provenance or {}
    table_record = None
    if table is not None:
        table_record = {"id": table.id, "fidelity": {k: table.fidelity.get(k) for k in
                                                     ("within_10", "mape", "noise_ceiling")},
                        "runtime": table.runtime, "fingerprint": table.fingerprint,
                        "estimator": table.estimator.get("models") or table.estimator}
    elif prov.get("table"):
        table_record = prov["table"]
    runtime = (table.runtime if table is not None else (prov.get("table") or {}).get("runtime")) or \
        {"backend": "onnxruntime", "provider": "CPUExecutionProvider", "precision": "fp32", "threads": 1}
    manifest = {
        "source": {"spec": loaded.spec, "sha256": loaded.source_sha256, "family": loaded.family,
                   "input_shape": list(loaded.input_shape), "seq_len": loaded.seq_len, "regime": loaded.regime,
                   "pruned_from": (loaded.pruned_source or {}).get("spec")},
        "inputs": inputs, "outputs": outputs, "preprocessing": preprocessing,
        "widths": prov.get("widths"), "table": table_record,
        "budget": budget or prov.get("budget"), "budget_ms": _budget_ms(budget, prov, table),
        "predicted_ms": prov.get("predicted_ms") if prov.get("predicted_ms") is not None else graph_predicted,
        "predicted_graph_ms": graph_predicted, "measured_at_prune": prov.get("measured"),
        "baseline_accuracy": baseline_accuracy if baseline_accuracy is not None else prov.get("baseline_accuracy"),
        "runtime": runtime, "tools": tool_versions(), "cleanup": cleanup, "parity": parity,
        "parity_tolerance": {"atol": atol, "rtol": rtol}, "notes": notes,
        "engine": built.record if built is not None else None,
    }
    manifest = write_bundle(out, model_bytes, arrays, manifest, external_data=external,
                            engine=built.engine if built is not None else None)
    return ExportResult(Path(out), manifest, parity, notes)


def _graph_prediction(table, proto, loaded, notes: list) -> float | None:
    """The table's prediction for the exported graph itself (blocks read from it as the profiler reads them):
    a dense bundle gets a prediction too, and a pruned one a check of the solver's."""
    if table is None:
        return None
    from .latency.blocks import extract_blocks

    try:
        return table.predict_ms(extract_blocks(proto, head_dim=loaded.head_dim).blocks)
    except BadInputError as err:
        notes.append(f"no latency prediction from table {table.id[:12]}: {err.message}")
        return None


def _build_engine(loaded, tmp: Path, onnx_path: Path, precision: str, data: str | None, device: str,
                  host: str | None, ssh_options: dict | None, workspace_mb: int | None):
    """TensorRT engine of the exported ONNX, built on the device (INT8 calibrated from `data`); export_bundle has
    already checked that the device kind runs `precision`."""
    import numpy as np

    from edgeprune.exporters.engine import CALIBRATION_SAMPLES, build_on_device

    from .devices import load_registry, open_device

    calibration = None
    if precision == "int8":
        samples, _ = reference_samples(loaded, data, CALIBRATION_SAMPLES)
        calibration = tmp / "calib.npz"
        np.savez(calibration, inputs=np.concatenate([s[0].numpy() for s in samples]))
    with open_device(device, host, ssh_options or {}, load_registry()) as session:
        return build_on_device(session.target, onnx_path, precision, tmp, calibration, workspace_mb)


def _budget_ms(budget: str | None, prov: dict, table) -> float | None:
    """The budget in the table's estimator: given in ms, or a speedup of the table's dense calibration."""
    from .budget import parse_budget

    parsed = parse_budget(budget) if budget else None
    if parsed is None:
        return prov.get("budget_ms")
    if parsed.kind == "ms":
        return parsed.value
    dense = (table.calibration or {}).get("dense_measured_ms") if table is not None else None
    if dense is None:
        dense = (prov.get("measured") or {}).get("dense_ms") or prov.get("dense_predicted_ms")
    return dense / parsed.value if dense else None
