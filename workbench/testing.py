"""Helpers for testing the workbench and plug-ins.

`FaultMethod` fails on purpose in every way a native backend can (segfault,
SIGKILL, a hang, running out of memory, an exception), so the executors' and
the session's handling of failures is tested against real process deaths.
It is not registered as an entry point: tests call `registry.register(FaultMethod)`.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Any, Mapping

from .methods.base import Built, Method
from .params import Param, Schema


class FaultMethod(Method):
    """A method whose build fails on purpose (or succeeds with `mode=none` on a model it never loads)."""

    name = "fault"
    backend = "testing"
    env = "kernel"
    description = "Fails on purpose: segfault, kill, hang, oom, raise, exit. For executor tests."
    quantizes = False
    schema = Schema((
        Param("mode", "choice", "raise", choices=("segfault", "kill", "hang", "oom", "raise", "exit")),
        Param("seconds", "float", 60.0, minimum=0.0, maximum=3600.0, visible_when={"mode": "hang"}),
    ))

    def build(self, ctx: Any, params: Mapping[str, Any]) -> Built:
        mode = params["mode"]
        ctx.progress("build", 0.5, f"about to {mode}")
        if mode == "segfault":
            import ctypes

            ctypes.string_at(0)
        elif mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif mode == "hang":
            time.sleep(params["seconds"])
        elif mode == "oom":
            hog = []
            while True:  # grows until the worker's memory limit raises MemoryError
                hog.append(bytearray(64 * 2**20))
        elif mode == "exit":
            os._exit(7)
        raise RuntimeError("fault method: raised on purpose")
