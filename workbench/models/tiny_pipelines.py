"""Tiny random pipelines for tests: diffusion, speech-to-text, vision-language.

No real weights of such models can be fetched here, so the OpenVINO pipeline
paths are tested on pipelines built from the configs in `configs/<name>.json`,
with a fixed seed and tokenizers trained on the pydoc topics text. They run in
the `openvino` environment (diffusers is installed there, not in `torch`).

Torch-side: imports torch inside the builders.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .catalog import catalog_config

SEED = 0


def build_pipeline(name: str, out: Path) -> None:
    """Build tiny pipeline `name` into `out` (deterministic)."""
    builders: dict[str, Callable[[dict, Path], None]] = {
        "tiny-sd": _build_sd,
        "tiny-whisper": _build_whisper,
        "tiny-vlm": _build_vlm,
    }
    builders[name](catalog_config(name), Path(out))


def training_text() -> list[str]:
    """Paragraphs of the pydoc topics text, to train the tiny tokenizers on."""
    import pydoc_data.topics

    return [p for p in "\n\n".join(pydoc_data.topics.topics.values()).split("\n\n") if p.strip()]


def _clip_tokenizer(vocab_size: int, model_max_length: int) -> Any:
    """A CLIP tokenizer (CLIP's normalizer and pre-tokenizer, `</w>` word ends) with a BPE
    vocabulary of `vocab_size` trained on the pydoc text."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer()._tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|startoftext|>", "<|endoftext|>"], end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(training_text(), trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=model_max_length)


def _build_sd(cfg: dict, out: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED)
    tokenizer = _clip_tokenizer(cfg["tokenizer"]["vocab_size"], cfg["tokenizer"]["model_max_length"])
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
                                 **cfg["text_encoder"])
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**cfg["unet"]),
        vae=AutoencoderKL(**cfg["vae"]),
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        scheduler=PNDMScheduler(**cfg["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)


# Whisper's special tokens in the order of the English-only checkpoints: WhisperTokenizer computes
# the language id as <|startoftranscript|> + 1 + index, and timestamps would follow <|notimestamps|>.
WHISPER_SPECIAL = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                   "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]


def _byte_bpe(vocab_size: int, special: list[str]) -> tuple[dict, list[tuple[str, str]]]:
    """(vocab, merges) of a byte-level BPE trained on the pydoc text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


def _build_whisper(cfg: dict, out: Path) -> None:
    """Whisper with the standard 30 s geometry: optimum-intel traces the encoder with 3000 frames
    whatever the model takes. init_std 0.4: at 0.02 a random decoder repeats one token for every
    input, and comparing outputs would prove nothing."""
    import torch
    from tokenizers import AddedToken
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)

    torch.manual_seed(SEED)
    vocab, merges = _byte_bpe(cfg["tokenizer"]["base_vocab_size"], [])
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                                 eos_token="<|endoftext|>", pad_token="<|endoftext|>", add_prefix_space=False,
                                 model_max_length=cfg["tokenizer"]["model_max_length"])
    tokenizer.add_tokens([AddedToken(t, lstrip=False, rstrip=False, normalized=False, special=True)
                          for t in WHISPER_SPECIAL], special_tokens=True)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in WHISPER_SPECIAL}
    eot, sot, no_ts = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(**cfg["feature_extractor"]),
                                 tokenizer=tokenizer)
    suppress = [vocab["\u0120"], eot]  # a leading space and end of text, as in real Whisper
    config = WhisperConfig(vocab_size=len(tokenizer), pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
                           decoder_start_token_id=sot, begin_suppress_tokens=suppress, suppress_tokens=[],
                           **cfg["model"])
    model = WhisperForConditionalGeneration(config).eval()
    # English-only (no lang_to_id: its presence alone turns on language detection). max_length bounds
    # optimum-intel's calibration loop, which calls generate() with no length.
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=cfg["generation_max_length"], no_timestamps_token_id=no_ts, is_multilingual=False,
        begin_suppress_tokens=suppress, suppress_tokens=[], return_timestamps=False, forced_decoder_ids=None,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)


def _build_vlm(cfg: dict, out: Path) -> None:
    """LLaVA: a CLIP vision tower and a Llama, with a processor and a chat template. The config's
    image_seq_length must equal the image tokens the processor expands to, else optimum-intel
    falls back to legacy merging and refuses the inputs."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    torch.manual_seed(SEED)
    image_token = "<image>"
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(training_text(), trainer=trainers.BpeTrainer(
        vocab_size=cfg["tokenizer"]["vocab_size"], special_tokens=["<pad>", "<s>", "</s>", "<unk>", image_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": image_token}, padding_side="left",
        model_max_length=cfg["tokenizer"]["model_max_length"])
    side, patch = cfg["image_size"], cfg["patch_size"]
    special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=side, patch_size=patch, **cfg["vision_config"]),
        text_config=LlamaConfig(vocab_size=len(tokenizer), **special, **cfg["text_config"]),
        image_token_index=tokenizer.convert_tokens_to_ids(image_token), projector_hidden_act="gelu",
        vision_feature_select_strategy=cfg["vision_feature_select_strategy"],
        vision_feature_layer=cfg["vision_feature_layer"], image_seq_length=(side // patch) ** 2,
    )
    for k, v in special.items():
        setattr(config, k, v)
    model = LlavaForConditionalGeneration(config).eval()
    for k, v in special.items():
        setattr(model.generation_config, k, v)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                           do_center_crop=True, do_resize=True),
        tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy=cfg["vision_feature_select_strategy"],
        num_additional_image_tokens=1, image_token=image_token, chat_template=VLM_CHAT_TEMPLATE,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)


# Renders {"type": "image"} as the image token (optimum-intel's preprocess_inputs relies on it).
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


__all__ = ["build_pipeline", "training_text"]
