"""The app's first runs on SmolLM2 inside mybinder.org's 2 GB (MEM_LIMIT), enforced by the
executor's memory watch: each completes within the worker's share; an oversized one is stored as
`oom` and the session goes on with the next (docs/binder.md).

It runs `benchmarks/binder.py --memory` (the figures the closing notes quote) in a process of its
own, which stands for the kernel: this pytest worker may hold prepared processes of earlier tests,
which a Binder kernel under a 2 GB limit does not have (runs start cold there)."""
import re
import subprocess
import sys
from pathlib import Path

from ..conftest import requires_openvino_env, requires_torch_env

ROOT = Path(__file__).resolve().parents[2]


@requires_torch_env
@requires_openvino_env
def test_the_apps_first_runs_fit_binders_2_gb_and_an_oversized_run_is_oom():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "binder.py"), "--memory"],
                       capture_output=True, text=True, timeout=1500)
    out = p.stdout
    assert p.returncode == 0, out + p.stderr[-3000:]
    assert "MEM_LIMIT 2048 MB; warm starts: False" in out  # cold under 2 GB
    runs = re.findall(r"^(\S+ \{.*?\})\s+ok\s+peak\s+(\d+) MB of a (\d+) MB share  PASS$", out, flags=re.M)
    assert [r[0].split()[0] for r in runs] == ["baseline", "rtn", "torchao", "ov-weight", "ov-weight"], out
    assert all(0 < int(peak) <= int(share) for _, peak, share in runs), runs
    assert re.search(r"^baseline at batch 64 x 512: oom: .*of the 2048 MB limit set by MEM_LIMIT", out, flags=re.M), out
    assert re.search(r"^then rtn \{'bits': 8\}: ok peak \d+ MB of a \d+ MB share  PASS$", out, flags=re.M), out
