"""binder/: what repo2docker (mybinder.org) builds from it, checked without Docker.

`repo2docker --no-build --no-run --debug .` prints the Dockerfile it would build; these tests read
the order of its steps there. They cannot show that the installs succeed (that needs a build), only
that repo2docker sees the files and runs them in an order that can work.
"""
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from workbench.models import catalog

ROOT = Path(__file__).resolve().parents[2]
BINDER = ROOT / "binder"


@pytest.fixture(scope="module")
def dockerfile() -> str:
    pytest.importorskip("repo2docker", reason="jupyter-repo2docker is not installed (the `test` extra)")
    r = subprocess.run([sys.executable, "-m", "repo2docker", "--no-build", "--no-run", "--debug", "."],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "FROM " in r.stdout, r.stdout + r.stderr
    return r.stdout


def _line(dockerfile: str, pattern: str) -> int:
    """Index of the first Dockerfile line matching `pattern` (a regex)."""
    for i, line in enumerate(dockerfile.splitlines()):
        if re.search(pattern, line):
            return i
    raise AssertionError(f"no Dockerfile line matches {pattern!r}")


def test_no_environment_yml_that_would_make_repo2docker_ignore_requirements():
    assert not any((BINDER / n).exists() for n in ("environment.yml", "environment.yaml", "Pipfile", "setup.py"))


def test_the_image_gets_python_3_11_not_repo2dockers_default(dockerfile):
    # The backend pins were resolved on 3.11 and pyproject says >=3.11; repo2docker defaults to 3.10
    # and, with a binder/ folder, does not read pyproject.toml.
    # build_script_files/ names escape characters as -XX (hex): "-2e" is ".", "-2d" is "-".
    copied = [re.sub(r"-([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), name)
              for name in re.findall(r"build_script_files/(\S+)", dockerfile)]
    assert any("/environment.py-3.11-linux-64.lock" in c for c in copied), copied


def test_the_kernel_environment_is_installed_from_the_copied_repository_before_postbuild(dockerfile):
    copy_repo = _line(dockerfile, r"^COPY .*src/ \$\{REPO_DIR\}/$")
    pip = _line(dockerfile, r'^RUN \$\{KERNEL_PYTHON_PREFIX\}/bin/pip install .*-r "binder/requirements.txt"')
    post = _line(dockerfile, r"^RUN \./binder/postBuild$")
    # `-e .` needs the whole checkout, and postBuild calls the `workbench` command it installs.
    assert copy_repo < pip < post


def test_the_start_script_wraps_the_server(dockerfile):
    assert 'R2D_ENTRYPOINT="${REPO_DIR}/binder/start"' in dockerfile
    start = (BINDER / "start").read_text()
    assert start.rstrip().endswith('exec "$@"')  # otherwise the server never starts
    assert "WORKBENCH_STORE=" in start and "WORKBENCH_HOME=" in start


def test_requirements_install_this_package_with_voila():
    reqs = [ln.split("#")[0].strip() for ln in (BINDER / "requirements.txt").read_text().splitlines()]
    assert [r for r in reqs if r] == ["-e .[ui]"]
    ui = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ui"]
    # The Binder URL opens voila/render/...: the server extension comes with the voila package.
    assert any(re.match(r"voila\b", d) for d in ui)


def _postbuild_commands() -> list[str]:
    """postBuild's `workbench ...` command lines, continuation lines joined."""
    text = (BINDER / "postBuild").read_text().replace("\\\n", " ")
    return [" ".join(ln.split()) for ln in text.splitlines() if ln.strip().startswith("workbench ")]


def test_postbuild_creates_the_binder_profile_then_prepares_the_catalog_models():
    from workbench.envs import manager

    commands = _postbuild_commands()
    assert commands[:2] == ["workbench env create --profile binder --quiet", "workbench env dedupe"]
    assert manager.PROFILES["binder"] == ("torch", "openvino")
    prepare = [c for c in commands if c.startswith("workbench models --prepare")]
    assert len(prepare) == 1 and commands.index(prepare[0]) >= 2  # needs the environments
    names = prepare[0].split()[3:]
    assert set(names) <= set(catalog.CATALOG)
    embedded = {n for n, e in catalog.CATALOG.items() if e.source == "embedded"}
    assert embedded <= set(names)
    # The warm-up runs only methods of the profile's families (nothing else is installed there).
    warmup = [c for c in commands if c.startswith("workbench compare")]
    assert len(warmup) == 1 and "--protocol quick" in warmup[0]
    from workbench import registry

    methods = warmup[0].split("--methods ")[1].split(" --")[0].split()
    assert {registry.get(m.split(":")[0]).cls.env for m in methods} <= set(manager.PROFILES["binder"])
    # the same home at build and at run time, or the app would not find what postBuild built
    text = (BINDER / "postBuild").read_text()
    assert 'WORKBENCH_HOME="${WORKBENCH_HOME:-$PWD/.workbench}"' in text
    start = (BINDER / "start").read_text()
    assert 'WORKBENCH_HOME="${REPO_DIR:-$HOME}/.workbench"' in start and "WORKBENCH_PROFILE=binder" in start
    # The command the app gives for a missing family must install CPU torch in the running container too.
    assert "download.pytorch.org/whl/cpu" in start


def test_the_binder_profile_list_runs_as_postbuild_runs_it(tmp_path):
    """postBuild's environment line, run as written (the `workbench` of this environment) with
    --dry-run: the families it creates are the profile's, in one place."""
    line = _postbuild_commands()[0]
    argv = [str(Path(sys.executable).parent / "workbench"), *line.split()[1:], "--dry-run"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "WORKBENCH_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["torch", "openvino"]
    assert not (tmp_path / "envs").exists()  # a dry run installs nothing


def test_the_server_config_picks_the_template_that_start_puts_on_the_jupyter_path():
    # binder/start adds share/jupyter to JUPYTER_PATH and binder/ to JUPYTER_CONFIG_PATH (the
    # browser test test_the_binder_urlpath_serves_the_app... runs it and serves the page).
    config = json.loads((BINDER / "jupyter_server_config.json").read_text())
    template = config["VoilaConfiguration"]["template"]
    assert (ROOT / "share" / "jupyter" / "voila" / "templates" / template / "index.html.j2").is_file()


@pytest.mark.parametrize("script", ["postBuild", "start"])
def test_scripts_are_valid_bash(script):
    r = subprocess.run(["bash", "-n", str(BINDER / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_readme_binder_link_opens_an_existing_notebook_in_voila():
    readme = (ROOT / "README.md").read_text()
    urls = re.findall(r"https://mybinder\.org/v2/gh/[^)\s`'\"]+", readme)
    assert urls, "README has no mybinder.org link"
    for url in urls:
        m = re.search(r"urlpath=voila(?:/|%2F)render(?:/|%2F)([^&]+)", url)
        assert m, url
        assert (ROOT / m.group(1).replace("%2F", "/")).is_file(), url
