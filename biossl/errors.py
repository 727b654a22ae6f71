"""Exceptions for bad user input and for outputs that cannot be written.

Every problem with what a user handed us (a manifest row, a slide, a table, a config value) raises
:class:`InputError` or a subclass. The message names the file, the patient or the column, and says
what to do. The CLI turns these into one line on stderr and exit code 2.

An output that cannot be written (a full disk, an exceeded quota, a read-only or unwritable folder)
raises :class:`OutputError`: one line naming the path and the free space, and exit code 74
(``EX_IOERR`` of sysexits.h), distinct from ``biossl audit``'s 1 (a probe failed) and from 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """A problem with user input; the message says which input and how to fix it."""

    exit_code = 2


class ManifestError(InputError):
    """A cohort manifest or labels table is malformed."""


class SlideError(InputError):
    """A whole-slide image cannot be read or tiled."""


class VolumeError(InputError):
    """A 3D scan (NIfTI or DICOM series) cannot be read."""


class ExpressionError(InputError):
    """An expression table or AnnData file is malformed."""


class SequenceError(InputError):
    """A DNA sequence file is malformed."""


class OutputError(Exception):
    """An output cannot be written (disk full, quota, read-only or unwritable folder); nothing is left under its name.

    Not an :class:`InputError`: commands that skip bad inputs (``--skip-bad``) must not skip a full disk.
    """

    exit_code = 74
