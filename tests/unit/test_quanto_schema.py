"""The quanto method's schema and model checks, in the kernel (no torch)."""
from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from workbench.errors import InvalidParams
from workbench.methods.quanto import Quanto, kernel_description

SCHEMA = Quanto.schema


def test_module_does_not_import_torch():
    code = "import sys, workbench.methods.quanto; print('torch' in sys.modules, 'optimum' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_defaults():
    assert SCHEMA.defaults() == {"weights": "int8", "activations": None, "exclude": ["lm_head"]}
    assert Quanto.name == "quanto" and Quanto.env == "torch" and set(Quanto.devices) == {"cpu", "cuda"}
    assert "optimum-quanto" in Quanto.requires and "pip install optimum-quanto" in Quanto.install_hint
    json.dumps(Quanto.info())


@pytest.mark.parametrize("weights", ["int2", "int4", "int8", "float8", "INT4"])
def test_weight_types(weights):
    assert SCHEMA.normalize({"weights": weights})["weights"] == weights.lower()


@pytest.mark.parametrize("weights", ["int3", "nf4", "float16", 8])
def test_bad_weight_types_name_the_choices(weights):
    _, errors = SCHEMA.errors({"weights": weights})
    assert [e.param for e in errors] == ["weights"]
    assert "int2, int4, int8, float8" in errors[0].message


def test_activations_none_int8_float8():
    assert SCHEMA.normalize({"activations": "none"})["activations"] is None
    p = SCHEMA.normalize({"activations": "int8"})
    assert p == {"weights": "int8", "activations": "int8", "calibration_samples": 8, "exclude": ["lm_head"]}
    assert SCHEMA.normalize({"activations": "float8", "calibration_samples": "2"})["calibration_samples"] == 2
    with pytest.raises(InvalidParams) as e:
        SCHEMA.normalize({"activations": "int4"}, "quanto")
    assert "activations" in str(e.value) and "int8, float8 or none" in str(e.value)


def test_calibration_samples_only_with_quantized_activations():
    _, errors = SCHEMA.errors({"calibration_samples": 4})
    assert [e.param for e in errors] == ["calibration_samples"]
    assert "activations=int8 or float8" in errors[0].message
    _, errors = SCHEMA.errors({"activations": "int8", "calibration_samples": 0})
    assert [e.param for e in errors] == ["calibration_samples"] and "[1, 1024]" in errors[0].message


def test_float8_is_available_on_cpu():
    # torch 2.13 CPU runs quanto's float8 weights and activations (checked on tiny-llama and tiny-bert).
    for p in ({"weights": "float8"}, {"weights": "int8", "activations": "float8"}):
        assert Quanto().unavailable_reason(SCHEMA.normalize(p), "cpu") is None


def test_exclude_that_leaves_nothing_is_refused():
    info = types.SimpleNamespace(linear_layers={"model.layers.0.mlp.up_proj": (8, 8), "lm_head": (10, 8)})
    (err,) = Quanto().check_model({"exclude": ["*"]}, info)
    assert err.param == "exclude" and "none of the 2 linear layers" in err.message
    assert Quanto().check_model({"exclude": ["lm_head", "*.down_proj"]}, info) == []
    assert Quanto().check_model({}, types.SimpleNamespace(linear_layers={})) == []


def test_kernel_descriptions_say_what_runs():
    assert "torch._int_mm" in kernel_description("int8", "int8", "cpu")
    assert "dequantized per call" in kernel_description("int4", None, "cpu")
    assert "float8" in kernel_description("float8", None, "cpu") and "CPU" in kernel_description("float8", None, "cpu")
    assert "CUDA" in kernel_description("int8", None, "cuda:0")


@pytest.mark.parametrize("params,expected", [
    ({"weights": "int4"}, ["weights=qint4", "activations=None", "freeze(model)"]),
    ({"weights": "int8", "activations": "int8"}, ["weights=qint8", "activations=qint8", "Calibration("]),
])
def test_code_is_python_with_the_parameters(params, expected):
    text = Quanto().code("HuggingFaceTB/SmolLM2-135M-Instruct", params)
    compile(text, "<quanto code>", "exec")
    for e in expected:
        assert e in text
