"""torchao through the product: Session -> subprocess worker in the torch environment -> store."""
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


@pytest.mark.parametrize("scheme", ["int8_weight_only", "int8_dynamic"])
def test_tiny_llama_runs_saves_and_reloads(session, scheme):
    r = session.submit(session.make_spec("tiny-llama", "torchao", {"scheme": scheme}, bench=NO_LATENCY, data=SMALL))
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    assert r.layers_quantized == 14 and r.layers_eligible == 15
    assert "torchao" in r.kernel and ("weight-only" in r.kernel) == (scheme == "int8_weight_only")
    m = r.metrics
    assert m["reload_perplexity"] == pytest.approx(m["perplexity"], rel=1e-6)
    assert any("reload check passed" in n for n in r.notes)
    # real bytes next to what get_memory_footprint() claims (the fp32 size)
    assert 0 < m["weights_bytes"] < 0.7 * m["weights_bytes_claimed"]
    assert m["disk_bytes"] > 0 and 0 <= m["kl_div"] < 0.05 and m["top1_agreement"] > 0.8
    assert r.versions["torchao"].startswith("0.18")


def test_tiny_bert_embeddings(session):
    r = session.submit(session.make_spec("tiny-bert", "torchao", {"scheme": "float8_weight_only"},
                                         bench=NO_LATENCY, data=SMALL))
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    assert r.layers_quantized == r.layers_eligible
    assert r.metrics["embedding_cosine"] > 0.99
    assert r.metrics["reload_embedding_cosine"] == pytest.approx(r.metrics["embedding_cosine"], rel=1e-6)


def test_int4_on_cpu_is_unavailable_with_the_reason_not_a_crash(session):
    r = session.submit(session.make_spec("tiny-llama", "torchao", {"scheme": "int4_weight_only"},
                                         bench=NO_LATENCY, data=SMALL))
    assert r.status is RunStatus.UNAVAILABLE
    assert "no CPU path" in r.error and "int4" in r.error


def test_smollm2_int8_weight_only_within_one_percent(session):
    # 2 windows keep it fast; fp32 on them: 14.24 (docs/backends.md); KL and top-1 are against the fp32 reference.
    r = session.submit(session.make_spec("smollm2-135m", "torchao", {"scheme": "int8_weight_only"},
                                         bench=BenchSpec(latency=False, save=False), data=DataSpec(eval_windows=2)))
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    assert r.layers_quantized == 210 and r.layers_eligible == 211
    assert abs(r.metrics["perplexity"] / 14.243 - 1) < 0.01
    assert 0 < r.metrics["kl_div"] < 0.01 and r.metrics["top1_agreement"] > 0.95
    # By hand: 106,168,320 int8 codes + 155,520 rows x (fp32 scale + int8 zero point) + fp32 embeddings
    # (113,246,208) + norms (140,544) + rotary buffers (256); get_memory_footprint() says fp32: 538,060,288.
    assert r.metrics["weights_bytes"] == 106_168_320 + 155_520 * 5 + 113_246_208 + 140_544 + 256
    assert r.metrics["weights_bytes_claimed"] == 538_060_288
