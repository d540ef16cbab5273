"""BatchNorm re-estimation: statistics equal the calibration data's, by hand; wired into prune."""

import pytest
import torch

import edgeprune
from edgeprune.pruning.batchnorm import recalibrate_batchnorm
from tests.pruning.conftest import tiny_loaded


def net():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Dropout(0.5), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(3), torch.nn.BatchNorm1d(3))
    model(torch.randn(2, 3, 6, 6))
    model.eval()
    return model


def test_running_statistics_become_the_calibration_datas_own():
    model = net()
    bn2d = model[2]
    bn2d.running_mean.fill_(5.0)
    bn2d.running_var.fill_(9.0)
    bn2d.momentum = 0.3
    batches = [(torch.randn(4, 3, 6, 6) * 2 + 1,) for _ in range(3)]
    assert recalibrate_batchnorm(model, batches) == 2
    with torch.no_grad():
        # by hand: dropout off (eval), per-batch mean and unbiased variance, averaged over equal batches
        conv = [model[0](x) for (x,) in batches]
        mean = torch.stack([c.mean((0, 2, 3)) for c in conv]).mean(0)
        var = torch.stack([c.transpose(0, 1).reshape(4, -1).var(1, unbiased=True) for c in conv]).mean(0)
    assert torch.allclose(bn2d.running_mean, mean, atol=1e-5)
    assert torch.allclose(bn2d.running_var, var, rtol=1e-4)
    assert bn2d.momentum == 0.3 and not model.training and not bn2d.training
    assert int(bn2d.num_batches_tracked) == 3


def test_nothing_to_do_without_batchnorm_or_batches():
    plain = torch.nn.Sequential(torch.nn.Linear(3, 3))
    assert recalibrate_batchnorm(plain, [(torch.randn(4, 3),)]) == 0
    model = net()
    before = model[2].running_mean.clone()
    assert recalibrate_batchnorm(model, []) == 0
    assert torch.equal(model[2].running_mean, before)


def test_one_sample_batches_are_skipped_when_larger_ones_exist():
    model = net()
    got = recalibrate_batchnorm(model, [(torch.randn(1, 3, 6, 6),), (torch.randn(4, 3, 6, 6),)])
    assert got == 2 and int(model[6].num_batches_tracked) == 1


@pytest.mark.parametrize("recalibrate", [True, False])
def test_prune_reestimates_statistics_on_calib_inputs_unless_asked_not_to(tiny_table, recalibrate):
    _, path = tiny_table
    loaded = tiny_loaded()
    dense_bn = {n: m.running_var.clone() for n, m in loaded.module.named_modules()
                if isinstance(m, torch.nn.BatchNorm2d)}
    res = edgeprune.prune(loaded, path, None, budget="1.2x", criterion="l2", calib="digits", calib_samples=16,
                          measure=False, bn_recalibrate=recalibrate)
    bns = {n: m for n, m in res.module.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert bns and set(bns) <= set(dense_bn)
    # without re-estimation every kept channel keeps one of the dense model's variances; with it, none does
    kept_dense = [bool(torch.isin(m.running_var, dense_bn[n]).all()) for n, m in bns.items()]
    if recalibrate:
        assert res.bn_layers == len(bns) and not any(kept_dense)
        assert any("BatchNorm statistics re-estimated on 16 calibration samples" in n for n in res.notes)
    else:
        assert res.bn_layers == 0 and all(kept_dense)
