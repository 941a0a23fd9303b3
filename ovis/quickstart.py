"""The main job on the embedded default: synthesise data, compose the toy pair, train the three
Ovis stages, and report held-out accuracy per question type. Offline, on a CPU, in minutes.

It runs exactly what a user would run by hand (``ovis data synth``, ``ovis compose``, ``ovis train``
with ``configs/quickstart/stage{1,2,3}.yaml``), with the paths moved under ``out``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ovis.data.synth import SynthSpec, write_synthetic_dataset

VIT, LLM, VISUAL_VOCAB = "clip-toy", "qwen-toy", 1024


def configs_dir() -> Path:
    here = Path(__file__).resolve().parents[1] / "configs" / "quickstart"
    if not here.is_dir():
        raise FileNotFoundError(
            f"{here}: the quick-start stage configs are not there; run from a checkout of the ovis "
            "repository (pip install -e .)"
        )
    return here


@dataclass
class QuickstartResult:
    out: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    report: dict = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return sum(self.stage_seconds.values())


def quickstart(
    out: str | Path = "runs/quickstart",
    *,
    adapter: str = "structural",
    blind: bool = False,
    stage3_steps: int | None = None,
    train_images: int = 12000,
    eval_images: int = 1000,
    seed: int = 0,
    progress: bool = True,
    log=print,
) -> QuickstartResult:
    """Run the whole job; returns timings and the held-out report (also in ``out/report.json``).

    ``blind`` trains and evaluates with every image blanked: the accuracy a model reaches without
    looking, which the task is built to keep near chance.
    """
    import ovis
    from ovis.eval.synth import evaluate_synth
    from ovis.train import load_train_config, train

    out = Path(out).resolve()
    result = QuickstartResult(out=out)
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.stage_seconds[name] = round(now - clock, 1)
        clock = now
        log(f"[quickstart] {name}: {result.stage_seconds[name]:.0f} s")

    data = out / "data"
    spec = SynthSpec(train_images=train_images, eval_images=eval_images, seed=seed, blank=blind)
    if not (data / "dataset_info.json").is_file():
        write_synthetic_dataset(data, spec, progress=progress)
    lap("data")

    composed = out / "composed"
    if not (composed / "config.json").is_file():
        ovis.compose(vit=VIT, llm=LLM, visual_vocab_size=VISUAL_VOCAB, adapter=adapter, out=composed)
    lap("compose")

    previous = composed
    for stage in (1, 2, 3):
        overrides = [
            f"model={previous}",
            f"output_dir={out / f'stage{stage}'}",
            f"data.dataset_info={data / 'dataset_info.json'}",
            f"seed={seed}",
        ]
        if stage == 3 and stage3_steps:
            overrides.append(f"max_steps={stage3_steps}")
        config = load_train_config(configs_dir() / f"stage{stage}.yaml", overrides)
        final = Path(config.output_dir) / "final"
        if not (final / "config.json").is_file():
            train(config, progress=progress)
        previous = final
        lap(f"stage{stage}")

    model, processor = ovis.load(previous)
    report = evaluate_synth(model, processor, data / "eval.json", progress=progress)
    lap("evaluate")
    result.report = {**report.to_dict(), "seconds": result.stage_seconds, "blind": blind, "adapter": adapter,
                     "model": str(previous)}
    (out / "report.json").write_text(json.dumps(result.report, indent=2) + "\n")
    log("\nheld-out accuracy (" + ("blind: images blanked" if blind else "images shown") + "):")
    log(report.table())
    log(f"\ntotal {result.total_seconds / 60:.1f} min; model in {previous}; report in {out / 'report.json'}")
    return result
