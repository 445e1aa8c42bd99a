"""`gptq`: GPTQ through GPTQModel (the maintained successor of AutoGPTQ), run by its kernels.

GPTQ quantizes a layer's weight columns one at a time and spreads each column's rounding error
over the columns not yet quantized, weighted by the inverse Hessian of the layer's inputs on a
calibration set. The result is saved as a GPTQ checkpoint and loaded back through transformers'
`GPTQConfig` with the chosen kernel, as a user of a hub GPTQ model would. Runs in the `gptq`
environment family.

What GPTQModel 7.7 needs on a small CPU machine (docs/backends.md, measured):
- `GPTQMODEL_CPU_WORKERS=2`: its model loader asks for 2 workers and fails on 2 cores without it;
- no inference on the in-memory model after `quantize()` (garbage logits): save, then reload;
- its default packer JIT-compiles a C++ extension (30 s) and writes `./logs/` into the working
  directory: `pack_impl="original"`, and the quantization runs in the run's own directory;
- CPU kernels: `gptq_torch_aten` for 4-bit (sym and asym), `torch_int8` for 8-bit, `torch` for
  2 and 3 bits (slow). `torch_fused` gives wrong outputs with sym=false and is not offered;
  `auto` compiles an AVX-512 kernel on first use (about 4 minutes).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from ..errors import ParamError
from ..params import Check, Param, Schema, Values
from .base import Built, Method
from .calibration import calibration_params, calibration_token_rows, dataset_check, dataset_required
from .layers import group_size_error, select_layers

if TYPE_CHECKING:  # pragma: no cover
    from ..measure.context import BuildContext

CHECKPOINT_DIR = "checkpoint"
# Kernels a GPTQ checkpoint can run with: name -> (bits it takes, runs on CPU).
KERNELS: dict[str, tuple[tuple[int, ...], bool]] = {
    "default": ((2, 3, 4, 8), True),
    "gptq_torch_aten": ((4,), True),
    "torch_int8": ((8,), True),
    "torch": ((2, 3, 4, 8), True),
    "exllama_v1": ((4,), False),
    "exllama_v2": ((4,), False),
    "marlin": ((4, 8), False),
    "triton": ((2, 4, 8), False),
}
CPU_DEFAULT = {4: "gptq_torch_aten", 8: "torch_int8", 2: "torch", 3: "torch"}


def needs_dataset(v: Mapping[str, Any]) -> str | None:
    return None if v.get("dataset", "").strip() else dataset_required()


def _check_kernel(v: Mapping[str, Any]) -> str | None:
    bits_ok, _ = KERNELS[v["kernel"]]
    if v["bits"] not in bits_ok:
        return f"kernel={v['kernel']} runs {', '.join(map(str, bits_ok))}-bit checkpoints, not bits={v['bits']}"
    if v["kernel"] == "marlin" and not v["sym"]:
        return "kernel=marlin needs sym=true (it has no zero points)"
    return None


@contextlib.contextmanager
def in_directory(path: Path) -> Iterator[None]:
    """Run a block in `path` (libraries that write logs into the working directory), then come back."""
    before = os.getcwd()
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def shape_errors(layers: Mapping[str, tuple[int, int]], group_size: int, exclude: list[str],
                 remedy: str) -> list[ParamError]:
    """A group size that does not divide the input dimension of a layer to quantize."""
    err = group_size_error(layers, select_layers(layers, ["*"], exclude), group_size, remedy=remedy)
    return [err] if err is not None else []


class GPTQ(Method):
    """GPTQ 2/3/4/8-bit through GPTQModel, evaluated through transformers with a GPTQModel kernel."""

    name = "gptq"
    model_errors_need_layers = True
    backend = "gptqmodel"
    env = "gptq"
    description = ("GPTQ through GPTQModel: error-compensating 2/3/4/8-bit weight quantization calibrated on text; "
                   "run with GPTQModel's kernels (CPU: torch / aten; GPU: exllama, marlin, triton).")
    requires = ("gptqmodel",)
    install_hint = "workbench env create gptq"
    devices = ("cpu", "cuda")
    model_kinds = ("causal-lm",)
    schema = Schema(
        (
            Param("bits", "int", 4, choices=(2, 3, 4, 8), help="Bits per weight."),
            Param("group_size", "int", 64, minimum=-1,
                  help="Input columns per scale (-1: one per output channel). Must divide every quantized layer's "
                       "input dimension (SmolLM2's 576: 32, 64 or 192, not 128)."),
            Param("desc_act", "bool", False,
                  help="Quantize columns in order of decreasing Hessian diagonal (activation order): often more "
                       "accurate, and groups are no longer contiguous (a permutation at run time)."),
            Param("sym", "bool", True, help="Symmetric weights (no zero points; marlin needs it)."),
            Param("damp_percent", "float", 0.05, minimum=0.0, maximum=1.0,
                  help="Dampening: this fraction of the Hessian's mean diagonal is added to it before inverting."),
            *calibration_params(),
            Param("kernel", "choice", "default", choices=tuple(KERNELS),
                  help="The kernel the checkpoint runs with (transformers' GPTQConfig backend). default: on CPU "
                       "gptq_torch_aten for 4-bit, torch_int8 for 8-bit, torch for 2/3-bit; on CUDA GPTQModel's "
                       "choice. exllama_v1 / exllama_v2 (the Transformers guide's exllama_config version), marlin and "
                       "triton need CUDA."),
        ),
        checks=(Check(("kernel",), _check_kernel), Check(("dataset",), needs_dataset), dataset_check()),
    )

    def unavailable_reason(self, params: Mapping[str, Any], device: str) -> str | None:
        kernel = params.get("kernel", "default")
        if kernel in KERNELS and not KERNELS[kernel][1] and not device.startswith("cuda"):
            return f"kernel={kernel} runs only on CUDA; allowed on {device}: default, gptq_torch_aten, torch_int8, torch"
        return None

    def model_errors(self, p: Values, layers: Mapping[str, tuple[int, int]], model: Any) -> list[ParamError]:
        return shape_errors(layers, p["group_size"], ["lm_head"], remedy="or -1 (one scale per output channel)")

    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Built:
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # before gptqmodel is imported
        from gptqmodel import GPTQModel, QuantizeConfig

        p = params
        source = ctx.model_dir()
        rows = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in calibration_token_rows(ctx, p)]
        # GPTQModel's act_group_aware (its default reordering within groups) excludes desc_act and needs groups.
        group_aware = not p["desc_act"] and p["group_size"] > 0
        qcfg = QuantizeConfig(bits=p["bits"], group_size=p["group_size"], desc_act=p["desc_act"], sym=p["sym"],
                              damp_percent=p["damp_percent"], act_group_aware=group_aware, pack_impl="original",
                              offload_to_disk=False)
        checkpoint = ctx.workdir / CHECKPOINT_DIR
        t0 = time.perf_counter()
        with in_directory(ctx.workdir / "gptqmodel"):
            ctx.progress("load", None, "GPTQModel loads the model")
            model = GPTQModel.load(str(source), qcfg)
            eligible = _layers_per_block(model)
            _report_layers(model, ctx)
            model.quantize(rows, batch_size=1, tokenizer=ctx.tokenizer())
            ctx.progress("save", None, "writing the GPTQ checkpoint")
            model.save(str(checkpoint))
        quantize_s = time.perf_counter() - t0
        del model
        kernel = self.kernel_for(p, ctx.spec.device)
        loaded = self.load_checkpoint(ctx, p, checkpoint)
        from .prequantized import count_quantized

        quantized, linear_like, kinds = count_quantized(loaded)
        return Built(
            model=loaded,
            layers_quantized=quantized,
            layers_eligible=linear_like,
            kernel=f"GPTQModel {kernel} ({kinds}), bfloat16 compute",
            save=lambda path: shutil.copytree(checkpoint, path, dirs_exist_ok=True),
            metrics={"quantize_s": quantize_s},
            notes=[f"GPTQ {p['bits']}-bit g{p['group_size']} {'sym' if p['sym'] else 'asym'}"
                   f"{' desc_act' if p['desc_act'] else ''}{' act_group_aware' if group_aware else ''}, "
                   f"damp {p['damp_percent']}, {len(rows)} samples of "
                   f"up to {p['seq_len']} tokens from {p['dataset']}; {eligible} decoder layers",
                   "the quantized model is saved and reloaded through transformers' GPTQConfig before measuring "
                   "(GPTQModel's in-memory model after quantize() is not runnable)"],
        )

    @staticmethod
    def kernel_for(p: Mapping[str, Any], device: str) -> str:
        if p["kernel"] != "default":
            return p["kernel"]
        return "auto" if device.startswith("cuda") else CPU_DEFAULT[p["bits"]]

    def load_checkpoint(self, ctx: BuildContext, p: Mapping[str, Any], path: Path) -> Any:
        from transformers import GPTQConfig

        kernel = self.kernel_for(p, ctx.spec.device)
        device = "cuda:0" if ctx.spec.device.startswith("cuda") else "cpu"
        ctx.progress("load", None, f"loading the GPTQ checkpoint with kernel {kernel}")
        return ctx.load_model("bfloat16", path=path, device_map=device,
                              quantization_config=GPTQConfig(bits=p["bits"], backend=kernel))

    def load_saved(self, ctx: BuildContext, params: Mapping[str, Any], path: Path) -> Any:
        return self.load_checkpoint(ctx, params, Path(path))

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ..models.snippet import calibration_code, loadable, token_rows_code

        p = self.values(params)
        group_aware = not p["desc_act"] and p["group_size"] > 0
        return (
            "import os\n"
            "os.environ.setdefault('GPTQMODEL_CPU_WORKERS', '2')  # small CPU machines\n"
            "import torch\n"
            "from gptqmodel import GPTQModel, QuantizeConfig\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer, GPTQConfig\n\n"
            + loadable(model_id, self.env).line()
            + calibration_code(p["dataset"], p["num_samples"], p["seq_len"])
            + "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
            + token_rows_code(p["seq_len"])
            + "calibration = [{'input_ids': ids, 'attention_mask': [1] * len(ids)} for ids in rows]\n"
            "# act_group_aware (GPTQModel's reordering within groups) excludes desc_act and needs groups\n"
            f"qcfg = QuantizeConfig(bits={p['bits']}, group_size={p['group_size']}, desc_act={p['desc_act']}, "
            f"sym={p['sym']}, damp_percent={p['damp_percent']},\n"
            f"                      act_group_aware={group_aware}, pack_impl='original', offload_to_disk=False)\n"
            "model = GPTQModel.load(model_id, qcfg)\n"
            "model.quantize(calibration, batch_size=1, tokenizer=tokenizer)\n"
            "model.save('model-gptq')\n"
            "tokenizer.save_pretrained('model-gptq')\n"
            "model = AutoModelForCausalLM.from_pretrained('model-gptq', device_map='cpu', dtype=torch.bfloat16,\n"
            f"    quantization_config=GPTQConfig(bits={p['bits']}, backend={self.kernel_for(p, 'cpu')!r}))\n"
        )


def _layers_per_block(model: Any) -> int:
    cfg = getattr(getattr(model, "model", None), "config", None)
    return int(getattr(cfg, "num_hidden_layers", 0) or 0)


def _report_layers(model: Any, ctx: BuildContext) -> None:
    """Per-layer progress from GPTQModel's `layer_callback` (called as each decoder layer finishes)."""
    total = _layers_per_block(model) or None
    seen: set[int] = set()

    def on_layer(layer_idx: Any = None, *args: Any, **kwargs: Any) -> None:
        try:
            i = int(layer_idx)
        except (TypeError, ValueError):
            return
        if i in seen:
            return
        seen.add(i)
        ctx.progress("quantize", (i + 1) / total if total else None,
                     f"layer {i + 1} of {total}" if total else f"layer {i + 1}")

    try:
        model.layer_callback = on_layer
    except Exception:  # noqa: BLE001 - progress is a nicety: a GPTQModel without the hook still quantizes
        pass
