"""The default executor: one fresh worker process per run.

The worker runs with the interpreter of the method's environment family, in
its own process group (so a timeout or a cancel kills everything it started),
with a timeout. Its progress lines drive a callback, its measurement lines (one per
protocol stage) another; a missing result file or a non-zero exit becomes a crashed /
timeout / oom / cancelled result with the output tail and the measurements the worker
had reported.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from ..envs import manager as envs
from ..result import RunResult, RunStatus
from ..spec import ModelSpec, RunSpec
from . import memory_budget, warm
from .base import Partial, PartialCollector, Progress
from .warm import WarmProcess

DEFAULT_TIMEOUT_S = 3600.0
TAIL_LINES = 60
_OOM_MARKERS = ("MemoryError", "out of memory", "Cannot allocate memory", "std::bad_alloc")


class SubprocessExecutor:
    """Runs `python -m workbench.worker` in the method's environment.

    `warm=True`: a run of a backend environment on the CPU is forked from that environment's
    prepared process (`workbench.exec.warm`), still a fresh process of its own; without one
    (or with `warm=False`) the worker starts cold.
    """

    def __init__(self, default_timeout_s: float = DEFAULT_TIMEOUT_S, warm: bool = False,
                 budget: "memory_budget.Budget | None | bool" = True):
        """`budget`: the memory limit workers are watched against (`exec.memory_budget`); True
        (the default) reads it from `MEM_LIMIT` / `WORKBENCH_MEMORY_LIMIT_MB` now, None: none."""
        self.default_timeout_s = default_timeout_s
        self.budget = memory_budget.budget() if budget is True else (budget or None)
        # A prepared process holds 0.4-0.7 GB while idle, which a small container cannot spare
        # beside the kernel and a worker: there every run starts cold (memory_budget.WARM_MIN_MB).
        self.warm = warm and (self.budget is None or self.budget.total_bytes >= memory_budget.WARM_MIN_MB * memory_budget.MB)
        self._starting: set[str] = set()  # keys whose worker is being started (a cancel then kills it at once)
        self._procs: dict[str, subprocess.Popen] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    def prepare(self, env: str, model: ModelSpec | None = None) -> str | None:
        """Start `env`'s prepared process now (warmed up with `model`) rather than at its first
        run; its state, or None when runs of `env` start cold here."""
        if not (self.warm and warm.warm_eligible(env, "cpu")):
            return None
        child_env = dict(os.environ)
        # The environment a run gets (run() below), less its TMPDIR: the prepared process is
        # reused only by runs whose environment matches.
        child_env["PYTHONPATH"] = envs.worker_pythonpath()
        child_env["PYTHONUNBUFFERED"] = "1"
        child_env.pop("PYTHONHOME", None)
        return warm.shared_pool().prepare(env, envs.python_for(env), child_env, _model_dict(model))

    def _start(self, python: str, env: str, spec: RunSpec, argv: list[str],
               child_env: dict[str, str]) -> "subprocess.Popen | WarmProcess":
        """The worker process of one run, in a session of its own: forked from the family's
        prepared process when warm starts are on and it can serve, else started cold. Either
        way it has pid, stdout (text), wait(timeout), poll() and returncode."""
        if self.warm and warm.warm_eligible(env, spec.device):
            with self._lock:
                self._starting.add(spec.key)
            try:
                proc = warm.shared_pool().spawn(env, python, argv, child_env, model=_model_dict(spec.model),
                                                abort=lambda: spec.key in self._cancelled)
                if proc is None:
                    proc = self._start_cold(python, argv, child_env)
                with self._lock:
                    cancelled = spec.key in self._cancelled
                if cancelled:
                    _kill_group(proc)
                return proc
            finally:
                with self._lock:
                    self._starting.discard(spec.key)
        return self._start_cold(python, argv, child_env)

    @staticmethod
    def _start_cold(python: str, argv: list[str], child_env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(
            [python, "-m", "workbench.worker", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=child_env,
            start_new_session=True,
        )

    def cancel(self, key: str) -> bool:
        """Kill the worker running spec `key` (and its children). True if one was running."""
        with self._lock:
            proc = self._procs.get(key)
            if proc is None:
                if key in self._starting:  # waiting for a prepared process: killed as soon as it exists
                    self._cancelled.add(key)
                    return True
                return False
            self._cancelled.add(key)
        _kill_group(proc)
        return True

    def run(self, spec: RunSpec, target: str, env: str, progress: Progress | None = None,
            analysis: str | None = None, partial: Partial | None = None) -> RunResult:
        """Run `spec` in a worker; `analysis` names a worker analysis (e.g. "sensitivity") instead of a run.
        `partial` gets each protocol stage's measurements as the worker reports them."""
        python = envs.python_for(env)
        timeout = spec.timeout_s or self.default_timeout_s
        with tempfile.TemporaryDirectory(prefix="wb-exec-") as tmp:
            req, out = Path(tmp) / "request.json", Path(tmp) / "result.json"
            req.write_text(json.dumps({"spec": spec.to_dict(), "target": target, "analysis": analysis}))
            child_env = dict(os.environ)
            # Only the workbench package, not the kernel environment's site-packages.
            child_env["PYTHONPATH"] = envs.worker_pythonpath()
            child_env["PYTHONUNBUFFERED"] = "1"
            child_env.pop("PYTHONHOME", None)
            # A killed worker runs no cleanup: everything it and its backends put
            # in temp files lands here, and goes when this directory goes.
            scratch = Path(tmp) / "scratch"
            scratch.mkdir()
            child_env["TMPDIR"] = str(scratch)
            started = time.time()
            proc = self._start(python, env, spec, [str(req), str(out)], child_env)
            with self._lock:
                self._procs[spec.key] = proc
            tail: deque[str] = deque(maxlen=TAIL_LINES)
            last: dict = {}
            collector = PartialCollector(spec, partial)
            reader = threading.Thread(target=_read, args=(proc, tail, progress, last, collector), daemon=True)
            reader.start()
            timed_out = False
            over: str | None = None  # why the memory watch stopped the worker
            try:
                if self.budget is None:
                    proc.wait(timeout=timeout)
                else:
                    over = _wait_within(proc, timeout, self.budget)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                proc.wait()
            finally:
                # The worker may have left children in its group (e.g. the reference subprocess).
                _kill_group(proc)
                reader.join(timeout=5)
                with self._lock:
                    self._procs.pop(spec.key, None)
                    cancelled = spec.key in self._cancelled
                    self._cancelled.discard(spec.key)
            text_tail = "\n".join(tail)
            duration = time.time() - started
            # A run that ends without a result of its own keeps what the worker had measured.
            if cancelled:
                return collector.keep(_failure(spec, RunStatus.CANCELLED, "cancelled by the user" + _how_far(last),
                                               text_tail, started, duration))
            if over is not None:
                return collector.keep(_failure(spec, RunStatus.OOM, over + _how_far(last), text_tail, started,
                                               duration))
            if timed_out:
                return collector.keep(_failure(
                    spec, RunStatus.TIMEOUT,
                    f"the worker did not finish within {timeout:g} s and was killed" + _how_far(last),
                    text_tail, started, duration))
            if out.exists() and proc.returncode == 0:
                result = RunResult.from_json(out.read_text())
                if not result.ok:
                    result.stderr_tail = text_tail
                return result
            status, error = _classify(proc.returncode, text_tail, getattr(proc, "lost", None), self.budget)
            return collector.keep(_failure(spec, status, error, text_tail, started, duration))


def _read(proc: subprocess.Popen, tail: deque[str], progress: Progress | None, last: dict,
          collector: PartialCollector | None = None) -> None:
    """Turn the worker's output into progress calls (`last` keeps the latest event, for `_how_far`),
    measurements (to `collector`, in the order reported) and the tail of everything else."""
    from ..measure.context import PROGRESS_PREFIX

    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        # A library's progress bar may have left its line unfinished ("\r" redraws, no newline):
        # the event then starts mid-line, after the bar.
        at = line.find(PROGRESS_PREFIX)
        if at >= 0:
            before = line[:at].rstrip("\r").strip()
            if before:
                tail.append(before)
            try:
                ev = json.loads(line[at + len(PROGRESS_PREFIX):])
                if "partial" in ev:
                    if collector is not None:
                        collector.add_event(ev)
                    continue
                last.clear()
                last.update(ev)
                if progress is not None:
                    progress(ev.get("stage", ""), ev.get("fraction"), ev.get("message", ""))
            except Exception:  # noqa: BLE001 - a broken progress line or callback must not kill the run
                pass
            continue
        tail.append(line)


def _how_far(last: dict) -> str:
    """'; it had got to: quantize 40% (model.layers.12)' from the worker's last progress event."""
    if not last.get("stage"):
        return ""
    frac = last.get("fraction")
    where = f"{last['stage']}" + (f" {frac:.0%}" if isinstance(frac, (int, float)) else "")
    return f"; it had got to: {where}" + (f" ({last['message']})" if last.get("message") else "")


def _wait_within(proc: "subprocess.Popen | WarmProcess", timeout: float | None,
                 budget: memory_budget.Budget) -> str | None:
    """Wait for the worker like `proc.wait(timeout)` (TimeoutExpired past it), looking at its
    process group's resident memory every POLL_S: over the worker's share of the budget, it is
    killed; the reason, or None when it ended by itself."""
    limit = budget.worker_bytes(exclude=proc.pid)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait = memory_budget.POLL_S if deadline is None else min(memory_budget.POLL_S, deadline - time.monotonic())
        try:
            proc.wait(timeout=max(wait, 0.0))
            return None
        except subprocess.TimeoutExpired:
            if deadline is not None and time.monotonic() >= deadline:
                raise
        used = memory_budget.group_memory(proc.pid)
        if used > limit:
            _kill_group(proc)
            proc.wait()
            return (f"the worker's memory reached {used / memory_budget.MB:.0f} MB and it was stopped: "
                    f"{budget.describe(limit)}")


def _classify(returncode: int | None, tail: str, lost: str | None = None,
              budget: memory_budget.Budget | None = None) -> tuple[RunStatus, str]:
    if lost:  # a forked run killed because its prepared process died: not the run's memory
        return RunStatus.CRASHED, lost
    if returncode is not None and returncode < 0:
        sig = -returncode
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        if sig == signal.SIGKILL and budget is not None:
            # Under a container limit the out-of-memory killer is what sends SIGKILL to a worker.
            return RunStatus.OOM, (f"the worker was killed by SIGKILL: the container's out-of-memory killer, "
                                   f"its {budget.total_bytes / memory_budget.MB:.0f} MB limit set by "
                                   f"{budget.source} reached between two looks at its memory")
        if sig == signal.SIGKILL:
            return RunStatus.CRASHED, (
                "the worker was killed by SIGKILL (the kernel's out-of-memory killer sends it when memory runs out)"
            )
        what = {signal.SIGSEGV: " (segmentation fault in native code)", signal.SIGABRT: " (abort in native code)"}
        return RunStatus.CRASHED, f"the worker died from {name}{what.get(sig, '')}"
    if any(m in tail for m in _OOM_MARKERS):
        return RunStatus.OOM, f"the worker ran out of memory (exit code {returncode})"
    return RunStatus.CRASHED, f"the worker exited with code {returncode} without writing a result"


def _failure(spec: RunSpec, status: RunStatus, error: str, tail: str, started: float, duration: float) -> RunResult:
    return RunResult.failure(spec.to_dict(), spec.key, status, error, stderr_tail=tail,
                             started_at=started, duration_s=duration)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _model_dict(model: ModelSpec | None) -> dict | None:
    """The model a prepared process warms up with (a ModelSpec as a dict), or None."""
    if model is None:
        return None
    return {"id": model.id, "revision": model.revision, "trust_remote_code": model.trust_remote_code,
            "use_safetensors": model.use_safetensors}
