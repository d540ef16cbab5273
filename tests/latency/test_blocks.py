"""Block extraction from exported ONNX graphs: fused blocks, names, fixed widths, MACs, signatures."""

from collections import Counter

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from edgeprune.exporters.onnx import export_onnx
from onnx import TensorProto, helper

from edgeprune.latency.blocks import Block, cell_key, extract_blocks, layer_name, signature_key

SHAPE = (1, 3, 64, 64)


def exported(module, shape=SHAPE):
    torch.manual_seed(0)
    proto, _ = export_onnx(module.eval(), (torch.randn(*shape),))
    return proto


def analytic_macs(module, shape):
    """Σ over Conv2d (out elements × in/groups × kh × kw) and Linear (rows × in × out), counted in torch."""
    total = 0

    def conv_hook(m, inp, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m, inp, out):
        nonlocal total
        total += out.numel() // m.out_features * m.in_features * m.out_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    with torch.no_grad():
        module(torch.randn(*shape))
    for h in handles:
        h.remove()
    return total


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    module = torchvision.models.resnet18().eval()
    proto = exported(module)
    return module, proto, extract_blocks(proto)


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    module = torchvision.models.mobilenet_v2().eval()
    proto = exported(module)
    return module, proto, extract_blocks(proto)


# -- resnet18 -----------------------------------------------------------------------------------------------


def test_resnet18_block_counts(resnet):
    _, _, graph = resnet
    kinds = Counter(b.kind for b in graph.blocks)
    assert kinds == {"conv": 20, "pool": 2, "gemm": 1}
    assert not graph.uncovered


def test_resnet18_every_residual_add_fused_into_exactly_one_conv(resnet):
    _, proto, graph = resnet
    adds = [n.name for n in proto.graph.node if n.op_type == "Add"]
    assert len(adds) == 8
    residual = [b for b in graph.blocks if b.signature.get("residual")]
    assert len(residual) == 8
    owners = Counter(name for b in graph.blocks for name in b.nodes if name in adds)
    assert owners == Counter({name: 1 for name in adds})
    assert all(b.name.endswith(".conv2") for b in residual)
    assert not [b for b in graph.blocks if b.kind == "eltwise"]


def test_resnet18_every_graph_node_is_in_one_block_or_free(resnet):
    _, proto, graph = resnet
    in_blocks = Counter(name for b in graph.blocks for name in b.nodes)
    assert max(in_blocks.values()) == 1
    free = [n for n in proto.graph.node if n.name not in in_blocks]
    assert Counter(n.op_type for n in free) == graph.layout_ops
    assert graph.layout_ops["Flatten"] == 1


def test_resnet18_names(resnet):
    _, _, graph = resnet
    names = [b.name for b in graph.blocks]
    assert len(set(names)) == len(names)
    assert names[:3] == ["conv1", "maxpool", "layer1.0.conv1"]
    assert names[-2:] == ["avgpool", "fc"]
    for name in ("layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0", "layer4.1.conv2"):
        assert name in names
    module_names = {n for n, _ in resnet[0].named_modules()}
    assert set(names) <= module_names


def test_resnet18_fused_activation_and_fixed_widths(resnet):
    _, _, graph = resnet
    by_name = {b.name: b for b in graph.blocks}
    conv1, fc = by_name["conv1"], by_name["fc"]
    assert conv1.in_fixed and not conv1.out_fixed
    assert (conv1.c_in, conv1.c_out) == (3, 64)
    assert conv1.signature == {
        "kind": "conv",
        "kernel": [7, 7],
        "stride": [2, 2],
        "pads": [3, 3, 3, 3],
        "dilation": [1, 1],
        "groups": 1,
        "hw": [64, 64],
        "act": "relu",
        "residual": False,
    }
    assert fc.kind == "gemm" and fc.out_fixed and not fc.in_fixed
    assert (fc.c_in, fc.c_out) == (512, 1000)
    assert fc.signature == {"kind": "gemm", "rank": 2, "rows": 1, "bias": True, "act": None}
    assert [b.name for b in graph.blocks if b.in_fixed] == ["conv1"]
    assert [b.name for b in graph.blocks if b.out_fixed] == ["fc"]
    down = by_name["layer2.0.downsample.0"]
    assert down.signature["act"] is None and down.signature["kernel"] == [1, 1]
    assert (down.c_in, down.c_out) == (64, 128)
    assert by_name["layer3.0.conv1"].signature["stride"] == [2, 2]
    assert by_name["layer3.0.conv1"].signature["hw"] == [8, 8]
    assert by_name["maxpool"].signature["op"] == "MaxPool"
    assert by_name["avgpool"].signature == {"kind": "pool", "op": "GlobalAveragePool", "hw": [2, 2]}


def test_resnet18_total_macs_is_exact(resnet):
    module, _, graph = resnet
    expected = analytic_macs(module, SHAPE)
    # conv1 alone: 64 x 32 x 32 outputs x 3 x 7 x 7
    assert {b.name: b.macs for b in graph.blocks}["conv1"] == 64 * 32 * 32 * 3 * 49
    assert {b.name: b.macs for b in graph.blocks}["fc"] == 512 * 1000
    assert graph.macs == expected


def test_two_exports_give_the_same_keys():
    module = TwoBranch()
    first, second = (
        extract_blocks(exported(module, (1, 4, 5, 5))),
        extract_blocks(exported(module, (1, 4, 5, 5))),
    )
    assert [(b.name, b.sig_key, b.c_in, b.c_out) for b in first.blocks] == [
        (b.name, b.sig_key, b.c_in, b.c_out) for b in second.blocks
    ]
    assert len(first.blocks) >= 4


# -- mobilenet_v2 -------------------------------------------------------------------------------------------


def test_mobilenet_v2_depthwise(mobilenet):
    module, _, graph = mobilenet
    dw = [b for b in graph.blocks if b.kind == "conv" and b.signature["groups"] == "depthwise"]
    torch_dw = [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(dw) == len(torch_dw) == 17
    for block in dw:
        assert block.signature["act"] == "relu6"
        assert block.c_in == block.c_out
        assert block.tied
        assert block.signature["kernel"] == [3, 3]
    assert not any(b.tied for b in graph.blocks if b.kind == "conv" and b.signature["groups"] == 1)
    assert {b.signature["groups"] for b in graph.blocks if b.kind == "conv"} == {1, "depthwise"}


def test_mobilenet_v2_residuals_and_macs(mobilenet):
    module, proto, graph = mobilenet
    adds = sum(n.op_type == "Add" for n in proto.graph.node)
    residual = [b for b in graph.blocks if b.signature.get("residual")]
    assert len(residual) == adds == 10
    assert all(b.signature["act"] is None for b in residual)  # project convs are linear
    assert graph.macs == analytic_macs(module, SHAPE)
    names = [b.name for b in graph.blocks]
    assert "features.1.conv.0.0" in names and "features.2.conv.1.0" in names and "classifier.1" in names
    classifier = graph.blocks[-1]
    assert (
        classifier.kind == "gemm"
        and classifier.out_fixed
        and (classifier.c_in, classifier.c_out) == (1280, 1000)
    )


# -- small graphs --------------------------------------------------------------------------------------------


class GridSampler(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
        grid = F.affine_grid(theta, [1, 8, 8, 8], align_corners=False)
        return F.grid_sample(y, grid, align_corners=False).reshape(1, -1)


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.head(y)


def test_unknown_op_is_uncovered_layout_ops_are_free():
    graph = extract_blocks(exported(GridSampler(), (1, 3, 8, 8)))
    assert graph.uncovered["GridSample"] == 1
    assert graph.layout_ops["Reshape"] == 1
    assert "Reshape" not in graph.uncovered
    assert [b.name for b in graph.blocks] == ["conv"]
    assert graph.blocks[0].in_fixed and not graph.blocks[0].out_fixed  # its output feeds GridSample


def test_lstm_is_uncovered_its_head_is_a_rank3_gemm():
    graph = extract_blocks(exported(Recurrent(), (1, 5, 8)))
    assert graph.uncovered["LSTM"] == 1
    (head,) = graph.blocks
    assert head.name == "head"
    assert head.signature == {"kind": "gemm", "rank": 3, "rows": 5, "bias": True, "act": None}
    assert (head.c_in, head.c_out, head.out_fixed) == (16, 4, True)
    assert head.macs == 5 * 16 * 4


class TwoBranch(nn.Module):
    """A residual-free Add of two conv outputs, a broadcast Mul and an unfused sigmoid."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 6, 1)
        self.b = nn.Conv2d(4, 6, 1)
        self.gate = nn.Conv2d(4, 6, 1)

    def forward(self, x):
        y = self.a(x) + self.b(x)  # one Add, two candidate producers: fused into the first conv only
        g = torch.sigmoid(self.gate(x).mean(dim=(2, 3), keepdim=True))
        return y * g


def test_add_is_fused_once_and_broadcast_mul_is_an_eltwise_block():
    graph = extract_blocks(exported(TwoBranch(), (1, 4, 5, 5)))
    residual = [b for b in graph.blocks if b.kind == "conv" and b.signature["residual"]]
    assert len(residual) == 1
    mul = [b for b in graph.blocks if b.kind == "eltwise" and b.signature["op"] == "Mul"]
    assert len(mul) == 1 and mul[0].signature["broadcast"] is True and mul[0].signature["hw"] == [5, 5]
    assert mul[0].out_fixed and mul[0].tied


def _gemm_relu_graph():
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 6], [0.1] * 24)
    nodes = [
        helper.make_node("Gemm", ["X", "W"], ["g"], name="/head/fc/Gemm"),
        helper.make_node("Relu", ["g"], ["Y"], name="/head/act/Relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 6])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_hand_built_gemm_with_fused_relu_and_no_bias():
    graph = extract_blocks(_gemm_relu_graph())
    (block,) = graph.blocks
    assert block.name == "head.fc"
    assert block.signature == {"kind": "gemm", "rank": 2, "rows": 2, "bias": False, "act": "relu"}
    assert (block.c_in, block.c_out) == (4, 6)
    assert block.in_fixed and block.out_fixed
    assert block.nodes == ("/head/fc/Gemm", "/head/act/Relu")
    assert block.macs == 2 * 4 * 6


# -- names and keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "node,expected",
    [
        ("/layer1/layer1.0/conv1/Conv", "layer1.0.conv1"),
        ("/layer2/layer2.0/downsample/downsample.0/Conv", "layer2.0.downsample.0"),
        ("/features/features.1/conv/conv.0/conv.0.0/Conv", "features.1.conv.0.0"),
        ("/features/features.2/conv/conv.2/Conv", "features.2.conv.2"),
        ("/conv1/Conv", "conv1"),
        ("/fc/Gemm", "fc"),
        ("/classifier/classifier.1/Gemm", "classifier.1"),
        ("/encoder/layer.0/attention/self/query/MatMul", "encoder.layer.0.attention.self.query"),
        ("/model/layers.3/mlp/down_proj/MatMul", "model.layers.3.mlp.down_proj"),
    ],
)
def test_layer_name(node, expected):
    assert layer_name(node, "fallback") == expected


@pytest.mark.parametrize("node", ["", "Conv_12", "/Conv", "/GlobalAveragePool"])
def test_layer_name_fallback(node):
    assert layer_name(node, "conv7") == "conv7"


def test_signature_key_stable_and_sensitive():
    sig = {
        "kind": "conv",
        "kernel": [3, 3],
        "stride": [1, 1],
        "pads": [1, 1, 1, 1],
        "dilation": [1, 1],
        "groups": 1,
        "hw": [16, 16],
        "act": "relu",
        "residual": False,
    }
    key = signature_key(sig)
    assert key.startswith("conv-") and len(key) == len("conv-") + 12
    assert signature_key(dict(reversed(list(sig.items())))) == key  # insertion order does not matter
    assert signature_key(dict(sig)) == key
    for field, value in [
        ("stride", [2, 2]),
        ("act", None),
        ("residual", True),
        ("groups", "depthwise"),
        ("hw", [16, 8]),
        ("kernel", [1, 1]),
    ]:
        assert signature_key(dict(sig, **{field: value})) != key, field
    assert signature_key({"kind": "gemm", "rank": 2}).startswith("gemm-")


def test_block_key_helpers():
    sig = {"kind": "pool", "op": "MaxPool", "hw": [8, 8]}
    block = Block("p", "pool", sig, 16, 16)
    assert block.sig_key == signature_key(sig)
    assert cell_key(block.sig_key, 16, 16) == f"{block.sig_key}@16x16"
    assert block.tied
    assert not Block("c", "conv", {"kind": "conv", "groups": 1}, 4, 8).tied
    assert Block("d", "conv", {"kind": "conv", "groups": "depthwise"}, 8, 8).tied


class ConvSiLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.SiLU()
        self.proj = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.proj(self.act(self.conv(x)))


def test_silu_is_fused_into_the_conv():
    graph = extract_blocks(exported(ConvSiLU(), (1, 3, 8, 8)))
    conv = graph.blocks[0]
    assert conv.signature["act"] == "silu"
    assert [b.kind for b in graph.blocks] == ["conv", "conv"]


class ChannelsLastMLP(nn.Module):
    """ConvNeXt's layout: a depthwise conv, then Linear / GELU / Linear on [n, h, w, c]."""

    def __init__(self, width: int = 24, hidden: int = 40):
        super().__init__()
        self.dw = nn.Conv2d(3, width, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        x = self.dw(x).permute(0, 2, 3, 1)
        return self.fc2(F.gelu(self.fc1(x))).permute(0, 3, 1, 2)


def test_channels_last_eltwise_counts_the_last_axis_as_channels():
    """GELU's Mul on [n, h, w, hidden] is `hidden` channels over h·w tokens: pruning fc1 keeps its signature."""
    wide = [b for b in extract_blocks(exported(ChannelsLastMLP(), (1, 3, 8, 8))).blocks if b.kind == "eltwise"]
    narrow = [b for b in extract_blocks(exported(ChannelsLastMLP(hidden=32), (1, 3, 8, 8))).blocks
              if b.kind == "eltwise"]
    assert [(b.c_in, b.signature.get("tokens")) for b in wide] == [(40, 64)]
    assert [b.sig_key for b in narrow] == [b.sig_key for b in wide] and narrow[0].c_in == 32


def test_a_depthwise_conv_cut_to_one_channel_keeps_its_signature():
    """GhostNet's cheap depthwise conv can lose all but one channel through a concatenation: still depthwise."""
    one = extract_blocks(exported(nn.Sequential(nn.Conv2d(3, 1, 1), nn.Conv2d(1, 1, 3, padding=1, groups=1)),
                                  (1, 3, 8, 8))).blocks
    many = extract_blocks(exported(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1, groups=4)),
                                   (1, 3, 8, 8))).blocks
    assert one[1].sig_key == many[1].sig_key and one[1].signature["groups"] == "depthwise"


class _Shuffle(nn.Module):
    """A channel split and shuffle as ShuffleNetV2 writes it: shape arithmetic ONNX shape inference cannot follow."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = torch.cat((a, torch.relu(self.branch(b))), dim=1)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.head(x)


def test_convs_behind_a_channel_shuffle_are_blocks_with_their_real_widths():
    import onnx

    proto = exported(_Shuffle())
    inferred = onnx.shape_inference.infer_shapes(proto)
    known = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in inferred.graph.value_info}
    conv_inputs = [n.input[0] for n in proto.graph.node if n.op_type == "Conv"]
    assert any(0 in known.get(x, [0]) for x in conv_inputs[1:])  # static inference loses a conv's input shape...
    graph = extract_blocks(proto)
    convs = {b.name: (b.c_in, b.c_out) for b in graph.blocks if b.kind == "conv"}
    assert convs == {"stem": (3, 16), "branch": (8, 8), "head": (16, 16)}  # ...one run on zeros recovers it
    assert "Conv" not in graph.uncovered
    concat = [b for b in graph.blocks if b.signature.get("op") == "Concat"]  # the copy a concat costs is a block
    assert [(b.c_in, b.c_out, b.signature["inputs"], b.tied) for b in concat] == [(16, 16, 2, True)]
