"""The calibration report: the verdict against the targets and its markdown rendering."""

from __future__ import annotations

import math
from typing import Any

FP8_NOTE = (
    "FP8 (E4M3) Q/DQ needs TensorRT on a GPU with FP8 tensor cores (Ada, Hopper, Blackwell: compute "
    "capability >= 8.9) to run fast. ONNX Runtime's CPU provider has no FP8 kernels: at its default "
    "optimisation level onnxruntime 1.31 refuses the file (its QDQ fusion turns float8 DQ→MatMul into "
    "MatMulIntegerToFloat, which takes only 8-bit integers); at the basic level it runs the Q/DQ as "
    "simulated quantization in float, slower than fp32. The numbers below come from that simulation. "
    "Jetson Orin (sm 8.7) has no FP8: use the int8 precision there."
)


VARIANT = "ort-cpu"  # the manifest key of a component's ORT-CPU-only file, and the backend that runs it
VARIANT_SUFFIX = "_ort_cpu_variants"  # the checks measured on those files


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """Each target: value, limit, passed. `passed`: every measured quality target of the portable
    files (what every backend runs unless it has files of its own); `passed_by_backend`: the same
    for a backend judged on its own files (ORT CPU's variants, where the bundle has them). Both go
    into the manifest, where the runtime's default precision reads them."""
    targets = report["targets"]
    checks = end_to_end_checks(report.get("end_to_end") or {}, targets)
    latency = report.get("latency", {})
    for kind, label in (("wall", "wall time, every core"), ("cpu", "1-thread CPU time")):
        step = latency.get(kind, {}).get("denoiser", {})
        best = max(((k, v["speedup_vs_fp32"]) for k, v in step.items() if isinstance(v, dict) and "speedup_vs_fp32" in v),
                   key=lambda kv: kv[1], default=None)
        if best is not None:
            checks[f"denoiser_step_speedup_ort_cpu_{kind}"] = {
                "value": best[1], "min": targets["min_step_speedup"], "passed": bool(best[1] >= targets["min_step_speedup"]),
                "note": f"{label}; best int8 path: {best[0]}",
            }
    for comp, rec in report["components"].items():
        checks[f"{comp}_target_rel_rmse"] = {"value": max(rec["calibration_error"].values()), "max": rec["target_rel_rmse"], "passed": bool(rec["target_met"])}
    # Quality decides whether the runtime may pick this precision by default; speed is reported.
    # Each backend is judged on the files it runs: the portable Q/DQ files, or ORT CPU's own.
    variant_checks = {k for k in checks if k.endswith(VARIANT_SUFFIX)}
    result: dict[str, Any] = {"passed": _quality(checks, skip=variant_checks), "checks": checks}
    if variant_checks:
        with_variant = {comp for comp, rec in report["components"].items() if (rec.get("ort_cpu_variant") or {}).get("file")}
        portable_only = {"mean_psnr_db", "judge_max_drop_points"} | {f"{comp}_target_rel_rmse" for comp in with_variant}
        result["passed_by_backend"] = {VARIANT: _quality(checks, skip=portable_only)}
    return result


def end_to_end_checks(e2e: dict[str, Any], targets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The end-to-end quality checks: mean PSNR and the judge's largest drop against fp32, for the
    portable files and (suffix `_ort_cpu_variants`) for ORT CPU's own files where they were measured."""
    checks: dict[str, dict[str, Any]] = {}
    for suffix, rec in (("", e2e), (VARIANT_SUFFIX, e2e.get("ort_cpu_variants"))):
        if not rec:
            continue
        value = rec["mean_psnr_db"]
        checks[f"mean_psnr_db{suffix}"] = {"value": value, "min": targets["min_psnr_db"], "passed": bool(value >= targets["min_psnr_db"])}
        judge = rec.get("judge")
        if judge:
            drop = judge["max_drop_points"]
            checks[f"judge_max_drop_points{suffix}"] = {"value": drop, "max": targets["max_judge_drop_points"],
                                                        "passed": bool(drop <= targets["max_judge_drop_points"])}
        elif not suffix:
            checks["judge_max_drop_points"] = {"value": None, "passed": None, "note": "no judge installed (edgegen.judge); not measured"}
    return checks


def variants_pass(e2e: dict[str, Any], targets: dict[str, Any]) -> bool:
    """Do ORT CPU's own files meet the end-to-end targets the portable files are held to?"""
    checks = end_to_end_checks(e2e, targets)
    return _quality(checks, skip={k for k in checks if not k.endswith(VARIANT_SUFFIX)})


def _quality(checks: dict[str, dict[str, Any]], skip: set[str]) -> bool:
    """All measured quality checks (not speed) except `skip` passed."""
    return all(c["passed"] for k, c in checks.items() if k not in skip and c["passed"] is not None and "speedup" not in k)


def one_line(report: dict[str, Any]) -> str:
    parts = []
    e2e = report.get("end_to_end")
    if e2e:
        parts.append(f"mean PSNR {_db(e2e['mean_psnr_db'])} vs fp32")
    for kind in ("wall", "cpu"):
        check = report["verdict"]["checks"].get(f"denoiser_step_speedup_ort_cpu_{kind}")
        if check:
            parts.append(f"denoiser step {check['value']:.2f}x fp32 on ORT CPU ({kind})")
    parts.append("quality passed" if report["verdict"]["passed"] else "quality FAILED")
    parts += [f"{backend} (its own files): {'passed' if ok else 'FAILED'}" for backend, ok in report["verdict"].get("passed_by_backend", {}).items()]
    return ", ".join(parts)


def _db(value: Any) -> str:
    return "inf dB" if isinstance(value, str) or not math.isfinite(value) else f"{value:.2f} dB"


def _f(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    p = report["precision"]
    lines = [f"# Calibration report: {p}", ""]
    lines += [f"Created {report['created']} by edgegen {report['edgegen']} with onnxruntime {report['onnxruntime']}; "
              f"source bundle `{report['source_bundle']['digest'][:16]}`.", ""]
    if p == "fp8":
        lines += [f"> {FP8_NOTE}", ""]
    v = report["verdict"]
    lines += ["## Verdict", "", f"**{'PASSED' if v['passed'] else 'FAILED'}** (quality targets of the portable files; speed is reported below).", ""]
    lines += [f"**{'PASSED' if ok else 'FAILED'}** on {backend}, judged on the files it runs (its own variants where the "
              "bundle has them); the runtime's default precision for that backend reads this verdict.\n" for backend, ok in v.get("passed_by_backend", {}).items()]
    lines += ["| check | value | target | passed |", "| --- | --- | --- | --- |"]
    for name, c in v["checks"].items():
        limit = f">= {c['min']}" if "min" in c else f"<= {c['max']}" if "max" in c else ""
        note = f" ({c['note']})" if c.get("note") else ""
        lines.append(f"| {name}{note} | {_f(c['value'])} | {limit} | {c['passed']} |")
    s = report["settings"]
    lines += ["", "## Calibration data", "",
              f"Timestep-aware: the fp32 bundle ran the streaming loop on {s['prompts']} training-split prompts "
              f"({s['frames']} frames each, steps {s['steps']} round-robin, seeds from {s['seed']}); every call of every component was "
              f"recorded (all denoising steps, commit passes, the KV cache filling and rolling). Up to {s['samples']} calls per "
              f"component were used, spread evenly. Component checks use inputs captured from {s['eval_prompts']} held-out prompts; "
              f"the end-to-end clips use {s.get('judge_prompts', s['eval_prompts'])} other held-out prompts.", ""]
    for split, c in report["capture"].items():
        lines.append(f"- {split}: {c['prompts']} prompts, calls {c['calls']}, cache key `{c['key'][:16]}` ({'reused' if c['reused'] else 'captured'})")
    qz = report["quantization"]
    lines += ["", "## Quantization settings", "", "```json", _json(qz), "```", ""]
    for comp, r in report["components"].items():
        lines += [f"## {comp} → `{r['file']}`", "",
                  f"{len(r['quantized'])} of {r['candidates']} Conv/ConvTranspose/MatMul/Gemm layers quantized; "
                  f"{len(r['kept_float'])} kept in float. Target: relative RMSE <= {r['target_rel_rmse']} "
                  f"({'met' if r['target_met'] else 'NOT met'}). {r['samples']} calibration samples, data sha256 `{r['data_sha256'][:16]}`.", "",
                  "| output | error on calibration inputs | error on held-out inputs |", "| --- | --- | --- |"]
        for name, value in r["heldout_error"].items():
            lines.append(f"| {name} | {_f(r['calibration_error'].get(name))} | {_f(value)} |")
        lines += ["", "Kept in float (and why):", ""]
        if r["kept_float"]:
            lines += ["| node | op | sensitivity | component error after | why |", "| --- | --- | --- | --- | --- |"]
            lines += [f"| `{k['node']}` | {k['op']} | {_f(k['sensitivity'])} | {_f(k['error_after'])} | {k['why']} |" for k in r["kept_float"]]
        else:
            lines.append("nothing: every candidate is quantized.")
        lines += ["", "Most sensitive layers (component error with only that layer quantized):", "",
                  "| node | sensitivity |", "| --- | --- |"]
        lines += [f"| `{n}` | {_f(e)} |" for n, e in list(r["sensitivity"].items())[:10]]
        lines += ["", f"Q/DQ: {r['qdq']['quantize']} QuantizeLinear, {r['qdq']['dequantize']} DequantizeLinear, problems: "
                  f"{r['qdq']['problems'] or 'none'}; TensorRT parser tables: {r['tensorrt']}.", ""]
    e2e = report.get("end_to_end")
    if e2e:
        lines += ["## End to end (held-out prompts, same seeds)", "",
                  f"{len(e2e['prompts'])} prompts, {e2e['frames']} frames, {e2e['steps']} steps: mean PSNR {_db(e2e['mean_psnr_db'])}, "
                  f"min {_db(e2e['min_psnr_db'])} ({p} vs fp32).", ""]
        if "ort_cpu_variants" in e2e:
            lines += [f"With the ORT-CPU variant files: mean PSNR {_db(e2e['ort_cpu_variants']['mean_psnr_db'])}, "
                      f"min {_db(e2e['ort_cpu_variants']['min_psnr_db'])}; judge max drop "
                      f"{_f((e2e['ort_cpu_variants'].get('judge') or {}).get('max_drop_points'), 1)} points.", ""]
        if "ort_cpu_variants_dropped" in e2e:
            dropped = e2e["ort_cpu_variants_dropped"]
            lines += [f"The ORT-CPU variant files were measured and **not shipped**: mean PSNR {_db(dropped['mean_psnr_db'])}, judge max "
                      f"drop {_f((dropped.get('judge') or {}).get('max_drop_points'), 1)} points, outside the targets; "
                      "ORT CPU runs the portable int8 files.", ""]
        judge = e2e.get("judge")
        if judge:
            lines += [f"Judge accuracy per attribute (percent of the prompts that specify it). With {len(e2e['prompts'])} prompts one "
                      f"changed verdict moves an attribute by up to {100 / max(1, len(e2e['prompts'])):.1f} points; the 2-point target "
                      "is resolved from about 200 prompts (`--judge-prompts`, the default).", ""]
            lines += ["| attribute | fp32 accuracy | " + p + " accuracy | drop (points) |", "| --- | --- | --- | --- |"]
            lines += [f"| {k} | {_f(judge['fp32'][k], 1)} | {_f(judge[p].get(k), 1)} | {_f(judge['drop_points'][k], 1)} |" for k in judge["fp32"]]
        else:
            lines.append("Judge: not available in this install (edgegen.judge); accuracy not measured.")
        lines.append("")
    lat = report.get("latency")
    if lat:
        lines += ["## Latency (ORT CPU, this machine, same process, interleaved rounds)", ""]
        if "skipped" in lat:
            lines.append(lat["skipped"])
        else:
            load = lat.get("load")
            if load and load["loadavg_1m"] > load["cpus"]:
                lines += [f"**Warning:** the machine was busy (1-minute load average {load['loadavg_1m']:.1f} on {load['cpus']} CPUs): "
                          "the wall-time rows measure contention more than the model; the CPU-time rows are the reliable ones.", ""]
            lines += [f"Wall: every file on one thread plan ({lat['plan']}). CPU: single-thread sessions timed with "
                      "`thread_time` (unaffected by other load). Median of per-round medians; speedup = median of per-round ratios. "
                      f"`{p}` is the portable Q/DQ file (TensorRT + ORT); `{p}+ort-cpu` uses the ORT-CPU-only files where the bundle has them.", "",
                      "| component | clock | path | ms/call | speedup vs fp32 |", "| --- | --- | --- | --- | --- |"]
            for kind in ("wall", "cpu"):
                for comp, r in lat.get(kind, {}).items():
                    for path, v in r.items():
                        if isinstance(v, dict) and "median_ms" in v:
                            lines.append(f"| {comp} | {kind} | {path} | {v['median_ms']:.3f} | {_f(v.get('speedup_vs_fp32', 1.0), 2)}x |")
            for comp, prof in lat.get("profile_fp32", {}).items():
                lines += ["", f"Where the fp32 {comp} spends a call (ORT CPU, 1 thread, per-node medians): "
                          f"{prof['total_us']:.0f} us, of which GEMM/conv kernels {prof['gemm_us']:.0f} us ({100 * prof['gemm_share']:.0f}%). "
                          f"Quantizing GEMMs cannot beat {prof['max_gemm_only_speedup']:.2f}x on this graph even if they took no time "
                          "(Amdahl). Top op types (us): " + ", ".join(f"{k} {v:.0f}" for k, v in prof["top_ops_us"].items()) + "."]
            for kind, chunk in lat.get("chunk_default_steps", {}).items():
                lines += ["", f"Per chunk at the default steps ({kind}): " + ", ".join(
                    f"{k} {v['ms']:.2f} ms ({v['speedup_vs_fp32']:.2f}x)" for k, v in chunk.items())]
        lines.append("")
    variants = {c: r["ort_cpu_variant"] for c, r in report["components"].items() if r.get("ort_cpu_variant")}
    if variants:
        lines += ["## ORT-CPU-only variant files", "",
                  "The portable files keep TensorRT's rules (int8, zero point 0, inputs only). ONNX Runtime's CPU kernels want "
                  "other forms: it fuses DQ→MatMul into MatMulIntegerToFloat (fast), but a Conv only becomes QLinearConv when its "
                  "output is quantized too, and its int8-activation QLinearConv is slow; so for the CPU the bundle may also carry a "
                  "uint8 / contrib-op file per component (manifest: `components.<name>.variants.ort-cpu`). Tried (1-thread CPU time):", "",
                  "| component | form | error (rel RMSE) | ms/call | speedup vs fp32 | chosen |", "| --- | --- | --- | --- | --- | --- |"]
        for comp, v in variants.items():
            for form, t in v["tried"].items():
                chosen = "" if form != v.get("chosen") else ("yes" if v.get("file") else "dropped (end-to-end)")
                lines.append(f"| {comp} | {form} | {_f(t.get('error'))} | {t['cpu_ms']:.3f} | {t['speedup_vs_fp32']:.2f}x | {chosen} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=1)
