"""The widget layer driven from Python: forms generated from every schema, live validation,
Run enabled or disabled with the reason, the results table and plots read from the store.
No worker runs here (tests/integration/test_ui.py runs them)."""
from __future__ import annotations

import io

import ipywidgets as W
import pandas as pd
import plotly.offline
import pytest

from workbench import registry
from workbench.result import RunResult, RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec
from workbench.ui.app import App
from workbench.ui.check import check
from workbench.ui.form import ParamForm, widget_for
from workbench.ui.pickers import CUSTOM, method_options
from workbench.ui.views import PlotsView, table_view

ALL = sorted(registry.methods())
# A model of the kinds each method takes, from the catalog (no worker, no weights needed).
MODEL_FOR = {"causal-lm": "tiny-llama", "encoder": "tiny-bert", "text-to-image": "tiny-sd",
             "speech-to-text": "tiny-whisper", "image-text-to-text": "tiny-vlm"}


@pytest.fixture
def session(tmp_path):
    return Session(store=tmp_path / "wb.sqlite", progress=False)


@pytest.fixture
def app(session):
    return App(session, bench=BenchSpec(latency=False))


def model_for(method: str) -> str:
    return MODEL_FOR[registry.get(method).cls.model_kinds[0]]


@pytest.mark.parametrize("method", ALL)
def test_every_method_form_is_generated_and_its_defaults_validate(app, method):
    app.select(model=model_for(method), method=method)
    cls = registry.get(method).cls
    schema = cls.schema
    assert set(app.form.inputs) == set(schema.names)
    if cls.required:  # no usable default (a checkpoint directory): named, and Run stays off
        assert app.run_button.disabled
        if "cpu" in cls.devices:  # (GPU-only loaders stop at the device first)
            assert set(app.verdict.field_errors) == set(cls.required), app.verdict.field_errors
        return
    assert app.verdict.field_errors == {}, app.verdict.field_errors
    assert schema.errors(app.params())[1] == []
    # Run is disabled only when the method is unavailable here, and then it says how to fix it.
    assert app.run_button.disabled == (app.verdict.unavailable is not None)
    if app.run_button.disabled:
        assert "unavailable" in app.reason.value


@pytest.mark.parametrize("method", ALL)
def test_every_text_field_refuses_garbage_with_a_message_and_run_disabled(app, method):
    """Drive every control with an invalid value: a message under it, Run off, nothing raised."""
    app.select(model=model_for(method), method=method)
    schema = registry.get(method).cls.schema
    tried = 0
    for p in schema.params:
        w = app.form.inputs[p.name]
        if not isinstance(w, W.Text) or p.kind not in ("int", "float"):
            continue
        visible = app.form.visible()
        if p.name not in visible:
            continue
        before = w.value
        w.value = "not-a-number"
        assert app.run_button.disabled and p.name in app.verdict.field_errors
        assert "allowed" in app.form.messages[p.name].value
        w.value = before
        tried += 1
    assert app.errors.value == ""  # no handler failed
    if tried:
        assert not app.verdict.field_errors


def test_widgets_follow_the_parameter_kinds():
    schema = registry.get("ov-weight").cls.schema
    assert isinstance(widget_for(schema.get("bits")), W.Dropdown)
    assert isinstance(widget_for(schema.get("sym")), W.Checkbox)
    assert isinstance(widget_for(schema.get("ratio")), W.FloatSlider)
    assert isinstance(widget_for(schema.get("num_samples")), W.IntSlider)
    assert isinstance(widget_for(schema.get("group_size")), W.Text)  # [-1, inf): no slider
    sens = widget_for(schema.get("sensitivity_metric"))
    assert isinstance(sens, W.Dropdown) and sens.options[0] == ("none", None)  # nullable choice
    assert isinstance(widget_for(registry.get("rtn").cls.schema.get("exclude")), W.Text)  # list as text


def test_visible_when_hides_fields_that_do_not_apply(app):
    app.select(model="tiny-llama", method="ov-weight")
    assert app.form.rows["group_size"].layout.display == "none"
    app.set_params({"bits": 4})
    assert app.form.rows["group_size"].layout.display is None
    assert app.form.rows["lora_rank"].layout.display == "none"
    app.set_params({"lora_correction": True})
    assert app.form.rows["lora_rank"].layout.display is None
    assert "group_size" in app.params() and "lora_rank" in app.params()


def test_shape_checks_and_cross_parameter_rules_show_under_their_field(app):
    app.select(model="smollm2-135m", method="rtn")
    app.set_params({"group_size": "128"})
    assert app.run_button.disabled and "576" in app.form.messages["group_size"].value
    assert "group_size" in app.reason.value
    app.set_params({"group_size": "64"})
    assert "group_size" not in app.verdict.field_errors
    app.select(method="ov-weight")
    app.set_params({"bits": 4, "awq": True})
    assert "dataset" in app.verdict.field_errors and app.run_button.disabled


def test_model_problems_disable_run_with_the_reason(app):
    app.select(model="/no/such/model", method="rtn")
    assert app.models.dropdown.value == CUSTOM and app.run_button.disabled
    assert "no such directory" in app.reason.value and "no such directory" in app.models.info.value
    app.select(model="tiny-sd")  # a pipeline: rtn does not take it
    assert app.run_button.disabled and "text-to-image" in app.reason.value
    app.select(model="tiny-llama")
    assert "text-to-image" not in app.reason.value
    assert check(app.session, "  ", "rtn", {}).problems[0].startswith("model:")


def test_show_code_follows_the_form(app):
    app.select(model="tiny-llama", method="ov-weight")
    app.set_params({"bits": 4, "group_size": "32"})
    assert "group_size=32" in app.code.value and "OVWeightQuantizationConfig" in app.code.value
    app.set_params({"group_size": "x"})
    assert app.code.value.startswith("# fix the parameters")


def test_unavailable_methods_are_listed_with_the_reason(session, monkeypatch):
    rows = [{"name": "a", "backend": "x", "available": False, "reason": "environment 'x' is not created"},
            {"name": "b", "backend": "pytorch", "available": True, "reason": ""}]
    assert method_options(rows) == [("pytorch · b", "b"), ("x · a  (unavailable)", "a")]
    monkeypatch.setattr(registry, "unavailable_reason", lambda ref: "environment 'torch' is not created")
    app = App(session)
    app.select(model="tiny-llama", method="rtn")
    assert app.run_button.disabled and app.verdict.unavailable
    assert "workbench env create torch" in app.methods.info.value
    assert app.run() is None  # nothing queued


def _result(key: str, method: str, status: str = "ok", **metrics) -> RunResult:
    spec = {"model": {"id": "tiny-llama"}, "method": method, "params": {}}
    return RunResult(key=key, status=RunStatus(status), spec=spec, metrics=metrics,
                     error=None if status == "ok" else "boom")


def test_results_table_filters_sorts_and_survives_a_new_session(session, tmp_path):
    for r in (_result("1", "rtn", perplexity=20.0, weights_bytes=2e6), _result("2", "baseline", perplexity=10.0,
              weights_bytes=8e6), _result("3", "hqq", status="crashed")):
        session.store.append(r)
    df = Session(store=tmp_path / "wb.sqlite").dataframe()  # a kernel restart reads the same store
    assert len(table_view(df)) == 3
    assert table_view(df, sort_by="perplexity")["label"].tolist()[:2] == ["baseline", "rtn"]
    assert table_view(df, sort_by="perplexity", ascending=False)["perplexity"].tolist()[:2] == [20.0, 10.0]
    assert table_view(df, status="succeeded")["status"].tolist() == ["ok", "ok"]
    assert table_view(df, text="HQQ")["status"].tolist() == ["crashed"]
    assert len(table_view(df, text="rtn nothing")) == 0


def test_the_app_reads_the_store_and_plots_update_when_a_run_lands(session):
    session.store.append(_result("1", "rtn", perplexity=20.0, weights_bytes=2e6))
    app = App(session)
    assert "1 of 1 stored runs" in app.results.count.value
    fig = app.plots.figures["accuracy vs memory"]
    assert len(fig.data[0].x) == 1  # the rtn run (the next trace is the Pareto front)
    assert fig.layout.updatemenus == ()  # no baseline yet: nothing to compare with
    session.store.append(_result("2", "baseline", perplexity=10.0, weights_bytes=8e6))
    app._finished(None)
    assert "2 of 2" in app.results.count.value
    # One trace per backend: rtn (workbench), baseline (pytorch).
    assert [(t.name, len(t.x)) for t in fig.data if t.legendgroup.startswith("backend:")] == [("workbench", 1),
                                                                                             ("pytorch", 1)]
    assert fig.layout.yaxis.title.text.startswith("perplexity")
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["perplexity", "Δ perplexity vs fp32 (%)"]
    # The shown FigureWidget got the buttons too (they live in the layout), and it has the page's width.
    assert app.plots.figure.layout.updatemenus[0].buttons[1].args[0]["y"][0] == [100.0]
    assert app.plots.figure.layout.width is None
    assert app.plots.widget.layout.width == "100%" and app.plots.body.layout.width == "100%"


def test_the_results_table_compares_each_run_with_its_baseline(session):
    for r in (_result("1", "rtn", perplexity=11.0, weights_bytes=2e6, decode_tok_s=30.0),
              _result("2", "baseline", perplexity=10.0, weights_bytes=8e6, decode_tok_s=20.0)):
        session.store.append(r)
    app = App(session)
    assert "Δ perplexity (%)" in app.results.sort_by.options and "× baseline" in app.results.sort_by.options
    view = table_view(session.dataframe(), sort_by="Δ perplexity (%)")
    assert view["label"].tolist() == ["baseline", "rtn"]
    assert view["Δ perplexity (%)"].tolist() == [0.0, 10.0] and view["× baseline"].tolist() == [1.0, 1.5]
    assert "Δ perplexity (%)" in app.results.table.value and "<td>10.0</td>" in app.results.table.value


def test_download_saves_the_report_and_the_csv_of_the_stored_runs(session, monkeypatch):
    """The Download buttons build their file in the kernel when clicked and send it to the page as
    one binary buffer (no URL, no server route); with nothing stored they say so, nothing raises."""
    app = App(session)
    sent = []
    for button in (app.download.report, app.download.csv):
        monkeypatch.setattr(button, "send", lambda content, buffers=None: sent.append((content, buffers)))
    app.download.report._clicked(None, {"event": "click"}, [])
    assert sent[-1] == ({"event": "failed"}, None)
    assert "no stored runs yet" in app.download.note.value

    for r in (_result("1", "rtn", perplexity=11.0, weights_bytes=2e6),
              _result("2", "baseline", perplexity=10.0, weights_bytes=8e6), _result("3", "hqq", status="crashed")):
        session.store.append(r)
    app.download.report._clicked(None, {"event": "click"}, [])
    content, buffers = sent[-1]
    assert content["event"] == "file" and content["mime"] == "text/html"
    assert content["filename"].startswith("workbench-report-") and content["filename"].endswith(".html")
    page = buffers[0].decode()
    assert plotly.offline.get_plotlyjs() in page and '<script src="http' not in page  # opens offline
    assert "rtn" in page and "boom" in page  # the ok runs and the failed one with its error
    assert content["filename"] in app.download.note.value

    app.download.csv._clicked(None, {"event": "click"}, [])
    content, buffers = sent[-1]
    assert content["mime"] == "text/csv" and content["filename"].endswith(".csv")
    frame = pd.read_csv(io.BytesIO(buffers[0]))
    assert sorted(frame["label"]) == ["baseline", "hqq", "rtn"]
    rtn = frame.set_index("label").loc["rtn"]
    assert rtn["perplexity"] == 11.0 and rtn["ppl_change"] == pytest.approx(0.1)


def test_a_failing_handler_is_shown_not_raised(app, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("planted failure")

    monkeypatch.setattr("workbench.ui.app.check", broken)
    app.models.dropdown.value = "tiny-bert"  # the observer calls revalidate -> check
    assert "planted failure" in app.errors.value


def test_the_app_imports_no_torch(tmp_path):
    import os
    import subprocess
    import sys

    code = ("import sys; from workbench.ui import App; App(); "
            "bad = [m for m in ('torch', 'transformers', 'openvino') if m in sys.modules]; sys.exit(1 if bad else 0)")
    env = {**os.environ, "WORKBENCH_STORE": str(tmp_path / "wb.sqlite")}
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, env=env).returncode == 0


class PreparingExecutor:
    """Records what an app asks to prepare; runs nothing."""

    def __init__(self):
        self.prepared: list[tuple[str, str]] = []

    def prepare(self, env, model=None):
        self.prepared.append((env, model.id))
        return "starting"

    def run(self, *_a, **_k):  # pragma: no cover - the test never runs
        raise AssertionError("no run expected")


def test_picking_a_method_prepares_its_environment_and_scripts_do_not(tmp_path):
    ex = PreparingExecutor()
    app = App(Session(store=tmp_path / "wb.sqlite", executor=ex, progress=False), prepare=True)
    app.select(model="tiny-llama", method="ov-weight")
    assert ("openvino", "tiny-llama") in ex.prepared
    quiet = PreparingExecutor()
    App(Session(store=tmp_path / "wb.sqlite", executor=quiet, progress=False)).select(method="rtn")
    assert quiet.prepared == []  # not in a kernel: a script or a test prepares nothing
