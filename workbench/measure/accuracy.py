"""Accuracy: perplexity, KL divergence and top-1 agreement against the
unquantized baseline for causal LMs; cosine of pooled embeddings for encoders.

Models are only called (`model(input_ids=, attention_mask=)`), so torch modules
and runtimes that accept torch tensors are measured the same way.

Why the KL divergence is computed on a coarsened distribution
-------------------------------------------------------------
The baseline's full next-token distributions on the default data (8 windows
of 512 tokens, 4,088 predicted tokens, 49,152-token vocabulary) would be 800 MB
of float32; the reference keeps only the top-k (k=1024 by default)
log-probabilities of each token, 33 MB. KL(P_ref || Q) is then computed on the distribution
coarsened to {the k tokens most likely under P_ref, one bucket for the rest}:
P_rest = 1 - sum P_ref(top-k), Q_rest = 1 - sum Q(the same k tokens).
Merging outcomes never increases a KL divergence (data-processing inequality),
so this is a lower bound of the full-vocabulary KL; the gap is the divergence
inside the rest bucket, weighted by P_rest. It is not negligible on this text:
with SmolLM2-135M on pydoc topics the top 256 tokens leave on average 4% of
P_ref's mass in the rest bucket (median 2%), and on 2 windows the coarsened KL
was 7-8% below the full one for round-to-nearest int8 and int4 g64
(0.00097 vs 0.00105; 0.264 vs 0.284), 5% for int3 (1.14 vs 1.21); k=1024 (the
default) cuts the gap to 2-3%. Read `kl_div` as a consistent, somewhat low figure for
comparing methods on the same data (on those three it ranked them as the
full KL did), not as the exact KL.

Why logits are handled a chunk of positions at a time
-----------------------------------------------------
A window's logits are window x vocabulary floats: 100 MB for 512 tokens of SmolLM2's 49,152-token
vocabulary, 537 MB for a 262,144-token vocabulary, and log-softmax, top-k and the KL terms each
made another full-size copy. The accuracy pass was the run's memory peak. Now a PyTorch causal LM
runs its decoder once per window (`OutputHead`: the model is called with `logits_to_keep=1`, its
last hidden states captured) and its output head is applied to `CHUNK_FLOATS // vocabulary`
positions at a time; a runtime that returns logits (OpenVINO, ONNX Runtime) has them processed per
chunk of positions, with no further full-size copy. Log-softmax, the top-k, the KL terms and
top-1 are per position, so the numbers are those of the whole-window computation.
"""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import DataError
from . import memory

Progress = Callable[[float], None]

# Floor for the probabilities of the rest bucket, so that a rest mass that rounds
# to zero gives a finite term (its weight P_rest is then ~0 anyway).
_REST_FLOOR = 1e-12

# Logits held at once by the accuracy pass and the forward table (float32: 16 MB): 85 positions
# of SmolLM2's 49,152-token vocabulary, 16 of a 262,144-token one. The output head's matrix
# product stays efficient at that many rows; log-softmax and top-k work on one chunk at a time.
CHUNK_FLOATS = 1 << 22


def chunk_positions(vocab_size: int, chunk_floats: int = CHUNK_FLOATS) -> int:
    """Positions whose logits fit in `chunk_floats` floats (at least one)."""
    return max(1, chunk_floats // max(1, int(vocab_size)))


class SplitFailed(RuntimeError):
    """The model's forward did not run its decoder exactly once: its head cannot be applied apart."""


class OutputHead:
    """A Hugging Face causal LM split into its decoder, run once per input, and its output head,
    applied to as many positions at a time as the caller chooses.

    `run` calls the model itself (`model(..., logits_to_keep=1)`, so whatever its forward does
    before the decoder still happens) and captures the decoder's last hidden states with a forward
    hook; `logits` applies the output embedding and the transforms some architectures apply after
    it (Gemma's final logit soft-capping, Cohere's logit scale, Granite's logits scaling). `check`
    compares the last position with the logits the model itself returned: a model whose forward
    does something else after its head is caught there, and the caller falls back to full logits.
    """

    def __init__(self, model: Any, decoder: Any, head: Any):
        self.model, self.decoder, self.head = model, decoder, head
        cfg = getattr(model, "config", None)
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self.softcap = getattr(text, "final_logit_softcapping", None)
        self.scale = getattr(model, "logit_scale", None) if isinstance(getattr(model, "logit_scale", None),
                                                                       (int, float)) else None
        self.divide = getattr(text, "logits_scaling", None)
        self.checked = False

    @classmethod
    def of(cls, model: Any) -> "OutputHead | None":
        """The split of `model`, or None when it is not a torch causal LM that can be split
        (runtimes, encoders, models without `logits_to_keep` or a separate output embedding)."""
        if not isinstance(model, torch.nn.Module):
            return None
        try:
            if "logits_to_keep" not in inspect.signature(model.forward).parameters:
                return None
            head = model.get_output_embeddings()
            decoder = model.get_decoder()
        except (AttributeError, NotImplementedError, ValueError, TypeError):
            return None
        if not isinstance(head, torch.nn.Module) or not isinstance(decoder, torch.nn.Module) or decoder is model:
            return None
        return cls(model, decoder, head)

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states [B, L, H], the model's own logits of the last position [B, 1, V])."""
        captured: list[torch.Tensor] = []

        def hook(_module: Any, _args: Any, output: Any) -> None:
            hidden = getattr(output, "last_hidden_state", None)
            captured.append(hidden if hidden is not None else output[0])

        handle = self.decoder.register_forward_hook(hook)
        try:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1)
        finally:
            handle.remove()
        if len(captured) != 1 or not isinstance(captured[0], torch.Tensor):
            raise SplitFailed(f"{type(self.decoder).__name__} gave {len(captured)} outputs in one forward; expected one")
        return captured[0], out.logits

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the hidden states `hidden` [..., H], as the model's forward computes them."""
        logits = self.head(hidden)
        if self.scale is not None:
            logits = logits * self.scale
        if self.divide is not None:
            logits = logits / self.divide
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def check(self, hidden: torch.Tensor, last_logits: torch.Tensor) -> bool:
        """Whether `logits` reproduces the model's own logits of the last position."""
        mine = self.logits(hidden[:, -1:]).float()
        theirs = torch.as_tensor(last_logits)[:, -1:].float()
        if mine.shape != theirs.shape:
            return False
        tol = 1e-4 * max(1.0, float(theirs.abs().max()))
        return bool(torch.allclose(mine, theirs, rtol=1e-4, atol=tol))


def causal_lm_eval(
    model: Any,
    windows: torch.Tensor,
    reference: dict[str, Any] | None,
    topk: int = 1024,
    progress: Progress | None = None,
    device: str = "cpu",
    chunk_floats: int = CHUNK_FLOATS,
    keep: int | None = None,
) -> tuple[dict[str, float | None], dict[str, torch.Tensor]]:
    """Perplexity on `windows` (LongTensor [n, L], each run as a batch of one) and,
    when `reference` is given, KL divergence and top-1 agreement against it.

    Perplexity is exp of the mean negative log-likelihood of token t+1 given
    tokens up to t over all windows: the same as exp(mean of Hugging Face's
    `labels=ids` losses per window), since the windows have equal length.

    Logits are held for at most `chunk_floats` floats' worth of positions at a time (see the
    module docstring); the numbers do not depend on it.

    Returns (metrics, reference_out). metrics: "perplexity", "kl_div" and
    "top1_agreement" (None without a reference), "eval_tokens".
    reference_out: {"topk_idx": int32 [N, k], "topk_logp": float32 [N, k]}, the
    top-k of each predicted token's log-softmax, sorted descending: what
    `reference` must hold when this model is the baseline. `keep` (default: `topk`) columns of
    it are returned: a run that is not becoming the reference needs its top-1 at most (the task
    metric), and 1024 columns of 8 x 512 positions are 34 MB held until the run ends otherwise.
    """
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise DataError(f"windows: got shape {tuple(windows.shape)}; allowed: [n_windows, length >= 2]")
    n, length = windows.shape
    positions = length - 1
    n_tokens = n * positions
    if reference is not None:
        _check_reference(reference, n_tokens)
    keep = topk if keep is None else min(int(keep), topk)
    if keep < 1:
        raise DataError(f"keep: got {keep}; allowed: 1 to topk ({topk})")

    nll_sum = 0.0
    kl_sum = 0.0
    agree = 0
    idx_parts: list[torch.Tensor] = []
    logp_parts: list[torch.Tensor] = []
    split = OutputHead.of(model)
    with torch.inference_mode():
        for w in range(n):
            ids = windows[w : w + 1].to(device)
            mask = torch.ones_like(ids)
            rows: Callable[[int, int], torch.Tensor] | None = None
            if split is not None:
                try:
                    hidden, last = split.run(ids, mask)
                except SplitFailed:
                    hidden = last = None
                if not split.checked and hidden is not None:
                    split.checked = split.check(hidden, last)
                if split.checked:
                    head, states, vocab = split, hidden[0], last.shape[-1]

                    def rows(a: int, b: int) -> torch.Tensor:
                        return head.logits(states[a:b]).float().cpu()
                else:
                    warnings.warn(
                        f"accuracy: {type(model).__name__}'s output head applied apart did not reproduce its own "
                        "logits; whole-window logits are used instead (same numbers, more memory)",
                        RuntimeWarning, stacklevel=2)
                    split = None
                    del hidden, last
            if rows is None:
                # A runtime returns the whole window's logits: read them a chunk at a time, in place.
                logits = torch.as_tensor(model(input_ids=ids, attention_mask=mask).logits)[0]
                vocab = logits.shape[-1]

                def rows(a: int, b: int) -> torch.Tensor:
                    return logits[a:b].float().cpu()

            targets = windows[w, 1:].cpu()
            step = chunk_positions(vocab, chunk_floats)
            for a in range(0, positions, step):
                b = min(positions, a + step)
                logp = torch.log_softmax(rows(a, b), dim=-1)
                nll_sum += -logp.gather(1, targets[a:b, None]).double().sum().item()
                # Only the kept columns are computed: top-1 agreement reads the first, and the KL
                # reads the reference's top-k, not this model's.
                top_logp, top_idx = torch.topk(logp, min(keep, logp.shape[-1]), dim=-1, sorted=True)
                idx_parts.append(top_idx.to(torch.int32))
                logp_parts.append(top_logp)
                if reference is not None:
                    sl = slice(w * positions + a, w * positions + b)
                    ref_idx = reference["topk_idx"][sl].long()
                    ref_logp = reference["topk_logp"][sl]
                    kl_sum += coarse_kl(ref_logp, logp.gather(1, ref_idx)).double().sum().item()
                    agree += int((top_idx[:, 0] == ref_idx[:, 0]).sum().item())
                del logp, top_idx, top_logp
                # top-k's scratch (MB per row) would otherwise pile up in the heap between the kept
                # results: +0.5 GB per window of a 262,144-token vocabulary (memory.release_unused).
                memory.release_unused(collect=False)
            # The window's hidden states or logits go before the next window's are made.
            rows = states = hidden = last = logits = None
            if progress is not None:
                progress((w + 1) / n)
    memory.release_unused()

    metrics: dict[str, float | None] = {
        "perplexity": math.exp(nll_sum / n_tokens),
        "kl_div": kl_sum / n_tokens if reference is not None else None,
        "top1_agreement": agree / n_tokens if reference is not None else None,
        "eval_tokens": n_tokens,
    }
    ref_out = {"topk_idx": torch.cat(idx_parts), "topk_logp": torch.cat(logp_parts)}
    return metrics, ref_out


def coarse_kl(ref_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) per row on the distribution coarsened to {k tokens, rest}.

    ref_logp: log P of the k tokens (the top-k of P), [N, k]; q_logp: log Q of the
    same tokens, [N, k]. A lower bound of the full-vocabulary KL (see the module
    docstring); exactly 0 when Q's values equal P's.
    """
    p_log = ref_logp.double()
    q_log = q_logp.double()
    head = (p_log.exp() * (p_log - q_log)).sum(-1)
    # 1 - sum(exp(x)) as -expm1(logsumexp(x)): accurate when the head holds nearly all the mass.
    p_rest = (-torch.expm1(torch.logsumexp(p_log, -1))).clamp_min(0.0)
    q_rest = (-torch.expm1(torch.logsumexp(q_log, -1))).clamp_min(0.0)
    rest = p_rest * (p_rest.clamp_min(_REST_FLOOR).log() - q_rest.clamp_min(_REST_FLOOR).log())
    return head + rest


def encoder_embeddings(
    model: Any,
    tokenizer: Any,
    sentences: Sequence[str],
    max_length: int = 128,
    batch_size: int = 16,
    device: str = "cpu",
) -> torch.Tensor:
    """Sentence embeddings [n, hidden] as sentence-transformers computes them for
    all-MiniLM-L6-v2: the mean of `last_hidden_state` over real (unmasked) tokens,
    then L2-normalized. float32 on the CPU.
    """
    if not sentences:
        raise DataError("sentences: got none; allowed: one or more strings")
    parts = []
    with torch.inference_mode():
        for start in range(0, len(sentences), batch_size):
            batch = list(sentences[start : start + batch_size])
            enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            ids = enc["input_ids"].to(device)
            mask = enc["attention_mask"].to(device)
            hidden = torch.as_tensor(model(input_ids=ids, attention_mask=mask).last_hidden_state).float().cpu()
            m = mask.cpu()[..., None].float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
            parts.append(F.normalize(pooled, p=2, dim=1))
    return torch.cat(parts)


def embedding_cosine(emb: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Cosine similarity of each embedding with the baseline's: mean and minimum."""
    if emb.shape != ref.shape:
        raise DataError(f"embeddings: shape {tuple(emb.shape)} does not match the reference's {tuple(ref.shape)}")
    cos = F.cosine_similarity(emb.double(), ref.double(), dim=1)
    return {"embedding_cosine": cos.mean().item(), "embedding_cosine_min": cos.min().item()}


def _check_reference(reference: dict[str, Any], n_tokens: int) -> None:
    for key in ("topk_idx", "topk_logp"):
        if key not in reference:
            raise DataError(f"reference: missing {key!r}; it must come from causal_lm_eval on the baseline")
    idx, logp = reference["topk_idx"], reference["topk_logp"]
    if idx.shape != logp.shape or idx.dim() != 2 or idx.shape[0] != n_tokens:
        raise DataError(
            f"reference: topk_idx {tuple(idx.shape)} / topk_logp {tuple(logp.shape)} do not match "
            f"the {n_tokens} predicted tokens of these windows; recompute the baseline on the same data"
        )
