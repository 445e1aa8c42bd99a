"""Model catalog, describe() and linear layer shapes, without torch."""
from __future__ import annotations

import http.server
import json
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from workbench.errors import ModelNotFound
from workbench.models import catalog, shapes
from workbench.models.catalog import CATALOG, MANIFEST, catalog_rows, describe
from workbench.spec import ModelSpec

REPO = Path(__file__).resolve().parents[2]

LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """An empty workbench home and hub cache; no real network."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_safetensors(path: Path, tensors: dict[str, list[int]]) -> None:
    """A valid safetensors file of zeros (float32) with the given shapes."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * offset)


# --- catalog -------------------------------------------------------------------
def test_catalog_names_and_kinds():
    assert {n: e.kind for n, e in CATALOG.items()} == {
        "smollm2-135m": "causal-lm",
        "minilm-l6": "encoder",
        "tiny-llama": "causal-lm",
        "tiny-bert": "encoder",
        "tiny-sd": "text-to-image",
        "tiny-whisper": "speech-to-text",
        "tiny-vlm": "image-text-to-text",
    }


def test_describe_smollm2_shapes():
    info = describe(ModelSpec("smollm2-135m"))
    assert (info.kind, info.source) == ("causal-lm", "embedded")
    assert info.config["hidden_size"] == 576
    layers = info.linear_layers
    assert len(layers) == 30 * 7 + 1
    assert layers["model.layers.0.self_attn.q_proj"] == (576, 576)
    assert layers["model.layers.0.self_attn.k_proj"] == (192, 576)  # 3 kv heads x 64
    assert layers["model.layers.29.mlp.down_proj"] == (576, 1536)
    assert layers["lm_head"] == (49152, 576)  # tied, but an nn.Linear all the same
    # The config must carry the legacy rope_theta that older transformers read.
    assert info.config["rope_theta"] == info.config["rope_parameters"]["rope_theta"] == 100000.0
    assert info.path is None  # not converted in an empty home


def test_describe_minilm_has_pooler():
    info = describe(ModelSpec("minilm-l6"))
    assert (info.kind, info.source) == ("encoder", "embedded")
    assert len(info.linear_layers) == 6 * 6 + 1
    assert info.linear_layers["pooler.dense"] == (384, 384)
    assert info.linear_layers["encoder.layer.5.intermediate.dense"] == (1536, 384)


def test_describe_does_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from workbench.models.catalog import describe, catalog_rows\n"
        "from workbench.spec import ModelSpec\n"
        "for n in ('smollm2-135m', 'minilm-l6', 'tiny-llama', 'tiny-bert'): describe(ModelSpec(n))\n"
        "catalog_rows()\n"
        "heavy = [m for m in ('torch', 'transformers', 'numpy', 'huggingface_hub') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_catalog_rows_ready_follows_manifest(tmp_path):
    rows = {r["name"]: r for r in catalog_rows()}
    assert set(rows) == set(CATALOG)
    for r in rows.values():
        assert set(r) >= {"name", "kind", "source", "params_count", "description", "hub_id", "ready"}
    assert rows["tiny-llama"]["ready"] is False
    assert rows["smollm2-135m"]["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    built = tmp_path / "home" / "models" / "tiny-llama"
    built.mkdir(parents=True)
    assert {r["name"]: r for r in catalog_rows()}["tiny-llama"]["ready"] is False  # half-built: no manifest
    (built / MANIFEST).write_text("{}")
    assert {r["name"]: r for r in catalog_rows()}["tiny-llama"]["ready"] is True
    assert describe(ModelSpec("tiny-llama")).path == str(built)


# --- local directories -----------------------------------------------------------
def test_describe_local_directory(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(LLAMA))
    write_safetensors(d / "model.safetensors", {"model.embed_tokens.weight": [100, 64], "model.norm.weight": [64]})
    info = describe(ModelSpec(str(d)))
    assert (info.name, info.kind, info.source) == (str(d), "causal-lm", "local")
    assert info.path == str(d.resolve())
    assert info.params_count == 100 * 64 + 64
    assert info.linear_layers["model.layers.1.self_attn.v_proj"] == (32, 64)  # 2 kv heads x 16


def test_local_directory_without_config(tmp_path):
    with pytest.raises(ModelNotFound, match="has no config.json"):
        describe(ModelSpec(str(tmp_path)))


def test_local_directory_with_broken_config(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(ModelNotFound, match=r"model directory .* has a broken config.json"):
        describe(ModelSpec(str(tmp_path)))


def test_local_file_is_not_a_model(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF")
    with pytest.raises(ModelNotFound, match="not a directory"):
        describe(ModelSpec(str(f)))


def test_missing_path_and_unknown_name():
    with pytest.raises(ModelNotFound, match="no such directory"):
        describe(ModelSpec("./no/such/model"))
    with pytest.raises(ModelNotFound) as e:
        describe(ModelSpec("smollm"))
    for name in CATALOG:
        assert name in str(e.value)


def test_encoder_decoder_and_unknown_kind_are_refused(tmp_path):
    t5 = {"model_type": "t5", "architectures": ["T5Model"], "is_encoder_decoder": True}
    (tmp_path / "config.json").write_text(json.dumps(t5))
    with pytest.raises(ModelNotFound, match="encoder-decoder"):
        describe(ModelSpec(str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper-ish", "architectures": ["Thing"]}))
    with pytest.raises(ModelNotFound, match="cannot tell what kind"):
        describe(ModelSpec(str(tmp_path)))


# --- hub ids ---------------------------------------------------------------------
def test_hub_id_offline_fails_with_local_path_hint():
    with pytest.raises(ModelNotFound) as e:
        describe(ModelSpec("some-org/some-model"))
    msg = str(e.value)
    assert "cannot reach the Hugging Face hub" in msg and "some-org/some-model" in msg
    assert "local directory" in msg and "--model /path/to/model" in msg


def test_hub_id_unreachable_endpoint(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("WORKBENCH_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(ModelNotFound, match="cannot reach the Hugging Face hub"):
        describe(ModelSpec("some-org/some-model"))


def test_hub_id_from_cache(tmp_path):
    repo = tmp_path / "hf" / "hub" / "models--some-org--tiny"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (snap / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"],
                                                  "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1}))
    info = describe(ModelSpec("some-org/tiny"))
    assert (info.kind, info.source, info.path) == ("encoder", "hub", None)  # config only: no weights cached
    assert info.linear_layers["encoder.layer.0.intermediate.dense"] == (16, 8)
    write_safetensors(snap / "model.safetensors", {"x.weight": [2, 3]})
    info = describe(ModelSpec("some-org/tiny"))
    assert info.path == str(snap) and info.params_count == 6
    with pytest.raises(ModelNotFound):  # another revision is not cached, and we are offline
        describe(ModelSpec("some-org/tiny", revision="v2"))


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A local HTTP server laid out like the hub's resolve URLs."""
    root = tmp_path / "hubroot"
    cfg = root / "org" / "llm" / "resolve" / "main"
    cfg.mkdir(parents=True)
    (cfg / "config.json").write_text(json.dumps(LLAMA))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("WORKBENCH_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield
    server.shutdown()


def test_hub_id_config_fetched(fake_hub):
    info = describe(ModelSpec("org/llm"))
    assert (info.kind, info.source, info.path, info.params_count) == ("causal-lm", "hub", None, None)
    assert info.linear_layers["lm_head"] == (100, 64)
    with pytest.raises(ModelNotFound, match="has no config.json on the hub"):
        describe(ModelSpec("org/missing"))


def test_workbench_offline_wins_over_reachable_hub(fake_hub, monkeypatch):
    monkeypatch.setenv("WORKBENCH_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="offline"):
        describe(ModelSpec("org/llm"))


def test_hub_id_shape():
    assert catalog.looks_like_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not catalog.looks_like_hub_id("gpt2")
    assert not catalog.looks_like_hub_id("a/b/c")
    assert not catalog.looks_like_hub_id("../x")


# --- shapes ----------------------------------------------------------------------
def test_llama_family_head_dim_defaults():
    qwen3 = dict(LLAMA, model_type="qwen3", architectures=["Qwen3ForCausalLM"])
    assert shapes.linear_layers(qwen3)["model.layers.0.self_attn.q_proj"] == (4 * 128, 64)  # Qwen3 default head_dim
    mistral = dict(LLAMA, model_type="mistral", head_dim=32)
    assert shapes.linear_layers(mistral)["model.layers.0.self_attn.o_proj"] == (64, 4 * 32)
    no_kv = {k: v for k, v in LLAMA.items() if k != "num_key_value_heads"}
    assert shapes.linear_layers(no_kv)["model.layers.0.self_attn.k_proj"] == (64, 64)


def test_unknown_architecture_falls_back_to_safetensors(tmp_path):
    write_safetensors(
        tmp_path / "model.safetensors",
        {
            "transformer.wte.weight": [50, 8],
            "transformer.h.0.attn.c_attn.weight": [8, 24],
            "transformer.h.0.ln_1.weight": [8],
            "embeddings.word_embeddings.weight": [50, 8],
            "lm_head.weight": [50, 8],
        },
    )
    config = {"model_type": "gpt2"}
    assert shapes.linear_layers(config) == {}
    assert shapes.linear_layers(config, tmp_path) == {"transformer.h.0.attn.c_attn": (8, 24), "lm_head": (50, 8)}


def test_incomplete_known_config_falls_back():
    assert shapes.linear_layers({"model_type": "llama", "hidden_size": 8}) == {}


def test_divisors():
    assert shapes.divisors(576) == [1, 2, 3, 4, 6, 8, 9, 12, 16, 18, 24, 32, 36, 48, 64, 72, 96, 144, 192, 288, 576]
    assert 128 not in shapes.divisors(576)
    assert shapes.divisors(1) == [1]
    assert shapes.divisors(49) == [1, 7, 49]
    assert shapes.divisors(0) == []
