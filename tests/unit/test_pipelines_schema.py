"""Pipelines in the kernel: kinds told apart from their configs, and ov-hybrid's validation,
without torch, OpenVINO or a worker."""
from __future__ import annotations

import json
import types

import pytest

from workbench.errors import InvalidParams, ModelNotFound
from workbench.methods.openvino.export import OVExport
from workbench.methods.openvino.hybrid import OVHybrid
from workbench.models import catalog
from workbench.session import Session
from workbench.spec import ModelSpec


def hybrid_errors(params, kind):
    p, errs = OVHybrid.schema.errors(params)
    if not errs:
        errs = OVHybrid().check_model(params, types.SimpleNamespace(kind=kind, name="m"))
    return [(e.param, e.message) for e in errs]


def test_kinds_from_configs():
    assert catalog.infer_kind({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}) \
        == "text-to-image"
    assert catalog.infer_kind({"_class_name": "FluxPipeline", "transformer": ["diffusers", "X"]}) == "text-to-image"
    assert catalog.infer_kind({"model_type": "whisper", "is_encoder_decoder": True,
                               "architectures": ["WhisperForConditionalGeneration"]}) == "speech-to-text"
    assert catalog.infer_kind({"model_type": "llava", "vision_config": {}, "text_config": {},
                               "architectures": ["LlavaForConditionalGeneration"]}) == "image-text-to-text"
    # A dual encoder has a vision_config too, but generates no text: not a vision-language pipeline.
    assert catalog.infer_kind({"model_type": "clip", "vision_config": {}, "text_config": {},
                               "architectures": ["CLIPModel"]}) != "image-text-to-text"
    with pytest.raises(ModelNotFound, match="not a text-to-image"):
        catalog.infer_kind({"_class_name": "AudioLDMPipeline", "vae": []})


def test_a_local_diffusers_directory_is_described_from_model_index(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                           "unet": ["diffusers", "UNet2DConditionModel"]}))
    info = catalog.describe(ModelSpec(str(tmp_path)))
    assert (info.kind, info.source, info.linear_layers) == ("text-to-image", "local", {})


def test_tiny_pipelines_are_in_the_catalog():
    rows = {r["name"]: r for r in catalog.catalog_rows()}
    assert rows["tiny-sd"]["kind"] == "text-to-image"
    assert rows["tiny-whisper"]["kind"] == "speech-to-text"
    assert rows["tiny-vlm"]["kind"] == "image-text-to-text"
    assert catalog.describe(ModelSpec("tiny-whisper")).config["model_type"] == "whisper"


def test_hybrid_defaults_are_weight_only_int8():
    assert OVHybrid.schema.normalize({}, "ov-hybrid")["dataset"] is None
    assert OVHybrid.schema.defaults()["bits"] == 8
    assert set(OVHybrid.model_kinds) == set(catalog.PIPELINE_KINDS)
    assert set(catalog.PIPELINE_KINDS) <= set(OVExport.model_kinds)


def test_hybrid_dataset_forms_depend_on_the_pipeline(tmp_path):
    assert hybrid_errors({"dataset": "pydoc-topics"}, "text-to-image") == []
    assert hybrid_errors({"dataset": "synthetic"}, "speech-to-text") == []
    assert hybrid_errors({"dataset": "synthetic"}, "image-text-to-text") == []
    [(param, msg)] = hybrid_errors({"dataset": "synthetic"}, "text-to-image")
    assert param == "dataset" and "pydoc-topics" in msg and "prompts" in msg
    [(param, msg)] = hybrid_errors({"dataset": "pydoc-topics"}, "speech-to-text")
    assert param == "dataset" and "synthetic, dir:PATH" in msg and ".wav" in msg
    [(param, msg)] = hybrid_errors({"dataset": f"dir:{tmp_path}"}, "image-text-to-text")
    assert "no .png" in msg


def test_four_bit_with_a_dataset_is_refused_for_static_pipelines():
    [(param, msg)] = hybrid_errors({"bits": 4, "dataset": "synthetic"}, "speech-to-text")
    assert param == "bits" and "allowed: 8" in msg
    assert hybrid_errors({"bits": 4, "dataset": "pydoc-topics"}, "text-to-image") == []  # hybrid takes 4-bit
    assert hybrid_errors({"bits": 4}, "speech-to-text") == []


def test_hybrid_on_a_causal_lm_and_weight_methods_on_a_pipeline_are_refused(tmp_path):
    session = Session(store=tmp_path / "wb.sqlite", progress=False)
    with pytest.raises(InvalidParams, match="causal-lm model; method 'ov-hybrid' supports text-to-image"):
        session.validate(session.make_spec("tiny-llama", "ov-hybrid", {}))
    with pytest.raises(InvalidParams, match="tiny-sd is a text-to-image model; method 'ov-weight' supports"):
        session.validate(session.make_spec("tiny-sd", "ov-weight", {}))
    with pytest.raises(InvalidParams, match="bits"):
        session.validate(session.make_spec("tiny-whisper", "ov-hybrid", {"bits": 4, "dataset": "synthetic"}))


def test_code_shows_hybrid_quantization():
    code = OVHybrid().code("org/sd", {"dataset": "pydoc-topics", "num_samples": 50})
    assert "quant_method='hybrid'" in code and "num_samples=50" in code and "OVQuantizer" in code
    assert "OVWeightQuantizationConfig(bits=8" in OVHybrid().code("org/sd", {})


def test_compare_defaults_to_the_pipeline_methods_for_pipelines():
    from workbench import cli

    assert cli._default_comparison("tiny-whisper") == cli.PIPELINE_COMPARISON
    assert all(m.split(":")[0] in ("ov-export", "ov-hybrid") for m in cli.PIPELINE_COMPARISON)
    assert cli._default_comparison("smollm2-135m") == cli.DEFAULT_COMPARISON
