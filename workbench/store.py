"""The result store: an append-only SQLite file (WAL mode).

Each run is one committed row: a process killed halfway loses no completed
result, and readers never block the writer. Rows are never rewritten; the
latest successful row for a key is the cached result of that spec.
"""
from __future__ import annotations

import json
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
"""


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

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    def append(self, result: RunResult) -> int:
        """Store one result (one transaction). Returns its row id."""
        if result.cached:
            raise ValueError("a cached result is already stored")
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
                con.commit()
                return int(cur.lastrowid or 0)
        except sqlite3.OperationalError as e:
            raise StoreError(f"store: cannot write to {self.path}: {e}") from None

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

    def results(self, latest_only: bool = True) -> list[RunResult]:
        return list(self.iter_results(latest_only=latest_only))

    def __len__(self) -> int:
        with closing(self._connect()) as con:
            return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def to_dataframe(self, latest_only: bool = True) -> "pd.DataFrame":
        """One row per run (`RunResult.to_row`), the latest per key by default."""
        import pandas as pd

        from .result import METRIC_NAMES

        rows = [r.to_row() for r in self.iter_results(latest_only=latest_only)]
        if not rows:
            return pd.DataFrame(columns=list(RunResult(key="", status="ok", spec={}).to_row()) or list(METRIC_NAMES))
        return pd.DataFrame(rows)
