"""The options several verbs share, each defined once: spelling, type, metavar, default and help text.

Values are checked by the verbs (one line naming the option, exit code 2), not by ``argparse`` types.

A verb adds them with :func:`add_shared`; it may say what its ``--out`` writes, what its ``--seed`` seeds or
what its ``--pseudonymize`` replaces (``help=``), make one required (``required=``) and give
``--batch-size`` / ``--num-workers`` / ``--device`` its own default (``default=``), but never another flag
spelling, type or metavar. ``tests/cli/test_cli_rules.py`` checks every verb against :data:`SHARED`.

The help formatter of every verb (:class:`HelpFormatter`) prints each option's default (``(default: 8)``) unless
its help already says it, and keeps the ``examples:`` epilog as written.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SharedOption:
    """One shared option: its flags and the keyword arguments of ``add_argument``."""

    flags: tuple[str, ...]
    help: str
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    default: Any = None
    action: str | None = None
    dest: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def kwargs(self, *, help: str | None, default: Any, required: bool) -> dict[str, Any]:  # noqa: A002
        """Keyword arguments of ``parser.add_argument(*self.flags, **kwargs)``."""
        out: dict[str, Any] = {"help": help or self.help, "default": self.default if default is _UNSET else default}
        if self.action is not None:
            out["action"] = self.action
        else:
            out["type"] = self.type
            out["metavar"] = self.metavar
        if self.dest is not None:
            out["dest"] = self.dest
        if required:
            out["required"] = True
            out.pop("default")
        return {**out, **self.extra}


_UNSET = object()

#: name (the dest) -> definition; the only place these options' spelling, type and metavar are written.
SHARED: dict[str, SharedOption] = {
    "checkpoint": SharedOption(("--checkpoint",), "checkpoint written by `biossl pretrain` (RUN/checkpoints/last.ckpt)",
                               type=Path, metavar="CKPT"),
    "manifest": SharedOption(("--manifest",), "cohort manifest (CSV/TSV/Parquet): patient_id, modality, path, metadata",
                             type=Path, metavar="MANIFEST"),
    "labels": SharedOption(("--labels",), "per-patient labels table (CSV/TSV/Parquet); its columns join obs",
                           type=Path, metavar="CSV"),
    "work_dir": SharedOption(("--work-dir",), "tile coordinates and scan cache (default: the pretraining run's for "
                             "its own cohort, else ./biossl_work)", type=Path, metavar="DIR"),
    "features_dir": SharedOption(("--features-dir",), "cached tile features from `biossl cache-features` (needed by "
                                 "checkpoints pretrained on cached features)", type=Path, metavar="DIR"),
    "device": SharedOption(("--device",), "auto (CUDA if available, bf16 autocast), cpu, cuda, cuda:1, ...",
                           type=str, metavar="DEVICE", default="auto"),
    "batch_size": SharedOption(("--batch-size",), "items per step", type=int, metavar="N", default=8),
    "num_workers": SharedOption(("--num-workers",), "worker processes reading tiles and scans (0: in this process)",
                                type=int, metavar="N", default=0),
    "max_instances": SharedOption(("--max-tiles", "--max-instances"),
                                  "use at most N instances per patient and modality (tiles across all of its slides, "
                                  "scan grid patches, DNA windows, table rows), drawn with --seed (default: every "
                                  "instance, every tissue tile of every slide)",
                                  type=int, metavar="N", dest="max_instances"),
    "skip_bad": SharedOption(("--skip-bad",), "skip unreadable manifest rows (and patients left without files) with a "
                             "warning, not fail", action="store_true", default=False),
    "pseudonymize": SharedOption(("--pseudonymize",), "write patient IDs as HMAC-SHA256 pseudonyms keyed by the secret "
                                 "salt of --salt-file (see biossl.privacy)", action="store_true", default=False),
    "salt_file": SharedOption(("--salt-file",), "file holding the secret salt of --pseudonymize (default: "
                              "$BIOSSL_SALT)", type=Path, metavar="FILE"),
    "seed": SharedOption(("--seed",), "random seed", type=int, metavar="SEED", default=0),
    "out": SharedOption(("--out",), "output", type=Path, metavar="PATH"),
}


def add_shared(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *names: str,
               required: Collection[str] = (), help: Mapping[str, str] | None = None,  # noqa: A002
               default: Mapping[str, Any] | None = None) -> None:
    """Add the shared options ``names`` (keys of :data:`SHARED`) to ``parser``, in that order.

    Args:
        parser: A parser or an argument group.
        names: Which options, e.g. ``"checkpoint", "manifest", "out"``.
        required: Those of ``names`` the verb cannot run without.
        help: Verb-specific help text (what ``--out`` writes, what ``--seed`` seeds).
        default: Verb-specific defaults (``{"batch_size": 256}``).

    Raises:
        KeyError: a name that is not a shared option (a programming error).
    """
    help = help or {}
    default = default or {}
    unknown = (set(required) | set(help) | set(default)) - set(names)
    if unknown:
        raise KeyError(f"add_shared: {sorted(unknown)} configured but not added")
    for name in names:
        option = SHARED[name]
        parser.add_argument(*option.flags, **option.kwargs(help=help.get(name), default=default.get(name, _UNSET),
                                                           required=name in required))


def add_verbosity(parser: argparse.ArgumentParser, *, suffix: str = "") -> None:
    """``-v/--verbose`` (repeatable) and ``-q/--quiet``, stored as ``verbose<suffix>`` and ``quiet<suffix>``.

    The top-level parser and every verb's parser take them, so they work before and after the verb.
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=0, dest=f"verbose{suffix}",
                       help="more log lines: -v biossl's debug lines, -vv every library's")
    group.add_argument("-q", "--quiet", action="store_true", default=False, dest=f"quiet{suffix}",
                       help="only warnings and errors; no progress bars")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default unless its help already says it; keeps the description and epilog as written.

    Flags (``--skip-bad``), required options and options without a default (``None``) get no ``(default: ...)``.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or not has_default(action):
            return text
        return f"{text} (default: %(default)s)"


def has_default(action: argparse.Action) -> bool:
    """Whether ``--help`` should show ``action``'s default (an option, not a flag, with a value other than None)."""
    return (bool(action.option_strings) and action.nargs != 0 and not action.required
            and action.default not in (None, argparse.SUPPRESS, [], ()))
