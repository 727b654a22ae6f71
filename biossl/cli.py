"""The ``biossl`` command line: one sub-command per verb.

Each verb lives in ``biossl/commands/<verb>.py`` and exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Verbs import lazily so that ``biossl --help``
stays fast. Bad input (:class:`biossl.errors.InputError`) becomes one line on stderr and exit code 2;
an output that cannot be written (:class:`biossl.errors.OutputError`, a full disk) one line and exit code 74.
Global options (``--threads N``) come before the verb; ``-v``/``-q`` and ``--plugin MODULE`` (repeatable) may
come before or after it. Options several verbs share are defined once, in :mod:`biossl.commands.options`; every
``--help`` shows the defaults and examples (:data:`EXAMPLES`). Logging goes through one handler
(:mod:`biossl.logs`): no line twice, no third-party adverts. Before a verb runs, the plug-in modules
(:mod:`biossl.plugins`: entry points of the group ``biossl.plugins``, ``$BIOSSL_PLUGINS``, ``--plugin``) are
imported; ``biossl --help`` imports none.
"""

from __future__ import annotations

import argparse
import importlib
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
    "audit": "probe embeddings for site/scanner/batch signal; audit.json, report.html; exit 0 PASS, 1 FAIL, "
             "3 INCOMPLETE",
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
  3    biossl audit: INCOMPLETE, a key or column could not be tested
  74   an output cannot be written (disk full, quota exceeded, read-only or unwritable folder):
       one line names the path and the free space; nothing partial is left under its name
  130  interrupted (Ctrl-C, SIGTERM)"""


#: verb -> the ``examples:`` epilog of its ``--help``: commands that run on the bundled demo cohort from a clone's
#: root (``biossl demo`` writes demo_output/; ``biossl pretrain --config configs/pretrain/demo.yaml`` writes
#: demo_output/pretrain/).
EXAMPLES: dict[str, str] = {
    "": """examples:
  biossl demo                                     # the whole chain on the bundled demo cohort
  biossl -q embed --checkpoint demo_output/pretrain/checkpoints/last.ckpt \\
      --manifest biossl/demo_data/manifest.csv --out embeddings.h5ad
  biossl VERB --help                              # a verb's options, defaults and examples""",
    "tile": """examples:
  biossl tile biossl/demo_data/slides/*.svs --out tiles
  biossl tile biossl/demo_data/slides/*.svs --out tiles --mpp 1.0 --shard 0/4   # job 0 of 4""",
    "cohort": """examples:
  biossl cohort biossl/demo_data/manifest.csv
  biossl cohort biossl/demo_data/manifest.csv --skip-bad --report problems.csv""",
    "demo": """examples:
  biossl demo
  biossl -q demo --max-steps 20 --out /tmp/demo   # a shorter pretraining, warnings only""",
    "pretrain": """examples:
  biossl pretrain --config configs/pretrain/demo.yaml
  biossl pretrain --config configs/pretrain/demo.yaml --trainer.max_steps 600 --resume last
  biossl pretrain --config configs/pretrain/demo.yaml --print_config   # the resolved run, every option""",
    "cache-features": """examples:
  biossl cache-features demo_output/work/tiles --checkpoint demo_output/pretrain/checkpoints/last.ckpt \\
      --out features
  biossl cache-features demo_output/work/tiles --encoder image/vit_tiny --encoder-arg img_size=64 --out features""",
    "list": """examples:
  biossl list encoders
  biossl list objectives --markdown""",
    "embed": """examples:
  biossl embed --checkpoint demo_output/pretrain/checkpoints/last.ckpt --manifest biossl/demo_data/manifest.csv \\
      --labels biossl/demo_data/labels.csv --out embeddings.h5ad
  biossl embed --checkpoint demo_output/pretrain/checkpoints/last.ckpt --manifest biossl/demo_data/manifest.csv \\
      --max-tiles 64 --device cuda --pseudonymize --salt-file salt.txt --out embeddings.h5ad""",
    "finetune": """examples:
  biossl finetune --embeddings demo_output/embeddings.h5ad --labels biossl/demo_data/labels.csv \\
      --task subtype --label-column subtype --folds 3 --out subtype.json
  biossl finetune --embeddings demo_output/embeddings.h5ad --labels biossl/demo_data/labels.csv \\
      --task survival --folds 3 --out survival.json""",
    "audit": """examples:
  biossl audit --embeddings demo_output/embeddings.h5ad --columns site --label subtype --folds 2 --out audit
  biossl audit --checkpoint demo_output/pretrain/checkpoints/last.ckpt --manifest biossl/demo_data/manifest.csv \\
      --labels biossl/demo_data/labels.csv --columns site --folds 2 --device cuda --out audit""",
    "retrieval": """examples:
  biossl retrieval --embeddings demo_output/embeddings.h5ad --keys X_expression,X_cnv --out retrieval.json
  biossl retrieval --embeddings demo_output/embeddings.h5ad --k 1,3 --plot retrieval.png --out retrieval.json""",
    "export": """examples:
  biossl export --checkpoint demo_output/pretrain/checkpoints/last.ckpt --modality wsi --out wsi_encoder
  biossl export --checkpoint demo_output/pretrain/checkpoints/last.ckpt --modality expression \\
      --out expression_encoder --overwrite""",
}


def _threads(text: str) -> int:
    from biossl.threads import parse_threads

    try:
        return parse_threads(text, "--threads")
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """Return the top-level parser with every verb attached; with ``verb``, that verb's own options too.

    ``-v``/``-q`` are taken before the verb (``verbose``, ``quiet``) and after it (``verbose_verb``,
    ``quiet_verb``): :func:`verbosity` combines them.
    """
    from biossl.commands.options import HelpFormatter, add_verbosity

    parser = argparse.ArgumentParser(prog="biossl", description=__doc__.splitlines()[0],
                                     epilog=f"{EXAMPLES['']}\n\n{EXIT_CODES}", formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"biossl {__version__}")
    add_verbosity(parser)
    parser.add_argument("--threads", type=_threads, default=None, metavar="N",
                        help="CPU threads of torch (default: the CPUs this process may use: affinity, cgroup quota, "
                             "SLURM_CPUS_PER_TASK; or $BIOSSL_NUM_THREADS, or $OMP_NUM_THREADS when set)")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=PLUGIN_HELP)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERBS:
        p = sub.add_parser(name, help=_HELP[name], description=_HELP[name], epilog=EXAMPLES[name],
                           formatter_class=HelpFormatter)
        add_verbosity(p, suffix="_verb")
        p.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=PLUGIN_HELP)
        p.set_defaults(_verb=name)
        if name == verb and name not in PASSTHROUGH:
            importlib.import_module(f"biossl.commands.{VERBS[name]}").add_arguments(p)
    return parser


def verb_parser(verb: str) -> argparse.ArgumentParser:
    """The parser of ``biossl VERB`` with all of its options (pretrain: only ``-v``/``-q``/``--plugin``)."""
    parser = build_parser(verb)
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub_action.choices[verb]


def verbosity(args: argparse.Namespace) -> int | None:
    """-1 (``-q``), 0, 1 (``-v``), 2 (``-vv``) from the options before and after the verb; None when none was given.

    Raises:
        InputError: ``-q`` together with ``-v``.
    """
    loud = getattr(args, "verbose", 0) + getattr(args, "verbose_verb", 0)
    quiet = getattr(args, "quiet", False) or getattr(args, "quiet_verb", False)
    if loud and quiet:
        raise InputError("-q (quiet) and -v (verbose) contradict each other; give one of them")
    return -1 if quiet else loud if loud else None


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
        if _is_verbosity(a) or a.startswith("--threads="):
            i += 1
        elif a == "--threads" and i + 1 < len(argv):
            i += 2
        else:
            break
    return argv[:i], argv[i:]


def _is_verbosity(word: str) -> bool:
    """``-v``, ``-vv``, ``--verbose``, ``-q``, ``--quiet``."""
    return word in ("--verbose", "--quiet", "-q") or (len(word) > 1 and word[0] == "-" and set(word[1:]) == {"v"})


def _take_verbosity(argv: list[str]) -> tuple[list[str], list[str]]:
    """Remove ``-v``/``-q`` words (before ``--``) from a pass-through verb's arguments: ``(taken, rest)``."""
    taken: list[str] = []
    rest: list[str] = []
    for i, a in enumerate(argv):
        if a == "--":
            rest += argv[i:]
            break
        (taken if _is_verbosity(a) else rest).append(a)
    return taken, rest


#: How deep :func:`main` is nested (``biossl demo`` runs ``embed``, ``audit``, ``retrieval`` in-process).
_depth = 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``biossl`` console script."""
    global _depth
    _depth += 1
    try:
        return _main(list(sys.argv[1:] if argv is None else argv), nested=_depth > 1)
    finally:
        _depth -= 1


def _main(argv: list[str], *, nested: bool) -> int:
    command = ["biossl", *argv]  # what a verb records as its command line (audit.json): as typed, plug-ins included
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
        taken, tail = _take_verbosity(rest[1:])
        options = build_parser().parse_args([*head, rest[0], *taken])  # bad global options exit 2 (argparse)
        return _passthrough(rest[0], tail, options, threads=options.threads, plugins=named, nested=nested)
    verb = next((a for a in argv if a in VERBS), None)
    parser = build_parser(verb)
    args = parser.parse_args(argv)
    args._command = command
    if not _configure_logging(args, nested=nested):
        return 2
    if getattr(args, "_verb", None) is None:
        parser.print_help()
        return 0
    module = importlib.import_module(f"biossl.commands.{VERBS[args._verb]}")
    return _guarded(args._verb, _with_plugins(named, lambda: module.run(args)), args.threads)


def _configure_logging(args: argparse.Namespace, *, nested: bool) -> bool:
    """Logging and progress bars from ``-v``/``-q``; False (one line printed) when they contradict each other."""
    from biossl import logs

    try:
        level = verbosity(args)
    except InputError as exc:
        print(f"biossl: error: {exc}", file=sys.stderr)
        return False
    logs.configure(level, new_run=not nested)
    return True


def _thread_environment(verb: str) -> int | None:
    """Exit code 2 (one line) when a thread variable is malformed, before a verb imports what reads it; else None."""
    from biossl.threads import check_thread_environment

    try:
        check_thread_environment()
    except InputError as exc:
        print(f"biossl {verb}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return None


def _passthrough(verb: str, rest: list[str], options: argparse.Namespace, *, threads: int | None = None,
                 plugins: list[str] | None = None, nested: bool = False) -> int:
    if not _configure_logging(options, nested=nested):
        return 2
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
