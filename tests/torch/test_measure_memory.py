"""Memory measurement: bytes held by tensors and modules, disk size, process peaks."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from workbench.measure import memory


class Packed(torch.Tensor):
    """A minimal wrapper subclass in the style of torchao/quanto: int8 data plus
    float32 scales behind a float32 face; `__tensor_flatten__` names the inner tensors."""

    @staticmethod
    def __new__(cls, qdata: torch.Tensor, scale: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(cls, qdata.shape, dtype=torch.float32, device=qdata.device)

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor):
        self.qdata = qdata
        self.scale = scale

    def __tensor_flatten__(self):
        return ["qdata", "scale"], None

    @staticmethod
    def __tensor_unflatten__(inner, ctx, outer_size, outer_stride):
        return Packed(inner["qdata"], inner["scale"])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.detach.default:
            t = args[0]
            return Packed(t.qdata.detach(), t.scale.detach())
        raise NotImplementedError(f"Packed does not implement {func}")


class Nested(Packed):
    """A wrapper whose inner data is itself a wrapper (recursion)."""

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor):
        super().__init__(qdata, scale)


def _packed(out: int = 64, inp: int = 32) -> Packed:
    return Packed(torch.zeros(out, inp, dtype=torch.int8), torch.ones(out, 1))


def test_plain_tensor_bytes():
    assert memory.tensor_bytes(torch.zeros(10, 3)) == 120
    assert memory.tensor_bytes(torch.zeros(7, dtype=torch.float16)) == 14
    assert memory.tensor_bytes(torch.zeros(4, 4).t()) == 64  # a transposed view spans the same bytes
    assert memory.tensor_bytes(torch.zeros(1, 8).expand(100, 8)) == 32  # an expanded view holds one row
    assert memory.tensor_bytes(torch.empty(1000, device="meta")) == 0


def test_wrapper_subclass_counts_inner_tensors_not_its_dtype():
    t = _packed()
    assert t.dtype == torch.float32 and t.numel() * t.element_size() == 64 * 32 * 4
    assert memory.tensor_bytes(t) == 64 * 32 * 1 + 64 * 4


def test_nested_wrapper_recurses():
    inner = _packed(8, 16)
    t = Nested(inner, torch.ones(8, 2))
    assert memory.tensor_bytes(t) == 8 * 16 + 8 * 4 + 8 * 2 * 4


def test_wrapper_as_parameter_in_a_module():
    lin = nn.Linear(32, 64, bias=True)
    lin.weight = nn.Parameter(_packed(), requires_grad=False)
    assert memory.module_weight_bytes(lin) == 64 * 32 + 64 * 4 + 64 * 4  # packed + scales + fp32 bias


def _tiny_llama(tie: bool) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(cfg)


def test_tied_embeddings_count_once_and_nonpersistent_buffers_count():
    tied = _tiny_llama(tie=True)
    untied = _tiny_llama(tie=False)
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()
    state = tied.state_dict()
    non_persistent = [n for n, _ in tied.named_buffers() if n not in state]
    assert "model.rotary_emb.inv_freq" in non_persistent  # held, though never saved
    held = {t.data_ptr(): t.numel() * t.element_size() for t in [*tied.parameters(), *tied.buffers()]}
    assert memory.module_weight_bytes(tied) == sum(held.values())
    params_only = sum(p.numel() * 4 for p in tied.parameters())  # parameters() already drops the tied duplicate
    assert memory.module_weight_bytes(tied) > params_only
    assert memory.module_weight_bytes(untied) - memory.module_weight_bytes(tied) == 100 * 16 * 4


def test_tied_through_separate_parameter_objects_counts_once():
    a = nn.Linear(8, 8, bias=False)
    b = nn.Linear(8, 8, bias=False)
    b.weight = nn.Parameter(a.weight.data)  # a different Parameter on the same storage
    model = nn.Sequential(a, b)
    assert memory.module_weight_bytes(model) == 8 * 8 * 4


def test_views_of_one_storage_count_their_union():
    m = nn.Module()
    base = torch.zeros(30)
    m.register_buffer("a", base[:20])
    m.register_buffer("b", base[10:])  # overlaps a on 10..20
    m.register_buffer("c", torch.zeros(5), persistent=False)
    assert memory.module_weight_bytes(m) == 30 * 4 + 5 * 4


def test_tensors_in_plain_attributes_count_like_hqq_meta():
    m = nn.Linear(16, 16, bias=False)
    m.meta = {"scale": torch.ones(16, 2), "zero": torch.ones(16, 2), "nested": {"scale": torch.ones(4)}}
    base = 16 * 16 * 4
    assert memory.module_weight_bytes(m, include_attributes=False) == base
    assert memory.module_weight_bytes(m) == base + 2 * 16 * 2 * 4 + 4 * 4


def test_dir_bytes_counts_files_once(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 234)
    os.symlink(tmp_path / "a.bin", tmp_path / "sub" / "link.bin")  # the same file again
    os.symlink(tmp_path / "missing", tmp_path / "dangling")
    assert memory.dir_bytes(tmp_path) == 1234
    assert memory.dir_bytes(tmp_path / "a.bin") == 1000
    with pytest.raises(FileNotFoundError, match="path"):
        memory.dir_bytes(tmp_path / "nope")


def test_rss_tracks_a_large_allocation():
    # In a fresh interpreter: in this one, memory freed by earlier tests may be handed out again
    # without the RSS growing (seen once in CI: before == during), which says nothing about
    # whether the counter tracks new pages.
    code = ("import torch\n"
            "from workbench.measure import memory\n"
            "before = memory.current_rss_bytes()\n"
            "big = torch.ones(25_000_000)  # 100 MB, touched\n"
            "during = memory.current_rss_bytes()\n"
            "peak = memory.peak_rss_bytes()\n"
            "assert big[-1].item() == 1.0\n"
            "assert during - before > 80 * 2**20, (before, during)\n"
            "assert peak >= during > 0, (peak, during)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_phase_peak_resets_but_the_run_peak_is_kept():
    big = torch.ones(50_000_000)  # 200 MB, touched
    assert big[-1].item() == 1.0
    del big
    run_peak = memory.peak_rss_bytes()
    if not memory.reset_phase_peak():
        pytest.skip("this kernel cannot reset the RSS high-water mark")
    small = torch.ones(2_000_000)
    assert small[-1].item() == 1.0
    phase = memory.phase_peak_bytes()
    assert phase < run_peak - 150 * 2**20  # the freed 200 MB are not in this phase
    assert memory.peak_rss_bytes() >= run_peak  # but the process peak remembers them


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_cuda_max_allocated_is_none_without_cuda():
    assert memory.cuda_max_allocated_bytes() is None
