"""Audio and images for pipelines: synthetic inputs, .wav reading, source validation."""
import wave

import numpy as np
import pytest

from workbench.data import media
from workbench.errors import DataError


def test_synthetic_audio_is_deterministic_bounded_and_seed_dependent():
    a, b = media.synthetic_audio(2, seed=3), media.synthetic_audio(2, seed=3)
    assert len(a) == 2 and a[0].dtype == np.float32 and a[0].size == 2 * media.SAMPLING_RATE
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], a[1])
    assert 0.1 < np.abs(a[0]).max() <= 0.5
    assert not np.array_equal(a[0], media.synthetic_audio(1, seed=4)[0])


def test_synthetic_images_are_deterministic_rgb():
    pytest.importorskip("PIL", reason="pillow lives in the openvino environment; the tiny-vlm runs use these images")
    a, b = media.synthetic_images(2, seed=1, size=32), media.synthetic_images(2, seed=1, size=32)
    assert a[0].mode == "RGB" and a[0].size == (32, 32)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))


def _write_wav(path, samples, rate, channels=1):
    data = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())


def test_read_wav_resamples_to_16k_and_mixes_stereo_down(tmp_path):
    t = np.arange(8000) / 8000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    _write_wav(tmp_path / "a.wav", np.stack([tone, tone], 1).reshape(-1), 8000, channels=2)
    x = media.read_wav(tmp_path / "a.wav")
    assert x.dtype == np.float32 and x.size == 16000  # one second at 16 kHz
    assert abs(np.abs(x).max() - 0.5) < 0.01
    assert media.calibration_audio(f"dir:{tmp_path}", 4, seed=0)[0].size == 16000


def test_read_wav_refuses_8_bit_samples(tmp_path):
    with wave.open(str(tmp_path / "b.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(16000)
        w.writeframes(bytes(100))
    with pytest.raises(DataError, match="16-bit PCM"):
        media.read_wav(tmp_path / "b.wav")


def test_media_source_errors_name_the_allowed_forms(tmp_path):
    assert media.media_source_error("synthetic", media.AUDIO_SUFFIXES) is None
    assert media.media_source_error("hub:org/set/clean", media.AUDIO_SUFFIXES) is None
    assert "allowed: synthetic, dir:PATH" in media.media_source_error("wav", media.AUDIO_SUFFIXES)
    assert "no such directory" in media.media_source_error(f"dir:{tmp_path}/nope", media.AUDIO_SUFFIXES)
    assert "no .wav files" in media.media_source_error(f"dir:{tmp_path}", media.AUDIO_SUFFIXES)
    (tmp_path / "x.png").write_bytes(b"")
    assert media.media_source_error(f"dir:{tmp_path}", media.IMAGE_SUFFIXES) is None


def test_hub_media_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="offline.*synthetic or dir:PATH"):
        media.calibration_audio("hub:openslr/librispeech_asr/clean", 2, seed=0)
