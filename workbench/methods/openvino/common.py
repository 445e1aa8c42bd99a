"""What the OpenVINO methods share: the base class, the probe read in the kernel, the
inference precision parameter, and turning a quantized IR into a `Built`.

Torch-free and OpenVINO-free at import: the libraries are imported in the worker only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ...envs import manager
from ...models.catalog import PIPELINE_KINDS
from ...params import Param
from ..base import Built, Method

if TYPE_CHECKING:  # pragma: no cover
    from ...measure.context import BuildContext

# What optimum-intel 2.2 accepted when this was written; used only until the environment's
# probe (run at `workbench env create openvino`) has recorded what the installed version takes.
FALLBACK_PROBE: dict[str, list[str]] = {
    "weight_dtypes_4bit": ["int4", "nf4", "cb4", "mxfp4"],
    "sensitivity_metrics": ["weight_quantization_error", "hessian_input_activation", "mean_activation_variance",
                            "max_activation_variance", "mean_activation_magnitude"],
    "backup_precisions": ["none", "int8_sym", "int8_asym"],
    "group_size_fallback": ["error", "ignore", "adjust"],
}
_probe_cache: dict[str, Any] = {}


def probe_values() -> dict[str, list[str]]:
    """The probe of the `openvino` environment, else FALLBACK_PROBE (re-read when the file changes)."""
    path = manager.env_dir("openvino") / manager.PROBE_FILE
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        return FALLBACK_PROBE
    if _probe_cache.get("stamp") != stamp:
        found = manager.probed("openvino") or {}
        _probe_cache.update(stamp=stamp, values={k: list(found.get(k) or v) for k, v in FALLBACK_PROBE.items()})
    return _probe_cache["values"]


def precision_param() -> Param:
    return Param(
        "inference_precision", "choice", "f32", choices=("f32", "bf16", "f16"),
        help="OpenVINO CPU INFERENCE_PRECISION_HINT. OpenVINO runs bf16 by default on CPUs with AVX512-BF16 or "
             "AMX; f32 (the workbench default) keeps the comparison with the fp32 PyTorch reference fair. "
             "The precision the compiled model really runs in is reported in the kernel column.",
    )


def export_tolerance(precision: str) -> float:
    """How close an unquantized IR must stay to the fp32 PyTorch model (relative perplexity;
    encoders: 1 - mean cosine). bf16/f16 arithmetic moves the numbers more than f32 reordering."""
    return 0.005 if precision == "f32" else 0.02


class OpenVINOMethod(Method):
    """Base of the methods that run through Optimum Intel / OpenVINO / NNCF (CPU)."""

    backend = "openvino"
    env = "openvino"
    requires = ("optimum-intel", "openvino", "nncf", "optimum", "torch", "transformers")
    install_hint = "workbench env create openvino (optimum-intel 2.2, openvino 2026.4, nncf 3.4)"
    devices = ("cpu",)
    model_kinds = ("causal-lm", "encoder")

    # --- worker side -------------------------------------------------------
    def finish(self, ctx: BuildContext, model: Any, precision: str, exported: Any, *, quantize_s: float, load_s: float,
               notes: list[str], what: str, reference_tolerance: float | None = None) -> Built:
        """Compile (timed apart), count what the IR holds, and describe the run."""
        from ...measure import memory
        from . import runtime

        # The fp32 IR's pages that NNCF read are not needed once its output exists, nor those the CPU
        # plugin read to make its own copies: released before compiling and after (see release_ir_pages).
        released = runtime.release_ir_pages(exported.path)
        ctx.progress("compile", None, "compiling for the OpenVINO CPU plugin")
        compile_s = runtime.compile_timed(model)
        released += runtime.release_ir_pages(exported.path)
        if ctx.model_info.kind in PIPELINE_KINDS:
            stats, lines = runtime.pipeline_stats(model)
        else:
            stats = runtime.weight_stats(model.model, runtime.weighted_matmuls(runtime.read_ir(exported.path)))
            lines = [stats.describe()]
        memory.release_unused()
        actual = runtime.runtime_precision(model)
        notes = list(exported.notes) + notes + lines
        if released:
            notes.append(f"memory: {released / 2**20:.0f} MB of the fp32 IR's mapped weights released after "
                         "compression and compilation (read back from the file where still used)")
        if actual and actual != precision:
            notes.append(f"inference_precision={precision} was asked for; the CPU plugin runs {actual}")
        metrics: dict[str, float] = {"compile_s": compile_s, "quantize_s": quantize_s, "load_s": load_s}
        if exported.export_s is not None:
            metrics["export_s"] = exported.export_s
        ir_dir = exported.path
        return Built(
            model=model,
            layers_quantized=stats.layers_quantized,
            layers_eligible=stats.layers,
            kernel=f"OpenVINO {what} IR, CPU plugin, inference precision {actual or precision}",
            weights_bytes=stats.constant_bytes,
            save=lambda path: runtime.save_ir(model, Path(path), ir_dir),
            reference_tolerance=reference_tolerance,
            metrics=metrics,
            notes=notes,
        )

    def load_saved(self, ctx: BuildContext, params: Mapping[str, Any], path: Path) -> Any:
        from . import runtime

        model = runtime.load_ir(ctx.model_info.kind, Path(path), params["inference_precision"])
        runtime.compile_timed(model)
        return model
