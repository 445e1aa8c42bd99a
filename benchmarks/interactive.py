"""The interactive loop of issue 20: a click's first number, a quick run, against the path before.

    .venv/bin/python benchmarks/interactive.py [--model smollm2-135m] [--repeats 3] [--before-repeats 3]
        [--sections click,start,memory,demo] [--only rtn,torchao,ov-weight] [--before STORE]

Sections:
- click: for `rtn bits=3 group_size=64`, `torchao int8_weight_only` and `ov-weight bits=8`, what the
  app's Run button does (a `Session.submit` with the `quick` protocol, warm: forked from the
  environment's prepared process, started beforehand as the app does when it opens) timed to the
  first accuracy number (the `accuracy` stage's update, `on_partial`) and to the complete result;
  against the path before (a cold worker, the `standard` protocol, whose first number was its
  result: nothing streamed), measured in the same invocation. Targets: first number 10 s, quick
  run 25 s. The model and its fp32 references (one per protocol's evaluation data) are cached by
  an untimed baseline run of each protocol first.
- start: `benchmarks/worker_overhead.py --sections start` (warm start to build: target 1.0 s).
- memory: `benchmarks/memory.py` (peak RSS of the standard protocol: baseline 1.1 GB,
  ov-weight bits=8 1.4 GB, the 262,144-token-vocabulary model's baseline its weights + 0.8 GB; rtn
  quantize_s 2 s); it prints PASS / FAIL per target itself.
- demo: with it, `memory.py --demo --before STORE`: the perplexities of `make demo`'s configurations
  against a store written before the change (default: the runs `make demo` recorded before the
  change, tests/browser/demo_runs.json).

Every figure is a median over the repeats (min and max beside it); ratios are against the path
before measured here, on the same machine, in the same minutes. The load average is printed at the
end: figures from a loaded machine are slower, not wrong.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from workbench import registry
from workbench.exec import warm
from workbench.exec.base import PartialUpdate
from workbench.result import RunResult
from workbench.session import Session
from workbench.store import ResultStore

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLICKS: list[tuple[str, dict[str, Any]]] = [
    ("rtn", {"bits": 3, "group_size": 64}),
    ("torchao", {"scheme": "int8_weight_only"}),
    ("ov-weight", {"bits": 8}),
]
FIRST_NUMBER_S, QUICK_RUN_S = 10.0, 25.0


def say(text: str) -> None:
    print(text, flush=True)  # as measured: a long benchmark on a loaded machine still reports


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):6.1f} s (min {min(xs):5.1f}, max {max(xs):5.1f})"


def timed_submit(session: Session, model: str, method: str, params: dict[str, Any],
                 protocol: str) -> tuple[float, float, RunResult]:
    """Seconds from submit to the first accuracy number and to the result, and the result."""
    first: list[float] = []
    t0 = time.perf_counter()

    def on_partial(update: PartialUpdate) -> None:
        if not first and update.partial.get("metrics", {}).get("perplexity") is not None:
            first.append(time.perf_counter() - t0)

    r = session.submit(session.make_spec(model, method, params, protocol=protocol), force=True,
                       on_partial=on_partial)
    wall = time.perf_counter() - t0
    if not r.ok:
        raise SystemExit(f"{method} {params} ({protocol}) failed: {r.status.value}: {r.error}")
    return (first[0] if first else wall), wall, r


def clicks(model: str, repeats: int, before_repeats: int, store: Path, only: set[str] | None = None) -> bool:
    chosen = [(m, p) for m, p in CLICKS if not only or m in only]
    warm_session = Session(store=store, progress=False)
    cold_session = Session(store=store, progress=False, warm=False)
    for protocol in ("quick", "standard"):  # the model conversion and both fp32 references, untimed
        r = cold_session.submit(cold_session.make_spec(model, "baseline", protocol=protocol,
                                                       bench={"latency": False, "save": False}), force=True)
        if not r.ok:
            raise SystemExit(f"the untimed baseline ({protocol}) failed: {r.error}")
    families = {registry.get(m).cls.env for m, _ in chosen}
    for method, _ in chosen:  # what the app does when it opens: prepared processes for the form's families
        warm_session.prepare(model, method)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not families <= {
            f for f, s in warm.shared_pool().servers().items() if s.get("state") == "ready"}:
        time.sleep(1)
    say(f"prepared processes: {json.dumps({f: round(s.get('prepare_s') or 0, 1) for f, s in warm.shared_pool().servers().items()})} s to get ready (once per session, not in the figures)")
    ok = True
    say(f"{'configuration':<34} {'first number, quick warm':>34} {'quick run, warm':>34} "
        f"{'before: cold standard run':>34}")
    for method, params in chosen:
        firsts, walls, befores, quantize = [], [], [], []
        for _ in range(before_repeats):
            _, wall, _ = timed_submit(cold_session, model, method, params, "standard")
            befores.append(wall)
        for _ in range(repeats):
            first, wall, r = timed_submit(warm_session, model, method, params, "quick")
            firsts.append(first)
            walls.append(wall)
            quantize.append(r.metrics.get("quantize_s") or 0.0)
        name = f"{method} " + " ".join(f"{k}={v}" for k, v in params.items())
        b = statistics.median(befores)
        f, w = statistics.median(firsts), statistics.median(walls)
        verdict = "PASS" if f <= FIRST_NUMBER_S and w <= QUICK_RUN_S else "FAIL"
        ok &= verdict == "PASS"
        say(f"{name:<34} {med(firsts):>34} {med(walls):>34} {med(befores):>34}  "
            f"{b / f:4.0f}x / {b / w:3.1f}x sooner  {verdict}  (quantize {statistics.median(quantize):.1f} s)")
    pool = warm.shared_pool()
    say(f"runs started cold by the warm session (no prepared process could serve): {pool.cold_fallbacks or 'none'}")
    say(f"targets: first number <= {FIRST_NUMBER_S:.0f} s, quick run <= {QUICK_RUN_S:.0f} s "
        f"(before: the first number was the cold standard run's result)")
    return ok


def demo_store(tmp: Path) -> Path:
    """A store holding the runs `make demo` recorded before the change (tests/browser/demo_runs.json)."""
    path = tmp / "before.sqlite"
    store = ResultStore(path)
    for d in json.loads((ROOT / "tests" / "browser" / "demo_runs.json").read_text()):
        store.append(RunResult.from_dict(d))
    return path


def script(name: str, *args: str) -> int:
    """Run another benchmark of this folder, its output as it comes."""
    say(f"\n$ benchmarks/{name} {' '.join(args)}")
    return subprocess.call([sys.executable, str(HERE / name), *args])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure of the new path (median)")
    ap.add_argument("--before-repeats", type=int, default=3, help="runs per figure of the path before (median)")
    ap.add_argument("--sections", default="click,start,memory,demo")
    ap.add_argument("--only", default="", help="click section: only these methods (comma-separated)")
    ap.add_argument("--before", default=None, help="the store of the demo before the change (default: the "
                                                  "runs recorded in tests/browser/demo_runs.json)")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        if "click" in sections:
            ok &= clicks(args.model, args.repeats, args.before_repeats, Path(tmp) / "bench.sqlite",
                         set(filter(None, args.only.split(","))))
        warm.shared_pool().close()  # the other benchmarks measure memory: no prepared process beside them
        if "start" in sections:
            ok &= script("worker_overhead.py", "--model", args.model, "--repeats", str(args.repeats),
                         "--sections", "start") == 0
        if "memory" in sections or "demo" in sections:
            extra = ["--demo", "--before", args.before or str(demo_store(Path(tmp)))] if "demo" in sections else []
            ok &= script("memory.py", *([] if "memory" in sections else ["--no-wide"]), *extra) == 0
    say(f"\nload average: {os.getloadavg()[0]:.2f} (2 cores)")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
