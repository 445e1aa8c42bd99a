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

from . import registry  # noqa: F401 - installs the methods' defaults that shorten every label (spec.label)
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
    and the count of successful runs (to tell "nothing ran" from "nothing measured"). Runs in progress
    (status `running`) count too when the caller passes them: the app fills its plots as tables arrive."""
    ok = [r for r in results if r.ok or r.status is RunStatus.RUNNING]
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


# --- comparison groups ----------------------------------------------------------
def comparison_groups(df: pd.DataFrame) -> pd.Series:
    """What may be compared within one table section or one Pareto front: the model, and its
    protocol when that model's rows span several ("smollm2-135m (quick)"). Runs measured by
    different protocols (`workbench.protocols`: other evaluation tokens, sizes, repeats) never
    share a front. Same index as `df`; a frame without a protocol column groups by model alone."""
    if df is None or len(df) == 0:
        return pd.Series(dtype=object)
    model = df["model"].astype(str) if "model" in df.columns else pd.Series("", index=df.index)
    if "protocol" not in df.columns:
        return model
    protocol = pd.Series([_str(p) for p in df["protocol"]], index=df.index)
    several = protocol.groupby(model).transform("nunique") > 1
    return model.where(~several, model + " (" + protocol + ")")


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
                       minimize_accuracy: bool | None = None, include_partial: bool = False) -> go.Figure:
    """Scatter of accuracy against memory, one point per successful run, with the Pareto front per model.

    `include_partial=True` also draws the runs that did not succeed but measured both values (a
    run in progress, status `running`, or one cancelled, killed or timed out after its accuracy
    stage): hollow markers, their status after the label on hover. They never join a Pareto
    front: nothing says they would have finished valid (a reload check can still fail).

    `accuracy=None` picks the column from the data (`pick_accuracy`): perplexity
    for causal LMs, embedding cosine (maximized) for encoders. Whether smaller is
    better comes from `ACCURACY_MINIMIZE` unless `minimize_accuracy` says.
    Memory columns ending in `_bytes` are shown in MB.

    What a reader sees: one colour and one legend entry per backend (the method's `backend`,
    `backend_of`); text only on the Pareto-front points (the label, shortened), everything
    else on hover (full label, params, layers, kernel, weights, the metric and its change);
    the front of each model as a dashed line; the fp32 baseline a star with a dotted
    horizontal line at its value. With several models, each has its own marker symbol and
    front; so has each protocol of a model whose runs span several (`comparison_groups`): no
    front is drawn across runs measured differently. For perplexity, two buttons in the figure
    switch the y axis between perplexity and its change against the baseline in %
    (`workbench.baselines`); they are plotly
    `updatemenus`, so they work alike in the app and in a static HTML report.

    A run far worse than the others (a broken one: perplexity 157 next to 15-20) is drawn
    "off scale", an up-pointing triangle at the top edge with its value as text, and the
    y range covers the others (`_off_scale` says which). A log axis would have kept it in
    range too, but it compresses what people compare here, differences of a few percent
    between working runs, into a sliver; off scale, the broken run still shows (and says
    how broken it is) and the rest keep the height. A range still wider than two decades
    after that goes log.
    """
    title = "Accuracy vs memory"
    ok = _succeeded(df)
    shown = df if include_partial and df is not None and "status" in df.columns else ok
    if len(shown) == 0:
        return _empty_figure(NO_RUNS, title)
    if accuracy is None:
        accuracy, minimize = pick_accuracy(ok)
        if accuracy is None and include_partial:  # only partial runs so far: the columns they have
            accuracy, minimize = pick_accuracy(shown.assign(status=RunStatus.OK.value))
        if accuracy is None:
            return _empty_figure("no accuracy measured in the successful runs", title)
    else:
        minimize = ACCURACY_MINIMIZE.get(accuracy, True)
    if minimize_accuracy is not None:
        minimize = minimize_accuracy
    scale = MB if memory.endswith("_bytes") else 1
    ok = _with_baselines(df).loc[shown.index]
    points = ok.assign(_x=_numeric(ok, memory) / scale, _y=_numeric(ok, accuracy))
    points = points[points["_x"].notna() & points["_y"].notna()]
    if len(points) == 0:
        return _empty_figure(f"no successful run has both {memory} and {accuracy}", title)

    change_col = CHANGE_COLUMNS.get(accuracy)
    modes: dict[str, pd.Series] = {"metric": points["_y"]}
    if change_col and _numeric(points, change_col).notna().any():
        modes["change"] = _numeric(points, change_col) * 100
    # "Models" below are comparison groups: a model, split by protocol when it spans several.
    model_of = comparison_groups(points).astype(str)
    models = list(dict.fromkeys(model_of))
    off = pd.Series(False, index=points.index)
    front = pd.Series(False, index=points.index)
    partial = ~points["status"].astype(str).isin(SUCCEEDED)
    for model in models:
        sub = points[model_of == model]
        off.loc[sub.index] = _off_scale(sub["_y"], minimize)
        done = sub[~partial.loc[sub.index]]
        front.loc[done.index] = pareto_front(done, "_x", "_y", minimize_x=True, minimize_y=minimize)
    none = [None] * len(points)
    is_base = pd.Series([_str(k) != "" and _str(k) == _str(b) for k, b in
                         zip(points.get("key", none), points.get("baseline_key", none))], index=points.index)
    backend = pd.Series([backend_of(m) for m in points["method"].astype(str)], index=points.index)
    short = pd.Series("", index=points.index, dtype=object)
    for model in models:
        idx = points.index[model_of == model]
        short.loc[idx] = shorten_labels([_str(v) for v in points.loc[idx, "label"]], PLOT_LABEL_WIDTH)
    axes = {m: _axis(v, off, log_ok=(m == "metric")) for m, v in modes.items()}
    metric_name = AXIS_TITLES.get(accuracy, accuracy).split(" (")[0]

    def fmt(mode: str, v: Any) -> str:
        if pd.isna(v):
            return "no fp32 baseline on this data" if mode == "change" else ""
        return f"{v:+.1f} %" if mode == "change" else f"{v:.4g}"

    # Text on the front (and off-scale) points only, placed where it overprints no other text and no
    # marker (`place_labels`); points that would draw on top of each other (an export that reproduces
    # the baseline) share one text, "baseline, ov-export".
    labelled = points.index[(front | off) & points["_x"].notna()]
    shown_text = pd.Series("", index=points.index, dtype=object)
    position = pd.Series("top center", index=points.index, dtype=object)
    metric_y = pd.to_numeric(axes["metric"]["y"], errors="coerce")
    wanted = {i: (f"{short[i]} ({fmt('metric', modes['metric'][i])}, off scale)" if off[i] else short[i])
              for i in labelled}
    placed = place_labels(points["_x"], metric_y, wanted, log_y=axes["metric"]["log"],
                          y_range=axes["metric"]["range"])
    for i, (text, where) in placed.items():
        shown_text[i], position[i] = text, where

    def texts(idx: pd.Index, mode: str) -> list[str]:
        return [f"{_esc(short[i])} ({_esc(fmt(mode, modes[mode][i]))}, off scale)" if off[i] and shown_text[i]
                else _esc(shown_text[i]) for i in idx]

    # Traces, with their y (and text) in each mode: the buttons swap these in.
    traces: list[dict[str, Any]] = []
    ys: dict[str, list[list[Any]]] = {m: [] for m in modes}
    txt: dict[str, list[list[str]]] = {m: [] for m in modes}
    symbols = _MODEL_SYMBOLS
    seen_backends: set[str] = set()
    for mi, model in enumerate(models):
        for b in list(dict.fromkeys(backend[model_of == model])):
            idx = points.index[(model_of == model) & (backend == b)]
            sub = points.loc[idx]
            custom = [[_esc(_str(r["label"]) + (f" ({r['status']})" if partial[i] else "")),
                       _esc(params_text(r["params"])), layers_text(r["layers_quantized"],
                                                                                     r["layers_eligible"]),
                       _esc(r["kernel"]), f"{r['_x']:.1f}", fmt("metric", r["_y"]),
                       fmt("change", modes["change"][i]) if "change" in modes else "", _esc(model), _esc(b)]
                      for i, r in sub.iterrows()]
            traces.append(dict(
                x=sub["_x"].tolist(), mode="markers+text", name=_esc(b), legendgroup=f"backend:{b}",
                showlegend=b not in seen_backends, textposition=[position[i] for i in idx], customdata=custom,
                cliponaxis=False,
                marker={"color": backend_color(b), "size": [15 if is_base[i] else 11 for i in idx],
                        "symbol": [("star" if is_base[i] else "triangle-up" if off[i] else symbols[mi % len(symbols)])
                                   + ("-open" if partial[i] else "") for i in idx],
                        "line": {"color": "#1f2933", "width": [1.5 if front[i] else 0 for i in idx]}},
                hovertemplate=("<b>%{customdata[0]}</b><br>model: %{customdata[7]}<br>backend: %{customdata[8]}<br>"
                               + _esc(AXIS_TITLES.get(memory, memory)) + ": %{customdata[4]}<br>"
                               + _esc(metric_name) + ": %{customdata[5]}"
                               + ("<br>change vs fp32 baseline: %{customdata[6]}" if "change" in modes else "")
                               + "<br>params: %{customdata[1]}<br>layers quantized: %{customdata[2]}"
                               "<br>kernel: %{customdata[3]}<extra></extra>"),
            ))
            seen_backends.add(b)
            for m in modes:
                ys[m].append(axes[m]["y"].loc[idx].tolist())
                txt[m].append(texts(idx, m))
    if is_base.any():  # the dotted line, in the legend: a text on it would overprint the points near it
        traces.append(dict(x=[None], mode="lines", name="fp32 baseline", legendgroup="baseline",
                           line={"dash": "dot", "width": 1, "color": "#1f2933"}, hoverinfo="skip"))
        for m in modes:
            ys[m].append([None])
            txt[m].append([""])
    for model in models:
        idx = points.index[(model_of == model) & front].tolist()
        idx.sort(key=lambda i: points.at[i, "_x"])
        traces.append(dict(x=points.loc[idx, "_x"].tolist(), mode="lines", name="Pareto front",
                           legendgroup="front", showlegend=model == models[0],
                           line={"dash": "dash", "width": 1.5, "color": "#57606a"}, hoverinfo="skip"))
        for m in modes:
            ys[m].append(axes[m]["y"].loc[idx].tolist())
            txt[m].append([""] * len(idx))
    if len(models) > 1:  # the symbol of each model, in the legend
        for mi, model in enumerate(models):
            traces.append(dict(x=[None], mode="markers", name=_esc(model), legendgroup=f"model:{model}",
                               marker={"color": "#9aa5b1", "size": 10, "symbol": symbols[mi % len(symbols)]},
                               hoverinfo="skip"))
            for m in modes:
                ys[m].append([None])
                txt[m].append([""])

    fig = go.Figure()
    for t, y, tx in zip(traces, ys["metric"], txt["metric"]):
        fig.add_trace(go.Scatter(y=y, text=tx, **t))

    def layout_for(mode: str) -> dict[str, Any]:
        ax = axes[mode]
        title_text = AXIS_TITLES.get(accuracy, accuracy) if mode == "metric" else \
            f"{metric_name}: change vs fp32 baseline (%)"
        if ax["off"]:
            title_text += "; ▲ off scale"
        shapes = []
        base = points.index[is_base]
        for i in base:
            v = axes[mode]["y"][i]
            if v is None or pd.isna(v):
                continue
            shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": v, "y1": v,
                           "line": {"dash": "dot", "width": 1, "color": "#1f2933"}})
        out: dict[str, Any] = {"yaxis.title.text": title_text, "yaxis.type": "log" if ax["log"] else "linear",
                               "shapes": shapes}
        if ax["range"] is None:
            out["yaxis.autorange"] = True
        else:
            out["yaxis.range"] = ax["range"]
            out["yaxis.autorange"] = False
        return out

    first = layout_for("metric")
    fig.update_layout(
        title=title, template="plotly_white", autosize=True, height=540, hovermode="closest",
        xaxis_title=AXIS_TITLES.get(memory, memory), shapes=first["shapes"], legend={"title": {"text": "backend"}},
        yaxis={"title": {"text": first["yaxis.title.text"]}, "type": first["yaxis.type"],
               **({"range": first["yaxis.range"], "autorange": False} if "yaxis.range" in first else {})},
        margin={"t": 90},
    )
    if "change" in modes:
        labels = {"metric": metric_name, "change": f"Δ {metric_name} vs fp32 (%)"}
        fig.update_layout(updatemenus=[{
            "type": "buttons", "direction": "right", "showactive": True, "active": 0,
            "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom", "pad": {"r": 0, "t": 0},
            "buttons": [{"label": _esc(labels[m]), "method": "update",
                         "args": [{"y": ys[m], "text": txt[m]}, layout_for(m)]} for m in modes],
        }])
    return fig


# Accuracy metrics with a change-against-the-baseline column (`workbench.baselines`).
CHANGE_COLUMNS = {"perplexity": "ppl_change"}
PLOT_LABEL_WIDTH = 40
# One symbol per model when a figure shows several; the baseline is a star, an off-scale run a triangle-up.
_MODEL_SYMBOLS = ("circle", "square", "diamond", "triangle-down", "pentagon", "hexagon", "cross", "x")


def _off_scale(values: pd.Series, minimize: bool) -> pd.Series:
    """Which points to draw off scale: for a positive metric where smaller is better (perplexity),
    those above max(best + 10 x (median - best), 2 x best). The factor 2 keeps every run within
    twice the best value in view (a 4-bit run at +30 % is data, not an outlier); the median term
    leaves a sweep of mostly broken runs alone. Never fewer than two points left in view, never
    with fewer than three points."""
    off = pd.Series(False, index=values.index)
    v = values.dropna()
    if not minimize or len(v) < 3 or (v <= 0).any():
        return off
    lo, med = float(v.min()), float(v.median())
    limit = max(lo + 10 * (med - lo), 2 * lo)
    cand = values > limit
    if cand.sum() == 0 or int((~cand & values.notna()).sum()) < 2:
        return off
    return cand.fillna(False).astype(bool)


# What `place_labels` assumes of the rendered plot: an area narrower than the app's and the report's
# (about 1,000 and 850 px), so a placement free of overlaps there stays free when drawn wider.
LABEL_AREA_PX = (620.0, 360.0)
LABEL_CHAR_PX, LABEL_LINE_PX, MARKER_PX = 7.0, 15.0, 7.0
_POSITIONS = ("top center", "bottom center", "top right", "top left", "bottom right", "bottom left",
              "middle right", "middle left")


def place_labels(x: pd.Series, y: pd.Series, texts: Mapping[Any, str], log_y: bool = False,
                 y_range: Sequence[float] | None = None) -> dict[Any, tuple[str, str]]:
    """{index: (text, plotly textposition)} for the points in `texts`, so that no text box overlaps
    another, a marker or the plot's sides, at `LABEL_AREA_PX` (a narrow plot: wider ones only add room).

    Points closer than a marker's size share one text ("a, b"); a text that fits nowhere is left
    out (the point keeps its hover). Greedy, from the left: good enough for the handful of points
    a Pareto front has.
    """
    import math

    width, height = LABEL_AREA_PX
    xs = pd.to_numeric(x, errors="coerce")
    ys = pd.to_numeric(y, errors="coerce")
    if log_y:
        ys = ys.where(ys > 0).map(lambda v: math.log10(v) if pd.notna(v) else v)
    valid = xs.notna() & ys.notna()
    if not valid.any():
        return {}
    x0, x1 = float(xs[valid].min()), float(xs[valid].max())
    if y_range is not None:
        y0, y1 = float(y_range[0]), float(y_range[1])
    else:
        y0, y1 = float(ys[valid].min()), float(ys[valid].max())
    # plotly pads an autoranged axis by about a marker on each side: so do we
    xpad, ypad = (x1 - x0 or abs(x1) or 1.0) * 0.06, (y1 - y0 or abs(y1) or 1.0) * 0.06
    x0, x1 = x0 - xpad, x1 + xpad
    if y_range is None:
        y0, y1 = y0 - ypad, y1 + ypad

    def px(i: Any) -> tuple[float, float]:
        return (float(xs[i]) - x0) / (x1 - x0) * width, (float(ys[i]) - y0) / (y1 - y0) * height

    markers = [px(i) for i in xs.index[valid]]
    groups: list[list[Any]] = []
    for i in sorted((i for i in texts if valid.get(i, False)), key=lambda i: (px(i)[0], px(i)[1])):
        for g in groups:
            gx, gy = px(g[0])
            if abs(gx - px(i)[0]) < MARKER_PX and abs(gy - px(i)[1]) < MARKER_PX:
                g.append(i)
                break
        else:
            groups.append([i])

    def box(cx: float, cy: float, where: str, w: float) -> tuple[float, float, float, float]:
        vert, horiz = where.split()
        h, r = LABEL_LINE_PX, MARKER_PX
        left = {"center": cx - w / 2, "right": cx + (r if vert == "middle" else 0), "left": cx - w
                - (r if vert == "middle" else 0)}[horiz]
        bottom = {"top": cy + r, "bottom": cy - r - h, "middle": cy - h / 2}[vert]
        return left, bottom, left + w, bottom + h

    def hits(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    taken: list[tuple[float, float, float, float]] = []
    out: dict[Any, tuple[str, str]] = {}
    for g in groups:
        names = list(dict.fromkeys(texts[i] for i in g))
        text = ", ".join(names[:2]) + (f" +{len(names) - 2}" if len(names) > 2 else "")
        cx, cy = px(g[0])
        w = LABEL_CHAR_PX * len(text)
        for where in _POSITIONS:
            b = box(cx, cy, where, w)
            inside = b[0] >= -MARKER_PX and b[2] <= width + MARKER_PX
            own = {px(i) for i in g}
            if inside and not any(hits(b, t) for t in taken) and not any(
                    hits(b, (mx - MARKER_PX / 2, my - MARKER_PX / 2, mx + MARKER_PX / 2, my + MARKER_PX / 2))
                    for mx, my in markers if (mx, my) not in own):
                taken.append(b)
                out[g[0]] = (text, where)
                break
    return out


def _axis(values: pd.Series, off: pd.Series, log_ok: bool) -> dict[str, Any]:
    """The y values to draw (off-scale points moved to the top edge), the range (None: auto) and log or not."""
    inview = values[~off & values.notna()]
    log = bool(log_ok and len(inview) and (inview > 0).all() and inview.max() / inview.min() > 100)
    y = values.astype(object).where(values.notna(), None)
    has_off = bool((off & values.notna()).any())
    if not has_off or len(inview) == 0:
        return {"y": y, "range": None, "log": log, "off": False}
    import math

    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    lo, hi = f(float(inview.min())), f(float(inview.max()))
    pad = 0.08 * (hi - lo) if hi > lo else (0.05 * abs(hi) or 1.0)
    top = hi + 2 * pad
    edge = 10 ** top if log else top
    y = pd.Series([edge if off[i] and pd.notna(values[i]) else y[i] for i in values.index], index=values.index,
                  dtype=object)
    return {"y": y, "range": [lo - pad, hi + 3 * pad], "log": log, "off": True}


def _with_baselines(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the columns of `workbench.baselines` (computed unless the frame has them already)."""
    from .baselines import COLUMNS, against_baseline

    if all(c in df.columns for c in COLUMNS):
        return df
    return against_baseline(df)


# Colours of the backends (the methods' `backend` attribute), fixed so that a backend keeps its
# colour from one figure to the next; others get one from a palette by a hash of their name.
BACKEND_COLORS = {
    "pytorch": "#1f77b4", "workbench": "#ff7f0e", "openvino": "#2ca02c", "onnxruntime": "#d62728",
    "torchao": "#9467bd", "hqq": "#8c564b", "optimum-quanto": "#e377c2", "bitsandbytes": "#17becf",
    "gptqmodel": "#bcbd22", "autoawq": "#393b79", "llm-compressor": "#637939", "transformers": "#8c6d31",
    "gguf": "#843c39", "other": "#9aa5b1", "unknown": "#9aa5b1",
}
OTHER_BACKEND = "other"


def backend_of(method: str) -> str:
    """The `backend` class attribute of a registered method (read torch-free), "other" for an
    unregistered one (a plug-in no longer installed)."""
    try:
        from .registry import methods

        ref = methods().get(method)
        return str(ref.cls.backend) if ref is not None else OTHER_BACKEND
    except Exception:  # noqa: BLE001 - a figure must never fail on a broken plug-in
        return OTHER_BACKEND


def backend_color(backend: str) -> str:
    if backend in BACKEND_COLORS:
        return BACKEND_COLORS[backend]
    import zlib

    palette = plotly.colors.qualitative.Dark24
    return palette[zlib.crc32(backend.encode()) % len(palette)]


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


SUMMARY_COLUMNS = ("label", "model", "protocol", "status", "weights (MB)", "disk (MB)", "peak RSS (MB)", "perplexity",
                   "Δ perplexity (%)", "KL", "top-1 (%)", "cosine", "PSNR (dB)", "decode tok/s", "× baseline",
                   "image s", "layers", "kernel")
# The default table (CLI, `compact_table`): what people compare, columns empty for every row dropped.
COMPACT_COLUMNS = ("label", "weights (MB)", "perplexity", "Δ perplexity (%)", "KL", "top-1 (%)", "cosine",
                   "PSNR (dB)", "decode tok/s", "× baseline", "status")


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader wants first, in human units: one row per run, failed runs included (metrics empty).

    Sizes in MB (2**20 bytes), top-1 agreement in percent, layers as
    "quantized/eligible". Numbers are rounded but stay numbers, so the frame sorts.
    "Δ perplexity (%)" and "× baseline" (decode speed as a multiple of the baseline's) compare
    each run with its fp32 baseline (`workbench.baselines`); blank when it has none. "protocol" is
    the measurement protocol the run's settings match (`workbench.protocols`): runs of different
    protocols are not measured the same way.
    """
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    df = _with_baselines(df)

    def num(col: str, scale: float = 1.0, digits: int = 2) -> pd.Series:
        return (_numeric(df, col) / scale).round(digits)

    out = pd.DataFrame({
        "label": df.get("label", pd.Series("", index=df.index)).astype(str),
        "model": df.get("model", pd.Series("", index=df.index)).astype(str),
        "protocol": [_str(p) for p in df.get("protocol", [None] * len(df))],
        "status": df.get("status", pd.Series("", index=df.index)).astype(str),
        "weights (MB)": num("weights_bytes", MB, 1),
        "disk (MB)": num("disk_bytes", MB, 1),
        "peak RSS (MB)": num("peak_rss_bytes", MB, 1),
        "perplexity": num("perplexity", 1, 3),
        # + 0.0 turns the -0.0 of an export that matches to the digit into 0.0
        "Δ perplexity (%)": (_numeric(df, "ppl_change") * 100).round(2) + 0.0,
        "KL": num("kl_div", 1, 5),
        "top-1 (%)": (_numeric(df, "top1_agreement") * 100).round(2),
        "cosine": num("embedding_cosine", 1, 5),
        "PSNR (dB)": num("image_psnr_db", 1, 2),
        "decode tok/s": num("decode_tok_s", 1, 1),
        "× baseline": num("decode_speedup", 1, 2),
        "image s": num("image_s", 1, 3),
        "layers": [layers_text(q, e) for q, e in zip(df.get("layers_quantized", [None] * len(df)),
                                                 df.get("layers_eligible", [None] * len(df)))],
        "kernel": [_str(k) for k in df.get("kernel", [None] * len(df))],
    }, index=df.index)
    return out.reset_index(drop=True)


def compact_table(df: pd.DataFrame) -> pd.DataFrame:
    """The default table: `COMPACT_COLUMNS` of `summary_table`, without the columns that are empty
    for every row (so an encoder shows cosine and no perplexity, a pipeline PSNR). No model column:
    show one model per table (`workbench results` prints a section per model)."""
    table = summary_table(df)[list(COMPACT_COLUMNS)]
    keep = [c for c in table.columns if c in ("label", "status") or table[c].notna().any()]
    return table[keep]


# How `text_table` shows each column's numbers (others: as they are).
TEXT_FORMATS = {
    "weights (MB)": "{:.1f}", "disk (MB)": "{:.1f}", "peak RSS (MB)": "{:.1f}", "perplexity": "{:.3f}",
    "Δ perplexity (%)": "{:+.1f}", "KL": "{:.4f}", "top-1 (%)": "{:.1f}", "cosine": "{:.5f}", "PSNR (dB)": "{:.2f}",
    "decode tok/s": "{:.1f}", "× baseline": "{:.2f}", "image s": "{:.3f}",
}
# Shorter headers in a terminal, where every column costs room the labels need.
TEXT_HEADERS = {"Δ perplexity (%)": ("Δ ppl", "(%)"), "× baseline": ("decode", "× fp32")}
ELLIPSIS = "…"


def text_table(table: pd.DataFrame, max_width: int | None = 120, shorten: str = "label", min_width: int = 16) -> str:
    """A frame as fixed-width text for a terminal: numbers right-aligned in `TEXT_FORMATS`, text
    left-aligned, missing values blank, headers on two lines ("weights" over "(MB)") so that
    they take no more room than the numbers. When a line would pass `max_width` characters,
    the `shorten` column's cells are shortened (`shorten_labels`) to fit, down to `min_width`.
    """
    columns = list(table.columns)
    cells: dict[str, list[str]] = {}
    numeric: dict[str, bool] = {}
    for c in columns:
        values = table[c].tolist()
        is_num = c != shorten and pd.api.types.is_numeric_dtype(table[c])
        numeric[c] = is_num
        cells[c] = [_text_cell(c, v) for v in values]
    heads = {c: TEXT_HEADERS.get(c) or _split_header(c) for c in columns}
    two = any(h[0] for h in heads.values())

    def width(c: str) -> int:
        return max([len(heads[c][0]), len(heads[c][1])] + [len(v) for v in cells[c]])

    if max_width and shorten in cells:
        total = sum(width(c) for c in columns) + 2 * (len(columns) - 1)
        if total > max_width:
            others = total - width(shorten)
            room = max(min_width, max_width - others, len(heads[shorten][1]))
            cells[shorten] = shorten_labels(cells[shorten], room)
    widths = {c: width(c) for c in columns}

    def line(parts: list[str]) -> str:
        return "  ".join(p.rjust(widths[c]) if numeric[c] else p.ljust(widths[c])
                         for c, p in zip(columns, parts)).rstrip()

    lines = []
    if two:
        lines.append(line([heads[c][0] for c in columns]))
    lines.append(line([heads[c][1] for c in columns]))
    for i in range(len(table)):
        lines.append(line([cells[c][i] for c in columns]))
    return "\n".join(lines)


def _text_cell(column: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and column in TEXT_FORMATS:
        if v == 0 and column == "Δ perplexity (%)":
            return "0.0"
        return TEXT_FORMATS[column].format(v)
    return str(v)


def _split_header(name: str) -> tuple[str, str]:
    """("weights", "(MB)") for "weights (MB)", ("decode", "tok/s") for "decode tok/s", ("", "KL")."""
    if " (" in name:
        head, _, unit = name.rpartition(" (")
        return head, f"({unit}"
    if " " in name:
        head, _, tail = name.rpartition(" ")
        return head, tail
    return "", name


def shorten_labels(labels: Sequence[str], width: int) -> list[str]:
    """Labels of at most `width` characters, shortened with an ellipsis at word boundaries.

    A label is a method and its `k=v` words. One too long keeps its first word (the method),
    then the words that tell it from the other labels of the same method in `labels` (the last
    word when it has no such sibling), then as many of the remaining words as fit, in order;
    each run of dropped words becomes "…". So two long ov-weight labels that differ only in
    `ratio=` both keep their ratio. Short labels are returned as they are; a label whose kept
    words alone do not fit is cut at `width` - 1 characters plus "…".
    """
    labels = [_str(x) for x in labels]
    words = [x.split(" ") for x in labels]
    out = []
    for i, (label_, ws) in enumerate(zip(labels, words)):
        if len(label_) <= width:
            out.append(label_)
            continue
        siblings = [w for j, w in enumerate(words) if j != i and w[:1] == ws[:1] and w != ws]
        if siblings:
            common = set(ws).intersection(*map(set, siblings))
            must = {0} | {k for k, w in enumerate(ws) if w not in common}
        else:
            must = {0, len(ws) - 1}
        kept = set(must)
        if len(_join_kept(ws, kept)) <= width:
            for k in range(len(ws)):
                if k not in kept and len(_join_kept(ws, kept | {k})) <= width:
                    kept.add(k)
            out.append(_join_kept(ws, kept))
        else:
            out.append(_join_kept(ws, kept)[:max(width - 1, 0)] + ELLIPSIS)
    return out


def _join_kept(words: list[str], kept: set[int]) -> str:
    parts, gap = [], False
    for k, w in enumerate(words):
        if k in kept:
            parts.append(w)
            gap = False
        elif not gap:
            parts.append(ELLIPSIS)
            gap = True
    return " ".join(parts)


def compact_text(df: pd.DataFrame, max_width: int = 120, candidates: pd.DataFrame | None = None,
                 rows: pd.Series | None = None) -> str:
    """The default terminal view of runs: one section per model (per model and protocol when a
    model's runs span several protocols: `comparison_groups`), each a header line naming the
    model and its fp32 baseline (or saying that none is stored) over `text_table(compact_table(...))`,
    no line longer than `max_width` (labels are shortened; `--wide`, JSON and CSV keep them whole).

    `df`: rows of `RunResult.to_row`; `candidates`: more rows searched for baselines only (the
    store); `rows`: a boolean mask of `df` restricting the rows shown (the ratios still come from
    all of `df`, e.g. a Pareto front whose baseline is not on it).
    """
    from .baselines import against_baseline

    if df is None or len(df) == 0:
        return "no results yet"
    full = against_baseline(df, candidates)
    pool = full if candidates is None or len(candidates) == 0 else pd.concat([candidates, full], ignore_index=True)
    shown = full if rows is None else full[rows.reindex(full.index, fill_value=False).astype(bool)]
    sections = []
    groups = comparison_groups(full).reindex(shown.index).astype(str)
    for group in dict.fromkeys(groups):
        sub = shown[groups == group]
        header = _section_header(group, sub, pool, max_width)
        sections.append(header + "\n" + text_table(compact_table(sub), max_width=max_width))
    return "\n\n".join(sections)


def terminal_text(text: str, encoding: str | None = None) -> str:
    """`text` with Δ, × and … spelled in ASCII when `encoding` (default: stdout's) cannot encode them."""
    import sys

    try:
        text.encode(encoding or getattr(sys.stdout, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        for a, b in (("Δ", "d"), ("×", "x"), ("…", "...")):
            text = text.replace(a, b)
    return text


def _section_header(model: str, sub: pd.DataFrame, pool: pd.DataFrame, max_width: int) -> str:
    """"smollm2-135m: fp32 baseline 513.1 MB, perplexity 14.700, decode 20.3 tok/s", or why there is none."""
    by_key = pool.drop_duplicates("key", keep="last").set_index("key") if "key" in pool.columns else pd.DataFrame()
    acc = list(dict.fromkeys(sub["baseline_key"].dropna()))
    speed = list(dict.fromkeys(sub["speed_baseline_key"].dropna()))
    ok = sub[sub["status"].astype(str).isin(SUCCEEDED)]
    without = int(ok["baseline_key"].isna().sum())
    if not acc:
        what = "no fp32 baseline stored on the same data, so no Δ perplexity or × baseline"
    elif len(acc) > 1:
        what = f"{len(acc)} fp32 baselines (runs on different data): each run is compared with its own"
    else:
        b = by_key.loc[acc[0]]
        parts = []
        w = pd.to_numeric(pd.Series([b.get("weights_bytes")]), errors="coerce").iloc[0]
        if pd.notna(w):
            parts.append(f"{w / MB:.1f} MB")
        p = pd.to_numeric(pd.Series([b.get("perplexity")]), errors="coerce").iloc[0]
        if pd.notna(p):
            parts.append(f"perplexity {p:.3f}")
        sb = by_key.loc[speed[0]] if len(speed) == 1 else b
        d = pd.to_numeric(pd.Series([sb.get("decode_tok_s")]), errors="coerce").iloc[0]
        if pd.notna(d):
            parts.append(f"decode {d:.1f} tok/s")
        what = "fp32 baseline " + (", ".join(parts) if parts else "stored")
        if without:
            what += f"; {without} run{'s have' if without > 1 else ' has'} none (other data)"
    room = max_width - len(what) - 2
    name = model if len(model) <= room else ELLIPSIS + model[-max(room - 1, 8):]
    return f"{name}: {what}"[:max_width]


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
    "ACCURACY_MINIMIZE", "BACKEND_COLORS", "COMPACT_COLUMNS", "METRIC_NAMES", "MB", "NO_RUNS", "SUMMARY_COLUMNS",
    "accuracy_vs_memory", "backend_color", "backend_of", "compact_table", "compact_text", "comparison_groups",
    "generation_table",
    "shorten_labels", "terminal_text", "text_table",
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
