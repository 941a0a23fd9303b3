"""Sequence packing (``data.packing``) vs padding: the padding fraction and the training tokens/s of
the same micro-batches, measured side by side in one run, on two length distributions.

* ``quick-start``: the quick-start's stage-3 data (``ovis data synth``: synth-conversations and
  synth-captions), encoded by the quick-start's model pair (clip-toy + qwen-toy, V = 1024).
* ``llava-665k-like``: token sequences whose lengths follow the LLaVA-1.5 instruction mix
  (``llava_v1_5_mix665k``; the LLaVA-1.5 paper, Table 7: LLaVA-Instruct 158K, ShareGPT 40K,
  VQAv2 83K, GQA 72K, OKVQA 9K, OCR-VQA 80K, A-OKVQA 66K, TextCaps 22K, RefCOCO 48K, VG 86K).
  Every source but ShareGPT has one image; the VQA-style sources group several short questions
  about an image into one multi-turn conversation, LLaVA-Instruct's are GPT-written answers, and
  ShareGPT's text-only chats are long (many cut at LLaVA-1.5's 2,048-token limit). The text
  lengths are drawn per source from a log-normal with the median and spread in :data:`LLAVA_MIX`:
  an approximation of those described shapes, not lengths measured from the file (which cannot be
  downloaded here). The model is the same toy pair, so an image block is its 18 positions; the
  padding fraction with LLaVA-1.5's own 576-position block (CLIP ViT-L/14-336) is printed too
  (a packing computation only, no model).

For every micro-batch of ``--batch-size`` samples the script times one training step (forward,
backward, AdamW) on the padded batch and on two packed batches of the same samples: rows no longer
than the longest sample (what ``data.packing`` does without flash-attention) and rows up to
``max_length`` (what it does with flash-attention), each going first in turn, and counts the
samples' tokens (padding not counted). It prints the padding fractions, the tokens/s of each and
the speed-up (packed tokens/s over padded tokens/s)::

    python benchmarks/packing.py                       # both distributions, 12 steps each
    python benchmarks/packing.py --steps 30 --out benchmarks/results/packing_cpu.json

On a CPU the attention of a packed row is a dense masked matrix over the whole row; on a GPU with
``flash_attention_2`` the varlen kernel computes each sample's block only (not measured here).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import ovis
from ovis.data import DataCollator, SupervisedDataset, read_datasets
from ovis.data.packing import pack_rows
from ovis.data.skips import Skipped
from ovis.data.synth import SynthSpec, write_synthetic_dataset
from ovis.model.merging import IGNORE_INDEX, IMAGE_TOKEN_ID
from ovis.processing import EncodedSample
from ovis.train.step import BATCH_KEYS, TrainStep


@dataclass(frozen=True)
class Source:
    """One part of the LLaVA-665K-like mix: its size (thousands of conversations), whether it has an
    image, and the log-normal shape of its text length in tokens (median, sigma) and answer share."""

    thousands: int
    image: bool
    median: float
    sigma: float
    answer_share: float


#: The LLaVA-1.5 mix (sizes from the paper's Table 7); the length shapes are approximations.
LLAVA_MIX: dict[str, Source] = {
    "llava-instruct": Source(158, True, 230, 0.55, 0.7),  # conversations, detail, reasoning
    "sharegpt": Source(40, False, 900, 0.8, 0.75),  # long text-only chats
    "vqav2": Source(83, True, 110, 0.45, 0.15),  # several short questions per image
    "gqa": Source(72, True, 170, 0.5, 0.15),
    "okvqa": Source(9, True, 40, 0.3, 0.2),
    "ocrvqa": Source(80, True, 120, 0.4, 0.25),
    "a-okvqa": Source(66, True, 75, 0.3, 0.1),  # multiple choice
    "textcaps": Source(22, True, 45, 0.3, 0.5),
    "refcoco": Source(48, True, 220, 0.5, 0.4),  # region descriptions with boxes
    "vg": Source(86, True, 260, 0.5, 0.4),
}
LLAVA_MAX_LENGTH = 2048
LLAVA_IMAGE_BLOCK = 576


def llava_like_lengths(count: int, seed: int) -> list[tuple[int, bool, float]]:
    """``(text tokens, has an image, answer share)`` for ``count`` conversations drawn from the mix."""
    rng = random.Random(seed)
    names = list(LLAVA_MIX)
    weights = [LLAVA_MIX[n].thousands for n in names]
    drawn = []
    for name in rng.choices(names, weights=weights, k=count):
        source = LLAVA_MIX[name]
        text = int(math.exp(rng.gauss(math.log(source.median), source.sigma)))
        drawn.append((max(16, text), source.image, source.answer_share))
    return drawn


def llava_like_samples(count: int, block: int, image_size: int, vocab: int, seed: int) -> list[EncodedSample]:
    """Encoded samples of the drawn shapes: an image block (``block`` positions) after a short prompt,
    the answer tokens (labelled) at the end; cut at :data:`LLAVA_MAX_LENGTH` like the processor."""
    rng = random.Random(seed + 1)
    samples = []
    for text, image, share in llava_like_lengths(count, seed):
        text = min(text, LLAVA_MAX_LENGTH - (block if image else 0))
        ids = [rng.randrange(3, vocab) for _ in range(text)]
        answer = max(1, int(text * share))
        labels = [IGNORE_INDEX] * (text - answer) + ids[text - answer :]
        if image:
            ids[4:4] = [IMAGE_TOKEN_ID] * block
            labels[4:4] = [IGNORE_INDEX] * block
        pixels = torch.rand(1 if image else 0, 3, image_size, image_size)
        samples.append(EncodedSample(ids, labels, pixels))
    return samples


def quickstart_samples(processor, count: int, seed: int) -> list[EncodedSample]:
    """The quick-start's stage-3 data, encoded (its synthetic scenes written to a temporary directory)."""
    with tempfile.TemporaryDirectory() as root:
        images = max(8, count // 2)
        info = write_synthetic_dataset(
            Path(root), SynthSpec(train_images=images, eval_images=1, text_scenes=1, seed=seed), progress=False
        )
        records = read_datasets(info, ["synth-conversations", "synth-captions"])
        random.Random(seed).shuffle(records)
        dataset = SupervisedDataset(records[:count], processor)
        return [s for s in (dataset[i] for i in range(len(dataset))) if not isinstance(s, Skipped)]


def llava_padding_with_real_blocks(batch_size: int, count: int, seed: int) -> dict[str, float]:
    """Padding fractions of the LLaVA-like lengths with LLaVA-1.5's 576-position image block: padded,
    packed in rows up to the longest sample, packed in rows up to ``max_length``."""
    lengths = [
        min(LLAVA_MAX_LENGTH, text + (LLAVA_IMAGE_BLOCK if image else 0))
        for text, image, _ in llava_like_lengths(count, seed)
    ]
    positions = {"padded": 0, "packed": 0, "packed-max": 0}
    real = 0
    for start in range(0, len(lengths) - batch_size + 1, batch_size):
        batch = lengths[start : start + batch_size]
        real += sum(batch)
        positions["padded"] += max(batch) * len(batch)
        for kind, capacity in (("packed", max(batch)), ("packed-max", LLAVA_MAX_LENGTH)):
            rows = pack_rows(batch, capacity)
            positions[kind] += max(sum(batch[i] for i in row) for row in rows) * len(rows)
    return {kind: 1 - real / total for kind, total in positions.items()}


def measure(model, processor, samples, *, batch_size: int, steps: int, max_length: int, warmup: int = 2) -> dict:
    """Time padded and packed training steps over the same micro-batches, alternating the order."""
    step = TrainStep(model, image_size=model.backbone.spec.image_size, dummy_visual=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    collate = {
        "padded": DataCollator(processor),
        "packed": DataCollator(processor, packing=True, max_length=max_length),
        "packed-max": DataCollator(processor, packing=True, max_length=max_length, row_length="max_length"),
    }
    seconds = dict.fromkeys(collate, 0.0)
    positions = dict.fromkeys(collate, 0)
    rows = dict.fromkeys(collate, 0)
    tokens = 0
    batches = [samples[i : i + batch_size] for i in range(0, len(samples) - batch_size + 1, batch_size)]
    if len(batches) < warmup + steps:
        raise SystemExit(f"{len(samples)} samples make {len(batches)} batches; need {warmup + steps}")
    kinds = list(collate)
    for index, chunk in enumerate(batches[: warmup + steps]):
        shift = index % len(kinds)  # each variant goes first, second, third in turn
        for kind in kinds[shift:] + kinds[:shift]:
            batch = collate[kind](chunk)
            inputs = {k: batch[k] for k in BATCH_KEYS if batch.get(k) is not None}
            started = time.perf_counter()
            loss, _ = step(**inputs)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - started
            if index >= warmup:
                seconds[kind] += elapsed
                positions[kind] += batch["input_ids"].numel()
                rows[kind] += batch["input_ids"].shape[0]
        if index >= warmup:
            tokens += sum(len(s.input_ids) for s in chunk)
    result = {
        "batches": steps,
        "batch_size": batch_size,
        "max_length": max_length,
        "tokens": tokens,
        "mean_length": tokens / (steps * batch_size),
    }
    for kind in kinds:
        result[kind] = {
            "padding_fraction": 1 - tokens / positions[kind],
            "rows_per_batch": rows[kind] / steps,
            "tokens_per_s": tokens / seconds[kind],
            "seconds": seconds[kind],
        }
    result["speedup"] = result["packed"]["tokens_per_s"] / result["padded"]["tokens_per_s"]
    result["speedup_max_length_rows"] = result["packed-max"]["tokens_per_s"] / result["padded"]["tokens_per_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16, help="samples per micro-batch (quick-start's 16)")
    parser.add_argument("--steps", type=int, default=12, help="timed micro-batches per distribution")
    parser.add_argument("--datasets", nargs="+", default=["quick-start", "llava-665k-like"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, processor = ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=1024)
    model.float().train()
    needed = (args.steps + 2) * args.batch_size
    report = {
        "machine": {
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "results": {},
    }
    for name in args.datasets:
        if name == "quick-start":
            samples = quickstart_samples(processor, needed, args.seed)
            max_length = processor.max_length
        elif name == "llava-665k-like":
            samples = llava_like_samples(
                needed,
                model.num_image_tokens,
                model.backbone.spec.image_size,
                model.config.llm_config.vocab_size,
                args.seed,
            )
            max_length = LLAVA_MAX_LENGTH
        else:
            parser.error(f"unknown dataset {name!r}; choose quick-start or llava-665k-like")
        result = measure(model, processor, samples, batch_size=args.batch_size, steps=args.steps, max_length=max_length)
        if name == "llava-665k-like":
            result["padding_with_576_position_image_blocks"] = llava_padding_with_real_blocks(
                args.batch_size, 20_000, args.seed
            )
        report["results"][name] = result
        _print(name, result)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


LABELS = {
    "padded": "padded",
    "packed": "packed (rows <= longest sample)",
    "packed-max": "packed (rows <= max_length)",
}


def _print(name: str, r: dict) -> None:
    print(
        f"\n{name}: {r['batches']} micro-batches of {r['batch_size']} samples, mean {r['mean_length']:.0f} "
        f"tokens, rows of at most {r['max_length']}"
    )
    print(f"  {'':34} {'padding':>8} {'rows/batch':>10} {'tokens/s':>10}")
    for kind, label in LABELS.items():
        k = r[kind]
        print(f"  {label:34} {k['padding_fraction']:>8.1%} {k['rows_per_batch']:>10.2f} {k['tokens_per_s']:>10.0f}")
    print(
        f"  speed-up, packed / padded tokens/s: {r['speedup']:.2f}x "
        f"(rows up to max_length: {r['speedup_max_length_rows']:.2f}x)"
    )
    if "padding_with_576_position_image_blocks" in r:
        b = r["padding_with_576_position_image_blocks"]
        print(
            "  padding with LLaVA-1.5's 576-position image blocks (20,000 drawn samples): "
            + ", ".join(f"{LABELS[kind]} {fraction:.1%}" for kind, fraction in b.items())
        )


if __name__ == "__main__":
    sys.exit(main())
