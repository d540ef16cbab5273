"""Find a model's blocks in its ONNX graph, each with a signature the device side can synthesise.

The graph the runtime executes is the ground truth for what costs time, so blocks are read from the
exported ONNX (BatchNorm already folded) rather than from torch modules. A block is one compute node plus
what the runtime fuses into it: Conv (+ residual Add) (+ activation), Gemm / MatMul (+ bias) (+ activation).
Width-following ops (pools, element-wise Add/Mul, unfused activations) are blocks too, with c_in == c_out.
Shape and layout ops are free; anything else is `uncovered`: its cost reaches the table only through the
dense calibration, and the table names it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

LAYOUT_OPS = {
    "Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Shape", "Constant", "Gather", "Cast",
    "ConstantOfShape", "Slice", "Range", "Expand", "Dropout",
}
UNARY_ACTS = {"Relu": "relu", "HardSwish": "hardswish", "HardSigmoid": "hardsigmoid", "Sigmoid": "sigmoid",
              "Tanh": "tanh"}


@dataclass(frozen=True)
class Block:
    """One measurable unit of the graph at its current widths."""

    name: str
    kind: str
    signature: dict = field(hash=False)
    c_in: int = 0
    c_out: int = 0
    in_fixed: bool = False  # c_in cannot change under pruning (it is the graph input's width)
    out_fixed: bool = False  # c_out cannot change (it is a graph output's width)
    macs: int = 0
    nodes: tuple = ()
    io_elems: int = 0  # input + output elements of a conv: what a layout change (reorder) copies

    def on_step(self, step: int) -> bool:
        """Both widths on the channel step: the runtime keeps such a conv in its blocked layout."""
        return self.c_in % step == 0 and self.c_out % step == 0

    @property
    def sig_key(self) -> str:
        return signature_key(self.signature)

    @property
    def tied(self) -> bool:
        """c_in and c_out are one width (depthwise conv, pools, element-wise ops)."""
        return self.kind in ("eltwise", "pool") or self.signature.get("groups") == "depthwise"


@dataclass
class GraphBlocks:
    """What `extract_blocks` found: measurable blocks, free layout ops and uncovered ops by type."""

    blocks: list
    layout_ops: Counter
    uncovered: Counter

    @property
    def macs(self) -> int:
        return sum(b.macs for b in self.blocks)


def signature_key(signature: dict) -> str:
    """A short stable key: the kind, then a hash of the canonical JSON of the fixed attributes."""
    text = json.dumps(signature, sort_keys=True, separators=(",", ":"))
    return f"{signature['kind']}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def cell_key(sig_key: str, c_in: int, c_out: int) -> str:
    return f"{sig_key}@{c_in}x{c_out}"


def layer_name(node_name: str, fallback: str) -> str:
    """`/layer1/layer1.0/conv1/Conv` -> `layer1.0.conv1` (the torch module path the exporter recorded)."""
    parts = [p for p in node_name.split("/") if p][:-1]
    if parts and parts[0] == "inner":  # edgeprune's own export wrapper (latency/lm.py), not a model module
        parts = parts[1:]
    path, last = "", ""
    for part in parts:
        if path and part.startswith(path + "."):
            path = part
        elif last and part.startswith(last + "."):
            path = path[: len(path) - len(last)] + part
        elif part != path:
            path = f"{path}.{part}" if path else part
        last = part.rsplit(".", 1)[-1] if path == part else part
    return path or fallback


def _fallback(node, kind: str, index: int) -> str:
    """A block name when the node has no module scope: the exporter's node name (stable when widths change,
    unlike a node index, which shifts when the exporter folds a different number of constants)."""
    return node.name.strip("/").replace("/", ".") or f"{kind}{index}"


def _run_shapes(model, inputs: list) -> dict:
    """Every tensor's shape from one ONNX Runtime run on zeros, where static inference left some unknown.

    Shape arithmetic in the graph (a channel shuffle's Shape -> Div -> Reshape, a channel split's Slice ends)
    defeats ONNX's shape inference, and every conv behind it would be left out of the table. With a static
    input, running the graph once gives the real shapes. {} when an input is dynamic or the runtime refuses.
    """
    import onnx
    import onnxruntime as ort

    from edgeprune.exporters.bundle import MAX_SINGLE_FILE

    if model.ByteSize() >= MAX_SINGLE_FILE:  # protobuf cannot serialise the probe copy: keep the inferred shapes
        return {}
    feeds = {}
    for vi in inputs:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if not dims or min(dims) <= 0:
            return {}
        feeds[vi.name] = np.zeros(dims, onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=o) for n in probe.graph.node for o in n.output
                              if o and o not in have)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = session.run(None, feeds)
    except Exception:  # noqa: BLE001 - a graph the runtime cannot run keeps the inferred shapes (and its gaps)
        return {}
    return {o.name: list(v.shape) for o, v in zip(session.get_outputs(), values) if hasattr(v, "shape")}


class _Graph:
    def __init__(self, model):
        import onnx

        inferred = onnx.shape_inference.infer_shapes(model)
        g = inferred.graph
        self.nodes = list(g.node)
        self.inits = {i.name: i for i in g.initializer}
        self.consts = set(self.inits)
        for node in self.nodes:
            # the exporter shares equal initializers (e.g. zero biases) and names the others Identity outputs
            if node.op_type == "Constant" or (node.op_type == "Identity" and node.input[0] in self.consts):
                self.consts.update(node.output)
        self.shapes = {}
        inputs = [i for i in g.input if i.name not in self.inits]
        first = inputs[0].type.tensor_type.shape.dim if inputs else []
        batch = first[0].dim_value if first and first[0].dim_value > 0 else None
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            dims = [d.dim_value if d.dim_value > 0 else None for d in vi.type.tensor_type.shape.dim]
            if dims and dims[0] is None and vi.name not in self.inits:
                dims[0] = batch  # shape inference can lose a static batch behind mask arithmetic
            self.shapes[vi.name] = dims
        for name, init in self.inits.items():
            self.shapes[name] = list(init.dims)
        outputs = [o for n in self.nodes for o in n.output if o]
        if any(None in (self.shapes.get(o) or [None]) for o in outputs):
            for name, dims in _run_shapes(model, inputs).items():
                if None in (self.shapes.get(name) or [None]):
                    self.shapes[name] = dims
        self.graph_inputs = {i.name for i in g.input} - self.consts
        self.graph_outputs = {o.name for o in g.output}
        self.consumers = {}
        self.producer = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
            for name in node.output:
                self.producer[name] = node

    def only_consumer(self, tensor):
        users = self.consumers.get(tensor, [])
        if len(users) == 1 and tensor not in self.graph_outputs:
            return users[0]
        return None

    def const_value(self, name):
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        for node in self.nodes:
            if node.op_type == "Constant" and name in node.output:
                return numpy_helper.to_array(node.attribute[0].t)
        return None

    def attr(self, node, name, default=None):
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default


def _activation_after(graph, tensor, covered):
    """If what reads `tensor` is an activation the runtime fuses, return (act, nodes, out)."""
    users = graph.consumers.get(tensor, [])
    if tensor in graph.graph_outputs or any(u.name in covered for u in users):
        return None, [], tensor
    if len(users) == 2:  # SiLU: x * sigmoid(x) reads x twice
        sig = next((u for u in users if u.op_type == "Sigmoid"), None)
        mul = next((u for u in users if u.op_type == "Mul"), None)
        if sig is not None and mul is not None and sig.output[0] in mul.input \
                and graph.only_consumer(sig.output[0]) is mul:
            return "silu", [sig, mul], mul.output[0]
    if len(users) != 1:
        return None, [], tensor
    node = users[0]
    if node.op_type in UNARY_ACTS:
        return UNARY_ACTS[node.op_type], [node], node.output[0]
    if node.op_type == "Clip":
        lo = graph.const_value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        hi = graph.const_value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        # bounds are scalars, or one-element arrays (the cell synthesiser's np.ascontiguousarray makes them 1-D)
        if lo is not None and hi is not None and np.size(lo) == np.size(hi) == 1 \
                and float(np.ravel(lo)[0]) == 0.0 and float(np.ravel(hi)[0]) == 6.0:
            return "relu6", [node], node.output[0]
    return None, [], tensor


def _conv_block(graph, node, index, covered):
    w_shape = graph.shapes.get(node.input[1])
    x_shape = graph.shapes.get(node.input[0])
    if not w_shape or not x_shape or len(x_shape) != 4 or None in x_shape[1:]:
        return None
    c_out, cin_per_group, kh, kw = w_shape
    c_in = x_shape[1]
    group = int(graph.attr(node, "group", 1))
    nodes = [node]
    out = node.output[0]
    residual = False
    add = graph.only_consumer(out)
    if add is not None and add.op_type == "Add" and add.name not in covered:
        other = [i for i in add.input if i != out]
        if len(other) == 1 and other[0] not in graph.consts and graph.shapes.get(other[0]) == graph.shapes.get(out):
            residual = True
            nodes.append(add)
            out = add.output[0]
    act, act_nodes, out = _activation_after(graph, out, covered)
    nodes += act_nodes
    if group == c_in and cin_per_group == 1 and c_out == c_in:
        groups = "depthwise"  # a depthwise conv cut to one channel too (the same op as a 1 -> 1 conv)
    elif group == 1:
        groups = 1
    else:
        groups = group
    y_shape = graph.shapes.get(node.output[0]) or [1, c_out, 1, 1]
    signature = {
        "kind": "conv", "kernel": [kh, kw], "stride": list(graph.attr(node, "strides", [1, 1])),
        "pads": list(graph.attr(node, "pads", [0, 0, 0, 0])), "dilation": list(graph.attr(node, "dilations", [1, 1])),
        "groups": groups, "hw": list(x_shape[2:]), "act": act, "residual": residual,
    }
    macs = int(np.prod(y_shape)) * cin_per_group * kh * kw
    return Block(layer_name(node.name, _fallback(node, "conv", index)), "conv", signature, c_in, c_out,
                 in_fixed=node.input[0] in graph.graph_inputs, out_fixed=out in graph.graph_outputs,
                 macs=macs, nodes=tuple(n.name for n in nodes),
                 io_elems=int(np.prod(x_shape)) + int(np.prod(y_shape)))


def _gemm_block(graph, node, index, covered):
    x_shape = graph.shapes.get(node.input[0])
    w_shape = graph.shapes.get(node.input[1])
    if not x_shape or not w_shape or None in x_shape or node.input[1] not in graph.consts:
        return None
    nodes = [node]
    out = node.output[0]
    if node.op_type == "Gemm":
        trans_b = int(graph.attr(node, "transB", 0))
        c_out, c_in = (w_shape if trans_b else w_shape[::-1])
        rows = x_shape[0]
        signature = {"kind": "gemm", "rank": 2, "rows": rows, "bias": len(node.input) > 2}
    else:
        c_in, c_out = w_shape
        rows = int(np.prod(x_shape[:-1]))
        bias = False
        add = graph.only_consumer(out)
        if add is not None and add.op_type == "Add" and add.name not in covered \
                and any(i in graph.consts for i in add.input):
            bias = True
            nodes.append(add)
            out = add.output[0]
        signature = {"kind": "gemm", "rank": 3, "rows": rows, "bias": bias}
    act, act_nodes, out = _activation_after(graph, out, covered)
    nodes += act_nodes
    signature["act"] = act
    return Block(layer_name(node.name, _fallback(node, "gemm", index)), "gemm", signature, c_in, c_out,
                 in_fixed=node.input[0] in graph.graph_inputs, out_fixed=out in graph.graph_outputs,
                 macs=rows * c_in * c_out, nodes=tuple(n.name for n in nodes))


def _pool_block(graph, node, index):
    x_shape = graph.shapes.get(node.input[0])
    if not x_shape or len(x_shape) != 4 or None in x_shape[1:]:
        return None
    signature = {"kind": "pool", "op": node.op_type, "hw": list(x_shape[2:])}
    if node.op_type != "GlobalAveragePool":
        signature.update(kernel=list(graph.attr(node, "kernel_shape")),
                         stride=list(graph.attr(node, "strides", [1, 1])),
                         pads=list(graph.attr(node, "pads", [0, 0, 0, 0])),
                         ceil_mode=int(graph.attr(node, "ceil_mode", 0)))
        if node.op_type == "AveragePool":
            signature["count_include_pad"] = int(graph.attr(node, "count_include_pad", 0))
    c = x_shape[1]
    return Block(layer_name(node.name, _fallback(node, "pool", index)), "pool", signature, c, c,
                 in_fixed=node.input[0] in graph.graph_inputs, out_fixed=node.output[0] in graph.graph_outputs,
                 nodes=(node.name,))


def _eltwise_block(graph, node, index):
    x_shape = graph.shapes.get(node.input[0])
    if x_shape and len(x_shape) == 3 and None not in x_shape and node.op_type in ("Add", "Mul"):
        return _token_eltwise_block(graph, node, index)
    if x_shape and len(x_shape) == 4 and None not in x_shape and node.op_type in ("Add", "Mul") \
            and _channels_last(graph, node):
        return _channels_last_eltwise_block(graph, node, index)
    if not x_shape or len(x_shape) != 4 or None in x_shape[1:]:
        return None
    if node.op_type in ("Add", "Mul"):
        if any(i in graph.consts for i in node.input):
            return None
        shapes = [graph.shapes.get(i) for i in node.input]
        big = max(shapes, key=lambda s: int(np.prod([d or 1 for d in s])) if s else 0)
        if big is None or len(big) != 4:
            return None
        x_shape = big
        broadcast = any(s != big for s in shapes)
        signature = {"kind": "eltwise", "op": node.op_type, "hw": list(big[2:]), "broadcast": broadcast}
    else:
        signature = {"kind": "eltwise", "op": UNARY_ACTS[node.op_type], "hw": list(x_shape[2:])}
    c = x_shape[1]
    return Block(layer_name(node.name, _fallback(node, node.op_type.lower(), index)), "eltwise", signature, c, c,
                 in_fixed=any(i in graph.graph_inputs for i in node.input),
                 out_fixed=node.output[0] in graph.graph_outputs, nodes=(node.name,))


def _concat_block(graph, node, index):
    """A channel Concat of image maps (DenseNet, Inception, GhostNet, ShuffleNetV2): it copies every input into
    the output, a cost that follows the output width, so it is a block of that one width."""
    shapes = [graph.shapes.get(i) for i in node.input]
    if graph.attr(node, "axis", None) not in (1, -3) or len(node.input) < 2 \
            or any(i in graph.consts for i in node.input) \
            or any(not x or len(x) != 4 or None in x[1:] for x in shapes):
        return None
    c = sum(x[1] for x in shapes)
    signature = {"kind": "eltwise", "op": "Concat", "hw": list(shapes[0][2:]), "inputs": len(node.input)}
    return Block(layer_name(node.name, _fallback(node, "concat", index)), "eltwise", signature, c, c,
                 in_fixed=all(i in graph.graph_inputs for i in node.input),
                 out_fixed=node.output[0] in graph.graph_outputs, nodes=(node.name,))


def _token_eltwise_block(graph, node, index):
    """Residual Add / Mul of two [1, tokens, c] sequences."""
    shapes = [graph.shapes.get(i) for i in node.input]
    if any(i in graph.consts for i in node.input) or shapes[0] != shapes[1]:
        return None
    _, tokens, c = shapes[0]
    signature = {"kind": "eltwise", "op": node.op_type, "tokens": tokens, "broadcast": False}
    return Block(layer_name(node.name, _fallback(node, node.op_type.lower(), index)), "eltwise", signature, c, c,
                 in_fixed=True, out_fixed=True, nodes=(node.name,))


def _channels_last(graph, node, depth: int = 8) -> bool:
    """A 4-D tensor laid out [n, h, w, c]: an element-wise chain back to a MatMul / Gemm (ConvNeXt and Swin run
    their MLPs channels-last), whose last axis is the channels a pruned Linear changes."""
    seen, frontier = set(), [i for i in node.input if i not in graph.consts]
    for _ in range(depth):
        step = []
        for tensor in frontier:
            producer = graph.producer.get(tensor)
            if producer is None or producer.name in seen:
                continue
            seen.add(producer.name)
            if producer.op_type in ("MatMul", "Gemm"):
                return True
            if producer.op_type in ("Add", "Mul", "Div", "Sub", "Erf", "Tanh", "Sigmoid", "Relu", "Pow", "Sqrt"):
                step += [i for i in producer.input if i not in graph.consts]
        frontier = step
    return False


def _channels_last_eltwise_block(graph, node, index):
    """Add / Mul on [n, h, w, c]: measured as h·w tokens of c channels, so a pruned c keeps the signature."""
    shapes = [graph.shapes.get(i) for i in node.input]
    if any(i in graph.consts for i in node.input) or shapes[0] != shapes[1]:
        return None
    _, h, w, c = shapes[0]
    signature = {"kind": "eltwise", "op": node.op_type, "tokens": h * w, "broadcast": False}
    return Block(layer_name(node.name, _fallback(node, node.op_type.lower(), index)), "eltwise", signature, c, c,
                 in_fixed=any(i in graph.graph_inputs for i in node.input),
                 out_fixed=node.output[0] in graph.graph_outputs, nodes=(node.name,))


ATTENTION_SCOPES = ("self_attn", "attention", "attn", "self_attention")
MLP_SCOPES = ("mlp", "feed_forward", "ffn")


def _scope_of(node_name: str, names: tuple) -> str | None:
    """The node-name prefix up to the first path segment in `names` (the module that owns the node)."""
    parts = node_name.split("/")
    for i, part in enumerate(parts[:-1]):
        if part in names:
            return "/".join(parts[: i + 1]) + "/"
    return None


def _projections(graph, nodes) -> dict:
    """{projection module name: (MatMul node, c_in, c_out, bias Add node or None)} inside one scope."""
    out = {}
    for node in nodes:
        if node.op_type != "MatMul" or node.input[1] not in graph.consts:
            continue
        c_in, c_out = graph.shapes[node.input[1]][-2:]
        add = graph.only_consumer(node.output[0])
        bias = add if add is not None and add.op_type == "Add" and any(i in graph.consts for i in add.input) else None
        out[node.name.split("/")[-2]] = (node, c_in, c_out, bias)
    return out


def _pick(projections: dict, *names):
    for name in names:
        if name in projections:
            return projections[name]
    return None


def _attention_block(graph, scope: str, nodes: list, head_dim: int):
    proj = _projections(graph, nodes)
    q = _pick(proj, "q_proj", "query", "q", "q_lin")
    k = _pick(proj, "k_proj", "key", "k", "k_lin")
    o = _pick(proj, "o_proj", "out_proj", "dense", "o", "out_lin")
    qkv = _pick(proj, "qkv_proj")  # Phi-3 packs q|k|v into one projection: q rows are the output's inputs
    if q is None and qkv is not None and o is not None and not o[1] % head_dim:
        heads = o[1] // head_dim
        packed = qkv[2] // head_dim - heads
        if qkv[2] % head_dim or packed <= 0 or packed % 2:
            return None
        q, kv = qkv, packed // 2
    elif q is None or k is None or o is None or q[2] % head_dim or k[2] % head_dim:
        return None
    else:
        heads, kv = q[2] // head_dim, k[2] // head_dim
    x_shape = graph.shapes.get(q[0].input[0])
    if not x_shape or None in x_shape:
        return None
    tokens = int(np.prod(x_shape[:-1]))
    past = 0
    for node in nodes:
        if node.op_type == "Concat":
            for name in node.input:
                if name in graph.graph_inputs and len(graph.shapes.get(name) or []) == 4:
                    past = graph.shapes[name][2]
    rope = any(n.op_type == "Neg" for n in nodes)
    signature = {"kind": "attention", "tokens": tokens, "past": past, "head_dim": head_dim,
                 "kv_groups": heads // kv if kv and heads % kv == 0 else 1, "rope": rope, "bias": q[3] is not None}
    hidden = q[1]
    macs = tokens * hidden * (heads + 2 * kv) * head_dim + tokens * heads * head_dim * hidden \
        + 2 * tokens * (tokens + past) * heads * head_dim
    return Block(layer_name(q[0].name, scope).rsplit(".", 1)[0], "attention", signature, hidden, heads,
                 in_fixed=True, out_fixed=False, macs=macs, nodes=tuple(n.name for n in nodes))


def _mlp_block(graph, scope: str, nodes: list):
    proj = _projections(graph, nodes)
    gate, up = _pick(proj, "gate_proj", "w1"), _pick(proj, "up_proj", "w3")
    packed = _pick(proj, "gate_up_proj")  # Phi-3: gate|up in one projection, channel c is rows c and d_ff + c
    down = _pick(proj, "down_proj", "w2", "c_proj", "fc2", "dense_4h_to_h", "lin2")
    first = gate or packed or _pick(proj, "c_fc", "fc1", "dense_h_to_4h", "fc", "lin1")
    if first is None or down is None or (packed is not None and first is packed and packed[2] % 2):
        return None
    x_shape = graph.shapes.get(first[0].input[0])
    if not x_shape or None in x_shape:
        return None
    tokens = int(np.prod(x_shape[:-1]))
    act = "swiglu" if (gate is not None and up is not None) or first is packed else "gelu"
    signature = {"kind": "mlp", "tokens": tokens, "act": act, "bias": first[3] is not None}
    hidden, width = first[1], first[2] // 2 if first is packed else first[2]
    macs = tokens * hidden * width * (3 if act == "swiglu" else 2)
    return Block(layer_name(first[0].name, scope).rsplit(".", 1)[0], "mlp", signature, hidden, width,
                 in_fixed=True, out_fixed=False, macs=macs, nodes=tuple(n.name for n in nodes))


def _norm_block(graph, scope: str, nodes: list):
    fused = any(n.op_type == "LayerNormalization" for n in nodes)
    if not fused and not any(n.op_type == "ReduceMean" for n in nodes):
        return None
    x_shape = graph.shapes.get(nodes[0].input[0])
    if not x_shape or len(x_shape) != 3 or None in x_shape:
        return None
    kind = "layer_fused" if fused else "layer" if any(n.op_type == "Sub" for n in nodes) else "rms"
    signature = {"kind": "norm", "tokens": x_shape[0] * x_shape[1], "type": kind}
    c = x_shape[-1]
    return Block(layer_name(nodes[0].name, scope), "norm", signature, c, c, in_fixed=True, out_fixed=True,
                 nodes=tuple(n.name for n in nodes))


def _transformer_blocks(graph, head_dim: int | None) -> list:
    """Attention, MLP and norm modules found by the scope names the exporter records."""
    scopes = {}
    for node in graph.nodes:
        for kind, names in (("attention", ATTENTION_SCOPES), ("mlp", MLP_SCOPES)):
            scope = _scope_of(node.name, names)
            if scope:
                scopes.setdefault((kind, scope), []).append(node)
                break
        else:
            parts = node.name.split("/")
            if len(parts) > 2 and ("norm" in parts[-2].lower() or parts[-2].startswith("ln")):
                scopes.setdefault(("norm", "/".join(parts[:-1]) + "/"), []).append(node)
    blocks = []
    for (kind, scope), nodes in scopes.items():
        if kind == "attention":
            block = _attention_block(graph, scope, nodes, head_dim) if head_dim else None
        elif kind == "mlp":
            block = _mlp_block(graph, scope, nodes)
        else:
            block = _norm_block(graph, scope, nodes)
        if block is not None:
            blocks.append(block)
    return blocks


def extract_blocks(model, head_dim: int | None = None) -> GraphBlocks:
    """Blocks of an ONNX ModelProto, in graph order, with unique layer names.

    `head_dim` (from the model's config) lets attention modules become attention blocks whose width is the
    number of heads; without it their projections are measured as separate linear blocks.
    """
    graph = _Graph(model)
    covered = set()
    blocks, layout, uncovered = [], Counter(), Counter()
    for block in _transformer_blocks(graph, head_dim):
        blocks.append(block)
        covered.update(block.nodes)
    for index, node in enumerate(graph.nodes):
        if node.name in covered and node.name:
            continue
        block = None
        if node.op_type == "Conv":
            block = _conv_block(graph, node, index, covered)
        elif node.op_type == "Gemm" or (node.op_type == "MatMul" and node.input[1] in graph.consts):
            block = _gemm_block(graph, node, index, covered)
        elif node.op_type in ("MaxPool", "AveragePool", "GlobalAveragePool"):
            block = _pool_block(graph, node, index)
        elif node.op_type in ("Add", "Mul") or node.op_type in UNARY_ACTS:
            block = _eltwise_block(graph, node, index)
        elif node.op_type == "Concat":
            block = _concat_block(graph, node, index)
        if block is not None:
            blocks.append(block)
            covered.update(block.nodes)
        elif node.op_type in LAYOUT_OPS:
            layout[node.op_type] += 1
        elif node.op_type == "Concat" and all(len(graph.shapes.get(i) or [0, 0]) == 1 for i in node.input):
            layout["Concat (shape)"] += 1
        elif node.op_type in ("Add", "Mul", "Div", "Sub") and any(i in graph.consts for i in node.input):
            layout[node.op_type + " (constant)"] += 1
        else:
            uncovered[node.op_type] += 1
    seen = Counter()
    unique = []
    for block in blocks:
        seen[block.name] += 1
        if seen[block.name] > 1:
            block = dataclasses.replace(block, name=f"{block.name}#{seen[block.name]}")
        unique.append(block)
    return GraphBlocks(unique, layout, uncovered)
