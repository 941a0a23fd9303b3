"""Held-out accuracy on the synthetic scene task, per question type, against chance."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from tqdm import tqdm

from ovis.data.synth import BACKGROUND, CELLS, COLOURS, NUMBERS, QUESTION_TYPES, SHAPES
from ovis.interfaces.image import load_image

#: the accuracy of a uniform guess among the type's possible answers
CHANCE = {
    "colour": 1 / len(COLOURS),
    "shape": 1 / len(SHAPES),
    "position": 1 / len(CELLS),
    "count": 1 / (len(NUMBERS) - 1),
    "exists": 1 / 2,
}


def normalise(answer: str) -> str:
    return answer.strip().strip(".").strip().lower()


@dataclass
class SynthReport:
    correct: Counter = field(default_factory=Counter)
    total: Counter = field(default_factory=Counter)
    mistakes: list[dict] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return sum(self.correct.values()) / max(1, sum(self.total.values()))

    def by_type(self) -> dict[str, float]:
        return {k: self.correct[k] / self.total[k] for k in QUESTION_TYPES if self.total[k]}

    def to_dict(self) -> dict:
        return {
            "accuracy": round(self.accuracy, 4),
            "by_type": {k: round(v, 4) for k, v in self.by_type().items()},
            "chance": {k: round(CHANCE[k], 4) for k in QUESTION_TYPES},
            "questions": sum(self.total.values()),
            "mistakes": self.mistakes[:10],
        }

    def table(self) -> str:
        lines = [f"{'question type':<14} {'accuracy':>9} {'chance':>7} {'n':>5}"]
        for kind in QUESTION_TYPES:
            if self.total[kind]:
                acc = self.correct[kind] / self.total[kind]
                lines.append(f"{kind:<14} {acc:>8.1%} {CHANCE[kind]:>7.1%} {self.total[kind]:>5}")
        lines.append(f"{'all':<14} {self.accuracy:>8.1%} {'':>7} {sum(self.total.values()):>5}")
        return "\n".join(lines)


Mode = Literal["image", "blind", "text"]
MODES: tuple[str, ...] = ("image", "blind", "text")


def _prompt(item: dict, mode: str, image_dir: Path) -> tuple[str, list[Image.Image]]:
    if mode == "text":  # the scene told in words instead of shown: what the LLM answers from text
        if "scene" not in item:
            raise ValueError(f"evaluation item {item.get('id')!r} has no 'scene' text; regenerate the data "
                             "with this version of ovis data synth")
        return item["scene"] + item["question"], []
    image = load_image(image_dir / item["image"], what=f"evaluation item {item.get('id')!r}")
    if mode == "blind":
        image = Image.new("RGB", image.size, BACKGROUND)
    return "<image>\n" + item["question"], [image]


@torch.no_grad()
def evaluate_synth(
    model,
    processor,
    eval_file: str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 64,
    mode: Mode = "image",
    progress: bool = True,
) -> SynthReport:
    """Ask every held-out question (one image, one question) and score exact answers.

    ``mode``: ``image`` shows the picture; ``blind`` an empty one of the same size (what a model
    answers without seeing anything); ``text`` no picture but the scene told in words before the
    question (what the language model answers from text: the ceiling the visual path aims for).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    eval_file = Path(eval_file)
    items = json.loads(eval_file.read_text())[:limit]
    image_dir = eval_file.parent / "images"
    model.eval()
    report = SynthReport()
    for start in tqdm(range(0, len(items), batch_size), desc=f"evaluating ({mode})", disable=not progress):
        chunk = items[start:start + batch_size]
        prompts = [_prompt(item, mode, image_dir) for item in chunk]
        batch = processor([[{"role": "user", "content": text}] for text, _ in prompts], [imgs for _, imgs in prompts])
        pixel_values = batch["pixel_values"] if batch["pixel_values"].shape[0] else None
        out = model.generate(
            batch["input_ids"], pixel_values, batch["attention_mask"], max_new_tokens=6, do_sample=False
        )
        for item, tokens in zip(chunk, out, strict=True):
            answer = normalise(processor.decode(tokens))
            kind = item["type"]
            report.total[kind] += 1
            if answer == normalise(item["answer"]):
                report.correct[kind] += 1
            elif len(report.mistakes) < 50:
                report.mistakes.append({"id": item["id"], "question": item["question"],
                                        "expected": item["answer"], "got": answer})
    return report


#: A synthetic dataset's question files: the held-out questions, and those about the colour-shape
#: pairs never seen in training (present only when the data was made with a compositional split).
SPLITS: tuple[str, ...] = ("eval.json", "eval-compositional.json")


def evaluate_splits(
    model, processor, data_dir: str | Path, *, mode: Mode = "image", limit: int | None = None, progress: bool = False
) -> dict[str, SynthReport]:
    """:func:`evaluate_synth` on every file of :data:`SPLITS` that ``data_dir`` holds, by file name."""
    data_dir = Path(data_dir)
    return {
        name: evaluate_synth(model, processor, data_dir / name, mode=mode, limit=limit, progress=progress)
        for name in SPLITS
        if (data_dir / name).is_file()
    }
