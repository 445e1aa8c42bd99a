"""The measurement protocol for pipelines: diffusion, speech-to-text, vision-language.

Every method is measured on the same inputs, against the fp32 PyTorch pipeline's outputs
(the reference, computed once per model and data):

- text-to-image: IMAGES prompts (the first evaluation sentences of the run's text), each
  denoised for STEPS steps from the same seeded latents at the pipeline's native size
  (capped at MAX_SIDE). Accuracy: PSNR and RMS pixel difference against the reference
  images (pixels in [0, 1]); latency: seconds per image, median over repeats.
- speech-to-text and image-text-to-text: teacher-forced decoder logits on the reference's
  own greedy output, compared as for causal LMs (KL on the top-k, top-1 agreement), plus
  the share of greedily generated tokens equal to the reference's; latency: decode tokens/s.

Only the OpenVINO methods take pipelines; the PyTorch reference runs in their environment.
Torch-side: imports torch at module level (workers only).
"""
from __future__ import annotations

import math
import statistics
import time
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..errors import DataError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .context import BuildContext

IMAGES = 4
STEPS = 4
MAX_SIDE = 512
PSNR_CAP_DB = 100.0  # identical images: report a finite PSNR

Progress = Callable[[str, float | None, str], None]


# --------------------------------------------------------------------------- loading
def load_torch_pipeline(kind: str, directory: Any) -> Any:
    """The fp32 PyTorch pipeline of a directory (the reference)."""
    if kind == "text-to-image":
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(str(directory), torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    if kind == "speech-to-text":
        from transformers import AutoModelForSpeechSeq2Seq

        return AutoModelForSpeechSeq2Seq.from_pretrained(str(directory), dtype=torch.float32).eval()
    if kind == "image-text-to-text":
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(str(directory), dtype=torch.float32).eval()
    raise DataError(f"kind: got {kind!r}; no PyTorch pipeline loader for it")


# --------------------------------------------------------------------------- text-to-image
def image_size(pipe: Any) -> int:
    """The side of the generated images: the pipeline's native size, at most MAX_SIDE."""
    model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    config = getattr(model, "config", {}) or {}
    sample = config.get("sample_size", 64) if isinstance(config, dict) else getattr(config, "sample_size", 64)
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    return int(min(int(sample) * int(pipe.vae_scale_factor), MAX_SIDE))


def _start(pipe: Any, n: int, side: int, seed: int) -> list[dict[str, Any]]:
    """How each image starts, the same for every method: explicit seeded latents for U-Net pipelines
    (4-D latents: the OpenVINO and PyTorch pipelines then denoise the very same noise), a seeded
    torch generator for transformer pipelines whose latents are packed differently (SD3, Flux)."""
    unet = getattr(pipe, "unet", None)
    if unet is None:
        return [{"generator": torch.Generator().manual_seed(seed + i)} for i in range(n)]
    config = unet.config
    channels = config.get("in_channels", 4) if isinstance(config, dict) else config.in_channels
    g = torch.Generator().manual_seed(seed)
    f = int(pipe.vae_scale_factor)
    latents = torch.randn((n, int(channels), side // f, side // f), generator=g, dtype=torch.float32)
    return [{"latents": latents[i : i + 1].clone()} for i in range(n)]


def generate_images(pipe: Any, prompts: list[str], seed: int, steps: int = STEPS,
                    progress: Callable[[float], None] | None = None) -> torch.Tensor:
    """Images [n, H, W, 3] in [0, 1], one prompt at a time from the same start for every method."""
    side = image_size(pipe)
    starts = _start(pipe, len(prompts), side, seed)
    out = []
    for i, prompt in enumerate(prompts):
        images = pipe(prompt, num_inference_steps=steps, height=side, width=side, output_type="np",
                      **starts[i]).images
        out.append(torch.as_tensor(images[0], dtype=torch.float32))
        if progress is not None:
            progress((i + 1) / len(prompts))
    return torch.stack(out)


def image_fidelity(images: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """PSNR (dB, mean over images) and RMS pixel difference against the reference images."""
    if images.shape != reference.shape:
        raise DataError(f"reference images: shape {tuple(reference.shape)}, this run {tuple(images.shape)}; "
                        "the reference was computed with other settings: delete it to recompute")
    mse = ((images.double() - reference.double()) ** 2).flatten(1).mean(1)
    psnr = [PSNR_CAP_DB if m <= 10 ** (-PSNR_CAP_DB / 10) else -10 * math.log10(m) for m in mse.tolist()]
    return {"image_psnr_db": statistics.fmean(psnr), "image_rmse": math.sqrt(mse.mean().item())}


def image_latency(pipe: Any, prompt: str, seed: int, warmup: int, repeats: int,
                  steps: int = STEPS) -> tuple[dict, list[dict]]:
    """Seconds per image (batch 1, STEPS steps), median over `repeats` after `warmup`."""
    side = image_size(pipe)
    times = []
    for i in range(warmup + repeats):
        start = _start(pipe, 1, side, seed)[0]
        t0 = time.perf_counter()
        pipe(prompt, num_inference_steps=steps, height=side, width=side, output_type="np", **start)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    row = {"batch_size": 1, "steps": steps, "size": f"{side}x{side}", "latency_s": med,
           "step_ms": 1000 * med / steps, "images_per_s": 1 / med, "spread_s": max(times) - min(times)}
    return {"image_s": med}, [row]


# --------------------------------------------------------------------------- speech and vision-language
SEQ_INPUTS = 4  # clips or images
GEN_TOKENS = 16  # greedy tokens generated per input
TOPK = 1024


def seq_inputs(kind: str, processor: Any, data: Any, seed: int) -> list[dict[str, torch.Tensor]]:
    """The evaluation inputs: synthetic clips, or synthetic images with questions from the evaluation
    text (seeded apart from any calibration inputs), as the processor prepares them."""
    from ..data import media

    if kind == "speech-to-text":
        clips = media.synthetic_audio(SEQ_INPUTS, seed + media.EVAL_SEED_OFFSET)
        return [{"input_features": processor(c, sampling_rate=media.SAMPLING_RATE, return_tensors="pt")
                 .input_features} for c in clips]
    images = media.synthetic_images(SEQ_INPUTS, seed + media.EVAL_SEED_OFFSET)
    out = []
    for image, question in zip(images, prompts_for(data, SEQ_INPUTS, media.QUESTION_CHARS)):
        out.append(dict(processor(images=image, text=vlm_prompt(processor, question), return_tensors="pt")))
    return out


def vlm_prompt(processor: Any, question: str) -> str:
    """The question with the image placeholder, through the processor's chat template when it has one."""
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    token = getattr(processor, "image_token", None) or "<image>"
    return f"{token}\n{question}"


def _decoder_prefix(model: Any) -> list[int]:
    """The tokens a Whisper-style decoder starts from: <|startoftranscript|>, then for multilingual
    models <|en|> <|transcribe|> (generation is asked for English transcription), then
    <|notimestamps|>."""
    gc = model.generation_config
    prefix = [int(gc.decoder_start_token_id)]
    lang_to_id = getattr(gc, "lang_to_id", None) or {}
    task_to_id = getattr(gc, "task_to_id", None) or {}
    if lang_to_id and "<|en|>" in lang_to_id and "transcribe" in task_to_id:
        prefix += [int(lang_to_id["<|en|>"]), int(task_to_id["transcribe"])]
    if getattr(gc, "no_timestamps_token_id", None) is not None and not getattr(gc, "return_timestamps", False):
        prefix.append(int(gc.no_timestamps_token_id))
    return prefix


def _generate_kwargs(kind: str, model: Any) -> dict[str, Any]:
    gc = getattr(model, "generation_config", None)
    if kind == "speech-to-text" and getattr(gc, "lang_to_id", None):
        return {"language": "en", "task": "transcribe"}
    return {}


def greedy_tokens(kind: str, model: Any, inputs: dict, n: int) -> torch.Tensor:
    """The new tokens of greedy generation (at most `n`)."""
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, **_generate_kwargs(kind, model))
    seq = torch.as_tensor(out[0] if not hasattr(out, "sequences") else out.sequences[0])
    if kind == "image-text-to-text":
        return seq[inputs["input_ids"].shape[1]:]
    prefix = _decoder_prefix(model)
    if seq[: len(prefix)].tolist() == prefix:
        seq = seq[len(prefix):]
    return seq[:n]


def teacher_forced_logp(kind: str, model: Any, inputs: dict, tokens: torch.Tensor) -> torch.Tensor:
    """log-softmax [len(tokens), vocab] of the model's predictions of `tokens`, fed the reference's own tokens."""
    with torch.inference_mode():
        if kind == "speech-to-text":
            prefix = torch.tensor(_decoder_prefix(model))
            seq = torch.cat([prefix, tokens.long()])[None]
            logits = torch.as_tensor(model(input_features=inputs["input_features"], decoder_input_ids=seq).logits)[0]
            logits = logits[len(prefix) - 1 : -1]
        else:
            prompt = inputs["input_ids"][0]
            ids = torch.cat([prompt, tokens.long()])[None]
            # pixel_values and whatever else the processor made (image_grid_thw, image_sizes ...)
            extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra)
            logits = torch.as_tensor(out.logits)[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits.float(), dim=-1)


def seq_accuracy(kind: str, model: Any, inputs: list[dict], reference: dict | None,
                 progress: Callable[[float], None] | None = None) -> tuple[dict, dict]:
    """Greedy tokens and teacher-forced top-k per input; against a reference: KL (top-k coarsened,
    as for causal LMs), top-1 agreement and the share of generated tokens equal to the reference's."""
    from .accuracy import coarse_kl

    tokens_all, lengths, idx_parts, logp_parts = [], [], [], []
    kl_sum, agree, same, n_tok, offset = 0.0, 0, 0, 0, 0
    for i, inp in enumerate(inputs):
        own = greedy_tokens(kind, model, inp, GEN_TOKENS)
        if reference is None:
            target = own
        else:
            length = int(reference["lengths"][i])
            target = reference["tokens"][offset : offset + length]
        if len(target):
            logp = teacher_forced_logp(kind, model, inp, target)
            top_logp, top_idx = torch.topk(logp, min(TOPK, logp.shape[-1]), dim=-1)
            idx_parts.append(top_idx.to(torch.int32))
            logp_parts.append(top_logp)
            if reference is not None:
                sl = slice(offset, offset + len(target))
                ref_idx = reference["topk_idx"][sl].long()
                kl_sum += coarse_kl(reference["topk_logp"][sl], logp.gather(1, ref_idx)).double().sum().item()
                agree += int((top_idx[:, 0] == ref_idx[:, 0]).sum().item())
                m = min(len(own), len(target))
                same += int((own[:m] == target[:m]).sum().item())
        n_tok += len(target)
        offset += len(target)
        tokens_all.append(target.long())
        lengths.append(len(target))
        if progress is not None:
            progress((i + 1) / len(inputs))
    if n_tok == 0:
        raise DataError("the reference generated no tokens for any input: nothing to compare")
    metrics: dict[str, float] = {"eval_tokens": n_tok}
    if reference is not None:
        metrics.update(kl_div=kl_sum / n_tok, top1_agreement=agree / n_tok, generated_token_agreement=same / n_tok)
    own_out = {"kind": kind, "tokens": torch.cat(tokens_all), "lengths": torch.tensor(lengths),
               "topk_idx": torch.cat(idx_parts), "topk_logp": torch.cat(logp_parts)}
    return metrics, own_out


def seq_latency(kind: str, model: Any, inputs: dict, warmup: int, repeats: int) -> tuple[dict, list[dict]]:
    """First-token latency (encoder or vision tower included) and decode tokens/s, medians over repeats."""
    def timed(n: int) -> float:
        times = []
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            with torch.inference_mode():
                model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               **_generate_kwargs(kind, model))
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    # One untimed call whatever `warmup` says: the first generate pays one-time costs (kernel selection,
    # caches) that, with warmup=0 on a busy machine, made the 1-token time exceed the full one (no decode).
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=1, min_new_tokens=1, do_sample=False, **_generate_kwargs(kind, model))
    from .latency import until_ordered

    first, full = until_ordered(lambda: timed(1), lambda: timed(GEN_TOKENS), key=float)
    decode = (GEN_TOKENS - 1) / (full - first) if full > first else None
    row = {"batch_size": 1, "new_tokens": GEN_TOKENS, "first_token_ms": 1000 * first, "generate_s": full,
           "decode_tok_s": decode}
    return {"decode_tok_s": decode, "first_token_ms": 1000 * first}, [row]


# --------------------------------------------------------------------------- dispatch
def accuracy(kind: str, pipe: Any, ctx: "BuildContext", reference: dict | None,
             progress: Callable[[float], None] | None = None) -> tuple[dict, dict]:
    """(metrics, this pipeline's outputs) on the run's evaluation inputs."""
    data, seed = ctx.spec.data, ctx.spec.seed
    if kind == "text-to-image":
        images = generate_images(pipe, prompts_for(data), seed, progress=progress)
        metrics = image_fidelity(images, reference["images"]) if reference is not None else {}
        return metrics, {"kind": kind, "images": images}
    if kind in ("speech-to-text", "image-text-to-text"):
        inputs = seq_inputs(kind, processor(ctx), data, seed)
        return seq_accuracy(kind, pipe, inputs, reference, progress)
    raise DataError(f"kind: got {kind!r}; no accuracy protocol for it")


def latency(kind: str, pipe: Any, ctx: "BuildContext") -> tuple[dict, dict]:
    """(headline metrics, tables) of the pipeline's speed."""
    data, seed, bench = ctx.spec.data, ctx.spec.seed, ctx.spec.bench
    if kind == "text-to-image":
        metrics, rows = image_latency(pipe, prompts_for(data)[0], seed, bench.warmup, bench.repeats)
        return metrics, {"pipeline": rows}
    if kind in ("speech-to-text", "image-text-to-text"):
        inputs = seq_inputs(kind, processor(ctx), data, seed)[0]
        metrics, rows = seq_latency(kind, pipe, inputs, bench.warmup, bench.repeats)
        return metrics, {"pipeline": rows}
    raise DataError(f"kind: got {kind!r}; no latency protocol for it")


def processor(ctx: "BuildContext") -> Any:
    """The model's processor (feature extractor or image processor with the tokenizer)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(ctx.model_dir()))


def prompts_for(data: Any, n: int = IMAGES, max_chars: int | None = None) -> list[str]:
    """The first `n` paragraphs of the run's evaluation text, cut at a word boundary to `max_chars`
    (default PROMPT_CHARS), as calibration prompts are from the calibration part."""
    from ..data import media, text

    return text.paragraphs(text.evaluation_text(data), n, max_chars or media.PROMPT_CHARS)


__all__ = ["IMAGES", "STEPS", "accuracy", "generate_images", "image_fidelity", "latency", "load_torch_pipeline",
           "prompts_for", "seq_accuracy", "seq_inputs"]
