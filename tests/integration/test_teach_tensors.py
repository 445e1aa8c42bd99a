"""Real weights and activations reach the kernel as numpy through the torch environment, cached."""
import numpy as np
import pytest

from workbench import paths
from workbench.teach import tensors

from ..conftest import requires_torch_env

pytestmark = requires_torch_env


def test_weight_and_activations_of_a_tiny_model_have_the_layer_shapes():
    w = tensors.weight("tiny-llama", "model.layers.0.mlp.down_proj.weight")
    assert w.shape == (64, 128) and w.dtype == np.float32 and np.abs(w).max() > 0
    acts = tensors.activations("tiny-llama", ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"],
                               samples=2, seq_len=16)
    down, q = acts["model.layers.0.mlp.down_proj"], acts["model.layers.1.self_attn.q_proj"]
    assert down.shape[1] == 128 and q.shape[1] == 64 and down.shape[0] == q.shape[0]
    assert 2 <= down.shape[0] <= 2 * 16  # tokens of two calibration samples, each cut at 16
    cached = sorted(paths.subdir("tensors").glob("activations-*.npz"))
    again = tensors.activations("tiny-llama", ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"],
                                samples=2, seq_len=16)
    assert sorted(paths.subdir("tensors").glob("activations-*.npz")) == cached  # read back, not recaptured
    assert np.array_equal(again["model.layers.0.mlp.down_proj"], down)


def test_an_unknown_layer_fails_with_the_names_that_exist():
    with pytest.raises(RuntimeError, match=r"layers: model.layers.9.mlp not in tiny-llama; linear layers: .*q_proj"):
        tensors.activations("tiny-llama", ["model.layers.9.mlp"], samples=1, seq_len=8)


def test_bad_arguments_are_refused_before_any_process_starts():
    with pytest.raises(ValueError, match="samples: got 0"):
        tensors.activations("tiny-llama", ["x"], samples=0)
    with pytest.raises(ValueError, match="names: got an empty list"):
        tensors.activations("tiny-llama", [])
