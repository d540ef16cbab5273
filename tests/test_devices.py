"""The device registry: every shipped YAML file, resolution of names, aliases and files, detection."""

from __future__ import annotations

import pathlib
import shutil

import pytest
import yaml

from edgeprune.devices import (
    PRECISIONS,
    DeviceSpec,
    builtin_device_files,
    detect_device,
    load_device_file,
    load_registry,
    local_facts,
    lookup_device,
    resolve_device,
)
from edgeprune.errors import BadInputError, DeviceError

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "device_output"
JETSONS = {"jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx", "jetson-nano"}
PIS = {"raspberry-pi-5", "raspberry-pi-4"}


@pytest.fixture(scope="module")
def registry() -> dict[str, DeviceSpec]:
    return load_registry()


def board(model: str | None = None, compatible: list[str] | None = None, **extra) -> dict:
    """Facts as profilers.sysinfo.collect() reports them, for a board that is not this machine."""
    facts = {"device_tree_model": model, "device_tree_compatible": compatible, "machine": "aarch64",
             "cpu_model": "ARM Cortex-A78AE", "nvidia_gpu": False}
    facts.update(extra)
    return facts


def write_variant(tmp_path: pathlib.Path, name: str, edit, source: str = "cpu") -> pathlib.Path:
    """A copy of a shipped device file, changed by `edit(data)`, as a user's device file."""
    data = yaml.safe_load((builtin_device_files()[0].parent / f"{source}.yaml").read_text())
    edit(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- every registry entry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", builtin_device_files(), ids=lambda p: p.stem)
def test_device_file_is_complete(path: pathlib.Path) -> None:
    spec = load_device_file(path)
    assert spec.name == path.stem
    assert spec.title and spec.description
    assert spec.runtimes and all(r.precisions for r in spec.runtimes)
    assert all(set(r.precisions) <= set(PRECISIONS) for r in spec.runtimes)
    assert spec.alignment > 0 and all(step > 0 for step in spec.alignment_by_precision.values())
    assert spec.sources and all("http" in source for source in spec.sources)
    assert all(path.startswith("/") for paths in spec.sensors.values() for path in paths)
    assert all(isinstance(arg, str) for command in spec.clocks.lock for arg in command)
    if spec.family in ("jetson", "raspberry-pi"):
        # A fixed board has datasheet figures; generic kinds (this host's CPU, any NVIDIA GPU) cannot.
        assert spec.peak is not None and spec.peak.mode
        assert spec.peak.fp32_gflops > 0 and spec.peak.bandwidth_gbs > 0
        assert spec.detect.model_contains and spec.detect.compatible
        assert "thermal" in spec.sensors and spec.clocks.query and spec.clocks.lock
    if spec.peak is not None:
        peak = spec.peak
        figures = (peak.fp32_gflops, peak.fp16_gflops, peak.int8_tops, peak.int8_tops_sparse,
                   peak.bandwidth_gbs)
        assert all(value is None or value > 0 for value in figures)
        if any("fp16" in r.precisions for r in spec.runtimes):
            assert spec.peak.fp16_gflops, "a device that runs fp16 states its fp16 peak"
        if any("int8" in r.precisions for r in spec.runtimes) and spec.family == "jetson":
            assert spec.peak.int8_tops
    if spec.family == "jetson":
        assert "gpu_freq" in spec.sensors
        assert spec.runtimes[0].backend == "tensorrt"


def test_registry_holds_every_kind(registry) -> None:
    assert set(registry) == {"cpu", "cuda"} | JETSONS | PIS


def test_names_and_aliases_are_unique_and_resolve_to_their_device(registry) -> None:
    seen = {}
    for spec in registry.values():
        for key in (spec.name, *spec.aliases):
            assert key not in seen, f"{key} is claimed by {seen.get(key)} and {spec.name}"
            seen[key] = spec.name
            assert lookup_device(key, registry) == [spec]
    family_aliases = {a for spec in registry.values() for a in spec.family_aliases}
    assert not family_aliases & set(seen)


def test_family_aliases_list_their_members(registry) -> None:
    assert {s.name for s in lookup_device("jetson", registry)} == JETSONS
    assert {s.name for s in lookup_device("rpi", registry)} == PIS
    assert {s.name for s in lookup_device("raspberry-pi", registry)} == PIS


# --- resolution --------------------------------------------------------------------------------------------


def test_resolve_by_name_alias_and_spelling(registry) -> None:
    nano = board("NVIDIA Jetson Orin Nano Developer Kit")
    assert resolve_device("jetson-orin-nano", facts=nano).name == "jetson-orin-nano"
    assert resolve_device("orin-nano", facts=nano).name == "jetson-orin-nano"
    assert resolve_device("Jetson_Orin_Nano", facts=nano).name == "jetson-orin-nano"
    assert resolve_device("cpu", facts=nano).name == "cpu"


def test_family_alias_resolves_to_the_detected_model(registry) -> None:
    agx = board("NVIDIA Jetson AGX Orin Developer Kit")
    assert resolve_device("jetson", host="me@agx", facts=agx, registry=registry).name == "jetson-agx-orin"
    assert resolve_device("rpi", facts=board("Raspberry Pi 5 Model B Rev 1.0")).name == "raspberry-pi-5"


def test_resolve_a_users_device_file(tmp_path) -> None:
    def edit(data):
        data.update(name="my-board", title="My board", aliases=["mine"])

    path = write_variant(tmp_path, "my-board", edit)
    spec = resolve_device(str(path), facts=board("Anything"))
    assert (spec.name, spec.source) == ("my-board", str(path))
    assert resolve_device(str(path), host="me@board").name == "my-board"


def test_unknown_device_suggests_close_matches() -> None:
    with pytest.raises(BadInputError) as err:
        resolve_device("jetsn", facts=board())
    assert err.value.message == "unknown device 'jetsn'"
    assert err.value.hint.startswith("did you mean: jetson")
    assert "`edgeprune devices` lists them" in err.value.hint


def test_missing_device_file_is_bad_input(tmp_path) -> None:
    with pytest.raises(BadInputError, match="not found"):
        resolve_device(str(tmp_path / "nope.yaml"))


def test_jetson_on_this_machine_without_host_says_what_it_is(registry) -> None:
    facts = local_facts()
    if "jetson" in (facts.get("device_tree_model") or "").lower():
        pytest.skip("this machine is a Jetson")
    with pytest.raises(DeviceError) as err:
        resolve_device("jetson")
    assert err.value.exit_code == 2
    assert err.value.message.startswith("this machine is not a Jetson (it is ")
    assert (facts.get("device_tree_model") or facts.get("cpu_model") or "") in err.value.message
    assert "--host user@" in err.value.hint and "over SSH" in err.value.hint


def test_wrong_model_names_the_one_it_is(registry) -> None:
    with pytest.raises(DeviceError) as err:
        resolve_device("jetson-orin-nano", facts=board("NVIDIA Jetson AGX Orin Developer Kit"),
                       registry=registry)
    assert err.value.message == ("this machine is not a Jetson Orin Nano "
                                 "(it is NVIDIA Jetson AGX Orin Developer Kit)")
    assert "--device jetson-agx-orin" in err.value.hint


def test_wrong_family_over_ssh(registry) -> None:
    with pytest.raises(DeviceError) as err:
        resolve_device("jetson", host="me@pi", facts=board("Raspberry Pi 5 Model B Rev 1.0"),
                       registry=registry)
    assert err.value.message == "me@pi is not a Jetson (it is Raspberry Pi 5 Model B Rev 1.0)"
    assert "check --host" in err.value.hint and "--device raspberry-pi-5" in err.value.hint


def test_cuda_needs_an_nvidia_gpu(registry) -> None:
    with pytest.raises(DeviceError, match="is not an NVIDIA GPU host"):
        resolve_device("cuda", facts={"machine": "x86_64", "cpu_model": "AMD EPYC", "nvidia_gpu": False},
                       registry=registry)
    gpu_host = {"machine": "x86_64", "nvidia_gpu": True}
    assert resolve_device("gpu", facts=gpu_host, registry=registry).name == "cuda"


def test_host_without_facts(registry) -> None:
    assert resolve_device("orin-nano", host="me@nano", registry=registry).name == "jetson-orin-nano"
    with pytest.raises(BadInputError, match="names a family"):
        resolve_device("jetson", host="me@nano", registry=registry)


# --- detection from real board strings ---------------------------------------------------------------------


@pytest.mark.parametrize("model, expected", [
    ("NVIDIA Jetson Orin Nano Developer Kit", "jetson-orin-nano"),
    ("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super", "jetson-orin-nano"),
    ("NVIDIA Jetson AGX Orin Developer Kit", "jetson-agx-orin"),
    ("Jetson AGX Orin", "jetson-agx-orin"),
    ("NVIDIA Orin NX Developer Kit", "jetson-orin-nx"),
    ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", "jetson-orin-nx"),
    ("NVIDIA Jetson Xavier NX Developer Kit", "jetson-xavier-nx"),
    ("NVIDIA Jetson Nano Developer Kit", "jetson-nano"),
    ("NVIDIA Jetson Nano 2GB Developer Kit", "jetson-nano"),
    ("Raspberry Pi 5 Model B Rev 1.0", "raspberry-pi-5"),
    ("Raspberry Pi 4 Model B Rev 1.4", "raspberry-pi-4"),
    ("Raspberry Pi 400 Rev 1.0", "raspberry-pi-4"),
    ("Raspberry Pi 3 Model B Rev 1.2", "cpu"),  # not a registry board: just its CPU
])
def test_detect_from_device_tree_model(registry, model, expected) -> None:
    assert detect_device(board(model), registry).name == expected


@pytest.mark.parametrize("fixture, expected", [
    ("device_tree_model_agx_orin.txt", "jetson-agx-orin"),
    ("device_tree_model_orin_nx.txt", "jetson-orin-nx"),
    ("device_tree_model_rpi5.txt", "raspberry-pi-5"),
    ("device_tree_model_rpi3b.bin", "cpu"),
])
def test_detect_from_captured_device_tree_files(registry, fixture, expected) -> None:
    raw = (FIXTURES / fixture).read_bytes().decode("utf-8")
    model = raw.replace("\x00", "").strip()  # as profilers.sysinfo.collect() reads it
    assert detect_device(board(model), registry).name == expected


def test_vendor_carrier_is_detected_by_module_part_number(registry) -> None:
    facts = board("reComputer J4012",
                  ["nvidia,p3768-0000+p3767-0000", "nvidia,p3767-0000", "nvidia,tegra234"])
    assert detect_device(facts, registry).name == "jetson-orin-nx"
    facts = board("Some Carrier",
                  ["nvidia,p3768-0000+p3767-0005-super", "nvidia,p3767-0005", "nvidia,tegra234"])
    assert resolve_device("jetson", host="me@x", facts=facts, registry=registry).name == "jetson-orin-nano"


def test_a_jetson_stays_a_jetson_even_with_nvidia_smi(registry) -> None:
    facts = board("NVIDIA Jetson AGX Orin Developer Kit", nvidia_gpu=True)
    assert detect_device(facts, registry).name == "jetson-agx-orin"
    assert detect_device({"machine": "x86_64", "nvidia_gpu": True}, registry).name == "cuda"


# --- runtimes and alignment ---------------------------------------------------------------------------------


def test_runtime_follows_preference_and_installed_facts(registry) -> None:
    nano = registry["jetson-orin-nano"]
    assert nano.runtime().backend == "tensorrt"
    ort_gpu = {"onnxruntime_version": "1.20.0",
               "onnxruntime_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    chosen = nano.runtime(facts=ort_gpu)
    assert (chosen.backend, chosen.provider) == ("onnxruntime", "CUDAExecutionProvider")
    with_trt = {**ort_gpu, "tensorrt_version": "10.3.0"}
    assert nano.runtime(precision="int8", facts=with_trt).backend == "tensorrt"
    with pytest.raises(DeviceError, match="has no runtime installed") as err:
        nano.runtime(facts={})
    assert "edgeprune doctor --device jetson-orin-nano" in err.value.hint


def test_runtime_refuses_what_the_device_cannot_do(registry) -> None:
    with pytest.raises(DeviceError, match="device cpu has no tensorrt runtime"):
        registry["cpu"].runtime(backend="tensorrt")
    with pytest.raises(DeviceError, match="device jetson-nano has no runtime for int8"):
        registry["jetson-nano"].runtime(precision="int8")
    assert registry["cpu"].runtime(facts=local_facts()).provider == "CPUExecutionProvider"


def test_alignment_for(registry) -> None:
    cpu = registry["cpu"]
    assert cpu.alignment_for({"cpu_flags": ["avx2", "fma"]}) == 8
    assert cpu.alignment_for({"cpu_flags": ["avx2", "avx512f"]}) == 16
    orin = registry["jetson-agx-orin"]
    assert [orin.alignment_for(precision=p) for p in ("fp32", "fp16", "int8")] == [8, 8, 32]
    assert registry["raspberry-pi-5"].alignment_for(board()) == 4


# --- validation of device files ----------------------------------------------------------------------------


def test_malformed_yaml_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: my-board\ntitle: My board\n  aliases: [a]\n")
    with pytest.raises(BadInputError) as err:
        resolve_device(str(path))
    assert str(path) in err.value.message and "line 3" in err.value.message
    assert "fix the YAML" in err.value.hint


def test_duplicate_key_is_refused_with_its_line(tmp_path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("name: my-board\ntitle: x\nname: other\n")
    with pytest.raises(BadInputError, match=r"duplicate key 'name' at line 3"):
        load_device_file(path)


@pytest.mark.parametrize("edit, problem", [
    (lambda d: d.pop("runtimes"), "field 'runtimes' is missing"),
    (lambda d: d.update(alignment="8"), "field 'alignment' must be a positive integer"),
    (lambda d: d.update(peak={"mode": "x", "fp32_gflops": -1, "bandwidth_gbs": 10}),
     "field 'peak.fp32_gflops' must be a positive number"),
    (lambda d: d["runtimes"][0].update(precisions=["fp8"]), "field 'runtimes[0].precisions' entries must be"),
    (lambda d: d["runtimes"][0].update(backend="openvino"), "field 'runtimes[0].backend' must be one of"),
    (lambda d: d.update(alignmnet=8), "field 'alignmnet' is not a known field (did you mean 'alignment'?)"),
    (lambda d: d["clocks"].update(lock=["sudo jetson_clocks"]), "field 'clocks.lock[0]' must be a command"),
    (lambda d: d.update(detect={}), "field 'detect' needs a rule"),
    (lambda d: d.update(family="phone"), "field 'family' must be one of"),
    (lambda d: d.update(sources=[]), "field 'sources' must not be empty"),
])
def test_ill_typed_fields_are_named(tmp_path, edit, problem) -> None:
    path = write_variant(tmp_path, "variant", edit)
    with pytest.raises(BadInputError) as err:
        load_device_file(path)
    assert str(path) in err.value.message
    assert problem in err.value.message


def test_duplicate_names_and_aliases_across_files_raise(tmp_path) -> None:
    copy = tmp_path / "cpu.yaml"
    shutil.copy(builtin_device_files()[0].parent / "cpu.yaml", copy)
    with pytest.raises(BadInputError, match="device 'cpu' is defined twice"):
        load_registry([copy])

    def steal_alias(data):
        data.update(name="thief", aliases=["orin-nano"])

    with pytest.raises(BadInputError, match="'orin-nano' is claimed by both"):
        load_registry([write_variant(tmp_path, "thief", steal_alias)])

    def family_clash(data):
        data.update(name="lonely", aliases=["lonely-cpu"], family_aliases=["jetson"])

    with pytest.raises(BadInputError, match="family alias 'jetson' is shared by devices of different"):
        load_registry([write_variant(tmp_path, "lonely", family_clash)])


def test_extra_files_join_the_registry(tmp_path) -> None:
    def edit(data):
        data.update(name="orin-nano-carrier", aliases=["my-carrier"], family="jetson",
                    family_aliases=["jetson"], detect={"model_contains": ["My Carrier"]})

    registry = load_registry([write_variant(tmp_path, "carrier", edit, source="jetson-orin-nano")])
    found = resolve_device("jetson", facts=board("My Carrier v2"), registry=registry)
    assert found.name == "orin-nano-carrier"
