"""Fixtures of the torch-env tests: tiny random models saved once per test module."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from tiny import ...` in the test modules
from tiny import save_bert, save_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return save_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return save_bert(tmp_path_factory.mktemp("tiny-bert"))
