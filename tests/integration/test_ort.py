"""The ONNX Runtime methods through the product: Session -> subprocess worker in the onnx
environment -> store, on tiny models and on all-MiniLM-L6-v2. The SmolLM2 runs (export check,
int4 with decode tokens/s, dynamic int8's perplexity) are slow here: benchmarks/onnxruntime.py."""
import json
import shutil

import numpy as np
import pytest

from workbench import plots
from workbench.errors import InvalidParams
from workbench.models import catalog
from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec, DataSpec, ModelSpec
from workbench.teach import observers, tensors

from ..conftest import requires_onnx_env, requires_torch_env

pytestmark = [requires_onnx_env, requires_torch_env]
NO_LATENCY = BenchSpec(latency=False)
NO_SAVE = BenchSpec(latency=False, save=False)
TINY = DataSpec(eval_windows=2, window=64, calib_samples=8, calib_seq_len=64)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(store=tmp_path_factory.mktemp("store") / "wb.sqlite", progress=False)


def run(session, model, method, params, bench=NO_LATENCY, data=None, status=RunStatus.OK):
    r = session.submit(session.make_spec(model, method, params, bench=bench, data=data))
    assert r.status is status, (r.error, r.stderr_tail)
    return r


def test_export_check_catches_a_planted_rope_theta_mismatch(session, tmp_path):
    # A transformers-5 config with RoPE settings only in rope_parameters: transformers 4.57 (the onnx
    # environment) reads rope_theta=10000 from it. The baseline runs in the torch environment (transformers 5).
    src = tmp_path / "planted"
    shutil.copytree(catalog.describe(ModelSpec("tiny-llama")).path, src)
    config = json.loads((src / "config.json").read_text())
    config.pop("rope_theta", None)
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 100.0}
    (src / "config.json").write_text(json.dumps(config))
    fixed = run(session, str(src), "ort-export", {}, bench=NO_SAVE, data=TINY)
    assert any("rope_parameters.rope_theta=100.0" in n and "rope_theta=10000" in n for n in fixed.notes), fixed.notes
    assert fixed.metrics["kl_div"] < 1e-5 and fixed.metrics["perplexity"] == pytest.approx(
        fixed.metrics["reference_perplexity"], rel=1e-4)
    planted = run(session, str(src), "ort-export", {"fix_config": False}, bench=NO_SAVE, data=TINY,
                  status=RunStatus.FLAGGED)
    assert "does not match the PyTorch fp32 model" in planted.error and "tolerance 0.5%" in planted.error
    assert planted.metrics["kl_div"] > 0.01


def test_tiny_llama_export_dynamic_and_int4_run_generate_and_reload(session):
    fp32 = run(session, "tiny-llama", "ort-export", {}, bench=BenchSpec(reload_check=True), data=TINY)
    assert fp32.layers_quantized == 0 and fp32.layers_eligible == 15  # 14 Linear + the tied lm_head
    assert fp32.metrics["decode_tok_s"] > 0 and fp32.tables["generation"] and fp32.tables["forward"]
    assert fp32.versions["onnxruntime"] == "1.32.0" and fp32.versions["transformers"].startswith("4.57")
    assert fp32.metrics["reload_perplexity"] == pytest.approx(fp32.metrics["perplexity"], rel=1e-6)
    dyn = run(session, "tiny-llama", "ort-dynamic", {}, data=TINY)
    assert dyn.layers_quantized == dyn.layers_eligible == 15  # the tied lm_head re-quantizes the int8 table
    assert dyn.metrics["weights_bytes"] < 0.4 * fp32.metrics["weights_bytes"]
    assert "dynamic int8" in dyn.kernel and 0 < dyn.metrics["kl_div"] < 0.5
    # A module pattern and an ONNX node name, together.
    head = run(session, "tiny-llama", "ort-int4",
               {"exclude": ["model.layers.1.*.down_proj", "/model/layers.0/mlp/down_proj/MatMul"]}, data=TINY)
    assert head.layers_quantized == 15 - 2 - 1  # down_proj of 2 layers excluded; the tied lm_head stays fp32
    bad = session.submit(session.make_spec("tiny-llama", "ort-int4", {"exclude": ["/model/nope/MatMul"]},
                                           bench=NO_SAVE, data=TINY))
    assert bad.status is RunStatus.INVALID and "no node named /model/nope/MatMul" in bad.error
    full = run(session, "tiny-llama", "ort-int4", {"lm_head": "int8", "embedding": True, "block_size": 16},
               data=TINY)
    assert full.layers_quantized == 15 and any("untied" in n for n in full.notes)
    assert full.metrics["weights_bytes"] < head.metrics["weights_bytes"]
    assert full.metrics["reload_perplexity"] == pytest.approx(full.metrics["perplexity"], rel=1e-4)


def test_minilm_dynamic_per_channel_keeps_cosine_and_beats_per_tensor(session):
    pc = run(session, "minilm-l6", "ort-dynamic", {}, bench=NO_SAVE)
    pt = run(session, "minilm-l6", "ort-dynamic", {"per_channel": False}, bench=NO_SAVE)
    assert pc.metrics["embedding_cosine"] >= 0.99  # measured 0.9912
    assert pt.metrics["embedding_cosine"] < pc.metrics["embedding_cosine"]
    assert pc.layers_quantized == pc.layers_eligible == 36
    assert pc.metrics["weights_bytes"] < 0.3 * 90e6


@pytest.mark.parametrize("calibration", ["minmax", "entropy", "percentile"])
def test_minilm_static_calibrators_run(session, calibration):
    r = run(session, "minilm-l6", "ort-static", {"calibration": calibration, "num_samples": 16}, bench=NO_SAVE)
    assert r.metrics["embedding_cosine"] > 0.98  # 0.990-0.991 with 64 samples
    assert r.layers_quantized == 30 and r.layers_eligible == 36  # the 6 FFN output projections stay fp32
    assert any(f"{calibration}" in n and "16 samples" in n for n in r.notes), r.notes
    assert "QDQ" in r.kernel


def test_bad_ort_input_is_refused_before_any_worker(session):
    for model, method, params, needle in [
        ("tiny-llama", "ort-static", {}, "encoder"),
        ("minilm-l6", "ort-static", {"calibration": "entropy", "operators": ["MatMul", "Where"]}, "Too many bins"),
        ("minilm-l6", "ort-dynamic", {"exclude": ["*.q_proj"]}, "matches none of the 37"),
    ]:
        with pytest.raises(Exception) as e:
            session.validate(session.make_spec(model, method, params))
        assert needle in str(e.value), str(e.value)
    with pytest.raises(InvalidParams, match="reduce_range: only applies when preset=avx512 or avx2"):
        session.validate(session.make_spec("minilm-l6", "ort-dynamic", {"reduce_range": True}))


LAYERS = ["encoder.layer.0.attention.self.query", "encoder.layer.0.intermediate.dense",
          "encoder.layer.0.output.dense", "encoder.layer.5.output.dense"]


def test_observer_minmax_ranges_equal_ort_minmax_calibrator(tmp_path):
    acts = tensors.activations("minilm-l6", LAYERS, samples=8, seq_len=128)
    ort = tensors.ort_ranges("minilm-l6", LAYERS, "minmax", samples=8, seq_len=128)
    for layer in LAYERS:
        ob = observers.MinMaxObserver()
        for rows in np.array_split(acts[layer], 8):
            ob.update(rows)
        ours = ob.range()
        lo, hi = ort[layer]
        assert ours.lo == pytest.approx(lo, rel=1e-5, abs=1e-6) and ours.hi == pytest.approx(hi, rel=1e-5, abs=1e-6)
    # Entropy and percentile are other rules: not equal, but inside the min-max range.
    ent = tensors.ort_ranges("minilm-l6", LAYERS[2:3], "entropy", samples=8, seq_len=128)[LAYERS[2]]
    assert ort[LAYERS[2]][0] <= ent[0] < ent[1] <= ort[LAYERS[2]][1] + 1e-6

    # The four range choices on one real histogram (the GELU output feeding layer 0's FFN output projection).
    x = acts[LAYERS[2]]
    ranges = observers.observe(x)
    four = {k: ranges[k] for k in ("minmax", "percentile", "mse", "entropy")}
    fig = plots.ranges_on_histogram(x, {**four, "ort-minmax": ort[LAYERS[2]]}, "layer 0 FFN output input")
    html = tmp_path / "ranges.html"
    fig.write_html(html, include_plotlyjs=False)
    edges = [s.x0 for s in fig.layout.shapes]
    assert len(edges) == 10 and html.stat().st_size > 1000
    assert edges[0] == pytest.approx(float(x.min())) and edges[1] == pytest.approx(float(x.max()))
    assert edges[8:] == pytest.approx(list(ort[LAYERS[2]]), rel=1e-5)
    assert edges[1] > edges[3] and edges[1] > edges[5]  # percentile and MSE clip the long GELU tail
    assert len(fig.data[0].x) == x.size
