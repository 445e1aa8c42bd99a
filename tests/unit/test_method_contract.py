"""The method contract (`workbench.testing.check_method`): every built-in method keeps it, and a
deliberately broken method is refused with every broken rule named. The build part (a worker
quantizing a tiny model) runs in tests/integration/test_method_contract.py."""
from __future__ import annotations

import sys
import textwrap

import pytest

from workbench import registry
from workbench.methods.base import Method
from workbench.params import Param, Schema
from workbench.testing import MethodContractError, bad_values, check_method


@pytest.mark.parametrize("name", sorted(registry.methods()))
def test_every_built_in_method_keeps_the_contract(name):
    report = check_method(registry.get(name).cls)
    assert not report.failed
    assert any("invalid values refused" in p for p in report.passed)
    assert any("imports no backend library" in p for p in report.passed)


class Lenient(Param):
    def coerce(self, value):  # accepts anything: the bug the contract must catch
        return value


class Broken(Method):
    name = "Broken Method"
    backend = "nowhere"
    model_kinds = ("causal-lm", "spreadsheet")
    schema = Schema((
        Param("bits", "int", 1, minimum=2, maximum=8),  # a default its own bounds refuse
        Lenient("ratio", "float", 0.5, minimum=0.0, maximum=1.0),
    ))

    def build(self, ctx, params):
        raise NotImplementedError

    def code(self, model_id, params):
        return "model = load(\n"  # does not compile


def test_a_broken_method_is_refused_with_every_broken_rule_named():
    with pytest.raises(MethodContractError) as e:
        check_method(Broken, imports=False)
    text = str(e.value)
    assert "method 'Broken Method' breaks 5 rule(s)" in text
    assert "name 'Broken Method' must match" in text
    assert "model_kinds ['causal-lm', 'spreadsheet'] must be one or more of causal-lm, encoder" in text
    assert "the defaults do not validate: bits: got 1; allowed: an integer in [2, 8]" in text
    assert "ratio accepts the invalid value(s) None, 'abc', nan, -1.0, 2.0; allowed: a number in [0, 1]" in text
    assert "code() with the defaults fails: SyntaxError" in text


def test_a_taken_name_and_a_module_that_imports_its_backend_are_named(tmp_path, monkeypatch):
    # a stand-in backend package, so the module imports "gguf" at import time
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "__init__.py").write_text("")
    (tmp_path / "eager_plugin.py").write_text(textwrap.dedent("""
        import gguf  # at import time: the bug
        from workbench.methods.rtn import RTN

        class Eager(RTN):
            name = "rtn"
            backend = "gguf"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    import eager_plugin

    try:
        with pytest.raises(MethodContractError) as e:
            check_method(eager_plugin.Eager)
    finally:
        sys.modules.pop("eager_plugin", None)
    text = str(e.value)
    assert "name 'rtn' is already taken by workbench.methods.rtn:RTN" in text
    assert "importing eager_plugin imports backend modules gguf: import them inside build()" in text


def test_a_required_parameter_must_be_named_by_validation():
    class Lax(Broken):
        name = "lax"
        model_kinds = ("causal-lm",)
        required = ("path",)
        schema = Schema((Param("path", "str", "somewhere"),))

        def code(self, model_id, params):
            return "pass\n"

    with pytest.raises(MethodContractError, match=r"required parameters \['path'\] validate with their defaults"):
        check_method(Lax, imports=False)


@pytest.mark.parametrize("param,expected", [
    (Param("b", "bool", True), [None, "maybe", 2]),
    (Param("n", "int", 4, minimum=2, maximum=8), [None, "abc", 1.5, 1, 9]),
    (Param("n", "int", 4, choices=(2, 4, 8)), [None, "abc", 1.5, 9]),
    (Param("c", "choice", "a", choices=("a", "b"), nullable=True), ["no-such-choice"]),
    (Param("l", "list", ["*"]), [None, 42, [1, 2]]),
])
def test_the_invalid_values_tried(param, expected):
    assert bad_values(param) == expected
