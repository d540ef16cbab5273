"""The built-in example: a torchvision CNN trained on scikit-learn's bundled digits (no network), and accuracy.

The digits are 8×8 grey images; upscaled to the model's input they give a real classification task that a CNN
learns in a minute on two CPU cores, so pruning, distillation and validation have an accuracy to protect.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

DIGITS_SPEC = "torchvision:resnet18"
DIGITS_ARGS = {"num_classes": 10}
DIGITS_SHAPE = (1, 3, 80, 80)  # ~6 ms at 1 thread on a 2-core VM: well above timer noise


@dataclass
class Trained:
    module: object
    accuracy: float  # on the held-out digits test split
    train_s: float
    epochs: int


def accuracy(module, samples, batch_size: int = 64) -> float:
    """Top-1 accuracy of `module` on labelled `samples` (eval mode, no gradients)."""
    import torch

    if samples.labels is None:
        raise ValueError("accuracy needs labelled samples")
    module.eval()
    correct = 0
    with torch.no_grad():
        for x, y in samples.batches(batch_size):
            out = module(x)
            out = getattr(out, "logits", out)
            correct += int((out.argmax(-1) == y).sum())
    return correct / len(samples)


def train_digits(module=None, input_shape: tuple = DIGITS_SHAPE, epochs: int = 4, seed: int = 0,
                 batch_size: int = 32, lr: float = 2e-3, reporter=None) -> Trained:
    """Train `module` (default: resnet18 with 10 classes) on the digits train split; report test accuracy.

    `reporter` (default: the enclosing CLI block's) gets a "train" line counting optimiser steps, so a slow
    machine shows its ETA instead of minutes of silence.
    """
    import torch
    import torch.nn.functional as F

    from .data import digits
    from .models import load_model
    from .progress import active_reporter

    torch.manual_seed(seed)
    if module is None:
        module = load_model(DIGITS_SPEC, model_args=DIGITS_ARGS, input_shape=input_shape).module
    train = digits(input_shape, "train", seed)
    test = digits(input_shape, "test", seed)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    reporter = reporter or active_reporter()
    progress = reporter.stage("train", steps)
    done = 0
    started = time.time()
    for epoch in range(epochs):
        module.train()
        order = torch.randperm(len(train), generator=gen)
        for start in range(0, len(train), batch_size):
            idx = order[start:start + batch_size]
            x = train.inputs[idx]
            # light augmentation: one-pixel-scale random shifts, so the net does not memorise 1347 images
            shift = torch.randint(-3, 4, (2,), generator=gen).tolist()
            x = torch.roll(x, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(module(x), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            progress({"progress": done, "detail": f"epoch {epoch + 1}/{epochs}"})
    reporter.done("train")
    module.eval()
    return Trained(module, accuracy(module, test), time.time() - started, epochs)
