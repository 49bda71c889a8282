"""Checks of a quantized precision against fp32: component error, clips, judge, latency.

Everything runs in one process on ORT CPU so the fp32/quantized numbers are comparable:
- component error on held-out captured inputs (prompts the calibration never saw);
- end-to-end: the same held-out prompts and seeds through the streaming loop at both precisions,
  mean PSNR of the quantized clips against the fp32 clips, and the judge's per-attribute accuracy
  for both;
- per-step latency of the denoiser (and the decoder per chunk): warm-up, then interleaved rounds
  (fp32, quantized, fp32, ...) so drift and noisy neighbours hit both alike; medians reported.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.bundle import Bundle
from edgegen.calibration.report import VARIANT
from edgegen.calibration.sensitivity import output_error, run_all

log = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]


# ---------------------------------------------------------------------------------------------
# Sessions


class OrtFileSession:
    """One ONNX file on ORT CPU behind the runtime's Session protocol.

    `simulate`: the basic optimisation level, which runs FP8 Q/DQ as simulated (fake) quantization.
    At ORT_ENABLE_ALL, onnxruntime 1.31 rewrites float8 DQ→MatMul into MatMulIntegerToFloat and
    then rejects its own graph. `threads=1` runs on the calling thread, so `time.thread_time()`
    measures the session's own CPU time, immune to other processes on the machine. `threads` > 0
    takes the runtime's settings for that many threads (`ThreadPlan`; `spin`: busy-wait within a
    run, never between runs); 0 leaves ORT's defaults."""

    def __init__(self, path: str | Path, output_names: Sequence[str], *, simulate: bool = False, threads: int = 0,
                 spin: bool = False) -> None:
        import onnxruntime as ort

        from edgegen.runtime.backends.ort_cpu import ThreadPlan

        options = ThreadPlan(threads, spin).options() if threads else ort.SessionOptions()
        options.log_severity_level = 3
        if simulate:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._names = list(output_names)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._names, self._session.run(self._names, dict(feeds)), strict=True))



def component_file(bundle: Bundle, precision: str, component: str, *, variant: bool = False) -> Path:
    """The component's file at `precision`; with `variant`, its ORT-CPU-only file when it has one."""
    entry = bundle.component(precision, component)
    spec = bundle.precision_info(precision)["components"][component]
    if variant and VARIANT in spec.get("variants", {}):
        return bundle.file(spec["variants"][VARIANT]["file"])
    return bundle.file(entry.file)


def sessions_for(bundle: Bundle, precision: str, components: Sequence[str], *, variant: bool = False, threads: int = 0) -> dict[str, Any]:
    entries = {c: bundle.component(precision, c) for c in components}
    return {
        c: OrtFileSession(component_file(bundle, precision, c, variant=variant), e.output_names,
                          simulate=precision == "fp8", threads=threads)
        for c, e in entries.items()
    }


def generator(bundle: Bundle, precision: str, *, variant: bool = False, threads: int = 0) -> Any:
    """A Generator on ORT CPU running exactly the files asked for: the runtime's own loop, with
    sessions on the portable files, or (`variant`) on the ORT-CPU-only files where the bundle has
    them; fp8 runs simulated. fp32 goes through the runtime's own backend."""
    from edgegen.runtime.generator import STREAM_COMPONENTS, Generator

    if precision == "fp32":
        return Generator.load(bundle, backend="ort-cpu", precision="fp32")
    sessions = sessions_for(bundle, precision, STREAM_COMPONENTS, variant=variant, threads=threads)
    label = "ort-cpu (simulated fp8)" if precision == "fp8" else f"ort-cpu ({'ort-cpu variant' if variant else 'portable'} files)"
    return Generator(bundle=bundle, backend=label, precision=precision, tokenizer=bundle.tokenizer(), sessions=sessions)


def ort_session_for(path: str | Path, *, simulate: bool = False) -> Any:
    """A raw ORT CPU session: full optimisation, or the basic level for simulated fp8."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if simulate:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# Component error


def component_error(reference_session: Any, session: Any, feeds: Sequence[Feeds], output_names: Sequence[str]) -> dict[str, float]:
    """Relative RMSE per output of `session` against `reference_session` on `feeds`."""

    def outputs(s: Any) -> list[list[np.ndarray]]:
        if hasattr(s, "get_outputs"):
            return run_all(s, feeds)
        return [[s.run(f)[n] for n in output_names] for f in feeds]

    return output_error(outputs(session), outputs(reference_session), output_names)


# ---------------------------------------------------------------------------------------------
# End to end


def psnr(clip: np.ndarray, reference: np.ndarray) -> float:
    """PSNR (dB) of uint8 frames against a reference; inf when identical."""
    mse = float(np.mean((clip.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _compare() -> Callable[[np.ndarray, np.ndarray], float]:
    """edgegen.judge's PSNR when it exists (one definition project-wide), else ours."""
    try:
        from edgegen import judge
    except ImportError:
        return psnr
    fn = getattr(judge, "psnr", None)
    if callable(fn):
        return fn
    compare = getattr(judge, "compare", None)
    if callable(compare):
        def via_compare(clip: np.ndarray, reference: np.ndarray) -> float:
            result = compare(clip, reference)
            value = result.get("psnr") if isinstance(result, Mapping) else getattr(result, "psnr", result)
            return float(value)
        return via_compare
    return psnr


def clips(gen: Any, prompts: Sequence[str], seeds: Sequence[int], frames: int, steps: int | None) -> list[np.ndarray]:
    return [gen.generate(p, seed=s, frames=frames, steps=steps) for p, s in zip(prompts, seeds, strict=True)]


def judge_accuracy(prompts: Sequence[str], videos: Sequence[np.ndarray]) -> dict[str, float] | None:
    """The judge's accuracy (percent) per attribute over these clips, plus object count and the
    whole-prompt pass rate; None when this install has no judge."""
    try:
        from edgegen import judge as judge_module
        from edgegen.world import parse_prompt
    except ImportError as exc:
        log.warning("no judge (%s): judge accuracy not measured", exc)
        return None
    judge_fn = getattr(judge_module, "judge", None)
    if not callable(judge_fn):
        log.warning("edgegen.judge has no judge(video, scene): judge accuracy not measured")
        return None
    attributes = tuple(getattr(judge_module, "ATTRIBUTES", ("colour", "shape", "size", "motion")))
    right: dict[str, int] = {}
    seen: dict[str, int] = {}
    for prompt, video in zip(prompts, videos, strict=True):
        result = judge_fn(video, parse_prompt(prompt))
        marks = {a: result.attribute(a) for a in attributes}
        marks["count"] = bool(result.count)
        marks["all"] = bool(result.passed)
        for name, ok in marks.items():
            if ok is None:  # the prompt leaves it unspecified
                continue
            seen[name] = seen.get(name, 0) + 1
            right[name] = right.get(name, 0) + int(bool(ok))
    return {name: 100.0 * right[name] / seen[name] for name in seen}


def end_to_end(
    bundle: Bundle, precision: str, prompts: Sequence[str], seeds: Sequence[int], frames: int, steps: int | None,
    *, variant: bool = False, reference: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Clips at fp32 and `precision` for the same prompts/seeds: PSNR and judge accuracy of both."""
    compare = _compare()
    if reference is None:
        reference = clips(generator(bundle, "fp32"), prompts, seeds, frames, steps)
    quantized = clips(generator(bundle, precision, variant=variant), prompts, seeds, frames, steps)
    values = [compare(a, b) for a, b in zip(quantized, reference, strict=True)]
    finite = [v for v in values if math.isfinite(v)]
    result: dict[str, Any] = {
        "prompts": list(prompts),
        "seeds": list(seeds),
        "frames": frames,
        "steps": steps or bundle.default_steps,
        "psnr_db": [round(v, 3) if math.isfinite(v) else "inf" for v in values],
        "mean_psnr_db": float(np.mean(finite)) if finite else math.inf,
        "min_psnr_db": float(min(finite)) if finite else math.inf,
    }
    fp32_acc = judge_accuracy(prompts, reference)
    q_acc = judge_accuracy(prompts, quantized)
    if fp32_acc is None or q_acc is None:
        result["judge"] = None
    else:
        drop = {k: fp32_acc[k] - q_acc.get(k, 0.0) for k in fp32_acc}
        result["judge"] = {"fp32": fp32_acc, precision: q_acc, "drop_points": drop, "max_drop_points": max(drop.values(), default=0.0)}
    return result


# ---------------------------------------------------------------------------------------------
# Latency


def interleaved_latency(
    sessions: Mapping[str, Any], feeds: Sequence[Feeds], *, warmup: int = 10, rounds: int = 15, per_round: int = 10,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Median seconds per call of each session, measured in interleaved rounds on the same feeds.

    Returns per session the median of the per-round medians, and for every session after the
    first the median over rounds of (first / this) — the speedup, robust to machine-wide drift.
    `clock=time.thread_time` with single-threaded sessions measures CPU time instead of wall time."""
    names = list(sessions)
    for name in names:
        for i in range(warmup):
            sessions[name].run(feeds[i % len(feeds)])
    per: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for name in names:
            times = []
            for i in range(per_round):
                feed = feeds[i % len(feeds)]
                start = clock()
                sessions[name].run(feed)
                times.append(clock() - start)
            per[name].append(statistics.median(times))
    base = names[0]
    result: dict[str, Any] = {"rounds": rounds, "calls_per_round": per_round, "warmup": warmup, "clock": clock.__name__}
    for name in names:
        result[name] = {"median_ms": 1e3 * statistics.median(per[name]), "min_round_ms": 1e3 * min(per[name])}
        if name != base:
            ratios = [a / b for a, b in zip(per[base], per[name], strict=True)]
            result[name]["speedup_vs_" + base] = statistics.median(ratios)
    return result


GEMM_KERNELS = frozenset({
    "MatMul", "Gemm", "FusedMatMul", "Conv", "ConvTranspose", "FusedConv", "FusedGemm",
    "MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul", "QLinearConv", "ConvInteger", "QGemm",
})


def gemm_share(path: str | Path, feeds: Sequence[Feeds], runs: int = 100) -> dict[str, Any]:
    """How much of one call ORT CPU spends in GEMM/conv kernels (1 thread, per-node medians).

    The rest (elementwise, layout, softmax, concat/slice of the KV cache) is untouched by int8, so
    1 / (1 - share) bounds the speedup of any GEMM-only quantization (Amdahl)."""
    import json
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgegen-prof-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "prof")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for i in range(runs):
            session.run(None, dict(feeds[i % len(feeds)]))
        events = json.loads(Path(session.end_profiling()).read_text())
    per: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per.setdefault(e["name"], []).append(float(e["dur"]))
            ops[e["name"]] = e["args"]["op_name"]
    by_op: dict[str, float] = {}
    for name, durations in per.items():
        by_op[ops[name]] = by_op.get(ops[name], 0.0) + statistics.median(durations)
    total = sum(by_op.values())
    gemm = sum(v for k, v in by_op.items() if k in GEMM_KERNELS)
    share = gemm / total if total else 0.0
    top = dict(sorted(((k, round(v, 1)) for k, v in by_op.items()), key=lambda kv: -kv[1])[:10])
    return {"total_us": total, "gemm_us": gemm, "gemm_share": share,
            "max_gemm_only_speedup": (1.0 / (1.0 - share)) if share < 1 else math.inf, "top_ops_us": top}
