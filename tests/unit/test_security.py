"""The security pass (SECURITY.md): every rule there that is code is checked here.

Remote code and pickle weights stay off unless asked for per run, and a run that asked says so
in its stored result; the store holds JSON, nothing is unpickled from it; the report escapes
every user-provided string; servers bind 127.0.0.1; paths the workbench writes are built from
its home and a hash, never from a spec."""
from __future__ import annotations

import html
import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path

from workbench import paths
from workbench.cli import _spec_options, build_parser
from workbench.report import build_report
from workbench.result import RunResult, RunStatus
from workbench.security import cache_name, spec_warnings
from workbench.session import Session
from workbench.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[2]


class OkExecutor:
    """Returns a successful result without a worker: what is checked is what the session stores."""

    def run(self, spec, target, env, progress=None, **_kw):
        return RunResult(key=spec.key, status=RunStatus.OK, spec=spec.to_dict(), metrics={"perplexity": 1.0},
                         warnings=["security: forged by a backend"])


def test_remote_code_and_pickle_weights_are_off_unless_asked_for():
    assert ModelSpec("m").trust_remote_code is False and ModelSpec("m").use_safetensors is True
    args = build_parser().parse_args(["run", "--model", "m", "--method", "rtn"])
    assert _spec_options(args)["trust_remote_code"] is False and "use_safetensors" not in _spec_options(args)
    args = build_parser().parse_args(["run", "--model", "m", "--method", "rtn", "--trust-remote-code",
                                      "--allow-pickle-weights"])
    assert _spec_options(args)["trust_remote_code"] is True and _spec_options(args)["use_safetensors"] is False


def test_a_run_that_lowered_a_default_says_so_in_its_stored_result(tmp_path):
    session = Session(store=tmp_path / "wb.sqlite", executor=OkExecutor(), progress=False)
    plain = session.submit(session.make_spec("tiny-llama", "rtn", {"group_size": 16}))
    assert not [w for w in plain.warnings if w.startswith("security:")]  # a backend cannot forge one either
    risky = session.submit(session.make_spec("tiny-llama", "rtn", {"group_size": 16}, trust_remote_code=True,
                                             use_safetensors=False))
    stored = session.store.cached(risky.key)
    assert [w.split(":")[1].strip()[:17] for w in stored.warnings[:2]] == ["trust_remote_code", "pickle weights we"]
    assert spec_warnings(session.make_spec("m", "rtn")) == []


def test_the_store_holds_json_and_nothing_is_unpickled(tmp_path):
    session = Session(store=tmp_path / "wb.sqlite", executor=OkExecutor(), progress=False)
    session.submit(session.make_spec("tiny-llama", "rtn", {"group_size": 16}))
    with closing(sqlite3.connect(tmp_path / "wb.sqlite")) as con:
        for (text,) in con.execute("SELECT result FROM runs"):
            json.loads(text)
    for module in ("store.py", "result.py", "sweep.py", "report.py"):
        source = (ROOT / "workbench" / module).read_text()
        assert not re.search(r"^\s*(import|from)\s+(pickle|marshal|shelve|dill|cloudpickle)\b", source, re.M), module
    # the caches that are tensors load without pickle
    assert "weights_only=True" in (ROOT / "workbench" / "measure" / "reference.py").read_text()


def test_the_report_escapes_every_user_string():
    evil = "<img src=x onerror=alert(1)>"
    r = RunResult(key="k", status=RunStatus.CRASHED, spec={"model": {"id": evil}, "method": "rtn",
                                                           "params": {"exclude": [f"</script>{evil}"]}},
                  error=f"crashed: {evil}", warnings=[evil])
    ok = RunResult(key="k2", status=RunStatus.OK, spec={"model": {"id": evil}, "method": "rtn",
                                                        "params": {"bits": 4, "include": [evil]}},
                   metrics={"weights_bytes": 1e6, "perplexity": 10.0}, kernel=evil, layers_quantized=1,
                   layers_eligible=2, notes=[evil])
    page = build_report([r, ok], title=evil)
    assert evil not in page and "</script><img" not in page
    assert html.escape(evil) in page


def test_servers_bind_the_loopback_interface_by_default():
    make = (ROOT / "Makefile").read_text()
    assert "--Voila.ip=127.0.0.1" in make and "--ServerApp.ip=127.0.0.1" in make
    dask = (ROOT / "workbench" / "exec" / "dask.py").read_text()
    assert 'host="127.0.0.1"' in dask and "dashboard_address=None" in dask


def test_written_paths_come_from_the_home_and_a_hash_never_from_a_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    for hostile in ("../../etc/passwd", "/etc/cron.d/x", "org/..\\..\\x", "a" * 300):
        name = cache_name(hostile, "blob")
        assert "/" not in name and "\\" not in name and ".." not in name and len(name) <= 57
        assert (paths.subdir("onnx") / name).resolve().parent == (tmp_path / "home" / "onnx").resolve()
    assert paths.checkpoint_dir("llmcompressor", "0123456789abcdef" * 4).parent == tmp_path / "home" / "checkpoints"
