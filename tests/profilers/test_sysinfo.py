"""Device facts and doctor checks (profilers/sysinfo.py), on this machine and on facts of other machines."""

import json
import os
import pathlib
import platform
import subprocess
import sys

from profilers import sysinfo

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEYS = {
    "format_version", "python_version", "python_implementation", "python_executable", "system", "release",
    "kernel", "platform", "machine", "os_release", "cpu_model", "cpu_flags", "cpu_count",
    "memory_total_bytes", "device_tree_model", "device_tree_compatible", "nv_tegra_release", "numpy_version", "onnx_version",
    "onnxruntime_version", "onnxruntime_providers", "tensorrt_version", "nvidia_gpu", "nvidia_gpu_source",
    "nvidia_smi_list", "nvpmodel", "cpu_governor", "cpu_cur_freq_khz", "cpu_max_freq_khz",
    "cpu_scaling_min_freq_khz", "cpu_scaling_max_freq_khz", "gpu_devfreq", "thermal",
}


def checks_by_name(checks):
    return {c["check"]: c for c in checks}


def test_collect_on_this_machine():
    facts = sysinfo.collect()
    json.dumps(facts)  # travels to the host as JSON
    assert facts["python_version"] == platform.python_version()
    assert facts["python_executable"] == sys.executable
    assert facts["machine"] == platform.machine()
    assert facts["cpu_count"] >= 1 and facts["memory_total_bytes"] > 0
    assert "CPUExecutionProvider" in facts["onnxruntime_providers"]
    assert facts["onnxruntime_version"] and facts["numpy_version"] and facts["onnx_version"]
    assert isinstance(facts["nvidia_gpu"], bool)
    assert facts["device_tree_model"] is None or "\x00" not in facts["device_tree_model"]
    for zone in facts["thermal"]:
        assert set(zone) == {"zone", "type", "temp_c"}


def test_collect_returns_the_documented_keys():
    assert set(sysinfo.collect()) == KEYS
    for key in KEYS:
        assert key in sysinfo.__doc__, key


def test_collect_needs_no_torch():
    code = ("import sys; sys.modules['torch'] = None; from profilers import sysinfo; "
            "print(sysinfo.collect()['machine'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == platform.machine()


def test_doctor_passes_for_onnxruntime_cpu_here():
    checks = sysinfo.doctor(sysinfo.collect(), "onnxruntime", "CPUExecutionProvider")
    assert all(c["ok"] for c in checks if c["required"]), checks
    for check in checks:
        assert set(check) == {"check", "ok", "required", "detail", "fix", "runtime"}


def test_doctor_flags_a_missing_runtime_backend():
    facts = dict(sysinfo.collect(), tensorrt_version=None)
    trt = checks_by_name(sysinfo.doctor(facts, "tensorrt"))["tensorrt"]
    assert (trt["ok"], trt["required"], trt["runtime"]) == (False, True, "tensorrt")
    assert "pip install tensorrt" in trt["fix"]

    facts = dict(facts, onnxruntime_version=None, onnxruntime_providers=None)
    ort = checks_by_name(sysinfo.doctor(facts, "onnxruntime", "CUDAExecutionProvider"))["onnxruntime"]
    assert not ort["ok"] and "onnxruntime-gpu" in ort["fix"]


def test_doctor_flags_a_missing_provider():
    facts = dict(sysinfo.collect(), onnxruntime_version="1.20.0",
                 onnxruntime_providers=["CPUExecutionProvider"])
    checks = checks_by_name(sysinfo.doctor(facts, "onnxruntime", "CUDAExecutionProvider"))
    provider = checks["provider CUDAExecutionProvider"]
    assert not provider["ok"] and provider["required"]
    assert provider["runtime"] == "onnxruntime:CUDAExecutionProvider"
    assert "available: CPUExecutionProvider" in provider["detail"]


def test_doctor_on_a_jetson_with_old_python_and_unlocked_clocks():
    facts = {
        "python_version": "3.6.9", "python_executable": "/usr/bin/python3", "system": "Linux",
        "numpy_version": "1.19.5", "onnx_version": None, "tensorrt_version": "8.2.1.8",
        "nv_tegra_release": "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64",
        "device_tree_model": "NVIDIA Jetson Nano Developer Kit", "nvpmodel": None,
        "cpu_governor": "schedutil",
        "gpu_devfreq": [{"device": "57000000.gpu", "governor": "nvhost_podgov", "cur_freq_hz": 76800000,
                         "min_freq_hz": 76800000, "max_freq_hz": 921600000}],
    }
    checks = checks_by_name(sysinfo.doctor(facts, "tensorrt"))
    assert not checks["python"]["ok"] and "--remote-python" in checks["python"]["fix"]
    assert not checks["onnx"]["ok"]
    assert checks["tensorrt"]["ok"]
    mode = checks["power mode (nvpmodel)"]
    assert (mode["ok"], mode["required"]) == (False, False)
    governor = checks["cpu governor"]
    assert (governor["ok"], governor["required"], governor["detail"]) == (False, False, "schedutil")
    assert "jetson_clocks" in governor["fix"]
    gpu = checks["gpu clock locked"]
    assert (gpu["ok"], gpu["required"]) == (False, False) and "jetson_clocks" in gpu["fix"]
    facts["gpu_devfreq"][0]["min_freq_hz"] = 921600000  # what `sudo jetson_clocks` leaves
    assert checks_by_name(sysinfo.doctor(facts, "tensorrt"))["gpu clock locked"]["ok"]


def test_doctor_accepts_performance_governor_or_a_pinned_clock():
    facts = {"python_version": "3.8.10", "system": "Linux", "cpu_governor": "performance"}
    assert checks_by_name(sysinfo.doctor(facts, "onnxruntime"))["cpu governor"]["ok"]
    facts.update(cpu_governor="schedutil", cpu_scaling_min_freq_khz=1510400, cpu_scaling_max_freq_khz=1510400)
    governor = checks_by_name(sysinfo.doctor(facts, "onnxruntime"))["cpu governor"]
    assert governor["ok"] and governor["detail"] == "schedutil, pinned at 1510400 kHz"


def test_a_host_that_goes_away_ends_the_device_job_quietly():
    """The host (or its SSH connection) closing the pipe mid-job: exit 141 (128 + SIGPIPE), no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "profilers", "info"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the interpreter has started: its one write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
