"""The on-the-fly (no calibration) backends side by side on one model, measured in one session.

Prints one table: weights bytes (measured, and what the backend claims), perplexity, KL and
top-1 against fp32, decode tokens/s as a ratio against fp32 eager measured in the same
invocation, quantize time, and the save-and-reload check.

    .venv/bin/python benchmarks/on_the_fly.py [--model smollm2-135m] [--store PATH] [--only bnb,hqq]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from workbench.result import label
from workbench.session import Session
from workbench.spec import BenchSpec

CONFIGS = [
    ("baseline", {}),
    ("bnb", {"bits": 8, "llm_int8_threshold": 6.0}),
    ("bnb", {"bits": 8, "llm_int8_threshold": 2.0}),
    ("bnb", {"bits": 4, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}),
    ("torchao", {"scheme": "int8_weight_only"}),
    ("torchao", {"scheme": "int8_dynamic"}),
    ("hqq", {"nbits": 4, "group_size": 64}),
    ("hqq", {"nbits": 8, "group_size": 64}),
    ("quanto", {"weights": "int8"}),
    ("quanto", {"weights": "int4"}),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--store", default=None, help="default: a temporary store (every config runs)")
    ap.add_argument("--only", default="", help="comma-separated method names (baseline always runs)")
    args = ap.parse_args()
    only = {m for m in args.only.split(",") if m}
    bench = BenchSpec(batch_sizes=(1,), prompt_lengths=(32,), decode_tokens=32, generate_batch_sizes=(1,),
                      warmup=1, repeats=3)
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / "bench.sqlite"
        session = Session(store=store)
        rows = []
        for method, params in CONFIGS:
            if only and method != "baseline" and method not in only:
                continue
            # force: the ratio is only meaningful against a baseline timed in the same invocation
            r = session.submit(session.make_spec(args.model, method, params, bench=bench), force=True)
            rows.append(r)
    base = next((r for r in rows if r.method == "baseline" and r.ok), None)
    base_decode = base.metrics.get("decode_tok_s") if base else None
    head = f"{'configuration':<46} {'status':<15} {'weights MB':>10} {'claimed MB':>10} {'ppl':>8} {'KL':>7} " \
           f"{'top-1':>6} {'decode tok/s':>12} {'x fp32':>6} {'quant s':>7}  reload"
    print(f"model {args.model}; decode at batch 1, prompt 32, 32 new tokens, median of 3")
    print(head)
    print("-" * len(head))
    for r in rows:
        m = r.metrics
        lab = label(r.method, r.params)[:46]
        if not r.ok:
            print(f"{lab:<46} {r.status.value:<15} {(r.error or '').splitlines()[0][:80]}")
            continue
        dec = m.get("decode_tok_s")
        ratio = f"{dec / base_decode:6.2f}" if dec and base_decode else "     -"
        claimed = m.get("weights_bytes_claimed")
        reload = next((n for n in r.notes if n.startswith(("reload check", "not saved"))), "")
        if r.status.value == "reload_mismatch":
            reload = (r.error or "")[:60]
        print(f"{lab:<46} {r.status.value:<15} {m['weights_bytes'] / 2**20:10.1f} "
              f"{(claimed / 2**20 if claimed else float('nan')):10.1f} {m.get('perplexity', float('nan')):8.3f} "
              f"{m.get('kl_div') or 0:7.4f} {100 * (m.get('top1_agreement') or 0):5.1f}% "
              f"{(dec or float('nan')):12.2f} {ratio} {m.get('quantize_s') or 0:7.1f}  {reload[:70]}")


if __name__ == "__main__":
    main()
