"""The names every layer agrees on: kinds, legacy modality names, manifest columns and batch keys.

A cohort has any number of **named modalities** (``t1``, ``t2``, ``he``, ``rna``, ``cnv``, ...), each of
one **kind** (:data:`KINDS`). A batch from :func:`biossl.data.bags.collate_bags` is a dict keyed by the
modality names::

    {
      "patient_id": list[str],                     # B patients
      "metadata": dict[str, list],                 # manifest metadata per patient (site, scanner, ...)
      "he":  {"x": float[B, K, 3, H, W], "mask": bool[B, K], "present": bool[B]},          # slide
      "t1":  {"x": float[B, K, 1, D, H, W], "mask": bool[B, K], "present": bool[B]},       # volume
      "rna": {"x": float[B, K, G], "gene_mask": bool[B, K, G], "mask": bool[B, K],
              "present": bool[B]},                                                         # table
      "dna": {"x": int64[B, K, L], "mask": bool[B, K], "present": bool[B]},                # sequence
    }

``mask[b, k]`` is True where instance ``k`` of patient ``b`` is real (bags are padded to ``K``);
``present[b]`` is True where patient ``b`` has that modality at all. A modality that no patient in
the batch has is absent from the dict. Rows of absent patients are zeros and must be masked out.
"""

from __future__ import annotations

from typing import Final

# Kinds: how a modality's files become a bag of instances (one file per kind in :mod:`biossl.kinds`).
SLIDE: Final = "slide"
VOLUME: Final = "volume"
TABLE: Final = "table"
SEQUENCE: Final = "sequence"
FEATURES: Final = "features"
#: The built-in kinds, in canonical order (plug-in kinds register more, see :mod:`biossl.kinds`).
KINDS: Final[tuple[str, ...]] = (SLIDE, VOLUME, TABLE, SEQUENCE, FEATURES)

# The four modality names biossl knew before kinds; each keeps its kind by default, so old manifests,
# configs and checkpoints work unchanged.
WSI: Final = "wsi"
EXPRESSION: Final = "expression"
#: Legacy modality names, in their canonical order.
MODALITIES: Final[tuple[str, ...]] = (WSI, VOLUME, EXPRESSION, SEQUENCE)
#: Default kind of a legacy modality name.
LEGACY_KINDS: Final[dict[str, str]] = {WSI: SLIDE, VOLUME: VOLUME, EXPRESSION: TABLE, SEQUENCE: SEQUENCE}

# Value types of a table modality (manifest column ``value_type``, or ``data.value_types``).
COUNTS: Final = "counts"
CONTINUOUS: Final = "continuous"
BINARY: Final = "binary"
CATEGORICAL: Final = "categorical"
VALUE_TYPES: Final[tuple[str, ...]] = (COUNTS, CONTINUOUS, BINARY, CATEGORICAL)

# Manifest columns.
PATIENT_ID: Final = "patient_id"
MODALITY: Final = "modality"
PATH: Final = "path"
REQUIRED_COLUMNS: Final[tuple[str, ...]] = (PATIENT_ID, MODALITY, PATH)
#: Optional manifest columns: a modality's kind, and a table modality's value type.
KIND: Final = "kind"
VALUE_TYPE: Final = "value_type"

# Keys inside a modality's batch entry.
X: Final = "x"
MASK: Final = "mask"
PRESENT: Final = "present"
GENE_MASK: Final = "gene_mask"  # table kinds: True where the feature was measured
METADATA: Final = "metadata"

# DNA token ids (shared by the sequence reader and the sequence encoder).
PAD_TOKEN: Final = 0
MASK_TOKEN: Final = 6
NUCLEOTIDES: Final = "ACGTN"  # A=1, C=2, G=3, T=4, N=5
VOCAB_SIZE: Final = 7


def canonical_order(names: object) -> tuple[str, ...]:
    """Modality names without repeats: the legacy names first, in :data:`MODALITIES` order, then the others.

    The others keep their given order; parameter names such as ``wsi-expression`` stay those of
    checkpoints written before kinds.
    """
    given = list(dict.fromkeys(str(n) for n in names))  # type: ignore[attr-defined]
    return tuple([m for m in MODALITIES if m in given] + [m for m in given if m not in MODALITIES])
