"""Device kinds: the `devices/*.yaml` registry, what `--device` names, and which device this machine is.

A device file describes a *kind* of device (a Jetson Orin Nano, a Raspberry Pi 5, this host's CPU); where the
device is comes from `--host`. `resolve_device` turns a name, an alias, a family alias (`jetson`, `rpi`) or a
user's YAML file into one `DeviceSpec`, and checks it against the facts `profilers/sysinfo.py` collected on
the device, so that `--device jetson` on an x86 VM fails with one clear line instead of measuring the VM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from .errors import BadInputError, DeviceError

BACKENDS = ("onnxruntime", "tensorrt")
PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")
PRECISIONS = ("fp32", "fp16", "int8")
# family -> (article, noun), for "this machine is not a Jetson".
FAMILIES = {
    "cpu": ("a", "CPU host"),
    "cuda": ("an", "NVIDIA GPU host"),
    "jetson": ("a", "Jetson"),
    "raspberry-pi": ("a", "Raspberry Pi"),
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_FILE_HINT = "devices/cpu.yaml and devices/jetson-orin-nano.yaml in edgeprune's sources are complete examples"


@dataclass(frozen=True)
class RuntimeSpec:
    """One way to run a model on the device: a backend, its execution provider, the precisions it takes."""

    backend: str
    provider: str | None
    precisions: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.backend} ({self.provider})" if self.provider else self.backend

    def available(self, facts: Mapping[str, Any]) -> bool:
        """Whether `facts` (from `profilers.sysinfo.collect`) show this runtime installed."""
        if self.backend == "tensorrt":
            return bool(facts.get("tensorrt_version"))
        providers = facts.get("onnxruntime_providers") or ()
        return bool(facts.get("onnxruntime_version")) and self.provider in (None, *providers)


@dataclass(frozen=True)
class DetectSpec:
    """How to recognise the device from its facts.

    The board is identified by its device-tree model (`model_contains`: substrings) or by its compatible list
    (`compatible`: prefixes of entries, e.g. a Jetson module's part number, which no carrier board renames);
    either suffices. `machine` and `nvidia_gpu`, when given, must hold as well.
    """

    model_contains: tuple[str, ...] = ()
    compatible: tuple[str, ...] = ()
    machine: tuple[str, ...] = ()
    nvidia_gpu: bool | None = None

    def score(self, facts: Mapping[str, Any]) -> int:
        """0 when the facts do not match, else higher for more specific rules (board > GPU > arch)."""
        score = 0
        if self.model_contains or self.compatible:
            model = (facts.get("device_tree_model") or "").casefold()
            entries = facts.get("device_tree_compatible") or ()
            hits = [len(text) for text in self.model_contains if text.casefold() in model]
            hits += [len(prefix) for prefix in self.compatible if any(e.startswith(prefix) for e in entries)]
            if not hits:
                return 0
            score += 1000 + max(hits)
        if self.nvidia_gpu is not None:
            if bool(facts.get("nvidia_gpu")) != self.nvidia_gpu:
                return 0
            score += 100
        if self.machine:
            if "any" in self.machine:
                score += 1
            elif facts.get("machine") in self.machine:
                score += 10
            else:
                return 0
        return score


@dataclass(frozen=True)
class ClockSpec:
    """How to read and pin the device's clocks: argv lists the user runs; edgeprune never changes clocks."""

    query: tuple[str, ...] | None
    governor: str | None
    lock: tuple[tuple[str, ...], ...]
    note: str


@dataclass(frozen=True)
class PeakSpec:
    """Vendor (or derived, as `note` says) peak figures in the power mode `mode`; None: not applicable."""

    mode: str
    fp32_gflops: float
    bandwidth_gbs: float
    fp16_gflops: float | None = None
    int8_tops: float | None = None
    int8_tops_sparse: float | None = None
    note: str = ""


@dataclass(frozen=True)
class DeviceSpec:
    """One device kind, as its YAML file describes it. `source` is the file it came from."""

    name: str
    title: str
    aliases: tuple[str, ...]
    family_aliases: tuple[str, ...]
    description: str
    family: str
    detect: DetectSpec
    runtimes: tuple[RuntimeSpec, ...]
    alignment: int
    alignment_avx512: int | None
    alignment_by_precision: Mapping[str, int]
    clocks: ClockSpec
    sensors: Mapping[str, tuple[str, ...]]
    peak: PeakSpec | None
    sources: tuple[str, ...]
    source: str

    def __hash__(self) -> int:
        return hash((self.name, self.source))

    def matches(self, facts: Mapping[str, Any]) -> bool:
        return self.detect.score(facts) > 0

    def runtime(
        self,
        backend: str | None = None,
        provider: str | None = None,
        precision: str | None = "fp32",
        facts: Mapping[str, Any] | None = None,
    ) -> RuntimeSpec:
        """The first runtime, in the file's preference order, that fits the request and is installed.

        Installation is judged from `facts`; without them (before connecting) nothing is checked.
        """
        what = " ".join(filter(None, (backend, f"({provider})" if provider else None, "runtime")))
        fitting = [r for r in self.runtimes
                   if backend in (None, r.backend) and provider in (None, r.provider)]
        if not fitting:
            raise DeviceError(f"device {self.name} has no {what}",
                              f"its runtimes: {', '.join(r.label for r in self.runtimes)}")
        if precision is not None:
            fitting = [r for r in fitting if precision in r.precisions]
            if not fitting:
                raise DeviceError(f"device {self.name} has no {what} for {precision}", "its runtimes take: "
                                  + "; ".join(f"{r.label}: {', '.join(r.precisions)}" for r in self.runtimes))
        if facts is None:
            return fitting[0]
        for candidate in fitting:
            if candidate.available(facts):
                return candidate
        raise DeviceError(f"device {self.name} has no {what} installed "
                          f"(wanted one of: {', '.join(r.label for r in fitting)})",
                          f"`edgeprune doctor --device {self.name}` says what is missing and how to add it")

    def alignment_for(self, facts: Mapping[str, Any] | None = None, precision: str = "fp32") -> int:
        """The channel step of the measurement grid for `precision`, on the machine the facts describe."""
        if precision in self.alignment_by_precision:
            return self.alignment_by_precision[precision]
        if self.alignment_avx512 and "avx512f" in ((facts or {}).get("cpu_flags") or ()):
            return self.alignment_avx512
        return self.alignment

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- loading files


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML would otherwise keep the last one silently."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = "check the path, or name a known device: `edgeprune devices` lists them"
        raise BadInputError(f"device file {path} not found", hint) from None
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(f"cannot read device file {path}: {err}",
                            "check the file's permissions and encoding (UTF-8)") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        hint = "fix the YAML there (indentation, a missing ':', an unclosed quote or bracket)"
        raise BadInputError(f"device file {path} is not valid YAML: {err.problem or err.context}{where}",
                            hint) from None
    except yaml.YAMLError as err:
        raise BadInputError(f"device file {path} is not valid YAML: {err}", "fix the YAML syntax") from None


class _Fields:
    """Typed access to one mapping of a device file; every problem names the file and the dotted field."""

    def __init__(self, data: Any, source: str, prefix: str = ""):
        self.source = source
        self.prefix = prefix
        if not isinstance(data, dict):
            what = f"field '{prefix.rstrip('.')}'" if prefix else "the file"
            raise self._error(f"{what} must be a mapping of fields, got {_kind(data)}")
        self.data = data

    def _error(self, problem: str) -> BadInputError:
        return BadInputError(f"device file {self.source}: {problem}", _FILE_HINT)

    def fail(self, key: str, problem: str) -> BadInputError:
        return self._error(f"field '{(self.prefix + key).rstrip('.')}' {problem}")

    def only(self, allowed: Iterable[str]) -> None:
        allowed = list(allowed)
        for key in self.data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                suggestion = f" (did you mean '{close[0]}'?)" if close else ""
                raise self.fail(str(key), "is not a known field" + suggestion)

    def get(self, key: str, required: bool = True) -> Any:
        if key not in self.data:
            if required:
                raise self.fail(key, "is missing")
            return None
        return self.data[key]

    def text(self, key: str, required: bool = True) -> str | None:
        value = self.get(key, required)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {_kind(value)}")
        return value.strip()

    def name(self, key: str) -> str:
        value = self.text(key)
        if not _NAME.match(value):
            raise self.fail(key, f"must be lowercase letters, digits and '-', got {value!r}")
        return value

    def texts(self, key: str, required: bool = True, empty_ok: bool = True) -> tuple[str, ...]:
        value = self.get(key, required)
        if value is None and not required:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.fail(key, f"must be a list of non-empty strings, got {_kind(value)}")
        if not value and not empty_ok:
            raise self.fail(key, "must not be empty")
        if len(set(value)) != len(value):
            raise self.fail(key, "lists an entry twice")
        return tuple(v.strip() for v in value)

    def names(self, key: str, required: bool = True) -> tuple[str, ...]:
        values = self.texts(key, required)
        for value in values:
            if not _NAME.match(value):
                raise self.fail(key, f"entries must be lowercase letters, digits and '-', got {value!r}")
        return values

    def argv(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, f"must be a command: a list of strings (argv, no shell), got {_kind(value)}")
        return tuple(value)

    def number(self, key: str, required: bool = True, integer: bool = False) -> float | None:
        value = self.get(key, required)
        if value is None:
            if required:
                raise self.fail(key, "must be a positive number, got null")
            return None
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
            raise self.fail(key, f"must be a positive {'integer' if integer else 'number'}, got {value!r}")
        return value

    def sub(self, key: str, required: bool = True) -> _Fields | None:
        value = self.get(key, required)
        if value is None and not required:
            return None
        return _Fields(value, self.source, f"{self.prefix}{key}.")


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


def load_device_file(path: str | os.PathLike) -> DeviceSpec:
    """Read and validate one device file; any missing or ill-typed field raises BadInputError naming it."""
    path = Path(path)
    fields = _Fields(_read_yaml(path), str(path))
    fields.only(f.name for f in dataclasses.fields(DeviceSpec) if f.name != "source")
    family = fields.name("family")
    if family not in FAMILIES:
        raise fields.fail("family", f"must be one of {', '.join(FAMILIES)}, got {family!r}")
    by_precision = fields.sub("alignment_by_precision", required=False)
    alignment_by_precision = {}
    if by_precision is not None:
        by_precision.only(PRECISIONS)
        alignment_by_precision = {p: by_precision.number(p, integer=True) for p in by_precision.data}
    return DeviceSpec(
        name=fields.name("name"),
        title=fields.text("title"),
        aliases=fields.names("aliases"),
        family_aliases=fields.names("family_aliases", required=False),
        description=fields.text("description"),
        family=family,
        detect=_detect(fields.sub("detect")),
        runtimes=_runtimes(fields),
        alignment=fields.number("alignment", integer=True),
        alignment_avx512=fields.number("alignment_avx512", required=False, integer=True),
        alignment_by_precision=alignment_by_precision,
        clocks=_clocks(fields.sub("clocks")),
        sensors=_sensors(fields.sub("sensors")),
        peak=_peak(fields.sub("peak", required=False)),
        sources=fields.texts("sources", empty_ok=False),
        source=str(path),
    )


def _detect(fields: _Fields) -> DetectSpec:
    fields.only(f.name for f in dataclasses.fields(DetectSpec))
    gpu = fields.get("nvidia_gpu", required=False)
    if gpu is not None and not isinstance(gpu, bool):
        raise fields.fail("nvidia_gpu", f"must be true or false, got {_kind(gpu)}")
    rules = (fields.texts(key, required=False) for key in ("model_contains", "compatible", "machine"))
    detect = DetectSpec(*rules, nvidia_gpu=gpu)
    if detect == DetectSpec():
        raise fields.fail("", "needs a rule: model_contains, compatible, machine or nvidia_gpu")
    return detect


def _runtimes(fields: _Fields) -> tuple[RuntimeSpec, ...]:
    items = fields.get("runtimes")
    if not isinstance(items, list) or not items:
        raise fields.fail("runtimes", f"must be a non-empty list of runtimes, got {_kind(items)}")
    runtimes = []
    for index, item in enumerate(items):
        entry = _Fields(item, fields.source, f"runtimes[{index}].")
        entry.only(f.name for f in dataclasses.fields(RuntimeSpec))
        backend = entry.text("backend")
        if backend not in BACKENDS:
            raise entry.fail("backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
        provider = entry.get("provider")
        if backend == "tensorrt" and provider is not None:
            raise entry.fail("provider", "must be null for the tensorrt backend")
        if backend == "onnxruntime" and provider not in PROVIDERS:
            raise entry.fail("provider", f"must be one of {', '.join(PROVIDERS)}, got {_kind(provider)}")
        precisions = entry.texts("precisions", empty_ok=False)
        for precision in precisions:
            if precision not in PRECISIONS:
                raise entry.fail("precisions", f"entries must be {', '.join(PRECISIONS)}, got {precision!r}")
        runtime = RuntimeSpec(backend, provider, precisions)
        if any((r.backend, r.provider) == (backend, provider) for r in runtimes):
            raise entry.fail("backend", f"repeats the runtime {runtime.label}")
        runtimes.append(runtime)
    return tuple(runtimes)


def _clocks(fields: _Fields) -> ClockSpec:
    fields.only(f.name for f in dataclasses.fields(ClockSpec))
    query = fields.get("query", required=False)
    lock = fields.get("lock", required=False) or []
    if not isinstance(lock, list):
        raise fields.fail("lock", f"must be a list of commands (argv lists), got {_kind(lock)}")
    return ClockSpec(
        query=fields.argv("query", query) if query is not None else None,
        governor=fields.text("governor", required=False),
        lock=tuple(fields.argv(f"lock[{i}]", command) for i, command in enumerate(lock)),
        note=fields.text("note", required=False) or "",
    )


def _sensors(fields: _Fields) -> dict[str, tuple[str, ...]]:
    sensors = {}
    for key in map(str, fields.data):
        paths = fields.texts(key, empty_ok=False)
        if not all(p.startswith("/") for p in paths):
            raise fields.fail(key, "entries must be absolute paths (globs allowed)")
        sensors[key] = paths
    return sensors


def _peak(fields: _Fields | None) -> PeakSpec | None:
    if fields is None:
        return None
    fields.only(f.name for f in dataclasses.fields(PeakSpec))
    return PeakSpec(
        mode=fields.text("mode"),
        fp32_gflops=fields.number("fp32_gflops"),
        bandwidth_gbs=fields.number("bandwidth_gbs"),
        fp16_gflops=fields.number("fp16_gflops", required=False),
        int8_tops=fields.number("int8_tops", required=False),
        int8_tops_sparse=fields.number("int8_tops_sparse", required=False),
        note=fields.text("note", required=False) or "",
    )


# ---------------------------------------------------------------------------------------------- the registry


def builtin_device_files() -> list[Path]:
    """The shipped device files: package data when installed, else `devices/` beside `edgeprune/`."""
    try:
        from importlib import resources

        root = resources.files("edgeprune.device_files")
        files = sorted(Path(str(entry)) for entry in root.iterdir() if entry.name.endswith(".yaml"))
    except (ImportError, OSError, TypeError):  # a source checkout; an editable install without __init__.py
        files = []
    if not files:
        files = sorted((Path(__file__).resolve().parent.parent / "devices").glob("*.yaml"))
    if not files:
        raise RuntimeError("edgeprune's device files are missing from edgeprune.device_files and devices/")
    return files


def load_registry(extra_files: Iterable[str | os.PathLike] = ()) -> dict[str, DeviceSpec]:
    """Every built-in device plus `extra_files`, by name. Duplicate names or aliases across files raise."""
    registry: dict[str, DeviceSpec] = {}
    for path in [*builtin_device_files(), *map(Path, extra_files)]:
        spec = load_device_file(path)
        if spec.name in registry:
            raise BadInputError(f"device '{spec.name}' is defined twice: in {registry[spec.name].source} "
                                f"and {spec.source}", "rename one of them")
        registry[spec.name] = spec
    _index(registry)
    return registry


def _key(text: str) -> str:
    return text.strip().lower().replace("_", "-").replace(" ", "-")


def _index(registry: Mapping[str, DeviceSpec]) -> tuple[dict[str, DeviceSpec], dict[str, list[DeviceSpec]]]:
    """(name or alias -> device, family alias -> devices); raises on any name claimed twice."""
    exact: dict[str, DeviceSpec] = {}
    families: dict[str, list[DeviceSpec]] = {}
    for spec in registry.values():
        for key in (spec.name, *spec.aliases):
            other = exact.get(key)
            if other is not None and other is not spec:
                raise BadInputError(f"device name or alias '{key}' is claimed by both {other.source} and "
                                    f"{spec.source}", "make names and aliases unique; a name that several "
                                    "devices of one family share goes under family_aliases")
            exact[key] = spec
        for key in spec.family_aliases:
            families.setdefault(key, []).append(spec)
    for key, members in families.items():
        if key in exact:
            raise BadInputError(f"family alias '{key}' of {members[0].source} is also the name or alias of "
                                f"{exact[key].source}", "rename one of them")
        kinds = sorted({m.family for m in members})
        if len(kinds) > 1:
            raise BadInputError(f"family alias '{key}' is shared by devices of different families "
                                f"({', '.join(kinds)})", "a family alias groups devices of one family only")
    return exact, families


def lookup_device(name_or_file: str, registry: Mapping[str, DeviceSpec] | None = None) -> list[DeviceSpec]:
    """The device a name, alias or YAML file names, or every member of a family alias; unknown names raise."""
    separators = [sep for sep in (os.sep, os.altsep) if sep]
    if name_or_file.endswith((".yaml", ".yml")) or any(sep in name_or_file for sep in separators):
        return [load_device_file(name_or_file)]
    exact, families = _index(registry if registry is not None else load_registry())
    key = _key(name_or_file)
    if key in exact:
        return [exact[key]]
    if key in families:
        return list(families[key])
    close = difflib.get_close_matches(key, sorted({*exact, *families}), n=4, cutoff=0.6)
    raise BadInputError(f"unknown device '{name_or_file}'",
                        (f"did you mean: {', '.join(close)}? " if close else "")
                        + "`edgeprune devices` lists them; a device YAML file works too")


def detect_device(facts: Mapping[str, Any],
                  registry: Mapping[str, DeviceSpec] | None = None) -> DeviceSpec | None:
    """The most specific known device the facts describe: a Jetson model before `cuda`, before `cpu`."""
    return _best((registry if registry is not None else load_registry()).values(), facts)


def _best(candidates: Iterable[DeviceSpec], facts: Mapping[str, Any]) -> DeviceSpec | None:
    matching = [spec for spec in candidates if spec.matches(facts)]
    return min(matching, key=lambda spec: (-spec.detect.score(facts), spec.name), default=None)


def describe_machine(facts: Mapping[str, Any]) -> str:
    """What the facts say the machine is, in a few words: its device-tree model, else its CPU."""
    return (facts.get("device_tree_model") or facts.get("cpu_model")
            or " ".join(filter(None, (facts.get("system"), facts.get("machine")))) or "unknown")


def local_facts() -> dict[str, Any]:
    """`profilers.sysinfo.collect()`, run in this process on this machine."""
    return _device_side("sysinfo").collect()


def _device_side(module: str):
    """A module of the device side: installed as `edgeprune.profilers`, else the checkout's `profilers/`."""
    try:
        return importlib.import_module(f"edgeprune.profilers.{module}")
    except ModuleNotFoundError as err:
        if err.name not in ("edgeprune.profilers", f"edgeprune.profilers.{module}"):
            raise
    return importlib.import_module(f"profilers.{module}")


def resolve_device(
    name_or_file: str,
    host: str | None = None,
    facts: Mapping[str, Any] | None = None,
    registry: Mapping[str, DeviceSpec] | None = None,
) -> DeviceSpec:
    """The one device `--device` names, checked against the device's facts.

    `facts` come from `profilers.sysinfo.collect()`: collected here when `host` is None, fetched over SSH by
    the caller otherwise. A family alias (`jetson`) resolves to the model the facts show. With a host but no
    facts nothing can be checked: an exact name is returned as is and a family alias is refused.
    """
    registry = registry if registry is not None else load_registry()
    candidates = lookup_device(name_or_file, registry)
    family = len(candidates) > 1
    if facts is None:
        if host is not None:
            if family:
                members = ", ".join(c.name for c in candidates)
                raise BadInputError(f"'{name_or_file}' names a family ({members}); which one {host} is needs "
                                    "its facts", f"name the exact device, e.g. --device {candidates[0].name}")
            return candidates[0]
        facts = local_facts()
    found = _best(candidates, facts)
    if found is not None:
        return found
    raise _mismatch(candidates, family, host, facts, registry)


def _mismatch(candidates: list[DeviceSpec], family: bool, host: str | None, facts: Mapping[str, Any],
              registry: Mapping[str, DeviceSpec]) -> DeviceError:
    """'this machine is not a Jetson (it is AMD EPYC)', with a hint naming what it is when edgeprune knows."""
    spec = candidates[0]
    siblings = [s for s in registry.values() if s.family == spec.family and s.name != spec.name]
    article, noun = FAMILIES[spec.family] if family or not siblings else (_article(spec.title), spec.title)
    where = "this machine" if host is None else host
    message = f"{where} is not {article} {noun} (it is {describe_machine(facts)})"
    actual = detect_device(facts, registry)
    if actual is not None and actual.family == spec.family and siblings:
        hint = f"it is {_article(actual.title)} {actual.title}: pass --device {actual.name}"
        if host is None:
            hint += ", or --host user@address to measure another device over SSH"
    elif host is None:
        hint = f"run edgeprune on the {noun}, or pass --host user@address to measure it over SSH"
    else:
        hint = "check --host" + (f", or pass --device {actual.name}, which it is" if actual else "")
    return DeviceError(message, hint)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


class DeviceSession(NamedTuple):
    """A resolved device, the facts it reported, and the open target that runs jobs on it."""

    spec: DeviceSpec
    facts: dict
    target: Any


@contextlib.contextmanager
def open_device(device: str, host: str | None, ssh: Mapping[str, Any],
                registry: Mapping[str, DeviceSpec] | None = None) -> Iterator[DeviceSession]:
    """Connect to the device (or this machine), read its facts, and resolve `device` against them.

    An unknown name fails before any connection is made.
    """
    from .targets import open_target

    registry = registry if registry is not None else load_registry()
    lookup_device(device, registry)
    with open_target(host, **ssh) as target:
        facts = target.run_profilers(["info"])
        yield DeviceSession(resolve_device(device, host=host, facts=facts, registry=registry), facts, target)
