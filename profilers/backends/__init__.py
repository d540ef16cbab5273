"""Runners, one per runtime, named by "module:Class" strings and imported only when used (Polygraphy style).

A runner wraps one model: `activate()` loads it and binds inputs, `infer()` runs it once (the timed call),
`deactivate()` frees it. Public methods check state and call the `*_impl` methods a backend overrides.
"""

import importlib

BACKENDS = {
    "onnxruntime": "backends.ort:OrtRunner",
    "tensorrt": "backends.trt:TrtRunner",
}


def runner_class(backend):
    """Import the runner class for `backend` lazily, so a device needs only the runtime it uses."""
    from ..errors import ProfilerError

    if backend not in BACKENDS:
        raise ProfilerError("unknown_backend", "unknown runtime backend %r" % backend,
                            "use one of: %s" % ", ".join(sorted(BACKENDS)))
    module, attr = BACKENDS[backend].split(":")
    package = __name__.rsplit(".", 1)[0]
    return getattr(importlib.import_module("." + module, package), attr)
