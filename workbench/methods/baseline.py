"""The unquantized model: the reference every other run is compared against."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..params import Param, Schema
from .base import Built, Method

if TYPE_CHECKING:  # pragma: no cover
    from ..measure.context import BuildContext


class Baseline(Method):
    """The model as loaded, in fp32 (the reference), bf16 or fp16. Nothing is quantized."""

    name = "baseline"
    backend = "pytorch"
    env = "torch"
    description = "Unquantized model in PyTorch (fp32 is the reference for KL, top-1 and cosine)."
    devices = ("cpu", "cuda")
    quantizes = False
    schema = Schema((
        Param("dtype", "choice", "float32", choices=("float32", "bfloat16", "float16"),
              help="Weight and compute dtype. float32 is the reference other runs are compared with."),
    ))

    def is_reference(self, params: Mapping[str, Any]) -> bool:
        return params.get("dtype", "float32") == "float32"

    def build(self, ctx: BuildContext, params: Mapping[str, Any]) -> Built:
        model = ctx.load_model(params["dtype"])
        import torch

        eligible = sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear))

        def save(path: Path) -> None:
            model.save_pretrained(path, safe_serialization=True)

        return Built(
            model=model,
            layers_quantized=0,
            layers_eligible=eligible,
            kernel=f"torch {params['dtype']} eager",
            weights_bytes_claimed=int(model.get_memory_footprint()),
            save=save,
        )

    def load_saved(self, ctx: BuildContext, params: Mapping[str, Any], path: Path) -> Any:
        return ctx.load_model(params["dtype"], path=path)

    def code(self, model_id: str, params: Mapping[str, Any]) -> str:
        from ..models.snippet import loadable

        m = loadable(model_id, self.env)
        auto = m.auto("AutoModelForCausalLM", "AutoModel")
        return (
            "import torch\n"
            f"from transformers import {auto}, AutoTokenizer{m.hint('AutoModel')}\n\n"
            + m.line()
            + f"model = {auto}.from_pretrained(model_id, dtype=torch.{params.get('dtype', 'float32')}).eval()\n"
            "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
        )
