"""Where the workbench keeps its files, found the same way from the CLI, a kernel, the app and a worker.

Everything lives under one home directory: backend environments, converted embedded models,
tiny test models, exports and cached baseline outputs. `resolve_home()` picks it, first rule
that applies:

1. `$WORKBENCH_HOME`, when set (it must be a directory the workbench can write);
2. the checkout's `.workbench/`, when this package runs from a source checkout that has one
   (`make setup` creates it): the rule depends on where the package is, not on the current
   directory, so a terminal at the repository root, a kernel started in `notebooks/` and a
   worker all agree without any environment variable;
3. `~/.cache/workbench`.

The results store follows the same idea (`resolve_store()`): `--store`, else `$WORKBENCH_STORE`,
else the checkout's `results/workbench.sqlite` when running from a checkout that has `.workbench/`
or `results/`, else `results/workbench.sqlite` under the home. `workbench info` prints both and
the rule that chose them.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import InvalidSpec

STORE_NAME = Path("results") / "workbench.sqlite"
HOME_DIR = ".workbench"  # in a checkout
PROJECT_NAME = 'name = "workbench"'  # how pyproject.toml names this project


@dataclass(frozen=True)
class Located:
    """A path the workbench uses, and the rule that chose it (for `workbench info`)."""

    path: Path
    rule: str  # "env" | "checkout" | "user-cache" | "explicit" | "home"
    why: str


def checkout() -> Path | None:
    """The source checkout this package runs from (editable install or PYTHONPATH), else None."""
    root = Path(__file__).resolve().parent.parent
    project = root / "pyproject.toml"
    try:
        if project.is_file() and PROJECT_NAME in project.read_text(encoding="utf-8"):
            return root
    except OSError:
        pass
    return None


def user_cache() -> Path:
    return Path(os.path.expanduser("~")) / ".cache" / "workbench"


def resolve_home() -> Located:
    """The workbench home and why (see the module docstring); nothing is created."""
    raw = os.environ.get("WORKBENCH_HOME", "").strip()
    if raw:
        return Located(Path(raw).expanduser().resolve(), "env", "WORKBENCH_HOME is set")
    root = checkout()
    if root is not None and (root / HOME_DIR).is_dir():
        return Located(root / HOME_DIR, "checkout", f"the package runs from the checkout {root}, which has {HOME_DIR}/")
    why = (f"the package runs from the checkout {root}, which has no {HOME_DIR}/ (make setup creates it)"
           if root is not None else "the package is not running from a source checkout")
    return Located(user_cache(), "user-cache", f"WORKBENCH_HOME is not set and {why}")


def home() -> Path:
    """The workbench home directory (created on first use).

    Raises InvalidSpec naming WORKBENCH_HOME when it points at a file or at a directory that
    cannot be created or written.
    """
    where = resolve_home()
    path = where.path
    named = f"WORKBENCH_HOME={os.environ.get('WORKBENCH_HOME')}" if where.rule == "env" else f"the workbench home {path}"
    fix = ("set WORKBENCH_HOME to a directory you can write, or unset it to use the checkout's .workbench "
           "or ~/.cache/workbench") if where.rule == "env" else "set WORKBENCH_HOME to a directory you can write"
    if path.exists() and not path.is_dir():
        raise InvalidSpec(f"{named} is a file, not a directory; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidSpec(f"{named} cannot be created ({e.strerror or e}); {fix}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InvalidSpec(f"{named} is not writable; {fix}")
    return path


def subdir(name: str) -> Path:
    """A named directory under the home (`envs`, `models`, `reference`, ...)."""
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_dir(method: str, key: str) -> Path:
    """Where a run that keeps its quantized checkpoint writes it (never a path taken from a spec)."""
    return subdir("checkpoints") / f"{method}-{key[:16]}"


def resolve_store(explicit: str | os.PathLike[str] | None = None) -> Located:
    """The results store and why (see the module docstring); nothing is created."""
    if explicit:
        return Located(Path(explicit), "explicit", "--store was given")
    env = os.environ.get("WORKBENCH_STORE", "").strip()
    if env:
        return Located(Path(env).expanduser(), "env", "WORKBENCH_STORE is set")
    root = checkout()
    if root is not None and ((root / HOME_DIR).is_dir() or (root / STORE_NAME.parent).is_dir()):
        return Located(root / STORE_NAME, "checkout", f"the package runs from the checkout {root}")
    return Located(resolve_home().path / STORE_NAME, "home", "under the workbench home")


def store_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The results store: `explicit`, else `$WORKBENCH_STORE`, else the checkout's or the home's
    results/workbench.sqlite (`resolve_store`)."""
    return resolve_store(explicit).path


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
