"""Layer sensitivity through a real worker on tiny-llama: every layer rtn would quantize is measured,
fewer bits cost more on every layer, the analysis is stored apart from the runs, and the CLI writes
the heatmap."""
import os
import subprocess
import sys

import pytest

from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import DataSpec

from ..conftest import requires_torch_env

pytestmark = requires_torch_env
DATA = DataSpec(eval_windows=2, window=64, calib_samples=4, calib_seq_len=64)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(store=tmp_path_factory.mktemp("store") / "wb.sqlite", progress=False)


def test_every_selected_layer_is_measured_and_fewer_bits_cost_more(session):
    events = []
    two = session.sensitivity("tiny-llama", "rtn", {"bits": 2, "group_size": 16}, data=DATA,
                              progress=lambda stage, fraction, message: events.append((stage, message)))
    eight = session.sensitivity("tiny-llama", "rtn", {"bits": 8, "group_size": 16}, data=DATA)
    assert two.status is RunStatus.OK and eight.status is RunStatus.OK, (two.error, two.stderr_tail)
    layers2 = {r["layer"]: r for r in two.tables["layers"]}
    layers8 = {r["layer"]: r for r in eight.tables["layers"]}
    assert len(layers2) == 14 and "lm_head" not in layers2  # rtn's default exclude
    for name, r in layers2.items():
        assert 0 < layers8[name]["rel_output_error"] < r["rel_output_error"] / 10, name
        assert r["perplexity"] == pytest.approx(two.metrics["perplexity"] + r["ppl_delta"])
    assert abs(max(abs(r["ppl_delta"]) for r in layers8.values())) < abs(max(abs(r["ppl_delta"]) for r in layers2.values()))
    assert ("layers", "layer 14 of 14: model.layers.1.mlp.down_proj") in events
    assert two.versions["torch"] and two.device
    again = session.sensitivity("tiny-llama", "rtn", {"bits": 2, "group_size": 16}, data=DATA)
    assert again.cached and again.tables == two.tables
    assert len(session.store) == 0


def test_the_cli_prints_the_costly_layers_and_writes_the_heatmap(tmp_path):
    out = tmp_path / "heat.html"
    p = subprocess.run([sys.executable, "-m", "workbench.cli", "sensitivity", "--model", "tiny-llama",
                        "--param", "bits=3", "--param", "group_size=16", "--data-field", "eval_windows=2",
                        "--data-field", "window=64", "--top", "3", "--heatmap", str(out),
                        "--store", str(tmp_path / "wb.sqlite"), "--quiet"],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert p.returncode == 0, p.stderr
    assert "the 3 of 14 layers that cost the most" in p.stdout and "ppl_delta" in p.stdout
    assert out.stat().st_size > 100_000 and "Layer sensitivity" in out.read_text()
    bad = subprocess.run([sys.executable, "-m", "workbench.cli", "sensitivity", "--model", "tiny-llama",
                          "--method", "baseline", "--store", str(tmp_path / "wb.sqlite")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "has no per-layer quantizer; allowed: rtn" in bad.stderr
