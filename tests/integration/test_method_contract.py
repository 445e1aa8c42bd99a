"""The method contract's build part: `check_method(cls, model=...)` runs the method in a worker on
a tiny model, through the session, and requires at least one layer quantized out of the eligible
ones. One method per backend environment (the others' builds are in their own integration tests)."""
from __future__ import annotations

import pytest

from workbench import registry
from workbench.session import Session
from workbench.testing import check_method

from ..conftest import requires_onnx_env, requires_openvino_env, requires_torch_env


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(store=tmp_path_factory.mktemp("store") / "wb.sqlite", progress=False)


@pytest.mark.parametrize("name,model,params", [
    pytest.param("rtn", "tiny-llama", {"group_size": 16}, marks=requires_torch_env),
    pytest.param("torchao", "tiny-bert", {}, marks=requires_torch_env),
    pytest.param("ov-weight", "tiny-llama", {}, marks=requires_openvino_env),
    pytest.param("ort-dynamic", "tiny-bert", {}, marks=requires_onnx_env),
])
def test_built_in_methods_build_a_tiny_model_through_the_contract(session, name, model, params):
    report = check_method(registry.get(name).cls, model=model, params=params, session=session)
    built = [p for p in report.passed if p.startswith(f"build on {model} quantized")]
    assert built, report.passed
    quantized, eligible = (int(x) for x in built[0].split("quantized ")[1].split(" eligible")[0].split(" of "))
    assert 1 <= quantized <= eligible
