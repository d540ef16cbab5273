"""Family-aware slimming of decoder transformers (LLaMA / Mistral / Qwen2 layout), without a traced graph.

Torch-Pruning's DependencyGraph hangs on Hugging Face LLaMA attention (VainF/Torch-Pruning#527), and the
structure is regular enough not to need it: a layer keeps whole key/value heads together with the query heads
that share them (GQA groups stay consistent), and whole MLP channels (gate/up rows with the matching down
columns).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecoderLayout:
    """Where a decoder's prunable parts are and how wide they are."""

    layers: list  # the decoder layer modules
    head_dim: int
    kv_groups: int  # query heads per key/value head


def decoder_layout(module) -> DecoderLayout | None:
    """The layout when `module` is a LLaMA-style causal LM (q/k/v/o and gate/up/down projections), else None."""
    inner = getattr(module, "model", None)
    layers = getattr(inner, "layers", None)
    config = getattr(module, "config", None)
    if layers is None or config is None or not len(layers):
        return None
    first = layers[0]
    attn, mlp = getattr(first, "self_attn", None), getattr(first, "mlp", None)
    if not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
        return None
    if not all(hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj")):
        return None
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    groups = config.num_attention_heads // (getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    return DecoderLayout(list(layers), int(head_dim), int(groups))


def head_dim_of(module) -> int | None:
    """The attention head size of a Hugging Face model, from its config."""
    config = getattr(module, "config", None)
    if config is None or not hasattr(config, "num_attention_heads"):
        return None
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _slice_linear(linear, keep, dim: int):
    """Keep rows (dim 0: output features) or columns (dim 1: input features) `keep` of a Linear, in place."""
    import torch

    index = torch.as_tensor(sorted(keep), dtype=torch.long)
    with torch.no_grad():
        weight = linear.weight.index_select(dim, index).clone()
        linear.weight = torch.nn.Parameter(weight)
        if dim == 0 and linear.bias is not None:
            linear.bias = torch.nn.Parameter(linear.bias.index_select(0, index).clone())
    if dim == 0:
        linear.out_features = len(index)
    else:
        linear.in_features = len(index)


def slim_attention(attn, keep_kv_heads: list, layout: DecoderLayout) -> None:
    """Keep key/value heads `keep_kv_heads` and their query heads; o_proj loses the matching columns."""
    hd, groups = layout.head_dim, layout.kv_groups
    kv_rows = [h * hd + i for h in keep_kv_heads for i in range(hd)]
    q_heads = [h * groups + g for h in keep_kv_heads for g in range(groups)]
    q_rows = [h * hd + i for h in q_heads for i in range(hd)]
    _slice_linear(attn.q_proj, q_rows, 0)
    _slice_linear(attn.k_proj, kv_rows, 0)
    _slice_linear(attn.v_proj, kv_rows, 0)
    _slice_linear(attn.o_proj, q_rows, 1)
    for name, value in (("num_heads", len(q_heads)), ("num_key_value_heads", len(keep_kv_heads))):
        if hasattr(attn, name):
            setattr(attn, name, value)


def slim_mlp(mlp, keep: list) -> None:
    """Keep intermediate channels `keep`: gate/up rows and down columns."""
    _slice_linear(mlp.gate_proj, keep, 0)
    _slice_linear(mlp.up_proj, keep, 0)
    _slice_linear(mlp.down_proj, keep, 1)


def layer_widths(layout: DecoderLayout) -> dict:
    """{layer index: (kv heads, MLP channels)} as the module is now."""
    return {i: (layer.self_attn.k_proj.out_features // layout.head_dim, layer.mlp.gate_proj.out_features)
            for i, layer in enumerate(layout.layers)}
