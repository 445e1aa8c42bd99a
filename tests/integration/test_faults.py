"""A worker that segfaults, is killed, hangs or runs out of memory costs one stored failed run."""
import tempfile

import pytest

from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec

QUICK = BenchSpec(latency=False, accuracy=False, save=False)


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
