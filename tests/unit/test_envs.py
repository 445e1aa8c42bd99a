import json
import os
import subprocess
import sys

import pytest

from workbench.envs import manager
from workbench.errors import EnvironmentUnavailable, InvalidSpec


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    monkeypatch.delenv("WORKBENCH_ENV_TORCH", raising=False)
    return tmp_path


def fake_env(home, fingerprint):
    d = home / "envs" / "torch" / "bin"
    d.mkdir(parents=True)
    (d / "python").symlink_to(sys.executable)
    (home / "envs" / "torch" / "workbench-env.json").write_text(json.dumps({"fingerprint": fingerprint}))


def test_missing_env_says_how_to_create_it(home):
    st = manager.status("torch")
    assert st.state == "missing" and not st.ready
    with pytest.raises(EnvironmentUnavailable, match="workbench env create torch"):
        manager.python_for("torch")


def test_ready_and_stale_follow_the_requirement_files(home):
    fake_env(home, manager.family("torch").fingerprint())
    assert manager.status("torch").state == "ready"
    (home / "envs" / "torch" / "workbench-env.json").write_text(json.dumps({"fingerprint": "old"}))
    st = manager.status("torch")
    assert st.state == "stale" and "requirements changed" in st.reason and st.ready


def test_override_points_at_an_existing_interpreter(home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_ENV_TORCH", sys.executable)
    assert manager.python_for("torch") == sys.executable
    monkeypatch.setenv("WORKBENCH_ENV_TORCH", "/no/python")
    assert manager.status("torch").state == "missing"


def test_unknown_family():
    with pytest.raises(InvalidSpec, match="allowed: torch"):
        manager.status("tensorflow")


def test_requirement_files_pin_torch_and_ship_in_the_package():
    text = manager.family("torch").requirements.read_text()
    assert "torch==2.13.0" in text  # an unpinned torch pulls a multi-GB CUDA build
    assert "transformers==5." in text


def test_worker_shim_exposes_only_the_package(home):
    shim = manager.worker_pythonpath()
    assert sorted(os.listdir(shim)) == ["workbench"]
    code = "import workbench, sys; print(workbench.__file__)"
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {shim!r}); " + code],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "workbench" in out.stdout
    assert manager.worker_pythonpath() == shim  # stable


def test_a_full_disk_is_refused_before_pip_starts(home, monkeypatch):
    free = manager.shutil.disk_usage(home).free
    with pytest.raises(EnvironmentUnavailable, match=r"needs about .* GB of disk; .* GB free on the disk holding"):
        manager.check_disk_space(home / "envs" / "torch", need=free * 4)
    manager.check_disk_space(home / "envs" / "torch", need=1)  # a folder that does not exist yet is fine
    monkeypatch.setattr(manager, "ENV_DISK_BYTES", free * 4)
    monkeypatch.setattr(manager.subprocess, "Popen", None)  # pip must not start
    with pytest.raises(EnvironmentUnavailable, match="WORKBENCH_HOME chooses"):
        manager.create("torch", progress=False)
