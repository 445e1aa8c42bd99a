"""AWQ without and with AutoAWQ's fused modules: the Transformers guide's table (Batch Size,
Prefill Length, Decode Length, Prefill tokens/s, Decode tokens/s, Memory) side by side.

Needs CUDA (flash-attn and autoawq-kernels in the gptq environment); without it, it says so and
exits 0. Results go to stdout; keep them in benchmarks/results/awq-fused-DATE.txt.

    .venv/bin/python benchmarks/awq_fused.py [--model smollm2-135m] [--lengths 32 64 128 256 512 1024]
"""
from __future__ import annotations

import argparse
import sys

from table import run_all

from workbench.registry import cuda_present
from workbench.spec import BenchSpec

COLUMNS = ("Batch Size", "Prefill Length", "Decode Length", "Prefill tokens/s", "Decode tokens/s", "Memory (MB)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", nargs="+", type=int, default=[32, 64, 128, 256, 512, 1024])
    ap.add_argument("--decode", type=int, default=256)
    ap.add_argument("--store", default=None)
    args = ap.parse_args()
    if not cuda_present():
        print("awq_fused: AutoAWQ's fused modules need CUDA and this machine has none: nothing measured")
        return 0
    bench = BenchSpec(batch_sizes=(1,), prompt_lengths=tuple(args.lengths), decode_tokens=args.decode,
                      generate_batch_sizes=(1,), warmup=1, repeats=3)
    max_len = max(args.lengths) + args.decode
    base = {"kernel": "gemm", "dataset": "pydoc-topics", "num_samples": 32, "seq_len": 512}
    rows = run_all(args.model, [("awq", {**base, "do_fuse": False}),
                                ("awq", {**base, "do_fuse": True, "fuse_max_seq_len": max_len})],
                   store=args.store, bench=bench, device="cuda")
    for r, title in zip(rows, ("unfused", "fused")):
        print(f"\n{args.model} AWQ 4-bit g64 GEMM, {title}: {r.status.value} {r.kernel or r.error}")
        print(" | ".join(COLUMNS))
        for t in r.tables.get("generation", []):
            print(" | ".join(f"{t.get(c):.1f}" if isinstance(t.get(c), float) else str(t.get(c)) for c in COLUMNS))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
