"""Sphinx extension: the command-line reference, generated from the parsers at build time.

The directive ``biossl-cli`` runs ``biossl --help`` and ``biossl VERB --help`` for every verb of
:data:`biossl.cli.VERBS` (in a subprocess each, as a user would, in parallel) and inserts one section per
verb with the help text as a literal block. A new verb, option or default shows up in the next build; a
verb whose ``--help`` fails breaks the build. Nothing is written into the source tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective

#: Width of the help text (argparse and jsonargparse read $COLUMNS), so that the page does not depend on the
#: terminal the build ran in.
COLUMNS = "88"
TIMEOUT_S = 300


def help_text(verb: str | None) -> str:
    """``biossl [VERB] --help`` of the installed package, run with this Python.

    Raises:
        ExtensionError: the command failed or printed nothing.
    """
    argv = [sys.executable, "-m", "biossl.cli", *([verb] if verb else []), "--help"]
    env = {**os.environ, "COLUMNS": COLUMNS, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "BIOSSL_PROGRESS": "0"}
    env.pop("BIOSSL_PLUGINS", None)  # the reference shows biossl's own options, not a local plug-in's
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=TIMEOUT_S, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ExtensionError(f"`biossl {verb or ''} --help` exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout.rstrip() + "\n"


def all_help() -> dict[str | None, str]:
    """Help text of ``biossl`` (key None) and of each verb, in :data:`biossl.cli.VERBS` order."""
    from biossl.cli import VERBS

    verbs: list[str | None] = [None, *VERBS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        texts = list(pool.map(help_text, verbs))
    return dict(zip(verbs, texts))


class BiosslCliDirective(SphinxDirective):
    """``biossl-cli``: one section per verb, each with that verb's ``--help``."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        """The sections, generated from the parsers."""
        out: list[nodes.Node] = []
        for verb, text in all_help().items():
            name = f"biossl {verb}" if verb else "biossl"
            slug = nodes.make_id(name)  # "biossl-pretrain": links to cli.md#biossl-pretrain resolve (and are checked)
            section = nodes.section()
            section["names"].append(slug)
            self.state.document.note_explicit_target(section, section)
            section += nodes.title(name, name)
            block = nodes.literal_block(text, text)
            block["language"] = "text"
            section += block
            out.append(section)
        return out


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directive."""
    app.add_directive("biossl-cli", BiosslCliDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
