"""Protocols by name (`workbench.protocols`): quick / standard / full, overrides on top of them, the
unknown name refused before any worker, the keys of stored runs unchanged, the `protocol` column,
no comparison (table section, Pareto front, report figure) across protocols, and `--protocol` on
every command, the API and the app. No worker runs: the executor records the specs it gets."""
from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

from workbench import plots, protocols
from workbench.cli import main
from workbench.protocols import UnknownProtocol
from workbench.result import RunResult, RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec, DataSpec, ModelSpec, RunSpec
from workbench.store import ResultStore

NEEDLE = "protocol: got 'fast'; allowed: quick, standard, full"
MIB = 2**20


# --- the names and their settings ------------------------------------------------------------------
def test_three_names_lightest_first_each_with_a_description():
    assert protocols.names() == ("quick", "standard", "full")
    for p in protocols.PROTOCOLS.values():
        assert p.description and "\n" not in p.description
    assert [v for _, v in protocols.choices()] == ["quick", "standard", "full"]
    assert protocols.get(None).name == protocols.DEFAULT == "standard" and protocols.APP_DEFAULT == "quick"
    assert protocols.get(" Quick ").name == "quick"  # as typed in a file or a terminal


def test_quick_is_the_former_light_protocol_and_standard_the_defaults():
    quick = protocols.get("quick")
    # Spelled out as LIGHT_DATA / LIGHT_BENCH were, so a change to `quick` cannot slip through.
    assert quick.data == DataSpec(eval_windows=4, window=256, calib_samples=16, calib_seq_len=256,
                                  embed_sentences=100)
    assert quick.bench == BenchSpec(batch_sizes=(1,), prompt_lengths=(32,), decode_tokens=16,
                                    generate_batch_sizes=(1,), repeats=2, reload_check=False)
    assert (protocols.get("standard").data, protocols.get("standard").bench) == (DataSpec(), BenchSpec())


def test_full_measures_more_of_everything_than_standard():
    std, full = protocols.get("standard"), protocols.get("full")
    assert full.data.eval_windows * full.data.window >= 8 * std.data.eval_windows * std.data.window
    assert set(std.bench.batch_sizes) < set(full.bench.batch_sizes)
    assert set(std.bench.prompt_lengths) < set(full.bench.prompt_lengths)
    assert full.bench.repeats > std.bench.repeats and full.bench.warmup > std.bench.warmup
    assert full.bench.reload_check and full.data.calib_samples == 128


def test_full_runs_may_take_longer_before_they_are_killed_without_changing_the_key():
    full = Session.make_spec("m", "rtn", protocol="full")
    assert full.timeout_s == 4 * 3600 and Session.make_spec("m", "rtn", protocol="quick").timeout_s is None
    mine = Session.make_spec("m", "rtn", protocol="full", timeout_s=60)
    assert mine.timeout_s == 60 and mine.key == full.key
    from workbench.sweep import parse_sweep

    specs = parse_sweep('models = ["m"]\n[[runs]]\nmethod = "rtn"\n[[runs]]\nmethod = "baseline"\ntimeout_s = 9\n',
                        protocol="full").specs
    assert [s.timeout_s for s in specs] == [4 * 3600, 9]


def test_full_fits_the_default_text_and_passes_validation(tmp_path):
    s = Session(store=tmp_path / "wb.sqlite", progress=False)
    s.validate(s.make_spec("smollm2-135m", "rtn", protocol="full"))  # no DataError: the text holds it


# --- keys: stored runs stay cache hits --------------------------------------------------------------
# Keys computed before protocols had names (RunSpec with DataSpec() / BenchSpec() and LIGHT_*).
KEYS = {("standard", "baseline"): "8aae067a5d5d6d6d", ("standard", "rtn"): "ed231660a1483782",
        ("quick", "baseline"): "486f1692f0e742af", ("quick", "rtn"): "6abf314f177d246c"}
RTN = {"bits": 4, "group_size": 64, "sym": False}


@pytest.mark.parametrize("protocol,method", list(KEYS))
def test_keys_of_standard_and_quick_runs_are_unchanged(protocol, method):
    params = RTN if method == "rtn" else {}
    spec = Session.make_spec("smollm2-135m", method, params, protocol=protocol)
    assert spec.key == KEYS[(protocol, method)]
    if protocol == "standard":  # no protocol at all is the standard one
        assert Session.make_spec("smollm2-135m", method, params).key == spec.key


# --- overrides ----------------------------------------------------------------------------------------
def test_fields_change_on_top_of_the_protocol_and_complete_settings_replace_it():
    quick = protocols.get("quick")
    s = Session.make_spec("m", "rtn", protocol="quick", bench={"repeats": 5, "batch_sizes": [1, 8]},
                          data={"eval_windows": 6})
    assert s.bench == replace(quick.bench, repeats=5, batch_sizes=(1, 8))
    assert s.data == replace(quick.data, eval_windows=6)
    whole = BenchSpec(latency=False)
    s = Session.make_spec("m", "rtn", protocol="quick", bench=whole)
    assert s.bench == whole and s.data == quick.data
    with pytest.raises(Exception, match=r"bench: unknown fields \['repeat'\]; allowed: "):
        Session.make_spec("m", "rtn", protocol="quick", bench={"repeat": 5})


def test_the_name_follows_the_settings_not_the_switches_or_the_machine():
    quick = protocols.get("quick")
    assert protocols.name_of(quick.data, replace(quick.bench, latency=False, save=False, reload_check=True,
                                                 threads=1, memory_limit_mb=4096)) == "quick"
    assert protocols.name_of(replace(quick.data, source="file:my.txt"), quick.bench) == "quick"
    custom = replace(quick.bench, batch_sizes=(1, 8))
    assert protocols.name_of(quick.data, custom) == "custom"
    assert protocols.describe(quick.data, custom) == "custom (quick with bench.batch_sizes=1,8)"
    assert protocols.describe(DataSpec(eval_windows=4), BenchSpec()) == "custom (standard with data.eval_windows=4)"


# --- an unknown name: refused with the names, before any worker --------------------------------------
class RecordingExecutor:
    """Records each spec and answers with a plausible result (perplexity, size, decode speed)."""

    def __init__(self):
        self.specs: list[RunSpec] = []

    def run(self, spec, target, env, progress=None, partial=None, **_kw):
        self.specs.append(spec)
        size = 4.0 if spec.method == "baseline" else 1.0 + len(self.specs) / 10
        return RunResult(key=spec.key, status=RunStatus.OK, spec=spec.to_dict(),
                         metrics={"weights_bytes": size * MIB, "perplexity": 100.0 + len(self.specs),
                                  "decode_tok_s": 50.0}, layers_quantized=1, layers_eligible=1)


@pytest.fixture
def recorder(monkeypatch):
    """Every executor the CLI or a session builds records instead of starting a worker."""
    rec = RecordingExecutor()
    from workbench.exec.subprocess import SubprocessExecutor

    monkeypatch.setattr(SubprocessExecutor, "run", lambda self, *a, **k: rec.run(*a, **k))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return rec


def test_an_unknown_name_is_refused_by_the_api_with_the_names(tmp_path, recorder):
    s = Session(store=tmp_path / "wb.sqlite", executor=recorder, progress=False)
    for call in (lambda: s.make_spec("tiny-llama", "rtn", protocol="fast"),
                 lambda: s.run("tiny-llama", "rtn", protocol="fast"),
                 lambda: protocols.specs("fast")):
        with pytest.raises(UnknownProtocol) as e:
            call()
        assert NEEDLE in str(e.value) and e.value.exit_code == 2
    assert recorder.specs == [] and len(s.store) == 0


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("argv", [
    ["run", "--model", "tiny-llama", "--method", "rtn", "--protocol", "fast"],
    ["compare", "--model", "tiny-llama", "--methods", "baseline", "--protocol", "fast"],
    ["recommend", "--model", "tiny-llama", "--max-ppl-increase", "5%", "--protocol", "fast"],
    ["sweep", "{tmp}/ok.toml", "--protocol", "fast"],
    ["results", "--protocol", "fast"],
], ids=["run", "compare", "recommend", "sweep", "results"])
def test_an_unknown_name_on_any_command_exits_2_naming_protocol(tmp_path, recorder, capsys, argv):
    (tmp_path / "ok.toml").write_text('models = ["tiny-llama"]\n[[runs]]\nmethod = "baseline"\n')
    ResultStore(tmp_path / "wb.sqlite")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--store", str(tmp_path / "wb.sqlite")]
    rc, _out, err = cli(capsys, *argv)
    assert rc == 2 and NEEDLE in err, err
    assert recorder.specs == []


# --- --protocol on each command ------------------------------------------------------------------------
def test_run_uses_the_named_protocol_with_single_fields_on_top(tmp_path, recorder, capsys):
    store = str(tmp_path / "wb.sqlite")
    rc, _out, err = cli(capsys, "run", "--model", "tiny-llama", "--method", "rtn", "--protocol", "quick",
                        "--bench", "repeats=5", "--data-field", "eval_windows=3", "--store", store, "--quiet")
    assert rc == 0, err
    quick = protocols.get("quick")
    (spec,) = recorder.specs
    assert spec.bench == replace(quick.bench, repeats=5) and spec.data == replace(quick.data, eval_windows=3)
    rc, _out, err = cli(capsys, "run", "--model", "tiny-llama", "--method", "rtn", "--store", store, "--quiet")
    assert rc == 0, err
    assert (recorder.specs[1].data, recorder.specs[1].bench) == (DataSpec(), BenchSpec())  # the CLI's default


def test_compare_measures_every_method_with_the_protocol(tmp_path, recorder, capsys):
    rc, out, err = cli(capsys, "compare", "--model", "tiny-llama", "--methods", "baseline", "rtn:bits=4",
                       "--protocol", "full", "--store", str(tmp_path / "wb.sqlite"), "--report",
                       str(tmp_path / "r.html"), "--quiet")
    assert rc == 0, err
    assert [protocols.name_of(s.data, s.bench) for s in recorder.specs] == ["full", "full"]
    assert "Measured with the full protocol." in (tmp_path / "r.html").read_text()


def test_sweep_takes_the_file_protocol_and_the_flag_replaces_it(tmp_path, recorder, capsys):
    path = tmp_path / "s.toml"
    path.write_text('models = ["tiny-llama"]\nprotocol = "quick"\n[bench]\nlatency = false\n'
                    '[[runs]]\nmethod = "rtn"\ngrid = {bits = [8, 4]}\n'
                    '[[runs]]\nmethod = "baseline"\nprotocol = "standard"\n')
    store = str(tmp_path / "wb.sqlite")
    rc, out, err = cli(capsys, "sweep", str(path), "--store", store, "--quiet", "--dry-run")
    assert rc == 0 and "protocols: quick 2, standard 1" in out, out + err
    rc, out, err = cli(capsys, "sweep", str(path), "--store", store, "--quiet")
    assert rc == 0, err
    names = [protocols.name_of(s.data, s.bench) for s in recorder.specs]
    assert names == ["quick", "quick", "standard"]
    assert all(s.bench.latency is False for s in recorder.specs)  # the [bench] table on top of each
    rc, out, err = cli(capsys, "sweep", str(path), "--store", store, "--quiet", "--protocol", "full")
    assert rc == 0, err
    assert [protocols.name_of(s.data, s.bench) for s in recorder.specs[3:]] == ["full"] * 3


def test_a_bad_protocol_key_in_a_sweep_file_names_where(tmp_path, recorder, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('models = ["tiny-llama"]\n[[runs]]\nmethod = "rtn"\nprotocol = "fast"\n')
    rc, _out, err = cli(capsys, "sweep", str(path), "--store", str(tmp_path / "wb.sqlite"))
    assert rc == 2 and f"{path}: runs[0].protocol: got 'fast'; allowed: quick, standard, full" in err, err
    assert recorder.specs == []


@pytest.mark.parametrize("flag,expected", [([], "quick"), (["--protocol", "standard"], "standard")])
def test_recommend_defaults_to_quick_without_latency(tmp_path, recorder, capsys, flag, expected):
    rc, out, err = cli(capsys, "recommend", "--model", "tiny-llama", "--max-ppl-increase", "50%", "--methods",
                       "rtn", "--max-runs", "2", "--store", str(tmp_path / "wb.sqlite"), "--quiet", *flag)
    assert rc == 0, out + err
    assert len(recorder.specs) == 3  # the baseline and the two runs allowed
    assert {protocols.name_of(s.data, s.bench) for s in recorder.specs} == {expected}
    assert not any(s.bench.latency or s.bench.save for s in recorder.specs)
    assert f"; {expected} protocol" in out and f"--protocol {expected}" in out  # the baseline line, the reproduce line


def test_recommend_with_a_speed_budget_measures_latency_the_protocols_way(tmp_path, recorder, capsys):
    rc, out, err = cli(capsys, "recommend", "--model", "tiny-llama", "--min-decode-tok-s", "10", "--methods",
                       "rtn", "--max-runs", "1", "--store", str(tmp_path / "wb.sqlite"), "--quiet")
    assert rc == 0, out + err
    assert all(s.bench.latency and protocols.name_of(s.data, s.bench) == "quick" for s in recorder.specs)


# --- the protocol column, and no comparison across protocols ---------------------------------------
def run_result(key: str, method: str, protocol: str | None, t: float, params: dict | None = None,
               **metrics: float) -> RunResult:
    data, bench = protocols.specs(protocol)
    spec = RunSpec(model=ModelSpec("m"), method=method, params=params or {}, data=data, bench=bench)
    # Through JSON, as the store keeps it (lists where the dataclasses hold tuples).
    return RunResult(key=key, status=RunStatus.OK, spec=json.loads(spec.to_json()), started_at=t, metrics=metrics)


def test_the_row_names_the_protocol_or_custom():
    for name in protocols.names():
        assert run_result("k", "baseline", name, 1).to_row()["protocol"] == name
    r = run_result("k", "baseline", "quick", 1)
    r.spec["bench"]["repeats"] = 7
    assert r.to_row()["protocol"] == "custom"
    assert RunResult(key="k", status="ok", spec={"model": "m"}).to_row()["protocol"] == "standard"  # defaults
    odd = RunResult(key="k", status="ok", spec={"model": "m", "bench": {"from_the_future": 1}})
    assert odd.to_row()["protocol"] == "custom"
    assert plots.summary_table(plots.results_frame([r]))["protocol"].tolist() == ["custom"]


def mixed_store() -> list[RunResult]:
    """One model, quick and standard runs: the same two configurations under each, and a quick run
    (30 MB, perplexity 12) that would dominate every standard run on a front drawn across both."""
    return [
        run_result("q0", "baseline", "quick", 1, weights_bytes=500 * MIB, perplexity=10.0),
        run_result("q1", "rtn", "quick", 2, RTN, weights_bytes=30 * MIB, perplexity=10.5),
        run_result("s0", "baseline", "standard", 3, weights_bytes=500 * MIB, perplexity=14.0),
        run_result("s1", "rtn", "standard", 4, RTN, weights_bytes=100 * MIB, perplexity=15.0),
        run_result("s2", "hqq", "standard", 5, {"nbits": 4}, weights_bytes=90 * MIB, perplexity=16.0),
    ]


def test_the_cli_table_has_a_labelled_section_per_protocol_each_with_its_baseline(tmp_path, capsys):
    store = ResultStore(tmp_path / "wb.sqlite")
    for r in mixed_store():
        store.append(r)
    rc, out, err = cli(capsys, "results", "--store", str(tmp_path / "wb.sqlite"))
    assert rc == 0, err
    heads = [line for line in out.splitlines() if line.startswith("m")]
    assert heads == ["m (quick): fp32 baseline 500.0 MB, perplexity 10.000",
                     "m (standard): fp32 baseline 500.0 MB, perplexity 14.000"]
    quick_part, standard_part = out.split(heads[1])
    assert "+5.0" in quick_part and "hqq" not in quick_part  # rtn against the quick baseline: 10.5 / 10
    assert "+7.1" in standard_part  # rtn against the standard baseline: 15 / 14
    # One model, one protocol: no label needed.
    rc, out, _ = cli(capsys, "results", "--store", str(tmp_path / "wb.sqlite"), "--protocol", "standard")
    assert out.splitlines()[0] == "m: fp32 baseline 500.0 MB, perplexity 14.000" and "10.500" not in out
    rc, out, _ = cli(capsys, "results", "--store", str(tmp_path / "wb.sqlite"), "--protocol", "full")
    assert rc == 0 and out.strip() == "no results measured with the full protocol"
    rc, out, _ = cli(capsys, "results", "--store", str(tmp_path / "wb.sqlite"), "--format", "json",
                     "--protocol", "quick")
    rows = json.loads(out)
    assert [r["key"] for r in rows] == ["q0", "q1"] and {r["protocol"] for r in rows} == {"quick"}


def test_no_pareto_front_across_protocols():
    df = plots.results_frame(mixed_store())
    assert plots.comparison_groups(df).tolist() == ["m (quick)"] * 2 + ["m (standard)"] * 3
    fig = plots.accuracy_vs_memory(df)
    fronts = [t for t in fig.data if t.name == "Pareto front"]
    # One front across both, and the quick rtn run (30 MB, 10.5) would dominate every standard run;
    # per protocol, the standard front holds all three standard runs.
    assert [sorted(f.y) for f in fronts] == [[10.0, 10.5], [14.0, 15.0, 16.0]]
    legend = {t.name for t in fig.data}
    assert {"m (quick)", "m (standard)"} <= legend  # the symbol of each group, in the legend


def test_the_cli_front_and_the_report_keep_to_one_protocol(capsys):
    from workbench.cli import _print_front
    from workbench.report import build_report

    _print_front(mixed_store())
    out = capsys.readouterr().out
    assert "m (quick):" in out and "m (standard):" in out
    standard = out.split("m (standard):")[1]
    assert "hqq" in standard and "rtn" in standard  # not hidden behind the quick run
    page = build_report(mixed_store())
    assert "<h3>m (quick)</h3>" in page and "<h3>m (standard)</h3>" in page
    assert "Protocols: quick 2 runs, standard 3 runs" in page and "<th>protocol</th>" in page


def test_one_protocol_needs_no_label():
    runs = [r for r in mixed_store() if r.key.startswith("s")]
    assert set(plots.comparison_groups(plots.results_frame(runs))) == {"m"}
    assert plots.compact_text(plots.results_frame(runs)).startswith("m: fp32 baseline")


# --- the app -----------------------------------------------------------------------------------------
@pytest.fixture
def app(tmp_path, monkeypatch):
    from workbench.ui.app import App

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a = App(Session(store=tmp_path / "wb.sqlite", executor=RecordingExecutor(), progress=False))
    queued: list[RunSpec] = []
    monkeypatch.setattr(a.queue, "add", lambda spec: queued.append(spec) or spec)
    a.queued = queued
    a.select(model="tiny-llama", method="rtn")
    return a


def test_the_app_defaults_to_quick_and_the_selector_chooses(app):
    assert app.protocol.value == "quick" and list(app.protocol.options) == ["quick", "standard", "full"]
    assert "4 windows of 256 tokens" in app.protocol_note.value
    app.run()
    app.select(protocol="full")
    assert "1024" in app.protocol_note.value and not app.run_button.disabled
    app.run()
    app.protocol.value = "standard"  # the dropdown itself, as a click sets it
    app.run()
    assert [protocols.name_of(s.data, s.bench) for s in app.queued] == ["quick", "full", "standard"]
    with pytest.raises(UnknownProtocol, match="allowed: quick, standard, full"):
        app.select(protocol="fast")
    assert app.errors.value == ""


def test_the_app_says_when_its_settings_are_not_a_named_protocol(tmp_path):
    from workbench.ui.app import App

    a = App(Session(store=tmp_path / "wb.sqlite", progress=False), bench=BenchSpec(latency=False))
    assert "custom (quick with bench.batch_sizes=1,2,4,8" in a.protocol_note.value


def test_the_app_validates_the_protocols_sizes_on_your_text(app, tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("word " * 4000)  # 20k characters: 10k to evaluate on, enough for quick (4 x 256) only
    app.data = {"source": f"file:{path}"}  # a single field on top of whichever protocol is selected
    app.revalidate()
    assert not app.run_button.disabled, app.reason.value
    app.select(protocol="full")
    assert app.run_button.disabled and "32 x 1024" in app.reason.value
    app.select(protocol="quick")
    assert not app.run_button.disabled


def test_the_sweep_example_follows_the_selector_until_edited(app):
    assert 'protocol = "quick"' in app.sweeps.text.value
    app.select(protocol="standard")
    assert 'protocol = "standard"' in app.sweeps.text.value
    plan = app.sweeps.check()
    assert plan is not None and "standard protocol" in app.sweeps.summary.value
    app.sweeps.text.value = app.sweeps.text.value.replace("ui sweep", "mine")
    app.select(protocol="full")
    assert 'protocol = "standard"' in app.sweeps.text.value  # edited: it keeps its own


def test_the_budget_search_uses_the_apps_protocol(app, monkeypatch):
    seen = {}

    def fake(session, model, budget, **kw):
        seen.update(kw, model=model)
        raise RuntimeError("stop here")

    monkeypatch.setattr("workbench.recommend.recommend", fake)
    app.select(protocol="standard")
    app.recommend.search(wait=True)
    assert seen["protocol"] == "standard" and seen["model"] == "tiny-llama"
    assert "stop here" in app.recommend.outcome.value


def test_the_results_table_shows_and_filters_the_protocol(tmp_path):
    from workbench.ui.views import table_view

    df = plots.results_frame(mixed_store())
    assert "protocol" in plots.SUMMARY_COLUMNS
    assert table_view(df, "quick")["label"].tolist() == ["baseline", "rtn bits=4 group_size=64 sym=false"]
    assert set(table_view(df, sort_by="protocol")["protocol"]) == {"quick", "standard"}
    assert isinstance(df, pd.DataFrame)
