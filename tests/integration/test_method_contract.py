"""The method contract's build part: `check_method(cls, model=...)` runs the method in a worker on
a tiny model, through the session, and requires at least one layer quantized out of the eligible
ones (the baseline and exports, which quantize nothing by design, must just run). Every built-in
that can build here: the checkpoint loaders (compressed-tensors, aqlm) need a checkpoint made
first and build in tests/integration/test_llmcompressor.py; spqr, vptq, higgs need a GPU; ov-hybrid
takes pipelines (tests/integration/test_openvino_pipelines.py)."""
from __future__ import annotations

import pytest

from workbench import registry
from workbench.session import Session
from workbench.testing import check_method

from ..conftest import (requires_env, requires_llmcompressor_env, requires_onnx_env, requires_openvino_env,
                        requires_torch_env)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(store=tmp_path_factory.mktemp("store") / "wb.sqlite", progress=False)


@pytest.mark.parametrize("name,model,params", [
    pytest.param("baseline", "tiny-llama", {}, marks=requires_torch_env),
    pytest.param("rtn", "tiny-llama", {"group_size": 16}, marks=requires_torch_env),
    pytest.param("bnb", "tiny-llama", {}, marks=requires_torch_env),
    pytest.param("torchao", "tiny-bert", {}, marks=requires_torch_env),
    pytest.param("hqq", "tiny-llama", {"group_size": 16}, marks=requires_torch_env),
    pytest.param("quanto", "tiny-llama", {}, marks=requires_torch_env),
    pytest.param("ov-export", "tiny-llama", {}, marks=requires_openvino_env),
    pytest.param("ov-weight", "tiny-llama", {}, marks=requires_openvino_env),
    pytest.param("ov-static", "tiny-bert", {"num_samples": 4}, marks=requires_openvino_env),
    pytest.param("ort-export", "tiny-bert", {}, marks=requires_onnx_env),
    pytest.param("ort-dynamic", "tiny-bert", {}, marks=requires_onnx_env),
    pytest.param("ort-static", "tiny-bert", {"num_samples": 4}, marks=requires_onnx_env),
    pytest.param("ort-int4", "tiny-llama", {"block_size": 16}, marks=requires_onnx_env),
    pytest.param("gptq", "tiny-llama", {"num_samples": 4, "seq_len": 64}, marks=requires_env("gptq")),
    pytest.param("awq", "tiny-llama", {"num_samples": 4, "seq_len": 64}, marks=requires_env("gptq")),
    pytest.param("llmcompressor", "tiny-llama", {}, marks=requires_llmcompressor_env),
])
def test_built_in_methods_build_a_tiny_model_through_the_contract(session, name, model, params):
    cls = registry.get(name).cls
    report = check_method(cls, model=model, params=params, session=session)
    if not cls.quantizes:
        assert f"build on {model} runs (the method quantizes nothing by design)" in report.passed
        return
    built = [p for p in report.passed if p.startswith(f"build on {model} quantized")]
    assert built, report.passed
    quantized, eligible = (int(x) for x in built[0].split("quantized ")[1].split(" eligible")[0].split(" of "))
    assert 1 <= quantized <= eligible
