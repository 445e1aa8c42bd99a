"""Helpers for testing the workbench and plug-ins.

`FaultMethod` fails on purpose in every way a native backend can (segfault,
SIGKILL, a hang, running out of memory, an exception), so the executors' and
the session's handling of failures is tested against real process deaths.
`CorruptSavedScales` plants a bug in a saved artifact, for the save-and-reload check.
Neither is registered as an entry point: tests call `registry.register(...)`.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Any, Mapping

from .methods.base import Built, Method
from .methods.rtn import RTN
from .params import Param, Schema


class FaultMethod(Method):
    """A method whose build fails on purpose (or succeeds with `mode=none` on a model it never loads)."""

    name = "fault"
    backend = "testing"
    env = "kernel"
    description = "Fails on purpose: segfault, kill, hang, oom, raise, exit. For executor tests."
    quantizes = False
    schema = Schema((
        Param("mode", "choice", "raise", choices=("segfault", "kill", "hang", "oom", "raise", "exit", "noisy")),
        Param("seconds", "float", 60.0, minimum=0.0, maximum=3600.0, visible_when={"mode": "hang"}),
    ))

    def is_reference(self, params: Mapping[str, Any]) -> bool:
        return True  # it never loads a model, so there is nothing to compare with

    def build(self, ctx: Any, params: Mapping[str, Any]) -> Built:
        mode = params["mode"]
        ctx.progress("build", 0.5, f"about to {mode}")
        if mode == "segfault":
            import ctypes

            ctypes.string_at(0)
        elif mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif mode == "hang":
            # a backend's files, as an export or a checkpoint would leave them
            (ctx.workdir / "export.bin").write_bytes(b"0" * 2**20)
            time.sleep(params["seconds"])
        elif mode == "oom":
            hog = []
            while True:  # grows until the worker's memory limit raises MemoryError
                hog.append(bytearray(64 * 2**20))
        elif mode == "exit":
            os._exit(7)
        elif mode == "noisy":  # a backend that warns and logs on every call, like bitsandbytes' cast warning
            import logging
            import warnings

            for i in range(1000):
                warnings.warn(f"casting on call (step {i % 1})", UserWarning)
                logging.getLogger("noisy.backend").warning("slow path taken for this call")
        raise RuntimeError("fault method: raised on purpose")


class CorruptSavedScales(RTN):
    """`rtn` whose saved checkpoint has every scale doubled: a planted save/reload bug.

    The run itself is correct; only the artifact on disk is wrong, which is exactly
    what the save-and-reload check must catch.
    """

    name = "rtn-corrupt-save"
    description = "rtn with a planted bug in its saved scales (tests the reload check)."

    def build(self, ctx: Any, params: Mapping[str, Any]) -> Built:
        built = super().build(ctx, params)
        save = built.save
        assert save is not None

        def corrupt_save(path: Any) -> None:
            from safetensors.torch import load_file, save_file

            save(path)
            file = path / "model.safetensors"
            tensors = load_file(str(file))
            for key in [k for k in tensors if k.endswith(".scale")]:
                tensors[key] = tensors[key] * 2
            save_file(tensors, str(file), metadata={"format": "pt"})

        built.save = corrupt_save
        return built
