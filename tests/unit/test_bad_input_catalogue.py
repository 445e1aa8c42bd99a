"""The bad-input catalogue: what a user can get wrong, across methods, models, data sources, sweep
files, budgets, stores, command-line arguments and widget values, one row each.

Every row must end with a message naming what is wrong and what is allowed (the `needle`), the
documented exit code (README: 2 invalid input, 4 unavailable here), no worker started (the
executors are replaced by a tripwire: validation must know before any process starts) and nothing
stored as a success. The commands run in this process (`workbench.cli.main`), so the whole table
takes seconds; tests/integration/test_cli_contract.py runs a few of them as real subprocesses.
"""
from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from workbench.cli import main

MODEL = ["--model", "tiny-llama"]
SWEEP_HEAD = 'name = "s"\nmodels = ["tiny-llama"]\n'

# (id, command line, exit code, needle in stderr). {tmp} is a folder of prepared bad files.
CLI_CASES = [
    # --- methods and their parameters -------------------------------------------------
    ("unknown method", ["run", *MODEL, "--method", "nope"], 2, "unknown method 'nope'; allowed: "),
    ("out of range", ["run", *MODEL, "--method", "rtn", "--param", "bits=12"], 2,
     "bits: got 12; allowed: an integer in [2, 8]"),
    ("wrong type int", ["run", *MODEL, "--method", "rtn", "--param", "bits=four"], 2, "not an integer; allowed"),
    ("wrong type bool", ["run", *MODEL, "--method", "rtn", "--param", "sym=maybe"], 2,
     "sym: got 'maybe'; allowed: true or false"),
    ("unknown parameter", ["run", *MODEL, "--method", "rtn", "--param", "wat=1"], 2,
     "wat: unknown parameter; allowed: bits"),
    ("parameter without =", ["run", *MODEL, "--method", "rtn", "--param", "bits"], 2, "expected NAME=VALUE"),
    ("group does not divide", ["run", *MODEL, "--method", "rtn", "--param", "group_size=48"], 2, "group_size"),
    ("selection matches nothing", ["run", *MODEL, "--method", "rtn", "--param", "include=*nothing*"], 2,
     "include=['*nothing*'] with exclude=['lm_head'] selects none of the"),
    ("not a choice", ["run", *MODEL, "--method", "hqq", "--param", "nbits=5"], 2, "nbits: got 5; allowed: one of"),
    ("ratio out of range", ["run", *MODEL, "--method", "ov-weight", "--param", "bits=4", "--param", "ratio=1.5"],
     2, "ratio: got 1.5; allowed: a number in [0, 1]"),
    ("contradictory options", ["run", *MODEL, "--method", "ov-weight", "--param", "bits=8", "--param",
                               "group_size=32"], 2, "group_size: only applies when bits=4"),
    ("gptq bits", ["run", *MODEL, "--method", "gptq", "--param", "bits=5"], 2, "bits: got 5; allowed: one of 2, 3, 4, 8"),
    ("cuda-only kernel on cpu", ["run", *MODEL, "--method", "gptq", "--param", "kernel=marlin"], 4, "CUDA"),
    ("torchao scheme", ["run", *MODEL, "--method", "torchao", "--param", "scheme=int3"], 2,
     "scheme: got int3; allowed: one of int8_weight_only"),
    ("ort block size", ["run", *MODEL, "--method", "ort-int4", "--param", "block_size=7"], 2, "block_size: got 7"),
    ("awq gemv on cpu", ["run", *MODEL, "--method", "awq", "--param", "version=gemv"], 2, "version"),
    ("checkpoint missing", ["run", *MODEL, "--method", "compressed-tensors"], 2,
     "checkpoint: empty; allowed: the directory of a compressed-tensors checkpoint"),
    ("checkpoint not there", ["run", *MODEL, "--method", "compressed-tensors", "--param", "checkpoint=/no/such"], 2,
     "/no/such: no config.json there"),
    ("checkpoint pickle only", ["run", *MODEL, "--method", "compressed-tensors", "--param",
                                "checkpoint={tmp}/pickled-ckpt"], 2, "no .safetensors weights (pickled weights are not loaded)"),
    ("method for another kind", ["run", "--model", "tiny-sd", "--method", "rtn"], 2, "tiny-sd"),
    # --- models ---------------------------------------------------------------------------------
    ("model path missing", ["run", "--model", "/no/such/dir", "--method", "rtn"], 2, "/no/such/dir"),
    ("hub id offline", ["run", "--model", "org/model-offline", "--method", "rtn"], 2, "local"),
    ("broken config", ["run", "--model", "{tmp}/broken-config", "--method", "rtn"], 2, "config.json"),
    ("config without model_type", ["run", "--model", "{tmp}/no-model-type", "--method", "rtn"], 2, "model_type"),
    # --- data sources -------------------------------------------------------------------------
    ("text file missing", ["run", *MODEL, "--method", "rtn", "--data", "file:/no/such.txt"], 2, "/no/such.txt"),
    ("unknown data source", ["run", *MODEL, "--method", "rtn", "--data", "wikipedia"], 2, "pydoc-topics"),
    ("hub data offline", ["run", *MODEL, "--method", "rtn", "--data", "hub:wikitext/wikitext-2-raw-v1"], 2,
     "offline (HF_HUB_OFFLINE) and the dataset is not in the local caches"),
    ("hub calibration offline", ["run", *MODEL, "--method", "gptq", "--param", "dataset=hub:c4/en"], 2,
     "dataset: got 'hub:c4/en': offline (HF_HUB_OFFLINE)"),
    ("empty text", ["run", *MODEL, "--method", "rtn", "--data", "file:{tmp}/empty.txt"], 2, "empty.txt"),
    ("text shorter than a window", ["run", *MODEL, "--method", "rtn", "--data", "file:{tmp}/short.txt"], 2,
     "has 13 characters, too few for eval_windows x window = 8 x 512 = 4096 tokens"),
    ("calibration shorter than a sample", ["run", *MODEL, "--method", "gptq", "--param",
                                           "dataset=file:{tmp}/short.txt"], 2,
     "its calibration part (the second half of the text) has 11 characters, too few for 64 samples of 512 tokens"),
    ("calibration set too small", ["run", *MODEL, "--method", "ov-static", "--param",
                                   "dataset=file:{tmp}/short.txt"], 2, "too few for 32 samples (a token takes at least one character); allowed: a longer text"),
    ("eval windows zero", ["run", *MODEL, "--method", "rtn", "--data-field", "eval_windows=0"], 2,
     "data.eval_windows"),
    ("window not a number", ["run", *MODEL, "--method", "rtn", "--data-field", "window=abc"], 2, "data.window"),
    ("unknown data field", ["run", *MODEL, "--method", "rtn", "--data-field", "windows=4"], 2, "windows"),
    # --- measurement and device -----------------------------------------------------------------
    ("repeats zero", ["run", *MODEL, "--method", "rtn", "--bench", "repeats=0"], 2, "bench.repeats"),
    ("batch size zero", ["run", *MODEL, "--method", "rtn", "--bench", "batch_sizes=0"], 2, "batch_sizes"),
    ("no cuda here", ["run", *MODEL, "--method", "rtn", "--device", "cuda"], 4, "no CUDA device"),
    ("unknown device", ["run", *MODEL, "--method", "rtn", "--device", "tpu"], 2, "tpu"),
    ("unknown protocol", ["run", *MODEL, "--method", "rtn", "--protocol", "fast"], 2,
     "protocol: got 'fast'; allowed: quick, standard, full"),
    ("unknown protocol for the budget search", ["recommend", *MODEL, "--max-ppl-increase", "5%", "--protocol",
                                                "thorough"], 2, "protocol: got 'thorough'; allowed: quick, standard"),
    ("full protocol on a short text", ["run", *MODEL, "--method", "rtn", "--protocol", "full", "--data",
                                       "file:{tmp}/short.txt"], 2, "eval_windows x window = 32 x 1024"),
    # --- stores -----------------------------------------------------------------------------------
    ("unwritable store", ["run", *MODEL, "--method", "baseline", "--store", "/etc/passwd/wb.sqlite"], 2,
     "/etc/passwd/wb.sqlite"),
    ("store not sqlite", ["results", "--store", "{tmp}/junk.sqlite"], 2, "junk.sqlite"),
    # --- sweep files ------------------------------------------------------------------------------
    ("sweep file missing", ["sweep", "/no/such.toml"], 2, "sweep file /no/such.toml does not exist"),
    ("sweep not toml", ["sweep", "{tmp}/bad-toml.toml"], 2, "not valid TOML"),
    ("sweep unknown key", ["sweep", "{tmp}/unknown-key.toml"], 2, "colour"),
    ("sweep run without method", ["sweep", "{tmp}/no-method.toml"], 2, "method"),
    ("sweep invalid grid value", ["sweep", "{tmp}/bad-grid.toml"], 2, "bits: got 99; allowed: an integer in [2, 8]"),
    ("sweep zero step", ["sweep", "{tmp}/zero-step.toml"], 2, "step"),
    ("sweep no runs", ["sweep", "{tmp}/no-runs.toml"], 2, "runs: expected one or more [[runs]] tables"),
    ("sweep unknown protocol", ["sweep", "{tmp}/bad-protocol.toml"], 2,
     "bad-protocol.toml: protocol: got 'fast'; allowed: quick, standard, full"),
    # --- budget search and sensitivity -----------------------------------------------------------
    ("budget not a percentage", ["recommend", *MODEL, "--max-ppl-increase", "ten"], 2,
     "max_ppl_increase: got 'ten'; allowed: a percentage"),
    ("no budget", ["recommend", *MODEL], 2, "give at least one of --max-ppl-increase"),
    ("size not a size", ["recommend", *MODEL, "--max-bytes", "12 parsecs"], 2, "max_bytes: got '12 parsecs'"),
    ("zero runs", ["recommend", *MODEL, "--max-ppl-increase", "5%", "--max-runs", "0"], 2, "max_runs: got 0"),
    ("backend not in the ladder", ["recommend", *MODEL, "--max-ppl-increase", "5%", "--methods", "bnb"], 2,
     "methods: got ['bnb']; allowed: one or more of"),
    ("sensitivity without a layer quantizer", ["sensitivity", *MODEL, "--method", "baseline"], 2,
     "has no per-layer quantizer; allowed: "),
    ("sensitivity on an encoder", ["sensitivity", "--model", "tiny-bert", "--param", "group_size=-1"], 2,
     "tiny-bert is of kind encoder"),
    # --- command-line arguments -------------------------------------------------------------------
    ("required argument", ["run", *MODEL], 2, "--method"),
    ("malformed method spec", ["compare", *MODEL, "--methods", "rtn:bits"], 2, "expected NAME=VALUE"),
    ("scheduler without dask", ["run", *MODEL, "--method", "rtn", "--scheduler", "tcp://x:1"], 2,
     "--scheduler: only with --executor dask"),
    ("unknown executor", ["run", *MODEL, "--method", "rtn", "--executor", "slurm"], 2, "invalid choice: 'slurm'"),
]


def _files(tmp: Path) -> None:
    (tmp / "broken-config").mkdir()
    (tmp / "broken-config" / "config.json").write_text("{ this is not json")
    (tmp / "no-model-type").mkdir()
    (tmp / "no-model-type" / "config.json").write_text(json.dumps({"hidden_size": 64}))
    (tmp / "pickled-ckpt").mkdir()
    (tmp / "pickled-ckpt" / "config.json").write_text(json.dumps(
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
         "quantization_config": {"quant_method": "compressed-tensors"}}))
    (tmp / "pickled-ckpt" / "pytorch_model.bin").write_bytes(b"\x80\x02pickle")
    (tmp / "empty.txt").write_text("")
    (tmp / "short.txt").write_text("Too short for one window.")
    (tmp / "junk.sqlite").write_text("this is a text file, not a database\n" * 20)
    sweeps = {
        "bad-toml": SWEEP_HEAD + "[[runs]\nmethod = 'rtn'\n",
        "unknown-key": SWEEP_HEAD + "colour = 'red'\n[[runs]]\nmethod = 'rtn'\n",
        "no-method": SWEEP_HEAD + "[[runs]]\ngrid = {bits = [4]}\n",
        "bad-grid": SWEEP_HEAD + "[[runs]]\nmethod = 'rtn'\ngrid = {bits = [4, 99]}\n",
        "zero-step": SWEEP_HEAD + "[[runs]]\nmethod = 'rtn'\ngrid = {bits = {start = 2, stop = 8, step = 0}}\n",
        "no-runs": SWEEP_HEAD,
        "bad-protocol": SWEEP_HEAD + 'protocol = "fast"\n[[runs]]\nmethod = "rtn"\n',
    }
    for name, text in sweeps.items():
        (tmp / f"{name}.toml").write_text(text)


@pytest.fixture
def tripwire(monkeypatch):
    """Any worker start fails the test: validation must have refused the input before."""
    from workbench.exec.subprocess import SubprocessExecutor

    def started(*_a, **_k):
        raise AssertionError("a worker was started for bad input")

    monkeypatch.setattr(SubprocessExecutor, "run", started)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _successes(store: Path) -> int:
    if not store.exists() or store.stat().st_size == 0:
        return 0
    with closing(sqlite3.connect(store)) as con:
        try:
            return con.execute("SELECT COUNT(*) FROM runs WHERE status IN ('ok', 'flagged')").fetchone()[0]
        except sqlite3.DatabaseError:
            return 0


def test_the_catalogue_has_at_least_40_cases():
    assert len(CLI_CASES) + len(WIDGET_CASES) >= 40


@pytest.mark.parametrize("argv,code,needle", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_input_on_the_command_line(tmp_path, tripwire, capsys, argv, code, needle):
    _files(tmp_path)
    store = tmp_path / "wb.sqlite"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--store" not in argv and argv[0] != "results":
        argv += ["--store", str(store)]
    if argv[0] in ("run", "compare", "recommend"):
        argv.append("--quiet")
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == code, err
    assert needle.replace("{tmp}", str(tmp_path)) in err, err
    assert _successes(store) == 0


# (id, method, form values as typed, the field, needle in the reason under Run)
WIDGET_CASES = [
    ("widget out of range", "rtn", {"group_size": "-5"}, "group_size", "allowed: an integer in [-1, inf]"),
    ("widget not a number", "rtn", {"group_size": "sixty-four"}, "group_size", "not an integer"),
    ("widget group does not divide", "rtn", {"group_size": "48"}, "group_size", "48"),
    ("widget empty selection", "rtn", {"include": "*nothing*"}, "include", "selects none of the"),
    ("widget missing checkpoint", "compressed-tensors", {}, "checkpoint", "empty; allowed"),
    ("widget group does not divide, gptq", "gptq", {"group_size": "48"}, "group_size", "48"),
    ("widget calibration file missing", "ov-static", {"dataset": "file:/no/such.txt"}, "dataset", "/no/such.txt"),
]


@pytest.mark.parametrize("method,values,field,needle", [c[1:] for c in WIDGET_CASES], ids=[c[0] for c in WIDGET_CASES])
def test_bad_input_in_the_app(tmp_path, tripwire, method, values, field, needle):
    from workbench.session import Session
    from workbench.spec import BenchSpec
    from workbench.ui.app import App

    app = App(Session(store=tmp_path / "wb.sqlite", progress=False), bench=BenchSpec(latency=False))
    app.select(model="tiny-llama", method=method)
    if values:
        app.set_params(values)
    else:
        app.revalidate()
    assert app.run_button.disabled and field in app.reason.value and needle in app.reason.value, app.reason.value
    assert app.run() is None and app.queue.items == []
    assert _successes(tmp_path / "wb.sqlite") == 0
