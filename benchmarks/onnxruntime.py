"""ONNX Runtime against PyTorch on the same machine, in one invocation.

Table 1 (`--model`, default smollm2-135m): PyTorch fp32 eager, the ONNX Runtime export alone
(`ort-export`, checked against PyTorch), MatMulNBits 4-bit at block 32 asym (lm_head fp32 as the
quantizer leaves it; and untied 8-bit with a 4-bit embedding), block 128, and dynamic int8
(per channel: its perplexity is poor on causal LMs, shown here rather than hidden).
Decode tokens/s and perplexity as ratios against PyTorch fp32 measured in this run.

Table 2 (unless --fast): all-MiniLM-L6-v2, PyTorch fp32 vs ORT fp32, dynamic int8 per channel /
per tensor, and static int8 with each calibrator: embedding cosine against PyTorch fp32.

    .venv/bin/python benchmarks/onnxruntime.py [--model smollm2-135m] [--fast] [--store PATH]
"""
from __future__ import annotations

import argparse

from table import print_table, run_all

LLM = [
    ("baseline", {}),
    ("ort-export", {}),
    ("ort-int4", {}),
    ("ort-int4", {"lm_head": "int8", "embedding": True}),
    ("ort-int4", {"block_size": 128}),
    ("ort-dynamic", {}),
]
ENCODER = [
    ("baseline", {}),
    ("ort-export", {}),
    ("ort-dynamic", {}),
    ("ort-dynamic", {"per_channel": False}),
    ("ort-static", {"calibration": "minmax"}),
    ("ort-static", {"calibration": "entropy"}),
    ("ort-static", {"calibration": "percentile"}),
    ("ort-static", {"calibration": "minmax", "exclude": []}),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--fast", action="store_true", help="the causal-LM table only")
    ap.add_argument("--store", default=None, help="default: a temporary store (every config runs)")
    args = ap.parse_args()
    print_table(args.model, run_all(args.model, LLM, store=args.store))
    if not args.fast:
        print()
        print_table("minilm-l6", run_all("minilm-l6", ENCODER, store=args.store))


if __name__ == "__main__":
    main()
