"""``ovis quickstart``: the main job on the embedded default (see ``ovis.quickstart``)."""

from __future__ import annotations

import argparse


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "quickstart",
        help="synthesise data, compose the toy pair, train 3 stages, report held-out accuracy",
        description="The embedded default end to end, offline on a CPU: synthetic scenes, "
        "clip-toy + qwen-toy, the three Ovis training stages, held-out accuracy per question type.",
    )
    p.add_argument("--out", default="runs/quickstart", help="working directory (resumes what is done)")
    p.add_argument("--adapter", choices=["structural", "mlp"], default="structural")
    p.add_argument("--blind", action="store_true", help="blank every image: the no-vision baseline")
    p.add_argument("--stage3-steps", type=int, default=None, help="override stage 3's max_steps")
    p.add_argument("--easy-steps", type=int, default=None,
                   help="override max_steps of stage 3's first part (the curriculum on easy scenes)")
    p.add_argument("--train-images", type=int, default=12000)
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curve-every", type=int, default=None, metavar="STEPS",
                   help="also evaluate every STEPS stage-3 steps: an accuracy-vs-time curve (report.json, curve.png)")
    p.add_argument("--curve-questions", type=int, default=300, help="held-out questions per curve point")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ovis.quickstart import quickstart

    quickstart(
        args.out, adapter=args.adapter, blind=args.blind, stage3_steps=args.stage3_steps, easy_steps=args.easy_steps,
        train_images=args.train_images, eval_images=args.eval_images, seed=args.seed, progress=args.progress,
        curve_every=args.curve_every, curve_questions=args.curve_questions,
    )
    return 0
