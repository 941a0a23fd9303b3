"""The training loop: one Ovis stage on DeepSpeed (ZeRO-2 / ZeRO-3), on CUDA or on the CPU.

``train(config)`` loads the input model, freezes what the stage does not train, wraps it in a
DeepSpeed engine, runs the steps (deterministic data order, checkpoints, tensorboard) and exports
``output_dir/final``, a directory ``ovis.load`` reads. It runs as a single process with no
launcher (it starts a one-rank process group itself) or under ``torchrun`` / ``deepspeed``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ovis.model.merging import IGNORE_INDEX
from ovis.train import checkpoint as ckpt
from ovis.train.config import TrainConfig, build_deepspeed_config, dump_config
from ovis.train.export import export_model, gather_state_dict
from ovis.train.modules import apply_lora, apply_train_modules, lr_groups, summarize, visual_params_trainable
from ovis.train.schedule import DataOrder, lr_lambda, tau_at

logger = logging.getLogger("ovis.train")
BATCH_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values")
StepCallback = Callable[[int, dict[str, Any]], None]


# -- process group --------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> tuple[int, int, int]:
    """Join (or, with no launcher, create) the process group; ``(rank, world_size, local_rank)``."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if not dist.is_initialized():
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    accelerator = get_accelerator()
    if accelerator.device_name() == "cuda":
        accelerator.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        # Several CPU ranks on one machine each defaulting to every core stall each other in
        # OpenMP waits (torchrun sets OMP_NUM_THREADS=1; the deepspeed launcher does not).
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or "1")
        if local > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name(), verbose=False)
    return dist.get_rank(), dist.get_world_size(), local_rank


def agree_on_precision(config: TrainConfig) -> str:
    """Rank 0's resolution of ``config.precision``, on every rank.

    ``auto`` on a CPU times a matmul probe, and ranks sharing the cores measure different rates; ranks
    that chose differently would deadlock or crash in DeepSpeed, so rank 0 decides for all.
    """
    choice = [config.resolved_precision() if dist.get_rank() == 0 else None]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(choice, src=0)
    return choice[0]


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


# -- the loss -------------------------------------------------------------------------------------
def causal_lm(llm: nn.Module) -> nn.Module:
    """The Hugging Face causal LM inside ``llm`` (unwrapping a peft model)."""
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


class TrainStep(nn.Module):
    """What DeepSpeed wraps: the Ovis model plus the loss.

    ``forward`` returns ``(mean loss over labelled tokens, number of labelled tokens)``. The LM
    head runs only at labelled positions (the full ``[B, L, vocab]`` logits are never built).
    When the batch has no image but visual parameters train, a zero-weighted pass over a blank
    image keeps every trainable parameter in the graph, as ZeRO / DDP need on every rank.
    """

    def __init__(self, model: nn.Module, *, image_size: int, dummy_visual: bool) -> None:
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.dummy_visual = dummy_visual

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        embeds = model.embed_inputs(input_ids, pixel_values)
        if self.dummy_visual and (pixel_values is None or pixel_values.shape[0] == 0):
            blank = torch.zeros(1, 3, self.image_size, self.image_size, device=embeds.device)
            embeds = embeds + 0.0 * model.encode_images(blank).sum().to(embeds.dtype)
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        lm = causal_lm(model.llm)
        if _plain_head(lm):
            hidden = lm.get_decoder()(
                inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False
            ).last_hidden_state
            logits = lm.get_output_embeddings()(hidden[:, :-1][mask])
        else:  # heads with soft-capping / scaling: let the model compute its logits
            logits = model.llm(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).logits
            logits = logits[:, :-1][mask]
        count = mask.sum()
        loss = F.cross_entropy(logits.float(), targets[mask], reduction="sum") / count.clamp(min=1)
        return loss, count


def _plain_head(lm: nn.Module) -> bool:
    config = getattr(lm, "config", None)
    odd = any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale"))
    return not odd and hasattr(lm, "get_decoder") and lm.get_output_embeddings() is not None


# -- the trainer ------------------------------------------------------------------------------------
class Trainer:
    """One training run. ``Trainer(config).run()`` is :func:`train`.

    Args:
        dataset: a map-style dataset of ``EncodedSample | None`` (default: built from
            ``config.data`` with ``ovis.data.build_dataset``).
        collator: ``list[EncodedSample | None] -> batch dict | None`` (default: ``ovis.data``'s).
        resume: continue from the newest complete checkpoint in ``output_dir/checkpoints``.
        on_step_end: called on every rank after each optimizer step with ``(step, record)``.
        progress: show a progress bar on rank 0.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        dataset: Any = None,
        collator: Callable[[list[Any]], dict[str, Any] | None] | None = None,
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
        self.records: list[dict[str, Any]] = []

    # -- public ---------------------------------------------------------------------------------
    def run(self) -> Path:
        self.setup()
        self.fit()
        return self.export()

    def setup(self) -> None:
        self.rank, self.world_size, self.local_rank = init_distributed()
        if self.rank != 0:
            logger.setLevel(logging.WARNING)
        self.precision = agree_on_precision(self.config)
        set_seed(self.config.seed)  # identical on every rank: re-init and LoRA init must agree
        self._build_model()
        self._build_data()
        set_seed(self.config.seed + 1000 * self.rank)  # gumbel / dropout noise differs per rank
        self._build_engine()
        self._restore()  # a resumed run continues each rank's RNG stream where it was saved

    # -- model ----------------------------------------------------------------------------------
    def _build_model(self) -> None:
        from ovis.compose import load

        config = self.config
        # Load in the training precision: DeepSpeed's bf16 mode casts the module to bf16 anyway (its
        # optimizer keeps fp32 master weights), and an fp32 copy of a 7B model per rank is 28 GB.
        dtype = "bfloat16" if self.precision == "bf16" else "float32"
        model, processor = load(config.model, dtype=dtype)
        self.processor = processor
        self.train_processor = copy.copy(processor)
        if config.data.max_length:
            self.train_processor.max_length = config.data.max_length
        summary = apply_train_modules(model, config.train_modules, reinit_last_block=config.reinit_last_block)
        if config.lora.enabled:
            apply_lora(model, config.lora)
            summary = summarize(model, summary.unused_frozen)
        if summary.num_trainable == 0:
            raise ValueError(f"train_modules {config.train_modules} select no trainable parameters")
        if config.gradient_checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        self.gumbel = model.config.tokenize_function == "gumbel_argmax"
        self.summary = summary
        self.model = model
        logger.info("trainable parameters (stage %d, %s):", config.stage, ", ".join(config.train_modules))
        for line in summary.lines():
            logger.info("  %s", line)

    # -- data -----------------------------------------------------------------------------------
    def _build_data(self) -> None:
        config = self.config
        if self.dataset is None:
            from ovis.data import SkipLog, build_dataset

            if config.data.dataset_info is None or not config.data.datasets:
                raise ValueError("set data.dataset_info and data.datasets (the dataset names to train on)")
            self.skip_log = SkipLog()
            self.dataset = build_dataset(
                config.data.dataset_info, list(config.data.datasets), self.train_processor, skip_log=self.skip_log
            )
        if self.collator is None:
            from ovis.data import DataCollator

            self.collator = DataCollator(self.train_processor)
        self.order = DataOrder(
            len(self.dataset), batch_size=config.per_device_batch_size, world_size=self.world_size, seed=config.seed
        )
        accumulation = config.gradient_accumulation_steps
        self.total_steps = config.max_steps or self.order.total_steps(config.epochs, accumulation)
        logger.info(
            "%d samples, %d micro-batches per epoch per rank, %d ranks, %d optimizer steps",
            len(self.dataset), self.order.per_epoch, self.world_size, self.total_steps,
        )

    # -- engine ---------------------------------------------------------------------------------
    def _build_engine(self) -> None:
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        config = self.config
        self.on_cuda = get_accelerator().device_name() == "cuda"
        self.ds_config = build_deepspeed_config(
            config,
            world_size=self.world_size,
            hidden_size=self.model.config.llm_config.hidden_size,
            on_cuda=self.on_cuda,
            precision=self.precision,
        )
        self.wrapper = TrainStep(
            self.model,
            image_size=self.model.backbone.spec.image_size,
            dummy_visual=visual_params_trainable(self.model),
        )
        groups = lr_groups(self.model, config.module_lr, config.lr, config.weight_decay)
        extra = {id(p) for p in self.wrapper.parameters() if p.requires_grad} - {
            id(p) for g in groups for p in g["params"]
        }
        if extra:  # the step wrapper's own parameters (none today): train them at the base rate
            groups.append({"params": [p for p in self.wrapper.parameters() if id(p) in extra],
                           "lr": config.lr, "weight_decay": 0.0, "name": "wrapper"})
        schedule = lr_lambda(self.total_steps, config.warmup_ratio, config.lr_scheduler, config.min_lr_ratio)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.wrapper,
            model_parameters=groups,
            config=self.ds_config,
            lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        )
        self.zero_stage = self.engine.zero_optimization_stage()

    def _base_lr(self) -> float:
        """The base ``lr`` as the schedule has it now (groups with a ``module_lr`` scale alike)."""
        group = self.optimizer.param_groups[0]
        initial = group.get("initial_lr") or 0.0
        return self.config.lr * group["lr"] / initial if initial else group["lr"]

    def _restore(self) -> None:
        root = ckpt.checkpoint_root(self.output_dir)
        self.start_step, self.samples_seen, self.skipped_total = 0, 0, 0
        latest = ckpt.latest_checkpoint(root)
        if not self.resume:
            if latest is not None:
                raise FileExistsError(
                    f"{self.output_dir} already holds checkpoints (newest: {latest.name}); pass --resume "
                    "to continue that run, or choose another output_dir"
                )
        elif latest is None:
            logger.warning("resume: no complete checkpoint in %s; starting from step 0", root)
        else:
            state = ckpt.load_checkpoint(self.engine, latest, rank=self.rank)
            if state["data_order"] != self.order.fingerprint():
                raise ValueError(
                    f"cannot resume from {latest}: the data order would differ (checkpoint "
                    f"{state['data_order']}, now {self.order.fingerprint()}); keep the seed, batch size, "
                    "number of processes and datasets of the interrupted run"
                )
            if state["config_hash"] != self.config.config_hash():
                logger.warning("resume: the training config differs from the checkpoint's (hash changed)")
            self.start_step = int(state["step"])
            self.samples_seen = int(state["samples_seen"])
            self.skipped_total = int(state["skipped_total"])
            logger.info("resumed from %s (step %d)", latest, self.start_step)
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "train_config.yaml").write_text(dump_config(self.config))

    # -- loop -----------------------------------------------------------------------------------
    def fit(self) -> None:
        config = self.config
        accumulation = config.gradient_accumulation_steps
        step = self.start_step
        micro = step * accumulation
        writer = self._writer()
        metrics = open(self.output_dir / "metrics.jsonl", "a") if self.rank == 0 else None
        bar = self._bar(step)
        window = {"loss": 0.0, "steps": 0, "samples": 0, "skipped": 0, "start": time.perf_counter()}
        self.engine.train()
        self._last_step_time = time.perf_counter()
        try:
            while step < self.total_steps:
                epoch, index = self.order.locate(micro)
                batches = self.order.batches(epoch, self.rank)[index:]
                everyone = self.order.all_ranks(epoch) if self.rank == 0 else None
                loader = torch.utils.data.DataLoader(
                    self.dataset,
                    batch_sampler=batches,
                    collate_fn=self.collator,
                    num_workers=config.num_workers,
                    pin_memory=self.on_cuda,
                )
                for offset, batch in enumerate(loader):
                    if micro % accumulation == 0:
                        acc = {"loss": 0.0, "tokens": 0, "samples": 0, "skipped": 0, "ids": []}
                        lr = self._base_lr()
                        if self.gumbel:
                            self.model.visual_tokenizer.tau = tau_at(
                                step, self.total_steps, config.tau.start, config.tau.end
                            )
                    loss, tokens, samples, skipped = self._micro_step(batch, len(batches[offset]))
                    acc["loss"] += loss
                    acc["tokens"] += tokens
                    acc["samples"] += samples
                    acc["skipped"] += skipped
                    if everyone is not None:
                        acc["ids"] += [i for rank_batches in everyone for i in rank_batches[index + offset]]
                    micro += 1
                    if micro % accumulation:
                        continue
                    step += 1
                    record = self._finish_step(step, micro, acc, lr)
                    window["loss"] += record["loss"]
                    window["steps"] += 1
                    window["samples"] += record["samples"]
                    window["skipped"] += record["skipped"]
                    if metrics is not None:
                        metrics.write(json.dumps(record) + "\n")
                        metrics.flush()
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                        samples_s=f"{record['samples_per_s']:.1f}")
                    if step % config.logging_steps == 0 or step == self.total_steps:
                        self._log(writer, step, window, record)
                    if step % config.save_steps == 0 or step == self.total_steps:
                        self.save(step, micro)
                    if self.on_step_end is not None:
                        self.on_step_end(step, record)
                    if step >= self.total_steps:
                        break
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
            if metrics is not None:
                metrics.close()
        self.final_step = step

    def _micro_step(self, batch: dict[str, Any] | None, size: int) -> tuple[float, int, int, int]:
        if batch is None:  # every sample of this micro-batch was skipped: a zero-loss pass
            batch, skipped, samples = self._empty_batch(), size, 0
        else:
            skipped = int(batch.get("num_skipped", 0))
            samples = int(batch["input_ids"].shape[0])
        device = self.engine.device
        inputs = {k: batch[k].to(device) for k in BATCH_KEYS if batch.get(k) is not None}
        loss, tokens = self.engine(**inputs)
        self.engine.backward(loss)
        self.engine.step()
        return float(loss.detach()), int(tokens), samples, skipped

    def _empty_batch(self) -> dict[str, torch.Tensor]:
        pad = self.processor.tokenizer.pad_token_id
        size = self.model.backbone.spec.image_size
        return {
            "input_ids": torch.tensor([[pad]]),
            "attention_mask": torch.ones(1, 1, dtype=torch.long),
            "labels": torch.tensor([[IGNORE_INDEX]]),
            "pixel_values": torch.zeros(0, 3, size, size),
        }

    def _finish_step(self, step: int, micro: int, acc: dict[str, Any], lr: float) -> dict[str, Any]:
        accumulation = self.config.gradient_accumulation_steps
        # On the rank's device: NCCL reduces CUDA tensors only (gloo takes CPU ones).
        totals = torch.tensor(
            [acc["loss"], acc["tokens"], acc["samples"], acc["skipped"]], dtype=torch.float64, device=self.engine.device
        )
        dist.all_reduce(totals)
        loss = float(totals[0]) / (accumulation * self.world_size)
        samples, skipped = int(totals[2]), int(totals[3])
        self.samples_seen += samples
        self.skipped_total += skipped
        now = time.perf_counter()
        elapsed = now - self._last_step_time
        self._last_step_time = now
        norm = self.engine.get_global_grad_norm()
        record = {
            "step": step,
            "epoch": micro / self.order.per_epoch,
            "loss": loss,
            "lr": lr,
            "grad_norm": None if norm is None else float(norm),
            "tokens": int(totals[1]),
            "samples": samples,
            "skipped": skipped,
            "samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
            "step_time": elapsed,
            "sample_ids": acc["ids"],
        }
        if self.gumbel:
            record["tau"] = self.model.visual_tokenizer.tau
        self.records.append(record)
        return record

    # -- logging --------------------------------------------------------------------------------
    def _writer(self) -> Any:
        if self.rank != 0:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("tensorboard is not installed: no tensorboard logs (pip install tensorboard)")
            return None
        return SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))

    def _bar(self, step: int) -> Any:
        if self.rank != 0 or not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=step, desc=f"stage {self.config.stage}", dynamic_ncols=True)

    def _log(self, writer: Any, step: int, window: dict[str, Any], record: dict[str, Any]) -> None:
        elapsed = time.perf_counter() - window["start"]
        scalars = {
            "train/loss": window["loss"] / max(1, window["steps"]),
            "train/lr": record["lr"],
            "train/samples_per_s": window["samples"] / elapsed if elapsed > 0 else 0.0,
            "train/skipped_samples": window["skipped"],
            "train/skipped_samples_total": self.skipped_total,
            "train/epoch": record["epoch"],
        }
        if record["grad_norm"] is not None and math.isfinite(record["grad_norm"]):
            scalars["train/grad_norm"] = record["grad_norm"]
        if "tau" in record:
            scalars["train/tau"] = record["tau"]
        if writer is not None:
            for name, value in scalars.items():
                writer.add_scalar(name, value, step)
            writer.flush()
        logger.info("step %d/%d %s", step, self.total_steps,
                    " ".join(f"{k.split('/')[1]}={v:.4g}" for k, v in scalars.items()))
        window.update(loss=0.0, steps=0, samples=0, skipped=0, start=time.perf_counter())

    # -- checkpoints / export -------------------------------------------------------------------
    def save(self, step: int, micro: int) -> Path:
        root = ckpt.checkpoint_root(self.output_dir)
        state = {
            "step": step,
            "micro_batch": micro,
            "epoch": micro / self.order.per_epoch,
            "samples_seen": self.samples_seen,
            "skipped_total": self.skipped_total,
            "total_steps": self.total_steps,
            "config_hash": self.config.config_hash(),
            "data_order": self.order.fingerprint(),
            "world_size": self.world_size,
            "zero_stage": self.zero_stage,
            "time": time.time(),
        }
        path = ckpt.save_checkpoint(self.engine, root, step, state, rank=self.rank, barrier=dist.barrier)
        if self.rank == 0:
            for removed in ckpt.prune_checkpoints(root, self.config.save_total_limit, current=step):
                logger.info("removed old checkpoint %s", removed.name)
            logger.info("saved checkpoint %s", path)
        return path

    def export(self) -> Path:
        """Write ``output_dir/final`` (every rank must call: ZeRO-3 gathers collectively)."""
        out = self.output_dir / "final"
        state_dict = gather_state_dict(self.engine)
        if self.rank == 0:
            if self.gumbel:
                self.model.config.tau = self.config.tau.end
            export_model(self.model, state_dict, self.processor, out, lora=self.config.lora)
            logger.info("exported %s", out)
        dist.barrier()
        return out


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    dataset: Any = None,
    collator: Callable[[list[Any]], dict[str, Any] | None] | None = None,
    on_step_end: StepCallback | None = None,
    progress: bool = True,
) -> Path:
    """Run one training stage; returns the exported Hugging Face directory (``output_dir/final``)."""
    trainer = Trainer(
        config, dataset=dataset, collator=collator, resume=resume, on_step_end=on_step_end, progress=progress
    )
    return trainer.run()
