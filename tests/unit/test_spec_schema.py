"""DataSpec and BenchSpec fields are declared once (`spec.DATA_SCHEMA`, `spec.BENCH_SCHEMA`): the CLI,
sweep files and the session check them there, with the same message."""
from dataclasses import fields

import pytest

from workbench import cli, protocols, sweep
from workbench.errors import InvalidParams
from workbench.session import Session
from workbench.spec import BENCH_SCHEMA, DATA_SCHEMA, BenchSpec, DataSpec, parse_fields

MESSAGE = "bench.decode_tokens: got 1; allowed: an integer in [2, 4096]"


class NoWorker:
    def run(self, *a, **k):
        raise AssertionError("a worker was started for invalid input")


@pytest.mark.parametrize("cls, schema", [(DataSpec, DATA_SCHEMA), (BenchSpec, BENCH_SCHEMA)])
def test_the_schemas_hold_the_dataclass_fields_names_defaults_and_order(cls, schema):
    # Run keys hash the dataclasses' fields: the schema must describe them, not replace them.
    assert [(f.name, f.default) for f in fields(cls)] == [(p.name, p.default) for p in schema.params]


def test_cli_pairs_are_typed_by_the_schema():
    assert parse_fields(BenchSpec, ["batch_sizes=1, 4", "threads=none", "latency=false", "repeats=5"], "bench") == \
        {"batch_sizes": (1, 4), "threads": None, "latency": False, "repeats": 5}
    with pytest.raises(InvalidParams) as e:
        parse_fields(DataSpec, ["window=abc", "nope=1"], "data")
    text = str(e.value)
    assert "data.window: got 'abc', not an integer; allowed: an integer in [8, 32768]" in text
    assert "data.nope: expected NAME=VALUE with NAME one of source, split" in text


def test_an_out_of_range_bench_field_reads_the_same_from_the_cli_a_sweep_and_the_session(
        tmp_path, capsys, fault_method):
    store = tmp_path / "wb.sqlite"
    session = Session(store=store, executor=NoWorker(), progress=False)
    with pytest.raises(InvalidParams) as e:
        session.validate(session.make_spec("tiny-llama", "fault", {}, bench={"decode_tokens": 1}))
    assert MESSAGE in str(e.value)

    plan = sweep.plan(session, sweep.parse_sweep(
        'models = ["tiny-llama"]\n[bench]\ndecode_tokens = 1\n[[runs]]\nmethod = "fault"\n'))
    assert plan.invalid and MESSAGE in plan.invalid[0][1]

    assert cli.main(["run", "--model", "tiny-llama", "--method", "fault", "--bench", "decode_tokens=1",
                     "--store", str(store), "--quiet"]) == cli.EXIT_INVALID
    assert MESSAGE in capsys.readouterr().err
    assert len(session.store) == 0


def test_validation_normalizes_without_changing_a_valid_key(tmp_path, fault_method):
    session = Session(store=tmp_path / "wb.sqlite", executor=NoWorker(), progress=False)
    for name in protocols.names():
        spec = session.make_spec("tiny-llama", "fault", {}, protocol=name)
        valid = session.validate(spec)  # the method's parameters get their defaults: compare with those
        assert valid.key == spec.replace(params=valid.params).key
    spec = session.make_spec("tiny-llama", "fault", {}, bench={"batch_sizes": [1, 2, 4, 8], "repeats": 3.0})
    assert session.validate(spec).bench == BenchSpec()


def test_the_cli_help_lists_the_fields_from_the_schemas(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "decode_tokens (an integer in [2, 4096], default 32)" in out
    assert "threads (an integer in [1, 1024] or none, default none)" in out
    assert "eval_windows (an integer in [1, 10000], default 8)" in out
