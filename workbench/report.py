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
"""


def build_report(results: Sequence[RunResult], title: str = "Quantization Workbench report") -> str:
    """The report as one HTML document (a string).

    Sections: summary table, accuracy vs memory (one figure per model),
    latency/memory/throughput figures, the generation (fused-module) tables,
    failed runs with their errors, and the environment of every run.
    """
    results = list(results)
    frame = plots.results_frame(results)
    figures: list[str] = []  # collects rendered figure divs; plotly.js goes in once if any

    def figure(fig: go.Figure) -> str:
        div = fig.to_html(full_html=False, include_plotlyjs=False, default_height="460px",
                          config={"displaylogo": False, "responsive": True})
        figures.append(div)
        return div

    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    body = [
        f"<h1>{_e(title)}</h1>",
        (f"<p class=\"meta\">{len(results)} runs: {len(ok)} succeeded, {len(failed)} failed. "
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
    return _df_html(plots.summary_table(frame))


def _accuracy(frame: pd.DataFrame, figure: Any) -> str:
    models = list(dict.fromkeys(frame["model"].astype(str)))
    if not models:
        return _note(plots.NO_RUNS)
    parts = []
    for model in models:
        sub = frame[frame["model"].astype(str) == model]
        fig = plots.accuracy_vs_memory(sub, accuracy=None)
        parts.append(f"<h3>{_e(model)}</h3>")
        parts.append(figure(fig) if fig.data else _note(_annotation(fig)))
    return "\n".join(parts)


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
    own = {"workbench": __version__, "python": platform.python_version(), "pandas": pd.__version__,
           "plotly": plotly.__version__}
    parts = [f"<p class=\"meta\">Report built with {_e(_kv(own))}.</p>"]
    if not results:
        return "\n".join(parts)
    head = "".join(f"<th class=\"text\">{h}</th>" for h in
                   ("run", "model", "status", "device", "layers quantized / eligible", "kernel", "versions",
                    "duration (s)", "warnings and notes"))
    rows = []
    for r in results:
        device = _kv(r.device) if r.device else str(r.spec.get("device", ""))
        layers = plots.layers_text(r.layers_quantized, r.layers_eligible) or "unknown"
        remarks = "".join(f"<li>{_e(w)}</li>" for w in [*r.warnings, *r.notes])
        duration = f"{r.duration_s:.1f}" if isinstance(r.duration_s, (int, float)) else ""
        rows.append(
            f"<tr><td class=\"text\">{_e(_label(r))}</td><td class=\"text\">{_e(r.model)}</td>"
            f"<td class=\"text\">{_e(r.status.value)}{' (cached)' if r.cached else ''}</td>"
            f"<td class=\"text\">{_e(device)}</td><td>{_e(layers)}</td><td class=\"text\">{_e(r.kernel or '')}</td>"
            f"<td class=\"text\">{_e(_kv(r.versions))}</td><td>{duration}</td>"
            f"<td class=\"text\">{f'<ul>{remarks}</ul>' if remarks else ''}</td></tr>"
        )
    parts.append(f"<table class=\"environment\"><tr>{head}</tr>{''.join(rows)}</table>")
    return "\n".join(parts)


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
