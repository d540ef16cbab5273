"""Train a pruned student against its teacher: from the teacher cache, or online (the comparison baseline).

Loss per batch: α·T²·KL(teacher_T ‖ student_T) + (1 − α)·CE(labels) when labels exist, else the KL alone
(unlabeled, test-time data is a first-class input). With a top-k cache the teacher's distribution is the
softmax of its k largest logits and the student's log-probabilities are read at those indices. BatchNorm
statistics are re-estimated on the fine-tune data before training (pruning changed every channel's inputs)
and after it. Causal LMs distil per token (the cached logits are per position).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class DistillOptions:
    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 32
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the distillation term when labels exist
    top_k: int | None = None
    seed: int = 0
    weight_decay: float = 1e-4


@dataclass
class DistillResult:
    student: object
    mode: str  # "cached" or "online"
    train_s: float  # wall time of the training loop (teacher forward passes included for online)
    teacher_s: float  # building the cache (0 when reused), or 0 for online (counted in train_s)
    losses: list = field(default_factory=list)


def kd_loss(student_logits, teacher_values, teacher_indices, temperature: float):
    """KL(teacher_T ‖ student_T) · T², averaged over samples (and positions)."""
    import torch.nn.functional as F

    t = temperature
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    if teacher_indices is not None:
        log_s = log_s.gather(-1, teacher_indices)
    p_t = F.softmax(teacher_values.float() / t, dim=-1)
    kl = (p_t * (p_t.clamp_min(1e-12).log() - log_s)).sum(-1)
    return kl.mean() * t * t


def refresh_batchnorm(module, inputs, batch_size: int) -> int:
    """Re-estimate BatchNorm running statistics on `inputs` in batches of `batch_size` (pruning/batchnorm.py)."""
    from edgeprune.pruning.batchnorm import recalibrate_batchnorm

    return recalibrate_batchnorm(module, [(inputs[s:s + batch_size],) for s in range(0, len(inputs), batch_size)])


def _logits(output):
    return getattr(output, "logits", output)


def train_student(student, samples, options: DistillOptions, cache=None, teacher=None,
                  reporter=None) -> DistillResult:
    """Distil into `student` from `cache` (a TeacherCache) or, when None, from `teacher` run every step.

    `reporter` (default: the enclosing CLI block's) gets a "distill" line counting optimiser steps.
    """
    import torch
    import torch.nn.functional as F

    from edgeprune.progress import active_reporter

    if cache is None and teacher is None:
        raise ValueError("give a teacher cache or a teacher")
    torch.manual_seed(options.seed)
    inputs, labels = samples.inputs, samples.labels
    refresh_batchnorm(student, inputs, options.batch_size)
    opt = torch.optim.AdamW(student.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    steps = options.epochs * ((len(inputs) + options.batch_size - 1) // options.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    gen = torch.Generator().manual_seed(options.seed)
    losses = []
    if teacher is not None:
        teacher.eval()
    reporter = reporter or active_reporter()
    progress = reporter.stage("distill", steps)
    step = 0
    started = time.time()
    for epoch in range(options.epochs):
        student.train()
        order = torch.randperm(len(inputs), generator=gen)
        total, count = 0.0, 0
        for start in range(0, len(inputs), options.batch_size):
            idx = order[start:start + options.batch_size]
            x = inputs[idx]
            if cache is not None:
                t_values = cache.values[idx]
                t_indices = cache.indices[idx] if cache.indices is not None else None
            else:
                with torch.no_grad():
                    logits = _logits(teacher(x)).float()
                if options.top_k and options.top_k < logits.shape[-1]:
                    top = logits.topk(options.top_k, dim=-1)
                    t_values, t_indices = top.values, top.indices
                else:
                    t_values, t_indices = logits, None
            out = _logits(student(x))
            loss = kd_loss(out, t_values, t_indices, options.temperature)
            if labels is not None:
                ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), labels[idx].reshape(-1))
                loss = options.alpha * loss + (1 - options.alpha) * ce
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            step += 1
            progress({"progress": step, "detail": f"epoch {epoch + 1}/{options.epochs}"})
        losses.append(total / max(1, count))
    reporter.done("distill")
    train_s = time.time() - started
    refresh_batchnorm(student, inputs, options.batch_size)
    student.eval()
    return DistillResult(student, "cached" if cache is not None else "online", train_s,
                         cache.build_s if cache is not None else 0.0, losses)
