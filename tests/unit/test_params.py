import pytest

from workbench.errors import InvalidParams
from workbench.params import Check, Param, Schema

SCHEMA = Schema(
    (
        Param("bits", "int", 4, minimum=2, maximum=8, help="bit width"),
        Param("sym", "bool", True),
        Param("group_size", "int", 64, minimum=-1),
        Param("quant_type", "choice", "nf4", choices=("nf4", "fp4"), visible_when={"bits": 4}),
        Param("threshold", "float", 6.0, minimum=0.0, visible_when={"bits": (8,)}),
        Param("skip", "list", ["lm_head"]),
        Param("note", "str", None, nullable=True),
    ),
    checks=(Check(("sym", "group_size"), lambda v: "sym needs group_size != 0" if v["sym"] and v["group_size"] == 0 else None),),
)


def test_defaults_fill_and_hidden_params_drop():
    assert SCHEMA.defaults() == {"bits": 4, "sym": True, "group_size": 64, "quant_type": "nf4", "skip": ["lm_head"], "note": None}
    out = SCHEMA.normalize({"bits": "8"})
    assert out["bits"] == 8 and "quant_type" not in out and out["threshold"] == 6.0


def test_two_spellings_normalize_the_same():
    assert SCHEMA.normalize({"bits": "4", "sym": "true"}) == SCHEMA.normalize({})


def test_all_errors_reported_at_once_with_names_and_allowed_values():
    with pytest.raises(InvalidParams) as e:
        SCHEMA.normalize({"bits": 9, "sym": "maybe", "colour": 1, "group_size": "x"})
    names = {err.param for err in e.value.errors}
    assert names == {"bits", "sym", "colour", "group_size"}
    text = str(e.value)
    assert "[2, 8]" in text and "true or false" in text and "unknown parameter" in text and "not an integer" in text


def test_choice_is_case_insensitive_and_refuses_others():
    assert SCHEMA.normalize({"quant_type": "FP4"})["quant_type"] == "fp4"
    with pytest.raises(InvalidParams, match="quant_type.*one of nf4, fp4"):
        SCHEMA.normalize({"quant_type": "int4"})


def test_setting_a_param_that_does_not_apply_is_an_error():
    with pytest.raises(InvalidParams, match="threshold: only applies when bits=8"):
        SCHEMA.normalize({"bits": 4, "threshold": 3.0})


def test_cross_parameter_check_runs_after_types():
    with pytest.raises(InvalidParams, match="sym needs group_size"):
        SCHEMA.normalize({"group_size": 0})


def test_bool_is_not_an_int_and_nan_is_refused():
    with pytest.raises(InvalidParams, match="bits"):
        SCHEMA.normalize({"bits": True})
    with pytest.raises(InvalidParams, match="threshold: got nan"):
        SCHEMA.normalize({"bits": 8, "threshold": "nan"})


def test_list_and_nullable():
    out = SCHEMA.normalize({"skip": "a, b,", "note": "none"})
    assert out["skip"] == ["a", "b"] and out["note"] is None


def test_cli_parsing_and_describe():
    assert SCHEMA.parse_cli(["bits=8", "skip=a,b"]) == {"bits": "8", "skip": "a,b"}
    with pytest.raises(InvalidParams, match="NAME=VALUE"):
        SCHEMA.parse_cli(["bits"])
    rows = SCHEMA.describe()
    assert [r["name"] for r in rows][:2] == ["bits", "sym"] and rows[0]["allowed"] == "an integer in [2, 8]"


def test_schema_declaration_errors():
    with pytest.raises(ValueError, match="duplicate"):
        Schema((Param("a", "int", 1), Param("a", "int", 2)))
    with pytest.raises(ValueError, match="unknown parameters"):
        Schema((Param("a", "int", 1, visible_when={"b": 1}),))
    with pytest.raises(ValueError, match="no choices"):
        Schema((Param("a", "choice", 1),))
