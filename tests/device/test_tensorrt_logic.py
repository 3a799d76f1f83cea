"""The TensorRT backend's decisions that need neither TensorRT nor a GPU:
API selection per version, build plans, engine cache keys and writes,
calibration cache acceptance. The engine itself is exercised only where
TensorRT and a GPU exist (marked ``tensorrt``)."""
import os

import pytest

from edgekit.calibration import trt_cache
from edgekit.device.backends import engine_cache
from edgekit.device.backends.base import CannotRun
from edgekit.device.backends.select import choose_backend
from edgekit.device.backends.tensorrt_api import load_calibration_cache, parse_version, plan_build, select_api
from edgekit.contract.errors import EdgekitError


@pytest.mark.parametrize(
    "version,io,execute,flag,precision_flags,implicit,workspace",
    [
        ("8.2.1.8", "bindings", "execute_async_v2", "EXPLICIT_BATCH", True, True, "max_workspace_size"),  # JetPack 4.6
        ("8.5.2.2", "bindings", "execute_async_v2", "EXPLICIT_BATCH", True, True, "set_memory_pool_limit"),  # JetPack 5.1
        ("8.6.2", "bindings", "execute_async_v2", "EXPLICIT_BATCH", True, True, "set_memory_pool_limit"),  # JetPack 6.0
        ("10.3.0", "tensors", "execute_async_v3", None, True, True, "set_memory_pool_limit"),  # JetPack 6.1
        ("10.7.0.post1", "tensors", "execute_async_v3", None, True, True, "set_memory_pool_limit"),
        ("11.0.0", "tensors", "execute_async_v3", "STRONGLY_TYPED", False, False, "set_memory_pool_limit"),
    ],
)
def test_api_selection_by_version(version, io, execute, flag, precision_flags, implicit, workspace):
    api = select_api(version)
    assert (api.io, api.execute, api.network_flag, api.precision_flags, api.implicit_int8, api.workspace) == (io, execute, flag, precision_flags, implicit, workspace)


def test_too_old_or_unreadable_versions():
    with pytest.raises(CannotRun, match="TensorRT 7.1.3 is too old"):
        select_api("7.1.3")
    with pytest.raises(EdgekitError, match="cannot read the TensorRT version"):
        parse_version("unknown")
    assert parse_version("10.7.0.post1") == (10, 7, 0)


def test_build_plans_per_precision_and_version():
    trt85, trt10, trt11 = select_api("8.5.2"), select_api("10.3.0"), select_api("11.0.0")
    assert plan_build(trt85, "fp32", False, False, None).flags == ()
    assert plan_build(trt85, "fp16", False, False, None).flags == ("FP16",)
    explicit = plan_build(trt85, "int8", True, False, True)  # Q/DQ wins over a cache
    assert explicit.int8_mode == "explicit" and explicit.flags == ("FP16", "INT8")
    implicit = plan_build(trt85, "int8", False, False, True)
    assert implicit.int8_mode == "implicit" and implicit.warnings == ()
    assert plan_build(trt10, "int8", False, False, True).warnings  # deprecated in 10
    with pytest.raises(CannotRun, match="neither Q/DQ nodes nor a TensorRT calibration cache"):
        plan_build(trt85, "int8", False, False, None)
    # TensorRT 11: strongly typed, no precision flags, no calibrator
    assert plan_build(trt11, "int8", True, False, None).flags == ()
    assert plan_build(trt11, "fp16", False, True, None).flags == ()
    with pytest.raises(CannotRun, match="removed implicit INT8"):
        plan_build(trt11, "int8", False, False, True)
    with pytest.raises(CannotRun, match="no fp16 tensors"):
        plan_build(trt11, "fp16", False, False, None, model_file="models/fp16.onnx")
    assert plan_build(trt11, "fp32", False, False, None).network_flag == "STRONGLY_TYPED"


def test_int8_mode_requests():
    api = select_api("8.6.2")
    assert plan_build(api, "int8", True, False, True, int8_request="explicit").int8_mode == "explicit"
    assert plan_build(api, "int8", False, False, True, int8_request="implicit").int8_mode == "implicit"
    with pytest.raises(CannotRun, match="no Q/DQ nodes"):
        plan_build(api, "int8", False, False, True, int8_request="explicit")
    with pytest.raises(CannotRun, match="trt_cache_graph"):
        plan_build(api, "int8", True, False, True, int8_request="implicit")
    with pytest.raises(EdgekitError, match="unknown INT8 mode"):
        plan_build(api, "int8", True, False, True, int8_request="magic")


def test_dla_and_sparsity_flags():
    api = select_api("8.5.2")
    dla = plan_build(api, "fp16", False, False, None, dla_core=1, num_dla_cores=2, sparse=True)
    assert dla.dla_core == 1 and dla.flags == ("FP16", "GPU_FALLBACK", "SPARSE_WEIGHTS")
    absent = plan_build(api, "fp16", False, False, None, dla_core=0, num_dla_cores=0)
    assert absent.dla_core == -1 and "GPU_FALLBACK" not in absent.flags and "0 DLA cores" in absent.warnings[0]
    fp32 = plan_build(api, "fp32", False, False, None, dla_core=0, num_dla_cores=2)
    assert fp32.dla_core == -1 and "fp32" in fp32.warnings[0]


BASE = dict(
    model_sha256="a" * 64,
    precision="fp16",
    build={"precision": "fp16", "dla_core": -1, "sparse": False, "workspace_mb": 2048},
    tensorrt="8.5.2.2",
    cuda="11.4",
    l4t="35.3.1",
    gpu="Orin",
    compute_capability="8.7",
    dla_core=-1,
)


def test_engine_cache_key_changes_with_everything_that_invalidates_an_engine():
    key = engine_cache.cache_key(engine_cache.key_fields(**BASE))
    assert len(key) == 64 and key == engine_cache.cache_key(engine_cache.key_fields(**BASE))
    changes = {
        "model_sha256": "b" * 64,
        "precision": "int8",
        "build": dict(BASE["build"], sparse=True),
        "tensorrt": "8.6.2",
        "cuda": "12.2",
        "l4t": "36.3.0",
        "gpu": "Xavier",
        "compute_capability": "7.2",
        "dla_core": 0,
    }
    keys = {key}
    for field, value in changes.items():
        other = engine_cache.cache_key(engine_cache.key_fields(**dict(BASE, **{field: value})))
        assert other not in keys, field
        keys.add(other)
    with_cache = engine_cache.cache_key(engine_cache.key_fields(calibration_sha256="c" * 64, **BASE))
    assert with_cache not in keys


def test_engine_cache_key_ignores_field_order():
    fields = engine_cache.key_fields(**BASE)
    assert engine_cache.cache_key(dict(reversed(list(fields.items())))) == engine_cache.cache_key(fields)


def test_engines_are_written_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    directory = engine_cache.engines_dir()
    assert directory == str(tmp_path / "home" / "engines")
    path = engine_cache.engine_path(directory, "k" * 64)
    engine_cache.write_atomic(path, b"engine bytes", {"tensorrt": "8.5.2"})
    assert engine_cache.read_engine(path) == b"engine bytes"
    assert os.path.isfile(path + ".json")
    assert sorted(os.listdir(directory)) == [os.path.basename(path), os.path.basename(path) + ".json"]

    class Boom(Exception):
        pass

    real_fsync = os.fsync

    def failing_fsync(fd):
        raise Boom()

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(Boom):
        engine_cache.write_atomic(path, b"half-written", None)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert engine_cache.read_engine(path) == b"engine bytes"  # the old engine is intact
    assert not [n for n in os.listdir(directory) if n.endswith(".partial")]
    engine_cache.remove(path)
    assert os.listdir(directory) == []


def test_a_cache_for_this_tensorrt_is_accepted(tmp_path):
    cache = trt_cache.TrtCache(trt_cache.version_code("8.5.2"), "EntropyCalibration2", {"images": 0.0078, "conv1": 0.05})
    path = str(tmp_path / "int8.calib.cache")
    trt_cache.write(path, cache)
    data = load_calibration_cache(path, "models/int8.calib.cache", "8.5.2.2")
    assert data.startswith(b"TRT-8502-EntropyCalibration2\n")


@pytest.mark.parametrize("board", ["8.6.1", "10.3.0"])
def test_a_cache_from_another_tensorrt_is_refused_loudly(tmp_path, board):
    path = str(tmp_path / "int8.calib.cache")
    trt_cache.write(path, trt_cache.TrtCache(8502, "EntropyCalibration2", {"images": 0.0078}))
    with pytest.raises(EdgekitError) as err:
        load_calibration_cache(path, "models/int8.calib.cache", board)
    text = err.value.one_line()
    assert "TensorRT would ignore models/int8.calib.cache and build an uncalibrated INT8 engine" in text
    assert "written for TensorRT 8502" in text and "tensorrt.version = \"%s\"" % board in text


def test_a_damaged_cache_is_an_error(tmp_path):
    path = str(tmp_path / "bad.cache")
    with open(path, "w") as f:
        f.write("not a cache\n")
    with pytest.raises(EdgekitError, match="is not a TensorRT calibration cache"):
        load_calibration_cache(path, "models/bad.cache", "8.5.2")


def test_backend_choice_falls_back_to_onnxruntime_with_a_warning():
    jetson = {"runtime": "tensorrt", "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    no_trt = {"runtimes": {"tensorrt": None}, "problems": {"tensorrt": "No module named 'tensorrt'"}, "gpu": []}
    backend, warnings = choose_backend("auto", jetson, no_trt)
    assert backend == "onnxruntime" and "No module named 'tensorrt'" in warnings[0]
    with_gpu = {"runtimes": {"tensorrt": "8.5.2.2"}, "gpu": [{"name": "Orin"}]}
    assert choose_backend("auto", jetson, with_gpu) == ("tensorrt", [])
    assert choose_backend("auto", {"runtime": "onnxruntime"}, with_gpu) == ("onnxruntime", [])
    assert choose_backend("tensorrt", {"runtime": "onnxruntime"}, no_trt) == ("tensorrt", [])
    with pytest.raises(EdgekitError, match="unknown backend"):
        choose_backend("openvino", jetson, no_trt)


def _tensorrt_and_gpu():
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:
        return "TensorRT is not installed here (%s)" % exc
    from edgekit.device.cuda import gpu_devices

    devices, _driver, problem = gpu_devices()
    return None if devices else "no CUDA GPU here (%s)" % problem


_NO_TENSORRT = _tensorrt_and_gpu()  # decided at collection, before the jetson bundle is built


@pytest.mark.tensorrt
@pytest.mark.skipif(_NO_TENSORRT is not None, reason=_NO_TENSORRT or "")
def test_tensorrt_runs_the_demo_bundle(jetson_bundle, tmp_path, tools):
    cache = str(tmp_path / "engines")
    first = tools.run(tools.quick("run", jetson_bundle, "--backend", "tensorrt", "--engine-cache", cache))
    assert first.rc == 0, first.stderr
    for run in first.result["runs"]:
        assert run["status"] == "ok" and run["backend"] == "tensorrt"
        assert run["engine"]["cache_hit"] is False and os.path.isfile(run["engine"]["path"])
        if run["accuracy"]["drift"] is not None:
            assert run["accuracy"]["passed"] is True
    again = tools.run(tools.quick("bench", jetson_bundle, "--backend", "tensorrt", "--engine-cache", cache))
    assert all(r["engine"]["cache_hit"] for r in again.result["runs"])
