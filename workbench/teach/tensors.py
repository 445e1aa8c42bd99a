"""Real weights and activations for the notebooks, without torch in the kernel.

`weight` and `activations` run `teach.capture` in the torch backend environment (a
subprocess, like every run) and cache what it returns as .npz under
``$WORKBENCH_HOME/tensors``: the first call loads the model (seconds for the embedded
SmolLM2), later calls read the cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np

from .. import paths
from ..envs import manager

ENV = "torch"


def weight(model: str, name: str) -> np.ndarray:
    """The parameter `name` of `model` (e.g. ``model.layers.0.mlp.down_proj.weight``), float32."""
    return _capture("weights", model, [name], {})[name]


def activations(model: str, layers: list[str] | str, samples: int = 8, seq_len: int = 128) -> dict[str, np.ndarray]:
    """The inputs of `layers` (module names) on calibration text: ``{layer: [tokens, features]}``.

    `samples` texts of about `seq_len` tokens from the calibration half of the default text
    (pydoc topics): the data a static quantizer would calibrate on.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    for label, value in (("samples", samples), ("seq_len", seq_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label}: got {value!r}; allowed: a positive integer")
    return _capture("activations", model, names, {"samples": samples, "seq_len": seq_len})


def _capture(what: str, model: str, names: list[str], opts: dict) -> dict[str, np.ndarray]:
    if not names:
        raise ValueError("names: got an empty list; allowed: at least one module or parameter name")
    key = hashlib.sha256(json.dumps([what, model, names, opts], sort_keys=True).encode()).hexdigest()[:16]
    out = paths.subdir("tensors") / f"{what}-{key}.npz"
    if not out.is_file():
        _run(what, model, names, opts, out)
    with np.load(out) as data:
        return {n: data[n] for n in names}


def _run(what: str, model: str, names: list[str], opts: dict, out: Path) -> None:
    from tqdm.auto import tqdm

    python = manager.python_for(ENV)  # EnvironmentUnavailable says how to create it
    tmp = out.with_suffix(f".{os.getpid()}.npz")
    cmd = [python, "-m", "workbench.teach.capture", what, model, str(tmp), *names]
    if opts:
        cmd += ["--samples", str(opts["samples"]), "--seq-len", str(opts["seq_len"])]
    with tqdm(total=1, desc=f"{what} of {model} (torch environment)", leave=False) as bar:
        proc = subprocess.run(cmd, env=manager.worker_env(), capture_output=True, text=True)
        bar.update(1)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"capturing {what} of {model} failed:\n" + "\n".join(tail))
    tmp.replace(out)
