"""The web page's files without a browser: `/` carries the CSP, every file it references exists
and is served with the right type, nothing inline that the CSP would block, and the files are
packaged."""

from __future__ import annotations

import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import REPO_ROOT

WEB = REPO_ROOT / "src" / "agelens" / "server" / "web"
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
)
CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".svg": ("image/svg+xml",),
    ".html": ("text/html",),
}


class PageParser(HTMLParser):
    """Collects what matters for the CSP and accessibility from index.html."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []  # src/href of scripts, stylesheets, icons, images
        self.inline_scripts = 0
        self.style_elements = 0
        self.style_attributes: list[str] = []
        self.handler_attributes: list[str] = []
        self.images_without_alt: list[str] = []
        self.ids: set[str] = set()
        self.label_fors: set[str] = set()
        self.inputs: list[str] = []
        self.live_regions = 0
        self._in_script_without_src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if "id" in values:
            self.ids.add(values["id"])
        if "style" in values:
            self.style_attributes.append(tag)
        self.handler_attributes += [name for name in values if name.startswith("on")]
        if values.get("aria-live") or values.get("role") in {"status", "alert"}:
            self.live_regions += 1
        if tag == "script":
            if "src" in values:
                self.references.append(values["src"])
            else:
                self.inline_scripts += 1
        elif tag == "style":
            self.style_elements += 1
        elif tag == "link" and "href" in values:
            self.references.append(values["href"])
        elif tag == "img":
            self.references.append(values.get("src", ""))
            if "alt" not in values:
                self.images_without_alt.append(values.get("src", ""))
        elif tag == "label" and "for" in values:
            self.label_fors.add(values["for"])
        elif tag == "input" and values.get("type") != "hidden":
            self.inputs.append(values.get("id", ""))


@pytest.fixture(scope="module")
def page() -> PageParser:
    parser = PageParser()
    parser.feed((WEB / "index.html").read_text(encoding="utf-8"))
    return parser


def test_index_is_html_with_the_csp(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "<title>" in response.text
    assert response.text == (WEB / "index.html").read_text(encoding="utf-8")


def test_every_referenced_file_exists_and_is_served_with_its_type(
    client: TestClient, page: PageParser
) -> None:
    local = [ref for ref in page.references if ref.startswith("/static/")]
    assert any(ref.endswith(".js") for ref in local)
    assert any(ref.endswith(".css") for ref in local)
    assert set(local) == set(page.references), "every reference is a local /static/ file"
    # ES modules the scripts import must be there too
    for script in [ref for ref in local if ref.endswith(".js")]:
        source = (WEB / script.removeprefix("/static/")).read_text(encoding="utf-8")
        for imported in re.findall(r"""^\s*import\b[^"']*["']([^"']+)["']""", source, re.M):
            assert imported.startswith("./"), f"{script} imports {imported}: use ./relative"
            local.append("/static/" + imported.removeprefix("./"))
    for ref in local:
        path = WEB / ref.removeprefix("/static/")
        assert path.is_file(), f"{ref} is referenced but {path} does not exist"
        response = client.get(ref)
        assert response.status_code == 200, ref
        media_type = response.headers["content-type"].split(";")[0].strip()
        assert media_type in CONTENT_TYPES[path.suffix], (ref, media_type)
        assert response.content == path.read_bytes()


def test_nothing_inline_that_the_csp_blocks(page: PageParser) -> None:
    assert page.inline_scripts == 0
    assert page.style_elements == 0
    assert page.style_attributes == []
    assert page.handler_attributes == []
    html = (WEB / "index.html").read_text(encoding="utf-8")
    assert "javascript:" not in html
    for script in WEB.glob("*.js"):
        source = script.read_text(encoding="utf-8")
        assert not re.search(r"""\beval\(|new Function\(|setAttribute\(\s*["']style""", source)
        assert not re.search(r"""\.style\.|\.innerHTML\b|fetch\(\s*["'`]https?:""", source)
    for sheet in WEB.glob("*.css"):
        assert not re.search(r"@import|url\(\s*[\"']?(https?:)?//", sheet.read_text("utf-8"))


def test_page_is_accessible_by_construction(page: PageParser) -> None:
    assert page.images_without_alt == []
    assert page.live_regions >= 2  # the status line and the error box
    unlabelled = [i for i in page.inputs if i not in page.label_fors]
    assert unlabelled == [], "every input has a <label for=...>"
    for required in ("dropzone", "file-input", "canvas", "faces", "download", "examples"):
        assert required in page.ids


def test_missing_static_file_is_a_404(client: TestClient) -> None:
    assert client.get("/static/nope.js").status_code == 404


def test_web_files_are_packaged() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["agelens.server"]
    assert "web/*" in patterns
    files = [p for p in WEB.iterdir() if not p.name.startswith(".")]
    assert all(p.is_file() for p in files), "web/* does not package sub-folders"
    assert {p.suffix for p in files} <= set(CONTENT_TYPES)


def test_web_dir_is_found_through_the_package() -> None:
    from importlib import resources

    assert Path(str(resources.files("agelens.server") / "web" / "index.html")).is_file()
