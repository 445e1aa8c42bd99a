"""`ov-static`: full int8 quantization (weights and activations) of an OpenVINO IR by NNCF's
post-training quantization, through optimum-intel.

NNCF inserts FakeQuantize ops on the inputs of MatMuls and the other quantizable ops, with
ranges collected on calibration texts (min-max statistics by default, SmoothQuant on the
MatMuls of transformers), applies bias correction, and the CPU plugin then runs those ops in
int8. Weights are symmetric int8 per output channel; `sym` makes the activations symmetric too.

Causal LMs get a list of calibration texts (optimum-intel tokenizes them); encoders go
through `OVQuantizer` with a tokenized `datasets.Dataset` (the list shortcut fails for
feature extraction models: docs/backends.md). Calibration samples come from the calibration part
of `dataset`, never from the evaluation windows or sentences. Encoders take samples of
128 tokens (sentence-embedding models see short inputs), causal LMs the run's calib_seq_len.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping

from ...params import Param, Schema
from ..calibration import calibration_texts, dataset_check, dataset_param
from .common import OpenVINOMethod, precision_param

if TYPE_CHECKING:  # pragma: no cover
    from ...measure.context import BuildContext

ENCODER_SEQ_LEN = 128


class OVStatic(OpenVINOMethod):
    """NNCF post-training static int8 quantization (weights and activations) of an OpenVINO IR."""

    name = "ov-static"
    description = (
        "OpenVINO static int8: weights and activations quantized by NNCF post-training quantization with "
        "calibration data (FakeQuantize ranges, SmoothQuant, bias correction); encoders and causal LMs."
    )
    schema = Schema(
        (
            dataset_param(),
            Param("num_samples", "int", 32, minimum=1, maximum=4096,
                  help="Calibration samples (causal LMs: of the run's calib_seq_len tokens; encoders: of "
                       f"{ENCODER_SEQ_LEN} tokens). NNCF's default subset is 300; optimum-intel's 128."),
            Param("sym", "bool", False,
                  help="Symmetric activations (NNCF's performance preset); weights are symmetric either way."),
            Param("smooth_quant_alpha", "float", None, minimum=0.0, maximum=1.0, nullable=True,
                  help="SmoothQuant alpha for MatMuls: how much of the activation outliers move into the weights. "
                       "none: NNCF's default for transformers."),
            Param("fast_bias_correction", "bool", True,
                  help="Fast bias correction (one pass) instead of the full algorithm (slower, layer by layer)."),
            precision_param(),
        ),
        checks=(dataset_check(),),
    )

    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Any:
        from optimum.intel import OVQuantizationConfig

        from . import runtime

        p = params
        precision = p["inference_precision"]
        kind = ctx.model_info.kind
        exported = runtime.exported_ir(ctx)
        options = dict(num_samples=p["num_samples"], sym=p["sym"], smooth_quant_alpha=p["smooth_quant_alpha"],
                      fast_bias_correction=p["fast_bias_correction"])
        notes = [f"NNCF quantize: int8 weights and {'symmetric' if p['sym'] else 'asymmetric'} int8 activations, "
                 f"{p['num_samples']} calibration samples from {p['dataset']}"]
        if kind == "causal-lm":
            texts = calibration_texts(ctx, p["dataset"], p["num_samples"], "num_samples")
            config = OVQuantizationConfig(dataset=texts, tokenizer=str(exported.path), **options)
            ctx.progress("quantize", None, "NNCF static quantization (statistics, SmoothQuant, bias correction)")
            t0 = time.perf_counter()
            model = runtime.load_ir(kind, exported.path, precision, quantization_config=config)
            quantize_s = time.perf_counter() - t0
        else:
            model, quantize_s = self._quantize_encoder(ctx, p, exported.path, precision, options)
        return self.finish(ctx, model, precision, exported, quantize_s=quantize_s, load_s=0.0, notes=notes,
                           what="static int8")

    def _quantize_encoder(self, ctx: BuildContext, p: Mapping[str, Any], ir_dir: Any, precision: str,
                          options: dict) -> tuple[Any, float]:
        import datasets
        from optimum.intel import OVConfig, OVQuantizationConfig, OVQuantizer

        from . import runtime

        texts = calibration_texts(ctx, p["dataset"], p["num_samples"], "num_samples", seq_len=ENCODER_SEQ_LEN)
        tok = ctx.tokenizer()
        encoded = tok(texts, padding="max_length", max_length=ENCODER_SEQ_LEN, truncation=True)
        calibration = datasets.Dataset.from_dict(dict(encoded))
        source = runtime.load_ir("encoder", ir_dir, precision)
        out = ctx.workdir / "ov-static"
        ctx.progress("quantize", None, "NNCF static quantization (statistics, SmoothQuant, bias correction)")
        t0 = time.perf_counter()
        OVQuantizer.from_pretrained(source).quantize(
            calibration_dataset=calibration, save_directory=str(out),
            ov_config=OVConfig(quantization_config=OVQuantizationConfig(**options)),
        )
        quantize_s = time.perf_counter() - t0
        return runtime.load_ir("encoder", out, precision), quantize_s

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ...models.snippet import calibration_code, loadable, ov_config_code

        p = self.values(params)
        m = loadable(model_id, self.env)
        args = f"num_samples={p['num_samples']}, sym={p['sym']}"
        if p["smooth_quant_alpha"] is not None:
            args += f", smooth_quant_alpha={p['smooth_quant_alpha']}"
        if not p["fast_bias_correction"]:
            args += ", fast_bias_correction=False"
        ov_config = ov_config_code(p["inference_precision"])
        causal = (
            "from optimum.intel import OVModelForCausalLM, OVQuantizationConfig\n\n"
            + m.line()
            + calibration_code(p["dataset"], p["num_samples"], 512)
            + "# Causal LMs: a list of calibration strings and the tokenizer\n"
            f"config = OVQuantizationConfig({args},\n"
            "                              dataset=calibration_texts, tokenizer=model_id)\n"
            "model = OVModelForCausalLM.from_pretrained(model_id, export=True, quantization_config=config,\n"
            f"                                           ov_config={ov_config})\n"
        )
        encoder = (
            "import datasets\n"
            "from optimum.intel import OVConfig, OVModelForFeatureExtraction, OVQuantizationConfig, OVQuantizer\n"
            "from transformers import AutoTokenizer\n\n"
            + m.line()
            + calibration_code(p["dataset"], p["num_samples"], ENCODER_SEQ_LEN)
            + "# Encoders: OVQuantizer with a tokenized datasets.Dataset\n"
            "tok = AutoTokenizer.from_pretrained(model_id)\n"
            "encoder = OVModelForFeatureExtraction.from_pretrained(model_id, export=True)\n"
            f"calib = datasets.Dataset.from_dict(dict(tok(calibration_texts, padding='max_length', "
            f"max_length={ENCODER_SEQ_LEN}, truncation=True)))\n"
            "OVQuantizer.from_pretrained(encoder).quantize(\n"
            "    calibration_dataset=calib, save_directory='ov-static',\n"
            f"    ov_config=OVConfig(quantization_config=OVQuantizationConfig({args})),\n)\n"
            f"model = OVModelForFeatureExtraction.from_pretrained('ov-static', ov_config={ov_config})\n"
        )
        if m.kind == "causal-lm":
            return causal
        if m.kind == "encoder":
            return encoder
        return causal + "\n# ---- or, for an encoder ----\n" + encoder
