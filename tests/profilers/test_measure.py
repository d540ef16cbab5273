"""run_plan and `python -m profilers run`: every cell and model measured, failures as error records."""

import json
import pathlib
import subprocess
import sys

import onnx
import pytest

from profilers import FORMAT_VERSION, synth
from profilers.errors import ProfilerError
from profilers.measure import measure_cells, run_plan

REPO = pathlib.Path(__file__).resolve().parents[2]
FAST = {
    "passes": 3,
    "runs": 3,
    "warmup_runs": 2,
    "warmup_s": 0.05,
    "pass_s": 0.0,
    "max_spread": 100.0,
    "extra_passes": 0,
}

CELLS = [
    {
        "key": "conv@4x8",
        "signature": {"kind": "conv", "kernel": [3, 3], "pads": [1, 1, 1, 1], "hw": [6, 6], "act": "relu"},
        "c_in": 4,
        "c_out": 8,
    },
    {"key": "gemm@16x4", "signature": {"kind": "gemm", "rows": 1}, "c_in": 16, "c_out": 4},
    {
        "key": "pool@8x8",
        "signature": {"kind": "pool", "op": "GlobalAveragePool", "hw": [4, 4]},
        "c_in": 8,
        "c_out": 8,
    },
]


def plan(tmp_path, cells=CELLS, models=("m",), **extra):
    for key in models:
        onnx.save(
            synth.build_cell({"kind": "gemm", "rows": 2}, 8, 8, seed=1), str(tmp_path / (key + ".onnx"))
        )
    data = {
        "format_version": FORMAT_VERSION,
        "kind": "plan",
        "runtime": {"backend": "onnxruntime", "threads": 1, "precision": "fp32"},
        "estimator": FAST,
        "cells": list(cells),
        "models": [{"key": key, "file": key + ".onnx"} for key in models],
    }
    data.update(extra)
    return data


def check_stats(stats):
    assert stats["estimate_ms"] > 0
    assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    assert stats["n"] == 3 * 3  # pass_s 0: 3 runs per pass, 3 passes
    assert stats["passes"] == 3


def test_run_plan_measures_every_cell_and_model(tmp_path):
    result = run_plan(plan(tmp_path), base_dir=str(tmp_path))
    assert result["format_version"] == FORMAT_VERSION
    assert result["kind"] == "result"
    assert result["errors"] == {}
    assert set(result["cells"]) == {c["key"] for c in CELLS}
    for stats in result["cells"].values():
        check_stats(stats)
    assert set(result["models"]) == {"m"}
    (round_stats,) = result["models"]["m"]  # one entry per round; model_rounds defaults to 1
    check_stats(round_stats)
    assert result["runtime"]["backend"] == "onnxruntime"
    assert result["estimator"]["name"] == "median_of_pass_min"
    assert result["estimator"]["runs"] == 3
    assert isinstance(result["facts"], dict) and result["facts"]
    assert [d["group"] for d in result["drift"]] == [0]
    json.dumps(result)  # the reply must be JSON as it stands


def test_model_rounds_and_groups(tmp_path):
    result = run_plan(plan(tmp_path, models=("a", "b"), model_rounds=2, group_size=2), base_dir=str(tmp_path))
    assert set(result["cells"]) == {c["key"] for c in CELLS}
    assert [d["group"] for d in result["drift"]] == [0, 1]  # 3 cells in groups of 2
    assert set(result["models"]) == {"a", "b"}
    assert all(len(rounds) == 2 for rounds in result["models"].values())


def test_reference_cell_records_drift(tmp_path):
    reference = dict(CELLS[1], key="reference")
    result = run_plan(plan(tmp_path, models=(), reference=reference), base_dir=str(tmp_path))
    (drift,) = result["drift"]
    assert drift["drift"] >= 0.0
    assert 1 <= drift["attempts"] <= 2
    assert "reference" not in result["cells"]


@pytest.mark.parametrize("version", [None, 0, 2, "1"])
def test_wrong_format_version_is_a_profiler_error(tmp_path, version):
    data = plan(tmp_path)
    if version is None:
        del data["format_version"]
    else:
        data["format_version"] = version
    with pytest.raises(ProfilerError) as info:
        run_plan(data, base_dir=str(tmp_path))
    assert info.value.kind == "bad_plan"
    assert str(FORMAT_VERSION) in info.value.message


def test_unknown_backend_is_a_profiler_error(tmp_path):
    data = plan(tmp_path)
    data["runtime"]["backend"] = "nonesuch"
    with pytest.raises(ProfilerError) as info:
        run_plan(data, base_dir=str(tmp_path))
    assert info.value.kind == "unknown_backend"


def test_impossible_cell_becomes_an_error_record_others_measured(tmp_path):
    bad = {
        "key": "dw@4x8",
        "signature": {"kind": "conv", "kernel": [3, 3], "hw": [6, 6], "groups": "depthwise"},
        "c_in": 4,
        "c_out": 8,
    }
    unknown = {"key": "lstm@4x4", "signature": {"kind": "lstm"}, "c_in": 4, "c_out": 4}
    result = run_plan(
        plan(tmp_path, cells=[CELLS[0], bad, CELLS[1], unknown, CELLS[2]]), base_dir=str(tmp_path)
    )
    assert set(result["cells"]) == {c["key"] for c in CELLS}
    assert set(result["errors"]) == {"dw@4x8", "lstm@4x4"}
    for key in ("dw@4x8", "lstm@4x4"):
        record = result["errors"][key]
        assert set(record) == {"error"}
        assert set(record["error"]) == {"kind", "message", "hint"}
        assert record["error"]["kind"] == "bad_signature"
    assert "depthwise" in result["errors"]["dw@4x8"]["error"]["message"]
    assert "lstm" in result["errors"]["lstm@4x4"]["error"]["message"]
    assert set(result["models"]) == {"m"}


def test_kernel_larger_than_input_becomes_an_error_record(tmp_path):
    bad = {
        "key": "conv@big-kernel",
        "signature": {"kind": "conv", "kernel": [5, 5], "hw": [2, 2]},
        "c_in": 4,
        "c_out": 4,
    }
    result = run_plan(plan(tmp_path, cells=[CELLS[0], bad], models=()), base_dir=str(tmp_path))
    assert set(result["cells"]) == {CELLS[0]["key"]}
    assert set(result["errors"]) == {"conv@big-kernel"}
    assert result["errors"]["conv@big-kernel"]["error"]["kind"] == "bad_signature"


def test_corrupt_model_file_is_an_error_record(tmp_path):
    data = plan(tmp_path, models=("good", "broken", "missing"))
    (tmp_path / "broken.onnx").write_bytes(b"\x00 definitely not a protobuf \xff" * 10)
    (tmp_path / "missing.onnx").unlink()
    result = run_plan(data, base_dir=str(tmp_path))
    assert set(result["models"]) == {"good"}
    check_stats(result["models"]["good"][0])
    assert set(result["errors"]) == {"broken", "missing"}
    for key in ("broken", "missing"):
        error = result["errors"][key]["error"]
        assert error["kind"] == "bad_model"
        assert key + ".onnx" in error["message"]
        assert error["hint"]
    assert set(result["cells"]) == {c["key"] for c in CELLS}


def test_model_paths_are_relative_to_base_dir(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    data = plan(sub, cells=[])
    assert run_plan(data, base_dir=str(sub))["errors"] == {}
    assert set(run_plan(data, base_dir=str(tmp_path))["errors"]) == {"m"}


class FakeRunner:
    """Counts lifecycle calls; used to check that every activated runner is deactivated."""

    live = 0

    def __init__(self, model, **kw):
        self.model = model

    def activate(self):
        FakeRunner.live += 1

    def infer(self):
        pass

    def deactivate(self):
        FakeRunner.live -= 1


def test_measure_cells_deactivates_every_runner_and_emits_each_group_then_its_progress(capsys):
    from profilers.timing import Estimator

    FakeRunner.live = 0
    reference = dict(CELLS[1], key="reference")
    results, errors, drift = measure_cells(CELLS, FakeRunner, Estimator(**FAST), reference=reference, group_size=2)
    assert FakeRunner.live == 0  # the cells' runners and the reference's
    assert set(results) == {c["key"] for c in CELLS} and errors == {}
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    # Each cell is sent as its own record once its group is final, before that group's progress line.
    assert [line.get("key") or line.get("progress") for line in lines] == ["conv@4x8", "gemm@16x4", 2, "pool@8x8", 3]
    assert all(line["stats"] == results[line["key"]] for line in lines if line.get("record") == "cell")
    assert [(p["total"], p["stage"]) for p in lines if "progress" in p] == [(3, "cells")] * 2


def test_a_drifted_group_is_remeasured_and_emitted_once_with_shared_reference_readings(capsys, monkeypatch):
    """Cells of a group are final only after its drift check; the reading after a group opens the next one."""
    import profilers.measure as measure
    from profilers.timing import Estimator

    readings = iter([1.0, 1.0, 1.1, 1.1])  # before g0, after g0 | after g1: +10 % drift | after g1 again: steady
    calls = []

    def time_ms(self):
        calls.append(1)
        return next(readings)

    monkeypatch.setattr(measure._Reference, "time_ms", time_ms)
    FakeRunner.live = 0
    results, _, drift = measure_cells(CELLS, FakeRunner, Estimator(**FAST), reference=dict(CELLS[1], key="ref"),
                                      group_size=2)
    assert len(calls) == 4  # one reading per group boundary, plus one for the retry
    assert [(d["group"], d["attempts"]) for d in drift] == [(0, 1), (1, 2)]
    assert drift[1]["drift"] == pytest.approx(0.0)
    # each cell carries the machine state its group was timed in: the readings around its final attempt
    assert [results[c["key"]]["reference_ms"] for c in CELLS] == pytest.approx([1.0, 1.0, 1.1])
    assert [d["reference_ms"] for d in drift] == pytest.approx([1.0, 1.1])
    assert FakeRunner.live == 0
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"record"' in line]
    assert sorted(r["key"] for r in records) == sorted(results)  # the drifted attempt sent nothing


# -- the device-side command line ---------------------------------------------------------------------------


def run_cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "profilers", *args], cwd=str(cwd), capture_output=True, text=True, timeout=120
    )


def test_cli_run_writes_the_result_file(tmp_path):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan(tmp_path, cells=CELLS[:2])))
    out = tmp_path / "r.json"
    proc = run_cli("run", str(plan_path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"result_file": str(out)}
    result = json.loads(out.read_text())
    assert result["kind"] == "result"
    assert set(result["cells"]) == {c["key"] for c in CELLS[:2]}
    assert set(result["models"]) == {"m"}  # found beside the plan file
    assert result["errors"] == {}
    assert not (tmp_path / "r.json.tmp").exists()
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert {"progress": 2, "total": 2, "stage": "cells"} in lines
    # Every result was also sent on stderr as soon as it was final: the host commits these as they come.
    assert {r["key"]: r["stats"] for r in lines if r.get("record") == "cell"} == result["cells"]
    assert {r["key"]: r["rounds"] for r in lines if r.get("record") == "model"} == result["models"]


def test_cli_run_to_stdout(tmp_path):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan(tmp_path, cells=CELLS[2:], models=())))
    proc = run_cli("run", str(plan_path))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result["cells"]) == {CELLS[2]["key"]}


def test_cli_bad_plan_exits_2_with_an_error_record(tmp_path):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(dict(plan(tmp_path), format_version=99)))
    out = tmp_path / "r.json"
    proc = run_cli("run", str(plan_path), "--out", str(out))
    assert proc.returncode == 2
    reply = json.loads(proc.stdout)
    assert set(reply) == {"error"}
    assert reply["error"]["kind"] == "bad_plan"
    assert "99" in reply["error"]["message"]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_cells_run_without_pool_spinning_and_whole_models_with_it(tmp_path, monkeypatch):
    """A cell timed right after another shares the cores with the previous session's spinning workers, so cells
    turn spinning off; whole models keep ONNX Runtime's default, as deployed."""
    import profilers.measure as measure
    from profilers.backends.ort import OrtRunner

    seen = []

    class Recording(OrtRunner):
        def activate_impl(self):
            super().activate_impl()
            entry = self.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
            seen.append(("model" if isinstance(self.model_path, str) else "cell", entry))

    monkeypatch.setattr(measure, "runner_class", lambda backend: Recording)
    run_plan(plan(tmp_path, runtime={"backend": "onnxruntime", "threads": 2, "precision": "fp32"}),
             base_dir=str(tmp_path))
    assert {entry for kind, entry in seen if kind == "cell"} == {"0"}
    assert {entry for kind, entry in seen if kind == "model"} == {"1"}
    assert sum(kind == "cell" for kind, _ in seen) == len(CELLS)
