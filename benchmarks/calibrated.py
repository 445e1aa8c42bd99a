"""The calibration-based methods on one model, in one invocation, against round-to-nearest.

GPTQ's central claim on our model: at 4 bits, group 64, symmetric, error compensation from a
calibration set gives a lower perplexity than plain round-to-nearest (`rtn`). AWQ (AutoAWQ,
run by GPTQModel's CPU kernels) and llm-compressor's recipes (W8A8, W4A16 RTN / GPTQ, saved as
compressed-tensors and reloaded) on the same windows. Each calibration run takes minutes here.

    .venv/bin/python benchmarks/calibrated.py [--model smollm2-135m] [--store PATH] [--no-awq | --only METHOD...]
"""
from __future__ import annotations

import argparse

from table import print_table, run_all

CALIB = {"dataset": "pydoc-topics", "num_samples": 32, "seq_len": 512}
CONFIGS = [
    ("baseline", {}),
    ("rtn", {"bits": 4, "group_size": 64, "sym": True}),
    ("gptq", {"bits": 4, "group_size": 64, "sym": True, **CALIB}),
    ("llmcompressor", {"scheme": "W8A8"}),
    ("llmcompressor", {"scheme": "W4A16", "group_size": 64}),
    ("llmcompressor", {"scheme": "W4A16", "group_size": 64, "modifier": "gptq", **CALIB}),
]
# AutoAWQ searches scales and clipping on every block over a grid: about 30-40 s per SmolLM2 layer
# on a quiet 2-core machine (20 min for the 30 layers), 2.5 min when the machine is shared.
AWQ = ("awq", {"group_size": 64, "dataset": "pydoc-topics", "num_samples": 16, "seq_len": 256})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--store", default=None, help="default: a temporary store (every config runs)")
    ap.add_argument("--no-awq", action="store_true", help="leave out AWQ (the slowest, ~20 min here)")
    ap.add_argument("--only", nargs="+", default=None, metavar="METHOD",
                    help="the baseline and these methods only (e.g. --only awq)")
    args = ap.parse_args()
    configs = CONFIGS + ([] if args.no_awq else [AWQ])
    if args.only:
        configs = [configs[0]] + [c for c in configs[1:] if c[0] in args.only]
    print_table(args.model, run_all(args.model, configs, store=args.store))


if __name__ == "__main__":
    main()
