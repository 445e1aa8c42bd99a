"""GPTQ (GPTQModel) and AWQ (AutoAWQ): schemas and kernel-side checks (no torch)."""
from __future__ import annotations

import subprocess
import sys
import types

import pytest

from workbench.methods.awq import AWQ
from workbench.methods.gptq import GPTQ

from .schema_errors import errors
from .test_rtn_schema import smollm2_like



def smollm2(model_type="llama"):
    m = smollm2_like()
    m.config = {"model_type": model_type}
    return m


def test_modules_import_no_backend():
    code = ("import sys, workbench.methods.gptq, workbench.methods.awq; "
            "print(any(m in sys.modules for m in ('torch', 'transformers', 'gptqmodel', 'awq')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_defaults():
    g = GPTQ.schema.defaults()
    assert (g["bits"], g["group_size"], g["desc_act"], g["sym"], g["damp_percent"], g["kernel"]) == \
        (4, 64, False, True, 0.05, "default")
    assert g["dataset"] == "pydoc-topics" and g["num_samples"] == 64 and g["seq_len"] == 512
    a = AWQ.schema.defaults()
    assert (a["bits"], a["group_size"], a["zero_point"], a["version"], a["do_fuse"]) == (4, 64, True, "gemm", False)
    assert "fuse_max_seq_len" not in a and GPTQ.env == AWQ.env == "gptq"
    assert errors(GPTQ, {}, smollm2()) == [] and errors(AWQ, {}, smollm2()) == []


@pytest.mark.parametrize("cls,params,param,text", [
    (GPTQ, {"bits": 5}, "bits", "one of 2, 3, 4, 8"),
    (GPTQ, {"damp_percent": -0.1}, "damp_percent", "[0, 1]"),
    (GPTQ, {"kernel": "exllama"}, "kernel", "exllama_v1, exllama_v2"),
    (GPTQ, {"bits": 8, "kernel": "gptq_torch_aten"}, "kernel", "runs 4-bit checkpoints, not bits=8"),
    (GPTQ, {"bits": 4, "kernel": "torch_int8"}, "kernel", "runs 8-bit checkpoints"),
    (GPTQ, {"sym": False, "kernel": "marlin"}, "kernel", "marlin needs sym=true"),
    (GPTQ, {"dataset": ""}, "dataset", "needs a dataset"),
    (GPTQ, {"dataset": "file:/nowhere.txt"}, "dataset", "/nowhere.txt"),
    (GPTQ, {"num_samples": 0}, "num_samples", "[1, 4096]"),
    (GPTQ, {"seq_len": 4}, "seq_len", "[16, 8192]"),
    (AWQ, {"bits": 3}, "bits", "one of 4"),
    (AWQ, {"version": "exllama"}, "version", "gemm, gemv"),
    (AWQ, {"do_fuse": True, "version": "gemv"}, "do_fuse", "take GEMM checkpoints"),
    (AWQ, {"fuse_max_seq_len": 1024}, "fuse_max_seq_len", "only applies when do_fuse=true"),
    (AWQ, {"do_fuse": True, "fuse_max_seq_len": 8}, "fuse_max_seq_len", "[16, 32768]"),
    (AWQ, {"kernel": "gemv"}, "kernel", "set version=gemv"),
    (AWQ, {"version": "gemv"}, "kernel", "cannot run GEMV checkpoints"),
    (AWQ, {"kernel": "marlin"}, "kernel", "set zero_point=false"),
    (AWQ, {"group_size": 4}, "group_size", "[8, inf]"),
    (AWQ, {"clip": "yes"}, "clip", "auto, on, off"),
])
def test_bad_values_are_named(cls, params, param, text):
    errs = errors(cls, params)
    assert any(p == param and text in m for p, m in errs), errs


@pytest.mark.parametrize("cls", [GPTQ, AWQ])
def test_smollm2_group_size_128_is_refused_with_the_sizes_that_fit(cls):
    errs = errors(cls, {"group_size": 128}, smollm2())
    assert errs[0][0] == "group_size" and "does not divide the input dimension 576" in errs[0][1]
    assert "64" in errs[0][1]


def test_awq_clip_and_fused_modules_depend_on_the_model():
    tiny = types.SimpleNamespace(config={"model_type": "llama"},
                                 linear_layers={"model.layers.0.self_attn.k_proj": (32, 64),
                                                "model.layers.0.self_attn.q_proj": (64, 64)})
    errs = errors(AWQ, {"clip": "on"}, tiny)
    assert errs[0][0] == "clip" and "multiples of 64" in errs[0][1] and "k_proj" in errs[0][1]
    assert errors(AWQ, {}, tiny) == [] and errors(AWQ, {"clip": "off"}, tiny) == []  # auto: off there, said so
    errs = errors(AWQ, {"do_fuse": True}, smollm2("gpt_neox"))
    assert errs[0][0] == "do_fuse" and "llama, mistral" in errs[0][1]


def test_cuda_only_choices_are_unavailable_on_cpu_with_the_reason():
    assert "runs only on CUDA" in GPTQ().unavailable_reason({"kernel": "marlin"}, "cpu")
    assert GPTQ().unavailable_reason({"kernel": "default"}, "cpu") is None
    assert "flash-attn" in AWQ().unavailable_reason({"do_fuse": True}, "cpu")
    assert "runs only on CUDA" in AWQ().unavailable_reason({"kernel": "exllama_v2"}, "cpu")
    assert AWQ().unavailable_reason({}, "cpu") is None


@pytest.mark.parametrize("cls,params", [(GPTQ, {}), (GPTQ, {"bits": 8, "group_size": -1}), (AWQ, {}),
                                        (AWQ, {"do_fuse": True})])
def test_code_is_valid_python(cls, params):
    code = cls().code("HuggingFaceTB/SmolLM2-135M-Instruct", params)
    compile(code, "<code>", "exec")
    assert ("fuse_layers=True" in code) == bool(params.get("do_fuse"))
