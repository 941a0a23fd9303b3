"""The ``ovis`` command line, the top layer. Thin: each command calls one function of the Python API.

Every command module imports only argparse (and rich) at the top, and the library inside its
handler, so that ``ovis --help``, ``ovis list`` and ``ovis plugins`` start without torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from ovis.cli import (
    compose_cmd,
    convert_cmd,
    data_cmd,
    eval_cmd,
    inspect_cmd,
    plugins_cmd,
    quickstart_cmd,
    serve_cmd,
    train_cmd,
)


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
    inspect_cmd.add_commands(commands)
    # One --debug for every command, accepted before or after the command's name.
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error")
    for sub in commands.choices.values():
        if "--debug" not in sub._option_string_actions:
            sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of any error")
    return parser


def _version() -> str:
    from ovis import __version__

    return f"ovis {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command: an ``OvisError`` (the user's input is wrong) prints one line and exits 2;
    any other exception is a bug in ovis and prints its traceback (exit 1). ``--debug`` re-raises."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    logging.getLogger("DeepSpeed").addFilter(_no_cpu_notice)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        from ovis.errors import OvisError

        if isinstance(exc, OvisError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(_unexpected(exc), file=sys.stderr)
        return 1


def _no_cpu_notice(record: logging.LogRecord) -> bool:
    """Drop DeepSpeed's "Setting accelerator to CPU ... unable to detect it", printed by every command
    that loads a model (transformers imports DeepSpeed where it is installed), where there is no GPU
    to detect; where torch sees one, the notice says something and stays."""
    if not record.getMessage().startswith("Setting accelerator to CPU"):
        return True
    import torch

    return torch.cuda.device_count() > 0


def _unexpected(exc: BaseException) -> str:
    """Whose bug an unexpected exception is: a plugin's, where its own code raised it, else ovis's."""
    from ovis.plugin_host import get_host

    version = _version().split()[-1]
    # (only a host that is already up: discovering plugins now could itself fail)
    blamed = get_host().blame(exc) if get_host.cache_info().currsize else None
    if blamed is None:
        return (f"\novis {version}: this is a bug in ovis, not a problem with your input; please report it "
                "with the traceback above.")
    info, where = blamed
    package = f"{info.distribution} {info.version or ''}".strip() if info.distribution else "added in-process"
    return (f"\novis {version}: the error above was raised by plugin {info.name!r} ({package}) in its own code, "
            f"at {where}: a bug in that plugin (or the way it uses ovis's interfaces), not in ovis; report it "
            "to the plugin's authors with the traceback above. `ovis plugins` lists what is installed.")


if __name__ == "__main__":
    sys.exit(main())
