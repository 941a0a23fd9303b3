"""Layer 7, the ``ovis`` command line. Thin: each command calls one function of the Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ovis.cli import compose_cmd, convert_cmd, data_cmd, eval_cmd, plugins_cmd, quickstart_cmd, serve_cmd, train_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovis", description="Build, train and serve Ovis-style multimodal LLMs."
    )
    parser.add_argument("--version", action="version", version=_version())
    # The deepspeed launcher passes --local_rank=N before the subcommand; ranks come from the env.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    plugins_cmd.add_commands(commands)
    compose_cmd.add_commands(commands)
    convert_cmd.add_commands(commands)
    train_cmd.add_commands(commands)
    data_cmd.add_commands(commands)
    quickstart_cmd.add_commands(commands)
    serve_cmd.add_commands(commands)
    eval_cmd.add_commands(commands)
    return parser


def _version() -> str:
    from ovis import __version__

    return f"ovis {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from ovis.cli.errors import is_user_error

        if not is_user_error(exc) or getattr(args, "debug", False):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
