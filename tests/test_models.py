"""`--model-arg` reaches the model or is refused; a model directory's own code runs only with --trust-remote-code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeprune.errors import BadInputError
from edgeprune.models import load_model, parse_model_args

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("spec, args, valid", [
    # builders that forward **kwargs to a constructor that swallows unknown ones (silently ignored before)
    ("torchvision:mobilenet_v3_small", {"bogus": 1}, ["num_classes", "width_mult", "reduced_tail", "dropout"]),
    ("torchvision:mobilenet_v3_small", {"num_class": 10}, ["num_classes"]),
    # constructors with an explicit signature (a TypeError before)
    ("torchvision:resnet18", {"bogus": 1}, ["num_classes", "zero_init_residual"]),
    ("timm:resnet18", {"bogus": 1}, ["num_classes", "drop_rate"]),
])
def test_a_model_arg_the_architecture_never_takes_is_refused_naming_the_valid_ones(spec, args, valid):
    with pytest.raises(BadInputError) as caught:
        load_model(spec, model_args=args)
    key = next(iter(args))
    assert caught.value.message == f"{spec} does not use the model arg '{key}'"
    taken = caught.value.hint.split("takes: ")[1].split(", ")
    assert set(valid) <= set(taken) and key not in taken
    assert "trust_remote_code" not in taken and "pretrained" not in taken and "weights" not in taken
    if key == "num_class":
        assert caught.value.hint.startswith("did you mean num_classes?")


def test_model_args_that_reach_the_model_are_used():
    loaded = load_model("torchvision:mobilenet_v3_small",
                        model_args={"num_classes": 7, "width_mult": 0.5, "dropout": 0.0, "reduced_tail": True})
    assert loaded.module.classifier[-1].out_features == 7
    assert loaded.module.features[1].block[0][0].out_channels == 8  # 16 channels at width 0.5
    assert load_model("timm:resnet18", model_args={"num_classes": 3}).module.fc.out_features == 3


def test_a_wrong_model_arg_value_is_one_clear_error():
    with pytest.raises(BadInputError, match=r"torchvision:resnet18 rejects the model args"):
        load_model("torchvision:resnet18", model_args={"num_classes": "ten"})


def test_hugging_face_config_fields_are_checked(tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=32).save_pretrained(tmp_path)
    with pytest.raises(BadInputError, match="has no field 'num_hiden_layers'") as caught:
        load_model(str(tmp_path), model_args={"num_hiden_layers": 2}, seq_len=8)
    assert "did you mean num_hidden_layers" in caught.value.hint
    assert load_model(str(tmp_path), model_args={"num_hidden_layers": 2}, seq_len=8).module.config.num_hidden_layers == 2


@pytest.mark.parametrize("pairs", [["trust_remote_code=true"], ["trust_remote_code=false"]])
def test_trust_remote_code_is_never_a_model_arg(pairs):
    with pytest.raises(BadInputError, match="trust_remote_code cannot be set through --model-arg") as caught:
        parse_model_args(pairs)
    assert "--trust-remote-code" in caught.value.hint
    with pytest.raises(BadInputError, match="cannot be set through model_args"):
        load_model("torchvision:resnet18", model_args={"trust_remote_code": True})


@pytest.mark.parametrize("pair", ["=1", "num-classes=1"])
def test_model_arg_keys_must_be_parameter_names(pair):
    with pytest.raises(BadInputError, match="is not a parameter name"):
        parse_model_args([pair])


# -- a model directory that ships its own code ------------------------------------------------------------------

CONFIGURATION = '''
import pathlib
pathlib.Path(MARKER).write_text("the directory's code ran")  # runs on import, as any shipped code can
from transformers import PretrainedConfig

class TinyConfig(PretrainedConfig):
    model_type = "edgeprune-remote-tiny"

    def __init__(self, width=4, **kwargs):
        self.width = width
        super().__init__(**kwargs)
'''

MODELING = '''
import torch
from transformers import PreTrainedModel
from .configuration_tiny import TinyConfig

class TinyModel(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.linear = torch.nn.Linear(config.width, config.width)
        self.post_init()

    def forward(self, input_ids):
        return self.linear(input_ids.float())
'''


@pytest.fixture
def remote_code_model(tmp_path) -> tuple[Path, Path]:
    """(model dir whose config.json maps to its own Python files, the file that code writes when it runs)."""
    pytest.importorskip("transformers")
    model, marker = tmp_path / "remote-model", tmp_path / "code-ran"
    model.mkdir()
    (model / "configuration_tiny.py").write_text(CONFIGURATION.replace("MARKER", repr(str(marker))))
    (model / "modeling_tiny.py").write_text(MODELING)
    (model / "config.json").write_text(json.dumps({"model_type": "edgeprune-remote-tiny", "width": 4, "auto_map": {
        "AutoConfig": "configuration_tiny.TinyConfig", "AutoModel": "modeling_tiny.TinyModel"}}))
    return model, marker


def edgeprune_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """The CLI in a subprocess whose Hugging Face module cache is private (remote code is copied there)."""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf-home"), HF_MODULES_CACHE=str(tmp_path / "hf-modules"))
    return subprocess.run([sys.executable, "-m", "edgeprune", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def test_a_directory_with_its_own_code_is_refused_without_the_flag(remote_code_model, tmp_path):
    model, marker = remote_code_model
    proc = edgeprune_cli("prune", "--model", str(model), "--mode", "uniform", "--ratio", "0.3", "--out",
                         str(tmp_path / "out"), tmp_path=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "ships its own Python code, which runs only with --trust-remote-code" in lines[0]
    assert not marker.exists()


def test_model_arg_cannot_switch_remote_code_on(remote_code_model, tmp_path):
    model, marker = remote_code_model
    proc = edgeprune_cli("prune", "--model", str(model), "--model-arg", "trust_remote_code=true", "--mode", "uniform",
                         "--ratio", "0.3", "--out", str(tmp_path / "out"), tmp_path=tmp_path)
    assert proc.returncode == 2 and "cannot be set through --model-arg" in proc.stderr, proc.stderr
    assert "pass --trust-remote-code" in proc.stderr and not marker.exists()


def test_the_flag_runs_the_directory_code_and_says_so_first(remote_code_model, tmp_path):
    model, marker = remote_code_model
    proc = edgeprune_cli("prune", "--model", str(model), "--trust-remote-code", "--mode", "uniform", "--ratio", "0.3",
                         "--out", str(tmp_path / "out"), tmp_path=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    # loaded with its own code, then refused for what it is (no layout edgeprune can slim)
    assert marker.read_text() == "the directory's code ran"
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert lines[0] == f"warning: --trust-remote-code: Python code in {model} will run on this machine"
    assert "cannot be slimmed" in lines[1]


def test_safetensors_weights_load_into_a_model_that_checks_its_state_dict_version(tmp_path):
    """torchvision's MNASNet refuses a state dict without its version metadata, which safetensors cannot store."""
    from safetensors.torch import save_file

    source = load_model("torchvision:mnasnet0_5", input_shape=(1, 3, 32, 32)).module
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = load_model("torchvision:mnasnet0_5", weights=str(path), input_shape=(1, 3, 32, 32))
    assert loaded.source_sha256 != "" and not loaded.notes
