"""Every word list the host and the agent must agree on, defined once.

The manifest and result validators, the CLIs' choices and the runners all read
these tuples; adding a precision, a backend or an output layout starts here.
Python 3.8, stdlib only.
"""

# What a bundle's model does: the agent's accuracy path depends on it.
TASKS = ("detect", "classify")
# Numeric precisions a variant can be built at (profile ``variants``, manifest ``precision``).
PRECISIONS = ("fp32", "fp16", "int8")
# Detector output layouts the agent decodes (manifest ``postprocess.layout``).
DETECT_LAYOUTS = ("yolov5", "yolov8", "boxes")
# Every model output layout the host can describe: detector layouts plus classifier logits.
OUTPUT_LAYOUTS = DETECT_LAYOUTS + ("logits",)
# Input tensor layouts and image handling (manifest ``preprocess``).
TENSOR_LAYOUTS = ("NCHW", "NHWC")
RESIZE_MODES = ("letterbox", "stretch")
COLOR_ORDERS = ("RGB", "BGR")
# Inference backends on the board; ``auto`` picks TensorRT where it is, else ONNX Runtime.
BACKENDS = ("tensorrt", "onnxruntime")
BACKEND_CHOICES = ("auto",) + BACKENDS
# A run's status in the result.
RUN_STATUSES = ("ok", "failed", "skipped")
# The agent's commands that produce a result, and those that do not.
RESULT_COMMANDS = ("run", "bench", "eval")
