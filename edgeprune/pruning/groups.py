"""Dependency groups from Torch-Pruning's DependencyGraph: channels that must be removed together.

Residual adds, concatenations, depthwise and grouped convolutions couple channels across layers; the
DependencyGraph traces the model once and hands back each coupled group with the layers it touches.

Three things Torch-Pruning leaves to its caller are settled here, for every model alike:

- **Grouped convolutions and GroupNorm** (groups ≠ channels, as in RegNet and ResNeXt) split their channels into
  G equal blocks, so every block must lose the same channels. A group that crosses such a layer is cut in units of
  one channel per block (the same offset in each): G always divides the kept width and the layer keeps its G
  groups, so its latency-table signature (which records G) still holds. A group that reaches a grouped layer
  through an index shift (a concatenation) cannot keep that pattern and is kept whole, with a note.
- **Channel reshapes Torch-Pruning cannot map** (a channel shuffle: a view that splits the channel axis, then a
  transpose; ShuffleNet) and splits: Torch-Pruning 1.6 either divides by zero while mapping them or maps them as
  if channels kept their places. A reshape it cannot map cuts the graph there, and the groups that reach it are
  kept whole. Every other group that crosses a reshape, split, unbind, expand or slice, or an op Torch-Pruning
  files as element-wise without keeping channels one to one (indexing, attention matmuls), is checked twice:
  against the real data flow (NaN written into two of the root's channels must reach exactly the input channels
  the group would cut, or spread to all of them), and by running a copy with one unit cut (a reshape sized from
  a fixed head count breaks there). A group that fails, or that Torch-Pruning cannot resolve at all, is kept
  whole, with a note naming the op and the layer next to it.
- **Errors**: a model that does not run on its example input, or an op Torch-Pruning cannot trace, is one line
  naming the op (BadInputError); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import math
import signal
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

from edgeprune.errors import BadInputError

# Torch-Pruning node types whose channel mapping is inferred from shapes, not known: checked by data flow
_INFERRED = ("RESHAPE", "SPLIT", "UNBIND", "EXPAND", "SLICE")
# Ops Torch-Pruning passes channels through one to one ("element-wise") that do keep them so; any other op it
# files as element-wise (indexing, matmuls inside attention, pixel shuffles) makes a group checked as well
_KEEPS_CHANNELS = {"Add", "Sub", "Mul", "Div", "Neg", "Abs", "Exp", "Pow", "Sqrt", "Rsqrt", "Erf", "Relu",
                   "Relu6", "LeakyRelu", "Elu", "Gelu", "Silu", "Mish", "Softplus", "Hardswish", "Hardsigmoid",
                   "Hardtanh", "Sigmoid", "Tanh", "Clamp", "ClampMin", "ClampMax", "Mean", "Clone", "Alias",
                   "ConstantPadNd", "ReflectionPad2D", "ReplicationPad2D", "MaxPool2DWithIndices", "AvgPool2D",
                   "AdaptiveAvgPool2D", "AdaptiveMaxPool2D", "UpsampleNearest2D", "UpsampleBilinear2D",
                   "NativeBatchNorm", "NativeLayerNorm", "NativeGroupNorm", "Permute", "Transpose", "T", "Roll",
                   "Unsqueeze", "Squeeze", "ToCopy", "Dropout", "NativeDropout"}


@dataclass
class Group:
    """One coupled channel group: its root layer, channel count, and the Torch-Pruning group to prune it.

    `unit` channels go together: one from each block of a grouped convolution or GroupNorm the group crosses
    (the least common multiple of their group counts); 1 for ordinary groups.
    """

    root: str
    channels: int
    handle: object  # torch_pruning Group
    graph: object  # torch_pruning DependencyGraph
    unit: int = 1

    @property
    def units(self) -> int:
        return self.channels // self.unit

    def channels_of(self, units) -> list:
        """Root channel indices of these units: unit j is channel j of each of the `unit` equal blocks."""
        per = self.units
        return sorted(int(j) + k * per for j in units for k in range(self.unit))


@dataclass
class Trace:
    """The prunable groups of a model, and the groups kept whole: (root layer, why, where) each."""

    groups: list
    kept: list = field(default_factory=list)

    def keep(self, root: str, why: str, where: str) -> None:
        self.kept.append((root, why, where))

    @property
    def kept_whole(self) -> list:
        """One line per reason: how many groups, which roots, and one place where it happens."""
        lines = []
        for why in dict.fromkeys(w for _, w, _ in self.kept):
            roots = [r for r, w, _ in self.kept if w == why]
            where = next(x for _, w, x in self.kept if w == why)
            shown = ", ".join(roots[:3]) + (f" and {len(roots) - 3} more" if len(roots) > 3 else "")
            lines.append(f"kept whole: {len(roots)} group{'s' if len(roots) > 1 else ''} ({shown}): {why} "
                         f"({where}); their channel counts stay as they are")
        return lines


def output_layers(module) -> list:
    """Layers whose outputs are the model's outputs (classifier heads): never pruned on the output side."""
    import torch.nn as nn

    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return linears[-1:] if linears else convs[-1:]


class GraphTimeout(BaseException):  # not Exception: library code that catches Exception must not swallow it
    pass


@contextmanager
def time_limit(seconds: float, wall_factor: float = 10.0):
    """Raise GraphTimeout once the body has used `seconds` of CPU time (main thread only; elsewhere no limit).

    Torch-Pruning's graph construction can loop forever (VainF/Torch-Pruning#527, Hugging Face LLaMA attention);
    a user gets a clear error instead of a hung command. The limit is CPU time, not wall time: a loop burns CPU,
    while a machine busy with other work only stretches the wall clock (a 60 s wall limit refused DenseNet-169
    on a loaded 2-core machine). `wall_factor` × `seconds` of wall time is the backstop for a hang that waits
    instead of spinning.
    """
    if threading.current_thread() is not threading.main_thread() or not seconds:
        yield
        return

    def expire(signum, frame):
        raise GraphTimeout()

    previous = {sig: signal.signal(sig, expire) for sig in (signal.SIGPROF, signal.SIGALRM)}
    signal.setitimer(signal.ITIMER_PROF, seconds)  # this process's CPU time, user + system
    signal.setitimer(signal.ITIMER_REAL, seconds * wall_factor)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def dependency_groups(module, example_inputs: tuple, ignored: list | None = None, timeout_s: float = 60.0) -> list:
    """All prunable channel groups of `module` (conv / linear roots), each with its coupled layers."""
    return trace_groups(module, example_inputs, ignored, timeout_s).groups


def trace_groups(module, example_inputs: tuple, ignored: list | None = None, timeout_s: float = 60.0,
                 skip=None) -> Trace:
    """The prunable channel groups of `module`, and the groups kept whole with the reason for each.

    `skip(torch_pruning_group)`: groups the caller leaves out anyway (neither checked nor returned).
    """
    import torch
    import torch.nn as nn

    ignored = output_layers(module) if ignored is None else ignored
    names = {m: n for n, m in module.named_modules()}
    try:
        with time_limit(timeout_s), warnings.catch_warnings(), torch.enable_grad():
            # Torch-Pruning warns about parameters outside layers (ViT class token, position embedding) and
            # prunes their last non-singleton dimension: the hidden size, which is right for them.
            warnings.filterwarnings("ignore", message=".*nwrapped parameters.*")
            try:
                graph = _graph_class()().build_dependency(module, example_inputs=example_inputs)
            finally:
                _detach_caches(module)
            found, failed = _resolve_groups(graph, ignored, (nn.Conv2d, nn.Linear))
    except GraphTimeout:
        raise BadInputError(f"Torch-Pruning's dependency graph did not finish in {timeout_s:.0f} s of CPU time "
                            f"on {type(module).__name__}",
                            "Torch-Pruning's graph construction loops on some graphs (known upstream on Hugging Face "
                            "attention, VainF/Torch-Pruning#527): give a Hugging Face model as its directory so "
                            "edgeprune's own transformer pruner slims it, or report the model") from None
    except Exception as err:
        _check_runs(module, example_inputs)  # the model's own failure on this input is the user's input
        if not _raised_in_torch_pruning(err):
            raise
        raise BadInputError(f"Torch-Pruning cannot trace {type(module).__name__}: {_where(err, names)}",
                            "the trace comes before --ignore applies, so no flag avoids it; report the model with "
                            "this line") from None
    trace = Trace([])
    for root, err in failed:
        trace.keep(names.get(root, str(root)), "their channels pass an op Torch-Pruning cannot map", _where(err, names))
    candidates = []
    for group in found:
        if skip is not None and skip(group):
            continue
        root = names.get(group[0].dep.target.module, str(group[0].dep.target.module))
        why = _crosses_unmapped(group, graph, names)
        risky = why is None and _risky_nodes(group)
        if risky:
            why = _flow_mismatch(module, example_inputs, group, names)
        if why is None:
            unit, why = _unit(group, names)
        if why is not None:
            trace.keep(root, *why)
            continue
        candidates.append((root, group, unit, bool(risky)))
    trial = [c for c in candidates if c[3]]
    if trial and _fails_after_cut(module, example_inputs, graph, trial, names):
        for candidate in trial:  # one of them breaks the model: find which
            error = _fails_after_cut(module, example_inputs, graph, [candidate], names)
            if error:
                candidates.remove(candidate)
                trace.keep(candidate[0], "cutting them breaks the model's own code (a size it computes from a "
                           "fixed head count or split)", error)
    trace.groups = [Group(root, len(group[0].idxs), group, graph, unit) for root, group, unit, _ in candidates]
    return trace


def _detach_caches(module) -> None:
    """Tensors a module cached in forward during the trace (timm's attention-bias cache) carry the trace's
    autograd graph, and a module holding one cannot be deep-copied: keep them, detached."""
    import torch

    for mod in module.modules():
        for key, value in list(vars(mod).items()):
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                setattr(mod, key, value.detach())
            elif isinstance(value, dict) and not key.startswith("_"):
                for k, v in list(value.items()):
                    if isinstance(v, torch.Tensor) and v.grad_fn is not None:
                        value[k] = v.detach()


def _check_runs(module, example_inputs: tuple) -> None:
    """A model that does not run on its example input is the user's input, not a tracing problem."""
    import torch

    try:
        with torch.no_grad():
            module(*example_inputs)
    except Exception as err:  # any failure of the user's model on the user's input shape
        shapes = ", ".join("x".join(str(d) for d in getattr(x, "shape", ())) for x in example_inputs)
        raise BadInputError(f"{type(module).__name__} does not run on an input of shape {shapes}: "
                            f"{type(err).__name__}: {str(err).splitlines()[0][:160]}",
                            "pass the input shape the model takes (--input-shape), e.g. 1x3x224x224") from None


@functools.lru_cache(maxsize=None)
def _graph_class():
    """Torch-Pruning's DependencyGraph, tolerant of reshapes it cannot map (made once, on first use).

    Its reshape mapping divides by zero on a channel shuffle, while building the graph and again whenever a
    group is resolved (each resolution re-maps every reshape): the node is recorded in `unmapped` and left
    unmapped instead, and every group that crosses it is kept whole (`_crosses_unmapped`).
    """
    import torch_pruning as tp

    class TolerantGraph(tp.DependencyGraph):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.unmapped: dict = {}  # reshape node -> the error Torch-Pruning raised mapping it
            self.mapped: set = set()  # reshape nodes mapped once (a stride is a spatial size: cutting keeps it)
            self.severed: set = set()  # (node, pruning fn) facing one: every group reaching them is kept whole

        def build_dependency(self, *args, **kwargs):
            with _tolerant_reshapes(self.unmapped, self.mapped):
                super().build_dependency(*args, **kwargs)
            # Cut the graph at each unmapped reshape: resolving groups through it would map channels wrongly
            # (and Torch-Pruning's stride mappings there grow to millions of indices).
            for node in self.unmapped:
                self.severed.update((dep.target, dep.handler) for dep in node.dependencies)
                node.dependencies = []
                for other in self.module2node.values():
                    self.severed.update((other, dep.trigger) for dep in other.dependencies if dep.target is node)
                    other.dependencies = [dep for dep in other.dependencies if dep.target is not node]
            return self

        def get_pruning_group(self, *args, **kwargs):
            with _tolerant_reshapes(self.unmapped, self.mapped):
                return super().get_pruning_group(*args, **kwargs)

    return TolerantGraph


@contextmanager
def _tolerant_reshapes(unmapped: dict, mapped: set):
    """While active, a reshape Torch-Pruning cannot map is recorded in `unmapped` and left unmapped.

    Cannot map: its mapping raises (a channel shuffle's view divides by zero), or it guesses a flatten (a
    stride mapping) for a reshape that is not a classifier's flatten: a view splitting the channel axis into
    groups or heads is no flatten, and the guess both maps channels wrongly and grows index lists by the stride.
    A reshape is mapped once per graph (`mapped`): Torch-Pruning re-infers every reshape's channels, recursively,
    before each group it resolves, which alone took minutes on Swin-T.
    """
    import torch_pruning.dependency.index_mapping as index_mapping

    original = index_mapping.update_reshape_index_mapping

    def tolerant(graph, node):
        if node in unmapped or node in mapped:
            return None
        mapped.add(node)
        deps = [d for d in node.dependencies] + [d for n in node.inputs + node.outputs for d in n.dependencies
                                                 if d.target is node]
        before = [list(d.index_mapping) for d in deps]
        try:
            result = original(graph, node)
        except ArithmeticError as err:
            unmapped[node] = f"{type(err).__name__} in Torch-Pruning's reshape mapping"
            return None
        guessed = any(isinstance(m, index_mapping._FlattenIndexMapping) and m not in old
                      for d, old in zip(deps, before) for m in d.index_mapping)
        if guessed and not _is_flatten_to_linear(node):
            for d, old in zip(deps, before):
                d.index_mapping[:] = old
            unmapped[node] = "Torch-Pruning would map it as a flatten"
        return result

    index_mapping.update_reshape_index_mapping = tolerant
    try:
        yield
    finally:
        index_mapping.update_reshape_index_mapping = original


def _resolve_groups(graph, ignored: list, root_types: tuple) -> tuple:
    """([Torch-Pruning group], [(root module, error)]): every root's group, like `get_all_groups`, except that a
    root whose group Torch-Pruning cannot resolve is reported instead of ending the whole trace."""
    ignored = list(ignored) + list(graph.IGNORED_LAYERS_IN_TRACING)
    visited, found, failed = set(), [], []
    for module in list(graph.module2node):
        if not isinstance(module, root_types) or any(module is m for m in ignored) or id(module) in visited:
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        try:
            group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                            list(range(pruner.get_out_channels(module))))
        except Exception as err:  # a channel mapping Torch-Pruning cannot follow (its own code raised)
            if not _raised_in_torch_pruning(err):
                raise
            visited.add(id(module))
            failed.append((module, err))
            continue
        prunable = True
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited.add(id(dep.target.module))
                prunable = prunable and not any(dep.target.module is m for m in ignored)
        if prunable:
            found.append(group)
    return found, failed


def _raised_in_torch_pruning(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None:
        if "torch_pruning" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _where(err: BaseException, names: dict) -> str:
    """The error and the Torch-Pruning graph node (op) and nearest named layer it was handling."""
    from torch_pruning.dependency.node import Node

    node = None
    tb = err.__traceback__
    while tb is not None:
        if "torch_pruning" in tb.tb_frame.f_code.co_filename:
            found = [v for v in tb.tb_frame.f_locals.values() if isinstance(v, Node)]
            node = found[-1] if found else node
        tb = tb.tb_next
    text = f"{type(err).__name__} {str(err).splitlines()[0][:120]}" if str(err) else type(err).__name__
    return f"{text} at {_describe(node, names)}" if node is not None else text


def _describe(node, names: dict) -> str:
    """`op X after layer Y`: a Torch-Pruning node by its op and the nearest named module upstream."""
    op = str(getattr(node, "grad_fn", None) and node.grad_fn.name() or node.name).split("(")[0]
    seen, stack = set(), [node]
    while stack:
        current = stack.pop(0)
        if current.module in names and names[current.module]:
            return f"op {op} after {names[current.module]}"
        seen.add(id(current))
        stack += [n for n in current.inputs if id(n) not in seen]
    return f"op {op}"


def _crosses_unmapped(group, graph, names: dict) -> tuple | None:
    """(why, where) when the group reaches a reshape Torch-Pruning could not map (the graph is cut there)."""
    for dep, _ in group:
        if dep.target in graph.unmapped or (dep.target, dep.handler) in graph.severed:
            near = dep.target if dep.target in graph.unmapped else next(iter(graph.unmapped))
            return "their channels cross a channel reshape Torch-Pruning cannot map (a channel shuffle or a " \
                   "split into heads)", _describe(near, names)
    return None


def _inferred_nodes(group) -> list:
    import torch_pruning.ops as ops

    kinds = tuple(getattr(ops.OPTYPE, k) for k in _INFERRED)
    return [dep.target for dep, _ in group if dep.target.type in kinds]


def _risky_nodes(group) -> list:
    """The group's nodes whose channel mapping Torch-Pruning infers or assumes (except a classifier's flatten)."""
    import re

    import torch_pruning.ops as ops

    risky = [node for node in _inferred_nodes(group) if not _is_flatten_to_linear(node)]
    for dep, _ in group:
        node = dep.target
        if node.type == ops.OPTYPE.ELEMENTWISE and node.grad_fn is not None:
            op = re.sub(r"Backward\d*$", "", node.grad_fn.name().split("::")[-1])
            if op not in _KEEPS_CHANNELS and node not in risky:
                risky.append(node)
    return risky


def _is_flatten_to_linear(node) -> bool:
    """A (N, C, H, W) -> (N, C·H·W) flatten feeding a Linear that reads all of it (Torch-Pruning maps it by
    stride): the classifier's flatten in every torchvision CNN."""
    import math

    import torch.nn as nn

    sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None) or getattr(node.grad_fn, "_saved_self_sizes", None)
    if sizes is None or len(sizes) != 4:
        return False
    flat = math.prod(int(d) for d in sizes[1:])
    return bool(node.outputs) and all(isinstance(out.module, nn.Linear) and out.module.in_features == flat
                                      for out in node.outputs)


def _flow_mismatch(module, example_inputs: tuple, group, names: dict) -> str | None:
    """Whether the group's channel mapping matches the data flow; the reason when it does not.

    NaN is written into two root channels (1 and n-2: a two-way channel shuffle moves both) at every layer that
    produces the group's channels, each at its own mapped positions. Each layer whose inputs the group cuts must
    then see NaN in exactly the channels it would lose, or in all of them (a squeeze-excitation or a norm over
    channels mixes them on the way): anything else means the traced mapping is wrong.
    """
    import torch
    import torch_pruning.pruner.function as fn

    n = len(group[0].idxs)
    probe = {1 % n, max(n - 2, 0)}
    expected: dict = {}
    produced: dict = {}
    for item in group:
        handler, layer = item.dep.handler, item.dep.target.module
        hit = {int(i) for i, r in zip(item.idxs, item.root_idxs) if r in probe}
        if handler in (fn.prune_conv_in_channels, fn.prune_linear_in_channels):
            expected.setdefault(layer, set()).update(hit)
        elif handler in (fn.prune_conv_out_channels, fn.prune_linear_out_channels):
            produced.setdefault(layer, set()).update(hit)
    if not expected:
        return None
    seen: dict = {}

    def channel_dim(layer, x) -> int:
        return 1 if isinstance(layer, torch.nn.modules.conv._ConvNd) else x.dim() - 1

    bad: list = []  # layers Torch-Pruning gives channels they do not have

    def poison(layer, args, out):
        dim = channel_dim(layer, out)
        if max(produced[layer]) >= out.shape[dim]:
            bad.append(layer)
            return out
        out = out.clone()
        out.index_fill_(dim, torch.tensor(sorted(produced[layer])), float("nan"))
        return out

    def record(layer, args):
        x = args[0]
        dim = channel_dim(layer, x)
        nan = x.isnan().movedim(dim, 0).reshape(x.shape[dim], -1).any(1)
        seen.setdefault(layer, set()).update(int(i) for i in torch.nonzero(nan).flatten())
        seen[(layer, "width")] = x.shape[dim]

    hooks = [layer.register_forward_hook(poison) for layer in produced]
    hooks += [layer.register_forward_pre_hook(record) for layer in expected]
    try:
        with torch.no_grad():
            module(*example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    if bad:
        return "Torch-Pruning maps their channels wrongly through a reshape or split (e.g. a channel shuffle)", \
            f"it gives {names.get(bad[0], type(bad[0]).__name__)} channels it does not have"
    for layer, want in expected.items():
        got = seen.get(layer)
        if got is None or (got != want and len(got) < seen[(layer, "width")]):
            return "Torch-Pruning maps their channels wrongly through a reshape or split (e.g. a channel shuffle)", \
                f"{names.get(layer, type(layer).__name__)} reads them after {_describe(_risky_nodes(group)[0], names)}"
    return None


def _fails_after_cut(module, example_inputs: tuple, graph, candidates: list, names: dict) -> str | None:
    """Cut one unit of every candidate group in a deep copy (by layer name) and run it: the error, or None.

    A reshape whose sizes come from the model's own attributes (a fixed head count splitting a fused qkv
    projection, a chunk into equal halves) maps channels one to one, so the data-flow check passes it, yet the
    cut model no longer runs. Running one cut copy finds those groups before anything is pruned for real.
    """
    import copy

    import torch

    clone = copy.deepcopy(module)
    layers = dict(clone.named_modules())
    params = dict(clone.named_parameters())
    try:
        for _, group, unit, _ in candidates:
            per = len(group[0].idxs) // unit
            channels = [per // 2 + k * per for k in range(unit)]
            root = group[0].dep
            for dep, idxs in graph.get_pruning_group(root.target.module, root.handler, channels):
                target = dep.target.module
                dep.handler.__self__.pruning_dim = dep.target.pruning_dim
                if isinstance(target, torch.nn.Parameter):  # a free parameter (class token, layer scale)
                    name = graph._param_to_name[target]
                    owner, _, leaf = name.rpartition(".")
                    setattr(layers[owner], leaf, dep.handler(params[name], list(idxs)))
                elif target in names:
                    dep.handler(layers[names[target]], list(idxs))
        with torch.no_grad():
            clone(*example_inputs)
    except Exception as err:  # noqa: BLE001 - the cut's failure (in Torch-Pruning or the model) is the finding
        return f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    return None


def _channel_blocks(layer, handler) -> int:
    """How many equal channel blocks `layer` splits this side into (1: none); 0 when it cannot be cut at all."""
    import torch.nn as nn
    import torch_pruning.pruner.function as fn

    if isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1:
        if layer.groups == layer.in_channels == layer.out_channels:
            return 1  # depthwise: Torch-Pruning cuts its input and output together
        if handler in (fn.prune_conv_in_channels, fn.prune_conv_out_channels):
            return layer.groups
        return 0  # treated as depthwise by Torch-Pruning although it is not (groups == out_channels != in_channels)
    if isinstance(layer, nn.GroupNorm) and layer.num_groups > 1:
        return layer.num_groups
    return 1


def _unit(group, names: dict) -> tuple:
    """(channels per unit, None) or (1, (why, where)) when the group must stay whole, from the grouped layers
    it crosses."""
    import torch_pruning.pruner.function as fn

    n = len(group[0].idxs)
    unit = 1
    for item in group:
        layer, handler = item.dep.target.module, item.dep.handler
        blocks = _channel_blocks(layer, handler)
        name = names.get(layer, type(layer).__name__)
        if blocks == 0:
            return 1, ("Torch-Pruning cuts a convolution with groups == out_channels != in_channels wrongly", name)
        if blocks == 1:
            continue
        width = layer.in_channels if handler is fn.prune_conv_in_channels else \
            getattr(layer, "out_channels", None) or layer.num_channels
        if width != n or list(item.idxs) != list(item.root_idxs):
            return 1, ("a grouped convolution reads them at shifted positions (after a concatenation), so its "
                       "groups cannot stay equal", f"{name}, {blocks} groups")
        unit = unit * blocks // math.gcd(unit, blocks)
    if n % unit or n == unit:
        return 1, ("a grouped convolution or GroupNorm has one channel per group" if n == unit else
                   "their channels do not split into the grouped layers' equal groups", f"{n} channels, {unit} groups")
    return unit, None


def prune_group(group: Group, remove: list) -> None:
    """Physically remove channel indices `remove` (root channels, not units) from every layer in the group."""
    if not remove:
        return
    dep = group.handle[0].dep
    handle = group.graph.get_pruning_group(dep.target.module, dep.handler, sorted(int(i) for i in remove))
    if group.graph.check_pruning_group(handle):
        handle.prune()
