"""Dependency groups from Torch-Pruning's DependencyGraph: channels that must be removed together.

Residual adds, concatenations, depthwise and grouped convolutions couple channels across layers; the
DependencyGraph traces the model once and hands back each coupled group with the layers it touches.
"""

from __future__ import annotations

import signal
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

from edgeprune.errors import BadInputError


@dataclass
class Group:
    """One coupled channel group: its root layer, channel count, and the Torch-Pruning group to prune it."""

    root: str
    channels: int
    handle: object  # torch_pruning Group
    graph: object  # torch_pruning DependencyGraph


def output_layers(module) -> list:
    """Layers whose outputs are the model's outputs (classifier heads): never pruned on the output side."""
    import torch.nn as nn

    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return linears[-1:] if linears else convs[-1:]


class GraphTimeout(BaseException):  # not Exception: library code that catches Exception must not swallow it
    pass


@contextmanager
def time_limit(seconds: float):
    """Raise GraphTimeout if the body runs longer than `seconds` (main thread only; elsewhere no limit).

    Torch-Pruning's graph construction can loop forever (VainF/Torch-Pruning#527, Hugging Face LLaMA attention);
    a user gets a clear error instead of a hung command.
    """
    if threading.current_thread() is not threading.main_thread() or not seconds:
        yield
        return

    def expire(signum, frame):
        raise GraphTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def dependency_groups(module, example_inputs: tuple, ignored: list | None = None, timeout_s: float = 60.0) -> list:
    """All prunable channel groups of `module` (conv / linear roots), each with its coupled layers."""
    import torch.nn as nn
    import torch_pruning as tp

    ignored = output_layers(module) if ignored is None else ignored
    names = {m: n for n, m in module.named_modules()}
    try:
        with time_limit(timeout_s), warnings.catch_warnings():
            # Torch-Pruning warns about parameters outside layers (ViT class token, position embedding) and
            # prunes their last non-singleton dimension: the hidden size, which is right for them.
            warnings.filterwarnings("ignore", message=".*nwrapped parameters.*")
            graph = tp.DependencyGraph().build_dependency(module, example_inputs=example_inputs)
            found = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]))
    except GraphTimeout:
        raise BadInputError(f"Torch-Pruning's dependency graph did not finish in {timeout_s:.0f} s "
                            f"on {type(module).__name__}",
                            "known upstream hang (VainF/Torch-Pruning#527) on Hugging Face attention; LLaMA, GPT-2, "
                            "BERT and ViT layouts use edgeprune's own transformer pruner") from None
    except Exception as err:
        raise BadInputError(f"cannot trace the model's dependency graph: {str(err).splitlines()[0][:200]}",
                            "the model must run on the example input; unsupported layers are named above") from None
    groups = []
    for group in found:
        dep = group[0].dep
        root = dep.target.module
        channels = len(group[0].idxs)
        groups.append(Group(names.get(root, str(root)), channels, group, graph))
    return groups


def prune_group(group: Group, remove: list) -> None:
    """Physically remove channel indices `remove` from every layer in the group."""
    if not remove:
        return
    dep = group.handle[0].dep
    handle = group.graph.get_pruning_group(dep.target.module, dep.handler, sorted(int(i) for i in remove))
    if group.graph.check_pruning_group(handle):
        handle.prune()
