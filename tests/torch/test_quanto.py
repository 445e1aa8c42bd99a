"""The quanto method on tiny models (optimum-quanto on CPU): build, counts, bytes, calibration, save/reload."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

quanto = pytest.importorskip("optimum.quanto")

from optimum.quanto.nn import QLinear  # noqa: E402

from workbench.errors import InvalidParams  # noqa: E402
from workbench.measure.memory import module_weight_bytes  # noqa: E402
from workbench.methods.quanto import QMAP_FILE, Quanto, load_quantized  # noqa: E402
from tiny import Ctx, cosine, ids, logits, save_bert, save_llama  # noqa: E402

pytestmark = pytest.mark.torch


def product_model(name: str) -> Path:
    from workbench.models import loader
    from workbench.spec import ModelSpec

    return loader.resolve(ModelSpec(name))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """Input dimensions 192 and 384: int4 groups of 96 and 128 (quanto's choice), as on SmolLM2."""
    return save_llama(tmp_path_factory.mktemp("tiny-llama"), hidden=192, init=0.05)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return save_bert(tmp_path_factory.mktemp("tiny-bert"), vocab=1024)


@pytest.mark.parametrize("weights,min_cos", [("int8", 0.999), ("float8", 0.99), ("int4", 0.95), ("int2", 0.3)])
def test_weight_types_build_count_and_run_under_inference_mode(tiny_llama, weights, min_cos):
    ctx = Ctx(tiny_llama)
    built = Quanto().build(ctx, {"weights": weights})
    m = built.model
    assert built.layers_eligible == 15
    assert built.layers_quantized == 14 == sum(isinstance(x, QLinear) for x in m.modules())
    assert type(m.lm_head) is torch.nn.Linear and m.lm_head.weight is m.model.embed_tokens.weight
    assert any("lm_head" in n for n in built.notes)
    out = logits(m)  # int2/int4 fail under inference_mode unless frozen inside it
    assert torch.isfinite(out).all() and cosine(out, logits(Ctx(tiny_llama).load_model())) > min_cos
    with torch.no_grad():
        assert torch.equal(m(input_ids=ids()).logits, out)
    assert "optimum-quanto" in built.kernel and "CPU" in built.kernel
    assert "quantize" in ctx.stages


def test_int4_bytes_by_hand_and_what_get_memory_footprint_claims(tiny_llama):
    built = Quanto().build(Ctx(tiny_llama), {"weights": "int4"})
    m = built.model
    fp32 = module_weight_bytes(Ctx(tiny_llama).load_model())
    assert built.weights_bytes is None  # module_weight_bytes opens quanto's QTensors
    held = module_weight_bytes(m)
    q = m.model.layers[0].self_attn.q_proj  # 192 x 192: groups of 96
    k = m.model.layers[0].mlp.down_proj  # 192 x 384: groups of 128
    assert (q.weight_group_size, k.weight_group_size) == (96, 128)
    # One layer by hand: 4-bit codes packed two per byte, a float32 scale and shift per group,
    # and the layer's two float32 activation-scale buffers.
    assert module_weight_bytes(q) == 192 * 192 // 2 + (192 * 192 // 96) * (4 + 4) + 2 * 4
    layers = [x for x in m.modules() if isinstance(x, QLinear)]
    expected = fp32 - sum(x.in_features * x.out_features * 4 for x in layers) + sum(module_weight_bytes(x) for x in layers)
    assert held == expected < fp32
    # get_memory_footprint() counts the wrapped weights at their float32 size (plus the scale buffers).
    assert built.weights_bytes_claimed == fp32 + 14 * 2 * 4
    assert any("groups of 96" in n and "groups of 128" in n for n in built.notes)


def test_int8_bytes_by_hand(tiny_llama):
    built = Quanto().build(Ctx(tiny_llama), {"weights": "int8"})
    q = built.model.model.layers[0].self_attn.q_proj
    assert module_weight_bytes(q) == 192 * 192 + 192 * 4 + 2 * 4  # int8 codes, a float32 scale per row


@pytest.mark.parametrize("weights,activations", [("int8", "int8"), ("int4", "float8")])
def test_activation_quantization_calibrates_and_round_trips(tiny_llama, tmp_path, weights, activations):
    ctx = Ctx(tiny_llama, tokenizer_path=product_model("tiny-llama"))
    params = {"weights": weights, "activations": activations, "calibration_samples": 3}
    built = Quanto().build(ctx, params)
    assert "calibrate" in ctx.stages
    assert any("calibrated on 3 samples" in n for n in built.notes)
    scales = [x.input_scale for x in built.model.modules() if isinstance(x, QLinear)]
    assert all(float(s) != 1.0 for s in scales)  # every quantized layer saw data
    if activations == "int8" and weights == "int8":
        assert "torch._int_mm" in built.kernel
    before = logits(built.model)
    assert torch.isfinite(before).all()
    built.save(tmp_path / "q")
    meta = json.loads((tmp_path / "q" / QMAP_FILE).read_text())
    assert meta["activations"] == activations and len(meta["quantization_map"]) == 14
    reloaded = Quanto().load_saved(Ctx(tiny_llama), params, tmp_path / "q")
    assert torch.equal(logits(reloaded), before)


@pytest.mark.parametrize("params", [{"weights": "int4"}, {"weights": "float8", "exclude": []}])
def test_save_and_load_round_trip(tiny_llama, tmp_path, params):
    built = Quanto().build(Ctx(tiny_llama), params)
    before = logits(built.model)
    built.save(tmp_path / "q")
    assert {"model.safetensors", QMAP_FILE, "config.json"} <= {p.name for p in (tmp_path / "q").iterdir()}
    reloaded = Quanto().load_saved(Ctx(tiny_llama), params, tmp_path / "q")
    assert sum(isinstance(x, QLinear) for x in reloaded.modules()) == built.layers_quantized
    assert torch.equal(logits(reloaded), before)
    assert module_weight_bytes(reloaded) == module_weight_bytes(built.model)
    tied = reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    assert tied == ("lm_head" in params.get("exclude", ["lm_head"]))  # requantize unties; the loader re-ties
    # On disk: packed layers, the tied embedding once.
    assert (tmp_path / "q" / "model.safetensors").stat().st_size < module_weight_bytes(built.model) + 64 * 1024


def test_quantizing_the_tied_lm_head_unties_it(tiny_llama):
    built = Quanto().build(Ctx(tiny_llama), {"weights": "int8", "exclude": []})
    m = built.model
    assert built.layers_quantized == built.layers_eligible == 15
    assert isinstance(m.lm_head, QLinear) and m.config.tie_word_embeddings is False
    assert any("tied" in n and "lm_head" in n for n in built.notes)


def test_a_reload_into_another_architecture_is_refused(tiny_llama, tmp_path):
    built = Quanto().build(Ctx(tiny_llama), {"weights": "int8"})
    built.save(tmp_path / "q")
    other = Ctx(product_model("tiny-llama")).load_model()  # hidden 64, not 192
    with pytest.raises(Exception):
        load_quantized(other, tmp_path / "q")


def test_exclude_that_leaves_nothing_is_refused_at_build(tiny_llama):
    with pytest.raises(InvalidParams) as e:
        Quanto().build(Ctx(tiny_llama), {"exclude": ["*"]})
    assert [x.param for x in e.value.errors] == ["exclude"]


def test_encoder_with_activations(tiny_bert):
    ctx = Ctx(tiny_bert, AutoModel, tokenizer_path=product_model("tiny-bert"))
    built = Quanto().build(ctx, {"weights": "int8", "activations": "int8", "calibration_samples": 2})
    assert built.layers_eligible == built.layers_quantized == 13
    x = ids(12, vocab=256)
    with torch.inference_mode():
        a = built.model(input_ids=x).last_hidden_state
        b = Ctx(tiny_bert, AutoModel).load_model()(input_ids=x).last_hidden_state
    assert cosine(a, b) > 0.99


def test_code_runs_and_gives_the_same_model():
    path = product_model("tiny-llama")
    params = {"weights": "int4"}
    scope: dict = {"__name__": "quanto_code"}
    cwd = Path.cwd()
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            exec(Quanto().code(str(path), params), scope)
        finally:
            os.chdir(cwd)
    built = Quanto().build(Ctx(path), params)
    assert sum(isinstance(m, QLinear) for m in scope["model"].modules()) == built.layers_quantized
    assert torch.equal(logits(scope["model"]), logits(built.model))
