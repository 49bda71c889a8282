"""ONNX Runtime on the CPU: the backend every install has.

Sessions are created once per component with one intra-op thread per physical core (hyper-threads
share the FMA units, so more threads only add contention), no spinning between runs, sequential
execution (the graphs are chains; parallel branches buy nothing) and every graph optimisation on. ORT's `InferenceSession.run`
is thread-safe, so one session serves every stream of a Generator.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgegen.bundle import Bundle, ComponentEntry, check_io
from edgegen.errors import BundleError

log = logging.getLogger(__name__)


def physical_cores() -> int:
    """Physical cores this process may use (Linux: distinct (package, core) pairs in its affinity set)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        for cpu in allowed:
            topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
    except OSError:  # no sysfs (macOS, Windows, some sandboxes): count logical CPUs
        return max(1, len(allowed))
    return max(1, len(cores))


class OrtSession:
    """One ONNX Runtime session plus the manifest entry it was checked against."""

    def __init__(self, session: object, entry: ComponentEntry, path: Path) -> None:
        self._session = session
        self.entry = entry
        self.path = path
        self._outputs = list(entry.output_names)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._outputs, dict(feeds))  # type: ignore[attr-defined]
        return dict(zip(self._outputs, values, strict=True))


def open_ort_session(bundle: Bundle, component: str, precision: str, options: object, providers: list, backend: str = "") -> OrtSession:
    """Create an ORT session for one component and check its I/O names against the manifest.

    `backend` picks the component's variant file for that backend when the bundle has one.
    """
    import onnxruntime as ort

    entry = bundle.component(precision, component)
    path = bundle.file(entry.file_for(backend))
    if path.name != entry.file:
        log.info("%s %s: using %s, the bundle's %s variant", component, precision, path.name, backend)
    state = ort.capi.onnxruntime_pybind11_state
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except (state.Fail, state.InvalidGraph, state.InvalidProtobuf, state.NoSuchFile, state.NotImplemented) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{path}: onnxruntime cannot load it ({first}); re-export the bundle") from None
    check_io(entry, path, [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    return OrtSession(session, entry, path)


class OrtCpuBackend:
    name = "ort-cpu"
    # fp16 runs on the CPU only through inserted casts (slower than fp32); fp8 has no CPU kernels.
    precisions = ("int8", "fp32", "fp16")

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or physical_cores()

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError:
            return False, 'onnxruntime is not installed; pip install "edgegen"'
        return True, f"onnxruntime {ort.__version__} on the CPU, {self.threads} threads"

    def session_options(self) -> object:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
        # No busy-waiting between runs: the stream's consumer (video encoder, player) and the other
        # sessions need those cores. Measured on the default denoiser, 2 cores under load:
        # 4.0 ms median with spinning off, 12.1 ms with it on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def open(self, bundle: Bundle, component: str, precision: str) -> OrtSession:
        return open_ort_session(bundle, component, precision, self.session_options(), ["CPUExecutionProvider"], backend=self.name)
