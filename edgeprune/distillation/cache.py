"""The teacher cache (DESIGN.md): the teacher's outputs on the fine-tune set, computed once, stored in fp16.

meta.json records what makes the cache current — the teacher's weights hash, the data's hash, top-k and
dtype — so a second distillation with the same teacher and data reads the cache instead of running the teacher.
Logits are stored raw (the temperature is applied when training), either all of them or the top-k per
position with their indices (for language models, where the vocabulary makes full logits large).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import BadInputError
from edgeprune.profilers.schema import Int, ListOf, Maybe, Num, Obj, Str, check

FORMAT_VERSION = 1
SHA256 = Str(pattern="[0-9a-f]{64}", what="a sha256 (64 hex digits)")
META = Obj({"kind": Str(["teacher_cache"]), "teacher_sha256": Str(), "data_sha256": SHA256,
            "top_k": Maybe(Int(min=1)), "dtype": Str(["fp16", "fp32"]), "n": Int(min=0),
            "shape": ListOf(Int(min=0), min_len=1)}, {"temperature": Num(min=0), "build_s": Num(min=0)})


@dataclass
class TeacherCache:
    values: object  # torch.Tensor [N, ..., K] fp16 (logits, or top-k logits)
    indices: object | None  # torch.Tensor [N, ..., K] int64 when top-k, else None
    meta: dict
    reused: bool
    build_s: float


def tensor_sha256(tensor) -> str:
    digest = hashlib.sha256()
    t = tensor.detach().cpu().contiguous()
    digest.update(str(tuple(t.shape)).encode())
    digest.update(str(t.dtype).encode())
    digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def _logits(output):
    return getattr(output, "logits", output)


def teacher_outputs(teacher, inputs, batch_size: int, top_k: int | None, dtype):
    """(values, indices) of the teacher's logits over `inputs`, batch by batch, no gradients."""
    import torch

    values, indices = [], []
    teacher.eval()
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            logits = _logits(teacher(inputs[start:start + batch_size])).float()
            if top_k and top_k < logits.shape[-1]:
                top = logits.topk(top_k, dim=-1)
                values.append(top.values.to(dtype))
                indices.append(top.indices)
            else:
                values.append(logits.to(dtype))
    return torch.cat(values), (torch.cat(indices) if indices else None)


def read_meta(path: Path) -> dict | None:
    """meta.json checked against its schema; None when there is none or it is from another format version
    (the cache is then rebuilt). A malformed one is an error: the directory may not be a teacher cache at all."""
    if not (path / "meta.json").is_file():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadInputError(f"teacher cache {path}/meta.json is not valid JSON", f"delete {path}") from None
    if isinstance(meta, dict) and meta.get("format_version") != FORMAT_VERSION:
        return None
    return check(meta, META, lambda bad: BadInputError(f"teacher cache {path}/meta.json: {bad}", f"delete {path}"))


def read_outputs(path: Path, meta: dict) -> tuple:
    """(values, indices) of outputs.safetensors, of the shape and dtype meta.json records."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = path / "outputs.safetensors"
    try:
        tensors = load_file(str(file))
    except (OSError, SafetensorError) as err:
        raise BadInputError(f"teacher cache {file} cannot be read: {str(err).splitlines()[0][:160]}",
                            f"delete {path}") from None
    values, indices = tensors.get("values"), tensors.get("indices")
    dtype = {"fp16": "torch.float16", "fp32": "torch.float32"}[meta["dtype"]]
    problems = []
    if values is None or list(values.shape) != meta["shape"] or str(values.dtype) != dtype:
        problems.append(f"values should be {meta['dtype']} of shape {meta['shape']}")
    if meta["shape"][0] != meta["n"]:
        problems.append(f"its shape {meta['shape']} does not hold n = {meta['n']} samples")
    if indices is not None and (meta["top_k"] is None or values is None or indices.shape != values.shape
                                or str(indices.dtype) != "torch.int64" or (indices.numel() and int(indices.min()) < 0)):
        problems.append("indices should be non-negative int64 of the values' shape, and only with top_k")
    if problems:
        raise BadInputError(f"teacher cache {file} does not match its meta.json: {'; '.join(problems)}",
                            f"delete {path}")
    return values, indices


def load_or_build(path: str | Path, teacher, teacher_sha256: str, samples, *, top_k: int | None = None,
                  dtype: str = "fp16", temperature: float = 4.0, batch_size: int = 64) -> TeacherCache:
    """Read the cache at `path` when it is current for this teacher and data; otherwise build it atomically."""
    import torch
    from safetensors.torch import save_file

    from edgeprune.atomic import atomic_dir

    path = Path(path)
    torch_dtype = {"fp16": torch.float16, "fp32": torch.float32}[dtype]
    want = {"teacher_sha256": teacher_sha256, "data_sha256": tensor_sha256(samples.inputs), "top_k": top_k,
            "dtype": dtype, "n": len(samples)}
    meta = read_meta(path)
    if meta is not None and all(meta.get(k) == v for k, v in want.items()):
        values, indices = read_outputs(path, meta)
        return TeacherCache(values, indices, meta, True, 0.0)
    started = time.time()
    values, indices = teacher_outputs(teacher, samples.inputs, batch_size, top_k, torch_dtype)
    build_s = time.time() - started
    meta = dict(want, format_version=FORMAT_VERSION, kind="teacher_cache", temperature=temperature,
                shape=list(values.shape), build_s=build_s, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    tensors = {"values": values.contiguous()}
    if indices is not None:
        tensors["indices"] = indices.contiguous()
    with atomic_dir(path) as tmp:
        save_file(tensors, str(Path(tmp) / "outputs.safetensors"))
        (Path(tmp) / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return TeacherCache(values, indices, meta, False, build_s)
