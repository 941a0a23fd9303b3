"""What a run counts and reports: per-step sums, the logging window, and where records go.

:class:`StepSums` adds up the micro-batches of one optimizer step on one rank; the trainer sums it
over ranks into a step record (a plain dict, what ``metrics.jsonl`` holds and ``on_step_end``
receives). :class:`TrainLog` writes each record to ``metrics.jsonl``, moves the progress bar, and
every ``logging_steps`` logs a line and tensorboard scalars averaged over a :class:`LogWindow`.

A run that starts at ``first_step`` (a resume, or a fresh start over a killed run's files) first
drops every record after that step from ``metrics.jsonl`` and purges the tensorboard events after
it, so each step is reported once: the steps a killed run logged after its last checkpoint are
redone, not repeated.

:func:`write_skip_report` writes the run's total of skipped records (``skips.json``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("ovis.train")
#: One optimizer step's record: ``step``, ``epoch``, ``loss``, ``lr``, ``grad_norm``, ``tokens``,
#: ``samples``, ``skipped``, ``samples_per_s``, ``step_time``, ``sample_ids`` (and ``tau`` with
#: gumbel_argmax).
StepRecord = dict[str, Any]


@dataclass
class StepSums:
    """Sums over the micro-batches of one optimizer step on this rank."""

    #: The base learning rate the step's update uses (read when the step begins).
    lr: float
    loss: float = 0.0
    tokens: int = 0
    samples: int = 0
    skipped: int = 0
    #: Sample ids read by every rank in this step (kept on rank 0 only).
    sample_ids: list[int] = field(default_factory=list)

    def add(self, loss: float, tokens: int, samples: int, skipped: int) -> None:
        self.loss += loss
        self.tokens += tokens
        self.samples += samples
        self.skipped += skipped

    def counts(self, device: torch.device) -> torch.Tensor:
        """``[loss, tokens, samples, skipped]`` as one tensor, to sum over ranks in one call."""
        return torch.tensor([self.loss, self.tokens, self.samples, self.skipped], dtype=torch.float64, device=device)


@dataclass
class LogWindow:
    """Sums over the optimizer steps since the last log line."""

    loss: float = 0.0
    steps: int = 0
    samples: int = 0
    skipped: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, record: StepRecord) -> None:
        self.loss += record["loss"]
        self.steps += 1
        self.samples += record["samples"]
        self.skipped += record["skipped"]

    def scalars(self, record: StepRecord, skipped_total: int) -> dict[str, float]:
        """The tensorboard scalars of the window ending with ``record``."""
        elapsed = time.perf_counter() - self.start
        scalars = {
            "train/loss": self.loss / max(1, self.steps),
            "train/lr": record["lr"],
            "train/samples_per_s": self.samples / elapsed if elapsed > 0 else 0.0,
            "train/skipped_samples": self.skipped,
            "train/skipped_samples_total": skipped_total,
            "train/epoch": record["epoch"],
        }
        if record["grad_norm"] is not None and math.isfinite(record["grad_norm"]):
            scalars["train/grad_norm"] = record["grad_norm"]
        if "tau" in record:
            scalars["train/tau"] = record["tau"]
        return scalars


class TrainLog:
    """Reports each step record (rank 0 writes; other ranks only keep the window).

    Use as a context manager: the files and the progress bar are closed at the end.
    """

    def __init__(
        self, output_dir: Path, *, write: bool, progress: bool, stage: int, total_steps: int, first_step: int,
        logging_steps: int,
    ) -> None:
        self.total_steps = total_steps
        self.logging_steps = logging_steps
        self.window = LogWindow()
        if write:
            truncate_metrics(output_dir / "metrics.jsonl", first_step)
        self.metrics = open(output_dir / "metrics.jsonl", "a") if write else None
        self.writer = _tensorboard(output_dir, first_step) if write else None
        self.bar = _bar(stage, total_steps, first_step) if write and progress else None

    def __enter__(self) -> TrainLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for handle in (self.bar, self.writer, self.metrics):
            if handle is not None:
                handle.close()

    def step(self, record: StepRecord, skipped_total: int) -> None:
        step = record["step"]
        self.window.add(record)
        if self.metrics is not None:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                 samples_s=f"{record['samples_per_s']:.1f}")
        if step % self.logging_steps == 0 or step == self.total_steps:
            self._log(step, self.window.scalars(record, skipped_total))
            self.window = LogWindow()

    def _log(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, step)
            self.writer.flush()
        logger.info("step %d/%d %s", step, self.total_steps,
                    " ".join(f"{k.split('/')[1]}={v:.4g}" for k, v in scalars.items()))


def truncate_metrics(path: Path, step: int) -> int:
    """Keep only the records of ``path`` at or before ``step`` (and none that is cut short, as a
    killed run may leave the last); rewritten atomically. Returns how many records were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
                keep = line.endswith("\n") and int(record["step"]) <= step
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
        logger.info("%s: dropped %d records after step %d (a run that went on past its checkpoint)",
                    path, dropped, step)
    return dropped


def write_skip_report(output_dir: Path, report: dict[str, Any]) -> Path:
    """Write ``report`` (the run's skipped-record total) to ``output_dir/skips.json``, atomically."""
    path = output_dir / "skips.json"
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _tensorboard(output_dir: Path, first_step: int = 0) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional (ovis[train])
    except ImportError:
        logger.warning("tensorboard is not installed: no tensorboard logs (pip install tensorboard)")
        return None
    # Events at or after purge_step that earlier files hold are discarded by tensorboard's readers.
    return SummaryWriter(log_dir=str(output_dir / "tensorboard"), purge_step=first_step + 1)


def _bar(stage: int, total_steps: int, first_step: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total_steps, initial=first_step, desc=f"stage {stage}", dynamic_ncols=True)
