"""``biossl list``: the names a pretraining config can use."""

from __future__ import annotations

import pytest

from biossl.cli import main
from biossl.objectives import OBJECTIVES


def test_list_objectives_prints_every_registered_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "objectives"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines[1:]]
    assert names == sorted(OBJECTIVES.names())
    byol = next(line for line in lines if line.startswith("byol "))
    assert "Grill" in byol and "within" in byol
    assert "across" in next(line for line in lines if line.startswith("clip "))


def test_list_markdown_and_encoders(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "objectives", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| name | kind |") and "| `" not in out
    assert main(["list", "encoders"]) == 0
    assert "image/vit_small" in capsys.readouterr().out
