"""INT8 (ONNX Runtime static QDQ, per-profile scheme) and fp16 variants of an fp32 ONNX graph."""
from .int8 import AccuracyControl, QuantResult, quantize_int8
from .schemes import Scheme, scheme_for

__all__ = ["AccuracyControl", "QuantResult", "Scheme", "quantize_int8", "scheme_for"]
