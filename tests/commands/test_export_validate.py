"""export -> inspect -> validate as a user runs them: real ONNX Runtime, real files, real gates."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from tests.commands.test_profile_cli import run_cli

SHAPE = "1x3x32x32"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(pruned dir, dense spec args, labelled digits npz) for resnet18 at 32×32 with 10 classes."""
    import edgeprune
    from edgeprune.data import digits
    from edgeprune.models import load_model

    root = tmp_path_factory.mktemp("bundles")
    pruned = root / "pruned"
    loaded = load_model("torchvision:resnet18", model_args={"num_classes": 10}, input_shape=(1, 3, 32, 32))
    edgeprune.prune(loaded, None, pruned, mode="uniform", ratio=0.5, round_to=8)
    test = digits((1, 3, 32, 32), "test")
    data = root / "digits-test.npz"
    np.savez(data, inputs=test.inputs.numpy()[:64], labels=test.labels.numpy()[:64])
    return pruned, data


@pytest.fixture(scope="module")
def bundles(models, tmp_path_factory):
    pruned, data = models
    root = tmp_path_factory.mktemp("b")
    proc = run_cli("--json", "export", "--model", str(pruned), "--data", str(data), "--budget", "500ms",
                   "--baseline-accuracy", "0.5", "--out", str(root / "pruned-bundle"))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("export", "--model", "torchvision:resnet18", "--model-arg", "num_classes=10", "--input-shape",
                   SHAPE, "--data", str(data), "--out", str(root / "dense-bundle"))
    assert proc.returncode == 0, proc.stderr
    return root / "pruned-bundle", root / "dense-bundle"


def test_export_writes_a_checksummed_bundle_with_real_reference_samples(bundles):
    bundle, _ = bundles
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json", "model.onnx", "reference_io.npz"]
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["inputs"][0]["shape"] == [1, 3, 32, 32] and m["preprocessing"]["kind"] == "tensors"
    assert m["parity"]["ok"] and m["parity"]["samples"] == 8
    assert set(m["files"]) == {"model.onnx", "reference_io.npz"}
    assert m["budget"] == "500ms" and m["budget_ms"] == 500 and m["baseline_accuracy"] == 0.5
    assert m["widths"] and m["source"]["pruned_from"] == "torchvision:resnet18"
    assert {"torch", "onnx", "onnxruntime", "edgeprune"} <= set(m["tools"])
    with np.load(bundle / "reference_io.npz") as ref:
        inputs = [k for k in ref.files if k.startswith("input:")]
        assert ref[inputs[0]].shape == (8, 3, 32, 32)


def test_inspect_verifies_and_prints(bundles):
    bundle, _ = bundles
    proc = run_cli("inspect", str(bundle))
    assert proc.returncode == 0, proc.stderr
    assert "checksums ok" in proc.stdout and "500.000 ms" in proc.stdout


def test_validate_passes_gates_and_writes_the_report(bundles, models, tmp_path):
    bundle, dense = bundles
    _, data = models
    out = tmp_path / "report"
    proc = run_cli("--json", "validate", str(bundle), "--device", "cpu", "--data", str(data), "--baseline",
                   str(dense), "--min-accuracy", "0.0", "--seconds", "0.5", "--runs", "20", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and report["baseline"]["bundle"] == str(dense)
    r = report["bundles"][0]
    lat = r["latency"]
    assert lat["n"] >= 20 and lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    assert lat["cold_start"]["session_ms"] > 0 and lat["interleaved_with"] == 1
    assert r["parity"]["ok"] and r["accuracy"]["n"] == 64
    assert r["gates"]["latency"]["ok"] and r["gates"]["latency"]["limit"] == 500
    assert r["latency"]["estimate_ms"] < report["baseline"]["latency"]["estimate_ms"]  # half the channels: faster
    iv = lat["interval"]  # paired interleaved passes: an interval on the estimate and on the speedup
    assert iv["ms"][0] <= lat["estimate_ms"] <= iv["ms"][1] and iv["speedup"][0] <= lat["speedup"] <= iv["speedup"][1]
    assert lat["speedup"] == pytest.approx(report["baseline"]["latency"]["estimate_ms"] / lat["estimate_ms"])
    assert "x the baseline (" in (out / "report.md").read_text()
    assert statistics.median(lat["estimate"]["pass_min_ms"]) == pytest.approx(lat["estimate_ms"])
    assert sorted(report["plots"]) == ["latency.png", "pareto.png"]
    assert (out / "latency.png").stat().st_size > 1000 and "PASSED" in (out / "report.md").read_text()
    assert r["where"] == "this machine" and set(r["device_state"]) == {"before", "after"}
    assert "Device: this machine;" in (out / "report.md").read_text()
    # --min-accuracy alone is the absolute floor: no relative gate was asked for, none skipped
    assert {k: g["status"] for k, g in r["gates"].items()} == {"parity": "passed", "latency": "passed",
                                                               "accuracy_floor": "passed"}
    result = json.loads(proc.stdout)
    assert result["passed"] and result["status"] == "passed" and result["skipped"] == []


def test_relative_accuracy_gate_says_its_rule_on_stdout(bundles, models, tmp_path):
    bundle, dense = bundles
    _, data = models
    proc = run_cli("validate", str(bundle), "--device", "cpu", "--data", str(data), "--baseline", str(dense),
                   "--min-accuracy-ratio", "0", "--seconds", "0.2", "--runs", "5")
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stdout.splitlines() if "accuracy_vs_baseline" in x][0]
    assert "accuracy_vs_baseline: pass (top-1 ≥ 0 × baseline top-1" in line
    assert "PASSED" in proc.stdout


def test_skipped_gates_are_listed_not_passed_and_exit_3(bundles, tmp_path):
    _, dense = bundles  # no budget in its manifest, and no --data: latency and accuracy cannot run
    out = tmp_path / "report"
    proc = run_cli("--json", "validate", str(dense), "--device", "cpu", "--seconds", "0.2", "--runs", "5",
                   "--out", str(out))
    assert proc.returncode == 3, proc.stderr
    result = json.loads(proc.stdout)
    assert result["passed"] is False and result["status"] == "incomplete"
    assert [x.split(": ", 1)[1] for x in result["skipped"]] == [
        "latency skipped: no budget in the manifest and no --budget", "accuracy_vs_baseline skipped: no labelled --data"]
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False and report["skipped"] == result["skipped"]
    human = run_cli("validate", str(dense), "--device", "cpu", "--seconds", "0.2", "--runs", "5", "--allow-skipped")
    assert human.returncode == 0, human.stderr
    assert "parity: pass" in human.stdout and "latency: skipped" in human.stdout
    assert "INCOMPLETE" in human.stdout and "PASSED" not in human.stdout


def test_failed_gates_exit_1_listing_every_gate_after_writing_the_report(bundles, models, tmp_path):
    bundle, _ = bundles
    _, data = models
    out = tmp_path / "report"
    proc = run_cli("validate", str(bundle), "--device", "cpu", "--data", str(data), "--budget", "0.001ms",
                   "--min-accuracy", "1.0", "--seconds", "0.2", "--runs", "5", "--out", str(out))
    assert proc.returncode == 1, proc.stderr
    line = [x for x in proc.stderr.splitlines() if x.startswith("error:")][0]
    assert "latency" in line and "accuracy_floor" in line and "absolute" in line  # both failed gates named
    assert "FAILED" in (out / "report.md").read_text()


@pytest.mark.parametrize("case", ["tampered", "missing-file", "bad-data-shape", "no-runtime", "engine-no-tensorrt"])
def test_bad_bundles_and_data_are_one_line_exit_2_before_anything_runs(case, bundles, models, tmp_path):
    import shutil

    bundle, _ = bundles
    _, data = models
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    if case == "tampered":
        with open(copy / "model.onnx", "r+b") as handle:
            handle.seek(100)
            handle.write(b"\x00\x01")
    elif case == "missing-file":
        (copy / "reference_io.npz").unlink()
    elif case == "bad-data-shape":
        np.savez(tmp_path / "bad.npz", inputs=np.zeros((4, 3, 16, 16), np.float32), labels=np.zeros(4, np.int64))
        data = tmp_path / "bad.npz"
    elif case == "no-runtime":  # a bundle exported for a CUDA device, validated on this CPU-only machine
        from edgeprune.exporters.bundle import content_id

        m = json.loads((copy / "manifest.json").read_text())
        m["runtime"]["provider"] = "CUDAExecutionProvider"
        m["id"] = content_id(m)
        (copy / "manifest.json").write_text(json.dumps(m))
    elif case == "engine-no-tensorrt":  # a bundle whose engine was built on a Jetson, validated on this CPU
        import hashlib

        from edgeprune.exporters.bundle import content_id

        blob = b"serialized engine from an Orin"
        (copy / "model.engine").write_bytes(blob)
        m = json.loads((copy / "manifest.json").read_text())
        m["files"]["model.engine"] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
        m["engine"] = {"file": "model.engine", "tensorrt_version": "10.3.0",
                       "gpu": {"name": "Orin", "compute_capability": "8.7"}, "settings": {"precision": "fp16"}}
        m["id"] = content_id(m)
        (copy / "manifest.json").write_text(json.dumps(m))
    out = tmp_path / "report"
    proc = run_cli("validate", str(copy), "--device", "cpu", "--data", str(data), "--out", str(out), timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    expected = {"tampered": "checksum mismatch in model.onnx", "missing-file": "missing reference_io.npz",
                "bad-data-shape": "16x16", "no-runtime": "no CUDAExecutionProvider",
                "engine-no-tensorrt": "TensorRT is not available here"}[case]
    assert expected in lines[0]
    assert not out.exists()


def test_export_refuses_parity_failure_and_writes_nothing(tmp_path):
    """A model whose ONNX translation differs beyond the tolerance fails the export (atol=0 cannot pass)."""
    proc = run_cli("export", "--model", "torchvision:mobilenet_v3_small", "--input-shape", SHAPE, "--atol", "0",
                   "--rtol", "0", "--out", str(tmp_path / "b"))
    assert proc.returncode == 1, proc.stderr
    assert "differs from PyTorch" in proc.stderr and "would pass" in proc.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("args, expected", [
    (["--engine", "fp16", "--device", "cpu"], "device cpu has no TensorRT runtime"),
    (["--engine", "int8", "--device", "jetson-nano"], "does not run int8"),
    (["--engine", "int8", "--device", "cuda"], "--engine int8 needs calibration samples"),
    # this machine has no NVIDIA GPU: the device check says so
    (["--engine", "fp16", "--device", "cuda"], "not an NVIDIA GPU host"),
])
def test_engine_export_refusals_are_one_line_exit_2_and_write_nothing(args, expected, tmp_path):
    out = tmp_path / "b"
    proc = run_cli("export", "--model", "torchvision:resnet18", "--input-shape", SHAPE, "--out", str(out), *args,
                   timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert expected in lines[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_validate_over_ssh_runs_the_bundle_on_the_remote_device(bundles, models, tmp_path, sshd_server):
    """The bundle, the data and profilers/ travel to the device over SSH; the report comes back."""
    import sys

    bundle, _ = bundles
    _, data = models
    out = tmp_path / "report"
    proc = run_cli("--json", "validate", str(bundle), "--device", "cpu", "--host", sshd_server.host,
                   "--identity", str(sshd_server.identity), "--known-hosts", str(sshd_server.known_hosts),
                   "--remote-python", sys.executable, "--data", str(data), "--min-accuracy", "0.0",
                   "--seconds", "0.2", "--runs", "10", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((out / "report.json").read_text())["bundles"][0]
    assert r["where"] == sshd_server.host and r["device"] == "cpu"
    assert r["parity"]["ok"] and r["accuracy"]["n"] == 64 and r["latency"]["n"] >= 10


def test_device_state_line_reports_clocks_and_temperatures_where_readable():
    from edgeprune.reports import device_state_line

    def state(freq, temps, gpu_hz):
        return {"cpu_governor": "schedutil", "cpu_cur_freq_khz": freq,
                "thermal": [{"zone": f"thermal_zone{i}", "type": "cpu-thermal", "temp_c": t} for i, t in enumerate(temps)],
                "gpu_devfreq": [{"device": "17000000.gpu", "cur_freq_hz": gpu_hz}]}

    line = device_state_line({"before": state(1510400, [41.5, 39.0], 306000000),
                              "after": state(1190400, [52.25, 40.0], 624750000)})
    assert "CPU governor schedutil" in line and "CPU clock 1510 → 1190 MHz" in line
    assert "hottest zone 41.5 → 52.2 °C" in line and "GPU 17000000.gpu 625 MHz" in line
    empty = {"cpu_governor": None, "cpu_cur_freq_khz": None, "thermal": [], "gpu_devfreq": []}
    assert device_state_line({"before": empty, "after": empty}) == \
        "clocks and temperatures are not readable on this device."
