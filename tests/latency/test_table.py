"""The latency table file: content id, tamper and format checks, atomic save, calibration and prediction."""

import json

import pytest

import edgeprune.atomic
from edgeprune.errors import BadInputError
from edgeprune.latency.blocks import Block, signature_key
from edgeprune.latency.grid import plan_signature
from edgeprune.latency.predict import MissingCellError
from edgeprune.latency.table import FORMAT_VERSION, WARM_ONLY_VERSION, LatencyTable, cell_record, content_id

CONV = {
    "kind": "conv",
    "kernel": [3, 3],
    "stride": [1, 1],
    "pads": [1, 1, 1, 1],
    "dilation": [1, 1],
    "groups": 1,
    "hw": [8, 8],
    "act": "relu",
    "residual": False,
}
POOL = {"kind": "pool", "op": "GlobalAveragePool", "hw": [8, 8]}
STEP = 8


def f_conv(ci, co):
    return 0.01 + 0.001 * ci + 0.002 * co + 0.0001 * ci * co


def f_pool(c):
    return 0.005 + 0.0002 * c


def make_table(calibration=None):
    blocks = [Block("layer.conv", "conv", CONV, 32, 64), Block("pool", "pool", POOL, 64, 64)]
    signatures, cells, layers = {}, {}, {}
    for block, law in ((blocks[0], f_conv), (blocks[1], lambda ci, co: f_pool(ci))):
        grid = plan_signature(block.signature, [block], STEP, "coarse")
        signatures[block.sig_key] = grid.to_dict()
        for ci, co in grid.cells:
            ms = law(ci, co)
            stats = {
                "estimate_ms": ms,
                "min_ms": ms * 0.95,
                "median_ms": ms * 1.02,
                "p90_ms": ms * 1.1,
                "mad_ms": ms * 0.01,
                "n": 60,
            }
            key, record = cell_record(block.kind, block.sig_key, ci, co, stats)
            cells[key] = record
        layers[block.name] = {
            "kind": block.kind,
            "c_in": block.c_in,
            "c_out": block.c_out,
            "cell": f"{block.sig_key}@{block.c_in}x{block.c_out}",
        }
    table = LatencyTable(
        fingerprint={"device": "cpu", "threads": 1},
        runtime={"backend": "onnxruntime", "threads": 1},
        model={"spec": "test:tiny", "input_shape": [1, 3, 8, 8]},
        estimator={"name": "median_of_pass_min"},
        step=STEP,
        signatures=signatures,
        cells=cells,
        layers=layers,
        calibration=calibration or {},
        fidelity={"n_variants": 2, "mape": 0.05},
        uncovered={"GridSample": 1},
        layout_ops={"Flatten": 1},
        notes=["a note"],
        profile={"wall_s": 1.5},
    )
    return table, blocks


def test_cell_record():
    stats = {
        "estimate_ms": 1.0,
        "min_ms": 0.9,
        "median_ms": 1.1,
        "p90_ms": 1.3,
        "mad_ms": 0.05,
        "n": 9,
        "passes": 3,
        "pass_spread": 0.01,
    }
    key, record = cell_record("conv", "conv-abc", 8, 16, stats)
    assert key == "conv-abc@8x16"
    assert record == {
        "kind": "conv",
        "signature": "conv-abc",
        "c_in": 8,
        "c_out": 16,
        "estimate_ms": 1.0,
        "min_ms": 0.9,
        "median_ms": 1.1,
        "p90_ms": 1.3,
        "mad_ms": 0.05,
        "n": 9,
    }


def test_content_id_ignores_the_id_field_and_key_order():
    data = {"a": 1, "b": [1, 2]}
    assert content_id(data) == content_id({"b": [1, 2], "a": 1, "id": "whatever"})
    assert content_id(data) != content_id({"a": 2, "b": [1, 2]})
    assert len(content_id(data)) == 64


def test_save_load_roundtrip(tmp_path):
    table, blocks = make_table({"kind": "ratio", "value": 1.25})
    path = tmp_path / "t.json"
    saved_id = table.save(path)
    assert saved_id == table.id == json.loads(path.read_text())["id"]
    loaded = LatencyTable.load(path)
    assert loaded.to_dict() == table.to_dict()
    assert loaded.id == saved_id
    assert loaded.predict_ms(blocks) == table.predict_ms(blocks)
    data = json.loads(path.read_text())
    # a table without cold cells is written as before (two-state tables: tests/latency/test_two_state.py)
    assert data["format_version"] == WARM_ONLY_VERSION and data["kind"] == "latency_table"
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_id_changes_with_content():
    a, _ = make_table()
    b, _ = make_table()
    assert a.id == b.id
    b.notes.append("another note")
    assert a.id != b.id


def test_edited_number_is_detected(tmp_path):
    table, _ = make_table()
    path = tmp_path / "t.json"
    table.save(path)
    data = json.loads(path.read_text())
    key = sorted(data["cells"])[0]
    data["cells"][key]["estimate_ms"] *= 0.5
    path.write_text(json.dumps(data))
    with pytest.raises(BadInputError, match="modified"):
        LatencyTable.load(path)


def test_edited_text_is_detected(tmp_path):
    table, _ = make_table({"kind": "additive", "value": 0.25})
    path = tmp_path / "t.json"
    table.save(path)
    text = path.read_text()
    assert '"value": 0.25' in text
    path.write_text(text.replace('"value": 0.25', '"value": 0.15'))
    with pytest.raises(BadInputError) as info:
        LatencyTable.load(path)
    assert "modified" in info.value.message and info.value.hint


def test_wrong_format_version(tmp_path):
    table, _ = make_table()
    data = table.to_dict()
    data["format_version"] = FORMAT_VERSION + 1
    data["id"] = content_id(data)  # consistent id: the version check itself must refuse it
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BadInputError, match="format_version"):
        LatencyTable.load(path)


def test_not_json(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"format_version": 1, "cells": ')
    with pytest.raises(BadInputError, match="not valid JSON"):
        LatencyTable.load(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BadInputError):
        LatencyTable.load(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        LatencyTable.load(tmp_path / "absent.json")
    with pytest.raises(BadInputError):
        LatencyTable.load(tmp_path)


@pytest.mark.parametrize("payload", [[1, 2, 3], {"kind": "result", "format_version": 1}, "a string"])
def test_other_json_is_refused(tmp_path, payload):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(BadInputError, match="not an edgeprune latency table"):
        LatencyTable.load(path)


def test_missing_field_with_valid_id(tmp_path):
    table, _ = make_table()
    data = table.to_dict()
    del data["layers"]
    data["id"] = content_id(data)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BadInputError, match="layers"):
        LatencyTable.load(path)


def _first_cell(data):
    return data["cells"][sorted(data["cells"])[0]]


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.update(cells="x"), 'cells: expected an object, got "x"'),
    (lambda d: d.update(calibration="x"), 'calibration: expected an object, got "x"'),
    (lambda d: d.update(fingerprint="x"), 'fingerprint: expected an object, got "x"'),
    (lambda d: d.update(layers=[]), "layers: expected an object, got a list"),
    (lambda d: _first_cell(d).update(estimate_ms=None), "].estimate_ms: expected a number >= 0, got null"),
    (lambda d: _first_cell(d).update(estimate_ms=-1.5), "].estimate_ms: expected a number >= 0, got -1.5"),
    (lambda d: d["calibration"].update(kind="magic"), 'calibration.kind: expected one of "additive", "layout", '),
    (lambda d: d["calibration"].pop("value"), "calibration.value: missing, expected a number >= 0"),
    (lambda d: d["runtime"].update(threads="1"), 'runtime.threads: expected an integer >= 1, got "1"'),
    (lambda d: d["fidelity"].update(mape="5%"), 'fidelity.mape: expected a number >= 0 or null, got "5%"'),
    (lambda d: d["layers"]["pool"].update(signature="nowhere"), "layers['pool'].signature 'nowhere' is not among"),
])
def test_wrong_types_are_one_line_naming_file_and_field(tmp_path, edit, field):
    """A table whose id was recomputed after editing (so only the content is wrong) is refused by its schema."""
    table, _ = make_table({"kind": "ratio", "value": 1.25})
    data = table.to_dict()
    edit(data)
    data["id"] = content_id(data)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BadInputError) as caught:
        LatencyTable.load(path)
    assert caught.value.message.startswith(f"latency table {path}: ")
    assert field in caught.value.message and "\n" not in caught.value.message
    assert caught.value.hint == "re-run edgeprune profile"


def test_bench_tables_pass_their_schema():
    """Real tables written by `edgeprune profile` (every calibration kind) load unchanged."""
    from pathlib import Path

    paths = sorted((Path(__file__).resolve().parents[2] / "bench" / "results" / "tables").glob("**/*.json"))
    kinds = {LatencyTable.load(p).calibration["kind"] for p in paths}
    assert kinds == {"ratio", "additive", "layout", "regime"}


def test_show_refuses_a_bad_table_with_one_line_exit_2(tmp_path):
    from tests.commands.test_profile_cli import run_cli

    table, _ = make_table()
    data = table.to_dict()
    _first_cell(data)["estimate_ms"] = -3.0
    data["id"] = content_id(data)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    proc = run_cli("show", str(path))
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: latency table") and "estimate_ms" in lines[0], lines


def test_save_is_atomic(tmp_path, monkeypatch):
    table, _ = make_table()
    path = tmp_path / "t.json"

    def broken_dump(obj, handle, **kw):
        handle.write('{"format_version": 1, "cells": {')  # half a file, then the process "dies"
        raise RuntimeError("disk full")

    monkeypatch.setattr(edgeprune.atomic.json, "dump", broken_dump)
    with pytest.raises(RuntimeError, match="disk full"):
        table.save(path)
    assert list(tmp_path.iterdir()) == []  # no table, no temporary sibling


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    table, _ = make_table()
    path = tmp_path / "t.json"
    old_id = table.save(path)
    before = path.read_bytes()
    table.notes.append("changed")

    def broken_dump(obj, handle, **kw):
        handle.write("{")
        raise KeyboardInterrupt

    monkeypatch.setattr(edgeprune.atomic.json, "dump", broken_dump)
    with pytest.raises(KeyboardInterrupt):
        table.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]
    monkeypatch.undo()
    assert LatencyTable.load(path).id == old_id


# -- calibration and prediction -----------------------------------------------------------------------------


def test_calibrate_ratio_additive_and_none():
    ratio, _ = make_table({"kind": "ratio", "value": 1.5})
    additive, _ = make_table({"kind": "additive", "value": 0.25})
    plain, _ = make_table()
    assert ratio.calibrate({"cells_ms": 2.0}) == pytest.approx(3.0)
    assert additive.calibrate({"cells_ms": 2.0}) == pytest.approx(2.25)
    assert plain.calibrate({"cells_ms": 2.0}) == 2.0
    assert additive.calibrate({"cells_ms": 0.0}) == pytest.approx(0.25)
    assert ratio.calibrate({"cells_ms": 0.0}) == 0.0


def test_regime_calibration_prices_on_step_convs_and_the_rest_apart():
    from edgeprune.latency.report import layer_rows

    table, blocks = make_table({"kind": "regime", "value": 0.5, "other_ratio": 1.25})
    conv, pool = blocks  # the conv at 32 -> 64 channels is on the step; a pool is never a conv
    assert conv.on_step(STEP)
    f = table.features(blocks)
    assert f["cells_on_step_ms"] == pytest.approx(f_conv(32, 64)) and f["cells_other_ms"] == pytest.approx(f_pool(64))
    assert table.predict_ms(blocks) == pytest.approx(0.5 * f_conv(32, 64) + 1.25 * f_pool(64))
    off = Block("layer.conv", "conv", CONV, 32, 60)  # off the step: the other ratio
    assert table.features([off])["cells_on_step_ms"] == 0.0
    assert table.predict_ms([off]) == pytest.approx(1.25 * table.raw_ms([off])[0])
    for block in blocks:  # what `edgeprune profile` writes beside each layer
        table.layers[block.name]["signature"] = block.sig_key
    rows = {r["layer"]: r["ms"] for r in layer_rows(table)}
    assert rows == pytest.approx({"layer.conv": 0.5 * f_conv(32, 64), "pool": 1.25 * f_pool(64)})


def test_predict_sums_blocks_then_calibrates():
    table, blocks = make_table({"kind": "additive", "value": 0.5})
    raw, exact_share = table.raw_ms(blocks)
    assert raw == pytest.approx(f_conv(32, 64) + f_pool(64), rel=1e-9)
    assert exact_share == 1.0  # both blocks sit on measured cells
    assert table.predict_ms(blocks) == pytest.approx(raw + 0.5)
    ratio, _ = make_table({"kind": "ratio", "value": 2.0})
    assert ratio.predict_ms(blocks) == pytest.approx(2 * raw)


def test_predict_between_cells_uses_the_rule():
    table, _ = make_table()
    conv = Block("x", "conv", CONV, 16, 56)  # aligned, between measured points on both axes
    ms, exact = table.block_ms(conv)
    assert ms == pytest.approx(f_conv(16, 56), rel=1e-9)
    assert exact is False
    _, share = table.raw_ms([conv, Block("pool", "pool", POOL, 64, 64)])
    assert share == 0.5


def test_unknown_signature_and_missing_cell():
    table, _ = make_table()
    other = dict(CONV, stride=[2, 2])
    with pytest.raises(BadInputError, match="no block like"):
        table.block_ms(Block("odd", "conv", other, 32, 64))
    sig_key = signature_key(CONV)
    del table.cells[f"{sig_key}@32x64"]
    with pytest.raises(MissingCellError, match=f"{sig_key}@32x64"):
        table.block_ms(Block("layer.conv", "conv", CONV, 32, 64))


def test_a_grouped_conv_cut_to_one_channel_per_group_is_read_under_its_layer():
    """At c_in = c_out = groups a grouped conv exports as depthwise: the same op, predicted under its layer's
    grouped signature (and only that layer's: another layer, or another group count, is still refused)."""
    grouped = dict(CONV, groups=8)
    block = Block("layer.grouped", "conv", grouped, 32, 64)
    grid = plan_signature(grouped, [block], STEP, "coarse")
    table, _ = make_table()
    table.signatures[block.sig_key] = grid.to_dict()
    for ci, co in grid.cells:
        key, record = cell_record("conv", block.sig_key, ci, co, {"estimate_ms": f_conv(ci, co), "min_ms": 1.0,
                                                                  "median_ms": 1.0, "p90_ms": 1.0, "mad_ms": 0.0,
                                                                  "n": 3})
        table.cells[key] = record
    table.layers[block.name] = {"kind": "conv", "c_in": 32, "c_out": 64, "signature": block.sig_key,
                                "cell": f"{block.sig_key}@32x64"}
    as_depthwise = dict(CONV, groups="depthwise")
    ms, _ = table.block_ms(Block("layer.grouped", "conv", as_depthwise, 8, 8))
    assert ms == pytest.approx(table.block_ms(Block("layer.grouped", "conv", grouped, 8, 8))[0])
    with pytest.raises(BadInputError, match="no block like"):
        table.block_ms(Block("layer.grouped", "conv", as_depthwise, 16, 16))  # 16 groups: not this layer's op
    with pytest.raises(BadInputError, match="no block like"):
        table.block_ms(Block("layer.conv", "conv", as_depthwise, 8, 8))
