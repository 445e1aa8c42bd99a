"""quanto through the product: Session -> subprocess worker in the torch environment -> store."""
import pytest

from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec, DataSpec

from ..conftest import requires_torch_env

pytestmark = requires_torch_env
NO_LATENCY = BenchSpec(latency=False)
SMALL = DataSpec(eval_windows=2, window=64)  # calibration takes the first calibration_samples of the data's
SMOL = DataSpec(eval_windows=2, window=256)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(store=tmp_path_factory.mktemp("store") / "wb.sqlite", progress=False)


@pytest.mark.parametrize("params", [{"weights": "int8"}, {"weights": "int4"},
                                    {"weights": "int4", "activations": "int8", "calibration_samples": 2}])
def test_tiny_llama_runs_saves_and_reloads(session, params):
    r = session.submit(session.make_spec("tiny-llama", "quanto", params, bench=NO_LATENCY, data=SMALL))
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    assert r.layers_quantized == 14 and r.layers_eligible == 15
    assert "optimum-quanto" in r.kernel
    m = r.metrics
    assert m["reload_perplexity"] == pytest.approx(m["perplexity"], rel=1e-6)
    assert any("reload check passed" in n for n in r.notes)
    # get_memory_footprint() reports the float32 size of the wrapped weights; the held bytes are fewer.
    assert 0 < m["weights_bytes"] < m["weights_bytes_claimed"] and m["disk_bytes"] > 0
    assert r.versions["optimum-quanto"].startswith("0.2.7")
    if "activations" in params:
        assert any("calibrated on 2 samples" in n for n in r.notes)


def test_tiny_bert_with_float8(session):
    r = session.submit(session.make_spec("tiny-bert", "quanto", {"weights": "float8"}, bench=NO_LATENCY, data=SMALL))
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    assert r.layers_quantized == r.layers_eligible == 13
    assert r.metrics["embedding_cosine"] > 0.99
    assert r.metrics["reload_embedding_cosine"] == pytest.approx(r.metrics["embedding_cosine"], rel=1e-6)


def test_bad_input_is_refused_before_any_worker(session):
    r = session.submit(session.make_spec("tiny-llama", "quanto", {"weights": "int3"}))
    assert r.status is RunStatus.INVALID and "weights" in r.error and "int2, int4, int8, float8" in r.error
    r = session.submit(session.make_spec("tiny-llama", "quanto", {"calibration_samples": 4}))
    assert r.status is RunStatus.INVALID and "calibration_samples" in r.error
    r = session.submit(session.make_spec("tiny-llama", "quanto", {"exclude": ["*"]}))
    assert r.status is RunStatus.INVALID and "exclude" in r.error


@pytest.mark.parametrize("weights", ["int8", pytest.param("int4", marks=pytest.mark.slow)])
def test_smollm2(session, weights):
    r = session.submit(session.make_spec("smollm2-135m", "quanto", {"weights": weights}, bench=NO_LATENCY, data=SMOL))
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    assert r.layers_quantized == 210 and r.layers_eligible == 211
    m = r.metrics
    assert m["reload_perplexity"] == pytest.approx(m["perplexity"], rel=1e-6)
    # By hand (see tests/torch/test_quanto.py for one layer): 106.2M quantized weights, 113.2 MB of
    # float32 embeddings (tied lm_head), norms and buffers.
    expected = {"int8": 220_179_088, "int4": 174_767_248}[weights]
    assert m["weights_bytes"] == expected
    assert m["weights_bytes_claimed"] > 530_000_000  # what get_memory_footprint() says
    # SmolLM2's weights come from a Q4_1 GGUF (groups of 32): quanto's int4 groups of 96/128 fit them badly.
    assert m["top1_agreement"] > (0.9 if weights == "int8" else 0.5)
