"""Quantization Workbench: run quantization methods on Transformers models and compare them, measured one way.

Importing this package never imports torch or a backend library: the notebook
kernel stays light and every model runs in a worker process.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: F401
    DataError,
    EnvironmentUnavailable,
    InvalidParams,
    InvalidSpec,
    MethodUnavailable,
    ModelNotFound,
    ParamError,
    RunFailed,
    WorkbenchError,
)
from .params import Check, Param, Schema  # noqa: F401
from .result import RunResult, RunStatus  # noqa: F401
from .spec import BenchSpec, DataSpec, ModelSpec, RunSpec  # noqa: F401
