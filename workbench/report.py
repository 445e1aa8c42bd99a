"""A self-contained HTML report of a set of runs: tables and figures in one file that opens offline.

plotly.js is embedded once, inline (no CDN, no network); every figure after it
only calls `Plotly.newPlot`. Every user string (labels, model ids, errors,
versions) is HTML-escaped. Kernel side: pandas and plotly only.
"""
from __future__ import annotations

import datetime as _dt
import html
import math
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import plotly
import plotly.graph_objects as go
import plotly.offline

from . import __version__, plots
from .result import RunResult

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #1f2933; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: right; vertical-align: top; }
th { background: #f3f5f7; } td.text, th.text { text-align: left; }
table.dataframe td:first-child, table.dataframe th:first-child { text-align: left; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f8fa; padding: 0.5em; margin: 0; }
.note { color: #57606a; font-style: italic; } .meta { color: #57606a; }
.status-failed { color: #b42318; font-weight: 600; }
.scroll { overflow-x: auto; }
"""


def build_report(results: Sequence[RunResult], title: str = "Quantization Workbench report") -> str:
    """The report as one HTML document (a string).

    Sections: summary table (with each run's measurement protocol), accuracy vs memory (one
    figure per model, and per protocol when a model's runs span several: no Pareto front is
    drawn across protocols),
    latency/memory/throughput figures, the generation (fused-module) tables,
    failed runs with their errors, and the environment of every run.
    """
    results = list(results)
    frame = plots.results_frame(results)
    figures: list[str] = []  # collects rendered figure divs; plotly.js goes in once if any

    def figure(fig: go.Figure) -> str:
        # Full width of the page, and resized with it (a layout width would pin it).
        fig.update_layout(width=None, autosize=True)
        div = fig.to_html(full_html=False, include_plotlyjs=False, default_height="460px", default_width="100%",
                          config={"displaylogo": False, "responsive": True})
        figures.append(div)
        return div

    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    body = [
        f"<h1>{_e(title)}</h1>",
        (f"<p class=\"meta\">{len(results)} runs: {len(ok)} succeeded, {len(failed)} failed. "
         f"{_e(_protocols(frame))}"
         f"Generated {_e(_now())} by workbench {_e(__version__)}. 1 MB = 2<sup>20</sup> bytes.</p>"),
        _section("Summary", _summary(frame)),
        _section("Accuracy vs memory", _accuracy(frame, figure)),
        _section("Latency and throughput", _speed(results, figure)),
        _section("Generation (fused-module table)", _generation(results)),
        _section("Failed runs", _failed(failed)),
        _section("Environment", _environment(results)),
    ]
    head_js = ""
    if figures:
        # Inline, once, before any figure: the file must open with no network.
        head_js = ("<script type=\"text/javascript\">window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
                   f"<script type=\"text/javascript\">{plotly.offline.get_plotlyjs()}</script>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{_e(title)}</title>\n"
        f"<style>{_CSS}</style>\n{head_js}\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def results_table(results: Sequence[RunResult]) -> pd.DataFrame:
    """One row per run, each compared with its model's fp32 baseline: what `workbench results
    --format csv` prints and the app's "Download runs (CSV)" saves."""
    from .baselines import against_baseline

    return against_baseline(plots.results_frame(list(results)))


def write_report(results: Sequence[RunResult], path: str | Path, title: str = "Quantization Workbench report") -> Path:
    """Write `build_report(results, title)` to `path` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_report(results, title), encoding="utf-8")
    return path


# --- sections -------------------------------------------------------------------------
def _summary(frame: pd.DataFrame) -> str:
    if len(frame) == 0:
        return _note("no runs")
    # Wider than the page with its kernel column: it scrolls on its own, the page does not.
    return f"<div class=\"scroll\">{_df_html(plots.summary_table(frame))}</div>"


def _protocols(frame: pd.DataFrame) -> str:
    """"Measured with the quick protocol. " or "Protocols: quick 3 runs, standard 5 runs (...). "."""
    if len(frame) == 0 or "protocol" not in frame.columns:
        return ""
    counts = frame["protocol"].astype(str).value_counts(sort=False)
    if len(counts) == 1:
        return f"Measured with the {counts.index[0]} protocol. "
    listed = ", ".join(f"{name} {n} run{'s' if n > 1 else ''}" for name, n in counts.items())
    return (f"Protocols: {listed} (runs of different protocols are measured differently: each figure and "
            "front keeps to one). ")


def _accuracy(frame: pd.DataFrame, figure: Any) -> str:
    groups = plots.comparison_groups(frame).astype(str) if len(frame) else pd.Series(dtype=object)
    models = list(dict.fromkeys(groups))
    if not models:
        return _note(plots.NO_RUNS)
    legend = ["<p class=\"meta\">One colour per backend; the fp32 baseline is the star (and the dotted line), "
              "runs no other beats on both axes carry their label and the dashed Pareto front, a triangle at the top "
              "edge is a run off the scale (its value in its label). Hover a point for its parameters, layers and "
              "kernel; for perplexity, the buttons above a figure show its change against the baseline.</p>"]
    parts, drawn = [], False
    for model in models:  # a model, or a model and one of its protocols
        sub = frame[groups == model]
        fig = plots.accuracy_vs_memory(sub, accuracy=None)
        parts.append(f"<h3>{_e(model)}</h3>")
        parts.append(figure(fig) if fig.data else _note(_annotation(fig)))
        drawn = drawn or bool(fig.data)
    return "\n".join((legend if drawn else []) + parts)


def _speed(results: list[RunResult], figure: Any) -> str:
    parts = []
    for make in (plots.latency_per_batch, plots.memory_per_batch, plots.tokens_per_s_per_length,
                 plots.throughput_per_batch):
        fig = make(results)
        if fig.data:
            parts.append(figure(fig))
        else:
            parts.append(_note(f"{fig.layout.title.text}: {_annotation(fig)}"))
    return "\n".join(parts)


def _generation(results: list[RunResult]) -> str:
    table = plots.generation_table(results)
    if len(table) == 0:
        return _note("no generation tables in the successful runs")
    parts = ["<h3>All runs, side by side</h3>", _df_html(table, measured=True)]
    for run, rows in table.groupby("Run", sort=False):
        parts.append(f"<h3>{_e(run)}</h3>")
        parts.append(_df_html(rows.drop(columns=["Run"]), measured=True))
    return "\n".join(parts)


def _failed(failed: list[RunResult]) -> str:
    if not failed:
        return _note("none")
    rows = []
    for r in failed:
        stderr = (f"<details><summary>stderr (last lines)</summary><pre>{_e(r.stderr_tail)}</pre></details>"
                  if r.stderr_tail else "")
        rows.append(
            f"<tr><td class=\"text\">{_e(_label(r))}</td><td class=\"text\">{_e(r.model)}</td>"
            f"<td class=\"text status-failed\">{_e(r.status.value)}</td>"
            f"<td class=\"text\"><pre>{_e(r.error or '(no message)')}</pre>{stderr}</td></tr>"
        )
    head = "<tr><th class=\"text\">run</th><th class=\"text\">model</th><th class=\"text\">status</th>" \
           "<th class=\"text\">error</th></tr>"
    return f"<table class=\"failed\">{head}{''.join(rows)}</table>"


def _environment(results: list[RunResult]) -> str:
    """What all runs share once (device facts, versions, the device they ran on), then per run only what
    differs (its own versions and device facts), its layer counts, kernel, duration, warnings and notes.
    "All runs" are those that reported it: a run that failed before its worker reported has no device."""
    own = {"workbench": __version__, "python": platform.python_version(), "pandas": pd.__version__,
           "plotly": plotly.__version__}
    parts = [f"<p class=\"meta\">Report built with {_e(_kv(own))}.</p>"]
    if not results:
        return "\n".join(parts)
    devices = [{"device": r.spec.get("device", "cpu"), **(r.device or {})} for r in results]
    versions = [dict(r.versions or {}) for r in results]
    shared_device = _shared([d for d, r in zip(devices, results) if r.device])
    shared_versions = _shared([v for v in versions if v])
    reported = sum(1 for r in results if r.device or r.versions)
    shared_rows = [(what, _kv(d)) for what, d in (("device", shared_device), ("versions", shared_versions)) if d]
    if shared_rows:
        whom = "every run" if reported == len(results) else f"the {reported} runs that reported them"
        parts.append(f"<h3>Shared by {_e(whom)}</h3>")
        parts.append("<table class=\"environment-shared\">" + "".join(
            f"<tr><th class=\"text\">{_e(what)}</th><td class=\"text\">{_e(text)}</td></tr>"
            for what, text in shared_rows) + "</table>")
    per_run = []
    for r, d, v in zip(results, devices, versions):
        differs_device = {k: x for k, x in d.items() if k not in shared_device} if r.device else {}
        differs_versions = {k: x for k, x in v.items() if k not in shared_versions}
        layers = plots.layers_text(r.layers_quantized, r.layers_eligible) or "unknown"
        remarks = "".join(f"<li>{_e(w)}</li>" for w in [*r.warnings, *r.notes])
        duration = f"{r.duration_s:.1f}" if isinstance(r.duration_s, (int, float)) else ""
        per_run.append({
            "run": f"<td class=\"text\">{_e(_label(r))}</td>",
            "model": f"<td class=\"text\">{_e(r.model)}</td>",
            "status": f"<td class=\"text\">{_e(r.status.value)}{' (cached)' if r.cached else ''}</td>",
            "device (where it differs)": f"<td class=\"text\">{_e(_kv(differs_device))}</td>" if differs_device else "",
            "versions (where they differ)": f"<td class=\"text\">{_e(_kv(differs_versions))}</td>"
            if differs_versions else "",
            "layers quantized / eligible": f"<td>{_e(layers)}</td>",
            "kernel": f"<td class=\"text\">{_e(r.kernel or '')}</td>",
            "duration (s)": f"<td>{duration}</td>",
            "warnings and notes": f"<td class=\"text\">{f'<ul>{remarks}</ul>' if remarks else ''}</td>",
        })
    # A column that is empty for every run (nothing differs) is left out.
    columns = [c for c in per_run[0] if any(row[c] for row in per_run)]
    head = "".join(f"<th class=\"text\">{_e(c)}</th>" for c in columns)
    rows = "".join("<tr>" + "".join(row[c] or "<td></td>" for c in columns) + "</tr>" for row in per_run)
    parts.append(f"<h3>Each run</h3><table class=\"environment\"><tr>{head}</tr>{rows}</table>")
    return "\n".join(parts)


def _shared(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """The items every one of `dicts` has with the same value (in the first one's order); {} for none."""
    if not dicts:
        return {}
    first = dicts[0]
    return {k: v for k, v in first.items() if all(k in d and d[k] == v for d in dicts[1:])}


# --- small helpers -----------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _section(title: str, content: str) -> str:
    anchor = title.lower().split(" ")[0]
    return f"<section id=\"{_e(anchor)}\">\n<h2>{_e(title)}</h2>\n{content}\n</section>"


def _note(text: str) -> str:
    return f"<p class=\"note\">{_e(text)}</p>"


def _label(r: RunResult) -> str:
    return r.to_row()["label"]


def _kv(d: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def _annotation(fig: go.Figure) -> str:
    # The empty figures carry their reason as an (already escaped) annotation; undo that for _note.
    texts = [a.text for a in fig.layout.annotations if a.text]
    return html.unescape(texts[0]) if texts else "nothing to show"


def _df_html(df: pd.DataFrame, measured: bool = False) -> str:
    """A frame as an HTML table, every cell escaped; missing values (NaN, None) left blank.

    `measured`: timings and rates, shown to about four significant digits
    (more would be noise); otherwise numbers are shown as the frame has them.
    """
    fmt = _measured if measured else _exact
    cells = df.astype(object).map(lambda v: "" if _missing(v) else fmt(v) if isinstance(v, float) else str(v))
    return cells.to_html(index=False, escape=True, border=0)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _exact(v: float) -> str:
    return f"{v:,.10g}"


def _measured(v: float) -> str:
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 1:
        return f"{v:.3g}" if a < 10 else f"{v:.1f}"
    return f"{v:.3g}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


__all__ = ["build_report", "write_report"]
