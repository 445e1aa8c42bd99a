"""plots.py: Pareto masks, figures (traces, points, empty cases) and tables from hand-built results."""
from __future__ import annotations

import copy
import math

import pandas as pd
import pytest

from workbench import plots
from workbench.result import RunResult, RunStatus

LM = "smollm2-135m"
MIB = 2**20
ENC = "all-minilm-l6-v2"


def forward(scale: float) -> list[dict]:
    return [{"batch_size": b, "seq_len": 128, "latency_ms": 10.0 * b * scale, "latency_ms_min": 9.0 * b * scale,
             "latency_ms_max": 12.0 * b * scale, "tokens_per_s": 128 * b / (0.01 * b * scale),
             "peak_rss_mb": 300.0 + b} for b in (1, 2, 4)]


def generation(scale: float) -> list[dict]:
    return [{"Batch Size": 1, "Prefill Length": n, "Decode Length": 32, "Prefill tokens/s": 900.0 * scale,
             "Decode tokens/s": 20.0 * scale, "Decode tokens/s min": 19.0 * scale,
             "Decode tokens/s max": 22.0 * scale, "Memory (MB)": 400.0, "note": ""} for n in (32, 256)]


def throughput(scale: float) -> list[dict]:
    return [{"batch_size": b, "prompt_length": 32, "decode_tokens": 32, "generate_tok_s": 18.0 * b * scale}
            for b in (1, 4)]


def run(key: str, method: str, params: dict, model: str = LM, status: str = "ok", tables: bool = True,
        **metrics: float) -> RunResult:
    ok = RunStatus(status).succeeded
    return RunResult(
        key=key, status=status, spec={"model": {"id": model}, "method": method, "params": params, "device": "cpu"},
        metrics=dict(metrics) if ok else {},
        tables={"forward": forward(1.0), "generation": generation(1.0), "throughput": throughput(1.0)}
        if ok and tables else {},
        layers_quantized=210 if ok else None, layers_eligible=211 if ok else None,
        kernel="reference-dequant" if ok else None,
        error=None if ok else "CUDA out of <memory> & more",
    )


@pytest.fixture
def results() -> list[RunResult]:
    return [
        run("k0", "baseline", {}, weights_bytes=538 * MIB, perplexity=14.70, kl_div=0.0, top1_agreement=1.0,
            decode_tok_s=20.3),
        run("k1", "rtn", {"bits": 8, "group_size": 64, "sym": True}, weights_bytes=140 * MIB, perplexity=14.75,
            kl_div=0.002, top1_agreement=0.98, decode_tok_s=19.0),
        # Dominated by k1: bigger and worse.
        run("k2", "rtn", {"bits": 8, "group_size": 128, "sym": True}, weights_bytes=150 * MIB, perplexity=14.90),
        run("k3", "rtn", {"bits": 4, "group_size": 64, "sym": False}, weights_bytes=84 * MIB, perplexity=19.55),
        run("k4", "rtn", {"bits": 2, "group_size": 64, "sym": False}, status="oom"),
        run("e0", "baseline", {}, model=ENC, tables=False, weights_bytes=90 * MIB, embedding_cosine=1.0),
        run("e1", "rtn", {"bits": 8, "group_size": 64, "sym": True}, model=ENC, tables=False, weights_bytes=24 * MIB,
            embedding_cosine=0.999),
        run("e2", "rtn", {"bits": 4, "group_size": 64, "sym": True}, model=ENC, tables=False, weights_bytes=26 * MIB,
            embedding_cosine=0.95),
    ]


def annotation(fig) -> str:
    return " ".join(a.text for a in fig.layout.annotations)


# --- pareto_front -----------------------------------------------------------------------
def test_pareto_front_on_handmade_frame():
    df = pd.DataFrame({"x": [1, 2, 3, 4, 5, 6, float("nan")], "y": [10, 5, 5, 1, 2, 1, 0]},
                      index=list("abcdefg"))
    before = df.copy()
    mask = plots.pareto_front(df, "x", "y")
    # c is dominated by b (same y, larger x); e and f by d; g has no x.
    assert mask.to_dict() == {"a": True, "b": True, "c": False, "d": True, "e": False, "f": False, "g": False}
    assert mask.dtype == bool
    pd.testing.assert_frame_equal(df, before)


def test_pareto_front_maximize_and_ties():
    df = pd.DataFrame({"x": [1.0, 2.0, 2.0, 3.0], "y": [0.90, 0.99, 0.99, 0.98]})
    mask = plots.pareto_front(df, "x", "y", minimize_y=False)
    # Both copies of the tie stay; (3, .98) is bigger and worse than (2, .99).
    assert mask.tolist() == [True, True, True, False]
    only_y = plots.pareto_front(df, "x", "y", minimize_x=False, minimize_y=False)
    assert only_y.tolist() == [False, True, True, True]


def test_pareto_front_unknown_column_is_named():
    with pytest.raises(KeyError, match="perplexity"):
        plots.pareto_front(pd.DataFrame({"x": [1]}), "x", "perplexity")


def test_pareto_front_empty_frame():
    assert plots.pareto_front(pd.DataFrame({"x": [], "y": []}), "x", "y").tolist() == []


# --- accuracy vs memory -----------------------------------------------------------------
def test_accuracy_vs_memory_causal_lm(results):
    df = plots.results_frame(results)
    lm = df[df["model"] == LM]
    before = lm.copy()
    fig = plots.accuracy_vs_memory(lm)
    pd.testing.assert_frame_equal(lm, before)
    assert len(fig.data) == 2  # the runs, the front
    points, front = fig.data
    # Four successful runs; the oom one is left out.
    assert len(points.x) == 4
    assert list(points.text) == ["baseline", "rtn bits=8 group_size=64 sym", "rtn bits=8 group_size=128 sym",
                                 "rtn bits=4 group_size=64 sym=false"]
    assert list(points.marker.symbol) == ["diamond", "diamond", "circle", "diamond"]
    # The front goes left to right in MB: k3 (84), k1 (140), baseline (538).
    assert list(front.x) == pytest.approx([84.0, 140.0, 538.0])
    assert list(front.y) == pytest.approx([19.55, 14.75, 14.70])
    assert "weights (MB)" in fig.layout.xaxis.title.text
    assert "perplexity" in fig.layout.yaxis.title.text
    # Hover data: params and layer counts.
    assert points.customdata[1][1] == "210/211"
    assert "bits=8" in points.customdata[1][0]


def test_accuracy_vs_memory_picks_cosine_for_encoders(results):
    df = plots.results_frame(results)
    enc = df[df["model"] == ENC]
    assert plots.pick_accuracy(enc) == ("embedding_cosine", False)
    assert plots.pick_accuracy(df[df["model"] == LM]) == ("perplexity", True)
    fig = plots.accuracy_vs_memory(enc, accuracy=None)
    points, front = fig.data
    assert "cosine" in fig.layout.yaxis.title.text
    # Maximizing cosine: e2 (26 MB, 0.95) is bigger and worse than e1 (24 MB, 0.999).
    assert list(front.x) == pytest.approx([24.0, 90.0])
    assert list(points.marker.symbol) == ["diamond", "diamond", "circle"]


def test_accuracy_vs_memory_two_models_two_traces_each(results):
    other = [run("t" + r.key, r.method, r.params, model="tiny-llama", **r.metrics) for r in results if r.model == LM]
    fig = plots.accuracy_vs_memory(plots.results_frame(results[:5] + other))
    assert len(fig.data) == 4
    assert [t.name for t in fig.data] == [f"{LM}: runs", f"{LM}: Pareto front", "tiny-llama: runs",
                                          "tiny-llama: Pareto front"]
    # Each model gets its own front: the fronts do not mix points across models.
    assert len(fig.data[1].x) == 3 and len(fig.data[3].x) == 3


def test_accuracy_vs_memory_goes_log_for_a_broken_run(results):
    broken = run("k9", "rtn", {"bits": 4, "fp4": True}, weights_bytes=80 * MIB, perplexity=2e9)
    fig = plots.accuracy_vs_memory(plots.results_frame(results[:4] + [broken]))
    assert fig.layout.yaxis.type == "log"
    assert plots.accuracy_vs_memory(plots.results_frame(results[:4])).layout.yaxis.type == "linear"


@pytest.mark.parametrize("frame", [
    pd.DataFrame(),
    plots.results_frame([]),
    plots.results_frame([run("k4", "rtn", {"bits": 2}, status="crashed")]),
])
def test_accuracy_vs_memory_without_successes_says_so(frame):
    fig = plots.accuracy_vs_memory(frame, accuracy=None)
    assert len(fig.data) == 0
    assert "no successful runs yet" in annotation(fig)


def test_accuracy_vs_memory_without_metric_says_which(results):
    fig = plots.accuracy_vs_memory(plots.results_frame(results), accuracy="kl_div", memory="disk_bytes")
    assert len(fig.data) == 0
    assert "disk_bytes" in annotation(fig) and "kl_div" in annotation(fig)


def test_labels_are_escaped_in_figures():
    evil = run("x1", "rtn<b>", {"note": "<script>"}, weights_bytes=1 * MIB, perplexity=3.0)
    fig = plots.accuracy_vs_memory(plots.results_frame([evil]))
    assert fig.data[0].text[0] == "rtn&lt;b&gt; note=&lt;script&gt;"
    assert plots.latency_per_batch([evil]).data[0].name == "rtn&lt;b&gt; note=&lt;script&gt;"


# --- per-table figures -----------------------------------------------------------------
def test_latency_per_batch_one_line_per_run_with_error_bars(results):
    tables_before = copy.deepcopy([r.tables for r in results])
    fig = plots.latency_per_batch(results)
    assert [r.tables for r in results] == tables_before
    # 4 successful LM runs with forward tables; encoders here have none, the oom run is out.
    assert len(fig.data) == 4
    names = [t.name for t in fig.data]
    # Several models among the successes: names carry the model.
    assert names[0] == f"{LM}: baseline"
    t = fig.data[1]
    assert list(t.x) == [1, 2, 4]
    assert list(t.y) == pytest.approx([10.0, 20.0, 40.0])
    assert list(t.error_y.array) == pytest.approx([2.0, 4.0, 8.0])
    assert list(t.error_y.arrayminus) == pytest.approx([1.0, 2.0, 4.0])


def test_latency_splits_by_seq_len():
    r = run("s1", "rtn", {"bits": 8}, weights_bytes=1.0)
    r.tables["forward"] = forward(1.0) + [dict(row, seq_len=512) for row in forward(2.0)]
    fig = plots.latency_per_batch([r])
    assert [t.name for t in fig.data] == ["rtn bits=8 (seq 128)", "rtn bits=8 (seq 512)"]


def test_memory_tokens_and_throughput_trace_counts(results):
    lm_runs = [r for r in results if r.model == LM]
    assert len(plots.memory_per_batch(lm_runs).data) == 4
    assert list(plots.memory_per_batch(lm_runs).data[0].y) == pytest.approx([301.0, 302.0, 304.0])
    fig = plots.tokens_per_s_per_length(lm_runs)
    assert len(fig.data) == 8  # prefill and decode per run
    assert {t.xaxis for t in fig.data} == {"x", "x2"}
    decode = [t for t in fig.data if t.xaxis == "x2"]
    assert list(decode[0].y) == pytest.approx([20.0, 20.0])
    assert list(decode[0].error_y.array) == pytest.approx([2.0, 2.0])
    # The fixture has no prefill spread: no error bars rather than made-up ones.
    prefill = [t for t in fig.data if t.xaxis == "x"]
    assert prefill[0].error_y.array is None
    assert sum(bool(t.showlegend) for t in fig.data) == 4  # one legend entry per run
    tp = plots.throughput_per_batch(lm_runs)
    assert len(tp.data) == 4
    assert list(tp.data[0].y) == pytest.approx([18.0, 72.0])


@pytest.mark.parametrize("make", [plots.latency_per_batch, plots.memory_per_batch, plots.tokens_per_s_per_length,
                                  plots.throughput_per_batch])
def test_table_figures_empty_inputs(make, results):
    fig = make([])
    assert len(fig.data) == 0 and "no successful runs yet" in annotation(fig)
    failed_only = make([r for r in results if not r.ok])
    assert len(failed_only.data) == 0 and "no successful runs yet" in annotation(failed_only)
    # Successful runs without tables (encoders here): a different, honest reason.
    no_tables = make([r for r in results if r.model == ENC])
    assert len(no_tables.data) == 0 and "measured in the successful runs" in annotation(no_tables)


# --- tables ------------------------------------------------------------------------------
def test_generation_table_stacks_runs(results):
    table = plots.generation_table(results)
    assert list(table.columns[:2]) == ["Run", "Batch Size"]
    assert "Decode tokens/s" in table.columns
    assert len(table) == 4 * 2  # four LM runs, two prompt lengths each
    assert table["Run"].iloc[0] == f"{LM}: baseline"
    assert len(plots.generation_table([])) == 0


def test_summary_table_human_units(results):
    df = plots.results_frame(results)
    before = df.copy()
    s = plots.summary_table(df)
    pd.testing.assert_frame_equal(df, before)
    assert tuple(s.columns) == plots.SUMMARY_COLUMNS
    assert len(s) == len(results)
    k1 = s.iloc[1]
    assert k1["weights (MB)"] == 140.0
    assert k1["top-1 (%)"] == 98.0
    assert k1["layers"] == "210/211"
    assert k1["kernel"] == "reference-dequant"
    oom = s.iloc[4]
    assert oom["status"] == "oom" and math.isnan(oom["perplexity"]) and oom["layers"] == "" and oom["kernel"] == ""
    assert s.iloc[6]["cosine"] == 0.999
    assert list(plots.summary_table(pd.DataFrame()).columns) == list(plots.SUMMARY_COLUMNS)


def test_batch_axis_is_ordered_across_runs_with_different_sizes():
    a = run("a", "rtn", {"bits": 8}, weights_bytes=1.0)
    b = run("b", "rtn", {"bits": 4}, weights_bytes=1.0)
    a.tables["forward"] = [row for row in forward(1.0) if row["batch_size"] != 2] + [
        dict(forward(1.0)[-1], batch_size=8)]
    b.tables["forward"] = forward(1.0)
    fig = plots.latency_per_batch([a, b])
    # A category axis would read 1, 4, 8, 2 here (order of first appearance).
    assert list(fig.layout.xaxis.tickvals) == [1.0, 2.0, 4.0, 8.0]
    assert fig.layout.xaxis.type == "log"
    tok = plots.tokens_per_s_per_length([a, b])
    assert list(tok.layout.xaxis2.tickvals) == [32.0, 256.0]


def test_malformed_table_is_skipped_not_raised():
    good = run("g", "rtn", {"bits": 8}, weights_bytes=1.0)
    bad = run("b", "rtn", {"bits": 4}, weights_bytes=1.0)
    bad.tables = {"forward": [{"batch_size": 1}], "generation": [{"Prefill Length": 32}],
                  "throughput": [{"prompt_length": 32}]}
    assert [t.name for t in plots.latency_per_batch([good, bad]).data] == ["rtn bits=8"]
    assert len(plots.tokens_per_s_per_length([good, bad]).data) == 2
    assert len(plots.throughput_per_batch([bad]).data) == 0


def test_missing_kernel_reads_blank_not_nan():
    a = run("a", "baseline", {}, weights_bytes=2 * MIB, perplexity=10.0)
    b = run("b", "rtn", {"bits": 4}, weights_bytes=1 * MIB, perplexity=11.0)
    a.kernel = None  # pandas may turn the missing string into NaN
    df = plots.results_frame([a, b])
    assert [c[2] for c in plots.accuracy_vs_memory(df).data[0].customdata] == ["", "reference-dequant"]
    assert plots.summary_table(df)["kernel"].tolist() == ["", "reference-dequant"]


def test_diffusion_runs_are_plotted_by_image_psnr_maximized():
    from workbench.result import RunResult

    rows = []
    for i, (method, psnr, size) in enumerate([("ov-export", 100.0, 6.7e6), ("ov-hybrid", 44.8, 1.8e6)]):
        spec = {"model": {"id": "tiny-sd"}, "method": method, "params": {}}
        rows.append(RunResult(key=str(i), status="ok", spec=spec,
                              metrics={"image_psnr_db": psnr, "weights_bytes": size}).to_row())
    df = pd.DataFrame(rows)
    assert plots.pick_accuracy(df) == ("image_psnr_db", False)
    fig = plots.accuracy_vs_memory(df, accuracy=None)
    assert "PSNR" in fig.layout.yaxis.title.text
    assert plots.summary_table(df)["PSNR (dB)"].tolist() == [100.0, 44.8]
