"""Cross-modal contrastive loss (CLIP, Radford et al. 2021) between patient-level embeddings.

Each patient's embedding in modality A must pick out the same patient's embedding in modality B
among all patients of the *global* batch, and vice versa. Patients that lack either modality are
removed from the loss -- they are neither positives nor negatives -- but stay in the batch.

Under torch.distributed each rank scores its local rows against the embeddings gathered from every
rank (local-vs-global logits), with gradients through :func:`biossl.distributed.gather_with_grad`.
With DDP's gradient averaging the result -- loss value and parameter gradients -- equals a single
process on the concatenated global batch; see :mod:`biossl.distributed` for the convention.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from biossl.distributed import (
    all_sizes,
    gather_no_grad,
    gather_with_grad,
    global_mean_value,
    rank,
    world_size,
)
from biossl.errors import InputError
from biossl.keys import canonical_order
from biossl.objectives import OBJECTIVES, ObjectiveInfo

logger = logging.getLogger(__name__)


@OBJECTIVES.register("clip")
class CLIPLoss(nn.Module):
    """Symmetric InfoNCE between two L2-normalised embedding sets of the same patients.

    Args:
        init_temperature: Initial softmax temperature; the learnable ``logit_scale`` starts at
            ``log(1 / init_temperature)`` (CLIP: 0.07).
        max_logit_scale: ``exp(logit_scale)`` is clamped to at most this (CLIP: 100).
        learnable_temperature: Learn ``logit_scale`` (True) or keep it fixed.

    Attributes:
        last_n_valid: Number of patients (over all ranks) scored in the last call.
        n_skipped: Calls that returned 0 because fewer than 2 patients had both modalities.
    """

    info = ObjectiveInfo("cross", across=True, paper="Radford et al. 2021, CLIP", pairs_objective="multimodal_clip")

    def __init__(
        self,
        *,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        learnable_temperature: bool = True,
    ) -> None:
        super().__init__()
        if not (init_temperature > 0 and max_logit_scale > 0):
            raise InputError(
                f"CLIP temperature must be > 0 and max_logit_scale > 0; got {init_temperature}, "
                f"{max_logit_scale}. Use e.g. init_temperature=0.07, max_logit_scale=100."
            )
        self.max_log_scale = math.log(max_logit_scale)
        init = torch.tensor(math.log(1.0 / init_temperature))
        self.logit_scale = nn.Parameter(init, requires_grad=learnable_temperature)
        self.last_n_valid = 0
        self.n_skipped = 0

    @property
    def temperature(self) -> float:
        """Current effective temperature ``1 / exp(clamped logit_scale)``."""
        return float(torch.exp(-self.logit_scale.detach().clamp(max=self.max_log_scale)))

    def forward(self, a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Return the loss (a scalar; its value is the global loss on every rank).

        Args:
            a: ``[B, D]`` embeddings of modality A for this rank's ``B`` patients.
            b: ``[B, D]`` embeddings of modality B for the same patients, same order.
            valid: ``[B]`` bool, True where the patient has both modalities; all True if None.

        Raises:
            ValueError: Shapes disagree.
        """
        if a.ndim != 2 or a.shape != b.shape:
            raise ValueError(f"CLIP needs two [B, D] embeddings of equal shape; got {a.shape}, {b.shape}")
        if valid is None:
            valid = torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
        if valid.shape != a.shape[:1]:
            raise ValueError(f"valid mask must be [B]={a.shape[0]}; got {tuple(valid.shape)}")
        valid = valid.to(device=a.device, dtype=torch.bool)
        sizes = all_sizes(a)
        valid_all = gather_no_grad(valid, sizes=sizes)
        n_valid = int(valid_all.sum())
        self.last_n_valid = n_valid
        if n_valid < 2:  # the same decision on every rank: it depends on the gathered mask only
            self.n_skipped += 1
            log = logger.warning if self.n_skipped == 1 else logger.debug
            log("CLIP loss skipped: %d patient(s) with both modalities in the global batch (need 2)", n_valid)
            # Sums of empty slices: exactly 0 even if a row holds NaN, yet connected to the graph.
            return a[:0].sum() + b[:0].sum() + self.logit_scale * 0.0

        a = F.normalize(a, dim=-1)
        b = F.normalize(b, dim=-1)
        a_all = gather_with_grad(a, sizes=sizes)[valid_all]
        b_all = gather_with_grad(b, sizes=sizes)[valid_all]
        start = sum(sizes[: rank()])
        column = torch.cumsum(valid_all.long(), dim=0) - 1  # global row -> column among valid ones
        labels = column[start : start + a.shape[0]][valid]
        scale = self.logit_scale.clamp(max=self.max_log_scale).exp()
        logits_ab = scale * a[valid] @ b_all.T
        logits_ba = scale * b[valid] @ a_all.T
        summed = F.cross_entropy(logits_ab, labels, reduction="sum") + F.cross_entropy(
            logits_ba, labels, reduction="sum"
        )
        return global_mean_value(summed * (world_size() / (2.0 * n_valid)))


@OBJECTIVES.register("multimodal_clip")
class MultiModalCLIP(nn.Module):
    """CLIP loss over every pair of modalities, each pair with its own temperature.

    Args:
        modalities: At least two modality names.
        init_temperature: See :class:`CLIPLoss`.
        max_logit_scale: See :class:`CLIPLoss`.
        learnable_temperature: See :class:`CLIPLoss`.

    Raises:
        InputError: Unknown or fewer than two distinct modalities.
    """

    info = ObjectiveInfo("cross", across=True, paper="Radford et al. 2021, CLIP over every modality pair")

    def __init__(
        self,
        modalities: Sequence[str],
        *,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        learnable_temperature: bool = True,
    ) -> None:
        super().__init__()
        self.modalities = canonical_order(modalities)
        if len(self.modalities) < 2:
            raise InputError(f"the CLIP objective needs two or more modalities; got {list(modalities)}")
        #: Names of the pairs scored in the last call (>= 2 patients with both modalities).
        self.last_scored: list[str] = []
        self.pairs = list(itertools.combinations(self.modalities, 2))
        self.losses = nn.ModuleDict(
            {
                f"{m1}-{m2}": CLIPLoss(
                    init_temperature=init_temperature,
                    max_logit_scale=max_logit_scale,
                    learnable_temperature=learnable_temperature,
                )
                for m1, m2 in self.pairs
            }
        )

    def forward(
        self, embeddings: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the mean loss over scored pairs and each pair's loss under ``"clip/<a>-<b>"``.

        A configured modality missing from ``embeddings`` (no patient of this rank's batch has it)
        counts as absent for every patient, so all ranks still run the same collectives. A pair
        with fewer than two patients having both modalities (globally) contributes 0 and is left
        out of the mean.

        Args:
            embeddings: ``{modality: [B, D]}`` patient-level embeddings (same ``D`` for all).
            present: ``{modality: [B]}`` bool, True where the patient has the modality.

        Raises:
            ValueError: No embeddings, or shapes disagree.
        """
        given = [m for m in self.modalities if m in embeddings]
        if not given:
            raise ValueError(f"MultiModalCLIP got none of its modalities {self.modalities}")
        ref = embeddings[given[0]]
        emb: dict[str, torch.Tensor] = {}
        pres: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            if m in embeddings:
                emb[m] = embeddings[m]
                pres[m] = present[m].to(device=ref.device, dtype=torch.bool)
            else:
                # Must require grad like on the ranks that have this modality, or only those ranks
                # would run the gather's backward all-reduce (a hang).
                emb[m] = torch.zeros_like(ref).requires_grad_(ref.requires_grad)
                pres[m] = torch.zeros(ref.shape[0], dtype=torch.bool, device=ref.device)
        per_pair: dict[str, torch.Tensor] = {}
        scored: list[torch.Tensor] = []
        self.last_scored = []
        skipped = ref[:0].sum()  # zeros that keep skipped pairs' temperatures in the graph (DDP)
        for m1, m2 in self.pairs:
            clip = cast(CLIPLoss, self.losses[f"{m1}-{m2}"])
            value = clip(emb[m1], emb[m2], pres[m1] & pres[m2])
            per_pair[f"clip/{m1}-{m2}"] = value
            if clip.last_n_valid >= 2:
                scored.append(value)
                self.last_scored.append(f"clip/{m1}-{m2}")
            else:
                skipped = skipped + value
        total = torch.stack(scored).mean() + skipped if scored else skipped
        return total, per_pair
