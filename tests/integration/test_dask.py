"""The Dask executor on a LocalCluster of 2 worker processes: the same spec gives the same numbers as
the subprocess executor, results come back to the one SQLite store, progress and cancel cross the
cluster, a sweep runs two configurations at once, and a resource no worker has is refused."""
from __future__ import annotations

import threading
import time

import pytest

from workbench.exec.subprocess import SubprocessExecutor
from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec, DataSpec
from workbench import sweep

from ..conftest import requires_torch_env

pytest.importorskip("distributed")

QUICK = BenchSpec(latency=False, save=False)
DATA = DataSpec(eval_windows=2, window=64)


@pytest.fixture(scope="module")
def dask_executor():
    from workbench.exec.dask import DaskExecutor

    executor = DaskExecutor(n_workers=2)
    yield executor
    executor.close()


@requires_torch_env
def test_the_same_spec_gives_the_same_numbers_as_the_subprocess_executor(dask_executor, tmp_path):
    spec = Session.make_spec("tiny-llama", "rtn", {"bits": 4, "group_size": 16}, bench=QUICK, data=DATA)
    local = Session(store=tmp_path / "local.sqlite", executor=SubprocessExecutor(), progress=False).submit(spec)
    session = Session(store=tmp_path / "dask.sqlite", executor=dask_executor, progress=False)
    events = []
    remote = session.submit(spec, progress=lambda stage, fraction, message: events.append(stage))
    assert local.status is RunStatus.OK and remote.status is RunStatus.OK, (remote.error, remote.stderr_tail)
    for name in ("perplexity", "kl_div", "top1_agreement", "weights_bytes"):
        assert remote.metrics[name] == local.metrics[name], name
    assert remote.layers_quantized == local.layers_quantized and remote.versions == local.versions
    assert {"build", "perplexity"} <= set(events)  # progress crossed the cluster
    stored = session.store.results()
    assert remote.key == local.key
    assert [r.key for r in stored] == [remote.key] and stored[0].metrics["perplexity"] == local.metrics["perplexity"]


def test_cancel_and_missing_resources_cross_the_cluster(dask_executor, tmp_path, fault_method):
    session = Session(store=tmp_path / "wb.sqlite", executor=dask_executor, progress=False)
    spec = session.validate(session.make_spec("tiny-llama", "fault", {"mode": "hang", "seconds": 120}, bench=QUICK))
    hanging = threading.Event()
    out = {}

    def progress(stage, fraction, message):
        if "about to hang" in message:
            hanging.set()

    t = threading.Thread(target=lambda: out.setdefault("r", session.submit(spec, progress=progress)))
    t.start()
    assert hanging.wait(120), "the worker never reported"
    started = time.monotonic()
    assert dask_executor.cancel(spec.key)
    t.join(60)
    assert out["r"].status is RunStatus.CANCELLED and "about to hang" in out["r"].error
    assert time.monotonic() - started < 30

    greedy = session.make_spec("tiny-llama", "fault", {"mode": "raise"},
                               bench=BenchSpec(latency=False, save=False, memory_limit_mb=10**7))
    r = session.submit(greedy)
    assert r.status is RunStatus.UNAVAILABLE and "no Dask worker declares {'MEMORY_MB'" in r.error


@requires_torch_env
def test_a_sweep_on_dask_runs_two_at_once_into_one_store(dask_executor, tmp_path):
    session = Session(store=tmp_path / "wb.sqlite", executor=dask_executor, progress=False)
    assert dask_executor.parallel == 2
    s = sweep.parse_sweep("""
models = ["tiny-llama"]
[data]
eval_windows = 2
window = 64
[bench]
latency = false
save = false
[[runs]]
method = "rtn"
grid = {bits = [8, 6, 4, 3], group_size = [16]}
""")
    plan = sweep.plan(session, s)
    outcome = sweep.run(session, plan, progress=False)
    assert [r.status for r in outcome.results] == [RunStatus.OK] * 4
    assert len(session.store) == 4
    kl = [r.metrics["kl_div"] for r in outcome.results]
    assert kl == sorted(kl)  # fewer bits, more error: each result is its own spec's
    # two runs were under way at the same time, on the two workers
    spans = sorted((r.started_at, r.started_at + r.duration_s) for r in outcome.results)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans
