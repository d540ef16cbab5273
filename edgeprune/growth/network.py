"""The network that grows: a model's stages of repeated blocks, its shallow seed, and one new block at a time.

A *stage* is a run of consecutive children of one `nn.Sequential` / `nn.ModuleList` that share a block class
(torchvision's BasicBlock, Bottleneck, InvertedResidual, timm's blocks, a transformer encoder layer): a *head*
block, then blocks that keep the shape of what they receive. A block that changes the shape (a stride, a
channel change) starts a new stage. Only shape-keeping blocks can be added or left out, so a stage grows by
its tail: the seed keeps the first `seed` blocks of every stage and holds an `nn.Identity` in each other
place, which leaves every parameter name where the target has it. Adding a block puts a module of the
target's own structure in the next empty place of the stage; its weights are a copy of the block before it,
unless that block changes resolution or channels (a copy would not fit), when it is freshly initialised: the
target's block at that place, as the model library initialised it (the target itself is never trained).

Blocks are found from one forward pass with hooks (what the shapes really are), never from class names; torch's
own layers (`torch.nn.*`) and plain containers are never blocks (containers are searched inside instead).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from edgeprune.errors import BadInputError


@dataclass(frozen=True)
class Stage:
    """One stage of the target: its blocks' module names in order (the first is the head)."""

    blocks: tuple

    @property
    def name(self) -> str:
        return self.blocks[0]

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def label(self) -> str:
        """`layer1.0..layer1.1`: how messages name the stage."""
        return f"{self.blocks[0]}..{self.blocks[-1]}"


@dataclass(frozen=True)
class GrowthStep:
    """One block added: where, and whether it is a copy of the block before it or freshly initialised."""

    block: str
    stage: str
    source: str  # the block before it in the stage
    how: str  # "copy" or "fresh"


@dataclass
class GrowingNetwork:
    """The live module (seed, then grown) beside the target it grows towards.

    `plan` lists the blocks still to add, front to back: every empty place of the first stage, then the
    next stage's, as FRAGrow's growth is sequential over stages.
    """

    module: object  # torch.nn.Module, trained and grown
    target: object  # the target architecture (structure of new blocks; its weights are never trained)
    stages: list
    seed_depths: dict  # stage name -> blocks in the seed
    plan: list  # block names still to add, in order
    shape_keeping: frozenset  # blocks whose output has the shape of their input
    added: list = field(default_factory=list)  # GrowthStep records

    @property
    def blocks_to_add(self) -> int:
        return len(self.plan)

    def depths(self) -> dict:
        """Stage name -> blocks in the live module now."""
        grown = {s.block for s in self.added}
        return {s.name: self.seed_depths[s.name] + sum(b in grown for b in s.blocks) for s in self.stages}

    def grow(self) -> tuple[GrowthStep, list]:
        """Add the next block of the plan; returns its record and its parameters (for the optimiser)."""
        if not self.plan:
            raise RuntimeError("grow() called with nothing left to add")  # a bug in the caller, not user input
        name = self.plan.pop(0)
        stage = next(s for s in self.stages if name in s.blocks)
        source = stage.blocks[stage.blocks.index(name) - 1]
        live = dict(self.module.named_modules())
        new = copy.deepcopy(dict(self.target.named_modules())[name])
        previous = live[source]
        if source in self.shape_keeping and _same_tensors(previous, new):
            new.load_state_dict(previous.state_dict())
            how = "copy"
        else:
            how = "fresh"  # the target's block as the model library initialised it (the target is never trained)
        new.train(self.module.training)
        _put(self.module, name, new)
        step = GrowthStep(name, stage.name, source, how)
        self.added.append(step)
        return step, list(new.parameters())


def find_stages(module, example_input) -> tuple[list, frozenset]:
    """(stages with two or more blocks, the names of shape-keeping blocks) of `module`, from one forward pass."""
    import torch

    shapes: dict = {}
    hooks = [mod.register_forward_hook(_recorder(shapes, name)) for name, mod in module.named_modules() if name]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(example_input)
    finally:
        for hook in hooks:
            hook.remove()
        module.train(was_training)
    keeping = frozenset(name for name, (inp, out) in shapes.items() if inp is not None and inp == out)
    stages: list = []
    _collect_stages(module, "", keeping, stages)
    return stages, keeping


def _collect_stages(module, prefix: str, keeping: frozenset, stages: list) -> None:
    """Stages in every sequence container, front to back; searches inside every child not in a stage.

    In a container, consecutive blocks of one class form a run; a block that does not keep the shape starts
    a new stage of the run (resnet's layer2 is one stage: the downsampling head and the blocks after it).
    """
    import torch.nn as nn

    children = [(_join(prefix, n), c) for n, c in module.named_children()]
    claimed: set = set()
    if isinstance(module, (nn.Sequential, nn.ModuleList)):
        current: list = []
        for name, child in children + [(None, None)]:
            same_run = current and child is not None and _is_block(child) and type(child) is type(current[-1][1])
            if same_run and name in keeping:
                current.append((name, child))
                continue
            if len(current) > 1:
                stages.append(Stage(tuple(n for n, _ in current)))
                claimed.update(n for n, _ in current)
            current = [(name, child)] if child is not None and _is_block(child) else []
    for name, child in children:
        if name not in claimed:
            _collect_stages(child, name, keeping, stages)


def _is_block(module) -> bool:
    """A block is a model library's module with weights: never a torch.nn layer or a container (Sequential,
    ModuleList and their subclasses, such as torchvision's Conv2dNormActivation: they are searched inside)."""
    import torch.nn as nn

    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    if type(module).__module__.startswith("torch."):
        return False
    return any(True for _ in module.parameters())


def _recorder(shapes: dict, name: str):
    import torch

    def hook(mod, args, output):
        inp = tuple(args[0].shape) if len(args) == 1 and isinstance(args[0], torch.Tensor) else None
        out = tuple(output.shape) if isinstance(output, torch.Tensor) else None
        shapes.setdefault(name, (inp, out))

    return hook


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _same_tensors(a, b) -> bool:
    """Same state-dict names and shapes: `a`'s weights fit `b`."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(tuple(sa[k].shape) == tuple(sb[k].shape) for k in sa)


def _put(root, name: str, module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    parent._modules[leaf] = module


def parse_seed_depth(text: str | int | tuple | list) -> int | tuple:
    """`1` or `1,1,2,1` (per growable stage, front to back) -> int or tuple; one line for anything else."""
    per_stage = isinstance(text, (tuple, list))
    if per_stage:
        values = tuple(text)
    elif isinstance(text, int) and not isinstance(text, bool):
        values = (text,)
    else:
        try:
            values = tuple(int(v) for v in str(text).split(","))
        except ValueError:
            raise BadInputError(f"seed depth '{text}' is not a number of blocks",
                                "write one number for every stage (e.g. 1) or one per stage (e.g. 1,1,2,1)") from None
        per_stage = len(values) > 1
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise BadInputError(f"seed depth {text} must be whole numbers of at least 1 block",
                            "every stage keeps its first block; write e.g. 1 or 1,1,2,1")
    return values if per_stage else values[0]


def seed_network(target, example_input, seed_depth: int | tuple, spec: str = "the model") -> GrowingNetwork:
    """The shallow seed of `target` (a copy of its first blocks, as initialised) and the plan to grow it.

    `seed_depth`: blocks kept per stage (one number for all, or one per stage front to back). A target stage
    shallower than its seed depth, a model without a stage to grow, and a block that cannot be copied or left
    out are each one BadInputError naming the stage or block.
    """
    import torch.nn as nn

    stages, keeping = find_stages(target, example_input)
    if not stages:
        raise BadInputError(f"{spec} has no stage of repeated blocks to grow (no container holds two blocks of "
                            "one class where the second keeps the shape)",
                            "grow a staged CNN such as torchvision:resnet18 or torchvision:mobilenet_v2")
    if isinstance(seed_depth, int):
        depths = [seed_depth] * len(stages)
    else:
        if len(seed_depth) != len(stages):
            raise BadInputError(f"seed depth {','.join(map(str, seed_depth))} gives {len(seed_depth)} stages; {spec} "
                                f"has {len(stages)} ({', '.join(f'{s.label}: {s.depth}' for s in stages)})",
                                "give one number for all stages or one per stage")
        depths = list(seed_depth)
    for stage, depth in zip(stages, depths):
        if depth > stage.depth:
            raise BadInputError(f"the target depth of stage {stage.label} ({stage.depth} blocks in {spec}) is lower "
                                f"than the seed's {depth}",
                                "lower --seed-depth, or grow a deeper model (e.g. resnet34 for resnet18)")
    try:
        module = copy.deepcopy(target)  # the live network; new blocks are copies of the target's blocks
    except Exception as err:  # noqa: BLE001 - any refusal to copy makes the model ungrowable
        name = _first_uncopyable(target, stages)
        raise BadInputError(f"block {name} of {spec} cannot be copied: {str(err).splitlines()[0][:160]}",
                            "grow a model whose blocks are plain modules (no open files, generators or locks as "
                            "attributes)") from None
    plan = []
    for stage, depth in zip(stages, depths):
        for name in stage.blocks[depth:]:
            _put(module, name, nn.Identity())
            plan.append(name)
    _check_runs(module, example_input, plan, target, spec)
    return GrowingNetwork(module, target, stages, {s.name: d for s, d in zip(stages, depths)}, plan, keeping)


def _first_uncopyable(target, stages: list) -> str:
    """The first stage block (else any module) that deepcopy refuses: the one to name in the error."""
    names = [b for s in stages for b in s.blocks] + [n for n, _ in target.named_modules() if n]
    for name in names:
        try:
            copy.deepcopy(target.get_submodule(name))
        except Exception:  # noqa: BLE001 - looking for the refusal, whatever its type
            return name
    return "(the model itself)"


def _check_runs(module, example_input, plan: list, target, spec: str) -> None:
    """The seed must run; when it does not, name the first block the model cannot do without."""
    import torch
    import torch.nn as nn

    def runs(candidate) -> str | None:
        try:
            with torch.no_grad():
                candidate.eval()(example_input)
        except Exception as err:  # noqa: BLE001 - the model's own forward decides what it needs
            return str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        return None

    if runs(module) is None:
        module.train()
        return
    for name in plan:
        trial = copy.deepcopy(target)
        _put(trial, name, nn.Identity())
        problem = runs(trial)
        if problem is not None:
            raise BadInputError(f"{spec} does not run without block {name}, so it cannot grow it: {problem}",
                                "seed this stage deeper (--seed-depth), or grow a model whose blocks are only "
                                "called through their container")
    raise BadInputError(f"the seed of {spec} does not run: {runs(module)}",
                        "seed deeper (--seed-depth), or grow a model whose blocks are only called through their "
                        "container")
