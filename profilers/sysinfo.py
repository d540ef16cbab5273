"""What this machine is and what it can run: the facts device fingerprints and `edgeprune doctor` use.

`collect()` returns one flat JSON-able dict. Every fact is best-effort: what cannot be read is None, never an
exception, because the same code runs on x86 VMs, Jetsons (JetPack 5 ships Python 3.8) and Raspberry Pis.
Raw tool output (`nvpmodel -q`, `nvidia-smi -L`, /etc/nv_tegra_release) is kept as text; parsing it lives in
`parsers/`. Commands run as argv lists with a timeout, never through a shell.

Keys of `collect()`:
    format_version, python_version, python_implementation, python_executable,
    system, release, kernel, platform, machine, os_release,
    cpu_model, cpu_flags (list), cpu_count, memory_total_bytes,
    llc_bytes, llc_level, llc_source (the last-level CPU cache: its size, its level, where it was read),
    device_tree_model, device_tree_compatible (list), nv_tegra_release,
    numpy_version, onnx_version, onnxruntime_version, onnxruntime_providers (list), tensorrt_version,
    nvidia_gpu (bool), nvidia_gpu_source, nvidia_smi_list,
    nvpmodel (raw `nvpmodel -q` text), cpu_governor, cpu_cur_freq_khz, cpu_max_freq_khz,
    cpu_scaling_min_freq_khz, cpu_scaling_max_freq_khz (equal when the clock is pinned),
    gpu_devfreq (list of {device, governor, cur_freq_hz, min_freq_hz, max_freq_hz} for a Jetson's GPU),
    thermal (list of {zone, type, temp_c}).
"""

import glob
import os
import platform
import shutil
import subprocess
import sys
import time

FORMAT_VERSION = 1
CPUFREQ = "/sys/devices/system/cpu/cpu0/cpufreq/"
CPU_CACHE = "/sys/devices/system/cpu/cpu0/cache"

# /proc/cpuinfo on ARM names no model; "CPU implementer"/"CPU part" do. Only cores edgeprune's devices use.
_ARM_PARTS = {
    ("0x41", "0xd03"): "ARM Cortex-A53",
    ("0x41", "0xd07"): "ARM Cortex-A57",
    ("0x41", "0xd08"): "ARM Cortex-A72",
    ("0x41", "0xd0b"): "ARM Cortex-A76",
    ("0x41", "0xd42"): "ARM Cortex-A78AE",
    ("0x4e", "0x004"): "NVIDIA Carmel",
}

MIN_PYTHON = (3, 8)


def _read(path, limit=65536):
    """Text of a small file, or None when it is missing or unreadable (sysfs files may refuse reads)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit)
    except (OSError, ValueError):
        return None
    return data.decode("utf-8", "replace")


def _read_int(path):
    text = _read(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _run(argv, timeout=10):
    """stdout of a tool, or None when the binary is missing, fails, or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", "replace")


def _cpuinfo():
    """(model, flags, count) from /proc/cpuinfo, falling back to the platform module."""
    text = _read("/proc/cpuinfo", limit=1 << 20) or ""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key not in fields:
            fields[key] = value.strip()
    model = fields.get("model name")
    if not model:
        part = _ARM_PARTS.get((fields.get("cpu implementer", "").lower(), fields.get("cpu part", "").lower()))
        model = part or fields.get("hardware") or fields.get("model") or platform.processor() or None
    flags = fields.get("flags") or fields.get("features")
    return model, (flags.split() if flags else None), os.cpu_count()


def _memory_total():
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            try:
                return int(parts[1]) * 1024
            except (IndexError, ValueError):
                return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024 ** 2, "MB": 1024 ** 2,
               "MIB": 1024 ** 2, "G": 1024 ** 3, "GB": 1024 ** 3, "GIB": 1024 ** 3}


def parse_cache_size(text):
    """Bytes of a cache size as sysfs (`32768K`), lscpu (`8 MiB`) or getconf (`1048576`) writes it; else None.

    Sizes are binary (the kernel's `K` is KiB). Zero, an empty string and anything unparsable are unknown.
    """
    if text is None:
        return None
    parts = text.strip().upper().replace(" ", "")
    number = parts.rstrip("KMGIB")
    unit = parts[len(number):]
    try:
        value = int(number) * _SIZE_UNITS[unit]
    except (ValueError, KeyError):
        return None
    return value if value > 0 else None


def last_level_cache(root=CPU_CACHE):
    """(bytes, level, source) of cpu0's last-level data cache, or (None, None, None) when nothing says.

    sysfs first (`index*/level`, `type`, `size`: x86 and ARM kernels alike, where firmware describes the caches);
    instruction caches are skipped. `getconf LEVEL3_CACHE_SIZE` (then LEVEL2) is the fallback: glibc reads it
    from cpuid, which on a virtual machine can report the host socket's cache (320 MB on this project's
    2-vCPU VM, whose sysfs says 32 MB), so it is only used when sysfs has nothing.
    """
    best = None
    for index in sorted(glob.glob(os.path.join(root, "index*"))):
        kind = (_read(os.path.join(index, "type")) or "").strip()
        level = _read_int(os.path.join(index, "level"))
        size = parse_cache_size(_read(os.path.join(index, "size")))
        if kind == "Instruction" or level is None or size is None:
            continue
        if best is None or level > best[1]:
            best = (size, level, "sysfs " + os.path.basename(index))
    if best is not None:
        return best
    for level in (3, 2):
        size = parse_cache_size(_run(["getconf", "LEVEL%d_CACHE_SIZE" % level]))
        if size is not None:
            return size, level, "getconf LEVEL%d_CACHE_SIZE" % level
    return None, None, None


def _os_release():
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return None


def _module_version(name):
    """Version of an importable module, or None: any import failure (broken CUDA libs too) is absence."""
    try:
        module = __import__(name)
    except Exception:  # noqa: BLE001 - a broken install is reported as missing, not raised
        return None
    return str(getattr(module, "__version__", "unknown"))


def _onnxruntime_providers():
    try:
        import onnxruntime
    except Exception:  # noqa: BLE001
        return None
    try:
        return list(onnxruntime.get_available_providers())
    except Exception:  # noqa: BLE001
        return None


def _nvidia_gpu():
    """(present, source, raw `nvidia-smi -L`): the driver's /proc entry first, then nvidia-smi."""
    gpus = glob.glob("/proc/driver/nvidia/gpus/*")
    listing = _run(["nvidia-smi", "-L"])
    if gpus:
        return True, "/proc/driver/nvidia/gpus", listing
    if listing and any(line.startswith("GPU ") for line in listing.splitlines()):
        return True, "nvidia-smi", listing
    return False, None, listing


# devfreq names of Jetson GPUs: Orin (JetPack 6 / 5), Xavier, TX2, Nano.
_GPU_DEVFREQ = ("17000000.gpu", "17000000.ga10b", "17000000.gv11b", "17000000.gp10b", "57000000.gpu")


def _gpu_devfreq():
    gpus = []
    for name in _GPU_DEVFREQ:
        path = os.path.join("/sys/class/devfreq", name)
        if os.path.isdir(path):
            governor = _read(os.path.join(path, "governor"))
            gpus.append({
                "device": name,
                "governor": governor.strip() if governor else None,
                "cur_freq_hz": _read_int(os.path.join(path, "cur_freq")),
                "min_freq_hz": _read_int(os.path.join(path, "min_freq")),
                "max_freq_hz": _read_int(os.path.join(path, "max_freq")),
            })
    return gpus


def _thermal():
    zones = []
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        milli = _read_int(os.path.join(zone, "temp"))
        kind = _read(os.path.join(zone, "type"))
        zones.append({
            "zone": os.path.basename(zone),
            "type": kind.strip() if kind else None,
            "temp_c": milli / 1000.0 if milli is not None else None,
        })
    return zones


def device_state():
    """Clocks, governor and temperatures now (each None / empty where unreadable): read around a timed run so a
    report shows whether the device throttled or changed clocks while it was measured."""
    governor = _read(CPUFREQ + "scaling_governor")
    return {"time": time.time(), "cpu_governor": governor.strip() if governor else None,
            "cpu_cur_freq_khz": _read_int(CPUFREQ + "scaling_cur_freq"), "gpu_devfreq": _gpu_devfreq(),
            "thermal": _thermal()}


def collect():
    """Facts about this machine, each None when it cannot be read."""
    model, flags, count = _cpuinfo()
    dt_model = _read("/proc/device-tree/model")
    dt_compatible = _read("/proc/device-tree/compatible")
    tegra = _read("/etc/nv_tegra_release")
    present, source, listing = _nvidia_gpu()
    state = device_state()
    llc_bytes, llc_level, llc_source = last_level_cache()
    return {
        "format_version": FORMAT_VERSION,
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "system": platform.system(),
        "release": platform.release(),
        "kernel": platform.version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "os_release": _os_release(),
        "cpu_model": model,
        "cpu_flags": flags,
        "cpu_count": count,
        "memory_total_bytes": _memory_total(),
        "llc_bytes": llc_bytes,
        "llc_level": llc_level,
        "llc_source": llc_source,
        "device_tree_model": dt_model.replace("\x00", "").strip() if dt_model else None,
        "device_tree_compatible": [e for e in dt_compatible.split("\x00") if e] if dt_compatible else None,
        "nv_tegra_release": tegra,
        "numpy_version": _module_version("numpy"),
        "onnx_version": _module_version("onnx"),
        "onnxruntime_version": _module_version("onnxruntime"),
        "onnxruntime_providers": _onnxruntime_providers(),
        "tensorrt_version": _module_version("tensorrt"),
        "nvidia_gpu": present,
        "nvidia_gpu_source": source,
        "nvidia_smi_list": listing,
        "nvpmodel": _run(["nvpmodel", "-q"]),
        "cpu_governor": state["cpu_governor"],
        "cpu_cur_freq_khz": state["cpu_cur_freq_khz"],
        "cpu_max_freq_khz": _read_int(CPUFREQ + "cpuinfo_max_freq"),
        "cpu_scaling_min_freq_khz": _read_int(CPUFREQ + "scaling_min_freq"),
        "cpu_scaling_max_freq_khz": _read_int(CPUFREQ + "scaling_max_freq"),
        "gpu_devfreq": state["gpu_devfreq"],
        "thermal": state["thermal"],
    }


def is_jetson(facts):
    """A Jetson says so in its device tree or ships /etc/nv_tegra_release."""
    return bool(facts.get("nv_tegra_release")) or "jetson" in (facts.get("device_tree_model") or "").lower()


def _check(check, ok, detail, fix="", required=True, runtime=None):
    return {"check": check, "ok": bool(ok), "required": required, "detail": detail,
            "fix": "" if ok else fix, "runtime": runtime}


def _runtime_checks(facts, backend, provider):
    label = backend + (":" + provider if provider else "")
    jetson = is_jetson(facts)
    if backend == "onnxruntime":
        version = facts.get("onnxruntime_version")
        if not provider or provider == "CPUExecutionProvider":
            fix = "pip install onnxruntime"
        elif jetson:
            fix = "install the onnxruntime-gpu wheel built for your JetPack (NVIDIA's Jetson Zoo)"
        else:
            fix = "pip install onnxruntime-gpu (it replaces the CPU-only onnxruntime package)"
        detail = "onnxruntime " + version if version else "not importable"
        checks = [_check("onnxruntime", version, detail, fix, runtime=label)]
        if provider and version:
            providers = facts.get("onnxruntime_providers") or []
            if provider == "TensorrtExecutionProvider":
                fix += "; TensorRT's libraries must also be on the library path"
            checks.append(_check("provider " + provider, provider in providers,
                                 "available: " + (", ".join(providers) or "none"), fix, runtime=label))
        return checks
    if backend == "tensorrt":
        version = facts.get("tensorrt_version")
        fix = ("install JetPack's TensorRT Python bindings (apt install python3-libnvinfer) for this Python"
               if jetson else "pip install tensorrt (matching your CUDA driver)")
        return [_check("tensorrt", version, "tensorrt " + version if version else "not importable", fix,
                       runtime=label)]
    return [_check("runtime " + backend, False, "unknown runtime backend",
                   "use onnxruntime or tensorrt", runtime=label)]


def _clock_checks(facts):
    """Advisory: unlocked clocks make timings noisier, they do not make them wrong."""
    checks = []
    if is_jetson(facts):
        mode = (facts.get("nvpmodel") or "").strip()
        checks.append(_check("power mode (nvpmodel)", mode,
                             mode.splitlines()[0] if mode else "nvpmodel not found",
                             "nvpmodel ships with JetPack (nvidia-l4t-tools); set a mode with "
                             "`sudo nvpmodel -m <id>`, then `sudo jetson_clocks`", required=False))
        for gpu in facts.get("gpu_devfreq") or ():
            low, high = gpu.get("min_freq_hz"), gpu.get("max_freq_hz")
            checks.append(_check("gpu clock locked", low is not None and low == high,
                                 "{}: min {} Hz, max {} Hz".format(gpu.get("device"), low, high),
                                 "sudo jetson_clocks (pins the GPU at the power mode's maximum)",
                                 required=False))
    if facts.get("system") == "Linux":
        governor = facts.get("cpu_governor")
        if governor is None:
            checks.append(_check("cpu governor", True,
                                 "no cpufreq here (virtual machine?): clocks are the host's", required=False))
        else:
            low, high = facts.get("cpu_scaling_min_freq_khz"), facts.get("cpu_scaling_max_freq_khz")
            pinned = low is not None and low == high  # what jetson_clocks does, whatever the governor
            detail = governor + (f", pinned at {low} kHz" if pinned else "")
            checks.append(_check("cpu governor", governor == "performance" or pinned, detail,
                                 "sudo cpupower frequency-set --governor performance"
                                 + (" (or `sudo jetson_clocks`)" if is_jetson(facts) else ""),
                                 required=False))
    return checks


def doctor(facts, backend, provider=None):
    """Checks of `facts` for running `backend` (+ `provider`): [{check, ok, required, detail, fix, runtime}].

    A pure function of the facts, so the host can also judge facts it fetched over SSH. `runtime` is None for
    checks every runtime needs and "backend[:provider]" for the ones only this runtime needs.
    """
    version = facts.get("python_version") or "0"
    try:
        current = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        current = (0, 0)
    checks = [
        _check("python", current >= MIN_PYTHON, "{} ({})".format(version, facts.get("python_executable")),
               "use Python >= {}.{} on the device (pass --remote-python over SSH)".format(*MIN_PYTHON)),
        _check("numpy", facts.get("numpy_version"), facts.get("numpy_version") or "not importable",
               "pip install numpy"),
        _check("onnx", facts.get("onnx_version"), facts.get("onnx_version") or "not importable",
               "pip install onnx"),
    ]
    checks.extend(_runtime_checks(facts, backend, provider))
    checks.extend(_clock_checks(facts))
    return checks
