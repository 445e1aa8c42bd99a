"""What the workbench shows from the store: the results table and the plotly comparisons.

Both read the SQLite store, so they survive kernel restarts; `refresh()` re-reads it (the app
calls it when a run finishes). The table is sortable and filterable through plain functions
(`table_view`), the plots are plotly FigureWidgets updated in place.

Kernel-side: ipywidgets, pandas, plotly; no torch.
"""
from __future__ import annotations

from typing import Any, Callable

import ipywidgets as W
import pandas as pd
import plotly.graph_objects as go

from .. import plots


def table_view(df: pd.DataFrame, text: str = "", sort_by: str | None = None, ascending: bool = True,
               status: str = "all") -> pd.DataFrame:
    """The summary table filtered and sorted: `text` matches the label, model or kernel
    (case-insensitive, every word must match); `status` is "all", "succeeded" or a status."""
    table = plots.summary_table(df)
    if status == "succeeded":
        table = table[table["status"].isin(plots.SUCCEEDED)]
    elif status != "all":
        table = table[table["status"] == status]
    for word in text.lower().split():
        hay = (table["label"] + " " + table["model"] + " " + table["kernel"]).str.lower()
        table = table[hay.str.contains(word, regex=False)]
    if sort_by and sort_by in table.columns:
        table = table.sort_values(sort_by, ascending=ascending, na_position="last", kind="stable")
    return table.reset_index(drop=True)


class ResultsView:
    """The stored results as a table, with a filter, a status choice and a sort column."""

    def __init__(self, session: Any):
        self.session = session
        self.text = W.Text(placeholder="filter: words in label, model or kernel", layout=W.Layout(width="300px"))
        self.status = W.Dropdown(options=["all", "succeeded", "ok", "flagged", "crashed", "invalid", "unavailable",
                                          "timeout", "oom", "cancelled", "reload_mismatch"], value="all",
                                 description="status", layout=W.Layout(width="200px"))
        self.sort_by = W.Dropdown(options=list(plots.SUMMARY_COLUMNS), value="label", description="sort by",
                                  layout=W.Layout(width="240px"))
        self.ascending = W.Checkbox(value=True, description="ascending", indent=False)
        self.count = W.HTML()
        self.table = W.HTML()
        for w in (self.text, self.status, self.sort_by, self.ascending):
            w.observe(lambda _c: self.render(), names="value")
        self.widget = W.VBox([W.HBox([self.text, self.status, self.sort_by, self.ascending]), self.count,
                              self.table])
        self.df = pd.DataFrame()
        self.refresh()

    def refresh(self) -> None:
        self.df = self.session.dataframe()
        self.render()

    def render(self) -> None:
        view = table_view(self.df, self.text.value, self.sort_by.value, self.ascending.value, self.status.value)
        self.count.value = f"{len(view)} of {len(self.df)} stored runs"
        self.table.value = view.to_html(index=False, na_rep="", border=0, classes="wb-results") if len(view) \
            else f"<i>{plots.NO_RUNS if not len(self.df) else 'no run matches the filter'}</i>"


# name -> (title, figure from the stored results). Each becomes one tab of FigureWidgets.
PLOTS: dict[str, Callable[[Any], go.Figure]] = {
    "accuracy vs memory": lambda s: plots.accuracy_vs_memory(s.dataframe(), accuracy=None),
    "latency per batch": lambda s: plots.latency_per_batch(s.results()),
    "memory per batch": lambda s: plots.memory_per_batch(s.results()),
    "tokens/s per length": lambda s: plots.tokens_per_s_per_length(s.results()),
    "throughput per batch": lambda s: plots.throughput_per_batch(s.results()),
}


def replace_figure(widget: go.FigureWidget, fig: go.Figure) -> None:
    """Show `fig` in an existing FigureWidget (its traces and layout replaced in one update)."""
    with widget.batch_update():
        widget.data = ()
        widget.add_traces(list(fig.data))
        widget.layout = fig.layout


class PlotsView:
    """One FigureWidget per comparison plot, plus the fused-module style generation table."""

    def __init__(self, session: Any):
        self.session = session
        self.figures = {name: go.FigureWidget() for name in PLOTS}
        self.generation = W.HTML()
        self.tabs = W.Tab(children=[*self.figures.values(), self.generation])
        for i, name in enumerate([*self.figures, "benchmark table"]):
            self.tabs.set_title(i, name)
        self.widget = self.tabs
        self.refresh()

    def refresh(self) -> None:
        for name, make in PLOTS.items():
            replace_figure(self.figures[name], make(self.session))
        table = plots.generation_table(self.session.results())
        self.generation.value = table.to_html(index=False, na_rep="", border=0) if len(table) else \
            "<i>no prefill / decode tables yet (causal LMs with latency measured)</i>"


__all__ = ["PLOTS", "PlotsView", "ResultsView", "replace_figure", "table_view"]
