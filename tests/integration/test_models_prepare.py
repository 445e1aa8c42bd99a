"""`workbench models --prepare`: what Binder's postBuild runs so that no visitor's first run pays
for a conversion. Checked in an empty workbench home, so the build really happens here."""
import os
import subprocess
import sys
from pathlib import Path

from workbench.envs import manager

from ..conftest import requires_torch_env

WB = [sys.executable, "-m", "workbench.cli"]


def _env(home: Path) -> dict[str, str]:
    # An empty home has no environments: point the torch family at the existing one.
    return {**os.environ, "WORKBENCH_HOME": str(home), "WORKBENCH_ENV_TORCH": manager.status("torch").python}


@requires_torch_env
def test_prepare_builds_a_catalog_model_in_an_empty_home_then_reuses_it(tmp_path):
    home = tmp_path / "home"
    first = subprocess.run(WB + ["models", "--prepare", "tiny-llama"], env=_env(home), capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    built = home / "models" / "tiny-llama"
    assert (built / "workbench-manifest.json").is_file() and (built / "config.json").is_file()
    assert "building the tiny test model" in first.stdout and "tiny-llama: ready" in first.stdout
    stamp = (built / "workbench-manifest.json").stat().st_mtime_ns
    again = subprocess.run(WB + ["models", "--prepare", "tiny-llama"], env=_env(home), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "building" not in again.stdout
    assert (built / "workbench-manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_prepare_refuses_names_outside_the_catalog_before_starting_a_worker(tmp_path):
    home = tmp_path / "home"
    r = subprocess.run(WB + ["models", "--prepare", "tiny-llama", "no-such-model"],
                       env={**os.environ, "WORKBENCH_HOME": str(home)}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no-such-model not in the catalog" in r.stderr
    assert not (home / "models" / "tiny-llama").exists()
