"""`ort-dynamic`: post-training dynamic int8 through optimum's `ORTQuantizer`.

Weights are quantized once to int8 (per output channel or per tensor); activations are
quantized at run time, with a range computed on each input (`DynamicQuantizeLinear`), so no
calibration data is needed. MatMuls become `MatMulInteger` (ORT fuses them with the scaling
at session creation); embedding Gathers read int8 tables. Causal LMs run with their KV cache.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping

from ...params import Check, Param, Schema
from .common import (DYNAMIC_OPERATORS, ORTMethod, exclude_param, operators_check, per_channel_param, preset_param,
                     reduce_range_param)

if TYPE_CHECKING:  # pragma: no cover
    from ...measure.context import BuildContext


def quantization_config(p: Mapping[str, Any], is_static: bool, nodes_to_exclude: list[str]) -> Any:
    """optimum's `QuantizationConfig` for a preset and these parameters."""
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    kwargs: dict[str, Any] = dict(is_static=is_static, per_channel=p["per_channel"],
                                  operators_to_quantize=list(p["operators"]), nodes_to_exclude=nodes_to_exclude)
    if p["preset"] in ("avx2", "avx512"):
        kwargs["reduce_range"] = p["reduce_range"]
    if is_static:
        kwargs["use_symmetric_activations"] = p["sym_activations"]
    return getattr(AutoQuantizationConfig, p["preset"])(**kwargs)


def config_code(p: Mapping[str, Any], is_static: bool) -> str:
    args = f"is_static={is_static}, per_channel={p['per_channel']}"
    if p["preset"] in ("avx2", "avx512") and p.get("reduce_range"):
        args += ", reduce_range=True"
    if is_static and p.get("sym_activations"):
        args += ", use_symmetric_activations=True"
    args += f",\n    operators_to_quantize={list(p['operators'])!r}, nodes_to_exclude=nodes_to_exclude"
    return f"qconfig = AutoQuantizationConfig.{p['preset']}({args})\n"


class ORTDynamic(ORTMethod):
    """Dynamic int8 (weights int8 ahead of time, activations per call) by ORTQuantizer."""

    name = "ort-dynamic"
    description = (
        "ONNX Runtime dynamic int8 (ORTQuantizer): int8 weights per channel or per tensor, activations quantized "
        "at run time; CPU presets avx512_vnni / avx512 / avx2 / arm64; no calibration data."
    )
    schema = Schema(
        (
            preset_param(),
            per_channel_param(),
            reduce_range_param(),
            Param("operators", "list", ["MatMul", "Gather"],
                  help="Op types to quantize (operators_to_quantize): MatMul = the Linear layers, Gather = the "
                       f"embedding tables. Allowed: {', '.join(DYNAMIC_OPERATORS)}."),
            exclude_param(extra="Causal LMs lose much more than encoders to dynamic int8 (a per-tensor activation "
                                "range per call, outliers included)."),
        ),
        checks=(Check(("operators",), operators_check(DYNAMIC_OPERATORS)),),
    )

    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Any:
        from optimum.onnxruntime import ORTQuantizer

        from . import runtime

        p = params
        exported = runtime.exported(ctx)
        nodes, notes = self.exclude_nodes(ctx, p["exclude"], exported.model_file)
        qconfig = quantization_config(p, False, nodes)
        out = runtime.new_workdir(ctx, "ort-dynamic", exported.path)
        ctx.progress("quantize", None, f"dynamic int8 ({p['preset']}, {'per channel' if p['per_channel'] else 'per tensor'})")
        t0 = time.perf_counter()
        ORTQuantizer.from_pretrained(str(exported.path), file_name=runtime.MODEL_FILE).quantize(
            quantization_config=qconfig, save_dir=str(out))
        quantize_s = time.perf_counter() - t0
        notes.append(f"ORTQuantizer dynamic int8, preset {p['preset']}: weights {qconfig.weights_dtype.name} "
                     f"{'per channel' if p['per_channel'] else 'per tensor'}, activations "
                     f"{qconfig.activations_dtype.name} per call, reduce_range={qconfig.reduce_range}, operators "
                     f"{list(p['operators'])}" + (f", {len(nodes)} nodes excluded" if nodes else ""))
        return self.finish(ctx, out, runtime.QUANTIZED_FILE, exported, quantize_s=quantize_s, notes=notes,
                           what="dynamic int8")

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ...models.snippet import ORT_CLASSES, loadable

        p = self.values(params)
        m = loadable(model_id, self.env)
        cls = ORT_CLASSES.get(m.kind or "", "ORTModelForCausalLM")
        return (
            f"from optimum.onnxruntime import {cls}, ORTQuantizer{m.hint('ORTModelForFeatureExtraction')}\n"
            "from optimum.onnxruntime.configuration import AutoQuantizationConfig\n\n"
            + m.line()
            + f"{cls}.from_pretrained(model_id, export=True).save_pretrained('ort-fp32')\n"
            "nodes_to_exclude = []  # ONNX node names, e.g. '/model/layers.0/mlp/down_proj/MatMul'\n"
            + config_code(p, False)
            + "ORTQuantizer.from_pretrained('ort-fp32').quantize(quantization_config=qconfig, save_dir='ort-dynamic')\n"
            f"model = {cls}.from_pretrained('ort-dynamic', file_name='model_quantized.onnx')\n"
        )
