"""Loading a model and describing it: checkpoints, factories, ONNX files, the built-in demo."""
