"""`rtn`: the workbench's own round-to-nearest weight quantizer.

The reference the notebooks teach with and other backends are checked against:
every selected `nn.Linear` becomes a `workbench.teach.qlinear.QuantLinear` that
holds its weight as packed integer codes (2-8 bits) with float16 group scales
(float32 per-channel or per-tensor scales) and, for affine quantization, uint8
integer zero points. `forward` dequantizes on the fly: the memory saving is
real, the speed is that of a reference, not of a fast kernel.

Torch-free at import (the kernel lists methods): torch and the quantizer are
imported inside `build()`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import InvalidParams, ParamError
from ..params import Check, Param, Schema, Values
from .base import Built
from .layers import exclude_param, few as _few, include_param
from .layers import group_size_error, replace_layers_code, select_layers, selection_error
from .torch_common import TorchMethod

if TYPE_CHECKING:  # pragma: no cover
    from ..measure.context import BuildContext

CONFIG_FILE = "quant_config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


def valid_group_size(group_size: int) -> bool:
    """-1 (per output channel), 0 (per tensor) or a positive multiple of 8."""
    return group_size in (-1, 0) or (group_size >= 8 and group_size % 8 == 0)


def _check_group_size(values: Mapping[str, Any]) -> str | None:
    gs = values.get("group_size")
    if gs is None or valid_group_size(gs):
        return None
    return (
        f"got {gs}; allowed: -1 (one scale per output channel), 0 (one scale per tensor) "
        "or a multiple of 8 (input columns per group, e.g. 32, 64, 128)"
    )


class RTN(TorchMethod):
    """Round-to-nearest weight-only quantization with packed codes (the workbench's reference)."""

    name = "rtn"
    model_errors_need_layers = True
    backend = "workbench"
    description = (
        "Reference round-to-nearest weight quantization (2-8 bits, per tensor, channel or group; "
        "symmetric or affine) with really packed codes, dequantized on the fly."
    )
    requires = ("torch", "safetensors")
    quantizes = True
    schema = Schema(
        (
            Param("bits", "int", 4, minimum=2, maximum=8,
                  help="Bits per weight code. Codes are bit-packed: 4 bits take half a byte."),
            Param("sym", "bool", True,
                  help="true: symmetric, codes in [-(2^(bits-1)-1), 2^(bits-1)-1] with no zero point "
                       "(int4: [-7, 7]). false: affine, codes in [0, 2^bits-1] with an integer zero point "
                       "per group; the range includes 0, so 0 stays exact."),
            Param("group_size", "int", 64, minimum=-1,
                  help="Consecutive input columns that share a scale, in each output row. "
                       "-1: one scale per output channel; 0: one scale per tensor; else a multiple of 8 "
                       "that divides the input dimension of every selected layer."),
            include_param(" (e.g. '*.mlp.*', 'model.layers.1?.*')"),
            exclude_param(extra=". SmolLM2 ties lm_head to the embeddings: quantizing it unties it and adds its "
                                "packed copy"),
        ),
        checks=(Check(("group_size",), _check_group_size),),
    )

    # --- kernel side (no torch) -------------------------------------------
    def model_errors(self, p: Values, layers: Mapping[str, tuple[int, int]], model: Any) -> list[ParamError]:
        return self._shape_errors(layers, p["include"], p["exclude"], p["group_size"])

    @staticmethod
    def _shape_errors(
        layers: Mapping[str, tuple[int, int]], include: list[str], exclude: list[str], group_size: int
    ) -> list[ParamError]:
        err = selection_error(layers, include, exclude)
        if err is not None:
            return [err]
        err = group_size_error(
            layers, select_layers(layers, include, exclude), group_size,
            remedy="or -1 (one scale per output channel), or leave those layers out with exclude",
        )
        return [err] if err is not None else []

    # --- worker side -------------------------------------------------------
    def layer_quantizer(self, params: Mapping[str, Any]) -> Any:
        import torch

        from ..teach.qlinear import QuantLinear

        p = self.values(params)

        def quantize(weight: Any) -> Any:
            linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            linear.weight.data = weight
            return QuantLinear.from_linear(linear, p["bits"], p["sym"], p["group_size"]).dequantize_weight(weight.dtype)

        return quantize

    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Built:
        import torch

        from ..teach.qlinear import QuantLinear

        p = self.values(params)
        bits, sym, group_size = p["bits"], p["sym"], p["group_size"]
        model = ctx.load_model("float32")
        linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        shapes = {n: (m.out_features, m.in_features) for n, m in linears.items()}
        errors = self._shape_errors(shapes, p["include"], p["exclude"], group_size)
        if errors:
            raise InvalidParams(errors, "rtn")
        selected = select_layers(linears, p["include"], p["exclude"])
        notes = _tie_notes(model, linears, selected)

        # One intra-op thread: each layer is a handful of memory-bound passes over at most a few million
        # values, and on a busy machine every parallel region waits for a descheduled thread. SmolLM2's
        # 210 layers took 6-12 s with 2 threads under load, 0.6-0.9 s with one (0.3 s of CPU either way).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for i, name in enumerate(selected):
                ctx.progress("quantize", i / len(selected), name)
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child, QuantLinear.from_linear(linears[name], bits, sym, group_size))
        finally:
            torch.set_num_threads(threads)
        ctx.progress("quantize", 1.0, f"{len(selected)} layers")
        del linears  # the float weights of replaced layers are freed with it

        skipped = [n for n in shapes if n not in set(selected)]
        if skipped:
            notes.append(f"left in float32 (not selected): {_few(skipped, 5)}")
        notes.append(
            "scales: float16 per group" if group_size > 0 else
            f"scales: float32 per {'output channel' if group_size == -1 else 'tensor'}"
        )
        config = {
            "format": "workbench-rtn",
            "format_version": FORMAT_VERSION,
            "bits": bits,
            "sym": sym,
            "group_size": group_size,
            "include": list(p["include"]),
            "exclude": list(p["exclude"]),
            "layers": {n: list(shapes[n]) for n in selected},
        }
        return Built(
            model=model,
            layers_quantized=len(selected),
            layers_eligible=len(shapes),
            kernel="rtn dequantize-on-the-fly (reference, not a fast kernel)",
            save=lambda path: save_quantized(model, Path(path), config),
            notes=notes,
        )

    def load_saved(self, ctx: BuildContext, params: Mapping[str, Any], path: Path) -> Any:
        # The architecture in float (from the model's own config), then the packed layers from the file.
        return load_quantized(ctx.load_model("float32"), Path(path))

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ..models.snippet import loadable

        p = self.values(params)
        m = loadable(model_id, self.env)
        auto = m.auto("AutoModelForCausalLM", "AutoModel")
        return (
            "import fnmatch\n\n"
            "import torch\n"
            f"from transformers import {auto}{m.hint('AutoModel')}\n\n"
            "# rtn is the workbench's own reference quantizer: this needs the workbench importable\n"
            "# (pip install it, or put the directory holding its `workbench` package on PYTHONPATH)\n"
            "from workbench.teach.qlinear import QuantLinear  # packed codes, dequantized in forward\n\n"
            + m.line()
            + f"model = {auto}.from_pretrained(model_id, dtype=torch.float32).eval()\n"
            + replace_layers_code(p["include"], p["exclude"])
            + "    linear = getattr(parent, child)\n"
            "    # per row, per group of input columns: W_q = clip(round(W / S + Z)), W_hat = S * (W_q - Z)\n"
            f"    setattr(parent, child, QuantLinear.from_linear(linear, bits={p['bits']}, sym={p['sym']}, "
            f"group_size={p['group_size']}))\n"
        )


def _tie_notes(model: Any, linears: Mapping[str, Any], selected: list[str]) -> list[str]:
    """Untie selected layers whose weight is shared with another module (lm_head and the embeddings)."""
    owners: dict[int, list[str]] = {}
    for pname, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(pname)
    notes = []
    for name in selected:
        shared = [o for o in owners.get(id(linears[name].weight), []) if o != f"{name}.weight"]
        if not shared:
            continue
        notes.append(
            f"{name} was tied to {', '.join(shared)}: untied, {name} is quantized and "
            f"{shared[0].rsplit('.', 1)[0]} stays float32 (both are stored)"
        )
        config = getattr(model, "config", None)
        if config is not None and getattr(config, "tie_word_embeddings", False):
            # Stops transformers from tying them again (tie_weights) after the replacement.
            config.tie_word_embeddings = False
    return notes


def save_quantized(model: Any, path: Path, config: Mapping[str, Any]) -> None:
    """Write `model.safetensors` (packed codes, scales, the rest as is) and `quant_config.json`.

    Tensors shared by several state-dict keys (tied weights) are written once;
    `quant_config.json` lists the other keys under "aliases". The model's
    config.json is written too when it has one, so the directory describes itself.
    """
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    tensors, aliases, seen = {}, {}, {}
    for key, t in model.state_dict().items():
        ident = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if t.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = t.detach().contiguous().cpu()
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt", "quantization": "workbench-rtn"})
    (path / CONFIG_FILE).write_text(json.dumps({**config, "aliases": aliases}, indent=1))
    if hasattr(getattr(model, "config", None), "to_json_file"):
        model.config.to_json_file(str(path / "config.json"))


def load_quantized(model: Any, path: Path) -> Any:
    """Put the layers saved by `save_quantized` into `model` (the same architecture, loaded in float).

    Returns the model, with the listed layers replaced by `QuantLinear` and every
    tensor loaded from the file (strictly: a missing or extra key is an error).
    """
    from safetensors.torch import load_file

    from ..teach.qlinear import QuantLinear

    path = Path(path)
    config = json.loads((path / CONFIG_FILE).read_text())
    if config.get("format") != "workbench-rtn":
        raise ValueError(f"{path / CONFIG_FILE}: not a workbench rtn checkpoint")
    for name, (out_f, in_f) in config["layers"].items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        device = old.weight.device
        setattr(parent, child, QuantLinear(in_f, out_f, config["bits"], config["sym"], config["group_size"],
                                           bias=old.bias is not None, device=device))
    if "lm_head" in config["layers"] and getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False
    state = load_file(str(path / WEIGHTS_FILE))
    for key, target in config.get("aliases", {}).items():
        state[key] = state[target]
    model.load_state_dict(state, strict=True)
    return model
