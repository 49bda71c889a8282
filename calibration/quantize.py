"""Explicit (Q/DQ) quantization of one ONNX component with onnxruntime.quantization.

The placement is the one TensorRT 10.3/11 builds from and ORT CPU runs: Q/DQ on the *inputs* of
Conv / ConvTranspose / MatMul / Gemm only (activations per tensor, weights per output channel),
symmetric (zero point 0), int8 or float8e4m3fn, biases left in float (no INT32 dequantization).
Nothing else in the graph is touched.

Ranges are computed once per component (`compute_ranges`, ORT's calibrator over the captured
inputs) and saved as ORT's JSON calibration cache, so the many `quantize` calls of the
sensitivity search only rewrite the graph.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)

QUANT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_ALLOWED_QTYPES = {
    "int8": (onnx.TensorProto.INT8,),
    "fp8": (onnx.TensorProto.FLOAT8E4M3FN,),
}


@dataclass(frozen=True)
class Scheme:
    """How one precision is quantized: the arguments handed to `quantize_static`."""

    precision: str
    activation_type: Any  # onnxruntime.quantization.QuantType
    weight_type: Any
    calibrate_method: Any  # onnxruntime.quantization.CalibrationMethod
    extra_options: Mapping[str, Any]

    def describe(self) -> dict[str, Any]:
        """The settings as plain JSON (for the manifest and the report)."""
        return {
            "format": "QDQ",
            "op_types_to_quantize": list(QUANT_OPS),
            "per_channel": True,
            "activation_type": self.activation_type.name,
            "weight_type": self.weight_type.name,
            "calibrate_method": self.calibrate_method.name,
            "extra_options": {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in self.extra_options.items()},
        }


def scheme(precision: str) -> Scheme:
    """The quantization settings for `precision` ("int8" or "fp8")."""
    from onnxruntime.quantization import CalibrationMethod, QuantType

    extra = {
        "ActivationSymmetric": True,  # zero point 0: what TensorRT requires
        "WeightSymmetric": True,
        "QuantizeBias": False,  # biases stay float: no INT32 DequantizeLinear
        "OpTypesToExcludeOutputQuantization": list(QUANT_OPS),  # Q/DQ on the inputs only
        "DedicatedQDQPair": False,
    }
    if precision == "int8":
        return Scheme("int8", QuantType.QInt8, QuantType.QInt8, CalibrationMethod.MinMax, extra)
    if precision == "fp8":
        # ORT's float8 path accepts only the Distribution calibrator (it fits the E4M3 range).
        return Scheme("fp8", QuantType.QFLOAT8E4M3FN, QuantType.QFLOAT8E4M3FN, CalibrationMethod.Distribution, extra)
    raise ValueError(f"unknown precision {precision!r}")


# ---------------------------------------------------------------------------------------------
# Candidates: the nodes that may be quantized, with their cost


@dataclass(frozen=True)
class Candidate:
    """One quantizable node: name, op, whether its second input is a weight, and its size."""

    name: str
    op: str
    weight: bool  # B / W is an initializer (a linear layer or a convolution)
    rows: int  # M of the matmul (tokens × batch 1); 0 when unknown
    macs: int  # multiply-accumulates per call at batch 1; 0 when unknown


def _static_shape(value: onnx.ValueInfoProto) -> list[int] | None:
    if not value.type.HasField("tensor_type"):
        return None
    dims = []
    for d in value.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1)  # batch → 1
    return dims


def shapes_of(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Every tensor's shape after shape inference, symbolic dims (the batch) read as 1."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    shapes = {}
    for value in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info):
        shape = _static_shape(value)
        if shape is not None:
            shapes[value.name] = shape
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def candidates(model: onnx.ModelProto) -> list[Candidate]:
    """The Conv/ConvTranspose/MatMul/Gemm nodes of the main graph, in graph order."""
    init = {i.name for i in model.graph.initializer}
    shapes = shapes_of(model)
    found = []
    for node in model.graph.node:
        if node.op_type not in QUANT_OPS or node.domain not in ("", "ai.onnx"):
            continue
        assert node.name, "quantization needs named nodes (onnxruntime addresses them by name)"
        weight = len(node.input) > 1 and node.input[1] in init
        out = shapes.get(node.output[0])
        macs, rows = 0, 0
        if out is not None:
            if node.op_type in ("MatMul", "Gemm"):
                a = shapes.get(node.input[0])
                k = a[-1] if a else 0
                if node.op_type == "Gemm" and a and any(at.name == "transA" and at.i for at in node.attribute):
                    k = a[0]
                rows = math.prod(out[:-1])
                macs = math.prod(out) * k
            else:
                w = shapes.get(node.input[1])
                if w is not None:
                    per_out = math.prod(w[1:]) if node.op_type == "Conv" else math.prod(w[2:]) * w[0] // max(1, out[1])
                    macs = math.prod(out) * per_out
                rows = math.prod(out[2:]) if len(out) > 2 else 1
        found.append(Candidate(node.name, node.op_type, weight, int(rows), int(macs)))
    return found


# ---------------------------------------------------------------------------------------------
# Ranges and quantization


class FeedReader:
    """onnxruntime's CalibrationDataReader over a list of feed dicts (restartable)."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.feeds[start_index:end_index])


def preprocess(src: Path, dst: Path) -> onnx.ModelProto:
    """Shape inference (what the quantizer needs to place Q/DQ) and node names, written to `dst`.

    ORT's `quant_pre_process` graph optimisation is skipped on purpose: it may rewrite the graph
    into ORT-only forms, and the file must stay a plain ONNX graph that TensorRT parses.
    """
    model = onnx.load(str(src))
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    onnx.save(model, str(dst))
    return model


def compute_ranges(model_path: Path, feeds: Sequence[Mapping[str, np.ndarray]], sch: Scheme, cache_path: Path,
                   *, symmetric: bool = True) -> None:
    """Run ORT's calibrator over `feeds` and save the activation ranges as ORT's JSON cache."""
    from onnxruntime.quantization.calibrate import TensorsData, create_calibrator, save_tensors_data

    with tempfile.TemporaryDirectory(prefix="edgegen-calib-") as tmp:
        calibrator = create_calibrator(
            model_path,
            list(QUANT_OPS),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=sch.calibrate_method,
            extra_options={"symmetric": symmetric},
        )
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
            calibrator.collect_data(FeedReader(feeds))
            ranges = calibrator.compute_data()
        assert isinstance(ranges, TensorsData)
        del calibrator
    save_tensors_data(ranges, cache_path, smooth_quant=False)


def quantize(
    model_path: Path,
    out_path: Path,
    sch: Scheme,
    ranges_path: Path,
    *,
    exclude: Iterable[str] = (),
    only: Iterable[str] | None = None,
) -> onnx.ModelProto:
    """Write the Q/DQ model for `model_path` (ranges from `ranges_path`) and return it."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    only = list(only) if only is not None else []
    logging.getLogger().disabled, was = True, logging.getLogger().disabled  # ORT logs its advice at WARNING
    try:
        quantize_static(
            str(model_path),
            str(out_path),
            None,
            calibration_cache_path=str(ranges_path),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANT_OPS),
            per_channel=True,
            reduce_range=False,
            activation_type=sch.activation_type,
            weight_type=sch.weight_type,
            calibrate_method=sch.calibrate_method,
            nodes_to_quantize=only,
            nodes_to_exclude=list(exclude),
            extra_options=dict(sch.extra_options),
        )
    finally:
        logging.getLogger().disabled = was
    return onnx.load(str(out_path))


# ---------------------------------------------------------------------------------------------
# Checks: what TensorRT (and the issue) ask of the Q/DQ graph


@dataclass
class QdqSummary:
    """What a quantized graph holds: Q/DQ counts, the nodes fed by DQ, the problems found."""

    quantize: int = 0
    dequantize: int = 0
    quantized_nodes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_qdq(model: onnx.ModelProto, precision: str) -> QdqSummary:
    """Every Q/DQ symmetric (zero point 0) and int8/fp8; DQ outputs feed only Conv/ConvTranspose/
    MatMul/Gemm inputs; no INT32 (bias) dequantization; every Q feeds a DQ."""
    allowed = _ALLOWED_QTYPES[precision]
    init = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    summary = QdqSummary()
    quantized = set()
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        if node.op_type == "QuantizeLinear":
            summary.quantize += 1
        else:
            summary.dequantize += 1
        where = f"{node.op_type} {node.name!r}"
        if node.domain not in ("", "ai.onnx"):
            summary.problems.append(f"{where} is in domain {node.domain!r}, not standard ONNX")
        if node.op_type == "DequantizeLinear" and node.input[0] in init and init[node.input[0]].data_type == onnx.TensorProto.INT32:
            summary.problems.append(f"{where} dequantizes an INT32 tensor (a quantized bias)")
        zp = init.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is None:
            summary.problems.append(f"{where} has no constant zero point (its type would default to uint8)")
        else:
            if zp.data_type not in allowed:
                summary.problems.append(f"{where} quantizes to {onnx.TensorProto.DataType.Name(zp.data_type)}, not {precision}")
            if np.any(numpy_helper.to_array(zp).astype(np.float32) != 0):
                summary.problems.append(f"{where} has a non-zero zero point (asymmetric)")
        if node.input[1] not in init:
            summary.problems.append(f"{where} has a scale that is not a constant")
        users = consumers.get(node.output[0], [])
        if node.op_type == "QuantizeLinear":
            if not users or any(u.op_type != "DequantizeLinear" for u in users):
                summary.problems.append(f"{where} feeds something other than a DequantizeLinear")
        else:
            for user in users:
                if user.op_type not in QUANT_OPS:
                    summary.problems.append(f"{where} feeds {user.op_type} {user.name!r}: only {'/'.join(QUANT_OPS)} inputs may be quantized")
                else:
                    quantized.add(user.name)
                    if len(user.input) > 2 and user.input[2] == node.output[0]:
                        summary.problems.append(f"{where} feeds the bias of {user.name!r}")
    summary.quantized_nodes = [n.name for n in model.graph.node if n.name in quantized]
    return summary


# ---------------------------------------------------------------------------------------------
# What ORT CPU really runs


# Kernels that compute in 8-bit integers on ORT CPU (the fused forms of Q/DQ patterns).
INTEGER_KERNELS = frozenset({
    "MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul",
    "QLinearConv", "ConvInteger", "QGemm", "QLinearConvTranspose",
})


def ort_kernels(model: onnx.ModelProto | Path) -> dict[str, str]:
    """Node name → op type in ORT CPU's optimised graph (fused nodes keep the anchor node's name)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgegen-ort-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # portable form
        options.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    return {n.name: n.op_type for n in optimized.graph.node}


def fake_quantized(model: onnx.ModelProto | Path, quantized: Iterable[str]) -> list[str]:
    """Quantized nodes ORT CPU does not turn into an integer kernel: it runs them in float behind
    Q→DQ pairs (and dequantizes their weights on every call): pure overhead on the CPU."""
    kernels = ort_kernels(model)
    return [name for name in quantized if kernels.get(name) not in INTEGER_KERNELS]


# ---------------------------------------------------------------------------------------------
# ORT-CPU-only variants (not for TensorRT): what makes ORT's CPU kernels fast


ORT_VARIANTS = ("qdq-u8", "dynamic")


def quantize_ort_variant(model_path: Path, out_path: Path, kind: str, ranges_u8: Path | None, *,
                         exclude: Iterable[str] = (), op_types: Sequence[str] = QUANT_OPS) -> onnx.ModelProto:
    """An int8 file for ONNX Runtime's CPU kernels only.

    - "qdq-u8": static Q/DQ with asymmetric uint8 activations on inputs *and outputs*, so ORT
      fuses QLinearConv / QLinearMatMul (with inputs-only Q/DQ it cannot fuse Conv at all, and
      with int8 activations its QLinearConv takes a slow path).
    - "dynamic": weights int8, activations quantized per call inside DynamicQuantizeMatMul
      (MatMul only; no calibration ranges; one fused kernel per layer).
    Neither is TensorRT-consumable (uint8 zero points, com.microsoft ops).
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    root = logging.getLogger()
    root.disabled, was = True, root.disabled
    try:
        if kind == "dynamic":
            quantize_dynamic(str(model_path), str(out_path), op_types_to_quantize=["MatMul"], per_channel=False,
                             weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude))
        elif kind == "qdq-u8":
            assert ranges_u8 is not None
            quantize_static(str(model_path), str(out_path), None, calibration_cache_path=str(ranges_u8),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types), per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(exclude),
                            extra_options={"WeightSymmetric": True, "QuantizeBias": False})
        else:
            raise ValueError(f"unknown ORT variant {kind!r}")
    finally:
        root.disabled = was
    return onnx.load(str(out_path))
