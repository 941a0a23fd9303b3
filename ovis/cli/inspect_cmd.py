"""``ovis inspect image|vocab|meaning``: see the visual words (the Python API is ``ovis.inspect``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ovis.cli.arg_types import positive_int
from ovis.errors import InputFileError, UsageError


def add_commands(commands: argparse._SubParsersAction) -> None:
    inspect = commands.add_parser(
        "inspect",
        help="see the visual words: per-patch maps, vocabulary usage, measured meaning",
        description="Look inside the structural embedding: which visual words each patch fires (image), how a "
        "model uses its vocabulary over many images (vocab), and how much the words say about colour and shape "
        "on labelled synthetic scenes (meaning). Models with the MLP adapter have no vocabulary and are refused.",
    )
    sub = inspect.add_subparsers(dest="inspect_command", metavar="COMMAND", required=True)

    p = sub.add_parser("image", help="one image: top words, entropy and top-word maps (PNG + JSON)")
    _model_arguments(p)
    p.add_argument("image", help="image file")
    p.add_argument(
        "--max-partition", type=positive_int, help="tiled-layout models: at most N tiles (default: the model's own)"
    )
    p.add_argument("--top-k", type=positive_int, default=5, help="words per token in the JSON (default 5)")
    p.set_defaults(handler=run_image)

    p = sub.add_parser("vocab", help="N images: word usage histogram and exemplar sheet (PNG + JSON)")
    _model_arguments(p)
    p.add_argument("--data", required=True, help="dataset_info.json (training data) or a VLMEvalKit-format .tsv")
    p.add_argument("--datasets", nargs="+", metavar="NAME", help="with dataset_info.json: which (default: all)")
    p.add_argument("--images", type=positive_int, default=100, help="how many images (default 100)")
    p.add_argument("--words", type=positive_int, default=16, help="rows of the exemplar sheet (default 16)")
    p.add_argument("--per-word", type=positive_int, default=8, help="exemplars per word (default 8)")
    p.add_argument("--meaning", action="store_true", help="also run 'ovis inspect meaning' into the same OUT")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(handler=run_vocab)

    p = sub.add_parser("meaning", help="labelled synthetic scenes: MI of words with colour/shape, linear probes")
    _model_arguments(p)
    p.add_argument("--images", type=positive_int, default=200, help="synthetic scenes to draw (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-probe", dest="probe", action="store_false", help="mutual information only")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(handler=run_meaning)


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (ovis, Ovis v1 or hf-ovis2 layout)")
    p.add_argument("--out", required=True, help="output directory (created; files in it are replaced)")
    p.add_argument("--device", help="cpu, cuda... (default: cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")


def _load(args: argparse.Namespace, max_partition: int | None = None):
    from ovis.composer import load
    from ovis.inspect.words import check_inspectable

    model, processor = load(args.model, dtype=args.dtype, device=args.device)
    check_inspectable(model)
    if max_partition is not None:
        if processor.tiling is None:
            raise UsageError(
                f"--max-partition {max_partition}: {args.model} uses the v1 layout (one square per "
                "image), not the tiled layout"
            )
        from dataclasses import replace

        from ovis.tiling import Tiler

        processor.tiling = replace(processor.tiling, max_partition=max_partition)
        processor.tiler = Tiler(processor.image_processor.spec, processor.tiling)
    return model.eval(), processor


def _out(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def run_image(args: argparse.Namespace) -> int:
    from ovis.inspect import draw, patch_words

    image = Path(args.image)
    if not image.is_file():
        raise InputFileError(f"{image}: image file not found" if not image.is_dir() else f"{image} is a directory")
    model, processor = _load(args, args.max_partition)
    words = patch_words(model, processor, image, top_k=args.top_k)
    out = _out(args)
    picture = draw.image_words(image, words, out / f"{image.stem}-words.png", title=f"{image.name}: visual words")
    data = {"model": str(args.model), "image": str(image), **words.to_dict()}
    _write_json(out / f"{image.stem}-words.json", data)
    summary = data["summary"]
    print(
        f"{summary['tokens']} tokens, {summary['distinct_top_words']} distinct top words, mean entropy "
        f"{summary['mean_entropy']:.3f} nats (max {summary['max_entropy']:.3f}), mean effective words "
        f"{summary['mean_effective_words']:.1f}"
    )
    print(f"wrote {picture} and {out / f'{image.stem}-words.json'}")
    return 0


def _images(args: argparse.Namespace) -> list:
    data = Path(args.data)
    if not data.is_file():
        raise InputFileError(f"--data {data}: not found" if not data.is_dir() else f"--data {data} is a directory")
    if data.suffix.lower() == ".tsv":
        if args.datasets:
            raise UsageError("--datasets names entries of a dataset_info.json; a .tsv is one benchmark")
        from ovis.eval.tsv import read_benchmark

        images, seen = [], set()
        for item in read_benchmark(data).items:
            for encoded in item.images:
                if encoded not in seen:
                    seen.add(encoded)
                    images.append(encoded)
        images = images[: args.images]
    elif data.suffix.lower() == ".json":
        from ovis.inspect.sources import images_from_dataset_info

        images = images_from_dataset_info(data, args.datasets, args.images)
    else:
        raise UsageError(f"--data {data}: expected a dataset_info.json or a VLMEvalKit-format .tsv")
    if not images:
        raise InputFileError(f"--data {data}: no images in it")
    return images


def run_vocab(args: argparse.Namespace) -> int:
    from ovis.inspect import draw, vocab_usage

    images = _images(args)
    model, processor = _load(args)
    usage = vocab_usage(model, processor, images, per_word=args.per_word, progress=args.progress)
    out = _out(args)
    histogram = draw.usage_histogram(usage, out / "usage.png")
    sheet = draw.exemplar_sheet(usage, images, out / "exemplars.png", words=args.words)
    names = [str(image) if not isinstance(image, bytes) else f"{args.data}#{k}" for k, image in enumerate(images)]
    _write_json(
        out / "vocab.json", {"model": str(args.model), "data": str(args.data), "image_files": names, **usage.to_dict()}
    )
    summary = usage.summary()
    print(
        f"{summary['words_used']} of {summary['vocab_size']} words used as top words over {summary['images']} "
        f"images ({summary['tokens']} tokens); usage perplexity {summary['usage_perplexity']:.1f}"
    )
    print(f"wrote {histogram}, {sheet} and {out / 'vocab.json'}")
    if args.meaning:
        args.seed, args.probe = 0, True
        return _meaning(args, model, processor, out)
    return 0


def run_meaning(args: argparse.Namespace) -> int:
    model, processor = _load(args)
    return _meaning(args, model, processor, _out(args))


def _meaning(args: argparse.Namespace, model, processor, out: Path) -> int:
    from ovis.inspect import measure_meaning

    scenes = args.images if args.images >= 2 else 2
    report = measure_meaning(model, processor, scenes, seed=args.seed, probe=args.probe, progress=args.progress)
    _write_json(out / "meaning.json", {"model": str(args.model), **report.to_dict()})
    for kind, figures in report.by_kind.items():
        line = (
            f"{kind}: MI {figures['mi_bits']:.3f} bits (shuffled labels {figures['mi_shuffled_bits']:.3f}; "
            f"label entropy {figures['label_entropy_bits']:.3f})"
        )
        if "probe_accuracy_word_probs" in figures:
            line += (
                f"; probe on word probabilities {figures['probe_accuracy_word_probs']:.1%}, on ViT features "
                f"{figures['probe_accuracy_vit_features']:.1%} (majority {figures['majority_accuracy']:.1%})"
            )
        print(line)
    print(f"wrote {out / 'meaning.json'}", file=sys.stderr)
    return 0
