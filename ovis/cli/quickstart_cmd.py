"""``ovis quickstart``: the main job on the embedded default (see ``ovis.quickstart``)."""

from __future__ import annotations

import argparse

from ovis.cli.arg_types import non_negative_int, positive_int
from ovis.quickstart import STAGES, VISION, VOCABULARY_SCENES


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "quickstart",
        help="synthesise data, compose the toy pair, pre-train its ViT, train the Ovis stages, "
        "report held-out accuracy",
        description="The embedded default end to end, offline on a CPU: synthetic scenes, "
        "clip-toy + qwen-toy-told (the toy LLM pre-trained offline on the scenes told in words, shipped as "
        "a preset: python -m ovis.told_pretrain rebuilds it), pre-training of the toy ViT on the scenes, "
        "the three Ovis training stages, held-out accuracy per question type, on unseen colour-shape pairs "
        "and, the ceiling, from the scene told in words.",
    )
    p.add_argument("--out", default="runs/quickstart", help="working directory (resumes what is done)")
    p.add_argument("--adapter", choices=["structural", "mlp"], default="structural")
    p.add_argument("--blind", action="store_true", help="blank every image: the no-vision baseline")
    p.add_argument("--steps", action="append", default=[], metavar="STAGE=N", type=_stage_steps,
                   help="override one stage's max_steps (repeatable); stages: " + ", ".join((VISION, *STAGES))
                   + f" ({VISION}: the ViT's pre-training steps, 0 keeps it random)")
    p.add_argument("--train-images", type=positive_int, default=12000)
    p.add_argument("--eval-images", type=positive_int, default=1000)
    p.add_argument("--compositional-images", type=non_negative_int, default=500,
                   help="size of the split that asks about colour-shape pairs never seen in training (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 only where this hardware runs it natively and faster (ovis.precision)")
    p.add_argument("--curve-every", type=positive_int, default=None, metavar="STEPS",
                   help="also evaluate every STEPS steps of the multimodal stages: an accuracy-vs-time curve "
                   "(report.json, curve.png)")
    p.add_argument("--curve-questions", type=positive_int, default=300, help="held-out questions per curve point")
    p.add_argument("--vocabulary-scenes", type=int, default=VOCABULARY_SCENES, metavar="N",
                   help="measure the visual vocabulary after each stage on N synthetic scenes, off the clock "
                   "(report.json, vocabulary.png; ovis.inspect); 0: skip")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(handler=run)


def _stage_steps(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or name not in (VISION, *STAGES) or not value.isdigit() or int(value) < (name != VISION):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected STAGE=N with N >= 1 ({VISION}: N >= 0) and STAGE one of "
            + ", ".join((VISION, *STAGES))
        )
    return name, int(value)


def run(args: argparse.Namespace) -> int:
    from ovis.quickstart import quickstart

    quickstart(
        args.out, adapter=args.adapter, blind=args.blind, steps=dict(args.steps),
        train_images=args.train_images, eval_images=args.eval_images, compositional_images=args.compositional_images,
        seed=args.seed, precision=args.precision, progress=args.progress, curve_every=args.curve_every,
        curve_questions=args.curve_questions, vocabulary_scenes=args.vocabulary_scenes,
    )
    return 0
