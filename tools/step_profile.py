"""Where a denoising step's time goes on ONNX Runtime CPU: time per operator type, fp32 vs int8.

Runs the bundle's per-step graph (`denoiser`) at batch 1 on one thread with ORT's profiler, sums
the kernel time of each operator type over `--calls` runs, and prints the share of matrix
products. The share bounds what any int8 kernel can gain (Amdahl): if matrix products are a
fraction f of the fp32 step and int8 made them k times faster with no quantization overhead, the
step would be 1 / ((1 - f) + f / k) times faster.

    python tools/step_profile.py edgegen/assets/default --calls 400
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections import defaultdict
from pathlib import Path

from edgegen.bundle import Bundle, load_bundle
from edgegen.runtime.backends.ort_cpu import ThreadPlan, open_ort_session, sample_feeds

log = logging.getLogger("step_profile")

MATRIX_OPS = {"MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat",
              "DynamicQuantizeMatMul", "QGemm", "Conv", "QLinearConv", "ConvInteger"}


def profile(bundle: Bundle, precision: str, calls: int, warmup: int = 20, component: str = "denoiser") -> dict[str, float]:
    """Kernel microseconds per operator type and call, over `calls` runs after `warmup` untimed ones."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ThreadPlan(1).options()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / precision)
        session = open_ort_session(bundle, component, precision, options, ["CPUExecutionProvider"], backend="ort-cpu")
        feeds = sample_feeds(session.entry)
        for _ in range(warmup + calls):
            session.run(feeds)
        events = json.loads(session.end_profiling().read_text())
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    timed_from = runs[warmup]  # the first timed run's start: warm-up kernels come before it
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= timed_from:
            per_op[e["args"]["op_name"]] += e["dur"] / calls
    return dict(per_op)


def report(name: str, per_op: dict[str, float]) -> float:
    total = sum(per_op.values())
    matrix = sum(v for op, v in per_op.items() if op in MATRIX_OPS)
    log.info("%s: %.0f us of kernels per step, matrix products %.0f us (%.0f%%)", name, total, matrix, 100 * matrix / total)
    for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])[:12]:
        log.info("  %-24s %7.1f us  %4.1f%%", op, us, 100 * us / total)
    return matrix / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--calls", type=int, default=400)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bundle = load_bundle(args.bundle)
    fp32 = profile(bundle, "fp32", args.calls)
    f = report("fp32", fp32)
    if "int8" in bundle.precisions:
        int8 = profile(bundle, "int8", args.calls)
        report("int8", int8)
        log.info("int8 / fp32 kernel time: %.2fx faster", sum(fp32.values()) / sum(int8.values()))
    for k in (2.0, 4.0, float("inf")):
        log.info("bound: matrix products %sx faster, all else equal -> step %.2fx faster",
                 "inf" if k == float("inf") else f"{k:.0f}", 1.0 / ((1.0 - f) + f / k))


if __name__ == "__main__":
    main()
