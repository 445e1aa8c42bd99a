"""`ort-export`: the model in ONNX Runtime, unquantized.

It separates what the runtime gains from what quantization gains, and it checks the export:
the run's perplexity must match the fp32 PyTorch baseline within 0.5% (encoders: mean
embedding cosine >= 0.995), else the run is flagged. The baseline is computed in the `torch`
environment (transformers 5); this environment has transformers 4.57, which reads RoPE
settings differently (`runtime.harmonize_config`): with `fix_config=false` the export uses
the config as transformers 4.57 reads it, which shows the trap the check is there to catch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from ...params import Param, Schema
from .common import ORTMethod

if TYPE_CHECKING:  # pragma: no cover
    from ...measure.context import BuildContext

TOLERANCE = 0.005


class ORTExport(ORTMethod):
    """The model exported to ONNX by optimum-onnx and run by ONNX Runtime, with no quantization."""

    name = "ort-export"
    description = (
        "ONNX Runtime without quantization (fp32 ONNX export by optimum-onnx, CPU provider): the runtime's own "
        "gain, and a check that the export matches PyTorch (perplexity within 0.5%, cosine >= 0.995), else flagged."
    )
    quantizes = False
    schema = Schema((
        Param("fix_config", "bool", True,
              help="Write the checkpoint's transformers-5 RoPE settings (rope_parameters) in the form transformers "
                   "4.57 reads before exporting. false exports the config as 4.57 reads it (rope_theta falls "
                   "back to 10000): the export check then flags models whose theta differs."),
    ))

    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Any:
        from . import runtime

        exported = runtime.exported(ctx, fix_config=params["fix_config"])
        notes = [f"export check: perplexity within {TOLERANCE:.1%} (encoders: mean embedding cosine >= "
                 f"{1 - TOLERANCE:.3f}) of the fp32 PyTorch model (transformers 5, torch environment), "
                 "else the run is flagged"]
        return self.finish(ctx, exported.path, runtime.MODEL_FILE, exported, quantize_s=0.0, notes=notes,
                           what="fp32", reference_tolerance=TOLERANCE)

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ...models.snippet import ORT_CLASSES, loadable

        m = loadable(model_id, self.env)
        cls = ORT_CLASSES.get(m.kind or "", "ORTModelForCausalLM")
        cache = ", use_cache=True" if cls == "ORTModelForCausalLM" else ""
        return (
            f"from optimum.onnxruntime import {cls}{m.hint('ORTModelForFeatureExtraction')}\n"
            "from transformers import AutoTokenizer\n\n"
            + m.line()
            + "# transformers <4.58 (optimum-onnx's pin) reads rope_theta at the top level of config.json:\n"
            "# a transformers-5 config (rope_parameters only) must be given it before export.\n"
            f"model = {cls}.from_pretrained(model_id, export=True{cache})\n"
            "model.save_pretrained('ort-fp32')  # model.onnx\n"
            "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
        )
