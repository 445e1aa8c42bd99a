"""The budget search's decisions on a scripted model (a fake session, so the logic runs in
milliseconds; tests/integration/test_recommend.py runs the real thing on tiny-llama), and the
budget parsing with its errors."""
import pandas as pd
import pytest

from workbench import recommend as rec
from workbench.errors import InvalidParams
from workbench.result import RunResult, RunStatus

MB = 2**20
# (method, bits) -> (MB, perplexity); the fp32 model: 500 MB, perplexity 10
TABLE = {
    ("baseline", None): (500, 10.0),
    ("ov-weight", 8): (130, 10.1), ("torchao", 8): (160, 10.1), ("rtn", 8): (131, 10.05),
    ("rtn", 6): (115, 10.2), ("rtn", 5): (105, 10.6),
    ("ov-weight", 4): (80, 13.0), ("hqq", 4): (95, 11.5), ("rtn", 4): (100, 11.8), ("ort-int4", None): (170, 12.0),
    ("rtn", 3): (90, 30.0), ("hqq", 3): (85, 40.0),
}
LAYERS = [f"model.layers.{i}.mlp.down_proj" for i in range(40)]


class FakeSession:
    """Scripted results; mixed precision gains 0.07 perplexity per layer left in float."""

    def __init__(self):
        self.submitted = []

    def make_spec(self, model, method, params, **kw):
        return (method, dict(params))

    def validate(self, spec):
        return spec

    def run(self, model, method, params=None, **kw):
        return self.submit((method, dict(params or {})))

    def submit(self, spec):
        method, params = spec
        self.submitted.append(spec)
        bits = params.get("bits", params.get("nbits", 8 if method == "torchao" else None))
        size, ppl = (98, 10.8) if method == "gptq" else TABLE[(method, bits)]
        excluded = len(params.get("exclude", ["lm_head"])) - 1
        size, ppl = size + 0.6 * excluded, ppl - 0.07 * excluded
        return RunResult(key=str(len(self.submitted)), status=RunStatus.OK,
                         spec={"method": method, "params": params, "model": {"id": "m"}},
                         metrics={"weights_bytes": size * MB, "perplexity": ppl})

    def sensitivity(self, model, method, params, **kw):
        return RunResult(key="s", status=RunStatus.OK, spec={}, tables={"layers": [
            {"layer": n, "ppl_delta": 1.0 / (i + 1)} for i, n in enumerate(LAYERS)]})


@pytest.fixture(autouse=True)
def frame(monkeypatch):
    # the scripted sensitivity rows carry only what the search reads
    monkeypatch.setattr("workbench.sensitivity.sensitivity_frame",
                        lambda r: pd.DataFrame(r.tables["layers"]).sort_values("ppl_delta", ascending=False))


def search(budget):
    s = FakeSession()
    return s, rec.recommend(s, "m", budget, log=lambda _msg: None)


def test_a_ppl_budget_goes_down_the_ladder_until_a_width_has_nothing_within_it():
    s, r = search(rec.Budget(max_ppl_increase=0.10))
    assert r.best.result.method == "rtn" and r.best.result.params["bits"] == 5
    # 4 bits missed by less than 3x the allowance: mixed precision was tried, k=5 missed, k=15 met
    # the budget (bigger than 5-bit), so no data-aware run was needed
    mixed = [st for st in r.steps if st.stage == "mixed"]
    assert [len(st.result.params["exclude"]) - 1 for st in mixed] == [5, 15] and mixed[-1].feasible
    assert not any(st.stage == "data-aware" for st in r.steps)
    # 3 bits misses far: no escalation there, and the search ends
    assert "stopped at 3 bits: nothing at this width meets" in r.stopped and r.runs == 13 < r.space
    assert [st.stage for st in r.steps if st.bits == 3] == ["data-free", "data-free"]


def test_a_budget_nothing_meets_says_so_at_the_first_width():
    _, r = search(rec.Budget(max_ppl_increase=0.001))
    assert r.best is None and r.runs == 3 and "stopped at 8 bits: nothing at this width meets" in r.stopped


def test_a_size_budget_minimizes_perplexity_under_the_size():
    _, r = search(rec.Budget(max_bytes=110 * MB))
    assert (r.best.result.method, r.best.result.params["bits"]) == ("rtn", 5)
    assert "stopped at 4 bits: fewer bits fit the size but lose perplexity" in r.stopped


def test_a_far_miss_does_not_escalate():
    TABLE_4 = {k: v for k, v in TABLE.items() if k[1] == 4 or k[0] == "ort-int4"}
    try:
        for k in TABLE_4:
            TABLE[k] = (TABLE_4[k][0], 20.0)
        _, r = search(rec.Budget(max_ppl_increase=0.10))
        assert not any(st.stage in ("mixed", "data-aware") for st in r.steps)
    finally:
        TABLE.update(TABLE_4)


@pytest.mark.parametrize("text,value", [("10%", 0.10), ("0.05", 0.05), (" 2.5% ", 0.025)])
def test_fractions(text, value):
    assert rec.parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text,value", [("120MB", 120 * MB), ("1.5GB", int(1.5 * 2**30)), ("4096", 4096), ("8kb", 8192)])
def test_sizes(text, value):
    assert rec.parse_bytes(text) == value


@pytest.mark.parametrize("call,needle", [
    (lambda: rec.parse_fraction("ten"), "max_ppl_increase: got 'ten'; allowed: a percentage"),
    (lambda: rec.parse_bytes("12 parsecs"), "max_bytes: got '12 parsecs'; allowed: a size like 120MB"),
    (lambda: rec.Budget(), "give at least one of --max-ppl-increase"),
    (lambda: rec.Budget(max_ppl_increase=-0.1), "max_ppl_increase: got -0.1"),
    (lambda: rec.Budget(max_bytes=0), "max_bytes: got 0"),
    (lambda: rec.Budget(min_decode_tok_s=-3), "min_decode_tok_s: got -3"),
])
def test_bad_budgets_are_named(call, needle):
    with pytest.raises(InvalidParams, match=needle.replace("(", r"\(")):
        call()
