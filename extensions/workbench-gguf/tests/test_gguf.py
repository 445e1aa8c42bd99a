"""The plug-in's own tests, kernel side (no torch, no gguf): the workbench's method contract and
the checks made before any worker starts. The core's tests/integration/test_extension.py runs it."""
from types import SimpleNamespace

import pytest

from workbench.errors import InvalidParams
from workbench.session import Session
from workbench.testing import check_method
from workbench_gguf.method import GGUFBlocks


def test_the_method_keeps_the_workbench_contract():
    report = check_method(GGUFBlocks)
    assert any("imports no backend library" in p for p in report.passed)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_k_quants_are_refused_by_name(qtype):
    errors = GGUFBlocks().check_model({"qtype": qtype}, SimpleNamespace(linear_layers={}))
    assert [e.param for e in errors] == ["qtype"]
    assert f"{qtype} cannot be made here" in errors[0].message and "allowed: Q8_0, Q5_1" in errors[0].message


def test_an_input_size_that_is_not_a_multiple_of_the_block_is_named():
    layers = {"a.q_proj": (64, 64), "a.odd_proj": (64, 48), "lm_head": (100, 64)}
    errors = GGUFBlocks().check_model({}, SimpleNamespace(linear_layers=layers))
    assert [e.param for e in errors] == ["exclude"] and "a.odd_proj" in errors[0].message
    assert GGUFBlocks().check_model({"exclude": ["lm_head", "*odd*"]}, SimpleNamespace(linear_layers=layers)) == []


def test_the_session_refuses_a_k_quant_before_any_worker(tmp_path):
    with pytest.raises(InvalidParams, match="qtype: Q4_K cannot be made here"):
        Session(store=tmp_path / "wb.sqlite", progress=False).validate(
            Session.make_spec("tiny-llama", "gguf", {"qtype": "Q4_K"}))
