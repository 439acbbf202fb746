"""Batch scoring and evaluation: ``clsloc score`` and ``clsloc evaluate``, on onnxruntime (no torch).

inputs -> job (local runner | Ray runner, both through work.score_items and the
serving Engine) -> rows appended to a sink -> summary (clsloc.metrics) -> report.
"""
