"""Which look-ups the toy LLM learns when the images are replaced by perfect symbolic tokens (issue 12).

Each image becomes ``--tokens`` tokens (4: one per cell, as clip-toy's 4 x 4 patches give with
``hidden_stride`` 2; 16: one per patch), framed by two indicator tokens. Each token is the sum of
learned embeddings of its cell's colour, its cell's shape (or "none") and its own index, so nothing
on the visual side can be wrong: what the model fails to learn here is the language model's doing.
The LLM is qwen-toy as ``ovis compose`` builds it, trained as the quick-start's stage 3 trains it
(Muon on its hidden matrices, AdamW on the tables), on the questions of ``ovis.data.synth`` in
ChatML. Accuracy: every answer token right under teacher forcing, on one-question items with the
types in turn. Prints one JSON line per evaluation; ``--json`` keeps them.

    python benchmarks/lookup_lab.py --types colour --tokens 4 --steps 400       # one kind alone
    python benchmarks/lookup_lab.py --curriculum 1:100,2:300 --steps 1200       # the recipe's setting
    python benchmarks/lookup_lab.py --schedule colour:250,colour+shape:500      # one kind, then two
    python benchmarks/lookup_lab.py --tokens 4 --muon-lr 0.005 --lr 3e-4        # the mixture, learned

Also: ``--heads`` (fewer, wider heads), ``--question-first`` (the first question before the
image), ``--weigh`` (each type's loss weighed by how far it is behind the others).

The findings (benchmarks/README.md, "The learning rate kept every look-up at chance"): at Muon
0.02 the model in the full mixture answers every look-up from a random object of the scene and
stays there; each kind alone is learned in a few hundred steps. At Muon 0.005 / AdamW 3e-4 the
mixture is learned too, sooner with one token per cell.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ovis.data.synth import COLOURS, QUESTION_TYPES, SHAPES, question, random_scene
from ovis.errors import ConfigError

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def parse_schedule(text: str, parse) -> list[tuple[object, int]]:
    """``"a:100,b:300"`` -> ``[(parse("a"), 100), (parse("b"), 300)]``: each value holds up to its step."""
    schedule = []
    for part in filter(None, text.split(",")):
        value, _, until = part.rpartition(":")
        if not value or not until.isdigit():
            raise ConfigError(f"schedule entry {part!r}: expected VALUE:STEP, e.g. colour:250")
        try:
            schedule.append((parse(value), int(until)))
        except ValueError:
            raise ConfigError(f"schedule entry {part!r}: {value!r} is not what this schedule takes") from None
    return schedule


def parse_types(text: str) -> tuple[str, ...]:
    types = tuple(t for t in text.replace("+", ",").split(",") if t)
    unknown = [t for t in types if t not in QUESTION_TYPES]
    if unknown or not types:
        raise ConfigError(f"question types {text!r}: expected some of {', '.join(QUESTION_TYPES)}")
    return types


def at(schedule: list[tuple[object, int]], step: int, default):
    return next((value for value, until in schedule if step <= until), default)


class SymbolicImages(nn.Module):
    """An image as ``tokens`` + 2 embeddings: indicators around per-token colour + shape + index."""

    def __init__(self, tokens: int, width: int) -> None:
        super().__init__()
        self.side = math.isqrt(tokens)
        if self.side**2 != tokens or self.side % 2:
            raise ConfigError(f"--tokens {tokens}: expected an even square (4, 16, 64)")
        self.colour = nn.Embedding(len(COLOURS) + 1, width)  # the last row: an empty cell
        self.shape = nn.Embedding(len(SHAPES) + 1, width)
        self.index = nn.Embedding(tokens + 2, width)
        for table in (self.colour, self.shape, self.index):
            nn.init.normal_(table.weight, std=0.02)
        half = self.side // 2
        self.cell_of = [(r // half) * 2 + c // half for r in range(self.side) for c in range(self.side)]

    def labels(self, scene) -> tuple[list[int], list[int]]:
        by_cell = {thing.cell: thing for thing in scene}
        colours = list(COLOURS)
        colour = [colours.index(by_cell[c].colour) if c in by_cell else len(colours) for c in self.cell_of]
        shape = [SHAPES.index(by_cell[c].shape) if c in by_cell else len(SHAPES) for c in self.cell_of]
        return colour, shape

    def forward(self, colour: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        out = self.index.weight.expand(colour.shape[0], -1, -1).clone()
        out[:, 1:-1] += self.colour(colour) + self.shape(shape)
        return out


class Lab:
    def __init__(self, args: argparse.Namespace) -> None:
        import ovis
        from ovis.train.config import TrainConfig
        from ovis.train.muon import MuonWithAdamW, muon_matrices

        torch.manual_seed(args.seed)
        model, processor = ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=1024)
        self.llm, self.tokenizer, self.args = model.llm.float(), processor.tokenizer, args
        if args.heads:  # the same LLM with fewer, wider heads (or more, narrower)
            config = self.llm.config
            config.num_attention_heads = config.num_key_value_heads = args.heads
            config.head_dim = config.hidden_size // args.heads
            self.llm = type(self.llm)(config).float()
        self.images = SymbolicImages(args.tokens, self.llm.config.hidden_size)
        config = TrainConfig(
            stage=3, model="-", output_dir="-", optimizer="muon", lr=args.lr, muon_lr=args.muon_lr, deepspeed=None
        )
        params = [*self.llm.parameters(), *self.images.parameters()]
        self.optimizer = MuonWithAdamW(
            [{"params": params, "lr": args.lr}], muon_matrices(self.llm), config, newton_schulz_bf16=False
        )
        for group in self.optimizer.param_groups:
            group["base_lr"] = group["lr"]
        self.params = params
        self.prefix = self.encode(SYSTEM + "<|im_start|>user\n")
        self.end = self.encode("<|im_end|>\n")
        self.assistant = self.encode("<|im_start|>assistant\n")
        self.user = self.encode("<|im_start|>user\n")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def sample(self, rng: random.Random, kinds: list[str], max_objects: int):
        """Ids and labels of one image's conversation; the image's place; the answers' spans.

        With ``--question-first`` the first question comes before the image (LLaVA's data has both
        orders), so the image's tokens can already see what is asked."""
        scene = random_scene(rng, max_objects=max_objects)
        ids = list(self.prefix)
        answers = []
        image = [0] * (self.args.tokens + 2)  # replaced by the symbolic image
        first = question(kinds[0], scene, rng)
        if self.args.question_first:
            ids += self.encode(first.question) + self.encode("\n")
            start = len(ids)
            ids += image
        else:
            start = len(ids)
            ids += image + self.encode("\n") + self.encode(first.question)
        labels = [-100] * len(ids)
        for i, kind in enumerate(kinds):
            qa = first if i == 0 else question(kind, scene, rng)
            ask = (
                self.end + self.assistant
                if i == 0
                else self.user + self.encode(qa.question) + self.end + self.assistant
            )
            ids += ask
            labels += [-100] * len(ask)
            answer = self.encode(qa.answer)
            answers.append((kind, len(ids), len(answer)))
            ids += answer + self.end[:1]
            labels += answer + self.end[:1]
            ids += self.end[1:]
            labels += [-100] * len(self.end[1:])
        return ids, labels, start, self.images.labels(scene), answers

    def batch(self, samples):
        length = max(len(s[0]) for s in samples)
        ids = torch.zeros(len(samples), length, dtype=torch.long)
        labels = torch.full((len(samples), length), -100)
        mask = torch.zeros(len(samples), length, dtype=torch.long)
        for row, (sample_ids, sample_labels, *_) in enumerate(samples):
            ids[row, : len(sample_ids)] = torch.tensor(sample_ids)
            labels[row, : len(sample_labels)] = torch.tensor(sample_labels)
            mask[row, : len(sample_ids)] = 1
        colour = torch.tensor([s[3][0] for s in samples])
        shape = torch.tensor([s[3][1] for s in samples])
        embeds = self.llm.get_input_embeddings()(ids)
        images, width = self.images(colour, shape), self.args.tokens + 2
        starts = torch.tensor([s[2] for s in samples])
        offset = torch.arange(length) - starts[:, None]
        inside = (offset >= 0) & (offset < width)
        rows = torch.arange(len(samples))[:, None]
        embeds = torch.where(inside[..., None], images[rows, offset.clamp(0, width - 1)], embeds)
        return embeds, ids, labels, mask

    @torch.no_grad()
    def evaluate(self, items) -> dict[str, float]:
        self.llm.eval()
        right: dict[str, int] = {}
        total: dict[str, int] = {}
        for first in range(0, len(items), 100):
            chunk = items[first : first + 100]
            embeds, ids, _, mask = self.batch(chunk)
            predicted = self.llm(inputs_embeds=embeds, attention_mask=mask).logits.argmax(-1)
            for row, sample in enumerate(chunk):
                for kind, at_token, n in sample[4]:
                    ok = bool(
                        (predicted[row, at_token - 1 : at_token - 1 + n] == ids[row, at_token : at_token + n]).all()
                    )
                    total[kind] = total.get(kind, 0) + 1
                    right[kind] = right.get(kind, 0) + ok
        self.llm.train()
        return {kind: round(right[kind] / total[kind], 3) for kind in QUESTION_TYPES if kind in total}

    def run(self) -> list[dict]:
        args = self.args
        types = parse_types(args.types)
        schedule = parse_schedule(args.schedule, parse_types)
        curriculum = parse_schedule(args.curriculum, int)
        eval_rng = random.Random(12345)
        eval_types = sorted({t for value, _ in schedule for t in value} | set(types), key=QUESTION_TYPES.index)
        items = [self.sample(eval_rng, [eval_types[i % len(eval_types)]], 4) for i in range(args.eval_items)]
        rng = random.Random(args.seed)
        rows, losses, began = [], [], time.perf_counter()
        kind_loss: dict[int, float] = {}  # each type's answer loss, a running mean
        for step in range(1, args.steps + 1):
            warm = min(1.0, step / 30)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * warm
            now = at(schedule, step, types)
            kinds_of = [
                rng.sample(now, args.questions)
                if len(now) >= args.questions
                else [rng.choice(now) for _ in range(args.questions)]
                for _ in range(args.batch)
            ]
            samples = [self.sample(rng, kinds, at(curriculum, step, 4)) for kinds in kinds_of]
            embeds, _, labels, mask = self.batch(samples)
            logits = self.llm(inputs_embeds=embeds, attention_mask=mask).logits
            token_loss = F.cross_entropy(
                logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none"
            )
            weight = (labels[:, 1:] != -100).float()
            if args.weigh:  # the running losses serve the weighing only
                kind_of = torch.full_like(labels, -1)  # the answer tokens' question type, by label position
                for row, sample in enumerate(samples):
                    for kind, at_token, n in sample[4]:
                        kind_of[row, at_token : at_token + n] = QUESTION_TYPES.index(kind)
                kind_of = kind_of[:, 1:]
                for k in kind_of.unique().tolist():
                    if k < 0:
                        continue
                    value = token_loss[kind_of == k].mean().item()
                    kind_loss[k] = 0.95 * kind_loss.get(k, value) + 0.05 * value
                if len(kind_loss) > 1:
                    mean = sum(kind_loss.values()) / len(kind_loss)
                    for k, value in kind_loss.items():
                        weight[kind_of == k] = (value / mean) ** args.weigh
            loss = (token_loss * weight).sum() / weight.sum()
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            losses.append(loss.item())
            if step % args.eval_every == 0 or step == args.steps:
                by_type = self.evaluate(items)
                row = {
                    "step": step,
                    "loss": round(sum(losses[-args.eval_every :]) / len(losses[-args.eval_every :]), 4),
                    "accuracy": round(sum(by_type.values()) / len(by_type), 3),
                    "by_type": by_type,
                    "seconds": round(time.perf_counter() - began, 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
        return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--types",
        default=",".join(QUESTION_TYPES),
        help=f"question types trained and evaluated (comma list of {', '.join(QUESTION_TYPES)}; "
        "a type named twice is asked twice as often)",
    )
    parser.add_argument("--schedule", default="", help="types by step, e.g. colour:250,colour+shape:500 (then --types)")
    parser.add_argument(
        "--curriculum", default="", help="most objects per scene by step, e.g. 1:100,2:300 (then 4), as the quick-start"
    )
    parser.add_argument("--tokens", type=int, default=16, help="tokens per image: 4 (one per cell) or 16")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--questions", type=int, default=3, help="questions per image")
    parser.add_argument("--heads", type=int, default=0, help="attention heads (0: qwen-toy's 8)")
    parser.add_argument("--question-first", action="store_true", help="the first question before the image")
    parser.add_argument(
        "--weigh",
        type=float,
        default=0.0,
        help="weigh each type's answer loss by (its running loss / the mean) ** this",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW's rate (tables, norms, LM head)")
    parser.add_argument("--muon-lr", type=float, default=0.02, help="Muon's rate (hidden matrices)")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-items", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the evaluations here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        parse_types(args.types)  # bad input named before the model is built
        parse_schedule(args.schedule, parse_types)
        parse_schedule(args.curriculum, int)
        rows = Lab(args).run()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "evaluations": rows}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
