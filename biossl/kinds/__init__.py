"""Modality kinds, one file each: ``slide``, ``volume``, ``table``, ``sequence``, ``features``.

A cohort's modalities have names the user chooses (``t1``, ``he``, ``rna``, ``cnv``, ...); each is of one
kind, registered in :data:`biossl.registry.KINDS` and built with :func:`get_kind`. The kind holds what is
specific to it (see :class:`~biossl.kinds.base.Kind`); adding a kind is adding one file (or registering
a class anywhere, as ``tests/kinds/test_plugin_kind.py`` does).
"""

from __future__ import annotations

from biossl.kinds.base import Kind, Source, SourceContext, get_kind
from biossl.registry import KINDS

__all__ = ["KINDS", "Kind", "Source", "SourceContext", "get_kind"]
