"""Data flows one way: a lower layer never imports a higher one (STYLE.md, "What we take from them" 1).

The layers, lowest first::

    data -> transforms -> kinds -> encoders -> objectives -> modules -> downstream -> audit -> commands (+ cli.py)

``downstream`` and ``audit`` are one level of use; the audit reuses downstream code (its probes'
standardisation, the embedding of a cohort), so ``audit -> downstream`` is allowed and
``downstream -> audit`` is not. The modules at the package root (``biossl/*.py`` but ``cli.py``: keys,
errors, registry, io, threads, device, tokens, ...) may be imported by every layer and must import no
layer themselves. ``api.py`` (the public Python API, what the verbs call) sits at the top with ``cli.py``.

Every ``biossl/**/*.py`` is parsed (never imported): ``import x`` and ``from x import y`` anywhere in a
file (module level, inside functions, under ``TYPE_CHECKING``), relative imports, and string imports --
``importlib.import_module("biossl....")`` / ``__import__`` (an f-string counts by its literal prefix)
and a ``Registry(..., package="biossl....")`` that imports its plug-in package on first lookup.

:data:`ALLOWLIST` lists today's known upward imports with their reason; it may only shrink:
:func:`test_allowlist_entries_are_still_needed` fails once an entry is no longer used, so that
fixing a seam also removes its excuse.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "biossl"
#: The layers, lowest first.
LAYERS = ("data", "transforms", "kinds", "encoders", "objectives", "modules", "downstream", "audit", "commands")
ROOT = "root"
#: Folders of the package that hold no code (data shipped with it).
NOT_CODE = ("demo_data",)

#: Known upward imports today, importer module -> imported module: the reason each is still there.
ALLOWLIST: dict[tuple[str, str], str] = {
    ("biossl.encoders.image", "biossl.objectives.mae"):
        "encoders still own their masked pretext objective (MAE decoder, inpainting head): seam not yet fixed",
    ("biossl.encoders.sequence", "biossl.objectives.masked_tokens"):
        "encoders still own their masked pretext objective (masked nucleotide modelling): seam not yet fixed",
    ("biossl.encoders.expression", "biossl.objectives.masked_tokens"):
        "encoders still own their masked pretext objective (masked gene modelling): seam not yet fixed",
    ("biossl.registry", "biossl.kinds"):
        "the KINDS registry sits at the root so data/ can look kinds up; it imports biossl.kinds on first lookup",
}


@dataclass(frozen=True)
class Import:
    """One import of a biossl module by another: where, and how it was written."""

    importer: str
    imported: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} ({layer_of(self.importer)}) imports {self.imported} " \
               f"({layer_of(self.imported)})"


def module_name(package: Path, path: Path) -> str:
    """Dotted name of ``path`` inside ``package`` (``biossl/data/__init__.py`` -> ``biossl.data``)."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The layer of a biossl module; :data:`ROOT` for the package root's modules (``cli`` is a command)."""
    parts = module.split(".")
    if len(parts) == 1:
        return ROOT
    if parts[1] in ("cli", "api"):  # the public Python API (biossl/api.py) sits with the verbs it serves
        return "commands"
    return parts[1] if parts[1] in LAYERS else ROOT


def _string_target(node: ast.expr) -> str | None:
    """The module a string (or the literal prefix of an f-string) names, if it is a biossl one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
    elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        text = str(node.values[0].value).rsplit(".", 1)[0]  # f"biossl.commands.{verb}" -> biossl.commands
    else:
        return None
    return text if text == "biossl" or text.startswith("biossl.") else None


def _call_targets(node: ast.Call) -> list[str]:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    found = []
    if name in ("import_module", "__import__") and node.args:
        found.append(_string_target(node.args[0]))
    found += [_string_target(k.value) for k in node.keywords if k.arg == "package"]
    return [t for t in found if t]


def _from_targets(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    if base == "biossl":  # `from biossl import data` imports the layer package itself
        return [f"biossl.{a.name}" if a.name in LAYERS else "biossl" for a in node.names]
    return [base]


def imports_in(package: Path, path: Path) -> list[Import]:
    """Every import of a biossl module written in ``path`` (any depth, any form listed in the module doc)."""
    module = module_name(package, path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            targets = _from_targets(node, module, path.name == "__init__.py")
        elif isinstance(node, ast.Call):
            targets = _call_targets(node)
        else:
            continue
        rel = str(path.relative_to(package.parent))
        out += [Import(module, t, rel, node.lineno) for t in targets if t == "biossl" or t.startswith("biossl.")]
    return out


def is_upward(imp: Import) -> bool:
    """True if the import goes up the layer order (or is a root module importing any layer)."""
    low, high = layer_of(imp.importer), layer_of(imp.imported)
    if high == ROOT or low == high:
        return False
    if low == ROOT:
        return True
    return LAYERS.index(high) > LAYERS.index(low)


def upward_imports(package: Path) -> list[Import]:
    """All upward imports in the package, in file order."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if not any(part in NOT_CODE for part in path.relative_to(package).parts):
            found += [imp for imp in imports_in(package, path) if is_upward(imp)]
    return found


# -- the real package ---------------------------------------------------------------------------------
def test_no_layer_imports_a_higher_one() -> None:
    new = [str(imp) for imp in upward_imports(PACKAGE) if (imp.importer, imp.imported) not in ALLOWLIST]
    assert not new, ("upward imports (a lower layer, or a root module, importing a higher layer); move the code "
                     "down, pass it in from above, or -- for a known seam -- add it to ALLOWLIST with its reason:\n"
                     + "\n".join(new))


def test_allowlist_entries_are_still_needed() -> None:
    used = {(imp.importer, imp.imported) for imp in upward_imports(PACKAGE)}
    stale = [f"{a} -> {b}" for a, b in ALLOWLIST if (a, b) not in used]
    assert not stale, "these ALLOWLIST entries are no longer needed; delete them:\n" + "\n".join(stale)


def test_every_package_has_a_layer() -> None:
    packages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    unplaced = [p for p in packages if p not in LAYERS and p not in NOT_CODE]
    assert not unplaced, f"biossl/{unplaced} are in no layer: add them to LAYERS at their place in the order"


# -- the checker, on a synthetic package ----------------------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "biossl" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "biossl"


@pytest.fixture()
def synthetic(tmp_path: Path) -> Path:
    return _write(tmp_path, {
        "__init__.py": "",
        "keys.py": "X = 1\n",
        "errors.py": "import biossl.data.labels\n",  # root -> layer: up
        "registry.py": "KINDS = Registry('kind', package='biossl.kinds')\n",  # root -> layer (string): up
        "cli.py": "import importlib\nimportlib.import_module(f'biossl.commands.{verb}')\n",
        "data/__init__.py": "",
        "data/labels.py": "from biossl.keys import X\nfrom biossl.errors import InputError\n",  # root: fine
        "data/cohort.py": "def f():\n    from biossl.modules.pretrain import PretrainModule\n",  # up, in a function
        "data/tiles.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..encoders import base\n",
        "transforms/__init__.py": "from . import views\nfrom biossl.data import labels\n",  # same layer, down: fine
        "encoders/__init__.py": "from biossl import objectives, data\n",  # up (package by name), down
        "encoders/base.py": "import importlib\nm = importlib.import_module('biossl.audit.run')\n",  # up, string
        "downstream/__init__.py": "",
        "downstream/embed.py": "from biossl.audit import run\n",  # downstream -> audit: up
        "audit/__init__.py": "",
        "audit/run.py": "from biossl.downstream.embed import embed\nimport biossl.commands.tile\n",  # fine, up
        "commands/__init__.py": "",
        "commands/tile.py": "from biossl.audit.run import main\nfrom biossl.cli import VERBS\n",  # fine
        "demo_data/notes.py": "import biossl.commands\n",  # not code
    })


def test_the_checker_finds_each_kind_of_upward_import(synthetic: Path) -> None:
    found = {(imp.importer, imp.imported, imp.line) for imp in upward_imports(synthetic)}
    assert found == {
        ("biossl.errors", "biossl.data.labels", 1),
        ("biossl.registry", "biossl.kinds", 1),
        ("biossl.data.cohort", "biossl.modules.pretrain", 2),
        ("biossl.data.tiles", "biossl.encoders", 3),
        ("biossl.encoders", "biossl.objectives", 1),
        ("biossl.encoders.base", "biossl.audit.run", 2),
        ("biossl.downstream.embed", "biossl.audit", 1),
        ("biossl.audit.run", "biossl.commands.tile", 2),
    }


def test_a_new_upward_import_fails_the_layer_test(synthetic: Path) -> None:
    before = {(i.importer, i.imported) for i in upward_imports(synthetic)}
    (synthetic / "transforms" / "views.py").write_text("def g():\n    import biossl.downstream.embed as e\n")
    after = {(i.importer, i.imported) for i in upward_imports(synthetic)}
    assert after - before == {("biossl.transforms.views", "biossl.downstream.embed")}
