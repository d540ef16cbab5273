"""Coverage over the model registries (timm's habit: one test over every registry entry).

Every torchvision classification model and a list of timm edge families goes the way a new user's model goes:
profile (latency cells + 3 held-out variants, answered by the formula device so no test depends on this
machine's speed) -> prune --mode uniform --ratio 0.3 -> load the pruned directory -> export to ONNX -> ONNX
Runtime parity <= 1e-4 (scaled for outputs beyond magnitude 10, the exporter's rule). A model either passes or is refused with one line (an EdgepruneError: no traceback) that
names the op or layer and what to do; `REFUSED` says which models are refused and what their line must say.
Anything else fails the test.

The default run keeps a representative subset (plain CNN, depthwise + squeeze-excitation, grouped convolutions,
concatenations, channel shuffle, a hybrid CNN/transformer); the rest are `slow`. bench/coverage_bench.py runs
the same `cover` over every model and publishes the table (docs/results/coverage.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from edgeprune.profilers.parity import SCALE_REF

TIMM = ["mobilenetv3_small_100", "mobilenetv3_large_100", "mobilenetv4_conv_small", "efficientnet_b0",
        "efficientnet_lite0", "tinynet_e", "ghostnet_100", "ghostnetv2_100", "regnetx_002", "regnety_002",
        "resnext26ts", "resnext50_32x4d", "convnext_atto", "mobilevit_xxs", "mobilevitv2_050", "edgenext_xx_small",
        "efficientformerv2_s0", "fastvit_t8", "repvit_m0_9", "mobileone_s0", "lcnet_050"]
SIZE = 64  # the input side every model gets unless it needs another (below)
SHAPES = {  # spec -> (model args, input side): models that fix or need a larger input
    # an adaptive average pool exports to ONNX only when its output size divides its input: AlexNet's 6x6 and
    # VGG's 7x7 pools need the 224 px their features were designed for (at 64 px they see 1x1 and 2x2)
    "torchvision:alexnet": ({}, 224), **{f"torchvision:vgg{d}{bn}": ({}, 224) for d in (11, 13, 16, 19)
                                         for bn in ("", "_bn")},
    "torchvision:inception_v3": ({}, 96), "torchvision:maxvit_t": ({}, 224),
    "torchvision:vit_b_16": ({"image_size": 64}, 64), "torchvision:vit_b_32": ({"image_size": 64}, 64),
    "torchvision:vit_l_16": ({"image_size": 64}, 64), "torchvision:vit_l_32": ({"image_size": 64}, 64),
    "torchvision:vit_h_14": ({"image_size": 56}, 56), "timm:efficientformerv2_s0": ({"img_size": 64}, 64),
}
DEFAULT = {  # the default run: one model per kind of coupling
    "torchvision:resnet18",  # plain CNN, residual adds
    "torchvision:mobilenet_v3_small",  # depthwise convolutions, squeeze-excitation
    "torchvision:regnet_x_400mf",  # grouped convolutions (groups != channels)
    "torchvision:squeezenet1_1",  # concatenations
    "torchvision:shufflenet_v2_x0_5",  # channel split and shuffle
    "timm:mobilevit_xxs",  # hybrid CNN / transformer
}
# Random initialisation drives these models' outputs to ~1e9, where ONNX Runtime and PyTorch differ by float32
# rounding alone; their BatchNorm statistics are re-estimated on random inputs first (as a trained model's are
# estimated on data) and the result is passed as --weights.
CALIBRATE_BN = {"torchvision:inception_v3", "timm:mobileone_s0"}
# spec -> text the refusal line must contain: over 2 GiB of weights, one ONNX protobuf cannot hold the model
REFUSED = {"torchvision:regnet_y_128gf": "GiB of weights", "torchvision:vit_h_14": "GiB of weights"}
PARITY = 1e-4  # growing with outputs beyond SCALE_REF in magnitude: the exporter's own rule (profilers/parity.py)


def torchvision_specs() -> list:
    import torchvision

    return [f"torchvision:{name}" for name in torchvision.models.list_models(module=torchvision.models)]


def all_specs() -> list:
    return torchvision_specs() + [f"timm:{name}" for name in TIMM]


def shape_of(spec: str) -> tuple:
    """(model args, input shape) the model is covered at."""
    args, side = SHAPES.get(spec, ({}, SIZE))
    return args, (1, 3, side, side)


def cover(spec: str, workdir: Path) -> dict:
    """Run one model through profile -> prune -> load -> export -> parity; a record of what happened.

    `status` is "pass", "refused" (an EdgepruneError: `line` is what the CLI prints) or "failed" (any other
    exception, or parity beyond 1e-4: `line` says which). Measurement is the formula device's.
    """
    import torch

    from edgeprune.errors import EdgepruneError

    args, shape = shape_of(spec)
    record = {"spec": spec, "input_shape": list(shape), "model_args": args, "stage": "profile"}
    started = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine one thread is 4x faster than two fighting
    try:
        with pytest.MonkeyPatch.context() as patch:
            from tests.formula_device import install

            install(patch)
            for stage, step in (("profile", _profile), ("prune", _prune), ("load", _load), ("export", _export)):
                record["stage"] = stage
                step(spec, args, shape, workdir, record)
        del record["stage"]
        allowed = PARITY * max(1.0, record["output_scale"] / SCALE_REF)
        record["status"] = "pass" if record["max_diff"] <= allowed else "failed"
        if record["status"] == "failed":
            record["line"] = f"ONNX Runtime differs from PyTorch by {record['max_diff']:.2g} (> {allowed:.2g})"
    except MemoryError:  # the machine's limit, not the pruner's: the bench reports it as not run
        record.update(status="not run", line="out of memory on this machine")
    except EdgepruneError as err:
        record.update(status="refused",
                      line=f"error: {err.message}" + (f"; {err.hint}" if err.hint else ""))
    except Exception as err:  # noqa: BLE001 - a failure is what the record reports; the test asserts on it
        record.update(status="failed", line=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                      if str(err) else type(err).__name__)
    finally:
        torch.set_num_threads(threads)
    record["seconds"] = round(time.time() - started, 1)
    return record


def _weights(spec, args, shape, workdir) -> str | None:
    """A weights file with re-estimated BatchNorm statistics for the models in CALIBRATE_BN, else None."""
    if spec not in CALIBRATE_BN:
        return None
    import torch
    from safetensors.torch import save_file

    from edgeprune.models import load_model
    from edgeprune.pruning.batchnorm import recalibrate_batchnorm

    module = load_model(spec, model_args=args, input_shape=shape).module
    gen = torch.Generator().manual_seed(0)
    recalibrate_batchnorm(module, [(torch.randn((4, *shape[1:]), generator=gen),) for _ in range(4)])
    path = workdir / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return str(path)


def _profile(spec, args, shape, workdir, record):
    from edgeprune.models import load_model
    from tests.pruning.conftest import measure_table

    record["weights"] = _weights(spec, args, shape, workdir)
    loaded = load_model(spec, weights=record["weights"], model_args=args, input_shape=shape)
    record["params"] = sum(p.numel() for p in loaded.module.parameters())
    table = measure_table(loaded, workdir / "cache.sqlite", variants=3, formula=False)  # the device is installed
    table.save(workdir / "table.json")
    record["cells"] = len(table.cells)
    record["fidelity_within_10"] = table.fidelity.get("within_10")


def _prune(spec, args, shape, workdir, record):
    import edgeprune

    result = edgeprune.prune(spec, workdir / "table.json", workdir / "pruned", mode="uniform", ratio=0.3,
                             weights=record["weights"], model_args=args, input_shape=shape, measure=False,
                             cache=workdir / "cache.sqlite")
    record["pruned_params"] = sum(p.numel() for p in result.module.parameters())
    record["groups"] = len(result.widths)
    record["kept_whole"] = [n for n in result.notes if n.startswith("kept whole: ")]
    record["kept_whole_groups"] = sum(int(n.split()[2]) for n in record["kept_whole"])
    record["macs_kept"] = result.macs / result.dense_macs if result.dense_macs else None


def _load(spec, args, shape, workdir, record):
    import edgeprune

    edgeprune.load(workdir / "pruned")


def _export(spec, args, shape, workdir, record):
    from edgeprune.models import load_model
    from tests.pruning.test_model_zoo import ort_parity

    reloaded = load_model(str(workdir / "pruned"))
    record["max_diff"], record["output_scale"] = ort_parity(reloaded, reloaded.module, workdir / "pruned.onnx")


def _case(spec: str):
    return pytest.param(spec, id=spec, marks=() if spec in DEFAULT else pytest.mark.slow)


@pytest.mark.parametrize("spec", [_case(s) for s in all_specs()])
def test_model_is_covered_or_refused_in_one_line(spec, tmp_path):
    record = cover(spec, tmp_path)
    assert record["status"] != "failed", record
    if spec in REFUSED:
        assert record["status"] == "refused", record
        assert "\n" not in record["line"] and REFUSED[spec] in record["line"], record
        return
    assert record["status"] == "pass", record
    assert record["pruned_params"] < record["params"], record  # something was cut


def test_cli_says_which_groups_it_keeps_whole(cli_in_process, tmp_path):
    """What `prune` cannot cut it keeps whole and prints, one line per reason (ShuffleNet's channel shuffle)."""
    out = tmp_path / "pruned"
    run = cli_in_process("prune", "--model", "torchvision:shufflenet_v2_x0_5", "--input-shape", "1x3x64x64",
                         "--mode", "uniform", "--ratio", "0.3", "--out", str(out))
    assert run.returncode == 0, run.stderr
    kept = [line for line in run.stderr.splitlines() if "kept whole:" in line]
    assert kept and all("shuffle" in line or "cannot map" in line for line in kept), run.stderr
    assert "Traceback" not in run.stderr and (out / "model.safetensors").is_file()
