"""The growth trainer: one loop for FRAGrow and its baselines, so they differ only in when blocks are added.

Every epoch ends with the hold-out check (ORL, the policy's decision). While blocks remain, the learning rate
is a large constant (AutoGrow's advice, kept by FRAGrow); after the last block it decays along one cosine to
zero over the remaining epochs, never restarting. A policy that has not finished growing when only as many
growth epochs remain as blocks to add is made to grow every epoch, so the final phase always gets at least
its minimum epochs (I_max already guarantees that in exact arithmetic; this covers rounding to whole epochs).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from edgeprune.errors import BadInputError

from .network import GrowingNetwork, GrowthStep
from .policy import ALPHA, EpochState, make_policy, max_interval


@dataclass
class GrowOptions:
    """How to grow and train; `epochs` counts the whole run (growth phase and final phase)."""

    policy: str = "fragrow"
    epochs: int = 30
    final_epochs: int = 10  # the minimum length of the final (cosine) phase: E_F^min
    seed_depth: int | tuple = 1
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    alpha: float = ALPHA
    holdout: float = 0.01  # the hold-out that measures ORL: 1 % of the data ...
    min_holdout: int = 32  # ... but never fewer samples than this (on small data 1 % is a handful of images)
    patience: int = 2  # convergent policy: epochs without a better hold-out accuracy before growing
    seed: int = 0


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_accuracy: float  # on the epoch's batches, as they were trained
    val_accuracy: float  # on the hold-out, after the epoch
    orl: float  # percentage points
    interval: float | None  # epochs the policy wanted to wait (FRAGrow, periodic)
    lr: float  # at the epoch's last step
    blocks: int  # blocks added so far
    grew: str | None  # the block added after this epoch
    how: str | None  # "copy" or "fresh"
    forced: bool  # grown because the final phase was due, not because the policy asked
    seconds: float


@dataclass
class GrowResult:
    module: object  # the trained model at the target's depth
    policy: str
    history: list  # EpochRecord per epoch
    steps: list  # GrowthStep per block added
    i_max: float
    train_s: float  # training wall time: every epoch with its hold-out check
    stages: dict  # stage name -> target depth
    seed_depths: dict  # stage name -> seed depth
    n_train: int
    n_holdout: int
    final_start: int  # epochs completed before the cosine phase began
    notes: list = field(default_factory=list)

    @property
    def growth_epochs(self) -> list:
        """After which epoch each block was added (the schedule the policy chose)."""
        return [r.epoch for r in self.history if r.grew]


def split_holdout(samples, fraction: float, minimum: int, seed: int):
    """(train, hold-out): a seeded random `fraction` of the samples, at least `minimum` of them."""
    import torch

    from edgeprune.data import Samples

    n = len(samples)
    k = min(n, max(minimum, int(round(fraction * n))))
    if n - k < 2:
        raise BadInputError(f"data {samples.source} has {n} samples; growth keeps {k} out to measure overfitting "
                            "and needs more to train on", "give more labelled samples")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))

    def pick(idx):
        return Samples(samples.inputs[idx], samples.labels[idx], samples.source, samples.preprocessing)

    return pick(order[k:]), pick(order[:k])


def check_schedule(options: GrowOptions, blocks_to_add: int) -> None:
    """Epochs that cannot hold the growth and the final phase are one clear line, before any training."""
    if options.final_epochs < 1 or options.final_epochs >= options.epochs:
        raise BadInputError(f"final epochs {options.final_epochs} must be at least 1 and fewer than the "
                            f"{options.epochs} epochs in all", "e.g. --epochs 30 --final-epochs 10")
    if options.policy == "vanilla":
        return
    if blocks_to_add == 0:
        raise BadInputError("the seed already has the target's depth: there is nothing to grow",
                            "lower --seed-depth, or use --policy vanilla to train the target as it is")
    growth = options.epochs - options.final_epochs
    if growth < blocks_to_add:
        raise BadInputError(f"growing {blocks_to_add} blocks one epoch apart needs {blocks_to_add} epochs before the "
                            f"final {options.final_epochs}; --epochs {options.epochs} leaves {growth}",
                            f"raise --epochs to at least {blocks_to_add + options.final_epochs}, or seed deeper")


@dataclass
class Decision:
    """The schedule's answer at the end of an epoch."""

    grow: bool
    forced: bool  # grown because the final phase was due, not because the policy asked
    interval: float | None
    orl: float


class Schedule:
    """When to grow and which learning rate to use: the policy, the growth deadline, and the cosine phase.

    Pure bookkeeping (no torch), so the trainer and its tests drive the same decisions.
    """

    def __init__(self, policy, epochs: int, final_epochs: int, blocks_to_add: int, lr: float):
        self.policy = policy
        self.epochs = epochs
        self.final_epochs = final_epochs
        self.blocks_left = blocks_to_add
        self.base_lr = lr
        self.final_start = 0 if blocks_to_add == 0 else None  # epochs completed before the cosine phase
        self.last_growth = 0
        self.best_val = -1.0
        self.stalled = 0

    def after_epoch(self, epoch: int, train_accuracy: float, val_accuracy: float) -> Decision:
        """Decide after `epoch` (1-based) from its train and hold-out accuracies (0..1)."""
        orl = 100.0 * (train_accuracy - val_accuracy)
        self.stalled = 0 if val_accuracy > self.best_val else self.stalled + 1
        self.best_val = max(self.best_val, val_accuracy)
        if self.final_start is not None:
            return Decision(False, False, None, orl)
        state = EpochState(epoch=epoch, since_growth=epoch - self.last_growth, orl=orl, val_accuracy=val_accuracy,
                           stalled_epochs=self.stalled)
        interval = self.policy.interval(state)
        wants = self.policy.should_grow(state)
        chances = self.epochs - self.final_epochs - epoch + 1  # growth epochs left, this one included
        if not wants and chances > self.blocks_left:
            return Decision(False, False, interval, orl)
        self.blocks_left -= 1
        self.last_growth, self.best_val, self.stalled = epoch, -1.0, 0
        if self.blocks_left == 0:
            self.final_start = epoch
        return Decision(True, not wants, interval, orl)

    def lr(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """The learning rate at `step` (0-based) of `epoch` (1-based): constant while growing, then one cosine
        from the base rate to zero over the epochs left after the last growth."""
        if self.final_start is None or epoch <= self.final_start:
            return self.base_lr
        total = (self.epochs - self.final_start) * steps_per_epoch
        t = (epoch - 1 - self.final_start) * steps_per_epoch + step
        return 0.5 * self.base_lr * (1 + math.cos(math.pi * t / total))


def train_growing(network: GrowingNetwork, train, holdout, options: GrowOptions, reporter=None) -> GrowResult:
    """Train `network` from its seed (or, for vanilla, from the full target) and grow it on the policy's schedule."""
    import torch
    import torch.nn.functional as F

    from edgeprune.examples import accuracy
    from edgeprune.progress import active_reporter

    vanilla = options.policy == "vanilla"
    if vanilla:
        network.module = network.target
        network.plan = []
    check_schedule(options, network.blocks_to_add)
    n_blocks = network.blocks_to_add
    i_max = max_interval(options.epochs, options.final_epochs, n_blocks) if n_blocks else 0.0
    schedule = Schedule(make_policy(options.policy, i_max, options.alpha, options.patience), options.epochs,
                        options.final_epochs, n_blocks, options.lr)
    module = network.module
    torch.manual_seed(options.seed)
    gen = torch.Generator().manual_seed(options.seed + 1)
    opt = torch.optim.SGD(module.parameters(), lr=options.lr, momentum=options.momentum,
                          weight_decay=options.weight_decay, nesterov=options.momentum > 0)
    n = len(train)
    per_epoch = max(1, n // options.batch_size + (n % options.batch_size > 1))  # a last batch of 1 is dropped
    reporter = reporter or active_reporter()
    progress = reporter.stage("grow", options.epochs * per_epoch)
    history, done_steps = [], 0
    started = time.perf_counter()
    for epoch in range(1, options.epochs + 1):
        t0 = time.perf_counter()
        module.train()
        order = torch.randperm(n, generator=gen)
        correct = seen = 0
        for b in range(per_epoch):
            idx = order[b * options.batch_size:(b + 1) * options.batch_size]
            lr = schedule.lr(epoch, b, per_epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            x, y = train.inputs[idx], train.labels[idx]
            out = module(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            correct += int((out.detach().argmax(-1) == y).sum())
            seen += len(idx)
            done_steps += 1
            progress({"progress": done_steps, "detail": f"epoch {epoch}/{options.epochs}, "
                                                        f"{len(network.added)}/{n_blocks} blocks added"})
        train_acc, val_acc = correct / max(seen, 1), accuracy(module, holdout)
        decision = schedule.after_epoch(epoch, train_acc, val_acc)
        step: GrowthStep | None = None
        if decision.grow:
            step, params = network.grow()
            opt.add_param_group({"params": params})
        history.append(EpochRecord(epoch, train_acc, val_acc, decision.orl, decision.interval, lr, len(network.added),
                                   step.block if step else None, step.how if step else None, decision.forced,
                                   time.perf_counter() - t0))
    train_s = time.perf_counter() - started
    reporter.done("grow")
    module.eval()
    stages = {s.name: s.depth for s in network.stages}
    seeds = dict(stages) if vanilla else dict(network.seed_depths)
    return GrowResult(module, options.policy, history, list(network.added), i_max, train_s, stages, seeds,
                      len(train), len(holdout), schedule.final_start if schedule.final_start is not None
                      else options.epochs)
