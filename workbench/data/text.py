"""Text sources, and the split into an evaluation part and a calibration part.

A `DataSpec.source` is one of:
- `pydoc-topics`: the help topics that ship with CPython (about 465K characters);
- `file:PATH`: a UTF-8 text file, or a `.jsonl` file whose `text_field` values are joined;
- `hub:NAME` or `hub:NAME/CONFIG`: a `datasets` dataset (needs the library, and the hub or its cache).

The text is split once near its middle: evaluation windows and embedding
sentences come from the first half, calibration samples only from the second
(less any paragraph the first half also contains), so calibration never sees
the text a method is evaluated on.

Torch-free: standard library only (`datasets` is imported lazily for hub sources).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import DataError
from ..spec import DataSpec

SOURCE_FORMS = "pydoc-topics, file:PATH (.txt or .jsonl), hub:NAME or hub:NAME/CONFIG"
SENTENCE_CHARS = 400
# Heading underlines and horizontal rules ("*****", "=====") are not sentence text.
_RULE = re.compile(r"([*=~^#-])\1{2,}")
# A calibration/evaluation cut is searched for within this fraction of the text around the middle.
_CUT_WINDOW = 0.1


def source_error(source: str) -> str | None:
    """Why `source` is not a text source the workbench can read (None when it is one).

    Cheap enough for validation in the kernel: the form, for `file:` that the file exists, for
    `hub:` that it can load (online, or offline from the local caches)."""
    if source == "pydoc-topics":
        return None
    if source.startswith("hub:") and len(source) > 4:
        return hub_offline_error(source)
    if source.startswith("file:") and len(source) > 5:
        path = Path(source[len("file:"):]).expanduser()
        return None if path.is_file() else f"got {source!r}: no such file {str(path)!r}"
    return f"got {source!r}; allowed: {SOURCE_FORMS}"


def hub_offline_error(source: str) -> str | None:
    """Why a `hub:` source cannot load here: offline (HF_HUB_OFFLINE / WORKBENCH_OFFLINE) and not in
    the local caches `datasets` reads offline. None for other sources, online, or when cached."""
    if not source.startswith("hub:") or len(source) <= 4:
        return None
    from ..hub import hub_cache_dir, hub_offline

    if not hub_offline():
        return None
    parts = source[4:].split("/")
    name = "/".join(parts[:-1]) if len(parts) > 1 else parts[0]
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or hub_cache_dir().parent / "datasets").expanduser()
    cached = [hub_cache_dir() / ("datasets--" + name.replace("/", "--")), datasets_cache / name.replace("/", "___")]
    if any(c.is_dir() for c in cached):
        return None
    return (f"got {source!r}: offline (HF_HUB_OFFLINE) and the dataset is not in the local caches "
            f"({cached[0]}, {cached[1]}); allowed offline: pydoc-topics or file:PATH (a .txt or .jsonl)")


def load_text(data: DataSpec) -> str:
    """The whole text of `data.source`. Raises DataError naming the source and what is allowed."""
    source = data.source
    if source == "pydoc-topics":
        return _pydoc_topics()
    if source.startswith("file:"):
        return _file_text(source[len("file:") :], data.text_field)
    if source.startswith("hub:"):
        return _hub_text(source[len("hub:") :], data)
    raise DataError(f"data.source: got {source!r}; allowed: {SOURCE_FORMS}")


def evaluation_size_error(data: DataSpec, text: str) -> str | None:
    """Why the evaluation part of `text` cannot hold `eval_windows` windows of `window` tokens (None
    when it may). The bound is one character per token, which no tokenizer beats, so it is decided
    in the kernel before a worker loads the tokenizer; the worker checks the real token count."""
    chars = len(split_text(text)[0])
    need = data.eval_windows * data.window
    if chars >= need:
        return None
    return (f"data.source: the evaluation part (first half) of {data.source!r} has {chars} characters, too few for "
            f"eval_windows x window = {data.eval_windows} x {data.window} = {need} tokens (a token takes at least "
            "one character); allowed: a longer text, or lower data.eval_windows or data.window")


def split_text(text: str) -> tuple[str, str]:
    """(evaluation part, calibration part): the first and second half of `text`.

    The cut is the paragraph boundary ("\\n\\n") nearest the middle, else the
    nearest line break, else the nearest whitespace, else the exact middle.
    Neither part includes the separator, so the two share no characters.
    """
    if not text:
        return "", ""
    mid = len(text) // 2
    span = max(1, int(len(text) * _CUT_WINDOW))
    for sep in ("\n\n", "\n", " "):
        cut = _nearest(text, sep, mid, span)
        if cut is not None:
            return text[:cut], text[cut + len(sep) :]
    return text[:mid], text[mid:]


def evaluation_text(data: DataSpec) -> str:
    """The evaluation part of `data` (first half)."""
    return split_text(load_text(data))[0]


def calibration_text(data: DataSpec) -> str:
    """The calibration part of `data`: the second half, less what the first half also contains.

    Texts repeat themselves (the pydoc topics hold the same data-model
    passages under several topics), so paragraphs of the second half that
    occur anywhere in the first half are dropped: calibration never sees text
    a method is evaluated on.
    """
    evaluation, calibration = split_text(load_text(data))
    return disjoint_paragraphs(calibration, evaluation)


def disjoint_paragraphs(text: str, other: str) -> str:
    """The paragraphs of `text` that do not occur in `other`, joined again with blank lines."""
    kept = [p for p in text.split("\n\n") if p.strip() and p not in other]
    return "\n\n".join(kept)


def embedding_sentences(data: DataSpec) -> list[str]:
    """The first `data.embed_sentences` paragraphs of the evaluation part, for encoder comparisons.

    Each paragraph loses heading underlines, has its whitespace collapsed and is
    cut to at most 400 characters at a word boundary; paragraphs without
    letters are skipped. DataError when there are fewer than asked for.
    """
    want = data.embed_sentences
    out = paragraphs(evaluation_text(data), want, SENTENCE_CHARS)
    if len(out) < want:
        raise DataError(
            f"data.embed_sentences: the evaluation part of {data.source!r} has {len(out)} paragraphs with text, "
            f"fewer than embed_sentences = {want}: lower embed_sentences or use a longer text"
        )
    return out


def calibration_paragraphs(data: DataSpec, n: int, max_chars: int) -> list[str]:
    """Up to `n` cleaned paragraphs of the calibration part (prompts for pipelines), each at most `max_chars`."""
    return paragraphs(calibration_text(data), n, max_chars)


def paragraphs(text: str, n: int, max_chars: int) -> list[str]:
    """The first `n` paragraphs of `text` with letters in them: heading underlines removed,
    whitespace collapsed, cut at a word boundary to at most `max_chars`."""
    out: list[str] = []
    for para in text.split("\n\n"):
        s = " ".join(_RULE.sub(" ", para).split())
        if not re.search(r"[^\W\d_]", s):
            continue
        out.append(_trim(s, max_chars))
        if len(out) == n:
            break
    return out


# --- sources -------------------------------------------------------------------
def _pydoc_topics() -> str:
    try:
        import pydoc_data.topics
    except ImportError:  # some distributions split pydoc_data out of the stdlib
        raise DataError(
            "data.source: pydoc-topics needs the standard library's pydoc_data, which this Python lacks; "
            "use file:PATH with a local .txt or .jsonl"
        ) from None
    return "\n\n".join(pydoc_data.topics.topics.values())


def _file_text(raw: str, text_field: str) -> str:
    if not raw:
        raise DataError("data.source: file: needs a path, e.g. file:corpus.txt or file:data.jsonl")
    path = Path(raw).expanduser()
    if not path.is_file():
        raise DataError(f"data.source: file {raw} does not exist or is not a file")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data.source: file {raw} is not UTF-8 text ({e})") from None
    except OSError as e:
        raise DataError(f"data.source: cannot read file {raw}: {e}") from None
    if path.suffix.lower() == ".jsonl":
        content = _jsonl_text(content, raw, text_field)
    if not content.strip():
        raise DataError(f"data.source: file {raw} contains no text")
    return content


def _jsonl_text(content: str, where: str, text_field: str) -> str:
    texts = []
    for n, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"data.source: {where} line {n} is not valid JSON: {e}") from None
        if not isinstance(record, dict) or text_field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"data.text_field: {where} line {n} has no field {text_field!r} (it has: {keys})")
        value = record[text_field]
        if not isinstance(value, str):
            raise DataError(
                f"data.text_field: {where} line {n}: field {text_field!r} is {type(value).__name__}, not a string"
            )
        texts.append(value)
    return "\n\n".join(texts)


def _hub_text(raw: str, data: DataSpec) -> str:
    if not raw:
        raise DataError("data.source: hub: needs a dataset name, e.g. hub:wikitext/wikitext-2-raw-v1")
    # NAME/CONFIG; a third part means ORG/NAME/CONFIG.
    parts = raw.split("/")
    name, config = ("/".join(parts[:-1]), parts[-1]) if len(parts) > 1 else (raw, None)
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"data.source: hub:{raw} needs the `datasets` library (pip install datasets) and the hub; "
            "or use file:PATH with a local .txt or .jsonl"
        ) from None
    try:
        ds = datasets.load_dataset(name, config, split=data.split)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, bad split: one message
        raise DataError(
            f"data.source: cannot load hub dataset {name!r} (config {config!r}, split {data.split!r}) "
            f"(offline?): {type(e).__name__}: {e}; use file:PATH with a local .txt or .jsonl instead"
        ) from None
    if data.text_field not in ds.column_names:
        raise DataError(
            f"data.text_field: hub dataset {raw} has no column {data.text_field!r}; columns: {ds.column_names}"
        )
    text = "\n\n".join(t for t in ds[data.text_field] if isinstance(t, str) and t.strip())
    if not text:
        raise DataError(f"data.source: hub dataset {raw} split {data.split!r} has no text in {data.text_field!r}")
    return text


# --- helpers -------------------------------------------------------------------
def _nearest(text: str, sep: str, mid: int, span: int) -> int | None:
    """Start of the occurrence of `sep` nearest `mid`, within `span` characters, else None."""
    after = text.find(sep, mid, mid + span)
    before = text.rfind(sep, max(0, mid - span), mid + len(sep) - 1)
    candidates = [c for c in (before, after) if c > 0]
    if not candidates:
        return None
    return min(candidates, key=lambda c: abs(c - mid))


def _trim(s: str, limit: int) -> str:
    if len(s) <= limit:
        return s
    cut = s.rfind(" ", 0, limit)
    return s[: cut if cut > limit // 2 else limit]
