"""The paper's central ablation at toy scale: structural embedding (Ovis) vs an MLP projector
(LLaVA-style), plus a blind model, trained with the same recipe, data, budget and seeds.

Runs the quick-start pipeline (``ovis.quickstart``: pre-training of the toy ViT, the told toy LLM
as shipped, stages 1-2, stage 3) once per variant and seed, then prints held-out accuracy per question type,
on the compositional split (colour-shape pairs never seen in training) and stage-3 step times, per
run and as mean +- standard deviation over seeds, measured side by side in one run:

    python benchmarks/adapter_ablation.py --out runs/ablation --seeds 0 1 2
    python benchmarks/adapter_ablation.py --steps stage3=800          # a shorter budget
    python benchmarks/adapter_ablation.py --reuse structural-seed0=runs/quickstart

``--reuse`` takes a finished quick-start directory for one run (same recipe, same seed) instead of
training it again. Numbers depend on the machine and the budget; the table is reported whichever
way it falls.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ovis.data.synth import QUESTION_TYPES
from ovis.quickstart import STAGES, VISION, quickstart

VARIANTS = {
    "structural": {"adapter": "structural", "blind": False},
    "mlp": {"adapter": "mlp", "blind": False},
    "blind": {"adapter": "structural", "blind": True},
}
COLUMNS = ("accuracy", *QUESTION_TYPES, "compositional", "step_s", "minutes")


def step_time(stage_dir: Path) -> float:
    records = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time"] for r in records[10:]] or [r["step_time"] for r in records]
    return statistics.median(times)


def row(variant: str, seed: int, out: Path, report: dict) -> dict:
    return {"variant": variant, "seed": seed, "accuracy": report["accuracy"], **report["by_type"],
            "compositional": (report.get("compositional") or {}).get("accuracy"),
            "step_s": step_time(out / "stage3"), "minutes": report["minutes"], "out": str(out)}


def _fmt(column: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if column == "step_s" else f"{value:.1f}" if column == "minutes" else f"{value:.1%}"


def summary(rows: list[dict]) -> list[dict]:
    """Per variant: mean and (sample) standard deviation of every column over its seeds."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        entry = {"variant": variant, "seeds": [r["seed"] for r in mine]}
        for column in COLUMNS:
            values = [r[column] for r in mine if r[column] is not None]
            if values:
                entry[column] = statistics.mean(values)
                entry[f"{column}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", action="append", default=[], metavar="STAGE=N",
                        help="override one stage's max_steps for every run; stages: " + ", ".join((VISION, *STAGES)))
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--variants", nargs="+", default=["structural", "mlp"], choices=list(VARIANTS))
    parser.add_argument("--reuse", action="append", default=[], metavar="VARIANT-seedN=DIR",
                        help="a finished quick-start directory to use for that run")
    args = parser.parse_args()
    steps = {name: int(n) for name, _, n in (s.partition("=") for s in args.steps)}
    reuse = dict(r.split("=", 1) for r in args.reuse)

    rows, recipes = [], []
    for seed in args.seeds:
        for name in args.variants:
            key = f"{name}-seed{seed}"
            out = Path(reuse.get(key) or Path(args.out) / key)
            report_file = out / "report.json"
            if key in reuse:
                report = json.loads(report_file.read_text())
                if (report["adapter"], report["blind"]) != (VARIANTS[name]["adapter"], VARIANTS[name]["blind"]):
                    raise SystemExit(f"--reuse {key}={out}: that run is adapter={report['adapter']}, "
                                     f"blind={report['blind']}")
                recorded = report.get("recipe", {}).get("seed", "not recorded")
                if recorded != seed:
                    raise SystemExit(f"--reuse {key}={out}: that run's seed is {recorded}, not {seed}")
            else:
                report = quickstart(out, seed=seed, steps=steps, precision=args.precision, progress=False,
                                    **VARIANTS[name]).report
            rows.append(row(name, seed, out, report))
            # The told LLM is part of the budget too: runs on differently built presets do not compare.
            recipe = {k: v for k, v in report["recipe"].items() if k != "seed"}
            recipes.append((key, out, recipe | {"told_llm_sha256": report.get("told_llm", {}).get("sha256")}))
    for key, out, recipe in recipes[1:]:
        if recipe != recipes[0][2]:
            raise SystemExit(f"{key} ({out}) ran another recipe than {recipes[0][0]} ({recipes[0][1]}): "
                             f"{recipe} against {recipes[0][2]}; the comparison needs one budget")

    print(f"\n| variant | seed | all | {' | '.join(QUESTION_TYPES)} | unseen pairs | stage-3 step (s) | total (min) |")
    print("|" + " --- |" * (len(COLUMNS) + 2))
    for r in rows:
        print(f"| {r['variant']} | {r['seed']} | " + " | ".join(_fmt(c, r[c]) for c in COLUMNS) + " |")
    means = summary(rows)
    print(f"\n| variant | seeds | all | {' | '.join(QUESTION_TYPES)} | unseen pairs | stage-3 step (s) | total (min) |")
    print("|" + " --- |" * (len(COLUMNS) + 2))
    for m in means:
        cells = [f"{_fmt(c, m.get(c))} ± {_fmt(c, m.get(c + '_sd'))}" if c in m else "-" for c in COLUMNS]
        print(f"| {m['variant']} | {len(m['seeds'])} | " + " | ".join(cells) + " |")
    by = {m["variant"]: m for m in means}
    if "structural" in by and "mlp" in by:
        print(f"\nstep-time ratio mlp / structural: {by['mlp']['step_s'] / by['structural']['step_s']:.2f}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "ablation.json").write_text(json.dumps({"runs": rows, "summary": means}, indent=2) + "\n")


if __name__ == "__main__":
    main()
