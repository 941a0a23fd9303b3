"""A synthetic multimodal task that a tiny Ovis can learn on a CPU in minutes.

Each image is a 2x2 grid of cells; 1 to 4 cells hold a shape (circle, square, triangle, cross)
in a colour no other object of the scene has. Questions can only be answered by looking:

* ``colour``   - "What colour is the object at the top left?"
* ``shape``    - "What shape is the red object?"
* ``position`` - "Where is the red object?"
* ``count``    - "How many objects are there?"
* ``exists``   - "Is there a green circle?" (yes/no, balanced)

``write_synthetic_dataset`` writes images, caption data (stages 1-2), multi-turn instruction
conversations (stage 3), a held-out evaluation split of single questions with their answers and
types, and the ``dataset_info.json`` describing the training files.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "cross")
CELLS = ("top left", "top right", "bottom left", "bottom right")
NUMBERS = ("zero", "one", "two", "three", "four")
QUESTION_TYPES = ("colour", "shape", "position", "count", "exists")
BACKGROUND = (30, 30, 30)


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    cell: int  # index into CELLS


@dataclass(frozen=True)
class QA:
    kind: str
    question: str
    answer: str


def random_scene(rng: random.Random) -> list[Thing]:
    count = rng.randint(1, 4)
    cells = sorted(rng.sample(range(4), count))
    colours = rng.sample(list(COLOURS), count)
    return [Thing(rng.choice(SHAPES), colour, cell) for colour, cell in zip(colours, cells, strict=True)]


def draw_scene(scene: list[Thing], size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    half = size // 2
    for thing in scene:
        row, col = divmod(thing.cell, 2)
        extent = rng.uniform(0.55, 0.8) * half
        cx = col * half + half / 2 + rng.uniform(-1, 1) * (half - extent) / 2
        cy = row * half + half / 2 + rng.uniform(-1, 1) * (half - extent) / 2
        r = extent / 2
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = COLOURS[thing.colour]
        if thing.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif thing.shape == "square":
            draw.rectangle(box, fill=fill)
        elif thing.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        else:  # cross
            w = r / 2.5
            draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
            draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    return image


def caption(scene: list[Thing]) -> str:
    parts = [f"a {t.colour} {t.shape} at the {CELLS[t.cell]}" for t in scene]
    return ", ".join(parts) + "."


def question(kind: str, scene: list[Thing], rng: random.Random) -> QA:
    thing = rng.choice(scene)
    if kind == "colour":
        return QA(kind, f"What colour is the object at the {CELLS[thing.cell]}?", thing.colour)
    if kind == "shape":
        return QA(kind, f"What shape is the {thing.colour} object?", thing.shape)
    if kind == "position":
        return QA(kind, f"Where is the {thing.colour} object?", CELLS[thing.cell])
    if kind == "count":
        return QA(kind, "How many objects are there?", NUMBERS[len(scene)])
    if kind == "exists":
        present = {(t.colour, t.shape) for t in scene}
        if rng.random() < 0.5:
            colour, shape = thing.colour, thing.shape
        else:
            absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
            # Near misses (right colour or right shape) make the question need the image.
            near = [(c, s) for c, s in absent if c in {t.colour for t in scene} or s in {t.shape for t in scene}]
            colour, shape = rng.choice(near or absent)
        answer = "yes" if (colour, shape) in present else "no"
        return QA(kind, f"Is there a {colour} {shape}?", answer)
    raise ValueError(f"unknown question type {kind!r}; expected one of {', '.join(QUESTION_TYPES)}")


@dataclass
class SynthSpec:
    train_images: int = 12000
    eval_images: int = 1000
    image_size: int = 64
    questions_per_image: int = 3
    seed: int = 0
    blank: bool = False  # draw no objects: the same questions over empty images (a blind baseline)
    easy_max_objects: int = 2  # the ``*-easy`` subsets: training scenes with at most this many objects


def _scenes(n: int, rng: random.Random, size: int, blank: bool) -> Iterator[tuple[list[Thing], Image.Image]]:
    for _ in range(n):
        scene = random_scene(rng)
        image = draw_scene(scene, size, rng)
        yield scene, (Image.new("RGB", (size, size), BACKGROUND) if blank else image)


def write_synthetic_dataset(out: str | Path, spec: SynthSpec | None = None, *, progress: bool = True) -> Path:
    """Write the synthetic dataset under ``out``; returns the path of its ``dataset_info.json``."""
    spec = spec or SynthSpec()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(spec.seed)
    captions, conversations, evaluation = [], [], []
    easy: list[bool] = []  # per training scene: part of the ``*-easy`` subsets (a curriculum's start)
    total = spec.train_images + spec.eval_images
    bar = tqdm(total=total, desc="drawing scenes", unit="img", disable=not progress)
    for i, (scene, image) in enumerate(_scenes(total, rng, spec.image_size, spec.blank)):
        name = f"{'train' if i < spec.train_images else 'eval'}-{i:06d}.png"
        image.save(out / "images" / name)
        bar.update()
        if i < spec.train_images:
            captions.append({"image_path": name, "caption": caption(scene)})
            easy.append(len(scene) <= spec.easy_max_objects)
            kinds = rng.sample(QUESTION_TYPES, spec.questions_per_image)
            turns = []
            for k, kind in enumerate(kinds):
                qa = question(kind, scene, rng)
                turns.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + qa.question})
                turns.append({"from": "gpt", "value": qa.answer})
            conversations.append({"id": f"train-{i}", "image": name, "conversations": turns})
        else:
            kind = QUESTION_TYPES[i % len(QUESTION_TYPES)]
            qa = question(kind, scene, rng)
            evaluation.append({"id": f"eval-{i}", "image": name, "type": kind,
                               "question": qa.question, "answer": qa.answer})
    bar.close()
    _dump(out / "captions.json", captions)
    _dump(out / "conversations.json", conversations)
    _dump(out / "captions-easy.json", [c for c, e in zip(captions, easy, strict=True) if e])
    _dump(out / "conversations-easy.json", [c for c, e in zip(conversations, easy, strict=True) if e])
    _dump(out / "eval.json", evaluation)
    info = {
        "synth-captions": {"meta_file": "captions.json", "image_dir": "images", "data_format": "caption"},
        "synth-conversations": {"meta_file": "conversations.json", "image_dir": "images",
                                "data_format": "conversation"},
        # The same records restricted to scenes of at most ``easy_max_objects`` objects: the
        # quick-start's stage 3 starts on these (a curriculum), where finding the object a question
        # names is easy, then goes on with everything.
        "synth-captions-easy": {"meta_file": "captions-easy.json", "image_dir": "images", "data_format": "caption"},
        "synth-conversations-easy": {"meta_file": "conversations-easy.json", "image_dir": "images",
                                     "data_format": "conversation"},
    }
    _dump(out / "dataset_info.json", info)
    return out / "dataset_info.json"


def _dump(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def answer_vocabulary() -> list[str]:
    """Every answer the task can have: what a blind model could at best guess among."""
    return sorted({*COLOURS, *SHAPES, *CELLS, *NUMBERS[1:], "yes", "no"})
