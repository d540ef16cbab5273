"""Micro-ONNX synthesis: one small model per table cell, built from a block signature and two widths.

A signature names a fused block kind and its fixed attributes; `c_in` and `c_out` are the widths that pruning
changes. Each builder mirrors what the exporter writes for that block, so the device runtime applies the same
fusions (Conv+BN folded, Conv+Add+activation fused) to the cell as it does inside the whole model.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ProfilerError

OPSET = 17
ACTIVATIONS = ("relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu", "gelu", "tanh")


def _init(name, array):
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def _activation(act, x, out, nodes, inits):
    """Append the nodes of `act` reading `x` and writing `out` (the exporter's own decomposition)."""
    if act == "relu":
        nodes.append(helper.make_node("Relu", [x], [out]))
    elif act == "relu6":
        inits += [_init("clip_lo", np.array(0.0, np.float32)), _init("clip_hi", np.array(6.0, np.float32))]
        nodes.append(helper.make_node("Clip", [x, "clip_lo", "clip_hi"], [out]))
    elif act == "hardswish":
        nodes.append(helper.make_node("HardSwish", [x], [out]))
    elif act == "hardsigmoid":
        nodes.append(helper.make_node("HardSigmoid", [x], [out], alpha=1.0 / 6, beta=0.5))
    elif act == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", [x], [out]))
    elif act == "tanh":
        nodes.append(helper.make_node("Tanh", [x], [out]))
    elif act == "silu":
        nodes.append(helper.make_node("Sigmoid", [x], [x + "_sig"]))
        nodes.append(helper.make_node("Mul", [x, x + "_sig"], [out]))
    elif act == "gelu":
        inits += [_init("gelu_sqrt2", np.array(np.sqrt(2.0), np.float32)),
                  _init("gelu_one", np.array(1.0, np.float32)), _init("gelu_half", np.array(0.5, np.float32))]
        nodes += [helper.make_node("Div", [x, "gelu_sqrt2"], [x + "_d"]),
                  helper.make_node("Erf", [x + "_d"], [x + "_e"]),
                  helper.make_node("Add", [x + "_e", "gelu_one"], [x + "_a"]),
                  helper.make_node("Mul", [x, x + "_a"], [x + "_m"]),
                  helper.make_node("Mul", [x + "_m", "gelu_half"], [out])]
    else:
        raise ProfilerError("bad_signature", "unknown activation %r" % act,
                            "use one of: %s" % ", ".join(ACTIVATIONS))


def _finish(x, act, nodes, inits):
    if act:
        _activation(act, x, "Y", nodes, inits)
    else:
        nodes.append(helper.make_node("Identity", [x], ["Y"]))


def _conv_out(size, k, s, p0, p1, d, ceil_mode=False):
    """Output length of a conv/pool window; a signature that leaves no output is refused, not built."""
    if s <= 0 or k <= 0 or d <= 0:
        raise ProfilerError("bad_signature", "kernel %d, stride %d, dilation %d must be positive" % (k, s, d))
    span = size + p0 + p1 - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p0:  # the last window must start inside the input or left pad
        out -= 1
    if span < 0 or out < 1:
        raise ProfilerError("bad_signature", "a %d-wide window with padding %d+%d leaves no output on a %d-wide "
                            "input" % (d * (k - 1) + 1, p0, p1, size), "check the block signature")
    return out


def build_conv(sig, c_in, c_out, rng):
    """Conv (+bias) (+residual Add) (+activation): a CNN block with BatchNorm already folded."""
    kh, kw = sig["kernel"]
    sh, sw = sig.get("stride", [1, 1])
    pads = sig.get("pads", [0, 0, 0, 0])
    dh, dw = sig.get("dilation", [1, 1])
    h, w = sig["hw"]
    groups = sig.get("groups", 1)
    if groups == "depthwise":
        if c_in != c_out:
            raise ProfilerError("bad_signature", "depthwise cell needs c_in == c_out, got %d, %d" % (c_in, c_out))
        groups = c_in
    if c_in % groups or c_out % groups:
        raise ProfilerError("bad_signature", "widths %d, %d not divisible by groups %d" % (c_in, c_out, groups))
    ho = _conv_out(h, kh, sh, pads[0], pads[2], dh)
    wo = _conv_out(w, kw, sw, pads[1], pads[3], dw)
    weight = rng.standard_normal((c_out, c_in // groups, kh, kw)).astype(np.float32) * 0.05
    inits = [_init("W", weight), _init("B", rng.standard_normal(c_out).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["conv"], kernel_shape=[kh, kw], strides=[sh, sw],
                              pads=pads, dilations=[dh, dw], group=groups)]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, c_in, h, w])]
    x = "conv"
    if sig.get("residual"):
        inputs.append(helper.make_tensor_value_info("R", TensorProto.FLOAT, [1, c_out, ho, wo]))
        nodes.append(helper.make_node("Add", ["conv", "R"], ["sum"]))
        x = "sum"
    _finish(x, sig.get("act"), nodes, inits)
    return nodes, inputs, [1, c_out, ho, wo], inits


def build_gemm(sig, c_in, c_out, rng):
    """Linear layer: Gemm for [rows, c] inputs (CNN heads), MatMul+Add for [1, rows, c] (transformers)."""
    rows = int(sig.get("rows", 1))
    weight = rng.standard_normal((c_in, c_out)).astype(np.float32) * 0.05
    inits = [_init("W", weight)]
    has_bias = sig.get("bias", True)
    if has_bias:
        inits.append(_init("B", rng.standard_normal(c_out).astype(np.float32)))
    if sig.get("rank", 2) == 2:
        inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [rows, c_in])]
        nodes = [helper.make_node("Gemm", ["X", "W", "B"] if has_bias else ["X", "W"], ["lin"])]
        shape = [rows, c_out]
    else:
        inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, rows, c_in])]
        nodes = [helper.make_node("MatMul", ["X", "W"], ["mm"])]
        if has_bias:
            nodes.append(helper.make_node("Add", ["mm", "B"], ["lin"]))
        else:
            nodes[-1].output[0] = "lin"
        shape = [1, rows, c_out]
    _finish("lin", sig.get("act"), nodes, inits)
    return nodes, inputs, shape, inits


def build_eltwise(sig, c_in, c_out, rng):
    """A width-following op outside the prunable blocks: Add/Mul of two maps, a channel Concat (of `inputs`
    maps, whose widths sum to c), or a unary activation.

    Image maps are [1, c, h, w]; token sequences (signature `tokens`) are [1, tokens, c].
    """
    if "tokens" in sig:
        shape = [1, int(sig["tokens"]), c_in]
    else:
        h, w = sig.get("hw", [1, 1])
        shape = [1, c_in, h, w]
    op = sig["op"]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, shape)]
    inits = []
    nodes = []
    if op == "Concat":  # the output width split as evenly as it goes over the inputs, concatenated on channels
        n = max(1, min(int(sig.get("inputs", 2)), c_in))
        sizes = [c_in // n + (1 if i < c_in % n else 0) for i in range(n)]
        inputs = [helper.make_tensor_value_info("X%d" % i if i else "X", TensorProto.FLOAT,
                                                [1, size] + shape[2:]) for i, size in enumerate(sizes)]
        nodes.append(helper.make_node("Concat", [vi.name for vi in inputs], ["Y"], axis=1))
    elif op in ("Add", "Mul"):
        other = ([1, c_in, 1, 1] if len(shape) == 4 else [1, 1, c_in]) if sig.get("broadcast") else shape
        inputs.append(helper.make_tensor_value_info("X2", TensorProto.FLOAT, other))
        nodes.append(helper.make_node(op, ["X", "X2"], ["Y"]))
    else:
        _activation(op, "X", "Y", nodes, inits)
    return nodes, inputs, shape, inits


def build_pool(sig, c_in, c_out, rng):
    """MaxPool / AveragePool / GlobalAveragePool over a [1, c, h, w] map."""
    h, w = sig["hw"]
    op = sig["op"]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, c_in, h, w])]
    if op == "GlobalAveragePool":
        return [helper.make_node(op, ["X"], ["Y"])], inputs, [1, c_in, 1, 1], []
    kh, kw = sig["kernel"]
    sh, sw = sig.get("stride", [kh, kw])
    pads = sig.get("pads", [0, 0, 0, 0])
    attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=pads, ceil_mode=int(sig.get("ceil_mode", 0)))
    if op == "AveragePool":
        attrs["count_include_pad"] = int(sig.get("count_include_pad", 0))
    node = helper.make_node(op, ["X"], ["Y"], **attrs)
    ceil = bool(sig.get("ceil_mode", 0))
    return [node], inputs, [1, c_in, _conv_out(h, kh, sh, pads[0], pads[2], 1, ceil),
                            _conv_out(w, kw, sw, pads[1], pads[3], 1, ceil)], []


def _linear(x, name, c_in, c_out, rng, nodes, inits, bias=False):
    inits.append(_init(name + "_W", (rng.standard_normal((c_in, c_out)) * 0.05).astype(np.float32)))
    nodes.append(helper.make_node("MatMul", [x, name + "_W"], [name]))
    if bias:
        inits.append(_init(name + "_B", rng.standard_normal(c_out).astype(np.float32)))
        nodes.append(helper.make_node("Add", [name, name + "_B"], [name + "_b"]))
        return name + "_b"
    return name


def _const(name, value, inits, dtype=np.int64):
    inits.append(_init(name, np.array(value, dtype=dtype)))
    return name


def _rope(x, cos, sin, half, nodes, inits, tag):
    """x * cos + rotate_half(x) * sin, as the Hugging Face exporters write it."""
    a = _const("rope_zero_" + tag, [0], inits)
    h = _const("rope_half_" + tag, [half], inits)
    e = _const("rope_end_" + tag, [2 * half], inits)
    ax = _const("rope_axis_" + tag, [3], inits)
    nodes += [helper.make_node("Slice", [x, a, h, ax], [x + "_x1"]),
              helper.make_node("Slice", [x, h, e, ax], [x + "_x2"]),
              helper.make_node("Neg", [x + "_x2"], [x + "_nx2"]),
              helper.make_node("Concat", [x + "_nx2", x + "_x1"], [x + "_rot"], axis=-1),
              helper.make_node("Mul", [x, cos], [x + "_c"]),
              helper.make_node("Mul", [x + "_rot", sin], [x + "_s"]),
              helper.make_node("Add", [x + "_c", x + "_s"], [x + "_r"])]
    return x + "_r"


def build_attention(sig, c_in, c_out, rng):
    """Self-attention with `c_out` query heads over `c_in` hidden: q/k/v/o projections, RoPE, GQA, causal softmax.

    `tokens` new tokens attend to `past` cached ones (past > 0 is one decode step with a KV cache: the cache
    enters as inputs and is concatenated, as in the exported decoder).
    """
    heads = int(c_out)
    hd = int(sig["head_dim"])
    groups = int(sig.get("kv_groups", 1))
    if heads % groups:
        raise ProfilerError("bad_signature", "%d heads are not a multiple of %d query heads per kv head"
                            % (heads, groups))
    kv = heads // groups
    s = int(sig["tokens"])
    past = int(sig.get("past", 0))
    bias = bool(sig.get("bias", False))
    total = s + past
    nodes, inits = [], []
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, s, c_in])]
    q = _linear("X", "q", c_in, heads * hd, rng, nodes, inits, bias)
    k = _linear("X", "k", c_in, kv * hd, rng, nodes, inits, bias)
    v = _linear("X", "v", c_in, kv * hd, rng, nodes, inits, bias)

    def heads_first(t, n, name):
        shape = _const(name + "_shape", [1, s, n, hd], inits)
        nodes.append(helper.make_node("Reshape", [t, shape], [name + "_r"]))
        nodes.append(helper.make_node("Transpose", [name + "_r"], [name + "_t"], perm=[0, 2, 1, 3]))
        return name + "_t"

    q, k, v = heads_first(q, heads, "qh"), heads_first(k, kv, "kh"), heads_first(v, kv, "vh")
    if sig.get("rope", True):
        angles = rng.standard_normal((1, 1, s, hd)).astype(np.float32)
        inits += [_init("cos", np.cos(angles)), _init("sin", np.sin(angles))]
        q = _rope(q, "cos", "sin", hd // 2, nodes, inits, "q")
        k = _rope(k, "cos", "sin", hd // 2, nodes, inits, "k")
    if past:
        inputs += [helper.make_tensor_value_info("past_k", TensorProto.FLOAT, [1, kv, past, hd]),
                   helper.make_tensor_value_info("past_v", TensorProto.FLOAT, [1, kv, past, hd])]
        nodes += [helper.make_node("Concat", ["past_k", k], ["k_all"], axis=2),
                  helper.make_node("Concat", ["past_v", v], ["v_all"], axis=2)]
        k, v = "k_all", "v_all"
    if groups > 1:
        rep = _const("rep_shape", [1, kv, groups, total, hd], inits)
        flat = _const("rep_flat", [1, heads, total, hd], inits)
        axes = _const("rep_axes", [2], inits)
        for name in (k, v):
            nodes += [helper.make_node("Unsqueeze", [name, axes], [name + "_u"]),
                      helper.make_node("Expand", [name + "_u", rep], [name + "_e"]),
                      helper.make_node("Reshape", [name + "_e", flat], [name + "_g"])]
        k, v = k + "_g", v + "_g"
    nodes.append(helper.make_node("Transpose", [k], ["kT"], perm=[0, 1, 3, 2]))
    nodes.append(helper.make_node("MatMul", [q, "kT"], ["scores"]))
    inits.append(_init("scale", np.array(1.0 / np.sqrt(hd), np.float32)))
    nodes.append(helper.make_node("Mul", ["scores", "scale"], ["scaled"]))
    mask = np.triu(np.full((s, total), -np.inf, np.float32), k=past + 1).reshape(1, 1, s, total)
    inits.append(_init("mask", mask))
    nodes += [helper.make_node("Add", ["scaled", "mask"], ["masked"]),
              helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
              helper.make_node("MatMul", ["probs", v], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3])]
    merged = _const("merge_shape", [1, s, heads * hd], inits)
    nodes.append(helper.make_node("Reshape", ["ctx_t", merged], ["ctx_m"]))
    out = _linear("ctx_m", "o", heads * hd, c_in, rng, nodes, inits, bias)
    nodes.append(helper.make_node("Identity", [out], ["Y"]))
    return nodes, inputs, [1, s, c_in], inits


def build_mlp(sig, c_in, c_out, rng):
    """Transformer MLP of width `c_out` over `c_in` hidden: SwiGLU (gate, up, down) or GELU (fc, proj)."""
    s = int(sig["tokens"])
    bias = bool(sig.get("bias", False))
    nodes, inits = [], []
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, s, c_in])]
    if sig.get("act", "swiglu") == "swiglu":
        gate = _linear("X", "gate", c_in, c_out, rng, nodes, inits, bias)
        up = _linear("X", "up", c_in, c_out, rng, nodes, inits, bias)
        _activation("silu", gate, "gate_act", nodes, inits)
        nodes.append(helper.make_node("Mul", ["gate_act", up], ["hidden"]))
    else:
        fc = _linear("X", "fc", c_in, c_out, rng, nodes, inits, bias)
        _activation(sig.get("act", "gelu"), fc, "hidden", nodes, inits)
    out = _linear("hidden", "down", c_out, c_in, rng, nodes, inits, bias)
    nodes.append(helper.make_node("Identity", [out], ["Y"]))
    return nodes, inputs, [1, s, c_in], inits


def build_norm(sig, c_in, c_out, rng):
    """RMSNorm or LayerNorm over the last axis of [1, tokens, c], decomposed as the exporter writes it."""
    s = int(sig["tokens"])
    nodes, inits = [], []
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, s, c_in])]
    inits += [_init("gamma", np.ones(c_in, np.float32)), _init("eps", np.array(1e-6, np.float32)),
              _init("two", np.array(2.0, np.float32))]
    x = "X"
    if sig.get("type") == "layer_fused":  # opset-17 LayerNormalization, as the exporter writes nn.LayerNorm
        inits.append(_init("beta", np.zeros(c_in, np.float32)))
        nodes.append(helper.make_node("LayerNormalization", ["X", "gamma", "beta"], ["Y"], axis=-1, epsilon=1e-5))
        return nodes, inputs, [1, s, c_in], inits
    if sig.get("type", "rms") == "layer":
        nodes += [helper.make_node("ReduceMean", ["X"], ["mean"], axes=[-1], keepdims=1),
                  helper.make_node("Sub", ["X", "mean"], ["xc"])]
        x = "xc"
    nodes += [helper.make_node("Pow", [x, "two"], ["sq"]),
              helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1], keepdims=1),
              helper.make_node("Add", ["var", "eps"], ["var_eps"]),
              helper.make_node("Sqrt", ["var_eps"], ["std"]),
              helper.make_node("Div", [x, "std"], ["normed"]),
              helper.make_node("Mul", ["normed", "gamma"], ["Y"])]
    return nodes, inputs, [1, s, c_in], inits


BUILDERS = {
    "attention": build_attention,
    "mlp": build_mlp,
    "norm": build_norm,
    "conv": build_conv,
    "gemm": build_gemm,
    "eltwise": build_eltwise,
    "pool": build_pool,
}


def weight_elems(signature, c_in, c_out):
    """Parameters a block holds at these widths: what a whole model reads from memory for it on every run.

    Conv and linear weights with their biases, attention and MLP projections, norm scales. Pools and
    element-wise ops hold none. Helper constants of a cell (RoPE tables, the causal mask, shapes) are not
    parameters of the model's block, so they are not counted.
    """
    kind = signature.get("kind")
    c_in, c_out = int(c_in), int(c_out)
    if kind == "conv":
        kh, kw = signature["kernel"]
        groups = c_in if signature.get("groups", 1) == "depthwise" else int(signature.get("groups", 1))
        return c_out * (c_in // groups) * kh * kw + c_out
    if kind == "gemm":
        return c_in * c_out + (c_out if signature.get("bias", True) else 0)
    if kind == "attention":
        hd = int(signature["head_dim"])
        kv = c_out // int(signature.get("kv_groups", 1))
        bias = (c_out + 2 * kv) * hd + c_in if signature.get("bias", False) else 0
        return 2 * c_in * c_out * hd + 2 * c_in * kv * hd + bias
    if kind == "mlp":
        n = 3 if signature.get("act", "swiglu") == "swiglu" else 2
        bias = (n - 1) * c_out + c_in if signature.get("bias", False) else 0
        return n * c_in * c_out + bias
    if kind == "norm":
        return 2 * c_in if signature.get("type") == "layer_fused" else c_in
    return 0


def build_cell(signature, c_in, c_out, seed=0):
    """The micro-ONNX ModelProto for one cell."""
    kind = signature.get("kind")
    if kind not in BUILDERS:
        raise ProfilerError("bad_signature", "cannot synthesise block kind %r" % kind,
                            "kinds this profiler builds: %s" % ", ".join(sorted(BUILDERS)))
    rng = np.random.default_rng(seed)
    nodes, inputs, out_shape, inits = BUILDERS[kind](signature, int(c_in), int(c_out), rng)
    graph = helper.make_graph(nodes, "cell_" + kind, inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgeprune.profilers")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def null_model(shape=(1, 1)):
    """The smallest model the runtime will run: timing it gives the per-run call overhead."""
    graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "null",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model
