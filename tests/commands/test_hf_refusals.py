"""Hugging Face inputs edgeprune refuses, as a user meets them on the command line: one line, exit 2, no traceback,
nothing written. Encoder-decoder models everywhere; a ratio that empties a group; calibration text shorter than
the context; a PruneNet policy learned for other shapes."""

from __future__ import annotations

import pytest
import torch

tf = pytest.importorskip("transformers")

WORDS = "the a cat dog sat ran on under mat rug and then slept ate".split()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny seeded T5, Whisper and GQA LLaMA (with a word-level tokenizer) directories."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models

    root = tmp_path_factory.mktemp("hf-refusals")
    torch.manual_seed(0)
    tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=128, d_model=64, d_kv=8, d_ff=96, num_layers=2,
                                              num_heads=8)).save_pretrained(str(root / "t5"))
    tf.WhisperForConditionalGeneration(tf.WhisperConfig(
        vocab_size=128, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, num_mel_bins=16, max_source_positions=32,
        max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )).save_pretrained(str(root / "whisper"))
    tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64)
                        ).save_pretrained(str(root / "llama"))
    vocab = {w: i for i, w in enumerate(["[UNK]", *WORDS])}
    tokenizer = Tokenizer(tok_models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tf.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(str(root / "llama"))
    return root


def refused(proc, out) -> str:
    """The one stderr line of a refusal (after asserting exit 2, no traceback, nothing written)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()
    return lines[0]


COMMANDS = {
    "prune": ["prune", "--mode", "uniform", "--ratio", "0.5"],
    "profile": ["profile", "--device", "cpu", "--variants", "0"],
    "export": ["export"],
}


@pytest.mark.parametrize("family", ["t5", "whisper"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_encoder_decoder_models_are_refused_in_one_line_by_every_command(family, command, models, tmp_path,
                                                                         cli_in_process):
    out = tmp_path / "out.json" if command == "profile" else tmp_path / "out"
    proc = cli_in_process(*COMMANDS[command], "--model", str(models / family), "--seq-len", "8", "--out", str(out),
                          cache=tmp_path / "c.sqlite")
    line = refused(proc, out)
    assert f"holds a {family} model (encoder-decoder)" in line
    assert "olmo2" in line and "phi3" in line and "distilbert" in line  # what is supported
    assert "give a Hugging Face" not in line  # the user gave one


def test_a_ratio_that_removes_every_kv_head_is_refused(models, tmp_path, cli_in_process):
    """2 kv heads per layer: --ratio 0.8 keeps round(0.4) = 0 of them; 0.74 is the largest that keeps one."""
    out = tmp_path / "out"
    proc = cli_in_process("prune", "--model", str(models / "llama"), "--mode", "uniform", "--ratio", "0.8",
                          "--no-measure", "--out", str(out))
    line = refused(proc, out)
    assert "--ratio 0.8 would remove every unit of layers.0.heads (2 kv heads" in line
    assert "use --ratio 0.74 or less" in line


def test_a_ratio_that_removes_every_mlp_channel_is_refused(tmp_path, cli_in_process):
    """A 3-channel MLP: --ratio 0.9 keeps round(0.3) = 0; the kv heads (4) are fine, the MLP group is named."""
    torch.manual_seed(0)
    tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=3, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
                        ).save_pretrained(str(tmp_path / "narrow"))
    out = tmp_path / "out"
    proc = cli_in_process("prune", "--model", str(tmp_path / "narrow"), "--mode", "uniform", "--ratio", "0.9",
                          "--no-measure", "--out", str(out))
    line = refused(proc, out)
    assert "layers.0.mlp (3 MLP channels" in line and "use --ratio 0.83 or less" in line  # 3 x 0.17 = 0.51 -> 1


def test_calibration_text_shorter_than_the_context_is_refused(models, tmp_path, cli_in_process):
    """12 words are 12 tokens of the word-level tokenizer: not one sequence of 16; 40 words make two."""
    short, long = tmp_path / "short.txt", tmp_path / "long.txt"
    short.write_text(" ".join(WORDS[i % len(WORDS)] for i in range(12)))
    long.write_text(" ".join(WORDS[i % len(WORDS)] for i in range(40)))
    out = tmp_path / "out"
    proc = cli_in_process("prune", "--model", str(models / "llama"), "--mode", "uniform", "--ratio", "0.5",
                          "--criterion", "wanda_sp", "--calib", str(short), "--seq-len", "16", "--no-measure",
                          "--out", str(out))
    line = refused(proc, out)
    assert "has 12 tokens, fewer than one sequence of 16" in line
    proc = cli_in_process("prune", "--model", str(models / "llama"), "--mode", "uniform", "--ratio", "0.5",
                          "--criterion", "wanda_sp", "--calib", str(long), "--seq-len", "16", "--no-measure",
                          "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").is_file()


def test_a_policy_for_other_shapes_is_refused(models, tmp_path, cli_in_process):
    """A PruneNet policy trained on the 96x64 MLPs, reused on a model whose MLPs are 80x64."""
    policy = tmp_path / "policy.safetensors"
    proc = cli_in_process("prune", "--model", str(models / "llama"), "--mode", "uniform", "--ratio", "0.3",
                          "--criterion", "prunenet", "--policy", str(policy), "--no-measure",
                          "--out", str(tmp_path / "trained"))
    assert proc.returncode == 0, proc.stderr
    torch.manual_seed(0)
    tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=80, num_hidden_layers=1,
                                       num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64)
                        ).save_pretrained(str(tmp_path / "other"))
    before = policy.read_bytes()
    out = tmp_path / "out"
    proc = cli_in_process("prune", "--model", str(tmp_path / "other"), "--mode", "uniform", "--ratio", "0.3",
                          "--criterion", "prunenet", "--policy", str(policy), "--no-measure", "--out", str(out))
    line = refused(proc, out)
    assert "(d_ff x d) 96x64; this model needs 80x64" in line
    assert policy.read_bytes() == before  # the policy file is left as it was
