"""GPTQ (GPTQModel) and AWQ (AutoAWQ, run with GPTQModel's CPU kernels) through the product, on
tiny-llama: calibrate, save, reload through transformers, measure. SmolLM2 (minutes per run):
benchmarks/calibrated.py."""
import pytest

from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec, DataSpec

from ..conftest import requires_env, requires_torch_env

pytestmark = [requires_env("gptq"), requires_torch_env]
RELOAD = BenchSpec(latency=False, reload_check=True)
TINY = DataSpec(eval_windows=2, window=64, calib_samples=8, calib_seq_len=64)
CALIB = {"num_samples": 8, "seq_len": 64}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(store=tmp_path_factory.mktemp("store") / "wb.sqlite", progress=False)


def submit(session, method, params, bench=RELOAD):
    events = []
    r = session.submit(session.make_spec("tiny-llama", method, params, bench=bench, data=TINY),
                       progress=lambda stage, frac, msg: events.append((stage, frac, msg)))
    return r, events


def test_gptq_4bit_g64_calibrates_per_layer_reloads_and_records_versions(session):
    fp32, _ = submit(session, "baseline", {}, bench=BenchSpec(latency=False, save=False))
    r, events = submit(session, "gptq", {"bits": 4, "group_size": 64, **CALIB})
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    assert r.layers_quantized == 14 and r.layers_eligible == 15  # lm_head (tied) stays float
    assert "gptq_torch_aten" in r.kernel and "TorchAtenLinear" in r.kernel
    assert r.versions["gptqmodel"] == "7.7.0" and r.versions["transformers"] == "5.23.0"
    assert r.metrics["reload_perplexity"] == pytest.approx(r.metrics["perplexity"], rel=1e-5)
    # packed 4-bit weights: fewer bytes than the fp32 model, the tied embedding kept
    assert r.metrics["weights_bytes"] < 0.75 * fp32.metrics["weights_bytes"]
    assert 0 < r.metrics["kl_div"] < 0.5
    assert ("quantize", 0.5, "layer 1 of 2") in events and ("quantize", 1.0, "layer 2 of 2") in events


def test_gptq_8bit_runs_with_the_int8_kernel(session):
    r, _ = submit(session, "gptq", {"bits": 8, "group_size": -1, **CALIB}, bench=BenchSpec(latency=False, save=False))
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    assert "torch_int8" in r.kernel and r.layers_quantized == 14
    four, _ = submit(session, "gptq", {"bits": 4, "group_size": 64, **CALIB})
    assert r.metrics["kl_div"] < four.metrics["kl_div"]


def test_awq_quantizes_with_autoawq_and_runs_on_cpu(session):
    r, events = submit(session, "awq", CALIB)
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    # clip=auto: tiny-llama's 32-row k/v projections cannot go through AutoAWQ's clip search
    assert any("clip off (auto: 4 layers" in n for n in r.notes), r.notes
    assert r.layers_quantized == 14 and "torch_fused_awq" in r.kernel
    assert r.versions["autoawq"] == "0.2.9"
    assert r.metrics["reload_perplexity"] == pytest.approx(r.metrics["perplexity"], rel=1e-5)
    assert any(stage == "quantize" and msg == "layer 2 of 2" for stage, _, msg in events)
    assert 0 < r.metrics["kl_div"] < 0.5


@pytest.mark.parametrize("method,params,status,text", [
    ("awq", {"clip": "on"}, RunStatus.INVALID, "clip: AutoAWQ's clip search needs output rows in multiples of 64"),
    ("awq", {"do_fuse": True}, RunStatus.UNAVAILABLE, "do_fuse: fused modules need CUDA"),
    ("awq", {"kernel": "gemm"}, RunStatus.UNAVAILABLE, "kernel=gemm runs only on CUDA"),
    ("gptq", {"group_size": 128}, RunStatus.INVALID, "group_size=128 does not divide the input dimension 64"),
    ("gptq", {"kernel": "exllama_v2"}, RunStatus.UNAVAILABLE, "kernel=exllama_v2 runs only on CUDA"),
    ("gptq", {"bits": 3, "kernel": "exllama_v2"}, RunStatus.INVALID, "kernel=exllama_v2 runs 4-bit checkpoints"),
    ("gptq", {"dataset": ""}, RunStatus.INVALID, "needs a dataset"),
])
def test_bad_input_is_refused_before_any_worker(session, method, params, status, text):
    stored = len(session.store.results(latest_only=False))
    r, events = submit(session, method, params)
    assert r.status is status and text in r.error, r.error
    assert events == [] and len(session.store.results(latest_only=False)) == stored
