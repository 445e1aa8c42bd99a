"""The worker: one fresh process per run, inside the method's environment.

    python -m workbench.worker REQUEST.json RESULT.json
    python -m workbench.worker --reference REQUEST.json
    python -m workbench.worker --reload REQUEST.json METRICS.json
    python -m workbench.worker --prepare NAME...      (`workbench models --prepare`)

A prepared process (warm starts) is `python -m workbench.prepared --serve ...`: it forks runs that
call this module's `main` with a run's two arguments.

REQUEST.json is {"spec": RunSpec dict, "target": "module:Class"}. The worker is the
process around one run: it reads the request, sets up the process (memory limit,
threads, dying with its parent), loads the method, runs the measurement protocol
(`workbench.measure.protocol`: the same stages for every method) and writes a
`RunResult` to RESULT.json (atomically). Progress and each stage's measurements go
to stderr as lines starting with PROGRESS_PREFIX (`workbench.measure.context`),
which the executor turns into a progress bar and a running result. Failures become
results with a status; only a hard crash (segfault, SIGKILL) leaves no result
file, and the executor reports that, with the measurements reported before it.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from .errors import DataError, InvalidParams, InvalidSpec, MethodUnavailable, ModelNotFound, WorkbenchError
from .measure import protocol
# BuildContext, emit and PROGRESS_PREFIX live in measure/context.py, the protocol's pieces in
# measure/protocol.py; these names stay importable from here (methods, executors, tests).
from .measure.context import PROGRESS_PREFIX, BuildContext, PartialReport, emit, emit_partial  # noqa: F401
from .measure.protocol import compute_reference, ensure_reference_in_subprocess  # noqa: F401
from .measure.protocol import reference_check as _reference_check  # noqa: F401
from .result import RunResult, RunStatus
from .spec import RunSpec

# Packages whose versions every result records (plus the method's own `requires`).
CORE_PACKAGES = ("torch", "transformers", "accelerate", "safetensors", "tokenizers", "numpy")


def _setup_process(spec: RunSpec) -> None:
    if spec.bench.memory_limit_mb:
        limit = spec.bench.memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    threads = spec.bench.threads
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    # Offline by default when the hub cannot be reached is decided by the loader; keep HF quiet.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# The process that armed `_die_with_parent` (a run forked from a prepared process inherits the
# prepared process's value, not its watching thread, and arms its own).
_armed_in: int | None = None
_parent_pidfd: int | None = None


def _die_with_parent(also: "list[int] | tuple[int, ...]" = ()) -> None:
    """Kill this worker's process group when the process that started it dies, or when a process
    behind one of the pidfds `also` dies.

    The executor starts the worker in a session of its own, so a coordinator killed with SIGKILL
    (a sweep interrupted the hard way) would otherwise leave it running, holding memory and
    cores, its result read by nobody. A run forked from a prepared process (`workbench.prepared`)
    has the prepared process as its parent and passes its coordinator's pidfd in `also`: it dies
    with either. Armed once per process.
    """
    import select

    global _armed_in, _parent_pidfd
    if _armed_in == os.getpid():
        return
    if _parent_pidfd is not None:  # inherited from the prepared process this run was forked from
        try:
            os.close(_parent_pidfd)
        except OSError:
            pass
        _parent_pidfd = None
    _armed_in = os.getpid()
    parent = os.getppid()
    fds = list(also)
    try:
        _parent_pidfd = os.pidfd_open(parent)  # readable the moment the parent exits, no polling delay
    except (AttributeError, OSError):  # no pidfds here (Linux < 5.3): getppid below still notices
        pass
    if _parent_pidfd is not None:
        fds.append(_parent_pidfd)

    def watch() -> None:
        while os.getppid() == parent:
            try:
                ready, _, _ = select.select(fds, [], [], 0.5)
            except (OSError, ValueError):
                ready = []
                time.sleep(0.5)
            if ready:
                break
        # The whole group only when it is ours (the executor's new session), never a shell's job.
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _init_torch(spec: RunSpec) -> None:
    import torch

    torch.manual_seed(spec.seed)
    if spec.bench.threads:
        torch.set_num_threads(spec.bench.threads)
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise MethodUnavailable("device: cuda was asked for but this machine has no CUDA device; allowed here: cpu")


def run_spec(spec: RunSpec, target: str, report: Callable[..., None] = emit,
             analysis: str | None = None, partial: PartialReport = emit_partial) -> RunResult:
    """Run one spec in this process and return its result (never raises for run failures).

    `report(stage, fraction, message)` gets progress; `partial(stage, measurements)` gets each
    protocol stage's measurements as soon as they exist (`measure.protocol`), the same ones
    that end up in the result. `analysis="sensitivity"`: instead of building and measuring the
    quantized model, measure each layer quantized alone (`measure.sensitivity`); the result has
    the same envelope."""
    started = time.time()
    t_start = time.perf_counter()
    result = RunResult(key=spec.key, status=RunStatus.OK, spec=spec.to_dict(), started_at=started)
    ctx: BuildContext | None = None
    caught: Counter[str] = Counter()

    def finish(status: RunStatus, error: str | None = None) -> RunResult:
        _collect(record, caught)
        logging.getLogger().removeHandler(log_counter)
        caught.update(log_counter.counts)
        result.status = status
        result.error = error
        result.duration_s = time.perf_counter() - t_start
        for msg, n in caught.items():
            result.warnings.append(f"{msg} (x{n})" if n > 1 else msg)
        if ctx is not None:
            result.warnings.extend(ctx.warnings)
        return result

    log_counter = _LogCounter()
    logging.getLogger().addHandler(log_counter)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            from .models import catalog
            from .registry import load_target

            method_cls = load_target(target)
            method = method_cls()
            model_info = catalog.describe(spec.model)
            if method_cls.env != "kernel":
                _init_torch(spec)
            from .measure import envinfo

            result.versions = envinfo.versions(CORE_PACKAGES + tuple(method_cls.requires))
            result.versions["workbench"] = _workbench_version()
            result.device = envinfo.device_info(spec.device)
            params = method_cls.schema.normalize(spec.params, context=method_cls.name)

            workdir = Path(tempfile.mkdtemp(prefix="wb-run-"))
            try:
                ctx = BuildContext(spec, model_info, workdir, report)
                if analysis == "sensitivity":
                    status, error = _sensitivity_run(method, params, ctx, result)
                elif analysis is not None:
                    raise InvalidSpec(f"analysis: unknown analysis {analysis!r}; allowed: sensitivity")
                else:
                    status, error = protocol.run_protocol(spec, target, method, params, ctx, result, partial)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            report("done", 1.0)
            return finish(status, error)
        except InvalidParams as e:
            return finish(RunStatus.INVALID, str(e))
        except (InvalidSpec, ModelNotFound, DataError) as e:
            return finish(RunStatus.INVALID, str(e))
        except MethodUnavailable as e:
            return finish(RunStatus.UNAVAILABLE, str(e))
        except MemoryError:
            return finish(RunStatus.OOM, "out of memory (MemoryError)\n" + _tb())
        except WorkbenchError as e:
            return finish(RunStatus.CRASHED, str(e))
        except Exception as e:  # noqa: BLE001 - a backend failure is one failed run, stored with its traceback
            status = RunStatus.OOM if _looks_like_oom(e) else RunStatus.CRASHED
            return finish(status, f"{type(e).__name__}: {e}\n{_tb()}")


def _sensitivity_run(method: Any, params: dict, ctx: BuildContext, result: RunResult) -> tuple[RunStatus, None]:
    from .measure import sensitivity

    metrics, rows, notes = sensitivity.analyse(ctx, method, params)
    result.metrics.update(metrics)
    result.metrics["load_s"] = ctx.load_s
    result.tables["layers"] = rows
    result.notes.extend(notes)
    result.layers_eligible = len(rows)
    return RunStatus.OK, None


def reload_main(request_path: Path, out_path: Path) -> int:
    """Child side of the reload check (`measure.protocol.reload_check`): load the saved artifact,
    measure accuracy, write the metrics."""
    from .measure import reference
    from .models import catalog
    from .registry import load_target

    request = json.loads(request_path.read_text())
    spec = RunSpec.from_dict(request["spec"])
    _setup_process(spec)
    _init_torch(spec)
    method_cls = load_target(request["target"])
    method = method_cls()
    params = method_cls.schema.normalize(spec.params, context=method_cls.name)
    ctx = BuildContext(spec, catalog.describe(spec.model), Path(request["saved"]).parent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = method.load_saved(ctx, params, Path(request["saved"]))
        metrics, _ = protocol.measure_accuracy(ctx, model, reference.load_reference(spec.model, spec.data), keep=1)
    write_atomic(out_path, json.dumps(metrics))
    return 0


def _collect(record: list, caught: Counter[str]) -> None:
    """Fold captured Python warnings into counts: each message stored once, never printed thousands of times."""
    for w in record:
        caught[f"{w.category.__name__}: {(str(w.message).splitlines() or [''])[0][:300]}"] += 1
    record.clear()


class _LogCounter(logging.Handler):
    """Counts library log records (WARNING and up) by message, so a backend that logs the same
    line on every call ends up once in the result instead of thousands of times in the output."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            first = (record.getMessage().splitlines() or [""])[0][:300]
        except Exception:  # noqa: BLE001 - a badly formatted log call must not break the run
            first = str(record.msg)[:300]
        self.counts[f"log {record.name}: {first}"] += 1


def _looks_like_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return any(s in text for s in ("out of memory", "cannot allocate memory", "bad_alloc", "defaultcpuallocator"))


def _tb() -> str:
    return "".join(traceback.format_exc().splitlines(keepends=True)[-30:])


def _workbench_version() -> str:
    from . import __version__

    return __version__


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def prepare_main(names: list[str]) -> int:
    """Convert or build catalog models now rather than in their first run (an image build, e.g.
    Binder's postBuild, should pay the SmolLM2 conversion, not the first visitor). One line per
    model on stdout; exit code 1 if any failed."""
    from .models.loader import resolve
    from .spec import ModelSpec

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    failed = 0
    for name in names:
        t0 = time.perf_counter()
        try:
            path = resolve(ModelSpec(name), progress=lambda _f, msg, n=name: print(f"{n}: {msg}", flush=True))
        except WorkbenchError as e:
            print(f"{name}: failed: {e}", flush=True)
            failed += 1
            continue
        print(f"{name}: ready ({time.perf_counter() - t0:.1f} s) {path}", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--prepare":
        return prepare_main(argv[1:])
    if argv and argv[0] == "--reference":
        request = json.loads(Path(argv[1]).read_text())
        spec = RunSpec.from_dict(request["spec"])
        _setup_process(spec)
        _init_torch(spec)
        from .models import catalog

        compute_reference(spec, catalog.describe(spec.model))
        return 0
    if argv and argv[0] == "--reload":
        return reload_main(Path(argv[1]), Path(argv[2]))
    if len(argv) != 2:
        sys.stderr.write(__doc__ or "")
        return 2
    _die_with_parent()
    request = json.loads(Path(argv[0]).read_text())
    spec = RunSpec.from_dict(request["spec"])
    _setup_process(spec)
    result = run_spec(spec, request["target"], analysis=request.get("analysis"))
    write_atomic(Path(argv[1]), result.to_json())
    # Exit code 0: a result was written, whatever its status; the executor reads the status.
    return 0


if __name__ == "__main__":
    sys.exit(main())
