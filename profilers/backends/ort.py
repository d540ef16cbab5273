"""ONNX Runtime runner: CPU EP everywhere, CUDA and TensorRT EPs where the device has them."""

import numpy as np

from ..errors import RuntimeUnavailable
from .base import Runner

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def random_inputs(session, seed=0, int_high=2):
    """Random data matching the session's input spec (symbolic dims taken as 1; token ids kept tiny so any
    vocabulary accepts them)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        dtype = _DTYPES.get(arg.type)
        if dtype is None:
            raise RuntimeUnavailable("input %s has unsupported type %s" % (arg.name, arg.type),
                                     "give inputs explicitly")
        if np.issubdtype(dtype, np.integer):
            feeds[arg.name] = rng.integers(0, int_high, size=shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[arg.name] = np.ones(shape, dtype=dtype)
        else:
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


class OrtRunner(Runner):
    """Times `run_with_iobinding` with inputs and outputs bound once, so no per-run copies are timed."""

    optimized = False  # the model is a graph ONNX Runtime already optimized on this machine (see `copy`)

    def _options(self, ort, optimize=True):
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        return options

    def copy(self):
        """An inactive runner of this active runner's model, on the same input arrays (a cold cell's copy).

        On the CPU EP the copy loads the graph this runner's model optimizes to (saved once through ONNX
        Runtime's `optimized_model_filepath`) with optimizations off: the same kernels, started in ~1 ms instead
        of ~5 ms (measured on a 128x128 conv cell), which keeps a cold cell's 64 copies affordable. The saved
        graph holds this machine's layout choices, so it is used here only, never kept.
        """
        if not self.active:
            raise RuntimeError("copy needs an active runner")
        if (self.provider or "CPUExecutionProvider") != "CPUExecutionProvider" or self.optimized:
            clone = OrtRunner(self.model_path, self.threads, self.provider, self.precision, self.feeds, self.spinning)
            clone.optimized = self.optimized
            return clone
        if getattr(self, "_optimized_model", None) is None:
            import os
            import tempfile

            import onnxruntime as ort

            handle, path = tempfile.mkstemp(suffix=".onnx", prefix="edgeprune-cell-")
            os.close(handle)
            try:
                options = self._options(ort)
                options.optimized_model_filepath = path
                options.log_severity_level = 3  # ORT warns that the saved graph is for this machine only: it is
                ort.InferenceSession(self.model_path, sess_options=options, providers=["CPUExecutionProvider"])
                with open(path, "rb") as handle:
                    self._optimized_model = handle.read()
            finally:
                os.unlink(path)
        clone = OrtRunner(self._optimized_model, self.threads, self.provider, self.precision, self.feeds,
                          self.spinning)
        clone.optimized = True
        return clone

    def activate_impl(self):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise RuntimeUnavailable("onnxruntime is not installed here (%s)" % err,
                                     "pip install onnxruntime (onnxruntime-gpu on CUDA devices)")
        provider = self.provider or "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise RuntimeUnavailable(
                "onnxruntime here has no %s (it has %s)" % (provider, ", ".join(ort.get_available_providers())),
                "install the onnxruntime build that ships it, or choose another runtime")
        options = self._options(ort, optimize=not self.optimized)
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        self.session = ort.InferenceSession(self.model_path, sess_options=options, providers=providers)
        feeds = self.inputs if self.inputs is not None else random_inputs(self.session)
        device = "cuda" if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        self.binding = self.session.io_binding()
        self._keep = []
        self._io = {"inputs": {}, "outputs": {}}
        for name, value in feeds.items():
            ort_value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device, 0)
            self._keep.append(ort_value)
            self._io["inputs"][name] = ort_value
            self.binding.bind_ortvalue_input(name, ort_value)
        for out in self.session.get_outputs():
            self.binding.bind_output(out.name, device)
        self.session.run_with_iobinding(self.binding)  # allocates outputs once; later runs reuse them
        outputs = self.binding.get_outputs()
        for out, value in zip(self.session.get_outputs(), outputs):
            self.binding.bind_ortvalue_output(out.name, value)
            self._io["outputs"][out.name] = value
        self._keep.extend(outputs)
        self.feeds = feeds

    def infer_impl(self):
        self.session.run_with_iobinding(self.binding)

    def share_io_impl(self, other):
        if not isinstance(other, OrtRunner):
            return False
        for name, value in other._io["inputs"].items():
            self.binding.bind_ortvalue_input(name, value)
        for name, value in other._io["outputs"].items():
            self.binding.bind_ortvalue_output(name, value)
        self._keep.extend(list(other._io["inputs"].values()) + list(other._io["outputs"].values()))
        return True

    def outputs_impl(self):
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, self.feeds)))

    def deactivate_impl(self):
        del self.binding, self.session, self._keep, self._io
