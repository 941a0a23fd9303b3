"""Tiling against the v1 layout on high-resolution scenes: held-out accuracy at equal steps.

The same tiny pair (clip-toy + qwen-toy, visual vocabulary 1024), the same high-resolution data
(``ovis data synth --hires``: 256 x 128 scenes with objects 5-8 px across) and the same recipe
(``configs/hires/``: text pre-training of the toy LLM, the paper's stages 1 and 2, stage 3 as a
one-object warm-up then every scene) are trained twice: composed in the v1 layout (one padded 64 px
square per image) and in the tiled layout (``max_partition`` 9: a 2 x 4 grid of 64 px tiles at full
scale plus a global view, ``hidden_stride`` 2). Each is then asked the held-out questions; the
accuracy per question type goes to a JSON and a chart (beside the training loss of both)::

    python benchmarks/tiling_accuracy.py --out runs/tiling-bench      # the configs' budget (2,050 steps)
    python benchmarks/tiling_accuracy.py --steps stage0-text=150 stage1=60 stage2=60 \
        stage3-max1=150 stage3=500                                     # the run in docs/high-resolution.md
    python benchmarks/tiling_accuracy.py --reuse                       # redraw from the runs in --out

By default the two layouts train at the same time, one thread each, so that both see the same
machine load (``--sequential`` runs one after the other on every thread). Numbers depend on the
budget; they are reported whichever way they fall.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "hires"
#: the recipe's runs, in order, each a config in configs/hires/
STAGES = ("stage0-text", "stage1", "stage2", "stage3-max1", "stage3")
#: compose options of each arm (the toy ViT: 64 px, patch 16, so 4 x 4 patches, 2 x 2 after merging)
LAYOUTS: dict[str, dict] = {"v1": {}, "tiled": {"max_partition": 9, "hidden_stride": 2}}
VIT, LLM, VISUAL_VOCAB = "clip-toy", "qwen-toy", 1024


def parse_steps(items: list[str]) -> dict[str, int]:
    steps = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in STAGES or not value.isdigit():
            raise SystemExit(f"--steps {item!r}: expected STAGE=N with STAGE one of {', '.join(STAGES)}")
        steps[name] = int(value)
    return steps


def make_data(out: Path, train_images: int, eval_images: int, text_scenes: int, seed: int) -> Path:
    from ovis.data.synth import HIRES, SynthSpec, write_synthetic_dataset

    info = out / "dataset_info.json"
    if not info.is_file():
        spec = SynthSpec(
            train_images=train_images,
            eval_images=eval_images,
            text_scenes=text_scenes,
            compositional_images=0,
            seed=seed,
            **HIRES,
        )
        write_synthetic_dataset(out, spec, progress=False)
    return info


def mean_loss(stage_dir: Path, last: int = 20) -> float:
    records = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records[-last:]]
    return round(sum(losses) / len(losses), 4)


def run_arm(layout: str, out: Path, data_info: Path, steps: dict[str, int], seed: int, precision: str) -> dict:
    """Compose, train every stage and evaluate one layout; returns (and writes) its figures."""
    import torch

    import ovis
    from ovis.eval.synth import evaluate_synth
    from ovis.train import Trainer, load_train_config

    arm = out / layout
    torch.manual_seed(seed)
    ovis.compose(vit=VIT, llm=LLM, visual_vocab_size=VISUAL_VOCAB, out=arm / "composed", **LAYOUTS[layout])
    previous, seconds, losses, ran = arm / "composed", {}, {}, {}
    for name in STAGES:
        overrides = [
            f"model={previous}",
            f"output_dir={arm / name}",
            f"data.dataset_info={data_info}",
            f"seed={seed}",
            f"precision={precision}",
        ]
        if name in steps:
            overrides.append(f"max_steps={steps[name]}")
        config = load_train_config(CONFIGS / f"{name}.yaml", overrides)
        began = time.perf_counter()
        Trainer(config, progress=False).run()
        seconds[name] = round(time.perf_counter() - began, 1)
        losses[name], ran[name] = mean_loss(arm / name), config.max_steps
        previous = arm / name / "final"
        print(
            f"[{layout}] {name}: {config.max_steps} steps, {seconds[name]:.0f} s, loss {losses[name]:.3f}", flush=True
        )
    model, processor = ovis.load(previous)
    began = time.perf_counter()
    report = evaluate_synth(model, processor, data_info.parent / "eval.json", progress=False)
    tokens = (
        processor.image_positions(processor.tiler.grid_for(256, 128))
        if processor.tiler
        else processor.image_positions()
    )
    result = {
        "layout": layout,
        "compose": LAYOUTS[layout],
        "steps": ran,
        "seconds": seconds,
        "eval_seconds": round(time.perf_counter() - began, 1),
        "final_loss": losses,
        "image_positions": tokens,
        **report.to_dict(),
    }
    (arm / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"[{layout}] held-out accuracy {report.accuracy:.1%}\n{report.table()}", flush=True)
    return result


def loss_curve(arm: Path, window: int = 25) -> tuple[list[float], list[tuple[str, int]]]:
    """The multimodal stages' training loss, step after step, as a moving average over ``window``
    steps within each stage; and where each stage ends."""
    smoothed, ends = [], []
    for name in STAGES[1:]:
        losses = [json.loads(line)["loss"] for line in (arm / name / "metrics.jsonl").read_text().splitlines()]
        for i in range(len(losses)):
            recent = losses[max(0, i - window + 1) : i + 1]
            smoothed.append(sum(recent) / len(recent))
        ends.append((name, len(smoothed)))
    return smoothed, ends


def draw(results: list[dict], out: Path, path: Path, title: str) -> Path:
    """Accuracy per question type for each layout (bars, chance dotted) beside their training loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ovis.data.synth import QUESTION_TYPES
    from ovis.eval.synth import CHANCE

    groups = [*QUESTION_TYPES, "all"]
    fig, (ax, lx) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(results)
    colours = {"v1": "#9e9e9e", "tiled": "#1f77b4"}
    for k, result in enumerate(results):
        values = [result["by_type"].get(g, 0.0) if g != "all" else result["accuracy"] for g in groups]
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(groups))]
        label = f"{result['layout']} ({result['image_positions']} positions per image)"
        colour = colours.get(result["layout"])
        bars = ax.bar(xs, values, width, label=label, color=colour)
        for bar, value in zip(bars, values, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.0%}", ha="center", fontsize=8)
        curve, ends = loss_curve(out / result["layout"])
        lx.plot(range(1, len(curve) + 1), curve, color=colour, label=result["layout"])
    for i, g in enumerate(QUESTION_TYPES):
        ax.hlines(CHANCE[g], i - 0.45, i + 0.45, colors="black", linestyles="dotted", label="chance" if not i else None)
    lx.set_yscale("log")
    start = 0
    for name, end in ends:
        lx.axvline(end, color="black", linewidth=0.5, alpha=0.4)
        lx.text(start + 1, lx.get_ylim()[1], name, rotation=90, va="top", ha="left", fontsize=7)
        start = end
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    lx.set_xlabel("multimodal training step (batch 16)")
    lx.set_ylabel("training loss (moving average, 25 steps)")
    lx.set_title("stages 1-2: captions; stage 3: conversations + captions", fontsize=9)
    lx.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "tiling-bench")
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--train-images", type=int, default=6000)
    parser.add_argument("--eval-images", type=int, default=500)
    parser.add_argument("--text-scenes", type=int, default=6000)
    parser.add_argument("--steps", nargs="*", default=[], metavar="STAGE=N", help="max_steps per stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--sequential", action="store_true", help="one layout after the other, every thread")
    parser.add_argument("--chart", type=Path, default=ROOT / "docs" / "images" / "tiling-accuracy.png")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "tiling_accuracy.json")
    parser.add_argument("--reuse", action="store_true", help="report the runs already in --out (no training)")
    parser.add_argument("--arm", choices=list(LAYOUTS), help=argparse.SUPPRESS)  # one layout, in a child process
    args = parser.parse_args()
    steps = parse_steps(args.steps)
    out = args.out.resolve()
    data_info = make_data(out / "data", args.train_images, args.eval_images, args.text_scenes, args.seed)
    if args.arm:
        run_arm(args.arm, out, data_info, steps, args.seed, args.precision)
        return

    if args.reuse:
        pass
    elif args.sequential:
        for layout in args.layouts:
            run_arm(layout, out, data_info, steps, args.seed, args.precision)
    else:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        children = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--arm",
                    layout,
                    "--out",
                    str(out),
                    "--seed",
                    str(args.seed),
                    "--precision",
                    args.precision,
                    "--steps",
                    *args.steps,
                ],
                env=env,
            )
            for layout in args.layouts
        ]
        if any(child.wait() for child in children):
            raise SystemExit("a layout's run failed (its output is above)")
    results = [json.loads((out / layout / "result.json").read_text()) for layout in args.layouts]

    from ovis.quickstart import machine

    ran = results[0]["steps"]
    summary = {
        "data": {
            "image": [256, 128],
            "object_px": [5, 8],
            "train_images": args.train_images,
            "eval_questions": results[0]["questions"],
            "text_scenes": args.text_scenes,
        },
        "steps": ran,
        "parallel": not args.sequential,
        # each arm's training and evaluation time (under the machine's load at the time)
        "arm_minutes": {r["layout"]: round((sum(r["seconds"].values()) + r["eval_seconds"]) / 60, 1) for r in results},
        "machine": machine(),
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1) + "\n")
    multimodal = sum(v for k, v in ran.items() if k != "stage0-text")
    title = (
        f"v1 vs tiled on 256x128 scenes with 5-8 px objects: held-out accuracy at equal steps\n"
        f"(clip-toy + qwen-toy; {ran['stage0-text']} text + {multimodal} multimodal steps of 16; "
        f"{results[0]['questions']} questions)"
    )
    draw(results, out, args.chart, title)
    print(f"\n{'type':<10}" + "".join(f"{r['layout']:>10}" for r in results))
    from ovis.data.synth import QUESTION_TYPES

    for kind in QUESTION_TYPES:
        print(f"{kind:<10}" + "".join(f"{r['by_type'].get(kind, 0):>10.1%}" for r in results))
    print(f"{'all':<10}" + "".join(f"{r['accuracy']:>10.1%}" for r in results))
    print(f"chart: {args.chart}; figures: {args.json}; minutes per layout: {summary['arm_minutes']}")


if __name__ == "__main__":
    main()
