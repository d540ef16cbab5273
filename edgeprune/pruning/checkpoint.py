"""The pruned-model directory (DESIGN.md): config.json + model.safetensors + provenance.json, never a pickle.

config.json carries an `edgeprune` section: how to rebuild the source architecture (its `--model` spec and
constructor args, or the Hugging Face config itself), the kept units per group, and the new sizes of every
module pruning changed. `load_pruned` rebuilds the dense architecture, resizes those modules, and loads the
safetensors strictly. For Hugging Face models config.json is also the model's own config, so a pruned model
whose layers all kept the same widths loads with `AutoModel*.from_pretrained` as well.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeprune.errors import BadInputError
from edgeprune.profilers.schema import Either, Int, ListOf, MapOf, Maybe, Num, Obj, Str, check

FORMAT_VERSION = 1
SIZE = Either(Int(min=0), ListOf(Int(min=0)), what="a size (an integer or a list of integers)")
# config.json: the `edgeprune` section load_pruned rebuilds from (the rest is Hugging Face's own config)
CONFIG = Obj({"edgeprune": Obj({
    "source": Obj({"spec": Str()}, {"family": Str(), "input_shape": Maybe(ListOf(Int(min=1), min_len=1)),
                                    "seq_len": Maybe(Int(min=1)), "regime": Maybe(Str()), "model_args": Maybe(Obj()),
                                    "sha256": Maybe(Str())}),
    "widths": MapOf(Int(min=0)),
    "modules": MapOf(MapOf(SIZE)),
})}, {"model_type": Str()})
MS = Maybe(Num(min=0))
# provenance.json: what export copies into the bundle's manifest
PROVENANCE = Obj({}, {
    "widths": Maybe(MapOf(Int(min=0))), "budget": Maybe(Either(Str(), Num(min=0), what="a budget like \"2x\"")),
    "budget_ms": MS, "predicted_ms": MS, "dense_predicted_ms": MS, "baseline_accuracy": Maybe(Num(min=0, max=1)),
    "measured": Maybe(Obj({}, {"dense_ms": MS, "pruned_ms": MS, "budget_ms": MS})),
    "table": Maybe(Obj({}, {"id": Str(), "runtime": Maybe(Obj()), "fidelity": Maybe(Obj()),
                            "fingerprint": Maybe(Obj()), "estimator": Maybe(Obj())})),
    "distillation": Maybe(Obj()),
})
SIZE_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
              "normalized_shape", "num_heads", "num_key_value_heads", "num_key_value_groups", "embed_dim",
              "head_dim", "kdim", "vdim", "hidden_size", "intermediate_size", "num_attention_heads",
              "attention_head_size", "all_head_size", "split_size", "nf", "hidden_dim", "mlp_dim")


def module_sizes(module) -> dict:
    """{module name: {size attribute: value}} for every module that has one (ints and int tuples only)."""
    out = {}
    for name, mod in module.named_modules():
        attrs = {}
        for attr in SIZE_ATTRS:
            value = mod.__dict__.get(attr)
            if isinstance(value, bool):
                continue
            if isinstance(value, int) or (isinstance(value, tuple) and all(isinstance(v, int) for v in value)):
                attrs[attr] = list(value) if isinstance(value, tuple) else value
        if attrs:
            out[name] = attrs
    return out


def save_pruned(out: str | Path, module, loaded, widths: dict, provenance: dict, force: bool = False) -> Path:
    """Write the directory atomically (a temporary sibling renamed into place).

    Every module's size attributes are recorded (not only the changed ones), so a model pruned again, or a
    distilled student, rebuilds from the original source without knowing which sizes the dense model had.
    """
    from safetensors.torch import save_file

    from edgeprune.atomic import atomic_dir, check_writable

    section = {"format_version": FORMAT_VERSION, "kind": "pruned_model",
               "source": source_record(loaded), "widths": widths, "modules": module_sizes(module)}
    config = {}
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    hf = getattr(module, "config", None)
    if hf is not None and hasattr(hf, "to_dict"):
        config = hf_config_for(module, widths)
        state = _with_config_biases(module, config, state)
    config["edgeprune"] = section
    state = _untie(state)
    check_writable(out, force)
    with atomic_dir(out) as tmp:
        tmp = Path(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True, default=str) + "\n")
    return Path(out)


BIAS_FLAGS = {"attention_bias": ("q_proj", "k_proj", "v_proj", "o_proj"),
              "mlp_bias": ("gate_proj", "up_proj", "down_proj")}


def _with_config_biases(module, config: dict, state: dict) -> dict:
    """Biases FLAP's compensation added to o_proj / down_proj, made loadable by `from_pretrained`.

    A LLaMA-style config switches biases on for a whole block kind (attention_bias, mlp_bias); with the flag
    set, every projection of that kind gets a bias (zeros where compensation added none), so transformers builds
    the same module edgeprune saved instead of silently dropping the compensation. Configs without such a flag
    (Qwen2, Mistral) keep the biases for edgeprune.load only.
    """
    import torch

    from .transformer import transformer_layout

    layout = transformer_layout(module)
    if layout is None or not layout.family.sized_config:
        return state
    state = dict(state)
    for flag, names in BIAS_FLAGS.items():
        if flag not in config or config[flag]:
            continue
        linears = {n: m for n, m in module.named_modules() if n.rsplit(".", 1)[-1] in names}
        if not any(m.bias is not None for m in linears.values()):
            continue
        config[flag] = True
        for name, linear in linears.items():
            state.setdefault(f"{name}.bias", torch.zeros(linear.out_features, dtype=linear.weight.dtype))
    return state


def _untie(state: dict) -> dict:
    """safetensors refuses shared storage: give tied tensors (e.g. embedding / LM head) their own copy."""
    seen, out = {}, {}
    for k, v in state.items():
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        out[k] = v.clone() if ptr in seen else v
        seen[ptr] = k
    return out


def source_record(loaded) -> dict:
    src = {"spec": loaded.spec, "sha256": loaded.source_sha256, "family": loaded.family,
           "input_shape": list(loaded.input_shape), "seq_len": loaded.seq_len, "regime": loaded.regime,
           "model_args": getattr(loaded, "model_args", {}) or {}}
    if getattr(loaded, "pruned_source", None):
        src = dict(loaded.pruned_source)  # pruning a pruned model: the architecture is still the original's
    return src


def hf_config_for(module, widths: dict) -> dict:
    """The Hugging Face config of the slim model.

    LLaMA-style configs (LLaMA, OLMo2, Phi-3: `Family.sized_config`) state head_dim outright, so uniform widths
    are written as the config's own sizes and `from_pretrained` loads the result. GPT-2 and BERT derive the
    head size from hidden_size / heads, which no longer holds after head pruning: their config keeps the source
    sizes (the architecture edgeprune rebuilds and then resizes), and `from_pretrained` refuses the mismatched
    shapes instead of loading a wrong model.
    """
    from .transformer import transformer_layout

    config = module.config.to_dict()
    layout = transformer_layout(module)
    if layout is None or not layout.family.sized_config:
        return config
    heads = {n: w for n, w in widths.items() if n.endswith(".heads")}
    mlps = {n: w for n, w in widths.items() if n.endswith(".mlp")}
    config["head_dim"] = int(layout.head_dim)  # hidden_size no longer divides into the heads: say it outright
    if heads and len(set(heads.values())) == 1:
        kv = next(iter(heads.values()))
        trial = dict(config, num_key_value_heads=int(kv), num_attention_heads=int(kv * layout.kv_groups))
        if _config_accepts(module.config, trial):
            config = trial
    if mlps and len(set(mlps.values())) == 1:
        config["intermediate_size"] = int(next(iter(mlps.values())))
    return config


def _config_accepts(source, config: dict) -> bool:
    """Whether transformers accepts these sizes: recent LlamaConfig insists that the heads divide hidden_size
    even when head_dim is given, so such head counts stay at the source's and edgeprune resizes on load."""
    fields = {k: v for k, v in config.items() if k not in ("edgeprune", "model_type", "transformers_version")}
    try:
        type(source)(**fields)
    except Exception:  # noqa: BLE001 - any refusal (ValueError, strict-dataclass errors) means "not accepted"
        return False
    return True


def is_pruned_dir(path: str | Path) -> bool:
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        return False
    try:
        config = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and "edgeprune" in config


def read_section(path: Path) -> dict:
    """config.json, its `edgeprune` section checked against the schema before anything is rebuilt from it."""
    try:
        config = json.loads((path / "config.json").read_text())
        section = config["edgeprune"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise BadInputError(f"{path} is not an edgeprune pruned-model directory (config.json unreadable)",
                            "give the directory edgeprune prune or distill wrote") from None
    version = section.get("format_version") if isinstance(section, dict) else None
    if version != FORMAT_VERSION:
        raise BadInputError(f"{path} has pruned-model format {version}, this edgeprune reads {FORMAT_VERSION}",
                            "re-run edgeprune prune")
    return check(config, CONFIG, lambda bad: BadInputError(f"{path / 'config.json'}: {bad}",
                                                           "re-run edgeprune prune; never edit config.json by hand"))


def read_provenance(path: Path) -> dict:
    """provenance.json ({} when absent), checked: export copies its numbers into the bundle's manifest."""
    file = path / "provenance.json"
    if not file.is_file():
        return {}
    try:
        provenance = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInputError(f"{file} is not valid JSON ({err})", "re-run edgeprune prune") from None
    return check(provenance, PROVENANCE, lambda bad: BadInputError(
        f"{file}: {bad}", "re-run edgeprune prune; never edit provenance.json by hand"))


def load_pruned(path: str | Path, base=None):
    """(module in eval mode, config section, provenance) rebuilt from a pruned-model directory, no pickle.

    `base` is a fresh instance of the dense architecture, needed only for models pruned from a Python module
    object (the CLI's `--model` specs are rebuilt from the spec).
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise BadInputError(f"pruned model {path} does not exist", "give the directory edgeprune prune wrote")
    config = read_section(path)
    section = config["edgeprune"]
    provenance = read_provenance(path)
    module = base if base is not None else _rebuild(config, section["source"])
    try:
        state = load_file(str(path / "model.safetensors"))
    except Exception as err:
        raise BadInputError(f"cannot read {path / 'model.safetensors'}: {str(err).splitlines()[0][:160]}",
                            "the file is damaged; re-run edgeprune prune") from None
    resize(module, section["modules"], state)
    try:
        module.load_state_dict(with_versions(module, state), strict=True)
    except RuntimeError as err:
        raise BadInputError(f"{path}: weights do not fit the recorded architecture ({str(err).splitlines()[0][:160]})",
                            "the directory was modified; re-run edgeprune prune") from None
    from .transformer import sync_configs

    sync_configs(module)  # layers that read head counts from a config get their own (Phi-3)
    return module.eval(), section, provenance


def with_versions(module, state: dict) -> dict:
    """`state` carrying `module`'s own state-dict versions: a safetensors file has none, and some modules refuse
    to load without theirs (torchvision's MNASNet raises "version should be set to 1 or 2")."""
    from collections import OrderedDict

    versioned = OrderedDict(state)
    versioned._metadata = getattr(module.state_dict(), "_metadata", None)  # what torch's own state_dict carries
    return versioned


def _rebuild(config: dict, source: dict):
    """The dense source architecture, randomly initialised (its weights are replaced right after)."""
    import torch

    torch.manual_seed(0)
    spec = source["spec"]
    if spec.startswith("torchvision:") or spec.startswith("timm:"):
        from edgeprune.models import _timm, _torchvision

        kind, name = spec.split(":", 1)
        args = source.get("model_args") or {}
        return _torchvision(name, args) if kind == "torchvision" else _timm(name, args)
    import transformers

    hf = {k: v for k, v in config.items() if k != "edgeprune"}
    model_type = hf.pop("model_type", None)
    if model_type is None:
        raise BadInputError(f"cannot rebuild {spec}: it was pruned from a Python module object, not a --model spec",
                            "pass a fresh instance of that architecture: edgeprune.load(path, base=MyModel())")
    from edgeprune.models import hf_model_class

    hf_config = transformers.AutoConfig.for_model(model_type, **hf)
    cls = hf_model_class(hf_config, source.get("family"))  # the task head's class when config names one
    return cls.from_config(hf_config) if hasattr(cls, "from_config") else cls._from_config(hf_config)


def resize(module, sizes: dict, state: dict) -> None:
    """Give every module the recorded sizes and parameters/buffers the shapes found in `state`."""
    import torch

    modules = dict(module.named_modules())
    for name, attrs in sizes.items():
        mod = modules.get(name)
        if mod is None:
            raise BadInputError(f"pruned model records module {name}, which the architecture lacks",
                                "the source model changed since pruning; re-run edgeprune prune")
        for attr, value in attrs.items():
            setattr(mod, attr, tuple(value) if isinstance(value, list) else value)
    for key, tensor in state.items():
        owner_name, _, leaf = key.rpartition(".")
        owner = modules.get(owner_name)
        if owner is None:
            continue
        current = getattr(owner, leaf, None)
        if current is not None and tuple(current.shape) == tuple(tensor.shape):
            continue
        if leaf in owner._buffers:
            owner._buffers[leaf] = torch.empty(tensor.shape, dtype=tensor.dtype)
        else:
            setattr(owner, leaf, torch.nn.Parameter(torch.empty(tensor.shape, dtype=tensor.dtype)))
