"""Measurement protocols by name: `quick`, `standard` and `full`.

A protocol is a `DataSpec` and a `BenchSpec`: how many evaluation tokens, which batch sizes and
prompt lengths, how many repeats, whether the saved artifact is reloaded and checked. Naming
them lets a user say "quick" and see it in the results, and keeps runs made differently apart:

    quick     what a class or an interactive click can afford: a few configurations in minutes
              (the app's default, the notebooks, `workbench recommend`)
    standard  the workbench's default since the beginning (the CLI and the Python API)
    full      what a careful benchmark does on a CPU: tens of minutes per run

The name is not part of a run's spec (nor of its key): a stored run counts as the protocol whose
settings it used (`name_of`), so runs stored before protocols had names are labelled too, and the
same settings reached by hand are the same protocol. Settings no protocol matches are `custom`.

What a protocol decides (`DATA_FIELDS`, `BENCH_FIELDS`) and what it leaves to the user:

* the text (`source`, `split`, `text_field`): which data you measure on; the results' `data_key`
  keeps runs on different texts apart (`workbench.baselines`);
* the machine (`threads`, `memory_limit_mb`): like the device, where a run happens, not how it is
  measured;
* the switches (`latency`, `accuracy`, `save`, `reload_check`): they turn a measurement on or off
  and leave the numbers of the others as they are, so `quick` with `latency=false` (the budget
  search) is still `quick`.

Pure standard library: importable in the notebook kernel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .errors import InvalidSpec
from .spec import BenchSpec, DataSpec, with_fields


class UnknownProtocol(InvalidSpec):
    """No protocol of that name (exit code 2); the message lists the names."""


@dataclass(frozen=True)
class Protocol:
    """A named measurement protocol: the data and bench settings, and one line saying what it is for."""

    name: str
    data: DataSpec
    bench: BenchSpec
    description: str
    # How long a run may take before it is killed when the caller does not say (None: the
    # executor's default, an hour). Not part of a run's key: how long to wait is not what is measured.
    timeout_s: float | None = None


# The settings a protocol fixes; every other field is the user's (see the module docstring).
DATA_FIELDS = ("eval_windows", "window", "calib_samples", "calib_seq_len", "embed_sentences")
BENCH_FIELDS = ("batch_sizes", "seq_len", "prompt_lengths", "decode_tokens", "generate_batch_sizes", "warmup",
                "repeats")

CUSTOM = "custom"
DEFAULT = "standard"  # the CLI and the Python API: the keys of runs stored before protocols had names
APP_DEFAULT = "quick"  # the app, the notebooks and the budget search: a click answers in seconds

PROTOCOLS: dict[str, Protocol] = {
    p.name: p for p in (
        # Exactly the former LIGHT_DATA / LIGHT_BENCH, so the runs the notebooks stored keep their keys.
        Protocol("quick",
                 DataSpec(eval_windows=4, window=256, calib_samples=16, calib_seq_len=256, embed_sentences=100),
                 BenchSpec(batch_sizes=(1,), prompt_lengths=(32,), decode_tokens=16, generate_batch_sizes=(1,),
                           repeats=2, reload_check=False),
                 "perplexity, KL and top-1 on 4 windows of 256 tokens; batch-1 prefill and decode after a "
                 "32-token prompt, 2 repeats; no reload check: a few configurations in minutes"),
        # The dataclass defaults, untouched: the keys of every run stored before stay valid.
        Protocol("standard", DataSpec(), BenchSpec(),
                 "8 windows of 512 tokens; forward at batch 1-8, prefill and decode after 32- and 256-token "
                 "prompts, 3 repeats; the save-and-reload check"),
        # 8x the evaluation tokens of standard (the perplexity's standard error about a third), windows
        # and a prompt of 1024 tokens (where attention and the KV cache start to cost), batch 16, the
        # GPTQ / AWQ convention of 128 calibration samples (384 tokens each: 49k of the 56k tokens the
        # default text's calibration half holds for SmolLM2), 5 repeats after 2 warm-ups for spreads
        # worth quoting.
        Protocol("full",
                 DataSpec(eval_windows=32, window=1024, calib_samples=128, calib_seq_len=384, embed_sentences=1000),
                 BenchSpec(batch_sizes=(1, 2, 4, 8, 16), prompt_lengths=(32, 256, 1024), decode_tokens=64,
                           generate_batch_sizes=(1, 4, 8), warmup=2, repeats=5, reload_check=True),
                 "32 windows of 1024 tokens; forward at batch 1-16, prefill and decode after 32-, 256- and "
                 "1024-token prompts, 64 new tokens, 5 repeats after 2 warm-ups; 128 calibration samples; "
                 "the save-and-reload check: tens of minutes per run on a CPU",
                 # A slow method (rtn dequantizes at every call) on a busy 2-core machine passes the hour.
                 timeout_s=4 * 3600.0),
    )
}


def names() -> tuple[str, ...]:
    """The protocol names, lightest first."""
    return tuple(PROTOCOLS)


def get(name: str | None) -> Protocol:
    """The protocol called `name` (None: `DEFAULT`); `UnknownProtocol` naming the allowed names otherwise."""
    if name is None:
        return PROTOCOLS[DEFAULT]
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in PROTOCOLS:
        raise UnknownProtocol(f"protocol: got {name!r}; allowed: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[key]


def specs(name: str | None = None, data: DataSpec | Mapping[str, Any] | None = None,
          bench: BenchSpec | Mapping[str, Any] | None = None) -> tuple[DataSpec, BenchSpec]:
    """The data and bench settings of protocol `name`, with overrides.

    A mapping changes single fields on top of the protocol's (`{"repeats": 5}`); a complete
    `DataSpec` / `BenchSpec` is used as it is, in place of the protocol's. Unknown fields raise
    InvalidSpec naming them.
    """
    p = get(name)
    d = data if isinstance(data, DataSpec) else with_fields(p.data, data or {}, "data")
    b = bench if isinstance(bench, BenchSpec) else with_fields(p.bench, bench or {}, "bench")
    return d, b


def name_of(data: DataSpec, bench: BenchSpec) -> str:
    """The protocol whose settings these are (`DATA_FIELDS`, `BENCH_FIELDS`), else `CUSTOM`."""
    for p in PROTOCOLS.values():
        if all(_same(getattr(data, f), getattr(p.data, f)) for f in DATA_FIELDS) and \
                all(_same(getattr(bench, f), getattr(p.bench, f)) for f in BENCH_FIELDS):
            return p.name
    return CUSTOM


def differences(data: DataSpec, bench: BenchSpec, name: str) -> dict[str, Any]:
    """The protocol fields where these settings differ from protocol `name`'s, as `data.F` / `bench.F`
    -> this value (what makes a run `custom`)."""
    p = get(name)
    out: dict[str, Any] = {}
    for prefix, mine, theirs, names_ in (("data", data, p.data, DATA_FIELDS), ("bench", bench, p.bench, BENCH_FIELDS)):
        for f in names_:
            if not _same(getattr(mine, f), getattr(theirs, f)):
                out[f"{prefix}.{f}"] = getattr(mine, f)
    return out


def describe(data: DataSpec, bench: BenchSpec) -> str:
    """"quick", or for custom settings the nearest protocol and what differs:
    "custom (quick with bench.batch_sizes=1,8)"."""
    name = name_of(data, bench)
    if name != CUSTOM:
        return name
    nearest = min(PROTOCOLS, key=lambda n: len(differences(data, bench, n)))
    diff = differences(data, bench, nearest)
    shown = ", ".join(f"{k}={_text(v)}" for k, v in list(diff.items())[:3])
    more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
    return f"{CUSTOM} ({nearest} with {shown}{more})"


def choices() -> list[tuple[str, str]]:
    """(label, name) pairs for a dropdown: "quick: perplexity, KL and top-1 on 4 windows..."."""
    return [(f"{p.name}: {p.description}", p.name) for p in PROTOCOLS.values()]


def help_text() -> str:
    """The names and what each one measures, for `--help`."""
    return "; ".join(f"{p.name}: {p.description}" for p in PROTOCOLS.values())


def _same(a: Any, b: Any) -> bool:
    # Stored specs come back from JSON with lists where the dataclasses hold tuples.
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return tuple(a) == tuple(b)
    return a == b


def _text(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


__all__ = ["APP_DEFAULT", "BENCH_FIELDS", "CUSTOM", "DATA_FIELDS", "DEFAULT", "PROTOCOLS", "Protocol",
           "UnknownProtocol", "choices", "describe", "differences", "get", "help_text", "name_of", "names", "specs"]
