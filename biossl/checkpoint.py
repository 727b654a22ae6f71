"""The one reader of ``biossl pretrain`` checkpoints: safe loading, the version check, one-line errors.

Everything that opens a checkpoint goes through :func:`load_checkpoint` (the patient encoder of
``embed`` / ``finetune`` / ``audit``, ``cache-features``, ``pretrain --ckpt_path``, the pretraining
module): ``torch.load(weights_only=True)`` -- a checkpoint holds only tensors and plain values, so
no pickled code runs --, a ``biossl`` section with the resolved modality specs, and a biossl of
this major version. Every failure is an :class:`~biossl.errors.InputError` of one line naming the
file and what to do. The plug-in modules the checkpoint records (``checkpoint["biossl"]["plugins"]``,
:mod:`biossl.plugins`) are imported by name before the caller rebuilds its model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from biossl import __version__, plugins
from biossl.errors import InputError

#: What to do about an unusable checkpoint.
REDO = "use <run>/checkpoints/last.ckpt of a `biossl pretrain` run"


def one_line(exc: BaseException, limit: int = 240) -> str:
    """``exc``'s text on one line, at most ``limit`` characters (torch's messages span many lines)."""
    return " ".join(str(exc).split())[:limit]


def unreadable_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words (torch's own text is many lines)."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (f"it holds a pickled {found.group(1)} object, which safe loading refuses (biossl checkpoints hold "
                "only tensors and plain values), so `biossl pretrain` did not write it; use "
                "<run>/checkpoints/last.ckpt of a `biossl pretrain` run")
    if isinstance(exc, EOFError) or "central directory" in text or "zip archive" in text:
        return ("it is truncated or corrupt (an interrupted copy or download?); copy it again, or use an earlier "
                "checkpoint of the run (<run>/checkpoints/step*.ckpt)")
    return (f"not a PyTorch checkpoint file ({type(exc).__name__}); use <run>/checkpoints/last.ckpt of a "
            "`biossl pretrain` run")


def _what_it_is(ckpt: Any) -> str:
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return "a plain state_dict"
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        return "a Lightning checkpoint of another model"
    return f"a {type(ckpt).__name__}"


def checkpoint_version(ckpt: dict[str, Any]) -> str:
    """The biossl version that wrote a loaded checkpoint (``"unknown"`` if it records none)."""
    return str(ckpt["biossl"].get("version", "unknown"))


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a ``biossl pretrain`` checkpoint of this major version.

    Args:
        path: The ``.ckpt`` file.
        map_location: Where its tensors are loaded.
        mmap: Map the file instead of reading it (a quick check of a large checkpoint).

    Returns:
        The checkpoint: ``state_dict``, ``hyper_parameters`` and the ``biossl`` section (version,
        resolved ``modality_specs``, data state), as ``biossl pretrain`` wrote it.

    Raises:
        InputError: the file is missing, unreadable (truncated, not a checkpoint, pickled objects), has
            no ``biossl`` section (not written by ``biossl pretrain``), or was written by a biossl of
            another major version (its version is stored in ``checkpoint["biossl"]["version"]``), or
            names a plug-in module that cannot be imported (:func:`biossl.plugins.require_plugins`).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} not found (no such file); {REDO}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 (truncated zips, foreign pickles, ... raise many types)
        raise InputError(f"{path} is not a readable checkpoint: {unreadable_reason(exc)}") from None
    state = ckpt.get("biossl") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "modality_specs" not in state:
        raise InputError(f"checkpoint {path} is not a biossl pretraining checkpoint, not a checkpoint written by "
                         f"`biossl pretrain` (no 'biossl' section: {_what_it_is(ckpt)}); {REDO}")
    version = checkpoint_version(ckpt)
    if version.split(".")[0] != __version__.split(".")[0]:
        raise InputError(f"checkpoint {path} was written by biossl {version}, incompatible with this biossl "
                         f"{__version__} (checkpoints load within one major version); install biossl "
                         f"{version} to use it, or pretrain again with this version")
    plugins.require_plugins(ckpt, path)
    return ckpt


def rebuild_error(path: str | Path, ckpt: dict[str, Any], exc: BaseException) -> InputError:
    """The one line for a loaded checkpoint whose model cannot be rebuilt (edited specs, damaged weights)."""
    return InputError(f"checkpoint {path} (biossl {checkpoint_version(ckpt)}) does not rebuild its model "
                      f"({type(exc).__name__}: {one_line(exc)}); it may be damaged or edited; {REDO}")


__all__ = ["REDO", "checkpoint_version", "load_checkpoint", "one_line", "rebuild_error", "unreadable_reason"]
