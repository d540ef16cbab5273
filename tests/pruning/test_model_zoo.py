"""Every model family the pruning issue names: prune -> forward -> save -> load -> ONNX export -> ORT parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgeprune
from edgeprune.models import load_model

TORCHVISION = [
    ("resnet18", {}, "1x3x64x64"),
    ("resnet50", {}, "1x3x64x64"),
    ("mobilenet_v2", {}, "1x3x64x64"),
    ("mobilenet_v3_small", {}, "1x3x64x64"),
    ("efficientnet_b0", {}, "1x3x64x64"),
    ("vit_b_16", {"image_size": 32}, "1x3x32x32"),
]


def hf_dir(tmp_path, family: str):
    import transformers as tf

    torch.manual_seed(0)
    if family == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96,
                                                   num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                                   max_position_embeddings=64))
    elif family == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=8, n_positions=64,
                                                 bos_token_id=0, eos_token_id=0))
    else:
        model = tf.BertModel(tf.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                           intermediate_size=96, max_position_embeddings=64))
    path = tmp_path / family
    model.save_pretrained(str(path))
    return str(path)


def ort_max_diff(loaded, module, path) -> float:
    return ort_parity(loaded, module, path)[0]


def ort_parity(loaded, module, path) -> tuple:
    """(max abs difference, largest reference magnitude) between ONNX Runtime and PyTorch on the first output."""
    import onnxruntime as ort
    from edgeprune.exporters.onnx import export_onnx

    wrapped = loaded.export_module(module)
    example = loaded.example_inputs(wrapped)
    export_onnx(wrapped, example, path)  # raises if ORT and PyTorch differ beyond 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), example)}
    got = session.run(None, feeds)[0]
    with torch.no_grad():
        ref = wrapped(*example)
    ref = getattr(ref, "logits", ref).numpy()
    return float(np.abs(got - ref).max()), float(np.abs(ref).max())


def check_round_trip(loaded, result, out, tmp_path):
    before = sum(p.numel() for p in loaded.module.parameters())
    after = sum(p.numel() for p in result.module.parameters())
    assert after < 0.9 * before
    assert any(w < full for w, full in zip(result.widths.values(), _dense_units(loaded)))
    reloaded = load_model(str(out), seq_len=loaded.seq_len)
    wrapped_a, wrapped_b = loaded.export_module(result.module), reloaded.export_module(reloaded.module)
    example = loaded.example_inputs(wrapped_a)
    with torch.no_grad():
        a, b = wrapped_a(*example), wrapped_b(*example)
    assert torch.allclose(a, b, atol=1e-6)
    assert ort_max_diff(reloaded, reloaded.module, tmp_path / "m.onnx") <= 1e-4


def _dense_units(loaded):
    from edgeprune.pruning.space import build_space

    wrapped = loaded.export_module()
    return [g.units for g in build_space(wrapped, loaded.example_inputs(wrapped))]


@pytest.mark.parametrize("name,args,shape", TORCHVISION, ids=[t[0] for t in TORCHVISION])
def test_torchvision_models_prune_save_load_export(name, args, shape, tmp_path):
    from edgeprune.models import parse_shape

    spec = f"torchvision:{name}"
    loaded = load_model(spec, model_args=args, input_shape=parse_shape(shape))
    out = tmp_path / "pruned"
    # a MACs target: the width model is probed from exports of this model, so every block must keep its name
    result = edgeprune.prune(load_model(spec, model_args=args, input_shape=parse_shape(shape)), None, out,
                             mode="global", macs=0.7, criterion="l2")
    assert result.macs <= 0.7 * result.dense_macs * 1.02
    with torch.no_grad():
        assert result.module(torch.zeros(parse_shape(shape))).shape[-1] == 1000
    check_round_trip(loaded, result, out, tmp_path)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_hugging_face_families_prune_heads_and_mlp(family, tmp_path):
    path = hf_dir(tmp_path, family)
    loaded = load_model(path, seq_len=16)
    out = tmp_path / "pruned"
    result = edgeprune.prune(load_model(path, seq_len=16), None, out, mode="uniform", ratio=0.5, criterion="l1")
    heads = {k: v for k, v in result.widths.items() if k.endswith(".heads")}
    mlp = {k: v for k, v in result.widths.items() if k.endswith(".mlp")}
    kv = 2 if family == "llama" else 8
    mlp_dense = 256 if family == "gpt2" else 96  # GPT-2's MLP is 4 × hidden
    assert set(heads.values()) == {kv // 2} and set(mlp.values()) == {mlp_dense // 2}
    check_round_trip(loaded, result, out, tmp_path)
