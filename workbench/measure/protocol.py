"""The measurement protocol: one sequence of stages, the same for every method (docs/protocol.md).

    reference     the fp32 baseline's outputs, computed once per model and data in a child process
    build         the method builds the model; load and quantize time, weight bytes, layers, kernel, notes
    save          the serialized artifact's size on disk
    accuracy      perplexity / KL / top-1 (causal LMs), embedding cosine (encoders), or a pipeline's outputs
    export_check  does an export or conversion reproduce the fp32 PyTorch model (methods with a tolerance)
    latency       forward per batch, prefill / decode per prompt length, generate throughput (one table each)
    memory        peak RSS (and CUDA's max allocated) of the whole run so far
    reload        the saved artifact reloaded in a fresh process, its accuracy compared
    task          next-token accuracy through `evaluate` (last: it imports pandas and pyarrow, which must
                  not count in the peak memory read before it)

Each stage hands what it measured to `Run.record` as soon as it has it: the measurements go into
the result and out to the executor (`context.emit_partial`), so the first accuracy number reaches
the user before the latency tables are measured, and a run killed halfway keeps what it measured.
Accuracy comes before latency because it is the number people wait for; the reload check and the
task metric come last, as before.

Torch-free at import: the worker imports this module before it knows whether torch is needed.
"""
from __future__ import annotations

import gc
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..errors import WorkbenchError
from ..result import RunResult, RunStatus
from ..spec import RunSpec
from .context import PROGRESS_PREFIX, BuildContext, PartialReport, emit

# The accuracy number a reload is judged by, first present wins.
RELOAD_METRICS = ("perplexity", "embedding_cosine", "image_psnr_db", "top1_agreement")

# Largest relative change of accuracy (perplexity, or embedding cosine for encoders) after a reload.
RELOAD_TOLERANCE = 0.01


@dataclass
class Run:
    """One run going through the stages: what they share, and the result they fill."""

    spec: RunSpec
    target: str
    method: Any
    params: dict
    ctx: BuildContext
    result: RunResult
    publish: PartialReport
    stage: str = ""
    is_reference: bool = False
    built: Any = None
    model: Any = None
    reference_out: dict | None = None
    own: dict | None = None
    saved: Path | None = None
    status: RunStatus = RunStatus.OK
    error: str | None = None

    def record(self, partial: Mapping[str, Any]) -> None:
        """Put a stage's measurements into the result and report them at once.

        `partial` uses the fields of `RunResult.merge_partial` (metrics, tables, layers_quantized,
        layers_eligible, kernel, notes); empty metrics, tables and notes are left out."""
        partial = {k: v for k, v in partial.items() if not (isinstance(v, (dict, list)) and not v)}
        if not partial:
            return
        self.result.merge_partial(partial)
        try:
            self.publish(self.stage, partial)
        except Exception:  # noqa: BLE001 - a reader that went away must not cost the measurements
            pass


def run_protocol(spec: RunSpec, target: str, method: Any, params: dict, ctx: BuildContext, result: RunResult,
                 publish: PartialReport) -> tuple[RunStatus, str | None]:
    """Build the method and measure everything, filling `result` and publishing each stage's
    measurements as they come. Returns (status, error); exceptions propagate (the worker turns
    them into a status, with what was measured before kept in `result`)."""
    run = Run(spec, target, method, params, ctx, result, publish, is_reference=method.is_reference(params))
    for name, stage in STAGES:
        run.stage = name
        stage(run)
    return run.status, run.error


# --------------------------------------------------------------------------- the stages


def _reference(run: Run) -> None:
    if run.spec.bench.accuracy and not run.is_reference:
        from . import reference

        run.ctx.progress("reference", None, "baseline outputs")
        ensure_reference_in_subprocess(run.spec)
        run.reference_out = reference.load_reference(run.spec.model, run.spec.data)


def _build(run: Run) -> None:
    from . import memory

    ctx = run.ctx
    ctx.progress("build", None, run.method.name)
    t0 = time.perf_counter()
    built = run.method.build(ctx, run.params)
    metrics: dict[str, Any] = {"load_s": ctx.load_s,
                               "quantize_s": max(0.0, time.perf_counter() - t0 - ctx.load_s)}
    metrics.update(built.metrics)
    run.built, run.model = built, built.model
    metrics["weights_bytes"] = (
        built.weights_bytes if built.weights_bytes is not None else memory.module_weight_bytes(built.model)
    )
    metrics["weights_bytes_claimed"] = built.weights_bytes_claimed
    metrics["params_count"] = ctx.model_info.params_count
    run.record({"metrics": metrics, "layers_quantized": built.layers_quantized,
                "layers_eligible": built.layers_eligible, "kernel": built.kernel, "notes": list(built.notes)})


def _save(run: Run) -> None:
    if not run.spec.bench.save:
        return
    built = run.built
    if built.save is None:
        run.record({"notes": [f"not saved: {built.cannot_save or 'the method cannot save'}"]})
        return
    from . import memory

    run.ctx.progress("save", None, "serialized size")
    saved = run.ctx.workdir / "saved"
    built.save(saved)
    run.saved = saved
    run.record({"metrics": {"disk_bytes": memory.dir_bytes(saved)}})


def _accuracy(run: Run) -> None:
    if not run.spec.bench.accuracy:
        return
    from . import reference

    spec = run.spec
    if run.is_reference:
        # The fp32 baseline is the reference: compute it here if no earlier run did.
        run.reference_out = reference.cached_reference(
            spec.model, spec.data, lambda: without_targets(measure_accuracy(run.ctx, run.model, None)[1]))
    # The run's own top-1 is all that is read later (the task metric).
    metrics, run.own = measure_accuracy(run.ctx, run.model, run.reference_out, keep=1)
    run.record({"metrics": metrics})


def _export_check(run: Run) -> None:
    # The last reader of the reference (34 MB for SmolLM2 under the standard protocol): it goes
    # before the latency tables, so that their peak does not carry it.
    reference_out, run.reference_out = run.reference_out, None
    tolerance = run.built.reference_tolerance
    if not run.spec.bench.accuracy or tolerance is None or reference_out is None:
        return
    metrics = dict(run.result.metrics)
    run.status, run.error = reference_check(metrics, reference_out, tolerance)
    run.record({"metrics": {k: v for k, v in metrics.items() if k not in run.result.metrics}})


def _latency(run: Run) -> None:
    if not run.spec.bench.latency:
        return
    for metrics, tables in latency_tables(run.ctx, run.model):
        run.record({"metrics": metrics, "tables": tables})


def _memory(run: Run) -> None:
    from . import memory

    metrics = {"peak_rss_bytes": memory.peak_rss_bytes()}
    cuda = memory.cuda_max_allocated_bytes() if run.spec.device.startswith("cuda") else None
    if cuda is not None:
        metrics["cuda_max_allocated_bytes"] = cuda
    run.record({"metrics": metrics})


def _reload(run: Run) -> None:
    bench = run.spec.bench
    if run.saved is None or not (bench.accuracy and bench.reload_check):
        return
    if not type(run.method).can_reload():
        run.record({"notes": [f"reload check skipped: method {run.method.name!r} cannot reload what it saves"]})
        return
    # The child process loads its own copy: this one's goes first.
    run.built = run.model = None
    gc.collect()
    status, error, partial = reload_check(run.spec, run.target, run.saved, run.result.metrics, run.ctx)
    run.record(partial)
    if run.status is RunStatus.OK:
        run.status, run.error = status, error


def _task(run: Run) -> None:
    if run.own is None:
        return
    run.ctx.progress("task metrics", None, "next-token accuracy through evaluate")
    run.record({"metrics": task_metrics(run.own)})


# In the order they run: accuracy as early as the model exists, latency after it, the reload check
# and the task metric last (see the module docstring).
STAGES: tuple[tuple[str, Callable[[Run], None]], ...] = (
    ("reference", _reference),
    ("build", _build),
    ("save", _save),
    ("accuracy", _accuracy),
    ("export_check", _export_check),
    ("latency", _latency),
    ("memory", _memory),
    ("reload", _reload),
    ("task", _task),
)


# --------------------------------------------------------------------------- measurements


def measure_accuracy(ctx: BuildContext, model: Any, reference_out: dict | None,
                     keep: int | None = None) -> tuple[dict, dict]:
    """Accuracy metrics and this model's own outputs (the reference, when it is the baseline).

    For causal LMs the outputs also hold "targets" (the true next tokens), for the task metric,
    and `keep` columns of the top-k (`accuracy.causal_lm_eval`; default: all of them, what a
    reference holds).
    """
    from ..models.catalog import PIPELINE_KINDS
    from . import accuracy

    if ctx.model_info.kind in PIPELINE_KINDS:
        from . import pipelines

        ctx.progress("accuracy", 0.0, f"{ctx.model_info.kind}: outputs against the fp32 PyTorch pipeline")
        return pipelines.accuracy(ctx.model_info.kind, model, ctx, reference_out,
                                  progress=lambda f: ctx.progress("accuracy", f))
    if ctx.model_info.kind == "causal-lm":
        from ..data import splits

        windows = splits.eval_windows(ctx.tokenizer(), ctx.spec.data)
        metrics, ref = accuracy.causal_lm_eval(
            model, windows, reference_out, progress=lambda f: ctx.progress("perplexity", f), device=ctx.device,
            keep=keep,
        )
        return metrics, {"kind": "causal-lm", **ref, "perplexity": metrics["perplexity"],
                         "targets": windows[:, 1:].reshape(-1)}
    from ..data import text

    sentences = text.embedding_sentences(ctx.spec.data)
    ctx.progress("embeddings", None, f"{len(sentences)} sentences")
    emb = accuracy.encoder_embeddings(model, ctx.tokenizer(), sentences, device=ctx.device)
    metrics: dict = {}
    if reference_out is not None:
        metrics.update(accuracy.embedding_cosine(emb, reference_out["embeddings"]))
    return metrics, {"kind": "encoder", "embeddings": emb}


def latency_tables(ctx: BuildContext, model: Any) -> Iterator[tuple[dict, dict]]:
    """(headline metrics, tables) one table at a time, as each is measured: forward per batch size,
    then (causal LMs) prefill / decode per prompt length, then generate throughput per batch size;
    a pipeline's table in one piece."""
    from ..models.catalog import PIPELINE_KINDS
    from . import latency

    b = ctx.spec.bench
    if ctx.model_info.kind in PIPELINE_KINDS:
        from . import pipelines

        ctx.progress("latency", None, f"{ctx.model_info.kind} pipeline")
        yield pipelines.latency(ctx.model_info.kind, model, ctx)
        return
    vocab = int(ctx.model_info.config.get("vocab_size", 1000))
    ctx.progress("latency", 0.0, "forward per batch size")
    forward = latency.forward_table(
        model, batch_sizes=b.batch_sizes, seq_len=b.seq_len, vocab_size=vocab,
        warmup=b.warmup, repeats=b.repeats, device=ctx.device,
    )
    yield ({"forward_ms": forward[0]["latency_ms"]} if forward else {}), {"forward": forward}
    if ctx.model_info.kind == "causal-lm":
        pad = ctx.tokenizer().pad_token_id
        ctx.progress("latency", 0.4, "prefill and decode per prompt length")
        timings: dict = {}
        generation = latency.generation_table(
            model, batch_size=1, prompt_lengths=b.prompt_lengths, decode_tokens=b.decode_tokens,
            vocab_size=vocab, warmup=b.warmup, repeats=b.repeats, device=ctx.device, pad_token_id=pad,
            generate_timings=timings,
        )
        # Headline numbers: batch 1 at the longest prompt length (the table holds the rest).
        metrics = {}
        if generation:
            metrics = {"prefill_tok_s": generation[-1].get("Prefill tokens/s"),
                       "decode_tok_s": generation[-1].get("Decode tokens/s")}
        yield metrics, {"generation": generation}
        ctx.progress("latency", 0.7, "generate throughput per batch size")
        throughput = latency.throughput_table(
            model, batch_sizes=b.generate_batch_sizes, prompt_length=b.prompt_lengths[0],
            decode_tokens=b.decode_tokens, vocab_size=vocab, warmup=b.warmup, repeats=b.repeats,
            device=ctx.device, pad_token_id=pad,
            # batch 1 at the first prompt length is the generation table's D-token generate
            measured={1: timings[b.prompt_lengths[0]]} if b.prompt_lengths[0] in timings else None,
        )
        yield ({"generate_tok_s": throughput[0].get("generate_tok_s")} if throughput else {}), \
            {"throughput": throughput}
    ctx.progress("latency", 1.0)


def task_metrics(own: dict) -> dict:
    """Task metrics through `evaluate` (the metric scripts ship with the workbench).

    Causal LMs: next-token accuracy, the share of evaluation tokens the model's greedy
    prediction gets right. Run last: `evaluate` imports pandas and pyarrow, which must
    not count in the run's peak memory.
    """
    if own.get("kind") != "causal-lm":
        return {}
    from .evaluate_metrics import load_metric

    preds = own["topk_idx"][:, 0].tolist()
    refs = own["targets"].tolist()
    out = load_metric("accuracy").compute(predictions=preds, references=refs)
    return {"next_token_accuracy": float(out["accuracy"])}


def reference_check(metrics: dict, reference_out: dict, tolerance: float) -> tuple[RunStatus, str | None]:
    """Does the run reproduce the fp32 PyTorch model? For exports and conversions, which can go
    silently wrong (docs/backends.md: an ONNX export that dropped rope_theta). Causal LMs: perplexity
    within `tolerance` (relative); encoders: mean embedding cosine at least 1 - `tolerance`;
    text-to-image: RMS pixel difference (pixels in [0, 1]) at most `tolerance`; speech-to-text and
    vision-language: top-1 agreement of the teacher-forced tokens at least 1 - `tolerance`.
    Adds `reference_perplexity` to `metrics` when it compares perplexities."""
    ref_ppl = reference_out.get("perplexity")
    if ref_ppl is not None and metrics.get("perplexity") is not None:
        metrics["reference_perplexity"] = ref_ppl
        ppl = metrics["perplexity"]
        if close(ref_ppl, ppl, tolerance):
            return RunStatus.OK, None
        return RunStatus.FLAGGED, (
            f"does not match the PyTorch fp32 model: perplexity {ppl:.4f} vs {ref_ppl:.4f} "
            f"({(ppl / ref_ppl - 1):+.2%}; tolerance {tolerance:.1%}): the export or conversion changed the model"
        )
    cosine = metrics.get("embedding_cosine")
    if cosine is not None:
        if cosine >= 1 - tolerance:
            return RunStatus.OK, None
        return RunStatus.FLAGGED, (
            f"does not match the PyTorch fp32 model: mean embedding cosine {cosine:.4f} < {1 - tolerance:.4f}: "
            "the export or conversion changed the model"
        )
    rmse = metrics.get("image_rmse")
    if rmse is not None:
        if rmse <= tolerance:
            return RunStatus.OK, None
        return RunStatus.FLAGGED, (
            f"does not match the PyTorch fp32 pipeline: RMS pixel difference {rmse:.4f} > {tolerance:.4f} "
            f"(PSNR {metrics.get('image_psnr_db', float('nan')):.1f} dB): the export changed the pipeline"
        )
    top1 = metrics.get("top1_agreement")
    if top1 is not None:
        if top1 >= 1 - tolerance:
            return RunStatus.OK, None
        return RunStatus.FLAGGED, (
            f"does not match the PyTorch fp32 model: top-1 agreement {top1:.4f} < {1 - tolerance:.4f}: "
            "the export or conversion changed the model"
        )
    return RunStatus.OK, None


def reload_check(spec: RunSpec, target: str, saved: Path, metrics: Mapping[str, Any],
                 ctx: BuildContext) -> tuple[RunStatus, str | None, dict]:
    """Reload the saved artifact in a fresh process (`python -m workbench.worker --reload`) and
    compare its accuracy with the run's. Returns (status, error, the measurements it made)."""
    from ..envs.child import run_module, stderr_tail

    ctx.progress("reload", None, "reloading the saved artifact in a fresh process")
    name = next((m for m in RELOAD_METRICS if metrics.get(m) is not None), RELOAD_METRICS[0])
    before = metrics.get(name)
    request = saved.parent / "reload-request.json"
    out = saved.parent / "reload-result.json"
    request.write_text(json.dumps({"spec": spec.to_dict(), "target": target, "saved": str(saved)}))
    proc = run_module("workbench.worker", ["--reload", str(request), str(out)])
    if proc.returncode != 0 or not out.exists():
        tail = stderr_tail(proc, chars=3000, skip_prefix=PROGRESS_PREFIX)
        return (RunStatus.RELOAD_MISMATCH,
                f"the saved artifact could not be reloaded (exit {proc.returncode}):\n{tail}", {})
    after = json.loads(out.read_text()).get(name)
    measured = {"metrics": {f"reload_{name}": after}}
    if before is None or after is None or not close(before, after, RELOAD_TOLERANCE):
        return RunStatus.RELOAD_MISMATCH, (
            f"reload mismatch: {name} {before} in memory, {after} after saving and reloading in a fresh process "
            f"(tolerance {RELOAD_TOLERANCE:.0%})"
        ), measured
    measured["notes"] = [f"reload check passed: {name} {after:.6g} after reload (in memory {before:.6g})"]
    return RunStatus.OK, None, measured


def close(a: float, b: float, rel: float) -> bool:
    """a and b finite and within `rel` of a, relatively."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    return abs(a - b) <= rel * max(abs(a), 1e-12)


# --------------------------------------------------------------------------- the reference


def compute_reference(spec: RunSpec, model_info: Any) -> dict:
    """Baseline (fp32, unquantized) outputs of this model on this data, cached on disk."""
    from . import reference

    def compute() -> dict:
        emit("reference", None, "computing the fp32 baseline outputs once for this model and data")
        with tempfile.TemporaryDirectory(prefix="wb-ref-") as tmp:
            ctx = BuildContext(spec, model_info, Path(tmp))
            model = ctx.load_model("float32")
            _, ref = measure_accuracy(ctx, model, None)
        del model
        gc.collect()
        return without_targets(ref)

    return reference.cached_reference(spec.model, spec.data, compute)


def reference_interpreter(kind: str) -> tuple[str, dict[str, str] | None]:
    """The baseline of a causal LM or encoder is the model as the `torch` environment's
    transformers builds it, whichever environment asked: the `onnx` family's transformers 4.57
    reads some transformers-5 configs differently (RoPE settings), and a reference computed there
    would hide exactly that. Pipelines keep the asking environment's (diffusers is in `openvino`)."""
    from ..envs import manager
    from ..models.catalog import PIPELINE_KINDS

    if kind in PIPELINE_KINDS:
        return sys.executable, None
    try:
        python = manager.python_for("torch")
    except WorkbenchError:
        return sys.executable, None
    if os.path.abspath(python) == os.path.abspath(sys.executable):  # not resolve(): venvs link one interpreter
        return sys.executable, None
    return python, manager.worker_env()


def ensure_reference_in_subprocess(spec: RunSpec) -> None:
    """Compute the reference in a child process (`python -m workbench.worker --reference`), so
    this worker's peak RSS stays its own."""
    from ..envs.child import check_module
    from ..models import catalog
    from . import reference

    if reference.load_reference(spec.model, spec.data) is not None:
        return
    with tempfile.TemporaryDirectory(prefix="wb-ref-") as tmp:
        req = Path(tmp) / "request.json"
        req.write_text(json.dumps({"spec": spec.to_dict()}))
        python, env = reference_interpreter(catalog.describe(spec.model).kind)
        check_module("computing the baseline reference", "workbench.worker", ["--reference", str(req)],
                     python=python, env=env, tail=20)


def without_targets(outputs: dict) -> dict:
    """The outputs without the true next tokens (the reference keeps only what a run compares with)."""
    return {k: v for k, v in outputs.items() if k != "targets"}
