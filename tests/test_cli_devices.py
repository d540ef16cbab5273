"""`edgeprune devices` and `edgeprune doctor` as a user runs them: a subprocess through edgeprune.cli.main."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from edgeprune.devices import builtin_device_files, detect_device, load_registry, local_facts

ROOT = pathlib.Path(__file__).resolve().parents[1]


def edgeprune(*args: str, columns: int = 200) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "edgeprune", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def assert_one_error_line(proc: subprocess.CompletedProcess, start: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(start), lines[0]
    assert "Traceback" not in proc.stderr


def test_devices_json_lists_every_device_and_marks_this_machine() -> None:
    proc = edgeprune("--json", "devices")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    names = [d["name"] for d in data["devices"]]
    assert names == sorted(p.stem for p in builtin_device_files())
    here = detect_device(local_facts())
    assert data["detected"] == here.name
    assert [d["name"] for d in data["devices"] if d["this_machine"]] == [here.name]
    orin = next(d for d in data["devices"] if d["name"] == "jetson-agx-orin")
    assert orin["peak"]["bandwidth_gbs"] == 204.8 and orin["runtimes"][0]["backend"] == "tensorrt"


def test_devices_table() -> None:
    proc = edgeprune("devices")
    assert proc.returncode == 0, proc.stderr
    for name in ("jetson-orin-nano", "raspberry-pi-5", "cuda", "cpu"):
        assert name in proc.stdout
    assert " *" in proc.stdout  # this machine is marked


def test_devices_table_fits_80_columns_without_breaking_a_word() -> None:
    proc = edgeprune("devices", columns=80)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80 and "…" not in proc.stdout
    first_words = {line.split()[0] for line in lines if line.strip()}
    for spec in load_registry().values():  # every name and alias whole, at the start of its own line
        assert {spec.name, *spec.aliases, *spec.family_aliases} <= first_words
        row = next(line for line in lines if line.startswith(spec.name + " "))
        assert " ".join(spec.runtimes[0].precisions) in row  # a runtime's precisions on one line, unbroken


def test_doctor_cpu_json_passes_here() -> None:
    proc = edgeprune("--json", "doctor", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is True and data["device"] == "cpu" and data["host"] is None
    checks = {c["check"]: c for c in data["checks"]}
    assert {"python", "numpy", "onnx", "onnxruntime", "provider CPUExecutionProvider"} <= set(checks)
    assert all(c["ok"] for c in checks.values() if c["required"])
    assert data["usable_runtimes"] == [{"backend": "onnxruntime", "provider": "CPUExecutionProvider"}]


def test_doctor_unknown_device_is_one_line_and_exit_2() -> None:
    proc = edgeprune("doctor", "--device", "jetsn")
    assert proc.returncode == 2
    assert_one_error_line(proc, "error: unknown device 'jetsn'; did you mean: jetson")
    assert proc.stdout == ""


def test_doctor_jetson_on_this_machine_is_one_line_and_exit_2() -> None:
    if detect_device(local_facts()).family == "jetson":
        pytest.skip("this machine is a Jetson")
    proc = edgeprune("doctor", "--device", "jetson")
    assert proc.returncode == 2
    assert_one_error_line(proc, "error: this machine is not a Jetson (it is ")


def test_doctor_failed_required_check_exits_1(tmp_path) -> None:
    if local_facts().get("tensorrt_version"):
        pytest.skip("TensorRT is installed here")
    data = yaml.safe_load((builtin_device_files()[0].parent / "cpu.yaml").read_text())
    data.update(name="trt-host", aliases=["trt-here"],
                runtimes=[{"backend": "tensorrt", "provider": None, "precisions": ["fp32"]}])
    path = tmp_path / "trt-host.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))

    proc = edgeprune("--json", "doctor", "--device", str(path))
    assert proc.returncode == 1
    assert_one_error_line(proc, "error: trt-host on this machine is not ready: tensorrt failed")
    result = json.loads(proc.stdout)
    assert result["ok"] is False and result["usable_runtimes"] == []
    (trt,) = [c for c in result["checks"] if c["check"] == "tensorrt"]
    assert trt["ok"] is False and trt["required"] and trt["fix"]


def test_ssh_option_without_host_is_refused() -> None:
    proc = edgeprune("doctor", "--device", "cpu", "--identity", "/nonexistent/key")
    assert proc.returncode == 2
    assert_one_error_line(proc, "error: --identity only applies to a device reached over SSH")


def over_ssh(server, *args: str) -> subprocess.CompletedProcess:
    return edgeprune(*args, "--host", server.host, "--identity", str(server.identity),
                     "--known-hosts", str(server.known_hosts), "--remote-python", sys.executable)


def test_doctor_over_ssh(sshd_server) -> None:
    proc = over_ssh(sshd_server, "--json", "doctor", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is True and data["host"] == sshd_server.host


def test_doctor_over_ssh_on_the_wrong_device(sshd_server) -> None:
    if detect_device(local_facts()).family == "jetson":
        pytest.skip("this machine is a Jetson")
    proc = over_ssh(sshd_server, "doctor", "--device", "jetson")
    assert proc.returncode == 2
    assert_one_error_line(proc, f"error: {sshd_server.host} is not a Jetson (it is ")
    assert "check --host" in proc.stderr
