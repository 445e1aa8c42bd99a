"""Run each spec on a Dask worker, with the same worker command as the subprocess executor.

    workbench sweep FILE --executor dask [--scheduler tcp://HOST:8786]
    Session(executor=DaskExecutor("tcp://HOST:8786"))

The task sent to a Dask worker is `run_remote(spec JSON, target, env)`: on that machine it resolves
the method's environment family (its `$WORKBENCH_HOME/envs/NAME`, or `WORKBENCH_ENV_<NAME>`),
starts `python -m workbench.worker` there exactly as `SubprocessExecutor` does locally (own
process group, timeout, memory limit) and returns the result as JSON. The coordinator stores it:
the SQLite store never leaves the machine that runs the session. Progress and each protocol stage's
measurements come back while the run goes, through a Dask `Queue` the coordinator drains (progress
as `[stage, fraction, message]`, measurements as the worker's `{"stage", "partial", "pid"}`
event); a run whose Dask worker is lost keeps the measurements that had arrived.

Without a scheduler address a `LocalCluster` of worker processes on this machine is started
(closed with the executor or at exit). A real cluster needs, on every worker machine: this
package (`pip install 'quantization-workbench[dask]'`, torch-free), the backend environments the
runs use (`workbench env create NAME`), the models at the same path or a reachable hub, and the
same `WORKBENCH_HOME` layout. With dask-jobqueue (SLURM, PBS, ...) or dask-kubernetes, create the
cluster there, start the workers with `--resources "MEMORY_MB=16000 GPU=1"` as they have them,
and pass the scheduler's address.

Resources: a run with `bench.memory_limit_mb` asks its worker for that many `MEMORY_MB`, a CUDA
run for one `GPU`, so Dask places it only where they are free. A run asking for a resource that no
connected worker declares is refused as unavailable at once, instead of waiting forever.
"""
from __future__ import annotations

import atexit
import json
import threading
import time
import uuid
from typing import Any

from ..errors import InvalidSpec
from ..result import RunResult, RunStatus
from ..spec import RunSpec
from .base import Partial, PartialCollector, Progress

LOCAL_WORKERS = 2


def run_remote(spec_json: str, target: str, env: str, progress_queue: str | None = None,
               cancel_event: str | None = None) -> str:
    """The task a Dask worker runs: the subprocess executor, there. Returns the result as JSON."""
    from ..spec import RunSpec
    from .subprocess import SubprocessExecutor

    spec = RunSpec.from_json(spec_json)
    executor = SubprocessExecutor()
    queue = cancel = None
    if progress_queue or cancel_event:
        from distributed import Event, Queue

        queue = Queue(progress_queue) if progress_queue else None
        cancel = Event(cancel_event) if cancel_event else None

    def report(stage: str, fraction: float | None, message: str) -> None:
        if queue is not None:
            queue.put(json.dumps([stage, fraction, message]))

    def measured(update: Any) -> None:
        if queue is not None:
            queue.put(json.dumps({"stage": update.stage, "partial": dict(update.partial), "pid": update.pid},
                                 default=str))

    out: dict[str, RunResult] = {}
    runner = threading.Thread(target=lambda: out.setdefault("r", executor.run(spec, target, env, report,
                                                                                partial=measured)))
    runner.start()
    while runner.is_alive():
        runner.join(timeout=0.5)
        if cancel is not None and runner.is_alive() and cancel.is_set():
            executor.cancel(spec.key)
    return out["r"].to_json()


class DaskExecutor:
    """Runs specs on a Dask cluster: `scheduler` is its address; None starts a LocalCluster here."""

    def __init__(self, scheduler: str | None = None, n_workers: int = LOCAL_WORKERS):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise InvalidSpec("executor: dask needs the distributed package: "
                              "pip install 'quantization-workbench[dask]'") from None
        self.cluster = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as e:
                raise InvalidSpec(f"scheduler: cannot reach the Dask scheduler at {scheduler}: {e}") from None
        else:
            import psutil

            memory_mb = psutil.virtual_memory().total // 2**20 // n_workers
            # One thread per worker: a run is a subprocess using the cores itself.
            self.cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, resources={"MEMORY_MB": memory_mb},
                                        host="127.0.0.1")
            self.client = Client(self.cluster)
        self._futures: dict[str, Any] = {}
        self._events: dict[str, str] = {}
        self._lock = threading.Lock()
        atexit.register(self.close)

    @property
    def parallel(self) -> int:
        """How many runs the cluster takes at once (one per worker thread)."""
        workers = self.client.scheduler_info().get("workers", {})
        return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))

    def close(self) -> None:
        try:
            self.client.close()
            if self.cluster is not None:
                self.cluster.close()
        except Exception:  # noqa: BLE001 - closing at exit must not raise
            pass

    def cancel(self, key: str) -> bool:
        with self._lock:
            name = self._events.get(key)
        if name is None:
            return False
        from distributed import Event

        Event(name, client=self.client).set()
        return True

    def run(self, spec: RunSpec, target: str, env: str, progress: Progress | None = None,
            partial: Partial | None = None) -> RunResult:
        """Run `spec` on a Dask worker; `progress` and `partial` are called here as its reports arrive."""
        from distributed import Event, Queue

        started = time.time()
        resources = run_resources(spec)
        missing = self.missing_resources(resources)
        if missing:
            return RunResult.failure(spec.to_dict(), spec.key, RunStatus.UNAVAILABLE,
                                     f"no Dask worker declares {missing}: start workers with "
                                     f"--resources \"{' '.join(f'{k}={v}' for k, v in resources.items())}\"")
        tag = uuid.uuid4().hex[:12]
        queue_name, event_name = f"wb-progress-{tag}", f"wb-cancel-{tag}"
        listen = progress is not None or partial is not None
        queue = Queue(queue_name, client=self.client) if listen else None
        collector = PartialCollector(spec, partial)
        Event(event_name, client=self.client)  # exists before the task can look at it
        future = self.client.submit(run_remote, spec.to_json(), target, env, queue_name if listen else None,
                                    event_name, key=f"workbench-{spec.key[:16]}-{tag}", pure=False,
                                    resources=resources or None, retries=0)
        with self._lock:
            self._futures[spec.key], self._events[spec.key] = future, event_name
        try:
            while not future.done():
                _drain(queue, progress, wait=0.5, collector=collector)
            _drain(queue, progress, wait=0, collector=collector)
            try:
                return RunResult.from_json(future.result())
            except Exception as e:  # noqa: BLE001 - a lost worker is one failed run, not the caller's crash
                return collector.keep(RunResult.failure(spec.to_dict(), spec.key, RunStatus.CRASHED,
                                                        f"the Dask task failed: {type(e).__name__}: {e}",
                                                        duration_s=time.time() - started))
        finally:
            with self._lock:
                self._futures.pop(spec.key, None)
                self._events.pop(spec.key, None)

    def missing_resources(self, resources: dict[str, float]) -> dict[str, float]:
        """The requested resources no connected worker declares enough of (empty when one does)."""
        if not resources:
            return {}
        workers = self.client.scheduler_info().get("workers", {}).values()
        if any(all(w.get("resources", {}).get(k, 0) >= v for k, v in resources.items()) for w in workers):
            return {}
        return resources


def run_resources(spec: RunSpec) -> dict[str, float]:
    """The abstract Dask resources a run asks its worker for."""
    out: dict[str, float] = {}
    if spec.bench.memory_limit_mb:
        out["MEMORY_MB"] = float(spec.bench.memory_limit_mb)
    if spec.device.startswith("cuda"):
        out["GPU"] = 1.0
    return out


def _drain(queue: Any, progress: Progress | None, wait: float, collector: PartialCollector | None = None) -> None:
    """Pass on the progress events and measurements waiting in the queue, after sleeping `wait` seconds.

    `get(batch=True)` takes what is there without blocking: a timed `get` that times out makes
    the scheduler log a traceback every half second.
    """
    time.sleep(wait)
    if queue is None:
        return
    try:
        events = queue.get(batch=True)
    except Exception:  # noqa: BLE001 - progress is best effort; the result still comes back
        return
    for text in events:
        try:
            event = json.loads(text)
            if isinstance(event, dict):
                if collector is not None:
                    collector.add_event(event)
            elif progress is not None:
                stage, fraction, message = event
                progress(stage, fraction, message)
        except Exception:  # noqa: BLE001 - a broken progress event or callback must not kill the run
            pass
