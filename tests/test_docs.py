"""The argument tables of the docs are the configs' own fields, defaults and help."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lightning_influence.config import AnalysisConfig, PruningConfig

DOCS = Path(__file__).resolve().parents[1] / "docs"


def arguments_table(cls: type) -> str:
    """A Markdown table of ``cls``'s fields: name, default, role and help."""
    rows = ["| argument | default | role | meaning |", "| --- | --- | --- | --- |"]
    for field in dataclasses.fields(cls):
        default = getattr(cls(), field.name)
        help_text = field.metadata.get("help", "").replace("|", "\\|")
        role = field.metadata.get("role", "result")
        rows.append(f"| `{field.name}` | `{default!r}` | {role} | {help_text} |")
    return "\n".join(rows)


@pytest.mark.parametrize(
    ("cls", "page"), [(AnalysisConfig, "callback.md"), (PruningConfig, "callback.md")]
)
def test_the_argument_tables_are_the_configs(cls, page):
    text = (DOCS / page).read_text()
    table = arguments_table(cls)
    assert table in text, (
        f"docs/{page} lists other arguments than {cls.__name__}: paste "
        f"tests.test_docs.arguments_table({cls.__name__}) into it"
    )
