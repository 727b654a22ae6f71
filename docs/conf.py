"""Sphinx configuration of the biossl documentation.

Build: ``make docs`` (``sphinx-build -W --keep-going -b html docs docs/_build/html``); ``make test`` builds it and
``tests/docs/test_docs_site.py`` checks every link of the result. Pages are Markdown (MyST), readable on GitHub
as they are; the API reference comes from the docstrings (Google style, napoleon); the command-line reference
from the parsers (``docs/_ext/biossl_cli.py``).
"""

from __future__ import annotations

import importlib.util
import posixpath
import re
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

from biossl import __version__  # noqa: E402  (after the path set-up, as Sphinx configs do)

project = "biossl"
author = "The biossl developers"
copyright = "the biossl developers, Apache-2.0"  # noqa: A001  (Sphinx's name)
release = version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "biossl_cli",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]

# MyST: anchors for headings down to ### so that [text](page.md#a-heading) links resolve (and are checked).
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

# Autodoc: signatures with their type hints in the description, members in source order.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Every warning fails the build (-W in make docs and in the test), so the build is the link check.
nitpicky = False

html_theme = "furo" if importlib.util.find_spec("furo") else "alabaster"
html_title = f"biossl {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
html_copy_source = False


# Markdown links and images in files pulled in with {include} (benchmarks/RESULTS.md, workflows/README.md) are
# written relative to that file; rewrite them relative to the page that includes it, so they resolve (and are
# checked) in the site as they do on GitHub.
_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def _relative_target(target: str, prefix: str) -> str:
    """``target`` seen from the including page; URLs, absolute paths and same-page anchors stay as they are."""
    if not prefix or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("/", "#")):
        return target
    path, sep, anchor = target.partition("#")
    return posixpath.normpath(posixpath.join(prefix, path)) + sep + anchor


def _rewrite_included_links(app: Any, relative_path: Path, parent_docname: str, content: list[str]) -> None:
    """``include-read`` handler: make the included file's relative links relative to the including page."""
    parent_dir = posixpath.dirname(parent_docname)
    prefix = posixpath.relpath(posixpath.dirname(relative_path.as_posix()) or ".", parent_dir or ".")
    if prefix == ".":
        return
    content[0] = _LINK.sub(lambda m: m.group(1) + _relative_target(m.group(2), prefix) + m.group(3), content[0])


def setup(app: Any) -> None:
    """Connect the include rewriting."""
    app.connect("include-read", _rewrite_included_links)
