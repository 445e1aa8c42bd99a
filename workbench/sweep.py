"""Sweeps: a TOML file naming models, methods and parameter grids, run as one resumable job.

    name = "4-bit on SmolLM2"
    models = ["smollm2-135m"]
    protocol = "quick"                # optional: quick, standard (the default) or full
    timeout_s = 1800                  # optional, for every run
    [data]                            # optional DataSpec fields, on top of the protocol's
    eval_windows = 8
    [bench]                           # optional BenchSpec fields, on top of the protocol's
    latency = false

    [[runs]]
    method = "rtn"
    params = {sym = false}            # fixed parameters
    grid = {bits = [8, 4, 3], group_size = {start = 32, stop = 128, factor = 2}}

    [[runs]]
    method = "ov-weight"
    models = ["smollm2-135m"]         # optional: replaces the top-level list for this block
    grid = {ratio = {start = 0.6, stop = 1.0, step = 0.2}}
    bench = {latency = true}          # optional: merged over the top-level tables
    protocol = "standard"             # optional: replaces the top-level protocol for this block

The protocol (`workbench.protocols`) gives every field of the data and bench settings; the
`[data]` and `[bench]` tables change single fields on top of it. `workbench sweep --protocol NAME`
(or `parse_sweep(..., protocol=NAME)`) replaces the file's protocol, so the grid explored under
`quick` can be measured again under `full` without editing the file.

A grid value is a list, or a range: a table with `start`, `stop` (included) and either `step`
(arithmetic) or `factor` (geometric). A block runs the cartesian product of its grid on each of
its models. Specs are validated all together before anything runs and deduplicated by their key
(two grids naming the same configuration run it once). Every result is stored as it completes,
so running the same file again after an interruption reruns nothing that was stored: it resumes.
A configuration whose latest stored run failed (crashed, out of memory, timeout) is skipped, with
its stored error, unless failures are retried; one whose run was cancelled or interrupted (the
sweep killed halfway) runs again.
"""
from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from . import protocols
from .errors import InvalidSpec, MethodUnavailable, WorkbenchError
from .result import RunResult, RunStatus
from .spec import BenchSpec, DataSpec, ModelSpec, RunSpec, with_fields

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session

TOP_KEYS = ("name", "models", "protocol", "data", "bench", "timeout_s", "device", "runs")
RUN_KEYS = ("method", "models", "params", "grid", "protocol", "data", "bench", "timeout_s", "device")
RANGE_KEYS = ("start", "stop", "step", "factor")
# A typo in a range must not expand to millions of runs.
MAX_RANGE_VALUES = 1000


class SweepError(InvalidSpec):
    """A sweep file that cannot be read or expanded; the message names the file and the key."""


@dataclass
class Sweep:
    """A sweep file expanded into run specs (not yet validated against the methods)."""

    name: str
    path: Path | None
    specs: list[RunSpec]


@dataclass
class SweepPlan:
    """What running a sweep would do, decided before any worker starts."""

    sweep: Sweep
    specs: list[RunSpec] = field(default_factory=list)          # validated, deduplicated, in file order
    stored: dict[str, RunResult] = field(default_factory=dict)  # key -> stored successful result
    failed: dict[str, RunResult] = field(default_factory=dict)  # key -> latest stored failure (skipped)
    todo: list[RunSpec] = field(default_factory=list)           # what will run
    invalid: list[tuple[RunSpec, list[str]]] = field(default_factory=list)
    unavailable: list[tuple[RunSpec, str]] = field(default_factory=list)
    duplicates: int = 0

    def summary(self) -> str:
        parts = [f"{len(self.specs)} configurations", f"{len(self.stored)} already stored",
                 f"{len(self.todo)} to run"]
        if self.specs:
            parts.append(self.protocol_summary())
        if self.failed:
            parts.append(f"{len(self.failed)} failed before (skipped; --retry-failed runs them)")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicates dropped")
        if self.unavailable:
            parts.append(f"{len(self.unavailable)} unavailable here")
        if self.invalid:
            parts.append(f"{len(self.invalid)} invalid")
        return f"sweep {self.sweep.name!r}: " + ", ".join(parts)

    def protocol_summary(self) -> str:
        """"quick protocol", or "protocols: quick 6, custom 2" when the configurations mix them."""
        counts: dict[str, int] = {}
        for spec in self.specs:
            name = protocols.name_of(spec.data, spec.bench)
            counts[name] = counts.get(name, 0) + 1
        if len(counts) == 1:
            return f"{next(iter(counts))} protocol"
        return "protocols: " + ", ".join(f"{k} {v}" for k, v in counts.items())


@dataclass
class SweepOutcome:
    plan: SweepPlan
    results: list[RunResult]  # one per planned spec, in plan order (stored ones included)
    ran: int
    seconds: float

    @property
    def failures(self) -> list[RunResult]:
        return [r for r in self.results if not r.status.succeeded]


# --- reading -------------------------------------------------------------------


def load_sweep(path: str | Path, protocol: str | None = None) -> Sweep:
    """Read and expand a sweep file. Raises SweepError naming the file, the key and what is allowed.
    `protocol`: replaces the file's `protocol` keys (see `parse_sweep`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SweepError(f"sweep file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SweepError(f"sweep file {p} cannot be read: {e}") from None
    return parse_sweep(text, p, protocol=protocol)


def parse_sweep(text: str, path: Path | None = None, protocol: str | None = None) -> Sweep:
    """Expand sweep TOML text (see the module docstring for the format).

    `protocol`: the measurement protocol of every run, in place of the file's `protocol` keys
    (None: the file's, else `standard`); an unknown name raises `protocols.UnknownProtocol`."""
    where = str(path) if path else "sweep"
    if protocol is not None:
        protocol = protocols.get(protocol).name
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{where}: not valid TOML: {e}") from None
    _unknown(doc, TOP_KEYS, where)
    name = doc.get("name", path.stem if path else "sweep")
    if not isinstance(name, str):
        raise SweepError(f"{where}: name: expected a string, got {name!r}")
    runs = doc.get("runs")
    if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
        raise SweepError(f"{where}: runs: expected one or more [[runs]] tables, each with a method and a grid")
    top_models = _models(doc.get("models"), f"{where}: models", required=False)
    top_protocol = _protocol_key(doc, f"{where}: protocol")
    specs: list[RunSpec] = []
    for i, block in enumerate(runs):
        at = f"{where}: runs[{i}]"
        _unknown(block, RUN_KEYS, at)
        method = block.get("method")
        if not isinstance(method, str) or not method:
            raise SweepError(f"{at}.method: expected a method name (workbench methods lists them)")
        models = _models(block.get("models"), f"{at}.models", required=False) or top_models
        if not models:
            raise SweepError(f"{at}: no models: give `models = [...]` at the top or in the block")
        fixed = block.get("params", {})
        if not isinstance(fixed, dict):
            raise SweepError(f"{at}.params: expected a table of fixed parameters, got {fixed!r}")
        grid = block.get("grid", {})
        if not isinstance(grid, dict):
            raise SweepError(f"{at}.grid: expected a table of parameter -> list or range, got {grid!r}")
        axes = {k: grid_values(v, f"{at}.grid.{k}") for k, v in grid.items()}
        clash = set(axes) & set(fixed)
        if clash:
            raise SweepError(f"{at}: {', '.join(sorted(clash))} both in params and in grid; keep each in one")
        base = protocols.get(protocol or _protocol_key(block, f"{at}.protocol") or top_protocol)
        data = _table(DataSpec, {**_dict(doc, "data", where), **_dict(block, "data", at)}, f"{at}.data", base.data)
        bench = _table(BenchSpec, {**_dict(doc, "bench", where), **_dict(block, "bench", at)}, f"{at}.bench",
                       base.bench)
        timeout = block.get("timeout_s", doc.get("timeout_s", base.timeout_s))
        device = block.get("device", doc.get("device", "cpu"))
        if not isinstance(device, str):
            raise SweepError(f"{at}.device: expected cpu or cuda[:N], got {device!r}")
        for model in models:
            for combo in itertools.product(*axes.values()) if axes else [()]:
                params = {**fixed, **dict(zip(axes, combo))}
                specs.append(RunSpec(model=ModelSpec(id=model), method=method, params=params, data=data,
                                     bench=bench, device=device, timeout_s=timeout))
    return Sweep(name=name, path=path, specs=specs)


def grid_values(value: Any, where: str) -> list[Any]:
    """A grid axis: a non-empty list as it is, or a range table expanded (stop included)."""
    if isinstance(value, list):
        if not value:
            raise SweepError(f"{where}: an empty list; give at least one value")
        return value
    if not isinstance(value, dict):
        return [value]  # a single value is an axis of one
    _unknown(value, RANGE_KEYS, where)
    start, stop = value.get("start"), value.get("stop")
    step, factor = value.get("step"), value.get("factor")
    numbers = (start, stop, step, factor)
    if not all(x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)) for x in numbers) \
            or start is None or stop is None or (step is None) == (factor is None):
        raise SweepError(f"{where}: a range needs numbers start, stop and exactly one of step or factor; "
                         f"got {value!r}")
    integer = all(isinstance(x, int) for x in numbers if x is not None)
    out: list[Any] = []
    if step is not None:
        if step == 0 or (stop - start) * step < 0:
            raise SweepError(f"{where}: step {step} never goes from {start} to {stop}")
        n = math.floor((stop - start) / step + 1e-9) + 1
        if n > MAX_RANGE_VALUES:
            raise SweepError(f"{where}: {n} values; a range may give at most {MAX_RANGE_VALUES}")
        out = [start + i * step if integer else round(start + i * step, 10) for i in range(n)]
    elif start == stop:
        out = [start]
    else:
        grows = abs(stop) > abs(start)
        if start * stop <= 0 or factor <= 0 or factor == 1 or grows != (factor > 1):
            raise SweepError(f"{where}: factor {factor} never goes from {start} to {stop}")
        x, tolerance = start, 1e-9 * abs(stop)
        while (abs(x) <= abs(stop) + tolerance) if grows else (abs(x) >= abs(stop) - tolerance):
            out.append(x if integer else round(x, 10))
            if len(out) > MAX_RANGE_VALUES:
                raise SweepError(f"{where}: more than {MAX_RANGE_VALUES} values")
            x = x * factor
        if isinstance(start, int) and isinstance(stop, int) and all(float(v).is_integer() for v in out):
            out = [int(v) for v in out]  # 128 -> 16 by factor 0.5: group sizes, not 64.0
    return out


def _unknown(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    extra = sorted(set(table) - set(allowed))
    if extra:
        raise SweepError(f"{where}: unknown key{'s' if len(extra) > 1 else ''} {', '.join(extra)}; "
                         f"allowed: {', '.join(allowed)}")


def _models(value: Any, where: str, required: bool) -> list[str]:
    if value is None and not required:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(m, str) and m for m in value):
        raise SweepError(f"{where}: expected a list of model names, directories or hub ids, got {value!r}")
    return value


def _dict(table: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise SweepError(f"{where}.{key}: expected a table, got {value!r}")
    return value


def _table(cls: type, values: Mapping[str, Any], where: str, base: Any) -> Any:
    """`base` (the protocol's settings) with the fields of `values` changed."""
    _unknown(values, tuple(f.name for f in fields(cls)), where)
    return with_fields(base, values, where)


def _protocol_key(table: Mapping[str, Any], where: str) -> str | None:
    """The `protocol` key of a table (None without one), checked: a SweepError names the key and the names."""
    name = table.get("protocol")
    if name is None:
        return None
    if not isinstance(name, str) or name.strip().lower() not in protocols.PROTOCOLS:
        raise SweepError(f"{where}: got {name!r}; allowed: {', '.join(protocols.names())}")
    return name


# --- planning and running ----------------------------------------------------------


def plan(session: "Session", sweep: Sweep, retry_failed: bool = False) -> SweepPlan:
    """Validate every spec (no worker starts), drop duplicates, and split stored from to-run."""
    out = SweepPlan(sweep=sweep)
    seen: set[str] = set()
    for spec in sweep.specs:
        try:
            spec = session.validate(spec)
        except MethodUnavailable as e:
            out.unavailable.append((spec, str(e)))
            continue
        except WorkbenchError:
            out.invalid.append((spec, session.problems(spec)))
            continue
        if spec.key in seen:
            out.duplicates += 1
            continue
        seen.add(spec.key)
        out.specs.append(spec)
        hit = session.store.cached(spec.key)
        if hit is not None:
            out.stored[spec.key] = hit
            continue
        last = session.store.latest(spec.key)
        # A cancelled run (by the user, or interrupted with its coordinator) is no verdict on the
        # configuration: it runs again. Crashes, timeouts and out-of-memory are skipped.
        if last is not None and not retry_failed and last.status is not RunStatus.CANCELLED:
            last.cached = True
            out.failed[spec.key] = last
            continue
        out.todo.append(spec)
    return out


def run(session: "Session", the_plan: SweepPlan, progress: bool = True,
        on_result: Callable[[RunResult], None] | None = None) -> SweepOutcome:
    """Run what the plan left to run, one bar over the whole sweep; every result is stored as it ends.

    Runs go one at a time, or as many at once as the executor takes (`parallel`: a Dask cluster's
    worker threads); results are stored by this process in either case.
    """
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from .result import label
    from .stages import percent

    start = time.monotonic()
    done: dict[str, RunResult] = {**the_plan.stored, **the_plan.failed}
    bar = tqdm(total=len(the_plan.specs), initial=len(done), desc=f"sweep {the_plan.sweep.name}"[:40],
               unit="run", disable=not progress)
    lock = threading.Lock()

    def one(spec: RunSpec) -> None:
        name = f"{spec.model.id} {label(spec.method, spec.params)}"[:48]

        def report(stage: str, fraction: float | None, message: str) -> None:
            pct = percent(stage, fraction)
            bar.set_postfix_str(f"{name} {'' if pct is None else f'{pct}% '}{stage}"[:70])

        result = session.submit(spec, progress=report)
        with lock:
            done[spec.key] = result
            if on_result is not None:
                on_result(result)
            bar.update(1)

    parallel = max(1, int(getattr(session.executor, "parallel", 1)))
    try:
        if parallel == 1:
            for spec in the_plan.todo:
                one(spec)
        else:
            with ThreadPoolExecutor(max_workers=parallel) as pool:
                for f in [pool.submit(one, spec) for spec in the_plan.todo]:
                    f.result()
    finally:
        bar.close()
    results = [done[s.key] for s in the_plan.specs]
    return SweepOutcome(plan=the_plan, results=results, ran=len(the_plan.todo),
                        seconds=time.monotonic() - start)
