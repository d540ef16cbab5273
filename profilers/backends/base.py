"""The runner contract every backend follows."""


class Runner(object):
    """One model on one runtime. Subclasses implement `activate_impl`, `infer_impl`, `deactivate_impl`."""

    def __init__(self, model_path, threads=1, provider=None, precision="fp32", inputs=None, spinning=True):
        self.model_path = model_path
        self.threads = int(threads)
        # Whether idle pool threads busy-wait for the next run (ONNX Runtime's default, kept for whole models).
        # Cells turn it off: a cell timed right after another one would share the cores with the previous
        # session's still-spinning workers (measured: 2-thread cells up to 10x slow, 1-thread cells unaffected).
        self.spinning = bool(spinning)
        self.provider = provider
        self.precision = precision
        self.inputs = inputs  # optional {name: numpy array}; random data of the model's input spec otherwise
        self.active = False

    def activate(self):
        if self.active:
            raise RuntimeError("runner for %s is already active" % self.model_path)
        self.activate_impl()
        self.active = True

    def infer(self):
        """Run once on the bound inputs. This is the call the timing loop times."""
        if not self.active:
            raise RuntimeError("runner for %s is not active" % self.model_path)
        self.infer_impl()

    def outputs(self):
        """Run once and return {name: numpy array} (for parity checks, never timed)."""
        if not self.active:
            raise RuntimeError("runner for %s is not active" % self.model_path)
        return self.outputs_impl()

    def copy(self):
        """An inactive runner of the same model and settings (a cold cell rotates over such copies)."""
        return type(self)(self.model_path, self.threads, self.provider, self.precision, self.inputs, self.spinning)

    def share_io(self, other):
        """Run on `other`'s input and output buffers (same I/O spec); False where the backend cannot.

        A cold cell rotates over copies of its weights (profilers/measure.py): with shared buffers its
        activations stay as warm as a layer's inside a whole model, so only the weights come from memory.
        """
        if not (self.active and other.active):
            raise RuntimeError("share_io needs two active runners")
        return self.share_io_impl(other)

    def deactivate(self):
        if self.active:
            self.deactivate_impl()
            self.active = False

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()

    def activate_impl(self):
        raise NotImplementedError

    def infer_impl(self):
        raise NotImplementedError

    def outputs_impl(self):
        raise NotImplementedError

    def share_io_impl(self, other):
        return False

    def deactivate_impl(self):
        raise NotImplementedError
