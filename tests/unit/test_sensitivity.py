"""Layer sensitivity, kernel side: validation before any worker, the stored analysis reused, the
frame ordered by cost, and the heatmap laid out as blocks x layer kinds."""
import pytest

from workbench import sensitivity
from workbench.errors import InvalidParams
from workbench.plots import sensitivity_heatmap
from workbench.result import RunResult, RunStatus
from workbench.session import Session

ROWS = [
    {"layer": f"model.layers.{b}.{part}", "out_features": 8, "in_features": 8, "params": 64, "weight_error": 0.1,
     "rel_output_error": 0.1 * (b + 1), "perplexity": 10.0 + d, "ppl_delta": d}
    for b, part, d in [(0, "self_attn.q_proj", 0.5), (0, "mlp.down_proj", 3.0), (1, "self_attn.q_proj", 0.1),
                       (1, "mlp.down_proj", 1.0)]
] + [{"layer": "lm_head", "out_features": 8, "in_features": 8, "params": 64, "weight_error": 0.1,
      "rel_output_error": 0.2, "perplexity": 12.0, "ppl_delta": 2.0}]


def result(key="k"):
    return RunResult(key=key, status=RunStatus.OK, spec={"model": {"id": "tiny-llama"}, "method": "rtn"},
                     metrics={"perplexity": 10.0}, tables={"layers": ROWS})


def test_layer_positions():
    assert sensitivity.layer_position("model.layers.12.mlp.down_proj") == (12, "mlp.down_proj")
    assert sensitivity.layer_position("lm_head") == (None, "lm_head")


def test_the_frame_puts_the_most_costly_layer_first():
    df = sensitivity.sensitivity_frame(result())
    assert list(df["layer"][:2]) == ["model.layers.0.mlp.down_proj", "lm_head"]
    assert list(df["ppl_delta"]) == sorted(df["ppl_delta"], reverse=True)


def test_the_heatmap_is_blocks_by_layer_kind():
    fig = sensitivity_heatmap(sensitivity.sensitivity_frame(result()))
    hm = fig.data[0]
    assert list(hm.x) == ["0", "1", "lm_head"] and list(hm.y) == ["mlp.down_proj", "self_attn.q_proj",
                                                                   "(outside blocks)"]
    assert hm.z[0][0] == 3.0 and hm.z[1][1] == 0.1 and hm.z[2][2] == 2.0
    assert hm.customdata[0][1] == "model.layers.1.mlp.down_proj"  # hover names the layer
    with pytest.raises(KeyError, match="allowed: ppl_delta"):
        sensitivity_heatmap(sensitivity.sensitivity_frame(result()), "speed")


def test_bad_input_is_refused_before_any_worker(store_path, monkeypatch):
    from workbench.exec.subprocess import SubprocessExecutor

    monkeypatch.setattr(SubprocessExecutor, "run", lambda *a, **k: pytest.fail("a worker started"))
    session = Session(store=store_path, progress=False)
    with pytest.raises(InvalidParams, match="method: 'baseline' has no per-layer quantizer; allowed: rtn"):
        session.sensitivity("tiny-llama", "baseline")
    with pytest.raises(InvalidParams, match="bits"):
        session.sensitivity("tiny-llama", "rtn", {"bits": 1})
    with pytest.raises(InvalidParams, match="tiny-bert is of kind encoder; layer sensitivity .* needs a causal-lm"):
        session.sensitivity("tiny-bert", "rtn", {"group_size": -1})


def test_a_stored_analysis_is_reused(store_path, monkeypatch):
    from workbench.exec.subprocess import SubprocessExecutor

    session = Session(store=store_path, progress=False)
    spec = session.validate(session.make_spec("tiny-llama", "rtn", {"bits": 3}, bench=sensitivity.BENCH))
    session.store.append_analysis(sensitivity.KIND, result(spec.key))
    monkeypatch.setattr(SubprocessExecutor, "run", lambda *a, **k: pytest.fail("a worker started"))
    hit = session.sensitivity("tiny-llama", "rtn", {"bits": 3})
    assert hit.cached and hit.tables["layers"] == ROWS
    assert len(session.store) == 0  # analyses are not runs
