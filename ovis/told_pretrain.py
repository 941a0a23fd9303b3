"""The toy LLM pre-trained on scenes told in words, one cell per position (issue 12).

Ovis starts from an LLM that already answers questions about what it is told, and teaches it to
read visual words. The toy LLM starts random; trained on scenes told as a sentence ("a red circle
at the top left, ...") it learned the task's priors but not the look-ups, and those did not carry
over to the visual tokens. Here the scene is told *where the visual tokens will be*: each of an
image's four cell tokens (``hidden_stride`` 2 gives one per cell) is replaced by the sum of the
LLM's own embeddings of the cell's words (" red" + " circle"; "no" for an empty cell), the framing
indicators kept. The LLM trains alone on the quick-start's conversations and captions told that
way; the look-ups it learns then only need the visual words to say what the words said, which is
what Ovis's stages 1 and 2 align (benchmarks/README.md, "A toy LLM told the scene one cell per
position").

The scene is read back from each picture's pixels: the synthetic palette is exact, and a shape is
known by how much of its bounding box it fills and whether its corners are empty (checked on every
scene kind in tests/test_told_pretrain.py). So the build is an ordinary ``ovis train`` run on the
ordinary data with one substitution, and a user can see what the LLM was told.

    python -m ovis.told_pretrain --out runs/told-llm          # the LLM, its tokenizer and report
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import types
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from ovis.data.synth import CELLS, COLOURS, GENERATOR_VERSION, SHAPES, SynthSpec, write_synthetic_dataset
from ovis.errors import ConfigError
from ovis.precision import machine
from ovis.toy import HIDDEN_STRIDE, LLM, VISUAL_VOCAB, VIT

#: the training run that pre-trains the LLM (paths replaced by :func:`build_told_llm`)
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "presets" / "qwen-toy-told.yaml"
#: what :func:`build_told_llm` writes beside the LLM
REPORT_FILE = "told-llm.json"
#: the word that tells an empty cell
EMPTY_WORD = "no"
_PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
#: how much of its bounding box each shape fills (square 1, circle pi/4, triangle 1/2; a cross,
#: whose corners are empty, is told apart by those)
_FILL = {"square": 1.0, "circle": 0.785, "triangle": 0.5}

Cell = tuple[str, str] | None


def decode_scenes(pixel_values: torch.Tensor, image_processor) -> list[list[Cell]]:
    """Per image ``[n, 3, S, S]`` (as the image processor gives them), per cell in :data:`CELLS`
    order: ``(colour, shape)`` or None for an empty cell."""
    rgb = image_processor.denormalise(pixel_values) * 255
    n, _, h, w = rgb.shape
    distance = ((rgb.permute(0, 2, 3, 1)[..., None, :] - _PALETTE) ** 2).sum(-1)  # [n, h, w, colours]
    nearest, close = distance.argmin(-1), distance.min(-1).values < 30**2
    names = list(COLOURS)
    scenes = []
    for i in range(n):
        cells: list[Cell] = []
        for cell in range(len(CELLS)):
            row, col = divmod(cell, 2)
            rows, cols = slice(row * h // 2, (row + 1) * h // 2), slice(col * w // 2, (col + 1) * w // 2)
            label, hit = nearest[i, rows, cols], close[i, rows, cols]
            counts = torch.bincount(label[hit], minlength=len(names))
            if counts.max() < 8:  # a few stray pixels are not an object
                cells.append(None)
                continue
            colour = int(counts.argmax())
            cells.append((names[colour], _shape(hit & (label == colour))))
        scenes.append(cells)
    return scenes


def _shape(mask: torch.Tensor) -> str:
    ys, xs = mask.any(1).nonzero(), mask.any(0).nonzero()
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    fill = box.float().mean().item()
    a, b = max(1, int(0.25 * box.shape[0])), max(1, int(0.25 * box.shape[1]))
    corners = torch.cat([box[:a, :b], box[:a, -b:], box[-a:, :b], box[-a:, -b:]]).float().mean().item()
    if fill < 0.9 and corners < 0.12:
        return "cross"
    return min(_FILL, key=lambda s: abs(_FILL[s] - fill))


def cell_word_ids(scenes: list[list[Cell]], tokenizer) -> torch.Tensor:
    """``[n, 4, 2]`` token ids of each cell's two words (colour, shape); an empty cell is
    :data:`EMPTY_WORD` and -1 (nothing to add)."""

    def word(text: str) -> int:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ConfigError(f"the tokenizer splits {text!r} into {len(ids)} tokens; a told cell needs one each")
        return ids[0]

    vocab = {w: word(" " + w) for w in (*COLOURS, *SHAPES)} | {None: word(EMPTY_WORD)}
    rows = [[(vocab[c[0]], vocab[c[1]]) if c else (vocab[None], -1) for c in cells] for cells in scenes]
    return torch.tensor(rows, dtype=torch.long)


def told_embeddings(table: torch.nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """``[n, 4, hidden]``: the sum of each cell's word embeddings (:func:`cell_word_ids`)."""
    return table(ids[..., 0]) + table(ids[..., 1].clamp(min=0)) * (ids[..., 1:] >= 0)


@contextmanager
def telling(model, processor):
    """While inside, ``model`` (an :class:`~ovis.model.modeling_ovis.OvisForCausalLM` with one token
    per cell, either adapter) reads each image as its scene told in words: the cell tokens replaced
    by :func:`told_embeddings`, the indicators (if any) its own. Only this instance is changed."""
    if model.tiled or model.tokens_per_tile != len(CELLS):
        raise ConfigError(
            f"telling a scene needs one visual token per cell ({len(CELLS)} an image, one view each), "
            f"this model gives {model.tokens_per_tile}"
            + (" per tile, tiled" if model.tiled else "")
            + ": compose it with hidden_stride 2 and no tiling"
        )
    plain = type(model).encode_images
    cells = slice(1, -1) if model.num_image_tokens == len(CELLS) + 2 else slice(None)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        embeds = plain(self, pixel_values).clone()
        ids = cell_word_ids(decode_scenes(pixel_values, processor.image_processor), processor.tokenizer)
        told = told_embeddings(self.llm.get_input_embeddings(), ids.to(embeds.device))
        embeds[:, cells] = told.to(embeds.dtype)
        return embeds

    model.encode_images = types.MethodType(encode_images, model)
    try:
        yield model
    finally:
        del model.encode_images


def build_told_llm(
    out: str | Path,
    *,
    steps: int | None = None,
    seed: int = 0,
    images: int | None = None,
    train_images: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Build the told toy LLM into ``out`` (its weights, tokenizer and :data:`REPORT_FILE`); the
    data, the composed pair and the training run stay under ``out/build``. Returns the report.

    ``steps`` and ``images`` shorten the build (tests); ``train_images`` draws more (or fewer) training
    scenes, with the full held-out splits. The shipped one uses the config's steps and the
    quick-start's data. One thread gives the same bytes on every run (float32 sums split over
    threads round differently)."""
    import ovis
    from ovis.eval.synth import evaluate_splits
    from ovis.train import Trainer, load_train_config

    out, began = Path(out), time.perf_counter()
    work = out / "build"
    sizes = {} if images is None else {"train_images": images, "eval_images": 100, "compositional_images": 100,
                                       "text_scenes": 1}
    if train_images is not None:
        sizes["train_images"] = train_images
    spec = SynthSpec(seed=seed, **sizes)
    info = write_synthetic_dataset(work / "data", spec, progress=progress)
    torch.manual_seed(seed)
    ovis.compose(vit=VIT, llm=LLM, visual_vocab_size=VISUAL_VOCAB, hidden_stride=HIDDEN_STRIDE, out=work / "composed")
    overrides = [
        f"model={work / 'composed'}",
        f"output_dir={work / 'told'}",
        f"data.dataset_info={info}",
        f"seed={seed}",
        *([f"max_steps={steps}"] if steps else []),
    ]
    config = load_train_config(CONFIG, overrides)
    trainer = Trainer(config, progress=progress)
    trainer.setup()
    with telling(trainer.model, trainer.processor):
        trainer.fit()
    final = trainer.export()
    losses = [record["loss"] for record in trainer.records]
    window = max(1, min(50, len(losses) // 4))
    train_seconds = time.perf_counter() - began

    model, processor = ovis.load(final, dtype="float32")
    with telling(model, processor):
        reports = evaluate_splits(model, processor, work / "data")
    accuracy = {name: {"accuracy": r.accuracy, "by_type": r.by_type()} for name, r in reports.items()}
    model.llm.save_pretrained(out)
    processor.tokenizer.save_pretrained(out)
    weights = out / "model.safetensors"
    report = {
        "recipe": config.model_dump(mode="json")
        | {
            "model": "qwen-toy (random, torch seed)",
            "output_dir": None,
            "data": {"synth_seed": seed, "train_images": spec.train_images, "datasets": config.data.datasets},
        },
        "steps": config.max_steps,
        "seed": seed,
        "generator": GENERATOR_VERSION,
        "build_seconds": round(train_seconds, 1),
        # the mean training loss over the first and the last steps (a quarter of the run, at most 50)
        "loss": {"first": sum(losses[:window]) / window, "last": sum(losses[-window:]) / window},
        "machine": machine(),
        "torch": torch.__version__,
        "told_accuracy": accuracy,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    log(
        f"told toy LLM: {config.max_steps} steps in {train_seconds:.0f} s; told held-out accuracy "
        f"{accuracy['eval.json']['accuracy']:.1%}, unseen pairs {accuracy['eval-compositional.json']['accuracy']:.1%}"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where the LLM, its tokenizer and report go")
    parser.add_argument("--steps", type=int, help="training steps (default: the config's)")
    parser.add_argument("--train-images", type=int, help="training scenes (default: the quick-start's 12,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    build_told_llm(args.out, steps=args.steps, seed=args.seed, train_images=args.train_images,
                   progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
