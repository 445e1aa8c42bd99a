"""The bnb method's schema, device refusals and model checks, in the kernel (no torch)."""
from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from workbench.errors import InvalidParams
from workbench.methods.bnb import BitsAndBytes, device_map_covers, skip_pattern_matches

SCHEMA = BitsAndBytes.schema


def smollm2_like() -> types.SimpleNamespace:
    layers: dict[str, tuple[int, int]] = {}
    for i in range(30):
        a, m = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        layers.update({f"{a}.q_proj": (576, 576), f"{a}.k_proj": (192, 576), f"{a}.v_proj": (192, 576),
                       f"{a}.o_proj": (576, 576), f"{m}.gate_proj": (1536, 576), f"{m}.up_proj": (1536, 576),
                       f"{m}.down_proj": (576, 1536)})
    layers["lm_head"] = (49152, 576)
    return types.SimpleNamespace(linear_layers=layers)


def test_module_does_not_import_torch():
    code = "import sys, workbench.methods.bnb; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_defaults_are_llm_int8_with_transformers_skips():
    assert SCHEMA.defaults() == {
        "bits": 8, "llm_int8_threshold": 6.0, "llm_int8_skip_modules": None, "llm_int8_enable_fp32_cpu_offload": False,
    }
    assert BitsAndBytes.name == "bnb" and BitsAndBytes.env == "torch" and set(BitsAndBytes.devices) == {"cpu", "cuda"}
    assert "bitsandbytes" in BitsAndBytes.requires and "pip install bitsandbytes" in BitsAndBytes.install_hint
    json.dumps(BitsAndBytes.info())


def test_4bit_defaults_show_only_4bit_options():
    p = SCHEMA.normalize({"bits": "4"})
    assert p == {"bits": 4, "llm_int8_skip_modules": None, "llm_int8_enable_fp32_cpu_offload": False,
                 "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32", "bnb_4bit_use_double_quant": True}
    assert "llm_int8_threshold" not in p


@pytest.mark.parametrize("bits", [3, 16, "2", "eight"])
def test_bad_bits_are_refused_naming_the_choices(bits):
    _, errors = SCHEMA.errors({"bits": bits})
    assert [e.param for e in errors] == ["bits"]
    assert "8, 4" in errors[0].message and str(bits) in errors[0].message


def test_bits_3_through_normalize_raises_invalid_params():
    with pytest.raises(InvalidParams) as e:
        SCHEMA.normalize({"bits": 3}, "bnb")
    assert "bits" in str(e.value) and "8, 4" in str(e.value)


@pytest.mark.parametrize("name,value", [
    ("bnb_4bit_quant_type", "fp4"),
    ("bnb_4bit_compute_dtype", "bfloat16"),
    ("bnb_4bit_use_double_quant", False),
])
def test_4bit_options_on_an_8bit_run_are_refused(name, value):
    _, errors = SCHEMA.errors({"bits": 8, name: value})
    assert [e.param for e in errors] == [name]
    assert "only applies when bits=4" in errors[0].message


def test_threshold_on_a_4bit_run_is_refused_and_its_default_is_tolerated():
    _, errors = SCHEMA.errors({"bits": 4, "llm_int8_threshold": 2.0})
    assert [e.param for e in errors] == ["llm_int8_threshold"]
    assert "bits=8" in errors[0].message
    # The default value is not a contradiction (a form may send every field).
    assert SCHEMA.errors({"bits": 4, "llm_int8_threshold": 6.0})[1] == []


@pytest.mark.parametrize("value", [-1, "-0.5", "nan", "high"])
def test_bad_thresholds(value):
    _, errors = SCHEMA.errors({"llm_int8_threshold": value})
    assert [e.param for e in errors] == ["llm_int8_threshold"]
    assert "[0, inf]" in errors[0].message


def test_threshold_zero_and_strings_are_accepted():
    assert SCHEMA.normalize({"llm_int8_threshold": "0"})["llm_int8_threshold"] == 0.0
    assert SCHEMA.normalize({"llm_int8_threshold": "2.5"})["llm_int8_threshold"] == 2.5


@pytest.mark.parametrize("name,value,allowed", [
    ("bnb_4bit_quant_type", "int4", "nf4, fp4"),
    ("bnb_4bit_compute_dtype", "float64", "float32, bfloat16, float16"),
    ("bnb_4bit_use_double_quant", "maybe", "true or false"),
])
def test_bad_4bit_values_name_the_allowed_values(name, value, allowed):
    _, errors = SCHEMA.errors({"bits": 4, name: value})
    assert [e.param for e in errors] == [name]
    assert allowed in errors[0].message


def test_all_errors_are_reported_at_once():
    _, errors = SCHEMA.errors({"bits": 4, "bnb_4bit_quant_type": "int4", "bnb_4bit_compute_dtype": "x", "nope": 1})
    assert sorted(e.param for e in errors) == ["bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "nope"]


def test_skip_modules_list_from_the_cli_and_none():
    assert SCHEMA.normalize({"llm_int8_skip_modules": "lm_head, model.layers.0"})["llm_int8_skip_modules"] == [
        "lm_head", "model.layers.0"]
    assert SCHEMA.normalize({"llm_int8_skip_modules": "none"})["llm_int8_skip_modules"] is None
    assert SCHEMA.normalize({"llm_int8_skip_modules": ""})["llm_int8_skip_modules"] == []


def test_a_broken_regex_in_skip_modules_is_refused():
    _, errors = SCHEMA.errors({"llm_int8_skip_modules": ["model.layers.(0"]})
    assert [e.param for e in errors] == ["llm_int8_skip_modules"]
    assert "not a valid pattern" in errors[0].message


def test_cpu_offload_modules_show_only_with_offload():
    _, errors = SCHEMA.errors({"cpu_offload_modules": ["model.layers.29"]})
    assert [e.param for e in errors] == ["cpu_offload_modules"]
    assert "llm_int8_enable_fp32_cpu_offload=true" in errors[0].message
    p = SCHEMA.normalize({"llm_int8_enable_fp32_cpu_offload": "true"})
    assert p["cpu_offload_modules"] == ["lm_head"]
    _, errors = SCHEMA.errors({"llm_int8_enable_fp32_cpu_offload": True, "cpu_offload_modules": ""})
    assert [e.param for e in errors] == ["cpu_offload_modules"] and "empty" in errors[0].message


def test_fp32_cpu_offload_is_unavailable_on_cpu_with_the_reason():
    m = BitsAndBytes()
    p = SCHEMA.normalize({"llm_int8_enable_fp32_cpu_offload": True})
    reason = m.unavailable_reason(p, "cpu")
    assert reason and "llm_int8_enable_fp32_cpu_offload" in reason and "cuda" in reason and "false" in reason
    assert m.unavailable_reason(p, "cuda") is None
    assert m.unavailable_reason(p, "cuda:0") is None
    for bits in (8, 4):
        assert m.unavailable_reason(SCHEMA.normalize({"bits": bits}), "cpu") is None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_every_compute_dtype_is_available_on_cpu(dtype):
    # bitsandbytes 0.50.2 runs all three on the CPU (checked on SmolLM2: nf4 perplexity within 0.1%).
    p = SCHEMA.normalize({"bits": 4, "bnb_4bit_compute_dtype": dtype})
    assert BitsAndBytes().unavailable_reason(p, "cpu") is None


def test_transformers_skip_rule():
    name = "model.layers.11.mlp.down_proj"
    assert skip_pattern_matches(name, "model.layers.11")
    assert not skip_pattern_matches(name, "model.layers.1")
    assert skip_pattern_matches(name, "model.layers.*")
    assert skip_pattern_matches(name, "down_proj")
    assert not skip_pattern_matches(name, "mlp")  # matches the parent module only, not its linear layers
    assert skip_pattern_matches("lm_head", "lm_head")
    assert device_map_covers(name, "model.layers.11") and not device_map_covers(name, "model.layers.1")


def test_skip_patterns_that_match_no_linear_layer_are_refused():
    info = smollm2_like()
    (err,) = BitsAndBytes().check_model({"llm_int8_skip_modules": ["lm_head", "mlp"]}, info)
    assert err.param == "llm_int8_skip_modules" and "'mlp'" in err.message and "211 linear layers" in err.message
    assert "'lm_head'" not in err.message
    assert BitsAndBytes().check_model({"llm_int8_skip_modules": ["lm_head", "down_proj"]}, info) == []
    assert BitsAndBytes().check_model({}, info) == []


def test_offload_modules_must_be_modules_of_the_model():
    info = smollm2_like()
    ok = {"llm_int8_enable_fp32_cpu_offload": True, "cpu_offload_modules": ["model.layers.29", "lm_head"]}
    assert BitsAndBytes().check_model(ok, info) == []
    (err,) = BitsAndBytes().check_model({**ok, "cpu_offload_modules": ["model.layers.30"]}, info)
    assert err.param == "cpu_offload_modules" and "model.layers.30" in err.message


def test_config_kwargs_and_device_map():
    kw = BitsAndBytes.config_kwargs(SCHEMA.normalize({"bits": 8, "llm_int8_threshold": 2}))
    assert kw == {"load_in_8bit": True, "llm_int8_threshold": 2.0}
    kw = BitsAndBytes.config_kwargs(SCHEMA.normalize({"bits": 4, "bnb_4bit_quant_type": "fp4",
                                                      "llm_int8_skip_modules": ["lm_head", "model.layers.0"]}))
    assert kw == {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_compute_dtype": "float32",
                  "bnb_4bit_use_double_quant": True, "llm_int8_skip_modules": ["lm_head", "model.layers.0"]}
    p = SCHEMA.normalize({"llm_int8_enable_fp32_cpu_offload": True, "cpu_offload_modules": ["model.layers.29"]})
    assert BitsAndBytes.config_kwargs(p)["llm_int8_enable_fp32_cpu_offload"] is True
    assert BitsAndBytes.device_map(p, "cuda:0") == {"": "cuda:0", "model.layers.29": "cpu"}
    assert BitsAndBytes.device_map(SCHEMA.defaults(), "cpu") == {"": "cpu"}


@pytest.mark.parametrize("params,expected", [
    ({"bits": 8, "llm_int8_threshold": 4}, ["load_in_8bit=True", "llm_int8_threshold=4.0"]),
    ({"bits": 4, "bnb_4bit_compute_dtype": "bfloat16"}, ["load_in_4bit=True", "bnb_4bit_compute_dtype=torch.bfloat16",
                                                         "bnb_4bit_quant_type='nf4'", "bnb_4bit_use_double_quant=True"]),
])
def test_code_is_python_with_the_parameters(params, expected):
    text = BitsAndBytes().code("HuggingFaceTB/SmolLM2-135M-Instruct", params)
    compile(text, "<bnb code>", "exec")
    for e in expected:
        assert e in text
    assert "'HuggingFaceTB/SmolLM2-135M-Instruct'" in text and "BitsAndBytesConfig(" in text


def test_a_skip_list_that_would_quantize_a_tied_lm_head_is_refused():
    info = smollm2_like()
    info.config = {"tie_word_embeddings": True}
    (err,) = BitsAndBytes().check_model({"llm_int8_skip_modules": ["model.layers.0"]}, info)
    assert err.param == "llm_int8_skip_modules" and "lm_head" in err.message and "tied" in err.message
    assert BitsAndBytes().check_model({"llm_int8_skip_modules": ["lm_head", "model.layers.0"]}, info) == []
    assert BitsAndBytes().check_model({}, info) == []  # transformers' default skips it
    info.config = {"tie_word_embeddings": False}
    assert BitsAndBytes().check_model({"llm_int8_skip_modules": []}, info) == []


def test_offload_keys_that_are_plain_prefixes_of_other_modules_are_refused():
    info = smollm2_like()
    (err,) = BitsAndBytes().check_model({"llm_int8_enable_fp32_cpu_offload": True,
                                         "cpu_offload_modules": ["model.layers.1"]}, info)
    assert err.param == "cpu_offload_modules" and "model.layers.10" in err.message
    assert BitsAndBytes().check_model({"llm_int8_enable_fp32_cpu_offload": True,
                                       "cpu_offload_modules": ["model.layers.1.mlp"]}, info) == []
