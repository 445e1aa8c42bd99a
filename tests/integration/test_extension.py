"""The example plug-in (extensions/workbench-gguf), installed by `make setup` into the kernel and
torch environments, seen through the workbench's front doors with no change to the core: the
`workbench methods` listing, the app's method picker and form, a sweep file, and the method
contract with a real build."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from workbench import registry
from workbench.testing import check_method

from ..conftest import requires_torch_env

pytest.importorskip("workbench_gguf", reason="make setup installs extensions/workbench-gguf")


def wb(*args, **kw):
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=900, **kw)


def test_the_entry_point_registers_it_from_its_own_distribution():
    ref = registry.get("gguf")
    assert ref.dist == "workbench-gguf" and ref.target == "workbench_gguf.method:GGUFBlocks"
    assert ref.cls.__module__.startswith("workbench_gguf")  # nothing under workbench/ names it
    p = wb("methods")
    assert p.returncode == 0 and any(line.startswith("gguf ") for line in p.stdout.splitlines()), p.stdout


def test_the_app_offers_it_with_its_form_and_validates_it(tmp_path):
    from workbench.session import Session
    from workbench.spec import BenchSpec
    from workbench.ui.app import App

    app = App(Session(store=tmp_path / "wb.sqlite", progress=False), bench=BenchSpec(latency=False))
    assert "gguf" in [v for _, v in app.methods.dropdown.options]
    app.select(model="tiny-llama", method="gguf")
    assert set(app.params()) == {"qtype", "include", "exclude"} and not app.run_button.disabled
    app.set_params({"qtype": "Q4_K"})  # refused in the form, with what is allowed, before any worker
    assert app.run_button.disabled and "Q4_K cannot be made here" in app.reason.value
    assert "from gguf import GGMLQuantizationType" in app.code.value or "fix the parameters" in app.code.value


@requires_torch_env
def test_a_sweep_runs_it_next_to_a_built_in_method(tmp_path):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('''name = "plug-in"
models = ["tiny-llama"]
[bench]
latency = false
save = false
[[runs]]
method = "gguf"
grid = {qtype = ["Q8_0", "Q4_0"]}
[[runs]]
method = "rtn"
params = {bits = 4, group_size = 32}
''')
    store = tmp_path / "wb.sqlite"
    p = wb("sweep", str(sweep), "--store", str(store), "--quiet")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "3 configurations, 0 already stored, 3 to run" in p.stdout
    rows = json.loads(wb("results", "--store", str(store), "--format", "json").stdout)
    by = {(r["method"], r["params"].get("qtype")): r for r in rows}
    q8, q4 = by[("gguf", "Q8_0")], by[("gguf", "Q4_0")]
    assert q8["status"] == q4["status"] == "ok" and q8["layers_quantized"] == 14
    assert q4["metrics"]["kl_div"] > q8["metrics"]["kl_div"] > 0  # fewer bits, more error
    assert q4["metrics"]["weights_bytes"] < q8["metrics"]["weights_bytes"]
    assert q8["versions"].get("gguf") and "Q8_0 blocks" in q8["kernel"]


@requires_torch_env
def test_it_passes_the_method_contract_with_a_build(tmp_path):
    from workbench.session import Session

    report = check_method(registry.get("gguf").cls, model="tiny-llama", params={"qtype": "Q5_1"},
                          session=Session(store=tmp_path / "wb.sqlite", progress=False))
    assert "build on tiny-llama quantized 14 of 15 eligible layers" in report.passed
