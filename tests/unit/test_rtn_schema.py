"""The rtn method's schema and shape checks, in the kernel (no torch)."""
from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from workbench.errors import InvalidParams
from workbench.methods.layers import group_sizes_dividing, select_layers
from workbench.methods.rtn import RTN, valid_group_size


def smollm2_like() -> types.SimpleNamespace:
    """The linear layers of SmolLM2-135M (hidden 576, intermediate 1536, 30 layers, lm_head)."""
    layers: dict[str, tuple[int, int]] = {}
    for i in range(30):
        a, m = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        layers.update({
            f"{a}.q_proj": (576, 576), f"{a}.k_proj": (192, 576), f"{a}.v_proj": (192, 576),
            f"{a}.o_proj": (576, 576), f"{m}.gate_proj": (1536, 576), f"{m}.up_proj": (1536, 576),
            f"{m}.down_proj": (576, 1536),
        })
    layers["lm_head"] = (49152, 576)
    # check_model may only rely on `.linear_layers`.
    return types.SimpleNamespace(linear_layers=layers)


def test_module_does_not_import_torch():
    # A fresh interpreter: another test importing torch must not hide a regression.
    code = "import sys, workbench.methods.rtn; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_defaults():
    assert RTN.schema.defaults() == {
        "bits": 4, "sym": True, "group_size": 64, "include": ["*"], "exclude": ["lm_head"],
    }
    assert RTN.quantizes and RTN.name == "rtn" and RTN.env == "torch"
    assert set(RTN.devices) == {"cpu", "cuda"}
    json.dumps(RTN.info())  # the kernel ships this to the UI and the CLI


def test_bits_out_of_range_is_refused_with_the_allowed_range():
    with pytest.raises(InvalidParams) as e:
        RTN.schema.normalize({"bits": 9})
    (err,) = e.value.errors
    assert err.param == "bits"
    assert "[2, 8]" in err.message and "9" in err.message
    _, errors = RTN.schema.errors({"bits": 1})
    assert [x.param for x in errors] == ["bits"]


def test_cli_strings_are_coerced():
    p = RTN.schema.normalize({"bits": "8", "sym": "false", "group_size": "-1", "exclude": "lm_head, *.down_proj"})
    assert p["bits"] == 8 and p["sym"] is False and p["group_size"] == -1
    assert p["exclude"] == ["lm_head", "*.down_proj"]
    assert RTN.schema.normalize({"sym": "true"})["sym"] is True
    _, errors = RTN.schema.errors({"sym": "maybe"})
    assert [x.param for x in errors] == ["sym"]


@pytest.mark.parametrize("gs", [-1, 0, 8, 32, 64, 128, 192])
def test_valid_group_sizes(gs):
    assert RTN.schema.normalize({"group_size": gs})["group_size"] == gs
    assert valid_group_size(gs)


@pytest.mark.parametrize("gs", [-2, 1, 5, 12, 100])
def test_invalid_group_sizes_say_what_is_allowed(gs):
    _, errors = RTN.schema.errors({"group_size": gs})
    assert [x.param for x in errors] == ["group_size"]
    msg = errors[0].message
    assert str(gs) in msg and ("multiple of 8" in msg or "[-1" in msg)


def test_group_size_128_on_smollm2_is_refused_naming_576_and_suggesting_64():
    errors = RTN().check_model(RTN.schema.normalize({"group_size": 128}), smollm2_like())
    assert len(errors) == 1
    (err,) = errors
    assert err.param == "group_size"
    assert "576" in err.message
    assert "180 layers" in err.message  # q, k, v, o, gate, up of 30 blocks; down_proj (1536) is fine
    assert "model.layers.0.self_attn.q_proj" in err.message
    suggested = err.message.split("divide every selected layer:")[1].split(";")[0]
    assert "64" in [s.strip() for s in suggested.split(",")]
    assert "128" not in suggested


def test_matching_group_sizes_pass():
    info = smollm2_like()
    for gs in (64, 32, -1, 0):
        assert RTN().check_model({"group_size": gs}, info) == []
    # 128 divides 1536: fine when only the down projections are selected.
    assert RTN().check_model({"group_size": 128, "include": ["*.down_proj"]}, info) == []


def test_lm_head_matters_for_the_check_only_when_selected():
    info = types.SimpleNamespace(linear_layers={"a": (8, 64), "lm_head": (100, 72)})
    assert RTN().check_model({"group_size": 64}, info) == []
    (err,) = RTN().check_model({"group_size": 64, "exclude": []}, info)
    assert err.param == "group_size" and "72" in err.message and "lm_head" in err.message
    assert "8" in err.message.split("divide every selected layer:")[1]  # gcd(64, 72) = 8


def test_patterns_that_select_nothing_are_an_include_error_listing_layers():
    info = smollm2_like()
    (err,) = RTN().check_model({"include": ["q_proj"]}, info)
    assert err.param == "include"
    assert "model.layers.0.self_attn.q_proj" in err.message and "*.q_proj" in err.message
    (err,) = RTN().check_model({"exclude": ["*"]}, info)
    assert err.param == "include"


def test_unknown_shapes_are_left_to_build():
    assert RTN().check_model({"group_size": 128}, types.SimpleNamespace(linear_layers={})) == []


def test_select_layers_uses_full_names():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj", "lm_head"]
    assert select_layers(names, ["*"], ["lm_head"]) == names[:2]
    assert select_layers(names, ["*.q_proj"], []) == names[:1]
    assert select_layers(names, ["q_proj"], []) == []
    assert select_layers(names, ["*"], ["*mlp*", "lm_head"]) == names[:1]


def test_group_sizes_dividing():
    assert group_sizes_dividing([576, 1536]) == [192, 96, 64, 48, 32, 24, 16, 8]
    assert group_sizes_dividing([100]) == []
    assert group_sizes_dividing([64, 72]) == [8]


def test_code_is_python_with_the_parameters():
    text = RTN().code("HuggingFaceTB/SmolLM2-135M-Instruct", {"bits": "3", "sym": "false", "group_size": 32})
    compile(text, "<rtn code>", "exec")
    assert "bits=3, sym=False, group_size=32" in text
    assert "'HuggingFaceTB/SmolLM2-135M-Instruct'" in text
