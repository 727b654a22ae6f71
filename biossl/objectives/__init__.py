"""Self-supervised objectives: one method per file, each a plain ``nn.Module``.

Modules register their classes in :data:`OBJECTIVES` under plain names (``"clip"``, ``"mae"``, ...).
"""

from __future__ import annotations

from torch import nn

from biossl.registry import Registry

OBJECTIVES: Registry[nn.Module] = Registry("objective", package="biossl.objectives")

__all__ = ["OBJECTIVES"]
