"""CUDA through ctypes: GPU facts (driver API) and the few runtime calls the
TensorRT runner needs (memory, copies, streams, events).

ctypes instead of cuda-python or pycuda: every CUDA board already has
libcuda/libcudart (JetPack installs them), so the agent needs no extra Python
package, and this module imports nothing beyond the standard library.
"""
import ctypes
import ctypes.util
import glob
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from edgekit.contract.errors import EdgekitError

# cudaError_t values the agent explains.
CUDA_SUCCESS = 0
CUDA_ERROR_MEMORY_ALLOCATION = 2
# CUdevice_attribute / cudaDeviceAttr
ATTR_CC_MAJOR = 75
ATTR_CC_MINOR = 76
ATTR_INTEGRATED = 18
H2D = 1
D2H = 2


def _load(names: List[str], patterns: List[str]) -> Tuple[Optional[Any], List[str]]:
    """First library that loads: plain names first, then globbed paths."""
    tried = []
    candidates = list(names)
    for pattern in patterns:
        candidates.extend(sorted(glob.glob(pattern), reverse=True))
    for name in candidates:
        tried.append(name)
        try:
            return ctypes.CDLL(name), tried
        except OSError:
            continue
    return None, tried


def _cudart_patterns() -> List[str]:
    patterns = [
        "/usr/local/cuda/lib64/libcudart.so*",
        "/usr/local/cuda/targets/*/lib/libcudart.so*",
        "/usr/local/cuda-*/lib64/libcudart.so*",
        "/usr/lib/*-linux-gnu/libcudart.so*",
    ]
    # pip's nvidia-cuda-runtime wheels (pulled in by the tensorrt wheel on x86)
    for entry in sys.path:
        patterns.append(os.path.join(entry, "nvidia", "cuda_runtime", "lib", "libcudart.so*"))
    return patterns


def load_driver() -> Optional[Any]:
    lib, _ = _load(["libcuda.so.1", "libcuda.so"], ["/usr/lib/*-linux-gnu/libcuda.so*", "/usr/lib/*-linux-gnu/tegra/libcuda.so*"])
    return lib


def gpu_devices() -> Tuple[List[Dict[str, Any]], Optional[int], Optional[str]]:
    """(devices, driver version, problem): what the CUDA driver reports, without a context."""
    lib = load_driver()
    if lib is None:
        return [], None, "no CUDA driver (libcuda.so.1)"
    try:
        if lib.cuInit(0) != CUDA_SUCCESS:
            return [], None, "the CUDA driver found no usable GPU (cuInit failed)"
        version = ctypes.c_int(0)
        lib.cuDriverGetVersion(ctypes.byref(version))
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != CUDA_SUCCESS:
            return [], version.value, "cuDeviceGetCount failed"
        devices = []
        for index in range(count.value):
            dev = ctypes.c_int(0)
            if lib.cuDeviceGet(ctypes.byref(dev), index) != CUDA_SUCCESS:
                continue
            name = ctypes.create_string_buffer(256)
            lib.cuDeviceGetName(name, 256, dev)
            major, minor, integrated = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
            lib.cuDeviceGetAttribute(ctypes.byref(major), ATTR_CC_MAJOR, dev)
            lib.cuDeviceGetAttribute(ctypes.byref(minor), ATTR_CC_MINOR, dev)
            lib.cuDeviceGetAttribute(ctypes.byref(integrated), ATTR_INTEGRATED, dev)
            total = ctypes.c_size_t(0)
            getter = getattr(lib, "cuDeviceTotalMem_v2", None) or lib.cuDeviceTotalMem
            getter.argtypes = [ctypes.POINTER(ctypes.c_size_t), ctypes.c_int]
            getter(ctypes.byref(total), dev)
            devices.append(
                {
                    "index": index,
                    "name": name.value.decode("utf-8", "replace"),
                    "compute_capability": "%d.%d" % (major.value, minor.value),
                    "memory_mb": round(total.value / 1048576.0),
                    "integrated": bool(integrated.value),
                }
            )
        return devices, version.value, None
    except (AttributeError, OSError) as exc:  # a driver too old for one of these entry points
        return [], None, "CUDA driver query failed (%s)" % exc


def version_string(code: Optional[int]) -> Optional[str]:
    """CUDA's integer versions: 11040 -> '11.4', 12020 -> '12.2'."""
    if not code:
        return None
    return "%d.%d" % (code // 1000, (code % 1000) // 10)


class CudaError(EdgekitError):
    pass


class CudaRuntime(object):
    """The handful of libcudart calls the TensorRT runner uses."""

    def __init__(self) -> None:
        lib, tried = _load(["libcudart.so"], _cudart_patterns())
        if lib is None:
            found = ctypes.util.find_library("cudart")
            if found:
                try:
                    lib = ctypes.CDLL(found)
                except OSError:
                    lib = None
        if lib is None:
            raise CudaError(
                "the CUDA runtime library (libcudart.so) was not found (tried %d locations)" % len(tried),
                "install the CUDA runtime (on Jetson it comes with JetPack: sudo apt install nvidia-jetpack) or add its folder to LD_LIBRARY_PATH",
            )
        self.lib = lib
        vp = ctypes.c_void_p
        sz = ctypes.c_size_t
        sigs = {
            "cudaMalloc": [ctypes.POINTER(vp), sz],
            "cudaFree": [vp],
            "cudaMallocHost": [ctypes.POINTER(vp), sz],
            "cudaFreeHost": [vp],
            "cudaMemcpyAsync": [vp, vp, sz, ctypes.c_int, vp],
            "cudaStreamCreate": [ctypes.POINTER(vp)],
            "cudaStreamSynchronize": [vp],
            "cudaStreamDestroy": [vp],
            "cudaEventCreate": [ctypes.POINTER(vp)],
            "cudaEventRecord": [vp, vp],
            "cudaEventSynchronize": [vp],
            "cudaEventElapsedTime": [ctypes.POINTER(ctypes.c_float), vp, vp],
            "cudaEventDestroy": [vp],
            "cudaMemGetInfo": [ctypes.POINTER(sz), ctypes.POINTER(sz)],
            "cudaRuntimeGetVersion": [ctypes.POINTER(ctypes.c_int)],
            "cudaGetDeviceCount": [ctypes.POINTER(ctypes.c_int)],
            "cudaSetDevice": [ctypes.c_int],
        }
        for name, argtypes in sigs.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = ctypes.c_int
        lib.cudaGetErrorString.argtypes = [ctypes.c_int]
        lib.cudaGetErrorString.restype = ctypes.c_char_p

    def check(self, err: int, what: str) -> None:
        if err == CUDA_SUCCESS:
            return
        text = (self.lib.cudaGetErrorString(err) or b"unknown error").decode("utf-8", "replace")
        if err == CUDA_ERROR_MEMORY_ALLOCATION:
            raise CudaError("out of GPU memory in %s (%s)" % (what, text), "close other GPU programs or use a smaller model/variant")
        raise CudaError("CUDA call %s failed: %s (error %d)" % (what, text, err), "check the GPU driver with nvidia-smi or tegrastats")

    def runtime_version(self) -> int:
        v = ctypes.c_int(0)
        self.check(self.lib.cudaRuntimeGetVersion(ctypes.byref(v)), "cudaRuntimeGetVersion")
        return v.value

    def device_count(self) -> int:
        n = ctypes.c_int(0)
        err = self.lib.cudaGetDeviceCount(ctypes.byref(n))
        return n.value if err == CUDA_SUCCESS else 0

    def set_device(self, index: int) -> None:
        self.check(self.lib.cudaSetDevice(index), "cudaSetDevice")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), max(int(nbytes), 1)), "cudaMalloc(%d bytes)" % nbytes)
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        if ptr:
            self.lib.cudaFree(ctypes.c_void_p(ptr))

    def malloc_host(self, nbytes: int) -> int:
        """Page-locked host memory: required for truly asynchronous copies."""
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMallocHost(ctypes.byref(ptr), max(int(nbytes), 1)), "cudaMallocHost(%d bytes)" % nbytes)
        return int(ptr.value or 0)

    def free_host(self, ptr: int) -> None:
        if ptr:
            self.lib.cudaFreeHost(ctypes.c_void_p(ptr))

    def copy_async(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        self.check(self.lib.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), nbytes, kind, ctypes.c_void_p(stream)), "cudaMemcpyAsync")

    def stream_create(self) -> int:
        s = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return int(s.value or 0)

    def stream_sync(self, stream: int) -> None:
        self.check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def stream_destroy(self, stream: int) -> None:
        if stream:
            self.lib.cudaStreamDestroy(ctypes.c_void_p(stream))

    def event_create(self) -> int:
        e = ctypes.c_void_p()
        self.check(self.lib.cudaEventCreate(ctypes.byref(e)), "cudaEventCreate")
        return int(e.value or 0)

    def event_record(self, event: int, stream: int) -> None:
        self.check(self.lib.cudaEventRecord(ctypes.c_void_p(event), ctypes.c_void_p(stream)), "cudaEventRecord")

    def event_elapsed_ms(self, start: int, end: int) -> float:
        """Waits for ``end``, then returns the GPU time between the two events."""
        self.check(self.lib.cudaEventSynchronize(ctypes.c_void_p(end)), "cudaEventSynchronize")
        ms = ctypes.c_float(0.0)
        self.check(self.lib.cudaEventElapsedTime(ctypes.byref(ms), ctypes.c_void_p(start), ctypes.c_void_p(end)), "cudaEventElapsedTime")
        return float(ms.value)

    def event_destroy(self, event: int) -> None:
        if event:
            self.lib.cudaEventDestroy(ctypes.c_void_p(event))

    def mem_info(self) -> Tuple[int, int]:
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        self.check(self.lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)), "cudaMemGetInfo")
        return int(free.value), int(total.value)
