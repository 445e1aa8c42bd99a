"""workbench.baselines: which fp32 baseline each run is compared with, and the ratios against it."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from workbench.baselines import COLUMNS, against_baseline, is_reference
from workbench.plots import results_frame
from workbench.result import RunResult

LM = "smollm2-135m"


def run(key: str, method: str, params: dict | None = None, model: str = LM, status: str = "ok",
        started_at: float | None = None, data: dict | None = None, bench: dict | None = None,
        device: str = "cpu", **metrics: float) -> RunResult:
    spec = {"model": {"id": model}, "method": method, "params": params or {}, "device": device}
    if data is not None:
        spec["data"] = data
    if bench is not None:
        spec["bench"] = bench
    return RunResult(key=key, status=status, spec=spec, metrics=metrics if status == "ok" else {},
                     started_at=started_at, error=None if status == "ok" else "boom")


def ratios(results: list[RunResult], candidates: list[RunResult] | None = None) -> pd.DataFrame:
    pool = results_frame(candidates) if candidates else None
    return against_baseline(results_frame(results), pool).set_index("key")


def test_ratios_against_the_baseline_and_its_own_row():
    df = ratios([run("b", "baseline", perplexity=10.0, decode_tok_s=20.0),
                 run("r", "rtn", {"bits": 4}, perplexity=10.98, decode_tok_s=50.0),
                 run("n", "rtn", {"bits": 8}, perplexity=10.1)])
    assert df.loc["r", "ppl_change"] == pytest.approx(0.098) and df.loc["r", "decode_speedup"] == 2.5
    assert df.loc["b", "ppl_change"] == 0.0 and df.loc["b", "decode_speedup"] == 1.0
    assert df.loc["r", "baseline_key"] == "b" and df.loc["r", "speed_baseline_key"] == "b"
    assert math.isnan(df.loc["n", "decode_speedup"])  # no speed measured: no ratio


def test_no_baseline_no_ratio():
    df = ratios([run("r", "rtn", {"bits": 4}, perplexity=11.0, decode_tok_s=5.0),
                 run("h", "baseline", {"dtype": "bfloat16"}, perplexity=10.01, decode_tok_s=9.0)])
    # A bf16 baseline is a run like the others, never the reference.
    assert df["ppl_change"].isna().all() and df["decode_speedup"].isna().all()
    assert df["baseline_key"].isna().all()
    empty = against_baseline(results_frame([]))
    assert all(c in empty.columns for c in COLUMNS) and len(empty) == 0


def test_another_model_or_other_data_gets_no_ratio():
    df = ratios([run("b", "baseline", perplexity=10.0, decode_tok_s=20.0),
                 run("t", "rtn", {"bits": 4}, model="tiny-llama", perplexity=30.0, decode_tok_s=50.0),
                 run("d", "rtn", {"bits": 4}, data={"eval_windows": 2}, perplexity=11.0, decode_tok_s=30.0),
                 run("s", "rtn", {"bits": 4}, data={"source": "file:/tmp/other.txt"}, perplexity=11.0)])
    for key in ("t", "d", "s"):
        assert math.isnan(df.loc[key, "ppl_change"]) and pd.isna(df.loc[key, "baseline_key"])
    # Calibration sizes change how a run is quantized, not what it is measured on: same baseline.
    df = ratios([run("b", "baseline", perplexity=10.0), run("c", "gptq", data={"calib_samples": 128},
                                                            perplexity=10.5)])
    assert df.loc["c", "ppl_change"] == pytest.approx(0.05)


def test_speed_needs_the_same_device_and_bench_spec():
    df = ratios([run("b", "baseline", perplexity=10.0, decode_tok_s=20.0),
                 run("g", "rtn", {"bits": 4}, device="cuda", perplexity=11.0, decode_tok_s=200.0),
                 run("q", "rtn", {"bits": 8}, bench={"repeats": 9}, perplexity=10.2, decode_tok_s=30.0),
                 run("e", "rtn", {"bits": 2}, bench={"repeats": 3}, perplexity=19.0, decode_tok_s=40.0)])
    # Accuracy compares across devices and bench settings; speed does not.
    assert df.loc["g", "ppl_change"] == pytest.approx(0.1) and math.isnan(df.loc["g", "decode_speedup"])
    assert df.loc["q", "ppl_change"] == pytest.approx(0.02) and math.isnan(df.loc["q", "decode_speedup"])
    # Spelling out the defaults (repeats=3) is the same bench spec.
    assert df.loc["e", "decode_speedup"] == 2.0


def test_the_latest_successful_baseline_is_used_and_a_failed_one_ignored():
    old = run("b1", "baseline", perplexity=10.0, started_at=100.0)
    new = run("b2", "baseline", {"dtype": "float32"}, perplexity=12.0, started_at=200.0)
    failed = run("b3", "baseline", status="crashed", started_at=300.0)
    r = run("r", "rtn", {"bits": 4}, perplexity=13.2, started_at=150.0)
    # Listed out of order: "latest" is by started_at, not by position.
    df = ratios([new, r, failed, old])
    assert df.loc["r", "baseline_key"] == "b2" and df.loc["r", "ppl_change"] == pytest.approx(0.1)
    assert df.loc["b1", "ppl_change"] == pytest.approx(10.0 / 12.0 - 1)  # an older baseline is compared too
    assert df.loc["b3", "baseline_key"] == "b2" and math.isnan(df.loc["b3", "ppl_change"])
    # Without started_at, the later row wins (the store lists rows in the order they were written).
    df = ratios([run("x1", "baseline", perplexity=10.0), run("x2", "baseline", perplexity=11.0),
                 run("r", "rtn", perplexity=12.1)])
    assert df.loc["r", "baseline_key"] == "x2"
    # Only failed baselines: none.
    df = ratios([failed, r])
    assert pd.isna(df.loc["r", "baseline_key"]) and math.isnan(df.loc["r", "ppl_change"])


def test_candidates_supply_a_baseline_but_are_not_shown():
    df = ratios([run("r", "rtn", {"bits": 4}, perplexity=11.0)],
                candidates=[run("b", "baseline", perplexity=10.0)])
    assert list(df.index) == ["r"] and df.loc["r", "ppl_change"] == pytest.approx(0.1)


def test_is_reference():
    assert is_reference("baseline", {}) and is_reference("baseline", '{"dtype": "float32"}')
    assert not is_reference("baseline", {"dtype": "float16"}) and not is_reference("rtn", {})
    assert not is_reference("baseline", "not json")


def test_row_keys_are_stable_and_fill_in_the_defaults():
    from workbench.protocols import get
    from workbench.spec import ModelSpec, RunSpec

    LIGHT_DATA, LIGHT_BENCH = get("quick").data, get("quick").bench

    spelled = RunResult(key="a", status="ok", spec=RunSpec(model=ModelSpec(LM), method="baseline").to_dict()).to_row()
    bare = run("b", "baseline").to_row()
    assert spelled["data_key"] == bare["data_key"] and spelled["bench_key"] == bare["bench_key"]
    assert len(bare["data_key"]) == 16 and len(bare["bench_key"]) == 16
    light = RunResult(key="c", status="ok", spec=RunSpec(model=ModelSpec(LM), method="rtn", data=LIGHT_DATA,
                                                         bench=LIGHT_BENCH).to_dict()).to_row()
    assert light["data_key"] != bare["data_key"] and light["bench_key"] != bare["bench_key"]
    assert run("d", "rtn", model="tiny-llama").to_row()["data_key"] != bare["data_key"]
    # A spec this version cannot parse still gets keys (its raw JSON's), never an exception.
    odd = RunResult(key="e", status="ok", spec={"model": {"id": LM, "new_field": 1}, "data": {"future": 2}})
    assert len(odd.to_row()["data_key"]) == 16
