"""The Binder image's share of the workbench: binder/postBuild run as written, into a temporary home.

    .venv/bin/python benchmarks/binder.py [--keep DIR]
    .venv/bin/python benchmarks/binder.py --memory

`--memory`: instead, the app's first runs on SmolLM2 (quick protocol, as the app on Binder) with
MEM_LIMIT=2 GiB set as JupyterHub sets it: the worker's share of the limit (`exec/memory_budget`)
and each run's peak RSS against it, then one oversized run (batch 64 x 512 tokens), which must be
stopped and stored as `oom`, then one more run, which must complete. Exit 1 otherwise. The process
running it stands for the kernel (about 100 MB here; a Voila kernel with the app holds about 300).

Runs `bash binder/postBuild` from the repository root with `WORKBENCH_HOME` set to a fresh
temporary folder and this checkout's `.venv/bin` first on PATH (the `workbench` command Binder's
requirements.txt installs), then prints the size of that home (hard links counted once, as the
image's layer stores them) and of its parts, against the issue's target: at most 4.5 GB.
Pip's package index is this machine's (`pip config get global.extra-index-url`): postBuild's
default, PyTorch's CPU index on the internet, is unreachable here, and both give the same
torch==2.13.0 CPU build. Takes 5-10 minutes (two environments from pip's cache, the model
conversion and the warm-up runs).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_GB = 4.5


def du(path: Path) -> int:
    """Bytes on disk under `path`, each hard-linked file once (`du -s --bytes` semantics, apparent size)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def memory() -> None:
    """The app's first SmolLM2 runs under MEM_LIMIT=2 GiB: share, peaks, and an oversized run."""
    from dataclasses import replace

    from workbench import protocols
    from workbench.exec import memory_budget
    from workbench.session import Session

    os.environ["MEM_LIMIT"] = str(2 * 2**30)
    os.environ.pop("WORKBENCH_MEMORY_LIMIT_MB", None)
    mb = memory_budget.MB
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        session = Session(store=Path(tmp) / "binder.sqlite", progress=False)
        budget = session.executor.budget
        print(f"MEM_LIMIT {budget.total_bytes / mb:.0f} MB; warm starts: {session.executor.warm}")
        quick = protocols.get("quick")
        runs = [("baseline", {}), ("rtn", {"bits": 4}), ("torchao", {"scheme": "int8_weight_only"}),
                ("ov-weight", {"bits": 8}), ("ov-weight", {"bits": 4})]
        for method, params in runs:
            share = budget.worker_bytes()
            r = session.submit(session.make_spec("smollm2-135m", method, params, protocol="quick"), force=True)
            peak = r.metrics.get("peak_rss_bytes") or 0
            fits = r.ok and 0 < peak <= share
            ok &= fits
            print(f"{method} {params!s:<36} {r.status.value:<6} peak {peak / mb:6.0f} MB of a {share / mb:.0f} MB "
                  f"share  {'PASS' if fits else 'FAIL'}", flush=True)
        big = replace(quick.bench, batch_sizes=(64,), seq_len=512, accuracy=False, save=False)
        r = session.submit(session.make_spec("smollm2-135m", "baseline", {}, bench=big, data=quick.data), force=True)
        ok &= r.status.value == "oom"
        print(f"baseline at batch 64 x 512: {r.status.value}: {r.error}")
        # The session lives on: the next run completes within its share.
        share = budget.worker_bytes()
        r = session.submit(session.make_spec("smollm2-135m", "rtn", {"bits": 8}, protocol="quick"), force=True)
        peak = r.metrics.get("peak_rss_bytes") or 0
        fits = r.ok and 0 < peak <= share
        ok &= fits
        print(f"then rtn {{'bits': 8}}: {r.status.value} peak {peak / mb:.0f} MB of a {share / mb:.0f} MB share  "
              f"{'PASS' if fits else 'FAIL'}")
    print("all fit" if ok else "some did not fit")
    raise SystemExit(0 if ok else 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="build the home here and keep it")
    ap.add_argument("--memory", action="store_true", help="the app's first runs under MEM_LIMIT=2 GiB instead")
    args = ap.parse_args()
    if args.memory:
        memory()
    tmp = None
    home = args.keep
    if home is None:
        tmp = tempfile.mkdtemp(prefix="wb-binder-")
        home = Path(tmp) / "workbench-home"
    home.mkdir(parents=True, exist_ok=True)
    index = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.extra-index-url"],
                           capture_output=True, text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    env.update({"WORKBENCH_HOME": str(home), "PATH": f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}",
                "HF_HUB_OFFLINE": "1"})
    if index:
        env["PIP_EXTRA_INDEX_URL"] = index
    print(f"$ WORKBENCH_HOME={home} bash binder/postBuild", flush=True)
    t0 = time.perf_counter()
    try:
        r = subprocess.run(["bash", str(ROOT / "binder" / "postBuild")], cwd=ROOT, env=env)
        took = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"binder/postBuild failed (exit {r.returncode}) after {took:.0f} s")
        total = du(home)
        print(f"\npostBuild took {took / 60:.1f} min")
        for part in sorted(p for p in home.rglob("*") if p.is_dir() and len(p.relative_to(home).parts) <= 2
                           and (p.parent == home or p.parent.name == "envs")):
            print(f"  {str(part.relative_to(home)):<24} {du(part) / 1e9:6.2f} GB (alone: what it shares counted here too)")
        print(f"workbench home: {total / 1e9:.2f} GB (hard links once; {total / 2**30:.2f} GiB); "
              f"target {TARGET_GB} GB: {'PASS' if total <= TARGET_GB * 1e9 else 'FAIL'}")
        raise SystemExit(0 if total <= TARGET_GB * 1e9 else 1)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
