"""``ovis convert SRC --out DST --from original | --to original``."""

from __future__ import annotations

import argparse
import json

from ovis.errors import UsageError

DESCRIPTION = """\
Convert between ovis model directories and the original Ovis v1 checkpoint format
(AIDC-AI/Ovis-Clip-Llama3-8B, Ovis-Clip-Qwen1_5-7B, Ovis-Clip-Qwen1_5-14B).

  --from original SRC   read a v1 checkpoint, write an ovis model directory (safetensors)
  --to original SRC     read an ovis model (or a v1 checkpoint), write the v1 layout

The v1 layout: config.json (model_type "ovis", architectures ["Ovis"], auto_map, llm_config,
visual_tokenizer_config of model_type "clip_visual_tokenizer" with a clip_vision_model
backbone_config, multimodal_max_length, hidden_size, conversation_formatter_class), weights as
pytorch_model-0000i-of-0000N.bin shards + pytorch_model.bin.index.json under the keys llm.*,
visual_tokenizer.backbone.vision_model.* (transformers CLIP names), visual_tokenizer.head.0/1 and
vte.weight, the tokenizer, and a CLIPImageProcessor preprocessor_config.json. Both .bin (loaded
with weights_only=True) and safetensors weights are read. The chat format maps to and from
conversation_formatter_class (Llama3ConversationFormatter <-> llama3,
QwenConversationFormatter <-> chatml). An ovis model whose CLIP tower comes from open_clip or
timm is written with the tower converted to the transformers layout.

OvisForCausalLM.from_pretrained / ovis.load also read a v1 directory directly (converted on
load, with a warning listing what was mapped).

Errors name the problem: a directory that is neither format, a missing shard, a tensor whose
shape does not match the config, an unknown conversation_formatter_class. DST is written to a
temporary sibling directory and renamed at the end, so a failed conversion leaves nothing there.
"""


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "convert",
        help="convert to / from the original Ovis v1 checkpoint format",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="SRC", help="the checkpoint directory to read")
    p.add_argument("--out", required=True, metavar="DST", help="the directory to write")
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="from_format", choices=["original"],
                           help="SRC is an original Ovis v1 checkpoint; write an ovis model")
    direction.add_argument("--to", dest="to_format", choices=["original"],
                           help="write the original Ovis v1 format")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="cast the weights (default: keep the source's dtype; v1 releases are bfloat16)")
    p.add_argument("--max-shard-size", default="5GB",
                   help="--to original: largest weight file, e.g. 5GB, 500MB (default 5GB)")
    p.add_argument("--safetensors", action="store_true",
                   help="--to original: write model-*.safetensors instead of pytorch_model-*.bin")
    p.add_argument("--code-from", metavar="DIR",
                   help="--to original: copy the *.py files of DIR (a released v1 checkpoint's remote code) into "
                   "DST, for loaders that use trust_remote_code")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ovis.interop import convert

    to_original = args.to_format == "original"
    if not to_original and (args.safetensors or args.code_from or args.max_shard_size != "5GB"):
        raise UsageError("--safetensors, --code-from and --max-shard-size apply to --to original only")
    report = convert(
        args.src,
        args.out,
        to="original" if to_original else "ovis",
        overwrite=args.overwrite,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        safetensors=args.safetensors,
        code_from=args.code_from,
    )
    target = "the original Ovis v1 format" if to_original else "ovis format"
    if args.json:
        print(json.dumps({
            "source": str(report.source), "source_format": report.source_format, "out": str(report.out),
            "format": report.target_format, "notes": report.notes,
        }, indent=2))
    else:
        for note in report.notes:
            print(f"  - {note}")
        print(f"wrote {report.out} ({target})")
    return 0
