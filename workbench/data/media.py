"""Audio and images for the speech-to-text and vision-language pipelines.

No speech or image data set can be fetched here, so the default inputs are synthetic and
deterministic: audio clips of gliding harmonic tones with formant-like envelopes and noise,
images of gradients and filled shapes. They exercise the whole pipeline and make methods
comparable (every method sees the same inputs, compared with the fp32 reference), but a
task metric (word error rate, VQA accuracy) needs real data: `dir:PATH` reads your own
files (.wav 16-bit PCM for audio; .png/.jpg for images), `hub:NAME[/CONFIG]` a `datasets`
data set with internet (an `audio` column; an `image` and a `question` column).

Sources: MEDIA_FORMS. The evaluation inputs are always synthetic (seeded apart from the
calibration ones), so they never overlap the calibration data.
"""
from __future__ import annotations

import wave
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError

SAMPLING_RATE = 16_000
MEDIA_FORMS = "synthetic, dir:PATH (your .wav or image files) or hub:NAME[/CONFIG] (a datasets name; needs internet)"
AUDIO_SUFFIXES = (".wav",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
if TYPE_CHECKING:
    import numpy as np

# Text given to pipelines, cut at a word boundary: prompts for text-to-image (CLIP text encoders
# read 77 tokens), questions about images for vision-language models.
PROMPT_CHARS = 200
QUESTION_CHARS = 120
# Seeds of the evaluation inputs are offset from the calibration ones: never the same clip or image.
EVAL_SEED_OFFSET = 10_000


def media_source_error(source: str, suffixes: tuple[str, ...]) -> str | None:
    """Why `source` is not a media source (None when it is one); cheap, for validation."""
    if source == "synthetic" or (source.startswith("hub:") and len(source) > 4):
        return None
    if source.startswith("dir:") and len(source) > 4:
        path = Path(source[4:]).expanduser()
        if not path.is_dir():
            return f"got {source!r}: no such directory {str(path)!r}"
        if not any(f.suffix.lower() in suffixes for f in path.iterdir()):
            return f"got {source!r}: no {'/'.join(suffixes)} files in {str(path)!r}"
        return None
    return f"got {source!r}; allowed: {MEDIA_FORMS}"


# --------------------------------------------------------------------------- audio
def synthetic_audio(n: int, seed: int, seconds: float = 2.0) -> list[np.ndarray]:
    """`n` float32 clips at SAMPLING_RATE: a gliding fundamental with harmonics under two
    moving formant-like envelopes, syllable-like amplitude bursts and a little noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    clips = []
    for _ in range(n):
        f0 = rng.uniform(90, 220) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLING_RATE
        formants = rng.uniform([300, 900], [900, 2500])
        voice = sum(np.sin(k * phase) * (np.exp(-((k * f0 - formants[0]) / 250) ** 2)
                                         + np.exp(-((k * f0 - formants[1]) / 400) ** 2)) for k in range(1, 25))
        bursts = np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, np.pi)), 0, None)
        clip = voice * bursts + 0.02 * rng.standard_normal(t.size)
        clips.append((0.5 * clip / (np.abs(clip).max() + 1e-9)).astype(np.float32))
    return clips


def read_wav(path: Path) -> np.ndarray:
    """A 16-bit PCM .wav file as float32 mono at SAMPLING_RATE (linear resampling)."""
    import numpy as np

    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise DataError(f"audio file {path}: {8 * w.getsampwidth()}-bit samples; allowed: 16-bit PCM .wav")
        rate, channels = w.getframerate(), w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    data = data.reshape(-1, channels).mean(1)
    if rate != SAMPLING_RATE:
        n = int(round(data.size * SAMPLING_RATE / rate))
        data = np.interp(np.linspace(0, data.size - 1, n), np.arange(data.size), data).astype(np.float32)
    return data


def calibration_audio(source: str, n: int, seed: int) -> list[np.ndarray]:
    """`n` calibration clips from `source` (MEDIA_FORMS)."""
    import numpy as np

    if source == "synthetic":
        return synthetic_audio(n, seed)
    if source.startswith("dir:"):
        files = _files(source, AUDIO_SUFFIXES)[:n]
        return [read_wav(f) for f in files]
    if source.startswith("hub:"):
        rows = _hub_rows(source, n)
        out = []
        for row in rows:
            audio = row.get("audio")
            if not isinstance(audio, dict) or "array" not in audio:
                raise DataError(f"dataset {source!r}: rows need an 'audio' column with 'array' and 'sampling_rate'")
            arr = np.asarray(audio["array"], dtype=np.float32)
            rate = int(audio.get("sampling_rate", SAMPLING_RATE))
            if rate != SAMPLING_RATE:
                m = int(round(arr.size * SAMPLING_RATE / rate))
                arr = np.interp(np.linspace(0, arr.size - 1, m), np.arange(arr.size), arr).astype(np.float32)
            out.append(arr)
        return out
    raise DataError(f"dataset: got {source!r}; allowed: {MEDIA_FORMS}")


# --------------------------------------------------------------------------- images
def synthetic_images(n: int, seed: int, size: int = 224) -> list[Any]:
    """`n` RGB PIL images: a colour gradient with a few filled ellipses and rectangles."""
    import numpy as np

    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        w = (x * np.cos(rng.uniform(0, np.pi)) + y * np.sin(rng.uniform(0, np.pi)))[..., None]
        w = (w - w.min()) / (np.ptp(w) + 1e-9)
        img = Image.fromarray((c0 * (1 - w) + c1 * w).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            a, b = sorted(rng.uniform(0, size, 2)), sorted(rng.uniform(0, size, 2))
            box = (a[0], b[0], a[1] + 4, b[1] + 4)
            fill = tuple(int(v) for v in rng.uniform(0, 255, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        out.append(img)
    return out


def calibration_images(source: str, n: int, seed: int) -> list[Any]:
    """`n` calibration images from `source` (MEDIA_FORMS), RGB."""
    if source == "synthetic":
        return synthetic_images(n, seed)
    if source.startswith("dir:"):
        from PIL import Image

        return [Image.open(f).convert("RGB") for f in _files(source, IMAGE_SUFFIXES)[:n]]
    if source.startswith("hub:"):
        rows = _hub_rows(source, n)
        if rows and "image" not in rows[0]:
            raise DataError(f"dataset {source!r}: rows need an 'image' column")
        return [row["image"].convert("RGB") for row in rows]
    raise DataError(f"dataset: got {source!r}; allowed: {MEDIA_FORMS}")


# --------------------------------------------------------------------------- internals
def _files(source: str, suffixes: tuple[str, ...]) -> list[Path]:
    directory = Path(source[4:]).expanduser()
    files = sorted(f for f in directory.iterdir() if f.suffix.lower() in suffixes) if directory.is_dir() else []
    if not files:
        raise DataError(f"dataset: no {'/'.join(suffixes)} files in {str(directory)!r}")
    return files


def _hub_rows(source: str, n: int) -> list[dict]:
    from ..hub import hub_offline

    # NAME/CONFIG; a third part means ORG/NAME/CONFIG (as for text sources).
    parts = source[4:].split("/")
    name, config = ("/".join(parts[:-1]), parts[-1]) if len(parts) > 1 else (parts[0], None)
    if hub_offline():
        raise DataError(f"dataset {source!r}: the hub is offline (HF_HUB_OFFLINE); use synthetic or dir:PATH")
    try:
        import datasets

        splits = datasets.load_dataset(name, config, streaming=True)
        split = "train" if "train" in splits else next(iter(splits))  # the first split when there is no train
        return list(splits[split].take(n))
    except Exception as e:  # noqa: BLE001 - any loading failure is reported with the source
        raise DataError(f"dataset {source!r}: cannot load it ({type(e).__name__}: {e}); use synthetic or "
                        "dir:PATH offline") from None


__all__ = ["MEDIA_FORMS", "SAMPLING_RATE", "calibration_audio", "calibration_images", "media_source_error",
           "read_wav", "synthetic_audio", "synthetic_images"]
