"""The torchao method on tiny models: counting, numbers, real bytes, save/load, refusals, code."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel

from workbench.errors import InvalidParams, MethodUnavailable
from workbench.measure.memory import module_weight_bytes
from workbench.methods.torchao import TorchAO

pytestmark = pytest.mark.torch

torchao = pytest.importorskip("torchao")
from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor  # noqa: E402
from torchao.quantization.quantize_.workflows.int8.int8_tensor import Int8Tensor  # noqa: E402
from tiny import Ctx, cosine, ids, logits  # noqa: E402

CPU_SCHEMES = ("int8_weight_only", "int8_dynamic", "float8_weight_only")


def test_build_counts_the_weights_that_became_subclasses(tiny_llama):
    ctx = Ctx(tiny_llama)
    built = TorchAO().build(ctx, {"scheme": "int8_weight_only"})
    model = built.model
    kinds = {n: type(m.weight) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert len(kinds) == built.layers_eligible == 15
    assert built.layers_quantized == 14 == sum(k is Int8Tensor for k in kinds.values())
    assert kinds["lm_head"] is torch.nn.Parameter and model.lm_head.weight is model.model.embed_tokens.weight
    assert "int8 weight-only" in built.kernel and "CPU" in built.kernel
    assert any("lm_head" in n for n in built.notes)
    fractions = [f for s, f in ctx.progress_calls if s == "quantize"]
    assert fractions[0] == 0 and fractions[-1] == 1.0 and len(fractions) == 15


def test_include_selects_layers_and_a_pattern_that_matches_nothing_is_refused(tiny_llama):
    built = TorchAO().build(Ctx(tiny_llama), {"scheme": "int8_dynamic", "include": ["*.mlp.*"]})
    assert built.layers_quantized == 6
    assert isinstance(built.model.model.layers[0].mlp.up_proj.weight, Int8Tensor)
    assert not isinstance(built.model.model.layers[0].self_attn.q_proj.weight, Int8Tensor)
    with pytest.raises(InvalidParams) as e:
        TorchAO().build(Ctx(tiny_llama), {"include": ["nothing*"]})
    assert [x.param for x in e.value.errors] == ["include"]


@pytest.mark.parametrize("scheme,min_cos", [("int8_weight_only", 0.9995), ("int8_dynamic", 0.999),
                                            ("float8_weight_only", 0.995)])
def test_outputs_are_close_to_fp32_but_not_equal(tiny_llama, scheme, min_cos):
    built = TorchAO().build(Ctx(tiny_llama), {"scheme": scheme})
    got, fp = logits(built.model), logits(Ctx(tiny_llama).load_model())
    assert torch.isfinite(got).all()
    assert cosine(got, fp) > min_cos
    assert (got - fp).abs().max() > 1e-4
    assert built.model.generate(ids(4)[:1], max_new_tokens=4, do_sample=False).shape == (1, 8)


def test_weights_bytes_are_the_int8_data_and_scales_not_the_claimed_fp32(tiny_llama):
    fp32 = Ctx(tiny_llama).load_model()
    fp32_bytes = module_weight_bytes(fp32)
    built = TorchAO().build(Ctx(tiny_llama), {"scheme": "int8_weight_only"})
    # By hand: int8 codes (out x in), a float32 scale and an int8 zero point per output row.
    replaced_fp32, expected_q = 0, 0
    for name, m in fp32.named_modules():
        if isinstance(m, torch.nn.Linear) and name != "lm_head":
            replaced_fp32 += m.weight.numel() * 4
            expected_q += m.out_features * m.in_features + m.out_features * (4 + 1)
    w = built.model.model.layers[0].mlp.up_proj.weight  # one layer, opened by hand
    assert (w.qdata.dtype, w.scale.dtype, w.zero_point.dtype) == (torch.int8, torch.float32, torch.int8)
    assert w.qdata.numel() + w.scale.numel() * 4 + w.zero_point.numel() == 128 * 64 + 128 * 5
    assert module_weight_bytes(built.model) == fp32_bytes - replaced_fp32 + expected_q
    assert built.weights_bytes is None  # the measurement counts it right
    assert built.weights_bytes_claimed == fp32.get_memory_footprint()  # what transformers says: the fp32 size
    assert built.weights_bytes_claimed > module_weight_bytes(built.model)


@pytest.mark.parametrize("params", [
    {"scheme": "int8_weight_only"},
    {"scheme": "int8_dynamic"},
    {"scheme": "float8_weight_only", "exclude": []},
])
def test_save_and_load_round_trip(tiny_llama, tmp_path, params):
    ctx = Ctx(tiny_llama)
    built = TorchAO().build(ctx, params)
    built.save(tmp_path / "q")
    files = {p.name for p in (tmp_path / "q").iterdir()}
    assert {"model.safetensors", "config.json", "quant_config.json"} <= files
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "torchao"
    reloaded = TorchAO().load_saved(ctx, params, tmp_path / "q")
    cls = Float8Tensor if params["scheme"].startswith("float8") else Int8Tensor
    n = sum(isinstance(m.weight, cls) for m in reloaded.modules() if isinstance(m, torch.nn.Linear))
    assert n == built.layers_quantized
    assert torch.equal(logits(reloaded), logits(built.model))
    if params.get("exclude") == []:
        assert built.layers_quantized == 15 and isinstance(reloaded.lm_head.weight, cls)
        assert reloaded.model.embed_tokens.weight is not reloaded.lm_head.weight
    else:
        assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    # On disk: the int8/float8 data, not float copies.
    assert (tmp_path / "q" / "model.safetensors").stat().st_size < module_weight_bytes(built.model) + 64 * 1024


def test_cpu_refuses_int4_and_float8_dynamic_before_touching_torchao(tiny_llama):
    for scheme, text in (("int4_weight_only", "no CPU path"), ("float8_dynamic", "8.9")):
        with pytest.raises(MethodUnavailable, match=text):
            TorchAO().build(Ctx(tiny_llama), {"scheme": scheme})


def test_int4_really_has_no_cpu_path_in_this_torchao(tiny_llama):
    """The fact behind the refusal: every int4 layout of torchao 0.18 fails on a CPU tensor."""
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    failures = 0
    for fmt in ("plain", "plain_int32", "tile_packed_to_4d", "preshuffled"):
        layer = torch.nn.Linear(64, 64, dtype=torch.bfloat16)
        try:
            quantize_(layer, Int4WeightOnlyConfig(group_size=32, int4_packing_format=fmt))
            layer(torch.randn(2, 64, dtype=torch.bfloat16))
        except Exception:  # noqa: BLE001 - ImportError (mslk), NotImplementedError, AssertionError (CUDA)
            failures += 1
    assert failures == 4


def test_encoder_layers_are_quantized_and_round_trip(tiny_bert, tmp_path):
    ctx = Ctx(tiny_bert, AutoModel)
    built = TorchAO().build(ctx, {"scheme": "int8_dynamic"})
    assert built.layers_eligible == built.layers_quantized == 13  # 6 per layer x 2 + pooler
    x = ids(12, vocab=256)
    with torch.no_grad():
        a = built.model(input_ids=x).last_hidden_state
        b = Ctx(tiny_bert, AutoModel).load_model()(input_ids=x).last_hidden_state
    assert cosine(a, b) > 0.999
    built.save(tmp_path / "q")
    with torch.no_grad():
        c = TorchAO().load_saved(ctx, {"scheme": "int8_dynamic"}, tmp_path / "q")(input_ids=x).last_hidden_state
    assert torch.equal(a, c)


def test_code_runs_and_gives_the_same_model(tiny_llama):
    params = {"scheme": "int8_dynamic", "exclude": ["lm_head", "*.down_proj"]}
    scope: dict = {}
    exec(TorchAO().code(str(tiny_llama), params), scope)
    built = TorchAO().build(Ctx(tiny_llama), params)
    n = sum(isinstance(m.weight, Int8Tensor) for m in scope["model"].modules() if isinstance(m, torch.nn.Linear))
    assert n == built.layers_quantized == 12
    assert torch.equal(logits(scope["model"]), logits(built.model))
