"""torch -> ONNX export with a parity check that fails loudly, and the comparison it relies on."""

import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from edgeprune.exporters.onnx import OPSET, Parity, compare, export_onnx

from edgeprune.errors import CheckFailedError


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.head(y.mean(dim=(2, 3)))


class TracesDifferently(nn.Module):
    """Adds 0.5 only while being exported, so ONNX and eager PyTorch disagree by exactly 0.5."""

    def forward(self, x):
        if torch.onnx.is_in_onnx_export():
            return x + 0.5
        return x * 1.0


class TwoOutputs(nn.Module):
    def forward(self, x):
        return {"double": x * 2, "neg": -x}


def small_cnn():
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is actually checked
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


# -- export --------------------------------------------------------------------------------------------------


def test_export_small_cnn_writes_one_self_contained_file(tmp_path):
    path = tmp_path / "model.onnx"
    example = (torch.randn(1, 3, 16, 16),)
    proto, parity = export_onnx(small_cnn(), example, path)
    assert isinstance(parity, Parity) and bool(parity)
    assert parity.needed_atol <= parity.atol
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no external data, no temporary left
    loaded = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(loaded)
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in loaded.graph.initializer)
    assert loaded.SerializeToString() == proto.SerializeToString()
    assert loaded.opset_import[0].version == OPSET
    ops = {n.op_type for n in loaded.graph.node}
    assert "Conv" in ops and "BatchNormalization" not in ops  # BatchNorm folded into the conv
    assert [i.name for i in loaded.graph.input] == ["input"]


def test_export_output_matches_torch(tmp_path):
    import onnxruntime as ort

    model = small_cnn()
    example = (torch.randn(2, 3, 12, 12),)
    proto, _ = export_onnx(model, example, tmp_path / "m.onnx")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": example[0].numpy()})
    with torch.no_grad():
        ref = model(example[0]).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_export_without_path_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proto, parity = export_onnx(small_cnn(), (torch.randn(1, 3, 8, 8),))
    assert parity and proto.graph.node
    assert list(tmp_path.iterdir()) == []


def test_export_check_false_skips_parity(tmp_path):
    proto, parity = export_onnx(TracesDifferently(), (torch.randn(1, 4),), tmp_path / "m.onnx", check=False)
    assert parity is None
    assert (tmp_path / "m.onnx").is_file()


def test_input_names_and_multiple_outputs(tmp_path):
    proto, parity = export_onnx(
        TwoOutputs(), (torch.randn(2, 3),), input_names=["pixels"], output_names=["double", "neg"]
    )
    assert [i.name for i in proto.graph.input] == ["pixels"]
    assert set(parity.outputs) == {"double", "neg"}
    assert parity


def test_parity_failure_raises_with_needed_tolerance_and_writes_nothing(tmp_path):
    path = tmp_path / "bad.onnx"
    torch.manual_seed(0)
    x = torch.randn(1, 16)
    atol, rtol = 1e-4, 1e-3
    with pytest.raises(CheckFailedError) as info:
        export_onnx(TracesDifferently(), (x,), path, atol=atol, rtol=rtol)
    err = info.value
    assert err.exit_code == 1
    # |onnx - torch| is 0.5 everywhere; the smallest passing atol at this rtol is max(0.5 - rtol * |x|)
    needed = float(np.max(0.5 - rtol * np.abs(x.numpy().astype(np.float64))))
    assert f"{needed:.3g}" in err.hint
    assert "would pass" in err.hint
    assert "max abs 0.5" in err.message
    assert f"atol={atol:g}" in err.message and f"rtol={rtol:g}" in err.message
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_tiny_tolerance_on_a_real_model_reports_what_would_pass(tmp_path):
    path = tmp_path / "strict.onnx"
    model = small_cnn()
    example = (torch.randn(1, 3, 16, 16),)
    _, parity = export_onnx(model, example, atol=1.0, rtol=0.0)
    if parity.needed_atol == 0.0:
        pytest.skip("this runtime reproduces PyTorch bit for bit on this model")
    with pytest.raises(CheckFailedError) as info:
        export_onnx(model, example, path, atol=1e-12, rtol=1e-12)
    assert "would pass" in info.value.hint
    assert not path.exists()


# -- compare -------------------------------------------------------------------------------------------------


def test_compare_hand_made_arrays():
    ref = {"y": np.array([1.0, -2.0, 3.0])}
    got = {"y": np.array([1.0, -2.5, 3.1])}
    parity = compare(ref, got, atol=0.1, rtol=0.01)
    out = parity.outputs["y"]
    assert out["max_abs"] == pytest.approx(0.5)
    assert out["max_rel"] == pytest.approx(0.25)  # 0.5 / |-2|
    cosine = (1 + 5 + 9.3) / (math.sqrt(14) * math.sqrt(1 + 6.25 + 9.61))
    assert out["cosine"] == pytest.approx(cosine, abs=1e-12)
    # per element: diff - rtol * |ref| = -0.01, 0.48, 0.07 -> 0.48
    assert out["needed_atol"] == pytest.approx(0.48)
    assert out["ok"] is False
    assert not parity
    assert parity.needed_atol == pytest.approx(0.48)
    assert compare(ref, got, atol=0.481, rtol=0.01)
    assert not compare(ref, got, atol=0.479, rtol=0.01)


def test_compare_judges_large_outputs_by_their_own_scale():
    # a deep random-weight network's outputs reach 1e7; float32 rounding alone then differs by ~5
    ref = {"y": np.array([1.0e7, -3.0, 0.5])}
    # atol grows by 1e7 / 10: 1e-4 -> 100 absolute, for every element (small ones ride on the large ones' error)
    assert compare(ref, {"y": np.array([1.0e7 + 5.0, -3.0, 0.5 + 90.0])}, atol=1e-4, rtol=1e-3)
    parity = compare(ref, {"y": np.array([1.0e7, -3.0, 0.5 + 200.0])}, atol=1e-4, rtol=1e-3)
    assert not parity
    assert parity.needed_atol == pytest.approx((200.0 - 1e-3 * 0.5) / 1e6)  # in atol's units at scale 10
    # logits up to magnitude 10: atol is absolute
    logits = {"y": np.array([10.0, -4.0, 0.0])}
    assert not compare(logits, {"y": np.array([10.0, -4.0, 2e-4])}, atol=1e-4, rtol=1e-3)
    assert compare(logits, {"y": np.array([10.0, -4.0, 9e-5])}, atol=1e-4, rtol=1e-3)


def test_rounding_only_accepts_what_is_no_further_from_the_exact_answer_than_pytorch():
    from edgeprune.exporters.onnx import rounding_only

    exact = {"y": np.array([12.0, -3.0, 0.5])}
    torch_out = {"y": np.array([12.0009, -3.0, 0.5])}  # PyTorch float32: 9e-4 from float64
    near = {"y": np.array([11.9993, -3.0, 0.5])}  # ONNX Runtime: 7e-4 from float64, 1.6e-3 from PyTorch
    parity = compare(torch_out, near, atol=1e-4, rtol=1e-5)
    assert not parity
    rounding_only(parity, torch_out, near, exact)
    assert parity and parity.outputs["y"]["float64_check"] == {
        "onnxruntime_max_abs": pytest.approx(7e-4), "pytorch_max_abs": pytest.approx(9e-4)}
    far = {"y": np.array([12.0, -3.0, 0.502])}  # 2e-3 off where PyTorch is exact: a real difference
    parity = compare(torch_out, far, atol=1e-4, rtol=1e-5)
    assert not rounding_only(parity, torch_out, far, exact)


def test_compare_identical_and_zero_outputs():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    parity = compare({"a": a, "z": np.zeros(3)}, {"a": a.copy(), "z": np.zeros(3)}, atol=0.0, rtol=0.0)
    assert parity
    assert parity.outputs["a"] == {
        "ok": True,
        "max_abs": 0.0,
        "max_rel": 0.0,
        "cosine": pytest.approx(1.0),
        "needed_atol": 0.0,
    }
    assert parity.outputs["z"]["cosine"] == 1.0  # two zero vectors agree
    assert parity.needed_atol == 0.0


def test_compare_shape_mismatch_fails():
    parity = compare({"y": np.zeros((1, 4))}, {"y": np.zeros((4,))}, atol=1.0, rtol=1.0)
    out = parity.outputs["y"]
    assert out["ok"] is False
    assert out["shape"] == [[1, 4], [4]]
    assert out["max_abs"] == math.inf and out["needed_atol"] == math.inf
    assert not parity and parity.needed_atol == math.inf


def test_compare_worst_output_sets_needed_atol():
    ref = {"a": np.ones(3), "b": np.ones(3)}
    got = {"a": np.ones(3) + 0.01, "b": np.ones(3) + 0.2}
    parity = compare(ref, got, atol=0.05, rtol=0.0)
    assert parity.outputs["a"]["ok"] and not parity.outputs["b"]["ok"]
    assert not parity
    assert parity.needed_atol == pytest.approx(0.2)


def test_empty_parity_is_true():
    parity = compare({}, {}, atol=0.0, rtol=0.0)
    assert parity and parity.needed_atol == 0.0


def test_a_model_over_protobufs_2_gib_is_refused_in_one_line_before_any_export():
    """Over 2 GiB one serialised ONNX protobuf cannot hold the weights; the exporter would fail deep inside
    torch.onnx. The weights here live on the meta device: counted, never allocated."""
    from edgeprune.errors import BadInputError

    big = torch.nn.Linear(46341, 11586, device="meta")  # 536.9 M fp32 weights: just over 2 GiB
    with pytest.raises(BadInputError) as err:
        export_onnx(big, (torch.zeros(1, 46341, device="meta"),))
    assert "2.0 GiB of weights" in err.value.message and "external data" in err.value.hint
    small = torch.nn.Linear(8, 4)
    proto, parity = export_onnx(small, (torch.zeros(1, 8),))
    assert parity and len(proto.graph.initializer) == 2
