"""Tiny random models and a stand-in build context, shared by the method tests in the torch env."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM


class Ctx:
    """The part of the worker's BuildContext that the methods' `build()` uses."""

    def __init__(self, path: Path, auto=AutoModelForCausalLM, tokenizer_path: Path | None = None):
        self.path, self.auto = path, auto
        self.tokenizer_path = tokenizer_path or path
        self.device = "cpu"
        self.progress_calls: list[tuple[str, float | None]] = []

    @property
    def stages(self) -> list[str]:
        return [s for s, _ in self.progress_calls]

    def load_model(self, dtype: str = "float32", path: Path | None = None, **kw):
        return self.auto.from_pretrained(path or self.path, dtype=getattr(torch, dtype), **kw).eval()

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.tokenizer_path)

    def calibration_texts(self) -> list[str]:
        import pydoc_data.topics as topics

        text = "\n".join(topics.topics.values())
        return [text[i * 600:(i + 1) * 600] for i in range(16)]

    def progress(self, stage: str, fraction: float | None = None, message: str = "") -> None:
        self.progress_calls.append((stage, fraction))

    def warn(self, message: str) -> None:
        pass


def save_llama(path: Path, hidden: int = 64, init: float = 0.1) -> Path:
    """A 2-layer Llama (4 heads, 2 KV heads, intermediate 2 x hidden, tied lm_head), seed 0."""
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=hidden // 4, vocab_size=512, tie_word_embeddings=True,
                      initializer_range=init, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def save_bert(path: Path, vocab: int = 256) -> Path:
    """A 2-layer BERT with hidden size 64, seed 0."""
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     vocab_size=vocab, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(path)
    return path


def ids(n: int = 16, vocab: int = 512) -> torch.Tensor:
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(1))


def logits(model, x=None) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids() if x is None else x).logits


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))
