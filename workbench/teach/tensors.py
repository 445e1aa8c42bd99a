"""Real weights and activations for the notebooks, without torch in the kernel.

`weight` and `activations` run `teach.capture` in the torch backend environment (a
subprocess, like every run) and cache what it returns as .npz under
``$WORKBENCH_HOME/tensors``: the first call loads the model (seconds for the embedded
SmolLM2), later calls read the cache. `ort_ranges` runs ONNX Runtime's own calibrators on
the same samples in the onnx environment, for comparing them with `teach.observers`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .. import paths
from ..envs import manager
from ..envs.child import run_module

ENV = "torch"
ORT_CALIBRATIONS = ("minmax", "entropy", "percentile")


def weight(model: str, name: str) -> np.ndarray:
    """The parameter `name` of `model` (e.g. ``model.layers.0.mlp.down_proj.weight``), float32."""
    return _capture("weights", model, [name], {})[name]


def activations(model: str, layers: list[str] | str, samples: int = 8, seq_len: int = 128) -> dict[str, np.ndarray]:
    """The inputs of `layers` (module names) on calibration text: ``{layer: [tokens, features]}``.

    `samples` texts of about `seq_len` tokens from the calibration half of the default text
    (pydoc topics): the data a static quantizer would calibrate on.
    """
    names = _names(layers)
    _check_counts(samples, seq_len)
    return _capture("activations", model, names, {"samples": samples, "seq_len": seq_len})


def ort_ranges(model: str, layers: list[str] | str, calibration: str = "minmax", samples: int = 8,
               seq_len: int = 128) -> dict[str, tuple[float, float]]:
    """ONNX Runtime's calibrator ranges of the inputs of `layers`: ``{layer: (lowest, highest)}``.

    The same samples as `activations(model, layers, samples, seq_len)`, through the model's fp32
    ONNX export and `ort-static`'s calibration loop (`workbench.methods.ort.ranges`, run in the
    onnx environment). Encoders only. With "minmax" these are the extremes `activations` returns.
    """
    names = _names(layers)
    if calibration not in ORT_CALIBRATIONS:
        raise ValueError(f"calibration: got {calibration!r}; allowed: {', '.join(ORT_CALIBRATIONS)}")
    _check_counts(samples, seq_len)
    key = _key(["ort-ranges", model, names, calibration, samples, seq_len])
    out = paths.subdir("tensors") / f"ort-{calibration}-{key}.json"
    if not out.is_file():
        tmp = out.with_suffix(f".{os.getpid()}.json")
        _subprocess("onnx", ["workbench.methods.ort.ranges", model, str(tmp), *names, "--samples", str(samples),
                             "--seq-len", str(seq_len), "--calibration", calibration],
                    tmp, out, f"ORT {calibration} ranges of {model} (onnx environment)")
    return {k: (float(v[0]), float(v[1])) for k, v in json.loads(out.read_text()).items()}


def _names(layers: list[str] | str) -> list[str]:
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ValueError("names: got an empty list; allowed: at least one module or parameter name")
    return names


def _check_counts(samples: int, seq_len: int) -> None:
    for label, value in (("samples", samples), ("seq_len", seq_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label}: got {value!r}; allowed: a positive integer")


def _key(parts: list) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _capture(what: str, model: str, names: list[str], opts: dict) -> dict[str, np.ndarray]:
    names = _names(names)
    out = paths.subdir("tensors") / f"{what}-{_key([what, model, names, opts])}.npz"
    if not out.is_file():
        tmp = out.with_suffix(f".{os.getpid()}.npz")
        args = ["workbench.teach.capture", what, model, str(tmp), *names]
        if opts:
            args += ["--samples", str(opts["samples"]), "--seq-len", str(opts["seq_len"])]
        _subprocess(ENV, args, tmp, out, f"{what} of {model} (torch environment)")
    with np.load(out) as data:
        return {n: data[n] for n in names}


def _subprocess(env: str, module_args: list[str], tmp: Path, out: Path, what: str) -> None:
    """`python -m MODULE ARGS` in a backend environment, which writes `tmp`; moved to `out` on success."""
    from tqdm.auto import tqdm

    python = manager.python_for(env)  # EnvironmentUnavailable says how to create it
    with tqdm(total=1, desc=what, leave=False) as bar:
        proc = run_module(module_args[0], module_args[1:], python=python, env=manager.worker_env(), keep_stdout=True)
        bar.update(1)
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{what} failed:\n" + "\n".join(tail))
    tmp.replace(out)
