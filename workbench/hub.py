"""The Hugging Face hub as the workbench meets it, without huggingface_hub: whether the user asked
for no network, where the hub's cache is, a cached snapshot, one file fetched with a deadline, and
the one message for a hub that cannot be reached.

Below `models/` and `data/`, which both ask it (model ids, `hub:` data sets); standard library only.
"""
from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

from .errors import ModelNotFound

# A hub that does not answer within this is treated as unreachable (this machine has no internet).
HUB_TIMEOUT_S = 3.0


def hub_offline() -> bool:
    """True when the user asked for no network (HF_HUB_OFFLINE or WORKBENCH_OFFLINE)."""
    flags = (os.environ.get(v, "").strip().lower() for v in ("HF_HUB_OFFLINE", "WORKBENCH_OFFLINE"))
    return any(f in ("1", "true", "yes", "on") for f in flags)


def hub_unreachable_message(ident: str) -> str:
    """The one message for a hub id that cannot be fetched: what to do instead."""
    return (
        f"model: cannot reach the Hugging Face hub for {ident!r} (offline?): download the model elsewhere "
        "and pass its local directory, e.g. --model /path/to/model"
    )


def hub_cache_dir() -> Path:
    """The huggingface_hub cache (HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def cached_snapshot(ident: str, revision: str | None = None) -> Path | None:
    """The cached snapshot directory of a hub repo at `revision` (default main), if any."""
    repo = hub_cache_dir() / ("models--" + ident.replace("/", "--"))
    rev = revision or "main"
    ref = repo / "refs" / rev
    commit = ref.read_text().strip() if ref.is_file() else rev
    snap = repo / "snapshots" / commit
    return snap if snap.is_dir() else None


def fetch_hub_file(ident: str, filename: str, revision: str | None = None, timeout: float = HUB_TIMEOUT_S) -> bytes:
    """GET a file from the hub within `timeout` seconds overall (DNS included).

    Raises ModelNotFound: the offline message when the hub cannot be reached,
    a not-found message on 401/404.
    """
    if hub_offline():
        raise ModelNotFound(hub_unreachable_message(ident))
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/{ident}/resolve/{revision or 'main'}/{filename}"
    box: dict = {}

    def get() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                box["data"] = r.read()
        except Exception as e:  # noqa: BLE001 - any failure is reported below
            box["error"] = e

    # urlopen's timeout does not cover name resolution, which can hang far longer.
    t = threading.Thread(target=get, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    if "data" in box:
        return box["data"]
    err = box.get("error")
    if isinstance(err, urllib.error.HTTPError) and err.code in (401, 403, 404):
        raise ModelNotFound(
            f"model: {ident!r} (revision {revision or 'main'}) has no {filename} on the hub "
            f"(HTTP {err.code}: missing, private or gated)"
        )
    raise ModelNotFound(hub_unreachable_message(ident))
