"""COCO evaluation of a PyTorch detector with the project's shared pipeline.

Preprocessing (edgekit.calibration.preprocess), decoding and NMS
(edgekit.device.postprocess) and scoring (edgekit.device.coco_eval) are the
same code the agent runs on the board, so a number measured here and one
measured on a device differ only by what the runtime did to the model.
"""
import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from edgekit.calibration.preprocess import PreprocessSpec, Transform, preprocess_file
from edgekit.device.coco_eval import DetectionCollector, evaluate, load_coco
from edgekit.device.postprocess import PostprocessSpec, postprocess

from edgekit.contract.errors import EdgekitError


@torch.no_grad()
def evaluate_coco_torch(
    model: torch.nn.Module,
    images_dir: str,
    annotations: str,
    pre: PreprocessSpec,
    post: PostprocessSpec,
    limit: Optional[int] = None,
    batch_size: int = 8,
) -> Dict[str, float]:
    """mAP of ``model`` (eval mode, output (B, N, 5 + C)) on a COCO-annotated folder.

    ``limit`` evaluates only the first images (by id), for quick checks.
    """
    if not os.path.isfile(annotations):
        raise EdgekitError("annotations %s not found" % annotations, "pass a COCO instances.json")
    coco = load_coco(annotations)
    image_ids = sorted(coco.getImgIds())
    if limit is not None:
        image_ids = image_ids[: max(int(limit), 0)]
    collector = DetectionCollector(post.category_ids)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(image_ids), batch_size):
            ids = image_ids[start : start + batch_size]
            tensors: List[np.ndarray] = []
            transforms: List[Transform] = []
            for image_id in ids:
                path = os.path.join(images_dir, coco.loadImgs(image_id)[0]["file_name"])
                try:
                    x, transform = preprocess_file(path, pre)
                except (OSError, ValueError) as exc:
                    raise EdgekitError("cannot read image %s (%s)" % (path, exc), "regenerate or fix the evaluation set")
                tensors.append(x)
                transforms.append(transform)
            out: Any = model(torch.from_numpy(np.concatenate(tensors, 0)))
            if isinstance(out, (tuple, list)):
                out = out[0]
            out_np = out.float().cpu().numpy()
            for i, image_id in enumerate(ids):
                boxes, scores, classes = postprocess(out_np[i : i + 1], post)
                collector.add(image_id, transforms[i].boxes_to_original(boxes), scores, classes)
    finally:
        model.train(was_training)
    return evaluate(coco, collector, image_ids)
