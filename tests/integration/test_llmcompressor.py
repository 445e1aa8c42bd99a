"""llm-compressor and the pre-quantized loaders through the product: Session -> worker in the
llmcompressor environment -> store, on tiny-llama. The SmolLM2 runs (minutes of calibration)
are in benchmarks/calibrated.py."""
import json
import subprocess
import textwrap

import pytest

from workbench.envs import manager
from workbench.errors import InvalidParams
from workbench.models import catalog
from workbench.paths import checkpoint_dir
from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec, DataSpec, ModelSpec

from ..conftest import requires_llmcompressor_env, requires_torch_env

pytestmark = [requires_llmcompressor_env, requires_torch_env]
RELOAD = BenchSpec(latency=False, reload_check=True)
NO_SAVE = BenchSpec(latency=False, save=False)
TINY = DataSpec(eval_windows=2, window=64, calib_samples=8, calib_seq_len=64)
CALIB = {"dataset": "pydoc-topics", "num_samples": 8, "seq_len": 64}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(store=tmp_path_factory.mktemp("store") / "wb.sqlite", progress=False)


def run(session, method, params, bench=RELOAD, model="tiny-llama", status=RunStatus.OK):
    r = session.submit(session.make_spec(model, method, params, bench=bench, data=TINY))
    assert r.status is status, (r.error, r.stderr_tail)
    return r


def test_w8a8_and_w4a16_rtn_save_compressed_and_reload_to_the_same_perplexity(session):
    fp32 = run(session, "baseline", {}, bench=NO_SAVE)
    w8 = run(session, "llmcompressor", {"scheme": "W8A8"})
    w4 = run(session, "llmcompressor", {"scheme": "W4A16", "group_size": 64, "ignore": ["lm_head", "*.down_proj"]})
    fp8 = run(session, "llmcompressor", {"scheme": "FP8_DYNAMIC"})
    assert fp8.layers_quantized == 14 and any("'float-quantized'" in n for n in fp8.notes), fp8.notes
    assert fp8.metrics["reload_perplexity"] == pytest.approx(fp8.metrics["perplexity"], rel=1e-5)
    for r in (w8, w4):
        # the reload check: the saved checkpoint, loaded by plain transformers in a fresh worker,
        # gives the in-memory perplexity (else the status would be reload_mismatch)
        assert r.metrics["reload_perplexity"] == pytest.approx(r.metrics["perplexity"], rel=1e-5)
        assert r.versions["llmcompressor"] == "0.14.0.1" and r.versions["compressed-tensors"] == "0.19.0"
        assert r.versions["transformers"] == "5.17.0"
        assert r.layers_eligible == 15  # 14 projections + the tied lm_head
        assert r.metrics["weights_bytes"] < fp32.metrics["weights_bytes"]
        assert r.metrics["kl_div"] < 0.5 and r.metrics["perplexity"] > 1
    assert w8.layers_quantized == 14 and w4.layers_quantized == 12  # lm_head, and the two down_proj, ignored
    assert any("'int-quantized'" in n for n in w8.notes) and any("'pack-quantized'" in n for n in w4.notes)
    assert any("model.layers.0.mlp.down_proj" in n for n in w4.notes)
    # int8 per channel keeps the logits closer than int4 g64
    assert w8.metrics["kl_div"] < w4.metrics["kl_div"]


def test_gptq_and_awq_calibrate_report_layers_and_reload(session):
    progress = []
    spec = session.make_spec("tiny-llama", "llmcompressor", {"modifier": "gptq", **CALIB}, bench=RELOAD, data=TINY)
    gptq = session.submit(spec, progress=lambda stage, frac, msg: progress.append((stage, frac, msg)))
    assert gptq.status is RunStatus.OK, (gptq.error, gptq.stderr_tail)
    assert gptq.layers_quantized == 14 and gptq.metrics["quantize_s"] > 0
    # per-layer progress from the sequential pipeline: 2 decoder layers (+ the head part)
    assert any(stage == "calibrate" and "layer 1 of" in msg for stage, _, msg in progress), progress
    assert any("8 calibration samples" in msg for _, _, msg in progress)
    awq = run(session, "llmcompressor", {"modifier": "awq", "sym": False, **CALIB})
    assert awq.layers_quantized == 14 and awq.status is RunStatus.OK
    awq_down = run(session, "llmcompressor", {"modifier": "awq", "ignore": ["lm_head", "*.down_proj"], **CALIB},
                   bench=NO_SAVE)
    assert any("AWQ smoothing skipped" in n and "down_proj" in n for n in awq_down.notes), awq_down.notes


def test_the_compressed_tensors_loader_measures_a_kept_checkpoint_like_in_memory(session):
    params = {"scheme": "W4A16", "group_size": 32, "sym": False, "keep_checkpoint": True}
    made = run(session, "llmcompressor", params, bench=NO_SAVE)
    kept = checkpoint_dir("llmcompressor", made.key)
    assert any(str(kept) in n for n in made.notes) and (kept / "config.json").exists()
    loaded = run(session, "compressed-tensors", {"checkpoint": str(kept)}, bench=NO_SAVE)
    assert loaded.metrics["perplexity"] == pytest.approx(made.metrics["perplexity"], rel=1e-5)
    assert loaded.metrics["kl_div"] == pytest.approx(made.metrics["kl_div"], rel=1e-4, abs=1e-7)
    assert loaded.layers_quantized == made.layers_quantized == 14
    assert loaded.metrics["weights_bytes"] == made.metrics["weights_bytes"]
    assert "pack-quantized" in loaded.kernel
    # a checkpoint of another architecture is refused before any worker starts
    with pytest.raises(InvalidParams, match="not a quantized copy of the run model"):
        session.validate(session.make_spec("smollm2-135m", "compressed-tensors", {"checkpoint": str(kept)}))


def test_bad_input_is_refused_in_validation_and_nothing_is_stored(session):
    stored = len(session.store.results(latest_only=False))
    bad = session.submit(session.make_spec("tiny-llama", "llmcompressor", {"group_size": 128}))
    assert bad.status is RunStatus.INVALID and "group_size=128 does not divide the input dimension 64" in bad.error
    bad = session.submit(session.make_spec("tiny-llama", "llmcompressor", {"modifier": "gptq", "dataset": ""}))
    assert bad.status is RunStatus.INVALID and "dataset: modifier=gptq calibrates on text and needs" in bad.error
    assert len(session.store.results(latest_only=False)) == stored


AQLM_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from pathlib import Path
    import transformers.quantizers  # noqa: F401 - before transformers.integrations (circular import otherwise)
    from safetensors.torch import save_file
    from transformers import AqlmConfig, AutoModelForCausalLM
    from transformers.integrations import replace_with_aqlm_linear

    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    qc = AqlmConfig(in_group_size=8, out_group_size=1, num_codebooks=1, nbits_per_codebook=8,
                    linear_weights_not_to_quantize=["lm_head"])
    keep = {k: v.clone() for k, v in model.state_dict().items()}
    replace_with_aqlm_linear(model, modules_to_not_convert=["lm_head"], quantization_config=qc)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, v in model.state_dict().items():
        if k in keep:
            state[k] = keep[k]
        elif v.dtype in (torch.int8, torch.int16, torch.int32, torch.uint8):
            state[k] = torch.randint(-128, 127, v.shape, generator=g).to(v.dtype)
        else:  # codebooks and scales: small random values, so the logits stay finite
            state[k] = (torch.randn(v.shape, generator=g) * 0.05).to(v.dtype)
    state.pop("lm_head.weight", None)  # tied to the embeddings
    out.mkdir(parents=True)
    save_file({k: t.contiguous() for k, t in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = qc.to_dict()
    (out / "config.json").write_text(json.dumps(config))
""")


def test_aqlm_checkpoint_loads_and_runs_on_cpu(session, tmp_path):
    # No AQLM checkpoint can be downloaded here and making a real one needs AQLM's training code:
    # random codes in the real format exercise the loader, the kernel and the measurement.
    out = tmp_path / "aqlm-tiny"
    src = catalog.describe(ModelSpec("tiny-llama")).path
    subprocess.run([manager.python_for("llmcompressor"), "-c", AQLM_SCRIPT, src, str(out)], check=True,
                   env=manager.worker_env(), capture_output=True, timeout=300)
    r = run(session, "aqlm", {"checkpoint": str(out)}, bench=NO_SAVE)
    assert r.layers_quantized == 14 and r.layers_eligible == 15 and "QuantizedLinear" in r.kernel
    assert r.versions["aqlm"] == "1.1.7" and r.metrics["perplexity"] > 1
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "aqlm"
