"""Crash-safe training checkpoints: ``output_dir/checkpoints/step-N``, and which one a run resumes.

A checkpoint is written as ``step-N.tmp`` (the engine's state from every rank, each rank's RNG
state, then ``trainer_state.json``), renamed to ``step-N`` when every rank is done, and only then
marked with a ``COMPLETE`` file. Resuming only ever considers directories holding that marker, so
a crash at any point of a save cannot leave something that looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ovis.errors import ConfigError, InputFileError, OutputExistsError
from ovis.train.engines import Engine

logger = logging.getLogger("ovis.train")
COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step}"


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file() and (path / STATE_FILE).is_file()


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


# -- RNG ----------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy comes with torch in practice
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- save / load --------------------------------------------------------------------------------
def save_checkpoint(
    engine: Engine, root: Path, step: int, state: dict[str, Any], *, rank: int, barrier: Callable[[], None]
) -> Path:
    """Write the checkpoint of ``step`` (call on every rank). Returns its final directory."""
    final = step_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in (tmp, final):  # a crashed earlier attempt at this step, or a run being redone
            if stale.exists():
                shutil.rmtree(stale)
    barrier()
    engine.save(tmp)
    torch.save(rng_state(), tmp / f"rng_state_{rank}.pt")
    barrier()
    if rank == 0:
        _fsync_write(tmp / STATE_FILE, json.dumps(state, indent=2) + "\n")
        _fsync_dir(tmp)
        tmp.rename(final)
        _fsync_dir(root)
        _fsync_write(final / COMPLETE, f"step {step}\n")
    barrier()
    return final


def read_state(path: Path) -> dict[str, Any]:
    """The trainer state of the complete checkpoint ``path``."""
    if not is_complete(path):
        raise InputFileError(f"{path} is not a complete checkpoint (no {COMPLETE} marker)")
    try:
        return json.loads((path / STATE_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path / STATE_FILE} is not valid JSON ({exc}); resume from another checkpoint") from exc


def load_checkpoint(engine: Engine, path: Path, *, rank: int) -> None:
    """Restore the engine (model, optimizer, lr scheduler) and this rank's RNG from ``path``."""
    engine.load(path)
    rng_file = path / f"rng_state_{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))


def resume_point(output_dir: Path, *, resume: bool) -> Path | None:
    """The checkpoint a run writing to ``output_dir`` continues from: the newest complete one when
    ``resume``; none otherwise, and then ``output_dir`` must hold none (rather than overwriting)."""
    root = checkpoint_root(output_dir)
    latest = latest_checkpoint(root)
    if not resume and latest is not None:
        raise OutputExistsError(
            f"{output_dir} already holds checkpoints (newest: {latest.name}); pass --resume "
            "to continue that run, or choose another output_dir"
        )
    if resume and latest is None:
        logger.warning("resume: no complete checkpoint in %s; starting from step 0", root)
    return latest


def check_resumable(path: Path, state: dict[str, Any], *, data_order: dict[str, int], engine: str) -> None:
    """Refuse to resume from ``path`` into a run that would read other data or use another engine."""
    if state["data_order"] != data_order:
        raise ConfigError(
            f"cannot resume from {path}: the data order would differ (checkpoint "
            f"{state['data_order']}, now {data_order}); keep the seed, batch size, "
            "number of processes and datasets of the interrupted run"
        )
    written_by = state.get("engine", "deepspeed")  # checkpoints from before the PyTorch engine
    if written_by != engine:
        raise ConfigError(
            f"cannot resume from {path}: it was written by the {written_by} engine and this run uses "
            f"the {engine} engine; keep the interrupted run's deepspeed setting (null: the torch engine)"
        )


def prune_checkpoints(root: Path, keep: int | None, *, current: int) -> list[Path]:
    """Delete all but the ``keep`` newest complete checkpoints, and leftovers of crashed saves
    (``*.tmp``, unmarked ``step-N``) older than ``current``. Rank 0 only. Returns what went."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    complete = complete_checkpoints(root)
    if keep is not None:
        removed += [path for _, path in complete[:-keep]] if len(complete) > keep else []
    for path in root.iterdir():
        name = path.name.removesuffix(".tmp")
        match = _STEP_DIR.match(name)
        if match and int(match.group(1)) < current and (path.name.endswith(".tmp") or not is_complete(path)):
            removed.append(path)
    for path in removed:
        (path / COMPLETE).unlink(missing_ok=True)  # first, so a half-deleted one never looks complete
        shutil.rmtree(path, ignore_errors=True)
    return removed
