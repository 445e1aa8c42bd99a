"""`ov-hybrid`: quantization of pipelines through optimum-intel: diffusion (text-to-image),
Whisper-style speech-to-text and vision-language models.

Without a dataset every model of the pipeline gets weight-only compression (`bits`; int8 per
channel, or 4-bit groups). With a dataset, activations are quantized too, where optimum-intel
offers it for that pipeline:

- text-to-image: hybrid quantization. The U-Net (or diffusion transformer) gets int8 weights on
  its MatMuls and embeddings and int8 activations on the other ops (convolutions, ...), with
  statistics collected on the denoising steps of calibration prompts; the text encoder and the
  VAE stay weight-only. Prompts come from the calibration part of the text source.
- speech-to-text: full static int8 (weights and activations) of the encoder and the decoder,
  calibrated by running generation on audio clips.
- image-text-to-text: full static int8 of the language model and the vision encoder, calibrated
  on images with questions (from the calibration part of the run's text); the text embedding
  table stays weight-only int8.

optimum-intel's own dataset names (librispeech, textvqa, conceptual captions) need the hub;
here calibration audio and images are `synthetic`, `dir:PATH` (your files) or `hub:NAME`, and
prompts any of the workbench's text sources. See `data.media` for what synthetic means.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping

from ...data.media import AUDIO_SUFFIXES, IMAGE_SUFFIXES, PROMPT_CHARS, QUESTION_CHARS, media_source_error
from ...data.text import source_error
from ...errors import ParamError
from ...models.catalog import PIPELINE_KINDS
from ...params import Param, Schema, Values
from .common import OpenVINOMethod, precision_param, probe_values

if TYPE_CHECKING:  # pragma: no cover
    from ...measure.context import BuildContext

DATASET_FORMS = {
    "text-to-image": "pydoc-topics, file:PATH or hub:NAME[/CONFIG] (prompts)",
    "speech-to-text": "synthetic, dir:PATH (.wav files) or hub:NAME[/CONFIG] (an audio column)",
    "image-text-to-text": "synthetic, dir:PATH (image files) or hub:NAME[/CONFIG] (an image column)",
}


def _schema() -> Schema:
    four = {"bits": 4}
    return Schema(
        (
            Param("bits", "choice", 8, choices=(8, 4),
                  help="Weight precision of the weight-only parts: 8 (int8 per output channel) or 4 (int4 groups). "
                       "Vision-language: the language model takes it, the vision parts int8 (optimum-intel's rule)."),
            Param("sym", "bool", False, help="Symmetric weights (no zero point) instead of asymmetric."),
            Param("group_size", "int", 64, minimum=-1, visible_when=four,
                  help="4-bit weights sharing a scale along the input dimension; -1 = one per output channel."),
            Param("group_size_fallback", "choice", "adjust", choices=tuple(probe_values()["group_size_fallback"]),
                  visible_when=four,
                  help="When group_size does not divide a layer (pipelines mix many widths): adjust (a smaller "
                       "group size for it), ignore (leave it uncompressed) or error (NNCF fails the run: pipeline "
                       "layer shapes are not read before the export)."),
            Param("dataset", "str", None, nullable=True,
                  help="none: weight-only everywhere. Set: activations quantized too (diffusion: hybrid U-Net; "
                       "speech and vision-language: static int8). Prompts for text-to-image (pydoc-topics, "
                       "file:PATH, hub:NAME); audio or images otherwise (synthetic, dir:PATH, hub:NAME)."),
            Param("num_samples", "int", 32, minimum=1, maximum=4096,
                  help="Calibration samples: U-Net calls for diffusion (optimum-intel collects them along the "
                       "denoising steps of a few prompts; its default is 200), clips or images otherwise."),
            precision_param(),
        )
    )


class OVHybrid(OpenVINOMethod):
    """Weight-only, hybrid or static int8 quantization of a pipeline through optimum-intel / NNCF."""

    name = "ov-hybrid"
    description = (
        "OpenVINO pipelines: diffusion (hybrid: U-Net weights and activations int8, other models weight-only), "
        "Whisper-style speech-to-text and vision-language (static int8 with data); weight-only without data."
    )
    model_kinds = PIPELINE_KINDS
    requires = OpenVINOMethod.requires + ("diffusers", "pillow")
    schema = _schema()

    def model_errors(self, p: Values, layers: Mapping[str, tuple[int, int]], model: Any) -> list[ParamError]:
        kind = getattr(model, "kind", "")
        dataset = p["dataset"]
        out: list[ParamError] = []
        if dataset is not None:
            if kind == "text-to-image":
                problem = source_error(dataset)
            else:
                problem = media_source_error(dataset, AUDIO_SUFFIXES if kind == "speech-to-text" else IMAGE_SUFFIXES)
            if problem is not None:
                out.append(ParamError("dataset", f"{problem} (for a {kind} pipeline: {DATASET_FORMS[kind]})"))
            if p["bits"] == 4 and kind != "text-to-image":
                out.append(ParamError("bits", f"with a dataset a {kind} pipeline is quantized to int8 weights and "
                                              "activations; bits=4 is weight-only: drop dataset, or allowed: 8"))
        return out

    # --- worker side -------------------------------------------------------
    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Any:
        from . import runtime

        p = params
        precision = p["inference_precision"]
        kind = ctx.model_info.kind
        exported = runtime.exported_ir(ctx)
        t0 = time.perf_counter()
        if p["dataset"] is None:
            ctx.progress("quantize", None, f"NNCF weight compression of every model of the {kind} pipeline")
            model = runtime.load_ir(kind, exported.path, precision, quantization_config=self._weights(p))
            what = f"weight-only int{p['bits']}"
            scheme = f"int{p['bits']} ({'sym' if p['sym'] else 'asym'})"
            notes = [f"weight-only {scheme} on every model of the pipeline" if kind != "image-text-to-text" else
                     f"weight-only: language model {scheme}, vision and text-embedding models int8 sym "
                     "(optimum-intel's rule for vision-language pipelines)"]
        elif kind == "text-to-image":
            model, notes = self._hybrid_diffusion(ctx, p, exported.path, precision)
            what = "hybrid int8"
        else:
            model, notes = self._static(ctx, p, exported.path, precision, kind)
            what = "static int8"
        quantize_s = time.perf_counter() - t0
        return self.finish(ctx, model, precision, exported, quantize_s=quantize_s, load_s=0.0, notes=notes,
                           what=what)

    def _weights(self, p: Mapping[str, Any], **extra: Any) -> Any:
        from optimum.intel import OVWeightQuantizationConfig

        if p["bits"] == 8:
            return OVWeightQuantizationConfig(bits=8, sym=p["sym"], **extra)
        return OVWeightQuantizationConfig(bits=4, sym=p["sym"], group_size=p["group_size"],
                                          group_size_fallback=p["group_size_fallback"], **extra)

    def _hybrid_diffusion(self, ctx: BuildContext, p: Mapping[str, Any], ir_dir: Any, precision: str) -> tuple[Any, list[str]]:
        from dataclasses import replace

        from ...data import text
        from ...errors import DataError
        from . import runtime

        data = replace(ctx.spec.data, source=p["dataset"])
        prompts = text.calibration_paragraphs(data, p["num_samples"], PROMPT_CHARS)
        if not prompts:
            raise DataError(f"dataset: the calibration part of {p['dataset']!r} has no paragraph with text")
        config = self._weights(p, quant_method="hybrid", dataset=prompts, num_samples=p["num_samples"])
        ctx.progress("quantize", None, f"hybrid quantization: {p['num_samples']} U-Net calls on {len(prompts)} "
                                       "prompts (statistics), then weight compression")
        model = runtime.load_ir("text-to-image", ir_dir, precision, quantization_config=config)
        return model, [f"hybrid: U-Net int{p['bits']} weights on MatMuls/embeddings and int8 activations elsewhere, "
                       f"calibrated on {p['num_samples']} U-Net calls from prompts of {p['dataset']}; text encoder "
                       f"and VAE weight-only int{p['bits']}"]

    def _static(self, ctx: BuildContext, p: Mapping[str, Any], ir_dir: Any, precision: str,
                kind: str) -> tuple[Any, list[str]]:
        import datasets
        from optimum.intel import OVConfig, OVQuantizationConfig, OVQuantizer

        from ...data import media
        from . import runtime

        n = p["num_samples"]
        ctx.progress("calibrate", None, f"{n} calibration {'clips' if kind == 'speech-to-text' else 'images'} "
                                        f"from {p['dataset']}")
        if kind == "speech-to-text":
            clips = media.calibration_audio(p["dataset"], n, ctx.spec.seed)
            rows = [{"audio": {"array": c, "sampling_rate": media.SAMPLING_RATE}} for c in clips]
            config = OVQuantizationConfig(num_samples=len(rows), processor=str(ir_dir))
            parts = "encoder and decoder"
        else:
            from ...data import text

            images = media.calibration_images(p["dataset"], n, ctx.spec.seed)
            questions = text.calibration_paragraphs(ctx.spec.data, len(images), QUESTION_CHARS)
            questions = (questions * len(images))[: len(images)] or ["Describe the picture."] * len(images)
            rows = [{"image": im, "question": q} for im, q in zip(images, questions)]
            # The name only tells optimum-intel the column names (image, question); nothing is downloaded.
            config = OVQuantizationConfig(dataset="textvqa", num_samples=len(rows), processor=str(ir_dir),
                                          tokenizer=str(ir_dir))
            parts = "language model and vision encoder"
        source = runtime.load_ir(kind, ir_dir, precision)
        out = ctx.workdir / "ov-hybrid"
        ctx.progress("quantize", None, f"NNCF static int8 quantization of the {parts}")
        OVQuantizer.from_pretrained(source).quantize(
            calibration_dataset=datasets.Dataset.from_list(rows), save_directory=str(out),
            ov_config=OVConfig(quantization_config=config),
        )
        runtime.copy_processor(ir_dir, out)
        model = runtime.load_ir(kind, out, precision)
        return model, [f"static int8 (weights and activations) of the {parts}, calibrated on {len(rows)} "
                       f"{'clips' if kind == 'speech-to-text' else 'images'} from {p['dataset']}"]

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ...models.snippet import OV_CLASSES, calibration_code, loadable, ov_config_code

        p = self.values(params)
        m = loadable(model_id, self.env)
        ov_config = ov_config_code(p["inference_precision"])
        args = f"bits={p['bits']}, sym={p['sym']}"
        if p["bits"] == 4:
            args += f", group_size={p['group_size']}, group_size_fallback={p['group_size_fallback']!r}"
        if p["dataset"] is None:
            cls = OV_CLASSES.get(m.kind or "", "OVDiffusionPipeline")
            return (
                f"from optimum.intel import {cls}, OVWeightQuantizationConfig\n"
                + ("" if m.kind else
                   "# speech-to-text: OVModelForSpeechSeq2Seq; vision-language: OVModelForVisualCausalLM\n")
                + "\n" + m.line()
                + f"model = {cls}.from_pretrained(\n    model_id, export=True,\n"
                f"    quantization_config=OVWeightQuantizationConfig({args}),\n    ov_config={ov_config},\n)\n"
                "model.save_pretrained('ov-hybrid')\n"
            )
        diffusion = (
            "from optimum.intel import OVDiffusionPipeline, OVWeightQuantizationConfig\n\n"
            + m.line()
            + calibration_code(None if str(p["dataset"]).startswith(("synthetic", "dir:")) else p["dataset"],
                               p["num_samples"], chars=PROMPT_CHARS, var="prompts")
            + "# Diffusion: hybrid (U-Net weights and activations, the rest weight-only), calibrated on prompts\n"
            f"config = OVWeightQuantizationConfig({args}, quant_method='hybrid',\n"
            f"                                    dataset=prompts, num_samples={p['num_samples']})\n"
            "model = OVDiffusionPipeline.from_pretrained(model_id, export=True, quantization_config=config,\n"
            f"                                            ov_config={ov_config})\n"
        )
        if m.kind == "text-to-image":
            return diffusion
        media = ("# calibration {what}: the workbench's loader for {source!r} (synthetic, dir:PATH or hub:NAME); this\n"
                 "# needs the workbench importable (pip install it, or its directory on PYTHONPATH)\n"
                 "from workbench.data import media\n")
        speech = (
            "import datasets\n"
            "from optimum.intel import OVConfig, OVModelForSpeechSeq2Seq, OVQuantizationConfig, OVQuantizer\n\n"
            + m.line()
            + media.format(what="audio", source=p["dataset"])
            + f"clips = media.calibration_audio({p['dataset']!r}, {p['num_samples']}, 0)\n"
            "rows = [{'audio': {'array': clip, 'sampling_rate': media.SAMPLING_RATE}} for clip in clips]\n"
            "# Speech-to-text: static int8 of the encoder and the decoder, calibrated by running generation\n"
            "model = OVModelForSpeechSeq2Seq.from_pretrained(model_id, export=True, load_in_8bit=False,\n"
            "                                                compile=False)\n"
            "OVQuantizer.from_pretrained(model).quantize(\n"
            "    calibration_dataset=datasets.Dataset.from_list(rows), save_directory='ov-hybrid',\n"
            "    ov_config=OVConfig(quantization_config=OVQuantizationConfig(num_samples=len(rows), "
            "processor=model_id)),\n)\n"
            f"model = OVModelForSpeechSeq2Seq.from_pretrained('ov-hybrid', ov_config={ov_config})\n"
        )
        vision = (
            "import datasets\n"
            "from optimum.intel import OVConfig, OVModelForVisualCausalLM, OVQuantizationConfig, OVQuantizer\n\n"
            + m.line()
            + media.format(what="images", source=p["dataset"])
            + f"images = media.calibration_images({p['dataset']!r}, {p['num_samples']}, 0)\n"
            + calibration_code(None, p["num_samples"], chars=QUESTION_CHARS, var="questions")
            + "rows = [{'image': image, 'question': q} for image, q in zip(images, questions)]\n"
            "# Vision-language: static int8 of the language model and the vision encoder; the name 'textvqa'\n"
            "# only tells optimum-intel the column names (image, question): nothing is downloaded\n"
            "model = OVModelForVisualCausalLM.from_pretrained(model_id, export=True, load_in_8bit=False,\n"
            "                                                 compile=False)\n"
            "OVQuantizer.from_pretrained(model).quantize(\n"
            "    calibration_dataset=datasets.Dataset.from_list(rows), save_directory='ov-hybrid',\n"
            "    ov_config=OVConfig(quantization_config=OVQuantizationConfig(\n"
            "        dataset='textvqa', num_samples=len(rows), processor=model_id, tokenizer=model_id)),\n)\n"
            f"model = OVModelForVisualCausalLM.from_pretrained('ov-hybrid', ov_config={ov_config})\n"
        )
        if m.kind == "speech-to-text":
            return speech
        if m.kind == "image-text-to-text":
            return vision
        return (diffusion + "\n# ---- or, for speech-to-text ----\n" + speech
                + "\n# ---- or, for vision-language ----\n" + vision)
