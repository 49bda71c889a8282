"""torch module → one checked ONNX file (static shapes except the batch dimension).

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript). Measured on torch
2.13 with the edgegen components at opset 20, both exporters produce graphs that pass
`onnx.checker` and the TensorRT parser tables, but the dynamo exporter's graph is already clean
(the denoiser: 99 nodes, no Constant/Identity/Shape-chain noise) where the TorchScript exporter
needs onnxslim to get close (230 → 116 nodes); and the TorchScript exporter is deprecated
("will be removed"). The cost is export time (~5 s per component instead of 0.5 s), which the
stage cache makes a one-time cost. onnxslim still runs afterwards (it is a no-op on most of these
graphs, and folds what the exporter leaves).

The batch dimension is declared with `torch.export.Dim` and the sample inputs have batch 2, so
torch.export cannot specialise it to 1 (its 0/1 specialisation rule).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from google.protobuf.message import DecodeError

from edgegen.bundle import BATCH, TensorSpec
from edgegen.errors import UserError
from edgegen.files import atomic_path

log = logging.getLogger(__name__)

EXPORTER = "torch.onnx.export(dynamo=True)"
STAMP_KEY = "edgegen.export"  # ONNX metadata_props key holding the stage-cache stamp

_NUMPY_TO_TORCH = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32}


def read_stamp(path: Path) -> dict[str, Any] | None:
    """The export stamp stored in an ONNX file's metadata, or None (no file, no stamp, unreadable)."""
    if not path.is_file():
        return None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError, ValueError):  # a truncated or foreign file: export it again
        return None
    for prop in model.metadata_props:
        if prop.key == STAMP_KEY:
            return json.loads(prop.value)
    return None


def set_stamp(model: onnx.ModelProto, stamp: Mapping[str, Any]) -> None:
    for prop in list(model.metadata_props):
        if prop.key == STAMP_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=STAMP_KEY, value=json.dumps(dict(stamp), sort_keys=True))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's progress prints, deprecation warnings and torchvision notices are not ours to show."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir", "onnxslim")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def batch2(sample: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Sample inputs with batch 2 (torch.export would specialise a batch of 1)."""
    return tuple(x if x.shape[0] >= 2 else torch.cat([x] * 2) for x in sample)


def trace_to_onnx(
    module: torch.nn.Module,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    sample: Sequence[torch.Tensor],
    opset: int,
) -> onnx.ModelProto:
    """Export `module(*sample)` with the manifest's I/O names; only dim 0 of batched tensors is dynamic."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = tuple({0: batch} if spec.shape and spec.shape[0] == BATCH else {} for spec in inputs)
    module = module.eval()
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module,
                batch2(sample),
                None,
                input_names=[s.name for s in inputs],
                output_names=[s.name for s in outputs],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic,
                optimize=True,
                verbose=False,
                report=False,
            )
    except Exception as exc:  # the exporter raises many types; say which component failed, keep the cause
        raise UserError(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    model = program.model_proto
    _name_batch_dims(model, inputs, outputs)
    return model


def _name_batch_dims(model: onnx.ModelProto, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
    """Check graph I/O against the specs and call the batch dimension "batch" everywhere."""
    for values, specs, side in ((model.graph.input, inputs, "inputs"), (model.graph.output, outputs, "outputs")):
        names = [v.name for v in values]
        assert names == [s.name for s in specs], f"exported {side} {names} != spec {[s.name for s in specs]}"
        for value, spec in zip(values, specs, strict=True):
            dims = value.type.tensor_type.shape.dim
            assert len(dims) == len(spec.shape), f"{spec.name}: rank {len(dims)} != spec {spec.shape}"
            for dim, want in zip(dims, spec.shape, strict=True):
                if want == BATCH:
                    dim.dim_param = BATCH
                else:
                    assert dim.dim_value == want, f"{spec.name}: exported shape {[d.dim_value or d.dim_param for d in dims]} != spec {spec.shape}"


def slim(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and pattern fusion with onnxslim (standard ONNX ops only)."""
    import onnxslim

    with _quiet_exporter():
        slimmed = onnxslim.slim(model)
    slimmed.metadata_props.extend(p for p in model.metadata_props if p.key not in {q.key for q in slimmed.metadata_props})
    return slimmed


def check_and_save(model: onnx.ModelProto, path: Path) -> None:
    """Full `onnx.checker` (with shape inference), then an atomic save."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise UserError(f"{path.name}: onnx.checker rejects the exported graph: {str(exc).splitlines()[0]}") from exc
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def spec_dtype(spec: TensorSpec) -> torch.dtype:
    return _NUMPY_TO_TORCH[spec.dtype]
