"""`ov-export`: the model in the OpenVINO runtime, unquantized.

It separates what the runtime gains from what quantization gains, and it checks
the export itself: a converted model can go silently wrong (an ONNX export once
dropped `rope_theta`, docs/backends.md), so the run's perplexity must match the fp32
PyTorch baseline within 0.5% (f32 inference; 2% under a bf16/f16 hint), and the
run is flagged otherwise. Encoders: mean embedding cosine at least 0.995. Pipelines:
RMS pixel difference at most 0.005 (text-to-image), top-1 agreement of the teacher-forced
tokens at least 99.5% (speech-to-text, vision-language).

optimum-intel compresses models over one billion parameters to int8 when they
are exported without a quantization config; this method always exports with
`load_in_8bit=False` and says so, so "OpenVINO fp32" really is fp32.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping

from ...models.catalog import PIPELINE_KINDS
from ...params import Schema
from .common import OpenVINOMethod, export_tolerance, precision_param

if TYPE_CHECKING:  # pragma: no cover
    from ...measure.context import BuildContext


# What the export check compares, per model kind (worker._reference_check).
_CHECKED = {
    "causal-lm": "perplexity within {tol:.1%}",
    "encoder": "mean embedding cosine >= {floor:.3f}",
    "text-to-image": "RMS pixel difference <= {tol:.3f} from the images",
    "speech-to-text": "top-1 agreement >= {floor:.1%} with the teacher-forced tokens",
    "image-text-to-text": "top-1 agreement >= {floor:.1%} with the teacher-forced tokens",
}


class OVExport(OpenVINOMethod):
    """The model exported to an OpenVINO IR and run by the CPU plugin, with no quantization."""

    name = "ov-export"
    description = (
        "OpenVINO runtime without quantization (fp32 IR; f32, bf16 or f16 inference hint): the runtime's own gain, "
        "and a check that the export matches PyTorch (perplexity within 0.5%; pipelines: images or tokens), "
        "else flagged."
    )
    quantizes = False
    model_kinds = ("causal-lm", "encoder", *PIPELINE_KINDS)
    schema = Schema((precision_param(),))

    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Any:
        from . import runtime

        precision = params["inference_precision"]
        exported = runtime.exported_ir(ctx)
        t0 = time.perf_counter()
        model = runtime.load_ir(ctx.model_info.kind, exported.path, precision)
        load_s = time.perf_counter() - t0
        tol = export_tolerance(precision)
        notes = [
            "exported with load_in_8bit=False: optimum-intel would otherwise compress models over 1B parameters "
            "to int8 on export",
            f"export check: {_CHECKED[ctx.model_info.kind].format(tol=tol, floor=1 - tol)} of the fp32 PyTorch "
            "model, else the run is flagged",
        ]
        return self.finish(ctx, model, precision, exported, quantize_s=0.0, load_s=load_s, notes=notes,
                           what="fp32", reference_tolerance=tol)

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ...models.snippet import OV_CLASSES, loadable, ov_config_code

        precision = params.get("inference_precision", "f32")
        m = loadable(model_id, self.env)
        cls = OV_CLASSES.get(m.kind or "", "OVModelForCausalLM")
        if m.kind == "text-to-image":
            pre, post = "", ""  # the pipeline holds its own tokenizer
        elif m.kind in ("speech-to-text", "image-text-to-text"):
            pre = "from transformers import AutoProcessor\n"
            post = "processor = AutoProcessor.from_pretrained(model_id)\n"
        else:
            pre = "from transformers import AutoTokenizer\n"
            post = "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
        return (
            f"from optimum.intel import {cls}{m.hint('OVModelForFeatureExtraction')}\n"
            + pre + "\n"
            + m.line()
            + f"model = {cls}.from_pretrained(\n    model_id, export=True, load_in_8bit=False,\n"
            f"    ov_config={ov_config_code(precision)},\n)\n"
            "model.save_pretrained('ov-fp32')  # openvino_model.xml / .bin\n"
            + post
        )
