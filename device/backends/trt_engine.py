"""TensorRT engines: build one from ONNX, or load it from the board's cache.

Kept apart from the runner (as Polygraphy keeps loaders apart from runners):
:class:`EngineLoader` turns an :class:`EngineRequest` into a deserialised
engine plus the facts the result records (cache hit, key, flags, DLA core);
:func:`build_serialized` parses the ONNX file and builds a plan. The runner
only sets up CUDA, creates the execution context and binds I/O.
Runs only where TensorRT exists; the version-dependent choices live in
:mod:`.tensorrt_api` and are tested without a GPU.
"""
import json
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from edgekit.contract.errors import EdgekitError

from . import engine_cache
from .base import CannotRun, looks_like_oom, out_of_memory
from .tensorrt_api import BuildPlan, TrtApi, load_calibration_cache, plan_build

LogSink = Callable[[str, str], None]  # (level, message)


def make_logger(trt: Any, sink: Optional[LogSink]) -> Any:
    levels = {0: "error", 1: "error", 2: "warning", 3: "info", 4: "verbose"}

    class _Logger(trt.ILogger):  # TensorRT would otherwise print to stderr, among the JSON lines
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors = []  # type: List[str]

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(int(severity), "info")
            if level == "error":
                self.errors.append(msg)
            if sink is not None and level in ("error", "warning"):
                sink(level, msg)

    return _Logger()


def _make_calibrator(trt: Any, cache: bytes) -> Any:
    """A calibrator that only hands TensorRT the cache; asking it for data means TensorRT refused the cache."""
    header = cache.split(b"\n", 1)[0].decode("ascii", "replace")
    algorithm = header.split("-", 2)[2] if header.count("-") >= 2 else "EntropyCalibration2"
    base_name = {
        "EntropyCalibration2": "IInt8EntropyCalibrator2",
        "EntropyCalibration": "IInt8EntropyCalibrator",
        "MinMaxCalibration": "IInt8MinMaxCalibrator",
    }.get(algorithm, "IInt8EntropyCalibrator2")
    base = getattr(trt, base_name)

    class _CacheCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.batches_requested = 0

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: Any, *args: Any) -> Any:
            self.batches_requested += 1
            return None

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: Any) -> None:
            return None

    return _CacheCalibrator()


def _network_facts(trt: Any, network: Any) -> Tuple[bool, bool]:
    """(has Q/DQ layers, has fp16 tensors) of a parsed network."""
    qdq_types = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    has_qdq = False
    has_half = False
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in qdq_types:
            has_qdq = True
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype == trt.DataType.HALF:
                has_half = True
    for i in range(network.num_inputs):
        if network.get_input(i).dtype == trt.DataType.HALF:
            has_half = True
    return has_qdq, has_half


def last_error(logger: Any) -> str:
    return logger.errors[-1] if logger.errors else ""


def read_dla(path: str) -> int:
    """The DLA core a cached engine was built for (-1: the GPU)."""
    try:
        with open(path + ".json", "r") as f:
            return int(json.load(f).get("plan", {}).get("dla_core", -1))
    except (OSError, ValueError, TypeError, AttributeError):
        return -1


class EngineRequest(object):
    """What to build: one variant's ONNX file at one precision, with the
    profile's ``tensorrt`` settings (dla_core, workspace_mb)."""

    def __init__(
        self,
        model_path: str,
        model_file: str,
        model_sha256: str,
        precision: str,
        settings: Dict[str, Any],
        sparse: bool = False,
        calibration: Optional[Tuple[str, str, str]] = None,
        int8_request: str = "auto",
        max_batch: int = 1,
    ) -> None:
        self.model_path = model_path
        self.model_file = model_file
        self.model_sha256 = model_sha256
        self.precision = precision
        self.sparse = bool(sparse)
        self.calibration = calibration  # (path, bundle-relative name, sha256) of the TensorRT cache
        self.int8_request = int8_request
        self.dla_core = int(settings.get("dla_core", -1))
        self.workspace_mb = int(settings.get("workspace_mb", 2048))
        # A graph with a dynamic batch gets one optimisation profile: min 1, opt = max = max_batch.
        self.max_batch = max(1, int(max_batch))

    def build_fields(self) -> Dict[str, Any]:
        fields = {
            "precision": self.precision,
            "dla_core": self.dla_core,
            "sparse": self.sparse,
            "workspace_mb": self.workspace_mb,
            "int8": self.int8_request,
        }  # type: Dict[str, Any]
        if self.max_batch > 1:  # batch 1 keeps the cache keys of engines built before profiles existed
            fields["max_batch"] = self.max_batch
        return fields


class LoadedEngine(object):
    def __init__(self, engine: Any, facts: Dict[str, Any], warnings: List[str]) -> None:
        self.engine = engine
        self.facts = facts
        self.warnings = warnings


class EngineLoader(object):
    """Looks the engine up in the cache by everything that changes it (model,
    precision, build settings, TensorRT/CUDA/L4T versions, GPU, calibration),
    builds and caches it on a miss, and rebuilds a cached engine that no longer loads."""

    def __init__(self, trt: Any, api: TrtApi, logger: Any, engines_dir: Optional[str]) -> None:
        self.trt = trt
        self.api = api
        self.logger = logger
        self.directory = engine_cache.engines_dir(engines_dir)

    def cache_fields(self, request: EngineRequest, info: Dict[str, Any], cuda_version: str) -> Dict[str, Any]:
        gpu = (info.get("gpu") or [{}])[0]
        return engine_cache.key_fields(
            model_sha256=request.model_sha256,
            precision=request.precision,
            build=request.build_fields(),
            tensorrt=self.trt.__version__,
            cuda=cuda_version,
            l4t=info.get("l4t"),
            gpu=gpu.get("name"),
            compute_capability=gpu.get("compute_capability"),
            dla_core=request.dla_core,
            calibration_sha256=request.calibration[2] if request.calibration else None,
        )

    def load(self, request: EngineRequest, info: Dict[str, Any], cuda_version: str, on_phase: Optional[Callable[[str], None]] = None) -> LoadedEngine:
        fields = self.cache_fields(request, info, cuda_version)
        key = engine_cache.cache_key(fields)
        path = engine_cache.engine_path(self.directory, key)
        # Plugins (EfficientNMS_TRT of `edgekit build --nms graph`) must be registered
        # before a network that uses them is parsed, or an engine holding them deserialised.
        register_plugins(self.trt, self.logger)
        runtime = self.trt.Runtime(self.logger)
        started = time.perf_counter()
        engine = self._from_cache(runtime, path, on_phase)
        cache_hit = engine is not None
        plan = None  # type: Optional[BuildPlan]
        if engine is None:
            if on_phase:
                on_phase("build")
            data, plan = build_serialized(self.trt, self.api, self.logger, request)
            fields["plan"] = plan.key_fields()
            engine_cache.write_atomic(path, data, fields)
            if plan.dla_core >= 0:
                runtime.DLA_core = plan.dla_core
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise EdgekitError("TensorRT built an engine for %s but cannot load it: %s" % (request.model_file, last_error(self.logger)), "report this with the TensorRT version")
        facts = {
            "build_s": round(time.perf_counter() - started, 3),
            "cache_hit": cache_hit,
            "cache_key": key,
            "path": path,
            "tensorrt": self.trt.__version__,
            "cuda": fields["cuda"],
            "api": self.api.io,
            "flags": list(plan.flags) if plan else None,
            "int8_mode": plan.int8_mode if plan else None,
            "dla_core": plan.dla_core if plan else read_dla(path),
            "max_batch": request.max_batch,
        }
        return LoadedEngine(engine, facts, list(plan.warnings) if plan else [])

    def _from_cache(self, runtime: Any, path: str, on_phase: Optional[Callable[[str], None]]) -> Any:
        data = engine_cache.read_engine(path)
        if not data:
            return None
        if on_phase:
            on_phase("load")
        dla_cached = read_dla(path)
        if dla_cached >= 0:
            runtime.DLA_core = dla_cached
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:  # damaged or from another build: rebuild
            engine_cache.remove(path)
        return engine


def register_plugins(trt: Any, logger: Any) -> bool:
    """TensorRT's own plugin library (initLibNvInferPlugins); idempotent. False where the build has none."""
    init = getattr(trt, "init_libnvinfer_plugins", None)
    if init is None:
        return False
    return bool(init(logger, ""))


def _parse(trt: Any, api: TrtApi, logger: Any, builder: Any, request: EngineRequest) -> Tuple[Any, Any]:
    flags = 0
    if api.network_flag and hasattr(trt.NetworkDefinitionCreationFlag, api.network_flag):
        flags = 1 << int(getattr(trt.NetworkDefinitionCreationFlag, api.network_flag))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(request.model_path, "rb") as f:
        model_bytes = f.read()
    if not parser.parse(model_bytes, request.model_path):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise CannotRun(
            "TensorRT %s cannot parse %s: %s" % (trt.__version__, request.model_file, "; ".join(errors) or last_error(logger)),
            "build the bundle with an opset/operators this TensorRT supports, or use --backend onnxruntime",
        )
    # The parser must outlive the network it filled (TensorRT keeps weights there).
    return network, parser


def _configure(trt: Any, api: TrtApi, builder: Any, plan: BuildPlan, workspace_mb: int) -> Any:
    config = builder.create_builder_config()
    workspace = int(workspace_mb) << 20
    if api.workspace == "set_memory_pool_limit":
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:
        config.max_workspace_size = workspace
    for name in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.dla_core >= 0:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    return config


def add_batch_profile(builder: Any, network: Any, config: Any, max_batch: int) -> Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]]:
    """One optimisation profile covering every input whose batch dimension is dynamic.

    TensorRT cannot build a network with a dynamic input without a profile:
    ``builder.create_optimization_profile()``, ``profile.set_shape(name, min,
    opt, max)``, ``config.add_optimization_profile(profile)`` (TensorRT 7 to 10).
    min is batch 1, opt and max the largest batch asked; the other dimensions
    must be fixed. Returns {input name: (min, opt, max)}; {} for a static graph.
    """
    top = max(1, int(max_batch))
    shapes = {}  # type: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]]
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(int(d) for d in (getattr(tensor, "shape", None) or ()))
        if not shape or shape[0] >= 0:
            continue
        rest = shape[1:]
        if any(d < 0 for d in rest):
            raise CannotRun(
                "input %s has dynamic dimensions besides the batch (%s)" % (tensor.name, list(shape)),
                "export the model with a fixed input size (edgekit build --dynamic-batch makes only the batch dynamic)",
            )
        shapes[tensor.name] = ((1,) + rest, (top,) + rest, (top,) + rest)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    return shapes


def build_serialized(trt: Any, api: TrtApi, logger: Any, request: EngineRequest) -> Tuple[bytes, BuildPlan]:
    """Parse the ONNX file, choose the build flags (:func:`plan_build`), build the plan."""
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, api, logger, builder, request)
    has_qdq, has_half = _network_facts(trt, network)
    cache_bytes = None
    cache_state = None  # type: Optional[bool]
    calibration = request.calibration
    if request.precision == "int8" and not has_qdq and calibration is not None and request.int8_request != "explicit":
        cache_bytes = load_calibration_cache(calibration[0], calibration[1], trt.__version__)
        cache_state = True
    num_dla = int(getattr(builder, "num_DLA_cores", 0) or 0)
    plan = plan_build(api, request.precision, has_qdq, has_half, cache_state, request.dla_core, num_dla, request.sparse,
                      request.workspace_mb, request.model_file, request.int8_request)
    config = _configure(trt, api, builder, plan, request.workspace_mb)
    add_batch_profile(builder, network, config, request.max_batch)
    calibrator = None
    if plan.int8_mode == "implicit" and cache_bytes is not None:
        calibrator = _make_calibrator(trt, cache_bytes)
        config.int8_calibrator = calibrator
    serialized = builder.build_serialized_network(network, config)
    if calibrator is not None and calibrator.batches_requested:
        raise EdgekitError(
            "TensorRT %s did not accept the calibration cache %s and asked for calibration images" % (trt.__version__, calibration[1] if calibration else "?"),
            "rebuild the bundle's calibration cache for this TensorRT version, or use the Q/DQ int8 variant",
        )
    if serialized is None:
        detail = "; ".join(logger.errors[-3:]) or "no details"
        if looks_like_oom(detail):
            raise out_of_memory("building the TensorRT engine for %s" % request.model_file, detail)
        raise EdgekitError("TensorRT could not build an engine for %s (%s)" % (request.model_file, detail), "lower tensorrt.workspace_mb or check the model's operators")
    return bytes(serialized), plan
