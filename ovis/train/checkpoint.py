"""Crash-safe training checkpoints: ``output_dir/checkpoints/step-N``, and which one a run resumes.

A checkpoint is written as ``step-N.tmp`` (the engine's state from every rank, each rank's RNG
state, then ``trainer_state.json``), then rank 0 fsyncs every file in it and records each file's
size and sha256 in ``manifest.json``; the directory is renamed to ``step-N`` and only then marked
with a ``COMPLETE`` file. Resuming only ever considers directories holding that marker, so a crash
at any point of a save cannot leave something that looks complete.

``--resume`` verifies the newest complete checkpoint against its manifest; a damaged one (a file
missing, truncated or altered later) is named in a warning and the next older one that verifies is
used; when none does the run stops with an :class:`~ovis.errors.InputFileError`. A checkpoint
without a manifest (written by ovis before manifests existed) is used unverified, with a warning.

RNG state is saved as tensors and plain Python values and loaded with ``weights_only=True``: a
checkpoint's RNG file can never run code. DeepSpeed's own engine state is loaded by DeepSpeed,
which unpickles: resume only from checkpoints you (or someone you trust) wrote.
"""

from __future__ import annotations

import hashlib
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
from ovis.train.schedule import DataOrder, resume_at

logger = logging.getLogger("ovis.train")
COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.json"
#: ``{"files": {relative path: {"size": bytes, "sha256": hex}}}`` of every other file in the checkpoint.
MANIFEST = "manifest.json"
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
    """This process's RNG states as tensors and plain values (what ``weights_only=True`` loads)."""
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "torch": torch.get_rng_state(),
    }
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    except ImportError:  # pragma: no cover - numpy comes with torch in practice
        pass
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    if isinstance(python, dict):
        internal = tuple(int(v) for v in python["internal"].tolist())
        random.setstate((python["version"], internal, python["gauss_next"]))
    else:  # the tuple older ovis versions saved
        random.setstate(python)
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        saved = state["numpy"]
        if isinstance(saved, dict):
            keys = saved["keys"].numpy().astype(np.uint32)
            saved = (saved["name"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"])
        np.random.set_state(saved)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_safe_globals() -> list[Any]:
    """The numpy constructors older ovis versions' RNG files need (plain arrays; nothing runs)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return []
    multiarray = getattr(np, "_core", None) or np.core
    return [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_rng_state(path: Path) -> dict[str, Any]:
    """The RNG state saved in ``path``, loaded without unpickling anything but tensors and plain
    values (and numpy arrays, for RNG files of older ovis versions)."""
    import pickle

    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            state = torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputFileError(
            f"{path} is not an RNG state ovis wrote: it holds something other than tensors and plain "
            f"values, or is damaged ({first}); it was not unpickled. Resume only from checkpoints you trust"
        ) from None
    if not isinstance(state, dict) or "python" not in state or "torch" not in state:
        raise InputFileError(f"{path} is not an RNG state ovis wrote (expected a dict with python and torch states)")
    return state


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _sha256(path: Path, *, fsync: bool = False) -> str:
    """The sha256 of ``path``; with ``fsync``, flushed to disk first (the same read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        if fsync:
            os.fsync(handle.fileno())
    return digest.hexdigest()


def _checkpoint_files(directory: Path) -> list[Path]:
    """Every file under ``directory`` but the manifest and the marker, sorted."""
    skip = {MANIFEST, COMPLETE}
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.relative_to(directory).as_posix() not in skip)


def write_manifest(directory: Path) -> None:
    """Fsync every file in ``directory`` and record its size and sha256 in ``manifest.json``."""
    files = {}
    for path in _checkpoint_files(directory):
        digest = _sha256(path, fsync=True)
        files[path.relative_to(directory).as_posix()] = {"size": path.stat().st_size, "sha256": digest}
    _fsync_write(directory / MANIFEST, json.dumps({"files": files}, indent=1) + "\n")


def verify_checkpoint(path: Path) -> str | None:
    """What is wrong with the complete checkpoint ``path`` by its manifest (naming the file), or
    None when every file is as saved. Raises :class:`FileNotFoundError` when it has no manifest."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(manifest)
    try:
        files = json.loads(manifest.read_text())["files"]
        entries = [(name, int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{MANIFEST} is unreadable ({exc})"
    if STATE_FILE not in files:
        return f"{MANIFEST} does not list {STATE_FILE}"
    for name, size, _ in entries:
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        actual = file.stat().st_size
        if actual != size:
            return f"{name} is {actual} bytes, {size} when saved"
    for name, _, sha256 in entries:  # sizes first: a truncated file is found without reading the rest
        if _sha256(path / name) != sha256:
            return f"{name} differs from what was saved (sha256 mismatch)"
    return None


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
        write_manifest(tmp)  # fsyncs every rank's files (one shared directory) before the marker
        for sub in {p.parent for p in _checkpoint_files(tmp)} - {tmp}:
            _fsync_dir(sub)
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


def load_checkpoint(engine: Engine, path: Path, *, rank: int, reshard: bool = False) -> None:
    """Restore the engine (model, optimizer, lr scheduler) and this rank's RNG from ``path``;
    ``reshard``: the checkpoint was written by another number of ranks (a rank it did not have
    keeps the RNG seeded for it)."""
    rng_file = path / f"rng_state_{rank}.pt"
    rng = load_rng_state(rng_file) if rng_file.is_file() else None  # refused before the big load
    engine.load(path, reshard=reshard)
    if rng is not None:
        set_rng_state(rng)


def newest_verified(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` that verifies against its manifest (one
    without a manifest counts, with a warning); damaged ones are named in warnings and passed over.
    None when there is no complete checkpoint; :class:`InputFileError` when none verifies."""
    found = complete_checkpoints(root)
    damaged = []
    for _, path in reversed(found):
        try:
            problem = verify_checkpoint(path)
        except FileNotFoundError:
            logger.warning("resume: %s has no %s (written by an older ovis); using it unverified", path, MANIFEST)
            return path
        if problem is None:
            if damaged:
                logger.warning("resume: using %s, the newest checkpoint that verifies", path.name)
            return path
        damaged.append(f"{path.name}: {problem}")
        logger.warning("resume: checkpoint %s is damaged (%s); trying the previous one", path, problem)
    if damaged:
        raise InputFileError(
            f"no checkpoint in {root} verifies against its {MANIFEST} (" + "; ".join(damaged) + "); "
            "cannot resume: delete the damaged checkpoints to start over, or restore them"
        )
    return None


def resume_point(output_dir: Path, *, resume: bool) -> Path | None:
    """The checkpoint a run writing to ``output_dir`` continues from: the newest complete one that
    verifies when ``resume``; none otherwise, and then ``output_dir`` must hold none (rather than
    overwriting)."""
    root = checkpoint_root(output_dir)
    latest = latest_checkpoint(root)
    if resume and latest is not None:
        latest = newest_verified(root)
    if not resume and latest is not None:
        raise OutputExistsError(
            f"{output_dir} already holds checkpoints (newest: {latest.name}); pass --resume "
            "to continue that run, or choose another output_dir"
        )
    if latest is None:
        # A finished run whose checkpoints were pruned or deleted: starting again would overwrite its model.
        earlier = [name for name in ("final", "metrics.jsonl") if (Path(output_dir) / name).exists()]
        if earlier:
            raise OutputExistsError(
                f"{output_dir} already holds an earlier run's {' and '.join(earlier)}, and no checkpoint "
                "to resume from: a run starting there would overwrite them; choose another output_dir, or "
                "move them away first"
            )
    if resume and latest is None:
        logger.warning("resume: no complete checkpoint in %s; starting from step 0", root)
    return latest


def check_resumable(path: Path, state: dict[str, Any], *, order: DataOrder, engine: str) -> int:
    """Refuse to resume from ``path`` into a run that would read other data or use another engine.

    Returns the micro-batch number of ``order`` at which the run continues: the checkpoint's own on
    the same layout; on another number of ranks (or per-rank batch size) keeping the global batch,
    the first micro-batch holding a sample not yet read (:func:`~ovis.train.schedule.resume_at`).
    """
    written_by = state.get("engine", "deepspeed")  # checkpoints from before the PyTorch engine
    if written_by != engine:
        raise ConfigError(
            f"cannot resume from {path}: it was written by the {written_by} engine and this run uses "
            f"the {engine} engine; keep the interrupted run's deepspeed setting (null: the torch engine)"
        )
    step = int(state["step"])
    micro = int(state.get("micro_batch", step * int(state["data_order"].get("accumulation", order.accumulation))))
    return resume_at(state["data_order"], micro, order, where=str(path))


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
