"""Optimum Intel / OpenVINO against PyTorch on the same machine, in one invocation.

Table 1 (`--model`, default smollm2-135m): PyTorch fp32 eager, the OpenVINO runtime alone
(`ov-export`, f32 and bf16 hints), NNCF int8 and int4 weight-only, and (unless --fast)
int4 with AWQ + scale estimation, the same group size data-free beside it, and static int8.
Decode tokens/s and perplexity as ratios against PyTorch fp32 measured in this run.

Table 2 (unless --fast): all-MiniLM-L6-v2, PyTorch fp32 vs OpenVINO fp32 vs static int8:
embedding cosine against PyTorch fp32, and forward latency.

    .venv/bin/python benchmarks/openvino.py [--model smollm2-135m] [--fast] [--store PATH]

The data-aware runs take 10-20 minutes each on 2 busy cores (docs/backends.md).
"""
from __future__ import annotations

import argparse

from table import print_table, run_all

FAST = [
    ("baseline", {}),
    ("ov-export", {}),
    ("ov-export", {"inference_precision": "bf16"}),
    ("ov-weight", {"bits": 8}),
    ("ov-weight", {"bits": 4, "group_size": 64}),
    ("ov-weight", {"bits": 4, "group_size": 64, "sym": True}),
]
DATA_AWARE = [
    ("ov-weight", {"bits": 4, "group_size": 64, "awq": True, "scale_estimation": True, "dataset": "pydoc-topics"}),
    ("ov-static", {}),
]
ENCODER = [("baseline", {}), ("ov-export", {}), ("ov-static", {"num_samples": 64})]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--fast", action="store_true", help="data-free configurations only, no encoder table")
    ap.add_argument("--store", default=None, help="default: a temporary store (every config runs)")
    args = ap.parse_args()
    configs = FAST + ([] if args.fast else DATA_AWARE)
    print_table(args.model, run_all(args.model, configs, store=args.store))
    if not args.fast:
        print()
        print_table("minilm-l6", run_all("minilm-l6", ENCODER, store=args.store))


if __name__ == "__main__":
    main()
