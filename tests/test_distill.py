"""Distillation: the KD loss by hand, the teacher cache built once and reused, accuracy recovered on digits."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeprune.distillation.train import kd_loss, refresh_batchnorm


def test_kd_loss_full_and_top_k_match_hand_computation():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 7, generator=gen), torch.randn(3, 7, generator=gen)
    T = 2.0
    p = F.softmax(t / T, -1)
    want = (p * (p.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert torch.allclose(kd_loss(s, t, None, T), want, atol=1e-6)
    top = t.topk(3, -1)
    pk = F.softmax(top.values / T, -1)
    want_k = (pk * (pk.log() - F.log_softmax(s / T, -1).gather(-1, top.indices))).sum(-1).mean() * T * T
    assert torch.allclose(kd_loss(s, top.values, top.indices, T), want_k, atol=1e-6)
    assert float(kd_loss(t, t, None, T)) == pytest.approx(0.0, abs=1e-6)  # identical distributions: no loss


def test_batchnorm_refresh_recomputes_running_statistics():
    bn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2)).eval()
    x = torch.randn(64, 1, 4, 4) * 3 + 1
    assert refresh_batchnorm(bn, x, 16)
    with torch.no_grad():
        y = bn[0](x)
    assert torch.allclose(bn[1].running_mean, y.mean((0, 2, 3)), atol=1e-4)
    assert not refresh_batchnorm(torch.nn.Linear(2, 2), x, 16)


@pytest.fixture(scope="module")
def digits_setup(tmp_path_factory):
    """A resnet18 (32×32, 10 classes) trained briefly on digits, and a 2× narrower pruned copy of it."""
    import edgeprune
    from edgeprune.examples import train_digits
    from edgeprune.models import load_model

    root = tmp_path_factory.mktemp("distill")
    trained = train_digits(input_shape=(1, 3, 32, 32), epochs=3)
    weights = root / "teacher.pt"
    torch.save(trained.module.state_dict(), weights)
    loaded = load_model("torchvision:resnet18", weights=str(weights), model_args={"num_classes": 10},
                        input_shape=(1, 3, 32, 32))
    pruned = root / "pruned"
    edgeprune.prune(loaded, None, pruned, mode="global", ratio=0.6, criterion="l2")
    return root, weights, pruned, trained.accuracy


def test_cached_distillation_recovers_accuracy_and_reuses_the_cache(digits_setup, tmp_path):
    import edgeprune

    root, weights, pruned, teacher_acc = digits_setup
    assert teacher_acc > 0.8
    out = tmp_path / "student"
    cache = tmp_path / "cache"
    done = edgeprune.distill(pruned, "torchvision:resnet18", "digits:train", out, teacher_weights=str(weights),
                             epochs=2, cache_dir=cache, holdout=0.25)
    acc = done.accuracy
    assert acc["student_after"] > acc["student_before"] + 0.1  # pruning hurt; distillation recovered
    assert not done.cache_reused and (cache / "meta.json").is_file()
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["dtype"] == "fp16" and meta["shape"][1] == 10 and meta["top_k"] is None
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["distillation"]["mode"] == "cached" and prov["baseline_accuracy"] == pytest.approx(acc["teacher"])
    again = edgeprune.distill(pruned, "torchvision:resnet18", "digits:train", tmp_path / "student2",
                              teacher_weights=str(weights), epochs=1, cache_dir=cache, holdout=0.25)
    assert again.cache_reused and again.result.teacher_s == 0.0
    reloaded = edgeprune.load(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), done.result.student(x), atol=1e-5)


def test_unlabeled_data_distils_from_the_teacher_alone(digits_setup, tmp_path):
    import edgeprune
    from edgeprune.data import digits

    root, weights, pruned, _ = digits_setup
    unlabeled = tmp_path / "unlabeled.npz"
    np.savez(unlabeled, inputs=digits((1, 3, 32, 32), "train").inputs.numpy()[:256])
    done = edgeprune.distill(pruned, "torchvision:resnet18", str(unlabeled), tmp_path / "s", teacher_weights=str(weights),
                             epochs=1, top_k=4, cache_dir=tmp_path / "c")
    assert done.accuracy == {} and len(done.result.losses) == 1 and done.result.losses[0] > 0
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["top_k"] == 4 and meta["shape"] == [256, 4]


class Recorder:
    """A Reporter that keeps every event, to check what the progress line was told."""

    def __init__(self):
        self.events, self.totals, self.ended = [], {}, []

    def stage(self, name, total=None):
        self.totals[name] = total
        return lambda event: self.events.append((name, event))

    def done(self, name):
        self.ended.append(name)


def test_training_reports_every_step_with_its_epoch_and_ends_the_line():
    from edgeprune.data import Samples
    from edgeprune.distillation.train import DistillOptions, train_student

    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    samples = Samples(torch.randn(10, 1, 2, 2), torch.randint(0, 3, (10,)), "test", {})
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    rec = Recorder()
    train_student(student, samples, DistillOptions(epochs=2, batch_size=4), teacher=teacher, reporter=rec)
    assert rec.totals == {"distill": 6} and rec.ended == ["distill"]  # 3 batches of ≤ 4 per epoch, 2 epochs
    steps = [e["progress"] for _, e in rec.events]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [e["detail"] for _, e in rec.events] == ["epoch 1/2"] * 3 + ["epoch 2/2"] * 3


def test_distill_command_draws_the_teacher_pass_and_the_training_steps(digits_setup, cli_in_process, tmp_path):
    """The command's progress block is what the library reports into: one line for the teacher cache, one for
    the optimiser steps with their count (2 epochs over 75 % of digits:train in batches of 32)."""
    root, weights, pruned, _ = digits_setup
    run = cli_in_process("distill", "--student", str(pruned), "--teacher", "torchvision:resnet18",
                         "--teacher-weights", str(weights), "--data", "digits:train", "--epochs", "2",
                         "--holdout", "0.25", "--out", str(tmp_path / "student"))
    assert run.returncode == 0, run.stderr
    assert "caching the teacher's outputs" in run.stdout
    lines = [line for line in run.stdout.splitlines() if "distilling into the pruned model" in line]
    assert lines, run.stdout
    done, total = map(int, re.search(r"(\d+)/(\d+)", lines[-1]).groups())
    assert done == total > 0
