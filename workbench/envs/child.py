"""Run a module in a child process (`python -m MODULE ARGS`) and say why it failed.

Exports, counts, the fp32 reference, the reload check, the notebooks' tensors and model
preparation all run in a child process, so that what they load never counts in the caller's
peak memory, or because they need another environment's interpreter (`manager.python_for`).
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


def run_module(module: str, args: Sequence[str] = (), *, python: str | None = None,
               env: Mapping[str, str] | None = None, capture: bool = True,
               keep_stdout: bool = False) -> subprocess.CompletedProcess[str]:
    """`python -m module *args` with `python` (default: this interpreter) and `env` (default: this one's).

    `capture`: stderr is kept for `failure`, stdout dropped (`keep_stdout` keeps it too); without
    it both go where this process's go (a command whose output the user reads).
    """
    cmd = [python or sys.executable, "-m", module, *map(str, args)]
    if not capture:
        return subprocess.run(cmd, env=env, text=True)
    stdout = subprocess.PIPE if keep_stdout else subprocess.DEVNULL
    return subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env)


def stderr_tail(proc: subprocess.CompletedProcess[str], lines: int | None = None, chars: int | None = None,
                skip_prefix: str | None = None) -> str:
    """The end of what `proc` wrote on stderr: its last `lines` lines, or last `chars` characters,
    leaving out lines that start with `skip_prefix` (progress lines say nothing about a failure)."""
    kept = [line for line in (proc.stderr or "").splitlines()
            if skip_prefix is None or not line.startswith(skip_prefix)]
    text = "\n".join(kept if lines is None else kept[-lines:])
    return text if chars is None else text[-chars:]


def check_module(what: str, module: str, args: Sequence[str] = (), *, python: str | None = None,
                 env: Mapping[str, str] | None = None, expect: Path | None = None, tail: int = 20) -> None:
    """`run_module`, raising RuntimeError("WHAT failed (exit N):" and the stderr tail) when the
    child fails or did not write `expect`."""
    proc = run_module(module, args, python=python, env=env)
    if proc.returncode != 0 or (expect is not None and not expect.exists()):
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{stderr_tail(proc, tail)}")
