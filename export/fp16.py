"""fp32 ONNX → fp16 ONNX, keeping the numerically fragile parts in fp32.

Weights and activations become fp16 except in *fp32 nodes*: LayerNormalization and Softmax (their
reductions want fp32 range and precision), and the sinusoidal timestep embedding — every node
upstream of a Sin/Cos, because `t * 1000 * freq` in fp16 has a resolution of 0.5 near 1000 and
would scramble the phases. Casts go exactly where a tensor crosses between the two regions.

Graph inputs and outputs stay fp32: every precision of a bundle has the same I/O contract, the
numpy Euler step and the host-side KV cache stay fp32, and the runtime never casts. The price is a
Cast at each boundary, negligible next to the matmuls; GPU backends that keep the cache on the
device bind it once either way.

A small converter of our own rather than onnxconverter-common's: on these graphs that one leaves
Cast(to=float) nodes and stale value_info behind, which onnx.checker rejects. Here every decision
comes from the operator schemas (which inputs/outputs accept float16), so the result type-checks
by construction, and the checker and the parity run confirm it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP32_OPS = ("LayerNormalization", "Softmax", "Sin", "Cos")
_F32, _F16 = TensorProto.FLOAT, TensorProto.FLOAT16
_FP16_MAX = 65504.0


def timestep_embedding_nodes(graph: onnx.GraphProto) -> set[str]:
    """Output names (first output) of Sin/Cos nodes and every node they depend on."""
    producer = {out: node for node in graph.node for out in node.output}
    blocked: set[str] = set()
    stack = [n for n in graph.node if n.op_type in ("Sin", "Cos")]
    while stack:
        node = stack.pop()
        if node.output[0] in blocked:
            continue
        blocked.add(node.output[0])
        stack += [producer[i] for i in node.input if i in producer]
    return blocked


def _accepts_fp16(node: onnx.NodeProto, index: int, side: str, opset: int) -> bool:
    """Does input/output `index` of this op's schema allow tensor(float16)?"""
    schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    formals = schema.inputs if side == "input" else schema.outputs
    formal = formals[min(index, len(formals) - 1)]  # variadic: the last formal repeats
    allowed = next((c.allowed_type_strs for c in schema.type_constraints if c.type_param_str == formal.type_str), [formal.type_str])
    return "tensor(float16)" in allowed


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fp16 version of an fp32 model (fp32 I/O, fragile ops in fp32)."""
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = model.graph
    assert not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute), \
        "fp16 conversion of graphs with subgraphs (If/Loop) is not implemented"
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types |= {init.name: init.data_type for init in graph.initializer}
    keep32 = timestep_embedding_nodes(graph)
    fp32_node = [n.op_type in FP32_OPS or n.output[0] in keep32 for n in graph.node]

    # 1. Decide each node's float outputs: fp16 unless the node stays fp32 (or its schema forbids fp16).
    new_type: dict[str, int] = {}
    for node, stays in zip(graph.node, fp32_node, strict=True):
        for i, out in enumerate(node.output):
            if out and types.get(out) == _F32:
                new_type[out] = _F32 if stays or not _accepts_fp16(node, i, "output", opset) else _F16
        if new_type.get(node.output[0]) == _F16:
            _retype_attributes(node)

    # 2. Initializers: fp16 when every consumer wants fp16 there, else fp32 (and casts below).
    wants: dict[str, set[int]] = {}
    for node, stays in zip(graph.node, fp32_node, strict=True):
        for i, name in enumerate(node.input):
            if name and types.get(name) == _F32 and node.op_type != "Cast":
                wants.setdefault(name, set()).add(_F32 if stays or not _accepts_fp16(node, i, "input", opset) else _F16)
    for init in graph.initializer:
        if init.data_type == _F32 and wants.get(init.name) == {_F16}:
            init.CopyFrom(_half(init))
            new_type[init.name] = _F16
    for value in graph.input:
        new_type.setdefault(value.name, value.type.tensor_type.elem_type)

    # 3. Casts where a tensor's type differs from what a consumer wants.
    casts: dict[tuple[str, int], str] = {}
    nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}_to_{'fp16' if to == _F16 else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [casts[key]], name=f"cast_{casts[key]}", to=to))
        return casts[key]

    outputs = {v.name for v in graph.output}
    renamed = {name: f"{name}_fp16" for name in outputs if new_type.get(name) == _F16}
    for node, stays in zip(graph.node, fp32_node, strict=True):
        for i, name in enumerate(node.input):
            name = renamed.get(name, name)
            if not name or types.get(node.input[i]) != _F32 or node.op_type == "Cast":
                node.input[i] = name
                continue
            want = _F32 if stays or not _accepts_fp16(node, i, "input", opset) else _F16
            node.input[i] = name if new_type.get(node.input[i], _F32) == want else cast(name, want)
        for i, out in enumerate(node.output):
            if out in renamed:
                node.output[i] = renamed[out]
        nodes.append(node)
    for name, internal in renamed.items():  # graph outputs stay fp32
        nodes.append(helper.make_node("Cast", [internal], [name], name=f"cast_{name}_out", to=_F32))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale types; onnx.checker's shape inference recomputes them
    return model


def _retype_attributes(node: onnx.NodeProto) -> None:
    """Attributes that fix an output's type: Cast's `to`, Constant/ConstantOfShape's `value`."""
    if node.op_type == "Cast":
        for attr in node.attribute:
            if attr.name == "to":
                attr.i = _F16
    elif node.op_type in ("Constant", "ConstantOfShape"):
        value = next((a for a in node.attribute if a.name == "value"), None)
        if value is None:  # ConstantOfShape's default value is a float32 zero
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16))))
        elif value.t.data_type == _F32:
            value.t.CopyFrom(_half(value.t))


def _half(tensor: onnx.TensorProto) -> onnx.TensorProto:
    array = numpy_helper.to_array(tensor).astype(np.float32)
    return numpy_helper.from_array(np.clip(array, -_FP16_MAX, _FP16_MAX).astype(np.float16), tensor.name)
