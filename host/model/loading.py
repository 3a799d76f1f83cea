"""Model loading: what ``--model`` (and ``--weights``) can name.

- ``demo``, ``demo-v8``: the built-in demo detectors (YOLOv5-style and
  YOLOv8-style) with their shipped weights.
- ``package.module:factory`` or ``path/to/file.py:factory``: a function that
  returns an ``nn.Module``; ``--weights`` then loads a state_dict into it with
  ``torch.load(weights_only=True)`` (no code from the file runs), or a pruned
  model written by ``edgekit prune``.
- ``checkpoint.pt``: a pickled model object, as YOLOv5 and Ultralytics save
  them (``{'model': nn.Module}``, fp16). Unpickling runs code named by the
  file, so it needs ``--trust-checkpoint``, and ``--code-path DIR`` where the
  model's classes live (e.g. a yolov5 clone). Weights become float32.
- ``model.onnx``: already exported; pruning and export are skipped.

TorchScript files are refused: their graphs cannot be restructured.
"""
import importlib
import importlib.util
import os
import pickle
import sys
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edgekit.contract.errors import EdgekitError

_CHECKPOINT_EXTENSIONS = (".pt", ".pth", ".ckpt", ".bin")
_TORCHSCRIPT_EXTENSIONS = (".torchscript", ".ts", ".jit", ".ptl")
# COCO's 80 detection classes map onto category ids 1..90 with gaps.
COCO80_TO_91 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]


@dataclass
class LoadedModel:
    module: Any  # Optional[torch.nn.Module]: eval mode, float32; None for .onnx input
    onnx_path: Optional[str]  # set for .onnx input (prune/export are skipped)
    source: str  # what the user passed
    task: str  # "detect" | "classify"
    output_layout: str  # "yolov5" | "yolov8" | "boxes" | "logits"
    input_size: Optional[Tuple[int, int]]  # native (h, w) if known, else None -> the profile's
    class_names: List[str] = field(default_factory=list)
    category_ids: Optional[List[int]] = None
    notes: List[str] = field(default_factory=list)  # what loading did that the user should know (fp16 -> fp32, ...)

    @property
    def is_onnx(self) -> bool:
        return self.onnx_path is not None

    def info(self) -> Dict[str, Any]:
        """JSON-able metadata (kept beside a pruned model's weights)."""
        return {
            "source": self.source,
            "task": self.task,
            "output_layout": self.output_layout,
            "input_size": list(self.input_size) if self.input_size else None,
            "class_names": list(self.class_names),
            "category_ids": list(self.category_ids) if self.category_ids is not None else None,
        }


def load_model(ref: str = "demo", weights: Optional[str] = None, trust_checkpoint: bool = False, code_path: Optional[str] = None) -> LoadedModel:
    """Load what ``ref`` names (see the module doc); every user mistake is an EdgekitError."""
    if not ref or not isinstance(ref, str):
        raise EdgekitError("no model given", "pass --model demo, module:factory, file.py:factory, a .pt checkpoint or an .onnx file")
    if code_path is not None:
        _add_code_path(code_path)
    if ref in ("demo", "demo-v8"):
        return _load_demo(weights, ref)
    if ref.lower().endswith(".onnx"):
        if weights:
            raise EdgekitError("--weights does not apply to an ONNX model", "drop --weights; the .onnx file holds its weights")
        return _load_onnx(ref)
    factory = _split_factory(ref)
    if factory is not None:
        module = _call_factory(ref, *factory)
        notes: List[str] = []
        meta: Dict[str, Any] = {}
        if weights:
            notes, meta = _load_weights(module, weights)
        return _finish(module, ref, notes, meta)
    if os.path.exists(ref) or ref.lower().endswith(_CHECKPOINT_EXTENSIONS + _TORCHSCRIPT_EXTENSIONS):
        module, notes, meta = _load_checkpoint(ref, trust_checkpoint)
        if weights:
            more, pruned_meta = _load_weights(module, weights)
            notes.extend(more)
            meta.update(pruned_meta)
        return _finish(module, ref, notes, meta)
    raise EdgekitError(
        "cannot tell what model %r is" % ref,
        "pass demo, package.module:factory, file.py:factory, a .pt checkpoint or an .onnx file",
    )


# --- sources ------------------------------------------------------------------


def _add_code_path(code_path: str) -> None:
    if not os.path.isdir(code_path):
        raise EdgekitError("--code-path %s is not a folder" % code_path, "pass the folder that holds the model's Python source (e.g. a yolov5 clone)")
    path = os.path.abspath(code_path)
    if path not in sys.path:
        # First on the path: a checkpoint's `models.yolo` must resolve to this
        # tree, not to some other package called `models`.
        sys.path.insert(0, path)
        importlib.invalidate_caches()


def _load_demo(weights: Optional[str], name: str = "demo") -> LoadedModel:
    from edgekit.host.demo import CATEGORY_IDS, CLASS_NAMES, DEMO_MODELS, INPUT_SIZE, build_demo_model, load_demo_model

    notes: List[str] = []
    if weights:
        module = build_demo_model(name).float().eval()
        notes, _ = _load_weights(module, weights)
    else:
        module = load_demo_model(name=name)
    return LoadedModel(
        module=module.float().eval(),
        onnx_path=None,
        source=name,
        task="detect",
        output_layout=DEMO_MODELS[name][0],
        input_size=tuple(INPUT_SIZE),  # type: ignore[arg-type]
        class_names=list(CLASS_NAMES),
        category_ids=list(CATEGORY_IDS),
        notes=notes,
    )


def _split_factory(ref: str) -> Optional[Tuple[str, str]]:
    if ":" not in ref:
        return None
    where, _, name = ref.rpartition(":")
    if not where or not name.isidentifier():
        return None
    if len(where) == 1 and where.isalpha():  # "C:" of a Windows path, not a factory
        return None
    return where, name


def _import_file(path: str):
    if not os.path.isfile(path):
        raise EdgekitError("model file %s does not exist" % path, "check the path in --model FILE.py:factory")
    name = "edgekit_user_model_%s" % os.path.splitext(os.path.basename(path))[0]
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so the file can import its neighbours
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise EdgekitError("cannot import %s" % path, "pass a Python file (.py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pickling and deep copies look classes up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise EdgekitError("importing %s failed (%s: %s)" % (path, type(exc).__name__, _short(exc)), "fix the error in that file")
    return module


def _call_factory(ref: str, where: str, name: str):
    import torch

    if where.endswith(".py") or os.sep in where or "/" in where:
        mod = _import_file(where)
    else:
        try:
            mod = importlib.import_module(where)
        except ImportError as exc:
            raise EdgekitError(
                "cannot import module %r for --model %s (%s)" % (where, ref, _short(exc)),
                "check the name, or pass --code-path DIR with the folder that contains it",
            )
        except Exception as exc:
            raise EdgekitError("importing %r failed (%s: %s)" % (where, type(exc).__name__, _short(exc)), "fix the error in that module")
    factory = getattr(mod, name, None)
    if factory is None or not callable(factory):
        raise EdgekitError("%s has no callable %r" % (where, name), "name a function or class in it that returns the model")
    try:
        module = factory()
    except Exception as exc:
        raise EdgekitError("%s:%s() raised %s: %s" % (where, name, type(exc).__name__, _short(exc)), "make the factory callable with no arguments")
    if isinstance(module, torch.jit.ScriptModule):
        raise EdgekitError("%s returned a TorchScript module, which cannot be pruned" % ref, "return the eager nn.Module instead")
    if not isinstance(module, torch.nn.Module):
        raise EdgekitError("%s returned %s, not a torch.nn.Module" % (ref, type(module).__name__), "return the model from the factory")
    return module


def _is_torchscript(path: str) -> bool:
    if path.lower().endswith(_TORCHSCRIPT_EXTENSIONS):
        return True
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    # torch.jit.save archives carry the model's code; torch.save archives do not.
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def _load_checkpoint(path: str, trust: bool) -> Tuple[Any, List[str], Dict[str, Any]]:
    import torch

    if not os.path.isfile(path):
        raise EdgekitError("model file %s does not exist" % path, "check the path")
    if _is_torchscript(path):
        raise EdgekitError("%s is a TorchScript file, which is not prunable" % path, "pass the eager model (module:factory or a checkpoint of the nn.Module)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError) as exc:
        if "weights only" not in str(exc).lower() and "weights_only" not in str(exc).lower() and "unsupported global" not in str(exc).lower():
            raise EdgekitError("cannot read %s (%s)" % (path, _short(exc)), "pass a checkpoint written by torch.save")
        data = None
    except Exception as exc:  # truncated files, foreign formats
        raise EdgekitError("cannot read %s (%s: %s)" % (path, type(exc).__name__, _short(exc)), "pass a checkpoint written by torch.save")
    if data is not None:
        raise EdgekitError(
            "%s holds only weights (a state_dict), not a model" % path,
            "pass the model definition as --model module:factory (or demo) and this file as --weights",
        )
    if not trust:
        raise EdgekitError(
            "%s is a pickled model object (as YOLOv5/Ultralytics save them); loading it runs code named in the file" % path,
            "if you trust its source, pass --trust-checkpoint, and --code-path DIR with the model's source tree (e.g. a yolov5 clone)",
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as exc:
        raise EdgekitError(
            "%s needs Python module %r to unpickle, which is not importable" % (path, exc.name),
            "if %r is part of the model's code, pass --code-path DIR with its source tree (the folder that contains it); "
            "if it is a library that code imports, install it (e.g. pip install %s)" % ((exc.name or "").split(".")[0], (exc.name or "").split(".")[0]),
        )
    except Exception as exc:
        raise EdgekitError("cannot unpickle %s (%s: %s)" % (path, type(exc).__name__, _short(exc)), "check --code-path matches the code the checkpoint was saved with")
    module = data
    meta: Dict[str, Any] = {}
    notes = []
    if isinstance(data, dict):
        module, ema_note = _yolov5_train_module(data)
        if ema_note:
            notes.append(ema_note)
        if isinstance(data.get("edgekit"), dict):
            meta = dict(data["edgekit"])
        from .ultralytics_checkpoint import adopt  # YOLOv8/YOLO11: input size, names, layout; trainable again

        more, ultralytics_notes = adopt(data, module)
        meta = dict(more, **meta)
        notes.extend(ultralytics_notes)
    if isinstance(module, torch.jit.ScriptModule):
        raise EdgekitError("%s holds a TorchScript module, which is not prunable" % path, "pass the eager model")
    if not isinstance(module, torch.nn.Module):
        keys = ", ".join(sorted(map(str, data))[:6]) if isinstance(data, dict) else type(data).__name__
        raise EdgekitError("%s holds no nn.Module under 'model' or 'ema' (found: %s)" % (path, keys), "save the model as {'model': model}")
    dtypes = {p.dtype for p in module.parameters()}
    if dtypes and dtypes != {torch.float32}:
        notes.append("weights converted from %s to float32" % ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes)))
    module = module.float().eval()
    # YOLOv5/Ultralytics heads return (predictions, raw maps) unless exporting.
    for m in module.modules():
        if type(m).__name__ in ("Detect", "Segment", "Pose", "OBB") and hasattr(m, "export"):
            m.export = True
    return module, notes, meta


def _yolov5_train_module(data: Dict[Any, Any]) -> Tuple[Any, Optional[str]]:
    """The model of a YOLOv5 ``train.py`` checkpoint ({'model', 'ema', 'optimizer', 'epoch', ...}, fp16).

    The EMA weights when present, as YOLOv5's own loader (``attempt_load``)
    takes them: they are what its validation measured. ``ModelEMA`` freezes
    every EMA parameter, so which parameters train is taken from ``model``
    (frozen there only when train.py's ``--freeze`` froze them); otherwise
    recovery would find nothing to train.
    """
    import torch

    ema, model = data.get("ema"), data.get("model")
    if not isinstance(ema, torch.nn.Module):
        return model, None
    trainable = {n: p.requires_grad for n, p in model.named_parameters()} if isinstance(model, torch.nn.Module) else {}
    for name, p in ema.named_parameters():
        p.requires_grad_(trainable.get(name, True))
    frozen = sum(1 for v in trainable.values() if not v)
    return ema, "took the EMA weights ('ema', as YOLOv5 does)%s" % (", %d parameter(s) frozen as in 'model'" % frozen if frozen else "")


def _load_onnx(path: str) -> LoadedModel:
    if not os.path.isfile(path):
        raise EdgekitError("ONNX file %s does not exist" % path, "check the path")
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise EdgekitError("cannot read ONNX file %s (%s)" % (path, _short(exc)), "pass a valid .onnx file")
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1 or not graph.output:
        raise EdgekitError("%s has %d inputs and %d outputs" % (path, len(inputs), len(graph.output)), "edgekit takes models with one image input")

    def dims(value) -> List[Optional[int]]:
        return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]

    in_dims = dims(inputs[0])
    input_size = None
    if len(in_dims) == 4 and in_dims[2] and in_dims[3]:
        input_size = (int(in_dims[2]), int(in_dims[3]))
    meta = {p.key: p.value for p in model.metadata_props}
    names = _names_from_metadata(meta.get("names"))
    layout = meta.get("output_layout")
    out = dims(graph.output[0])
    task, layout = _layout_from_shape([d or 0 for d in out], layout, has_objectness=None)
    n_classes = _class_count(layout, [d or 0 for d in out])
    if not names:
        names = ["class%d" % i for i in range(n_classes)] if n_classes else []
    return LoadedModel(
        module=None,
        onnx_path=os.path.abspath(path),
        source=path,
        task=task,
        output_layout=layout,
        input_size=input_size,
        class_names=names,
        category_ids=_category_ids(names),
    )


def _names_from_metadata(text: Optional[str]) -> List[str]:
    """Ultralytics writes ``names`` as a Python dict literal ({0: 'person', ...})."""
    if not text:
        return []
    import ast

    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    return _names_list(value)


# --- weights ------------------------------------------------------------------


def _load_weights(module, path: str) -> Tuple[List[str], Dict[str, Any]]:
    """Load a state_dict (or a pruned model from edgekit prune) into ``module``; returns notes and metadata."""
    import torch

    from edgekit.host.prune.checkpoint import is_pruned_checkpoint, load_pruned_state

    if not os.path.isfile(path):
        raise EdgekitError("weights file %s does not exist" % path, "check the --weights path")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EdgekitError(
            "cannot load weights %s with weights_only=True (%s)" % (path, _short(exc)),
            "save a state_dict (torch.save(model.state_dict(), path)); a pickled model goes to --model with --trust-checkpoint",
        )
    if is_pruned_checkpoint(data):
        load_pruned_state(module, data, "pruned model %s" % path)
        info = data.get("info") or {}
        meta = {k: info[k] for k in ("output_layout", "input_size", "class_names", "category_ids") if info.get(k) is not None}
        return ["layers resized to the pruned sizes in %s" % path], meta
    state = data
    if isinstance(data, dict):
        for key in ("state_dict", "model_state_dict", "model", "ema"):
            if isinstance(data.get(key), dict):
                state = data[key]
                break
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise EdgekitError("%s is not a state_dict" % path, "save one with torch.save(model.state_dict(), path)")
    notes = []
    if any(getattr(v, "dtype", None) == torch.float16 for v in state.values()):
        notes.append("fp16 weights converted to float32")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # size mismatches raise even when not strict
        raise EdgekitError("weights %s do not fit the model (%s)" % (path, _short(exc)), "pass the weights saved from this model definition")
    bad = []
    if result.missing_keys:
        bad.append("missing %s" % ", ".join(result.missing_keys[:3]))
    if result.unexpected_keys:
        bad.append("unexpected %s" % ", ".join(result.unexpected_keys[:3]))
    if bad:
        raise EdgekitError("weights %s do not fit the model (%s)" % (path, "; ".join(bad)), "pass the weights saved from this model definition")
    return notes, {}


# --- what the model is --------------------------------------------------------


def _names_list(value: Any) -> List[str]:
    if isinstance(value, dict):
        try:
            return [str(value[k]) for k in sorted(value)]
        except TypeError:
            return [str(v) for v in value.values()]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return []


def _category_ids(names: Sequence[str]) -> Optional[List[int]]:
    if len(names) == 80 and names and names[0] == "person":
        return list(COCO80_TO_91)
    return None


def _head_hint(module) -> Optional[str]:
    for m in module.modules():
        cls = type(m).__name__
        if cls in ("Detect", "Segment", "Pose", "OBB", "IDetect"):
            if hasattr(m, "reg_max"):
                return "yolov8"
            if hasattr(m, "anchors"):
                return "yolov5"
    return None


def _layout_from_shape(shape: Sequence[int], hint: Optional[str], has_objectness: Optional[bool]) -> Tuple[str, str]:
    if hint in ("yolov5", "yolov8", "boxes"):
        return "detect", hint
    if hint == "logits":
        return "classify", "logits"
    if len(shape) == 2:
        return "classify", "logits"
    if len(shape) == 3:
        rows, cols = shape[1], shape[2]
        # (1, N, 5 + C) has many more rows than columns; (1, 4 + C, N) the reverse.
        return "detect", ("yolov5" if rows >= cols else "yolov8")
    raise EdgekitError(
        "cannot tell the output layout from an output of shape %s" % list(shape),
        "edgekit takes detectors with a (1, N, 5+C) or (1, 4+C, N) output, or classifiers with (1, C) logits",
    )


def _class_count(layout: str, shape: Sequence[int]) -> int:
    if layout == "yolov5" and len(shape) == 3:
        return max(0, shape[2] - 5)
    if layout == "yolov8" and len(shape) == 3:
        return max(0, shape[1] - 4)
    if layout == "logits":
        return shape[-1]
    return 0


def _probe(module, input_size: Optional[Tuple[int, int]]) -> List[int]:
    """Run the model once to see its output shape (small sizes first: cheap, and YOLO models take any multiple of 32)."""
    import torch

    sizes = [input_size] if input_size else [(64, 64), (224, 224), (640, 640)]
    last: Optional[BaseException] = None
    for h, w in sizes:
        try:
            with torch.no_grad():
                out = module(torch.zeros(1, 3, h, w))
        except Exception as exc:  # wrong size for this model: try the next
            last = exc
            continue
        while isinstance(out, (list, tuple)) and out:
            out = out[0]
        if isinstance(out, dict) and out:
            out = out[sorted(out)[0]]
        if isinstance(out, torch.Tensor):
            return list(out.shape)
        raise EdgekitError("the model returned %s, not a tensor" % type(out).__name__, "return the predictions tensor from forward()")
    raise EdgekitError(
        "the model does not run on a 1x3xHxW image input (%s: %s)" % (type(last).__name__, _short(last)),
        "check the model; edgekit feeds one RGB image batch (1, 3, H, W)",
    )


def _finish(module, source: str, notes: List[str], meta: Optional[Dict[str, Any]] = None) -> LoadedModel:
    meta = meta or {}
    module = module.float().eval()
    size = meta.get("input_size") or getattr(module, "input_size", None)
    input_size = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) and len(size) == 2 else None
    hint = meta.get("output_layout") or getattr(module, "output_layout", None) or _head_hint(module)
    shape = _probe(module, input_size)
    task, layout = _layout_from_shape(shape, hint, None)
    names = _names_list(meta.get("class_names") or getattr(module, "names", None) or getattr(module, "class_names", None))
    if not names:
        names = ["class%d" % i for i in range(_class_count(layout, shape))]
    ids = meta.get("category_ids") or _category_ids(names)
    return LoadedModel(
        module=module,
        onnx_path=None,
        source=source,
        task=task,
        output_layout=layout,
        input_size=input_size,
        class_names=names,
        category_ids=list(ids) if ids else None,
        notes=notes,
    )


def _short(exc: Optional[BaseException]) -> str:
    return " ".join(str(exc).split())[:200] if exc is not None else ""
