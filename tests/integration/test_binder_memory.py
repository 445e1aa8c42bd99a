"""The app's first runs on SmolLM2 inside mybinder.org's 2 GB (MEM_LIMIT), enforced here by the
executor's memory watch: each completes within the worker's share; an oversized one is stored as
`oom` and the session goes on with the next (docs/binder.md)."""
import os
from dataclasses import replace

import pytest

from workbench import protocols
from workbench.exec import memory_budget
from workbench.result import RunStatus
from workbench.session import Session

from ..conftest import requires_openvino_env, requires_torch_env

MEM_LIMIT = 2 * 2**30
# What the app offers first (its default protocol is quick), in the order a visitor tries them.
APP_FIRST_RUNS = [("baseline", {}), ("rtn", {"bits": 4}), ("torchao", {"scheme": "int8_weight_only"}),
                  ("ov-weight", {"bits": 8}), ("ov-weight", {"bits": 4})]


@requires_torch_env
@requires_openvino_env
def test_the_apps_first_runs_fit_binders_2_gb_and_an_oversized_run_is_oom(store_path, monkeypatch):
    monkeypatch.setenv("MEM_LIMIT", str(MEM_LIMIT))
    monkeypatch.delenv("WORKBENCH_MEMORY_LIMIT_MB", raising=False)
    session = Session(store=store_path, progress=False)  # warm by default: cold under 2 GB
    assert session.executor.budget.total_bytes == MEM_LIMIT and not session.executor.warm
    quick = protocols.get("quick")
    # The share a worker gets now: 2 GB less this process (the kernel's stand-in) and the reserve.
    share = session.executor.budget.worker_bytes()
    assert share > 1200 * memory_budget.MB, share  # what a SmolLM2 quick run needs, with room
    for method, params in APP_FIRST_RUNS:
        r = session.submit(session.make_spec("smollm2-135m", method, params, protocol="quick"), force=True)
        assert r.ok, (method, params, r.status, r.error)
        peak = r.metrics["peak_rss_bytes"]
        assert 0 < peak <= share, (method, params, peak / memory_budget.MB, share / memory_budget.MB)

    # A forward pass at batch 64 x 512 tokens: 6 GB of logits alone.
    big = replace(quick.bench, batch_sizes=(64,), seq_len=512, accuracy=False, save=False)
    r = session.submit(session.make_spec("smollm2-135m", "baseline", {}, bench=big, data=quick.data), force=True)
    assert r.status is RunStatus.OOM, (r.status, r.error)
    assert "of the 2048 MB limit set by MEM_LIMIT" in r.error, r.error
    after = session.submit(session.make_spec("smollm2-135m", "rtn", {"bits": 8}, protocol="quick"), force=True)
    assert after.ok and after.metrics["peak_rss_bytes"] <= share, after.error
