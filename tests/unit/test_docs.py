"""The README is a front page and docs/ holds the guides: every link inside the repository
resolves, no link leaves it (the lead's opening lines aside), and the front page stays short."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# the README's first 20 lines belong to the lead (setup commands; Hydra's home page)
LEAD_LINES = 20


def _links(page: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        found += [(number, target) for target in LINK.findall(line)]
    return found


def test_links_stay_in_the_repository_and_resolve():
    for page in PAGES:
        for number, target in _links(page):
            if page.name == "README.md" and number <= LEAD_LINES:
                continue
            assert "://" not in target, f"{page.name}:{number} links outside: {target}"
            path = target.split("#", 1)[0]
            if path:
                assert (page.parent / path).exists(), f"{page.name}:{number}: {target} is missing"


def test_the_readme_is_a_front_page_that_links_every_guide():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for guide in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{guide.name}" in readme, f"README does not link docs/{guide.name}"
