"""Environment info: versions and the device, without torch."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from workbench.measure import envinfo

ROOT = Path(__file__).resolve().parents[2]


def test_versions_of_installed_and_missing_packages():
    got = envinfo.versions(["pytest", "surely-not-a-package-xyz"])
    assert got["python"] == platform.python_version()
    assert got["pytest"] == metadata.version("pytest")
    assert got["surely-not-a-package-xyz"] == envinfo.NOT_INSTALLED


def test_device_info_for_cpu():
    info = envinfo.device_info("cpu")
    assert info["device"] == "cpu"
    assert info["logical_cores"] >= 1 and 1 <= info["usable_cores"] <= info["logical_cores"]
    assert set(info["cpu_flags"]) <= set(envinfo.CPU_FLAGS)
    assert info["total_memory_bytes"] > 2**20
    assert info["hostname"]
    if sys.platform.startswith("linux"):
        assert len(info["load_avg"]) == 3
        assert info["cpu_model"]
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
        assert ("avx2" in info["cpu_flags"]) == ("avx2" in flags)
    if "torch" not in sys.modules:
        assert info["torch_threads"] is None
    assert "gpu_name" not in info


def test_measure_modules_import_without_torch():
    # The kernel may import these: they must not pull torch (or evaluate) in.
    code = (
        "import sys\n"
        "import workbench.measure.envinfo, workbench.measure.evaluate_metrics, workbench.measure.memory as m\n"
        "assert m.peak_rss_bytes() >= m.current_rss_bytes() > 0\n"
        "heavy = [n for n in ('torch', 'evaluate', 'datasets', 'transformers') if n in sys.modules]\n"
        "print(heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
