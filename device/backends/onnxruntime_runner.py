"""ONNX Runtime backend: the profile's execution providers in order, its thread
settings, and ONNX Runtime's own failures turned into one-line errors."""
import time
from typing import Any, Dict, List, Optional, Sequence

from edgekit.contract.errors import EdgekitError
from .base import CannotRun, Runner, check_input_shape, looks_like_oom, one_line, out_of_memory

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider")
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}
INSTALL_HINT = "pip3 install onnxruntime (on Jetson: the onnxruntime-gpu wheel for your JetPack from the Jetson Zoo)"


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except Exception as exc:  # ImportError, or OSError when a shared library is missing
        raise EdgekitError("ONNX Runtime cannot be imported (%s)" % one_line(exc), INSTALL_HINT)
    try:
        onnxruntime.set_default_logger_severity(4)  # the process-wide logger: fatal only
    except Exception:  # very old builds lack it
        pass
    return onnxruntime


def choose_providers(requested: Sequence[str], available: Sequence[str]) -> List[str]:
    """The requested providers this ONNX Runtime has, in the requested order; CPU when none."""
    chosen = [p for p in requested if p in available]
    if not chosen:
        chosen = ["CPUExecutionProvider"]
    return chosen


def classify_load_error(exc: BaseException, model_file: str, version: str) -> EdgekitError:
    text = one_line(exc)
    low = text.lower()
    if looks_like_oom(text):
        return out_of_memory("loading %s" % model_file, text)
    if "invalid_protobuf" in low or "protobuf parsing failed" in low or "invalid_graph" in low or "no graph" in low:
        return EdgekitError("%s is not a valid ONNX model (%s)" % (model_file, text), "copy the bundle again or rebuild it")
    if "not_implemented" in low or "could not find an implementation" in low:
        return CannotRun("ONNX Runtime %s on this board cannot run %s (%s)" % (version, model_file, text), "use another variant or a newer onnxruntime")
    if "opset" in low or "ir version" in low or "unsupported model" in low:
        return CannotRun("ONNX Runtime %s is too old for %s (%s)" % (version, model_file, text), "pip3 install -U onnxruntime, or build the bundle with a lower opset")
    return EdgekitError("ONNX Runtime %s could not load %s (%s)" % (version, model_file, text), "check the bundle with 'edgekit-agent verify' and rebuild it if needed")


class OrtRunner(Runner):
    backend = "onnxruntime"

    def __init__(
        self,
        model_path: str,
        model_file: str,
        precision: str,
        input_name: str,
        input_shape: Sequence[int],
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int = 0,
        engine_cache_dir: Optional[str] = None,
        graph_precision: Optional[str] = None,
    ) -> None:
        super().__init__()
        ort = import_onnxruntime()
        self.ort = ort
        self.version = ort.get_version_string()
        self.model_file = model_file
        available = list(ort.get_available_providers())
        chosen = choose_providers(providers, available)
        missing = [p for p in providers if p not in available]
        if missing and list(providers) != ["CPUExecutionProvider"]:
            self.warnings.append("ONNX Runtime %s lacks %s; using %s" % (self.version, ", ".join(missing), ", ".join(chosen)))
        if precision == "fp16" and not any(p in GPU_PROVIDERS for p in chosen):
            raise CannotRun(
                "fp16 needs a GPU execution provider, and this ONNX Runtime offers only %s" % ", ".join(available),
                "run this bundle where TensorRT or onnxruntime-gpu is installed",
            )
        if precision == "fp16" and graph_precision == "fp32" and chosen[0] != "TensorrtExecutionProvider":
            # A TensorRT bundle's fp16 variant is the fp32 graph plus TensorRT's FP16 flag.
            raise CannotRun(
                "variant %s is the fp32 graph made fp16 by TensorRT's builder; %s would run it in fp32" % (model_file, chosen[0]),
                "run it with TensorRT (or onnxruntime's TensorrtExecutionProvider)",
            )
        self._threads = threads
        options = self._session_options()
        provider_args = []  # type: List[Any]
        for name in chosen:
            if name == "TensorrtExecutionProvider":
                trt_options = {"trt_fp16_enable": precision in ("fp16", "int8"), "trt_int8_enable": precision == "int8"}  # type: Dict[str, Any]
                if engine_cache_dir:
                    trt_options.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": engine_cache_dir})
                provider_args.append((name, trt_options))
            else:
                provider_args.append(name)
        self._model_path = model_path
        self._provider_args = provider_args
        started = time.perf_counter()
        try:
            self.session = ort.InferenceSession(model_path, sess_options=options, providers=provider_args)
        except MemoryError as exc:
            raise out_of_memory("loading %s" % model_file, one_line(exc) or "MemoryError")
        except Exception as exc:
            raise classify_load_error(exc, model_file, self.version)
        load_s = time.perf_counter() - started
        self.provider = self.session.get_providers()[0]
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise CannotRun("%s has %d inputs; the agent feeds models with one image input" % (model_file, len(inputs)), "export the model with a single input")
        model_input = inputs[0]
        if model_input.name != input_name:
            raise EdgekitError(
                "%s: input is named '%s' but the bundle's manifest says '%s'" % (model_file, model_input.name, input_name),
                "rebuild the bundle so the model and manifest agree",
            )
        check_input_shape(model_input.shape, input_shape, input_name, model_file)
        self.input_name = input_name
        self.input_shape = [int(d) for d in input_shape]
        self.input_dtype = ORT_TYPES.get(model_input.type, "float32")
        self.output_names = [o.name for o in self.session.get_outputs()]
        if engine_cache_dir and self.provider == "TensorrtExecutionProvider":
            self.engine = {"build_s": round(load_s, 3), "cache_hit": None, "cache_key": None, "path": engine_cache_dir}
        self._feed = None  # type: Optional[Dict[str, Any]]
        self._run = self.session.run

    def _session_options(self) -> Any:
        ort = self.ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ONNX Runtime logs to stderr, where the agent's JSON progress lines go. Its
        # errors also arrive as exceptions, which the agent reports: log fatal only.
        options.log_severity_level = 4
        if self._threads and self._threads > 0:
            options.intra_op_num_threads = int(self._threads)
        return options

    def profile_layers(self, x: Any, warmup: int, runs: int) -> Dict[str, Any]:
        """Per-node time (edgekit.device.layer_profile) on a second, profiling session.

        A separate session keeps the profiler's cost out of the timed loop; it has
        the same options and providers, so ONNX Runtime optimises the graph alike.
        """
        import os
        import shutil
        import tempfile

        from ..layer_profile import attach_sources, read_ort_profile

        tmp = tempfile.mkdtemp(prefix="edgekit-profile-")
        try:
            options = self._session_options()
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(tmp, "ort")
            try:
                session = self.ort.InferenceSession(self._model_path, sess_options=options, providers=self._provider_args)
                feed = {self.input_name: self._cast(x)}
                for _ in range(warmup + runs):
                    session.run(None, feed)
                path = session.end_profiling()
            except MemoryError as exc:
                raise out_of_memory("profiling %s" % self.model_file, one_line(exc) or "MemoryError")
            except Exception as exc:
                raise EdgekitError("ONNX Runtime could not profile %s (%s)" % (self.model_file, one_line(exc)), "rerun without --profile-layers")
            return attach_sources(read_ort_profile(path, skip_runs=warmup), self._model_path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _cast(self, x: Any) -> Any:
        if str(x.dtype) != self.input_dtype:
            return x.astype(self.input_dtype)
        return x

    def infer(self, x: Any) -> List[Any]:
        try:
            return self._run(None, {self.input_name: self._cast(x)})
        except MemoryError as exc:
            raise out_of_memory("running %s" % self.model_file, one_line(exc) or "MemoryError")
        except Exception as exc:
            text = one_line(exc)
            if looks_like_oom(text):
                raise out_of_memory("running %s" % self.model_file, text)
            raise EdgekitError("ONNX Runtime failed to run %s (%s)" % (self.model_file, text), "check that the bundle's input shape matches the model; rebuild it if not")

    def prepare(self, x: Any) -> None:
        self._feed = {self.input_name: self._cast(x)}
        self.infer(x)  # fail here, with a clear error, rather than inside the timing loop

    def timed_step(self) -> float:
        # Same call a bare InferenceSession.run loop makes: nothing else is timed.
        clock = time.perf_counter
        t0 = clock()
        self._run(None, self._feed)
        return (clock() - t0) * 1000.0

    def close(self) -> None:
        self.session = None
        self._run = None
        self._feed = None
