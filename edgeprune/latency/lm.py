"""Hugging Face models as exportable tensors-in, tensor-out modules: the two regimes of a causal LM, encoders.

Prefill runs `seq_len` new tokens with no cache; decode runs one new token against a KV cache of `seq_len`
past tokens (the cache enters as inputs, one key and one value tensor per layer, sized per layer so slimmed
layers with fewer key/value heads export correctly).
"""

from __future__ import annotations

import torch

from edgeprune.pruning.transformer import decoder_layout, kv_heads


def cache_argument(model) -> str:
    """The name `model.forward` takes its KV cache under: `cache` from transformers 5.24 on (where
    `past_key_values` is deprecated with a warning on every call), `past_key_values` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class Prefill(torch.nn.Module):
    """input_ids [1, seq_len] -> logits, with an explicit all-ones attention mask (no packed-sequence probing)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids):
        mask = torch.ones_like(input_ids)
        return self.inner(input_ids=input_ids, attention_mask=mask, use_cache=False).logits

    def example_inputs(self, seq_len: int, gen: torch.Generator) -> tuple:
        return (torch.randint(0, self.inner.config.vocab_size, (1, seq_len), generator=gen),)


class DecodeStep(torch.nn.Module):
    """input_ids [1, 1] + (key, value) per layer [1, kv_heads, past, head_dim] -> logits of the new token."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.cache_argument = cache_argument(inner)

    def forward(self, input_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.inner.config)
        for i in range(len(past) // 2):
            cache.update(past[2 * i], past[2 * i + 1], i)
        mask = torch.ones((1, past[0].shape[2] + input_ids.shape[1]), dtype=torch.long)
        return self.inner(input_ids=input_ids, attention_mask=mask, use_cache=False,
                          **{self.cache_argument: cache}).logits

    def example_inputs(self, seq_len: int, gen: torch.Generator) -> tuple:
        layout = decoder_layout(self.inner)
        past = []
        for layer in layout.layers:
            kv = kv_heads(layer, layout)
            for _ in range(2):
                past.append(torch.randn((1, kv, seq_len, layout.head_dim), generator=gen))
        ids = torch.randint(0, self.inner.config.vocab_size, (1, 1), generator=gen)
        return (ids, *past)


class Encoder(torch.nn.Module):
    """input_ids [1, seq_len] (BERT-style) or pixel_values (ViT-style) -> the task head's logits, or the last
    hidden state of a bare encoder (a bundle outputs what the model was trained to output)."""

    def __init__(self, inner, pixels: bool = False):
        super().__init__()
        self.inner = inner
        self.pixels = pixels

    def forward(self, x):
        if self.pixels:
            out = self.inner(pixel_values=x)
        else:
            out = self.inner(input_ids=x, attention_mask=torch.ones_like(x))
        logits = getattr(out, "logits", None)
        return logits if logits is not None else out[0]  # out[0]: last_hidden_state, or a head's first output

    def example_inputs(self, seq_len: int, gen: torch.Generator) -> tuple:
        return (torch.randint(0, self.inner.config.vocab_size, (1, seq_len), generator=gen),)
