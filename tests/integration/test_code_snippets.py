"""The code the workbench shows ("show code", `workbench recommend`'s "or without it:") runs as shown.

Each snippet is `Method.code("tiny-llama", params)` with two lines appended that generate two
tokens and print a marker; it runs as a script in a fresh interpreter of the method's
environment, in an empty working directory, offline (HF_HUB_OFFLINE=1), with no PYTHONPATH
unless the snippet imports the workbench (then it must say so, and gets the worker's PYTHONPATH).
About a minute on two cores: three torch snippets of about 10 s each and an OpenVINO export of about 22 s.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from workbench import registry
from workbench.envs import manager

from ..conftest import requires_env, requires_openvino_env

MARK = "SNIPPET-RAN"
GENERATE = (
    "\n# --- appended by the test: the snippet left a model that generates ---\n"
    "import torch as _torch\n"
    "_ids = _torch.tensor([[1, 2, 3, 4]])\n"
    "_out = model.generate(input_ids=_ids, attention_mask=_torch.ones_like(_ids), max_new_tokens=2,\n"
    "                      min_new_tokens=2, do_sample=False)\n"
    f"print({MARK!r}, tuple(_out.shape))\n"
)

pytestmark = requires_env("torch")  # tiny-llama is built by a worker of the torch environment


@pytest.fixture(scope="module")
def tiny_llama() -> None:
    """tiny-llama built under the workbench home (about a second, once)."""
    proc = subprocess.run([manager.python_for("torch"), "-m", "workbench.worker", "--prepare", "tiny-llama"],
                          env={**manager.worker_env(), "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def run_snippet(method: str, params: dict, cwd) -> str:
    cls = registry.get(method).cls
    text = cls().code("tiny-llama", params)
    assert "'tiny-llama'" not in text, text
    script = cwd / "snippet.py"
    script.write_text(text + GENERATE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WORKBENCH_HOME")}
    env["HF_HUB_OFFLINE"] = "1"
    if "from workbench" in text or "import workbench" in text:
        assert "needs the workbench importable" in text, text
        env["PYTHONPATH"] = manager.worker_pythonpath()
    proc = subprocess.run([manager.python_for(cls.env), str(script)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{text}\n--- stderr ---\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.parametrize(("method", "params"), [
    ("baseline", {}),
    ("rtn", {"bits": 4, "group_size": 32}),
    ("torchao", {"scheme": "int8_weight_only"}),
], ids=["baseline", "rtn-4bit-g32", "torchao-int8-weight-only"])
def test_torch_snippets_run_as_shown(tiny_llama, tmp_path, method, params):
    assert f"{MARK} (1, 6)" in run_snippet(method, params, tmp_path)


@requires_openvino_env
def test_openvino_weight_snippet_runs_as_shown(tiny_llama, tmp_path):
    out = run_snippet("ov-weight", {"bits": 8}, tmp_path)
    assert f"{MARK} (1, 6)" in out
    assert (tmp_path / "ov-weight" / "openvino_model.xml").is_file()  # what the snippet saves
