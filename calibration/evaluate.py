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
from edgegen.calibration.sensitivity import output_error, run_all

log = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]


# ---------------------------------------------------------------------------------------------
# Sessions


class _OrtSimSession:
    """ORT CPU at the basic optimisation level: runs FP8 Q/DQ as simulated (fake) quantization.

    At ORT_ENABLE_ALL, onnxruntime 1.31 rewrites float8 DQ→MatMul into MatMulIntegerToFloat and
    then rejects its own graph; the basic level keeps plain Q/DQ, which the CPU kernels run."""

    def __init__(self, path: str, output_names: Sequence[str]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.log_severity_level = 3
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._names = list(output_names)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._names, self._session.run(self._names, dict(feeds)), strict=True))


def generator(bundle: Bundle, precision: str) -> Any:
    """A Generator on ORT CPU; fp8 (no CPU kernels) runs simulated, see `_OrtSimSession`."""
    from edgegen.runtime.generator import STREAM_COMPONENTS, Generator

    if precision != "fp8":
        return Generator.load(bundle, backend="ort-cpu", precision=precision)
    sessions = {}
    for name in STREAM_COMPONENTS:
        entry = bundle.component(precision, name)
        sessions[name] = _OrtSimSession(str(bundle.file(entry.file)), entry.output_names)
    return Generator(bundle=bundle, backend="ort-cpu (simulated fp8)", precision=precision, tokenizer=bundle.tokenizer(), sessions=sessions)


def ort_session_for(path: str | Path, *, simulate: bool = False) -> Any:
    """A raw ORT CPU session: full optimisation, or the basic level for simulated fp8."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if simulate:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def component_sessions(bundle: Bundle, precision: str, components: Sequence[str]) -> dict[str, Any]:
    gen = generator(bundle, precision)
    return {name: gen.sessions[name] for name in components if name in gen.sessions}


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


def judge_accuracy(prompts: Sequence[str], videos: Sequence[np.ndarray], fps: int) -> dict[str, float] | None:
    """Per-attribute accuracy (percent) of the judge on these clips; None if no judge is installed."""
    try:
        from edgegen import judge
    except ImportError:
        return None
    for name in ("attribute_accuracy", "accuracy"):
        fn = getattr(judge, name, None)
        if callable(fn):
            result = fn(list(prompts), list(videos))
            return {k: float(v) for k, v in dict(result).items()}
    return None


def end_to_end(
    bundle: Bundle, precision: str, prompts: Sequence[str], seeds: Sequence[int], frames: int, steps: int | None
) -> dict[str, Any]:
    """Clips at fp32 and `precision` for the same prompts/seeds: PSNR and judge accuracy of both."""
    compare = _compare()
    reference = clips(generator(bundle, "fp32"), prompts, seeds, frames, steps)
    quantized = clips(generator(bundle, precision), prompts, seeds, frames, steps)
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
    fp32_acc = judge_accuracy(prompts, reference, bundle.fps)
    q_acc = judge_accuracy(prompts, quantized, bundle.fps)
    if fp32_acc is None or q_acc is None:
        result["judge"] = None
    else:
        drop = {k: fp32_acc[k] - q_acc.get(k, 0.0) for k in fp32_acc}
        result["judge"] = {"fp32": fp32_acc, precision: q_acc, "drop_points": drop, "max_drop_points": max(drop.values(), default=0.0)}
    return result


# ---------------------------------------------------------------------------------------------
# Latency


def interleaved_latency(
    sessions: Mapping[str, Any], feeds: Sequence[Feeds], *, warmup: int = 10, rounds: int = 15, per_round: int = 10
) -> dict[str, Any]:
    """Median seconds per call of each session, measured in interleaved rounds on the same feeds.

    Returns per session the median of the per-round medians, and for every session after the
    first the median over rounds of (first / this) — the speedup, robust to machine-wide drift."""
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
                start = time.perf_counter()
                sessions[name].run(feed)
                times.append(time.perf_counter() - start)
            per[name].append(statistics.median(times))
    base = names[0]
    result: dict[str, Any] = {"rounds": rounds, "calls_per_round": per_round, "warmup": warmup}
    for name in names:
        result[name] = {"median_ms": 1e3 * statistics.median(per[name]), "min_round_ms": 1e3 * min(per[name])}
        if name != base:
            ratios = [a / b for a, b in zip(per[base], per[name], strict=True)]
            result[name]["speedup_vs_" + base] = statistics.median(ratios)
    return result
