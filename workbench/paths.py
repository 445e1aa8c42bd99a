"""Where the workbench keeps its files.

Everything lives under one home directory, `$WORKBENCH_HOME` (default
`~/.cache/workbench`): backend environments, converted embedded models,
tiny test models and cached baseline outputs. The Makefile points it at
`.workbench/` inside the checkout so a clone is self-contained.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

DEFAULT_STORE = Path("results") / "workbench.sqlite"


def home() -> Path:
    """The workbench home directory (created on first use)."""
    raw = os.environ.get("WORKBENCH_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "workbench")
    path = Path(raw).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def subdir(name: str) -> Path:
    """A named directory under the home (`envs`, `models`, `reference`, ...)."""
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_dir(method: str, key: str) -> Path:
    """Where a run that keeps its quantized checkpoint writes it (never a path taken from a spec)."""
    return subdir("checkpoints") / f"{method}-{key[:16]}"


def store_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The results store: the explicit path, else `$WORKBENCH_STORE`, else results/workbench.sqlite."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("WORKBENCH_STORE")
    return Path(env) if env else DEFAULT_STORE


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) held for the block: one process at a time.

    The lock goes with the process, so a worker that dies does not leave it held.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
