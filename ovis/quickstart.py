"""The main job on the embedded default: synthesise data, compose the toy pair, pre-train the toy ViT
on the scenes, train the Ovis stages, and report held-out accuracy per question type. Offline, on a
CPU.

Ovis starts from a pretrained ViT and a pretrained LLM. The toy ViT is pre-trained here, inside the
timed run. The toy LLM is not: it is the shipped preset ``qwen-toy-told`` (:data:`ovis.toy.TOLD_LLM`),
qwen-toy pre-trained offline on these scenes told in words (:mod:`ovis.told_pretrain`, which rebuilds
it bit for bit). The report says so, with that build's time and the accuracy the LLM reaches from the
scene told in words: the ceiling the visual path aims for.

It runs exactly what a user would run by hand (``ovis data synth``, ``ovis compose``, ``ovis
pretrain-vision``, ``ovis train`` with each of :data:`STAGES` from ``configs/quickstart/``), with the
paths moved under ``out``.

The command line imports this module to build its parser (:data:`STAGES`), and ``ovis --help``
must not import torch: so every import of torch, the data, training and evaluation code is inside
the function that needs it (for start-up speed, not to dodge a cycle).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ovis.errors import ConfigError, InputFileError, OutputExistsError
from ovis.toy import HIDDEN_STRIDE, TOLD_LLM, VISUAL_VOCAB, VIT

#: The training runs, in order, each a config in ``configs/quickstart/``: the paper's stages 1, 2
#: and 3.
STAGES = ("stage1", "stage2", "stage3")
#: The step before them that pre-trains the toy ViT on the scenes (:mod:`ovis.train.vision_pretrain`),
#: as Ovis starts from a pretrained ViT; ``steps={VISION: n}`` changes its length (0: keep it random).
VISION = "vision"
#: The budget the quick-start is held to: accuracy and minutes end to end on a 2-core CPU.
TARGET = (0.9, 10.0)
#: Synthetic scenes the visual vocabulary is measured on after each stage (ovis.inspect); 0 skips it.
VOCABULARY_SCENES = 200


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
    vocabulary_scenes: int = VOCABULARY_SCENES,
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
    ``report["curve"]`` and a chart in ``out/curve.png``. ``vocabulary_scenes`` (0: skip) measures
    the visual vocabulary after every stage on that many synthetic scenes, the same ones each time
    (:func:`ovis.inspect.vocabulary_figures`: words used, entropy, MI with colour and shape), also
    left out of the clock: ``report["vocabulary"]`` and a chart in ``out/vocabulary.png``. The
    MLP adapter has no vocabulary, so nothing is measured for it.
    """
    from ovis.data.synth import SynthSpec
    from ovis.precision import machine, resolve_precision

    unknown = sorted(set(steps or {}) - {VISION, *STAGES})
    if unknown:
        raise ConfigError(
            f"steps for unknown stage(s) {', '.join(unknown)}; the stages are {', '.join((VISION, *STAGES))}"
        )
    if any(n < 0 for n in (steps or {}).values()):
        raise ConfigError(f"steps must be 0 or more, got {steps}")
    if vocabulary_scenes < 0:
        raise ConfigError(f"vocabulary_scenes must be 0 (skip) or more, got {vocabulary_scenes}")
    run = _Run(Path(out).resolve(), blind=blind, seed=seed, progress=progress, log=log)
    run.vocabulary_scenes = vocabulary_scenes if adapter == "structural" else 0
    chosen = resolve_precision(precision)
    log(str(chosen))
    run.make_data(SynthSpec(train_images=train_images, eval_images=eval_images, seed=seed, blank=blind,
                            compositional_images=compositional_images))
    run.compose(adapter)
    run.pretrain_vision((steps or {}).get(VISION))
    model_dir = run.train(precision, steps or {}, curve_every, curve_questions)
    report, compositional, told = run.evaluate_final(model_dir)
    result = run.result
    result.report = {
        **report.to_dict(),
        "compositional": compositional.to_dict() if compositional else None,
        "told_llm": run.told_llm | (told or {}),
        "vision_pretraining": run.vision_report,
        "seconds": result.stage_seconds,
        "minutes": round(result.total_seconds / 60, 2),
        "target": {"accuracy": TARGET[0], "minutes": TARGET[1]},
        "blind": blind, "adapter": adapter, "model": str(model_dir),
        # What produced these figures, so that runs compared side by side can be checked alike.
        "recipe": {"seed": seed, "steps": run.steps, "train_images": train_images, "eval_images": eval_images,
                   "compositional_images": compositional_images, "vision": run.vision_recipe},
        "precision": str(chosen), "machine": machine(),
    }
    if run.curve:
        result.report["curve"] = run.curve
        _draw(run.curve, run.spans, run.out / "curve.png", curve_questions, told)
    if run.vocabulary:
        result.report["vocabulary"] = run.vocabulary_report()
    (run.out / "report.json").write_text(json.dumps(result.report, indent=2) + "\n")
    _summarise(log, report, compositional, told, blind)
    log(f"\ntotal {result.total_seconds / 60:.1f} min; model in {model_dir}; report in {run.out / 'report.json'}")
    return result


class _Run:
    """One quick-start run: its directory, clock and curve, and its steps in order; every step is
    skipped when its directory holds a result made from the same key (see :func:`_reusable`)."""

    def __init__(self, out: Path, *, blind: bool, seed: int, progress: bool, log: Callable[[str], None]) -> None:
        self.out, self.blind, self.seed, self.progress, self.log = out, blind, seed, progress, log
        self.data = out / "data"
        self.composed = out / "composed"
        self.vision = out / VISION
        self.vision_report: dict | None = None
        self.vision_recipe: dict = {}  # the ViT pre-training's settings but its steps and seed
        self.steps: dict[str, int] = {}  # every step's length as run: the recipe's or an override
        self.told_llm: dict = {}
        self.result = QuickstartResult(out=out)
        self.clock = Clock()
        self.curve: list[dict] = []
        self.spans: list[tuple[str, float, float]] = []
        self.vocabulary_scenes = 0
        self.vocabulary: dict[str, dict] = {}
        self.vocabulary_seconds: dict[str, float] = {}
        self._scenes: list | None = None

    def lap(self, name: str) -> None:
        ended = self.clock.now()
        seconds = self.result.stage_seconds[name] = self.clock.lap()
        self.spans.append((name, ended - seconds, ended))
        self.log(f"[quickstart] {name}: {seconds:.0f} s")

    def make_data(self, spec) -> None:
        from ovis.data.synth import GENERATOR_VERSION, write_synthetic_dataset

        # Options left unset (the high-resolution ones) stay out of the key, so data made before they
        # existed is still recognised as the same.
        key = {k: v for k, v in asdict(spec).items() if v is not None} | {"generator": GENERATOR_VERSION}
        if not _reusable(self.data / "dataset_info.json", self.data, "data", key):
            write_synthetic_dataset(self.data, spec, progress=self.progress)
            _record_key(self.data, key)
        self.lap("data")

    def compose(self, adapter: str) -> None:
        import torch

        import ovis

        self.told_llm = told_llm_facts()
        self.log(f"[quickstart] LLM: {TOLD_LLM}, pre-trained offline ({self.told_llm['steps']} steps, "
                 f"{self.told_llm['build_seconds'] / 60:.0f} min to build; not in this run's time)")
        key = {"vit": VIT, "llm": TOLD_LLM, "llm_sha256": self.told_llm["sha256"], "visual_vocab_size": VISUAL_VOCAB,
               "hidden_stride": HIDDEN_STRIDE, "adapter": adapter, "seed": self.seed}
        if not _reusable(self.composed / "config.json", self.composed, "compose", key):
            torch.manual_seed(self.seed)  # the random initial weights, so that seeds differ in them too
            ovis.compose(vit=VIT, llm=TOLD_LLM, visual_vocab_size=VISUAL_VOCAB, hidden_stride=HIDDEN_STRIDE,
                         adapter=adapter, out=self.composed)
            _record_key(self.composed, key)
        self.lap("compose")

    def pretrain_vision(self, steps: int | None) -> None:
        """Pre-train the composed model's ViT on the scenes (``steps`` overrides the recipe's)."""
        from ovis.train.vision_pretrain import REPORT_FILE, VisionPretrainConfig, pretrain_vision_directory

        config = VisionPretrainConfig(seed=self.seed, **({} if steps is None else {"steps": steps}))
        self.steps[VISION] = config.steps
        self.vision_recipe = {k: v for k, v in config.key().items() if k not in ("seed", "steps")}
        key = {"composed": _recorded_key(self.composed), "pretraining": config.key()}
        if not _reusable(self.vision / "config.json", self.vision, VISION, key):
            pretrain_vision_directory(self.composed, self.vision, config, progress=self.progress, log=self.log)
            _record_key(self.vision, key)
        self.vision_report = json.loads((self.vision / REPORT_FILE).read_text())
        self.lap(VISION)
        self.measure_vocabulary(VISION, self.vision)

    def evaluate(self, model, processor, eval_file: str, *, limit: int | None = None):
        from ovis.eval.synth import evaluate_synth

        return evaluate_synth(model, processor, self.data / eval_file, limit=limit,
                              progress=self.progress and limit is None, mode="blind" if self.blind else "image")

    def train(self, precision: str, steps: dict[str, int], curve_every: int | None, curve_questions: int) -> Path:
        """Every stage of :data:`STAGES`, each from the previous one's export; returns the last
        export."""
        from ovis.train import Trainer, load_train_config

        previous = self.vision
        for name in STAGES:
            overrides = [f"model={previous}", f"output_dir={self.out / name}",
                         f"data.dataset_info={self.data / 'dataset_info.json'}", f"seed={self.seed}",
                         f"precision={precision}"]
            if name in steps:
                overrides.append(f"max_steps={steps[name]}")
            config = load_train_config(configs_dir() / f"{name}.yaml", overrides)
            self.steps[name] = config.max_steps
            final = Path(config.output_dir) / "final"
            # The config names its model and data only by path: their own keys make a redone earlier
            # step (its directory deleted, then remade otherwise) change this stage's key too.
            key = {"config": config.model_dump(mode="json"), "input": _recorded_key(previous),
                   "data": _recorded_key(self.data)}
            if not _reusable(final / "config.json", final, name, key):
                trainer = Trainer(config, progress=self.progress)
                if curve_every:
                    trainer.on_step_end = _curve_hook(
                        trainer, name, curve_every, self.curve, self.clock, self.log,
                        lambda m, p: self.evaluate(m, p, "eval.json", limit=curve_questions),
                    )
                trainer.run()
                _record_key(final, key)
            previous = final
            self.lap(name)
            self.measure_vocabulary(name, final)
        return previous

    def measure_vocabulary(self, name: str, model_dir: Path) -> None:
        """The stage's visual-vocabulary figures on the run's scenes, off the clock; training is
        untouched (the model is loaded afresh from the stage's export)."""
        if not self.vocabulary_scenes:
            return
        import ovis
        from ovis.inspect import vocabulary_figures
        from ovis.inspect.meaning import synthetic_scenes

        began = time.perf_counter()
        model, processor = ovis.load(model_dir, dtype="float32")
        if self._scenes is None:  # drawn once: every stage is measured on the same scenes
            self._scenes = synthetic_scenes(self.vocabulary_scenes, processor.image_processor.image_size, self.seed)
        self.vocabulary[name] = vocabulary_figures(model.eval(), processor, self._scenes, seed=self.seed)
        seconds = self.vocabulary_seconds[name] = round(time.perf_counter() - began, 1)
        self.clock.pause(seconds)
        figures = self.vocabulary[name]
        self.log(f"[quickstart] {name} vocabulary: {figures['words_used']} words used, "
                 f"MI colour {figures['mi_colour_bits']:.2f} bits, shape {figures['mi_shape_bits']:.2f} bits "
                 f"({seconds:.0f} s, off the clock)")

    def vocabulary_report(self) -> dict:
        """``report["vocabulary"]``: the figures per stage, what they cost, and their chart."""
        from ovis.inspect import draw

        chart = draw.figures_by_stage(
            self.vocabulary, self.out / "vocabulary.png",
            title=f"ovis quickstart: the visual vocabulary after each stage ({self.vocabulary_scenes} scenes)")
        return {"scenes": self.vocabulary_scenes, "seed": self.seed, "by_stage": self.vocabulary,
                "seconds": self.vocabulary_seconds, "chart": chart.name}

    def evaluate_final(self, model_dir: Path):
        """The trained model on the held-out and compositional questions, and the ceiling: the
        pre-trained LLM (the vision step's model, whose LLM no stage has trained yet) answering
        from each scene told in words (:func:`ovis.told_pretrain.telling`). A blind run has no scene
        to tell: its ceiling is None."""
        import ovis
        from ovis.eval.synth import evaluate_splits
        from ovis.told_pretrain import telling

        mode = "blind" if self.blind else "image"
        reports = evaluate_splits(*ovis.load(model_dir), self.data, mode=mode, progress=self.progress)
        told = None
        if not self.blind:
            pretrained, processor = ovis.load(self.vision)
            with telling(pretrained, processor):
                ceiling = evaluate_splits(pretrained, processor, self.data, progress=self.progress)
            unseen = ceiling.get("eval-compositional.json")
            told = {**ceiling["eval.json"].to_dict(), "compositional": unseen.to_dict() if unseen else None}
        self.lap("evaluate")
        return reports["eval.json"], reports.get("eval-compositional.json"), told


def _summarise(log: Callable[[str], None], report, compositional, told: dict | None, blind: bool) -> None:
    log("\nheld-out accuracy (" + ("blind: images blanked" if blind else "images shown") + "):")
    log(report.table())
    if compositional:
        log(f"\nunseen colour-shape pairs (compositional split): {compositional.accuracy:.1%}")
        log(compositional.table())
    if told:
        unseen = f", unseen pairs {told['compositional']['accuracy']:.1%}" if told["compositional"] else ""
        log(f"\nthe ceiling: the pre-trained toy LLM ({TOLD_LLM}) with each scene told in words: "
            f"{told['accuracy']:.1%}{unseen}")


def told_llm_facts() -> dict:
    """What the quick-start did not train itself: the shipped told LLM's preset, the sha256 of its
    weights, and how its build went (from the report beside them)."""
    from ovis.plugin_host import get_host
    from ovis.told_pretrain import REPORT_FILE

    folder = Path(get_host().llm(TOLD_LLM).spec.weights)
    built = json.loads((folder / REPORT_FILE).read_text())
    return {
        "preset": TOLD_LLM, "sha256": built["sha256"], "steps": built["steps"],
        "build_seconds": built["build_seconds"], "build_machine": built["machine"],
        "rebuild": f"OMP_NUM_THREADS=1 python -m ovis.told_pretrain --out DIR ({REPORT_FILE} there)",
    }


KEY_FILE = "quickstart-key.json"


def _reusable(done_marker: Path, directory: Path, step: str, key: dict) -> bool:
    """Whether ``directory`` already holds this step's result, made from exactly ``key``.

    A result made from anything else is never reused: the error says what differs, since silently
    redoing the step would overwrite what another run produced.
    """
    if not done_marker.is_file():
        return False
    previous = _recorded_key(directory) if (directory / KEY_FILE).is_file() else None
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


def _recorded_key(directory: Path) -> dict:
    return json.loads((directory / KEY_FILE).read_text())


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


def _draw(curve: list[dict], spans, path: Path, questions: int, told: dict | None) -> Path:
    from ovis.charts import accuracy_curve
    from ovis.data.synth import QUESTION_TYPES
    from ovis.eval.synth import CHANCE

    return accuracy_curve(
        curve, path, title=f"ovis quickstart: held-out accuracy against time ({questions} questions per point)",
        types=QUESTION_TYPES, spans=[s for s in spans if s[0] not in ("data", "compose")], target=TARGET,
        ceiling=told["accuracy"] if told else None, chance=CHANCE,
    )
