"""Does tiling let the model read detail that one padded square loses? Accuracy against steps.

The task is built so that the answer to one question type exists only at full resolution. Each
256 x 128 image holds one square (an odd side of 61-101 px) in one of six colours, filled
with one of four textures that swing, pixel by pixel, between the colour and a darker shade of it:

* ``plain``      - every pixel the mean of the two shades,
* ``horizontal`` - rows alternate (stripes one pixel high),
* ``vertical``   - columns alternate,
* ``checked``    - a one-pixel checkerboard.

The swing is halved on the outermost rows and columns, so every texture has the plain square's
mean and no brighter edge: once the image is shrunk 4x into the v1 layout's 64 px square the
textures are gone (:func:`texture_visibility` measures what is left of them in each
layout's pixels); cut into a 2 x 4 grid of 64 px tiles (``max_partition`` 9) every pixel survives.
Two questions are asked about every image: ``pattern`` (the detail: chance 25%) and ``colour`` (the
control, which survives the shrinking: chance 1/6).

Both layouts are composed from the same tiny pair (clip-toy + qwen-toy, visual vocabulary 1024,
seed 0) and trained by the same recipe with the same seed (PyTorch engine, fp32): the LLM learns to
answer from the square told in words (:data:`WARM_UP`; the paper starts from a pretrained LLM), the
paper's stage 1 teaches the visual head and table on captions, then stage 3 trains all but the ViT on
the conversations and captions, the same held-out questions asked every ``--eval-every`` steps; the
two curves go to a chart and a JSON::

    python benchmarks/tiling_detail.py                       # 800 stage-3 steps per layout, both at once
    python benchmarks/tiling_detail.py --steps 200 --eval-every 50 --train-images 800
    python benchmarks/tiling_detail.py --reuse               # redraw from the runs in --out

By default the two layouts train at the same time, one thread each (the same machine load for
both); ``--sequential`` runs them one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CANVAS = (256, 128)
OBJECT_PX = (61, 101)
BACKGROUND = (30, 30, 30)
#: the texture's second shade, as a fraction of the colour; the plain square is the mean of both
DARK = 0.3
PATTERNS = ("plain", "horizontal", "vertical", "checked")
KINDS = ("pattern", "colour")
LAYOUTS: dict[str, dict] = {"v1": {}, "tiled": {"max_partition": 9, "hidden_stride": 2}}
VIT, LLM, VISUAL_VOCAB = "clip-toy", "qwen-toy", 1024
QUESTIONS = {"pattern": "What pattern is on the square?", "colour": "What colour is the square?"}


def colours() -> dict[str, tuple[int, int, int]]:
    from ovis.data.synth import COLOURS

    return COLOURS


def _taper(i: int, side: int) -> float:
    """Half amplitude on the first and last row (or column): with an odd side, a 1-pixel
    alternation tapered so has zero mean and no first moment, so no trace of it (not even a
    brighter edge) survives a smooth downscale."""
    return 0.5 if i in (0, side - 1) else 1.0


def draw_detail(colour: str, pattern: str, rng: random.Random, canvas: tuple[int, int] = CANVAS) -> Image.Image:
    """One textured square (odd side, drawn from ``OBJECT_PX``) at a random place of ``canvas``."""
    bright = colours()[colour]
    mean = [(1 + DARK) / 2 * c for c in bright]
    swing = [(1 - DARK) / 2 * c for c in bright]
    image = Image.new("RGB", canvas, BACKGROUND)
    side = rng.randrange(OBJECT_PX[0] | 1, OBJECT_PX[1] + 1, 2)
    x0, y0 = rng.randint(2, canvas[0] - side - 2), rng.randint(2, canvas[1] - side - 2)
    pixels = image.load()
    for dy in range(side):
        for dx in range(side):
            if pattern == "plain":
                amplitude = 0.0
            elif pattern == "horizontal":
                amplitude = (-1) ** dy * _taper(dy, side)
            elif pattern == "vertical":
                amplitude = (-1) ** dx * _taper(dx, side)
            else:
                amplitude = (-1) ** (dx + dy) * _taper(dx, side) * _taper(dy, side)
            pixels[x0 + dx, y0 + dy] = tuple(round(m + amplitude * a) for m, a in zip(mean, swing, strict=True))
    return image


def _turns(prefix: str, answers: dict[str, str], rng: random.Random) -> list[dict[str, str]]:
    """Both questions, in a random order, ``prefix`` (the image, or the square in words) first."""
    turns = []
    for k, kind in enumerate(rng.sample(KINDS, len(KINDS))):
        turns.append({"from": "human", "value": (prefix if k == 0 else "") + QUESTIONS[kind]})
        turns.append({"from": "gpt", "value": answers[kind]})
    return turns


def _told(description: str, answers: dict[str, str], rng: random.Random) -> dict:
    """A text-only conversation: the square told in words, then the questions."""
    return {"conversations": _turns(f"The picture shows: {description}\n", answers, rng)}


def write_data(out: Path, train_images: int, eval_images: int, seed: int) -> Path:
    """Images, captions, conversations (both questions per image), held-out questions and a
    ``dataset_info.json``; kept when already there for the same arguments."""
    info = out / "dataset_info.json"
    spec = {
        "train_images": train_images,
        "eval_images": eval_images,
        "seed": seed,
        "canvas": CANVAS,
        "object_px": OBJECT_PX,
        "dark": DARK,
        "version": 2,  # with the text-only conversations
    }
    spec_file = out / "spec.json"
    if info.is_file() and spec_file.is_file() and json.loads(spec_file.read_text()) == json.loads(json.dumps(spec)):
        return info
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    captions, conversations, text, evaluation = [], [], [], []
    names = list(colours())
    for i in range(train_images + eval_images):
        colour, pattern = rng.choice(names), rng.choice(PATTERNS)
        name = f"{'train' if i < train_images else 'eval'}-{i:06d}.png"
        draw_detail(colour, pattern, rng).save(out / "images" / name)
        answers = {"pattern": pattern, "colour": colour}
        if i < train_images:
            captions.append({"image_path": name, "caption": f"A {colour} square, {pattern}."})
            text.append(_told(f"A {colour} square, {pattern}.", answers, rng))
            conversations.append(
                {"id": f"train-{i}", "image": name, "conversations": _turns("<image>\n", answers, rng)}
            )
        else:
            for kind in KINDS:
                evaluation.append(
                    {
                        "id": f"eval-{i}-{kind}",
                        "image": name,
                        "type": kind,
                        "question": QUESTIONS[kind],
                        "answer": answers[kind],
                    }
                )
    files = {"captions.json": captions, "conversations.json": conversations, "text.json": text, "eval.json": evaluation}
    for file, data in files.items():
        (out / file).write_text(json.dumps(data, indent=1) + "\n")
    entries = {
        "detail-text": {"meta_file": "text.json", "data_format": "conversation"},
        "detail-captions": {"meta_file": "captions.json", "image_dir": "images", "data_format": "caption"},
        "detail-conversations": {
            "meta_file": "conversations.json",
            "image_dir": "images",
            "data_format": "conversation",
        },
    }
    info.write_text(json.dumps(entries, indent=1) + "\n")
    spec_file.write_text(json.dumps(spec) + "\n")
    return info


def texture_visibility(processor, image: Image.Image, plain: Image.Image) -> float:
    """The largest difference, in normalised pixel units, between what the model is given for a
    textured image and for the same image with a plain square: how much of the texture is left."""
    prompt = [{"role": "user", "content": "<image>\n" + QUESTIONS["pattern"]}]
    a = processor.encode(prompt, [image]).pixel_values
    b = processor.encode(prompt, [plain]).pixel_values
    return float((a - b).abs().max())


def probe_patterns(model_dir: Path, data_dir: Path, train_images: int = 600, seed: int = 0) -> float:
    """Held-out accuracy of a linear probe that reads the pattern from what the model's visual path
    gives the LLM (every visual embedding of the image, standardised, one softmax layer trained with
    Adam and a little weight decay on ``train_images`` training images): is the texture there at all?"""
    import torch

    import ovis
    from ovis.interfaces.image import load_image

    model, processor = ovis.load(model_dir)
    model.eval()
    prompt = [{"role": "user", "content": "<image>\n" + QUESTIONS["pattern"]}]

    def embeddings(names: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack(
                [
                    model.encode_images(
                        processor.encode(prompt, [load_image(data_dir / "images" / n)]).pixel_values
                    ).flatten()
                    for n in names
                ]
            )

    captions = json.loads((data_dir / "captions.json").read_text())[:train_images]
    held_out = [item for item in json.loads((data_dir / "eval.json").read_text()) if item["type"] == "pattern"]
    x = embeddings([c["image_path"] for c in captions])
    y = torch.tensor([PATTERNS.index(c["caption"].rsplit(", ", 1)[1].rstrip(".")) for c in captions])
    x_test = embeddings([item["image"] for item in held_out])
    y_test = torch.tensor([PATTERNS.index(item["answer"]) for item in held_out])
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mean) / std, (x_test - mean) / std
    torch.manual_seed(seed)
    weights = torch.zeros(x.shape[1], len(PATTERNS), requires_grad=True)
    optimizer = torch.optim.Adam([weights], lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weights, y) + 1e-3 * weights.pow(2).sum()
        loss.backward()
        optimizer.step()
    return float(((x_test @ weights).argmax(1) == y_test).float().mean())


def evaluate(model, processor, items: list[dict], image_dir: Path, batch_size: int = 50) -> dict[str, float]:
    """Held-out accuracy per question type (greedy answers, exact match)."""
    import torch

    from ovis.interfaces.image import load_image

    correct = dict.fromkeys(KINDS, 0)
    total = dict.fromkeys(KINDS, 0)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            images = [[load_image(image_dir / item["image"])] for item in chunk]
            messages = [[{"role": "user", "content": "<image>\n" + item["question"]}] for item in chunk]
            batch = processor(messages, images)
            out = model.generate(
                batch["input_ids"], batch["pixel_values"], batch["attention_mask"], max_new_tokens=12, do_sample=False
            )
            for item, tokens in zip(chunk, out, strict=True):
                total[item["type"]] += 1
                correct[item["type"]] += processor.decode(tokens).strip().strip(".").lower() == item["answer"]
    return {kind: correct[kind] / total[kind] for kind in KINDS if total[kind]}


#: the recipe before the measured stage: ``(name, train_modules, datasets, steps, lr)``; the LLM first
#: learns to answer from the square told in words (the pretrained LLM the paper starts from), then the
#: paper's stage 1 teaches the visual head and table on captions with the LLM frozen
WARM_UP = (
    ("stage0-text", "[llm]", "[detail-text]", 250, 1e-3),
    ("stage1", "[visual_tokenizer.head, vte]", "[detail-captions]", 100, 1e-3),
)
#: what stage 3 trains: everything but the ViT, whose features keep the texture (a linear probe reads
#: it from the composed model's visual embeddings); trained, the ViT learns colour first and loses it
STAGE3_MODULES = "[llm, visual_tokenizer.head, vte]"


def _config(layout_dir: Path, name: str, model: Path, data_info: Path, seed: int, **keys: object):
    from ovis.train import load_train_config

    overrides = {
        "model": model,
        "output_dir": layout_dir / name,
        "data.dataset_info": data_info,
        "per_device_batch_size": 16,
        "warmup_ratio": 0.05,
        "lr_scheduler": "cosine",
        "precision": "fp32",
        "deepspeed": "null",
        "logging_steps": 25,
        "seed": seed,
        **keys,
    }
    overrides["save_steps"] = int(overrides["max_steps"]) + 1
    return load_train_config(None, [f"{key}={value}" for key, value in overrides.items()])


def run_arm(layout: str, out: Path, data_info: Path, args: argparse.Namespace) -> dict:
    """Compose one layout, run the warm-up stages, then stage 3 (all but the ViT) with the held-out
    questions asked every ``eval_every`` steps; writes ``result.json``."""
    import torch

    import ovis
    from ovis.train import Trainer

    arm = out / layout
    torch.manual_seed(args.seed)
    previous = arm / "composed"
    ovis.compose(vit=VIT, llm=LLM, visual_vocab_size=VISUAL_VOCAB, out=previous, overwrite=True, **LAYOUTS[layout])
    items = json.loads((data_info.parent / "eval.json").read_text())
    images = data_info.parent / "images"
    began = time.perf_counter()
    for name, modules, datasets, steps, lr in WARM_UP:
        stage = int(name[5])
        config = _config(
            arm,
            name,
            previous,
            data_info,
            args.seed,
            stage=stage,
            train_modules=modules,
            **{"data.datasets": datasets},
            max_steps=steps,
            lr=lr,
            reinit_last_block=False,
        )
        Trainer(config, progress=False).run()
        previous = arm / name / "final"
        print(f"[{layout}] {name}: {steps} steps", flush=True)
    config = _config(
        arm,
        "stage3",
        previous,
        data_info,
        args.seed,
        stage=3,
        train_modules=STAGE3_MODULES,
        **{"data.datasets": "[detail-conversations, detail-captions]"},
        max_steps=args.steps,
        lr=args.lr,
        min_lr_ratio=0.05,
    )
    curve: list[dict] = []
    trainer = Trainer(config, progress=False)

    def measure(step: int) -> None:
        started = time.perf_counter()
        accuracy = evaluate(trainer.model, trainer.processor, items, images)
        trainer.engine.train()
        curve.append({"step": step, **accuracy})
        print(
            f"[{layout}] stage 3 step {step}: "
            + ", ".join(f"{k} {v:.1%}" for k, v in accuracy.items())
            + f" ({time.perf_counter() - started:.0f} s to evaluate)",
            flush=True,
        )

    trainer.on_step_end = lambda step, record: (
        measure(step) if step % args.eval_every == 0 or step == args.steps else None
    )
    trainer.setup()
    measure(0)
    trainer.fit()
    trainer.export()
    processor = trainer.processor
    plain = draw_detail("red", "plain", random.Random(1))
    striped = draw_detail("red", "checked", random.Random(1))
    result = {
        "layout": layout,
        "compose": LAYOUTS[layout],
        "warm_up": {name: steps for name, _, _, steps, _ in WARM_UP},
        "steps": args.steps,
        "minutes": round((time.perf_counter() - began) / 60, 1),
        "image_positions": processor.image_positions(processor.tiler.grid_for(*CANVAS))
        if processor.tiler
        else processor.image_positions(),
        "texture_visibility": round(texture_visibility(processor, striped, plain), 4),
        "questions": len(items),
        "curve": curve,
        "final_loss": json.loads((arm / "stage3" / "metrics.jsonl").read_text().splitlines()[-1])["loss"],
    }
    (arm / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def draw(results: list[dict], path: Path, title: str) -> Path:
    """Held-out accuracy against training steps: one line per layout and question type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours_ = {"v1": "#9e9e9e", "tiled": "#1f77b4"}
    styles = {"pattern": "-", "colour": "--"}
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    for result in results:
        for kind in KINDS:
            steps = [point["step"] for point in result["curve"]]
            values = [point[kind] for point in result["curve"]]
            ax.plot(
                steps,
                values,
                styles[kind],
                color=colours_[result["layout"]],
                marker="o",
                markersize=3,
                label=f"{result['layout']} ({result['image_positions']} positions): {kind}",
            )
    ax.axhline(1 / len(PATTERNS), color="black", linestyle="dotted", linewidth=1, label="pattern chance")
    ax.axhline(1 / len(colours()), color="black", linestyle=(0, (1, 4)), linewidth=1, label="colour chance")
    probes = [r for r in results if "probe" in r]
    if probes:
        text = "linear probe, pattern from the visual embeddings\n(held-out; composed -> trained):\n" + "\n".join(
            f"{r['layout']}: {r['probe']['composed']:.0%} -> {r['probe']['trained']:.0%}" for r in probes
        )
        ax.text(
            0.6,
            0.03,
            text,
            transform=ax.transAxes,
            va="bottom",
            fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
        )
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("stage-3 step (batch 16; LLM, visual head and VTE train; after the text and stage-1 warm-up)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "tiling-detail")
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sequential", action="store_true", help="one layout after the other, every thread")
    parser.add_argument("--chart", type=Path, default=ROOT / "docs" / "images" / "tiling-detail.png")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "tiling_detail.json")
    parser.add_argument("--reuse", action="store_true", help="report the runs already in --out (no training)")
    parser.add_argument("--arm", choices=list(LAYOUTS), help=argparse.SUPPRESS)  # one layout, in a child process
    args = parser.parse_args()
    out = args.out.resolve()
    data_info = write_data(out / "data", args.train_images, args.eval_images, args.seed)
    if args.arm:
        run_arm(args.arm, out, data_info, args)
        return
    if args.reuse:
        pass
    elif args.sequential:
        for layout in args.layouts:
            run_arm(layout, out, data_info, args)
    else:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        passed = [a for a in sys.argv[1:] if a != "--sequential"]
        children = [
            subprocess.Popen([sys.executable, __file__, *passed, "--arm", layout], env=env) for layout in args.layouts
        ]
        if any(child.wait() for child in children):
            raise SystemExit("a layout's run failed (its output is above)")
    results = [json.loads((out / layout / "result.json").read_text()) for layout in args.layouts]
    for result in results:  # the probes, once per run (kept in its result.json)
        if "probe" not in result:
            arm = out / result["layout"]
            result["probe"] = {
                name: round(probe_patterns(arm / where, out / "data"), 4)
                for name, where in (("composed", "composed"), ("trained", "stage3/final"))
            }
            (arm / "result.json").write_text(json.dumps(result, indent=1) + "\n")

    from ovis.quickstart import machine

    summary = {
        "data": {
            "canvas": CANVAS,
            "object_px": OBJECT_PX,
            "train_images": args.train_images,
            "eval_questions": results[0]["questions"],
            "patterns": PATTERNS,
        },
        "steps": results[0]["steps"],
        "parallel": not args.sequential,
        "machine": machine(),
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1) + "\n")
    title = (
        f"v1 vs tiled: a 61-101 px square on a 256x128 image, textured at 1 px (pattern) in one of 6 colours\n"
        f"(clip-toy + qwen-toy, ViT frozen, {results[0]['steps']} steps of 16, "
        f"{results[0]['questions']} held-out questions)"
    )
    draw(results, args.chart, title)
    print(f"\n{'layout':<8}{'texture left':>14}" + "".join(f"{k:>10}" for k in KINDS) + f"{'probe':>20}")
    for r in results:
        last, probe = r["curve"][-1], r["probe"]
        print(
            f"{r['layout']:<8}{r['texture_visibility']:>14.3f}"
            + "".join(f"{last[k]:>10.1%}" for k in KINDS)
            + f"{probe['composed']:>10.1%}{probe['trained']:>10.1%}"
        )
    print("(probe: a linear probe's held-out pattern accuracy on the visual embeddings, composed / trained)")
    print(f"chart: {args.chart}; figures: {args.json}")


if __name__ == "__main__":
    main()
