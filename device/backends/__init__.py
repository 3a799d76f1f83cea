"""Inference backends: TensorRT (engines built on the board) and ONNX Runtime.

Each backend is a :class:`~edgekit.device.backends.base.Runner`; see
:mod:`edgekit.device.backends.select` for which one a variant gets. Importing
this package imports neither runtime.
"""
