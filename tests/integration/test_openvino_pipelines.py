"""ov-export and ov-hybrid on pipelines, through the product (Session -> worker in the openvino
environment -> store), on tiny random pipelines built from configs: a Stable Diffusion pipeline,
a Whisper and a LLaVA. The fp32 PyTorch reference runs in the same environment; each pipeline is
exported once and its IR cached, so the later runs only quantize and measure."""
import pytest

from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec, DataSpec

from ..conftest import requires_openvino_env

pytestmark = requires_openvino_env
QUICK = BenchSpec(latency=False, repeats=1)
DATA = DataSpec(embed_sentences=8)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(store=tmp_path_factory.mktemp("store") / "wb.sqlite", progress=False)


def run(session, model, params, method="ov-hybrid", bench=QUICK):
    r = session.submit(session.make_spec(model, method, params, bench=bench, data=DATA))
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    return r


def notes(r):
    return "\n".join(r.notes)


def test_diffusion_export_matches_pytorch_and_reports_image_latency(session):
    r = run(session, "tiny-sd", {}, method="ov-export", bench=BenchSpec(repeats=1, warmup=0))
    m = r.metrics
    assert m["image_rmse"] < 0.005 and m["image_psnr_db"] > 46  # the export check passed on images
    assert r.layers_quantized == 0 and r.layers_eligible == 133  # MatMuls + Convolutions of 4 models
    assert m["image_s"] > 0 and r.tables["pipeline"][0]["steps"] == 4
    assert m["reload_image_psnr_db"] == pytest.approx(m["image_psnr_db"], rel=1e-6)
    for part in ("unet:", "vae_decoder:", "vae_encoder:", "text_encoder:"):
        assert part in notes(r)


def test_diffusion_hybrid_quantizes_unet_activations_and_the_rest_weight_only(session):
    fp32 = run(session, "tiny-sd", {}, method="ov-export")
    r = run(session, "tiny-sd", {"dataset": "pydoc-topics", "num_samples": 8})
    unet, *others = [line for line in r.notes if line.startswith(("unet:", "vae_", "text_encoder:"))]
    assert "FakeQuantize" in unet and all("FakeQuantize" not in line for line in others)
    assert r.layers_quantized == r.layers_eligible == 133
    assert r.versions["diffusers"].startswith("0.") and r.versions["pillow"]
    assert r.metrics["weights_bytes"] < 0.35 * fp32.metrics["weights_bytes"]
    assert 25 < r.metrics["image_psnr_db"] < fp32.metrics["image_psnr_db"]


def test_diffusion_weight_only_without_a_dataset(session):
    r = run(session, "tiny-sd", {"bits": 4, "group_size": 16}, bench=BenchSpec(latency=False, save=False))
    assert "FakeQuantize" not in notes(r) and "u4" in notes(r)
    assert r.layers_quantized == r.layers_eligible


def test_whisper_export_weight_only_and_static_int8(session):
    fp32 = run(session, "tiny-whisper", {}, method="ov-export", bench=BenchSpec(repeats=1, warmup=0))
    assert fp32.metrics["top1_agreement"] == 1.0 and fp32.metrics["kl_div"] < 1e-4
    assert fp32.metrics["generated_token_agreement"] == 1.0 and fp32.metrics["decode_tok_s"] > 0
    assert fp32.layers_eligible == 35  # encoder 12 MatMuls + 2 convolutions, decoder 21 MatMuls
    w8 = run(session, "tiny-whisper", {})
    assert w8.layers_quantized == 35 and "FakeQuantize" not in notes(w8)
    static = run(session, "tiny-whisper", {"dataset": "synthetic", "num_samples": 4})
    assert "FakeQuantize" in notes(static) and static.layers_quantized == 35
    for r in (w8, static):
        assert 0 < r.metrics["kl_div"] and 0 <= r.metrics["top1_agreement"] <= 1
        assert r.metrics["weights_bytes"] < 0.5 * fp32.metrics["weights_bytes"]


def test_vision_language_export_weight_only_and_static_int8(session):
    fp32 = run(session, "tiny-vlm", {}, method="ov-export")
    assert fp32.metrics["top1_agreement"] == 1.0 and fp32.metrics["kl_div"] < 1e-4
    for part in ("lm_model:", "vision_embeddings_model:", "text_embeddings_model:"):
        assert part in notes(fp32)
    w4 = run(session, "tiny-vlm", {"bits": 4, "group_size": 16})
    lm = next(line for line in w4.notes if line.startswith("lm_model:"))
    vision = next(line for line in w4.notes if line.startswith("vision_embeddings_model:"))
    assert "u4" in lm and "u4" not in vision and "i8" in vision  # optimum-intel: vision parts int8 sym
    static = run(session, "tiny-vlm", {"dataset": "synthetic", "num_samples": 4})
    assert "FakeQuantize" in notes(static)
    assert 0 < w4.metrics["kl_div"] and 0 < static.metrics["kl_div"]


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-whisper", "tiny-vlm"])
def test_catalog_parameter_counts_match_the_built_pipelines(name):
    from pathlib import Path

    from workbench.models import catalog
    from workbench.spec import ModelSpec

    info = catalog.describe(ModelSpec(name))  # built by the runs above
    assert info.path is not None
    assert catalog._params_count(Path(info.path), info.kind) == catalog.CATALOG[name].params_count
