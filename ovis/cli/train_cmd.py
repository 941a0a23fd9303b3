"""``ovis train --config FILE.yaml [--set key=value ...] [--resume] [--print-config]``.

Single process: ``ovis train --config stage1.yaml`` (with ``deepspeed: null`` in the config, a plain
PyTorch loop without DeepSpeed). Several processes: ``torchrun
--nproc_per_node N $(which ovis) train --config ...`` or ``deepspeed --num_gpus N $(which ovis)
train --config ...`` (the launcher's ``--local_rank`` argument is accepted and ignored: the rank
comes from the environment).
"""

from __future__ import annotations

import argparse
import logging

from ovis.errors import UsageError


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="run a training stage (DeepSpeed or plain PyTorch) and export the trained model",
        description="Train an Ovis model for one stage as described by a YAML config, save resumable "
        "checkpoints in OUTPUT_DIR/checkpoints and export OUTPUT_DIR/final (loadable with ovis.load). "
        "Every config key: docs/training-config.md.",
    )
    p.add_argument("--config", help="training config (YAML); relative paths in it resolve against its directory")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set lr=1e-4 --set data.datasets=[a,b] (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(handler=run)

    v = commands.add_parser(
        "pretrain-vision",
        help="pre-train a toy ViT on the synthetic scenes (the quick-start's first training step)",
        description="Train the vision backbone of a composed model (e.g. clip-toy) to tell the colour and "
        "shape of the object in each quarter of synthetic scenes, and each patch its quarter, as real "
        "ViTs come pre-trained; the held-out colour-shape pairs stay unseen. Writes the model with its "
        "ViT trained to --out and what it reached to --out/vision-pretraining.json "
        "(ovis.train.vision_pretrain).",
    )
    v.add_argument("--model", required=True, help="model directory (from `ovis compose`)")
    v.add_argument("--out", required=True, help="output model directory")
    v.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
    v.add_argument("--batch-size", type=int, default=None, help="scenes per step (default: the recipe's)")
    v.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    v.add_argument(
        "--position-weight",
        type=float,
        default=None,
        help="weight of the per-patch 'which quarter' loss (default: the recipe's; 0: none)",
    )
    v.add_argument(
        "--off-palette",
        type=float,
        default=None,
        help="share of objects drawn in random colours off the task's palette, read for their shape only "
        "(default: the recipe's; 0: the task's colours only)",
    )
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    v.set_defaults(handler=run_vision)


def run_vision(args: argparse.Namespace) -> int:
    from ovis.train.vision_pretrain import VisionPretrainConfig, pretrain_vision_directory

    chosen = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr}
    chosen["position_weight"] = args.position_weight
    chosen["off_palette"] = args.off_palette
    config = VisionPretrainConfig(seed=args.seed, **{k: v for k, v in chosen.items() if v is not None})
    pretrain_vision_directory(args.model, args.out, config, progress=args.progress, log=print)
    print(f"wrote {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: ``ovis --help`` must not import torch.
    from ovis.train.loading import dump_config, load_train_config

    if not args.config and not args.overrides:
        raise UsageError("give --config FILE.yaml (and/or --set key=value overrides)")
    config = load_train_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ovis.train.trainer import train  # torch, transformers and DeepSpeed: only to train

    out = train(config, resume=args.resume, progress=args.progress)
    print(f"exported {out}")
    return 0
