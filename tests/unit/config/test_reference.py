"""docs/configuration.md is the schema's reference: regenerated, it is unchanged."""

from __future__ import annotations

from pathlib import Path

from llmtune.config import choices
from llmtune.config.build import section_fields
from llmtune.config.reference import reference

PAGE = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def test_the_configuration_page_is_the_schemas():
    assert PAGE.read_text() == reference(), (
        "docs/configuration.md and the schema drifted; regenerate it with "
        "`python -m llmtune.config.reference > docs/configuration.md`"
    )


def test_every_key_of_every_choice_is_on_the_page():
    page = reference()
    for section, selector in choices.SELECTORS.items():
        for choice, cls in choices.classes(section).items():
            assert f"### {section}.{selector}={choice}" in page
            for key in section_fields(cls):
                assert f"`{section}.{key}`" in page, (section, choice, key)
