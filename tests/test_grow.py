"""FRAGrow (`edgeprune grow`): the interval formula by hand, block copies, the target architecture, the schedule
under high and low overfitting risk, the trained output as an ordinary model, and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgeprune.errors import BadInputError
from edgeprune.growth.network import find_stages, seed_network
from edgeprune.growth.policy import (
    Convergent,
    EpochState,
    FRAGrow,
    Periodic,
    fragrow_interval,
    make_policy,
    max_interval,
)
from edgeprune.growth.train import Schedule

# a MobileNetV2 small enough to train in seconds on 8x8 digits: stem, one t=1 block, one stage of three blocks
# (features.2 halves the resolution, features.3 and features.4 keep it)
TINY_MBV2 = {"num_classes": 10, "width_mult": 0.25, "inverted_residual_setting": [[1, 8, 1, 1], [6, 16, 3, 2]]}
TINY_SHAPE = (1, 3, 8, 8)


def tiny_mbv2():
    from edgeprune.models import load_model

    return load_model("torchvision:mobilenet_v2", model_args=TINY_MBV2, input_shape=TINY_SHAPE).module


def resnet18():
    from edgeprune.models import load_model

    return load_model("torchvision:resnet18", model_args={"num_classes": 10}, input_shape=(1, 3, 32, 32)).module


# -- the interval ----------------------------------------------------------------------------------------------


def test_interval_formula_matches_hand_computed_values():
    # I_max = (E_T - E_F^min) / n
    assert max_interval(30, 10, 4) == 5.0
    assert max_interval(20, 5, 6) == 2.5
    # I = I_max / (1 + e^(alpha - ORL)), alpha = 4: e^4 = 54.59815, e^-6 = 0.00247875, e^7 = 1096.633
    assert fragrow_interval(0.0, 5.0) == pytest.approx(5 / 55.59815, rel=1e-6)  # 0.0899311
    assert fragrow_interval(4.0, 5.0) == pytest.approx(2.5)  # at ORL = alpha: half of I_max
    assert fragrow_interval(10.0, 5.0) == pytest.approx(5 / 1.00247875, rel=1e-6)  # 4.987637
    assert fragrow_interval(-3.0, 5.0) == pytest.approx(5 / 1097.633, rel=1e-6)  # 0.0045552
    assert fragrow_interval(2.0, 3.0, alpha=2.0) == pytest.approx(1.5)
    assert fragrow_interval(-1000.0, 5.0) == 0.0  # no overflow far below alpha


def test_policies_decide_from_the_state_they_see():
    def state(since, orl, stalled=0):
        return EpochState(epoch=since, since_growth=since, orl=orl, val_accuracy=0.5, stalled_epochs=stalled)

    fragrow = FRAGrow(5.0)
    assert fragrow.should_grow(state(1, 0.0))  # 1 >= 0.09
    assert not fragrow.should_grow(state(4, 10.0))  # 4 < 4.988
    assert fragrow.should_grow(state(5, 10.0))
    periodic = Periodic(20 / 3)
    assert not periodic.should_grow(state(6, 0.0)) and periodic.should_grow(state(7, 0.0))
    convergent = Convergent(5.0, patience=2)
    assert not convergent.should_grow(state(3, 0.0, stalled=1)) and convergent.should_grow(state(3, 0.0, stalled=2))
    with pytest.raises(BadInputError, match="unknown growth policy 'fragow'.*fragrow"):
        make_policy("fragow", 5.0)


def run_schedule(policy: str, accuracies, epochs=30, final=10, blocks=4) -> tuple[list, Schedule]:
    """Drive the trainer's Schedule with (train, validation) accuracies per epoch; the epochs it grew after."""
    i_max = max_interval(epochs, final, blocks)
    schedule = Schedule(make_policy(policy, i_max), epochs, final, blocks, lr=0.1)
    grown = [e for e in range(1, epochs + 1) if schedule.after_epoch(e, *accuracies(e)).grow]
    return grown, schedule


def test_schedule_grows_later_when_overfitting_risk_is_high():
    # E_T = 30, E_F^min = 10, 4 blocks: I_max = 5
    high, _ = run_schedule("fragrow", lambda e: (1.0, 0.8))  # ORL 20: I = 5 / (1 + e^-16) ~ 5
    low, _ = run_schedule("fragrow", lambda e: (0.9, 0.9))  # ORL 0: I = 0.09, so every epoch
    mid, _ = run_schedule("fragrow", lambda e: (0.94, 0.9))  # ORL 4: I = 2.5, so every third epoch
    periodic, _ = run_schedule("periodic", lambda e: (0.9, 0.9))
    assert high == [5, 10, 15, 20]
    assert low == [1, 2, 3, 4]
    assert mid == [3, 6, 9, 12]
    assert periodic == [5, 10, 15, 20]  # I_max whatever the risk


def test_schedule_meets_the_final_phase_and_decays_once():
    # convergent with a validation accuracy that always improves never asks: the deadline grows every epoch
    # from the last moment that still leaves 10 final epochs (growth epochs 17..20)
    grown, schedule = run_schedule("convergent", lambda e: (0.5, e / 100))
    assert grown == [17, 18, 19, 20]
    assert schedule.final_start == 20
    assert schedule.lr(20, 3, 10) == 0.1  # constant while growing (epoch 20 is still a growth epoch)
    assert schedule.lr(21, 0, 10) == pytest.approx(0.1)  # cosine from the base rate ...
    assert schedule.lr(26, 0, 10) == pytest.approx(0.05)  # ... halfway (50 of 100 steps) ...
    assert schedule.lr(30, 9, 10) == pytest.approx(0.05 * (1 + math.cos(math.pi * 99 / 100)))  # ... to ~0
    # convergent grows when the hold-out accuracy stalls for `patience` (2) epochs
    stalled, _ = run_schedule("convergent", lambda e: (0.5, 0.5))
    assert stalled == [3, 6, 9, 12]  # epoch 1 sets the best; 2 and 3 do not beat it
    # vanilla: no blocks, the cosine covers every epoch
    vanilla = Schedule(make_policy("vanilla", 0.0), 30, 10, 0, lr=0.1)
    assert vanilla.final_start == 0 and vanilla.lr(1, 0, 10) == pytest.approx(0.1)
    assert not vanilla.after_epoch(1, 1.0, 0.0).grow


# -- the network -----------------------------------------------------------------------------------------------


def test_stages_of_torchvision_models():
    stages, _ = find_stages(resnet18(), torch.zeros(1, 3, 32, 32))
    assert [s.blocks for s in stages] == [("layer1.0", "layer1.1"), ("layer2.0", "layer2.1"),
                                          ("layer3.0", "layer3.1"), ("layer4.0", "layer4.1")]
    stages, _ = find_stages(tiny_mbv2(), torch.zeros(TINY_SHAPE))
    assert [s.blocks for s in stages] == [("features.2", "features.3", "features.4")]  # features.1 stands alone


def test_copied_block_equals_its_source_and_a_block_after_a_downsampling_one_is_fresh():
    gen = torch.Generator().manual_seed(0)
    target = tiny_mbv2()
    initial = {k: v.clone() for k, v in target.features[3].state_dict().items()}
    network = seed_network(target, torch.zeros(TINY_SHAPE), 1)
    assert network.plan == ["features.3", "features.4"]
    live = network.module
    with torch.no_grad():  # stand-in for training: the seed's weights are now unlike any initialisation
        for p in live.parameters():
            p.add_(3.0)
    step, params = network.grow()
    assert (step.block, step.source, step.how) == ("features.3", "features.2", "fresh")  # features.2 downsamples
    fresh = live.features[3]
    assert {id(p) for p in params} == {id(p) for p in fresh.parameters()}
    conv = fresh.conv[0][0]  # the 1x1 expansion, 8 -> 48 channels
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (8, 48, (1, 1))
    state = fresh.state_dict()  # the target's block as torchvision initialised it, not anything trained
    assert state.keys() == initial.keys() and all(torch.equal(state[k], initial[k]) for k in state)
    bn = fresh.conv[0][1]  # torchvision's rule: BatchNorm at identity, statistics fresh
    assert torch.equal(bn.weight, torch.ones(48)) and torch.equal(bn.bias, torch.zeros(48))
    assert torch.equal(bn.running_mean, torch.zeros(48)) and torch.equal(bn.running_var, torch.ones(48))
    assert fresh is not target.features[3]  # a copy: training it leaves the target (the template) as it was
    with torch.no_grad():
        for p in fresh.parameters():
            p.mul_(torch.rand(p.shape, generator=gen) + 0.5)
        fresh.conv[0][1].running_mean.add_(0.7)
    step, _ = network.grow()
    assert (step.block, step.source, step.how) == ("features.4", "features.3", "copy")
    source, copy = live.features[3].state_dict(), live.features[4].state_dict()
    assert source.keys() == copy.keys()
    assert all(torch.equal(source[k], copy[k]) for k in source)  # weights and running statistics
    assert live.features[4] is not live.features[3]
    with torch.no_grad():
        live.features[4].conv[0][0].weight.zero_()
    assert float(live.features[3].conv[0][0].weight.detach().abs().sum()) > 0  # a copy, not shared storage


def test_resnet_copies_a_shape_keeping_head_and_grows_front_to_back():
    network = seed_network(resnet18(), torch.zeros(1, 3, 32, 32), 1)
    assert network.plan == ["layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    hows = [network.grow()[0].how for _ in range(4)]
    assert hows == ["copy", "fresh", "fresh", "fresh"]  # layer1.0 keeps the shape; layer2.0.. downsample
    a, b = network.module.layer1[0].state_dict(), network.module.layer1[1].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_growing_to_the_target_depth_yields_the_target_architecture():
    target = tiny_mbv2()
    reference = {k: tuple(v.shape) for k, v in tiny_mbv2().state_dict().items()}
    network = seed_network(target, torch.zeros(TINY_SHAPE), 1)
    seed_state = network.module.state_dict()
    assert not any(k.startswith(("features.3.", "features.4.")) for k in seed_state)
    assert isinstance(network.module.features[3], nn.Identity)
    assert network.depths() == {"features.2": 1}
    x = torch.randn(4, *TINY_SHAPE[1:])
    assert network.module(x).shape == (4, 10)  # the seed runs
    while network.plan:
        network.grow()
    grown = {k: tuple(v.shape) for k, v in network.module.state_dict().items()}
    assert grown == reference  # same names, same shapes, same order
    assert list(grown) == list(reference)
    assert network.depths() == {"features.2": 3}
    assert [type(m) for m in network.module.modules()] == [type(m) for m in target.modules()]


class _Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)) + x


class _Uncopyable(_Block):
    def __init__(self, width):
        super().__init__(width)
        self.stream = (i for i in range(3))  # a generator: deepcopy refuses it


class _Indexed(nn.Module):
    """A model that reaches into its blocks' weights from outside the container: the last one cannot go."""

    def __init__(self, block=_Block):
        super().__init__()
        self.blocks = nn.Sequential(*[block(4) for _ in range(3)])
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.blocks(x)
        return self.head(x.mean((2, 3)) * self.blocks[2].conv.weight.mean())


def test_a_block_that_cannot_be_copied_or_left_out_is_named():
    import edgeprune

    with pytest.raises(BadInputError, match=r"block blocks\.0 of python:_Indexed cannot be copied: .*generator"):
        edgeprune.grow(_Indexed(_Uncopyable), "digits", input_shape=(1, 4, 8, 8))
    with pytest.raises(BadInputError, match=r"does not run without block blocks\.2"):
        seed_network(_Indexed(), torch.zeros(1, 4, 8, 8), 1, "python:_Indexed")
    with pytest.raises(BadInputError, match=r"does not run without block blocks\.2"):
        seed_network(_Indexed(), torch.zeros(1, 4, 8, 8), 2, "python:_Indexed")
    assert seed_network(_Indexed(), torch.zeros(1, 4, 8, 8), 3, "python:_Indexed").plan == []


def test_the_target_starts_as_its_library_initialises_it_under_the_run_seed():
    from edgeprune.growth.run import initial_target
    from edgeprune.models import load_model

    loaded = load_model("timm:resnet18", model_args={"num_classes": 10, "layers": [2, 2, 2, 2],
                                                     "channels": [8, 16, 32, 64], "stem_width": 8},
                        input_shape=(1, 3, 16, 16))
    a, b, again = initial_target(loaded, 0), initial_target(loaded, 1), initial_target(loaded, 0)
    assert not torch.equal(a.layer1[0].conv1.weight, b.layer1[0].conv1.weight)  # the seed draws the weights
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), again.state_dict().values()))
    # timm's own rule survives: each residual block's last BatchNorm starts at zero (the block starts as identity)
    assert torch.equal(a.layer2[1].bn2.weight, torch.zeros(16))


# -- the whole command -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """300 digits at 8x8 (3 channels) with labels, and the 450 test digits."""
    from edgeprune.data import digits

    root = tmp_path_factory.mktemp("grow-data")
    train, test = digits(TINY_SHAPE, "train"), digits(TINY_SHAPE, "test")
    np.savez(root / "train.npz", inputs=train.inputs[:300].numpy(), labels=train.labels[:300].numpy())
    np.savez(root / "test.npz", inputs=test.inputs.numpy(), labels=test.labels.numpy())
    return root


TINY_ARGS = ["--model", "torchvision:mobilenet_v2", "--model-arg", "num_classes=10", "--model-arg", "width_mult=0.25",
             "--model-arg", "inverted_residual_setting=[[1,8,1,1],[6,16,3,2]]", "--input-shape", "1x3x8x8"]


def test_grow_cli_writes_an_ordinary_model_that_profiles_prunes_and_exports(digits_npz, tmp_path, formula_device,
                                                                              cli_in_process):
    import edgeprune

    out = tmp_path / "grown"
    proc = cli_in_process("--json", "grow", *TINY_ARGS, "--data", str(digits_npz / "train.npz"), "--test-data",
                          str(digits_npz / "test.npz"), "--epochs", "6", "--final-epochs", "2", "--batch-size", "32",
                          "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["stages"] == {"features.2": 3} and reply["seed_depths"] == {"features.2": 1}
    assert reply["i_max"] == pytest.approx(2.0)  # (6 - 2) / 2 blocks
    assert [s["block"] for s in reply["schedule"]] == ["features.3", "features.4"]
    assert all(1 <= s["epoch"] <= 4 for s in reply["schedule"])  # the final 2 epochs are never growth epochs
    assert reply["test_accuracy"] > 0.3  # 10 classes: well above chance after 6 epochs on 268 samples
    provenance = json.loads((out / "provenance.json").read_text())
    history = provenance["growth"]["history"]
    assert len(history) == 6
    for record in history:  # the trainer grew exactly when the formula says, from the ORL it measured
        if record["interval"] is not None and not record["forced"]:
            since = record["epoch"] - max([0] + [r["epoch"] for r in history if r["grew"] and r["epoch"] <
                                                  record["epoch"]])
            assert (record["grew"] is not None) == (since >= fragrow_interval(record["orl"], 2.0))
    grown = edgeprune.load(out)  # rebuilt from the spec and the safetensors: no pickle, no base needed
    reference = tiny_mbv2()
    assert {k: v.shape for k, v in grown.state_dict().items()} == {k: v.shape for k, v in
                                                                    reference.state_dict().items()}
    # an ordinary model for the rest of the pipeline: profile -> prune -> export
    table, pruned, bundle = tmp_path / "table.json", tmp_path / "pruned", tmp_path / "bundle"
    proc = cli_in_process("profile", "--device", "cpu", "--model", str(out), "--variants", "2", "--out", str(table))
    assert proc.returncode == 0, proc.stderr
    proc = cli_in_process("prune", "--model", str(out), "--table", str(table), "--budget", "1.02x", "--min-keep",
                          "0.1", "--out", str(pruned))
    assert proc.returncode == 0, proc.stderr
    proc = cli_in_process("export", "--model", str(pruned), "--out", str(bundle))
    assert proc.returncode == 0, proc.stderr
    assert (bundle / "model.onnx").is_file()


def test_vanilla_trains_the_target_from_scratch(digits_npz):
    import edgeprune

    done = edgeprune.grow("torchvision:mobilenet_v2", str(digits_npz / "train.npz"), policy="vanilla", epochs=3,
                          final_epochs=1, model_args=TINY_MBV2, input_shape=TINY_SHAPE, batch_size=64)
    r = done.result
    assert r.steps == [] and r.final_start == 0 and r.growth_epochs == []
    assert r.seed_depths == r.stages == {"features.2": 3}
    assert r.history[0].lr < 0.05  # the cosine starts at the first step: the epoch's last step is below the base
    assert not any(isinstance(m, nn.Identity) for m in done.result.module.features)


def bad(cli_in_process, tmp_path, *args):
    out = tmp_path / "out"
    proc = cli_in_process("grow", *args, "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())
    return lines[0]


def test_bad_input_is_one_line_and_writes_nothing(digits_npz, tmp_path, cli_in_process):
    line = bad(cli_in_process, tmp_path, "--model", "torchvision:resnet18", "--seed-depth", "3", "--data",
               "digits:train")
    assert "target depth of stage layer1.0..layer1.1 (2 blocks in torchvision:resnet18) is lower than the seed's 3" \
        in line
    line = bad(cli_in_process, tmp_path, "--model", "torchvision:alexnet", "--input-shape", "1x3x64x64", "--data",
               "digits:train")
    assert "torchvision:alexnet has no stage of repeated blocks" in line
    line = bad(cli_in_process, tmp_path, *TINY_ARGS)
    assert "grow needs labelled training data" in line
    np.savez(tmp_path / "unlabelled.npz", inputs=np.zeros((40, 3, 8, 8), np.float32))
    line = bad(cli_in_process, tmp_path, *TINY_ARGS, "--data", str(tmp_path / "unlabelled.npz"))
    assert "has no labels" in line
    np.savez(tmp_path / "empty.npz", inputs=np.zeros((0, 3, 8, 8), np.float32), labels=np.zeros(0, np.int64))
    line = bad(cli_in_process, tmp_path, *TINY_ARGS, "--data", str(tmp_path / "empty.npz"))
    assert "holds no samples" in line
    line = bad(cli_in_process, tmp_path, *TINY_ARGS, "--data", str(tmp_path / "missing.npz"))
    assert "--data" in line and "does not exist" in line
    line = bad(cli_in_process, tmp_path, *TINY_ARGS, "--data", str(digits_npz / "train.npz"), "--seed-depth", "3",
               "--epochs", "4", "--final-epochs", "1")
    assert "nothing to grow" in line
    line = bad(cli_in_process, tmp_path, *TINY_ARGS, "--data", str(digits_npz / "train.npz"), "--epochs", "3",
               "--final-epochs", "2")
    assert "growing 2 blocks one epoch apart needs 2 epochs before the final 2" in line
    line = bad(cli_in_process, tmp_path, *TINY_ARGS, "--data", str(digits_npz / "train.npz"), "--seed-depth", "1,1")
    assert "gives 2 stages" in line
    line = bad(cli_in_process, tmp_path, "--model", "torchvision:mobilenet_v2", "--input-shape", "1x3x8x8",
               "--model-arg", "num_classes=5", "--data", str(digits_npz / "train.npz"))
    assert "num_classes=10" in line


def test_a_recipe_grows_the_model_first_and_every_later_stage_reads_the_grown_one(digits_npz, tmp_path,
                                                                                   formula_device, cli_in_process):
    import shutil

    for name in ("train.npz", "test.npz"):
        shutil.copy(digits_npz / name, tmp_path / name)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model: torchvision:mobilenet_v2\n"
        "model_args: {num_classes: 10, width_mult: 0.25, inverted_residual_setting: [[1, 8, 1, 1], [6, 16, 3, 2]]}\n"
        "input_shape: 1x3x8x8\ndevice: cpu\nbudget: 1.02x\ndata: train.npz\neval_data: test.npz\nout: run\n"
        "grow: {epochs: 3, final_epochs: 1, batch_size: 32}\nprofile: {variants: 0}\n"
        "prune: {criterion: l1, min_keep: 0.1, measure: false}\ndistill: false\nvalidate: false\n")
    first = cli_in_process("--json", "run", str(recipe))
    assert first.returncode == 0, first.stderr
    stages = {s["stage"]: s for s in json.loads(first.stdout)["stages"]}
    assert list(stages)[:2] == ["grow", "profile"]
    assert [s for s in stages.values() if s["skipped"]] == []
    assert stages["grow"]["detail"]["growth_epochs"] == [1, 2]  # I_max = (3 - 1) / 2 = 1: every epoch
    table = json.loads((tmp_path / "run" / "table.json").read_text())
    assert table["model"]["spec"] == str(tmp_path / "run" / "grown")  # the table is the grown model's
    second = cli_in_process("--json", "run", str(recipe))
    assert second.returncode == 0, second.stderr
    assert all(s["skipped"] for s in json.loads(second.stdout)["stages"])
    recipe.write_text(recipe.read_text().replace("data: train.npz\n", ""))
    proc = cli_in_process("run", str(recipe))
    assert proc.returncode == 2 and "the grow stage trains on labelled data" in proc.stderr
