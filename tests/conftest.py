"""Shared fixtures. WORKBENCH_HOME comes from the Makefile (.workbench in the checkout) so the
torch environment and the converted embedded model are built once; tests that need an empty
home make their own."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("WORKBENCH_HOME", str(ROOT / ".workbench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "results" / "wb.sqlite"


@pytest.fixture
def fault_method():
    from workbench import registry
    from workbench.testing import FaultMethod

    registry.register(FaultMethod)
    yield FaultMethod
    registry.unregister(FaultMethod.name)


def torch_env_ready() -> bool:
    from workbench.envs import manager

    return manager.status("torch").ready


requires_torch_env = pytest.mark.skipif(
    not torch_env_ready(), reason="the torch environment is not created (make setup / workbench env create torch)"
)


requires_onnx_env = pytest.mark.skipif(
    not __import__("workbench.envs.manager", fromlist=["status"]).status("onnx").ready,
    reason="the onnx environment is not created (make setup / workbench env create onnx)",
)


requires_openvino_env = pytest.mark.skipif(
    not __import__("workbench.envs.manager", fromlist=["status"]).status("openvino").ready,
    reason="the openvino environment is not created (make setup / workbench env create openvino)",
)


def python_has_torch() -> bool:
    return "torch" in sys.modules or __import__("importlib").util.find_spec("torch") is not None


@pytest.fixture
def corrupt_save_method():
    from workbench import registry
    from workbench.testing import CorruptSavedScales

    registry.register(CorruptSavedScales)
    yield CorruptSavedScales
    registry.unregister(CorruptSavedScales.name)
