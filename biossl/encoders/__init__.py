"""Instance encoders per modality, attention-MIL pooling and cross-modal fusion.

Every module in this package registers its factories in :data:`ENCODERS` under names such as
``"image/vit_tiny"`` or ``"sequence/dilated_cnn"``; ``ENCODERS.build(name, **kwargs)`` builds one.
"""

from __future__ import annotations

from biossl.encoders.base import ModalityModel
from biossl.registry import Registry

ENCODERS: Registry[ModalityModel] = Registry("encoder", package="biossl.encoders")

__all__ = ["ENCODERS", "ModalityModel"]
