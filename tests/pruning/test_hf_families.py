"""Hugging Face families as a new user meets them: recognised by model_type, every layer parameter accounted for,
OLMo2 / Phi-3 / DistilBERT pruned, task heads kept through prune -> load -> export (tiny seeded configs, no network).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import edgeprune
from edgeprune.errors import BadInputError
from edgeprune.models import load_model
from edgeprune.pruning.transformer import find_layout, layer_widths, supported_model_types, transformer_layout

tf = pytest.importorskip("transformers")

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
BERT = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=8, intermediate_size=96,
            max_position_embeddings=64)
VIT = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
           intermediate_size=96)
DISTIL = dict(vocab_size=128, dim=64, n_layers=2, n_heads=8, hidden_dim=96, max_position_embeddings=64)


def build(name: str):
    """A tiny seeded model of family `name` (8 query heads of size 8; decoders: 2 kv heads, MLP 96)."""
    torch.manual_seed(0)
    decoders = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
                "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM), "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
                "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM), "olmo2": (tf.Olmo2Config, tf.Olmo2ForCausalLM),
                "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM)}
    if name in decoders:
        config, model = decoders[name]
        extra = {"head_dim": 8} if name in ("qwen3", "gemma") else {}
        extra.update({"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2})
        return model(config(**SMALL, **extra)).eval()
    if name == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=8, n_positions=64,
                                                bos_token_id=0, eos_token_id=0)).eval()
    return {"bert": lambda: tf.BertModel(tf.BertConfig(**BERT)),
            "roberta": lambda: tf.RobertaModel(tf.RobertaConfig(**BERT, pad_token_id=1)),
            "distilbert": lambda: tf.DistilBertModel(tf.DistilBertConfig(**DISTIL)),
            "vit": lambda: tf.ViTModel(tf.ViTConfig(**VIT)),
            "bert-cls": lambda: tf.BertForSequenceClassification(tf.BertConfig(**BERT, num_labels=3)),
            "distilbert-cls": lambda: tf.DistilBertForSequenceClassification(tf.DistilBertConfig(**DISTIL,
                                                                                                  num_labels=4)),
            "vit-cls": lambda: tf.ViTForImageClassification(tf.ViTConfig(**VIT, num_labels=5)),
            }[name]().eval()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """name -> a saved Hugging Face directory, built on first use."""
    root = tmp_path_factory.mktemp("hf-families")
    made = {}

    def get(name: str) -> str:
        if name not in made:
            build(name).save_pretrained(str(root / name))
            made[name] = str(root / name)
        return made[name]
    return get


def logits(loaded, module):
    wrapped = loaded.export_module(module)
    example = loaded.example_inputs(wrapped)
    with torch.no_grad():
        return wrapped(*example)


def ort_outputs(loaded, module, path: Path):
    """(ONNX Runtime's first output, PyTorch's) on the seeded example; export_onnx itself fails on a mismatch."""
    import onnxruntime as ort
    from edgeprune.exporters.onnx import export_onnx

    wrapped = loaded.export_module(module)
    example = loaded.example_inputs(wrapped)
    export_onnx(wrapped, example, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), example)})[0]
    with torch.no_grad():
        return got, wrapped(*example).numpy()


# -- recognition ------------------------------------------------------------------------------------------
EXPECTED = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma": "llama",
            "olmo2": "olmo2", "phi3": "phi3", "gpt2": "gpt2", "bert": "bert", "roberta": "bert",
            "distilbert": "distilbert", "vit": "vit", "bert-cls": "bert", "vit-cls": "vit"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_family_comes_from_model_type(name):
    model = build(name)
    layout = find_layout(model)
    assert layout.family.name == EXPECTED[name]
    assert model.config.model_type in layout.family.model_types
    assert len(layout.layers) == 2 and layout.head_dim == 8


def test_supported_model_types_are_the_tested_ones():
    assert set(supported_model_types()) == {build(n).config.model_type for n in EXPECTED}


def test_olmo2_taken_for_llama_is_refused_naming_its_head_spanning_norms():
    """OLMo2 has LLaMA's module names; said to be LLaMA, its q_norm (64 = 8 heads x 8, not one head's 8) and
    k_norm (16 = 2 kv heads x 8) are parameters the LLaMA pruner would leave at the wrong size."""
    model = build("olmo2")
    model.config.model_type = "llama"
    with pytest.raises(BadInputError) as err:
        find_layout(model)
    assert "model.layers.0" in err.value.message
    assert "self_attn.q_norm.weight [64]" in err.value.message and "self_attn.k_norm.weight [16]" in err.value.message
    assert "olmo2" in err.value.hint and "\n" not in str(err.value)
    assert transformer_layout(model) is None


def test_a_parameter_no_family_handles_is_refused_by_name():
    model = build("llama")
    model.model.layers[1].mlp.scale = torch.nn.Parameter(torch.ones(96))
    with pytest.raises(BadInputError) as err:
        find_layout(model)
    assert err.value.message == ("model.layers.1 of this llama model has parameters the llama pruner does not "
                                 "handle: mlp.scale")


def test_an_unknown_model_type_names_the_module_types_it_found():
    torch.manual_seed(0)
    model = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(vocab_size=128, hidden_size=64, num_hidden_layers=1,
                                                    num_attention_heads=8, intermediate_size=96))
    with pytest.raises(BadInputError) as err:
        find_layout(model)
    assert "model_type 'gpt_neox'" in err.value.message
    assert "GPTNeoXAttention" in err.value.message and "GPTNeoXMLP" in err.value.message
    assert "olmo2" in err.value.hint and "phi3" in err.value.hint


# -- round trips --------------------------------------------------------------------------------------------
def round_trip(path: str, out: Path, tmp_path: Path, **options):
    """Prune, load the written directory, compare outputs with the in-memory result, export, ORT parity."""
    loaded = load_model(path, seq_len=16)
    result = edgeprune.prune(load_model(path, seq_len=16), None, out, criterion="l1", **options)
    reloaded = load_model(str(out), seq_len=16)
    assert torch.allclose(logits(loaded, result.module), logits(reloaded, reloaded.module), atol=1e-6)
    got, ref = ort_outputs(reloaded, reloaded.module, tmp_path / "m.onnx")
    assert np.abs(got - ref).max() <= 5e-6
    return loaded, result, reloaded


@pytest.mark.parametrize("name", ["mistral", "qwen2", "qwen3", "gemma", "olmo2", "phi3", "distilbert", "roberta"])
def test_family_prunes_uniform_loads_runs_and_exports(name, dirs, tmp_path):
    loaded, result, reloaded = round_trip(dirs(name), tmp_path / "out", tmp_path, mode="uniform", ratio=0.5)
    kv = 2 if name not in ("distilbert", "roberta") else 8
    heads = {k: v for k, v in result.widths.items() if k.endswith(".heads")}
    mlp = {k: v for k, v in result.widths.items() if k.endswith(".mlp")}
    assert set(heads.values()) == {kv // 2} and set(mlp.values()) == {48}
    assert layer_widths(find_layout(reloaded.module)) == {0: (kv // 2, 48), 1: (kv // 2, 48)}


def _scale_first_head(model, layer: int, factor: float = 0.01):
    """Make kv head 0 of `layer` (query heads 0-3, head_dim 8) the least important by weight magnitude."""
    attn = model.model.layers[layer].self_attn
    with torch.no_grad():
        if hasattr(attn, "qkv_proj"):  # q rows 0..31, k rows 64..71, v rows 80..87
            for rows in (slice(0, 32), slice(64, 72), slice(80, 88)):
                attn.qkv_proj.weight[rows] *= factor
        else:
            attn.q_proj.weight[:32] *= factor
            attn.k_proj.weight[:8] *= factor
            attn.v_proj.weight[:8] *= factor
        attn.o_proj.weight[:, :32] *= factor


def test_olmo2_heads_pruned_globally_take_their_norm_entries_with_them(tmp_path):
    """Global mode removes the one weak kv head (layer 1's head 0): its q_norm / k_norm entries go with it."""
    model = build("olmo2")
    _scale_first_head(model, 1)
    src = tmp_path / "olmo2"
    model.save_pretrained(str(src))
    q_norm = model.model.layers[1].self_attn.q_norm.weight.detach().clone()
    k_norm = model.model.layers[1].self_attn.k_norm.weight.detach().clone()
    _, result, reloaded = round_trip(str(src), tmp_path / "out", tmp_path, mode="global", ratio=0.2)
    assert result.widths["layers.0.heads"] == 2 and result.widths["layers.1.heads"] == 1
    removed = sum(96 - result.widths[f"layers.{i}.mlp"] for i in range(2))
    assert removed == round(0.2 * (2 * 2 + 2 * 96)) - 1  # every other removed unit is an MLP channel
    attn = reloaded.module.model.layers[1].self_attn
    assert torch.equal(attn.q_norm.weight, q_norm[32:]) and torch.equal(attn.k_norm.weight, k_norm[8:])
    assert reloaded.module.model.layers[0].self_attn.q_norm.weight.shape == (64,)


def _llama_twin(phi3):
    """The LLaMA model computing exactly what `phi3` computes: packed q|k|v and gate|up split apart."""
    config = tf.LlamaConfig(**SMALL, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                            rms_norm_eps=phi3.config.rms_norm_eps)
    twin = tf.LlamaForCausalLM(config).eval()
    state = {}
    for key, value in phi3.state_dict().items():
        if "qkv_proj" in key:
            for part, block in zip(("q_proj", "k_proj", "v_proj"), value.split([64, 16, 16])):
                state[key.replace("qkv_proj", part)] = block
        elif "gate_up_proj" in key:
            for part, block in zip(("gate_proj", "up_proj"), value.chunk(2)):
                state[key.replace("gate_up_proj", part)] = block
        else:
            state[key] = value
    twin.load_state_dict(state, strict=True)
    return twin


@pytest.mark.parametrize("mode", ["uniform", "global"])
def test_phi3_packed_projections_prune_exactly_like_their_llama_twin(mode, tmp_path):
    """Phi-3 differs from LLaMA only in packing q|k|v (with GQA) and gate|up: the same cut must give the same model.

    Global mode at 0.2 removes layer 1's weak kv head only, so the two layers end with different head counts
    (each Phi-3 attention then needs its own head count) — and greedy generation survives save and load.
    """
    phi3 = build("phi3")
    _scale_first_head(phi3, 1)
    twin = _llama_twin(phi3)
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(phi3(ids).logits, twin(ids).logits)
    for name, model in (("phi3", phi3), ("twin", twin)):
        model.save_pretrained(str(tmp_path / name))
    ratio = 0.5 if mode == "uniform" else 0.2
    _, a, phi3_loaded = round_trip(str(tmp_path / "phi3"), tmp_path / "a", tmp_path, mode=mode, ratio=ratio)
    b = edgeprune.prune(load_model(str(tmp_path / "twin"), seq_len=16), None, tmp_path / "b", mode=mode,
                        ratio=ratio, criterion="l1")
    assert a.widths == b.widths
    if mode == "global":
        assert (a.widths["layers.0.heads"], a.widths["layers.1.heads"]) == (2, 1)
        assert [layer.self_attn.config.num_attention_heads for layer in phi3_loaded.module.model.layers] == [8, 4]
    with torch.no_grad():
        assert torch.allclose(a.module(ids).logits, b.module(ids).logits, atol=1e-5)
        tokens = a.module.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(phi3_loaded.module.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0), tokens)


def test_phi3_scores_read_each_packed_block_once():
    """LLM-BIP's MLP gain stacks gate and up once (‖[gate; up]‖₂), PruneNet's first matrix is the gate block."""
    from edgeprune.pruning.llm_bip import mlp_gain
    from edgeprune.pruning.prunenet import first_matrix
    from edgeprune.pruning.space import transformer_space

    model = build("phi3")
    layout = find_layout(model)
    layer = layout.layers[0]
    gate_up = layer.mlp.gate_up_proj.weight.detach().double().numpy()
    down = layer.mlp.down_proj.weight.detach().double().numpy()
    want = np.linalg.svd(gate_up, compute_uv=False)[0] * np.linalg.svd(down, compute_uv=False)[0]
    assert mlp_gain(layer, layout) == pytest.approx(want, rel=1e-9)
    mlp = next(g for g in transformer_space(layout) if g.name == "layers.0.mlp")
    assert torch.equal(first_matrix(mlp), layer.mlp.gate_up_proj.weight.detach()[:96])


@pytest.mark.parametrize("regime", ["decode"])
def test_olmo2_and_phi3_decode_step_exports_with_per_layer_kv_heads(regime, tmp_path):
    """A decode step (one token, a KV cache sized per layer) of a model whose layers kept different kv heads."""
    for name in ("olmo2", "phi3"):
        model = build(name)
        _scale_first_head(model, 1)
        model.save_pretrained(str(tmp_path / name))
        out = tmp_path / f"{name}-pruned"
        edgeprune.prune(load_model(str(tmp_path / name), seq_len=16), None, out, mode="global", ratio=0.2,
                        criterion="l1")
        loaded = load_model(str(out), seq_len=16, regime=regime)
        past = loaded.example_inputs()[1:]
        assert [t.shape[1] for t in past] == [2, 2, 1, 1]  # key and value of layer 0, then of layer 1
        got, ref = ort_outputs(loaded, loaded.module, tmp_path / f"{name}.onnx")
        assert got.shape == (1, 1, 128) and np.abs(got - ref).max() <= 5e-6


# -- task heads -------------------------------------------------------------------------------------------
HEADS = {"bert-cls": ("BertForSequenceClassification", (1, 3), "classifier"),
         "distilbert-cls": ("DistilBertForSequenceClassification", (1, 4), "classifier"),
         "vit-cls": ("ViTForImageClassification", (1, 5), "classifier")}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_task_heads_survive_prune_load_and_export(name, dirs, tmp_path):
    cls, shape, head = HEADS[name]
    path = dirs(name)
    loaded = load_model(path, seq_len=16)
    assert type(loaded.module).__name__ == cls  # not the bare encoder AutoModel gives
    source = build(name)
    assert torch.equal(getattr(loaded.module, head).weight, getattr(source, head).weight)  # the trained head
    assert torch.allclose(logits(loaded, loaded.module), logits(loaded, source), atol=1e-6)
    out = tmp_path / "pruned"
    result = edgeprune.prune(load_model(path, seq_len=16), None, out, mode="uniform", ratio=0.5, criterion="l1")
    reloaded = load_model(str(out), seq_len=16)
    assert type(reloaded.module).__name__ == cls
    assert torch.equal(getattr(reloaded.module, head).weight, getattr(source, head).weight)
    pruned_logits, loaded_logits = logits(loaded, result.module), logits(reloaded, reloaded.module)
    assert pruned_logits.shape == shape
    assert torch.allclose(pruned_logits, loaded_logits, atol=1e-6)
    assert (pruned_logits - logits(loaded, source)).abs().max() > 1e-4  # it really was pruned
    bundle = edgeprune.export(str(out), tmp_path / "bundle", seq_len=16)
    assert [o["shape"] for o in bundle.manifest["outputs"]] == [list(shape)]
    got, ref = ort_outputs(reloaded, reloaded.module, tmp_path / "m.onnx")
    assert got.shape == shape and np.abs(got - ref).max() <= 5e-6


def test_a_bare_encoder_still_outputs_hidden_states(dirs):
    loaded = load_model(dirs("bert"), seq_len=16)
    assert type(loaded.module).__name__ == "BertModel"
    assert logits(loaded, loaded.module).shape == (1, 16, 64)


# -- bad input ------------------------------------------------------------------------------------------------
def test_a_uniform_ratio_that_empties_a_group_is_refused_with_the_largest_that_does_not(dirs, tmp_path):
    """2 kv heads: round(2 x 0.25) = 0 kept at 0.75 (round half to even), round(2 x 0.26) = 1 at 0.74."""
    path = dirs("llama")
    with pytest.raises(BadInputError) as err:
        edgeprune.prune(load_model(path, seq_len=16), None, tmp_path / "no", mode="uniform", ratio=0.75)
    assert "layers.0.heads (2 kv heads" in err.value.message and "--ratio 0.74 or less" in err.value.hint
    assert not (tmp_path / "no").exists()
    result = edgeprune.prune(load_model(path, seq_len=16), None, tmp_path / "yes", mode="uniform", ratio=0.74)
    assert result.widths["layers.0.heads"] == 1 and result.widths["layers.0.mlp"] == round(96 * 0.26)


# -- latency budgets --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["olmo2", "phi3", "distilbert", "bert-cls"])
def test_family_profiles_and_prunes_to_a_latency_budget(name, dirs, tmp_path, formula_device, cli_in_process):
    """The table covers the family's blocks (OLMo2: attention and MLP blocks, q_norm / k_norm inside the
    attention; the BERT family: attention or projections as linear blocks), so a budget drives the pruning."""
    import json

    table, out = tmp_path / "table.json", tmp_path / "pruned"
    proc = cli_in_process("--json", "profile", "--device", "cpu", "--model", dirs(name), "--seq-len", "16",
                          "--variants", "2", "--out", str(table), cache=tmp_path / "c.sqlite")
    assert proc.returncode == 0, proc.stderr
    layers = json.loads(table.read_text())["layers"]
    kinds = [layer["kind"] for layer in layers.values()]
    if name in ("olmo2", "phi3", "distilbert"):  # Phi-3's packed qkv_proj / gate_up_proj read as one block each
        assert kinds.count("attention") == 2 and kinds.count("mlp") == 2, kinds
        attention = [layer for layer in layers.values() if layer["kind"] == "attention"]
        mlp = [layer for layer in layers.values() if layer["kind"] == "mlp"]
        assert all(a["c_out"] == 8 for a in attention)  # 8 query heads, read off the packed qkv for Phi-3
        assert all(m["c_out"] == 96 for m in mlp)  # Phi-3: gate|up is 192 rows, 96 channels
        if name != "distilbert":
            signatures = json.loads(table.read_text())["signatures"]  # 8 query heads over 2 kv heads
            assert all(signatures[a["signature"]]["signature"]["kv_groups"] == 4 for a in attention)
    proc = cli_in_process("--json", "prune", "--model", dirs(name), "--table", str(table), "--budget", "1.1x",
                          "--min-keep", "0.1", "--criterion", "l2", "--out", str(out), cache=tmp_path / "c.sqlite")
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["predicted_ms"] <= reply["budget_ms"] + 1e-9
    assert reply["measured"]["dense_ms"] / reply["measured"]["pruned_ms"] >= 1.1 * 0.97
    assert load_model(str(out), seq_len=16).module is not None


@pytest.mark.parametrize("name", ["llama", "olmo2"])
def test_a_decode_table_drives_a_budget_in_ms_per_token(name, dirs, tmp_path, formula_device, cli_in_process):
    """`--regime decode`: the table times one token with a KV cache; a budget in ms per decoded token prunes to it,
    an unreachable one says what is reachable; without --regime the model is loaded in the table's regime, and a
    prefill load of it does not match a decode table."""
    import json
    import re

    table, out = tmp_path / "decode.json", tmp_path / "pruned"
    common = ("--model", dirs(name), "--seq-len", "16", "--regime", "decode")
    proc = cli_in_process("--json", "profile", "--device", "cpu", *common, "--variants", "2", "--out", str(table),
                          cache=tmp_path / "c.sqlite")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(table.read_text())["model"]["regime"] == "decode"
    # a tiny model's decode step is mostly fixed cost: 3x is out of reach, and the line says what is reachable
    proc = cli_in_process("prune", *common, "--table", str(table), "--budget", "3x", "--min-keep", "0.1",
                          "--out", str(out), cache=tmp_path / "c.sqlite")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and not out.exists()
    fastest, dense = (float(x) for x in re.search(r"latency ([\d.]+) ms \(dense ([\d.]+) ms", proc.stderr).groups())
    assert fastest < dense
    budget = (fastest + dense) / 2
    proc = cli_in_process("--json", "prune", *common, "--table", str(table), "--budget", f"{budget:.4f}ms",
                          "--min-keep", "0.1", "--out", str(out), cache=tmp_path / "c.sqlite")
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["predicted_ms"] <= reply["budget_ms"] + 1e-9 and reply["budget_ms"] < dense
    config = json.loads((out / "config.json").read_text())
    assert config != json.loads((Path(dirs(name)) / "config.json").read_text())  # something was removed
    proc = cli_in_process("prune", "--model", dirs(name), "--seq-len", "16", "--regime", "prefill", "--table",
                          str(table), "--budget", f"{budget:.4f}ms", "--out", str(tmp_path / "no"),
                          cache=tmp_path / "c.sqlite")
    assert proc.returncode == 2 and "regime decode" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "no").exists()
