"""Linear layer shapes of a model, computed from its config without torch.

Methods check their parameters against these shapes in the notebook kernel
(e.g. a group size that does not divide a layer's input dimension) before any
worker starts. The module names are the ones `named_modules()` gives for the
model as the workbench loads it (AutoModelForCausalLM / AutoModel, transformers 5).

Torch-free: standard library only.
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

# Families whose module layout is known exactly; everything else falls back
# to the safetensors headers of a local directory.
LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
BERT_FAMILY = ("bert",)

# Class defaults of transformers 5 for fields a config.json may leave out.
_HEAD_DIM_DEFAULT = {"qwen3": 128}
_EMBEDDING_NAME = re.compile(r"(^|\.)(embed\w*|wte|wpe|shared|\w*_embeddings?)(\.|$)")


def linear_layers(config: dict, path: str | Path | None = None) -> dict[str, tuple[int, int]]:
    """Every `nn.Linear` of the model: module name -> (out_features, in_features).

    Exact for the llama family (llama, mistral, qwen2, qwen3; `lm_head` included
    even when tied to the embeddings, as it is an `nn.Linear` in transformers)
    and for BERT loaded with `AutoModel` (which always builds the pooler).
    Other architectures: 2-D `*.weight` tensors of the safetensors files in
    `path` that do not look like embeddings (names as stored in the checkpoint,
    which may carry a prefix the loaded model does not). Empty when neither works.
    """
    model_type = config.get("model_type", "")
    try:
        if model_type in LLAMA_FAMILY:
            return _llama(config)
        if model_type in BERT_FAMILY:
            return _bert(config)
    except (KeyError, TypeError, ZeroDivisionError):
        pass  # an incomplete config: the checkpoint headers may still tell
    if path is not None:
        return linear_layers_from_safetensors(path)
    return {}


def _llama(c: dict) -> dict[str, tuple[int, int]]:
    hidden = int(c["hidden_size"])
    heads = int(c["num_attention_heads"])
    kv_heads = int(c.get("num_key_value_heads") or heads)
    head_dim = c.get("head_dim") or _HEAD_DIM_DEFAULT.get(c.get("model_type", "")) or hidden // heads
    head_dim = int(head_dim)
    inter = int(c["intermediate_size"])
    out: dict[str, tuple[int, int]] = {}
    for i in range(int(c["num_hidden_layers"])):
        attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        out[f"{attn}.q_proj"] = (heads * head_dim, hidden)
        out[f"{attn}.k_proj"] = (kv_heads * head_dim, hidden)
        out[f"{attn}.v_proj"] = (kv_heads * head_dim, hidden)
        out[f"{attn}.o_proj"] = (hidden, heads * head_dim)
        out[f"{mlp}.gate_proj"] = (inter, hidden)
        out[f"{mlp}.up_proj"] = (inter, hidden)
        out[f"{mlp}.down_proj"] = (hidden, inter)
    out["lm_head"] = (int(c["vocab_size"]), hidden)
    return out


def _bert(c: dict) -> dict[str, tuple[int, int]]:
    hidden = int(c["hidden_size"])
    inter = int(c["intermediate_size"])
    out: dict[str, tuple[int, int]] = {}
    for i in range(int(c["num_hidden_layers"])):
        layer = f"encoder.layer.{i}"
        out[f"{layer}.attention.self.query"] = (hidden, hidden)
        out[f"{layer}.attention.self.key"] = (hidden, hidden)
        out[f"{layer}.attention.self.value"] = (hidden, hidden)
        out[f"{layer}.attention.output.dense"] = (hidden, hidden)
        out[f"{layer}.intermediate.dense"] = (inter, hidden)
        out[f"{layer}.output.dense"] = (hidden, inter)
    out["pooler.dense"] = (hidden, hidden)
    return out


def safetensors_header(file: str | Path) -> dict:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON)."""
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:  # a corrupt length would make us read the whole file
            raise ValueError(f"{file}: implausible safetensors header length {length}")
        return json.loads(f.read(length))


def safetensors_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a model directory (sharded or not), in order."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return [directory / name for name in sorted(set(weight_map.values()))]
    return sorted(directory.glob("*.safetensors"))


def linear_layers_from_safetensors(directory: str | Path) -> dict[str, tuple[int, int]]:
    """2-D `*.weight` tensors that are not embeddings: name -> (out, in). Empty if unreadable."""
    out: dict[str, tuple[int, int]] = {}
    try:
        for file in safetensors_files(directory):
            for name, meta in safetensors_header(file).items():
                shape = meta.get("shape") if isinstance(meta, dict) else None
                if name.endswith(".weight") and shape and len(shape) == 2:
                    module = name[: -len(".weight")]
                    if not _EMBEDDING_NAME.search(module):
                        out[module] = (int(shape[0]), int(shape[1]))
    except (OSError, ValueError, struct.error):
        return {}
    return out


def params_from_safetensors(directory: str | Path) -> int | None:
    """Number of stored parameters (tied weights are stored once), or None if unreadable."""
    total = 0
    try:
        files = safetensors_files(directory)
        if not files:
            return None
        for file in files:
            for name, meta in safetensors_header(file).items():
                if name != "__metadata__" and isinstance(meta, dict):
                    n = 1
                    for d in meta.get("shape", []):
                        n *= int(d)
                    total += n
    except (OSError, ValueError, struct.error):
        return None
    return total


def divisors(n: int) -> list[int]:
    """All positive divisors of n, ascending (e.g. the group sizes a dimension allows)."""
    if n <= 0:
        return []
    small, large = [], []
    i = 1
    while i * i <= n:
        if n % i == 0:
            small.append(i)
            if i != n // i:
                large.append(n // i)
        i += 1
    return small + large[::-1]
