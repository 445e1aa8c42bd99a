"""The accuracy pass and the forward table never hold a whole window's logits, and give the numbers
of the whole-window computation they replaced (`_whole_window_eval`, the code as it was)."""
from __future__ import annotations

import math
import mmap
import warnings

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from workbench.measure import accuracy, latency, memory

pytestmark = pytest.mark.torch

VOCAB = 300


def _llama(seed: int = 0, vocab: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(20)  # sharper distributions than a random init gives
    return model


@pytest.fixture(scope="module")
def lm() -> LlamaForCausalLM:
    return _llama(0)


@pytest.fixture(scope="module")
def other() -> LlamaForCausalLM:
    return _llama(1)


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 41), generator=torch.Generator().manual_seed(2))


def _whole_window_eval(model, windows, reference, topk=1024):
    """causal_lm_eval as it was: every window's full logits, log-softmax and top-k at once."""
    n, length = windows.shape
    nll_sum, kl_sum, agree, idx_parts, logp_parts = 0.0, 0.0, 0, [], []
    with torch.inference_mode():
        for w in range(n):
            ids = windows[w : w + 1]
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
            logp = torch.log_softmax(torch.as_tensor(out.logits)[0, :-1].float(), dim=-1)
            nll_sum += -logp.gather(1, windows[w, 1:, None]).double().sum().item()
            top_logp, top_idx = torch.topk(logp, min(topk, logp.shape[-1]), dim=-1, sorted=True)
            idx_parts.append(top_idx.to(torch.int32))
            logp_parts.append(top_logp)
            if reference is not None:
                sl = slice(w * (length - 1), (w + 1) * (length - 1))
                ref_idx = reference["topk_idx"][sl].long()
                kl_sum += accuracy.coarse_kl(reference["topk_logp"][sl], logp.gather(1, ref_idx)).double().sum().item()
                agree += int((top_idx[:, 0] == ref_idx[:, 0]).sum().item())
    tokens = n * (length - 1)
    metrics = {"perplexity": math.exp(nll_sum / tokens), "kl_div": kl_sum / tokens if reference else None,
               "top1_agreement": agree / tokens if reference else None, "eval_tokens": tokens}
    return metrics, {"topk_idx": torch.cat(idx_parts), "topk_logp": torch.cat(logp_parts)}


class LogitsRuntime:
    """A runtime that returns whole-window logits (as OpenVINO and ONNX Runtime do), as numpy."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, attention_mask):
        class Out:
            pass

        out = Out()
        out.logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.numpy()
        return out


def _assert_same(got, want, rel=1e-6):
    (gm, gr), (wm, wr) = got, want
    for key in ("perplexity", "kl_div", "top1_agreement"):
        if wm[key] is None:
            assert gm[key] is None
        else:
            assert gm[key] == pytest.approx(wm[key], rel=rel, abs=1e-9), key
    assert gm["eval_tokens"] == wm["eval_tokens"]
    assert torch.equal(gr["topk_idx"], wr["topk_idx"])
    assert torch.allclose(gr["topk_logp"], wr["topk_logp"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_floats", [1, 7 * VOCAB, 10**9])  # one position, 7 (uneven), the whole window
def test_chunked_eval_equals_the_whole_window_one(lm, other, windows, chunk_floats):
    ref = _whole_window_eval(lm, windows, None)[1]
    _assert_same(accuracy.causal_lm_eval(lm, windows, None, chunk_floats=chunk_floats),
                 _whole_window_eval(lm, windows, None))
    _assert_same(accuracy.causal_lm_eval(other, windows, ref, chunk_floats=chunk_floats),
                 _whole_window_eval(other, windows, ref))


def test_returned_logits_are_processed_per_chunk_with_the_same_numbers(lm, other, windows):
    ref = _whole_window_eval(lm, windows, None)[1]
    assert accuracy.OutputHead.of(LogitsRuntime(other)) is None
    _assert_same(accuracy.causal_lm_eval(LogitsRuntime(other), windows, ref, chunk_floats=5 * VOCAB),
                 _whole_window_eval(other, windows, ref))


def test_the_head_only_ever_sees_a_chunk_of_positions(other, windows):
    shapes: list[tuple[int, ...]] = []
    handle = other.lm_head.register_forward_hook(lambda _m, args, _o: shapes.append(tuple(args[0].shape)))
    try:
        accuracy.causal_lm_eval(other, windows, None, chunk_floats=8 * VOCAB)
    finally:
        handle.remove()
    rows = [math.prod(s[:-1]) for s in shapes]
    assert max(rows) <= 8
    assert sum(rows) == 3 * 40 + 3 + 1  # every predicted position once, the model's own last position
    # per window, and the check of the first window's last position


def test_soft_capped_logits_are_reproduced():
    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                       final_logit_softcapping=3.0)
    model = Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(50)  # logits far beyond the cap: the capping changes them a lot
    win = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback: the split reproduces the model's logits
        got = accuracy.causal_lm_eval(model, win, None, chunk_floats=4 * VOCAB)
    _assert_same(got, _whole_window_eval(model, win, None))


def test_a_head_it_cannot_reproduce_falls_back_to_whole_logits(windows):
    model = _llama(4)
    forward = model.forward

    def shifted(*args, **kwargs):  # something after the head that OutputHead does not know about
        out = forward(*args, **kwargs)
        out.logits = out.logits * 0.5 + 1.0
        return out

    model.forward = shifted
    model.forward.__signature__ = __import__("inspect").signature(forward)
    with pytest.warns(RuntimeWarning, match="whole-window logits"):
        got = accuracy.causal_lm_eval(model, windows, None, chunk_floats=3 * VOCAB)
    _assert_same(got, _whole_window_eval(model, windows, None))


def test_the_forward_pass_computes_every_position_a_chunk_at_a_time(lm):
    rows: list[int] = []
    forward = latency.forward_pass(lm, VOCAB)
    handle = lm.lm_head.register_forward_hook(lambda _m, args, _o: rows.append(math.prod(args[0].shape[:-1])))
    try:
        ids, mask = latency.random_tokens(4, 50, VOCAB)
        with torch.inference_mode():
            forward(ids, mask)
    finally:
        handle.remove()
    step = accuracy.chunk_positions(VOCAB)
    assert rows[0] == 4  # the model's own call: the last position of each sequence
    assert sum(rows[1:]) == 4 * 50 and max(rows[1:]) <= step


def test_the_forward_pass_holds_no_full_logits():
    """Batch 8 x 128 of a 262,144-token vocabulary: 1 GB of logits at once before, one chunk now."""
    model = _llama(0, vocab=262_144)
    ids, mask = latency.random_tokens(8, 128, 262_144)
    forward = latency.forward_pass(model, 262_144)
    with torch.inference_mode():
        forward(ids, mask)  # warm: allocator and kernels
        memory.release_unused()
        memory.reset_phase_peak()
        base = memory.current_rss_bytes()
        forward(ids, mask)
        grew = memory.phase_peak_bytes() - base
    full = 8 * 128 * 262_144 * 4
    assert grew < full / 4, f"the forward pass grew the RSS by {grew / 2**20:.0f} MB (full logits: {full / 2**20:.0f} MB)"


def test_release_file_pages_drops_a_mapped_file_from_the_rss(tmp_path):
    path = tmp_path / "weights.bin"
    size = 64 * 2**20
    path.write_bytes(bytes(range(256)) * (size // 256))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        total = sum(m[i] for i in range(0, size, 4096))  # touch every page
        resident = memory.current_rss_bytes()
        dropped = memory.release_file_pages(path)
        assert dropped > size // 2
        assert memory.current_rss_bytes() < resident - size // 2
        assert sum(m[i] for i in range(0, size, 4096)) == total  # read back from the file, unchanged
    assert memory.release_file_pages(tmp_path / "not-mapped.bin") == 0


def test_release_unused_returns_freed_heap():
    blocks = [bytearray(64 * 1024) for _ in range(2000)]  # 128 MB in small blocks (heap, not mmap)
    del blocks
    assert memory.release_unused() >= 0


def test_a_decoder_that_runs_twice_falls_back_to_whole_logits(windows):
    """A forward that calls its decoder more than once cannot be split: whole-window logits, same numbers."""
    model = _llama(5)
    forward = model.forward

    def twice(*args, **kwargs):
        model.model(input_ids=kwargs["input_ids"])
        return forward(*args, **kwargs)

    model.forward = twice
    model.forward.__signature__ = __import__("inspect").signature(forward)
    with pytest.warns(RuntimeWarning, match="whole-window logits"):
        got = accuracy.causal_lm_eval(model, windows, None, chunk_floats=3 * VOCAB)
    _assert_same(got, _whole_window_eval(model, windows, None))
    calls = []
    model.lm_head.register_forward_hook(lambda _m, args, _o: calls.append(math.prod(args[0].shape[:-1])))
    forward_pass = latency.forward_pass(model, VOCAB)
    ids, mask = latency.random_tokens(2, 10, VOCAB)
    with torch.inference_mode():
        forward_pass(ids, mask)
    assert calls[-1:] == [20] and len(calls) == 2  # the probe (cannot be split), then the full-width head once
