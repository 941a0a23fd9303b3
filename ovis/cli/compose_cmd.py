"""``ovis compose --vit NAME --llm NAME [--out DIR] [--dry-run]``."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from ovis.cli.arg_types import positive_int
from ovis.errors import UsageError


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "compose",
        help="wire a vision encoder and an LLM into an Ovis model",
        description="Compose a registered vision encoder and LLM through the structural-embedding "
        "adapter and save the result in Hugging Face format.",
    )
    p.add_argument("--vit", required=True, help="vision encoder name or alias (ovis list vit)")
    p.add_argument("--llm", required=True, help="LLM name or alias (ovis list llm)")
    p.add_argument("--out", help="directory to write (config.json, safetensors, tokenizer, processor)")
    p.add_argument("--visual-vocab-size", type=int, default=131072, help="visual vocabulary size V")
    p.add_argument(
        "--tokenize-function", choices=["softmax", "gumbel_argmax", "st_argmax"], default="softmax"
    )
    p.add_argument("--no-indicators", dest="use_indicators", action="store_false",
                   help="do not wrap images in begin/end indicator tokens")
    p.add_argument("--adapter", choices=["structural", "mlp"], default="structural",
                   help="structural embedding (Ovis) or an MLP projector (LLaVA-style ablation)")
    p.add_argument("--max-length", type=positive_int, default=None, help="multimodal max length")
    p.add_argument("--chat-format", default=None,
                   help="a chat format instead of the LLM preset's (ovis list chat), e.g. chatml for "
                        "Qwen2.5 as the Ovis2 releases prompt it")
    tiles = p.add_argument_group("high resolution (docs/high-resolution.md)")
    tiles.add_argument("--image-layout", choices=["v1", "tiled"], default=None,
                       help="v1: one padded square per image; tiled: Ovis 1.6 / Ovis2 tiles plus a global view "
                       "(default: tiled when a tiling option is given, else v1)")
    tiles.add_argument("--max-partition", type=int, default=None, help="tiled: at most this many tiles (default 9)")
    tiles.add_argument("--covering-threshold", type=float, default=None,
                       help="tiled: the share of the image a grid must cover to be chosen for fewer tiles (0.9)")
    tiles.add_argument("--tile-resize", choices=["pad", "canvas"], default=None,
                       help="tiled: pad (the Ovis2 releases) or canvas (transformers' Ovis2ImageProcessor)")
    tiles.add_argument("--hidden-stride", type=int, default=1,
                       help="merge each s x s block of patches into one visual token (Ovis2: 2)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--random-init", dest="pretrained", action="store_false", default=None,
                         help="random weights even where the preset names real ones")
    weights.add_argument("--pretrained", dest="pretrained", action="store_true",
                         help="require real weights")
    p.add_argument("--vit-weights", help="load the encoder from here (local dir / file / tag)")
    p.add_argument("--llm-weights", help="load the LLM and tokenizer from this local directory")
    p.add_argument("--dry-run", action="store_true",
                   help="build on the meta device (nothing downloaded or allocated); print parts")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--json", action="store_true", help="print the parameter report as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ovis.composer import compose

    if not args.out and not args.dry_run:
        raise UsageError("give --out DIR to save the model, or --dry-run to inspect it")
    model, _ = compose(
        args.vit,
        args.llm,
        out=args.out,
        visual_vocab_size=args.visual_vocab_size,
        tokenize_function=args.tokenize_function,
        use_indicators=args.use_indicators,
        adapter=args.adapter,
        multimodal_max_length=args.max_length,
        dtype=args.dtype,
        image_layout=args.image_layout,
        max_partition=args.max_partition,
        covering_threshold=args.covering_threshold,
        tile_resize=args.tile_resize,
        hidden_stride=args.hidden_stride,
        chat_format=args.chat_format,
        pretrained=args.pretrained,
        vit_weights=args.vit_weights,
        llm_weights=args.llm_weights,
        dry_run=args.dry_run,
        overwrite=args.overwrite,
    )
    report = part_report(model)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        table = Table(title=f"{args.vit} + {args.llm}" + (" (meta device)" if args.dry_run else ""))
        table.add_column("part")
        table.add_column("parameters", justify="right")
        table.add_column("shapes")
        for part, row in report["parts"].items():
            table.add_row(part, f"{row['parameters']:,}", row["shapes"])
        table.add_row("total", f"{report['total']:,}", "")
        Console(width=200).print(table)
        if args.out:
            print(f"saved to {args.out}")
    return 0


def part_report(model) -> dict:
    """Parameters and key shapes per part."""
    head = model.visual_tokenizer.head
    vte = model.vte.weight
    stride = model.visual_tokenizer.hidden_stride
    merged = f", merged {stride}x{stride}" if stride > 1 else ""
    parts = {
        "visual_tokenizer.backbone": (model.backbone, f"{model.backbone.spec.name}: "
                                      f"{model.backbone.num_patches} patches x {model.backbone.feature_dim}{merged}"),
        "visual_tokenizer.head": (head, " -> ".join(f"{tuple(p.shape)}" for p in head.parameters())),
        "vte": (model.vte, f"{tuple(vte.shape)}"),
        "llm": (model.llm, f"{model.llm.config.model_type}: {model.llm.config.num_hidden_layers} layers x "
                f"{model.llm.config.hidden_size}, vocab {model.llm.config.vocab_size}"),
    }
    out = {
        name: {"parameters": sum(p.numel() for p in module.parameters()), "shapes": shapes}
        for name, (module, shapes) in parts.items()
    }
    report = {"parts": out, "total": sum(p.numel() for p in model.parameters()),
              "image_layout": getattr(model.config, "image_layout", "v1")}
    if model.tiled:
        report["tokens_per_tile"] = model.tokens_per_tile
        report["max_partition"] = model.config.max_partition
    else:
        report["num_image_tokens"] = model.num_image_tokens
    return report
