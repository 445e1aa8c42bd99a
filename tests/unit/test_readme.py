"""The README's promises: the two commands, and a method table that matches the schemas."""
from pathlib import Path

from workbench import registry
from workbench.cli import methods_markdown

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_the_two_commands_are_documented():
    assert "make demo" in README and "make test" in README


def test_method_table_is_generated_from_the_schemas():
    assert methods_markdown(registry.describe_all()) in README, "run `workbench methods --markdown` into the README"
