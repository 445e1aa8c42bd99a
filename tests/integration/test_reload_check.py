"""The save-and-reload check: an artifact that reloads to different numbers is caught and stored."""
import pytest

from workbench.result import RunStatus
from workbench.session import Session
from workbench.spec import BenchSpec, DataSpec

from ..conftest import requires_torch_env

pytestmark = requires_torch_env
NO_LATENCY = BenchSpec(latency=False)
SMALL = DataSpec(eval_windows=2, window=64)


@pytest.fixture
def session(store_path):
    return Session(store=store_path, progress=False)


@pytest.mark.parametrize("model,metric", [("tiny-llama", "perplexity"), ("tiny-bert", "embedding_cosine")])
def test_correct_saves_pass_the_check(session, model, metric):
    for method, params in (("baseline", {}), ("rtn", {"bits": 4, "group_size": 16})):
        r = session.submit(session.make_spec(model, method, params, bench=NO_LATENCY, data=SMALL))
        assert r.status is RunStatus.OK, (r.error, r.stderr_tail)
        assert r.metrics[f"reload_{metric}"] == pytest.approx(r.metrics[metric], rel=1e-6)
        assert any("reload check passed" in n for n in r.notes)


def test_planted_scale_corruption_is_caught_and_stored(session, corrupt_save_method):
    spec = session.make_spec("tiny-llama", "rtn-corrupt-save", {"bits": 4, "group_size": 16},
                             bench=NO_LATENCY, data=SMALL)
    r = session.submit(spec)
    assert r.status is RunStatus.RELOAD_MISMATCH, (r.error, r.stderr_tail)
    assert "reload mismatch: perplexity" in r.error
    before, after = r.metrics["perplexity"], r.metrics["reload_perplexity"]
    assert abs(after - before) / before > 0.01
    stored = session.store.results()[-1]
    assert stored.status is RunStatus.RELOAD_MISMATCH and stored.metrics["reload_perplexity"] == after
    # the same run without the check is fine: the bug is only in the artifact
    ok = session.submit(spec.replace(bench=BenchSpec(latency=False, reload_check=False)))
    assert ok.status is RunStatus.OK and "reload_perplexity" not in ok.metrics
