"""Peak memory of a run per configuration, against the targets of issue 20, and rtn's quantize time.

    .venv/bin/python benchmarks/memory.py [--no-wide] [--with-ort-int4] [--demo] [--before STORE]

Every run is a cold worker (a fresh process, `Session(warm=False)`) under the standard protocol,
in a temporary store, so each configuration really runs. Printed per run: the run's peak RSS and
the peak of each row of its latency tables (forward per batch size, generation per prompt length,
throughput per batch size), which shows the stage that peaks. MB are 2^20 bytes, as the
workbench's own columns (`peak_rss_mb`); the targets are read the same way (1.1 GB = 1126 MB).

Sections:
- SmolLM2: `baseline` (target 1.1 GB), `ov-weight bits=8` (1.4 GB), `ov-export` (no target);
- the 262,144-token-vocabulary random Llama (`models.tiny.wide_vocab_dir`, 2 layers, hidden 640,
  tied embedding): `baseline` (target: its fp32 weights + 0.8 GB), and `ort-int4` with
  --with-ort-int4 (its ONNX export takes minutes);
- rtn `quantize_s` on SmolLM2 (target 2 s), build only, for the demo's configuration and the
  app's example (`bits=3 group_size=64`);
- --demo: every configuration of `make demo` (cli.DEFAULT_COMPARISON) with its perplexity (accuracy
  only: latency tables, saving and reloading do not change it); with --before STORE each is
  compared with the same configuration's ok run in STORE (a store written by the code before the
  change, on this machine, e.g. `make demo`'s results/workbench.sqlite): 1e-4 relative at most.

A before/after comparison of memory needs two checkouts, so the figures are absolute, against the
targets; the numbers before the change are in the issue (and benchmarks/results/memory-*.txt).
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from workbench.cli import DEFAULT_COMPARISON, _parse_method
from workbench.envs import manager
from workbench.result import RunResult, label
from workbench.session import Session
from workbench.spec import BenchSpec

MB = 2**20
GB = 2**30
SMOL = "smollm2-135m"
BUILD_ONLY = BenchSpec(latency=False, accuracy=False, save=False, reload_check=False)
# The perplexity check of --demo: the latency tables, saving and reloading do not change a perplexity.
ACCURACY_ONLY = BenchSpec(latency=False, save=False, reload_check=False)
RTN_CONFIGS = [{"bits": 4, "group_size": 64, "sym": False}, {"bits": 3, "group_size": 64}]


def wide_vocab_model() -> str:
    """The wide-vocabulary model's directory, built once in the torch environment."""
    proc = subprocess.run([manager.python_for("torch"), "-c",
                           "from workbench.models.tiny import wide_vocab_dir; print(wide_vocab_dir())"],
                          capture_output=True, text=True, env={**manager.worker_env(), "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"building the wide-vocabulary model failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def rows_of(r: RunResult, table: str, key: str) -> str:
    cells = []
    for row in r.tables.get(table) or []:
        mem = row.get("peak_rss_mb", row.get("Memory (MB)"))
        cells.append(f"{row.get(key)}:{mem:.0f}" if mem is not None else f"{row.get(key)}:-")
    return " ".join(cells) or "-"


def report(r: RunResult, target: float | None, what: str) -> bool:
    """Print one run; True when it is ok and within its target (or has none)."""
    m = r.metrics
    peak, weights = m.get("peak_rss_bytes"), m.get("weights_bytes")
    lab = f"{label(r.method, r.params)} on {Path(r.spec['model']['id']).name}"
    if not r.ok or peak is None:
        print(f"{lab:<44} {r.status.value}: {(r.error or '').splitlines()[0][:120] if r.error else ''}")
        return False
    verdict = "no target" if target is None else ("PASS" if peak <= target else "FAIL")
    print(f"{lab:<44} peak {peak / MB:7.0f} MB ({peak / 1e9:4.2f} GB decimal)  weights {weights / MB:6.0f} MB  "
          f"target {what:<24} {verdict}")
    print(f"{'':<44} perplexity {m.get('perplexity', float('nan')):.6f}  forward bs:MB {rows_of(r, 'forward', 'batch_size')}"
          f" | generation len:MB {rows_of(r, 'generation', 'Prefill Length')}"
          f" | throughput bs:MB {rows_of(r, 'throughput', 'batch_size')}")
    notes = [n for n in r.notes if n.startswith("memory:")]
    if notes:
        print(f"{'':<44} {notes[0]}")
    return target is None or peak <= target


def before_perplexities(path: str) -> dict[tuple[str, str, str], float]:
    """(model, method, params JSON) -> perplexity of the ok runs in a store written before the change."""
    found: dict[tuple[str, str, str], float] = {}
    with sqlite3.connect(path) as con:
        for (blob,) in con.execute("SELECT result FROM runs"):
            r = json.loads(blob)
            ppl = (r.get("metrics") or {}).get("perplexity")
            if r.get("status") == "ok" and ppl is not None:
                spec = r["spec"]
                found[(spec["model"]["id"], spec["method"], json.dumps(spec["params"], sort_keys=True))] = ppl
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-wide", action="store_true", help="skip the 262,144-token-vocabulary model")
    ap.add_argument("--with-ort-int4", action="store_true", help="also ort-int4 on the wide-vocabulary model")
    ap.add_argument("--demo", action="store_true", help="every `make demo` configuration, with its perplexity")
    ap.add_argument("--before", default=None, help="a store of the same configurations run before the change")
    args = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        session = Session(store=Path(tmp) / "memory.sqlite", progress=False, warm=False)

        def run(model: str, method: str, params: dict[str, Any], bench: BenchSpec | None = None) -> RunResult:
            t0 = time.perf_counter()
            r = session.submit(session.make_spec(model, method, params, bench=bench), force=True)
            print(f"  ({label(method, params)}: {time.perf_counter() - t0:.0f} s wall)", flush=True)
            return r

        print("SmolLM2-135M, standard protocol, cold workers")
        ok &= report(run(SMOL, "baseline", {}), 1.1 * GB, "1.1 GB (1126 MB)")
        ok &= report(run(SMOL, "ov-weight", {"bits": 8}), 1.4 * GB, "1.4 GB (1434 MB)")
        ok &= report(run(SMOL, "ov-export", {}), None, "-")

        if not args.no_wide:
            wide = wide_vocab_model()
            print(f"\nrandom Llama, 262,144-token vocabulary, hidden 640, 2 layers, tied embedding ({wide})")
            r = run(wide, "baseline", {})
            weights = r.metrics.get("weights_bytes") or 0
            ok &= report(r, weights + 0.8 * GB, f"weights + 0.8 GB ({(weights + 0.8 * GB) / MB:.0f} MB)")
            if args.with_ort_int4:
                report(run(wide, "ort-int4", {}), None, "-")

        print("\nrtn quantize_s on SmolLM2 (build only; target 2 s)")
        for params in RTN_CONFIGS:
            r = run(SMOL, "rtn", params, bench=BUILD_ONLY)
            q = r.metrics.get("quantize_s")
            verdict = "PASS" if q is not None and q <= 2.0 else "FAIL"
            ok &= verdict == "PASS"
            print(f"{label('rtn', params):<44} quantize_s {q if q is not None else float('nan'):6.2f} s  "
                  f"(load_s {r.metrics.get('load_s', float('nan')):.2f} s)  {verdict}")

        if args.demo:
            before = before_perplexities(args.before) if args.before else {}
            print(f"\n`make demo` configurations on SmolLM2, perplexity"
                  + (f" against {args.before} (1e-4 relative)" if args.before else ""))
            for arg in DEFAULT_COMPARISON:
                method, params = _parse_method(arg)
                r = run(SMOL, method, params, bench=ACCURACY_ONLY)
                ppl = r.metrics.get("perplexity")
                key = (SMOL, method, json.dumps(r.spec["params"], sort_keys=True))
                old = before.get(key)
                line = f"{label(method, r.spec['params']):<44} {r.status.value:<8} perplexity {ppl!s:<20}"
                if old is not None and ppl is not None:
                    rel = abs(ppl / old - 1)
                    ok &= rel <= 1e-4
                    line += f" before {old:<20} rel {rel:.1e} {'PASS' if rel <= 1e-4 else 'FAIL'}"
                print(line)
    print("\nall targets met" if ok else "\nsome targets missed")
    # interactive.py runs this as its memory section and reads the exit status.
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
