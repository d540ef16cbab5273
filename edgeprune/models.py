"""Model loading for every command: the `--model SPEC` vocabulary of DESIGN.md in one place.

`torchvision:NAME`, `timm:NAME`, a Hugging Face model directory, an ONNX file, or a TorchScript file.
Named architectures get the user's weights through `--weights` (safetensors, or a state_dict loaded with
`weights_only=True`); without them they are randomly initialised, never downloaded.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadInputError

DEFAULT_IMAGE_SHAPE = (1, 3, 224, 224)
DEFAULT_SEQ_LEN = 128


@dataclass
class LoadedModel:
    """A model ready to profile: a torch module when slimmable, else only its ONNX graph."""

    spec: str
    module: object | None  # torch.nn.Module, None for ONNX files
    onnx_path: Path | None  # set for ONNX inputs
    input_shape: tuple
    family: str  # "vision" (images), "language" (causal LM) or "encoder" (BERT-style text encoder)
    slimmable: bool
    source_sha256: str
    notes: list = field(default_factory=list)
    seq_len: int | None = None
    regime: str | None = None  # language models: "prefill" (seq_len new tokens) or "decode" (1 token, past seq_len)
    model_args: dict = field(default_factory=dict)
    pruned_source: dict | None = None  # for an edgeprune pruned-model directory: the source it was pruned from
    provenance: dict = field(default_factory=dict)
    refusal: tuple | None = None  # (message, hint) saying why a Hugging Face model cannot be slimmed

    @property
    def huggingface(self) -> bool:
        return hasattr(getattr(self.module, "config", None), "model_type")

    def export_module(self, module=None):
        """The module as it is exported: Hugging Face models become tensors-in, tensor-out wrappers."""
        module = self.module if module is None else module
        if not self.huggingface:
            return module
        from .latency.lm import DecodeStep, Encoder, Prefill

        if self.family == "language":
            return DecodeStep(module) if self.regime == "decode" else Prefill(module)
        return Encoder(module, pixels=self.family == "vision")

    def example_inputs(self, wrapped=None) -> tuple:
        """Seeded inputs for export and parity of `wrapped` (default: this model's export module)."""
        import torch

        gen = torch.Generator().manual_seed(0)
        if self.family in ("language", "encoder"):
            wrapped = self.export_module() if wrapped is None else wrapped
            return wrapped.example_inputs(self.seq_len, gen)
        return (torch.randn(self.input_shape, generator=gen),)

    @property
    def head_dim(self) -> int | None:
        if not self.huggingface:
            return None
        from .pruning.transformer import head_dim_of

        return head_dim_of(self.module)


def parse_shape(text: str | None) -> tuple | None:
    """`1x3x224x224` -> (1, 3, 224, 224)."""
    if text is None:
        return None
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise BadInputError(f"cannot read input shape '{text}'", "write it like 1x3x224x224") from None
    if not dims or any(d <= 0 for d in dims):
        raise BadInputError(f"input shape '{text}' has a non-positive dimension", "write it like 1x3x224x224")
    return dims


def parse_model_args(pairs: tuple | list) -> dict:
    """`key=value` pairs -> kwargs, values read as JSON where they parse (ints, floats, bools)."""
    out = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise BadInputError(f"--model-arg '{pair}' is not key=value", "write it like --model-arg num_classes=10")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return check_model_args(out, "--model-arg")


def check_model_args(args: dict, where: str) -> dict:
    """Refuse keys no constructor can take, and loader switches that have their own flag.

    `trust_remote_code` runs Python files from the model directory, so it is only ever the named
    `--trust-remote-code` flag (a recipe file or a copied command line must not switch it on unnoticed).
    """
    for key in args:
        if key == "trust_remote_code":
            raise BadInputError(f"trust_remote_code cannot be set through {where}: it runs the model directory's "
                                "Python code", "pass --trust-remote-code on the command line (trust_remote_code=True "
                                "in the Python API) if you trust that code")
        if not isinstance(key, str) or not key.isidentifier():
            raise BadInputError(f"model arg {key!r} is not a parameter name",
                                "write it like num_classes=10 (letters, digits and _)")
    return args


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(module) -> str:
    """Hash of the weights, so a table records exactly which model it was measured for."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_weights(module, path: str | Path) -> None:
    """Load the user's weights into `module`; a corrupt or mismatched file is one clear error."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"weights file {path} does not exist", "check the --weights path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
    except Exception as err:
        raise BadInputError(f"cannot read weights {path}: {str(err).splitlines()[0][:160]}",
                            "give a safetensors file or a torch state_dict (loaded with weights_only=True)") from None
    try:
        from .pruning.checkpoint import with_versions

        module.load_state_dict(state if hasattr(state, "_metadata") else with_versions(module, state), strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise BadInputError(f"weights {path} do not fit the model: {first[:200]}",
                            "check --model and --model-arg (e.g. num_classes) match how the weights were trained") \
            from None


def _torchvision(name: str, args: dict):
    import torchvision

    if name not in torchvision.models.list_models():
        import difflib

        close = difflib.get_close_matches(name, torchvision.models.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
        raise BadInputError(f"torchvision has no model '{name}'", hint)
    return _build(f"torchvision:{name}", torchvision.models.get_model, name, args, weights=None)


def _timm(name: str, args: dict):
    try:
        import timm
    except ImportError:
        raise BadInputError("timm is not installed", "pip install 'edgeprune[hf]'") from None
    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise BadInputError(f"timm has no model '{name}'", f"did you mean {', '.join(close)}?" if close else
                            "see timm.list_models()")
    return _build(f"timm:{name}", timm.create_model, name, args, pretrained=False)


def _build(spec: str, factory, name: str, args: dict, **fixed):
    """`factory(name, **fixed, **args)`, refusing args that no named parameter received.

    torchvision and timm builders forward **kwargs down to the model class, and some classes swallow what
    they do not know (torchvision's ConvNeXt, MobileNetV3), so an unused key is found by watching the calls:
    a key is used when a function of the model library took it as a named parameter.
    """
    if not args:
        return factory(name, **fixed)
    watch = _ArgWatch(args, exclude=set(fixed))
    try:
        with watch:
            module = factory(name, **fixed, **args)
    except (TypeError, ValueError) as err:  # the args are the only input here that a user chose
        unknown = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", str(err))
        if unknown:
            tb = err.__traceback__
            while tb.tb_next is not None:
                tb = tb.tb_next
            caller = tb.tb_frame  # the class that refused is a name there (torchvision) or a local (timm's builder)
            for refusing in [caller.f_globals.get(unknown.group(1)), *caller.f_locals.values()]:
                if inspect.isclass(refusing) and refusing.__name__ == unknown.group(1):
                    watch.valid.update(_optional_parameters(refusing.__init__))
                    break
            raise watch.unused_error(spec, [unknown.group(2)]) from None
        raise BadInputError(f"{spec} rejects the model args: {str(err).splitlines()[0][:200]}",
                            "check the --model-arg values") from None
    unused = sorted(set(args) - watch.used)
    if unused:
        raise watch.unused_error(spec, unused)
    return module


class _ArgWatch:
    """While active (sys.setprofile), records which of `args` a model-library function took by name.

    `used`: keys bound to a named parameter holding the very object passed (not a default that happens to
    share the name); `valid`: the optional named parameters of the functions the args were forwarded to,
    except those in private modules (timm's `_builder`, torchvision's `_api`: loader plumbing, not model
    args). torch's own functions do not count: a Conv2d's `bias` is not an argument of the model.
    """

    def __init__(self, args: dict, exclude: set):
        self.args = args
        self.exclude = exclude | {"self"}
        self.used: set[str] = set()
        self.valid: set[str] = set()
        self._previous = None

    def __enter__(self) -> _ArgWatch:
        self._previous = sys.getprofile()
        sys.setprofile(self._on_event)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(self._previous)

    def _on_event(self, frame, event: str, arg) -> None:
        module = str(frame.f_globals.get("__name__", ""))
        if event != "call" or module.split(".")[0] == "torch":
            return
        code = frame.f_code
        count = code.co_argcount + code.co_kwonlyargcount
        names = code.co_varnames[:count]
        varkw = code.co_varnames[count + bool(code.co_flags & inspect.CO_VARARGS)] \
            if code.co_flags & inspect.CO_VARKEYWORDS else None
        if varkw is None and not any(key in names for key in self.args):
            return
        local = frame.f_locals
        forwarded = (local.get(varkw) or {}) if varkw else {}
        reached = False
        for key, value in self.args.items():
            if key in names and local.get(key) is value:
                self.used.add(key)
                reached = True
            reached = reached or forwarded.get(key) is value
        if reached and not any(part.startswith("_") for part in module.split(".")):
            self.valid.update(_optional_parameters(_function_of(frame)))

    def unused_error(self, spec: str, unused: list) -> BadInputError:
        import difflib

        valid = sorted(self.valid - self.exclude - set(unused))
        close = difflib.get_close_matches(unused[0], valid, n=1)
        hint = (f"did you mean {close[0]}? " if close else "") + \
            (f"{spec} takes: {', '.join(valid)}" if valid else f"{spec} takes no model args")
        keys = ", ".join(f"'{k}'" for k in unused)
        return BadInputError(f"{spec} does not use the model arg{'s' if len(unused) > 1 else ''} {keys}", hint)


def _function_of(frame):
    """The function (unwrapped from its decorators) whose code runs in `frame`, or None."""
    code = frame.f_code
    candidates = [frame.f_globals.get(code.co_name)]
    owner = frame.f_locals.get("self")
    if owner is not None:
        candidates += [vars(klass).get(code.co_name) for klass in type(owner).__mro__]
    for candidate in candidates:
        func = inspect.unwrap(candidate) if callable(candidate) else None
        if getattr(func, "__code__", None) is code:
            return func
    return None


def _optional_parameters(func) -> list:
    """Names of `func`'s parameters a caller may pass by name and may leave out."""
    if func is None:
        return []
    return [p.name for p in inspect.signature(func).parameters.values()
            if p.kind == p.KEYWORD_ONLY or (p.kind == p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)]


def _huggingface(path: Path, args: dict, trust_remote_code: bool = False):
    try:
        import transformers
    except ImportError:
        raise BadInputError("transformers is not installed", "pip install 'edgeprune[hf]'") from None
    try:
        config, unused = transformers.AutoConfig.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code, return_unused_kwargs=True, **args)
    except Exception as err:
        _refuse_remote_code(err, path)
        raise BadInputError(f"cannot read the Hugging Face config in {path}: {str(err).splitlines()[0][:160]}",
                            "check config.json") from None
    if unused:  # transformers ignores config keys it does not know; a typo would go unnoticed
        import difflib

        close = difflib.get_close_matches(sorted(unused)[0], sorted(config.to_dict()), n=3)
        raise BadInputError(f"the Hugging Face config in {path} has no field {', '.join(map(repr, sorted(unused)))}",
                            (f"did you mean {', '.join(close)}? " if close else "")
                            + f"--model-arg sets fields of {path / 'config.json'}")
    refuse_encoder_decoder(config, path)
    family = hf_family(config)
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))
    transformers.utils.logging.disable_progress_bar()  # edgeprune draws its own progress; stderr stays one line
    cls = hf_model_class(config, family)
    auto = hasattr(cls, "from_config")  # an Auto class: it may run the directory's own code
    remote = {"trust_remote_code": trust_remote_code} if auto else {}
    try:
        if has_weights:
            model = cls.from_pretrained(str(path), local_files_only=True, config=config, **remote)
        else:
            model = cls.from_config(config, **remote) if auto else cls._from_config(config)
    except Exception as err:
        _refuse_remote_code(err, path)
        raise BadInputError(f"cannot load the Hugging Face model in {path}: {str(err).splitlines()[0][:160]}",
                            "check that the weights match config.json") from None
    return model, family, has_weights


def hf_family(config) -> str:
    """"language" (causal LM: input_ids -> next-token logits), "vision" (pixel_values) or "encoder" (input_ids)."""
    from .pruning.transformer import FAMILIES

    causal = {t for f in FAMILIES if f.decoder or f.name == "gpt2" for t in f.model_types}
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in (config.architectures or [])) \
            or config.model_type in causal:
        return "language"
    if hasattr(config, "image_size") and hasattr(config, "num_channels"):
        return "vision"  # ViT-style encoders read pixel_values
    return "encoder"  # BERT-style encoders read input_ids


def hf_model_class(config, family: str):
    """The class to build a Hugging Face model with: the one its config's `architectures` names.

    Loading a ViTForImageClassification or BertForSequenceClassification through AutoModel gives the bare
    encoder (no classifier, a random pooler) and a bundle that outputs hidden states, so a task head is kept by
    building the named class. Causal LMs use AutoModelForCausalLM; without a usable name (no `architectures`, or
    a class only the directory's own code defines) encoders fall back to AutoModel.
    """
    import transformers

    if family == "language":
        return transformers.AutoModelForCausalLM
    for name in config.architectures or ():
        cls = getattr(transformers, name, None)
        config_class = getattr(cls, "config_class", None)
        if isinstance(cls, type) and isinstance(config_class, type) and isinstance(config, config_class):
            return cls
    return transformers.AutoModel


def refuse_encoder_decoder(config, path) -> None:
    """One line for T5, Whisper, BART and other encoder-decoder models, before any weights load.

    Their forward needs decoder inputs (and Whisper audio features) that no export wrapper here builds, so
    profile and export would end in a traceback from inside transformers, and prune has no layout for them.
    """
    if getattr(config, "is_encoder_decoder", False):
        from .pruning.transformer import supported_model_types

        raise BadInputError(f"{path} holds a {config.model_type} model (encoder-decoder), which edgeprune does not "
                            "profile, prune or export",
                            "it handles decoder-only language models and encoders, and prunes the Hugging Face "
                            f"families {', '.join(supported_model_types())}")


def _refuse_remote_code(err: Exception, path: Path) -> None:
    """One clear line when transformers refused a model directory's own Python code (no --trust-remote-code)."""
    if "trust_remote_code" in str(err):
        raise BadInputError(f"{path} ships its own Python code, which runs only with --trust-remote-code",
                            "pass --trust-remote-code if you trust that code (it runs on this machine)") from None


def load_model(spec: str, weights: str | None = None, model_args: dict | None = None,
               input_shape: tuple | None = None, seq_len: int | None = None, regime: str = "prefill",
               trust_remote_code: bool = False) -> LoadedModel:
    """Resolve a `--model SPEC` to a LoadedModel, with one clear error for anything unreadable.

    `trust_remote_code` lets a Hugging Face directory run its own Python files (config.json's auto_map).
    """
    model_args = check_model_args(dict(model_args or {}), "model_args")
    notes = []
    import torch

    torch.manual_seed(0)  # random initialisation is reproducible: same spec, same weights, same cache keys
    if spec.startswith("torchvision:") or spec.startswith("timm:"):
        source, name = spec.split(":", 1)
        module = _torchvision(name, model_args) if source == "torchvision" else _timm(name, model_args)
        if weights:
            load_weights(module, weights)
        else:
            notes.append(f"{spec} is randomly initialised (no --weights given); latency does not depend on weights")
        module.eval()
        shape = input_shape or _default_image_shape(module, model_args)
        return LoadedModel(spec, module, None, shape, "vision", True, state_dict_sha256(module), notes,
                           model_args=model_args)
    path = Path(spec)
    if not path.exists():
        raise BadInputError(f"model '{spec}' does not exist",
                            "give torchvision:NAME, timm:NAME, a Hugging Face directory, an .onnx or TorchScript file")
    if path.is_dir():
        from .pruning.checkpoint import is_pruned_dir

        if is_pruned_dir(path):
            return _pruned(path, weights, input_shape, seq_len, regime)
        if not (path / "config.json").is_file():
            raise BadInputError(f"{path} has no config.json", "give a Hugging Face model directory")
        module, family, has_weights = _huggingface(path, model_args, trust_remote_code)
        if weights:
            load_weights(module, weights)
        elif not has_weights:
            notes.append(f"{path} has no weights; the model is randomly initialised from its config")
        module.eval()
        from .pruning.transformer import FAMILIES, decoder_layout, find_layout, supported_model_types

        refusal = None
        try:
            find_layout(module)
        except BadInputError as err:
            refusal = (err.message, err.hint)
            notes.append(f"{module.config.model_type} models get a table and calibration but no held-out variants "
                         f"(edgeprune slims {', '.join(supported_model_types())})")
        if regime == "decode" and family == "language" and decoder_layout(module) is None:
            decoders = [t for f in FAMILIES if f.decoder for t in f.model_types]
            raise BadInputError(f"the decode regime runs {', '.join(decoders)} models; {path} is "
                                f"{module.config.model_type}", "profile --regime prefill")
        if family == "vision":
            size = int(module.config.image_size)
            shape = input_shape or (1, int(module.config.num_channels), size, size)
            return LoadedModel(spec, module, None, shape, family, refusal is None, state_dict_sha256(module), notes,
                               refusal=refusal)
        n = seq_len or DEFAULT_SEQ_LEN
        return LoadedModel(spec, module, None, (1, n), family, refusal is None, state_dict_sha256(module), notes,
                           seq_len=n, regime=regime if family == "language" else None, refusal=refusal)
    if path.suffix == ".onnx":
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
            onnx.checker.check_model(proto)
        except Exception as err:
            raise BadInputError(f"{path} is not a valid ONNX model: {str(err).splitlines()[0][:160]}",
                                "re-export it, or check the file was copied completely") from None
        dims = [d.dim_value or 1 for d in proto.graph.input[0].type.tensor_type.shape.dim]
        return LoadedModel(spec, None, path, input_shape or tuple(dims), "vision", False, sha256_file(path),
                           ["ONNX files get a table and calibration but no held-out variants (not slimmable)"])
    return _torchscript(path, input_shape, notes)


def _pruned(path: Path, weights: str | None, input_shape, seq_len, regime: str) -> LoadedModel:
    """An edgeprune pruned-model directory: the slim module, described like its source model."""
    from .pruning.checkpoint import load_pruned
    from .pruning.transformer import transformer_layout

    module, section, provenance = load_pruned(path)
    if weights:
        load_weights(module, weights)
    source = section["source"]
    family = source.get("family", "vision")
    if family == "vision":
        shape = tuple(input_shape or source.get("input_shape") or DEFAULT_IMAGE_SHAPE)
        return LoadedModel(str(path), module, None, shape, family, True, state_dict_sha256(module), [],
                           model_args=source.get("model_args") or {}, pruned_source=source, provenance=provenance)
    n = seq_len or source.get("seq_len") or DEFAULT_SEQ_LEN
    slimmable = transformer_layout(module) is not None
    return LoadedModel(str(path), module, None, (1, n), family, slimmable, state_dict_sha256(module), [], seq_len=n,
                       regime=regime if family == "language" else None, pruned_source=source, provenance=provenance)


def _torchscript(path: Path, input_shape, notes) -> LoadedModel:
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise BadInputError(f"{path} is neither ONNX nor a loadable TorchScript file: "
                            f"{str(err).splitlines()[0][:120]}",
                            "give an .onnx file, a TorchScript file, torchvision:NAME or a Hugging Face directory") \
            from None
    module.eval()
    notes.append("TorchScript files get a table and calibration but no held-out variants (not slimmable)")
    return LoadedModel(str(path), module, None, input_shape or DEFAULT_IMAGE_SHAPE, "vision", False,
                       sha256_file(path), notes)


def _default_image_shape(module, args: dict) -> tuple:
    size = args.get("image_size")
    if size:
        return (1, 3, int(size), int(size))
    cfg = getattr(module, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        return (1, *cfg["input_size"])
    return DEFAULT_IMAGE_SHAPE
