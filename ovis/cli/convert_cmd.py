"""``ovis convert SRC --out DST --from original|hf-ovis2 | --to original|hf-ovis2``."""

from __future__ import annotations

import argparse
import json

from ovis.errors import UsageError

DESCRIPTION = """\
Convert between ovis model directories, the original Ovis v1 checkpoint format
(AIDC-AI/Ovis-Clip-Llama3-8B, Ovis-Clip-Qwen1_5-7B, Ovis-Clip-Qwen1_5-14B), transformers'
native Ovis2 layout (hf-ovis2: Ovis2ForConditionalGeneration, the converted *-hf checkpoints) and
the original AIDC-AI Ovis2 release layout (ovis2: AIDC-AI/Ovis2-1B ... -34B).

  --from original SRC   read a v1 checkpoint, write an ovis model directory (safetensors)
  --to original SRC     read an ovis model (or a v1 checkpoint), write the v1 layout
  --from hf-ovis2 SRC   read a transformers Ovis2 checkpoint, write an ovis model directory
  --to hf-ovis2 SRC     read an ovis model (or a v1 / hf-ovis2 checkpoint), write the hf-ovis2 layout
  --from ovis2 SRC      read an AIDC-AI Ovis2 release checkpoint (AIDC-AI/Ovis2-*), write an ovis model
  --to ovis2 SRC        read an ovis model (or an hf-ovis2 / ovis2 checkpoint), write the release layout

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

The hf-ovis2 layout: config.json (model_type "ovis2", vision_config "ovis2_vision" with the AIMv2
trunk's sizes, vocab_size, hidden_stride, tokenize_function; text_config; image_token_id;
visual_indicator_token_ids), model.safetensors under model.vision_tower.transformer.* (AIMv2),
model.vision_tower.head_linear / head_norm, model.visual_embeddings_table, model.language_model.*
and lm_head, the tokenizer with <image>, <IMG_ATOM> and the five indicator tokens, an
Ovis2ImageProcessor preprocessor_config.json (crop_to_patches, max_patches = max_partition) and
processor_config.json (image_seq_length). It expresses: an AIMv2 vision tower whose features pass
its final RMSNorm (transformers applies it; the AIDC-AI release and ovis's AIMv2 presets do not:
such a model is refused unless --keep-unnormalised), the tiled layout, the structural adapter, a
Qwen2 / Qwen3 / Llama LLM, no visual row scaling. Anything else (a CLIP or SigLIP tower, the v1
layout, the MLP adapter, Gemma 2) is refused with the reason. What only ovis has (tile fitting,
covering threshold, chat format, tau, max length) is kept in config.json under "ovis", so an
ovis -> hf-ovis2 -> ovis round trip is exact; a checkpoint without it reads as transformers'
processor works (tile_resize canvas) with the chat format assumed for its LLM (qwen2: chatml).

The Ovis2 release layout (remote-code "Ovis", what the Ovis2 model cards and vLLM's Ovis support
load): config.json like v1's but with a visual_tokenizer_config of model_type
"aimv2_visual_tokenizer" (hidden_stride, an "aimv2" backbone_config), safetensors weights whose
AIMv2 trunk uses Apple's names (preprocessor.patchifier, trunk.blocks.N.attn.qkv fused, mlp.fc1 /
fc2 / fc3, post_trunk_norm), a CLIPImageProcessor config. Features are taken before AIMv2's final
norm, as ovis's AIMv2 presets do; the chat format maps to conversation_formatter_class (chatml <->
QwenConversationFormatter). Tiling (max_partition, default 9) is not part of the release's
checkpoint; ovis keeps its own under "ovis" in config.json. Ovis 1.6's siglip_visual_tokenizer is
recognised and refused.

OvisForCausalLM.from_pretrained / ovis.load / OvisProcessor.from_pretrained also read a v1, an
hf-ovis2 or an Ovis2 release directory directly (converted on load, with a warning listing what
was mapped).

Errors name the problem: a directory that is neither format, a missing shard, a tensor whose
shape does not match the config, an unknown conversation_formatter_class. DST is written to a
temporary sibling directory and renamed at the end, so a failed conversion leaves nothing there.
"""


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "convert",
        help="convert to / from the original Ovis v1 format and transformers' Ovis2 layout (hf-ovis2)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="SRC", help="the checkpoint directory to read")
    p.add_argument("--out", required=True, metavar="DST", help="the directory to write")
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--from",
        dest="from_format",
        choices=["original", "hf-ovis2", "ovis2"],
        help="SRC is an original Ovis v1 / a transformers Ovis2 / an AIDC-AI Ovis2 release checkpoint; "
        "write an ovis model",
    )
    direction.add_argument(
        "--to",
        dest="to_format",
        choices=["original", "hf-ovis2", "ovis2"],
        help="write the original Ovis v1 format / transformers' Ovis2 layout / the AIDC-AI Ovis2 release layout",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="cast the weights (default: keep the source's dtype; v1 releases are bfloat16)",
    )
    p.add_argument(
        "--max-shard-size",
        default="5GB",
        help="--to original / hf-ovis2 / ovis2: largest weight file, e.g. 5GB, 500MB (default 5GB)",
    )
    p.add_argument(
        "--safetensors",
        action="store_true",
        help="--to original: write model-*.safetensors instead of pytorch_model-*.bin",
    )
    p.add_argument(
        "--code-from",
        metavar="DIR",
        help="--to original / ovis2: copy the *.py files of DIR (a released checkpoint's remote code) into "
        "DST, for loaders that use trust_remote_code",
    )
    p.add_argument(
        "--keep-unnormalised",
        action="store_true",
        help="--to hf-ovis2: write an AIMv2 model whose features skip the final RMSNorm anyway "
        "(transformers applies it, so its outputs will differ)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ovis.interop import convert

    to_original = args.to_format == "original"
    if not to_original and args.safetensors:
        raise UsageError("--safetensors applies to --to original only (the others always write safetensors)")
    if args.code_from and args.to_format not in ("original", "ovis2"):
        raise UsageError("--code-from applies to --to original and --to ovis2 only")
    if args.to_format is None and args.max_shard_size != "5GB":
        raise UsageError("--max-shard-size applies to --to original, hf-ovis2 and ovis2 only")
    if args.keep_unnormalised and args.to_format != "hf-ovis2":
        raise UsageError("--keep-unnormalised applies to --to hf-ovis2 only")
    report = convert(
        args.src,
        args.out,
        to=args.to_format or "ovis",
        from_format=args.from_format,
        overwrite=args.overwrite,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        safetensors=args.safetensors,
        code_from=args.code_from,
        keep_unnormalised=args.keep_unnormalised,
    )
    target = {
        "original": "the original Ovis v1 format",
        "hf-ovis2": "transformers' Ovis2 layout (hf-ovis2)",
        "ovis2": "the AIDC-AI Ovis2 release layout",
    }.get(args.to_format, "ovis format")
    if args.json:
        print(
            json.dumps(
                {
                    "source": str(report.source),
                    "source_format": report.source_format,
                    "out": str(report.out),
                    "format": report.target_format,
                    "notes": report.notes,
                },
                indent=2,
            )
        )
    else:
        for note in report.notes:
            print(f"  - {note}")
        print(f"wrote {report.out} ({target})")
    return 0
