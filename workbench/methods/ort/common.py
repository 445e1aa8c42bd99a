"""What the ONNX Runtime methods share: the base class, the CPU presets, operator lists,
layer exclusion by module name, and turning a quantized graph into a `Built`.

Torch-free and ONNX-free at import: the libraries are imported in the worker only.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ...errors import ParamError
from ...params import Param, Values
from ..base import Built, Method
from ..layers import few

if TYPE_CHECKING:  # pragma: no cover
    from ...measure.context import BuildContext

# optimum's AutoQuantizationConfig presets: the instruction set the int8 kernels target.
# avx512_vnni and arm64 use s8 weights and u8 activations with reduce_range off (hard-coded);
# avx2 / avx512 use u8 weights and accept reduce_range (7-bit weights, for CPUs without VNNI,
# where u8 x s8 products can saturate the 16-bit accumulation of VPMADDUBSW).
PRESETS = ("avx512_vnni", "avx512", "avx2", "arm64")
REDUCE_RANGE_PRESETS = ("avx512", "avx2")

# What ORTQuantizer quantizes (onnxruntime 1.32's registries, as optimum 2.1 passes them).
DYNAMIC_OPERATORS = ("MatMul", "Gather", "Attention", "Transpose", "EmbedLayerNormalization", "Conv", "LSTM")
STATIC_OPERATORS = ("MatMul", "Gather", "Gemm", "Conv", "ConvTranspose", "Clip", "Relu", "Reshape", "Transpose",
                    "Squeeze", "Unsqueeze", "Flatten", "Resize", "MaxPool", "AveragePool", "Slice", "Pad", "Split",
                    "GatherElements", "Where", "InstanceNormalization", "LayerNormalization", "BatchNormalization",
                    "TopK", "CumSum")


def preset_param() -> Param:
    return Param(
        "preset", "choice", "avx512_vnni", choices=PRESETS,
        help="optimum's CPU preset (AutoQuantizationConfig): avx512_vnni (Intel since Cascade Lake, AMD Zen 4; "
             "s8 weights) | avx512 / avx2 (older x86: u8 weights, reduce_range available) | arm64 (NEON dot "
             "product). The graph runs anywhere; the preset decides the integer formats.",
    )


def reduce_range_param() -> Param:
    return Param(
        "reduce_range", "bool", False, visible_when={"preset": REDUCE_RANGE_PRESETS},
        help="7-bit weights (avx2 / avx512 only): avoids the 16-bit saturation of u8 x u8 products on CPUs "
             "without VNNI, at some accuracy cost. The other presets hard-code it off.",
    )


def per_channel_param(default: bool = True) -> Param:
    return Param(
        "per_channel", "bool", default,
        help="One weight scale per output channel (else one per tensor). Dynamic int8 on MiniLM: cosine "
             "0.992 per channel, 0.959 per tensor.",
    )


def exclude_param(default: Sequence[str] = (), extra: str = "") -> Param:
    return Param(
        "exclude", "list", list(default),
        help="Linear layers left in fp32, as fnmatch patterns on the module name (e.g. '*.down_proj', "
             "'encoder.layer.0.*', 'lm_head'); they become ORT's nodes_to_exclude (the exported MatMul "
             "of each module). An entry starting with '/' is an ONNX node name, passed as it is. " + extra,
    )


def operators_check(allowed: Sequence[str]) -> Any:
    def check(v: Mapping[str, Any]) -> str | None:
        ops = v["operators"]
        if not ops:
            return f"operators: empty; allowed: a list of {', '.join(allowed)}"
        bad = [o for o in ops if o not in allowed]
        if bad:
            return f"operators: {', '.join(bad)} cannot be quantized by ORTQuantizer here; allowed: {', '.join(allowed)}"
        return None

    return check


def excluded_modules(patterns: Sequence[str], layers: Mapping[str, Any]) -> list[str]:
    """The Linear modules matched by any of `patterns`."""
    return [n for n in layers if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def exclude_errors(patterns: Sequence[str], default: Sequence[str], layers: Mapping[str, Any],
                   model_name: str) -> list[ParamError]:
    """A pattern that matches no Linear layer is a typo, unless it is one of the method's defaults
    (which name layers of several architectures at once)."""
    if not layers:
        return []
    out = []
    for p in patterns:
        if p in default or p.startswith("/"):  # "/...": an ONNX node name, checked against the graph
            continue
        if not any(fnmatch.fnmatchcase(n, p) for n in layers):
            out.append(ParamError("exclude", f"pattern {p!r} matches none of the {len(layers)} linear layers of "
                                             f"{model_name}; patterns match the full module name, e.g. "
                                             f"{few(list(layers), 3)}"))
    if layers and len(excluded_modules(patterns, layers)) == len(layers):
        out.append(ParamError("exclude", f"exclude={list(patterns)} leaves no linear layer to quantize"))
    return out


class ORTMethod(Method):
    """Base of the methods that run through ONNX Runtime (optimum-onnx export, CPU provider)."""

    backend = "onnxruntime"
    env = "onnx"
    requires = ("optimum-onnx", "onnxruntime", "onnx", "optimum", "torch", "transformers")
    install_hint = "workbench env create onnx (optimum-onnx 0.1, onnxruntime 1.32, transformers 4.57)"
    devices = ("cpu",)
    model_kinds = ("causal-lm", "encoder")
    # Defaults of `exclude` that may match nothing on a given architecture.
    default_exclude: tuple[str, ...] = ()

    # --- kernel side -------------------------------------------------------
    def model_errors(self, p: Values, layers: Mapping[str, tuple[int, int]], model: Any) -> list[ParamError]:
        if "exclude" not in p:
            return []
        return exclude_errors(p["exclude"], self.default_exclude, layers,
                              getattr(model, "name", "this model"))

    # --- worker side -------------------------------------------------------
    def exclude_nodes(self, ctx: BuildContext, patterns: Sequence[str], model_file: Path) -> tuple[list[str], list[str]]:
        """ORT node names for `exclude`: the MatMuls of the Linear modules matched by its patterns,
        and its entries starting with '/' (node names as they are), with a note for modules whose
        MatMul the exporter named differently. A node name not in the graph is an error."""
        from ...errors import InvalidParams
        from . import runtime

        raw = [p for p in patterns if p.startswith("/")]
        modules = excluded_modules([p for p in patterns if not p.startswith("/")], ctx.model_info.linear_layers or {})
        if not modules and not raw:
            return [], []
        graph_nodes = runtime.node_names(model_file)
        unknown = sorted(set(raw) - set(graph_nodes))
        if unknown:
            examples = few([n for n in graph_nodes if n.endswith("/MatMul")], 3)
            raise InvalidParams([ParamError("exclude", f"no node named {few(unknown, 3)} in the ONNX export; "
                                                       f"MatMul nodes look like {examples}")], self.name)
        nodes, missing = runtime.nodes_for_modules(modules, graph_nodes)
        notes = [f"exclude: no ONNX MatMul named after {few(missing, 4)} in the export; not excluded"] if missing else []
        return sorted(set(nodes) | set(raw)), notes

    def finish(self, ctx: BuildContext, directory: Path, file_name: str, exported: Any, *, quantize_s: float,
               notes: list[str], what: str, reference_tolerance: float | None = None) -> Built:
        """Load the graph in an ORT session (timed apart), count what it holds, describe the run."""
        from ...measure import memory
        from . import runtime

        # Eligible layers are counted on the fp32 export, the same for every ORT method (once per export).
        eligible = runtime.export_stats(exported.path).layers
        if Path(directory) == Path(exported.path) and file_name == runtime.MODEL_FILE:
            stats = runtime.export_stats(exported.path)
        else:
            stats = runtime.graph_stats(runtime.read_graph(directory / file_name))
        # The graph protos read for counting (and a quantizer's) are gone: their memory goes back
        # before the session makes its own copy of the weights.
        memory.release_unused()
        ctx.progress("session", None, "creating the ONNX Runtime session (graph optimizations)")
        model, session_s = runtime.load(ctx.model_info.kind, directory, file_name, ctx.spec.bench.threads)
        memory.release_unused()
        metrics: dict[str, float] = {"session_s": session_s, "quantize_s": quantize_s, "load_s": 0.0}
        if exported.export_s is not None:
            metrics["export_s"] = exported.export_s
        lines = [stats.describe()]
        if stats.fp_names and stats.layers_quantized:
            lines.append(f"left in fp32: {few(stats.fp_names, 5)}")
        return Built(
            model=model,
            layers_quantized=stats.layers_quantized,
            layers_eligible=eligible,
            kernel=f"ONNX Runtime {what}, CPUExecutionProvider",
            weights_bytes=stats.initializer_bytes,
            save=lambda path: runtime.save(directory, file_name, Path(path)),
            reference_tolerance=reference_tolerance,
            metrics=metrics,
            notes=list(exported.notes) + notes + lines,
        )

    def load_saved(self, ctx: BuildContext, params: Mapping[str, Any], path: Path) -> Any:
        from . import runtime

        model, _ = runtime.load(ctx.model_info.kind, Path(path), runtime.MODEL_FILE, ctx.spec.bench.threads)
        return model
