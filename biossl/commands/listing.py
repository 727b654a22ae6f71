"""``biossl list objectives|encoders|kinds``: what can be named in a manifest or a pretraining config."""

from __future__ import annotations

import argparse

from biossl.modules.tasks import objective_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's arguments to ``parser``."""
    parser.add_argument("what", choices=("objectives", "encoders", "kinds"), help="which registry to print")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (for the docs)")


def _print(header: list[str], rows: list[list[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def run(args: argparse.Namespace) -> int:
    """Print the registry."""
    if args.what == "objectives":
        _print(["name", "kind", "modalities", "use", "paper"], objective_table(), args.markdown)
        return 0
    if args.what == "kinds":
        from biossl.kinds import KINDS, get_kind

        kinds = [get_kind(name) for name in KINDS.names()]
        rows = [[k.name, k.instances, k.default_encoder, k.default_objective, ", ".join(k.extensions),
                 (type(k).__doc__ or "").strip().splitlines()[0]] for k in kinds]
        _print(["kind", "bag of", "default encoder", "default objective", "files", "description"], rows,
               args.markdown)
        return 0
    from biossl.encoders import ENCODERS

    rows = []
    for name in ENCODERS.names():
        doc = (ENCODERS.get(name).__doc__ or "").strip().splitlines()
        rows.append([name, doc[0] if doc else ""])
    _print(["name", "description"], rows, args.markdown)
    return 0
