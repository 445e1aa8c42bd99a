"""Pre-quantized checkpoints, measured like any other run: compressed-tensors, AQLM, and the
research formats that need a GPU (SpQR, VPTQ, HIGGS).

The run's model is the unquantized model (its tokenizer, its fp32 reference outputs); the
`checkpoint` parameter is a directory holding the same architecture quantized by someone
else (or by an earlier `llmcompressor` run), with its `quantization_config` in config.json.
transformers loads it with the format's own quantizer. The checks read config.json in the
kernel, before any worker starts: the checkpoint exists, is in this method's format, and has
the run model's architecture.

Torch-free at import.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import ParamError
from ..params import Param, Schema, Values
from .base import Built, Method

if TYPE_CHECKING:  # pragma: no cover
    from ..measure.context import BuildContext

# Libraries whose linear modules hold quantized weights.
_QUANT_LIBRARIES = ("gptqmodel", "awq", "aqlm", "vptq", "spqr_quant")
# Config fields that must agree between the checkpoint and the run's model.
_SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")


def quantization_config(path: str | os.PathLike[str]) -> dict | None:
    """The `quantization_config` of a checkpoint directory's config.json, or None."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    qc = config.get("quantization_config")
    return qc if isinstance(qc, dict) else None


def checkpoint_weight_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the tensors stored in a directory's safetensors files (read from their headers,
    without loading them): what the checkpoint's weights take, packed as the format packs them."""
    total = 0
    for f in sorted(Path(path).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    return total


def load_checkpoint(ctx: BuildContext, path: Path) -> Any:
    """The checkpoint at `path` loaded by transformers (its quantizer chosen by quantization_config)."""
    return ctx.load_model("float32", path=path)


def count_quantized(model: Any) -> tuple[int, int, str]:
    """(layers quantized, Linear-like layers in all, the quantized modules' class names): a layer
    counts as quantized when it carries a compressed-tensors scheme or is a quantization library's
    linear module (GPTQ / AWQ kernels, AQLM's QuantizedLinear)."""
    import torch

    quantized, eligible, kinds = 0, 0, set()
    for _, m in model.named_modules():
        scheme = getattr(m, "quantization_scheme", None)
        is_linear = isinstance(m, torch.nn.Linear)
        # A quantization library's linear layer (GPTQModel's TorchAtenLinear / TorchInt8Linear, its AWQ
        # kernels, AQLM's QuantizedLinear): named *Linear, defined in one of those libraries.
        cls = type(m)
        replaced = cls.__name__.endswith("Linear") and cls.__module__.split(".")[0] in _QUANT_LIBRARIES
        if is_linear or replaced:
            eligible += 1
        if scheme is not None or replaced:
            quantized += 1
            kinds.add(type(m).__name__)
    return quantized, eligible, ", ".join(sorted(kinds))


class PreQuantized(Method):
    """Base of the loaders: `checkpoint` names a directory in the format `quant_method`."""

    quant_method = ""
    backend = "transformers"
    required = ("checkpoint",)
    model_kinds = ("causal-lm", "encoder")
    schema = Schema(
        (
            Param("checkpoint", "str", "",
                  help="Directory of the pre-quantized checkpoint (config.json with its quantization_config, "
                       "safetensors weights) of the run model's architecture; the run model gives the tokenizer "
                       "and the unquantized reference."),
        ),
    )

    def model_errors(self, p: Values, layers: Mapping[str, tuple[int, int]], model: Any) -> list[ParamError]:
        err = self.checkpoint_error(p["checkpoint"], getattr(model, "config", None))
        return [ParamError("checkpoint", err)] if err else []

    def checkpoint_error(self, checkpoint: str, model_config: Mapping[str, Any] | None) -> str | None:
        """Why `checkpoint` cannot be loaded by this method for a model with `model_config`, or None."""
        if not checkpoint.strip():
            return f"empty; allowed: the directory of a {self.quant_method} checkpoint"
        path = Path(checkpoint).expanduser()
        if not (path / "config.json").is_file():
            return f"{checkpoint}: no config.json there; allowed: the directory of a {self.quant_method} checkpoint"
        qc = quantization_config(path)
        if qc is None:
            return f"{checkpoint}: config.json has no quantization_config: not a pre-quantized checkpoint"
        found = qc.get("quant_method")
        if found != self.quant_method:
            return (f"{checkpoint} is a {found!r} checkpoint; method {self.name!r} loads {self.quant_method!r} "
                    "(quantization_config.quant_method)")
        if not any(path.glob("*.safetensors")):
            return f"{checkpoint}: no .safetensors weights (pickled weights are not loaded)"
        if model_config:
            theirs = json.loads((path / "config.json").read_text())
            diff = [f"{k} {theirs.get(k)} vs {model_config.get(k)}" for k in _SHAPE_FIELDS
                    if k in model_config and k in theirs and theirs[k] != model_config[k]]
            if diff:
                return (f"{checkpoint} is not a quantized copy of the run model (checkpoint vs model: "
                        f"{'; '.join(diff)})")
        return None

    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Built:
        path = Path(params["checkpoint"]).expanduser()
        err = self.checkpoint_error(str(path), None)
        if err:
            from ..errors import InvalidParams

            raise InvalidParams([ParamError("checkpoint", err)], self.name)
        ctx.progress("load", None, f"loading the {self.quant_method} checkpoint {path}")
        model = load_checkpoint(ctx, path)
        quantized, eligible, kinds = count_quantized(model)
        qc = quantization_config(path) or {}
        return Built(
            model=model,
            layers_quantized=quantized,
            layers_eligible=eligible,
            kernel=self.kernel_text(qc, kinds),
            weights_bytes=checkpoint_weight_bytes(path),
            cannot_save="the checkpoint is the artifact: its size on disk is weights_bytes",
            notes=[f"loaded {path} ({self.quant_method}: {self.describe_config(qc)})"],
        )

    def kernel_text(self, qc: Mapping[str, Any], kinds: str) -> str:
        return f"{self.quant_method} through transformers ({kinds or 'no quantized modules found'})"

    def describe_config(self, qc: Mapping[str, Any]) -> str:
        return ", ".join(f"{k}={v}" for k, v in qc.items() if k != "quant_method" and not isinstance(v, (dict, list)))

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ..models.snippet import loadable

        p = self.values(params)
        checkpoint = str(p.get("checkpoint") or "").strip()
        ckpt = loadable(checkpoint, self.env) if checkpoint else None
        m = loadable(model_id, self.env)
        kind = (ckpt.kind if ckpt is not None else None) or m.kind
        auto = "AutoModel" if kind == "encoder" else "AutoModelForCausalLM"
        hint = "" if kind in ("causal-lm", "encoder") else "  # encoders: AutoModel"
        return (
            f"from transformers import {auto}, AutoTokenizer{hint}\n\n"
            f"# the checkpoint: quantization_config.quant_method = {self.quant_method!r} in its config.json\n"
            + (f"checkpoint = {ckpt.path!r}\n" if ckpt is not None else "checkpoint = 'CHECKPOINT'  # its directory\n")
            + f"model = {auto}.from_pretrained(checkpoint)\n"
            "# the tokenizer: the model it is a quantized copy of\n"
            + m.line()
            + "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
        )


class CompressedTensors(PreQuantized):
    """A compressed-tensors checkpoint (llm-compressor's output: int8, packed int4, FP8)."""

    name = "compressed-tensors"
    quant_method = "compressed-tensors"
    env = "llmcompressor"
    requires = ("compressed-tensors",)
    install_hint = "workbench env create llmcompressor"
    description = ("Load a compressed-tensors checkpoint (int-quantized, pack-quantized, float-quantized: e.g. from "
                   "llm-compressor or the hub) and measure it against the run model.")

    def checkpoint_error(self, checkpoint: str, model_config: Mapping[str, Any] | None) -> str | None:
        err = super().checkpoint_error(checkpoint, model_config)
        if err:
            return err
        sparsity = (quantization_config(Path(checkpoint).expanduser()) or {}).get("sparsity_config") or {}
        if sparsity.get("format"):
            return (f"{checkpoint} is stored in the sparse format {sparsity['format']!r}: compressed-tensors 0.19 "
                    "removed the sparse compressors and transformers 5.17 fails on such checkpoints "
                    "(AttributeError on config_groups); decompress it with compressed-tensors <= 0.14 first")
        return None

    def kernel_text(self, qc: Mapping[str, Any], kinds: str) -> str:
        return (f"compressed-tensors {qc.get('format')!r}, decompressed to float32 on CPU at the first forward "
                "(fake quantization)")

    def describe_config(self, qc: Mapping[str, Any]) -> str:
        groups = qc.get("config_groups") or {}
        weights = [g.get("weights") or {} for g in groups.values()]
        w = ", ".join(f"{a.get('type')}{a.get('num_bits')} {a.get('strategy')}"
                      + (f" g{a['group_size']}" if a.get("group_size") else "")
                      + (" sym" if a.get("symmetric") else " asym") for a in weights)
        return f"format {qc.get('format')!r}; weights {w or 'none'}; {len(qc.get('ignore') or [])} modules ignored"

    def load_saved(self, ctx: BuildContext, params: Mapping[str, Any], path: Path) -> Any:
        return load_checkpoint(ctx, Path(path))


class AQLM(PreQuantized):
    """An AQLM checkpoint (additive quantization: codebooks), run by aqlm's CPU (numba) kernels."""

    name = "aqlm"
    quant_method = "aqlm"
    env = "llmcompressor"
    requires = ("aqlm",)
    install_hint = "workbench env create llmcompressor (it installs aqlm[cpu])"
    model_kinds = ("causal-lm",)
    description = ("Load an AQLM checkpoint (2-bit-class additive quantization with learned codebooks) and run it "
                   "with aqlm's kernels (numba on CPU). Making one needs AQLM's own training code.")

    def kernel_text(self, qc: Mapping[str, Any], kinds: str) -> str:
        shape = f"{qc.get('num_codebooks')}x{qc.get('nbits_per_codebook')}"
        fast = " (1x16 and 2x8 have dedicated kernels; on CPU 2x8 went through numba at seconds per forward)"
        return f"aqlm {shape} codebooks, in groups of {qc.get('in_group_size')}, {kinds}{fast}"


class _GPUOnly(PreQuantized):
    """A format whose transformers quantizer refuses to run without CUDA: listed, and unavailable here."""

    devices = ("cuda",)
    model_kinds = ("causal-lm",)
    env = "torch"


class SpQR(_GPUOnly):
    name = "spqr"
    quant_method = "spqr"
    requires = ("spqr-quant",)
    install_hint = "pip install spqr_quant[gpu] in the torch environment of a CUDA machine"
    cuda_only_reason = ("transformers' SpQR quantizer raises 'GPU is required to run SpQR quantized model' and "
                        "spqr_quant needs CUDA_HOME at import")
    description = "Load a SpQR checkpoint (sparse-quantized representation: 3-bit groups plus fp16 outliers)."


class VPTQ(_GPUOnly):
    name = "vptq"
    quant_method = "vptq"
    requires = ("vptq",)
    install_hint = "pip install vptq in the torch environment of a CUDA machine"
    cuda_only_reason = ("transformers' VPTQ quantizer raises 'GPU is required to run VTPQ quantized model' and "
                        "vptq's libvptq.so links libcudart.so.12")
    description = "Load a VPTQ checkpoint (vector post-training quantization, 2-bit class)."


class HIGGS(_GPUOnly):
    name = "higgs"
    quant_method = "higgs"
    requires = ("flute-kernel", "fast-hadamard-transform")
    install_hint = "pip install flute-kernel fast_hadamard_transform (both build CUDA code)"
    cuda_only_reason = ("transformers' HIGGS quantizer raises 'HIGGS quantization is only supported on GPU'; "
                        "fast_hadamard_transform builds with nvcc and flute-kernel loads libc10_cuda.so")
    description = "Load a HIGGS checkpoint (Hadamard rotation + MSE-optimal grids, FLUTE kernels)."
