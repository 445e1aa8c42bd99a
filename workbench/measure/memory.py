"""Memory: bytes of the weights as held, size on disk, and process peaks.

`peak_rss_bytes`, `current_rss_bytes` and `dir_bytes` use only the standard
library (the kernel may call them); the tensor functions import torch when
called, so importing this module never pulls torch in.

Weights are counted from the tensors actually held, never from the dtype the
backend claims: a tensor subclass (torchao `AffineQuantizedTensor`,
optimum-quanto `QTensor`, ...) is opened with `__tensor_flatten__` down to
its plain inner tensors (packed ints, scales, zero points), and tensors that
share storage (tied embeddings, views) are counted once.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

if TYPE_CHECKING:  # pragma: no cover
    import torch

# How deep to look into plain module attributes (hqq keeps its scales and zero
# points in a `meta` dict, sometimes nested one level further).
_ATTR_DEPTH = 3


def tensor_bytes(t: "torch.Tensor") -> int:
    """Bytes a tensor actually holds.

    A plain tensor holds the bytes its view spans (numel * element_size when
    contiguous; less for an expanded view); a wrapper subclass holds the sum of
    its inner tensors, recursively. Meta tensors hold nothing.
    """
    return _held_bytes(_leaves(t))


def module_weight_bytes(model: Any, *, include_attributes: bool = True) -> int:
    """Bytes of every tensor a torch module holds: parameters, buffers (persistent
    or not: packed int weights and rotary `inv_freq` are buffers) and, with
    `include_attributes`, tensors kept as plain module attributes or in dicts and
    lists on a module (hqq's `meta` scales and zero points).

    Storage shared between tensors (tied embeddings, views) counts once.
    """
    leaves: list[torch.Tensor] = []
    for t in _module_tensors(model, include_attributes):
        leaves.extend(_leaves(t))
    return _held_bytes(leaves)


def dir_bytes(path: str | os.PathLike[str]) -> int:
    """Size on disk of a saved artifact: a file, or every file under a directory.

    Symbolic links are followed (a hub snapshot links into its blob store) and
    each file is counted once even when reached by several links.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"path: {root} does not exist")
    if root.is_file():
        return root.stat().st_size
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(root, followlinks=True):
        for name in files:
            try:
                st = os.stat(os.path.join(dirpath, name))
            except FileNotFoundError:  # a dangling link holds nothing
                continue
            ident = (st.st_dev, st.st_ino)
            if ident not in seen:
                seen.add(ident)
                total += st.st_size
    return total


# The process peak before the last reset of the kernel's high-water mark (see reset_phase_peak).
_peak_before_reset = 0


def peak_rss_bytes() -> int:
    """The peak resident set size of this process so far (its whole life, not a phase).

    `ru_maxrss`, but never below the current RSS (the kernel's high-water mark lags
    the page counters by a few pages) nor below a peak seen before `reset_phase_peak`.
    """
    return max(_peak_before_reset, phase_peak_bytes())


def phase_peak_bytes() -> int:
    """The peak RSS since the last `reset_phase_peak()` (the whole life if never reset)."""
    try:
        import resource
    except ImportError:  # Windows
        return max(_psutil_rss(peak=True), current_rss_bytes())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    peak = int(peak) if sys.platform == "darwin" else int(peak) * 1024
    return max(peak, current_rss_bytes())


def reset_phase_peak() -> bool:
    """Start a new phase: the next `phase_peak_bytes()` is the peak of what follows.

    Linux resets a process's RSS high-water mark (and so `ru_maxrss`) when "5" is
    written to /proc/self/clear_refs; the peak so far is kept for `peak_rss_bytes()`.
    Returns False where the reset is not possible (phase peaks are then process peaks).
    """
    global _peak_before_reset
    _peak_before_reset = max(_peak_before_reset, phase_peak_bytes())
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> int:
    """The resident set size of this process now."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _psutil_rss(peak=False)


def release_unused(collect: bool = True) -> int:
    """Give back to the OS the memory this process has freed but still holds.

    With `collect`, Python objects in reference cycles are collected first; then glibc's
    `malloc_trim(0)` returns free heap pages. glibc keeps freed blocks in its arenas, and blocks
    of a few MB stop being memory-mapped once one of that size was freed (its threshold adapts), so
    a loop that frees such temporaries while keeping small results between them (top-k of a
    262,144-token vocabulary: 4 MB of scratch per row, 64 KB kept per chunk) grows the heap by
    hundreds of MB per window, and a stage's high-water mark stays in the RSS for the next stage
    otherwise. Nothing in use is touched. Returns the bytes by which the RSS went down (0 where
    there is no glibc).
    """
    import gc

    before = current_rss_bytes()
    if collect:
        gc.collect()
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)
    return max(0, before - current_rss_bytes())


def release_file_pages(path: str | os.PathLike[str]) -> int:
    """Drop this process's resident pages of the read-only mappings of the file `path`.

    A memory-mapped file (an OpenVINO IR's weights) counts in the RSS for every page that was
    read, as long as it stays mapped, even when nothing will read it again: after NNCF has
    compressed an fp32 IR, its 0.5 GB of fp32 weights stay resident that way. `madvise(DONTNEED)`
    unmaps the pages from this process; they stay in the page cache, and a later read faults them
    back in from the file, so the data seen is unchanged. Only read-only mappings are touched (a
    private mapping that was written to would lose its changes). Returns the bytes by which the
    RSS went down; 0 where the file is not mapped or `madvise` is not available (non-Linux).
    """
    import ctypes

    madvise = _libc_function("madvise")
    target = os.path.realpath(path)
    if madvise is None or not os.path.exists("/proc/self/maps"):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madv_dontneed = 4
    before = current_rss_bytes()
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or "w" in fields[1] or fields[5].strip() != target:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            madvise(start, end - start, madv_dontneed)
    return max(0, before - current_rss_bytes())


def _libc_function(name: str) -> Any:
    """A function of the C library this process runs on, or None (not glibc, or not there)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return getattr(libc, name)
    except (OSError, AttributeError):
        return None


def cuda_max_allocated_bytes() -> int | None:
    """Peak bytes allocated by torch on the current CUDA device, or None without CUDA.

    Does not import torch itself: a process that never imported it used no CUDA.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.max_memory_allocated())


# --- internals ---------------------------------------------------------------


def _psutil_rss(peak: bool) -> int:
    try:
        import psutil
    except ImportError:
        return 0
    info = psutil.Process().memory_info()
    return int(getattr(info, "peak_wset", info.rss) if peak else info.rss)


def _is_wrapper(t: "torch.Tensor") -> bool:
    import torch

    return type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__")


def _leaves(t: "torch.Tensor") -> Iterator["torch.Tensor"]:
    """The plain tensors holding a tensor's data (itself, or a subclass's inner tensors)."""
    if _is_wrapper(t):
        names, _ctx = t.__tensor_flatten__()
        for name in names:
            yield from _leaves(getattr(t, name))
    else:
        yield t


def _module_tensors(model: Any, include_attributes: bool) -> Iterator["torch.Tensor"]:
    import torch

    yield from model.parameters()
    yield from model.buffers()
    if include_attributes:
        for module in model.modules():
            for name, value in vars(module).items():
                if name not in ("_parameters", "_buffers", "_modules"):  # already counted, or walked
                    yield from _tensors_in(value, torch.Tensor, _ATTR_DEPTH)


def _tensors_in(value: Any, tensor_type: type, depth: int) -> Iterator["torch.Tensor"]:
    if isinstance(value, tensor_type):
        yield value
    elif depth > 0 and isinstance(value, dict):
        for v in value.values():
            yield from _tensors_in(v, tensor_type, depth - 1)
    elif depth > 0 and isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors_in(v, tensor_type, depth - 1)


def _held_bytes(leaves: Iterable["torch.Tensor"]) -> int:
    """Bytes spanned by plain tensors, counting each byte of a shared storage once."""
    spans: dict[tuple[str, int], list[tuple[int, int]]] = {}
    unshared = 0
    for t in leaves:
        if t.device.type == "meta" or t.numel() == 0:
            continue
        size = t.element_size()
        try:
            ptr = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
            unshared += t.numel() * size
            continue
        extent = 1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))
        start = t.storage_offset() * size
        spans.setdefault((str(t.device), ptr), []).append((start, start + extent * size))
    return unshared + sum(_union_length(v) for v in spans.values())


def _union_length(intervals: list[tuple[int, int]]) -> int:
    total = 0
    end = -1
    for a, b in sorted(intervals):
        if a >= end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total
