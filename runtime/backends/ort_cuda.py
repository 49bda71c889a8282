"""ONNX Runtime on an NVIDIA GPU (CUDA execution provider), through I/O binding.

Every input and output lives in an `OrtValue` allocated on the GPU once per binding
(`OrtValue.ortvalue_from_shape_and_type(..., "cuda")`), bound with `IOBinding.bind_ortvalue_input`
/ `bind_ortvalue_output`, and run with `InferenceSession.run_with_iobinding`. Host data enters with
`OrtValue.update_inplace` (a copy into the same device address, which is what CUDA graphs need)
and leaves with `OrtValue.numpy()`, only for the outputs asked for. See device.py for the
`bind()` / `write` / `step` / `carry` fast path that keeps the KV cache on the GPU.

CUDA graphs (provider option `enable_cuda_graph`): ORT captures the whole run on the first call
for a graph annotation id and replays it afterwards; the bound addresses and shapes must not change
for that id. Each buffer arrangement of a binding (two, when `carry` swaps a pair) gets its own
`gpu_graph_id` run option (ORT ≥ 1.18; ids start at 1, 0 is reserved). If ORT refuses the graph at
session creation (some node placed on the CPU), one warning says so and the session runs
without graphs. If ORT cannot load the CUDA provider at all, that is an error, never a quiet CPU run.

NOTE: written against the documented onnxruntime-gpu Python API; it has not run on a GPU yet.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgegen.bundle import check_io
from edgegen.errors import BackendUnavailable, BundleError

from .device import RunThroughBinding, check_feed, is_jetson, probe_gpu

if TYPE_CHECKING:
    from edgegen.bundle import Bundle, ComponentEntry

log = logging.getLogger(__name__)

PROVIDER = "CUDAExecutionProvider"
MIN_ORT_FOR_GRAPH_IDS = (1, 18)  # several CUDA graphs per session (the gpu_graph_id run option)

# (shape, numpy dtype) -> a device OrtValue
Allocator = Callable[[tuple[int, ...], np.dtype], Any]


def install_hint() -> str:
    if is_jetson():
        return (
            "on Jetson install an onnxruntime-gpu wheel built for your JetPack (the Jetson Zoo or the "
            "Jetson AI Lab pip index) in place of onnxruntime"
        )
    # This order (docs/DEVICES.md): onnxruntime and onnxruntime-gpu install the same module and the
    # last one installed wins, so the CPU package goes after the extra and the GPU one is reinstalled.
    return (
        'pip install "edgegen[gpu]", then pip uninstall -y onnxruntime && pip install --force-reinstall '
        "onnxruntime-gpu (CUDA 12 + cuDNN 9)"
    )


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


def create_session(path: Path, options: Any, providers: list[Any] | None, expect: str) -> Any:
    """An InferenceSession that really runs on `expect`; any load failure is a one-line error."""
    import onnxruntime as ort

    state = ort.capi.onnxruntime_pybind11_state
    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotImplemented", "RuntimeException", "EPFail")
    errors = tuple(getattr(state, n) for n in names if hasattr(state, n))
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except errors as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{path}: onnxruntime cannot create a {expect} session ({first})") from None
    used = session.get_providers()
    if not used or used[0] != expect:
        # ORT logs a warning and quietly runs on the CPU when a provider fails to load; not here.
        raise BackendUnavailable(
            f"onnxruntime could not load {expect} (it offered {used}); the CUDA/cuDNN libraries it needs "
            f"are probably missing: {install_hint()}"
        )
    return session


class OrtDeviceSession(RunThroughBinding):
    """An InferenceSession whose inputs/outputs live on the device (Session + DeviceSession)."""

    def __init__(self, session: Any, entry: ComponentEntry, allocate: Allocator, *, cuda_graph: bool, batch: int = 1) -> None:
        check_io(entry, Path(entry.file), [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        self.session = session
        self.entry = entry
        self.allocate = allocate
        self.cuda_graph = cuda_graph
        self.shapes = {t.name: t.concrete_shape(batch) for t in (*entry.inputs, *entry.outputs)}
        self.dtypes = {t.name: np.dtype(t.dtype) for t in (*entry.inputs, *entry.outputs)}
        self._graph_ids = itertools.count(1)  # 0 is ORT's reserved default annotation
        self._id_lock = threading.Lock()
        self._init_run()

    def next_graph_id(self) -> int:
        with self._id_lock:
            return next(self._graph_ids)

    def bind(self) -> OrtDeviceBinding:
        return OrtDeviceBinding(self)


class OrtDeviceBinding:
    """One stream's device OrtValues, IOBinding and graph ids (DeviceBinding)."""

    def __init__(self, owner: OrtDeviceSession) -> None:
        import onnxruntime as ort

        self._ort = ort
        self._owner = owner
        self._component = owner.entry.component
        self._inputs, self._outputs = owner.entry.input_names, owner.entry.output_names
        self._values = {name: owner.allocate(owner.shapes[name], owner.dtypes[name]) for name in (*self._inputs, *self._outputs)}
        self._io = owner.session.io_binding()
        for name in self._inputs:
            self._io.bind_ortvalue_input(name, self._values[name])
        for name in self._outputs:
            self._io.bind_ortvalue_output(name, self._values[name])
        self._run_options: dict[tuple[int, ...], Any] = {}  # buffer arrangement -> RunOptions (graph id)

    def write(self, name: str, value: np.ndarray) -> None:
        self._check(name, self._inputs, "input")
        self._values[name].update_inplace(check_feed(name, value, self._owner.shapes[name], self._owner.dtypes[name]))

    def step(self, read: Sequence[str] = ()) -> dict[str, np.ndarray]:
        for name in read:
            self._check(name, self._outputs, "output")
        self._owner.session.run_with_iobinding(self._io, self._options())
        return {name: self._values[name].numpy() for name in read}

    def carry(self, output: str, input: str) -> None:
        self._check(output, self._outputs, "output")
        self._check(input, self._inputs, "input")
        if (self._owner.shapes[output], self._owner.dtypes[output]) != (self._owner.shapes[input], self._owner.dtypes[input]):
            raise ValueError(f"cannot carry {output} into {input}: shapes or dtypes differ")
        self._values[output], self._values[input] = self._values[input], self._values[output]
        self._io.bind_ortvalue_input(input, self._values[input])
        self._io.bind_ortvalue_output(output, self._values[output])

    def close(self) -> None:
        self._io.clear_binding_inputs()
        self._io.clear_binding_outputs()
        self._values = {}

    def _check(self, name: str, allowed: Sequence[str], what: str) -> None:
        if name not in allowed:
            raise KeyError(f"{self._component} has no {what} {name!r}; {what}s: {list(allowed)}")

    def _options(self) -> Any:
        """RunOptions naming this buffer arrangement's CUDA graph (None when graphs are off)."""
        if not self._owner.cuda_graph:
            return None
        arrangement = tuple(self._values[n].data_ptr() for n in (*self._inputs, *self._outputs))
        options = self._run_options.get(arrangement)
        if options is None:
            options = self._ort.RunOptions()
            options.add_run_config_entry("gpu_graph_id", str(self._owner.next_graph_id()))
            self._run_options[arrangement] = options
        return options


def cuda_allocator(device: int) -> Allocator:
    import onnxruntime as ort

    def allocate(shape: tuple[int, ...], dtype: np.dtype) -> Any:
        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype.type, "cuda", device)

    return allocate


class OrtCudaBackend:
    """`ort-cuda`: onnxruntime-gpu's CUDA execution provider with device-resident I/O and CUDA graphs."""

    name = "ort-cuda"
    # fp16 runs on tensor cores; int8 Q/DQ runs, but the CUDA EP dequantizes around fp32 kernels
    # (slower than fp32); fp8 Q/DQ is left to TensorRT.
    precisions = ("fp16", "fp32", "int8")

    def __init__(self, *, device: int = 0, cuda_graph: bool = True, gpu_mem_limit: int | None = None) -> None:
        self.device = device
        self.cuda_graph = cuda_graph
        self.gpu_mem_limit = gpu_mem_limit

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError:
            return False, f"onnxruntime is not installed; {install_hint()}"
        if PROVIDER not in ort.get_available_providers():
            return False, f"onnxruntime {ort.__version__} is the CPU build (no {PROVIDER}); {install_hint()}"
        gpu, why = probe_gpu(self.device)
        if gpu is None:
            return False, f"onnxruntime {ort.__version__} has {PROVIDER} but {why}"
        return True, f"onnxruntime {ort.__version__} {PROVIDER} on {gpu.name} (sm {gpu.sm})"

    def provider_options(self, cuda_graph: bool) -> dict[str, str]:
        options = {  # values as strings, the form every onnxruntime version parses
            "device_id": str(self.device),
            # Grow the arena by what is asked, not to the next power of two: matters on 8 GiB Jetsons.
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "EXHAUSTIVE",  # shapes are static: search once, at session creation
            "do_copy_in_default_stream": "1",
            "enable_cuda_graph": "1" if cuda_graph else "0",
        }
        if self.gpu_mem_limit is not None:
            options["gpu_mem_limit"] = str(self.gpu_mem_limit)
        return options

    def session_options(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        return options

    def open(self, bundle: Bundle, component: str, precision: str) -> OrtDeviceSession:
        import onnxruntime as ort

        ok, why = self.available()
        if not ok:
            raise BackendUnavailable(f"backend 'ort-cuda' is not available: {why}")
        entry = bundle.component(precision, component)
        path = bundle.file(entry.file)
        cuda_graph = self.cuda_graph
        if cuda_graph and _version_tuple(ort.__version__) < MIN_ORT_FOR_GRAPH_IDS:
            log.warning("onnxruntime %s predates per-binding CUDA graphs (1.18); %s runs without them", ort.__version__, component)
            cuda_graph = False
        try:
            session = create_session(path, self.session_options(), [(PROVIDER, self.provider_options(cuda_graph))], PROVIDER)
        except BundleError as exc:
            if not (cuda_graph and "graph" in str(exc).lower()):
                raise
            log.warning("%s: onnxruntime refused a CUDA graph (%s); running without CUDA graphs", component, exc)
            cuda_graph = False
            session = create_session(path, self.session_options(), [(PROVIDER, self.provider_options(False))], PROVIDER)
        return OrtDeviceSession(session, entry, cuda_allocator(self.device), cuda_graph=cuda_graph)
