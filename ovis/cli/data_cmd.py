"""``ovis data synth --out DIR``: write the synthetic scene dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from ovis.cli.arg_types import non_negative_int, positive_int


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
    p.add_argument("--out", required=True, help="output directory (new, or empty; see --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds (once the new data is written)")
    p.add_argument("--train-images", type=non_negative_int, default=12000)
    p.add_argument("--eval-images", type=non_negative_int, default=1000)
    p.add_argument("--image-size", type=positive_int, default=64)
    p.add_argument("--questions-per-image", type=int, default=3, choices=range(1, 6), metavar="1-5")
    p.add_argument("--text-scenes", type=non_negative_int, default=12000, help="scenes told in words, for stage 0")
    p.add_argument(
        "--compositional-images",
        type=non_negative_int,
        default=500,
        help="held-out questions on the colour-shape pairs kept out of training (0: none)",
    )
    p.add_argument("--blank", action="store_true", help="draw no objects (a blind baseline's data)")
    p.add_argument("--seed", type=int, default=0)
    hires = p.add_argument_group("high resolution (for the tiled layout; docs/high-resolution.md)")
    hires.add_argument(
        "--hires",
        action="store_true",
        help="256x128 scenes with objects 5-8 px across: small objects that one padded "
        "square of the toy ViT cannot resolve and 64 px tiles can (the defaults below)",
    )
    hires.add_argument(
        "--image-shape",
        type=_pair("x", int),
        metavar="WxH",
        help="a width x height canvas instead of the --image-size square (e.g. 256x128)",
    )
    hires.add_argument(
        "--object-px",
        type=_pair("-", float),
        metavar="MIN-MAX",
        help="objects' extent in pixels (e.g. 5-8); default: 0.55-0.8 of a quarter's side",
    )
    p.set_defaults(handler=run_synth)


def _pair(separator: str, kind: type):
    """An argparse type for two numbers joined by ``separator`` ("256x128", "5-8")."""

    def parse(text: str) -> tuple:
        parts = text.lower().split(separator)
        try:
            if len(parts) != 2:
                raise ValueError
            return kind(parts[0]), kind(parts[1])
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected two {kind.__name__} numbers joined by {separator!r}"
            ) from None

    return parse


def run_synth(args: argparse.Namespace) -> int:
    from ovis.data.synth import HIRES, SynthSpec, write_synthetic_dataset
    from ovis.fsutil import atomic_directory, check_output_dir

    hires = dict(HIRES) if args.hires else {}
    if args.image_shape:
        hires["image_shape"] = args.image_shape
    if args.object_px:
        hires["object_px"] = args.object_px

    spec = SynthSpec(
        train_images=args.train_images,
        eval_images=args.eval_images,
        image_size=args.image_size,
        questions_per_image=args.questions_per_image,
        seed=args.seed,
        text_scenes=args.text_scenes,
        compositional_images=args.compositional_images,
        blank=args.blank,
        **hires,
    )
    check_output_dir(args.out, overwrite=args.overwrite)
    with atomic_directory(args.out) as tmp:  # (what --out held stays until the new data is complete)
        write_synthetic_dataset(tmp, spec)
    info = Path(args.out) / "dataset_info.json"
    print(
        f"wrote {spec.canvas[0]}x{spec.canvas[1]} images: {spec.train_images} training, "
        f"{spec.eval_images} evaluation and {spec.compositional_images} compositional images, "
        f"{spec.text_scenes} text-only scenes; dataset info: {info}"
    )
    return 0
