"""The command line of a generated reference page (``python -m ovis.train.docs``,
``python -m ovis.interfaces.spec_reference``): print it, ``--write`` it, or ``--check`` that the
committed file is current (what the tests run, so a page cannot drift from the code it documents)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def reference_main(argv: Sequence[str] | None, *, prog: str, what: str, render: Callable[[], str],
                   regenerate: str, default_path: Path | None = None) -> int:
    """``regenerate``: the command that rewrites the committed page, told when it is out of date."""
    parser = argparse.ArgumentParser(prog=prog, description=f"Render the {what}.")
    group = parser.add_mutually_exclusive_group()
    optional = {"nargs": "?", "const": default_path} if default_path is not None else {}
    default = f" (default {default_path})" if default_path is not None else ""
    group.add_argument("--write", metavar="PATH", type=Path, help=f"write the {what} to PATH{default}", **optional)
    group.add_argument("--check", metavar="PATH", type=Path, help=f"exit 1 if PATH{default} is out of date",
                       **optional)
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        args.write.write_text(text)
    elif args.check:
        if not args.check.is_file() or args.check.read_text() != text:
            print(f"{args.check} is out of date; regenerate it: {regenerate}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0
