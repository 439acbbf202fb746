"""Serving: onnxruntime engine and BentoML service (no torch)."""
