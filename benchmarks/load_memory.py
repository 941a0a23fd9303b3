"""Peak host memory per rank while a ZeRO-3 run loads its model and takes its first step.

Two gloo ranks on this CPU train stage 1 (visual head + VTE; the LLM frozen, so the optimizer's
states stay small and the figure is the model's) of a random-init model of about 1B parameters:
a Qwen2.5-3B-architecture LLM (width 2048, 16 heads, 2 KV heads, MLP 11008, vocabulary 152064, tied
embeddings) cut to ``--layers`` layers, behind the clip-toy ViT, saved in float32 (``ovis compose``'s
default) and trained in bf16 (``--train all``: stage 3 instead, everything trains, and the
optimizer's states are most of the figure). Each mode runs in fresh processes:

* ``zero3``: today's loading (``ovis.train.model_loading``): built under ``zero.Init``, each rank
  reads its slices; the frozen tied embedding used over each rank's rows (``ovis.train.vocab_parallel``)
  and so are the LLM's frozen Linear layers where that moves less (``ovis.train.frozen_linears``);
* ``zero3-gathered``: the same loading, every matrix gathered whole by DeepSpeed as it is used (as
  before those two);
* ``whole``: the loading before it: every rank loads the whole model (``ovis.load``), then
  ``deepspeed.initialize`` partitions it;
* ``single``: one process loading the model whole in bf16 as ZeRO-2 / one process / the PyTorch
  engine now do (``model_loading.load_streamed``), and ``single-hf``: as they did before
  (``ovis.load``, transformers' ``from_pretrained``): is there a float32 copy beside the bf16 one?

The DeepSpeed config is the built-in ``zero3`` with ``stage3_max_live_parameters`` and
``stage3_max_reuse_distance`` at 1e8 instead of 1e9: the built-in values let a whole model of up
to 1B parameters stay gathered through a step (right for the 7B-70B models they are meant for; at
1B they would measure the config, not the loading).

Printed per rank, as peaks of the resident set above its value before loading (imports and the
process group done), in full bf16 copies of the model: reading the weights (the model alone, above
the resident set once the processor is loaded: the processor comes first, as in training), up to
the engine ready (adds the processor and DeepSpeed's own buffers), and the first training step
(not for ``whole``: its step is ``zero3-gathered``'s);
also the parameter elements the rank holds after loading. The target (issue 18): at most 60% of a
full copy per rank at 2 ranks under ZeRO-3.

Then where each ZeRO-3 mode's first step peaks on rank 0 (a thread samples the resident set every
millisecond, filed under the phase running: the engine's forward / backward / optimizer step, the
token lookup, each decoder layer, the LM head and loss) and how much of the model DeepSpeed holds
gathered whole at each phase's peak, what ``malloc_trim`` still gives back after
the step, and the fixed part of the setup: the processor (its tokenizer: 152K words, the same
whatever the model's size) measured on its own.

    python benchmarks/load_memory.py [--layers 9] [--gradient-checkpointing] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TARGET = 0.60
WORLD = 2


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current resident set


def build_model(workdir: Path, layers: int) -> Path:
    """The ~1B model directory (written once, reused)."""
    out = workdir / f"qwen2.5-3b-width-{layers}-layers"
    if (out / "config.json").is_file():
        return out
    import ovis
    from ovis.model import OvisConfig, OvisForCausalLM

    torch.manual_seed(0)
    tiny, processor = ovis.compose(vit="clip-toy", llm="qwen2.5-tiny", visual_vocab_size=4096)
    llm = dict(tiny.config.llm_config.to_dict())
    llm.update(
        hidden_size=2048,
        intermediate_size=11008,
        num_attention_heads=16,
        num_key_value_heads=2,
        num_hidden_layers=layers,
        tie_word_embeddings=True,
        head_dim=128,
    )
    llm.pop("layer_types", None)
    fields = tiny.config.to_dict()
    fields["llm_config"] = llm
    for key in ("architectures", "transformers_version", "model_type", "dtype", "torch_dtype"):
        fields.pop(key, None)
    config = OvisConfig(**fields)
    model = OvisForCausalLM(config)
    model.tie_weights()
    print(f"built a {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B-parameter model; writing {out}", flush=True)
    return ovis.save(model, processor, out, overwrite=True)


class _Probe:
    """Where the first step's resident set peaks: a thread samples ``VmRSS`` every millisecond and
    files each sample under the phase running then (set by forward hooks on the model's blocks and
    by wrapping the engine's forward / backward / optimizer step); also the resident set at each
    phase's end and what ``malloc_trim`` gives back after the step (memory freed but kept by glibc)."""

    def __init__(self) -> None:
        import threading

        self.phase = self.outer = "setup"
        self.peaks: dict[str, int] = {}
        #: per phase, at its peak: the elements gathered whole (not only the rank's partition) and by whom
        self.gathered: dict[str, tuple[int, list[str]]] = {}
        self._params: list = []
        self.ends: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            rss = _status("VmRSS")
            phase = self.phase
            if rss > self.peaks.get(phase, 0):
                self.peaks[phase] = rss
                self.gathered[phase] = self._whole()

    def _whole(self) -> tuple[int, list[str]]:
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        names = [n for n, p in self._params if getattr(p, "ds_status", None) is not ZeroParamStatus.NOT_AVAILABLE]
        numel = sum(p.ds_numel for n, p in self._params if n in set(names))
        return numel, names

    def enter(self, phase: str) -> None:
        self.phase = phase

    def end(self, phase: str) -> None:
        self.ends.append((phase, _status("VmRSS")))

    def watch(self, engine) -> None:
        """Hooks on ``engine`` (an ``ovis.train.engines.DeepSpeedEngine``): its forward / backward /
        step, and within them the model's blocks (recomputed layers fall under the backward) and the
        lookup and loss over the vocabulary rows."""
        from ovis.train.step import causal_lm

        step_module = engine.engine.module
        model = step_module.model
        self._params = [(n, p) for n, p in model.named_parameters() if hasattr(p, "ds_status")]
        lm = causal_lm(model.llm)
        blocks = {"visual_tokenizer": model.visual_tokenizer, "vte": model.vte}
        decoder = lm.get_decoder()
        blocks["embed_tokens"] = decoder.embed_tokens
        for i, layer in enumerate(decoder.layers):
            blocks[f"layer{i}"] = layer
        blocks["lm_head"] = lm.get_output_embeddings()
        for name, module in blocks.items():
            module.register_forward_pre_hook(lambda *_, n=name: self.enter(f"{self.outer} {n}"))
            module.register_full_backward_pre_hook(lambda *_, n=name: self.enter(f"{self.outer} {n} grad"))
            module.register_forward_hook(lambda *_, n=name: self.end(f"{self.outer} {n}"))
        lookup, head = step_module._vocab
        for name, vp, method in (("embed_tokens", lookup, "lookup"), ("lm_head", head, "losses")):
            if vp is not None:
                original = getattr(vp, method)

                def over_rows(*args, _original=original, _name=name, **kwargs):
                    self.enter(f"{self.outer} {_name}")
                    return _original(*args, **kwargs)

                setattr(vp, method, over_rows)
        ds = engine.engine
        for method in ("forward", "backward", "step"):
            original = getattr(ds, method)

            def wrapped(*args, _original=original, _method=method, **kwargs):
                self.outer = _method
                self.enter(_method)
                result = _original(*args, **kwargs)
                self.enter(f"after {_method}")
                self.end(_method)
                return result

            setattr(ds, method, wrapped)

    def finish(self) -> dict:
        import ctypes

        self._stop.set()
        self._thread.join()
        before = _status("VmRSS")
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return {
            "peaks": self.peaks,
            "gathered": self.gathered,
            "ends": self.ends,
            "trim_before": before,
            "trim_after": _status("VmRSS"),
        }


class _FirstStepDone(Exception):
    """Raised after the first optimizer step: its peak is measured, the run need not go on."""


def _deepspeed_json(workdir: Path, reuse: int) -> Path:
    from ovis.train.deepspeed_config import builtin_deepspeed_config

    config = builtin_deepspeed_config("zero3")
    config["zero_optimization"].update(stage3_max_live_parameters=100_000_000, stage3_max_reuse_distance=reuse)
    path = workdir / f"zero3-live-1e8-reuse-{reuse}.json"
    path.write_text(json.dumps(config, indent=1))
    return path


def _rank(
    rank: int, port: int, mode: str, model: str, info: str, out: str, ds_json: str, train: str, checkpointing: bool
) -> None:
    from ovis.train.distributed import local_launch_env

    os.environ.update(local_launch_env(rank, WORLD, port))
    torch.set_num_threads(1)
    import deepspeed  # noqa: F401  (imported before the starting point: its size is not the model's)

    import ovis.train.trainer as trainer_module
    from ovis.composer import DTYPES
    from ovis.model import OvisForCausalLM
    from ovis.processing import OvisProcessor
    from ovis.train import TrainConfig, Trainer, frozen_linears, vocab_parallel
    from ovis.train.host_memory import release_heap
    from ovis.train.model_loading import load_partitioned, local_elements

    marks: dict[str, float] = {}
    if mode == "zero3-gathered":
        vocab_parallel.plan = lambda *_, **__: (None, None)
        frozen_linears.plan = lambda *_, **__: None

    def measured_load(directory, *, dtype, processes, zero3_config=None):
        # The starting point: imports done, the process group up, nothing of the model read yet.
        marks["start"] = _status("VmRSS")
        _reset_peak()
        marks["began"] = time.perf_counter()
        processor = OvisProcessor.from_pretrained(directory)  # first, as load_training_model does
        release_heap()
        marks["processor"] = _status("VmRSS") - marks["start"]
        marks["weights_start"], marks["processor_peak"] = _status("VmRSS"), _status("VmHWM")
        _reset_peak()
        if mode.startswith("zero3"):
            model = load_partitioned(directory, dtype=DTYPES[dtype], processes=processes, zero3_config=zero3_config)
        else:  # the loading before: the whole model on every rank (deepspeed.initialize partitions it)
            model = OvisForCausalLM.from_pretrained(str(directory), dtype=DTYPES[dtype])
        # (the weights' peak above the resident set before them: the model alone)
        marks["weights_peak"] = _status("VmHWM") - marks["weights_start"] + marks["start"]
        release_heap()
        marks["held"], marks["total"] = local_elements(model)
        marks["largest"] = max(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        return model, processor

    trainer_module.load_training_model = measured_load
    config = TrainConfig.model_validate(
        {
            "stage": 1 if train == "stage1" else 3,
            "model": model,
            "output_dir": str(Path(out) / mode),
            "deepspeed": ds_json,
            "precision": "bf16",
            "train_modules": ["visual_tokenizer.head", "vte"] if train == "stage1" else ["all"],
            "per_device_batch_size": 1,
            "max_steps": 2,
            "save_steps": 1000,
            "logging_steps": 1,
            "seed": 0,
            "gradient_checkpointing": checkpointing,
            "data": {"dataset_info": info, "datasets": ["synth-conversations"]},
        }
    )

    def after_first_step(step: int, record: dict) -> None:
        # The first step's peak, before any checkpoint is written (max_steps is 2: none at step 1).
        marks["step_peak"] = _status("VmHWM")
        raise _FirstStepDone

    trainer = Trainer(config, progress=False, on_step_end=after_first_step)
    trainer.setup()  # the model, then the engine (ZeRO-3 partitions a whole model here)
    load_s = time.perf_counter() - marks["began"]
    load_peak = max(_status("VmHWM"), marks["processor_peak"])  # (the peak was reset after the processor)
    breakdown = step_s = step_peak = None
    if mode != "whole":  # (its step is zero3-gathered's: the same engine over the same partitions)
        probe = _Probe()
        probe.end("setup")
        probe.watch(trainer.engine)
        _reset_peak()
        began = time.perf_counter()
        try:
            trainer.fit()
        except _FirstStepDone:
            pass
        step_s = time.perf_counter() - began
        step_peak = marks["step_peak"]
        breakdown = probe.finish()
    start, held, total = marks["start"], marks["held"], marks["total"]
    report = {
        "rank": rank,
        "start": start,
        "load_peak": load_peak,
        "step_peak": step_peak,
        "weights_peak": marks["weights_peak"],
        "held": held,
        "total": total,
        "load_s": load_s,
        "step_s": step_s,
        "breakdown": breakdown,
        "largest": marks["largest"],
        "processor": marks["processor"],
    }
    Path(out, f"{mode}-{rank}.json").write_text(json.dumps(report))
    torch.distributed.barrier()


def _single(model: str, out: str, mode: str) -> None:
    torch.set_num_threads(1)
    from ovis.model import OvisForCausalLM
    from ovis.train.model_loading import load_streamed

    start = _status("VmRSS")
    _reset_peak()
    began = time.perf_counter()
    if mode == "single":
        loaded = load_streamed(model, dtype=torch.bfloat16)
    else:
        loaded = OvisForCausalLM.from_pretrained(model, dtype=torch.bfloat16)
    load_s = time.perf_counter() - began
    total = sum(p.numel() for p in loaded.parameters())
    report = {
        "rank": 0,
        "start": start,
        "load_peak": _status("VmHWM"),
        "weights_peak": _status("VmHWM"),
        "step_peak": None,
        "held": total,
        "total": total,
        "load_s": load_s,
        "step_s": None,
    }
    Path(out, f"{mode}-0.json").write_text(json.dumps(report))


def _cell(value: float | None, width: int = 9, digits: int = 2) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def _print_breakdown(name: str, report: dict, copy: int) -> None:
    """Where rank 0's first ZeRO-3 step peaks, in full bf16 copies above the start, and how much of the
    model DeepSpeed held gathered whole at that moment (beside each rank's own partition)."""
    start, probe = report["start"], report["breakdown"]
    peaks, ends, gathered = probe["peaks"], dict(probe["ends"]), probe["gathered"]

    def peak(*phases: str) -> tuple[int, str] | None:
        return max(((peaks[p], p) for p in phases if p in peaks), default=None)

    layers = sorted((k for k in peaks if k.startswith("forward layer")), key=lambda k: int(k.split("layer")[1]))
    # DeepSpeed's pre-forward hook (its gather) runs before the probe's: a module's gather peaks under
    # the phase before it (the embedding's under "forward", the LM head's under the last layer).
    rows = [
        ("engine ready (partitions, optimizer states, processor, buffers)", (ends["setup"], None)),
        (
            "forward: token lookup, visual path",
            peak("forward", "forward embed_tokens", "forward visual_tokenizer", "forward vte"),
        ),
        ("forward: decoder layers", peak(*layers[:-1])),
        ("forward: last layer, LM head and loss", peak(*layers[-1:], "forward lm_head")),
        ("forward done (activations kept for backward)", (ends["forward"], None)),
        ("backward", peak(*(k for k in peaks if k.startswith("backward")))),
        ("optimizer step", peak("step")),
        ("after the step", (probe["trim_before"], None)),
        ("after malloc_trim(0) (memory glibc still kept)", (probe["trim_after"], None)),
    ]
    print(f"\n{name} first step, rank 0 (resident set above the start, in full bf16 copies; gathered whole then):")
    for what, found in rows:
        if found is None:
            continue
        value, phase = found
        whole = f"{gathered[phase][0] * 2 / copy:9.3f}" if phase in gathered else ""
        print(f"  {what:62} {(value - start) / copy:6.2f} {whole}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ovis-load-memory"))
    parser.add_argument("--modes", nargs="+", default=["zero3", "zero3-gathered", "whole", "single", "single-hf"])
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute the layers in the backward pass"
    )
    parser.add_argument(
        "--train",
        choices=["stage1", "all"],
        default="stage1",
        help="stage1: the target's setting; all: stage 3, everything trains (optimizer states dominate)",
    )
    parser.add_argument(
        "--max-reuse-distance",
        type=int,
        default=100_000_000,
        help="stage3_max_reuse_distance: a parameter needed again within this many elements stays gathered",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    from ovis.data.synth import SynthSpec, write_synthetic_dataset
    from ovis.ports import free_port

    model = build_model(args.workdir, args.layers)
    info = write_synthetic_dataset(args.workdir / "data", SynthSpec(train_images=8, eval_images=1), progress=False)
    ds_json = _deepspeed_json(args.workdir, args.max_reuse_distance)
    runs = args.workdir / "runs"
    runs.mkdir(exist_ok=True)
    results = {}
    for mode in args.modes:
        if mode.startswith("single"):
            proc = mp.get_context("spawn").Process(target=_single, args=(str(model), str(runs), mode))
            proc.start()
            proc.join()
            reports = [json.loads((runs / f"{mode}-0.json").read_text())]
        else:
            spawned = (
                free_port(),
                mode,
                str(model),
                str(info),
                str(runs),
                str(ds_json),
                args.train,
                args.gradient_checkpointing,
            )
            mp.spawn(_rank, args=spawned, nprocs=WORLD, join=True)
            reports = [json.loads((runs / f"{mode}-{r}.json").read_text()) for r in range(WORLD)]
        results[mode] = reports
    total = results[next(iter(results))][0]["total"]
    copy = total * 2  # one full bf16 copy of the parameters
    print(f"\nmodel: {total / 1e9:.3f}B parameters; a full bf16 copy is {copy / 2**30:.2f} GiB")
    print(
        f"{'mode':14} {'rank':>4} {'start GiB':>9} {'weights':>8} {'setup':>6} {'step':>6} "
        f"{'held/total':>10} {'load s':>7} {'step s':>7}   (peaks above the start, in full bf16 copies)"
    )
    for mode, reports in results.items():
        for r in reports:
            for phase in ("weights", "load", "step"):
                peak = r.get(f"{phase}_peak")
                r[f"{phase}_ratio"] = (peak - r["start"]) / copy if peak else None
            print(
                f"{mode:14} {r['rank']:>4} {r['start'] / 2**30:9.2f} {_cell(r['weights_ratio'], 8)} "
                f"{_cell(r['load_ratio'], 6)} {_cell(r['step_ratio'], 6)} {r['held'] / r['total']:10.2f} "
                f"{r['load_s']:7.1f} {_cell(r['step_s'], 7, 1)}"
            )

    def worst(mode: str, phase: str) -> float:
        return max(r[f"{phase}_ratio"] or 0.0 for r in results[mode])

    for name in ("zero3", "zero3-gathered"):
        if name not in results:
            continue
        print()
        processor = max(r["processor"] for r in results[name]) / copy
        for phase, what in (
            ("weights", "reading the weights"),
            ("load", "up to the engine ready (adds the processor and DeepSpeed's buffers)"),
            ("step", "the first training step"),
        ):
            value = worst(name, phase)
            verdict = "PASS" if value <= TARGET else "MISS"
            before = (
                f"; whole-model loading: {worst('whole', phase):.2f}" if "whole" in results and phase != "step" else ""
            )
            alone = f"; without the processor {value - processor:.2f}" if phase != "weights" else ""
            print(
                f"{name}, {what}: worst rank {value:.2f} of a full copy (target <= {TARGET:.2f}): "
                f"{verdict}{alone}{before}"
            )
        held = f"{processor:.3f} of a copy ({processor * copy / 1e6:.0f} MB)"
        print(f"{name}: the processor (its tokenizer) alone holds {held}")
    for name in ("zero3", "zero3-gathered"):
        if name in results:
            _print_breakdown(name, results[name][0], copy)
    if "single" in results and "single-hf" in results:
        print(
            f"one process, whole model in bf16: streamed {worst('single', 'load'):.2f} of a copy, "
            f"from_pretrained {worst('single-hf', 'load'):.2f}"
        )
    if args.json:
        figures = {
            "copy_bytes": copy,
            "layers": args.layers,
            "train": args.train,
            "gradient_checkpointing": args.gradient_checkpointing,
            "max_reuse_distance": args.max_reuse_distance,
            "results": results,
        }
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
