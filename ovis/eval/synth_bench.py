"""Small benchmarks in VLMEvalKit's TSV layout drawn from the synthetic scenes (``ovis eval --synth``).

Three files, one per task kind, so the whole evaluation path runs offline:

* ``SynthBench_MCQ.tsv``: colour / shape / position / count questions with options A-D;
* ``SynthBench_YN.tsv``: MME-style pairs, one yes and one no question per picture
  (categories ``existence`` and ``count``);
* ``SynthBench_VQA.tsv``: the same kinds of questions with short free answers.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from ovis.data.synth import CELLS, COLOURS, NUMBERS, SHAPES, draw_scene, random_scene
from ovis.eval.tsv import write_benchmark


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _options(right: str, pool: list[str], rng: random.Random, n: int = 4) -> tuple[dict[str, str], str]:
    others = rng.sample([p for p in pool if p != right], min(n - 1, len(pool) - 1))
    choices = [*others, right]
    rng.shuffle(choices)
    letters = "ABCD"[: len(choices)]
    return dict(zip(letters, choices, strict=True)), letters[choices.index(right)]


def write_synth_benchmarks(out: str | Path, *, images: int = 60, image_size: int = 64, seed: int = 1234) -> list[Path]:
    """Write the three TSVs under ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    mcq, yesno, vqa = [], [], []
    for n in range(images):
        scene = random_scene(rng)
        png = _png(draw_scene(scene, image_size, rng))
        thing = rng.choice(scene)
        kind = ("colour", "shape", "position", "count")[n % 4]
        if kind == "colour":
            question = f"What colour is the object at the {CELLS[thing.cell]}?"
            answer, pool = thing.colour, list(COLOURS)
        elif kind == "shape":
            question, answer, pool = f"What shape is the {thing.colour} object?", thing.shape, list(SHAPES)
        elif kind == "position":
            question, answer, pool = f"Where is the {thing.colour} object?", CELLS[thing.cell], list(CELLS)
        else:
            question, answer, pool = "How many objects are there?", NUMBERS[len(scene)], list(NUMBERS[1:])
        options, letter = _options(answer, pool, rng)
        mcq.append({"index": n, "image": png, "question": question, **options, "answer": letter, "category": kind})
        vqa.append({"index": n, "image": png, "question": question, "answer": answer, "category": kind})
        # One yes and one no question about the same picture (MME's pairs).
        if n % 2 == 0:
            present = {(t.colour, t.shape) for t in scene}
            absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
            colour, shape = rng.choice(absent)
            pair = [(f"Is there a {thing.colour} {thing.shape}?", "yes"), (f"Is there a {colour} {shape}?", "no")]
            category = "existence"
        else:
            wrong = rng.choice([k for k in range(1, 5) if k != len(scene)])
            pair = [(f"Are there {NUMBERS[len(scene)]} objects?", "yes"),
                    (f"Are there {NUMBERS[wrong]} objects?", "no")]
            category = "count"
        rng.shuffle(pair)
        for k, (q, a) in enumerate(pair):
            yesno.append({"index": 2 * n + k, "image": png, "question": q, "answer": a, "category": category})
    return [
        write_benchmark(out / "SynthBench_MCQ.tsv", mcq),
        write_benchmark(out / "SynthBench_YN.tsv", yesno),
        write_benchmark(out / "SynthBench_VQA.tsv", vqa),
    ]
