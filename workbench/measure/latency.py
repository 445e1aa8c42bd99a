"""Latency: forward time per batch size, prefill/decode speed per prompt length,
generate throughput per batch size.

Every figure is warm-up runs, then repeats, reported as the median with min and
max. Inputs are random token ids from a fixed seed, so every method sees the
same tokens. Models are only called (`model(input_ids=, attention_mask=)`,
`model.generate(...)`): a non-torch runtime that accepts torch tensors works
the same as a torch module.

Memory columns are the peak of each row (peak RSS, or CUDA max allocated on a
GPU): the kernel's high-water mark is reset before each row (`memory.reset_phase_peak`
keeps the run's overall peak), after memory freed by earlier rows is handed back.

The forward table times the whole forward pass, output head included, but a PyTorch
causal LM's logits are not held for all positions at once: the model runs with
`logits_to_keep=1` and its output head is applied to the captured hidden states a
chunk of positions at a time (`accuracy.OutputHead`), the same arithmetic as one
full-width head. Batch 8 x 128 tokens of SmolLM2 held 200 MB of logits otherwise (1 GB
for a 262,144-token vocabulary). Runtimes that return logits (OpenVINO, ONNX Runtime)
are called as they are.
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import torch

from ..errors import InvalidSpec
from ..result import Measurement
from . import memory
from .accuracy import OutputHead, SplitFailed, chunk_positions

SEED = 0
Progress = Callable[[float], None]
T = TypeVar("T")


def time_repeats(
    fn: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None] | None = None
) -> Measurement:
    """Call `fn` `warmup` times untimed, then `repeats` times timed; values in seconds.

    `sync` (e.g. `torch.cuda.synchronize`) runs before the clock starts and before
    it stops, so asynchronous GPU work is inside the timed span.
    """
    _check_count("warmup", warmup, minimum=0)
    _check_count("repeats", repeats, minimum=1)
    for _ in range(warmup):
        fn()
    values = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        values.append(time.perf_counter() - start)
    return Measurement(tuple(values))


def forward_table(
    model: Any,
    *,
    batch_sizes: Sequence[int],
    seq_len: int,
    vocab_size: int,
    warmup: int,
    repeats: int,
    device: str = "cpu",
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Forward-pass latency per batch size on random tokens of length `seq_len`.

    Rows: batch_size, seq_len, latency_ms (median), latency_ms_min, latency_ms_max,
    tokens_per_s (batch_size * seq_len / median), peak_rss_mb (and
    cuda_max_allocated_mb on a GPU).
    """
    _check_sizes("batch_sizes", batch_sizes)
    _check_count("seq_len", seq_len, minimum=1)
    sync = _sync_for(device)
    forward = forward_pass(model, vocab_size)
    rows = []
    for i, bs in enumerate(batch_sizes):
        _reset_memory(device)
        ids, mask = random_tokens(bs, seq_len, vocab_size, device)
        with torch.inference_mode():
            m = time_repeats(lambda: forward(ids, mask), warmup, repeats, sync)
        rows.append(
            {
                "batch_size": bs,
                "seq_len": seq_len,
                "latency_ms": m.median * 1e3,
                "latency_ms_min": min(m.values) * 1e3,
                "latency_ms_max": max(m.values) * 1e3,
                "tokens_per_s": bs * seq_len / m.median,
                **_memory_columns(device),
            }
        )
        if progress is not None:
            progress((i + 1) / len(batch_sizes))
    return rows


def forward_pass(model: Any, vocab_size: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One forward pass of `model` as the forward table times it; the outputs are dropped.

    A PyTorch causal LM computes its logits for every position, a chunk of positions at a time
    (`accuracy.OutputHead`), so that they are never all held at once; anything else is called as
    `model(input_ids=, attention_mask=)`.
    """
    split = OutputHead.of(model)
    if split is not None:
        # A two-token probe, before anything is timed: a forward that does not run its decoder
        # exactly once cannot be split.
        probe = torch.zeros(1, 2, dtype=torch.long, device=_device_of(model))
        try:
            with torch.inference_mode():
                split.run(probe, torch.ones_like(probe))
        except SplitFailed:
            split = None
    if split is None:
        def call(ids: torch.Tensor, mask: torch.Tensor) -> None:
            model(input_ids=ids, attention_mask=mask)

        return call
    head = split
    step = chunk_positions(vocab_size)

    def call_split(ids: torch.Tensor, mask: torch.Tensor) -> None:
        hidden, _ = head.run(ids, mask)
        flat = hidden.reshape(-1, hidden.shape[-1])
        for a in range(0, flat.shape[0], step):
            head.logits(flat[a : a + step])

    return call_split


def _device_of(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def until_ordered(short: Callable[[], T], long: Callable[[], T], key: Callable[[T], float],
                  attempts: int = 3) -> tuple[T, T]:
    """Time `short` (e.g. a 1-token generate) then `long` (D tokens) until `long` takes longer, at most
    `attempts` times. Decode time is their difference: for a few fast tokens a busy machine can
    invert the two medians (seen in CI with two test workers), and one more measurement usually
    separates them; if none does, the caller reports no decode speed rather than a made-up one."""
    for _ in range(attempts):
        a, b = short(), long()
        if key(b) > key(a):
            break
    return a, b


def generation_table(
    model: Any,
    *,
    batch_size: int,
    prompt_lengths: Sequence[int],
    decode_tokens: int,
    vocab_size: int,
    warmup: int,
    repeats: int,
    device: str = "cpu",
    pad_token_id: int | None = 0,
    progress: Progress | None = None,
    generate_timings: dict[int, tuple[Measurement, dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Prefill and decode speed per prompt length, in the layout of the
    Transformers / AutoAWQ fused-module benchmark table.

    prefill time = median of a greedy generate of 1 new token; full time = median
    of a greedy generate of `decode_tokens` (D) new tokens, never stopped early.
    Prefill tokens/s = B * L / prefill; decode tokens/s = B * (D - 1) / (full - prefill).
    When noise makes full <= prefill, decode tokens/s is None and the row's `note` says so.

    Rows: "Batch Size", "Prefill Length", "Decode Length", "Prefill tokens/s",
    "Decode tokens/s", "Memory (MB)" (peak RSS, or CUDA max allocated on a GPU),
    "prefill_ms", "decode_ms", the spreads ("Prefill tokens/s min"/"max",
    "Decode tokens/s min"/"max") and "note".

    `generate_timings`, when given, receives {prompt length: (the D-token generate's timing, its
    memory columns)}: the batch-1 row of `throughput_table` is that same measurement, so the
    protocol passes it on instead of timing the same generate again.
    """
    _check_count("batch_size", batch_size, minimum=1)
    _check_sizes("prompt_lengths", prompt_lengths)
    # Defensive, for direct callers: a run's settings are checked before any worker starts, by
    # spec.BENCH_SCHEMA, whose decode_tokens minimum of 2 is this table's (the decode rate is D - 1 tokens).
    _check_count("decode_tokens", decode_tokens, minimum=2)
    sync = _sync_for(device)
    rows = []
    for i, length in enumerate(prompt_lengths):
        _reset_memory(device)
        ids, mask = random_tokens(batch_size, length, vocab_size, device)
        prefill, full = until_ordered(
            lambda: time_repeats(lambda: greedy_generate(model, ids, mask, 1, pad_token_id), warmup, repeats, sync),
            lambda: time_repeats(lambda: greedy_generate(model, ids, mask, decode_tokens, pad_token_id), warmup,
                                 repeats, sync),
            key=lambda m: m.median)
        decode_s = full.median - prefill.median
        decode_rates = [
            batch_size * (decode_tokens - 1) / (f - prefill.median) for f in full.values if f > prefill.median
        ]
        note = None
        if decode_s <= 0:
            note = (
                f"decode time not measurable: generating {decode_tokens} tokens took "
                f"{full.median * 1e3:.1f} ms, no more than prefill ({prefill.median * 1e3:.1f} ms)"
            )
        mem = _memory_columns(device)
        if generate_timings is not None:
            generate_timings[length] = (full, mem)
        rows.append(
            {
                "Batch Size": batch_size,
                "Prefill Length": length,
                "Decode Length": decode_tokens,
                "Prefill tokens/s": batch_size * length / prefill.median,
                "Decode tokens/s": batch_size * (decode_tokens - 1) / decode_s if decode_s > 0 else None,
                "Memory (MB)": mem.get("cuda_max_allocated_mb", mem["peak_rss_mb"]),
                "prefill_ms": prefill.median * 1e3,
                "decode_ms": decode_s * 1e3 if decode_s > 0 else None,
                "Prefill tokens/s min": batch_size * length / max(prefill.values),
                "Prefill tokens/s max": batch_size * length / min(prefill.values),
                "Decode tokens/s min": min(decode_rates) if decode_rates else None,
                "Decode tokens/s max": max(decode_rates) if decode_rates else None,
                "note": note,
            }
        )
        if progress is not None:
            progress((i + 1) / len(prompt_lengths))
    return rows


def throughput_table(
    model: Any,
    *,
    batch_sizes: Sequence[int],
    prompt_length: int,
    decode_tokens: int,
    vocab_size: int,
    warmup: int,
    repeats: int,
    device: str = "cpu",
    pad_token_id: int | None = 0,
    progress: Progress | None = None,
    measured: Mapping[int, tuple[Measurement, dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """End-to-end generate throughput per batch size: B * D / (median time of a
    greedy generate of D new tokens after a prompt of `prompt_length`).

    `measured`: {batch size: (timing, memory columns)} of that very generate already timed (the
    generation table's D-token generate at batch 1, same prompt length and D): used, not timed
    again (on a slow method the duplicate cost a quick run a third of its time).

    Rows: batch_size, prompt_length, decode_tokens, generate_tok_s, generate_tok_s_min,
    generate_tok_s_max, generate_s, generate_s_min, generate_s_max, peak_rss_mb
    (and cuda_max_allocated_mb on a GPU).
    """
    _check_sizes("batch_sizes", batch_sizes)
    _check_count("prompt_length", prompt_length, minimum=1)
    # Defensive, for direct callers (one token is a valid generate here); a run's rule is spec.BENCH_SCHEMA's
    # decode_tokens >= 2, which generation_table, timed on the same settings, needs.
    _check_count("decode_tokens", decode_tokens, minimum=1)
    sync = _sync_for(device)
    rows = []
    for i, bs in enumerate(batch_sizes):
        if measured is not None and bs in measured:
            m, mem = measured[bs]
        else:
            _reset_memory(device)
            ids, mask = random_tokens(bs, prompt_length, vocab_size, device)
            m = time_repeats(lambda: greedy_generate(model, ids, mask, decode_tokens, pad_token_id), warmup, repeats,
                             sync)
            mem = _memory_columns(device)
        rows.append(
            {
                "batch_size": bs,
                "prompt_length": prompt_length,
                "decode_tokens": decode_tokens,
                "generate_tok_s": bs * decode_tokens / m.median,
                "generate_tok_s_min": bs * decode_tokens / max(m.values),
                "generate_tok_s_max": bs * decode_tokens / min(m.values),
                "generate_s": m.median,
                "generate_s_min": min(m.values),
                "generate_s_max": max(m.values),
                **mem,
            }
        )
        if progress is not None:
            progress((i + 1) / len(batch_sizes))
    return rows


def greedy_generate(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int, pad_token_id: int | None
) -> Any:
    """Greedy generation of exactly `new_tokens` tokens: no sampling, no stop at EOS.

    `min_new_tokens` masks EOS until the end and `eos_token_id=None` turns stopping
    off, so a model that happens to predict EOS early is still timed on the same
    work. A tokenizer without a pad token gives `pad_token_id=None`; 0 stands in
    (the prompts are unpadded and no sequence finishes early, so it is never
    used, but `generate` wants one). Generation warnings (unused sampling flags of the model's own generation
    config) are silenced: they say nothing about the measurement.
    """
    with torch.inference_mode(), _quiet():
        return model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0 if pad_token_id is None else pad_token_id,
            eos_token_id=None,
        )


def random_tokens(
    batch_size: int, seq_len: int, vocab_size: int, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids from a fixed seed (the same for every method) and an all-ones attention mask."""
    _check_count("vocab_size", vocab_size, minimum=1)
    gen = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen, dtype=torch.long)
    ids = ids.to(device)
    return ids, torch.ones_like(ids)


# --- internals ---------------------------------------------------------------


def _sync_for(device: str) -> Callable[[], None] | None:
    if device.startswith("cuda"):
        dev = torch.device(device)
        return lambda: torch.cuda.synchronize(dev)
    return None


def _reset_memory(device: str) -> None:
    """Start measuring the peak memory of one table row, from what the process really holds."""
    memory.release_unused()
    memory.reset_phase_peak()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _memory_columns(device: str) -> dict[str, float]:
    """Peak memory of the row since `_reset_memory` (RSS; CUDA max allocated on GPU)."""
    cols = {"peak_rss_mb": memory.phase_peak_bytes() / 2**20}
    if device.startswith("cuda"):
        cuda = memory.cuda_max_allocated_bytes()
        if cuda is not None:
            cols["cuda_max_allocated_mb"] = cuda / 2**20
    return cols


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    tf_logger = logging.getLogger("transformers")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tf_logger.setLevel(level)


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidSpec(f"{name}: got {value!r}; allowed: an integer >= {minimum}")


def _check_sizes(name: str, values: Sequence[int]) -> None:
    if not values:
        raise InvalidSpec(f"{name}: got an empty list; allowed: one or more integers >= 1")
    for v in values:
        _check_count(name, v, minimum=1)
