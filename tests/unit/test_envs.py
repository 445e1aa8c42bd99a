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


def test_a_family_outside_the_binder_profile_is_not_installed_in_this_demo(home, monkeypatch, tmp_path):
    """On Binder (binder/start sets WORKBENCH_PROFILE=binder) a method of another family is refused
    before any worker starts, with the reason and the one command that installs it."""
    from workbench import registry
    from workbench.result import RunStatus
    from workbench.session import Session

    monkeypatch.setenv("WORKBENCH_PROFILE", "binder")
    onnx = manager.status("onnx")
    assert onnx.state == "missing"
    assert "is not installed in this demo (the binder profile holds torch, openvino)" in onnx.reason
    assert "`workbench env create onnx`" in onnx.reason
    # A family of the profile that is missing is a broken installation, said as usual.
    assert "not created in" in manager.status("torch").reason
    reason = registry.unavailable_reason(registry.get("ort-dynamic"))
    assert reason.startswith("environment 'onnx' is not installed in this demo"), reason
    r = Session(store=tmp_path / "wb.sqlite", progress=False).run("tiny-bert", "ort-dynamic")
    assert r.status is RunStatus.UNAVAILABLE and "workbench env create onnx" in r.error
    # Without the profile (make setup's `all`) the usual message.
    monkeypatch.delenv("WORKBENCH_PROFILE")
    assert "not created in" in manager.status("onnx").reason
    with pytest.raises(InvalidSpec, match="allowed: all, binder"):
        manager.profile_families("tiny")


def test_dedupe_hard_links_identical_files_across_environments_and_keeps_the_rest(tmp_path):
    from workbench.envs.dedupe import MIN_BYTES, link_duplicates

    a, b = tmp_path / "a" / "site-packages", tmp_path / "b" / "site-packages"
    for root in (a, b):
        (root / "torch" / "__pycache__").mkdir(parents=True)
        (root / "torch" / "lib.so").write_bytes(b"\x7fELF" + b"1" * MIN_BYTES)
        (root / "torch" / "__pycache__" / "x.pyc").write_bytes(b"c" * MIN_BYTES)  # rewritten in place by Python
        (root / "small.py").write_text("x = 1\n")
    (a / "own.bin").write_bytes(b"a" * MIN_BYTES)
    (b / "own.bin").write_bytes(b"b" * MIN_BYTES)  # same size, other content
    linked = link_duplicates([tmp_path / "a", tmp_path / "b"])
    assert (linked.files, linked.bytes_saved) == (1, MIN_BYTES + 4)
    assert (a / "torch" / "lib.so").stat().st_ino == (b / "torch" / "lib.so").stat().st_ino
    assert (b / "torch" / "lib.so").read_bytes().startswith(b"\x7fELF")
    assert (a / "own.bin").read_bytes() != (b / "own.bin").read_bytes()
    assert (a / "torch" / "__pycache__" / "x.pyc").stat().st_ino != (b / "torch" / "__pycache__" / "x.pyc").stat().st_ino
    # pip's uninstall in one environment unlinks its name only: the other keeps the file.
    (a / "torch" / "lib.so").unlink()
    assert (b / "torch" / "lib.so").read_bytes().startswith(b"\x7fELF")
    assert link_duplicates([tmp_path / "a", tmp_path / "b"]).files == 0  # nothing left to link
