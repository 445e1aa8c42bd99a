"""GPTQ (GPTQModel) and AWQ (AutoAWQ, run with GPTQModel's CPU kernels) through the product, on
tiny-llama: calibrate, save, reload through transformers, measure. SmolLM2 (minutes per run):
benchmarks/calibrated.py."""
import subprocess
import textwrap

import pytest

from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec, DataSpec

from workbench.envs import manager

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


SCALE_SEARCH = textwrap.dedent("""
    import sys, torch
    from awq.quantize.quantizer import AwqQuantizer
    from workbench.methods.awq import _scale_search_keeps_weights
    q = AwqQuantizer.__new__(AwqQuantizer)
    q.w_bit, q.group_size, q.zero_point, q.duo_scaling = 4, 64, True, True
    q.n_parallel_calib_samples, q.max_chunk_memory = None, 2**30
    torch.manual_seed(0)
    fc = torch.nn.Linear(128, 64, bias=False)
    before = fc.weight.detach().clone()
    x = torch.randn(2, 16, 128)
    with torch.no_grad(), (_scale_search_keeps_weights() if sys.argv[1] == "fixed" else torch.no_grad()):
        q._compute_best_scale(x, fc.weight.abs().mean(0), x.abs().view(-1, 128).mean(0), fc, [fc], fc(x), {})
    print(torch.equal(fc.weight, before))
""")


@pytest.mark.parametrize("mode,unchanged", [("as-shipped", "False"), ("fixed", "True")])
def test_autoawq_scale_search_leaves_the_weights_as_they_were_on_cpu(mode, unchanged):
    """AutoAWQ 0.2.9 restores a `.cpu()` snapshot that, on the CPU, is the weights themselves: the
    first grid point's scaling stays. The workbench patches it; if AutoAWQ fixes it, the first
    case fails and the patch can go."""
    p = subprocess.run([manager.python_for("gptq"), "-c", SCALE_SEARCH, mode], capture_output=True, text=True,
                       env=manager.worker_env(), timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == unchanged
