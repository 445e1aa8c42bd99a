"""The hqq method's schema and shape checks, in the kernel (no torch)."""
from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from workbench.errors import InvalidParams
from workbench.methods.hqq import HQQ, hqq_group_size, storage_bits

from ..conftest import requires_torch_env
from .test_rtn_schema import smollm2_like


def test_module_does_not_import_torch():
    code = "import sys, workbench.methods.hqq; print('torch' in sys.modules, 'hqq' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_defaults_and_info():
    assert HQQ.schema.defaults() == {
        "nbits": 4, "group_size": 64, "axis": 1, "compute_dtype": "float32", "include": ["*"], "exclude": ["lm_head"],
    }
    assert HQQ.name == "hqq" and HQQ.env == "torch" and HQQ.quantizes
    assert "hqq" in HQQ.requires and "pip install hqq" in HQQ.install_hint
    json.dumps(HQQ.info())


@pytest.mark.parametrize("nbits", [1, 2, 3, 4, 8, "4"])
def test_allowed_nbits(nbits):
    assert HQQ.schema.normalize({"nbits": nbits})["nbits"] == int(nbits)


@pytest.mark.parametrize("nbits", [5, 6, 0, 16, "four"])
def test_other_nbits_are_refused_naming_nbits_and_the_allowed_values(nbits):
    with pytest.raises(InvalidParams) as e:
        HQQ.schema.normalize({"nbits": nbits})
    (err,) = e.value.errors
    assert err.param == "nbits"
    assert "one of 1, 2, 3, 4, 8" in err.message and str(nbits) in err.message


@pytest.mark.parametrize("gs", [-1, 8, 32, 64, 128, 1024])
def test_valid_group_sizes(gs):
    assert HQQ.schema.normalize({"group_size": gs})["group_size"] == gs


@pytest.mark.parametrize("gs", [0, 4, 12, 100, -2])
def test_invalid_group_sizes_say_what_is_allowed(gs):
    _, errors = HQQ.schema.errors({"group_size": gs})
    assert [x.param for x in errors] == ["group_size"]
    assert str(gs) in errors[0].message
    assert "multiple of 8" in errors[0].message or "[-1" in errors[0].message


def test_axis_and_compute_dtype_are_choices():
    assert HQQ.schema.normalize({"axis": "0"})["axis"] == 0
    _, errors = HQQ.schema.errors({"axis": 2, "compute_dtype": "float64"})
    assert {x.param for x in errors} == {"axis", "compute_dtype"}
    by = {x.param: x.message for x in errors}
    assert "one of 0, 1" in by["axis"] and "float32, bfloat16, float16" in by["compute_dtype"]


def test_all_errors_at_once():
    _, errors = HQQ.schema.errors({"nbits": 5, "axis": 3, "colour": 1})
    assert {x.param for x in errors} == {"nbits", "axis", "colour"}


def test_group_sizes_follow_hqq_rule_on_flattened_weights():
    info = smollm2_like()
    # hqq groups the flattened weight: 128 does not divide 576 but divides 576 x 576 and the rest.
    assert HQQ().check_model({"group_size": 128}, info) == []
    assert HQQ().check_model({"group_size": 64, "axis": 0}, info) == []
    assert HQQ().check_model({"group_size": -1}, info) == []
    (err,) = HQQ().check_model({"group_size": 40}, info)  # 40 = 8 x 5; no layer has a factor 5
    assert err.param == "group_size" and "number of weights" in err.message
    assert "model.layers.0.self_attn.q_proj: 331776" in err.message
    assert "64" in err.message.split("divide every selected layer:")[1]


def test_a_layer_that_does_not_fit_is_named_only_when_selected():
    info = types.SimpleNamespace(linear_layers={"a": (8, 64), "lm_head": (10, 12)})
    assert HQQ().check_model({"group_size": 16}, info) == []
    (err,) = HQQ().check_model({"group_size": 16, "exclude": []}, info)
    assert "lm_head: 120" in err.message and "8" in err.message.split("divide every selected layer:")[1]
    (err,) = HQQ().check_model({"exclude": ["*"]}, info)
    assert err.param == "include"


def test_helpers():
    assert hqq_group_size(-1) is None and hqq_group_size(64) == 64
    assert storage_bits(3) == 3.2 and storage_bits(4) == 4


def test_code_is_python_with_the_parameters():
    text = HQQ().code("HuggingFaceTB/SmolLM2-135M-Instruct", {"nbits": 3, "group_size": -1, "axis": 0})
    compile(text, "<hqq code>", "exec")
    assert "BaseQuantizeConfig(nbits=3, group_size=None, axis=0)" in text
    assert "HQQLinear(" in text and "compute_dtype=dtype" in text


@requires_torch_env
def test_session_refuses_nbits_5_before_any_worker(store_path):
    from workbench.session import Session

    session = Session(store=store_path, progress=False)
    with pytest.raises(InvalidParams) as e:
        session.validate(session.make_spec("smollm2-135m", "hqq", {"nbits": 5}))
    assert [x.param for x in e.value.errors] == ["nbits"]
    assert "1, 2, 3, 4, 8" in str(e.value)
    ok = session.validate(session.make_spec("smollm2-135m", "hqq", {"nbits": "8", "group_size": "128"}))
    assert ok.params["nbits"] == 8 and ok.params["group_size"] == 128
