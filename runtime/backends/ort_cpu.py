"""ONNX Runtime on the CPU: the backend every install has.

Sessions are created once per component, sequential execution (the graphs are chains; parallel
branches buy nothing), every graph optimisation on. ORT's `InferenceSession.run` is thread-safe, so
one session serves every stream of a Generator.

Threads are measured, not assumed. The per-step graphs are small (a few milliseconds of ~200
kernels), so how fast they run depends on how ORT's intra-op threads wait between kernels, and on
whether the cores are free at all. Measured on the 2-core machine, default denoiser (ms per call):

| plan | quiet fp32 | quiet int8 | training running beside it, fp32 | int8 |
| --- | --- | --- | --- | --- |
| 1 thread | 2.73 | 2.32 | 3.19 | 2.30 |
| 2 threads, sleeping between kernels | 2.96 | 2.64 | 3.30 | 3.22 |
| 2 threads, spinning within a run | 2.13 | 2.01 | 7.27 | 6.82 |

No plan wins everywhere, so unless the caller fixes the thread count, `open` times the candidate
plans on the component itself (a few dozen interleaved calls, tens of milliseconds) and keeps the
every-core plan unless one thread is faster by more than 10% (`fastest`). Spinning threads stop at the end of every run (`session.force_spinning_stop`), so they
never burn the cores between calls, where the stream's consumer (video writer, player) needs them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
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

    def end_profiling(self) -> Path:
        """The profile file of a session opened with `enable_profiling` (tools/step_profile.py)."""
        return Path(self._session.end_profiling())  # type: ignore[attr-defined]


def open_ort_session(bundle: Bundle, component: str, precision: str, options: object, providers: list, backend: str = "") -> OrtSession:
    """Create an ORT session for one component and check its I/O names against the manifest.

    `backend` picks the component's variant file for that backend when the bundle has one.
    """
    import onnxruntime as ort

    entry = bundle.component(precision, component)
    path = bundle.file(entry.file_for(backend))
    state = ort.capi.onnxruntime_pybind11_state
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except (state.Fail, state.InvalidGraph, state.InvalidProtobuf, state.NoSuchFile, state.NotImplemented) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{path}: onnxruntime cannot load it ({first}); re-export the bundle") from None
    check_io(entry, path, [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    return OrtSession(session, entry, path)


ONCE_PER_STREAM = ("text_encoder",)


@dataclass(frozen=True)
class ThreadPlan:
    """How one session uses the CPU: intra-op threads, and whether they spin (busy-wait) within a run."""

    threads: int
    spin: bool = False

    def __str__(self) -> str:
        return f"{self.threads} thread{'s' if self.threads > 1 else ''}" + (", spinning within a run" if self.spin else "")

    def options(self) -> object:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        if self.spin:
            options.add_session_config_entry("session.force_spinning_stop", "1")  # never spin between runs
        return options


def candidate_plans(cores: int) -> tuple[ThreadPlan, ...]:
    """What `open` measures when the thread count is left to it: one thread, or every core spinning within a run."""
    return (ThreadPlan(1),) if cores <= 1 else (ThreadPlan(1), ThreadPlan(cores, spin=True))


def sample_feeds(entry: ComponentEntry, seed: int = 0) -> dict[str, np.ndarray]:
    """Batch-1 inputs of the right shapes and dtypes for timing (values do not change the work done)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in entry.inputs:
        shape = spec.concrete_shape(1)
        feeds[spec.name] = np.zeros(shape, spec.dtype) if spec.dtype.startswith("int") else rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def fastest(sessions: Mapping[ThreadPlan, OrtSession], feeds: Mapping[str, np.ndarray], rounds: int = 6, calls: int = 4,
            warmup: int = 4, margin: float = 0.1) -> ThreadPlan:
    """The plan with the lowest call time (first quartile: on a shared or virtual machine the slow
    calls are other tenants' noise), the candidates interleaved round by round so that a change in
    machine load hits them all alike. The plan with the most threads wins unless another is faster
    by more than `margin`: on a busy machine one thread is 2-3x faster (clear at once), on an idle
    one the spinning plan is 10-30% faster but a few dozen calls cannot always tell (measured: the
    int8 denoiser picked 1 thread in 2 of 3 bench runs, and then ran its steps 30% slower)."""
    for session in sessions.values():
        for _ in range(warmup):  # first calls allocate the arena and pack weights
            session.run(feeds)
    times: dict[ThreadPlan, list[float]] = {plan: [] for plan in sessions}
    for _ in range(rounds):
        for plan, session in sessions.items():
            session.run(feeds)  # warm: the first call after another plan's pays for waking this pool
            for _ in range(calls):
                start = time.perf_counter()
                session.run(feeds)
                times[plan].append(time.perf_counter() - start)
    quartile = {plan: float(np.percentile(t, 25)) for plan, t in times.items()}
    widest = max(quartile, key=lambda plan: plan.threads)
    best = min(quartile, key=quartile.__getitem__)
    return best if quartile[best] < (1.0 - margin) * quartile[widest] else widest


class OrtCpuBackend:
    name = "ort-cpu"
    # fp16 runs on the CPU only through inserted casts (slower than fp32); fp8 has no CPU kernels.
    precisions = ("int8", "fp32", "fp16")

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads  # None: measured per component when it is opened (`candidate_plans`)
        self.plans: dict[str, ThreadPlan] = {}  # component -> the plan its session runs with

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError:
            return False, 'onnxruntime is not installed; pip install "edgegen"'
        threads = f"{self.threads} threads" if self.threads else f"threads measured per component (up to {physical_cores()})"
        return True, f"onnxruntime {ort.__version__} on the CPU, {threads}"

    def open(self, bundle: Bundle, component: str, precision: str) -> OrtSession:
        def open_with(plan: ThreadPlan) -> OrtSession:
            return open_ort_session(bundle, component, precision, plan.options(), ["CPUExecutionProvider"], backend=self.name)

        if self.threads:
            plans: tuple[ThreadPlan, ...] = (ThreadPlan(self.threads),)
        elif component in ONCE_PER_STREAM:
            plans = (ThreadPlan(1),)  # a millisecond once per stream: not worth measuring
        else:
            plans = candidate_plans(physical_cores())
        sessions = {plan: open_with(plan) for plan in plans}
        plan = plans[0] if len(plans) == 1 else fastest(sessions, sample_feeds(next(iter(sessions.values())).entry))
        self.plans[component] = plan
        chosen = sessions[plan]
        if chosen.path.name != chosen.entry.file:
            log.info("%s %s: using %s, the bundle's %s variant", component, precision, chosen.path.name, self.name)
        log.debug("%s %s on ORT CPU: %s", component, precision, plan)
        return chosen
