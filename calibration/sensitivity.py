"""Which layers to keep in float: per-layer sensitivity and a greedy exclusion search.

For one component: quantize each candidate node alone and measure the component's output error
against fp32 on the calibration inputs (the node's *sensitivity*); then quantize every candidate,
and while the error is over the target keep the most sensitive remaining node in float
(`nodes_to_exclude`). Each decision is recorded with its numbers for the report.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgegen.calibration import quantize as q

log = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]


def relative_rmse(actual: np.ndarray, reference: np.ndarray) -> float:
    """RMS(actual - reference) / RMS(reference): scale-free, 0 is exact."""
    ref = reference.astype(np.float64)
    denom = float(np.sqrt(np.mean(ref**2)))
    err = float(np.sqrt(np.mean((actual.astype(np.float64) - ref) ** 2)))
    return err / max(denom, 1e-12)


def ort_session(model: onnx.ModelProto | Path, *, simulate: bool = False) -> Any:
    """A CPU session with full optimisation (the ORT fusions are what users run), or at the basic
    level for `simulate` (fp8: ORT CPU runs float8 Q/DQ only unfused, as simulated quantization)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if simulate:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])


def run_all(session: Any, feeds: Sequence[Feeds]) -> list[list[np.ndarray]]:
    names = [o.name for o in session.get_outputs()]
    return [session.run(names, dict(f)) for f in feeds]


def output_error(outputs: Sequence[Sequence[np.ndarray]], reference: Sequence[Sequence[np.ndarray]], names: Sequence[str]) -> dict[str, float]:
    """Per output: relative RMSE over all the samples together."""
    errors = {}
    for i, name in enumerate(names):
        actual = np.concatenate([o[i].ravel() for o in outputs])
        ref = np.concatenate([r[i].ravel() for r in reference])
        errors[name] = relative_rmse(actual, ref)
    return errors


@dataclass
class SearchResult:
    """The outcome for one component: what is quantized, what was kept in float and why."""

    component: str
    target: float
    error: dict[str, float]  # per output, all chosen nodes quantized (sensitivity set)
    sensitivity: dict[str, float]  # node -> component error with only that node quantized
    quantized: list[str]
    kept_float: list[dict[str, Any]] = field(default_factory=list)  # {node, op, why, sensitivity, error_after}
    steps: list[dict[str, Any]] = field(default_factory=list)  # the greedy trace
    met: bool = True


def worst(errors: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """The component's score: the largest weighted per-output error."""
    weights = weights or {}
    return max(errors[k] * weights.get(k, 1.0) for k in errors)


def search(
    component: str,
    model_path: Path,
    sch: q.Scheme,
    ranges_path: Path,
    feeds: Sequence[Feeds],
    candidates: Sequence[q.Candidate],
    target: float,
    *,
    policy_excluded: Mapping[str, str] | None = None,
    output_weights: Mapping[str, float] | None = None,
    max_kept: int | None = None,
) -> SearchResult:
    """Sensitivity of every candidate, then greedy exclusion until `worst(error) <= target`."""
    policy_excluded = dict(policy_excluded or {})
    simulate = sch.precision == "fp8"
    reference_session = ort_session(model_path)
    names = [o.name for o in reference_session.get_outputs()]
    reference = run_all(reference_session, feeds)
    pool = [c for c in candidates if c.name not in policy_excluded]
    by_name = {c.name: c for c in candidates}

    with tempfile.TemporaryDirectory(prefix=f"edgegen-{component}-") as tmp:
        out = Path(tmp) / "q.onnx"

        def measure(exclude: Sequence[str], only: Sequence[str] | None = None) -> dict[str, float]:
            model = q.quantize(model_path, out, sch, ranges_path, exclude=exclude, only=only)
            return output_error(run_all(ort_session(model, simulate=simulate), feeds), reference, names)

        sensitivity = {}
        for cand in pool:
            sensitivity[cand.name] = worst(measure((), only=[cand.name]), output_weights)
        log.info("%s: sensitivity of %d layers measured (max %.4f)", component, len(pool), max(sensitivity.values(), default=0.0))

        order = sorted(pool, key=lambda c: sensitivity[c.name], reverse=True)
        excluded = list(policy_excluded)
        errors = measure(excluded)
        result = SearchResult(component, target, errors, sensitivity, [])
        result.steps.append({"kept_float": 0, "error": worst(errors, output_weights)})
        limit = len(order) if max_kept is None else min(max_kept, len(order))
        kept = 0
        while worst(errors, output_weights) > target and kept < limit:
            cand = order[kept]
            kept += 1
            excluded.append(cand.name)
            errors = measure(excluded)
            score = worst(errors, output_weights)
            result.kept_float.append({
                "node": cand.name, "op": cand.op, "why": f"sensitivity {sensitivity[cand.name]:.4f} (rank {kept}); error over target {target:g}",
                "sensitivity": sensitivity[cand.name], "error_after": score,
            })
            result.steps.append({"kept_float": kept, "node": cand.name, "error": score})
            log.info("%s: keep %s (%s) in float: error now %.4f (target %g)", component, cand.name, cand.op, score, target)
        result.error = errors
        result.met = worst(errors, output_weights) <= target
        for name, why in policy_excluded.items():
            cand = by_name.get(name)
            result.kept_float.insert(0, {"node": name, "op": cand.op if cand else "?", "why": why, "sensitivity": None, "error_after": None})
        result.quantized = [c.name for c in candidates if c.name not in excluded]
    return result
