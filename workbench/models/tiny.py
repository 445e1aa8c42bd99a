"""Tiny random models for tests: built in about a second, offline, from shipped configs.

`tiny-llama` (LlamaForCausalLM) and `tiny-bert` (BertModel) are initialised
with a fixed seed and saved once under `$WORKBENCH_HOME/models/<name>` together
with a tokenizer trained on the pydoc topics text (byte-level BPE for the
Llama, WordPiece for BERT), so they need neither the hub nor another model.
Their vocabulary sizes match the shipped configs exactly.

Torch-side: imports torch at module level.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..errors import ModelNotFound
from .catalog import CATALOG, CONFIG_DIR, PIPELINE_KINDS, catalog_config
from .embedded import Progress, build_once, fix_saved_config
from .tiny_pipelines import training_text

# Bump when the build recipe changes (tokenizer training, init): cached builds are redone.
TINY_RECIPE = 1
SEED = 0
TINY_NAMES = tuple(n for n, e in CATALOG.items() if e.source == "tiny")

LLAMA_SPECIAL = "<|endoftext|>"
BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_dir(name: str, progress: Progress | None = None) -> Path:
    """The saved tiny model `name` (built on first use, rebuilt if its config or recipe changed)."""
    if name not in TINY_NAMES:
        raise ModelNotFound(f"model: {name!r} is not a tiny model; tiny models: {', '.join(TINY_NAMES)}")
    config_sha = hashlib.sha256((CONFIG_DIR / f"{name}.json").read_bytes()).hexdigest()
    recipe = {"recipe": TINY_RECIPE, "seed": SEED, "config_sha256": config_sha}

    def build(out: Path) -> None:
        if progress:
            progress(None, f"building the tiny test model {name}")
        build_tiny(name, out)

    return build_once(name, recipe, build, progress=progress)


# A random Llama with a 262,144-token vocabulary (Gemma 3's size) and a tied embedding: 168M of its
# 179M parameters (671 of 716 MB in fp32) are the embedding, so a whole window's logits dwarf the rest
# of a forward pass. Not in the catalog: benchmarks/memory.py and a slow test pass its directory.
WIDE_VOCAB = "wide-vocab-262k"
WIDE_VOCAB_CONFIG = {
    "vocab_size": 262_144, "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 160, "max_position_embeddings": 2048,
    "tie_word_embeddings": True, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
    "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
}


def wide_vocab_dir(progress: Progress | None = None) -> Path:
    """The wide-vocabulary model's directory under `$WORKBENCH_HOME/models` (built once, ~10 s).

    Its tokenizer is tiny-llama's (512 tokens): evaluation text maps onto the first ids of the
    vocabulary, and every forward pass still computes all 262,144 logits.
    """
    recipe = {"recipe": TINY_RECIPE, "seed": SEED, "config": WIDE_VOCAB_CONFIG}

    def build(out: Path) -> None:
        if progress:
            progress(None, f"building the random model {WIDE_VOCAB}")
        build_wide_vocab(out)

    return build_once(WIDE_VOCAB, recipe, build, progress=progress)


def build_wide_vocab(out: str | Path) -> None:
    """Build the wide-vocabulary Llama (random weights, seed 0) with tiny-llama's tokenizer into `out`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(LlamaConfig(**WIDE_VOCAB_CONFIG)).to(torch.float32)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_dir("tiny-llama")).save_pretrained(out)
    fix_saved_config(out)


def build_tiny(name: str, out: str | Path) -> None:
    """Build tiny model `name` with its tokenizer into `out` (deterministic)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    out = Path(out)
    kind = CATALOG[name].kind
    if kind in PIPELINE_KINDS:
        from .tiny_pipelines import build_pipeline

        build_pipeline(name, out)
        return
    config_dict = catalog_config(name)
    tokenizer = _llama_tokenizer(config_dict) if kind == "causal-lm" else _bert_tokenizer(config_dict)
    config = AutoConfig.for_model(**config_dict)
    torch.manual_seed(SEED)
    auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    model = auto.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    fix_saved_config(out)


def _llama_tokenizer(config: dict):
    """Byte-level BPE (no BOS added, like SmolLM2) with one special token, id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=config["vocab_size"],
        special_tokens=[LLAMA_SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    _check_vocab(tok.get_vocab_size(), config)
    special = LLAMA_SPECIAL
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=special, eos_token=special, unk_token=special, pad_token=special
    )


def _bert_tokenizer(config: dict):
    """Lower-casing WordPiece with [PAD]=0 [UNK] [CLS] [SEP] [MASK], adding [CLS] ... [SEP]."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=config["vocab_size"], special_tokens=BERT_SPECIAL, show_progress=False
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    _check_vocab(tok.get_vocab_size(), config)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _check_vocab(size: int, config: dict) -> None:
    # The embedding matrix is sized from the config: a mismatch would index out of range.
    if size != config["vocab_size"]:
        raise RuntimeError(f"tiny tokenizer trained to {size} tokens, config says vocab_size={config['vocab_size']}")


__all__ = ["TINY_NAMES", "WIDE_VOCAB", "build_tiny", "build_wide_vocab", "tiny_dir", "wide_vocab_dir"]
