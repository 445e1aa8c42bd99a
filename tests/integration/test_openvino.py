"""The OpenVINO methods through the product: Session -> subprocess worker in the openvino
environment -> store. Data-free paths on the embedded SmolLM2 (the fp32 IR is exported once
and cached); the data-aware paths on tiny models; the slow SmolLM2 data-aware comparison is
marked slow (benchmarks/openvino.py measures it)."""
import pytest

from workbench import registry
from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec, DataSpec

from ..conftest import requires_openvino_env

pytestmark = requires_openvino_env
NO_LATENCY = BenchSpec(latency=False)
NO_SAVE = BenchSpec(latency=False, save=False)
TINY = DataSpec(eval_windows=2, window=64, calib_samples=8, calib_seq_len=64)
FP32_PPL = 14.704  # PyTorch fp32 on the 8 default windows (docs/backends.md)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(store=tmp_path_factory.mktemp("store") / "wb.sqlite", progress=False)


def run(session, model, method, params, bench=NO_LATENCY, data=None):
    r = session.submit(session.make_spec(model, method, params, bench=bench, data=data))
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    return r


def test_smollm2_export_matches_pytorch_and_reloads(session):
    r = run(session, "smollm2-135m", "ov-export", {})
    m = r.metrics
    assert abs(m["perplexity"] / FP32_PPL - 1) < 0.005
    assert m["reference_perplexity"] == pytest.approx(FP32_PPL, rel=1e-3)
    assert r.layers_quantized == 0 and r.layers_eligible == 211  # 210 linear layers + lm_head
    assert m["compile_s"] > 0 and m["reload_perplexity"] == pytest.approx(m["perplexity"], rel=1e-6)
    assert m["weights_bytes"] > 500e6 and "inference precision f32" in r.kernel
    assert r.versions["openvino"].startswith("2026.") and r.versions["nncf"] and r.versions["optimum-intel"]


def test_smollm2_int8_within_one_percent_and_int4_smaller(session):
    fp32 = run(session, "smollm2-135m", "ov-export", {}).metrics  # from the store (test above)
    int8 = run(session, "smollm2-135m", "ov-weight", {"bits": 8}, bench=NO_SAVE)
    int4 = run(session, "smollm2-135m", "ov-weight", {"bits": 4, "group_size": 64}, bench=NO_SAVE)
    assert abs(int8.metrics["perplexity"] / FP32_PPL - 1) < 0.01
    assert int8.layers_quantized == int8.layers_eligible == 211
    assert int4.layers_quantized == 211 and "210 u4" in " ".join(int4.notes)  # lm_head stays int8 (backup)
    assert int4.metrics["weights_bytes"] < int8.metrics["weights_bytes"] < 0.3 * fp32["weights_bytes"]
    assert int4.metrics["perplexity"] > int8.metrics["perplexity"]
    assert int4.metrics["kl_div"] > int8.metrics["kl_div"] > 0


def test_group_size_128_on_smollm2_is_refused_before_any_export(session):
    r = session.submit(session.make_spec("smollm2-135m", "ov-weight", {"bits": 4, "group_size": 128}))
    assert r.status is RunStatus.INVALID and r.duration_s is None  # no worker started
    assert "group_size" in r.error and "576" in r.error and "group_size_fallback" in r.error


@pytest.mark.parametrize("options", [
    {"awq": True, "scale_estimation": True},
    {"gptq": True},
    {"lora_correction": True, "lora_rank": 4},
    {"ratio": 0.5, "sensitivity_metric": "hessian_input_activation"},
])
def test_tiny_llama_data_aware(session, options):
    params = {"bits": 4, "group_size": 16, "dataset": "pydoc-topics", "num_samples": 8, **options}
    r = run(session, "tiny-llama", "ov-weight", params, data=TINY)
    assert r.layers_eligible == 15 and r.layers_quantized == 15
    assert r.metrics["reload_perplexity"] == pytest.approx(r.metrics["perplexity"], rel=1e-6)
    assert 0 < r.metrics["kl_div"] < 0.1
    notes = " ".join(r.notes)
    if "lora_correction" in options:
        assert "LoRA correction adapters" in notes  # adapters counted apart, not as layers
    if "ratio" in options:
        assert "u8" in notes and "u4" in notes  # half the layers in the int8 backup


def test_static_int8_on_tiny_models(session):
    llm = run(session, "tiny-llama", "ov-static", {"num_samples": 8}, data=TINY)
    assert "FakeQuantize" in " ".join(llm.notes) and llm.layers_quantized == 15
    assert llm.metrics["kl_div"] < 0.05
    enc = run(session, "tiny-bert", "ov-static", {"num_samples": 8}, data=TINY)
    assert enc.metrics["embedding_cosine"] >= 0.99
    assert enc.layers_quantized == enc.layers_eligible == 12


def test_a_failure_inside_nncf_is_one_stored_failed_run(session):
    """A group size that does not divide (64 % 48), sent straight to the worker as a stale kernel
    might (the Session would refuse it): NNCF raises inside the worker; the run is stored as failed
    with NNCF's message, and the store keeps the other results."""
    before = len(session.store)
    spec = session.make_spec("tiny-llama", "ov-weight", {"bits": 4, "group_size": 48}, bench=NO_SAVE, data=TINY)
    assert session.problems(spec)  # the kernel refuses it...
    ref = registry.get("ov-weight")
    r = session.executor.run(spec, ref.target, ref.cls.env)  # ...so go around the kernel
    session.store.append(r)
    assert r.status is RunStatus.CRASHED
    assert "48" in r.error and "group" in r.error.lower()
    stored = [x for x in session.store.results(latest_only=False) if x.key == spec.key]
    assert [x.status for x in stored] == [RunStatus.CRASHED] and stored[0].error == r.error
    assert len(session.store) == before + 1


@pytest.mark.slow
def test_smollm2_awq_scale_estimation_beats_data_free_int4(session):
    """NNCF's published claim on our model: int4 g64 with AWQ + scale estimation has lower
    perplexity than data-free int4 g64. Minutes on 2 cores: slow."""
    free = run(session, "smollm2-135m", "ov-weight", {"bits": 4, "group_size": 64}, bench=NO_SAVE)
    aware = run(session, "smollm2-135m", "ov-weight", {"bits": 4, "group_size": 64, "awq": True,
                                                       "scale_estimation": True, "dataset": "pydoc-topics"},
                bench=NO_SAVE)
    assert aware.metrics["perplexity"] < free.metrics["perplexity"]


def test_minilm_static_int8_cosine(session):
    r = run(session, "minilm-l6", "ov-static", {"num_samples": 32}, bench=NO_SAVE)
    assert r.metrics["embedding_cosine"] >= 0.99
    assert r.layers_quantized == r.layers_eligible == 36  # 6 layers x (q, k, v, o, up, down)
    assert r.metrics["weights_bytes"] < 0.35 * 4 * r.metrics["params_count"]
