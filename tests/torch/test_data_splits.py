"""Evaluation windows and calibration samples at the token level."""
from __future__ import annotations

import math

import pytest
import torch

from workbench.data import splits, text
from workbench.errors import DataError
from workbench.models import loader
from workbench.spec import DataSpec, ModelSpec

pytestmark = pytest.mark.torch

SMALL = DataSpec(eval_windows=4, window=64, calib_samples=16, calib_seq_len=128)


@pytest.fixture(scope="module")
def tok():
    return loader.load_tokenizer(ModelSpec("tiny-llama"))


def test_eval_windows_are_the_first_tokens(tok):
    w = splits.eval_windows(tok, SMALL)
    assert w.shape == (4, 64) and w.dtype == torch.long
    ids = tok(text.evaluation_text(SMALL))["input_ids"]
    assert w.flatten().tolist() == ids[: 4 * 64]  # consecutive and non-overlapping, from the start
    assert torch.equal(w, splits.eval_windows(tok, SMALL))


def test_eval_windows_too_short(tok, tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("a few words\n\nand a few more")
    expected = r"has \d+ tokens, fewer than eval_windows x window = 4096: lower eval_windows or window"
    with pytest.raises(DataError, match=expected):
        splits.eval_windows(tok, DataSpec(source=f"file:{f}"))


def test_calibration_samples_come_from_the_calibration_part(tok):
    samples = splits.calibration_samples(tok, SMALL)
    assert len(samples) == 16 and len(set(samples)) == 16
    evaluation = text.evaluation_text(SMALL)
    calibration = text.calibration_text(SMALL)
    for s in samples:
        assert s in calibration
        assert s not in evaluation
        n = len(tok(s, add_special_tokens=False)["input_ids"])
        assert abs(n - 128) <= 4, n  # sliced at token boundaries: re-tokenizes to about the same length
    assert samples == splits.calibration_samples(tok, SMALL)  # deterministic
    # Spread over the whole calibration part, not just its start.
    assert calibration.index(samples[-1]) > 0.9 * (len(calibration) - len(samples[-1]))


def test_calibration_samples_do_not_overlap_each_other(tok):
    samples = splits.calibration_samples(tok, SMALL)
    calibration = text.calibration_text(SMALL)
    spans = sorted((calibration.index(s), calibration.index(s) + len(s)) for s in samples)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))


def test_calibration_too_short(tok, tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("first half of a tiny text\n\nsecond half, just as tiny")
    expected = r"fewer than calib_samples x calib_seq_len = 16384: lower calib_samples or calib_seq_len"
    with pytest.raises(DataError, match=expected):
        splits.calibration_samples(tok, DataSpec(source=f"file:{f}"))
    same = tmp_path / "same.txt"
    same.write_text("repeated paragraph\n\nrepeated paragraph")
    with pytest.raises(DataError, match="calibration part .* is empty"):
        splits.calibration_samples(tok, DataSpec(source=f"file:{same}"))


def test_encoder_tokenizer_calibration(tmp_path):
    bert_tok = loader.load_tokenizer(ModelSpec("tiny-bert"))
    samples = splits.calibration_samples(bert_tok, DataSpec(calib_samples=8, calib_seq_len=64))
    calibration = text.calibration_text(DataSpec())
    assert len(samples) == 8 and all(s in calibration for s in samples)  # original text, not lower-cased decodes


def test_smollm2_reference_perplexity():
    """The fp32 reference from docs/backends.md: 14.70 on the first 8 non-overlapping 512-token windows."""
    spec = ModelSpec("smollm2-135m")
    model = loader.load_model(spec, "causal-lm")
    windows = splits.eval_windows(loader.load_tokenizer(spec), DataSpec())
    assert windows.shape == (8, 512)
    with torch.no_grad():
        losses = [model(w[None], labels=w[None]).loss.item() for w in windows]
    assert math.exp(sum(losses) / len(losses)) == pytest.approx(14.70, abs=0.05)
