"""Benchmarks: per-component latency measured inside the real streaming loop, side by side.

Every backend × precision combination runs in its own fresh Python process (spawned), so its peak
RSS is its own and one library's thread pools or allocators cannot touch another's. The figures
come from the runtime's hooks (`edgegen.runtime.generator.Hooks`): the stream a user gets, not a
separate toy loop.

Order of work, built for a noisy, shared machine:
1. load and warm up the combinations one at a time: bundle read + checksum verify, then each
   component's `Backend.open` (engine build or cache load for TensorRT, checkpoint load for
   torch), timed separately; `warmup` whole clips, discarded (first-call allocations, kernel
   selection, CUDA graph capture). GPU memory is sampled over this phase, one worker at a time.
2. the timed clips run in rounds: one whole clip per combination per round, the order rotating,
   so a change in the machine's load lands on every combination alike instead of on whichever
   happened to run then. The other workers wait idle (blocked on a pipe) meanwhile.
3. each worker summarizes: per-call latency of the text encoder, every denoising step (per step
   index and pooled), the commit pass, the VAE decode per chunk; the first-frame latency; the
   whole clip's wall time, and from it frames per second and the real-time factor (fps / the
   bundle's fps); peak RSS; process CPU time over wall time (how much of the machine it got).

Clocks: `time.perf_counter` around each call, read by the streaming loop itself. On the CPU a
call is synchronous. On a GPU every call returns only after the device work is done (TensorRT
bindings end each step with `cudaStreamSynchronize`; ORT's `run_with_iobinding` synchronizes the
CUDA execution provider; outputs read back are host arrays), so the clock never stops before the
GPU does. The figures are the latency the stream sees, host overhead included; device-only time
(CUDA events) would need a hook in each GPU binding and is not reported.

Baseline: the torch eager model at fp32 (`torch` backend) runs in the same benchmark, and every
combination reports its speed-up over it (baseline p50 / own p50, and the same for p95), so
numbers from a noisy, shared machine stay comparable within one run.

Torch-free: the torch backend is loaded by name in its worker process; this module never imports
it. The JSON report's schema is `REPORT_SCHEMA` (documented in BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import platform
import resource
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.bundle import PRECISIONS, Bundle, load_bundle
from edgegen.errors import UserError
from edgegen.runtime import backends
from edgegen.runtime.generator import (
    STREAM_COMPONENTS,
    ChunkEvent,
    Generator,
    Hooks,
    StepEvent,
    TextEvent,
    choose_precision,
)

log = logging.getLogger(__name__)

SCHEMA = "edgegen.bench"
SCHEMA_VERSION = 1
BASELINE = ("torch", "fp32")  # the reference every combination is compared with
DEFAULT_PROMPT = "a red circle moving right"
PERCENTILES = (50, 90, 95, 99)
# Per-call latencies (ms) in each result, in table order.
COMPONENTS = ("text_encoder", "denoise_step", "commit", "vae_decode", "first_frame", "generate")
# Process CPU time per call (ms); "generate" is a whole clip's.
CPU_COMPONENTS = ("text_encoder", "denoise_step", "commit", "vae_decode", "generate")
# Pause between two workers' turns: the previous one's thread pool stops spinning before the next starts.
SETTLE_S = 0.05
LIBRARIES = ("edgegen", "numpy", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "onnx", "pillow")


# ---------------------------------------------------------------------------------------------
# Statistics


def summarize(seconds: Sequence[float]) -> dict[str, Any] | None:
    """Latency statistics in milliseconds (n, mean, p50/p90/p95/p99, min, max); None if no samples."""
    if not seconds:
        return None
    ms = np.asarray(seconds, np.float64) * 1e3
    stats: dict[str, Any] = {"n": int(ms.size), "mean_ms": float(ms.mean())}
    for q, value in zip(PERCENTILES, np.percentile(ms, PERCENTILES), strict=True):
        stats[f"p{q}_ms"] = float(value)
    stats["min_ms"], stats["max_ms"] = float(ms.min()), float(ms.max())
    return stats


class Recorder(Hooks):
    """Collects every per-call latency the stream reports, across all the streams it is given to.

    Beside each call's wall-clock latency it keeps the process CPU time since the previous event:
    the call's CPU work summed over its threads (plus the loop's few microseconds of numpy). On a
    machine shared with other jobs the wall clock also counts waiting for a core; CPU time does not.
    """

    def __init__(self, steps: int) -> None:
        self.text: list[float] = []
        self.steps: list[list[float]] = [[] for _ in range(steps)]  # per step index
        self.commit: list[float] = []
        self.decode: list[float] = []
        self.first_frame: list[float] = []
        self.later_chunks: list[float] = []  # chunks ≥ 1: the steady streaming rate
        self.cpu: dict[str, list[float]] = {name: [] for name in CPU_COMPONENTS[:-1]}
        self._mark = time.process_time()

    def begin(self) -> None:
        """Call just before iterating a stream: its text encoder's CPU time counts from here."""
        self._mark = time.process_time()

    def _cpu(self, name: str) -> None:
        now = time.process_time()
        self.cpu[name].append(now - self._mark)
        self._mark = now

    def on_text(self, event: TextEvent) -> None:
        self.text.append(event.seconds)
        self._cpu("text_encoder")

    def on_step(self, event: StepEvent) -> None:
        if event.step == event.steps:  # the commit pass
            self.commit.append(event.seconds)
            self._cpu("commit")
        else:
            self.steps[event.step].append(event.seconds)
            self._cpu("denoise_step")

    def on_chunk(self, event: ChunkEvent) -> None:
        self.decode.append(event.decode_seconds)
        self._cpu("vae_decode")
        if event.chunk == 0:
            self.first_frame.append(event.elapsed)
        else:
            self.later_chunks.append(event.seconds)


# ---------------------------------------------------------------------------------------------
# Memory: host RSS (this process) and GPU memory (the device, sampled)


def _proc_status_bytes(field: str) -> int | None:
    """A `/proc/self/status` memory field (kB) in bytes; None where there is no /proc."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc; elsewhere the peak so far, the best the OS offers)."""
    rss = _proc_status_bytes("VmRSS")
    return rss if rss is not None else peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process.

    Linux: VmHWM, the high-water mark of this process image. Not ru_maxrss: it survives exec, so
    a spawned worker would inherit the RSS of the parent it was forked from.
    """
    hwm = _proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


class _Nvml:
    """The few NVML calls we need, through ctypes: no Python GPU package required."""

    class _Memory(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

    def __init__(self, index: int = 0) -> None:
        names = ["nvml.dll"] if sys.platform == "win32" else ["libnvidia-ml.so.1", "libnvidia-ml.so"]
        self.lib = None
        for name in names:
            with contextlib.suppress(OSError):
                self.lib = ctypes.CDLL(name)
                break
        self.handle = ctypes.c_void_p()
        if self.lib is None or self.lib.nvmlInit_v2() != 0 or self.lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(self.handle)) != 0:
            self.lib = None

    @property
    def ok(self) -> bool:
        return self.lib is not None

    def used_bytes(self) -> int:
        memory = self._Memory()
        assert self.lib is not None
        self.lib.nvmlDeviceGetMemoryInfo(self.handle, ctypes.byref(memory))
        return int(memory.used)

    def driver_version(self) -> str | None:
        if self.lib is None:
            return None
        text = ctypes.create_string_buffer(96)
        return text.value.decode() if self.lib.nvmlSystemGetDriverVersion(text, len(text)) == 0 else None


class GpuMemoryPeak:
    """Peak increase of GPU 0's used memory while this context is open (sampled every 10 ms).

    NVML reports the whole device (GPU 0 in NVML's order, which ignores CUDA_VISIBLE_DEVICES), so
    the increase over the level at the start is the footprint of what ran meanwhile — one
    worker loading and warming up — only if nothing else uses the GPU at the same time.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self._nvml = _Nvml()
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_bytes = self._nvml.used_bytes() if self._nvml.ok else 0
        self.peak_bytes = self.start_bytes

    def __enter__(self) -> GpuMemoryPeak:
        if self._nvml.ok:
            self._thread = threading.Thread(target=self._sample, name="gpu-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._nvml.used_bytes())
            self._stop.wait(self._interval)

    def result(self) -> dict[str, int] | None:
        if not self._nvml.ok:
            return None
        return {"device_used_start_bytes": self.start_bytes, "peak_increase_bytes": self.peak_bytes - self.start_bytes}


# ---------------------------------------------------------------------------------------------
# One combination per process (the worker side)


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs to benchmark one backend × precision (picklable)."""

    bundle: str
    backend: str
    precision: str
    steps: int
    frames: int
    prompt: str = DEFAULT_PROMPT
    seed: int = 0
    threads: int | None = None  # CPU threads for every library; None: each backend's own default


def use_threads(threads: int | None) -> None:
    """Make every CPU library in this (fresh) process use `threads` threads.

    OpenMP (torch's intra-op pool) reads OMP_NUM_THREADS when the library loads, so this runs
    before any backend is imported; ORT's pool is sized by the ort-cpu backend's `threads`.
    """
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)


def threads_in_use(impl: backends.Backend) -> int | None:
    """The backend's CPU thread count: the most any of its sessions uses (ort-cpu measures a plan per
    component), else its fixed `threads`, else torch's pool if loaded."""
    plans = getattr(impl, "plans", None)
    if plans:
        return max(plan.threads for plan in plans.values())
    threads = getattr(impl, "threads", None)
    if isinstance(threads, int):
        return threads
    torch = sys.modules.get("torch")  # already loaded by the torch backend; never imported here
    return int(torch.get_num_threads()) if torch is not None else None


def load_timed(spec: RunSpec) -> tuple[Generator, dict[str, Any]]:
    """A Generator built step by step (as `Generator.load` does) so each part of loading is timed."""
    start = time.perf_counter()
    bundle = load_bundle(spec.bundle)
    bundle_s = time.perf_counter() - start
    impl = backends.resolve(spec.backend)
    if spec.threads is not None and hasattr(impl, "threads"):
        impl.threads = spec.threads
    precision, _ = choose_precision(bundle, impl, spec.precision)
    sessions, open_s = {}, {}
    for name in STREAM_COMPONENTS:
        opened = time.perf_counter()
        sessions[name] = impl.open(bundle, name, precision)
        open_s[name] = time.perf_counter() - opened
    gen = Generator(bundle=bundle, backend=impl.name, precision=precision, tokenizer=bundle.tokenizer(), sessions=sessions)
    load = {"bundle_s": bundle_s, "sessions_s": open_s, "total_s": time.perf_counter() - start}
    plans = {name: str(plan) for name, plan in getattr(impl, "plans", {}).items()}
    return gen, {"load": load, "threads": threads_in_use(impl), "thread_plans": plans}


class Measurement:
    """A loaded combination and everything its timed clips recorded (lives in the worker)."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.rss_start = current_rss_bytes()
        self.gen, self.loaded = load_timed(spec)
        self.recorder = Recorder(spec.steps)
        self.clips: list[float] = []  # wall seconds per timed clip
        self.clips_cpu: list[float] = []  # process CPU seconds per timed clip
        self._clips_run = 0

    def clip(self, timed: bool) -> None:
        """Generate one whole clip; a timed one feeds the hooks' recorder and the clip clocks."""
        spec, seed = self.spec, self.spec.seed + self._clips_run
        self._clips_run += 1
        cpu, start = time.process_time(), time.perf_counter()
        stream = self.gen.stream(spec.prompt, seed=seed, frames=spec.frames, steps=spec.steps, hooks=self.recorder if timed else None)
        self.recorder.begin()
        for _ in stream:
            pass
        if timed:
            self.clips.append(time.perf_counter() - start)
            self.clips_cpu.append(time.process_time() - cpu)

    def result(self) -> dict[str, Any]:
        """The combination's figures (status ok): latencies, throughput, memory, load, CPU use."""
        rec, bundle, wall, cpu = self.recorder, self.gen.bundle, sum(self.clips), sum(self.clips_cpu)
        fps = self.spec.frames / float(np.median(self.clips))
        steady = summarize(rec.later_chunks)
        return {
            "backend": self.spec.backend,
            "precision": self.gen.precision,
            "status": "ok",
            "reason": None,
            **self.loaded,
            "latency": {
                "text_encoder": summarize(rec.text),
                "denoise_step": summarize([s for per_step in rec.steps for s in per_step]),
                "commit": summarize(rec.commit),
                "vae_decode": summarize(rec.decode),
                "first_frame": summarize(rec.first_frame),
                "generate": summarize(self.clips),
            },
            "denoise_steps": [summarize(per_step) for per_step in rec.steps],
            "cpu_latency": {**{name: summarize(rec.cpu[name]) for name in CPU_COMPONENTS[:-1]}, "generate": summarize(self.clips_cpu)},
            "throughput": {
                "fps": fps,
                "steady_fps": bundle.chunk_frames / (steady["p50_ms"] / 1e3) if steady else None,
                "realtime_factor": fps / bundle.fps,
            },
            "memory": {"rss_start_bytes": self.rss_start, "peak_rss_bytes": peak_rss_bytes(), "gpu": None},
            "cpu": {"wall_s": wall, "process_cpu_s": cpu, "utilization": cpu / wall if wall else None},
        }


def serve(spec: RunSpec, conn: Connection, log_level: int) -> None:
    """A worker process's main loop: load, say "ready", then obey "warmup" / "clip" / "finish".

    Every reply is (status, payload): ("ready", None), ("done", None), ("result", dict) or
    ("failed", reason). SIGINT is ignored here: the parent handles Ctrl-C and stops its workers;
    a closed pipe (the parent gone) ends the worker quietly.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(message)s", stream=sys.stderr, force=True)
    use_threads(spec.threads)
    try:
        measurement = Measurement(spec)
        conn.send(("ready", None))
        while (command := conn.recv()) != "finish":
            measurement.clip(timed=command == "clip")
            conn.send(("done", None))
        conn.send(("result", measurement.result()))
    except (EOFError, BrokenPipeError):
        pass
    except UserError as exc:  # unavailable here, bad bundle, missing weights: reported, not fatal
        _reply_failed(conn, str(exc))
    except Exception as exc:  # a library failing mid-run: this combination fails, the others go on
        log.debug("worker %s %s failed", spec.backend, spec.precision, exc_info=True)
        _reply_failed(conn, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
    finally:
        conn.close()


def _reply_failed(conn: Connection, reason: str) -> None:
    with contextlib.suppress(EOFError, BrokenPipeError):
        conn.send(("failed", reason))


# ---------------------------------------------------------------------------------------------
# One combination per process (the parent side)


class Worker:
    """The parent's handle on one combination's process (spawned: a fresh interpreter)."""

    def __init__(self, spec: RunSpec, log_level: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.spec = spec
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(spec, child, log_level), name=f"bench {spec.backend} {spec.precision}", daemon=True)
        self.process.start()
        child.close()
        self.failure: str | None = None

    def request(self, command: str | None) -> Any:
        """Send `command` (None: just wait for the first reply) and return the reply's payload.

        A failure reply or a dead process sets `failure` (the reason) and returns None.
        """
        if self.failure is not None:
            return None
        try:
            if command is not None:
                self.conn.send(command)
            status, payload = self.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self.process.join(5)
            status, payload = "failed", f"the worker process died (exit code {self.process.exitcode})"
        if status == "failed":
            self.failure = payload
            return None
        return payload


def stop_workers(workers: Sequence[Worker], grace_s: float = 2.0) -> None:
    """Close every worker's pipe; a worker still busy after `grace_s` in all (Ctrl-C, an error)
    is terminated. After "finish" they have already ended by themselves."""
    for worker in workers:
        worker.conn.close()
    deadline = time.monotonic() + grace_s
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join()


# ---------------------------------------------------------------------------------------------
# The plan: which combinations run, which are skipped and why


@dataclass(frozen=True)
class Combination:
    backend: str
    precision: str
    skip: str | None = None  # why it cannot run here; None = it runs


def plan(bundle: Bundle, backend_names: Sequence[str] | None, precisions: Sequence[str] | None) -> list[Combination]:
    """Every requested backend × precision (default: all registered × all the bundle carries).

    The baseline (torch fp32) always comes first. Combinations that cannot run are kept with the
    reason: the backend's own `available()` message, or the precision the bundle or backend lacks.
    """
    names = list(backend_names) if backend_names else list(backends.names())
    wanted = list(precisions) if precisions else list(bundle.precisions)
    for name in names:
        if name not in backends.names():
            raise UserError(f"unknown backend {name!r}; valid --backend: {', '.join(backends.names())}")
    for precision in wanted:
        if precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r}; valid --precision: {', '.join(PRECISIONS)}")
    pairs = [BASELINE] + [(n, p) for n in names for p in wanted if (n, p) != BASELINE]
    statuses = {name: backends.status(name) for name in dict.fromkeys(n for n, _ in pairs)}
    return [Combination(n, p, _skip_reason(bundle, n, p, statuses[n])) for n, p in pairs]


def _skip_reason(bundle: Bundle, name: str, precision: str, status: tuple[bool, str]) -> str | None:
    ok, reason = status
    if not ok:
        return reason
    if precision not in bundle.precisions:
        return f"the bundle has no {precision} precision (it has {', '.join(bundle.precisions)})"
    runs = backends.create(name).precisions
    if precision not in runs:
        return f"{name} does not run {precision} (it runs {', '.join(runs)})"
    return None


# ---------------------------------------------------------------------------------------------
# The whole benchmark


@dataclass
class Settings:
    """What `edgegen bench` was asked for."""

    bundle: str
    backends: Sequence[str] | None = None
    precisions: Sequence[str] | None = None
    steps: int | None = None
    frames: int = 64
    repeat: int = 5
    warmup: int = 1
    prompt: str = DEFAULT_PROMPT
    seed: int = 0
    threads: int | None = None
    progress: bool = False
    command: str = ""


def run_benchmark(settings: Settings) -> dict[str, Any]:
    """Plan, measure every runnable combination (each in its own process), add speed-ups: the report."""
    _check_counts(settings)
    bundle = load_bundle(settings.bundle)
    steps = settings.steps if settings.steps is not None else bundle.default_steps
    if steps not in bundle.steps_available:
        raise UserError(f"--steps {steps} is not supported by this bundle; valid: {', '.join(map(str, bundle.steps_available))}")
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    machine = describe_machine()  # before the runs: the load average says how busy the machine was
    combos = plan(bundle, settings.backends, settings.precisions)
    for combo in combos:
        if combo.skip is not None:
            log.debug("%s %s: skipped (%s)", combo.backend, combo.precision, combo.skip)
    specs = [RunSpec(str(bundle.path), c.backend, c.precision, steps, settings.frames, settings.prompt, settings.seed, settings.threads)
             for c in combos if c.skip is None]
    measured = iter(measure_interleaved(specs, settings.warmup, settings.repeat, settings.progress))
    results = [next(measured) if c.skip is None else
               {"backend": c.backend, "precision": c.precision, "status": "skipped", "reason": c.skip} for c in combos]
    add_speedups(results)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": created,
        "command": settings.command,
        "machine": machine,
        "bundle": describe_bundle(bundle),
        "settings": {"steps": steps, "frames": settings.frames, "repeat": settings.repeat, "warmup": settings.warmup,
                     "prompt": settings.prompt, "seed": settings.seed, "threads": settings.threads},
        "baseline": {"backend": BASELINE[0], "precision": BASELINE[1]},
        "results": results,
    }


def measure_interleaved(specs: Sequence[RunSpec], warmup: int, repeat: int, progress: bool = False) -> list[dict[str, Any]]:
    """One result per spec, in order. Workers load and warm up one at a time (so load time and GPU
    memory are each one's own); then the timed clips run in rounds, one clip per combination per
    round, the order rotating, so a change in the machine's load hits every combination alike.

    Workers are `multiprocessing` spawns: as with any such code, a script calling this must guard
    its entry point with `if __name__ == "__main__":` (and cannot be fed on stdin)."""
    from tqdm import tqdm

    level = logging.getLogger().getEffectiveLevel()
    workers: list[Worker] = []
    gpu: list[dict[str, int] | None] = []
    with tqdm(total=len(specs) * (1 + warmup + repeat), unit="clip", disable=not progress, file=sys.stderr) as bar:
        try:
            for spec in specs:
                bar.set_description(f"load {spec.backend} {spec.precision}")
                with GpuMemoryPeak() as peak:
                    workers.append(Worker(spec, level))
                    for command in [None] + ["warmup"] * warmup:
                        workers[-1].request(command)
                        bar.update()
                gpu.append(peak.result())
            for turn in range(repeat):
                for worker in workers[turn % len(workers):] + workers[: turn % len(workers)]:
                    bar.set_description(f"{worker.spec.backend} {worker.spec.precision}")
                    worker.request("clip")
                    bar.update()
                    time.sleep(SETTLE_S)
            return [_finish(worker, gpu_result) for worker, gpu_result in zip(workers, gpu, strict=True)]
        finally:
            stop_workers(workers)


def _finish(worker: Worker, gpu: dict[str, int] | None) -> dict[str, Any]:
    result = worker.request("finish")
    if worker.failure is not None:
        log.debug("%s %s failed: %s", worker.spec.backend, worker.spec.precision, worker.failure)
        return {"backend": worker.spec.backend, "precision": worker.spec.precision, "status": "failed", "reason": worker.failure}
    result["memory"]["gpu"] = gpu
    return result


def _check_counts(settings: Settings) -> None:
    counts = [("--frames", settings.frames, 1), ("--repeat", settings.repeat, 1), ("--warmup", settings.warmup, 0)]
    if settings.threads is not None:
        counts.append(("--threads", settings.threads, 1))
    for flag, value, low in counts:
        if value < low:
            raise UserError(f"{flag} must be at least {low}, not {value}")


def add_speedups(results: list[dict[str, Any]]) -> None:
    """Give every ok result its speed-ups over the torch fp32 eager baseline (> 1: faster).

    `speedup[component]` = baseline / own wall-clock latency, for p50 and p95; `cpu_speedup`
    = baseline / own process CPU time per call (p50). All None when the baseline did not run. On an
    oversubscribed machine the wall clock is partly waiting for a core and CPU time is the work,
    so the two ratios side by side say how much of a difference is which.
    """
    base = next((r for r in results if (r["backend"], r["precision"]) == BASELINE and r["status"] == "ok"), None)
    for result in results:
        if result["status"] != "ok":
            continue
        result["speedup"] = {name: _ratio(base, result, "latency", name) for name in COMPONENTS}
        result["cpu_speedup"] = {name: (_ratio(base, result, "cpu_latency", name) or {}).get("p50") for name in CPU_COMPONENTS}


def _ratio(base: Mapping[str, Any] | None, result: Mapping[str, Any], section: str, name: str) -> dict[str, float] | None:
    if base is None or base[section][name] is None or result[section][name] is None:
        return None
    ref, own = base[section][name], result[section][name]
    if own["p50_ms"] <= 0 or own["p95_ms"] <= 0:  # a call too quick for the CPU clock's resolution
        return None
    return {q: ref[f"{q}_ms"] / own[f"{q}_ms"] for q in ("p50", "p95")}


# ---------------------------------------------------------------------------------------------
# Describing the machine and the bundle


def describe_machine() -> dict[str, Any]:
    """CPU, memory, GPU, OS and library versions: what a reader needs to compare figures."""
    from edgegen.runtime.backends.device import probe_gpu
    from edgegen.runtime.backends.ort_cpu import physical_cores

    gpu, why = probe_gpu()
    return {
        "cpu": {
            "model": _cpu_model(),
            "logical_cores": os.cpu_count(),
            "physical_cores": physical_cores(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "memory_bytes": _meminfo_total(),
        "gpu": None if gpu is None else {
            "name": gpu.name,
            "compute_capability": gpu.sm,
            "memory_bytes": gpu.total_memory,
            "cuda_driver_api": f"{gpu.driver_version // 1000}.{gpu.driver_version % 1000 // 10}",
            "driver": _Nvml().driver_version(),
        },
        "gpu_absent_reason": why or None,
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")},
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()


def _meminfo_total() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def describe_bundle(bundle: Bundle) -> dict[str, Any]:
    return {
        "path": str(bundle.path),
        "model": bundle.model_name,
        "digest": bundle.digest,
        "video": dict(bundle.video),
        "precisions": list(bundle.precisions),
    }


# ---------------------------------------------------------------------------------------------
# The JSON report's schema (JSON Schema draft 2020-12; documented in BENCHMARKS.md)

_NUM = {"type": "number"}
_STATS = {
    "type": ["object", "null"],
    "required": ["n", "mean_ms", *(f"p{q}_ms" for q in PERCENTILES), "min_ms", "max_ms"],
    "properties": {"n": {"type": "integer", "minimum": 1}, **{k: _NUM for k in ("mean_ms", "min_ms", "max_ms", *(f"p{q}_ms" for q in PERCENTILES))}},
}
_RATIO = {"type": ["object", "null"], "required": ["p50", "p95"], "properties": {"p50": _NUM, "p95": _NUM}}
_OK_RESULT = {
    "required": ["latency", "denoise_steps", "throughput", "memory", "load", "threads", "cpu", "cpu_latency", "speedup", "cpu_speedup"],
    "properties": {
        "latency": {"type": "object", "required": list(COMPONENTS), "properties": {c: _STATS for c in COMPONENTS}},
        "denoise_steps": {"type": "array", "minItems": 1, "items": _STATS},
        "throughput": {
            "type": "object",
            "required": ["fps", "steady_fps", "realtime_factor"],
            "properties": {"fps": _NUM, "steady_fps": {"type": ["number", "null"]}, "realtime_factor": _NUM},
        },
        "memory": {
            "type": "object",
            "required": ["rss_start_bytes", "peak_rss_bytes", "gpu"],
            "properties": {
                "rss_start_bytes": {"type": "integer"},
                "peak_rss_bytes": {"type": "integer"},
                "gpu": {"type": ["object", "null"], "required": ["device_used_start_bytes", "peak_increase_bytes"]},
            },
        },
        "load": {
            "type": "object",
            "required": ["bundle_s", "sessions_s", "total_s"],
            "properties": {"sessions_s": {"type": "object", "required": list(STREAM_COMPONENTS)}},
        },
        "threads": {"type": ["integer", "null"]},
        "thread_plans": {"type": "object", "additionalProperties": {"type": "string"}},
        "cpu": {
            "type": "object",
            "required": ["wall_s", "process_cpu_s", "utilization"],
            "properties": {"wall_s": _NUM, "process_cpu_s": _NUM, "utilization": {"type": ["number", "null"]}},
        },
        "speedup": {"type": "object", "required": list(COMPONENTS), "properties": {c: _RATIO for c in COMPONENTS}},
        "cpu_latency": {"type": "object", "required": list(CPU_COMPONENTS), "properties": {c: _STATS for c in CPU_COMPONENTS}},
        "cpu_speedup": {"type": "object", "required": list(CPU_COMPONENTS), "properties": {c: {"type": ["number", "null"]} for c in CPU_COMPONENTS}},
    },
}
REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "edgegen bench report",
    "type": "object",
    "required": ["schema", "schema_version", "created", "command", "machine", "bundle", "settings", "baseline", "results"],
    "properties": {
        "schema": {"const": SCHEMA},
        "schema_version": {"const": SCHEMA_VERSION},
        "machine": {"type": "object", "required": ["cpu", "memory_bytes", "gpu", "os", "python", "libraries", "env"]},
        "bundle": {"type": "object", "required": ["path", "model", "digest", "video", "precisions"]},
        "settings": {"type": "object", "required": ["steps", "frames", "repeat", "warmup", "prompt", "seed", "threads"]},
        "baseline": {"type": "object", "required": ["backend", "precision"]},
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["backend", "precision", "status", "reason"],
                "properties": {"status": {"enum": ["ok", "skipped", "failed"]}},
                "if": {"properties": {"status": {"const": "ok"}}},
                "then": _OK_RESULT,
                "else": {"properties": {"reason": {"type": "string"}}},
            },
        },
    },
}

