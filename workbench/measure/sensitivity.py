"""Layer sensitivity, worker side: what each linear layer loses when it alone is quantized.

For every layer the method would quantize (its include / exclude), with the method's own
per-layer quantizer (`Method.layer_quantizer`):

- `rel_output_error`: ||X Wq^T - X W^T|| / ||X W^T|| on the layer's real inputs X, captured on
  the calibration split (up to `MAX_ROWS` token rows per layer);
- `weight_error`: ||Wq - W|| / ||W||;
- `perplexity` with only this layer quantized, on the evaluation windows, and `ppl_delta` against
  the fp32 model on the same windows.

The result travels as a `RunResult`: metrics hold the fp32 perplexity, `tables["layers"]` one row
per layer. Run through the subprocess executor (`analysis="sensitivity"`), so a timeout, a
cancel or a crash cost this analysis only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .context import BuildContext

MAX_ROWS = 256


def analyse(ctx: "BuildContext", method: Any, params: dict) -> tuple[dict, list[dict], list[str]]:
    """(metrics, rows, notes) for `method` with normalized `params` on ctx's model."""
    import torch

    from ..data import splits
    from ..methods.calibration import calibration_token_rows
    from ..methods.layers import select_layers
    from . import accuracy

    if ctx.model_info.kind != "causal-lm":
        raise ValueError(f"model: layer sensitivity needs a causal LM (perplexity); {ctx.spec.model.id} is a "
                         f"{ctx.model_info.kind}")
    quantize: Callable[[Any], Any] | None = method.layer_quantizer(params)
    if quantize is None:
        raise ValueError(f"method: {method.name!r} has no per-layer quantizer")
    model = ctx.load_model("float32")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    selected = select_layers(linears, params.get("include", ["*"]), params.get("exclude", []))

    ctx.progress("capture", None, f"inputs of {len(selected)} layers on the calibration split")
    inputs = _capture_inputs(model, {n: linears[n] for n in selected},
                             calibration_token_rows(ctx, {"dataset": ctx.spec.data.source,
                                                          "num_samples": ctx.spec.data.calib_samples,
                                                          "seq_len": ctx.spec.data.calib_seq_len}))
    windows = splits.eval_windows(ctx.tokenizer(), ctx.spec.data)

    def perplexity() -> float:
        metrics, _ = accuracy.causal_lm_eval(model, windows, None, device=ctx.device, keep=1)
        return float(metrics["perplexity"])

    base = perplexity()
    rows = []
    with torch.no_grad():
        for i, name in enumerate(selected):
            ctx.progress("layers", i / len(selected), f"layer {i + 1} of {len(selected)}: {name}")
            layer = linears[name]
            original = layer.weight.data
            quantized = quantize(original.clone()).to(original.dtype)
            x = inputs[name]
            ref = x @ original.T
            rel_out = float((x @ quantized.T - ref).norm() / ref.norm().clamp_min(1e-12))
            layer.weight.data = quantized
            try:
                ppl = perplexity()
            finally:
                layer.weight.data = original
            rows.append({
                "layer": name, "out_features": int(original.shape[0]), "in_features": int(original.shape[1]),
                "params": int(original.numel()),
                "weight_error": float((quantized - original).norm() / original.norm().clamp_min(1e-12)),
                "rel_output_error": rel_out, "perplexity": ppl, "ppl_delta": ppl - base,
            })
    ctx.progress("layers", 1.0, f"{len(selected)} layers")
    notes = [f"{len(selected)} layers, each quantized alone with {method.name}; inputs: up to {MAX_ROWS} token "
             f"rows per layer from {ctx.spec.data.calib_samples} calibration samples; perplexity on "
             f"{windows.shape[0]} windows of {windows.shape[1]} tokens"]
    return {"perplexity": base, "layers": float(len(rows))}, rows, notes


def _capture_inputs(model: Any, layers: dict[str, Any], token_rows: list[list[int]]) -> dict[str, Any]:
    """Up to MAX_ROWS input rows of each layer, spread over the calibration samples."""
    import torch

    per_sample = max(1, MAX_ROWS // max(1, len(token_rows)))
    seen: dict[str, list[Any]] = {n: [] for n in layers}
    generator = torch.Generator().manual_seed(0)

    def hook(name: str) -> Callable[..., None]:
        def record(_module: Any, args: tuple, _output: Any) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            pick = torch.randperm(x.shape[0], generator=generator)[:per_sample]
            seen[name].append(x[pick])
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            for row in token_rows:
                model(torch.tensor([row], device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v)[:MAX_ROWS] for n, v in seen.items()}
