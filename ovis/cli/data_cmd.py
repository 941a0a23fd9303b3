"""``ovis data synth --out DIR``: write the synthetic scene dataset."""

from __future__ import annotations

import argparse


def add_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="datasets: generate synthetic data")
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "synth",
        help="write a synthetic multimodal dataset (shapes, colours, positions, counts)",
        description="Draw synthetic scenes and write caption data (stages 1-2), instruction "
        "conversations (stage 3) with curriculum subsets of small scenes, the scenes told in words "
        "(text-only pre-training, stage 0), a held-out evaluation split, a compositional split on "
        "colour-shape pairs kept out of training, and the dataset_info.json.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--train-images", type=int, default=12000)
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--questions-per-image", type=int, default=3, choices=range(1, 6), metavar="1-5")
    p.add_argument("--text-scenes", type=int, default=12000, help="scenes told in words, for stage 0")
    p.add_argument("--compositional-images", type=int, default=500,
                   help="held-out questions on the colour-shape pairs kept out of training (0: none)")
    p.add_argument("--blank", action="store_true", help="draw no objects (a blind baseline's data)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from ovis.data.synth import SynthSpec, write_synthetic_dataset

    spec = SynthSpec(
        train_images=args.train_images,
        eval_images=args.eval_images,
        image_size=args.image_size,
        questions_per_image=args.questions_per_image,
        seed=args.seed,
        text_scenes=args.text_scenes,
        compositional_images=args.compositional_images,
        blank=args.blank,
    )
    info = write_synthetic_dataset(args.out, spec)
    print(f"wrote {spec.train_images} training, {spec.eval_images} evaluation and {spec.compositional_images} "
          f"compositional images, {spec.text_scenes} text-only scenes; dataset info: {info}")
    return 0
