"""Bundles that cannot hurt: a manifest and reference I/O checked against their schema, nothing but the listed
files (no symbolic link, no stray file), and sending that never follows a link out of the bundle.

The bundle here is a one-MatMul ONNX model written with `write_bundle`, so no torch export is needed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from edgeprune.exporters.bundle import bundle_files, check_reports, content_id, read_bundle, write_bundle
from edgeprune.profilers.bundle import run_bundles, verify
from edgeprune.profilers.errors import ProfilerError

from edgeprune.errors import BadInputError, DeviceError
from tests.commands.test_profile_cli import run_cli

FAST = ("--device", "cpu", "--seconds", "0.05", "--runs", "5", "--allow-skipped")  # no data: accuracy is skipped


def tiny_model() -> tuple:
    """(ONNX bytes, weight) of y = x @ w with x: 1x4, y: 1x3."""
    from onnx import TensorProto, helper, numpy_helper

    w = (np.arange(12, dtype=np.float32).reshape(4, 3) - 6) / 10
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString(), w


@pytest.fixture
def bundle(tmp_path) -> Path:
    model, w = tiny_model()
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    manifest = {"source": {"spec": "test:tiny", "family": "vision", "seq_len": None, "pruned_from": None},
                "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}],
                "outputs": [{"name": "y", "shape": [1, 3]}], "preprocessing": {"kind": "synthetic"},
                "runtime": {"backend": "onnxruntime", "provider": "CPUExecutionProvider", "precision": "fp32",
                            "threads": 1},
                "parity_tolerance": {"atol": 1e-4, "rtol": 1e-3}, "table": None, "budget": None, "budget_ms": None,
                "predicted_ms": None, "baseline_accuracy": None, "widths": None, "engine": None}
    out = tmp_path / "bundle"
    write_bundle(out, model, {"input:x": x, "output:y": x @ w}, manifest)
    return out


@pytest.fixture
def secret(tmp_path) -> tuple:
    """(path, content) of a private key outside the bundle."""
    content = f"-----BEGIN OPENSSH PRIVATE KEY----- {uuid.uuid4().hex}"
    path = tmp_path / "home" / ".ssh" / "id_ed25519"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    return path, content


def edit_manifest(bundle: Path, edit) -> None:
    """Change the manifest and recompute its id, as a careful forger (or a buggy tool) would."""
    m = json.loads((bundle / "manifest.json").read_text())
    edit(m)
    m["id"] = content_id(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def replace_file(bundle: Path, name: str, data: bytes) -> None:
    """Write `name` and list its checksum, so only its content can be wrong."""
    (bundle / name).write_bytes(data)
    edit_manifest(bundle, lambda m: m["files"].update({name: {"sha256": hashlib.sha256(data).hexdigest(),
                                                              "bytes": len(data)}}))


def npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def one_error_line(proc) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def files_under(root: Path) -> list:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


# -- the manifest and the reference I/O ----------------------------------------------------------------------


def test_a_good_bundle_reads_and_inspects(bundle):
    m = read_bundle(bundle)
    assert set(m["files"]) == {"model.onnx", "reference_io.npz"}
    edit_manifest(bundle, lambda m: m.update(preprocessing=None, budget="2x", budget_ms=0.5, predicted_ms=0.25,
                                             table={"id": "f" * 64, "fidelity": {"within_10": 0.9}}))
    proc = run_cli("inspect", str(bundle))  # every optional field null or set: still prints
    assert proc.returncode == 0, proc.stderr
    assert "checksums ok" in proc.stdout and "preprocessing: None" in proc.stdout and "= 0.500 ms" in proc.stdout


@pytest.mark.parametrize("edit, expected", [
    (lambda m: m.update(files="x"), 'manifest.json: files: expected an object, got "x"'),
    (lambda m: m["files"]["model.onnx"].update(sha256=None),
     "files['model.onnx'].sha256: expected a sha256 (64 hex digits), got null"),
    (lambda m: m.update(inputs=[]), "inputs: expected a non-empty list, got a list"),
    (lambda m: m["inputs"][0].update(shape="1x4"), 'inputs[0].shape: expected a non-empty list, got "1x4"'),
    (lambda m: m["runtime"].update(threads=0), "runtime.threads: expected an integer >= 1 or null, got 0"),
    (lambda m: m.update(baseline_accuracy="high"), "baseline_accuracy: expected a number in [0, 1] or null"),
    (lambda m: m.update(budget_ms=-1), "budget_ms: expected a number >= 0 or null, got -1"),
    (lambda m: m.update(preprocessing={"kind": "image"}), "preprocessing.mean: missing"),
    (lambda m: m.pop("source"), "source: missing, expected an object"),
    (lambda m: m.update(engine={"file": "model.onnx", "settings": {"precision": "fp8"}}),
     'engine.settings.precision: expected one of "fp32", "fp16", "int8", got "fp8"'),
    (lambda m: m.update(model="../../etc/passwd"), "lists '../../etc/passwd', which is not a file inside the bundle"),
    (lambda m: m["files"].update({"/etc/hosts": m["files"]["model.onnx"]}), "lists '/etc/hosts', which is not"),
    (lambda m: m.update(model="other.onnx"), "has no checksum for other.onnx"),
    (lambda m: m["files"].pop("reference_io.npz"), "has no checksum for reference_io.npz"),
])
def test_a_manifest_against_its_schema_is_one_line_exit_2(bundle, edit, expected):
    edit_manifest(bundle, edit)
    with pytest.raises(BadInputError) as caught:
        read_bundle(bundle)
    assert expected in caught.value.message and "\n" not in caught.value.message
    assert "re-run edgeprune export" in caught.value.hint
    with pytest.raises(ProfilerError) as device_side:  # the device refuses it the same way
        verify(str(bundle))
    assert device_side.value.message == caught.value.message


def test_inspect_a_manifest_with_files_as_a_string_is_one_line_exit_2(bundle):
    edit_manifest(bundle, lambda m: m.update(files="x"))
    proc = run_cli("inspect", str(bundle))
    assert proc.returncode == 2
    assert 'files: expected an object, got "x"' in one_error_line(proc)


@pytest.mark.parametrize("payload, expected", [
    (b"not a zip", "reference_io.npz cannot be read"),
    (npz(**{"input:x": np.zeros((8, 4), np.float32)}), "reference_io.npz lacks output:y"),
    (npz(**{"input:z": np.zeros((8, 4), np.float32), "output:y": np.zeros((8, 3), np.float32)}), "lacks input:x"),
    (npz(**{"input:x": np.zeros((8, 4), np.float32), "output:y": np.zeros((7, 3), np.float32)}),
     "output:y (float32 7x3) is not a batch of numbers like input:x"),
    (npz(**{"input:x": np.array(["a"] * 8), "output:y": np.zeros((8, 3), np.float32)}), "input:x (<U1 8)"),
    (npz(**{"input:x": np.zeros((0, 4), np.float32), "output:y": np.zeros((0, 3), np.float32)}), "is not a batch"),
    (npz(**{"input:x": np.zeros((8, 4, 1), np.float32), "output:y": np.zeros((8, 3), np.float32)}),
     "input:x has shape 8x4x1, the manifest's input is 1x4"),
    (npz(**{"input:x": np.array([object()] * 8), "output:y": np.zeros((8, 3), np.float32)}), "cannot be read"),
])
def test_reference_io_against_its_schema(bundle, payload, expected):
    replace_file(bundle, "reference_io.npz", payload)
    with pytest.raises(BadInputError, match="reference_io.npz") as caught:
        read_bundle(bundle)
    assert expected in caught.value.message


def test_the_writer_refuses_a_manifest_the_reader_would_refuse(tmp_path):
    """A percent where a fraction belongs fails the export, not a later validate; a budget as a number is fine."""
    model, w = tiny_model()
    x = np.ones((2, 4), np.float32)
    arrays = {"input:x": x, "output:y": x @ w}
    manifest = {"source": {"spec": "test:tiny", "family": "vision"}, "runtime": {"backend": "onnxruntime"},
                "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}], "outputs": [{"name": "y"}]}
    with pytest.raises(BadInputError, match=r"baseline_accuracy: expected a number in \[0, 1\] or null, got 93.1"):
        write_bundle(tmp_path / "b", model, arrays, dict(manifest, baseline_accuracy=93.1))
    assert not list(tmp_path.iterdir())
    write_bundle(tmp_path / "b", model, arrays, dict(manifest, budget=4.2))
    assert read_bundle(tmp_path / "b")["budget"] == 4.2


def test_tampered_and_incomplete_bundles_are_still_refused(bundle):
    model = (bundle / "model.onnx").read_bytes()
    (bundle / "model.onnx").write_bytes(model[:10] + b"\x00\x01" + model[12:])
    with pytest.raises(BadInputError, match="checksum mismatch in model.onnx"):
        read_bundle(bundle)
    (bundle / "model.onnx").unlink()
    with pytest.raises(BadInputError, match="bundle is missing model.onnx"):
        read_bundle(bundle)
    (bundle / "model.onnx").write_bytes(model)
    m = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps(dict(m, predicted_ms=1.0)))
    with pytest.raises(BadInputError, match="modified after export"):
        read_bundle(bundle)
    (bundle / "manifest.json").write_text("[1, 2]")
    with pytest.raises(BadInputError, match="not an edgeprune bundle manifest"):
        read_bundle(bundle)


# -- only the listed files: links and strays -----------------------------------------------------------------


def test_inspect_and_validate_refuse_a_link_to_a_secret_and_never_copy_it(bundle, secret, tmp_path, monkeypatch):
    key, content = secret
    (bundle / "notes.txt").symlink_to(key)
    jobs = tmp_path / "tmp"
    jobs.mkdir()
    monkeypatch.setenv("TMPDIR", str(jobs))  # every job working dir the CLI makes lands here
    proc = run_cli("inspect", str(bundle))
    assert proc.returncode == 2
    assert "holds a symbolic link, notes.txt" in one_error_line(proc)
    out = tmp_path / "report"
    proc = run_cli("validate", str(bundle), *FAST, "--out", str(out))
    assert proc.returncode == 2
    assert "holds a symbolic link, notes.txt" in one_error_line(proc)
    assert not out.exists()
    assert not [p for p in files_under(jobs) if content in p.read_text(errors="replace")]


def test_validate_refuses_before_any_job_dir_exists(bundle, secret, monkeypatch):
    """In-process: the refusal comes from the host check, before a target is opened."""
    import edgeprune.targets.local as local
    from edgeprune.validation import validate

    opened = []
    monkeypatch.setattr(local.LocalTarget, "__enter__", lambda self: opened.append(self) or self)
    (bundle / "sub").mkdir()
    (bundle / "sub" / "key").symlink_to(secret[0])
    with pytest.raises(BadInputError, match=r"symbolic link, sub/key"):
        validate([str(bundle)], device="cpu", runs=5, seconds=0.05)
    assert opened == []


@pytest.mark.parametrize("stray, expected", [
    (lambda b, key: (b / "extra.bin").write_bytes(b"x"), "does not list: extra.bin"),
    (lambda b, key: (b / "cache").mkdir(), "does not list: cache/"),
    (lambda b, key: (b / "keys").symlink_to(key.parent, target_is_directory=True), "symbolic link, keys"),
    (lambda b, key: os.mkfifo(b / "pipe"), "pipe, which is not a regular file"),
    (lambda b, key: ((b / "model.onnx").unlink(), (b / "model.onnx").symlink_to(key)), "symbolic link, model.onnx"),
])
def test_anything_but_the_listed_files_is_refused(bundle, secret, stray, expected):
    stray(bundle, secret[0])
    with pytest.raises(BadInputError) as caught:
        read_bundle(bundle)
    assert expected in caught.value.message


def test_reports_beside_the_files_keep_working(bundle, secret):
    """`validate --out BUNDLE/reports` writes outside the checksummed set; it is never sent to the device."""
    out = bundle / "reports"
    for extra in ([], ["--force"]):  # a second run reads the bundle with its reports in place
        proc = run_cli("validate", str(bundle), *FAST, "--out", str(out), *extra)
        assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "report.json").read_text())["bundles"][0]["parity"]["ok"]
    (out / "key").symlink_to(secret[0])  # whatever is in reports/ stays on this machine
    read_bundle(bundle)
    assert sorted(bundle_files({"bundle0": bundle})) == ["bundle0/manifest.json", "bundle0/model.onnx",
                                                         "bundle0/reference_io.npz"]


def test_device_side_refuses_links_and_bad_requests(bundle, secret, tmp_path):
    (bundle / "notes.txt").symlink_to(secret[0])
    with pytest.raises(ProfilerError) as caught:
        run_bundles({"bundles": ["bundle"]}, base_dir=str(tmp_path))
    assert caught.value.kind == "unsafe_bundle" and "notes.txt" in caught.value.message
    with pytest.raises(ProfilerError) as caught:
        run_bundles({"bundles": "bundle"}, base_dir=str(tmp_path))
    assert caught.value.kind == "bad_request" and "bundles: expected a non-empty list" in caught.value.message


def test_a_malformed_device_report_is_one_line():
    good = {"bundles": [{"parity": {"ok": True, "atol": 1e-4, "outputs": {"y": {"ok": True, "needed_atol": 0.0}}},
                         "latency": {"estimate_ms": 0.1, "p50_ms": 0.1, "p90_ms": 0.2, "p99_ms": 0.3, "n": 5}}]}
    assert check_reports(good, "here", 1) == good["bundles"]
    bad = json.loads(json.dumps(good))
    bad["bundles"][0]["latency"]["estimate_ms"] = None
    with pytest.raises(DeviceError, match=r"malformed report: bundles\[0\].latency.estimate_ms: expected a number"):
        check_reports(bad, "here", 1)
    with pytest.raises(DeviceError, match="returned 1 reports for 2 bundles"):
        check_reports(good, "here", 2)


# -- sending never follows a link ----------------------------------------------------------------------------


def test_local_target_refuses_a_folder_with_a_link(tmp_path, secret):
    from edgeprune.targets.local import LocalTarget, place

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "ok.txt").write_text("fine")
    (folder / "notes.txt").symlink_to(secret[0])
    with pytest.raises(BadInputError, match="notes.txt is a symbolic link"):
        place(folder, tmp_path / "dest" / "folder")
    assert not (tmp_path / "dest").exists()
    with LocalTarget() as target:
        with pytest.raises(BadInputError, match="is a symbolic link"):
            target.run(["true"], files={"folder": folder})
        assert not [p for p in files_under(target.workdir) if secret[1] in p.read_text(errors="replace")]


def test_tar_stream_archives_links_as_links(tmp_path, secret):
    from edgeprune.targets.ssh import _write_tar

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "ok.txt").write_text("fine")
    (folder / "notes.txt").symlink_to(secret[0])
    stream = io.BytesIO()
    _write_tar(stream, {"folder": folder})
    assert secret[1].encode() not in stream.getvalue() and b"fine" in stream.getvalue()
    with tarfile.open(fileobj=io.BytesIO(stream.getvalue())) as archive:
        assert archive.getmember("folder/notes.txt").issym()


def test_ssh_target_refuses_a_folder_with_a_link_before_sending(sshd_server, tmp_path, secret):
    import sys

    from edgeprune.targets import open_target

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").symlink_to(secret[0])
    options = {"identity": sshd_server.identity, "known_hosts": sshd_server.known_hosts,
               "remote_python": sys.executable, "connect_timeout": 5}
    with open_target(sshd_server.host, **options) as target:
        with pytest.raises(BadInputError, match="notes.txt is a symbolic link"):
            target.run(["true"], files={"folder": folder})
        listing = target.run([sys.executable, "-c", "import json, os; print(json.dumps({'ls': os.listdir('.')}))"])
    assert "profilers" in listing["ls"] and "folder" not in listing["ls"]


def test_validate_over_ssh_sends_only_the_listed_files(bundle, secret, sshd_server, monkeypatch):
    """reports/ (here holding a link to a key) stays on this machine; the device gets the checksummed files."""
    import sys

    import edgeprune.targets.ssh as ssh
    from edgeprune.validation import validate

    (bundle / "reports").mkdir()
    (bundle / "reports" / "key").symlink_to(secret[0])
    sent = []

    def spy(pipe, members):
        sent.extend(members)
        ssh_write_tar(pipe, members)

    ssh_write_tar = ssh._write_tar
    monkeypatch.setattr(ssh, "_write_tar", spy)
    options = {"identity": sshd_server.identity, "known_hosts": sshd_server.known_hosts,
               "remote_python": sys.executable, "connect_timeout": 5}
    result = validate([str(bundle)], device="cpu", host=sshd_server.host, runs=5, seconds=0.05, ssh_options=options)
    assert result.reports[0]["parity"]["ok"] and result.reports[0]["where"] == sshd_server.host
    bundle_members = sorted(m for m in sent if m.startswith("bundle0"))
    assert bundle_members == ["bundle0/manifest.json", "bundle0/model.onnx", "bundle0/reference_io.npz"]
