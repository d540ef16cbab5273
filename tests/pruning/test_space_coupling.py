"""Unit groups across the structures that couple channels: grouped convolutions, concatenations, shuffles."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from edgeprune.models import LoadedModel, state_dict_sha256
from edgeprune.pruning.space import apply_keep, build_space
from edgeprune.pruning.widths import _coupling_error, probe_width_model

EXAMPLE = (torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)


def conv_bn(c_in: int, c_out: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU())


class Grouped(nn.Module):
    """ResNeXt's bottleneck core: a grouped 3x3 conv (4 groups of 4) between two ordinary convs."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = conv_bn(3, 16), conv_bn(16, 16, groups=4), conv_bn(16, 24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        return self.fc(self.c(self.b(self.a(x))).mean((2, 3)))


class Fire(nn.Module):
    """SqueezeNet's Fire: a squeeze conv, two expand convs concatenated, then a pool and a conv on the concat."""

    def __init__(self):
        super().__init__()
        self.squeeze, self.e1, self.e3 = conv_bn(3, 8), conv_bn(8, 16), conv_bn(8, 12)
        self.pool, self.head = nn.MaxPool2d(2), conv_bn(28, 20)
        self.fc = nn.Linear(20, 5)

    def forward(self, x):
        s = self.squeeze(x)
        x = self.pool(torch.cat([self.e1(s), self.e3(s)], 1))
        return self.fc(self.head(x).mean((2, 3)))


class Shuffle(nn.Module):
    """ShuffleNetV2's unit: split the channels, transform one half, concatenate, shuffle two groups."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.branch = nn.Sequential(conv_bn(8, 12), conv_bn(12, 8))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        keep, work = x.chunk(2, dim=1)
        x = torch.cat([keep, self.branch(work)], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(x.mean((2, 3)))


def by_name(groups) -> dict:
    return {g.name: g for g in groups}


def test_grouped_conv_units_take_one_channel_from_every_group():
    torch.manual_seed(0)
    model = Grouped().eval()
    dense = copy.deepcopy(model)
    groups = by_name(build_space(model, EXAMPLE))
    assert (groups["a.0"].units, groups["a.0"].unit_size) == (4, 4)  # 16 channels feeding 4 groups of 4
    assert (groups["b.0"].units, groups["b.0"].unit_size) == (4, 4)
    assert groups["c.0"].unit_size == 1
    space = build_space(model, EXAMPLE)
    apply_keep(space, {[g.name for g in space].index("a.0"): [0, 2, 3]})
    assert (model.b[0].in_channels, model.b[0].groups, model.a[0].out_channels) == (12, 4, 12)
    # unit 1 is channel 1 of each group: a.0 lost rows 1, 5, 9, 13 and b.0 lost column 1 of every group
    kept = [c for c in range(16) if c % 4 != 1]
    assert torch.equal(model.a[0].weight, dense.a[0].weight[kept])
    assert torch.equal(model.b[0].weight, dense.b[0].weight[:, [0, 2, 3]])
    assert model(EXAMPLE[0]).shape == (1, 5)


def test_grouped_conv_scores_fold_over_the_groups():
    from edgeprune.pruning.criteria import score_groups

    torch.manual_seed(0)
    model = Grouped().eval()
    space = build_space(model, EXAMPLE)
    scores = score_groups("l2", space, model)
    assert all(len(r) == g.units for r, g in zip(scores.raw, space))


def loaded_for(module) -> LoadedModel:
    return LoadedModel("python:test", module, None, tuple(EXAMPLE[0].shape), "vision", True,
                       state_dict_sha256(module), [])


@pytest.mark.parametrize("make", [Fire, Grouped], ids=["concat", "grouped"])
def test_width_model_predicts_the_exported_widths_of_any_cut(make):
    """Concatenated widths are the sum of their inputs' groups: the width model matches a real export."""
    from edgeprune.exporters.onnx import export_onnx

    from edgeprune.latency.blocks import extract_blocks

    torch.manual_seed(0)
    model = make().eval()
    space = lambda m: build_space(m, EXAMPLE)  # noqa: E731
    widths = probe_width_model(loaded_for(model), model, EXAMPLE, space)
    if make is Fire:
        pool = next(r for r in widths.rules if r.block.name == "pool")
        assert len(pool.c_in.terms) == 2  # e1's and e3's groups
    groups = space(model)
    units = [max(1, g.units - 1 - i % 3) for i, g in enumerate(groups)]
    cut = copy.deepcopy(model)
    apply_keep(space(cut), {i: range(u) for i, u in enumerate(units)})
    proto, _ = export_onnx(cut, EXAMPLE, None, check=False)
    real = {b.name: (b.c_in, b.c_out) for b in extract_blocks(proto).blocks}
    predicted = {b.name: (b.c_in, b.c_out) for b in widths.blocks(units)}
    assert predicted == real


def test_channel_shuffle_keeps_the_shuffled_channels_whole_and_says_so():
    torch.manual_seed(0)
    model = Shuffle().eval()
    space = build_space(model, EXAMPLE)
    assert [g.name for g in space] == ["branch.0.0"]  # the branch's inner width; stem and branch out cross it
    assert any("kept whole" in n and ("shuffle" in n or "reshape" in n or "split" in n) for n in space.notes)
    apply_keep(space, {0: range(6)})
    assert model.branch[0][0].out_channels == 6 and model(EXAMPLE[0]).shape == (1, 5)


def test_coupling_refusal_names_the_real_ignore_flags():
    err = _coupling_error("head.0", "c_in", ["e1.0", "e3.0"])
    assert "\n" not in err.message + err.hint
    assert "--ignore e1.0 --ignore e3.0" in err.hint and "head.0" in err.message
