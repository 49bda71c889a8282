"""Will the ONNX-TensorRT parser accept this graph? Answered without a GPU or TensorRT installed.

`trt_ops.json` (beside this file) is the parser's operator support matrix per TensorRT version
(10.3 for JetPack 6, 11.x for current desktops and servers), transcribed from onnx-tensorrt's
docs/operators.md. `check_trt` walks every node (subgraphs and local functions included) and
reports each one the parser would reject, with the reason: operator not in the table, opset out
of range, a data type the operator does not take, a restriction from the table's notes that can
be checked statically (constant `axes`, Resize modes, ...), and the explicit-quantization rules
TensorRT needs (symmetric int8/fp8 Q/DQ with constant scales; no int32 bias dequantization).
edgegen's own policy adds one: no ONNX `Attention` op, so graphs stay parseable by TensorRT 10.3.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.inliner
from onnx import numpy_helper

from edgegen.errors import UserError

TABLE_FILE = Path(__file__).with_name("trt_ops.json")

# ONNX element type -> the parser docs' type name (None: TensorRT has no such type).
_TYPE_NAMES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.DOUBLE: "DOUBLE",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.FLOAT8E4M3FN: "FP8",
    onnx.TensorProto.INT4: "INT4",
}
if hasattr(onnx.TensorProto, "FLOAT4E2M1"):
    _TYPE_NAMES[onnx.TensorProto.FLOAT4E2M1] = "FP4"

_QDQ_TYPES = {"INT8", "FP8"}  # edgegen's explicit quantization: int8 or fp8, symmetric


@dataclass(frozen=True)
class Problem:
    """One node the parser would reject (or the model as a whole when `node` is empty)."""

    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"node {self.node!r} ({self.op}): {self.reason}" if self.node else self.reason


@functools.cache
def _tables() -> dict[str, Any]:
    return json.loads(TABLE_FILE.read_text())["versions"]


def trt_versions() -> tuple[str, ...]:
    return tuple(_tables())


def normalize_version(version: str) -> str:
    """'10.3' → '10.3'; '11', '11.2' → '11'. Other versions are a UserError listing the known ones."""
    version = str(version).strip()
    tables = _tables()
    if version in tables:
        return version
    major = version.split(".")[0]
    if major in tables:
        return major
    raise UserError(f"no TensorRT parser table for version {version!r}; known: {', '.join(tables)}")


def max_opset(version: str) -> int:
    return int(_tables()[normalize_version(version)]["opset"]["max"])


def check_trt(model: onnx.ModelProto | str | Path, version: str) -> list[Problem]:
    """Every reason the ONNX-TensorRT parser of `version` would reject `model` (empty: it parses)."""
    table = _tables()[normalize_version(version)]
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    problems: list[Problem] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    low, high = table["opset"]["min"], table["opset"]["max"]
    if opset is None or not low <= opset <= high:
        problems.append(Problem("", "", f"opset {opset} is outside TensorRT {version}'s range {low}-{high}; export with --opset {min(high, 20)}"))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types = _tensor_types(inferred.graph)
    constants = _constants(inferred.graph)
    io_names = {v.name for v in (*inferred.graph.input, *inferred.graph.output)}
    for name, elem in types.items():
        type_name = _TYPE_NAMES.get(elem)
        if type_name is None:
            problems.append(Problem("", "", f"tensor {name!r} has type {onnx.TensorProto.DataType.Name(elem)}, which TensorRT does not support"))
        elif type_name in table["io_only_types"] and name not in io_names:
            problems.append(Problem("", "", f"tensor {name!r} is {type_name}, which TensorRT allows only as a network input or output"))
    for node in _nodes(inferred.graph):
        problems += _check_node(node, table, types, constants)
    return problems


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _nodes(g)


def _tensor_types(graph: onnx.GraphProto) -> dict[str, int]:
    types: dict[str, int] = {}
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                types.update(_tensor_types(attr.g))
    return types


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray | None]:
    """Tensors fixed at build time: initializers and Constant outputs (value; None if not decodable)."""
    values: dict[str, np.ndarray | None] = {init.name: _to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = next((a for a in node.attribute if a.name == "value"), None)
            values[node.output[0]] = _to_array(value.t) if value is not None else None
    return values


def _to_array(tensor: onnx.TensorProto) -> np.ndarray | None:
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, TypeError):  # external data not loaded, or an exotic type
        return None


def _type_of(types: dict[str, int], name: str) -> str | None:
    elem = types.get(name)
    return None if elem is None else _TYPE_NAMES.get(elem, onnx.TensorProto.DataType.Name(elem))


def _check_node(node: onnx.NodeProto, table: dict[str, Any], types: dict[str, int], constants: dict[str, Any]) -> list[Problem]:
    name, op = node.name or (node.output[0] if node.output else "?"), node.op_type
    if node.domain not in ("", "ai.onnx"):
        return [Problem(name, op, f"custom-domain op {node.domain}::{op} is not an ONNX standard op; TensorRT would need a plugin")]
    if op == "Attention":
        return [Problem(name, op, "the ONNX Attention op is not allowed (edgegen policy: keep attention as MatMul/Softmax so TensorRT 10.3 parses it)")]
    spec = table["ops"].get(op)
    if spec is None:
        why = "marked unsupported" if op in table["unsupported"] else "not in"
        return [Problem(name, op, f"{op} is {why} the TensorRT parser's operator table")]
    problems = []
    data_type = _type_of(types, node.input[0]) if node.input and node.input[0] else None
    if data_type is not None and data_type not in spec["types"]:
        problems.append(Problem(name, op, f"input type {data_type} is not supported (supported: {', '.join(spec['types'])})"))
    if op == "Cast":
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        to_name = _TYPE_NAMES.get(to) if to is not None else None
        if to_name not in spec["types"]:
            problems.append(Problem(name, op, f"cast to {to_name or to} is not supported (supported: {', '.join(spec['types'])})"))
    for index, what in spec.get("constant_inputs", {}).items():
        i = int(index)
        if i < len(node.input) and node.input[i] and node.input[i] not in constants:
            problems.append(Problem(name, op, f"`{what}` (input {i}) must be a constant (initializer) for TensorRT"))
    if "max_outputs" in spec and sum(1 for o in node.output if o) > spec["max_outputs"]:
        problems.append(Problem(name, op, f"only the first {spec['max_outputs']} output(s) are supported"))
    for attr in node.attribute:
        allowed = spec.get("attributes", {}).get(attr.name)
        if allowed is not None:
            value = onnx.helper.get_attribute_value(attr)
            value = value.decode() if isinstance(value, bytes) else value
            if value not in allowed:
                problems.append(Problem(name, op, f"attribute {attr.name}={value!r} is not supported (supported: {allowed})"))
        if attr.name in spec.get("ones_attributes", ()) and any(v != 1 for v in attr.ints):
            problems.append(Problem(name, op, f"attribute {attr.name} must be all ones"))
    if op in ("QuantizeLinear", "DequantizeLinear"):
        problems += _check_qdq(node, name, types, constants)
    return problems


def _check_qdq(node: onnx.NodeProto, name: str, types: dict[str, int], constants: dict[str, Any]) -> list[Problem]:
    """Explicit quantization TensorRT can build: int8/fp8, constant scale, zero point 0."""
    op = node.op_type
    problems = []
    if len(node.input) < 2 or node.input[1] not in constants:
        problems.append(Problem(name, op, "the scale must be a constant (initializer)"))
    zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if op == "DequantizeLinear":
        qtype = _type_of(types, node.input[0])
        if qtype == "INT32":
            return [*problems, Problem(name, op, "INT32 dequantization (a quantized bias) is not supported; keep biases in float")]
    else:
        qtype = _type_of(types, zero_point) if zero_point else "UINT8"  # no zero point: ONNX quantizes to uint8
    if qtype is not None and qtype not in _QDQ_TYPES:
        problems.append(Problem(name, op, f"quantized type {qtype} is not supported; use int8 or fp8"))
    if zero_point:
        value = constants.get(zero_point, "missing")
        if isinstance(value, str):
            problems.append(Problem(name, op, "the zero point must be a constant"))
        elif value is not None and np.any(value.astype(np.float32) != 0):
            problems.append(Problem(name, op, "the zero point must be 0 (symmetric quantization)"))
    return problems
