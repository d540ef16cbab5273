"""A small declarative checker for the JSON files that cross stage boundaries (stdlib only; Python >= 3.8).

Each format's schema lives beside the code that owns the format and is checked when the file is read, so a
wrong type becomes one line naming the field instead of a traceback far away:

    TABLE = Obj({"cells": MapOf(Obj({"estimate_ms": Num(min=0)}))})
    problem(data, TABLE)  # "cells['conv@8x8'].estimate_ms: expected a number >= 0, got null", or None

The caller wraps that line in its own error (BadInputError on the host, ProfilerError on the device) with
the file's name and the fix. Objects may carry fields a schema does not name (newer writers add some).
"""

import json
import math
import re


def show(value):
    """A wrong value as a message names it: its JSON spelling, long text cut short."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:36] + "...\""


class Schema(object):
    """One rule: `what` says what it wants; `check` returns what is wrong with `value` at `path`, or None."""

    what = "a value"

    def check(self, value, path):
        raise NotImplementedError

    def expected(self, value, path):
        return "%sexpected %s, got %s" % (path + ": " if path else "", self.what, show(value))


class _Bounded(Schema):
    noun = "a number"

    def __init__(self, min=None, max=None):
        self.min, self.max = min, max
        if min is not None and max is not None:
            self.what = "%s in [%s, %s]" % (self.noun, min, max)
        elif min is not None:
            self.what = "%s >= %s" % (self.noun, min)
        elif max is not None:
            self.what = "%s <= %s" % (self.noun, max)
        else:
            self.what = self.noun

    def check(self, value, path):
        if not self.accepts(value):
            return self.expected(value, path)
        bounded = self.min is not None or self.max is not None
        if bounded and isinstance(value, float) and not math.isfinite(value):  # NaN, inf: never within bounds
            return self.expected(value, path)
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            return self.expected(value, path)
        return None


class Num(_Bounded):
    """A JSON number (not a boolean); with bounds, also finite."""

    def accepts(self, value):
        return isinstance(value, (int, float)) and not isinstance(value, bool)


class Int(_Bounded):
    """A JSON integer (not a boolean)."""

    noun = "an integer"

    def accepts(self, value):
        return isinstance(value, int) and not isinstance(value, bool)


class Bool(Schema):
    what = "true or false"

    def check(self, value, path):
        return None if isinstance(value, bool) else self.expected(value, path)


class Str(Schema):
    """A string; `choices` or a full-match `pattern` (described by `what`) narrow it."""

    def __init__(self, choices=None, pattern=None, what=None):
        self.choices = tuple(choices) if choices else None
        self.pattern = re.compile(pattern) if pattern else None
        if what:
            self.what = what
        elif self.choices:
            self.what = "one of " + ", ".join(json.dumps(c) for c in self.choices)
        else:
            self.what = "a string"

    def check(self, value, path):
        if not isinstance(value, str):
            return self.expected(value, path)
        if self.choices is not None and value not in self.choices:
            return self.expected(value, path)
        if self.pattern is not None and not self.pattern.fullmatch(value):
            return self.expected(value, path)
        return None


class Obj(Schema):
    """An object with `required` and `optional` fields ({name: schema}); other fields are allowed."""

    what = "an object"

    def __init__(self, required=None, optional=None):
        self.required = required or {}
        self.optional = optional or {}

    def check(self, value, path):
        if not isinstance(value, dict):
            return self.expected(value, path)
        for name, schema in self.required.items():
            where = "%s.%s" % (path, name) if path else name
            if name not in value:
                return "%s: missing, expected %s" % (where, schema.what)
            bad = schema.check(value[name], where)
            if bad:
                return bad
        for name, schema in self.optional.items():
            if name in value:
                bad = schema.check(value[name], "%s.%s" % (path, name) if path else name)
                if bad:
                    return bad
        return None


class MapOf(Schema):
    """An object whose every value (under any name) follows `values`."""

    what = "an object"

    def __init__(self, values):
        self.values = values

    def check(self, value, path):
        if not isinstance(value, dict):
            return self.expected(value, path)
        for key in sorted(value):
            bad = self.values.check(value[key], "%s[%r]" % (path, key))
            if bad:
                return bad
        return None


class ListOf(Schema):
    """A list of `items`, at least `min_len` long."""

    def __init__(self, items, min_len=0):
        self.items, self.min_len = items, min_len
        self.what = {0: "a list", 1: "a non-empty list"}.get(min_len, "a list of at least %d items" % min_len)

    def check(self, value, path):
        if not isinstance(value, list) or len(value) < self.min_len:
            return self.expected(value, path)
        for index, item in enumerate(value):
            bad = self.items.check(item, "%s[%d]" % (path, index))
            if bad:
                return bad
        return None


class Tagged(Schema):
    """An object whose `key` field names which of `variants` ({tag: schema}) the rest must follow; a tag
    not among them must follow `other` (when given: formats that allow kinds they do not constrain)."""

    what = "an object"

    def __init__(self, key, variants, other=None):
        self.key, self.variants, self.other = key, variants, other
        self.tag = Str() if other is not None else Str(sorted(variants))

    def check(self, value, path):
        if not isinstance(value, dict):
            return self.expected(value, path)
        where = "%s.%s" % (path, self.key) if path else self.key
        if self.key not in value:
            return "%s: missing, expected %s" % (where, self.tag.what)
        bad = self.tag.check(value[self.key], where)
        if bad:
            return bad
        return self.variants.get(value[self.key], self.other).check(value, path)


class Const(Schema):
    """Exactly `value` (e.g. {} for "none")."""

    def __init__(self, value):
        self.value = value
        self.what = show(value) if not isinstance(value, (dict, list)) else json.dumps(value)

    def check(self, value, path):
        return None if value == self.value and type(value) is type(self.value) else self.expected(value, path)


class Maybe(Schema):
    """null, or what `schema` wants."""

    def __init__(self, schema):
        self.schema = schema
        self.what = "%s or null" % schema.what

    def check(self, value, path):
        if value is None:
            return None
        bad = self.schema.check(value, path)
        return self.expected(value, path) if bad == self.schema.expected(value, path) else bad


class Either(Schema):
    """The first of `schemas` that fits; when none does, the last one's complaint (put the general one last)."""

    def __init__(self, *schemas, **kwargs):
        self.schemas = schemas
        self.what = kwargs.get("what") or " or ".join(s.what for s in schemas)

    def check(self, value, path):
        bad = None
        for schema in self.schemas:
            bad = schema.check(value, path)
            if bad is None:
                return None
        return self.expected(value, path) if bad == schema.expected(value, path) else bad


def problem(value, schema):
    """What is wrong with `value` under `schema` (one line naming the field), or None when it fits."""
    return schema.check(value, "")


def check(value, schema, fail):
    """`value` when it fits `schema`; else raise `fail(line)` (the caller's error, naming file and fix)."""
    bad = problem(value, schema)
    if bad is not None:
        raise fail(bad)
    return value
