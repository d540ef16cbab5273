"""Family-aware slimming of Hugging Face transformers, without a traced graph.

Torch-Pruning's DependencyGraph hangs on Hugging Face LLaMA attention (VainF/Torch-Pruning#527), and these
architectures are regular enough not to need it. Per layer there are two unit groups: attention heads (a unit is
one key/value head together with the query heads that share it, so GQA groups stay consistent) and MLP channels
(the rows of the first projection(s) with the matching columns of the down projection). The residual width is
never changed.

A family is recognised by its config's `model_type`, never by module names alone: OLMo2 has LLaMA's module names
but norms over all heads' features, and taking it for LLaMA wrote models that could not run. Then every
parameter of every layer must be one the family accounts for (a projection the units slice, a norm sliced with
the heads, or a parameter no unit owns, of the size the family says); anything else is refused by name, because
a parameter the pruner does not know about is one it would leave at the wrong size. `FAMILIES` records where the
projections live and how they are stored:

- LLaMA layout (LLaMA, Mistral, Qwen2, Qwen3, Gemma): separate q/k/v/o, GQA, SwiGLU; Qwen3's q_norm / k_norm act
  on one head's features and are shared by all heads, so no unit owns them;
- OLMo2: the LLaMA layout with q_norm / k_norm over all heads' features, sliced with the heads;
- Phi-3: packed q|k|v (`qkv_proj`, GQA) and packed gate|up (`gate_up_proj`); its attention reads the query head
  count from the config, so each slimmed layer gets its own copy of the config;
- GPT-2: packed q|k|v in a transposed Conv1D;
- BERT / RoBERTa, DistilBERT, ViT: separate query/key/value, GELU MLP (ViT's module names changed in
  transformers 5, so both layouts are listed).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeprune.errors import BadInputError

HIDDEN, HEAD = "hidden", "head"  # sizes of parameters no unit owns: the residual width, one head's features


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple  # config.model_type values this layout serves
    attn: str  # the module holding the head-count attributes
    o: str  # output projection (its input columns are the heads)
    up: tuple  # MLP projections whose output rows are the channels
    down: str  # MLP projection whose input columns are the channels
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # packed q|k|v along the output features (GPT-2's c_attn, Phi-3's qkv_proj)
    packed_up: bool = False  # `up` is one module holding gate|up (Phi-3's gate_up_proj): channel c is rows c, d_ff+c
    head_norms: tuple = ()  # (path, "q" or "kv"): norms over all heads' features, sliced with the heads (OLMo2)
    fixed: tuple = ()  # (parameter path, HIDDEN or HEAD): parameters no unit owns, and the size each must have
    head_count_attrs: tuple = ()  # attributes set to the number of query heads
    kv_count_attrs: tuple = ()  # attributes set to the number of key/value heads
    head_width_attrs: tuple = ()  # attributes set to query heads × head size
    config_heads: bool = False  # the attention reads its query head count from its config (Phi-3)
    decoder: bool = False  # a causal LM the decode regime (KV cache per layer) runs
    sized_config: bool = False  # its config states head_dim, kv heads and intermediate_size (uniform widths saved)

    @property
    def projections(self) -> tuple:
        return tuple(p for p in (self.q, self.k, self.v, self.qkv, self.o, *self.up, self.down) if p)


_RMS_LAYER = (("input_layernorm.weight", HIDDEN), ("post_attention_layernorm.weight", HIDDEN))
_LN = lambda *paths: tuple((f"{p}.{w}", HIDDEN) for p in paths for w in ("weight", "bias"))  # noqa: E731

FAMILIES = (
    Family("llama", ("llama", "mistral", "qwen2", "qwen3", "gemma"), "self_attn", "self_attn.o_proj",
           ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj",
           q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
           fixed=_RMS_LAYER + (("self_attn.q_norm.weight", HEAD), ("self_attn.k_norm.weight", HEAD)),
           head_count_attrs=("num_heads",), kv_count_attrs=("num_key_value_heads",), decoder=True,
           sized_config=True),
    Family("olmo2", ("olmo2",), "self_attn", "self_attn.o_proj", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj",
           q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
           head_norms=(("self_attn.q_norm", "q"), ("self_attn.k_norm", "kv")),
           fixed=(("post_attention_layernorm.weight", HIDDEN), ("post_feedforward_layernorm.weight", HIDDEN)),
           decoder=True, sized_config=True),
    Family("phi3", ("phi3",), "self_attn", "self_attn.o_proj", ("mlp.gate_up_proj",), "mlp.down_proj",
           qkv="self_attn.qkv_proj", packed_up=True, fixed=_RMS_LAYER,
           kv_count_attrs=("num_key_value_heads",), config_heads=True, decoder=True, sized_config=True),
    Family("gpt2", ("gpt2",), "attn", "attn.c_proj", ("mlp.c_fc",), "mlp.c_proj", qkv="attn.c_attn",
           fixed=_LN("ln_1", "ln_2"), head_count_attrs=("num_heads",), head_width_attrs=("split_size", "embed_dim")),
    Family("bert", ("bert", "roberta"), "attention.self", "attention.output.dense", ("intermediate.dense",),
           "output.dense", q="attention.self.query", k="attention.self.key", v="attention.self.value",
           fixed=_LN("attention.output.LayerNorm", "output.LayerNorm"),
           head_count_attrs=("num_attention_heads",), head_width_attrs=("all_head_size",)),
    Family("distilbert", ("distilbert",), "attention", "attention.out_lin", ("ffn.lin1",), "ffn.lin2",
           q="attention.q_lin", k="attention.k_lin", v="attention.v_lin",
           fixed=_LN("sa_layer_norm", "output_layer_norm"), head_count_attrs=("n_heads",)),
    Family("vit", ("vit",), "attention", "attention.o_proj", ("mlp.fc1",), "mlp.fc2",  # transformers >= 5
           q="attention.q_proj", k="attention.k_proj", v="attention.v_proj",
           fixed=_LN("layernorm_before", "layernorm_after"), head_count_attrs=("num_attention_heads",)),
    Family("vit4", ("vit",), "attention.attention", "attention.output.dense", ("intermediate.dense",), "output.dense",
           q="attention.attention.query", k="attention.attention.key", v="attention.attention.value",
           fixed=_LN("layernorm_before", "layernorm_after"),
           head_count_attrs=("num_attention_heads",), head_width_attrs=("all_head_size",)),
)


def supported_model_types() -> list:
    """The `model_type`s edgeprune prunes, in the order FAMILIES lists them."""
    seen = []
    for family in FAMILIES:
        seen += [t for t in family.model_types if t not in seen]
    return seen


def supported_line() -> str:
    """One phrase naming what is supported, for refusals."""
    return ("edgeprune prunes Hugging Face " + ", ".join(supported_model_types())
            + " (model_type in config.json); other decoder-only LMs and encoders are profiled and exported unpruned")


@dataclass(frozen=True)
class TransformerLayout:
    """Where a transformer's prunable parts are and how wide they are."""

    family: Family
    layers: list  # the layer modules
    head_dim: int
    kv_groups: int  # query heads per key/value head


def _get(module, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def find_layout(module) -> TransformerLayout:
    """The layout of a Hugging Face transformer edgeprune prunes; BadInputError (one line) naming what it found.

    The family comes from `config.model_type`; its layers are the ModuleList whose layers hold the family's
    projections; every layer must then pass `check_parameters`.
    """
    import torch.nn as nn

    config = getattr(module, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise BadInputError(f"{type(module).__name__} is not a Hugging Face model (no config.model_type)",
                            supported_line())
    candidates = [f for f in FAMILIES if model_type in f.model_types]
    lists = [(name, child) for name, child in module.named_modules() if isinstance(child, nn.ModuleList) and len(child)]
    if not candidates or not hasattr(config, "num_attention_heads"):
        raise BadInputError(f"Hugging Face model_type '{model_type}' cannot be slimmed: edgeprune knows no layout "
                            f"for it (its layers hold {_module_types(lists)})", supported_line())
    for family in candidates:
        for name, child in lists:
            if all(_get(child[0], p) is not None for p in family.projections):
                head_dim = head_dim_of(module)
                kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
                layout = TransformerLayout(family, list(child), int(head_dim), int(config.num_attention_heads // kv))
                for i, layer in enumerate(child):
                    check_parameters(layer, layout, f"{name}.{i}", int(config.hidden_size), model_type)
                return layout
    wanted = ", ".join(candidates[0].projections)
    raise BadInputError(f"this {model_type} model has no layers with the {candidates[0].name} layout's modules "
                        f"({wanted}); its layers hold {_module_types(lists)}",
                        "the model's code differs from transformers' own; " + supported_line())


def _module_types(lists: list) -> str:
    """The module class names inside the first layer of each ModuleList (what a refusal shows the user)."""
    names = []
    for _, child in lists[:3]:
        for sub in child[0].modules():
            kind = type(sub).__name__
            if kind not in names and kind not in ("ModuleList", "Dropout", "Identity"):
                names.append(kind)
    return ", ".join(names[:12]) or "no layer list"


def check_parameters(layer, layout: TransformerLayout, where: str, hidden: int, model_type: str) -> None:
    """Every parameter of `layer` is one the family handles, at the size it says; else one line naming them."""
    family = layout.family
    sliced = family.projections + tuple(path for path, _ in family.head_norms)
    owned = {f"{p}.{w}" for p in sliced for w in ("weight", "bias")}
    fixed = dict(family.fixed)
    size = {HIDDEN: hidden, HEAD: layout.head_dim}
    unknown = []
    for name, param in layer.named_parameters():
        if name in owned:
            continue
        if name in fixed and param.numel() == size[fixed[name]]:
            continue
        unknown.append(f"{name} {list(param.shape)}" if name in fixed else name)
    if unknown:
        raise BadInputError(f"{where} of this {model_type} model has parameters the {family.name} "
                            f"pruner does not handle: {', '.join(unknown)}",
                            "pruning would leave them at the wrong size; " + supported_line())


def transformer_layout(module) -> TransformerLayout | None:
    """The layout when `module` is a Hugging Face transformer of a family edgeprune prunes, else None."""
    try:
        return find_layout(module)
    except BadInputError:
        return None


def decoder_layout(module) -> TransformerLayout | None:
    """The layout of a causal LM the decode regime runs (it needs the per-layer KV shapes), else None."""
    layout = transformer_layout(module)
    return layout if layout is not None and layout.family.decoder else None


def head_dim_of(module) -> int | None:
    """The attention head size of a Hugging Face model, from its config."""
    config = getattr(module, "config", None)
    if config is None or not hasattr(config, "num_attention_heads"):
        return None
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def is_conv1d(module) -> bool:
    """Hugging Face's Conv1D (GPT-2): a linear layer whose weight is stored [in, out]."""
    return type(module).__name__ == "Conv1D"


def oriented(tensor, module):
    """A projection's weight (or gradient) as [out, in], whatever the layer stores."""
    return tensor.t() if is_conv1d(module) else tensor


def slice_features(module, keep, side: str) -> None:
    """Keep output features (`side="out"`, with their bias) or input features (`"in"`) `keep`, in place."""
    import torch

    index = torch.as_tensor(sorted(keep), dtype=torch.long)
    dim = {"out": 0, "in": 1}[side]
    if is_conv1d(module):
        dim = 1 - dim
    with torch.no_grad():
        module.weight = torch.nn.Parameter(module.weight.index_select(dim, index).clone())
        if side == "out" and getattr(module, "bias", None) is not None:
            module.bias = torch.nn.Parameter(module.bias.index_select(0, index).clone())
    if is_conv1d(module):
        if side == "out":
            module.nf = len(index)
        else:
            module.nx = len(index)
    elif hasattr(module, "out_features"):
        if side == "out":
            module.out_features = len(index)
        else:
            module.in_features = len(index)


def kv_heads(layer, layout: TransformerLayout) -> int:
    """Key/value heads the layer has now."""
    family = layout.family
    if family.qkv:
        qkv = _get(layer, family.qkv)
        return oriented(qkv.weight, qkv).shape[0] // ((layout.kv_groups + 2) * layout.head_dim)
    k = _get(layer, family.k)
    return oriented(k.weight, k).shape[0] // layout.head_dim


def head_rows(layer, layout: TransformerLayout, kv: int) -> dict:
    """Output rows of each projection, per kv head: {"q": [...], "k": [...], "v": [...]}.

    For packed q|k|v the rows are offsets into the one packed module (q block, then k, then v).
    """
    hd, g = layout.head_dim, layout.kv_groups
    q = [[(u * g + j) * hd + i for j in range(g) for i in range(hd)] for u in range(kv)]
    k = [list(range(u * hd, (u + 1) * hd)) for u in range(kv)]
    if not layout.family.qkv:
        return {"q": q, "k": k, "v": k}
    q_width, kv_width = kv * g * hd, kv * hd
    return {"q": q, "k": [[q_width + r for r in u] for u in k], "v": [[q_width + kv_width + r for r in u] for u in k]}


def slim_heads(layer, keep_kv: list, layout: TransformerLayout) -> None:
    """Keep key/value heads `keep_kv` and their query heads; the output projection loses the matching columns."""
    family = layout.family
    rows = head_rows(layer, layout, kv_heads(layer, layout))
    q_rows = [r for u in keep_kv for r in rows["q"][u]]
    k_rows = [r for u in keep_kv for r in rows["k"][u]]
    v_rows = [r for u in keep_kv for r in rows["v"][u]]
    if family.qkv:
        slice_features(_get(layer, family.qkv), q_rows + k_rows + v_rows, "out")
    else:
        slice_features(_get(layer, family.q), q_rows, "out")
        slice_features(_get(layer, family.k), k_rows, "out")
        slice_features(_get(layer, family.v), v_rows, "out")
    for path, which in family.head_norms:  # norms over all heads' features (separate q/k/v only: OLMo2)
        _slice_vector(_get(layer, path), q_rows if which == "q" else k_rows)
    slice_features(_get(layer, family.o), q_rows, "in")  # the q block comes first when packed: same offsets
    attn = _get(layer, family.attn)
    heads = len(keep_kv) * layout.kv_groups
    for name in family.head_count_attrs:
        if hasattr(attn, name):
            setattr(attn, name, heads)
    for name in family.kv_count_attrs:
        if hasattr(attn, name):
            setattr(attn, name, len(keep_kv))
    for name in family.head_width_attrs:
        if hasattr(attn, name):
            setattr(attn, name, heads * layout.head_dim)
    sync_config(layer, layout)


def _slice_vector(norm, keep: list) -> None:
    """Keep entries `keep` of a norm's weight (and bias), and its recorded size where it has one."""
    import torch

    index = torch.as_tensor(sorted(keep), dtype=torch.long)
    with torch.no_grad():
        for name in ("weight", "bias"):
            value = getattr(norm, name, None)
            if isinstance(value, torch.nn.Parameter):
                setattr(norm, name, torch.nn.Parameter(value.index_select(0, index).clone()))
    if isinstance(getattr(norm, "normalized_shape", None), tuple):
        norm.normalized_shape = (len(index),)


def sync_config(layer, layout: TransformerLayout) -> None:
    """Give an attention that reads its query head count from the config (Phi-3) a config of its own.

    The config object is shared by every layer, and a slimmed layer has its own count: the layer's copy says
    how many query heads its output projection now reads. Called after slimming and after loading.
    """
    if not layout.family.config_heads:
        return
    import copy

    attn = _get(layer, layout.family.attn)
    o = _get(layer, layout.family.o)
    heads = oriented(o.weight, o).shape[1] // layout.head_dim
    if attn.config.num_attention_heads != heads:
        own = copy.copy(attn.config)
        own.num_attention_heads = heads
        attn.config = own


def sync_configs(module) -> None:
    """`sync_config` for every layer of `module` (a model rebuilt and resized by the pruned-model loader)."""
    layout = transformer_layout(module)
    if layout is not None:
        for layer in layout.layers:
            sync_config(layer, layout)


def mlp_channels(layer, layout: TransformerLayout) -> int:
    up = _get(layer, layout.family.up[0])
    rows = oriented(up.weight, up).shape[0]
    return rows // 2 if layout.family.packed_up else rows


def slim_mlp(layer, keep: list, layout: TransformerLayout) -> None:
    """Keep intermediate channels `keep`: rows of the up projection(s), columns of the down projection."""
    if layout.family.packed_up:
        n = mlp_channels(layer, layout)
        rows = sorted(keep) + [n + c for c in sorted(keep)]  # gate rows, then the same channels' up rows
        slice_features(_get(layer, layout.family.up[0]), rows, "out")
    else:
        for path in layout.family.up:
            slice_features(_get(layer, path), keep, "out")
    slice_features(_get(layer, layout.family.down), keep, "in")


def layer_widths(layout: TransformerLayout) -> dict:
    """{layer index: (kv heads, MLP channels)} as the module is now."""
    return {i: (kv_heads(layer, layout), mlp_channels(layer, layout)) for i, layer in enumerate(layout.layers)}


def unit_parts(layer, layout: TransformerLayout, kind: str) -> list:
    """[(projection module, side, index lists per unit)]: the weights each unit owns, one entry per layer.

    Packed q|k|v (GPT-2, Phi-3) counts as three layers and packed gate|up (Phi-3) as two, like separate
    projections, so scores mean the same across families; a packed module is listed once per block it holds.
    """
    family = layout.family
    if kind == "mlp":
        n = mlp_channels(layer, layout)
        ch = [[c] for c in range(n)]
        if family.packed_up:
            packed = _get(layer, family.up[0])
            ups = [(packed, "out", ch), (packed, "out", [[n + c] for c in range(n)])]
        else:
            ups = [(_get(layer, p), "out", ch) for p in family.up]
        return ups + [(_get(layer, family.down), "in", ch)]
    rows = head_rows(layer, layout, kv_heads(layer, layout))
    if family.qkv:
        qkv = _get(layer, family.qkv)
        parts = [(qkv, "out", rows["q"]), (qkv, "out", rows["k"]), (qkv, "out", rows["v"])]
    else:
        parts = [(_get(layer, family.q), "out", rows["q"]), (_get(layer, family.k), "out", rows["k"]),
                 (_get(layer, family.v), "out", rows["v"])]
    return parts + [(_get(layer, family.o), "in", rows["q"])]


def output_projection(layer, layout: TransformerLayout, kind: str):
    """The projection whose input columns a group owns (attention output / MLP down)."""
    return _get(layer, layout.family.o if kind == "heads" else layout.family.down)


def check_ratio(groups: list, ratio: float) -> None:
    """Refuse a uniform `ratio` that rounds some head or MLP group down to no unit at all.

    The solver would quietly keep one unit instead, so the model a user gets is not the one asked for; the
    line names the group and the largest ratio that keeps a unit everywhere. Global mode never empties a group.
    """
    def kept(n: int, r: float) -> int:
        return int(round(n * (1 - r)))

    sized = [g for g in groups if g.kind in ("heads", "mlp") and g.units > 1]
    empty = [g for g in sized if kept(g.units, ratio) < 1]
    if not empty:
        return
    g = min(empty, key=lambda g: g.units)
    best = next((r / 100 for r in range(99, -1, -1) if all(kept(x.units, r / 100) >= 1 for x in sized)), 0.0)
    what = "kv heads" if g.kind == "heads" else "MLP channels"
    raise BadInputError(f"--ratio {ratio:g} would remove every unit of {g.name} ({g.units} {what}, "
                        f"{g.units * (1 - ratio):.2g} left rounds to none)",
                        f"use --ratio {best:.2f} or less, or --mode global (it never empties a group)")
