"""Warm starts, kernel side: real prepared processes in this (torch-free) interpreter fork real
worker runs of the fault-injection method, and the pool and the executor's choices are checked.

The torch environment's prepared processes (threads, seeds, peak RSS, the same numbers as a
cold run) are tested in tests/integration/test_warm.py."""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from workbench import cli
from workbench.exec import warm
from workbench.exec.subprocess import SubprocessExecutor
from workbench.session import Session
from workbench.spec import BenchSpec, ModelSpec, RunSpec
from workbench.testing import alive, wait_gone

NOTHING = BenchSpec(latency=False, accuracy=False, save=False)
FAULT = "workbench.testing:FaultMethod"


@pytest.fixture
def pool():
    p = warm.WarmPool(ready_timeout_s=60)
    yield p
    p.close()


class Runs:
    """Request files for fault runs, and the environment a worker gets."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.n = 0
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def argv(self, mode: str, **params) -> list[str]:
        self.n += 1
        spec = RunSpec(ModelSpec("tiny-llama"), "fault", {"mode": mode, **params}, bench=NOTHING)
        req = self.folder / f"request-{self.n}.json"
        req.write_text(json.dumps({"spec": spec.to_dict(), "target": FAULT, "analysis": None}))
        return [str(req), str(self.folder / f"result-{self.n}.json")]

    def spawn(self, pool, mode: str, **params):
        scratch = self.folder / f"scratch-{self.n + 1}"
        scratch.mkdir()
        self.last = self.argv(mode, **params)
        return pool.spawn("kernel", sys.executable, self.last, {**self.env, "TMPDIR": str(scratch)})


@pytest.fixture
def runs(tmp_path):
    return Runs(tmp_path)


def test_a_forked_run_streams_its_output_runs_the_worker_and_reports_its_exit(pool, runs):
    proc = runs.spawn(pool, "raise")
    assert proc is not None
    server = pool.servers()["kernel"]
    assert server["state"] == "ready" and proc.pid != server["pid"]
    lines = list(proc.stdout)
    assert proc.wait(timeout=30) == 0  # the worker wrote a result (a crashed one): exit 0, as cold
    assert any(line.startswith("@@wb ") and "about to raise" in line for line in lines)
    result = json.loads(Path(runs.last[1]).read_text())
    assert result["status"] == "crashed" and "raised on purpose" in result["error"]
    assert proc.poll() == 0 and proc.returncode == 0


def test_each_run_is_a_session_of_its_own_with_its_own_environment(pool, runs):
    proc = runs.spawn(pool, "hang", seconds=30)
    try:
        for line in proc.stdout:
            if "about to hang" in line:
                break
        assert os.getsid(proc.pid) == proc.pid and os.getpgid(proc.pid) == proc.pid
        # (its TMPDIR is checked from inside, tests/integration/test_warm.py: /proc/PID/environ shows only
        # the environment the prepared process was started with)
        assert os.readlink(f"/proc/{proc.pid}/cwd") == os.getcwd()
        fds = os.listdir(f"/proc/{proc.pid}/fd")
        # stdin, the output pipe as stdout and stderr, the coordinator's pidfd and its own watcher's: no socket
        assert not any("socket" in os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in fds)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL


def test_a_segfault_costs_one_run_and_the_prepared_process_serves_the_next(pool, runs):
    proc = runs.spawn(pool, "segfault")
    list(proc.stdout)
    assert proc.wait(timeout=30) == -signal.SIGSEGV
    server_pid = pool.servers()["kernel"]["pid"]
    nxt = runs.spawn(pool, "exit")
    list(nxt.stdout)
    assert nxt.wait(timeout=30) == 7
    assert pool.servers()["kernel"]["pid"] == server_pid and pool.servers()["kernel"]["served"] == 2
    assert pool.cold_fallbacks == {}


def test_a_dead_prepared_process_sends_its_run_cold_and_is_replaced(pool, runs):
    first = runs.spawn(pool, "exit")
    first.wait(timeout=30)
    old = pool.servers()["kernel"]["pid"]
    os.kill(old, signal.SIGKILL)
    assert wait_gone([old]) == []
    assert runs.spawn(pool, "exit") is None  # this run goes cold
    assert pool.cold_fallbacks == {"kernel": 1}
    again = runs.spawn(pool, "exit")  # the new one was started for the next run
    assert again is not None
    again.wait(timeout=30)
    assert pool.servers()["kernel"]["pid"] != old and pool.servers()["kernel"]["state"] == "ready"


def test_a_run_dies_with_its_prepared_process_and_says_so(pool, runs):
    proc = runs.spawn(pool, "hang", seconds=60)
    for line in proc.stdout:
        if "about to hang" in line:
            break
    os.kill(pool.servers()["kernel"]["pid"], signal.SIGKILL)
    assert proc.wait(timeout=15) == -signal.SIGKILL
    assert "died before it ended" in proc.lost
    assert any("died before it ended" in line for line in proc.stdout)
    from workbench.exec.subprocess import _classify

    # The run's error names the prepared process, not the out-of-memory killer.
    assert _classify(proc.returncode, "", proc.lost)[1] == proc.lost
    assert "out-of-memory" in _classify(proc.returncode, "")[1]
    assert wait_gone([proc.pid]) == []


def test_a_client_that_hangs_up_takes_its_run_with_it(pool, runs):
    proc = runs.spawn(pool, "hang", seconds=60)
    for line in proc.stdout:
        if "about to hang" in line:
            break
    proc._conn.shutdown(socket.SHUT_RDWR)
    assert wait_gone([proc.pid]) == []


def test_the_socket_is_private_and_only_the_worker_command_is_served(pool, runs):
    runs.spawn(pool, "exit").wait(timeout=30)
    folder = pool.folder()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    sock = Path(pool._servers["kernel"].socket)
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    r, w = os.pipe()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(sock))
        request = {"argv": ["--prepare", "smollm2-135m"], "env": {}, "cwd": "/"}
        socket.send_fds(conn, [(json.dumps(request) + "\n").encode()], [w])
        reply = conn.makefile().readline()
    os.close(r)
    os.close(w)
    assert "REQUEST and RESULT paths only" in json.loads(reply)["error"]


def test_a_killed_coordinator_leaves_no_prepared_process_and_no_run(tmp_path):
    runs = Runs(tmp_path)
    argv = runs.argv("hang", seconds=120)
    script = textwrap.dedent(f"""
        import json, os, sys
        from workbench.exec import warm
        pool = warm.WarmPool()
        proc = pool.spawn("kernel", sys.executable, {argv!r}, dict(os.environ))
        for line in proc.stdout:
            if "about to hang" in line:
                print(json.dumps({{"server": pool.servers()["kernel"]["pid"], "run": proc.pid}}), flush=True)
        proc.wait()
    """)
    coordinator = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                                   start_new_session=True)
    try:
        pids = json.loads(coordinator.stdout.readline())
        assert alive(pids["server"]) and alive(pids["run"])
    finally:
        coordinator.kill()
        coordinator.wait()
    assert wait_gone([pids["server"], pids["run"]]) == []


def test_the_environment_key_ignores_the_per_run_tmpdir_only():
    base = {"PATH": "/bin", "WORKBENCH_HOME": "/a"}
    assert warm.env_key("py", {**base, "TMPDIR": "/x"}) == warm.env_key("py", {**base, "TMPDIR": "/y"})
    assert warm.env_key("py", base) != warm.env_key("py", {**base, "WORKBENCH_HOME": "/b"})
    assert warm.env_key("py", base) != warm.env_key("other-py", base)


def test_which_runs_start_warm():
    assert warm.warm_eligible("torch", "cpu") and warm.warm_eligible("openvino", "cpu")
    assert not warm.warm_eligible("torch", "cuda:0")  # CUDA and fork do not mix
    assert not warm.warm_eligible("kernel", "cpu")


def test_sessions_start_warm_unless_told_cold(tmp_path):
    assert Session(store=tmp_path / "a.sqlite").executor.warm is True
    cold = Session(store=tmp_path / "b.sqlite", warm=False)
    assert cold.executor.warm is False
    assert cold.prepare("tiny-llama", "rtn") is None  # nothing to prepare for a cold session
    explicit = SubprocessExecutor()
    assert Session(store=tmp_path / "c.sqlite", executor=explicit, warm=True).executor.warm is False


def test_a_cancel_while_the_prepared_process_starts_kills_the_run_when_it_exists(tmp_path, monkeypatch):
    executor = SubprocessExecutor(warm=True)
    spec = RunSpec(ModelSpec("tiny-llama"), "fault", {"mode": "hang"}, bench=NOTHING)
    seen = {}

    class SlowPool:
        def spawn(self, family, python, argv, env, model=None, abort=None):
            seen["cancel"] = executor.cancel(spec.key)  # arrives while the run waits for its prepared process
            seen["aborted"] = abort()
            return None

    monkeypatch.setattr(warm, "shared_pool", lambda: SlowPool())
    req = tmp_path / "r.json"
    req.write_text(json.dumps({"spec": spec.to_dict(), "target": FAULT, "analysis": None}))
    proc = executor._start(sys.executable, "torch", spec, [str(req), str(tmp_path / "o.json")], dict(os.environ))
    assert seen == {"cancel": True, "aborted": True}
    assert proc.wait(timeout=10) == -signal.SIGKILL


@pytest.mark.parametrize("command", ["run", "compare", "sweep", "recommend"])
def test_cold_is_an_option_of_every_command_that_runs(command):
    parser = cli.build_parser()
    extra = {"run": ["--method", "rtn", "--model", "tiny-llama"], "sweep": ["file.toml"]}.get(command, [])
    args = parser.parse_args([command, *extra, "--cold"])
    assert args.cold is True
    assert parser.parse_args([command, *extra]).cold is False


def test_the_cli_session_is_warm_unless_cold(tmp_path):
    parser = cli.build_parser()
    args = parser.parse_args(["run", "--method", "rtn", "--model", "tiny-llama", "--store", str(tmp_path / "s.sqlite")])
    assert cli._session(args).executor.warm is True
    args = parser.parse_args(["run", "--method", "rtn", "--model", "tiny-llama", "--cold",
                              "--store", str(tmp_path / "s.sqlite")])
    assert cli._session(args).executor.warm is False


@pytest.mark.parametrize("executor,says", [("dask", "Dask workers always start the worker cold"),
                                           ("inline", "runs in this process")])
def test_cold_with_another_executor_says_what_it_means_there(tmp_path, monkeypatch, capsys, executor, says):
    import workbench.exec as exec_pkg

    made = {}

    def fake_get_executor(name, scheduler=None, warm=False):
        made.update(name=name, warm=warm)
        return SubprocessExecutor()

    monkeypatch.setattr(exec_pkg, "get_executor", fake_get_executor)
    args = cli.build_parser().parse_args(["sweep", "f.toml", "--executor", executor, "--cold",
                                          "--store", str(tmp_path / "s.sqlite")])
    cli._session(args)
    assert says in capsys.readouterr().err
    assert made == {"name": executor, "warm": False}


def test_a_long_temp_folder_still_names_the_processes_of_its_coordinator(tmp_path, monkeypatch):
    from workbench.testing import workers_under

    long = tmp_path / ("t" * 90)
    long.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(long))
    pool = warm.WarmPool()
    try:
        runs = Runs(tmp_path)
        proc = runs.spawn(pool, "hang", seconds=30)
        assert proc is not None  # the socket went to a short private folder in /tmp
        assert len(pool._servers["kernel"].socket) <= 107 and pool.folder().parent == long
        for line in proc.stdout:
            if "about to hang" in line:
                break
        assert sorted(workers_under(long)) == sorted([pool.servers()["kernel"]["pid"], proc.pid])
        assert workers_under(long, prepared=False) == [proc.pid]
        folders = [pool.folder(), Path(pool._servers["kernel"].socket).parent]
    finally:
        pool.close()
    assert wait_gone([proc.pid]) == []
    assert not any(f.exists() for f in folders)


def test_a_prepared_process_whose_code_changed_on_disk_is_replaced(pool, runs):
    runs.spawn(pool, "exit").wait(timeout=30)
    server = pool._servers["kernel"]
    old = server.popen.pid
    module = next(p for p in server.sources if p.endswith(os.path.join("workbench", "prepared.py")))
    st = os.stat(module)
    try:
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # as an edit would
        proc = runs.spawn(pool, "exit")  # waits for a new one: the old one holds the old prepared.py
        assert proc is not None and proc.wait(timeout=30) == 7
        assert pool.servers()["kernel"]["pid"] != old and pool.cold_fallbacks == {}
    finally:
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert wait_gone([old]) == []


def test_a_replaced_prepared_process_lets_its_running_runs_finish(pool, runs):
    hanging = runs.spawn(pool, "hang", seconds=60)
    for line in hanging.stdout:
        if "about to hang" in line:
            break
    old = pool.servers()["kernel"]["pid"]
    runs.env = {**runs.env, "WORKBENCH_REPLACED": "1"}  # another environment: it needs a new prepared process
    other = runs.spawn(pool, "exit")
    assert other.wait(timeout=30) == 7 and pool.servers()["kernel"]["pid"] != old
    assert alive(old) and alive(hanging.pid)  # not killed under the run it forked
    os.killpg(hanging.pid, signal.SIGKILL)
    assert hanging.wait(timeout=10) == -signal.SIGKILL
    assert wait_gone([old]) == []  # retired once its last run ended


def test_a_prepared_process_that_breaks_the_connection_is_replaced(pool, runs, tmp_path):
    runs.spawn(pool, "exit").wait(timeout=30)
    server = pool._servers["kernel"]
    old = server.popen.pid
    # What a prepared process dying under a request looks like: accepted, then closed unanswered.
    fake = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fake.bind(str(tmp_path / "fake.sock"))
    fake.listen(1)
    server.socket = str(tmp_path / "fake.sock")

    def hang_up():
        conn, _ = fake.accept()
        conn.close()

    import threading

    threading.Thread(target=hang_up, daemon=True).start()
    assert runs.spawn(pool, "exit") is None  # cold
    assert "could not be reached" in pool.events[-1][3]
    assert wait_gone([old]) == []  # retired: it had no run left
    fake.close()
    again = runs.spawn(pool, "exit")
    assert again is not None and again.wait(timeout=30) == 7 and pool.servers()["kernel"]["pid"] != old


def test_executor_threads_an_import_started_are_stopped_and_later_submissions_refused():
    # OpenVINO's telemetry sender starts a ThreadPoolExecutor worker at import: the prepared
    # process shuts such executors down before it forks runs (a thread alive at fork is a lock
    # the child may never get); the sender catches the refusal of its later submissions.
    from concurrent.futures import ThreadPoolExecutor

    from workbench import prepared

    executor = ThreadPoolExecutor(thread_name_prefix="import-started")
    assert executor.submit(lambda: 41 + 1).result(timeout=10) == 42
    other = threading.Thread(target=time.sleep, args=(0.01,), name="not-an-executor")
    other.start()
    stopped = prepared._stop_executor_threads(timeout_s=10)
    other.join()
    assert stopped and all(name.startswith("import-started") for name in stopped)
    assert not any(t.name.startswith("import-started") for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="shutdown"):
        executor.submit(lambda: None)


def test_the_openvino_family_prepares_its_backend_imports_and_the_server_is_told():
    from workbench.envs import manager

    assert manager.FAMILIES["openvino"].warm_imports == ("openvino", "nncf", "optimum.intel.openvino")
    # Families whose backends hold global state are imported by each run (the module docstring).
    assert manager.FAMILIES["torch"].warm_imports == ()
    assert warm._warm_imports("openvino") == ("openvino", "nncf", "optimum.intel.openvino")
    assert warm._warm_imports("kernel") == ()
