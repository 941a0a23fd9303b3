"""The quick-start's stages from a toy LLM told the scene one cell per position (issue 12).

From a finished (or partly run) `ovis quickstart` directory (its data and its pre-trained ViT,
``vision``): the toy LLM is pre-trained on the scenes told in words where the visual tokens will be
(:mod:`ovis.told_pretrain`), or taken from a built told LLM (``--told-llm DIR``, as a preset would
be: another seed's); then stages 1 and 2 (the LLM frozen) align the visual words to what the LLM
has learned to read, and stage 3 trains everything (configs/quickstart/stage3.yaml). Each step is
evaluated on the run's held-out and compositional questions into ``OUT/result.json``; a step whose
export is there is not run again.

    python benchmarks/word_cells.py runs/quickstart --out runs/told                  # told here, 3,000 steps
    python benchmarks/word_cells.py runs/seed1 --out runs/told1 --told-llm runs/told-llm

Findings: benchmarks/README.md, "A toy LLM told the scene one cell per position".
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

import ovis
from ovis.eval.synth import evaluate_splits
from ovis.told_pretrain import CONFIG as TOLD_CONFIG
from ovis.told_pretrain import telling
from ovis.train import Trainer, load_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "quickstart"


def train(config: str | Path, settings: list[str], *, told: bool = False, progress: bool = False) -> float:
    """Seconds the run took; ``told``: the images told in words (only the LLM should train)."""
    started = time.perf_counter()
    trainer = Trainer(load_train_config(CONFIGS / config, settings), progress=progress)
    trainer.setup()
    with telling(trainer.model, trainer.processor) if told else nullcontext():
        trainer.fit()
    trainer.export()
    return round(time.perf_counter() - started, 1)


def evaluate(directory: Path, data: Path, *, told: bool = False) -> dict:
    model, processor = ovis.load(directory, dtype="float32")
    with telling(model, processor) if told else nullcontext():
        reports = evaluate_splits(model, processor, data)
    return {name: {"accuracy": r.accuracy, "by_type": r.by_type()} for name, r in reports.items()}


def with_llm(vision: Path, llm: Path, out: Path) -> None:
    """The run's pre-trained-ViT model with the LLM of ``llm`` (a built told LLM) written to ``out``."""
    from transformers import AutoModelForCausalLM

    model, processor = ovis.load(vision, dtype="float32")
    model.llm.load_state_dict(AutoModelForCausalLM.from_pretrained(llm, dtype="float32").state_dict())
    model.save_pretrained(out)
    processor.save_pretrained(out)


def run(args: argparse.Namespace) -> dict:
    base, out, data = args.base, args.out, args.base / "data"
    seed = json.loads((data / "synth_spec.json").read_text())["seed"]
    common = [f"data.dataset_info={data / 'dataset_info.json'}", f"seed={seed}", "precision=fp32"]
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((out / "result.json").read_text()) if (out / "result.json").is_file() else {}

    def save() -> None:
        (out / "result.json").write_text(json.dumps(results, indent=2) + "\n")

    told = out / "told" / "final"
    if not told.is_dir():
        if args.told_llm:
            with_llm(base / "vision", args.told_llm, told)
            results["told_llm"] = str(args.told_llm)
        else:
            results["told_seconds"] = train(
                TOLD_CONFIG,
                [f"model={base / 'vision'}", f"output_dir={out / 'told'}", f"max_steps={args.told_steps}", *common],
                told=True,
                progress=args.progress,
            )
        results["told"] = evaluate(told, data, told=True)
        save()
    previous = told
    for stage in ("stage1", "stage2"):
        if not (out / stage / "final").is_dir():
            results[f"{stage}_seconds"] = train(
                f"{stage}.yaml",
                [f"model={previous}", f"output_dir={out / stage}", f"max_steps={args.align_steps}", *common],
                progress=args.progress,
            )
        previous = out / stage / "final"
    if "aligned" not in results:
        results["aligned"] = evaluate(previous, data)
        save()
    tag = f"stage3-{args.stage3_steps}" + "".join("-" + s for s in args.stage3)
    results[tag + "_seconds"] = train(
        "stage3.yaml",
        [f"model={previous}", f"output_dir={out / tag}", f"max_steps={args.stage3_steps}", *common, *args.stage3],
        progress=args.progress,
    )
    results[tag] = evaluate(out / tag / "final", data)
    save()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="an `ovis quickstart` directory (its data and vision)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--told-llm", type=Path, help="a built told LLM (python -m ovis.told_pretrain) instead")
    parser.add_argument("--told-steps", type=int, default=3000)
    parser.add_argument("--align-steps", type=int, default=300, help="stage 1 and stage 2 each")
    parser.add_argument("--stage3-steps", type=int, default=1800)
    parser.add_argument("--stage3", action="append", default=[], metavar="KEY=VALUE", help="a stage-3 override")
    parser.add_argument("--progress", action="store_true")
    print(json.dumps(run(parser.parse_args(argv)), indent=1))


if __name__ == "__main__":
    main()
