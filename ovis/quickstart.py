"""The main job on the embedded default: synthesise data, compose the toy pair, pre-train the toy LLM
on text, train the Ovis stages, and report held-out accuracy per question type. Offline, on a CPU.

It runs exactly what a user would run by hand (``ovis data synth``, ``ovis compose``, ``ovis train``
with each of :data:`STAGES` from ``configs/quickstart/``), with the paths moved under ``out``.
Everything is trained here from random initialisation; nothing pretrained is loaded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ovis.errors import ConfigError, InputFileError, OutputExistsError

VIT, LLM, VISUAL_VOCAB = "clip-toy", "qwen-toy", 1024
#: The training runs, in order, each a config in ``configs/quickstart/``: text-only pre-training of
#: the toy LLM (stage 0), the paper's stages 1 and 2, and stage 3 as a curriculum (scenes of at most
#: one object, then two, then all).
STAGES = ("stage0-text", "stage1", "stage2", "stage3-max1", "stage3-max2", "stage3")
#: The budget the quick-start is held to: accuracy and minutes end to end on a 2-core CPU.
TARGET = (0.9, 10.0)


def configs_dir() -> Path:
    here = Path(__file__).resolve().parents[1] / "configs" / "quickstart"
    if not here.is_dir():
        raise InputFileError(
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


class Clock:
    """Wall-clock laps with the time spent on optional learning-curve evaluations left out."""

    def __init__(self) -> None:
        self.start = self.lap_start = time.perf_counter()
        self.paused = self.paused_at_lap = 0.0

    def now(self) -> float:
        """Seconds since the start, pauses left out."""
        return time.perf_counter() - self.start - self.paused

    def lap(self) -> float:
        now = time.perf_counter()
        seconds = now - self.lap_start - (self.paused - self.paused_at_lap)
        self.lap_start, self.paused_at_lap = now, self.paused
        return round(seconds, 1)

    def pause(self, seconds: float) -> None:
        self.paused += seconds


def machine() -> dict:
    """What the figures were measured on."""
    import os

    import torch

    from ovis.precision import cpu_model, cpu_native_bf16

    return {"cpu": cpu_model(), "cores": os.cpu_count(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_native_bf16(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def quickstart(
    out: str | Path = "runs/quickstart",
    *,
    adapter: str = "structural",
    blind: bool = False,
    steps: dict[str, int] | None = None,
    train_images: int = 12000,
    eval_images: int = 1000,
    compositional_images: int = 500,
    seed: int = 0,
    precision: str = "auto",
    curve_every: int | None = None,
    curve_questions: int = 300,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> QuickstartResult:
    """Run the whole job; returns timings and the held-out report (also in ``out/report.json``).

    ``precision`` (``auto``, ``bf16``, ``fp32``) replaces every stage's. ``steps`` overrides
    ``max_steps`` per stage name (a key of :data:`STAGES`). ``blind`` trains
    and evaluates with every image blanked: the accuracy a model reaches without looking, which the
    task is built to keep near chance. ``curve_every`` also evaluates the model being trained every
    that many steps of the multimodal stages on the first ``curve_questions`` held-out questions
    (the time spent evaluating is left out of the clock), for an accuracy-versus-time curve:
    ``report["curve"]`` and a chart in ``out/curve.png``.
    """
    # Lazy, like every heavy import of this module: the command line imports it to build its
    # parser (STAGES), and `ovis --help` must not import torch.
    import torch

    import ovis
    from ovis.data.synth import SynthSpec, write_synthetic_dataset
    from ovis.eval.synth import evaluate_synth
    from ovis.precision import resolve_precision
    from ovis.train import Trainer, load_train_config

    unknown = sorted(set(steps or {}) - set(STAGES))
    if unknown:
        raise ConfigError(f"steps for unknown stage(s) {', '.join(unknown)}; the stages are {', '.join(STAGES)}")
    out = Path(out).resolve()
    result = QuickstartResult(out=out)
    clock = Clock()
    curve: list[dict] = []
    spans: list[tuple[str, float, float]] = []
    chosen = resolve_precision(precision)
    log(str(chosen))

    def lap(name: str) -> None:
        ended = clock.now()
        result.stage_seconds[name] = clock.lap()
        spans.append((name, ended - result.stage_seconds[name], ended))
        log(f"[quickstart] {name}: {result.stage_seconds[name]:.0f} s")

    data = out / "data"
    spec = SynthSpec(train_images=train_images, eval_images=eval_images, seed=seed, blank=blind,
                     compositional_images=compositional_images)
    if not _reusable(data / "dataset_info.json", data, "data", asdict(spec)):
        write_synthetic_dataset(data, spec, progress=progress)
        _record_key(data, asdict(spec))
    lap("data")

    composed = out / "composed"
    compose_key = {"vit": VIT, "llm": LLM, "visual_vocab_size": VISUAL_VOCAB, "adapter": adapter, "seed": seed}
    if not _reusable(composed / "config.json", composed, "compose", compose_key):
        torch.manual_seed(seed)  # the random initial weights, so that seeds differ in them too
        ovis.compose(vit=VIT, llm=LLM, visual_vocab_size=VISUAL_VOCAB, adapter=adapter, out=composed)
        _record_key(composed, compose_key)
    lap("compose")

    def evaluate(model, processor, eval_file: str, *, mode: str = "image", limit: int | None = None):
        return evaluate_synth(model, processor, data / eval_file, limit=limit, progress=progress and limit is None,
                              mode="blind" if blind and mode == "image" else mode)

    previous, text_report = composed, None
    for name in STAGES:
        overrides = [f"model={previous}", f"output_dir={out / name}",
                     f"data.dataset_info={data / 'dataset_info.json'}", f"seed={seed}", f"precision={precision}"]
        if steps and name in steps:
            overrides.append(f"max_steps={steps[name]}")
        config = load_train_config(configs_dir() / f"{name}.yaml", overrides)
        final = Path(config.output_dir) / "final"
        # The stage's config names its input (the previous stage), so a changed earlier stage changes it too.
        key = {"config": config.model_dump(mode="json")}
        if not _reusable(final / "config.json", final, name, key):
            trainer = Trainer(config, progress=progress)
            if curve_every and config.stage > 0:
                trainer.on_step_end = _curve_hook(trainer, name, curve_every, curve, clock, log,
                                                  lambda m, p: evaluate(m, p, "eval.json", limit=curve_questions))
            trainer.run()
            _record_key(final, key)
        previous = final
        if config.stage == 0:  # the pre-trained toy LLM, asked with the scene told in words
            model, processor = ovis.load(final)
            text_report = evaluate(model, processor, "eval.json", mode="text")
            log(f"[quickstart] text-only accuracy after {name} (scene in words): {text_report.accuracy:.1%}")
        lap(name)

    model, processor = ovis.load(previous)
    report = evaluate(model, processor, "eval.json")
    compositional = (evaluate(model, processor, "eval-compositional.json")
                     if (data / "eval-compositional.json").is_file() else None)
    lap("evaluate")
    result.report = {
        **report.to_dict(),
        "compositional": compositional.to_dict() if compositional else None,
        "text_only": text_report.to_dict() if text_report else None,
        "seconds": result.stage_seconds,
        "minutes": round(result.total_seconds / 60, 2),
        "target": {"accuracy": TARGET[0], "minutes": TARGET[1]},
        "blind": blind, "adapter": adapter, "model": str(previous),
        "precision": str(chosen), "machine": machine(),
    }
    if curve:
        result.report["curve"] = curve
        _draw(curve, spans, out / "curve.png", curve_questions, text_report)
    (out / "report.json").write_text(json.dumps(result.report, indent=2) + "\n")
    log("\nheld-out accuracy (" + ("blind: images blanked" if blind else "images shown") + "):")
    log(report.table())
    if compositional:
        log(f"\nunseen colour-shape pairs (compositional split): {compositional.accuracy:.1%}")
        log(compositional.table())
    if text_report:
        log(f"\nthe pre-trained toy LLM with the scene told in words: {text_report.accuracy:.1%}")
    log(f"\ntotal {result.total_seconds / 60:.1f} min; model in {previous}; report in {out / 'report.json'}")
    return result


KEY_FILE = "quickstart-key.json"


def _reusable(done_marker: Path, directory: Path, step: str, key: dict) -> bool:
    """Whether ``directory`` already holds this step's result, made from exactly ``key``.

    A result made from anything else is never reused: the error says what differs, since silently
    redoing the step would overwrite what another run produced.
    """
    if not done_marker.is_file():
        return False
    recorded = directory / KEY_FILE
    previous = json.loads(recorded.read_text()) if recorded.is_file() else None
    key = json.loads(json.dumps(key))  # as recorded: tuples become lists
    if previous == key:
        return True
    changed = sorted(k for k in {*key, *previous} if previous.get(k) != key.get(k)) if previous else []
    raise OutputExistsError(
        f"{directory} holds a {step} result made with other settings"
        + (f" ({', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'})" if changed
           else " (it records none)")
        + "; give another --out, or delete that directory to redo it"
    )


def _record_key(directory: Path, key: dict) -> None:
    (directory / KEY_FILE).write_text(json.dumps(key, indent=1, sort_keys=True) + "\n")


def _curve_hook(trainer, name: str, every: int, curve: list[dict], clock: Clock, log, evaluate):
    """An ``on_step_end`` that evaluates every ``every`` steps and at the stage's last step."""

    def point(step: int, record: dict) -> None:
        if step % every and step != trainer.total_steps:
            return
        began = time.perf_counter()
        report = evaluate(trainer.model, trainer.processor)
        trainer.model.train()
        curve.append({"stage": name, "step": step, "seconds": round(clock.now(), 1),
                      "accuracy": round(report.accuracy, 4),
                      "by_type": {k: round(v, 4) for k, v in report.by_type().items()}})
        clock.pause(time.perf_counter() - began)
        log(f"[quickstart] {name} step {step}: {report.accuracy:.1%} held-out ({sum(report.total.values())} questions)")

    return point


def _draw(curve: list[dict], spans, path: Path, questions: int, text_report) -> Path:
    from ovis.charts import accuracy_curve
    from ovis.data.synth import QUESTION_TYPES
    from ovis.eval.synth import CHANCE

    return accuracy_curve(
        curve, path, title=f"ovis quickstart: held-out accuracy against time ({questions} questions per point)",
        types=QUESTION_TYPES, spans=[s for s in spans if s[0] not in ("data", "compose")], target=TARGET,
        ceiling=text_report.accuracy if text_report else None, chance=CHANCE,
    )
