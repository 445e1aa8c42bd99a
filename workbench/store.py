"""The result store: an append-only SQLite file (WAL mode).

Each run is one committed row: a process killed halfway loses no completed
result, and readers never block the writer. Rows are never rewritten; the
latest successful row for a key is the cached result of that spec.

Runs in progress live apart, in `live_runs`: one row per running run, upserted as its
measurements arrive (`put_live`), with status `running`. `append(result, live_id=...)` writes the
final row and deletes the live one in the same transaction, so a reader sees either the running
run or its result, never both and never neither. A live row whose coordinator is gone (a kernel
restarted, a CLI killed with SIGKILL) is turned into a final `cancelled` row (error "interrupted: ...") that keeps its
measurements (`reap`; a sweep runs it again): on this machine when the coordinator's process no longer exists, for a row
written from another machine once its deadline (the run's timeout plus a margin) has passed.
Reaping happens when a store is opened and whenever live rows are read.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .errors import WorkbenchError
from .result import RunResult, RunStatus

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

SCHEMA_VERSION = 1

_DDL = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    params TEXT NOT NULL,
    created_at REAL NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_key ON runs(key, status);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS analyses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS analyses_key ON analyses(kind, key);
CREATE TABLE IF NOT EXISTS live_runs (
    run_id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    owner TEXT NOT NULL,
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    deadline REAL NOT NULL,
    result TEXT NOT NULL
);
"""

# How long past its own timeout a live row written on another machine is still believed.
LIVE_GRACE_S = 600.0


class StoreError(WorkbenchError):
    """The store file cannot be opened or is not a workbench store."""

    exit_code = 2


class ResultStore:
    """Append-only results on SQLite. Safe for several processes appending at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"store: cannot create the directory of {self.path}: {e.strerror}") from None
        try:
            with closing(self._connect()) as con:
                con.executescript(_DDL)
                con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                con.commit()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"store: {self.path} is not a usable workbench store (SQLite said: {e})") from None
        self.reap()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    def append(self, result: RunResult, live_id: str | None = None) -> int:
        """Store one result (one transaction). Returns its row id.

        `live_id`: the live row of this run (`put_live`), deleted in the same transaction."""
        if result.cached:
            raise ValueError("a cached result is already stored")
        if result.status is RunStatus.RUNNING:
            raise ValueError("a running run is not a result: put_live() keeps it until it ends")
        row = (
            result.key,
            result.status.value,
            result.model,
            result.method,
            json.dumps(result.params, sort_keys=True),
            time.time(),
            result.to_json(),
        )
        try:
            with closing(self._connect()) as con:
                cur = con.execute(
                    "INSERT INTO runs (key, status, model, method, params, created_at, result) VALUES (?,?,?,?,?,?,?)",
                    row,
                )
                if live_id is not None:
                    con.execute("DELETE FROM live_runs WHERE run_id=?", (live_id,))
                con.commit()
                return int(cur.lastrowid or 0)
        except sqlite3.OperationalError as e:
            raise StoreError(f"store: cannot write to {self.path}: {e}") from None

    # --- runs in progress ----------------------------------------------------------
    def put_live(self, run_id: str, result: RunResult, timeout_s: float | None = None) -> None:
        """Insert or update the live row of a running run: what is known so far, status `running`.

        `run_id` names this run (two runs of one spec are two rows); `timeout_s` bounds how long
        a row written from another machine is believed (see the module docstring)."""
        now = time.time()
        started = result.started_at or now
        deadline = started + (timeout_s if timeout_s is not None else 3600.0) + LIVE_GRACE_S
        text = RunResult.from_dict({**result.to_dict(), "status": RunStatus.RUNNING.value}).to_json()
        try:
            with closing(self._connect()) as con:
                con.execute(
                    "INSERT INTO live_runs (run_id, key, owner, started_at, updated_at, deadline, result) "
                    "VALUES (?,?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET updated_at=excluded.updated_at, "
                    "result=excluded.result",
                    (run_id, result.key, _owner(), started, now, deadline, text),
                )
                con.commit()
        except sqlite3.OperationalError as e:
            raise StoreError(f"store: cannot write to {self.path}: {e}") from None

    def drop_live(self, run_id: str) -> None:
        """Forget a live row without storing a result (nothing ran after all)."""
        with closing(self._connect()) as con:
            con.execute("DELETE FROM live_runs WHERE run_id=?", (run_id,))
            con.commit()

    def live(self) -> list[RunResult]:
        """The runs in progress (status `running`, with what they measured so far), oldest first,
        after reaping the ones whose coordinator is gone."""
        self.reap()
        with closing(self._connect()) as con:
            rows = con.execute("SELECT result FROM live_runs ORDER BY started_at, run_id").fetchall()
        return [RunResult.from_json(r[0]) for r in rows]

    def reap(self) -> list[RunResult]:
        """Turn live rows whose coordinator is gone into final `cancelled` rows (interrupted) that keep
        their measurements (one transaction: a row is reaped once even when two processes try).
        Returns the results it stored."""
        try:
            with closing(self._connect()) as con:
                if con.execute("SELECT 1 FROM live_runs LIMIT 1").fetchone() is None:
                    return []
                con.execute("BEGIN IMMEDIATE")
                rows = con.execute("SELECT run_id, owner, updated_at, deadline, result FROM live_runs").fetchall()
                reaped = []
                for run_id, owner, updated_at, deadline, text in rows:
                    gone = _owner_gone(owner, deadline)
                    if gone is None:
                        continue
                    r = RunResult.from_json(text)
                    # Interrupted, not failed: nothing says the configuration itself broke (a sweep
                    # killed halfway runs it again), and it never counts as a success.
                    r.status = RunStatus.CANCELLED
                    r.error = (f"interrupted: {gone}; the measurements it had reported are kept")
                    if r.started_at is not None:
                        r.duration_s = max(0.0, updated_at - r.started_at)
                    con.execute(
                        "INSERT INTO runs (key, status, model, method, params, created_at, result) "
                        "VALUES (?,?,?,?,?,?,?)",
                        (r.key, r.status.value, r.model, r.method, json.dumps(r.params, sort_keys=True),
                         time.time(), r.to_json()),
                    )
                    con.execute("DELETE FROM live_runs WHERE run_id=?", (run_id,))
                    reaped.append(r)
                con.commit()
                return reaped
        except sqlite3.OperationalError:  # busy or read-only: the next reader reaps
            return []

    def cached(self, key: str) -> RunResult | None:
        """The latest successful result for a spec key, if any."""
        ok = tuple(s.value for s in RunStatus if s.succeeded)
        with closing(self._connect()) as con:
            cur = con.execute(
                f"SELECT result FROM runs WHERE key=? AND status IN ({','.join('?' * len(ok))}) ORDER BY id DESC LIMIT 1",
                (key, *ok),
            )
            hit = cur.fetchone()
        if hit is None:
            return None
        res = RunResult.from_json(hit[0])
        res.cached = True
        return res

    def append_analysis(self, kind: str, result: RunResult) -> int:
        """Store the result of an analysis (e.g. "sensitivity"): kept apart from the runs, which
        are quantized models; the same envelope (status, error, versions, tables)."""
        try:
            with closing(self._connect()) as con:
                cur = con.execute("INSERT INTO analyses (kind, key, status, created_at, result) VALUES (?,?,?,?,?)",
                                  (kind, result.key, result.status.value, time.time(), result.to_json()))
                con.commit()
                return int(cur.lastrowid or 0)
        except sqlite3.OperationalError as e:
            raise StoreError(f"store: cannot write to {self.path}: {e}") from None

    def analysis(self, kind: str, key: str) -> RunResult | None:
        """The latest successful analysis of `kind` for a spec key."""
        with closing(self._connect()) as con:
            hit = con.execute("SELECT result FROM analyses WHERE kind=? AND key=? AND status=? ORDER BY id DESC LIMIT 1",
                              (kind, key, RunStatus.OK.value)).fetchone()
        if hit is None:
            return None
        res = RunResult.from_json(hit[0])
        res.cached = True
        return res

    def analyses(self, kind: str) -> list[RunResult]:
        """Every successful analysis of `kind`, the latest per spec key, newest first."""
        with closing(self._connect()) as con:
            rows = con.execute("SELECT result FROM analyses WHERE id IN (SELECT MAX(id) FROM analyses WHERE kind=? "
                               "AND status=? GROUP BY key) ORDER BY id DESC", (kind, RunStatus.OK.value)).fetchall()
        out = [RunResult.from_json(r[0]) for r in rows]
        for r in out:
            r.cached = True
        return out

    def latest(self, key: str) -> RunResult | None:
        """The latest stored result for a spec key, whatever its status."""
        with closing(self._connect()) as con:
            hit = con.execute("SELECT result FROM runs WHERE key=? ORDER BY id DESC LIMIT 1", (key,)).fetchone()
        return None if hit is None else RunResult.from_json(hit[0])

    def iter_results(self, latest_only: bool = False) -> Iterator[RunResult]:
        """Every stored result in insertion order (or only the latest row per key)."""
        query = "SELECT result FROM runs ORDER BY id"
        if latest_only:
            query = "SELECT result FROM runs WHERE id IN (SELECT MAX(id) FROM runs GROUP BY key) ORDER BY id"
        with closing(self._connect()) as con:
            rows = con.execute(query).fetchall()
        for (text,) in rows:
            yield RunResult.from_json(text)

    def results(self, latest_only: bool = True, include_live: bool = False) -> list[RunResult]:
        """Stored results in insertion order (the latest per key by default); `include_live` adds
        the runs in progress (status `running`) at the end, each in place of its key's older
        rows when `latest_only`."""
        out = list(self.iter_results(latest_only=latest_only))
        if include_live:
            live = self.live()
            if latest_only:
                running = {r.key for r in live}
                out = [r for r in out if r.key not in running]
            out += live
        return out

    def __len__(self) -> int:
        with closing(self._connect()) as con:
            return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def to_dataframe(self, latest_only: bool = True, include_live: bool = False) -> "pd.DataFrame":
        """One row per run (`RunResult.to_row`), the latest per key by default; `include_live`
        adds the runs in progress (status `running`, see `results`)."""
        import pandas as pd

        from .result import METRIC_NAMES

        rows = [r.to_row() for r in self.results(latest_only=latest_only, include_live=include_live)]
        if not rows:
            return pd.DataFrame(columns=list(RunResult(key="", status="ok", spec={}).to_row()) or list(METRIC_NAMES))
        return pd.DataFrame(rows)


def _owner() -> str:
    """Who is running a live run: "host pid start-time" (the start time tells a reused pid apart)."""
    pid = os.getpid()
    return f"{socket.gethostname()} {pid} {_start_time(pid)}"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), "" where /proc does not say;
    "zombie" for a process that has exited but not been waited for."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return "zombie" if fields[0] in (b"Z", b"X") else fields[19].decode()
    except (OSError, IndexError):
        return ""


def _owner_gone(owner: str, deadline: float) -> str | None:
    """Why the coordinator of a live row is known to be gone, or None while it may still run."""
    host, _, rest = owner.partition(" ")
    pid_text, _, started = rest.partition(" ")
    if host != socket.gethostname():
        if time.time() > deadline:
            return f"its coordinator on {host} has not finished it by its deadline (its timeout, plus a margin)"
        return None
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"the process that ran it (pid {pid_text}) ended before the run did"
    except PermissionError:
        pass  # someone else's process, alive
    except ValueError:
        return f"its coordinator is unknown ({owner!r})"
    if started and _start_time(pid) not in ("", started):
        return f"the process that ran it (pid {pid_text}) ended before the run did"
    return None
