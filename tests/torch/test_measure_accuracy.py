"""Accuracy measurement: perplexity, KL and top-1 agreement against a reference,
pooled embeddings and their cosine. Tiny random models built inline, plus one
check on the real SmolLM2 against the documented perplexity."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from workbench.errors import DataError
from workbench.measure import accuracy

VOCAB = 96


@pytest.fixture(scope="module")
def tiny_lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharpen the random model so its distributions are not near-uniform
        model.lm_head.weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def perturbed_lm(tiny_lm) -> LlamaForCausalLM:
    model = copy.deepcopy(tiny_lm)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 33), generator=torch.Generator().manual_seed(2))


def _full_log_probs(model, windows) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([torch.log_softmax(model(input_ids=w[None]).logits[0, :-1].float(), -1) for w in windows])


def test_perplexity_equals_exp_of_mean_hf_loss(tiny_lm, windows):
    metrics, _ = accuracy.causal_lm_eval(tiny_lm, windows, None)
    with torch.no_grad():
        losses = [tiny_lm(input_ids=w[None], labels=w[None]).loss.item() for w in windows]
    assert metrics["perplexity"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)
    assert metrics["eval_tokens"] == 3 * 32
    assert metrics["kl_div"] is None and metrics["top1_agreement"] is None


def test_reference_out_is_sorted_topk_of_log_softmax(tiny_lm, windows):
    _, ref = accuracy.causal_lm_eval(tiny_lm, windows, None, topk=10)
    assert ref["topk_idx"].dtype == torch.int32 and ref["topk_logp"].dtype == torch.float32
    assert ref["topk_idx"].shape == ref["topk_logp"].shape == (96, 10)
    assert bool((ref["topk_logp"][:, :-1] >= ref["topk_logp"][:, 1:]).all())
    full = _full_log_probs(tiny_lm, windows)
    assert torch.equal(full.gather(1, ref["topk_idx"].long()), ref["topk_logp"])
    assert torch.equal(ref["topk_logp"][:, 0], full.max(-1).values)
    # k larger than the vocabulary is the whole vocabulary
    _, whole = accuracy.causal_lm_eval(tiny_lm, windows, None, topk=1000)
    assert whole["topk_idx"].shape == (96, VOCAB)


def test_model_against_its_own_reference(tiny_lm, windows):
    _, ref = accuracy.causal_lm_eval(tiny_lm, windows, None)
    metrics, _ = accuracy.causal_lm_eval(tiny_lm, windows, ref)
    assert metrics["kl_div"] == 0.0
    assert metrics["top1_agreement"] == 1.0


def test_kl_with_the_whole_vocabulary_is_the_full_kl(tiny_lm, perturbed_lm, windows):
    _, ref = accuracy.causal_lm_eval(tiny_lm, windows, None, topk=VOCAB)
    metrics, _ = accuracy.causal_lm_eval(perturbed_lm, windows, ref)
    p, q = _full_log_probs(tiny_lm, windows).double(), _full_log_probs(perturbed_lm, windows).double()
    full_kl = (p.exp() * (p - q)).sum(-1).mean().item()
    assert full_kl > 0.01
    assert metrics["kl_div"] == pytest.approx(full_kl, rel=1e-6)
    agreement = (p.argmax(-1) == q.argmax(-1)).double().mean().item()
    assert metrics["top1_agreement"] == pytest.approx(agreement)
    assert metrics["top1_agreement"] < 1.0


def test_keep_returns_the_leading_columns_and_leaves_the_metrics_as_they_are(tiny_lm, perturbed_lm, windows):
    # A run that is not the reference keeps its top-1 only (the task metric reads it): the KL and
    # top-1 agreement against the reference's top-k must not change with it.
    _, ref = accuracy.causal_lm_eval(tiny_lm, windows, None, topk=10)
    full, own_full = accuracy.causal_lm_eval(perturbed_lm, windows, ref, topk=10)
    kept, own_kept = accuracy.causal_lm_eval(perturbed_lm, windows, ref, topk=10, keep=1)
    assert kept == full
    assert own_kept["topk_idx"].shape == own_kept["topk_logp"].shape == (96, 1)
    assert torch.equal(own_kept["topk_idx"], own_full["topk_idx"][:, :1])
    assert torch.equal(own_kept["topk_logp"], own_full["topk_logp"][:, :1])
    with pytest.raises(DataError, match="keep"):
        accuracy.causal_lm_eval(perturbed_lm, windows, ref, keep=0)


def test_kl_with_few_tokens_is_a_lower_bound(tiny_lm, perturbed_lm, windows):
    _, whole = accuracy.causal_lm_eval(tiny_lm, windows, None, topk=VOCAB)
    full_kl, _ = accuracy.causal_lm_eval(perturbed_lm, windows, whole)
    _, few = accuracy.causal_lm_eval(tiny_lm, windows, None, topk=4)
    coarse, _ = accuracy.causal_lm_eval(perturbed_lm, windows, few)
    assert 0 < coarse["kl_div"] <= full_kl["kl_div"] + 1e-9
    assert coarse["top1_agreement"] == full_kl["top1_agreement"]  # the argmax is inside any top-k


def test_coarse_kl_by_hand():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.25, 0.25, 0.5])
    head_p, head_q = p[:2].log()[None], q[:2].log()[None]
    expected = 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.5)
    assert accuracy.coarse_kl(head_p, head_q).item() == pytest.approx(expected, rel=1e-6)
    # merging the last two outcomes: {0.5, 0.5} vs {0.25, 0.75}
    merged = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert accuracy.coarse_kl(p[:1].log()[None], q[:1].log()[None]).item() == pytest.approx(merged, rel=1e-6)
    assert merged < expected


def test_reference_of_other_data_is_refused(tiny_lm, windows):
    _, ref = accuracy.causal_lm_eval(tiny_lm, windows[:2], None)
    with pytest.raises(DataError, match="reference"):
        accuracy.causal_lm_eval(tiny_lm, windows, ref)


# --- encoders ------------------------------------------------------------------

WORDS = "the a cat dog sat ran on under mat rug quickly slowly big small red blue".split()


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


@pytest.fixture(scope="module")
def tiny_encoder() -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(WORDS) + 2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
    )
    return BertModel(cfg, add_pooling_layer=False).eval()


SENTENCES = ["the cat sat on the mat", "a dog", "the big red dog ran quickly under the small blue rug", "cat"]


def test_embeddings_are_masked_mean_pooled_and_normalized(tiny_encoder, tokenizer):
    emb = accuracy.encoder_embeddings(tiny_encoder, tokenizer, SENTENCES, batch_size=4)
    assert emb.shape == (4, 32) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-6)
    # padding must not change a sentence's embedding: batched with a long sentence == alone
    alone = accuracy.encoder_embeddings(tiny_encoder, tokenizer, SENTENCES, batch_size=1)
    assert torch.allclose(emb, alone, atol=1e-5)
    # and it is the mean of that sentence's token states
    enc = tokenizer(["a dog"], return_tensors="pt")
    with torch.no_grad():
        h = tiny_encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state[0]
    assert torch.allclose(emb[1], torch.nn.functional.normalize(h.mean(0), dim=0), atol=1e-5)


def test_embedding_cosine(tiny_encoder, tokenizer):
    emb = accuracy.encoder_embeddings(tiny_encoder, tokenizer, SENTENCES)
    same = accuracy.embedding_cosine(emb, emb)
    assert same["embedding_cosine"] == pytest.approx(1.0) and same["embedding_cosine_min"] == pytest.approx(1.0)
    noisy = emb + 0.3 * torch.randn(emb.shape, generator=torch.Generator().manual_seed(0))
    other = accuracy.embedding_cosine(noisy, emb)
    assert other["embedding_cosine_min"] <= other["embedding_cosine"] < 1.0
    with pytest.raises(DataError, match="shape"):
        accuracy.embedding_cosine(emb[:2], emb)


# --- the real model -------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    from workbench.models import loader
    from workbench.spec import ModelSpec

    spec = ModelSpec("smollm2-135m")  # the product's conversion, cached in WORKBENCH_HOME
    return loader.load_model(spec, kind="causal-lm"), loader.load_tokenizer(spec)


@pytest.mark.torch
def test_smollm2_perplexity_on_pydoc_topics(smollm2):
    import pydoc_data.topics

    model, tok = smollm2
    ids = torch.tensor(tok("\n\n".join(pydoc_data.topics.topics.values())).input_ids)
    windows = ids[: 8 * 512].view(8, 512)
    metrics, ref = accuracy.causal_lm_eval(model, windows, None)
    assert metrics["perplexity"] == pytest.approx(14.70, abs=0.05)
    assert metrics["eval_tokens"] == 8 * 511
    assert ref["topk_idx"].shape == (8 * 511, 1024)
