"""`edgeprune grow` as a library call: model spec + labelled data -> a trained model grown to the spec's depth.

The target is the model the spec names (its depth is the target depth; families that take a depth, such as
timm's resnets with `layers=[3,3,3,3]`, set it through model args). The result is saved as an ordinary
edgeprune model directory (config.json + model.safetensors + provenance.json, the pruned-model format with
every width at the source's), so profile, prune, distill and export read it like any other.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import BadInputError

from .network import parse_seed_depth, seed_network
from .train import GrowOptions, GrowResult, split_holdout, train_growing


@dataclass
class Grown:
    result: GrowResult
    test_accuracy: float | None
    out: Path | None
    provenance: dict


def grow_model(loaded, data: str, out: str | Path | None, options: GrowOptions, *, test_data: str | None = None,
               force: bool = False, reporter=None) -> Grown:
    """Grow `loaded` (a LoadedModel: its module is the target) on labelled `data`; save to `out` when given."""
    import torch

    from edgeprune.atomic import check_writable
    from edgeprune.data import load_samples
    from edgeprune.examples import accuracy

    if out is not None:
        check_writable(out, force)
    if loaded.module is None or not loaded.slimmable or loaded.family != "vision" or loaded.huggingface:
        raise BadInputError(f"{loaded.spec} cannot grow: edgeprune grows torch vision models block by block",
                            "give torchvision:NAME, timm:NAME or an edgeprune model directory of one")
    options = dataclasses.replace(options, seed_depth=parse_seed_depth(options.seed_depth))
    example = torch.zeros(loaded.input_shape)
    target = initial_target(loaded, options.seed)
    network = seed_network(target, example, options.seed_depth, loaded.spec)  # the model first: it is cheap
    samples = _labelled(load_samples(data, loaded.input_shape, loaded.family), "--data")
    test = _labelled(load_samples(test_data, loaded.input_shape, loaded.family), "--test-data") \
        if test_data is not None else None
    _check_classes(target, loaded.spec, example, samples, test)
    train, holdout = split_holdout(samples, options.holdout, options.min_holdout, options.seed)
    result = train_growing(network, train, holdout, options, reporter)
    test_acc = accuracy(result.module, test) if test is not None else None
    provenance = _provenance(loaded, samples, test, options, result, test_acc)
    if out is not None:
        from edgeprune.pruning.checkpoint import save_pruned

        save_pruned(out, result.module, loaded, {}, provenance, force=force)
    return Grown(result, test_acc, Path(out) if out is not None else None, provenance)


def _labelled(samples, flag: str):
    if len(samples) == 0:
        raise BadInputError(f"{flag} {samples.source} holds no samples", "give labelled training samples")
    if samples.labels is None:
        raise BadInputError(f"{flag} {samples.source} has no labels; growing trains from scratch on labels",
                            "store a 'labels' array beside the inputs, or use class sub-folders")
    return samples


def initial_target(loaded, seed: int):
    """The target as its model library initialises it, drawn from `seed`: a torchvision / timm spec is built
    again under that seed (the library's own rule, e.g. timm's zero-initialised last BatchNorm of each residual
    block), so every policy, the seed blocks and every fresh block start as that library would start them.
    A model directory or a module object starts from the weights it has."""
    import torch

    if loaded.pruned_source is not None or not loaded.spec.startswith(("torchvision:", "timm:")):
        return loaded.module
    from edgeprune.models import _timm, _torchvision

    kind, name = loaded.spec.split(":", 1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = (_torchvision if kind == "torchvision" else _timm)(name, dict(loaded.model_args or {}))
    return module.eval()


def _check_classes(module, spec: str, example, samples, test) -> None:
    import torch

    with torch.no_grad():
        out = module.eval()(example)
    classes = int(out.shape[-1])
    for data in (samples, test):
        if data is not None and (int(data.labels.max()) >= classes or int(data.labels.min()) < 0):
            raise BadInputError(f"{data.source} has labels up to {int(data.labels.max())}; {spec} has "
                                f"{classes} outputs", f"pass --model-arg num_classes={int(data.labels.max()) + 1}")


def _provenance(loaded, samples, test, options: GrowOptions, result: GrowResult, test_acc: float | None) -> dict:
    from edgeprune import __version__

    record = {
        "format_version": 1, "kind": "provenance", "tool": f"edgeprune {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"spec": loaded.spec, "sha256": loaded.source_sha256},
        "growth": {
            "policy": result.policy, "options": dataclasses.asdict(options), "i_max": result.i_max,
            "stages": result.stages, "seed_depths": result.seed_depths,
            "schedule": [{"epoch": r.epoch, "block": r.grew, "how": r.how, "forced": r.forced,
                          "orl": round(r.orl, 3), "interval": r.interval} for r in result.history if r.grew],
            "final_start": result.final_start, "train_s": result.train_s,
            "data": {"source": samples.source, "n_train": result.n_train, "n_holdout": result.n_holdout},
            "test": None if test is None else {"source": test.source, "n": len(test), "accuracy": test_acc},
            "history": [dataclasses.asdict(r) for r in result.history],
        },
    }
    if test_acc is not None:
        record["baseline_accuracy"] = test_acc
    return record
