"""`gguf`: llama.cpp's GGUF block quantization of Linear weights, through the `gguf` package.

A Quantization Workbench plug-in: the workbench finds it through the `workbench.methods` entry
point of this distribution, nothing in the workbench names it. Like every method, this module
imports no backend at import time (the notebook kernel lists and validates methods without
torch or gguf); `build()` runs in a worker in the workbench's `torch` environment.

Each selected `nn.Linear` weight is quantized row by row in blocks of 32 values with
`gguf.quants.quantize` (the reference implementation of llama.cpp's formats, byte for byte the
blocks a .gguf file stores): Q8_0 (one fp16 scale per block, int8 codes), Q5_0 / Q4_0 (symmetric,
5 / 4 bits), Q5_1 / Q4_1 (a scale and a minimum per block). The layer keeps those bytes and
dequantizes them (`gguf.quants.dequantize`) on every forward: a reference path, not llama.cpp's
fast kernels. The k-quants (Q4_K, Q6_K, ...) are listed and refused: gguf 0.19's Python quantizer
does not implement them (it raises NotImplementedError; they are dequantize-only there).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from workbench.errors import InvalidParams, ParamError
from workbench.methods.base import Built, Method
from workbench.methods.layers import exclude_param, few, include_param, replace_layers_code, select_layers, selection_error
from workbench.params import Param, Schema, Values

if TYPE_CHECKING:  # pragma: no cover
    from workbench.measure.context import BuildContext

BLOCK = 32  # values per block in every type offered here (QK8_0, QK5_0, QK4_0, ...)
TYPES = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
# bits per weight including the per-block scale (and minimum), as llama.cpp lists them
BITS_PER_WEIGHT = {"Q8_0": 8.5, "Q5_1": 6.0, "Q5_0": 5.5, "Q4_1": 5.0, "Q4_0": 4.5}
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


class GGUFBlocks(Method):
    name = "gguf"
    backend = "gguf"
    env = "torch"
    requires = ("gguf",)
    install_hint = "pip install gguf (in the torch environment)"
    description = ("llama.cpp's GGUF block quantization (Q8_0, Q5_1, Q5_0, Q4_1, Q4_0; blocks of 32) by the gguf "
                   "package's reference quantizer, dequantized on the fly. A plug-in from extensions/.")
    model_kinds = ("causal-lm", "encoder")
    schema = Schema((
        Param("qtype", "choice", "Q8_0", choices=TYPES + K_QUANTS,
              help="GGUF tensor type. The k-quants are listed but refused: the gguf package cannot quantize them."),
        include_param(),
        exclude_param("in float32"),
    ))

    # --- kernel side (no torch, no gguf) ----------------------------------------------
    def model_errors(self, p: Values, layers: Mapping[str, tuple[int, int]], model: Any) -> list[ParamError]:
        if p["qtype"] in K_QUANTS:
            return [ParamError("qtype", f"{p['qtype']} cannot be made here: gguf's Python quantizer implements no "
                                        f"k-quant (NotImplementedError); allowed: {', '.join(TYPES)}")]
        return self._shape_errors(layers, p) if layers else []

    @staticmethod
    def _shape_errors(layers: Mapping[str, tuple[int, int]], p: Mapping[str, Any]) -> list[ParamError]:
        err = selection_error(layers, p["include"], p["exclude"])
        if err is not None:
            return [err]
        bad = [n for n in select_layers(layers, p["include"], p["exclude"]) if layers[n][1] % BLOCK]
        if bad:
            return [ParamError("exclude", f"{few(bad)} have an input size that is not a multiple of {BLOCK}, the "
                                          f"GGUF block; allowed: leave them out with exclude")]
        return []

    # --- worker side ----------------------------------------------------------------------
    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Built:
        import torch

        from .layer import GGUFLinear

        p = self.values(params)
        if p["qtype"] in K_QUANTS:
            raise InvalidParams(self.check_model(p, None), "gguf")
        model = ctx.load_model("float32")
        linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        shapes = {n: (m.out_features, m.in_features) for n, m in linears.items()}
        errors = self._shape_errors(shapes, p)
        if errors:
            raise InvalidParams(errors, "gguf")
        selected = select_layers(linears, p["include"], p["exclude"])
        for i, name in enumerate(selected):
            ctx.progress("quantize", i / len(selected), name)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if getattr(model.config, "tie_word_embeddings", False) and name == "lm_head":
                model.config.tie_word_embeddings = False  # replacing lm_head unties it from the embeddings
            setattr(parent, child, GGUFLinear.from_linear(linears[name], p["qtype"]))
        ctx.progress("quantize", 1.0, f"{len(selected)} layers")
        del linears
        skipped = [n for n in shapes if n not in set(selected)]
        notes = [f"{p['qtype']}: {BITS_PER_WEIGHT[p['qtype']]} bits per weight with the block scales "
                 f"(llama.cpp's figure); blocks of {BLOCK} along each row"]
        if skipped:
            notes.append(f"left in float32: {few(skipped, 5)}")
        from importlib.metadata import version

        return Built(model=model, layers_quantized=len(selected), layers_eligible=len(shapes),
                     kernel=f"gguf {version('gguf')} {p['qtype']} blocks, dequantized by gguf.quants on every "
                            "forward (reference, not llama.cpp's kernels)",
                     cannot_save="the plug-in does not write .gguf files yet", notes=notes)

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from workbench.models.snippet import loadable

        p = self.values(params)
        m = loadable(model_id, self.env)
        auto = m.auto("AutoModelForCausalLM", "AutoModel")
        return (
            "import fnmatch\n\n"
            "import numpy as np\n"
            "import torch\n"
            "from gguf import GGMLQuantizationType, quants\n"
            f"from transformers import {auto}{m.hint('AutoModel')}\n\n"
            + m.line()
            + f"model = {auto}.from_pretrained(model_id, dtype=torch.float32).eval()\n"
            f"qtype = GGMLQuantizationType.{p['qtype']}\n"
            + replace_layers_code(p["include"], p["exclude"])
            + "    linear = getattr(parent, child)\n"
            "    blocks = quants.quantize(linear.weight.detach().numpy(), qtype)  # the bytes a .gguf file holds\n"
            "    linear.weight.data = torch.from_numpy(quants.dequantize(blocks, qtype).copy())  # what llama.cpp computes with\n"
        )
