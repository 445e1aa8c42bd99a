"""Kill a sweep, again and again, and check that nothing completed is lost and that it resumes.

Each trial starts `workbench sweep FILE` on the same store and SIGKILLs it: the coordinator (its
workers must die with it), or one worker (the coordinator stores that run as failed and goes on,
and is then killed too). `--at half` kills the first trial once half of what remains is stored;
`--at random` kills after a random number of seconds. After every kill: the store passes SQLite's
integrity check, every row stored before is still there, and no worker is left running. At the
end the same command with `--retry-failed` completes the sweep, and no configuration stored as a
success was run twice.

    .venv/bin/python benchmarks/sweep_kill.py sweeps/smollm2-weight-only.toml --trials 1 --at half
    .venv/bin/python benchmarks/sweep_kill.py SWEEP.toml --trials 20 --at random --target random
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

from workbench.testing import stored_rows as rows
from workbench.testing import workers_under

ROOT = Path(__file__).resolve().parents[1]
WB = [sys.executable, "-m", "workbench.cli"]


def integrity(store: Path) -> str:
    with closing(sqlite3.connect(store, timeout=30)) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def planned(sweep_file: Path, store: Path) -> list[str]:
    from workbench import sweep
    from workbench.session import Session

    return [s.key for s in sweep.plan(Session(store=store, progress=False), sweep.load_sweep(sweep_file)).specs]


def wait_until(predicate, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(0.2)
    return False


def trial(n: int, sweep_file: Path, store: Path, scratch: Path, at: str, target: str, rng: random.Random,
          keys: list[str], max_wait: float = 30.0) -> dict:
    tmp = scratch / f"trial-{n}"
    tmp.mkdir()
    before = rows(store)
    done_before = {k for k, s in before if s == "ok"}
    remaining = len(set(keys) - done_before)
    env = {**os.environ, "TMPDIR": str(tmp)}
    log = (scratch / f"trial-{n}.log").open("w")
    proc = subprocess.Popen([*WB, "sweep", str(sweep_file), "--store", str(store), "--quiet", "--retry-failed"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.monotonic()
    if at == "half":
        goal = len(before) + max(1, remaining // 2)
        wait_until(lambda: len(rows(store)) >= goal, 3600, proc)
    else:
        # somewhere in the first few runs: a random moment, often mid-run, sometimes mid-write
        wait_until(lambda: False, rng.uniform(2, max_wait), proc)
    who = target if target != "random" else rng.choice(["coordinator", "worker"])
    killed = "nothing (the sweep had ended)"
    if proc.poll() is None:
        if who == "worker":
            wait_until(lambda: bool(workers_under(tmp, prepared=False)), 60, proc)
            pids = workers_under(tmp, prepared=False)  # a run, not the prepared process it was forked from
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed = "a worker"
                goal = len(rows(store)) + 1  # the coordinator stores that run as failed, then goes on
                wait_until(lambda: len(rows(store)) >= goal, 120, proc)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed = killed + " and the coordinator" if killed == "a worker" else "the coordinator"
    proc.wait()
    log.close()
    orphans_gone = wait_until(lambda: not workers_under(tmp), 30)
    after = rows(store)
    check = integrity(store) if store.exists() else "ok"
    lost = [r for r in before if r not in after]
    return {"trial": n, "killed": killed, "after_s": round(time.monotonic() - t0, 1), "stored_before": len(before),
            "stored_after": len(after), "ok_after": len({k for k, s in after if s == "ok"}), "lost": len(lost),
            "integrity": check, "workers_left": 0 if orphans_gone else len(workers_under(tmp))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--store", type=Path, default=None, help="default: a new temporary store")
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--at", choices=("half", "random"), default="half")
    ap.add_argument("--target", choices=("coordinator", "worker", "random"), default="coordinator")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-wait", type=float, default=30.0, help="with --at random: kill within this many seconds")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (logs; the store unless --store)")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="wb-kill-"))
    try:
        return run(args, scratch)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def run(args: argparse.Namespace, scratch: Path) -> int:
    rng = random.Random(args.seed)
    store = args.store or scratch / "wb.sqlite"
    keys = planned(args.sweep, store)
    print(f"{args.sweep}: {len(keys)} configurations; store {store}")
    failures = 0
    for n in range(1, args.trials + 1):
        if len({k for k, s in rows(store) if s == "ok"} & set(keys)) == len(keys):
            print(f"trial {n}: the sweep is complete; no more trials")
            break
        t = trial(n, args.sweep, store, scratch, args.at if n == 1 else "random" if args.at == "random" else "half",
                  args.target, rng, keys, args.max_wait)
        bad = t["lost"] or t["integrity"] != "ok" or t["workers_left"]
        failures += bool(bad)
        print(f"trial {n}: killed {t['killed']} after {t['after_s']} s; rows {t['stored_before']} -> "
              f"{t['stored_after']} ({t['ok_after']} ok); lost {t['lost']}; integrity {t['integrity']}; "
              f"workers left {t['workers_left']}" + ("  <-- FAILED" if bad else ""))
    ok_before_resume = Counter(k for k, s in rows(store) if s == "ok")
    t0 = time.monotonic()
    p = subprocess.run([*WB, "sweep", str(args.sweep), "--store", str(store), "--quiet", "--retry-failed"], cwd=ROOT,
                       capture_output=True, text=True)
    print(f"\nresume (--retry-failed): exit {p.returncode} in {time.monotonic() - t0:.0f} s")
    print(p.stdout.rstrip())
    if p.stderr.strip():
        print(p.stderr.rstrip()[-3000:])
    final = rows(store)
    ok = Counter(k for k, s in final if s == "ok")
    rerun = [k for k in ok_before_resume if ok[k] > 1]
    complete = all(ok[k] >= 1 for k in keys)
    print(f"\n{len(keys)} configurations; complete: {complete}; stored as ok before the resume: "
          f"{len(ok_before_resume)}; run twice after being stored as ok: {len(rerun)}; rows in the store: {len(final)} "
          f"({Counter(s for _, s in final)}); trials with a lost row, a damaged store or a worker left: {failures}")
    return 0 if complete and not rerun and not failures and p.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
