"""Backend environment families: creation, status and the interpreter a worker runs with.

The backends cannot share one set of pins (docs/backends.md), so each method names an
environment family and the worker runs with that family's interpreter. The
pinned requirement files ship inside the package (`workbench/envs/NAME.txt`,
plus `NAME-nodeps.txt` for packages installed with --no-deps).

Environments live in `$WORKBENCH_HOME/envs/NAME`. `WORKBENCH_ENV_<NAME>=/path/to/python`
points a family at an existing interpreter instead.

Torch-free: only the standard library (and tqdm for the progress bar).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .. import paths
from ..errors import EnvironmentUnavailable, InvalidSpec

HERE = Path(__file__).parent

# "kernel" is the interpreter running the workbench itself (tests, light methods).
KERNEL = "kernel"
# One family takes 1.7-2.1 GB installed (each has its own torch), plus pip's unpacked wheels.
ENV_DISK_BYTES = int(2.5 * 2**30)


@dataclass(frozen=True)
class EnvFamily:
    """A named, pinned set of requirements."""

    name: str
    description: str
    check: str  # a python statement that must succeed in a healthy environment
    # A module run as `python -m PROBE OUT.json` in the new environment: it records what the
    # installed libraries accept (read by method schemas in the kernel, without importing them).
    probe: str | None = None
    # Backend modules the family's prepared process imports before it forks runs
    # (`workbench.prepared`), besides torch and transformers: only modules whose import leaves no
    # device initialized and no thread but a thread pool executor that can be shut down. What is
    # not listed, each run imports itself, as a cold worker does.
    warm_imports: tuple[str, ...] = ()

    @property
    def requirements(self) -> Path:
        return HERE / f"{self.name}.txt"

    @property
    def nodeps(self) -> Path | None:
        p = HERE / f"{self.name}-nodeps.txt"
        return p if p.exists() else None

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in (self.requirements, self.nodeps):
            if p is not None:
                h.update(p.read_bytes())
        return h.hexdigest()[:16]


FAMILIES: dict[str, EnvFamily] = {
    "torch": EnvFamily(
        "torch",
        "PyTorch 2.13 CPU, transformers 5.x and the torch-side backends; the embedded models",
        "import torch, transformers, safetensors, gguf",
    ),
    "openvino": EnvFamily(
        "openvino",
        "Optimum Intel 2.2: OpenVINO runtime and NNCF weight/static/hybrid quantization; transformers 5.5",
        "import torch, transformers, openvino, nncf, optimum.intel; from optimum.intel import OVModelForCausalLM",
        probe="workbench.methods.openvino.probe",
        # 5 to 10 s of imports on two cores, more than half of a quick ov-weight run's first number.
        warm_imports=("openvino", "nncf", "optimum.intel.openvino"),
    ),
    "onnx": EnvFamily(
        "onnx",
        "ONNX Runtime 1.32 through optimum-onnx 0.1 (export, ORTQuantizer dynamic/static int8, MatMulNBits); "
        "transformers 4.57",
        "import torch, transformers, onnx, onnxruntime, onnx_ir, optimum.onnxruntime; "
        "from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer",
    ),
    "gptq": EnvFamily(
        "gptq",
        "GPTQModel 7.7 (GPTQ; CPU kernels for GPTQ and AWQ checkpoints) and AutoAWQ 0.2.9 (AWQ); transformers 5.23",
        "import os; os.environ.setdefault('GPTQMODEL_CPU_WORKERS', '2'); import torch, transformers, gptqmodel, awq; "
        "from gptqmodel import GPTQModel, QuantizeConfig; from awq import AutoAWQForCausalLM",
    ),
    "llmcompressor": EnvFamily(
        "llmcompressor",
        "llm-compressor 0.14 oneshot (RTN, GPTQ, AWQ) into compressed-tensors checkpoints; the compressed-tensors "
        "and AQLM loaders; transformers 5.17",
        "import torch, transformers, compressed_tensors, llmcompressor, aqlm; from llmcompressor import oneshot",
    ),
}


# Which families an installation holds. `all`: everything (`make setup`). `binder`: what the app
# shows first (the PyTorch-side methods and OpenVINO), so the Binder image stays within what
# mybinder.org builds and serves (docs/binder.md); binder/postBuild creates exactly this list and
# binder/start names the profile, so that the app says "not installed in this demo" for the rest.
PROFILES: dict[str, tuple[str, ...]] = {
    "all": tuple(FAMILIES),
    "binder": ("torch", "openvino"),
}
PROFILE_VAR = "WORKBENCH_PROFILE"


def profile_families(name: str) -> tuple[str, ...]:
    """The families of profile `name` (InvalidSpec naming the profiles for an unknown one)."""
    try:
        return PROFILES[name]
    except KeyError:
        raise InvalidSpec(f"profile: unknown profile {name!r}; allowed: {', '.join(PROFILES)}") from None


def active_profile() -> str:
    """The profile this installation was built with: `$WORKBENCH_PROFILE` (binder/start sets
    `binder`), else `all`. An unknown name counts as `all` (it only changes a message)."""
    name = os.environ.get(PROFILE_VAR, "").strip() or "all"
    return name if name in PROFILES else "all"


@dataclass(frozen=True)
class EnvStatus:
    name: str
    state: str  # ready | missing | stale | external
    python: str | None
    path: str | None
    reason: str = ""
    created_at: float | None = None

    @property
    def ready(self) -> bool:
        return self.state in ("ready", "external", "stale")

    def to_dict(self) -> dict:
        return asdict(self)


def family(name: str) -> EnvFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise InvalidSpec(f"unknown environment {name!r}; allowed: {', '.join(FAMILIES)}") from None


def env_dir(name: str) -> Path:
    return paths.subdir("envs") / name


def _override(name: str) -> str | None:
    return os.environ.get(f"WORKBENCH_ENV_{name.upper()}")


def status(name: str) -> EnvStatus:
    """What state the environment is in, without starting its interpreter."""
    if name == KERNEL:
        return EnvStatus(KERNEL, "external", sys.executable, None, "the interpreter running the workbench")
    fam = family(name)
    override = _override(name)
    if override:
        ok = Path(override).exists()
        return EnvStatus(name, "external" if ok else "missing", override if ok else None, None,
                         f"WORKBENCH_ENV_{name.upper()}={override}" + ("" if ok else " does not exist"))
    d = env_dir(name)
    py = d / "bin" / "python"
    manifest = d / "workbench-env.json"
    if not py.exists() or not manifest.exists():
        profile = active_profile()
        if name not in PROFILES[profile]:
            return EnvStatus(name, "missing", None, str(d),
                             f"is not installed in this demo (the {profile} profile holds "
                             f"{', '.join(PROFILES[profile])}): `workbench env create {name}` in a terminal "
                             "installs it (a few minutes, about 2 GB)")
        return EnvStatus(name, "missing", None, str(d),
                         f"not created in {d.parent}: run `workbench env create {name}` "
                         "(`workbench info` says why the workbench looks there)")
    meta = json.loads(manifest.read_text())
    if meta.get("fingerprint") != fam.fingerprint():
        return EnvStatus(name, "stale", str(py), str(d),
                         f"requirements changed since creation: run `workbench env create {name}` to update",
                         meta.get("created_at"))
    return EnvStatus(name, "ready", str(py), str(d), "", meta.get("created_at"))


PROBE_FILE = "workbench-probe.json"


def probed(name: str) -> dict | None:
    """What the environment's probe recorded at creation (see EnvFamily.probe), or None."""
    try:
        return json.loads((env_dir(name) / PROBE_FILE).read_text())
    except (OSError, ValueError):
        return None


def list_envs() -> list[EnvStatus]:
    return [status(n) for n in FAMILIES]


def python_for(name: str) -> str:
    """The interpreter for a family, or EnvironmentUnavailable saying how to create it."""
    st = status(name)
    if not st.ready or st.python is None:
        raise EnvironmentUnavailable(f"environment {name!r} is unavailable: {st.reason}")
    return st.python


def site_packages(name: str) -> list[Path]:
    """site-packages directories of an environment (for torch-free availability checks)."""
    st = status(name)
    if st.python is None:
        return []
    if name == KERNEL or st.state == "external":
        # A venv's bin/python links to the base interpreter: look beside the link first.
        for root in (Path(st.python).absolute().parent.parent, Path(st.python).resolve().parent.parent):
            found = sorted(root.glob("lib/python3*/site-packages"))
            if found:
                return found
        return []
    return sorted(Path(st.path or "").glob("lib/python3*/site-packages"))


def installed(name: str) -> dict[str, str]:
    """{normalized distribution name: version} installed in an environment, read from dist-info, no import."""
    from importlib.metadata import distributions

    if name == KERNEL:
        dists = distributions()
    else:
        dirs = [str(p) for p in site_packages(name)]
        if not dirs:
            return {}
        dists = distributions(path=dirs)
    out: dict[str, str] = {}
    for d in dists:
        n = d.metadata.get("Name")
        if n:
            out[normalize(n)] = d.version
    return out


def normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def create(name: str, *, progress: bool = True, log: Callable[[str], None] | None = None) -> EnvStatus:
    """Create (or update in place) an environment from its pinned files, with a progress bar."""
    from tqdm.auto import tqdm

    fam = family(name)
    d = env_dir(name)
    steps = ["virtual environment", "pinned requirements"] + (["no-deps packages"] if fam.nodeps else []) + ["check"] \
        + (["probe"] if fam.probe else [])
    bar = tqdm(total=len(steps), desc=f"env {name}", unit="step", disable=not progress)

    def run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
        bar.set_postfix_str(what)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-40:]
            m = re.match(r"(Collecting|Installing collected packages:|Successfully installed)\s*(\S*)", line)
            if m:
                bar.set_postfix_str(f"{what}: {m.group(1).split()[0].lower()} {m.group(2)}"[:70])
            if log:
                log(line)
        if proc.wait() != 0:
            bar.close()
            hint = ""
            if any("No space left on device" in t for t in tail):
                hint = f"\nthe disk is full: {_free_space(d)}; each environment needs about " \
                       f"{ENV_DISK_BYTES / 2**30:.1f} GB (`make clean` removes the workbench's own)"
            raise EnvironmentUnavailable(f"creating environment {name!r} failed at '{what}':\n"
                                         + "\n".join(tail) + hint)
        bar.update(1)

    py = d / "bin" / "python"
    if not py.exists():
        check_disk_space(d)
        run([sys.executable, "-m", "venv", str(d)], "virtual environment")
    else:
        bar.update(1)
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    run(pip + ["-r", str(fam.requirements)], "pinned requirements")
    if fam.nodeps:
        run(pip + ["--no-deps", "-r", str(fam.nodeps)], "no-deps packages")
    run([str(py), "-c", fam.check], "check")
    if fam.probe:
        run([str(py), "-m", fam.probe, str(d / PROBE_FILE)], "probe",
            env=worker_env())
    bar.close()
    manifest = {
        "family": name,
        "fingerprint": fam.fingerprint(),
        "created_at": time.time(),
        "python": str(py),
    }
    (d / "workbench-env.json").write_text(json.dumps(manifest, indent=2))
    return status(name)


def _free_space(path: Path) -> str:
    existing = next(p for p in (path, *path.parents) if p.exists())
    return f"{shutil.disk_usage(existing).free / 2**30:.1f} GB free on the disk holding {existing}"


def check_disk_space(path: Path, need: int | None = None) -> None:
    """Refuse before pip starts when the disk cannot hold a new environment at `path`."""
    need = ENV_DISK_BYTES if need is None else need
    existing = next(p for p in (path, *path.parents) if p.exists())
    if shutil.disk_usage(existing).free < need:
        raise EnvironmentUnavailable(
            f"creating an environment in {path} needs about {need / 2**30:.1f} GB of disk; "
            f"{_free_space(path)} (WORKBENCH_HOME chooses where environments go)")


def worker_env() -> dict[str, str]:
    """This process's environment with PYTHONPATH set for a workbench module in a backend env."""
    return {**os.environ, "PYTHONPATH": worker_pythonpath()}


def worker_pythonpath() -> str:
    """A directory holding only the `workbench` package, for PYTHONPATH in workers.

    The worker's environment must not see the kernel environment's site-packages,
    only this package, so a shim directory with a symlink to the package is used.
    """
    pkg = Path(__file__).resolve().parent.parent
    tag = hashlib.sha256(str(pkg).encode()).hexdigest()[:12]
    shim = paths.subdir("shim") / tag
    link = shim / "workbench"
    if not (link.is_symlink() and link.resolve() == pkg):
        shim.mkdir(parents=True, exist_ok=True)
        tmp = shim / f".workbench.{os.getpid()}"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(pkg, target_is_directory=True)
        os.replace(tmp, link)
    return str(shim)
