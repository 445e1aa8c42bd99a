"""`ov-weight`: weight-only compression of an OpenVINO IR by NNCF, through optimum-intel's
`OVWeightQuantizationConfig`.

8-bit: every weight matrix (MatMul and embedding) per output channel, asymmetric by default
(what optimum-intel applies on its own to models over one billion parameters). 4-bit: groups
of `group_size` weights along the input dimension, in the data type picked (`int4`, or the
`nf4` / `cb4` / `mxfp4` look-up formats the installed version accepts: read from the library
by the environment's probe). Unless `all_layers`, the embedding and the output layer stay in
the backup precision (int8_asym); `ratio` < 1 keeps the most sensitive layers there too.

Data-aware options run on calibration texts from the workbench's data sources (the
calibration part, never the evaluation windows): AWQ rescales channels by activation
magnitude, scale estimation fits the group scales to minimise the layer's output error,
GPTQ updates the remaining weights after each column is rounded, LoRA correction adds
low-rank adapters fitted to the quantization error. They take minutes per layer set on
a CPU; their progress goes through NNCF's own bars into the worker log.

Validation follows optimum-intel's and NNCF's rules, before any export: 8-bit takes none of
the 4-bit options; data-aware options need `dataset`; GPTQ and LoRA correction exclude each
other; mxfp4 takes group size 32 and no data-aware option; the group size must divide every
compressed layer's input dimension unless `group_size_fallback` says what to do otherwise.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ...data.text import source_error
from ...errors import ParamError
from ...params import Check, Param, Schema, Values
from ..layers import group_size_error
from ..calibration import calibration_texts
from .common import OpenVINOMethod, precision_param, probe_values

if TYPE_CHECKING:  # pragma: no cover
    from ...measure.context import BuildContext

DATA_AWARE = ("awq", "scale_estimation", "gptq", "lora_correction")
# Sensitivity metrics that work without activations (NNCF: the others need a dataset).
DATA_FREE_METRICS = ("weight_quantization_error",)


def _schema() -> Schema:
    probe = probe_values()
    four = {"bits": 4}
    return Schema(
        (
            Param("bits", "choice", 8, choices=(8, 4),
                  help="8: int8 per output channel on every weight matrix (optimum-intel's default, which it applies "
                       "by itself to models over 1B parameters). 4: 4-bit groups; the embedding and output layer "
                       "stay in the backup precision unless all_layers."),
            Param("dtype", "choice", probe["weight_dtypes_4bit"][0], choices=tuple(probe["weight_dtypes_4bit"]),
                  visible_when=four,
                  help="4-bit data type, as the installed optimum-intel accepts them: int4 (uniform, with sym), nf4 "
                       "(normal-float levels), cb4 (a codebook of 16 fp8 E4M3 values), mxfp4 (E2M1 with an E8M0 "
                       "scale per 32 weights)."),
            Param("sym", "bool", False,
                  help="Symmetric (no zero point) instead of asymmetric; applies to int8 and int4."),
            Param("group_size", "int", 64, minimum=-1, visible_when=four,
                  help="Weights sharing a scale along the input dimension; -1 = one per output channel. "
                       "optimum-intel's default is 128; the workbench uses 64, which divides the hidden sizes "
                       "of more small models (SmolLM2's 576 among them). mxfp4 takes only 32."),
            Param("group_size_fallback", "choice", "error", choices=tuple(probe["group_size_fallback"]),
                  visible_when=four,
                  help="When group_size does not divide a layer: error (refused in validation), ignore (leave "
                       "such layers uncompressed), adjust (the largest group size >= 32 that divides, else backup)."),
            Param("ratio", "float", 1.0, minimum=0.0, maximum=1.0, visible_when=four,
                  help="Share of the compressible layers in 4-bit (by weight count); the rest, chosen by "
                       "sensitivity_metric, stays in backup_precision."),
            Param("all_layers", "bool", False, visible_when=four,
                  help="Also compress the embedding and the output layer to 4-bit (else they take the backup "
                       "precision)."),
            Param("sensitivity_metric", "choice", None, choices=tuple(probe["sensitivity_metrics"]), nullable=True,
                  visible_when=four,
                  help="How layers are ranked for the 4-bit share when ratio < 1. none: NNCF's default "
                       "(weight_quantization_error without a dataset, hessian_input_activation with one). "
                       "All but weight_quantization_error need a dataset."),
            Param("backup_precision", "choice", None, choices=tuple(probe["backup_precisions"]), nullable=True,
                  visible_when=four,
                  help="Precision of the layers left out of 4-bit: int8_asym (NNCF's default when none), "
                       "int8_sym, or none (kept in floating point)."),
            Param("awq", "bool", False, visible_when=four,
                  help="Activation-aware weight quantization: scale salient input channels before rounding. "
                       "Needs a dataset."),
            Param("scale_estimation", "bool", False, visible_when=four,
                  help="Fit each group's scale to minimise the layer's output error on calibration data. "
                       "Needs a dataset."),
            Param("gptq", "bool", False, visible_when=four,
                  help="GPTQ: round column by column and update the remaining weights with the inverse Hessian. "
                       "Needs a dataset; not with lora_correction."),
            Param("lora_correction", "bool", False, visible_when=four,
                  help="Add low-rank adapters fitted to the quantization error (costs latency). Needs a dataset; "
                       "not with gptq."),
            Param("lora_rank", "int", 8, minimum=1, maximum=1024, visible_when={"bits": 4, "lora_correction": True},
                  help="Rank of the LoRA correction adapters (NNCF's default 8)."),
            Param("dataset", "str", None, nullable=True, visible_when=four,
                  help="Calibration text for the data-aware options: pydoc-topics, file:PATH or hub:NAME[/CONFIG] "
                       "(samples from its calibration part, never the evaluation windows). none: data-free."),
            Param("num_samples", "int", 32, minimum=1, maximum=4096, visible_when=four,
                  help="Calibration samples (of the run's calib_seq_len tokens). optimum-intel's default is 128; "
                       "32 keeps data-aware runs to minutes on a CPU."),
            precision_param(),
        ),
        checks=(
            Check(("dataset",), _check_dataset),
            Check(("gptq", "lora_correction"), _check_gptq_lora),
            Check(("dtype",), _check_dtype),
            Check(("sensitivity_metric",), _check_sensitivity),
            Check(("num_samples",), _check_num_samples),
        ),
    )


def _check_dataset(v: Mapping[str, Any]) -> str | None:
    if v.get("bits") != 4:
        return None
    wanted = [k for k in DATA_AWARE if v.get(k)]
    if wanted and v.get("dataset") is None:
        return (f"{', '.join(wanted)} need{'s' if len(wanted) == 1 else ''} calibration data: set dataset "
                "(pydoc-topics, file:PATH or hub:NAME), or turn them off")
    if v.get("dataset") is not None:
        return source_error(v["dataset"])
    return None


def _check_gptq_lora(v: Mapping[str, Any]) -> str | None:
    if v.get("gptq") and v.get("lora_correction"):
        return "gptq and lora_correction cannot be combined (NNCF); allowed: one of them"
    return None


def _check_dtype(v: Mapping[str, Any]) -> str | None:
    if v.get("dtype") != "mxfp4":
        return None
    used = [k for k in DATA_AWARE if v.get(k)]
    if used:
        return f"mxfp4 takes no data-aware option (got {', '.join(used)}); allowed with them: int4, nf4, cb4"
    if v.get("group_size") != 32:
        return f"mxfp4 shares one E8M0 scale per 32 weights: group_size must be 32 (got {v.get('group_size')})"
    if v.get("group_size_fallback") == "adjust":
        return "mxfp4 does not take group_size_fallback=adjust (NNCF); allowed: error, ignore"
    return None


def _check_sensitivity(v: Mapping[str, Any]) -> str | None:
    metric = v.get("sensitivity_metric")
    if metric is None:
        return None
    if v.get("ratio", 1.0) >= 1.0:
        return "sensitivity_metric only ranks layers for ratio < 1 (with ratio=1 every layer is 4-bit): lower ratio"
    if metric not in DATA_FREE_METRICS and v.get("dataset") is None:
        return f"sensitivity_metric={metric} ranks layers by their activations: set dataset, or use " \
               f"{', '.join(DATA_FREE_METRICS)}"
    return None


def _check_num_samples(v: Mapping[str, Any]) -> str | None:
    if v.get("bits") == 4 and v.get("dataset") is None and v.get("num_samples") != 32:
        return "num_samples only applies with a dataset: set dataset, or leave num_samples at its default (32)"
    return None


class _SchemaFromProbe:
    """`OVWeight.schema`, built on access from the environment's probe (cheap: cached by file stamp)."""

    _cached: tuple[dict, Schema] | None = None

    def __get__(self, obj: Any, owner: type) -> Schema:
        probe = probe_values()
        if self._cached is None or self._cached[0] is not probe:
            self._cached = (probe, _schema())
        return self._cached[1]


class OVWeight(OpenVINOMethod):
    """NNCF weight-only compression (int8, or 4-bit int4/nf4/cb4/mxfp4 groups, data-free or data-aware)."""

    name = "ov-weight"
    description = (
        "OpenVINO weight-only compression by NNCF: int8 per channel, or 4-bit groups (int4, nf4, cb4, mxfp4) with "
        "mixed precision (ratio, sensitivity) and the data-aware AWQ, scale estimation, GPTQ and LoRA correction."
    )
    schema = _SchemaFromProbe()  # type: ignore[assignment]

    # --- kernel side -------------------------------------------------------
    def model_errors(self, p: Values, layers: Mapping[str, tuple[int, int]], model: Any) -> list[ParamError]:
        out: list[ParamError] = []
        kind = getattr(model, "kind", "causal-lm")
        if p["bits"] == 4 and kind != "causal-lm":
            used = [k for k in DATA_AWARE if p.get(k)]
            if used:
                out.append(ParamError(used[0], f"{', '.join(used)}: NNCF's data-aware algorithms are applied "
                                               f"to causal LMs here; {getattr(model, 'name', 'this model')} is "
                                               f"an {kind}; allowed for it: data-free 4-bit or 8-bit"))
        if p["bits"] == 4 and p["group_size_fallback"] == "error" and layers:
            selected = [n for n in layers if p["all_layers"] or n.rsplit(".", 1)[-1] != "lm_head"]
            err = group_size_error(
                layers, selected, p["group_size"],
                remedy="or set group_size_fallback=ignore (leave them uncompressed) or adjust (a smaller group "
                       "size for them)",
            )
            if err is not None:
                out.append(err)
        return out

    # --- worker side -------------------------------------------------------
    def quantization_config(self, ctx: BuildContext, p: Mapping[str, Any], tokenizer_dir: str) -> Any:
        """The `OVWeightQuantizationConfig` of these parameters (calibration texts loaded when needed)."""
        from optimum.intel import OVWeightQuantizationConfig

        if p["bits"] == 8:
            return OVWeightQuantizationConfig(bits=8, sym=p["sym"])
        kwargs: dict[str, Any] = dict(
            bits=4, dtype=p["dtype"], sym=p["sym"], group_size=p["group_size"], ratio=p["ratio"],
            all_layers=p["all_layers"] or None, sensitivity_metric=p["sensitivity_metric"],
            backup_precision=p["backup_precision"], group_size_fallback=p["group_size_fallback"],
            scale_estimation=p["scale_estimation"] or None, gptq=p["gptq"] or None,
            lora_correction=p["lora_correction"] or None,
        )
        if p["awq"]:
            kwargs["quant_method"] = "awq"
        if p["lora_correction"]:
            import nncf
            from nncf.quantization.advanced_parameters import AdvancedLoraCorrectionParameters

            kwargs["advanced_parameters"] = nncf.AdvancedCompressionParameters(
                lora_correction_params=AdvancedLoraCorrectionParameters(adapter_rank=p["lora_rank"]))
        if p["dataset"] is not None:
            kwargs.update(dataset=calibration_texts(ctx, p["dataset"], p["num_samples"], "num_samples"),
                          num_samples=p["num_samples"], tokenizer=tokenizer_dir)
        return OVWeightQuantizationConfig(**kwargs)

    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Any:
        from . import runtime

        p = params
        precision = p["inference_precision"]
        exported = runtime.exported_ir(ctx)
        config = self.quantization_config(ctx, p, str(exported.path))
        ctx.progress("quantize", None, f"NNCF weight compression ({_summary(p)})")
        # Data-free only: that is where the two paths were checked to give the same bytes.
        numpy_path = p.get("dataset") is None and _prefer_numpy_compression(Path(exported.path))
        t0 = time.perf_counter()
        model = runtime.load_ir(ctx.model_info.kind, exported.path, precision, quantization_config=config)
        quantize_s = time.perf_counter() - t0
        notes = [f"NNCF compress_weights: {_summary(p)}"]
        if numpy_path:
            notes.append("NNCF's numpy compression path (NNCF_DISABLE_OPTIMIZED_COMPRESSION): the IR is under "
                         f"{SMALL_IR_BYTES // 2**30} GiB")
        if p["bits"] == 4 and not p["all_layers"]:
            notes.append("embedding and output layer in the backup precision "
                         f"({p['backup_precision'] or 'int8_asym'}): all_layers=False")
        return self.finish(ctx, model, precision, exported, quantize_s=quantize_s, load_s=0.0, notes=notes,
                           what=_summary(p))

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ...models.snippet import OV_CLASSES, calibration_code, loadable, ov_config_code

        p = self.values(params)
        m = loadable(model_id, self.env)
        cls = OV_CLASSES.get(m.kind or "", "OVModelForCausalLM")
        lines = [f"from optimum.intel import {cls}, OVWeightQuantizationConfig{m.hint('OVModelForFeatureExtraction')}",
                 "", m.line().rstrip("\n")]
        args = [f"bits={p['bits']}", f"sym={p['sym']}"]
        if p["bits"] == 4:
            args += [f"dtype={p['dtype']!r}", f"group_size={p['group_size']}", f"ratio={p['ratio']}",
                     f"group_size_fallback={p['group_size_fallback']!r}"]
            for k in ("all_layers", "scale_estimation", "gptq", "lora_correction"):
                if p[k]:
                    args.append(f"{k}=True")
            if p["awq"]:
                args.append("quant_method='awq'")
            for k in ("sensitivity_metric", "backup_precision"):
                if p[k] is not None:
                    args.append(f"{k}={p[k]!r}")
            if p["dataset"] is not None:
                lines.append(calibration_code(p["dataset"], p["num_samples"], 512).rstrip("\n"))
                args += ["dataset=calibration_texts", f"num_samples={p['num_samples']}", "tokenizer=model_id"]
        if p["bits"] == 4 and p["lora_correction"]:
            lines.insert(1, "import nncf")
            lines.insert(2, "from nncf.quantization.advanced_parameters import AdvancedLoraCorrectionParameters")
            rank = p["lora_rank"]
            args.append("advanced_parameters=nncf.AdvancedCompressionParameters(\n"
                        f"        lora_correction_params=AdvancedLoraCorrectionParameters(adapter_rank={rank}))")
        lines.append("config = OVWeightQuantizationConfig(\n    " + ",\n    ".join(args) + ",\n)")
        lines.append(
            f"model = {cls}.from_pretrained(\n    model_id, export=True, quantization_config=config,\n"
            f"    ov_config={ov_config_code(p['inference_precision'])},\n)\n"
            "model.save_pretrained('ov-weight')"
        )
        return "\n".join(lines) + "\n"


# Below this IR size NNCF's numpy path compresses faster than its "optimized" one (see below).
SMALL_IR_BYTES = 2**30


def _prefer_numpy_compression(ir_dir: Path) -> bool:
    """Use NNCF's numpy compression for a small IR (this worker process only; a user's own
    NNCF_DISABLE_OPTIMIZED_COMPRESSION, set or not, is left as it is); True when chosen.

    NNCF's optimized path compiles one small OpenVINO model per weight, with its cache turned off
    (nncf 3.x, openvino_backend._create_compression_subgraph): 211 compilations, about 7 s on two
    cores, for SmolLM2-135M's int8 compression, which the numpy path does in under a second of
    work (13.9 s -> 5.7 s in all). The bytes are the same: every constant of the compressed IR
    hashed equal for int8 asym per channel and int4 asym g64 on SmolLM2. On a model of several GB
    the compiled path is the faster one, so it stays there."""
    if "NNCF_DISABLE_OPTIMIZED_COMPRESSION" in os.environ:
        return False
    weights = sum(f.stat().st_size for f in ir_dir.glob("*.bin"))
    if not 0 < weights < SMALL_IR_BYTES:
        return False
    os.environ["NNCF_DISABLE_OPTIMIZED_COMPRESSION"] = "1"
    return True


def _summary(p: Mapping[str, Any]) -> str:
    if p["bits"] == 8:
        return f"int8 {'sym' if p['sym'] else 'asym'} per channel"
    dtype = p["dtype"] + ((" sym" if p["sym"] else " asym") if p["dtype"] == "int4" else "")
    group = "per channel" if p["group_size"] == -1 else f"g{p['group_size']}"
    parts = [f"{dtype} {group}"]
    if p["ratio"] < 1:
        parts.append(f"ratio {p['ratio']:g}" + (f" by {p['sensitivity_metric']}" if p["sensitivity_metric"] else ""))
    parts += [k.replace("_", " ") for k in DATA_AWARE if p.get(k)]
    if p.get("lora_correction"):
        parts[-1] += f" (rank {p['lora_rank']})"
    if p["all_layers"]:
        parts.append("all layers")
    return ", ".join(parts)

