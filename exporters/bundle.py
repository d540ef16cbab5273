"""The deployable bundle (DESIGN.md): model.onnx (+ engine), manifest.json, reference_io.npz — atomically.

The manifest carries everything `edgeprune validate` needs without extra flags: the sha256 of every file, the
input spec and preprocessing, the model's widths, the latency table's id and fidelity, the budget and the
predicted latency, the baseline accuracy when known, tool versions and the table's device fingerprint. Its
`id` is the sha256 of its own content (without the id). Reference inputs are real samples when the user gives
data; their outputs are PyTorch's, and the exported graph must reproduce them on ONNX Runtime or the export
fails (per output: max abs, max rel, cosine, and the tolerance that would have passed).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.latency.table import content_id

FORMAT_VERSION = 1
MAX_SINGLE_FILE = 2 * 1024**3  # protobuf's limit: larger models keep their weights in an external data file


@dataclass
class ExportResult:
    out: Path
    manifest: dict
    parity: dict
    notes: list = field(default_factory=list)


def tool_versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("edgeprune", "torch", "onnx", "onnxruntime", "onnxslim", "transformers", "tensorrt"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def clean_up(proto) -> tuple:
    """(ModelProto, record): onnxslim's graph clean-up when it is installed, else the graph as exported."""
    try:
        import onnxslim
    except ImportError:
        return proto, {"tool": None, "note": "onnxslim not installed: graph left as exported"}
    before = len(proto.graph.node)
    slim = onnxslim.slim(proto)
    if slim is None:
        return proto, {"tool": "onnxslim", "note": "onnxslim returned nothing: graph left as exported"}
    return slim, {"tool": "onnxslim", "nodes_before": before, "nodes_after": len(slim.graph.node)}


def _io_spec(session) -> tuple:
    ins = [{"name": i.name, "shape": [d if isinstance(d, int) else 1 for d in i.shape],
            "dtype": {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32",
                      "tensor(float16)": "float16"}.get(i.type, i.type)} for i in session.get_inputs()]
    outs = [{"name": o.name, "shape": [d if isinstance(d, int) else None for d in o.shape]}
            for o in session.get_outputs()]
    return ins, outs


def reference_io(wrapped, samples: list, model, input_names: list, atol: float, rtol: float) -> tuple:
    """({'input:NAME'/'output:NAME': stacked arrays}, parity record): PyTorch outputs vs ONNX Runtime's.

    `model` is the ONNX file's path (or its bytes).
    """
    import numpy as np
    import onnxruntime as ort
    import torch
    from edgeprune.profilers.parity import compare_outputs

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in session.get_outputs()]
    refs = {n: [] for n in out_names}
    got = {n: [] for n in out_names}
    ins = {n: [] for n in input_names}
    from .onnx import _flatten

    for sample in samples:
        with torch.no_grad():
            flat = _flatten(wrapped(*sample))
        feeds = {n: t.detach().cpu().numpy() for n, t in zip(input_names, sample)}
        for n, value in zip(out_names, flat):
            refs[n].append(value)
        for n, value in zip(out_names, session.run(out_names, feeds)):
            got[n].append(value)
        for n, value in feeds.items():
            ins[n].append(value)
    refs = {n: np.concatenate(v) for n, v in refs.items()}
    got = {n: np.concatenate(v) for n, v in got.items()}
    outputs = compare_outputs(refs, got, atol, rtol)
    parity = {"atol": atol, "rtol": rtol, "samples": len(samples), "outputs": outputs,
              "ok": all(r["ok"] for r in outputs.values())}
    arrays = {f"input:{n}": np.concatenate(v) for n, v in ins.items()}
    arrays.update({f"output:{n}": v for n, v in refs.items()})
    return arrays, parity


def write_bundle(out: str | Path, model_bytes: bytes, arrays: dict, manifest: dict, engine: bytes | None = None,
                 external_data: bytes | None = None) -> dict:
    """Write the files, then the manifest with their checksums; the directory appears only when complete."""
    import numpy as np
    from edgeprune.profilers.bundle import MANIFEST
    from edgeprune.profilers.schema import check

    from edgeprune.atomic import atomic_dir
    from edgeprune.errors import BadInputError

    files = {"model.onnx": model_bytes}
    if external_data is not None:
        files["model.onnx.data"] = external_data
    if engine is not None:
        files["model.engine"] = engine
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    files["reference_io.npz"] = buffer.getvalue()
    manifest = dict(manifest, format_version=FORMAT_VERSION, kind="bundle", model="model.onnx",
                    files={name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                           for name, data in files.items()})
    manifest["id"] = content_id(manifest)
    check(manifest, MANIFEST, lambda bad: BadInputError(f"the bundle's manifest would not be readable: {bad}",
                                                        "check the values given to export (accuracies are "
                                                        "fractions in [0, 1]); nothing was written"))
    with atomic_dir(out) as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        (Path(tmp) / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return manifest


def read_bundle(path: str | Path) -> dict:
    """The verified manifest of a bundle: its schema, every file present and matching its checksum, no link
    and no unlisted file, readable reference I/O; else one clear error."""
    from edgeprune.profilers.bundle import verify
    from edgeprune.profilers.errors import ProfilerError

    from edgeprune.errors import BadInputError

    path = Path(path)
    if not path.is_dir():
        raise BadInputError(f"bundle {path} does not exist", "give the directory edgeprune export wrote")
    try:
        manifest = verify(str(path))
    except ProfilerError as err:
        raise BadInputError(err.message, err.hint) from None
    if manifest.get("id") != content_id(manifest):
        raise BadInputError(f"{path}/manifest.json was modified after export (id mismatch)",
                            "re-run edgeprune export; never edit a bundle by hand")
    return manifest


def bundle_files(bundles: dict) -> dict:
    """{job file name: local path} that sends each bundle ({name on the device: bundle dir}, already read with
    `read_bundle`) as its manifest and the files it lists, one by one: never reports/ or anything else beside
    them, and never through a link (the device verifies the checksums again)."""
    from edgeprune.profilers.bundle import MANIFEST_FILE

    from edgeprune.errors import BadInputError

    files = {}
    for name, bundle in bundles.items():
        manifest = json.loads((Path(bundle) / MANIFEST_FILE).read_text())
        for member in [MANIFEST_FILE, *sorted(manifest["files"])]:
            path = Path(bundle) / member
            if path.is_symlink() or not path.is_file():
                raise BadInputError(f"bundle {bundle} changed while it was being sent: {member} is no longer a "
                                    "plain file", "run the command again; do not edit a bundle while it is in use")
            files[f"{name}/{member}"] = path
    return files


def check_reports(reply: dict, where: str, n: int) -> list:
    """The `n` per-bundle reports a device's `profilers bundle` job returned, checked before any gate reads them."""
    from edgeprune.profilers.bundle import REPORT
    from edgeprune.profilers.schema import check

    from edgeprune.errors import DeviceError

    hint = "the device side and the host side may be different edgeprune versions; reinstall edgeprune"
    check(reply, REPORT, lambda bad: DeviceError(f"the bundle job on {where} returned a malformed report: {bad}",
                                                 hint))
    if len(reply["bundles"]) != n:
        raise DeviceError(f"the bundle job on {where} returned {len(reply['bundles'])} reports for {n} bundles", hint)
    return reply["bundles"]
