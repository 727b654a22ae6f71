"""The ``biossl`` command line: one sub-command per verb.

Each verb lives in ``biossl/commands/<verb>.py`` and exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Verbs import lazily so that ``biossl --help``
stays fast. Bad input (:class:`biossl.errors.InputError`) becomes one line on stderr and exit code 2;
an output that cannot be written (:class:`biossl.errors.OutputError`, a full disk) one line and exit code 74.
Global options (``-v``, ``--threads N``) come before the verb; ``--plugin MODULE`` (repeatable) may come
before or after it. Before a verb runs, the plug-in modules (:mod:`biossl.plugins`: entry points of the group
``biossl.plugins``, ``$BIOSSL_PLUGINS``, ``--plugin``) are imported; ``biossl --help`` imports none.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from biossl import __version__
from biossl.errors import InputError, OutputError

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
    "retrieval": "retrieval",
    "export": "export",
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
    "retrieval": "cross-modal retrieval between a patient's embeddings of two modalities: recall@k against chance",
    "export": "write a checkpoint modality's encoder for other tools (save_pretrained folder, or state_dict + spec)",
}

PLUGIN_HELP = ("import a plug-in module registering encoders, objectives or kinds: a module name on sys.path or a .py "
               "file (repeatable; before or after the verb; also $BIOSSL_PLUGINS=mod1,mod2 and the entry points of "
               "the group 'biossl.plugins')")


EXIT_CODES = """exit codes:
  0    success
  1    biossl audit: an audited column failed a probe (a finding, for pipelines)
  2    bad input or option: one line names the file, row, patient or option, and what to do
  74   an output cannot be written (disk full, quota exceeded, read-only or unwritable folder):
       one line names the path and the free space; nothing partial is left under its name
  130  interrupted (Ctrl-C, SIGTERM)"""


def _threads(text: str) -> int:
    from biossl.threads import parse_threads

    try:
        return parse_threads(text, "--threads")
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every verb attached."""
    parser = argparse.ArgumentParser(prog="biossl", description=__doc__.splitlines()[0], epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"biossl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=_threads, default=None, metavar="N",
                        help="CPU threads of torch (default: the CPUs this process may use: affinity, cgroup quota, "
                             "SLURM_CPUS_PER_TASK; or $BIOSSL_NUM_THREADS, or $OMP_NUM_THREADS when set)")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=PLUGIN_HELP)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        p = sub.add_parser(verb, help=_HELP[verb], description=_HELP[verb])
        p.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=PLUGIN_HELP)
        p.set_defaults(_verb=verb)
    return parser


def _take_plugins(argv: list[str]) -> tuple[list[str], list[str]]:
    """Remove every ``--plugin MODULE`` / ``--plugin=MODULE`` (before ``--``) from ``argv``: ``(modules, rest)``.

    Raises:
        InputError: ``--plugin`` is the last word, with no module after it.
    """
    named: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest += argv[i:]
            break
        if a.startswith("--plugin="):
            named.append(a.split("=", 1)[1])
        elif a == "--plugin":
            if i + 1 >= len(argv) or not argv[i + 1] or argv[i + 1].startswith("-"):
                raise InputError("--plugin needs a module name (mypkg.biossl_plugin) or a .py file after it")
            named.append(argv[i + 1])
            i += 1
        else:
            rest.append(a)
        i += 1
    return named, rest


def _with_plugins(named: list[str], run: Callable[[], int | None]) -> Callable[[], int | None]:
    """``run``, after importing the plug-ins (entry points, ``$BIOSSL_PLUGINS``, ``named``)."""

    def wrapped() -> int | None:
        from biossl.plugins import load_plugins

        load_plugins(named)
        return run()

    return wrapped


def _split_globals(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split the global options before the verb from the rest: ``(["-v", "--threads", "2"], ["pretrain", ...])``."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-v", "--verbose") or a.startswith("--threads="):
            i += 1
        elif a == "--threads" and i + 1 < len(argv):
            i += 2
        else:
            break
    return argv[:i], argv[i:]


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``biossl`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        named, argv = _take_plugins(argv)
    except InputError as exc:
        print(f"biossl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    head, rest = _split_globals(argv)
    if rest and rest[0] in VERBS and "-h" not in rest and "--help" not in rest:
        bad_environment = _thread_environment(rest[0])
        if bad_environment is not None:
            return bad_environment
    if rest and rest[0] in PASSTHROUGH:
        options = build_parser().parse_args(head)  # global options only; bad ones exit 2 with argparse's message
        return _passthrough(rest[0], rest[1:], verbose=options.verbose, threads=options.threads, plugins=named)
    parser = build_parser()
    # Parse once to find the verb, then let the verb's module add its own arguments.
    verb = next((a for a in argv if a in VERBS), None)
    if verb is not None:
        module = importlib.import_module(f"biossl.commands.{VERBS[verb]}")
        sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        module.add_arguments(sub_action.choices[verb])
    args = parser.parse_args(argv)
    _logging(args.verbose)
    if getattr(args, "_verb", None) is None:
        parser.print_help()
        return 0
    module = importlib.import_module(f"biossl.commands.{VERBS[args._verb]}")
    return _guarded(args._verb, _with_plugins(named, lambda: module.run(args)), args.threads)


def _thread_environment(verb: str) -> int | None:
    """Exit code 2 (one line) when a thread variable is malformed, before a verb imports what reads it; else None."""
    from biossl.threads import check_thread_environment

    try:
        check_thread_environment()
    except InputError as exc:
        print(f"biossl {verb}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return None


def _passthrough(verb: str, rest: list[str], *, verbose: bool = False, threads: int | None = None,
                 plugins: list[str] | None = None) -> int:
    _logging(verbose)
    module = importlib.import_module(f"biossl.commands.{VERBS[verb]}")
    run = (lambda: module.main(rest)) if "-h" in rest or "--help" in rest else _with_plugins(
        list(plugins or []), lambda: module.main(rest))
    return _guarded(verb, run, threads)


def _guarded(verb: str, run: Callable[[], int | None], threads: int | None) -> int:
    """Set the thread count, run the verb; bad input and unwritable outputs become one line and their exit code."""
    from biossl.io import output_error
    from biossl.threads import configure_threads

    try:
        configure_threads(threads)
        return int(run() or 0)
    except (InputError, OutputError) as exc:
        print(f"biossl {verb}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"biossl {verb}: interrupted", file=sys.stderr)
        return 130
    except (OSError, RuntimeError) as exc:  # a full disk met by a writer that does not go through biossl.io
        err = output_error(exc, None)
        if err is None:
            raise
        print(f"biossl {verb}: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
