"""Pre-training the toy vision backbone on the synthetic scenes, before Ovis sees it.

Ovis starts from a pretrained ViT (CLIP, SigLIP, AIMv2): its patch features already say what is
where, and the visual head only has to turn them into visual words. The embedded default's
``clip-toy`` is random, so ``ovis quickstart`` first gives it that start: the backbone learns to
tell, for each quarter of a scene, the colour and the shape of the object there (or that it is
empty), and each patch which quarter it lies in. Small linear read-outs take the loss (colour and
shape on the quarters' mean patch features, the quarter on each patch's own) and are thrown away
afterwards; only the backbone keeps what it learned.

Why the quarter: the colour and shape read-outs are shared by the four quarters, so they reward
features that say *what* an object is the same way wherever it lies, and the backbone let *where*
fade (a linear probe on a trained quick-start's visual tokens found an object's quarter no better
than chance, 25%). A real ViT's patches keep their position; with the quarter loss the visual
words of an object say where it is too (99.9% by the same probe); the quick-start gained 1.7
points at 1,150 stage-3 steps and 0.9-3.8 at 2,000 (benchmarks/README.md, "Visual words that say
where an object is").

The scenes are drawn fresh from the training distribution (:func:`ovis.data.synth.random_scene`),
the held-out colour-shape pairs left out as everywhere in training, so the compositional split
stays unseen. The run is deterministic for a seed on a given machine. What it reaches is measured
on scenes drawn from another seed (:class:`VisionPretrainReport`), and on scenes holding a
held-out pair, by the read-outs that never saw one.

Why colours off the palette: a ViT trained on the task's six colours alone learns each shape anew
in each colour, and reads the shape of a held-out pair (a red triangle) 10.6% of the time, below
chance. A real ViT has seen shapes in every colour. So most objects (``off_palette`` 0.9) are
drawn in random colours at least :data:`OFF_PALETTE_DISTANCE` from every task colour, and read
for their shape only: a shape is then known by its outline, and the held-out pairs' shapes are
read 86-94% of the time (seeds 0-2), though no object of a held-out pair's colour, or near it,
ever has that pair's shape here (benchmarks/README.md, "Shapes in any colour").
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from ovis.data.synth import BACKGROUND, CELLS, COLOURS, HELD_OUT_PAIRS, SHAPES, Pair, Thing, draw_scene, random_scene
from ovis.errors import ConfigError
from ovis.train.schedule import lr_multiplier

#: Bump when the recipe's code changes, so a cached result made by other code is not reused.
RECIPE_VERSION = 2  # 2: the rate decays (cosine) after the warm-up
#: What the pre-training reached, written beside the model it made.
REPORT_FILE = "vision-pretraining.json"
#: Seed offset of the scenes the result is measured on (never trained on).
_MEASURE_SEED_OFFSET = 10_007
#: An off-palette colour lies at least this far (Euclidean, RGB 0-255) from every task colour and
#: from the background: no object drawn in one could be taken for a task colour.
OFF_PALETTE_DISTANCE = 80.0
#: The colour label of an object drawn off the palette: its colour read-out takes no loss.
_NO_LABEL = -100


@dataclass(frozen=True)
class VisionPretrainConfig:
    steps: int = 450
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 20
    seed: int = 0
    image_size: int = 64
    held_out_pairs: tuple[Pair, ...] = HELD_OUT_PAIRS
    #: scenes the result is measured on, after training
    measure_scenes: int = 256
    #: weight of the per-patch "which quarter" loss next to the colour and shape losses (0: none)
    position_weight: float = 1.0
    #: share of objects drawn in a random colour off the task's palette (:func:`off_palette_colour`),
    #: read for their shape only (0: the task's colours only; 0.5 and 0.8 read held-out pairs' shapes
    #: 38% and 76% on seed 0, 0.9 90%)
    off_palette: float = 0.9

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "measure_scenes"):
            if getattr(self, name) < (0 if name == "steps" else 1):
                raise ConfigError(f"vision pre-training: {name} must be positive, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"vision pre-training: lr must be > 0, got {self.lr}")
        if not self.position_weight >= 0:
            raise ConfigError(f"vision pre-training: position_weight must be >= 0, got {self.position_weight}")
        if not 0 <= self.off_palette <= 1:
            raise ConfigError(
                f"vision pre-training: off_palette is a share of objects in [0, 1], got {self.off_palette}"
            )

    def key(self) -> dict:
        """Everything that shapes the result (the cache key of a quick-start step)."""
        return {**asdict(self), "recipe_version": RECIPE_VERSION}


@dataclass
class VisionPretrainReport:
    steps: int
    seconds: float
    #: per quarter of held-out scenes: colour (or empty) and shape (or empty) read right
    colour_accuracy: float
    shape_accuracy: float
    final_loss: float | None
    #: per patch of held-out scenes: its quarter read right (None when ``position_weight`` is 0:
    #: the read-out is then untrained)
    quarter_accuracy: float | None = None
    #: the quarters holding a held-out colour-shape pair (scenes drawn with one): colour and shape
    #: read right, by read-outs that never saw the pair
    unseen_colour_accuracy: float | None = None
    unseen_shape_accuracy: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def quarter_of_patches(side: int) -> torch.Tensor:
    """For a ``side x side`` patch grid in raster order, the quarter (index into ``CELLS``) of each."""
    if side < 2 or side % 2:
        raise ConfigError(f"vision pre-training needs an even patch grid to split in quarters, got {side} x {side}")
    rows = torch.arange(side).repeat_interleave(side)
    cols = torch.arange(side).repeat(side)
    return (rows * 2 // side) * 2 + cols * 2 // side


class _Readouts(nn.Module):
    """Linear read-outs thrown away after pre-training: colour and shape per quarter (the last class
    is "empty"), and each patch's quarter."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.colour = nn.Linear(width, len(COLOURS) + 1)
        self.shape = nn.Linear(width, len(SHAPES) + 1)
        self.quarter = nn.Linear(width, len(CELLS))  # made last: the others' initial weights stay as they were


def off_palette_colour(rng: random.Random) -> tuple[int, int, int]:
    """A random RGB at least :data:`OFF_PALETTE_DISTANCE` from every task colour and the background."""
    taken = [*COLOURS.values(), BACKGROUND]
    while True:
        rgb = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if min(math.dist(rgb, c) for c in taken) >= OFF_PALETTE_DISTANCE:
            return rgb


def _recolour(scenes: list[list[Thing]], share: float, rng: random.Random) -> dict[str, tuple[int, int, int]]:
    """Redraw about ``share`` of the objects in off-palette colours, in place; returns the palette
    that draws every object (an off-palette colour is named by its hex code)."""
    palette = dict(COLOURS)
    for scene in scenes:
        for k, thing in enumerate(scene):
            if rng.random() < share:
                rgb = off_palette_colour(rng)
                name = "#{:02x}{:02x}{:02x}".format(*rgb)
                palette[name] = rgb
                scene[k] = Thing(thing.shape, name, thing.cell)
    return palette


def _labels(scenes: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    colour_index = {c: i for i, c in enumerate(COLOURS)}
    shape_index = {s: i for i, s in enumerate(SHAPES)}
    colours = torch.full((len(scenes), len(CELLS)), len(COLOURS))
    shapes = torch.full((len(scenes), len(CELLS)), len(SHAPES))
    for i, scene in enumerate(scenes):
        for thing in scene:
            colours[i, thing.cell] = colour_index.get(thing.colour, _NO_LABEL)
            shapes[i, thing.cell] = shape_index[thing.shape]
    return colours, shapes


def _read(backbone: nn.Module, readouts: _Readouts, pixel_values: torch.Tensor, quarters: torch.Tensor):
    features = backbone(pixel_values)  # [B, N, D], N = side^2 patches
    if features.shape[1] != quarters.numel():
        raise ConfigError(
            f"vision pre-training: the backbone gave {features.shape[1]} patches for a "
            f"{quarters.numel()}-patch grid; the image size does not match the backbone's"
        )
    one_hot = F.one_hot(quarters, len(CELLS)).to(features.dtype)  # [N, 4]
    pooled = torch.einsum("bnd,nq->bqd", features, one_hot) / one_hot.sum(0)[None, :, None]
    return readouts.colour(pooled), readouts.shape(pooled), readouts.quarter(features)


def _rate_factor(step: int, config: VisionPretrainConfig) -> float:
    """The trainer's schedule (``ovis.train.schedule``) for the 1-based ``step``: linear warm-up over
    ``warmup_steps``, then a cosine decay to a tenth of the rate at the last step. With a constant
    rate the run could end in a loss spike (one seed's ViT finished at loss 1.57, shapes per quarter
    69%, where its neighbours reached 0.1-0.2)."""
    return lr_multiplier(
        step - 1, total_steps=config.steps, warmup=max(0, config.warmup_steps - 1), kind="cosine", min_lr_ratio=0.1
    )


def pretrain_vision(
    model,
    processor,
    config: VisionPretrainConfig | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> VisionPretrainReport:
    """Train ``model``'s vision backbone in place (float32, on the model's device) and measure it.

    ``model`` is an Ovis model whose backbone takes ``config.image_size`` px images (the quick-start's
    ``clip-toy``); its visual head, VTE and LLM are left untouched.
    """
    config = config or VisionPretrainConfig()
    backbone = model.visual_tokenizer.backbone
    device = next(backbone.parameters()).device
    image_processor = processor.image_processor
    patch = backbone.spec.patch_size
    side = image_processor.image_size // patch
    quarters = quarter_of_patches(side).to(device)
    dtype = next(backbone.parameters()).dtype
    backbone.float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        readouts = _Readouts(backbone.feature_dim).to(device)
    params = [*backbone.parameters(), *readouts.parameters()]
    was = [p.requires_grad for p in backbone.parameters()]
    for p in backbone.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    rng = random.Random(config.seed)

    def batch(rng: random.Random, count: int, *, off_palette: float = 0.0, with_pair: Pair | None = None):
        scenes = [random_scene(rng, exclude=config.held_out_pairs, with_pair=with_pair) for _ in range(count)]
        palette = _recolour(scenes, off_palette, rng) if off_palette else COLOURS
        images = [draw_scene(scene, config.image_size, rng, palette=palette) for scene in scenes]
        return image_processor(images).to(device), *(t.to(device) for t in _labels(scenes))

    start = time.perf_counter()
    backbone.train()
    loss_value = None
    for step in tqdm(range(1, config.steps + 1), desc="pre-training the vision backbone", disable=not progress):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * _rate_factor(step, config)
        pixels, colours, shapes = batch(rng, config.batch_size, off_palette=config.off_palette)
        colour_logits, shape_logits, quarter_logits = _read(backbone, readouts, pixels, quarters)
        loss = F.cross_entropy(colour_logits.flatten(0, 1), colours.flatten()) + F.cross_entropy(
            shape_logits.flatten(0, 1), shapes.flatten()
        )
        if config.position_weight:
            loss = loss + config.position_weight * F.cross_entropy(
                quarter_logits.flatten(0, 1), quarters.repeat(len(pixels))
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
    seconds = time.perf_counter() - start

    backbone.eval()
    with torch.no_grad():
        measure_rng = random.Random(config.seed + _MEASURE_SEED_OFFSET)
        pixels, colours, shapes = batch(measure_rng, config.measure_scenes)
        colour_logits, shape_logits, quarter_logits = _read(backbone, readouts, pixels, quarters)
        colour_acc = (colour_logits.argmax(-1) == colours).float().mean().item()
        shape_acc = (shape_logits.argmax(-1) == shapes).float().mean().item()
        quarter_acc = (quarter_logits.argmax(-1) == quarters).float().mean().item()
        unseen_colour, unseen_shape = _read_unseen(
            config,
            lambda pair, count: batch(measure_rng, count, with_pair=pair),
            lambda pixels: _read(backbone, readouts, pixels, quarters)[:2],
        )
    for p, flag in zip(backbone.parameters(), was, strict=True):
        p.requires_grad_(flag)
    backbone.to(dtype)
    report = VisionPretrainReport(
        steps=config.steps,
        seconds=round(seconds, 1),
        colour_accuracy=round(colour_acc, 4),
        shape_accuracy=round(shape_acc, 4),
        final_loss=None if loss_value is None else round(loss_value, 4),
        quarter_accuracy=round(quarter_acc, 4) if config.position_weight else None,
        unseen_colour_accuracy=None if unseen_colour is None else round(unseen_colour, 4),
        unseen_shape_accuracy=None if unseen_shape is None else round(unseen_shape, 4),
    )
    if log:
        log(
            f"vision backbone pre-trained: {config.steps} steps in {seconds:.0f} s; per quarter of "
            f"unseen scenes colour {colour_acc:.1%}, shape {shape_acc:.1%}"
            + (f"; per patch, its quarter {quarter_acc:.1%}" if config.position_weight else "")
            + (
                f"; held-out pairs: colour {unseen_colour:.1%}, shape {unseen_shape:.1%}"
                if unseen_shape is not None
                else ""
            )
        )
    return report


def _read_unseen(config: VisionPretrainConfig, draw: Callable, read: Callable) -> tuple[float | None, float | None]:
    """Colour and shape accuracy on the quarters holding a held-out pair, over scenes drawn with one
    (an equal share of :attr:`VisionPretrainConfig.measure_scenes` per pair)."""
    pairs = config.held_out_pairs
    if not pairs:
        return None, None
    colour_index, shape_index = list(COLOURS), list(SHAPES)
    right_colour = right_shape = total = 0
    for pair in pairs:
        pixels, colours, shapes = draw(pair, max(1, config.measure_scenes // len(pairs)))
        colour_logits, shape_logits = read(pixels)
        at = (colours == colour_index.index(pair[0])) & (shapes == shape_index.index(pair[1]))
        right_colour += int((colour_logits.argmax(-1) == colours)[at].sum())
        right_shape += int((shape_logits.argmax(-1) == shapes)[at].sum())
        total += int(at.sum())
    return right_colour / total, right_shape / total


def pretrain_vision_directory(
    model_dir: str | Path,
    out: str | Path,
    config: VisionPretrainConfig | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> VisionPretrainReport:
    """:func:`pretrain_vision` on the model in ``model_dir``, written to ``out`` with its report
    (``out/vision-pretraining.json``)."""
    import ovis

    model, processor = ovis.load(model_dir, dtype="float32")
    report = pretrain_vision(model, processor, config, progress=progress, log=log)
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return report
