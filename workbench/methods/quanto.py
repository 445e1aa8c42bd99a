"""`quanto`: optimum-quanto weight (and optionally activation) quantization.

Uses optimum-quanto's own API on the float32 model: `quantize(model, weights=..., activations=...,
exclude=...)`, a short `Calibration` pass when activations are quantized (their scales come
from data), then `freeze` (the float weights are replaced by quantized tensor subclasses).
transformers' `QuantoConfig` path loads the same modules but cannot save them, and its int2/int4
weights fail under `torch.inference_mode` the same way (see `freeze` below).

Saving uses quanto's documented serialization instead of transformers: the state dict (the
quantized tensors flattened into their integer data, scales and shifts) to safetensors, the
`quantization_map` to JSON, and `requantize` into a fresh float model to reload.

Facts about optimum-quanto 0.2.7 with torch 2.13 that shape this module:
- int2/int4 weights (`WeightQBitsTensor`) frozen outside inference mode fail inside
  `torch.inference_mode()` ("Cannot set version_counter for inference tensor"), which is how
  the workbench measures. Freezing (and reloading) inside inference mode makes the quantized
  tensors inference tensors: they then run under inference_mode and no_grad (not for training).
- int2/int4 use groups of 128 input columns, or the largest of 96, 64, 32 that divides the
  input dimension, else one scale per output row; scales and shifts are float32.
- On CPU every path dequantizes the weights for each call and multiplies in float32, except
  int8 weights with int8 activations (`torch._int_mm`).
- `requantize` unties tied weights (it makes a new Parameter per module): they are tied again.
- `get_memory_footprint()` reports the float32 size of the wrapped weights.

Torch-free at import: torch, transformers and optimum.quanto are imported inside build()/load_saved().
"""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ..errors import InvalidParams, ParamError
from ..params import Param, Schema, Values
from .base import Built
from .layers import exclude_param
from .torch_common import TorchMethod

if TYPE_CHECKING:  # pragma: no cover
    from ..measure.context import BuildContext

WEIGHTS_FILE = "model.safetensors"
QMAP_FILE = "quanto_qmap.json"
FORMAT = "workbench-quanto"
FORMAT_VERSION = 1

# Workbench names -> optimum.quanto qtype names.
QTYPES = {"int2": "qint2", "int4": "qint4", "int8": "qint8", "float8": "qfloat8"}


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def excluded(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


class Quanto(TorchMethod):
    """optimum-quanto: int2/int4/int8/float8 weights, optional int8/float8 activations."""

    name = "quanto"
    model_errors_need_layers = True
    backend = "optimum-quanto"
    description = (
        "optimum-quanto: weights int2/int4 (grouped, affine) or int8/float8 (per output row), optionally "
        "int8/float8 activations with scales calibrated on a few samples; quantized tensor subclasses."
    )
    requires = ("torch", "transformers", "optimum-quanto", "safetensors")
    install_hint = "pip install optimum-quanto==0.2.7 into the torch environment (workbench env create torch)"
    quantizes = True
    schema = Schema(
        (
            Param("weights", "choice", "int8", choices=tuple(QTYPES),
                  help="int8 / float8 (e4m3): one float32 scale per output row. int4 / int2: affine codes "
                       "in groups of input columns (128, or 96/64/32 when 128 does not divide the input "
                       "dimension) with float32 scale and shift per group, bit-packed."),
            Param("activations", "choice", None, choices=("int8", "float8"), nullable=True,
                  help="Quantize the inputs and outputs of the quantized layers too, with per-tensor scales "
                       "calibrated on calibration_samples texts. none: activations stay float32."),
            Param("calibration_samples", "int", 8, minimum=1, maximum=1024,
                  visible_when={"activations": ("int8", "float8")},
                  help="How many of the data's calibration samples pass through the model to set the "
                       "activation scales (quanto's Calibration, momentum 0.9); at most data.calib_samples."),
            exclude_param("in float", " (quanto's exclude), e.g. lm_head, *.down_proj. SmolLM2 ties lm_head to "
                                      "the embeddings: quantizing it stores both"),
        ),
    )

    # --- kernel side (no torch) -------------------------------------------
    def model_errors(self, p: Values, layers: Mapping[str, tuple[int, int]], model: Any) -> list[ParamError]:
        return self._selection_errors(list(layers), p["exclude"])

    @staticmethod
    def _selection_errors(names: list[str], exclude: list[str]) -> list[ParamError]:
        if any(not excluded(n, exclude) for n in names):
            return []
        return [ParamError(
            "exclude",
            f"exclude={exclude} leaves none of the {len(names)} linear layers to quantize; patterns match the "
            f"full module name (e.g. 'lm_head', '*.down_proj'). Layers: {_few(names, 4)}",
        )]

    # --- worker side -------------------------------------------------------
    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Built:
        import torch
        from optimum.quanto import Calibration, freeze, quantize

        p = self.values(params)
        model = ctx.load_model("float32")
        linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        errors = self._selection_errors(linears, p["exclude"])
        if errors:
            raise InvalidParams(errors, "quanto")
        notes = _untie_selected(model, [n for n in linears if not excluded(n, p["exclude"])])

        weights, activations = QTYPES[p["weights"]], QTYPES[p["activations"]] if p["activations"] else None
        ctx.progress("quantize", 0.0, f"quanto weights={p['weights']} activations={p['activations'] or 'none'}")
        quantize(model, weights=weights, activations=activations, exclude=list(p["exclude"]) or None)
        with torch.inference_mode():
            if activations is not None:
                notes.append(_calibrate(ctx, model, p["calibration_samples"], Calibration))
            # Inside inference mode: int2/int4 weights frozen outside it fail under inference_mode.
            freeze(model)
        ctx.progress("quantize", 1.0, "frozen")

        qlayers = _quantized_layers(model)
        left = [n for n in linears if n not in qlayers]
        if left:
            notes.append(f"left in float32 (exclude={list(p['exclude'])}): {_few(left, 5)}")
        notes += _layout_notes(model, p)
        qmap = _quantization_map(model)
        float_outputs = outputs_left_float(model)
        if activations is not None:
            notes += _activation_notes(model, float_outputs)
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "weights": p["weights"],
                  "activations": p["activations"], "exclude": list(p["exclude"]),
                  # Not part of quanto's quantization map: without it a reload quantizes every output.
                  "outputs_left_float": float_outputs}
        return Built(
            model=model,
            layers_quantized=len(qlayers),
            layers_eligible=len(linears),
            kernel=kernel_description(p["weights"], p["activations"], str(ctx.device)),
            # measure.memory.module_weight_bytes opens quanto's QTensors (__tensor_flatten__) down to
            # their packed data, scales and shifts: weights_bytes is left to it.
            weights_bytes_claimed=int(model.get_memory_footprint()),
            save=lambda path: save_quantized(model, Path(path), qmap, config),
            notes=notes,
        )

    def load_saved(self, ctx: BuildContext, params: Mapping[str, Any], path: Path) -> Any:
        # The architecture in float (from the model's own files), then quanto's requantize.
        return load_quantized(ctx.load_model("float32"), Path(path), str(ctx.device))

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ..models.snippet import calibration_code, loadable

        p = self.values(params)
        w, a = QTYPES[p["weights"]], QTYPES[p["activations"]] if p["activations"] else None
        m = loadable(model_id, self.env)
        auto = m.auto("AutoModelForCausalLM", "AutoModel")
        lines = [
            "import json\n",
            "import torch",
            "from optimum.quanto import Calibration, freeze, quantization_map, quantize, "
            + ", ".join(sorted({w} | ({a} if a else set()))),
            "from safetensors.torch import save_model",
            f"from transformers import {auto}, AutoTokenizer{m.hint('AutoModel')}\n",
            m.line().rstrip("\n"),
            f"model = {auto}.from_pretrained(model_id, dtype=torch.float32).eval()",
            "tokenizer = AutoTokenizer.from_pretrained(model_id)",
            f"quantize(model, weights={w}, activations={a or 'None'}, exclude={list(p['exclude'])!r})",
        ]
        if a:
            lines += [calibration_code(None, p["calibration_samples"], 512, var="texts").rstrip("\n")]
        lines += ["with torch.inference_mode():  # int2/int4 weights frozen outside inference mode fail inside it"]
        if a:
            lines += [
                "    with Calibration(momentum=0.9):",
                "        for text in texts:",
                "            model(**tokenizer(text, return_tensors='pt', truncation=True,\n"
                "                              max_length=model.config.max_position_embeddings))",
            ]
        lines += [
            "    freeze(model)",
            "# save: quanto's own serialization (transformers cannot save quanto models)",
            "save_model(model, 'model.safetensors')",
            "json.dump(quantization_map(model), open('quanto_qmap.json', 'w'))",
            "# reload: a float model, then optimum.quanto.requantize(model, state_dict, qmap) inside torch.inference_mode()",
        ]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- worker helpers


def kernel_description(weights: str, activations: str | None, device: str) -> str:
    where = "CUDA" if device.startswith("cuda") else "CPU"
    activations = activations or "none"
    if activations == "int8" and weights == "int8":
        mm = "int8 x int8 torch._int_mm" if where == "CPU" else "int8 x int8 matmul (torch._int_mm where shapes allow)"
        return f"optimum-quanto W8A8 ({where}): {mm}, rescaled to float32"
    wtext = {
        "int8": "int8 weights dequantized per call",
        "float8": "float8 weights upcast and rescaled per call",
        "int4": "int4 weights unpacked and dequantized per call",
        "int2": "int2 weights unpacked and dequantized per call",
    }[weights]
    atext = {"none": "float32 activations", "int8": "int8 activations dequantized",
             "float8": "float8 activations upcast"}[activations]
    return f"optimum-quanto ({where}): {wtext}, {atext}, float32 matmul"


def outputs_left_float(model: Any) -> list[str]:
    """Modules whose output quantization quanto's Calibration (streamline) switched off."""
    from optimum.quanto.nn import QModuleMixin

    names = []
    for name, m in model.named_modules():
        if isinstance(m, QModuleMixin) and m.activation_qtype is not None:
            hook = m._quantize_hooks.get("output")
            if hook is None or hook.id not in m._forward_hooks:
                names.append(name)
    return names


def _activation_notes(model: Any, float_outputs: list[str]) -> list[str]:
    from optimum.quanto.nn import QLinear, QModuleMixin

    wrapped = [m for m in model.modules() if isinstance(m, QModuleMixin) and m.activation_qtype is not None]
    others = sorted({type(m).__name__ for m in wrapped if not isinstance(m, QLinear)})
    notes = [f"{len(float_outputs)} of {len(wrapped)} modules with quantized activations keep float outputs "
             "(consumed only by ops that cannot take quantized inputs, e.g. the attention or SiLU)"]
    if others:
        n = sum(not isinstance(m, QLinear) for m in wrapped)
        notes.append(f"quanto also wraps {n} {'/'.join(others)} modules to quantize their outputs "
                     "(their weights stay float)")
    return notes


def _quantized_layers(model: Any) -> list[str]:
    from optimum.quanto.nn import QLinear

    return [n for n, m in model.named_modules() if isinstance(m, QLinear) and m.weight_qtype is not None]


def _quantization_map(model: Any) -> dict:
    from optimum.quanto import quantization_map

    return quantization_map(model)


def _untie_selected(model: Any, selected: list[str]) -> list[str]:
    """A quantized layer whose weight is shared (lm_head and the embeddings) stops being tied."""
    owners: dict[int, list[str]] = {}
    for pname, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(pname)
    notes = []
    for name in selected:
        weight = getattr(model.get_submodule(name), "weight", None)
        shared = [o for o in owners.get(id(weight), []) if o != f"{name}.weight"]
        if not shared:
            continue
        notes.append(f"{name} was tied to {', '.join(shared)}: untied, {name} is quantized and "
                     f"{shared[0].rsplit('.', 1)[0]} stays float32 (both are stored)")
        config = getattr(model, "config", None)
        if config is not None and getattr(config, "tie_word_embeddings", False):
            config.tie_word_embeddings = False
    return notes


def _calibrate(ctx: BuildContext, model: Any, samples: int, calibration: Any) -> str:
    texts = ctx.calibration_texts()[:samples]
    tok = ctx.tokenizer()
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
    device = next(model.parameters()).device
    ntok = 0
    with calibration(momentum=0.9):
        for i, text in enumerate(texts):
            ctx.progress("calibrate", i / len(texts), f"sample {i + 1}/{len(texts)}")
            enc = tok(text, return_tensors="pt", truncation=limit is not None, max_length=limit)
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            ntok += int(enc["input_ids"].numel())
            model(**enc)
    return (f"activation scales calibrated on {len(texts)} samples ({ntok} tokens) with quanto's Calibration "
            "(momentum 0.9; outputs consumed by non-quantized ops stay float)")


def _layout_notes(model: Any, p: Mapping[str, Any]) -> list[str]:
    from optimum.quanto.nn import QLinear

    if p["weights"] not in ("int2", "int4"):
        return [f"{p['weights']} weights: one float32 scale per output row"]
    groups: dict[Any, set[int]] = {}
    for m in model.modules():
        if isinstance(m, QLinear) and m.weight_qtype is not None:
            groups.setdefault(m.weight_group_size, set()).add(m.in_features)
    parts = []
    for g, dims in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        where = "input dimension " + ", ".join(map(str, sorted(dims)))
        parts.append(f"groups of {g} for {where}" if g else f"one scale per output row for {where}")
    return [f"{p['weights']} weights ({'; '.join(parts)}): float32 scale and shift per group (or row), codes bit-packed"]


def save_quantized(model: Any, path: Path, qmap: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """quanto's serialization: the state dict (QTensors flattened to their data, scales and
    shifts) to safetensors and the quantization map to JSON. Tensors shared by several keys
    (tied weights) are written once and listed under "aliases"; config.json is written too."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    tensors, aliases, seen = {}, {}, {}
    for key, t in model.state_dict().items():
        ident = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape), t.stride())
        if t.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = t.detach().contiguous().cpu()
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt", "quantization": FORMAT})
    (path / QMAP_FILE).write_text(json.dumps({**config, "quantization_map": dict(qmap), "aliases": aliases},
                                             indent=1))
    if hasattr(getattr(model, "config", None), "to_json_file"):
        model.config.to_json_file(str(path / "config.json"))


def load_quantized(model: Any, path: Path, device: str = "cpu") -> Any:
    """`requantize` what `save_quantized` wrote into `model` (the same architecture, in float)."""
    import torch
    from optimum.quanto import requantize
    from safetensors.torch import load_file

    meta = json.loads((path / QMAP_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path / QMAP_FILE}: not a workbench quanto checkpoint")
    state = load_file(str(path / WEIGHTS_FILE))
    aliases: dict[str, str] = meta.get("aliases", {})
    for key, target in aliases.items():
        state[key] = state[target]
    if "lm_head" in meta["quantization_map"] and getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False
    with torch.inference_mode():  # see the module docstring: int2/int4 weights must be inference tensors
        requantize(model, state, meta["quantization_map"], device=torch.device(device))
    # requantize loads with strict=False: check that every tensor found its place.
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{path / WEIGHTS_FILE} does not fit the model: missing {_few(missing)}; "
                         f"unexpected {_few(unexpected)}")
    for name in meta.get("outputs_left_float", []):
        model.get_submodule(name).disable_output_quantization()
    # requantize gives every module its own Parameter: tie again what was tied when saved.
    for key, target in aliases.items():
        try:
            shared = model.get_parameter(target)
            owner, _, leaf = key.rpartition(".")
            model.get_parameter(key)
        except AttributeError:
            continue  # not a plain parameter (e.g. inside a quantized tensor): its values are loaded anyway
        setattr(model.get_submodule(owner), leaf, shared)
    return model.eval()
