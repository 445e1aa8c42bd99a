"""The security rules that are code, in one place (SECURITY.md is the threat model around them).

- Code from a model repository runs only with `ModelSpec.trust_remote_code`, set per run
  (`--trust-remote-code`); weights load from safetensors unless the run allows pickle formats
  (`ModelSpec.use_safetensors=False`, `--allow-pickle-weights`). Either choice is written into
  the run's result as a warning (`spec_warnings`), so a stored number says how it was obtained.
- Paths that the workbench writes are built from its home and a hash (`cache_name`), never taken
  from a spec: a model id or a parameter cannot make it write outside its folders.

Torch-free.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .spec import RunSpec


def spec_warnings(spec: "RunSpec") -> list[str]:
    """The warnings a run carries because the user lowered a safety default for it."""
    out = []
    if spec.model.trust_remote_code:
        out.append(f"security: trust_remote_code was on: Python code from the repository of {spec.model.id!r} "
                   "ran in the worker with your user's rights")
    if not spec.model.use_safetensors:
        out.append(f"security: pickle weights were allowed for {spec.model.id!r}: loading a .bin checkpoint "
                   "unpickles it, which can run code")
    return out


def cache_name(label: str, blob: str, width: int = 40) -> str:
    """A folder name for a cache entry: `label` reduced to letters, digits, '-' and '_' (so no
    separator or '..' survives), then a hash of `blob`."""
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in label)[-width:]
    return f"{slug}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"
