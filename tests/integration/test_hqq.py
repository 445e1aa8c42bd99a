"""hqq through the product: Session -> subprocess worker in the torch environment -> store."""
import pytest

from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec, DataSpec

from ..conftest import requires_torch_env

pytestmark = requires_torch_env
NO_LATENCY = BenchSpec(latency=False)
SMALL = DataSpec(eval_windows=2, window=64)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(store=tmp_path_factory.mktemp("store") / "wb.sqlite", progress=False)


@pytest.mark.parametrize("params", [{"nbits": 4, "group_size": 64}, {"nbits": 8}])
def test_tiny_llama_runs_saves_and_reloads(session, params):
    r = session.submit(session.make_spec("tiny-llama", "hqq", params, bench=NO_LATENCY, data=SMALL))
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    assert r.layers_quantized == 14 and r.layers_eligible == 15
    assert "HQQLinear" in r.kernel
    m = r.metrics
    assert m["reload_perplexity"] == pytest.approx(m["perplexity"], rel=1e-6)
    assert any("reload check passed" in n for n in r.notes)
    assert m["weights_bytes"] > 0 and m["disk_bytes"] > 0 and m["kl_div"] >= 0
    assert r.versions["hqq"].startswith("0.2.8")


def test_fewer_bits_fewer_bytes_more_error(session):
    res = {}
    for nbits in (8, 4, 2):  # 8 and 4 come from the store (the test above ran the same specs)
        params = {"nbits": nbits} if nbits != 4 else {"nbits": 4, "group_size": 64}
        r = session.submit(session.make_spec("tiny-llama", "hqq", params, bench=NO_LATENCY, data=SMALL))
        assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
        res[nbits] = r.metrics
    assert res[8]["weights_bytes"] > res[4]["weights_bytes"] > res[2]["weights_bytes"]
    assert res[8]["kl_div"] < res[4]["kl_div"] < res[2]["kl_div"]


def test_smollm2_8bit_close_to_fp32(session):
    r = session.submit(session.make_spec("smollm2-135m", "hqq", {"nbits": 8},
                                         bench=BenchSpec(latency=False, save=False), data=DataSpec(eval_windows=2)))
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    assert r.layers_quantized == 210 and r.layers_eligible == 211
    assert abs(r.metrics["perplexity"] / 14.243 - 1) < 0.01  # fp32 on these 2 windows: 14.24
    assert 0 < r.metrics["kl_div"] < 0.005
    # By hand: 106,168,320 uint8 codes + 1,658,880 groups of 64 x (fp32 scale + fp32 zero) + fp32
    # embeddings (113,246,208) + norms (140,544) + rotary buffers (256)
    assert r.metrics["weights_bytes"] == 106_168_320 + 1_658_880 * 8 + 113_246_208 + 140_544 + 256


def test_tiny_bert_embeddings(session):
    r = session.submit(session.make_spec("tiny-bert", "hqq", {"nbits": 8}, bench=NO_LATENCY, data=SMALL))
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    assert r.layers_quantized == r.layers_eligible
    assert r.metrics["embedding_cosine"] > 0.99
    assert r.metrics["reload_embedding_cosine"] == pytest.approx(r.metrics["embedding_cosine"], rel=1e-6)


def test_nbits_5_is_refused_before_any_worker(session):
    r = session.submit(session.make_spec("tiny-llama", "hqq", {"nbits": 5}, bench=NO_LATENCY, data=SMALL))
    assert r.status is RunStatus.INVALID
    assert "nbits" in r.error and "1, 2, 3, 4, 8" in r.error
