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


def requires_env(name: str) -> pytest.MarkDecorator:
    """Skip unless the environment family `name` is created (make setup creates every family)."""
    from workbench.envs import manager

    return pytest.mark.skipif(not manager.status(name).ready,
                              reason=f"the {name} environment is not created (make setup / workbench env create {name})")


requires_torch_env = requires_env("torch")
requires_onnx_env = requires_env("onnx")
requires_openvino_env = requires_env("openvino")
requires_llmcompressor_env = requires_env("llmcompressor")


def python_has_torch() -> bool:
    return "torch" in sys.modules or __import__("importlib").util.find_spec("torch") is not None


@pytest.fixture
def corrupt_save_method():
    from workbench import registry
    from workbench.testing import CorruptSavedScales

    registry.register(CorruptSavedScales)
    yield CorruptSavedScales
    registry.unregister(CorruptSavedScales.name)
