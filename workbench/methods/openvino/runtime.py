"""Worker-side OpenVINO plumbing shared by `ov-export`, `ov-weight` and `ov-static`.

Runs only in the `openvino` environment (optimum-intel, openvino and nncf are
imported inside the functions). What lives here:

- the fp32 IR export of a model, done once per model and library versions and
  cached under `$WORKBENCH_HOME/ov-ir` (an export of SmolLM2 takes about a
  minute; every OpenVINO run starts from it);
- loading an IR with the inference precision hint and compiling it, timed apart;
- counting what is in an IR: which weight-carrying MatMuls and embedding Gathers
  exist and which hold low-bit weights, and the bytes of every constant.

`optimum-intel` compresses models over one billion parameters to int8 on export
unless told otherwise; the export here always passes `load_in_8bit=False`, so
the cached IR is the unquantized model every method starts from.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..export_cache import Exported, ExportFormat, export_dir, export_once

if TYPE_CHECKING:  # pragma: no cover - typing only: listing methods stays torch-free
    from ...measure.context import BuildContext

IR_MANIFEST = "workbench-ir.json"
IR_VERSION = 1
# The CPU plugin's INFERENCE_PRECISION_HINT values the workbench offers. OpenVINO
# runs bf16 by default on CPUs with AVX512-BF16 / AMX: f32 keeps runs comparable.
PRECISIONS = ("f32", "bf16", "f16")
# Element types of weights that count as quantized (NNCF's int/nf/cb/mx formats).
LOW_BIT_TYPES = {"i2", "u2", "i3", "u3", "i4", "u4", "i8", "u8", "nf4", "f4e2m1", "f8e4m3", "f8e5m2", "f8e8m0"}
# Ops between a weight constant and the op that consumes it, in NNCF's decompression
# subgraphs (Convert -> Subtract zero point -> Multiply scale -> Reshape) and in
# static quantization (FakeQuantize / FakeConvert on the weight).
_PASS_THROUGH = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze", "Squeeze",
                 "FakeQuantize", "FakeConvert"}


def ov_model_class(kind: str) -> Any:
    """The optimum-intel class for a workbench model kind."""
    import optimum.intel as oi

    classes = {"causal-lm": oi.OVModelForCausalLM, "encoder": oi.OVModelForFeatureExtraction,
               "speech-to-text": oi.OVModelForSpeechSeq2Seq, "image-text-to-text": oi.OVModelForVisualCausalLM}
    if kind == "text-to-image":
        return oi.OVDiffusionPipeline  # needs diffusers, imported lazily by optimum-intel
    if kind not in classes:
        raise ValueError(f"model kind {kind!r}: OpenVINO methods take {', '.join(classes)}")
    return classes[kind]


def ov_config(precision: str) -> dict[str, str]:
    if precision not in PRECISIONS:
        raise ValueError(f"inference_precision: got {precision!r}; allowed: {', '.join(PRECISIONS)}")
    config = {"INFERENCE_PRECISION_HINT": precision}
    if precision == "f32":
        # On CPUs with bf16 support the plugin keeps the KV cache in u8 by default, even under an f32
        # hint: generation then drifts from the fp32 model (Whisper's tokens diverge by the second).
        config["KV_CACHE_PRECISION"] = "f32"
    return config


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("optimum-intel", "openvino", "nncf", "transformers", "optimum")}


IR_FORMAT = ExportFormat(subdir="ov-ir", manifest=IR_MANIFEST, module=__name__, backend="OpenVINO",
                         target="OpenVINO IR", done="an fp32 IR", reused="fp32 IR")


def _ir_dir(ctx: "BuildContext") -> Path:
    return export_dir(IR_FORMAT, ctx.spec.model.id, {"model": asdict(ctx.spec.model), "kind": ctx.model_info.kind,
                                                     "versions": library_versions(), "ir": IR_VERSION})


def exported_ir(ctx: "BuildContext") -> Exported:
    """The model as an fp32 OpenVINO IR (exported once, then read from the cache).

    The export runs optimum-intel's exporter (torch tracing through `optimum.exporters.openvino`)
    on the model's local directory, with weights kept in fp32 (`load_in_8bit=False`), in a
    child process (the PyTorch model it traces must not count in this run's peak memory),
    under a lock so parallel workers export once.
    """
    ov_model_class(ctx.model_info.kind)  # the imports (seconds) land here, outside the timed steps
    return export_once(ctx, IR_FORMAT, _ir_dir(ctx), Exported)


def export(kind: str, source: Path, target: Path) -> None:
    """Export the model at `source` to an fp32 IR at `target` (written atomically, manifest last)."""
    cls = ov_model_class(kind)
    model = cls.from_pretrained(str(source), export=True, compile=False, load_in_8bit=False)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    _copy_tokenizer(source, tmp)
    (tmp / IR_MANIFEST).write_text(json.dumps({"source": str(source), "versions": library_versions()}, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


# Besides tokenizer*: the files a processor (speech, vision-language) is loaded from.
_PROCESSOR_FILES = ("special_tokens_map.json", "vocab.txt", "merges.txt", "vocab.json", "preprocessor_config.json",
                    "processor_config.json", "chat_template.jinja", "chat_template.json", "added_tokens.json",
                    "normalizer.json", "generation_config.json")


def _copy_tokenizer(source: Path, target: Path) -> None:
    """Tokenizer and processor files next to the IR: NNCF's data-aware paths and reloads read them from there."""
    for f in source.iterdir():
        if f.is_file() and (f.name.startswith("tokenizer") or f.name in _PROCESSOR_FILES):
            if not (target / f.name).exists():
                shutil.copy2(f, target / f.name)


def copy_processor(source: Path, target: Path) -> None:
    """Tokenizer and processor files of `source` into `target` (optimum-intel saves only the IR and config)."""
    _copy_tokenizer(Path(source), Path(target))


def load_ir(kind: str, path: Path, precision: str, **kwargs: Any) -> Any:
    """An optimum-intel model of the IR at `path`, not yet compiled (`compile_timed` compiles it).

    A causal LM returns its logits without optimum-intel's copy of them (`share_logits`)."""
    cls = ov_model_class(kind)
    model = cls.from_pretrained(str(path), compile=False, ov_config=ov_config(precision), **kwargs)
    if kind == "causal-lm":
        share_logits(model)
    return model


def share_logits(model: Any) -> bool:
    """Make a stateful `OVModelForCausalLM` return the infer request's logits instead of a copy.

    optimum-intel's `forward` clones the logits output (`torch.from_numpy(...).clone()`), so every
    call holds them twice: 200 MB more at batch 8 x 128 tokens of SmolLM2, 100 MB more per 512-token
    accuracy window. Without the copy the returned tensor is a view of the request's output,
    valid until the model's next call: the measurements read it before calling again, and
    `generate` copies the last position's logits at once. Only the path the measurements take is
    replaced (stateful model, no beam search); anything else goes to optimum-intel's own forward.
    Returns False, changing nothing, when the model is not of that kind.
    """
    import functools

    import torch
    from transformers.modeling_outputs import CausalLMOutputWithPast

    original = model.forward
    if not getattr(model, "stateful", False) or not hasattr(model, "prepare_inputs") or \
            not hasattr(model, "request"):
        return False

    @functools.wraps(original)
    def forward(input_ids: Any, attention_mask: Any = None, past_key_values: Any = None, position_ids: Any = None,
                token_type_ids: Any = None, **kwargs: Any) -> Any:
        if getattr(model, "_first_iter_beam_search", False):
            return original(input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                            position_ids=position_ids, token_type_ids=token_type_ids, **kwargs)
        model.compile()
        kwargs["token_type_ids"] = token_type_ids
        inputs = model.prepare_inputs(input_ids=input_ids, attention_mask=attention_mask,
                                      past_key_values=past_key_values, position_ids=position_ids, **kwargs)
        model.request.start_async(inputs, share_inputs=True)
        model.request.wait()
        logits = torch.from_numpy(model.request.get_tensor("logits").data)
        model._past_length += input_ids.shape[1]
        # A marker, as optimum-intel's own: not None, true as a boolean, "not the first step" to generate.
        return CausalLMOutputWithPast(logits=logits, past_key_values=((),))

    model.forward = forward
    return True


def release_ir_pages(path: Path) -> int:
    """Drop this process's resident pages of the IR weight files under `path` (`memory.release_file_pages`).

    OpenVINO memory-maps an IR's `.bin`: the pages that NNCF read while compressing the fp32
    weights, or that the CPU plugin read while compiling (it keeps its own copies of what it
    repacks), stay in the RSS while the file is mapped. Pages still used are read back from the
    page cache when touched. Returns the bytes by which the RSS went down.
    """
    from ...measure import memory

    return sum(memory.release_file_pages(f) for f in sorted(Path(path).rglob("*.bin")))


def compile_timed(model: Any) -> float:
    """Compile for the CPU plugin; seconds taken (reported as compile_s, apart from inference)."""
    t0 = time.perf_counter()
    model.compile()
    return time.perf_counter() - t0


def runtime_precision(model: Any) -> str | None:
    """The inference precision the compiled model actually runs in (the hint may be ignored);
    for a pipeline, that of its first compiled submodel."""
    request = getattr(model, "request", None)
    if request is None:
        for component in (getattr(model, "components", None) or {}).values():
            request = getattr(component, "request", None)
            if request is not None:
                break
    if request is None:
        return None
    compiled = request.get_compiled_model() if hasattr(request, "get_compiled_model") else request
    try:
        value = compiled.get_property("INFERENCE_PRECISION_HINT")
    except Exception:  # noqa: BLE001 - a plugin that does not report it
        return None
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


@dataclass
class WeightStats:
    """What an IR holds: weight-carrying ops and how their weights are stored."""

    matmuls: int = 0
    matmuls_quantized: int = 0
    embeddings: int = 0
    embeddings_quantized: int = 0
    constant_bytes: int = 0
    weight_types: Counter = field(default_factory=Counter)  # element type of each weight -> count
    fake_quantize: int = 0
    added_matmuls: int = 0  # weighted MatMuls the exported model did not have (LoRA correction adapters)
    convolutions: int = 0  # weighted Convolutions (U-Nets, VAEs, audio front ends)
    convolutions_quantized: int = 0

    @property
    def layers(self) -> int:
        """Weighted layers: MatMuls and Convolutions (embedding tables are reported apart)."""
        return self.matmuls + self.convolutions

    @property
    def layers_quantized(self) -> int:
        return self.matmuls_quantized + self.convolutions_quantized

    def add(self, other: "WeightStats") -> None:
        for f in ("matmuls", "matmuls_quantized", "embeddings", "embeddings_quantized", "constant_bytes",
                  "fake_quantize", "added_matmuls", "convolutions", "convolutions_quantized"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.weight_types.update(other.weight_types)

    def describe(self) -> str:
        types = ", ".join(f"{n} {t}" for t, n in sorted(self.weight_types.items(), key=lambda x: -x[1]))
        convs = (f", {self.convolutions_quantized}/{self.convolutions} Convolution weights"
                 if self.convolutions else "")
        text = (f"{self.matmuls_quantized}/{self.matmuls} MatMul weights{convs} and {self.embeddings_quantized}/"
                f"{self.embeddings} embedding tables in low precision (weights by element type: {types})")
        if self.fake_quantize:
            text += f"; {self.fake_quantize} FakeQuantize ops (activations and weights quantized)"
        if self.added_matmuls:
            text += f"; {self.added_matmuls} MatMuls added by the compression (LoRA correction adapters), not counted"
        return text


def weighted_matmuls(ov_model: Any) -> set[str]:
    """Friendly names of the MatMuls that multiply by a constant weight matrix."""
    return {op.get_friendly_name() for op in ov_model.get_ordered_ops()
            if op.get_type_name() == "MatMul" and _matmul_weight(op) is not None}


def read_ir(path: Path) -> Any:
    """The `openvino.Model` of an IR directory (weights memory-mapped, nothing compiled)."""
    import openvino as ov

    return ov.Core().read_model(str(Path(path) / "openvino_model.xml"))


def _matmul_weight(op: Any) -> tuple[str, bool] | None:
    return _trace_weight(op.input_value(1).get_node()) or _trace_weight(op.input_value(0).get_node())


def weight_stats(ov_model: Any, layers: set[str] | None = None) -> WeightStats:
    """Count the weight-carrying ops of an `openvino.Model`: MatMul (weights on input 1, or input 0
    when transposed there) and embedding Gather (table on input 0), each traced back to its
    constant. Also the bytes of every constant in the model.

    `layers`: the weighted MatMuls of the exported model (`weighted_matmuls`); MatMuls the
    compression added (LoRA correction adapters) are then counted apart, not as layers.
    """
    stats = WeightStats()
    seen_consts: set[str] = set()
    for op in ov_model.get_ordered_ops():
        t = op.get_type_name()
        if t == "Constant":
            name = op.get_friendly_name()
            if name not in seen_consts:
                seen_consts.add(name)
                stats.constant_bytes += int(op.get_byte_size())
        elif t == "FakeQuantize":
            stats.fake_quantize += 1
        if t == "MatMul":
            traced = _matmul_weight(op)
            if traced is not None and layers is not None and op.get_friendly_name() not in layers:
                stats.added_matmuls += 1
            elif traced is not None:
                stats.matmuls += 1
                stats.matmuls_quantized += traced[1]
                stats.weight_types[traced[0]] += 1
        elif t in _CONVOLUTIONS:
            traced = _trace_weight(op.input_value(1).get_node())
            if traced is not None:
                stats.convolutions += 1
                stats.convolutions_quantized += traced[1]
                stats.weight_types[traced[0]] += 1
        elif t == "Gather":
            traced = _trace_weight(op.input_value(0).get_node())
            if traced is not None:
                stats.embeddings += 1
                stats.embeddings_quantized += traced[1]
                stats.weight_types[traced[0]] += 1
    return stats


_CONVOLUTIONS = {"Convolution", "GroupConvolution", "ConvolutionBackpropData"}


def submodels(model: Any) -> dict[str, Any]:
    """name -> `openvino.Model` of every model in an optimum-intel model or pipeline."""
    found = getattr(model, "ov_models", None)
    if isinstance(found, dict) and found:
        return {k: v for k, v in found.items() if v is not None}
    return {"model": model.model}


def pipeline_stats(model: Any) -> tuple[WeightStats, list[str]]:
    """Counts summed over a pipeline's submodels, and one line per submodel."""
    total = WeightStats()
    lines = []
    for name, ov_model in submodels(model).items():
        stats = weight_stats(ov_model)
        total.add(stats)
        lines.append(f"{name}: {stats.describe()}")
    return total, lines


def _trace_weight(node: Any, depth: int = 0) -> tuple[str, bool] | None:
    """(element type, quantized?) of the weight matrix feeding `node`, or None when it is not
    a constant matrix (activations, shapes, 1-D tables)."""
    quantized = False
    while depth < 12:
        t = node.get_type_name()
        if t == "Constant":
            shape = [int(d) for d in node.get_output_partial_shape(0).to_shape()]
            if sum(1 for d in shape if d > 1) < 2:
                return None
            et = node.get_output_element_type(0).get_type_name()
            return et, quantized or et in LOW_BIT_TYPES
        if t not in _PASS_THROUGH:
            return None
        if t in ("FakeQuantize", "FakeConvert"):
            quantized = True
        node = node.input_value(0).get_node()
        depth += 1
    return None


def save_ir(model: Any, path: Path, tokenizer_from: Path | None) -> None:
    """The model's IR (xml + bin), config and tokenizer, reloadable with `load_ir`."""
    model.save_pretrained(str(path))
    if tokenizer_from is not None:
        _copy_tokenizer(Path(tokenizer_from), Path(path))


if __name__ == "__main__":
    # python -m workbench.methods.openvino.runtime KIND SOURCE_DIR TARGET_DIR (used by `exported_ir`)
    import warnings

    warnings.simplefilter("ignore")
    export(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
