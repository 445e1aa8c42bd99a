"""The worker: one fresh process per run, inside the method's environment.

    python -m workbench.worker REQUEST.json RESULT.json
    python -m workbench.worker --reference REQUEST.json
    python -m workbench.worker --reload REQUEST.json METRICS.json
    python -m workbench.worker --prepare NAME...      (`workbench models --prepare`)

REQUEST.json is {"spec": RunSpec dict, "target": "module:Class"}. The worker
loads the model, builds the method, measures everything the same way for every
method and writes a `RunResult` to RESULT.json (atomically). Progress goes to
stderr as lines starting with PROGRESS_PREFIX, which the executor turns into a
progress bar. Failures become results with a status; only a hard crash
(segfault, SIGKILL) leaves no result file, and the executor reports that.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from .errors import DataError, InvalidParams, InvalidSpec, MethodUnavailable, ModelNotFound, WorkbenchError
from .result import RunResult, RunStatus
from .spec import RunSpec

PROGRESS_PREFIX = "@@wb "

# Packages whose versions every result records (plus the method's own `requires`).
CORE_PACKAGES = ("torch", "transformers", "accelerate", "safetensors", "tokenizers", "numpy")


def emit(stage: str, fraction: float | None = None, message: str = "") -> None:
    """Report progress to the executor (one line on stderr)."""
    line = json.dumps({"stage": stage, "fraction": fraction, "message": message})
    sys.stderr.write(PROGRESS_PREFIX + line + "\n")
    sys.stderr.flush()


class BuildContext:
    """What a method's `build()` gets: the spec, the model, data and progress reporting."""

    def __init__(self, spec: RunSpec, model_info: Any, workdir: Path, report: Callable[..., None] = emit):
        self.spec = spec
        self.model_info = model_info
        self.device = _torch_device(spec.device)
        self.workdir = workdir
        self._report = report
        self._tokenizer: Any = None
        self.warnings: list[str] = []
        self.load_s: float = 0.0

    def model_dir(self) -> Path:
        from .models import loader

        return loader.resolve(self.spec.model, progress=lambda f, m="": self.progress("load", f, m))

    def load_model(self, dtype: str = "float32", **kwargs: Any) -> Any:
        """The model from its local directory, in eval mode on the run's device."""
        from .models import loader

        t0 = time.perf_counter()
        self.progress("load", None, f"loading {self.spec.model.id} ({dtype})")
        model = loader.load_model(self.spec.model, kind=self.model_info.kind, dtype=dtype, device=self.device,
                                  progress=lambda f, m="": self.progress("load", f, m), **kwargs)
        self.load_s += time.perf_counter() - t0
        return model

    def tokenizer(self) -> Any:
        from .models import loader

        if self._tokenizer is None:
            self._tokenizer = loader.load_tokenizer(self.spec.model)
        return self._tokenizer

    def calibration_texts(self, **data_overrides: Any) -> list[str]:
        """Calibration samples of the run's data; `data_overrides` replace DataSpec fields
        (a method's own `dataset` / `num_samples` parameters: source=..., calib_samples=...)."""
        from dataclasses import replace

        from .data import splits

        return splits.calibration_samples(self.tokenizer(), replace(self.spec.data, **data_overrides))

    def progress(self, stage: str, fraction: float | None = None, message: str = "") -> None:
        self._report(stage, fraction, message)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


def _torch_device(device: str) -> str:
    return "cuda:0" if device == "cuda" else device


def _setup_process(spec: RunSpec) -> None:
    if spec.bench.memory_limit_mb:
        limit = spec.bench.memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    threads = spec.bench.threads
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    # Offline by default when the hub cannot be reached is decided by the loader; keep HF quiet.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _die_with_parent() -> None:
    """Kill this worker's process group when the process that started it dies.

    The executor starts the worker in a session of its own, so a coordinator killed with SIGKILL
    (a sweep interrupted the hard way) would otherwise leave it running, holding memory and
    cores, its result read by nobody.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        # The whole group only when it is ours (the executor's new session), never a shell's job.
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _init_torch(spec: RunSpec) -> None:
    import torch

    torch.manual_seed(spec.seed)
    if spec.bench.threads:
        torch.set_num_threads(spec.bench.threads)
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise MethodUnavailable("device: cuda was asked for but this machine has no CUDA device; allowed here: cpu")


# --------------------------------------------------------------------------- reference


def compute_reference(spec: RunSpec, model_info: Any) -> dict:
    """Baseline (fp32, unquantized) outputs of this model on this data, cached on disk."""
    from .measure import reference

    with reference.reference_lock(spec.model, spec.data):
        ref = reference.load_reference(spec.model, spec.data)
        if ref is not None:
            return ref
        emit("reference", None, "computing the fp32 baseline outputs once for this model and data")
        with tempfile.TemporaryDirectory(prefix="wb-ref-") as tmp:
            ctx = BuildContext(spec, model_info, Path(tmp))
            model = ctx.load_model("float32")
            _, ref = _accuracy(ctx, model, None)
        ref = _without_targets(ref)
        reference.save_reference(spec.model, spec.data, ref)
        del model
        gc.collect()
        return ref


def _reference_interpreter(kind: str) -> tuple[str, dict[str, str] | None]:
    """The baseline of a causal LM or encoder is the model as the `torch` environment's
    transformers builds it, whichever environment asked: the `onnx` family's transformers 4.57
    reads some transformers-5 configs differently (RoPE settings), and a reference computed there
    would hide exactly that. Pipelines keep the asking environment's (diffusers is in `openvino`)."""
    from .envs import manager
    from .models.catalog import PIPELINE_KINDS

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
    """Compute the reference in a child process, so this worker's peak RSS stays its own."""
    import subprocess

    from .measure import reference
    from .models import catalog

    if reference.load_reference(spec.model, spec.data) is not None:
        return
    with tempfile.TemporaryDirectory(prefix="wb-ref-") as tmp:
        req = Path(tmp) / "request.json"
        req.write_text(json.dumps({"spec": spec.to_dict()}))
        python, env = _reference_interpreter(catalog.describe(spec.model).kind)
        proc = subprocess.run([python, "-m", "workbench.worker", "--reference", str(req)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.splitlines()[-20:])
            raise RuntimeError(f"computing the baseline reference failed (exit {proc.returncode}):\n{tail}")


# --------------------------------------------------------------------------- measuring


def _accuracy(ctx: BuildContext, model: Any, reference_out: dict | None) -> tuple[dict, dict]:
    """Accuracy metrics and this model's own outputs (the reference, when it is the baseline).

    For causal LMs the outputs also hold "targets" (the true next tokens), for the task metric.
    """
    from .measure import accuracy
    from .models.catalog import PIPELINE_KINDS

    if ctx.model_info.kind in PIPELINE_KINDS:
        from .measure import pipelines

        ctx.progress("accuracy", 0.0, f"{ctx.model_info.kind}: outputs against the fp32 PyTorch pipeline")
        return pipelines.accuracy(ctx.model_info.kind, model, ctx, reference_out,
                                  progress=lambda f: ctx.progress("accuracy", f))
    if ctx.model_info.kind == "causal-lm":
        from .data import splits

        windows = splits.eval_windows(ctx.tokenizer(), ctx.spec.data)
        metrics, ref = accuracy.causal_lm_eval(
            model, windows, reference_out, progress=lambda f: ctx.progress("perplexity", f), device=ctx.device
        )
        return metrics, {"kind": "causal-lm", **ref, "perplexity": metrics["perplexity"],
                         "targets": windows[:, 1:].reshape(-1)}
    from .data import text

    sentences = text.embedding_sentences(ctx.spec.data)
    ctx.progress("embeddings", None, f"{len(sentences)} sentences")
    emb = accuracy.encoder_embeddings(model, ctx.tokenizer(), sentences, device=ctx.device)
    metrics: dict = {}
    if reference_out is not None:
        metrics.update(accuracy.embedding_cosine(emb, reference_out["embeddings"]))
    return metrics, {"kind": "encoder", "embeddings": emb}


def _task_metrics(own: dict) -> dict:
    """Task metrics through `evaluate` (the metric scripts ship with the workbench).

    Causal LMs: next-token accuracy, the share of evaluation tokens the model's greedy
    prediction gets right. Run last: `evaluate` imports pandas and pyarrow, which must
    not count in the run's peak memory.
    """
    if own.get("kind") != "causal-lm":
        return {}
    from .measure.evaluate_metrics import load_metric

    preds = own["topk_idx"][:, 0].tolist()
    refs = own["targets"].tolist()
    out = load_metric("accuracy").compute(predictions=preds, references=refs)
    return {"next_token_accuracy": float(out["accuracy"])}


def _latency(ctx: BuildContext, model: Any) -> tuple[dict, dict]:
    from .measure import latency
    from .models.catalog import PIPELINE_KINDS

    b = ctx.spec.bench
    if ctx.model_info.kind in PIPELINE_KINDS:
        from .measure import pipelines

        ctx.progress("latency", None, f"{ctx.model_info.kind} pipeline")
        return pipelines.latency(ctx.model_info.kind, model, ctx)
    cfg = ctx.model_info.config
    vocab = int(cfg.get("vocab_size", 1000))
    tables: dict[str, list] = {}
    metrics: dict[str, Any] = {}
    ctx.progress("latency", 0.0, "forward per batch size")
    tables["forward"] = latency.forward_table(
        model, batch_sizes=b.batch_sizes, seq_len=b.seq_len, vocab_size=vocab,
        warmup=b.warmup, repeats=b.repeats, device=ctx.device,
    )
    first = tables["forward"][0] if tables["forward"] else None
    if first is not None:
        metrics["forward_ms"] = first["latency_ms"]
    if ctx.model_info.kind == "causal-lm":
        pad = ctx.tokenizer().pad_token_id
        ctx.progress("latency", 0.4, "prefill and decode per prompt length")
        tables["generation"] = latency.generation_table(
            model, batch_size=1, prompt_lengths=b.prompt_lengths, decode_tokens=b.decode_tokens,
            vocab_size=vocab, warmup=b.warmup, repeats=b.repeats, device=ctx.device, pad_token_id=pad,
        )
        ctx.progress("latency", 0.7, "generate throughput per batch size")
        tables["throughput"] = latency.throughput_table(
            model, batch_sizes=b.generate_batch_sizes, prompt_length=b.prompt_lengths[0],
            decode_tokens=b.decode_tokens, vocab_size=vocab, warmup=b.warmup, repeats=b.repeats,
            device=ctx.device, pad_token_id=pad,
        )
        # Headline numbers: batch 1 at the longest prompt length (the table holds the rest).
        if tables["generation"]:
            last = tables["generation"][-1]
            metrics["prefill_tok_s"] = last.get("Prefill tokens/s")
            metrics["decode_tok_s"] = last.get("Decode tokens/s")
        if tables["throughput"]:
            metrics["generate_tok_s"] = tables["throughput"][0].get("generate_tok_s")
    ctx.progress("latency", 1.0)
    return metrics, tables


def run_spec(spec: RunSpec, target: str, report: Callable[..., None] = emit,
             analysis: str | None = None) -> RunResult:
    """Run one spec in this process and return its result (never raises for run failures).

    `analysis="sensitivity"`: instead of building and measuring the quantized model, measure
    each layer quantized alone (`measure.sensitivity`); the result has the same envelope."""
    started = time.time()
    t_start = time.perf_counter()
    result = RunResult(key=spec.key, status=RunStatus.OK, spec=spec.to_dict(), started_at=started)
    ctx: BuildContext | None = None
    caught: Counter[str] = Counter()

    def finish(status: RunStatus, error: str | None = None) -> RunResult:
        _collect(record, caught)
        logging.getLogger().removeHandler(log_counter)
        caught.update(log_counter.counts)
        result.status = status
        result.error = error
        result.duration_s = time.perf_counter() - t_start
        for msg, n in caught.items():
            result.warnings.append(f"{msg} (x{n})" if n > 1 else msg)
        if ctx is not None:
            result.warnings.extend(ctx.warnings)
        return result

    log_counter = _LogCounter()
    logging.getLogger().addHandler(log_counter)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            from .models import catalog
            from .registry import load_target

            method_cls = load_target(target)
            method = method_cls()
            model_info = catalog.describe(spec.model)
            if method_cls.env != "kernel":
                _init_torch(spec)
            from .measure import envinfo

            result.versions = envinfo.versions(CORE_PACKAGES + tuple(method_cls.requires))
            result.versions["workbench"] = _workbench_version()
            result.device = envinfo.device_info(spec.device)
            params = method_cls.schema.normalize(spec.params, context=method_cls.name)

            workdir = Path(tempfile.mkdtemp(prefix="wb-run-"))
            try:
                ctx = BuildContext(spec, model_info, workdir, report)
                if analysis == "sensitivity":
                    status, error = _sensitivity_run(method, params, ctx, result)
                elif analysis is not None:
                    raise InvalidSpec(f"analysis: unknown analysis {analysis!r}; allowed: sensitivity")
                else:
                    status, error = _measure_run(spec, target, method, params, ctx, result)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            report("done", 1.0)
            return finish(status, error)
        except InvalidParams as e:
            return finish(RunStatus.INVALID, str(e))
        except (InvalidSpec, ModelNotFound, DataError) as e:
            return finish(RunStatus.INVALID, str(e))
        except MethodUnavailable as e:
            return finish(RunStatus.UNAVAILABLE, str(e))
        except MemoryError:
            return finish(RunStatus.OOM, "out of memory (MemoryError)\n" + _tb())
        except WorkbenchError as e:
            return finish(RunStatus.CRASHED, str(e))
        except Exception as e:  # noqa: BLE001 - a backend failure is one failed run, stored with its traceback
            status = RunStatus.OOM if _looks_like_oom(e) else RunStatus.CRASHED
            return finish(status, f"{type(e).__name__}: {e}\n{_tb()}")


def _sensitivity_run(method: Any, params: dict, ctx: BuildContext, result: RunResult) -> tuple[RunStatus, None]:
    from .measure import sensitivity

    metrics, rows, notes = sensitivity.analyse(ctx, method, params)
    result.metrics.update(metrics)
    result.metrics["load_s"] = ctx.load_s
    result.tables["layers"] = rows
    result.notes.extend(notes)
    result.layers_eligible = len(rows)
    return RunStatus.OK, None


def _measure_run(spec: RunSpec, target: str, method: Any, params: dict, ctx: BuildContext,
                 result: RunResult) -> tuple[RunStatus, str | None]:
    """Build the method and measure everything, filling `result`. Returns (status, error)."""
    from .measure import memory

    report = ctx.progress
    is_reference = method.is_reference(params)
    reference_out = None
    own: dict | None = None
    if spec.bench.accuracy and not is_reference:
        from .measure import reference

        report("reference", None, "baseline outputs")
        ensure_reference_in_subprocess(spec)
        reference_out = reference.load_reference(spec.model, spec.data)

    report("build", None, method.name)
    t0 = time.perf_counter()
    built = method.build(ctx, params)
    result.metrics["load_s"] = ctx.load_s
    result.metrics["quantize_s"] = max(0.0, time.perf_counter() - t0 - ctx.load_s)
    result.metrics.update(built.metrics)
    result.layers_quantized = built.layers_quantized
    result.layers_eligible = built.layers_eligible
    result.kernel = built.kernel
    result.notes.extend(built.notes)
    model = built.model
    result.metrics["weights_bytes"] = (
        built.weights_bytes if built.weights_bytes is not None else memory.module_weight_bytes(model)
    )
    result.metrics["weights_bytes_claimed"] = built.weights_bytes_claimed
    result.metrics["params_count"] = ctx.model_info.params_count

    status, error = RunStatus.OK, None
    saved: Path | None = None
    if spec.bench.save:
        if built.save is not None:
            report("save", None, "serialized size")
            saved = ctx.workdir / "saved"
            built.save(saved)
            result.metrics["disk_bytes"] = memory.dir_bytes(saved)
        else:
            result.notes.append(f"not saved: {built.cannot_save or 'the method cannot save'}")

    if spec.bench.accuracy:
        from .measure import reference

        if is_reference:
            # The fp32 baseline is the reference: compute it here if no earlier run did.
            with reference.reference_lock(spec.model, spec.data):
                reference_out = reference.load_reference(spec.model, spec.data)
                if reference_out is None:
                    _, reference_out = _accuracy(ctx, model, None)
                    reference.save_reference(spec.model, spec.data, _without_targets(reference_out))
        metrics, own = _accuracy(ctx, model, reference_out)
        result.metrics.update(metrics)
        if built.reference_tolerance is not None and reference_out is not None:
            status, error = _reference_check(result.metrics, reference_out, built.reference_tolerance)

    if spec.bench.latency:
        metrics, tables = _latency(ctx, model)
        result.metrics.update(metrics)
        result.tables.update(tables)

    result.metrics["peak_rss_bytes"] = memory.peak_rss_bytes()
    cuda = memory.cuda_max_allocated_bytes() if spec.device.startswith("cuda") else None
    if cuda is not None:
        result.metrics["cuda_max_allocated_bytes"] = cuda

    if saved is not None and spec.bench.accuracy and spec.bench.reload_check:
        if type(method).can_reload():
            del model, built
            gc.collect()
            reload_status, reload_error = _reload_check(spec, target, saved, result)
            if status is RunStatus.OK:
                status, error = reload_status, reload_error
        else:
            result.notes.append(f"reload check skipped: method {method.name!r} cannot reload what it saves")
    if own is not None:
        report("task metrics", None, "next-token accuracy through evaluate")
        result.metrics.update(_task_metrics(own))
    return status, error


def _reference_check(metrics: dict, reference_out: dict, tolerance: float) -> tuple[RunStatus, str | None]:
    """Does the run reproduce the fp32 PyTorch model? For exports and conversions, which can go
    silently wrong (docs/backends.md: an ONNX export that dropped rope_theta). Causal LMs: perplexity
    within `tolerance` (relative); encoders: mean embedding cosine at least 1 - `tolerance`;
    text-to-image: RMS pixel difference (pixels in [0, 1]) at most `tolerance`; speech-to-text and
    vision-language: top-1 agreement of the teacher-forced tokens at least 1 - `tolerance`."""
    ref_ppl = reference_out.get("perplexity")
    if ref_ppl is not None and metrics.get("perplexity") is not None:
        metrics["reference_perplexity"] = ref_ppl
        ppl = metrics["perplexity"]
        if _close(ref_ppl, ppl, tolerance):
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


# The accuracy number a reload is judged by, first present wins.
RELOAD_METRICS = ("perplexity", "embedding_cosine", "image_psnr_db", "top1_agreement")


# Largest relative change of accuracy (perplexity, or embedding cosine for encoders) after a reload.
RELOAD_TOLERANCE = 0.01


def _reload_check(spec: RunSpec, target: str, saved: Path, result: RunResult) -> tuple[RunStatus, str | None]:
    """Reload the saved artifact in a fresh process and compare its accuracy with the run's."""
    import subprocess

    emit("reload", None, "reloading the saved artifact in a fresh process")
    name = next((m for m in RELOAD_METRICS if result.metrics.get(m) is not None), RELOAD_METRICS[0])
    before = result.metrics.get(name)
    request = saved.parent / "reload-request.json"
    out = saved.parent / "reload-result.json"
    request.write_text(json.dumps({"spec": spec.to_dict(), "target": target, "saved": str(saved)}))
    proc = subprocess.run([sys.executable, "-m", "workbench.worker", "--reload", str(request), str(out)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join(l for l in proc.stderr.splitlines() if not l.startswith(PROGRESS_PREFIX))[-3000:]
        return RunStatus.RELOAD_MISMATCH, f"the saved artifact could not be reloaded (exit {proc.returncode}):\n{tail}"
    after = json.loads(out.read_text()).get(name)
    result.metrics[f"reload_{name}"] = after
    if before is None or after is None or not _close(before, after, RELOAD_TOLERANCE):
        return RunStatus.RELOAD_MISMATCH, (
            f"reload mismatch: {name} {before} in memory, {after} after saving and reloading in a fresh process "
            f"(tolerance {RELOAD_TOLERANCE:.0%})"
        )
    result.notes.append(f"reload check passed: {name} {after:.6g} after reload (in memory {before:.6g})")
    return RunStatus.OK, None


def _close(a: float, b: float, rel: float) -> bool:
    import math

    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    return abs(a - b) <= rel * max(abs(a), 1e-12)


def reload_main(request_path: Path, out_path: Path) -> int:
    """Child side of the reload check: load the saved artifact, measure accuracy, write the metrics."""
    from .measure import reference
    from .models import catalog
    from .registry import load_target

    request = json.loads(request_path.read_text())
    spec = RunSpec.from_dict(request["spec"])
    _setup_process(spec)
    _init_torch(spec)
    method_cls = load_target(request["target"])
    method = method_cls()
    params = method_cls.schema.normalize(spec.params, context=method_cls.name)
    ctx = BuildContext(spec, catalog.describe(spec.model), Path(request["saved"]).parent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = method.load_saved(ctx, params, Path(request["saved"]))
        metrics, _ = _accuracy(ctx, model, reference.load_reference(spec.model, spec.data))
    write_atomic(out_path, json.dumps(metrics))
    return 0


def _without_targets(outputs: dict) -> dict:
    return {k: v for k, v in outputs.items() if k != "targets"}


def _collect(record: list, caught: Counter[str]) -> None:
    """Fold captured Python warnings into counts: each message stored once, never printed thousands of times."""
    for w in record:
        caught[f"{w.category.__name__}: {(str(w.message).splitlines() or [''])[0][:300]}"] += 1
    record.clear()


class _LogCounter(logging.Handler):
    """Counts library log records (WARNING and up) by message, so a backend that logs the same
    line on every call ends up once in the result instead of thousands of times in the output."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            first = (record.getMessage().splitlines() or [""])[0][:300]
        except Exception:  # noqa: BLE001 - a badly formatted log call must not break the run
            first = str(record.msg)[:300]
        self.counts[f"log {record.name}: {first}"] += 1


def _looks_like_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return any(s in text for s in ("out of memory", "cannot allocate memory", "bad_alloc", "defaultcpuallocator"))


def _tb() -> str:
    return "".join(traceback.format_exc().splitlines(keepends=True)[-30:])


def _workbench_version() -> str:
    from . import __version__

    return __version__


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def prepare_main(names: list[str]) -> int:
    """Convert or build catalog models now rather than in their first run (an image build, e.g.
    Binder's postBuild, should pay the SmolLM2 conversion, not the first visitor). One line per
    model on stdout; exit code 1 if any failed."""
    from .models.loader import resolve
    from .spec import ModelSpec

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    failed = 0
    for name in names:
        t0 = time.perf_counter()
        try:
            path = resolve(ModelSpec(name), progress=lambda _f, msg, n=name: print(f"{n}: {msg}", flush=True))
        except WorkbenchError as e:
            print(f"{name}: failed: {e}", flush=True)
            failed += 1
            continue
        print(f"{name}: ready ({time.perf_counter() - t0:.1f} s) {path}", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--prepare":
        return prepare_main(argv[1:])
    if argv and argv[0] == "--reference":
        request = json.loads(Path(argv[1]).read_text())
        spec = RunSpec.from_dict(request["spec"])
        _setup_process(spec)
        _init_torch(spec)
        from .models import catalog

        compute_reference(spec, catalog.describe(spec.model))
        return 0
    if argv and argv[0] == "--reload":
        return reload_main(Path(argv[1]), Path(argv[2]))
    if len(argv) != 2:
        sys.stderr.write(__doc__ or "")
        return 2
    _die_with_parent()
    request = json.loads(Path(argv[0]).read_text())
    spec = RunSpec.from_dict(request["spec"])
    _setup_process(spec)
    result = run_spec(spec, request["target"], analysis=request.get("analysis"))
    write_atomic(Path(argv[1]), result.to_json())
    # Exit code 0: a result was written, whatever its status; the executor reads the status.
    return 0


if __name__ == "__main__":
    sys.exit(main())
