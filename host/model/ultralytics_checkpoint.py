"""What an Ultralytics (YOLOv8 / YOLO11) checkpoint says about its model.

Ultralytics' trainer saves ``{'model': DetectionModel (fp16), 'ema': ...,
'train_args': {'imgsz': 640, ...}, 'date': ..., 'version': ..., ...}``
(``ema`` is None after ``strip_optimizer``; ``model`` is then the EMA). Its
classes live in the installed ``ultralytics`` package, so unpickling needs no
``--code-path`` when it is installed (it still needs ``--trust-checkpoint``:
unpickling runs code). This module reads the metadata: the input size it was
trained at, its class names, and the ``yolov8`` output layout of its head in
export mode ``(1, 4 + classes, anchors)``.
"""
from typing import Any, Dict, List, Optional


def is_ultralytics(data: Any, module: Any) -> bool:
    """True for a checkpoint written by the Ultralytics package (its model class comes from ``ultralytics``)."""
    return isinstance(data, dict) and type(module).__module__.split(".")[0] == "ultralytics"


def _imgsz(args: Any) -> Optional[List[int]]:
    size = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
    if isinstance(size, int) and size > 0:
        return [size, size]
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        return [int(size[0]), int(size[1])]
    return None


def _head(module: Any) -> Any:
    for m in module.modules():
        if type(m).__name__ in ("Detect", "Segment", "Pose", "OBB", "v10Detect"):
            return m
    return None


def ultralytics_meta(data: Dict[str, Any], module: Any) -> Dict[str, Any]:
    """Metadata for ``LoadedModel`` (input_size, class_names, output_layout) and a note; {} for other checkpoints."""
    if not is_ultralytics(data, module):
        return {}
    meta: Dict[str, Any] = {}
    size = _imgsz(data.get("train_args"))
    if size:
        meta["input_size"] = size
    names = getattr(module, "names", None) or data.get("names")
    if isinstance(names, dict):
        try:
            meta["class_names"] = [str(names[k]) for k in sorted(names)]
        except TypeError:
            meta["class_names"] = [str(v) for v in names.values()]
    elif isinstance(names, (list, tuple)):
        meta["class_names"] = [str(v) for v in names]
    head = _head(module)
    # A plain Detect head in export mode returns (1, 4 + classes, anchors):
    # decoded xywh and sigmoid scores, edgekit's "yolov8" layout. End-to-end
    # heads (YOLOv10/YOLO26 one-to-one: (1, max_det, 6)) are not that layout.
    if head is not None and type(head).__name__ == "Detect" and hasattr(head, "reg_max") and not getattr(head, "end2end", False):
        meta["output_layout"] = "yolov8"
    return meta


def describe(data: Dict[str, Any], module: Any) -> Optional[str]:
    """One line for the load notes, e.g. "Ultralytics 8.4.190 checkpoint (DetectionModel, 80 classes)"."""
    if not is_ultralytics(data, module):
        return None
    names = getattr(module, "names", None) or {}
    return "Ultralytics %s checkpoint (%s, %d classes%s)" % (
        data.get("version") or "?",
        type(module).__name__,
        len(names),
        ", trained at %s" % "x".join(map(str, _imgsz(data.get("train_args")))) if _imgsz(data.get("train_args")) else "",
    )


def unfreeze(module: Any) -> int:
    """Make the parameters trainable as Ultralytics' trainer does (all but the DFL's fixed projection); returns how many were frozen.

    ``strip_optimizer`` (every best.pt/last.pt after training) sets
    ``requires_grad=False`` on every parameter; kept so, recovery after
    pruning would train nothing."""
    count = 0
    for name, p in module.named_parameters():
        if ".dfl" in name:
            continue
        if not p.requires_grad:
            count += 1
            p.requires_grad_(True)
    return count


def adopt(data: Any, module: Any):
    """(metadata, notes) for an Ultralytics checkpoint's model, made trainable; ({}, []) for any other checkpoint."""
    if not is_ultralytics(data, module):
        return {}, []
    notes = [n for n in [describe(data, module)] if n]
    frozen = unfreeze(module)
    if frozen:
        notes.append("%d frozen parameter(s) made trainable, as Ultralytics' trainer does (all but the DFL)" % frozen)
    return ultralytics_meta(data, module), notes
