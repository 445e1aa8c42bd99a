"""The OpenVINO methods' schemas and validation, in the kernel (no torch, no OpenVINO)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from workbench.errors import InvalidParams
from workbench.methods.openvino import common
from workbench.methods.openvino.export import OVExport
from workbench.methods.openvino.static import OVStatic
from workbench.methods.openvino.weight import OVWeight

from . import schema_errors
from .test_rtn_schema import smollm2_like


def errors(params, model=None):
    return schema_errors.errors(OVWeight, params, model)


def test_modules_import_neither_torch_nor_openvino():
    code = ("import sys, workbench.methods.openvino.weight, workbench.methods.openvino.static, "
            "workbench.methods.openvino.export, workbench.methods.openvino.hybrid; print(any(m in sys.modules for m in ('torch', 'openvino', 'nncf')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_defaults_info_and_environment():
    assert OVWeight.schema.defaults() == {"bits": 8, "sym": False, "inference_precision": "f32"}
    assert OVExport.schema.defaults() == {"inference_precision": "f32"}
    assert OVStatic.schema.defaults()["dataset"] == "pydoc-topics"
    for cls in (OVExport, OVWeight, OVStatic):
        assert cls.env == "openvino" and cls.backend == "openvino" and "nncf" in cls.requires
        json.dumps(cls.info())
    assert not OVExport().is_reference({"inference_precision": "f32"})  # compared with the reference, never it


def test_four_bit_defaults_follow_the_probe():
    p = OVWeight.schema.normalize({"bits": 4})
    assert p["dtype"] == "int4" and p["group_size"] == 64 and p["group_size_fallback"] == "error"
    assert p["ratio"] == 1.0 and p["dataset"] is None and not any(p[k] for k in ("awq", "gptq", "lora_correction"))
    assert set(OVWeight.schema.get("dtype").choices) >= {"int4", "nf4"}


@pytest.mark.parametrize("params, name, allowed", [
    ({"bits": 3}, "bits", "one of 8, 4"),
    ({"bits": 4, "ratio": 1.5}, "ratio", "[0, 1]"),
    ({"bits": 4, "ratio": -0.1}, "ratio", "[0, 1]"),
    ({"bits": 4, "dtype": "fp4"}, "dtype", "int4"),
    ({"bits": 4, "group_size": -2}, "group_size", "[-1, inf]"),
    ({"bits": 4, "group_size_fallback": "skip"}, "group_size_fallback", "error, ignore, adjust"),
    ({"bits": 4, "sensitivity_metric": "l2"}, "sensitivity_metric", "weight_quantization_error"),
    ({"bits": 4, "backup_precision": "int4"}, "backup_precision", "int8_asym"),
    ({"inference_precision": "fp32"}, "inference_precision", "f32, bf16, f16"),
])
def test_bad_values_name_the_parameter_and_the_allowed_values(params, name, allowed):
    with pytest.raises(InvalidParams) as e:
        OVWeight.schema.normalize(params)
    assert e.value.errors[0].param == name and allowed in str(e.value)


@pytest.mark.parametrize("option", ["group_size", "ratio", "awq", "dtype", "all_layers", "dataset"])
def test_four_bit_options_on_an_eight_bit_run_are_refused(option):
    value = {"group_size": 32, "ratio": 0.5, "awq": True, "dtype": "nf4", "all_layers": True,
             "dataset": "pydoc-topics"}[option]
    assert errors({"bits": 8, option: value}) == [(option, "only applies when bits=4")]


@pytest.mark.parametrize("option", ["awq", "scale_estimation", "gptq", "lora_correction"])
def test_data_aware_options_need_a_dataset(option):
    [(name, msg)] = errors({"bits": 4, option: True})
    assert name == "dataset" and option in msg and "pydoc-topics" in msg
    assert errors({"bits": 4, option: True, "dataset": "pydoc-topics"}) == []


def test_gptq_and_lora_correction_exclude_each_other():
    [(name, msg)] = errors({"bits": 4, "gptq": True, "lora_correction": True, "dataset": "pydoc-topics"})
    assert name == "gptq" and "lora_correction" in msg


def test_lora_rank_only_with_lora_correction():
    assert errors({"bits": 4, "lora_rank": 16}) == [("lora_rank", "only applies when bits=4, lora_correction=true")]
    p = OVWeight.schema.normalize({"bits": 4, "lora_correction": True, "lora_rank": 16, "dataset": "pydoc-topics"})
    assert p["lora_rank"] == 16


def test_dataset_must_be_a_workbench_source(monkeypatch, tmp_path):
    [(name, msg)] = errors({"bits": 4, "awq": True, "dataset": "wikitext2"})
    assert name == "dataset" and "file:PATH" in msg and "hub:NAME" in msg
    hub = {"bits": 4, "awq": True, "dataset": "hub:wikitext/wikitext-2-raw-v1"}
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert errors(hub) == []  # online: loaded (or refused) by the worker
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    [(name, msg)] = errors(hub)  # offline and not cached: refused before any worker
    assert name == "dataset" and "offline (HF_HUB_OFFLINE)" in msg and "allowed offline: pydoc-topics" in msg
    (tmp_path / "hub" / "datasets--wikitext").mkdir(parents=True)
    assert errors(hub) == []  # offline from the cache


def test_mxfp4_rules():
    assert errors({"bits": 4, "dtype": "mxfp4", "group_size": 32}) == []
    [(name, msg)] = errors({"bits": 4, "dtype": "mxfp4"})
    assert name == "dtype" and "32" in msg
    [(name, msg)] = errors({"bits": 4, "dtype": "mxfp4", "group_size": 32, "awq": True, "dataset": "pydoc-topics"})
    assert name == "dtype" and "awq" in msg


def test_sensitivity_metric_needs_ratio_below_one_and_data_for_activation_metrics():
    assert "ratio < 1" in errors({"bits": 4, "sensitivity_metric": "weight_quantization_error"})[0][1]
    assert errors({"bits": 4, "ratio": 0.8, "sensitivity_metric": "weight_quantization_error"}) == []
    [(name, msg)] = errors({"bits": 4, "ratio": 0.8, "sensitivity_metric": "hessian_input_activation"})
    assert name == "sensitivity_metric" and "dataset" in msg


def test_group_size_128_is_refused_on_smollm2_naming_the_576_wide_layers():
    [(name, msg)] = errors({"bits": 4, "group_size": 128}, smollm2_like())
    assert name == "group_size" and "576" in msg and "q_proj" in msg and "64" in msg
    assert "group_size_fallback" in msg
    # lm_head stays in the backup precision unless all_layers: it does not take part in the check.
    assert errors({"bits": 4, "group_size": 64}, smollm2_like()) == []
    assert errors({"bits": 4, "group_size": 192, "all_layers": True}, smollm2_like()) == []
    # An explicit fallback mode lets NNCF handle the layers that do not fit.
    assert errors({"bits": 4, "group_size": 128, "group_size_fallback": "adjust"}, smollm2_like()) == []


def test_data_aware_options_are_for_causal_lms():
    encoder = types.SimpleNamespace(kind="encoder", name="minilm-l6", linear_layers={"encoder.l.0": (384, 384)})
    [(name, msg)] = errors({"bits": 4, "awq": True, "dataset": "pydoc-topics"}, encoder)
    assert name == "awq" and "encoder" in msg


def test_dtype_choices_come_from_the_environment_probe(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    assert common.probe_values() is common.FALLBACK_PROBE
    probe = tmp_path / "envs" / "openvino" / common.manager.PROBE_FILE
    probe.parent.mkdir(parents=True)
    probe.write_text(json.dumps({"weight_dtypes_4bit": ["int4", "nf4"], "sensitivity_metrics": ["weight_quantization_error"]}))
    assert OVWeight.schema.get("dtype").choices == ("int4", "nf4")
    with pytest.raises(InvalidParams, match="dtype: got cb4; allowed: one of int4, nf4"):
        OVWeight.schema.normalize({"bits": 4, "dtype": "cb4"})
    # Keys the probe did not record fall back to the documented lists.
    assert "int8_asym" in OVWeight.schema.get("backup_precision").choices


def test_static_schema():
    assert OVStatic.schema.normalize({"num_samples": "64", "sym": "true"})["num_samples"] == 64
    with pytest.raises(InvalidParams, match="dataset"):
        OVStatic.schema.normalize({"dataset": "c4"})
    with pytest.raises(InvalidParams, match="smooth_quant_alpha"):
        OVStatic.schema.normalize({"smooth_quant_alpha": 1.5})


def test_code_is_plain_optimum_intel():
    code = OVWeight().code("HuggingFaceTB/SmolLM2-135M-Instruct",
                           {"bits": 4, "awq": True, "scale_estimation": True, "dataset": "pydoc-topics"})
    assert "OVWeightQuantizationConfig(" in code and "quant_method='awq'" in code and "scale_estimation=True" in code
    compile(code, "<code>", "exec")
    for cls in (OVExport, OVStatic):
        compile(cls().code("m", cls.schema.defaults()).replace("calibration_texts", "[]"), "<code>", "exec")


def test_a_calibration_file_that_is_not_there_is_refused_in_validation(tmp_path):
    missing = tmp_path / "calib.txt"
    [(name, msg)] = errors({"bits": 4, "awq": True, "dataset": f"file:{missing}"})
    assert name == "dataset" and "no such file" in msg
    missing.write_text("some calibration text\n")
    assert errors({"bits": 4, "awq": True, "dataset": f"file:{missing}"}) == []
    with pytest.raises(InvalidParams, match="no such file"):
        OVStatic.schema.normalize({"dataset": f"file:{tmp_path / 'other.jsonl'}"})


def test_a_small_ir_is_compressed_on_nncfs_numpy_path_unless_the_user_chose(tmp_path, monkeypatch):
    from workbench.methods.openvino import weight

    monkeypatch.delenv("NNCF_DISABLE_OPTIMIZED_COMPRESSION", raising=False)
    assert weight._prefer_numpy_compression(tmp_path) is False  # no weights: nothing to decide
    (tmp_path / "openvino_model.bin").write_bytes(b"\0" * 1024)
    assert weight._prefer_numpy_compression(tmp_path) is True
    assert os.environ["NNCF_DISABLE_OPTIMIZED_COMPRESSION"] == "1"
    monkeypatch.setenv("NNCF_DISABLE_OPTIMIZED_COMPRESSION", "")  # set by the user, even empty: theirs
    assert weight._prefer_numpy_compression(tmp_path) is False
    assert os.environ["NNCF_DISABLE_OPTIMIZED_COMPRESSION"] == ""
    monkeypatch.delenv("NNCF_DISABLE_OPTIMIZED_COMPRESSION")
    monkeypatch.setattr(weight, "SMALL_IR_BYTES", 1000)
    assert weight._prefer_numpy_compression(tmp_path) is False  # a large model keeps the compiled path
