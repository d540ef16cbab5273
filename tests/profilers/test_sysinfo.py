"""Device facts and doctor checks (profilers/sysinfo.py), on this machine and on facts of other machines."""

import json
import os
import pathlib
import platform
import subprocess
import sys

import pytest

from profilers import sysinfo

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEYS = {
    "format_version", "python_version", "python_implementation", "python_executable", "system", "release",
    "kernel", "platform", "machine", "os_release", "cpu_model", "cpu_flags", "cpu_count",
    "memory_total_bytes", "llc_bytes", "llc_level", "llc_source", "device_tree_model", "device_tree_compatible", "nv_tegra_release", "numpy_version", "onnx_version",
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


# Cache sizes as the kernel, lscpu and getconf print them (this project's VM: sysfs index3/size "32768K",
# getconf LEVEL3_CACHE_SIZE "335544320", which is the host socket's, not the VM's).
@pytest.mark.parametrize("text, expected", [
    ("32768K\n", 32 << 20), ("1024K", 1 << 20), ("8M", 8 << 20), ("8 MiB", 8 << 20), ("2048 KB", 2 << 20),
    ("335544320\n", 335544320), ("0\n", None), ("", None), ("\n", None), (None, None), ("unknown", None),
    ("-1", None),
])
def test_parse_cache_size(text, expected):
    assert sysinfo.parse_cache_size(text) == expected


def _cache_tree(root, entries):
    for index, (level, kind, size) in enumerate(entries):
        folder = root / ("index%d" % index)
        folder.mkdir(parents=True)
        (folder / "level").write_text("%d\n" % level)
        (folder / "type").write_text(kind + "\n")
        (folder / "size").write_text(size + "\n")
    return str(root)


@pytest.mark.parametrize("entries, expected", [
    # x86 (this VM: AMD EPYC, 2 vCPUs)
    ([(1, "Data", "32K"), (1, "Instruction", "32K"), (2, "Unified", "1024K"), (3, "Unified", "32768K")],
     (32 << 20, 3, "sysfs index3")),
    # a Jetson Orin's Cortex-A78AE cluster: L3 2 MB
    ([(1, "Data", "64K"), (1, "Instruction", "64K"), (2, "Unified", "256K"), (3, "Unified", "2048K")],
     (2 << 20, 3, "sysfs index3")),
    # a Raspberry Pi 4 (Cortex-A72): no L3, the L2 is the last level
    ([(1, "Data", "32K"), (1, "Instruction", "48K"), (2, "Unified", "1024K")], (1 << 20, 2, "sysfs index2")),
    # an instruction cache is never the data's last level; a size the kernel leaves empty is unknown
    ([(1, "Data", "32K"), (2, "Instruction", "512K"), (3, "Unified", "")], (32 << 10, 1, "sysfs index0")),
])
def test_last_level_cache_from_sysfs(tmp_path, entries, expected):
    assert sysinfo.last_level_cache(_cache_tree(tmp_path / "cache", entries)) == expected


def test_last_level_cache_falls_back_to_getconf_then_to_unknown(tmp_path, monkeypatch):
    answers = {"LEVEL3_CACHE_SIZE": "335544320\n", "LEVEL2_CACHE_SIZE": "1048576\n"}
    monkeypatch.setattr(sysinfo, "_run", lambda argv, timeout=10: answers.get(argv[1]))
    empty = str(tmp_path / "none")
    assert sysinfo.last_level_cache(empty) == (335544320, 3, "getconf LEVEL3_CACHE_SIZE")
    answers["LEVEL3_CACHE_SIZE"] = "0\n"  # glibc's answer when cpuid says nothing
    assert sysinfo.last_level_cache(empty) == (1 << 20, 2, "getconf LEVEL2_CACHE_SIZE")
    answers.clear()
    assert sysinfo.last_level_cache(empty) == (None, None, None)


def test_collect_reads_this_machines_last_level_cache():
    facts = sysinfo.collect()
    assert facts["llc_bytes"] is None or (facts["llc_bytes"] > 0 and facts["llc_level"] >= 1
                                          and facts["llc_source"])
