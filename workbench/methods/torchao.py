"""`torchao`: PyTorch's own quantization library (torchao 0.18), applied with `quantize_`.

Each selected `nn.Linear` keeps its module, but its weight becomes a torchao
tensor subclass (`Int8Tensor`, `Float8Tensor`, `Int4TilePackedTo4dTensor`)
that holds int8 / float8 / packed int4 data plus scales and runs the matmul
through torchao's kernels. The schemes, and where torchao 0.18 runs them
(checked on torch 2.13, a CPU with AVX-512 VNNI/BF16/FP16 and no AMX):

    int8_weight_only    Int8WeightOnlyConfig, per-row scales. CPU: the int8 weight is cast to the
                        activation dtype inside every matmul. CUDA too.
    int8_dynamic        Int8DynamicActivationInt8WeightConfig: per-token int8 activations x per-row
                        int8 weights. CPU: torch._int_mm (u8s8 with VNNI, s8s8 with AMX). CUDA too.
    int4_weight_only    Int4WeightOnlyConfig(group_size). No CPU path in 0.18: the default `plain`
                        and `preshuffled` layouts need the `mslk` package, `plain_int32` says it does
                        not support device 'cpu', `tile_packed_to_4d` (tinygemm) needs CUDA and
                        bfloat16. CUDA: tile_packed_to_4d on a bfloat16 model.
    float8_weight_only  Float8WeightOnlyConfig (e4m3, per-row scales). CPU: the float8 weight is
                        dequantized to the activation dtype inside every matmul. CUDA too.
    float8_dynamic      Float8DynamicActivationFloat8WeightConfig: torchao asserts a CUDA GPU of
                        compute capability >= 8.9 (or MI300 / XPU); nothing on CPU.

`get_memory_footprint()` counts a subclass weight at its nominal (float32)
dtype, so it reports the unquantized size: it is kept as `weights_bytes_claimed`
next to the bytes actually held, which `workbench.measure.memory` counts by
opening the subclasses (int8 data + float32 row scales + int8 zero points).

Saving writes what transformers writes for a torchao model (model.safetensors
flattened by torchao's safetensors support, with a `TorchAoConfig` in
config.json), so `from_pretrained(path)` reloads it; transformers' own
`save_pretrained` refuses a model quantized with `quantize_` (it has no
`hf_quantizer`: "Attempted to access the data pointer on an invalid python storage").

Torch-free at import: torch and torchao are imported inside `build()` / `load_saved()`.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import InvalidParams, MethodUnavailable, ParamError
from ..params import Param, Schema, Values
from .base import Built
from .layers import exclude_param, few as _few, include_param
from .layers import group_size_error, left_out_note, select_layers, selection_error
from .rtn import _tie_notes
from .torch_common import TorchMethod

if TYPE_CHECKING:  # pragma: no cover
    from ..measure.context import BuildContext

SCHEMES = ("int8_weight_only", "int8_dynamic", "int4_weight_only", "float8_weight_only", "float8_dynamic")
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what the tinygemm int4 kernel takes
CONFIG_FILE = "quant_config.json"
WEIGHTS_FILE = "model.safetensors"

CONFIG_CLASS = {
    "int8_weight_only": "Int8WeightOnlyConfig",
    "int8_dynamic": "Int8DynamicActivationInt8WeightConfig",
    "int4_weight_only": "Int4WeightOnlyConfig",
    "float8_weight_only": "Float8WeightOnlyConfig",
    "float8_dynamic": "Float8DynamicActivationFloat8WeightConfig",
}

NO_CPU = {
    "int4_weight_only": (
        "torchao 0.18 has no CPU path for int4 weight-only: its int4 layouts need the mslk package "
        "(plain, preshuffled), CUDA with bfloat16 (tile_packed_to_4d, tinygemm), or refuse device 'cpu' "
        "(plain_int32). On CPU use scheme=int8_weight_only, or the hqq or rtn methods for 4-bit weights"
    ),
    "float8_dynamic": (
        "torchao 0.18 float8 dynamic activation quantization needs a CUDA GPU of compute capability >= 8.9 "
        "(Ada, Hopper), an AMD MI300+ or an Intel XPU; it has no CPU matmul for float8 x float8. "
        "On CPU use scheme=float8_weight_only (float8 weights, dequantized in each matmul)"
    ),
}


def _config(scheme: str, group_size: int) -> Any:
    """The torchao config object for a scheme (imports torchao)."""
    from torchao import quantization as q

    if scheme == "int8_weight_only":
        return q.Int8WeightOnlyConfig()
    if scheme == "int8_dynamic":
        return q.Int8DynamicActivationInt8WeightConfig()
    if scheme == "int4_weight_only":
        return q.Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d")
    if scheme == "float8_weight_only":
        return q.Float8WeightOnlyConfig()
    if scheme == "float8_dynamic":
        return q.Float8DynamicActivationFloat8WeightConfig()
    raise ValueError(f"scheme: got {scheme!r}; allowed: {', '.join(SCHEMES)}")


def _config_code(scheme: str, group_size: int) -> str:
    cls = CONFIG_CLASS[scheme]
    if scheme == "int4_weight_only":
        return f'{cls}(group_size={group_size}, int4_packing_format="tile_packed_to_4d")'
    return f"{cls}()"


def _is_quantized_weight(w: Any) -> bool:
    from torchao.utils import TorchAOBaseTensor

    return isinstance(w, TorchAOBaseTensor)


class TorchAO(TorchMethod):
    """torchao `quantize_` on the selected linear layers: int8, int4 and float8 weight (and activation) schemes."""

    name = "torchao"
    model_errors_need_layers = True
    backend = "torchao"
    description = (
        "PyTorch's torchao: int8 weight-only, int8 dynamic activation + int8 weight, float8 weight-only on CPU; "
        "int4 weight-only and float8 dynamic on CUDA. Weights become torchao tensor subclasses."
    )
    requires = ("torch", "torchao", "transformers", "safetensors")
    install_hint = "pip install torchao==0.18.0 (in the torch environment: workbench env create torch)"
    quantizes = True
    schema = Schema(
        (
            Param("scheme", "choice", "int8_weight_only", choices=SCHEMES,
                  help="int8_weight_only: int8 weights with one scale per output row, float activations. "
                       "int8_dynamic: activations quantized to int8 per token at run time, int8 x int8 matmul. "
                       "int4_weight_only: 4-bit weights in groups (CUDA only in torchao 0.18). "
                       "float8_weight_only: float8 e4m3 weights, one scale per row. "
                       "float8_dynamic: float8 weights and activations (CUDA compute capability >= 8.9 only)."),
            Param("group_size", "choice", 64, choices=INT4_GROUP_SIZES, visible_when={"scheme": "int4_weight_only"},
                  help="Input columns per int4 scale and zero point; must divide the input dimension of every "
                       "selected layer (torchao silently skips a layer it does not divide; the workbench refuses)."),
            include_param(" (e.g. '*.mlp.*'). Passed to quantize_ as its filter_fn"),
            exclude_param(extra=". SmolLM2 ties lm_head to the embeddings: quantizing it unties it and stores both"),
        ),
    )

    # --- kernel side (no torch) -------------------------------------------
    def unavailable_reason(self, params: Mapping[str, Any], device: str) -> str | None:
        scheme = params.get("scheme", self.schema.get("scheme").default)
        if device.split(":", 1)[0] == "cpu" and scheme in NO_CPU:
            return f"scheme={scheme} on device cpu: {NO_CPU[scheme]}"
        return None

    def model_errors(self, p: Values, layers: Mapping[str, tuple[int, int]], model: Any) -> list[ParamError]:
        return self._shape_errors(layers, p)

    @staticmethod
    def _shape_errors(layers: Mapping[str, tuple[int, int]], p: Mapping[str, Any]) -> list[ParamError]:
        err = selection_error(layers, p["include"], p["exclude"])
        if err is not None:
            return [err]
        if p["scheme"] != "int4_weight_only":
            return []
        err = group_size_error(
            layers, select_layers(layers, p["include"], p["exclude"]), p["group_size"],
            candidates=INT4_GROUP_SIZES,
            remedy="torchao would silently leave them unquantized; or leave those layers out with exclude",
        )
        return [err] if err is not None else []

    # --- worker side -------------------------------------------------------
    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Built:
        import torch
        from torchao.quantization import quantize_

        p = self.values(params)
        scheme, group_size = p["scheme"], p.get("group_size", 64)
        device = str(ctx.device)
        _check_device(scheme, device, self.unavailable_reason(p, device))

        dtype = _model_dtype(scheme)
        model = ctx.load_model(dtype)
        linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        shapes = {n: (m.out_features, m.in_features) for n, m in linears.items()}
        errors = self._shape_errors(shapes, p)
        if errors:
            raise InvalidParams(errors, "torchao")
        selected = select_layers(linears, p["include"], p["exclude"])
        notes = _tie_notes(model, linears, selected)
        chosen = set(selected)
        done: list[str] = []

        def filter_fn(module: Any, fqn: str) -> bool:
            if fqn in chosen and isinstance(module, torch.nn.Linear):
                ctx.progress("quantize", len(done) / len(chosen), fqn)
                done.append(fqn)
                return True
            return False

        config = _config(scheme, group_size)
        quantize_(model, config, filter_fn=filter_fn)
        ctx.progress("quantize", 1.0, f"{len(chosen)} layers")

        # Count on the model: which Linear weights really became torchao tensor subclasses.
        quantized = [n for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and _is_quantized_weight(m.weight)]
        left_by_torchao = [n for n in selected if n not in set(quantized)]
        if left_by_torchao:
            notes.append(
                f"torchao left {len(left_by_torchao)} selected layer(s) unquantized "
                f"({_few(left_by_torchao)}): "
                + ("float8 needs both dimensions to be multiples of 16" if scheme.startswith("float8")
                   else "their shape does not fit the scheme")
            )
        skipped = [n for n in shapes if n not in chosen]
        if skipped:
            notes.append(left_out_note(skipped, dtype, p["include"], p["exclude"],
                                       "the default: like transformers, the output layer stays in full precision"))
        if dtype != "float32":
            notes.append(f"the model runs in {dtype}: {scheme} on {device} needs it (tinygemm int4 kernel)")
        claimed = int(model.get_memory_footprint())
        notes.append(
            f"get_memory_footprint() says {claimed / 1e6:.1f} MB: it counts each quantized weight at its "
            f"nominal {dtype} size; weights_bytes counts the int/float8 data, scales and zero points held"
        )
        info = {
            "format": "workbench-torchao",
            "scheme": scheme,
            "group_size": group_size if scheme == "int4_weight_only" else None,
            "dtype": dtype,
            "layers": quantized,
        }
        not_converted = [n for n in shapes if n not in set(quantized)]
        return Built(
            model=model,
            layers_quantized=len(quantized),
            layers_eligible=len(shapes),
            kernel=_kernel(scheme, device),
            weights_bytes_claimed=claimed,
            save=lambda path: save_quantized(model, Path(path), config, not_converted, info),
            notes=notes,
        )

    def load_saved(self, ctx: BuildContext, params: Mapping[str, Any], path: Path) -> Any:
        # transformers reads the TorchAoConfig from config.json and rebuilds the tensor subclasses
        # from the flattened safetensors (torchao's own metadata says which class each weight is).
        p = self.values(params)
        info = json.loads((Path(path) / CONFIG_FILE).read_text())
        return ctx.load_model(info.get("dtype", _model_dtype(p["scheme"])), path=Path(path))

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ..models.snippet import loadable

        p = self.values(params)
        scheme = p["scheme"]
        dtype = _model_dtype(scheme)
        m = loadable(model_id, self.env)
        auto = m.auto("AutoModelForCausalLM", "AutoModel")
        return (
            "import fnmatch\n\n"
            "import torch\n"
            f"from transformers import {auto}{m.hint('AutoModel')}\n"
            f"from torchao.quantization import quantize_, {CONFIG_CLASS[scheme]}\n\n"
            + m.line()
            + f"model = {auto}.from_pretrained(model_id, dtype=torch.{dtype}).eval()\n"
            + ("model = model.to('cuda')  # torchao 0.18 int4 weight-only needs CUDA\n"
               if scheme == "int4_weight_only" else "")
            + f"include, exclude = {list(p['include'])!r}, {list(p['exclude'])!r}\n\n"
            "def filter_fn(module, fqn):\n"
            "    return (isinstance(module, torch.nn.Linear)\n"
            "            and any(fnmatch.fnmatchcase(fqn, pat) for pat in include)\n"
            "            and not any(fnmatch.fnmatchcase(fqn, pat) for pat in exclude))\n\n"
            "lm_head = dict(model.named_modules()).get('lm_head')\n"
            "if lm_head is not None and filter_fn(lm_head, 'lm_head'):\n"
            "    model.config.tie_word_embeddings = False  # quantizing lm_head unties it from the embeddings\n"
            f"quantize_(model, {_config_code(scheme, p.get('group_size', 64))}, filter_fn=filter_fn)\n"
            "# The same through transformers (quantizes every Linear not listed):\n"
            "# from transformers import TorchAoConfig\n"
            f"# model = {auto}.from_pretrained(model_id, dtype=torch.{dtype},\n"
            f"#     quantization_config=TorchAoConfig({_config_code(scheme, p.get('group_size', 64))}, "
            "modules_to_not_convert=['lm_head']))\n"
        )


def _model_dtype(scheme: str) -> str:
    # tinygemm's int4 layout takes bfloat16 weights only; the other schemes keep the float32 reference dtype.
    return "bfloat16" if scheme == "int4_weight_only" else "float32"


def _check_device(scheme: str, device: str, reason: str | None) -> None:
    """Refuse what this device cannot run, as MethodUnavailable (never a backend assertion)."""
    if reason:
        raise MethodUnavailable(reason)
    if device.startswith("cuda") and scheme == "float8_dynamic":
        import torch

        cap = torch.cuda.get_device_capability()
        if cap < (8, 9):
            raise MethodUnavailable(
                f"scheme=float8_dynamic: this GPU has compute capability {cap[0]}.{cap[1]}; torchao 0.18 needs "
                ">= 8.9 (Ada, Hopper) for float8 matmuls; use float8_weight_only or int8_dynamic"
            )
    if device.startswith("cuda") and scheme == "int4_weight_only":
        import torch

        cap = torch.cuda.get_device_capability()
        if cap < (8, 0):
            raise MethodUnavailable(
                f"scheme=int4_weight_only: this GPU has compute capability {cap[0]}.{cap[1]}; the tinygemm "
                "int4 kernel of torchao 0.18 needs >= 8.0"
            )


def _kernel(scheme: str, device: str) -> str:
    on = "CUDA" if device.startswith("cuda") else "CPU"
    if scheme == "int8_weight_only":
        how = "int8 weight cast to the activation dtype in each matmul" if on == "CPU" else "int8 weight-only mm"
        return f"torchao int8 weight-only (Int8Tensor, per-row scales; {how}; {on})"
    if scheme == "int8_dynamic":
        if on == "CPU":
            from torchao.utils import _cpu_is_amx_tile_supported, _cpu_is_vnni_supported

            path = ("s8s8 (AMX)" if _cpu_is_amx_tile_supported() else
                    "u8s8 (AVX512-VNNI)" if _cpu_is_vnni_supported() else "s8s8")
            how = f"per-token int8 activations, torch._int_mm {path}"
        else:
            how = "per-token int8 activations, int8 x int8 mm"
        return f"torchao int8 dynamic activation + int8 weight (Int8Tensor; {how}; {on})"
    if scheme == "int4_weight_only":
        return f"torchao int4 weight-only (Int4TilePackedTo4dTensor, tinygemm, bfloat16; {on})"
    if scheme == "float8_weight_only":
        return f"torchao float8 e4m3 weight-only (Float8Tensor, per-row scales; dequantized in each matmul; {on})"
    return f"torchao float8 dynamic activation + float8 weight (Float8Tensor, torch._scaled_mm; {on})"


def save_quantized(model: Any, path: Path, config: Any, not_converted: list[str], info: Mapping[str, Any]) -> None:
    """Write the checkpoint transformers writes for a torchao model, plus `quant_config.json`.

    model.safetensors: torchao's `flatten_tensor_state_dict` (each subclass weight as its inner
    tensors, `_weight_qdata`, `_weight_scale`, ..., with torchao's metadata naming the class);
    tied weights (lm_head and the embeddings) are written once and re-tied by transformers.
    config.json: the model's config with a `TorchAoConfig` whose `modules_to_not_convert` lists
    every linear layer that was not quantized (exact names), so `from_pretrained(path)` rebuilds it.
    """
    from safetensors.torch import save_file
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict
    from transformers import TorchAoConfig

    path.mkdir(parents=True, exist_ok=True)
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        if id(t) in first:
            aliases[name] = first[id(t)]
        else:
            first[id(t)] = name
    state = {k: v for k, v in model.state_dict().items() if k not in aliases}
    tensors, metadata = flatten_tensor_state_dict(state)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path / WEIGHTS_FILE),
              metadata={**metadata, "format": "pt"})
    hf_config = copy.deepcopy(model.config)
    hf_config.quantization_config = TorchAoConfig(
        config, modules_to_not_convert=[re.escape(n) for n in not_converted]
    )
    hf_config.save_pretrained(str(path))
    (path / CONFIG_FILE).write_text(json.dumps({**info, "aliases": aliases}, indent=1))
