"""``ovis plugins`` and ``ovis list vit|llm|chat [PATTERN]``.

Imports neither torch nor transformers itself (nor does the plugin host), so these commands cost
only what the installed plugins import.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ovis.plugin_host import get_host


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "plugins", help="list installed plugins (distribution, version), what they register, load errors"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run_plugins)

    p = commands.add_parser("list", help="list registered backbones (fnmatch wildcards: '*siglip*')")
    p.add_argument("kind", choices=["vit", "llm", "chat"], help="vision encoders, LLMs or chat formats")
    p.add_argument("pattern", nargs="?", default=None, help="e.g. 'clip*' or '*tiny*'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run_list)


def run_plugins(args: argparse.Namespace) -> int:
    host = get_host()
    plugins = [info.to_dict() for info in host.plugins.values()]
    if args.json:
        print(json.dumps({"plugins": plugins, "preset_errors": host.preset_errors}, indent=2))
        return 0
    table = Table(title="ovis plugins")
    for column in ("plugin", "distribution", "version", "vision", "llm", "chat formats", "errors"):
        table.add_column(column, overflow="fold")
    for info in plugins:
        reg = info["registered"]
        table.add_row(
            info["name"],
            info["distribution"] or "",
            info["version"] or "",
            ", ".join(reg["vision"]),
            ", ".join(reg["llm"]),
            ", ".join(reg["chat_format"]),
            "[red]" + "\n".join(info["errors"]) + "[/red]" if info["errors"] else "",
        )
    Console(width=200).print(table)
    if not plugins:
        print("no plugins installed (entry-point group 'ovis.plugins')")
    for path, message in host.preset_errors.items():
        print(f"skipped invalid preset {path}: {message}")
    return 0


def _distribution(entry) -> str | None:
    """The pip package of the plugin that registered ``entry`` (the plugin column is its entry-point name)."""
    info = get_host().plugins.get(entry.plugin)
    return info.distribution if info is not None else None


def _vision_row(entry) -> dict:
    s = entry.spec
    return {
        "name": s.name,
        "aliases": s.aliases,
        "family": s.family,
        "source": s.source,
        "width": s.hidden_size,
        "image_size": s.image_size,
        "patch": s.patch_size,
        "patches": s.num_patches,
        "layers": s.num_layers,
        "weights": s.weights,
        "tiny": s.tiny,
        "plugin": entry.plugin,
        "distribution": _distribution(entry),
    }


def _llm_row(entry) -> dict:
    s = entry.spec
    return {
        "name": s.name,
        "aliases": s.aliases,
        "family": s.family,
        "width": s.hidden_size,
        "layers": s.num_layers,
        "vocab": s.vocab_size,
        "context": s.context_length,
        "chat_format": s.chat_format,
        "weights": s.weights,
        "tiny": s.tiny,
        "plugin": entry.plugin,
        "distribution": _distribution(entry),
    }


def _report_skipped_presets(host, kind: str) -> None:
    """On stderr: the preset files of ``kind`` skipped as invalid, so a missing preset is explained."""
    skipped = {path: message for path, message in host.preset_errors.items() if Path(path).parent.name == kind}
    if not skipped:
        return
    print(f"warning: {len(skipped)} {kind} preset file(s) skipped as invalid, so not listed "
          "(`ovis plugins` reports them too):", file=sys.stderr)
    for path, message in skipped.items():
        print(f"  {path}: {message.removeprefix(path + ': ')}", file=sys.stderr)


def run_list(args: argparse.Namespace) -> int:
    host = get_host()
    if args.kind == "chat":
        rows = [{"name": n, "plugin": p} for n, p in host.chat_formats().items()]
    else:
        kind = "vision" if args.kind == "vit" else "llm"
        make = _vision_row if kind == "vision" else _llm_row
        rows = [make(e) for e in host.list(kind, args.pattern)]
        _report_skipped_presets(host, kind)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no {args.kind} matches {args.pattern!r}" if args.pattern else f"no {args.kind} registered")
        return 1
    table = Table()
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(", ".join(v) if isinstance(v, list) else ("" if v is None else str(v)) for v in row.values()))
    Console(width=220).print(table)
    return 0
