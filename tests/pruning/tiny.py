"""Tiny models for the pruning tests: a CNN with BatchNorm and a residual, and a GQA LLaMA from a config."""

from __future__ import annotations

import torch
import torch.nn as nn


class TinyCNN(nn.Module):
    """conv-bn-relu, a residual block, a strided conv, a depthwise conv, pool, linear head (input 1x3x32x32)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.block_a = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(16)
        self.block_b = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(16)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn_d = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
        self.bn_dw = nn.BatchNorm2d(32)
        self.pw = nn.Conv2d(32, 40, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(40)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(40, classes)
        self.relu = nn.ReLU()
        gen = torch.Generator().manual_seed(0)
        for bn in (self.bn1, self.bn_a, self.bn_b, self.bn_d, self.bn_dw, self.bn_pw):
            with torch.no_grad():  # distinct BN scales and statistics, so criteria and folding are exercised
                bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.1)
                bn.bias.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn_a(self.block_a(x)))
        x = self.relu(self.bn_b(self.block_b(y)) + x)
        x = self.relu(self.bn_d(self.down(x)))
        x = self.relu(self.bn_dw(self.dw(x)))
        x = self.relu(self.bn_pw(self.pw(x)))
        return self.fc(self.pool(x).flatten(1))


def tiny_cnn() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN().eval()


def tiny_llama(layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int = 2, intermediate: int = 48,
               vocab: int = 64):
    """A LLaMA causal LM with GQA (2 query heads per kv head, head_dim 8), seeded random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=128, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()
