"""Where a run happened: package versions and the device.

Torch-free at import: torch is only consulted when it is already imported
(threads) or when a CUDA device is asked about.
"""
from __future__ import annotations

import os
import platform
import socket
import sys
from importlib import metadata
from typing import Any, Iterable

NOT_INSTALLED = "not installed"

# CPU features that decide which quantized kernels can run fast.
CPU_FLAGS = (
    "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
)


def versions(packages: Iterable[str]) -> dict[str, str]:
    """Installed versions of the named distributions, plus "python"; "not installed" for missing ones."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = NOT_INSTALLED
    return out


def device_info(device: str = "cpu") -> dict[str, Any]:
    """The machine a run measured: CPU model and relevant flags, cores (logical,
    usable by this process, and the cgroup quota), torch threads when torch is
    loaded, load average, memory, hostname; GPU name, capability and memory for
    a `cuda` device.
    """
    cpuinfo = _cpuinfo()
    flags = set(cpuinfo.get("flags", "").split())
    info: dict[str, Any] = {
        "device": device,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpuinfo.get("model name") or platform.processor() or None,
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "amx": any(f.startswith("amx") for f in flags),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cgroup_cpu_limit": _cgroup_cpu_limit(),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "total_memory_bytes": _total_memory(),
        "torch_threads": None,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
    if device.startswith("cuda"):
        info.update(_cuda_info(device))
    return info


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (empty elsewhere)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if out:
                        break
                    continue
                key, _, value = line.partition(":")
                out.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return out


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by a cgroup v2 quota (`cpu.max`), None when unlimited or unknown."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _cuda_info(device: str) -> dict[str, Any]:
    import torch  # only a CUDA run asks, and it has torch

    if not torch.cuda.is_available():
        return {"gpu_name": None, "cuda_available": False}
    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {
        "cuda_available": True,
        "gpu_name": props.name,
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_memory_bytes": int(props.total_memory),
        "gpu_count": torch.cuda.device_count(),
        "cuda_version": torch.version.cuda,
    }
