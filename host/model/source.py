"""What the build starts from: a model plus how its inputs and outputs are read.

Wraps ``edgekit.host.model.loading.load_model`` (``--model``: ``demo``, a
checkpoint, or an ONNX file) and adds what the bundle needs besides the
network: the preprocess/postprocess specs, and for the demo its own
calibration and evaluation images so that ``edgekit build --profile cpu``
works with no other argument.
"""
import dataclasses
import os
from typing import Any, List, Optional, Sequence, Tuple

from edgekit.calibration.preprocess import PreprocessSpec
from edgekit.device.postprocess import PostprocessSpec

from edgekit.contract.errors import EdgekitError
from edgekit.host.model.loading import LoadedModel


@dataclasses.dataclass
class ModelSource:
    """A loaded model (the one model type, :class:`LoadedModel`) settled for a
    build: its input size and how the bundle reads its inputs and outputs."""

    model: LoadedModel
    name: str  # short name for the bundle ("demo", the checkpoint's stem)
    input_size: Tuple[int, int]
    preprocess: PreprocessSpec
    postprocess: PostprocessSpec
    default_calib_dir: Optional[str] = None
    default_eval: Optional[str] = None

    @property
    def module(self) -> Any:  # torch.nn.Module in eval mode, or None for an ONNX input
        return self.model.module

    @property
    def onnx_path(self) -> Optional[str]:
        return self.model.onnx_path

    @property
    def source(self) -> str:  # where it came from, for the manifest
        return self.model.source

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def category_ids(self) -> List[int]:
        return list(self.postprocess.category_ids)


def _stem(ref: str) -> str:
    base = os.path.basename(ref.rstrip("/\\"))
    for ext in (".onnx", ".pt", ".pth", ".torchscript"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base or "model"


def _yolo_preprocess(size: Sequence[int]) -> PreprocessSpec:
    # YOLOv5/YOLOv8 export convention: letterbox with grey 114, RGB, /255, NCHW.
    return PreprocessSpec(size=size, resize="letterbox", pad_value=114, color="RGB", scale=1.0 / 255.0, layout="NCHW")


def load_source(
    ref: str,
    input_size: Optional[Tuple[int, int]],
    profile_size: Tuple[int, int],
    weights: Optional[str] = None,
    pretrained: bool = True,
    trust_checkpoint: bool = False,
    code_path: Optional[str] = None,
) -> ModelSource:
    """Load ``--model`` (edgekit.host.model.loading) and settle the input size:
    ``--input-size``, else the model's own (what it was trained or exported
    at), else the profile's."""
    if ref in ("demo", "demo-v8") and weights is None and not pretrained:
        return _demo_source(input_size, pretrained=False, name=ref)
    from edgekit.host.model.loading import load_model

    loaded = load_model(ref=ref, weights=weights, trust_checkpoint=trust_checkpoint, code_path=code_path)
    if loaded.task != "detect":
        raise EdgekitError("model %s is a %s model; edgekit build makes bundles of detectors" % (ref, loaded.task), "pass a detection model")
    size = tuple(input_size or loaded.input_size or profile_size)
    if loaded.onnx_path is not None and loaded.input_size and tuple(loaded.input_size) != size:
        raise EdgekitError(
            "%s has a fixed %dx%d input, not %dx%d" % (ref, loaded.input_size[0], loaded.input_size[1], size[0], size[1]),
            "drop --input-size, or export the model at that size",
        )
    if ref in ("demo", "demo-v8"):
        from edgekit.host import demo

        data = demo.demo_data()
        loaded.source = "edgekit %s detector (%s weights)" % (ref, "retrained" if weights else "shipped")
        return ModelSource(
            model=loaded,
            name=ref,
            input_size=(int(size[0]), int(size[1])),
            preprocess=_size(demo.preprocess_spec(), size),
            postprocess=demo.postprocess_spec(ref),
            default_calib_dir=data.calib_dir,
            default_eval=os.path.dirname(data.val_annotations),
        )
    post = PostprocessSpec(layout=loaded.output_layout, class_names=loaded.class_names, category_ids=loaded.category_ids)
    return ModelSource(
        model=loaded,
        name=_stem(ref),
        input_size=(int(size[0]), int(size[1])),
        preprocess=_yolo_preprocess(size),
        postprocess=post,
    )


def _size(spec: PreprocessSpec, size: Sequence[int]) -> PreprocessSpec:
    data = spec.to_dict()
    data["size"] = [int(size[0]), int(size[1])]
    return PreprocessSpec.from_dict(data)


def _demo_source(input_size: Optional[Tuple[int, int]], pretrained: bool = True, name: str = "demo") -> ModelSource:
    """The demo without edgekit.host.model.loading: only for its untrained network (tests, benchmarks)."""
    from edgekit.host import demo

    module = demo.load_demo_model(pretrained=pretrained, name=name)
    size = tuple(input_size or demo.INPUT_SIZE)
    data = demo.demo_data()
    source = "edgekit %s detector (%s weights)" % (name, "shipped" if pretrained else "untrained")
    post = demo.postprocess_spec(name)
    model = LoadedModel(module=module, onnx_path=None, source=source, task="detect", output_layout=post.layout,
                        input_size=(int(size[0]), int(size[1])), class_names=list(post.class_names), category_ids=list(post.category_ids))
    return ModelSource(
        model=model,
        name=name,
        input_size=(int(size[0]), int(size[1])),
        preprocess=_size(demo.preprocess_spec(), size),
        postprocess=post,
        default_calib_dir=data.calib_dir,
        default_eval=os.path.dirname(data.val_annotations),
    )
