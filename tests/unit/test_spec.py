import json

import pytest

from workbench.errors import InvalidSpec
from workbench.spec import BenchSpec, DataSpec, ModelSpec, RunSpec, data_key


def make(**kw):
    base = dict(model=ModelSpec("tiny-llama"), method="rtn", params={"bits": 4})
    base.update(kw)
    return RunSpec(**base)


def test_json_round_trip_keeps_key():
    s = make(bench=BenchSpec(batch_sizes=(1, 2)), data=DataSpec(eval_windows=2))
    back = RunSpec.from_json(s.to_json())
    assert back == s and back.key == s.key
    assert isinstance(json.loads(s.to_json())["bench"]["batch_sizes"], list)


def test_key_depends_on_content_not_on_timeout_or_dict_order():
    a = make(params={"bits": 4, "sym": True})
    b = make(params={"sym": True, "bits": 4}, timeout_s=10)
    assert a.key == b.key
    assert make(params={"bits": 8}).key != a.key
    assert make(device="cuda").key != a.key
    assert make(data=DataSpec(eval_windows=4)).key != a.key


def test_unknown_device_and_fields_are_refused():
    with pytest.raises(InvalidSpec, match="device.*cpu, cuda"):
        make(device="tpu")
    with pytest.raises(InvalidSpec, match=r"bench: unknown fields \['bach_sizes'\]; allowed: batch_sizes, "):
        RunSpec.from_dict({"model": "m", "method": "x", "bench": {"bach_sizes": [1]}})
    with pytest.raises(InvalidSpec, match="needs 'model' and 'method'"):
        RunSpec.from_dict({"model": "m"})


def test_data_key_ignores_method():
    s1, s2 = make(), make(method="baseline", params={})
    assert data_key(s1.model, s1.data) == data_key(s2.model, s2.data)
    assert data_key(s1.model, DataSpec(window=256)) != data_key(s1.model, s1.data)
