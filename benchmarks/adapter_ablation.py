"""The paper's central ablation at toy scale: structural embedding (Ovis) vs an MLP projector
(LLaVA-style), plus a blind model, trained with the same recipe, data, budget and seeds.

Runs the quick-start pipeline (``ovis.quickstart``) once per variant and seed, then prints held-out
accuracy per question type and stage-3 step times side by side, as ratios measured in one run:

    python benchmarks/adapter_ablation.py --out runs/ablation --seeds 0 1
    python benchmarks/adapter_ablation.py --stage3-steps 800      # a shorter budget

Numbers depend on the machine and the budget; the table is reported whichever way it falls.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ovis.data.synth import QUESTION_TYPES
from ovis.quickstart import quickstart

VARIANTS = {
    "structural": {"adapter": "structural", "blind": False},
    "mlp": {"adapter": "mlp", "blind": False},
    "blind": {"adapter": "structural", "blind": True},
}


def step_time(stage_dir: Path) -> float:
    records = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time"] for r in records[10:]] or [r["step_time"] for r in records]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--stage3-steps", type=int, default=None)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()

    rows = []
    for seed in args.seeds:
        for name in args.variants:
            out = Path(args.out) / f"{name}-seed{seed}"
            result = quickstart(out, seed=seed, stage3_steps=args.stage3_steps, progress=False, **VARIANTS[name])
            rows.append({"variant": name, "seed": seed, "accuracy": result.report["accuracy"],
                         **result.report["by_type"], "step_s": step_time(out / "stage3"),
                         "minutes": result.total_seconds / 60})
    print(f"\n| variant | seed | all | {' | '.join(QUESTION_TYPES)} | stage-3 step (s) | total (min) |")
    print("|" + " --- |" * (len(QUESTION_TYPES) + 5))
    for r in rows:
        cells = " | ".join(f"{r[k]:.1%}" for k in QUESTION_TYPES)
        print(f"| {r['variant']} | {r['seed']} | {r['accuracy']:.1%} | {cells} | {r['step_s']:.3f} "
              f"| {r['minutes']:.1f} |")
    base = [r["step_s"] for r in rows if r["variant"] == "structural"]
    mlp = [r["step_s"] for r in rows if r["variant"] == "mlp"]
    if base and mlp:
        print(f"\nstep-time ratio mlp / structural: {statistics.mean(mlp) / statistics.mean(base):.2f}")
    (Path(args.out) / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
