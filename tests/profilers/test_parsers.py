"""Device-tool parsers against real captured output (see tests/fixtures/device_output/SOURCES.md)."""

import pathlib

import pytest

from profilers.parsers import devicetree, nvpmodel, tegrastats, trtexec, vcgencmd

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "device_output"


def read(name):
    return (FIXTURES / name).read_text(encoding="utf-8")


def test_every_fixture_has_a_source():
    sources = read("SOURCES.md")
    for path in FIXTURES.iterdir():
        if path.name != "SOURCES.md":
            assert "`%s`" % path.name in sources, path.name


# --- tegrastats ---------------------------------------------------------------------------------------------


def test_tegrastats_tx2_old_format_without_units():
    (line,) = tegrastats.parse_tegrastats_output(read("tegrastats_tx2_2019.txt"))
    assert line["timestamp"] is None
    assert line["ram"] == {"used_mb": 2020, "total_mb": 7852, "lfb_blocks": 1164, "lfb_block_mb": 4}
    assert line["swap"] is None
    assert [c["load_pct"] for c in line["cpus"]] == [9, 21, 25, 3, 1, 1]
    assert {c["freq_mhz"] for c in line["cpus"]} == {345}
    assert line["emc"] == {"on": True, "load_pct": 0, "freq_mhz": None}
    assert line["gpu"] == {"on": True, "load_pct": 0, "freq_mhz": []}
    assert line["temperatures_c"]["Tdiode"] == 41.25
    assert line["temperatures_c"]["PMIC"] == 100.0
    assert line["power_mw"]["VDD_IN"] == {"current": 3140, "average": 3208}
    assert line["power_mw"]["VDD_4V0_WIFI"] == {"current": 633, "average": 527}
    assert len(line["power_mw"]) == 6


def test_tegrastats_xavier_rails_named_like_sensors():
    line = tegrastats.parse_tegrastats_line(read("tegrastats_xavier_agx_jp42.txt"))
    assert line["swap"] == {"used_mb": 898, "total_mb": 8192, "cached_mb": 23}
    assert len(line["cpus"]) == 8
    assert line["temperatures_c"]["GPU"] == 30.5  # the GPU@30.5C sensor ...
    assert line["power_mw"]["GPU"] == {"current": 463, "average": 463}  # ... and the GPU 463/463 rail
    assert line["power_mw"]["SYS5V"] == {"current": 3306, "average": 3306}


def test_tegrastats_xavier_nx_mts_and_single_gpu_clock():
    line = tegrastats.parse_tegrastats_line(read("tegrastats_xavier_nx_jp4.txt"))
    assert line["mts"] == {"fg_pct": 1, "bg_pct": 9}
    assert line["gpu"] == {"on": True, "load_pct": 0, "freq_mhz": [1109]}
    assert line["emc"] == {"on": True, "load_pct": 2, "freq_mhz": 1600}
    assert line["cpus"][5] == {"online": True, "load_pct": 96, "freq_mhz": 1420}
    assert line["engines"]["APE"] == {"on": True, "load_pct": None, "freq_mhz": 150}
    assert line["power_mw"]["VDD_CPU_GPU_CV"] == {"current": 2706, "average": 2119}


def test_tegrastats_nano_iram_and_pom_rails():
    line = tegrastats.parse_tegrastats_line(read("tegrastats_nano_jp461.txt"))
    assert line["ram"]["total_mb"] == 3964
    assert line["iram"] == {"used_kb": 0, "total_kb": 252, "lfb_kb": 252}
    assert [c["freq_mhz"] for c in line["cpus"]] == [1224] * 4
    assert line["gpu"]["freq_mhz"] == [76]
    assert line["temperatures_c"] == {
        "PLL": 37.0,
        "CPU": 40.0,
        "PMIC": 50.0,
        "GPU": 40.0,
        "AO": 45.0,
        "thermal": 40.0,
    }
    assert line["power_mw"]["POM_5V_IN"] == {"current": 1750, "average": 1628}
    assert line["power_mw"]["POM_5V_CPU"] == {"current": 366, "average": 406}


def test_tegrastats_jetpack5_timestamp_and_milliwatts():
    line = tegrastats.parse_tegrastats_line(read("tegrastats_xavier_nx_jp512.txt"))
    assert line["timestamp"] == "07-09-2024 13:31:31"
    assert [c["freq_mhz"] for c in line["cpus"]] == [1397, 1192, 1190, 1190, 1190, 1190]
    assert line["emc"] == {"on": True, "load_pct": 2, "freq_mhz": 204}
    assert line["gpu"] == {"on": True, "load_pct": 0, "freq_mhz": [114]}
    assert line["engines"]["VIC_FREQ"]["freq_mhz"] == 115
    assert line["power_mw"]["VDD_IN"] == {"current": 2763, "average": 2846}


def test_tegrastats_agx_orin_offline_sensors_and_repeated_rail():
    line = tegrastats.parse_tegrastats_line(read("tegrastats_agx_orin_64gb.txt"))
    assert line["ram"] == {"used_mb": 4321, "total_mb": 62801, "lfb_blocks": 1759, "lfb_block_mb": 4}
    assert len(line["cpus"]) == 12
    assert line["gpu"] == {"on": True, "load_pct": 0, "freq_mhz": [0, 0]}
    assert line["emc"]["freq_mhz"] == 2133
    temps = line["temperatures_c"]
    assert temps["tj"] == 44.343 and temps["CPU"] == 44.562 and temps["SOC1"] == 41.25
    assert temps["CV0"] is None and temps["GPU"] is None  # printed as -256C: sensor offline
    assert line["power_mw"]["VIN_SYS_5V0"] == {"current": 4025, "average": 4025}
    assert line["power_mw"]["NC"] == line["power_mw"]["NC#2"] == {"current": 0, "average": 0}
    assert line["power_mw"]["VDDQ_VDD2_1V8AO"] == {"current": 301, "average": 301}


def test_tegrastats_orin_r36_engines_and_three_lines():
    lines = tegrastats.parse_tegrastats_output(read("tegrastats_agx_orin_r36_4_4.txt"))
    assert [line["timestamp"][-8:] for line in lines] == ["18:42:06", "18:42:07", "18:42:08"]
    first = lines[0]
    assert first["cpus"][0] == {"online": True, "load_pct": 14, "freq_mhz": 2188}
    assert first["engines"]["NVENC"] == {"on": True, "load_pct": 79, "freq_mhz": 166}
    assert first["engines"]["VIC"] == {"on": True, "load_pct": 36, "freq_mhz": 115}
    assert first["engines"]["NVDLA1"] == {"on": False, "load_pct": None, "freq_mhz": None}
    assert first["temperatures_c"] == {
        "cpu": 52.562,
        "soc2": 48.437,
        "soc0": 49.093,
        "tj": 52.562,
        "soc1": 49.656,
    }
    assert lines[1]["power_mw"]["VIN_SYS_5V0"] == {"current": 4607, "average": 4657}
    assert lines[2]["cpus"][7]["load_pct"] == 70
    assert lines[2]["engines"]["NVENC"]["freq_mhz"] == 179


def test_tegrastats_thor_gpu_without_load():
    line = tegrastats.parse_tegrastats_line(read("tegrastats_r38_4_thor.txt"))
    assert len(line["cpus"]) == 14
    assert line["ram"]["total_mb"] == 125773
    assert line["gpu"] == {"on": True, "load_pct": None, "freq_mhz": [0, 0, 0]}
    assert line["engines"]["NVENC0_FREQ"] == {"on": True, "load_pct": None, "freq_mhz": 0}
    assert line["engines"]["VIC"]["on"] is False
    assert line["temperatures_c"]["soc345"] == 34.5
    assert line["power_mw"]["VDD_CPU_SOC_MSS"] == {"current": 4165, "average": 4165}


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("", "empty"),
        ("hello world", "unrecognised tegrastats field"),
        ("CPU [5%@1224,4%@1224] EMC_FREQ 0%", "no 'RAM"),
        ("RAM 1923/3964MB (lfb 2x2MB) EMC_FREQ 0%", "no 'CPU"),
        ("RAM 1923/3964MB CPU [5%@1224,4%@1224] GR3D_FREQ 12%@[76,", "unrecognised tegrastats field"),
        ("RAM 1923/3964MB CPU [5%@1224,fast] EMC_FREQ 0%", "CPU core entry"),
        ("RAM 1923/3964MB CPU [5%@1224] GPU@hotC", "unrecognised tegrastats field"),
        ("RAM 1923/3964MB RAM 1/2MB CPU [5%@1224]", "appears twice"),
    ],
)
def test_tegrastats_malformed(text, complaint):
    with pytest.raises(ValueError, match=complaint):
        tegrastats.parse_tegrastats_line(text)


def test_tegrastats_truncated_real_line_is_rejected():
    text = read("tegrastats_nano_jp461.txt")
    with pytest.raises(ValueError):
        tegrastats.parse_tegrastats_line(text[: text.index("POM_5V_CPU") + len("POM_5V_CPU 36")] + "6/")


# --- nvpmodel -----------------------------------------------------------------------------------------------


def test_nvpmodel_thor_maxn():
    assert nvpmodel.parse_nvpmodel_query(read("nvpmodel_q_thor_maxn.txt")) == {
        "mode_name": "MAXN",
        "mode_id": 0,
    }


def test_nvpmodel_orin_nano_25w():
    assert nvpmodel.parse_nvpmodel_query(read("nvpmodel_q_orin_nano_25w.txt")) == {
        "mode_name": "25W",
        "mode_id": 1,
    }


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("", "no 'NV Power Mode:'"),
        ("NV Power Mode: MAXN\n", "no mode id"),
        ("NV Power Mode: MAXN\nzero\n", "expected the mode id"),
        ("nvpmodel: command not found\n", "no 'NV Power Mode:'"),
    ],
)
def test_nvpmodel_malformed(text, complaint):
    with pytest.raises(ValueError, match=complaint):
        nvpmodel.parse_nvpmodel_query(text)


# --- device tree and nv_tegra_release -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, model",
    [
        ("device_tree_model_agx_orin.txt", "NVIDIA Jetson AGX Orin Developer Kit"),
        ("device_tree_model_orin_nx.txt", "NVIDIA Orin NX Developer Kit"),
        ("device_tree_model_rpi5.txt", "Raspberry Pi 5 Model B Rev 1.0"),
        ("device_tree_model_rpi3b.bin", "Raspberry Pi 3 Model B Rev 1.2"),
    ],
)
def test_device_tree_model(name, model):
    assert devicetree.parse_device_tree_model((FIXTURES / name).read_bytes()) == model


def test_device_tree_model_strips_the_trailing_nul():
    raw = (FIXTURES / "device_tree_model_rpi3b.bin").read_bytes()
    assert raw.endswith(b"\x00") and len(raw) == 31
    assert devicetree.parse_device_tree_model(raw.decode("ascii")) == "Raspberry Pi 3 Model B Rev 1.2"


@pytest.mark.parametrize(
    "data, complaint",
    [
        (b"", "empty"),
        (b"\x00", "empty"),
        (b"raspberrypi,5-model-b\x00brcm,bcm2712\x00", "several NUL-separated"),
        (b"\xff\xfe", "not UTF-8"),
        ("Jetson\x07", "non-printable"),
    ],
)
def test_device_tree_model_malformed(data, complaint):
    with pytest.raises(ValueError, match=complaint):
        devicetree.parse_device_tree_model(data)


def test_tegra_release_r32():
    release = devicetree.parse_tegra_release(read("nv_tegra_release_r32_5_1.txt"))
    assert release["release"] == "R32" and release["major"] == 32
    assert release["revision"] == "5.1" and release["l4t_version"] == "32.5.1"
    assert release["board"] == "t186ref" and release["gcid"] == "26202423" and release["eabi"] == "aarch64"
    assert release["date"] == "Fri Feb 19 16:50:29 UTC 2021"
    assert release["kernel_variant"] is None


def test_tegra_release_r36_with_vendor_lines():
    release = devicetree.parse_tegra_release(read("nv_tegra_release_r36_4_3_seeed.txt"))
    assert release["l4t_version"] == "36.4.3"
    assert release["board"] == "generic"
    assert release["date"] == "Wed Jan  8 01:49:37 UTC 2025"
    assert release["kernel_variant"] == "oot"
    assert release["settings"] == {
        "TARGET_USERSPACE_LIB_DIR": "nvidia",
        "TARGET_USERSPACE_LIB_DIR_PATH": "usr/lib/aarch64-linux-gnu/nvidia",
    }
    assert release["comments"][1] == "branch R36.4.3"


def test_tegra_release_r39_twelve_hour_date():
    release = devicetree.parse_tegra_release(read("nv_tegra_release_r39_2_0.txt"))
    assert release["l4t_version"] == "39.2.0"
    assert release["gcid"] == "45755727"
    assert release["date"] == "Mon Jun  1 09:28:48 PM UTC 2026"


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("", "empty"),
        ("Ubuntu 22.04.5 LTS\n", "not an nv_tegra_release"),
        ("# R35 (release), GCID: 33958178, BOARD: t186ref\n", "REVISION"),
        ("# R35 (release), REVISION: four, GCID: 1\n", "REVISION"),
        ("# R35 (release), REVISION: 4.1, garbage\n", "malformed field"),
        ("# R35 (release), REVISION: 4.1, GCID: 1\nthis is not a setting\n", "unrecognised line"),
    ],
)
def test_tegra_release_malformed(text, complaint):
    with pytest.raises(ValueError, match=complaint):
        devicetree.parse_tegra_release(text)


# --- vcgencmd -----------------------------------------------------------------------------------------------


def test_vcgencmd_rpi3_temp_and_undervoltage():
    temp, throttled, temp_again = read("vcgencmd_rpi3_temp_throttled.txt").splitlines()
    assert vcgencmd.parse_measure_temp(temp) == 38.6 == vcgencmd.parse_measure_temp(temp_again)
    state = vcgencmd.parse_get_throttled(throttled)
    assert state["raw"] == 0x50005
    assert state["under_voltage"] and state["throttled"] and not state["arm_frequency_capped"]
    assert state["under_voltage_occurred"] and state["throttled_occurred"]
    assert not state["soft_temperature_limit"] and not state["soft_temperature_limit_occurred"]
    assert state["ok"] is False


def test_vcgencmd_rpi3_clock_temp_not_throttled():
    clock, temp, throttled = read("vcgencmd_rpi3_clock_temp_throttled.txt").splitlines()
    assert vcgencmd.parse_measure_clock(clock) == {"clock_id": 45, "hz": 1400000000, "mhz": 1400.0}
    assert vcgencmd.parse_measure_temp(temp) == 62.3
    state = vcgencmd.parse_get_throttled(throttled)
    assert state["raw"] == 0 and state["ok"] is True


def test_vcgencmd_measure_clock_rpi2_and_idle_rpi5():
    assert vcgencmd.parse_measure_clock(read("vcgencmd_rpi2_measure_clock_v3d.txt")) == {
        "clock_id": 43,
        "hz": 249999000,
        "mhz": 249.999,
    }
    assert vcgencmd.parse_measure_clock(read("vcgencmd_rpi5_measure_clock_v3d.txt")) == {
        "clock_id": 0,
        "hz": 0,
        "mhz": 0.0,
    }


@pytest.mark.parametrize(
    "parse, text, complaint",
    [
        (vcgencmd.parse_measure_temp, "", "expected one line"),
        (vcgencmd.parse_measure_temp, "temp=hot'C", "expected"),
        (vcgencmd.parse_measure_temp, "temp=38.6'C\ntemp=38.6'C", "got 2 lines"),
        (vcgencmd.parse_measure_clock, "frequency(45)=", "expected"),
        (vcgencmd.parse_measure_clock, "VCHI initialization failed", "expected"),
        (vcgencmd.parse_get_throttled, "throttled=0xZZ", "expected"),
        (vcgencmd.parse_get_throttled, "throttled=50005", "expected"),
    ],
)
def test_vcgencmd_malformed(parse, text, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse(text)


# --- trtexec ------------------------------------------------------------------------------------------------


def test_trtexec_8_4_xavier_summary_with_p99_only():
    result = trtexec.parse_trtexec_output(read("trtexec_trt8400_xavier_agx.txt"))
    assert result["tensorrt_version"] == "8.4.0"
    assert result["status"] == "PASSED"
    assert result["command"] == ["trtexec", "--loadEngine=mnist16.trt", "--batch=16"]
    assert result["precision_flags"] == []
    assert result["throughput_qps"] == 41087.7
    assert result["latency_ms"] == {
        "min": 0.387207,
        "max": 0.447357,
        "mean": 0.402238,
        "median": 0.401947,
        "percentiles": {"99": 0.420288},
    }
    assert result["gpu_compute_time_ms"]["median"] == 0.388443
    assert result["enqueue_time_ms"]["mean"] == 0.090497
    assert result["h2d_latency_ms"]["percentiles"] == {"99": 0.0272217}
    assert result["d2h_latency_ms"]["max"] == 0.00537109
    assert result["end_to_end_host_latency_ms"] is None
    assert result["total_host_walltime_s"] == 3.00119
    assert result["total_gpu_compute_time_s"] == 2.99202
    assert result["warnings"] == []


def test_trtexec_8_5_orin_nano_fp16():
    result = trtexec.parse_trtexec_output(read("trtexec_trt8502_orin_nano_fp16.txt"))
    assert result["tensorrt_version"] == "8.5.2"
    assert result["precision_flags"] == ["--fp16"]
    assert result["throughput_qps"] == 97.8649
    assert result["latency_ms"]["percentiles"] == {"90": 10.9329, "95": 10.949, "99": 10.9744}
    assert result["gpu_compute_time_ms"] == {
        "min": 10.0343,
        "max": 10.3575,
        "mean": 10.1824,
        "median": 10.1851,
        "percentiles": {"90": 10.3206, "95": 10.338, "99": 10.356},
    }
    assert result["h2d_latency_ms"]["median"] == 0.310486
    assert result["d2h_latency_ms"]["min"] == 0.17041
    assert result["total_gpu_compute_time_s"] == 3.02418


def test_trtexec_10_13_bf16_with_warnings_and_build_tag():
    result = trtexec.parse_trtexec_output(read("trtexec_trt101300_bf16.txt"))
    assert result["tensorrt_version"] == "10.13.0"
    assert result["build"] == "b35"
    assert result["precision_flags"] == ["--bf16"]
    assert result["command"][1] == "--onnx=transformer_step2.onnx"
    assert result["throughput_qps"] == 0.562059
    assert result["latency_ms"]["median"] == 1667.89
    assert result["enqueue_time_ms"]["percentiles"]["99"] == 1672.49
    assert result["gpu_compute_time_ms"]["mean"] == 1666.2
    assert result["total_host_walltime_s"] == 17.7917
    assert len(result["warnings"]) == 2
    assert result["warnings"][0].startswith("* Throughput may be bound by Enqueue Time")


@pytest.mark.parametrize(
    "tag, version",
    [
        ("v8400", "8.4.0"),
        ("v8502", "8.5.2"),
        ("v8201", "8.2.1"),
        ("v100300", "10.3.0"),
        ("v101300", "10.13.0"),
        ("v100001", "10.0.1"),
        ("v8.6.1", "8.6.1"),
    ],
)
def test_trtexec_version_tag(tag, version):
    assert trtexec.decode_version_tag(tag) == version


def _summary(*lines):
    head = [
        "[02/26/2024-10:43:06] [I] === Performance summary ===",
        "[02/26/2024-10:43:06] [I] Throughput: 97.8649 qps",
    ]
    return "\n".join(head + list(lines)) + "\n"


LATENCY = (
    "[02/26/2024-10:43:06] [I] Latency: min = 10.642 ms, max = 10.9861 ms, mean = 10.7971 ms, "
    "median = 10.7972 ms"
)
COMPUTE = (
    "[02/26/2024-10:43:06] [I] GPU Compute Time: min = 10.0343 ms, max = 10.3575 ms, mean = 10.1824 ms, "
    "median = 10.1851 ms"
)


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("", "no '=== Performance summary ==='"),
        (
            "[07/14/2023-11:55:18] [I] Host Latency\n[07/14/2023-11:55:18] [I] min: 89.3 ms\n",
            "no '=== Performance",
        ),
        ("[I] === Performance summary ===\n" + LATENCY + "\n" + COMPUTE + "\n", "no 'Throughput"),
        (_summary(COMPUTE), "no 'Latency:' line"),
        (_summary(LATENCY), "no 'GPU Compute Time:' line"),
        (_summary(LATENCY.replace(", median = 10.7972 ms", ""), COMPUTE), "missing median"),
        (_summary(LATENCY.replace("10.642 ms", "10.642 us"), COMPUTE), "cannot read"),
        (_summary(LATENCY, COMPUTE, "[I] Something new: 3 widgets"), "unrecognised line"),
        (_summary(LATENCY, LATENCY, COMPUTE), "repeats"),
    ],
)
def test_trtexec_malformed(text, complaint):
    with pytest.raises(ValueError, match=complaint):
        trtexec.parse_trtexec_output(text)


def test_trtexec_real_log_cut_before_gpu_compute_is_rejected():
    text = read("trtexec_trt8502_orin_nano_fp16.txt")
    with pytest.raises(ValueError, match="GPU Compute Time"):
        trtexec.parse_trtexec_output(text[: text.index("[02/26/2024-10:43:06] [I] GPU Compute Time")])
