"""The package layout: every package folder is installed, under edgegen.* names only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
MAPPING = {"edgegen": "edgegen", "edgegen.export": "export", "edgegen.calibration": "calibration", "edgegen.runtime": "runtime"}


def _package_folders() -> set[str]:
    names = set()
    for top, folder in MAPPING.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            names.add(".".join([top, *rel.parts]))
    return names


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == MAPPING
    assert set(config["packages"]) == _package_folders()


def test_version_and_help_work() -> None:
    out = subprocess.run([sys.executable, "-m", "edgegen", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("edgegen ")
    out = subprocess.run([sys.executable, "-m", "edgegen", "--help"], capture_output=True, text=True, check=True)
    assert "generate" in out.stdout


def test_base_dependencies_have_no_torch() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if d.lower().startswith(("torch", "onnx ", "onnx>", "onnx="))]
