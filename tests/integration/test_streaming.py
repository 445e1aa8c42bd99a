"""Measurements stream from real workers (subprocess executor, tiny-llama): the partial reports
arrive in the protocol's order (accuracy before any latency table) and the final result is the
last one plus what is not streamed; a worker SIGKILLed right after its accuracy stage leaves a
stored `crashed` row with its perplexity, and the next run works; the app shows the perplexity in
the queue and the results table while the latency is still being measured."""
import os
import signal
import time

import pandas as pd
import pytest

from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec, DataSpec

from ..conftest import requires_torch_env

pytestmark = requires_torch_env
SMALL = DataSpec(eval_windows=2, window=64)
# One prompt length with enough decoding that latency takes seconds after the accuracy stage.
BENCH = BenchSpec(batch_sizes=(1, 2), prompt_lengths=(32,), decode_tokens=16, generate_batch_sizes=(1,), repeats=2)
RTN = ("rtn", {"bits": 4, "group_size": 16})


@pytest.fixture
def session(store_path):
    return Session(store=store_path, progress=False)


def test_partials_arrive_in_order_and_the_result_is_the_last_one_plus_the_rest(session):
    updates = []
    r = session.submit(session.make_spec("tiny-llama", *RTN, bench=BENCH, data=SMALL), on_partial=updates.append)
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    stages = [u.stage for u in updates]
    assert stages == ["started", "build", "save", "accuracy", "latency", "latency", "latency", "memory", "reload",
                      "task"]
    first_table = next(i for i, u in enumerate(updates) if u.partial.get("tables"))
    assert stages.index("accuracy") < first_table
    at_accuracy = updates[stages.index("accuracy")].result
    assert at_accuracy.metrics["perplexity"] == r.metrics["perplexity"] and not at_accuracy.tables
    assert "decode_tok_s" not in at_accuracy.metrics and at_accuracy.status is RunStatus.RUNNING
    assert all(u.pid == updates[1].pid for u in updates[1:]) and updates[1].pid != os.getpid()
    last = updates[-1].result
    assert (r.metrics, r.tables, r.notes, r.layers_quantized, r.layers_eligible, r.kernel) == \
        (last.metrics, last.tables, last.notes, last.layers_quantized, last.layers_eligible, last.kernel)
    assert r.versions and r.device and not last.versions  # the rest: what only the end knows
    assert session.store.live() == []


def test_a_worker_killed_after_its_accuracy_stage_is_stored_crashed_with_its_perplexity(session):
    spec = session.make_spec("tiny-llama", *RTN, bench=BENCH, data=SMALL)
    killed = {}

    def kill_after_accuracy(update):
        if update.stage == "accuracy":
            group = os.getpgid(update.pid)
            assert group != os.getpgrp()  # the worker's own group, never this test's
            killed["perplexity"] = update.result.metrics["perplexity"]
            os.killpg(group, signal.SIGKILL)

    r = session.submit(spec, on_partial=kill_after_accuracy)
    assert r.status is RunStatus.CRASHED and "SIGKILL" in r.error, (r.error, r.stderr_tail)
    [stored] = session.store.results()
    assert stored.status is RunStatus.CRASHED and stored.metrics["perplexity"] == killed["perplexity"]
    assert stored.layers_quantized and stored.kernel and "decode_tok_s" not in stored.metrics
    assert session.store.live() == [] and session.store.cached(r.key) is None
    # the next run works, and is what the store answers from then on
    again = session.submit(spec)
    assert again.status is RunStatus.OK and again.metrics["perplexity"] == killed["perplexity"]
    assert again.key == r.key and session.store.cached(r.key).metrics["decode_tok_s"] == again.metrics["decode_tok_s"]


def test_the_app_shows_the_perplexity_before_the_run_ends(store_path):
    from workbench.ui.app import App

    app = App(Session(store=store_path, progress=False), bench=BENCH, data=SMALL)
    app.select(model="tiny-llama", method="rtn")
    app.set_params({"bits": 4, "group_size": "16"})
    seen_item, seen_table = [], []
    item = app.run()
    assert item is not None
    item.measured.observe(lambda c: seen_item.append((c["new"], item.result is None)), names="value")

    def table_changed(_change):
        df = app.results.df
        row = df.iloc[-1] if len(df) else None
        if row is not None:
            seen_table.append((row["status"], row["perplexity"], row["decode_tok_s"]))
    app.results.table.observe(table_changed, names="value")
    assert app.queue.wait(300)
    assert item.result.status is RunStatus.OK, item.result.error
    # the queue item: the perplexity while the run was going, before any decode speed
    running = [text for text, still_running in seen_item if still_running]
    first = next(i for i, text in enumerate(running) if "perplexity" in text)
    assert "decode" not in running[first] and any("decode" in text for text in running[first:])
    # the results table: a running row with its perplexity and no decode speed yet, then the complete row
    filled = [i for i, (status, ppl, dec) in enumerate(seen_table)
              if status == "running" and not pd.isna(ppl) and pd.isna(dec)]
    assert filled, seen_table
    complete = [i for i, (status, ppl, dec) in enumerate(seen_table) if status == "ok" and not pd.isna(dec)]
    assert complete and complete[0] > filled[0]
    assert "1 of 1 stored runs" == app.results.count.value
    time.sleep(0.1)
    assert not app._table_refresh.errors and not app._plots_refresh.errors


def test_partials_cross_a_dask_cluster_in_order(store_path):
    pytest.importorskip("distributed")
    from workbench.exec.dask import DaskExecutor

    executor = DaskExecutor(n_workers=1)
    try:
        session = Session(store=store_path, executor=executor, progress=False)
        updates = []
        r = session.submit(session.make_spec("tiny-llama", *RTN, bench=BenchSpec(latency=False, save=False),
                                             data=SMALL), on_partial=updates.append)
    finally:
        executor.close()
    assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
    assert [u.stage for u in updates] == ["started", "build", "accuracy", "memory", "task"]
    assert updates[2].result.metrics["perplexity"] == r.metrics["perplexity"]
    assert updates[-1].result.metrics == r.metrics and session.store.live() == []
