"""Figures and tables from results: pure functions, DataFrame or results in, plotly Figure or DataFrame out.

Kernel side: needs pandas and plotly only, never torch. None of these
functions mutates its input. Failed runs carry no metrics and are left out of
every figure; a figure with nothing to show carries an annotation saying why
instead of raising.

Units: 1 MB here is 2**20 bytes, the MB of the measurement tables (`peak_rss_mb`,
"Memory (MB)"), so every MB in a report is the same MB.

Every user-supplied string (labels, params, model ids) that reaches a figure is
HTML-escaped, because plotly renders trace names, text and hover labels as a
subset of HTML.
"""
from __future__ import annotations

import html
import json
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .result import METRIC_NAMES, RunResult, RunStatus, label

MB = 2**20
SUCCEEDED = tuple(s.value for s in RunStatus if s.succeeded)
NO_RUNS = "no successful runs yet"

# Which way is better for each accuracy metric: True when smaller is better.
ACCURACY_MINIMIZE: dict[str, bool] = {
    "perplexity": True,
    "kl_div": True,
    "top1_agreement": False,
    "embedding_cosine": False,
    "embedding_cosine_min": False,
    "image_psnr_db": False,
    "image_rmse": True,
    "generated_token_agreement": False,
}

AXIS_TITLES: dict[str, str] = {
    "weights_bytes": "weights (MB)",
    "weights_bytes_claimed": "weights, as the backend claims (MB)",
    "disk_bytes": "on disk (MB)",
    "peak_rss_bytes": "peak RSS (MB)",
    "cuda_max_allocated_bytes": "CUDA max allocated (MB)",
    "perplexity": "perplexity (lower is better)",
    "kl_div": "KL divergence vs baseline (lower is better)",
    "top1_agreement": "top-1 agreement vs baseline (higher is better)",
    "embedding_cosine": "embedding cosine vs baseline (higher is better)",
    "embedding_cosine_min": "worst embedding cosine vs baseline (higher is better)",
    "image_psnr_db": "image PSNR vs fp32 pipeline, dB (higher is better)",
    "image_rmse": "RMS pixel difference vs fp32 pipeline (lower is better)",
    "generated_token_agreement": "generated tokens equal to the fp32 model's (higher is better)",
}


# --- helpers -----------------------------------------------------------------
def _esc(value: Any) -> str:
    # Quotes are harmless in plotly's text; only markup characters need escaping.
    return html.escape(_str(value), quote=False)


def _str(value: Any) -> str:
    """Text of a cell: "" for None and NaN (pandas turns a missing string into NaN)."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return str(value)


def results_frame(results: Iterable[RunResult]) -> pd.DataFrame:
    """One row per result (`RunResult.to_row()`), with every metric column present even when empty."""
    rows = [r.to_row() for r in results]
    columns = list(RunResult(key="", status=RunStatus.OK, spec={}).to_row())
    return pd.DataFrame(rows, columns=columns)


def _succeeded(df: pd.DataFrame) -> pd.DataFrame:
    if df is None or len(df) == 0 or "status" not in df.columns:
        return pd.DataFrame(columns=[] if df is None else df.columns)
    return df[df["status"].astype(str).isin(SUCCEEDED)]


def _numeric(df: pd.DataFrame, column: str) -> pd.Series:
    # Metrics that are all None come out of pandas as object columns.
    if column not in df.columns:
        return pd.Series(float("nan"), index=df.index, dtype="float64")
    return pd.to_numeric(df[column], errors="coerce").astype("float64")


def _empty_figure(message: str = NO_RUNS, title: str | None = None) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=_esc(message), x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font={"size": 16})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=_esc(title) if title else None, template="plotly_white")
    return fig


def layers_text(q: Any, e: Any) -> str:
    """Layers quantized / eligible as "210/211" ("" when unknown): never quantize silently, never hide it."""
    if q is None or pd.isna(q):
        return ""
    if e is None or pd.isna(e):
        return f"{int(q)}/?"
    return f"{int(q)}/{int(e)}"


def _run_names(results: Sequence[RunResult]) -> list[str]:
    """Legend names: the label, with the model when runs span several models, made unique."""
    several_models = len({r.model for r in results}) > 1
    names = []
    for r in results:
        name = label(r.method, r.params)
        names.append(f"{r.model}: {name}" if several_models else name)
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    return [f"{n} [{r.key[:8]}]" if seen[n] > 1 else n for n, r in zip(names, results)]


def _table_runs(results: Iterable[RunResult], table: str,
                required: Sequence[str]) -> tuple[list[tuple[str, pd.DataFrame]], int]:
    """(name, table frame) for each successful run whose `tables[table]` has rows with the `required` columns;
    and the count of successful runs (to tell "nothing ran" from "nothing measured")."""
    ok = [r for r in results if r.ok]
    out = []
    for name, r in zip(_run_names(ok), ok):
        rows = (r.tables or {}).get(table) or []
        frame = pd.DataFrame(list(rows))
        if len(frame) and all(c in frame.columns for c in required):
            out.append((name, frame))
    return out, len(ok)


def _discrete_x(fig: go.Figure, runs: list[tuple[str, pd.DataFrame]], column: str, **where: Any) -> None:
    """A log x axis ticked at exactly the measured values (batch sizes, lengths: powers of two, mostly).

    A category axis would order values by first appearance across traces, so 8 could land before 2.
    """
    values = sorted({float(v) for _, t in runs for v in pd.to_numeric(t[column], errors="coerce").dropna() if v > 0})
    fig.update_xaxes(type="log", tickmode="array", tickvals=values, ticktext=[f"{v:g}" for v in values], **where)


def _no_table_figure(n_ok: int, what: str, title: str) -> go.Figure:
    return _empty_figure(NO_RUNS if n_ok == 0 else f"no {what} measured in the successful runs", title)


# --- Pareto front ---------------------------------------------------------------
def pareto_front(df: pd.DataFrame, x: str, y: str, minimize_x: bool = True, minimize_y: bool = True) -> pd.Series:
    """Boolean mask (same index as `df`) of the rows no other row dominates in (x, y).

    A row dominates another when it is at least as good on both axes and
    strictly better on one. Rows with a missing x or y are never on the front;
    identical points are both kept.
    """
    for col in (x, y):
        if col not in df.columns:
            raise KeyError(f"pareto_front: column {col!r} not in the frame; columns: {list(df.columns)}")
    # Turn both axes into "smaller is better".
    xs = _numeric(df, x) * (1 if minimize_x else -1)
    ys = _numeric(df, y) * (1 if minimize_y else -1)
    valid = xs.notna() & ys.notna()
    mask = pd.Series(False, index=df.index, dtype=bool)
    vx, vy = xs[valid].to_numpy(), ys[valid].to_numpy()
    for pos, idx in enumerate(xs[valid].index):
        le = (vx <= vx[pos]) & (vy <= vy[pos])
        lt = (vx < vx[pos]) | (vy < vy[pos])
        mask.loc[idx] = not bool((le & lt).any())
    return mask


# --- accuracy vs memory ------------------------------------------------------------
def pick_accuracy(df: pd.DataFrame) -> tuple[str | None, bool]:
    """The accuracy column to plot and whether smaller is better.

    Perplexity for causal LMs (any successful row has one), else the embedding
    cosine for encoders (higher is better), else image PSNR for diffusion pipelines,
    else KL or top-1 (speech-to-text, vision-language); (None, True) when no
    successful row has any accuracy metric.
    """
    ok = _succeeded(df)
    for col in ("perplexity", "embedding_cosine", "image_psnr_db", "kl_div", "top1_agreement"):
        if _numeric(ok, col).notna().any():
            return col, ACCURACY_MINIMIZE[col]
    return None, True


def accuracy_vs_memory(df: pd.DataFrame, accuracy: str | None = "perplexity", memory: str = "weights_bytes",
                       minimize_accuracy: bool | None = None) -> go.Figure:
    """Scatter of accuracy against memory, one point per successful run, with the Pareto front per model.

    `accuracy=None` picks the column from the data (`pick_accuracy`): perplexity
    for causal LMs, embedding cosine (maximized) for encoders. Whether smaller is
    better comes from `ACCURACY_MINIMIZE` unless `minimize_accuracy` says.
    Memory columns ending in `_bytes` are shown in MB. Two traces per model:
    the runs (front points drawn as diamonds) and the front as a line.
    A y axis spanning more than two decades (a broken run's perplexity) goes log.
    """
    title = "Accuracy vs memory"
    ok = _succeeded(df)
    if len(ok) == 0:
        return _empty_figure(NO_RUNS, title)
    if accuracy is None:
        accuracy, minimize = pick_accuracy(ok)
        if accuracy is None:
            return _empty_figure("no accuracy measured in the successful runs", title)
    else:
        minimize = ACCURACY_MINIMIZE.get(accuracy, True)
    if minimize_accuracy is not None:
        minimize = minimize_accuracy
    scale = MB if memory.endswith("_bytes") else 1
    mem = _numeric(ok, memory) / scale
    acc = _numeric(ok, accuracy)
    points = ok.assign(_x=mem, _y=acc)
    points = points[points["_x"].notna() & points["_y"].notna()]
    if len(points) == 0:
        return _empty_figure(f"no successful run has both {memory} and {accuracy}", title)

    fig = go.Figure()
    models = list(dict.fromkeys(points["model"].astype(str)))
    show_text = len(points) <= 12  # labels on every point turn a sweep into a smudge; hover still has them
    for model in models:
        sub = points[points["model"].astype(str) == model]
        front = pareto_front(sub, "_x", "_y", minimize_x=True, minimize_y=minimize)
        labels = [_esc(v) for v in sub["label"]]
        custom = [[_esc(params_text(p)), layers_text(q, e), _esc(k)] for p, q, e, k in
                  zip(sub["params"], sub["layers_quantized"], sub["layers_eligible"], sub["kernel"])]
        prefix = f"{_esc(model)}: " if len(models) > 1 else ""
        fig.add_trace(go.Scatter(
            x=sub["_x"].tolist(), y=sub["_y"].tolist(), mode="markers+text" if show_text else "markers",
            name=f"{prefix}runs" if len(models) > 1 else _esc(model) or "runs",
            text=labels, textposition="top center", customdata=custom,
            marker={"size": [13 if f else 9 for f in front], "symbol": ["diamond" if f else "circle" for f in front]},
            hovertemplate=("<b>%{text}</b><br>" + AXIS_TITLES.get(memory, memory) + ": %{x:.2f}<br>"
                           + _esc(accuracy) + ": %{y:.4g}<br>params: %{customdata[0]}<br>"
                           "layers quantized: %{customdata[1]}<br>kernel: %{customdata[2]}<extra></extra>"),
        ))
        fsub = sub[front].sort_values("_x")
        fig.add_trace(go.Scatter(
            x=fsub["_x"].tolist(), y=fsub["_y"].tolist(), mode="lines", name=f"{prefix}Pareto front",
            line={"dash": "dash", "width": 1.5}, hoverinfo="skip",
        ))
    y = points["_y"]
    log_y = bool((y > 0).all() and y.max() / y.min() > 100)
    fig.update_layout(
        title=title, template="plotly_white",
        xaxis_title=AXIS_TITLES.get(memory, memory),
        yaxis={"title": AXIS_TITLES.get(accuracy, accuracy), "type": "log" if log_y else "linear"},
    )
    return fig


# --- latency and throughput from the per-run tables ------------------------------------
def latency_per_batch(results: Iterable[RunResult]) -> go.Figure:
    """Forward latency (median, error bars min..max) against batch size, one line per run (and seq_len)."""
    title = "Forward latency per batch size"
    runs, n_ok = _table_runs(results, "forward", ("batch_size", "latency_ms"))
    if not runs:
        return _no_table_figure(n_ok, "forward latency", title)
    fig = go.Figure()
    for name, t in runs:
        for suffix, g in _split(t, "seq_len", "seq"):
            g = g.sort_values("batch_size")
            fig.add_trace(go.Scatter(
                x=g["batch_size"].tolist(), y=pd.to_numeric(g["latency_ms"], errors="coerce").tolist(),
                mode="lines+markers", name=_esc(name + suffix),
                error_y=_error_bars(g, "latency_ms", "latency_ms_min", "latency_ms_max"),
            ))
    fig.update_layout(title=title, template="plotly_white", xaxis_title="batch size",
                      yaxis_title="latency (ms, median; bars min..max)")
    _discrete_x(fig, runs, "batch_size")
    return fig


def memory_per_batch(results: Iterable[RunResult]) -> go.Figure:
    """Peak RSS of the forward pass against batch size, one line per run (and seq_len)."""
    title = "Peak memory per batch size"
    runs, n_ok = _table_runs(results, "forward", ("batch_size", "peak_rss_mb"))
    if not runs:
        return _no_table_figure(n_ok, "forward memory", title)
    fig = go.Figure()
    for name, t in runs:
        for suffix, g in _split(t, "seq_len", "seq"):
            g = g.sort_values("batch_size")
            y = pd.to_numeric(g["peak_rss_mb"], errors="coerce")
            fig.add_trace(go.Scatter(x=g["batch_size"].tolist(), y=y.tolist(),
                                     mode="lines+markers", name=_esc(name + suffix)))
    fig.update_layout(title=title, template="plotly_white", xaxis_title="batch size", yaxis_title="peak RSS (MB)")
    _discrete_x(fig, runs, "batch_size")
    return fig


def tokens_per_s_per_length(results: Iterable[RunResult]) -> go.Figure:
    """Prefill and decode tokens/s against prompt length: two subplots, one line per run (and batch size) in each.

    Error bars come from the "... tokens/s min"/"max" columns when the table has them.
    """
    title = "Prefill and decode speed per prompt length"
    runs, n_ok = _table_runs(results, "generation", ("Prefill Length", "Prefill tokens/s", "Decode tokens/s"))
    if not runs:
        return _no_table_figure(n_ok, "generation speed", title)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("prefill", "decode"))
    colors = _colors()
    i = 0
    for name, t in runs:
        for suffix, g in _split(t, "Batch Size", "bs"):
            g = g.sort_values("Prefill Length")
            color = colors[i % len(colors)]
            i += 1
            for col, (column, show) in enumerate((("Prefill tokens/s", True), ("Decode tokens/s", False)), start=1):
                fig.add_trace(go.Scatter(
                    x=g["Prefill Length"].tolist(), y=pd.to_numeric(g[column], errors="coerce").tolist(),
                    mode="lines+markers", name=_esc(name + suffix), legendgroup=f"g{i}", showlegend=show,
                    line={"color": color}, error_y=_error_bars(g, column, f"{column} min", f"{column} max"),
                ), row=1, col=col)
    fig.update_layout(title=title, template="plotly_white")
    fig.update_xaxes(title_text="prompt length (tokens)")
    _discrete_x(fig, runs, "Prefill Length")
    fig.update_yaxes(title_text="tokens/s", row=1, col=1)
    return fig


def throughput_per_batch(results: Iterable[RunResult]) -> go.Figure:
    """`generate()` throughput (tokens/s, bars min..max) against batch size, one line per run (and prompt length)."""
    title = "Generation throughput per batch size"
    runs, n_ok = _table_runs(results, "throughput", ("batch_size", "generate_tok_s"))
    if not runs:
        return _no_table_figure(n_ok, "generation throughput", title)
    fig = go.Figure()
    for name, t in runs:
        for suffix, g in _split(t, "prompt_length", "prompt"):
            g = g.sort_values("batch_size")
            fig.add_trace(go.Scatter(x=g["batch_size"].tolist(),
                                     y=pd.to_numeric(g["generate_tok_s"], errors="coerce").tolist(),
                                     mode="lines+markers", name=_esc(name + suffix),
                                     error_y=_error_bars(g, "generate_tok_s", "generate_tok_s_min",
                                                         "generate_tok_s_max")))
    fig.update_layout(title=title, template="plotly_white", xaxis_title="batch size",
                      yaxis_title="generated tokens/s")
    _discrete_x(fig, runs, "batch_size")
    return fig


def _error_bars(g: pd.DataFrame, column: str, low: str, high: str) -> dict[str, Any] | None:
    """Asymmetric error bars from the min/max columns of a table (None when the table has no spread)."""
    if low not in g.columns or high not in g.columns:
        return None
    mid = pd.to_numeric(g[column], errors="coerce")
    return {"type": "data", "symmetric": False, "array": (pd.to_numeric(g[high], errors="coerce") - mid).tolist(),
            "arrayminus": (mid - pd.to_numeric(g[low], errors="coerce")).tolist()}


def _split(t: pd.DataFrame, column: str, short: str) -> list[tuple[str, pd.DataFrame]]:
    """Groups of a table by `column` when it has several values (suffix ' (short N)'), else the whole table."""
    if column not in t.columns or t[column].nunique(dropna=True) <= 1:
        return [("", t)]
    return [(f" ({short} {v})", g) for v, g in t.groupby(column, sort=True)]


def _colors() -> list[str]:
    return list(plotly.colors.qualitative.Plotly)


# --- tables ------------------------------------------------------------------------
def generation_table(results: Iterable[RunResult]) -> pd.DataFrame:
    """The fused-module style table of every successful run, stacked: a "Run" column then the table's columns."""
    runs, _ = _table_runs(results, "generation", ())
    if not runs:
        return pd.DataFrame(columns=["Run", "Batch Size", "Prefill Length", "Decode Length", "Prefill tokens/s",
                                     "Decode tokens/s", "Memory (MB)"])
    frames = [t.assign(Run=name) for name, t in runs]
    out = pd.concat(frames, ignore_index=True)
    return out[["Run"] + [c for c in out.columns if c != "Run"]]


SUMMARY_COLUMNS = ("label", "model", "status", "weights (MB)", "disk (MB)", "peak RSS (MB)", "perplexity", "KL",
                   "top-1 (%)", "cosine", "PSNR (dB)", "decode tok/s", "image s", "layers", "kernel")


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader wants first, in human units: one row per run, failed runs included (metrics empty).

    Sizes in MB (2**20 bytes), top-1 agreement in percent, layers as
    "quantized/eligible". Numbers are rounded but stay numbers, so the frame sorts.
    """
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))

    def num(col: str, scale: float = 1.0, digits: int = 2) -> pd.Series:
        return (_numeric(df, col) / scale).round(digits)

    out = pd.DataFrame({
        "label": df.get("label", pd.Series("", index=df.index)).astype(str),
        "model": df.get("model", pd.Series("", index=df.index)).astype(str),
        "status": df.get("status", pd.Series("", index=df.index)).astype(str),
        "weights (MB)": num("weights_bytes", MB, 1),
        "disk (MB)": num("disk_bytes", MB, 1),
        "peak RSS (MB)": num("peak_rss_bytes", MB, 1),
        "perplexity": num("perplexity", 1, 3),
        "KL": num("kl_div", 1, 5),
        "top-1 (%)": (_numeric(df, "top1_agreement") * 100).round(2),
        "cosine": num("embedding_cosine", 1, 5),
        "PSNR (dB)": num("image_psnr_db", 1, 2),
        "decode tok/s": num("decode_tok_s", 1, 1),
        "image s": num("image_s", 1, 3),
        "layers": [layers_text(q, e) for q, e in zip(df.get("layers_quantized", [None] * len(df)),
                                                 df.get("layers_eligible", [None] * len(df)))],
        "kernel": [_str(k) for k in df.get("kernel", [None] * len(df))],
    }, index=df.index)
    return out.reset_index(drop=True)


def sensitivity_heatmap(frame: pd.DataFrame, metric: str = "ppl_delta", title: str | None = None) -> go.Figure:
    """Layer sensitivity as a heatmap: one column per block, one row per layer kind (q_proj, ...).

    `frame` is `workbench.sensitivity.sensitivity_frame(result)`; layers outside numbered blocks
    (e.g. lm_head) get a column of their own at the right.
    """
    if frame is None or len(frame) == 0:
        return _empty_figure("no layer sensitivity yet", title)
    if metric not in frame.columns:
        raise KeyError(f"metric: {metric!r} is not a column; allowed: ppl_delta, rel_output_error, weight_error")
    df = frame.copy()
    df["column"] = [str(int(b)) if pd.notna(b) else p for b, p in zip(df["block"], df["part"])]
    df["row"] = [p if pd.notna(b) else "(outside blocks)" for b, p in zip(df["block"], df["part"])]
    blocks = sorted({int(b) for b in df["block"].dropna()})
    columns = [str(b) for b in blocks] + sorted(set(df["column"]) - {str(b) for b in blocks})
    rows = list(dict.fromkeys(df.sort_values(["block", "part"])["row"]))
    grid = df.pivot_table(index="row", columns="column", values=metric, aggfunc="first").reindex(index=rows,
                                                                                             columns=columns)
    names = df.pivot_table(index="row", columns="column", values="layer", aggfunc="first").reindex(index=rows,
                                                                                               columns=columns)
    label_of = {"ppl_delta": "perplexity increase", "rel_output_error": "relative output error",
                "weight_error": "relative weight error"}
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy(dtype=float), x=columns, y=rows, customdata=names.to_numpy(dtype=object),
        colorscale="Reds", colorbar={"title": label_of.get(metric, metric)},
        hovertemplate="%{customdata}<br>" + label_of.get(metric, metric) + ": %{z:.4g}<extra></extra>"))
    fig.update_layout(title=title or f"Layer sensitivity: {label_of.get(metric, metric)} with only that layer quantized",
                      xaxis_title="block", yaxis_title="layer", template="plotly_white",
                      height=max(300, 40 * len(rows) + 160))
    return fig


def params_text(params: str | Mapping[str, Any]) -> str:
    """`params` from a row (JSON text) or a mapping, as `k=v, k=v`."""
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except ValueError:
            return params
    return ", ".join(f"{k}={v}" for k, v in sorted(dict(params).items()))


__all__ = [
    "ACCURACY_MINIMIZE", "METRIC_NAMES", "MB", "NO_RUNS", "SUMMARY_COLUMNS", "accuracy_vs_memory", "generation_table",
    "latency_per_batch", "memory_per_batch", "layers_text", "pareto_front", "params_text", "pick_accuracy", "results_frame",
    "sensitivity_heatmap",
    "summary_table", "throughput_per_batch", "tokens_per_s_per_length",
]


# Colours of the calibration range choices (teach.observers names; ORT's calibrators as "ort-...").
RANGE_COLORS = {"minmax": "#d62728", "moving-average": "#ff7f0e", "percentile": "#2ca02c", "mse": "#1f77b4",
                "entropy": "#9467bd"}


def ranges_on_histogram(x: Any, ranges: Mapping[str, Any], title: str, bins: int = 300) -> go.Figure:
    """A histogram of the activation values `x` (log counts) with each calibration range drawn as
    two dashed lines. `ranges`: name -> an object with `.lo` / `.hi` (`teach.observers.Range`) or
    a (lo, hi) pair (e.g. `teach.tensors.ort_ranges`)."""
    import numpy as np

    values = np.asarray(x, dtype=np.float32).ravel()
    fig = go.Figure(go.Histogram(x=values, nbinsx=bins, name="activations", marker_color="#9aa5b1"))
    palette = _colors()
    for i, (name, r) in enumerate(ranges.items()):
        lo, hi = (r.lo, r.hi) if hasattr(r, "lo") else r
        color = RANGE_COLORS.get(name.removeprefix("ort-"), palette[i % len(palette)])
        for j, edge in enumerate((float(lo), float(hi))):
            fig.add_vline(x=edge, line_color=color, line_dash="dot" if name.startswith("ort-") else "dash",
                          annotation_text=_esc(name) if j else None, annotation_position="top",
                          annotation_y=1 - 0.07 * i, annotation_yref="paper")
    fig.update_layout(title=_esc(title), yaxis_type="log", xaxis_title="activation value",
                      yaxis_title="count (log)", height=380, showlegend=False)
    return fig
