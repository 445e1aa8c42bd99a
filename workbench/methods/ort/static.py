"""`ort-static`: static int8 (QDQ) through optimum's `ORTQuantizer`, calibrated on text.

Activations get fixed ranges chosen on calibration samples by ORT's calibrators: `minmax`
(the extremes seen), `entropy` (TensorRT's KL-divergence rule on a histogram) or
`percentile` (the histogram's given percentile of |x|). Weights are int8, per channel or per
tensor. Encoders only: the causal-LM export carries the KV cache as graph inputs, which a
text calibration set does not provide (use `ort-dynamic` or `ort-int4` for causal LMs).

Three traps of the ORT calibrators are handled here (docs/backends.md, measured on MiniLM):
- `Where` in the operator list makes the histogram calibrators fail with "Too many bins for
  data range": BERT's attention mask adds float32's lowest value (-3.4e38), numpy's histogram
  range then overflows. It is refused with entropy / percentile, and not in the default list;
- ORT's `HistogramCalibrater` keeps every activation of every sample until the end (about
  33 MB per 128-token MiniLM sample: 4 GB at 100 samples). Samples are fed one at a time
  with `partial_fit`, which merges histograms as it goes: peak memory no longer grows with
  num_samples (and unpadded samples of different lengths work);
- the FFN output projections take GELU outputs (range about [-0.2, 25], most values near 0):
  one per-tensor uint8 range crushes them, so the default excludes them (mean cosine on
  MiniLM 0.854 -> 0.991 with minmax).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import time
from typing import TYPE_CHECKING, Any, Mapping

from ...params import Check, Param, Schema
from ..calibration import calibration_texts, dataset_check, dataset_param
from .common import (ORTMethod, STATIC_OPERATORS, exclude_param, operators_check, per_channel_param, preset_param,
                     reduce_range_param)
from .dynamic import config_code, quantization_config

if TYPE_CHECKING:  # pragma: no cover
    from ...measure.context import BuildContext

SEQ_LEN = 128
CALIBRATORS = ("minmax", "entropy", "percentile")
# BERT's FFN output projections (not attention.output.dense) and Llama's down_proj.
DEFAULT_EXCLUDE = ("*[0-9].output.dense", "*.down_proj")
HISTOGRAM_DEFAULT_BINS = {"entropy": 128, "percentile": 2048}


def _check_where(v: Mapping[str, Any]) -> str | None:
    if v["calibration"] != "minmax" and "Where" in v["operators"]:
        return ("operators: Where cannot be calibrated with calibration="
                f"{v['calibration']}: ORT's histogram fails with 'Too many bins for data range' on the attention "
                "mask's -3.4e38 constant (numpy's float32 histogram range overflows); drop Where, or use minmax")
    return None


class ORTStatic(ORTMethod):
    """Static int8 (QDQ) with ORT's MinMax, Entropy or Percentile calibrator."""

    name = "ort-static"
    description = (
        "ONNX Runtime static int8 (ORTQuantizer, QDQ): weights and activations int8, activation ranges calibrated "
        "on text with minmax, entropy (KL) or percentile; encoders."
    )
    model_kinds = ("encoder",)
    default_exclude = DEFAULT_EXCLUDE
    schema = Schema(
        (
            Param("calibration", "choice", "minmax", choices=CALIBRATORS,
                  help="How activation ranges are chosen: minmax (extremes seen), entropy (the range whose "
                       "quantized histogram keeps the KL divergence lowest), percentile (the given percentile of "
                       "|x|)."),
            Param("percentile", "float", 99.999, minimum=90.0, maximum=100.0, visible_when={"calibration": "percentile"},
                  help="Percentile of |x| kept in range (99.999: optimum's default)."),
            Param("num_bins", "int", None, minimum=128, maximum=8192, nullable=True,
                  visible_when={"calibration": ("entropy", "percentile")},
                  help="Histogram bins (none: 128 for entropy, 2048 for percentile). Entropy's search is "
                       "quadratic in the bins: 2048 took 2 minutes on MiniLM against 1 s at 128."),
            dataset_param(),
            Param("num_samples", "int", 64, minimum=1, maximum=4096,
                  help=f"Calibration samples of up to {SEQ_LEN} tokens, fed one at a time (bounded memory)."),
            preset_param(),
            per_channel_param(),
            reduce_range_param(),
            Param("sym_activations", "bool", False,
                  help="Symmetric int8 activations (force_symmetric_range) instead of asymmetric uint8: wastes "
                       "half the grid on one-sided inputs (MiniLM minmax: cosine 0.556)."),
            Param("operators", "list", ["MatMul", "Gather"],
                  help="Op types to quantize (operators_to_quantize). ORT's static default list also has "
                       "LayerNormalization, Where and shape ops: on MiniLM they cost accuracy (residual outliers) "
                       f"and Where breaks the histogram calibrators. Allowed: {', '.join(STATIC_OPERATORS)}."),
            exclude_param(DEFAULT_EXCLUDE,
                          extra="Default: the FFN output projections (BERT '*[0-9].output.dense', Llama "
                                "'*.down_proj'), whose GELU inputs one per-tensor range cannot cover."),
        ),
        checks=(Check(("operators",), operators_check(STATIC_OPERATORS)), Check(("operators",), _check_where),
                dataset_check()),
    )

    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Any:
        from . import runtime

        p = params
        exported = runtime.exported(ctx)
        nodes, notes = self.exclude_nodes(ctx, p["exclude"], exported.model_file)
        qconfig = quantization_config(p, True, nodes)
        texts = calibration_texts(ctx, p["dataset"], p["num_samples"], "num_samples", seq_len=SEQ_LEN)
        out = runtime.new_workdir(ctx, "ort-static", exported.path)
        t0 = time.perf_counter()
        quantizer, ranges = calibrate(ctx, exported, texts, p, qconfig)
        ctx.progress("quantize", None, "writing the QDQ graph")
        quantizer.quantize(quantization_config=qconfig, save_dir=str(out), calibration_tensors_range=ranges)
        quantize_s = time.perf_counter() - t0
        bins = p.get("num_bins") or HISTOGRAM_DEFAULT_BINS.get(p["calibration"])
        how = {"minmax": "minmax", "entropy": f"entropy ({bins} bins)",
               "percentile": f"percentile {p.get('percentile')} ({bins} bins)"}[p["calibration"]]
        notes.append(f"ORTQuantizer static int8 (QDQ), preset {p['preset']}: {how} ranges for {len(ranges.data)} tensors "
                     f"from {len(texts)} samples of {p['dataset']}; weights {qconfig.weights_dtype.name} "
                     f"{'per channel' if p['per_channel'] else 'per tensor'}, activations "
                     f"{qconfig.activations_dtype.name}; operators {list(p['operators'])}"
                     + (f"; {len(nodes)} nodes excluded" if nodes else ""))
        return self.finish(ctx, out, runtime.QUANTIZED_FILE, exported, quantize_s=quantize_s, notes=notes,
                           what="static int8 (QDQ)")

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ...models.snippet import calibration_code, loadable

        p = self.values(params)
        cal = {"minmax": "AutoCalibrationConfig.minmax(calib)",
               "entropy": f"AutoCalibrationConfig.entropy(calib{_bins_arg(p)})",
               "percentile": f"AutoCalibrationConfig.percentiles(calib{_bins_arg(p)}, percentile={p.get('percentile')})",
               }[p["calibration"]]
        return (
            "import dataclasses\n"
            "from datasets import Dataset\n"
            "from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer\n"
            "from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig\n"
            "from transformers import AutoTokenizer\n\n"
            + loadable(model_id, self.env).line()
            + calibration_code(p.get("dataset"), p.get("num_samples") or 32, SEQ_LEN)
            + "ORTModelForFeatureExtraction.from_pretrained(model_id, export=True).save_pretrained('ort-fp32')\n"
            "tok = AutoTokenizer.from_pretrained(model_id)\n"
            f"calib = Dataset.from_dict(dict(tok(calibration_texts, truncation=True, max_length={SEQ_LEN})))\n"
            "nodes_to_exclude = []  # ONNX node names, e.g. '/encoder/layer.0/output/dense/MatMul'\n"
            + config_code(p, True)
            + f"ccfg = {cal}\n"
            "q = ORTQuantizer.from_pretrained('ort-fp32')\n"
            "# One sample per partial_fit: ORT's histogram calibrators otherwise keep every activation in memory.\n"
            "for i in range(len(calib)):\n"
            "    q.partial_fit(calib.select([i]), ccfg if i == 0 else dataclasses.replace(ccfg, method=None),\n"
            "                  operators_to_quantize=qconfig.operators_to_quantize"
            + (", force_symmetric_range=True" if p["sym_activations"] else "") + ",\n"
            "                  onnx_augmented_model_name='augmented.onnx')\n"
            "q.quantize(quantization_config=qconfig, save_dir='ort-static', calibration_tensors_range=q.compute_ranges())\n"
            "model = ORTModelForFeatureExtraction.from_pretrained('ort-static', file_name='model_quantized.onnx')\n"
        )


def _bins_arg(p: Mapping[str, Any]) -> str:
    return f", num_bins={p['num_bins']}" if p.get("num_bins") else ""


def calibration_config(dataset: Any, p: Mapping[str, Any]) -> Any:
    from optimum.onnxruntime.configuration import AutoCalibrationConfig

    kw = {"num_bins": p["num_bins"]} if p.get("num_bins") else {}
    if p["calibration"] == "minmax":
        return AutoCalibrationConfig.minmax(dataset)
    if p["calibration"] == "entropy":
        return AutoCalibrationConfig.entropy(dataset, **kw)
    return AutoCalibrationConfig.percentiles(dataset, percentile=p["percentile"], **kw)


def calibrate(ctx: BuildContext, exported: Any, texts: list[str], p: Mapping[str, Any], qconfig: Any,
              seq_len: int = SEQ_LEN) -> tuple[Any, Any]:
    """Run ORT's calibrator over the texts (each truncated to `seq_len` tokens) one sample at a
    time; (quantizer, TensorsData ranges)."""
    from datasets import Dataset
    from optimum.onnxruntime import ORTQuantizer

    from . import runtime

    encoded = ctx.tokenizer()(texts, truncation=True, max_length=seq_len)
    dataset = Dataset.from_dict(dict(encoded))
    config = calibration_config(dataset, p)
    # method=None makes partial_fit reuse the calibrator it created on the first call (optimum 2.1).
    cont = dataclasses.replace(config, method=None)
    quantizer = ORTQuantizer.from_pretrained(str(exported.path), file_name=runtime.MODEL_FILE)
    augmented = ctx.workdir / "augmented.onnx"  # a full-size copy; optimum's default is the current directory
    n = len(dataset)
    try:
        for i in range(n):
            ctx.progress("calibrate", i / n, f"{p['calibration']} statistics, sample {i + 1}/{n}")
            with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print lines on every call
                quantizer.partial_fit(dataset.select([i]), config if i == 0 else cont,
                                      operators_to_quantize=qconfig.operators_to_quantize,
                                      force_symmetric_range=p["sym_activations"],
                                      onnx_augmented_model_name=str(augmented))
        ctx.progress("calibrate", 1.0, "computing ranges")
        with contextlib.redirect_stdout(io.StringIO()):
            ranges = quantizer.compute_ranges()
    except ValueError as e:
        if "Too many bins" not in str(e):
            raise
        raise RuntimeError(
            f"ORT's {p['calibration']} calibrator failed: {e}. Cause: a calibrated tensor holds float32's extreme "
            "values (an attention-mask constant), and numpy's float32 histogram range overflows. Hint: remove the "
            "op type that produces or consumes it from operators (Where), or use calibration=minmax") from e
    return quantizer, ranges
