"""Helpers for testing the workbench and plug-ins.

`check_method(MethodClass)` is the method contract: plug-in authors run it in their own tests,
and every built-in method passes it (tests/unit/test_method_contract.py).

`FaultMethod` fails on purpose in every way a native backend can (segfault,
SIGKILL, a hang, running out of memory, an exception), so the executors' and
the session's handling of failures is tested against real process deaths.
`CorruptSavedScales` plants a bug in a saved artifact, for the save-and-reload check.
Neither is registered as an entry point: tests call `registry.register(...)`.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
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
        Param("mode", "choice", "raise",
              choices=("segfault", "kill", "hang", "oom", "grow", "raise", "exit", "noisy")),
        Param("seconds", "float", 60.0, minimum=0.0, maximum=3600.0, visible_when={"mode": "hang"}),
        Param("megabytes", "int", 2048, minimum=1, maximum=65536, visible_when={"mode": "grow"}),
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
        elif mode == "grow":
            # Resident memory that grows steadily (every page written), as a model's activations
            # do, up to `megabytes`: what the executor's memory watch must stop in time.
            hog = []
            for _ in range(params["megabytes"] // 16):
                hog.append(bytearray(b"\1" * (16 * 2**20)))
                time.sleep(0.01)
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


class TorchFaultMethod(FaultMethod):
    """`fault` in the torch environment, whose runs start warm (forked from its prepared process)."""

    name = "fault-torch"
    env = "torch"
    description = "Fails on purpose in the torch environment (warm-start tests)."


class ProcessProbe(Method):
    """Reports the process its run got, as metrics and notes, after one parallel torch op:
    a run forked from a prepared process must get what a cold worker gets."""

    name = "process-probe"
    backend = "testing"
    env = "torch"
    description = "Reports threads, limits, seeds and identity of its worker process (warm-start tests)."
    quantizes = False
    schema = Schema(())

    def is_reference(self, params: Mapping[str, Any]) -> bool:
        return True

    def build(self, ctx: Any, params: Mapping[str, Any]) -> Built:
        import resource
        import tempfile

        import numpy
        import torch

        x = torch.randn(512, 512)
        _ = x @ x  # starts the intra-op pool (OpenMP) with the run's thread count
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        metrics = {
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": int(os.environ.get("OMP_NUM_THREADS") or 0),
            "os_threads": len(os.listdir("/proc/self/task")),
            "rlimit_as_mb": -1 if limit == resource.RLIM_INFINITY else limit // 2**20,
            "pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgrp(), "sid": os.getsid(0),
            "torch_rand": float(torch.rand(1)), "numpy_rand": float(numpy.random.random()),
            # Not hqq or torchao: transformers imports those at every model load, cold or warm.
            "backends_imported": sum(m in sys.modules for m in ("bitsandbytes", "optimum.quanto", "openvino",
                                                                "onnxruntime")),
        }
        notes = [f"TMPDIR={os.environ.get('TMPDIR')}", f"gettempdir={tempfile.gettempdir()}", f"cwd={os.getcwd()}"]
        return Built(model=None, layers_quantized=0, layers_eligible=0, kernel="none", weights_bytes=0,
                     metrics=metrics, notes=notes)


# --- kill tests ---------------------------------------------------------------------------


def stored_rows(store: "os.PathLike[str] | str") -> list[tuple[str, str]]:
    """(key, status) of every run in a store, in order, read while other processes write it;
    [] while it does not exist or its tables are being created."""
    import sqlite3
    from contextlib import closing
    from pathlib import Path

    if not Path(store).exists():
        return []
    for _ in range(50):
        try:
            with closing(sqlite3.connect(store, timeout=30)) as con:
                return con.execute("SELECT key, status FROM runs ORDER BY id").fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []
            time.sleep(0.1)
    raise RuntimeError(f"{store}: locked for 5 s")


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (an exited child nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids: "list[int]", timeout: float = 10.0) -> list[int]:
    """Wait up to `timeout` seconds for every process in `pids` to end; those still alive."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def workers_under(folder: "os.PathLike[str] | str", prepared: bool = True) -> list[int]:
    """Worker processes started with TMPDIR in `folder` (their request files lie there): cold
    workers, prepared processes (warm starts: their pool folder lies there) and the runs forked
    from those, which share their prepared process's command line. `prepared=False` leaves the
    prepared processes out: only processes running a run."""
    from pathlib import Path

    found: dict[int, tuple[str, int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ("workbench.worker" in cmd or "workbench.prepared" in cmd) and str(folder) in cmd:
            found[int(proc.name)] = (cmd, ppid)
    if not prepared:  # a prepared process is a --serve process not forked from another one
        return [pid for pid, (cmd, ppid) in found.items() if "--serve" not in cmd or ppid in found]
    return list(found)


# --- the method contract ----------------------------------------------------------------

# Backend libraries a method module must not import at import time: the kernel (notebook, CLI)
# imports every registered method to list and validate them, and has none of these installed.
BACKEND_MODULES = ("torch", "transformers", "optimum", "openvino", "nncf", "onnxruntime", "onnx", "bitsandbytes",
                   "torchao", "hqq", "gptqmodel", "awq", "llmcompressor", "compressed_tensors", "aqlm", "gguf",
                   "safetensors", "diffusers", "accelerate")
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# The catalog's tiny random-weight model of each kind (no download, seconds to build).
TINY_MODELS = {"causal-lm": "tiny-llama", "encoder": "tiny-bert", "text-to-image": "tiny-sd",
               "speech-to-text": "tiny-whisper", "image-text-to-text": "tiny-vlm"}


class MethodContractError(AssertionError):
    """A method breaks the contract; the message lists every rule it breaks."""


@dataclass
class ContractReport:
    """What `check_method` checked: the rules that held and the ones that did not."""

    method: str
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def ok(self, rule: str) -> None:
        self.passed.append(rule)

    def fail(self, rule: str) -> None:
        self.failed.append(rule)


def bad_values(p: Param) -> list[Any]:
    """Values `p` must refuse: wrong types, out of range, not a choice, empty when not nullable."""
    out: list[Any] = [] if p.nullable else [None]
    if p.kind == "bool":
        out += ["maybe", 2]
    elif p.kind in ("int", "float"):
        out += ["abc"] + ([1.5] if p.kind == "int" else [float("nan")])
        if p.minimum is not None and math.isfinite(p.minimum):
            out.append(p.minimum - 1)
        if p.maximum is not None and math.isfinite(p.maximum):
            out.append(p.maximum + 1)
        if p.choices:
            out.append(max(c for c in p.choices if c is not None) + 1)
    elif p.kind == "choice":
        out += ["no-such-choice"]
    elif p.kind == "list":
        out += [42, [1, 2]]
    elif p.kind == "str":
        out += [42]
    return out


def _visible_context(schema: Schema, p: Param, base: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with the parameters `p.visible_when` depends on set so that `p` applies."""
    values = dict(base)
    pending = [p]
    for _ in range(len(schema.params)):
        if not pending:
            break
        q = pending.pop()
        for other, want in (q.visible_when or {}).items():
            wants = want if isinstance(want, (tuple, list, set, frozenset)) else (want,)
            values[other] = next(iter(wants))
            pending.append(schema.get(other))
    return values


def _imports_in_a_fresh_interpreter(module: str) -> list[str]:
    """The backend modules that importing `module` pulls in (a fresh interpreter: nothing cached)."""
    code = ("import importlib, json, sys; importlib.import_module(%r); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in %r)))") % (module, BACKEND_MODULES)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def check_method(cls: type, *, model: str | None = None, params: Mapping[str, Any] | None = None,
                 session: Any = None, imports: bool = True) -> ContractReport:
    """Check a method class against the contract every workbench method keeps; raise
    `MethodContractError` naming every broken rule, or return what was checked.

    Always (no worker, no backend needed): it is a `Method` with a name (lowercase, unique in the
    registry) and a backend; importing its module imports no backend library (`imports=False`
    skips this for a class defined where it cannot be imported alone); every default passes
    validation (parameters in `required` must be named instead); every invalid value of every
    parameter is refused with the parameter named and what is allowed; its code template renders
    and compiles; its form renders (when ipywidgets is installed).
    With `model` (a tiny model, e.g. "tiny-llama"): `build` runs in a worker, through the session,
    with `params` (default: the defaults), and quantizes at least one layer of the eligible ones.
    """
    from . import registry
    from .params import Schema as _Schema

    report = ContractReport(getattr(cls, "name", repr(cls)))
    try:
        registry._validate(cls, repr(cls))
    except TypeError as e:
        raise MethodContractError(f"{cls!r}: {e}") from None
    name = cls.name
    if NAME.match(name):
        report.ok("name is lowercase letters, digits, '.', '_' or '-'")
    else:
        report.fail(f"name {name!r} must match {NAME.pattern}")
    mine = f"{cls.__module__}:{cls.__qualname__}"
    other = registry.methods().get(name)
    if other is not None and other.cls is not cls and other.target != mine:
        report.fail(f"name {name!r} is already taken by {other.target}")
    else:
        report.ok("name is unique in the registry")
    schema = getattr(cls, "schema", None)
    if not isinstance(schema, _Schema):
        report.fail(f"schema must be a workbench.params.Schema, got {type(schema).__name__}")
        raise MethodContractError(_message(report))
    from .models.catalog import KINDS

    bad_kinds = [k for k in cls.model_kinds if k not in KINDS]
    if not cls.model_kinds or bad_kinds:
        report.fail(f"model_kinds {list(cls.model_kinds)} must be one or more of {', '.join(KINDS)}")
    else:
        report.ok("model_kinds are known kinds")

    if imports and cls.__module__ not in ("__main__", "builtins"):
        try:
            pulled = _imports_in_a_fresh_interpreter(cls.__module__)
        except Exception as e:  # noqa: BLE001 - a module that cannot import alone is a broken rule too
            report.fail(f"importing {cls.__module__} alone fails: {e}")
        else:
            if pulled:
                report.fail(f"importing {cls.__module__} imports backend modules {', '.join(pulled[:6])}: import "
                            f"them inside build(), which runs in the worker")
            else:
                report.ok(f"importing {cls.__module__} imports no backend library")

    defaults, errors = schema.errors({})
    unnamed = [e for e in errors if e.param not in cls.required]
    if cls.required and not errors:
        # a required parameter may be checked against the model (a checkpoint of its architecture)
        from .models.catalog import describe
        from .spec import ModelSpec

        errors = cls().check_model(defaults, describe(ModelSpec(id=TINY_MODELS[cls.model_kinds[0]])))
    missing = [r for r in cls.required if not any(e.param == r for e in errors)]
    if unnamed:
        report.fail("the defaults do not validate: " + "; ".join(f"{e.param}: {e.message}" for e in unnamed))
    elif missing:
        report.fail(f"required parameters {missing} validate with their defaults (schema and check_model); the "
                    "user must be told to give them")
    else:
        report.ok("every default validates" + (f" (required: {', '.join(cls.required)})" if cls.required else ""))

    refused = 0
    for p in schema.params:
        context = _visible_context(schema, p, {})
        accepted, silent = [], []
        for bad in bad_values(p):
            _, errs = schema.errors({**context, p.name: bad})
            named = [e for e in errs if e.param == p.name]
            if not named:
                accepted.append(bad)
            elif not any("allowed" in e.message or "only applies" in e.message for e in named):
                silent.append(f"{bad!r} ({named[0].message})")
            else:
                refused += 1
        if accepted:
            report.fail(f"{p.name} accepts the invalid value(s) {', '.join(map(repr, accepted))}; allowed: {p.allowed()}")
        if silent:
            report.fail(f"{p.name} refuses {', '.join(silent)} without saying what is allowed")
    report.ok(f"{refused} invalid values refused, each naming its parameter and what is allowed")

    try:
        text = cls().code(model or "MODEL", defaults)
        compile(text, f"<{name} code>", "exec")
        report.ok("the code template renders and compiles")
    except Exception as e:  # noqa: BLE001
        report.fail(f"code() with the defaults fails: {type(e).__name__}: {e}")

    import importlib.util

    if importlib.util.find_spec("ipywidgets") is not None:
        from .ui.form import ParamForm

        try:
            form = ParamForm(schema)
            raw = form.raw_values()
            _, form_errors = schema.errors(raw)
            unnamed = [e for e in form_errors if e.param not in cls.required]
            if unnamed:
                report.fail(f"the form's initial values do not validate: {unnamed[0].param}: {unnamed[0].message}")
            else:
                report.ok("the form renders and its initial values validate")
        except Exception as e:  # noqa: BLE001
            report.fail(f"the form does not render: {type(e).__name__}: {e}")

    if model is not None:
        _check_build(cls, model, params, session, report)
    if report.failed:
        raise MethodContractError(_message(report))
    return report


def _check_build(cls: type, model: str, params: Mapping[str, Any] | None, session: Any,
                 report: ContractReport) -> None:
    from . import registry
    from .session import Session
    from .spec import BenchSpec, DataSpec

    if cls.name not in registry.methods():
        registry.register(cls)
    session = session or Session(progress=False)
    r = session.run(model, cls.name, dict(params or {}), bench=BenchSpec(latency=False, save=False, reload_check=False),
                    data=DataSpec(eval_windows=2, window=64, calib_samples=4, calib_seq_len=64))
    if not r.ok:
        report.fail(f"build on {model} did not succeed: {r.status.value}: {(r.error or '').strip()[-500:]}")
        return
    q, e = r.layers_quantized, r.layers_eligible
    if not cls.quantizes:
        report.ok(f"build on {model} runs (the method quantizes nothing by design)")
    elif q is None or e is None:
        report.fail(f"build on {model} does not report layers quantized / eligible (got {q} / {e})")
    elif not 1 <= q <= e:
        report.fail(f"build on {model} quantized {q} of {e} eligible layers; it must quantize at least one")
    else:
        report.ok(f"build on {model} quantized {q} of {e} eligible layers")


def _message(report: ContractReport) -> str:
    return (f"method {report.method!r} breaks {len(report.failed)} rule(s) of the method contract:\n"
            + "\n".join(f"  - {f}" for f in report.failed))
