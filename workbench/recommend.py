"""Budget search: the configuration to ship for a model under a perplexity, size or speed budget.

    workbench recommend --model smollm2-135m --max-ppl-increase 10% [--max-bytes 120MB] [--min-decode-tok-s 20]

The search walks down a ladder of bit widths (8, 6, 5, 4, 3). At each width it first runs the
fast data-free configurations of several backends. When none of them meets the budget but the
best misses it by less than `NEAR_MISS` times the allowed perplexity increase, it tries what can
close the gap at that width, cheapest first: mixed precision (layer sensitivity of `rtn` at that
width, then the most sensitive layers left in float) and then data-aware methods (AWQ with scale
estimation in NNCF, GPTQ). With a perplexity budget it stops at the first width where nothing
meets it (fewer bits only lose accuracy); with only a size budget, at the first width that fits
but does not improve perplexity. Every run is a normal stored run, so a second search with
another budget reuses them.

Among the configurations that meet every constraint, the recommendation is the one with the
fewest weight bytes (the lowest perplexity when the only constraint is `max_bytes`).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .errors import InvalidParams, ParamError, WorkbenchError
from .result import RunResult
from .spec import BenchSpec, DataSpec

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session

# The light protocol: budgets are relative to the fp32 baseline measured the same way.
DATA = DataSpec(eval_windows=4, window=256)
BENCH = BenchSpec(latency=False, save=False, reload_check=False)
SPEED_BENCH = BenchSpec(batch_sizes=(1,), prompt_lengths=(32,), decode_tokens=16, generate_batch_sizes=(1,),
                        repeats=2, save=False, reload_check=False)
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
DATA_AWARE: dict[int, list[Config]] = {
    4: [("ov-weight", {"bits": 4, "group_size": 64, "awq": True, "scale_estimation": True,
                       "dataset": "pydoc-topics"}),
        ("gptq", {"bits": 4, "group_size": 64, "sym": True, "dataset": "pydoc-topics"})],
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

    def key(self, r: RunResult) -> tuple[float, float]:
        """Smaller is better among feasible runs."""
        size, ppl = r.metrics.get("weights_bytes") or 0.0, r.metrics.get("perplexity") or float("inf")
        if self.max_bytes is not None and self.max_ppl_increase is None:
            return (ppl, size)
        return (size, ppl)

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

    @property
    def runs(self) -> int:
        return len(self.steps)

    def code(self) -> str:
        if self.best is None:
            return ""
        from . import registry

        r = self.best.result
        return registry.get(r.method).cls().code(self.model, r.params)


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


def recommend(session: "Session", model: str, budget: Budget, *, data: DataSpec = DATA,
              max_runs: int = 40, log: Callable[[str], None] = print) -> Recommendation:
    """Search the ladder for `model` under `budget` (see the module docstring)."""
    start = time.monotonic()
    bench = SPEED_BENCH if budget.min_decode_tok_s is not None else BENCH
    baseline = session.run(model, "baseline", bench=bench, data=data)
    if not baseline.ok or baseline.metrics.get("perplexity") is None:
        raise WorkbenchError(f"recommend: the fp32 baseline of {model} did not run ({baseline.status.value}: "
                             f"{baseline.error}); the budget is relative to it")
    base_ppl = float(baseline.metrics["perplexity"])
    rec = Recommendation(model=model, budget=budget, baseline=baseline)
    rec.space = sum(len(v) for v in DATA_FREE.values()) + sum(len(v) for v in DATA_AWARE.values()) \
        + len(MIXED_EXCLUDES) * len(DATA_FREE)
    limit = budget.ppl_limit(base_ppl)
    log(f"fp32 baseline: perplexity {base_ppl:.3f}, {mb(baseline.metrics['weights_bytes'])} MB; "
        f"budget: {budget.describe()}" + (f" (perplexity <= {limit:.3f})" if limit else ""))

    def run(stage: str, bits: int, method: str, params: Mapping[str, Any]) -> Step | None:
        if rec.runs >= max_runs:
            return None
        spec = session.make_spec(model, method, dict(params), bench=bench, data=data)
        try:
            spec = session.validate(spec)
        except WorkbenchError as e:
            rec.skipped.append(f"{method} {dict(params)}: {str(e).splitlines()[0]}")
            return None
        r = session.submit(spec)
        step = Step(stage, bits, r, budget.misses(r, base_ppl))
        rec.steps.append(step)
        log(f"  {stage:>10} {bits}-bit  {r.method} {_short(r)}: " + ("meets the budget" if step.feasible else
                                                                  "; ".join(step.misses)))
        return step

    for bits in sorted(DATA_FREE, reverse=True):
        if rec.runs >= max_runs:
            rec.stopped = f"stopped at the run limit ({max_runs})"
            break
        here = [s for s in (run("data-free", bits, m, p) for m, p in DATA_FREE[bits]) if s is not None]
        feasible = [s for s in here if s.feasible]
        if not feasible and limit is not None:
            ok = [s for s in here if s.result.ok and s.result.metrics.get("perplexity")]
            nearest = min(ok, key=lambda s: s.result.metrics["perplexity"], default=None)
            allowed = limit - base_ppl
            if nearest is not None and nearest.result.metrics["perplexity"] - limit <= NEAR_MISS * allowed:
                feasible = _close_the_gap(session, model, bits, data, run)
        improved = [s for s in feasible if rec.best is None or budget.key(s.result) < budget.key(rec.best.result)]
        if improved:
            rec.best = min(improved, key=lambda s: budget.key(s.result))
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


def _close_the_gap(session: "Session", model: str, bits: int, data: DataSpec,
                   run: Callable[..., Step | None]) -> list[Step]:
    """Mixed precision (cheapest), then data-aware methods, until one meets the budget."""
    rtn = next((p for m, p in DATA_FREE[bits] if m == "rtn"), None)
    if rtn is not None:
        try:
            sens = session.sensitivity(model, "rtn", rtn, data=DataSpec(
                eval_windows=2, window=data.window, calib_samples=8, calib_seq_len=data.window))
        except WorkbenchError:
            sens = None
        if sens is not None and sens.ok:
            from .sensitivity import sensitivity_frame

            order = list(sensitivity_frame(sens)["layer"])
            for k in MIXED_EXCLUDES:
                if k >= len(order):
                    break
                step = run("mixed", bits, "rtn", {**rtn, "exclude": ["lm_head", *order[:k]]})
                if step is not None and step.feasible:
                    return [step]
    for method, params in DATA_AWARE.get(bits, []):
        step = run("data-aware", bits, method, params)
        if step is not None and step.feasible:
            return [step]
    return []


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
