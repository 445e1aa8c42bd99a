"""What a page shows of the app, checked from Python: the state a new plot view starts from, what a
relayout leaves behind, how many plotly widgets a page loads, and a Voila page opened long after its
preheated kernel ran the notebook.

The browser tests (tests/browser/test_voila.py) found each of these; these pin them down fast.
"""
import threading

import ipywidgets as W
import plotly.graph_objects as go
import pytest

from workbench.result import RunResult, RunStatus
from workbench.session import Session
from workbench.ui.app import App
from workbench.ui.views import PLOTS, TABLE, PlotsView, replace_figure


def _ok(key: str, method: str, **metrics) -> RunResult:
    return RunResult(key=key, status=RunStatus.OK, spec={"model": {"id": "tiny-llama"}, "method": method,
                                                          "params": {}}, metrics=metrics)


@pytest.fixture
def session(tmp_path):
    return Session(store=tmp_path / "wb.sqlite", progress=False)


def _widgets(w: W.Widget):
    yield w
    for child in getattr(w, "children", ()):
        yield from _widgets(child)


def test_a_view_opened_after_an_update_starts_from_the_updated_figure():
    widget = go.FigureWidget()  # as the app builds it, before any page shows it
    replace_figure(widget, go.Figure(go.Scatter(x=[1, 2], y=[3, 4]), layout={"title": "t"}))
    # A browser view is created from these synced traits, not from the Python-side figure.
    assert [t["x"] for t in widget._widget_data] == [[1, 2]]
    assert widget._widget_layout["title"]["text"] == "t"


def test_layout_keys_the_new_figure_lacks_are_removed_in_the_browser_too():
    widget = go.FigureWidget()
    replace_figure(widget, go.Figure(layout={"annotations": [{"text": "no runs yet"}]}))
    sent = []
    widget._send_relayout_msg = lambda data, **_: sent.append(data)
    replace_figure(widget, go.Figure(go.Scatter(x=[1], y=[2])))
    assert any(msg.get("annotations", "kept") is None for msg in sent), sent
    assert widget.layout.annotations == () and "annotations" not in widget._widget_layout


def test_one_plotly_widget_shows_the_chosen_comparison(session):
    session.store.append(_ok("1", "rtn", perplexity=20.0, weights_bytes=2e6))
    view = PlotsView(session)
    # Each FigureWidget makes the page import plotly's 5 MB bundle once more.
    assert sum(isinstance(w, go.FigureWidget) for w in _widgets(view.widget)) == 1
    assert list(view.choice.options) == [*PLOTS, TABLE]
    assert len(view.figure.data[0].x) == 1  # accuracy vs memory: the stored run
    view.choice.value = "latency per batch"
    assert view.figure.layout.title.text == view.figures["latency per batch"].layout.title.text
    view.choice.value = TABLE
    assert view.body.children == (view.generation,)
    view.choice.value = "accuracy vs memory"
    session.store.append(_ok("2", "baseline", perplexity=10.0, weights_bytes=8e6))
    fig = view.figures["accuracy vs memory"]
    view.refresh()
    # Two runs now, on one trace per backend (rtn: workbench, baseline: pytorch).
    runs = lambda f: sum(len(t.x) for t in f.data if (t.legendgroup or "").startswith("backend:"))  # noqa: E731
    assert view.body.children == (view.figure,) and runs(view.figure) == 2
    assert view.figures["accuracy vs memory"] is fig and runs(fig) == 2  # updated in place


def test_a_preheated_voila_kernel_rereads_the_store_when_its_page_opens(session, monkeypatch):
    opened, refreshed = threading.Event(), threading.Event()

    def wait_for_request():  # voila.utils': returns once a page has taken this kernel
        assert opened.wait(10)

    monkeypatch.setenv("VOILA_PREHEAT", "True")
    monkeypatch.setattr("voila.utils.wait_for_request", wait_for_request)
    app = App(session)  # the pool fills: the notebook runs with no page yet
    monkeypatch.setattr(app.plots, "refresh", lambda real=app.plots.refresh: (real(), refreshed.set()))
    assert "0 of 0 stored runs" in app.results.count.value
    session.store.append(_ok("1", "rtn", perplexity=20.0, weights_bytes=2e6))  # stored meanwhile
    opened.set()
    assert refreshed.wait(10)
    assert "1 of 1 stored runs" in app.results.count.value and len(app.plots.figure.data[0].x) == 1
    assert app.errors.value == ""

