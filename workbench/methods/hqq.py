"""`hqq`: Half-Quadratic Quantization (hqq 0.2.8) through hqq's own API.

Each selected `nn.Linear` is replaced by `hqq.core.quantize.HQQLinear` built from
`BaseQuantizeConfig(nbits, group_size, axis)`: affine codes whose scale and zero
point per group are fitted by hqq's half-quadratic solver (no calibration data).
The codes are bit-packed in `W_q` (8/4/2/1 bits in uint8, 3 bits ten to an int32);
scale and zero point live in the layer's `meta` dict in the compute dtype.

transformers 5.23's `HqqConfig` path raises NotImplementedError, so the workbench
replaces the layers itself, as `hqq.models.hf.base.AutoHQQHFModel.quantize_model`
would (which only knows decoder layouts with `model.layers`; encoders fail there).

Runtime: the `HQQBackend.PYTORCH` forward, the one hqq offers on CPU (the ATEN
backends need the CUDA `hqq_aten` extension): every call unpacks and dequantizes
the whole weight, then runs a matmul in the compute dtype.

hqq's rules: group_size is a multiple of 8 (or none: one group per row for axis=1,
per column for axis=0) and must divide the number of weights of each layer
(hqq groups over the flattened weight: `W.reshape(-1, group_size)` for axis=1,
`W.reshape(group_size, -1)` for axis=0), not necessarily its input dimension.

Save: `HQQLinear.state_dict()` is hqq's safetensors-compatible encoding (codes,
scale, zero and the metadata as small tensors): written with the rest of the
model to model.safetensors; `load_saved` puts empty `HQQLinear`s in the float
architecture and loads it strictly.

Torch-free at import: torch and hqq are imported inside `build()` / `load_saved()`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import InvalidParams, ParamError
from ..params import Check, Param, Schema, Values
from .base import Built
from .layers import exclude_param, few as _few, include_param
from .layers import left_out_note, replace_layers_code, select_layers, selection_error
from .rtn import _tie_notes
from .torch_common import TorchMethod

if TYPE_CHECKING:  # pragma: no cover
    from ..measure.context import BuildContext

CONFIG_FILE = "quant_config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
NBITS = (1, 2, 3, 4, 8)


def _check_group_size(values: Mapping[str, Any]) -> str | None:
    gs = values.get("group_size")
    if gs is None or gs == -1 or (gs >= 8 and gs % 8 == 0):
        return None
    return (f"got {gs}; allowed: a multiple of 8 (weights per scale and zero point, e.g. 32, 64, 128), "
            "or -1 (one group per row for axis=1, per column for axis=0)")


def hqq_group_size(group_size: int) -> int | None:
    """The workbench's -1 is hqq's None (a whole row or column per group)."""
    return None if group_size == -1 else group_size


def storage_bits(nbits: int) -> float:
    """Bits each code takes in hqq's packing (3-bit codes go ten to an int32)."""
    return 3.2 if nbits == 3 else float(nbits)


class HQQ(TorchMethod):
    """hqq (Half-Quadratic Quantization): calibration-free affine weight quantization, 1-8 bits."""

    name = "hqq"
    model_errors_need_layers = True
    backend = "hqq"
    description = (
        "HQQ: calibration-free weight quantization (1, 2, 3, 4, 8 bits) whose scales and zero points are fitted "
        "by a half-quadratic solver; hqq's HQQLinear, PyTorch backend (dequantize on the fly)."
    )
    requires = ("torch", "hqq", "transformers", "safetensors")
    install_hint = "pip install hqq==0.2.8.post1 (in the torch environment: workbench env create torch)"
    quantizes = True
    schema = Schema(
        (
            Param("nbits", "choice", 4, choices=NBITS,
                  help="Bits per weight code. 8, 4, 2 and 1 bit are packed into bytes, 3-bit codes ten to an "
                       "int32 word (3.2 bits each)."),
            Param("group_size", "int", 64, minimum=-1,
                  help="Weights that share a scale and zero point: a multiple of 8 that divides each layer's "
                       "number of weights (hqq groups the flattened weight), or -1 for one group per row "
                       "(axis=1) or column (axis=0). Scale and zero point cost 2 x 32 bits per group in float32."),
            Param("axis", "choice", 1, choices=(0, 1),
                  help="1: groups of consecutive weights along a row (input columns), hqq's default. "
                       "0: groups along the output dimension (strided over the flattened weight)."),
            Param("compute_dtype", "choice", "float32", choices=("float32", "bfloat16", "float16"),
                  help="dtype of the dequantized weights, the matmuls, the scales and zero points and of the "
                       "layers left unquantized. float32 matches the reference."),
            include_param(),
            exclude_param("unquantized", " (hqq leaves lm_head out by default too). SmolLM2 ties lm_head to "
                                         "the embeddings: quantizing it unties it"),
        ),
        checks=(Check(("group_size",), _check_group_size),),
    )

    # --- kernel side (no torch) -------------------------------------------
    def model_errors(self, p: Values, layers: Mapping[str, tuple[int, int]], model: Any) -> list[ParamError]:
        return self._shape_errors(layers, p["include"], p["exclude"], p["group_size"])

    @staticmethod
    def _shape_errors(layers: Mapping[str, tuple[int, int]], include: list[str], exclude: list[str],
                      group_size: int) -> list[ParamError]:
        err = selection_error(layers, include, exclude)
        if err is not None:
            return [err]
        selected = select_layers(layers, include, exclude)
        if group_size == -1:
            return []
        numel = {n: int(layers[n][0]) * int(layers[n][1]) for n in selected}
        bad = [n for n in selected if numel[n] % group_size]
        if not bad:
            return []
        g = 0
        for v in numel.values():
            g = _gcd(g, v)
        fits = [s for s in (16, 32, 64, 128, 256, 512, 1024) if g % s == 0] or \
            [s for s in range(8, min(g, 256) + 1, 8) if g % s == 0][:6]
        hint = (f"group sizes that divide every selected layer: {', '.join(map(str, fits))}; " if fits
                else "no multiple of 8 divides every selected layer; ")
        return [ParamError(
            "group_size",
            f"group_size={group_size} does not divide the number of weights (out x in) of {len(bad)} layer"
            f"{'s' if len(bad) != 1 else ''} ({', '.join(f'{n}: {numel[n]}' for n in bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); hqq groups the flattened weight; {hint}"
            "or -1 (one group per row), or leave those layers out with exclude",
        )]

    # --- worker side -------------------------------------------------------
    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Built:
        import torch
        from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear

        p = self.values(params)
        nbits, group_size, axis, dtype_name = p["nbits"], p["group_size"], p["axis"], p["compute_dtype"]
        dtype = getattr(torch, dtype_name)
        device = str(ctx.device)
        HQQLinear.set_backend(HQQBackend.PYTORCH)

        model = ctx.load_model(dtype_name)
        linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        shapes = {n: (m.out_features, m.in_features) for n, m in linears.items()}
        errors = self._shape_errors(shapes, p["include"], p["exclude"], group_size)
        if errors:
            raise InvalidParams(errors, "hqq")
        selected = select_layers(linears, p["include"], p["exclude"])
        notes = _tie_notes(model, linears, selected)

        quant_config = BaseQuantizeConfig(nbits=nbits, group_size=hqq_group_size(group_size), axis=axis)
        for i, name in enumerate(selected):
            ctx.progress("quantize", i / len(selected), name)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, HQQLinear(linears[name], quant_config, compute_dtype=dtype, device=device))
        ctx.progress("quantize", 1.0, f"{len(selected)} layers")
        del linears

        quantized = [n for n, m in model.named_modules() if isinstance(m, HQQLinear)]
        skipped = [n for n in shapes if n not in set(quantized)]
        if skipped:
            notes.append(left_out_note(skipped, dtype_name, p["include"], p["exclude"],
                                       "the default: like transformers and hqq, the output layer stays unquantized"))
        if group_size != -1 and axis == 1:
            straddle = [n for n in quantized if shapes[n][1] % group_size]
            if straddle:
                notes.append(
                    f"group_size={group_size} does not divide the input dimension of {len(straddle)} layer(s) "
                    f"({_few(straddle)}): hqq groups the flattened weight, so some groups span two rows"
                )
        meta_dtype = {str(getattr(m.meta.get("scale"), "dtype", "")).replace("torch.", "")
                      for m in model.modules() if isinstance(m, HQQLinear)}
        notes.append(
            f"{nbits}-bit codes packed ({storage_bits(nbits):g} bits each); scale and zero point per "
            + (f"group of {group_size}" if group_size != -1 else ("row" if axis == 1 else "column"))
            + f" in {', '.join(sorted(meta_dtype)) or dtype_name}; axis={axis}; hqq optimizer on (round_zero "
            + ("on)" if nbits == 4 else "off)")
        )
        config = {
            "format": "workbench-hqq",
            "format_version": FORMAT_VERSION,
            "nbits": nbits,
            "group_size": group_size,
            "axis": axis,
            "compute_dtype": dtype_name,
            "layers": {n: list(shapes[n]) for n in quantized},
        }
        on = "CUDA" if device.startswith("cuda") else "CPU"
        claimed = int(model.get_memory_footprint())
        notes.append(
            f"get_memory_footprint() says {claimed / 1e6:.1f} MB: it counts parameters and buffers only, not the "
            "scales and zero points HQQLinear keeps in its `meta` dict; weights_bytes counts them"
        )
        return Built(
            model=model,
            layers_quantized=len(quantized),
            layers_eligible=len(shapes),
            kernel=(f"hqq HQQLinear, PyTorch backend (unpack + dequantize the whole weight in each call, "
                    f"{dtype_name} matmul; {on})"),
            weights_bytes_claimed=claimed,
            save=lambda path: save_quantized(model, Path(path), config),
            notes=notes,
        )

    def load_saved(self, ctx: BuildContext, params: Mapping[str, Any], path: Path) -> Any:
        config = json.loads((Path(path) / CONFIG_FILE).read_text())
        return load_quantized(ctx.load_model(config["compute_dtype"]), Path(path), str(ctx.device))

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ..models.snippet import loadable

        p = self.values(params)
        m = loadable(model_id, self.env)
        auto = m.auto("AutoModelForCausalLM", "AutoModel")
        return (
            "import fnmatch\n\n"
            "import torch\n"
            "from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear\n"
            f"from transformers import {auto}{m.hint('AutoModel')}\n\n"
            + m.line()
            + f"dtype = torch.{p['compute_dtype']}\n"
            f"model = {auto}.from_pretrained(model_id, dtype=dtype).eval()\n"
            "HQQLinear.set_backend(HQQBackend.PYTORCH)  # the backend that runs on CPU\n"
            f"quant_config = BaseQuantizeConfig(nbits={p['nbits']}, group_size={hqq_group_size(p['group_size'])}, "
            f"axis={p['axis']})\n"
            + replace_layers_code(p["include"], p["exclude"])
            +             "    setattr(parent, child, HQQLinear(getattr(parent, child), quant_config, compute_dtype=dtype, "
            "device='cpu'))\n"
        )


def _gcd(a: int, b: int) -> int:
    import math

    return math.gcd(a, b)


def save_quantized(model: Any, path: Path, config: Mapping[str, Any]) -> None:
    """Write model.safetensors (HQQLinear's encoded state dicts and the rest of the model) and quant_config.json.

    Tied tensors (lm_head and the embeddings) are written once; quant_config.json lists the
    other names under "aliases". The model's config.json is written too.
    """
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        if id(t) in first:
            aliases[name] = first[id(t)]
        else:
            first[id(t)] = name
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in aliases}
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt", "quantization": "hqq"})
    (path / CONFIG_FILE).write_text(json.dumps({**config, "aliases": aliases}, indent=1))
    if hasattr(getattr(model, "config", None), "to_json_file"):
        model.config.to_json_file(str(path / "config.json"))


def load_quantized(model: Any, path: Path, device: str = "cpu") -> Any:
    """Put the HQQLinear layers saved by `save_quantized` into `model` (the same architecture, in float)."""
    import torch
    from hqq.core.quantize import HQQBackend, HQQLinear
    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads((path / CONFIG_FILE).read_text())
    if config.get("format") != "workbench-hqq":
        raise ValueError(f"{path / CONFIG_FILE}: not a workbench hqq checkpoint")
    HQQLinear.set_backend(HQQBackend.PYTORCH)
    dtype = getattr(torch, config["compute_dtype"])
    for name in config["layers"]:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, HQQLinear(None, None, compute_dtype=dtype, device=device, initialize=False))
    if "lm_head" in config["layers"] and getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False
    state = load_file(str(path / WEIGHTS_FILE), device=device)
    for key, target in config.get("aliases", {}).items():
        state[key] = state[target]
    model.load_state_dict(state, strict=True)
    return model.eval()
