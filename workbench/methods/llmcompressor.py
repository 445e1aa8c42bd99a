"""`llmcompressor`: llm-compressor's `oneshot` recipes, saved in the compressed-tensors format.

One method, four recipes (the `modifier` parameter) over the schemes of llm-compressor:
- `rtn`: `QuantizationModifier`, no calibration data (W8A8's activation scales are dynamic, per token);
- `gptq`: `GPTQModifier`, second-order weight updates from the calibration set's Hessians;
- `awq`: `AWQModifier` (activation-aware channel scales) followed by the quantization itself.

The result is saved with `save_pretrained(save_compressed=True)`: int8 weights stay int8
(`int-quantized`), 4-bit weights are packed in int32 (`pack-quantized`). On CPU, transformers
decompresses them to float at the first forward and quantizes W8A8 activations on the fly:
`weights_bytes` is what the checkpoint stores, the run-time memory (peak RSS) that of float
weights, and the speed that of a fake-quantized model. Runs in the `llmcompressor`
environment family (transformers <= 5.17).

Three traps of llm-compressor 0.14 on CPU are handled here (docs/backends.md, measured):
- the W4A16 preset's group size is 128, which does not divide SmolLM2's 576: the scheme is
  built from `group_size` instead (`config_groups`), and a group size that does not divide is
  refused before any worker starts;
- AWQ pins memory unconditionally (`RuntimeError: Cannot access accelerator device`): pinning
  only speeds host-to-GPU copies, so it is skipped without an accelerator;
- AWQ's up_proj -> down_proj smoothing divides by zero when down_proj is ignored: mappings
  whose balance layers are all ignored are dropped (and named in the notes).
"""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import InvalidParams, ParamError
from ..params import Check, Param, Schema, Values
from .base import Built, Method
from .calibration import calibration_params, calibration_token_rows, dataset_check, dataset_required
from .layers import few, group_size_error, select_layers, selection_error

if TYPE_CHECKING:  # pragma: no cover
    from ..measure.context import BuildContext

SCHEMES = ("W8A8", "W4A16", "W8A16", "FP8_DYNAMIC")
MODIFIERS = ("rtn", "gptq", "awq")
ACTORDERS = ("static", "group", "weight", "off")
# Schemes whose weights take `group_size` / `sym` from the parameters (the others are presets).
WEIGHT_ONLY_INT = ("W4A16", "W8A16")
CHECKPOINT_DIR = "checkpoint"


def _check_modifier(v: Mapping[str, Any]) -> str | None:
    if v["modifier"] != "rtn" and v["scheme"] not in WEIGHT_ONLY_INT:
        return (f"modifier={v['modifier']} needs an integer weight-only scheme ({', '.join(WEIGHT_ONLY_INT)}); "
                f"with scheme={v['scheme']} use modifier=rtn")
    return None


def _check_dataset(v: Mapping[str, Any]) -> str | None:
    if v["modifier"] in ("gptq", "awq") and not v.get("dataset", "").strip():
        return dataset_required(f"modifier={v['modifier']}")
    return None


def ignore_regex(pattern: str) -> str:
    """An fnmatch pattern on module names as an llm-compressor `ignore` entry ("re:" + a regex)."""
    return "re:" + fnmatch.translate(pattern)


class LLMCompressor(Method):
    """llm-compressor oneshot (RTN / GPTQ / AWQ) into a compressed-tensors checkpoint."""

    name = "llmcompressor"
    model_errors_need_layers = True
    backend = "llm-compressor"
    env = "llmcompressor"
    description = (
        "llm-compressor oneshot: W8A8 (int8 weights, dynamic per-token int8 activations), W4A16 / W8A16 weight-only "
        "with round-to-nearest, GPTQ or AWQ, FP8; saved as a compressed-tensors checkpoint."
    )
    requires = ("llmcompressor", "compressed-tensors")
    install_hint = "workbench env create llmcompressor"
    model_kinds = ("causal-lm",)
    schema = Schema(
        (
            Param("scheme", "choice", "W4A16", choices=SCHEMES,
                  help="W8A8: int8 weights per channel and int8 activations quantized per token at run time; "
                       "W4A16 / W8A16: weight-only int4 / int8 (group_size, sym); FP8_DYNAMIC: float8 e4m3 "
                       "weights per channel, activations per token."),
            Param("modifier", "choice", "rtn", choices=MODIFIERS,
                  help="rtn: QuantizationModifier, round to nearest, no data; gptq: GPTQModifier (error "
                       "compensation from the calibration set's Hessians); awq: AWQModifier (activation-aware "
                       "channel scaling) then quantization. gptq and awq need an integer weight-only scheme."),
            Param("group_size", "int", 64, minimum=-1, visible_when={"scheme": WEIGHT_ONLY_INT},
                  help="Input columns per weight scale (-1: one per output channel). Must divide every quantized "
                       "layer's input dimension: SmolLM2's 576 takes 32, 64 or 192, not the preset's 128."),
            Param("sym", "bool", True, visible_when={"scheme": WEIGHT_ONLY_INT},
                  help="Symmetric weights (no zero point); false stores a zero point per group (AWQ's usual "
                       "choice)."),
            Param("ignore", "list", ["lm_head"],
                  help="fnmatch patterns of Linear module names left unquantized (e.g. 'lm_head', "
                       "'*.down_proj'); passed to llm-compressor as 're:' regexes."),
            *calibration_params(modifier=("gptq", "awq")),
            Param("dampening_frac", "float", 0.01, minimum=0.0, maximum=1.0, visible_when={"modifier": "gptq"},
                  help="GPTQ: fraction of the Hessian's mean diagonal added to it (damp_percent elsewhere)."),
            Param("actorder", "choice", "static", choices=ACTORDERS, visible_when={"modifier": "gptq"},
                  help="GPTQ: quantize columns in order of decreasing activation (desc_act): static keeps "
                       "groups contiguous (no run-time cost), group / weight reorder more, off keeps the "
                       "original order (desc_act off)."),
            Param("keep_checkpoint", "bool", False,
                  help="Keep the compressed-tensors checkpoint in $WORKBENCH_HOME/checkpoints/llmcompressor-KEY "
                       "(named in the result's notes), for the compressed-tensors method, vLLM or the hub."),
            Param("duo_scaling", "bool", True, visible_when={"modifier": "awq"},
                  help="AWQ: search scales from activations and weights together (else activations only)."),
            Param("n_grid", "int", 20, minimum=1, maximum=100, visible_when={"modifier": "awq"},
                  help="AWQ: grid points of the scale search per mapping."),
        ),
        checks=(Check(("modifier",), _check_modifier), Check(("dataset",), _check_dataset), dataset_check()),
    )

    # --- kernel side (no torch) -------------------------------------------
    def model_errors(self, p: Values, layers: Mapping[str, tuple[int, int]], model: Any) -> list[ParamError]:
        return self._shape_errors(layers, p)

    @staticmethod
    def _shape_errors(layers: Mapping[str, tuple[int, int]], p: Mapping[str, Any]) -> list[ParamError]:
        err = selection_error(layers, ["*"], p["ignore"], exclude_param="ignore")
        if err is not None:
            return [err]
        err = group_size_error(layers, select_layers(layers, ["*"], p["ignore"]), p.get("group_size", -1),
                               remedy="or -1 (one scale per output channel), or leave those layers out with ignore")
        return [err] if err is not None else []

    # --- worker side -------------------------------------------------------
    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Built:
        import torch

        p = params
        os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")  # its loguru lines would flood the log tail
        model = ctx.load_model("float32")
        linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        errors = self._shape_errors({n: (m.out_features, m.in_features) for n, m in linears.items()}, p)
        if errors:
            raise InvalidParams(errors, self.name)
        ignored = [n for n in linears if any(fnmatch.fnmatchcase(n, pat) for pat in p["ignore"])]
        recipe, notes = self._recipe(p, ignored)
        kwargs: dict[str, Any] = {}
        if p["modifier"] in ("gptq", "awq"):
            kwargs = dict(dataset=self._dataset(ctx, p), num_calibration_samples=p["num_samples"],
                          max_seq_length=p["seq_len"])
        from llmcompressor import oneshot

        t0 = time.perf_counter()
        with _layer_progress(ctx), _cpu_safe_awq():
            model = oneshot(model=model, recipe=recipe, **kwargs)
        quantize_s = time.perf_counter() - t0
        quantized = [n for n, m in model.named_modules() if getattr(m, "quantization_scheme", None) is not None]

        ctx.progress("save", None, "writing the compressed-tensors checkpoint")
        checkpoint = ctx.workdir / CHECKPOINT_DIR
        model.save_pretrained(str(checkpoint), save_compressed=True)  # compresses the model in place too
        ctx.tokenizer().save_pretrained(str(checkpoint))
        from .prequantized import checkpoint_weight_bytes, quantization_config

        qc = quantization_config(checkpoint) or {}
        if p["keep_checkpoint"]:
            from ..paths import checkpoint_dir

            kept = checkpoint_dir(self.name, ctx.spec.key)
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(checkpoint, kept)
            notes.append(f"checkpoint kept at {kept}")
        notes.append(f"compressed-tensors format {qc.get('format')!r} ({len(quantized)} layers)"
                     + (f"; left unquantized by ignore={p['ignore']}: {few(ignored, 4)}" if ignored else ""))
        notes.append("CPU run time: transformers decompresses the weights to float32 at the first forward "
                     "(activations of W8A8 / FP8 are quantized on the fly): the speed and peak memory are those "
                     "of a fake-quantized model; weights_bytes is what the checkpoint stores.")
        return Built(
            model=model,
            layers_quantized=len(quantized),
            layers_eligible=len(linears),
            kernel="compressed-tensors, decompressed to float32 on CPU (fake quantization)",
            weights_bytes=checkpoint_weight_bytes(checkpoint),
            save=lambda path: shutil.copytree(checkpoint, path, dirs_exist_ok=True),
            metrics={"quantize_s": quantize_s},
            notes=notes,
        )

    def load_saved(self, ctx: BuildContext, params: Mapping[str, Any], path: Path) -> Any:
        from .prequantized import load_checkpoint

        return load_checkpoint(ctx, Path(path))

    def _recipe(self, p: Mapping[str, Any], ignored: list[str]) -> tuple[list[Any], list[str]]:
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

        ignore = [ignore_regex(pat) for pat in p["ignore"]]
        if p["scheme"] in WEIGHT_ONLY_INT:
            gs = p["group_size"]
            weights = QuantizationArgs(num_bits=4 if p["scheme"] == "W4A16" else 8, type="int", symmetric=p["sym"],
                                       strategy="group" if gs > 0 else "channel", group_size=gs if gs > 0 else None)
            scheme: dict[str, Any] = {"config_groups": {"group_0": QuantizationScheme(targets=["Linear"],
                                                                                     weights=weights)}}
        else:
            scheme = {"targets": ["Linear"], "scheme": p["scheme"]}
        notes: list[str] = []
        if p["modifier"] == "gptq":
            # On the modifier: None really turns the ordering off (unset, it defaults to static).
            actorder = None if p["actorder"] == "off" else p["actorder"]
            return [GPTQModifier(ignore=ignore, dampening_frac=p["dampening_frac"], actorder=actorder, **scheme)], notes
        if p["modifier"] == "awq":
            from llmcompressor.modifiers.transform.awq import AWQModifier

            awq = AWQModifier(duo_scaling=p["duo_scaling"], n_grid=p["n_grid"])
            mappings, dropped = _awq_mappings(ignored)
            if dropped:
                awq = AWQModifier(duo_scaling=p["duo_scaling"], n_grid=p["n_grid"], mappings=mappings)
                notes.append(f"AWQ smoothing skipped where every balanced layer is ignored: {', '.join(dropped)}")
            return [awq, QuantizationModifier(ignore=ignore, **scheme)], notes
        return [QuantizationModifier(ignore=ignore, **scheme)], notes

    @staticmethod
    def _dataset(ctx: BuildContext, p: Mapping[str, Any]) -> Any:
        """The calibration samples, tokenized here (llm-compressor takes a tokenized Dataset as is)."""
        from datasets import Dataset

        rows = calibration_token_rows(ctx, p)
        return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ..models.snippet import calibration_code, loadable, token_rows_code

        p = self.values(params)
        ignore = [ignore_regex(pat) for pat in p["ignore"]]
        lines = [
            "import torch",
            "from datasets import Dataset",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "from llmcompressor import oneshot",
            "from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier",
            "from llmcompressor.modifiers.transform.awq import AWQModifier",
            "from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme",
            "",
            loadable(model_id, self.env).line().rstrip("\n"),
            "model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32)",
            "tokenizer = AutoTokenizer.from_pretrained(model_id)",
        ]
        if p["scheme"] in WEIGHT_ONLY_INT:
            gs = p["group_size"]
            lines.append(
                f"weights = QuantizationArgs(num_bits={4 if p['scheme'] == 'W4A16' else 8}, type='int', "
                f"symmetric={p['sym']}, strategy={'group' if gs > 0 else 'channel'!r}, "
                f"group_size={gs if gs > 0 else None})")
            scheme = "config_groups={'group_0': QuantizationScheme(targets=['Linear'], weights=weights)}"
        else:
            scheme = f"targets=['Linear'], scheme={p['scheme']!r}"
        if p["modifier"] == "gptq":
            actorder = None if p["actorder"] == "off" else p["actorder"]
            lines.append(f"recipe = GPTQModifier({scheme}, ignore={ignore!r}, dampening_frac={p['dampening_frac']}, "
                         f"actorder={actorder!r})")
        elif p["modifier"] == "awq":
            lines.append(f"recipe = [AWQModifier(duo_scaling={p['duo_scaling']}, n_grid={p['n_grid']}), "
                         f"QuantizationModifier({scheme}, ignore={ignore!r})]")
        else:
            lines.append(f"recipe = QuantizationModifier({scheme}, ignore={ignore!r})")
        if p["modifier"] in ("gptq", "awq"):
            lines += [
                calibration_code(p["dataset"], p["num_samples"], p["seq_len"]).rstrip("\n"),
                "# llm-compressor takes a tokenized datasets.Dataset (input_ids / attention_mask) as is",
                token_rows_code(p["seq_len"]).rstrip("\n"),
                "calibration = Dataset.from_dict({'input_ids': rows, 'attention_mask': [[1] * len(r) for r in rows]})",
            ]
            if p["modifier"] == "awq":
                lines += [
                    "if not torch.accelerator.is_available():  # llm-compressor 0.14's AWQ pins its activation "
                    "cache, which fails",
                    "    from llmcompressor.pipelines.cache import IntermediatesCache  # without an accelerator; "
                    "pinning only speeds copies",
                    "    IntermediatesCache.pin_memory = lambda self, *a, **k: None",
                ]
            lines += [
                f"model = oneshot(model=model, recipe=recipe, dataset=calibration, "
                f"num_calibration_samples={p['num_samples']}, max_seq_length={p['seq_len']})",
            ]
        else:
            lines.append("model = oneshot(model=model, recipe=recipe)")
        lines += ["model.save_pretrained('model-compressed', save_compressed=True)",
                  "tokenizer.save_pretrained('model-compressed')",
                  "# reload: AutoModelForCausalLM.from_pretrained('model-compressed')"]
        return "\n".join(lines) + "\n"


def _awq_mappings(ignored: list[str]) -> tuple[list[Any] | None, list[str]]:
    """AWQ's default Llama mappings minus those whose balance layers would all be ignored."""
    from llmcompressor.modifiers.transform.awq import default_mappings

    def ignored_pattern(pattern: str) -> bool:
        rx = pattern[3:] if pattern.startswith("re:") else re.escape(pattern)
        return bool(ignored) and any(re.search(rx, n) for n in ignored)

    kept, dropped = [], []
    for m in default_mappings:
        if all(ignored_pattern(b) for b in m.balance_layers):
            dropped.append(f"{m.smooth_layer} -> {', '.join(m.balance_layers)}")
        else:
            kept.append(m)
    return (kept if dropped else None), dropped


class _layer_progress:
    """Reports llm-compressor's sequential pipeline ("(i/N): Calibrating") as per-layer progress."""

    def __init__(self, ctx: BuildContext):
        self.ctx = ctx
        self.original: Any = None

    def __enter__(self) -> "_layer_progress":
        try:
            import llmcompressor.pipelines.sequential.pipeline as sp
        except ImportError:  # another layout: no per-layer progress, the run itself is unaffected
            return self
        self.module, self.original = sp, sp._get_batches
        ctx, original = self.ctx, self.original

        def get_batches(activations: Any, num_batches: Any, input_names: Any, desc: Any, *a: Any, **k: Any) -> Any:
            m = re.match(r"\((\d+)/(\d+)\): (\w+)", str(desc))
            if m:
                i, n, what = int(m.group(1)), int(m.group(2)), m.group(3).lower()
                if what == "calibrating":
                    ctx.progress("calibrate", (i - 1) / n, f"layer {i} of {n}")
            return original(activations, num_batches, input_names, desc, *a, **k)

        sp._get_batches = get_batches
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.original is not None:
            self.module._get_batches = self.original


class _cpu_safe_awq:
    """AWQ in llm-compressor 0.14 pins its activation cache unconditionally, which raises without an
    accelerator; pinning only speeds host-to-device copies, so it is a no-op there."""

    def __enter__(self) -> "_cpu_safe_awq":
        import torch

        self.original = None
        if torch.accelerator.is_available():
            return self
        from llmcompressor.pipelines.cache import IntermediatesCache

        self.cls, self.original = IntermediatesCache, IntermediatesCache.pin_memory
        IntermediatesCache.pin_memory = lambda self, *a, **k: None  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.original is not None:
            self.cls.pin_memory = self.original
