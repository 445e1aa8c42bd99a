"""Measurements that stream: the store's live rows (running runs, upserted, replaced by their result
in one transaction, reaped when their coordinator died), the session driving them from a scripted
executor that streams partial measurements, partial results kept on failure and left out of Pareto
fronts and the budget search, the CLI's early accuracy line and the app's throttled refresh.

Everything here runs without a worker (a scripted executor); tests/integration/test_streaming.py
runs the same path with real workers on tiny-llama."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import closing

import pandas as pd
import pytest

from workbench import plots
from workbench.exec.base import PartialCollector, keep_partial
from workbench.result import RunResult, RunStatus
from workbench.session import Session
from workbench.store import ResultStore

MB = 2**20
SPEC = {"model": {"id": "tiny-llama"}, "method": "rtn", "params": {"bits": 4}}

# What a worker reports for rtn on tiny-llama, stage by stage (numbers made up, shapes real).
SCRIPT = [
    ("build", {"metrics": {"load_s": 0.1, "quantize_s": 0.2, "weights_bytes": 3 * MB}, "layers_quantized": 14,
               "layers_eligible": 15, "kernel": "rtn packed int4", "notes": ["lm_head kept in float"]}),
    ("save", {"metrics": {"disk_bytes": 2 * MB}}),
    ("accuracy", {"metrics": {"perplexity": 1000.5, "kl_div": 0.01, "top1_agreement": 0.9}}),
    ("latency", {"metrics": {"forward_ms": 3.0}, "tables": {"forward": [{"batch_size": 1, "latency_ms": 3.0}]}}),
    ("latency", {"metrics": {"prefill_tok_s": 900.0, "decode_tok_s": 150.0},
                 "tables": {"generation": [{"Prefill Length": 32, "Decode tokens/s": 150.0}]}}),
    ("memory", {"metrics": {"peak_rss_bytes": 400 * MB}}),
    ("reload", {"metrics": {"reload_perplexity": 1000.5}, "notes": ["reload check passed"]}),
    ("task", {"metrics": {"next_token_accuracy": 0.1}}),
]


def res(key, status="ok", **metrics):
    return RunResult(key=key, status=status, spec=SPEC, metrics=metrics)


# --- the store's live rows ---------------------------------------------------------------------
def test_a_live_row_is_running_until_its_result_replaces_it_in_one_transaction(store_path):
    s = ResultStore(store_path)
    s.append(res("k", status="crashed"))  # an earlier failure of the same spec
    s.put_live("run-1", res("k", status="ok", weights_bytes=3 * MB), timeout_s=60)
    s.put_live("run-1", res("k", weights_bytes=3 * MB, perplexity=12.5), timeout_s=60)  # upserted, not added
    live = s.live()
    assert [(r.key, r.status, r.metrics) for r in live] == [("k", RunStatus.RUNNING,
                                                             {"weights_bytes": 3 * MB, "perplexity": 12.5})]
    # a running run is never a result: not counted, not cached, not in the default views
    assert len(s) == 1 and s.cached("k") is None and [r.status for r in s.results()] == [RunStatus.CRASHED]
    # ... but shown where asked for, in place of the key's older row
    df = s.to_dataframe(include_live=True)
    assert list(df["status"]) == ["running"] and df["perplexity"][0] == 12.5
    assert len(s.to_dataframe(latest_only=False, include_live=True)) == 2
    with pytest.raises(ValueError, match="running run is not a result"):
        s.append(RunResult(key="k", status=RunStatus.RUNNING, spec=SPEC))
    s.append(res("k", perplexity=12.5, decode_tok_s=40.0), live_id="run-1")
    assert s.live() == [] and [r.status for r in s.results()] == [RunStatus.OK]
    assert list(s.to_dataframe(include_live=True)["status"]) == ["ok"]


def test_two_runs_of_one_spec_are_two_live_rows(store_path):
    s = ResultStore(store_path)
    s.put_live("a", res("k", perplexity=1.0))
    s.put_live("b", res("k", perplexity=2.0))
    assert sorted(r.metrics["perplexity"] for r in s.live()) == [1.0, 2.0]
    s.drop_live("a")
    assert [r.metrics["perplexity"] for r in s.live()] == [2.0]


def test_a_live_row_whose_coordinator_died_is_stored_as_interrupted_with_its_measurements(store_path):
    # A coordinator that reported an accuracy stage and died (no result appended, no cleanup).
    code = textwrap.dedent(f"""
        from workbench.result import RunResult
        from workbench.store import ResultStore
        s = ResultStore({str(store_path)!r})
        s.put_live("gone", RunResult(key="k", status="running", spec={SPEC!r}, started_at=1.0,
                                     metrics={{"perplexity": 12.5}}), timeout_s=3600)
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    with closing(sqlite3.connect(store_path)) as con:  # it is still there, as the dead process left it
        assert con.execute("SELECT COUNT(*) FROM live_runs").fetchone()[0] == 1
    s = ResultStore(store_path)  # opening the store reaps it
    assert s.live() == []
    [r] = s.results()
    assert r.status is RunStatus.CANCELLED and r.metrics == {"perplexity": 12.5}
    assert r.error.startswith("interrupted: ") and "ended before the run did" in r.error and "measurements it had reported are kept" in r.error
    assert s.cached("k") is None
    assert s.reap() == [] and len(s) == 1  # reaped once


def test_a_live_row_from_another_machine_is_believed_until_its_deadline(store_path):
    s = ResultStore(store_path)
    now = time.time()
    with closing(sqlite3.connect(store_path)) as con:
        for run_id, deadline in (("late", now - 1), ("on-time", now + 3600)):
            con.execute("INSERT INTO live_runs VALUES (?,?,?,?,?,?,?)",
                        (run_id, run_id, "elsewhere 42 1", now - 10, now - 5, deadline,
                         RunResult(key=run_id, status="running", spec=SPEC).to_json()))
        con.commit()
    assert [r.key for r in s.live()] == ["on-time"]
    [r] = s.results()
    assert r.key == "late" and r.status is RunStatus.CANCELLED and "on elsewhere" in r.error


# --- the session with a scripted executor ------------------------------------------------------
class ScriptedExecutor:
    """Streams SCRIPT's partials as a worker would, looking at the store after each one; then
    returns what `final(spec, collector)` gives (a worker's result, or a failure with none)."""

    def __init__(self, store_path, final, stop_after=None, raise_after=None):
        self.store_path, self.final, self.stop_after, self.raise_after = store_path, final, stop_after, raise_after
        self.seen: list[tuple[str, list[RunResult]]] = []
        self.callback = None

    def run(self, spec, target, env, progress=None, partial=None):
        self.callback = partial
        collector = PartialCollector(spec, partial)
        for stage, measured in SCRIPT:
            collector.add(stage, measured, pid=4242)
            self.seen.append((stage, ResultStore(self.store_path).live()))
            if stage == self.raise_after:
                raise KeyboardInterrupt
            if stage == self.stop_after:
                break
        return collector.keep(self.final(spec, collector))


def worker_result(spec, collector):
    """What a worker writes at the end: everything the partials said, plus what is not streamed."""
    r = RunResult(key=spec.key, status=RunStatus.OK, spec=spec.to_dict(), versions={"torch": "x"},
                  warnings=["a warning"], duration_s=1.0)
    for _stage, measured in SCRIPT:
        r.merge_partial(measured)
    return r


def killed(spec, collector):
    """What the subprocess executor makes of a worker killed with SIGKILL: no result of its own."""
    return RunResult.failure(spec.to_dict(), spec.key, RunStatus.CRASHED, "the worker was killed by SIGKILL")


def session_with(store_path, final, **kw):
    ex = ScriptedExecutor(store_path, final, **kw)
    return Session(store=store_path, executor=ex, progress=False), ex


def test_partials_reach_the_caller_in_order_and_the_store_holds_the_running_run(store_path):
    session, ex = session_with(store_path, worker_result)
    updates = []
    r = session.submit(session.make_spec("tiny-llama", "rtn", {"group_size": 16}), on_partial=updates.append)
    assert [u.stage for u in updates] == ["started"] + [stage for stage, _ in SCRIPT]
    assert updates[0].partial == {} and updates[0].result.status is RunStatus.RUNNING
    assert all(u.pid == 4242 for u in updates[1:])
    # each update carries everything so far: at the accuracy stage, perplexity and no latency yet
    at_accuracy = next(u for u in updates if u.stage == "accuracy").result
    assert at_accuracy.metrics["perplexity"] == 1000.5 and "decode_tok_s" not in at_accuracy.metrics
    assert at_accuracy.layers_quantized == 14 and at_accuracy.kernel == "rtn packed int4"
    # ... and so does the store's live row, at the moment the stage reported
    seen = dict((stage, live) for stage, live in ex.seen)
    [row] = seen["accuracy"]
    assert row.status is RunStatus.RUNNING and row.metrics["perplexity"] == 1000.5 and not row.tables
    [row] = seen["task"]
    assert row.metrics["next_token_accuracy"] == 0.1 and set(row.tables) == {"forward", "generation"}
    # the final result is the last partial plus what is not streamed, and the live row is gone
    last = updates[-1].result
    assert r.status is RunStatus.OK and r.metrics == last.metrics and r.tables == last.tables
    assert (r.layers_quantized, r.layers_eligible, r.kernel, r.notes) == \
        (last.layers_quantized, last.layers_eligible, last.kernel, last.notes)
    assert session.store.live() == [] and session.store.results()[0].status is RunStatus.OK


def test_a_run_killed_after_its_accuracy_stage_keeps_its_measurements_and_is_never_ok(store_path):
    session, _ = session_with(store_path, killed, stop_after="accuracy")
    spec = session.make_spec("tiny-llama", "rtn", {"group_size": 16})
    r = session.submit(spec)
    assert r.status is RunStatus.CRASHED and "SIGKILL" in r.error
    assert r.metrics["perplexity"] == 1000.5 and r.layers_quantized == 14 and r.kernel == "rtn packed int4"
    assert "decode_tok_s" not in r.metrics and r.notes == ["lm_head kept in float"]
    [stored] = session.store.results()
    assert stored.status is RunStatus.CRASHED and stored.metrics == r.metrics
    assert session.store.live() == [] and session.store.cached(spec.key) is None


def test_ctrl_c_stores_the_run_as_cancelled_with_its_measurements_and_goes_on(store_path):
    session, _ = session_with(store_path, worker_result, raise_after="accuracy")
    with pytest.raises(KeyboardInterrupt):
        session.submit(session.make_spec("tiny-llama", "rtn", {"group_size": 16}))
    [stored] = session.store.results()
    assert stored.status is RunStatus.CANCELLED and "interrupted" in stored.error
    assert stored.metrics["perplexity"] == 1000.5 and session.store.live() == []


def test_a_late_partial_after_the_result_leaves_no_live_row(store_path):
    session, ex = session_with(store_path, worker_result)
    r = session.submit(session.make_spec("tiny-llama", "rtn", {"group_size": 16}))
    from workbench.exec.base import PartialUpdate

    ex.callback(PartialUpdate("task", {"metrics": {"x": 1}}, RunResult(key=r.key, status="running", spec=r.spec)))
    assert session.store.live() == [] and len(session.store) == 1


def test_an_executor_without_the_partial_callback_still_runs(store_path):
    class OldExecutor:
        def run(self, spec, target, env, progress=None):
            return RunResult(key=spec.key, status=RunStatus.OK, spec=spec.to_dict(), metrics={"perplexity": 2.0})

    session = Session(store=store_path, executor=OldExecutor(), progress=False)
    r = session.submit(session.make_spec("tiny-llama", "rtn", {"group_size": 16}))
    assert r.ok and session.store.live() == [] and len(session.store) == 1


def test_keep_partial_fills_only_what_a_failure_lacks_and_leaves_a_success_alone():
    so_far = RunResult(key="k", status="running", spec=SPEC, metrics={"perplexity": 3.0, "weights_bytes": 1},
                       tables={"forward": [{"x": 1}]}, layers_quantized=2, kernel="k", notes=["n"])
    failed = RunResult(key="k", status="oom", spec=SPEC, metrics={"weights_bytes": 5}, notes=["m"], error="oom")
    kept = keep_partial(failed, so_far)
    assert kept.metrics == {"perplexity": 3.0, "weights_bytes": 5} and kept.tables == so_far.tables
    assert (kept.layers_quantized, kept.kernel, kept.notes, kept.status) == (2, "k", ["n", "m"], RunStatus.OOM)
    ok = RunResult(key="k", status="ok", spec=SPEC, metrics={"perplexity": 4.0})
    assert keep_partial(ok, so_far).metrics == {"perplexity": 4.0}


# --- partial results stay out of comparisons unless asked for -----------------------------------
def frame_with_a_partial_row() -> pd.DataFrame:
    rows = [res("base", weights_bytes=500 * MB, perplexity=10.0), res("int8", weights_bytes=130 * MB, perplexity=10.1),
            res("int4", weights_bytes=100 * MB, perplexity=11.8),
            # killed after its accuracy stage: smaller and better than everything, were it to count
            res("killed", status="crashed", weights_bytes=50 * MB, perplexity=9.0)]
    for r, method in zip(rows, ("baseline", "rtn", "rtn", "rtn")):
        r.spec = {**SPEC, "method": method, "params": {"bits": {"int8": 8, "int4": 4, "killed": 3}.get(r.key, 4)}}
    return plots.results_frame(rows)


def points(fig):
    """(x, symbol) of every marker drawn, and the x of every Pareto-front point."""
    drawn = [(x, sym) for t in fig.data if t.mode == "markers+text" for x, sym in zip(t.x, t.marker.symbol)]
    front = [x for t in fig.data if t.name == "Pareto front" for x in t.x]
    return drawn, front


def test_partial_rows_are_left_out_of_pareto_fronts_unless_asked_for(capsys):
    df = frame_with_a_partial_row()
    drawn, front = points(plots.accuracy_vs_memory(df))
    assert 50.0 not in [x for x, _ in drawn] and 50.0 not in front and sorted(front) == [100.0, 130.0, 500.0]
    drawn, front = points(plots.accuracy_vs_memory(df, include_partial=True))
    # drawn, hollow, and still never on the front
    assert (50.0, "circle-open") in drawn and 50.0 not in front and sorted(front) == [100.0, 130.0, 500.0]
    # only a run in progress so far: drawn all the same (the app's first run)
    drawn, front = points(plots.accuracy_vs_memory(df[df["key"] == "killed"].assign(status="running"),
                                                   accuracy=None, include_partial=True))
    assert drawn == [(50.0, "circle-open")] and front == []
    from workbench.cli import _print_front

    rows = [RunResult(key=k, status=s, spec=SPEC, metrics=m) for k, s, m in (
        ("a", "ok", {"weights_bytes": 100 * MB, "perplexity": 11.0}),
        ("b", "timeout", {"weights_bytes": 50 * MB, "perplexity": 9.0}))]
    rows[1].spec = {**SPEC, "params": {"bits": 2}}
    _print_front(rows)
    out = capsys.readouterr().out
    assert "bits=4" in out and "bits=2" not in out


def test_the_budget_search_never_picks_a_partial_result(monkeypatch):
    from . import test_recommend as scripted
    from workbench import recommend as rec

    monkeypatch.setattr("workbench.sensitivity.sensitivity_frame",
                        lambda r: pd.DataFrame(r.tables["layers"]).sort_values("ppl_delta", ascending=False))

    class KilledAt3Bits(scripted.FakeSession):
        def submit(self, spec):
            r = super().submit(spec)
            if spec[0] == "rtn" and spec[1].get("bits") == 3:
                # killed after its accuracy stage, with numbers that would win the search
                r.status, r.metrics = RunStatus.CRASHED, {"weights_bytes": 40 * MB, "perplexity": 10.0}
            return r

    s = KilledAt3Bits()
    r = rec.recommend(s, "m", rec.Budget(max_ppl_increase=0.10), log=lambda _m: None)
    assert any(spec == ("rtn", {"bits": 3, "group_size": 128}) or (spec[0] == "rtn" and spec[1].get("bits") == 3)
               for spec in s.submitted)
    assert r.best is not None and r.best.result.ok and r.best.result.metrics["weights_bytes"] > 40 * MB
    assert not [st for st in r.steps if st.feasible and not st.result.ok]


# --- the CLI and the app -----------------------------------------------------------------------
def test_workbench_run_prints_the_accuracy_line_as_soon_as_it_is_measured(store_path, capsys, monkeypatch):
    from workbench import cli

    session, ex = session_with(store_path, worker_result)
    monkeypatch.setattr(cli, "_session", lambda args: session)
    lines_when = {}
    real = cli._print_accuracy_early

    def spy(update):
        real(update)
        if update.stage == "accuracy":
            lines_when["accuracy"] = capsys.readouterr().err
    monkeypatch.setattr(cli, "_print_accuracy_early", spy)
    code = cli.main(["run", "--model", "tiny-llama", "--method", "rtn", "--param", "group_size=16"])
    assert code == 0
    early = lines_when["accuracy"]
    assert early.startswith("accuracy: perplexity 1000, kl_div 0.01, top1_agreement 0.9") and "follow" in early
    rest = capsys.readouterr().out
    # stdout is the result alone, as before: it starts with the status, the early line is not repeated
    assert rest.startswith("ok") and "decode_tok_s" in rest
    assert not [line for line in rest.splitlines() if line.startswith("accuracy:")]


def test_the_queue_item_shows_numbers_as_they_arrive(store_path):
    pytest.importorskip("ipywidgets")
    from workbench.ui.queue import RunQueue, measurement_summary

    session, _ = session_with(store_path, worker_result)
    texts = []
    q = RunQueue(session)
    item = q.add(session.make_spec("tiny-llama", "rtn", {"group_size": 16}))
    item.measured.observe(lambda c: texts.append((c["new"], item.result is None)), names="value")
    assert q.wait(30) and item.result.ok
    shown = [t for t, running in texts if running]
    first_ppl = next(i for i, t in enumerate(shown) if "perplexity" in t)
    assert "decode" not in shown[first_ppl] and "decode" in shown[-1] and "reload check: measured" in shown[-1]
    assert "reload check: passed" in item.measured.value
    assert measurement_summary(RunResult(key="k", status="running", spec=SPEC)) == ""


def test_the_throttle_answers_the_last_request_and_collapses_a_burst():
    pytest.importorskip("ipywidgets")
    from workbench.ui.views import Throttle

    calls = []
    gate = threading.Event()

    def slow():
        calls.append(time.monotonic())
        gate.wait(5)

    t = Throttle(slow, interval_s=0.0)
    t()
    time.sleep(0.2)  # the first call is running (held by the gate)
    for _ in range(50):
        t()  # a burst while it runs: one more call, not fifty
    gate.set()
    assert t.wait_idle(10) and len(calls) == 2

    spaced = Throttle(lambda: calls.append(time.monotonic()), interval_s=0.5)
    calls.clear()
    for _ in range(3):
        spaced()
        time.sleep(0.05)
    spaced()
    assert spaced.wait_idle(10) and len(calls) == 2 and calls[1] - calls[0] >= 0.45
    broken = Throttle(lambda: 1 / 0)
    broken()
    assert broken.wait_idle(10) and broken.errors == ["ZeroDivisionError: division by zero"]


def test_dask_progress_and_measurements_share_one_queue():
    import json

    from workbench.exec.dask import _drain

    class Queue:
        def get(self, batch):
            return [json.dumps(["build", 0.5, "quantizing"]), json.dumps({"stage": "accuracy", "pid": 7,
                                                                         "partial": {"metrics": {"perplexity": 2.0}}}),
                    "not json"]

    progress, updates = [], []
    from workbench.spec import ModelSpec, RunSpec

    collector = PartialCollector(RunSpec(ModelSpec("tiny-llama"), "rtn"), updates.append)
    _drain(Queue(), lambda *a: progress.append(a), wait=0, collector=collector)
    assert progress == [("build", 0.5, "quantizing")]
    assert [(u.stage, u.pid, u.result.metrics) for u in updates] == [("accuracy", 7, {"perplexity": 2.0})]
