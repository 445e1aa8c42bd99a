"""What the workbench shows from the store: the results table and the plotly comparisons.

Both read the SQLite store, so they survive kernel restarts; `refresh()` re-reads it (the app
calls it when a run finishes, and through a `Throttle` while a run reports measurements: a run
in progress shows as `running`, its cells filling in stage by stage). The table is sortable and
filterable through plain functions (`table_view`), the plots are plotly figures updated in place,
shown in one FigureWidget.

Kernel-side: ipywidgets, pandas, plotly; no torch.
"""
from __future__ import annotations

import threading
import time
from copy import deepcopy
from typing import Any, Callable

import anywidget
import ipywidgets as W
import pandas as pd
import plotly.graph_objects as go

from .. import plots


def table_view(df: pd.DataFrame, text: str = "", sort_by: str | None = None, ascending: bool = True,
               status: str = "all") -> pd.DataFrame:
    """The summary table filtered and sorted: `text` matches the label, model, protocol or kernel
    (case-insensitive, every word must match); `status` is "all", "succeeded" or a status."""
    table = plots.summary_table(df)
    if status == "succeeded":
        table = table[table["status"].isin(plots.SUCCEEDED)]
    elif status != "all":
        table = table[table["status"] == status]
    for word in text.lower().split():
        hay = (table["label"] + " " + table["model"] + " " + table["protocol"] + " " + table["kernel"]).str.lower()
        table = table[hay.str.contains(word, regex=False)]
    if sort_by and sort_by in table.columns:
        table = table.sort_values(sort_by, ascending=ascending, na_position="last", kind="stable")
    return table.reset_index(drop=True)


class ResultsView:
    """The stored results as a table, with a filter, a status choice and a sort column."""

    def __init__(self, session: Any):
        self.session = session
        self.text = W.Text(placeholder="filter: words in label, model, protocol or kernel",
                           layout=W.Layout(width="300px"))
        self.status = W.Dropdown(options=["all", "succeeded", "ok", "flagged", "crashed", "invalid", "unavailable",
                                          "timeout", "oom", "cancelled", "reload_mismatch", "running"], value="all",
                                 description="status", layout=W.Layout(width="200px"))
        self.sort_by = W.Dropdown(options=list(plots.SUMMARY_COLUMNS), value="label", description="sort by",
                                  layout=W.Layout(width="240px"))
        self.ascending = W.Checkbox(value=True, description="ascending", indent=False)
        self.count = W.HTML()
        self.table = W.HTML()
        for w in (self.text, self.status, self.sort_by, self.ascending):
            w.observe(lambda _c: self.render(), names="value")
        self.widget = W.VBox([W.HBox([self.text, self.status, self.sort_by, self.ascending]), self.count,
                              self.table], layout=W.Layout(width="100%"))
        self.df = pd.DataFrame()
        self._lock = threading.Lock()  # the queue's thread and a throttled refresh may both ask
        self.refresh()

    def refresh(self) -> None:
        """Re-read the store, runs in progress included (status `running`, what they measured so far)."""
        with self._lock:
            self.df = self.session.dataframe(include_live=True)
            self.render()

    def render(self) -> None:
        view = table_view(self.df, self.text.value, self.sort_by.value, self.ascending.value, self.status.value)
        running = int((self.df["status"].astype(str) == "running").sum()) if "status" in self.df.columns else 0
        self.count.value = f"{len(view)} of {len(self.df)} stored runs" + (f", {running} running" if running else "")
        self.table.value = view.to_html(index=False, na_rep="", border=0, classes="wb-results") if len(view) \
            else f"<i>{plots.NO_RUNS if not len(self.df) else 'no run matches the filter'}</i>"


def latest_sensitivity(session: Any) -> go.Figure:
    """The heatmap of the latest stored layer-sensitivity analysis (an empty figure without one)."""
    from ..result import label
    from ..sensitivity import KIND, sensitivity_frame

    found = session.store.analyses(KIND)
    if not found:
        return plots.sensitivity_heatmap(None, title="Layer sensitivity")
    r = found[0]
    return plots.sensitivity_heatmap(sensitivity_frame(r), title=f"Layer sensitivity of {r.model}, "
                                     f"{label(r.method, r.params)}: perplexity increase with only that layer quantized")


def _done_or_running(session: Any) -> pd.DataFrame:
    """The stored runs that succeeded, and the runs in progress: a running run shows as it measures
    (hollow, off the Pareto front); one that failed partway stays out of the comparison."""
    df = session.dataframe(include_live=True)
    if not len(df):
        return df
    return df[df["status"].astype(str).isin((*plots.SUCCEEDED, "running"))]


# name -> figure from the stored results and the runs in progress. One is shown at a time (see PlotsView).
PLOTS: dict[str, Callable[[Any], go.Figure]] = {
    "accuracy vs memory": lambda s: plots.accuracy_vs_memory(_done_or_running(s), accuracy=None,
                                                             include_partial=True),
    "latency per batch": lambda s: plots.latency_per_batch(s.results(include_live=True)),
    "memory per batch": lambda s: plots.memory_per_batch(s.results(include_live=True)),
    "tokens/s per length": lambda s: plots.tokens_per_s_per_length(s.results(include_live=True)),
    "throughput per batch": lambda s: plots.throughput_per_batch(s.results(include_live=True)),
    "layer sensitivity": latest_sensitivity,
}
TABLE = "benchmark table"


def replace_figure(widget: go.Figure, fig: go.Figure) -> None:
    """Show `fig` in an existing figure or FigureWidget (traces and layout replaced in one update)."""
    # Assigning a layout reaches the browser as a relayout, which changes only the keys it names:
    # the empty plot's "no successful runs yet" annotation would stay over the first point.
    stale = {key: None for key in widget.layout.to_plotly_json() if key not in fig.layout.to_plotly_json()}
    with widget.batch_update():
        widget.data = ()
        widget.add_traces(list(fig.data))
        if stale:
            widget.plotly_relayout(stale)
        widget.layout = fig.layout
    if isinstance(widget, go.FigureWidget):
        # A view created later (the page opened after the figure changed) starts from these synced
        # traits; plotly refreshes them only when the FigureWidget itself is displayed
        # (`_repr_mimebundle_`), never when it sits in a Box: it would show an empty plot.
        widget._widget_layout = deepcopy(widget._layout_obj._props)
        widget._widget_data = deepcopy(widget._data)


class WidthWatch(anywidget.AnyWidget):
    """An empty widget whose script tells the page's plotly figures to fit their container: it
    watches its parent box and dispatches a window `resize` event when the box's width changes
    (plotly's `responsive` mode listens to that event only)."""

    _esm = """
    function render({ el }) {
      el.style.height = "0px";
      let last = -1;
      const fire = () => window.dispatchEvent(new Event("resize"));
      const box = () => el.parentElement || el;
      const check = () => { const w = Math.round(box().getBoundingClientRect().width);
                            if (w > 0 && w !== last) { last = w; fire(); } };
      const observer = new ResizeObserver(() => setTimeout(check, 50));
      requestAnimationFrame(() => { observer.observe(box()); check(); });
      const timers = [500, 2000, 5000].map((t) => setTimeout(fire, t));
      return () => { observer.disconnect(); timers.forEach(clearTimeout); };
    }
    export default { render };
    """


class PlotsView:
    """The comparison plots, one at a time in a single FigureWidget, plus the fused-module style
    generation table; a row of buttons picks what is shown.

    One FigureWidget, not one per plot: each FigureWidget makes the browser import its own copy of
    plotly's 5 MB widget bundle, and anywidget gives a model 2 s to initialize. With five of them
    loading at once on a slow or busy machine some missed that, and a model that misses it drops
    every later update: its plot stayed empty after runs (seen in Voila on 2 cores).
    `figures` keeps every plot as a plain `go.Figure`, updated in place, for code and tests.
    """

    def __init__(self, session: Any):
        self.session = session
        self.figures: dict[str, go.Figure] = {name: go.Figure() for name in PLOTS}
        # The plot takes the page's width: no layout width (plotly autosizes to its container), and
        # column boxes at 100 % (a row Box shrinks its child to plotly's default 700 px, or less).
        # plotly draws a FigureWidget before the page has laid it out, at its default 700 px, and
        # autosizes again only on a window resize (with `responsive`): `WidthWatch` sends one
        # whenever the box holding the plot changes width (first layout, a tab shown, a window).
        self.figure = go.FigureWidget(layout={"autosize": True})
        self.figure._config = {**self.figure._config, "responsive": True}
        self.watch = WidthWatch()
        self.generation = W.HTML(layout=W.Layout(width="100%"))
        self.choice = W.ToggleButtons(options=[*PLOTS, TABLE], value=next(iter(PLOTS)),
                                      style={"button_width": "auto"})
        self.body = W.VBox([self.figure], layout=W.Layout(width="100%"))
        self.widget = W.VBox([self.choice, self.body, self.watch], layout=W.Layout(width="100%"))
        self.choice.observe(lambda _c: self.show(), names="value")
        self._lock = threading.Lock()  # the queue's thread and a throttled refresh may both ask
        self.refresh()

    def refresh(self) -> None:
        """Re-read the store (runs in progress included) into every plot and the generation table."""
        with self._lock:
            for name, make in PLOTS.items():
                replace_figure(self.figures[name], make(self.session))
            table = plots.generation_table(self.session.results(include_live=True))
            self.generation.value = table.to_html(index=False, na_rep="", border=0) if len(table) else \
                "<i>no prefill / decode tables yet (causal LMs with latency measured)</i>"
            self.show()

    def show(self) -> None:
        """Put the chosen plot (or the generation table) on screen."""
        name = self.choice.value
        if name == TABLE:
            self.body.children = [self.generation]
            return
        replace_figure(self.figure, self.figures[name])
        self.body.children = [self.figure]


class Throttle:
    """Calls `fn` in a thread of its own when asked, never more often than every `interval_s`
    seconds: the requests that arrive meanwhile collapse into one call after the interval, so
    the last request is always answered and a burst of them costs one call.

    The app refreshes its views through two of these while runs report measurements: the
    results table on every stage (a stage is seconds apart; `interval_s` 0 only collapses
    requests that arrive while a refresh runs), the plots at most every few seconds (six plotly
    figures rebuilt and sent to the browser are too much for each stage of a fast run).
    `fn` runs outside the caller's thread: a slow refresh never holds up the executor's reader.
    """

    def __init__(self, fn: Callable[[], Any], interval_s: float = 0.0, name: str = "workbench-refresh"):
        self.fn = fn
        self.interval_s = interval_s
        self.name = name
        self.calls = 0
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._pending = False
        self._busy = False
        self._last = float("-inf")
        self._thread: threading.Thread | None = None

    def __call__(self, *_args: Any) -> None:
        """Ask for a call (arguments are ignored: a callback's update is only the reason to refresh)."""
        with self._cond:
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def cancel(self) -> None:
        """Drop a request not yet answered (the caller is about to refresh itself)."""
        with self._cond:
            self._pending = False

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no request is waiting and no call is running; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    # Idle for a while: the thread ends; the next request starts another.
                    if not self._cond.wait(timeout=30) and not self._pending:
                        self._thread = None
                        return
                wait = self._last + self.interval_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self._cond:
                if not self._pending:  # cancelled while we waited
                    continue
                self._pending = False
                self._busy = True
            try:
                self.fn()
            except Exception as e:  # noqa: BLE001 - a refresh that fails must not end the thread
                self.errors.append(f"{type(e).__name__}: {e}")
            finally:
                with self._cond:
                    self.calls += 1
                    self._busy = False
                    self._last = time.monotonic()
                    self._cond.notify_all()


__all__ = ["PLOTS", "TABLE", "PlotsView", "ResultsView", "Throttle", "WidthWatch", "latest_sensitivity",
           "replace_figure", "table_view"]
