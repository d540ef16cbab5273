"""Run a deployable bundle on the device: checksums, parity, accuracy, latency (no torch; Python >= 3.8).

`python -m profilers bundle request.json` reads a request {bundles, data, runtime, latency settings} and
returns one report per bundle. Checksums are verified before anything runs: a tampered or incomplete bundle, data whose
shape does not fit the manifest's input spec, or a runtime the device lacks is an error record, not a result.
Latency follows MLPerf's single-stream scenario: batch 1, warm-up excluded, at least `runs` runs and
`seconds` seconds; p50/p90/p99/mean of every timed run, with cold start (session creation, first run) apart.
The budget gate reads the table's estimator (median of per-pass minima), measured beside them with every
bundle of the request interleaved, so a pruned bundle and its dense baseline are compared in one run.
"""

import hashlib
import json
import os
import time
import zipfile

import numpy as np

from .errors import ProfilerError
from .parity import compare_outputs
from .schema import Bool, Either, Int, ListOf, MapOf, Maybe, Num, Obj, Str, Tagged, check
from .timing import Estimator, _percentile, measure_interleaved

FORMAT_VERSION = 1
ENGINE_SUFFIX = ".engine"
MANIFEST_FILE = "manifest.json"
REFERENCE_FILE = "reference_io.npz"
REPORTS_DIR = "reports"  # validation reports may be written here, beside the checksummed files

SHA256 = Str(pattern="[0-9a-f]{64}", what="a sha256 (64 hex digits)")
TOLERANCE = Obj({"atol": Num(min=0), "rtol": Num(min=0)})
BUDGET = Either(Str(), Num(min=0), what="a budget like \"4.2ms\" or \"2x\"")
NORMALISED = Obj({"kind": Str(), "mean": ListOf(Num(), min_len=1), "std": ListOf(Num(), min_len=1)})
MANIFEST = Obj({
    "id": Str(),
    "model": Str(),
    "files": MapOf(Obj({"sha256": SHA256}, {"bytes": Int(min=0)})),
    "inputs": ListOf(Obj({"name": Str(), "shape": ListOf(Int(min=0), min_len=1), "dtype": Str()}), min_len=1),
    "outputs": ListOf(Obj({"name": Str()}, {"shape": ListOf(Maybe(Int(min=0)))}), min_len=1),
    "source": Obj({"spec": Str()}, {"family": Str(), "seq_len": Maybe(Int(min=1)), "pruned_from": Maybe(Str())}),
    "runtime": Obj({}, {"backend": Str(), "provider": Maybe(Str()), "precision": Maybe(Str()),
                        "threads": Maybe(Int(min=1))}),
}, {
    # image folders are re-normalised with the bundle's statistics (edgeprune/validation.py)
    "preprocessing": Maybe(Tagged("kind", {"image": NORMALISED, "digits": NORMALISED}, other=Obj())),
    "table": Maybe(Obj({}, {"id": Str(), "fidelity": Maybe(Obj({}, {"within_10": Maybe(Num(min=0, max=1))})),
                            "estimator": Maybe(Obj()), "fingerprint": Maybe(Obj({}, {"device": Maybe(Str())})),
                            "runtime": Maybe(Obj())})),
    "budget": Maybe(BUDGET), "budget_ms": Maybe(Num(min=0)), "predicted_ms": Maybe(Num(min=0)),
    "baseline_accuracy": Maybe(Num(min=0, max=1)), "parity_tolerance": Maybe(TOLERANCE),
    "widths": Maybe(MapOf(Int(min=0))),
    "engine": Maybe(Obj({"file": Str(),
                         "settings": Obj({"precision": Str(["fp32", "fp16", "int8"])},
                                         {"int8_calibration": Maybe(Obj({"samples": Int(min=0)}))})},
                        {"tensorrt_version": Maybe(Str()), "parity_tolerance": Maybe(TOLERANCE),
                         "gpu": Maybe(Obj({}, {"name": Maybe(Str()), "compute_capability": Maybe(Str())}))})),
})
REQUEST = Obj({"bundles": ListOf(Str(), min_len=1)}, {
    "data": Maybe(Str()), "parity": Maybe(TOLERANCE),
    "runtime": Maybe(Obj({}, {"backend": Maybe(Str(["onnxruntime", "tensorrt"])), "threads": Maybe(Int(min=1))})),
    "latency": Maybe(Obj({}, {"runs": Int(min=1), "seconds": Num(min=0), "warmup_runs": Int(min=0),
                              "estimator": Maybe(Obj())})),
})
# what `run_bundles` returns, checked by the host before any gate reads it (exporters/bundle.py)
REPORT = Obj({"bundles": ListOf(Obj({
    "parity": Obj({"ok": Bool(), "atol": Num(min=0), "outputs": MapOf(Obj({"ok": Bool()}, {"needed_atol": Num()}))}),
    "latency": Obj({"estimate_ms": Num(min=0), "p50_ms": Num(min=0), "p90_ms": Num(min=0), "p99_ms": Num(min=0),
                    "n": Int(min=1)}),
}, {"accuracy": Maybe(Obj({"top1": Num(), "n": Int(min=0)}))}))})


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(bundle_dir):
    """The manifest, checked against its schema, or an error record naming what is wrong with it."""
    path = os.path.join(bundle_dir, MANIFEST_FILE)
    if not os.path.isfile(path) or os.path.islink(path):
        raise ProfilerError("incomplete_bundle", "bundle %s has no manifest.json" % bundle_dir,
                            "give the directory edgeprune export wrote")
    try:
        with open(path) as handle:
            manifest = json.load(handle)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProfilerError("tampered_bundle", "manifest.json is not valid JSON (%s)" % err,
                            "re-run edgeprune export")
    if not isinstance(manifest, dict) or manifest.get("kind") != "bundle" \
            or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise ProfilerError("tampered_bundle", "manifest.json is not an edgeprune bundle manifest (format %s)"
                            % version, "re-run edgeprune export with this edgeprune")
    check(manifest, MANIFEST, lambda bad: ProfilerError(
        "tampered_bundle", "%s: %s" % (path, bad), "re-run edgeprune export; never edit a bundle by hand"))
    names = [manifest["model"]] + ([manifest["engine"]["file"]] if manifest.get("engine") else [])
    for name in list(manifest["files"]) + names:
        if not _plain_name(name):
            raise ProfilerError("tampered_bundle", "%s lists %r, which is not a file inside the bundle" % (path, name),
                                "re-run edgeprune export; never edit a bundle by hand")
    unlisted = [name for name in names + [REFERENCE_FILE] if name not in manifest["files"]]
    if unlisted:
        raise ProfilerError("tampered_bundle", "%s has no checksum for %s" % (path, ", ".join(unlisted)),
                            "re-run edgeprune export; never edit a bundle by hand")
    return manifest


def _plain_name(name):
    """A relative path that stays inside the bundle and is neither the manifest nor under reports/."""
    parts = name.split("/")
    return not (name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts)
                or parts[0] in (MANIFEST_FILE, REPORTS_DIR))


def _entries(top, prefix=""):
    """(relative name, DirEntry) of everything under `top`, not following links; reports/ is not entered."""
    for entry in sorted(os.scandir(top), key=lambda e: e.name):
        name = prefix + entry.name
        yield name, entry
        if entry.is_dir(follow_symlinks=False) and name != REPORTS_DIR:
            for item in _entries(entry.path, name + "/"):
                yield item


def check_contents(bundle_dir, manifest):
    """Nothing but the listed files, the manifest and reports/: a bundle is sent to the device as a whole, so a
    symbolic link (say, notes.txt -> ~/.ssh/id_ed25519) or an unlisted file would travel unchecked."""
    listed = set(manifest["files"]) | {MANIFEST_FILE}
    folders = {name.rsplit("/", 1)[0] for name in listed if "/" in name}
    unlisted = []
    for name, entry in _entries(bundle_dir):
        if entry.is_symlink():
            raise ProfilerError("unsafe_bundle", "bundle %s holds a symbolic link, %s; refusing to read or send it"
                                % (bundle_dir, name), "remove the link: a bundle holds only the files edgeprune "
                                "export wrote")
        if entry.is_dir(follow_symlinks=False):
            if name != REPORTS_DIR and not any(f == name or f.startswith(name + "/") for f in folders):
                unlisted.append(name + "/")
        elif not entry.is_file(follow_symlinks=False):
            raise ProfilerError("unsafe_bundle", "bundle %s holds %s, which is not a regular file" % (bundle_dir, name),
                                "remove it: a bundle holds only the files edgeprune export wrote")
        elif name not in listed:
            unlisted.append(name)
    if unlisted:
        raise ProfilerError("tampered_bundle", "bundle %s holds files its manifest does not list: %s"
                            % (bundle_dir, ", ".join(unlisted)),
                            "remove them (reports may go in %s/), or re-run edgeprune export" % REPORTS_DIR)


def verify(bundle_dir):
    """Check the manifest, that the bundle holds its files and nothing else, every sha256, and the reference
    I/O; returns the manifest."""
    manifest = read_manifest(bundle_dir)
    check_contents(bundle_dir, manifest)
    missing, changed = [], []
    for name, entry in sorted(manifest["files"].items()):
        path = os.path.join(bundle_dir, name)
        if not os.path.isfile(path):
            missing.append(name)
        elif sha256_file(path) != entry["sha256"]:
            changed.append(name)
    if missing:
        raise ProfilerError("incomplete_bundle", "bundle is missing %s" % ", ".join(missing),
                            "copy the whole bundle directory, or re-run edgeprune export")
    if changed:
        raise ProfilerError("tampered_bundle", "checksum mismatch in %s: the file changed after export"
                            % ", ".join(changed), "re-run edgeprune export; never edit a bundle by hand")
    read_reference(bundle_dir, manifest)
    return manifest


def read_reference(bundle_dir, manifest):
    """({input name: array}, {output name: array}) of reference_io.npz: every input and output the manifest
    names, numeric, one sample count for all. Parity on a partial file would compare nothing and pass."""
    path = os.path.join(bundle_dir, REFERENCE_FILE)
    hint = "re-run edgeprune export; never edit a bundle by hand"
    try:
        archive = np.load(path, allow_pickle=False)
        if not hasattr(archive, "files"):
            raise ValueError("not an .npz archive")
        with archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ProfilerError("tampered_bundle", "%s cannot be read: %s" % (path, str(err)[:160]), hint)
    inputs = {k[len("input:"):]: v for k, v in arrays.items() if k.startswith("input:")}
    outputs = {k[len("output:"):]: v for k, v in arrays.items() if k.startswith("output:")}
    wanted = [("input:", s["name"], inputs) for s in manifest["inputs"]] + \
        [("output:", s["name"], outputs) for s in manifest["outputs"]]
    absent = [prefix + name for prefix, name, found in wanted if name not in found]
    if absent:
        raise ProfilerError("tampered_bundle", "%s lacks %s" % (path, ", ".join(absent)), hint)
    first = manifest["inputs"][0]
    n = len(inputs[first["name"]]) if inputs[first["name"]].ndim else 0
    for key, value in sorted(arrays.items()):
        if value.dtype.kind not in "biuf" or value.ndim == 0 or len(value) != n or not n:
            raise ProfilerError("tampered_bundle", "%s: %s (%s %s) is not a batch of numbers like input:%s"
                                % (path, key, value.dtype, "x".join(map(str, value.shape)) or "scalar",
                                   first["name"]), hint)
    for spec in manifest["inputs"]:
        got = inputs[spec["name"]]
        if got.ndim != len(spec["shape"]):
            raise ProfilerError("tampered_bundle", "%s: input:%s has shape %s, the manifest's input is %s" % (
                path, spec["name"], "x".join(map(str, got.shape)), "x".join(map(str, spec["shape"]))), hint)
    return inputs, outputs


def parity(session, bundle_dir, manifest, atol, rtol):
    """Run the reference inputs; compare with the reference outputs exported beside the model."""
    inputs, outputs = read_reference(bundle_dir, manifest)
    names = [o.name for o in session.get_outputs()]
    n = next(iter(inputs.values())).shape[0]
    got = {name: [] for name in names}
    for i in range(n):  # one sample at a time: the bundle's batch dimension is 1
        feeds = {k: v[i:i + 1] for k, v in inputs.items()}
        for name, value in zip(names, session.run(names, feeds)):
            got[name].append(value)
    got = {k: np.concatenate(v) for k, v in got.items()}
    result = compare_outputs({k: v for k, v in outputs.items() if k in got}, got, atol, rtol)
    return {"atol": atol, "rtol": rtol, "samples": int(n), "outputs": result,
            "ok": all(r["ok"] for r in result.values())}


def check_data(data, manifest):
    """Data must fit the manifest's input spec (shape after the batch dim, and kind)."""
    spec = manifest["inputs"][0]
    want = tuple(spec["shape"][1:])
    got = tuple(data["inputs"].shape[1:])
    if got != want:
        raise ProfilerError("bad_data", "data samples have shape %s, the bundle's input %s takes %s"
                            % ("x".join(map(str, got)) or "()", spec["name"], "x".join(map(str, want))),
                            "preprocess the data to the manifest's input spec (edgeprune inspect shows it)")
    if "labels" in data and len(data["labels"]) != len(data["inputs"]):
        raise ProfilerError("bad_data", "data has %d inputs but %d labels" % (len(data["inputs"]),
                                                                             len(data["labels"])),
                            "store one label per sample")


def accuracy(session, data, manifest):
    """Top-1 accuracy over the labelled samples (batch 1, argmax of the first output's last axis)."""
    spec = manifest["inputs"][0]
    name = spec["name"]
    dtype = np.dtype(spec.get("dtype", "float32"))
    labels = data["labels"]
    correct = 0
    first = session.get_outputs()[0].name
    for i in range(len(labels)):
        out = session.run([first], {name: data["inputs"][i:i + 1].astype(dtype)})[0]
        correct += int(np.argmax(out.reshape(-1)) == int(labels[i]))
    return {"top1": correct / float(len(labels)) if len(labels) else float("nan"), "n": int(len(labels))}


def latency(entries, settings):
    """Cold start per bundle; single-stream runs per bundle; then the table's estimator on all bundles
    interleaved (so ratios between bundles, e.g. pruned vs dense, come from one run).

    `entries`: [(model_path, runtime, feeds)]. Returns one latency record per entry.
    """
    runners, records = [], []
    try:
        for model_path, runtime, feeds in entries:
            started = time.perf_counter()
            runner = make_runner(model_path, runtime, feeds)
            runner.activate()  # session creation + input binding + one (allocating) run
            created = time.perf_counter() - started
            first_start = time.perf_counter()
            runner.infer()
            first = time.perf_counter() - first_start
            runners.append(runner)
            records.append({"cold_start": {"session_ms": created * 1e3, "first_run_ms": first * 1e3}})
        for runner, record in zip(runners, records):
            for _ in range(int(settings.get("warmup_runs", 50))):
                runner.infer()
            times = []
            deadline = time.perf_counter() + float(settings.get("seconds", 10.0))
            min_runs = int(settings.get("runs", 200))
            while len(times) < min_runs or time.perf_counter() < deadline:
                t0 = time.perf_counter()
                runner.infer()
                times.append(time.perf_counter() - t0)
                if len(times) >= 100 * min_runs:
                    break
            ms = sorted(t * 1e3 for t in times)
            record.update({"n": len(ms), "p50_ms": _percentile(ms, 0.5), "p90_ms": _percentile(ms, 0.9),
                           "p99_ms": _percentile(ms, 0.99), "mean_ms": sum(ms) / len(ms), "min_ms": ms[0],
                           "runs_ms": ms})
        estimator = Estimator.from_dict(settings.get("estimator") or {})
        for record, estimate in zip(records, measure_interleaved(runners, estimator, warm=False, keep_passes=True)):
            record.update({"estimate_ms": estimate["estimate_ms"], "estimator": "median_of_pass_min",
                           "estimate": estimate, "interleaved_with": len(runners) - 1})
    finally:
        for runner in runners:
            runner.deactivate()
    return records


def make_runner(model_path, runtime, feeds=None):
    """The bundle's TensorRT engine on TensorRT, its ONNX model on ONNX Runtime."""
    if model_path.endswith(ENGINE_SUFFIX):
        from .backends.trt import TrtRunner

        return TrtRunner(model_path, inputs=feeds)
    from .backends.ort import OrtRunner

    return OrtRunner(model_path, threads=runtime.get("threads", 1), provider=runtime.get("provider"), inputs=feeds)


class _Output(object):
    def __init__(self, name):
        self.name = name


class EngineSession(object):
    """The two calls parity and accuracy make on an ONNX Runtime session, answered by a TensorRT runner."""

    def __init__(self, runner, output_names):
        self.runner = runner
        self.names = list(output_names)

    def get_outputs(self):
        return [_Output(n) for n in self.names]

    def run(self, names, feeds):
        got = self.runner.run_feeds(feeds)
        return [got[n] for n in names]


def uses_engine(manifest, runtime):
    """A bundle with an engine is validated on it (that is what deploys) unless --runtime onnxruntime says not.

    `runtime` is what the request asked for, not the manifest's (which names the runtime the ONNX was
    exported for)."""
    return bool(manifest.get("engine")) and runtime.get("backend") != "onnxruntime"


def check_engines(manifests, asked):
    """Before anything runs: TensorRT and a GPU are here, and every engine the request (`asked` runtime) will
    validate on was built for them."""
    wanted = [m for m in manifests if uses_engine(m, asked)]
    if not wanted:
        return
    from .backends.trt import _import_cudart, _import_tensorrt, check_gpu
    from .engine import check_engine, gpu_identity

    trt = _import_tensorrt()
    cudart = _import_cudart()
    check_gpu(cudart)
    gpu = gpu_identity(cudart)
    for manifest in wanted:
        check_engine(manifest["engine"], trt.__version__, gpu)


def run_bundles(request, base_dir="."):
    """Validate every bundle of the request on this device; raises ProfilerError before anything runs on bad
    input (any bundle tampered or incomplete, data that fits no bundle, a runtime the device lacks)."""
    check(request, REQUEST, lambda bad: ProfilerError("bad_request", "bundle request: %s" % bad,
                                                      "the device side and the host side may be different "
                                                      "edgeprune versions"))
    dirs = [os.path.join(base_dir, b) for b in request["bundles"]]
    manifests = [verify(d) for d in dirs]
    data = None
    if request.get("data"):
        with np.load(os.path.join(base_dir, request["data"]), allow_pickle=False) as archive:
            data = {k: archive[k] for k in archive.files}
        if "inputs" not in data:
            raise ProfilerError("bad_data", "data has no 'inputs' array (it has %s)" % ", ".join(sorted(data)),
                                "store the preprocessed samples as 'inputs' (and 'labels')")
        for manifest in manifests:
            check_data(data, manifest)
    runtimes = []
    asked = request.get("runtime") or {}
    for manifest in manifests:
        runtime = dict(manifest.get("runtime") or {}, **asked)
        if uses_engine(manifest, asked):
            runtime = dict(runtime, backend="tensorrt", precision=manifest["engine"]["settings"]["precision"],
                           provider=None)
        elif runtime.get("backend", "onnxruntime") != "onnxruntime":
            raise ProfilerError("no_engine", "runtime %s was asked for, but the bundle has no engine"
                                % runtime.get("backend"),
                                "export with --engine PRECISION on the device, or validate with onnxruntime")
        runtimes.append(runtime)
    check_engines(manifests, asked)
    reports, entries = [], []
    for bundle_dir, manifest, runtime in zip(dirs, manifests, runtimes):
        engine = runtime.get("backend") == "tensorrt"
        model_path = os.path.join(bundle_dir, manifest["engine"]["file"] if engine else manifest["model"])
        tol = request.get("parity") or manifest.get("parity_tolerance") or {"atol": 1e-4, "rtol": 1e-3}
        if engine:  # reduced precision changes the numbers: the engine's parity tolerance is the build's
            tol = manifest["engine"].get("parity_tolerance") or tol
        with make_runner(model_path, runtime) as runner:
            session = EngineSession(runner, [o["name"] for o in manifest["outputs"]]) if engine else runner.session
            report = {"format_version": FORMAT_VERSION, "manifest_id": manifest.get("id"), "runtime": runtime,
                      "model": os.path.basename(model_path),
                      "parity": parity(session, bundle_dir, manifest, tol["atol"], tol["rtol"])}
            if data is not None and "labels" in data:
                report["accuracy"] = accuracy(session, data, manifest)
        feeds = {k: v[:1] for k, v in read_reference(bundle_dir, manifest)[0].items()}
        entries.append((model_path, runtime, feeds))
        reports.append(report)
    from .sysinfo import device_state

    before = device_state()
    records = latency(entries, request.get("latency") or {})
    state = {"before": before, "after": device_state()}
    for report, record in zip(reports, records):
        report["latency"] = record
        report["device_state"] = state
    return {"format_version": FORMAT_VERSION, "bundles": reports}
