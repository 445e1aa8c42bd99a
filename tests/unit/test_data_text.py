"""Text sources and the evaluation / calibration split, without torch."""
from __future__ import annotations

import json
import pydoc_data.topics
import sys

import pytest

from workbench.data import text
from workbench.data.text import embedding_sentences, load_text, split_text
from workbench.errors import DataError
from workbench.spec import DataSpec


def test_pydoc_topics_is_the_reference_text():
    t = load_text(DataSpec())
    assert t == "\n\n".join(pydoc_data.topics.topics.values())
    assert len(t) > 400_000


def test_split_at_paragraph_near_middle():
    paras = [f"paragraph {i} " + "x" * (i % 7) for i in range(101)]
    t = "\n\n".join(paras)
    ev, cal = split_text(t)
    assert ev + "\n\n" + cal == t  # nothing lost but the separator
    assert abs(len(ev) - len(t) / 2) < 0.05 * len(t)
    assert not ev.endswith("\n") and not cal.startswith("\n")
    assert ev.split("\n\n")[-1] in paras and cal.split("\n\n")[0] in paras  # whole paragraphs


def test_split_without_paragraphs_falls_back():
    ev, cal = split_text("line one\nline two\nline three\nline four")
    assert (ev, cal) == ("line one\nline two", "line three\nline four")
    ev, cal = split_text("abcdefgh")
    assert (ev, cal) == ("abcd", "efgh")
    assert split_text("") == ("", "")


def test_pydoc_split_halves():
    t = load_text(DataSpec())
    ev, cal = split_text(t)
    assert t.startswith(ev) and t.endswith(cal)
    assert 0.45 < len(ev) / len(t) < 0.55


def test_calibration_text_shares_no_paragraph_with_evaluation():
    ev = text.evaluation_text(DataSpec())
    cal = text.calibration_text(DataSpec())
    raw_cal = split_text(load_text(DataSpec()))[1]
    assert len(cal) < len(raw_cal)  # the pydoc topics repeat passages across topics
    for para in cal.split("\n\n"):
        assert para not in ev


def test_disjoint_paragraphs_drops_repeats():
    other = "intro\n\nthe shared passage, word for word\n\noutro"
    mine = "first own paragraph\n\nthe shared passage, word for word\n\nsecond own paragraph"
    assert text.disjoint_paragraphs(mine, other) == "first own paragraph\n\nsecond own paragraph"


def test_file_txt(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("héllo\n\nworld", encoding="utf-8")
    assert load_text(DataSpec(source=f"file:{f}")) == "héllo\n\nworld"


def test_file_jsonl(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(json.dumps({"body": s, "id": i}) for i, s in enumerate(["one", "two", "three"])) + "\n\n")
    assert load_text(DataSpec(source=f"file:{f}", text_field="body")) == "one\n\ntwo\n\nthree"


def test_file_jsonl_missing_field(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"body": "b"}) + "\n")
    with pytest.raises(DataError, match=r"line 2 has no field 'text'") as e:
        load_text(DataSpec(source=f"file:{f}"))
    assert "data.text_field" in str(e.value) and "body" in str(e.value)


def test_file_jsonl_malformed(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"text": "a"}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"line 2 is not valid JSON"):
        load_text(DataSpec(source=f"file:{f}"))


def test_file_jsonl_non_string_field(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"text": 3}) + "\n")
    with pytest.raises(DataError, match="is int, not a string"):
        load_text(DataSpec(source=f"file:{f}"))


def test_file_missing_empty_or_binary(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        load_text(DataSpec(source=f"file:{tmp_path / 'nope.txt'}"))
    assert "nope.txt" in str(e.value)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ")
    with pytest.raises(DataError, match="contains no text"):
        load_text(DataSpec(source=f"file:{empty}"))
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not UTF-8"):
        load_text(DataSpec(source=f"file:{binary}"))
    with pytest.raises(DataError, match="needs a path"):
        load_text(DataSpec(source="file:"))


def test_unknown_scheme_lists_allowed_forms():
    with pytest.raises(DataError) as e:
        load_text(DataSpec(source="wikitext"))
    msg = str(e.value)
    assert "data.source" in msg and "pydoc-topics" in msg and "file:PATH" in msg and "hub:NAME" in msg


def test_hub_without_datasets_suggests_file(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(DataError, match="needs the `datasets` library") as e:
        load_text(DataSpec(source="hub:wikitext/wikitext-2-raw-v1"))
    assert "file:PATH" in str(e.value)


def test_hub_offline_suggests_file(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DataError, match="cannot load hub dataset 'wikitext'") as e:
        load_text(DataSpec(source="hub:wikitext/wikitext-2-raw-v1"))
    assert "file:PATH" in str(e.value)


def test_embedding_sentences():
    s = embedding_sentences(DataSpec(embed_sentences=50))
    assert len(s) == 50
    assert all(0 < len(x) <= text.SENTENCE_CHARS for x in s)
    assert all("\n" not in x and x == x.strip() for x in s)
    assert s[0] == 'The "assert" statement'  # the heading, without its "*****" underline
    flat = " ".join(text.evaluation_text(DataSpec()).split())
    assert all(x in flat for x in s)  # whitespace-collapsed (and possibly cut) paragraphs of the evaluation part
    assert s == embedding_sentences(DataSpec(embed_sentences=200))[:50]  # a prefix: deterministic


def test_embedding_sentences_too_few(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("alpha beta\n\n----\n\ngamma\n\ndelta\n\nepsilon")
    with pytest.raises(DataError, match=r"has 1 paragraphs with text, fewer than embed_sentences = 5"):
        embedding_sentences(DataSpec(source=f"file:{f}", embed_sentences=5))
