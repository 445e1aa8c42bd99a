"""The ONNX Runtime methods' schemas and validation, in the kernel (no torch, no onnx)."""
from __future__ import annotations

import subprocess
import sys
import types

import pytest

from workbench.methods.ort import runtime
from workbench.methods.ort.dynamic import ORTDynamic
from workbench.methods.ort.export import ORTExport
from workbench.methods.ort.int4 import ORTInt4
from workbench.methods.ort.static import ORTStatic

from .schema_errors import errors
from .test_rtn_schema import smollm2_like

METHODS = (ORTExport, ORTDynamic, ORTStatic, ORTInt4)


def minilm_like() -> types.SimpleNamespace:
    layers = {}
    for i in range(6):
        base = f"encoder.layer.{i}"
        for n in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                  "intermediate.dense", "output.dense"):
            layers[f"{base}.{n}"] = (384, 384)
    layers["pooler.dense"] = (384, 384)
    return types.SimpleNamespace(linear_layers=layers, name="minilm-l6")



def test_modules_import_neither_torch_nor_onnx():
    code = ("import sys, workbench.methods.ort.export, workbench.methods.ort.dynamic, workbench.methods.ort.static, "
            "workbench.methods.ort.int4, workbench.methods.ort.runtime; "
            "print(any(m in sys.modules for m in ('torch', 'onnx', 'onnxruntime', 'optimum', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_defaults_environment_and_kinds():
    assert ORTExport.schema.defaults() == {"fix_config": True}
    assert ORTDynamic.schema.defaults() == {"preset": "avx512_vnni", "per_channel": True,
                                            "operators": ["MatMul", "Gather"], "exclude": []}
    s = ORTStatic.schema.defaults()
    assert s["calibration"] == "minmax" and s["num_samples"] == 64 and "percentile" not in s and "num_bins" not in s
    assert ORTInt4.schema.defaults() == {"block_size": 32, "sym": False, "accuracy_level": 4, "embedding": False,
                                         "lm_head": "fp32", "exclude": []}
    for cls in METHODS:
        assert cls.env == "onnx" and cls.backend == "onnxruntime" and "onnxruntime" in cls.requires
    assert ORTStatic.model_kinds == ("encoder",)


@pytest.mark.parametrize("cls,params,param,needle", [
    (ORTExport, {"fix_config": "maybe"}, "fix_config", "true or false"),
    (ORTDynamic, {"preset": "sse4"}, "preset", "avx512_vnni, avx512, avx2, arm64"),
    (ORTDynamic, {"per_channel": 2}, "per_channel", "true or false"),
    (ORTDynamic, {"reduce_range": True}, "reduce_range", "only applies when preset=avx512 or avx2"),
    (ORTDynamic, {"operators": ["MatMul", "Softmax"]}, "operators", "Softmax cannot be quantized"),
    (ORTDynamic, {"operators": []}, "operators", "empty; allowed"),
    (ORTDynamic, {"operators": "MatMul", "exclude": 3}, "exclude", "a list of strings"),
    (ORTStatic, {"calibration": "kl"}, "calibration", "minmax, entropy, percentile"),
    (ORTStatic, {"calibration": "percentile", "percentile": 80}, "percentile", "[90, 100]"),
    (ORTStatic, {"percentile": 99.9}, "percentile", "only applies when calibration=percentile"),
    (ORTStatic, {"calibration": "entropy", "num_bins": 64}, "num_bins", "[128, 8192]"),
    (ORTStatic, {"num_samples": 0}, "num_samples", "[1, 4096]"),
    (ORTStatic, {"num_samples": "many"}, "num_samples", "not an integer"),
    (ORTStatic, {"sym_activations": "perhaps"}, "sym_activations", "true or false"),
    (ORTStatic, {"operators": ["MatMul", "Attention"]}, "operators", "Attention cannot be quantized"),
    (ORTStatic, {"calibration": "entropy", "operators": ["MatMul", "Where"]}, "operators", "Too many bins"),
    (ORTStatic, {"calibration": "percentile", "operators": ["Where"]}, "operators", "drop Where"),
    (ORTStatic, {"dataset": "file:/no/such/file.txt"}, "dataset", "/no/such/file.txt"),
    (ORTStatic, {"preset": "arm64", "reduce_range": True}, "reduce_range", "only applies when preset"),
    (ORTInt4, {"block_size": 48}, "block_size", "16, 32, 64, 128, 256"),
    (ORTInt4, {"accuracy_level": 5}, "accuracy_level", "0, 1, 2, 3, 4"),
    (ORTInt4, {"lm_head": "int2"}, "lm_head", "fp32, int8, int4"),
    (ORTInt4, {"sym": "no way"}, "sym", "true or false"),
    (ORTInt4, {"embedding": None}, "embedding", "must not be empty"),
    (ORTInt4, {"bits": 3}, "bits", "unknown parameter; allowed: block_size"),
])
def test_each_bad_value_is_refused_naming_the_parameter(cls, params, param, needle):
    errs = errors(cls, params)
    assert errs, f"{cls.name} accepted {params}"
    assert errs[0][0] == param and needle in errs[0][1], errs


def test_minmax_may_calibrate_where_and_reduce_range_applies_to_avx2():
    assert errors(ORTStatic, {"operators": ["MatMul", "Where"]}) == []
    assert errors(ORTDynamic, {"preset": "avx2", "reduce_range": True}) == []
    assert ORTDynamic.schema.normalize({"preset": "avx2"})["reduce_range"] is False


def test_exclude_patterns_are_checked_against_the_model_layers():
    smol, minilm = smollm2_like(), minilm_like()
    assert errors(ORTDynamic, {"exclude": ["*.down_proj"]}, smol) == []
    (param, msg), = errors(ORTDynamic, {"exclude": ["*.down_prj"]}, smol)
    assert param == "exclude" and "'*.down_prj' matches none of the 211" in msg and "q_proj" in msg
    assert errors(ORTDynamic, {"exclude": ["/model/layers.0/mlp/down_proj/MatMul"]}, smol) == []  # a node name
    (param, msg), = errors(ORTInt4, {"exclude": ["*"]}, smol)
    assert param == "exclude" and "leaves no linear layer" in msg
    # The static default names BERT's and Llama's FFN output projections: one of them always matches nothing.
    assert errors(ORTStatic, {}, minilm) == []
    from workbench.methods.ort.common import excluded_modules

    picked = excluded_modules(ORTStatic.schema.defaults()["exclude"], minilm.linear_layers)
    assert picked == [f"encoder.layer.{i}.output.dense" for i in range(6)]  # not attention.output.dense


def test_module_names_map_to_the_exporters_node_names():
    assert runtime.matmul_node("encoder.layer.0.output.dense") == "/encoder/layer.0/output/dense/MatMul"
    assert runtime.matmul_node("model.layers.11.mlp.down_proj") == "/model/layers.11/mlp/down_proj/MatMul"
    assert runtime.matmul_node("lm_head") == "/lm_head/MatMul"
    found, missing = runtime.nodes_for_modules(["lm_head", "pooler.dense"], ["/lm_head/MatMul", "/x/Gather"])
    assert found == ["/lm_head/MatMul"] and missing == ["pooler.dense"]


class _Seen:
    def __init__(self, rope_theta=10000.0, rope_scaling=None):
        self.rope_theta, self.rope_scaling = rope_theta, rope_scaling


def test_harmonize_config_writes_rope_parameters_the_way_transformers_4_reads_them():
    v5 = {"model_type": "llama", "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}
    fixed, notes = runtime.harmonize_config(v5, _Seen())
    assert fixed["rope_theta"] == 100000.0 and "rope_scaling" not in fixed and v5.get("rope_theta") is None
    assert len(notes) == 1 and "rope_theta=10000.0" in notes[0] and "100000.0" in notes[0]
    # Already consistent (the workbench's converted SmolLM2 has both keys): nothing to change.
    both = dict(v5, rope_theta=100000.0)
    assert runtime.harmonize_config(both, _Seen(100000.0)) == (both, [])
    # A scaled RoPE becomes rope_scaling; a config without rope_parameters is left alone.
    llama3 = {"rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0}}
    fixed, notes = runtime.harmonize_config(llama3, _Seen(500000.0))
    assert fixed["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0} and len(notes) == 1
    assert runtime.harmonize_config({"rope_theta": 1.0}, _Seen()) == ({"rope_theta": 1.0}, [])


@pytest.mark.parametrize("cls", METHODS)
def test_code_shows_the_library_calls(cls):
    code = cls().code("HuggingFaceTB/SmolLM2-135M-Instruct", {})
    compile(code, cls.name, "exec")
    assert "optimum.onnxruntime" in code
