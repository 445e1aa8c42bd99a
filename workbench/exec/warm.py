"""Warm starts: a prepared process per backend environment, from which each run is forked.

Kernel side, torch-free (standard library only). A cold run starts `python -m workbench.worker`
in the method's environment and pays the imports of torch, transformers and the backend and the
first model load before it measures anything (4 to 10 s on two cores). With warm starts the
executor asks the environment's prepared process (`workbench.prepared`, a fork server) to fork
the run instead: the child is still a fresh process of its own, in its own session and process
group, running exactly what the cold command runs, so a segfault, a kill or an out-of-memory
costs that one run and its peak RSS is its own.

`WarmPool.spawn` returns a `WarmProcess`, shaped like `subprocess.Popen` (pid, stdout, poll,
wait(timeout), returncode, kill), or None, and the caller then runs the worker cold:

- no prepared process for the family yet, or one that retired when idle: one is started, with
  the run's model for its warm-up, and the run waits for it (about what a cold start costs);
- a prepared process that died (killed, crashed): this run goes cold and a new one is started
  for the next run;
- one that could not be prepared (its reason is kept, `WarmPool.servers()`): cold, and no new
  try for `retry_after_s`.

One pool per coordinator process (`shared_pool()`), shared by every executor in it: a notebook
with two `Session`s keeps one prepared process per environment. A prepared process dies with its
coordinator, retires after `idle_timeout_s` without a run (giving its memory back), and is
replaced when the environment a worker would get changes (a different `WORKBENCH_HOME`, ...) or
when the code it imported changed on disk (an edited workbench module, a package installed in the
environment): a forked run must not mix the modules its parent holds with newer ones.
"""
from __future__ import annotations

import atexit
import hashlib
import io
import json
import locale
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..envs import manager

READY_TIMEOUT_S = 300.0
IDLE_TIMEOUT_S = 1800.0
RETRY_AFTER_S = 300.0
# Variables that differ per run and do not decide what a prepared process may serve.
_PER_RUN = ("TMPDIR",)
# Unix socket paths are limited to 107 bytes.
_MAX_SOCKET_PATH = 100


class WarmProcess:
    """A run forked from a prepared process, with the part of `subprocess.Popen` the executor
    uses: `pid` (also its process group: the run is a session leader), `stdout` (text, its stdout
    and stderr together), `poll()`, `wait(timeout)`, `returncode` (a signal as minus its number),
    `send_signal`, `kill`, `terminate`.

    `lost` is set when the prepared process died before the run ended: the run was killed with
    it (returncode -SIGKILL) and `lost` says so.
    """

    def __init__(self, conn: socket.socket, pid: int, stdout_fd: int, family: str, server_pid: int,
                 on_end: Callable[[], None] | None = None):
        self.args = [f"<forked from the prepared {family} process {server_pid}>"]
        self._on_end = on_end
        self.pid = pid
        self.family = family
        self.server_pid = server_pid
        encoding = locale.getpreferredencoding(False)
        self.stdout = _Output(open(stdout_fd, "r", encoding=encoding, errors="replace"), self)  # noqa: SIM115
        self.returncode: int | None = None
        self.lost: str | None = None
        self._conn = conn
        self._done = threading.Event()
        # Before the run can exit and its pid be reused: kill() and the loss path must only ever hit it.
        self._pidfd = _pidfd(pid)
        threading.Thread(target=self._watch, name=f"warm-run-{pid}", daemon=True).start()

    def _watch(self) -> None:
        reader = self._conn.makefile("rb")
        status = None
        try:
            for line in reader:
                message = json.loads(line)
                if "status" in message:
                    status = int(message["status"])
                    break
        except (OSError, ValueError):
            pass
        finally:
            reader.close()
            self._conn.close()
        if status is None:
            # The prepared process died (or hung up) first: the run cannot report to anyone.
            self.lost = (f"the prepared {self.family} process (pid {self.server_pid}) that forked this run "
                         "died before it ended; the run was killed with it")
            self._kill_group()
            self._await_exit()
            status = -signal.SIGKILL
        self.returncode = status
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self._done.set()
        if self._on_end is not None:
            self._on_end()

    def _kill_group(self) -> None:
        for kill in (os.killpg, os.kill):
            try:
                kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _await_exit(self, timeout: float = 30.0) -> None:
        if self._pidfd is None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and Path(f"/proc/{self.pid}").exists():
                time.sleep(0.05)
            return
        import select

        select.select([self._pidfd], [], [], timeout)

    def poll(self) -> int | None:
        """The exit code if the run has ended (reaped by the prepared process), else None."""
        return self.returncode if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the run to end; `subprocess.TimeoutExpired` after `timeout` seconds."""
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Signal the run's process (not its group; `os.killpg(pid, sig)` reaches the group)."""
        if self._done.is_set():
            return
        try:
            pidfd = self._pidfd
            if pidfd is not None:  # never another process that reused the pid
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except (ProcessLookupError, OSError):
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class _Output:
    """The run's output as lines (what `Popen(text=True).stdout` gives), and after its end, when
    the prepared process died under it, one line saying so: it lands in the run's output tail."""

    def __init__(self, stream: io.TextIOWrapper, proc: WarmProcess):
        self._stream = stream
        self._proc = proc

    def __iter__(self) -> Iterator[str]:
        # Not `yield from`: a caller that stops reading would close the stream with the generator.
        for line in self._stream:
            yield line
        # The status arrives with or just after the end of the output; wait for it a little.
        self._proc._done.wait(10)
        if self._proc.lost:
            yield f"[workbench] {self._proc.lost}\n"

    def readline(self) -> str:
        return self._stream.readline()

    def read(self) -> str:
        return self._stream.read()

    def fileno(self) -> int:
        return self._stream.fileno()

    def close(self) -> None:
        self._stream.close()

    @property
    def closed(self) -> bool:
        return self._stream.closed


class _Gone(Exception):
    """The prepared process cannot be reached (it died)."""


def _warm_imports(family: str) -> tuple[str, ...]:
    """The backend modules the family's prepared process imports (`EnvFamily.warm_imports`)."""
    known = manager.FAMILIES.get(family)
    return known.warm_imports if known is not None else ()


class _Server:
    """The coordinator's record of one prepared process."""

    def __init__(self, family: str, python: str, key: str, folder: Path, socket_dir: Path, env: Mapping[str, str],
                 model: Mapping[str, Any] | None, idle_timeout_s: float):
        self.family, self.python, self.key = family, python, key
        self.socket = str(socket_dir / f"{family}.sock")
        self.log = folder / f"{family}.log"
        self.state = "starting"
        self.reason: str | None = None
        self.facts: dict[str, Any] = {}
        self.sources: dict[str, int] = {}
        self.served = 0
        self.inflight = 0
        self.retired = False
        self._count = threading.Lock()
        self.started_at = time.time()
        self.ready = threading.Event()
        scratch = folder / f"{family}-tmp"
        scratch.mkdir(exist_ok=True)
        server_env = {k: v for k, v in env.items() if k not in _PER_RUN}
        server_env["TMPDIR"] = str(scratch)
        server_env["PYTHONUNBUFFERED"] = "1"
        read_fd, write_fd = os.pipe()
        try:
            with open(self.log, "ab") as log:
                self.popen = subprocess.Popen(
                    # The folder is in the command line (which its forked runs share) so that the
                    # processes of a coordinator can be found by its TMPDIR (testing.workers_under).
                    [python, "-m", "workbench.prepared", "--serve", str(folder), self.socket, str(write_fd),
                     f"{idle_timeout_s:g}", json.dumps(dict(model)) if model else "",
                     ",".join(_warm_imports(family))],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=server_env,
                    pass_fds=(write_fd,), start_new_session=True,
                )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        threading.Thread(target=self._await_ready, args=(read_fd,), name=f"warm-{family}-ready", daemon=True).start()

    def _await_ready(self, read_fd: int) -> None:
        with open(read_fd, "rb") as f:
            line = f.readline()
        try:
            message = json.loads(line) if line else {"ok": False, "error": self._exit_reason()}
        except ValueError:
            message = {"ok": False, "error": f"unreadable readiness line {line[:200]!r}"}
        if message.get("ok"):
            self.sources = message.get("sources") or {}
            self.facts = {k: v for k, v in message.items() if k not in ("ok", "sources")}
            self.state = "ready"
        else:
            self.state = "failed"
            self.reason = str(message.get("error")) + self._log_tail()
            self.stop(wait=False)
        self.ready.set()

    def _exit_reason(self) -> str:
        try:
            code = self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            return "it closed its readiness pipe without a word"
        return f"it exited with code {code} before it was ready"

    def _log_tail(self, lines: int = 15) -> str:
        try:
            tail = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return ("\n" + "\n".join(tail)) if tail else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stale(self) -> bool:
        """Whether the code it imported changed on disk since (a run forked from it would mix the
        old modules it holds with new ones it imports itself)."""
        for path, mtime in self.sources.items():
            try:
                if os.stat(path).st_mtime_ns != mtime:
                    return True
            except OSError:
                return True
        return False

    def fork(self, argv: list[str], env: Mapping[str, str]) -> WarmProcess:
        read_fd, write_fd = os.pipe()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.settimeout(30)
            try:
                conn.connect(self.socket)
            except OSError as e:
                raise _Gone(f"cannot connect: {e}") from e
            request = {"argv": list(argv), "env": dict(env), "cwd": os.getcwd()}
            try:
                socket.send_fds(conn, [(json.dumps(request) + "\n").encode()], [write_fd])
                os.close(write_fd)
                write_fd = -1
                reply = _read_line(conn)
            except ConnectionError as e:  # it died under the request (a live one always answers)
                raise _Gone(f"the connection broke: {e}") from e
            if reply is None:
                raise _Gone("it hung up without forking the run")
            message = json.loads(reply)
            if "pid" not in message:
                raise RuntimeError(f"the prepared process refused the run: {message.get('error')}")
            conn.settimeout(None)
            with self._count:
                self.served += 1
                self.inflight += 1
            return WarmProcess(conn, int(message["pid"]), read_fd, self.family, self.popen.pid, self._run_ended)
        except BaseException:
            conn.close()
            os.close(read_fd)
            raise
        finally:
            if write_fd >= 0:
                os.close(write_fd)

    def _run_ended(self) -> None:
        with self._count:
            self.inflight -= 1
            last = self.retired and self.inflight == 0
        if last:
            self.stop(wait=False)

    def retire(self) -> None:
        """Serve no new run; stop once the runs it forked have ended (now if none is running)."""
        with self._count:
            self.retired = True
            idle = self.inflight == 0
        if idle:
            self.stop(wait=False)

    def stop(self, wait: bool = True) -> None:
        """Kill the prepared process; runs still running die with it (they watch their parent).
        `wait=False`: reap it in the background."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not wait:
            threading.Thread(target=self.popen.wait, name=f"warm-{self.family}-reap", daemon=True).start()
            return
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def describe(self) -> dict[str, Any]:
        return {"state": self.state if self.state != "ready" or self.alive() else "gone",
                "pid": self.popen.pid, "python": self.python, "served": self.served,
                "started_at": self.started_at, "reason": self.reason, **self.facts}


def _read_line(conn: socket.socket) -> bytes | None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            return None
        data += chunk
    return data


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def env_key(python: str, env: Mapping[str, str]) -> str:
    """What a prepared process was started for: the interpreter and the environment a worker gets
    (less what differs per run); a run whose key differs needs a new prepared process."""
    items = sorted((k, v) for k, v in env.items() if k not in _PER_RUN)
    return hashlib.sha256(json.dumps([python, items]).encode()).hexdigest()[:16]


class WarmPool:
    """Prepared processes of one coordinator process, one per environment family."""

    def __init__(self, ready_timeout_s: float = READY_TIMEOUT_S, idle_timeout_s: float = IDLE_TIMEOUT_S,
                 retry_after_s: float = RETRY_AFTER_S):
        self.ready_timeout_s = ready_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.retry_after_s = retry_after_s
        self.cold_fallbacks: dict[str, int] = {}
        # What happened, newest last: (time, family, event, detail); why a run went cold is here.
        self.events: deque[tuple[float, str, str, str]] = deque(maxlen=100)
        self._servers: dict[str, _Server] = {}
        self._lock = threading.Lock()
        self._folder: Path | None = None
        self._socket_dir: Path | None = None
        self._owner = os.getpid()

    def folder(self) -> Path:
        """The private folder (0700, in the temp folder) of the pool's logs and sockets, made on first use."""
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="wb-warm-"))
            self._socket_dir = self._folder
            if len(str(self._folder / "llmcompressor.sock")) > _MAX_SOCKET_PATH:
                # A Unix socket's path has at most 107 bytes: a private folder of its own in /tmp.
                self._socket_dir = Path(tempfile.mkdtemp(prefix="wb-warm-", dir="/tmp"))
        return self._folder

    def prepare(self, family: str, python: str, env: Mapping[str, str],
                model: Mapping[str, Any] | None = None) -> str:
        """Make sure the family has a prepared process (starting one in the background, warmed
        with `model`: a ModelSpec as a dict); returns its state."""
        return self._current(family, python, env, model, replace_dead=True)[0].state

    def spawn(self, family: str, python: str, argv: list[str], env: Mapping[str, str],
              model: Mapping[str, Any] | None = None, abort: Callable[[], bool] | None = None) -> WarmProcess | None:
        """Fork `python -m workbench.worker ARGV` from the family's prepared process with the
        environment `env`; None when the caller must start it cold (see the module docstring).
        `abort()` returning True stops waiting for a prepared process that is starting (None)."""
        server, fresh = self._current(family, python, env, model, replace_dead=False)
        if server.state == "starting" or fresh:
            deadline = time.monotonic() + self.ready_timeout_s
            while not server.ready.wait(0.1):
                if abort is not None and abort():
                    return self._cold(family, "cancelled while its prepared process was starting")
                if time.monotonic() > deadline:
                    return self._cold(family, f"its prepared process was not ready within {self.ready_timeout_s:g} s")
        if server.state == "ready" and not server.alive():
            # Found dead: this run goes cold, the next finds a new one.
            self._replace(server, env, model, f"found dead (exit {server.popen.returncode})")
            return self._cold(family, "its prepared process was found dead")
        if server.state != "ready":
            return self._cold(family, f"its prepared process could not be prepared: {server.reason}")
        try:
            proc = server.fork(argv, env)
        except _Gone as e:
            self._replace(server, env, model, f"gone: {e}")
            return self._cold(family, f"its prepared process could not be reached: {e}")
        except (OSError, RuntimeError, ValueError) as e:
            if not server.alive():
                self._replace(server, env, model, f"died while forking: {e}")
            return self._cold(family, f"forking failed: {type(e).__name__}: {e}")
        self.events.append((time.time(), family, "fork", f"run {proc.pid} from {server.popen.pid}"))
        return proc

    def servers(self) -> dict[str, dict[str, Any]]:
        """State of each family's prepared process: state (starting, ready, failed, gone), pid,
        runs served, the time it took to prepare, the model it warmed up with, why it failed."""
        with self._lock:
            return {family: s.describe() for family, s in self._servers.items()}

    def close(self) -> None:
        """Stop every prepared process (their running runs die with them) and remove the folder."""
        with self._lock:
            servers = list(self._servers.values())
            self._servers.clear()
        for server in servers:
            server.stop()
        if self._folder is not None and os.getpid() == self._owner:
            for folder in {self._folder, self._socket_dir}:
                shutil.rmtree(folder, ignore_errors=True)
            self._folder = self._socket_dir = None

    # --- internals ---------------------------------------------------------------------------

    def _current(self, family: str, python: str, env: Mapping[str, str], model: Mapping[str, Any] | None,
                 replace_dead: bool) -> tuple[_Server, bool]:
        key = env_key(python, env)
        with self._lock:
            server = self._servers.get(family)
            if server is not None and server.key == key:
                if server.state == "failed" and time.time() - server.started_at < self.retry_after_s:
                    return server, False
                retired = server.state == "ready" and (server.popen.poll() == 0 or server.stale())
                dead = server.state == "ready" and not retired and not server.alive()
                if server.state in ("starting", "ready") and not retired and not (dead and replace_dead):
                    return server, False
            if server is not None:
                server.retire()  # a run it forked may still be running (another thread's)
                why = ("its environment changed" if server.key != key else "retired when idle"
                       if server.popen.poll() == 0 else "its code changed on disk" if server.state == "ready"
                       else f"{server.state}, retrying")
                self.events.append((time.time(), family, "retire", f"{server.popen.pid}: {why}"))
            server = _Server(family, python, key, self.folder(), self._socket_dir, env, model, self.idle_timeout_s)
            self._servers[family] = server
            self.events.append((time.time(), family, "start", str(server.popen.pid)))
            return server, True

    def _replace(self, server: _Server, env: Mapping[str, str], model: Mapping[str, Any] | None, why: str) -> None:
        with self._lock:
            if self._servers.get(server.family) is not server:
                return
            server.retire()
            self.events.append((time.time(), server.family, "retire", f"{server.popen.pid}: {why}"))
            new = _Server(server.family, server.python, server.key, self.folder(), self._socket_dir, env, model,
                          self.idle_timeout_s)
            self._servers[server.family] = new
            self.events.append((time.time(), server.family, "start", str(new.popen.pid)))

    def _cold(self, family: str, why: str) -> None:
        self.cold_fallbacks[family] = self.cold_fallbacks.get(family, 0) + 1
        self.events.append((time.time(), family, "cold", why))
        return None


_pool: WarmPool | None = None
_pool_lock = threading.Lock()


def shared_pool() -> WarmPool:
    """This coordinator process's pool (a new one in a process forked from the one that made it)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool._owner != os.getpid():
            _pool = WarmPool()
        return _pool


def shutdown() -> None:
    """Stop this process's prepared processes (also done at exit; they die with it anyway)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None and pool._owner == os.getpid():
        pool.close()


atexit.register(shutdown)


def warm_eligible(env: str, device: str) -> bool:
    """Whether a run of environment family `env` on `device` may be forked from a prepared
    process: the backend families (the kernel family's runs are testing methods in the light
    kernel interpreter, which starts in a fraction of a second), on the CPU (a child forked
    from a process that initialized CUDA cannot use it, and the start is not what a CUDA run
    waits for)."""
    return env != "kernel" and device.split(":", 1)[0] == "cpu"


__all__ = ["WarmPool", "WarmProcess", "env_key", "shared_pool", "shutdown", "warm_eligible"]
