"""Latency measurement on a tiny random Llama (no downloads; never asserts on speed)."""
from __future__ import annotations

import logging

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from workbench.errors import InvalidSpec
from workbench.measure import latency

VOCAB = 128


@pytest.fixture(scope="module")
def tiny_lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


class Runtime:
    """A non-torch-module model, as an OpenVINO/ONNX wrapper is: callable, with
    `generate`, and no `parameters()`."""

    def __init__(self, model):
        self._model = model
        self.calls = 0

    def __call__(self, **kwargs):
        self.calls += 1
        return self._model(**kwargs)

    def generate(self, **kwargs):
        self.calls += 1
        return self._model.generate(**kwargs)


def test_time_repeats_counts_warmup_and_repeats():
    calls, syncs = [], []
    m = latency.time_repeats(lambda: calls.append(1), warmup=2, repeats=3, sync=lambda: syncs.append(1))
    assert len(calls) == 5
    assert len(m.values) == 3 and all(v >= 0 for v in m.values)
    assert len(syncs) == 6  # before and after each timed call, not around warm-ups


@pytest.mark.parametrize(
    "field,kwargs", [("repeats", {"warmup": 0, "repeats": 0}), ("warmup", {"warmup": -1, "repeats": 1})]
)
def test_time_repeats_rejects_bad_counts(field, kwargs):
    with pytest.raises(InvalidSpec, match=field):
        latency.time_repeats(lambda: None, **kwargs)


def test_random_tokens_are_fixed_and_in_range():
    a, mask = latency.random_tokens(2, 16, VOCAB)
    b, _ = latency.random_tokens(2, 16, VOCAB)
    assert torch.equal(a, b) and a.shape == (2, 16) and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < VOCAB
    assert torch.equal(mask, torch.ones_like(a))


def test_forward_table_rows(tiny_lm):
    rt = Runtime(tiny_lm)
    rows = latency.forward_table(rt, batch_sizes=[1, 3], seq_len=16, vocab_size=VOCAB, warmup=1, repeats=2)
    assert rt.calls == 2 * 3
    assert [r["batch_size"] for r in rows] == [1, 3]
    for r in rows:
        assert set(r) >= {
            "batch_size", "seq_len", "latency_ms", "latency_ms_min", "latency_ms_max", "tokens_per_s", "peak_rss_mb"
        }
        assert r["seq_len"] == 16
        assert 0 < r["latency_ms_min"] <= r["latency_ms"] <= r["latency_ms_max"]
        assert r["tokens_per_s"] == pytest.approx(r["batch_size"] * 16 / (r["latency_ms"] / 1e3))
        assert r["peak_rss_mb"] > 10


def test_greedy_generate_never_stops_at_eos(tiny_lm):
    ids, mask = latency.random_tokens(1, 8, VOCAB)
    first = latency.greedy_generate(tiny_lm, ids, mask, 6, pad_token_id=0)
    assert first.shape == (1, 14)
    no_pad = latency.greedy_generate(tiny_lm, ids, mask, 6, pad_token_id=None)  # a tokenizer without a pad token
    assert torch.equal(no_pad, first)
    saved = tiny_lm.generation_config.eos_token_id
    tiny_lm.generation_config.eos_token_id = int(first[0, 8])  # the model's first greedy token is now EOS
    try:
        with torch.inference_mode():
            stops = tiny_lm.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0
            )
        assert stops.shape[1] < 14  # a plain generate would stop here...
        again = latency.greedy_generate(tiny_lm, ids, mask, 6, pad_token_id=0)
        assert torch.equal(again, first)  # ...the measured one does the same work as before
    finally:
        tiny_lm.generation_config.eos_token_id = saved


def test_greedy_generate_silences_generation_warnings(tiny_lm):
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Collect(level=logging.WARNING)
    tf_logger = logging.getLogger("transformers")
    tf_logger.addHandler(handler)
    cfg = tiny_lm.generation_config
    ids, mask = latency.random_tokens(1, 8, VOCAB)
    try:
        cfg.temperature, cfg.top_k = 0.3, 7  # sampling flags that greedy decoding warns about
        latency.greedy_generate(tiny_lm, ids, mask, 2, pad_token_id=0)
        assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
        # The control: the same kind of flags (a new message, so not swallowed by warning_once) do warn unsilenced.
        cfg.temperature, cfg.top_k, cfg.top_p = 0.3, 9, 0.5
        with torch.inference_mode():
            tiny_lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0)
        assert any("generation flags" in r.getMessage() for r in records)
    finally:
        tf_logger.removeHandler(handler)
        cfg.temperature, cfg.top_k, cfg.top_p = None, None, None


def test_generation_table_layout(tiny_lm):
    rt = Runtime(tiny_lm)
    rows = latency.generation_table(
        rt, batch_size=2, prompt_lengths=[8, 16], decode_tokens=5, vocab_size=VOCAB, warmup=1, repeats=2, pad_token_id=0
    )
    # Two lengths x (prefill + full) x (1 warm-up + 2 repeats), each pair timed again (at most 3
    # times, `until_ordered`) when a busy machine made the full generate look no slower than prefill.
    per_pair = 2 * 3
    assert rt.calls % per_pair == 0 and 2 * per_pair <= rt.calls <= 2 * 3 * per_pair, rt.calls
    assert [r["Prefill Length"] for r in rows] == [8, 16]
    for r in rows:
        for key in ("Batch Size", "Prefill Length", "Decode Length", "Prefill tokens/s", "Decode tokens/s",
                    "Memory (MB)", "prefill_ms", "decode_ms", "Decode tokens/s min", "Decode tokens/s max", "note"):
            assert key in r
        assert r["Batch Size"] == 2 and r["Decode Length"] == 5
        assert r["Prefill tokens/s"] == pytest.approx(2 * r["Prefill Length"] / (r["prefill_ms"] / 1e3))
        assert r["Prefill tokens/s min"] <= r["Prefill tokens/s"] <= r["Prefill tokens/s max"]
        if r["Decode tokens/s"] is None:  # noise made decoding look free: said, not hidden
            assert r["decode_ms"] is None and "decode time not measurable" in r["note"]
        else:
            assert r["Decode tokens/s"] == pytest.approx(2 * 4 / (r["decode_ms"] / 1e3))
            assert r["note"] is None
        assert r["Memory (MB)"] > 10


def test_throughput_table_rows(tiny_lm):
    rows = latency.throughput_table(
        tiny_lm, batch_sizes=[1, 2], prompt_length=8, decode_tokens=4, vocab_size=VOCAB, warmup=0, repeats=2
    )
    assert [r["batch_size"] for r in rows] == [1, 2]
    for r in rows:
        assert r["prompt_length"] == 8 and r["decode_tokens"] == 4
        assert r["generate_tok_s"] == pytest.approx(r["batch_size"] * 4 / r["generate_s"])
        assert r["generate_s_min"] <= r["generate_s"] <= r["generate_s_max"]
        assert r["generate_tok_s_min"] <= r["generate_tok_s"] <= r["generate_tok_s_max"]


def test_the_batch_1_throughput_is_the_generation_tables_generate_not_timed_twice(tiny_lm, monkeypatch):
    timings = {}
    gen = latency.generation_table(tiny_lm, batch_size=1, prompt_lengths=[8], decode_tokens=4, vocab_size=VOCAB,
                                   warmup=0, repeats=2, generate_timings=timings)
    calls = []
    real = latency.greedy_generate
    monkeypatch.setattr(latency, "greedy_generate", lambda m, ids, *a: calls.append(ids.shape[0]) or real(m, ids, *a))
    rows = latency.throughput_table(tiny_lm, batch_sizes=[1, 2], prompt_length=8, decode_tokens=4, vocab_size=VOCAB,
                                    warmup=0, repeats=2, measured={1: timings[8]})
    assert set(calls) == {2}  # only batch 2 was generated
    full, mem = timings[8]
    assert rows[0]["generate_s"] == full.median and rows[0]["peak_rss_mb"] == mem["peak_rss_mb"]
    # the same measurement the generation row's prefill and decode split
    assert full.median * 1e3 == pytest.approx(gen[0]["prefill_ms"] + (gen[0]["decode_ms"] or 0), rel=1e-9) \
        or gen[0]["decode_ms"] is None


def test_generation_table_needs_two_decode_tokens(tiny_lm):
    with pytest.raises(InvalidSpec, match="decode_tokens"):
        latency.generation_table(tiny_lm, batch_size=1, prompt_lengths=[8], decode_tokens=1, vocab_size=VOCAB,
                                 warmup=0, repeats=1)
