"""A worker that segfaults, is killed, hangs or runs out of memory costs one stored failed run."""
import os
import tempfile
from dataclasses import replace

import pytest

from workbench.exec import memory_budget
from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec, DataSpec

from ..conftest import requires_torch_env

QUICK = BenchSpec(latency=False, accuracy=False, save=False)
TINY_DATA = DataSpec(eval_windows=2, window=64)


@pytest.fixture
def session(store_path, fault_method):
    return Session(store=store_path, progress=False)


def run(session, mode, **kw):
    params = {"mode": mode, **kw.pop("params", {})}
    bench = kw.pop("bench", QUICK)
    return session.submit(session.make_spec("tiny-llama", "fault", params, bench=bench, **kw))


@pytest.mark.parametrize(
    "mode,status,text",
    [
        ("segfault", RunStatus.CRASHED, "SIGSEGV"),
        ("kill", RunStatus.CRASHED, "SIGKILL"),
        ("exit", RunStatus.CRASHED, "exited with code 7"),
        ("raise", RunStatus.CRASHED, "raised on purpose"),
    ],
)
def test_crashes_are_stored_with_status_and_message(session, mode, status, text):
    r = run(session, mode)
    assert r.status is status and text in r.error
    stored = session.store.results(latest_only=False)
    assert stored[-1].status is status and stored[-1].key == r.key


def test_timeout_kills_the_worker_group(session):
    r = run(session, "hang", params={"seconds": 60}, timeout_s=2)
    assert r.status is RunStatus.TIMEOUT and "2 s" in r.error
    # how far it got: the worker's last progress event
    assert "it had got to: build 50% (about to hang)" in r.error
    assert r.duration_s < 30


def test_a_killed_worker_leaves_no_temp_files(session, tmp_path, monkeypatch):
    # the worker inherits TMPDIR, so without the executor's scratch folder its files would stay here
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    r = run(session, "hang", params={"seconds": 60}, timeout_s=5)
    assert r.status is RunStatus.TIMEOUT and "about to hang" in r.error
    assert list(tmp.iterdir()) == []


def test_memory_limit_gives_oom(session):
    r = run(session, "oom", bench=BenchSpec(latency=False, accuracy=False, save=False, memory_limit_mb=512))
    assert r.status is RunStatus.OOM, (r.error, r.stderr_tail)


def test_the_session_carries_on_after_failures(session):
    run(session, "segfault")
    run(session, "raise")
    assert len(session.store) == 2
    # failures are not cache hits: a second submit runs again
    run(session, "raise")
    assert len(session.store) == 3


def test_flooding_warnings_and_logs_are_stored_once_with_counts(session):
    r = run(session, "noisy")
    assert r.status is RunStatus.CRASHED and "raised on purpose" in r.error
    assert "UserWarning: casting on call (step 0) (x1000)" in r.warnings
    assert "log noisy.backend: slow path taken for this call (x1000)" in r.warnings
    assert len(r.warnings) == 2


@requires_torch_env
def test_a_worker_over_the_containers_memory_budget_is_stored_as_oom_and_the_next_run_succeeds(
        store_path, fault_method, monkeypatch):
    """With a container limit (WORKBENCH_MEMORY_LIMIT_MB here; MEM_LIMIT on Binder) each worker is
    watched against its share: one that keeps growing is stopped and stored as `oom` with the limit
    it hit, the session lives on, and the next run completes within the share."""
    held = memory_budget.tree_memory(os.getpid())
    share_mb = 1100
    monkeypatch.setenv("WORKBENCH_MEMORY_LIMIT_MB",
                       str(int(held / memory_budget.MB) + memory_budget.SERVER_RESERVE_MB + share_mb))
    session = Session(store=store_path, progress=False, warm=False)
    grown = run(session, "grow", params={"megabytes": 6000})
    assert grown.status is RunStatus.OOM, (grown.status, grown.error)
    assert "was stopped" in grown.error and "set by WORKBENCH_MEMORY_LIMIT_MB" in grown.error, grown.error
    assert "it had got to: build" in grown.error
    assert session.store.results(latest_only=False)[-1].status is RunStatus.OOM

    ok = session.submit(session.make_spec("tiny-llama", "baseline", {}, bench=replace(QUICK, accuracy=True),
                                          data=TINY_DATA))
    assert ok.ok, ok.error
    assert 0 < ok.metrics["peak_rss_bytes"] <= (share_mb + 64) * memory_budget.MB
