"""TensorRT backend: run an engine (built or loaded by :mod:`.trt_engine`) with
CUDA through ctypes.

Written against the TensorRT 8.5, 10.x and 11.x Python APIs (see
:mod:`.tensorrt_api` for the differences); the version-dependent choices are
made by :func:`~.tensorrt_api.select_api` and :func:`~.tensorrt_api.plan_build`,
which are tested without a GPU. This module itself runs only where TensorRT and
a GPU exist.
"""
import ctypes
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..cuda import D2H, H2D, CudaRuntime, version_string
from edgekit.contract.errors import EdgekitError
from .base import CannotRun, Runner, check_input_shape, looks_like_oom, one_line, out_of_memory
from .tensorrt_api import select_api
from .trt_engine import EngineLoader, EngineRequest, LogSink, last_error, make_logger



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
        max_batch: int = 1,
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
        self._model_path = model_path
        self.int8_request = int8_request if precision == "int8" else "auto"
        # Largest batch the engine's optimisation profile admits (a dynamic-batch graph only).
        self.max_batch = max(1, int(max_batch))
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
        """CUDA first (nothing else works without a GPU), then the engine from
        :class:`~.trt_engine.EngineLoader` (cache or build), then I/O buffers."""
        trt = import_tensorrt(bool(info.get("is_jetson")))
        self.trt = trt
        self.api = select_api(trt.__version__)  # type: TrtApi
        self.cuda = CudaRuntime()
        if self.cuda.device_count() < 1:
            raise CannotRun("TensorRT is installed but no CUDA GPU is visible", "check the driver (nvidia-smi / tegrastats), or use --backend onnxruntime")
        self.cuda.set_device(0)
        self.logger = make_logger(trt, log)
        self._gpu_before, _total = self.cuda.mem_info()

        request = EngineRequest(
            model_path=model_path,
            model_file=self.model_file,
            model_sha256=model_sha256,
            precision=precision,
            settings=settings or {},
            sparse=sparse,
            calibration=calibration,
            int8_request=self.int8_request,
            max_batch=self.max_batch,
        )
        loader = EngineLoader(trt, self.api, self.logger, engines_dir)
        loaded = loader.load(request, info, version_string(self.cuda.runtime_version()), on_phase)
        self.engine_obj = loaded.engine
        self.warnings.extend(loaded.warnings)
        self.engine = loaded.facts
        dla = self.engine["dla_core"]
        self.provider = "TensorRT %s%s" % (trt.__version__, " DLA%d" % dla if dla is not None and dla >= 0 else "")
        self.context = loaded.engine.create_execution_context()
        if self.context is None:
            raise out_of_memory("creating a TensorRT execution context for %s" % self.model_file, last_error(self.logger) or "no context")
        self._setup_io(input_name, input_shape)
        self.stream = self.cuda.stream_create()
        self.events = [self.cuda.event_create(), self.cuda.event_create()]
        free_after, _ = self.cuda.mem_info()
        self._gpu_used = max(self._gpu_before - free_after, 0)

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

    def _fit(self, shape: Sequence[int]) -> None:
        """Rebind the I/O buffers for an input of ``shape`` (another batch size of a dynamic-batch engine).

        TensorRT takes a new input shape per context (``set_input_shape`` /
        ``set_binding_shape``) within the optimisation profile; output sizes
        follow from it, so every buffer is sized again.
        """
        want = [int(d) for d in shape]
        if want == self.input_shape:
            return
        if want[1:] != self.input_shape[1:] or not 1 <= want[0] <= self.max_batch:
            raise CannotRun(
                "%s: the engine takes %s with a batch of 1 to %d, not %s" % (self.model_file, self.input_shape[1:], self.max_batch, want),
                "rebuild the bundle with edgekit build --dynamic-batch and ask for that batch with --batch",
            )
        self.cuda.stream_sync(self.stream)
        self._free_io()
        self.output_names = []
        self._setup_io(self.input_name, want)

    def _free_io(self) -> None:
        for ptr in self.device_buffers:
            self.cuda.free(ptr)
        for ptr in self.host_buffers:
            self.cuda.free_host(ptr)
        self.device_buffers, self.host_buffers = [], []

    # --- running ---------------------------------------------------------------

    def _execute(self, context: Any = None) -> None:
        context = context if context is not None else self.context
        if self.api.io == "tensors":
            ok = context.execute_async_v3(self.stream)
        else:
            ok = context.execute_async_v2(self.bindings, self.stream)
        if not ok:
            detail = last_error(self.logger) or "enqueue returned false"
            if looks_like_oom(detail):
                raise out_of_memory("running %s" % self.model_file, detail)
            raise EdgekitError("TensorRT failed to run %s (%s)" % (self.model_file, detail), "rebuild the engine: delete ~/.edgekit/engines and run again")

    def infer(self, x: Any) -> List[Any]:
        self._fit(x.shape)
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

    # --- per-layer profile (--profile-layers) ------------------------------------

    def _bind(self, context: Any) -> None:
        """Point a second execution context at this runner's buffers and input shape."""
        for index, (name, is_input, _dtype) in enumerate(self._io()):
            if is_input:
                dynamic = any(d < 0 for d in (self.engine_obj.get_tensor_shape(name) if self.api.io == "tensors" else self.engine_obj.get_binding_shape(index)))
                if dynamic:
                    if self.api.io == "tensors":
                        context.set_input_shape(name, tuple(self.input_shape))
                    else:
                        context.set_binding_shape(index, tuple(self.input_shape))
            if self.api.io == "tensors":
                context.set_tensor_address(name, self.bindings[index])

    def profile_layers(self, x: Any, warmup: int, runs: int) -> Dict[str, Any]:
        """Per-layer time from TensorRT's ``IProfiler`` (edgekit.device.layer_profile), on a second context.

        TensorRT calls ``report_layer_time`` once per layer for each
        ``execute_v2``/``enqueueV3`` of a context that has a profiler (8.5+). A
        context of its own keeps the profiler, and its cost, away from the timed
        context. Layer names are the engine's (ONNX node names, fused ``A + B``);
        each is traced to its ONNX node and op types come from those nodes.
        """
        from ..layer_profile import SOURCE_TRT, LayerTimes, SourceGraph, attach_sources, read_onnx_nodes

        trt = self.trt
        times = LayerTimes()

        class _Profiler(trt.IProfiler):  # type: ignore[name-defined,misc]
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                times.add(str(layer_name), float(ms))

        context = self.engine_obj.create_execution_context()
        if context is None:
            raise out_of_memory("creating a TensorRT profiling context for %s" % self.model_file, last_error(self.logger) or "no context")
        profiler = _Profiler()
        spans = []  # type: List[float]
        try:
            self._bind(context)
            context.profiler = profiler
            self.np.copyto(self.host_in, x.reshape(self.host_in.shape), casting="same_kind")
            self.cuda.copy_async(self.device_in, self.host_in.ctypes.data, self.in_bytes, H2D, self.stream)
            start, end = self.events
            for i in range(warmup + runs):
                if i >= warmup:
                    times.start_run()
                self.cuda.event_record(start, self.stream)
                self._execute(context)
                self.cuda.event_record(end, self.stream)
                self.cuda.stream_sync(self.stream)
                if i >= warmup:
                    spans.append(self.cuda.event_elapsed_ms(start, end))
        except EdgekitError:
            raise
        except Exception as exc:  # the bindings raise their own types (TypeError, RuntimeError)
            raise EdgekitError("TensorRT could not profile %s (%s)" % (self.model_file, one_line(exc)), "rerun without --profile-layers")
        finally:
            del context
        try:
            graph = SourceGraph(read_onnx_nodes(self._model_path))  # type: Optional[SourceGraph]
        except EdgekitError:
            graph = None
        layers = times.summary(SOURCE_TRT, sum(spans) / len(spans) if spans else None, self.provider,
                               graph.op_type_of if graph is not None else (lambda name: "?"))
        return attach_sources(layers, self._model_path)

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
        self._free_io()
        for ev in self.events:
            cuda.event_destroy(ev)
        cuda.stream_destroy(self.stream)
        self.events, self.stream = [], 0
