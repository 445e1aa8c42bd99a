"""The bnb method on tiny models (bitsandbytes CPU backend): build, counts, bytes, save/reload, code."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

bnb = pytest.importorskip("bitsandbytes")

from workbench.errors import InvalidParams  # noqa: E402
from workbench.measure.memory import module_weight_bytes  # noqa: E402
from workbench.methods.bnb import BitsAndBytes, held_weight_bytes  # noqa: E402
from tiny import Ctx, cosine, ids, logits, save_llama  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True)
def _quiet_bitsandbytes():
    # LLM.int8 on CPU logs a cast warning on every call (the worker counts them into the result).
    logger = logging.getLogger("bitsandbytes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory) -> Path:
    """Input dimensions 128 and 256: more than one 64-weight block per row (needed to see the
    4-bit save defect, which transposes the block scales)."""
    return save_llama(tmp_path_factory.mktemp("wide-llama"), 128)


def linear_count(model) -> int:
    return sum(isinstance(m, torch.nn.Linear) for m in model.modules())


def is_packed_for_cpu(model) -> bool:
    return any(getattr(m.weight.quant_state, "packing_format_for_cpu", False)
               for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))


def test_int8_build_counts_layers_and_holds_int8(tiny_llama):
    ctx = Ctx(tiny_llama)
    built = BitsAndBytes().build(ctx, {"bits": 8})
    m = built.model
    assert built.layers_eligible == 15 == linear_count(Ctx(tiny_llama).load_model())
    assert built.layers_quantized == 14 == sum(isinstance(x, bnb.nn.Linear8bitLt) for x in m.modules())
    assert type(m.lm_head) is torch.nn.Linear and m.lm_head.weight is m.model.embed_tokens.weight
    assert any("lm_head" in n and "default" in n for n in built.notes)
    assert "LLM.int8" in built.kernel and "CPU" in built.kernel and "> 6" in built.kernel
    q = m.model.layers[0].self_attn.q_proj
    assert q.weight.dtype == torch.int8 and q.state.threshold == 6.0
    assert {"quantize"} <= set(ctx.stages)


def test_int8_weight_bytes_count_the_row_scales(tiny_llama):
    built = BitsAndBytes().build(Ctx(tiny_llama), {"bits": 8})
    layers = [x for x in built.model.modules() if isinstance(x, bnb.nn.Linear8bitLt)]
    # By hand: int8 codes (out x in bytes) held as the parameter, plus one float32 scale per output row.
    scales = sum(x.out_features * 4 for x in layers)
    assert built.weights_bytes == module_weight_bytes(built.model) + scales
    codes = sum(x.out_features * x.in_features for x in layers)
    fp32 = module_weight_bytes(Ctx(tiny_llama).load_model())
    assert built.weights_bytes == fp32 - 3 * codes + scales  # 4 bytes -> 1 byte per quantized weight
    # transformers' own figure misses the scales.
    assert built.weights_bytes_claimed == built.weights_bytes - scales


def test_int8_stays_close_and_the_threshold_reaches_the_layers(tiny_llama):
    fp = logits(Ctx(tiny_llama).load_model())
    for thr in (6.0, 0.0):
        built = BitsAndBytes().build(Ctx(tiny_llama), {"bits": 8, "llm_int8_threshold": thr})
        assert {x.state.threshold for x in built.model.modules() if isinstance(x, bnb.nn.Linear8bitLt)} == {thr}
        out = logits(built.model)
        assert torch.isfinite(out).all() and cosine(out, fp) > 0.999
    assert "no outlier decomposition" in built.kernel
    assert built.model.generate(ids(4)[:1], max_new_tokens=4, do_sample=False).shape == (1, 8)


@pytest.mark.parametrize("avx512bf16", [True, False])
def test_nf4_double_quant_bytes_by_hand(tiny_llama, avx512bf16, monkeypatch):
    import bitsandbytes.nn.modules as bnb_modules

    if not avx512bf16:  # the layout CPUs without AVX512-BF16 (and CUDA) keep
        monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: False)
    built = BitsAndBytes().build(Ctx(tiny_llama), {"bits": 4, "bnb_4bit_use_double_quant": True})
    m = built.model
    layers = [x for x in m.modules() if isinstance(x, bnb.nn.Linear4bit)]
    assert built.layers_quantized == len(layers) == 14 and built.layers_eligible == 15
    n = sum(x.out_features * x.in_features for x in layers)
    assert sum(x.weight.numel() for x in layers) == n // 2  # two 4-bit codes per byte
    blocks = n // 64
    if avx512bf16 and not bnb_modules.has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16")
    if is_packed_for_cpu(m):
        # AVX512-BF16 CPU layout: nesting undone, one bfloat16 scale per block, 16-value code, float offset.
        scales = blocks * 2 + len(layers) * (16 * 4 + 4)
        assert "AVX512-BF16" in built.kernel
        assert any("double quantization is undone" in x for x in built.notes)
    else:
        # Standard layout: uint8 scales per block, float32 absmax per 256 of them, two codes, an offset.
        scales = sum(x.out_features * x.in_features // 64 + -(-(x.out_features * x.in_features // 64) // 256) * 4
                     + 256 * 4 + 16 * 4 + 4 for x in layers)
        assert "dequantized to float32" in built.kernel
    assert built.weights_bytes == module_weight_bytes(m) + scales
    assert built.weights_bytes < module_weight_bytes(Ctx(tiny_llama).load_model())
    assert built.weights_bytes_claimed < built.weights_bytes  # get_memory_footprint() misses the scales


@pytest.mark.parametrize("quant_type,compute", [("nf4", "float32"), ("fp4", "bfloat16"), ("nf4", "float16")])
def test_4bit_outputs_are_finite_and_close(tiny_llama, quant_type, compute):
    built = BitsAndBytes().build(Ctx(tiny_llama), {"bits": 4, "bnb_4bit_quant_type": quant_type,
                                                   "bnb_4bit_compute_dtype": compute})
    out = logits(built.model)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # Random weights are hard on 4 bits; fp4 has a coarser grid than nf4 for them (0.91 vs 0.97 seen).
    assert cosine(out, logits(Ctx(tiny_llama).load_model())) > (0.95 if quant_type == "nf4" else 0.85)
    assert quant_type in built.kernel


def test_int8_save_and_reload_gives_the_same_logits(tiny_llama, tmp_path):
    built = BitsAndBytes().build(Ctx(tiny_llama), {"bits": 8, "llm_int8_threshold": 4})
    before = logits(built.model)
    built.save(tmp_path / "q")
    assert (tmp_path / "q" / "config.json").exists()
    reloaded = BitsAndBytes().load_saved(Ctx(tiny_llama), {"bits": 8, "llm_int8_threshold": 4}, tmp_path / "q")
    assert sum(isinstance(x, bnb.nn.Linear8bitLt) for x in reloaded.modules()) == 14
    assert reloaded.config.quantization_config.llm_int8_threshold == 4
    assert torch.equal(logits(reloaded), before)


def test_nf4_double_quant_reloads_within_a_rounding(wide_llama, tmp_path):
    params = {"bits": 4, "bnb_4bit_use_double_quant": True}
    built = BitsAndBytes().build(Ctx(wide_llama), params)
    before = logits(built.model)
    built.save(tmp_path / "q")
    assert torch.equal(logits(built.model), before)  # saving leaves the model in memory as it was
    after = logits(BitsAndBytes().load_saved(Ctx(wide_llama), params, tmp_path / "q"))
    # Saving from the AVX512-BF16 layout re-quantizes the block scales: close, not always identical.
    assert cosine(after, before) > 0.999


def test_4bit_without_double_quant_after_inference_saves_wrong_scales_on_avx512bf16(wide_llama, tmp_path):
    """bitsandbytes 0.50.2 defect (the docs/backends.md "fp4 reloads with perplexity 2e9"): a layer repacked
    for the AVX512-BF16 CPU kernel is saved with its plain block scales still transposed. The in-memory
    model stays right; the checkpoint does not. Where the CPU lacks AVX512-BF16 the round trip is exact."""
    params = {"bits": 4, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False}
    built = BitsAndBytes().build(Ctx(wide_llama), params)
    before = logits(built.model)
    built.save(tmp_path / "q")
    assert torch.equal(logits(built.model), before)
    after = logits(BitsAndBytes().load_saved(Ctx(wide_llama), params, tmp_path / "q"))
    if is_packed_for_cpu(built.model):
        assert any("reloads with wrong scales" in n for n in built.notes)
        assert cosine(after, before) < 0.99, "bitsandbytes fixed its save path: update the note in bnb.py"
    else:
        assert torch.equal(after, before)


def test_without_avx512bf16_4bit_dequantizes_and_round_trips(wide_llama, tmp_path, monkeypatch):
    """The other CPU path (what CPUs without AVX512-BF16 run), forced here."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: False)
    params = {"bits": 4, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False}
    built = BitsAndBytes().build(Ctx(wide_llama), params)
    assert not is_packed_for_cpu(built.model)
    assert "dequantized to float32 on every call" in built.kernel
    assert not any("AVX512-BF16" in n for n in built.notes)
    before = logits(built.model)
    built.save(tmp_path / "q")
    after = logits(BitsAndBytes().load_saved(Ctx(wide_llama), params, tmp_path / "q"))
    assert torch.equal(after, before)


def test_skip_modules_replace_transformers_default(tiny_llama):
    built = BitsAndBytes().build(Ctx(tiny_llama), {"bits": 8, "llm_int8_skip_modules": ["lm_head", "model.layers.0"]})
    assert built.layers_quantized == 7 and built.layers_eligible == 15
    assert type(built.model.model.layers[0].mlp.down_proj) is torch.nn.Linear
    assert isinstance(built.model.model.layers[1].mlp.down_proj, bnb.nn.Linear8bitLt)
    assert any("model.layers.0.self_attn.q_proj" in n for n in built.notes)


def test_a_tied_lm_head_cannot_be_quantized_and_says_why(tiny_llama):
    with pytest.raises(InvalidParams) as e:
        BitsAndBytes().build(Ctx(tiny_llama), {"bits": 8, "llm_int8_skip_modules": ["model.layers.0"]})
    (err,) = e.value.errors
    assert err.param == "llm_int8_skip_modules" and "lm_head" in err.message and "tied" in err.message


def test_encoder_layers_are_all_quantized(tiny_bert):
    built = BitsAndBytes().build(Ctx(tiny_bert, AutoModel), {"bits": 8})
    assert built.layers_eligible == built.layers_quantized == 13  # 6 per layer + pooler; no output embedding
    x = ids(12, vocab=256)
    with torch.inference_mode():
        a = built.model(input_ids=x).last_hidden_state
        b = Ctx(tiny_bert, AutoModel).load_model()(input_ids=x).last_hidden_state
    assert cosine(a, b) > 0.999


def product_tinysave_llama() -> Path:
    """The catalog's tiny-llama (it has a tokenizer, which the code template loads)."""
    from workbench.models import loader
    from workbench.spec import ModelSpec

    return loader.resolve(ModelSpec("tiny-llama"))


def test_code_runs_and_gives_the_same_model():
    params = {"bits": 8, "llm_int8_threshold": 2}
    path = product_tinysave_llama()
    scope: dict = {}
    exec(BitsAndBytes().code(str(path), params), scope)
    built = BitsAndBytes().build(Ctx(path), params)
    assert sum(isinstance(m, bnb.nn.Linear8bitLt) for m in scope["model"].modules()) == built.layers_quantized
    assert torch.equal(logits(scope["model"]), logits(built.model))


def test_held_weight_bytes_counts_shared_storage_once(tiny_llama):
    built = BitsAndBytes().build(Ctx(tiny_llama), {"bits": 8})
    # The 8-bit state keeps a reference to the int8 codes (CB): it must not be counted twice.
    q = built.model.model.layers[0].self_attn.q_proj
    assert q.state.CB is not None and q.state.CB.untyped_storage().data_ptr() == q.weight.untyped_storage().data_ptr()
    assert held_weight_bytes(built.model) == built.weights_bytes
