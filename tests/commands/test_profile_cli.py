"""`edgeprune profile` / `show` as a user runs them: real subprocesses, real ONNX Runtime, real sshd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cache: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if cache is not None:
        env["EDGEPRUNE_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-m", "edgeprune", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """A small CNN exported to ONNX: conv+relu, strided conv+relu with a residual-free path, pool, linear."""
    import torch
    from edgeprune.exporters.onnx import export_onnx

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 24, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(24, 10))
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(model, (torch.randn(1, 3, 16, 16),), path)
    return path


def test_help_imports_no_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "from edgeprune.cli import main\n"
            "for argv in (['--help'], ['profile', '--help'], ['show', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert not e.code, e.code\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "profile" in proc.stdout and "--variants" in proc.stdout and "--plot" in proc.stdout


def test_device_side_imports_no_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import profilers.measure, profilers.synth, profilers.timing, profilers.sysinfo\n"
            "import profilers.backends.ort, profilers.backends.trt\n"
            "import profilers.parsers.tegrastats, profilers.parsers.trtexec, profilers.parsers.nvpmodel\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_device_side_is_python38_compatible():
    import shutil

    exe = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))
    if not Path(exe).exists():
        pytest.skip("vermin is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([exe, "-t=3.8-", "--no-tips", "--violations",
                           "--eval-annotations", "profilers"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_profile_onnx_file_then_cache_hit(tiny_onnx, tmp_path):
    cache = tmp_path / "cache.sqlite"
    out = tmp_path / "table.json"
    # Reuse of the cache is what the second run tests: a busy CI machine between the runs must not stale it.
    proc = run_cli("--json", "profile", "--device", "cpu", "--model", str(tiny_onnx), "--out", str(out),
                   "--state-tolerance", "100", cache=cache)
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["fidelity"]["status"] == "not measured: no slimmable source"
    table = json.loads(out.read_text())
    # every cell the plan asks for at this machine's channel step was measured (refinement may add more: it
    # follows where this machine's timings jump, so the exact count is the machine's, not the test's)
    import onnx

    from edgeprune.latency.blocks import extract_blocks
    from edgeprune.latency.build import ProfileOptions, plan_cells

    _, planned, _ = plan_cells(extract_blocks(onnx.load(str(tiny_onnx))), table["step"], ProfileOptions().density)
    assert len(planned) > 4 and {c["key"] for c in planned} <= set(table["cells"])
    assert reply["cached_cells"] == 0 and reply["cells"] == len(table["cells"])
    assert table["kind"] == "latency_table" and table["runtime"]["threads"] == 1
    kinds = sorted(layer["kind"] for layer in table["layers"].values())
    assert kinds == ["conv", "conv", "gemm", "pool"]
    assert all(c["estimate_ms"] > 0 and c["n"] >= 9 for c in table["cells"].values())
    cal = table["calibration"]
    assert cal["kind"] == "ratio" and cal["value"] == pytest.approx(cal["dense_measured_ms"] / cal["dense_predicted_ms"])
    # Every layer's current widths are measured exactly (the interpolation rule never guesses them).
    assert all(layer["cell"] in table["cells"] for layer in table["layers"].values())

    again = run_cli("--json", "profile", "--device", "cpu", "--model", str(tiny_onnx), "--out",
                    str(tmp_path / "again.json"), "--state-tolerance", "100", cache=cache)
    assert again.returncode == 0, again.stderr
    reply2 = json.loads(again.stdout)
    assert reply2["cached_cells"] == reply2["cells"] == reply["cells"]
    again_table = json.loads((tmp_path / "again.json").read_text())
    assert again_table["cells"] == table["cells"]


def test_profile_torchvision_model_reports_fidelity_against_macs(tmp_path):
    out = tmp_path / "r18.json"
    proc = run_cli("--json", "profile", "--device", "cpu", "--model", "torchvision:resnet18", "--input-shape",
                   "1x3x32x32", "--variants", "2", "--out", str(out), cache=tmp_path / "c.sqlite")
    assert proc.returncode == 0, proc.stderr
    assert "randomly initialised" in proc.stderr
    table = json.loads(out.read_text())
    fid = table["fidelity"]
    assert fid["n_variants"] == 2 and fid["seed"] == 0
    assert {"within_10", "within_5", "mape", "spearman"} <= set(fid["macs"])
    assert sorted(v["aligned"] for v in fid["variants"]) == [False, True]  # held-out: one off-step, one aligned
    for v in fid["variants"]:
        assert v["predicted_ms"] > 0 and v["measured_ms"] > 0
        assert v["measured_ms"] < 2 * table["calibration"]["dense_measured_ms"]
    assert 0 <= fid["exact_cell_share"] < 1
    names = set(table["layers"])
    assert {"conv1", "layer1.0.conv1", "layer4.1.conv2", "fc"} <= names


def test_show_prints_layers_and_writes_plot(tiny_onnx, tmp_path):
    out = tmp_path / "table.json"
    assert run_cli("--quiet", "profile", "--device", "cpu", "--model", str(tiny_onnx), "--out", str(out),
                   cache=tmp_path / "c.sqlite").returncode == 0
    png = tmp_path / "stairs.png"
    proc = run_cli("show", str(out), "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "calibration ratio" in proc.stdout and "conv" in proc.stdout
    data = json.loads(run_cli("--json", "show", str(out)).stdout)
    assert abs(sum(r["share"] for r in data["layers"]) - 1.0) < 1e-9


def test_unsynthesisable_op_is_a_named_warning_not_an_error(tmp_path):
    import torch
    from edgeprune.exporters.onnx import export_onnx

    class Upsampler(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return torch.nn.functional.interpolate(self.conv(x), scale_factor=2.0, mode="nearest")

    path = tmp_path / "up.onnx"
    export_onnx(Upsampler(), (torch.randn(1, 3, 8, 8),), path)
    out = tmp_path / "t.json"
    proc = run_cli("profile", "--device", "cpu", "--model", str(path), "--out", str(out),
                   cache=tmp_path / "c.sqlite")
    assert proc.returncode == 0, proc.stderr
    assert "Resize" in proc.stderr and "calibration" in proc.stderr
    assert json.loads(out.read_text())["uncovered"] == {"Resize": 1}


@pytest.mark.parametrize("case", ["unknown-device", "missing-model", "corrupt-onnx", "not-a-jetson",
                                  "unreachable-host", "unknown-torchvision"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, tiny_onnx):
    out = tmp_path / "table.json"
    model, device, extra = str(tiny_onnx), "cpu", []
    if case == "unknown-device":
        device = "jetsn-orin"
    elif case == "missing-model":
        model = str(tmp_path / "nope.onnx")
    elif case == "corrupt-onnx":
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"\x08\x07garbage-not-protobuf" * 10)
        model = str(bad)
    elif case == "not-a-jetson":
        device = "jetson"
    elif case == "unreachable-host":
        extra = ["--host", "root@127.0.0.1:1", "--connect-timeout", "3"]
    elif case == "unknown-torchvision":
        model = "torchvision:resnet181"
    proc = run_cli("profile", "--device", device, "--model", model, "--out", str(out), *extra,
                   cache=tmp_path / "c.sqlite", timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".table.json")]
    expected = {"unknown-device": "did you mean", "missing-model": "does not exist", "corrupt-onnx": "not a valid ONNX",
                "not-a-jetson": "not a Jetson", "unreachable-host": "cannot reach", "unknown-torchvision": "resnet18"}
    assert expected[case] in lines[0]


def test_existing_output_is_kept_without_force(tmp_path, tiny_onnx):
    out = tmp_path / "table.json"
    out.write_text("keep me")
    proc = run_cli("profile", "--device", "cpu", "--model", str(tiny_onnx), "--out", str(out),
                   cache=tmp_path / "c.sqlite")
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert out.read_text() == "keep me"


def test_profile_over_ssh_matches_local_cells(sshd_server, tiny_onnx, tmp_path):
    local = tmp_path / "local.json"
    remote = tmp_path / "remote.json"
    assert run_cli("--quiet", "profile", "--device", "cpu", "--model", str(tiny_onnx), "--out", str(local),
                   cache=tmp_path / "l.sqlite").returncode == 0
    proc = run_cli("--json", "profile", "--device", "cpu", "--model", str(tiny_onnx), "--out", str(remote),
                   "--host", sshd_server.host, "--identity", str(sshd_server.identity), "--known-hosts",
                   str(sshd_server.known_hosts), "--remote-python", sys.executable, cache=tmp_path / "r.sqlite")
    assert proc.returncode == 0, proc.stderr
    a, b = json.loads(local.read_text()), json.loads(remote.read_text())
    assert set(a["cells"]) == set(b["cells"]) and set(a["layers"]) == set(b["layers"])
    assert b["fingerprint"]["device"] == "cpu" and b["fingerprint"]["threads"] == 1
    assert all(c["estimate_ms"] > 0 for c in b["cells"].values())


def test_unknown_host_key_is_refused_with_fingerprint(sshd_server, tiny_onnx, tmp_path):
    out = tmp_path / "t.json"
    proc = run_cli("profile", "--device", "cpu", "--model", str(tiny_onnx), "--out", str(out), "--host",
                   sshd_server.host, "--identity", str(sshd_server.identity), "--known-hosts",
                   str(sshd_server.empty_known_hosts), cache=tmp_path / "c.sqlite")
    assert proc.returncode == 2
    assert sshd_server.host_key_fingerprint in proc.stderr and "--accept-new-host-key" in proc.stderr
    assert not out.exists()


def _device_file(tmp_path: Path, lock: str) -> Path:
    source = (REPO / "devices" / "cpu.yaml").read_text()
    text = source.replace("name: cpu\n", "name: cpu-test-locks\n").replace("aliases: [host, local-cpu]", "aliases: []")
    text = text.replace("    - [sudo, cpupower, frequency-set, --governor, performance]", f"    - {lock}")
    path = tmp_path / "cpu-test-locks.yaml"
    path.write_text(text)
    return path


def test_lock_clocks_runs_the_device_command_and_reports_its_failure(tiny_onnx, tmp_path):
    failing = _device_file(tmp_path, "[sh, -c, 'echo governor is read-only >&2; exit 3']")
    out = tmp_path / "t.json"
    proc = run_cli("profile", "--device", str(failing), "--model", str(tiny_onnx), "--out", str(out),
                   "--lock-clocks", cache=tmp_path / "c.sqlite")
    assert proc.returncode == 2 and "governor is read-only" in proc.stderr and "sudo" in proc.stderr
    assert not out.exists()
    marker = tmp_path / "locked"
    working = _device_file(tmp_path, f"[touch, {marker}]")
    proc = run_cli("--json", "profile", "--device", str(working), "--model", str(tiny_onnx), "--out", str(out),
                   "--lock-clocks", cache=tmp_path / "c.sqlite")
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()
    assert json.loads(out.read_text())["fingerprint"]["device"] == "cpu-test-locks"


def test_torchscript_and_weights_inputs(tmp_path):
    """A TorchScript file gets a table without variants; --weights loads the user's state_dict or says why not."""
    import torch
    import torchvision

    torch.manual_seed(1)
    net = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=10).eval()
    scripted = torch.jit.trace(net, torch.randn(1, 3, 32, 32))
    ts = tmp_path / "net.pt"
    scripted.save(str(ts))
    out = tmp_path / "ts.json"
    proc = run_cli("--json", "profile", "--device", "cpu", "--model", str(ts), "--input-shape", "1x3x32x32",
                   "--out", str(out), cache=tmp_path / "c.sqlite")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["fidelity"]["status"] == "not measured: no slimmable source"

    weights = tmp_path / "w.pt"
    torch.save(net.state_dict(), weights)
    wrong = run_cli("profile", "--device", "cpu", "--model", "torchvision:mobilenet_v3_small", "--weights",
                    str(weights), "--input-shape", "1x3x32x32", "--variants", "0", "--out", str(tmp_path / "w.json"),
                    cache=tmp_path / "c.sqlite")
    assert wrong.returncode == 2 and "num_classes" in wrong.stderr and "Traceback" not in wrong.stderr
    right = run_cli("--json", "profile", "--device", "cpu", "--model", "torchvision:mobilenet_v3_small", "--weights",
                    str(weights), "--model-arg", "num_classes=10", "--input-shape", "1x3x32x32", "--variants", "0",
                    "--out", str(tmp_path / "w.json"), cache=tmp_path / "c.sqlite")
    assert right.returncode == 0, right.stderr
    from edgeprune.models import state_dict_sha256

    table = json.loads((tmp_path / "w.json").read_text())
    assert table["model"]["sha256"] == state_dict_sha256(net)
    assert "randomly initialised" not in right.stderr


@pytest.mark.slow
def test_full_size_profile_over_ssh_with_variants(sshd_server, tmp_path):
    """The README's main job at full size, run through the SSH path: variants are exported here, timed there."""
    out = tmp_path / "r18.json"
    proc = run_cli("--json", "profile", "--device", "cpu", "--model", "torchvision:resnet18", "--variants", "4",
                   "--out", str(out), "--host", sshd_server.host, "--identity", str(sshd_server.identity),
                   "--known-hosts", str(sshd_server.known_hosts), "--remote-python", sys.executable,
                   cache=tmp_path / "c.sqlite", timeout=1800)
    assert proc.returncode == 0, proc.stderr
    table = json.loads(out.read_text())
    assert table["model"]["input_shape"] == [1, 3, 224, 224] and len(table["layers"]) == 23
    fid = table["fidelity"]
    assert fid["n_variants"] == 4 and fid["macs"]["n"] == 4
    assert table["calibration"]["n_calibration_variants"] == 6
    assert all(v["measured_ms"] > 0 for v in fid["variants"])


def test_sigterm_stops_the_device_job_and_writes_nothing(tiny_onnx, tmp_path):
    """`timeout` or a closed terminal sends SIGTERM: the device job (its own session) must stop with edgeprune."""
    import signal
    import time

    from tests.sshd import children_of

    out = tmp_path / "t.json"
    env = dict(os.environ, EDGEPRUNE_CACHE=str(tmp_path / "c.sqlite"))
    proc = subprocess.Popen([sys.executable, "-m", "edgeprune", "profile", "--device", "cpu", "--model",
                             str(tiny_onnx), "--density", "fine", "--out", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    jobs = []
    while time.monotonic() < deadline and not jobs:
        jobs = [pid for pid in children_of(proc.pid)
                if b"profilers" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        time.sleep(0.05)
    assert jobs, "the device job never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert all(not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
               for pid in jobs)
    assert not out.exists() and "Traceback" not in err
