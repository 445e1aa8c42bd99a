"""The torchao method's schema, device refusals and shape checks, in the kernel (no torch)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from workbench.errors import InvalidParams, MethodUnavailable
from workbench.methods.torchao import NO_CPU, SCHEMES, TorchAO

from ..conftest import requires_torch_env
from .test_rtn_schema import smollm2_like


def test_module_does_not_import_torch():
    code = "import sys, workbench.methods.torchao; print('torch' in sys.modules, 'torchao' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_defaults_and_info():
    assert TorchAO.schema.defaults() == {"scheme": "int8_weight_only", "include": ["*"], "exclude": ["lm_head"]}
    assert TorchAO.name == "torchao" and TorchAO.env == "torch" and TorchAO.quantizes
    assert "torchao" in TorchAO.requires and "pip install torchao" in TorchAO.install_hint
    info = json.loads(json.dumps(TorchAO.info()))
    assert [p["name"] for p in info["params"]] == ["scheme", "group_size", "include", "exclude"]


def test_unknown_scheme_is_refused_with_the_allowed_schemes():
    with pytest.raises(InvalidParams) as e:
        TorchAO.schema.normalize({"scheme": "int3"})
    (err,) = e.value.errors
    assert err.param == "scheme" and "int3" in err.message
    for s in SCHEMES:
        assert s in err.message


def test_group_size_shows_only_for_int4():
    p = TorchAO.schema.normalize({"scheme": "int4_weight_only"})
    assert p["group_size"] == 64
    assert TorchAO.schema.normalize({"scheme": "int4_weight_only", "group_size": "128"})["group_size"] == 128
    assert "group_size" not in TorchAO.schema.normalize({"scheme": "int8_dynamic"})
    # a group size on a scheme that has none is a contradiction, named as such
    _, errors = TorchAO.schema.errors({"scheme": "int8_weight_only", "group_size": 128})
    assert [x.param for x in errors] == ["group_size"]
    assert "scheme=int4_weight_only" in errors[0].message
    assert TorchAO.schema.get("group_size").is_visible({"scheme": "int4_weight_only"})
    assert not TorchAO.schema.get("group_size").is_visible({"scheme": "float8_weight_only"})


@pytest.mark.parametrize("gs", [16, 100, 512, -1])
def test_int4_group_size_outside_the_kernel_sizes_is_refused(gs):
    _, errors = TorchAO.schema.errors({"scheme": "int4_weight_only", "group_size": gs})
    assert [x.param for x in errors] == ["group_size"]
    assert "32, 64, 128, 256" in errors[0].message


def test_cpu_refuses_int4_and_float8_dynamic_with_the_reason():
    m = TorchAO()
    r = m.unavailable_reason({"scheme": "int4_weight_only", "group_size": 64}, "cpu")
    assert r and "int4_weight_only" in r and "no CPU path" in r and "0.18" in r and "hqq" in r
    r = m.unavailable_reason({"scheme": "float8_dynamic"}, "cpu")
    assert r and "compute capability >= 8.9" in r and "float8_weight_only" in r
    for ok in ("int8_weight_only", "int8_dynamic", "float8_weight_only"):
        assert m.unavailable_reason({"scheme": ok}, "cpu") is None
    for scheme in SCHEMES:  # on CUDA the capability is checked in build(), where torch can ask the GPU
        assert m.unavailable_reason({"scheme": scheme}, "cuda") is None
        assert m.unavailable_reason({"scheme": scheme}, "cuda:1") is None
    assert set(NO_CPU) == {"int4_weight_only", "float8_dynamic"}


def test_int4_group_128_on_smollm2_names_576_and_the_sizes_that_fit():
    (err,) = TorchAO().check_model({"scheme": "int4_weight_only", "group_size": 128}, smollm2_like())
    assert err.param == "group_size"
    assert "576" in err.message and "180 layers" in err.message and "silently" in err.message
    assert err.message.split("divide every selected layer:")[1].strip().startswith("32, 64")
    assert TorchAO().check_model({"scheme": "int4_weight_only", "group_size": 64}, smollm2_like()) == []
    # int8 has no group size: nothing to check
    assert TorchAO().check_model({"scheme": "int8_weight_only"}, smollm2_like()) == []


def test_patterns_that_select_nothing_are_refused():
    (err,) = TorchAO().check_model({"include": ["q_proj"]}, smollm2_like())
    assert err.param == "include" and "*.q_proj" in err.message


def test_code_is_python_naming_the_config_class():
    for scheme, cls in (("int8_weight_only", "Int8WeightOnlyConfig()"),
                        ("int8_dynamic", "Int8DynamicActivationInt8WeightConfig()"),
                        ("float8_weight_only", "Float8WeightOnlyConfig()")):
        text = TorchAO().code("HuggingFaceTB/SmolLM2-135M-Instruct", {"scheme": scheme})
        compile(text, "<torchao code>", "exec")
        assert f"quantize_(model, {cls}, filter_fn=filter_fn)" in text
    text = TorchAO().code("m", {"scheme": "int4_weight_only", "group_size": 32})
    assert "Int4WeightOnlyConfig(group_size=32" in text and "cuda" in text


@requires_torch_env
def test_session_refuses_int4_on_cpu_before_any_worker(store_path):
    from workbench.session import Session

    session = Session(store=store_path, progress=False)
    with pytest.raises(MethodUnavailable, match="no CPU path"):
        session.validate(session.make_spec("tiny-llama", "torchao", {"scheme": "int4_weight_only"}))
    with pytest.raises(MethodUnavailable, match="8.9"):
        session.validate(session.make_spec("tiny-llama", "torchao", {"scheme": "float8_dynamic"}))
    with pytest.raises(InvalidParams) as e:  # the shape error comes first, naming the parameter
        session.validate(session.make_spec("smollm2-135m", "torchao", {"scheme": "int4_weight_only",
                                                                       "group_size": 128}))
    assert [x.param for x in e.value.errors] == ["group_size"]
    ok = session.validate(session.make_spec("smollm2-135m", "torchao", {"scheme": "int8_dynamic"}))
    assert ok.params == {"scheme": "int8_dynamic", "include": ["*"], "exclude": ["lm_head"]}
