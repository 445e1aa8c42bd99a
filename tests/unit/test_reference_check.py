"""The export check: a run that must reproduce the fp32 PyTorch model is flagged when it does not."""
import math

from workbench.result import RunStatus
from workbench.worker import _reference_check


def test_perplexity_within_tolerance_passes_and_records_the_reference():
    metrics = {"perplexity": 14.70}
    assert _reference_check(metrics, {"perplexity": 14.704}, 0.005) == (RunStatus.OK, None)
    assert metrics["reference_perplexity"] == 14.704


def test_perplexity_off_by_more_than_the_tolerance_is_flagged_with_both_numbers():
    # The rope_theta trap of docs/backends.md: 16.30 instead of 14.70.
    status, error = _reference_check({"perplexity": 16.30}, {"perplexity": 14.704}, 0.005)
    assert status is RunStatus.FLAGGED
    assert "16.3000" in error and "14.7040" in error and "+10.85%" in error and "0.5%" in error


def test_non_finite_perplexity_is_flagged():
    status, _ = _reference_check({"perplexity": math.inf}, {"perplexity": 14.7}, 0.02)
    assert status is RunStatus.FLAGGED


def test_encoders_are_checked_by_mean_cosine():
    assert _reference_check({"embedding_cosine": 0.9999}, {"embeddings": None}, 0.005)[0] is RunStatus.OK
    status, error = _reference_check({"embedding_cosine": 0.98}, {"embeddings": None}, 0.005)
    assert status is RunStatus.FLAGGED and "0.9800" in error and "0.9950" in error


def test_pipelines_images_are_checked_by_rms_pixel_difference():
    ok = {"image_rmse": 0.001, "image_psnr_db": 60.0}
    assert _reference_check(ok, {"images": None}, 0.005) == (RunStatus.OK, None)
    status, error = _reference_check({"image_rmse": 0.05, "image_psnr_db": 26.0}, {"images": None}, 0.005)
    assert status is RunStatus.FLAGGED and "0.0500" in error and "0.0050" in error and "26.0 dB" in error


def test_speech_and_vision_language_are_checked_by_top1_agreement():
    assert _reference_check({"top1_agreement": 1.0}, {"tokens": None}, 0.005)[0] is RunStatus.OK
    status, error = _reference_check({"top1_agreement": 0.9}, {"tokens": None}, 0.005)
    assert status is RunStatus.FLAGGED and "0.9000" in error and "0.9950" in error
