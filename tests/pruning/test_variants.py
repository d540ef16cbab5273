"""Seeded width variants: aligned or off-step widths per dependency group, slimmed, original untouched."""

import pytest
import torch
import torch.nn as nn
import torchvision

from edgeprune.errors import BadInputError
from edgeprune.pruning.groups import dependency_groups, output_layers, prune_group
from edgeprune.pruning.variants import make_variant, make_variants

EXAMPLE = (torch.zeros(1, 3, 64, 64),)


def params(module):
    return sum(p.numel() for p in module.parameters())


def original_widths(module, widths):
    """Channel count of each group's root layer in the unpruned model."""
    modules = dict(module.named_modules())
    return {
        name: getattr(modules[name], "out_channels", None) or modules[name].out_features for name in widths
    }


def kept_widths(module, widths):
    return original_widths(module, widths)


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v2().eval()


@pytest.fixture(scope="module")
def made(request):
    """make_variant on the shared models, each (model, seed, aligned, step) built once per module."""
    cache = {}

    def get(name, **kw):
        key = (name, *sorted(kw.items()))
        if key not in cache:
            cache[key] = make_variant(request.getfixturevalue(name), EXAMPLE, **kw)
        return cache[key]

    return get


def check_variant(model, variant):
    assert variant.module is not model
    assert params(variant.module) < params(model)
    assert (
        kept_widths(variant.module, variant.widths) == variant.widths
    )  # widths really are the layers' widths
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        assert variant.module(x).shape == model(x).shape == (1, 1000)
    assert not variant.module.training


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_aligned_widths_are_multiples_of_the_step(name, request):
    model = request.getfixturevalue(name)
    before, count = snapshot(model), params(model)
    variant = make_variant(model, EXAMPLE, seed=3, aligned=True, step=8)
    full = original_widths(model, variant.widths)
    assert variant.aligned
    assert len(variant.widths) >= 10
    for root, width in variant.widths.items():
        assert 1 <= width <= full[root]
        assert width % 8 == 0 or (full[root] < 8 and width == full[root]), (root, width)
    assert any(w < full[r] for r, w in variant.widths.items())
    check_variant(model, variant)
    # the original is untouched
    assert params(model) == count
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_arbitrary_widths_are_off_the_step(name, request, made):
    model = request.getfixturevalue(name)
    variant = made(name, seed=4, aligned=False, step=8)
    full = original_widths(model, variant.widths)
    assert not variant.aligned
    larger = {r: w for r, w in variant.widths.items() if full[r] > 8}
    assert larger
    for root, width in larger.items():
        assert width % 8 != 0, (root, width)
        assert 1 <= width <= full[root]
    check_variant(model, variant)


def test_groups_smaller_than_the_step_stay_whole(resnet):
    variant = make_variant(resnet, EXAMPLE, seed=5, aligned=True, step=128)
    full = original_widths(resnet, variant.widths)
    assert 64 in full.values()
    for root, width in variant.widths.items():
        if full[root] < 128:
            assert width == full[root]
        else:
            assert width % 128 == 0
    with torch.no_grad():
        assert variant.module(EXAMPLE[0]).shape == (1, 1000)
    # the classifier's output and the stem's input are never pruned
    assert variant.module.fc.out_features == 1000 and "fc" not in variant.widths
    assert variant.module.conv1.in_channels == 3


def test_same_seed_same_widths(resnet, made):
    a = made("resnet", seed=4, aligned=False, step=8)  # the variant the off-step test checked
    b = make_variant(resnet, EXAMPLE, seed=4, aligned=False, step=8)
    assert a.module is not b.module
    assert a.widths == b.widths
    assert [p.shape for p in a.module.parameters()] == [p.shape for p in b.module.parameters()]


def test_different_seeds_differ():
    torch.manual_seed(0)
    model = Tiny().eval()
    widths = {
        tuple(sorted(make_variant(model, TINY_EXAMPLE, seed=s, aligned=False, step=4).widths.items()))
        for s in range(6)
    }
    assert len(widths) > 1


# -- a tiny model for the group helpers ----------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


TINY_EXAMPLE = (torch.zeros(1, 3, 8, 8),)


def test_dependency_groups_of_a_tiny_model():
    torch.manual_seed(0)
    model = Tiny().eval()
    assert output_layers(model) == [model.fc]
    groups = dependency_groups(model, TINY_EXAMPLE)
    assert {g.root: g.channels for g in groups} == {"conv1": 16, "conv2": 24}


def test_prune_group_removes_the_given_channels():
    torch.manual_seed(0)
    model = Tiny().eval()
    kept_rows = model.conv1.weight[[i for i in range(16) if i not in (0, 5, 7)]].detach().clone()
    (g1,) = [g for g in dependency_groups(model, TINY_EXAMPLE) if g.root == "conv1"]
    prune_group(g1, [7, 0, 5])
    assert model.conv1.out_channels == 13 and model.bn1.num_features == 13 and model.conv2.in_channels == 13
    assert torch.equal(model.conv1.weight, kept_rows)
    prune_group(g1, [])  # nothing to remove: a no-op
    assert model.conv1.out_channels == 13
    assert model(TINY_EXAMPLE[0]).shape == (1, 5)


def test_model_that_does_not_run_on_its_input_is_bad_input():
    model = Tiny().eval()
    with pytest.raises(BadInputError, match="does not run on an input of shape 1x4x8x8"):
        dependency_groups(model, (torch.zeros(1, 4, 8, 8),))  # wrong channel count: the user's input, not the trace


def test_make_variants_alternate_and_reproduce():
    torch.manual_seed(0)
    model = Tiny().eval()
    first = make_variants(model, TINY_EXAMPLE, count=4, seed=2, step=8)
    again = make_variants(model, TINY_EXAMPLE, count=4, seed=2, step=8)
    assert [v.aligned for v in first] == [True, False, True, False]
    assert [v.index for v in first] == [0, 1, 2, 3]
    assert [v.widths for v in first] == [v.widths for v in again]
    for v in first:
        widths = v.widths
        assert set(widths) == {"conv1", "conv2"}
        if v.aligned:
            assert all(w % 8 == 0 for w in widths.values())
        else:
            assert all(w % 8 != 0 for w in widths.values())
        assert v.module.conv1.out_channels == widths["conv1"]
        assert v.module.conv2.out_channels == widths["conv2"]
    assert model.conv1.out_channels == 16 and model.conv2.out_channels == 24
