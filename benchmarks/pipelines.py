"""OpenVINO pipelines in one invocation: the fp32 IR (`ov-export`), weight-only int8 and int4, and
the data-aware mode (diffusion: hybrid; speech and vision-language: static int8), per pipeline.

Speed is a ratio against `ov-export` in the same run (the PyTorch pipeline is the accuracy
reference, not a method). On the tiny random pipelines (the defaults) the numbers show the
mechanics, not what a real model gains: pass hub ids or local directories for that, e.g.

    .venv/bin/python benchmarks/pipelines.py [--sd tiny-sd] [--speech tiny-whisper] [--vlm tiny-vlm]
    .venv/bin/python benchmarks/pipelines.py --sd /models/stable-diffusion-v1-5 --speech openai/whisper-tiny
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from workbench.result import RunResult, label
from workbench.session import Session
from workbench.spec import BenchSpec

BENCH = BenchSpec(warmup=1, repeats=3)


def configs(kind: str) -> list[tuple[str, dict]]:
    data = {"dataset": "pydoc-topics" if kind == "sd" else "synthetic", "num_samples": 32}
    return [("ov-export", {}), ("ov-hybrid", {}), ("ov-hybrid", {"bits": 4, "group_size": 32}), ("ov-hybrid", data)]


def print_rows(model: str, rows: list[RunResult]) -> None:
    base = rows[0] if rows and rows[0].ok else None
    image = any("image_s" in r.metrics for r in rows)
    speed = "image_s" if image else "decode_tok_s"
    print(f"\nmodel {model}; speed ratio against {label(rows[0].method, rows[0].params)} in this run "
          f"(median of {BENCH.repeats})")
    acc = f"{'PSNR dB':>8} {'RMSE':>7}" if image else f"{'KL':>8} {'top-1':>6} {'gen':>6}"
    head = (f"{'configuration':<44} {'status':<9} {'weights MB':>10} {acc} "
            f"{'s/image' if image else 'decode tok/s':>12} {'x fp32':>6} {'quant s':>7}  layers")
    print(head)
    print("-" * len(head))
    nan = float("nan")
    for r in rows:
        m = r.metrics
        lab = label(r.method, r.params)[:44]
        if not r.ok:
            print(f"{lab:<44} {r.status.value:<9} {(r.error or '').splitlines()[0][:100] if r.error else ''}")
            continue
        if image:
            a = f"{m.get('image_psnr_db', nan):8.2f} {m.get('image_rmse', nan):7.4f}"
        else:
            a = (f"{m.get('kl_div', nan):8.4f} {100 * m.get('top1_agreement', nan):5.1f}% "
                 f"{100 * m.get('generated_token_agreement', nan):5.1f}%")
        v, b = m.get(speed), base.metrics.get(speed) if base else None
        # Faster is a smaller s/image and a larger tok/s: the ratio reads "x as fast" either way.
        ratio = (b / v if image else v / b) if v and b else nan
        print(f"{lab:<44} {r.status.value:<9} {m['weights_bytes'] / 2**20:10.2f} {a} {v or nan:12.3f} "
              f"{ratio:6.2f} {m.get('quantize_s') or 0:7.1f}  {r.layers_quantized}/{r.layers_eligible}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd", default="tiny-sd")
    ap.add_argument("--speech", default="tiny-whisper")
    ap.add_argument("--vlm", default="tiny-vlm")
    ap.add_argument("--store", default=None, help="default: a temporary store (every config runs)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        session = Session(store=args.store or Path(tmp) / "bench.sqlite")
        for kind, model in (("sd", args.sd), ("speech", args.speech), ("vlm", args.vlm)):
            rows = [session.submit(session.make_spec(model, m, p, bench=BENCH), force=True) for m, p in configs(kind)]
            print_rows(model, rows)


if __name__ == "__main__":
    main()
