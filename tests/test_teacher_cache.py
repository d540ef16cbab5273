"""The teacher cache directory: meta.json and outputs.safetensors checked before a student trains on them."""

from __future__ import annotations

import json

import pytest
import torch

from edgeprune.distillation.cache import load_or_build
from edgeprune.errors import BadInputError


class Samples:
    def __init__(self, inputs):
        self.inputs = inputs

    def __len__(self):
        return len(self.inputs)


@pytest.fixture
def built(tmp_path):
    """(cache dir, teacher, samples) with the cache written once."""
    torch.manual_seed(0)
    teacher, samples = torch.nn.Linear(4, 10), Samples(torch.randn(8, 4))
    path = tmp_path / "cache"
    assert not load_or_build(path, teacher, "t" * 64, samples, top_k=3).reused
    return path, teacher, samples


def reload(built):
    path, teacher, samples = built
    return load_or_build(path, teacher, "t" * 64, samples, top_k=3)


def edit_meta(path, edit):
    meta = json.loads((path / "meta.json").read_text())
    edit(meta)
    (path / "meta.json").write_text(json.dumps(meta))


def test_a_current_cache_is_reused(built):
    cache = reload(built)
    assert cache.reused and tuple(cache.values.shape) == (8, 3) and cache.indices.dtype == torch.int64


@pytest.mark.parametrize("edit, expected", [
    (lambda m: m.update(n="8"), 'meta.json: n: expected an integer >= 0, got "8"'),
    (lambda m: m.update(shape="8x3"), 'meta.json: shape: expected a non-empty list, got "8x3"'),
    (lambda m: m.update(kind="bundle"), 'meta.json: kind: expected one of "teacher_cache", got "bundle"'),
    (lambda m: m.update(dtype="int8"), 'meta.json: dtype: expected one of "fp16", "fp32", got "int8"'),
    (lambda m: m.pop("data_sha256"), "meta.json: data_sha256: missing, expected a sha256"),
])
def test_a_malformed_meta_is_one_line_naming_the_field(built, edit, expected):
    edit_meta(built[0], edit)
    with pytest.raises(BadInputError) as caught:
        reload(built)
    assert expected in caught.value.message and caught.value.hint == f"delete {built[0]}"


def test_meta_that_is_not_an_object_is_refused(built):
    (built[0] / "meta.json").write_text("[1, 2]")
    with pytest.raises(BadInputError, match="meta.json: expected an object, got a list"):
        reload(built)


def test_outputs_that_do_not_match_meta_are_refused(built):
    from safetensors.torch import save_file

    path = built[0]
    save_file({"values": torch.zeros(7, 3, dtype=torch.float16), "indices": torch.zeros(7, 3, dtype=torch.int64)},
              str(path / "outputs.safetensors"))
    with pytest.raises(BadInputError, match=r"does not match its meta.json: values should be fp16 of shape \[8, 3\]"):
        reload(built)
    save_file({"values": torch.zeros(8, 3, dtype=torch.float16), "indices": -torch.ones(8, 3, dtype=torch.int64)},
              str(path / "outputs.safetensors"))
    with pytest.raises(BadInputError, match="indices should be non-negative int64"):
        reload(built)
    (path / "outputs.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(BadInputError, match="outputs.safetensors cannot be read"):
        reload(built)
    (path / "outputs.safetensors").unlink()
    with pytest.raises(BadInputError, match="outputs.safetensors cannot be read"):
        reload(built)


def test_a_cache_of_another_format_version_is_rebuilt(built):
    edit_meta(built[0], lambda m: m.update(format_version=0, n="old fields"))
    cache = reload(built)
    assert not cache.reused and json.loads((built[0] / "meta.json").read_text())["format_version"] == 1
