"""The README's promises and the docs around it: the two commands, a README short enough to read,
a method table in docs/methods.md that matches the schemas, links that lead somewhere, and no
reference to design documents that are not in the repository."""
import re
import subprocess
from pathlib import Path

import pytest

from workbench import registry
from workbench.cli import methods_markdown

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_CHARS = 12_000

# [text](target) and ![alt](target), with an optional "title"; the target has no spaces.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# The design documents that once lived outside the repository; their facts are now in docs/.
GONE = ("ARCHITECTURE" + ".md", "BACKENDS" + ".md")


def test_the_two_commands_are_documented():
    assert "make demo" in README and "make test" in README


def test_method_table_is_generated_from_the_schemas():
    text = (ROOT / "docs" / "methods.md").read_text()
    assert methods_markdown(registry.describe_all()) in text, "run `workbench methods --markdown` into docs/methods.md"


def test_readme_is_short():
    assert len(README) <= README_MAX_CHARS, f"README.md has {len(README)} characters; at most {README_MAX_CHARS}: " \
                                            "move details into docs/"


def test_readme_lines_fit_200_columns():
    long = [i for i, line in enumerate(README.splitlines(), 1) if len(line) > 200]
    assert not long, f"README.md lines over 200 characters: {long}"


def relative_links(text: str) -> list[str]:
    """Link and image targets outside code, without http(s)/mailto URLs and #anchors."""
    text = INLINE_CODE.sub("", FENCE.sub("", text))
    out = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.I) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


def test_the_link_finder_reads_links_images_and_skips_urls_anchors_and_code():
    text = ("[a](docs/a.md) ![pic](docs/app.png) [b](https://x.org/y) [c](#top) [d](b.md#part)\n"
            "[![Binder](https://mybinder.org/badge.svg)](https://mybinder.org/v2/gh/x)\n"
            "`[e](not/a/link.md)`\n```\n[f](in/code.md)\n```\n")
    assert relative_links(text) == ["docs/a.md", "docs/app.png", "b.md"]


@pytest.mark.parametrize("doc", [ROOT / "README.md", *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_in_the_repository(doc):
    targets = relative_links(doc.read_text())
    missing = [t for t in targets if not (doc.parent / t).exists()]
    assert not missing, f"{doc.relative_to(ROOT)} links to paths that do not exist: {missing}"
    outside = [t for t in targets if ROOT.resolve() not in (doc.parent / t).resolve().parents]
    assert not outside, f"{doc.relative_to(ROOT)} links outside the repository: {outside}"


def test_the_docs_the_readme_promises_exist_and_are_linked():
    for name in ("tour", "methods", "protocol", "backends", "benchmarks", "sweeps", "dask", "binder", "notebooks",
                 "architecture"):
        assert (ROOT / "docs" / f"{name}.md").is_file(), name
        assert f"(docs/{name}.md)" in README, f"README.md does not link docs/{name}.md"
    assert "(SECURITY.md)" in README


def repository_files() -> list[Path]:
    """Files git tracks, plus new ones it does not ignore (docs written before their commit)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in sorted(set(out.decode().split("\0"))) if name and (ROOT / name).is_file()]


def readable_text(path: Path) -> str | None:
    """The text a person reads in `path`: None for binary files; a notebook's cell sources only."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if path.suffix == ".ipynb":
        import json

        try:
            cells = json.loads(text).get("cells", [])
        except ValueError:
            return text
        return "\n".join("".join(c.get("source", "")) for c in cells)
    return text


def test_no_file_cites_design_documents_outside_the_repository():
    """ARCHITECTURE / BACKENDS lived outside the repository: a reader cannot follow such a citation.
    Their facts are in docs/architecture.md and docs/backends.md; cite those."""
    found = []
    for path in repository_files():
        text = readable_text(path)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if any(name in line for name in GONE):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
    assert not found, "cite docs/architecture.md or docs/backends.md instead:\n" + "\n".join(found)
