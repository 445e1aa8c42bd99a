"""The base of the methods that quantize a Transformers model in place in the torch environment."""
from __future__ import annotations

from .base import Method


class TorchMethod(Method):
    """A method run in the torch environment on the model as Transformers loads it, on CPU or CUDA
    (bnb, torchao, hqq, quanto, rtn), as `OpenVINOMethod` and `ORTMethod` are for their families."""

    env = "torch"
    devices = ("cpu", "cuda")
    model_kinds = ("causal-lm", "encoder")
