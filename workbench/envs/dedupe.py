"""One copy on disk of what several backend environments install identically.

Every family pins the same torch (754 MB installed), and most share pandas, pyarrow, numpy and the
embedded-model packages: two environments hold two identical copies. `link_duplicates` replaces
each identical file by a hard link to one copy. Why this is safe: pip never writes into an
installed file, it removes it and writes a new one (an upgrade or uninstall in one environment
unlinks its own name, the other keeps its copy); nothing else writes into site-packages.
Byte-compiled caches (`__pycache__`) are left alone, since Python rewrites those in place.

Used by binder/postBuild (the Binder image must stay small: docs/binder.md) and available as
`workbench env dedupe` after `make setup`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# Small files save little and are many: hashing them would cost more time than it saves space.
MIN_BYTES = 64 * 1024


@dataclass(frozen=True)
class Linked:
    """What `link_duplicates` did: files replaced by links, and the bytes that freed."""

    files: int
    bytes_saved: int


def _candidates(roots: Iterable[Path]) -> dict[tuple[int, int], list[Path]]:
    """Regular files of at least MIN_BYTES, grouped by (device, size)."""
    by_size: dict[tuple[int, int], list[Path]] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                path = Path(folder) / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if path.is_symlink() or not path.is_file() or st.st_size < MIN_BYTES:
                    continue
                by_size.setdefault((st.st_dev, st.st_size), []).append(path)
    return {k: v for k, v in by_size.items() if len(v) > 1}


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def link_duplicates(roots: Iterable[Path]) -> Linked:
    """Hard-link identical files (same content and mode) under `roots` to one copy."""
    files = saved = 0
    for (_dev, size), paths in _candidates([Path(r) for r in roots]).items():
        by_content: dict[tuple[str, int], list[Path]] = {}
        for p in paths:
            by_content.setdefault((_digest(p), p.stat().st_mode), []).append(p)
        for same in by_content.values():
            keep = same[0]
            for other in same[1:]:
                if other.stat().st_ino == keep.stat().st_ino:
                    continue  # already one file
                tmp = other.with_name(other.name + ".wb-link")
                os.link(keep, tmp)
                os.replace(tmp, other)  # atomic: a reader sees the old file or the link
                files += 1
                saved += size
    return Linked(files, saved)
