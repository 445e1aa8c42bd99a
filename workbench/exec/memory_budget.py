"""The memory a worker may use when the machine's memory is limited (a Binder container).

mybinder.org runs a session in a container of at most 2 GB and says so in `MEM_LIMIT` (bytes, set
by JupyterHub); `WORKBENCH_MEMORY_LIMIT_MB` says the same in MiB anywhere else and wins. When the
container goes over, the kernel's out-of-memory killer takes a process of its choosing, possibly
the notebook kernel with the visitor's session. So, with a limit set, the executor watches each
worker's memory (its whole process group: the reference subprocess too; see `held` for what counts) and stops the
run before the container is full; the run is stored as `oom` with the limit it hit, and the
session lives on.

How the worker's share is chosen, at the start of each run: the limit, less what the coordinating
process and its other children hold right now (the kernel, the prepared processes of warm starts),
less `SERVER_RESERVE_MB` for what is outside this process tree (the Jupyter or Voila server, about
100-150 MB measured, and the page cache the container's accounting may count). The figure is
measured, not guessed, so a kernel that grew with many plots leaves the worker less.

Memory is polled (`POLL_S`): a run that allocates faster than that between two looks can still reach
the container's own limit; then the out-of-memory killer's SIGKILL is reported as `oom` too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidSpec

MB = 2**20
SERVER_RESERVE_MB = 256
POLL_S = 0.2
# Below this a worker cannot even import torch and load a tiny model: a share is never smaller
# (a kernel that holds nearly all of the limit then meets the container's own limit, reported as oom).
MIN_WORKER_MB = 300
# Under a smaller limit runs start cold: a prepared process (warm starts) holds 0.4 GB (torch) to
# 0.7 GB (openvino) while idle, and the pages a forked run shares with it count in both processes'
# RSS, so on 2 GB it would leave a SmolLM2 run no room. Cold costs the first number ~4 s.
WARM_MIN_MB = 6144


@dataclass(frozen=True)
class Budget:
    """The container's limit and where it came from ("MEM_LIMIT" or "WORKBENCH_MEMORY_LIMIT_MB")."""

    total_bytes: int
    source: str

    def worker_bytes(self, exclude: int | None = None) -> int:
        """What one worker may hold now: the total less this process tree (without `exclude`, the
        worker's own pid) and the server's reserve; never below MIN_WORKER_MB."""
        held = tree_memory(os.getpid(), exclude=exclude)
        return max(MIN_WORKER_MB * MB, self.total_bytes - held - SERVER_RESERVE_MB * MB)

    def describe(self, worker_bytes: int) -> str:
        return (f"{worker_bytes / MB:.0f} MB for the worker, of the {self.total_bytes / MB:.0f} MB limit "
                f"set by {self.source}")


def budget(environ: "os._Environ[str] | dict[str, str] | None" = None) -> Budget | None:
    """The memory limit this session runs under, or None (unset or empty: workers are not watched).
    A value that is not a positive number is refused (InvalidSpec naming the variable), before any
    run: a limit silently ignored would let a run take the container down."""
    env = os.environ if environ is None else environ
    for var, unit in (("WORKBENCH_MEMORY_LIMIT_MB", MB), ("MEM_LIMIT", 1)):
        raw = env.get(var, "").strip()
        if not raw:
            continue
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not value > 0:
            what = "a positive number of MiB" if unit == MB else "a positive number of bytes"
            raise InvalidSpec(f"{var}: got {raw!r}; allowed: {what} (or unset: no limit)")
        return Budget(int(value * unit), var)
    return None


def held(pid: int) -> int:
    """The memory of one process that a container's limit cannot take back: its proportional share
    (PSS) of anonymous and shared-memory pages, in bytes (0 when it is gone).

    Not VmRSS, for two reasons seen here: a worker's child forked from it (a library's helper
    process) shares its pages copy-on-write, and summing RSS counted them twice (an ov-weight int4
    run "reached" 2.0 GB whose worker peaked at 1.2 GB); and file-backed pages (the mapped fp32
    IR, libraries) are page cache the kernel reclaims under the limit before it kills anything.
    Falls back to VmRSS where smaps_rollup is missing (kernels before 4.14)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
                      if ":" in line)
        return (int(fields["Pss_Anon"].split()[0]) + int(fields.get("Pss_Shmem", "0 kB").split()[0])) * 1024
    except (OSError, ValueError, IndexError, KeyError):
        pass
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return kids


def tree_memory(pid: int, exclude: int | None = None) -> int:
    """`held` memory of `pid` and every process below it, less the subtree of `exclude`."""
    kids = _children()
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p == exclude:
            continue
        total += held(p)
        todo += kids.get(p, [])
    return total


def group_memory(pgid: int) -> int:
    """`held` memory of every process in process group `pgid` (a worker and what it started)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                total += held(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return total
