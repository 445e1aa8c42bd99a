"""ONNX Runtime's calibrators on the inputs of chosen Linear layers (onnx environment side).

    python -m workbench.methods.ort.ranges MODEL OUT.json LAYER [LAYER ...] --samples N --seq-len L
                                           [--calibration minmax|entropy|percentile]

The same calibration samples as `teach.capture` (the calibration half of the default text,
one sample at a time, truncated to L tokens) go through the model's fp32 ONNX export and
`ort-static`'s calibration loop; OUT.json gets {layer: [lowest, highest]} of each layer's
input tensor (the first input of its MatMul). `teach.tensors.ort_ranges` runs it for the
notebook kernel, which compares these ranges with its own observers on the same tensors.
Encoders only, like `ort-static` (the causal-LM export takes the KV cache as inputs).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def ranges(model: str, layers: list[str], samples: int, seq_len: int, calibration: str) -> dict[str, list[float]]:
    from ...data.splits import calibration_samples
    from ...models import catalog
    from ...spec import DataSpec, ModelSpec, RunSpec
    from ...measure.context import BuildContext
    from . import runtime
    from .dynamic import quantization_config
    from .static import ORTStatic, calibrate

    spec = RunSpec(model=ModelSpec(model), method="ort-static")
    info = catalog.describe(spec.model)
    if info.kind != "encoder":
        raise SystemExit(f"model: {model} is a {info.kind}; ORT calibration ranges are computed for encoders")
    with tempfile.TemporaryDirectory(prefix="wb-ranges-") as tmp:
        ctx = BuildContext(spec, info, Path(tmp), report=lambda *a, **k: None)
        exported = runtime.exported(ctx)
        graph = runtime.read_graph(exported.model_file, with_weights=False).graph
        inputs = {n.name: n.input[0] for n in graph.node if n.op_type == "MatMul"}
        tensors = {}
        for layer in layers:
            node = runtime.matmul_node(layer)
            if node not in inputs:
                raise SystemExit(f"layers: no MatMul {node} for {layer} in the ONNX export of {model}")
            tensors[layer] = inputs[node]
        p = ORTStatic().values({"calibration": calibration, "operators": ["MatMul"], "exclude": [],
                                "num_samples": samples})
        texts = calibration_samples(ctx.tokenizer(), DataSpec(calib_samples=samples, calib_seq_len=seq_len))
        _, found = calibrate(ctx, exported, texts, p, quantization_config(p, True, []), seq_len=seq_len)
        return {layer: [float(v.item()) for v in found[t].range_value] for layer, t in tensors.items()}


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(prog="python -m workbench.methods.ort.ranges")
    a.add_argument("model")
    a.add_argument("out")
    a.add_argument("layers", nargs="+")
    a.add_argument("--samples", type=int, default=8)
    a.add_argument("--seq-len", type=int, default=128)
    a.add_argument("--calibration", choices=("minmax", "entropy", "percentile"), default="minmax")
    args = a.parse_args(argv)
    out = ranges(args.model, args.layers, args.samples, args.seq_len, args.calibration)
    Path(args.out).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
