"""The cache of baseline outputs: atomic writes, readable back, locked while computed."""
from __future__ import annotations

import fcntl

import pytest
import torch

from workbench.errors import DataError
from workbench.measure import reference
from workbench.spec import DataSpec, ModelSpec

MODEL = ModelSpec(id="tiny-llama")
DATA = DataSpec(eval_windows=2, window=64)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    return tmp_path


def _lm_ref() -> dict:
    return {
        "kind": "causal-lm",
        "topk_idx": torch.arange(12, dtype=torch.int32).view(3, 4),
        "topk_logp": -torch.rand(3, 4),
        "perplexity": 14.7,
    }


def test_round_trip_in_the_reference_dir(home):
    assert reference.load_reference(MODEL, DATA) is None
    obj = _lm_ref()
    path = reference.save_reference(MODEL, DATA, obj)
    assert path.parent == home / "reference" and path.suffix == ".pt"
    back = reference.load_reference(MODEL, DATA)
    assert back["kind"] == "causal-lm"
    assert torch.equal(back["topk_idx"], obj["topk_idx"]) and torch.equal(back["topk_logp"], obj["topk_logp"])
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_other_data_has_its_own_reference():
    reference.save_reference(MODEL, DATA, _lm_ref())
    assert reference.load_reference(MODEL, DataSpec(eval_windows=3, window=64)) is None
    assert reference.load_reference(ModelSpec(id="other"), DATA) is None


def test_encoder_reference_and_overwrite():
    reference.save_reference(MODEL, DATA, {"kind": "encoder", "embeddings": torch.zeros(2, 3)})
    reference.save_reference(MODEL, DATA, {"kind": "encoder", "embeddings": torch.ones(2, 3)})
    assert torch.equal(reference.load_reference(MODEL, DATA)["embeddings"], torch.ones(2, 3))


def test_unreadable_file_counts_as_missing():
    reference.reference_path(MODEL, DATA).write_bytes(b"truncated")
    assert reference.load_reference(MODEL, DATA) is None


@pytest.mark.parametrize(
    "obj,match", [({"kind": "image"}, "kind"), ({"kind": "causal-lm", "topk_idx": torch.zeros(1)}, "topk_logp")]
)
def test_invalid_reference_is_refused(obj, match):
    with pytest.raises(DataError, match=match):
        reference.save_reference(MODEL, DATA, obj)


def test_lock_excludes_another_holder():
    lock_path = reference.reference_path(MODEL, DATA).with_suffix(".lock")
    with reference.reference_lock(MODEL, DATA):
        with open(lock_path, "a+b") as other:  # a second open file description, as another worker has
            with pytest.raises(BlockingIOError):
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock_path, "a+b") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again after the block


def test_cached_reference_computes_once():
    calls = []

    def compute():
        calls.append(1)
        return _lm_ref()

    first = reference.cached_reference(MODEL, DATA, compute)
    second = reference.cached_reference(MODEL, DATA, compute)
    assert len(calls) == 1
    assert torch.equal(first["topk_idx"], second["topk_idx"])


def test_a_causal_lm_reference_must_hold_the_fp32_perplexity(home):
    """Exports are checked against it (ov-export): a reference without it is refused, not half-saved."""
    obj = _lm_ref()
    del obj["perplexity"]
    with pytest.raises(DataError, match="perplexity"):
        reference.save_reference(MODEL, DATA, obj)
    assert reference.load_reference(MODEL, DATA) is None
