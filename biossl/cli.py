"""The ``biossl`` command line: one sub-command per verb.

Each verb lives in ``biossl/commands/<verb>.py`` and exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Verbs import lazily so that ``biossl --help``
stays fast. Bad input (:class:`biossl.errors.InputError`) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from biossl import __version__
from biossl.errors import InputError

#: verb -> module under biossl.commands
VERBS: dict[str, str] = {
    "tile": "tile",
    "cohort": "cohort",
    "demo": "demo",
    "pretrain": "pretrain",
    "cache-features": "cache_features",
    "list": "listing",
    "embed": "embed",
    "finetune": "finetune",
    "audit": "audit",
}

#: verbs that parse their own arguments (LightningCLI): ``main(argv) -> int``.
PASSTHROUGH: frozenset[str] = frozenset({"pretrain"})

_HELP: dict[str, str] = {
    "tile": "detect tissue and write tile coordinates (HDF5) and a thumbnail per slide",
    "cohort": "validate a cohort manifest and print patients x modalities",
    "demo": "run the whole chain on the bundled demo cohort",
    "pretrain": "joint multimodal self-supervised pretraining (LightningCLI; --config, --print_config)",
    "cache-features": "embed every tile once with a frozen encoder; one features HDF5 per slide",
    "list": "list registered objectives or encoders (biossl list objectives|encoders)",
    "embed": "patient embeddings from a pretraining checkpoint, written as AnnData (.h5ad)",
    "finetune": "cross-validated subtype / survival heads on embeddings, with PCA baselines; JSON result",
    "audit": "probe embeddings for site/scanner/batch signal; audit.json, report.html; exit 1 when a probe fails",
}


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every verb attached."""
    parser = argparse.ArgumentParser(prog="biossl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"biossl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        p = sub.add_parser(verb, help=_HELP[verb], description=_HELP[verb])
        p.set_defaults(_verb=verb)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``biossl`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        return _passthrough(argv[0], argv[1:])
    parser = build_parser()
    # Parse once to find the verb, then let the verb's module add its own arguments.
    verb = next((a for a in argv if a in VERBS), None)
    if verb is not None:
        module = importlib.import_module(f"biossl.commands.{VERBS[verb]}")
        sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        module.add_arguments(sub_action.choices[verb])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if getattr(args, "_verb", None) is None:
        parser.print_help()
        return 0
    module = importlib.import_module(f"biossl.commands.{VERBS[args._verb]}")
    try:
        return int(module.run(args) or 0)
    except InputError as exc:
        print(f"biossl {args._verb}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"biossl {args._verb}: interrupted", file=sys.stderr)
        return 130


def _passthrough(verb: str, rest: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    module = importlib.import_module(f"biossl.commands.{VERBS[verb]}")
    try:
        return int(module.main(rest) or 0)
    except InputError as exc:
        print(f"biossl {verb}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"biossl {verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
