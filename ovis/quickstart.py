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
#: The training runs, in order, each a config in configs/quickstart/. Stage 3 is a curriculum in two
#: parts: scenes of at most two objects first (stage3-easy), then every scene (stage3).
STAGES = ("stage1", "stage2", "stage3-easy", "stage3")


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
    easy_steps: int | None = None,
    train_images: int = 12000,
    eval_images: int = 1000,
    seed: int = 0,
    curve_every: int | None = None,
    curve_questions: int = 300,
    progress: bool = True,
    log=print,
) -> QuickstartResult:
    """Run the whole job; returns timings and the held-out report (also in ``out/report.json``).

    ``blind`` trains and evaluates with every image blanked: the accuracy a model reaches without
    looking, which the task is built to keep near chance. ``curve_every`` also evaluates the model
    being trained every that many stage-3 steps on the first ``curve_questions`` held-out
    questions (the time spent evaluating is left out of the clock), for an accuracy-versus-time
    curve: ``report["curve"]`` and a chart in ``out/curve.png``.
    """
    import ovis
    from ovis.eval.synth import evaluate_synth
    from ovis.train import Trainer, load_train_config

    out = Path(out).resolve()
    result = QuickstartResult(out=out)
    clock = start = time.perf_counter()
    paused = paused_at_lap = 0.0  # seconds spent on learning-curve evaluations: out of every timing
    curve: list[dict] = []

    def lap(name: str) -> None:
        nonlocal clock, paused_at_lap
        now = time.perf_counter()
        result.stage_seconds[name] = round(now - clock - (paused - paused_at_lap), 1)
        clock, paused_at_lap = now, paused
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
    curve_offset = 0  # stage-3 steps done before the current part (the curriculum's first part)
    for name in STAGES:
        overrides = [
            f"model={previous}",
            f"output_dir={out / name}",
            f"data.dataset_info={data / 'dataset_info.json'}",
            f"seed={seed}",
        ]
        steps = {"stage3-easy": easy_steps, "stage3": stage3_steps}.get(name)
        if steps:
            overrides.append(f"max_steps={steps}")
        config = load_train_config(configs_dir() / f"{name}.yaml", overrides)
        final = Path(config.output_dir) / "final"
        if not (final / "config.json").is_file():
            trainer = Trainer(config, progress=progress)
            if name.startswith("stage3") and curve_every:

                def point(step: int, record: dict, trainer=trainer, offset=curve_offset) -> None:
                    nonlocal paused
                    if step % curve_every and step != trainer.total_steps:
                        return
                    began = time.perf_counter()
                    report = evaluate_synth(
                        trainer.model, trainer.processor, data / "eval.json", limit=curve_questions, progress=False
                    )
                    trainer.model.train()
                    curve.append({"step": offset + step, "seconds": round(began - start - paused, 1),
                                  "accuracy": round(report.accuracy, 4),
                                  "by_type": {k: round(v, 4) for k, v in report.by_type().items()}})
                    paused += time.perf_counter() - began
                    log(f"[quickstart] stage-3 step {offset + step}: {report.accuracy:.1%} held-out "
                        f"({curve_questions} questions)")

                trainer.on_step_end = point
            trainer.run()
            curve_offset += trainer.total_steps if name.startswith("stage3") else 0
        previous = final
        lap(name)

    model, processor = ovis.load(previous)
    report = evaluate_synth(model, processor, data / "eval.json", progress=progress)
    lap("evaluate")
    result.report = {**report.to_dict(), "seconds": result.stage_seconds, "blind": blind, "adapter": adapter,
                     "model": str(previous)}
    if curve:
        result.report["curve"] = curve
        draw_curve(curve, out / "curve.png", title=f"ovis quickstart: held-out accuracy ({curve_questions} questions)")
    (out / "report.json").write_text(json.dumps(result.report, indent=2) + "\n")
    log("\nheld-out accuracy (" + ("blind: images blanked" if blind else "images shown") + "):")
    log(report.table())
    log(f"\ntotal {result.total_seconds / 60:.1f} min; model in {previous}; report in {out / 'report.json'}")
    return result


def draw_curve(points: list[dict], path: Path, *, title: str, size: tuple[int, int] = (720, 420)) -> Path:
    """A line chart of held-out accuracy (overall and per question type) against minutes, with PIL."""
    from PIL import Image, ImageDraw

    from ovis.data.synth import QUESTION_TYPES

    width, height = size
    left, right, top, bottom = 56, 150, 36, 44
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    minutes = max(p["seconds"] for p in points) / 60 or 1.0
    span = max(1, int(minutes + 0.999))

    def xy(seconds: float, accuracy: float) -> tuple[float, float]:
        x = left + (width - left - right) * seconds / 60 / span
        return x, top + (height - top - bottom) * (1 - accuracy)

    for tick in range(0, 11):  # accuracy grid every 10%
        x0, y = xy(0, tick / 10)
        draw.line([(x0, y), (width - right, y)], fill=(225, 225, 225))
        draw.text((8, y - 6), f"{tick * 10:>3d}%", fill="black")
    for minute in range(0, span + 1):
        x, y = xy(minute * 60, 0)
        draw.line([(x, top), (x, y)], fill=(235, 235, 235))
        draw.text((x - 4, y + 6), str(minute), fill="black")
    draw.text((width // 2 - 60, height - 18), "minutes (end to end)", fill="black")
    x0, y90 = xy(0, 0.9)  # the project's target for the quick-start: 90% within 10 minutes
    for x in range(int(x0), width - right, 12):
        draw.line([(x, y90), (min(x + 6, width - right), y90)], fill=(120, 120, 120), width=1)
    draw.text((width - right - 70, y90 - 14), "90% target", fill=(90, 90, 90))
    draw.text((left, 10), title, fill="black")
    colours = ["#d62728", "#2ca02c", "#1f77b4", "#9467bd", "#ff7f0e"]
    series = [(kind, colours[i % len(colours)], 1) for i, kind in enumerate(QUESTION_TYPES)]
    for name, colour, line_width in [*series, ("all", "black", 3)]:
        values = [p["accuracy"] if name == "all" else p["by_type"].get(name) for p in points]
        line = [xy(p["seconds"], v) for p, v in zip(points, values, strict=True) if v is not None]
        if len(line) > 1:
            draw.line(line, fill=colour, width=line_width)
        legend_y = top + 18 * ([n for n, _, _ in series] + ["all"]).index(name)
        draw.line([(width - right + 12, legend_y + 6), (width - right + 36, legend_y + 6)], fill=colour, width=3)
        draw.text((width - right + 42, legend_y), name, fill="black")
    image.save(path)
    return path
