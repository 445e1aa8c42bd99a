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
from typing import Any, Mapping

from .errors import InvalidSpec

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


def __getattr__(name: str) -> Any:
    """`LIGHT_DATA` / `LIGHT_BENCH`: the `quick` protocol's settings under their former names.

    The protocols live in `workbench.protocols` (which imports this module), so these are looked
    up when asked for; `Session.make_spec(..., protocol="quick")` is the way to say it now."""
    if name in ("LIGHT_DATA", "LIGHT_BENCH"):
        from .protocols import PROTOCOLS

        quick = PROTOCOLS["quick"]
        return quick.data if name == "LIGHT_DATA" else quick.bench
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        d["model"] = ModelSpec(id=model) if isinstance(model, str) else _build(ModelSpec, model)
        d["data"] = _build(DataSpec, d.get("data") or {})
        d["bench"] = _build(BenchSpec, d.get("bench") or {})
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
        """Short human label: method and its non-default-looking params."""
        ps = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.method}({ps})" if ps else self.method


def _build(cls: type, d: Mapping[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise InvalidSpec(f"unknown {cls.__name__} fields: {sorted(unknown)}; allowed: {sorted(names)}")
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**d)


def data_key(model: ModelSpec, data: DataSpec) -> str:
    """Key of the reference (baseline) outputs: same model, same tokens."""
    blob = json.dumps({"model": asdict(model), "data": asdict(data), "protocol": PROTOCOL_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
