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
def points_of(fig) -> list:
    """The run traces (one per backend and model), not the front lines or the model-symbol entries."""
    return [t for t in fig.data if (t.legendgroup or "").startswith("backend:")]


def by_label(fig) -> dict:
    """label -> (x, y, text, symbol) of every plotted run."""
    out = {}
    for t in points_of(fig):
        for x, y, text, symbol, custom in zip(t.x, t.y, t.text, t.marker.symbol, t.customdata):
            out[custom[0]] = (x, y, text, symbol)
    return out


def test_accuracy_vs_memory_causal_lm(results):
    df = plots.results_frame(results)
    lm = df[df["model"] == LM]
    before = lm.copy()
    fig = plots.accuracy_vs_memory(lm)
    pd.testing.assert_frame_equal(lm, before)
    # One trace per backend (baseline: pytorch; rtn: workbench), the baseline's line, then the front.
    assert [t.name for t in fig.data] == ["pytorch", "workbench", "fp32 baseline", "Pareto front"]
    points = by_label(fig)
    # Four successful runs; the oom one is left out.
    assert set(points) == {"baseline", "rtn bits=8 group_size=64 sym", "rtn bits=8 group_size=128 sym",
                           "rtn bits=4 group_size=64 sym=false"}
    # The baseline is a star; text only on the front (k2 is bigger and worse than k1).
    assert points["baseline"][3] == "star"
    assert points["rtn bits=8 group_size=128 sym"][2] == ""
    assert points["rtn bits=4 group_size=64 sym=false"][2] == "rtn bits=4 group_size=64 sym=false"
    front = fig.data[-1]
    # The front goes left to right in MB: k3 (84), k1 (140), baseline (538).
    assert list(front.x) == pytest.approx([84.0, 140.0, 538.0])
    assert list(front.y) == pytest.approx([19.55, 14.75, 14.70])
    assert "weights (MB)" in fig.layout.xaxis.title.text
    assert "perplexity" in fig.layout.yaxis.title.text
    # Hover data: full label, params, layer counts, kernel, weights, the metric and its change.
    rtn = fig.data[1]
    assert rtn.customdata[0][2] == "210/211" and "bits=8" in rtn.customdata[0][1]
    assert rtn.customdata[0][3] == "reference-dequant" and rtn.customdata[0][4] == "140.0"
    assert rtn.customdata[0][5] == "14.75" and rtn.customdata[0][6] == "+0.3 %"
    # The baseline's value is drawn as a dotted line.
    assert [sh.y0 for sh in fig.layout.shapes] == [pytest.approx(14.70)]


def test_one_colour_and_one_legend_entry_per_backend(results):
    extra = [run("o1", "ov-weight", {"bits": 8}, weights_bytes=150 * MIB, perplexity=14.72),
             run("o2", "ov-weight", {"bits": 4, "group_size": 64}, weights_bytes=90 * MIB, perplexity=16.0),
             run("h1", "hqq", {"nbits": 4, "group_size": 64}, weights_bytes=95 * MIB, perplexity=16.2),
             run("u1", "no-such-plugin", {}, weights_bytes=200 * MIB, perplexity=15.0)]
    fig = plots.accuracy_vs_memory(plots.results_frame(results[:5] + extra))
    runs = points_of(fig)
    assert [t.name for t in runs if t.showlegend] == ["pytorch", "workbench", "openvino", "hqq", "other"]
    assert len(runs) == 5  # one model: one trace per backend
    colours = [t.marker.color for t in runs]
    assert len(set(colours)) == 5
    assert runs[2].marker.color == plots.BACKEND_COLORS["openvino"]
    assert plots.backend_of("ov-weight") == "openvino" and plots.backend_of("no-such-plugin") == "other"
    # Text only on the Pareto-front points; every point keeps its full label for the hover.
    front = plots.pareto_front(fig_frame := pd.DataFrame(
        [(x, y) for t in runs for x, y in zip(t.x, t.y)], columns=["x", "y"]), "x", "y")
    texts = [text for t in runs for text in t.text]
    assert all(front[i] for i, t in enumerate(texts) if t), "text on a point off the front"
    # crowded on the left (84, 90, 95 MB): a text that fits nowhere is left to the hover
    assert sum(map(bool, texts)) >= front.sum() - 1
    assert len(fig_frame) == 8


def test_labels_are_placed_where_they_overprint_nothing():
    # the demo's front: baseline and ov-export at the same place, torchao and ov-weight int8 close
    x = pd.Series([513.1, 513.1, 210.1, 129.0, 81.9, 171.4])
    y = pd.Series([14.704, 14.70401, 14.746, 14.832, 19.498, 18.004])
    texts = {0: "baseline dtype=float32", 1: "ov-export inference_precision=f32",
             2: "torchao scheme=int8_weight_only", 3: "ov-weight bits=8", 4: "ov-weight bits=4"}
    placed = plots.place_labels(x, y, texts)
    assert placed[0][0] == "baseline dtype=float32, ov-export inference_precision=f32" and 1 not in placed
    assert set(placed) == {0, 2, 3, 4}
    # torchao and ov-weight int8 are 80 MB apart: they cannot both sit centred above their points
    assert placed[2][1] != "top center" or placed[3][1] != "top center"


def test_the_y_axis_switches_between_perplexity_and_its_change(results):
    fig = plots.accuracy_vs_memory(plots.results_frame(results[:4]))
    (menu,) = fig.layout.updatemenus
    assert menu.type == "buttons" and [b.label for b in menu.buttons] == ["perplexity", "Δ perplexity vs fp32 (%)"]
    metric, change = menu.buttons
    # Each button sets y for every trace (runs, then the front): perplexity, or its change in percent.
    assert len(metric.args[0]["y"]) == len(change.args[0]["y"]) == len(fig.data)
    assert metric.args[0]["y"][0] == [pytest.approx(14.70)]
    assert change.args[0]["y"][0] == [0.0]  # the baseline
    assert change.args[0]["y"][1] == pytest.approx([100 * (14.75 / 14.70 - 1), 100 * (14.90 / 14.70 - 1),
                                                    100 * (19.55 / 14.70 - 1)])
    assert "change" in change.args[1]["yaxis.title.text"]
    assert change.args[1]["shapes"][0]["y0"] == 0.0  # the baseline line follows
    # Without a baseline there is no change to switch to.
    no_base = plots.accuracy_vs_memory(plots.results_frame(results[1:4]))
    assert no_base.layout.updatemenus == ()
    # The escaping rule holds for the buttons too.
    assert all("<" not in b.label for b in menu.buttons)


def test_accuracy_vs_memory_picks_cosine_for_encoders(results):
    df = plots.results_frame(results)
    enc = df[df["model"] == ENC]
    assert plots.pick_accuracy(enc) == ("embedding_cosine", False)
    assert plots.pick_accuracy(df[df["model"] == LM]) == ("perplexity", True)
    fig = plots.accuracy_vs_memory(enc, accuracy=None)
    front = fig.data[-1]
    assert "cosine" in fig.layout.yaxis.title.text
    # Maximizing cosine: e2 (26 MB, 0.95) is bigger and worse than e1 (24 MB, 0.999).
    assert list(front.x) == pytest.approx([24.0, 90.0])
    points = by_label(fig)
    assert points["rtn bits=4 group_size=64 sym"][2] == "" and points["rtn bits=8 group_size=64 sym"][2]
    assert fig.layout.updatemenus == ()  # cosine is already against fp32: no switch


def test_accuracy_vs_memory_two_models_one_front_and_symbol_each(results):
    other = [run("t" + r.key, r.method, r.params, model="tiny-llama", **r.metrics) for r in results if r.model == LM]
    fig = plots.accuracy_vs_memory(plots.results_frame(results[:5] + other))
    fronts = [t for t in fig.data if t.name == "Pareto front"]
    # Each model gets its own front: the fronts do not mix points across models.
    assert len(fronts) == 2 and len(fronts[0].x) == 3 and len(fronts[1].x) == 3
    assert sum(bool(t.showlegend) for t in fronts) == 1
    # Still one legend entry per backend; the models are told apart by their symbol.
    assert [t.name for t in points_of(fig) if t.showlegend] == ["pytorch", "workbench"]
    models = [t for t in fig.data if (t.legendgroup or "").startswith("model:")]
    assert [t.name for t in models] == [LM, "tiny-llama"]
    assert models[0].marker.symbol != models[1].marker.symbol
    assert len(fig.layout.shapes) == 2  # a baseline line per model


def test_a_broken_run_is_drawn_off_scale_not_squashing_the_others(results):
    broken = run("k9", "rtn", {"bits": 3, "group_size": 64}, weights_bytes=70 * MIB, perplexity=157.0)
    fig = plots.accuracy_vs_memory(plots.results_frame(results[:4] + [broken]))
    assert fig.layout.yaxis.type == "linear"
    low, high = fig.layout.yaxis.range
    # The working runs (14.7 to 19.55) fill the height; the broken one sits at the top edge, marked.
    assert low < 14.70 and 19.55 < high < 22
    x, y, text, symbol = by_label(fig)["rtn bits=3 group_size=64"]
    assert symbol == "triangle-up" and "157" in text and "off scale" in text and low < y < high
    assert "off scale" in fig.layout.yaxis.title.text
    assert plots.accuracy_vs_memory(plots.results_frame(results[:4])).layout.yaxis.range is None
    # A run 30 % worse than the best is data, not an outlier.
    assert plots._off_scale(pd.Series([14.7, 14.75, 14.9, 19.55]), minimize=True).sum() == 0


def test_a_range_still_wide_after_the_outliers_goes_log(results):
    broken = [run(f"b{i}", "rtn", {"bits": 2, "group_size": g}, weights_bytes=60 * MIB, perplexity=p)
              for i, (g, p) in enumerate([(16, 2e3), (32, 9e3), (64, 3e4), (128, 2e9)])]
    fig = plots.accuracy_vs_memory(plots.results_frame(results[:2] + broken))
    assert fig.layout.yaxis.type == "log"


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
    # Against the fp32 baseline of the same model: perplexity change in percent, decode speed as a multiple.
    assert s.iloc[0]["Δ perplexity (%)"] == 0.0 and s.iloc[0]["× baseline"] == 1.0
    assert k1["Δ perplexity (%)"] == pytest.approx(0.34) and k1["× baseline"] == pytest.approx(0.94)
    assert math.isnan(s.iloc[2]["× baseline"])  # k2 has no decode speed
    assert math.isnan(s.iloc[6]["Δ perplexity (%)"])  # encoders: cosine is already against fp32


def test_compact_table_drops_empty_columns_per_model(results):
    df = plots.results_frame(results)
    lm = plots.compact_table(df[df["model"] == LM])
    assert list(lm.columns) == ["label", "weights (MB)", "perplexity", "Δ perplexity (%)", "KL", "top-1 (%)",
                                "decode tok/s", "× baseline", "status"]
    enc = plots.compact_table(df[df["model"] == ENC])
    assert list(enc.columns) == ["label", "weights (MB)", "cosine", "status"]


def test_text_table_fits_the_width_by_shortening_labels():
    long = "ov-weight awq bits=4 dataset=pydoc-topics ratio=0.8 scale_estimation"
    table = pd.DataFrame({"label": ["baseline", long, long.replace(" ratio=0.8", "")],
                          "weights (MB)": [513.0, 95.0, 96.0], "Δ perplexity (%)": [0.0, 3.25, None],
                          "status": ["ok", "ok", "ok"]})
    wide = plots.text_table(table, max_width=None)
    assert long in wide and max(map(len, wide.splitlines())) > 60
    text = plots.text_table(table, max_width=60)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 60
    # Two header lines (name over unit), numbers right-aligned, missing values blank.
    assert lines[0].split() == ["weights", "Δ", "ppl"] and lines[1].split() == ["label", "(MB)", "(%)", "status"]
    assert lines[2].split() == ["baseline", "513.0", "0.0", "ok"]
    assert "+3.2" in lines[3] or "+3.3" in lines[3]
    # Shortened at word boundaries; the word that tells the two ov-weight runs apart is kept.
    assert "…" in lines[3] and "ratio=0.8" in lines[3] and lines[3].startswith("ov-weight")
    assert lines[4].split()[-2:] == ["96.0", "ok"]


def test_shorten_labels_rules():
    assert plots.shorten_labels(["rtn bits=4"], 40) == ["rtn bits=4"]
    (one,) = plots.shorten_labels(["ov-weight a=1 b=2 c=3 d=4 e=5 last=9"], 24)
    assert one.startswith("ov-weight a=1") and one.endswith("… last=9") and len(one) <= 24
    a, b = plots.shorten_labels(["m x=1 y=2 z=3 w=4 v=5", "m x=1 y=2 z=3 w=4 v=6"], 12)
    assert a.endswith("v=5") and b.endswith("v=6") and len(a) <= 12
    (cut,) = plots.shorten_labels(["averyveryverylongmethodname"], 10)
    assert cut == "averyvery…"


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
    assert [t.customdata[0][3] for t in points_of(plots.accuracy_vs_memory(df))] == ["", "reference-dequant"]
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
