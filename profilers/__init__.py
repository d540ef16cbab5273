"""Device side of edgeprune: turns a measurement plan into timings on the device's own runtime.

This package travels to the device as plain source (over SSH it is copied to a temp dir and run as
`python -m profilers`), so it imports only the standard library, numpy, onnx and the runtime, uses relative
imports only, and stays Python 3.8 compatible. Never import torch here.
"""

FORMAT_VERSION = 1
