"""`workbench recommend` with real runs on tiny-llama: it goes down the ladder across backends,
recommends a configuration within the budget that is smaller than the best 8-bit run, and prints
how to reproduce it. The search's decisions are unit-tested on a scripted model."""
import os
import re
import subprocess
import sys

from ..conftest import requires_openvino_env, requires_torch_env


@requires_torch_env
@requires_openvino_env
def test_recommend_finds_a_smaller_configuration_than_8_bit_within_the_budget(tmp_path):
    p = subprocess.run([sys.executable, "-m", "workbench.cli", "recommend", "--model", "tiny-llama",
                        "--max-ppl-increase", "10%", "--max-runs", "8", "--store", str(tmp_path / "wb.sqlite"),
                        "--quiet"], capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    base = float(re.search(r"fp32 baseline: perplexity ([\d.]+)", out).group(1))
    m = re.search(r"recommended: .*?: ([\d.]+) MB, perplexity ([\d.]+)", out)
    size, ppl = float(m.group(1)), float(m.group(2))
    assert ppl <= base * 1.10
    eight = [float(x) for x in re.findall(r"data-free 8-bit .*?  ([\d.]+) MB  ppl", out)]
    assert len(eight) >= 2 and size < min(eight)  # across backends, and smaller than the best int8
    runs = int(re.search(r"(\d+) runs in \d+ s", out).group(1))
    space = int(re.search(r"out of the (\d+) configurations", out).group(1))
    assert runs <= 8 < space
    assert "workbench run --model tiny-llama --method" in out and "import" in out  # both ways to reproduce
