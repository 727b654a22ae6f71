"""biossl: self-supervised learning on multimodal biomedical cohorts."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
