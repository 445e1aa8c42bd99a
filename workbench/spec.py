"""Run specifications: the one JSON-serializable object that crosses every boundary.

widget -> Session -> Executor -> worker -> result all pass a `RunSpec`. Its
`key` (a content hash of the canonical JSON) is the cache key: the same spec
twice is one run.

Pure standard library: importable in the notebook kernel.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Mapping, TypeVar

from .errors import InvalidParams, InvalidSpec, ParamError
from .params import Param, Schema

# Bump when the measurement protocol changes in a way that makes stored numbers
# incomparable: it is part of every key, so old results stop being cache hits.
PROTOCOL_VERSION = 1

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class ModelSpec:
    """Which model: a catalog name (`smollm2-135m`), a local directory or a hub id."""

    id: str
    revision: str | None = None
    trust_remote_code: bool = False
    use_safetensors: bool = True


@dataclass(frozen=True)
class DataSpec:
    """Which text, and how it is split into evaluation windows and calibration samples.

    source: `pydoc-topics` (ships with CPython), `file:PATH` (.txt, or .jsonl with
    a `text` field) or `hub:NAME[/CONFIG]` (a `datasets` name; needs internet).
    Evaluation windows come from the start of the text, calibration samples
    only from its second half, so they never overlap.
    """

    source: str = "pydoc-topics"
    split: str = "train"
    text_field: str = "text"
    eval_windows: int = 8
    window: int = 512
    calib_samples: int = 32
    calib_seq_len: int = 512
    embed_sentences: int = 200


@dataclass(frozen=True)
class BenchSpec:
    """What is measured, and how often. The defaults are the workbench's protocol."""

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    seq_len: int = 128
    prompt_lengths: tuple[int, ...] = (32, 256)
    decode_tokens: int = 32
    generate_batch_sizes: tuple[int, ...] = (1, 4)
    warmup: int = 1
    repeats: int = 3
    threads: int | None = None
    latency: bool = True
    accuracy: bool = True
    save: bool = True
    # Reload the saved artifact in a fresh process and re-measure accuracy (needs save and accuracy).
    reload_check: bool = True
    memory_limit_mb: int | None = None


@dataclass(frozen=True)
class _Sizes(Param):
    """A non-empty list of integers in [minimum, maximum] (batch sizes, prompt lengths); a tuple once
    coerced, as the dataclasses hold it. Comma-separated on the command line."""

    def allowed(self) -> str:
        return f"a non-empty list of integers in [{self.minimum:g}, {self.maximum:g}]"

    def coerce(self, value: Any) -> Any:
        items = [x.strip() for x in value.split(",") if x.strip()] if isinstance(value, str) else value
        one = Param(self.name, "int", None, minimum=self.minimum, maximum=self.maximum)
        try:
            if not isinstance(items, (list, tuple)) or not items:
                raise ValueError
            return tuple(one.coerce(x) for x in items)
        except ValueError:
            raise ValueError(f"got {value!r}; allowed: {self.allowed()}") from None


# The fields of DataSpec and BenchSpec, declared like method parameters: the session, the CLI
# (`--data-field`, `--bench` and their help), sweep files, protocols and the app all check them
# here. Names, defaults and order are the dataclasses' (a test holds them equal): run keys hash those.
DATA_SCHEMA = Schema((
    Param("source", "str", "pydoc-topics", "pydoc-topics, file:PATH (.txt or .jsonl) or hub:NAME[/CONFIG]"),
    Param("split", "str", "train", "dataset split (hub: sources)"),
    Param("text_field", "str", "text", "the text field of .jsonl and hub records"),
    Param("eval_windows", "int", 8, "evaluation windows (perplexity, KL, top-1)", minimum=1, maximum=10_000),
    Param("window", "int", 512, "tokens per evaluation window", minimum=8, maximum=32_768),
    Param("calib_samples", "int", 32, "calibration samples", minimum=1, maximum=100_000),
    Param("calib_seq_len", "int", 512, "tokens per calibration sample", minimum=8, maximum=32_768),
    Param("embed_sentences", "int", 200, "sentences for the embedding models' metrics", minimum=1, maximum=100_000),
))
BENCH_SCHEMA = Schema((
    _Sizes("batch_sizes", "list", (1, 2, 4, 8), "forward-pass batch sizes", minimum=1, maximum=4096),
    Param("seq_len", "int", 128, "forward-pass sequence length", minimum=1, maximum=32_768),
    _Sizes("prompt_lengths", "list", (32, 256), "prompt lengths for prefill and decode", minimum=1, maximum=4096),
    # At least 2: the decode rate is timed over the tokens after the first, which the prefill makes
    # (measure.latency.generation_table divides by decode_tokens - 1).
    Param("decode_tokens", "int", 32, "new tokens per generate", minimum=2, maximum=4096),
    _Sizes("generate_batch_sizes", "list", (1, 4), "generate-throughput batch sizes", minimum=1, maximum=4096),
    Param("warmup", "int", 1, "untimed calls before each timing", minimum=0, maximum=100),
    Param("repeats", "int", 3, "timed calls per measurement", minimum=1, maximum=1000),
    Param("threads", "int", None, "torch threads (none: the backend's default)", minimum=1, maximum=1024,
          nullable=True),
    Param("latency", "bool", True, "measure latency"),
    Param("accuracy", "bool", True, "measure accuracy"),
    Param("save", "bool", True, "save the quantized artifact"),
    Param("reload_check", "bool", True, "reload the saved artifact in a fresh process and re-measure accuracy"),
    Param("memory_limit_mb", "int", None, "memory limit of the worker (none: no limit)", minimum=64,
          maximum=10_000_000, nullable=True),
))

_SCHEMAS: dict[type, Schema] = {DataSpec: DATA_SCHEMA, BenchSpec: BENCH_SCHEMA}
_S = TypeVar("_S", DataSpec, BenchSpec)


def field_errors(obj: DataSpec | BenchSpec, what: str) -> tuple[dict[str, Any], list[ParamError]]:
    """`obj`'s fields checked against its schema: (normalized fields, errors named `what.FIELD`)."""
    values, errors = _SCHEMAS[type(obj)].errors(asdict(obj))
    return dict(values), [ParamError(f"{what}.{e.param}", e.message) for e in errors]


def with_fields(base: _S, values: Mapping[str, Any], what: str) -> _S:
    """`base` with the fields in `values` changed (lists become tuples); InvalidSpec naming unknown
    fields. Values are checked when the run is validated (`field_errors`)."""
    allowed = _SCHEMAS[type(base)].names
    unknown = set(values) - set(allowed)
    if unknown:
        raise InvalidSpec(f"{what}: unknown fields {sorted(unknown)}; allowed: {', '.join(allowed)}")
    return replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def parse_fields(cls: type, pairs: Iterable[str], what: str) -> dict[str, Any]:
    """`K=V` strings (the CLI's `--data-field` / `--bench`) as typed, checked fields of `cls`;
    InvalidParams naming every bad one."""
    schema = _SCHEMAS[cls]
    out: dict[str, Any] = {}
    errors: list[ParamError] = []
    for item in pairs:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in schema.names:
            errors.append(ParamError(f"{what}.{key}", f"expected NAME=VALUE with NAME one of {', '.join(schema.names)}"))
            continue
        try:
            out[key] = schema.get(key).coerce(raw.strip())
        except ValueError as e:
            errors.append(ParamError(f"{what}.{key}", str(e)))
    if errors:
        raise InvalidParams(errors)
    return out


def fields_help(cls: type) -> str:
    """The fields of `cls` with what each one is and allows, for `--help`."""
    return "; ".join(f"{p.name} ({p.allowed()}, default {_default(p.default)}): {p.help}" for p in _SCHEMAS[cls].params)


def _default(v: Any) -> str:
    if isinstance(v, tuple):
        return ",".join(map(str, v))
    return "none" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


@dataclass(frozen=True)
class RunSpec:
    """One run: a model, a method with its parameters, the data and the benchmark settings."""

    model: ModelSpec
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    data: DataSpec = field(default_factory=DataSpec)
    bench: BenchSpec = field(default_factory=BenchSpec)
    device: str = "cpu"
    seed: int = 0
    # Not part of the key: how long to wait is not what is measured.
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", dict(self.params))
        base = self.device.split(":", 1)[0]
        if base not in DEVICES:
            raise InvalidSpec(f"device: got {self.device!r}; allowed: {', '.join(DEVICES)} (cuda:N for a given GPU)")

    # --- serialization -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"] = dict(self.params)
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, **kw)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunSpec":
        d = dict(d)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidSpec(f"unknown run spec fields: {sorted(unknown)}")
        if "model" not in d or "method" not in d:
            raise InvalidSpec("a run spec needs 'model' and 'method'")
        model = d["model"]
        d["model"] = ModelSpec(id=model) if isinstance(model, str) else _model(model)
        d["data"] = with_fields(DataSpec(), d.get("data") or {}, "data")
        d["bench"] = with_fields(BenchSpec(), d.get("bench") or {}, "bench")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        return cls.from_dict(json.loads(text))

    # --- identity --------------------------------------------------------
    @property
    def key(self) -> str:
        """Content hash of everything that determines the result (not the timeout)."""
        d = self.to_dict()
        d.pop("timeout_s", None)
        d["protocol"] = PROTOCOL_VERSION
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def __hash__(self) -> int:
        return hash(self.key)

    def replace(self, **changes: Any) -> "RunSpec":
        return replace(self, **changes)

    @property
    def label(self) -> str:
        """The configuration's short name, as tables and plots show it (`label`)."""
        return label(self.method, self.params)


def _model(d: Mapping[str, Any]) -> ModelSpec:
    names = {f.name for f in fields(ModelSpec)}
    unknown = set(d) - names
    if unknown:
        raise InvalidSpec(f"unknown ModelSpec fields: {sorted(unknown)}; allowed: {sorted(names)}")
    return ModelSpec(**d)


def data_key(model: ModelSpec, data: DataSpec) -> str:
    """Key of the reference (baseline) outputs: same model, same tokens."""
    blob = json.dumps({"model": asdict(model), "data": asdict(data), "protocol": PROTOCOL_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def label(method: str, params: Mapping[str, Any]) -> str:
    """A short name for a configuration, e.g. `rtn bits=4 group_size=64 sym=false`.

    Scalars are shown (a reader compares them across rows); list parameters only when they
    differ from the method's default, which keeps include/exclude patterns out of every label.
    Methods with more than LONG_SCHEMA parameters (ov-weight has 17) show only the first
    parameter and those that differ from their defaults, else labels run off the table.
    """
    defaults = _defaults(method)
    long_schema = len(defaults) > LONG_SCHEMA
    first = next(iter(defaults), None)
    parts = [method]
    for k, v in sorted(params.items()):
        if v is None or (isinstance(v, (list, tuple)) and (not v or list(v) == defaults.get(k))):
            continue
        if long_schema and k != first and k in defaults and v == defaults[k]:
            continue
        if isinstance(v, bool):
            parts.append(k if v else f"{k}=false")
        elif isinstance(v, (list, tuple)):
            parts.append(f"{k}={'|'.join(map(str, v))}")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


LONG_SCHEMA = 6


# method -> every parameter's default, in schema order (hidden ones too). The registry knows the
# method classes and installs its lookup here when it is imported (`use_method_defaults`), so this
# module, which workers and the store import, stays below it; until then labels show every scalar.
_defaults_of: Callable[[str], dict[str, Any]] | None = None


def use_method_defaults(lookup: Callable[[str], dict[str, Any]]) -> None:
    """Where `label` finds a method's parameter defaults (the registry calls it)."""
    global _defaults_of
    _defaults_of = lookup


def _defaults(method: str) -> dict[str, Any]:
    if _defaults_of is None:
        return {}
    try:
        return _defaults_of(method)
    except Exception:  # noqa: BLE001 - a label must never fail (e.g. a plug-in that no longer imports)
        return {}
