"""Shared fixtures: paths to the in-repo fixtures and to ``../shared/data`` (skipped where absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """Folder of small real test files committed in the repo (``tests/fixtures``; sources in its READMEs)."""
    return FIXTURES


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that use it skip with a message where it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"needs the shared real-data folder {SHARED} (present in CI, absent in a user's clone)")
    return SHARED


@pytest.fixture(scope="session")
def demo_cohort() -> Path:
    """The bundled demo cohort's folder."""
    return REPO / "biossl" / "demo_data"
