"""Loading models and tokenizers in a worker: catalog name, local directory or hub id.

`resolve()` turns a `ModelSpec` into a local directory (converting or building
catalog models once, downloading hub models if the hub can be reached);
`load_model()` and `load_tokenizer()` load from that directory.

Torch-side: imports torch at module level (workers only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidSpec, ModelNotFound
from ..spec import ModelSpec
from ..hub import fetch_hub_file, hub_cache_dir, hub_offline, hub_unreachable_message
from .catalog import MODEL_INDEX, PIPELINE_KINDS, CatalogEntry, dispatch
from .embedded import Progress, embedded_dir
from .tiny import tiny_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KINDS = ("causal-lm", "encoder")


def resolve(model: ModelSpec, progress: Progress | None = None) -> Path:
    """A local directory with config.json, tokenizer and weights for `model`.

    Catalog models are converted (SmolLM2, once, ~30 s) or built (tiny models)
    under `$WORKBENCH_HOME/models`; local directories are returned as they are;
    hub ids come from the huggingface_hub cache, else are downloaded unless
    offline. Raises ModelNotFound (with the local-directory alternative for the
    hub) or MethodUnavailable (an embedded model's package is missing).
    """
    ident = model.id

    def from_catalog(entry: CatalogEntry) -> Path:
        return embedded_dir(ident, progress) if entry.source == "embedded" else tiny_dir(ident, progress)

    def from_local(local: Path) -> Path:
        if not local.is_dir():
            raise ModelNotFound(
                f"model: {ident} is not a directory; pass a Transformers model directory (with config.json)"
            )
        if not (local / "config.json").is_file() and not (local / MODEL_INDEX).is_file():
            raise ModelNotFound(f"model: model directory {ident} has no config.json")
        return local.resolve()

    return dispatch(model, from_catalog, from_local, _resolve_hub)


# Diffusers repositories also hold whole-pipeline checkpoints and fp16 / EMA variants: not those.
_PIPELINE_IGNORE = ["*.ckpt", "*fp16*", "*non_ema*", "*.ema.*", "*.onnx*", "*.msgpack", "*.h5", "*.pb"]


def _hub_patterns(model: ModelSpec, pipeline: bool = False) -> list[str]:
    if pipeline:  # a diffusers repository: one model per subfolder, no root-level whole checkpoints
        return ["*.json", "*.txt", "*/*.safetensors", "*/*.model", "*/*.json", "*/*.txt"]
    patterns = ["*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken", "*.safetensors"]
    if not model.use_safetensors:
        patterns.append("*.bin")
    if model.trust_remote_code:
        patterns.append("*.py")
    return patterns


def _has_weights(directory: Path, model: ModelSpec) -> bool:
    if any(directory.glob("*.safetensors")):
        return True
    return not model.use_safetensors and any(directory.glob("*.bin"))


def _is_diffusers_repo(model: ModelSpec) -> bool:
    from .catalog import describe

    try:
        return describe(model).kind == "text-to-image"
    except ModelNotFound:
        return False


def _resolve_hub(model: ModelSpec) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelNotFound(
            f"model: loading {model.id!r} from the hub needs huggingface_hub; or download the model elsewhere "
            "and pass its local directory, e.g. --model /path/to/model"
        ) from None
    kwargs = dict(
        repo_id=model.id,
        revision=model.revision,
        allow_patterns=_hub_patterns(model, pipeline=_is_diffusers_repo(model)),
        ignore_patterns=_PIPELINE_IGNORE,
        # huggingface_hub reads HF_HOME once at import; describe() reads it per call: agree with describe().
        cache_dir=str(hub_cache_dir()),
    )
    try:
        cached = Path(snapshot_download(local_files_only=True, **kwargs))
        if (cached / "config.json").is_file() and _has_weights(cached, model):
            return cached
        if (cached / MODEL_INDEX).is_file() and any(cached.glob("*/*.safetensors")):
            return cached
    except Exception:  # noqa: BLE001 - not cached (the hub client raises several types)
        pass
    if hub_offline():
        raise ModelNotFound(hub_unreachable_message(model.id))
    # A quick probe first: the hub client's own retries would take minutes offline.
    try:
        fetch_hub_file(model.id, "config.json", model.revision)
    except ModelNotFound as missing:
        if "has no config.json" not in str(missing):
            raise
        try:
            fetch_hub_file(model.id, MODEL_INDEX, model.revision)
        except ModelNotFound:
            raise missing from None
    try:
        return Path(snapshot_download(**kwargs))
    except Exception as e:  # noqa: BLE001
        raise ModelNotFound(f"{hub_unreachable_message(model.id)} ({type(e).__name__}: {e})") from None


def torch_dtype(dtype: str) -> torch.dtype:
    """torch dtype from its name; InvalidSpec naming the allowed names otherwise."""
    try:
        return DTYPES[dtype]
    except KeyError:
        raise InvalidSpec(f"dtype: got {dtype!r}; allowed: {', '.join(DTYPES)}") from None


def load_model(
    model: ModelSpec,
    kind: str,
    dtype: str = "float32",
    device: str = "cpu",
    progress: Progress | None = None,
    path: str | Path | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """The model in eval mode: AutoModelForCausalLM (causal-lm) or AutoModel (encoder).

    `path` loads a saved copy (e.g. a quantized checkpoint) instead of the model's own
    directory, with the same options. `kwargs` go to `from_pretrained` (e.g.
    `quantization_config`). When they place the model themselves (`device_map`,
    `quantization_config`) it is not moved to `device` afterwards.
    """
    directory = Path(path) if path is not None else resolve(model, progress)
    if kind in PIPELINE_KINDS:
        from ..measure.pipelines import load_torch_pipeline

        return load_torch_pipeline(kind, directory)
    net = auto_class(kind).from_pretrained(
        directory,
        dtype=torch_dtype(dtype),
        trust_remote_code=model.trust_remote_code,
        use_safetensors=model.use_safetensors,
        **kwargs,
    )
    if "device_map" not in kwargs and "quantization_config" not in kwargs:
        net = net.to(device)
    return net.eval()


def auto_class(kind: str) -> Any:
    """AutoModelForCausalLM for causal LMs, AutoModel for encoders."""
    from transformers import AutoModel, AutoModelForCausalLM

    if kind not in KINDS:
        raise InvalidSpec(f"kind: got {kind!r}; allowed: {', '.join(KINDS)}")
    return AutoModelForCausalLM if kind == "causal-lm" else AutoModel


def load_tokenizer(model: ModelSpec, progress: Progress | None = None) -> Any:
    """The model's tokenizer, with a pad token (the eos token when it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve(model, progress), trust_remote_code=model.trust_remote_code)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok
