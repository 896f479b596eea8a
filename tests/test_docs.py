"""The README is a front page and the docs stay free of how the work was organised.

The docs site itself is built with `mkdocs build --strict` by `make test` (a broken link fails
it); these checks are what a build cannot see.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
PRESETS_TABLE = re.compile(r"<!-- presets-table.*?-->\n(.*?)<!-- /presets-table -->", re.S)
# "session 6", "work period 3", "sprint 2": history belongs in CHANGELOG.md, by version and date.
WORK_PERIOD = re.compile(r"\b(session|work period|sprint|iteration)s? \d", re.I)


def test_readme_is_a_front_page_of_at_most_200_lines() -> None:
    assert len(README.read_text().splitlines()) <= 200


def test_readme_shows_the_two_commands_and_the_makefile_has_them() -> None:
    readme = README.read_text()
    makefile = (REPO_ROOT / "Makefile").read_text()
    for target in ("serve", "test"):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, re.M), target


def test_readme_and_docs_presets_tables_agree() -> None:
    readme = PRESETS_TABLE.search(README.read_text())
    docs = PRESETS_TABLE.search((DOCS / "presets.md").read_text())
    assert readme is not None
    assert docs is not None
    assert readme.group(1).strip() == docs.group(1).strip()


@pytest.mark.parametrize(
    "path",
    [
        README,
        REPO_ROOT / "CHANGELOG.md",
        REPO_ROOT / "benchmarks" / "README.md",
        *sorted(DOCS.glob("*.md")),
    ],
    ids=lambda path: path.name,
)
def test_no_page_speaks_of_numbered_work_periods(path: Path) -> None:
    assert not WORK_PERIOD.findall(path.read_text())


def test_every_page_in_docs_is_in_the_nav() -> None:
    config = (REPO_ROOT / "mkdocs.yml").read_text()
    pages = {path.name for path in DOCS.glob("*.md")}
    assert pages
    missing = {page for page in pages if f" {page}" not in config}
    assert not missing
