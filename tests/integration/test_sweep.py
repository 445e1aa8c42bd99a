"""`workbench sweep FILE`: a coordinator killed with SIGKILL halfway takes its worker with it, loses
no stored result, and running the file again completes the sweep without rerunning what was stored."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from workbench.testing import stored_rows as rows
from workbench.testing import workers_under

from ..conftest import requires_torch_env

SWEEP = """
name = "kill-resume"
models = ["tiny-llama"]
[bench]
latency = false
save = false
[[runs]]
method = "rtn"
params = {sym = false}
grid = {bits = [8, 4, 3], group_size = {start = 16, stop = 32, factor = 2}}
[[runs]]
method = "rtn"
params = {sym = false, bits = 8, group_size = 16}   # a duplicate: runs once
"""


@requires_torch_env
def test_a_killed_sweep_resumes_without_rerunning_stored_configurations(tmp_path):
    sweep_file, store, tmp = tmp_path / "sweep.toml", tmp_path / "wb.sqlite", tmp_path / "tmp"
    sweep_file.write_text(SWEEP)
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    cmd = [sys.executable, "-m", "workbench.cli", "sweep", str(sweep_file), "--store", str(store), "--quiet"]

    coordinator = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while len(rows(store)) < 2:
        assert coordinator.poll() is None, coordinator.stdout.read()
        assert time.monotonic() < deadline, "two runs did not finish in 10 minutes"
        time.sleep(0.2)
    while not workers_under(tmp, prepared=False):  # kill it while a third run is under way
        assert coordinator.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    coordinator.send_signal(signal.SIGKILL)
    coordinator.wait()
    coordinator.stdout.close()
    before = rows(store)
    assert 2 <= len(before) < 6 and {s for _, s in before} == {"ok"}

    # The orphaned worker notices and kills its process group.
    deadline = time.monotonic() + 15
    while workers_under(tmp) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers_under(tmp) == []

    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = rows(store)
    assert after[:len(before)] == before  # nothing lost or rewritten
    # The run under way when the coordinator died is stored once as cancelled ("interrupted",
    # with what it had measured), when the resumed sweep opens the store, and runs again.
    keys = [k for k, s in after if s == "ok"]
    assert len(keys) == len(set(keys)) == 6, "a stored configuration ran again, or one is missing"
    interrupted = [(k, s) for k, s in after if s != "ok"]
    assert len(interrupted) <= 1 and all(s == "cancelled" and k in keys for k, s in interrupted), after
    assert f"{len(before)} already stored, {6 - len(before)} to run" in resumed.stdout
    assert "1 duplicates dropped" in resumed.stdout
    assert "Pareto front" in resumed.stdout

    again = subprocess.run(cmd + ["--dry-run"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "6 already stored, 0 to run" in again.stdout
    assert len([k for k, s in rows(store) if s == "ok"]) == 6


@requires_torch_env
def test_random_kills_of_the_coordinator_and_of_workers_lose_nothing(tmp_path):
    """benchmarks/sweep_kill.py with a few trials (the note quotes 20 on a longer sweep): after each
    SIGKILL the store is intact and no worker is left; the resume completes without rerunning a
    configuration stored as a success."""
    sweep_file = tmp_path / "sweep.toml"
    sweep_file.write_text(SWEEP)
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "sweep_kill.py"
    p = subprocess.run([sys.executable, str(script), str(sweep_file), "--trials", "3", "--at", "random",
                        "--target", "random", "--seed", "1", "--store", str(tmp_path / "wb.sqlite")],
                       capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "complete: True" in p.stdout and "run twice after being stored as ok: 0" in p.stdout
    assert "trials with a lost row, a damaged store or a worker left: 0" in p.stdout
    trials = [line for line in p.stdout.splitlines() if line.startswith("trial ")]
    assert trials and all("lost 0; integrity ok; workers left 0" in t or "complete" in t for t in trials)
