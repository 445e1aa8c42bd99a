"""`awq`: activation-aware weight quantization, quantized with AutoAWQ, run with a CPU-capable kernel.

AWQ protects the weight channels that meet large activations: it searches, per block, the
per-channel scales s that minimize the block's output error when W*s is quantized and x/s goes
in, optionally clips the weight ranges, then rounds to 4 bits in groups. Runs in the `gptq`
environment family.

The route on CPU (docs/backends.md, measured): AutoAWQ 0.2.9 quantizes on CPU and writes a GEMM (or
GEMV) checkpoint; AutoAWQ itself cannot run it there (`from_quantized` demands
intel-extension-for-pytorch), but transformers' `AwqConfig` loads it with GPTQModel's torch AWQ
kernels, which run on CPU and reproduce AutoAWQ's in-memory model exactly.

Fused modules (`do_fuse`: AutoAWQ's fused attention, norm and MLP for Llama / Mistral) need
CUDA: its fused attention calls flash-attn, the fused norm and MLP call `awq_ext` CUDA kernels.
On CPU they are refused before any worker starts; on a GPU the checkpoint is loaded with
`AutoAWQForCausalLM.from_quantized(fuse_layers=True, max_seq_len=fuse_max_seq_len)`.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import ParamError
from ..params import Check, Param, Schema, Values
from .base import Built, Method
from .calibration import calibration_params, calibration_texts, dataset_check
from .gptq import in_directory, needs_dataset, shape_errors
from .layers import few, select_layers

if TYPE_CHECKING:  # pragma: no cover
    from ..measure.context import BuildContext

CHECKPOINT_DIR = "checkpoint"
FUSABLE = ("llama", "mistral")
# transformers' AwqConfig backends: name -> runs on CPU.
KERNELS = {"torch_fused_awq": True, "torch_awq": True, "gemm": False, "gemv": False, "exllama_v2": False,
           "marlin": False}
CLIP_ROWS = 64  # AutoAWQ's clip search takes output rows in batches of 64 (or 256)


def _check_fuse(v: Mapping[str, Any]) -> str | None:
    if v["do_fuse"] and v["version"] != "gemm":
        return "do_fuse: AutoAWQ's fused modules take GEMM checkpoints; use version=gemm"
    return None


def _check_kernel(v: Mapping[str, Any]) -> str | None:
    if v["kernel"] == "gemv" and v["version"] != "gemv":
        return "kernel=gemv runs GEMV checkpoints: set version=gemv"
    if v["version"] == "gemv" and v["kernel"] != "gemv":
        # measured: GPTQModel raises "Unsupported backend: BACKEND.AWQ_TORCH_FUSED for METHOD.AWQ with FORMAT.GEMV"
        return (f"kernel={v['kernel']} cannot run GEMV checkpoints (only GEMM); version=gemv runs with kernel=gemv, "
                "which needs CUDA")
    if v["kernel"] == "marlin" and v["zero_point"]:
        return "kernel=marlin has no zero points: set zero_point=false"
    return None


class AWQ(Method):
    """AWQ 4-bit with AutoAWQ; CPU runs through transformers' AwqConfig and GPTQModel's torch kernels."""

    name = "awq"
    backend = "autoawq"
    env = "gptq"
    description = ("AWQ 4-bit quantized with AutoAWQ (activation-aware channel scales, clipping); runs on CPU with "
                   "GPTQModel's torch AWQ kernels through transformers; fused modules (do_fuse) on CUDA.")
    requires = ("autoawq", "gptqmodel")
    install_hint = "workbench env create gptq"
    devices = ("cpu", "cuda")
    model_kinds = ("causal-lm",)
    schema = Schema(
        (
            Param("bits", "int", 4, choices=(4,), help="AutoAWQ quantizes to 4 bits (w_bit)."),
            Param("group_size", "int", 64, minimum=8,
                  help="Input columns per scale and zero point (q_group_size); must divide every quantized layer's "
                       "input dimension (SmolLM2: 32, 64 or 192, not 128)."),
            Param("zero_point", "bool", True, help="Asymmetric groups with a zero point (AWQ's usual choice)."),
            Param("version", "choice", "gemm", choices=("gemm", "gemv"),
                  help="Packing layout: gemm (batched prefill, every kernel) or gemv (batch-1 decode kernel: "
                       "kernel=gemv only, CUDA)."),
            Param("clip", "choice", "auto", choices=("auto", "on", "off"),
                  help="Search clipping ranges for the weights after scaling (apply_clip). AutoAWQ's search needs "
                       "every quantized layer's output rows to be a multiple of 64: auto clips when they are "
                       "(SmolLM2) and says so when not (tiny-llama's 32-row k/v projections)."),
            *calibration_params(32, 512),
            Param("kernel", "choice", "torch_fused_awq", choices=tuple(KERNELS),
                  help="transformers' AwqConfig backend that runs the checkpoint (without do_fuse): torch_fused_awq "
                       "or torch_awq on CPU; gemm, gemv, exllama_v2, marlin need CUDA."),
            Param("do_fuse", "bool", False,
                  help="AutoAWQ's fused attention / norm / MLP modules (Llama, Mistral): CUDA only."),
            Param("fuse_max_seq_len", "int", 512, minimum=16, maximum=32768, visible_when={"do_fuse": True},
                  help="Longest sequence (prompt + new tokens) the fused modules' static KV cache holds."),
        ),
        checks=(Check(("do_fuse",), _check_fuse), Check(("kernel",), _check_kernel), Check(("dataset",), needs_dataset),
                dataset_check()),
    )

    def unavailable_reason(self, params: Mapping[str, Any], device: str) -> str | None:
        on_cuda = device.startswith("cuda")
        if params.get("do_fuse") and not on_cuda:
            return ("do_fuse: fused modules need CUDA (AutoAWQ's fused attention calls flash-attn; its fused norm and "
                    "MLP call awq_ext CUDA kernels); on cpu use do_fuse=false")
        if params.get("do_fuse"):
            from ..envs import manager

            if "autoawq-kernels" not in manager.installed(self.env):
                return "do_fuse needs AutoAWQ's CUDA kernels: pip install autoawq-kernels in the gptq environment"
        kernel = params.get("kernel", "torch_fused_awq")
        if not KERNELS.get(kernel, True) and not on_cuda:
            return f"kernel={kernel} runs only on CUDA; allowed on {device}: torch_fused_awq, torch_awq"
        return None

    def model_errors(self, p: Values, layers: Mapping[str, tuple[int, int]], model: Any) -> list[ParamError]:
        out: list[ParamError] = []
        model_type = (getattr(model, "config", None) or {}).get("model_type")
        if p["do_fuse"] and model_type and model_type not in FUSABLE:
            out.append(ParamError("do_fuse", f"fused modules exist for {', '.join(FUSABLE)} models, not "
                                             f"{model_type!r}; use do_fuse=false"))
        if not layers:
            return out
        out += shape_errors(layers, p["group_size"], ["lm_head"], remedy="AWQ needs groups")
        bad = unclippable(layers)
        if p["clip"] == "on" and bad:
            out.append(ParamError("clip", f"AutoAWQ's clip search needs output rows in multiples of {CLIP_ROWS}; "
                                          f"{len(bad)} layers have other counts ({few(bad)}): use clip=auto or off"))
        return out

    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Built:
        import torch
        from awq import AutoAWQForCausalLM

        p = params
        bad = unclippable(ctx.model_info.linear_layers or {})
        clip = p["clip"] == "on" or (p["clip"] == "auto" and not bad)
        texts = calibration_texts(ctx, p["dataset"], p["num_samples"], "num_samples", seq_len=p["seq_len"])
        checkpoint = ctx.workdir / CHECKPOINT_DIR
        t0 = time.perf_counter()
        with in_directory(ctx.workdir / "autoawq"), _layer_progress(ctx), _scale_search_keeps_weights():
            ctx.progress("load", None, "AutoAWQ loads the model")
            model = AutoAWQForCausalLM.from_pretrained(str(ctx.model_dir()), torch_dtype=torch.float32,
                                                       device_map={"": "cpu"})
            quant_config = {"zero_point": p["zero_point"], "q_group_size": p["group_size"], "w_bit": p["bits"],
                            "version": p["version"].upper()}
            model.quantize(ctx.tokenizer(), quant_config=quant_config, calib_data=texts,
                           max_calib_samples=p["num_samples"], max_calib_seq_len=p["seq_len"],
                           apply_clip=clip, n_parallel_calib_samples=8)
            ctx.progress("save", None, "writing the AWQ checkpoint")
            model.save_quantized(str(checkpoint))
            ctx.tokenizer().save_pretrained(str(checkpoint))
        quantize_s = time.perf_counter() - t0
        del model
        loaded = self.load_checkpoint(ctx, p, checkpoint)
        from .prequantized import count_quantized

        quantized, eligible, kinds = count_quantized(loaded)
        how = ("AutoAWQ fused modules, max_seq_len " + str(p["fuse_max_seq_len"])) if p["do_fuse"] else \
            f"transformers AwqConfig backend {p['kernel']}"
        return Built(
            model=loaded,
            layers_quantized=quantized,
            layers_eligible=eligible,
            kernel=f"{how} ({kinds})",
            save=lambda path: shutil.copytree(checkpoint, path, dirs_exist_ok=True),
            metrics={"quantize_s": quantize_s},
            notes=[f"AutoAWQ {p['bits']}-bit g{p['group_size']} {'zero point' if p['zero_point'] else 'symmetric'} "
                   f"{p['version'].upper()}, clip {'on' if clip else 'off'}"
                   + (f" (auto: {len(bad)} layers have output rows not in multiples of {CLIP_ROWS}, e.g. {bad[0]})"
                      if p["clip"] == "auto" and bad else "") + f", {len(texts)} samples of up to "
                   f"{p['seq_len']} tokens from {p['dataset']}",
                   "measured after saving and reloading the checkpoint (AutoAWQ cannot run it on CPU itself)"],
        )

    def load_checkpoint(self, ctx: BuildContext, p: Mapping[str, Any], path: Path) -> Any:
        if p["do_fuse"]:
            from awq import AutoAWQForCausalLM

            return AutoAWQForCausalLM.from_quantized(str(path), fuse_layers=True,
                                                     max_seq_len=p["fuse_max_seq_len"]).model.eval()
        from transformers import AwqConfig

        device = "cuda:0" if ctx.spec.device.startswith("cuda") else "cpu"
        ctx.progress("load", None, f"loading the AWQ checkpoint with backend {p['kernel']}")
        return ctx.load_model("float32", path=path, device_map=device,
                              quantization_config=AwqConfig(bits=p["bits"], backend=p["kernel"]))

    def load_saved(self, ctx: BuildContext, params: Mapping[str, Any], path: Path) -> Any:
        return self.load_checkpoint(ctx, params, Path(path))

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ..models.snippet import calibration_code, loadable, token_rows_code

        p = self.values(params)
        load = (f"model = AutoAWQForCausalLM.from_quantized('model-awq', fuse_layers=True, "
                f"max_seq_len={p.get('fuse_max_seq_len')})  # CUDA\n") if p["do_fuse"] else \
            (f"model = AutoModelForCausalLM.from_pretrained('model-awq', device_map='cpu', "
             f"quantization_config=AwqConfig(bits={p['bits']}, backend={p['kernel']!r}))\n")
        clip = (f"apply_clip = all(m.out_features % {CLIP_ROWS} == 0 for n, m in model.model.named_modules()\n"
                "                 if isinstance(m, torch.nn.Linear) and n != 'lm_head')  # clip=auto: "
                f"AutoAWQ's clip search takes output rows in batches of {CLIP_ROWS}\n"
                if p["clip"] == "auto" else f"apply_clip = {p['clip'] == 'on'}\n")
        return (
            "import torch\n"
            "from awq import AutoAWQForCausalLM\n"
            "from awq.quantize.quantizer import AwqQuantizer\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer, AwqConfig\n\n"
            "# AutoAWQ 0.2.9 on CPU: the scale search snapshots the weights with .cpu(), which is no copy there,\n"
            "# and leaves every searched layer scaled (perplexity in the millions): snapshot copies instead.\n"
            "_search = AwqQuantizer._compute_best_scale\n\n"
            "def _compute_best_scale(self, x, w_mean, x_mean, module2inspect, *args, **kwargs):\n"
            "    state_dict = module2inspect.state_dict\n"
            "    module2inspect.state_dict = lambda *a, **k: {n: t.clone() for n, t in state_dict(*a, **k).items()}\n"
            "    try:\n"
            "        return _search(self, x, w_mean, x_mean, module2inspect, *args, **kwargs)\n"
            "    finally:\n"
            "        del module2inspect.state_dict\n\n"
            "AwqQuantizer._compute_best_scale = _compute_best_scale\n\n"
            + loadable(model_id, self.env).line()
            + calibration_code(p["dataset"], p["num_samples"], p["seq_len"])
            + "model = AutoAWQForCausalLM.from_pretrained(model_id, torch_dtype=torch.float32, "
            "device_map={'': 'cpu'})\n"
            "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
            f"quant_config = {{'zero_point': {p['zero_point']}, 'q_group_size': {p['group_size']}, "
            f"'w_bit': {p['bits']}, 'version': {p['version'].upper()!r}}}\n"
            + clip
            + "# AutoAWQ skips texts longer than max_calib_seq_len tokens: give it token rows cut to that length\n"
            + token_rows_code(p["seq_len"])
            + "model.quantize(tokenizer, quant_config=quant_config, calib_data=rows, "
            f"max_calib_samples={p['num_samples']}, max_calib_seq_len={p['seq_len']}, "
            "apply_clip=apply_clip, n_parallel_calib_samples=8)\n"
            "model.save_quantized('model-awq')\n"
            "tokenizer.save_pretrained('model-awq')\n"
            + load
        )


def unclippable(layers: Mapping[str, tuple[int, int]]) -> list[str]:
    """Layers AutoAWQ quantizes whose output rows its clip search cannot batch."""
    return [n for n in select_layers(layers, ["*"], ["lm_head"]) if int(layers[n][0]) % CLIP_ROWS]


class _scale_search_keeps_weights:
    """AutoAWQ 0.2.9's scale search corrupts the weights on CPU: fixed here.

    `_compute_best_scale` snapshots the block with `{k: v.cpu() for k, v in state_dict()}` and
    then scales the weights in place (`fc.weight.mul_(scales)`) before restoring the snapshot.
    On a GPU `.cpu()` copies; on the CPU it returns the same tensor, so the snapshot takes the
    first grid point's scaling (1 / mean |w|, not 1) and "restoring" it leaves every searched
    layer scaled by it. SmolLM2 went from perplexity 17.5 to 1.9 million with the scales applied
    and nothing quantized (measured). The snapshot is made of copies for the call.
    """

    def __enter__(self) -> "_scale_search_keeps_weights":
        from awq.quantize.quantizer import AwqQuantizer

        self.cls, self.original = AwqQuantizer, AwqQuantizer._compute_best_scale
        original = self.original

        def compute_best_scale(quantizer: Any, x: Any, w_mean: Any, x_mean: Any, module2inspect: Any,
                               *args: Any, **kwargs: Any) -> Any:
            state_dict = module2inspect.state_dict
            module2inspect.state_dict = lambda *a, **k: {n: t.clone() for n, t in state_dict(*a, **k).items()}
            try:
                return original(quantizer, x, w_mean, x_mean, module2inspect, *args, **kwargs)
            finally:
                del module2inspect.state_dict

        AwqQuantizer._compute_best_scale = compute_best_scale
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cls._compute_best_scale = self.original


class _layer_progress:
    """AutoAWQ walks the decoder layers under `tqdm(range(n), desc="AWQ")`: report each step."""

    def __init__(self, ctx: BuildContext):
        self.ctx = ctx
        self.module: Any = None

    def __enter__(self) -> "_layer_progress":
        try:
            import awq.quantize.quantizer as quantizer
        except ImportError:
            return self
        self.module, self.original = quantizer, quantizer.tqdm
        ctx, original = self.ctx, self.original

        def tqdm(iterable: Any, *args: Any, **kwargs: Any) -> Any:
            items = list(iterable)
            what = "quantize" if kwargs.get("desc") == "AWQ" else "pack"
            for i, item in enumerate(original(items, *args, **kwargs)):
                ctx.progress(what, i / max(len(items), 1), f"layer {i + 1} of {len(items)}")
                yield item

        quantizer.tqdm = tqdm
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.module is not None:
            self.module.tqdm = self.original
