"""CUDA-only paths of the calibration-based methods: GPTQ with the exllama / marlin kernels, AWQ
with AutoAWQ's fused modules. Skipped without CUDA (CI has none); run on a GPU machine with
`pytest tests/gpu` after `make setup` (the gptq environment then needs autoawq-kernels and
flash-attn for the fused modules). Not executed in this project yet: no GPU was lent."""
import pytest

from workbench.registry import cuda_present
from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec, DataSpec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_present(), reason="needs CUDA")]
TINY = DataSpec(eval_windows=2, window=64, calib_samples=8, calib_seq_len=64)
CALIB = {"num_samples": 8, "seq_len": 64}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(store=tmp_path_factory.mktemp("store") / "wb.sqlite", progress=False)


@pytest.mark.parametrize("kernel", ["exllama_v1", "exllama_v2", "marlin"])
def test_gptq_cuda_kernels_match_the_cpu_kernel(session, kernel):
    cpu = session.submit(session.make_spec("tiny-llama", "gptq", {**CALIB}, bench=BenchSpec(latency=False), data=TINY))
    gpu = session.submit(session.make_spec("tiny-llama", "gptq", {**CALIB, "kernel": kernel}, device="cuda",
                                           bench=BenchSpec(latency=False), data=TINY))
    assert cpu.status is RunStatus.OK and gpu.status is RunStatus.OK, (gpu.error, gpu.stderr_tail)
    assert gpu.device.get("cuda_available") and kernel in gpu.kernel
    assert gpu.metrics["perplexity"] == pytest.approx(cpu.metrics["perplexity"], rel=0.02)


def test_awq_fused_modules_run_and_give_the_unfused_perplexity(session):
    specs = [session.make_spec("smollm2-135m", "awq", {**CALIB, "kernel": "gemm", "do_fuse": fuse}, device="cuda",
                               bench=BenchSpec(latency=True, save=False), data=TINY) for fuse in (False, True)]
    unfused, fused = (session.submit(s) for s in specs)
    assert unfused.status is RunStatus.OK and fused.status is RunStatus.OK, (fused.error, fused.stderr_tail)
    assert "fused modules" in fused.kernel
    assert fused.metrics["perplexity"] == pytest.approx(unfused.metrics["perplexity"], rel=0.02)
    assert fused.tables["generation"] and unfused.tables["generation"]
