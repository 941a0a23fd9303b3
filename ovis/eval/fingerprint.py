"""What produced a set of predictions: the model, how it generated, how it was asked, and on what.

Saved predictions are reused only under the same fingerprint, so one model's answers are never
scored as another's. The model is identified by its directory's files: small ones (configs,
tokenizer, chat template) by content hash, large ones (weights) by name, size and modification
time, which any retraining or re-saving changes, without reading gigabytes on every run. A video
benchmark adds its frames per video, how they are sampled and each video file's size and
modification time (see :func:`ovis.eval.video_bench.video_setting`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HASHED_UP_TO = 64 * 1024 * 1024  # files up to this size are hashed whole


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_identity(model_path: str | Path) -> dict[str, str]:
    """One entry per file of the model directory (relative path -> identity string); a model that
    is not a directory is identified by the name it was given."""
    root = Path(model_path).expanduser()
    if not root.is_dir():
        return {"<name>": str(model_path)}
    identity = {}
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = file.stat()
        if stat.st_size <= HASHED_UP_TO:
            identity[file.relative_to(root).as_posix()] = "sha256:" + file_sha256(file)
        else:
            identity[file.relative_to(root).as_posix()] = f"size:{stat.st_size} mtime_ns:{stat.st_mtime_ns}"
    return identity


def fingerprint(
    *,
    model_path: str | Path,
    dtype: str,
    generation: Mapping[str, Any],
    prompt_style: str,
    kind: str,
    data_path: str | Path,
    video: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that shapes a benchmark's predictions, as a JSON-ready dict (``video``: a video
    benchmark's setting; absent for images, so their fingerprints are as before)."""
    stamp = {
        "model": {"path": str(Path(model_path).expanduser().resolve()) if Path(model_path).expanduser().is_dir()
                  else str(model_path), "files": model_identity(model_path)},
        "dtype": dtype,
        "generation": dict(generation),
        "prompt_style": prompt_style,
        "kind": kind,
        "data_sha256": file_sha256(data_path),
    }
    if video is not None:
        stamp["video"] = dict(video)
    return stamp


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What changed between two fingerprints, in words ("the model's model.safetensors", ...).

    The model's path alone does not count: a moved or copied model with the same files is the same model.
    """
    changes = []
    old_files, new_files = old.get("model", {}).get("files", {}), new.get("model", {}).get("files", {})
    changed = sorted(name for name in set(old_files) | set(new_files) if old_files.get(name) != new_files.get(name))
    if changed:
        changes.append(f"the model (files differing: {_listed(changed)}; was {old.get('model', {}).get('path')}, "
                       f"now {new['model']['path']})")
    for key, label in (("dtype", "dtype"), ("prompt_style", "prompt style"), ("kind", "task kind")):
        if old.get(key) != new.get(key):
            changes.append(f"{label} {old.get(key)!r} -> {new.get(key)!r}")
    old_gen, new_gen = old.get("generation", {}), new.get("generation", {})
    for key in sorted(set(old_gen) | set(new_gen)):
        if old_gen.get(key) != new_gen.get(key):
            changes.append(f"generation setting {key} {old_gen.get(key)!r} -> {new_gen.get(key)!r}")
    if old.get("data_sha256") != new.get("data_sha256"):
        changes.append("the benchmark file's contents")
    return changes + _video_differences(old.get("video") or {}, new.get("video") or {})


def _video_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    changes = []
    if old.get("nframe") != new.get("nframe"):
        changes.append(f"frames per video (nframe) {old.get('nframe')!r} -> {new.get('nframe')!r}")
    if old.get("sampling") != new.get("sampling"):
        changes.append("how frames are sampled")
    old_files, new_files = old.get("files", {}), new.get("files", {})
    changed = sorted(name for name in set(old_files) | set(new_files) if old_files.get(name) != new_files.get(name))
    if changed:
        changes.append(f"the video files (added, removed or changed: {_listed(changed)})")
    return changes


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
