"""torch -> single-file ONNX, checked against PyTorch on ONNX Runtime before it is accepted.

Uses the TorchScript exporter (`dynamo=False`) at a fixed opset with constant folding, so BatchNorm is folded
into Conv exactly as the deployed graph will have it, and weights are embedded in one file (no external
data) unless the model exceeds protobuf's 2 GB limit. A parity mismatch is an error, never a warning.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from edgeprune.exporters.bundle import MAX_SINGLE_FILE

from edgeprune.errors import BadInputError, CheckFailedError

OPSET = 17


@dataclass
class Parity:
    """Per-output comparison of ONNX Runtime against PyTorch; truthy when every output is within tolerance."""

    outputs: dict
    atol: float
    rtol: float

    def __bool__(self) -> bool:
        return all(o["ok"] for o in self.outputs.values())

    @property
    def needed_atol(self) -> float:
        """The smallest absolute tolerance (at this rtol) that would have passed."""
        return max((o["needed_atol"] for o in self.outputs.values()), default=0.0)


def compare(reference: dict, actual: dict, atol: float, rtol: float) -> Parity:
    """Max abs / max rel error and cosine similarity for each output."""
    from edgeprune.profilers.parity import compare_outputs

    return Parity(compare_outputs(reference, actual, atol, rtol), atol, rtol)


def _to_bytes(model, example: tuple, input_names, output_names, dynamic_axes) -> bytes:
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, buffer, dynamo=False, opset_version=OPSET, do_constant_folding=True,
                          input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes)
    return buffer.getvalue()


def export_onnx(model, example: tuple, path: str | Path | None = None, *, input_names=None, output_names=None,
                dynamic_axes=None, atol: float = 1e-4, rtol: float = 1e-3, check: bool = True):
    """Export `model` at `example` inputs; returns (onnx.ModelProto, Parity or None).

    Written to `path` atomically when given. Raises CheckFailedError when ONNX Runtime disagrees with PyTorch
    beyond the tolerance, naming the worst output and the tolerance that would pass.
    """
    import onnx
    import torch

    model = model.eval()
    weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if weight_bytes >= MAX_SINGLE_FILE:  # export writes no external data, so one protobuf must hold them
        raise BadInputError(
            f"the model holds {weight_bytes / 2**30:.1f} GiB of weights, and edgeprune exports a model as one ONNX "
            "protobuf, which cannot exceed 2 GiB", "models this large (ViT-H/14, RegNetY-128GF) are not supported "
            "yet: export with external data is not implemented (docs/coverage.md)")
    input_names = input_names or [f"input{i}" if i else "input" for i in range(len(example))]
    # nn.MultiheadAttention takes its fused inference kernel (aten::_native_multi_head_attention, which has no
    # ONNX symbolic) under no_grad; with grad enabled it traces the decomposed ops the exporter knows.
    mha = any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())
    with torch.enable_grad() if mha else torch.no_grad():
        data = _to_bytes(model, example, input_names, output_names, dynamic_axes)
    proto = onnx.load_from_string(data)
    parity = None
    if check:
        parity = check_parity(model, example, data, input_names, atol, rtol)
        if not parity:
            worst = max(parity.outputs.items(), key=lambda kv: kv[1]["max_abs"])
            raise CheckFailedError(
                f"ONNX Runtime output '{worst[0]}' differs from PyTorch: max abs {worst[1]['max_abs']:.3g}, "
                f"cosine {worst[1]['cosine']:.6f} (tolerance atol={atol:g}, rtol={rtol:g})",
                f"an atol of {parity.needed_atol:.3g} would pass; check for an op the exporter mistranslates",
            )
    if path is not None:
        from edgeprune.atomic import atomic_file

        with atomic_file(path, "wb") as handle:
            handle.write(data)
    return proto, parity


def check_parity(model, example: tuple, onnx_bytes: bytes, input_names, atol: float, rtol: float) -> Parity:
    """Run the ONNX bytes on ONNX Runtime's CPU EP and compare every output with PyTorch's."""
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        ref = model(*example)
    refs = _flatten(ref)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    feeds = {name: t.detach().cpu().numpy() for name, t in zip(input_names, example)}
    names = [o.name for o in session.get_outputs()]
    got = session.run(names, feeds)
    torch_out, ort_out = dict(zip(names, refs)), dict(zip(names, got))
    parity = compare(torch_out, ort_out, atol, rtol)
    if not parity:
        exact = _exact_outputs(model, example)
        if exact is not None and len(exact) == len(names):
            rounding_only(parity, torch_out, ort_out, dict(zip(names, exact)))
    return parity


EXACT_MAX_PARAMS = 200_000_000  # a float64 copy of a larger model costs more memory than a failed check is worth


def _exact_outputs(model, example: tuple) -> list | None:
    """The model's outputs computed in float64 (a copy), or None when it cannot run so (or is too large)."""
    import copy

    import torch

    if sum(p.numel() for p in model.parameters()) > EXACT_MAX_PARAMS:
        return None
    try:
        exact = copy.deepcopy(model).double()
        inputs = tuple(t.double() if torch.is_tensor(t) and t.is_floating_point() else t for t in example)
        with torch.no_grad():
            return _flatten(exact(*inputs))
    except Exception:  # noqa: BLE001 - a model that cannot run in float64 keeps its float32 verdict
        return None


def rounding_only(parity: Parity, torch_out: dict, ort_out: dict, exact: dict) -> Parity:
    """Accept an output ONNX Runtime gets no further from the exact (float64) answer than PyTorch's float32 does.

    Two float32 runtimes that sum in different orders differ by rounding; when the exact answer says ONNX
    Runtime's error is no larger than PyTorch's own, the difference is rounding, not a mistranslated op (measured:
    inception_v3 with BatchNorm re-estimated, outputs ~13: PyTorch float32 is 8.7e-4 from float64, ONNX Runtime
    7.3e-4, the two 9.7e-4 apart). Each such output records both errors under `float64_check`.
    """
    import numpy as np

    for name, out in parity.outputs.items():
        if out["ok"] or name not in exact or "shape" in out:
            continue
        ref = np.asarray(exact[name], dtype=np.float64)
        torch_err = float(np.abs(np.asarray(torch_out[name], dtype=np.float64) - ref).max(initial=0.0))
        ort_err = float(np.abs(np.asarray(ort_out[name], dtype=np.float64) - ref).max(initial=0.0))
        out["float64_check"] = {"onnxruntime_max_abs": ort_err, "pytorch_max_abs": torch_err}
        out["ok"] = ort_err <= torch_err
    return parity


def _flatten(output) -> list:
    import torch

    if isinstance(output, torch.Tensor):
        return [output.detach().cpu().numpy()]
    if isinstance(output, dict):
        output = list(output.values())
    if hasattr(output, "to_tuple"):
        output = output.to_tuple()
    flat = []
    for item in output:
        flat.extend(_flatten(item))
    return flat
