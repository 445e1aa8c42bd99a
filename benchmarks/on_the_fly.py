"""The on-the-fly (no calibration) backends side by side on one model, measured in one session.

Prints one table: weights bytes (measured, and what the backend claims), perplexity, KL and
top-1 against fp32, decode tokens/s as a ratio against fp32 eager measured in the same
invocation, quantize time, and the save-and-reload check.

    .venv/bin/python benchmarks/on_the_fly.py [--model smollm2-135m] [--store PATH] [--only bnb,hqq]
"""
from __future__ import annotations

import argparse

from table import print_table, run_all

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
    configs = [(m, p) for m, p in CONFIGS if not only or m == "baseline" or m in only]
    print_table(args.model, run_all(args.model, configs, store=args.store), claimed=True)


if __name__ == "__main__":
    main()
