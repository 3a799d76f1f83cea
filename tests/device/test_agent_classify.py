"""A classification bundle: top-1/top-5 on the board against the host's PyTorch numbers."""
import json

import numpy as np
import pytest
from PIL import Image

from edgekit.contract.result import validate_result

CLASSES = 10
IMAGES = 16


@pytest.fixture(scope="module")
def classify_bundle(tmp_path_factory):
    import torch
    from torch import nn

    from edgekit.calibration.preprocess import PreprocessSpec, preprocess_file
    from edgekit.contract._version import __version__
    from edgekit.host.bundle.writer import BundleWriter

    root = tmp_path_factory.mktemp("classify")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, CLASSES)).eval()
    onnx_path = str(root / "model.onnx")
    torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), onnx_path, input_names=["input"], output_names=["logits"], opset_version=17, dynamo=False)
    pre = PreprocessSpec(size=(64, 64), resize="stretch", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    rng = np.random.default_rng(0)
    out = str(root / "bundle")
    with BundleWriter(out) as writer:
        labels, top1, top5 = {}, 0, 0
        for i in range(IMAGES):
            name = "img_%02d.png" % i
            path = writer.path("eval/images/" + name)
            Image.fromarray(rng.integers(0, 256, (40 + i, 70, 3), dtype=np.uint8)).save(path)
            x, _ = preprocess_file(path, pre)
            with torch.no_grad():
                logits = model(torch.from_numpy(x))[0].numpy()
            ranked = list(np.argsort(-logits))
            label = int(ranked[0]) if i % 2 == 0 else int(ranked[3])  # half right, half in the top 5 only
            labels[name] = label
            top1 += int(ranked[0] == label)
            top5 += int(label in ranked[:5])
        writer.add_json("eval/labels.json", labels)
        writer.add_file("models/fp32.onnx", onnx_path)
        manifest = {
            "name": "classify",
            "created": "2026-01-01T00:00:00Z",
            "edgekit_version": __version__,
            "profile": {"name": "cpu", "runtime": "onnxruntime", "providers": ["CPUExecutionProvider"], "max_drift": 0.01, "benchmark": {"warmup": 2, "iterations": 10, "threads": 0}},
            "task": "classify",
            "input": {"name": "input", "shape": [1, 3, 64, 64], "dtype": "float32"},
            "outputs": [{"name": "logits", "shape": [1, CLASSES]}],
            "preprocess": pre.to_dict(),
            "postprocess": {"layout": "logits", "class_names": [str(c) for c in range(CLASSES)], "top_k": 5},
            "eval": {"images": "eval/images", "labels": "eval/labels.json", "count": IMAGES},
            "variants": [{"name": "fp32", "precision": "fp32", "file": "models/fp32.onnx", "host_metrics": {"top1": top1 / IMAGES, "top5": top5 / IMAGES, "images": IMAGES}}],
        }
        writer.commit(manifest)
    return out


def test_classification_accuracy_matches_the_host(classify_bundle, tools):
    run = tools.run(tools.quick("run", classify_bundle))
    assert run.rc == 0, run.stderr
    assert validate_result(run.result) == []
    fp32 = run.run_of("fp32")
    acc = fp32["accuracy"]
    assert acc["metric"] == "top1" and acc["images"] == IMAGES
    assert acc["stats"] == {"top1": 0.5, "top5": 1.0}
    assert acc["drift"] == 0.0 and acc["passed"] is True
    assert fp32["stages_ms"]["postprocess"]["p50"] > 0
    with open(classify_bundle + "/manifest.json") as f:
        assert json.load(f)["variants"][0]["host_metrics"]["top1"] == 0.5
