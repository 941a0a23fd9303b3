"""Where a trained quick-start model reads an object's cell from: its token's place or its content.

The quick-start's images become four visual tokens, one per cell, in cell order (top left, top
right, bottom left, bottom right). A model can tell which cell a token is in from its place in the
sequence (the LLM's rotary positions) or from what the token itself says. This reverses the four
cell tokens of every image after the visual path (indicators stay) and asks the held-out colour
and position questions again:

* colour at a position ("What colour is the object at the top left?", only where the mirrored
  cell holds an object of another colour) and position of a colour ("Where is the red object?");
* "content's answer": the right answer for the image; "place's answer": the answer for the
  mirrored cell, which a model reading places gives once the tokens are reversed.

    python benchmarks/cell_source.py runs/quickstart [runs/other ...]

A model that reads content answers the same both ways; one that reads places swaps to the
mirrored answer. Findings: benchmarks/README.md, "Yes/no balanced per pair".
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from PIL import Image

import ovis
from ovis.data.synth import CELLS
from ovis.eval.synth import normalise

#: the merged tokens' order reversed: [start indicator, 4 cells, end indicator]
REVERSED = [0, 4, 3, 2, 1, 5]
MIRROR = {0: 3, 1: 2, 2: 1, 3: 0}


def objects(scene_text: str) -> dict[int, str]:
    """Cell index -> colour, from an evaluation item's scene told in words."""
    return {
        CELLS.index(cell): colour for colour, _shape, cell in re.findall(r"a (\w+) (\w+) at the (\w+ \w+)", scene_text)
    }


def questions(eval_file: Path) -> list[dict]:
    """The colour and position questions, each with the answer its mirrored cell would give."""
    out = []
    for item in json.loads(eval_file.read_text()):
        if item["type"] == "colour":
            cell = CELLS.index(item["question"].split("at the ")[1].rstrip("?"))
            there = objects(item["scene"])
            if there.get(MIRROR[cell], item["answer"]) != item["answer"]:
                out.append({**item, "mirrored": there[MIRROR[cell]]})
        elif item["type"] == "position":
            out.append({**item, "mirrored": CELLS[MIRROR[CELLS.index(item["answer"])]]})
    return out


@torch.no_grad()
def answers(model, processor, items: list[dict], image_dir: Path, batch_size: int = 64) -> list[str]:
    got = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = processor(
            [[{"role": "user", "content": "<image>\n" + item["question"]}] for item in chunk],
            [[Image.open(image_dir / item["image"]).convert("RGB")] for item in chunk],
        )
        out = model.generate(
            batch["input_ids"], batch["pixel_values"], batch["attention_mask"], max_new_tokens=6, do_sample=False
        )
        got += [normalise(processor.decode(tokens)) for tokens in out]
    return got


def reversing(encode):
    """``encode`` (a model's ``encode_images``) with each image's cell tokens in reverse order."""
    return lambda pixels: encode(pixels)[:, REVERSED]


def measure(run: Path) -> list[dict]:
    model, processor = ovis.load(run / "stage3" / "final", dtype="float32")
    model.eval()
    if model.config.use_indicators is False or model.num_image_tokens != len(REVERSED):
        raise SystemExit(f"{run}: expected the quick-start's layout of 4 cell tokens between 2 indicators")
    items = questions(run / "data" / "eval.json")
    encode = model.encode_images
    rows = []
    for order, reverse in (("as drawn", False), ("reversed", True)):
        model.encode_images = encode if not reverse else reversing(encode)
        got = answers(model, processor, items, run / "data" / "images")
        for kind in ("colour", "position"):
            mine = [k for k, item in enumerate(items) if item["type"] == kind]
            rows.append(
                {
                    "run": str(run),
                    "adapter": model.config.adapter,
                    "tokens": order,
                    "question": kind,
                    "n": len(mine),
                    "content": sum(got[k] == normalise(items[k]["answer"]) for k in mine) / len(mine),
                    "place": sum(got[k] == normalise(items[k]["mirrored"]) for k in mine) / len(mine),
                }
            )
    model.encode_images = encode
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished `ovis quickstart` directories")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = [row for run in args.runs for row in measure(run)]
    print("| run | adapter | cell tokens | question | n | content's answer | place's answer |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['run']} | {r['adapter']} | {r['tokens']} | {r['question']} | {r['n']} | "
            f"{r['content']:.1%} | {r['place']:.1%} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
