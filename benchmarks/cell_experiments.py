"""Stage-3 experiments on how the quick-start's model learns where an object is (issue 12).

From a finished `ovis quickstart` run's stage 2, trains stage 3 again (configs/quickstart/stage3.yaml)
with any of these changes, then asks the run's held-out and compositional questions:

* ``--cell-captions``: a fourth caption style that names every cell in order, then what is in it
  ("top left: a red circle. top right: nothing. ..."), mixed in with the three shipped ones (the
  data is drawn again, with the run's seed, into ``OUT/data``);
* ``--shuffle-cells``: each image's four cell tokens in a random order while training (as drawn in
  evaluation), so that only a token's content, not its place, says which cell it is;
* ``--set KEY=VALUE``: any value of the stage-3 config (as ``ovis train --set``), e.g. the batch
  size and the number of steps.

    python benchmarks/cell_experiments.py runs/quickstart --out runs/cells --cell-captions --shuffle-cells
    python benchmarks/cell_experiments.py runs/quickstart --out runs/b8 --set per_device_batch_size=8 --steps 2500
    python benchmarks/cell_experiments.py runs/quickstart --out runs/c3k --cell-captions --shuffle-cells --steps 3000

Findings: benchmarks/README.md, "Yes/no balanced per pair" and "Smaller steps, more of them".
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

import ovis
import ovis.data.synth as synth
from ovis.eval.synth import evaluate_splits
from ovis.model.modeling_ovis import OvisForCausalLM
from ovis.train import Trainer, load_train_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart" / "stage3.yaml"
CELL_STYLE = "cells"


def cell_caption(scene: list[synth.Thing]) -> str:
    """Every cell in order, then what is in it."""
    at = {t.cell: t for t in scene}
    return " ".join(
        f"{name}: " + (f"a {at[c].colour} {at[c].shape}." if c in at else "nothing.")
        for c, name in enumerate(synth.CELLS)
    )


def write_data_with_cell_captions(out: Path, spec: synth.SynthSpec) -> Path:
    """The run's data drawn again with the fourth caption style among the others."""
    caption, styles = synth.caption, synth.CAPTION_STYLES

    def with_cells(scene, style="ordered", rng=None):
        return cell_caption(scene) if style == CELL_STYLE else caption(scene, style, rng)

    synth.caption, synth.CAPTION_STYLES = with_cells, (*styles, CELL_STYLE)
    try:
        return synth.write_synthetic_dataset(out, spec, progress=False)
    finally:
        synth.caption, synth.CAPTION_STYLES = caption, styles


def shuffling_cells(encode):
    """``OvisForCausalLM.encode_images`` with the four cell tokens (between the two indicators) of
    each image in a random order while the model trains."""

    def encode_images(self, pixel_values):
        out = encode(self, pixel_values)
        if not self.training:
            return out
        n = out.shape[0]
        order = torch.cat(
            [
                torch.zeros(n, 1, dtype=torch.long),
                torch.stack([torch.randperm(4) + 1 for _ in range(n)]),
                torch.full((n, 1), 5),
            ],
            1,
        )
        return torch.gather(out, 1, order.unsqueeze(-1).expand(-1, -1, out.shape[-1]))

    return encode_images


def run(
    base: Path,
    out: Path,
    *,
    cell_captions: bool,
    shuffle_cells: bool,
    steps: int | None,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> dict:
    recorded = json.loads((base / "data" / "synth_spec.json").read_text())
    recorded.pop("generator", None)
    spec = synth.SynthSpec(**recorded)
    info = write_data_with_cell_captions(out / "data", spec) if cell_captions else base / "data" / "dataset_info.json"
    settings = [
        f"model={base / 'stage2' / 'final'}",
        f"output_dir={out / 'stage3'}",
        f"data.dataset_info={info}",
        f"seed={spec.seed}",
        "precision=fp32",
        *([f"max_steps={steps}"] if steps else []),
        *overrides,
    ]
    encode = OvisForCausalLM.encode_images
    if shuffle_cells:
        OvisForCausalLM.encode_images = shuffling_cells(encode)
    try:
        started = time.perf_counter()
        Trainer(load_train_config(CONFIG, settings), progress=progress).run()
        seconds = time.perf_counter() - started
    finally:
        OvisForCausalLM.encode_images = encode
    model, processor = ovis.load(out / "stage3" / "final", dtype="float32")
    result = {
        "base": str(base),
        "cell_captions": cell_captions,
        "shuffle_cells": shuffle_cells,
        "steps": steps,
        "overrides": list(overrides),
        "train_seconds": round(seconds, 1),
    }
    for name, report in evaluate_splits(model, processor, base / "data").items():
        result[name] = {"accuracy": report.accuracy, "by_type": report.by_type()}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="a finished `ovis quickstart` directory (its stage 2 and data)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cell-captions", action="store_true")
    parser.add_argument("--shuffle-cells", action="store_true")
    parser.add_argument("--steps", type=int, help="stage 3's max_steps (default: the config's)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a stage-3 config value, as `ovis train --set` (repeatable)",
    )
    args = parser.parse_args(argv)
    result = run(
        args.base,
        args.out,
        cell_captions=args.cell_captions,
        shuffle_cells=args.shuffle_cells,
        steps=args.steps,
        overrides=args.overrides,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
