"""A missing patient ID in a typed (Parquet) column is missing, never a patient called ``<NA>`` or ``nan``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biossl.data.labels import id_text, read_labels
from biossl.errors import ManifestError


@pytest.mark.parametrize("missing", [pd.NA, np.float32("nan"), None, float("nan")])
def test_id_text_keeps_missing_values_missing(missing: object) -> None:
    assert pd.isna(id_text(missing))


def test_a_parquet_string_column_with_a_missing_id_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "labels.parquet"
    pd.DataFrame({"patient_id": pd.array(["A", None, "C"], dtype="string"), "event": [1, 0, 1]}).to_parquet(path)
    with pytest.raises(ManifestError, match=r"empty patient_id on row\(s\) 3"):
        read_labels(path)
