"""The rtn method on real (tiny and embedded) models: build, memory, save/load, code, perplexity."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from workbench.errors import InvalidParams
from workbench.methods.rtn import RTN, load_quantized
from workbench.teach import packing
from workbench.teach.qlinear import QuantLinear
from workbench.teach.quant import fake_quantize
from tiny import Ctx, ids  # noqa: E402

pytestmark = pytest.mark.torch



def smol_dir() -> Path:
    """The product's converted SmolLM2 (cached in WORKBENCH_HOME after the first conversion)."""
    from workbench.models import loader
    from workbench.spec import ModelSpec

    return loader.resolve(ModelSpec("smollm2-135m"))


def linear_names(model) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, QuantLinear))}


def test_build_replaces_the_selected_layers_and_counts_them(tiny_llama):
    ctx = Ctx(tiny_llama)
    built = RTN().build(ctx, {"bits": 4, "group_size": 32})
    layers = linear_names(built.model)
    assert len(layers) == 15  # 2 blocks x 7 projections + lm_head
    assert built.layers_eligible == 15
    assert built.layers_quantized == 14
    assert sum(isinstance(m, QuantLinear) for m in layers.values()) == 14
    assert type(layers["lm_head"]) is torch.nn.Linear  # excluded by default, still tied
    assert built.model.lm_head.weight is built.model.model.embed_tokens.weight
    assert "rtn" in built.kernel and "not a fast kernel" in built.kernel
    assert any("lm_head" in n for n in built.notes)
    fractions = [f for s, f in ctx.progress_calls if s == "quantize"]
    assert fractions[0] == 0 and fractions[-1] == 1.0 and fractions == sorted(fractions)


def test_the_model_computes_with_exactly_the_fake_quantized_weights(tiny_llama):
    built = RTN().build(Ctx(tiny_llama), {"bits": 3, "sym": False, "group_size": 16})
    oracle = Ctx(tiny_llama).load_model()
    with torch.no_grad():
        for name, m in linear_names(oracle).items():
            if name != "lm_head":
                m.weight.copy_(fake_quantize(m.weight, 3, False, "group", 16, torch.float16))
        ref = oracle(input_ids=ids()).logits
        got = built.model(input_ids=ids()).logits
        fp = Ctx(tiny_llama).load_model()(input_ids=ids()).logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert (got - fp).abs().max() > 1e-3  # and it is not the float model


def test_int8_stays_close_and_generate_works(tiny_llama):
    built = RTN().build(Ctx(tiny_llama), {"bits": 8, "group_size": -1})
    fp = Ctx(tiny_llama).load_model()
    with torch.no_grad():
        a, b = built.model(input_ids=ids()).logits, fp(input_ids=ids()).logits
    assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999
    out = built.model.generate(ids(4)[:1], max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 9)


def test_buffers_are_the_packed_size(tiny_llama):
    built = RTN().build(Ctx(tiny_llama), {"bits": 4, "sym": False, "group_size": 32})
    model = built.model
    expected = 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            n_groups = m.out_features * m.in_features // 32
            expected += packing.packed_nbytes(m.out_features * m.in_features, 4) + n_groups * (2 + 1)
    held = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n.endswith(
        (".qweight", ".scale", ".zero_point")))
    assert held == expected
    # No full-precision copy of a quantized weight is kept anywhere.
    shapes = {(m.out_features, m.in_features) for m in model.modules() if isinstance(m, QuantLinear)}
    float_params = [n for n, p in model.named_parameters() if p.dim() == 2 and tuple(p.shape) in shapes]
    assert float_params == []


def test_quantizing_the_tied_lm_head_unties_it(tiny_llama):
    built = RTN().build(Ctx(tiny_llama), {"bits": 4, "group_size": 32, "exclude": []})
    m = built.model
    assert built.layers_quantized == built.layers_eligible == 15
    assert isinstance(m.lm_head, QuantLinear)
    assert isinstance(m.model.embed_tokens.weight, torch.nn.Parameter)  # the embedding stays float
    assert m.config.tie_word_embeddings is False
    assert any("tied" in n and "lm_head" in n for n in built.notes)
    with torch.no_grad():
        assert torch.isfinite(m(input_ids=ids()).logits).all()


def test_build_refuses_shapes_it_cannot_quantize(tiny_llama):
    with pytest.raises(InvalidParams) as e:
        RTN().build(Ctx(tiny_llama), {"group_size": 48})  # 64 and 128 are not multiples of 48
    assert [x.param for x in e.value.errors] == ["group_size"]
    with pytest.raises(InvalidParams) as e:
        RTN().build(Ctx(tiny_llama), {"include": ["nothing*"]})
    assert [x.param for x in e.value.errors] == ["include"]


@pytest.mark.parametrize("params", [
    {"bits": 4, "group_size": 32},
    {"bits": 3, "sym": False, "group_size": 0, "exclude": []},
])
def test_save_and_load_round_trip(tiny_llama, tmp_path, params):
    built = RTN().build(Ctx(tiny_llama), params)
    built.save(tmp_path / "q")
    files = {p.name for p in (tmp_path / "q").iterdir()}
    assert {"model.safetensors", "quant_config.json", "config.json"} <= files
    config = json.loads((tmp_path / "q" / "quant_config.json").read_text())
    assert config["bits"] == params["bits"] and len(config["layers"]) == built.layers_quantized
    reloaded = load_quantized(Ctx(tiny_llama).load_model(), tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids()).logits, built.model(input_ids=ids()).logits)
    # On disk: the packed layers, not float copies of them.
    tensors_bytes = sum(t.numel() * t.element_size() for t in
                        {t.data_ptr(): t for t in built.model.state_dict().values()}.values())
    assert (tmp_path / "q" / "model.safetensors").stat().st_size < tensors_bytes + 64 * 1024


def test_encoder_layers_are_all_quantized(tiny_bert):
    built = RTN().build(Ctx(tiny_bert, AutoModel), {"bits": 8, "group_size": 64})
    n_linear = 2 * 6 + 1  # q, k, v, attention output, intermediate, output per layer; pooler
    assert built.layers_eligible == built.layers_quantized == n_linear
    fp = Ctx(tiny_bert, AutoModel).load_model()
    x = ids(12, vocab=256)
    with torch.no_grad():
        a, b = built.model(input_ids=x).last_hidden_state, fp(input_ids=x).last_hidden_state
    assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999


def test_code_runs_and_gives_the_same_model(tiny_llama):
    params = {"bits": 4, "sym": False, "group_size": 32}
    scope: dict = {}
    exec(RTN().code(str(tiny_llama), params), scope)
    built = RTN().build(Ctx(tiny_llama), params)
    assert sum(isinstance(m, QuantLinear) for m in scope["model"].modules()) == built.layers_quantized
    with torch.no_grad():
        assert torch.equal(scope["model"](input_ids=ids()).logits, built.model(input_ids=ids()).logits)


# --- the embedded SmolLM2 --------------------------------------------------------

def smol_windows(n: int = 2, window: int = 512) -> torch.Tensor:
    import pydoc_data.topics as topics
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_dir())
    text = "\n\n".join(topics.topics.values())
    all_ids = tok(text[: 60_000 * n], return_tensors="pt").input_ids[0]
    return all_ids[: n * window].view(n, window)


def perplexity(model, windows: torch.Tensor) -> float:
    nll, count = 0.0, 0
    with torch.inference_mode():
        for w in windows:
            out = model(input_ids=w[None], labels=w[None])
            nll += float(out.loss) * (w.numel() - 1)
            count += w.numel() - 1
    return math.exp(nll / count)


def test_smollm2_perplexity():
    windows = smol_windows(2)
    ctx = Ctx(smol_dir())
    ppl = {"fp32": perplexity(ctx.load_model(), windows)}
    for label, params in {
        "int8": {"bits": 8, "group_size": -1, "sym": True},
        "int4 g64 sym": {"bits": 4, "group_size": 64, "sym": True},
        "int4 g64 asym": {"bits": 4, "group_size": 64, "sym": False},
    }.items():
        built = RTN().build(ctx, params)
        assert built.layers_quantized == 210 and built.layers_eligible == 211
        ppl[label] = perplexity(built.model, windows)
        del built
    print("SmolLM2 perplexity on 2 windows:", {k: round(v, 3) for k, v in ppl.items()})
    assert 12 < ppl["fp32"] < 17  # docs/backends.md: 14.24 on these 2 windows
    assert abs(ppl["int8"] / ppl["fp32"] - 1) < 0.01
    assert ppl["int4 g64 sym"] > ppl["int8"] * 1.05
    assert ppl["int4 g64 asym"] > ppl["int8"] * 1.05
    assert ppl["int4 g64 sym"] < 2 * ppl["fp32"] and ppl["int4 g64 asym"] < 2 * ppl["fp32"]
