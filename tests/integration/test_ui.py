"""The app driven from Python with real workers (subprocess executor): a run end to end into the
results table and the plots, a failing run with its stored error one click away, a cancelled run."""
import time

import pytest

from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec
from workbench.ui.app import App

from ..conftest import requires_torch_env

QUICK = BenchSpec(latency=False, save=False)


@pytest.fixture
def app(store_path, fault_method):
    return App(Session(store=store_path, progress=False), bench=QUICK)


@requires_torch_env
def test_a_run_from_the_form_lands_in_the_table_and_the_plot(app):
    app.select(model="tiny-llama", method="rtn")
    app.set_params({"bits": 4, "group_size": "16"})
    item = app.run()
    assert item is not None and app.queue.wait(300)
    assert item.result.status is RunStatus.OK, item.result.error
    assert item.bar.value == 100 and "ok" in item.stage.value
    assert "1 of 1 stored runs" in app.results.count.value and "rtn" in app.results.table.value
    assert len(app.plots.figures["accuracy vs memory"].data[0].x) == 1
    again = app.run()  # the same configuration: the stored result, no second worker
    assert app.queue.wait(60) and again.result.cached and "stored result" in again.stage.value


def test_a_failing_run_shows_its_stored_error(app):
    app.select(model="tiny-llama", method="fault")
    app.set_params({"mode": "raise"})
    item = app.run()
    assert app.queue.wait(120)
    assert item.result.status is RunStatus.CRASHED and item.show_error.layout.display is None
    assert item.error.layout.display == "none"
    item.show_error.value = True  # the click
    assert item.error.layout.display is None and "raised on purpose" in item.error.value
    assert "crashed" in app.results.table.value


def test_cancel_kills_a_running_worker_and_drops_a_queued_one(app):
    app.select(model="tiny-llama", method="fault")
    app.set_params({"mode": "hang", "seconds": 120})
    running = app.run()
    app.set_params({"seconds": 121})
    queued = app.run()
    deadline = time.time() + 60
    while running.status != "running" or running.bar.value == 0:
        assert time.time() < deadline
        time.sleep(0.1)
    queued.cancel.click()
    assert queued.status == "cancelled"
    running.cancel.click()
    assert app.queue.wait(60)
    assert running.result.status is RunStatus.CANCELLED and queued.result is None


@requires_torch_env
def test_a_sweep_from_the_panel_runs_through_the_queue_and_resumes(app):
    app.select(model="tiny-llama")
    app.sweeps.text.value = '''name = "ui"
models = ["tiny-llama"]
[data]
eval_windows = 2
window = 64
[bench]
latency = false
save = false
[[runs]]
method = "rtn"
grid = {bits = [8, 4], group_size = [16]}
'''
    first = app.sweeps.run()
    assert len(first) == 2 and app.queue.wait(300)
    assert all(item.result.status is RunStatus.OK for item in first), [i.result.error for i in first]
    # the app refreshed the sweep's table and progress as each run ended
    assert app.sweeps.progress.description == "2/2" and app.sweeps.plan_table.value.count(">ok<") == 2
    assert "2 of 2 stored runs" in app.results.count.value
    assert app.sweeps.run() == [] and "every configuration is stored" in app.sweeps.summary.value


@requires_torch_env
def test_layer_sensitivity_from_the_panel_fills_the_table_and_the_heatmap(app):
    app.select(model="tiny-llama")
    app.sensitivity.form.set_values({"bits": 2, "group_size": "16"})
    app.sensitivity.analyse(wait=True)
    result = app.sensitivity.result
    assert result is not None and result.ok, (result and result.error)
    assert "14 layers" in app.sensitivity.status.value and "most sensitive layers" in app.sensitivity.top.value
    assert app.plots.choice.value == "layer sensitivity"
    heatmap = app.plots.figures["layer sensitivity"].data[0]
    assert heatmap.type == "heatmap" and len(heatmap.x) == 2  # tiny-llama's two blocks
