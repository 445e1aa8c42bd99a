"""Bad input is refused in the kernel, before any worker starts, naming the parameter."""
import pytest

from workbench.errors import InvalidParams, MethodUnavailable, ModelNotFound, UnknownMethod
from workbench.result import RunStatus
from workbench.session import Session, cuda_present
from workbench.spec import BenchSpec, DataSpec

from ..conftest import requires_torch_env

pytestmark = requires_torch_env


class NoWorker:
    """An executor that must not be reached: validation failures start no worker."""

    def run(self, *a, **k):
        raise AssertionError("a worker was started for invalid input")


@pytest.fixture
def session(store_path):
    return Session(store=store_path, executor=NoWorker(), progress=False)


def spec(session, model="smollm2-135m", method="rtn", params=None, **kw):
    return session.make_spec(model, method, params or {}, **kw)


def test_group_size_that_does_not_divide_names_layers_and_divisors(session):
    with pytest.raises(InvalidParams) as e:
        session.validate(spec(session, params={"group_size": 128}))
    text = str(e.value)
    assert "group_size" in text and "576" in text and "64" in text
    assert "q_proj" in text


def test_unknown_method_param_range_type(session):
    with pytest.raises(UnknownMethod, match="allowed: .*baseline"):
        session.validate(spec(session, method="nope"))
    with pytest.raises(InvalidParams) as e:
        session.validate(spec(session, params={"bits": 9, "sym": "perhaps", "colour": "red"}))
    assert {x.param for x in e.value.errors} == {"bits", "sym", "colour"}


def test_bench_and_data_fields_are_checked(session):
    with pytest.raises(InvalidParams) as e:
        session.validate(spec(session, data=DataSpec(eval_windows=0), bench=BenchSpec(batch_sizes=(), repeats=0)))
    assert {x.param for x in e.value.errors} == {"data.eval_windows", "bench.batch_sizes", "bench.repeats"}


def test_missing_model_and_offline_hub_id(session, monkeypatch, tmp_path):
    with pytest.raises(ModelNotFound):
        session.validate(spec(session, model=str(tmp_path / "no-such-dir")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFound, match="local"):
        session.validate(spec(session, model="someorg/some-model"))


def test_wrong_model_kind_for_method_is_refused(session):
    from workbench import registry
    from workbench.testing import FaultMethod

    class CausalOnly(FaultMethod):
        name = "causal-only"
        model_kinds = ("causal-lm",)

    registry.register(CausalOnly)
    try:
        with pytest.raises(InvalidParams, match="encoder model"):
            session.validate(spec(session, model="minilm-l6", method="causal-only"))
    finally:
        registry.unregister("causal-only")


@pytest.mark.skipif(cuda_present(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_unavailable(session):
    with pytest.raises(MethodUnavailable, match="no CUDA device"):
        session.validate(spec(session, device="cuda"))


def test_submit_turns_bad_input_into_data_and_stores_nothing(session):
    r = session.submit(spec(session, params={"bits": 1}))
    assert r.status is RunStatus.INVALID and "bits" in r.error
    assert len(session.store) == 0


def test_unavailable_environment(store_path, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WORKBENCH_ENV_TORCH", raising=False)
    s = Session(store=store_path, executor=NoWorker(), progress=False)
    with pytest.raises(MethodUnavailable, match="workbench env create torch"):
        s.validate(s.make_spec("tiny-llama", "rtn", {}))
    r = s.submit(s.make_spec("tiny-llama", "rtn", {}))
    assert r.status is RunStatus.UNAVAILABLE


def test_normalized_params_make_the_same_key(session):
    a = session.validate(spec(session, params={"bits": "4"}))
    b = session.validate(spec(session, params={}))
    assert a.key == b.key and a.params == b.params
