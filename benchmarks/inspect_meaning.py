"""Do the visual words mean something? ``ovis.inspect`` figures for models side by side, and the
cost of inspecting one image against the visual path's forward pass.

**Meaning** (default): for each model (``LABEL=DIR``; default: the quick-start run's composed
random-init model and each trained stage under ``--run``), over the same ``--images`` synthetic
scenes: words used as top words, usage perplexity, mean token entropy, the mutual information
between a token's top word and the colour / shape of what it sees (with the shuffled-label chance
level), and linear-probe accuracies on the word probabilities and on the raw ViT features. The
trained model's MI with colour is printed as a ratio to the random-init model's.

    python benchmarks/inspect_meaning.py                                  # runs/quickstart
    python benchmarks/inspect_meaning.py --run runs/final --images 300 --chart stages.png
    python benchmarks/inspect_meaning.py --model random=DIR --model trained=DIR2 --json out.json

**Speed** (``--speed``): ``ovis.inspect.word_stats`` (top-k, entropy, chunked) against
``fused_visual_embed`` (the lean visual path's forward, head + softmax + VTE) on the same random
features, at ``--words`` / ``--width`` / ``--hidden`` / ``--patches`` (the paper's 131072 / 1024 /
4096 / 576 by default; smaller for a quick look), median of ``--repeats``, as a ratio.

    python benchmarks/inspect_meaning.py --speed --words 32768
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

STAGES = ("stage1", "stage2", "stage3")


def _models(args: argparse.Namespace) -> list[tuple[str, Path]]:
    if args.model:
        pairs = []
        for item in args.model:
            label, _, directory = item.partition("=")
            if not directory:
                sys.exit(f"--model {item!r}: expected LABEL=DIR")
            pairs.append((label, Path(directory)))
        return pairs
    run = Path(args.run)
    pairs = [("random-init", run / "composed")] + [(stage, run / stage / "final") for stage in STAGES]
    found = [(label, path) for label, path in pairs if path.is_dir()]
    if not found:
        sys.exit(f"no models under {run}: run `ovis quickstart --out {run}` first, or pass --model LABEL=DIR")
    return found


def meaning(args: argparse.Namespace) -> dict:
    import torch

    from ovis.composer import load
    from ovis.inspect import draw, vocabulary_figures
    from ovis.inspect.meaning import synthetic_scenes

    torch.set_num_threads(args.threads)
    rows = {}
    scenes = None
    for label, directory in _models(args):
        model, processor = load(directory, dtype="float32")
        model.eval()
        if scenes is None:
            scenes = synthetic_scenes(args.images, processor.image_processor.image_size, args.seed)
        start = time.perf_counter()
        rows[label] = {
            "model": str(directory),
            **vocabulary_figures(model, processor, scenes, seed=args.seed, probe=True),
        }
        rows[label]["seconds"] = round(time.perf_counter() - start, 1)
        print(_line(label, rows[label]), flush=True)
    base = next(iter(rows))
    for label, row in rows.items():
        if label != base:
            ratio = row["mi_colour_bits"] / max(rows[base]["mi_colour_bits"], 1e-12)
            print(f"MI with colour, {label} / {base}: {ratio:.2f}x")
    if args.chart:
        draw.figures_by_stage(rows, args.chart, title=f"visual vocabulary over {args.images} synthetic scenes")
        print(f"chart: {args.chart}")
    return {"images": args.images, "seed": args.seed, "threads": args.threads, "models": rows}


def _line(label: str, row: dict) -> str:
    return (
        f"{label:>12}: words used {row['words_used']:4d}/{row['vocab_size']} (perplexity "
        f"{row['usage_perplexity']:7.1f}), entropy {row['mean_token_entropy']:.2f} nats | colour MI "
        f"{row['mi_colour_bits']:.3f} bits (shuffled {row['mi_colour_shuffled_bits']:.3f}), probe words "
        f"{row['colour_probe_accuracy_word_probs']:.1%} / ViT {row['colour_probe_accuracy_vit_features']:.1%} | "
        f"shape MI {row['mi_shape_bits']:.3f} (shuffled {row['mi_shape_shuffled_bits']:.3f}), probe words "
        f"{row['shape_probe_accuracy_word_probs']:.1%} / ViT {row['shape_probe_accuracy_vit_features']:.1%}"
    )


def speed(args: argparse.Namespace) -> dict:
    import torch

    from ovis.inspect import word_stats
    from ovis.model.visual_path import fused_visual_embed

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    head = torch.nn.Sequential(
        torch.nn.Linear(args.width, args.words - 2, bias=False), torch.nn.LayerNorm(args.words - 2)
    )
    vte = torch.randn(args.words, args.hidden) * 0.02
    features = torch.randn(1, args.patches, args.width)

    def path() -> None:
        with torch.no_grad():
            fused_visual_embed(features, head[0].weight, head[1].weight, head[1].bias, vte)

    def inspect() -> None:
        word_stats(features, head, top_k=5)

    times: dict[str, list[float]] = {"visual_path_forward": [], "inspect": []}
    for _ in range(args.repeats):  # alternated, so both see the same machine load
        for name, fn in (("visual_path_forward", path), ("inspect", inspect)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["inspect"] / medians["visual_path_forward"]
    print(
        f"V={args.words} D={args.width} H={args.hidden} patches={args.patches}: visual path forward "
        f"{medians['visual_path_forward']:.3f} s, inspect {medians['inspect']:.3f} s (median of {args.repeats}); "
        f"inspect / path = {ratio:.2f}"
    )
    return {
        "words": args.words,
        "width": args.width,
        "hidden": args.hidden,
        "patches": args.patches,
        "threads": args.threads,
        "seconds": medians,
        "ratio_inspect_to_path": round(ratio, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/quickstart", help="a quick-start output directory")
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=DIR", help="models instead (repeatable)")
    parser.add_argument("--images", type=int, default=200, help="synthetic scenes (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--speed", action="store_true", help="time inspect against the visual path instead")
    parser.add_argument("--words", type=int, default=131072)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--patches", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--chart", help="meaning: also draw the figures per model (PNG), e.g. across stages")
    args = parser.parse_args()
    result = speed(args) if args.speed else meaning(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
