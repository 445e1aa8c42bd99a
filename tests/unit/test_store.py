import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from workbench.result import RunResult, RunStatus
from workbench.store import ResultStore, StoreError


def res(key, status="ok", **metrics):
    spec = {"model": {"id": "tiny-llama"}, "method": "rtn", "params": {"bits": 4}}
    return RunResult(key=key, status=status, spec=spec, metrics=metrics)


def test_append_and_cache_returns_latest_success(store_path):
    s = ResultStore(store_path)
    s.append(res("k1", perplexity=10.0))
    s.append(res("k1", status="crashed"))
    s.append(res("k1", perplexity=11.0))
    s.append(res("k2", status="timeout"))
    hit = s.cached("k1")
    assert hit is not None and hit.cached and hit.metrics["perplexity"] == 11.0
    assert s.cached("k2") is None and s.cached("nope") is None
    assert len(s) == 4
    assert [r.key for r in s.results(latest_only=True)] == ["k1", "k2"]
    with pytest.raises(ValueError):
        s.append(hit)


def test_wal_mode_and_dataframe(store_path):
    s = ResultStore(store_path)
    s.append(res("a", perplexity=3.0))
    con = sqlite3.connect(store_path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    df = s.to_dataframe()
    assert list(df["key"]) == ["a"] and df["perplexity"][0] == 3.0 and "weights_bytes" in df.columns


def test_not_sqlite_and_unwritable_paths_are_clear_errors(tmp_path):
    bad = tmp_path / "not.sqlite"
    bad.write_text("this is not a database" * 100)
    with pytest.raises(StoreError, match="not a usable workbench store"):
        ResultStore(bad)
    # A path below a regular file cannot be created, even by root.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the directory"):
        ResultStore(blocker / "sub" / "x.sqlite")


def test_a_writer_killed_halfway_loses_no_committed_result(store_path):
    ResultStore(store_path)
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(os.getcwd())!r})
        from workbench.store import ResultStore
        from workbench.result import RunResult
        s = ResultStore({str(store_path)!r})
        i = 0
        while True:
            s.append(RunResult(key=f"k{{i}}", status="ok", spec={{"model": {{"id": "m"}}, "method": "x"}}))
            print(i, flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    last = -1
    deadline = time.time() + 30
    while last < 20 and time.time() < deadline:
        last = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    s = ResultStore(store_path)
    keys = {r.key for r in s.results(latest_only=False)}
    # every append that reported success is there, and the file is still readable
    assert all(f"k{i}" in keys for i in range(last + 1))
    s.append(res("after"))
    assert s.cached("after") is not None


def test_result_json_contract_fields():
    d = json.loads(res("k", perplexity=1.0).to_json())
    for f in ("key", "status", "model", "method", "params", "metrics", "tables", "layers_quantized",
              "layers_eligible", "versions", "device", "error"):
        assert f in d
    assert d["model"] == "tiny-llama" and d["params"] == {"bits": 4}
    assert RunResult.from_dict(d).status is RunStatus.OK
