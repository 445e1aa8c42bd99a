"""Worker-side ONNX Runtime plumbing shared by the `ort-*` methods.

Runs only in the `onnx` environment (optimum-onnx, onnxruntime and onnx are imported inside
the functions). What lives here:

- the fp32 ONNX export of a model, done once per model, library versions and config handling,
  in a child process, cached under `$WORKBENCH_HOME/onnx`; every ORT run starts from it;
- the config differences between the transformers 5 checkpoints the workbench writes and
  the transformers 4.57 this environment must use (optimum-onnx pins it): transformers 4.57
  reads `rope_theta` / `rope_scaling` at the top level of config.json and ignores v5's
  `rope_parameters`, so an export would silently use the default theta (docs/backends.md). The
  export reads both and writes what v4 understands (`harmonize_config`);
- loading an exported or quantized model as an optimum `ORTModel` (CPU provider);
- counting what a graph holds: weight-carrying MatMuls and embedding Gathers, which of them
  hold integer weights (dynamic int8, QDQ static int8, MatMulNBits 4-bit), the bytes of
  every initializer.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ...envs.child import check_module
from .. import export_cache
from ..export_cache import ExportFormat, export_dir, export_once

if TYPE_CHECKING:  # pragma: no cover - typing only: listing methods stays torch-free
    from ...measure.context import BuildContext

MANIFEST = "workbench-onnx.json"
EXPORT_VERSION = 1
MODEL_FILE = "model.onnx"
QUANTIZED_FILE = "model_quantized.onnx"  # what ORTQuantizer writes
TASKS = {"causal-lm": "text-generation-with-past", "encoder": "feature-extraction"}
PROVIDER = "CPUExecutionProvider"

# Files next to the model that the ORTModel classes and the tokenizer read.
_SIDE_FILES = ("config.json", "generation_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
               "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def model_class(kind: str) -> Any:
    """The optimum-onnx class for a workbench model kind."""
    from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForFeatureExtraction

    classes = {"causal-lm": ORTModelForCausalLM, "encoder": ORTModelForFeatureExtraction}
    if kind not in classes:
        raise ValueError(f"model kind {kind!r}: ONNX Runtime methods take {', '.join(classes)}")
    return classes[kind]


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("optimum-onnx", "optimum", "onnxruntime", "onnx", "transformers", "torch")}


# --------------------------------------------------------------------------- config differences


def harmonize_config(config: dict, seen: Any, reader: str = "this transformers") -> tuple[dict, list[str]]:
    """config.json as transformers 4.57 must read it to build the same model as transformers 5.

    `config` is the checkpoint's config.json; `seen` is what this transformers made of it
    (`AutoConfig.from_pretrained`). transformers 5 writes RoPE settings in `rope_parameters`
    ({"rope_type", "rope_theta", scaling fields}); 4.57 reads only the top-level `rope_theta`
    and `rope_scaling` and silently falls back to theta 10000 without them. Returns the config
    to export with (a copy, changed only where the two disagree) and one note per change.
    """
    params = config.get("rope_parameters")
    if not isinstance(params, dict):
        return config, []
    fixed = dict(config)
    notes = []
    theta = params.get("rope_theta")
    have = getattr(seen, "rope_theta", None)
    if theta is not None and (have is None or float(have) != float(theta)):
        fixed["rope_theta"] = theta
        notes.append(f"config: rope_parameters.rope_theta={theta} but {reader} reads rope_theta={have}; "
                     f"exported with rope_theta={theta}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in (None, "default"):
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        scaling.setdefault("rope_type", rope_type)
        if getattr(seen, "rope_scaling", None) != scaling:
            fixed["rope_scaling"] = scaling
            notes.append(f"config: rope_parameters type {rope_type!r} written as rope_scaling={scaling} for {reader}")
    return fixed, notes


def _transformers_version() -> str:
    from importlib.metadata import version

    return version("transformers")


def staged_source(source: Path, staging: Path, fix_config: bool) -> tuple[Path, list[str]]:
    """The directory to export from: `source` itself, or (when its config needs changes for
    this transformers) a staging directory of links to its files with the harmonized config."""
    from transformers import AutoConfig

    config = json.loads((source / "config.json").read_text())
    fixed, notes = harmonize_config(config, AutoConfig.from_pretrained(str(source)),
                                    reader=f"transformers {_transformers_version()}")
    if not notes:
        return source, []
    if not fix_config:
        return source, [n.replace("; exported with", "; NOT fixed (fix_config=false), would export with")
                        for n in notes]
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for f in source.iterdir():
        if f.name != "config.json":
            (staging / f.name).symlink_to(f.resolve())
    (staging / "config.json").write_text(json.dumps(fixed, indent=1))
    return staging, notes


# --------------------------------------------------------------------------- export cache


ONNX_FORMAT = ExportFormat(subdir="onnx", manifest=MANIFEST, module=__name__, backend="ONNX", target="ONNX",
                           done="fp32 ONNX", reused="fp32 ONNX export")


def _export_dir(ctx: "BuildContext", fix_config: bool) -> Path:
    return export_dir(ONNX_FORMAT, ctx.spec.model.id, {
        "model": asdict(ctx.spec.model), "kind": ctx.model_info.kind, "versions": library_versions(),
        "fix_config": fix_config, "export": EXPORT_VERSION})


@dataclass
class Exported(export_cache.Exported):
    """The cached fp32 ONNX export of a model and how it came to be."""

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE


def exported(ctx: "BuildContext", fix_config: bool = True) -> Exported:
    """The model as an fp32 ONNX graph (exported once, then read from the cache).

    optimum-onnx's `main_export` runs in a child process (the PyTorch model it traces must not
    count in this run's peak memory), under a lock so parallel workers export once. Causal LMs
    are exported with the KV cache (`text-generation-with-past`), encoders for feature extraction.
    """
    model_class(ctx.model_info.kind)
    return export_once(ctx, ONNX_FORMAT, _export_dir(ctx, fix_config), Exported, [str(int(fix_config))])


def export(kind: str, source: Path, target: Path, fix_config: bool) -> None:
    """Export the model at `source` to fp32 ONNX at `target` (written atomically, manifest last)."""
    from optimum.exporters.onnx import main_export

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    staging = target.with_name(target.name + ".src")
    src, notes = staged_source(source, staging, fix_config)
    # library_name: without it, MiniLM is taken for a sentence-transformers model (not installed here).
    main_export(str(src), output=str(tmp), task=TASKS[kind], device="cpu", do_validation=False,
                library_name="transformers")
    shutil.rmtree(staging, ignore_errors=True)
    copy_side_files(source, tmp)  # only what the exporter did not write: its config.json (harmonized) stays
    onnx_files = sorted(p.name for p in tmp.glob("*.onnx"))
    if onnx_files != [MODEL_FILE]:
        raise RuntimeError(f"expected one {MODEL_FILE} from the export, got {onnx_files}")
    write_export_stats(tmp)
    (tmp / MANIFEST).write_text(json.dumps({"source": str(source), "versions": library_versions(),
                                            "fix_config": fix_config, "notes": notes}, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def copy_side_files(source: Path, target: Path) -> None:
    """Tokenizer and config files of `source` missing in `target`."""
    for f in Path(source).iterdir():
        if f.is_file() and (f.name.startswith("tokenizer") or f.name in _SIDE_FILES):
            if not (Path(target) / f.name).exists():
                shutil.copy2(f, Path(target) / f.name)


# --------------------------------------------------------------------------- sessions


def session_options(threads: int | None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    return so


def load(kind: str, directory: Path, file_name: str = MODEL_FILE, threads: int | None = None) -> tuple[Any, float]:
    """An optimum ORTModel of `directory/file_name` on the CPU provider, and the seconds the
    session creation took (graph optimizations and kernel selection happen there)."""
    cls = model_class(kind)
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = dict(file_name=file_name, provider=PROVIDER, session_options=session_options(threads))
    if kind == "causal-lm":
        kwargs["use_cache"] = True
    model = cls.from_pretrained(str(directory), **kwargs)
    return model, time.perf_counter() - t0


def save(directory: Path, file_name: str, target: Path) -> None:
    """The model file (renamed model.onnx) and its side files: what `load` reads back."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(directory) / file_name, target / MODEL_FILE)
    data = Path(directory) / (file_name + "_data")
    if data.exists():
        shutil.copy2(data, target / data.name)
    copy_side_files(directory, target)


def new_workdir(ctx: "BuildContext", name: str, exported_dir: Path) -> Path:
    """A fresh directory in the run's workdir holding the export's side files, for a quantized model."""
    d = ctx.workdir / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    copy_side_files(exported_dir, d)
    return d


# --------------------------------------------------------------------------- what a graph holds

# Ops that carry a weight matrix (input index of the weight); integer-weight forms included.
_WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "MatMulInteger": 1, "MatMulNBits": 1, "QLinearMatMul": 3,
                 "DynamicQuantizeMatMul": 1, "MatMulIntegerToFloat": 1}
_EMBEDDINGS = {"Gather": 0, "GatherBlockQuantized": 0}
_ALWAYS_QUANTIZED = {"MatMulNBits", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                     "GatherBlockQuantized"}
# Between an initializer and the op consuming it.
# DynamicQuantizeLinear: dynamic int8 of a tied lm_head re-quantizes the transposed (int8) embedding table
# on every call and feeds MatMulInteger.
_PASS_THROUGH = {"DequantizeLinear", "DynamicQuantizeLinear", "Transpose", "Reshape", "Cast", "Identity", "Squeeze",
                 "Unsqueeze"}
_INT_TYPES = {2, 3, 4, 5, 6, 7, 12, 13, 21, 22}  # onnx TensorProto: UINT8 INT8 UINT16 INT16 INT32 INT64 UINT32 UINT64 UINT4 INT4


@dataclass
class GraphStats:
    """What an ONNX graph holds: weight-carrying ops and how their weights are stored."""

    layers: int = 0  # MatMul-like ops with a constant weight matrix
    layers_quantized: int = 0
    embeddings: int = 0
    embeddings_quantized: int = 0
    initializer_bytes: int = 0
    ops: Counter = field(default_factory=Counter)
    quantized_names: list[str] = field(default_factory=list)
    fp_names: list[str] = field(default_factory=list)

    def describe(self) -> str:
        kinds = [f"{n} {op}" for op, n in sorted(self.ops.items()) if op in _QUANT_OPS]
        return (f"{self.layers_quantized}/{self.layers} weight MatMuls and {self.embeddings_quantized}/"
                f"{self.embeddings} embedding Gathers with integer weights; quantization ops: "
                f"{', '.join(kinds) or 'none'}")


_QUANT_OPS = {"MatMulNBits", "MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear",
              "QLinearMatMul", "GatherBlockQuantized", "DynamicQuantizeMatMul"}


def graph_stats(model_proto: Any) -> GraphStats:
    """Count the weight-carrying ops of an ONNX model, each traced back to its initializer."""
    g = model_proto.graph
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    # Constant nodes holding tensors count as initializers (some exporters fold weights into them).
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and len(a.t.dims) >= 2:
                    inits.setdefault(n.output[0], a.t)
    stats = GraphStats(ops=Counter(n.op_type for n in g.node))
    stats.initializer_bytes = sum(_tensor_bytes(t) for t in g.initializer)
    for n in g.node:
        if n.op_type in _WEIGHT_INPUT and len(n.input) > _WEIGHT_INPUT[n.op_type]:
            traced = _trace(n.input[_WEIGHT_INPUT[n.op_type]], inits, producers)
            if traced is None and n.op_type in ("MatMul", "MatMulInteger"):
                traced = _trace(n.input[0], inits, producers)
            if traced is None:
                continue
            stats.layers += 1
            q = traced or n.op_type in _ALWAYS_QUANTIZED
            stats.layers_quantized += q
            (stats.quantized_names if q else stats.fp_names).append(n.name)
        elif n.op_type in _EMBEDDINGS:
            traced = _trace(n.input[0], inits, producers)
            if traced is None:
                continue
            stats.embeddings += 1
            stats.embeddings_quantized += traced or n.op_type in _ALWAYS_QUANTIZED
    return stats


def _trace(name: str, inits: dict, producers: dict, depth: int = 0) -> bool | None:
    """Whether the matrix feeding a node input is stored as integers (True), as floats (False),
    or is no constant matrix at all (None: activations, shapes, 1-D tables)."""
    quantized = False
    while depth < 8:
        t = inits.get(name)
        if t is not None:
            if sum(1 for d in t.dims if d > 1) < 2:
                return None
            return quantized or t.data_type in _INT_TYPES
        node = producers.get(name)
        if node is None or node.op_type not in _PASS_THROUGH:
            return None
        quantized |= node.op_type in ("DequantizeLinear", "DynamicQuantizeLinear")
        name = node.input[0]
        depth += 1
    return None


def _tensor_bytes(t: Any) -> int:
    if t.raw_data:
        return len(t.raw_data)
    if t.data_location == 1:  # external data: the length is recorded with it
        for e in t.external_data:
            if e.key == "length":
                return int(e.value)
    from onnx import numpy_helper

    return int(numpy_helper.to_array(t).nbytes)


STATS_FILE = "workbench-graph-stats.json"


def export_stats(directory: Path) -> GraphStats:
    """`graph_stats` of the fp32 export in `directory`, counted once and kept beside it.

    Counting needs the whole graph in memory (the weights sit inside model.onnx): reading
    SmolLM2's export takes 1 GB for a moment, and every ORT run counted its eligible layers that
    way. The count is made by the export's child process, or by a child process of its own for
    an export cached before it was kept, so that it never lands in a run's peak memory.
    """
    directory = Path(directory)
    cached = directory / STATS_FILE
    if not cached.exists():
        check_module(f"counting the layers of {directory / MODEL_FILE}", __name__, ["--stats", str(directory)],
                     tail=15)
    data = json.loads(cached.read_text())
    return GraphStats(**{**data, "ops": Counter(data["ops"])})


def write_export_stats(directory: Path) -> None:
    """Count the fp32 export's layers and keep them beside it (atomically: concurrent runs may both count)."""
    directory = Path(directory)
    stats = graph_stats(read_graph(directory / MODEL_FILE))
    tmp = directory / f".{STATS_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps({**stats.__dict__, "ops": dict(stats.ops)}))
    os.replace(tmp, directory / STATS_FILE)


def read_graph(path: Path, with_weights: bool = True) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=with_weights)


def node_names(path: Path) -> list[str]:
    """Names of every node of an ONNX file (weights not loaded)."""
    return [n.name for n in read_graph(path, with_weights=False).graph.node]


# --------------------------------------------------------------------------- layer names <-> node names


def matmul_node(module: str) -> str:
    """The ONNX node name optimum's exporter gives the MatMul of a torch Linear module
    (`encoder.layer.0.output.dense` -> `/encoder/layer.0/output/dense/MatMul`)."""
    parts: list[str] = []
    for p in module.split("."):
        if p.isdigit() and parts:  # module lists keep their index: layers.0, layer.3
            parts[-1] += "." + p
        else:
            parts.append(p)
    return "/" + "/".join(parts) + "/MatMul"


def nodes_for_modules(modules: Iterable[str], nodes: Iterable[str]) -> tuple[list[str], list[str]]:
    """(node names, modules without a node) for Linear modules given by name."""
    present = set(nodes)
    found, missing = [], []
    for m in modules:
        node = matmul_node(m)
        (found if node in present else missing).append(node if node in present else m)
    return found, missing


if __name__ == "__main__":
    # python -m workbench.methods.ort.runtime KIND SOURCE_DIR TARGET_DIR FIX_CONFIG (used by `exported`)
    import warnings

    warnings.simplefilter("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if sys.argv[1] == "--stats":  # python -m workbench.methods.ort.runtime --stats EXPORT_DIR (`export_stats`)
        write_export_stats(Path(sys.argv[2]))
    else:
        export(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1")
