import subprocess
import sys

import pytest

from workbench import registry
from workbench.errors import UnknownMethod
from workbench.methods.base import Method
from workbench.params import Schema


def test_builtins_come_from_entry_points():
    ms = registry.methods()
    assert {"baseline", "rtn"} <= set(ms)
    assert ms["rtn"].target == "workbench.methods.rtn:RTN" and ms["rtn"].dist == "workbench"


def test_unknown_method_lists_the_allowed_ones():
    with pytest.raises(UnknownMethod, match="unknown method 'gptq9'.*baseline.*rtn"):
        registry.get("gptq9")


def test_register_refuses_duplicates_and_non_methods():
    class Dup(Method):
        name = "rtn"
        backend = "x"
        schema = Schema()

        def build(self, ctx, params):
            raise NotImplementedError

    with pytest.raises(TypeError, match="already registered"):
        registry.register(Dup)
    with pytest.raises(TypeError, match="not a workbench Method"):
        registry.register(dict)  # type: ignore[arg-type]

    class NoName(Method):
        backend = "x"

        def build(self, ctx, params):
            raise NotImplementedError

    with pytest.raises(TypeError, match="'name'"):
        registry.register(NoName)


def test_missing_environment_makes_a_method_unavailable_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    monkeypatch.delenv("WORKBENCH_ENV_TORCH", raising=False)
    rows = {r["name"]: r for r in registry.describe_all()}
    assert rows["rtn"]["available"] is False
    assert "workbench env create torch" in rows["rtn"]["reason"]
    for key in ("name", "backend", "env", "available", "reason", "params"):
        assert key in rows["rtn"]


def test_listing_methods_imports_no_torch():
    code = ("import sys, workbench, workbench.registry as r, workbench.session, workbench.cli; r.describe_all(); "
            "bad = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]; sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
