"""Host-side exporters: torch -> ONNX with a parity check (TensorRT engines and bundles come later)."""
