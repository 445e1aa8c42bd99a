"""One home and one store, found without environment variables (workbench/paths.py), and
`workbench info` saying which rule chose them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench import paths
from workbench.cli import main
from workbench.errors import InvalidSpec

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any WORKBENCH_* variable: a fresh shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    env.update(extra)
    return env


@pytest.fixture
def no_vars(monkeypatch, tmp_path):
    for k in [k for k in os.environ if k.startswith("WORKBENCH_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return tmp_path


def fake_checkout(root: Path, home: bool = True, results: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text('[project]\nname = "workbench"\n')
    if home:
        (root / ".workbench").mkdir()
    if results:
        (root / "results").mkdir()
    return root


def test_this_package_runs_from_the_checkout():
    assert paths.checkout() == ROOT


def test_the_checkout_home_and_store_win_without_variables(no_vars, monkeypatch):
    root = fake_checkout(no_vars / "clone")
    monkeypatch.setattr(paths, "checkout", lambda: root)
    home, store = paths.resolve_home(), paths.resolve_store()
    assert (home.path, home.rule) == (root / ".workbench", "checkout")
    assert (store.path, store.rule) == (root / "results" / "workbench.sqlite", "checkout")
    assert paths.home() == root / ".workbench"


def test_a_checkout_without_workbench_falls_back_to_the_user_cache_and_says_why(no_vars, monkeypatch):
    root = fake_checkout(no_vars / "clone", home=False)
    monkeypatch.setattr(paths, "checkout", lambda: root)
    home = paths.resolve_home()
    assert home.path == no_vars / "user" / ".cache" / "workbench"
    assert home.rule == "user-cache" and "has no .workbench/" in home.why and "make setup" in home.why
    assert paths.resolve_store().path == home.path / "results" / "workbench.sqlite"
    # a results/ folder alone keeps the store in the checkout (where `make demo` wrote it)
    (root / "results").mkdir()
    assert paths.resolve_store().path == root / "results" / "workbench.sqlite"


def test_outside_a_checkout_everything_is_under_the_user_cache(no_vars, monkeypatch):
    monkeypatch.setattr(paths, "checkout", lambda: None)
    assert paths.resolve_home().rule == "user-cache"
    assert "not running from a source checkout" in paths.resolve_home().why
    assert paths.store_path() == no_vars / "user" / ".cache" / "workbench" / "results" / "workbench.sqlite"


def test_variables_override_the_rules(no_vars, monkeypatch):
    root = fake_checkout(no_vars / "clone")
    monkeypatch.setattr(paths, "checkout", lambda: root)
    monkeypatch.setenv("WORKBENCH_HOME", str(no_vars / "elsewhere"))
    monkeypatch.setenv("WORKBENCH_STORE", str(no_vars / "my.sqlite"))
    assert paths.resolve_home().rule == "env" and paths.home() == no_vars / "elsewhere"
    assert paths.resolve_store().rule == "env" and paths.store_path() == no_vars / "my.sqlite"
    assert paths.store_path(no_vars / "given.sqlite") == no_vars / "given.sqlite"


@pytest.mark.parametrize("where,words", [("file", "is a file, not a directory"),
                                         ("under-file", "cannot be created")])
def test_a_bad_workbench_home_is_named(no_vars, monkeypatch, capsys, where, words):
    f = no_vars / "a-file"
    f.write_text("x")
    value = str(f) if where == "file" else str(f / "home")
    monkeypatch.setenv("WORKBENCH_HOME", value)
    with pytest.raises(InvalidSpec, match=f"WORKBENCH_HOME={value} {words}"):
        paths.home()
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert f"WORKBENCH_HOME={value}" in err and "unset it" in err


def test_info_reports_the_rules_from_any_directory(tmp_path):
    """A fresh shell (no WORKBENCH_* variable) in another directory still finds the checkout's home."""
    p = subprocess.run([sys.executable, "-m", "workbench.cli", "info", "--json"], cwd=tmp_path,
                       env=clean_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    facts = json.loads(p.stdout)
    if (ROOT / ".workbench").is_dir():
        assert facts["home"] == {"path": str(ROOT / ".workbench"), "rule": "checkout",
                                 "why": f"the package runs from the checkout {ROOT}, which has .workbench/"}
        assert facts["store"]["path"] == str(ROOT / "results" / "workbench.sqlite")
    else:
        assert facts["home"]["rule"] == "user-cache"
    assert [e["name"] for e in facts["environments"]][:2] == ["torch", "openvino"]
    assert facts["overrides"] == {"WORKBENCH_HOME": None, "WORKBENCH_STORE": None}
    text = subprocess.run([sys.executable, "-m", "workbench.cli", "info"], cwd=ROOT / "notebooks",
                          env=clean_env(), capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and f"home:  {facts['home']['path']}" in text.stdout
    assert facts["home"]["why"] in text.stdout and "overrides: none" in text.stdout
