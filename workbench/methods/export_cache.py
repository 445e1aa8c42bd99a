"""The fp32 export cache that the OpenVINO and ONNX Runtime methods start from.

A model is exported once per model, library versions and export options, by a child process
(the PyTorch model it traces must not count in the run's peak memory), under a lock so that
parallel workers export it once. An export is complete when its manifest exists: the child
writes the manifest last and renames the folder into place.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .. import paths
from ..envs.child import check_module

if TYPE_CHECKING:  # pragma: no cover - typing only: listing methods stays torch-free
    from ..measure.context import BuildContext


@dataclass
class Exported:
    """A model's cached fp32 export and how it came to be."""

    path: Path
    export_s: float | None  # None: reused from the cache
    notes: list[str] = field(default_factory=list)


E = TypeVar("E", bound=Exported)


@dataclass(frozen=True)
class ExportFormat:
    """How one backend's exports are kept and named in notes and errors."""

    subdir: str  # under $WORKBENCH_HOME
    manifest: str  # the file whose presence marks a complete export
    module: str  # python -m MODULE KIND SOURCE TARGET [ARGS...] exports
    backend: str  # "OpenVINO": in "OpenVINO export of M failed"
    target: str  # "OpenVINO IR": in "exporting M to OpenVINO IR (fp32, once per model)"
    done: str  # "an fp32 IR": in "exported to an fp32 IR in 12.3 s"
    reused: str  # "fp32 IR": in "fp32 IR reused from the cache (folder)"


def export_dir(fmt: ExportFormat, model_id: str, key: dict[str, Any]) -> Path:
    """The folder of the export `key` describes (model, kind, versions, options)."""
    from ..security import cache_name

    return paths.subdir(fmt.subdir) / cache_name(model_id, json.dumps(key, sort_keys=True))


def export_once(ctx: "BuildContext", fmt: ExportFormat, target: Path, result: type[E], args: Sequence[str] = ()) -> E:
    """The export at `target` as a `result`, made now by `python -m fmt.module KIND SOURCE TARGET *args`
    if it is not there yet. Notes say which, followed by the notes the manifest keeps (`"notes"`)."""
    with paths.file_lock(target.with_suffix(".lock")):
        manifest = target / fmt.manifest
        if manifest.exists():
            notes = json.loads(manifest.read_text()).get("notes", [])
            return result(target, None, [f"{fmt.reused} reused from the cache ({target.name})", *notes])
        source = ctx.model_dir()
        ctx.progress("export", None, f"exporting {ctx.spec.model.id} to {fmt.target} (fp32, once per model)")
        t0 = time.perf_counter()
        check_module(f"{fmt.backend} export of {ctx.spec.model.id}", fmt.module,
                     [ctx.model_info.kind, str(source), str(target), *args], expect=manifest, tail=25)
        export_s = time.perf_counter() - t0
        notes = json.loads(manifest.read_text()).get("notes", [])
        return result(target, export_s, [f"exported to {fmt.done} in {export_s:.1f} s, in a child process "
                                         "(cached for later runs)", *notes])
