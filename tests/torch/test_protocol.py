"""The measurement protocol as stages (workbench/measure/protocol.py), run in this process on the
catalog's tiny-llama: each stage reports its measurements as it makes them, in the protocol's order
(accuracy before any latency table, the reload check and the task metric last), and those reports
add up to the result; an export check reports between accuracy and latency; a run that fails in
its latency stage keeps (and has reported) everything measured before."""
from __future__ import annotations

from typing import Any, Mapping

import pytest

from workbench.methods.base import Built, Method
from workbench.params import Schema
from workbench.registry import get
from workbench.result import RunResult, RunStatus
from workbench.spec import BenchSpec, DataSpec, ModelSpec, RunSpec
from workbench.worker import run_spec

SMALL_DATA = DataSpec(eval_windows=2, window=64)
SMALL_BENCH = BenchSpec(batch_sizes=(1, 2), prompt_lengths=(8, 16), decode_tokens=4, generate_batch_sizes=(1,),
                        warmup=0, repeats=1)


def run(method: str | type, params: Mapping[str, Any], bench: BenchSpec = SMALL_BENCH) -> tuple[RunResult, list]:
    target = get(method).target if isinstance(method, str) else f"{method.__module__}:{method.__name__}"
    name = method if isinstance(method, str) else method.name
    spec = RunSpec(ModelSpec("tiny-llama"), name, dict(params), data=SMALL_DATA, bench=bench)
    reports: list[tuple[str, dict]] = []
    result = run_spec(spec, target, report=lambda *a, **k: None,
                      partial=lambda stage, measured: reports.append((stage, dict(measured))))
    return result, reports


def merged(reports: list) -> RunResult:
    r = RunResult(key="", status=RunStatus.RUNNING, spec={})
    for _stage, measured in reports:
        r.merge_partial(measured)
    return r


def test_stages_report_in_order_and_add_up_to_the_result():
    result, reports = run("rtn", {"bits": 4, "group_size": 16})
    assert result.status is RunStatus.OK, result.error
    assert [s for s, _ in reports] == ["build", "save", "accuracy", "latency", "latency", "latency", "memory",
                                       "reload", "task"]
    stage = dict((s, m) for s, m in reports if s != "latency")
    assert set(stage["accuracy"]["metrics"]) >= {"perplexity", "kl_div", "top1_agreement"}
    assert "tables" not in stage["accuracy"] and "peak_rss_bytes" not in stage["accuracy"]["metrics"]
    assert [list(m["tables"]) for s, m in reports if s == "latency"] == [["forward"], ["generation"], ["throughput"]]
    assert stage["build"]["layers_quantized"] > 0 and stage["build"]["kernel"] == result.kernel
    assert "reload check passed" in stage["reload"]["notes"][0] and "reload_perplexity" in stage["reload"]["metrics"]
    assert list(stage["task"]["metrics"]) == ["next_token_accuracy"]
    # the reports are the result: nothing measured that was not reported, nothing reported twice
    whole = merged(reports)
    assert whole.metrics == result.metrics and list(whole.metrics) == list(result.metrics)
    assert whole.tables == result.tables and whole.notes == result.notes
    assert (whole.layers_quantized, whole.layers_eligible, whole.kernel) == \
        (result.layers_quantized, result.layers_eligible, result.kernel)


class CheckedPassthrough(Method):
    """The fp32 model as an "export" that must reproduce the reference (tight tolerance), saving nothing."""

    name = "checked-passthrough"
    backend = "testing"
    env = "torch"
    description = "fp32 model with an export check"
    schema = Schema(())

    def build(self, ctx: Any, params: Mapping[str, Any]) -> Built:
        return Built(model=ctx.load_model("float32"), layers_quantized=0, layers_eligible=0,
                     kernel="torch fp32 eager", reference_tolerance=1e-6, cannot_save="test method")


class BrokenInLatency(CheckedPassthrough):
    """Measures like fp32, then its model breaks on the first batch larger than one (a backend bug)."""

    name = "broken-in-latency"

    def build(self, ctx: Any, params: Mapping[str, Any]) -> Built:
        built = super().build(ctx, params)
        model, forward = built.model, built.model.forward

        def breaks(*args: Any, **kw: Any) -> Any:
            ids = kw.get("input_ids", args[0] if args else None)
            if ids is not None and ids.shape[0] > 1:
                raise RuntimeError("backend kernel failed at batch 2")
            return forward(*args, **kw)

        model.forward = breaks
        return built


def test_the_export_check_reports_between_accuracy_and_latency():
    result, reports = run(CheckedPassthrough, {})
    assert result.status is RunStatus.OK, result.error
    assert [s for s, _ in reports][:4] == ["build", "save", "accuracy", "export_check"]
    assert reports[1][1] == {"notes": ["not saved: test method"]}
    assert reports[3][1] == {"metrics": {"reference_perplexity": result.metrics["reference_perplexity"]}}
    assert result.metrics["perplexity"] == pytest.approx(result.metrics["reference_perplexity"], rel=1e-6)


def test_a_run_that_fails_in_latency_keeps_and_has_reported_what_it_measured_before():
    result, reports = run(BrokenInLatency, {})
    assert result.status is RunStatus.CRASHED and "batch 2" in result.error
    assert [s for s, _ in reports] == ["build", "save", "accuracy", "export_check"]
    assert result.metrics["perplexity"] > 0 and not result.tables
    whole = merged(reports)
    assert whole.metrics == result.metrics and whole.notes == result.notes
