"""A synthetic multimodal task that a tiny Ovis can learn on a CPU in minutes.

Each image is a 2x2 grid of cells; 1 to 4 cells hold a shape (circle, square, triangle, cross)
in a colour no other object of the scene has. Questions can only be answered by looking:

* ``colour``   - "What colour is the object at the top left?"
* ``shape``    - "What shape is the red object?"
* ``position`` - "Where is the red object?"
* ``count``    - "How many objects are there?"
* ``exists``   - "Is there a green circle?" (yes/no, the "no" ones near misses; yes for exactly
  half the questions about each pair, so the question alone says nothing: :func:`exists_item`)

A few colour-shape pairs (:data:`HELD_OUT_PAIRS`) never occur in a training scene nor in a training
question: they appear only in a compositional split, which asks whether the model composes what
it learned of colours and shapes separately, as the paper claims visual words do.

``write_synthetic_dataset`` writes the images, caption data (stages 1-2 and mixed into stage 3),
instruction conversations (stage 3), the same conversations with the scene told in words instead
of shown (the text-only stage that pre-trains the toy LLM), subsets of small scenes for a
curriculum, the held-out evaluation splits, and the ``dataset_info.json`` describing the training
files.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

from ovis.errors import ConfigError

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
#: the types a compositional question can have: each is about one object (count is about none)
COMPOSITIONAL_TYPES = ("colour", "shape", "position", "exists")
BACKGROUND = (30, 30, 30)
#: colour-shape pairs kept out of training: one per shape, four different colours, so every colour
#: and every shape is still seen in training, just not in these combinations
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "cross"),
    ("blue", "circle"),
    ("yellow", "square"),
)
#: the prompt of a scene told in words, before its first question
SCENE_TEXT_PREFIX = "The picture shows "
#: The generator's version, written into ``synth_spec.json``: data made by another version is
#: different data under the same spec (2: yes/no balanced per pair).
GENERATOR_VERSION = 2

Pair = tuple[str, str]


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


def random_scene(
    rng: random.Random, *, exclude: Iterable[Pair] = (), max_objects: int = 4, with_pair: Pair | None = None
) -> list[Thing]:
    """1 to ``max_objects`` things in distinct cells and colours; no (colour, shape) in ``exclude``
    (``with_pair``, when given, is one of the things, and the only excluded pair allowed)."""
    excluded = set(exclude)
    count = rng.randint(1, max_objects)
    cells = sorted(rng.sample(range(4), count))
    colours = rng.sample(list(COLOURS), count)
    if with_pair is not None and with_pair[0] not in colours:
        colours[rng.randrange(count)] = with_pair[0]
    things = []
    for colour, cell in zip(colours, cells, strict=True):
        if with_pair is not None and colour == with_pair[0]:
            shape = with_pair[1]
        else:
            shape = rng.choice([s for s in SHAPES if (colour, s) not in excluded])
        things.append(Thing(shape, colour, cell))
    return things


def draw_scene(
    scene: list[Thing],
    size: int | tuple[int, int],
    rng: random.Random,
    *,
    object_px: tuple[float, float] | None = None,
    palette: Mapping[str, tuple[int, int, int]] = COLOURS,
) -> Image.Image:
    """The scene on a ``size`` square (or a ``(width, height)`` canvas), each object in its quarter.

    An object's extent is drawn from 0.55-0.8 of a quarter's short side, or from ``object_px``
    (pixels) when given: the high-resolution variant's small objects in a big image. ``palette``
    gives each colour name its RGB (the vision pre-training adds colours outside the task's)."""
    width, height = (size, size) if isinstance(size, int) else size
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    half_w, half_h = width / 2, height / 2
    if width == height:
        half_w = half_h = width // 2  # as the square layout always drew (bit-identical images)
    for thing in scene:
        row, col = divmod(thing.cell, 2)
        extent = rng.uniform(*object_px) if object_px else rng.uniform(0.55, 0.8) * min(half_w, half_h)
        cx = col * half_w + half_w / 2 + rng.uniform(-1, 1) * (half_w - extent) / 2
        cy = row * half_h + half_h / 2 + rng.uniform(-1, 1) * (half_h - extent) / 2
        r = extent / 2
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = palette[thing.colour]
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


#: How a training caption words its scene (one style per image, drawn at random). Each style teaches
#: a look-up the questions need, as next-token prediction: "ordered" lists objects in cell order with
#: the colour right before the shape (colour -> shape, and cell order -> colour); "shuffled" is the
#: same in random object order (no position shortcut); "colour-positions" pairs each colour with
#: its cell, in random order (colour -> position).
CAPTION_STYLES = ("ordered", "shuffled", "colour-positions")


def caption(scene: list[Thing], style: str = "ordered", rng: random.Random | None = None) -> str:
    """The scene in words in one of :data:`CAPTION_STYLES`; "ordered" is "a red circle at the top
    left, a blue cross at the bottom right." (``rng`` shuffles the other styles)."""
    if style not in CAPTION_STYLES:
        raise ConfigError(f"unknown caption style {style!r}; expected one of {', '.join(CAPTION_STYLES)}")
    things = sorted(scene, key=lambda t: t.cell)
    if style != "ordered":
        (rng or random.Random()).shuffle(things)
    if style == "colour-positions":
        return "objects: " + ", ".join(f"{t.colour} {CELLS[t.cell]}" for t in things) + "."
    return ", ".join(f"a {t.colour} {t.shape} at the {CELLS[t.cell]}" for t in things) + "."


def question(
    kind: str,
    scene: list[Thing],
    rng: random.Random,
    *,
    thing: Thing | None = None,
    exclude: Iterable[Pair] = (),
    ask_pair: Pair | None = None,
) -> QA:
    """A question of ``kind`` about ``thing`` (default: a random object of the scene).

    For ``exists``, ``ask_pair`` fixes the pair asked about; otherwise it is the thing's own pair
    (answer yes) or, half the time, an absent near miss (right colour or right shape) outside
    ``exclude`` (answer no): balanced overall but not per pair, which :func:`exists_item` is.
    """
    thing = thing or rng.choice(scene)
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
        if ask_pair is not None:
            colour, shape = ask_pair
        elif rng.random() < 0.5:
            colour, shape = thing.colour, thing.shape
        else:
            excluded = set(exclude)
            absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present and (c, s) not in excluded]
            # Near misses (right colour or right shape) make the question need the image.
            near = [(c, s) for c, s in absent if c in {t.colour for t in scene} or s in {t.shape for t in scene}]
            colour, shape = rng.choice(near or absent)
        answer = "yes" if (colour, shape) in present else "no"
        return QA(kind, f"Is there a {colour} {shape}?", answer)
    raise ConfigError(f"unknown question type {kind!r}; expected one of {', '.join(QUESTION_TYPES)}")


def exists_item(rng: random.Random, pair: Pair, exclude: Iterable[Pair] = ()) -> tuple[list[Thing], QA]:
    """A scene and "Is there a <pair>?" about it, the answer a fair coin: yes, the pair is in the
    scene; no, it is absent but its colour or its shape is there (a near miss).

    The scene is drawn for the answer, not the answer read off a random scene: asked of random
    scenes, pairs that are rarely present (the colours with more training shapes) would mostly be
    answered "no", and a blind model learns that (with the earlier generator, which did so, each
    pair's majority answer scored 54.6% and the blind quick-start 56.0%, against 50%).
    """
    if rng.random() < 0.5:
        scene = random_scene(rng, exclude=exclude, with_pair=pair)
    else:
        while True:
            scene = random_scene(rng, exclude=exclude)
            if all((t.colour, t.shape) != pair for t in scene) and any(
                t.colour == pair[0] or t.shape == pair[1] for t in scene
            ):
                break
    return scene, question("exists", scene, rng, ask_pair=pair)


def training_pairs(exclude: Iterable[Pair] = ()) -> list[Pair]:
    """Every (colour, shape) pair not in ``exclude``, in a fixed order."""
    excluded = set(exclude)
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in excluded]


#: The high-resolution variant (``SynthSpec(**HIRES)``, ``ovis data synth --hires``): a 256 x 128
#: canvas (4 x 2 sides of the toy ViT's 64 px square) with objects 5-8 px across. Squeezed into one
#: padded square (the v1 layout) an object is under 2 px, its shape gone and its colour left in a
#: pixel or so; cut into a 2 x 4 grid of 64 px tiles (``max_partition`` >= 8) every tile is at full
#: scale and the object keeps its 25-70 pixels (tests/test_hires_training.py measures both).
HIRES: dict = {"image_shape": (256, 128), "object_px": (5.0, 8.0)}


@dataclass
class SynthSpec:
    train_images: int = 12000
    eval_images: int = 1000
    image_size: int = 64
    questions_per_image: int = 3
    seed: int = 0
    blank: bool = False  # draw no objects: the same questions over empty images (a blind baseline)
    #: the small-scene subsets written for a curriculum: ``synth-*-max{n}`` holds the training
    #: scenes of at most ``n`` objects
    curriculum: tuple[int, ...] = (1, 2)
    #: text-only scenes for pre-training the LLM (the scene told in words, then questions)
    text_scenes: int = 12000
    #: pairs kept out of training, and the size of the compositional split that asks about them
    held_out_pairs: tuple[Pair, ...] = HELD_OUT_PAIRS
    compositional_images: int = 500
    #: a ``(width, height)`` canvas instead of the ``image_size`` square (the high-resolution variant)
    image_shape: tuple[int, int] | None = None
    #: objects' extent in pixels, drawn uniformly from this range (default: 0.55-0.8 of a quarter)
    object_px: tuple[float, float] | None = None

    @property
    def canvas(self) -> tuple[int, int]:
        """The images' ``(width, height)``."""
        return tuple(self.image_shape) if self.image_shape else (self.image_size, self.image_size)

    def __post_init__(self) -> None:
        if self.image_shape is not None:
            if len(self.image_shape) != 2 or any(int(v) != v or v < 8 for v in self.image_shape):
                raise ConfigError(f"image_shape must be (width, height), whole pixels >= 8; got {self.image_shape}")
            self.image_shape = (int(self.image_shape[0]), int(self.image_shape[1]))
        if self.object_px is not None:
            lo, hi = self.object_px
            room = min(self.canvas) / 2
            if not 0 < lo <= hi <= room:
                raise ConfigError(
                    f"object_px must be (min, max) with 0 < min <= max <= {room:g} (half the "
                    f"canvas's short side, a quarter's side); got {self.object_px}"
                )
            self.object_px = (float(lo), float(hi))
        if not 1 <= self.questions_per_image <= len(QUESTION_TYPES):
            raise ConfigError(f"questions_per_image must be 1-{len(QUESTION_TYPES)}, got {self.questions_per_image}")
        unknown = [p for p in self.held_out_pairs if p[0] not in COLOURS or p[1] not in SHAPES]
        if unknown:
            raise ConfigError(f"held_out_pairs {unknown}: not (colour, shape) pairs of the task")
        if self.compositional_images and not self.held_out_pairs:
            raise ConfigError("compositional_images needs held_out_pairs (set it to 0 for no compositional split)")
        self.held_out_pairs = tuple(tuple(p) for p in self.held_out_pairs)
        self.curriculum = tuple(sorted(set(self.curriculum)))
        if any(not 1 <= n < 4 for n in self.curriculum):
            raise ConfigError(f"curriculum levels must be 1-3 objects, got {self.curriculum}")


def qa_turns(scene: list[Thing], kinds: Sequence[str], rng: random.Random, exclude: Iterable[Pair]) -> list[QA]:
    return [question(kind, scene, rng, exclude=exclude) for kind in kinds]


def conversation_turns(qas: Sequence[QA], first_prefix: str) -> list[dict[str, str]]:
    """LLaVA-style turns: ``first_prefix`` (an image marker, or the scene in words) before the first
    question."""
    turns = []
    for k, qa in enumerate(qas):
        turns.append({"from": "human", "value": (first_prefix if k == 0 else "") + qa.question})
        turns.append({"from": "gpt", "value": qa.answer})
    return turns


def scene_text(scene: list[Thing]) -> str:
    """The scene told in words, as the text-only stage and the text-only evaluation give it."""
    return SCENE_TEXT_PREFIX + caption(scene) + "\n"


def compositional_item(rng: random.Random, index: int, held_out: Sequence[Pair]) -> tuple[list[Thing], QA]:
    """A scene with one held-out pair in it and a question about that object (for ``exists``, half
    the time about a held-out pair that is absent, next to a near miss)."""
    kind = COMPOSITIONAL_TYPES[index % len(COMPOSITIONAL_TYPES)]
    pair = held_out[(index // len(COMPOSITIONAL_TYPES)) % len(held_out)]
    if kind == "exists":
        return exists_item(rng, pair, held_out)
    scene = random_scene(rng, exclude=held_out, with_pair=pair)
    thing = next(t for t in scene if (t.colour, t.shape) == pair)
    return scene, question(kind, scene, rng, thing=thing)


def training_item(rng: random.Random, kinds: Sequence[str], exclude: Sequence[Pair]) -> tuple[list[Thing], list[QA]]:
    """A scene and one question of each of ``kinds`` about it; with an ``exists`` question among
    them, the scene is drawn for it (:func:`exists_item`, a pair not in ``exclude``)."""
    if "exists" not in kinds:
        scene = random_scene(rng, exclude=exclude)
        return scene, qa_turns(scene, kinds, rng, exclude)
    scene, asked = exists_item(rng, rng.choice(training_pairs(exclude)), exclude)
    return scene, [asked if kind == "exists" else question(kind, scene, rng, exclude=exclude) for kind in kinds]


def write_synthetic_dataset(out: str | Path, spec: SynthSpec | None = None, *, progress: bool = True) -> Path:
    """Write the synthetic dataset under ``out``; returns the path of its ``dataset_info.json``."""
    spec = spec or SynthSpec()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(spec.seed)
    held_out = spec.held_out_pairs
    captions, conversations, evaluation, compositional = [], [], [], []
    sizes: list[int] = []  # objects per training scene, for the curriculum subsets
    total = spec.train_images + spec.eval_images + spec.compositional_images
    bar = tqdm(total=total, desc="drawing scenes", unit="img", disable=not progress)

    def save(scene: list[Thing], name: str) -> None:
        image = draw_scene(scene, spec.canvas, rng, object_px=spec.object_px)
        if spec.blank:
            image = Image.new("RGB", image.size, BACKGROUND)
        image.save(out / "images" / name)
        bar.update()

    for i in range(spec.train_images):
        scene, qas = training_item(rng, rng.sample(QUESTION_TYPES, spec.questions_per_image), held_out)
        name = f"train-{i:06d}.png"
        save(scene, name)
        captions.append({"image_path": name, "caption": caption(scene, rng.choice(CAPTION_STYLES), rng)})
        sizes.append(len(scene))
        conversations.append({"id": f"train-{i}", "image": name, "conversations": conversation_turns(qas, "<image>\n")})
    for i in range(spec.train_images, spec.train_images + spec.eval_images):
        scene, (qa,) = training_item(rng, [QUESTION_TYPES[i % len(QUESTION_TYPES)]], held_out)
        name = f"eval-{i:06d}.png"
        save(scene, name)
        evaluation.append(
            {
                "id": f"eval-{i}",
                "image": name,
                "type": qa.kind,
                "question": qa.question,
                "answer": qa.answer,
                "scene": scene_text(scene),
            }
        )
    for k in range(spec.compositional_images):
        scene, qa = compositional_item(rng, k, held_out)
        name = f"compositional-{k:06d}.png"
        save(scene, name)
        compositional.append(
            {
                "id": f"compositional-{k}",
                "image": name,
                "type": qa.kind,
                "question": qa.question,
                "answer": qa.answer,
                "scene": scene_text(scene),
            }
        )
    bar.close()

    text = []
    for i in range(spec.text_scenes):
        scene, qas = training_item(rng, rng.sample(QUESTION_TYPES, spec.questions_per_image), held_out)
        text.append({"id": f"text-{i}", "conversations": conversation_turns(qas, scene_text(scene))})

    _dump(out / "captions.json", captions)
    _dump(out / "conversations.json", conversations)
    _dump(out / "scene-text.json", text)
    _dump(out / "eval.json", evaluation)
    if compositional:
        _dump(out / "eval-compositional.json", compositional)
    info = {
        "synth-captions": _entry("captions.json", "caption"),
        "synth-conversations": _entry("conversations.json", "conversation"),
        # The scene told in words, no image: the toy LLM's text-only pre-training.
        "synth-scene-text": {"meta_file": "scene-text.json", "data_format": "conversation"},
    }
    for level in spec.curriculum:
        # The same records restricted to scenes of at most ``level`` objects: a curriculum starts on
        # these, where finding the object a question names is easy, then goes on with everything.
        keep = [n <= level for n in sizes]
        _dump(out / f"captions-max{level}.json", [c for c, k in zip(captions, keep, strict=True) if k])
        _dump(out / f"conversations-max{level}.json", [c for c, k in zip(conversations, keep, strict=True) if k])
        info[f"synth-captions-max{level}"] = _entry(f"captions-max{level}.json", "caption")
        info[f"synth-conversations-max{level}"] = _entry(f"conversations-max{level}.json", "conversation")
    _dump(out / "dataset_info.json", info)
    _dump(out / "synth_spec.json", {**asdict(spec), "generator": GENERATOR_VERSION})
    return out / "dataset_info.json"


def _entry(meta_file: str, data_format: str) -> dict[str, str]:
    return {"meta_file": meta_file, "image_dir": "images", "data_format": data_format}


def _dump(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def answer_vocabulary() -> list[str]:
    """Every answer the task can have: what a blind model could at best guess among."""
    return sorted({*COLOURS, *SHAPES, *CELLS, *NUMBERS[1:], "yes", "no"})
