"""What the workbench itself costs, cold and warm, and how noisy its decode numbers are.

Prints:
  1. worker start to the method's build (submit until the worker reports its `build` stage) and
     the whole wall time of a run that measures nothing (start, imports, model load from the
     converted cache), cold (a fresh `python -m workbench.worker`) and warm (forked from the
     environment's prepared process, `workbench.exec.warm`), median of the repeats; what the
     prepared process took to get ready (not in the warm figures: it is paid once per session);
  2. peak RSS of a baseline run of the same spec cold and warm (tiny-llama and the model),
     `--rss-protocol` (quick by default): a warm run's figure must be a cold run's;
  3. the time a repeated spec takes when the store answers it (cache hit);
  4. decode tokens/s of the same spec over separate forced runs: median and spread.

    .venv/bin/python benchmarks/worker_overhead.py [--model smollm2-135m] [--repeats 3] [--rss-protocol quick]
        [--sections start,rss,decode]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from workbench import registry
from workbench.exec import warm
from workbench.session import Session
from workbench.spec import BenchSpec


def start_times(session: Session, model: str, method: str, bench: BenchSpec, repeats: int) -> tuple[list, list, list]:
    """Per repeat: seconds from submit to the worker's build stage, of the whole run, of the model load."""
    to_build, wall, loads = [], [], []
    for _ in range(repeats):
        marks: dict[str, float] = {}
        t0 = time.perf_counter()

        def progress(stage: str, _fraction: object, _message: str) -> None:
            marks.setdefault(stage, time.perf_counter() - t0)

        r = session.submit(session.make_spec(model, method, bench=bench), force=True, progress=progress)
        wall.append(time.perf_counter() - t0)
        assert r.ok, r.error
        to_build.append(marks.get("build", float("nan")))
        loads.append(r.metrics.get("load_s") or float("nan"))
    return to_build, wall, loads


def peak_rss(session: Session, model: str, protocol: str) -> float:
    r = session.submit(session.make_spec(model, "baseline", protocol=protocol), force=True)
    assert r.ok, r.error
    return r.metrics["peak_rss_bytes"] / 2**20


def med(xs: list) -> str:
    return f"{statistics.median(xs):6.2f} s (min {min(xs):.2f}, max {max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="baseline")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rss-protocol", default="quick", help="the protocol of the peak RSS runs (quick, standard, full)")
    ap.add_argument("--sections", default="start,rss,decode", help="which of start, rss, decode to measure")
    args = ap.parse_args()

    sections = set(args.sections.split(","))

    def say(text: str) -> None:
        print(text, flush=True)  # as measured: a long benchmark on a loaded machine still reports

    say(f"model {args.model}, method {args.method}, {args.repeats} repeats")
    with tempfile.TemporaryDirectory() as tmp:
        session = Session(store=Path(tmp) / "bench.sqlite", progress=False)
        cold_session = Session(store=Path(tmp) / "bench.sqlite", progress=False, warm=False)
        nothing = BenchSpec(latency=False, accuracy=False, save=False)
        # Warm the model cache (conversion of the embedded model happens once, outside the timing)
        # and start the prepared process: paid once per session, not per run.
        t0 = time.perf_counter()
        session.submit(session.make_spec(args.model, args.method, bench=nothing), force=True)
        first_warm = time.perf_counter() - t0
        prepared = warm.shared_pool().servers().get(registry.get(args.method).cls.env, {})
        say(f"{'prepared process ready (once)':<40} {prepared.get('prepare_s', float('nan')):6.2f} s in the process "
            f"(warm-up load {prepared.get('warm_up_s') or float('nan'):.2f} s); first warm run {first_warm:.2f} s")

        if "start" in sections:
            cold_build, cold_wall, cold_loads = start_times(cold_session, args.model, args.method, nothing, args.repeats)
            warm_build, warm_wall, warm_loads = start_times(session, args.model, args.method, nothing, args.repeats)
            say(f"{'worker start to build, cold':<40} median {med(cold_build)}")
            say(f"{'worker start to build, warm':<40} median {med(warm_build)}")
            say(f"{'whole run measuring nothing, cold':<40} median {med(cold_wall)}")
            say(f"{'whole run measuring nothing, warm':<40} median {med(warm_wall)}")
            say(f"{'  of which model load, cold / warm':<40} median {statistics.median(cold_loads):6.2f} s / "
                f"{statistics.median(warm_loads):.2f} s")

        if "rss" in sections:
            for m in ("tiny-llama", args.model):
                peak_rss(session, m, args.rss_protocol)  # the first baseline run computes the reference: not measured
                cold_mb, warm_mb = peak_rss(cold_session, m, args.rss_protocol), peak_rss(session, m, args.rss_protocol)
                say(f"{'peak RSS baseline ' + m + ' (' + args.rss_protocol + ')':<40} cold {cold_mb:7.1f} MB  "
                    f"warm {warm_mb:7.1f} MB  ({100 * (warm_mb / cold_mb - 1):+.1f}%)")

        t0 = time.perf_counter()
        hit = session.submit(session.make_spec(args.model, args.method, bench=nothing))
        assert hit.cached
        say(f"{'cache hit for a repeated spec':<40} {(time.perf_counter() - t0) * 1000:8.1f} ms")

        if "decode" in sections:
            decode_bench = BenchSpec(accuracy=False, save=False, batch_sizes=(1,), prompt_lengths=(32,),
                                     decode_tokens=32, generate_batch_sizes=(1,), warmup=1, repeats=3)
            decode = []
            for _ in range(args.repeats):
                r = session.submit(session.make_spec(args.model, args.method, bench=decode_bench), force=True)
                assert r.ok, r.error
                decode.append(r.metrics["decode_tok_s"])
            unmeasurable = decode.count(None)  # noise made decode time <= prefill time (see the run's table note)
            decode = [d for d in decode if d is not None] or [float("nan")]
            decode_med = statistics.median(decode)
            say(f"{'decode tokens/s over separate runs':<40} median {decode_med:6.2f}  min {min(decode):.2f}  "
                f"max {max(decode):.2f}  spread {100 * (max(decode) - min(decode)) / decode_med:.1f}%"
                + (f"  ({unmeasurable} run(s) too noisy to measure)" if unmeasurable else ""))
    say(f"load average during the benchmark: {os.getloadavg()[0]:.2f} (2 cores)")


if __name__ == "__main__":
    main()
