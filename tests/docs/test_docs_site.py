"""The documentation site builds without a warning, and no link in it or in README.md is broken.

The site is built once per session into a temporary folder with ``sphinx-build -W`` (every warning is an
error: a broken cross-reference or page link, a page missing from the toctree, an autodoc import that fails,
a verb whose ``--help`` fails). Then every relative ``href``/``src`` of the built HTML must name a file of the
build and, with ``#anchor``, an element with that id in it. External links are only checked for syntax (no
network). README.md must open with the two ``make`` commands, stay within 12 KiB, and its relative links must
name files of the repository.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README = REPO / "README.md"
README_MAX_BYTES = 12_288

#: The verbs of the public API that the API page must document (autodoc ids).
API_NAMES = ("biossl.api.embed", "biossl.api.evaluate", "biossl.api.audit", "biossl.api.retrieval",
             "biossl.api.patients_with")


class _Links(HTMLParser):
    """Collects the ids of a page and the ``href``/``src`` values of its elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in ("id", "name") and tag != "meta":
                self.ids.add(value)
            elif name in ("href", "src", "xlink:href"):
                self.links.append(value)


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML site, built from docs/ into a temporary folder; the build's output names any warning."""
    out = tmp_path_factory.mktemp("docs") / "html"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    if proc.returncode != 0 and "No module named sphinx" in proc.stderr:
        pytest.fail("sphinx is not installed: pip install -e '.[docs]' (make test installs it)")
    assert proc.returncode == 0, f"sphinx-build -W failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


def test_every_source_page_is_built(site: Path) -> None:
    pages = sorted(p.stem for p in DOCS.glob("*.md"))
    assert pages, "no Markdown page in docs/"
    missing = [p for p in pages if not (site / f"{p}.html").is_file()]
    assert not missing, f"pages in docs/ not built: {missing}"


def test_relative_links_and_anchors_resolve(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    ids: dict[Path, set[str]] = {}
    broken: list[str] = []
    n_checked = 0
    for page in pages:
        parsed = _parse(page)
        ids.setdefault(page.resolve(), parsed.ids)
        for link in parsed.links:
            parts = urlsplit(link)
            if parts.scheme in ("http", "https"):
                if not parts.netloc or " " in link:
                    broken.append(f"{page.relative_to(site)}: malformed URL {link!r}")
                continue
            if parts.scheme in ("mailto", "data", "javascript"):
                continue
            if parts.scheme or parts.netloc:
                broken.append(f"{page.relative_to(site)}: unexpected link {link!r}")
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page.resolve()
            n_checked += 1
            if not target.is_file():
                broken.append(f"{page.relative_to(site)}: {link!r} -> no file {target}")
                continue
            anchor = unquote(parts.fragment)
            if anchor and target.suffix == ".html":
                if target not in ids:
                    ids[target] = _parse(target).ids
                if anchor not in ids[target]:
                    broken.append(f"{page.relative_to(site)}: {link!r} -> no id {anchor!r} in {target.name}")
    assert n_checked > 100, f"only {n_checked} relative links found: is the site empty?"
    assert not broken, "broken links:\n" + "\n".join(broken[:50])


def test_cli_reference_shows_every_verb(site: Path) -> None:
    from biossl.cli import VERBS

    html = (site / "cli.html").read_text(encoding="utf-8")
    ids = _parse(site / "cli.html").ids
    for verb in VERBS:
        assert f"biossl-{verb}" in ids, f"no section for `biossl {verb}` in the CLI reference"
        assert f"usage: biossl {verb}" in html, f"`biossl {verb} --help` is not in the CLI reference"


def test_api_reference_documents_the_public_api(site: Path) -> None:
    ids = _parse(site / "api.html").ids
    missing = [name for name in API_NAMES if name not in ids]
    assert not missing, f"not documented on the API page: {missing}"


# README.md ---------------------------------------------------------------------------------------------------

def _readme() -> str:
    return README.read_text(encoding="utf-8")


def test_readme_fits_its_size() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; keep it within {README_MAX_BYTES} (detail: docs/)"


def test_readme_opens_with_the_two_make_commands() -> None:
    text = _readme()
    first_block = re.search(r"```[a-z]*\n(.*?)```", text, re.S)
    assert first_block is not None, "README.md has no code block"
    before = text[: first_block.start()]
    assert before.count("\n## ") == 0, "the make commands must come before the first section"
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"], f"README.md's first commands are {commands}"


_MD_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _slugs(markdown: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", markdown.read_text(encoding="utf-8"), flags=re.S)
    return {_github_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def test_readme_relative_links_resolve() -> None:
    text = re.sub(r"```.*?```", "", _readme(), flags=re.S)
    links = [a or b for a, b in _MD_LINK.findall(text)]
    assert links, "README.md links to nothing"
    broken = []
    for link in links:
        parts = urlsplit(link)
        if parts.scheme in ("http", "https"):
            if not parts.netloc:
                broken.append(f"malformed URL {link!r}")
            continue
        if parts.scheme:
            continue
        target = (REPO / unquote(parts.path)).resolve() if parts.path else README
        if not target.exists() or REPO not in (target, *target.parents):
            broken.append(f"{link!r}: no such file in the repository")
        elif parts.fragment and target.suffix == ".md" and parts.fragment not in _slugs(target):
            broken.append(f"{link!r}: no heading with that anchor in {target.name}")
    assert not broken, "README.md:\n" + "\n".join(broken)
