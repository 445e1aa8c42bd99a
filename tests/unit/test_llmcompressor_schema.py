"""llm-compressor and the pre-quantized loaders: schemas and kernel-side checks (no torch)."""
from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import types

import pytest

from workbench import registry
from workbench.methods.llmcompressor import LLMCompressor, ignore_regex
from workbench.methods.prequantized import (AQLM, HIGGS, VPTQ, CompressedTensors, SpQR, checkpoint_weight_bytes,
                                            quantization_config)

from .schema_errors import errors
from .test_rtn_schema import smollm2_like

SMOL_CONFIG = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,
               "vocab_size": 49152}



def test_modules_import_no_backend():
    code = ("import sys, workbench.methods.llmcompressor, workbench.methods.prequantized; "
            "print(any(m in sys.modules for m in ('torch', 'transformers', 'llmcompressor', 'compressed_tensors')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_defaults_and_visibility():
    d = LLMCompressor.schema.defaults()
    assert d["scheme"] == "W4A16" and d["modifier"] == "rtn" and d["group_size"] == 64 and d["ignore"] == ["lm_head"]
    assert "num_samples" not in d and "dampening_frac" not in d and "n_grid" not in d  # rtn needs no data
    gptq = LLMCompressor.schema.normalize({"modifier": "gptq"})
    assert gptq["num_samples"] == 64 and gptq["seq_len"] == 512 and gptq["actorder"] == "static"
    assert "n_grid" not in gptq
    w8a8 = LLMCompressor.schema.normalize({"scheme": "W8A8"})
    assert "group_size" not in w8a8 and "sym" not in w8a8
    assert LLMCompressor.env == CompressedTensors.env == AQLM.env == "llmcompressor"


@pytest.mark.parametrize("params,param,text", [
    ({"scheme": "W8A8", "modifier": "gptq"}, "modifier", "needs an integer weight-only scheme"),
    ({"scheme": "FP8_DYNAMIC", "modifier": "awq"}, "modifier", "use modifier=rtn"),
    ({"modifier": "gptq", "dataset": " "}, "dataset", "needs a dataset"),
    ({"modifier": "awq", "dataset": "file:/no/such/file.txt"}, "dataset", "/no/such/file.txt"),
    ({"scheme": "W3A16"}, "scheme", "W8A8, W4A16, W8A16, FP8_DYNAMIC"),
    ({"modifier": "spinquant"}, "modifier", "rtn, gptq, awq"),
    ({"modifier": "gptq", "dampening_frac": 1.5}, "dampening_frac", "[0, 1]"),
    ({"modifier": "gptq", "actorder": "random"}, "actorder", "static, group, weight, off"),
    ({"modifier": "awq", "n_grid": 0}, "n_grid", "[1, 100]"),
    ({"modifier": "gptq", "num_samples": 0}, "num_samples", "[1, 4096]"),
    ({"modifier": "gptq", "seq_len": 8}, "seq_len", "[16, 8192]"),
    ({"scheme": "W8A8", "group_size": 32}, "group_size", "only applies when scheme="),
    ({"dampening_frac": 0.1}, "dampening_frac", "only applies when modifier=gptq"),
    ({"group_size": -2}, "group_size", "[-1, inf]"),
])
def test_bad_values_are_named(params, param, text):
    errs = errors(LLMCompressor, params)
    assert any(p == param and text in m for p, m in errs), errs


def test_group_size_that_does_not_divide_smollm2_is_refused_before_any_worker():
    errs = errors(LLMCompressor, {"group_size": 128}, smollm2_like())
    assert errs and errs[0][0] == "group_size"
    assert "does not divide the input dimension 576" in errs[0][1] and "64" in errs[0][1]
    assert errors(LLMCompressor, {"group_size": 64}, smollm2_like()) == []
    assert errors(LLMCompressor, {"group_size": -1}, smollm2_like()) == []
    # 144 divides 576 but not down_proj's 1536 -- unless down_proj is ignored
    assert errors(LLMCompressor, {"group_size": 144}, smollm2_like())[0][0] == "group_size"
    assert errors(LLMCompressor, {"group_size": 144, "ignore": ["lm_head", "*.down_proj"]}, smollm2_like()) == []
    # W8A8 is per channel: group sizes do not apply
    assert errors(LLMCompressor, {"scheme": "W8A8"}, smollm2_like()) == []


def test_ignore_that_leaves_nothing_is_refused():
    errs = errors(LLMCompressor, {"ignore": ["*"]}, smollm2_like())
    assert errs[0][0] == "ignore" and "ignore=['*'] leaves none of the 211 linear layers" in errs[0][1]


def test_ignore_patterns_become_regexes_that_match_like_fnmatch():
    names = ["lm_head", "model.layers.3.mlp.down_proj", "model.layers.3.mlp.up_proj"]
    for pat in ("lm_head", "*.down_proj", "model.layers.?.mlp.*"):
        rx = ignore_regex(pat)
        assert rx.startswith("re:")
        import fnmatch
        assert [n for n in names if re.match(rx[3:], n)] == [n for n in names if fnmatch.fnmatchcase(n, pat)]


@pytest.mark.parametrize("params", [{}, {"modifier": "gptq", "actorder": "off"}, {"modifier": "awq", "sym": False},
                                    {"scheme": "W8A8"}, {"scheme": "W4A16", "group_size": -1}])
def test_code_is_valid_python_naming_the_recipe(params):
    code = LLMCompressor().code("HuggingFaceTB/SmolLM2-135M-Instruct", params)
    compile(code, "<code>", "exec")
    assert "oneshot(" in code and "save_compressed=True" in code
    if params.get("modifier") == "gptq":
        assert "GPTQModifier(" in code and "actorder=None" in code
    if params.get("modifier") == "awq":
        assert "AWQModifier(" in code and "symmetric=False" in code


# --- pre-quantized loaders ---------------------------------------------------


def write_checkpoint(path, quant_method="compressed-tensors", config=SMOL_CONFIG, tensors=True):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": quant_method,
                                                                                    "format": "pack-quantized"}}))
    if tensors:
        header = {"a": {"dtype": "I32", "shape": [4, 2], "data_offsets": [0, 32]},
                  "b": {"dtype": "F32", "shape": [3], "data_offsets": [32, 44]}, "__metadata__": {"format": "pt"}}
        raw = json.dumps(header).encode()
        (path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(44))
    return path


def model_info(config=SMOL_CONFIG):
    return types.SimpleNamespace(config=dict(config), linear_layers={})


def test_checkpoint_bytes_are_read_from_the_safetensors_headers(tmp_path):
    ck = write_checkpoint(tmp_path / "ck")
    assert checkpoint_weight_bytes(ck) == 44
    assert quantization_config(ck)["quant_method"] == "compressed-tensors"
    assert quantization_config(tmp_path) is None


def test_checkpoint_checks_name_what_is_wrong(tmp_path):
    ok = write_checkpoint(tmp_path / "ok")
    assert errors(CompressedTensors, {"checkpoint": str(ok)}, model_info()) == []
    cases = {
        "": "empty",
        str(tmp_path / "missing"): "no config.json",
        str(write_checkpoint(tmp_path / "gptq", "gptq")): "is a 'gptq' checkpoint; method 'compressed-tensors' loads",
        str(write_checkpoint(tmp_path / "bin", tensors=False)): "no .safetensors weights",
        str(write_checkpoint(tmp_path / "other", config={**SMOL_CONFIG, "hidden_size": 64})): "hidden_size 64 vs 576",
    }
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps(SMOL_CONFIG))
    cases[str(tmp_path / "plain")] = "no quantization_config"
    for value, text in cases.items():
        errs = errors(CompressedTensors, {"checkpoint": value}, model_info())
        assert errs and errs[0][0] == "checkpoint" and text in errs[0][1], (value, errs)
    sparse = write_checkpoint(tmp_path / "sparse")
    config = json.loads((sparse / "config.json").read_text())
    config["quantization_config"]["sparsity_config"] = {"format": "sparse-24-bitmask"}
    (sparse / "config.json").write_text(json.dumps(config))
    errs = errors(CompressedTensors, {"checkpoint": str(sparse)}, model_info())
    assert errs and "sparse format 'sparse-24-bitmask'" in errs[0][1] and "compressed-tensors <= 0.14" in errs[0][1]
    aqlm = write_checkpoint(tmp_path / "aqlm", "aqlm")
    assert errors(AQLM, {"checkpoint": str(aqlm)}, model_info()) == []


@pytest.mark.skipif(registry.cuda_present(), reason="this machine has a GPU")
def test_gpu_only_formats_are_listed_unavailable_with_the_reason():
    rows = {r["name"]: r for r in registry.describe_all()}
    for cls, text in ((SpQR, "GPU is required to run SpQR"), (VPTQ, "libcudart"), (HIGGS, "only supported on GPU")):
        row = rows[cls.name]
        assert not row["available"] and "runs only on an NVIDIA GPU" in row["reason"] and text in row["reason"]
