"""The prepared process: a fork server in a backend environment, from which each run is forked.

    python -m workbench.prepared --serve FOLDER SOCKET READY_FD IDLE_S [MODEL_JSON [MODULES]]

Worker side (it imports torch). The kernel side (`workbench.exec.warm`) starts one per backend
environment family, with the family's interpreter and the environment a cold worker would get.
It imports what every worker imports (torch, transformers, the workbench's worker modules), loads
the run's model once and drops it, then listens on a Unix socket in a private (0700) folder.

Why loading the model once pays: transformers imports most of what a load needs only at the
first load (its quantizer integrations, which pull torchao in; about 1,750 modules and 6 s on two
cores), and the weights land in the page cache. The model itself is not kept: a run forked
from a process holding 540 MB of fp32 weights would count them in its peak RSS whether or not it
ever used them (an OpenVINO run, a bf16 load).

Why a fork server rather than a pool of pre-started workers: a pre-started worker is one
process that has to be spent on one run and replaced, and whatever it prepared (the imports, the
first load) is paid again for each; a fork server pays it once and every run is still a fresh
process of its own: a segfault, a kill or an out-of-memory costs that run, and its peak RSS is its
own (its high-water mark starts at what it inherited, as a cold worker's starts at what its
imports made resident).

Each request (one connection, one JSON line with the stdout/stderr pipe's write end passed as
SCM_RIGHTS) forks one run. The child makes itself a session and process group (`os.setsid`,
before the prepared process reports its pid, so the executor's `killpg` always reaches it),
takes the pipe as fds 1 and 2 and /dev/null as 0, the request's environment and working
directory, and runs `workbench.worker.main([REQUEST, RESULT])`: exactly what
`python -m workbench.worker REQUEST RESULT` runs. The prepared process answers
`{"pid": N}`, reaps the child and answers `{"status": CODE}` (a signal as minus its number, as
`subprocess.Popen.returncode`). A connection closed before its run ended kills the run's group:
nobody waits for that result any more.

What does not leak from the prepared process into a run:

- threads: it sets torch to one thread before anything runs, so no parallel region ever starts
  OpenMP's pool (GNU libgomp cannot be used in a child forked after its pool started) and MKL
  stays single; before listening it checks that no thread runs but its own two and numpy's
  OpenBLAS pool (which OpenBLAS itself stops before each fork), and refuses to serve otherwise.
  The child sets torch's thread count back to what a cold process gets (the count the prepared
  process found before lowering it), or to the spec's `threads` through the worker's own
  `_init_torch`; `OMP_NUM_THREADS` and the memory limit (RLIMIT_AS) are set by the worker's
  `_setup_process` in the child, as in a cold worker. tqdm's monitor thread is kept off during
  the warm-up and its interval restored in the child.
- backends with global state (bitsandbytes, optimum-quanto, ONNX Runtime) are not imported
  here: each run imports its own in `Method.build`, as cold. torchao and hqq are, because
  transformers imports them at every model load, cold or warm (they register ops and classes;
  no threads, no device). So are the modules a family declares (`EnvFamily.warm_imports`, a
  comma-separated MODULES argument): OpenVINO, NNCF and optimum-intel in the openvino family,
  whose imports take more than half of a quick ov-weight run otherwise. Their import starts no
  native thread and creates no OpenVINO `Core` that has compiled anything (TBB's workers start
  at the first compile, in the run); it starts one Python thread, the worker of OpenVINO's
  telemetry sender (a `ThreadPoolExecutor`), which is shut down before listening
  (`_stop_executor_threads`): in a run, the telemetry's later submissions are refused by the
  shut-down executor, which the sender catches and drops. Nothing is sent from a warm run: this
  machine is offline anyway, and a run sending usage data is nothing a measurement needs.
- CUDA: never initialized here (`PYTORCH_NVML_BASED_CUDA_CHECK` for this process only, and a
  check before listening); the kernel side sends CUDA runs the cold way.
- random state: torch's default generator goes back to a fresh process's seed and numpy's global
  one is reseeded from the OS, as in a new interpreter; Python's `random` reseeds itself at fork;
  the worker then seeds torch per run (`spec.seed`). The string hash seed is the prepared
  process's (set at interpreter start); nothing the workbench measures depends on it.
- the environment: the child's `os.environ` is replaced by the request's (the one a cold worker
  would get, with its own TMPDIR) and `tempfile` forgets its cached folder.
- peak RSS: a forked child inherits the page tables of anonymous memory (counted in its RSS, as
  the same imports' memory is in a cold worker's) but not those of file mappings; the child maps
  again the library pages resident here (`_resident_file_ranges`, `_populate`) and its kernel
  high-water mark starts at that, not at the warm-up's peak. Measured: a warm baseline run's peak
  RSS within 5% of a cold run's (`benchmarks/worker_overhead.py`).
- code: the kernel side replaces a prepared process whose imported workbench modules or
  site-packages changed on disk since it started (`_sources`).
- lifetime: the prepared process dies with its coordinator (`worker._die_with_parent`); a run
  dies with the prepared process (its parent) and with the coordinator (watched through a pidfd
  the child inherits), killing its process group (the reference or reload child it may have
  started) either way.
"""
from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

# A fresh torch process's default generator seed (c10's default_rng_seed_val).
_TORCH_DEFAULT_SEED = 67280421310721
# Largest request line (environment, paths) a client may send.
_MAX_REQUEST = 1 << 20
_ACCEPT_TIMEOUT_S = 10.0


def serve(argv: list[str]) -> int:
    """`--serve FOLDER SOCKET READY_FD IDLE_S [MODEL_JSON]` (FOLDER: the coordinator's pool folder,
    named so that its processes can be found): prepare, tell READY_FD, serve until idle
    for IDLE_S seconds with no run alive (exit 0) or until the coordinator dies."""
    from . import worker

    sock_path, ready_fd, idle_s = argv[1], int(argv[2]), float(argv[3])
    model = json.loads(argv[4]) if len(argv) > 4 and argv[4] else None
    modules = [m for m in argv[5].split(",") if m] if len(argv) > 5 else []
    worker._die_with_parent()
    coordinator_fd = _pidfd(os.getppid())
    t0 = time.perf_counter()
    try:
        prepared = _prepare(model, modules)
        listener = _listen(sock_path)
    except BaseException as e:  # noqa: BLE001 - any failure to prepare is told to the coordinator, which goes cold
        traceback.print_exc()
        _tell(ready_fd, {"ok": False, "error": f"{type(e).__name__}: {e}"})
        return 1
    facts = {k: v for k, v in prepared.items() if not k.startswith("_")}
    _tell(ready_fd, {"ok": True, "pid": os.getpid(), "prepare_s": round(time.perf_counter() - t0, 3), **facts})
    return _Server(listener, coordinator_fd, idle_s, prepared).loop()


def _tell(fd: int, message: dict) -> None:
    try:
        os.write(fd, (json.dumps(message) + "\n").encode())
    finally:
        os.close(fd)


def _pidfd(pid: int) -> int | None:
    """A pidfd of `pid` (readable once it exits), or None where the kernel has none (Linux < 5.3)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _prepare(model: dict | None, modules: list[str] | None = None) -> dict[str, Any]:
    """Import what every worker imports and the family's `modules`, load `model` once; the facts
    the child needs."""
    from . import worker
    from .spec import ModelSpec, RunSpec

    # The defaults a cold worker sets before its first transformers import (some are read at import).
    worker._setup_process(RunSpec(model=ModelSpec("prepared"), method="baseline"))
    # torch.cuda.is_available() would initialize the CUDA driver, which a forked child cannot use;
    # NVML answers the same question without it. This process's environment only: the child's is replaced.
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    tqdm_interval = _quiet_tqdm()
    blas_threads = _numpy_blas_threads()
    from . import registry  # noqa: F401
    from .measure import envinfo, memory  # noqa: F401
    from .models import catalog

    try:
        import torch
    except ImportError:  # an interpreter without torch (the kernel's): imports only, no warm-up
        torch = None
    default_threads = None
    warmed = warm_s = warm_error = None
    if torch is not None:
        default_threads = torch.get_num_threads()  # what a cold process gets: cores or OMP_NUM_THREADS
        torch.set_num_threads(1)
        import transformers  # noqa: F401

        from .models import loader

        for name in modules or ():
            importlib.import_module(name)

        spec = ModelSpec(**model) if model is not None else None
        # Only a model whose loading runs no code of its own (no remote code, no pickle).
        if spec is not None and not spec.trust_remote_code and spec.use_safetensors:
            t0 = time.perf_counter()
            try:
                info = catalog.describe(spec)
                if info.kind in loader.KINDS:
                    net = loader.load_model(spec, kind=info.kind, dtype="float32", device="cpu")
                    loader.load_tokenizer(spec)
                    del net
                    warmed, warm_s = spec.id, round(time.perf_counter() - t0, 3)
            except Exception as e:  # noqa: BLE001 - the imports are prepared all the same; the run will say what is wrong
                warm_error = f"{type(e).__name__}: {e}"[:500]
    stopped = _stop_executor_threads()
    gc.collect()
    _malloc_trim()
    problems = _fork_hazards(torch, blas_threads)
    if problems:
        raise RuntimeError("not safe to fork: " + "; ".join(problems))
    resident = _resident_file_ranges()
    return {"default_threads": default_threads, "warmed_model": warmed, "warm_up_s": warm_s,
            "warm_up_error": warm_error, "modules": len(sys.modules), "sources": _sources(),
            "resident_file_mb": round(sum(n for _, n in resident) / 2**20, 1),
            "imported": list(modules or ()) if torch is not None else [], "threads_stopped": stopped,
            "_tqdm_interval": tqdm_interval, "_resident": resident}


def _sources() -> dict[str, int]:
    """What this process's code came from: {file: mtime_ns} of the workbench modules it imported
    and of the environment's site-packages folders (a package installed or removed changes them).
    A run forked from here runs this code, not what is on disk: the kernel side replaces a
    prepared process whose sources changed (an edited checkout, `pip install` in the environment)."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    files = [getattr(m, "__file__", None) for m in list(sys.modules.values())]
    files = [f for f in files if isinstance(f, str) and os.path.abspath(f).startswith(package)]
    files += [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    out = {}
    for f in files:
        try:
            out[f] = os.stat(f).st_mtime_ns
        except OSError:
            pass
    return out


def _quiet_tqdm() -> float | None:
    """Turn tqdm's monitor thread off (a thread alive at fork is a lock that may never be released
    in the child); returns the interval the child puts back."""
    try:
        import tqdm
    except ImportError:
        return None
    interval = tqdm.tqdm.monitor_interval
    tqdm.tqdm.monitor_interval = 0
    return interval


def _stop_executor_threads(timeout_s: float = 10.0) -> list[str]:
    """Shut down the `concurrent.futures.ThreadPoolExecutor`s whose worker threads an import
    started (OpenVINO's telemetry sender, see the module docstring) and wait for their threads to
    end; the names of the threads stopped. A thread still running after `timeout_s` is left to
    `_fork_hazards`, which then refuses to serve (the runs go cold)."""
    from concurrent.futures import thread as futures_thread

    stopped = []
    for t in threading.enumerate():
        # The executor's worker threads run `_worker(executor_reference, ...)` (CPython 3.8+).
        if getattr(t, "_target", None) is not futures_thread._worker:
            continue
        args = getattr(t, "_args", ())
        executor = args[0]() if args and callable(args[0]) else None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        t.join(timeout_s)
        if not t.is_alive():
            stopped.append(t.name)
    return stopped


def _malloc_trim() -> None:
    """Give the warm-up's freed heap back to the system, so no run inherits it as resident pages."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _native_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _numpy_blas_threads() -> int:
    """The threads numpy's import starts, when they are OpenBLAS's: OpenBLAS stops its pool in a
    pthread_atfork handler before every fork and a child starts its own at its first BLAS call,
    so those are safe to have. Imported first, alone, to count them (when a module imported
    before this ran imported numpy, the native threads there are now are its: nothing else has
    run yet). 0 for any other BLAS."""
    def native_only() -> int:
        return _native_threads() - threading.active_count()

    before = 0 if "numpy" in sys.modules else native_only()
    try:
        import numpy
    except ImportError:
        return 0
    started = native_only() - before
    try:
        blas = str(numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"])
    except Exception:  # noqa: BLE001 - numpy < 1.25 has no mode="dicts": treat its threads as unknown
        blas = "unknown"
    return started if "openblas" in blas.lower() else 0


def _fork_hazards(torch: Any, allowed_native: int) -> list[str]:
    """Why forking this process now would hand a run something broken (empty when it is safe)."""
    problems = []
    if torch is not None and torch.cuda.is_initialized():
        problems.append("CUDA was initialized")
    python_threads = threading.enumerate()
    names = sorted(t.name for t in python_threads if t is not threading.main_thread() and t.name != "die-with-parent")
    if names:
        problems.append(f"Python threads running: {', '.join(names)}")
    extra = _native_threads() - len(python_threads) - allowed_native - _other_openblas_threads() - _jemalloc_threads()
    if extra > 0:
        problems.append(f"{extra} native thread(s) running beyond the OpenBLAS pools and jemalloc's background "
                        "thread (a thread pool started)")
    return problems


def _other_openblas_threads() -> int:
    """The worker threads of OpenBLAS libraries other than numpy's (scipy bundles its own, which
    transformers pulls in through scikit-learn where it is installed, as in the openvino family).
    OpenBLAS starts its pool when the library loads (one thread less than its thread count) and
    stops it in its own pthread_atfork handler, whichever copy: as safe as numpy's. Counted with
    threadpoolctl (installed with scikit-learn); 0 without it."""
    if "threadpoolctl" not in sys.modules and "sklearn" not in sys.modules:
        return 0
    try:
        import threadpoolctl
    except ImportError:
        return 0
    return sum(max(int(p.get("num_threads") or 1) - 1, 0) for p in threadpoolctl.threadpool_info()
               if p.get("internal_api") == "openblas" and "numpy" not in str(p.get("filepath", "")))


def _jemalloc_threads() -> int:
    """jemalloc's background threads (pyarrow bundles jemalloc; pandas imports pyarrow): jemalloc
    takes its locks in a pthread_atfork handler and a child starts its own background thread when
    it needs one, so a fork is safe with them running. Found by their thread name."""
    count = 0
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/comm") as f:
                count += f.read().strip() == "jemalloc_bg_thd"
    except OSError:
        return 0
    return count


def _resident_file_ranges() -> list[tuple[int, int]]:
    """(address, length) of the runs of pages of file mappings (the libraries' code and data)
    resident in this process now.

    A forked child inherits the page tables of anonymous memory, so those pages count in its RSS
    as they would in a cold process that made them, but not those of file mappings (the kernel
    fills them at the child's first touch): without this, a warm run's peak RSS would leave out
    the library pages a cold worker touched while importing (90 MB for torch and transformers).
    The child maps these pages again (`_populate`), so its RSS starts where a cold worker's is
    after the same imports. Page-present bits come from /proc/self/pagemap (no privilege needed).
    """
    page = os.sysconf("SC_PAGE_SIZE")
    runs: list[tuple[int, int]] = []
    try:
        with open("/proc/self/maps") as f:
            maps = f.read().splitlines()
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    except OSError:
        return runs
    try:
        for line in maps:
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[5].startswith("/") or "r" not in parts[1]:
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            entries = os.pread(fd, (end - start) // page * 8, start // page * 8)
            present = [entry >> 63 for entry in memoryview(entries).cast("Q")]
            run_start = None
            for i, bit in enumerate(present + [0]):
                if bit and run_start is None:
                    run_start = i
                elif not bit and run_start is not None:
                    runs.append((start + run_start * page, (i - run_start) * page))
                    run_start = None
    except OSError:
        pass
    finally:
        os.close(fd)
    return runs


def _populate(runs: list[tuple[int, int]]) -> None:
    """Map the given resident file pages into this (forked) process, as reading them would,
    without copying them (MADV_POPULATE_READ, Linux 5.14; else one byte read per page)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    madvise = libc.madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    populate_read = 22
    page = os.sysconf("SC_PAGE_SIZE")
    for address, length in runs:
        if madvise(address, length, populate_read) == 0:
            continue
        try:
            view = (ctypes.c_char * length).from_address(address)
            for offset in range(0, length, page):
                view[offset]
        except (ValueError, OSError):
            pass


def _listen(path: str) -> socket.socket:
    if os.path.lexists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(16)
    return listener


class _Run:
    def __init__(self, pid: int, pidfd: int, conn: socket.socket):
        self.pid, self.pidfd, self.conn = pid, pidfd, conn


class _Server:
    """The accept / fork / reap loop (single-threaded: nothing but this loop runs between forks)."""

    def __init__(self, listener: socket.socket, coordinator_fd: int | None, idle_s: float, prepared: dict):
        self.listener = listener
        self.coordinator_fd = coordinator_fd
        self.idle_s = idle_s
        self.prepared = prepared
        self.by_pidfd: dict[int, _Run] = {}
        self.by_conn: dict[int, _Run] = {}
        self.poll = select.poll()
        self.poll.register(listener.fileno(), select.POLLIN)
        if coordinator_fd is not None:
            self.poll.register(coordinator_fd, select.POLLIN)

    def loop(self) -> int:
        coordinator = os.getppid()
        while True:
            idle = not self.by_pidfd
            events = self.poll.poll(self.idle_s * 1000 if idle else 500)
            if not events and idle:
                return 0  # idle: give the memory back; the kernel side starts a new one when asked
            if self.coordinator_fd is None and os.getppid() != coordinator:
                return 0
            for fd, _ev in events:
                if fd == self.coordinator_fd:
                    # The coordinator died: every run goes with it (they watch it too).
                    for run in list(self.by_pidfd.values()):
                        _kill_group(run.pid)
                    return 0
                if fd == self.listener.fileno():
                    self._accept()
                elif fd in self.by_pidfd:
                    self._reap(self.by_pidfd[fd])
                elif fd in self.by_conn:
                    # The client hung up before its run ended: nobody waits for that result.
                    run = self.by_conn.pop(fd)
                    self.poll.unregister(fd)
                    run.conn.close()
                    _kill_group(run.pid)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        try:
            conn.settimeout(_ACCEPT_TIMEOUT_S)
            if not _same_user(conn):
                raise PermissionError("request from another user")
            request, fds = _receive(conn)
            run = self._fork(request, fds, conn)
        except Exception as e:  # noqa: BLE001 - a bad request fails that request, not the server
            try:
                conn.sendall((json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n").encode())
            except OSError:
                pass
            conn.close()
            return
        conn.settimeout(None)
        self.by_pidfd[run.pidfd] = run
        self.by_conn[conn.fileno()] = run
        self.poll.register(run.pidfd, select.POLLIN)
        self.poll.register(conn.fileno(), select.POLLIN)

    def _fork(self, request: dict, fds: list[int], conn: socket.socket) -> _Run:
        argv, env, cwd = request.get("argv"), request.get("env"), request.get("cwd")
        try:
            if (not isinstance(argv, list) or len(argv) != 2 or not all(isinstance(a, str) for a in argv)
                    or any(a.startswith("-") for a in argv)):
                raise ValueError("argv: REQUEST and RESULT paths only")
            if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
                raise ValueError("env: a mapping of strings")
            if not isinstance(cwd, str) or len(fds) != 1:
                raise ValueError("cwd and exactly one output descriptor")
            sys.stdout.flush()
            sys.stderr.flush()
            sync_r, sync_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child never returns (covered by the integration tests)
                os.close(sync_r)
                _child(self, argv, env, cwd, fds[0], sync_w, conn)
            os.close(sync_w)
            os.read(sync_r, 1)  # the child is its own session now (or already dead, which reads b"")
            os.close(sync_r)
        finally:
            for fd in fds:
                os.close(fd)
        pidfd = os.pidfd_open(pid)
        conn.sendall((json.dumps({"pid": pid}) + "\n").encode())
        return _Run(pid, pidfd, conn)

    def _reap(self, run: _Run) -> None:
        _, status = os.waitpid(run.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        self.poll.unregister(run.pidfd)
        os.close(run.pidfd)
        self.by_pidfd.pop(run.pidfd, None)
        if self.by_conn.pop(run.conn.fileno(), None) is not None:
            self.poll.unregister(run.conn.fileno())
            try:
                run.conn.sendall((json.dumps({"status": code}) + "\n").encode())
            except OSError:
                pass
            run.conn.close()

    def inherited_fds(self) -> list[int]:
        """What a forked run must not keep of the server's."""
        fds = [self.listener.fileno()]
        for run in self.by_pidfd.values():
            fds += [run.pidfd, run.conn.fileno()]
        return fds


def _same_user(conn: socket.socket) -> bool:
    import struct

    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 4)
    fds = list(fds)
    try:
        while not data.endswith(b"\n"):
            more = conn.recv(65536)
            if not more:
                raise ValueError("request: connection closed mid-request")
            data += more
            if len(data) > _MAX_REQUEST:
                raise ValueError("request: too long")
        return json.loads(data), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _child(server: _Server, argv: list[str], env: dict, cwd: str, out_fd: int, sync_w: int,
           conn: socket.socket) -> None:
    """The forked run: never returns."""
    code = 1
    try:
        os.setsid()
        os.write(sync_w, b"1")
        os.close(sync_w)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        for fd in [*server.inherited_fds(), conn.fileno()]:
            try:
                os.close(fd)
            except OSError:
                pass
        code = _run_worker(server, argv, env, cwd)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - whatever happens, this process must not return into the server's loop
        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _run_worker(server: _Server, argv: list[str], env: dict, cwd: str) -> int:
    import tempfile

    from . import worker

    also = [server.coordinator_fd] if server.coordinator_fd is not None else []
    worker._die_with_parent(also=also)
    # The run's high-water mark starts at what it holds now, not at the warm-up's peak.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    _populate(server.prepared.get("_resident", []))
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    tempfile.tempdir = None
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(server.prepared["default_threads"])
        torch.manual_seed(_TORCH_DEFAULT_SEED)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    if server.prepared.get("_tqdm_interval") is not None:
        import tqdm

        tqdm.tqdm.monitor_interval = server.prepared["_tqdm_interval"]
    sys.argv = [worker.__file__, *argv]
    return worker.main(list(argv))


__all__ = ["serve"]


if __name__ == "__main__":
    # Its own entry, not a `worker` mode: the worker imports nothing of this module, so the two
    # do not import each other (tests/unit/test_import_graph.py).
    _args = sys.argv[1:]
    if not _args or _args[0] != "--serve":
        sys.stderr.write(__doc__ or "")
        sys.exit(2)
    sys.exit(serve(_args[1:]))
