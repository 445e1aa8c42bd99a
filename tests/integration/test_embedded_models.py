"""The issue's numbers on the real embedded models, through the real subprocess workers.

Latency is left out here (benchmarks/ and `make demo` measure it); accuracy on the default
8 x 512-token windows is deterministic.
"""
import pytest

from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec

from ..conftest import requires_torch_env

pytestmark = requires_torch_env
ACCURACY_ONLY = BenchSpec(latency=False, save=False)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(store=tmp_path_factory.mktemp("store") / "wb.sqlite", progress=False)


@pytest.fixture(scope="module")
def baseline(session):
    r = session.submit(session.make_spec("smollm2-135m", "baseline", bench=BenchSpec(save=False, latency=False)))
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    return r


def test_smollm2_baseline_matches_the_independent_reference(baseline):
    m = baseline.metrics
    assert m["perplexity"] == pytest.approx(14.70, abs=0.05)
    assert m["kl_div"] == pytest.approx(0.0, abs=1e-9)
    assert m["top1_agreement"] == 1.0
    assert baseline.layers_quantized == 0 and baseline.layers_eligible == 211
    assert baseline.versions["transformers"].startswith("5.") and baseline.device
    # fp32 weights: 134.5M parameters x 4 bytes (tied embeddings counted once, plus rotary buffers)
    assert 134_000_000 * 4 < m["weights_bytes"] < 136_000_000 * 4


def test_rtn_int8_per_channel_within_one_percent(session, baseline):
    r = session.submit(session.make_spec("smollm2-135m", "rtn", {"bits": 8, "group_size": -1}, bench=ACCURACY_ONLY))
    assert r.ok, (r.error, r.stderr_tail)
    assert abs(r.metrics["perplexity"] / baseline.metrics["perplexity"] - 1) < 0.01
    assert r.layers_quantized == 210 and r.layers_eligible == 211  # all linear layers but the tied lm_head
    assert r.metrics["top1_agreement"] > 0.95 and 0 < r.metrics["kl_div"] < 0.01
    # int8 codes + fp16 scales for 210 layers, fp32 embeddings and norms
    assert r.metrics["weights_bytes"] < 0.45 * baseline.metrics["weights_bytes"]


def test_rtn_int4_g64_sym_and_asym(session, baseline):
    res = {}
    for sym in (True, False):
        r = session.submit(session.make_spec("smollm2-135m", "rtn", {"bits": 4, "group_size": 64, "sym": sym},
                                             bench=ACCURACY_ONLY))
        assert r.ok, (r.error, r.stderr_tail)
        res[sym] = r.metrics
    for m in res.values():
        assert baseline.metrics["perplexity"] < m["perplexity"] < 40
        assert m["kl_div"] > 0.05
    # affine (asym) uses the range better than symmetric at 4 bits
    assert res[False]["perplexity"] < res[True]["perplexity"]


def test_same_spec_twice_is_one_run(session, baseline):
    n = len(session.store)
    again = session.submit(session.make_spec("smollm2-135m", "baseline", bench=BenchSpec(save=False, latency=False)))
    assert again.cached and again.metrics["perplexity"] == baseline.metrics["perplexity"]
    assert len(session.store) == n


def test_minilm_baseline_and_rtn_int8_cosine(session):
    base = session.submit(session.make_spec("minilm-l6", "baseline", bench=ACCURACY_ONLY))
    assert base.ok, (base.error, base.stderr_tail)
    assert base.metrics["embedding_cosine"] == pytest.approx(1.0, abs=1e-6)
    q = session.submit(session.make_spec("minilm-l6", "rtn", {"bits": 8, "group_size": -1}, bench=ACCURACY_ONLY))
    assert q.ok, (q.error, q.stderr_tail)
    assert 0.99 < q.metrics["embedding_cosine"] < 1.0
    assert q.layers_quantized == q.layers_eligible == 37  # BERT has no lm_head: every linear, pooler included
