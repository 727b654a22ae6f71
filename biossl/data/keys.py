"""The names every layer agrees on: modalities, manifest columns and batch keys.

A batch from :func:`biossl.data.bags.collate_bags` is a dict::

    {
      "patient_id": list[str],                     # B patients
      "metadata": dict[str, list],                 # manifest metadata per patient (site, scanner, ...)
      "wsi":        {"x": float[B, K, 3, H, W], "mask": bool[B, K], "present": bool[B]},
      "volume":     {"x": float[B, K, 1, D, H, W], "mask": bool[B, K], "present": bool[B]},
      "expression": {"x": float[B, K, G], "gene_mask": bool[B, K, G], "mask": bool[B, K],
                     "present": bool[B]},
      "sequence":   {"x": int64[B, K, L], "mask": bool[B, K], "present": bool[B]},
    }

``mask[b, k]`` is True where instance ``k`` of patient ``b`` is real (bags are padded to ``K``);
``present[b]`` is True where patient ``b`` has that modality at all. A modality that no patient in
the batch has is absent from the dict. Rows of absent patients are zeros and must be masked out.
"""

from __future__ import annotations

from typing import Final

WSI: Final = "wsi"
VOLUME: Final = "volume"
EXPRESSION: Final = "expression"
SEQUENCE: Final = "sequence"

#: Modalities in their canonical order.
MODALITIES: Final[tuple[str, ...]] = (WSI, VOLUME, EXPRESSION, SEQUENCE)

# Manifest columns.
PATIENT_ID: Final = "patient_id"
MODALITY: Final = "modality"
PATH: Final = "path"
REQUIRED_COLUMNS: Final[tuple[str, ...]] = (PATIENT_ID, MODALITY, PATH)

# Keys inside a modality's batch entry.
X: Final = "x"
MASK: Final = "mask"
PRESENT: Final = "present"
GENE_MASK: Final = "gene_mask"
METADATA: Final = "metadata"

# DNA token ids (shared by the sequence reader and the sequence encoder).
PAD_TOKEN: Final = 0
MASK_TOKEN: Final = 6
NUCLEOTIDES: Final = "ACGTN"  # A=1, C=2, G=3, T=4, N=5
VOCAB_SIZE: Final = 7
