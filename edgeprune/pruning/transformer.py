"""Family-aware slimming of Hugging Face transformers, without a traced graph.

Torch-Pruning's DependencyGraph hangs on Hugging Face LLaMA attention (VainF/Torch-Pruning#527), and these
architectures are regular enough not to need it. Per layer there are two unit groups: attention heads (a unit is
one key/value head together with the query heads that share it, so GQA groups stay consistent) and MLP channels
(the rows of the first projection(s) with the matching columns of the down projection). The residual width is
never changed. Families differ only in where the projections live and how they are stored, which `FAMILIES`
records: LLaMA / Mistral / Qwen2 (separate q/k/v/o, GQA, SwiGLU), GPT-2 (packed q|k|v in a transposed Conv1D),
BERT and Hugging Face ViT (separate query/key/value, GELU MLP; ViT's module names changed in transformers 5,
so both layouts are listed).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    attn: str  # the module holding the head-count attributes
    o: str  # output projection (its input columns are the heads)
    up: tuple  # MLP projections whose output rows are the channels
    down: str  # MLP projection whose input columns are the channels
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # packed q|k|v along the output features (GPT-2's c_attn)
    head_count_attrs: tuple = ()  # attributes set to the number of query heads
    kv_count_attrs: tuple = ()  # attributes set to the number of key/value heads
    head_width_attrs: tuple = ()  # attributes set to query heads × head size


FAMILIES = (
    Family("llama", "self_attn", "self_attn.o_proj", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj",
           q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
           head_count_attrs=("num_heads",), kv_count_attrs=("num_key_value_heads",)),
    Family("gpt2", "attn", "attn.c_proj", ("mlp.c_fc",), "mlp.c_proj", qkv="attn.c_attn",
           head_count_attrs=("num_heads",), head_width_attrs=("split_size", "embed_dim")),
    Family("bert", "attention.self", "attention.output.dense", ("intermediate.dense",), "output.dense",
           q="attention.self.query", k="attention.self.key", v="attention.self.value",
           head_count_attrs=("num_attention_heads",), head_width_attrs=("all_head_size",)),
    Family("vit", "attention", "attention.o_proj", ("mlp.fc1",), "mlp.fc2",  # transformers >= 5
           q="attention.q_proj", k="attention.k_proj", v="attention.v_proj",
           head_count_attrs=("num_attention_heads",)),
    Family("vit4", "attention.attention", "attention.output.dense", ("intermediate.dense",), "output.dense",
           q="attention.attention.query", k="attention.attention.key", v="attention.attention.value",
           head_count_attrs=("num_attention_heads",), head_width_attrs=("all_head_size",)),
)


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


def transformer_layout(module) -> TransformerLayout | None:
    """The layout when `module` is a Hugging Face transformer of a known family, else None."""
    import torch.nn as nn

    config = getattr(module, "config", None)
    if config is None or not hasattr(config, "num_attention_heads"):
        return None
    for _, child in module.named_modules():
        if not isinstance(child, nn.ModuleList) or not len(child):
            continue
        first = child[0]
        for family in FAMILIES:
            parts = [family.o, family.down, *family.up, *(p for p in (family.q, family.k, family.v, family.qkv) if p)]
            if all(_get(first, p) is not None for p in parts):
                head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
                kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
                return TransformerLayout(family, list(child), int(head_dim), int(config.num_attention_heads // kv))
    return None


def decoder_layout(module) -> TransformerLayout | None:
    """The layout of a LLaMA-style causal LM (the decode regime needs its per-layer KV shapes), else None."""
    layout = transformer_layout(module)
    return layout if layout is not None and layout.family.name == "llama" else None


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
        if side == "out" and module.bias is not None:
            module.bias = torch.nn.Parameter(module.bias.index_select(0, index).clone())
    if is_conv1d(module):
        if side == "out":
            module.nf = len(index)
        else:
            module.nx = len(index)
    elif side == "out":
        module.out_features = len(index)
    else:
        module.in_features = len(index)


def kv_heads(layer, layout: TransformerLayout) -> int:
    """Key/value heads the layer has now."""
    family = layout.family
    if family.qkv:
        qkv = _get(layer, family.qkv)
        return oriented(qkv.weight, qkv).shape[0] // 3 // layout.head_dim
    k = _get(layer, family.k)
    return oriented(k.weight, k).shape[0] // layout.head_dim


def head_rows(layer, layout: TransformerLayout, kv: int) -> dict:
    """Output rows of each projection, per kv head: {"q": [...], "k": [...], "v": [...]} (packed: offsets)."""
    hd, g = layout.head_dim, layout.kv_groups
    q = [[(u * g + j) * hd + i for j in range(g) for i in range(hd)] for u in range(kv)]
    k = [list(range(u * hd, (u + 1) * hd)) for u in range(kv)]
    return {"q": q, "k": k, "v": k}


def slim_heads(layer, keep_kv: list, layout: TransformerLayout) -> None:
    """Keep key/value heads `keep_kv` and their query heads; the output projection loses the matching columns."""
    family = layout.family
    n = kv_heads(layer, layout)
    rows = head_rows(layer, layout, n)
    q_rows = [r for u in keep_kv for r in rows["q"][u]]
    kv_rows = [r for u in keep_kv for r in rows["k"][u]]
    if family.qkv:
        width = n * layout.kv_groups * layout.head_dim  # q, k and v blocks are equally wide (no GQA in GPT-2)
        slice_features(_get(layer, family.qkv), q_rows + [width + r for r in kv_rows] +
                       [2 * width + r for r in kv_rows], "out")
    else:
        slice_features(_get(layer, family.q), q_rows, "out")
        slice_features(_get(layer, family.k), kv_rows, "out")
        slice_features(_get(layer, family.v), kv_rows, "out")
    slice_features(_get(layer, family.o), q_rows, "in")
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


def mlp_channels(layer, layout: TransformerLayout) -> int:
    up = _get(layer, layout.family.up[0])
    return oriented(up.weight, up).shape[0]


def slim_mlp(layer, keep: list, layout: TransformerLayout) -> None:
    """Keep intermediate channels `keep`: rows of the up projection(s), columns of the down projection."""
    for path in layout.family.up:
        slice_features(_get(layer, path), keep, "out")
    slice_features(_get(layer, layout.family.down), keep, "in")


def layer_widths(layout: TransformerLayout) -> dict:
    """{layer index: (kv heads, MLP channels)} as the module is now."""
    return {i: (kv_heads(layer, layout), mlp_channels(layer, layout)) for i, layer in enumerate(layout.layers)}


def unit_parts(layer, layout: TransformerLayout, kind: str) -> list:
    """[(projection module, side, index lists per unit)]: the weights each unit owns, one entry per layer.

    Packed q|k|v (GPT-2) counts as three layers, like separate projections, so scores mean the same across
    families.
    """
    family = layout.family
    if kind == "mlp":
        ch = [[c] for c in range(mlp_channels(layer, layout))]
        return [(_get(layer, p), "out", ch) for p in family.up] + [(_get(layer, family.down), "in", ch)]
    n = kv_heads(layer, layout)
    rows = head_rows(layer, layout, n)
    if family.qkv:
        qkv = _get(layer, family.qkv)
        width = n * layout.kv_groups * layout.head_dim
        parts = [(qkv, "out", rows["q"]), (qkv, "out", [[width + r for r in u] for u in rows["k"]]),
                 (qkv, "out", [[2 * width + r for r in u] for u in rows["v"]])]
    else:
        parts = [(_get(layer, family.q), "out", rows["q"]), (_get(layer, family.k), "out", rows["k"]),
                 (_get(layer, family.v), "out", rows["v"])]
    return parts + [(_get(layer, family.o), "in", rows["q"])]


def output_projection(layer, layout: TransformerLayout, kind: str):
    """The projection whose input columns a group owns (attention output / MLP down)."""
    return _get(layer, layout.family.o if kind == "heads" else layout.family.down)
