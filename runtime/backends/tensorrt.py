"""TensorRT backend: engines built from the bundle's ONNX, cached, replayed as CUDA graphs.

Build (once per bundle × component × precision × GPU × TensorRT version, see engine_cache.py):
- the network is always STRONGLY_TYPED: precision is what the ONNX says (fp16 weights, Q/DQ
  nodes), never a builder flag. TensorRT 11 removed the FP16/INT8 flags and implicit calibration;
  10.3 (JetPack 6) already supports strong typing, so one code path serves both.
- one optimization profile with the manifest's static shapes, batch min = opt = max = 1 by default;
- a workspace limit (1 GiB default: Jetson boards share 8-16 GiB between CPU and GPU);
- a timing cache persisted next to the engines, so rebuilds (new bundle, new settings) are fast;
  an unreadable or foreign one is replaced by a fresh one (logged), never fatal;
- Ctrl-C (or SIGTERM) during a build cancels it at TensorRT's next progress step, through the
  progress monitor, and is then raised as usual (KeyboardInterrupt / the CLI's handler).

Run: one execution context and one CUDA stream per session; every input and output has a device
buffer and a pinned host staging buffer allocated once; `execute_async_v3` on the stream; the
enqueue of a step is captured once as a CUDA graph and replayed (one launch per step). The
device-resident fast path (`write` / `step` / `carry`, see device.py) keeps the KV cache on the GPU.
The backend's `device` is made current (cudaSetDevice) before building, loading, and every
binding call, since CUDA's current device is per host thread.

Nothing here is imported unless the backend is asked for; `tensorrt` and `cuda-python` are
imported inside functions, so `available()` can say what is missing instead of failing at import.
NOTE: written against the documented TensorRT 10 and cuda-python 12 APIs; it has not run on a GPU
yet. What is tested (on fakes, no GPU): the build's control flow (timing cache fallback, profile
check, cancellation), the session's buffers, carry, CUDA-graph capture and cleanup on failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgegen.bundle import check_io
from edgegen.errors import BackendUnavailable, BundleError, UserError

from ..engine_cache import BuildSettings, EngineCache, EngineSpec, TrtEnvironment
from .device import RunThroughBinding, check_feed, is_jetson, probe_gpu

if TYPE_CHECKING:
    from edgegen.bundle import Bundle, ComponentEntry

log = logging.getLogger(__name__)

MIN_TENSORRT = (10, 0)  # strongly typed networks, execute_async_v3, IProgressMonitor
FP8_MIN_SM = (8, 9)  # Ada and newer; Jetson Orin (8.7) has FP16/INT8 tensor cores only

# cuda-python 12.6 added `cuda.bindings.runtime`; 13 removed `cuda.cudart` and targets CUDA 13
# drivers (JetPack 6 is CUDA 12.6). Keep in step with the `tensorrt` extra in pyproject.toml.
CUDA_PYTHON_PIN = "cuda-python>=12.6,<13"

# (phase, step, total) for every step TensorRT reports while building; returning False cancels.
ProgressCallback = Callable[[str, int, int], bool]


def install_hint() -> str:
    """How to get TensorRT's Python API on this kind of machine."""
    if is_jetson():
        return f'on Jetson, TensorRT comes with JetPack: sudo apt install python3-libnvinfer, then pip install "{CUDA_PYTHON_PIN}"'
    return 'pip install "edgegen[tensorrt]" (the TensorRT and cuda-python 12 wheels; needs an NVIDIA driver)'


def import_tensorrt() -> Any:
    import tensorrt

    return tensorrt


def import_cudart() -> Any:
    """The CUDA runtime bindings: `cuda.bindings.runtime` (cuda-python ≥ 12.6, what the extra pins),
    else the older `cuda.cudart` (cuda-python < 12.6, e.g. an older system package)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # removed in cuda-python 13
    return runtime


def _native(handle: Any) -> int:
    """A cuda-python handle (cudaStream_t, ...) as the plain integer TensorRT's Python API takes.

    cuda-python ≥ 12.9.1 deprecates int(handle) in favour of get_cuda_native_handle.
    """
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(handle)
    return int(get_cuda_native_handle(handle))


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


class CudaError(RuntimeError):
    """A CUDA runtime call failed (the message names the call and the cudaError_t)."""


def _cuda(cudart: Any, result: Any, what: str) -> Any:
    """Unpack cuda-python's (error, *values) tuples; raise CudaError on failure."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise CudaError(f"{what} failed: {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def set_device(cudart: Any, device: int) -> None:
    """Make GPU `device` current for this host thread (TensorRT and CUDA allocate and launch there)."""
    _cuda(cudart, cudart.cudaSetDevice(device), f"cudaSetDevice({device})")


# ---------------------------------------------------------------------------------------------
# The backend


class TensorRTBackend:
    """`tensorrt`: TensorRT engines from the bundle's ONNX, cached under $EDGEGEN_CACHE_DIR."""

    name = "tensorrt"

    def __init__(
        self,
        *,
        cache: EngineCache | None = None,
        settings: BuildSettings | None = None,
        batch: tuple[int, int, int] = (1, 1, 1),
        cuda_graph: bool = True,
        device: int = 0,
    ) -> None:
        self.cache = cache or EngineCache()
        self.settings = settings or BuildSettings()
        self.batch = batch
        self.cuda_graph = cuda_graph
        self.device = device

    @property
    def precisions(self) -> tuple[str, ...]:
        """The default order (first that the bundle has and that passed its quality check wins).

        Not a measured speed order: no TensorRT path has run on a GPU. fp16 comes first because an
        fp16 bundle is fp16 end to end, while edgegen's int8/fp8 bundles are Q/DQ nodes on the fp32
        graph: the network is strongly typed, so every op the calibration did not quantize runs in
        fp32. Whether int8 beats fp16 on a given GPU is for `edgegen bench` to show (`--precision`
        picks one). fp8 only where the GPU has FP8 tensor cores (sm 8.9+).
        """
        gpu, _ = probe_gpu(self.device)
        if gpu is not None and gpu.compute_capability >= FP8_MIN_SM:
            return ("fp16", "int8", "fp8", "fp32")
        return ("fp16", "int8", "fp32")

    def available(self) -> tuple[bool, str]:
        try:
            trt = import_tensorrt()
        except (ImportError, OSError) as exc:
            return False, f"TensorRT is not installed ({exc}); {install_hint()}"
        if _version_tuple(trt.__version__) < MIN_TENSORRT:
            return False, f"TensorRT {trt.__version__} is too old: edgegen needs TensorRT 10 or newer (JetPack 6 ships 10.3)"
        try:
            import_cudart()
        except (ImportError, OSError) as exc:
            return False, f'cuda-python is not installed ({exc}); it provides the CUDA streams and buffers: pip install "{CUDA_PYTHON_PIN}"'
        gpu, why = probe_gpu(self.device)
        if gpu is None:
            return False, f"TensorRT {trt.__version__} is installed but {why}"
        return True, f"TensorRT {trt.__version__} on {gpu.name} (sm {gpu.sm})"

    def require(self) -> None:
        ok, why = self.available()
        if not ok:
            raise BackendUnavailable(f"backend 'tensorrt' is not available: {why}")

    def environment(self) -> TrtEnvironment:
        """The TensorRT version and GPU engines are built for here (part of every cache key)."""
        gpu, why = probe_gpu(self.device)
        if gpu is None:
            raise BackendUnavailable(f"backend 'tensorrt' is not available: {why}")
        return TrtEnvironment(
            tensorrt=import_tensorrt().__version__,
            gpu=gpu.name,
            compute_capability=gpu.sm,
            multiprocessors=gpu.multiprocessors,
            total_memory=gpu.total_memory,
        )

    def engine_spec(self, bundle: Bundle, component: str, precision: str) -> EngineSpec:
        return EngineSpec.for_component(bundle, component, precision, self.environment(), self.settings, self.batch)

    def ensure_engine(
        self,
        bundle: Bundle,
        component: str,
        precision: str,
        *,
        force: bool = False,
        progress: ProgressCallback | None = None,
    ) -> EngineResult:
        """The cached plan for this component, building (and caching) it when missing, stale or forced."""
        spec = self.engine_spec(bundle, component, precision)
        _check_precision_fits_gpu(spec)
        with self.cache.lock(spec):  # a concurrent build of the same key finishes first, then hits
            found = self.cache.load(spec)
            if found.status == "hit" and not force:
                log.debug("using cached TensorRT engine %s", found.path)
                return EngineResult(spec, found.path, found.plan or b"", built=False, reason="cached")
            reason = "forced rebuild (--force)" if force else found.reason
            verb = "rebuilding" if found.status == "stale" else "building"
            log.info("%s the TensorRT engine for %s: %s", verb, spec.label, reason)
            entry = bundle.component(precision, component)
            started = time.perf_counter()
            plan, timing_cache = build_plan(
                bundle.file(entry.file), entry, spec, self.cache.read_timing_cache(spec.env), progress, device=self.device
            )
            seconds = time.perf_counter() - started
            if timing_cache:
                self.cache.write_timing_cache(spec.env, timing_cache)
            path = self.cache.store(spec, plan, build_seconds=seconds)
            log.info("built %s in %.0f s: %s (%.1f MiB)", spec.label, seconds, path, len(plan) / (1 << 20))
            return EngineResult(spec, path, plan, built=True, reason=reason, seconds=seconds)

    def open(self, bundle: Bundle, component: str, precision: str) -> TensorRTSession:
        self.require()
        result = self.ensure_engine(bundle, component, precision)
        engine = deserialize(result.plan, result.path, device=self.device)
        entry = bundle.component(precision, component)
        return TensorRTSession(engine, entry, cuda_graph=self.cuda_graph, batch=self.batch[1], device=self.device)


@dataclass(frozen=True)
class EngineResult:
    spec: EngineSpec
    path: Path
    plan: bytes
    built: bool
    reason: str  # why it was built, or "cached"
    seconds: float | None = None  # build time, when built


def _check_precision_fits_gpu(spec: EngineSpec) -> None:
    cc = tuple(int(p) for p in spec.env.compute_capability.split("."))
    if spec.precision == "fp8" and cc < FP8_MIN_SM:
        raise UserError(
            f"fp8 needs FP8 tensor cores (sm 8.9+: Ada, Hopper, Blackwell); {spec.env.gpu} is sm "
            f"{spec.env.compute_capability}: use --precision int8 or fp16"
        )


# ---------------------------------------------------------------------------------------------
# Building and loading


_LOGGER: Any = None


def trt_logger() -> Any:
    """One process-wide trt.ILogger that forwards TensorRT's messages to `logging`."""
    global _LOGGER
    if _LOGGER is None:
        trt = import_tensorrt()
        severity = trt.ILogger.Severity
        levels = {
            severity.INTERNAL_ERROR: logging.ERROR,
            severity.ERROR: logging.ERROR,
            severity.WARNING: logging.WARNING,
            severity.INFO: logging.DEBUG,
            severity.VERBOSE: logging.DEBUG,
        }

        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, sev: Any, msg: str) -> None:
                log.log(levels.get(sev, logging.DEBUG), "TensorRT: %s", msg)

        _LOGGER = _Logger()
    return _LOGGER


class _BuildMonitor:
    """What a build reports and whether it should stop; no TensorRT here (`_progress_monitor` wraps it).

    Nothing may raise out of these methods: TensorRT calls them from C++ (noexcept), so a Python
    exception there would unwind through TensorRT. A failing callback, a callback that returns False
    and a signal (Ctrl-C, SIGTERM) are all recorded instead, `step_complete` then returns False
    (TensorRT cancels the build), and `build_plan` re-raises after TensorRT has returned.
    """

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.totals: dict[str, int] = {}
        self.error: BaseException | None = None  # the callback's exception, or KeyboardInterrupt when it said stop
        self.signum: int | None = None  # a signal that arrived during the build

    @property
    def stopped(self) -> bool:
        return self.error is not None or self.signum is not None

    def on_signal(self, signum: int, frame: Any = None) -> None:
        """The signal handler while TensorRT builds: ask the build to stop at its next step."""
        self.signum = self.signum or signum

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        self.totals[phase_name] = num_steps
        self._report(phase_name, 0, num_steps)

    def step_complete(self, phase_name: str, step: int) -> bool:
        total = self.totals.get(phase_name, 0)
        self._report(phase_name, min(step + 1, total) if total else step + 1, total)
        return not self.stopped

    def phase_finish(self, phase_name: str) -> None:
        total = self.totals.pop(phase_name, 0)
        self._report(phase_name, total, total)

    def _report(self, phase: str, step: int, total: int) -> None:
        if self.callback is None or self.stopped:
            return
        try:
            if self.callback(phase, step, total) is False:  # the CLI's progress line says False on Ctrl-C
                self.error = KeyboardInterrupt()
        except BaseException as exc:  # re-raised by build_plan once TensorRT has returned
            self.error = exc

    def reraise(self) -> None:
        """After the build: deliver what stopped it (the signal to its usual handler, or the error)."""
        if self.signum is not None:
            log.info("TensorRT build cancelled by signal %d", self.signum)
            signal.raise_signal(self.signum)  # the restored handler: KeyboardInterrupt, the CLI's SIGTERM exit
            raise KeyboardInterrupt  # a handler that did not raise: the build is still cancelled
        if self.error is not None:
            raise self.error


def _progress_monitor(trt: Any, state: _BuildMonitor) -> Any:
    """A trt.IProgressMonitor (TensorRT ≥ 10.0) forwarding to `state`."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            state.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return state.step_complete(phase_name, step)

        def phase_finish(self, phase_name: str) -> None:
            state.phase_finish(phase_name)

    return _Monitor()


_CANCEL_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_cancel(state: _BuildMonitor) -> Iterator[None]:
    """While TensorRT builds, Ctrl-C and SIGTERM only mark the build as cancelled (see _BuildMonitor).

    Python runs signal handlers in the main thread between bytecodes, i.e. inside the progress
    callbacks TensorRT makes from C++; a KeyboardInterrupt raised there would unwind through
    TensorRT. Off the main thread signals cannot be handled here (and do not arrive there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _CANCEL_SIGNALS}
    taken = [s for s, h in previous.items() if h is not None and h is not signal.SIG_IGN]
    for s in taken:
        signal.signal(s, state.on_signal)
    try:
        yield
    finally:
        for s in taken:
            signal.signal(s, previous[s])


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path, entry: ComponentEntry) -> tuple[Any, Any]:
    """(network, parser): the ONNX as a strongly typed network. Keep the parser alive until the build
    ends: it owns the weights the network refers to."""
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external data next to the file
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        hint = ""
        if entry.opset > 20 and _version_tuple(trt.__version__) < (10, 9):
            hint = f"; the file uses ONNX opset {entry.opset} and TensorRT {trt.__version__} parses up to opset 20: re-export with opset 20"
        raise BundleError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors[0] if errors else 'unknown error'}{hint}")
    check_io(
        entry,
        onnx_path,
        [network.get_input(i).name for i in range(network.num_inputs)],
        [network.get_output(i).name for i in range(network.num_outputs)],
    )
    return network, parser


def _add_profile(builder: Any, config: Any, spec: EngineSpec, onnx_path: Path) -> None:
    """The manifest's shapes as the one optimization profile; TensorRT's -1 (invalid) is a BundleError."""
    profile = builder.create_optimization_profile()
    for p in spec.profile:
        profile.set_shape(p.name, p.min, p.opt, p.max)
    if config.add_optimization_profile(profile) < 0:
        shapes = ", ".join(f"{p.name}:{'x'.join(map(str, p.opt))}" for p in spec.profile)
        raise BundleError(
            f"TensorRT rejects the optimization profile for {spec.label} ({shapes}): the manifest's input "
            f"shapes do not fit {onnx_path.name} (see the TensorRT error above); re-export the bundle"
        )


def _attach_timing_cache(config: Any, data: bytes) -> None:
    """The saved timing cache when TensorRT takes it, else a fresh one (a bad cache only costs build time)."""
    cache = config.create_timing_cache(data) if data else None
    if data and cache is None:
        log.warning("TensorRT could not read the saved timing cache (%d bytes); starting a fresh one", len(data))
    elif cache is not None and not config.set_timing_cache(cache, ignore_mismatch=False):
        log.info("the timing cache does not fit this GPU/TensorRT; starting a fresh one")
        cache = None
    if cache is not None:
        return
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, ignore_mismatch=False):
        log.warning("TensorRT could not create a timing cache; building without one")


def _timing_cache_bytes(config: Any) -> bytes:
    cache = config.get_timing_cache()
    return b"" if cache is None else bytes(cache.serialize())


def build_plan(
    onnx_path: Path,
    entry: ComponentEntry,
    spec: EngineSpec,
    timing_cache: bytes,
    progress: ProgressCallback | None = None,
    *,
    device: int = 0,
) -> tuple[bytes, bytes]:
    """Parse the ONNX into a strongly typed network and build it: (serialized plan, timing cache, or b"")."""
    trt = import_tensorrt()
    set_device(import_cudart(), device)
    logger = trt_logger()
    builder = trt.Builder(logger)
    network, parser = _parse(trt, builder, logger, onnx_path, entry)

    config = builder.create_builder_config()
    # No FP16/INT8/FP8 flags, ever: the network is strongly typed, precision comes from the ONNX.
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.settings.workspace_bytes)
    config.builder_optimization_level = spec.settings.optimization_level
    _add_profile(builder, config, spec, onnx_path)
    _attach_timing_cache(config, timing_cache)
    # Always a monitor, even without a progress display: it is how Ctrl-C reaches the builder.
    state = _BuildMonitor(progress)
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt, state)

    with _signals_cancel(state):
        plan = builder.build_serialized_network(network, config)
    del parser  # only now: it owned the weights the build read
    state.reraise()
    if plan is None:
        raise UserError(
            f"TensorRT could not build the engine for {spec.label} from {onnx_path.name}; rerun with --debug "
            "to see TensorRT's log (a workspace limit too small for every tactic is one cause: --workspace-mb)"
        )
    return bytes(plan), _timing_cache_bytes(config)


def deserialize(plan: bytes, path: Path, *, device: int = 0) -> _EngineHandle:
    """The ICudaEngine for a validated plan, kept together with the runtime that loaded it."""
    trt = import_tensorrt()
    set_device(import_cudart(), device)
    runtime = trt.Runtime(trt_logger())
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise UserError(f"TensorRT could not load {path} (see its error above); rebuild it: edgegen build --force")
    return _EngineHandle(engine, runtime)


@dataclass(frozen=True)
class _EngineHandle:
    """An engine and the runtime that deserialized it (kept alive together)."""

    engine: Any
    runtime: Any


# ---------------------------------------------------------------------------------------------
# Running


class _Buffer:
    """One tensor: a device allocation and a pinned host staging array of the same size.

    If the second allocation (or anything after the first) fails, the first is freed before the
    error propagates: a half-built buffer is never in a binding's list, so `close` could not free it.
    """

    def __init__(self, cudart: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.shape, self.dtype = shape, dtype
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.device = 0
        self._host_ptr = 0
        try:
            self.device = int(_cuda(cudart, cudart.cudaMalloc(self.nbytes), "cudaMalloc"))
            self._host_ptr = int(_cuda(cudart, cudart.cudaMallocHost(self.nbytes), "cudaMallocHost"))
            raw = (ctypes.c_uint8 * self.nbytes).from_address(self._host_ptr)
            self.host = np.frombuffer(raw, dtype=np.uint8).view(dtype).reshape(shape)
        except BaseException:
            self.free(cudart)
            raise

    def free(self, cudart: Any) -> None:
        """Free both allocations (idempotent; errors are ignored: this runs on error and shutdown paths)."""
        if self.device:
            cudart.cudaFree(self.device)
            self.device = 0
        if self._host_ptr:
            cudart.cudaFreeHost(self._host_ptr)
            self._host_ptr = 0


class TensorRTSession(RunThroughBinding):
    """One engine (shared, immutable): `run` for the Session protocol, `bind` for per-stream buffers."""

    def __init__(
        self, handle: _EngineHandle, entry: ComponentEntry, *, cuda_graph: bool = True, batch: int = 1, device: int = 0
    ) -> None:
        trt = import_tensorrt()
        engine = handle.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        check_io(entry, Path(entry.file), inputs, [n for n in names if n not in inputs])
        self.entry = entry
        self.handle = handle
        self.cuda_graph = cuda_graph
        self.device = device
        self.shapes = {t.name: t.concrete_shape(batch) for t in (*entry.inputs, *entry.outputs)}
        self.dtypes: dict[str, np.dtype] = {}
        for t in (*entry.inputs, *entry.outputs):
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(t.name)))
            if dtype != np.dtype(t.dtype):
                raise BundleError(f"{entry.file}: TensorRT sees {t.name} as {dtype}, the manifest says {t.dtype}; re-export the bundle")
            self.dtypes[t.name] = dtype
        self.bind().close()  # checks the output shapes at open, not at the first step
        self._init_run()

    def bind(self) -> TensorRTBinding:
        return TensorRTBinding(self)


class TensorRTBinding:
    """One stream's execution context, CUDA stream, buffers and captured graphs (DeviceBinding).

    Every call that touches the GPU first makes the session's device current: a binding may be
    made in one thread and used from another, and CUDA's current device is per thread.
    """

    def __init__(self, session: TensorRTSession) -> None:
        cudart = import_cudart()
        self._cudart = cudart
        self._session = session
        self._device = session.device
        entry = session.entry
        self._component = entry.component
        self._inputs, self._outputs = entry.input_names, entry.output_names
        self._buffers: dict[str, _Buffer] = {}
        self._graphs: dict[tuple[int, ...], Any] = {}  # buffer arrangement -> cudaGraphExec_t
        self._cuda_graph = session.cuda_graph
        self._stream = None
        set_device(cudart, self._device)
        self._context = session.handle.engine.create_execution_context()
        if self._context is None:
            raise UserError(f"TensorRT could not create an execution context for {self._component} (out of GPU memory?)")
        try:
            self._stream = _cuda(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
            self._stream_handle = _native(self._stream)
            for name in (*self._inputs, *self._outputs):
                self._buffers[name] = _Buffer(cudart, session.shapes[name], session.dtypes[name])
            self._set_shapes(session)
            self._bind_addresses()
        except BaseException:
            self.close()
            raise

    def write(self, name: str, value: np.ndarray) -> None:
        cudart = self._cudart
        buf = self._buffer(name, self._inputs, "input")
        set_device(cudart, self._device)
        np.copyto(buf.host, check_feed(name, value, buf.shape, buf.dtype))
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _cuda(cudart, cudart.cudaMemcpyAsync(buf.device, buf.host.ctypes.data, buf.nbytes, kind, self._stream), "cudaMemcpyAsync H2D")

    def step(self, read: Sequence[str] = ()) -> dict[str, np.ndarray]:
        cudart = self._cudart
        bufs = [self._buffer(n, self._outputs, "output") for n in read]
        set_device(cudart, self._device)
        self._execute()
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for buf in bufs:
            _cuda(cudart, cudart.cudaMemcpyAsync(buf.host.ctypes.data, buf.device, buf.nbytes, kind, self._stream), "cudaMemcpyAsync D2H")
        # One sync per step: it also makes the pinned staging buffers safe to overwrite by `write`.
        _cuda(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {name: buf.host.copy() for name, buf in zip(read, bufs, strict=True)}

    def carry(self, output: str, input: str) -> None:
        out, inp = self._buffer(output, self._outputs, "output"), self._buffer(input, self._inputs, "input")
        if (out.shape, out.dtype) != (inp.shape, inp.dtype):
            raise ValueError(f"cannot carry {output} {out.shape} into {input} {inp.shape}")
        self._buffers[output], self._buffers[input] = inp, out
        try:
            self._bind_addresses()
        except BaseException:
            self._buffers[output], self._buffers[input] = out, inp  # as before the call
            with contextlib.suppress(Exception):
                self._bind_addresses()
            raise

    def close(self) -> None:
        cudart = self._cudart
        with contextlib.suppress(Exception):  # best effort: the frees below must still run
            set_device(cudart, self._device)
        if self._stream is not None:
            cudart.cudaStreamSynchronize(self._stream)
        for graph in self._graphs.values():
            cudart.cudaGraphExecDestroy(graph)
        self._graphs = {}
        for buf in self._buffers.values():
            buf.free(cudart)
        self._buffers = {}
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: CUDA may already be gone
            self.close()

    # -- internals ------------------------------------------------------------------------------
    def _buffer(self, name: str, allowed: Sequence[str], what: str) -> _Buffer:
        if name not in allowed:
            raise KeyError(f"{self._component} has no {what} {name!r}; {what}s: {list(allowed)}")
        return self._buffers[name]

    def _set_shapes(self, session: TensorRTSession) -> None:
        entry = session.entry
        for name in self._inputs:
            if not self._context.set_input_shape(name, session.shapes[name]):
                raise BundleError(f"{entry.file}: TensorRT rejects shape {session.shapes[name]} for {name}; rebuild the engine (edgegen build --force)")
        for name in self._outputs:  # input shapes are set: TensorRT can report the output shapes
            got = tuple(self._context.get_tensor_shape(name))
            if got != session.shapes[name]:
                raise BundleError(f"{entry.file}: output {name} has shape {got}, the manifest says {session.shapes[name]}")

    def _bind_addresses(self) -> None:
        for name, buf in self._buffers.items():
            if not self._context.set_tensor_address(name, buf.device):  # False: TensorRT logged why
                raise RuntimeError(f"TensorRT rejected the device address of {name} for {self._component} (see the TensorRT error above)")

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream_handle):
            raise RuntimeError(f"TensorRT failed to enqueue {self._component} (see the TensorRT error above)")

    def _execute(self) -> None:
        """One inference on the stream: replay the graph for this buffer arrangement, capturing it once."""
        if not self._cuda_graph:
            self._enqueue()
            return
        arrangement = tuple(self._buffers[n].device for n in (*self._inputs, *self._outputs))
        graph = self._graphs.get(arrangement)
        if graph is not None:
            _cuda(self._cudart, self._cudart.cudaGraphLaunch(graph, self._stream), "cudaGraphLaunch")
            return
        # First time with these addresses: a plain enqueue (TensorRT does its deferred setup, and
        # it computes this call's results), then a capture of the same enqueue for later calls.
        self._enqueue()
        if (captured := self._capture()) is not None:
            self._graphs[arrangement] = captured

    def _capture(self) -> Any:
        """The enqueue as an instantiated CUDA graph, or None (one warning; uncaptured from then on).

        The captured graph is destroyed on every path: after instantiation (the executable graph
        does not need it), and when the capture or TensorRT's enqueue failed (a partial graph).
        """
        cudart = self._cudart
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _cuda(cudart, cudart.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")
        try:
            enqueued = bool(self._context.execute_async_v3(self._stream_handle))
        except BaseException:
            _err, partial = cudart.cudaStreamEndCapture(self._stream)  # the stream must leave capture mode
            if partial is not None:
                cudart.cudaGraphDestroy(partial)
            raise
        err, graph = cudart.cudaStreamEndCapture(self._stream)
        try:
            if not enqueued or err != cudart.cudaError_t.cudaSuccess:
                why = err if err != cudart.cudaError_t.cudaSuccess else "TensorRT's enqueue failed during capture"
                log.warning("%s: CUDA graph capture failed (%s); running without CUDA graphs", self._component, why)
                self._cuda_graph = False
                return None
            return _cuda(cudart, cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            if graph is not None:
                cudart.cudaGraphDestroy(graph)
