"""Task metrics through `evaluate`, loaded offline from the scripts the workbench ships."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.errors import InvalidSpec
from workbench.measure import evaluate_metrics

ROOT = Path(__file__).resolve().parents[2]

needs_evaluate = pytest.mark.skipif(
    importlib.util.find_spec("evaluate") is None, reason="evaluate is not installed in this environment"
)


def test_shipped_metrics_are_listed():
    assert {"accuracy", "exact_match"} <= set(evaluate_metrics.available_metrics())


def test_unknown_metric_names_the_allowed_ones():
    with pytest.raises(InvalidSpec, match="metric: got 'bleu'; allowed: .*accuracy"):
        evaluate_metrics.metric_path("bleu")


@needs_evaluate
def test_metrics_load_and_compute_offline(tmp_path):
    # A fresh process: the hub's offline switch and evaluate's module cache are read at import.
    code = (
        "import json\n"
        "from workbench.measure.evaluate_metrics import load_metric\n"
        "acc = load_metric('accuracy').compute(predictions=[1, 0, 1], references=[1, 1, 1])\n"
        "em = load_metric('exact_match').compute(predictions=['Paris', 'rome.'], references=['Paris', 'Rome'],"
        " ignore_case=True, ignore_punctuation=True)\n"
        "print(json.dumps([acc, em]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    acc, em = json.loads(proc.stdout.strip().splitlines()[-1])
    assert acc == {"accuracy": pytest.approx(2 / 3)}
    assert em == {"exact_match": 1.0}
