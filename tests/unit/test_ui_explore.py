"""The app's sweep, layer-sensitivity and budget-search panels driven from Python, without workers:
the sweep plan and what Run queues (a recording queue), the budget search on a scripted session
(tests/unit/test_recommend.py's), errors shown in the panel. tests/integration/test_ui.py runs
them with real workers."""
from __future__ import annotations

import pytest

from workbench import sensitivity
from workbench.result import RunResult, RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec
from workbench.ui.app import App
from workbench.ui.explore import RecommendPanel, SweepPanel, example_sweep
from workbench.ui.views import latest_sensitivity

from .test_recommend import FakeSession
from .test_sensitivity import result as sensitivity_result


class RecordingQueue:
    def __init__(self):
        self.specs = []

    def add(self, spec):
        self.specs.append(spec)
        return spec


@pytest.fixture
def session(tmp_path):
    return Session(store=tmp_path / "wb.sqlite", progress=False)


def test_the_example_sweep_is_planned_and_run_queues_only_what_is_not_stored(session):
    queue = RecordingQueue()
    panel = SweepPanel(session, queue, model=lambda: "tiny-llama")
    assert 'models = ["tiny-llama"]' in panel.text.value
    plan = panel.check()
    assert len(plan.specs) == 8 and "8 configurations, 0 already stored, 8 to run" in panel.summary.value
    assert panel.plan_table.value.count("to run") == 8 and panel.progress.description == "0/8"
    # two configurations are in the store already: Run queues the other six, the table says so
    for spec in plan.specs[:2]:
        session.store.append(RunResult(key=spec.key, status=RunStatus.OK, spec=spec.to_dict(),
                                       metrics={"perplexity": 12.5, "weights_bytes": 3 * 2**20}))
    queued = panel.run()
    assert [s.key for s in queued] == [s.key for s in plan.specs[2:]] == [s.key for s in queue.specs]
    assert panel.progress.description == "2/8" and "12.500" in panel.plan_table.value


def test_sweep_errors_are_shown_in_the_panel_and_nothing_is_queued(session):
    queue = RecordingQueue()
    panel = SweepPanel(session, queue, model=lambda: "tiny-llama")
    panel.text.value = "name = 'x'\n[[runs]\nmethod = 'rtn'"
    assert panel.run() == [] and "not valid TOML" in panel.summary.value and not queue.specs
    panel.text.value = example_sweep("tiny-llama").replace("bits = [8, 4]", "bits = [8, 99]")
    plan = panel.check()
    # rtn bits=99 at two group sizes, ov-weight bits=99: each named with what is allowed
    assert len(plan.invalid) == 3 and "invalid: bits: got 99; allowed: one of 8, 4" in panel.plan_table.value


def test_the_example_files_load_into_the_text(session):
    panel = SweepPanel(session, RecordingQueue(), model=lambda: "tiny-llama")
    files = [v for _, v in panel.files.options if v]
    assert any(f.endswith("smollm2-weight-only.toml") for f in files)
    panel.files.value = next(f for f in files if f.endswith("smollm2-weight-only.toml"))
    assert 'models = ["smollm2-135m"]' in panel.text.value
    panel.files.value = ""
    assert 'models = ["tiny-llama"]' in panel.text.value


def test_the_budget_search_shows_the_recommendation_and_the_comparison_with_8_bit():
    panel = RecommendPanel(FakeSession(), model=lambda: "m", on_done=lambda: None)
    panel.search(wait=True)
    assert "recommended: ov-weight" in panel.outcome.value and "data-aware, 4-bit" in panel.outcome.value
    assert "38% fewer weight bytes than the best 8-bit run" in panel.outcome.value
    assert "16 runs in" in panel.outcome.value and "meets the budget" in panel.log.value
    assert not panel.button.disabled and panel.stop_button.disabled


def test_stop_ends_the_search_before_its_next_run():
    panel = RecommendPanel(FakeSession(), model=lambda: "m", on_done=lambda: None)
    lines = []

    def say(line):  # the user presses Stop after the third run
        lines.append(line)
        if len(lines) == 4:
            panel.stop()
    panel._say = say
    panel.search(wait=True)
    assert panel.recommendation.runs == 3 and "stopped on request" in panel.outcome.value


@pytest.mark.parametrize("field,value,needle", [
    ("ppl", "ten", "max_ppl_increase: got &#x27;ten&#x27;"),
    ("size", "12 parsecs", "max_bytes: got &#x27;12 parsecs&#x27;"),
    ("speed", "fast", "min_decode_tok_s: got &#x27;fast&#x27;"),
    ("ppl", "", "give at least one of"),
    ("methods", "ov-weight, bnb", "methods: got [&#x27;bnb&#x27;]; allowed: one or more of ov-weight"),
])
def test_a_bad_budget_is_named_in_the_panel_before_any_run(field, value, needle):
    fake = FakeSession()
    panel = RecommendPanel(fake, model=lambda: "m", on_done=lambda: None)
    getattr(panel, field).value = value
    panel.search(wait=True)
    assert needle in panel.outcome.value and fake.submitted == []


def test_the_heatmap_plot_shows_the_latest_stored_analysis(session):
    assert len(latest_sensitivity(session).data) == 0
    session.store.append_analysis(sensitivity.KIND, sensitivity_result("k1"))
    fig = latest_sensitivity(session)
    assert fig.data[0].type == "heatmap" and "tiny-llama" in fig.layout.title.text
    assert [r.key for r in session.store.analyses(sensitivity.KIND)] == ["k1"]


def test_the_app_has_the_three_panels_and_the_sensitivity_plot(session):
    app = App(session, bench=BenchSpec(latency=False))
    assert app.explore.titles == ("Sweep", "Layer sensitivity", "Budget search")
    assert "layer sensitivity" in app.plots.choice.options
    assert app.sensitivity.method.options == ("rtn",) and "bits" in app.sensitivity.form.raw_values()
    app.select(model="tiny-bert")  # an encoder: the analysis refuses it in the panel, nothing raises
    app.sensitivity.analyse(wait=True)
    assert "tiny-bert is of kind encoder" in app.sensitivity.status.value and not app.sensitivity.button.disabled
