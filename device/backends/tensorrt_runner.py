"""TensorRT backend: build (or load a cached) engine from the variant's ONNX on
the board, then run it with CUDA through ctypes.

Written against the TensorRT 8.5, 10.x and 11.x Python APIs (see
:mod:`.tensorrt_api` for the differences); the version-dependent choices are
made by :func:`~.tensorrt_api.select_api` and :func:`~.tensorrt_api.plan_build`,
which are tested without a GPU. This module itself runs only where TensorRT and
a GPU exist.
"""
import ctypes
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..cuda import D2H, H2D, CudaRuntime, version_string
from edgekit.contract.errors import EdgekitError
from . import engine_cache
from .base import CannotRun, Runner, check_input_shape, looks_like_oom, one_line, out_of_memory
from .tensorrt_api import BuildPlan, TrtApi, load_calibration_cache, plan_build, select_api

LogSink = Callable[[str, str], None]  # (level, message)


def install_hint(is_jetson: bool) -> str:
    if is_jetson:
        return "install TensorRT's Python bindings from JetPack: sudo apt install python3-libnvinfer (or nvidia-jetpack); in a venv use --system-site-packages"
    return "pip3 install tensorrt (with an NVIDIA driver), or use --backend onnxruntime"


def import_tensorrt(is_jetson: bool = False) -> Any:
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or OSError for a missing libnvinfer
        raise EdgekitError("TensorRT cannot be imported (%s)" % one_line(exc), install_hint(is_jetson))
    return tensorrt


def _make_logger(trt: Any, sink: Optional[LogSink]) -> Any:
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


class TrtRunner(Runner):
    backend = "tensorrt"

    def __init__(
        self,
        model_path: str,
        model_file: str,
        model_sha256: str,
        precision: str,
        input_name: str,
        input_shape: Sequence[int],
        info: Dict[str, Any],
        settings: Dict[str, Any],
        sparse: bool = False,
        calibration: Optional[Tuple[str, str, str]] = None,
        engines_dir: Optional[str] = None,
        log: Optional[LogSink] = None,
        on_phase: Optional[Callable[[str], None]] = None,
        int8_request: str = "auto",
    ) -> None:
        super().__init__()
        import numpy as np

        self.np = np
        self.cuda = None  # type: Optional[CudaRuntime]
        self.stream = 0
        self.events = []  # type: List[int]
        self.device_buffers = []  # type: List[int]
        self.host_buffers = []  # type: List[int]
        self.context = None  # type: Any
        self.engine_obj = None  # type: Any
        self.model_file = model_file
        self.int8_request = int8_request if precision == "int8" else "auto"
        try:
            self._open(model_path, model_sha256, precision, input_name, input_shape, info, settings, sparse, calibration, engines_dir, log, on_phase)
        except BaseException:
            self.close()  # free whatever CUDA memory was taken before the failure
            raise

    def _open(
        self,
        model_path: str,
        model_sha256: str,
        precision: str,
        input_name: str,
        input_shape: Sequence[int],
        info: Dict[str, Any],
        settings: Dict[str, Any],
        sparse: bool,
        calibration: Optional[Tuple[str, str, str]],
        engines_dir: Optional[str],
        log: Optional[LogSink],
        on_phase: Optional[Callable[[str], None]],
    ) -> None:
        trt = import_tensorrt(bool(info.get("is_jetson")))
        self.trt = trt
        self.api = select_api(trt.__version__)  # type: TrtApi
        model_file = self.model_file
        self.cuda = CudaRuntime()
        if self.cuda.device_count() < 1:
            raise CannotRun("TensorRT is installed but no CUDA GPU is visible", "check the driver (nvidia-smi / tegrastats), or use --backend onnxruntime")
        self.cuda.set_device(0)
        self.logger = _make_logger(trt, log)
        free_before, _total = self.cuda.mem_info()
        self._gpu_before = free_before

        gpus = info.get("gpu") or [{}]
        tensorrt_settings = settings or {}
        dla_request = int(tensorrt_settings.get("dla_core", -1))
        request = {
            "precision": precision,
            "dla_core": dla_request,
            "sparse": bool(sparse),
            "workspace_mb": int(tensorrt_settings.get("workspace_mb", 2048)),
            "int8": self.int8_request,
        }
        fields = engine_cache.key_fields(
            model_sha256=model_sha256,
            precision=precision,
            build=request,
            tensorrt=trt.__version__,
            cuda=version_string(self.cuda.runtime_version()),
            l4t=info.get("l4t"),
            gpu=gpus[0].get("name"),
            compute_capability=gpus[0].get("compute_capability"),
            dla_core=dla_request,
            calibration_sha256=calibration[2] if calibration else None,
        )
        key = engine_cache.cache_key(fields)
        directory = engine_cache.engines_dir(engines_dir)
        path = engine_cache.engine_path(directory, key)
        runtime = trt.Runtime(self.logger)
        started = time.perf_counter()
        cache_hit = False
        plan = None  # type: Optional[BuildPlan]
        engine = None
        data = engine_cache.read_engine(path)
        if data:
            if on_phase:
                on_phase("load")
            dla_cached = self._read_dla(path)
            if dla_cached >= 0:
                runtime.DLA_core = dla_cached
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:  # damaged or from another build: rebuild
                engine_cache.remove(path)
            else:
                cache_hit = True
        if engine is None:
            if on_phase:
                on_phase("build")
            data, plan = self._build(model_path, precision, dla_request, sparse, request["workspace_mb"], calibration)
            fields["plan"] = plan.key_fields()
            engine_cache.write_atomic(path, data, fields)
            if plan.dla_core >= 0:
                runtime.DLA_core = plan.dla_core
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise EdgekitError("TensorRT built an engine for %s but cannot load it: %s" % (model_file, self._last_error()), "report this with the TensorRT version")
        self.engine_obj = engine
        self.warnings.extend(plan.warnings if plan else ())
        self.engine = {
            "build_s": round(time.perf_counter() - started, 3),
            "cache_hit": cache_hit,
            "cache_key": key,
            "path": path,
            "tensorrt": trt.__version__,
            "cuda": fields["cuda"],
            "api": self.api.io,
            "flags": list(plan.flags) if plan else None,
            "int8_mode": plan.int8_mode if plan else None,
            "dla_core": plan.dla_core if plan else self._read_dla(path),
        }
        dla = self.engine["dla_core"]
        self.provider = "TensorRT %s%s" % (trt.__version__, " DLA%d" % dla if dla is not None and dla >= 0 else "")
        self.context = engine.create_execution_context()
        if self.context is None:
            raise out_of_memory("creating a TensorRT execution context for %s" % model_file, self._last_error() or "no context")
        self._setup_io(input_name, input_shape)
        free_after, _ = self.cuda.mem_info()
        self._gpu_used = max(self._gpu_before - free_after, 0)

    # --- build -----------------------------------------------------------------

    def _last_error(self) -> str:
        return self.logger.errors[-1] if self.logger.errors else ""

    @staticmethod
    def _read_dla(path: str) -> int:
        import json

        try:
            with open(path + ".json", "r") as f:
                return int(json.load(f).get("plan", {}).get("dla_core", -1))
        except (OSError, ValueError, TypeError, AttributeError):
            return -1

    def _build(
        self, model_path: str, precision: str, dla_request: int, sparse: bool, workspace_mb: int, calibration: Optional[Tuple[str, str, str]]
    ) -> Tuple[bytes, BuildPlan]:
        trt = self.trt
        api = self.api
        builder = trt.Builder(self.logger)
        flags = 0
        if api.network_flag and hasattr(trt.NetworkDefinitionCreationFlag, api.network_flag):
            flags = 1 << int(getattr(trt.NetworkDefinitionCreationFlag, api.network_flag))
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        with open(model_path, "rb") as f:
            model_bytes = f.read()
        if not parser.parse(model_bytes, model_path):
            errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
            raise CannotRun(
                "TensorRT %s cannot parse %s: %s" % (trt.__version__, self.model_file, "; ".join(errors) or self._last_error()),
                "build the bundle with an opset/operators this TensorRT supports, or use --backend onnxruntime",
            )
        has_qdq, has_half = _network_facts(trt, network)
        cache_bytes = None
        cache_state = None  # type: Optional[bool]
        if precision == "int8" and not has_qdq and calibration is not None and self.int8_request != "explicit":
            cache_bytes = load_calibration_cache(calibration[0], calibration[1], trt.__version__)
            cache_state = True
        num_dla = int(getattr(builder, "num_DLA_cores", 0) or 0)
        plan = plan_build(api, precision, has_qdq, has_half, cache_state, dla_request, num_dla, sparse, workspace_mb, self.model_file, self.int8_request)
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
            detail = "; ".join(self.logger.errors[-3:]) or "no details"
            if looks_like_oom(detail):
                raise out_of_memory("building the TensorRT engine for %s" % self.model_file, detail)
            raise EdgekitError("TensorRT could not build an engine for %s (%s)" % (self.model_file, detail), "lower tensorrt.workspace_mb or check the model's operators")
        return bytes(serialized), plan

    # --- I/O -------------------------------------------------------------------

    def _io(self) -> List[Tuple[str, bool, Any]]:
        """(name, is_input, dtype) of every I/O tensor, in engine order."""
        trt, engine = self.trt, self.engine_obj
        out = []
        if self.api.io == "tensors":
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                out.append((name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT, engine.get_tensor_dtype(name)))
        else:
            for i in range(engine.num_bindings):
                out.append((engine.get_binding_name(i), bool(engine.binding_is_input(i)), engine.get_binding_dtype(i)))
        return out

    def _shape(self, index: int, name: str, is_input: bool, want: Sequence[int]) -> Tuple[int, ...]:
        engine, context = self.engine_obj, self.context
        if self.api.io == "tensors":
            shape = tuple(engine.get_tensor_shape(name))
            if is_input and any(d < 0 for d in shape):
                context.set_input_shape(name, tuple(want))
            return tuple(context.get_tensor_shape(name)) if not is_input or any(d < 0 for d in shape) else shape
        shape = tuple(engine.get_binding_shape(index))
        if is_input and any(d < 0 for d in shape):
            context.set_binding_shape(index, tuple(want))
        return tuple(context.get_binding_shape(index))

    def _host_array(self, shape: Tuple[int, ...], dtype: Any) -> Tuple[Any, int]:
        np = self.np
        count = 1
        for d in shape:
            count *= int(d)
        nbytes = max(count * np.dtype(dtype).itemsize, 1)
        ptr = self.cuda.malloc_host(nbytes)
        self.host_buffers.append(ptr)
        raw = (ctypes.c_byte * nbytes).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape), nbytes

    def _setup_io(self, input_name: str, input_shape: Sequence[int]) -> None:
        trt, np = self.trt, self.np
        io = self._io()
        inputs = [t for t in io if t[1]]
        if len(inputs) != 1:
            raise CannotRun("%s has %d inputs; the agent feeds models with one image input" % (self.model_file, len(inputs)), "export the model with a single input")
        self.bindings = [0] * len(io)
        self.outputs = []  # type: List[Tuple[str, Any, int, int]]
        # Inputs first: dynamic output shapes are known only once input shapes are set.
        order = sorted(range(len(io)), key=lambda i: not io[i][1])
        for index in order:
            name, is_input, trt_dtype = io[index]
            try:
                dtype = np.dtype(trt.nptype(trt_dtype))
            except TypeError:
                raise CannotRun("%s: tensor '%s' has type %s, which the agent cannot feed from numpy" % (self.model_file, name, trt_dtype), "export with float32/float16 I/O")
            if is_input:
                if name != input_name:
                    raise EdgekitError(
                        "%s: input is named '%s' but the bundle's manifest says '%s'" % (self.model_file, name, input_name),
                        "rebuild the bundle so the model and manifest agree",
                    )
                check_input_shape(list(self.engine_obj.get_tensor_shape(name) if self.api.io == "tensors" else self.engine_obj.get_binding_shape(index)), input_shape, name, self.model_file)
            shape = self._shape(index, name, is_input, input_shape)
            host, nbytes = self._host_array(shape, dtype)
            device = self.cuda.malloc(nbytes)
            self.device_buffers.append(device)
            self.bindings[index] = device
            if self.api.io == "tensors":
                self.context.set_tensor_address(name, device)
            if is_input:
                self.input_name = name
                self.input_shape = [int(d) for d in shape]
                self.input_dtype = str(dtype)
                self.host_in, self.device_in, self.in_bytes = host, device, nbytes
            else:
                self.outputs.append((name, host, device, nbytes))
                self.output_names.append(name)
        self.stream = self.cuda.stream_create()
        self.events = [self.cuda.event_create(), self.cuda.event_create()]

    # --- running ---------------------------------------------------------------

    def _execute(self) -> None:
        if self.api.io == "tensors":
            ok = self.context.execute_async_v3(self.stream)
        else:
            ok = self.context.execute_async_v2(self.bindings, self.stream)
        if not ok:
            detail = self._last_error() or "enqueue returned false"
            if looks_like_oom(detail):
                raise out_of_memory("running %s" % self.model_file, detail)
            raise EdgekitError("TensorRT failed to run %s (%s)" % (self.model_file, detail), "rebuild the engine: delete ~/.edgekit/engines and run again")

    def infer(self, x: Any) -> List[Any]:
        self.np.copyto(self.host_in, x.reshape(self.host_in.shape), casting="same_kind")
        self.cuda.copy_async(self.device_in, self.host_in.ctypes.data, self.in_bytes, H2D, self.stream)
        self._execute()
        for _name, host, device, nbytes in self.outputs:
            self.cuda.copy_async(host.ctypes.data, device, nbytes, D2H, self.stream)
        self.cuda.stream_sync(self.stream)
        return [host.copy() for _name, host, _device, _n in self.outputs]

    def prepare(self, x: Any) -> None:
        self.infer(x)  # leaves x on the device: timed steps reuse it, as trtexec does

    def timed_step(self) -> float:
        # CUDA events around the enqueue: trtexec's "GPU Compute Time".
        start, end = self.events
        self.cuda.event_record(start, self.stream)
        self._execute()
        self.cuda.event_record(end, self.stream)
        return self.cuda.event_elapsed_ms(start, end)

    def gpu_memory_mb(self) -> Optional[float]:
        return round(self._gpu_used / 1048576.0, 1)

    def close(self) -> None:
        cuda = self.cuda
        if cuda is None:
            return
        if self.stream:
            try:
                cuda.stream_sync(self.stream)
            except EdgekitError:
                pass
        self.context = None
        self.engine_obj = None
        for ptr in self.device_buffers:
            cuda.free(ptr)
        for ptr in self.host_buffers:
            cuda.free_host(ptr)
        for ev in self.events:
            cuda.event_destroy(ev)
        cuda.stream_destroy(self.stream)
        self.device_buffers, self.host_buffers, self.events, self.stream = [], [], [], 0
