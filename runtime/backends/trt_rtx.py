"""TensorRT for RTX through ONNX Runtime's `NvTensorRTRTXExecutionProvider`.

TensorRT-RTX is NVIDIA's inference library for GeForce/RTX PCs: a small install, engines compiled
just in time on the user's GPU in seconds, and a runtime cache of compiled kernels. ONNX Runtime
reaches it two ways, both handled here:

- the plugin (the supported route; ORT ≥ 1.24): `pip install onnxruntime-ep-nv-tensorrt-rtx`
  (CUDA 13; `-cu12` for CUDA 12) next to the plain `onnxruntime` package. The plugin library is
  registered with `onnxruntime.register_execution_provider_library`, its device found with
  `onnxruntime.get_ep_devices()` and added with `SessionOptions.add_provider_for_devices`;
- a build of ONNX Runtime with the provider built in (deprecated upstream), where
  `NvTensorRTRTXExecutionProvider` is in `onnxruntime.get_available_providers()`.

Supported GPUs (TensorRT-RTX support matrix): compute capability 7.5, 8.6, 8.9 and 12.x (Turing,
Ampere, Ada and Blackwell RTX parts). Not Jetson (8.7) and not data-center parts (8.0, 9.0, 10.x):
there, use the `tensorrt` backend. I/O runs through the same device-resident binding as `ort-cuda`
(see device.py), with the provider's own CUDA graphs (`enable_cuda_graph`) and its runtime cache
(`nv_runtime_cache_path`) kept under the engine cache folder, per GPU and per component.

NOTE: written against the documented provider options and plugin API; it has not run on a GPU yet.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from edgegen.errors import BackendUnavailable

from ..engine_cache import default_cache_dir, onnx_digest, slug
from .device import GpuInfo, is_jetson, probe_gpu
from .ort_cuda import Allocator, OrtDeviceSession, create_session, cuda_allocator

if TYPE_CHECKING:
    from pathlib import Path

    from edgegen.bundle import Bundle, ComponentEntry

log = logging.getLogger(__name__)

EP_NAME = "NvTensorRTRTXExecutionProvider"
PLUGIN_MODULE = "onnxruntime_ep_nv_tensorrt_rtx"
SUPPORTED_SM_TEXT = "7.5, 8.6, 8.9 and 12.x"
FP8_MIN_SM = (8, 9)


def supported_sm(cc: tuple[int, int]) -> bool:
    """TensorRT-RTX's supported compute capabilities (its support matrix, Linux and Windows)."""
    return cc in {(7, 5), (8, 6), (8, 9)} or cc[0] == 12


def install_hint() -> str:
    return (
        'pip install "onnxruntime>=1.24" onnxruntime-ep-nv-tensorrt-rtx (CUDA 13; '
        "onnxruntime-ep-nv-tensorrt-rtx-cu12 for CUDA 12); if onnxruntime-gpu is installed, uninstall it first (it ships its own onnxruntime module)"
    )


def find_provider() -> tuple[str, str]:
    """("plugin" | "built-in", detail) when the provider can be used, else ("", why not)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "", f"onnxruntime is not installed; {install_hint()}"
    if EP_NAME in ort.get_available_providers():
        return "built-in", f"onnxruntime {ort.__version__} with {EP_NAME} built in"
    if importlib.util.find_spec(PLUGIN_MODULE) is None:
        return "", f"the TensorRT-RTX execution provider is not installed; {install_hint()}"
    if not hasattr(ort, "register_execution_provider_library"):
        return "", f"onnxruntime {ort.__version__} cannot load execution-provider plugins; pip install \"onnxruntime>=1.24\""
    return "plugin", f"onnxruntime {ort.__version__} with the {PLUGIN_MODULE} plugin"


_registered: set[str] = set()


def plugin_devices() -> tuple[str, list[Any]]:
    """Register the plugin once per process; (its EP name, its OrtEpDevices)."""
    import onnxruntime as ort

    plugin = importlib.import_module(PLUGIN_MODULE)
    name = plugin.get_ep_name()
    if name not in _registered:
        ort.register_execution_provider_library(name, plugin.get_library_path())
        _registered.add(name)
    return name, [d for d in ort.get_ep_devices() if d.ep_name == name]


class TrtRtxBackend:
    """`trt-rtx`: ONNX Runtime + TensorRT-RTX on RTX GPUs."""

    name = "trt-rtx"

    def __init__(self, *, device: int = 0, cuda_graph: bool = True) -> None:
        self.device = device
        self.cuda_graph = cuda_graph

    @property
    def precisions(self) -> tuple[str, ...]:
        """The default order, not a measured one (this backend has not run on a GPU): fp16 first,
        since edgegen's fp8 bundles are Q/DQ on the fp32 graph (every op not quantized stays fp32).
        No int8: TensorRT-RTX lists INT8 only as weight-only GEMM, and edgegen's int8 bundles
        quantize activations too (Q/DQ on both)."""
        gpu, _ = probe_gpu(self.device)
        if gpu is not None and gpu.compute_capability >= FP8_MIN_SM:
            return ("fp16", "fp8", "fp32")
        return ("fp16", "fp32")

    def available(self) -> tuple[bool, str]:
        route, detail = find_provider()
        if not route:
            return False, detail
        gpu, why = probe_gpu(self.device)
        if gpu is None:
            return False, f"{detail}, but {why}"
        if not supported_sm(gpu.compute_capability):
            return False, self._unsupported(gpu)
        return True, f"{detail}, on {gpu.name} (sm {gpu.sm})"

    @staticmethod
    def _unsupported(gpu: GpuInfo) -> str:
        where = "; on Jetson use --backend tensorrt" if is_jetson() else "; use --backend tensorrt or ort-cuda"
        return f"{gpu.name} is sm {gpu.sm}: TensorRT-RTX supports compute capability {SUPPORTED_SM_TEXT} (RTX GPUs){where}"

    def provider_options(self, bundle: Bundle, entry: ComponentEntry, gpu: GpuInfo) -> dict[str, str]:
        shapes = ",".join(f"{t.name}:{'x'.join(str(d) for d in t.concrete_shape(1))}" for t in entry.inputs)
        cache = default_cache_dir() / "trt-rtx" / f"{slug(gpu.name)}-sm{gpu.sm}" / (
            f"{entry.component}.{entry.precision}.{onnx_digest(bundle, entry)[:16]}"
        )
        cache.mkdir(parents=True, exist_ok=True)
        return {
            "device_id": str(self.device),
            "enable_cuda_graph": "1" if self.cuda_graph else "0",
            "nv_runtime_cache_path": str(cache),  # JIT-compiled kernels, reused on the next load
            # Every dimension is static (batch 1): one explicit profile, min = opt = max.
            "nv_profile_min_shapes": shapes,
            "nv_profile_opt_shapes": shapes,
            "nv_profile_max_shapes": shapes,
        }

    def open(self, bundle: Bundle, component: str, precision: str) -> OrtDeviceSession:
        import onnxruntime as ort

        ok, why = self.available()
        if not ok:
            raise BackendUnavailable(f"backend 'trt-rtx' is not available: {why}")
        gpu, _ = probe_gpu(self.device)
        assert gpu is not None
        entry = bundle.component(precision, component)
        path: Path = bundle.file(entry.file)
        options = self.session_options(ort)
        provider_options = self.provider_options(bundle, entry, gpu)
        route, _ = find_provider()
        allocate: Allocator
        if route == "built-in":
            session = create_session(path, options, [(EP_NAME, provider_options)], EP_NAME)
            allocate = cuda_allocator(self.device)
        else:
            name, devices = plugin_devices()
            if self.device >= len(devices):
                raise BackendUnavailable(
                    f"the {PLUGIN_MODULE} plugin offers {len(devices)} GPU(s), not GPU {self.device} (is the NVIDIA driver new enough for its CUDA?)"
                )
            device = devices[self.device]
            options.add_provider_for_devices([device], provider_options)
            session = create_session(path, options, None, name)
            memory = device.memory_info(ort.OrtDeviceMemoryType.DEFAULT)

            def allocate(shape: tuple[int, ...], dtype: np.dtype) -> Any:
                return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype.type, memory_info=memory)

        return OrtDeviceSession(session, entry, allocate, cuda_graph=self.cuda_graph)

    @staticmethod
    def session_options(ort: Any) -> Any:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return options
