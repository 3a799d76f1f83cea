"""INT8 schemes per target (the profile's ``quantization.scheme``).

- ``u8s8`` (x86 CPUs, ONNX Runtime): uint8 asymmetric activations, per-channel
  symmetric int8 weights. ONNX Runtime's x86 kernels (VNNI / AVX2 u8*s8) are
  fastest this way; symmetric int8 activations were measured about 4x slower
  for a YOLOv5s-size model on this machine's CPU.
- ``s8s8`` (ARM CPUs: rk3588, hisilicon boards, ONNX Runtime): int8
  activations and int8 weights, the default ONNX Runtime's quantization
  documentation recommends for ARM.
- ``tensorrt``: explicit quantization for TensorRT: symmetric int8 activations
  and per-channel weights, zero points 0, Q/DQ only on the inputs of weighted
  layers and on what TensorRT fuses (see edgekit.host.quantize.placement).
"""
import dataclasses
from typing import Any, Dict, List, Tuple

# Ops whose inputs TensorRT wants quantized (Q/DQ placement, TensorRT's
# "Q/DQ layer placement recommendations"): weighted layers, pooling, resize,
# and Concat (with one shared scale). Elementwise Add is handled by the residual rule.
TRT_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", "Resize", "Concat")


@dataclasses.dataclass(frozen=True)
class Scheme:
    name: str
    activation: str  # "uint8" | "int8"
    weight: str  # "int8"
    activation_symmetric: bool
    per_channel: bool
    op_types: Tuple[str, ...]  # () = every op ONNX Runtime can quantize
    exclude_output_ops: Tuple[str, ...]  # ops whose outputs get no Q/DQ of their own
    share_concat_scales: bool
    residual_rule: bool
    # Head convs split into box/score parts so they run int8 (edgekit.host.quantize.head_split).
    split_head: bool = False

    def ort_types(self) -> Tuple[Any, Any]:
        from onnxruntime.quantization import QuantType

        act = QuantType.QUInt8 if self.activation == "uint8" else QuantType.QInt8
        return act, QuantType.QInt8

    def extra_options(self) -> Dict[str, Any]:
        options: Dict[str, Any] = {
            "ActivationSymmetric": self.activation_symmetric,
            "WeightSymmetric": True,
        }
        if self.exclude_output_ops:
            options["OpTypesToExcludeOutputQuantization"] = list(self.exclude_output_ops)
        if self.name == "tensorrt":
            # TensorRT's parser wants every weight as Q->DQ on a float initializer,
            # and an explicit pair per consumer so each fusion sees its own.
            options["AddQDQPairToWeight"] = True
            options["DedicatedQDQPair"] = True
            options["QDQOpTypePerChannelSupportToAxis"] = {"MatMul": 1}
            # Biases stay float: TensorRT's ONNX parser rejects an int32 bias behind
            # DequantizeLinear (onnx-tensorrt #850) and quantizes biases itself.
            options["QuantizeBias"] = False
        return options

    def to_dict(self) -> Dict[str, Any]:
        return {
            "scheme": self.name,
            "activations": self.activation + (" symmetric" if self.activation_symmetric else " asymmetric"),
            "weights": "int8 symmetric " + ("per-channel" if self.per_channel else "per-tensor"),
            "format": "QDQ",
        }


def scheme_for(name: str, per_channel: bool = True) -> Scheme:
    if name == "u8s8":
        # Concat inputs and output share one scale here too: ONNX Runtime's
        # QLinearConcat then copies bytes instead of requantizing each input
        # (measured: QLinearConcat 0.31 -> 0.17 ms on the demo, 1.8 -> 0.9 ms
        # on the yolov5s-size model; demo mAP 0.7496 -> 0.7480).
        return Scheme("u8s8", "uint8", "int8", False, per_channel, (), (), True, False, split_head=True)
    if name == "s8s8":
        return Scheme("s8s8", "int8", "int8", False, per_channel, (), (), True, False, split_head=True)
    if name == "tensorrt":
        return Scheme("tensorrt", "int8", "int8", True, per_channel, TRT_OP_TYPES, ("Conv", "ConvTranspose", "Gemm", "MatMul"), True, True)
    raise ValueError("unknown quantization scheme %r" % name)


def op_types_to_quantize(scheme: Scheme) -> List[str]:
    if scheme.op_types:
        return list(scheme.op_types)
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
