"""The one reading of a ``--device`` / ``device=`` option: ``"auto"`` and checked device names.

``"auto"`` is the first CUDA GPU when torch sees one, else the CPU. Anything else is parsed by
:class:`torch.device`; a name torch cannot parse, or a CUDA (or MPS) device that this machine does not
have, is an :class:`~biossl.errors.InputError` naming the option and what to give instead -- not a
traceback from deep inside the first ``.to(device)``. Every command and library function that takes a
device resolves it here (:func:`resolve_device`).
"""

from __future__ import annotations

import torch

from biossl.errors import InputError

#: What a device option accepts, for messages and ``--help``.
DEVICE_HELP = "auto (CUDA if available), cpu, cuda, cuda:1, ..."


def resolve_device(device: str | torch.device = "auto", *, option: str = "--device") -> torch.device:
    """The :class:`torch.device` that ``device`` names; ``"auto"`` is CUDA when available, else CPU.

    Args:
        device: ``"auto"``, a device name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...) or a device.
        option: The option's name in error messages.

    Raises:
        InputError: ``device`` is not a device name, or names a CUDA/MPS device this machine lacks.
    """
    if isinstance(device, torch.device):
        return device
    text = str(device).strip()
    if text.lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"{option} {text!r} is not a device; use {DEVICE_HELP}") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise InputError(f"{option} {text}: torch sees no CUDA GPU on this machine; use {option} cpu (or auto)")
        if dev.index is not None and dev.index >= n:
            raise InputError(f"{option} {text}: torch sees {n} CUDA GPU(s), cuda:0 .. cuda:{n - 1}; use one of them")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{option} {text}: MPS (Apple GPU) is not available here; use {option} cpu (or auto)")
    return dev


__all__ = ["DEVICE_HELP", "resolve_device"]
