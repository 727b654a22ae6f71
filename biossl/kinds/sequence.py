"""DNA sequences (FASTA, or a CSV/TSV with ``sequence`` and optionally ``patient_id``): a bag is ``k`` windows.

Files are read and tokenised once, when the modality is opened (``A C G T N`` = 1..5, pad 0, mask 6;
:mod:`biossl.keys`); a table with a ``patient_id`` column gives each patient its own rows. The
default encoder is a nucleotide transformer with masked-token modelling.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biossl import keys
from biossl.kinds.base import Kind, Pick, SourceContext
from biossl.registry import KINDS


@KINDS.register("sequence")
class Sequence(Kind):
    """A DNA sequence modality (``dna``, ``promoters``, the legacy ``sequence``)."""

    name = "sequence"
    default_encoder = "sequence/transformer"
    default_objective = "masked_tokens"
    instances = "windows"
    artifacts = ("substitution", "n_runs")
    view_module = "sequence"
    multi_patient = True
    extensions = (".fa", ".fasta", ".fna", ".csv", ".tsv")

    def probe(self, path: Path, *, thorough: bool = False, options: Mapping[str, Any] | None = None) -> None:
        from biossl.data.sequence import probe

        probe(path)

    def patients_in(self, path: Path, options: Mapping[str, Any] | None = None) -> Collection[str] | None:
        from biossl.data.sequence import table_patients

        return table_patients(path)

    def open(self, modality: str, cohort: Any, patients: list[str], ctx: SourceContext) -> WindowSource:
        from biossl.data.sequence import encode, patient_sequences, windows

        length = int(ctx.spec.window_length)
        seqs: dict[str, np.ndarray] = {}
        for p in patients:
            wins = [
                windows(encode(rec.sequence), length, length)
                for path in cohort.files(p, modality)
                for rec in patient_sequences(path, p)  # a table with patient_id: only p's rows
            ]
            if wins:
                seqs[p] = np.concatenate(wins).astype(np.int64)
        return WindowSource(int(ctx.spec.windows), length, seqs)

    def encoder_options(self, state: Mapping[str, Any], spec: Any) -> dict[str, Any]:
        return {"max_len": int(state.get("window_length") or spec.window_length)}


class WindowSource:
    """Tokenised windows per patient."""

    def __init__(self, k: int, length: int, seqs: dict[str, np.ndarray]) -> None:
        self.k, self.length, self.seqs = k, length, seqs

    def state(self) -> dict[str, Any]:
        return {"window_length": self.length,
                "tokeniser": {"alphabet": keys.NUCLEOTIDES, "pad": keys.PAD_TOKEN, "mask": keys.MASK_TOKEN,
                              "vocab_size": keys.VOCAB_SIZE}}

    def count(self, patient: str) -> int:
        """The patient's windows (every window tiling its sequences)."""
        w = self.seqs.get(patient)
        return 0 if w is None else len(w)

    def draw(self, patient: str, pick: Pick) -> dict[str, torch.Tensor] | None:
        w = self.seqs.get(patient)
        if w is None:
            return None
        return self.read(patient, pick(len(w), self.k))

    def read(self, patient: str, indices: np.ndarray) -> dict[str, torch.Tensor] | None:
        """Windows ``indices`` of the patient: ``{"x": int64 [n, window_length]}``."""
        w = self.seqs.get(patient)
        if w is None:
            return None
        return {"x": torch.from_numpy(np.ascontiguousarray(w[np.asarray(indices, dtype=np.int64)]))}
