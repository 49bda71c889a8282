"""Shared fixtures. `tiny_bundle`: an fp32 + fp16 ONNX bundle exported once per test session.

The bundle is a real export (trace, slim, checker, TensorRT tables, parity against the torch
reference pipeline) of the tiny config's model with fixed random weights — no training needed —
written under pytest's session temp folder. Tests that modify
a bundle copy it first (`bundle_copy`).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


def tiny_source():  # -> ExportSource
    """The tiny config's real components (edgegen/configs/tiny.json) with fixed random weights."""
    from edgegen.export.source import source_from_config

    return source_from_config("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory):
    """(bundle path, ExportReport) of the session's tiny export."""
    from edgegen.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    report = export_bundle(tiny_source(), out, precisions=("fp32", "fp16"), parity_frames=12)
    return out, report


@pytest.fixture(scope="session")
def tiny_bundle(tiny_export) -> Path:
    """Path of an exported tiny bundle (fp32 + fp16). Read-only: copy it to modify it."""
    return tiny_export[0]


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny bundle."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


@pytest.fixture
def torch_one_thread():
    """Tiny models: one thread is faster than two (no OpenMP hand-offs) and kinder to a shared CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
