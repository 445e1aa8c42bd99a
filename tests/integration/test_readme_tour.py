"""The README's 5-minute tour, run exactly as written: the first ```bash block under
"## A 5-minute tour", each command in a fresh shell at the repository root with no WORKBENCH_*
variable (nor HF_HUB_OFFLINE), as a newcomer would type it after `make setup`.

A line `#   -> exit N ...` under a command is the exit code the README promises for it (0 otherwise).
The tour writes to the checkout's own store (that is what it shows); this test puts the store and
report back as they were afterwards.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import requires_torch_env

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results"


def tour_commands(readme: str) -> list[tuple[str, int]]:
    """(command line, expected exit code) for each command of the tour block."""
    section = readme.split("## A 5-minute tour", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands: list[tuple[str, int]] = []
    pending = ""
    for line in block.splitlines():
        stripped = line.strip()
        expected = re.match(r"#\s*->\s*exit (\d+)", stripped)
        if expected:
            commands[-1] = (commands[-1][0], int(expected.group(1)))
            continue
        if not stripped or stripped.startswith("#"):
            continue
        # bash runs the line as written, comments included; continuations are joined
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].rstrip() + " "
            continue
        commands.append(((pending + line.strip()) if pending else stripped, 0))
        pending = ""
    return commands


def fresh_shell_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_") and k != "HF_HUB_OFFLINE"}


@pytest.fixture
def checkout_store(tmp_path):
    """Keep the checkout's results/ as they were before the tour."""
    saved = tmp_path / "saved-results"
    had = RESULTS.is_dir()
    if had:
        shutil.copytree(RESULTS, saved)
    try:
        yield RESULTS / "workbench.sqlite"
    finally:
        shutil.rmtree(RESULTS, ignore_errors=True)
        if had:
            shutil.copytree(saved, RESULTS)


def test_the_tour_parser_reads_continuations_comments_and_expected_codes():
    readme = ("## A 5-minute tour\n\n```bash\n.venv/bin/workbench models   # the catalog\n"
              ".venv/bin/workbench run --model m \\\n    --param a=1   # two lines\n#   -> exit 2: refused\n"
              "# a comment\n```\n")
    assert tour_commands(readme) == [(".venv/bin/workbench models   # the catalog", 0),
                                     (".venv/bin/workbench run --model m --param a=1   # two lines", 2)]


@requires_torch_env
def test_the_readme_tour_works_as_written(checkout_store):
    commands = tour_commands((ROOT / "README.md").read_text())
    names = " ".join(c for c, _ in commands)
    for what in ("workbench info", "workbench models", "workbench methods", "--model tiny-llama",
                 "group_size=128", "workbench results", "workbench report"):
        assert what in names, f"the tour lost its {what!r} step"
    env = fresh_shell_env()
    outputs = {}
    for command, expected in commands:
        p = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert p.returncode == expected, f"{command}\nexit {p.returncode}, README says {expected}\n{p.stdout[-2000:]}\n" \
                                         f"{p.stderr[-3000:]}"
        outputs[command] = p
    by = {what: next(p for c, p in outputs.items() if what in c) for what in
          ("workbench info", "workbench methods", "tiny-llama", "group_size=128", "workbench results", "report")}
    assert f"home:  {ROOT / '.workbench'}" in by["workbench info"].stdout
    assert "unavailable" not in by["workbench methods"].stdout.split("\n", 1)[0]
    assert re.search(r"^rtn\s.*\savailable", by["workbench methods"].stdout, flags=re.M)
    assert by["tiny-llama"].stdout.startswith("ok")
    assert "group_size" in by["group_size=128"].stderr and "576" in by["group_size=128"].stderr
    table = by["workbench results"].stdout
    assert "rtn bits=4 group_size=32" in table
    assert max(map(len, table.splitlines())) <= 120, table
    assert (ROOT / "results" / "report.html").stat().st_size > 100_000  # plotly.js inlined

    # A kernel started in notebooks/ (Voila, JupyterLab) sees the same store with no variable set.
    probe = ("from workbench.session import Session; s = Session(); df = s.dataframe(); "
             "print(s.store.path); print(sorted(set(df['model'])))")
    p = subprocess.run([sys.executable, "-c", probe], cwd=ROOT / "notebooks", env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    path, models = p.stdout.splitlines()[:2]
    assert path == str(checkout_store) and "tiny-llama" in models
