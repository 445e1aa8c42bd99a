"""Warm starts in the torch environment on tiny-llama: runs forked from a real prepared process give
a cold run's numbers, get their own threads, limits, seeds and temp folder, cost one run when they
crash, are killed on cancel, and nothing (prepared process or run) outlives its coordinator."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import replace

import pytest

from workbench import registry
from workbench.exec import warm
from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec, DataSpec
from workbench.testing import ProcessProbe, TorchFaultMethod, alive, wait_gone, workers_under

from ..conftest import requires_openvino_env, requires_torch_env

pytestmark = requires_torch_env

NOTHING = BenchSpec(latency=False, accuracy=False, save=False)
DATA = DataSpec(eval_windows=2, window=64)
LIGHT = BenchSpec(batch_sizes=(1,), prompt_lengths=(16,), decode_tokens=4, generate_batch_sizes=(1,), warmup=0,
                  repeats=1, save=False)


@pytest.fixture
def methods():
    registry.register(ProcessProbe)
    registry.register(TorchFaultMethod)
    yield
    registry.unregister(ProcessProbe.name)
    registry.unregister(TorchFaultMethod.name)


@pytest.fixture
def sessions(store_path, methods):
    """A warm and a cold session on one store; no prepared process is left after the test."""
    warm.shutdown()
    hot = Session(store=store_path, progress=False)
    cold = Session(store=store_path, progress=False, warm=False)
    yield hot, cold
    pids = [s["pid"] for s in warm.shared_pool().servers().values()]
    warm.shutdown()
    assert wait_gone(pids, timeout=15.0) == []


def probe(session, **bench):
    r = session.submit(session.make_spec("tiny-llama", "process-probe", bench=replace(NOTHING, **bench)), force=True)
    assert r.ok, (r.error, r.stderr_tail)
    return r


def server():
    return warm.shared_pool().servers()["torch"]


def test_a_warm_run_measures_what_a_cold_run_measures(sessions):
    hot, cold = sessions
    spec = hot.make_spec("tiny-llama", "rtn", {"bits": 4, "group_size": 32}, data=DATA, bench=LIGHT)
    c = cold.submit(spec, force=True)
    w = hot.submit(spec, force=True)
    assert c.ok and w.ok, (c.error, w.error)
    assert server()["served"] == 1 and server()["warmed_model"] == "tiny-llama"
    for name in ("perplexity", "kl_div", "top1_agreement", "weights_bytes", "next_token_accuracy"):
        assert w.metrics.get(name) == c.metrics.get(name), name
    assert w.metrics["perplexity"] is not None
    assert w.layers_quantized == c.layers_quantized > 0
    for name in ("forward_ms", "prefill_tok_s"):
        assert w.metrics.get(name) and c.metrics.get(name), name
    assert set(w.tables) == set(c.tables)


def test_the_forked_run_gets_its_own_threads_limits_seeds_and_temp_folder(sessions):
    hot, cold = sessions
    w_default, c_default = probe(hot), probe(cold)
    w1 = probe(hot, threads=1, memory_limit_mb=6000)
    c1 = probe(cold, threads=1, memory_limit_mb=6000)
    prepared = server()
    for w, c in ((w_default, c_default), (w1, c1)):
        assert w.metrics["ppid"] == prepared["pid"]  # forked from the prepared process
        assert c.metrics["ppid"] == os.getpid()  # started by this process
        for name in ("torch_threads", "omp_num_threads", "rlimit_as_mb", "torch_rand"):
            assert w.metrics[name] == c.metrics[name], name
        # its own session and process group, as cold
        assert w.metrics["sid"] == w.metrics["pgid"] == w.metrics["pid"]
        tmpdir = next(n for n in w.notes if n.startswith("TMPDIR="))
        assert "/wb-exec-" in tmpdir and tmpdir.endswith("/scratch")
        assert f"gettempdir={tmpdir.split('=', 1)[1]}" in w.notes
    assert w1.metrics["torch_threads"] == 1 and w1.metrics["omp_num_threads"] == 1
    assert w1.metrics["rlimit_as_mb"] == 6000
    assert w_default.metrics["torch_threads"] == c_default.metrics["torch_threads"] == prepared["default_threads"]
    # one intra-op pool thread at most with threads=1: main, the die-with-parent watcher
    assert w1.metrics["os_threads"] <= c1.metrics["os_threads"]
    # numpy's global generator is reseeded per run, as in a new interpreter
    assert w_default.metrics["numpy_rand"] != w1.metrics["numpy_rand"]
    # bitsandbytes, quanto, OpenVINO, ONNX Runtime are imported by the run that needs them, never prepared
    assert w_default.metrics["backends_imported"] == c_default.metrics["backends_imported"] == 0
    # the prepared process never started a thread pool of its own
    assert len(os.listdir(f"/proc/{prepared['pid']}/task")) <= 2


def test_a_segfault_costs_one_run_and_the_prepared_process_serves_the_next(sessions):
    hot, _cold = sessions
    before = probe(hot).metrics["ppid"]
    r = hot.submit(hot.make_spec("tiny-llama", "fault-torch", {"mode": "segfault"}, bench=NOTHING))
    assert r.status is RunStatus.CRASHED and "SIGSEGV" in r.error
    r = hot.submit(hot.make_spec("tiny-llama", "fault-torch", {"mode": "kill"}, bench=NOTHING))
    assert r.status is RunStatus.CRASHED and "SIGKILL" in r.error
    assert probe(hot).metrics["ppid"] == before == server()["pid"]
    assert server()["served"] == 4 and warm.shared_pool().cold_fallbacks == {}


def test_a_killed_prepared_process_is_replaced(sessions):
    hot, _cold = sessions
    old = probe(hot).metrics["ppid"]
    os.kill(old, signal.SIGKILL)
    assert wait_gone([old], timeout=15.0) == []
    found_dead = probe(hot)
    assert found_dead.metrics["ppid"] == os.getpid()  # the run that found it dead went cold
    assert warm.shared_pool().cold_fallbacks == {"torch": 1}, list(warm.shared_pool().events)
    nxt = probe(hot)
    assert nxt.metrics["ppid"] == server()["pid"] != old, list(warm.shared_pool().events)


def test_cancel_kills_the_forked_runs_group(sessions):
    hot, _cold = sessions
    probe(hot)  # the prepared process is ready
    spec = hot.make_spec("tiny-llama", "fault-torch", {"mode": "hang", "seconds": 120}, bench=NOTHING)
    hanging = threading.Event()
    out = {}

    def progress(stage, fraction, message):
        if "about to hang" in message:
            hanging.set()

    t = threading.Thread(target=lambda: out.update(r=hot.submit(spec, progress=progress)))
    t.start()
    assert hanging.wait(60)
    [(key, proc)] = hot.executor._procs.items()  # the key of the validated (normalized) spec
    pid = proc.pid
    assert isinstance(proc, warm.WarmProcess) and os.getpgid(pid) == pid and alive(pid)
    assert hot.executor.cancel(key)
    t.join(30)
    assert out["r"].status is RunStatus.CANCELLED
    assert wait_gone([pid], timeout=15.0) == []
    assert alive(server()["pid"]) and probe(hot).metrics["ppid"] == server()["pid"]


def test_a_killed_coordinator_leaves_no_prepared_process_and_no_run(tmp_path, store_path):
    folder = tmp_path / "coordinator-tmp"
    folder.mkdir()
    script = textwrap.dedent(f"""
        from workbench import registry
        from workbench.session import Session
        from workbench.testing import TorchFaultMethod
        registry.register(TorchFaultMethod)
        s = Session(store={str(store_path)!r}, progress=False)
        s.submit(s.make_spec("tiny-llama", "fault-torch", {{"mode": "hang", "seconds": 300}},
                             bench={{"latency": False, "accuracy": False, "save": False}}),
                 progress=lambda stage, f, m: print(m, flush=True))
    """)
    coordinator = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                                   env={**os.environ, "TMPDIR": str(folder)}, start_new_session=True)
    try:
        for line in coordinator.stdout:
            if "about to hang" in line:
                break
        # the prepared process and the run forked from it (same command line: the server's)
        pids = workers_under(folder)
        assert len(pids) == 2 and len(workers_under(folder, prepared=False)) == 1, pids
    finally:
        coordinator.kill()
        coordinator.wait()
    assert wait_gone(pids, timeout=15.0) == []
    assert workers_under(folder) == []


def test_peak_rss_of_a_warm_run_is_a_cold_runs(sessions):
    hot, cold = sessions
    spec = hot.make_spec("tiny-llama", "baseline", data=DATA, bench=LIGHT)
    c = cold.submit(spec, force=True)
    w = hot.submit(spec, force=True)
    assert c.ok and w.ok
    ratio = w.metrics["peak_rss_bytes"] / c.metrics["peak_rss_bytes"]
    # the run's own figure: not the prepared process's warm-up peak, and its libraries' pages counted
    assert 0.9 < ratio < 1.1, (w.metrics["peak_rss_bytes"], c.metrics["peak_rss_bytes"])


def test_prepare_starts_the_prepared_process_the_next_run_is_forked_from(sessions):
    hot, cold = sessions
    assert cold.prepare("tiny-llama", "process-probe") is None
    assert hot.prepare("tiny-llama", "process-probe") == "starting"
    pid = server()["pid"]
    assert probe(hot).metrics["ppid"] == pid  # the same environment as a run's: not replaced
    assert server()["served"] == 1 and server()["warmed_model"] == "tiny-llama"


@requires_openvino_env
def test_the_openvino_family_is_served_warm_and_measures_what_a_cold_run_measures(sessions):
    """The openvino environment imports scikit-learn through transformers (scipy's own OpenBLAS
    pool, pyarrow's jemalloc thread): its prepared process must still serve, and an ov-weight
    run forked from it must give a cold run's numbers."""
    hot, cold = sessions
    spec = hot.make_spec("tiny-llama", "ov-weight", {"bits": 8}, data=DATA, bench=replace(NOTHING, accuracy=True))
    warm_run = hot.submit(spec, force=True)
    assert warm_run.ok, (warm_run.error, warm_run.stderr_tail)
    ov = warm.shared_pool().servers()["openvino"]
    assert ov["state"] == "ready" and ov["served"] == 1, ov
    # OpenVINO, NNCF and optimum-intel imported before the fork. Whether OpenVINO's telemetry
    # starts its sender thread depends on the machine (its consent file, CI variables): when it
    # did, it was stopped ("ready" means no other thread was left running at fork).
    assert ov["imported"] == ["openvino", "nncf", "optimum.intel.openvino"], ov
    assert all(name.startswith("ThreadPoolExecutor") for name in ov["threads_stopped"]), ov
    assert warm.shared_pool().cold_fallbacks.get("openvino", 0) == 0
    cold_run = cold.submit(spec, force=True)
    assert cold_run.ok, cold_run.error
    assert warm_run.metrics["perplexity"] == pytest.approx(cold_run.metrics["perplexity"], rel=1e-6)
    assert warm_run.layers_quantized == cold_run.layers_quantized > 0
