"""`edgeprune profile` on Hugging Face model directories built from tiny configs (no network, seeded weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_profile_cli import run_cli

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory) -> Path:
    import torch

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128)).save_pretrained(root / "llama")
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0,
        eos_token_id=0)).save_pretrained(root / "gpt2")
    transformers.BertModel(transformers.BertConfig(
        vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64)).save_pretrained(root / "bert")
    transformers.ViTModel(transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128)).save_pretrained(root / "vit")
    return root


@pytest.mark.parametrize("regime", ["prefill", "decode"])
def test_llama_directory_gets_attention_and_mlp_blocks_and_variants(hf_models, tmp_path, regime):
    out = tmp_path / f"{regime}.json"
    proc = run_cli("--json", "profile", "--device", "cpu", "--model", str(hf_models / "llama"), "--seq-len", "16",
                   "--regime", regime, "--variants", "2", "--out", str(out), cache=tmp_path / "c.sqlite")
    assert proc.returncode == 0, proc.stderr
    table = json.loads(out.read_text())
    assert table["model"]["regime"] == regime and table["model"]["seq_len"] == 16
    layers = table["layers"]
    attention = [n for n, layer in layers.items() if layer["kind"] == "attention"]
    mlp = [n for n, layer in layers.items() if layer["kind"] == "mlp"]
    assert attention == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    assert mlp == ["model.layers.0.mlp", "model.layers.1.mlp"]
    sig = table["signatures"][layers[attention[0]]["signature"]]["signature"]
    assert sig["head_dim"] == 16 and sig["kv_groups"] == 2 and sig["rope"] is True
    assert (sig["tokens"], sig["past"]) == ((16, 0) if regime == "prefill" else (1, 16))
    assert layers[attention[0]]["c_out"] == 4  # query heads
    heads = sorted({c["c_out"] for c in table["cells"].values() if c["signature"] == layers[attention[0]]["signature"]})
    assert heads == [2, 4]  # whole GQA groups only
    assert table["fidelity"]["n_variants"] == 2


@pytest.mark.parametrize("name", ["gpt2", "bert", "vit"])
def test_other_hf_families_get_a_table_and_head_mlp_variants(hf_models, tmp_path, name):
    out = tmp_path / f"{name}.json"
    proc = run_cli("--json", "profile", "--device", "cpu", "--model", str(hf_models / name), "--seq-len", "16",
                   "--variants", "2", "--out", str(out), cache=tmp_path / "c.sqlite")
    assert proc.returncode == 0, proc.stderr
    table = json.loads(out.read_text())
    fid = table["fidelity"]
    assert fid["n_variants"] == 2  # the family pruner slims heads and MLP channels for the held-out variants
    assert all(v["measured_ms"] > 0 and v["predicted_ms"] > 0 for v in fid["variants"])
    kinds = {layer["kind"] for layer in table["layers"].values()}
    assert {"gemm", "norm"} & kinds or {"attention"} & kinds
    if name in ("bert", "vit"):
        assert "attention" in kinds and "norm" in kinds
    if name == "vit":
        assert table["model"]["input_shape"] == [1, 3, 32, 32] and "conv" in kinds  # the patch embedding


def test_gpt2_decode_regime_is_refused_with_the_fix(hf_models, tmp_path):
    proc = run_cli("profile", "--device", "cpu", "--model", str(hf_models / "gpt2"), "--regime", "decode",
                   "--out", str(tmp_path / "t.json"), cache=tmp_path / "c.sqlite")
    assert proc.returncode == 2 and "--regime prefill" in proc.stderr


def test_decode_reference_cell_is_a_heavy_block_not_a_microsecond_norm(hf_models, tmp_path):
    """The drift reference must take long enough that its own timer noise does not read as drift: a decode
    step's median block is a norm or an add of a few µs, whose readings moved 40 % in one idle run."""
    from edgeprune.latency.blocks import extract_blocks
    from edgeprune.latency.build import dense_onnx, plan_cells
    from edgeprune.models import load_model

    loaded = load_model(str(hf_models / "llama"), seq_len=16, regime="decode")
    proto, _ = dense_onnx(loaded, tmp_path)
    graph = extract_blocks(proto, head_dim=loaded.head_dim)
    _, _, reference = plan_cells(graph, 8, "coarse")
    median = sorted(b.macs for b in graph.blocks)[len(graph.blocks) // 2]
    assert reference["kind"] in ("attention", "mlp", "gemm"), reference
    assert [b for b in graph.blocks if b.signature == reference["signature"]][0].macs > median


def test_decode_step_passes_its_cache_under_the_name_transformers_takes(hf_models):
    """transformers 5.24 renamed `past_key_values` to `cache` and warns on every call with the old name."""
    import inspect
    import warnings

    import torch

    from edgeprune.latency.lm import DecodeStep, cache_argument
    from edgeprune.models import load_model

    loaded = load_model(str(hf_models / "llama"), seq_len=16, regime="decode")
    step = DecodeStep(loaded.module)
    assert cache_argument(loaded.module) in inspect.signature(loaded.module.forward).parameters
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logits = step(*step.example_inputs(16, torch.Generator().manual_seed(0)))
    assert logits.shape[:2] == (1, 1)
    assert not [w for w in caught if "past_key_values" in str(w.message)], [str(w.message) for w in caught]
