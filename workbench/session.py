"""The one API for the UI, notebooks and the CLI: validate -> cache -> execute -> store.

    from workbench.session import Session
    s = Session()                                   # results/workbench.sqlite, subprocess workers
    r = s.run("smollm2-135m", "rtn", {"bits": 4, "group_size": 64})
    s.dataframe()

Validation happens here, in the kernel, before any worker starts: every
parameter error at once (naming the parameter and what is allowed), shape
checks against the model's config, device and environment availability.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping

from . import registry, stages
from .errors import DataError, InvalidParams, MethodUnavailable, ParamError, WorkbenchError
from .exec import Executor, Progress, get_executor
from .exec.base import Partial, PartialUpdate, accepts_partial, keep_partial
from .paths import store_path
from .registry import cuda_present
from .result import RunResult, RunStatus
from .spec import BenchSpec, DataSpec, ModelSpec, RunSpec, field_errors
from .store import ResultStore

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

def spec_field_errors(spec: RunSpec) -> list[ParamError]:
    """The data and bench fields checked against their schemas (`spec.DATA_SCHEMA`, `spec.BENCH_SCHEMA`),
    and the timeout (torch-free)."""
    errors = field_errors(spec.data, "data")[1] + field_errors(spec.bench, "bench")[1]
    if spec.timeout_s is not None and not (isinstance(spec.timeout_s, (int, float)) and spec.timeout_s > 0):
        errors.append(ParamError("timeout_s", f"got {spec.timeout_s!r}; allowed: a positive number of seconds"))
    return errors


class Session:
    """Validates specs, reuses stored results, runs the rest and stores every outcome."""

    def __init__(
        self,
        store: ResultStore | str | os.PathLike[str] | None = None,
        executor: Executor | str = "subprocess",
        progress: bool = True,
        warm: bool = True,
    ):
        """`warm`: with the subprocess executor named by string, each backend environment keeps a
        prepared process from which every run is forked, still a fresh process of its own
        (`workbench.exec.warm`); `warm=False` starts every worker cold (what `--cold` does). An
        executor passed as an object keeps its own setting."""
        self.store = store if isinstance(store, ResultStore) else ResultStore(store_path(store))
        self.executor = get_executor(executor, warm=warm) if isinstance(executor, str) else executor
        self.progress = progress
        self._hub_models: dict[ModelSpec, Any] = {}

    # --- building and validating specs ---------------------------------------
    @staticmethod
    def make_spec(
        model: str | ModelSpec,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        data: DataSpec | Mapping[str, Any] | None = None,
        bench: BenchSpec | Mapping[str, Any] | None = None,
        device: str = "cpu",
        timeout_s: float | None = None,
        protocol: str | None = None,
        **model_options: Any,
    ) -> RunSpec:
        """A RunSpec from plain values.

        `protocol`: `quick`, `standard` (None: the default) or `full` (`workbench.protocols`);
        an unknown name raises `UnknownProtocol` (exit code 2) listing the names. `data` / `bench`
        as dicts change single fields on top of the protocol's (`bench={"repeats": 5}`); a
        complete `DataSpec` / `BenchSpec` replaces the protocol's. `timeout_s` None: the
        protocol's (`full` allows 4 hours), else the executor's default.
        """
        from . import protocols

        m = model if isinstance(model, ModelSpec) else ModelSpec(id=str(model), **model_options)
        d, b = protocols.specs(protocol, data, bench)
        return RunSpec(model=m, method=method, params=dict(params or {}), data=d, bench=b, device=device,
                       timeout_s=timeout_s if timeout_s is not None else protocols.get(protocol).timeout_s)

    def validate(self, spec: RunSpec) -> RunSpec:
        """The spec with normalized parameters, or an exception listing every problem.

        Raises UnknownMethod / InvalidParams / ModelNotFound (exit code 2) or
        MethodUnavailable (exit code 4). Starts no worker, imports no torch.
        """
        ref = registry.get(spec.method)
        cls = ref.cls
        params, errors = cls.schema.errors(spec.params)
        errors += spec_field_errors(spec)
        device = spec.device.split(":", 1)[0]
        if device not in cls.devices:
            errors.append(ParamError("device", f"method {cls.name!r} runs on {', '.join(cls.devices)}, not {device}"))
        info = self.describe(spec.model)  # ModelNotFound if it is not there
        if info.kind not in cls.model_kinds:
            errors.append(ParamError("model", f"{spec.model.id} is a {info.kind} model; method {cls.name!r} "
                                              f"supports {', '.join(cls.model_kinds)}"))
        elif not errors:
            errors += cls().check_model(params, info)
        if errors:
            raise InvalidParams(errors, context=f"{cls.name} on {spec.model.id}")
        # Normalized like the parameters (a list is a tuple, 5.0 is 5); a valid spec keeps its key.
        spec = spec.replace(data=DataSpec(**field_errors(spec.data, "data")[0]),
                            bench=BenchSpec(**field_errors(spec.bench, "bench")[0]))
        from .data import text

        offline = text.hub_offline_error(spec.data.source)
        if offline:
            raise DataError(f"data.source: {offline}")
        if not spec.data.source.startswith("hub:"):
            full = text.load_text(spec.data)  # DataError for a missing, unreadable or empty file; cheap otherwise
            windows = info.kind == "causal-lm" and spec.bench.accuracy
            short = text.evaluation_size_error(spec.data, full) if windows else None
            if short:
                raise DataError(short)
        if device == "cuda" and not cuda_present():
            raise MethodUnavailable("device: cuda was asked for but this machine has no CUDA device; allowed here: cpu")
        reason = registry.unavailable_reason(ref) or cls().unavailable_reason(params, spec.device)
        if reason:
            raise MethodUnavailable(f"method {cls.name!r} is unavailable: {reason}")
        return spec.replace(params=params)

    def describe(self, model: ModelSpec) -> Any:
        """`catalog.describe`, remembering hub models: a form validated on every keystroke must not
        ask the hub (up to seconds) each time. Local and catalog models are read afresh (cheap)."""
        from .models import catalog

        if model in self._hub_models:
            return self._hub_models[model]
        info = catalog.describe(model)
        if info.source == "hub":
            self._hub_models[model] = info
        return info

    def problems(self, spec: RunSpec) -> list[str]:
        """Every reason the spec cannot run, as text (for the UI); empty when it can."""
        try:
            self.validate(spec)
        except InvalidParams as e:
            return [str(x) for x in e.errors]
        except WorkbenchError as e:
            return [str(e)]
        return []

    # --- running ---------------------------------------------------------------
    def submit(self, spec: RunSpec, *, force: bool = False, progress: Progress | None = None,
               on_partial: Partial | None = None) -> RunResult:
        """Validate, reuse a stored result for the same key, else run and store.

        Never raises for bad input or a failed run: the result's status and error say
        what happened. Validation failures are returned, not stored (nothing ran).

        Measurements stream: while the run goes, the store holds it with status `running` and
        what is known so far (`ResultStore.put_live`; `dataframe(include_live=True)` shows it),
        and `on_partial(update)` (a `workbench.exec.PartialUpdate`) gets a "started" update, then
        each protocol stage's measurements as the worker reports them: build, save, accuracy,
        latency tables, memory, reload check, task metric. A run that is cancelled, killed, times
        out or runs out of memory is stored with that status and the measurements it had made.
        """
        try:
            spec = self.validate(spec)
        except WorkbenchError as e:
            status = RunStatus.UNAVAILABLE if isinstance(e, MethodUnavailable) else RunStatus.INVALID
            return RunResult.failure(spec.to_dict(), spec.key, status, str(e))
        if not force:
            hit = self.store.cached(spec.key)
            if hit is not None:
                return hit
        ref = registry.get(spec.method)
        bar, progress = self._progress(spec, progress)
        live = _LiveRun(self.store, spec, spec.timeout_s or getattr(self.executor, "default_timeout_s", None),
                        on_partial)
        live.start()
        try:
            if accepts_partial(self.executor):
                result = self.executor.run(spec, ref.target, ref.cls.env, progress, partial=live.update)
            else:
                result = self.executor.run(spec, ref.target, ref.cls.env, progress)
        except WorkbenchError as e:  # e.g. the environment disappeared between validation and run
            result = RunResult.failure(spec.to_dict(), spec.key, RunStatus.UNAVAILABLE, str(e))
        except BaseException as e:
            # Ctrl-C, or a bug below the session: the run ends here. Store it with what it had
            # measured (never as running), then let the exception go on.
            if isinstance(e, KeyboardInterrupt):
                failed = RunResult.failure(spec.to_dict(), spec.key, RunStatus.CANCELLED, "interrupted (Ctrl-C)")
            else:
                failed = RunResult.failure(spec.to_dict(), spec.key, RunStatus.CRASHED,
                                           f"the session failed while running it: {type(e).__name__}: {e}")
            self._store(spec, live.finish(failed), live)
            raise
        finally:
            if bar is not None:
                bar.close()
        result = live.finish(result)
        self._store(spec, result, live)
        return result

    def _progress(self, spec: RunSpec, progress: Progress | None) -> tuple[Any, Progress | None]:
        """The caller's progress callback, else (when this session shows progress) a tqdm bar's:
        (the bar to close when the run ends, or None; the callback)."""
        if progress is None and self.progress:
            return _progress_bar(spec)
        return None, progress

    def _store(self, spec: RunSpec, result: RunResult, live: "_LiveRun") -> None:
        from .security import spec_warnings

        result.warnings = spec_warnings(spec) + [w for w in result.warnings if not w.startswith("security: ")]
        self.store.append(result, live_id=live.run_id)

    def run(self, model: str | ModelSpec, method: str, params: Mapping[str, Any] | None = None, **kw: Any) -> RunResult:
        """Shortcut: make_spec + submit; `protocol="quick"` and every other `make_spec` option work here.

        An unknown protocol raises `UnknownProtocol` (before any worker), like an unknown data field."""
        force = kw.pop("force", False)
        return self.submit(self.make_spec(model, method, params, **kw), force=force)

    def analyse(self, spec: RunSpec, kind: str, *, force: bool = False,
                progress: Progress | None = None) -> RunResult:
        """The stored analysis `kind` (a worker analysis, e.g. "sensitivity") of a validated `spec`, or a
        new one, stored under the spec's key in the store's `analyses` table. A failed analysis comes
        back as a RunResult with its status and error, and is stored too."""
        from .exec.subprocess import SubprocessExecutor
        from .security import spec_warnings

        if not force:
            hit = self.store.analysis(kind, spec.key)
            if hit is not None:
                return hit
        ref = registry.get(spec.method)
        bar, progress = self._progress(spec, progress)
        try:
            # Always a worker subprocess on this machine's CPU: an analysis quantizes one layer at a
            # time in one process, and its result is a table, not a benchmark.
            result = SubprocessExecutor().run(spec, ref.target, ref.cls.env, progress, analysis=kind)
        finally:
            if bar is not None:
                bar.close()
        result.warnings = spec_warnings(spec) + list(result.warnings)
        self.store.append_analysis(kind, result)
        return result

    def sensitivity(self, model: str, method: str = "rtn", params: Mapping[str, Any] | None = None,
                    **kw: Any) -> RunResult:
        """Layer sensitivity (`workbench.sensitivity.layer_sensitivity`): stored, reused."""
        from .sensitivity import layer_sensitivity

        return layer_sensitivity(self, model, method, params, **kw)

    def prepare(self, model: str | ModelSpec, method: str = "baseline") -> str | None:
        """Start the prepared process of `method`'s environment now, warmed up with `model`, so
        that the first run there starts warm (the app calls it when a method is picked in a kernel). Returns at once with
        its state ("starting", "ready", "failed"), or None where runs start cold (a cold session,
        another executor, a kernel-side method, a missing environment). Never raises for those."""
        prepare = getattr(self.executor, "prepare", None)
        if prepare is None:
            return None
        try:
            env = registry.get(method).cls.env
            return prepare(env, model if isinstance(model, ModelSpec) else ModelSpec(id=str(model)))
        except WorkbenchError:
            return None

    # --- reading ---------------------------------------------------------------
    def results(self, latest_only: bool = True, include_live: bool = False) -> list[RunResult]:
        """Stored results (the latest per spec key by default); `include_live` adds the runs in
        progress, status `running`, with what they have measured so far."""
        return self.store.results(latest_only=latest_only, include_live=include_live)

    def dataframe(self, latest_only: bool = True, include_live: bool = False) -> "pd.DataFrame":
        """One row per stored result (`RunResult.to_row`); `include_live` adds the runs in progress."""
        return self.store.to_dataframe(latest_only=latest_only, include_live=include_live)


class _LiveRun:
    """A run in progress as the session sees it: its live row in the store, kept up to date from
    the executor's partial updates, and the caller's `on_partial`. Once `finish` is called, late
    updates (a reader thread still draining) are dropped, so no live row outlives its result."""

    def __init__(self, store: ResultStore, spec: RunSpec, timeout_s: float | None, on_partial: Partial | None):
        import threading
        import time
        import uuid

        self.store = store
        self.run_id = uuid.uuid4().hex
        self.timeout_s = timeout_s
        self.so_far = RunResult(key=spec.key, status=RunStatus.RUNNING, spec=spec.to_dict(), started_at=time.time())
        self._on_partial = on_partial
        self._closed = False
        self._lock = threading.Lock()

    def start(self) -> None:
        import copy

        self.store.put_live(self.run_id, self.so_far, self.timeout_s)
        self._tell(PartialUpdate("started", {}, copy.deepcopy(self.so_far)))

    def update(self, update: PartialUpdate) -> None:
        with self._lock:
            if self._closed:
                return
            update.result.started_at = self.so_far.started_at
            self.so_far = update.result
            try:
                self.store.put_live(self.run_id, self.so_far, self.timeout_s)
            except WorkbenchError:  # a store that is busy for 30 s: the final result still lands
                pass
        self._tell(update)

    def finish(self, result: RunResult) -> RunResult:
        """The final result, keeping the measurements reported before a failure."""
        with self._lock:
            self._closed = True
            return keep_partial(result, self.so_far)

    def _tell(self, update: PartialUpdate) -> None:
        if self._on_partial is None:
            return
        try:
            self._on_partial(update)
        except Exception:  # noqa: BLE001 - a display that fails must not cost the run
            pass


def _progress_bar(spec: RunSpec) -> tuple[Any, Progress]:
    from tqdm.auto import tqdm

    from .result import label

    bar = tqdm(total=100, desc=f"{spec.model.id} {label(spec.method, spec.params)}"[:60], unit="%", leave=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")

    def update(stage: str, fraction: float | None, message: str) -> None:
        target = stages.percent(stage, fraction)
        if target is not None and target > bar.n:
            bar.update(target - bar.n)
        bar.set_postfix_str(f"{stage} {message}"[:50])

    return bar, update

