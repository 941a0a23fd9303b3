"""The training run: one Ovis stage, from the input model to ``output_dir/final``.

``train(config)`` first checks and reads the data the config names (a data error stops the run
before any model loads or DeepSpeed starts), then loads the input model, freezes what the stage
does not train, builds the engine (DeepSpeed ZeRO-2 / ZeRO-3, or a plain PyTorch loop with
``deepspeed: null``), runs the steps (deterministic data order, checkpoints, metrics) and exports
``output_dir/final``, a directory ``ovis.load`` reads. A micro-batch whose samples were all
skipped (on every rank) is passed over, not trained on as an empty step; the records skipped
are totalled once at the end (``output_dir/skips.json``). With DeepSpeed it runs as a single
process with no launcher (it starts a one-rank process group itself) or under ``torchrun`` /
``deepspeed``.

The pieces live beside it: the processes (:mod:`~ovis.train.distributed`), the loss
(:mod:`~ovis.train.step`), the engines (:mod:`~ovis.train.engines`), counting and reporting
(:mod:`~ovis.train.metrics`), checkpoints (:mod:`~ovis.train.checkpoint`), export
(:mod:`~ovis.train.export`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import torch

from ovis.data import DataCollator, SupervisedDataset, read_datasets
from ovis.data.schema import DataError
from ovis.data.skips import SkipLog, Skipped
from ovis.errors import ConfigError, InputFileError, OvisError
from ovis.model import OvisForCausalLM
from ovis.processing import OvisProcessor
from ovis.train import checkpoint as ckpt
from ovis.train.attention import choose_attention
from ovis.train.config import TrainConfig
from ovis.train.deepspeed_config import build_deepspeed_config
from ovis.train.distributed import Processes, agree_on_precision, set_seed, start_processes
from ovis.train.engines import Engine, build_engine
from ovis.train.export import export_model
from ovis.train.loading import dump_config
from ovis.train.metrics import StepRecord, StepSums, TrainLog, write_skip_report
from ovis.train.model_loading import ZeroConfigFor, gathered, load_training_model, uses_zero3, visual_parameters
from ovis.train.modules import (
    ModuleSummary,
    apply_lora,
    apply_train_modules,
    lr_groups,
    summarize,
    visual_params_trainable,
)
from ovis.train.schedule import DataOrder, lr_lambda, tau_at
from ovis.train.step import BATCH_KEYS, TrainStep, empty_batch, packed_row_length

logger = logging.getLogger("ovis.train")
StepCallback = Callable[[int, StepRecord], None]
Collator = Callable[[list[Any]], dict[str, Any] | None]


@dataclass
class Position:
    """Where the run is, and what it has read: saved in every checkpoint."""

    step: int = 0
    #: Global micro-batch number (across epochs) of the next micro-batch. Not ``step *
    #: accumulation``: micro-batches whose samples were all skipped count here but not in a step.
    micro: int = 0
    samples_seen: int = 0
    skipped_total: int = 0


class TrainingDiverged(OvisError, FloatingPointError):
    """The loss became NaN or infinite: the run stops before saving that step's model."""

class Trainer:
    """One training run. ``Trainer(config).run()`` is :func:`train`.

    Args:
        dataset: a map-style dataset of ``EncodedSample | Skipped | None`` (default: the records
            of ``config.data``, checked by ``ovis.data.read_datasets`` before the model loads).
        collator: ``list[EncodedSample | Skipped | None] -> batch dict | None`` (default:
            ``ovis.data``'s); a batch without ``input_ids`` (or None) means every sample was skipped.
        resume: continue from the newest complete checkpoint in ``output_dir/checkpoints``.
        on_step_end: called on every rank after each optimizer step with ``(step, record)``.
        progress: show a progress bar on rank 0.

    ``setup()`` builds everything (the attributes below that start as None); ``fit()`` trains;
    ``export()`` writes ``output_dir/final``.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        dataset: Any = None,
        collator: Collator | None = None,
        resume: bool = False,
        on_step_end: StepCallback | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.dataset = dataset
        self.collator = collator
        self.resume = resume
        self.on_step_end = on_step_end
        self.progress = progress
        self.output_dir = Path(config.output_dir)
        #: Every step record of this process, in order.
        self.records: list[StepRecord] = []
        self.position = Position()
        # Built by setup():
        self.processes: Processes | None = None
        self.precision: str | None = None  # what every rank agreed ``config.precision`` means
        self.model: OvisForCausalLM | None = None
        self.processor: OvisProcessor | None = None  # as loaded: what export writes
        self.train_processor: OvisProcessor | None = None  # with ``data.max_length`` applied
        self.summary: ModuleSummary | None = None
        self.gumbel = False  # the model samples visual words with gumbel_argmax: anneal its tau
        self.order: DataOrder | None = None
        self.total_steps = 0
        self.engine: Engine | None = None
        #: Every record and sample left out (read and encode time).
        self.skip_log = SkipLog()
        self._records: list[Any] | None = None  # the checked records, until the dataset is built
        self._checkpoint: Path | None = None  # the checkpoint this run continues from (setup)
        self._checkpoint_state: dict[str, Any] | None = None
        self._step_started = 0.0

    @property
    def zero_stage(self) -> int:
        """DeepSpeed's ZeRO stage (0 for the PyTorch engine)."""
        return self.engine.zero_stage

    # -- public ---------------------------------------------------------------------------------
    def run(self) -> Path:
        self.setup()
        self.fit()
        return self.export()

    def setup(self) -> None:
        self._read_data()  # before the process group, the model and DeepSpeed: data errors come first
        self.processes = start_processes(self.config)
        if self.processes.rank != 0:
            logger.setLevel(logging.WARNING)
        self.precision = agree_on_precision(self.config, self.processes)
        self._checkpoint = self._resume_point()  # before the model loads: a refusal comes first
        set_seed(self.config.seed)  # identical on every rank: re-init and LoRA init must agree
        self._build_model()
        self._build_data()
        self._continue_from_checkpoint()  # before the engine: the schedule needs total_steps
        set_seed(self.config.seed + 1000 * self.processes.rank)  # gumbel / dropout noise differs per rank
        self._build_engine()
        self._restore()  # a resumed run continues each rank's RNG stream where it was saved

    # -- model ----------------------------------------------------------------------------------
    def _build_model(self) -> None:
        config = self.config
        if not Path(config.model).is_dir():
            raise InputFileError(f"model directory {config.model} (the config's `model`) not found")
        # Load in the training precision: DeepSpeed's bf16 mode casts the module to bf16 anyway (its
        # optimizer keeps fp32 master weights), and an fp32 copy of a 7B model per rank is 28 GB.
        # The PyTorch engine keeps fp32 weights and computes in bf16 under autocast.
        bf16_weights = self.precision == "bf16" and config.deepspeed is not None
        # Under ZeRO-3 each rank builds and reads only its partitions (ovis.train.model_loading).
        zero3 = self._zero3_config() if uses_zero3(config) else None
        model, processor = load_training_model(
            config.model, dtype="bfloat16" if bf16_weights else "float32", processes=self.processes,
            zero3_config=zero3,
        )
        self.processor = processor
        self.train_processor = copy.copy(processor)
        if config.data.max_length:
            self.train_processor.max_length = config.data.max_length
        # Re-initialising the last block and finding the visual parameters that get no gradient (a
        # pass through the visual path) need those parameters whole: gathered while it runs.
        with gathered(visual_parameters(model) if zero3 else []):
            summary = apply_train_modules(model, config.train_modules, reinit_last_block=config.reinit_last_block)
        if config.lora.enabled:
            apply_lora(model, config.lora)
            summary = summarize(model, summary.unused_frozen)
        if summary.num_trainable == 0:
            raise ConfigError(f"train_modules {config.train_modules} select no trainable parameters")
        if config.gradient_checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        attention = choose_attention(config.attn_implementation, on_cuda=self.processes.device.type == "cuda")
        if attention is not None:
            model.llm.set_attn_implementation(attention)
            logger.info("LLM attention: %s", attention)
        self.gumbel = model.config.tokenize_function == "gumbel_argmax"
        self.summary = summary
        self.model = model
        logger.info("trainable parameters (stage %d, %s):", config.stage, ", ".join(config.train_modules))
        for line in summary.lines():
            logger.info("  %s", line)

    def _zero3_config(self) -> ZeroConfigFor:
        """``hidden_size -> the DeepSpeed config the engine will get`` (zero.Init must partition alike)."""
        on_cuda = self.processes.device.type == "cuda"
        return lambda hidden: build_deepspeed_config(
            self.config, world_size=self.processes.world_size, hidden_size=hidden, on_cuda=on_cuda,
            precision=self.precision,
        )

    # -- data -----------------------------------------------------------------------------------
    def _read_data(self) -> None:
        """Check the named datasets and read their records (no model needed: ovis.data.validate)."""
        config = self.config
        if self.dataset is not None:
            return
        if config.data.dataset_info is None or not config.data.datasets:
            raise ConfigError("set data.dataset_info and data.datasets (the dataset names to train on)")
        # Every rank reads the same files: only the first names each bad record (the process group,
        # hence the rank, comes later; this is what the launcher says).
        self.skip_log.quiet = os.environ.get("RANK", "0") != "0"
        try:
            self._records = read_datasets(config.data.dataset_info, list(config.data.datasets), self.skip_log)
        finally:
            self.skip_log.quiet = False

    def _build_data(self) -> None:
        config = self.config
        if self.dataset is None:
            self.dataset = SupervisedDataset(self._records, self.train_processor, skip_log=self.skip_log)
            self._records = None
        if self.collator is None:
            self.collator = DataCollator(
                self.train_processor, packing=config.data.packing, row_length=packed_row_length(self.model)
            )
        world_size = self.processes.world_size
        accumulation = config.gradient_accumulation_steps
        self.order = DataOrder(
            len(self.dataset), batch_size=config.per_device_batch_size, world_size=world_size, seed=config.seed,
            accumulation=accumulation,
        )
        self.total_steps = config.max_steps or self.order.total_steps(config.epochs, accumulation)
        logger.info(
            "%d samples, %d micro-batches per epoch per rank, %d ranks, %d optimizer steps",
            len(self.dataset), self.order.per_epoch, world_size, self.total_steps,
        )

    # -- engine ---------------------------------------------------------------------------------
    def _build_engine(self) -> None:
        config, model = self.config, self.model
        step_module = TrainStep(
            model, image_size=model.backbone.spec.image_size, dummy_visual=visual_params_trainable(model)
        )
        groups = lr_groups(model, config.module_lr, config.lr, config.weight_decay)
        grouped = {id(p) for g in groups for p in g["params"]}
        extra = [p for p in step_module.parameters() if p.requires_grad and id(p) not in grouped]
        if extra:  # the step module's own parameters (none today): train them at the base rate
            groups.append({"params": extra, "lr": config.lr, "weight_decay": 0.0, "name": "wrapper"})
        schedule = lr_lambda(self.total_steps, config.warmup_ratio, config.lr_scheduler, config.min_lr_ratio)
        self.engine = build_engine(
            config, step_module, groups, schedule, processes=self.processes, precision=self.precision,
            hidden_size=model.config.llm_config.hidden_size,
        )

    def _base_lr(self) -> float:
        """The base ``lr`` as the schedule has it now (groups with a ``module_lr`` scale alike)."""
        group = self.engine.optimizer.param_groups[0]
        initial = group.get("initial_lr") or 0.0
        return self.config.lr * group["lr"] / initial if initial else group["lr"]

    def _continue_from_checkpoint(self) -> None:
        """Where the run continues (the position, and the total steps) when it resumes.

        On another number of ranks (or per-rank batch size) the global batch must be kept, and
        the run continues the epoch in progress at its first sample not yet read
        (:func:`ckpt.check_resumable`); the number of steps of an ``epochs``-long run is the
        checkpoint's, so that the learning-rate schedule goes on as it was."""
        latest = self._checkpoint
        if latest is None:
            return
        state = ckpt.read_state(latest)
        kind = "torch" if self.config.deepspeed is None else "deepspeed"
        micro = ckpt.check_resumable(latest, state, order=self.order, engine=kind)
        if state["config_hash"] != self.config.config_hash():
            logger.warning("resume: the training config differs from the checkpoint's (hash changed)")
        saved_ranks = int(state.get("world_size", self.processes.world_size))
        saved_batch = int(state["data_order"].get("batch_size", self.order.batch_size))
        if (saved_ranks, saved_batch) != (self.processes.world_size, self.order.batch_size):
            logger.info(
                "resume: written by %d ranks x per_device_batch_size %d, continued by %d x %d (global batch %d "
                "kept); the epoch in progress continues at micro-batch %d of this layout",
                saved_ranks, saved_batch, self.processes.world_size, self.order.batch_size,
                self.order.global_batch, micro,
            )
            saved_total = int(state.get("total_steps", self.total_steps))
            if self.config.max_steps is None and saved_total != self.total_steps:
                logger.info("resume: %d optimizer steps, as the checkpoint's run had (this layout rounds its "
                            "epochs to %d)", saved_total, self.total_steps)
                self.total_steps = saved_total
        step = int(state["step"])
        self.position = Position(
            step=step, micro=micro, samples_seen=int(state["samples_seen"]), skipped_total=int(state["skipped_total"])
        )
        self._checkpoint_state = state

    def _restore(self) -> None:
        """Load the checkpoint's engine state and this rank's RNG (resharded by DeepSpeed when the
        checkpoint was written by another number of ranks); write ``train_config.yaml``."""
        rank = self.processes.rank
        latest, state = self._checkpoint, self._checkpoint_state
        if latest is not None and state is not None:
            saved_ranks = int(state.get("world_size", self.processes.world_size))
            ckpt.load_checkpoint(self.engine, latest, rank=rank, reshard=saved_ranks != self.processes.world_size)
            # Skips found encoding samples before the checkpoint are not met again: restore them.
            self.skip_log.merge(_skips_from_state(state.get("skipped_records", [])))
            logger.info("resumed from %s (step %d)", latest, self.position.step)
        if rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "train_config.yaml").write_text(dump_config(self.config))

    def _resume_point(self) -> Path | None:
        """The checkpoint to continue from, chosen (and verified) by rank 0 for every rank."""
        found: Path | OvisError | None = None
        if self.processes.rank == 0:
            try:
                found = ckpt.resume_point(self.output_dir, resume=self.resume)
            except OvisError as exc:  # every rank raises it, rather than waiting for rank 0
                found = exc
        found = self.processes.from_rank0(found)
        if isinstance(found, OvisError):
            raise found
        return found

    # -- loop -----------------------------------------------------------------------------------
    def fit(self) -> None:
        """Train from the current position to ``total_steps``; the skips are reported at the end
        (of a failed or interrupted run too)."""
        finished = False
        try:
            self._fit()
            finished = True
        finally:
            self._report_skips(finished)

    def _fit(self) -> None:
        accumulation = self.config.gradient_accumulation_steps
        position = self.position
        sums: StepSums | None = None
        used = 0  # micro-batches of the current step that were trained on
        idle = 0  # micro-batches in a row with no usable sample on any rank
        self.engine.train()
        self._step_started = time.perf_counter()
        with TrainLog(self.output_dir, write=self.processes.rank == 0, progress=self.progress,
                      stage=self.config.stage, total_steps=self.total_steps, first_step=position.step,
                      logging_steps=self.config.logging_steps) as log:
            for batch, size, ids in self._micro_batches():
                if sums is None:
                    sums = self._begin_step()
                position.micro += 1
                sums.sample_ids += ids
                samples, skipped = self._count(batch, size)
                if not self._anyone_has(samples):
                    # Every sample was skipped on every rank: no pass, and the step takes the next
                    # micro-batch instead (the engines count only the micro-batches they are given).
                    sums.add(0.0, 0, 0, skipped)
                    idle += 1
                    if idle >= self.order.per_epoch:
                        raise DataError(f"no usable sample in {idle} micro-batches in a row (a whole epoch): "
                                        f"every sample is skipped. {self.skip_log.summary()}")
                    continue
                idle = 0
                sums.add(*self._micro_step(batch, samples, skipped))
                used += 1
                if used < accumulation:
                    continue
                used = 0
                position.step += 1
                self._end_step(sums, log)
                sums = None
                if position.step >= self.total_steps:
                    break

    def _micro_batches(self) -> Iterator[tuple[dict[str, Any] | None, int, list[int]]]:
        """``(batch, samples asked for, every rank's sample ids)`` from the current micro-batch on;
        the ids only on rank 0 (elsewhere empty)."""
        rank = self.processes.rank
        while self.position.step < self.total_steps:
            epoch, index = self.order.locate(self.position.micro)
            batches = self.order.batches(epoch, rank)[index:]
            everyone = self.order.all_ranks(epoch) if rank == 0 else None
            loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_sampler=batches,
                collate_fn=self.collator,
                num_workers=self.config.num_workers,
                pin_memory=self.engine.device.type == "cuda",
            )
            for offset, batch in enumerate(loader):
                ids = [] if everyone is None else [i for mine in everyone for i in mine[index + offset]]
                yield batch, len(batches[offset]), ids

    def _begin_step(self) -> StepSums:
        if self.gumbel:
            self.model.visual_tokenizer.tau = tau_at(
                self.position.step, self.total_steps, self.config.tau.start, self.config.tau.end
            )
        return StepSums(lr=self._base_lr())

    def _count(self, batch: dict[str, Any] | None, size: int) -> tuple[int, int]:
        """``(samples, skipped samples)`` of a collated micro-batch of ``size`` samples asked for;
        its skips join the run's log (they may come from a DataLoader worker)."""
        if batch is None:  # a collator's way of saying that every sample was skipped
            return 0, size
        self.skip_log.merge(batch.get("skips", ()))
        # A packed batch has fewer rows than samples: it says how many it holds.
        samples = int(batch.get("num_samples", batch["input_ids"].shape[0])) if "input_ids" in batch else 0
        return samples, int(batch.get("num_skipped", size - samples))

    def _anyone_has(self, samples: int) -> bool:
        """Whether any rank has a sample in this micro-batch (every rank must agree: a collective)."""
        if self.processes.world_size == 1:
            return samples > 0
        count = torch.tensor([samples], dtype=torch.float64, device=self.engine.device)
        return self.processes.sum(count).item() > 0

    def _micro_step(self, batch: dict[str, Any] | None, samples: int, skipped: int) -> tuple[float, int, int, int]:
        """One micro-batch through the engine: ``(loss, labelled tokens, samples, skipped samples)``."""
        if not samples:  # all skipped here but not on another rank: a zero-loss pass keeps ranks in step
            batch = empty_batch(self.processor.tokenizer.pad_token_id, self.model.backbone.spec.image_size)
        device = self.engine.device
        inputs = {k: batch[k].to(device) for k in BATCH_KEYS if batch.get(k) is not None}
        loss, tokens = self.engine.micro_step(inputs)
        return float(loss.detach()), int(tokens), samples, skipped

    def _end_step(self, sums: StepSums, log: TrainLog) -> None:
        step, position = self.position.step, self.position
        record = self._record(sums)
        self.records.append(record)
        log.step(record, position.skipped_total)
        if not math.isfinite(record["loss"]):  # (the same sum on every rank: all of them stop here)
            latest = ckpt.latest_checkpoint(ckpt.checkpoint_root(self.output_dir))
            earlier = (
                f"The newest checkpoint is {latest}; the update that diverged may be in it already."
                if latest
                else "No checkpoint was written before it."
            )
            raise TrainingDiverged(
                f"step {step}: the loss is {record['loss']} (learning rate {record['lr']:.3g}): training "
                f"diverged, and this step's model is neither checkpointed nor exported. {earlier} Lower lr, "
                "raise warmup_ratio, or check this step's data (sample_ids in metrics.jsonl)"
            )
        if step % self.config.save_steps == 0 or step == self.total_steps:
            self.save()
        if self.on_step_end is not None:
            self.on_step_end(step, record)

    def _record(self, sums: StepSums) -> StepRecord:
        """The step's record, its sums taken over every rank (a collective)."""
        position, world_size = self.position, self.processes.world_size
        # On the rank's device: NCCL reduces CUDA tensors only (gloo takes CPU ones).
        loss, tokens, samples, skipped = self.processes.sum(sums.counts(self.engine.device)).tolist()
        position.samples_seen += int(samples)
        position.skipped_total += int(skipped)
        now = time.perf_counter()
        elapsed, self._step_started = now - self._step_started, now
        record: StepRecord = {
            "step": position.step,
            "epoch": position.micro / self.order.per_epoch,
            "loss": loss / (self.config.gradient_accumulation_steps * world_size),
            "lr": sums.lr,
            "grad_norm": self.engine.grad_norm(),
            "tokens": int(tokens),
            "samples": int(samples),
            "skipped": int(skipped),
            "samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
            "step_time": elapsed,
            "sample_ids": sums.sample_ids,
        }
        if self.gumbel:
            record["tau"] = self.model.visual_tokenizer.tau
        return record

    # -- checkpoints / export -------------------------------------------------------------------
    def save(self) -> Path:
        """Checkpoint the current step (every rank must call)."""
        root, position, rank = ckpt.checkpoint_root(self.output_dir), self.position, self.processes.rank
        state = {
            "step": position.step,
            "micro_batch": position.micro,
            "epoch": position.micro / self.order.per_epoch,
            "samples_seen": position.samples_seen,
            "skipped_total": position.skipped_total,
            "total_steps": self.total_steps,
            "config_hash": self.config.config_hash(),
            "data_order": self.order.fingerprint(),
            # what a resumed run would not find again (reading the meta files finds the rest)
            "skipped_records": [astuple(s) for s in self._all_skips(stage="encode")],
            "world_size": self.processes.world_size,
            "engine": self.engine.kind,
            "zero_stage": self.engine.zero_stage,
            "time": time.time(),
        }
        path = ckpt.save_checkpoint(self.engine, root, position.step, state, rank=rank,
                                    barrier=self.processes.barrier)
        if rank == 0:
            for removed in ckpt.prune_checkpoints(root, self.config.save_total_limit, current=position.step):
                logger.info("removed old checkpoint %s", removed.name)
            logger.info("saved checkpoint %s", path)
        return path

    # -- skips ----------------------------------------------------------------------------------
    def _all_skips(self, stage: str | None = None) -> list[Skipped]:
        """Every rank's skips (a collective when there are several ranks)."""
        mine = self.skip_log.entries(stage)
        return [skip for part in self.processes.gather(mine) for skip in part]

    def _report_skips(self, finished: bool) -> None:
        """Log one total of the records left out, read-time and encode-time together, by reason with
        examples, and write it to ``output_dir/skips.json`` (rank 0). After a failure only this
        rank's skips are counted: another rank may be gone, so no collective is risked."""
        try:
            combined = SkipLog()
            combined.add_total(self.skip_log.total)  # every rank read every meta file: not summed
            combined.merge(self._all_skips() if finished else self.skip_log.entries())
            if self.processes.rank != 0:
                return
            report = {"step": self.position.step, "finished": finished,
                      "samples_skipped": self.position.skipped_total, **combined.report()}
            path = write_skip_report(self.output_dir, report)
            level = logging.WARNING if combined.count or self.position.skipped_total else logging.INFO
            logger.log(level, "data: %s\n  (%d skipped sample reads in %d steps%s; written to %s)",
                       combined.summary(), self.position.skipped_total, self.position.step,
                       "" if finished else ", the run did not finish", path)
        except Exception as exc:
            if finished:
                raise
            logger.warning("could not report the skipped records: %s", exc)  # never hide the run's error

    def export(self) -> Path:
        """Write ``output_dir/final`` (every rank must call: ZeRO-3 gathers collectively)."""
        out = self.output_dir / "final"
        state_dict = self.engine.final_state_dict()
        if self.processes.rank == 0:
            if self.gumbel:
                self.model.config.tau = self.config.tau.end
            export_model(self.model, state_dict, self.processor, out, lora=self.config.lora)
            logger.info("exported %s", out)
        self.processes.barrier()
        return out


def _skips_from_state(rows: list[list[Any]]) -> list[Skipped]:
    return [Skipped(*row) for row in rows if isinstance(row, list | tuple) and len(row) == 5]


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    dataset: Any = None,
    collator: Collator | None = None,
    on_step_end: StepCallback | None = None,
    progress: bool = True,
) -> Path:
    """Run one training stage; returns the exported Hugging Face directory (``output_dir/final``)."""
    trainer = Trainer(
        config, dataset=dataset, collator=collator, resume=resume, on_step_end=on_step_end, progress=progress
    )
    return trainer.run()
