"""The memory budget of a limited container (MEM_LIMIT, WORKBENCH_MEMORY_LIMIT_MB): which limit
applies, and the worker's share of it, measured on this process tree."""
import os
import subprocess
import sys

import pytest

from workbench.errors import InvalidSpec
from workbench.exec import memory_budget
from workbench.exec.memory_budget import MB, Budget, budget


def test_the_limit_comes_from_mem_limit_or_the_workbench_variable_which_wins():
    assert budget({}) is None
    assert budget({"MEM_LIMIT": "2147483648"}) == Budget(2 * 2**30, "MEM_LIMIT")
    assert budget({"MEM_LIMIT": "2147483648", "WORKBENCH_MEMORY_LIMIT_MB": "1500"}) == \
        Budget(1500 * MB, "WORKBENCH_MEMORY_LIMIT_MB")
    assert budget({"MEM_LIMIT": "", "WORKBENCH_MEMORY_LIMIT_MB": " "}) is None  # empty: unset
    # Nonsense is refused with the variable's name: neither a worker that may use 0 bytes nor no limit.
    for var in ("MEM_LIMIT", "WORKBENCH_MEMORY_LIMIT_MB"):
        for bad in ("0", "-5", "two gigabytes", "nan"):
            with pytest.raises(InvalidSpec, match=f"^{var}: got '{bad}'; allowed: a positive number"):
                budget({var: bad})


def test_the_worker_gets_the_limit_less_this_process_tree_and_the_server_reserve():
    held = memory_budget.tree_memory(os.getpid())
    assert held >= memory_budget.held(os.getpid()) > 20 * MB  # this interpreter with pytest imported
    b = Budget(4096 * MB, "MEM_LIMIT")
    share = b.worker_bytes()
    expected = 4096 * MB - held - memory_budget.SERVER_RESERVE_MB * MB
    assert abs(share - expected) < 64 * MB  # RSS moves a little between the two looks
    # A child that holds memory is the coordinator's (a prepared process) unless it is the worker.
    child = subprocess.Popen([sys.executable, "-c", "import sys; x = bytearray(300 * 2**20); x[::4096] = b'1' * "
                              "len(x[::4096]); print('ready', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"  # every page written: resident, and stays so
        assert memory_budget.group_memory(os.getpgid(child.pid)) >= memory_budget.held(child.pid) > 290 * MB
        with_child, without = b.worker_bytes(), b.worker_bytes(exclude=child.pid)
        assert without - with_child > 250 * MB
        assert "for the worker, of the 4096 MB limit set by MEM_LIMIT" in b.describe(without)
    finally:
        child.kill()
        child.wait()
    # Never less than what a worker needs to start at all.
    assert Budget(100 * MB, "MEM_LIMIT").worker_bytes() == memory_budget.MIN_WORKER_MB * MB


def test_runs_start_cold_under_a_small_limit(monkeypatch):
    """A prepared process's idle 0.4-0.7 GB does not fit beside a worker in 2 GB: warm starts off."""
    from workbench.exec.subprocess import SubprocessExecutor

    assert SubprocessExecutor(warm=True, budget=Budget(2 * 2**30, "MEM_LIMIT")).warm is False
    assert SubprocessExecutor(warm=True, budget=Budget(16 * 2**30, "MEM_LIMIT")).warm is True
    assert SubprocessExecutor(warm=True, budget=None).warm is True
    monkeypatch.setenv("MEM_LIMIT", "2147483648")
    executor = SubprocessExecutor(warm=True)  # reads the limit from the environment by default
    assert executor.budget == Budget(2147483648, "MEM_LIMIT") and executor.warm is False
