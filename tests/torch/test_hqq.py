"""The hqq method on tiny models: HQQLinear layers, numbers, packed bytes, save/load, code."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel

from workbench.errors import InvalidParams
from workbench.measure.memory import module_weight_bytes
from workbench.methods.hqq import HQQ, load_quantized

pytestmark = pytest.mark.torch

pytest.importorskip("hqq")
from hqq.core.quantize import HQQLinear  # noqa: E402
from tiny import Ctx, cosine, ids, logits  # noqa: E402


def test_build_replaces_the_selected_layers_and_counts_them(tiny_llama):
    ctx = Ctx(tiny_llama)
    built = HQQ().build(ctx, {"nbits": 4, "group_size": 64})
    model = built.model
    assert built.layers_eligible == 15 and built.layers_quantized == 14
    assert sum(isinstance(m, HQQLinear) for m in model.modules()) == 14
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight is model.model.embed_tokens.weight
    assert "HQQLinear" in built.kernel and "PyTorch backend" in built.kernel
    assert any("lm_head" in n for n in built.notes)
    assert any("4-bit" in n and "group of 64" in n for n in built.notes)
    fractions = [f for s, f in ctx.progress_calls if s == "quantize"]
    assert fractions[0] == 0 and fractions[-1] == 1.0 and fractions == sorted(fractions)


def test_the_model_computes_with_hqqs_dequantized_weights(tiny_llama):
    built = HQQ().build(Ctx(tiny_llama), {"nbits": 3, "group_size": 32, "axis": 0})
    oracle = Ctx(tiny_llama).load_model()
    with torch.no_grad():
        for name, m in built.model.named_modules():
            if isinstance(m, HQQLinear):
                oracle.get_submodule(name).weight.copy_(m.dequantize())
    got, ref, fp = logits(built.model), logits(oracle), logits(Ctx(tiny_llama).load_model())
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert (got - fp).abs().max() > 1e-2  # 3 bits: clearly not the float model


def test_fewer_bits_move_further_from_fp32(tiny_llama):
    fp = logits(Ctx(tiny_llama).load_model())
    sim = {}
    for nbits in (8, 4, 2):
        built = HQQ().build(Ctx(tiny_llama), {"nbits": nbits, "group_size": 64})
        got = logits(built.model)
        assert torch.isfinite(got).all()
        sim[nbits] = cosine(got, fp)
    assert sim[8] > 0.9995 and sim[8] > sim[4] > sim[2] and sim[4] > 0.9
    assert built.model.generate(ids(4)[:1], max_new_tokens=4, do_sample=False).shape == (1, 8)


@pytest.mark.parametrize("nbits,code_bytes", [(4, lambda n: n // 2), (3, lambda n: -(-n // 640) * 64 * 4),
                                              (8, lambda n: n)])
def test_weights_bytes_are_packed_codes_plus_scale_and_zero_per_group(tiny_llama, nbits, code_bytes):
    fp32 = Ctx(tiny_llama).load_model()
    fp32_bytes = module_weight_bytes(fp32)
    built = HQQ().build(Ctx(tiny_llama), {"nbits": nbits, "group_size": 64})
    replaced, expected = 0, 0
    for name, m in fp32.named_modules():
        if isinstance(m, torch.nn.Linear) and name != "lm_head":
            n = m.weight.numel()
            replaced += n * 4
            # codes as hqq packs them (3 bits: ten to an int32, per column of the (n/64, 64) view),
            # then a float32 scale and zero point per group of 64 weights
            expected += code_bytes(n) + (n // 64) * 2 * 4
    layer = built.model.model.layers[0].mlp.up_proj  # one layer by hand: 128 x 64
    assert layer.meta["scale"].numel() == layer.meta["zero"].numel() == 128 * 64 // 64
    assert layer.meta["scale"].dtype == torch.float32
    assert module_weight_bytes(built.model) == fp32_bytes - replaced + expected
    assert built.weights_bytes is None
    # get_memory_footprint() sees parameters and buffers only: it misses the scales and zeros in `meta`.
    assert built.weights_bytes_claimed == module_weight_bytes(built.model, include_attributes=False)
    assert module_weight_bytes(built.model) - built.weights_bytes_claimed == sum(
        (m.weight.numel() // 64) * 2 * 4 for n, m in fp32.named_modules()
        if isinstance(m, torch.nn.Linear) and n != "lm_head")


@pytest.mark.parametrize("params", [
    {"nbits": 4, "group_size": 64},
    {"nbits": 3, "group_size": 32, "axis": 0, "exclude": []},
    {"nbits": 8, "group_size": -1, "compute_dtype": "bfloat16"},
    {"nbits": 2, "group_size": 16, "compute_dtype": "float16"},
])
def test_save_and_load_round_trip(tiny_llama, tmp_path, params):
    ctx = Ctx(tiny_llama)
    built = HQQ().build(ctx, params)
    built.save(tmp_path / "q")
    files = {p.name for p in (tmp_path / "q").iterdir()}
    assert {"model.safetensors", "quant_config.json", "config.json"} <= files
    config = json.loads((tmp_path / "q" / "quant_config.json").read_text())
    assert config["nbits"] == params["nbits"] and len(config["layers"]) == built.layers_quantized
    reloaded = HQQ().load_saved(ctx, params, tmp_path / "q")
    assert sum(isinstance(m, HQQLinear) for m in reloaded.modules()) == built.layers_quantized
    got, want = logits(reloaded), logits(built.model)
    assert torch.isfinite(want).all() and torch.equal(got, want)
    if params.get("exclude") == []:
        assert isinstance(reloaded.lm_head, HQQLinear) and reloaded.config.tie_word_embeddings is False
    assert (tmp_path / "q" / "model.safetensors").stat().st_size < module_weight_bytes(built.model) + 64 * 1024


def test_load_refuses_a_foreign_directory(tiny_llama, tmp_path):
    (tmp_path / "quant_config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a workbench hqq checkpoint"):
        load_quantized(Ctx(tiny_llama).load_model(), tmp_path)


def test_build_refuses_group_sizes_hqq_cannot_use(tiny_llama):
    # k_proj and v_proj hold 32 x 64 = 2048 weights: 24 does not divide them.
    with pytest.raises(InvalidParams) as e:
        HQQ().build(Ctx(tiny_llama), {"group_size": 24})
    assert [x.param for x in e.value.errors] == ["group_size"] and "2048" in str(e.value)


def test_encoder_layers_are_all_quantized(tiny_bert, tmp_path):
    ctx = Ctx(tiny_bert, AutoModel)
    built = HQQ().build(ctx, {"nbits": 8, "group_size": 64})
    assert built.layers_eligible == built.layers_quantized == 13
    x = ids(12, vocab=256)
    with torch.no_grad():
        a = built.model(input_ids=x).last_hidden_state
        b = Ctx(tiny_bert, AutoModel).load_model()(input_ids=x).last_hidden_state
    assert cosine(a, b) > 0.999
    built.save(tmp_path / "q")
    with torch.no_grad():
        c = HQQ().load_saved(ctx, {"nbits": 8}, tmp_path / "q")(input_ids=x).last_hidden_state
    assert torch.equal(a, c)


def test_code_runs_and_gives_the_same_model(tiny_llama):
    params = {"nbits": 4, "group_size": 32, "exclude": ["lm_head", "*.o_proj"]}
    scope: dict = {}
    exec(HQQ().code(str(tiny_llama), params), scope)
    built = HQQ().build(Ctx(tiny_llama), params)
    assert sum(isinstance(m, HQQLinear) for m in scope["model"].modules()) == built.layers_quantized == 12
    torch.testing.assert_close(logits(scope["model"]), logits(built.model), atol=0, rtol=0)
