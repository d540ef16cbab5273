"""The demo's fast parts: its recipe is valid and matches the trained model, training shows progress, reuse."""

from __future__ import annotations

import json
import pathlib
import subprocess

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Recorder:
    def __init__(self):
        self.totals, self.events, self.ended = {}, [], []

    def stage(self, name, total=None):
        self.totals[name] = total
        return self.events.append

    def done(self, name):
        self.ended.append(name)


def test_recipe_loads_and_trains_the_shape_it_prunes(tmp_path):
    from edgeprune.demo import RECIPE, TRAIN
    from edgeprune.recipe import load_recipe

    (tmp_path / "digits-resnet18.safetensors").write_bytes(b"weights")  # the demo trains before it loads
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    recipe = load_recipe(tmp_path / "recipe.yaml")
    assert tuple(recipe.input_shape) == tuple(TRAIN["input_shape"])
    assert recipe.budget == "2x" and recipe.weights == str(tmp_path / "digits-resnet18.safetensors")


def test_training_counts_every_step_with_its_epoch():
    from edgeprune.examples import train_digits

    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 10))
    rec = Recorder()
    train_digits(tiny, input_shape=(1, 3, 8, 8), epochs=2, batch_size=256, reporter=rec)
    assert rec.totals == {"train": 12} and rec.ended == ["train"]  # 1347 training digits: 6 batches per epoch
    assert [e["progress"] for e in rec.events] == list(range(1, 13))
    assert rec.events[5]["detail"] == "epoch 1/2" and rec.events[6]["detail"] == "epoch 2/2"


def test_a_trained_model_with_the_same_settings_is_reused_and_said_so(tmp_path):
    from edgeprune.demo import TRAIN, teacher

    (tmp_path / "digits-resnet18.safetensors").write_bytes(b"weights")
    (tmp_path / "digits-resnet18.json").write_text(json.dumps({"train": TRAIN, "accuracy": 0.99, "train_s": 60.0}))
    said = []
    got = teacher(tmp_path, said.append, Recorder())
    assert got["reused"] and got["accuracy"] == 0.99
    assert said == [f"train: current ({tmp_path / 'digits-resnet18.safetensors'}), skipped"]


def test_the_default_demo_folder_is_ignored_by_git():
    proc = subprocess.run(["git", "check-ignore", "-q", "edgeprune-demo/recipe.yaml"], cwd=ROOT, check=False)
    assert proc.returncode == 0
