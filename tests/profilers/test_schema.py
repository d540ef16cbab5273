"""The declarative schema checker every file format uses: one line naming the field, or None."""

import pytest
from edgeprune.profilers.schema import (
    Bool,
    Const,
    Either,
    Int,
    ListOf,
    MapOf,
    Maybe,
    Num,
    Obj,
    Str,
    Tagged,
    check,
    problem,
)

CELL = Obj({"estimate_ms": Num(min=0), "n": Int(min=0)}, {"note": Str()})
TABLE = Obj({"cells": MapOf(CELL), "step": Int(min=1)}, {"notes": ListOf(Str()), "fixed": Bool()})


def good():
    return {"cells": {"conv@8x8": {"estimate_ms": 0.5, "n": 3}}, "step": 8, "notes": ["a"], "extra": {"any": 1}}


def test_a_fitting_value_has_no_problem_and_extra_fields_are_allowed():
    assert problem(good(), TABLE) is None
    assert check(good(), TABLE, ValueError) == good()


@pytest.mark.parametrize("edit, line", [
    (lambda d: d["cells"]["conv@8x8"].update(estimate_ms=None),
     "cells['conv@8x8'].estimate_ms: expected a number >= 0, got null"),
    (lambda d: d["cells"]["conv@8x8"].update(estimate_ms=-0.1),
     "cells['conv@8x8'].estimate_ms: expected a number >= 0, got -0.1"),
    (lambda d: d["cells"]["conv@8x8"].update(estimate_ms=float("nan")),
     "cells['conv@8x8'].estimate_ms: expected a number >= 0, got NaN"),
    (lambda d: d["cells"]["conv@8x8"].update(estimate_ms=float("inf")),
     "cells['conv@8x8'].estimate_ms: expected a number >= 0, got Infinity"),
    (lambda d: d["cells"]["conv@8x8"].update(n=True), "cells['conv@8x8'].n: expected an integer >= 0, got true"),
    (lambda d: d["cells"]["conv@8x8"].update(n=2.5), "cells['conv@8x8'].n: expected an integer >= 0, got 2.5"),
    (lambda d: d["cells"]["conv@8x8"].pop("n"), "cells['conv@8x8'].n: missing, expected an integer >= 0"),
    (lambda d: d["cells"]["conv@8x8"].update(note=3), "cells['conv@8x8'].note: expected a string, got 3"),
    (lambda d: d.update(cells="x"), 'cells: expected an object, got "x"'),
    (lambda d: d.update(cells=[]), "cells: expected an object, got a list"),
    (lambda d: d.update(step=0), "step: expected an integer >= 1, got 0"),
    (lambda d: d.update(notes=["a", None]), "notes[1]: expected a string, got null"),
    (lambda d: d.update(fixed="yes"), 'fixed: expected true or false, got "yes"'),
    (lambda d: d.update(notes="x" * 100), 'notes: expected a list, got "' + "x" * 35 + '..."'),
])
def test_a_wrong_value_is_one_line_naming_the_field(edit, line):
    data = good()
    edit(data)
    assert problem(data, TABLE) == line
    with pytest.raises(ValueError, match="^file.json: "):
        check(data, TABLE, lambda bad: ValueError(f"file.json: {bad}"))


def test_a_wrong_top_level_names_no_field():
    assert problem([1], TABLE) == "expected an object, got a list"


def test_bounds_choices_patterns_maybe_either_tagged_const():
    assert problem(1.5, Num(min=0, max=1)) == "expected a number in [0, 1], got 1.5"
    assert problem(10**400, Int(min=0)) is None  # big ints are not floats: no overflow
    assert problem(float("nan"), Num()) is None  # unbounded numbers may be NaN (e.g. a Spearman of nothing)
    assert problem("fp8", Str(["fp16", "fp32"])) == 'expected one of "fp16", "fp32", got "fp8"'
    sha = Str(pattern="[0-9a-f]{64}", what="a sha256 (64 hex digits)")
    assert problem("ab", sha) == 'expected a sha256 (64 hex digits), got "ab"'
    assert problem("a" * 64, sha) is None
    assert problem(None, Maybe(Int())) is None
    assert problem("1", Maybe(Int())) == 'expected an integer or null, got "1"'
    assert problem({"a": "1"}, Maybe(Obj({"a": Int()}))) == 'a: expected an integer, got "1"'
    assert problem("1", Either(Int(), Num())) == 'expected an integer or a number, got "1"'
    assert problem("1", Either(Int(), Num(), what="a count")) == 'expected a count, got "1"'
    cal = Either(Const({}), Tagged("kind", {"ratio": Obj({"value": Num(min=0)}), "layout": Obj({"b": Num()})}))
    assert problem({}, cal) is None and problem({"kind": "ratio", "value": 2}, cal) is None
    assert problem({"value": 2}, cal) == 'kind: missing, expected one of "layout", "ratio"'
    assert problem({"kind": "ratio", "value": -2}, cal) == "value: expected a number >= 0, got -2"
    assert problem({"kind": "layout"}, cal) == "b: missing, expected a number"
    assert problem({"kind": 1}, cal) == 'kind: expected one of "layout", "ratio", got 1'
    assert problem(False, Const(0)) == "expected 0, got false"
