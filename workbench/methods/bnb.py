"""`bnb`: bitsandbytes 8-bit (LLM.int8) and 4-bit (NF4/FP4) through transformers' `BitsAndBytesConfig`.

The model is loaded with `from_pretrained(..., quantization_config=BitsAndBytesConfig(...))`:
transformers replaces the `nn.Linear` layers by bitsandbytes' `Linear8bitLt` / `Linear4bit`
while the weights load. On the CPU (what this machine has) bitsandbytes 0.50 runs both;
on CUDA the same configuration uses bitsandbytes' CUDA kernels.

What the CPU backend really does (read from bitsandbytes 0.50.2, checked on the model):
- 8-bit: every call casts the activations to float16 (logging a warning per call through the
  `bitsandbytes.autograd._functions` logger), quantizes them per row to int8 and multiplies
  with the int8 weights (`torch._int_mm` on AVX-512 CPUs); with `llm_int8_threshold` > 0,
  input columns holding a value above the threshold are multiplied in float instead.
- 4-bit on a CPU with AVX512-BF16: on the first inference call each layer is repacked into
  a CPU layout and computed by a fused bfloat16 kernel, whatever `bnb_4bit_compute_dtype`
  says; the repacking also undoes double quantization (one bfloat16 scale per 64 weights).
  Without AVX512-BF16 the weights are dequantized to the compute dtype on every call.
- Saving a 4-bit model that has run on the AVX512-BF16 path converts the layers back to the
  standard layout; with double quantization off the block scales stay in the repacked
  layout and the checkpoint reloads wrong (perplexity ~1e9 on SmolLM2): the save-and-reload
  check reports `reload_mismatch`. `build()` runs one short forward before returning, so the
  model is measured and saved in the state it really runs in.

Torch-free at import (the kernel lists methods): torch, transformers and bitsandbytes are
imported inside `build()` / `load_saved()`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ..errors import InvalidParams, ParamError
from ..params import Check, Param, Schema, Values
from .base import Built
from .torch_common import TorchMethod

if TYPE_CHECKING:  # pragma: no cover
    from ..measure.context import BuildContext

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
TIED_MESSAGE = (
    "{names} shares its weight with the input embeddings (tie_word_embeddings): bitsandbytes through "
    "transformers cannot quantize a tied weight (the layer is replaced but keeps the float embedding, and the "
    "first forward fails); add it to llm_int8_skip_modules, or use none for transformers' default"
)


def skip_pattern_matches(name: str, pattern: str) -> bool:
    """transformers 5.23's rule for `llm_int8_skip_modules` (quantizers_utils.should_convert_module):
    a pattern matches a module name from its start up to a module boundary, as a regex with the same
    boundary ("model.layers.1" matches "model.layers.1.mlp", not "model.layers.11"), or as a suffix."""
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    try:
        return bool(re.match(rf"(?:{pattern}){boundary}", name)) or name.endswith(pattern)
    except re.error:
        return name.endswith(pattern)


def device_map_covers(name: str, key: str) -> bool:
    """Whether a device-map key places module `name` (the key is the module or one of its parents)."""
    return key == "" or name == key or name.startswith(key + ".")


def _check_offload_modules(values: Mapping[str, Any]) -> str | None:
    if values.get("llm_int8_enable_fp32_cpu_offload") and not values.get("cpu_offload_modules"):
        return ("is empty; name the modules the device map places on the CPU (kept in float32), "
                "e.g. lm_head or model.layers.29")
    return None


def _check_regex(values: Mapping[str, Any]) -> str | None:
    bad = []
    for p in values.get("llm_int8_skip_modules") or []:
        try:
            re.compile(p)
        except re.error as e:
            bad.append(f"{p!r} ({e})")
    if bad:
        return ("not a valid pattern: " + ", ".join(bad) + "; patterns are module names or regular expressions "
                "matched from the start of the name, e.g. lm_head, model.layers.0, .*down_proj")
    return None


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


class BitsAndBytes(TorchMethod):
    """bitsandbytes LLM.int8 and 4-bit NF4/FP4 through transformers."""

    name = "bnb"
    model_errors_need_layers = True
    backend = "bitsandbytes"
    description = (
        "bitsandbytes through transformers' BitsAndBytesConfig: LLM.int8 (int8 weights, outlier "
        "columns in float) or 4-bit NF4/FP4 with block scales (optionally double-quantized)."
    )
    requires = ("torch", "transformers", "accelerate", "bitsandbytes")
    install_hint = "pip install bitsandbytes==0.50.2 into the torch environment (workbench env create torch)"
    quantizes = True
    schema = Schema(
        (
            Param("bits", "choice", 8, choices=(8, 4),
                  help="8: LLM.int8 (int8 weights with one scale per output row; activations quantized per "
                       "row at run time, outlier columns kept in float). 4: NF4/FP4 codes with one scale per "
                       "block of 64 weights."),
            Param("llm_int8_threshold", "float", 6.0, minimum=0.0, visible_when={"bits": 8},
                  help="Outlier threshold: input columns holding a value whose magnitude exceeds it are "
                       "multiplied in float, the rest in int8. 0 disables the decomposition (everything "
                       "int8); lower values send more columns to the float path."),
            Param("llm_int8_skip_modules", "list", None, nullable=True,
                  help="Modules left in float. none: transformers' default, the output embedding (lm_head) "
                       "and weights tied to it. A list replaces that default (add lm_head to keep it float). "
                       "Each pattern matches a module name from its start up to a dot, as a regular "
                       "expression, or as a suffix (e.g. lm_head, model.layers.0, down_proj)."),
            Param("llm_int8_enable_fp32_cpu_offload", "bool", False,
                  help="CUDA only: a device map places cpu_offload_modules on the CPU in float32 and the rest "
                       "of the model on the GPU, quantized (for a model that does not fit in GPU memory). "
                       "On a CPU-only run every module is on the CPU, so transformers would quantize none."),
            Param("cpu_offload_modules", "list", ["lm_head"],
                  visible_when={"llm_int8_enable_fp32_cpu_offload": True},
                  help="Module names (or parents, e.g. model.layers.29) the device map places on the CPU, "
                       "kept in float32; everything else goes to the GPU."),
            Param("bnb_4bit_quant_type", "choice", "nf4", choices=("nf4", "fp4"), visible_when={"bits": 4},
                  help="nf4: 16 levels at the quantiles of a normal distribution (suits trained weights). "
                       "fp4: a 4-bit float (1 sign, 2 exponent, 1 mantissa bit). transformers' own default "
                       "is fp4."),
            Param("bnb_4bit_compute_dtype", "choice", "float32", choices=COMPUTE_DTYPES, visible_when={"bits": 4},
                  help="dtype the 4-bit weights are dequantized to for the matmul. On CPUs with AVX512-BF16 "
                       "bitsandbytes' fused CPU kernel computes in bfloat16 whatever is chosen here."),
            Param("bnb_4bit_use_double_quant", "bool", True, visible_when={"bits": 4},
                  help="Nested quantization: the float32 block scales (one per 64 weights, 0.5 bit per weight) "
                       "are themselves quantized to 8 bits in blocks of 256 (~0.127 bit per weight). "
                       "transformers' own default is false."),
        ),
        checks=(
            Check(("cpu_offload_modules",), _check_offload_modules),
            Check(("llm_int8_skip_modules",), _check_regex),
        ),
    )

    # --- kernel side (no torch) -------------------------------------------
    def unavailable_reason(self, params: Mapping[str, Any], device: str) -> str | None:
        if params.get("llm_int8_enable_fp32_cpu_offload") and not str(device).startswith("cuda"):
            return (
                "llm_int8_enable_fp32_cpu_offload=true needs device cuda: it keeps the modules a device map "
                "places on the CPU in float32 while the rest runs quantized on the GPU. On a cpu run the "
                "whole model is mapped to the CPU and transformers would leave every layer unquantized; "
                "allowed on cpu: false"
            )
        return None

    def model_errors(self, p: Values, layers: Mapping[str, tuple[int, int]], model: Any) -> list[ParamError]:
        errors = self._pattern_errors(list(layers), p)
        config = getattr(model, "config", None) or {}
        skip = p.get("llm_int8_skip_modules")
        if (skip is not None and "lm_head" in layers and config.get("tie_word_embeddings", True)
                and not any(skip_pattern_matches("lm_head", pat) for pat in skip)):
            errors.append(ParamError("llm_int8_skip_modules", TIED_MESSAGE.format(names="lm_head")))
        return errors

    @staticmethod
    def _pattern_errors(names: list[str], p: Mapping[str, Any]) -> list[ParamError]:
        errors = []
        dead = [pat for pat in (p.get("llm_int8_skip_modules") or [])
                if not any(skip_pattern_matches(n, pat) for n in names)]
        if dead:
            errors.append(ParamError(
                "llm_int8_skip_modules",
                f"{', '.join(map(repr, dead))} match{'es' if len(dead) == 1 else ''} none of the {len(names)} "
                f"linear layers; a pattern matches a full module name from its start up to a dot, as a regular "
                f"expression, or as a suffix (e.g. lm_head, model.layers.0, down_proj). Layers: {_few(names, 4)}",
            ))
        if p.get("llm_int8_enable_fp32_cpu_offload"):
            dead = [k for k in p.get("cpu_offload_modules") or [] if not any(device_map_covers(n, k) for n in names)]
            if dead:
                errors.append(ParamError(
                    "cpu_offload_modules",
                    f"{', '.join(map(repr, dead))} is not a module holding linear layers; give full module names "
                    f"or their parents (e.g. lm_head, model.layers.29). Layers: {_few(names, 4)}",
                ))
            # transformers 5.23 places parameters by plain prefix (expand_device_map), accelerate by module.
            loose = [k for k in p.get("cpu_offload_modules") or []
                     if any(n.startswith(k) and not device_map_covers(n, k) for n in names)]
            if loose:
                errors.append(ParamError(
                    "cpu_offload_modules",
                    f"{', '.join(map(repr, loose))} is also the start of other module names (e.g. model.layers.1 "
                    "and model.layers.10): transformers would place those on the CPU too; list the modules "
                    "inside it instead (e.g. model.layers.1.mlp)",
                ))
        return errors

    @staticmethod
    def config_kwargs(p: Mapping[str, Any]) -> dict[str, Any]:
        """BitsAndBytesConfig arguments for normalized params (dtypes as names)."""
        kw: dict[str, Any] = {}
        if p["bits"] == 8:
            kw["load_in_8bit"] = True
            kw["llm_int8_threshold"] = float(p["llm_int8_threshold"])
        else:
            kw["load_in_4bit"] = True
            kw["bnb_4bit_quant_type"] = p["bnb_4bit_quant_type"]
            kw["bnb_4bit_compute_dtype"] = p["bnb_4bit_compute_dtype"]
            kw["bnb_4bit_use_double_quant"] = bool(p["bnb_4bit_use_double_quant"])
        if p.get("llm_int8_skip_modules") is not None:
            kw["llm_int8_skip_modules"] = list(p["llm_int8_skip_modules"])
        if p.get("llm_int8_enable_fp32_cpu_offload"):
            kw["llm_int8_enable_fp32_cpu_offload"] = True
        return kw

    @staticmethod
    def device_map(p: Mapping[str, Any], device: str) -> dict[str, Any]:
        dmap: dict[str, Any] = {"": device}
        if p.get("llm_int8_enable_fp32_cpu_offload"):
            dmap.update({name: "cpu" for name in p["cpu_offload_modules"]})
        return dmap

    # --- worker side -------------------------------------------------------
    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Built:
        import torch
        from transformers import BitsAndBytesConfig

        p = self.values(params)
        device = str(ctx.device)
        self._check_device(p, device)
        kw = self.config_kwargs(p)
        if "bnb_4bit_compute_dtype" in kw:
            kw["bnb_4bit_compute_dtype"] = getattr(torch, kw["bnb_4bit_compute_dtype"])
        config = BitsAndBytesConfig(**kw)
        ctx.progress("quantize", None, f"loading with bitsandbytes {p['bits']}-bit")
        model = ctx.load_model("float32", quantization_config=config, device_map=self.device_map(p, device))

        tied = _tied_bnb_layers(model)
        if tied:
            raise InvalidParams([ParamError("llm_int8_skip_modules", TIED_MESSAGE.format(names=", ".join(tied)))],
                                "bnb")
        quantized, eligible, skipped = _count_layers(model)
        if not quantized:
            raise InvalidParams([ParamError(
                "llm_int8_skip_modules",
                f"no linear layer was quantized (skipped: {_few(skipped, 5)}); "
                "patterns that match every layer leave nothing to quantize",
            )], "bnb")
        notes = self._skip_notes(p, model, skipped)
        _warm_up(model, ctx)  # the state the model runs in: bitsandbytes repacks 4-bit layers on the first call
        kernel, path_notes = _kernel(model, p, device)
        notes += path_notes
        return Built(
            model=model,
            layers_quantized=quantized,
            layers_eligible=eligible,
            kernel=kernel,
            # bitsandbytes keeps the 8-bit row scales (SCB) in a MatmulLtState and the 4-bit block scales
            # (absmax, nested absmax, code) in a QuantState: plain Python objects that
            # measure.memory.module_weight_bytes does not open, so they are added here.
            weights_bytes=held_weight_bytes(model),
            weights_bytes_claimed=int(model.get_memory_footprint()),
            save=lambda path: save_model(model, Path(path)),
            notes=notes,
        )

    def load_saved(self, ctx: BuildContext, params: Mapping[str, Any], path: Path) -> Any:
        # transformers reads the quantization config back from the saved config.json.
        p = self.values(params)
        return ctx.load_model("float32", path=path, device_map=self.device_map(p, str(ctx.device)))

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ..models.snippet import loadable

        p = self.values(params)
        m = loadable(model_id, self.env)
        auto = m.auto("AutoModelForCausalLM", "AutoModel")
        kw = self.config_kwargs(p)
        args = []
        for k, v in kw.items():
            args.append(f"    {k}=torch.{v}," if k == "bnb_4bit_compute_dtype" else f"    {k}={v!r},")
        dmap = self.device_map(p, "cuda:0" if p.get("llm_int8_enable_fp32_cpu_offload") else "cpu")
        return (
            "import torch\n"
            f"from transformers import {auto}, AutoTokenizer, BitsAndBytesConfig{m.hint('AutoModel')}\n\n"
            + m.line()
            + "config = BitsAndBytesConfig(\n" + "\n".join(args) + "\n)\n"
            f"device_map = {dmap!r}  # {{'': 'cuda:0'}} on a GPU\n"
            f"model = {auto}.from_pretrained(\n"
            "    model_id, dtype=torch.float32, quantization_config=config, device_map=device_map,\n"
            ").eval()\n"
            "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
            f"# save: model.save_pretrained(path); reload: {auto}.from_pretrained(path, device_map=...)\n"
        )

    # --- helpers -----------------------------------------------------------
    @staticmethod
    def _check_device(p: Mapping[str, Any], device: str) -> None:
        import torch

        if p["bits"] == 4 and p["bnb_4bit_compute_dtype"] == "bfloat16" and device.startswith("cuda"):
            if not torch.cuda.is_bf16_supported(including_emulation=False):
                raise InvalidParams([ParamError(
                    "bnb_4bit_compute_dtype",
                    f"bfloat16 is not supported natively by {torch.cuda.get_device_name()}; "
                    "allowed on this GPU: float32, float16",
                )], "bnb")

    @staticmethod
    def _skip_notes(p: Mapping[str, Any], model: Any, skipped: list[str]) -> list[str]:
        if not skipped:
            return ["every linear layer is quantized (llm_int8_skip_modules matched none)"]
        if p.get("llm_int8_skip_modules") is None:
            why = "transformers' default for llm_int8_skip_modules: the output embedding and weights tied to it"
        else:
            why = f"llm_int8_skip_modules={list(p['llm_int8_skip_modules'])}"
        notes = [f"left in float32 ({why}): {_few(skipped, 5)}"]
        if p.get("llm_int8_enable_fp32_cpu_offload"):
            notes.append(f"placed on the CPU in float32 by the device map: {', '.join(p['cpu_offload_modules'])}")
        return notes


# --------------------------------------------------------------------------- worker helpers


def _count_layers(model: Any) -> tuple[int, int, list[str]]:
    """(quantized, eligible, names left in float): counted on the loaded model.

    bitsandbytes' Linear8bitLt / Linear4bit subclass nn.Linear, so the linear layers of the
    model as loaded are exactly those of the unquantized architecture (plus GPT-2 style
    Conv1D layers, which transformers converts too).
    """
    import bitsandbytes as bnb
    import torch
    from transformers.pytorch_utils import Conv1D

    quantized, skipped = 0, []
    for name, m in model.named_modules():
        if isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)):
            quantized += 1
        elif isinstance(m, (torch.nn.Linear, Conv1D)):
            skipped.append(name)
    return quantized, quantized + len(skipped), skipped


def _tied_bnb_layers(model: Any) -> list[str]:
    """bitsandbytes layers whose weight was never quantized (a weight tied to the embeddings)."""
    import bitsandbytes as bnb

    out = []
    for name, m in model.named_modules():
        if isinstance(m, bnb.nn.Linear8bitLt) and not isinstance(m.weight, bnb.nn.Int8Params):
            out.append(name)
        elif isinstance(m, bnb.nn.Linear4bit) and not isinstance(m.weight, bnb.nn.Params4bit):
            out.append(name)
    return out


def _warm_up(model: Any, ctx: BuildContext) -> None:
    """One short forward, so the model is measured, saved and timed as it runs."""
    import torch

    ctx.progress("quantize", None, "first forward (bitsandbytes prepares its CPU layout)")
    device = next(p.device for p in model.parameters() if p.device.type != "meta")
    vocab = int(getattr(model.config, "vocab_size", 0) or 8)
    ids = torch.arange(1, 5, device=device).remainder(vocab)[None]
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))


def _kernel(model: Any, p: Mapping[str, Any], device: str) -> tuple[str, list[str]]:
    """The runtime path that actually ran, read from the model after the first forward."""
    import bitsandbytes as bnb

    notes: list[str] = []
    on_cpu = not device.startswith("cuda")
    if p["bits"] == 8:
        thr = float(p["llm_int8_threshold"])
        outliers = f"input columns with |x| > {thr:g} in float" if thr > 0 else "no outlier decomposition (threshold 0)"
        if on_cpu:
            try:
                from bitsandbytes.backends.cpu import ops as cpu_ops

                mm = "torch._int_mm" if getattr(cpu_ops, "_has_avx512", False) else "bitsandbytes' reference int8 matmul"
            except ImportError:  # pragma: no cover - layout of bitsandbytes changed
                mm = "int8 matmul"
            return (f"bitsandbytes LLM.int8 on CPU: activations cast to float16 and quantized per row, "
                    f"{mm}, {outliers}"), notes
        return f"bitsandbytes LLM.int8 CUDA: int8 matmul, {outliers}", notes

    qtype, cdtype, dq = p["bnb_4bit_quant_type"], p["bnb_4bit_compute_dtype"], p["bnb_4bit_use_double_quant"]
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    packed = sum(bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False)) for m in layers)
    if not on_cpu:
        return f"bitsandbytes 4-bit {qtype} CUDA kernels (compute {cdtype})", notes
    if packed:
        notes.append(
            f"bitsandbytes' AVX512-BF16 CPU path: {packed} of {len(layers)} 4-bit layers repacked on the first "
            f"forward; activations and matmul in bfloat16 (bnb_4bit_compute_dtype={cdtype} has no effect on "
            "that kernel)"
        )
        if dq:
            notes.append(
                "double quantization is undone by that repacking: the block scales are held as one bfloat16 per "
                "64 weights (0.25 bit per weight instead of ~0.127); saving re-quantizes them"
            )
        else:
            notes.append(
                "with bnb_4bit_use_double_quant=false, bitsandbytes 0.50.2 saves layers repacked for the "
                "AVX512-BF16 path with their block scales left in the repacked (transposed) layout: "
                "the checkpoint reloads with wrong scales (the save-and-reload check compares)"
            )
        return (f"bitsandbytes 4-bit {qtype} fused CPU kernel (AVX512-BF16, bfloat16 compute)"), notes
    return f"bitsandbytes 4-bit {qtype} on CPU: dequantized to {cdtype} on every call, then torch matmul", notes


def _quant_state_tensors(qs: Any) -> Iterable[Any]:
    import torch

    if qs is None:
        return
    for value in vars(qs).values():
        if isinstance(value, torch.Tensor):
            yield value
    state2 = vars(qs).get("state2")
    if state2 is not None:
        yield from _quant_state_tensors(state2)


def held_weight_bytes(model: Any) -> int:
    """Bytes of the weights as bitsandbytes holds them: parameters and buffers (the int8 / packed
    4-bit data among them) plus the scales kept outside them: 8-bit row scales (`SCB`) and the
    4-bit `QuantState` tensors (absmax, nested absmax and its code, offset, the 16-value code).
    Tensors sharing storage with a parameter or with each other count once."""
    import bitsandbytes as bnb

    from ..measure import memory

    counted = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    extra = 0
    for m in model.modules():
        tensors: list[Any] = []
        if isinstance(m, bnb.nn.Linear8bitLt):
            tensors = [getattr(m.state, "SCB", None), getattr(m.weight, "SCB", None), getattr(m.state, "CB", None)]
        elif isinstance(m, bnb.nn.Linear4bit):
            tensors = list(_quant_state_tensors(getattr(m.weight, "quant_state", None)))
        for t in tensors:
            if t is None or t.device.type == "meta":
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr in counted:
                continue
            counted.add(ptr)
            extra += memory.tensor_bytes(t)
    return memory.module_weight_bytes(model) + extra


def save_model(model: Any, path: Path) -> None:
    """`save_pretrained`, leaving the in-memory model as it was.

    bitsandbytes converts 4-bit layers repacked for its CPU kernel back to the standard layout
    while saving (re-quantizing double-quantized scales, or leaving plain scales transposed); the
    model in memory is put back in its running state, so the measurements describe the model the
    method built and the reload check compares it with what was written.
    """
    import bitsandbytes as bnb

    kept = []
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            qs = getattr(m.weight, "quant_state", None)
            if qs is not None and getattr(qs, "packing_format_for_cpu", False):
                kept.append((m, m.weight.data, qs, dict(vars(qs))))
    try:
        model.save_pretrained(path)
    finally:
        for m, data, qs, state in kept:
            vars(qs).clear()
            vars(qs).update(state)
            m.weight.data = data
            m.weight.quant_state = qs
            m.quant_state = qs
