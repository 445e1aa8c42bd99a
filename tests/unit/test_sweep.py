"""Sweep files: expansion, ranges, deduplication, the plan against a store, and every bad input named."""
import pytest

from workbench import sweep
from workbench.result import RunResult, RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec, DataSpec

GOOD = """
name = "demo"
models = ["tiny-llama"]
timeout_s = 600
[data]
eval_windows = 2
[bench]
latency = false

[[runs]]
method = "rtn"
params = {sym = false}
grid = {bits = [8, 4], group_size = {start = 16, stop = 64, factor = 2}}

[[runs]]
method = "rtn"
models = ["tiny-llama", "tiny-gpt2"]
grid = {bits = 4, group_size = [16]}
bench = {accuracy = false}
"""


def test_a_sweep_expands_to_the_product_of_its_grids_on_each_model():
    s = sweep.parse_sweep(GOOD)
    assert s.name == "demo"
    first = [x for x in s.specs if x.params.get("sym") is False]
    assert sorted((x.params["bits"], x.params["group_size"]) for x in first) == \
        sorted((b, g) for b in (8, 4) for g in (16, 32, 64))
    assert all(x.model.id == "tiny-llama" and x.timeout_s == 600 for x in first)
    assert first[0].data == DataSpec(eval_windows=2) and first[0].bench == BenchSpec(latency=False)
    second = s.specs[len(first):]
    assert [x.model.id for x in second] == ["tiny-llama", "tiny-gpt2"]
    # block tables merge over the top-level ones
    assert second[0].bench == BenchSpec(latency=False, accuracy=False)


@pytest.mark.parametrize("value,expected", [
    ({"start": 2, "stop": 8, "step": 2}, [2, 4, 6, 8]),
    ({"start": 0.6, "stop": 1.0, "step": 0.2}, [0.6, 0.8, 1.0]),
    ({"start": 128, "stop": 16, "factor": 0.5}, [128, 64, 32, 16]),
    ({"start": 32, "stop": 100, "factor": 2}, [32, 64]),
    ({"start": 1, "stop": 1, "step": 1}, [1]),
    ({"start": 4, "stop": 4, "factor": 2}, [4]),
    ({"start": 0.001, "stop": 1, "factor": 10}, [0.001, 0.01, 0.1, 1.0]),
    ({"start": -1, "stop": -8, "factor": 2}, [-1, -2, -4, -8]),
    ([3, 5], [3, 5]),
    (4, [4]),
])
def test_ranges_include_their_stop(value, expected):
    got = sweep.grid_values(value, "g")
    assert got == expected and [type(v) for v in got] == [type(v) for v in expected]


def _error(text):
    with pytest.raises(sweep.SweepError) as e:
        sweep.parse_sweep(text)
    return str(e.value)


@pytest.mark.parametrize("text,needle", [
    ("models = [", "not valid TOML"),
    ('models = ["tiny-llama"]', "runs: expected one or more [[runs]] tables"),
    ('models = ["m"]\nrunz = 1\n[[runs]]\nmethod = "rtn"', "unknown key runz; allowed: name, models"),
    ('[[runs]]\nmethod = "rtn"', "runs[0]: no models"),
    ('models = ["m"]\n[[runs]]\ngrid = {bits = [4]}', "runs[0].method: expected a method name"),
    ('models = ["m"]\n[[runs]]\nmethod = "rtn"\ngrid = {bits = []}', "runs[0].grid.bits: an empty list"),
    ('models = ["m"]\n[[runs]]\nmethod = "rtn"\ngrid = {bits = {start = 2, stop = 8}}',
     "exactly one of step or factor"),
    ('models = ["m"]\n[[runs]]\nmethod = "rtn"\ngrid = {bits = {start = 8, stop = 2, step = 1}}',
     "step 1 never goes from 8 to 2"),
    ('models = ["m"]\n[[runs]]\nmethod = "rtn"\ngrid = {bits = {start = 1, stop = 9000000, step = 1}}',
     "a range may give at most 1000"),
    ('models = ["m"]\n[[runs]]\nmethod = "rtn"\ngrid = {bits = {start = 2, stop = 8, factor = 1}}',
     "factor 1 never goes"),
    ('models = ["m"]\n[[runs]]\nmethod = "rtn"\ngrid = {bits = {start = 2, stop = 8, step = 2, last = 1}}',
     "unknown key last; allowed: start, stop, step, factor"),
    ('models = ["m"]\n[[runs]]\nmethod = "rtn"\nparams = {bits = 4}\ngrid = {bits = [4]}',
     "bits both in params and in grid"),
    ('models = ["m"]\n[bench]\nlatencyy = false\n[[runs]]\nmethod = "rtn"', "bench: unknown key latencyy"),
    ('models = "m"\n[[runs]]\nmethod = "rtn"\nmodels = [1]', "runs[0].models: expected a list of model names"),
    ('models = ["m"]\n[[runs]]\nmethod = "rtn"\ngrid = [4]', "runs[0].grid: expected a table"),
])
def test_bad_sweep_files_are_refused_naming_the_key(text, needle):
    assert needle in _error(text)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(sweep.SweepError, match="does not exist"):
        sweep.load_sweep(tmp_path / "nope.toml")


def test_the_plan_validates_dedupes_and_splits_stored_failed_and_to_run(store_path, fault_method):
    session = Session(store=store_path, progress=False)
    s = sweep.parse_sweep("""
models = ["tiny-llama"]
[[runs]]
method = "fault"
grid = {mode = ["raise", "exit"]}
[[runs]]
method = "fault"
params = {mode = "raise"}   # the same configuration again
[[runs]]
method = "fault"
grid = {mode = "hang", seconds = [-5]}
""")
    p = sweep.plan(session, s)
    assert p.duplicates == 1 and len(p.specs) == 2 and p.invalid[0][0].params["seconds"] == -5
    assert any("seconds" in problem for problem in p.invalid[0][1])

    first, second = p.specs
    session.store.append(RunResult(key=first.key, status=RunStatus.OK, spec=first.to_dict()))
    session.store.append(RunResult(key=second.key, status=RunStatus.CRASHED, spec=second.to_dict(), error="boom"))
    p = sweep.plan(session, s)
    assert list(p.stored) == [first.key] and list(p.failed) == [second.key] and p.todo == []
    assert "1 failed before (skipped" in p.summary()
    assert [x.key for x in sweep.plan(session, s, retry_failed=True).todo] == [second.key]
    # cancelled, or interrupted with its coordinator (a sweep killed halfway): no verdict, it runs again
    session.store.append(RunResult(key=second.key, status=RunStatus.CANCELLED, spec=second.to_dict(),
                                   error="interrupted: the process that ran it ended before the run did"))
    p = sweep.plan(session, s)
    assert p.failed == {} and [x.key for x in p.todo] == [second.key]


def test_the_cli_refuses_a_sweep_with_any_invalid_configuration_before_running_one(tmp_path, capsys, fault_method):
    from workbench import cli

    f = tmp_path / "s.toml"
    f.write_text('models = ["tiny-llama"]\n[[runs]]\nmethod = "fault"\ngrid = {mode = "hang", seconds = [1, -5]}\n')
    store = tmp_path / "wb.sqlite"
    assert cli.main(["sweep", str(f), "--store", str(store), "--quiet"]) == cli.EXIT_INVALID
    err = capsys.readouterr().err
    assert "seconds" in err and "1 invalid configurations; nothing was run" in err
    assert len(Session(store=store, progress=False).store) == 0

    assert cli.main(["sweep", str(tmp_path / "missing.toml"), "--store", str(store)]) == cli.EXIT_INVALID
    assert "missing.toml does not exist" in capsys.readouterr().err

    f.write_text('models = ["tiny-llama"]\n[[runs]]\nmethod = "fault"\ngrid = {mode = ["raise", "exit"]}\n')
    assert cli.main(["sweep", str(f), "--store", str(store), "--dry-run"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "2 configurations, 0 already stored, 2 to run" in out and out.count("to run  tiny-llama fault") == 2
    assert len(Session(store=store, progress=False).store) == 0
