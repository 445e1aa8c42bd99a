"""What the workbench itself costs, and how noisy its decode numbers are.

Prints:
  1. worker start + cached model load: wall time of one run that measures nothing
     (fresh process, imports, model load from the converted cache), and the load time
     the worker reports;
  2. the time a repeated spec takes when the store answers it (cache hit);
  3. decode tokens/s of the same spec over 3 forced runs: median and spread.

    .venv/bin/python benchmarks/worker_overhead.py [--model smollm2-135m] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from workbench.session import Session
from workbench.spec import BenchSpec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="baseline")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        session = Session(store=Path(tmp) / "bench.sqlite", progress=False)
        nothing = BenchSpec(latency=False, accuracy=False, save=False)
        # Warm the model cache (conversion of the embedded model happens once, outside the timing).
        session.submit(session.make_spec(args.model, args.method, bench=nothing), force=True)

        starts, loads = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            r = session.submit(session.make_spec(args.model, args.method, bench=nothing), force=True)
            starts.append(time.perf_counter() - t0)
            loads.append(r.metrics.get("load_s") or float("nan"))
            assert r.ok, r.error

        t0 = time.perf_counter()
        hit = session.submit(session.make_spec(args.model, args.method, bench=nothing))
        cache_hit_s = time.perf_counter() - t0
        assert hit.cached

        decode_bench = BenchSpec(accuracy=False, save=False, batch_sizes=(1,), prompt_lengths=(32,),
                                 decode_tokens=32, generate_batch_sizes=(1,), warmup=1, repeats=3)
        decode = []
        for _ in range(args.repeats):
            r = session.submit(session.make_spec(args.model, args.method, bench=decode_bench), force=True)
            assert r.ok, r.error
            decode.append(r.metrics["decode_tok_s"])

    unmeasurable = decode.count(None)  # noise made decode time <= prefill time (see the run's table note)
    decode = [d for d in decode if d is not None] or [float("nan")]
    med = statistics.median(decode)
    print(f"model {args.model}, method {args.method}, {args.repeats} repeats")
    print(f"{'worker start + cached load (wall)':<40} median {statistics.median(starts):6.2f} s  "
          f"(min {min(starts):.2f}, max {max(starts):.2f})")
    print(f"{'  of which model load (worker)':<40} median {statistics.median(loads):6.2f} s")
    print(f"{'cache hit for a repeated spec':<40} {cache_hit_s * 1000:8.1f} ms")
    print(f"{'decode tokens/s over separate runs':<40} median {med:6.2f}  min {min(decode):.2f}  max {max(decode):.2f}"
          f"  spread {100 * (max(decode) - min(decode)) / med:.1f}%"
          + (f"  ({unmeasurable} run(s) too noisy to measure)" if unmeasurable else ""))
    print(f"load average during the benchmark: {os.getloadavg()[0]:.2f} (2 cores)")


if __name__ == "__main__":
    main()
