"""Micro-ONNX synthesis: every builder makes a valid model that runs and computes what its signature says."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from profilers import synth
from profilers.errors import ProfilerError

# -- helpers ----------------------------------------------------------------------------------------------


def session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )


def feeds_for(sess, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {i.name: (rng.standard_normal(i.shape) * scale).astype(np.float32) for i in sess.get_inputs()}


def run(model, feeds=None, seed=0, scale=1.0):
    sess = session(model)
    feeds = feeds if feeds is not None else feeds_for(sess, seed, scale)
    (out,) = sess.run(["Y"], feeds)
    return out, feeds


def initializers(model):
    return {i.name: numpy_helper.to_array(i).copy() for i in model.graph.initializer}


TORCH_ACTS = {
    None: lambda t: t,
    "relu": F.relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "gelu": F.gelu,  # exact erf form, as the exporter writes it
    "tanh": torch.tanh,
}


def test_torch_reference_covers_every_activation():
    assert set(synth.ACTIVATIONS) == set(TORCH_ACTS) - {None}


def torch_conv(model, feeds, sig):
    w = initializers(model)
    groups = sig.get("groups", 1)
    x = torch.from_numpy(feeds["X"])
    if groups == "depthwise":
        groups = x.shape[1]
    pads = sig.get("pads", [0, 0, 0, 0])
    assert pads[0] == pads[2] and pads[1] == pads[3], "test reference needs symmetric pads"
    y = F.conv2d(
        x,
        torch.from_numpy(w["W"]),
        torch.from_numpy(w["B"]),
        stride=tuple(sig.get("stride", [1, 1])),
        padding=(pads[0], pads[1]),
        dilation=tuple(sig.get("dilation", [1, 1])),
        groups=groups,
    )
    if sig.get("residual"):
        y = y + torch.from_numpy(feeds["R"])
    return TORCH_ACTS[sig.get("act")](y).numpy()


# -- conv -------------------------------------------------------------------------------------------------

CONV_SIGS = [
    # (signature, c_in, c_out)
    (
        {"kind": "conv", "kernel": [3, 3], "stride": [1, 1], "pads": [1, 1, 1, 1], "hw": [9, 9], "groups": 1},
        6,
        10,
    ),
    (
        {"kind": "conv", "kernel": [3, 3], "stride": [2, 2], "pads": [1, 1, 1, 1], "hw": [9, 9], "groups": 1},
        5,
        7,
    ),
    (
        {"kind": "conv", "kernel": [1, 1], "hw": [5, 7]},
        8,
        3,
    ),  # defaults for stride / pads / dilation / groups
    (
        {
            "kind": "conv",
            "kernel": [3, 3],
            "stride": [1, 1],
            "pads": [2, 2, 2, 2],
            "dilation": [2, 2],
            "hw": [8, 8],
            "groups": 1,
        },
        4,
        4,
    ),
    (
        {
            "kind": "conv",
            "kernel": [3, 3],
            "stride": [1, 1],
            "pads": [1, 1, 1, 1],
            "hw": [8, 8],
            "groups": "depthwise",
        },
        12,
        12,
    ),
    (
        {
            "kind": "conv",
            "kernel": [3, 3],
            "stride": [2, 2],
            "pads": [1, 1, 1, 1],
            "hw": [8, 8],
            "groups": "depthwise",
        },
        5,
        5,
    ),
    (
        {"kind": "conv", "kernel": [3, 3], "stride": [1, 1], "pads": [1, 1, 1, 1], "hw": [6, 6], "groups": 4},
        8,
        12,
    ),
    (
        {"kind": "conv", "kernel": [5, 3], "stride": [1, 2], "pads": [2, 1, 2, 1], "hw": [7, 9], "groups": 2},
        6,
        4,
    ),
]


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("sig,c_in,c_out", CONV_SIGS)
def test_conv_cell_is_valid_runs_and_matches_torch(sig, c_in, c_out, residual):
    sig = dict(sig, residual=residual, act="relu")
    model = synth.build_cell(sig, c_in, c_out, seed=3)
    onnx.checker.check_model(model, full_check=True)
    out, feeds = run(model)
    ref = torch_conv(model, feeds, sig)
    assert out.shape == ref.shape
    assert out.shape[:2] == (1, c_out)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert ("R" in feeds) == residual
    assert [n.op_type for n in model.graph.node].count("Add") == (1 if residual else 0)


@pytest.mark.parametrize(
    "act,groups,c_in,c_out",
    [(act, 1, 4, 6) for act in (None, *synth.ACTIVATIONS)]
    + [(act, "depthwise", 6, 6) for act in ("relu6", "hardswish", "silu")]
    + [(act, 2, 4, 6) for act in ("relu", "gelu")],
)
def test_conv_cell_every_activation_matches_torch(act, groups, c_in, c_out):
    sig = {
        "kind": "conv",
        "kernel": [3, 3],
        "stride": [1, 1],
        "pads": [1, 1, 1, 1],
        "hw": [5, 5],
        "groups": groups,
        "act": act,
        "residual": True,
    }
    model = synth.build_cell(sig, c_in, c_out)
    onnx.checker.check_model(model, full_check=True)
    out, feeds = run(model, scale=4.0)  # wide inputs so relu6 / hardswish / hardsigmoid clip on both sides
    np.testing.assert_allclose(out, torch_conv(model, feeds, sig), rtol=1e-4, atol=1e-5)


def test_conv_weights_are_seeded_and_shaped_per_group():
    sig = {"kind": "conv", "kernel": [3, 1], "hw": [4, 4], "groups": 2}
    a = initializers(synth.build_cell(sig, 4, 6, seed=1))
    b = initializers(synth.build_cell(sig, 4, 6, seed=1))
    c = initializers(synth.build_cell(sig, 4, 6, seed=2))
    assert a["W"].shape == (6, 2, 3, 1) and a["B"].shape == (6,)
    np.testing.assert_array_equal(a["W"], b["W"])
    assert not np.array_equal(a["W"], c["W"])
    dw = initializers(synth.build_cell(dict(sig, groups="depthwise"), 5, 5))
    assert dw["W"].shape == (5, 1, 3, 1)


def test_conv_declared_output_matches_runtime_shape():
    sig = {"kind": "conv", "kernel": [3, 3], "stride": [2, 2], "pads": [0, 0, 0, 0], "hw": [10, 11]}
    model = synth.build_cell(sig, 3, 5)
    declared = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert declared == [1, 5, 4, 5]
    out, _ = run(model)
    assert list(out.shape) == declared


# -- gemm -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rank,rows", [(2, 1), (2, 4), (3, 1), (3, 7)])
def test_gemm_cell_matches_numpy(rank, rows, bias):
    sig = {"kind": "gemm", "rank": rank, "rows": rows, "bias": bias, "act": None}
    model = synth.build_cell(sig, 12, 5, seed=4)
    onnx.checker.check_model(model, full_check=True)
    out, feeds = run(model)
    w = initializers(model)
    assert ("B" in w) == bias
    ref = feeds["X"] @ w["W"] + (w["B"] if bias else 0.0)
    expected_shape = (rows, 5) if rank == 2 else (1, rows, 5)
    assert feeds["X"].shape == ((rows, 12) if rank == 2 else (1, rows, 12))
    assert out.shape == expected_shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    ops = [n.op_type for n in model.graph.node]
    if rank == 2:
        assert ops[0] == "Gemm" and len(model.graph.node[0].input) == (3 if bias else 2)
    else:
        assert ops[0] == "MatMul" and ("Add" in ops) == bias


@pytest.mark.parametrize("rank", [2, 3])
def test_gemm_cell_with_activation(rank):
    sig = {"kind": "gemm", "rank": rank, "rows": 3, "act": "gelu"}  # bias defaults to True
    model = synth.build_cell(sig, 8, 6)
    out, feeds = run(model, scale=3.0)
    w = initializers(model)
    ref = F.gelu(torch.from_numpy(feeds["X"] @ w["W"] + w["B"])).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_gemm_defaults_are_rank_2_one_row():
    model = synth.build_cell({"kind": "gemm"}, 4, 3)
    out, _ = run(model)
    assert out.shape == (1, 3)


# -- eltwise ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["Add", "Mul"])
@pytest.mark.parametrize("broadcast", [False, True])
def test_eltwise_binary(op, broadcast):
    sig = {"kind": "eltwise", "op": op, "hw": [3, 5], "broadcast": broadcast}
    model = synth.build_cell(sig, 6, 6)
    onnx.checker.check_model(model, full_check=True)
    out, feeds = run(model)
    assert feeds["X2"].shape == ((1, 6, 1, 1) if broadcast else (1, 6, 3, 5))
    ref = feeds["X"] + feeds["X2"] if op == "Add" else feeds["X"] * feeds["X2"]
    assert out.shape == (1, 6, 3, 5)
    np.testing.assert_allclose(out, ref, rtol=1e-6)


@pytest.mark.parametrize("inputs,sizes", [(2, (4, 3)), (3, (3, 2, 2)), (4, (2, 2, 2, 1))])
def test_concat_cell_splits_its_width_over_its_inputs(inputs, sizes):
    model = synth.build_cell({"kind": "eltwise", "op": "Concat", "hw": [3, 5], "inputs": inputs}, 7, 7)
    onnx.checker.check_model(model, full_check=True)
    out, feeds = run(model)
    assert tuple(feeds[name].shape[1] for name in ["X"] + [f"X{i}" for i in range(1, inputs)]) == sizes
    np.testing.assert_array_equal(out, np.concatenate([feeds["X"]] + [feeds[f"X{i}"] for i in range(1, inputs)],
                                                      axis=1))


@pytest.mark.parametrize("act", synth.ACTIVATIONS)
def test_eltwise_unary_every_activation(act):
    model = synth.build_cell({"kind": "eltwise", "op": act, "hw": [2, 3]}, 4, 4)
    onnx.checker.check_model(model, full_check=True)
    out, feeds = run(model, scale=5.0)
    assert out.shape == (1, 4, 2, 3)
    ref = TORCH_ACTS[act](torch.from_numpy(feeds["X"])).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def _unary(act, x):
    model = synth.build_cell({"kind": "eltwise", "op": act, "hw": [1, x.size]}, 1, 1)
    out, _ = run(model, feeds={"X": x.reshape(1, 1, 1, -1)})
    return out.ravel()


X_LINE = np.linspace(-10, 10, 201).astype(np.float32)


def test_relu_range():
    y = _unary("relu", X_LINE)
    assert y.min() == 0.0
    np.testing.assert_array_equal(y, np.maximum(X_LINE, 0))


def test_relu6_range():
    y = _unary("relu6", X_LINE)
    assert y.min() == 0.0 and y.max() == 6.0
    np.testing.assert_array_equal(y, np.clip(X_LINE, 0, 6))


def test_hardswish_range():
    y = _unary("hardswish", X_LINE)
    np.testing.assert_allclose(y, X_LINE * np.clip(X_LINE + 3, 0, 6) / 6, atol=1e-6)
    assert np.all(y[X_LINE <= -3] == 0)
    np.testing.assert_array_equal(y[X_LINE >= 3], X_LINE[X_LINE >= 3])
    assert y.min() >= -0.375 - 1e-6  # global minimum of x * relu6(x + 3) / 6, at x = -1.5
    assert y.min() == pytest.approx(-0.375, abs=1e-6)


def test_hardsigmoid_range():
    y = _unary("hardsigmoid", X_LINE)
    assert y.min() == 0.0 and y.max() == 1.0
    np.testing.assert_allclose(y, np.clip(X_LINE / 6 + 0.5, 0, 1), atol=1e-6)


# -- pool -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sig,c",
    [
        (
            {
                "kind": "pool",
                "op": "MaxPool",
                "hw": [9, 9],
                "kernel": [3, 3],
                "stride": [2, 2],
                "pads": [1, 1, 1, 1],
            },
            5,
        ),
        (
            {"kind": "pool", "op": "MaxPool", "hw": [8, 8], "kernel": [2, 2]},
            3,
        ),  # stride defaults to the kernel
        (
            {
                "kind": "pool",
                "op": "MaxPool",
                "hw": [9, 9],
                "kernel": [3, 3],
                "stride": [2, 2],
                "ceil_mode": 1,
            },
            2,
        ),
        (
            {
                "kind": "pool",
                "op": "AveragePool",
                "hw": [7, 7],
                "kernel": [3, 3],
                "stride": [2, 2],
                "pads": [1, 1, 1, 1],
                "count_include_pad": 0,
            },
            4,
        ),
        (
            {
                "kind": "pool",
                "op": "AveragePool",
                "hw": [7, 7],
                "kernel": [3, 3],
                "stride": [1, 1],
                "pads": [1, 1, 1, 1],
                "count_include_pad": 1,
            },
            4,
        ),
        ({"kind": "pool", "op": "GlobalAveragePool", "hw": [5, 6]}, 7),
    ],
)
def test_pool_matches_torch(sig, c):
    model = synth.build_cell(sig, c, c)
    onnx.checker.check_model(model, full_check=True)
    out, feeds = run(model)
    x = torch.from_numpy(feeds["X"])
    assert x.shape == (1, c, *sig["hw"])
    if sig["op"] == "GlobalAveragePool":
        ref = x.mean(dim=(2, 3), keepdim=True)
    else:
        kernel = tuple(sig["kernel"])
        stride = tuple(sig.get("stride", sig["kernel"]))
        pad = tuple(sig.get("pads", [0, 0, 0, 0])[:2])
        ceil = bool(sig.get("ceil_mode", 0))
        if sig["op"] == "MaxPool":
            ref = F.max_pool2d(x, kernel, stride, pad, ceil_mode=ceil)
        else:
            ref = F.avg_pool2d(
                x,
                kernel,
                stride,
                pad,
                ceil_mode=ceil,
                count_include_pad=bool(sig.get("count_include_pad", 0)),
            )
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-5, atol=1e-6)


def test_pool_ceil_mode_declares_the_shape_the_runtime_computes():
    # 8x8, kernel 3, stride 2: floor gives 3, ceil gives 4 (torch: MaxPool2d(3, 2, ceil_mode=True) -> 4x4,
    # as in googlenet / squeezenet, whose pools blocks.py records with ceil_mode=1).
    sig = {"kind": "pool", "op": "MaxPool", "hw": [8, 8], "kernel": [3, 3], "stride": [2, 2], "ceil_mode": 1}
    model = synth.build_cell(sig, 2, 2)
    declared = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert declared == [1, 2, 4, 4]
    onnx.checker.check_model(model, full_check=True)


# -- every builder, and bad signatures ---------------------------------------------------------------------

ONE_PER_KIND = {
    "conv": ({"kind": "conv", "kernel": [3, 3], "hw": [4, 4]}, 2, 3),
    "gemm": ({"kind": "gemm", "rows": 2}, 4, 3),
    "eltwise": ({"kind": "eltwise", "op": "Add", "hw": [2, 2]}, 3, 3),
    "pool": ({"kind": "pool", "op": "GlobalAveragePool", "hw": [3, 3]}, 3, 3),
    "attention": ({"kind": "attention", "head_dim": 4, "tokens": 3}, 8, 2),
    "mlp": ({"kind": "mlp", "tokens": 3}, 8, 12),
    "norm": ({"kind": "norm", "tokens": 3}, 8, 8),
}


def test_every_builder_is_covered():
    assert set(ONE_PER_KIND) == set(synth.BUILDERS)


@pytest.mark.parametrize("kind", sorted(synth.BUILDERS))
def test_every_builder_builds_a_checked_model(kind):
    sig, c_in, c_out = ONE_PER_KIND[kind]
    model = synth.build_cell(sig, c_in, c_out)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == synth.OPSET
    assert model.graph.name == "cell_" + kind
    assert [o.name for o in model.graph.output] == ["Y"]
    out, _ = run(model)
    declared = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert list(out.shape) == declared


def test_null_model_is_identity():
    model = synth.null_model((2, 3))
    onnx.checker.check_model(model)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out, _ = run(model, feeds={"X": x})
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize(
    "sig,c_in,c_out,words",
    [
        ({"kind": "lstm"}, 4, 4, "lstm"),
        ({"op": "Add"}, 4, 4, "None"),
        ({"kind": "conv", "kernel": [3, 3], "hw": [4, 4], "groups": "depthwise"}, 4, 8, "depthwise"),
        ({"kind": "conv", "kernel": [3, 3], "hw": [4, 4], "groups": 4}, 6, 8, "divisible"),
        ({"kind": "conv", "kernel": [3, 3], "hw": [4, 4], "groups": 4}, 8, 6, "divisible"),
        ({"kind": "conv", "kernel": [3, 3], "hw": [4, 4], "act": "swish"}, 4, 4, "swish"),
        ({"kind": "gemm", "act": "leaky_relu"}, 4, 4, "leaky_relu"),
        ({"kind": "eltwise", "op": "Sub", "hw": [2, 2]}, 4, 4, "Sub"),
    ],
)
def test_bad_signatures_raise_profiler_error(sig, c_in, c_out, words):
    with pytest.raises(ProfilerError) as info:
        synth.build_cell(sig, c_in, c_out)
    assert info.value.kind == "bad_signature"
    assert words in info.value.message
    record = info.value.record()["error"]
    assert record["kind"] == "bad_signature" and record["message"] == info.value.message


def test_unknown_kind_hint_lists_the_kinds():
    with pytest.raises(ProfilerError) as info:
        synth.build_cell({"kind": "lstm"}, 4, 4)
    for kind in synth.BUILDERS:
        assert kind in info.value.hint


def test_unknown_activation_hint_lists_the_activations():
    with pytest.raises(ProfilerError) as info:
        synth.build_cell({"kind": "conv", "kernel": [1, 1], "hw": [2, 2], "act": "mish"}, 2, 2)
    for act in synth.ACTIVATIONS:
        assert act in info.value.hint
