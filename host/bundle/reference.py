"""Host reference metrics: each variant's COCO mAP under ONNX Runtime on the host.

Uses the agent's own pipeline (edgekit.calibration.preprocess,
edgekit.device.postprocess, edgekit.device.coco_eval) on the bundle's own
``eval/`` copy, so a board's number differs from this one only by what its
runtime does to the model.
"""
import os
from typing import Callable, Dict, Optional

import numpy as np

from edgekit.calibration.preprocess import PreprocessSpec, preprocess_file
from edgekit.device.coco_eval import DetectionCollector, evaluate, load_coco
from edgekit.device.postprocess import PostprocessSpec, postprocess

from edgekit.contract.errors import EdgekitError
from ..export.session import open_session


def evaluate_onnx(
    onnx_path: str,
    images_dir: str,
    annotations: str,
    pre: PreprocessSpec,
    post: PostprocessSpec,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Dict[str, float]:
    """The 12 COCO stats (plus ``images``) of one ONNX model on a COCO-annotated folder."""
    coco = load_coco(annotations)
    image_ids = sorted(coco.getImgIds())
    session = open_session(onnx_path)
    input_name = session.get_inputs()[0].name
    collector = DetectionCollector(post.category_ids)
    for n, image_id in enumerate(image_ids):
        path = os.path.join(images_dir, coco.loadImgs(image_id)[0]["file_name"])
        try:
            x, transform = preprocess_file(path, pre)
        except (OSError, ValueError, SyntaxError) as exc:
            raise EdgekitError("cannot read evaluation image %s (%s)" % (path, exc), "fix or remove it from the annotations")
        output = session.run(None, {input_name: x})[0]
        boxes, scores, classes = postprocess(np.asarray(output), post)
        collector.add(image_id, transform.boxes_to_original(boxes), scores, classes)
        if progress is not None:
            progress(n + 1, len(image_ids))
    stats = evaluate(coco, collector, image_ids)
    stats["images"] = len(image_ids)
    return stats
