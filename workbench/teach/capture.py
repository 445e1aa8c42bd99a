"""Real weights and activations of a model, saved to .npz for the notebook kernel (torch-side).

Run by `teach.tensors` with the torch environment's interpreter:

    python -m workbench.teach.capture weights MODEL OUT.npz NAME [NAME ...]
    python -m workbench.teach.capture activations MODEL OUT.npz LAYER [LAYER ...] --samples N --seq-len L

Activations are the *inputs* of the named modules (what static quantization of that layer
must cover), recorded on calibration samples from the calibration half of the text (never
the evaluation half), flattened to ``[tokens, features]`` in float32.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np


def _load(model_id: str) -> tuple[Any, Any]:
    from ..models import catalog
    from ..models.loader import load_model, load_tokenizer
    from ..spec import ModelSpec

    spec = ModelSpec(model_id)
    kind = catalog.describe(spec).kind
    return load_model(spec, kind), load_tokenizer(spec)


def weights(model_id: str, names: list[str]) -> dict[str, np.ndarray]:
    """The named parameters (e.g. ``model.layers.0.mlp.down_proj.weight``) as float32 arrays."""
    net, _tok = _load(model_id)
    params = dict(net.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        some = ", ".join(list(params)[:6])
        raise SystemExit(f"names: {', '.join(missing)} not in {model_id}; parameters look like: {some}, ...")
    return {n: params[n].detach().float().numpy() for n in names}


def activations(model_id: str, layers: list[str], samples: int, seq_len: int) -> dict[str, np.ndarray]:
    """Inputs of the named modules on `samples` calibration texts of about `seq_len` tokens."""
    import torch

    from ..data.splits import calibration_samples
    from ..spec import DataSpec

    net, tok = _load(model_id)
    modules = dict(net.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        some = ", ".join(n for n, m in modules.items() if isinstance(m, torch.nn.Linear))
        raise SystemExit(f"layers: {', '.join(missing)} not in {model_id}; linear layers: {some[:400]}...")
    seen: dict[str, list[np.ndarray]] = {n: [] for n in layers}
    hooks = []
    for name in layers:
        def record(_module: Any, args: tuple, name: str = name) -> None:
            x = args[0].detach().float()
            seen[name].append(x.reshape(-1, x.shape[-1]).numpy().copy())
        hooks.append(modules[name].register_forward_pre_hook(record))
    texts = calibration_samples(tok, DataSpec(calib_samples=samples, calib_seq_len=seq_len))
    with torch.inference_mode():
        for text in texts:
            enc = tok(text, return_tensors="pt", truncation=True, max_length=seq_len)
            net(**enc)
    for h in hooks:
        h.remove()
    return {n: np.concatenate(v) for n, v in seen.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workbench.teach.capture")
    p.add_argument("what", choices=("weights", "activations"))
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("names", nargs="+")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    a = p.parse_args(argv)
    if a.what == "weights":
        arrays = weights(a.model, a.names)
    else:
        arrays = activations(a.model, a.names, a.samples, a.seq_len)
    np.savez(a.out, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
