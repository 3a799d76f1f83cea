"""The TensorRT runner's own code, driven through a stand-in ``tensorrt`` module.

TensorRT and a GPU are not here, so without this the runner's ~300 lines would
never execute in CI. The stand-in mimics the shape of the TensorRT 8.5 (bindings),
10 (named tensors) and 11 (strongly typed) Python APIs, and "device memory" is
ordinary host memory; its execution context runs the real ONNX model with ONNX
Runtime. That checks the runner's plumbing (API choice, builder flags, engine
cache, buffers, copies, output order) and nothing about TensorRT itself, which
tests/device/test_tensorrt_logic.py covers where a GPU exists.
"""
import ctypes
import json
import time
import types

import numpy as np
import pytest

from edgekit.device.backends import tensorrt_runner
from edgekit.contract.result import validate_result
from edgekit.device.runner import Options, run_bundle

FAKE_INFO = {
    "hostname": "fake-orin",
    "is_jetson": True,
    "l4t": "35.3.1",
    "gpu": [{"name": "Orin", "compute_capability": "8.7", "memory_mb": 30000}],
    "runtimes": {"tensorrt": "x"},
    "providers": ["CPUExecutionProvider"],
}


class FakeCuda(object):
    """CudaRuntime's interface over host memory."""

    def __init__(self) -> None:
        self.blocks = {}
        self.events = {}
        self.freed = 0

    def device_count(self):
        return 1

    def set_device(self, index):
        pass

    def runtime_version(self):
        return 11040

    def mem_info(self):
        used = sum(len(b) for b in self.blocks.values())
        return (8 << 30) - used, 8 << 30

    def malloc(self, nbytes):
        buf = ctypes.create_string_buffer(max(int(nbytes), 1))
        self.blocks[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    malloc_host = malloc

    def free(self, ptr):
        if self.blocks.pop(ptr, None) is not None:
            self.freed += 1

    free_host = free

    def copy_async(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(dst, src, nbytes)

    def stream_create(self):
        return 7

    def stream_sync(self, stream):
        pass

    def stream_destroy(self, stream):
        pass

    def event_create(self):
        self.made = getattr(self, "made", 0) + 1
        return self.made

    def event_record(self, event, stream):
        self.events[event] = time.perf_counter()

    def event_elapsed_ms(self, start, end):
        return (self.events[end] - self.events[start]) * 1000.0

    def event_destroy(self, event):
        pass


def make_fake_tensorrt(version: str, log: list):
    import onnx
    import onnxruntime as ort

    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class ILogger(object):
        def __init__(self):
            pass

    trt.ILogger = ILogger
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0, **({"STRONGLY_TYPED": 5} if major >= 10 else {}))
    flags = {"SPARSE_WEIGHTS": "SPARSE_WEIGHTS", "GPU_FALLBACK": "GPU_FALLBACK"}
    if major < 11:
        flags.update(FP16="FP16", INT8="INT8")
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.DeviceType = types.SimpleNamespace(GPU="GPU", DLA="DLA")
    trt.LayerType = types.SimpleNamespace(QUANTIZE="Q", DEQUANTIZE="DQ", OTHER="X")
    trt.DataType = types.SimpleNamespace(FLOAT="float32", HALF="float16")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dt: np.dtype(dt).type

    class Tensor(object):
        def __init__(self, dtype, name="", shape=()):
            self.dtype = dtype
            self.name = name
            self.shape = shape

    class Layer(object):
        def __init__(self, kind, dtype):
            self.type = kind
            self.num_outputs = 1
            self._out = Tensor(dtype)

        def get_output(self, j):
            return self._out

    class Network(object):
        def __init__(self, flags):
            self.flags = flags
            self.layers = []
            self.path = None
            self.num_inputs = 1
            self.inputs = []

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

        def get_input(self, i):
            return self.inputs[i] if self.inputs else Tensor("float32")

    class OnnxParser(object):
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse(self, data, path):
            model = onnx.load_from_string(data)
            for node in model.graph.node:
                kind = {"QuantizeLinear": "Q", "DequantizeLinear": "DQ"}.get(node.op_type, "X")
                self.network.layers.append(Layer(kind, "float32"))
            self.network.path = path
            # A symbolic dimension (a dynamic batch) is -1, as TensorRT reports it.
            self.network.inputs = [Tensor("float32", i.name, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim))
                                   for i in model.graph.input]
            return True

    class Config(object):
        def __init__(self):
            self.flags = []
            self.pool = None
            self.int8_calibrator = None
            self.default_device_type = "GPU"
            self.DLA_core = -1

        def set_flag(self, flag):
            self.flags.append(flag)

        def set_memory_pool_limit(self, pool, size):
            self.pool = (pool, size)

        def add_optimization_profile(self, profile):
            log.append(("optimization profile", dict(profile.shapes)))
            return 0

    class Profile(object):
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Builder(object):
        num_DLA_cores = 2

        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            log.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if config.int8_calibrator is not None:
                cache = config.int8_calibrator.read_calibration_cache()
                log.append(("calibration cache", cache.split(b"\n", 1)[0]))
            log.append(("build", sorted(config.flags), config.pool, config.default_device_type, config.DLA_core))
            return b"FAKE-ENGINE" + json.dumps({"model": network.path}).encode()

    class IProfiler(object):
        def __init__(self):
            pass

    trt.IProfiler = IProfiler

    def engine_layers(path):
        """Layer names as TensorRT gives them: a reformat layer, ONNX node names, SiLU's pair fused as PWN(...)."""
        nodes = list(onnx.load(path).graph.node)
        names, i = ["Reformatting CopyNode for Input Tensor 0 to %s" % nodes[0].name], 0
        while i < len(nodes):
            if nodes[i].op_type == "Sigmoid" and i + 1 < len(nodes) and nodes[i + 1].op_type == "Mul":
                names.append("PWN(PWN(%s), %s)" % (nodes[i].name, nodes[i + 1].name))
                i += 2
            else:
                names.append(nodes[i].name)
                i += 1
        return names

    class Engine(object):
        def __init__(self, path):
            self.layer_names = engine_layers(path)
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            ins, outs = self.session.get_inputs(), self.session.get_outputs()
            # Outputs first, as TensorRT may order them: the runner must not assume inputs lead.
            dims = lambda shape: tuple(d if isinstance(d, int) else -1 for d in shape)
            self.io = [(o.name, False, dims(o.shape)) for o in outs] + [(i.name, True, dims(i.shape)) for i in ins]

        # 8.x bindings
        @property
        def num_bindings(self):
            if major >= 10:
                raise AttributeError("num_bindings was removed in TensorRT 10")
            return len(self.io)

        def get_binding_name(self, i):
            return self.io[i][0]

        def binding_is_input(self, i):
            return self.io[i][1]

        def get_binding_shape(self, i):
            return tuple(self.io[i][2])

        def get_binding_dtype(self, i):
            return "float32"

        # 10.x named tensors
        @property
        def num_io_tensors(self):
            return len(self.io)

        def get_tensor_name(self, i):
            return self.io[i][0]

        def _entry(self, name):
            return [e for e in self.io if e[0] == name][0]

        def get_tensor_mode(self, name):
            return "in" if self._entry(name)[1] else "out"

        def get_tensor_shape(self, name):
            return tuple(self._entry(name)[2])

        def get_tensor_dtype(self, name):
            return "float32"

        def create_execution_context(self):
            return Context(self)

    class Context(object):
        def __init__(self, engine):
            self.engine = engine
            self.addresses = {}
            self.profiler = None
            self.batch = None  # set by set_input_shape on a dynamic-batch engine

        def _resolved(self, shape):
            if any(d < 0 for d in shape):
                if self.batch is None:
                    raise AssertionError("a dynamic shape was read before the input shape was set")
                return (self.batch,) + tuple(shape[1:])
            return tuple(shape)

        def set_input_shape(self, name, shape):
            if major < 10:
                raise AttributeError("set_input_shape is TensorRT 10's")
            self.batch = int(shape[0])
            log.append(("input shape", tuple(shape)))
            return True

        def set_binding_shape(self, i, shape):
            if major >= 10:
                raise AttributeError("set_binding_shape was removed in TensorRT 10")
            self.batch = int(shape[0])
            log.append(("input shape", tuple(shape)))
            return True

        def get_tensor_shape(self, name):
            return self._resolved(self.engine.get_tensor_shape(name))

        def get_binding_shape(self, i):
            return self._resolved(self.engine.get_binding_shape(i))

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def _run(self, address_of):
            feeds = {}
            for name, is_input, shape in self.engine.io:
                if is_input:
                    shape = self._resolved(shape)
                    n = int(np.prod(shape))
                    feeds[name] = np.frombuffer((ctypes.c_float * n).from_address(address_of(name)), dtype=np.float32).reshape(shape).copy()
            outputs = self.engine.session.run(None, feeds)
            for (name, is_input, shape), value in zip([e for e in self.engine.io if not e[1]], outputs):
                ctypes.memmove(address_of(name), value.astype(np.float32).ctypes.data, value.nbytes)
            if self.profiler is not None:
                log.append(("profiled run", id(self)))
                for k, layer in enumerate(self.engine.layer_names):
                    self.profiler.report_layer_time(layer, 0.01 * (1 + k % 3))
            return True

        def execute_async_v2(self, bindings, stream_handle):
            if major >= 10:
                raise AttributeError("execute_async_v2 was removed in TensorRT 10")
            names = [e[0] for e in self.engine.io]
            return self._run(lambda name: bindings[names.index(name)])

        def execute_async_v3(self, stream_handle):
            if major < 10:
                raise AssertionError("the runner should use bindings on TensorRT 8")
            return self._run(lambda name: self.addresses[name])

    class Runtime(object):
        def __init__(self, logger):
            self.DLA_core = -1

        def deserialize_cuda_engine(self, data):
            if not data.startswith(b"FAKE-ENGINE"):
                return None
            return Engine(json.loads(data[len(b"FAKE-ENGINE"):].decode())["model"])

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    trt.init_libnvinfer_plugins = lambda logger, namespace: log.append(("plugins", namespace)) or True
    if major < 11:

        class IInt8EntropyCalibrator2(object):
            def __init__(self):
                pass

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    return trt


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """Install the stand-in; returns a function choosing its version and the call log."""
    log = []
    cuda = FakeCuda()

    def install(version: str):
        monkeypatch.setitem(__import__("sys").modules, "tensorrt", make_fake_tensorrt(version, log))
        return log, cuda

    monkeypatch.setattr(tensorrt_runner, "CudaRuntime", lambda: cuda)
    return install


@pytest.mark.parametrize("version,network_flag", [("8.5.2.2", 1 << 0), ("10.3.0", 0)])
def test_the_runner_measures_the_bundle_through_either_api(version, network_flag, fake_tensorrt, scored_bundle, tmp_path, tools):
    log, cuda = fake_tensorrt(version)
    engines = str(tmp_path / "engines")
    options = Options(command="run", backend="tensorrt", iterations=5, warmup=1, stage_images=2, engines_dir=engines)
    result = run_bundle(scored_bundle, options, info=dict(FAKE_INFO))
    assert validate_result(result) == []
    manifest = tools.load_manifest(scored_bundle)
    for run in result["runs"]:
        assert run["status"] == "ok", run["error"]
        assert run["backend"] == "tensorrt" and run["provider"] == "TensorRT %s" % version
        assert run["engine"]["cache_hit"] is False and run["engine"]["api"] == ("bindings" if version.startswith("8") else "tensors")
        host = [v for v in manifest["variants"] if v["name"] == run["variant"]][0]["host_metrics"]
        assert abs(run["accuracy"]["stats"]["map"] - host["map"]) <= 0.002  # the buffers carried the right data
        assert run["latency_ms"]["p50"] > 0 and run["memory"]["gpu_mb"] is not None
    builds = [entry for entry in log if entry[0] == "build"]
    assert [b[1] for b in builds] == [[], ["FP16", "INT8"]]  # fp32; int8 from Q/DQ (explicit) with fp16 fallback
    assert builds[0][2] == ("WORKSPACE", manifest["profile"]["tensorrt"]["workspace_mb"] << 20)
    assert ("create_network", network_flag) in log
    # TensorRT's plugins (EfficientNMS_TRT of --nms graph) are registered before the first parse.
    assert log.index(("plugins", "")) < log.index(("create_network", network_flag))
    assert cuda.blocks == {}  # every buffer freed
    again = run_bundle(scored_bundle, Options(command="bench", backend="tensorrt", iterations=3, warmup=1, stage_images=1, engines_dir=engines), info=dict(FAKE_INFO))
    assert [r["engine"]["cache_hit"] for r in again["runs"]] == [True, True]
    assert len([e for e in log if e[0] == "build"]) == 2  # nothing rebuilt


def test_tensorrt_11_refuses_a_fp16_variant_built_for_the_fp16_flag(fake_tensorrt, scored_bundle, tmp_path, tools):
    log, _ = fake_tensorrt("11.0.0")

    def add_fp16(m):
        m["variants"].append({"name": "fp16", "precision": "fp16", "file": "models/fp32.onnx", "graph_precision": "fp32"})

    bundle = tools.rewrite_bundle(scored_bundle, str(tmp_path / "b"), edit_manifest=add_fp16)
    result = run_bundle(bundle, Options(command="bench", backend="tensorrt", iterations=2, warmup=1, stage_images=1, engines_dir=str(tmp_path / "e")), info=dict(FAKE_INFO))
    runs = {r["variant"]: r for r in result["runs"]}
    assert runs["fp32"]["status"] == "ok" and runs["int8"]["status"] == "ok"
    assert runs["fp16"]["status"] == "skipped" and "strongly typed" in runs["fp16"]["error"]
    assert ("create_network", 1 << 5) in log  # STRONGLY_TYPED
    assert all(b[1] == [] for b in log if b[0] == "build")  # no precision flags exist in 11


def _with_cache(tools, bundle, dst, version_code, same_file=False):
    """The bundle plus a TensorRT calibration cache, laid out as edgekit build writes it."""
    from edgekit.calibration import trt_cache

    def edit(m):
        fp32 = [v for v in m["variants"] if v["name"] == "fp32"][0]
        int8 = [v for v in m["variants"] if v["name"] == "int8"][0]
        int8["calibration"] = dict(int8.get("calibration") or {}, trt_cache="models/int8.calib.cache", trt_cache_graph=fp32["file"])
        if same_file:  # an int8 variant that is only the fp32 graph + cache
            int8["file"] = fp32["file"]

    cache = trt_cache.dumps(trt_cache.TrtCache(version_code, "EntropyCalibration2", {"images": 0.0078})).encode()
    return tools.rewrite_bundle(bundle, dst, edit_manifest=edit, replace_files={"models/int8.calib.cache": cache})


def test_int8_is_explicit_by_default_and_implicit_on_request(fake_tensorrt, scored_bundle, tmp_path, tools):
    log, _ = fake_tensorrt("8.5.2.2")
    bundle = _with_cache(tools, scored_bundle, str(tmp_path / "b"), 8502)
    engines = str(tmp_path / "e")

    def int8(mode):
        options = Options(command="bench", backend="tensorrt", variants=["int8"], iterations=2, warmup=1, stage_images=1, engines_dir=engines, trt_int8=mode)
        return run_bundle(bundle, options, info=dict(FAKE_INFO))["runs"][0]

    auto = int8("auto")
    assert auto["status"] == "ok" and auto["engine"]["int8_mode"] == "explicit"
    assert not [e for e in log if e[0] == "calibration cache"]
    implicit = int8("implicit")
    assert implicit["status"] == "ok" and implicit["engine"]["int8_mode"] == "implicit"
    assert implicit["engine"]["cache_key"] != auto["engine"]["cache_key"]
    assert ("calibration cache", b"TRT-8502-EntropyCalibration2") in log
    builds = [b for b in log if b[0] == "build"]
    assert builds[-1][1] == ["FP16", "INT8"]


def test_a_cache_from_another_tensorrt_fails_loudly(fake_tensorrt, scored_bundle, tmp_path, tools):
    fake_tensorrt("8.5.2.2")
    bundle = _with_cache(tools, scored_bundle, str(tmp_path / "stale"), 8601)
    options = Options(command="bench", backend="tensorrt", variants=["int8"], iterations=2, warmup=1, stage_images=1, engines_dir=str(tmp_path / "e"), trt_int8="implicit")
    run = run_bundle(bundle, options, info=dict(FAKE_INFO))["runs"][0]
    assert run["status"] == "failed"
    assert "TensorRT would ignore models/int8.calib.cache and build an uncalibrated INT8 engine" in run["error"]
    assert "written for TensorRT 8601, this board has 8.5.2.2 (8502)" in run["error"]


def test_a_cache_only_int8_variant_is_skipped_by_onnxruntime(scored_bundle, tmp_path, tools):
    bundle = _with_cache(tools, scored_bundle, str(tmp_path / "only"), 8502, same_file=True)
    result = run_bundle(bundle, Options(command="bench", backend="onnxruntime", variants=["int8"], iterations=2, warmup=1, stage_images=1))
    run = result["runs"][0]
    assert run["status"] == "skipped" and "calibration cache" in run["error"]


def test_dla_request_builds_for_the_dla_with_gpu_fallback(fake_tensorrt, scored_bundle, tmp_path, tools):
    log, _ = fake_tensorrt("8.5.2.2")

    def dla(m):
        m["profile"]["tensorrt"]["dla_core"] = 1

    bundle = tools.rewrite_bundle(scored_bundle, str(tmp_path / "dla"), edit_manifest=dla)
    result = run_bundle(bundle, Options(command="bench", backend="tensorrt", iterations=2, warmup=1, stage_images=1, engines_dir=str(tmp_path / "e")), info=dict(FAKE_INFO))
    runs = {r["variant"]: r for r in result["runs"]}
    assert runs["int8"]["engine"]["dla_core"] == 1 and runs["int8"]["provider"].endswith("DLA1")
    assert runs["fp32"]["engine"]["dla_core"] == -1  # DLA has no fp32
    assert any("fp32 variant is built for the GPU" in w for w in result["warnings"])
    builds = [b for b in log if b[0] == "build"]
    assert builds[1][3:] == ("DLA", 1) and "GPU_FALLBACK" in builds[1][1]


@pytest.mark.parametrize("version", ["8.5.2.2", "10.3.0"])
def test_profile_layers_through_the_iprofiler(version, fake_tensorrt, scored_bundle, tmp_path):
    log, _cuda = fake_tensorrt(version)
    options = Options(command="bench", backend="tensorrt", iterations=3, warmup=1, stage_images=2, engines_dir=str(tmp_path / "engines"), profile_layers=True)
    result = run_bundle(scored_bundle, options, info=dict(FAKE_INFO))
    assert validate_result(result) == []
    for run in result["runs"]:
        assert run["status"] == "ok", run["error"]
        layers = run["layers"]
        assert layers["source"] == "tensorrt-profiler" and layers["runs"] == 20
        nodes = {n["name"]: n for n in layers["nodes"]}
        # the stand-in reports 0.01, 0.02, 0.03 ms by position: means and medians come through exactly
        assert {round(n["mean_ms"], 4) for n in nodes.values()} <= {0.01, 0.02, 0.03}
        assert all(n["median_ms"] == n["mean_ms"] for n in nodes.values())
        reformat = [n for name, n in nodes.items() if name.startswith("Reformatting")]
        assert len(reformat) == 1 and reformat[0]["source"] is None and reformat[0]["op_type"] == "Reformat"
        silu = [n for name, n in nodes.items() if name.startswith("PWN(")]
        assert (silu or run["precision"] != "fp32") and all(n["op_type"] == "Sigmoid+Mul" and n["source"].endswith("Sigmoid") for n in silu), sorted(nodes)[:8]
        assert layers["source_graph"] == run["variant"] + ".onnx" and layers["source_share"] > 0.95
    # a context of its own: the timed context never had the profiler
    profiled = {entry[1] for entry in log if entry[0] == "profiled run"}
    assert len(profiled) == len(result["runs"]) and sum(1 for e in log if e[0] == "profiled run") == 23 * len(result["runs"])


@pytest.mark.parametrize("version", ["8.5.2.2", "10.3.0"])
def test_tensorrt_times_every_batch_of_a_dynamic_batch_bundle(version, fake_tensorrt, dynamic_bundle, tmp_path):
    # It used to skip every size above 1 ("the tensorrt backend times batch 1 only").
    log, cuda = fake_tensorrt(version)
    options = Options(command="bench", backend="tensorrt", variants=["fp32"], batch=[1, 4, 8], iterations=3, warmup=1,
                      stage_images=1, engines_dir=str(tmp_path / "engines"), energy="off")
    result = run_bundle(dynamic_bundle, options, info=dict(FAKE_INFO))
    assert validate_result(result) == [] and result["ok"], result["errors"]
    (run,) = result["runs"]
    assert [(t["batch"], t["status"], t["iterations"]) for t in run["throughput"]] == [(1, "ok", 3), (4, "ok", 3), (8, "ok", 3)]
    for entry in run["throughput"]:
        assert entry["images_per_s"] == pytest.approx(entry["batch"] * 1000.0 / entry["latency_ms"]["mean"], rel=1e-3)
    # one optimisation profile, min 1, opt = max = the largest batch asked, and the engine cached under that size
    (profile,) = [entry[1] for entry in log if entry[0] == "optimization profile"]
    ((name, (lo, opt, hi)),) = profile.items()
    assert lo[0] == 1 and opt[0] == hi[0] == 8 and lo[1:] == hi[1:]
    assert run["engine"]["max_batch"] == 8
    # the context was given each batch's shape, then batch 1 again for what follows
    shapes = [entry[1][0] for entry in log if entry[0] == "input shape"]
    assert shapes[-3:] == [4, 8, 1], shapes
    assert cuda.blocks == {}  # every buffer of every size was freed at close


def test_tensorrt_refuses_a_batch_above_its_profile(fake_tensorrt, dynamic_bundle, tmp_path):
    from edgekit.device.backends.base import CannotRun
    from edgekit.device.backends.tensorrt_runner import TrtRunner
    from edgekit.device.bundle import Bundle

    fake_tensorrt("10.3.0")
    bundle = Bundle.open(dynamic_bundle)
    variant = [v for v in bundle.manifest["variants"] if v["precision"] == "fp32"][0]
    shape = bundle.manifest["input"]["shape"]
    runner = TrtRunner(bundle.path_of(variant["file"]), variant["file"], bundle.file_sha256(variant["file"]), "fp32",
                       bundle.manifest["input"]["name"], shape, dict(FAKE_INFO), {}, engines_dir=str(tmp_path / "e"), max_batch=4)
    try:
        x = np.zeros([4] + list(shape[1:]), dtype=np.float32)
        assert [o.shape[0] for o in runner.infer(x)] == [4] * len(runner.output_names)
        with pytest.raises(CannotRun, match="batch of 1 to 4"):
            runner.prepare(np.zeros([8] + list(shape[1:]), dtype=np.float32))
    finally:
        runner.close()
