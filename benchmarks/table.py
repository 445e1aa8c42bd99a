"""Run a list of configurations in one session and print them as one table, ratios against the
first configuration (the baseline measured in the same invocation: timings on a shared machine
are only comparable within a run)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

from workbench.result import RunResult, label
from workbench.session import Session
from workbench.spec import BenchSpec

# Batch 1, one prompt length, 32 new tokens, median of 3: enough for a decode speed, quick enough to compare many.
DECODE_BENCH = BenchSpec(batch_sizes=(1,), prompt_lengths=(32,), decode_tokens=32, generate_batch_sizes=(1,),
                         warmup=1, repeats=3)


def run_all(model: str, configs: Sequence[tuple[str, dict[str, Any]]], *, store: str | None = None,
            bench: BenchSpec = DECODE_BENCH, device: str = "cpu") -> list[RunResult]:
    """Every configuration on `model`, forced (never from the store: ratios need one session)."""
    with tempfile.TemporaryDirectory() as tmp:
        session = Session(store=store or Path(tmp) / "bench.sqlite")
        return [session.submit(session.make_spec(model, m, p, bench=bench, device=device), force=True)
                for m, p in configs]


def print_table(model: str, rows: list[RunResult], *, claimed: bool = False) -> None:
    """One line per run: memory, accuracy, decode speed as a ratio against the first row, timings."""
    base = rows[0] if rows and rows[0].ok else None
    base_decode = base.metrics.get("decode_tok_s") if base else None
    base_ppl = base.metrics.get("perplexity") if base else None
    encoder = any("embedding_cosine" in r.metrics for r in rows)
    acc = f"{'cosine':>8} {'min':>7}" if encoder else f"{'ppl':>8} {'x ppl':>6} {'KL':>7} {'top-1':>6}"
    head = (f"{'configuration':<46} {'status':<9} {'weights MB':>10} " + (f"{'claimed MB':>10} " if claimed else "")
            + f"{acc} {'decode tok/s':>12} {'x base':>6} {'fwd ms':>7} {'quant s':>7} {'compile s':>9}  notes")
    print(f"model {model}; ratios against {label(rows[0].method, rows[0].params) if rows else '-'} in this run; "
          f"{DECODE_BENCH.decode_tokens} new tokens after a {DECODE_BENCH.prompt_lengths[0]}-token prompt at batch 1, "
          f"median of {DECODE_BENCH.repeats}")
    print(head)
    print("-" * len(head))
    nan = float("nan")
    for r in rows:
        m = r.metrics
        lab = label(r.method, r.params)[:46]
        if not r.ok and not m.get("weights_bytes"):
            print(f"{lab:<46} {r.status.value:<9} {(r.error or '').splitlines()[0][:100] if r.error else ''}")
            continue
        dec = m.get("decode_tok_s")
        ratio = f"{dec / base_decode:6.2f}" if dec and base_decode else "     -"
        if encoder:
            acc = f"{m.get('embedding_cosine', nan):8.4f} {m.get('embedding_cosine_min', nan):7.4f}"
        else:
            ppl = m.get("perplexity", nan)
            acc = (f"{ppl:8.3f} {(ppl / base_ppl if base_ppl else nan):6.3f} {m.get('kl_div') or 0:7.4f} "
                   f"{100 * (m.get('top1_agreement') or 0):5.1f}%")
        cl = m.get("weights_bytes_claimed")
        note = next((n for n in r.notes if n.startswith(("reload check", "not saved"))), "")
        if r.error:
            note = r.error.splitlines()[0]
        print(f"{lab:<46} {r.status.value:<9} {m['weights_bytes'] / 2**20:10.1f} "
              + (f"{(cl / 2**20 if cl else nan):10.1f} " if claimed else "")
              + f"{acc} {(dec or nan):12.2f} {ratio} {m.get('forward_ms') or nan:7.1f} "
              f"{m.get('quantize_s') or 0:7.1f} {m.get('compile_s') or nan:9.1f}  {note[:70]}")
