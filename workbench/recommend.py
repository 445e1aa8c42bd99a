"""Budget search: the configuration to ship for a model under a perplexity, size or speed budget.

    workbench recommend --model smollm2-135m --max-ppl-increase 10% [--max-bytes 120MB] [--min-decode-tok-s 20]

The search walks down a ladder of bit widths (8, 6, 5, 4, 3). At each width it first runs the
fast data-free configurations of several backends. When none of them gives a better configuration
than the best found so far, and the closest misses the perplexity budget by less than `NEAR_MISS`
times the allowed increase, it tries what can close the gap at that width, cheapest first: mixed
precision (NNCF's own 4/8-bit mix chosen by its layer sensitivity; `rtn` with the layers our
sensitivity analysis ranks worst left in float) and then data-aware methods (AWQ with scale
estimation in NNCF, GPTQ). A candidate that cannot beat the best size found so far is not run:
mixed precision and data-aware methods only add bytes to the same method's data-free run at that
width (`rtn` keeps the embedding in float, so at 4 bits it can never be smaller than an int8 model
that quantizes it). With a perplexity budget the search stops at the first width where nothing
meets it (fewer bits only lose accuracy); with only a size budget, at the first width that fits
but does not improve perplexity. Every run is a normal stored run, so a second search with
another budget reuses them.

Among the configurations that meet every constraint, the recommendation is the one with the
fewest weight bytes (the lowest perplexity when the only constraint is `max_bytes`).

Every run, the fp32 baseline included, is measured with one protocol (`workbench.protocols`,
`quick` by default), with latency turned off unless a speed budget asks for it and nothing saved:
the budget is relative to a baseline measured the same way, and the runs are labelled with the
protocol in every table.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from . import protocols
from .errors import InvalidParams, ParamError, RunFailed, WorkbenchError
from .result import RunResult
from .spec import BenchSpec, DataSpec

if TYPE_CHECKING:  # pragma: no cover
    import threading

    from .session import Session

# The search's protocol unless asked otherwise: budgets are relative to the fp32 baseline measured the same way.
PROTOCOL = "quick"


def search_specs(protocol: str | None = None, speed: bool = False) -> tuple[DataSpec, BenchSpec]:
    """The data and bench settings of the search's runs: the protocol's (None: `PROTOCOL`), with latency
    only for a speed budget, and no saved artifact (so no reload check): a search compares many
    configurations, the one it recommends is reproduced with `workbench run`."""
    data, bench = protocols.specs(protocol or PROTOCOL)
    return data, replace(bench, latency=speed, save=False, reload_check=False)


# A width whose best data-free run misses the perplexity budget by less than this many times the
# allowed increase is worth mixed precision and data-aware methods; a wider miss is not.
NEAR_MISS = 3.0
MIXED_EXCLUDES = (5, 15, 30)

Config = tuple[str, dict]
DATA_FREE: dict[int, list[Config]] = {
    8: [("ov-weight", {"bits": 8}), ("torchao", {"scheme": "int8_weight_only"}),
        ("rtn", {"bits": 8, "group_size": -1, "sym": True})],
    6: [("rtn", {"bits": 6, "group_size": 64, "sym": False})],
    5: [("rtn", {"bits": 5, "group_size": 64, "sym": False})],
    4: [("ov-weight", {"bits": 4, "group_size": 64}), ("hqq", {"nbits": 4, "group_size": 64}),
        ("rtn", {"bits": 4, "group_size": 32, "sym": False}), ("ort-int4", {"block_size": 32})],
    3: [("rtn", {"bits": 3, "group_size": 32, "sym": False}), ("hqq", {"nbits": 3, "group_size": 64})],
}
# Mixed precision a backend chooses itself: NNCF keeps the (1 - ratio) most sensitive layers in
# int8 by its data-free sensitivity metric. `rtn` mixes are built from our own layer sensitivity.
MIXED: dict[int, list[Config]] = {
    4: [("ov-weight", {"bits": 4, "group_size": 64, "ratio": 0.8}),
        ("ov-weight", {"bits": 4, "group_size": 64, "ratio": 0.6})],
}
_AWQ_SE = {"awq": True, "scale_estimation": True, "dataset": "pydoc-topics"}
DATA_AWARE: dict[int, list[Config]] = {
    4: [("ov-weight", {"bits": 4, "group_size": 64, **_AWQ_SE}),
        ("ov-weight", {"bits": 4, "group_size": 64, "ratio": 0.8, **_AWQ_SE}),
        ("ov-weight", {"bits": 4, "group_size": 64, "ratio": 0.6, **_AWQ_SE}),
        ("gptq", {"bits": 4, "group_size": 64, "sym": True, "dataset": "pydoc-topics"}),
        ("gptq", {"bits": 4, "group_size": 32, "sym": True, "dataset": "pydoc-topics"})],
    3: [("gptq", {"bits": 3, "group_size": 32, "sym": True, "dataset": "pydoc-topics"})],
}


@dataclass(frozen=True)
class Budget:
    """What the recommended configuration must meet (at least one constraint)."""

    max_ppl_increase: float | None = None  # a fraction: 0.10 is 10 % over the fp32 perplexity
    max_bytes: int | None = None
    min_decode_tok_s: float | None = None

    def __post_init__(self) -> None:
        errors = []
        if self.max_ppl_increase is None and self.max_bytes is None and self.min_decode_tok_s is None:
            errors.append(ParamError("budget", "give at least one of --max-ppl-increase (e.g. 5%), "
                                               "--max-bytes (e.g. 120MB) or --min-decode-tok-s (e.g. 20)"))
        if self.max_ppl_increase is not None and not 0 < self.max_ppl_increase <= 10:
            errors.append(ParamError("max_ppl_increase", f"got {self.max_ppl_increase!r}; allowed: a fraction in "
                                                         "(0, 10], e.g. 0.05 or 5%"))
        if self.max_bytes is not None and self.max_bytes <= 0:
            errors.append(ParamError("max_bytes", f"got {self.max_bytes!r}; allowed: a positive size, e.g. 120MB"))
        if self.min_decode_tok_s is not None and self.min_decode_tok_s <= 0:
            errors.append(ParamError("min_decode_tok_s", f"got {self.min_decode_tok_s!r}; allowed: a positive "
                                                         "number of tokens per second"))
        if errors:
            raise InvalidParams(errors, context="recommend")

    def ppl_limit(self, baseline_ppl: float) -> float | None:
        return None if self.max_ppl_increase is None else baseline_ppl * (1 + self.max_ppl_increase)

    def misses(self, r: RunResult, baseline_ppl: float) -> list[str]:
        """Why `r` does not meet the budget (empty when it does)."""
        if not r.status.succeeded:
            return [f"{r.status.value}"]
        m, out = r.metrics, []
        limit = self.ppl_limit(baseline_ppl)
        ppl, size, speed = m.get("perplexity"), m.get("weights_bytes"), m.get("decode_tok_s")
        if limit is not None and (ppl is None or ppl > limit):
            out.append(f"perplexity {ppl:.3f} > {limit:.3f}" if ppl is not None else "no perplexity")
        if self.max_bytes is not None and (size is None or size > self.max_bytes):
            out.append(f"{mb(size)} MB > {mb(self.max_bytes)} MB")
        if self.min_decode_tok_s is not None and (speed is None or speed < self.min_decode_tok_s):
            out.append(f"decode {speed or 0:.1f} tok/s < {self.min_decode_tok_s:g}")
        return out

    @property
    def ranks_by_size(self) -> bool:
        """Fewest bytes wins, unless bytes are the only bound (then the lowest perplexity under it)."""
        return not (self.max_bytes is not None and self.max_ppl_increase is None)

    def key(self, r: RunResult) -> tuple[float, float]:
        """Smaller is better among feasible runs."""
        size, ppl = r.metrics.get("weights_bytes") or 0.0, r.metrics.get("perplexity") or float("inf")
        return (size, ppl) if self.ranks_by_size else (ppl, size)

    def shortfall(self, r: RunResult, baseline_ppl: float) -> float:
        """How far `r` is from meeting the budget, summed over constraints as fractions (0: meets it)."""
        if not r.status.succeeded:
            return float("inf")
        m, out = r.metrics, 0.0
        limit = self.ppl_limit(baseline_ppl)
        ppl, size, speed = m.get("perplexity"), m.get("weights_bytes"), m.get("decode_tok_s")
        if limit is not None:
            out += float("inf") if ppl is None else max(0.0, ppl / limit - 1)
        if self.max_bytes is not None:
            out += float("inf") if size is None else max(0.0, size / self.max_bytes - 1)
        if self.min_decode_tok_s is not None:
            out += float("inf") if not speed else max(0.0, self.min_decode_tok_s / speed - 1)
        return out

    def describe(self) -> str:
        parts = []
        if self.max_ppl_increase is not None:
            parts.append(f"perplexity at most {self.max_ppl_increase:.0%} over fp32")
        if self.max_bytes is not None:
            parts.append(f"weights at most {self.max_bytes / 2**20:.1f} MB")
        if self.min_decode_tok_s is not None:
            parts.append(f"decode at least {self.min_decode_tok_s:g} tok/s")
        return ", ".join(parts)


@dataclass
class Step:
    """One configuration the search ran (or found stored)."""

    stage: str  # data-free, mixed, data-aware
    bits: int
    result: RunResult
    misses: list[str]
    asked: dict = field(default_factory=dict)  # the parameters the search set (the rest are defaults)

    @property
    def feasible(self) -> bool:
        return not self.misses


@dataclass
class Recommendation:
    model: str
    budget: Budget
    baseline: RunResult
    steps: list[Step] = field(default_factory=list)
    best: Step | None = None
    space: int = 0  # configurations the search could have run: the full grid it explored
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # unavailable or invalid here, with the reason
    stopped: str = ""
    protocol: str = PROTOCOL  # the measurement protocol of every run of the search

    @property
    def runs(self) -> int:
        return len(self.steps)

    @property
    def best_int8(self) -> Step | None:
        """The smallest 8-bit run that meets the budget: what a 4-bit or mixed answer must beat."""
        eight = [s for s in self.steps if s.bits == 8 and s.feasible]
        return min(eight, key=lambda s: s.result.metrics.get("weights_bytes") or float("inf"), default=None)

    def closest(self, n: int = 3) -> list[Step]:
        """The `n` runs that miss the budget by the least; with a recommendation, only those smaller
        than it (what would have beaten it)."""
        base = float(self.baseline.metrics["perplexity"])
        misses = [s for s in self.steps if not s.feasible and s.result.ok]
        if self.best is not None:
            size = self.best.result.metrics.get("weights_bytes") or 0.0
            misses = [s for s in misses if (s.result.metrics.get("weights_bytes") or size) < size]
        return sorted(misses, key=lambda s: self.budget.shortfall(s.result, base))[:n]

    def code(self) -> str:
        if self.best is None:
            return ""
        from . import registry

        r = self.best.result
        cls = registry.get(r.method).cls
        return cls().code(self.model, cls.schema.normalize(r.params, cls.name))


def ladder_methods() -> list[str]:
    """The backends the search can use, in the order it tries them."""
    return list(dict.fromkeys(m for table in (DATA_FREE, MIXED, DATA_AWARE) for v in table.values() for m, _ in v))


def parse_fraction(text: str) -> float:
    """'10%' or '0.1' -> 0.1."""
    t = text.strip()
    try:
        return float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise InvalidParams([ParamError("max_ppl_increase", f"got {text!r}; allowed: a percentage like 5% "
                                                            "or a fraction like 0.05")]) from None


def parse_bytes(text: str) -> int:
    """'120MB', '1.5GB', '123456' -> bytes (MB = 2**20)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(B|KB|MB|GB)?\s*", text, flags=re.I)
    if not m:
        raise InvalidParams([ParamError("max_bytes", f"got {text!r}; allowed: a size like 120MB, 1.5GB or 123456")])
    unit = (m.group(2) or "B").upper()
    return int(float(m.group(1)) * {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}[unit])


def recommend(session: "Session", model: str, budget: Budget, *, data: DataSpec | None = None,
              max_runs: int = 40, methods: Sequence[str] | None = None, log: Callable[[str], None] = print,
              stop: "threading.Event | None" = None, protocol: str | None = None) -> Recommendation:
    """Search the ladder for `model` under `budget` (see the module docstring).

    `protocol`: how every run is measured (`quick` by default; `workbench.protocols`), an unknown
    name raises `UnknownProtocol` before any run; `data`: a complete `DataSpec` in place of the
    protocol's. `methods` keeps only those backends' configurations (what you can deploy:
    `["ov-weight"]`); `log` gets one line per run; setting `stop` (the app's Stop button) ends the
    search before its next run, with what it found so far."""
    protocol = protocols.get(protocol or PROTOCOL).name
    errors = []
    if max_runs < 1:
        errors.append(ParamError("max_runs", f"got {max_runs!r}; allowed: a whole number of runs, at least 1"))
    known = ladder_methods()
    if methods is not None and (not methods or set(methods) - set(known)):
        bad = sorted(set(methods) - set(known)) or "nothing"
        errors.append(ParamError("methods", f"got {bad}; allowed: one or more of {', '.join(known)}"))
    if errors:
        raise InvalidParams(errors, context="recommend")
    keep = set(methods or known)
    data_free, mixed, data_aware = ({bits: [c for c in configs if c[0] in keep] for bits, configs in table.items()}
                                    for table in (DATA_FREE, MIXED, DATA_AWARE))
    start = time.monotonic()
    protocol_data, bench = search_specs(protocol, speed=budget.min_decode_tok_s is not None)
    data = data if data is not None else protocol_data
    baseline = session.run(model, "baseline", bench=bench, data=data)
    if not baseline.ok:
        first = (baseline.error or "").strip().splitlines()[:1]
        raise RunFailed(f"recommend: the fp32 baseline of {model} {baseline.status.value}"
                        f"{': ' + first[0] if first else ''}; every budget is relative to it")
    if baseline.metrics.get("perplexity") is None:
        raise InvalidParams([ParamError("model", f"{model} has no perplexity (the budget search measures "
                                                 "perplexity; allowed: a causal language model)")], context="recommend")
    base_ppl = float(baseline.metrics["perplexity"])
    rec = Recommendation(model=model, budget=budget, baseline=baseline, protocol=protocols.name_of(data, bench))
    rec.space = sum(len(v) for table in (data_free, mixed, data_aware) for v in table.values()) \
        + (len(MIXED_EXCLUDES) * sum(any(m == "rtn" for m, _ in v) for v in data_free.values()))
    limit = budget.ppl_limit(base_ppl)
    log(f"fp32 baseline: perplexity {base_ppl:.3f}, {mb(baseline.metrics['weights_bytes'])} MB; "
        f"budget: {budget.describe()}" + (f" (perplexity <= {limit:.3f})" if limit else "")
        + f"; {protocols.describe(data, bench)} protocol")
    search = _Search(session, model, budget, rec, data, bench, base_ppl, max_runs, log, stop,
                     mixed=mixed, data_aware=data_aware, data_free=data_free)

    for bits in sorted(data_free, reverse=True):
        if not data_free[bits]:  # none of the chosen backends has a configuration at this width
            continue
        before = rec.best
        here = [s for s in (search.run("data-free", bits, m, p) for m, p in data_free[bits]) if s is not None]
        feasible = [s for s in here if s.feasible]
        search.take(feasible)
        if rec.best is before and limit is not None:
            ok = [s for s in here if s.result.ok and s.result.metrics.get("perplexity")]
            nearest = min(ok, key=lambda s: s.result.metrics["perplexity"], default=None)
            if nearest is not None and nearest.result.metrics["perplexity"] - limit <= NEAR_MISS * (limit - base_ppl):
                feasible += search.close_the_gap(bits)
        improved = rec.best is not before
        if search.halted:  # this width may not be complete: no conclusion from it
            rec.stopped = "stopped on request" if stop is not None and stop.is_set() else \
                f"stopped at the run limit ({max_runs})"
            break
        if limit is not None and not feasible:
            # Fewer bits only lose accuracy: below a width where nothing meets the budget, nothing will.
            rec.stopped = f"stopped at {bits} bits: nothing at this width meets the perplexity budget"
            break
        if limit is None and budget.max_bytes is not None and rec.best is not None and not improved:
            rec.stopped = f"stopped at {bits} bits: fewer bits fit the size but lose perplexity"
            break
    else:
        rec.stopped = "the whole ladder was explored"
    rec.seconds = time.monotonic() - start
    return rec


@dataclass
class _Search:
    session: "Session"
    model: str
    budget: Budget
    rec: Recommendation
    data: DataSpec
    bench: BenchSpec
    base_ppl: float
    max_runs: int
    log: Callable[[str], None]
    stop: "threading.Event | None" = None
    mixed: dict[int, list[Config]] = field(default_factory=dict)
    data_aware: dict[int, list[Config]] = field(default_factory=dict)
    data_free: dict[int, list[Config]] = field(default_factory=dict)  # rtn's mixes start from its entry

    @property
    def halted(self) -> bool:
        return self.rec.runs >= self.max_runs or (self.stop is not None and self.stop.is_set())

    def run(self, stage: str, bits: int, method: str, params: Mapping[str, Any]) -> Step | None:
        rec = self.rec
        if self.halted:
            return None
        spec = self.session.make_spec(self.model, method, dict(params), bench=self.bench, data=self.data)
        try:
            spec = self.session.validate(spec)
        except WorkbenchError as e:
            rec.skipped.append(f"{method} {dict(params)}: {str(e).splitlines()[0]}")
            return None
        r = self.session.submit(spec)
        step = Step(stage, bits, r, self.budget.misses(r, self.base_ppl), dict(params))
        rec.steps.append(step)
        self.log(f"  {stage:>10} {bits}-bit  {r.method} {_short(r)}: " + ("meets the budget" if step.feasible else
                                                                       "; ".join(step.misses)))
        return step

    def take(self, steps: list[Step]) -> None:
        """The best of the feasible `steps` becomes the best so far if it beats it."""
        rec, key = self.rec, self.budget.key
        better = [s for s in steps if s.feasible and (rec.best is None or key(s.result) < key(rec.best.result))]
        if better:
            rec.best = min(better, key=lambda s: key(s.result))

    def floor(self, bits: int, method: str, params: Mapping[str, Any]) -> float | None:
        """The fewest bytes a `method` candidate with `params` can have: the largest run of this
        width whose asked parameters it extends (mixed precision and data-aware variants only add
        bytes to them). None when no such run succeeded."""
        sizes = [s.result.metrics.get("weights_bytes") for s in self.rec.steps
                 if s.bits == bits and s.result.method == method and s.result.ok
                 and all(params.get(k) == v for k, v in s.asked.items())]
        return max((x for x in sizes if x), default=None)

    def hopeless(self, stage: str, bits: int, method: str, params: Mapping[str, Any]) -> bool:
        """Whether a candidate cannot be smaller than the best so far, so is not run (only when the
        budget ranks configurations by size)."""
        best = self.rec.best
        floor = self.floor(bits, method, params)
        if best is None or floor is None or not self.budget.ranks_by_size:
            return False
        best_bytes = best.result.metrics.get("weights_bytes") or 0.0
        if floor < best_bytes:
            return False
        note = f"{stage} {bits}-bit {method}: not run, it cannot be smaller than {mb(floor)} MB (best: {mb(best_bytes)} MB)"
        if note not in self.rec.skipped:
            self.rec.skipped.append(note)
            self.log(f"  {stage:>10} {bits}-bit  {method}: skipped, it cannot beat {mb(best_bytes)} MB "
                     f"(a run it extends has {mb(floor)} MB)")
        return True

    def close_the_gap(self, bits: int) -> list[Step]:
        """Mixed precision (cheapest), then data-aware methods, while a candidate can still improve.

        Each backend's candidates are listed smallest first, so once one meets the budget the
        same backend's later ones in that stage are not run."""
        found: list[Step] = []

        def attempt(stage: str, method: str, params: Mapping[str, Any]) -> Step | None:
            if any(s.result.method == method and s.stage == stage for s in found):
                return None
            # a method without a run at this width to extend (GPTQ) has no known floor: it is
            # only worth its calibration while nothing at this width met the budget
            if found and self.floor(bits, method, params) is None:
                return None
            if self.hopeless(stage, bits, method, params):
                return None
            step = self.run(stage, bits, method, params)
            if step is not None and step.feasible:
                found.append(step)
                self.take([step])
            return step

        for method, params in self.mixed.get(bits, []):
            attempt("mixed", method, params)
        rtn = next((p for m, p in self.data_free.get(bits, []) if m == "rtn"), None)
        if rtn is not None and not self.hopeless("mixed", bits, "rtn", {**rtn, "exclude": None}):
            for excluded in self._most_sensitive(rtn):
                if attempt("mixed", "rtn", {**rtn, "exclude": ["lm_head", *excluded]}) is None:
                    break
        for method, params in self.data_aware.get(bits, []):
            attempt("data-aware", method, params)
        return found

    def _most_sensitive(self, rtn: Mapping[str, Any]) -> list[list[str]]:
        """The layers to leave in float, most sensitive first, for each count in MIXED_EXCLUDES."""
        try:
            sens = self.session.sensitivity(self.model, "rtn", rtn, data=DataSpec(
                eval_windows=2, window=self.data.window, calib_samples=8, calib_seq_len=self.data.window))
        except WorkbenchError:
            return []
        if sens is None or not sens.ok:
            return []
        from .sensitivity import sensitivity_frame

        order = list(sensitivity_frame(sens)["layer"])
        return [order[:k] for k in MIXED_EXCLUDES if k < len(order)]


def mb(n: float | None) -> str:
    """Bytes as MB, with enough digits to tell tiny test models apart."""
    v = (n or 0) / 2**20
    return f"{v:.1f}" if v >= 10 else f"{v:.3f}"


def _short(r: RunResult) -> str:
    from .result import label

    m = r.metrics
    size = m.get("weights_bytes")
    ppl = m.get("perplexity")
    return (label(r.method, r.params).removeprefix(r.method).strip()
            + (f"  {mb(size)} MB" if size else "") + (f"  ppl {ppl:.3f}" if ppl else ""))
